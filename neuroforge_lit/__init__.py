"""NeuroForge-Lit: neural-network components with hand-written backward passes, tangled from a book.

Two kinds of module live here, told apart by their first line:

* generated from the book's chapters by ``neuroforge-lit tangle`` (they start with
  ``# GENERATED``; never edit them, edit the chapter): ``logistic``, ``layers``, ``losses``,
  ``training`` and one module per later chapter;
* hand-written infrastructure: ``data`` (MNIST loading with checksums), ``testing`` (the autograd
  and finite-difference oracles), ``tangle`` and ``cli`` (book -> package), ``checkpoint``, and
  ``files`` (the atomic write that ``tangle`` and ``checkpoint`` share).

No module except ``testing`` uses autograd: every backward pass is written by hand.
"""

__version__ = "0.1.0"
