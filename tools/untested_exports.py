"""Fail unless the test suite ran every function and method the book exports into the package.

    python -m coverage run -m pytest && python tools/untested_exports.py      (what `make test` does)

A chapter's exported code is checked when the book executes, but a function that no chapter cell
and no test calls would be checked by nothing (as chapter 3's readable normalize_backward once
was, while the layers ran a faster copy). This script reads the coverage data of a test run and
lists every function or method of a generated module (one that starts with the tangler's
GENERATED header) whose body never ran. Methods with nothing to run (a body that only raises
NotImplementedError, or only a docstring) are left out. Exit 1 if any is listed. Hand-written; book tooling.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from booktools.tangle import GENERATED_MARK  # noqa: E402


def _has_nothing_to_run(fn: ast.FunctionDef) -> bool:
    """An abstract method (its body only raises NotImplementedError) or one that is only a docstring."""
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return not body or (len(body) == 1 and isinstance(body[0], ast.Raise) and body[0].exc is not None
                        and "NotImplementedError" in ast.unparse(body[0].exc))


def functions(source: str) -> list[tuple[str, set[int]]]:
    """(qualified name, the lines of its body) for every function and method of a module, nested
    classes included; the docstring does not count as body."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not _has_nothing_to_run(child):
                    body = child.body[1:] if (isinstance(child.body[0], ast.Expr) and len(child.body) > 1
                                              and isinstance(child.body[0].value, ast.Constant)) else child.body
                    lines = set(range(body[0].lineno, child.end_lineno + 1))
                    found.append((f"{prefix}{child.name}", lines))
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return found


def untested(source: str, executed: set[int]) -> list[str]:
    """The functions of `source` of which no body line is in `executed`."""
    return [name for name, lines in functions(source) if not lines & executed]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-file", default=".coverage", help="coverage data of the test run")
    args = parser.parse_args()
    import coverage

    data = coverage.CoverageData(basename=args.data_file)
    data.read()
    measured = {Path(f).resolve(): set(data.lines(f) or ()) for f in data.measured_files()}
    if not measured:
        print(f"untested_exports: no coverage data in {args.data_file}; run the tests under coverage first",
              file=sys.stderr)
        return 2
    missing = []
    for path in sorted((ROOT / "neuroforge_lit").glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if source.startswith(GENERATED_MARK):
            missing += [f"{path.relative_to(ROOT)}: {name}" for name in untested(source, measured.get(path, set()))]
    if missing:
        print("exported functions that no test ran (add a test that calls each):\n  " + "\n  ".join(missing),
              file=sys.stderr)
        return 1
    print("untested_exports: the tests ran every exported function and method")
    return 0


if __name__ == "__main__":
    sys.exit(main())
