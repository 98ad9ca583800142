"""prefdyn.lm: the arithmetic task, the two shipped GPT-2 models and the preference data of 000 Table 4."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from prefdyn.lm import models as M, prefdata as P, task as T  # noqa: E402


@pytest.fixture(scope="module")
def model_a():
    return M.load_lm("arith-a")


@pytest.fixture(scope="module")
def model_b():
    return M.load_lm("arith-b")


# --- the task -------------------------------------------------------------------------------------------

def test_tokenizer_round_trip_and_shipped_tokenizer_agree():
    tok = T.make_tokenizer()
    shipped = transformers.AutoTokenizer.from_pretrained(M.model_dir("arith-a"), local_files_only=True)
    for s in ["037+485=", "12,12,05;0522", "0037+1485=0", "9;9,"]:
        ids = T.encode(s)
        assert tok(s)["input_ids"] == ids == shipped(s)["input_ids"]
        assert T.decode(ids + [T.EOS, 5, 6]) == s
    assert (shipped.eos_token_id, shipped.pad_token_id, len(shipped)) == (T.EOS, T.PAD, len(T.VOCAB))
    assert T.decode(T.encode("1x")) == "1?"


def test_answers_are_right_and_the_worked_chain_adds_columns():
    g = torch.Generator().manual_seed(0)
    for d in (1, 3, 4):
        p = T.sample_problems(200, d, split="any", generator=g)
        for a, b, plain, worked in zip(p.a.tolist(), p.b.tolist(), p.answers("plain"), p.answers("worked")):
            assert int(plain) == a + b and len(plain) == d + 1
            cols = [int(c) for c in worked.split(";")[0].split(",")]
            # independent: column i's total is digit_i(a) + digit_i(b) + carry, and the totals rebuild a + b
            assert sum((c % 10) * 10 ** i for i, c in enumerate(cols)) + (cols[-1] // 10) * 10 ** d == a + b
            assert T.score(plain, a, b, d) == T.score(worked, a, b, d) == 1.0


def test_verifier_scores():
    assert T.score("0522", 37, 485, 3) == 1.0
    assert T.score("522", 37, 485, 3) == 1.0                      # the value is graded, not the padding
    assert T.score("99,99,99;0522", 37, 485, 3) == 1.0            # the chain is not graded (000 Table 5)
    assert T.score("0521", 37, 485, 3) == pytest.approx(0.9 * 3 / 4)
    assert T.score("05221", 37, 485, 3) == pytest.approx(0.9 * 1 / 5)  # right-aligned: only the 2 of the tens
    assert T.score("1", 37, 485, 3) == pytest.approx(0.9 * 0 / 4)
    for bad in ["", "12,12,05;", "05,2", "0522;"]:
        assert T.score(bad, 37, 485, 3) == 0.0
    with pytest.raises(ValueError, match="partial"):
        T.score("1", 1, 1, 1, partial=1.0)


def test_held_out_split_and_bad_input():
    tr = T.sample_problems(3000, 3, split="train", seed=1)
    te = T.sample_problems(300, 3, split="test", seed=1)
    assert not T.is_held_out(tr.a, tr.b).any() and T.is_held_out(te.a, te.b).all()
    assert torch.equal(T.sample_problems(50, seed=3).a, T.sample_problems(50, seed=3).a)
    with pytest.raises(ValueError, match="split"):
        T.sample_problems(5, split="dev", seed=0)
    with pytest.raises(ValueError, match="seed"):
        T.sample_problems(5)
    with pytest.raises(ValueError, match="digits"):
        T.sample_problems(5, 0, seed=0)


# --- the shipped models ---------------------------------------------------------------------------------

def test_shipped_models_fit_the_budget_and_load_offline(model_a, model_b):
    total = sum(f.stat().st_size for name in M.SPECS for f in M.model_dir(name).iterdir())
    assert total <= 10e6
    for name, m in (("arith-a", model_a), ("arith-b", model_b)):
        log = json.loads((M.model_dir(name) / "train_log.json").read_text())
        spec = M.SPECS[name]
        assert log["n_params"] == M.n_params(m) and len(log["loss"]) == spec.steps
        assert (m.config.n_embd, m.config.n_layer) == (spec.n_embd, spec.n_layer)
        assert next(m.parameters()).dtype == torch.float32
    assert M.n_params(model_a) > 4 * M.n_params(model_b)
    with pytest.raises(ValueError, match="name_or_path"):
        M.load_lm("no-such-model")


def test_models_are_right_often_but_not_always(model_a, model_b):
    test = T.sample_problems(200, 3, split="test", seed=7)
    ood = T.sample_problems(100, 4, split="any", seed=8)
    acc_a = P.accuracy(model_a, test)
    assert 0.4 <= acc_a <= 0.85
    assert P.accuracy(model_a, ood) < acc_a - 0.2                 # one more digit: clearly worse
    assert P.accuracy(model_a, test.select(range(100)), greedy=False, n=2, seed=0) < acc_a
    assert 0.2 <= P.accuracy(model_b, test) <= 0.85


def test_first_training_steps_reproduce_the_shipped_curve():
    """The script's first steps (train_model with steps=k, one thread) against the shipped train_log.json:
    float32 on another CPU code path differs in the last digits, so 1e-4 relative."""
    for name, k in (("arith-b", 40), ("arith-a", 20)):
        shipped = json.loads((M.model_dir(name) / "train_log.json").read_text())["loss"][:k]
        _, log = M.train_model(M.SPECS[name], steps=k)
        assert torch.allclose(torch.tensor(log["loss"]), torch.tensor(shipped), rtol=1e-4, atol=0)
        assert log["loss"][-1] < log["loss"][0] - 0.3              # the test can fail: it learns


def test_train_model_checks_steps():
    with pytest.raises(ValueError, match="steps"):
        M.train_model(M.SPECS["arith-b"], steps=0)


# --- sampling and the pairs -----------------------------------------------------------------------------

def test_generate_is_seeded_and_checks_input(model_b):
    p = T.sample_problems(6, seed=2).prompts
    r1 = M.generate(model_b, p, n=3, generator=torch.Generator().manual_seed(5))
    r2 = M.generate(model_b, p, n=3, generator=torch.Generator().manual_seed(5))
    r3 = M.generate(model_b, p, n=3, generator=torch.Generator().manual_seed(6))
    assert r1 == r2 != r3 and len(r1) == 6 and all(len(r) == 3 for r in r1)
    with pytest.raises(ValueError, match="generator"):
        M.generate(model_b, p)
    with pytest.raises(ValueError, match="prompts"):
        M.generate(model_b, ["1+1=", "10+10="], greedy=True)


@pytest.fixture(scope="module")
def pref(model_b):
    # model B plays both roles here (fast); the sources are told apart by the seeds
    return P.make_pairs(model_b, model_b, n_prompts=24, n=8, seed=3, n_test=5, n_ood=5)


def test_pairs_follow_table_4_and_the_filter(pref):
    pol, oth = pref.policy, pref.other
    s = pol.scores
    keep = ((s == 1).any(1) & (s < 1).any(1) & (oth.scores < 1).any(1)).nonzero().squeeze(1).tolist()
    assert pref.meta["n_pairs"] == {k: len(keep) for k in range(1, 5)} and 0 < len(keep) < 24
    for j, i in enumerate(keep):
        a, b = int(pol.problems.a[i]), int(pol.problems.b[i])
        best = next(r for r, v in zip(pol.responses[i], s[i]) if v == s[i].max())     # first best, brute force
        worst = next(r for r, v in zip(pol.responses[i], s[i]) if v == s[i].min())
        o_worst = next(r for r, v in zip(oth.responses[i], oth.scores[i]) if v == oth.scores[i].min())
        ref = T.answer_text(a, b, 3, "worked")
        want = {1: (best, worst), 2: (ref, worst), 3: (best, o_worst), 4: (ref, o_worst)}
        for k in range(1, 5):
            pair = pref.pairs[k][j]
            assert pair["prompt"] == T.prompt_text(a, b, 3)
            assert (pair["chosen"], pair["rejected"]) == want[k]
            assert T.score(pair["chosen"], a, b, 3) == 1.0 > T.score(pair["rejected"], a, b, 3)
    m = pref.meta
    assert m["frac_kept_shared"] == pytest.approx(len(keep) / 24)
    assert m["frac_all_correct"] == pytest.approx(float((s == 1).all(1).double().mean()))
    assert T.is_held_out(pref.test.a, pref.test.b).all() and pref.ood.digits == 4


def test_pairs_are_reproducible_and_per_scenario_filter(model_b, pref):
    again = P.make_pairs(model_b, model_b, n_prompts=24, n=8, seed=3, n_test=5, n_ood=5)
    assert again.pairs == pref.pairs
    own = P.make_pairs(model_b, model_b, n_prompts=24, n=8, seed=3, n_test=5, n_ood=5, shared=False)
    assert {k: len(v) for k, v in own.pairs.items()} == {
        k: round(f * 24) for k, f in own.meta["frac_kept_own"].items()}
    assert len(own.pairs[4]) >= len(own.pairs[3]) and len(own.pairs[2]) >= len(own.pairs[1])
    with pytest.raises(ValueError, match="n:"):
        P.make_pairs(model_b, model_b, n=1)


def test_pairs_feed_prefdyn_probes(model_a, pref):
    """The pairs in the format of prefdyn.probes: its log-probs agree with a direct forward pass."""
    from prefdyn.probes import as_token_pairs, pair_logprobs

    tok = transformers.AutoTokenizer.from_pretrained(M.model_dir("arith-a"), local_files_only=True)
    pairs = pref.pairs[2][:4]
    lp = pair_logprobs(model_a, as_token_pairs(pairs, tok), batch_size=3)
    for i, pr in enumerate(pairs):
        for text, got in ((pr["chosen"], lp.chosen[i]), (pr["rejected"], lp.rejected[i])):
            ids = torch.tensor([T.encode(pr["prompt"] + text) + [T.EOS]])
            with torch.no_grad():
                logp = torch.log_softmax(model_a(input_ids=ids).logits[0, :-1].double(), -1)
            n = len(pr["prompt"])
            want = logp[n - 1:, :].gather(1, ids[0, n:, None]).sum()
            assert float(got) == pytest.approx(float(want), abs=1e-4)
