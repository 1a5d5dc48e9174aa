"""Shared fixtures. The real MNIST is found through $NEUROFORGE_DATA_DIR (CI and `make test` set
it to ../shared/data); tests that need it say so in their skip reason when it is absent.

Property tests (Hypothesis) are deterministic by default: the profile "deterministic" draws the same
examples on every run and keeps no example database, so a failure found once cannot make every later
`make test` of that clone fail from .hypothesis/. HYPOTHESIS_PROFILE=random (or pytest's
--hypothesis-profile=random) draws new examples each run and replays the failures it saved."""

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

if not os.environ.get("NEUROFORGE_DATA_DIR") and (SHARED_DATA / "mnist").is_dir():
    os.environ["NEUROFORGE_DATA_DIR"] = str(SHARED_DATA)

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("random", derandomize=False, print_blob=True,
                          database=DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis" / "examples")))


def hypothesis_profile(environ) -> str:
    """The profile a run uses: $HYPOTHESIS_PROFILE, else "deterministic"."""
    return environ.get("HYPOTHESIS_PROFILE") or "deterministic"


settings.load_profile(hypothesis_profile(os.environ))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def f64(*shape, gen, scale=1.0):
    return scale * torch.randn(*shape, dtype=torch.float64, generator=gen)


@pytest.fixture(scope="session")
def mnist_available():
    from neuroforge_lit.data import MNIST, _find

    if any(_find(MNIST, role) is None for role in MNIST.files):
        pytest.skip("the real MNIST is not available here: set NEUROFORGE_DATA_DIR "
                    "(CI sets it to ../shared/data)")
    return True


def assert_tensors_equal(actual, expected, what: str) -> None:
    """Bit-for-bit equality of two sequences of tensors (or of two dicts of them), with a message
    that names ``what`` was compared, the first entry that differs, and by how much."""
    if isinstance(actual, dict):
        assert actual.keys() == expected.keys(), f"{what}: keys {sorted(actual)} != {sorted(expected)}"
        keys, actual, expected = list(actual), list(actual.values()), [expected[k] for k in actual]
    else:
        actual, expected = list(actual), list(expected)
        keys = list(range(len(actual)))
    assert len(actual) == len(expected), f"{what}: {len(actual)} tensors, expected {len(expected)}"
    for key, a, b in zip(keys, actual, expected):
        if torch.equal(a, b):
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(f"{what}, entry {key!r}: shape {tuple(a.shape)} {a.dtype}, "
                                 f"expected {tuple(b.shape)} {b.dtype}")
        gap = (a.double() - b.double()).abs().nan_to_num(float("inf")).max().item()
        raise AssertionError(f"{what}, entry {key!r} differs: largest difference {gap:.3e} (expected bit-identical)")


def run_in_own_group(argv, *, cwd, timeout, env=None, merge_stderr=False) -> subprocess.CompletedProcess:
    """argv in its own process group, killed with everything it started (torchrun's workers, the
    launcher's processes, a chapter's kernel) when it overruns or the test is interrupted, and swept
    for anything it left running when it ends. merge_stderr: stderr into stdout, in order."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
                               stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        raise
    finally:
        try:                                   # anything it left running in its group
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(argv, process.returncode, out, err)
