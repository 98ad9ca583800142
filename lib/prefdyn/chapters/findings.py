"""The Findings page and ``book/data/claims.json``: every chapter's claims ledger (:mod:`prefdyn.ledger`),
collected from the saved results ``book/data/<id>.json`` in book order, with the papers' results the book
does not test (:data:`prefdyn.ledger.NOT_TESTED`). Both are generated pages (:mod:`.pages`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..ledger import NOT_TESTED, VERDICTS, evidence_text, verdict_kind
from .catalog import CHAPTERS

__all__ = ["collect", "claims_json", "findings_page"]


def collect(root: Path) -> dict[str, Any]:
    """Every chapter's ledger (book order, from ``book/data/<id>.json``) and :data:`NOT_TESTED`."""
    chapters = []
    for cid, ch in CHAPTERS.items():
        path = Path(root) / "book" / "data" / f"{cid}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("claims"):
            chapters.append({"chapter": cid, "title": ch.title, "claims": data["claims"]})
    return {"chapters": chapters, "not_tested": list(NOT_TESTED)}


def claims_json(root: Path) -> str:
    """The text of ``book/data/claims.json`` (:func:`collect`)."""
    return json.dumps(collect(root), indent=2, ensure_ascii=False) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def findings_page(root: Path) -> str:
    """The Findings page: one table per part of the book, claim -> verdict -> numbers -> section, then the
    results not tested here."""
    book = collect(root)

    counts = {v: 0 for v in VERDICTS}
    for ch in book["chapters"]:
        for e in ch["claims"]:
            counts[verdict_kind(e["verdict"])] += 1
    counts["not tested here"] = len(book["not_tested"])
    n = sum(counts[v] for v in VERDICTS[:3])
    lines = [
        "# Findings",
        "",
        "Every claim of the three papers that a chapter of this book tests, with the verdict the chapter "
        "computes from its own results. A verdict is never typed: each chapter registers the claim with the "
        "keys of its results that decide it and the rule that reads them (`prefdyn.ledger`); the book build "
        "collects the chapters' ledgers into `book/data/claims.json` and this page, and the test suite "
        "re-derives every verdict from the saved results.",
        "",
        "*Reproduces* means the claim holds at the chapter's tested setting and across the choices the "
        "chapter varies; *reproduces only if* names the condition outside which it fails; *does not "
        "reproduce* means it fails at the tested setting. The numbers are the evidence the rule reads "
        "(`lo`/`hi`: the ends of a 95% interval over seeds).",
        "",
        f"{n} claims tested: {counts['reproduces']} reproduce, {counts['reproduces only if']} reproduce only "
        f"under a condition, {counts['does not reproduce']} do not reproduce; {counts['not tested here']} "
        "results of the papers are not tested here (listed at the end).",
        "",
    ]
    part = None
    for ch in book["chapters"]:
        p = CHAPTERS[ch["chapter"]].part
        if p != part:
            lines += [f"## {p}", ""]
            part = p
        lines += [f"### {{doc}}`{ch['title']} <{ch['chapter']}>`", "",
                  "| claim | verdict | numbers | section |", "| --- | --- | --- | --- |"]
        for e in ch["claims"]:
            claim = f"**{_cell(e['source'])}**: {_cell(e['statement'])}"
            if e.get("note"):
                claim += f" *({_cell(e['note'])})*"
            lines.append(f"| {claim} | {_cell(e['verdict'])} | {_cell(evidence_text(e))} | "
                         f"{_cell(e.get('section') or '')} |")
        lines.append("")
    lines += ["## Not tested here", "", "| result | source | why not |", "| --- | --- | --- |"]
    for t in book["not_tested"]:
        lines.append(f"| {_cell(t['statement'])} | {_cell(t['source'])} | {_cell(t['reason'])} |")
    return "\n".join(lines) + "\n"
