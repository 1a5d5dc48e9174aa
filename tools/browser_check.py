"""Check the built book the way a reader sees it: headless Chromium, driven by Playwright.

    python tools/browser_check.py [--html _build/html] [--shots _build/screenshots]

For every page in _toc.yml: it loads without console errors; MathJax rendered every equation
(no error nodes, no raw $$ left in the text); every image loaded (non-zero natural size); every
internal link and #fragment resolves to a file and an element that exist; the page is in the
search index. A full-page screenshot of each page goes to --shots. Exit 1 if any check fails.
Needs Debian's chromium (/usr/bin/chromium) and the playwright package (the `test` extra).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from playwright.sync_api import sync_playwright

import neuroforge_lit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from booktools.tangle import toc_chapters  # noqa: E402

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
            .filter(c => /\beq-[A-Za-z0-9_-]+/.test(c.textContent) && !c.querySelector('a.nf-eqref'))
            .map(c => c.textContent).slice(0, 3),
        backlinks: document.querySelectorAll('main p.nf-implemented-by a').length,
        wide_code: Array.from(document.querySelectorAll('main div.cell_input pre'))
            .filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.innerText.split('\\n')[0]).slice(0, 3),
    })""")
    if stats["wide_code"]:
        problems.append(f"code cells wider than the column at {pg.viewport_size['width']} px (they scroll "
                        f"sideways), starting: {stats['wide_code']}")
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
    shots.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(shots / (docname.replace("/", "_") + ".png")), full_page=True)
    return {"equations": stats["equations"], "images": len(stats["images"]), "links": internal,
            "backlinks": stats["backlinks"]}, problems


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
    totals, failed, ids_cache = {"equations": 0, "images": 0, "links": 0, "backlinks": 0}, 0, {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for page in pages:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            if not page.exists():
                print(f"FAIL {page.relative_to(html)}: not built")
                failed += 1
                continue
            stats, problems = check_page(pg, html, page, search_index, ids_cache, args.shots)
            pg.close()
            for k in totals:
                totals[k] += stats[k]
            status = "FAIL" if problems else "ok  "
            failed += bool(problems)
            print(f"{status} {page.relative_to(html)}: {stats['equations']} equations, {stats['images']} images, "
                  f"{stats['links']} internal links" + "".join(f"\n     - {p}" for p in problems))
        browser.close()
    print(f"checked {len(pages)} pages: {totals['equations']} equations, {totals['images']} images, "
          f"{totals['links']} internal links, {totals['backlinks']} links from equations to code; "
          f"screenshots in {args.shots}")
    if not totals["backlinks"]:
        print("FAIL no equation links back to the code that implements it")
        failed += 1
    print(f"browser: {len(pages) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
