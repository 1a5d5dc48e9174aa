"""Checkpoints: a model's complete state and its optimizer's. Hand-written (not generated from the book).

Persistence lives here, outside the chapters that teach the classes it serves. Two mixins give the
book's base classes their state:

* ``LayerState``, which ``layers.Layer`` inherits: ``declared()`` gathers what every layer inside a
  model declares (``params``, ``buffers``, ``generators``) by path, and ``state_dict()`` /
  ``check_state_dict()`` / ``load_state_dict()`` copy, check and restore all of it (parameters,
  buffers such as batch-norm statistics, and the states of the random generators), so a new kind
  of layer or container is saved and restored without any change here;
* ``OptimizerState``, which ``optim.Optimizer`` inherits: its step counter, hyper-parameters and
  per-parameter state as plain tensors and numbers, and their restoration, checked; the loaded
  state meets its parameters at the next step (``Optimizer.step``), where shapes are checked and
  it moves to their device and dtype, as in ``torch.optim``.

Format: a short header and a payload. The payload is what ``torch.save`` writes for the dict
below, holding only plain tensors, numbers, strings, lists and dicts, so that it loads with
``torch.load(..., weights_only=True)`` (no code is unpickled)::

    {"format": "neuroforge-lit-checkpoint", "version": 3,
     "model": {"params": {"<path>.<name>": tensor, ...},     # model.state_dict()
               "buffers": {"<path>.running_mean": tensor, ...},
               "generators": {"<path>.mask": uint8 tensor, ...}},
     "optimizer": optimizer.state_dict() or None,
     "extra": {...}}                                # anything plain the caller adds (epoch, ...)

The header is one line, ``NEUROFORGE-LIT-CHECKPOINT 3 SHA256 <hex digest of the payload>``. Loading
verifies the digest before anything else, so a single flipped bit anywhere is refused (the zip
format's own CRCs are not checked by ``torch.load``), and then checks the whole state against the
model and the optimizer before it changes either.

Writes are atomic: the file is written to a temporary name in the same folder, flushed to disk and
renamed over the target, so a crash mid-save leaves the previous checkpoint intact. ``extra`` values
that ``weights_only`` loading would refuse are refused when saving, not when loading.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from neuroforge_lit.files import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "save_fit_position", "load_fit_position",
           "LayerState", "OptimizerState"]

FORMAT, VERSION = "neuroforge-lit-checkpoint", 3
MAGIC = b"NEUROFORGE-LIT-CHECKPOINT"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


# --- the state of a layer and of an optimizer ---------------------------------------------------

class LayerState:
    """Mixed into ``layers.Layer``: a model's declared contents by path, and its state."""

    def declared(self) -> dict[str, dict]:
        """What this layer and every layer inside it declare, by path: {"params": {...},
        "buffers": {...}, "generators": {...}} (the objects themselves, not copies)."""
        found = {"params": {}, "buffers": {}, "generators": {}}
        for path, layer in self.named_layers():
            for kind, entries in found.items():
                entries.update({path + name: value for name, value in getattr(layer, kind).items()})
        return found

    def state_dict(self) -> dict:
        """A copy of everything that decides what the layer computes: parameters, buffers and
        generator states, by path. Plain tensors, so torch.load(..., weights_only=True) reads it."""
        declared = self.declared()
        return {"params": {k: p.detach().clone() for k, p in declared["params"].items()},
                "buffers": {k: b.detach().clone() for k, b in declared["buffers"].items()},
                "generators": {k: g.get_state() for k, g in declared["generators"].items()}}

    def check_state_dict(self, state) -> None:
        """Raise ValueError, listing every problem, unless load_state_dict(state) would succeed."""
        kinds = ("params", "buffers", "generators")
        if not (isinstance(state, dict) and set(state) == set(kinds)
                and all(isinstance(state[kind], dict) for kind in kinds)):
            raise ValueError(f"a layer's state is a dict of three dicts, {kinds}; got {type(state).__name__}"
                             f"{' with keys ' + str(sorted(map(str, state))) if isinstance(state, dict) else ''}")
        problems = []
        for kind, ours in self.declared().items():
            what, theirs = kind.rstrip("s").replace("param", "parameter"), state[kind]
            problems += [f"{what} {name!r} is missing from the state" for name in sorted(set(ours) - set(theirs))]
            problems += [f"{what} {name!r} is in the state but not in the model"
                         for name in sorted(set(theirs) - set(ours))]
            for name in sorted(set(ours) & set(theirs)):
                mine, value = ours[name], theirs[name]
                if not isinstance(value, torch.Tensor):
                    problems.append(f"{what} {name!r} is a {type(value).__name__}, not a tensor")
                elif kind == "generators" and not _fits_generator(mine, value):
                    problems.append(f"generator {name!r}: not a state of a {mine.device} generator")
                elif kind != "generators" and (value.shape, value.dtype) != (mine.shape, mine.dtype):
                    problems.append(f"{what} {name!r}: the model has {tuple(mine.shape)} {mine.dtype}, "
                                    f"the state {tuple(value.shape)} {value.dtype}")
        if problems:
            raise ValueError("the state does not fit this model:\n  " + "\n  ".join(problems))

    def load_state_dict(self, state) -> None:
        """Copy a state_dict into this layer; nothing changes unless all of it fits."""
        self.check_state_dict(state)
        declared = self.declared()
        for kind in ("params", "buffers"):
            for name, tensor in declared[kind].items():
                tensor.copy_(state[kind][name])
        for name, generator in declared["generators"].items():
            generator.set_state(state["generators"][name])


def _fits_generator(generator: torch.Generator, state: torch.Tensor) -> bool:
    """Whether a generator like this one accepts the state (tried on a scratch generator)."""
    try:
        torch.Generator(device=generator.device).set_state(state)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


class OptimizerState:
    """Mixed into ``optim.Optimizer``: its state as plain data, and its restoration, checked.
    Needs the optimizer's ``t``, ``state`` and ``hyperparameters()``."""

    state_loaded = False          # True from load_state_dict until the next step fits the state

    @property
    def kind(self) -> str:
        """The name that state_dict records and load_state_dict asks for."""
        return type(self).__name__

    def state_dict(self) -> dict:
        return {"type": self.kind, "t": self.t, "hyperparameters": self.hyperparameters(),
                "state": [{k: v.clone() for k, v in s.items()} for s in self.state]}

    def check_state_dict(self, state_dict: dict) -> None:
        """Raise ValueError, naming the problem, if load_state_dict would refuse state_dict."""
        if not isinstance(state_dict, dict) or state_dict.get("type") != self.kind:
            found = state_dict.get("type") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"state_dict is for {found}, not {self.kind}")
        missing = {"t", "hyperparameters", "state"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {', '.join(sorted(missing))}")
        try:
            type(self)(**state_dict["hyperparameters"])       # the constructor checks every range
        except (TypeError, ValueError) as error:
            raise ValueError(f"state_dict has bad hyperparameters: {error}") from None

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a state_dict; nothing changes if it is refused. The next step checks that the
        loaded state fits its parameters (fit_loaded_state)."""
        self.check_state_dict(state_dict)
        for name, value in state_dict["hyperparameters"].items():
            setattr(self, name, value)
        self.t = state_dict["t"]
        self.state = [{k: v.clone() for k, v in s.items()} for s in state_dict["state"]]
        self.state_loaded = bool(self.state)

    def fit_loaded_state(self, params) -> list[dict]:
        """The state of load_state_dict, checked against the parameters' shapes (nothing has changed
        yet) and moved to their device and dtype."""
        for i, (p, s) in enumerate(zip(params, self.state)):
            for name, value in s.items():
                if value.shape != p.shape:
                    raise ValueError(f"parameter {i} has shape {tuple(p.shape)} but the loaded "
                                     f"state {name!r} has shape {tuple(value.shape)}")
        self.state_loaded = False
        return [{k: v.to(p.device, p.dtype) for k, v in s.items()} for p, s in zip(params, self.state)]


def _without_storage(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.is_meta]


def save_checkpoint(path: str | Path, model, optimizer=None, extra: dict | None = None) -> None:
    """Write the model's state (and the optimizer's) to `path` atomically, with its SHA-256."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"{path}: the folder {path.parent} does not exist")
    if _without_storage(model):
        raise CheckpointError(f"{path}: the model's parameters {_without_storage(model)[:3]} have no storage "
                              "(the meta device); there is nothing to save")
    if extra is not None and not isinstance(extra, dict):
        raise CheckpointError(f"{path}: extra must be a dict, got {type(extra).__name__}")
    extra = dict(extra or {})
    try:                                   # what torch.load(weights_only=True) will accept
        buffer = io.BytesIO()
        torch.save(extra, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: extra holds a value that a checkpoint cannot store safely (plain "
                              f"numbers, strings, lists, dicts and tensors only): {type(e).__name__}: {e}") from None
    state = {
        "format": FORMAT, "version": VERSION,
        "model": {kind: {name: value.cpu() for name, value in entries.items()}
                  for kind, entries in model.state_dict().items()},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "extra": extra,
    }
    payload = io.BytesIO()
    torch.save(state, payload)
    payload = payload.getvalue()
    header = MAGIC + f" {VERSION} SHA256 {hashlib.sha256(payload).hexdigest()}\n".encode()
    atomic_write(path, lambda f: (f.write(header), f.write(payload)))


def _read(path: Path) -> dict:
    """The verified payload of a checkpoint file, loaded with weights_only=True."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e}") from None
    header, newline, payload = data.partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 4 or fields[0] != MAGIC or fields[2] != b"SHA256":
        raise CheckpointError(f"{path}: not a {FORMAT} file (no valid header; checkpoints written before "
                              f"version {VERSION} carry none: save them again with this version)")
    if fields[1] != str(VERSION).encode():
        raise CheckpointError(f"{path}: checkpoint version {fields[1].decode(errors='replace')}, expected {VERSION}")
    if hashlib.sha256(payload).hexdigest().encode() != fields[3]:
        raise CheckpointError(f"{path}: corrupted: the SHA-256 of its contents does not match the one it was "
                              "saved with (a damaged or truncated file); nothing was loaded")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint: {type(e).__name__}: {e}") from None
    expected = {"format", "version", "model", "optimizer", "extra"}
    if not isinstance(state, dict) or set(state) != expected or state["format"] != FORMAT:
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} payload (found {found}, expected keys {sorted(expected)})")
    if not isinstance(state["extra"], dict):
        raise CheckpointError(f"{path}: its extra is a {type(state['extra']).__name__}, not a dict")
    return state


def _optimizer_state_problems(state: list, params: list) -> list[str]:
    """Why an optimizer's per-parameter state cannot step `params` (none if it can)."""
    if not isinstance(state, list) or not all(isinstance(s, dict) for s in state):
        return [f"its state is a {type(state).__name__}, not a list of one dict per parameter"]
    if state and len(state) != len(params):
        return [f"it holds state for {len(state)} parameters, but the optimizer steps {len(params)} (an "
                "optimizer of another model, or of a part of it: pass params= the tensors it steps)"]
    return [f"the state {name!r} of parameter {i} has shape {tuple(value.shape)}, the parameter {tuple(p.shape)}"
            for i, (s, p) in enumerate(zip(state, params)) for name, value in s.items()
            if isinstance(value, torch.Tensor) and value.shape != p.shape]


def load_checkpoint(path: str | Path, model, optimizer=None, params=None) -> dict:
    """Restore `model` (and `optimizer`) in place from `path`; returns the checkpoint's `extra`.

    Nothing is modified unless the file's SHA-256 matches and the whole checkpoint fits the model
    and the optimizer, if one is given: its state must fit the tensors it steps, ``params``
    (default: ``model.parameters()``; pass e.g. ``head.parameters()`` for an optimizer of a part).
    """
    path = Path(path)
    return _restore(path, _read(path), model, optimizer, params)


def _restore(path: Path, state: dict, model, optimizer, params) -> dict:
    """load_checkpoint's checks and copies, on a payload already read and verified."""
    problems = []
    if _without_storage(model):
        problems.append(f"model: parameters {_without_storage(model)[:3]} have no storage (the meta device); "
                        "create the model on a real device before loading into it")
    try:
        model.check_state_dict(state["model"])
    except ValueError as error:
        problems.append(f"model: {error}")
    if optimizer is not None and state["optimizer"] is None:
        problems.append("the checkpoint holds no optimizer state")
    elif optimizer is not None:
        try:
            optimizer.check_state_dict(state["optimizer"])
        except ValueError as error:
            problems.append(f"optimizer: {error}")
        else:
            stepped = model.parameters() if params is None else list(params)
            problems += [f"optimizer: {problem}" for problem in _optimizer_state_problems(
                state["optimizer"]["state"], stepped)]
    if problems:
        raise CheckpointError(f"{path} does not fit:\n  " + "\n  ".join(problems))
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["extra"]


# --- resuming fit -------------------------------------------------------------------------------
# training.fit keeps its place in a Position (epoch, next minibatch, steps, this epoch's order and
# losses, the History); with the model, the optimizer and the shuffling generator that is the whole
# state of a run, so a resumed run takes exactly the steps the uninterrupted one would have taken.


def save_fit_position(path, model, optimizer, generator: torch.Generator, position, run: dict,
                      seconds: float) -> None:
    """Save model, optimizer and fit's Position to `path` (atomically, as save_checkpoint does).
    `run` names the settings a resumed run must share (examples, batch size, epochs, seed)."""
    mid_epoch = position.i > 0
    save_checkpoint(path, model, optimizer, extra={"fit": {
        "run": dict(run), "epoch": position.epoch, "i": position.i, "step": position.step,
        "perm": position.perm.cpu() if mid_epoch else None,
        "losses": position.losses.cpu() if mid_epoch else None,
        "generator": generator.get_state(), "seconds": float(seconds),
        "step_loss": torch.tensor(position.history.step_loss, dtype=torch.float64),
        "epochs": [dict(row) for row in position.history.epochs]}})


def load_fit_position(path, model, optimizer, generator: torch.Generator, run: dict, device=None, log=print,
                      mid_epoch: bool = True):
    """Restore model, optimizer and generator from a file save_fit_position wrote, and return the
    Position to continue from; None (a fresh start, said through `log`) if there is no such file.
    A checkpoint of a run with other settings, or (mid_epoch=False) one written in the middle of
    an epoch, is refused before anything changes."""
    from neuroforge_lit.training import History, Position  # training imports this module

    if path is None:
        raise ValueError("resume=True needs checkpoint=<file> to resume from")
    path = Path(path)
    if not path.exists():
        if log:
            log(f"no checkpoint at {path}: starting from the first step")
        return None
    state = _read(path)
    saved = state["extra"].get("fit")
    if not isinstance(saved, dict) or not isinstance(saved.get("run"), dict):
        raise CheckpointError(f"{path}: not written by fit (its extra has no 'fit' entry); nothing was loaded")
    differs = [f"{key} {saved['run'].get(key)!r} there, {value!r} here" for key, value in run.items()
               if saved["run"].get(key) != value]
    if differs:
        raise CheckpointError(f"{path} was written by a run with other settings ({'; '.join(differs)}); "
                              "nothing was loaded")
    if saved["i"] and not mid_epoch:
        raise CheckpointError(f"{path} was written in the middle of epoch {saved['epoch']} (fit's checkpoint_every); "
                              "this loop resumes only where an epoch ends; nothing was loaded")
    _restore(path, state, model, optimizer, None)
    generator.set_state(saved["generator"])
    history = History(saved["step_loss"].tolist(), saved["epochs"], saved["seconds"])
    position = Position(history, saved["epoch"], saved["i"], saved["step"],
                        None if saved["perm"] is None else saved["perm"].to(device),
                        None if saved["losses"] is None else saved["losses"].to(device))
    if log:
        log(f"resuming from {path}: epoch {position.epoch}, step {position.step}")
    return position
