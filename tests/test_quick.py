"""Quick runs: small budgets announced with a marker, claims reported instead of enforced, and a
full book build that refuses a page carrying quick figures."""

import types

import pytest
from docutils import nodes

from neuroforge_lit.quick import MARKER, budget, expect_result, is_quick_run


@pytest.mark.parametrize("value, quick", [("", False), ("0", False), ("no", False), ("1", True), ("yes", True)])
def test_the_environment_variable_decides(monkeypatch, value, quick):
    monkeypatch.setenv("NEUROFORGE_QUICK", value)
    assert is_quick_run() is quick


def test_a_full_run_uses_the_full_budget_silently(monkeypatch, capsys):
    monkeypatch.delenv("NEUROFORGE_QUICK", raising=False)
    assert budget(20, quick=2) == 20
    assert capsys.readouterr().out == ""


def test_a_quick_run_uses_the_small_budget_and_marks_it(monkeypatch, capsys):
    monkeypatch.setenv("NEUROFORGE_QUICK", "1")
    assert budget(20, quick=2) == 2
    assert MARKER in capsys.readouterr().out


def test_claims_are_enforced_in_a_full_run_and_reported_in_a_quick_one(monkeypatch, capsys):
    monkeypatch.delenv("NEUROFORGE_QUICK", raising=False)
    expect_result(True, "accuracy 0.99 reaches 0.98")
    with pytest.raises(AssertionError, match="claim does not hold: accuracy 0.90 reaches 0.98"):
        expect_result(False, "accuracy 0.90 reaches 0.98")
    monkeypatch.setenv("NEUROFORGE_QUICK", "1")
    expect_result(False, "accuracy 0.90 reaches 0.98")
    out = capsys.readouterr().out
    assert MARKER in out and "DOES NOT HOLD" in out and "accuracy 0.90 reaches 0.98" in out


def _chapter_doctree(output_text: str):
    output = nodes.container(classes=["cell_output"])
    output += nodes.literal_block(text=output_text)
    doctree = nodes.document(None, None)
    doctree += output
    return doctree


def _fake_app():
    env = types.SimpleNamespace(docname="book/02_mlp", doc2path=lambda name: f"/book/{name}.md")
    return types.SimpleNamespace(env=env)


def test_the_full_build_refuses_a_page_with_quick_figures(monkeypatch):
    from neuroforge_book import _refuse_quick_figures

    monkeypatch.delenv("NEUROFORGE_QUICK", raising=False)
    _refuse_quick_figures(_fake_app(), _chapter_doctree("test accuracy 0.98"))       # a full output: fine
    with pytest.raises(RuntimeError, match=r"02_mlp\.md: a cell output comes from a quick run"):
        _refuse_quick_figures(_fake_app(), _chapter_doctree(f"{MARKER} budget 20 -> 2"))
    monkeypatch.setenv("NEUROFORGE_QUICK", "1")                                       # a quick build keeps it
    _refuse_quick_figures(_fake_app(), _chapter_doctree(f"{MARKER} budget 20 -> 2"))
