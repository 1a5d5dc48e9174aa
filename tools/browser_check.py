"""Check the built book the way a reader sees it: headless Chromium, driven by Playwright.

    python tools/browser_check.py [--html _build/html] [--shots _build/screenshots]

For every page in _toc.yml, in a 1280-pixel window: it loads without console errors; MathJax
rendered every equation (no error nodes, no raw $$ left in the text); every image loaded; every
internal link and #fragment resolves to a file and an element that exist; the page is in the
search index. What a reader has to see:

* nothing wider than the column: no code or output block that scrolls sideways, no display
  equation or table that overflows, and no equation citation in code split over two lines;
* every plot in a figure with a caption and alt text (not a file name), shown at no less than
  0.76 of its size, so that its 12-point tick labels (at 110 dpi) are at least 14 pixels high,
  near the body text's 16;
* text contrast at least 4.5:1 (axe-core's color-contrast rule), in the light and dark modes;
* the sidebar button hides and shows the chapter list.

Then at 390 pixels (a phone): the sidebar button opens the chapter list, and code blocks fit
the screen in a legible size. A full-page screenshot (1280) and one screen each of the phone and
the dark mode per page go to --shots. Exit 1 if any check fails. Needs Debian's chromium
(/usr/bin/chromium), playwright and axe-playwright-python (for its axe-core; the `test` extra).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import axe_playwright_python
from playwright.sync_api import sync_playwright

import neuroforge_lit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from booktools.tangle import toc_chapters  # noqa: E402

AXE = Path(axe_playwright_python.__file__).with_name("axe.min.js").read_text(encoding="utf-8")
SMALLEST_PLOT_SCALE = 0.76     # 12 pt at 110 dpi = 18.3 px; shown at >= 0.76 of that: >= 14 px
SMALLEST_CODE_FONT = 12        # px, on a phone

# What the reader sees in the column, measured in the page (1280 px): each list holds the first
# few offenders' opening text.
LAYOUT = """() => {
    const main = document.querySelector('main');
    const column = (main.querySelector('article') || main).getBoundingClientRect();
    const first = (list, text) => list.map(text);
    const line = e => (e.innerText || e.textContent).split('\\n')[0].slice(0, 80);
    const all = s => Array.from(main.querySelectorAll(s));
    return {
        wide_blocks: first(all('div.highlight pre').filter(p => p.scrollWidth > p.clientWidth + 1), line),
        wide_equations: first(all('mjx-container[display="true"]').filter(m =>
            m.scrollWidth > m.clientWidth + 1 || m.getBoundingClientRect().right > column.right + 1),
            m => m.closest('.math') ? m.closest('.math').id || 'unlabelled' : 'unlabelled'),
        wide_tables: first(all('table').filter(t => t.getBoundingClientRect().right > column.right + 1
            || (t.parentElement.scrollWidth > t.parentElement.clientWidth + 1)), line),
        split_citations: first(all('a.nf-eqref').filter(a => a.getClientRects().length > 1), a => a.textContent),
        citations: all('a.nf-eqref').length,
        plots: all('div.cell_output img').map(img => ({
            src: img.getAttribute('src'), alt: img.getAttribute('alt') || '',
            caption: (img.closest('figure')?.querySelector('figcaption') || {}).innerText || '',
            scale: img.naturalWidth ? img.getBoundingClientRect().width / img.naturalWidth : 0})),
    };
}"""


def contrast_failures(pg, mode: str) -> list[str]:
    """axe-core's color-contrast rule on the page in `mode` ('light' or 'dark'): offending texts."""
    pg.evaluate("mode => { const html = document.documentElement; html.dataset.theme = html.dataset.mode = mode; }",
                mode)
    pg.wait_for_timeout(150)
    if not pg.evaluate("() => typeof window.axe !== 'undefined'"):
        pg.add_script_tag(content=AXE)
    result = pg.evaluate("() => axe.run(document, {runOnly: {type: 'rule', values: ['color-contrast']}})")
    return [f"{mode}: {node['html'][:70]!r} ({node['any'][0]['message'][:90] if node['any'] else ''})"
            for violation in result["violations"] for node in violation["nodes"]]


def sidebar_shown(pg) -> bool:
    """Whether a reader can see the chapter list: a link to a chapter inside the viewport."""
    return pg.evaluate("""() => Array.from(document.querySelectorAll('nav.bd-docs-nav a.reference'))
        .some(a => { const r = a.getBoundingClientRect();
                     return r.width > 0 && r.left >= 0 && r.right <= innerWidth
                            && getComputedStyle(a).visibility === 'visible'
                            && document.elementFromPoint(r.left + 2, r.top + r.height / 2) === a; })""")


def click_sidebar_button(pg) -> None:
    pg.locator(".bd-header-article .primary-toggle").first.click()
    pg.wait_for_timeout(400)


CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def page_ids(path: Path, cache: dict) -> set[str]:
    if path not in cache:
        cache[path] = set(re.findall(r'\sid="([^"]+)"', path.read_text(encoding="utf-8")))
    return cache[path]


def check_page(pg, html: Path, page: Path, search_index: str, ids_cache: dict, shots: Path) -> tuple[dict, list[str]]:
    problems, console = [], []
    pg.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: console.append(str(e)))
    pg.goto(page.as_uri(), wait_until="load")
    pg.wait_for_function("() => !window.MathJax || (window.MathJax.startup && window.MathJax.startup.promise)")
    pg.evaluate("() => window.MathJax && window.MathJax.startup ? window.MathJax.startup.promise : null")
    pg.wait_for_timeout(200)
    stats = pg.evaluate("""() => ({
        equations: document.querySelectorAll('mjx-container').length,
        math_errors: document.querySelectorAll('mjx-merror').length,
        raw_dollars: (document.querySelector('main') || document.body).innerText.includes('$$'),
        images: Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]),
        links: Array.from(document.querySelectorAll('main a[href], nav a[href]')).map(a => a.getAttribute('href')),
        unresolved_math: Array.from(document.querySelectorAll('main .math'))
            .filter(e => !e.querySelector('mjx-container')).length,
        provenance: (document.querySelector('.nf-provenance') || {}).innerText || '',
        unlinked_citations: Array.from(document.querySelectorAll('main span.c1'))
            .filter(c => /\\beq-[A-Za-z0-9_-]+/.test(c.textContent) && !c.querySelector('a.nf-eqref'))
            .map(c => c.textContent).slice(0, 3),
        backlinks: document.querySelectorAll('main p.nf-implemented-by a').length,
    })""")
    layout = pg.evaluate(LAYOUT)
    for key, what in (("wide_blocks", "code or output blocks that scroll sideways"),
                      ("wide_equations", "display equations wider than the column"),
                      ("wide_tables", "tables wider than the column"),
                      ("split_citations", "equation citations in code split over two lines")):
        if layout[key]:
            problems.append(f"{len(layout[key])} {what} at 1280 px, starting: {layout[key][:3]}")
    plots = layout["plots"]
    for plot in plots:
        name = plot["src"].rsplit("/", 1)[-1]
        if not plot["alt"].strip() or plot["alt"] == plot["src"] or re.search(r"\.(png|svg|jpe?g)\b|/", plot["alt"]):
            problems.append(f"plot {name}: no alt text that says what it shows (alt={plot['alt'][:60]!r})")
        if not plot["caption"].strip():
            problems.append(f"plot {name}: no caption")
        if plot["scale"] < SMALLEST_PLOT_SCALE:
            problems.append(f"plot {name}: shown at {plot['scale']:.2f} of its size (< {SMALLEST_PLOT_SCALE}): its "
                            "tick labels are smaller than the text; make the figure narrower")
    if stats["unlinked_citations"]:
        problems.append(f"equation citations in code that link nowhere: {stats['unlinked_citations']}")
    if f"neuroforge-lit {neuroforge_lit.__version__} (commit " not in stats["provenance"]:
        problems.append(f"no footer naming the package that ran the page: {stats['provenance']!r}")
    if console:
        problems.append(f"console errors: {console[:3]}")
    if stats["math_errors"]:
        problems.append(f"{stats['math_errors']} MathJax error node(s)")
    if stats["raw_dollars"]:
        problems.append("raw $$ left in the page text")
    if stats["unresolved_math"]:
        problems.append(f"{stats['unresolved_math']} math element(s) that MathJax did not render")
    for src, w, h in stats["images"]:
        if not (w and h):
            problems.append(f"image did not load: {src}")
    internal = 0
    for href in stats["links"]:
        url = urlparse(href)
        if url.scheme in ("http", "https", "mailto") or href.startswith("javascript:"):
            continue
        internal += 1
        target = (page.parent / unquote(url.path)).resolve() if url.path else page
        if not target.exists():
            problems.append(f"broken link: {href}")
        elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in page_ids(target, ids_cache):
            problems.append(f"broken anchor: {href}")
    docname = page.relative_to(html).with_suffix("").as_posix()
    if f'"{docname}"' not in search_index:
        problems.append(f"no search index entry for {docname}")
    shot = docname.replace("/", "_")
    shots.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(shots / f"{shot}.png"), full_page=True)
    # The sidebar button, on a wide screen: hides the chapter list, and shows it again.
    shown_before = sidebar_shown(pg)
    click_sidebar_button(pg)
    hidden = not sidebar_shown(pg)
    click_sidebar_button(pg)
    if not (shown_before and hidden and sidebar_shown(pg)):
        problems.append(f"the sidebar button at 1280 px: list shown {shown_before}, hidden after a click {hidden}, "
                        f"shown after a second {sidebar_shown(pg)}")
    pg.mouse.move(1270, 890)                     # no hover or focus colours left over from the clicks
    pg.evaluate("() => document.activeElement && document.activeElement.blur()")
    contrast = contrast_failures(pg, "light") + contrast_failures(pg, "dark")
    pg.screenshot(path=str(shots / f"{shot}-dark.png"))
    if contrast:
        problems.append(f"{len(contrast)} text(s) below 4.5:1 contrast, e.g. {contrast[:3]}")
    wide = sum(len(layout[key]) for key in ("wide_blocks", "wide_equations", "wide_tables"))
    return {"equations": stats["equations"], "images": len(stats["images"]), "links": internal,
            "backlinks": stats["backlinks"], "plots": len(plots), "citations": layout["citations"],
            "split": len(layout["split_citations"]), "contrast": len(contrast), "wide": wide}, problems


def check_phone(pg, page: Path, shot: Path) -> list[str]:
    """At 390 px: the sidebar button opens the chapter list; code fits, in a legible size."""
    problems = []
    pg.goto(page.as_uri(), wait_until="load")
    pg.wait_for_timeout(300)
    wide = pg.evaluate(LAYOUT)["wide_blocks"]                 # the same measure as at 1280 px
    sizes = pg.evaluate("() => Array.from(document.querySelectorAll('main div.highlight pre'))"
                        ".map(p => parseFloat(getComputedStyle(p).fontSize))")
    small = sorted({size for size in sizes if size < SMALLEST_CODE_FONT})
    if wide:
        problems.append(f"code blocks wider than a 390 px screen, starting: {wide[:3]}")
    if small:
        problems.append(f"code at {small} px on a phone (< {SMALLEST_CODE_FONT})")
    pg.screenshot(path=str(shot))
    hidden_before = not sidebar_shown(pg)
    click_sidebar_button(pg)
    if not (hidden_before and sidebar_shown(pg)):
        problems.append(f"the sidebar button at 390 px does not open the chapter list (hidden before the click: "
                        f"{hidden_before})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--shots", type=Path, default=ROOT / "_build" / "screenshots")
    args = parser.parse_args()
    html = args.html.resolve()
    pages = [html / (Path(c).with_suffix(".html")) for c in toc_chapters(ROOT)]
    pages += [html / "book" / "results.html", html / "book" / "api.html"]
    pages = list(dict.fromkeys(p for p in pages if p.suffix == ".html"))
    search_index = (html / "searchindex.js").read_text(encoding="utf-8")
    totals = dict.fromkeys(("equations", "images", "links", "backlinks", "plots", "citations", "split", "contrast",
                            "wide"), 0)
    failed, ids_cache = 0, {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for page in pages:
            if not page.exists():
                print(f"FAIL {page.relative_to(html)}: not built")
                failed += 1
                continue
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            stats, problems = check_page(pg, html, page, search_index, ids_cache, args.shots)
            pg.close()
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            shot = page.relative_to(html).with_suffix("").as_posix().replace("/", "_")
            problems += check_phone(phone, page, args.shots / f"{shot}-phone.png")
            phone.close()
            for k in totals:
                totals[k] += stats[k]
            status = "FAIL" if problems else "ok  "
            failed += bool(problems)
            print(f"{status} {page.relative_to(html)}: {stats['equations']} equations, {stats['images']} images, "
                  f"{stats['links']} internal links" + "".join(f"\n     - {p}" for p in problems))
        browser.close()
    print(f"checked {len(pages)} pages at 1280 and 390 px: {totals['equations']} equations, {totals['images']} images "
          f"({totals['plots']} plots), {totals['links']} internal links, {totals['backlinks']} links from equations to "
          f"code, {totals['citations']} citations in code ({totals['split']} split); {totals['wide']} blocks, "
          f"equations or tables wider than the column, {totals['contrast']} contrast failures (light and dark); "
          f"screenshots in {args.shots}")
    if not totals["backlinks"]:
        print("FAIL no equation links back to the code that implements it")
        failed += 1
    print(f"browser: {len(pages) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
