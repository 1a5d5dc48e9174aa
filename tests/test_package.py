"""The package as a user gets it: a wheel that holds the generated modules and imports cleanly."""

import subprocess
import sys
import zipfile
from pathlib import Path

from neuroforge_lit.tangle import GENERATED_MARK

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_generated_modules_and_imports(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("neuroforge_lit-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    generated = {p.name for p in (ROOT / "neuroforge_lit").glob("*.py")
                 if p.read_text().startswith(GENERATED_MARK)}
    assert generated, "no generated modules in the package"
    for name in generated | {"data.py", "testing.py", "tangle.py", "cli.py"}:
        assert f"neuroforge_lit/{name}" in names
    assert not any(n.startswith(("tests/", "book/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        assert "neuroforge-lit = neuroforge_lit.cli:main" in z.read(entry_points).decode()
    # Import every module from the unpacked wheel, in a fresh interpreter, away from the checkout.
    modules = sorted(n[len("neuroforge_lit/"):-3] for n in names
                     if n.startswith("neuroforge_lit/") and n.endswith(".py") and "__" not in n)
    code = ("import importlib, neuroforge_lit; "
            f"[importlib.import_module('neuroforge_lit.' + m) for m in {modules!r}]; "
            "print(neuroforge_lit.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(tmp_path / "site"))
