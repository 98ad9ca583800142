"""prefdyn.lm.scenarios: the OOD set, the pair split, the scenario runs and the verdicts of the chapter llm-3d."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from prefdyn.lm import prefdata as P, scenarios as SC, task as T  # noqa: E402


def _carries_brute(a: int, b: int, digits: int) -> bool:
    """Independent: column addition on the decimal strings."""
    sa, sb = f"{a:0{digits}d}"[::-1], f"{b:0{digits}d}"[::-1]
    carry = 0
    for x, y in zip(sa, sb):
        carry = (int(x) + int(y) + carry) // 10
        if not carry:
            return False
    return True


def test_full_carry_matches_column_addition():
    g = torch.Generator().manual_seed(3)
    for d in (1, 2, 3):
        p = T.sample_problems(2000, d, split="any", generator=g)
        got = SC.has_full_carry(p.a, p.b, d).tolist()
        assert got == [_carries_brute(a, b, d) for a, b in zip(p.a.tolist(), p.b.tolist())]
    # 999 + 001 carries out of every column, 500 + 499 out of none
    assert SC.has_full_carry(torch.tensor([999, 500]), torch.tensor([1, 499]), 3).tolist() == [True, False]


def test_carry_problems_are_held_out_full_carry_and_seeded():
    p = SC.carry_problems(50, seed=7)
    assert len(p) == 50 and p.digits == 3
    assert bool(T.is_held_out(p.a, p.b).all())
    assert all(_carries_brute(a, b, 3) for a, b in zip(p.a.tolist(), p.b.tolist()))
    q = SC.carry_problems(50, seed=7)
    assert torch.equal(p.a, q.a) and torch.equal(p.b, q.b)
    with pytest.raises(ValueError, match="^n: "):
        SC.carry_problems(0)


def _fake_data(n=20):
    pairs = {s: [{"prompt": f"p{i}", "chosen": f"c{s}{i}", "rejected": f"r{s}{i}"} for i in range(n)]
             for s in (1, 2, 3, 4)}
    return P.PrefData(pairs, {}, None, None, None, None)


def test_split_pairs_is_one_fixed_partition_shared_by_the_scenarios():
    sp = SC.split_pairs(_fake_data(), 0.25, seed=1)
    for s in (1, 2, 3, 4):
        tr, te = [d["prompt"] for d in sp["train"][s]], [d["prompt"] for d in sp["test"][s]]
        assert len(te) == 5 and len(tr) == 15 and not set(tr) & set(te)
        assert te == [d["prompt"] for d in sp["test"][1]]            # the same prompts in every scenario
        assert all(d["chosen"].startswith(f"c{s}") for d in sp["train"][s])
    assert SC.split_pairs(_fake_data(), 0.25, seed=1) == sp
    with pytest.raises(ValueError, match="^test_frac: "):
        SC.split_pairs(_fake_data(), 0.0)
    bad = _fake_data()
    bad.pairs[2] = bad.pairs[2][1:]
    with pytest.raises(ValueError, match="^data: "):
        SC.split_pairs(bad, 0.25)


def test_paper_claims_read_the_printed_table_1():
    c = SC.paper_claims("Baichuan2-13B")
    # 13B S1: chosen -0.9181 -> -0.9681 (falls), rejected -0.9393 -> -0.9982: drop 0.0589 > 0.0500
    assert c["degradation"] == {"S1": True, "S2": False, "S3": False, "S4": False}
    assert c["drastic_drop"]["S1"] is True and c["drastic_drop"]["S2"] is True
    assert c["s1_slowest_rejected_decline"] is True and c["s1_best_accuracy"] is True
    assert c["off_policy_worst_accuracy"] is True
    c33 = SC.paper_claims("Baichuan2-33B")
    assert c33["off_policy_worst_accuracy"] is False                 # S2 is the worst there (0.51409)
    assert c33["accuracy_changes"]["S2"] == "down"


def _runs(d_chosen, d_rejected, acc_after, base=0.5, K=4):
    """A ScenarioRuns with given per-scenario changes (plus a small per-seed jitter)."""
    S = len(d_chosen)
    jit = np.linspace(-1e-3, 1e-3, K)
    logp = np.zeros((S, K, 2, 2, 2))
    logp[:, :, 0, 0], logp[:, :, 0, 1] = -0.5, -1.0
    logp[:, :, 1, 0] = -0.5 + np.asarray(d_chosen)[:, None, None] + jit[None, :, None]
    logp[:, :, 1, 1] = -1.0 + np.asarray(d_rejected)[:, None, None] + jit[None, :, None]
    acc = {"in_distribution": {"greedy": np.asarray(acc_after)[:, None] + jit[None, :],
                               "sampled": np.zeros((S, K))}}
    g = np.zeros((S, K, 3))
    logs = {"log_grad_chosen": g, "log_grad_rejected": g + np.array([0.0, 1.0, 5.0]),
            "tok_log_grad_chosen": g, "tok_log_grad_rejected": g + np.array([0.0, 1.0, 5.0])}
    return SC.ScenarioRuns([1, 2, 3, 4][:S], list(range(K)), logp, acc,
                           {"in_distribution": {"greedy": base, "sampled": 0.0}}, logs, np.arange(3),
                           np.zeros((S, K, 3)))


def test_claims_verdicts_follow_the_intervals():
    r = _runs([0.1, -0.2, 0.0, -0.5], [-1.0, -0.1, -2.0, -3.0], [0.7, 0.5, 0.45, 0.2])
    c = SC.claims(r)
    assert [c["drastic_drop"][f"S{s}"]["holds"] for s in (1, 2, 3, 4)] == [True, False, True, True]
    assert [c["degradation"][f"S{s}"]["holds"] for s in (1, 2, 3, 4)] == [False, True, False, True]
    assert c["drastic_drop"]["S1"]["excess_drop"]["mean"] == pytest.approx(0.9, abs=1e-9)
    assert c["accuracy_changes"]["S1"]["change"]["mean"] == pytest.approx(0.2, abs=1e-9)
    assert c["accuracy_changes"]["S1"]["direction"] == "up" and c["accuracy_changes"]["S1"]["holds"]
    assert c["accuracy_changes"]["S2"]["holds"] is False           # 0.5 +- 1e-3 around the base 0.5
    assert c["s1_best_accuracy"]["holds"] and c["off_policy_worst_accuracy"]["holds"]
    assert c["s1_slowest_rejected_decline"]["holds"] is False       # S2 falls least
    assert c["s1_slowest_rejected_decline"]["extreme"] == "S2"
    assert c["grad_rejected_grows_more"]["S3"]["holds"]
    assert c["grad_rejected_grows_more"]["S3"]["log_growth_difference"]["mean"] == pytest.approx(5.0)
    tables = SC.claims_tables(c, {m: SC.paper_claims(m) for m in SC.PAPER_TABLE1})
    text = tables[0].text()
    assert "yes: 0.9 [" in text and "000, Baichuan2-13B" in text


def test_run_scenarios_smoke_and_before_equals_the_reference():
    from prefdyn.lm import load_lm, make_pairs
    from prefdyn.probes import as_token_pairs, pair_logprobs

    pol, oth = load_lm("arith-a"), load_lm("arith-b")
    data = make_pairs(pol, oth, n_prompts=24, n_test=10, n_ood=10, seed=0)
    sp = SC.split_pairs(data, 0.25, seed=0)
    evals = {"in_distribution": data.test, "ood_carry": SC.carry_problems(10, seed=1)}
    r = SC.run_scenarios(sp, evals, seeds=[0, 1], scenarios=(1, 4), steps=3, batch_size=4, log_every=1,
                         sampled_sets=["ood_carry"])
    assert r.logp.shape == (2, 2, 2, 2, 2) and r.logs["log_grad_chosen"].shape == (2, 2, 3)
    tok = T.make_tokenizer()
    ref = pair_logprobs(pol, as_token_pairs(sp["test"][4], tok))
    assert r.logp[1, 0, 0, 0, 1] == pytest.approx(float(ref.chosen_mean.mean()), rel=1e-6)
    assert r.logp[1, 1, 0, 1, 1] == pytest.approx(float(ref.rejected_mean.mean()), rel=1e-6)
    assert not np.allclose(r.logp[:, :, 1], r.logp[:, :, 0])            # DPO moved the policy
    assert np.isnan(r.accuracy["in_distribution"]["sampled"]).all()
    assert np.isfinite(r.accuracy["ood_carry"]["sampled"]).all()
    assert r.base_accuracy["in_distribution"]["greedy"] == P.accuracy(pol, data.test)
    with pytest.raises(ValueError, match="^scenarios: "):
        SC.run_scenarios(sp, evals, seeds=[0], scenarios=(5,))
    with pytest.raises(ValueError, match="^batch_size: .*scenario 1"):     # before any training
        SC.run_scenarios(sp, evals, seeds=[0], scenarios=(1, 4), batch_size=len(sp["train"][1]) + 1)


def test_chapter_rejects_a_batch_larger_than_the_training_pairs_before_running():
    from prefdyn.chapters.catalog import get_chapter
    from prefdyn.chapters.params import ParameterError

    ch = get_chapter("llm-3d")
    with pytest.raises(ParameterError, match="batch_size.*at most n_prompts x \\(1 - test_frac\\) = 48"):
        ch.resolve({"n_prompts": 64, "test_frac": 0.25, "batch_size": 49})
    assert ch.resolve({"n_prompts": 64, "test_frac": 0.25, "batch_size": 48})["batch_size"] == 48
