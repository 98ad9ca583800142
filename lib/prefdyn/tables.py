"""Results tables that fit the page: HTML in the book, aligned text in a terminal.

Chapters show their key numbers as small tables instead of printing them line by line. A :class:`Table`
has row labels, column labels and cells; a cell is text, a number (printed like every number of the book,
:func:`prefdyn.results.fmt`: 4 significant digits), a boolean (``yes``/``no``) or a :class:`MeanCI`, the mean
over seeds with its 95% interval, shown as the mean with the interval in small print below it.

A table wider than ``max_cols`` data columns is split into several tables with the same row labels, so
that nothing scrolls sideways on a laptop screen (the browser test checks it). The same table renders as
``text/plain`` (what nbval compares and a terminal shows) and ``text/html`` (what the book shows);
both are deterministic: no ids, no timestamps.

Build tables with :meth:`Table.from_rows` (rows of cells), :meth:`Table.indicators` (indicators down,
configurations across, from summaries of :func:`prefdyn.records.summarise`) or :meth:`Table.transposed`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .results import fmt

#: At most this many data columns per rendered table (wider tables are split; see the module docstring).
MAX_COLS = 5


@dataclass(frozen=True)
class MeanCI:
    """A mean with its interval ``[lo, hi]`` (95% over seeds in the toy chapters)."""

    mean: float
    lo: float
    hi: float

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> "MeanCI":
        """From a summary entry ``{"mean", "lo", "hi", ...}`` (``None`` = not finite)."""
        def num(v):
            return math.nan if v is None else float(v)
        return cls(num(d["mean"]), num(d["lo"]), num(d["hi"]))

    def text(self) -> str:
        return f"{fmt(self.mean)} [{fmt(self.lo)}, {fmt(self.hi)}]"

    def has_interval(self) -> bool:
        return not (math.isnan(self.lo) and math.isnan(self.hi))


def cell_text(v: Any) -> str:
    """A cell as plain text."""
    if isinstance(v, MeanCI):
        return v.text() if v.has_interval() else fmt(v.mean)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, (int, float)) or hasattr(v, "item"):
        return fmt(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(cell_text(x) for x in v) if v else "-"
    return str(v)


_CI_STYLE = "display:block;font-size:0.8em;color:#555;white-space:nowrap"


def cell_html(v: Any) -> str:
    """A cell as HTML: a :class:`MeanCI` is the mean with its interval in small print below it."""
    if isinstance(v, MeanCI):
        mean = html.escape(fmt(v.mean))
        if not v.has_interval():
            return mean
        ci = html.escape(f"[{fmt(v.lo)}, {fmt(v.hi)}]")
        return f'{mean}<span style="{_CI_STYLE}">{ci}</span>'
    return html.escape(cell_text(v))


class Table:
    """A table of results: ``columns`` (labels of the data columns), ``rows`` of ``(label, cells)``.

    ``title`` is shown above it, ``note`` below it (small print: units, what the interval is). ``corner``
    labels the row-label column.
    """

    def __init__(self, columns: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]], *, title: str = "",
                 note: str = "", corner: str = "", max_cols: int = MAX_COLS):
        self.columns = [str(c) for c in columns]
        self.rows = [(str(label), list(cells)) for label, cells in rows]
        for label, cells in self.rows:
            if len(cells) != len(self.columns):
                raise ValueError(f"Table: row {label!r} has {len(cells)} cells for {len(self.columns)} columns")
        if max_cols < 1:
            raise ValueError("Table: max_cols must be >= 1")
        self.title, self.note, self.corner, self.max_cols = title, note, corner, int(max_cols)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_rows(cls, columns: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]], **kwargs) -> "Table":
        return cls(columns, rows, **kwargs)

    @classmethod
    def indicators(cls, summaries: Mapping[str, Mapping[str, Mapping[str, Any]]],
                   rows: Sequence[tuple[str, str]], *, columns: Mapping[str, str] | None = None,
                   **kwargs) -> "Table":
        """Indicators down, configurations across: ``summaries[config][key]`` is a summary entry
        (``{"mean", "lo", "hi"}``); ``rows`` are ``(label, key)``; ``columns`` maps a config to its label
        (default: all configs, labelled by name)."""
        columns = dict(columns) if columns is not None else {c: c for c in summaries}
        body = [(label, [MeanCI.of(summaries[c][key]) for c in columns]) for label, key in rows]
        return cls(list(columns.values()), body, **kwargs)

    def transposed(self, corner: str = "") -> "Table":
        """Rows become columns (for a table with few rows and many columns)."""
        rows = [(col, [cells[j] for _, cells in self.rows]) for j, col in enumerate(self.columns)]
        return Table([label for label, _ in self.rows], rows, title=self.title, note=self.note,
                     corner=corner or self.corner, max_cols=self.max_cols)

    def cell(self, row: str, column: str) -> Any:
        """The cell at row label ``row`` and column label ``column``."""
        j = self.columns.index(column)
        for label, cells in self.rows:
            if label == row:
                return cells[j]
        raise KeyError(row)

    # ------------------------------------------------------------------ rendering
    def _blocks(self) -> list[range]:
        n = len(self.columns)
        return [range(i, min(i + self.max_cols, n)) for i in range(0, max(n, 1), self.max_cols)]

    def text(self) -> str:
        """Aligned plain text (one block per group of at most ``max_cols`` columns)."""
        out = [self.title] if self.title else []
        for b, block in enumerate(self._blocks()):
            if b:
                out.append("")
            header = [self.corner] + [self.columns[j] for j in block]
            body = [[label] + [cell_text(cells[j]) for j in block] for label, cells in self.rows]
            widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
            def line(r):
                return "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip()
            out.append(line(header))
            out.append("  ".join("-" * w for w in widths))
            out.extend(line(r) for r in body)
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p, cycle) -> None:       # IPython's text/plain
        p.text(self.text())

    def _repr_html_(self) -> str:
        parts = []
        if self.title:
            parts.append(f"<p><strong>{html.escape(self.title)}</strong></p>")
        for block in self._blocks():
            head = "".join(f'<th style="text-align:right">{html.escape(self.columns[j])}</th>' for j in block)
            rows = "".join(
                f'<tr><th style="text-align:left">{html.escape(label)}</th>'
                + "".join(f'<td style="text-align:right">{cell_html(cells[j])}</td>' for j in block) + "</tr>"
                for label, cells in self.rows)
            parts.append(f'<table class="table prefdyn-table"><thead><tr><th style="text-align:left">'
                         f"{html.escape(self.corner)}</th>{head}</tr></thead><tbody>{rows}</tbody></table>")
        if self.note:
            parts.append(f'<p style="font-size:0.85em;color:#555">{html.escape(self.note)}</p>')
        return "\n".join(parts)


def show(*tables: Table) -> None:
    """Display tables one after the other (in a notebook: as HTML)."""
    from IPython.display import display

    for t in tables:
        display(t)


def verdicts(checks: Mapping[str, Any], *, title: str = "", column: str = "holds", corner: str = "check",
             describe: Callable[[str], str] | None = None) -> Table:
    """A one-column table of named checks (booleans or short texts)."""
    rows = [((describe(k) if describe else k), [v]) for k, v in checks.items()]
    return Table([column], rows, title=title, corner=corner)
