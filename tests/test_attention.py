"""Attention and the transformer block (book/11_attention.md): gradients of every piece against
autograd and finite differences, agreement with torch's attention, the residual and tokenwise
plumbing, the MoE as feed-forward layer, and clear errors for bad shapes."""

import pytest
import torch
import torch.nn.functional as F
from conftest import f64

from neuroforge_lit.attention import (MeanOverTokens, MultiHeadAttention, Patches, PositionEmbedding, Tokenwise,
                                      TransformerBlock, attention_backward, attention_forward, softmax_backward,
                                      vision_transformer)
from neuroforge_lit.layers import Linear
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.moe import MoE
from neuroforge_lit.optim import Adam
from neuroforge_lit.testing import gradient_check, model_gradient_check
from neuroforge_lit.training import evaluate, fit


def test_attention_matches_torch_and_its_gradients_check(gen):
    q, k, v = f64(2, 3, 6, 4, gen=gen), f64(2, 3, 6, 4, gen=gen), f64(2, 3, 6, 4, gen=gen)
    out, cache = attention_forward(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-12)
    dout = f64(*out.shape, gen=gen)
    dq, dk, dv = attention_backward(dout, cache)
    gradient_check(lambda q, k, v: attention_forward(q, k, v)[0], dict(q=q, k=k, v=v),
                   dict(q=dq, k=dk, v=dv), dout=dout).assert_ok()


def test_softmax_backward_is_the_jacobian_product(gen):
    S, dP = f64(3, 5, gen=gen, scale=2), f64(3, 5, gen=gen)
    P = torch.softmax(S, -1)
    jacobian = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]           # (eq-mlp-softmax-jac)
    torch.testing.assert_close(softmax_backward(dP, P), (dP[:, None, :] @ jacobian).squeeze(1),
                               rtol=0, atol=1e-14)


def _layer_check(layer, x, name):
    dout = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    model_gradient_check(layer, x, dout=dout, name=name).assert_ok()


def test_multi_head_attention_and_block_gradients(gen):
    g = torch.Generator().manual_seed(0)
    x = f64(2, 5, 8, gen=gen)
    _layer_check(MultiHeadAttention(8, 2, generator=g, dtype=torch.float64), x, "MultiHeadAttention")
    _layer_check(TransformerBlock(8, 4, 12, generator=g, dtype=torch.float64), x, "TransformerBlock")


def test_multi_head_attention_is_the_heads_side_by_side(gen):
    mha = MultiHeadAttention(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = f64(2, 4, 6, gen=gen)
    qkv = x @ mha.qkv.params["W"] + mha.qkv.params["b"]
    q, k, v = qkv[..., :6], qkv[..., 6:12], qkv[..., 12:]
    heads = [F.scaled_dot_product_attention(q[..., 2 * h:2 * h + 2], k[..., 2 * h:2 * h + 2], v[..., 2 * h:2 * h + 2])
             for h in range(3)]
    expected = torch.cat(heads, -1) @ mha.out.params["W"] + mha.out.params["b"]
    torch.testing.assert_close(mha.forward(x), expected, rtol=0, atol=1e-12)


def test_attention_without_positions_is_permutation_equivariant(gen):
    block = TransformerBlock(8, 2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = f64(1, 6, 8, gen=gen)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(block.forward(x[:, perm]), block.forward(x)[:, perm], rtol=0, atol=1e-12)


def test_patches_embedding_and_mean_are_exact_rearrangements(gen):
    p = Patches((1, 8, 8), 4)
    x = f64(2, 64, gen=gen)
    tokens = p.forward(x)
    assert tokens.shape == (2, 4, 16)
    assert torch.equal(tokens[0, 1], x[0].reshape(8, 8)[:4, 4:].reshape(16))   # the top-right patch
    assert torch.equal(p.backward(tokens), x)                                   # the inverse rearrangement
    pos = PositionEmbedding(4, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(pos.backward(torch.ones(3, 4, 16)), torch.ones(3, 4, 16))
    assert torch.equal(pos.grads["E"], torch.full((4, 16), 3.0, dtype=torch.float64))
    mean = MeanOverTokens()
    torch.testing.assert_close(mean.forward(tokens), tokens.mean(1))
    assert torch.equal(mean.backward(torch.ones(2, 16, dtype=torch.float64)),
                       torch.full((2, 4, 16), 0.25, dtype=torch.float64))


def test_whole_model_with_moe_feed_forward_checks_against_autograd(gen):
    model = vision_transformer(8, 2, 1, 8, image=(1, 8, 8), patch=4, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64,
                               feed_forward=lambda: MoE(8, 8, 3, 2, 6, w_load=0.0, dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(2)))
    model.eval()                                 # deterministic routing (no noise), as the oracle needs
    for _, layer in model.named_layers():        # distinct gate logits: a small step never changes the top k,
        if isinstance(layer, MoE):               # and in eval the load is a count (no gradient): weight 0
            layer.params["W_g"] = f64(8, 3, gen=gen)
    x, y = f64(4, 64, gen=gen), torch.tensor([0, 1, 2, 3])
    report = model_gradient_check(
        model, x, lambda out: softmax_cross_entropy(out, y), input_grad=False, h=1e-5,
        extra_loss=lambda m: sum(layer.aux_loss for _, layer in m.named_layers() if isinstance(layer, MoE)),
        skip=[path for path, _ in model.named_parameters() if path.endswith("W_noise")])   # no effect in eval
    report.assert_ok()
    assert len(report.rows) == len(model.parameters()) - 1


def test_a_small_transformer_learns_where_the_bright_patch_is():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (256,), generator=g)
    x = 0.1 * torch.randn(256, 8, 8, generator=g)
    for i, label in enumerate(y.tolist()):               # the class is which 4 x 4 patch is bright
        row, col = divmod(label, 2)
        x[i, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 1.0
    x = x.reshape(256, 64)
    model = vision_transformer(16, 2, 1, 16, image=(1, 8, 8), patch=4, classes=4, generator=g)
    before = evaluate(model, x, y)["accuracy"]
    fit(model, Adam(5e-3), x, y, epochs=20, batch_size=32, log=None)
    assert evaluate(model, x, y)["accuracy"] > max(0.9, before)


@pytest.mark.parametrize("make, x, message", [
    (lambda: MultiHeadAttention(8, 2), torch.zeros(2, 5, 6), r"\(B, T, 8\)"),
    (lambda: MultiHeadAttention(8, 2), torch.zeros(5, 8), r"\(B, T, 8\)"),
    (lambda: Patches((1, 8, 8), 4), torch.zeros(2, 60), r"\(B, 64\)"),
])
def test_bad_shapes_name_the_expected_shape(make, x, message):
    with pytest.raises(ValueError, match=message):
        make().forward(x)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="does not divide"):
        Patches((1, 28, 28), 5)
    with pytest.raises(ValueError, match="same shape"):
        attention_forward(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 5, 4))


def test_tokenwise_applies_a_row_layer_to_every_token(gen):
    lin = Linear(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layer = Tokenwise(lin)
    x = f64(2, 5, 4, gen=gen)
    torch.testing.assert_close(layer.forward(x), x @ lin.params["W"] + lin.params["b"])
    assert layer.backward(torch.ones(2, 5, 3, dtype=torch.float64)).shape == (2, 5, 4)
    assert layer.backward(torch.ones(2, 5, 3, dtype=torch.float64), input_grad=False) is None
