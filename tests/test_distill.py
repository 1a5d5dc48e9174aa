"""Distillation loss: gradients, the T^2 scaling and high-temperature limit, jitter, bad input."""

import pytest
import torch
import torch.nn.functional as F
from conftest import f64

from neuroforge_lit.distill import distillation_loss, random_translate
from neuroforge_lit.testing import gradient_check

Y = torch.tensor([3, 1, 4, 1, 5])


@pytest.mark.parametrize("T,alpha", [(1.0, 0.0), (1.0, 0.5), (4.0, 0.7), (20.0, 1.0)])
def test_gradient_matches_oracles(T, alpha, gen):
    z, v = f64(5, 10, gen=gen, scale=2), f64(5, 10, gen=gen, scale=3)
    loss, dz = distillation_loss(z, v, Y, T, alpha)
    gradient_check(lambda z: distillation_loss(z, v, Y, T, alpha)[0], dict(z=z), dict(z=dz)).assert_ok()


def test_loss_matches_a_torch_formulation(gen):
    z, v = f64(5, 10, gen=gen), f64(5, 10, gen=gen)
    T, alpha = 3.0, 0.6
    soft = F.kl_div(F.log_softmax(z / T, 1), F.softmax(v / T, 1), reduction="batchmean") \
        - (F.softmax(v / T, 1) * F.log_softmax(v / T, 1)).sum(1).mean()   # KL + teacher entropy = CE
    expected = alpha * T * T * soft + (1 - alpha) * F.cross_entropy(z, Y)
    torch.testing.assert_close(distillation_loss(z, v, Y, T, alpha)[0], expected)


def test_high_temperature_limit_is_logit_matching(gen):
    z, v = f64(5, 10, gen=gen), f64(5, 10, gen=gen)
    z, v = z - z.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
    T = 1000.0
    per_example_soft_grad = distillation_loss(z, v, Y, T, 1.0)[1] / T**2 * 5
    torch.testing.assert_close(per_example_soft_grad, (z - v) / (10 * T**2), rtol=1e-2, atol=0)


def test_t_squared_keeps_the_gradient_scale_independent_of_temperature(gen):
    z, v = f64(64, 10, gen=gen), f64(64, 10, gen=gen)
    z, v = z - z.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
    norms = [distillation_loss(z, v, Y.repeat(13)[:64], T, 1.0)[1].norm().item() for T in (10, 100, 1000)]
    assert max(norms) / min(norms) < 1.1


def test_identical_logits_give_zero_soft_gradient(gen):
    z = f64(5, 10, gen=gen)
    _, dz = distillation_loss(z, z.clone(), Y, 4.0, 1.0)
    assert dz.abs().max() < 1e-15


def test_random_translate_shifts_within_bounds_and_is_seeded():
    x = torch.zeros(50, 784)
    x.view(50, 28, 28)[:, 14, 14] = 1.0                  # one lit pixel in the middle
    out = random_translate(x, 2, torch.Generator().manual_seed(0))
    rows, cols = torch.nonzero(out.view(50, 28, 28) == 1.0, as_tuple=True)[1:]
    assert len(rows) == 50 and ((rows - 14).abs() <= 2).all() and ((cols - 14).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10          # many different offsets used
    again = random_translate(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert random_translate(torch.rand(3, 1, 28, 28), 2).shape == (3, 1, 28, 28)
    assert torch.equal(random_translate(x, 0), x)


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan")])
def test_bad_temperature(T):
    with pytest.raises(ValueError, match=f"temperature T must be > 0, got {T}"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), T, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match=rf"alpha .* must be in \[0, 1\], got {alpha}"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 2.0, alpha)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"student logits \(2, 3\) and teacher logits \(2, 4\)"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 2.0, 0.5)
