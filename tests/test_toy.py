"""Tests of the batched toy trainer ``prefdyn.toy`` (000 Sec. 3.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prefdyn import bench, plotting, records, rlhf, stats, toy, validate
from prefdyn import losses as L

F64 = dict(dtype=torch.float64, device="cpu", progress=False)


# ---------------------------------------------------------------------------------- the space
def test_spec_roles_partition_the_responses():
    spec = toy.ToySpec()
    assert spec.n_responses == 10
    masks = spec.role_masks()
    total = sum(m.to(torch.int64) for m in masks.values())
    assert torch.equal(total, torch.ones(4, 10, dtype=torch.int64))
    assert spec.role_of(2, 2) == "chosen" and spec.role_of(2, 0) == "other"
    assert spec.role_of(0, 5) == "rejected" and spec.role_of(0, 9) == "unseen"


def test_initial_distributions():
    spec = toy.ToySpec()
    p = toy.initial_distribution(spec)                  # 000 Sec. 3.2.2: 0.12 each, 0.02 per unseen
    assert torch.allclose(p.sum(-1), torch.ones(4, dtype=torch.float64))
    assert p[1, 1] == pytest.approx(0.12) and p[1, 6] == pytest.approx(0.12) and p[1, 9] == pytest.approx(0.02)
    for name, (c_on, r_on) in toy.SCENARIOS.items():
        q = toy.scenario_distribution(spec, name, on=0.12, off=0.01)
        assert torch.allclose(q.sum(-1), torch.ones(4, dtype=torch.float64))
        assert q[0, 0] == pytest.approx(0.12 if c_on else 0.01)
        assert q[0, 4] == pytest.approx(0.12 if r_on else 0.01)


# ---------------------------------------------------------------------------------- policies
def test_member_init_does_not_depend_on_the_batch():
    spec = toy.ToySpec()
    big = toy.MLPPolicy(spec, [0, 3, 5, 11], device="cpu", dtype=torch.float64)
    one = toy.MLPPolicy(spec, [5], device="cpu", dtype=torch.float64)
    assert torch.equal(big.flat()[2], one.flat()[0])
    assert not torch.equal(big.flat()[0], big.flat()[1])
    # the nn.Linear bound U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w2 = big.params["W2"]
    w2 = w2.detach()
    assert float(w2.abs().max()) <= 1 / math.sqrt(64) and float(w2.abs().max()) > 0.9 / math.sqrt(64)


def test_sft_hits_the_target_distribution():
    spec = toy.ToySpec()
    target = toy.scenario_distribution(spec, "s3", on=0.2, off=0.02)
    pol = toy.MLPPolicy(spec, 4, device="cpu", dtype=torch.float64)
    fit = toy.sft(pol, target, steps=500, lr=1e-2)
    assert float(fit["max_abs_err"].max()) < 2e-3
    assert float(fit["kl"].max()) < 1e-4
    assert torch.allclose(pol.probs(), target.expand(4, 4, 10), atol=2e-3)
    tab = toy.TabularPolicy(spec, 2, device="cpu", dtype=torch.float64)
    fit = toy.sft(tab, target)                               # exact for the tabular policy
    assert float(fit["max_abs_err"].max()) < 1e-12


def test_batched_adam_matches_torch_adam():
    torch.manual_seed(0)
    M = 3
    lrs = [1e-2, 1e-2, 3e-3]
    x0 = [torch.randn(M, 4, 5, dtype=torch.float64), torch.randn(M, 1, 5, dtype=torch.float64)]
    for fused in (True, False):
        ps = [x.clone().requires_grad_(True) for x in x0]
        opt = toy.BatchedAdam(ps, torch.tensor(lrs, dtype=torch.float64), fused=fused)
        refs = [[x[m].clone().requires_grad_(True) for x in x0] for m in range(M)]
        ref_opts = [torch.optim.Adam(r, lr=lrs[m]) for m, r in enumerate(refs)]
        for _ in range(25):
            loss = sum(((p - 0.3) ** 4).sum() + (p.sin() * p).sum() for p in ps)
            opt.step(torch.autograd.grad(loss, ps))
            for r, o in zip(refs, ref_opts):
                o.zero_grad()
                sum(((p - 0.3) ** 4).sum() + (p.sin() * p).sum() for p in r).backward()
                o.step()
        for m in range(M):
            for p, r in zip(ps, refs[m]):
                assert torch.allclose(p[m], r, atol=1e-12, rtol=0), fused


# ---------------------------------------------------------------------------------- training
def test_batched_member_equals_the_same_run_alone():
    configs = [
        {"loss": "dpo", "loss_params": {"beta": 0.1}},
        {"loss": "dpo", "loss_params": {"beta": 0.3}, "init": "s2"},     # merged group: beta as a tensor
        {"loss": "ipo", "loss_params": {"beta": 0.5}, "lr": 3e-3},
    ]
    kw = dict(steps=25, sft_steps=30, hidden=16, **F64)
    big = toy.run_grid(configs, [3, 5, 7], **kw)
    for ci, cfg in enumerate(configs):
        alone = toy.run_grid([cfg], [5], **kw)
        m = big.members_of(ci)[1]                                          # seed 5 of this config
        for name in records.RECORDS:
            np.testing.assert_allclose(big.records[name][:, m], alone.records[name][:, 0], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{cfg} {name}")
        np.testing.assert_allclose(big.policy.flat()[m].numpy(), alone.policy.flat()[0].numpy(), rtol=0, atol=1e-12)
    # the configurations really differ
    assert not np.allclose(big.records["chosen"][:, 0], big.records["chosen"][:, 3])


@pytest.mark.parametrize("loss,params", [("dpo", {}), ("sft_dpo", {"gamma": 0.5}), ("slic", {}),
                                         ("bdpo", {}), ("flex_dpo", {}), ("nbdpo", {"symmetric": True}),
                                         ("nbdpo", {}), ("nbdpo_v2", {}), ("ipo", {}), ("dpop", {})])
def test_recorded_gradients_match_autograd(loss, params):
    """dl/dpi+- recorded in the training backward == logprob_grads (autograd of prefdyn.losses) / pi."""
    spec = toy.ToySpec()
    K = 3
    run = toy.run_grid([{"loss": loss, "loss_params": params}], [1, 2], steps=6, sft_steps=50, hidden=8,
                       pairs_per_prompt=K, record_probs=True, **F64)
    seeds = torch.tensor([1, 2])
    ref = torch.as_tensor(run.init_probs).log()
    pos = torch.arange(4).view(1, 4, 1).expand(2, 4, K)
    # DPOP's penalty max(0, ref+ - logp+) has its kink at pi = pi_0, i.e. at t = 0, where the float32-stored
    # probabilities cannot say which side of the kink the run was on; its later steps are checked.
    for t in ((3, 6) if loss == "dpop" else (0, 3, 6)):
        logp = torch.as_tensor(run.probs[t], dtype=torch.float64).log()   # probs stored in float32
        neg = toy.sample_rejected(spec, seeds, torch.tensor([t]), K)[0]
        lp, ln = logp.gather(2, pos), logp.gather(2, neg)
        gc, gr = L.logprob_grads(loss, lp, ln, ref.gather(2, pos), ref.gather(2, neg), **params)
        np.testing.assert_allclose(run.records["dlogp_chosen"][t], gc.mean(dim=(1, 2)).numpy(), rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(run.records["dlogp_rejected"][t], gr.mean(dim=(1, 2)).numpy(), rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(run.records["grad_chosen"][t], (gc.abs() / lp.exp()).mean(dim=(1, 2)).numpy(),
                                   rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(run.records["grad_rejected"][t], (gr.abs() / ln.exp()).mean(dim=(1, 2)).numpy(),
                                   rtol=2e-5, atol=1e-7)


def test_dpo_gradient_ratio_is_corollary_1():
    """000 Corollary 1: |dl/dpi-| / |dl/dpi+| = pi+/pi- (one prompt, one rejected response, so exact)."""
    spec = toy.ToySpec(n_prompts=1, n_rejected=1, n_unseen=2)
    init = {"p_chosen": 0.3, "p_rejected": 0.3}
    run = toy.run_grid([{"loss": "dpo", "init": init}], 4, spec=spec, steps=200, lr=1e-2, sft_steps=100,
                       hidden=16, pairs_per_prompt=1, **F64)
    r = run.records
    ratio = np.exp(r["log_grad_rejected"] - r["log_grad_chosen"])
    np.testing.assert_allclose(ratio, np.exp(r["log_chosen"] - r["log_rejected"]), rtol=1e-8)
    assert ratio[-1].min() > 100          # the drastic drop happened
    ind = records.member_indicators(run)
    assert np.all(ind["grad_ratio_10_step"] < ind["grad_ratio_100_step"])


def test_tabular_dpo_moves_only_the_pair_logits():
    """For DPO the logit gradient is c (e- - e+): with the tabular policy and SGD, logits outside the
    pairs (other prompts' optimal responses, unseen ones) never move."""
    run = toy.run_grid([{"loss": "dpo"}], 2, policy="tabular", optimizer="sgd", lr=1.0, steps=40, **F64)
    logits = run.policy.params["logits"].detach()
    init = torch.as_tensor(run.init_probs).log()
    masks = run.spec.role_masks()
    moved = (logits - init - (logits - init)[..., -1:])               # up to a per-prompt constant
    keep = masks["other"] | masks["unseen"]
    assert float(moved[:, keep].abs().max()) < 1e-10
    assert float(moved[:, masks["chosen"]].min()) > 0.1
    assert np.all(np.diff(run.records["chosen"], axis=0) > 0)        # no degradation without shared parameters


def test_same_parameters_same_numbers_and_summary():
    kw = dict(steps=30, sft_steps=20, hidden=8, progress=False, device="cpu")
    a = toy.run_grid([{"loss": "dpo"}, {"loss": "slic"}], 4, **kw)
    b = toy.run_grid([{"loss": "dpo"}, {"loss": "slic"}], 4, **kw)
    for k in records.RECORDS:
        assert np.array_equal(a.records[k], b.records[k])
    s = records.summarise(a)
    assert set(s) == {"dpo", "slic"}
    assert set(s["dpo"]) == set(records.INDICATORS)
    x = a.records["chosen"][:, a.members_of("dpo")].max(axis=0)
    assert s["dpo"]["peak_chosen_prob"]["mean"] == pytest.approx(float(x.mean()))
    ci = stats.mean_ci([1.0, 2.0, 3.0, np.nan])
    assert ci["n"] == 3 and ci["frac"] == 0.75 and ci["mean"] == pytest.approx(2.0)
    assert ci["hi"] - ci["mean"] == pytest.approx(4.302652729911275 / math.sqrt(3))   # t_{0.975, 2} * sd / sqrt(n)


def test_probability_intervals_stay_in_range():
    # seeds spanning orders of magnitude: the plain t-interval of the mean would go below 0
    tiny = np.array([1e-36, 2e-36, 1e-33, 3e-36])
    assert stats.mean_ci(tiny)["lo"] < 0
    s = records.summarise_members({"final_rejected_prob": tiny, "unpaired_gain": np.array([-0.99, 0.99, -0.99, -0.99]),
                               "peak_chosen_step": np.array([-5.0, 5.0, 6.0, -4.0])}, np.arange(4))
    assert s["final_rejected_prob"]["lo"] == 0.0 and 0 < s["final_rejected_prob"]["hi"] <= 1
    assert s["final_rejected_prob"]["mean"] == pytest.approx(tiny.mean())
    assert s["unpaired_gain"]["lo"] == -1.0
    deep = stats.mean_ci(np.array([1e-255, 0.0, 0.0, 0.0]))          # squares underflow: still a real interval
    assert deep["hi"] > deep["mean"] > 0
    assert s["peak_chosen_step"]["lo"] < -1.0                    # an unbounded indicator is left alone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_path_matches_cpu():
    kw = dict(steps=20, sft_steps=20, hidden=16, dtype=torch.float64, progress=False)
    gpu = toy.run_grid([{"loss": "dpo"}, {"loss": "ipo"}], 3, device="cuda", **kw)
    cpu = toy.run_grid([{"loss": "dpo"}, {"loss": "ipo"}], 3, device="cpu", **kw)
    assert gpu.settings["device"] == "cuda"
    np.testing.assert_allclose(gpu.records["chosen"], cpu.records["chosen"], atol=1e-8)
    assert device.resolve_device("auto").type == "cuda"


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,match", [
    (lambda: toy.ToySpec(n_prompts=0), "n_prompts"),
    (lambda: toy.ToySpec(n_unseen=-1), "n_unseen"),
    (lambda: toy.initial_distribution(toy.ToySpec(), p_chosen=0.3, p_rejected=0.2), "p_chosen"),
    (lambda: toy.initial_distribution(toy.ToySpec(), p_chosen=1.5), "p_chosen"),
    (lambda: toy.scenario_distribution(toy.ToySpec(), "s5"), "scenario"),
    (lambda: toy.make_policy("transformer", toy.ToySpec(), 2), "policy"),
    (lambda: toy.MLPPolicy(toy.ToySpec(), 2, hidden=0), "hidden"),
    (lambda: toy.MLPPolicy(toy.ToySpec(), [-1, 2]), "seeds"),
    (lambda: toy.MLPPolicy(toy.ToySpec(), 2, device="tpu"), "device"),
    (lambda: toy.run_grid([{"loss": "kto"}], 2, progress=False), "loss"),
    (lambda: toy.run_grid([{"loss": "dpo", "loss_params": {"beta": -1.0}}], 2, progress=False), "beta"),
    (lambda: toy.run_grid([{"loss": "dpo", "lr_typo": 1}], 2, progress=False), "configs"),
    (lambda: toy.run_grid([{"loss": "dpo"}], 2, steps=-1, progress=False), "steps"),
    (lambda: toy.run_grid([{"loss": "dpo"}], 2, lr=0.0, progress=False), "lr"),
    (lambda: toy.run_grid([{"loss": "dpo"}], 2, optimizer="lion", progress=False), "optimizer"),
    (lambda: toy.run_grid([{"loss": "dpo", "init": np.ones((3, 3))}], 2, progress=False), "init"),
    (lambda: toy.run_grid([], 2, progress=False), "configs"),
    (lambda: toy.sft(toy.TabularPolicy(toy.ToySpec(), 1), np.full((4, 10), 0.2)), "target"),
    (lambda: bench.bench(members=4, loop_members=8, progress=False), "loop_members"),
    (lambda: bench.bench(members=4, loop_threads=0, progress=False), "loop_threads"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_corollaries_2_and_3_on_the_mlp_toy():
    """000 Cor. 2-3 (Properties 2-3) on the MLP toy of 000 Sec. 3.2.1 with its default set-up: once pi-
    has collapsed (ratio > 100), pi(chosen) falls from its peak, and mass moves to responses never paired
    with the prompt (the dispersion of Cor. 3, broad reading; see the toy-3d chapter for the narrow one)."""
    run = toy.run_grid([{"loss": "dpo"}], 4, steps=300, progress=False, device="cpu")
    s = records.summarise(run)["dpo"]
    assert s["rejected_drop_orders"]["lo"] > 10                       # Cor. 1: the drastic drop
    assert s["grad_ratio_100_step"]["frac"] == 1.0
    assert s["peak_chosen_step"]["mean"] > s["grad_ratio_100_step"]["mean"]
    assert s["chosen_drop"]["lo"] > 0                                 # Cor. 2: degradation after the peak
    assert s["unpaired_gain"]["lo"] > 0.1                             # Cor. 3: dispersion


# ---------------------------------------------------------------------------------- verdict helpers
def test_removed_by_lists_what_the_reference_shows():
    ref = {"drastic_drop": True, "degradation": True, "dispersion": False}
    v = {"drastic_drop": False, "degradation": True, "dispersion": True}
    assert toy.removed_by(ref, v) == {"removes": ["drastic_drop"], "keeps": ["degradation"]}
    assert toy.removed_by(ref, ref) == {"removes": [], "keeps": ["drastic_drop", "degradation"]}
    assert list(toy.THREE_D_LABELS) == list(toy.three_d({
        "rejected_drop_orders": {"mean": 3.0}, "peak_chosen_prob": {"mean": 0.5}, "chosen_drop": {"mean": 0.1},
        "unpaired_gain": {"mean": 0.0}}))


# ---------------------------------------------------------------------------------- toy-3d / toy-scenarios verdicts
def _entry(mean, lo=None, hi=None, frac=1.0):
    return {"mean": mean, "lo": mean if lo is None else lo, "hi": mean if hi is None else hi, "frac": frac}


def _phase_summary(**over):
    s = {"initial_chosen_prob": _entry(0.12), "peak_chosen_prob": _entry(0.30, 0.29, 0.31),
         "final_chosen_prob": _entry(0.26, 0.25, 0.27), "peak_chosen_step": _entry(110, 100, 120),
         "grad_ratio_10_step": _entry(48, 47, 50), "grad_ratio_100_step": _entry(68, 66, 70),
         "unseen_gain": _entry(-0.04, -0.041, -0.039), "unpaired_gain": _entry(0.33, 0.32, 0.34),
         "initial_unpaired_mass": _entry(0.4), "final_other_mass": _entry(0.73, 0.72, 0.74)}
    s.update(over)
    return s


def test_phase_checks_decide_by_non_overlapping_intervals():
    checks = toy.phase_checks(_phase_summary())
    assert list(checks) == list(toy.PHASE_CHECKS)
    assert all(checks[k] for k in checks if k != "unseen_gain") and checks["unseen_gain"] is False
    # overlapping intervals are not an ordering; a threshold crossed by only some seeds is not "every seed"
    c = toy.phase_checks(_phase_summary(final_chosen_prob=_entry(0.28, 0.25, 0.295),
                                        peak_chosen_step=_entry(80, 60, 100),
                                        grad_ratio_100_step=_entry(68, 66, 70, frac=0.5)))
    assert not c["falls_after_peak"] and not c["peak_after_ratio_100"] and c["peak_after_ratio_10"] is True
    assert c["ratio_passes_100"] is False
    nan = float("nan")                                               # never crossed: no verdict of "after"
    assert toy.phase_checks(_phase_summary(grad_ratio_10_step=_entry(nan, nan, nan, 0.0)))["peak_after_ratio_10"] is False


def test_scenario_claims():
    def sc(peak, tenfold, unseen, unpaired):
        return {"peak_chosen_prob": _entry(peak), "rejected_tenfold_step": _entry(tenfold),
                "final_unseen_mass": _entry(unseen), "final_unpaired_mass": _entry(unpaired)}

    summary = {"s1": sc(0.30, 58, 1e-28, 0.74), "s2": sc(0.45, 152, 1e-11, 0.61),
               "s3": sc(0.25, 28, 1e-12, 0.77), "s4": sc(0.28, float("nan"), 1e-4, 0.73)}
    r = toy.scenario_claims(summary, ["s1", "s2", "s3", "s4"])
    assert r["extremes"] == {"highest_peak": "s2", "slowest_decline": "s2", "least_unseen": "s1",
                             "least_unpaired": "s2"}
    assert r["claims"] == {"s1_peak_about_0_6": False, "s1_highest_peak": False, "s1_least_unseen": True,
                           "s1_least_unpaired": False, "highest_peak_is_slowest_decline": True}
    assert list(r["claims"]) == list(toy.SCENARIO_CLAIMS) and list(r["extremes"]) == list(toy.EXTREMES)
    summary["s1"]["peak_chosen_prob"] = _entry(0.6)
    r = toy.scenario_claims(summary, ["s1", "s2", "s3", "s4"])
    assert r["claims"]["s1_peak_about_0_6"] and r["claims"]["s1_highest_peak"]
    assert not r["claims"]["highest_peak_is_slowest_decline"]


def test_rank_correlation_and_prop1_test():
    r = stats.rank_correlation([1, 2, 3, 4, 5], [2.0, 4.0, 6.0, 8.0, 10.0])
    assert r["spearman_rho"] == pytest.approx(1.0) and r["p_value"] < 0.05 and r["n_points"] == 5
    r = stats.rank_correlation([1, 2, np.nan, 4], [1.0, 2.0, 3.0, np.nan])       # two finite pairs: no verdict
    assert r["n_points"] == 2 and math.isnan(r["spearman_rho"]) and math.isnan(r["p_value"])
    names = [f"c{i}" for i in range(6)]
    summary = {n: {"rejected_tenfold_step": _entry(10.0 * (i + 1)), "peak_chosen_prob": _entry(0.2 + 0.05 * i),
                   "final_chosen_prob": _entry(0.5 - 0.01 * i), "chosen_drop": _entry(0.01 * i)}
               for i, n in enumerate(names)}
    res = toy.prop1_test(summary, names)
    assert list(res) == list(toy.PROP1_SIGNS)
    assert res["peak_chosen_prob"]["agrees_with_prop1"] and res["peak_chosen_prob"]["predicted_sign"] == 1
    assert not res["final_chosen_prob"]["agrees_with_prop1"]                  # opposite sign
    assert not res["chosen_drop"]["agrees_with_prop1"] and res["chosen_drop"]["spearman_rho"] == pytest.approx(1.0)
    for n, v in zip(names[:4], (0.2, 0.3, 0.25, 0.35)):                     # right sign, but p >= 0.05
        summary[n]["peak_chosen_prob"] = _entry(v)
    few = toy.prop1_test(summary, names[:4])
    assert few["peak_chosen_prob"]["spearman_rho"] == pytest.approx(0.8) and few["peak_chosen_prob"]["p_value"] > 0.05
    assert not few["peak_chosen_prob"]["agrees_with_prop1"]


def test_plot_helpers_draw_the_toy():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = toy.train("dpo", {"beta": 0.1}, seeds=2, steps=3, sft_steps=5, hidden=8, progress=False, device="cpu",
                    record_probs=True)
    s = records.summarise(run)["dpo"]
    fig, axes = plt.subplots(1, 4)
    plotting.plot_sft_target(axes[0], run.targets[0], run.spec)
    plotting.plot_role_bars(axes[1], run, "dpo", when=(0, -1), labels=("SFT", "DPO"))
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["a+", "o", "o", "o", "r", "r", "r", "r", "u", "u"]
    assert len(axes[1].patches) == 2 * run.spec.n_responses
    plotting.plot_role_bars(axes[2], run, "dpo", when=(0,), ticks="groups")
    assert [t.get_text() for t in axes[2].get_xticklabels()] == ["a+", "o", "r", "u"]
    assert axes[2].get_xticks()[1] == pytest.approx(2.0)                       # centred on the three o bars
    plotting.plot_roles(axes[3], run, "dpo", ("rejected", "grad_rejected"), log=True)
    plotting.mark_steps(axes[3], s, keys=("peak_chosen_step",), label=True)
    labels = axes[3].get_legend_handles_labels()[1]
    assert labels == ["π(one rejected)", "|∂ℓ/∂π−|", "peak of π(chosen)"] and axes[3].get_yscale() == "log"
    plt.close(fig)


def test_step_legend_names_the_marks():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    leg = plotting.step_legend(fig)
    assert [t.get_text() for t in leg.get_texts()] == [text for text, _ in plotting.STEP_MARKS.values()]
    plt.close(fig)


# ---------------------------------------------------------------------------------- the output layer and Dispersion
def test_dpo_gives_no_gradient_to_the_logits_of_responses_in_no_pair():
    """dl/dz_a = -(g+ + g-) pi(a) per pair for a response a in no pair: zero for DPO and IPO (g+ = -g-),
    not for SFT-DPO (g+ + g- = -gamma)."""
    spec = toy.ToySpec()
    pol = toy.make_policy("mlp", spec, [0, 1], hidden=8, device="cpu", dtype=torch.float64)
    z = pol.forward().detach().requires_grad_(True)
    logp = torch.log_softmax(z, -1)
    ref = logp.detach() + 0.1
    pos = torch.arange(4).view(1, 4, 1).expand(2, 4, 2)
    neg = toy.sample_rejected(spec, pol.seeds, torch.arange(1), 2)[0]
    unseen = list(spec.unseen_block)
    for name, zero in (("dpo", True), ("ipo", True), ("sft_dpo", False)):
        lp_c, lp_r = logp.gather(2, pos), logp.gather(2, neg)
        loss = L.get(name)(lp_c, lp_r, ref.gather(2, pos), ref.gather(2, neg)).sum()
        (g,) = torch.autograd.grad(loss, z, retain_graph=True)
        size = g[..., unseen].abs().max().item()
        assert (size < 1e-15) if zero else (size > 1e-4), (name, size)


def test_output_change_and_feature_overlap():
    kw = dict(seeds=2, steps=60, sft_steps=30, hidden=16, device="cpu", progress=False, dtype=torch.float64)
    run = toy.train("dpo", optimizer="sgd", lr=0.05, **kw)
    oc = toy.output_change(run)
    assert set(oc) == {"chosen_block", "rejected", "unseen"}
    assert oc["unseen"]["weights"] < 1e-12 and oc["unseen"]["bias"] < 1e-12       # float64 rounding only
    assert oc["chosen_block"]["weights"] > 1e-3 and oc["rejected"]["bias"] > 1e-4
    sft_dpo = toy.output_change(toy.train("sft_dpo", optimizer="sgd", lr=0.05, **kw))
    assert sft_dpo["unseen"]["bias"] > 1e-4                                      # g+ + g- = -gamma moves them
    ov = toy.feature_overlap(run)
    assert set(ov) == {"sft", "final"} and all(-1.0 <= v <= 1.0 for v in ov.values())
    with pytest.raises(ValueError, match="MLP"):
        toy.output_change(toy.train("dpo", policy="tabular", **kw))


def test_logit_change_measures_how_far_the_logits_moved():
    """Adam moves a free logit by at most about lr per update: the tabular policy's centred logits move
    at most ~ 2 lr steps (two logits of a pair move apart); ten times the lr moves them further."""
    kw = dict(seeds=2, steps=50, device="cpu", progress=False, policy="tabular")
    slow = toy.logit_change(toy.train("dpo", lr=1e-3, **kw))
    fast = toy.logit_change(toy.train("dpo", lr=1e-2, **kw))
    assert 0 < slow <= 2 * 1e-3 * 50 * 1.01 and fast > 5 * slow
    with pytest.raises(ValueError, match="config"):
        toy.logit_change(toy.train("dpo", lr=1e-3, **kw), "nosuch")


# ---------------------------------------------------------------------------------- readings and sensitivity
def test_readings_of_the_sft_target():
    spec = toy.ToySpec()
    shared = toy.scenario_distribution(spec, "s2", on=0.12, off=0.01, reading="shared")
    own = toy.scenario_distribution(spec, "s2", on=0.12, off=0.01, reading="own")
    half = toy.scenario_distribution(spec, "s2", on=0.12, off=0.01, reading=0.5)
    for d in (shared, own, half):
        assert torch.allclose(d.sum(-1), torch.ones(4, dtype=torch.float64))
        assert d[1, 1] == pytest.approx(0.01) and d[1, 5] == pytest.approx(0.12)
    assert shared[1, 0] == pytest.approx(0.01) and half[1, 0] == pytest.approx(0.005)
    unpaired = own[1, [0, 2, 3, 8, 9]]                       # other prompts' optimal and unseen: equal shares
    assert torch.allclose(unpaired, torch.full((5,), (1 - 0.01 - 4 * 0.12) / 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="reading"):
        toy.initial_distribution(spec, reading="mine")
    with pytest.raises(ValueError, match="reading"):
        toy.initial_distribution(spec, reading=1.5)
    with pytest.raises(ValueError, match="reading"):
        toy.initial_distribution(spec, p_chosen=0.3, p_rejected=0.2, reading="own")


def test_scenario_sensitivity_batches_variants_that_share_their_run(monkeypatch):
    calls = []
    real = toy.sensitivity.run_grid

    def counting(configs, seeds, **kw):
        calls.append((len(configs), kw.get("lr")))
        return real(configs, seeds, **kw)

    monkeypatch.setattr(toy.sensitivity, "run_grid", counting)
    variants = [toy.Variant("baseline", "-"), toy.Variant("reading", "own", init={"reading": "own"}),
                toy.Variant("β", "0.5", loss={"beta": 0.5}), toy.Variant("lr", "0.01", run={"lr": 0.01})]
    rows = toy.scenario_sensitivity(variants, [0, 1], run_kwargs=dict(steps=5, sft_steps=5, hidden=8,
                                    device="cpu", progress=False), init={"on": 0.12, "off": 0.01},
                                    loss_params={"beta": 0.1})
    assert calls == [(12, None), (4, 0.01)]                   # 3 variants x 4 scenarios together, then 1
    assert [r["factor"] for r in rows] == ["baseline", "reading", "β", "lr"]
    assert set(rows[0]["scenarios"]) == set(toy.SCENARIOS) and set(rows[0]["claims"]) == set(toy.SCENARIO_CLAIMS)
    assert set(rows[0]["scenarios"]["s1"]) == set(toy.SENSITIVITY_KEYS)
    assert rows[0]["scenarios"]["s1"] != rows[1]["scenarios"]["s1"]    # the reading changed the SFT target


def test_scenario_variants_one_change_each():
    vs = toy.scenario_variants(list(toy.FACTORS), reading="shared", other_ratios=[0.9, 0.5], lr=1e-4,
                               sgd_lr=1.0, hidden=64, steps=1000, beta=0.1, p_off=0.01)
    assert [v.factor for v in vs[:2]] == ["baseline", "reading"] and vs[1].init == {"reading": "own"}
    # two other ratios, two activations, two depths, two init scales; one variant for every other factor
    assert len(vs) == 2 + 2 + 2 + 2 + 2 + len(toy.FACTORS) - 4
    assert all(len(v.run) + len(v.init) + len(v.loss) == (0 if v.factor == "baseline" else
               2 if v.factor == "optimiser" else 1) for v in vs)
    by = {(v.factor, v.value): v for v in vs}
    assert by[("activation", "linear")].run == {"activation": "linear"}
    assert by[("hidden layers", "3")].run == {"depth": 3}
    assert by[("initial weight scale", "2x")].run == {"init_scale": 2.0}
    assert by[("pair set", "fixed (step-0 draw)")].run == {"pairs": "fixed"}
    with pytest.raises(ValueError, match="factors"):
        toy.scenario_variants(["width"], reading="own", other_ratios=[], lr=1e-4, sgd_lr=1.0, hidden=64,
                              steps=1000, beta=0.1, p_off=0.01)


def test_prop1_series_tests_within_a_series_over_seeds():
    sweep = [0.005, 0.02, 0.08]
    cfgs = [toy.ToyConfig("dpo", {"beta": 0.1}, init={"p_chosen": 0.12, "p_rejected": pr}, name=f"r{pr:g}")
            for pr in sweep]
    run = toy.run_grid(cfgs, 4, steps=300, sft_steps=100, hidden=16, lr=1e-2, device="cpu", progress=False)
    res = toy.prop1_series(run, {"c0.12": [f"r{pr:g}" for pr in sweep]})["c0.12"]
    assert set(res) == set(toy.PROP1_SIGNS)
    for k, r in res.items():
        assert 3 <= r["n_seeds"] <= 4 and r["lo"] <= r["mean_rho"] <= r["hi"] and 0 <= r["frac_predicted_sign"] <= 1
        assert r["agrees_with_prop1"] == ((r["lo"] > 0) if r["predicted_sign"] > 0 else (r["hi"] < 0))
    with pytest.raises(ValueError, match="three"):
        toy.prop1_series(run, {"short": ["r0.005", "r0.02"]})


def test_first_step_transfer_is_zero_for_free_logits_and_large_for_the_mlp():
    kw = dict(seeds=2, steps=1, sft_steps=50, device="cpu", progress=False)
    assert toy.first_step_transfer(toy.train("dpo", policy="tabular", **kw)) == 0.0
    shared = toy.first_step_transfer(toy.train("dpo", init={"scenario": "s1", "reading": "shared"}, hidden=16, **kw))
    own = toy.first_step_transfer(toy.train("dpo", init={"scenario": "s1", "reading": "own"}, hidden=16, **kw))
    assert 0 < own < shared <= 1.0 + 1e-9


def test_matched_beta_table_compares_at_the_same_beta():
    yes = {"drastic_drop": True, "degradation": True, "dispersion": True}
    no_deg = {**yes, "degradation": False}
    none = dict.fromkeys(yes, False)
    # at beta 1 DPO has lost its degradation; nbdpo keeps nothing; the reference row compares with beta 0.1
    t = toy.matched_beta_table({"dpo": no_deg, "nbdpo": none}, yes, 1.0, 0.1, label=str.upper)
    rows = {r[0]: r[1] for r in t.rows}
    assert rows["DPO"][-1] == "degradation" and rows["NBDPO"][-1] == "drastic drop, dispersion"
    assert rows["NBDPO"][:3] == [False, False, False] and "β = 1" in t.title
    same = toy.matched_beta_table({"dpo": yes, "ipo": no_deg}, yes, 0.1, 0.1)
    assert {r[0]: r[1][-1] for r in same.rows} == {"dpo": "(reference)", "ipo": "degradation"}
    with pytest.raises(ValueError, match="reference"):
        toy.matched_beta_table({"ipo": yes}, yes, 0.1, 0.1)


def test_square_space_is_refused_by_the_pair_trainers_before_any_work():
    """004's 20 x 20 space (n_rejected=0) has no rejected block: run_grid and run_rlhf say so at once."""
    square = toy.ToySpec(n_prompts=5, n_rejected=0, n_unseen=0)
    assert square.n_responses == 5
    for call in (lambda: toy.run_grid([toy.ToyConfig("dpo")], 2, spec=square, steps=1, progress=False),
                 lambda: rlhf.run_rlhf(2, spec=square, steps=1, progress=False)):
        with pytest.raises(ValueError, match="n_rejected"):
            call()
