"""The book's Sphinx extension (book/_ext/neuroforge_book.py): the pieces that can be tested
without a Sphinx build. The browser test checks their effect on the built pages."""

import sys
from html import unescape
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import neuroforge_book as ext  # noqa: E402

BLOCK = ('<span></span><span class="k">def</span> <span class="nf">f</span>'
         '<span class="p">(</span>x<span class="p">):</span>\n'
         '<span class="w">    </span><span class="k">return</span> <span class="n">x</span>'
         '<span class="w">  </span><span class="c1"># (<a class="nf-eqref" href="#e">eq-a-b</a>)</span>\n'
         '\n'
         '<span class="w">        </span>deeper\n')


def test_every_line_becomes_a_span_that_knows_its_indentation():
    out = ext._lines_with_indentation(BLOCK)
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) == 5                     # four lines, the final newline kept
    indents = [line.split("--nf-indent: ")[1].split("ch")[0] for line in lines[:-1]]
    assert indents == ["0", "4", "0", "8"]
    assert all(line.startswith('<span class="nf-line"') and line.endswith("</span>") for line in lines[:-1])
    # copying gives back the exact text: only tags were added, the newlines are still text
    strip = lambda html: unescape(ext.TAG.sub("", html))  # noqa: E731
    assert strip(out) == strip(BLOCK)


def _book(tmp_path, toc_files, titles):
    (tmp_path / "book").mkdir()
    for name, title in titles.items():
        (tmp_path / "book" / f"{name}.md").write_text(f"---\nkernelspec:\n  name: python3\n---\n# {title}\n")
    entries = "".join(f"  - file: book/{n}\n" for n in toc_files)
    (tmp_path / "_toc.yml").write_text(f"format: jb-book\nroot: book/intro\nchapters:\n{entries}")
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    return SimpleNamespace(srcdir=str(tmp_path))


def test_chapter_numbers_agree_with_the_file_the_title_and_the_reading_order(tmp_path):
    app = _book(tmp_path, ["01_a", "02_b", "appendix"], {"01_a": "1. A", "02_b": "2. B", "appendix": "Appendix"})
    ext._check_chapter_numbers(app)                                 # all agree: no error


@pytest.mark.parametrize("toc, titles, message", [
    (["02_b", "01_a"], {"01_a": "1. A", "02_b": "2. B"}, r"_toc\.yml: book/02_b\.md is chapter 1 in reading order"),
    (["01_a", "02_b"], {"01_a": "1. A", "02_b": "3. B"},
     r"book/02_b\.md:5: the title '# 3\. B' should start with '# 2\. '"),
    (["01_a", "02_b"], {"01_a": "1. A", "02_b": "B"}, r"book/02_b\.md:5: the title '# B'"),
])
def test_a_chapter_number_that_disagrees_stops_the_build(toc, titles, message, tmp_path):
    with pytest.raises(RuntimeError, match=message):
        ext._check_chapter_numbers(_book(tmp_path, toc, titles))
