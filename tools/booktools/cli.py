"""The book's tooling command: ``python -m booktools tangle [--check]``, ``python -m booktools
chapter 03`` and ``python -m booktools execute`` (``make tangle``, ``make check``,
``make chapter CH=03``, the first step of ``make book``). Hand-written; not part of the installed
package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from booktools import tangle as tangler
from booktools.execute import book_threads, execute_book, execute_chapter, thread_environment
from booktools.tangle import is_notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m booktools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tangle", help="export the book's marked code cells into neuroforge_lit/")
    t.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 with a diff if the package differs from the book")
    t.add_argument("--root", type=Path, default=None, help="the book's root (holds _toc.yml)")
    c = sub.add_parser("chapter", help="execute one chapter alone (needs the `book` extra)")
    c.add_argument("chapter", help="a chapter number (03) or file stem (03_normalization)")
    c.add_argument("--root", type=Path, default=None)
    c.add_argument("--out", type=Path, default=None,
                   help="where the executed notebook goes (default _build/chapters/<stem>.ipynb)")
    c.add_argument("--threads", type=int, default=None,
                   help="torch threads for the kernel (default: the book's, one unless the chapter runs alone)")
    e = sub.add_parser("execute", help="execute the chapters missing from the book's cache, two at a time")
    e.add_argument("--root", type=Path, default=None)
    e.add_argument("--build-dir", type=Path, default=None, help="the build's _build folder (default <root>/_build)")
    e.add_argument("--jobs", type=int, default=2, help="chapters side by side (default 2)")
    args = parser.parse_args(argv)
    try:
        root = (args.root or tangler.find_root(Path.cwd())).resolve()
        if args.command == "chapter":
            return run_chapter(root, args.chapter, args.out, args.threads)
        if args.command == "execute":
            if args.jobs < 1:
                parser.error(f"--jobs must be at least 1, not {args.jobs}")
            return execute_book(root, (args.build_dir or root / "_build").resolve(), args.jobs)
        if args.check:
            diff = tangler.check(root)
            if diff:
                sys.stdout.write(diff)
                print("tangle --check: the package differs from the book "
                      "(diff above); run `make tangle` and commit the result", file=sys.stderr)
                return 1
            print("tangle --check: package and book agree")
            return 0
        changed = tangler.tangle(root)
        print("\n".join(f"wrote {c}" for c in changed) or "tangle: nothing changed")
        return 0
    except tangler.TangleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run_chapter(root: Path, which: str, out: Path | None = None, threads: int | None = None) -> int:
    """Execute one chapter in a fresh kernel, on the book's thread count (or ``threads``); on failure
    print `chapter.md:LINE`, the line, and the error (a quick run: ``NEUROFORGE_QUICK=1``)."""
    import os
    import time

    from neuroforge_lit.quick import is_quick_run

    matches = [c for c in tangler.toc_chapters(root) if Path(c).stem.startswith(which)]
    if len(matches) != 1:
        print(f"error: '{which}' matches {matches or 'no chapter'} in _toc.yml", file=sys.stderr)
        return 2
    chapter = matches[0]
    if not is_notebook(root, chapter):
        print(f"error: {chapter} has no kernelspec in its front matter: nothing in it executes", file=sys.stderr)
        return 2
    environment = book_threads(root, chapter) if threads is None else thread_environment(threads)
    os.environ.update(environment)                     # the kernel inherits this process's environment
    out = (out or root / "_build" / "chapters" / f"{Path(chapter).stem}.ipynb").resolve()
    start = time.perf_counter()
    failure = execute_chapter(root, chapter, out)
    if failure:
        print(failure, file=sys.stderr)
        return 1
    mode = " (quick run: small budgets, every check)" if is_quick_run() else ""
    where = out.relative_to(root) if out.is_relative_to(root) else out
    n = environment.get("OMP_NUM_THREADS")
    cores = "every core" if n is None else f"{n} thread" + ("s" if n != "1" else "")
    print(f"{chapter}: executed in {time.perf_counter() - start:.1f} s on {cores}{mode}; outputs in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
