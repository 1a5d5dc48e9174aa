"""Checkpoints: round trip, bit-identical resume, atomic writes under a crash, bad files, and a
container the checkpoint code has never heard of (it relies on the Layer protocol only)."""

import hashlib
import io
from pathlib import Path

import pytest
import torch

from neuroforge_lit import checkpoint as ckpt
from neuroforge_lit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from neuroforge_lit.dropout import Dropout
from neuroforge_lit.layers import Layer, Linear, ReLU, Sequential
from neuroforge_lit.norm import BatchNorm1d
from neuroforge_lit.optim import SGD, AdamW, GradientDescent
from neuroforge_lit.training import fit

from conftest import assert_tensors_equal


def model_and_optimizer(seed=0):
    g = torch.Generator().manual_seed(seed)
    drops = torch.Generator().manual_seed(seed + 1)
    model = Sequential(Linear(6, 16, generator=g), BatchNorm1d(16), ReLU(), Dropout(0.3, generator=drops),
                       Linear(16, 3, generator=g))
    return model, AdamW(1e-2, weight_decay=0.1)


def data():
    g = torch.Generator().manual_seed(42)
    return torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)


def train(model, opt, seed):
    x, y = data()
    fit(model, opt, x, y, epochs=2, batch_size=16, seed=seed, log=None)


def test_round_trip_restores_params_buffers_optimizer_and_extra(tmp_path):
    model, opt = model_and_optimizer()
    train(model, opt, 0)
    save_checkpoint(tmp_path / "a.pt", model, opt, extra={"epoch": 2, "note": "hi"})
    fresh, fresh_opt = model_and_optimizer(seed=5)
    extra = load_checkpoint(tmp_path / "a.pt", fresh, fresh_opt)
    assert extra == {"epoch": 2, "note": "hi"}
    assert_tensors_equal(model.parameters(), fresh.parameters(), "model.parameters() vs fresh.parameters()")
    assert torch.equal(model.layers[1].buffers["running_var"], fresh.layers[1].buffers["running_var"])
    assert torch.equal(model.layers[3].generators["mask"].get_state(), fresh.layers[3].generators["mask"].get_state())
    assert fresh_opt.t == opt.t
    header, _, payload = (tmp_path / "a.pt").read_bytes().partition(b"\n")     # the documented format
    assert header == b"NEUROFORGE-LIT-CHECKPOINT 3 SHA256 " + hashlib.sha256(payload).hexdigest().encode()
    state = torch.load(io.BytesIO(payload), weights_only=True)
    assert state["format"] == "neuroforge-lit-checkpoint" and state["version"] == 3
    assert set(state["model"]["buffers"]) == {"1.running_mean", "1.running_var"}
    assert set(state["model"]["generators"]) == {"3.mask"}


def test_resumed_training_is_bit_identical(tmp_path):
    straight, opt = model_and_optimizer()
    train(straight, opt, 0)
    train(straight, opt, 1)

    first, opt1 = model_and_optimizer()
    train(first, opt1, 0)
    save_checkpoint(tmp_path / "mid.pt", first, opt1)
    resumed, opt2 = model_and_optimizer(seed=7)          # different init: everything must come from the file
    load_checkpoint(tmp_path / "mid.pt", resumed, opt2)
    train(resumed, opt2, 1)
    assert_tensors_equal(straight.parameters(), resumed.parameters(), "straight.parameters() vs resumed.parameters()")
    assert torch.equal(straight.layers[1].buffers["running_mean"], resumed.layers[1].buffers["running_mean"])


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = model_and_optimizer()
    target = tmp_path / "ckpt.pt"
    save_checkpoint(target, model, opt, extra={"epoch": 1})
    before = target.read_bytes()
    real_save = torch.save

    def dies_halfway(obj, f):
        real_save(obj, f)
        f.seek(len(before) // 2)
        f.truncate()
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ckpt.torch, "save", dies_halfway)
    train(model, opt, 0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, model, opt, extra={"epoch": 2})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]        # no temporary file left
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert load_checkpoint(target, *model_and_optimizer()) == {"epoch": 1}


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_file_is_a_clear_error_and_changes_nothing(tmp_path, damage):
    model, opt = model_and_optimizer()
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, opt)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 3])
    elif damage == "flip":
        path.write_bytes(raw[:200] + bytes(b ^ 0xFF for b in raw[200:400]) + raw[400:])
    else:
        path.write_bytes(b"this is not a checkpoint")
    fresh, fresh_opt = model_and_optimizer(seed=3)
    before = [p.clone() for p in fresh.parameters()]
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path, fresh, fresh_opt)
    assert_tensors_equal(before, fresh.parameters(), "before vs fresh.parameters()")


def test_missing_file_and_mismatched_model(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt", Sequential(Linear(2, 2)))
    model, opt = model_and_optimizer()
    save_checkpoint(tmp_path / "m.pt", model)
    other = Sequential(Linear(6, 8), ReLU(), Linear(8, 3))
    with pytest.raises(CheckpointError, match=r"parameter '0.W': the model has \(6, 8\) torch.float32, "
                                              r"the state \(6, 16\) torch.float32"):
        load_checkpoint(tmp_path / "m.pt", other)
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        load_checkpoint(tmp_path / "m.pt", model_and_optimizer()[0], AdamW())


def test_optimizer_that_does_not_fit_changes_nothing(tmp_path):
    """The optimizer's state_dict is checked with the rest, before the model is written."""
    model, opt = model_and_optimizer()
    train(model, opt, seed=0)
    save_checkpoint(tmp_path / "m.pt", model, opt)
    target = model_and_optimizer(seed=5)[0]
    before = [p.clone() for p in target.parameters()]
    with pytest.raises(CheckpointError, match="optimizer: state_dict is for AdamW, not SGD"):
        load_checkpoint(tmp_path / "m.pt", target, SGD(0.1))
    assert_tensors_equal(before, target.parameters(), "before vs target.parameters()")


def test_gradient_descent_is_saved_like_the_other_optimizers(tmp_path):
    """The README's own optimizer: GradientDescent has a state_dict (it raised AttributeError)."""
    model = model_and_optimizer()[0]
    train(model, GradientDescent(0.1), seed=0)
    save_checkpoint(tmp_path / "gd.pt", model, GradientDescent(0.1))
    resumed = GradientDescent(0.5)
    load_checkpoint(tmp_path / "gd.pt", model_and_optimizer(seed=2)[0], resumed)
    assert resumed.lr == 0.1


class Parallel(Layer):
    """A container unknown to checkpoint.py: two branches whose outputs are added, and a buffer
    and a generator of its own. It only declares; the Layer protocol does the rest."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.left = Sequential(Linear(6, 4, generator=g), BatchNorm1d(4))
        self.right = Sequential(Dropout(0.5, generator=torch.Generator().manual_seed(seed + 1)),
                                Linear(6, 4, generator=g))
        self.buffers = {"calls": torch.zeros(())}
        self.generators = {"own": torch.Generator().manual_seed(seed + 2)}

    def children(self):
        return {"left": self.left, "right": self.right}

    def forward(self, x):
        self.buffers["calls"] += 1
        return self.left.forward(x) + self.right.forward(x)

    def backward(self, dout, input_grad=True):
        dx_left, dx_right = self.left.backward(dout, input_grad), self.right.backward(dout, input_grad)
        return dx_left + dx_right if input_grad else None


def test_a_new_container_is_saved_and_restored_without_touching_checkpoint_code(tmp_path):
    model, opt = Sequential(Parallel(0), ReLU(), Linear(4, 3)), AdamW(1e-2)
    train(model, opt, seed=0)
    torch.rand(3, generator=model.layers[0].generators["own"])   # move its own generator on
    save_checkpoint(tmp_path / "p.pt", model, opt)
    fresh, fresh_opt = Sequential(Parallel(9), ReLU(), Linear(4, 3)), AdamW(1e-2)
    load_checkpoint(tmp_path / "p.pt", fresh, fresh_opt)
    ours, theirs = model.state_dict(), fresh.state_dict()
    assert set(ours["params"]) == {"0.left.0.W", "0.left.0.b", "0.left.1.gamma", "0.left.1.beta",
                                   "0.right.1.W", "0.right.1.b", "2.W", "2.b"}
    assert set(ours["buffers"]) == {"0.calls", "0.left.1.running_mean", "0.left.1.running_var"}
    assert set(ours["generators"]) == {"0.own", "0.right.0.mask"}
    for kind in ours:
        assert_tensors_equal(ours[kind], {k: theirs[kind][k] for k in ours[kind]}, f"state_dict {kind}")
    train(model, opt, seed=1)                                     # and training goes on identically
    train(fresh, fresh_opt, seed=1)
    assert_tensors_equal(model.parameters(), fresh.parameters(), "model.parameters() vs fresh.parameters()")


def test_any_flipped_bit_is_refused_before_anything_is_loaded(tmp_path):
    model, opt = model_and_optimizer()
    path = tmp_path / "d.pt"
    save_checkpoint(path, model, opt, extra={"epoch": 3})
    raw = path.read_bytes()
    g = torch.Generator().manual_seed(0)
    positions = torch.randint(0, len(raw), (40,), generator=g).tolist() + [0, len(raw) - 1]
    fresh, fresh_opt = model_and_optimizer(seed=3)
    before = [p.clone() for p in fresh.parameters()]
    for position in positions:
        bit = 1 << int(torch.randint(0, 8, (), generator=g))
        path.write_bytes(raw[:position] + bytes([raw[position] ^ bit]) + raw[position + 1:])
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path, fresh, fresh_opt)
    assert_tensors_equal(before, fresh.parameters(), "parameters after refused loads")
    assert fresh_opt.t == 0


def test_an_extra_that_cannot_be_loaded_safely_is_refused_when_saving(tmp_path):
    model, opt = model_and_optimizer()
    with pytest.raises(CheckpointError, match="extra holds a value"):
        save_checkpoint(tmp_path / "e.pt", model, opt, extra={"schedule": lambda q: q})
    with pytest.raises(CheckpointError, match="extra must be a dict"):
        save_checkpoint(tmp_path / "e.pt", model, opt, extra=[1, 2])
    assert not list(tmp_path.iterdir()), "a refused save must leave no file behind"


def test_a_model_without_storage_is_refused(tmp_path):
    model, opt = model_and_optimizer()
    save_checkpoint(tmp_path / "f.pt", model, opt)
    meta, _ = model_and_optimizer()
    for layer in meta.layers:
        layer.params = {k: v.to("meta") for k, v in layer.params.items()}
    with pytest.raises(CheckpointError, match="meta device"):
        load_checkpoint(tmp_path / "f.pt", meta)
    with pytest.raises(CheckpointError, match="meta device"):
        save_checkpoint(tmp_path / "g.pt", meta)


def test_a_checkpoint_written_before_the_state_moved_to_the_mixins_loads_unchanged():
    """tests/data/checkpoint-v3-state-on-layer.ckpt was written at commit 6bdc62d, when Layer and
    Optimizer held their own state_dict methods (chapter 2), by this file's model_and_optimizer()
    and train(..., 0). Loaded now, through LayerState and OptimizerState, it must give exactly the
    state that the same seeded training gives today, and training on from it must match too."""
    path = Path(__file__).with_name("data") / "checkpoint-v3-state-on-layer.ckpt"
    model, opt = model_and_optimizer()
    train(model, opt, 0)
    loaded, loaded_opt = model_and_optimizer(seed=5)
    extra = load_checkpoint(path, loaded, loaded_opt)
    assert extra == {"written by": "commit 6bdc62d, state methods on Layer"}
    for kind in ("params", "buffers"):
        ours, theirs = model.state_dict()[kind], loaded.state_dict()[kind]
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), kind
    assert torch.equal(model.layers[3].generators["mask"].get_state(), loaded.layers[3].generators["mask"].get_state())
    assert (loaded_opt.t, loaded_opt.hyperparameters()) == (opt.t, opt.hyperparameters())
    train(model, opt, 1)
    train(loaded, loaded_opt, 1)
    assert_tensors_equal(model.parameters(), loaded.parameters(), "trained on from the old checkpoint")
