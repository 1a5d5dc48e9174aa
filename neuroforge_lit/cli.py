"""The `neuroforge-lit` command. Hand-written (not generated from the book)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neuroforge_lit import tangle as tangler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neuroforge-lit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tangle", help="export the book's marked code cells into neuroforge_lit/")
    t.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 with a diff if the package differs from the book")
    t.add_argument("--root", type=Path, default=None, help="the book's root (holds _toc.yml)")
    args = parser.parse_args(argv)
    try:
        root = (args.root or tangler.find_root(Path.cwd())).resolve()
        if args.check:
            diff = tangler.check(root)
            if diff:
                sys.stdout.write(diff)
                print("neuroforge-lit tangle --check: the package differs from the book "
                      "(diff above); run `make tangle` and commit the result", file=sys.stderr)
                return 1
            print("neuroforge-lit tangle --check: package and book agree")
            return 0
        changed = tangler.tangle(root)
        print("\n".join(f"wrote {c}" for c in changed) or "neuroforge-lit tangle: nothing changed")
        return 0
    except tangler.TangleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
