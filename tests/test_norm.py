"""Batch norm and layer norm: gradients, PyTorch parity, running statistics, layers, bad input."""

import pytest
import torch
import torch.nn.functional as F
from conftest import f64

from neuroforge_lit.norm import (BatchNorm1d, LayerNorm, batchnorm_eval_backward, batchnorm_eval_forward,
                                 batchnorm_forward, layernorm_forward, normalize_backward, normalized_mlp,
                                 running_stats_update)
from neuroforge_lit.testing import gradient_check


def params(gen, d=5):
    return 1 + 0.5 * f64(d, gen=gen), 0.5 * f64(d, gen=gen)


@pytest.mark.parametrize("fwd,bwd", [(batchnorm_forward, normalize_backward),
                                     (layernorm_forward, normalize_backward)])
def test_gradients_match_oracles(fwd, bwd, gen):
    x = 2 * f64(6, 5, gen=gen) + 1
    gamma, beta = params(gen)
    out, cache = fwd(x, gamma, beta)
    dout = f64(6, 5, gen=gen)
    dx, dgamma, dbeta = bwd(dout, cache)
    gradient_check(lambda x, gamma, beta: fwd(x, gamma, beta)[0], dict(x=x, gamma=gamma, beta=beta),
                   dict(x=dx, gamma=dgamma, beta=dbeta), dout=dout).assert_ok()


def test_eval_mode_gradients(gen):
    x = f64(3, 5, gen=gen)
    gamma, beta = params(gen)
    rm, rv = 0.3 * f64(5, gen=gen), 1 + torch.rand(5, dtype=torch.float64, generator=gen)
    out, cache = batchnorm_eval_forward(x, gamma, beta, rm, rv)
    dout = f64(3, 5, gen=gen)
    dx, dg, db = batchnorm_eval_backward(dout, cache)
    gradient_check(lambda x, gamma, beta: batchnorm_eval_forward(x, gamma, beta, rm, rv)[0],
                   dict(x=x, gamma=gamma, beta=beta), dict(x=dx, gamma=dg, beta=db), dout=dout).assert_ok()


@pytest.mark.parametrize("fwd,bwd", [(batchnorm_forward, normalize_backward),
                                     (layernorm_forward, normalize_backward)])
def test_gradcheck(fwd, bwd, gen):
    class Wrapped(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma, beta):
            out, ctx.cache = fwd(x, gamma, beta)
            return out

        @staticmethod
        def backward(ctx, dout):
            return bwd(dout, ctx.cache)

    gamma, beta = params(gen, 4)
    args = (f64(5, 4, gen=gen).requires_grad_(), gamma.requires_grad_(), beta.requires_grad_())
    assert torch.autograd.gradcheck(Wrapped.apply, args, eps=1e-6, atol=1e-7)


def test_forward_and_running_stats_match_torch(gen):
    x = 3 * f64(8, 5, gen=gen) - 1
    gamma, beta = params(gen)
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    ours_rm, ours_rv = rm.clone(), rv.clone()
    for momentum in (0.1, 0.3):   # two updates: the second starts from non-trivial running stats
        expected = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=momentum)
        out, cache = batchnorm_forward(x, gamma, beta)
        ours_rm, ours_rv = running_stats_update(ours_rm, ours_rv, cache, momentum)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close((ours_rm, ours_rv), (rm, rv))
        x = x * 0.5 + 2
    torch.testing.assert_close(batchnorm_eval_forward(x, gamma, beta, ours_rm, ours_rv)[0],
                               F.batch_norm(x, rm, rv, gamma, beta, training=False))
    torch.testing.assert_close(layernorm_forward(x, gamma, beta)[0], F.layer_norm(x, (5,), gamma, beta))


def test_running_stats_update_is_pure(gen):
    x = f64(4, 3, gen=gen)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    _, cache = batchnorm_forward(x, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    new_rm, new_rv = running_stats_update(rm, rv, cache)
    assert torch.equal(rm, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(rv, torch.ones(3, dtype=torch.float64))
    assert not torch.equal(new_rm, rm)


def test_layers_train_and_eval_modes(gen):
    bn = BatchNorm1d(4, dtype=torch.float64)
    x = f64(10, 4, gen=gen) * 2 + 3
    bn.forward(x)
    assert torch.allclose(bn.buffers["running_mean"], 0.1 * x.mean(0))
    bn.eval()
    one = bn.forward(x[:1])            # eval mode works for a batch of one
    assert one.shape == (1, 4)
    dx = bn.backward(torch.ones(1, 4, dtype=torch.float64))
    assert dx.shape == (1, 4) and set(bn.grads) == {"gamma", "beta"}
    ln = LayerNorm(4, dtype=torch.float64)
    out = ln.forward(x)
    torch.testing.assert_close(out.mean(1), torch.zeros(10, dtype=torch.float64))
    torch.testing.assert_close(ln.eval().forward(x), out)  # identical in inference


def test_normalized_mlp_structure():
    names = [type(layer).__name__ for layer in normalized_mlp([6, 5, 4, 3], "batch").layers]
    assert names == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="norm must be None, 'batch' or 'layer', got 'group'"):
        normalized_mlp([6, 3], "group")


def test_batch_of_one_in_training_mode_is_a_clear_error():
    with pytest.raises(ValueError, match=r"at least 2 examples.*\(1, 4\)"):
        batchnorm_forward(torch.randn(1, 4), torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match="at least 2 examples"):
        BatchNorm1d(4).forward(torch.randn(1, 4))


@pytest.mark.parametrize("fwd", [batchnorm_forward, layernorm_forward])
def test_feature_mismatch_names_both_shapes(fwd):
    with pytest.raises(ValueError, match=r"x has shape \(3, 5\).*gamma \(4,\)"):
        fwd(torch.randn(3, 5), torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"must have shape \(N, D\), got \(3, 5, 2\)"):
        fwd(torch.randn(3, 5, 2), torch.ones(5), torch.zeros(5))


@pytest.mark.parametrize("make", [lambda: BatchNorm1d(3), lambda: LayerNorm(3)])
def test_gradients_before_any_backward_are_zero(make):
    """BatchNorm1d(3).gradients() raised KeyError before the first backward; a parameter that no
    backward has reached has a zero gradient, as for every layer."""
    layer = make()
    grads = layer.gradients()
    assert [g.shape for g in grads] == [(3,), (3,)] and all(not g.any() for g in grads)


def test_batch_norm_declares_its_running_statistics_as_buffers(gen):
    bn = BatchNorm1d(4, dtype=torch.float64)
    bn.forward(f64(10, 4, gen=gen))
    state = bn.state_dict()
    assert set(state["buffers"]) == {"running_mean", "running_var"} and set(state["params"]) == {"gamma", "beta"}
    other = BatchNorm1d(4, dtype=torch.float64)
    other.load_state_dict(state)
    assert torch.equal(other.buffers["running_var"], bn.buffers["running_var"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 300.0, 1e4])
def test_16_bit_inputs_are_normalised_in_float32(dtype, scale):
    """The statistics of 16-bit inputs are computed in float32: in float16 the variance of values
    around 300 overflows (65504 is its largest number), and the output would silently be beta."""
    from neuroforge_lit.fast import FastBatchNorm1d, FastLayerNorm
    from neuroforge_lit.norm import BatchNorm1d, LayerNorm, batchnorm_forward, layernorm_forward, normalize_backward

    g = torch.Generator().manual_seed(0)
    x64 = scale * (1 + torch.randn(16, 8, dtype=torch.float64, generator=g))
    x = x64.to(dtype)
    gamma, beta = torch.ones(8, dtype=dtype), torch.full((8,), 0.5, dtype=dtype)
    tolerance = 0.02 if dtype == torch.float16 else 0.1           # 16-bit outputs: about 3 or 2 digits
    for forward, dim in ((batchnorm_forward, 0), (layernorm_forward, -1)):
        out, cache = forward(x, gamma, beta)
        assert out.dtype == dtype and torch.isfinite(out).all()
        xd = x.double()                                           # the reference: the same 16-bit input
        expected = (xd - xd.mean(dim, keepdim=True)) / torch.sqrt(xd.var(dim, correction=0, keepdim=True) + 1e-5) + 0.5
        assert (out.double() - expected).abs().max() < tolerance
        dx, dgamma, dbeta = normalize_backward(torch.ones_like(x), cache)
        assert dx.dtype == dgamma.dtype == dbeta.dtype == dtype and torch.isfinite(dx).all()
    for layer in (BatchNorm1d(8, dtype=dtype), LayerNorm(8, dtype=dtype), FastBatchNorm1d(8, dtype=dtype),
                  FastLayerNorm(8, dtype=dtype)):
        out = layer.forward(x)
        assert out.dtype == dtype and torch.isfinite(out).all() and out.double().std() > 0.5, type(layer).__name__
        assert layer.backward(torch.ones_like(out)).dtype == dtype
        layer.eval()
        assert torch.isfinite(layer.forward(x)).all(), type(layer).__name__      # running statistics too
    assert BatchNorm1d(8, dtype=dtype).buffers["running_var"].dtype == torch.float32
