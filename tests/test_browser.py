"""Every page of the book, loaded in a real headless browser, renders: math, images, layout, offline.

Debian's Chromium (``/usr/bin/chromium``, installed by ``make site-test`` / ``make test``), driven by
Playwright (never its own browsers), loads every page of ``_toc.yml`` plus ``index.html`` from an HTTP server
on 127.0.0.1 that serves the site built once per session by the ``site`` fixture (tests/conftest.py). Per
page it checks that

- MathJax typeset every formula: it finished (``MathJax.startup.promise``), every ``.math`` element holds
  typeset output, no ``mjx-merror``, and no raw ``$$``, ``\\(``, ``\\[`` is left in the visible text;
- every ``<img>`` loaded (``naturalWidth > 0``);
- no cell output, ``pre`` (cell sources and code blocks included), table or display equation is wider than
  the content column
  (``scrollWidth > clientWidth``, or its right edge past the right edge of ``article.bd-article``,
  sphinx-book-theme's content column), and the page itself does not scroll sideways, at a 1280 x 800
  laptop viewport;
- no request leaves the test server (every request is recorded; any other one is aborted and reported),
  every local request succeeds, and no uncaught script error is thrown;

and saves a full-page screenshot to ``_build/screenshots/<page>.png``. Each failure names the page and what
is wrong. ``test_browser_checks_catch_a_broken_page`` first shows every check firing on a crafted page.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sitecheck

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("PREFDYN_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "_build" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
PAGES = sitecheck.all_pages(ROOT)
ROOT_PAGE = PAGES[0][1]                    # index.html redirects here
TIMEOUT_MS = 30_000
# No background traffic: no component updates, sync, field trials, safe browsing, DNS for anything but
# the test server (a request that slipped past the route below could not leave the machine anyway).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
         "--disable-client-side-phishing-detection",
         "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
# Not reader-visible text: raw TeX there is fine (cell sources are code, inline literals are code).
NOT_PROSE = "script, style, noscript, template, .cell_input, code.literal"

MATHJAX_JS = """async (timeoutMs) => {
  const res = {nmath: document.querySelectorAll('.math').length, untypeset: [], errors: []};
  if (!res.nmath) return res;
  if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) { res.missing = true; return res; }
  const timeout = new Promise((_, reject) =>
    setTimeout(() => reject(new Error('MathJax did not finish within ' + timeoutMs + ' ms')), timeoutMs));
  try { await Promise.race([MathJax.startup.promise, timeout]); }
  catch (e) { res.failed = String(e); return res; }
  await document.fonts.ready;
  res.version = MathJax.version;
  res.ncontainers = document.querySelectorAll('mjx-container').length;
  res.untypeset = [...document.querySelectorAll('.math')]
    .filter(m => !m.querySelector('mjx-container'))
    .map(m => m.textContent.replace(/\\s+/g, ' ').trim().slice(0, 120));
  for (const item of MathJax.startup.document.math) {
    const err = item.typesetRoot && item.typesetRoot.querySelector('mjx-merror');
    if (err) res.errors.push((err.getAttribute('data-mjx-error') || 'error') + ' in: ' + String(item.math).slice(0, 120));
  }
  if (!res.errors.length)
    res.errors = [...document.querySelectorAll('mjx-merror')].map(e =>
      (e.getAttribute('data-mjx-error') || 'error') + ' in: ' + e.textContent.slice(0, 120));
  return res;
}"""

# Visible text, grouped by block element, outside scripts/styles/source code/inline code literals.
RAW_TEX_JS = """([pattern, skip]) => {
  const rx = new RegExp(pattern, 'g');
  const blocks = new Map();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || el.closest(skip) || !el.checkVisibility()) continue;
    const block = el.closest(
      'p,li,dt,dd,td,th,pre,h1,h2,h3,h4,h5,h6,caption,figcaption,blockquote,div,section,article,body');
    blocks.set(block, (blocks.get(block) || '') + node.nodeValue);
  }
  const out = [];
  for (const text of blocks.values())
    for (const m of text.matchAll(rx))
      out.push(text.slice(Math.max(0, m.index - 50), m.index + m[0].length + 50).replace(/\\s+/g, ' ').trim());
  return out;
}"""

IMAGES_JS = """async (timeoutMs) => {
  const imgs = [...document.images];
  const pending = imgs.filter(i => !i.complete).map(i => { i.loading = 'eager'; return i.decode().catch(() => null); });
  const wait = Promise.all(pending);
  await Promise.race([wait, new Promise(r => setTimeout(r, timeoutMs))]);
  return {n: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0))
                                      .map(i => ({src: i.getAttribute('src'), complete: i.complete}))};
}"""

OVERFLOW_JS = """() => {
  const col = document.querySelector('article.bd-article') || document.querySelector('main');
  if (!col) return {nocolumn: true, offenders: [], url: location.href, title: document.title,
                   body: (document.body ? document.body.innerText : '').slice(0, 200)};
  const box = col.getBoundingClientRect();
  const sel = '.cell_output, .cell_output .output, pre, table, .pst-scrollable-table-container, div.highlight, '
            + 'mjx-container[display="true"]';
  const seen = [];
  for (const el of col.querySelectorAll(sel)) {
    if (!el.getClientRects().length || !el.checkVisibility()) continue;
    const r = el.getBoundingClientRect();
    const scrolls = el.scrollWidth - el.clientWidth > 1, past = r.right - box.right > 1;
    if (scrolls || past) seen.push([el, r, scrolls, past]);
  }
  // Report the innermost offenders: a cell output too wide because of its table is reported as the table.
  const innermost = seen.filter(([el]) => !seen.some(([o]) => o !== el && el.contains(o)));
  const offenders = innermost.map(([el, r, scrolls, past]) => {
    const sec = el.closest('section');
    const head = sec && sec.querySelector('h1, h2, h3, h4');
    const cls = [...el.classList].filter(c => !['docutils', 'container', 'notranslate'].includes(c)).join('.');
    const where = el.closest('.cell_output') ? ' (cell output)' : el.closest('.cell_input') ? ' (cell source)'
                : el.closest('div[class*="highlight-"]') ? ' (code block)' : '';
    return {what: el.tagName.toLowerCase() + (cls ? '.' + cls : '') + where,
            section: head ? head.textContent.replace(/#$/, '').trim() : '',
            text: (el.innerText || '').trim().split('\\n')[0].slice(0, 70),
            scrollWidth: el.scrollWidth, clientWidth: el.clientWidth, width: Math.round(r.width),
            right: Math.round(r.right), scrolls, past};
  });
  const doc = document.documentElement;
  return {columnRight: Math.round(box.right), columnWidth: Math.round(box.width),
          pageScrollWidth: doc.scrollWidth, pageClientWidth: doc.clientWidth, offenders};
}"""


@contextlib.contextmanager
def serve(directory: Path):
    """An HTTP server on 127.0.0.1, on a free port, serving ``directory``; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server(site):
    """The built site (the session's one build, tests/conftest.py) over HTTP on 127.0.0.1."""
    with serve(site) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium. Playwright starts it with a fresh temporary ``--user-data-dir``, and each
    page gets a fresh browser context (no storage carried from one page to the next)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: `make site-test` installs Debian's chromium "
                    "(apt-get install -y chromium), or set PREFDYN_CHROMIUM", pytrace=False)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS,
                                      timeout=TIMEOUT_MS)
    except Exception:
        pw.stop()
        raise
    yield chromium
    chromium.close()
    pw.stop()


def inspect(browser, server: str, rel: str, screenshot: Path | None = None) -> list[str]:
    """Load ``server/rel`` in a fresh context and return every problem found (empty: the page is fine)."""
    host = urlsplit(server).netloc

    def local(url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in sitecheck.LOCAL_SCHEMES or (parts.scheme == "http" and parts.netloc == host)

    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, service_workers="block")
    context.route(lambda url: not local(url), lambda route: route.abort("blockedbyclient"))
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    requests, bad_responses, failed, errors = [], [], [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("websocket", lambda ws: requests.append(ws.url))
    page.on("response", lambda r: r.status >= 400 and bad_responses.append(f"HTTP {r.status} {r.url}"))
    page.on("requestfailed", lambda r: local(r.url) and failed.append(f"{r.url} ({r.failure})"))
    page.on("pageerror", lambda e: errors.append(f"uncaught script error: {e}"))
    problems: list[str] = []
    try:
        response = page.goto(f"{server}/{rel}", wait_until="load")
        if response is None or response.status != 200:
            problems.append(f"loading {rel} gave HTTP {response and response.status}")
        if rel == "index.html":      # a meta refresh to the root page of the book
            page.wait_for_url(f"{server}/{ROOT_PAGE}")
            page.wait_for_load_state("load")

        math = page.evaluate(MATHJAX_JS, TIMEOUT_MS)
        if math.get("missing"):
            problems.append(f"{math['nmath']} formulas but MathJax is not loaded")
        if math.get("failed"):
            problems.append(math["failed"])
        problems += [f"formula not typeset by MathJax: {t}" for t in math["untypeset"]]
        problems += [f"MathJax error: {e}" for e in math["errors"]]
        raw = page.evaluate(RAW_TEX_JS, [sitecheck.RAW_TEX.pattern, NOT_PROSE])
        problems += [f"raw TeX in the visible text: {t}" for t in dict.fromkeys(raw)]

        images = page.evaluate(IMAGES_JS, TIMEOUT_MS)
        problems += [f"image did not load: <img src={b['src']!r}> (complete={b['complete']})"
                     for b in images["broken"]]

        lay = page.evaluate(OVERFLOW_JS)
        if lay.get("nocolumn"):
            problems.append(f"no content column (article.bd-article) on {lay['url']} (title {lay['title']!r}, "
                            f"text {lay['body']!r})")
        for o in lay["offenders"]:
            why = []
            if o["scrolls"]:
                why.append(f"content {o['scrollWidth']} px wide in a {o['clientWidth']} px box (scrolls)")
            if o["past"]:
                why.append(f"box {o['width']} px wide, right edge at {o['right']} px > content column's right "
                           f"edge at {lay['columnRight']} px (column {lay['columnWidth']} px wide)")
            problems.append(f"horizontal scroll: {o['what']} in section {o['section']!r}: {'; '.join(why)}; "
                            f"starts {o['text']!r}")
        if lay.get("pageScrollWidth", 0) > lay.get("pageClientWidth", 0) + 1:
            problems.append(f"the page scrolls sideways: {lay['pageScrollWidth']} px wide in a "
                            f"{lay['pageClientWidth']} px window")

        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True, animations="disabled")
    finally:
        context.close()

    problems += [f"request outside the test server: {u}" for u in requests if not local(u)]
    problems += [f"bad response: {r}" for r in bad_responses]
    problems += [f"request failed: {f}" for f in failed]
    return problems + errors


# Injected into the first section of a real page (under its ``tex2jax_ignore``, like chapter text).
BROKEN = (
    '<p>A raw formula $$x^2$$ and another one \\(y\\) left as text.</p>'
    '<p>Bad TeX: <span class="math notranslate nohighlight">\\(\\frac{1}\\)</span></p>'
    '<img src="../_images/no-such-figure.png" alt="missing"><img src="https://example.org/remote.png" alt="remote">'
    '<div class="cell_output docutils container"><div class="output stream highlight-myst-ansi notranslate">'
    '<div class="highlight"><pre>' + "a long printed line " * 20 + '</pre></div></div></div>'
    '<div class="pst-scrollable-table-container"><table class="table"><tr>' + "<td>wide_table_cell</td>" * 40
    + '</tr></table></div><div style="width: 2600px; height: 4px"></div>'
    '<script>fetch("https://example.org/beacon").catch(() => null); throw new Error("boom");</script>'
)
BROKEN_FINDS = ["raw TeX in the visible text: A raw formula $$x^2$$ and another one \\(y\\)",
                "MathJax error: Missing argument for \\frac in: \\frac{1}",
                "image did not load: <img src='../_images/no-such-figure.png'>",
                "image did not load: <img src='https://example.org/remote.png'>",
                "request outside the test server: https://example.org/remote.png",
                "request outside the test server: https://example.org/beacon",
                "bad response: HTTP 404", "horizontal scroll: pre (cell output)", "horizontal scroll: table",
                "the page scrolls sideways", "uncaught script error: boom"]


def test_browser_checks_catch_a_broken_page(browser, site, tmp_path):
    """The checks cannot silently pass: a real page with raw TeX, a TeX error, a missing and a remote image,
    a wide output, table and block, a remote fetch and a script error is reported on every count."""
    for entry in site.iterdir():
        if entry.name != "book":
            (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (tmp_path / "book").mkdir()
    html = (site / "book" / "notation.html").read_text(encoding="utf-8")
    at = html.index("</h1>", html.index('<article class="bd-article"')) + len("</h1>")
    (tmp_path / "book" / "broken.html").write_text(html[:at] + BROKEN + html[at:], encoding="utf-8")
    with serve(tmp_path) as url:
        problems = inspect(browser, url, "book/broken.html")
    report = "\n".join(problems)
    missed = [f for f in BROKEN_FINDS if f not in report]
    assert not missed, f"not reported: {missed}\nreported:\n{report}"


@pytest.mark.parametrize("stem,rel", PAGES, ids=[stem for stem, _ in PAGES])
def test_page_renders_in_chromium(browser, server, stem, rel):
    problems = inspect(browser, server, rel, screenshot=SCREENSHOTS / f"{stem}.png")
    if problems:
        pytest.fail(f"{stem} ({rel}), {len(problems)} problems:\n" + "\n".join(problems), pytrace=False)
