"""The package as a user gets it: a wheel that holds the runtime modules and nothing of the book's
tooling, declares only runtime dependencies, and imports cleanly in a fresh interpreter."""

import json
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from booktools.tangle import GENERATED_MARK

import neuroforge_lit

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "neuroforge_lit"


def test_the_list_of_hand_written_modules_is_the_files_without_the_generated_header():
    hand_written = {p.stem for p in PKG.glob("*.py")
                    if not p.read_text().startswith(GENERATED_MARK) and not p.stem.startswith("__")}
    assert hand_written == set(neuroforge_lit.HAND_WRITTEN_MODULES)
    generated = {p.stem for p in PKG.glob("*.py") if p.read_text().startswith(GENERATED_MARK)}
    assert generated == set(neuroforge_lit.GENERATED_MODULES)


def test_wheel_holds_the_runtime_package_only_and_imports(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("neuroforge_lit-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = Parser().parsestr(z.read(next(n for n in names if n.endswith("METADATA"))).decode())
        z.extractall(tmp_path / "site")
    generated = {p.name for p in PKG.glob("*.py") if p.read_text().startswith(GENERATED_MARK)}
    assert generated, "no generated modules in the package"
    expected = generated | {f"{m}.py" for m in neuroforge_lit.HAND_WRITTEN_MODULES} | {"__init__.py", "__main__.py"}
    assert {n[len("neuroforge_lit/"):] for n in names if n.startswith("neuroforge_lit/")} == expected
    assert not any(n.startswith(("tests/", "book/", "tools/", "booktools/")) for n in names)
    assert not any(n.endswith("entry_points.txt") for n in names)       # no book command installed
    assert metadata["Version"] == neuroforge_lit.__version__              # one version, single-sourced
    assert metadata["License-Expression"] == "MIT" and any(n.endswith("licenses/LICENSE") for n in names)
    required = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in required) == ["numpy", "torch", "tqdm"]
    # Import every module from the unpacked wheel, in a fresh interpreter, away from the checkout.
    modules = sorted(n[len("neuroforge_lit/"):-3] for n in names
                     if n.startswith("neuroforge_lit/") and n.endswith(".py") and "__" not in n)
    code = ("import importlib, sys, neuroforge_lit; "
            f"[importlib.import_module('neuroforge_lit.' + m) for m in {modules!r}]; "
            "print(neuroforge_lit.__file__); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('yaml', 'markdown_it', 'mdit_py_plugins')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    where, book_parsers = out.stdout.strip().splitlines()
    assert where.startswith(str(tmp_path / "site"))
    assert book_parsers == "[]"
    assert "Failed to initialize NumPy" not in out.stderr


def test_version_command_names_the_version_and_the_checkout_commit():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, timeout=30).stdout.strip()
    out = subprocess.run([sys.executable, "-m", "neuroforge_lit", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"neuroforge-lit {neuroforge_lit.__version__} (commit {head}")
    full = subprocess.run([sys.executable, "-m", "neuroforge_lit"], capture_output=True, text=True, timeout=120)
    assert [line.split()[0] for line in full.stdout.splitlines()] == ["version", "commit", "torch", "device", "python"]


def test_commit_of_a_package_installed_from_git_is_the_one_pip_recorded(monkeypatch):
    from neuroforge_lit import about

    class Installed:
        def read_text(self, name):
            assert name == "direct_url.json"
            return json.dumps({"url": "https://example.invalid/nf.git",
                               "vcs_info": {"vcs": "git", "commit_id": "ab" * 20}})

    monkeypatch.setattr(about.metadata, "distribution", lambda name: Installed())
    assert about.commit() == "ab" * 6
    assert about.about()["commit"] == "ab" * 6
