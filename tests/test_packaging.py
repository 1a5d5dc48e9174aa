"""The sdist and the wheel as pip builds and installs them, offline: the sdist carries no tests (they
need tests/conftest.py, tools/ and book/, which stay in the repository), and the README's example
runs against each installed copy, away from the checkout. README.md's `pip install .` is this.

Everything is built from a temporary copy of the checkout, so the checkout gets no build/ or
*.egg-info of this test's making. (tests/test_package.py checks the wheel's contents and metadata.)
"""

import ast
import os
import re
import shutil
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import run_in_own_group

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "neuroforge_lit"
DATA = ROOT.parent / "shared" / "data"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
# Left out of the copy: what the build must not pick up or be slowed by (the ignored paths of .gitignore).
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "_build", "build", "dist", "__pycache__", "*.egg-info",
                                    ".pytest_cache", ".ruff_cache", ".hypothesis", ".ipynb_checkpoints", "*.ipynb")


def run(argv, *, cwd, timeout, env=None):
    """argv in its own process group (conftest), stdout and stderr apart for the messages below."""
    return run_in_own_group(argv, cwd=cwd, timeout=timeout, env=env)


def check(done, what):
    assert done.returncode == 0, (f"{what} failed (exit {done.returncode}):\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sdist and the wheel of a copy of the checkout, built without a network."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    build_sdist = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    done = check(run([sys.executable, "-c", build_sdist, str(tmp / "sdist")], cwd=source, timeout=120), "build_sdist")
    sdist = tmp / "sdist" / done.stdout.strip().splitlines()[-1]
    check(run(PIP + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp / "wheel"),
                     str(source)], cwd=tmp, timeout=120), "pip wheel")
    wheel = next((tmp / "wheel").glob("neuroforge_lit-*.whl"))
    return {"tmp": tmp, "sdist": sdist, "wheel": wheel}


def test_the_venvs_setuptools_satisfies_the_build_requirement():
    """--no-build-isolation builds with the venv's setuptools, so it must be the one pyproject asks for
    (setuptools>=77 reads the SPDX `license = "MIT"` and `license-files`)."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, requires):
        installed = metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"the venv has {requirement.name} {installed}, but pyproject.toml's build-system requires {requirement}")


def test_the_sdist_carries_the_package_and_no_tests(built):
    with tarfile.open(built["sdist"]) as tar:
        files = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}   # below neuroforge_lit-VERSION/
    modules = {f"neuroforge_lit/{p.name}" for p in PKG.glob("*.py")}
    assert {"README.md", "LICENSE", "pyproject.toml", "PKG-INFO"} | modules <= files
    unexpected = {n for n in files if n.split("/")[0] in ("tests", "tools", "book", "benchmarks", ".ci", "_build")}
    assert not unexpected, f"files of the repository, not of the package: {sorted(unexpected)}"
    extra = {n for n in files if not n.startswith(("neuroforge_lit/", "neuroforge_lit.egg-info/"))}
    assert extra <= {"README.md", "LICENSE", "pyproject.toml", "PKG-INFO", "setup.cfg", "MANIFEST.in"}, sorted(extra)
    assert {n for n in files if n.startswith("neuroforge_lit/")} == modules


def test_the_wheel_declares_the_download_extra(built):
    """README.md's `pip install ".[download]"` needs a network; what it installs is declared here."""
    with zipfile.ZipFile(built["wheel"]) as z:
        text = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "Provides-Extra: download" in text
    assert re.search(r'^Requires-Dist: torchvision>=0\.19; extra == "download"$', text, re.M), text


@pytest.mark.parametrize("artifact", ["sdist", "wheel"])
def test_the_readme_example_runs_against_the_installed_package(built, artifact):
    if not (DATA / "mnist").is_dir():
        pytest.skip(f"the README example needs MNIST at {DATA / 'mnist'} (see ../shared/data/README.md)")
    target = built["tmp"] / f"installed-{artifact}"
    check(run(PIP + ["install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "--target", str(target),
                     str(built[artifact])], cwd=built["tmp"], timeout=120), f"pip install {artifact}")
    assert not (target / "tests").exists() and (target / "neuroforge_lit" / "data.py").is_file()
    readme = next(target.glob("neuroforge_lit-*.dist-info")).joinpath("METADATA").read_text()   # its body
    example = re.search(r"^```python\n(.*?)^```", readme, re.S | re.M).group(1)   # the README, as installed
    code = example + "import neuroforge_lit\nprint(neuroforge_lit.__file__)\n"
    workdir = built["tmp"] / f"run-{artifact}"                                     # outside the checkout
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "NEUROFORGE_DATA_DIR": str(DATA), "NEUROFORGE_DATA_LIMIT": "300",
           "XDG_CACHE_HOME": str(built["tmp"] / "cache"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = check(run([sys.executable, "-c", code], cwd=workdir, env=env, timeout=120),
                 f"the README example ({artifact})")
    *_, accuracy_line, where = done.stdout.strip().splitlines()
    assert Path(where).is_relative_to(target), f"imported {where}, not the copy installed from the {artifact}"
    result = ast.literal_eval(accuracy_line)
    assert set(result) == {"loss", "accuracy"} and 0.5 < result["accuracy"] <= 1.0, accuracy_line
