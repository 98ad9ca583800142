"""Tests of the analyses behind the confound checks of issue [7/11]: the log-probability gap of an RLHF
run to its closed-form optimum (prefdyn.rlhf.log_gap_to_optimum) and the matched-beta reading of which
3D-property a loss removes (prefdyn.toy.matched_removal)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from prefdyn import rlhf, toy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exact_run():
    runs = rlhf.run_rlhf(seeds=[0, 1], steps=10, sft_steps=10, methods=("reward_model", "rlhf_exact"),
                         progress=False, device="cpu")
    return runs["rlhf_exact"]


def test_log_gap_is_zero_at_the_optimum(exact_run):
    at_opt = dataclasses.replace(exact_run, final_log_probs=exact_run.optimum_log_probs())
    gap = rlhf.log_gap_to_optimum(at_opt)
    assert list(gap) == list(rlhf.LOG_GAP_LABELS)
    for v in gap.values():
        assert abs(v) < 1e-12


def test_log_gap_sees_what_total_variation_misses(exact_run):
    """Move one rejected response from pi* to pi* x 10^k: total variation barely changes, the gap is k."""
    lo = exact_run.optimum_log_probs()
    spec = exact_run.spec
    a = spec.rejected_block.start
    k = 30.0
    lp = lo.copy()
    lp[:, :, a] = lo[:, :, a] + k * math.log(10.0)                        # pi* tiny here: renormalise
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    gap = rlhf.log_gap_to_optimum(dataclasses.replace(exact_run, final_log_probs=lp))
    tv = 0.5 * np.abs(np.exp(lp) - np.exp(lo)).sum(-1).mean(-1)
    d = lp - lo
    assert gap["final_max_abs_log_ratio_max"] == pytest.approx(np.abs(d).max(), rel=1e-12)
    assert gap["final_max_abs_log_ratio_mean"] == pytest.approx(np.abs(d).max(axis=(1, 2)).mean(), rel=1e-12)
    rej = d[:, :, spec.rejected_block.start:spec.rejected_block.stop].mean(-1).mean(-1) / math.log(10.0)
    assert gap["log10_rejected_ratio_to_optimum_mean"] == pytest.approx(rej.mean(), rel=1e-12)
    assert gap["log10_rejected_ratio_to_optimum_min"] == pytest.approx(rej.min(), rel=1e-12)
    kl = (np.exp(lo) * (lo - lp)).sum(-1).mean(-1)
    assert gap["final_kl_optimum_to_policy_mean"] == pytest.approx(kl.mean(), rel=1e-12)
    assert gap["final_kl_optimum_to_policy_max"] == pytest.approx(kl.max(), rel=1e-12)
    assert gap["final_kl_optimum_to_policy_max"] >= 0.0
    cho = np.stack([np.diag(m) for m in d]).mean(-1) / math.log(10.0)
    assert gap["log10_chosen_ratio_to_optimum_mean"] == pytest.approx(cho.mean(), rel=1e-12)


def test_log_gap_of_a_trained_run(exact_run):
    gap = rlhf.log_gap_to_optimum(exact_run)
    assert gap["final_max_abs_log_ratio_max"] >= gap["final_max_abs_log_ratio_mean"] > 0.0
    assert gap["final_kl_optimum_to_policy_max"] >= gap["final_kl_optimum_to_policy_mean"] >= 0.0
    assert gap["log10_rejected_ratio_to_optimum_min"] <= gap["log10_rejected_ratio_to_optimum_mean"]


def test_log_gap_rejects_mismatched_shapes(exact_run):
    bad = dataclasses.replace(exact_run, final_log_probs=exact_run.final_log_probs[:1])
    with pytest.raises(ValueError, match="log_gap_to_optimum"):
        rlhf.log_gap_to_optimum(bad)


def _v(drop, deg, disp):
    return {"drastic_drop": drop, "degradation": deg, "dispersion": disp}


def test_matched_removal_separates_beta_from_the_loss():
    from prefdyn.toy.verdicts import matched_removal, matched_removal_reading
    dpo = {0.1: _v(True, True, True), 1.0: _v(True, False, True)}       # DPO at beta = 1 loses Degradation
    loss = {0.1: _v(True, True, False), 1.0: _v(True, False, False)}
    r = matched_removal(dpo, loss, own=1.0, base=0.1)
    assert r["claimed"] == ["degradation", "dispersion"]
    assert r["matched"] == ["dispersion"] and r["beta_only"] == ["degradation"]
    assert r["at_beta"] == {0.1: ["dispersion"], 1.0: ["dispersion"]}
    text = matched_removal_reading(r, 1.0)
    assert text == ("Degradation: only because DPO at β = 1 also loses it; "
                    "Dispersion: also at matched β = 1")
    low = {0.1: _v(True, False, True), 1.0: _v(True, False, True)}      # removes Degradation at 0.1 only
    r2 = matched_removal(dpo, low, own=1.0, base=0.1)
    assert r2["beta_only"] == ["degradation"] and r2["at_beta"][0.1] == ["degradation"]
    assert matched_removal_reading(r2, 1.0) == ("Degradation: only because DPO at β = 1 also loses it "
                                                "(removed at matched β = 0.1)")
    r3 = matched_removal(dpo, low, own=0.1, base=0.1)
    r3 = {**r3, "claimed": [], "matched": []}
    assert matched_removal_reading(r3, 0.1) == "Degradation: not claimed, removed at matched β = 0.1"
    same = matched_removal(dpo, dpo, own=0.1, base=0.1)
    assert same["claimed"] == [] and matched_removal_reading(same, 0.1) == "none claimed"
    with pytest.raises(ValueError, match="beta=0.3"):
        matched_removal(dpo, loss, own=0.3, base=0.1)


def test_falls_further_needs_intervals_apart():
    from prefdyn.toy.verdicts import falls_further
    a = {"rejected_drop_orders": {"mean": 30.0, "lo": 28.0, "hi": 32.0}}
    b = {"rejected_drop_orders": {"mean": 40.0, "lo": 33.0, "hi": 47.0}}
    c = {"rejected_drop_orders": {"mean": 40.0, "lo": 31.0, "hi": 49.0}}
    nan = {"rejected_drop_orders": {"mean": math.nan, "lo": math.nan, "hi": math.nan}}
    assert toy.verdicts.falls_further(a, b) and falls_further(a, b)
    assert not falls_further(a, c) and not falls_further(b, a) and not falls_further(a, nan)
