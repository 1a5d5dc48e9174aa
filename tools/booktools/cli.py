"""The book's tooling command: ``python -m booktools tangle [--check]`` and ``python -m booktools
chapter 03`` (``make tangle``, ``make check``, ``make chapter CH=03``). Hand-written; not part of
the installed package."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from booktools import tangle as tangler


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
    args = parser.parse_args(argv)
    try:
        if args.command == "chapter":
            root = (args.root or tangler.find_root(Path.cwd())).resolve()
            return run_chapter(root, args.chapter)
        root = (args.root or tangler.find_root(Path.cwd())).resolve()
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


def run_chapter(root: Path, which: str) -> int:
    """Execute one chapter in a fresh kernel; on failure print `chapter.md:LINE`, the line, and the
    error with its message (a quick run: ``NEUROFORGE_QUICK=1`` in the environment)."""
    import time

    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from neuroforge_lit.quick import is_quick_run

    matches = [c for c in tangler.toc_chapters(root) if Path(c).stem.startswith(which)]
    if len(matches) != 1:
        print(f"error: '{which}' matches {matches or 'no chapter'} in _toc.yml", file=sys.stderr)
        return 2
    chapter = matches[0]
    _, _, code_cells = tangler.chapter_cells(root, chapter)
    nb = jupytext.read(root / chapter)
    start = time.perf_counter()
    try:
        where = {"metadata": {"path": str((root / chapter).parent)}}
        NotebookClient(nb, timeout=1200, resources=where).execute()
    except CellExecutionError as e:
        print(failure_report(chapter, nb, code_cells, e), file=sys.stderr)
        return 1
    finally:
        out = root / "_build" / "chapters" / f"{Path(chapter).stem}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        jupytext.write(nb, out)
    mode = " (quick run: small budgets, every check)" if is_quick_run() else ""
    print(f"{chapter}: executed in {time.perf_counter() - start:.1f} s{mode}; outputs in {out.relative_to(root)}")
    return 0


ANSI = re.compile(r"\x1b\[[0-9;]*m")
CELL_FRAME = re.compile(r"Cell In\[\d+\], line (\d+)")


def failure_report(chapter: str, nb, code_cells: list[tuple[int, str]], error: Exception) -> str:
    """`chapter.md:LINE: cell failed with Error: message`, then the failing line of the chapter.
    The line is the cell's own line that raised (or called what raised), from the traceback."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    failed = next((i for i, c in enumerate(code)
                   if any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
    if failed is None or failed >= len(code_cells):
        return f"error: {chapter}: {error}"
    err = next(o for o in code[failed].outputs if o.get("output_type") == "error")
    first_line, source = code_cells[failed]
    frame = CELL_FRAME.search(ANSI.sub("", "\n".join(err.get("traceback", []))))
    offset = int(frame.group(1)) - 1 if frame else 0
    line = first_line + offset
    shown = source.splitlines()[offset].strip() if offset < len(source.splitlines()) else ""
    what = f"{err.get('ename', 'error')}: {err.get('evalue', '')}".strip()
    return f"error: {chapter}:{line}: cell failed with {what}" + (f"\n    at: {shown}" if shown else "")

if __name__ == "__main__":
    sys.exit(main())
