"""A throw-away book root with one declared chapter, for tests of the runner and the CLI."""

from __future__ import annotations

from pathlib import Path

from prefdyn.chapters import Chapter, Param, catalog

_HEADER = ("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
           "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n")


def make_book(root: Path, monkeypatch, chapter_id: str, cells: list[str], data_folder: bool = True) -> Path:
    """Write ``notebooks/<chapter_id>.md`` under ``root`` (a ``parameters`` cell ``steps = 3``, then one code
    cell per item of ``cells``), the folders a book needs, and declare the chapter (parameter ``steps``) in
    the catalog for the duration of the test; ``data_folder``: also create ``book/data``. Returns ``root``."""
    (root / "notebooks").mkdir()
    (root / "book" / ("data" if data_folder else "")).mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    body = "".join(f"```{{code-cell}} ipython3\n{c.rstrip()}\n```\n\n" for c in cells)
    (root / "notebooks" / f"{chapter_id}.md").write_text(
        _HEADER + f"# {chapter_id}\n\n```{{code-cell}} ipython3\n:tags: [parameters]\n\nsteps = 3\n```\n\n" + body)
    monkeypatch.setitem(catalog.CHAPTERS, chapter_id,
                        Chapter(chapter_id, chapter_id.title(), "test", params=[Param("steps", "int", 3, "s", low=1)]))
    return root
