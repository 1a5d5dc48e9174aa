"""The book's own Sphinx extension: a few small jobs.

**Labels on exported cells.** Above every code cell that starts with ``#| export
neuroforge_lit.<module>``, a one-line label says which module the cell goes to and which names it
defines, each linked to its entry in the API reference.

**A notebook download.** Every executed chapter is offered as ``.ipynb`` beside its ``.md``
source (sphinx-book-theme only does this when a launch service such as Binder is configured).

**A clean console.** Jupyter Book adds sphinx-thebe's inline configuration script twice, and the
second copy throws ("THEBE_JS_URL has already been declared"); after the build, a repeated inline
script is removed from each page.
The theme's template gets a default colour mode ("auto"), without which its script logs an
error on every page.

**Equations and code, linked both ways.** A ``# (eq-...)`` citation in a rendered code cell links
to its equation, on whichever page it is; under every labelled equation that exported code
implements, a line links back to the definitions that cite it (their exported cells carry anchors
``nf-def-<name>``).

**Chapter numbers that cannot drift.** A chapter's file name starts with its number (``03_...``),
its title too (``# 3. ...``), and ``_toc.yml`` lists the numbered chapters in that order; the
build stops, naming the file, where one of the three disagrees. The prose cites chapters by file,
not by typed number: ``{chapter}`03_normalization``` renders as a link "chapter 3", ``{chapnum}``
as the bare number, as in "chapters 2 and 4" (role names ignore case, so there is no ``{Chapter}``:
a sentence does not start with one).

**Code that wraps readably.** Code and text outputs wrap at the column's edge instead of
scrolling sideways. Each line of a highlighted block becomes a ``span.nf-line`` that carries its
own indentation (``--nf-indent``), so a wrapped line continues under its first character plus a
hanging indent (``neuroforge.css``), and an equation citation, ``(eq-...)``, never splits.

**Which package ran this page.** Every page's footer names the package version and commit,
torch and the device that executed the book, and the build date (``neuroforge_lit.about``), so a
reader can compare it with ``python -m neuroforge_lit --version``.

**Quick figures never published.** A quick run (``NEUROFORGE_QUICK=1``, ``make book QUICK=1``)
trains on small budgets and prints ``neuroforge_lit.quick.MARKER`` with each reduced figure. Such
a build says so at the top of every page; a full build stops, naming the chapter, when a cell's
output carries the marker (a quick chapter's outputs must never reach the published book). The
quick flag is part of each chapter's cache key, so quick and full outputs never share a cache
entry.

**Re-execution when the package changes.** myst-nb's cache keys on a chapter's own cell sources
only: after an edit to chapter 2's exported code, chapter 3 (which imports it from
``neuroforge_lit``) would be served stale outputs. So, as Sphinx reads each chapter, this extension

1. appends a hidden code cell holding a fingerprint of every package module the chapter imports
   (directly or through other modules), which changes the cache key when one of them changes.
   The fingerprint is a hash of the module's syntax tree without docstrings, so an edit to a
   comment, a docstring or a provenance line re-executes nothing. The cell comes from
   ``booktools.execute.fingerprint_cell``, which ``make book`` also uses when it executes the
   chapters two at a time before Sphinx starts (so the two find the same cache entries);
2. tells Sphinx the chapter depends on those files (``note_dependency``), without which Sphinx
   would not even re-read an unchanged chapter.
"""

from __future__ import annotations

import ast
import re
import sys
from datetime import datetime, timezone
from html import escape, unescape
from pathlib import Path

import nbformat
from docutils import nodes
from jupyter_cache import get_cache
from sphinx import addnodes
from sphinx.util import logging

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))   # the book tooling
from booktools.execute import FINGERPRINT_HEADER, fingerprint_cell  # noqa: E402
from booktools.tangle import DIRECTIVE, EQ_CITATION, MODULE_NAME, is_notebook, toc_chapters  # noqa: E402
from neuroforge_lit.quick import MARKER, is_quick_run  # noqa: E402

NUMBERED_CHAPTER = re.compile(r"book/(\d\d)_[a-z0-9_]+")                    # book/03_normalization
logger = logging.getLogger(__name__)
CODE_COMMENT = re.compile(r'<span class="c1">[^<]*</span>')                # pygments' comment spans
HIGHLIGHTED = re.compile(r'(<div class="highlight"><pre>)(.*?)(</pre>)', re.DOTALL)   # pygments' blocks
TAG = re.compile(r"<[^>]+>")
MATH_BLOCK = re.compile(r'(<div class="math notranslate nohighlight" id="(equation-eq-[a-z0-9-]+)">.*?</div>)',
                        re.DOTALL)


def _add_dependency_cell(app, docname: str, source: list[str]) -> None:
    path, root = Path(app.env.doc2path(docname)), Path(app.srcdir)
    chapter = str(path.relative_to(root))
    if path.suffix != ".md" or not is_notebook(root, chapter):
        return
    cell, deps = fingerprint_cell(root, chapter)
    for dep in deps:
        app.env.note_dependency(str(dep))
    source[0] += cell


def _refuse_quick_figures(app, doctree) -> None:
    """In a full build, stop at a chapter whose executed outputs came from a quick run."""
    if is_quick_run():
        return
    for block in doctree.findall(nodes.literal_block):
        output = block.parent
        if output is None or "cell_output" not in output.get("classes", []) or MARKER not in block.astext():
            continue
        line = next(text for text in block.astext().splitlines() if MARKER in text)
        raise RuntimeError(f"{app.env.doc2path(app.env.docname)}: a cell output comes from a quick run "
                           f"({line.strip()!r}); quick figures may not reach the published book. Execute "
                           "the chapter in full (unset NEUROFORGE_QUICK; `make clean` drops stale outputs)")


def _exported_names(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            names.append(node.name)
    return names


def _citations_by_definition(code: str) -> dict[str, set[str]]:
    """{top-level def or class name: the equation labels cited in its lines} of an exported cell."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return {}
    lines = code.splitlines()
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            text = "\n".join(lines[node.lineno - 1:node.end_lineno])
            found[node.name] = set(EQ_CITATION.findall(text))
    return found


def _label_exported_cells(app, doctree) -> None:
    for block in list(doctree.findall(nodes.literal_block)):
        cell_input = block.parent
        if cell_input is None or "cell_input" not in cell_input.get("classes", []):
            continue
        first, _, code = block.astext().partition("\n")
        m = DIRECTIVE.match(first.strip())
        if not m or m.group(1) != "export" or not MODULE_NAME.match(m.group(2).strip()):
            continue  # not an export (the tangler reports malformed directives)
        module = m.group(2).strip()
        label = nodes.paragraph(classes=["nf-export-label"])
        for name, labels in _citations_by_definition(code).items():
            label["ids"].append(f"nf-def-{name}")
            for eq in labels:
                app.env.nf_implementers.setdefault(eq, set()).add((app.env.docname, name))
        label += nodes.Text("exported to ")
        label += nodes.literal(text=module)
        names = _exported_names(code)
        if names:
            label += nodes.Text(": ")
        for i, name in enumerate(names):
            ref = addnodes.pending_xref("", refdomain="py", reftype="obj", reftarget=f"{module}.{name}",
                                        refexplicit=True, refwarn=False)
            ref += nodes.literal(text=name)
            label += ref
            if i < len(names) - 1:
                label += nodes.Text(", ")
        cell = cell_input.parent
        cell.parent.insert(cell.parent.index(cell), label)


def _offer_notebook_download(app, pagename, templatename, context, doctree) -> None:
    """The chapter as an executed .ipynb: myst-nb writes its notebooks to jupyter_execute/ without
    the outputs it took from the execution cache, so they are merged back from that cache here,
    and the hidden fingerprint cell (see above) is left out. A chapter the cache does not hold
    gets no download and a warning (which `make book`'s -W turns into an error)."""
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.exists():
        return
    notebook, cache = nbformat.read(executed, as_version=4), app.env.mystnb_config.execution_cache_path
    try:
        if not cache:
            raise KeyError("execution is off")
        _, notebook = get_cache(cache).merge_match_into_notebook(notebook)
    except KeyError:
        logger.warning(f"{pagename}: no executed notebook in the cache, so the page offers no .ipynb download")
        return
    notebook.cells = [cell for cell in notebook.cells if not cell.source.startswith(FINGERPRINT_HEADER)]
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)
    context["ipynb_source"] = f"{pagename}.ipynb"    # read by the theme's download menu (priority 501)


def _check_chapter_numbers(app) -> None:
    """File number, title number and reading order agree, for every numbered chapter."""
    root = Path(app.srcdir)
    numbered = [c for c in toc_chapters(root) if NUMBERED_CHAPTER.fullmatch(str(Path(c).with_suffix("")))]
    for place, chapter in enumerate(numbered, 1):
        number = int(Path(chapter).name[:2])
        if number != place:
            raise RuntimeError(f"_toc.yml: {chapter} is chapter {place} in reading order but its file says {number}; "
                               "rename the files so that their numbers follow _toc.yml")
        lines = (root / chapter).read_text(encoding="utf-8").splitlines()
        line, title = next(((i, text) for i, text in enumerate(lines, 1) if text.startswith("# ")), (1, ""))
        if not title.startswith(f"# {number}. "):
            raise RuntimeError(f"{chapter}:{line}: the title {title!r} should start with '# {number}. ' "
                               "(the chapter's number, as its file name says)")


def _chapter_role(form: str):
    """{chapter}`03_normalization` -> a link "chapter 3"; `form` is "chapter" or "" (the bare number)."""
    def role(name, rawtext, text, lineno, inliner, options=None, content=None):
        env = inliner.document.settings.env
        stem = text.strip()
        if not (NUMBERED_CHAPTER.fullmatch(f"book/{stem}") and (Path(env.srcdir) / "book" / f"{stem}.md").exists()):
            message = inliner.reporter.error(f"{{{name}}}`{stem}` names no chapter file book/{stem}.md "
                                             "(write the file's stem, as in {chapter}`03_normalization`)", line=lineno)
            return [inliner.problematic(rawtext, rawtext, message)], [message]
        label = f"{form} {int(stem[:2])}".strip()
        ref = addnodes.pending_xref(rawtext, refdomain="std", reftype="doc", reftarget=f"/book/{stem}",
                                    refexplicit=True, refwarn=True, refdoc=env.docname)
        ref += nodes.inline(rawtext, label)
        return [ref], []
    return role


def _record_provenance(app) -> None:
    from neuroforge_lit.about import about     # the package the chapters import: installed -e here

    facts = about()
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    app.env.nf_footer = (
        f'<p class="nf-provenance">Built {built} with neuroforge-lit {escape(facts["version"])} '
        f'(commit <code>{escape(facts["commit"])}</code>), torch {escape(facts["torch"])}, on '
        f'{escape(facts["device"])}. Yours: <code>python -m neuroforge_lit --version</code>.</p>')


def _init_implementers(app, env, docnames) -> None:
    if not hasattr(env, "nf_implementers"):
        env.nf_implementers = {}                       # equation label -> {(docname, definition)}


def _purge_implementers(app, env, docname) -> None:
    for found in getattr(env, "nf_implementers", {}).values():
        found -= {entry for entry in found if entry[0] == docname}


def _merge_implementers(app, env, docnames, other) -> None:
    for eq, found in getattr(other, "nf_implementers", {}).items():
        env.nf_implementers.setdefault(eq, set()).update(entry for entry in found if entry[0] in docnames)


def _link_equations_and_code(app, pagename, templatename, context, doctree) -> None:
    """Citations in code cells -> their equations; labelled equations -> the code that cites them."""
    body = context.get("body")
    if not body or doctree is None:
        return
    equations = app.env.get_domain("math").equations       # label -> (docname, number)
    # An equation's HTML id is docutils' normalised form of "equation-<label>" (lower case).
    implementers = {nodes.make_id(f"equation-{eq}"): found for eq, found in app.env.nf_implementers.items()}

    def uri(docname: str, anchor: str) -> str:
        page = "" if docname == pagename else app.builder.get_relative_uri(pagename, docname)
        return f"{page}#{anchor}"

    def link(eq: re.Match) -> str:
        if eq[0] not in equations:
            return eq[0]
        return f'<a class="nf-eqref" href="{uri(equations[eq[0]][0], nodes.make_id("equation-" + eq[0]))}">{eq[0]}</a>'

    body = CODE_COMMENT.sub(lambda comment: EQ_CITATION.sub(link, comment[0]), body)
    body = HIGHLIGHTED.sub(lambda block: block[1] + _lines_with_indentation(block[2]) + block[3], body)

    def add_backlink(math: re.Match) -> str:
        found = sorted(implementers.get(math[2], ()))
        if not found:
            return math[0]
        links = ", ".join(f'<a href="{uri(doc, "nf-def-" + name)}"><code>{name}</code></a>' for doc, name in found)
        return f'{math[0]}\n<p class="nf-implemented-by">implemented by {links}</p>'

    context["body"] = MATH_BLOCK.sub(add_backlink, body)


def _lines_with_indentation(code: str) -> str:
    """Each line of a pygments block as a span that knows its indentation (a hanging indent in CSS).

    pygments closes its spans at every line end, so splitting on newlines keeps the HTML whole; the
    newlines stay as text, so copying a block gives back its exact lines."""
    lines = code.split("\n")
    wrapped = []
    for line in lines[:-1] if lines[-1] == "" else lines:
        text = unescape(TAG.sub("", line))
        indent = len(text) - len(text.lstrip(" "))
        wrapped.append(f'<span class="nf-line" style="--nf-indent: {indent}ch">{line}</span>')
    return "\n".join(wrapped) + ("\n" if lines[-1] == "" else "")


def _provenance_footer(app, pagename, templatename, context, doctree) -> None:
    """The theme prints `theme_extra_footer` under every page's footer (and, in a quick build,
    `theme_announcement` above every page)."""
    context["theme_extra_footer"] = getattr(app.env, "nf_footer", "")
    if is_quick_run():
        context["theme_announcement"] = ("Quick run (NEUROFORGE_QUICK=1): the experiments ran on small budgets; "
                                         "these figures are not the book's and must not be published.")


def _default_colour_mode(app, pagename, templatename, context, doctree) -> None:
    """The theme's template reads `default_mode`; left empty, its script logs an error per page."""
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


def _drop_repeated_inline_scripts(app, exception) -> None:
    """After the build: keep only the first copy of each identical inline <script> line per page
    (sphinx-thebe's configuration arrives twice on an incremental Jupyter Book build)."""
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        lines = page.read_text(encoding="utf-8").splitlines(keepends=True)
        seen, kept = set(), []
        for line in lines:
            inline = line.strip()
            if inline.startswith("<script>") and inline.endswith("</script>"):
                if inline in seen:
                    continue
                seen.add(inline)
            kept.append(line)
        if len(kept) != len(lines):
            page.write_text("".join(kept), encoding="utf-8")


def setup(app):
    app.connect("env-before-read-docs", _init_implementers)
    app.connect("env-purge-doc", _purge_implementers)
    app.connect("env-merge-info", _merge_implementers)
    app.connect("html-page-context", _link_equations_and_code)
    app.connect("builder-inited", _record_provenance)
    app.connect("builder-inited", _check_chapter_numbers)
    app.add_role("chapter", _chapter_role("chapter"))
    app.add_role("chapnum", _chapter_role(""))
    app.connect("html-page-context", _provenance_footer)
    app.connect("html-page-context", _default_colour_mode, priority=900)
    app.connect("build-finished", _drop_repeated_inline_scripts)
    app.connect("source-read", _add_dependency_cell)
    app.connect("doctree-read", _label_exported_cells)
    app.connect("doctree-read", _refuse_quick_figures)
    app.connect("html-page-context", _offer_notebook_download, priority=400)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
