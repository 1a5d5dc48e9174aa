"""Property-based tests (hypothesis): hand-written gradients match finite differences for random
shapes and values, and invariants hold. Plus numerics at the extremes: logits of +-1e4, and
float16 / bfloat16 inputs. The examples are the same on every run (the "deterministic" profile of
conftest.py); HYPOTHESIS_PROFILE=random draws new ones."""

import os

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from neuroforge_lit.distill import distillation_loss
from neuroforge_lit.dropout import dropout_forward
from neuroforge_lit.layers import linear_backward, linear_forward, relu_backward, relu_forward
from neuroforge_lit.logistic import bce_with_logits, sigmoid
from neuroforge_lit.losses import log_softmax, softmax, softmax_cross_entropy
from neuroforge_lit.norm import batchnorm_forward, layernorm_forward, normalize_backward
from neuroforge_lit.testing import gradient_check

EXAMPLES = 30
dims = st.integers(min_value=1, max_value=5)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
scales = st.sampled_from([0.1, 1.0, 10.0])


def rand(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=EXAMPLES, deadline=None)
@given(n=dims, d_in=dims, d_out=dims, seed=seeds)
def test_linear_gradients(n, d_in, d_out, seed):
    x, W, b = rand(n, d_in, seed=seed), rand(d_in, d_out, seed=seed + 1), rand(d_out, seed=seed + 2)
    dout = rand(n, d_out, seed=seed + 3)
    dx, dW, db = linear_backward(dout, linear_forward(x, W, b)[1])
    gradient_check(lambda x, W, b: linear_forward(x, W, b)[0], dict(x=x, W=W, b=b),
                   dict(x=dx, W=dW, b=db), dout=dout).assert_ok()


@settings(max_examples=EXAMPLES, deadline=None)
@given(n=dims, d=dims, seed=seeds)
def test_relu_gradient_away_from_the_kink(n, d, seed):
    x = rand(n, d, seed=seed)
    x = x + 0.05 * torch.sign(x) + (x == 0) * 0.05
    dout = rand(n, d, seed=seed + 1)
    dx = relu_backward(dout, relu_forward(x)[1])
    gradient_check(lambda x: relu_forward(x)[0], dict(x=x), dict(x=dx), dout=dout).assert_ok()


@settings(max_examples=EXAMPLES, deadline=None)
@given(n=dims, c=st.integers(2, 6), seed=seeds, scale=scales)
def test_softmax_cross_entropy_gradient_and_invariants(n, c, seed, scale):
    z = rand(n, c, seed=seed, scale=scale)
    y = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))
    loss, dz = softmax_cross_entropy(z, y)
    gradient_check(lambda z: softmax_cross_entropy(z, y)[0], dict(z=z), dict(z=dz)).assert_ok()
    torch.testing.assert_close(softmax(z).sum(1), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(dz.sum(1), torch.zeros(n, dtype=torch.float64))   # P - onehot sums to 0
    assert loss >= 0


@settings(max_examples=EXAMPLES, deadline=None)
@given(n=st.integers(2, 5), d=st.integers(2, 5), seed=seeds, scale=scales)
@example(n=2, d=5, seed=16535749, scale=1.0)   # dx ~1e-3 against |f| ~5: a fixed h = 1e-6 was off by 1e-5
def test_norm_gradients_and_invariants(n, d, seed, scale):
    x = rand(n, d, seed=seed, scale=scale) + 0.5
    gamma, beta = 1 + 0.3 * rand(d, seed=seed + 1), rand(d, seed=seed + 2)
    dout = rand(n, d, seed=seed + 3)
    for fwd, bwd in ((batchnorm_forward, normalize_backward), (layernorm_forward, normalize_backward)):
        dx, dg, db = bwd(dout, fwd(x, gamma, beta)[1])
        gradient_check(lambda x, gamma, beta, fwd=fwd: fwd(x, gamma, beta)[0], dict(x=x, gamma=gamma, beta=beta),
                       dict(x=dx, gamma=dg, beta=db), dout=dout).assert_ok()
    ones, zeros = torch.ones(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    out = layernorm_forward(x, ones, zeros, eps=0.0)[0]
    torch.testing.assert_close(out.mean(1), torch.zeros(n, dtype=torch.float64), atol=1e-10, rtol=0)
    if (x.std(1, correction=0) > 1e-3).all():
        torch.testing.assert_close(out.var(1, correction=0), torch.ones(n, dtype=torch.float64), atol=1e-8, rtol=0)
    out = batchnorm_forward(x, ones, zeros)[0]
    torch.testing.assert_close(out.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-10, rtol=0)


@settings(max_examples=EXAMPLES, deadline=None)
@given(n=dims, d=dims, seed=seeds)
def test_dropout_p_zero_is_the_identity(n, d, seed):
    x = rand(n, d, seed=seed)
    out, cache = dropout_forward(x, 0.0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out, x) and cache is None


@settings(max_examples=EXAMPLES, deadline=None)
@given(n=dims, seed=seeds, T=st.sampled_from([0.5, 1.0, 3.0, 20.0]), alpha=st.sampled_from([0.0, 0.3, 1.0]))
def test_distillation_gradient(n, seed, T, alpha):
    z, v = rand(n, 6, seed=seed, scale=2), rand(n, 6, seed=seed + 1, scale=2)
    y = torch.randint(0, 6, (n,), generator=torch.Generator().manual_seed(seed))
    _, dz = distillation_loss(z, v, y, T, alpha)
    # At T = 20 the loss is ~T^2 log 6 ~ 700 against gradients ~0.1: the oracle takes a larger step.
    gradient_check(lambda z: distillation_loss(z, v, y, T, alpha)[0], dict(z=z), dict(z=dz)).assert_ok()


def test_make_test_draws_the_same_examples_and_keeps_no_database():
    """The default profile is deterministic: no run can store a failure in .hypothesis/ for the next
    runs of that clone to replay. HYPOTHESIS_PROFILE=random is the opt-in randomised run."""
    from conftest import hypothesis_profile

    assert hypothesis_profile({}) == "deterministic"
    assert hypothesis_profile({"HYPOTHESIS_PROFILE": "random"}) == "random"
    deterministic, randomised = settings.get_profile("deterministic"), settings.get_profile("random")
    assert deterministic.derandomize and deterministic.database is None and deterministic.print_blob
    assert not randomised.derandomize and randomised.database is not None
    if "HYPOTHESIS_PROFILE" not in os.environ:
        assert settings.default.derandomize and settings.default.database is None, settings.default


# --- numerics at the extremes --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_huge_logits_give_finite_losses_and_gradients(dtype):
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]]).to(dtype) if dtype != torch.float16 else \
        torch.tensor([[6e4, -6e4, 0.0], [-6e4, 6e4, 5.0]], dtype=dtype)       # float16 tops out at 65504
    y = torch.tensor([1, 1])
    loss, dz = softmax_cross_entropy(z, y)
    assert torch.isfinite(loss) and torch.isfinite(dz).all()
    assert torch.isfinite(softmax(z)).all()
    if dtype != torch.float16:   # in float16 a log-probability of -1.2e5 is out of range: -inf is right
        assert torch.isfinite(log_softmax(z)).all()
    bl, bdz = bce_with_logits(z[:, 0].contiguous(), torch.tensor([0.0, 1.0]).to(dtype))
    assert torch.isfinite(bl) and torch.isfinite(bdz).all() and torch.isfinite(sigmoid(z)).all()
    dl, ddz = distillation_loss(z, z.flip(0), y, 4.0, 0.5)
    assert torch.isfinite(dl) and torch.isfinite(ddz).all()


def test_huge_logits_have_the_right_values():
    z = torch.tensor([[1e4, -1e4]], dtype=torch.float64)
    loss, dz = softmax_cross_entropy(z, torch.tensor([1]))
    assert loss.item() == pytest.approx(2e4)                       # -log p = 2e4, not inf
    torch.testing.assert_close(dz, torch.tensor([[1.0, -1.0]], dtype=torch.float64))
    assert bce_with_logits(torch.tensor([-1e4], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))[0] \
        == pytest.approx(1e4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_layers_run_and_stay_finite(dtype):
    x = torch.randn(8, 6).to(dtype)
    W, b = torch.randn(6, 4).to(dtype), torch.zeros(4, dtype=dtype)
    out, cache = linear_forward(x, W, b)
    dx, dW, db = linear_backward(torch.ones_like(out), cache)
    assert out.dtype == dtype, f"linear_forward in {dtype} returned {out.dtype}"
    finite = [bool(torch.isfinite(t.float()).all()) for t in (out, dx, dW, db)]
    assert all(finite), f"linear in {dtype}: (out, dx, dW, db) finite: {finite}"
    gamma, beta = torch.ones(6, dtype=dtype), torch.zeros(6, dtype=dtype)
    for fwd, bwd in ((batchnorm_forward, normalize_backward), (layernorm_forward, normalize_backward)):
        y, c = fwd(x, gamma, beta)
        grads = bwd(torch.ones_like(y), c)
        finite = [bool(torch.isfinite(t.float()).all()) for t in (y, *grads)]
        assert all(finite), f"{fwd.__name__} in {dtype}: (y, dx, dgamma, dbeta) finite: {finite}"


def test_norms_stay_finite_for_a_constant_input():
    """Variance zero: eps keeps 1/sqrt(var + eps) finite (the clamping the chapter relies on)."""
    x = torch.full((4, 3), 7.0)
    for fwd, bwd in ((batchnorm_forward, normalize_backward), (layernorm_forward, normalize_backward)):
        y, c = fwd(x, torch.ones(3), torch.zeros(3))
        assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in bwd(torch.ones_like(y), c))
