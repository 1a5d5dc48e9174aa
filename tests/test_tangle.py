"""The tangler (tools/booktools): output, determinism, --check, and every error a contributor can make."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from booktools import tangle as T
from booktools.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
HEADER = "---\nkernelspec:\n  name: python3\n  display_name: Python 3\n---\n"


def cell(code: str, options: str = "") -> str:
    return f"```{{code-cell}} ipython3\n{options}{textwrap.dedent(code).strip()}\n```\n"


def make_book(tmp_path: Path, chapters: dict[str, str], toc: list[str] | None = None) -> Path:
    (tmp_path / "book").mkdir()
    (tmp_path / "neuroforge_lit").mkdir()
    (tmp_path / "neuroforge_lit" / "__init__.py").write_text("")
    for name, body in chapters.items():
        (tmp_path / "book" / f"{name}.md").write_text(HEADER + body)
    names = toc if toc is not None else list(chapters)
    entries = "".join(f"  - file: book/{n}\n" for n in names[1:])
    (tmp_path / "_toc.yml").write_text(f"format: jb-book\nroot: book/{names[0]}\nchapters:\n{entries}")
    return tmp_path


GOOD = {
    "a": "# Chapter A\n\n$$ y = 2x $$ (eq-a-double)\n\n" + cell('''
        #| export neuroforge_lit.alpha
        import torch

        def double(x):
            return 2 * x   # (eq-a-double)
        ''') + "\n" + cell("print(double(3))") + "\n" + cell('''
        #| export neuroforge_lit.alpha
        import math
        import torch

        def root(x):
            return math.sqrt(x)
        ''', options=":tags: [hide-input]\n"),
    "b": "# Chapter B\n\n" + cell('''
        #| export neuroforge_lit.beta
        from neuroforge_lit.alpha import double

        def quadruple(x):
            return double(double(x))
        '''),
}


def snapshot(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((root / "neuroforge_lit").glob("*.py"))}


def test_tangle_writes_modules_with_header_provenance_and_sorted_imports(tmp_path):
    root = make_book(tmp_path, GOOD)
    changed = T.tangle(root)
    assert changed == ["neuroforge_lit/alpha.py", "neuroforge_lit/beta.py"]
    alpha = (root / "neuroforge_lit" / "alpha.py").read_text()
    assert alpha.startswith(T.GENERATED_MARK)
    assert '# book/a.md, section "Chapter A"\ndef double(x):' in alpha   # provenance: chapter and section
    assert alpha.count("import torch") == 1                  # de-duplicated
    assert alpha.index("import math") < alpha.index("import torch")
    assert '__all__ = [\n    "double",\n    "root",\n]' in alpha
    assert "print(double(3))" not in alpha                   # book-only cells stay in the book
    # The generated package imports and works.
    code = "from neuroforge_lit.beta import quadruple; print(quadruple(5))"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.stdout.strip() == "20", out.stderr


def test_tangle_is_deterministic_and_idempotent(tmp_path):
    root = make_book(tmp_path, GOOD)
    T.tangle(root)
    first = snapshot(root)
    assert T.tangle(root) == []
    assert snapshot(root) == first
    assert T.check(root) == ""


def test_check_reports_a_diff_and_exit_code(tmp_path, capsys):
    root = make_book(tmp_path, GOOD)
    T.tangle(root)
    assert cli_main(["tangle", "--check", "--root", str(root)]) == 0
    path = root / "neuroforge_lit" / "alpha.py"
    path.write_text(path.read_text().replace("2 * x", "3 * x"))   # a hand edit of generated code
    assert cli_main(["tangle", "--check", "--root", str(root)]) == 1
    out = capsys.readouterr()
    assert "-    return 3 * x" in out.out and "+    return 2 * x" in out.out
    assert "differs from the book" in out.err


def test_stale_generated_module_is_removed(tmp_path):
    root = make_book(tmp_path, GOOD)
    T.tangle(root)
    (root / "book" / "b.md").write_text(HEADER + "# Chapter B\n\nNo code any more.\n")
    assert "beta" in T.check(root)
    T.tangle(root)
    assert not (root / "neuroforge_lit" / "beta.py").exists()


BAD = {
    "unknown module name": (cell("#| export neuroforge_lit.Bad-Name\nx = 1"), "a.md:9",
                            "does not name a module"),
    "module outside the package": (cell("#| export torch.nn\nx = 1"), "a.md:9", "does not name a module"),
    "hand-written module": (cell("#| export neuroforge_lit.handmade\nx = 1"), "a.md:9", "hand-written module"),
    "directive typo": (cell("#| exprot neuroforge_lit.alpha\nx = 1"), "a.md:9", "unknown directive 'exprot'"),
    "syntax error": (cell("#| export neuroforge_lit.alpha\ndef f(:\n    pass"), "a.md:10", "syntax error"),
    "duplicate name in one chapter": (
        cell("#| export neuroforge_lit.alpha\ndef f():\n    pass") + "\n"
        + cell("#| export neuroforge_lit.alpha\ndef f():\n    return 1"),
        "a.md:16", "'f' is already defined at book/a.md:10"),
    "unclosed fence": ("text\n\n```{code-cell} ipython3\n#| export neuroforge_lit.alpha\nx = 1\n",
                       "a.md:10", "never closed"),
    "notebook-only variable": (
        cell("data = [1, 2]") + "\n" + cell("#| export neuroforge_lit.alpha\ndef f():\n    return len(data)"),
        "a.md:15", "'data' is not defined"),
    "statement that runs on import": (cell("#| export neuroforge_lit.alpha\nprint('hi')"), "a.md:10",
                                      "would run when the module is imported"),
    "unknown equation label": (cell("#| export neuroforge_lit.alpha\ny = 1  # (eq-nowhere)"), "a.md:10",
                               "cites equation 'eq-nowhere', which is not a labelled equation of any chapter"),
    "export in a plain fence": ("```python\n#| export neuroforge_lit.alpha\nx = 1\n```\n", "a.md:9",
                                "plain 'python' fence"),
    "main guard in a cell the notebook runs": (
        cell("#| export neuroforge_lit.alpha\ndef main():\n    return 0\n\nif __name__ == '__main__':\n    main()"),
        "a.md:13", "tag the cell ':tags: [skip-execution]'"),
    "main guard above a function it calls": (
        cell("#| export neuroforge_lit.alpha\nimport sys") + "\n"
        + cell("#| export neuroforge_lit.alpha\nif __name__ == '__main__':\n    sys.exit(main())",
               options=":tags: [skip-execution]\n") + "\n"
        + cell("#| export neuroforge_lit.alpha\ndef main():\n    return 0"),
        "a.md:16", "this main guard needs 'main', which neuroforge_lit.alpha defines only below it, at "
                   "book/a.md:22; a module runs from top to bottom, so `python -m neuroforge_lit.alpha` would "
                   "stop with NameError: move the guard's cell below the module's last exported cell"),
    "main guard above a name that a function it calls needs": (   # chapter 9's train_mnist, once
        cell("#| export neuroforge_lit.alpha\nimport sys\n\nJOBS = {'train': lambda: train()}\n\n"
             "def main():\n    return JOBS['train']()") + "\n"
        + cell("#| export neuroforge_lit.alpha\nif __name__ == '__main__':\n    sys.exit(main())",
               options=":tags: [skip-execution]\n") + "\n"
        + cell("#| export neuroforge_lit.alpha\ndef unrelated():\n    return 1\n\ndef train():\n    return 0"),
        "a.md:21", "this main guard needs 'train' (through main -> JOBS), which neuroforge_lit.alpha defines "
                   "only below it, at book/a.md:30"),
    "other if statement, even in a skipped cell": (
        cell("#| export neuroforge_lit.alpha\nif True:\n    x = 1", options=":tags: [skip-execution]\n"),
        "a.md:11", "this If statement would run when the module is imported"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_chapter_is_a_clear_error_and_leaves_the_package_alone(case, tmp_path, capsys):
    body, where, message = BAD[case]
    root = make_book(tmp_path, {"a": "# A\n\n" + body})
    pkg = root / "neuroforge_lit"
    (pkg / "alpha.py").write_text(T.GENERATED_MARK + " from before\nx = 0\n")
    (pkg / "handmade.py").write_text("# written by a person\n")
    before = snapshot(root)
    with pytest.raises(T.TangleError) as err:
        T.tangle(root)
    assert str(err.value).startswith(f"book/{where}:"), str(err.value)
    assert message in str(err.value)
    assert snapshot(root) == before                               # nothing written, nothing removed
    assert cli_main(["tangle", "--root", str(root)]) == 2          # the CLI: one line, non-zero
    assert f"error: book/{where}:" in capsys.readouterr().err


def test_same_name_exported_by_two_chapters(tmp_path):
    body = cell("#| export neuroforge_lit.alpha\ndef f():\n    pass")
    other = cell("#| export neuroforge_lit.beta\ndef f():\n    pass")
    root = make_book(tmp_path, {"a": "# A\n\n" + body, "b": "# B\n\n" + other})
    with pytest.raises(T.TangleError, match=r"^book/b\.md:10: 'f' is already defined at book/a\.md:10"):
        T.tangle(root)


def test_chapter_in_toc_missing_from_disk(tmp_path):
    root = make_book(tmp_path, GOOD, toc=["a", "b", "c"])
    with pytest.raises(T.TangleError, match=r"^_toc\.yml:\d+: lists 'book/c', but no book/c\.md exists"):
        T.tangle(root)
    assert snapshot(root) == {"__init__.py": ""}


def test_refuses_to_overwrite_a_hand_written_module(tmp_path):
    root = make_book(tmp_path, GOOD)
    (root / "neuroforge_lit" / "alpha.py").write_text("# my own code\n")
    with pytest.raises(T.TangleError, match="hand-written"):
        T.tangle(root)
    assert (root / "neuroforge_lit" / "alpha.py").read_text() == "# my own code\n"


def test_import_time_failure_stops_the_tangle_before_anything_is_written(tmp_path):
    # Defined at module level but failing only when run: found by importing a staged copy of the
    # package in a fresh interpreter, before the real package is touched.
    body = cell("#| export neuroforge_lit.alpha\nimport math\nLIMIT = math.sqrt(-1)")
    root = make_book(tmp_path, {"a": "# A\n\n" + body})
    with pytest.raises(T.TangleError, match=r"^book/a\.md:11: after this tangle, neuroforge_lit\.alpha would "
                                            r"fail to import: ValueError: math domain error; nothing was written"):
        T.tangle(root)
    assert sorted(snapshot(root)) == ["__init__.py"]


def test_a_module_that_a_hand_written_one_imports_cannot_disappear(tmp_path):
    root = make_book(tmp_path, GOOD)
    T.tangle(root)
    (root / "neuroforge_lit" / "helpers.py").write_text("from neuroforge_lit.beta import quadruple\n")
    (root / "book" / "b.md").write_text(HEADER + "# Chapter B\n\nNo code any more.\n")
    before = snapshot(root)
    with pytest.raises(T.TangleError, match=r"^neuroforge_lit/helpers\.py:1: imports neuroforge_lit\.beta, which "
                                            r"no chapter exports any more \(it came from book/b\.md\)"):
        T.tangle(root)
    assert snapshot(root) == before


def test_a_new_module_must_be_declared_when_the_package_lists_its_modules(tmp_path):
    root = make_book(tmp_path, GOOD)
    init = root / "neuroforge_lit" / "__init__.py"
    init.write_text('GENERATED_MODULES = ("alpha", "beta")\n')
    T.tangle(root)
    typo = GOOD["b"].replace("export neuroforge_lit.beta", "export neuroforge_lit.betta")
    (root / "book" / "b.md").write_text(HEADER + typo)
    before = snapshot(root)
    with pytest.raises(T.TangleError, match=r"^book/b\.md:\d+: exports to neuroforge_lit\.betta, which is not a "
                                            r"module of the package \(a typo of 'beta'\?\); to start a new module"):
        T.tangle(root)
    assert snapshot(root) == before
    init.write_text('GENERATED_MODULES = ("alpha", "beta", "betta")\n')
    with pytest.raises(T.TangleError, match=r"GENERATED_MODULES lists 'beta', but no chapter exports"):
        T.tangle(root)
    init.write_text('GENERATED_MODULES = ("alpha", "betta")\n')
    assert "neuroforge_lit/betta.py" in T.tangle(root)


def test_an_equation_cited_in_a_docstring_must_exist(tmp_path):
    body = "# A\n\n" + cell('''
        #| export neuroforge_lit.alpha
        def double(x):
            """Twice x, (eq-a-missing)."""
            return 2 * x
        ''')
    root = make_book(tmp_path, {"a": body})
    with pytest.raises(T.TangleError, match=r"^book/a\.md:\d+: cites equation 'eq-a-missing'"):
        T.tangle(root)


def test_the_real_book_and_package_agree():
    assert T.check(ROOT) == "", "run `make tangle` and commit the generated modules"


def test_chapter_dependencies_follow_imports_transitively(tmp_path):
    root = make_book(tmp_path, {**GOOD, "c": "# C\n\n" + cell("from neuroforge_lit.beta import quadruple")})
    T.tangle(root)
    deps = [p.name for p in T.chapter_dependencies(root, "book/c.md")]
    assert deps == ["alpha.py", "beta.py"]
    assert T.chapter_dependencies(root, "book/a.md") == []


def test_provenance_survives_a_prose_edit(tmp_path):
    """Adding a sentence above an exported cell moves its lines but not its section: the package
    stays in sync with the book, and --check passes without a re-tangle."""
    root = make_book(tmp_path, GOOD)
    T.tangle(root)
    chapter = root / "book" / "a.md"
    chapter.write_text(chapter.read_text().replace("(eq-a-double)\n\n", "(eq-a-double)\n\nA new sentence.\n"
                                                   "And one more.\n\n", 1))
    assert T.check(root) == ""
    chapter.write_text(chapter.read_text().replace("# Chapter A\n", "# Chapter A, renamed\n"))
    assert 'section "Chapter A, renamed"' in T.check(root)


def test_the_module_docstring_is_the_opening_of_its_main_chapter(tmp_path):
    """The docstring starts with the first paragraph of the chapter that gives the module most of
    its code (LaTeX and all: a raw string); editing that paragraph is a change of the package."""
    opening = "Doubling, by hand: $y = 2\\,x$ is the\nwhole story."
    root = make_book(tmp_path, {**GOOD, "a": GOOD["a"].replace("# Chapter A\n\n", f"# Chapter A\n\n{opening}\n\n")})
    T.tangle(root)
    module = (root / "neuroforge_lit" / "alpha.py").read_text()
    assert 'r"""neuroforge_lit.alpha: generated from the book by `make tangle`.\n\n' + opening + "\n" in module
    assert ast.get_docstring(ast.parse(module)).splitlines()[2:4] == opening.splitlines()
    chapter = root / "book" / "a.md"
    chapter.write_text(chapter.read_text().replace("whole story.", "whole story, told twice."))
    assert "whole story, told twice." in T.check(root)


def test_a_module_whose_chapter_exports_others_too_names_its_sections(tmp_path):
    """Two modules from one chapter would repeat its opening; each names its own sections instead."""
    second = "\n## Halving\n\n" + cell("#| export neuroforge_lit.gamma\n\ndef half(x):\n    return x / 2")
    root = make_book(tmp_path, {**GOOD, "a": GOOD["a"] + second})
    T.tangle(root)
    gamma = ast.get_docstring(ast.parse((root / "neuroforge_lit" / "gamma.py").read_text()))
    assert 'Its code comes from the section "Halving".' in gamma and "y = 2x" not in gamma


def test_an_equation_of_an_earlier_chapter_may_be_cited(tmp_path):
    body = cell("#| export neuroforge_lit.gamma\nfrom neuroforge_lit.alpha import double\n\n"
                "def sextuple(x):\n    return 3 * double(x)   # (eq-a-double)")
    root = make_book(tmp_path, {**GOOD, "c": "# C\n\n" + body})
    T.tangle(root)
    assert "(eq-a-double)" in (root / "neuroforge_lit" / "gamma.py").read_text()


def test_a_main_guard_in_a_skipped_cell_makes_the_module_a_command(tmp_path):
    command = cell("""
        #| export neuroforge_lit.alpha
        import sys

        def main():
            print("ran as a command")
        """) + "\n" + cell("""
        #| export neuroforge_lit.alpha
        if __name__ == "__main__":
            sys.exit(main())
        """, options=":tags: [skip-execution]\n")
    root = make_book(tmp_path, {"a": "# A\n\n" + command})
    T.tangle(root)
    text = (root / "neuroforge_lit" / "alpha.py").read_text()
    assert text.rstrip().endswith('if __name__ == "__main__":\n    sys.exit(main())')
    imported = subprocess.run([sys.executable, "-c", "import neuroforge_lit.alpha"], cwd=root,
                              capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0 and imported.stdout == ""          # importing runs nothing
    run = subprocess.run([sys.executable, "-m", "neuroforge_lit.alpha"], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert run.stdout == "ran as a command\n"


def test_a_main_guard_may_stand_above_definitions_it_does_not_need(tmp_path):
    body = cell("""
        #| export neuroforge_lit.alpha
        import sys

        def main():
            print(helper())

        def helper():
            return "helped"
        """) + "\n" + cell("""
        #| export neuroforge_lit.alpha
        if __name__ == "__main__":
            sys.exit(main())
        """, options=":tags: [skip-execution]\n") + "\n" + cell("""
        #| export neuroforge_lit.alpha
        def later():
            return main()
        """)
    root = make_book(tmp_path, {"a": "# A\n\n" + body})
    T.tangle(root)
    run = subprocess.run([sys.executable, "-m", "neuroforge_lit.alpha"], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert run.stdout == "helped\n", run.stderr


def test_the_import_block_is_merged_grouped_and_sorted_as_ruff_writes_it():
    from booktools.tangle import _import_block

    block = _import_block(["import torch", "from neuroforge_lit.norm import statistics_dtype", "import math",
                           "from neuroforge_lit.norm import BatchNorm1d", "import torch.nn.functional as F",
                           "from neuroforge_lit.layers import Layer"], "example")
    assert block == ("import math\n\nimport torch\nimport torch.nn.functional as F\n\n"
                     "from neuroforge_lit.layers import Layer\n"
                     "from neuroforge_lit.norm import BatchNorm1d, statistics_dtype\n")


def test_without_ruff_the_tangle_says_so(monkeypatch):
    from booktools import tangle

    monkeypatch.setattr(tangle.sys, "executable", "/nonexistent/python")
    with pytest.raises(tangle.TangleError, match=r"neuroforge_lit/example.py: could not run ruff"):
        tangle._import_block(["import math"], "example")


@pytest.mark.parametrize("typed, line", [
    ("One step took 12.5 ms on this machine.", 4),
    ("It trains in\nabout 84 s here.", 5),
    ("The network reaches 0.9924 on the test set.", 4),
    ("Errors fell to 1.5% of the test set.", 4),
    ("Across two seeds one step took 12 ms.", 4),                 # random seeds are ours: no source
])
def test_a_measured_looking_figure_typed_into_the_prose_is_refused(typed, line, tmp_path):
    root = make_book(tmp_path, {"a": "# A\n\n" + typed + "\n"})      # HEADER is 5 lines, "# A" is line 6
    with pytest.raises(T.TangleError, match=rf"^book/a\.md:{line + 4}: '.+' looks like a measured figure typed"):
        T.tangle(root)


@pytest.mark.parametrize("prose", [
    "One step took {glue:text}`step_ms:.1f` ms.",                        # glued: measured by the build
    "The seed notebook reached 0.9794 after 30 epochs.",                 # a figure the paragraph sources
    "| model | the paper's time |\n|---|---|\n| teacher | 3 hours |",   # a table that names its source
    "Use a 5% warm-up and a threshold of 0.2%; `time.sleep(1.5 s)` and $t = 3 s$ are not prose.",
    "Some 3s and 8s are hard to read.",                                  # digits, not seconds
])
def test_figures_with_a_source_or_no_measurement_pass(prose, tmp_path):
    root = make_book(tmp_path, {"a": "# A\n\n" + prose + "\n"})
    T.tangle(root)
