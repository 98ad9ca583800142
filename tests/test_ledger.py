"""The claims ledger (prefdyn.ledger): rules, verdicts, registration through the chapter context, and the
book's ledger: every chapter's saved claims re-derived from its saved results, the generated Findings page
and claims.json current."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from prefdyn import ledger as LG
from prefdyn.chapters import findings
from prefdyn.chapters.catalog import CHAPTERS
from prefdyn.results import load_results

ROOT = Path(__file__).resolve().parents[1]
IDS = list(CHAPTERS)


# ------------------------------------------------------------------------------------------------ rules
@pytest.mark.parametrize("expr, expected", [
    ("lo > 0", True), ("lo > 0 and hi < 1", True), ("not lo > 0", False), ("0 < lo < hi", True),
    ("abs(-lo) == lo", True), ("max(lo, hi) == hi", True), ("all([lo > 0, hi > 0])", True),
    ("name == 's2'", True), ("name in ['s1', 's3']", False), ("flag", True), ("hi - lo > 0.5", False),
    ("x > 1e9", True), ("lo / hi < 1", True),
])
def test_rules_evaluate(expr, expected):
    values = {"lo": 0.2, "hi": 0.6, "name": "s2", "flag": True, "x": "inf"}
    assert LG.evaluate(expr, values) is expected or LG.evaluate(expr, values) == expected


@pytest.mark.parametrize("expr", ["__import__('os')", "lo.real", "lo[0]", "(lambda: 1)()", "open('f')",
                                  "lo if hi else 0", "[x for x in y]"])
def test_rules_refuse_anything_else(expr):
    with pytest.raises(LG.LedgerError):
        LG.evaluate(expr, {"lo": 1.0, "hi": 2.0, "x": 1, "y": [1]})


def test_rule_with_unknown_name_fails_clearly():
    with pytest.raises(LG.LedgerError, match="unknown name 'nope'"):
        LG.evaluate("nope > 0", {"lo": 1.0})


def test_nan_evidence_is_a_float_and_fails_comparisons():
    assert LG.evaluate("x > 0", {"x": "nan"}) is False
    assert math.isnan(LG.evaluate("x + 0", {"x": "nan"}))


@pytest.mark.parametrize("holds, robust, expected", [
    (True, None, "reproduces"), (True, True, "reproduces"), (True, False, "reproduces only if lr >= 1e-4"),
    (False, None, "does not reproduce"), (False, True, "does not reproduce"), (False, False, "does not reproduce"),
])
def test_verdict_table(holds, robust, expected):
    v = LG.verdict_of(holds, robust, "lr >= 1e-4")
    assert v == expected
    assert LG.verdict_kind(v) in LG.VERDICTS


# ------------------------------------------------------------------------------------------------ claims
RESULTS = {"claims": {"drop": {"S1": {"lo": 0.3, "hi": 0.4}, "S2": {"lo": -0.1, "hi": 0.2}}},
           "runs": [{"acc": 0.5}, {"acc": 0.7}], "best": "s1"}


def _claim(**kw):
    base = dict(id="drop", source="000 Sec. 3.2.2", statement="the rejected log-prob falls faster",
                evidence={"s1": "claims.drop.S1.lo", "s2": "claims.drop.S2.lo"}, rule="s1 > 0")
    base.update(kw)
    return LG.Claim(**base)


def test_resolve_reads_flattened_keys_and_list_items():
    e = LG.resolve(_claim(evidence={"a": "runs[1].acc", "b": "best"}, rule="a > 0.6 and b == 's1'"), RESULTS)
    assert e["holds"] is True and e["verdict"] == "reproduces"
    assert e["evidence"]["a"] == {"key": "runs[1].acc", "value": 0.7}


def test_robust_rule_gives_a_conditional_verdict():
    e = LG.resolve(_claim(robust="s1 > 0 and s2 > 0", condition="the data are on-policy (S1)"), RESULTS)
    assert e["verdict"] == "reproduces only if the data are on-policy (S1)"
    e = LG.resolve(_claim(rule="s2 > 0", robust="s1 > 0", condition="x"), RESULTS)
    assert e["verdict"] == "does not reproduce"


def test_missing_evidence_key_fails_naming_it():
    with pytest.raises(LG.LedgerError, match="'claims.drop.S3.lo' is not in the results"):
        LG.resolve(_claim(evidence={"s3": "claims.drop.S3.lo"}, rule="s3 > 0"), RESULTS, "toy-3d")


@pytest.mark.parametrize("kw, match", [
    (dict(id="Bad Id"), "claim id"), (dict(statement=""), "statement"), (dict(source="a\nb"), "source"),
    (dict(evidence={}), "at least one"), (dict(rule="s9 > 0"), "'s9', which is not in its evidence"),
    (dict(robust="s1 > 0"), "needs the condition"), (dict(rule="s1 >"), "not an expression"),
    (dict(evidence={"max": "best"}, rule="max == 1"), "must be an identifier"),
])
def test_bad_claims_fail_at_registration(kw, match):
    with pytest.raises(LG.LedgerError, match=match):
        _claim(**kw)


def test_duplicate_ids_fail():
    with pytest.raises(LG.LedgerError, match="registered twice"):
        LG.entries([_claim(), _claim()], RESULTS, "x")


def test_chapter_context_registers_and_saves_the_ledger(tmp_path, monkeypatch, capsys):
    from prefdyn.chapters import start

    monkeypatch.setenv("PREFDYN_RESULTS_DIR", str(tmp_path))
    ns = dict(CHAPTERS["dpo-margin"].defaults())
    ch = start("dpo-margin", ns, style=False)
    ch.claim("drop", source="000 Sec. 3.2.2", statement="s", evidence={"s1": "claims.drop.S1.lo"}, rule="s1 > 0")
    with pytest.raises(LG.LedgerError, match="registered twice"):
        ch.claim("drop", source="x", statement="s", evidence={"s1": "best"}, rule="s1 == 1")
    ch.save_results(RESULTS)
    assert "with the ledger of 1 claim" in capsys.readouterr().out
    data = load_results(tmp_path / "dpo-margin.json")
    assert data["claims"][0]["verdict"] == "reproduces"
    assert LG.check_chapter(data) == []


def test_save_fails_before_writing_when_evidence_is_missing(tmp_path, monkeypatch):
    from prefdyn.chapters import start

    monkeypatch.setenv("PREFDYN_RESULTS_DIR", str(tmp_path))
    ch = start("dpo-margin", dict(CHAPTERS["dpo-margin"].defaults()), style=False)
    ch.claim("gone", source="000", statement="s", evidence={"g": "claims.gone"}, rule="g > 0")
    with pytest.raises(LG.LedgerError, match="claims.gone"):
        ch.save_results(RESULTS)
    assert not (tmp_path / "dpo-margin.json").exists()


# ------------------------------------------------------------------------------------------------ the book
def _data(cid):
    return json.loads((ROOT / "book" / "data" / f"{cid}.json").read_text(encoding="utf-8"))


LEDGER_IDS = [c for c in IDS if (ROOT / "book" / "data" / f"{c}.json").is_file() and _data(c).get("claims")]


@pytest.mark.parametrize("cid", LEDGER_IDS)
def test_every_verdict_follows_from_the_saved_results(cid):
    assert LG.check_chapter(_data(cid)) == []


def _one_with_claims():
    assert LEDGER_IDS, "no chapter registers a claim"
    return _data(LEDGER_IDS[0])


def _drop_leaf(results, key):
    """A copy of ``results`` without the leaf whose flattened key (prefdyn.regression.flatten) is ``key``."""
    from prefdyn.regression import flatten

    out = copy.deepcopy(results)

    def walk(node, prefix):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items):
            here = (f"{prefix}.{k}" if prefix else str(k)) if isinstance(node, dict) else f"{prefix}[{k}]"
            if here == key:
                del node[k]
                return True
            if isinstance(v, (dict, list)) and v and key.startswith(here) and walk(v, here):
                return True
        return False

    assert walk(out, "") and key not in dict(flatten(out))
    return out


@pytest.mark.parametrize("cid", LEDGER_IDS)
def test_the_ledger_check_fails_when_a_chapter_loses_evidence(cid):
    data = _data(cid)
    e = data["claims"][-1]
    key = list(e["evidence"].values())[-1]["key"]
    broken = dict(data, results=_drop_leaf(data["results"], key))
    problems = LG.check_chapter(broken)
    assert any(key in p and "missing" in p for p in problems), problems


def test_the_ledger_check_fails_when_a_verdict_no_longer_follows():
    data = copy.deepcopy(_one_with_claims())
    e = data["claims"][0]
    e["verdict"] = "does not reproduce" if e["verdict"] != "does not reproduce" else "reproduces"
    assert any("the ledger says" in p for p in LG.check_chapter(data))
    data = copy.deepcopy(_one_with_claims())
    e = data["claims"][0]
    name, ev = next(iter(e["evidence"].items()))
    ev["value"] = "changed"
    assert any("in the ledger but" in p for p in LG.check_chapter(data))


def test_claim_ids_are_unique_in_the_book_and_sources_cite_a_paper():
    book = findings.collect(ROOT)
    ids = [(c["chapter"], e["id"]) for c in book["chapters"] for e in c["claims"]]
    assert len(ids) == len(set(ids))
    for c in book["chapters"]:
        for e in c["claims"]:
            assert e["source"][:3] in ("000", "002", "004"), (c["chapter"], e["id"], e["source"])
    for t in book["not_tested"]:
        assert t["source"][:3] in ("000", "002", "004") and t["reason"]


def test_findings_page_lists_every_claim_with_its_verdict():
    page = (ROOT / "book" / "findings.md").read_text(encoding="utf-8")
    book = findings.collect(ROOT)
    for c in book["chapters"]:
        assert f"<{c['chapter']}>" in page
        for e in c["claims"]:
            row = next((line for line in page.splitlines() if e["statement"].replace("|", "\\|") in line), None)
            assert row is not None, (c["chapter"], e["id"])
            assert f"| {e['verdict']} |" in row
    for t in book["not_tested"]:
        assert t["reason"] in page
