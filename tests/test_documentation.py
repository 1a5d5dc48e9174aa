"""Documentation that runs: every command and every code block of README.md and CONTRIBUTING.md.

The fenced blocks (```bash, ```python, ```yaml) and the commands quoted inline in the prose
(`python -m ...`, `make ...`) are read from the two files. Each shell command is in COMMANDS below:
either a Run (this file runs it, in a subprocess with a timeout, and checks what it prints) or a
sentence naming where it is covered and why it cannot run here. A command that appears in the docs
and is in neither fails test_every_documented_command_is_run_or_covered, so none is silently
skipped. Every Python block runs; every YAML block is checked as the chapter front matter it shows.

Training runs on a smoke budget: NEUROFORGE_DATA_LIMIT cuts each split to its first examples
(neuroforge_lit/data.py). Nothing here writes to the checkout: Python runs in a temporary folder,
and `make` and jupytext in a temporary copy of the checkout (with the checkout's .venv linked in;
`make` is told the venv is up to date, `-o .venv/.installed`, so it never reinstalls it).
"""

import ast
import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_in_own_group

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "CONTRIBUTING.md")
BIN = Path(sys.executable).parent
DATA = ROOT.parent / "shared" / "data"
SMOKE_LIMIT = "1000"     # examples per split: the README's 20-epoch MLP trains in seconds
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "_build", "build", "dist", "__pycache__", "*.egg-info",
                                    ".pytest_cache", ".ruff_cache", ".hypothesis", ".ipynb_checkpoints", "*.ipynb")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
PROGRAM = r"(?:[A-Z][A-Z0-9_]*=\S+\s+)*(?:make|python3?|pip|torchrun|\.venv/bin/[\w-]+)\s+\S"  # program + an argument


@dataclass(frozen=True)
class Run:
    """Run the command; its output (stdout and stderr) must match ``expect``. ``where``: "tmp" (cwd a
    temporary folder, the checkout's package) or "copy" (cwd a temporary copy of the checkout).
    ``instead``: a cheaper form of the same command that is run in its place, with ``why``."""

    expect: str
    where: str = "tmp"
    instead: str | None = None
    why: str = ""
    creates: str | None = None     # a notebook the command must write (relative to its cwd)
    timeout: float = 120


CI = "CI runs it: .ci/run runs `make test` and then `make book` on a clean clone"
MAKE_CHAPTER_QUICK = Run(
    r"book/exercises\.md: executed in [\d.]+ s on 2 threads \(quick run", where="copy",
    instead="make chapter CH=exercises QUICK=1 THREADS=2",
    why="chapter 03 takes a minute even in a quick run; the same target and chapter runner execute the "
        "5-second exercises chapter, with THREADS=2 as well; chapter 03 itself runs in CI's `make book`")
CHAPTER_COVERED = ("the same `make chapter` target, run here in its cheap form (see `make chapter CH=03 QUICK=1`); "
                   "every chapter executes in full in CI's `make book`")

# Every command of README.md and CONTRIBUTING.md: run here (Run), or where it is covered and why not here.
COMMANDS = {
    # README.md, "The two commands"
    "make book": f"{CI} (it executes every chapter, far too long for the test suite)",
    "make test": f"{CI}; this file is part of the suite it runs, so it cannot run itself",
    # CONTRIBUTING.md, "Commits"
    "make lint": f"`make test` runs it first (a prerequisite), so {CI}; its commit-message step is "
                 "tests/test_check_commits.py::test_this_checkout_keeps_the_rule",
    # CONTRIBUTING.md, the property tests
    "HYPOTHESIS_PROFILE=random make test": "`make test` with the opt-in profile: CI runs `make test` with the "
                                           "default one; tests/test_properties.py::"
                                           "test_make_test_draws_the_same_examples_and_keeps_no_database "
                                           "checks the profiles",
    # README.md, "Just the package"
    "pip install .": "tests/test_packaging.py::test_the_readme_example_runs_against_the_installed_package "
                     "builds the sdist and the wheel from a copy of this checkout and installs each, offline "
                     "(--no-deps --no-build-isolation; pip would need a network for the dependencies)",
    'pip install "git+<repository URL>"': "needs a network and the repository's URL (a placeholder); pip builds "
                                          "the same sdist that tests/test_packaging.py builds and installs",
    "pip install git+URL": "the same command as `pip install \"git+<repository URL>\"` (in the prose)",
    'pip install ".[download]"': "needs a network (torchvision from PyPI); the extra it installs is checked by "
                                 "tests/test_packaging.py::test_the_wheel_declares_the_download_extra",
    "python -m neuroforge_lit --version": "tests/test_package.py::test_version_command_names_the_version_and_the_"
                                          "checkout_commit runs it",
    "python -m neuroforge_lit": "tests/test_package.py::test_version_command_names_the_version_and_the_"
                                "checkout_commit runs it too",
    "python -m neuroforge_lit.exercises list": "tests/test_exercises.py runs it (`-m neuroforge_lit.exercises list`)",
    "NEUROFORGE_DATASET=fashion-mnist make chapter CH=02": (
        "executes chapter 2 in full on Fashion-MNIST (minutes); its parts are run here and elsewhere: the switch, "
        "tests/test_data.py::test_default_dataset_follows_the_environment; Fashion-MNIST's files, "
        "tests/test_data.py::test_fashion_mnist_from_debians_package; and `make chapter` in its cheap form"),
    "make bench": "a timing run of minutes that must run alone on the machine; tests/test_benchmarks.py checks "
                  "its timing rule on a fake clock",
    "make browser-test": f"{CI}: .ci/run runs it after `make book` (it needs the built HTML and Chromium)",
    # README.md, "Across processes"
    "python -m neuroforge_lit.parallel --world-size 3": Run(r"passed: (\d+) of \1 checks within 1e-12, 3 processes"),
    "torchrun --standalone --nproc-per-node 3 -m neuroforge_lit.parallel check": Run(
        r"passed: (\d+) of \1 checks within 1e-12, 3 processes"),
    "python -m neuroforge_lit.parallel train --world-size 2 --epochs 5": Run(
        r"2 processes \(\w+\): train loss \d+\.\d+, test accuracy \d\.\d+"),
    # README.md, "Editing a chapter"
    "make tangle": Run(r"wrote neuroforge_lit/|tangle: nothing changed", where="copy"),
    "make check": Run(r"tangle --check: package and book agree", where="copy"),
    "make test && make book": CI,
    "make chapter CH=03": CHAPTER_COVERED,
    # README.md, "Opening a chapter as a notebook"
    ".venv/bin/jupytext --to ipynb book/02_mlp.md": Run(r"Writing book/02_mlp\.ipynb", where="copy",
                                                        creates="book/02_mlp.ipynb"),
    ".venv/bin/pip install jupyterlab && .venv/bin/jupyter lab book/02_mlp.ipynb": (
        "needs a network (jupyterlab from PyPI) and starts an interactive server; the notebook it opens is "
        "written by the jupytext line above, which runs here"),
    # CONTRIBUTING.md
    "make setup": f"{CI}: on the clean clone `make test` starts with `make setup`; here the venv exists, and "
                  "reinstalling it would need a network",
    "$EDITOR book/03_normalization.md": "opens an editor: nothing to run",
    "make chapter CH=03 QUICK=1": MAKE_CHAPTER_QUICK,
    "make chapter": CHAPTER_COVERED,
    "make chapter CH=03 THREADS=2": f"{CHAPTER_COVERED}: the cheap form passes THREADS=2 and checks '2 threads'",
    "make book QUICK=1": "builds the whole book on the quick budgets (many minutes); CI's `make book` runs the same "
                         "build in full, tests/test_quick.py checks the quick mode, and `make chapter CH=03 QUICK=1` "
                         "runs here in its cheap form",
    "python -m neuroforge_lit.<module>": "a pattern, not a command: the modules' commands are the ones above",
}


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def fenced_blocks():
    """(file, line, language, text) of every fenced code block of the docs."""
    for name in DOCS:
        text = (ROOT / name).read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            yield name, _line_of(text, m.start()), m.group(1).strip(), m.group(2)


def documented_commands() -> dict[str, str]:
    """Every shell command of the docs (comments stripped), with where it first appears."""
    found = {}
    for name, line, language, text in fenced_blocks():
        if language in ("bash", "sh", "shell", "console"):
            for i, command in enumerate(text.splitlines()):
                command = re.sub(r"\s+#.*$", "", command).strip()
                if command:
                    found.setdefault(command, f"{name}:{line + 1 + i}")
    for name in DOCS:
        text = (ROOT / name).read_text(encoding="utf-8")
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)     # keep the line numbers
        for m in re.finditer(r"`([^`\n]+)`", prose):
            if re.fullmatch(PROGRAM + r".*", m.group(1)):
                found.setdefault(m.group(1), f"{name}:{_line_of(prose, m.start())}")
    return found


def run(argv, *, cwd, env, timeout):
    """(exit status, stdout and stderr in order) of argv, in its own process group (conftest)."""
    done = run_in_own_group(argv, cwd=cwd, env=env, timeout=timeout, merge_stderr=True)
    return done.returncode, done.stdout


def environment(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "NEUROFORGE_QUICK", "NEUROFORGE_DATASET")}
    # One thread each: the runs are small, and two threads per process on two shared cores spin-wait
    # (the README example: 14 s on one thread, 49 s on two, beside other jobs). `make chapter THREADS=2` sets its own.
    env.update({"NEUROFORGE_DATA_LIMIT": SMOKE_LIMIT, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1"})
    if DATA.is_dir() and not env.get("NEUROFORGE_DATA_DIR"):
        env["NEUROFORGE_DATA_DIR"] = str(DATA)
    env.update(extra)
    return env


def argv_of(command: str) -> tuple[list[str], dict[str, str]]:
    """The command's words with the programs of this venv, and its leading VAR=value settings."""
    assert "&&" not in command and "|" not in command, f"run one command at a time: {command!r}"
    words, settings = shlex.split(command), {}
    while "=" in words[0] and re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        settings[key] = value
    program = words[0]
    if program in ("python", "python3"):
        words[0] = sys.executable
    elif program == "torchrun":
        words[0] = str(BIN / "torchrun")
    elif program.startswith(".venv/bin/"):
        words[0] = str(BIN / program.removeprefix(".venv/bin/"))
    elif program == "make":
        words[1:1] = ["-o", ".venv/.installed"]         # the venv is set up: never reinstall the shared one
    else:
        raise AssertionError(f"no way to run {program!r} here: give {command!r} a reason in COMMANDS instead")
    return words, settings


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory):
    """A copy of the checkout (no .git, no build outputs) with the checkout's .venv linked in."""
    if not (ROOT / ".venv" / "bin" / "python").exists() or shutil.which("make") is None:
        pytest.skip("needs make and the checkout's .venv (make setup)")
    copy = tmp_path_factory.mktemp("docs") / "checkout"
    shutil.copytree(ROOT, copy, ignore=NOT_COPIED)     # copy2: the times too, so make sees pyproject unchanged
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


# --- the table is complete and honest ---------------------------------------------------------------

def test_every_documented_command_is_run_or_covered():
    found = documented_commands()
    new = {command: where for command, where in found.items() if command not in COMMANDS}
    assert not new, ("documented commands that this file neither runs nor explains; add each to COMMANDS "
                     "as Run(...) or with where it is covered:\n" + "\n".join(f"  {w}: {c}" for c, w in new.items()))
    gone = sorted(set(COMMANDS) - set(found))
    assert not gone, f"COMMANDS lists commands the docs no longer have: {gone}"


def test_every_fenced_block_is_of_a_kind_this_file_checks():
    kinds = {(name, line): language for name, line, language, _ in fenced_blocks()}
    unknown = {where: language for where, language in kinds.items() if language not in ("bash", "python", "yaml")}
    assert not unknown, f"fenced blocks this file does not know how to check: {unknown}"
    assert sorted(set(kinds.values())) == ["bash", "python", "yaml"]


def test_the_reasons_name_places_that_exist():
    for command, entry in COMMANDS.items():
        text = entry if isinstance(entry, str) else entry.why
        for path, test in re.findall(r"(tests/test_\w+\.py)(?:::(\w+))?", text):
            assert (ROOT / path).is_file(), f"{command!r}: {path} does not exist"
            if test:
                assert f"def {test}(" in (ROOT / path).read_text(), f"{command!r}: {path} has no {test}"
        for named in re.findall(r"`((?:make|python) [^`]+)`", text):
            assert named in COMMANDS, f"{command!r}: its reason names `{named}`, which is not in COMMANDS"
    assert {"make test", "make book", "make browser-test"} <= set(re.findall(r"^make [\w-]+", (
        ROOT / ".ci" / "run").read_text(), re.M)), "the reasons say CI runs these: .ci/run must"


def test_the_smoke_budget_is_documented():
    readme = (ROOT / "README.md").read_text()
    assert "NEUROFORGE_DATA_LIMIT" in readme and "smoke" in readme


# --- the commands ----------------------------------------------------------------------------------

RUNS = [(command, entry) for command, entry in COMMANDS.items() if isinstance(entry, Run)]


@pytest.mark.parametrize(("command", "entry"), RUNS, ids=[command for command, _ in RUNS])
def test_documented_command_runs(command, entry, request, tmp_path):
    needs_data = "neuroforge_lit.parallel train" in command
    if needs_data and not (DATA / "mnist").is_dir() and not os.environ.get("NEUROFORGE_DATA_DIR"):
        pytest.skip("needs MNIST: set NEUROFORGE_DATA_DIR (CI: ../shared/data)")
    cwd = request.getfixturevalue("checkout_copy") if entry.where == "copy" else tmp_path
    argv, settings = argv_of(entry.instead or command)
    env = environment(**settings)
    if entry.where == "tmp":
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    code, out = run(argv, cwd=cwd, env=env, timeout=entry.timeout)
    shown = entry.instead and f"{command!r} (run as {entry.instead!r})" or repr(command)
    assert code == 0, f"{shown} exited with {code}:\n{out[-4000:]}"
    assert re.search(entry.expect, out), f"{shown} printed no line matching {entry.expect!r}:\n{out[-4000:]}"
    if entry.creates:
        notebook = json.loads((cwd / entry.creates).read_text())
        assert notebook["nbformat"] == 4 and any(c["cell_type"] == "code" for c in notebook["cells"])


# --- the code blocks -------------------------------------------------------------------------------

PYTHON_BLOCKS = [(f"{name}:{line}", text) for name, line, language, text in fenced_blocks() if language == "python"]
YAML_BLOCKS = [(f"{name}:{line}", text) for name, line, language, text in fenced_blocks() if language == "yaml"]


@pytest.mark.parametrize(("where", "code"), PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_block_runs(where, code, tmp_path):
    if "load_mnist" in code and not (DATA / "mnist").is_dir() and not os.environ.get("NEUROFORGE_DATA_DIR"):
        pytest.skip("needs MNIST: set NEUROFORGE_DATA_DIR (CI: ../shared/data)")
    env = environment(PYTHONPATH=str(ROOT))
    status, out = run([sys.executable, "-c", code], cwd=tmp_path, env=env, timeout=120)
    assert status == 0, f"the Python block at {where} failed:\n{out[-4000:]}"
    if "evaluate(" in code:                   # it prints what evaluate returns: the test loss and accuracy
        result = ast.literal_eval(next(line for line in reversed(out.splitlines()) if line.startswith("{")))
        assert set(result) == {"loss", "accuracy"} and 0.5 < result["accuracy"] <= 1, f"{where}: {result}"


@pytest.mark.parametrize(("where", "text"), YAML_BLOCKS, ids=[w for w, _ in YAML_BLOCKS])
def test_yaml_block_is_front_matter_the_book_accepts(where, text, tmp_path):
    """The YAML blocks show a chapter's `neuroforge:` front matter: the book's own check accepts them."""
    yaml = pytest.importorskip("yaml")
    from booktools.execute import chapter_settings

    shown = yaml.safe_load(text)
    assert set(shown) == {"neuroforge"} and set(shown["neuroforge"]) <= {"execute", "seconds"}, f"{where}: {shown}"
    (tmp_path / "chapter.md").write_text(f"---\n{text}---\n\n# A chapter\n")
    settings = chapter_settings(tmp_path, "chapter.md")
    assert {k: settings[k] for k in shown["neuroforge"]} == shown["neuroforge"], f"{where}: {settings}"
