"""The mutation suite of book/checks.md ("How this book checks itself"), run by `make test` as well as
by the book: every hand-written backward pass and optimizer update is checked against its oracles,
then every mutant of it (a typical wrong derivation) goes through the same check, and each one must
be caught or explained as equivalent. The test runs the page's own code cells, so the book and the
test suite cannot disagree about what is checked."""

from pathlib import Path

import pytest
from booktools.tangle import chapter_cells

from neuroforge_lit.testing import gradient_check

ROOT = Path(__file__).resolve().parents[1]
CHECKS_PAGE = "book/checks.md"
LAST_CELL_MARK = "assert not unexplained"      # the cell that explains or refuses every survivor


@pytest.fixture(scope="module")
def suite() -> dict:
    """The namespace of the page after its checks and its mutants have run."""
    namespace: dict = {"__name__": "checks_page"}
    _, _, code_cells = chapter_cells(ROOT, CHECKS_PAGE)     # the tangler's reading: (line, code) per cell
    for line, code in code_cells:
        exec(compile(code, f"{CHECKS_PAGE}:{line}", "exec"), namespace)
        if LAST_CELL_MARK in code:
            return namespace
    raise AssertionError(f"{CHECKS_PAGE} has no cell with {LAST_CELL_MARK!r}")


def test_every_function_agrees_with_its_oracles(suite):
    failed = [fn.__qualname__ for fn, m in suite["measured"].items() if not m.ok]
    assert not failed


def test_every_mutant_is_caught_or_explained(suite):
    assert suite["unexplained"] == []
    total = suite["total"]
    assert total >= 300 and suite["total_caught"] >= total - len(suite["EQUIVALENT"])


def test_the_suite_covers_every_hand_written_backward_of_the_package(suite):
    """A new `*_backward` function or Layer.backward in a generated module must join the page's CHECKS
    (the layers that only reshape, or apply an elementwise rule already checked, are listed here)."""
    import inspect

    import neuroforge_lit
    from neuroforge_lit.layers import Layer

    covered = {fn.__qualname__ for fn, _ in suite["CHECKS"]}
    wiring_only = {"Linear.backward", "ReLU.backward", "Dropout.backward", "BatchNorm1d.backward",
                   "LayerNorm.backward", "Conv2d.backward", "MaxPool2d.backward", "Reshape.backward",
                   "Tokenwise.backward", "Patches.backward", "PositionEmbedding.backward",
                   "MeanOverTokens.backward", "Layer.backward"}
    # chapter 9's backward passes need a process group: tests/test_parallel.py checks them across
    # processes against the single-process reference; the page's mutants run in one process only
    across_processes = {"all_to_all_backward", "sync_batchnorm_backward", "SyncBatchNorm1d.backward",
                        "expert_parallel_backward", "ExpertParallelMoE.backward"}
    missing = []
    for name in neuroforge_lit.GENERATED_MODULES:
        module = __import__(f"neuroforge_lit.{name}", fromlist=["_"])
        for attr, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__ or attr.startswith("_"):
                continue
            if inspect.isfunction(obj) and attr.endswith("_backward") \
                    and obj.__qualname__ not in covered | across_processes:
                missing.append(obj.__qualname__)
            if inspect.isclass(obj) and issubclass(obj, Layer) and "backward" in vars(obj):
                qualname = f"{obj.__qualname__}.backward"
                if qualname not in covered | wiring_only | across_processes:
                    missing.append(qualname)
    missing = [m for m in missing if not m.startswith(("Fast", "Foreach", "Fused"))]   # the appendix's
    assert not missing, f"backward passes that book/checks.md does not check or mutate: {missing}"


def test_a_gradient_wrong_by_one_part_in_a_million_is_rejected(suite):
    """Calibration: in float64, an error of 1e-6 relative is far above autograd's rounding (~1e-15)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g)
    right = 2 * x
    assert gradient_check(lambda x: (x * x).sum(), dict(x=x), dict(x=right)).ok
    assert not gradient_check(lambda x: (x * x).sum(), dict(x=x), dict(x=right * (1 + 1e-6))).ok
