"""Tests of ``prefdyn.imbalance.benchmark``: 004 Sec. 6.1's synthetic benchmark (and the additive pieces it
uses: ``ToySpec(n_rejected=0)``, ``stats.paired_test``, ``stats.holm``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from prefdyn import losses as L
from prefdyn import stats, toy
from prefdyn.imbalance import benchmark as B

F64 = dict(dtype=torch.float64, device="cpu")
LP = {"beta": 1.0, "beta_balanced": 1.0, "clip": 0.5, "gamma": 0.1}


# ------------------------------------------------------------------------------ the space (toy/space.py)
def test_square_spec_and_the_toy_spec_unchanged():
    spec = B.bench_spec(20)
    assert (spec.n_prompts, spec.n_responses, spec.n_rejected, spec.n_unseen) == (20, 20, 0, 0)
    assert spec.role_of(3, 3) == "chosen" and spec.role_of(3, 7) == "other"
    default = toy.ToySpec()                                         # the toy's space is unchanged
    assert (default.n_prompts, default.n_rejected, default.n_unseen, default.n_responses) == (4, 4, 2, 10)
    with pytest.raises(ValueError, match="n_rejected: expected an integer >= 0"):
        toy.ToySpec(n_rejected=-1)
    with pytest.raises(ValueError, match=r"^spec: 000's pairs need a rejected block \(n_rejected >= 1\), got n_rejected=0$"):
        toy.sample_rejected(spec, torch.tensor([0]), torch.arange(2), 2)
    rej = toy.sample_rejected(default, torch.tensor([0, 1]), torch.arange(3), 4)
    assert rej.min() >= 4 and rej.max() <= 7                      # still the rejected block 5-8


def test_utility_is_eq34_normalised():
    u = B.utility(20, 0.6)
    assert u.shape == (20, 20) and u.dtype == torch.float64
    assert torch.equal(torch.diagonal(u), torch.ones(20, dtype=torch.float64))
    assert u[4, 7].item() == pytest.approx(math.exp(-0.6 * 9)) and u[7, 4].item() == u[4, 7].item()
    assert int(u.argmax(-1).eq(torch.arange(20)).sum()) == 20


# ------------------------------------------------------------------------------ masks
def test_masks_count_nesting_optimal_and_batch_independence():
    seeds = [0, 5, 9]
    m = B.cell_masks(seeds, [0.0, 0.2, 0.4], 20)
    assert m.shape == (3, 3, 20, 20) and m.dtype == torch.bool
    assert torch.equal(m.sum(-1), torch.tensor([0, 4, 8]).view(3, 1, 1).expand(3, 3, 20))
    assert bool((m[1] <= m[2]).all())                                # nested: the 0.2 mask is in the 0.4 mask
    assert bool(torch.diagonal(m[2], dim1=-2, dim2=-1).any())        # the optimal cell can be masked
    keep = B.cell_masks(seeds, [0.4], 20, mask_optimal=False)
    assert not bool(torch.diagonal(keep, dim1=-2, dim2=-1).any())
    assert torch.equal(keep.sum(-1), torch.full((1, 3, 20), 8))
    alone = B.cell_masks([9], [0.2, 0.4], 20)                       # a seed's masks do not depend on the batch
    assert torch.equal(alone[:, 0], m[1:, 2])
    assert not torch.equal(m[2, 0], m[2, 1])


# ------------------------------------------------------------------------------ pairs
def _draw(weights, steps=4000, K=4, seeds=(3,)):
    util = B.utility(weights.shape[-1], 0.6)
    member_seed = torch.arange(len(seeds)).repeat_interleave(len(weights) // len(seeds))
    return B.sample_pairs(list(seeds), member_seed, weights, util, torch.arange(steps), K)


def test_pairs_are_distinct_unmasked_and_labelled_by_eq33():
    n = 6
    w = torch.ones(1, n, n, dtype=torch.float64)
    w[0, :, 0] = 0.0                                                # response 1 masked everywhere
    c, r = _draw(w)
    assert c.shape == (4000, 1, n, 4)
    assert bool((c != r).all()) and bool((c != 0).all()) and bool((r != 0).all())
    u = B.utility(n, 0.6)
    # uniform over the C(5, 2) unordered pairs of the unmasked responses
    lo, hi = torch.minimum(c, r), torch.maximum(c, r)
    x = 2
    counts = torch.zeros(n, n)
    counts.index_put_((lo[:, 0, x].flatten(), hi[:, 0, x].flatten()), torch.ones(lo[:, 0, x].numel()),
                      accumulate=True)
    pairs = [(i, j) for i, j in itertools.combinations(range(1, n), 2)]
    freq = np.array([counts[i, j].item() for i, j in pairs]) / counts.sum().item()
    assert sps.chisquare(freq * counts.sum().item()).pvalue > 1e-3
    assert np.abs(freq - 1 / len(pairs)).max() < 0.02
    # eq. 33: P(y1 chosen) = u1 / (u1 + u2), on the pair (2, 3) of prompt 2 (u = 1 and exp(-0.6))
    sel = (lo[:, 0, x] == 2) & (hi[:, 0, x] == 3)
    p_win = (c[:, 0, x][sel] == 2).double().mean().item()
    expect = 1.0 / (1.0 + math.exp(-0.6))
    assert abs(p_win - expect) < 4 * math.sqrt(expect * (1 - expect) / int(sel.sum()))


def test_pairs_from_weights_follow_the_exact_pair_law():
    n = 5
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    w = p.expand(1, n, n).clone()
    c, r = _draw(w, steps=5000)
    lo, hi = torch.minimum(c, r)[:, 0, 0].flatten(), torch.maximum(c, r)[:, 0, 0].flatten()
    emp = torch.zeros(n, n, dtype=torch.float64)
    emp.index_put_((lo, hi), torch.ones(lo.numel(), dtype=torch.float64), accumulate=True)
    emp /= emp.sum()
    exact = p[:, None] * p[None, :] / (1 - p[:, None]) + (p[:, None] * p[None, :] / (1 - p[None, :]))
    exact = torch.triu(exact, 1)
    assert float((emp - exact).abs().sum()) / 2 < 0.02             # total variation


def test_pairs_share_random_numbers_by_seed_not_by_batch():
    n = 8
    util = B.utility(n, 0.6)
    w = torch.ones(3, n, n, dtype=torch.float64)
    w[1, :, :2] = 0.0
    steps = torch.arange(5, 9)
    c, r = B.sample_pairs([4, 11], torch.tensor([0, 1, 0]), w, util, steps, 3, phase=1)
    c1, r1 = B.sample_pairs([11], torch.tensor([0]), w[1:2], util, steps, 3, phase=1)
    assert torch.equal(c[:, 1:2], c1) and torch.equal(r[:, 1:2], r1)
    c0, r0 = B.sample_pairs([4], torch.tensor([0]), w[:1], util, steps, 3, phase=1)
    assert torch.equal(c[:, 0:1], c0) and torch.equal(c[:, 2:3], c0)   # same seed, same weights: same pairs
    c2, _ = B.sample_pairs([4], torch.tensor([0]), w[:1], util, steps, 3, phase=0)
    assert not torch.equal(c2, c0)                                      # the phases draw new pairs


# ------------------------------------------------------------------------------ the losses and the trainer
def _members_for(methods, G, S):
    return len(methods) * G * S


@pytest.mark.parametrize("policy", ["tabular", "mlp"])
def test_one_update_is_the_loss_zoos_gradient(policy):
    """One SGD update of :func:`_train` (lr 1) moves the parameters by minus the autograd gradient of
    the mean over each member's pairs of ``prefdyn.losses`` (independent of the written-out backward)."""
    methods = list(B.METHODS)
    n, S, K = 6, 2, 3
    seeds = torch.tensor([0, 1])
    spec = B.bench_spec(n)
    M = len(methods) * S
    member_seed = torch.arange(S)
    pol = toy.make_policy(policy, spec, seeds.repeat(len(methods)), hidden=5, **F64)
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(M, pol.n_params, generator=gen, dtype=torch.float64)
    pol.load_flat(theta)
    ref_logp = torch.log_softmax(torch.randn(M, n, n, generator=gen, dtype=torch.float64), -1)
    util = B.utility(n, 0.6)
    w = torch.ones(S, n, n, dtype=torch.float64)
    w[:, :, 1] = 0.0
    losses = B.method_losses(methods, LP)
    before = {k: v.detach().clone() for k, v in pol.params.items()}
    rec, a, b = B._train(pol, ref_logp, B._groups(losses, S), seeds=seeds, member_seed=member_seed, weights=w,
                         util=util, steps=1, phase=0, optimizer="sgd", lr=1.0, pairs_per_prompt=K, record=[0, 1])
    # the independent computation
    c, r = B.sample_pairs(seeds, member_seed, w, util, torch.arange(1), K, phase=0)
    c, r = c[0].repeat(len(methods), 1, 1), r[0].repeat(len(methods), 1, 1)
    params = {k: v.clone().requires_grad_(True) for k, v in before.items()}
    logp = torch.log_softmax(pol.forward(params), -1)
    total, g_pairs = 0.0, []
    for i, (loss, kw) in enumerate(losses):
        sl = slice(i * S, (i + 1) * S)
        lc, lr_ = logp[sl].gather(2, c[sl]), logp[sl].gather(2, r[sl])
        rc, rr = ref_logp[sl].gather(2, c[sl]), ref_logp[sl].gather(2, r[sl])
        total = total + L.pair_loss(loss.name, lc, lr_, rc, rr, **kw).mean(dim=(1, 2)).sum()
        g_pairs.append(L.logprob_grads(loss.name, lc.detach(), lr_.detach(), rc, rr, **kw))
    grads = torch.autograd.grad(total, list(params.values()))
    for (k, v0), g in zip(before.items(), grads):
        assert torch.allclose(pol.params[k].detach(), v0 - g, rtol=1e-10, atol=1e-12), k
    # the recorded a and b are the per-pair (g+ -+ g-)/2 of prefdyn.losses.logprob_grads
    gp = torch.cat([x[0] for x in g_pairs]); gn = torch.cat([x[1] for x in g_pairs])
    assert torch.allclose(a, ((gp - gn).abs() / 2).mean(dim=(1, 2)), rtol=1e-10, atol=1e-14)
    assert torch.allclose(b, ((gp + gn) / 2).mean(dim=(1, 2)), rtol=1e-10, atol=1e-14)
    assert torch.equal(b[:S], torch.zeros(S, dtype=torch.float64))             # DPO: exactly balanced in log pi
    sft = methods.index("sft_dpo")
    assert torch.allclose(b[sft * S:(sft + 1) * S], torch.full((S,), -LP["gamma"] / 2, dtype=torch.float64))
    assert torch.allclose(rec[0], torch.softmax(pol.forward(before).detach(), -1))


def test_methods_map_to_the_loss_zoo_with_004s_parameters():
    got = {m: (loss.name, kw) for m, (loss, kw) in zip(B.METHODS, B.method_losses(list(B.METHODS), LP))}
    assert got["dpo"] == ("dpo", {"beta": 1.0})
    assert got["nbdpo_asym"] == ("nbdpo", {"beta": 1.0, "clip": 0.5, "symmetric": False})
    assert got["nbdpo_sym"] == ("nbdpo", {"beta": 1.0, "clip": 0.5, "symmetric": True})
    assert got["nbdpo_v2_sym"] == ("nbdpo_v2", {"beta": 1.0, "clip": 0.5, "symmetric": True})
    assert got["bdpo"] == ("bdpo", {"beta": 1.0})
    assert got["ipo"] == ("ipo", {"beta": 1.0}) and got["sft_dpo"] == ("sft_dpo", {"beta": 1.0, "gamma": 0.1})
    with pytest.raises(ValueError, match="^methods: expected one of"):
        B.method_losses(["dpo", "kto"])
    with pytest.raises(ValueError, match="clip"):
        B.method_losses(["nbdpo_sym"], {"clip": -1.0})


@pytest.fixture(scope="module")
def small_run():
    return B.run_benchmark([0, 1, 2], methods=["dpo", "nbdpo_sym", "bdpo", "sft_dpo"], masks=[0.0, 0.4],
                           pairs=["uniform", "reference"], n=8, ref_steps=20, checkpoints=(5, 15),
                           loss_params=LP, lr=0.05, **F64)


def test_run_shapes_reference_and_masked_logits(small_run):
    run = small_run
    assert run.probs.shape == (3, 4, 2, 2, 3, 8, 8) and run.steps == [0, 5, 15]
    assert np.allclose(run.probs.sum(-1), 1.0)
    for i in range(4):                                    # every method starts from the same reference
        assert np.array_equal(run.probs[0, i], run.probs[0, 0])
    assert np.allclose(run.probs[0, 0], run.ref_probs)
    assert np.allclose(run.init_probs, 1 / 8)             # tabular: uniform initial policy
    # tabular DPO never moves a masked logit: the masked cells keep their ratios to each other and their
    # log-ratio to the reference is the same for every masked cell of a prompt
    d = run.index("dpo")
    masked = run.masked[1]                                # mask 0.4: [S, P, R]
    for k in range(2):
        shift = np.log(run.probs[-1, d, k, 1]) - np.log(run.ref_probs[k, 1])
        for s in range(3):
            for x in range(8):
                v = shift[s, x][masked[s, x]]
                assert np.ptp(v) < 1e-12
        # bDPO under Adam moves them: their shifts differ from DPO's
        b = run.index("bdpo")
        shift_b = np.log(run.probs[-1, b, k, 1]) - np.log(run.ref_probs[k, 1])
        assert np.abs(shift_b - shift)[masked].max() > 1e-3
    assert np.all(run.grad_balance["b"][d] == 0.0) and np.all(run.grad_balance["b"][run.index("bdpo")] < 0)


def test_members_do_not_depend_on_the_batch(small_run):
    alone = B.run_benchmark([2], methods=["dpo", "bdpo"], masks=[0.4], pairs="reference", n=8, ref_steps=20,
                            checkpoints=(5, 15), loss_params=LP, lr=0.05, **F64)
    run = small_run
    for m in ("dpo", "bdpo"):
        assert np.allclose(alone.probs[:, alone.index(m), 0, 0, 0], run.probs[:, run.index(m), 1, 1, 2],
                           rtol=1e-12, atol=1e-14)


def test_metrics_by_brute_force(small_run):
    run = small_run
    m = B.metrics(run)
    t, i, k, j, s = 2, 1, 1, 1, 2
    p, u, mask = run.probs[t, i, k, j, s], run.util, run.masked[j, s]
    eu = [sum(p[x, y] * u[x, y] for y in range(8)) for x in range(8)]
    assert m["utility"][t, i, k, j, s] == pytest.approx(np.mean(eu), rel=1e-12)
    assert m["utility_sum"][t, i, k, j, s] == pytest.approx(np.sum(eu), rel=1e-12)
    assert m["p_optimal"][t, i, k, j, s] == pytest.approx(np.mean([p[x, x] for x in range(8)]), rel=1e-12)
    mm = [sum(p[x, y] for y in range(8) if mask[x, y]) for x in range(8)]
    assert m["masked_mass"][t, i, k, j, s] == pytest.approx(np.mean(mm), rel=1e-12)
    cond = [sum(p[x, y] * u[x, y] for y in range(8) if not mask[x, y]) / (1 - mm[x]) for x in range(8)]
    assert m["utility_unmasked"][t, i, k, j, s] == pytest.approx(np.mean(cond), rel=1e-10)
    assert np.allclose(m["utility_unmasked"][:, :, :, 0], m["utility"][:, :, :, 0], rtol=1e-12)   # no mask


def test_data_utility_matches_sampling(small_run):
    run = small_run
    d = B.data_utility(run)
    k, j = run.pairs_index("reference"), 1
    w = torch.as_tensor(~run.masked[j]).double() * torch.as_tensor(run.ref_probs[k, j])
    c, r = B.sample_pairs([0, 1, 2], torch.arange(3), w, torch.as_tensor(run.util), torch.arange(3000), 4)
    u = torch.as_tensor(run.util)
    x = torch.arange(8).view(1, 1, 8, 1)
    uc = u[x.expand_as(c), c].mean(dim=(0, 3)).mean(-1)          # [S]
    ur = u[x.expand_as(r), r].mean(dim=(0, 3)).mean(-1)
    assert np.allclose(uc.numpy(), d["chosen"][k, j], atol=0.01)
    assert np.allclose(ur.numpy(), d["rejected"][k, j], atol=0.01)
    first = (w / w.sum(-1, keepdim=True) * u).sum(-1).mean(-1)     # a sampled response: the first draw's law
    assert np.allclose(first.numpy(), d["sampled"][k, j], rtol=1e-12)


# ------------------------------------------------------------------------------ statistics
def test_paired_test_and_holm():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    t = stats.paired_test(x + 0.5, y)
    assert t["p_value"] == pytest.approx(sps.wilcoxon(x + 0.5 - y).pvalue)
    assert t["wins"] == int((x + 0.5 > y).sum()) and t["losses"] == int((x + 0.5 < y).sum()) and t["n"] == 20
    assert stats.paired_test([1.0, 2.0], [1.0, 2.0])["p_value"] == 1.0
    assert math.isnan(stats.paired_test([1.0], [0.0])["p_value"])
    with pytest.raises(ValueError, match="^y: expected 3 values"):
        stats.paired_test([1, 2, 3], [1, 2])
    # Holm's sequential rejection, written out, agrees with the adjusted p-values at every level
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 12))
        adj = stats.holm(p)
        for level in (0.01, 0.05, 0.1):
            reject, order = set(), np.argsort(p, kind="stable")
            for rank, i in enumerate(order):
                if p[i] > level / (len(p) - rank):
                    break
                reject.add(int(i))
            assert {i for i in range(len(p)) if adj[i] <= level} == reject
        assert np.all(adj >= p) and np.all(adj <= 1)
    assert np.isnan(stats.holm([np.nan, 0.01])[0]) and stats.holm([np.nan, 0.01])[1] == 0.01


def test_compare_rows_claims_and_mask_effect():
    rng = np.random.default_rng(1)
    S = 32
    base = rng.normal(0.4, 0.01, size=(1, 3, S))
    methods = ["dpo", "nbdpo_asym", "nbdpo_sym", "nbdpo_v2_asym", "nbdpo_v2_sym", "bdpo"]
    shift = np.array([0.0, 0.02, 0.05, 0.01, 0.03, 0.02]).reshape(-1, 1, 1)
    values = base + shift + rng.normal(0, 0.001, size=(6, 3, S))
    masks = [0.0, 0.2, 0.4]
    rows = B.compare_rows(values, methods, masks)
    assert len(rows) == 18
    r = next(r for r in rows if r["method"] == "nbdpo_sym" and r["mask"] == 0.4)
    assert r["delta_vs_dpo"] == pytest.approx(values[2, 2].mean() / values[0, 2].mean() - 1)
    assert r["wins"] == S and r["losses"] == 0
    compared = [r for r in rows if r["p_value"] is not None]
    assert len(compared) == 15
    assert np.allclose([r["p_holm"] for r in compared], stats.holm([r["p_value"] for r in compared]))
    assert next(r for r in rows if r["method"] == "dpo")["p_value"] is None
    masked = np.zeros((6, 3, S))
    c = B.claims(rows, values, methods, masks, masked + 0.1, np.full((3, S), 0.2))
    assert c == {"most_beat_dpo": True, "nbdpo_sym_best": True, "bdpo_beats_dpo": True,
                 "v2_worse_than_v1": True, "mask_some_not_worse": True, "mask_not_worse": True,
                 "no_ood_growth": True}
    worse = values.copy()
    worse[:, 2] -= 0.05                                            # everyone worse at mask 0.4
    c2 = B.claims(B.compare_rows(worse, methods, masks), worse, methods, masks, masked + 0.3,
                  np.full((3, S), 0.2))
    assert not c2["mask_not_worse"] and not c2["no_ood_growth"] and not c2["mask_some_not_worse"]
    mixed = values.copy()
    mixed[1:, 2] -= 0.05                                           # only DPO keeps its value at mask 0.4
    mixed[0, 2] += 0.001
    c3 = B.claims(B.compare_rows(mixed, methods, masks), mixed, methods, masks, masked, np.full((3, S), 0.2))
    assert c3["mask_some_not_worse"] and not c3["mask_not_worse"]         # existence holds, strong fails
    eff = B.mask_effect(worse, methods, masks)
    assert all(e["lower"] for e in eff.values())


def test_paper_table1_as_relative_changes():
    rel = B.paper_relative()
    assert rel["dpo"] == [0.0, 0.0, 0.0]
    assert rel["nbdpo_sym"][0] == pytest.approx(5.40 / 4.28 - 1)
    assert rel["bdpo"][2] == pytest.approx(4.68 / 4.71 - 1)


# ------------------------------------------------------------------------------ the grid
def test_grid_rows_claims_and_mechanism(small_run):
    runs = {("tabular", "adam"): small_run}
    rows = B.grid_rows(runs)
    assert len(rows) == 2 * 2 * 4 * 2                              # pairs x steps x methods x masks
    assert set(rows[0]) >= {"method", "mask", "pairs", "optimizer", "step", "mean", "std", "n", "delta_vs_dpo",
                            "p_value", "wins"}
    grid = B.grid_claims(runs, rows)
    assert set(grid) == {"tabular/adam/uniform/5", "tabular/adam/uniform/15", "tabular/adam/reference/5",
                         "tabular/adam/reference/15"}
    w = B.where_holds(grid, "no_ood_growth")
    assert w["n_cells"] == 4 and len(w["cells"]) == w["n_holds"]
    mech = B.mechanism_check(runs, rows)
    assert mech["unmasked_comparisons"] == 2 * 2 * 3 * 2
    assert sum(mech["utility_wins_by_step"].values()) == mech["utility_wins"]
    for table in (B.sensitivity_table(rows), B.claim_table(grid, "no_ood_growth"), B.reference_table(runs),
                  B.balance_table(small_run), B.data_table(small_run), B.paper_table(rows[:8]),
                  B.trajectory_table(runs, "masked_mass", ["dpo", "bdpo"], 0.4, "reference")):
        assert table.text()
    scale = B.reward_scale(small_run)
    assert scale["max"] == 8.0 and scale["uniform_policy"] == pytest.approx(float(small_run.util.sum() / 8))


# ------------------------------------------------------------------------------ ablations and learning rates
def test_ablations_train_on_the_a_term_and_on_dpo_plus_b():
    """One SGD update (lr 1) of the ablations moves each tabular logit by minus the gradient of
    sum_pairs (g+ log pi+ + g- log pi-)/(P K) with the ablated g± built from prefdyn.losses.logprob_grads:
    ``g± - b`` of the method ("_a") and DPO's ``g±`` plus the method's ``b`` ("_b")."""
    methods = ["dpo", "bdpo", "bdpo_a", "bdpo_b", "nbdpo_sym_a", "nbdpo_sym_b"]
    n, S, K = 6, 2, 3
    seeds = torch.tensor([0, 1])
    spec = B.bench_spec(n)
    pol = toy.make_policy("tabular", spec, seeds.repeat(len(methods)), **F64)
    gen = torch.Generator().manual_seed(2)
    M = len(methods) * S
    pol.load_flat(torch.randn(M, pol.n_params, generator=gen, dtype=torch.float64))
    ref_logp = torch.log_softmax(torch.randn(M, n, n, generator=gen, dtype=torch.float64), -1)
    util = B.utility(n, 0.6)
    w = torch.ones(S, n, n, dtype=torch.float64)
    losses = B.method_losses(methods, LP)
    dpo = B.method_losses(["dpo"], LP)[0]
    before = pol.forward().detach().clone()
    _, a, b = B._train(pol, ref_logp, B._groups(losses, S, methods, dpo), seeds=seeds, member_seed=torch.arange(S),
                       weights=w, util=util, steps=1, phase=0, optimizer="sgd", lr=1.0, pairs_per_prompt=K,
                       record=[1])
    c, r = B.sample_pairs(seeds, torch.arange(S), w, util, torch.arange(1), K, phase=0)
    c, r = c[0].repeat(len(methods), 1, 1), r[0].repeat(len(methods), 1, 1)
    z = before.clone().requires_grad_(True)
    logp = torch.log_softmax(z, -1)
    lc, lr_ = logp.gather(2, c), logp.gather(2, r)
    rc, rr = ref_logp.gather(2, c), ref_logp.gather(2, r)
    surrogate = 0.0
    for i, m in enumerate(methods):
        sl = slice(i * S, (i + 1) * S)
        base = m.rsplit("_", 1)[0] if m.endswith(("_a", "_b")) else m
        gp, gn = L.logprob_grads(B.METHODS[base][0], lc[sl].detach(), lr_[sl].detach(), rc[sl], rr[sl],
                                 **losses[i][1])
        half = (gp + gn) / 2
        if m.endswith("_a"):
            gp, gn = gp - half, gn - half
        elif m.endswith("_b"):
            dp, dn = L.logprob_grads("dpo", lc[sl].detach(), lr_[sl].detach(), rc[sl], rr[sl], beta=1.0)
            gp, gn = dp + half, dn + half
        surrogate = surrogate + ((gp * lc[sl] + gn * lr_[sl]).sum() / (n * K))
        # the recorded |a| and b are those of the ablated gradients
        assert torch.allclose(a[sl], ((gp - gn).abs() / 2).mean(dim=(1, 2)), rtol=1e-10, atol=1e-14), m
        assert torch.allclose(b[sl], ((gp + gn) / 2).mean(dim=(1, 2)), rtol=1e-10, atol=1e-14), m
    g, = torch.autograd.grad(surrogate, z)
    assert torch.allclose(pol.forward().detach(), before - g, rtol=1e-10, atol=1e-12)
    k = {m: slice(i * S, (i + 1) * S) for i, m in enumerate(methods)}
    assert torch.allclose(b[k["bdpo_a"]], torch.zeros(S, dtype=torch.float64), atol=1e-15)
    assert bool((b[k["bdpo_b"]] != 0).all()) and bool((b[k["nbdpo_sym_b"]] != 0).all())
    assert B.METHOD_LABELS["bdpo_b"] == "DPO + b of bDPO"


def test_lr_scales_best_lr_and_tables():
    run = B.run_benchmark([0, 1, 2], methods=["dpo", "bdpo"], masks=[0.0, 0.4], pairs=["uniform", "reference"],
                          n=8, ref_steps=10, checkpoints=(4,), loss_params=LP, lr=0.05, lr_scales=(0.5, 1.0, 2.0),
                          **F64)
    assert run.methods == ["dpo@0.5", "dpo", "dpo@2", "bdpo@0.5", "bdpo", "bdpo@2"]
    assert run.lr_scale["bdpo@2"] == 2.0 and B.lr_name("bdpo", 1.0) == "bdpo"
    # a member at scale x is the member trained alone at lr * x
    alone = B.run_benchmark([0, 1, 2], methods=["dpo", "bdpo"], masks=[0.0, 0.4], pairs=["uniform", "reference"],
                            n=8, ref_steps=10, checkpoints=(4,), loss_params=LP, lr=0.05, **F64)
    assert np.allclose(run.ref_probs, alone.ref_probs, rtol=1e-12)
    assert np.allclose(run.probs[:, run.index("bdpo")], alone.probs[:, alone.index("bdpo")], rtol=1e-12)
    twice = B.run_benchmark([0, 1, 2], methods=["dpo", "bdpo"], masks=[0.0, 0.4], pairs=["uniform", "reference"],
                            n=8, ref_steps=10, checkpoints=(4,), loss_params=LP, lr=0.05, **F64,
                            lr_scales=(1.0, 2.0))
    assert not np.allclose(twice.probs[-1, twice.index("bdpo@2")], alone.probs[-1, alone.index("bdpo")])
    rows = B.best_lr_rows(run)
    u = B.metrics(run)["utility"]
    for r in rows:
        q = run.pairs_index(r["pairs"])
        cands = {x: u[-1, run.index(B.lr_name(r["method"], x)), q].mean() for x in (0.5, 1.0, 2.0)}
        assert r["lr_scale"] == max(cands, key=cands.get)
        assert r["mean"] == pytest.approx(u[-1, run.index(B.lr_name(r["method"], r["lr_scale"])), q,
                                            run.masks.index(r["mask"])].mean())
    assert len(rows) == 2 * 2 * 2 and {r["policy"] for r in rows} == {"tabular"}
    assert B.lr_means_table(run, 4).text() and B.sensitivity_table(rows).text()
    table, eff = B.mask_effect_table({"maskable": (run, 4)}, ["dpo@0.5", "bdpo"])
    d = u[-1, run.index("bdpo"), 0, 1] - u[-1, run.index("bdpo"), 0, 0]
    assert eff["maskable/uniform"]["bdpo"]["diff"] == pytest.approx(d.mean()) and table.text()
    assert "0." in B.balance_grid_table({"t": run}, ["dpo", "bdpo"]).text()
    tests = B.grid_tests(B.grid_rows({("tabular", "adam"): alone}))
    assert tests == {"tests": 2 * 1 * 1 * 2, "cells": 2, "seeds": [3]}
    with pytest.raises(ValueError, match="^lr_scales: expected distinct positive factors that include 1"):
        B.run_benchmark(2, lr_scales=(0.5, 2.0))


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, fragment", [
    (dict(methods=["dpo", "kto"]), "^methods: expected one of"),
    (dict(methods=["bdpo"]), "^methods: expected a list that includes 'dpo'"),
    (dict(masks=[0.0, 0.95]), "^masks: expected rates that leave every prompt two responses"),
    (dict(masks=[-0.1]), "^masks: expected a finite number in \\[0, 1\\]"),
    (dict(pairs="policy"), "^pairs: expected one of uniform, reference"),
    (dict(policy="transformer"), "^policy: expected one of"),
    (dict(optimizer="rmsprop"), "^optimizer: expected one of"),
    (dict(checkpoints=[]), "^checkpoints: expected at least one"),
    (dict(checkpoints=[0]), "^checkpoints: expected an integer >= 1"),
    (dict(lr=-1.0), "^lr: expected a finite number > 0"),
    (dict(alpha=0.0), "^alpha: expected a finite number > 0"),
    (dict(loss_params={"beta": -1.0}), "beta"),
])
def test_bad_input_one_line_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        B.run_benchmark(2, **kwargs)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="^primary: expected one of"):
        B.run_settings({("tabular", "adam"): 0.01}, seeds=2, sensitivity_seeds=2, primary=("mlp", "sgd"))
