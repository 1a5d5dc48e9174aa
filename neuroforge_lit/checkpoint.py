"""Checkpoints: a model's parameters and state, its optimizer's state, and the random generators
its layers draw from. Hand-written (not generated from the book).

Format: one file written by ``torch.save`` holding only plain tensors, numbers, strings, lists and
dicts, so that it loads with ``torch.load(path, weights_only=True)`` (no code is unpickled):

    {"format": "neuroforge-lit-checkpoint", "version": 1,
     "params":  {"<name>": tensor, ...},          # model.named_parameters()
     "buffers": {"<layer path>.running_mean": tensor, ...},   # batch-norm running statistics
     "rng":     {"<layer path>.generator": uint8 tensor, ...}, # torch.Generator states
     "optimizer": optimizer.state_dict() or None,
     "extra": {...}}                                # anything plain the caller adds (epoch, ...)

Writes are atomic: the file is written to a temporary name in the same folder, flushed to disk and
renamed over the target, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from neuroforge_lit.files import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT, VERSION = "neuroforge-lit-checkpoint", 1
BUFFERS = ("running_mean", "running_var")
GENERATORS = ("generator", "noise_generator")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


def _walk(layer, path=""):
    """(path, layer) for a layer and every layer inside it (Sequential.layers, MoE.experts)."""
    yield path, layer
    for attr in ("layers", "experts"):
        for i, child in enumerate(getattr(layer, attr, [])):
            yield from _walk(child, f"{path}{attr}.{i}.")


def _state(model) -> tuple[dict, dict]:
    buffers, rng = {}, {}
    for path, layer in _walk(model):
        for name in BUFFERS:
            if isinstance(getattr(layer, name, None), torch.Tensor):
                buffers[path + name] = getattr(layer, name)
        for name in GENERATORS:
            gen = getattr(layer, name, None)
            if isinstance(gen, torch.Generator) and gen.device.type == "cpu":
                rng[path + name] = gen.get_state()
    return buffers, rng


def save_checkpoint(path: str | Path, model, optimizer=None, extra: dict | None = None) -> None:
    """Write model (and optimizer) state to `path` atomically."""
    path = Path(path)
    buffers, rng = _state(model)
    state = {
        "format": FORMAT, "version": VERSION,
        "params": {name: p.detach().clone().cpu() for name, p in model.named_parameters()},
        "buffers": {k: v.detach().clone().cpu() for k, v in buffers.items()},
        "rng": {k: v.clone() for k, v in rng.items()},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "extra": dict(extra or {}),
    }
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, model, optimizer=None) -> dict:
    """Restore `model` (and `optimizer`) in place from `path`; returns the checkpoint's `extra`.

    Nothing is modified unless the whole checkpoint is readable and fits the model.
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
    params = dict(model.named_parameters())
    buffers, rng = _state(model)
    problems = []
    for kind, ours, theirs in (("parameter", params, state["params"]), ("buffer", buffers, state["buffers"])):
        for name in sorted(set(ours) | set(theirs)):
            if name not in theirs:
                problems.append(f"{kind} {name} is missing from the checkpoint")
            elif name not in ours:
                problems.append(f"{kind} {name} is in the checkpoint but not in the model")
            elif ours[name].shape != theirs[name].shape:
                problems.append(f"{kind} {name}: model {tuple(ours[name].shape)}, "
                                f"checkpoint {tuple(theirs[name].shape)}")
    if optimizer is not None and state["optimizer"] is None:
        problems.append("the checkpoint holds no optimizer state")
    elif optimizer is not None:
        try:                                  # its state's shapes are checked at the next step
            optimizer.check_state_dict(state["optimizer"])
        except ValueError as error:
            problems.append(f"optimizer: {error}")
    if problems:
        raise CheckpointError(f"{path} does not fit this model:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state["params"][name])
    layers = dict(_walk(model))
    for key, value in state["buffers"].items():
        layer_path, name = key.rsplit(".", 1) if "." in key else ("", key)
        layer = layers[layer_path + "." if layer_path else ""]
        setattr(layer, name, value.to(getattr(layer, name).device, getattr(layer, name).dtype))
    for key, value in state["rng"].items():
        layer_path, name = key.rsplit(".", 1) if "." in key else ("", key)
        gen = getattr(layers.get(layer_path + "." if layer_path else ""), name, None)
        if isinstance(gen, torch.Generator):
            gen.set_state(value)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["extra"]
