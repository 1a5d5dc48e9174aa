"""The book's own tooling, hand-written: the tangler (book -> package), the chapter runner, and
the step of `make book` that executes the chapters two at a time (execute.py).

It lives beside the book, not in the package: ``pip install neuroforge-lit`` gives the runtime
modules only. ``make`` runs it as ``python -m booktools`` with ``tools/`` on the path.
"""
