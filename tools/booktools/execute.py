"""Execute the book's chapters before Sphinx reads them: two at a time, into myst-nb's cache.

Jupyter Book executes one chapter after another, and each kernel's matrix products use every core.
On this book's two-core machine that wastes much of the second core: a step of the 784-1200-1200-10
teacher runs 1.4x faster on two threads than on one, a convolution or transformer step hardly faster
at all. Two chapters with one thread each keep both cores busy. So ``make book`` runs

    python -m booktools execute --build-dir _build

first. It executes every chapter whose outputs are not already cached, stores them in the cache that
myst-nb reads (``_build/.jupyter_cache``), and the Sphinx build that follows executes nothing. A
chapter it could not execute stops the book with ``chapter.md:LINE`` and the error, and the chapters
still running are stopped with their kernels.

**Which chapters run side by side.** Every chapter runs on one thread, alone or not, so its figures
do not depend on how many run at once (``make chapter`` uses the same single thread). A chapter
that *measures time* says so in its front matter,

    neuroforge:
      execute: alone

and runs after the others, one at a time, on every core: its timings are then those of a reader
running it on an idle machine.

**Which chapter starts first.** The longest: ``seconds:`` in the same ``neuroforge:`` block says
about how long a chapter executes in the book build, and the chapters start in that order, longest
first, each in the first free slot. In reading order the longest chapter (distillation) started
sixth and ran on alone for over a minute at the end; longest first, the two slots ended 18 s apart
in a clean build. The step prints each chapter's time beside its estimate, so a stale one shows.

**The cache key.** myst-nb finds a chapter in the cache by a hash of its code cells. The notebook
executed here is the one Sphinx reads: the chapter as myst-nb parses it, plus the hidden cell the
book's extension appends, holding a fingerprint of every package module the chapter imports (see
``book/_ext/neuroforge_book.py``). Both build it with ``chapter_notebook``, so the keys agree; after
storing a chapter this module looks it up again and fails if they do not.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from booktools.tangle import TangleError, chapter_dependencies, front_matter, is_notebook, toc_chapters
from neuroforge_lit.files import atomic_write
from neuroforge_lit.quick import is_quick_run

ALONE = "alone"
CHAPTER_TIMEOUT = 3 * 3600      # seconds for one whole chapter; each cell has its own limit (_config.yml)
GRACE = 10                      # seconds a stopped chapter gets to end its kernel before it is killed


# --------------------------------------------------------------------------- the notebook Sphinx reads

def code_fingerprint(path: Path) -> str:
    """A hash of a module's code: its syntax tree without docstrings (comments and line numbers
    are not in the tree), so only changes that can change what a chapter computes count."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


FINGERPRINT_HEADER = "# The package modules this chapter runs on (re-executes when they change):"


def fingerprint_cell(root: Path, chapter: str) -> tuple[str, list[Path]]:
    """The hidden code cell appended to a chapter (MyST text, "" for none) and the package files it
    fingerprints. The quick flag is part of it, so quick and full outputs never share a cache entry."""
    deps = chapter_dependencies(root, chapter)
    if not deps:
        return "", []
    lines = [f"# quick run: {'yes' if is_quick_run() else 'no'}"]
    lines += [f"# {dep.relative_to(root)} {code_fingerprint(dep)}" for dep in deps]
    cell = ("\n\n```{code-cell} ipython3\n:tags: [remove-cell]\n" + FINGERPRINT_HEADER + "\n"
            + "\n".join(lines) + "\n```\n")
    return cell, deps


def chapter_settings(root: Path, chapter: str) -> dict:
    """The chapter's ``neuroforge:`` front matter, checked: ``execute`` ('beside', the default, or
    'alone') and ``seconds`` (about how long it executes in the book build, or None)."""
    settings = front_matter(root, chapter).get("neuroforge")
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise TangleError(f"{chapter}:{_line(root, chapter, 'neuroforge')}: front matter 'neuroforge:' must be a "
                          f"mapping (execute:, seconds:), not {settings!r}")
    how, seconds = settings.get("execute", "beside"), settings.get("seconds")
    if how not in (ALONE, "beside"):
        raise TangleError(f"{chapter}:{_line(root, chapter, 'execute:')}: front matter 'neuroforge: execute:' "
                          f"must be 'alone' or 'beside', not {how!r}")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0):
        raise TangleError(f"{chapter}:{_line(root, chapter, 'seconds:')}: front matter 'neuroforge: seconds:' "
                          f"must be a positive number, not {seconds!r}")
    return {"execute": how, "seconds": seconds}


def _line(root: Path, chapter: str, key: str) -> int:
    """The line of the front matter that starts with ``key`` (that of 'neuroforge' if none does)."""
    lines = (root / chapter).read_text(encoding="utf-8").splitlines()
    return next((i for i, text in enumerate(lines, 1) if text.strip().startswith(key)),
                next((i for i, text in enumerate(lines, 1) if text.startswith("neuroforge")), 1))


def runs_alone(root: Path, chapter: str) -> bool:
    """True when the chapter's front matter says ``neuroforge: {execute: alone}``."""
    return chapter_settings(root, chapter)["execute"] == ALONE


def longest_first(root: Path, chapters: list[str]) -> list[str]:
    """The chapters by their front matter's ``seconds``, longest first (those without it last, in
    reading order). Two at a time, a long chapter started last would run on alone at the end."""
    return sorted(chapters, key=lambda c: -(chapter_settings(root, c)["seconds"] or 0))


def chapter_notebook(root: Path, chapter: str):
    """The chapter as the book's Sphinx build reads it: myst-nb's parse of its text plus the
    fingerprint cell."""
    from myst_nb.core.read import read_myst_markdown_notebook

    text = (root / chapter).read_text(encoding="utf-8") + fingerprint_cell(root, chapter)[0]
    return read_myst_markdown_notebook(text, add_source_map=True, path=root / chapter)


def cell_timeout(root: Path) -> int:
    """Seconds one cell may run: ``execute: timeout`` of ``_config.yml``, as the Sphinx build uses."""
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}
    return int((config.get("execute") or {}).get("timeout", 1200))


# --------------------------------------------------------------------------- one chapter, one process

def thread_environment(threads: int) -> dict[str, str]:
    """Environment variables that give a kernel ``threads`` threads (torch sizes its pool from them)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def book_threads(root: Path, chapter: str) -> dict[str, str]:
    """The environment a chapter's kernel gets: one thread, unless the chapter runs alone."""
    return {} if runs_alone(root, chapter) else thread_environment(1)


def execute_chapter(root: Path, chapter: str, out: Path) -> str | None:
    """Execute one chapter in a fresh kernel (in this process's environment) and write the executed
    notebook to ``out``, also when it fails. Returns None, or ``chapter.md:LINE: ...`` on failure."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from booktools.tangle import chapter_cells

    nb = chapter_notebook(root, chapter)
    _, _, code_cells = chapter_cells(root, chapter)
    client = NotebookClient(nb, timeout=cell_timeout(root), record_timing=False,   # timings would change the key
                            resources={"metadata": {"path": str((root / chapter).parent)}})
    _stop_kernel_on_sigterm(client)
    try:
        client.execute()
        return None
    except CellExecutionError as e:
        return failure_report(chapter, nb, code_cells, e)
    finally:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: f.write(nbformat.writes(nb).encode()))


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


def _stop_kernel_on_sigterm(client) -> None:
    """The kernel runs in its own process group; stopped from outside, take it down too (and any
    process it started, such as chapter 9's workers), then exit."""
    def stop(signum, frame):
        pgid = getattr(getattr(getattr(client, "km", None), "provisioner", None), "pgid", None)
        if pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


# --------------------------------------------------------------------------- the whole book

@dataclass
class Job:
    chapter: str
    process: subprocess.Popen
    notebook: Path
    log: Path
    started: float


def execute_book(root: Path, build_dir: Path, jobs: int = 2) -> int:
    """Execute every chapter not yet in the cache: ``jobs`` at a time, then those that run alone.
    Returns 0, or 1 after reporting the first failure (and stopping the chapters still running)."""
    from jupyter_cache import get_cache

    cache = get_cache(str(build_dir / ".jupyter_cache"))
    chapters = [c for c in toc_chapters(root) if is_notebook(root, c)]
    todo = [c for c in chapters if not _cached(cache, root, c)]
    beside = longest_first(root, [c for c in todo if not runs_alone(root, c)])
    alone = [c for c in todo if runs_alone(root, c)]
    print(f"execute: {len(chapters) - len(todo)} of {len(chapters)} chapters cached; {len(beside)} to run "
          f"{jobs} at a time on one thread each, then {len(alone)} alone", flush=True)
    start = time.monotonic()
    # Stopped from outside (SIGTERM, as CI or `timeout` do), unwind so that _run stops the chapters
    # still running, kernels included; Ctrl-C (KeyboardInterrupt) unwinds the same way.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    failed = _run(root, build_dir, cache, beside, jobs) or _run(root, build_dir, cache, alone, 1)
    if failed:
        return 1
    print(f"execute: done in {time.monotonic() - start:.0f} s", flush=True)
    return 0


def _cached(cache, root: Path, chapter: str) -> bool:
    try:
        cache.match_cache_notebook(chapter_notebook(root, chapter))
        return True
    except KeyError:
        return False


def _run(root: Path, build_dir: Path, cache, chapters: list[str], jobs: int) -> bool:
    """Run the chapters, in order, ``jobs`` at a time; True if one failed."""
    queue, running = list(chapters), []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                running.append(_start(root, build_dir, queue.pop(0)))
            time.sleep(0.5)
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                if not _finish(root, cache, job):
                    return True
            for job in running:
                if time.monotonic() - job.started > CHAPTER_TIMEOUT:
                    print(f"error: {job.chapter}: still running after {CHAPTER_TIMEOUT} s; stopped", file=sys.stderr)
                    return True
        return False
    finally:
        for job in running:
            _stop(job)


def _start(root: Path, build_dir: Path, chapter: str) -> Job:
    stem = Path(chapter).stem
    out = build_dir / "chapters"
    out.mkdir(parents=True, exist_ok=True)
    notebook, log = out / f"{stem}.ipynb", out / f"{stem}.log"
    env = dict(os.environ)       # the chapter runner sets the thread count (book_threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "booktools", "chapter", stem, "--root", str(root), "--out", str(notebook)]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    print(f"execute: {chapter} started", flush=True)
    return Job(chapter, process, notebook, log, time.monotonic())


def _finish(root: Path, cache, job: Job) -> bool:
    """Store a chapter that ran to the end; report one that did not. True if it succeeded."""
    seconds = time.monotonic() - job.started
    output = job.log.read_text(errors="replace").strip()
    if job.process.returncode != 0:
        print(f"{output}\nerror: {job.chapter} failed after {seconds:.0f} s (exit {job.process.returncode}); "
              f"executed notebook: {job.notebook}, log: {job.log}", file=sys.stderr, flush=True)
        return False
    import nbformat
    from jupyter_cache.base import CacheBundleIn

    executed = nbformat.read(job.notebook, as_version=4)
    cache.cache_notebook_bundle(CacheBundleIn(executed, str(root / job.chapter), data={"execution_seconds": seconds}),
                                check_validity=False, overwrite=True)
    if not _cached(cache, root, job.chapter):
        print(f"error: {job.chapter}: stored, but the cache does not find it under the notebook Sphinx "
              "reads (booktools.execute.chapter_notebook no longer matches the book's extension)",
              file=sys.stderr, flush=True)
        return False
    expected = chapter_settings(root, job.chapter)["seconds"]
    print(f"execute: {job.chapter} done in {seconds:.0f} s"
          + (f" (its front matter expects {expected:.0f} s)" if expected and not is_quick_run() else ""), flush=True)
    return True


def _stop(job: Job) -> None:
    """SIGTERM (the chapter runner then kills its kernel's process group), SIGKILL after GRACE s."""
    if job.process.poll() is not None:
        return
    print(f"execute: stopping {job.chapter}", file=sys.stderr, flush=True)
    try:
        os.killpg(job.process.pid, signal.SIGTERM)
        job.process.wait(timeout=GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(job.process.pid, signal.SIGKILL)
        job.process.wait(timeout=GRACE)
    except ProcessLookupError:
        pass
