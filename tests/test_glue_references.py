"""The book's pages quote figures from other chapters with {glue:text}`chapter.md::key:format`.
myst-nb splits that reference at its *last* colon, so a reference without a format spec reads as
the key 'chapter.md:' with the format ':key' and fails only at the end of a full book build. This
test finds such references in a second."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLUE_TEXT = re.compile(r"\{glue:text\}`([^`]+)`")


def references_without_format(text: str) -> list[str]:
    """The cross-document glue:text references in `text` that name no format (`doc.md::key`)."""
    return [ref for ref in GLUE_TEXT.findall(text) if "::" in ref and ":" not in ref.split("::", 1)[1]]


def test_the_check_finds_a_reference_without_format():
    page = "a {glue:text}`03_normalization.md::seed_advantage` b {glue:text}`02_mlp.md::mlp_acc:.4f` c"
    assert references_without_format(page) == ["03_normalization.md::seed_advantage"]


def test_every_cross_page_glue_reference_names_a_format():
    found = {str(page.relative_to(ROOT)): refs for page in sorted((ROOT / "book").glob("*.md"))
             if (refs := references_without_format(page.read_text(encoding="utf-8")))}
    assert not found, f"add a format spec (':s' for text) to these glue references: {found}"
