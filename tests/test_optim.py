"""Optimizers: step-for-step agreement with torch.optim, state save/restore, bad input, NaN policy.
The references (book/02, book/04) and the performance appendix's variants (book/10) alike."""

import io

import pytest
import torch

from neuroforge_lit.fast import ForeachAdam, ForeachAdamW, FusedAdamW
from neuroforge_lit.optim import SGD, Adam, AdamW, GradientDescent

from conftest import assert_tensors_equal


def _params(gen):
    return [torch.randn(s, dtype=torch.float64, generator=gen) for s in [(5, 3), (3,), (2, 2, 2)]]


def _uncompiled_fused_adamw(*args, **kwargs):
    """FusedAdamW as it runs where torch.compile fails: adamw_elementwise one operation at a time."""
    opt = FusedAdamW(*args, **kwargs)
    opt.compile_error = RuntimeError("left uncompiled for this test")
    return opt


CASES = [
    (lambda: GradientDescent(0.05), torch.optim.SGD, dict(lr=0.05)),                       # book/02
    (lambda: SGD(0.05), torch.optim.SGD, dict(lr=0.05)),
    (lambda: SGD(0.05, weight_decay=0.02), torch.optim.SGD, dict(lr=0.05, weight_decay=0.02)),
    (lambda: SGD(0.05, momentum=0.9, weight_decay=0.02), torch.optim.SGD,
     dict(lr=0.05, momentum=0.9, weight_decay=0.02)),
    (lambda: SGD(0.05, momentum=0.8, nesterov=True), torch.optim.SGD,
     dict(lr=0.05, momentum=0.8, nesterov=True)),
    (lambda: Adam(1e-2), torch.optim.Adam, dict(lr=1e-2)),
    (lambda: Adam(1e-2, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1), torch.optim.Adam,
     dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1)),
    (lambda: AdamW(1e-2), torch.optim.AdamW, dict(lr=1e-2)),
    (lambda: AdamW(1e-2, betas=(0.8, 0.95), weight_decay=0.3), torch.optim.AdamW,
     dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.3)),
    (lambda: ForeachAdam(1e-2, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1), torch.optim.Adam,   # book/10
     dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1)),
    (lambda: ForeachAdamW(1e-2, betas=(0.8, 0.95), weight_decay=0.3), torch.optim.AdamW,
     dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.3)),
    (lambda: FusedAdamW(1e-2, betas=(0.8, 0.95), weight_decay=0.3), torch.optim.AdamW,
     dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.3)),
    (lambda: _uncompiled_fused_adamw(1e-2, betas=(0.8, 0.95), weight_decay=0.3), torch.optim.AdamW,
     dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.3)),
]


@pytest.mark.parametrize("make,cls,kwargs", CASES)
def test_matches_torch_optim_for_120_steps(make, cls, kwargs, gen):
    ours, start = make(), _params(gen)
    mine = [p.clone() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    ref = cls(theirs, foreach=False, **kwargs)
    for step in range(120):
        grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) + 0.3 * p for p in mine]
        if step == 60:                       # a schedule changing the learning rate mid-run
            ours.lr = kwargs["lr"] / 2
            for group in ref.param_groups:
                group["lr"] = kwargs["lr"] / 2
        ours.step(mine, grads)
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        ref.step()
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b.detach(), rtol=1e-13, atol=1e-13)
    assert ours.t == 120


def _interrupted(make, resume_with, gen, steps=30, stop=13):
    """Parameters after `steps` steps of make(), and after `stop` steps of make(), a save through
    torch.save / torch.load(weights_only=True), and the remaining steps with resume_with() loaded
    from it; and that resumed optimizer."""
    start = _params(gen)
    grads = [[torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in start] for _ in range(steps)]
    a, opt_a = [p.clone() for p in start], make()
    for g in grads:
        opt_a.step(a, g)
    b, opt_b = [p.clone() for p in start], make()
    for g in grads[:stop]:
        opt_b.step(b, g)
    buf = io.BytesIO()
    torch.save({"params": b, "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    c, opt_c = [p.clone() for p in saved["params"]], resume_with()
    opt_c.load_state_dict(saved["opt"])
    for g in grads[stop:]:
        opt_c.step(c, g)
    return a, c, opt_c


@pytest.mark.parametrize("make", [c[0] for c in CASES])
def test_resume_from_state_dict_is_bit_identical(make, gen):
    a, c, _ = _interrupted(make, make, gen)
    assert_tensors_equal(a, c, "a vs c")


@pytest.mark.parametrize("cls", [ForeachAdam, ForeachAdamW])
def test_scratch_buffers_are_not_state_and_follow_a_loaded_state(cls, gen):
    """The multi-tensor variants' denominator buffers are reused between steps, never saved, and
    rebuilt when an optimizer that stepped on other shapes loads a state_dict."""
    small = [torch.randn(4, dtype=torch.float64, generator=gen)]
    start = _params(gen)
    grads = [[torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in start] for _ in range(6)]
    a, opt_a = [p.clone() for p in start], cls(1e-2)
    for g in grads:
        opt_a.step(a, g)
    b, opt_b = [p.clone() for p in start], cls(1e-2)
    for g in grads[:3]:
        opt_b.step(b, g)
    assert [set(s) for s in opt_b.state_dict()["state"]] == [{"m", "v"}] * len(opt_b.state_dict()["state"])
    reused = cls(1e-2)
    reused.step(small, [torch.ones_like(small[0])])          # its buffers now have the wrong shapes
    reused.load_state_dict(opt_b.state_dict())
    for g in grads[3:]:
        reused.step(b, g)
    assert_tensors_equal(a, b, "a vs b")


def test_state_dict_is_a_copy(gen):
    p = _params(gen)
    opt = Adam(0.1)
    opt.step(p, [torch.ones_like(q) for q in p])
    sd = opt.state_dict()
    opt.step(p, [torch.ones_like(q) for q in p])
    assert sd["t"] == 1 and not torch.equal(sd["state"][0]["m"], opt.state[0]["m"])


def _stepped(opt, gen, steps=3):
    p = _params(gen)
    for _ in range(steps):
        opt.step(p, [torch.randn(q.shape, dtype=q.dtype, generator=gen) for q in p])
    return p, opt


@pytest.mark.parametrize("edit,match", [
    (lambda sd: SGD(0.1).state_dict(), "state_dict is for SGD, not Adam"),
    (lambda sd: [sd], "state_dict is for list, not Adam"),
    (lambda sd: {**sd, "hyperparameters": {**sd["hyperparameters"], "eps": -1.0}},
     "bad hyperparameters: eps must be in"),
    (lambda sd: {**sd, "hyperparameters": {**sd["hyperparameters"], "gamma": 2}},
     "bad hyperparameters: .*unexpected keyword argument 'gamma'"),
    (lambda sd: {k: v for k, v in sd.items() if k != "state"}, "state_dict lacks state"),
])
def test_refused_state_dict_changes_nothing(edit, match, gen):
    _, source = _stepped(Adam(0.1), gen)
    _, target = _stepped(Adam(0.02, betas=(0.8, 0.99)), gen, steps=2)
    before = target.state_dict()
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(edit(source.state_dict()))
    after = target.state_dict()
    assert after["t"] == 2 and after["hyperparameters"] == before["hyperparameters"]
    assert_tensors_equal([s["m"] for s in after["state"]], [s["m"] for s in before["state"]], "first moments m")


def test_loaded_state_must_fit_the_parameters(gen):
    _, source = _stepped(AdamW(0.1), gen)
    other = [torch.zeros(5, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
             torch.zeros(2, 2, 2, dtype=torch.float64)]
    opt = AdamW(0.1)
    opt.load_state_dict(source.state_dict())
    with pytest.raises(ValueError, match=r"parameter 1 has shape \(4,\) but the loaded state 'm' has shape \(3,\)"):
        opt.step(other, [torch.ones_like(q) for q in other])
    assert opt.t == 3 and all(not q.any() for q in other)


def test_loaded_state_moves_to_the_parameters_dtype(gen):
    """As in torch.optim: state saved from float64 parameters continues on float32 ones."""
    p, source = _stepped(Adam(0.1), gen)
    p32 = [q.float() for q in p]
    opt = Adam(0.1)
    opt.load_state_dict(source.state_dict())
    opt.step(p32, [torch.ones_like(q) for q in p32])
    assert [v.dtype for s in opt.state for v in s.values()] == [torch.float32] * sum(len(s) for s in opt.state)
    assert not opt.state_loaded


@pytest.mark.parametrize("save,load", [(AdamW, FusedAdamW), (FusedAdamW, AdamW), (AdamW, ForeachAdamW),
                                       (ForeachAdamW, FusedAdamW), (Adam, ForeachAdam), (ForeachAdam, Adam)])
def test_fast_and_reference_optimizers_load_each_others_state(save, load, gen):
    """The appendix's variants (book/10) keep their reference's state_dict format, and a run
    resumed by the other class stays on the same path (up to rounding)."""
    a, c, resumed = _interrupted(lambda: save(1e-2, weight_decay=0.1), load, gen)
    assert resumed.state_dict()["type"] == save().kind == load().kind
    assert resumed.weight_decay == 0.1
    for x, y in zip(a, c):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("make,match", [
    (lambda: SGD(-0.1), r"lr must be in \[0.0, inf\), got -0.1"),
    (lambda: SGD(0.1, weight_decay=-1), "weight_decay must be in .*got -1"),
    (lambda: SGD(0.1, momentum=1.0), r"momentum must be in \[0.0, 1.0\), got 1.0"),
    (lambda: SGD(0.1, nesterov=True), "nesterov=True needs a momentum"),
    (lambda: Adam(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0.0, 1.0\), got 1.0"),
    (lambda: Adam(betas=(-0.1, 0.9)), r"betas\[0\] must be in"),
    (lambda: Adam(eps=-1e-8), "eps must be in"),
    (lambda: AdamW(weight_decay=-0.01), "weight_decay must be in"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedule_cannot_set_a_negative_lr():
    opt = SGD(0.1)
    with pytest.raises(ValueError, match="lr must be in"):
        opt.lr = -1.0


def test_params_and_grads_must_match():
    opt = Adam()
    p = [torch.zeros(3), torch.zeros(2, 2)]
    with pytest.raises(ValueError, match="2 parameters but 1 gradients"):
        opt.step(p, [torch.zeros(3)])
    with pytest.raises(ValueError, match=r"parameter 1 has shape \(2, 2\) but its gradient has shape \(4,\)"):
        opt.step(p, [torch.zeros(3), torch.zeros(4)])
    with pytest.raises(TypeError, match="parameter 1 is torch.float32 on cpu but its gradient is torch.float64 on cpu"):
        opt.step(p, [torch.zeros(3), torch.zeros(2, 2, dtype=torch.float64)])
    assert opt.t == 0 and not opt.state
    opt.step(p, [torch.zeros(3), torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="holds state for 2 parameters, got 1"):
        opt.step(p[:1], [torch.zeros(3)])


@pytest.mark.parametrize("make", [c[0] for c in CASES])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_raises_and_changes_nothing(make, bad, gen):
    p = _params(gen)
    opt = make()
    opt.step(p, [torch.ones_like(q) for q in p])
    before_p, before_state = [q.clone() for q in p], opt.state_dict()
    grads = [torch.ones_like(q) for q in p]
    grads[2][0, 1, 0] = bad
    with pytest.raises(FloatingPointError, match=r"parameter 2 \(shape \(2, 2, 2\)\) contains NaN or inf"):
        opt.step(p, grads)
    assert_tensors_equal(p, before_p, "p vs before_p")
    after = opt.state_dict()
    assert after["t"] == before_state["t"]
    for s_a, s_b in zip(after["state"], before_state["state"]):
        assert_tensors_equal(s_a, {k: s_b[k] for k in s_a}, "optimizer state")


@pytest.mark.parametrize("make", [c[0] for c in CASES])
def test_non_finite_first_gradient_leaves_no_state(make, gen):
    """Refused before any step: no state is created, so the optimizer is as new (FusedAdamW
    finds the NaN inside its update, after the state was made, and must undo it)."""
    p = _params(gen)
    before = [q.clone() for q in p]
    opt = make()
    grads = [torch.ones_like(q) for q in p]
    grads[0].view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="parameter 0"):
        opt.step(p, grads)
    assert opt.t == 0 and opt.state == [] and opt.state_dict() == make().state_dict()
    assert_tensors_equal(p, before, "p vs before")


@pytest.mark.parametrize("make", [lambda: GradientDescent(0.1), lambda: SGD(0.1, momentum=0.9), lambda: Adam(0.1),
                                  lambda: AdamW(0.1), lambda: ForeachAdamW(0.1), lambda: FusedAdamW(0.1)])
def test_an_integer_parameter_is_refused_before_any_parameter_changes(make):
    params = [torch.ones(2), torch.ones(2, dtype=torch.long)]
    grads = [torch.ones(2), torch.ones(2, dtype=torch.long)]
    with pytest.raises(TypeError, match="parameter 1 is torch.int64"):
        make().step(params, grads)
    assert torch.equal(params[0], torch.ones(2))


def test_the_fused_sgd_step_refuses_a_non_finite_gradient_with_nothing_changed():
    from neuroforge_lit.fast import sgd_step_fused
    from neuroforge_lit.layers import mlp
    from neuroforge_lit.losses import softmax_cross_entropy

    model = mlp([3, 4, 2], generator=torch.Generator().manual_seed(0))
    _, dout = softmax_cross_entropy(model.forward(torch.randn(5, 3)), torch.tensor([0, 1, 0, 1, 1]))
    dout[2, 1] = float("inf")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match=r"dout \(shape \(5, 2\)\) contains NaN or inf"):
        sgd_step_fused(model, dout, 0.1)
    assert_tensors_equal(model.parameters(), before, "parameters after the refused step vs before")
