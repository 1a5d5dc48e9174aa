"""Inverted dropout: gradients with a fixed mask, expectation, determinism, inference, bad p."""

import pytest
import torch
from conftest import f64

from neuroforge_lit.dropout import Dropout, dropout_backward, dropout_forward, dropout_mask
from neuroforge_lit.testing import gradient_check


def test_gradient_with_a_fixed_mask(gen):
    x = f64(5, 7, gen=gen)
    mask = dropout_mask(x.shape, 0.4, generator=gen, dtype=torch.float64)
    out, cache = dropout_forward(x, 0.4, mask=mask)
    dout = f64(5, 7, gen=gen)
    gradient_check(lambda x: dropout_forward(x, 0.4, mask=mask)[0], dict(x=x),
                   dict(x=dropout_backward(dout, cache)), dout=dout).assert_ok()


def test_gradcheck(gen):
    mask = dropout_mask((4, 3), 0.5, generator=gen, dtype=torch.float64)

    class Wrapped(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            out, ctx.cache = dropout_forward(x, 0.5, mask=mask)
            return out

        @staticmethod
        def backward(ctx, dout):
            return dropout_backward(dout, ctx.cache)

    assert torch.autograd.gradcheck(Wrapped.apply, (f64(4, 3, gen=gen).requires_grad_(),))


def test_mask_values_and_expectation(gen):
    m = dropout_mask((1000, 1000), 0.25, generator=gen)
    values = m.unique()
    assert len(values) == 2 and values[0] == 0.0 and abs(values[1].item() - 1 / 0.75) < 1e-6
    assert abs(m.mean().item() - 1.0) < 5e-3
    assert abs((m > 0).float().mean().item() - 0.75) < 5e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_keep_rate_is_one_minus_p_in_every_dtype(dtype):
    # 4e6 draws: the keep rate's standard error is 2.3e-4, so 1.5e-3 is a > 6 sigma bound, yet a
    # uniform drawn in bfloat16 (a bias near 1.6e-3 at p = 0.3) would fail it.
    m = dropout_mask((2000, 2000), 0.3, generator=torch.Generator().manual_seed(3), dtype=dtype)
    assert m.dtype == dtype
    assert abs((m > 0).double().mean().item() - 0.7) < 1.5e-3


def test_same_generator_seed_same_mask():
    a = dropout_mask((50, 20), 0.5, generator=torch.Generator().manual_seed(7))
    b = dropout_mask((50, 20), 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_p_zero_and_inference_are_identity_without_random_draws(gen):
    x = torch.randn(6, 4)
    state = gen.get_state()
    for out, cache in (dropout_forward(x, 0.0, generator=gen),
                       dropout_forward(x, 0.7, training=False, generator=gen)):
        assert out is x and cache is None
    assert torch.equal(state, gen.get_state())
    layer = Dropout(0.5, generator=gen).eval()
    assert torch.equal(layer.forward(x), x) and torch.equal(layer.backward(x), x)
    assert torch.equal(state, gen.get_state())


def test_layer_in_training_mode_drops_and_backpropagates_through_the_same_mask(gen):
    layer = Dropout(0.5, generator=gen)
    x = torch.ones(20, 30)
    out = layer.forward(x)
    dx = layer.backward(torch.ones_like(x))
    assert torch.equal(dx, out)                     # d(out)/dx is the mask, and out = mask * 1
    assert 0.3 < (out == 0).float().mean().item() < 0.7


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_p_outside_zero_one_is_a_value_error_naming_it(p):
    with pytest.raises(ValueError, match=rf"must be in \[0, 1\), got {p}"):
        dropout_forward(torch.ones(2, 2), p)
    with pytest.raises(ValueError, match="must be in"):
        Dropout(p)
    with pytest.raises(ValueError, match="must be in"):
        dropout_mask((2, 2), p)


def test_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\) but x has shape \(3, 2\)"):
        dropout_forward(torch.ones(3, 2), 0.5, mask=torch.ones(2, 3))
