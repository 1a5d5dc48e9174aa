"""The recipe's reusable checks, on small synthetic problems."""

import math

import torch

from neuroforge_lit.layers import Linear, ReLU, Sequential, mlp
from neuroforge_lit.norm import normalized_mlp
from neuroforge_lit.optim import Adam
from neuroforge_lit.recipe import (bit_identical, duplicates_between, ensemble_logits, exact_duplicates,
                                   fit_with_early_stopping, input_dependencies, loss_at_init,
                                   overfit_one_batch, prior_bias, small_last_layer)
from neuroforge_lit.training import fit


def test_duplicates_found_by_hashing(gen):
    a = torch.rand(20, 784, generator=gen)
    a[7], a[13] = a[2], a[2]
    b = torch.rand(5, 784, generator=gen)
    b[3] = a[11]
    assert exact_duplicates(a) == [[2, 7, 13]]
    assert duplicates_between(a, b) == [(11, 3)]
    assert exact_duplicates(b) == []


def test_loss_at_init_with_a_small_last_layer_is_ln_c(gen):
    model = small_last_layer([20, 32, 7], generator=gen)
    x, y = torch.randn(500, 20, generator=gen), torch.randint(0, 7, (500,), generator=gen)
    assert abs(loss_at_init(model, x, y) - math.log(7)) < 0.01
    assert model.training   # the check leaves the mode as it was


def test_prior_bias():
    y = torch.tensor([1.0] * 10 + [0.0] * 90)
    assert abs(torch.sigmoid(prior_bias(y)).item() - 0.1) < 1e-9
    labels = torch.tensor([0, 0, 0, 1])
    torch.testing.assert_close(torch.softmax(prior_bias(labels, 3), 0)[:2],
                               torch.tensor([0.75, 0.25], dtype=torch.float64))


def test_overfit_one_batch_reaches_near_zero_loss(gen):
    model = mlp([10, 64, 4], generator=gen)
    x, y = torch.randn(6, 10, generator=gen), torch.tensor([0, 1, 2, 3, 0, 1])
    losses = overfit_one_batch(model, Adam(1e-2), x, y, steps=150)
    assert losses[-1] < 1e-3 < losses[0]


def test_input_dependencies_diagonal_without_batch_coupling(gen):
    x = torch.randn(6, 8, generator=gen)
    plain = input_dependencies(mlp([8, 64, 3], generator=gen), x)
    off = ~torch.eye(6, dtype=torch.bool)
    assert (plain[off] == 0).all() and (plain.diagonal() > 0).all()
    bn = input_dependencies(normalized_mlp([8, 5, 3], "batch", generator=gen), x)
    assert (bn[off] > 0).all()


def test_bit_identical_detects_differences(gen):
    def run(seed):
        m = mlp([5, 4, 2], generator=torch.Generator().manual_seed(seed))
        fit(m, Adam(1e-2), torch.randn(64, 5, generator=torch.Generator().manual_seed(9)),
            torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(9)),
            epochs=2, batch_size=16, seed=seed, log=None)
        return m.parameters()
    assert bit_identical(lambda: run(0), lambda: run(0))
    assert not bit_identical(lambda: run(0), lambda: run(1))


def test_early_stopping_restores_the_best_epoch(gen):
    x, y = torch.randn(200, 10, generator=gen), torch.randint(0, 3, (200,), generator=gen)
    xv, yv = torch.randn(100, 10, generator=gen), torch.randint(0, 3, (100,), generator=gen)   # noise
    model = Sequential(Linear(10, 256, generator=gen), ReLU(), Linear(256, 3, generator=gen))
    rows, best = fit_with_early_stopping(model, Adam(1e-2), x, y, (xv, yv), max_epochs=40, patience=3,
                                         batch_size=32)
    assert len(rows) < 40                                   # stopped early on pure-noise labels
    assert len(rows) - best == 3
    from neuroforge_lit.training import evaluate
    assert abs(evaluate(model, xv, yv)["loss"] - rows[best - 1]["val_loss"]) < 1e-6


def test_ensemble_logits_average_probabilities(gen):
    a, b = mlp([4, 3], generator=gen), mlp([4, 3], generator=gen)
    x = torch.randn(5, 4, generator=gen)
    probs = (torch.softmax(a.forward(x), 1) + torch.softmax(b.forward(x), 1)) / 2
    torch.testing.assert_close(ensemble_logits([a, b], x).exp(), probs)


def test_early_stopping_restores_the_batch_norm_statistics_of_the_best_epoch(gen):
    """It restored the best epoch's weights but kept the last epoch's running statistics, so the
    restored model was not the one that scored best."""
    from neuroforge_lit.norm import BatchNorm1d
    from neuroforge_lit.training import evaluate
    x, y = torch.randn(200, 10, generator=gen), torch.randint(0, 3, (200,), generator=gen)
    xv, yv = torch.randn(100, 10, generator=gen), torch.randint(0, 3, (100,), generator=gen)
    model = Sequential(Linear(10, 64, generator=gen), BatchNorm1d(64), ReLU(), Linear(64, 3, generator=gen))
    rows, best = fit_with_early_stopping(model, Adam(1e-2), x, y, (xv, yv), max_epochs=40, patience=3,
                                         batch_size=32)
    assert best < len(rows)                                 # it did go back
    assert evaluate(model, xv, yv)["loss"] == rows[best - 1]["val_loss"]


def test_early_stopping_with_no_finite_validation_loss_is_a_clear_error(gen):
    x, y = torch.randn(40, 4, generator=gen), torch.randint(0, 2, (40,), generator=gen)
    xv = torch.full((10, 4), float("nan"))
    model = mlp([4, 2], generator=gen)
    import pytest
    with pytest.raises(ValueError, match="no validation loss in 2 epochs was a number"):
        fit_with_early_stopping(model, Adam(1e-2), x, y, (xv, y[:10]), max_epochs=5, patience=2, batch_size=8)


def test_ensemble_logits_gives_the_members_their_modes_back(gen):
    """It left every member in eval mode."""
    from neuroforge_lit.dropout import Dropout
    a = Sequential(Linear(4, 6, generator=gen), Dropout(0.5), Linear(6, 3, generator=gen))
    b = mlp([4, 3], generator=gen).eval()
    ensemble_logits([a, b], torch.randn(5, 4, generator=gen))
    assert a.training and all(layer.training for layer in a.layers)
    assert not b.training
