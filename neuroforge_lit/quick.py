"""Quick runs of the book: every cell and every gradient check, the experiments on a small budget.
Hand-written (not generated from the book).

A contributor who edits a derivation wants to know within a minute whether code and numbers still
agree, not after the chapter's full experiment. With ``NEUROFORGE_QUICK=1`` in the environment
(``make chapter CH=06 QUICK=1``, ``make book QUICK=1``) each chapter

* runs every cell, and every gradient check at full strength (those never depend on the budget);
* trains on the small budget its ``budget(full, quick=...)`` calls name, and prints a marker line
  each time, so a figure from a quick run is visibly marked as one;
* reports the claims about trained figures (``expect_result``) that a small budget cannot be held
  to, instead of enforcing them.

The full build refuses a page that carries the marker (the book's Sphinx extension looks for it),
so quick figures never reach the published book.

    >>> EPOCHS = budget(20, quick=2)        # 20 epochs, or 2 in a quick run
    >>> expect_result(accuracy >= 0.98, f"test accuracy {accuracy:.4f} reaches the 0.980 target")
"""

from __future__ import annotations

import os

__all__ = ["MARKER", "is_quick_run", "budget", "expect_result"]

ENVIRONMENT_VARIABLE = "NEUROFORGE_QUICK"
MARKER = "[quick run, not for publication]"
"""Printed by every quick-mode decision; the full book build refuses an output that contains it."""


def is_quick_run() -> bool:
    """True when ``NEUROFORGE_QUICK`` is set to anything but "", "0", "no" or "false"."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() not in ("", "0", "no", "false")


def budget(full, quick):
    """``full`` normally; ``quick`` in a quick run, announced with the marker line."""
    if not is_quick_run():
        return full
    print(f"{MARKER} budget {full!r} -> {quick!r}")
    return quick


def expect_result(holds: bool, claim: str) -> None:
    """A claim about what training reached (an accuracy target, a ranking of two models): raises
    ``AssertionError`` naming the claim when it does not hold in a full run; in a quick run, whose
    small budget the claim was not made for, prints whether it held and enforces nothing."""
    if not is_quick_run():
        if not holds:
            raise AssertionError(f"claim does not hold: {claim}")
        return
    print(f"{MARKER} not enforced on the small budget: {claim} ({'holds' if holds else 'DOES NOT HOLD'})")
