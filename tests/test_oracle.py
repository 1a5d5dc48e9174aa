"""The finite-difference oracle is evidence: it passes every correct gradient, however ill-conditioned
the input (a batch norm of two rows, scales from 1e-3 to 1e3), and it catches an error of 2e-8
relative in one entry, which a tolerance 10 times looser, or the old fixed one (1e-6), lets through.

The old oracle was one central difference at h = 1e-6 with a fixed tolerance of 1e-6 relative (or
1e-8 absolute): it failed about one draw in 3000 of tests/test_properties.py's batch norm (n=2, d=5,
seed=16535749, scale=1.0, reconstructed below), and it was loose enough that 1e-1 instead of 1e-6
left every test green."""

import math
import random

import pytest
import torch

from neuroforge_lit.distill import distillation_loss
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.norm import batchnorm_forward, layernorm_forward, normalize_backward
from neuroforge_lit.testing import (NUMERICAL_ATOL, NUMERICAL_SAFETY, NUMERICAL_TOL, GradientReport,
                                    NumericalComparison, autograd_grads, finite_differences, gradient_check,
                                    numerical_grads, rel_error)

NORMS = {"batchnorm": batchnorm_forward, "layernorm": layernorm_forward}
FAILED_ONCE = dict(n=2, d=5, seed=16535749, scale=1.0)   # test_norm_gradients_and_invariants, batch norm


def rand(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def norm_case(n, d, seed, scale):
    """The inputs exactly as tests/test_properties.py::test_norm_gradients_and_invariants draws them."""
    x = rand(n, d, seed=seed, scale=scale) + 0.5
    gamma, beta = 1 + 0.3 * rand(d, seed=seed + 1), rand(d, seed=seed + 2)
    dout = rand(n, d, seed=seed + 3)
    return dict(x=x, gamma=gamma, beta=beta), dout


def check_norm(norm, inputs, dout, perturb_dx=0.0) -> GradientReport:
    """gradient_check of the hand-written normalize_backward; ``perturb_dx`` multiplies the largest
    entry of dx by (1 + perturb_dx): a gradient wrong by that much, relative, in one entry."""
    fwd = NORMS[norm]
    dx, dgamma, dbeta = normalize_backward(dout, fwd(**inputs)[1])
    dx = dx.clone()
    dx.view(-1)[dx.abs().argmax()] *= 1 + perturb_dx
    return gradient_check(lambda x, gamma, beta: fwd(x, gamma, beta)[0], inputs,
                          dict(x=dx, gamma=dgamma, beta=dbeta), dout=dout, name=norm)


def old_oracle_passes(norm, inputs, dout, hand_dx, tol=NUMERICAL_TOL, atol=NUMERICAL_ATOL) -> bool:
    """The check before this oracle, on dx: one central difference at h = 1e-6, fixed tolerances."""
    fwd, x, h = NORMS[norm], inputs["x"].clone(), 1e-6
    fd = torch.zeros_like(x)
    for i in range(x.numel()):
        old = x.view(-1)[i].item()
        values = []
        for step in (h, -h):
            x.view(-1)[i] = old + step
            values.append((fwd(x, inputs["gamma"], inputs["beta"])[0] * dout).sum().item())
        x.view(-1)[i] = old
        fd.view(-1)[i] = (values[0] - values[1]) / (2 * h)
    return rel_error(hand_dx, fd) <= tol or (hand_dx - fd).abs().max().item() <= atol


def test_the_draw_that_failed_the_old_oracle_passes():
    inputs, dout = norm_case(**FAILED_ONCE)
    dx = normalize_backward(dout, batchnorm_forward(**inputs)[1])[0]
    assert not old_oracle_passes("batchnorm", inputs, dout, dx), "not the draw that failed: the inputs changed"
    report = check_norm("batchnorm", inputs, dout).assert_ok()
    assert report.rows[0].numerical.ratio < 0.25, report


def _calibration_cases(count=100, seed=2024):
    """(norm, n=2, d, seed, scale) with scales log-uniform in 1e-3..1e3; the failed draw first."""
    rng = random.Random(seed)
    cases = [("batchnorm", *FAILED_ONCE.values()), ("layernorm", *FAILED_ONCE.values())]
    for _ in range(count):
        n, d, s, scale = 2, rng.randint(2, 5), rng.randrange(2**31), 10 ** rng.uniform(-3, 3)
        cases += [("batchnorm", n, d, s, scale), ("layernorm", n, d, s, scale)]
    return cases


def test_calibration_every_correct_gradient_passes_and_each_estimate_bounds_its_error():
    """(a) Correct gradients of normalisations of two rows, the worst conditioned, at scales
    1e-3..1e3: every check passes, the finite differences' own error (against autograd) stays
    within the error they estimate on every entry (with no safety factor at all), and the
    tolerance is tight: typically ~1e-9 of the gradient, far below the old fixed 1e-6."""
    failed, worst, tightness = [], (0.0, None), []
    for norm, n, d, seed, scale in _calibration_cases():
        inputs, dout = norm_case(n, d, seed, scale)
        report = check_norm(norm, inputs, dout)
        if not report.ok:
            failed.append(((norm, n, d, seed, scale), report.failures()))
        auto = autograd_grads(lambda x, gamma, beta, fwd=NORMS[norm]: fwd(x, gamma, beta)[0], inputs, list(inputs),
                              dout)
        for row in report.rows:
            fd = row.numerical.fd
            share = ((fd.value - auto[row.name]).abs() / fd.error).max().item()
            worst = max(worst, (share, (norm, n, d, seed, scale, row.name)), key=lambda w: w[0])
            largest = auto[row.name].abs().max().item()
            if largest > 1e-6:                      # not a gradient that is zero in theory (saturated)
                tightness.append(row.numerical.tolerance.max().item() / largest)
    assert not failed, f"{len(failed)} correct gradients rejected, first: {failed[0]}"
    assert worst[0] <= 1.0, f"the finite differences' error exceeds their estimate: {worst}"
    median = sorted(tightness)[len(tightness) // 2]
    assert median < 2e-8, f"the median tolerance is {median:.1e} of the gradient: too loose to be evidence"


CAUGHT = [("batchnorm", 3, 4, 1), ("layernorm", 3, 4, 1), ("batchnorm", 4, 3, 2), ("layernorm", 4, 3, 2)]
WRONG_BY = 2e-8      # relative, on the largest entry of dx


@pytest.mark.parametrize("norm, n, d, seed", CAUGHT)
def test_a_gradient_wrong_by_two_parts_in_a_hundred_million_is_caught(norm, n, d, seed):
    """(b) caught by the finite differences alone (autograd catches it too, but each oracle has to
    stand on its own: autograd is blind at a kink); (c) a tolerance 10x looser would not catch it,
    so the tolerance is what catches it, not slack; and the old oracle, whose fixed tolerance was
    1e-6 (or 1e-1, loosened), let it through."""
    inputs, dout = norm_case(n, d, seed, 1.0)
    assert check_norm(norm, inputs, dout).ok
    report = check_norm(norm, inputs, dout, perturb_dx=WRONG_BY)
    row = report.rows[0]
    assert not row.numerical.ok and not report.ok, report
    assert any(line.startswith("dx vs finite differences: entry") for line in report.failures()), report.failures()
    hand_dx = normalize_backward(dout, NORMS[norm](**inputs)[1])[0]
    hand_dx.view(-1)[hand_dx.abs().argmax()] *= 1 + WRONG_BY
    loose = NumericalComparison.of(hand_dx, row.numerical.fd, safety=10 * NUMERICAL_SAFETY)
    assert loose.ok, f"a 10x looser tolerance still catches it ({loose.ratio:.2f}): choose a smaller error"
    assert old_oracle_passes(norm, inputs, dout, hand_dx)
    assert old_oracle_passes(norm, inputs, dout, hand_dx, tol=1e-1)


def test_rounding_of_intermediates_is_in_the_estimate():
    """Cross-entropy at large logits is logsumexp(z) - z[y] ~ 3e-11, a difference of two numbers ~2:
    the differences of the loss are rounding, not slope (they come out exactly 0 for one logit), and
    eps * |loss| / h would call them exact. The estimate counts the rounding of every intermediate."""
    z = torch.tensor([[-22.421856, 1.811949, -19.569549]], dtype=torch.float64)
    y = torch.tensor([1])
    f = lambda z: softmax_cross_entropy(z, y)[0]  # noqa: E731
    fd = finite_differences(f, dict(z=z), ["z"])["z"]
    true = autograd_grads(f, dict(z=z), ["z"])["z"]
    assert ((fd.value - true).abs() <= fd.error).all(), (fd, true)
    gradient_check(f, dict(z=z), dict(z=softmax_cross_entropy(z, y)[1])).assert_ok()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_step_follows_the_size_of_the_function(seed):
    """Distillation at T = 20: the loss is ~700 against gradients ~0.1, so the rounding of the two
    loss values, eps * 700 / h, made the old fixed step h = 1e-6 wrong by up to 1e-6 relative. The
    step is now chosen from that size; numerical_grads keeps its call (h, positional, is a smallest step)."""
    z, v = rand(5, 6, seed=seed, scale=2), rand(5, 6, seed=seed + 1, scale=2)
    y = torch.randint(0, 6, (5,), generator=torch.Generator().manual_seed(seed))
    f = lambda z: distillation_loss(z, v, y, 20.0, 1.0)[0]  # noqa: E731
    true = autograd_grads(f, dict(z=z), ["z"])["z"]
    for grads in (numerical_grads(f, dict(z=z), ["z"]), numerical_grads(f, dict(z=z), ["z"], None, 1e-6)):
        assert grads.keys() == {"z"} and rel_error(grads["z"], true) < 3e-8, rel_error(grads["z"], true)


def test_report_rows_keep_their_six_columns_and_show_the_share_of_the_tolerance():
    inputs, dout = norm_case(3, 4, 1, 1.0)
    report = check_norm("layernorm", inputs, dout)
    name, shape, rel_autograd, abs_autograd, rel_numerical, abs_numerical = report.rows[0]   # chapter 1 does this
    assert (name, shape) == ("x", (3, 4)) and rel_numerical < 1e-6 and rel_autograd < 1e-10
    text = str(report)
    assert "err/tol" in text and "layernorm:" in text and max(len(line) for line in text.splitlines()) <= 120
    plain = GradientReport(rows=[("x", (3, 4), 0.0, 0.0, 2e-6, 2e-8)])   # a row without the entries behind it
    assert not plain.ok and plain.failures() == ["dx vs finite differences: relative error 2.0e-06 > 1e-06 "
                                                 "(absolute 2.0e-08 > 1e-08)"]


def test_a_nan_in_the_hand_gradient_is_never_within_tolerance():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    fd = finite_differences(lambda x: x * x, dict(x=x), ["x"])["x"]
    comparison = NumericalComparison.of(torch.tensor([2.0, math.nan], dtype=torch.float64), fd)
    assert not comparison.ok and comparison.worst == (1,)
