"""prefdyn.lm.rl: the rules, RLOO (advantage, loss, one update against a hand-written one, a short run) and
DPO vs RLOO (000 Sec. 5.2.1 / Table 3); prefdyn.probes.response_logprobs against pair_logprobs."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from prefdyn.lm import models as M, prefdata as P, rl, task as T  # noqa: E402
from prefdyn.probes import pair_logprobs, response_logprobs, token_pairs  # noqa: E402
from prefdyn.stats import mean_ci  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")      # tests/conftest.py


@pytest.fixture(scope="module")
def policy():
    return M.load_lm("arith-a")


def _one(a: int, b: int, digits: int = 3) -> T.Problems:
    return T.Problems(torch.tensor([a]), torch.tensor([b]), digits)


# --- the rules ------------------------------------------------------------------------------------------

# 37 + 485 = 522: (response, correct, digits, format), written out by hand
HAND = [
    ("0522", 1, 1.0, 1),
    ("522", 1, 1.0, 0),                      # right value, not the task's 4-digit style
    ("12,12,05;0522", 1, 1.0, 1),            # worked style: 7+5=12, 3+8+1=12, 0+4+1=05
    ("99,99,99;0522", 1, 1.0, 1),            # the chain is not graded, its shape is
    ("12,12;0522", 1, 1.0, 0),               # two columns for 3-digit operands
    ("12,12,05;522", 1, 1.0, 0),             # the answer after ';' must have 4 digits
    ("0521", 0, 0.9 * 3 / 4, 1),             # 3 of 4 digits agree
    ("05221", 0, 0.9 * 1 / 5, 0),            # right-aligned: only the tens' 2 agrees
    ("9999", 0, 0.0, 1),
    ("", 0, 0.0, 0),
    ("0522;", 0, 0.0, 0),
    ("05,2", 0, 0.0, 0),
]


def test_rule_scores_of_hand_written_responses():
    prob = T.Problems(torch.tensor([37] * len(HAND)), torch.tensor([485] * len(HAND)), 3)
    got = rl.rule_scores([h[0] for h in HAND], prob)
    assert set(got) == set(rl.RULES)
    for i, (r, c, d, f) in enumerate(HAND):
        assert got["correct"][i] == c, r
        assert got["digits"][i] == pytest.approx(d), r
        assert got["format"][i] == f, r
        assert got["total"][i] == pytest.approx(d + 0.1 * f), r
    assert got["total"].dtype == torch.float64 and got["total"].shape == (len(HAND),)


def test_rule_scores_per_sample_grid_and_one_digit_problems():
    # [P, n]: two problems, three samples each; 7 + 5 = 12 with one-digit operands
    prob = T.Problems(torch.tensor([7, 37]), torch.tensor([5, 485]), 1)
    got = rl.rule_scores([["12", "12;12", "2"], ["12", "99;12", "12,12;12"]], prob)
    assert got["correct"].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert got["format"].tolist() == [[1, 1, 0], [1, 1, 0]]
    assert got["total"].shape == (2, 3)
    # every reference answer of the task is formatted, in both styles, for any operand width
    for d in (1, 3, 4):
        p = T.sample_problems(50, d, split="any", seed=d)
        for style in T.STYLES:
            s = rl.rule_scores(p.answers(style), p)
            assert s["format"].eq(1).all() and s["correct"].eq(1).all() and s["total"].eq(1.1).all()


def test_rule_scores_bad_input():
    prob = _one(37, 485)
    with pytest.raises(ValueError, match="^responses: "):
        rl.rule_scores(["0522", "0522"], prob)
    with pytest.raises(ValueError, match="^responses: "):
        rl.rule_scores("0522", prob)
    with pytest.raises(ValueError, match="^problems: "):
        rl.rule_scores(["0522"], [(37, 485)])
    with pytest.raises(ValueError, match="^digits: "):
        rl.is_formatted("0522", 0)


def test_evaluate_rules_correct_is_the_accuracy(policy):
    p = T.sample_problems(24, 3, split="test", seed=5)
    ev = rl.evaluate_rules(policy, p)
    assert ev["correct"] == pytest.approx(P.accuracy(policy, p))
    sampled = rl.evaluate_rules(policy, p, greedy=False, n=2, seed=3)
    assert sampled["correct"] == pytest.approx(P.accuracy(policy, p, greedy=False, n=2, seed=3))
    assert sampled == rl.evaluate_rules(policy, p, greedy=False, n=2, seed=3)
    assert ev["total"] == pytest.approx(ev["digits"] + 0.1 * ev["format"])


# --- RLOO: advantage, loss, KL sign ----------------------------------------------------------------------

def _brute_advantages(score, logp, ref, c):
    P_, k = score.shape
    R = [[float(score[p, i]) - c * (float(logp[p, i]) - float(ref[p, i])) for i in range(k)] for p in range(P_)]
    A = [[R[p][i] - sum(R[p][j] for j in range(k) if j != i) / (k - 1) for i in range(k)] for p in range(P_)]
    return torch.tensor(A, dtype=torch.float64), torch.tensor(R, dtype=torch.float64)


def test_rloo_advantage_is_the_leave_one_out_loop():
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 5):
        score = torch.rand(4, k, generator=g)
        logp, ref = -5 * torch.rand(4, k, generator=g), -5 * torch.rand(4, k, generator=g)
        A, R = rl.rloo_advantages(score, logp, ref, 0.3)
        A0, R0 = _brute_advantages(score, logp, ref, 0.3)
        torch.testing.assert_close(A, A0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(R, R0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(A.sum(1), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)


def test_rloo_loss_gradient_is_minus_the_detached_advantage_over_the_samples():
    g = torch.Generator().manual_seed(1)
    score = torch.rand(3, 4, generator=g, dtype=torch.float64)
    ref = -4 * torch.rand(3, 4, generator=g, dtype=torch.float64)
    logp = (-4 * torch.rand(3, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    loss = rl.rloo_loss(logp, ref, score, 0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    A, _ = _brute_advantages(score, logp.detach(), ref, 0.2)
    torch.testing.assert_close(grad, -A / 12, rtol=1e-12, atol=1e-14)
    assert float(loss.detach()) == pytest.approx(float(-(A * logp.detach()).sum() / 12), rel=1e-12)
    # the advantage is detached: differentiating through it (its KL term depends on logp) gives another gradient
    R = score - 0.2 * (logp - ref)
    through = -((R - (R.sum(1, keepdim=True) - R) / 3) * logp).mean()
    (g2,) = torch.autograd.grad(through, logp)
    assert not torch.allclose(g2, grad)


def test_kl_penalty_lowers_the_reward_of_samples_the_policy_made_likelier():
    score = torch.tensor([[1.0, 1.0]])
    ref = torch.tensor([[-3.0, -3.0]])
    logp = torch.tensor([[-1.0, -3.0]])                        # sample 0: log pi - log pi_ref = +2
    A, R = rl.rloo_advantages(score, logp, ref, 0.1)
    assert R[0].tolist() == pytest.approx([1.0 - 0.2, 1.0])
    assert A[0, 0] < 0 < A[0, 1]
    A0, R0 = rl.rloo_advantages(score, logp, ref, 0.0)
    assert A0.abs().max() == 0 and R0.tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="^kl_coef: "):
        rl.rloo_advantages(score, logp, ref, -0.1)
    with pytest.raises(ValueError, match="^score: "):
        rl.rloo_advantages(score[:, :1], logp[:, :1], ref[:, :1], 0.1)


# --- log-probs of single sequences ------------------------------------------------------------------------

def test_response_logprobs_equal_pair_logprobs_in_any_order(policy):
    pr = [T.encode(p) for p in ("037+485=", "120+301=", "999+999=")]
    ch = [T.encode("0522") + [T.EOS], T.encode("0421") + [T.EOS], T.encode("19,19,19;1998") + [T.EOS]]
    rj = [T.encode("0521") + [T.EOS], T.encode("1") + [T.EOS], T.encode("1998")]        # the last without EOS
    ref = pair_logprobs(policy, token_pairs(pr, ch, rj), batch_size=2)
    # the six sequences shuffled, prompts shared by two sequences each, plus one prompt alone (odd count)
    order = [(0, "c"), (2, "r"), (1, "r"), (0, "r"), (2, "c"), (1, "c")]
    p_ids = [pr[i] for i, _ in order] + [pr[1]]
    r_ids = [(ch if s == "c" else rj)[i] for i, s in order] + [rj[1]]
    got = response_logprobs(policy, p_ids, r_ids, pad_token_id=T.PAD)
    want = [float((ref.chosen if s == "c" else ref.rejected)[i]) for i, s in order] + [float(ref.rejected[1])]
    torch.testing.assert_close(got.sums.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert got.lengths.tolist() == [len(r) for r in r_ids]
    row = got.tokens[1, :int(got.lengths[1])].double()           # per-token log-probs of (prompt 2, rejected)
    torch.testing.assert_close(row, ref.rejected_tokens[2, :4], rtol=1e-5, atol=1e-5)
    alone = response_logprobs(policy, [pr[1]], [rj[1]], pad_token_id=T.PAD)  # one sequence, paired with itself
    assert float(alone.sums[0].detach()) == pytest.approx(float(ref.rejected[1]), abs=1e-5)


def test_response_logprobs_bad_input(policy):
    with pytest.raises(ValueError, match="^response_ids: "):
        response_logprobs(policy, [[5, 6]], [[7], [8]])
    with pytest.raises(ValueError, match=r"^response_ids\[1\]: "):
        response_logprobs(policy, [[5, 6], [5, 6]], [[7], []])
    with pytest.raises(ValueError, match=r"^prompt_ids\[0\]: "):
        response_logprobs(policy, [[]], [[7]])
    with pytest.raises(ValueError, match="^prompt_ids: "):
        response_logprobs(policy, "037+485=", [[7]])


# --- RLOO training ----------------------------------------------------------------------------------------

def _slow_logp(model, prompt: str, response_ids: list[int]) -> torch.Tensor:
    """Independent: the sequence alone, unpadded, log-softmax over the whole vocabulary, summed."""
    ids = torch.tensor([T.encode(prompt) + response_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    n = len(T.encode(prompt))
    return sum(logp[n - 1 + t, tok] for t, tok in enumerate(response_ids))


def test_one_update_is_a_hand_written_reinforce_loo_step(policy):
    """Re-draw the first step's prompts and samples independently, compute the loss with a loop over the
    sequences (each alone) and the leave-one-out baseline by hand: AdamW's first step with no weight decay
    moves every weight by -lr g / (|g| + eps), so the weights after one update reveal the gradient's
    direction, which must be ours."""
    prob = T.sample_problems(8, 3, split="train", seed=4)
    k, pps, lr, c, seed = 3, 4, 1e-3, 0.5, 7
    run = rl.train_rloo(policy, prob, k=k, steps=1, prompts_per_step=pps, lr=lr, kl_coef=c, max_grad_norm=None,
                        seed=seed, max_new_tokens=24)
    batch = prob.select(torch.randperm(8, generator=torch.Generator().manual_seed(seed))[:pps])
    texts = M.generate(policy, batch.prompts, n=k, generator=torch.Generator().manual_seed(seed + 1))
    model = copy.deepcopy(policy)
    model.zero_grad()
    limit = min(24, 32 - 8 - 1)
    loss = 0.0
    for p_i, (prompt, rs, a, b) in enumerate(zip(batch.prompts, texts, batch.a.tolist(), batch.b.tolist())):
        lps = [_slow_logp(model, prompt, T.encode(r) + ([T.EOS] if len(r) < limit else [])) for r in rs]
        R = [T.score(r, a, b, 3) + 0.1 * rl.is_formatted(r, 3) for r in rs]   # KL term 0: pi = pi_ref at step 0
        for i in range(k):
            A = R[i] - sum(R[j] for j in range(k) if j != i) / (k - 1)
            loss = loss - A * lps[i] / (pps * k)
    loss.backward()
    assert run.log["loss"][0] == pytest.approx(float(loss.detach()), rel=1e-4, abs=1e-6)
    assert run.log["kl"][0] == pytest.approx(0.0, abs=1e-5)
    moved = dict(run.model.named_parameters())
    n_checked = 0
    for name, p0 in policy.named_parameters():
        g = dict(model.named_parameters())[name].grad
        if g is None:
            continue
        big = g.abs() > 1e-5
        step = (moved[name].detach() - p0.detach())[big].double()
        want = (-lr * g / (g.abs() + 1e-8))[big].double()
        torch.testing.assert_close(step, want, rtol=2e-3, atol=2e-8)
        n_checked += int(big.sum())
    assert n_checked > 10_000


def test_train_rloo_is_reproducible_and_logs_what_it_says(policy):
    prob = T.sample_problems(12, 3, split="train", seed=1)
    kw = dict(k=2, steps=3, prompts_per_step=4, lr=1e-4, kl_coef=0.1, log_every=2)
    a = rl.train_rloo(policy, prob, seed=3, **kw)
    b = rl.train_rloo("arith-a", prob, seed=3, **kw)             # by name: the same weights, the same run
    c = rl.train_rloo(policy, prob, seed=4, **kw)
    assert list(a.log) == list(rl.RLOO_COLUMNS)
    assert a.log["step"].tolist() == [0.0, 2.0]
    for col in rl.RLOO_COLUMNS:
        np.testing.assert_array_equal(a.log[col], b.log[col])
    np.testing.assert_array_equal(a.rewards, b.rewards)
    assert not all(np.array_equal(a.log[col], c.log[col]) for col in ("loss", "logp_token"))
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    # the caller's policy is not trained; the first step's samples come from it, so their KL is 0
    for p0, p1 in zip(policy.parameters(), M.load_lm("arith-a").parameters()):
        assert torch.equal(p0, p1)
    assert a.log["kl"][0] == pytest.approx(0.0, abs=1e-5) and a.log["kl"][1] != 0.0
    assert a.log["total"][0] == pytest.approx(a.rewards[0])
    assert a.log["reward"][0] == pytest.approx(a.log["total"][0], abs=1e-6)   # R = score at KL 0
    assert a.config["n_generated"] == 3 * 4 * 2


def test_a_short_rloo_run_raises_the_score(policy):
    """16 updates of 8 prompts x 4 samples: the mean total of 128 fresh samples (64 held-out problems x 2)
    rises far beyond its spread over sampling seeds. Measured over 6 sampling seeds: before 0.838 (standard
    deviation 0.013), after 0.950 (0.018); the lowest 'after' is 0.075 above the highest 'before'."""
    pool = T.sample_problems(256, 3, split="train", seed=2)
    test = T.sample_problems(64, 3, split="test", seed=9)
    before = [rl.evaluate_rules(policy, test, greedy=False, n=2, seed=s)["total"] for s in (0, 1, 2)]
    run = rl.train_rloo(policy, pool, k=4, steps=16, prompts_per_step=8, lr=2e-4, kl_coef=0.05, seed=0)
    after = [rl.evaluate_rules(run.model, test, greedy=False, n=2, seed=s)["total"] for s in (0, 1, 2)]
    assert min(after) > max(before) and np.mean(after) - np.mean(before) > 0.07, (before, after)
    assert run.log["total"][-1] > run.log["total"][0] and run.log["kl"][-1] > 0


@pytest.mark.parametrize("kw, match", [
    (dict(k=1), "^k: "), (dict(steps=0), "^steps: "), (dict(prompts_per_step=17), "^prompts_per_step: "),
    (dict(lr=0.0), "^lr: "), (dict(kl_coef=-1.0), "^kl_coef: "), (dict(reward="score"), "^reward: "),
    (dict(max_grad_norm=0.0), "^max_grad_norm: "), (dict(seed=-1), "^seed: "), (dict(log_every=0), "^log_every: "),
    (dict(temperature=0.0), "^temperature: "), (dict(max_new_tokens=0), "^max_new_tokens: "),
    (dict(device="tpu"), "^device: "), (dict(progress=1), "^progress: "),
])
def test_train_rloo_bad_input_raises_one_line_before_touching_the_policy(kw, match):
    prob = T.sample_problems(16, 3, split="train", seed=0)
    with pytest.raises(ValueError, match=match) as e:
        rl.train_rloo(object(), prob, **kw)                  # an object that is no model: never reached
    assert "\n" not in str(e.value)


def test_train_rloo_bad_problems_and_policy():
    with pytest.raises(ValueError, match="^problems: "):
        rl.train_rloo(object(), [(1, 2)])
    with pytest.raises(ValueError, match="^threads: "):
        rl.train_rloo(object(), T.sample_problems(16, 3, seed=0), threads=0)
    with pytest.raises(ValueError, match="^policy: "):
        rl.train_rloo(object(), T.sample_problems(16, 3, seed=0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_rloo_on_cuda_follows_the_cpu_run(policy):
    """On CUDA the forward/backward run on the GPU and a CPU copy samples: the first step's samples are the
    CPU run's (same weights, same generator), so its scores agree exactly and its loss to float32 rounding."""
    prob = T.sample_problems(16, 3, split="train", seed=1)
    kw = dict(k=2, steps=2, prompts_per_step=8, log_every=1, seed=0)
    cpu = rl.train_rloo(policy, prob, device="cpu", **kw)
    gpu = rl.train_rloo(policy, prob, device="cuda", **kw)
    assert next(gpu.model.parameters()).device.type == "cuda"
    for col in rl.RULES:
        assert gpu.log[col][0] == cpu.log[col][0]
    assert gpu.log["loss"][0] == pytest.approx(cpu.log["loss"][0], rel=1e-3, abs=1e-4)
    assert abs(gpu.log["kl"][0]) < 1e-4


# --- DPO vs RLOO ------------------------------------------------------------------------------------------

def test_rule_pairs_rank_by_total_and_drop_ties(policy):
    prob = T.sample_problems(40, 3, split="train", seed=6)
    pairs, sm, meta = rl.rule_pairs(policy, prob, k=4, seed=2)
    total = sm.scores
    tied = total.max(1).values == total.min(1).values
    assert meta["n_pairs"] == len(pairs) == int((~tied).sum()) > 0 and tied.any()
    kept = [i for i in range(40) if not tied[i]]
    for d, i in zip(pairs, kept):
        assert d["prompt"] == prob.prompts[i]
        s = rl.rule_scores([[d["chosen"], d["rejected"]]], prob.select([i]))["total"][0]
        assert float(s[0]) == float(total[i].max()) > float(s[1]) == float(total[i].min())
    again, _, _ = rl.rule_pairs(policy, prob, k=4, seed=2)
    assert again == pairs


def test_dpo_vs_rl_tiny_run_tables_and_bad_input(policy):
    kw = dict(n_prompts=8, seeds=(0, 1), k=2, prompts_per_step=4, n_eval=6, eval_sets=("in_distribution", "ood_carry"),
              modes=("greedy",), rl_lr=1e-4, dpo_lr=1e-5)
    r = rl.dpo_vs_rl(policy, **kw)
    assert r.scores.shape == (3, 2, 2, 1, 4) and r.methods == list(rl.RL_METHODS)
    np.testing.assert_array_equal(r.scores[0, 0], r.scores[0, 1])            # the base, evaluated once
    test = rl._eval_problems("in_distribution", 6, 0)
    base = rl.evaluate_rules(policy, test)
    assert r.scores[0, 0, 0, 0].tolist() == [base[q] for q in rl.RULES]
    for q, rule in enumerate(rl.RULES):
        assert r.table["rloo"][rule] == mean_ci(r.scores[2, :, 0, 0, q])
        assert r.tables["ood_carry"]["greedy"]["dpo"][rule] == mean_ci(r.scores[1, :, 1, 0, q])
        assert r.rl_minus_dpo["in_distribution"]["greedy"][rule] == mean_ci(r.scores[2, :, 0, 0, q]
                                                                            - r.scores[1, :, 0, 0, q])
    assert r.rl_log["kl"].shape[0] == 2 and r.dpo_losses.shape == (2, 2)
    assert r.config["n_generated_per_method"] == 16 and r.config["steps"] == 2
    again = rl.dpo_vs_rl(policy, **kw)
    np.testing.assert_array_equal(again.scores, r.scores)
    for bad, match in [(dict(seeds=()), "^seeds: "), (dict(seeds=(-1,)), "^seeds: "),
                       (dict(n_prompts=1), "^n_prompts: "), (dict(prompts_per_step=9), "^prompts_per_step: "),
                       (dict(eval_sets=("test",)), "^eval_sets: "), (dict(modes=("beam",)), "^modes: "),
                       (dict(beta=0.0), "^beta: "), (dict(dpo_lr=-1.0), "^dpo_lr: "),
                       (dict(device="tpu"), "^device: ")]:
        with pytest.raises(ValueError, match=match):
            rl.dpo_vs_rl(object(), **{**kw, **bad})


def test_paper_table3_as_printed():
    poem = rl.PAPER_TABLE3["Poem"]
    wins = [m["RLHF-PPO"] > m["DPO"] for d in rl.PAPER_TABLE3.values() for m in d.values()]
    assert wins.count(True) == 6 and poem["Row Number"]["DPO"] == 0.93     # DPO ahead on Row Number only
    assert all(m["Base"] < min(m["RLHF-PPO"], m["DPO"]) for d in rl.PAPER_TABLE3.values() for m in d.values())
