"""testing.model_gradient_check: a whole model's backward against the oracles, with the model's
own parameter tensors, buffers and caches given back afterwards."""

import pytest
import torch

from neuroforge_lit.layers import Linear, ReLU, Sequential
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.norm import normalized_mlp
from neuroforge_lit.testing import model_gradient_check


def _mlp(seed=0, norm=None):
    return normalized_mlp([5, 7, 4], norm, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 5, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_a_correct_backward_passes_with_every_parameter_and_the_input(norm):
    model, (x, y) = _mlp(norm=norm), _data()
    report = model_gradient_check(model, x, lambda out: softmax_cross_entropy(out, y), name=f"mlp {norm}")
    report.assert_ok()
    assert [row.name for row in report.rows] == ["x", *(path for path, _ in model.named_parameters())]


def test_a_wrong_backward_fails():
    class WrongReLU(ReLU):
        def backward(self, dout, input_grad=True):
            return dout                                       # the mask forgotten

    model = Sequential(Linear(5, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64), WrongReLU(),
                       Linear(7, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    x, y = _data()
    report = model_gradient_check(model, x, lambda out: softmax_cross_entropy(out, y))
    assert not report.ok
    assert {row.name for row in report.rows if not report.autograd_ok(row)} >= {"x", "0.W", "0.b"}


def test_the_model_is_given_back_as_the_hand_pass_left_it():
    model, (x, y) = _mlp(norm="batch"), _data()
    params = {path: p for path, p in model.named_parameters()}
    twin = _mlp(norm="batch")
    out = twin.forward(x)
    twin.backward(softmax_cross_entropy(out, y)[1])
    model_gradient_check(model, x, lambda out: softmax_cross_entropy(out, y)).assert_ok()
    assert all(p is params[path] for path, p in model.named_parameters())        # the very tensors
    for (_, a), (_, b) in zip(model.named_layers(), twin.named_layers()):
        for key in b.buffers:                                                     # one forward's update
            torch.testing.assert_close(a.buffers[key], b.buffers[key], rtol=0, atol=0)
    for a, b in zip(model.gradients(), twin.gradients()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    torch.testing.assert_close(model.layers[-1].cache[0], twin.layers[-1].cache[0], rtol=0, atol=0)


def test_the_parameters_come_back_when_the_oracle_fails():
    model, (x, y) = _mlp(), _data()
    params = [p for _, p in model.named_parameters()]

    def loss(out):
        if out.requires_grad:
            raise RuntimeError("the oracle's forward failed")
        return softmax_cross_entropy(out, y)

    with pytest.raises(RuntimeError, match="oracle's forward failed"):
        model_gradient_check(model, x, loss)
    assert all(a is b for a, b in zip(model.parameters(), params))


def test_dout_skip_extra_loss_and_input_grad():
    model, (x, _) = _mlp(), _data()
    dout = torch.randn(6, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    report = model_gradient_check(model, x, dout=dout, input_grad=False, skip=("0.b",))
    report.assert_ok()
    assert [row.name for row in report.rows] == ["0.W", "2.W", "2.b"]
    # an extra loss that backward does not add is caught
    wrong = model_gradient_check(model, x, dout=dout, extra_loss=lambda m: m.layers[0].params["W"].sum())
    assert not wrong.ok


def test_bad_arguments_are_named():
    model, (x, y) = _mlp(), _data()
    with pytest.raises(ValueError, match="exactly one of loss"):
        model_gradient_check(model, x)
    with pytest.raises(ValueError, match="exactly one of loss"):
        model_gradient_check(model, x, lambda out: softmax_cross_entropy(out, y), dout=torch.zeros(6, 4))
    with pytest.raises(ValueError, match=r"skip names no parameter of the model: \['0.V'\]"):
        model_gradient_check(model, x, lambda out: softmax_cross_entropy(out, y), skip=("0.V",))


def test_input_grad_false_must_return_none():
    class Leaky(Sequential):
        def backward(self, dout, input_grad=True):
            return super().backward(dout, input_grad=True)

    model = Leaky(Linear(5, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    x, _ = _data()
    with pytest.raises(AssertionError, match="must return None"):
        model_gradient_check(model, x, dout=torch.ones(6, 4, dtype=torch.float64), input_grad=False)
