"""Checkpoints: a model's complete state and its optimizer's. Hand-written (not generated from the book).

The model's state is what the ``Layer`` protocol of the MLP chapter derives from each layer's
declarations (``model.state_dict()``: parameters, buffers such as batch-norm statistics, and the
states of the random generators the layers declare), so a new kind of layer or container is saved
and restored without any change here.

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

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT, VERSION = "neuroforge-lit-checkpoint", 3
MAGIC = b"NEUROFORGE-LIT-CHECKPOINT"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


def _without_storage(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.is_meta]


def save_checkpoint(path: str | Path, model, optimizer=None, extra: dict | None = None) -> None:
    """Write the model's state (and the optimizer's) to `path` atomically, with its SHA-256."""
    path = Path(path)
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


def load_checkpoint(path: str | Path, model, optimizer=None) -> dict:
    """Restore `model` (and `optimizer`) in place from `path`; returns the checkpoint's `extra`.

    Nothing is modified unless the file's SHA-256 matches and the whole checkpoint fits the model
    (and the optimizer, if one is given).
    """
    path = Path(path)
    state = _read(path)
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
        try:                                  # its state's shapes are checked at the next step
            optimizer.check_state_dict(state["optimizer"])
        except ValueError as error:
            problems.append(f"optimizer: {error}")
    if problems:
        raise CheckpointError(f"{path} does not fit:\n  " + "\n  ".join(problems))
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["extra"]
