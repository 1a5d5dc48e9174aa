"""book/09_performance.md: sgd_step_fused (the update folded into the backward pass) must give the
parameters that backward + GradientDescent give, for every kind of layer it meets; FusedAdamW must
give AdamW's, compile once, and fall back where it cannot compile."""

import copy

import pytest
import torch

from neuroforge_lit import fused
from neuroforge_lit.dropout import Dropout
from neuroforge_lit.fused import FusedAdamW, sgd_step_fused
from neuroforge_lit.layers import Linear, ReLU, Sequential
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.norm import normalized_mlp
from neuroforge_lit.optim import AdamW
from neuroforge_lit.training import GradientDescent


def _batch(n=32, d=20, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _assert_one_fused_step_matches_plain(fused, x, y, lr=0.1):
    """One sgd_step_fused against a copy stepped by backward + GradientDescent (same dropout masks:
    the copy's generators are copied too)."""
    plain = copy.deepcopy(fused)
    plain.backward(softmax_cross_entropy(plain.forward(x), y)[1], input_grad=False)
    GradientDescent(lr).step(plain.parameters(), plain.gradients())
    sgd_step_fused(fused, softmax_cross_entropy(fused.forward(x), y)[1], lr=lr)
    for p, q in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_fused_step_matches_backward_then_gradient_descent(norm):
    x, y = _batch()
    fused = normalized_mlp([20, 16, 8, 5], norm, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = copy.deepcopy(fused)
    before = [p.clone() for p in fused.parameters()]
    for _ in range(4):
        plain.backward(softmax_cross_entropy(plain.forward(x), y)[1], input_grad=False)
        GradientDescent(0.2).step(plain.parameters(), plain.gradients())
        sgd_step_fused(fused, softmax_cross_entropy(fused.forward(x), y)[1], lr=0.2)
    for p, q, b in zip(fused.parameters(), plain.parameters(), before):
        assert not torch.equal(p, b)                      # the step moved every parameter
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_fused_step_with_dropout_uses_the_forward_mask():
    x, y = _batch()
    layers = [Linear(20, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64), ReLU(),
              Dropout(0.5, generator=torch.Generator().manual_seed(3)),
              Linear(16, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)]
    _assert_one_fused_step_matches_plain(Sequential(*layers), x, y)


def test_lr_zero_changes_nothing_and_bad_input_is_refused():
    x, y = _batch()
    model = normalized_mlp([20, 8, 5], None, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    before = [p.clone() for p in model.parameters()]
    sgd_step_fused(model, softmax_cross_entropy(model.forward(x), y)[1], lr=0.0)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="learning rate must be >= 0, got -0.1"):
        sgd_step_fused(model, softmax_cross_entropy(model.forward(x), y)[1], lr=-0.1)
    with pytest.raises(TypeError, match="needs a Sequential model, got Linear"):
        sgd_step_fused(model.layers[0], torch.zeros(32, 8, dtype=torch.float64), lr=0.1)


def test_fused_step_on_a_model_that_starts_with_dropout():
    """sgd_step_fused stops where Sequential.backward stops: at the lowest layer with parameters."""
    x, y = _batch()
    g = torch.Generator().manual_seed(6)
    _assert_one_fused_step_matches_plain(
        Sequential(Dropout(0.2, generator=torch.Generator().manual_seed(7)),
                   Linear(20, 16, generator=g, dtype=torch.float64), ReLU(),
                   Linear(16, 5, generator=g, dtype=torch.float64)), x, y)


# --- FusedAdamW: AdamW compiled into one loop per tensor (its agreement with torch.optim.AdamW,
# resume and NaN policy, compiled and not, run with the other optimizers in test_optim.py) ---

def _adamw_run(opt, steps=12, shapes=((9, 4), (4,)), seed=3):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    for step in range(steps):
        opt.lr = 1e-2 if step < steps // 2 else 4e-3          # a schedule: new scalars every step
        opt.step(params, [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes])
    return params


def test_fused_adamw_compiles_once_whatever_the_learning_rate():
    _adamw_run(FusedAdamW(1e-2, weight_decay=0.1), steps=1)         # compiles for these shapes
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    opt = FusedAdamW(1e-2, weight_decay=0.1)
    after = _adamw_run(opt, steps=12)
    assert opt.compile_error is None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    for a, b in zip(after, _adamw_run(AdamW(1e-2, weight_decay=0.1), steps=12)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_fused_adamw_warns_once_and_runs_uncompiled_where_compiling_fails(monkeypatch):
    def no_compiler():
        def compiled(*args):
            raise RuntimeError("no C++ compiler found")
        return compiled
    monkeypatch.setattr(fused, "_compiled_adamw", no_compiler)
    opt = FusedAdamW(1e-2, weight_decay=0.1)
    with pytest.warns(RuntimeWarning, match=r"compiled update failed \(RuntimeError: no C\+\+ compiler"):
        params = _adamw_run(opt)
    assert isinstance(opt.compile_error, RuntimeError)
    for a, b in zip(params, _adamw_run(AdamW(1e-2, weight_decay=0.1))):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_fused_adamw_float32_matches_adamw():
    g = torch.Generator().manual_seed(5)
    shapes = [(30, 20), (20,), (20, 5), (5,)]
    ours = [torch.randn(s, generator=g) for s in shapes]
    plain = [p.clone() for p in ours]
    fused_opt, plain_opt = FusedAdamW(3e-3), AdamW(3e-3)
    for _ in range(20):
        grads = [torch.randn(s, generator=g) for s in shapes]
        fused_opt.step(ours, grads)
        plain_opt.step(plain, grads)
    assert fused_opt.compile_error is None
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
