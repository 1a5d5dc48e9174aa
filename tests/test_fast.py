"""book/performance.md: every fast variant against the reference it replaces, in float64 to
1e-12 relative: the fast layers and loss (alone and through speed_up), the in-place norm
backwards, the convolution and max pooling on PyTorch's forward kernels, the attention with one
copy into the heads' layout and one out each way, sgd_step_fused (the
update folded into the backward pass) and FusedAdamW's compiling. The optimizers' agreement with
torch.optim, resume and NaN policy run with the references' in test_optim.py."""

import copy

import pytest
import torch

from neuroforge_lit import fast
from neuroforge_lit.attention import MultiHeadAttention, vision_transformer
from neuroforge_lit.conv import Conv2d, MaxPool2d, Reshape, conv2d_backward, conv2d_forward, convnet
from neuroforge_lit.dropout import Dropout
from neuroforge_lit.fast import (FastBatchNorm1d, FastConv2d, FastLayerNorm, FastLinear, FastMaxPool2d,
                                 FastMultiHeadAttention, FastReLU,
                                 FusedAdamW, batchnorm_backward_fast, conv2d_backward_fast, layernorm_backward_fast,
                                 sgd_step_fused, softmax_cross_entropy_fast, speed_up)
from neuroforge_lit.layers import Linear, ReLU, Sequential
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.moe import MoE
from neuroforge_lit.norm import BatchNorm1d, LayerNorm, normalize_backward, normalize_forward, normalized_mlp
from neuroforge_lit.optim import AdamW, GradientDescent
from neuroforge_lit.testing import parity_gap

from conftest import assert_tensors_equal

TOL = 1e-12


def _batch(n=32, d=20, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def assert_parity(fast_tensors, reference_tensors, what):
    for i, (a, b) in enumerate(zip(fast_tensors, reference_tensors, strict=True)):
        gap = parity_gap([(a, b)])
        assert gap <= TOL, f"{what}, tensor {i}: fast differs from the reference by {gap:.1e} (relative)"


def _models():
    g = torch.Generator().manual_seed(1)
    return {
        "mlp": normalized_mlp([20, 16, 12, 5], None, generator=g, dtype=torch.float64),
        "mlp+batchnorm": normalized_mlp([20, 16, 12, 5], "batch", generator=g, dtype=torch.float64),
        "mlp+layernorm": normalized_mlp([20, 16, 12, 5], "layer", generator=g, dtype=torch.float64),
        "dropout": Sequential(Dropout(0.2, generator=torch.Generator().manual_seed(2)),
                              Linear(20, 16, generator=g, dtype=torch.float64), ReLU(),
                              Dropout(0.5, generator=torch.Generator().manual_seed(3)),
                              Linear(16, 5, generator=g, dtype=torch.float64)),
        "moe": Sequential(MoE(20, 8, 4, 2, 6, generator=g, noise_generator=torch.Generator().manual_seed(4),
                              dtype=torch.float64), ReLU(), Linear(8, 5, generator=g, dtype=torch.float64)),
        # 4 x 5 images: the first pooling leaves the last column out (no window reaches it)
        "convnet": convnet((2, 3), hidden=8, classes=5, padding=2, image=(1, 4, 5), generator=g, dtype=torch.float64),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_speed_up_trains_like_the_reference(name):
    """Three steps of training, reference against speed_up: outputs, losses, gradients of the input
    and of every parameter, and the parameters after the update."""
    reference = _models()[name]
    if name == "moe":
        reference.layers[0].params["W_g"] = torch.randn(20, 4, dtype=torch.float64,
                                                       generator=torch.Generator().manual_seed(5))
    faster = speed_up(copy.deepcopy(reference))
    assert any(type(layer).__name__.startswith("Fast") for _, layer in faster.named_layers())
    x, y = _batch()
    for step in range(3):
        out_r, out_f = reference.forward(x), faster.forward(x)
        (loss_r, d_r), (loss_f, d_f) = softmax_cross_entropy(out_r, y), softmax_cross_entropy_fast(out_f, y)
        dx_r, dx_f = reference.backward(d_r), faster.backward(d_f)
        assert_parity([out_f, loss_f, d_f, dx_f, *faster.gradients()],
                      [out_r, loss_r, d_r, dx_r, *reference.gradients()], f"{name}, step {step}")
        for model in (reference, faster):
            GradientDescent(0.1).step(model.parameters(), model.gradients())
    assert_parity(faster.parameters(), reference.parameters(), f"{name}, parameters after 3 steps")


def test_speed_up_swaps_only_what_has_a_variant_and_keeps_the_state():
    model = _models()["mlp+batchnorm"]
    state = model.state_dict()
    same = speed_up(model)
    assert same is model
    assert [type(layer) for layer in model.layers] == [FastLinear, FastBatchNorm1d, FastReLU, FastLinear,
                                                       FastBatchNorm1d, FastReLU, FastLinear]
    assert model.state_dict().keys() == state.keys()
    for kind in ("params", "buffers"):
        assert_tensors_equal({k: model.state_dict()[kind][k] for k in state[kind]}, state[kind], f"state_dict {kind}")
    layer_norm = speed_up(LayerNorm(4))
    assert type(layer_norm) is FastLayerNorm and isinstance(layer_norm, LayerNorm)


def test_fast_linear_overwrites_its_gradient_buffers():
    layer = speed_up(Linear(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    x = torch.randn(5, 6, dtype=torch.float64)
    layer.forward(x)
    layer.backward(torch.ones(5, 3, dtype=torch.float64))
    first = layer.grads["W"]
    layer.forward(x)
    layer.backward(2 * torch.ones(5, 3, dtype=torch.float64))
    assert layer.grads["W"] is first                              # the same buffer, new values
    torch.testing.assert_close(first, 2 * x.sum(0)[:, None].expand(6, 3))


@pytest.mark.parametrize("dim,fast_backward", [(0, batchnorm_backward_fast), (-1, layernorm_backward_fast)])
def test_fast_norm_backwards_match_normalize_backward(dim, fast_backward):
    g = torch.Generator().manual_seed(7)
    x = 3 * torch.randn(11, 6, generator=g, dtype=torch.float64) + 2
    gamma = 1 + 0.4 * torch.randn(6, generator=g, dtype=torch.float64)
    beta = torch.randn(6, generator=g, dtype=torch.float64)
    dout = torch.randn(11, 6, generator=g, dtype=torch.float64)
    _, cache = normalize_forward(x, gamma, beta, dim)
    assert_parity(fast_backward(dout, cache), normalize_backward(dout, cache), fast_backward.__name__)


def test_fast_batch_norm_in_inference_mode_is_the_reference():
    x, _ = _batch(d=7)
    reference = BatchNorm1d(7, dtype=torch.float64)
    reference.forward(3 * x + 1)                                  # running statistics away from 0 and 1
    reference.eval()
    faster = speed_up(copy.deepcopy(reference))
    dout = torch.randn(32, 7, dtype=torch.float64)
    assert_parity([faster.forward(x), faster.backward(dout), *faster.gradients()],
                  [reference.forward(x), reference.backward(dout), *reference.gradients()], "eval batch norm")


def test_fast_loss_matches_at_extreme_logits_and_checks_labels():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [0.5, 0.25, 0.0]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    assert_parity(softmax_cross_entropy_fast(logits, y), softmax_cross_entropy(logits, y), "loss")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        softmax_cross_entropy_fast(logits, torch.tensor([0, 3]))


# --- sgd_step_fused ------------------------------------------------------------------------------

def _assert_one_fused_step_matches_plain(fused, x, y, lr=0.1):
    """One sgd_step_fused against a copy stepped by backward + GradientDescent (same dropout masks:
    the copy's generators are copied too)."""
    plain = copy.deepcopy(fused)
    plain.backward(softmax_cross_entropy(plain.forward(x), y)[1], input_grad=False)
    GradientDescent(lr).step(plain.parameters(), plain.gradients())
    sgd_step_fused(fused, softmax_cross_entropy(fused.forward(x), y)[1], lr=lr)
    assert_parity(fused.parameters(), plain.parameters(), "sgd_step_fused")


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
@pytest.mark.parametrize("faster", [False, True])
def test_fused_step_matches_backward_then_gradient_descent(norm, faster):
    x, y = _batch()
    fused = normalized_mlp([20, 16, 8, 5], norm, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if faster:
        speed_up(fused)
    plain = copy.deepcopy(fused)
    before = [p.clone() for p in fused.parameters()]
    for _ in range(4):
        plain.backward(softmax_cross_entropy(plain.forward(x), y)[1], input_grad=False)
        GradientDescent(0.2).step(plain.parameters(), plain.gradients())
        sgd_step_fused(fused, softmax_cross_entropy(fused.forward(x), y)[1], lr=0.2)
    for p, b in zip(fused.parameters(), before):
        assert not torch.equal(p, b)                      # the step moved every parameter
    assert_parity(fused.parameters(), plain.parameters(), f"sgd_step_fused, norm={norm}")


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
    assert_tensors_equal(model.parameters(), before, "model.parameters() vs before")
    with pytest.raises(ValueError, match=r"lr must be in \[0.0, inf\), got -0.1"):
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


# --- FusedAdamW: AdamW compiled into one loop per tensor -------------------------------------------

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
    assert_parity(after, _adamw_run(AdamW(1e-2, weight_decay=0.1), steps=12), "FusedAdamW")


def test_fused_adamw_warns_once_and_runs_uncompiled_where_compiling_fails(monkeypatch):
    def no_compiler():
        def compiled(*args):
            raise RuntimeError("no C++ compiler found")
        return compiled
    monkeypatch.setattr(fast, "_compiled_adamw", no_compiler)
    opt = FusedAdamW(1e-2, weight_decay=0.1)
    with pytest.warns(RuntimeWarning, match=r"compiled update failed \(RuntimeError: no C\+\+ compiler"):
        params = _adamw_run(opt)
    assert isinstance(opt.compile_error, RuntimeError)
    assert_parity(params, _adamw_run(AdamW(1e-2, weight_decay=0.1)), "uncompiled FusedAdamW")


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


@pytest.mark.parametrize("dim", [0, -1])
def test_fast_norm_forward_matches_normalize_forward(dim):
    g = torch.Generator().manual_seed(8)
    x = 5 * torch.randn(13, 7, generator=g, dtype=torch.float64) - 3
    gamma = 1 + 0.4 * torch.randn(7, generator=g, dtype=torch.float64)
    beta = torch.randn(7, generator=g, dtype=torch.float64)
    ref_out, ref_cache = normalize_forward(x, gamma, beta, dim)
    out, cache = fast.normalize_forward_fast(x, gamma, beta, dim)
    assert_parity([out, *cache[:5]], [ref_out, *ref_cache[:5]], f"normalize_forward_fast, dim {dim}")
    if dim == -1:
        out, cache = fast.layernorm_forward_fast(x, gamma, beta)
        assert_parity([out, *cache[:5]], [ref_out, *ref_cache[:5]], "layernorm_forward_fast")
    assert cache.dim == dim


# --- FastConv2d and FastMaxPool2d: the backward pass on PyTorch's forward kernels --------------------

# (x shape, kernel, stride, padding); the remainder (H + 2P - K) mod S counts the rows no window reaches
CONV_CASES = [((3, 2, 8, 8), 3, 2, 0),      # 1 row and 1 column unreached, pixels of the image
              ((2, 3, 7, 6), 3, 2, 1),      # 0 and 1: the unreached column is padding
              ((2, 2, 11, 9), 3, 3, 1),     # 1 and 2
              ((2, 2, 9, 10), 4, 3, 0),     # 2 and 0, an even kernel
              ((2, 3, 7, 6), 5, 1, 2),      # stride 1, "same" padding
              ((1, 1, 5, 5), 2, 3, 0),      # stride > kernel: gaps between the windows, 0 and 0
              ((4, 1, 6, 7), 1, 2, 1)]      # a 1 x 1 kernel: 1 and 0


def _conv_pair(shape, K, S, P, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    reference = Conv2d(shape[1], 4, K, stride=S, padding=P, generator=g, dtype=dtype)
    reference.params["b"] += torch.randn(4, generator=g, dtype=dtype)
    return reference, speed_up(copy.deepcopy(reference)), torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("shape,K,S,P", CONV_CASES)
def test_fast_conv_matches_the_im2col_reference(shape, K, S, P, input_grad):
    reference, faster, x = _conv_pair(shape, K, S, P)
    assert type(faster) is FastConv2d
    outs = [layer.forward(x) for layer in (reference, faster)]
    dout = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dx_r, dx_f = reference.backward(dout, input_grad), faster.backward(dout, input_grad)
    assert_parity([outs[1], *faster.gradients()], [outs[0], *reference.gradients()], f"FastConv2d {shape} {K} {S} {P}")
    if input_grad:
        assert dx_f.shape == x.shape
        assert_parity([dx_f], [dx_r], f"FastConv2d dx, {shape} {K} {S} {P}")
    else:
        assert dx_f is None and dx_r is None


def test_fast_conv_gives_the_unreached_pixels_no_gradient():
    """8 pixels, kernel 3, stride 2: the windows start at 0, 2, 4 and never read pixel 7."""
    _, faster, x = _conv_pair((2, 3, 8, 8), 3, 2, 0)
    y = faster.forward(x)
    dx = faster.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    assert y.shape[2:] == (3, 3) and dx.shape == x.shape
    assert torch.all(dx[..., 7] == 0) and torch.all(dx[..., 7, :] == 0)
    assert (dx[..., :7, :7] != 0).all()
    changed = x.clone()
    changed[..., 7] = 1e3
    assert torch.equal(faster.forward(changed), y)


def test_conv2d_backward_fast_takes_the_input_as_its_cache():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    W = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    y, cache = conv2d_forward(x, W, torch.zeros(5, dtype=torch.float64), 2, 1)
    dout = torch.randn(y.shape, generator=g, dtype=torch.float64)
    fast_grads = conv2d_backward_fast(dout, (x, W, 2, 1))
    assert_parity(fast_grads, conv2d_backward(dout, cache), "conv2d_backward_fast")
    assert fast_grads[1].is_contiguous() and fast_grads[1].shape == W.shape


def test_fast_conv_in_float32():
    reference, faster, x = _conv_pair((4, 3, 12, 12), 5, 1, 0, dtype=torch.float32)
    dout = torch.randn(8 * 8 * 4 * 4, generator=torch.Generator().manual_seed(4)).reshape(4, 4, 8, 8)
    for out_r, out_f in zip(*[(layer.forward(x), layer.backward(dout), *layer.gradients())
                              for layer in (reference, faster)]):
        assert out_f.dtype == torch.float32
        torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-4)


def test_fast_conv_refuses_what_the_reference_refuses():
    for make, x in ((lambda cls: cls(3, 2, 3), torch.zeros(1, 4, 5, 5)),          # channels
                    (lambda cls: cls(1, 2, 7), torch.zeros(1, 1, 5, 5)),          # kernel too big
                    (lambda cls: cls(1, 2, 3, stride=0), torch.zeros(1, 1, 5, 5)),
                    (lambda cls: cls(1, 2, 3), torch.zeros(1, 5, 5))):
        with pytest.raises(ValueError) as reference_error:
            make(Conv2d).forward(x)
        with pytest.raises(ValueError, match=str(reference_error.value).replace("(", r"\(").replace(")", r"\)")):
            make(FastConv2d).forward(x)
    with pytest.raises(TypeError, match="x is torch.float64 but the layer's W is torch.float32"):
        FastConv2d(1, 2, 3).forward(torch.zeros(1, 1, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        FastMaxPool2d(2).forward(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        FastMaxPool2d(4).forward(torch.zeros(1, 1, 3, 3))


# (kernel, stride, x shape): stride None is the kernel; overlapping windows add; columns left out
POOL_CASES = [(2, None, (3, 4, 8, 8)), (2, None, (2, 3, 5, 7)), (3, 2, (3, 4, 9, 8)), (2, 1, (3, 4, 5, 7)),
              (3, 3, (2, 4, 10, 11)), (3, 1, (1, 2, 6, 6))]


@pytest.mark.parametrize("kernel,stride,shape", POOL_CASES)
def test_fast_max_pool_matches_the_reference(kernel, stride, shape):
    g = torch.Generator().manual_seed(5)
    reference = MaxPool2d(kernel, stride)
    faster = speed_up(copy.deepcopy(reference))
    assert type(faster) is FastMaxPool2d
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    outs = [layer.forward(x) for layer in (reference, faster)]
    dout = torch.randn(outs[0].shape, generator=g, dtype=torch.float64)
    assert_parity([outs[1], faster.backward(dout)], [outs[0], reference.backward(dout)], f"FastMaxPool2d {kernel}")
    assert outs[1].is_contiguous()


@pytest.mark.parametrize("kernel,stride,shape", POOL_CASES)
def test_fast_max_pool_breaks_ties_as_the_reference(kernel, stride, shape):
    """Images of 0, 1 and 2 (ties in most windows) and integer upstream gradients, whose sums are
    exact: the two paths must route every gradient to the same pixel, bit for bit."""
    g = torch.Generator().manual_seed(6)
    reference = MaxPool2d(kernel, stride)
    faster = speed_up(copy.deepcopy(reference))
    x = torch.randint(0, 3, shape, generator=g).to(torch.float64)
    outs = [layer.forward(x) for layer in (reference, faster)]
    dout = torch.randint(-9, 10, outs[0].shape, generator=g).to(torch.float64)
    assert torch.equal(outs[1], outs[0])
    assert torch.equal(faster.backward(dout), reference.backward(dout))


def test_speed_up_converts_the_convnet_and_keeps_its_state():
    model = convnet((2, 3), hidden=8, padding=2, image=(1, 8, 8), generator=torch.Generator().manual_seed(0))
    state = model.state_dict()
    speed_up(model)
    assert [type(layer) for layer in model.layers] == [Reshape, FastConv2d, FastReLU, FastMaxPool2d, FastConv2d,
                                                       FastReLU, FastMaxPool2d, Reshape, FastLinear, FastReLU,
                                                       FastLinear]
    assert_tensors_equal(model.state_dict()["params"], state["params"], "the convnet's parameters")


def test_sgd_step_fused_on_the_fast_convnet():
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(8, 64, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)
    model = convnet((2, 3), hidden=8, classes=5, padding=2, image=(1, 8, 8), generator=g, dtype=torch.float64)
    _assert_one_fused_step_matches_plain(speed_up(model), x, y)


# --- FastMultiHeadAttention: one pass for the softmax, one copy into the heads' layout and one out ---

@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("B,T,D,H", [(5, 7, 12, 3), (1, 1, 4, 1), (3, 16, 8, 8)])
def test_fast_attention_matches_the_reference(B, T, D, H, input_grad):
    g = torch.Generator().manual_seed(8)
    reference = MultiHeadAttention(D, H, generator=g, dtype=torch.float64)
    faster = speed_up(copy.deepcopy(reference))
    assert type(faster) is FastMultiHeadAttention
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    dout = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    for step in range(2):                          # the second step runs on the first one's buffers
        outs = [layer.forward(x) for layer in (reference, faster)]
        dxs = [layer.backward(dout, input_grad) for layer in (reference, faster)]
        assert faster.cache.P.shape == reference.cache.P.shape == (B, H, T, T)
        assert_parity([outs[1], faster.cache.P, *faster.gradients()],
                      [outs[0], reference.cache.P, *reference.gradients()], f"FastMultiHeadAttention, step {step}")
        if input_grad:
            assert_parity([dxs[1]], [dxs[0]], "FastMultiHeadAttention dx")
        else:
            assert dxs[1] is None
        x = x + 0.1 * dout


def test_speed_up_trains_the_transformer_like_the_reference():
    g = torch.Generator().manual_seed(9)
    reference = vision_transformer(16, 2, 2, 24, image=(1, 8, 8), patch=4, classes=5, generator=g,
                                   dtype=torch.float64)
    faster = speed_up(copy.deepcopy(reference))
    kinds = {type(layer).__name__ for _, layer in faster.named_layers()}
    assert {"FastMultiHeadAttention", "FastLayerNorm", "FastLinear"} <= kinds and "MultiHeadAttention" not in kinds
    x, y = torch.rand(6, 64, generator=g, dtype=torch.float64), torch.randint(0, 5, (6,), generator=g)
    for step in range(3):
        outs = [model.forward(x) for model in (reference, faster)]
        for model, out in zip((reference, faster), outs):
            model.backward(softmax_cross_entropy(out, y)[1], input_grad=False)
        assert_parity([outs[1], *faster.gradients()], [outs[0], *reference.gradients()], f"transformer, step {step}")
        for model in (reference, faster):
            GradientDescent(0.1).step(model.parameters(), model.gradients())
