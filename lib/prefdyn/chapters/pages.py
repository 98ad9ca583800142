"""The book's generated pages: written by ``prefdyn book`` (with or without execution) from the chapters'
declarations and saved results, never typed by hand.

:data:`PAGES` maps each generated file (relative to the repository root) to the function that renders it
(``"module:function"``, called with the repository root, returning the file's text). The generated files are
committed, so the site builds from the repository alone; ``tests/test_pages.py`` fails when a committed page
differs from a fresh rendering (a chapter was re-executed, a parameter changed, and ``prefdyn book`` was not
run again).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any, Callable

__all__ = ["PAGES", "render", "render_all", "write_pages", "fill", "intro_page", "summary_figure", "TEMPLATES"]

#: Page templates (relative to the repository root): the generated page's text with ``{{chapter:key}}``
#: placeholders filled from the chapters' saved results (:func:`fill`).
TEMPLATES = {"book/intro.md": "notebooks/pages/intro.md"}

#: generated file -> ``"module:function"`` (function(root: Path) -> str)
PAGES: dict[str, str] = {
    "book/parameters.md": "prefdyn.chapters.rerun:parameters_page",
    "book/data/claims.json": "prefdyn.chapters.findings:claims_json",
    "book/findings.md": "prefdyn.chapters.findings:findings_page",
    "book/intro.md": "prefdyn.chapters.pages:intro_page",
    "book/figures/summary.png": "prefdyn.chapters.pages:summary_figure",
}


def _renderer(spec: str) -> Callable[[Path], str]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def render(path: str, root: Path) -> str | bytes:
    """The content of the generated page ``path`` (a key of :data:`PAGES`): text, or bytes for a figure."""
    if path not in PAGES:
        raise ValueError(f"path: expected one of the generated pages ({', '.join(PAGES)}), got {path!r}")
    out = _renderer(PAGES[path])(Path(root))
    if isinstance(out, bytes):
        return out
    return out if out.endswith("\n") else out + "\n"


def render_all(root: Path) -> dict[str, str | bytes]:
    """Every generated page's text, rendered before anything is written."""
    return {path: render(path, root) for path in PAGES}


def write_pages(root: Path) -> list[str]:
    """Render every generated page, then write those whose text changed; returns the paths written."""
    root = Path(root)
    texts = render_all(root)                 # all rendered first: a failure writes nothing
    written = []
    for path, text in texts.items():
        dst = root / path
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        if not dst.is_file() or dst.read_bytes() != data:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(dst)
            written.append(path)
    return written


# ------------------------------------------------------------------------------------------------ templates
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z0-9-]+)\s*:\s*([^|}]+?)\s*(?:\|\s*([^}]*?)\s*)?\}\}")


def _results(root: Path, chapter: str) -> dict[str, Any]:
    from ..regression import flatten

    path = Path(root) / "book" / "data" / f"{chapter}.json"
    if not path.is_file():
        raise ValueError(f"template: no saved results for chapter {chapter!r} ({path})")
    return dict(flatten(json.loads(path.read_text(encoding="utf-8"))["results"]))


def _ledger_counts(root: Path) -> dict[str, Any]:
    from ..ledger import verdict_kind
    from .findings import collect

    book = collect(root)
    kinds = [verdict_kind(e["verdict"]) for c in book["chapters"] for e in c["claims"]]
    return {"tested": len(kinds), "reproduces": kinds.count("reproduces"),
            "only_if": kinds.count("reproduces only if"), "does_not": kinds.count("does not reproduce"),
            "not_tested": len(book["not_tested"]), "chapters": len(book["chapters"])}


def _verdicts(root: Path) -> dict[str, Any]:
    from .findings import collect

    return {f"{c['chapter']}/{e['id']}": e["verdict"] for c in collect(root)["chapters"] for e in c["claims"]}


def fill(template: str, root: Path) -> str:
    """``template`` with every ``{{chapter:key}}`` replaced by that key of ``book/data/<chapter>.json``'s
    results (keys as :func:`prefdyn.regression.flatten` writes them) and ``{{ledger:count}}`` by a count
    of the claims ledger (``tested``, ``reproduces``, ``only_if``, ``does_not``, ``not_tested``,
    ``chapters``), ``{{verdict:chapter/claim-id}}`` by that claim's verdict. ``{{chapter:key | spec}}`` formats a number with the format ``spec`` (``.2g``, ``.0%``,
    ``+.2f``); ``| abs`` and ``| neg`` take its absolute value or negate it first (``| neg .2g``). Without
    ``spec`` numbers print as the chapters print them (4 significant digits). A key that is missing is an
    error naming it: the page never shows a stale or typed number."""
    from ..results import fmt

    root = Path(root)
    cache: dict[str, dict[str, Any]] = {}

    def value(m: re.Match) -> str:
        chapter, key, spec = m.group(1), m.group(2), (m.group(3) or "").strip()
        if chapter not in cache:
            cache[chapter] = (_ledger_counts(root) if chapter == "ledger" else _verdicts(root)
                              if chapter == "verdict" else _results(root, chapter))
        if key not in cache[chapter]:
            raise ValueError(f"template: {chapter} has no key {key!r}")
        v = cache[chapter][key]
        for op in ("abs", "neg"):
            if spec.split(" ")[0] == op:
                v = abs(v) if op == "abs" else -v
                spec = spec[len(op):].strip()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        return format(v, spec) if spec else fmt(v)

    return _PLACEHOLDER.sub(value, template)


def intro_page(root: Path) -> str:
    """The landing page: ``notebooks/pages/intro.md`` filled from the chapters' results (:func:`fill`)."""
    root = Path(root)
    return fill((root / TEMPLATES["book/intro.md"]).read_text(encoding="utf-8"), root)


def summary_figure(root: Path) -> bytes:
    """The landing page's figure, drawn from the saved results of the chapters llm-3d (DPO in the four data
    scenarios of 000 Table 4, at its default rate) and llm-methods (DPO and its variants on on-policy pairs):
    the per-token change of the chosen and the rejected responses' log-probs, mean over seeds with its 95%
    interval. A palette PNG (:func:`prefdyn.plotting.palette_png`) without time stamps: the same results
    give the same bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from .. import plotting

    root = Path(root)
    r3 = _results(root, "llm-3d")
    rm = _results(root, "llm-methods")
    scen = sorted({k.split(".")[1] for k in r3 if k.startswith("logp_table.S")})
    panels = [
        ("DPO, four data scenarios (llm-3d)",
         scen, [{side: {b: r3[f"logp_table.{s}.change.{side}.train.{b}"] for b in ("mean", "lo", "hi")}
                 for side in ("chosen", "rejected")} for s in scen]),
    ]
    names = list(dict.fromkeys(k.split(".")[1] for k in rm if k.startswith("variants.") and
                               k.endswith(".change_chosen.mean")))
    key = {"chosen": "change_chosen", "rejected": "change_rejected"}
    panels.append((f"DPO and its variants, S{rm['config.scenario']} (llm-methods)", names,
                   [{side: {b: rm[f"variants.{n}.{key[side]}.{b}"] for b in ("mean", "lo", "hi")}
                     for side in ("chosen", "rejected")} for n in names]))
    with plt.rc_context(plotting.STYLE):
        fig = Figure(figsize=(9.0, 3.2), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True, width_ratios=[len(scen), len(names)])
        for ax, (title, labels, values) in zip(axes, panels):
            x = range(len(labels))
            for j, side in enumerate(("chosen", "rejected")):
                m = [v[side]["mean"] for v in values]
                err = [[v[side]["mean"] - v[side]["lo"] for v in values],
                       [v[side]["hi"] - v[side]["mean"] for v in values]]
                ax.bar([i + (j - 0.5) * 0.38 for i in x], m, width=0.38, yerr=err, capsize=2,
                       color=plotting.ROLE_COLORS[side], label=f"Δ log π(a{'+' if side == 'chosen' else '−'})")
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(list(x), labels, rotation=0 if len(labels) < 6 else 30)
            ax.set_title(title)
            ax.grid(axis="x", visible=False)
        axes[0].set_ylabel("per-token change after − before DPO")
        axes[0].legend(loc="lower left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=plotting.DPI, metadata={"Software": None})
    return plotting.palette_png(buf.getvalue())
