"""NeuroForge-Lit: neural-network components with hand-written backward passes, tangled from a book.

Two kinds of module live here, told apart by their first line:

* generated from the book's chapters by ``make tangle`` (they start with ``# GENERATED``; never
  edit them, edit the chapter): ``logistic``, ``layers``, ``losses``, ``optim``, ``training`` and
  one module per later chapter, ``fast`` (the performance appendix's opt-in variants) among them;
* hand-written, listed in ``HAND_WRITTEN_MODULES`` below: ``about`` (version, commit, torch and
  device: ``python -m neuroforge_lit --version``), ``checkpoint``, ``exercises`` (the coding
  exercises and their checker: ``python -m neuroforge_lit.exercises``), ``data`` (MNIST loading with
  checksums), ``files`` (atomic writes), ``quick`` (the small budgets of a quick run of the book)
  and ``testing`` (the autograd and finite-difference oracles, and the mutants that test them).

No module except ``testing`` uses autograd: every backward pass is written by hand. The tooling
that turns the book into these modules lives beside the book (``tools/booktools``), not here.
"""

__version__ = "0.1.0"   # the one place the version is written: pyproject.toml and the book read it

GENERATED_MODULES = ("logistic", "layers", "losses", "training", "optim", "norm", "dropout", "distill", "moe",
                     "recipe", "parallel", "conv", "attention", "fast")
"""The modules generated from the book, in the book's order. ``make tangle`` refuses an export to a
module missing here (a typo would otherwise start a new module): add a new module's name here
first."""

HAND_WRITTEN_MODULES = ("about", "checkpoint", "data", "exercises", "files", "quick", "testing")
"""The package's modules that are not generated from the book (the tests check this list against
the files: every other module carries the generated header)."""
