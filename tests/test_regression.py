"""Each chapter's key numbers against its golden numbers, under the tolerances it declares ([5/11]).

nbval compares the text a chapter prints, literally; cells whose numbers depend on the machine (float32
training) are excluded from that comparison (tag ``nbval-ignore-output``, with a reason), and their
numbers are compared here instead: the JSON each chapter writes when nbval re-executes it against the
committed ``book/data/<id>.json``, key by key, under ``Chapter.tolerances`` (prefdyn.regression).

The mutation tests show that the tolerances are not so loose that a real change passes: a 1% change of
β in a toy chapter and a sign flip in a symbolic result both turn this comparison red, naming the chapter,
the key and both values.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from prefdyn import regression
from prefdyn.chapters import CHAPTERS
from prefdyn.chapters.golden import check as check_golden
from prefdyn.chapters.runner import run_chapter
from prefdyn.regression import EXACT, Tol, Tolerances

ROOT = Path(__file__).resolve().parents[1]
IDS = list(CHAPTERS)


def _produced(cid: str, tmp_path: Path) -> Path:
    """The JSON of this session's execution of the chapter: nbval's (written to $PREFDYN_RESULTS_DIR),
    else a fresh execution with the golden parameters."""
    folder = os.environ.get("PREFDYN_RESULTS_DIR")
    if folder and (Path(folder) / f"{cid}.json").is_file():
        return Path(folder) / f"{cid}.json"
    return run_chapter(cid, out=tmp_path / cid, progress=False).results


@pytest.mark.after_chapters
@pytest.mark.parametrize("cid", IDS)
def test_chapter_reproduces_its_golden_numbers(cid, tmp_path):
    mismatches = check_golden(cid, _produced(cid, tmp_path))
    assert not mismatches, "\n" + regression.report(mismatches)


# --------------------------------------------------------------------------------------- mutations
def test_a_one_percent_change_of_beta_in_a_toy_chapter_is_caught(tmp_path):
    golden = json.loads((ROOT / "book" / "data" / "toy-3d.json").read_text())
    beta = golden["parameters"]["beta"] * 1.01
    run = run_chapter("toy-3d", {"beta": beta}, out=tmp_path, progress=False)
    mismatches = check_golden("toy-3d", run.results, check_parameters=False)
    assert len(mismatches) >= 5, "a 1% change of beta passed the toy-3d tolerances:\n" + regression.report(mismatches)
    assert any(m.key.startswith("mlp.final_rejected_prob") for m in mismatches)   # the collapsed likelihood
    m = mismatches[0]
    text = str(m)
    assert text.startswith("toy-3d: ") and m.key in text
    assert regression._text(m.golden) in text and regression._text(m.produced) in text
    # with the parameters checked (the default), the run is refused as a whole: beta differs
    (only,) = check_golden("toy-3d", run.results)
    assert only.key == "parameters" and "beta" in only.rule


_FLIP_SIGN = '''
import dataclasses
import prefdyn.printed as _printed

_original = _printed.gradients


def _flipped(name):
    g = _original(name)
    return dataclasses.replace(g, ratio=-g.ratio) if name == "dpo" else g


_printed.gradients = _flipped
'''


def test_a_sign_flip_in_a_symbolic_result_is_caught(tmp_path, monkeypatch):
    """The kernel imports a ``sitecustomize`` that negates the derived DPO ratio (000 Cor. 1)."""
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(_FLIP_SIGN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(patch), os.environ.get("PYTHONPATH")])))
    run = run_chapter("gradients", out=tmp_path / "out", progress=False)
    mismatches = check_golden("gradients", run.results)
    keys = {m.key for m in mismatches}
    assert "table.dpo.ratio" in keys, regression.report(mismatches)
    m = next(m for m in mismatches if m.key == "table.dpo.ratio")
    assert m.golden.startswith("- ") and not m.produced.startswith("- ")
    assert str(m).startswith("gradients: table.dpo.ratio = ")


# --------------------------------------------------------------------------------------- the comparator
def test_flatten_names_every_leaf():
    assert dict(regression.flatten({"a": {"b": [1, {"c": 2}]}, "d": {}, "e": []})) == {
        "a.b[0]": 1, "a.b[1].c": 2, "d": {}, "e": []}


def test_tolerance_rules_and_their_order():
    tol = Tolerances(Tol(rtol=0.01), (("*.step*", Tol(atol=5)), ("exact.*", EXACT)))
    assert tol.for_key("x.steps") == Tol(atol=5) and tol.for_key("exact.y") is EXACT
    assert tol.for_key("other") == Tol(rtol=0.01)
    gold = {"p": 0.5, "x": {"steps": 100}, "exact": {"y": 1.0}, "flag": True, "name": "dpo"}
    assert regression.compare("c", dict(gold), gold, tol) == []
    assert regression.compare("c", {**gold, "p": 0.504}, gold, tol) == []          # within 1%
    bad = regression.compare("c", {**gold, "p": 0.51, "x": {"steps": 106}, "exact": {"y": 1.0001},
                                   "flag": False, "name": "ipo"}, gold, tol)
    assert {m.key for m in bad} == {"p", "x.steps", "exact.y", "flag", "name"}
    assert str(bad[0]) == "c: p = 0.51, golden 0.5 (tolerance: rtol 0.01)"


def test_tiny_values_are_compared_in_log10():
    tol = Tolerances(Tol(rtol=0.01, tiny=1e-6, log10_atol=0.05))
    gold = {"p": 1.08e-36}
    assert regression.compare("c", {"p": 1.079e-36}, gold, tol) == []
    assert regression.compare("c", {"p": 1.2e-36}, gold, tol) == []               # 0.046 in log10
    assert regression.compare("c", {"p": 1.3e-36}, gold, tol)                     # 0.08 in log10
    assert regression.compare("c", {"p": 2e-6}, {"p": 1e-6}, tol)                 # above tiny: relative


def test_log10_at_every_magnitude():
    tol = Tolerances(Tol(tiny=math.inf, log10_atol=0.1))
    assert regression.compare("c", {"r": 1.2e39}, {"r": 1.0e39}, tol) == []
    assert regression.compare("c", {"r": 1.3e39}, {"r": 1.0e39}, tol)
    assert tol.default.describe() == "log10 within 0.1"
    with pytest.raises(ValueError, match="tiny may be inf"):
        Tol(tiny=math.nan, log10_atol=0.1)


def test_floor_accepts_two_underflowed_or_two_overflowed_values():
    tol = Tolerances(Tol(rtol=0.01, tiny=1e-4, log10_atol=0.5, floor=1e-30))
    assert regression.compare("c", {"p": 8.4e-35}, {"p": 3.5e-34}, tol) == []     # 0.6 in log10, both underflowed
    assert regression.compare("c", {"r": 1.1e37}, {"r": 3.4e36}, tol) == []       # both above 1e30
    assert regression.compare("c", {"p": 1e-31}, {"p": 1e-29}, tol)               # one above the floor: log10 2
    assert regression.compare("c", {"p": -1e-35}, {"p": 1e-35}, tol)              # signs differ
    assert regression.compare("c", {"r": 2e29}, {"r": 1e31}, tol)                 # one below 1e30: relative
    assert "equal below 1e-30 and above 1e+30" in tol.default.describe()
    with pytest.raises(ValueError, match="floor"):
        Tol(floor=1.0)


def test_missing_extra_and_non_finite_values():
    tol = Tolerances(Tol(rtol=0.5))
    gold = {"a": 1.0, "n": "nan", "i": "inf", "z": None}
    assert regression.compare("c", {"a": 1.0, "n": "nan", "i": "inf", "z": None}, gold, tol) == []
    bad = regression.compare("c", {"n": 1.0, "i": "-inf", "z": 0.0, "new": 2}, gold, tol)
    assert {m.key for m in bad} == {"a", "n", "i", "z", "new"}
    assert any("<missing>" in str(m) for m in bad)
    assert regression.compare("c", {"a": True}, {"a": 1.0}, tol)                  # a bool is not a number


def test_ignored_keys_and_gpu_loosening():
    tol = Tolerances(EXACT, (("timing.*", Tol(ignore=True, reason="wall-clock")), ("x", Tol(rtol=0.001))))
    assert regression.compare("c", {"timing": {"s": 9.0}, "x": 1.0}, {"timing": {"s": 1.0}, "x": 1.0}, tol) == []
    loose = tol.loosened(regression.GPU_LOOSENING)
    assert loose.for_key("x").rtol == pytest.approx(0.001 * regression.GPU_LOOSENING)
    assert loose.default is EXACT
    assert regression.on_gpu({"device": "cuda"}) and not regression.on_gpu({"device": "cpu"})


def test_bad_tolerances_are_refused():
    with pytest.raises(ValueError, match="rtol"):
        Tol(rtol=-1)
    with pytest.raises(ValueError, match="tiny needs log10_atol"):
        Tol(tiny=1e-6)
    with pytest.raises(ValueError, match="must be a Tol"):
        Tolerances(EXACT, (("x", 0.1),))


def test_every_chapter_declares_tolerances_that_cover_its_keys():
    """Every golden key maps to a rule; floats of toy chapters are never compared exactly."""
    for cid, chapter in CHAPTERS.items():
        golden = json.loads((ROOT / "book" / "data" / f"{cid}.json").read_text())["results"]
        for key, value in regression.flatten(golden):
            tol = chapter.tolerances.for_key(key)
            assert isinstance(tol, Tol)
            if tol.ignore:
                assert tol.reason, f"{cid}: {key} is ignored without a reason"
