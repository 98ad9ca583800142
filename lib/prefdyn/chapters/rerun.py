"""The "Rerun this chapter" box of every chapter and the book's Parameters page, from the declarations.

Each chapter has, below its introduction, a collapsed box (sphinx-design's ``dropdown``) that says how to rerun it: the
``prefdyn run`` command, the plain papermill command, ``prefdyn check``, and a table of all its parameters
(name, default as the command line takes it, allowed values, meaning) followed by the constraints between
them. The Parameters page (``book/parameters.md``) gathers the same tables for every chapter, in book order.
Both are rendered by :func:`parameters_table` (one source), from :mod:`prefdyn.chapters.catalog`: nothing
about a parameter is typed twice.

The box is a markdown cell with the id :data:`CELL_ID` and the metadata :data:`MARK`, inserted after the
chapter's first markdown cell (its title and introduction) by :func:`insert_box`:

- :func:`prefdyn.chapters.runner.source_notebook` inserts it into every notebook it executes, after the
  source cells got their stable ids (``cell-NNN``), so the ids of the source cells do not move;
- :func:`refresh_book_notebooks` inserts or updates it in the executed chapters ``book/<id>.ipynb`` without
  re-executing them (``prefdyn book`` calls it), changing nothing else in the file.

Why after the whole first cell rather than right under the ``# Title`` line: the first cell is the
chapter's source text, and splitting it would make the executed chapter differ from its source in more than
one marked cell (``tests/test_book.py`` compares them) and rewrite a cell of every committed notebook. The
introduction says what the chapter computes, which is what a reader wants to know before rerunning it, and
the box then sits right above the ``parameters`` cell it documents.
"""

from __future__ import annotations

import copy
import os
import shlex
from pathlib import Path

from .params import Chapter, Param, describe_check, format_value

__all__ = ["CELL_ID", "MARK", "NO_PARAMETERS", "box_cell", "commands", "example_param", "insert_box",
           "is_generated", "parameters_page", "parameters_table", "refresh_book_notebooks", "rerun_box"]

#: The id of the generated cell (the source cells' ids are ``cell-NNN``).
CELL_ID = "rerun"
#: Cell metadata marking a cell as generated from the declarations (not part of the chapter's source).
MARK = {"prefdyn": "generated"}
#: The metadata papermill adds to every cell it runs, as :func:`prefdyn.chapters.runner.clean_executed`
#: leaves it: a refreshed box equals the one a re-execution writes.
_EXECUTED_META = {"papermill": {"status": "completed"}, "tags": []}

NO_PARAMETERS = "This chapter has no parameters: `prefdyn run` and papermill rerun it as it is."


# ------------------------------------------------------------------------------------------------ markdown
def _cell(text: str) -> str:
    """``text`` (inline MyST: math, code and emphasis are kept) safe inside a markdown table cell: a ``|``
    would end the cell, so it is escaped (``\\|``, which markdown-it turns back into ``|``, in math too)."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    """``text`` as an inline code span: a fence longer than any run of backticks in it; an empty value
    reads ``''`` (what the shell takes for an empty string)."""
    if text == "":
        return "`''`"
    run = longest = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _value(p: Param) -> str:
    """``p``'s default as the command line takes it (:func:`format_value`), in code; a list's items are
    separate code spans joined by ``,<wbr>``: a long list may wrap in a table cell (code does not wrap)
    while the text, as selected and copied, stays exactly ``a,b,c``. A ``|`` is escaped, as in :func:`_cell`."""
    if p.type.startswith("list["):
        text = ",<wbr>".join(_code(format_value(v)) for v in p.default)
    else:
        text = _code(format_value(p.default))
    return text.replace("|", "\\|")


def _describe(check) -> str:
    return describe_check(check)


def parameters_table(chapter: Chapter) -> str:
    """The markdown of ``chapter``'s parameters: a table (name, default as the command line takes it, allowed
    values, meaning) and the constraints between them; :data:`NO_PARAMETERS` if it has none."""
    if not chapter.params:
        return NO_PARAMETERS
    rows = ["| Parameter | Default | Allowed | Meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| {_code(p.name)} | {_value(p)} | {_cell(p.allowed())} | {_cell(p.help)} |"
             for p in chapter.params]
    text = "\n".join(rows)
    if chapter.checks:
        text += ("\n\nConstraints between the parameters, also checked before anything runs:\n\n"
                 + "\n".join(f"- {' '.join(_describe(c).split())}" for c in chapter.checks))
    return text


def example_param(chapter: Chapter) -> Param | None:
    """The parameter the box's commands set as an example: the first one with a single value (a list is
    long to read in a command), else the first; ``None`` for a chapter without parameters."""
    singles = [p for p in chapter.params if not p.type.startswith("list[")]
    return (singles or list(chapter.params) or [None])[0]


def commands(chapter: Chapter) -> dict[str, str]:
    """The box's shell commands for ``chapter`` (``run``, ``papermill``, ``check``), each setting
    :func:`example_param` to its default (quoted for a POSIX shell)."""
    p = example_param(chapter)
    setting = f" -p {p.name} {shlex.quote(format_value(p.default))}" if p is not None else ""
    cid = chapter.id
    return {
        "run": f"prefdyn run {cid}{setting}",
        "papermill": f"papermill book/{cid}.ipynb runs/{cid}.ipynb{setting}",
        "check": f"prefdyn check {cid}",
    }


def rerun_box(chapter: Chapter) -> str:
    """The markdown of ``chapter``'s collapsed "Rerun this chapter" box (sphinx-design ``dropdown``)."""
    cmd = commands(chapter)
    p = example_param(chapter)
    after = ("the executed notebook and its key numbers go to a folder under `runs/`. Plain papermill works "
             "too:")
    if p is not None:
        after = (f"The command sets `{p.name}` to its default: change the value, or set any other parameter of "
                 "the table below (repeat `-p NAME VALUE`; a list is written `a,b,c`). The values are checked "
                 f"before anything runs; {after}")
    else:
        after = after[0].upper() + after[1:]
    return f"""\
:::{{dropdown}} Rerun this chapter
:icon: play

From a clone of the repository, after `make book` (see {{doc}}`the introduction <intro>`), with `.venv/bin`
on your `PATH`:

```bash
{cmd['run']}
```

{after}

```bash
mkdir -p runs
{cmd['papermill']}
```

To see whether the chapter reproduces the book's key numbers on your machine:

```bash
{cmd['check']}
```

{parameters_table(chapter)}

Every chapter's parameters: {{doc}}`parameters`.
:::
"""


def parameters_page(root: Path) -> str:
    """The book's Parameters page (``book/parameters.md``): every chapter's parameters, in book order."""
    from .catalog import CHAPTERS

    parts = ["""\
# Parameters

Every chapter is a notebook with one cell of parameters; this page lists them all, with their defaults (the
values the book was executed with), the values allowed and the constraints between them. Set them with
`prefdyn run <chapter> -p NAME VALUE` (repeat `-p` for more; a list is written `a,b,c`) or with plain
`papermill book/<chapter>.ipynb out.ipynb -p NAME VALUE`; a value outside what is allowed fails at once,
with a one-line message, before anything runs. `prefdyn list` prints the same in a terminal, and a box
below each chapter's introduction gives its commands (see {doc}`the introduction <intro>` for how to install).
"""]
    for chapter in CHAPTERS.values():
        parts.append(f"## {chapter.title}\n\nChapter {{doc}}`{chapter.id}` (`prefdyn run {chapter.id}`)\n\n"
                     f"{parameters_table(chapter)}\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ notebooks
def box_cell(chapter: Chapter):
    """The generated markdown cell holding :func:`rerun_box` (id :data:`CELL_ID`, metadata :data:`MARK`)."""
    import nbformat

    cell = nbformat.v4.new_markdown_cell(rerun_box(chapter).rstrip("\n"), id=CELL_ID)
    cell.metadata.update(copy.deepcopy(MARK))
    return cell


def is_generated(cell) -> bool:
    """Whether ``cell`` is a generated cell (carries :data:`MARK`), not part of the chapter's source."""
    return all(cell.get("metadata", {}).get(k) == v for k, v in MARK.items())


def insert_box(nb, chapter: Chapter, executed: bool = False):
    """Put ``chapter``'s box into ``nb`` (in place; returns ``nb``): any generated cell is removed, then the
    box goes right after the first markdown cell (the title and introduction), or first if there is none.
    ``executed``: ``nb`` was run by papermill, so the cell gets the metadata papermill gives every cell."""
    nb.cells = [c for c in nb.cells if not is_generated(c)]
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
    cell = box_cell(chapter)
    if executed:
        for key, value in _EXECUTED_META.items():
            cell.metadata.setdefault(key, copy.deepcopy(value))
    if any(c.get("id") == CELL_ID for c in nb.cells):
        raise ValueError(f"{chapter.id}: a source cell already has the id {CELL_ID!r} of the generated box")
    nb.cells.insert(first + 1, cell)
    return nb


def refresh_book_notebooks(root: Path) -> list[str]:
    """Insert or update the box in every executed chapter ``book/<id>.ipynb`` under ``root``, without
    re-executing it: the rest of the file stays byte for byte as it was (written like the runner writes,
    with :func:`nbformat.write`). Returns the paths written (relative to ``root``): a notebook whose box is
    already current is not touched."""
    import nbformat

    from .catalog import CHAPTERS

    root = Path(root)
    written = []
    for chapter in CHAPTERS.values():
        path = root / "book" / f"{chapter.id}.ipynb"
        if not path.is_file():
            continue
        old = path.read_text(encoding="utf-8")
        nb = nbformat.reads(old, as_version=4)
        insert_box(nb, chapter, executed="papermill" in nb.metadata)
        new = nbformat.writes(nb)
        new = new if new.endswith("\n") else new + "\n"       # as nbformat.write ends the file
        if new != old:
            tmp = path.with_name(f".{path.name}.partial")
            tmp.write_text(new, encoding="utf-8")
            os.replace(tmp, path)
            written.append(str(path.relative_to(root)))
    return written
