"""book/09_parallel.md: data parallelism, synchronized batch norm and the expert-parallel MoE on
real torch.distributed process groups (gloo, CPU), against the single-process layers; failures that
name their rank and leave no process behind; the command, also under torchrun.

Tests that start processes spawn fresh interpreters (a few seconds each on two cores)."""

import multiprocessing
import subprocess
import sys
import time
import types

import pytest
import torch

import neuroforge_lit.parallel as parallel
from neuroforge_lit.layers import mlp
from neuroforge_lit.optim import AdamW
from neuroforge_lit.testing import parity_gap
from neuroforge_lit.training import cosine_lr, fit

from conftest import assert_tensors_equal

TOLERANCE = 1e-12


def _largest(gaps: dict) -> float:
    return max(v for quantities in gaps.values() for v in (quantities.values() if isinstance(quantities, dict)
                                                           else [quantities]))


@pytest.fixture(autouse=True)
def no_process_left_behind():
    yield
    assert not multiprocessing.active_children(), "a test left processes running"


# --- without a process group: the single-process path is the ordinary one ------------------------

@pytest.mark.parametrize("n, world_size", [(11, 3), (10, 2), (3, 3), (7, 1), (2, 3)])
def test_shard_covers_every_row_once_in_blocks_that_differ_by_at_most_one(n, world_size):
    blocks = [parallel.shard(n, world_size, r) for r in range(world_size)]
    rows = [i for b in blocks for i in range(n)[b]]
    assert rows == list(range(n))
    sizes = [b.stop - b.start for b in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_shard_refuses_a_rank_outside_the_world():
    with pytest.raises(ValueError, match=r"rank must lie in \[0, 2\), got 2"):
        parallel.shard(5, 2, 2)


def test_every_check_passes_in_this_process_alone():
    assert parallel.world() == (0, 1)
    assert _largest(parallel.run_checks(seed=3)) <= TOLERANCE


def test_fit_data_parallel_alone_is_fit():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, dtype=torch.float64, generator=g), torch.randint(0, 3, (50,), generator=g)
    models = [mlp([6, 8, 3], generator=torch.Generator().manual_seed(1), dtype=torch.float64) for _ in range(2)]
    ours = parallel.fit_data_parallel(models[0], AdamW(0.01), x, y, epochs=2, batch_size=16, seed=4)
    theirs = fit(models[1], AdamW(0.01), x, y, epochs=2, batch_size=16, seed=4, log=None)
    assert len(ours.step_loss) == len(theirs.step_loss) == 8
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours.step_loss, theirs.step_loss))   # fit keeps float32
    assert worst <= 1e-6, f"step losses differ by up to {worst:.1e} relative (tolerance 1e-6)"
    gap = parity_gap(zip(models[0].parameters(), models[1].parameters()), atol=0.0)
    assert gap <= 1e-12, f"the two processes' parameters differ by {gap:.1e} relative (tolerance 1e-12)"


def test_train_mnist_alone_learns(mnist_available):
    result = parallel.train_mnist(epochs=1, batch_size=500, lr=0.5)
    assert result["processes"] == 1 and len(result["history"].step_loss) == 120
    assert result["test"]["accuracy"] > 0.9


def test_measurements_alone():
    profile = parallel.moe_routing_profile(30, n_experts=3, k=2, d=8, steps=2)
    assert sum(profile["examples per expert"]) == 60 and profile["bytes"] == {}   # nothing sent alone
    timing = parallel.time_data_parallel(global_batch=16, steps=2, sizes=(8, 4, 3))
    assert timing["ms per step"] > 0 and timing["bytes"] == {}


def test_fail_on_rank_alone():
    with pytest.raises(ValueError, match="process 0 met bad input"):
        parallel.fail_on_rank(0)
    assert parallel.fail_on_rank(1) is None              # alone, the all-reduce has no partner to wait for


def test_launch_refuses_a_function_it_cannot_send(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))   # a notebook's
    notebook_function = types.FunctionType(parallel.world.__code__, {}, "in_a_notebook")
    notebook_function.__module__ = "__main__"
    with pytest.raises(ValueError, match="in_a_notebook is defined in a notebook"):
        parallel.launch(notebook_function, 2)
    with pytest.raises(ValueError, match="world_size must be at least 1, got 0"):
        parallel.launch(parallel.world, 0)


def test_a_process_that_exits_with_status_0_mid_function_is_a_failure_not_a_result():
    with pytest.raises(RuntimeError, match="process of rank [01] failed: SystemExit: 0"):
        parallel.launch(sys.exit, 2, 0, timeout=60)
    assert not multiprocessing.active_children()


def test_a_group_of_one_runs_the_function_and_sends_back_its_result():
    receive, send = multiprocessing.Pipe(duplex=False)
    parallel._process_main(0, 1, parallel._free_port(), "gloo", 30, parallel.world, (), send)
    ok, value = receive.recv()
    assert ok is True and parallel.pickle.loads(value) == (0, 1)
    assert not torch.distributed.is_initialized()


def test_fail_on_rank_refuses_an_unknown_way_to_fail():
    with pytest.raises(ValueError, match="how must be 'raise', 'exit' or 'kill', got 'explode'"):
        parallel.fail_on_rank(0, "explode")


def test_synchronize_batch_norm_after_or_before_speed_up_leaves_every_batch_norm_synchronized():
    from neuroforge_lit.fast import FastLinear, speed_up
    from neuroforge_lit.norm import BatchNorm1d, normalized_mlp

    def build():
        return normalized_mlp([4, 5, 3, 2], "batch", generator=torch.Generator().manual_seed(0))

    state = build().state_dict()
    for model in (parallel.synchronize_batch_norm(speed_up(build())),      # FastBatchNorm1d -> Sync
                  speed_up(parallel.synchronize_batch_norm(build()))):     # speed_up leaves Sync alone
        kinds = [type(layer) for _, layer in model.named_layers()]
        assert [k for k in kinds if issubclass(k, BatchNorm1d)] == [parallel.SyncBatchNorm1d] * 2, kinds
        assert FastLinear in kinds                       # the rest of the model is still sped up
        for kind in ("params", "buffers"):                 # the state carries over, bit for bit
            ours = model.state_dict()[kind]
            assert list(ours) == list(state[kind]) and all(torch.equal(ours[k], state[kind][k]) for k in ours)


def test_sync_batch_norm_needs_two_examples_and_keeps_eval_mode():
    from neuroforge_lit.norm import BatchNorm1d
    layer = parallel.synchronize_batch_norm(BatchNorm1d(3, dtype=torch.float64))
    assert type(layer) is parallel.SyncBatchNorm1d
    with pytest.raises(ValueError, match="at least 2 examples over all processes, got 1"):
        layer.forward(torch.randn(1, 3, dtype=torch.float64))
    layer.eval()
    out = layer.forward(torch.ones(2, 3, dtype=torch.float64))
    assert layer.backward(torch.ones_like(out)).shape == (2, 3)


def test_expert_parallel_moe_needs_an_expert_per_process():
    from neuroforge_lit.moe import MoE
    layer = parallel.ExpertParallelMoE(MoE(4, 3, 2, 1, 5))
    assert list(layer.children()) == ["expert0", "expert1"] and layer.owners == [0, 0]
    assert layer.forward(torch.randn(6, 4)).shape == (6, 3)
    assert layer.backward(torch.ones(6, 3), input_grad=False) is None


# --- real process groups ----------------------------------------------------------------------

@pytest.mark.parametrize("world_size", [2, 3])
def test_every_check_passes_across_processes(world_size):
    per_rank = parallel.launch(parallel.run_checks, world_size, 0, timeout=60)
    assert per_rank[0] == per_rank[-1]                   # the largest gaps, agreed by all processes
    assert set(per_rank[0]) == set(parallel.CHECKS)
    assert _largest(per_rank[0]) <= TOLERANCE, per_rank[0]


def test_experts_spread_unevenly_and_processes_that_receive_nothing():
    # 4 experts over 3 processes (2, 1, 1); experts 2 and 3 get no example, so processes 1 and 2
    # receive no rows at all and still take part in every all-to-all.
    per_rank = parallel.launch(parallel.check_expert_parallel, 3, 0, 2, 4, 2, timeout=60)
    assert max(_largest(gaps) for gaps in per_rank) <= TOLERANCE


def _mutant_checks(mutant: str) -> dict:
    """The checks, in a process whose module has one derivation broken on purpose."""
    if mutant == "all-to-all backward with the rows in the wrong order":
        right = parallel.all_to_all_backward
        parallel.all_to_all_backward = lambda dout, cache: right(dout, cache).flip(0)
        return parallel.check_expert_parallel(0, 2)
    if mutant == "shard gradients averaged, not weighted by shard size":
        parallel.data_parallel_step.__defaults__ = (lambda out, y: _mean_of_means_loss(out, y),)
        return parallel.check_data_parallel(0)
    if mutant == "batch norm backward with this process's sums only":
        parallel.all_reduce_sum = lambda t: t.clone() if t.ndim == 2 and len(t) == 2 else _reduce(t)
        return parallel.check_sync_batchnorm(0)
    raise ValueError(mutant)


def _reduce(t):
    total = t.clone()
    torch.distributed.all_reduce(total)
    return total


def _mean_of_means_loss(out, y):
    """softmax_cross_entropy rescaled so that, after the share of (eq-dp-share), every process
    counts 1/d: the plain average of the processes' mean gradients."""
    from neuroforge_lit.losses import softmax_cross_entropy
    loss, dlogits = softmax_cross_entropy(out, y)
    n_global = 11                                        # check_data_parallel's batch
    return loss, dlogits * (n_global / len(y)) / parallel.world()[1]


@pytest.mark.parametrize("mutant", ["all-to-all backward with the rows in the wrong order",
                                    "shard gradients averaged, not weighted by shard size",
                                    "batch norm backward with this process's sums only"])
def test_each_check_catches_its_broken_derivation(mutant):
    per_rank = parallel.launch(_mutant_checks, 3, mutant, timeout=60)
    assert max(_largest(gaps) for gaps in per_rank) > 1e-3


def _large_result(n: int):
    rank, _ = parallel.world()
    return torch.full((n,), float(rank)), list(range(rank, rank + n))


def test_results_larger_than_a_pipe_come_back_whole_and_without_waiting():
    # Each process returns 2 MB of float32 and a list of 500 000 ints, far more than a pipe holds
    # (64 KiB): read only after the processes ended, they would wait forever to send it.
    start = time.monotonic()
    per_rank = parallel.launch(_large_result, 3, 500_000, timeout=10)
    assert time.monotonic() - start < 15, f"took {time.monotonic() - start:.0f} s"
    for rank, (tensor, values) in enumerate(per_rank):
        assert tensor.shape == (500_000,) and bool((tensor == rank).all())
        assert values[0] == rank and values[-1] == rank + 499_999 and len(values) == 500_000


def _fast_sync_batchnorm_gap(seed: int = 0, n: int = 11) -> dict:
    """check_sync_batchnorm's comparison of gradients, with the replica sped up by
    neuroforge_lit.fast before synchronize_batch_norm: the summed gradients of the shards against
    the whole batch in this process (plain layers), and the replica's batch-norm classes."""
    from neuroforge_lit.fast import speed_up
    from neuroforge_lit.losses import softmax_cross_entropy
    from neuroforge_lit.norm import BatchNorm1d, normalized_mlp
    rank, world_size = parallel.world()
    x, y = parallel._problem(seed, n, 6, 3)
    reference, replica = (parallel._perturbed(normalized_mlp([6, 8, 5, 3], "batch", dtype=torch.float64,
                                                             generator=torch.Generator().manual_seed(seed)), seed)
                          for _ in range(2))
    parallel.synchronize_batch_norm(speed_up(replica))
    reference.backward(softmax_cross_entropy(reference.forward(x), y)[1])
    mine = parallel.shard(n, world_size, rank)
    out = replica.forward(x[mine])
    replica.backward(len(out) / n * softmax_cross_entropy(out, y[mine])[1])
    return {"gradients": parity_gap(zip(parallel.summed_gradients(replica), reference.gradients())),
            "batch norms": sorted({type(layer).__name__ for _, layer in replica.named_layers()
                                   if isinstance(layer, BatchNorm1d)})}


def test_a_sped_up_model_synchronized_across_two_processes_has_the_whole_batch_gradients():
    per_rank = parallel.launch(_fast_sync_batchnorm_gap, 2, timeout=60)
    for result in per_rank:
        assert result["batch norms"] == ["SyncBatchNorm1d"], result
        assert result["gradients"] <= TOLERANCE, result


def test_a_failing_process_is_named_and_no_process_is_left():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^process of rank 1 failed: ValueError: process 1 met bad input"):
        parallel.launch(parallel.fail_on_rank, 3, 1, timeout=60)
    assert time.monotonic() - start < 30                 # not the collective's 60 s timeout


@pytest.mark.parametrize("how, ended", [("exit", "exited with status 3, without a result or a Python error"),
                                       ("kill", "killed by signal SIGKILL")])
@pytest.mark.parametrize("dying", [0, 1, 2])
def test_a_process_that_ends_without_a_word_is_named_not_the_partners_it_takes_down(dying, how, ended):
    # The two others fail in their all-reduce a moment later, with Python errors that may reach
    # launch before it sees the silent process end: the report must still name the silent one.
    start = time.monotonic()
    with pytest.raises(RuntimeError) as error:
        parallel.launch(parallel.fail_on_rank, 3, dying, how, timeout=30)
    report = str(error.value)
    assert report.startswith(f"process of rank {dying} died: {ended}"), report[:400]
    assert time.monotonic() - start < 20


def _sleep_forever():
    time.sleep(3600)


def test_a_run_past_its_deadline_is_stopped():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"processes \[0, 1\] of 2 still running after 3 s"):
        parallel.launch(_sleep_forever, 2, timeout=1.5)
    assert time.monotonic() - start < 20


def test_the_command_exits_non_zero_on_a_mismatch(capsys):
    assert parallel.main(["check", "--world-size", "1", "--tolerance", "-1"]) == 1
    out = capsys.readouterr().out
    assert out.count("MISMATCH") == 4 and "FAILED: 0 of 4 checks" in out


def _no_launch(*args, **kwargs):
    raise AssertionError("the command started processes for arguments it should have refused")


CHECKS_RANGE = "the checks run on 1 to 6 processes (at least one of their 6 experts on each)"


@pytest.mark.parametrize("argv, message", [
    (["--world-size", "0"], f"argument --world-size: {CHECKS_RANGE}, got 0"),
    (["check", "--world-size", "-3"], f"argument --world-size: {CHECKS_RANGE}, got -3"),
    (["check", "--world-size", "7"], f"argument --world-size: {CHECKS_RANGE}, got 7"),
    (["check", "--world-size", "12"], f"argument --world-size: {CHECKS_RANGE}, got 12"),
    (["train", "--world-size", "0"], "argument --world-size: must be at least 1, got 0"),
    (["train", "--world-size", "-1"], "argument --world-size: must be at least 1, got -1"),
    (["train", "--world-size", "4", "--batch-size", "3"],
     "argument --batch-size: the global batch must give each of the 4 processes an example, so it must be "
     "at least 4, got 3"),
    (["train", "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--timeout", "-5"], "argument --timeout: must be a positive number of seconds, got -5"),
])
def test_the_command_refuses_what_the_processes_would_fail_on_in_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(parallel, "launch", _no_launch)
    with pytest.raises(SystemExit) as exited:
        parallel.main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"python -m neuroforge_lit.parallel: error: {message}\n"


def test_the_command_under_torchrun_refuses_a_world_the_checks_cannot_use(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setattr(parallel.dist, "init_process_group", _no_launch)
    with pytest.raises(SystemExit) as exited:
        parallel.main(["check"])
    assert exited.value.code == 2
    expected = f"python -m neuroforge_lit.parallel: error: WORLD_SIZE (from torchrun): {CHECKS_RANGE}, got 8\n"
    assert capsys.readouterr().err == expected


def test_the_largest_world_of_the_checks_is_what_their_problems_allow():
    import inspect

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    experts = default(parallel.check_expert_parallel, "n_experts")
    rows = min(default(f, "n") for f in (parallel.check_data_parallel, parallel.check_sync_batchnorm,
                                         parallel.check_expert_parallel))
    assert parallel.LARGEST_CHECK_WORLD == min(experts, rows) == 6


def test_the_command_under_torchrun():
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "neuroforge_lit.parallel", "check"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "passed: 4 of 4 checks within 1e-12, 2 processes (gloo)" in done.stdout


def _data_parallel_run(folder: str, stop_at_step=None, resume=False):
    """Three epochs of fit_data_parallel with a checkpoint after each; stop_at_step raises inside
    that step (from the schedule, which every step calls), as a crash would."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(60, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    model = mlp([8, 12, 3], generator=torch.Generator().manual_seed(0))
    optimizer = AdamW(0.01)
    steps = []

    def schedule(progress):
        steps.append(progress)
        if len(steps) == stop_at_step:
            raise RuntimeError(f"crash in step {stop_at_step}")
        return cosine_lr(0.01, progress)

    history = parallel.fit_data_parallel(model, optimizer, x, y, epochs=3, batch_size=16, seed=2,
                                         lr_schedule=schedule, checkpoint=f"{folder}/run.ckpt", resume=resume)
    return [p.clone() for p in model.parameters()], history.step_loss, optimizer.t, len(steps)


def test_fit_data_parallel_resumes_bit_identically_from_its_epoch_checkpoint(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = parallel.launch(_data_parallel_run, 2, str(tmp_path / "a"), timeout=60)
    with pytest.raises(RuntimeError, match="crash in step 6"):       # epoch 2 of 3 (4 steps each)
        parallel.launch(_data_parallel_run, 2, str(tmp_path / "b"), 6, timeout=60)
    resumed = parallel.launch(_data_parallel_run, 2, str(tmp_path / "b"), None, True, timeout=60)
    for rank in range(2):
        params, step_loss, t, steps_taken = resumed[rank]
        assert steps_taken == 8, f"rank {rank}: the resumed run took {steps_taken} steps, not the last 2 epochs' 8"
        assert t == straight[rank][2] == 12 and step_loss == straight[rank][1]
        assert_tensors_equal(params, straight[rank][0], f"rank {rank}: parameters, resumed vs straight")


def test_fit_data_parallel_refuses_a_checkpoint_fit_wrote_mid_epoch(tmp_path):
    """fit_data_parallel resumes where an epoch ends; a file fit saved mid-epoch (checkpoint_every)
    has the same settings but a place inside an epoch, which it would silently ignore."""
    from neuroforge_lit.checkpoint import CheckpointError

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(60, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    model = mlp([8, 12, 3], generator=torch.Generator().manual_seed(0))

    def crash(step):
        if step == 6:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        fit(model, AdamW(0.01), x, y, epochs=3, batch_size=16, seed=2, checkpoint=tmp_path / "run.ckpt",
            checkpoint_every=5, on_step=crash, log=None)
    fresh = mlp([8, 12, 3], generator=torch.Generator().manual_seed(1))
    before = [p.clone() for p in fresh.parameters()]
    with pytest.raises(CheckpointError, match="written in the middle of epoch 2"):
        parallel.fit_data_parallel(fresh, AdamW(0.01), x, y, epochs=3, batch_size=16, seed=2,
                                   checkpoint=tmp_path / "run.ckpt", resume=True)
    assert_tensors_equal(fresh.parameters(), before, "parameters after the refused resume")
