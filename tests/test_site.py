"""The static site builds offline, strictly, and renders math and figures without any CDN ([1/7]).

The build runs once per test session into a temporary folder: Jupyter Book 1.x, no execution (the chapters
in book/ are already executed), warnings as errors, nitpicky (``-W -n --keep-going``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = [
    re.compile(r"<script[^>]*\bsrc=[\"']?(?:https?:)?//", re.I),                  # remote scripts
    re.compile(r"<link[^>]*\bhref=[\"']?(?:https?:)?//[^>]*>", re.I),            # remote stylesheets / fonts / preloads
    re.compile(r"@import\s+(?:url\()?[\"']?(?:https?:)?//", re.I),               # CSS imports
    re.compile(r"url\(\s*[\"']?(?:https?:)?//", re.I),                           # CSS fonts / images
]


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    exe = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(exe), "build", str(ROOT), "--builder", "html", "--path-output", str(out),
                           "-W", "-n", "--keep-going"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return out / "_build" / "html"


def test_every_page_is_built(site):
    from prefdyn.chapters import CHAPTERS

    for page in ["intro", "notation", "references", *CHAPTERS]:
        assert (site / "book" / f"{page}.html").is_file(), page
    assert (site / "index.html").is_file()


def test_no_external_scripts_or_stylesheets(site):
    offenders = []
    for path in [*site.rglob("*.html"), *site.rglob("*.css")]:
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".css":
            text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)   # licence comments mention URLs
        for rx in EXTERNAL:
            offenders += [f"{path.relative_to(site)}: {m.group(0)[:120]}" for m in rx.finditer(text)]
    assert not offenders, "\n".join(offenders[:20])


def test_math_is_rendered_by_bundled_mathjax(site):
    html = (site / "book" / "dpo-margin.html").read_text(encoding="utf-8")
    m = re.search(r"<script[^>]*src=\"([^\"]*mathjax[^\"]*tex-chtml\.js)\"", html)
    assert m, "no MathJax script on the chapter page"
    assert (site / "book" / m.group(1)).resolve().is_file(), "MathJax is referenced but not bundled"
    assert r"\log\sigma" in html or r"\sigma" in html


def test_chapter_figures_are_embedded_images(site):
    html = (site / "book" / "dpo-margin.html").read_text(encoding="utf-8")
    imgs = re.findall(r"<img[^>]*src=\"([^\"]+\.png)\"", html)
    assert imgs, "the DPO-margin chapter shows no figure"
    for src in imgs:
        assert (site / "book" / src).resolve().is_file(), src
