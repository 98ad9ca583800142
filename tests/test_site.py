"""The static site builds offline, strictly, and every page renders: math, tables, outputs, images, no CDN.

The build runs once per test session (the ``site`` fixture of tests/conftest.py, shared with the browser
test): Jupyter Book 1.x, no execution (the chapters in book/ are already executed), warnings as errors,
nitpicky (``-W -n --keep-going``). The checks themselves live in tests/sitecheck.py; every check is first
fed crafted bad HTML here (so it cannot silently pass), then applied to every page of ``_toc.yml``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sitecheck
from sitecheck import (bad_outputs, external_urls_css, external_urls_html, missing_images, raw_tex,
                       tables_as_text)

ROOT = Path(__file__).resolve().parents[1]
PAGES = sitecheck.all_pages(ROOT)          # every page of _toc.yml, then index.html


def _report(problems: list[str], what: str, limit: int = 40) -> str:
    more = f"\n... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} {what}:\n" + "\n".join(problems[:limit]) + more


def _over_pages(site: Path, check) -> list[str]:
    problems = []
    for stem, rel in PAGES:
        html = (site / rel).read_text(encoding="utf-8")
        problems += [f"{rel}: {s}" for s in check(html, rel)]
    return problems


# ---------------------------------------------------------------------------------------- the checks fail
# Each check is shown crafted bad HTML (and must report it) and the good HTML Sphinx writes (and must not).

MATH_OK = ('<p>The margin <span class="math notranslate nohighlight">\\(m = \\beta\\,x\\)</span> grows.</p>'
           '<div class="math notranslate nohighlight">\\[\\ell = -\\log\\sigma(m)\\]</div>'
           '<div class="cell_output"><div class="output text_latex math notranslate">\\[\\displaystyle x\\]</div></div>'
           '<div class="cell_input"><pre>display(Markdown(r"$$\\beta$$"))</pre></div>'
           '<p>Use <code class="docutils literal"><span class="pre">$$</span></code> for display math.</p>'
           '<script>window.x = "$$ \\\\( \\\\["</script><style>p::before { content: "\\\\(" }</style>'
           '<p>It costs $5 and $6.</p><p>a $</p><p>$ b</p>')


@pytest.mark.parametrize("bad", [
    "<p>$$\\ell = -\\log\\sigma(m)$$</p>",
    "<p>where \\(m\\) is the margin</p>",
    "<p>\\[ x = 1 \\]</p>",
    "<p>raw <em>inline</em> $\\beta$ math</p>",
    "<p>\\begin{align} a &= b \\end{align}</p>",
    '<div class="cell_output"><div class="output stream"><pre>$$x^2$$</pre></div></div>',
    '<section class="tex2jax_ignore"><ul><li><p>rate $$ 1 $$</p></li></ul></section>',
])
def test_raw_tex_check_fails_on_raw_delimiters(bad):
    found = raw_tex(MATH_OK + bad)
    assert found, bad
    assert all("$5" not in f for f in found)


def test_raw_tex_check_passes_math_elements_code_and_scripts():
    assert raw_tex(MATH_OK) == []


@pytest.mark.parametrize("bad", [
    "<p>| indicator | DPO |\n| --- | --- |\n| peak | 0.3 |</p>",
    "<p>| indicator | DPO | |\u2014|\u2014| | peak | 0.3 |</p>",          # smartquotes turned --- into em dashes
    "<p>  | a | b |</p>",
    "<div class='cell_output'><p>|:---:|---|</p></div>",
])
def test_table_check_fails_on_markdown_table_as_text(bad):
    assert tables_as_text(bad), bad


def test_table_check_passes_tables_and_absolute_values():
    good = ("<table><tr><td>| a |</td></tr></table><p>a | b | c</p>"
            "<ul><li><p>|dL/dpi_w|/|dL/dpi_l| at pi_w = 0.3: 0.3333</p></li></ul><pre>| a | b |</pre>")
    assert tables_as_text(good) == []


@pytest.mark.parametrize("bad", [
    '<div class="cell_output"><div class="output stderr highlight-myst-ansi"><pre>some warning</pre></div></div>',
    '<div class="cell_output"><div class="output traceback highlight-ipythontb"><pre>ValueError</pre></div></div>',
    '<div class="cell_output"><div class="output error"><pre>oops</pre></div></div>',
    '<div class="cell_output"><div class="output stream"><pre>Traceback (most recent call last):\n'
    '  File "x.py", line 3, in f\nValueError: no</pre></div></div>',
    '<div class="cell_output"><div class="output stream"><pre>train:  42%|####      | 21/50</pre></div></div>',
    '<div class="cell_output"><div class="output stream"><pre>21/50 [00:01&lt;00:02, 12.3it/s]</pre></div></div>',
    '<div class="cell_output"><div class="output stream"><pre>100%|##########| 50/50 [00:03&lt;00:00]</pre></div></div>',
    '<div class="cell_output"><div class="output stream"><pre>/x/y.py:3: RuntimeWarning: overflow</pre></div></div>',
])
def test_output_check_fails_on_stderr_tracebacks_and_progress_bars(bad):
    assert bad_outputs(bad), bad


def test_output_check_passes_clean_outputs():
    good = ('<div class="cell_output"><div class="output stream highlight-myst-ansi"><pre>'
            'loss 0.6931 at 50 steps, 42% of pairs mis-ordered, 21/50 seeds</pre></div>'
            '<div class="output text_plain"><pre>0.5</pre></div></div>'
            '<p>A traceback is what Python prints on an error; progress is shown with 42%|## | bars.</p>')
    assert bad_outputs(good) == []


@pytest.fixture()
def tiny_site(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "fig a.png").write_bytes(b"\x89PNG")
    (tmp_path / "outside.png").write_bytes(b"\x89PNG")
    return tmp_path


@pytest.mark.parametrize("bad", [
    '<img src="../_images/missing.png">',
    '<img src="_images/fig%20a.png">',                          # relative to the page, not to the site
    '<img alt="no source">',
    '<img src="">',
    '<img src="https://example.org/a.png">',
    '<img src="//cdn.example.org/a.png">',
    '<img src="../../outside.png">',
    '<img src="data:image/png;base64,">',
    '<img src="../_images/fig%20a.png" srcset="../_images/fig%20a.png 1x, ../_images/b@2x.png 2x">',
])
def test_image_check_fails_on_missing_images(tiny_site, bad):
    assert missing_images(bad, Path("book/page.html"), tiny_site), bad


def test_image_check_passes_files_of_the_site(tiny_site):
    good = ('<img src="../_images/fig%20a.png"><img src="/_images/fig a.png?v=1#x">'
            '<img src="data:image/png;base64,iVBORw0KGgo=" srcset="../_images/fig%20a.png 2x">')
    assert missing_images(good, Path("book/page.html"), tiny_site) == []


@pytest.mark.parametrize("bad", [
    '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>',
    '<script src="//unpkg.com/thebe"></script>',
    '<img src="http://example.org/a.png">',
    '<img src="a.png" srcset="a.png 1x, https://example.org/a@2x.png 2x">',
    '<picture><source srcset="https://example.org/a.webp"></picture>',
    '<iframe src="https://www.youtube.com/embed/x"></iframe>',
    '<video src="https://example.org/v.mp4"></video>',
    '<video poster="https://example.org/p.png"></video>',
    '<audio src="https://example.org/a.mp3"></audio>',
    '<video><source src="https://example.org/v.webm"></video>',
    '<video><track src="https://example.org/subs.vtt"></video>',
    '<embed src="https://example.org/x.svg">',
    '<object data="https://example.org/x.pdf"></object>',
    '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Lato">',
    '<link rel="preload" as="font" href="https://example.org/f.woff2">',
    '<link rel="preconnect" href="https://fonts.gstatic.com">',
    '<link rel="icon" href="https://example.org/favicon.ico">',
    '<link rel="shortcut icon" href="//example.org/favicon.ico">',
    '<link rel="preload" as="image" href="a.png" imagesrcset="https://example.org/a.png 2x">',
    '<base href="https://example.org/">',
    '<meta http-equiv="refresh" content="0; url=https://example.org/">',
    '<style>@import url("https://fonts.googleapis.com/css2?family=Inter");</style>',
    '<style>body { background: url(https://example.org/bg.png) }</style>',
    '<div style="background-image: url(\'//example.org/bg.png\')"></div>',
    '<svg><image href="https://example.org/a.png"/></svg>',
])
def test_external_check_fails_on_anything_loaded_from_outside(bad):
    assert external_urls_html(bad), bad


def test_external_check_passes_links_and_local_files():
    good = ('<a href="https://arxiv.org/abs/2305.18290">paper</a><link rel="canonical" href="https://x.org/">'
            '<link rel="stylesheet" href="../_static/theme.css?v=1"><script src="../_static/mathjax/tex-chtml.js">'
            '</script><img src="data:image/png;base64,iVBOR"><meta http-equiv="refresh" content="0; url=book/intro.html">'
            '<style>/* see https://fonts.google.com */ .x { background: url(../_static/a.png) }</style>')
    assert external_urls_html(good) == []


@pytest.mark.parametrize("bad", [
    "@import url(https://fonts.googleapis.com/css?family=Lato);",
    "@import '//cdn.example.org/x.css';",
    "@font-face { src: url('https://example.org/f.woff2') format('woff2') }",
    ".x { background: url( http://example.org/a.png ) }",
])
def test_css_check_fails_on_remote_urls(bad):
    assert external_urls_css(bad), bad


def test_css_check_passes_local_urls_and_comments():
    good = ("/*! licence: https://fontawesome.com/license */ @font-face { src: url(../webfonts/fa.woff2) }"
            ".y { background: url(\"data:image/svg+xml;charset=utf8,%3Csvg xmlns='http://www.w3.org/2000/svg'%3E\") }")
    assert external_urls_css(good) == []


# ---------------------------------------------------------------------------------------- the real site


def test_every_page_is_built(site):
    from prefdyn.chapters import CHAPTERS

    stems = [stem for stem, _ in PAGES]
    for page in ["intro", "notation", "references", *CHAPTERS]:
        assert page in stems, f"{page} is not in _toc.yml"
    for stem, rel in PAGES:
        assert (site / rel).is_file(), f"{rel} was not built"


def test_no_raw_tex_outside_math(site):
    problems = _over_pages(site, lambda html, rel: raw_tex(html))
    if problems:
        pytest.fail(_report(problems, "raw TeX delimiters outside the math MathJax typesets"), pytrace=False)


def test_no_markdown_table_rendered_as_text(site):
    problems = _over_pages(site, lambda html, rel: tables_as_text(html))
    if problems:
        pytest.fail(_report(problems, "paragraphs that are markdown tables rendered as text"), pytrace=False)


def test_no_stderr_traceback_or_progress_bar_in_outputs(site):
    problems = _over_pages(site, lambda html, rel: bad_outputs(html))
    if problems:
        pytest.fail(_report(problems, "stderr / traceback / warning / progress-bar outputs"), pytrace=False)


def test_every_image_is_a_file_of_the_site(site):
    problems = _over_pages(site, lambda html, rel: missing_images(html, Path(rel), site))
    if problems:
        pytest.fail(_report(problems, "images that are not files of the built site"), pytrace=False)


def test_nothing_is_loaded_from_outside_the_site(site):
    problems = []
    for path in sorted(site.rglob("*.html")):
        problems += [f"{path.relative_to(site)}: {s}"
                     for s in external_urls_html(path.read_text(encoding="utf-8", errors="replace"))]
    for path in sorted(site.rglob("*.css")):
        problems += [f"{path.relative_to(site)}: {s}"
                     for s in external_urls_css(path.read_text(encoding="utf-8", errors="replace"))]
    if problems:
        pytest.fail(_report(problems, "URLs that would load from outside the site"), pytrace=False)


def test_math_is_rendered_by_bundled_mathjax(site):
    problems, with_math = [], 0
    for stem, rel in PAGES[:-1]:
        html = (site / rel).read_text(encoding="utf-8")
        if 'class="math' not in html:
            continue
        with_math += 1
        m = re.search(r"<script[^>]*src=\"([^\"]*mathjax[^\"]*tex-chtml\.js)\"", html)
        if not m:
            problems.append(f"{rel}: shows math but loads no MathJax")
        elif not ((site / rel).parent / m.group(1)).resolve().is_file():
            problems.append(f"{rel}: MathJax {m.group(1)} is referenced but not bundled")
    assert with_math >= 5, f"only {with_math} pages show math"
    assert not problems, "\n".join(problems)
    assert r"\sigma" in (site / "book" / "dpo-margin.html").read_text(encoding="utf-8")


def test_chapter_figures_are_embedded_images(site):
    html = (site / "book" / "dpo-margin.html").read_text(encoding="utf-8")
    imgs = re.findall(r"<img[^>]*src=\"([^\"]+\.png)\"", html)
    assert imgs, "the DPO-margin chapter shows no figure"
    for src in imgs:
        assert (site / "book" / src).resolve().is_file(), src
