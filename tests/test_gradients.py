"""Every exported backward pass against autograd, finite differences and torch.autograd.gradcheck.

float64, small odd shapes, values away from kinks and from the all-ones/zero initialisations
that hide bugs."""

import pytest
import torch
import torch.nn.functional as F
from conftest import f64, assert_tensors_equal

from neuroforge_lit.dropout import Dropout
from neuroforge_lit.layers import (Linear, ReLU, Sequential, linear_backward, linear_forward, relu_backward,
                                   relu_forward)
from neuroforge_lit.logistic import bce_with_logits, logistic_backward, logistic_forward, sigmoid
from neuroforge_lit.losses import cross_entropy, log_softmax, softmax, softmax_cross_entropy
from neuroforge_lit.testing import gradient_check


def away_from_zero(t, margin=0.1):
    return t + margin * torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


# --- (forward, backward) pairs with the (out, cache) contract -----------------------------------

def _linear(gen):
    return (linear_forward, linear_backward,
            dict(x=f64(4, 5, gen=gen), W=f64(5, 3, gen=gen), b=f64(3, gen=gen)))


def _relu(gen):
    return relu_forward, relu_backward, dict(x=away_from_zero(f64(4, 5, gen=gen)))


def _logistic(gen):
    return (logistic_forward, logistic_backward,
            dict(x=f64(7, 5, gen=gen), w=f64(5, gen=gen), b=torch.tensor(0.3, dtype=torch.float64)))


PAIRS = {"linear": _linear, "relu": _relu, "logistic": _logistic}


@pytest.mark.parametrize("name", PAIRS)
def test_backward_matches_oracles(name, gen):
    forward, backward, inputs = PAIRS[name](gen)
    out, cache = forward(**inputs)
    dout = f64(*out.shape, gen=gen)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    names = [k for k in inputs][-len(grads):]  # logistic returns (dw, db): no gradient for x
    report = gradient_check(lambda **kw: forward(**kw)[0], inputs, dict(zip(names, grads)), dout=dout)
    report.assert_ok()


def _as_function(forward, backward, n_grads):
    """A test-only autograd.Function wrapping a hand-written pair, for torch.autograd.gradcheck."""

    class Wrapped(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            out, ctx.cache = forward(*inputs)
            return out

        @staticmethod
        def backward(ctx, dout):
            grads = backward(dout, ctx.cache)
            grads = grads if isinstance(grads, tuple) else (grads,)
            return (None,) * (ctx.n_inputs - n_grads) + grads if hasattr(ctx, "n_inputs") else grads

    return Wrapped.apply


@pytest.mark.parametrize("name", ["linear", "relu"])
def test_gradcheck_autograd_function(name, gen):
    forward, backward, inputs = PAIRS[name](gen)
    args = tuple(v.requires_grad_() for v in inputs.values())
    n = len(args)
    assert torch.autograd.gradcheck(_as_function(forward, backward, n), args, eps=1e-6, atol=1e-8)


def test_gradcheck_logistic(gen):
    x = f64(6, 4, gen=gen)
    y = torch.tensor([1.0, 0, 0, 1, 1, 0], dtype=torch.float64)

    class Loss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w, b):
            z, cache = logistic_forward(x, w, b)
            loss, dz = bce_with_logits(z, y)
            ctx.saved = (dz, cache)
            return loss

        @staticmethod
        def backward(ctx, g):
            dz, cache = ctx.saved
            dw, db = logistic_backward(dz * g, cache)
            return dw, db

    w, b = f64(4, gen=gen).requires_grad_(), torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Loss.apply, (w, b), eps=1e-6, atol=1e-8)


def test_gradcheck_softmax_cross_entropy(gen):
    y = torch.tensor([2, 0, 4, 4, 1])

    class Loss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            loss, ctx.dz = softmax_cross_entropy(z, y)
            return loss

        @staticmethod
        def backward(ctx, g):
            return ctx.dz * g

    z = f64(5, 6, gen=gen, scale=3).requires_grad_()
    assert torch.autograd.gradcheck(Loss.apply, (z,), eps=1e-6, atol=1e-8)


# --- fused losses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_softmax_cross_entropy_gradient(scale, gen):
    z, y = f64(5, 7, gen=gen, scale=scale), torch.tensor([0, 6, 3, 3, 1])
    loss, dz = softmax_cross_entropy(z, y)
    gradient_check(lambda z: softmax_cross_entropy(z, y)[0], dict(z=z), dict(z=dz)).assert_ok()


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_bce_with_logits_gradient(scale, gen):
    z = f64(9, gen=gen, scale=scale)
    y = (torch.arange(9) % 2).double()
    loss, dz = bce_with_logits(z, y)
    gradient_check(lambda z: bce_with_logits(z, y)[0], dict(z=z), dict(z=dz)).assert_ok()


# --- forwards against PyTorch's own implementations --------------------------------------------

def test_forwards_match_torch(gen):
    x, W, b = f64(4, 5, gen=gen), f64(5, 3, gen=gen), f64(3, gen=gen)
    torch.testing.assert_close(linear_forward(x, W, b)[0], F.linear(x, W.T, b))
    torch.testing.assert_close(relu_forward(x)[0], F.relu(x))
    z = f64(6, 10, gen=gen, scale=5)
    y = torch.tensor([0, 9, 3, 3, 5, 1])
    torch.testing.assert_close(log_softmax(z), F.log_softmax(z, dim=1))
    torch.testing.assert_close(softmax(z), F.softmax(z, dim=1))
    torch.testing.assert_close(cross_entropy(z, y), F.cross_entropy(z, y))
    torch.testing.assert_close(softmax_cross_entropy(z, y)[0], F.cross_entropy(z, y))
    t = (torch.arange(6) % 2).double()
    torch.testing.assert_close(sigmoid(z[:, 0]), torch.sigmoid(z[:, 0]))
    torch.testing.assert_close(bce_with_logits(z[:, 0], t)[0],
                               F.binary_cross_entropy_with_logits(z[:, 0], t))


def test_whole_mlp_against_autograd(gen):
    """The thin layers chained into a network: every parameter's gradient at once."""
    from neuroforge_lit.layers import mlp

    model = mlp([5, 7, 6, 4], generator=gen, dtype=torch.float64)
    x, y = f64(8, 5, gen=gen), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    loss, dz = softmax_cross_entropy(model.forward(x), y)
    model.backward(dz)
    names = [n.replace(".", "_") for n, _ in model.named_parameters()]

    def loss_of(**params):
        h = x
        ps = list(params.values())
        for i in range(0, len(ps), 2):
            h = linear_forward(h, ps[i], ps[i + 1])[0]
            if i + 2 < len(ps):
                h = relu_forward(h)[0]
        return softmax_cross_entropy(h, y)[0]

    report = gradient_check(loss_of, dict(zip(names, model.parameters())),
                            dict(zip(names, model.gradients())))
    report.assert_ok()


def test_gradient_check_catches_a_wrong_backward(gen):
    """The oracle itself must be able to fail: a transposed dW is reported, not waved through."""
    x, W, b = f64(4, 4, gen=gen), f64(4, 4, gen=gen), f64(4, gen=gen)
    dout = f64(4, 4, gen=gen)
    dx, dW, db = linear_backward(dout, (x, W))
    report = gradient_check(lambda x, W, b: linear_forward(x, W, b)[0], dict(x=x, W=W, b=b),
                            dict(x=dx, W=dW.T, b=db), dout=dout)
    assert not report.ok
    with pytest.raises(AssertionError, match="disagrees"):
        report.assert_ok()


def test_sequential_without_input_grad_stops_at_the_lowest_layer_with_parameters(gen):
    """A model that starts with dropout: with input_grad=False the dropout's backward is never run,
    the first Linear skips its input gradient, and every parameter gradient is unchanged."""
    model = Sequential(ReLU(), Dropout(0.3, generator=torch.Generator().manual_seed(1)),
                       Linear(6, 5, generator=gen, dtype=torch.float64), ReLU(),
                       Linear(5, 3, generator=gen, dtype=torch.float64))
    assert model.first_with_parameters() == 2
    x, dout = f64(4, 6, gen=gen), f64(4, 3, gen=gen)
    model.forward(x)
    dx = model.backward(dout, input_grad=True)
    with_dx = [g.clone() for g in model.gradients()]
    calls = []
    for layer in model.layers:
        def spy(d, input_grad=True, layer=layer, run=layer.backward):
            calls.append((type(layer).__name__, input_grad))
            return run(d, input_grad)
        layer.backward = spy
    assert model.backward(dout, input_grad=False) is None
    assert calls == [("Linear", True), ("ReLU", True), ("Linear", False)]
    assert_tensors_equal(with_dx, model.gradients(), "with_dx vs model.gradients()")
    assert dx.shape == x.shape
    assert Sequential(ReLU()).backward(dout, input_grad=False) is None   # no parameters: nothing to run
