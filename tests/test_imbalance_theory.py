"""prefdyn.imbalance.theory (004 Sec. 3-5) against independent computations: closed forms written out
here in numpy, finite differences of the softmax, brute-force loops over pairs, and the loss zoo."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prefdyn import losses as L
from prefdyn import toy
from prefdyn.chapters import CHAPTERS, ParameterError
from prefdyn.imbalance import theory as T

DT = torch.float64


@pytest.fixture(scope="module")
def small():
    """A small case: 5 states, 6 responses, 3 pairs."""
    return T.random_states(5, 6, 3, seed=3)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np(t):
    return t.detach().numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------ states, losses
def test_random_states_shapes_and_pairs(small):
    assert small.logits.shape == (5, 6) and small.ref_logits.shape == (5, 6)
    assert small.chosen.shape == (5, 3) and small.rejected.shape == (5, 3)
    assert bool((small.chosen != small.rejected).all())
    again = T.random_states(5, 6, 3, seed=3)
    assert torch.equal(again.logits, small.logits) and torch.equal(again.chosen, small.chosen)
    assert not torch.equal(T.random_states(5, 6, 3, seed=4).logits, small.logits)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_dpo_pair_loss_is_the_zoo_and_the_closed_form(small, beta):
    got = _np(T.pair_losses("dpo", small.logits, small, beta=beta))
    lp = np.log(_softmax(_np(small.logits)))
    ref = np.log(_softmax(_np(small.ref_logits)))
    w, l = small.chosen.numpy(), small.rejected.numpy()
    s = np.arange(5)[:, None]
    h = (lp[s, w] - ref[s, w]) - (lp[s, l] - ref[s, l])
    np.testing.assert_allclose(got, np.log1p(np.exp(-beta * h)), rtol=1e-12)   # -log sigma(beta h)
    zoo = L.pair_loss("dpo", torch.as_tensor(lp[s, w]), torch.as_tensor(lp[s, l]), torch.as_tensor(ref[s, w]),
                      torch.as_tensor(ref[s, l]), beta=beta)
    np.testing.assert_allclose(got, _np(zoo), rtol=1e-13)


def test_balanced_pair_loss_is_the_reward_model_loss(small):
    got = _np(T.pair_losses("balanced", small.logits, small, c=2.5))
    p = _softmax(_np(small.logits))
    s = np.arange(5)[:, None]
    pw, pl = p[s, small.chosen.numpy()], p[s, small.rejected.numpy()]
    np.testing.assert_allclose(got, np.log1p(np.exp(-2.5 * (pw - pl))), rtol=1e-12)
    np.testing.assert_allclose(got, _np(L.reward_model_loss(torch.as_tensor(2.5 * pw), torch.as_tensor(2.5 * pl))),
                               rtol=1e-14)


def _loop_grads(st, kind, beta=1.0, c=1.0):
    """d(sum of pair losses)/ds, pair by pair, from the closed forms of the module docstring."""
    S, R = st.logits.shape
    p = _softmax(_np(st.logits))
    lp = np.log(p)
    ref = np.log(_softmax(_np(st.ref_logits)))
    g = np.zeros((S, R))
    for s in range(S):
        for w, l in zip(st.chosen[s].tolist(), st.rejected[s].tolist()):
            if kind == "dpo":
                kappa = 1 / (1 + np.exp(-beta * ((lp[s, w] - ref[s, w]) - (lp[s, l] - ref[s, l]))))
                g[s, w] -= beta * (1 - kappa)
                g[s, l] += beta * (1 - kappa)
            else:
                kappa = 1 / (1 + np.exp(-c * (p[s, w] - p[s, l])))
                e = -p[s] * (p[s, w] - p[s, l])
                e[w] += p[s, w]
                e[l] -= p[s, l]
                g[s] += -c * (1 - kappa) * e
    return g


@pytest.mark.parametrize("kind", T.LOSS_KINDS)
def test_logit_gradient_matches_the_closed_forms(small, kind):
    g, loss = T.logit_gradient(kind, small, beta=0.7, c=1.5)
    np.testing.assert_allclose(_np(g), _loop_grads(small, kind, beta=0.7, c=1.5), rtol=1e-10, atol=1e-14)
    assert loss.shape == (5, 3)


def test_pair_weights_brute_force(small):
    kappa = torch.rand(5, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    w = _np(T.pair_weights(kappa, small.chosen, small.rejected, 6))
    ref = np.zeros((5, 6))
    for s in range(5):
        for k in range(3):
            ref[s, small.chosen[s, k]] += 1 - kappa[s, k].item()
            ref[s, small.rejected[s, k]] -= 1 - kappa[s, k].item()
    np.testing.assert_allclose(w, ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(w.sum(-1), 0.0, atol=1e-14)


# ------------------------------------------------------------------------------------------ Thms. 1-2
@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_theorem1_is_exact_for_the_tabular_policy(small, beta):
    res = T.one_step(small, [0.3, 1e-4], beta=beta)
    assert float(res.rel_err("thm1").max()) < 1e-12
    # and it is beta-aware: with beta dropped the prediction is off by the factor beta
    wrong = T.thm1_logit_update(res.w["dpo"], 1e-4, beta=1.0)
    if beta != 1.0:
        assert not torch.allclose(wrong, res.actual["dpo_ds"][1])


def test_eq12_equals_finite_differences_of_the_softmax():
    """004 eq. 12 is d pi / d eta at eta = 0 of softmax(s + eta beta w): central differences, numpy."""
    st = T.random_states(3, 4, 2, seed=11)
    beta = 0.8
    res = T.one_step(st, [1e-3], beta=beta)
    w = _np(res.w["dpo"])
    s = _np(st.logits)
    h = 1e-6
    fd = (_softmax(s + h * beta * w) - _softmax(s - h * beta * w)) / (2 * h)
    pred = _np(T.eq12_prob_update(res.p, res.w["dpo"], beta))
    np.testing.assert_allclose(pred, fd, rtol=1e-7, atol=1e-11)
    # and the same from the softmax Jacobian by autograd (004 Lemma 1, eq. 39)
    jac = torch.autograd.functional.jacobian(lambda x: torch.softmax(x, -1), st.logits[0])
    np.testing.assert_allclose(_np(T.first_order_prob_update(res.p[0], beta * res.w["dpo"][0])),
                               _np(jac @ (beta * res.w["dpo"][0])), rtol=1e-12, atol=1e-15)


def test_eq12_error_is_second_order(small):
    lrs = [1e-2, 1e-3, 1e-4]
    err = T.error_table(T.one_step(small, lrs))
    assert abs(T.loglog_slope(lrs, err["eq12"]["max_rel"]) - 1) < 0.05
    r = err["eq12"]["max_abs_over_eta2"]
    assert max(r) / min(r) < 1.2


def test_balanced_exact_update_and_eq11_erratum(small):
    res = T.one_step(small, [1e-5], c=1.3)
    assert float(res.rel_err("balanced_exact").max()) < 1e-9
    # printed eq. 11 (no factor pi_i) is worse than the corrected one in every state
    assert bool((res.rel_err("eq11_corrected") < res.rel_err("eq11_printed")).all())
    # for ONE pair, corrected eq. 11 is the exact step of the pair's two logits
    one = T.PairStates(small.logits, small.ref_logits, small.chosen[:, :1], small.rejected[:, :1])
    r1 = T.one_step(one, [1e-5], c=1.3)
    idx = torch.cat([one.chosen, one.rejected], 1)
    act = r1.actual["bal_ds"][0].gather(-1, idx)
    np.testing.assert_allclose(_np(r1.predicted["eq11_corrected"][0].gather(-1, idx)), _np(act), rtol=1e-10)
    assert not np.allclose(_np(r1.predicted["eq11_printed"][0].gather(-1, idx)), _np(act), rtol=1e-3)
    e = T.eq11_erratum(res)
    assert e["share_corrected_closer"] == 1.0 and e["exact_max"] < 1e-9


def test_balanced_first_order_equals_finite_differences(small):
    c = 0.9
    res = T.one_step(small, [1e-3], c=c)
    w = res.w["balanced"]
    ds = _np(T.balanced_logit_update(res.p, w, 1.0, c=c))
    s = _np(small.logits)
    h = 1e-6
    fd = (_softmax(s + h * ds) - _softmax(s - h * ds)) / (2 * h)
    np.testing.assert_allclose(_np(T.balanced_prob_update(res.p, w, c)), fd, rtol=1e-6, atol=1e-12)
    # eq. 14 is the same without the last term: it differs where the probabilities are not small
    p = res.p
    extra = (w * p).sum(-1, keepdim=True) * (p - (p * p).sum(-1, keepdim=True))
    np.testing.assert_allclose(_np(T.eq14_prob_update(p, w, c) - T.balanced_prob_update(p, w, c)),
                               _np(c * p * extra), rtol=1e-10, atol=1e-15)


def test_prob_change_is_the_softmax_difference(small):
    ds = 0.01 * torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    np.testing.assert_allclose(_np(T.prob_change(small.logits, ds)),
                               _softmax(_np(small.logits + ds)) - _softmax(_np(small.logits)), atol=1e-15)
    # and it keeps its digits where the plain difference cancels
    s = torch.tensor([[40.0, 0.0, 0.0]], dtype=DT)
    d = torch.tensor([[0.0, 1e-12, 0.0]], dtype=DT)
    assert float(T.prob_change(s, d)[0, 1]) == pytest.approx(math.exp(-40) / (1 + 2 * math.exp(-40)) * 1e-12,
                                                            rel=1e-6)


def test_sequential_gap_is_second_order_and_zero_for_one_pair(small):
    gap = T.sequential_gap(small, [1e-2, 1e-3, 1e-4])
    r = gap["max_abs_over_eta2"]
    assert max(r) / min(r) < 1.05 and r[0] > 0
    one = T.PairStates(small.logits, small.ref_logits, small.chosen[:, :1], small.rejected[:, :1])
    assert max(T.sequential_gap(one, [1e-2])["max_abs"]) < 1e-15


def test_error_by_max_prob_bins(small):
    res = T.one_step(T.random_states(64, 10, 4, seed=0), [1e-6])
    out = T.error_by_max_prob(res)
    assert sum(out["n_states"]) == 64
    assert out["eq14"]["spearman_rho"] > 0.5          # eq. 14's error grows with max pi


def test_extreme_logits_stay_finite():
    st = T.random_states(4, 5, 3, seed=0)
    st = st.with_logits(st.logits * 1e3)               # log-probs down to about -1e4
    res = T.one_step(st, [1e-3])
    for d in (res.actual, res.predicted):
        for v in d.values():
            assert bool(torch.isfinite(v).all())


# ------------------------------------------------------------------------------------------ Assumption 2
def test_feature_check_tabular_exact_and_c2_scaling():
    st = T.random_states(32, 8, 4, seed=2)
    out = T.feature_check(st, [16, 256], 1e-6, seed=0)
    assert out["rows"]["tabular"]["median_rel_err_ds"] < 1e-12
    for n in ("16", "256"):
        assert out["rows"][n]["n_mean_c2"] == pytest.approx(1.0, abs=0.15)
    assert out["rows"]["256"]["median_rel_err_dp"] < out["rows"]["16"]["median_rel_err_dp"]


def test_correlated_features_scale_the_step_by_one_minus_rho():
    st = T.random_states(6, 5, 3, seed=5)
    out = T.correlated_check(st, [-0.2, 0.0, 0.4], 1e-6)
    for v in out.values():
        assert v["measured_mean"] == pytest.approx(1 - v["rho"], abs=1e-9)
        assert v["corrected"] == pytest.approx(1 - v["rho"])
        assert v["eq35_printed"] == pytest.approx(1 + v["rho"])


# ------------------------------------------------------------------------------------------ Fig. 1, Thm. 3
@pytest.mark.parametrize("sampling", T.SAMPLINGS)
def test_fig1_curves_brute_force(sampling):
    n, mp, mq, s2 = 7, 2.0, 4.0, 3.0
    cv = T.fig1_curves([mp], [mq], s2, n, sampling)
    y = np.arange(n)
    p = np.exp(-(y - mp) ** 2 / (2 * s2)); p /= p.sum()
    u = np.exp(-(y - mq) ** 2 / (2 * s2)); u /= u.sum()
    w = np.zeros(n)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            weight = p[i] * p[j] if sampling == "shiftless" else 1.0
            q = u[i] / (u[i] + u[j])
            # tau = +1 (i wins) with prob q: 1 - kappa = p_j/(p_i+p_j); tau = -1: -(p_i/(p_i+p_j))
            w[i] += weight * (q * p[j] / (p[i] + p[j]) - (1 - q) * p[i] / (p[i] + p[j]))
    np.testing.assert_allclose(_np(cv["w"][0]), w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_np(cv["wpi"][0]), w * p, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(_np(cv["w_lemma2"][0]), w, rtol=1e-12, atol=1e-15)     # 004 Lemma 2


def test_local_extrema_and_theorem3():
    assert T.local_extrema([0, 1, 2, 1, 0, 1]) == [2, 4]
    assert T.local_extrema([0, 1, 2, 3]) == []
    w = np.array([0, -1, -2, -1, 0, 1, 2, 3, 2, 1.0])            # extrema at 2 (< mu_p) and 7 (> mu_q)
    wpi = np.array([0, 0, -1, -2, -1, 0, 1, 0, 0, 0.0])          # extrema at 3 and 6
    t = T.theorem3(w, wpi, mu_p=4.0, mu_q=5.0)
    assert t["s1_holds"] and t["s2_holds"] and t["s3_corrected_holds"]
    assert not t["s3_printed_holds"] and t["s3_printed_tested"] == 1
    bad = np.array([0, 1, 2, 1, 0, 0.5, 0.2, 0.1, 0, 0.0])        # an extremum at 4, inside [mu_p, mu_q]
    assert not T.theorem3(bad, wpi, mu_p=3.0, mu_q=6.0)["s1_holds"]
    with pytest.raises(ValueError, match="mu_p"):
        T.theorem3(w, wpi, mu_p=6.0, mu_q=5.0)


def test_fig1_summary_default_rows():
    out = T.fig1_summary([45.0, 30.0], [55.0, 70.0], 100.0)
    assert out["lemma2_max_abs_err"] < 1e-9
    u = out["rows"]["30-70"]["uniform"]
    assert u["s1_holds"] and u["s2_holds"] and u["s3_corrected_holds"] and not u["s3_printed_holds"]
    assert u["w_argmax"] > 70 and u["w_argmin"] < 30                # extrema of w outside [mu_P, mu_Q]
    assert 30 < u["wpi_argmax"] < 70


# ------------------------------------------------------------------------------------------ Thms. 4, 5, 7
def test_theorems_4_and_7_against_numpy():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(3, 9, generator=g, dtype=DT), -1)
    a = torch.rand(3, 9, generator=g, dtype=DT)
    b = torch.rand(3, 9, generator=g, dtype=DT)
    t4, t7 = T.theorem4(p, a, b), T.theorem7(p, a, b)
    for r in range(3):
        pn = _np(p[r]) / np.sqrt(np.mean(_np(p[r]) ** 2))
        A, B = _np(a[r]), _np(b[r])
        w = B - A
        e2 = np.mean(pn ** 2)
        cov = lambda x, y: np.mean((x - x.mean()) * (y - y.mean()))   # noqa: E731
        assert t4["lhs"][r] == pytest.approx(np.var(w * pn) - np.var(w) * e2, rel=1e-10)
        assert t4["rhs"][r] == pytest.approx(2 * (cov(A, B) * e2 - cov(A * pn, B * pn)), rel=1e-10)
        pr = _np(p[r])
        assert t7["lhs"][r] == pytest.approx(np.sum(w * pr ** 2), rel=1e-10)
        assert t7["rhs"][r] == pytest.approx(np.sum(w * pr) * pr.mean(), rel=1e-10)
        assert t7["corr_alpha_beta"][r] == pytest.approx(np.corrcoef(A, B)[0, 1], rel=1e-10)


def test_theorem4_condition_detects_monotone_beta():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=DT)
    assert T.theorem4(p, p, p ** 2)["condition"] == [True]
    assert T.theorem4(p, p, -p)["condition"] == [False]


def test_theorem5_against_numpy():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(12, generator=g, dtype=DT), -1)
    ws = torch.randn(12, generator=g, dtype=DT)
    sub = p >= p.median()
    out = T.theorem5(p, ws, 0.2, 50, seed=7, subset=sub)
    eps = _np(torch.randn(50, 12, generator=torch.Generator().manual_seed(7), dtype=DT)) * 0.2 * np.std(_np(ws))
    pn = _np(p) / np.sqrt(np.mean(_np(p) ** 2))
    m = sub.numpy()
    w = _np(ws) + eps
    lhs = (np.var(w[:, m], axis=1) - np.var(_np(ws)[m])) * np.mean(pn ** 2)
    rhs = np.var(w[:, m] * pn[m], axis=1) - np.var(_np(ws)[m] * pn[m])
    assert out["share_holds"] == pytest.approx(np.mean(lhs <= rhs))
    assert out["lhs_mean"] == pytest.approx(lhs.mean(), rel=1e-10)
    assert out["condition"] and out["subset_size"] == int(m.sum())


def test_lemmas_and_random_checks_hold():
    lem = T.lemma_checks(200, 10, seed=0)
    assert lem["lemma3"]["share_holds"] == 1.0 and lem["lemma4"]["share_holds"] == 1.0
    rnd = T.random_theorem_checks(200, 10, seed=0)
    assert rnd["thm4"]["share_condition"] == 1.0 and rnd["thm4"]["share_holds"] == 1.0


def test_ood_comparison_brute_force():
    p = torch.tensor([[0.05, 0.6, 0.3, 0.05]], dtype=DT)
    w = torch.tensor([[1.0, -0.5, 0.2, -0.7]], dtype=DT)
    ood = np.array([True, False, False, True])
    out = T.ood_comparison(p, w, ood)
    pn, wn = _np(p[0]), _np(w[0])
    d = pn * (wn - np.sum(wn * pn))
    b = pn * (wn * pn - np.sum(wn * pn ** 2))
    assert out["net_dpo"][0] == pytest.approx(d[ood].sum() / np.abs(d).sum())
    assert out["share_balanced"][0] == pytest.approx(np.abs(b[ood]).sum() / np.abs(b).sum())


# ------------------------------------------------------------------------------------------ training runs
def test_tabular_zero_reference():
    t = T.tabular_zero_reference(steps=50, seed=1)
    assert t["pi_T_zero"] == 0.0 and t["logit_zero_still_minus_inf"]
    assert t["ratio_tiny"] == pytest.approx(t["z_ratio"], rel=1e-12)
    assert t["pi_ref_tiny"] == pytest.approx(1e-30, rel=1e-12)
    assert t["paired_logits_moved"] > 0


@pytest.fixture(scope="module")
def tiny_runs():
    """Tiny DPO runs; the tabular one with SGD: Adam would scale the float32 rounding residue of the
    unpaired logits' zero gradient up to a step of size ~lr."""
    kw = dict(seeds=[0, 1], steps=20, device="cpu", progress=False, record_probs=True,
              init={"p_chosen": 0.12, "p_rejected": 0.12, "reading": 0.01})
    return {"tabular": toy.train("dpo", {"beta": 1.0}, policy="tabular", optimizer="sgd", lr=1.0, **kw),
            "mlp": toy.train("dpo", {"beta": 1.0}, policy="mlp", lr=1e-2, **kw)}


def test_unpaired_growth_tabular_is_one_common_factor(tiny_runs):
    g = T.unpaired_growth(tiny_runs["tabular"])
    assert g["within_prompt_spread"] < 1e-4                       # one factor Z0/Zt per member and prompt
    assert g["peak_max"] <= g["tabular_bound_max"]
    m = T.unpaired_growth(tiny_runs["mlp"])
    assert m["within_prompt_spread"] > 1e-3                       # response-specific in the MLP
    with pytest.raises(ValueError, match="record_probs"):
        T.unpaired_growth(SimpleNamespace(probs=None))


def test_logit_gradient_cosines(tiny_runs):
    tab = T.logit_gradient_cosines(tiny_runs["tabular"])
    assert tab["mean_abs_c"] == 0.0                               # one-hot logit gradients
    mlp = T.logit_gradient_cosines(tiny_runs["mlp"], "final")
    assert 0 < mlp["mean_abs_c"] < 1 and 0 <= mlp["share_negative"] <= 1


def test_gradient_trends_on_synthetic_records():
    gw = np.array([[-3.0, -2.0], [-2.0, -2.5], [-1.0, -1.0]])     # member 0 rises; member 1 dips then rises
    gl = np.array([[1.0, 1.0], [2.0, 0.5], [3.0, 0.2]])
    out = T.gradient_trends(SimpleNamespace(records={"dpi_chosen": gw, "dpi_rejected": gl}))
    assert out["signed_gw_increases"] == 0.75 and out["abs_gw_increases"] == 0.25
    assert out["signed_gl_decreases"] == 0.5 and out["share_members_abs_gl_up"] == 0.5
    assert out["gl_last"] == pytest.approx(1.6)


def test_ppo_imbalance_on_a_synthetic_run():
    spec = toy.ToySpec()
    M, P, R = 2, spec.n_prompts, spec.n_responses
    rng = np.random.default_rng(0)
    ref = np.log(_softmax(rng.normal(size=(M, P, R))))
    fin = np.log(_softmax(rng.normal(size=(M, P, R))))
    rew = rng.normal(size=(M, P, R))
    T_ = 3
    recs = {"grad_chosen": np.full((T_, M), 2.0), "grad_rejected": np.full((T_, M), 1.0),
            "dlogp_chosen": np.full((T_, M), -0.5), "dlogp_rejected": np.full((T_, M), 1.0)}
    run = SimpleNamespace(spec=spec, rewards=rew, ref_log_probs=ref, final_log_probs=fin, beta=0.5, records=recs)
    m = spec.role_masks()
    g = rew - 0.5
    want = np.abs(g[:, m["chosen"].numpy()]).mean() / np.abs(g[:, m["rejected"].numpy()]).mean()
    assert T.eq5_ratio(run) == pytest.approx(want)
    g2 = rew + 3.0 - 0.5 * (fin - ref) - 0.5
    want2 = np.abs(g2[:, m["chosen"].numpy()]).mean() / np.abs(g2[:, m["rejected"].numpy()]).mean()
    assert T.eq5_ratio(run, shift=3.0, final=True) == pytest.approx(want2)
    out = T.ppo_imbalance(run, shifts=(-1.0, 2.0))
    assert set(k for k in out if "_shift_" in k) == {"eq5_start_shift_-1", "eq5_start_shift_2"}
    assert out["advantage_end"] == pytest.approx(2.0) and out["advantage_share_above_1"] == 1.0
    assert out["logit_start"] == pytest.approx(0.5) and out["logit_share_above_1"] == 0.0


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, match", [
    (lambda: T.random_states(0, 4, 2), "n_states"),
    (lambda: T.random_states(3, 1, 2), "n_responses"),
    (lambda: T.one_step(T.random_states(2, 4, 2), []), "lrs"),
    (lambda: T.one_step(T.random_states(2, 4, 2), [-1.0]), "lrs"),
    (lambda: T.one_step(T.random_states(2, 4, 2), [0.1], beta=0.0), "beta"),
    (lambda: T.logit_gradient("ipo", T.random_states(2, 4, 2)), "kind"),
    (lambda: T.feature_check(T.random_states(2, 4, 2), [], 1e-3), "widths"),
    (lambda: T.correlated_check(T.random_states(2, 4, 2), [-0.5], 1e-3), "rhos"),
    (lambda: T.fig1_curves([1.0], [2.0], sampling="online"), "sampling"),
    (lambda: T.fig1_curves([1.0, 2.0], [3.0]), "mu_p"),
    (lambda: T.lemma_checks(1), "draws"),
])
def test_bad_input_is_a_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as exc:
        call()
    assert "\n" not in str(exc.value)


def test_chapter_parameter_checks():
    ch = CHAPTERS["imbalance"]
    with pytest.raises(ParameterError, match="fig1_mu_q"):
        ch.resolve({"fig1_mu_p": [45.0, 30.0]})
    with pytest.raises(ParameterError, match="fig1_mu_p"):
        ch.resolve({"fig1_mu_p": [60.0, 30.0, 48.0]})
    with pytest.raises(ParameterError, match="rhos"):
        ch.resolve({"rhos": [-0.5]})
    assert ch.resolve({})["beta"] == 1.0


# ------------------------------------------------------------------------------------------ review additions
def test_share_error_exceeds_change_brute_force(small):
    res = T.one_step(small, [0.5, 1e-6])
    out = T.share_error_exceeds_change(res, ["eq12", "eq14"], 0)
    a, p = _np(res.actual["dpo_dp"][0]), _np(res.predicted["eq12"][0])
    n = sum(abs(p[s, r] - a[s, r]) > abs(a[s, r]) for s in range(a.shape[0]) for r in range(a.shape[1]))
    assert out["eq12"] == pytest.approx(n / a.size)
    assert T.share_error_exceeds_change(res, ["thm1"], 0)["thm1"] == 0.0      # Thm. 1 is exact
    assert T.share_error_exceeds_change(res, ["eq12"], 1)["eq12"] <= out["eq12"]


def test_feature_size_scan_matches_feature_check_and_sqrt_r_over_n():
    out = T.feature_size_scan([6], [16, 2048], 1e-6, n_states=48, n_pairs=4, seed=1)
    ref = T.feature_check(T.random_states(48, 6, 4, 1), [16, 2048], 1e-6, seed=1)["rows"]
    row = out["rows"]["6"]
    assert row["16"]["median_rel_err_ds"] == ref["16"]["median_rel_err_ds"]
    assert row["2048"]["sqrt_r_over_n"] == pytest.approx(math.sqrt(6 / 2048))
    # N >> R: the neglected terms sum_j c_ij g_j give a relative error of about sqrt(R/N)
    assert 0.6 < row["2048"]["ds_over_sqrt_r_over_n"] < 1.4
    with pytest.raises(ValueError, match="n_responses"):
        T.feature_size_scan([], [16], 1e-6)


def test_theorem5_standard_error_against_numpy():
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(15, generator=g, dtype=DT), -1)
    ws = torch.randn(15, generator=g, dtype=DT)
    out = T.theorem5(p, ws, 0.3, 40, seed=4)
    eps = _np(torch.randn(40, 15, generator=torch.Generator().manual_seed(4), dtype=DT)) * 0.3 * np.std(_np(ws))
    pn = _np(p) / np.sqrt(np.mean(_np(p) ** 2))
    w = _np(ws) + eps
    d = (np.var(w, axis=1) - np.var(_np(ws))) * np.mean(pn ** 2) - (np.var(w * pn, axis=1) - np.var(_np(ws) * pn))
    se = d.std(ddof=1) / np.sqrt(40)
    assert out["diff_mean"] == pytest.approx(d.mean(), rel=1e-10)
    assert out["diff_se"] == pytest.approx(se, rel=1e-10)
    assert out["z"] == pytest.approx(d.mean() / se, rel=1e-10)


def test_unpaired_growth_bound_margin_brute_force(tiny_runs):
    for pol in ("tabular", "mlp"):
        run = tiny_runs[pol]
        masks = run.spec.role_masks()
        un = (masks["other"] | masks["unseen"]).numpy()
        pr = run.probs.astype(np.float64)
        T_, M, P, R = pr.shape
        margins = []
        for m in range(M):
            for x in range(P):
                idx = [r for r in range(R) if un[x, r]]
                bound = -np.log10(pr[0, m, x, idx].sum())
                peak = max(np.log10(pr[t, m, x, r] / pr[0, m, x, r]) for t in range(T_) for r in idx)
                margins.append(bound - peak)
        assert T.unpaired_growth(run)["bound_margin_min"] == pytest.approx(min(margins), rel=1e-9, abs=1e-12)
    assert T.unpaired_growth(tiny_runs["tabular"])["bound_margin_min"] >= -1e-6   # Z0/Zt <= 1/pi0(U)
