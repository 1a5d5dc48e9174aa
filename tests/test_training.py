"""The training loop: it learns, it is reproducible, it refuses what it cannot do."""

import pytest
import torch

from neuroforge_lit.layers import Linear, Sequential, mlp
from neuroforge_lit.norm import BatchNorm1d
from neuroforge_lit.optim import GradientDescent
from neuroforge_lit.training import batch_bounds, cosine_lr, evaluate, fit

from conftest import assert_tensors_equal


def _data(gen, n=256):
    x = torch.randn(n, 6, generator=gen)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def test_fit_learns_a_separable_problem(gen):
    x, y = _data(gen)
    model = mlp([6, 16, 2], generator=gen)
    before = evaluate(model, x, y)["accuracy"]
    h = fit(model, GradientDescent(0.5), x, y, epochs=15, batch_size=32, eval_sets={"all": (x, y)}, log=None)
    assert h.epochs[-1]["all_accuracy"] > 0.95 > before
    assert len(h.step_loss) == 15 * 8 and h.column("epoch") == list(range(1, 16))


def test_same_seed_bit_identical_other_seed_not(gen):
    x, y = _data(gen)

    def run(seed):
        m = mlp([6, 16, 2], generator=torch.Generator().manual_seed(0))
        fit(m, GradientDescent(0.1), x, y, epochs=2, batch_size=16, seed=seed, log=None)
        return m.parameters()

    assert_tensors_equal(run(3), run(3), "run(3) vs run(3)")
    assert not all(torch.equal(a, b) for a, b in zip(run(3), run(4)))


def test_schedule_sets_the_learning_rate_every_step(gen):
    x, y = _data(gen, 64)
    seen = []
    opt = GradientDescent(1.0)
    fit(mlp([6, 2], generator=gen), opt, x, y, epochs=1, batch_size=16,
        lr_schedule=lambda p: cosine_lr(1.0, p), on_step=lambda s: seen.append(opt.lr), log=None)
    assert seen == [cosine_lr(1.0, i / 4) for i in range(4)]
    assert cosine_lr(1.0, 0.0) == 1.0 and abs(cosine_lr(1.0, 1.0)) < 1e-12


def test_augment_receives_each_batch(gen):
    x, y = _data(gen, 64)
    sizes = []
    fit(mlp([6, 2], generator=gen), GradientDescent(0.1), x, y, epochs=1, batch_size=20,
        augment=lambda xb, g: sizes.append(len(xb)) or xb, log=None)
    assert sizes == [20, 20, 20, 4]


def test_bad_arguments(gen):
    x, y = _data(gen, 10)
    with pytest.raises(ValueError, match="x has 10 examples but targets have \\[9\\]"):
        fit(mlp([6, 2]), GradientDescent(0.1), x, y[:9], epochs=1, batch_size=4, log=None)
    with pytest.raises(ValueError, match="may not be named 'train'"):
        fit(mlp([6, 2]), GradientDescent(0.1), x, y, epochs=1, batch_size=4, eval_sets={"train": (x, y)})
    with pytest.raises(ValueError, match=r"lr must be in \[0.0, inf\), got -1"):
        GradientDescent(-1)
    with pytest.raises(ValueError, match="2 parameters but 1 gradients"):
        GradientDescent(0.1).step([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])


def test_gradient_descent_checks_every_shape_before_changing_anything():
    """A (3,) gradient would broadcast into a (2, 3) parameter; it is refused, and parameter 0,
    listed first, keeps its value."""
    params = [torch.ones(4), torch.ones(2, 3)]
    with pytest.raises(ValueError, match=r"parameter 1 has shape \(2, 3\) but its gradient has shape \(3,\)"):
        GradientDescent(0.5).step(params, [torch.ones(4), torch.ones(3)])
    assert torch.equal(params[0], torch.ones(4)) and torch.equal(params[1], torch.ones(2, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_gradient_descent_refuses_a_non_finite_gradient(bad):
    """It applied NaN silently, though the README says the optimizers refuse it."""
    params = [torch.ones(4), torch.ones(2, 3)]
    grads = [torch.ones(4), torch.ones(2, 3)]
    grads[1][1, 2] = bad
    opt = GradientDescent(0.5)
    with pytest.raises(FloatingPointError, match=r"parameter 1 \(shape \(2, 3\)\) contains NaN or inf"):
        opt.step(params, grads)
    assert torch.equal(params[0], torch.ones(4)) and torch.equal(params[1], torch.ones(2, 3)) and opt.t == 0


def test_evaluate_gives_every_layer_its_own_mode_back(gen):
    model = Sequential(Linear(6, 4, generator=gen), BatchNorm1d(4), Linear(4, 2, generator=gen))
    model.layers[1].eval()                          # a frozen batch norm inside a training model
    x, y = _data(gen, 32)
    before = model.layers[1].buffers["running_mean"].clone()
    evaluate(model, x, y)
    assert [layer.training for layer in model.layers] == [True, False, True]
    assert torch.equal(model.layers[1].buffers["running_mean"], before)   # inference: no update


def test_batch_bounds_cover_every_example_once_and_fold_a_last_batch_of_one():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]                 # 1 left over: joins the batch before
    assert batch_bounds(1, 4) == [(0, 1)] and batch_bounds(8, 4) == [(0, 4), (4, 8)]
    for n in range(1, 40):
        for size in range(1, 12):
            bounds = batch_bounds(n, size)
            assert [b for a, b in bounds][:-1] == [a for a, b in bounds][1:] and bounds[0][0] == 0
            assert bounds[-1][1] == n and (n == 1 or all(b - a >= 2 for a, b in bounds) or size == 1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            batch_bounds(10, bad)


def test_a_batch_norm_model_trains_when_the_last_minibatch_would_hold_one_example():
    from neuroforge_lit.norm import normalized_mlp
    model = normalized_mlp([5, 8, 3], "batch", generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(33, 5), torch.randint(0, 3, (33,))
    history = fit(model, GradientDescent(0.1), x, y, epochs=2, batch_size=16, log=None, progress=False)
    assert len(history.step_loss) == 4                             # 16 + 17 per epoch, not 16 + 16 + 1
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        fit(model, GradientDescent(0.1), x, y, epochs=0, batch_size=16, log=None)
