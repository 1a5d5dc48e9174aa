"""Make the execution cache notice changes to the package a chapter imports.

myst-nb's cache keys on a chapter's own cell sources only: after an edit to chapter 2's exported
code, chapter 3 (which imports it from ``neuroforge_lit``) would be served stale outputs. So, as
Sphinx reads each chapter, this extension

1. appends a hidden code cell holding a hash of every package module the chapter imports
   (directly or through other modules), which changes the cache key when one of them changes;
2. tells Sphinx the chapter depends on those files (``note_dependency``), without which Sphinx
   would not even re-read an unchanged chapter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from neuroforge_lit.tangle import chapter_dependencies


def _add_dependency_cell(app, docname: str, source: list[str]) -> None:
    path = Path(app.env.doc2path(docname))
    if path.suffix != ".md" or "kernelspec:" not in source[0][:1000]:
        return  # not a notebook chapter
    root = Path(app.srcdir)
    deps = chapter_dependencies(root, str(path.relative_to(root)))
    if not deps:
        return
    lines = []
    for dep in deps:
        app.env.note_dependency(str(dep))
        digest = hashlib.sha256(dep.read_bytes()).hexdigest()[:16]
        lines.append(f"# {dep.relative_to(root)} {digest}")
    source[0] += ("\n\n```{code-cell} ipython3\n:tags: [remove-cell]\n"
                  "# The package modules this chapter runs on (re-executes when they change):\n"
                  + "\n".join(lines) + "\n```\n")


def setup(app):
    app.connect("source-read", _add_dependency_cell)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
