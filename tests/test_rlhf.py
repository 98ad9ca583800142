"""Tests of prefdyn.rlhf: 000 Sec. 4 on the toy (reward model, exact KL-regularised RL, PPO)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prefdyn import losses as L
from prefdyn import records, rlhf, toy, validate

torch.set_num_threads(1)   # 2 shared cores: one thread is several times faster here


def _tabular_pi0(seeds=(0, 1, 2), dtype=torch.float64):
    spec = toy.ToySpec()
    pol = toy.make_policy("tabular", spec, list(seeds), device="cpu", dtype=dtype)
    toy.sft(pol, toy.initial_distribution(spec))
    return pol


def _random_reward(pol, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(pol.members, pol.spec.n_prompts, pol.spec.n_responses, generator=g,
                               dtype=pol.dtype)


# ------------------------------------------------------------------------------------------ closed forms
def test_closed_form_is_the_maximum_of_eq4():
    pol = _tabular_pi0()
    ref = pol.log_probs().detach()
    r = _random_reward(pol, scale=2.0)
    beta = 0.3
    opt = rlhf.kl_optimal_log_probs(ref, r, beta)
    J_opt = rlhf.kl_objective(opt, ref, r, beta)
    # value identity: max_pi J = beta log sum pi_0 exp(r / beta)
    torch.testing.assert_close(J_opt, rlhf.kl_optimal_value(ref, r, beta), rtol=0, atol=1e-12)
    # any other policy is worse
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        other = torch.log_softmax(torch.randn(ref.shape, generator=g, dtype=ref.dtype) * 3, -1)
        assert bool((rlhf.kl_objective(other, ref, r, beta) < J_opt - 1e-9).all())
    # the soft advantage vanishes at the optimum and nowhere else here
    assert float(rlhf.soft_advantage(opt, ref, r, beta).abs().max()) < 1e-12
    assert float(rlhf.soft_advantage(ref, ref, r, beta).abs().max()) > 0.1


def test_soft_advantage_is_the_logit_gradient():
    """dJ/dz_a = pi(a) A(x, a): the probability-space gradient -A reproduces autograd's logit gradient."""
    pol = _tabular_pi0()
    ref = pol.log_probs().detach()
    r = _random_reward(pol, seed=3)
    z = (ref + 0.5 * _random_reward(pol, seed=4)).requires_grad_(True)
    beta = 0.2
    J = rlhf.kl_objective(torch.log_softmax(z, -1), ref, r, beta).sum()
    (gz,) = torch.autograd.grad(J, [z])
    logp = torch.log_softmax(z.detach(), -1)
    torch.testing.assert_close(gz, logp.exp() * rlhf.soft_advantage(logp, ref, r, beta), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------ reward model
def test_reward_model_gradients_balanced_closed_form():
    g = torch.Generator().manual_seed(0)
    rc = torch.randn(1000, generator=g, dtype=torch.float64) * 20
    rr = torch.randn(1000, generator=g, dtype=torch.float64) * 20
    rc[:3] = torch.tensor([0.0, 800.0, -800.0], dtype=torch.float64)
    rr[:3] = torch.tensor([0.0, -800.0, 800.0], dtype=torch.float64)
    gp, gn = rlhf.reward_gradients(rc, rr)
    assert torch.equal(gp, -gn)                                             # exactly balanced
    torch.testing.assert_close(gp, -1.0 / (1.0 + torch.exp(rc - rr)), rtol=1e-12, atol=1e-300)   # 000 Sec. 4
    assert bool(torch.isfinite(gp).all()) and float(gp.abs().max()) <= 1.0
    # same as losses.reward_model_loss's own autograd
    x = rc.clone().requires_grad_(True)
    L.reward_model_loss(x, rr).sum().backward()
    torch.testing.assert_close(x.grad, gp)


@pytest.mark.parametrize("kind", ["mlp", "tabular"])
def test_train_reward_model_records_balanced_gradients(kind):
    pol, _ = rlhf.fitted_policy([0, 1, 2, 3], sft_steps=50, device="cpu")
    run = rlhf.train_reward_model(pol, kind=kind, steps=150, lr=1e-2, progress=False)
    rc = run.records
    assert np.nanmax(rc["grad_balance"]) == 0.0
    assert np.nanmax(rc["grad_closed_form_err"]) < 1e-6
    np.testing.assert_allclose(rc["grad_rejected"] / rc["grad_chosen"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(rc["dpi_chosen"], -rc["dpi_rejected"], rtol=1e-6)
    # r == 0 at the start: loss log 2, gradients 1/2, induced policy = pi_0
    np.testing.assert_allclose(rc["loss"][0], math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(rc["grad_chosen"][0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(rc["chosen"][0], run.init_probs[:, np.arange(4), np.arange(4)].mean(-1), rtol=1e-5)
    # it learns: loss falls, accuracy 1, chosen rewarded above rejected; unseen rewards never move
    assert bool((rc["loss"][-1] < 0.2 * rc["loss"][0]).all())
    assert bool((rc["accuracy"][-1] == 1.0).all())
    assert bool((rc["reward_chosen"][-1] > rc["reward_rejected"][-1] + 1.0).all())
    assert np.abs(rc["reward_unseen"]).max() == 0.0
    # the toy's indicators apply; the reward-space gradient ratio is exactly 1
    s = records.summarise(run)["reward_model"]
    assert s["grad_ratio_final"]["mean"] == pytest.approx(1.0, abs=1e-6)


def test_pi0_is_the_dpo_runs_pi0():
    pol, fit = rlhf.fitted_policy([0, 5], sft_steps=40, device="cpu")
    dpo = toy.train("dpo", seeds=[0, 5], steps=0, sft_steps=40, progress=False, device="cpu")
    np.testing.assert_array_equal(pol.probs().double().numpy(), dpo.init_probs)
    runs = rlhf.run_rlhf([0, 5], steps=2, sft_steps=40, samples=2, progress=False, device="cpu")
    for run in runs.values():
        np.testing.assert_array_equal(run.init_probs, dpo.init_probs)


# ------------------------------------------------------------------------------------------ exact RLHF
def test_exact_rlhf_converges_to_closed_form():
    pol = _tabular_pi0()
    r = _random_reward(pol, seed=7, scale=0.5)
    beta = 0.5
    run = rlhf.rlhf_exact(pol, r, beta=beta, steps=1500, lr=0.05, record_every=50, progress=False)
    target = run.optimum_log_probs()
    assert np.abs(np.exp(run.final_log_probs) - np.exp(target)).max() < 1e-4
    assert run.records["optimum_gap"][-1].max() < 1e-7
    assert run.records["optimum_gap"][0].min() > 1e-3                     # it did have to move
    # J never exceeds its maximum; the policy stays a distribution
    assert run.records["optimum_gap"].min() > -1e-10
    np.testing.assert_allclose(np.exp(run.final_log_probs).sum(-1), 1.0, atol=1e-12)
    # the caller's policy is untouched
    torch.testing.assert_close(pol.probs(), _tabular_pi0().probs())


def test_exact_rlhf_mlp_with_reward_model_gets_close():
    runs = rlhf.run_rlhf(seeds=[0, 1], steps=400, lr=3e-3, sft_steps=100, methods=("rlhf_exact",),
                         progress=False, device="cpu")
    run = runs["rlhf_exact"]
    rc = run.records
    assert bool((rc["tv_to_optimum"][-1] < 0.1 * rc["tv_to_optimum"][0]).all())
    assert bool((rc["objective"][-1] > rc["objective"][0]).all())
    assert np.isfinite(rc["grad_rejected"]).all()


# ------------------------------------------------------------------------------------------ PPO
def test_gumbel_sample_frequencies_and_member_independence():
    logp = torch.log_softmax(torch.tensor([[[2.0, 1.0, 0.0, -1.0, -3.0]]], dtype=torch.float64), -1)
    logp = logp.expand(2, 1, 5)
    a = rlhf.gumbel_sample(logp, torch.tensor([3, 4]), rollout=0, samples=20000)
    freq = torch.nn.functional.one_hot(a[0, 0], 5).double().mean(0)
    assert float((freq - logp[0, 0].exp()).abs().max()) < 0.01
    alone = rlhf.gumbel_sample(logp[1:], torch.tensor([4]), rollout=0, samples=20000)
    assert torch.equal(a[1:], alone)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, rlhf.gumbel_sample(logp, torch.tensor([3, 4]), rollout=1, samples=20000))


@pytest.mark.parametrize("baseline", ["loo", "exact", "none"])
def test_ppo_improves_expected_reward_and_stays_a_distribution(baseline):
    pol = _tabular_pi0(dtype=torch.float32)
    r = _random_reward(pol, seed=11).float()
    run = rlhf.rlhf_ppo(pol, r, beta=0.2, steps=240, lr=0.03, samples=16, epochs=4, baseline=baseline,
                        record_every=10, progress=False)
    rc = run.records
    assert bool((rc["reward"][-1] > rc["reward"][0] + 0.3).all())
    assert bool((rc["objective"][-1] > rc["objective"][0]).all())
    assert bool((rc["tv_to_optimum"][-1] < 0.5 * rc["tv_to_optimum"][0]).all())
    p = np.exp(run.final_log_probs)
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert ((rc["clip_frac"] >= 0) & (rc["clip_frac"] <= 1)).all()


def test_ppo_seeded_reproducible_and_batch_independent():
    pol, _ = rlhf.fitted_policy([0, 1, 2], sft_steps=30, device="cpu")
    r = _random_reward(pol, seed=2).float()
    kw = dict(beta=0.1, steps=40, lr=1e-2, samples=8, epochs=2, progress=False)
    a = rlhf.rlhf_ppo(pol, r, **kw)
    b = rlhf.rlhf_ppo(pol, r, **kw)
    for k in a.records:
        np.testing.assert_array_equal(a.records[k], b.records[k])
    alone = rlhf.rlhf_ppo(pol.subset([1]), r[1:2], **kw)
    np.testing.assert_allclose(alone.records["chosen"][:, 0], a.records["chosen"][:, 1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(alone.final_log_probs[0], a.final_log_probs[1], rtol=1e-4, atol=1e-5)


def test_records_fill_every_toy_record():
    runs = rlhf.run_rlhf(seeds=[0, 1], steps=5, sft_steps=5, samples=2, progress=False, device="cpu")
    for name, run in runs.items():
        for key in records.RECORDS:
            if name == "reward_model" and key.startswith("dlogp_"):
                assert np.isnan(run.records[key]).all()          # no policy log-prob in the reward loss
                continue
            assert np.isfinite(run.records[key]).all(), (name, key)
        ind = records.member_indicators(run)
        assert set(ind) == set(records.INDICATORS)
        for key in ("peak_chosen_prob", "final_rejected_prob", "final_unseen_mass", "grad_ratio_final",
                    "rejected_log_decline_rate"):
            assert np.isfinite(ind[key]).all(), (name, key)


def test_run_rlhf_reproducible():
    kw = dict(seeds=[0, 1], steps=30, sft_steps=20, samples=4, progress=False, device="cpu")
    a, b = rlhf.run_rlhf(**kw), rlhf.run_rlhf(**kw)
    assert list(a) == list(rlhf.METHODS)
    for m in a:
        for k in a[m].records:
            np.testing.assert_array_equal(a[m].records[k], b[m].records[k])
        assert set(records.summarise(a[m])[m]) == set(records.INDICATORS)
        assert a[m].configs[0].loss == m and a[m].configs[0].loss_params == {"beta": 0.1}   # not 'dpo'


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=0.0), "beta"), (dict(beta=float("nan")), "beta"), (dict(beta=-1), "beta"),
    (dict(baseline="critic"), "baseline"), (dict(samples=1), "samples"), (dict(clip=0.0), "clip"),
    (dict(steps=-1), "steps"), (dict(lr=0), "lr"), (dict(epochs=0), "epochs"), (dict(optimizer="lion"), "optimizer"),
])
def test_ppo_bad_input(kwargs, match):
    pol = _tabular_pi0(dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        rlhf.rlhf_ppo(pol, torch.zeros(4, 10), progress=False, **kwargs)


def test_other_bad_input():
    pol = _tabular_pi0(dtype=torch.float32)
    with pytest.raises(ValueError, match="reward"):
        rlhf.rlhf_exact(pol, torch.zeros(4, 9), progress=False)
    with pytest.raises(ValueError, match="reward"):
        rlhf.rlhf_exact(pol, torch.full((4, 10), float("inf")), progress=False)
    with pytest.raises(ValueError, match="policy"):
        rlhf.rlhf_exact("pi0", torch.zeros(4, 10), progress=False)
    with pytest.raises(ValueError, match="kind"):
        rlhf.train_reward_model(pol, kind="transformer", progress=False)
    with pytest.raises(ValueError, match="methods"):
        rlhf.run_rlhf(seeds=2, methods=("dpo",), progress=False)
    with pytest.raises(ValueError, match="rm_steps"):
        rlhf.run_rlhf(seeds=2, rm_steps=-3, progress=False)
    with pytest.raises(ValueError, match="beta"):
        rlhf.kl_optimal_log_probs(torch.zeros(3), torch.zeros(3), beta=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_path_matches_cpu():
    kw = dict(seeds=[0, 1], steps=20, sft_steps=20, samples=4, progress=False)
    gpu, cpu = rlhf.run_rlhf(device="cuda", **kw), rlhf.run_rlhf(device="cpu", **kw)
    for m in rlhf.METHODS:
        assert gpu[m].settings["device"] == "cuda"
        # PPO's samples may flip where float rounding differs between devices: looser there
        tol = dict(rtol=0, atol=2e-2) if m == "rlhf_ppo" else dict(rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(gpu[m].records["chosen"], cpu[m].records["chosen"], **tol)


# ------------------------------------------------------------------------------------------ chapter summaries
@pytest.fixture(scope="module")
def small_runs():
    return rlhf.run_rlhf(seeds=[0, 1, 2], steps=20, sft_steps=20, samples=4, progress=False, device="cpu")


def test_member_indicators_add_the_largest_rejected_gradient(small_runs):
    run = small_runs["rlhf_exact"]
    ind = rlhf.member_indicators(run)
    assert set(ind) == set(records.INDICATORS) | {"log10_max_grad_rejected"}
    expect = np.log10(np.max(run.records["grad_rejected"], axis=0))
    np.testing.assert_allclose(ind["log10_max_grad_rejected"], expect, rtol=1e-12)
    summ = rlhf.summarise_runs(small_runs)
    assert list(summ) == list(small_runs)
    for name in summ:
        assert set(rlhf.KEYS) <= set(summ[name])
        d = summ[name]["log10_max_grad_rejected"]
        assert d["lo"] <= d["mean"] <= d["hi"] and d["n"] == 3


def test_reward_balance_and_final_rewards(small_runs):
    rm = small_runs["reward_model"]
    bal = rlhf.reward_balance(rm)
    assert bal["max_abs_sum_of_gradients"] == 0.0 and bal["max_abs_ratio_minus_1"] == 0.0
    assert bal["max_abs_err_closed_form"] < 1e-6 and 0.0 <= bal["final_accuracy"] <= 1.0
    assert bal["final_loss"] == pytest.approx(float(np.mean(rm.records["loss"][-1])))
    fr = rlhf.final_rewards(rm)
    assert list(fr) == list(rlhf.ROLES) and fr["unseen"] == 0.0        # unseen outputs never get a gradient
    assert fr["chosen"] > fr["rejected"]


def test_optimum_check(small_runs):
    exact, ppo = rlhf.optimum_check(small_runs["rlhf_exact"]), rlhf.optimum_check(small_runs["rlhf_ppo"])
    assert "mean_clip_fraction" not in exact and 0.0 <= ppo["mean_clip_fraction"] <= 1.0
    for d in (exact, ppo):
        assert 0.0 <= d["final_tv_to_optimum_mean"] <= d["final_tv_to_optimum_max"] <= 1.0
        assert d["final_optimality_gap_max"] >= -1e-6 and d["final_kl"] >= -1e-9
        assert d["final_tv_to_optimum_mean"] < d["initial_tv_to_optimum"]


def test_optimum_by_beta_matches_the_closed_form(small_runs):
    rm = small_runs["reward_model"]
    by = rlhf.optimum_by_beta(rm, [rm.beta, 1e6])
    assert list(by) == list(rlhf.ROLES)
    masks = rm.spec.role_masks()
    p = np.exp(rm.optimum_log_probs())
    expect = float(np.mean((p * masks["rejected"].numpy()).sum(-1))) / rm.spec.n_rejected
    assert by["rejected"][0] == pytest.approx(expect, rel=1e-12)
    p0 = np.exp(rm.ref_log_probs)                                         # beta -> infinity: pi* -> pi_0
    assert by["chosen"][1] == pytest.approx(float(np.mean((p0 * masks["chosen"].numpy()).sum(-1))), rel=1e-5)
    total = sum(by[r][0] * (rm.spec.n_rejected if r == "rejected" else 1) for r in rlhf.ROLES)
    assert total == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="beta"):
        rlhf.optimum_by_beta(rm, [0.0])


def test_summary_labels_cover_the_entries(small_runs):
    assert list(rlhf.reward_balance(small_runs["reward_model"])) == list(rlhf.BALANCE_LABELS)
    assert list(rlhf.optimum_check(small_runs["rlhf_ppo"])) == list(rlhf.OPTIMUM_LABELS)
