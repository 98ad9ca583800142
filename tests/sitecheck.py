"""Checks of the built HTML site, shared by tests/test_site.py (static HTML) and tests/test_browser.py.

Every check is a plain function of a page's HTML (or a CSS file's text) that returns a list of offending
snippets, empty when the page is fine, so the tests can feed it crafted bad HTML and see it fail.

- :func:`raw_tex`: TeX delimiters left in the text outside the elements MathJax typesets (Sphinx writes math
  as ``\\(..\\)`` inside ``<span class="math">`` and ``\\[..\\]`` inside ``<div class="math">``); scripts,
  styles, source code of cells and inline code literals are not text a reader should see typeset.
- :func:`tables_as_text`: a paragraph starting with ``|``: a markdown table rendered as text.
- :func:`bad_outputs`: stderr, tracebacks, errors, warnings or progress bars in a cell output.
- :func:`missing_images`: an ``<img>`` (``src`` or ``srcset``) that is not a file of the built site.
- :func:`external_urls_html` / :func:`external_urls_css`: anything that would be loaded from outside the
  site (scripts, images, frames, media, stylesheets, preloads, icons, CSS ``url()`` and ``@import``...).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml
from bs4 import BeautifulSoup, NavigableString, Tag

# --------------------------------------------------------------------------------------------- pages


def toc_pages(root: Path) -> list[tuple[str, str]]:
    """Every page of ``_toc.yml`` as ``(stem, path of its HTML relative to the site)``, in book order."""
    toc = yaml.safe_load((Path(root) / "_toc.yml").read_text(encoding="utf-8"))
    files: list[str] = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    files = [re.sub(r"\.(md|ipynb|rst)$", "", f) for f in files]
    return [(Path(f).name, f"{f}.html") for f in files]


def all_pages(root: Path) -> list[tuple[str, str]]:
    """The pages of ``_toc.yml`` plus ``index.html`` (the redirect to the root page)."""
    return [*toc_pages(root), ("index", "index.html")]


# --------------------------------------------------------------------------------------------- helpers


def _soup(html: str) -> BeautifulSoup:
    return BeautifulSoup(html, "html.parser")


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def snippet(text: str, start: int = 0, end: int | None = None, width: int = 60) -> str:
    """``text[start:end]`` with ``width`` characters of context either side, whitespace squashed."""
    end = start if end is None else end
    lo, hi = max(0, start - width), min(len(text), end + width)
    return ("..." if lo else "") + _squash(text[lo:hi]) + ("..." if hi < len(text) else "")


def _classes(tag: Tag) -> list[str]:
    return list(tag.get("class") or [])


def _describe(tag: Tag) -> str:
    cls = ".".join(_classes(tag))
    return f"<{tag.name}{'.' + cls if cls else ''}>"


BLOCKS = {"p", "li", "dt", "dd", "td", "th", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "caption",
          "figcaption", "blockquote", "div", "section", "article", "main", "aside", "nav", "header",
          "footer", "body", "html", "table", "tr", "ul", "ol", "dl", "figure", "details", "summary"}


def _block_texts(soup: BeautifulSoup) -> list[str]:
    """The text of the document grouped by its nearest block-level element, in document order, so that
    ``$`` + ``$`` in two separate paragraphs never reads as ``$$`` but inline markup does not split one."""
    groups: dict[int, list[str]] = {}
    for node in soup.find_all(string=True):
        if not isinstance(node, NavigableString) or type(node) is not NavigableString:
            continue                                   # comments, doctype, CDATA...
        block = next((p for p in node.parents if p.name in BLOCKS), None)
        groups.setdefault(id(block), []).append(str(node))
    return ["".join(parts) for parts in groups.values()]


# --------------------------------------------------------------------------------------------- raw TeX

# Opening delimiters, environments, and inline $...$ holding a TeX command (a lone "$5" is not math).
RAW_TEX = re.compile(r"\$\$|\\\(|\\\[|\\begin\{[A-Za-z*]+\}|\$[^$\n]{0,200}?\\[A-Za-z]+[^$\n]{0,200}?\$")
NOT_PROSE = "script, style, noscript, template, .math, .cell_input, code.literal, .MathJax, mjx-container"


def raw_tex(html: str) -> list[str]:
    """Raw TeX delimiters (``$$``, ``\\(``, ``\\[``, ``\\begin{``, ``$..\\cmd..$``) outside math elements."""
    soup = _soup(html)
    for tag in soup.select(NOT_PROSE):
        tag.decompose()
    out = []
    for text in _block_texts(soup):
        out += [snippet(text, m.start(), m.end()) for m in RAW_TEX.finditer(text)]
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------- tables


TABLE_RULE = re.compile(r"\|\s*:?(?:-{3,}|[\u2013\u2014]+):?\s*\|")    # "| --- |", "|:---:|", smartquoted "|—|"


def tables_as_text(html: str) -> list[str]:
    """Paragraphs that start with ``|`` and read as a markdown table: a markdown table rendered as plain
    text. A table row also ends its line with ``|``, or the paragraph holds a delimiter row ``| --- |``;
    this keeps an absolute value that opens a paragraph (``|dL/dx| at x = 1: 3``) out of it."""
    out = []
    for p in _soup(html).find_all("p"):
        text = p.get_text().strip()
        first = text.splitlines()[0].rstrip() if text else ""
        if text.startswith("|") and ((len(first) > 1 and first.endswith("|")) or TABLE_RULE.search(text)):
            out.append(snippet(text, 0, 0, 100))
    return out


# --------------------------------------------------------------------------------------------- outputs

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s*File \"[^\"]+\", line \d+", re.M)
PROGRESS = re.compile(
    r"\d{1,3}%\|[^|\n]{0,120}\|"                     # tqdm bar: " 42%|####      | 21/50"
    r"|\b\d+(?:\.\d+)?[kMG]?/\d+(?:\.\d+)?[kMG]? \[\d+:\d\d"   # " 21/50 [00:01<00:02, ..."
    r"|\[\d+:\d\d(?::\d\d)?<[\d:?]+"                 # "[00:01<00:02"
    r"|\b\d+(?:\.\d+)?\s?(?:it/s|s/it)\b"            # "12.3it/s", "1.2 s/it"
)
WARNING = re.compile(r"\b[A-Z]\w*Warning: |^\s*warnings\.warn\(", re.M)
BAD_OUTPUT_CLASSES = {"stderr", "traceback", "error"}


def bad_outputs(html: str) -> list[str]:
    """stderr / traceback / error outputs (by myst-nb's classes ``output stderr`` and ``output traceback``),
    and tracebacks, Python warnings or progress bars in the text of any cell output."""
    soup = _soup(html)
    out = []
    for tag in soup.find_all(class_="output"):
        bad = BAD_OUTPUT_CLASSES & set(_classes(tag))
        if bad:
            out.append(f"{_describe(tag)} ({'/'.join(sorted(bad))} output): {snippet(tag.get_text(), 0, 0, 100)}")
    for cell in soup.select(".cell_output"):
        text = cell.get_text()
        for what, rx in (("traceback", TRACEBACK), ("progress bar", PROGRESS), ("warning", WARNING)):
            out += [f"{what} in a cell output: {snippet(text, m.start(), m.end())}" for m in rx.finditer(text)]
    return out


# --------------------------------------------------------------------------------------------- images

LOCAL_SCHEMES = {"data", "blob", "about"}


def _srcset_urls(value: str) -> list[str]:
    return [part.strip().split()[0] for part in value.split(",") if part.strip()]


def missing_images(html: str, page: Path, site: Path) -> list[str]:
    """Every ``<img>`` source (``src`` and ``srcset``) must be a file of the site, relative to the page at
    ``page`` (a path inside ``site``); ``data:`` images must carry data."""
    site = Path(site).resolve()
    here = (site / page).parent if not Path(page).is_absolute() else Path(page).parent
    out = []
    for img in _soup(html).find_all("img"):
        urls = ([img["src"]] if img.has_attr("src") else []) + _srcset_urls(img.get("srcset") or "")
        if not urls:
            out.append(f"{_describe(img)} without src")
        for url in urls:
            parts = urlsplit(url.strip())
            if parts.scheme == "data":
                if not url.partition(",")[2].strip():
                    out.append(f"<img src={url[:80]!r}>: empty data URI")
                continue
            if parts.scheme or parts.netloc:
                out.append(f"<img src={url[:120]!r}>: not a file of the site")
                continue
            if not parts.path:
                out.append(f"<img src={url[:120]!r}>: empty path")
                continue
            path = unquote(parts.path)
            target = (site / path.lstrip("/")) if path.startswith("/") else (here / path)
            target = target.resolve()
            if not target.is_relative_to(site):
                out.append(f"<img src={url[:120]!r}>: outside the site ({target})")
            elif not target.is_file():
                out.append(f"<img src={url[:120]!r}>: no such file ({target.relative_to(site)})")
    return out


# --------------------------------------------------------------------------------------------- external

SRC_TAGS = {"script": "src", "img": "src", "iframe": "src", "frame": "src", "video": "src", "audio": "src",
            "source": "src", "embed": "src", "track": "src", "input": "src", "object": "data"}
LOADING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "preconnect", "dns-prefetch",
                "prerender", "icon", "shortcut", "apple-touch-icon", "apple-touch-icon-precomposed",
                "mask-icon", "manifest", "import"}
CSS_URL = re.compile(r"url\(\s*(?P<q>[\"']?)(?P<url>[^\"')]*)(?P=q)\s*\)", re.I)
CSS_IMPORT = re.compile(r"@import\s+(?P<q>[\"'])(?P<url>[^\"']*)(?P=q)", re.I)


def is_external(url: str) -> bool:
    """True for a URL that the browser would fetch from outside the site: any scheme other than
    ``data:``, ``blob:``, ``about:`` (http, https, ftp, ws, file...) or a protocol-relative ``//host``."""
    url = url.strip()
    if url.startswith(("//", "\\\\", "/\\", "\\/")):
        return True
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    return bool(m) and m.group(1).lower() not in LOCAL_SCHEMES


def external_urls_css(css: str) -> list[str]:
    """``url(...)`` and ``@import`` in CSS that point outside the site (comments are ignored)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out = []
    for rx in (CSS_URL, CSS_IMPORT):
        out += [snippet(css, m.start(), m.end(), 30) for m in rx.finditer(css) if is_external(m.group("url"))]
    return out


def external_urls_html(html: str) -> list[str]:
    """Everything in a page that the browser would load from outside the site by itself: ``src`` of
    script/img/iframe/video/audio/source/embed/track/input, ``object data``, ``video poster``, ``srcset``,
    ``link href`` with a loading ``rel`` (stylesheet, preload, icon...), ``<base href>``, SVG
    ``image``/``use`` hrefs, a ``meta refresh`` target, and CSS in ``<style>`` and ``style=""``."""
    soup = _soup(html)
    out = []

    def check(tag: Tag, attr: str, url: str):
        if url and is_external(url):
            out.append(f"<{tag.name} {attr}={url[:150]!r}>")

    for tag in soup.find_all(True):
        name = tag.name.lower()
        if name in SRC_TAGS and tag.has_attr(SRC_TAGS[name]):
            check(tag, SRC_TAGS[name], tag[SRC_TAGS[name]])
        if name == "video" and tag.has_attr("poster"):
            check(tag, "poster", tag["poster"])
        for attr in ("srcset", "imagesrcset"):
            for url in _srcset_urls(tag.get(attr) or ""):
                check(tag, attr, url)
        if name == "link":
            rels = {r.lower() for r in (tag.get("rel") or [])}
            if rels & LOADING_RELS:
                check(tag, f"rel={' '.join(sorted(rels))} href", tag.get("href") or "")
        if name == "base":
            check(tag, "href", tag.get("href") or "")
        if name in ("image", "use", "feimage"):
            for attr in ("href", "xlink:href"):
                check(tag, attr, tag.get(attr) or "")
        if name == "meta" and (tag.get("http-equiv") or "").lower() == "refresh":
            m = re.search(r"url\s*=\s*['\"]?([^'\";]+)", tag.get("content") or "", re.I)
            if m:
                check(tag, "http-equiv=refresh url", m.group(1))
        if tag.has_attr("style"):
            out += [f"<{name} style=...>: {s}" for s in external_urls_css(tag["style"])]
        if name == "style":
            out += [f"<style>: {s}" for s in external_urls_css(tag.get_text())]
    return out
