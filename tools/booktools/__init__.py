"""The book's own tooling, hand-written: the tangler (book -> package) and the chapter runner.

It lives beside the book, not in the package: ``pip install neuroforge-lit`` gives the runtime
modules only. ``make`` runs it as ``python -m booktools`` with ``tools/`` on the path.
"""
