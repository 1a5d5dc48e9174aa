"""The mutants that test the gradient checks: each one differs from the function it mutates, and
the oracles catch the typical wrong derivations (the chapter 'How this book checks itself' runs
them all)."""

import torch
from conftest import f64

from neuroforge_lit.layers import linear_backward, linear_forward
from neuroforge_lit.norm import batchnorm_forward, normalize_backward
from neuroforge_lit.optim import SGD
from neuroforge_lit.testing import gradient_check, mutants, rel_error


def test_every_mutant_changes_the_source_and_runs(gen):
    found = list(mutants(normalize_backward))
    descriptions = [d for d, _ in found]
    assert len(found) >= 10, descriptions
    assert len(set(descriptions)) == len(descriptions), "two mutants are the same rewrite"
    assert "drop term: dx = inv_std * (dxhat - mean_dxhat)" in descriptions   # the mean term forgotten
    assert all(fn is not normalize_backward for _, fn in found)


def test_the_gradient_check_catches_the_forgotten_mean_term(gen):
    x, gamma, beta, dout = f64(6, 4, gen=gen), f64(4, gen=gen), f64(4, gen=gen), f64(6, 4, gen=gen)
    cache = batchnorm_forward(x, gamma, beta)[1]
    forgot = dict(mutants(normalize_backward))["drop term: dx = inv_std * (dxhat - mean_dxhat)"]
    hand = dict(zip(("x", "gamma", "beta"), forgot(dout, cache)))
    report = gradient_check(lambda x, gamma, beta: batchnorm_forward(x, gamma, beta)[0],
                            dict(x=x, gamma=gamma, beta=beta), hand=hand, dout=dout, name="mutant")
    assert not report.ok
    assert any(line.startswith("dx vs autograd") for line in report.failures()), report.failures()


def test_every_mutant_of_linear_backward_is_caught(gen):
    x, W, b, dout = f64(4, 5, gen=gen), f64(5, 3, gen=gen), f64(3, gen=gen), f64(4, 3, gen=gen)
    cache = linear_forward(x, W, b)[1]
    survivors = []
    for description, mutant in mutants(linear_backward):
        try:
            dx, dW, db = mutant(dout, cache)
            ok = gradient_check(lambda x, W, b: x @ W + b, dict(x=x, W=W, b=b), hand=dict(x=dx, W=dW, b=db),
                                dout=dout, numerical=False).ok
        except (RuntimeError, ValueError):       # a shape that cannot work: caught
            ok = False
        if ok:
            survivors.append(description)
    assert not survivors, f"mutants the gradient check missed: {survivors}"


def test_mutants_of_a_method_install_on_a_subclass():
    p, g = torch.ones(3, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)
    flipped = dict(mutants(SGD.update))["swap operator: p += self.lr * g"]
    Mutant = type("Mutant", (SGD,), {"update": flipped})
    Mutant(0.1).step([p], [g])
    assert torch.equal(p, torch.full((3,), 1.05, dtype=torch.float64))    # ascended instead of descended


def test_a_nan_counts_as_an_infinite_error_not_a_small_one(gen):
    nan = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    assert rel_error(nan, torch.tensor([1.0, 2.0], dtype=torch.float64)) == float("inf")
    assert rel_error(nan, nan) == float("inf")
    x = f64(3, gen=gen)
    report = gradient_check(lambda x: x * x, dict(x=x), hand=dict(x=torch.full_like(x, float("nan"))))
    assert not report.ok and report.failures()[0].startswith("dx vs autograd: relative error inf")
