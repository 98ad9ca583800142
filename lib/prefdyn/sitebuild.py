"""A small Sphinx extension for the book's site build (listed in ``_config.yml``'s ``extra_extensions``).

Jupyter Book 1.x with Sphinx 7.4 writes the inline configuration scripts of sphinx-togglebutton and
sphinx-thebe twice into every page: the HTML builder re-reads the registered scripts, and an inline
script registered with ``filename=None`` is not recognised as the same as one registered with ``''``.
The second ``const THEBE_JS_URL = ...`` then throws "Identifier has already been declared" in the browser.
This extension, on ``html-page-context``:

- removes duplicate scripts (same file, same attributes, same inline body), keeping the first;
- removes sphinx-thebe's scripts altogether: the book has no live-code (thebe) buttons, and its inline
  configuration names a CDN address that nothing should ever load.
"""

from __future__ import annotations

from typing import Any


def _key(js: Any) -> tuple:
    filename = getattr(js, "filename", js) or ""
    attributes = tuple(sorted((getattr(js, "attributes", {}) or {}).items()))
    return str(filename), attributes


def _is_thebe(js: Any) -> bool:
    filename = str(getattr(js, "filename", js) or "")
    body = str((getattr(js, "attributes", {}) or {}).get("body", ""))
    return "sphinx-thebe" in filename or "THEBE_JS_URL" in body or "thebe@" in filename


def clean_scripts(scripts: list) -> list:
    """``scripts`` without duplicates and without sphinx-thebe's scripts, order kept."""
    seen: set[tuple] = set()
    out = []
    for js in scripts:
        key = _key(js)
        if key in seen or _is_thebe(js):
            continue
        seen.add(key)
        out.append(js)
    return out


def _page_context(app, pagename, templatename, context, doctree) -> None:
    if "script_files" in context:
        context["script_files"] = clean_scripts(list(context["script_files"]))


def setup(app):
    app.connect("html-page-context", _page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
