"""Mixture of experts: the hand-written gating against a plain-torch port of tensor2tensor's
formulas (expert_utils.py: noisy_top_k_gating, _prob_in_top_k, cv_squared), checked with autograd;
the dispatch against dense evaluation; the layer's gradients; bad input."""

import pytest
import torch
import torch.nn.functional as F
from conftest import f64

from neuroforge_lit.moe import (MoE, cv_squared, moe_dispatch_backward, moe_dispatch_forward,
                                noisy_top_k_gating_backward, noisy_top_k_gating_forward,
                                softmax_gating_backward, softmax_gating_forward)
from neuroforge_lit.testing import gradient_check, model_gradient_check


# --- the reference, ported line by line from tensor2tensor to torch (autograd does the backward) --

def t2t_prob_in_top_k(clean_values, noisy_values, noise_stddev, noisy_top_values, k):
    batch, m = clean_values.shape[0], noisy_top_values.shape[1]
    top_values_flat = noisy_top_values.reshape(-1)
    threshold_positions_if_in = torch.arange(batch) * m + k
    threshold_if_in = top_values_flat[threshold_positions_if_in].unsqueeze(1)
    is_in = noisy_values > threshold_if_in
    threshold_positions_if_out = threshold_positions_if_in - 1
    threshold_if_out = top_values_flat[threshold_positions_if_out].unsqueeze(1)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=clean_values.dtype),
                                        torch.tensor(1.0, dtype=clean_values.dtype))
    prob_if_in = normal.cdf((clean_values - threshold_if_in) / noise_stddev)
    prob_if_out = normal.cdf((clean_values - threshold_if_out) / noise_stddev)
    return torch.where(is_in, prob_if_in, prob_if_out)


def t2t_noisy_top_k_gating(x, w_gate, w_noise, k, noise, noise_epsilon=1e-2):
    num_experts = w_gate.shape[1]
    clean_logits = x @ w_gate
    raw_noise_stddev = x @ w_noise
    noise_stddev = F.softplus(raw_noise_stddev) + noise_epsilon
    noisy_logits = clean_logits + noise * noise_stddev
    top_logits, top_indices = noisy_logits.topk(min(k + 1, num_experts), dim=1)
    top_k_gates = F.softmax(top_logits[:, :k], dim=1)
    gates = torch.zeros_like(clean_logits).scatter(1, top_indices[:, :k], top_k_gates)
    load = t2t_prob_in_top_k(clean_logits, noisy_logits, noise_stddev, top_logits, k).sum(0)
    return gates, load


def t2t_cv_squared(x):
    epsilon = 1e-10
    float_size = x.numel() + epsilon
    mean = x.sum() / float_size
    variance = ((x - mean) ** 2).sum() / float_size
    return variance / (mean ** 2 + epsilon)


def _inputs(gen, B=7, D=5, E=6):
    return (f64(B, D, gen=gen), f64(D, E, gen=gen), 0.5 * f64(D, E, gen=gen), f64(B, E, gen=gen))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gating_forward_matches_tensor2tensor(k, gen):
    x, W_g, W_n, noise = _inputs(gen)
    gates, load, _ = noisy_top_k_gating_forward(x, W_g, W_n, k, noise)
    ref_gates, ref_load = t2t_noisy_top_k_gating(x, W_g, W_n, k, noise)
    torch.testing.assert_close(gates, ref_gates)
    torch.testing.assert_close(load, ref_load)
    assert ((gates > 0).sum(1) == k).all()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gating_backward_matches_autograd_through_tensor2tensor(k, gen):
    x, W_g, W_n, noise = _inputs(gen)
    dG, dL = f64(7, 6, gen=gen), f64(6, gen=gen)
    w_imp, w_load = 0.7, 1.3
    leaves = [t.clone().requires_grad_() for t in (x, W_g, W_n)]
    ref_gates, ref_load = t2t_noisy_top_k_gating(*leaves, k, noise)
    objective = ((ref_gates * dG).sum() + (ref_load * dL).sum()
                 + w_imp * t2t_cv_squared(ref_gates.sum(0)) + w_load * t2t_cv_squared(ref_load))
    expected = torch.autograd.grad(objective, leaves)

    gates, load, cache = noisy_top_k_gating_forward(x, W_g, W_n, k, noise)
    _, dimp = cv_squared(gates.sum(0))
    _, dload = cv_squared(load)
    ours = noisy_top_k_gating_backward(dG + w_imp * dimp, dL + w_load * dload, cache)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_cv_squared_value_and_gradient(gen):
    v = f64(8, gen=gen).abs() + 0.5
    value, dv = cv_squared(v)
    torch.testing.assert_close(value, t2t_cv_squared(v), rtol=1e-9, atol=0)
    gradient_check(lambda v: cv_squared(v)[0], dict(v=v), dict(v=dv)).assert_ok()
    assert cv_squared(torch.ones(1))[0] == 0


def test_softmax_gating(gen):
    x, W_g = f64(5, 4, gen=gen), f64(4, 3, gen=gen)
    gates, cache = softmax_gating_forward(x, W_g)
    torch.testing.assert_close(gates.sum(1), torch.ones(5, dtype=torch.float64))
    dG = f64(5, 3, gen=gen)
    dx, dW = softmax_gating_backward(dG, cache)
    gradient_check(lambda x, W_g: softmax_gating_forward(x, W_g)[0], dict(x=x, W_g=W_g),
                   dict(x=dx, W_g=dW), dout=dG).assert_ok()


def test_inference_uses_clean_logits_and_counts_load(gen):
    x, W_g, W_n, _ = _inputs(gen)
    gates, load, cache = noisy_top_k_gating_forward(x, W_g, W_n, 2, None)
    top2 = (x @ W_g).topk(2, dim=1).indices
    chosen = torch.nonzero(gates)[:, 1].view(-1, 2)
    assert torch.equal(torch.sort(chosen, 1).values, torch.sort(top2, 1).values)
    assert load.sum() == 2 * len(x)
    dx, dW_g, dW_n = noisy_top_k_gating_backward(torch.ones_like(gates), None, cache)
    assert torch.equal(dW_n, torch.zeros_like(W_n))


def test_sparse_dispatch_equals_dense_evaluation(gen):
    layer = MoE(5, 3, 4, 2, 6, generator=gen, dtype=torch.float64)
    x = f64(9, 5, gen=gen)
    gates, _, _ = noisy_top_k_gating_forward(x, f64(5, 4, gen=gen), f64(5, 4, gen=gen), 2, f64(9, 4, gen=gen))
    out, cache = moe_dispatch_forward(x, gates, layer.experts)
    dense = sum(gates[:, i, None] * e.forward(x) for i, e in enumerate(layer.experts))
    torch.testing.assert_close(out, dense)
    dout = f64(9, 3, gen=gen)
    out, cache = moe_dispatch_forward(x, gates, layer.experts)
    dx, dgates = moe_dispatch_backward(dout, cache, layer.experts)
    assert dx.shape == x.shape and dgates.shape == gates.shape
    assert torch.equal(dgates == 0, gates == 0)   # only the routed pairs get a gate gradient


def test_expert_without_examples_gets_zero_gradients(gen):
    layer = MoE(5, 3, 4, 1, 6, generator=gen, dtype=torch.float64)
    x = f64(3, 5, gen=gen)
    gates = torch.zeros(3, 4, dtype=torch.float64)
    gates[:, 0] = 1.0                                  # everything to expert 0
    out, cache = moe_dispatch_forward(x, gates, layer.experts)
    moe_dispatch_backward(torch.ones(3, 3, dtype=torch.float64), cache, layer.experts)
    for g in layer.experts[2].gradients():
        assert torch.equal(g, torch.zeros_like(g))


def test_layer_gradients_every_path(gen):
    D, E = 4, 3
    layer = MoE(D, 2, E, 2, 3, w_importance=0.5, w_load=0.9, generator=gen, dtype=torch.float64)
    layer.params = {"W_g": f64(D, E, gen=gen), "W_noise": 0.5 * f64(D, E, gen=gen)}
    x, noise, dy = f64(5, D, gen=gen), f64(5, E, gen=gen), f64(5, 2, gen=gen)
    model_gradient_check(layer, x, dout=dy, forward=lambda m, x: m.forward(x, noise=noise),
                         extra_loss=lambda m: m.aux_loss, name="MoE.backward").assert_ok()


def test_without_input_grad_same_parameter_gradients_and_no_dx(gen):
    layer = MoE(4, 2, 3, 2, 3, generator=gen, dtype=torch.float64)
    layer.params = {"W_g": f64(4, 3, gen=gen), "W_noise": 0.5 * f64(4, 3, gen=gen)}
    x, noise, dy = f64(6, 4, gen=gen), f64(6, 3, gen=gen), f64(6, 2, gen=gen)
    layer.forward(x, noise=noise)
    assert layer.backward(dy).shape == x.shape
    full = [g.clone() for g in layer.gradients()]      # Linear gradient buffers are reused
    layer.forward(x, noise=noise)
    assert layer.backward(dy, input_grad=False) is None
    for a, b in zip(full, layer.gradients()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_layer_in_a_sequential_trains(gen):
    from neuroforge_lit.layers import Linear, Sequential
    from neuroforge_lit.losses import softmax_cross_entropy
    from neuroforge_lit.optim import Adam

    model = Sequential(MoE(6, 4, 4, 2, 8, generator=gen, noise_generator=gen), Linear(4, 3, generator=gen))
    x, y = torch.randn(64, 6, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    opt, first = Adam(1e-2), None
    for _ in range(60):
        loss, dz = softmax_cross_entropy(model.forward(x), y)
        first = first if first is not None else loss.item()
        model.backward(dz)
        opt.step(model.parameters(), model.gradients())
    assert loss.item() < 0.7 * first
    assert len(model.parameters()) == 2 + 4 * 4 + 2


@pytest.mark.parametrize("k", [0, 5])
def test_k_out_of_range_is_a_value_error(k):
    with pytest.raises(ValueError, match=rf"k must be between 1 and .*4.*got {k}"):
        MoE(3, 2, 4, k, 5)
    with pytest.raises(ValueError, match=rf"k must be between 1 and the number of experts \(4\), got {k}"):
        noisy_top_k_gating_forward(torch.zeros(2, 3), torch.zeros(3, 4), torch.zeros(3, 4), k, None)


def test_dimension_mismatches_name_the_shapes():
    with pytest.raises(ValueError, match=r"x \(2, 3\), W_g \(5, 4\)"):
        noisy_top_k_gating_forward(torch.zeros(2, 3), torch.zeros(5, 4), torch.zeros(5, 4), 2, None)
    with pytest.raises(ValueError, match=r"W_noise must have the shape of W_g \(3, 4\), got \(3, 5\)"):
        noisy_top_k_gating_forward(torch.zeros(2, 3), torch.zeros(3, 4), torch.zeros(3, 5), 2, None)
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 4\), got \(2, 3\)"):
        noisy_top_k_gating_forward(torch.zeros(2, 3), torch.zeros(3, 4), torch.zeros(3, 4), 2,
                                   torch.zeros(2, 3))
