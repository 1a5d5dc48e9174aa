"""Which package this is: its version, the commit it was built from (where that can be known), the
torch it runs on and the device. Hand-written (not generated from the book).

``python -m neuroforge_lit --version`` prints the first two, so a reader can compare them with the
footer of every page of the book, which names the package that executed it.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

import neuroforge_lit

__all__ = ["about", "commit"]


def commit() -> str | None:
    """The commit the package comes from: the one pip recorded for ``pip install git+URL``, or, for
    a package imported from a git checkout (an editable install), that checkout's HEAD, with
    "+changes" when tracked files differ from it. None when neither is known (a plain wheel)."""
    try:
        recorded = json.loads(metadata.distribution("neuroforge-lit").read_text("direct_url.json") or "{}")
    except metadata.PackageNotFoundError:
        recorded = {}
    if "vcs_info" in recorded:
        return recorded["vcs_info"].get("commit_id", "")[:12] or None
    checkout = Path(neuroforge_lit.__file__).resolve().parents[1]
    if not (checkout / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        changed = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def device() -> str:
    """The device computations default to here: the GPU's name, or the CPU and its core count."""
    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name()}"
    return f"CPU ({torch.get_num_threads()} threads, {platform.machine()})"


def about() -> dict[str, str]:
    """{"version", "commit", "torch", "device", "python"}; commit is "unknown" where it cannot be known."""
    return {"version": neuroforge_lit.__version__, "commit": commit() or "unknown", "torch": torch.__version__,
            "device": device(), "python": platform.python_version()}
