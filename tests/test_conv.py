"""Convolutions and max pooling (book/10_convolutions.md): gradients against autograd and finite
differences for many strides and paddings, agreement with torch's own layers, the routing of the
pooling gradient, the layers in the Layer protocol, and clear errors for bad shapes."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_tensors_equal, f64

from neuroforge_lit.conv import (Conv2d, MaxPool2d, Reshape, col2im, conv2d_backward, conv2d_forward,
                                 conv_output_size, convnet, im2col, maxpool2d_backward, maxpool2d_forward)
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.optim import Adam
from neuroforge_lit.testing import gradient_check, model_gradient_check
from neuroforge_lit.training import evaluate, fit


@pytest.mark.parametrize("stride, padding, kernel", [(1, 0, 3), (2, 1, 3), (1, 2, 5), (3, 0, 2), (2, 2, 1)])
def test_conv2d_gradients_and_forward(gen, stride, padding, kernel):
    x, W, b = f64(2, 3, 7, 6, gen=gen), f64(4, 3, kernel, kernel, gen=gen), f64(4, gen=gen)
    y, cache = conv2d_forward(x, W, b, stride, padding)
    torch.testing.assert_close(y, F.conv2d(x, W, b, stride=stride, padding=padding), rtol=0, atol=1e-12)
    assert y.shape[2:] == (conv_output_size(7, kernel, stride, padding), conv_output_size(6, kernel, stride, padding))
    dy = f64(*y.shape, gen=gen)
    dx, dW, db = conv2d_backward(dy, cache)
    gradient_check(lambda x, W, b: conv2d_forward(x, W, b, stride, padding)[0], dict(x=x, W=W, b=b),
                   dict(x=dx, W=dW, b=db), dout=dy).assert_ok()
    none, dW2, db2 = conv2d_backward(dy, cache, input_grad=False)
    assert none is None
    assert_tensors_equal([dW2, db2], [dW, db], "the parameter gradients with and without dx")


def test_col2im_is_the_adjoint_of_im2col(gen):
    x = f64(2, 3, 9, 8, gen=gen)
    cols = im2col(x, 3, 2, 1)
    c = f64(*cols.shape, gen=gen)
    assert abs((cols * c).sum() - (x * col2im(c, (9, 8), 3, 2, 1)).sum()) < 1e-10


@pytest.mark.parametrize("kernel, stride", [(2, None), (3, 2), (2, 1), (3, 3)])
def test_maxpool_gradients_and_forward(gen, kernel, stride):
    x = f64(2, 3, 8, 7, gen=gen)
    y, cache = maxpool2d_forward(x, kernel, stride)
    assert_tensors_equal([y], [F.max_pool2d(x, kernel, stride)], "max pooling against torch")
    dy = f64(*y.shape, gen=gen)
    gradient_check(lambda x: maxpool2d_forward(x, kernel, stride)[0], dict(x=x),
                   dict(x=maxpool2d_backward(dy, cache)), dout=dy).assert_ok()


def test_maxpool_routes_every_gradient_to_its_window_winner_and_keeps_the_sum(gen):
    x = f64(3, 2, 6, 6, gen=gen)
    y, cache = maxpool2d_forward(x, 2)
    dy = f64(*y.shape, gen=gen)
    dx = maxpool2d_backward(dy, cache)
    assert (dx != 0).sum() == dy.numel()                     # one pixel per window, none elsewhere
    assert_tensors_equal([dx[dx != 0].sort().values], [dy.flatten().sort().values], "the routed gradients")
    _, where = F.max_pool2d(x, 2, return_indices=True)      # torch's arg-max of every window
    winners = torch.zeros(3, 2, 36).scatter_(2, where.flatten(2), 1).reshape(x.shape) > 0
    assert torch.equal(dx != 0, winners)


def test_maxpool_on_a_tie_gives_the_whole_gradient_to_one_entry():
    x = torch.zeros(1, 1, 2, 2)
    y, cache = maxpool2d_forward(x, 2)
    dx = maxpool2d_backward(torch.ones(1, 1, 1, 1), cache)
    assert dx.sum() == 1 and (dx != 0).sum() == 1


def test_layers_match_torch_and_follow_the_layer_protocol(gen):
    conv = Conv2d(3, 5, 3, stride=2, padding=1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert conv.params["W"].shape == (5, 3, 3, 3) and conv.params["b"].shape == (5,)
    std = conv.params["W"].std().item()
    assert 0.5 * (2 / 27) ** 0.5 < std < 1.5 * (2 / 27) ** 0.5    # He init with fan-in C K^2
    x = f64(2, 3, 8, 8, gen=gen)
    out = conv.forward(x)
    expected = F.conv2d(x, conv.params["W"], conv.params["b"], stride=2, padding=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    dx = conv.backward(torch.ones_like(out))
    assert dx.shape == x.shape and conv.grads["W"].shape == (5, 3, 3, 3)
    pool, flat = MaxPool2d(2), Reshape(-1)
    assert flat.forward(pool.forward(out)).shape == (2, 5 * 2 * 2)
    assert flat.backward(torch.ones(2, 20)).shape == (2, 5, 2, 2)
    assert pool.backward(torch.ones(2, 5, 2, 2)).shape == out.shape
    assert conv.state_dict()["params"].keys() == {"W", "b"}


def test_convnet_backward_checks_against_autograd(gen):
    net = convnet(channels=(2, 3), hidden=6, padding=2, image=(1, 8, 8), generator=torch.Generator().manual_seed(1),
                  dtype=torch.float64)
    x, y = f64(4, 64, gen=gen), torch.tensor([0, 3, 9, 3])
    report = model_gradient_check(net, x, lambda out: softmax_cross_entropy(out, y), h=1e-5)
    report.assert_ok()
    assert len(report.rows) == 9                       # the input and 8 parameters


def test_convnet_learns_a_small_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(200, 1, 12, 12)
    y = torch.randint(0, 2, (200,), generator=g)
    rows = torch.randint(0, 12, (200,), generator=g)
    for i in range(200):                       # class 0: a horizontal bar, class 1: a vertical one
        if y[i] == 0:
            x[i, 0, rows[i], :] = 1
        else:
            x[i, 0, :, rows[i]] = 1
    x = x.reshape(200, -1)
    net = convnet(channels=(4,), hidden=8, classes=2, image=(1, 12, 12), generator=g)
    before = evaluate(net, x, y)["accuracy"]
    fit(net, Adam(1e-2), x, y, epochs=15, batch_size=20, log=None)
    assert evaluate(net, x, y)["accuracy"] > max(0.95, before)


@pytest.mark.parametrize("args, message", [
    (((2, 3, 5, 5), (4, 2, 3, 3), (4,)), "expected x"),
    (((2, 3, 5), (4, 3, 3, 3), (4,)), "expected x"),
    (((2, 3, 5, 5), (4, 3, 3, 3), (3,)), "b (C_out,)"),
    (((2, 3, 2, 2), (4, 3, 5, 5), (4,)), "does not fit"),
])
def test_conv_bad_shapes_name_the_problem(args, message):
    x, W, b = (torch.zeros(s) for s in args)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        conv2d_forward(x, W, b)


def test_conv_and_pool_bad_settings_are_refused():
    x, W, b = torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 3, 3), torch.zeros(1)
    with pytest.raises(ValueError, match="stride"):
        conv2d_forward(x, W, b, stride=0)
    with pytest.raises(ValueError, match="padding"):
        conv2d_forward(x, W, b, padding=-1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        maxpool2d_forward(torch.zeros(5, 5))
    with pytest.raises(ValueError, match="does not fit"):
        maxpool2d_forward(torch.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="stride"):
        maxpool2d_forward(x, 2, 0)


@pytest.mark.parametrize("padding, features", [(0, 32 * 4 * 4), (2, 32 * 7 * 7)])
def test_convnet_sizes_its_head_for_the_padding(padding, features):
    """Valid convolutions shrink 28 -> 24 -> 12 -> 8 -> 4, same ones 28 -> 14 -> 7; the hidden layer
    must be built for whichever the padding gives."""
    net = convnet(padding=padding, generator=torch.Generator().manual_seed(0))
    assert net.layers[-3].params["W"].shape[0] == features
    assert net.forward(torch.rand(3, 784)).shape == (3, 10)
