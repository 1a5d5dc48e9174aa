"""Checkpoints: a model's complete state and its optimizer's. Hand-written (not generated from the book).

The model's state is what the ``Layer`` protocol of the MLP chapter derives from each layer's
declarations (``model.state_dict()``: parameters, buffers such as batch-norm statistics, and the
states of the random generators the layers declare), so a new kind of layer or container is saved
and restored without any change here.

Format: one file written by ``torch.save`` holding only plain tensors, numbers, strings, lists and
dicts, so that it loads with ``torch.load(path, weights_only=True)`` (no code is unpickled)::

    {"format": "neuroforge-lit-checkpoint", "version": 2,
     "model": {"params": {"<path>.<name>": tensor, ...},     # model.state_dict()
               "buffers": {"<path>.running_mean": tensor, ...},
               "generators": {"<path>.mask": uint8 tensor, ...}},
     "optimizer": optimizer.state_dict() or None,
     "extra": {...}}                                # anything plain the caller adds (epoch, ...)

Writes are atomic: the file is written to a temporary name in the same folder, flushed to disk and
renamed over the target, so a crash mid-save leaves the previous checkpoint intact. Loading checks
the whole file against the model and the optimizer before it changes either.
"""

from __future__ import annotations

from pathlib import Path

import torch

from neuroforge_lit.files import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT, VERSION = "neuroforge-lit-checkpoint", 2


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


def save_checkpoint(path: str | Path, model, optimizer=None, extra: dict | None = None) -> None:
    """Write the model's state (and the optimizer's) to `path` atomically."""
    path = Path(path)
    model_state = model.state_dict()
    state = {
        "format": FORMAT, "version": VERSION,
        "model": {kind: {name: value.cpu() for name, value in entries.items()}
                  for kind, entries in model_state.items()},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "extra": dict(extra or {}),
    }
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, model, optimizer=None) -> dict:
    """Restore `model` (and `optimizer`) in place from `path`; returns the checkpoint's `extra`.

    Nothing is modified unless the whole checkpoint is readable and fits the model (and the
    optimizer, if one is given).
    """
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated zip, bad pickle, not a torch file at all
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupted?): "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')}, expected {VERSION}")
    problems = []
    try:
        model.check_state_dict(state.get("model"))
    except ValueError as error:
        problems.append(f"model: {error}")
    if optimizer is not None and state.get("optimizer") is None:
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
    return state.get("extra", {})
