"""The claims ledger: every claim of the three papers that a chapter tests, with its verdict computed from
the chapter's own saved results.

A chapter registers a claim after it has computed its results (``ch.claim(...)``, see
:meth:`prefdyn.chapters.ChapterContext.claim`) and before ``ch.save_results``. A claim names its
**evidence**: short names bound to keys of the chapter's results, written as :mod:`prefdyn.regression`
flattens them (``claims.drastic_drop.S1.excess_drop.lo``; list items as ``[i]``), and two **rules**,
expressions over those names:

- ``rule``: the claim as the paper states it, at the setting the chapter tests it in (its defaults);
- ``robust`` (optional): the claim across the choices the paper leaves open that the chapter varies
  (learning rates, initial distributions, scenarios, readings...), with ``condition`` saying in words under
  which condition the claim holds when it holds at the tested setting but not across them.

The verdict follows from the two rules, never typed:

====================  ==========  ==============================
``rule``              ``robust``  verdict
====================  ==========  ==============================
true                  absent/true ``reproduces``
true                  false       ``reproduces only if <condition>``
false                 any         ``does not reproduce``
====================  ==========  ==============================

``save_results`` resolves the evidence against the results it saves (an evidence key missing from them is an
error before anything is written) and stores the ledger in the chapter's JSON under ``"claims"``. The book
build collects every chapter's ledger into ``book/data/claims.json`` and the Findings page
(:mod:`prefdyn.chapters.findings`); :func:`check_chapter` re-derives every verdict from the JSON, so a test fails when a
chapter's results lose a claim's evidence or its verdict no longer follows from them. Papers' results the
book does not test are listed in :data:`NOT_TESTED` with the reason.

Rules are Python expressions restricted to names (the evidence), numbers, strings, ``True``/``False``,
comparisons, ``and``/``or``/``not``, ``+ - * /``, ``abs``/``min``/``max``/``all``/``any`` and lists.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .regression import flatten
from .results import fmt, rounded

__all__ = ["Claim", "NOT_TESTED", "VERDICTS", "evaluate", "resolve", "entries", "verdict_of", "verdict_kind",
           "check_chapter", "evidence_text", "verdict_lines", "LedgerError"]

#: The verdicts, in the order the Findings page sorts them.
VERDICTS = ("reproduces", "reproduces only if", "does not reproduce", "not tested here")

_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class LedgerError(ValueError):
    """A claim that cannot be registered or re-checked (one-line message)."""


# ------------------------------------------------------------------------------------------------ rules
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_CMPOPS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
           ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.In: lambda a, b: a in b,
           ast.NotIn: lambda a, b: a not in b}
def _extreme(f):
    """``min``/``max`` that also take one number (a rule built over a list of one variant)."""
    return lambda *a: f(a[0]) if len(a) == 1 and isinstance(a[0], list) else f(a)


_FUNCS = {"abs": abs, "min": _extreme(min), "max": _extreme(max), "all": all, "any": any}
_CONSTS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _names(expr: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)} - set(_FUNCS)


def _value(v: Any) -> Any:
    """A JSON leaf as a rule sees it: ``"nan"``/``"inf"``/``"-inf"`` (how results store non-finite floats)
    are floats again."""
    return _CONSTS.get(v, v) if isinstance(v, str) else v


def evaluate(expr: str, values: Mapping[str, Any]) -> Any:
    """Evaluate the rule ``expr`` with the evidence ``values`` (see the module docstring for what a rule may
    contain). Raises :class:`LedgerError` for anything else or an unknown name."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise LedgerError(f"rule: not an expression: {expr!r}") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise LedgerError(f"rule {expr!r}: unknown name {node.id!r} (evidence: {', '.join(values)})")
            return _value(values[node.id])
        if isinstance(node, ast.BoolOp):
            parts = [bool(ev(v)) for v in node.values]
            return all(parts) if isinstance(node.op, ast.And) else any(parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            x = ev(node.operand)
            return (not x) if isinstance(node.op, ast.Not) else -x
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                if type(op) not in _CMPOPS:
                    break
                right = ev(right_node)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            else:
                return True
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                and not node.keywords):
            args = [ev(a) for a in node.args]
            return _FUNCS[node.func.id](*args)
        raise LedgerError(f"rule {expr!r}: {ast.unparse(node)!r} is not allowed in a rule")

    try:
        return ev(tree)
    except (TypeError, ZeroDivisionError) as exc:
        raise LedgerError(f"rule {expr!r}: {exc}") from None


def verdict_of(holds: bool, robust: bool | None, condition: str = "") -> str:
    """The verdict text from the two rules' values (the table of the module docstring)."""
    if not holds:
        return "does not reproduce"
    if robust is None or robust:
        return "reproduces"
    return f"reproduces only if {condition}"


def verdict_kind(verdict: str) -> str:
    """The verdict's kind (one of :data:`VERDICTS`)."""
    return next(v for v in VERDICTS if verdict.startswith(v) and
                (v != "reproduces" or verdict == "reproduces"))


# ------------------------------------------------------------------------------------------------ claims
@dataclass(frozen=True)
class Claim:
    """A claim a chapter tests. ``id``: short, unique in the chapter (``[a-z0-9_.-]``); ``source``: where the
    paper makes it ("000 Sec. 3.2.2, Fig. 2"); ``statement``: the claim in one sentence; ``evidence``: name ->
    results key; ``rule``/``robust``/``condition``: see the module docstring; ``section``: the chapter's
    section that tests it (its heading text); ``note``: one optional sentence (what was varied, a caveat)."""

    id: str
    source: str
    statement: str
    evidence: Mapping[str, str]
    rule: str
    robust: str | None = None
    condition: str = ""
    section: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "evidence", dict(self.evidence))
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise LedgerError(f"claim id: expected lower-case letters, digits, '_', '.', '-', got {self.id!r}")
        for name in ("source", "statement"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text.strip() or "\n" in text:
                raise LedgerError(f"claim {self.id}: {name} must be one non-empty line, got {text!r}")
        if not self.evidence:
            raise LedgerError(f"claim {self.id}: evidence: expected at least one name -> results key")
        for n, key in self.evidence.items():
            if not str(n).isidentifier() or n in _FUNCS:
                raise LedgerError(f"claim {self.id}: evidence name {n!r} must be an identifier (not {list(_FUNCS)})")
            if not isinstance(key, str) or not key:
                raise LedgerError(f"claim {self.id}: evidence {n!r}: expected a results key, got {key!r}")
        for name in ("rule", "robust"):
            expr = getattr(self, name)
            if expr is None:
                continue
            try:
                used = _names(expr)
            except SyntaxError:
                raise LedgerError(f"claim {self.id}: {name}: not an expression: {expr!r}") from None
            unknown = sorted(used - set(self.evidence))
            if unknown:
                raise LedgerError(f"claim {self.id}: {name} uses {unknown[0]!r}, which is not in its evidence "
                                  f"({', '.join(self.evidence)})")
        if self.robust is not None and not self.condition.strip():
            raise LedgerError(f"claim {self.id}: a robust rule needs the condition under which the claim holds")


def _flat(results: Mapping[str, Any]) -> dict[str, Any]:
    return dict(flatten(rounded(results)))


def resolve(claim: Claim, results: Mapping[str, Any], chapter: str = "") -> dict[str, Any]:
    """The ledger entry of ``claim`` against ``results`` (the chapter's results dict, as saved): the evidence
    values, both rules' values and the verdict. Raises :class:`LedgerError` naming the first evidence key
    the results lack."""
    flat = _flat(results)
    values = {}
    for n, key in claim.evidence.items():
        if key not in flat:
            where = f"{chapter}: " if chapter else ""
            raise LedgerError(f"{where}claim {claim.id}: evidence {n!r} = results key {key!r} is not in the results")
        values[n] = flat[key]
    holds = bool(evaluate(claim.rule, values))
    robust = None if claim.robust is None else bool(evaluate(claim.robust, values))
    return {"id": claim.id, "source": claim.source, "statement": claim.statement,
            "evidence": {n: {"key": k, "value": values[n]} for n, k in claim.evidence.items()},
            "rule": claim.rule, "robust": claim.robust, "condition": claim.condition,
            "holds": holds, "holds_robust": robust, "verdict": verdict_of(holds, robust, claim.condition),
            "section": claim.section, "note": claim.note}


def entries(claims: Iterable[Claim], results: Mapping[str, Any], chapter: str = "") -> list[dict[str, Any]]:
    """:func:`resolve` for every claim (ids unique), all before anything is written."""
    out, seen = [], set()
    for c in claims:
        if c.id in seen:
            raise LedgerError(f"{chapter + ': ' if chapter else ''}claim {c.id} registered twice")
        seen.add(c.id)
        out.append(resolve(c, results, chapter))
    return out


def evidence_text(entry: Mapping[str, Any]) -> str:
    """``name = value`` for every evidence item of a ledger entry, semicolon-separated (floats as the chapters
    print them)."""
    def text(v: Any) -> str:
        return ("yes" if v else "no") if isinstance(v, bool) else fmt(v) if isinstance(v, float) else str(v)

    return "; ".join(f"{n} = {text(e['value'])}" for n, e in entry["evidence"].items())


def verdict_lines(ledger: Iterable[Mapping[str, Any]], width: int = 72) -> list[str]:
    """Printable lines for ledger entries: the verdict in capitals, the statement and its source, then the
    evidence indented, each wrapped at ``width``."""
    import textwrap

    out = []
    for e in ledger:
        out += textwrap.wrap(f"{e['verdict'].upper()}: {e['statement']} ({e['source']})", width)
        out += textwrap.wrap(evidence_text(e), width, initial_indent="    ", subsequent_indent="    ")
    return out


def check_chapter(data: Mapping[str, Any]) -> list[str]:
    """Problems with the ledger of one chapter JSON (``{"chapter", "parameters", "results", "claims"}``):
    an evidence key the results lack, a stored evidence value that is not the results' value, a verdict
    that does not follow from the rules. Empty when the ledger holds."""
    chapter = data.get("chapter", "?")
    flat = _flat(data.get("results", {}))
    problems = []
    for e in data.get("claims", []):
        cid = e.get("id", "?")
        values = {}
        for n, ev in e.get("evidence", {}).items():
            if ev["key"] not in flat:
                problems.append(f"{chapter}: claim {cid}: evidence {n!r} = {ev['key']!r} is missing from the results")
                continue
            if flat[ev["key"]] != ev["value"]:
                problems.append(f"{chapter}: claim {cid}: evidence {n!r} is {ev['value']!r} in the ledger but "
                                f"{flat[ev['key']]!r} in the results")
            values[n] = flat[ev["key"]]
        if len(values) < len(e.get("evidence", {})):
            continue
        try:
            holds = bool(evaluate(e["rule"], values))
            robust = None if e.get("robust") is None else bool(evaluate(e["robust"], values))
        except LedgerError as exc:
            problems.append(f"{chapter}: claim {cid}: {exc}")
            continue
        expected = verdict_of(holds, robust, e.get("condition", ""))
        if e.get("verdict") != expected or e.get("holds") != holds:
            problems.append(f"{chapter}: claim {cid}: the ledger says {e.get('verdict')!r} but its evidence gives "
                            f"{expected!r}")
    return problems


# ------------------------------------------------------------------------------------------------ not tested
#: Papers' results the book does not test, with the reason (listed on the Findings page).
NOT_TESTED: tuple[dict[str, str], ...] = (
    {"source": "000 Sec. 5.2, Tables 2, 8, 9", "statement": "DPO's accuracy on MATH* and SuperCLUE-Math for "
     "Baichuan2-13B and -33B under the four data scenarios of Table 4",
     "reason": "13- and 33-billion-parameter models and the paper's data; the book tests the same claims' "
               "direction on small models trained here (chapter llm-3d)"},
    {"source": "000 App. D.2, Table 10", "statement": "the variants' accuracy numbers of Baichuan2-33B",
     "reason": "printed beside the book's own analog in chapter llm-methods, not reproduced at that scale"},
    {"source": "000 Sec. 5.2.1, Table 3", "statement": "RLHF-PPO beats DPO on the Poem and Slogan datasets "
     "(format, rhythm, tone and content scores of Baichuan2-33B)",
     "reason": "no poem or slogan data or graders here; the book tests the claim's direction on an arithmetic "
               "task with rule scores (chapter llm-methods)"},
    {"source": "000 App. D, Fig. 9", "statement": "poem performance as flex-β's β2 decreases",
     "reason": "the same poem data and models; flex-β is tested on the toy and the small models instead"},
    {"source": "000 App. D.1, Remark 1", "statement": "on poem generation vanilla DPO outperforms SLiC and IPO",
     "reason": "the same poem data and models"},
    {"source": "000 Sec. 5.3, Fig. 4, Figs 11-12", "statement": "the reward model's and DPO's accuracy curves "
     "of Baichuan2 models on the paper's preference data",
     "reason": "the paper's models and data; tested on the book's arithmetic pairs (chapter llm-methods)"},
    {"source": "004 Sec. 6.2, Tables 2-3", "statement": "Balanced DPO's helpfulness, harmlessness and safety "
     "rate on SafeRLHF and Anthropic HH with Llama-7B, and the instability of symmetric nbDPO there",
     "reason": "a 7-billion-parameter model, its training data and trained reward and cost models; the book "
               "tests 004's gradient claims on the toy and its 20 x 20 benchmark (chapters imbalance, "
               "bdpo-benchmark)"},
)
