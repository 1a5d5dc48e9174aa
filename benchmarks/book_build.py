"""Book-build figures: a clean `make book`, each chapter's execution time and kernel peak memory,
a rebuild with nothing changed, and a rebuild after editing one exported cell (which chapters
re-execute). Prints a table and writes benchmarks/results/book_build.json.

    python benchmarks/book_build.py            # about as long as a clean build plus a partial one

It deletes _build/ first (the .venv stays). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
# A module only its own chapter imports: editing a module that chapter 1's exercise checker imports
# (norm, layers, ...) re-executes every chapter, which is the clean build again.
EDIT_CHAPTER = "book/09_parallel.md"            # exports neuroforge_lit.parallel
EDIT_MARK = "#| export neuroforge_lit.parallel\n"


class KernelMemory(threading.Thread):
    """Polls /proc for ipykernel processes and records each one's peak resident memory (VmHWM),
    by chapter: `make book` starts each kernel from a `booktools chapter <stem>` process."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks: dict[str, int] = {}   # chapter stem -> kB
        self.running = True

    def run(self):
        while self.running:
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    if b"ipykernel" not in (status.parent / "cmdline").read_bytes():
                        continue
                    text = status.read_text()
                    hwm = re.search(r"VmHWM:\s+(\d+) kB", text)
                    parent = re.search(r"PPid:\s+(\d+)", text)
                    runner = Path(f"/proc/{parent.group(1)}/cmdline").read_bytes().split(b"\0") if parent else []
                    if hwm and b"chapter" in runner:
                        stem = runner[runner.index(b"chapter") + 1].decode()
                        self.peaks[stem] = max(self.peaks.get(stem, 0), int(hwm.group(1)))
                except OSError:
                    continue
            time.sleep(0.5)


def make_book() -> tuple[float, list[str]]:
    start = time.perf_counter()
    proc = subprocess.run(["make", "book"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise SystemExit(f"make book failed (exit {proc.returncode})")
    # Chapters run by `booktools execute` before Sphinx, and any Sphinx had to execute itself.
    output = proc.stdout + proc.stderr
    executed = re.findall(r"execute: (book/[\w.-]+\.md) done", output)
    executed += re.findall(r"(book/[\w.-]+\.md): Executing notebook", output)
    return seconds, executed


def execution_seconds() -> dict[str, float]:
    from jupyter_cache import get_cache

    cache = get_cache(str(ROOT / "_build" / ".jupyter_cache"))
    return {str(Path(r.uri).relative_to(ROOT)): r.data.get("execution_seconds", float("nan"))
            for r in cache.list_cache_records()}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))   # restore the edit
    shutil.rmtree(ROOT / "_build", ignore_errors=True)
    memory = KernelMemory()
    memory.start()
    clean_s, clean_executed = make_book()
    memory.running = False
    memory.join()
    per_chapter = execution_seconds()
    kernel_peak = {f"book/{stem}.md": kb / 1024 for stem, kb in memory.peaks.items()}

    nochange_s, nochange_executed = make_book()

    path = ROOT / EDIT_CHAPTER
    original = path.read_text(encoding="utf-8")
    try:
        path.write_text(original.replace(EDIT_MARK, EDIT_MARK + "_benchmark_edit = 1\n", 1),  # a code change
                        encoding="utf-8")
        edit_s, edit_executed = make_book()
    finally:
        path.write_text(original, encoding="utf-8")
        subprocess.run(["make", "tangle"], cwd=ROOT, check=True, capture_output=True)

    print(f"{'chapter':<36}{'execution (s)':>14}{'kernel peak (MiB)':>19}")
    for chapter, secs in sorted(per_chapter.items()):
        peak = kernel_peak.get(chapter)
        print(f"{chapter:<36}{secs:>14.1f}{(f'{peak:.0f}' if peak else '-'):>19}")
    print(f"clean make book: {clean_s:.0f} s ({len(clean_executed)} chapters executed)")
    print(f"no-change rebuild: {nochange_s:.1f} s (executed: {nochange_executed or 'none'})")
    print(f"after editing one exported cell of {EDIT_CHAPTER}: {edit_s:.0f} s, re-executed {edit_executed}")
    print(f"largest kernel peak memory: {max(kernel_peak.values()):.0f} MiB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "book_build.json"
    out.write_text(json.dumps({
        "machine": {"processor": platform.processor() or platform.platform(), "cpus": __import__("os").cpu_count()},
        "clean_seconds": clean_s, "clean_executed": clean_executed, "chapter_seconds": per_chapter,
        "kernel_peak_mib": kernel_peak, "nochange_seconds": nochange_s, "nochange_executed": nochange_executed,
        "edit": {"chapter": EDIT_CHAPTER, "seconds": edit_s, "executed": edit_executed},
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
