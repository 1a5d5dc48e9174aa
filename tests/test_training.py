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


# --- resuming from a checkpoint -------------------------------------------------------------------

class Interrupted(Exception):
    pass


def _resumable_run(tmp_path, *, stop_at=None, checkpoint_every=None, resume=False, batch_size=24, log=None):
    """A dropout MLP (its masks come from a declared generator) trained by AdamW on a cosine
    schedule with random translations (drawn from fit's own generator), 3 epochs of 100 examples;
    stop_at raises in the middle of step stop_at, as a crash would."""
    from neuroforge_lit.distill import random_translate
    from neuroforge_lit.dropout import Dropout
    from neuroforge_lit.optim import AdamW

    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(100, 64, generator=g), torch.randint(0, 4, (100,), generator=g)
    model = Sequential(Linear(64, 16, generator=torch.Generator().manual_seed(1)),
                       Dropout(0.3, generator=torch.Generator().manual_seed(2)),
                       Linear(16, 4, generator=torch.Generator().manual_seed(3)))
    optimizer = AdamW(1e-2)

    def on_step(step):
        if step == stop_at:
            raise Interrupted(step)

    history = fit(model, optimizer, x, y, epochs=3, batch_size=batch_size, seed=7, log=log,
                  lr_schedule=lambda p: cosine_lr(1e-2, p, warmup=0.1), eval_sets={"all": (x, y)},
                  augment=lambda xb, gen: random_translate(xb.reshape(-1, 1, 8, 8), 1, gen).reshape(-1, 64),
                  on_step=on_step, checkpoint=tmp_path / "run.ckpt", checkpoint_every=checkpoint_every,
                  resume=resume)
    return model, optimizer, history


def _without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history.epochs]


# 100 examples in batches of 24: 5 steps per epoch. (stop, every, where the last checkpoint was written)
@pytest.mark.parametrize("stop_at,every,resumed_at", [(9, 4, "epoch 2, step 8"), (6, None, "epoch 2, step 5"),
                                                      (13, 3, "epoch 3, step 12")],
                         ids=["mid-epoch", "epoch-end", "mid-epoch-3"])
def test_fit_resumes_bit_identically_after_a_crash(tmp_path, stop_at, every, resumed_at):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight_model, straight_optimizer, straight = _resumable_run(tmp_path / "a")
    with pytest.raises(Interrupted):
        _resumable_run(tmp_path / "b", stop_at=stop_at, checkpoint_every=every)
    messages = []
    model, optimizer, resumed = _resumable_run(tmp_path / "b", checkpoint_every=every, resume=True,
                                               log=messages.append)
    assert messages[0].startswith("resuming from") and messages[0].endswith(resumed_at), messages[0]
    assert_tensors_equal(model.parameters(), straight_model.parameters(), "parameters, resumed vs straight")
    assert_tensors_equal(model.state_dict()["generators"], straight_model.state_dict()["generators"], "generators")
    assert optimizer.t == straight_optimizer.t and optimizer.lr == straight_optimizer.lr
    assert resumed.step_loss == straight.step_loss
    assert _without_seconds(resumed) == _without_seconds(straight)


def test_resume_refuses_a_checkpoint_of_other_settings_and_starts_fresh_without_one(tmp_path):
    from neuroforge_lit.checkpoint import CheckpointError

    with pytest.raises(Interrupted):
        _resumable_run(tmp_path, stop_at=6, checkpoint_every=3)
    with pytest.raises(CheckpointError, match="batch_size 24 there, 32 here"):
        _resumable_run(tmp_path, resume=True, batch_size=32)
    messages = []
    (tmp_path / "nothing-here").mkdir()
    fresh_model, _, fresh = _resumable_run(tmp_path / "nothing-here", resume=True, log=messages.append)
    assert messages[0].startswith("no checkpoint at") and len(fresh.epochs) == 3
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        fit(fresh_model, GradientDescent(0.1), torch.zeros(4, 64), torch.zeros(4, dtype=torch.long),
            epochs=1, batch_size=2, resume=True, log=None)
    for bad in (0, 2.5, True, -1):
        with pytest.raises(ValueError, match=f"checkpoint_every must be a positive int, got {bad!r}"):
            fit(fresh_model, GradientDescent(0.1), torch.zeros(4, 64), torch.zeros(4, dtype=torch.long),
                epochs=1, batch_size=2, checkpoint=tmp_path / "x.ckpt", checkpoint_every=bad, log=None)
