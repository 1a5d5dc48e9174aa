"""`make book`'s first step (tools/booktools/execute.py): chapters run two at a time into the cache that
the Sphinx build reads, each on the book's thread count; a failure names its line and stops the rest."""

import os
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from jupyter_cache import get_cache

from booktools import execute as E
from booktools.tangle import TangleError

KERNEL = "---\nkernelspec:\n  name: python3\n  display_name: Python 3\n  language: python\n"


def chapter(body: str, front: str = "") -> str:
    return KERNEL + front + "---\n\n# A chapter\n\n" + textwrap.dedent(body)


def code(source: str) -> str:
    return f"```{{code-cell}} ipython3\n{textwrap.dedent(source).strip()}\n```\n\n"


def make_book(root: Path, chapters: dict[str, str]) -> Path:
    (root / "book").mkdir()
    (root / "neuroforge_lit").mkdir()
    # A module the chapters import: the fingerprint cell hashes this file (the kernel imports the
    # installed package's own quick.py, so the chapters still run).
    (root / "neuroforge_lit" / "quick.py").write_text("def budget(full, quick):\n    return full\n")
    for name, text in chapters.items():
        (root / "book" / f"{name}.md").write_text(text)
    names = list(chapters)
    entries = "".join(f"  - file: book/{n}\n" for n in names[1:])
    (root / "_toc.yml").write_text(f"format: jb-book\nroot: book/{names[0]}\nchapters:\n{entries}")
    (root / "_config.yml").write_text("execute:\n  timeout: 120\n")
    return root


THREADS = code("""
    import torch
    from neuroforge_lit.quick import budget
    print("threads", torch.get_num_threads())
""")


def threads_printed(notebook) -> int:
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return int(text.split("threads")[1].split()[0])


def test_chapters_run_into_the_cache_the_build_reads_on_the_books_threads(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    # (b's code differs from a's: the cache keys a notebook on its code, so twins would share an entry)
    alone = "neuroforge:\n  execute: alone\n"
    root = make_book(tmp_path, {"a": chapter(THREADS), "b": chapter(THREADS + code("print('alone')"), front=alone)})
    build = tmp_path / "_build"
    assert E.execute_book(root, build, jobs=2) == 0
    cache = get_cache(str(build / ".jupyter_cache"))
    found = {}
    for name in ("a", "b"):
        notebook = E.chapter_notebook(root, f"book/{name}.md")
        assert "neuroforge_lit/quick.py" in notebook.cells[-1].source      # the fingerprint cell is in the key
        _, found[name] = cache.merge_match_into_notebook(notebook)           # KeyError if not cached
    assert threads_printed(found["a"]) == 1
    assert threads_printed(found["b"]) == torch.get_num_threads()           # alone: the machine's default

    # A second run finds both in the cache and runs nothing.
    capsys.readouterr()
    assert E.execute_book(root, build, jobs=2) == 0
    assert "execute: 2 of 2 chapters cached; 0 to run" in capsys.readouterr().out
    # An edit to an imported module changes the key: the chapter is no longer cached.
    (root / "neuroforge_lit" / "quick.py").write_text("def budget(full, quick):\n    return quick\n")
    with pytest.raises(KeyError):
        cache.match_cache_notebook(E.chapter_notebook(root, "book/a.md"))


def test_the_books_extension_appends_the_same_cell(tmp_path):
    """Sphinx's source-read hook and chapter_notebook must build the same notebook, or every
    chapter executed beforehand would be executed a second time by the build."""
    import sys

    from myst_nb.core.read import read_myst_markdown_notebook

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
    import neuroforge_book

    root = make_book(tmp_path, {"a": chapter(THREADS)})
    noted = []
    app = SimpleNamespace(srcdir=str(root), env=SimpleNamespace(doc2path=lambda doc: root / f"{doc}.md",
                                                                 note_dependency=noted.append))
    source = [(root / "book" / "a.md").read_text()]
    neuroforge_book._add_dependency_cell(app, "book/a", source)
    cache = get_cache(str(tmp_path / "cache"))
    as_sphinx_reads = cache.create_hashed_notebook(read_myst_markdown_notebook(source[0]))[1]
    as_executed = cache.create_hashed_notebook(E.chapter_notebook(root, "book/a.md"))[1]
    assert as_sphinx_reads == as_executed
    assert noted == [str(root / "neuroforge_lit" / "quick.py")]


def test_a_failing_chapter_names_its_line_and_stops_the_one_beside_it(tmp_path, capsys):
    pid_file = tmp_path / "sleeper.pid"
    failing = chapter(code(f"""
        import time
        from pathlib import Path
        pid = Path({str(pid_file)!r})
        for _ in range(600):          # wait until the chapter beside this one is running
            if pid.exists():
                break
            time.sleep(0.1)
    """) + code("""
        x = 1
        raise ValueError("the derivation disagrees")
    """))
    sleeper = chapter(code(f"""
        import os, time
        from pathlib import Path
        Path({str(pid_file)!r}).write_text(str(os.getpid()))
        time.sleep(300)
    """))
    root = make_book(tmp_path, {"a": failing, "b": sleeper})
    start = time.monotonic()
    assert E.execute_book(root, tmp_path / "_build", jobs=2) == 1
    assert time.monotonic() - start < 120
    err = capsys.readouterr().err
    line = failing.splitlines().index('raise ValueError("the derivation disagrees")') + 1
    assert f"book/a.md:{line}: cell failed with ValueError: the derivation disagrees" in err
    assert "stopping book/b.md" in err
    kernel = int(pid_file.read_text())
    for _ in range(50):                      # the sleeping kernel is gone, not left running
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the kernel of the stopped chapter (pid {kernel}) is still running")
    cache = get_cache(str(tmp_path / "_build" / ".jupyter_cache"))
    for name in ("a", "b"):                  # nothing half-run reaches the cache
        with pytest.raises(KeyError):
            cache.match_cache_notebook(E.chapter_notebook(root, f"book/{name}.md"))


def test_a_chapter_says_how_it_runs_in_its_front_matter(tmp_path):
    root = make_book(tmp_path, {"a": chapter(THREADS), "b": chapter(THREADS, front="neuroforge:\n  execute: alone\n"),
                                "c": chapter(THREADS, front="neuroforge:\n  execute: lonely\n")})
    assert not E.runs_alone(root, "book/a.md")
    assert E.runs_alone(root, "book/b.md")
    assert E.book_threads(root, "book/a.md") == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert E.book_threads(root, "book/b.md") == {}
    with pytest.raises(TangleError, match=r"book/c\.md:7: .*must be 'alone' or 'beside', not 'lonely'"):
        E.runs_alone(root, "book/c.md")


def test_the_longest_chapters_start_first_and_bad_estimates_name_their_line(tmp_path):
    fronts = {"a": "", "b": "neuroforge:\n  seconds: 30\n", "c": "neuroforge:\n  seconds: 600\n",
              "d": "neuroforge:\n  seconds: 45.5\n", "e": ""}
    root = make_book(tmp_path, {name: chapter(THREADS, front=front) for name, front in fronts.items()})
    chapters = [f"book/{name}.md" for name in fronts]
    assert E.longest_first(root, chapters) == ["book/c.md", "book/d.md", "book/b.md", "book/a.md", "book/e.md"]
    bad = {"f": "neuroforge:\n  seconds: -3\n", "g": "neuroforge:\n  seconds: soon\n", "h": "neuroforge: alone\n"}
    (tmp_path / "bad").mkdir()
    root = make_book(tmp_path / "bad", {name: chapter(THREADS, front=front) for name, front in bad.items()})
    with pytest.raises(TangleError, match=r"book/f\.md:7: .*seconds:' must be a positive number, not -3"):
        E.longest_first(root, ["book/f.md"])
    with pytest.raises(TangleError, match=r"book/g\.md:7: .*seconds:' must be a positive number, not 'soon'"):
        E.longest_first(root, ["book/g.md"])
    with pytest.raises(TangleError, match=r"book/h\.md:6: front matter 'neuroforge:' must be a mapping"):
        E.runs_alone(root, "book/h.md")


def test_stopping_the_book_stops_its_chapters_and_their_kernels(tmp_path):
    """SIGTERM to `booktools execute` (CI's timeout, or a user's kill) leaves no kernel running."""
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "sleeper.pids"          # the kernel's pid and its chapter runner's
    root = make_book(tmp_path, {"a": chapter(code(f"""
        import os, time
        from pathlib import Path
        Path({str(pid_file)!r}).write_text(f"{{os.getpid()}} {{os.getppid()}}")
        time.sleep(300)
    """))})
    tools = Path(__file__).resolve().parents[1] / "tools"
    book = subprocess.Popen([sys.executable, "-m", "booktools", "execute", "--root", str(root)],
                            env={**os.environ, "PYTHONPATH": str(tools)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    pids = []
    try:
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        pids = [int(pid) for pid in pid_file.read_text().split()]
        book.send_signal(signal.SIGTERM)
        output, _ = book.communicate(timeout=60)
        assert book.returncode == 128 + signal.SIGTERM, output
        assert "stopping book/a.md" in output
        for _ in range(50):
            if not any(_alive(pid) for pid in pids):
                break
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids), f"processes outlived `booktools execute`: {pids}"
    finally:
        book.kill()
        for pid in pids:                          # clean up after a failure, too
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
