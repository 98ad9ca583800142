"""Tests of :mod:`prefdyn.records` and the 3D verdicts of :mod:`prefdyn.toy.verdicts`: indicators computed
from hand-made records, their summaries, the JSON form the chapters save, and the thresholds of the
3D-properties (each property switches exactly at its threshold)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from prefdyn import records, stats, toy

NAN = float("nan")


def _entry(mean, lo=None, hi=None, frac=1.0):
    return {"mean": mean, "lo": mean if lo is None else lo, "hi": mean if hi is None else hi, "n": 4, "frac": frac}


def _summary(drop_orders=3.0, peak=0.5, drop=0.1, unpaired_gain=0.2):
    return {"rejected_drop_orders": _entry(drop_orders), "peak_chosen_prob": _entry(peak),
            "chosen_drop": _entry(drop), "unpaired_gain": _entry(unpaired_gain)}


# ----------------------------------------------------------------------------- three_d, removed_by
def test_three_d_drastic_drop_switches_at_its_threshold():
    below = np.nextafter(2.0, -np.inf)
    assert toy.three_d(_summary(drop_orders=2.0))["drastic_drop"] is True
    assert toy.three_d(_summary(drop_orders=below))["drastic_drop"] is False
    assert toy.three_d(_summary(drop_orders=0.5), drop_orders=0.5)["drastic_drop"] is True
    assert toy.three_d(_summary(drop_orders=0.5), drop_orders=0.6)["drastic_drop"] is False
    assert toy.three_d(_summary(drop_orders=NAN))["drastic_drop"] is False


def test_three_d_degradation_is_relative_to_the_peak():
    # (peak - final) / peak >= 0.05; 0.025 / 0.5 is exactly 0.05 in binary (a division by a power of two)
    assert toy.three_d(_summary(peak=0.5, drop=0.025))["degradation"] is True
    assert toy.three_d(_summary(peak=0.5, drop=np.nextafter(0.025, 0.0)))["degradation"] is False
    # the same absolute drop is Degradation at a low peak, not at a high one
    assert toy.three_d(_summary(peak=0.2, drop=0.02))["degradation"] is True
    assert toy.three_d(_summary(peak=0.8, drop=0.02))["degradation"] is False
    assert toy.three_d(_summary(peak=0.5, drop=0.2), degradation=0.4)["degradation"] is True
    assert toy.three_d(_summary(peak=0.5, drop=0.2), degradation=0.41)["degradation"] is False
    # a zero peak has no degradation (and no division by zero); a NaN mean decides nothing
    assert toy.three_d(_summary(peak=0.0, drop=0.0))["degradation"] is False
    assert toy.three_d(_summary(peak=NAN, drop=0.1))["degradation"] is False


def test_three_d_dispersion_switches_at_its_threshold():
    assert toy.three_d(_summary(unpaired_gain=0.05))["dispersion"] is True
    assert toy.three_d(_summary(unpaired_gain=np.nextafter(0.05, 0.0)))["dispersion"] is False
    assert toy.three_d(_summary(unpaired_gain=-0.3))["dispersion"] is False
    assert toy.three_d(_summary(unpaired_gain=0.01), dispersion=0.01)["dispersion"] is True


def test_three_d_reads_only_the_means():
    s = _summary(drop_orders=2.5, peak=0.5, drop=0.1, unpaired_gain=0.1)
    wide = {k: {**v, "lo": -1e9, "hi": 1e9} for k, v in s.items()}
    assert toy.three_d(s) == toy.three_d(wide) == {"drastic_drop": True, "degradation": True, "dispersion": True}
    assert list(toy.three_d(s)) == list(toy.THREE_D_LABELS)


def test_removed_by():
    ref = toy.three_d(_summary())                                   # vanilla DPO shows all three
    assert ref == {"drastic_drop": True, "degradation": True, "dispersion": True}
    v = toy.three_d(_summary(drop_orders=1.0, unpaired_gain=0.0))
    assert toy.removed_by(ref, v) == {"removes": ["drastic_drop", "dispersion"], "keeps": ["degradation"]}
    # the order is THREE_D_LABELS', whatever the order of the dicts given
    rev = {k: v[k] for k in reversed(list(v))}
    assert toy.removed_by(dict(reversed(list(ref.items()))), rev) == toy.removed_by(ref, v)
    # a property the reference does not show is neither removed nor kept
    none = {"drastic_drop": False, "degradation": False, "dispersion": False}
    assert toy.removed_by(none, ref) == {"removes": [], "keeps": []}
    assert toy.removed_by(ref, none) == {"removes": list(toy.THREE_D_LABELS), "keeps": []}


# ----------------------------------------------------------------------------- json_summary
def test_json_summary_none_for_non_finite_and_frac_on_threshold_steps():
    s = {k: _entry(0.5, 0.4, 0.6) for k in records.INDICATORS}
    s["grad_ratio_final"] = _entry(math.inf, 1e300, math.inf)        # a ratio beyond float64
    s["log10_grad_ratio_final"] = _entry(481.0, 470.0, 492.0)        # keeps its size
    s["grad_ratio_100_step"] = _entry(NAN, NAN, NAN, frac=0.0)      # never crossed
    s["grad_ratio_10_step"] = _entry(40.0, 38.0, 42.0, frac=0.75)
    s["final_rejected_prob"] = _entry(np.float64(1e-30), -math.inf, np.float32(2e-30))
    out = records.json_summary(s)
    assert list(out) == list(records.KEY_INDICATORS)
    assert out["grad_ratio_final"] == {"mean": None, "lo": 1e300, "hi": None}
    assert out["log10_grad_ratio_final"] == {"mean": 481.0, "lo": 470.0, "hi": 492.0}
    assert out["grad_ratio_100_step"] == {"mean": None, "lo": None, "hi": None, "frac": 0.0}
    assert out["grad_ratio_10_step"] == {"mean": 40.0, "lo": 38.0, "hi": 42.0, "frac": 0.75}
    assert out["final_rejected_prob"]["lo"] is None and out["final_rejected_prob"]["mean"] == 1e-30
    # only the threshold steps carry frac (peak_chosen_step is a step, not a threshold)
    assert {k for k, d in out.items() if "frac" in d} == {"grad_ratio_10_step", "grad_ratio_100_step"}
    assert set(out["peak_chosen_step"]) == {"mean", "lo", "hi"}
    # plain Python floats, valid strict JSON
    for d in out.values():
        assert all(v is None or type(v) is float for v in d.values())
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    # other keys: every *_step but peak_chosen_step gets frac
    sub = records.json_summary(s, keys=("rejected_tenfold_step", "peak_chosen_step", "chosen_drop"))
    assert list(sub) == ["rejected_tenfold_step", "peak_chosen_step", "chosen_drop"]
    assert "frac" in sub["rejected_tenfold_step"] and "frac" not in sub["chosen_drop"]


# ----------------------------------------------------------------------------- summarise_members
def test_summarise_members_clips_bounded_indicators_only():
    ind = {
        "final_rejected_prob": np.array([1e-36, 2e-36, 1e-33, 3e-36]),         # t-interval goes below 0
        "peak_chosen_prob": np.array([0.99, 0.999, 0.5, 0.999]),               # ... and above 1
        "unpaired_gain": np.array([-0.99, 0.5, -0.99, -0.99]),                 # bounds (-1, 1)
        "peak_chosen_step": np.array([-5.0, 5.0, 6.0, -4.0]),                  # unbounded: left alone
        "chosen_drop": np.array([0.1, 0.1, 0.1, 0.1]),
    }
    s = records.summarise_members(ind, np.arange(4))
    raw = {k: stats.mean_ci(v) for k, v in ind.items()}
    assert raw["final_rejected_prob"]["lo"] < 0 and raw["peak_chosen_prob"]["hi"] > 1
    assert s["final_rejected_prob"]["lo"] == 0.0 and s["final_rejected_prob"]["hi"] == raw["final_rejected_prob"]["hi"]
    assert s["peak_chosen_prob"]["hi"] == 1.0 and s["peak_chosen_prob"]["lo"] == raw["peak_chosen_prob"]["lo"]
    assert s["unpaired_gain"]["lo"] == -1.0 and s["unpaired_gain"]["hi"] == raw["unpaired_gain"]["hi"]
    assert s["peak_chosen_step"] == raw["peak_chosen_step"]
    assert s["chosen_drop"]["lo"] == s["chosen_drop"]["hi"] == pytest.approx(0.1)
    for k in ind:                                                   # the means are never clipped
        assert s[k]["mean"] == raw[k]["mean"]
        lo, hi = records.BOUNDS.get(k, (-math.inf, math.inf))
        assert lo <= s[k]["lo"] <= s[k]["mean"] <= s[k]["hi"] <= hi


def test_summarise_members_selects_members_and_uses_log10_for_the_final_ratio():
    ind = {
        "final_chosen_prob": np.array([0.1, 0.2, 0.3, 0.9]),
        "grad_ratio_initial": np.array([1.0, 100.0, 1e4, 1e8]),
        "grad_ratio_final": np.array([math.inf, math.inf, 1e300, 1.0]),        # overflowed in two members
        "log10_grad_ratio_final": np.array([400.0, 402.0, 300.0, 0.0]),
    }
    s = records.summarise_members(ind, [0, 1])
    assert s["final_chosen_prob"]["mean"] == pytest.approx(0.15) and s["final_chosen_prob"]["n"] == 2
    # the final ratio's geometric mean comes from the finite log10 records: 10**401, beyond float64
    assert s["grad_ratio_final"]["mean"] == math.inf and s["grad_ratio_final"]["n"] == 2
    assert s["log10_grad_ratio_final"]["mean"] == 401.0
    s = records.summarise_members(ind, np.array([1, 2]))                            # 10**351: still inf
    assert s["grad_ratio_final"]["mean"] == math.inf and s["log10_grad_ratio_final"]["mean"] == 351.0
    s = records.summarise_members(ind, [2, 3])
    assert s["grad_ratio_final"]["mean"] == pytest.approx(1e150, rel=1e-9)          # sqrt(1e300 * 1)
    assert s["grad_ratio_initial"]["mean"] == pytest.approx(1e6, rel=1e-9)          # sqrt(1e4 * 1e8)
    assert s["grad_ratio_initial"]["lo"] < 1e6 < s["grad_ratio_initial"]["hi"]
    assert set(s) == set(ind) and s["final_chosen_prob"]["mean"] == pytest.approx(0.6)


# ----------------------------------------------------------------------------- member_indicators
def _fake_run():
    """Two members, records at updates 0, 10, 20, 40 (record_every=10 and a last step), written by hand."""
    steps = np.array([0, 10, 20, 40])
    ln10 = math.log(10.0)
    log_rej = np.array([[math.log(0.12), math.log(0.12)],
                        [math.log(0.12) - 1.0 * ln10, math.log(0.12) - 2.0],
                        [math.log(0.12) - 1.5 * ln10, math.log(0.12) - 3.0],
                        [math.log(0.12) - 3.0 * ln10, math.log(0.12) - 4.0]])
    with np.errstate(divide="ignore"):
        log_gc = np.log(np.array([[1.0, 1.0], [1.0, 2.0], [0.5, 2.0], [0.0, 0.0]]))  # member 0's vanishes at the end
        log_gr = np.log(np.array([[2.0, 1.0], [20.0, 1.0], [200.0, 2.0], [5.0, 0.0]]))   # member 1: both vanish
    rc = {
        "chosen": np.array([[0.12, 0.12], [0.30, 0.20], [0.25, 0.22], [0.10, 0.21]]),
        "rejected": np.exp(log_rej),
        "log_rejected": log_rej,
        "unseen": np.array([[0.04, 0.04], [0.05, 0.03], [0.06, 0.02], [0.08, 0.01]]),
        "other": np.array([[0.36, 0.36], [0.40, 0.40], [0.50, 0.40], [0.70, 0.45]]),
        "log_grad_chosen": log_gc,
        "log_grad_rejected": log_gr,
    }
    return SimpleNamespace(records=rc, steps=steps)


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")
def test_member_indicators_on_hand_made_records():
    run = _fake_run()
    ind = records.member_indicators(run, rate_window=15)
    assert set(ind) == set(records.INDICATORS)
    assert all(v.shape == (2,) and v.dtype == np.float64 for v in ind.values())
    eq = np.testing.assert_allclose
    eq(ind["initial_chosen_prob"], [0.12, 0.12])
    eq(ind["peak_chosen_prob"], [0.30, 0.22])
    eq(ind["peak_chosen_step"], [10.0, 20.0])
    eq(ind["final_chosen_prob"], [0.10, 0.21])
    eq(ind["chosen_drop"], [0.20, 0.01], atol=1e-15)
    eq(ind["initial_rejected_prob"], [0.12, 0.12])
    eq(ind["final_rejected_prob"], [0.12e-3, 0.12 * math.exp(-4.0)])
    eq(ind["unseen_gain"], [0.04, -0.03], atol=1e-15)
    eq(ind["final_other_mass"], [0.70, 0.45])
    eq(ind["initial_unpaired_mass"], [0.40, 0.40])
    eq(ind["final_unpaired_mass"], [0.78, 0.46])
    eq(ind["unpaired_gain"], [0.38, 0.06], atol=1e-15)
    eq(ind["grad_ratio_initial"], [2.0, 1.0])
    # member 0: the chosen gradient vanished, the rejected did not: +inf; member 1: both vanished: NaN
    assert ind["grad_ratio_final"][0] == math.inf and math.isnan(ind["grad_ratio_final"][1])
    assert ind["log10_grad_ratio_final"][0] == math.inf and math.isnan(ind["log10_grad_ratio_final"][1])
    eq(ind["rejected_drop_orders"], [3.0, 4.0 / math.log(10.0)])
    # ratios member 0: 2, 20, 400, inf -> passes 10 at update 10, 100 at update 20; member 1: 1, 0.5, 1, NaN
    eq(ind["grad_ratio_10_step"][0], 10.0)
    eq(ind["grad_ratio_100_step"][0], 20.0)
    assert math.isnan(ind["grad_ratio_10_step"][1]) and math.isnan(ind["grad_ratio_100_step"][1])
    # rate over the first 15 updates: the first record at or after 15 is update 20
    eq(ind["rejected_log_decline_rate"], [1.5 * math.log(10.0) / 20.0, 3.0 / 20.0])
    # tenfold down: member 0 at update 10 (exactly one order: the threshold counts), member 1 at update 20
    # (e^-2 > 1/10 > e^-3)
    eq(ind["rejected_tenfold_step"], [10.0, 20.0])
    ind = records.member_indicators(run, rate_window=10)       # a window that hits a record exactly
    eq(ind["rejected_log_decline_rate"], [1.0 * math.log(10.0) / 10.0, 2.0 / 10.0])
    ind = records.member_indicators(run, rate_window=1000)     # longer than the run: the whole run
    eq(ind["rejected_log_decline_rate"], [3.0 * math.log(10.0) / 40.0, 4.0 / 40.0])


def test_member_indicators_warn_nothing_when_gradients_vanish():
    import warnings

    run = _fake_run()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records.member_indicators(run)


def test_member_indicators_without_updates_have_no_rate():
    run = _fake_run()
    one = SimpleNamespace(records={k: v[:1] for k, v in run.records.items()}, steps=run.steps[:1])
    ind = records.member_indicators(one)
    assert np.all(np.isnan(ind["rejected_log_decline_rate"]))
    assert np.all(ind["chosen_drop"] == 0.0) and np.all(ind["peak_chosen_step"] == 0.0)
    assert np.all(np.isnan(ind["rejected_tenfold_step"]))


def test_indicators_of_a_real_run_match_its_records():
    run = toy.train("dpo", seeds=2, steps=5, sft_steps=5, hidden=8, device="cpu", progress=False, record_probs=True)
    rc = run.records
    ind = records.member_indicators(run)
    np.testing.assert_array_equal(ind["initial_chosen_prob"], rc["chosen"][0])
    np.testing.assert_array_equal(ind["peak_chosen_prob"], rc["chosen"].max(axis=0))
    np.testing.assert_array_equal(ind["final_unseen_mass"], rc["unseen"][-1])
    np.testing.assert_allclose(ind["grad_ratio_initial"], rc["grad_rejected"][0] / rc["grad_chosen"][0], rtol=1e-12)
    s = records.summarise(run)
    assert list(s) == ["dpo"] and set(s["dpo"]) == set(records.INDICATORS)
    assert s["dpo"]["final_chosen_prob"]["mean"] == pytest.approx(rc["chosen"][-1].mean())
    assert s["dpo"]["peak_chosen_prob"]["n"] == 2 and s["dpo"]["peak_chosen_prob"]["frac"] == 1.0
    js = records.json_summary(s["dpo"])
    assert json.loads(json.dumps(js, allow_nan=False)) == js
    # role probabilities: aligned by role, averaged over seeds and prompts, a distribution
    for when in (0, -1):
        rp = records.role_probs(run, "dpo", when)
        assert rp.shape == (run.spec.n_responses,) and rp.sum() == pytest.approx(1.0, abs=1e-6)
        assert rp[0] == pytest.approx(rc["chosen"][when].mean(), rel=1e-5)
        rb = run.spec.rejected_block
        assert rp[rb.start: rb.stop].mean() == pytest.approx(rc["rejected"][when].mean(), rel=1e-5)
    no_probs = toy.train("dpo", seeds=2, steps=1, sft_steps=1, hidden=8, device="cpu", progress=False)
    with pytest.raises(ValueError, match="record_probs"):
        records.role_probs(no_probs)
