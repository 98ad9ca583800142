"""Verification 2 of issue [2/7]: the papers' printed equations against the derivation (prefdyn.printed).

- every printed equation that is right equals the derivation: sympy ``simplify(printed - derived) == 0``
  (for a printed leading-order form: ``limit(derived / printed) == 1``) and numerically at random points;
- every erratum's printed form differs numerically from the derivation, and its corrected form agrees
  (symbolically and at random points);
- the derivations that are not losses of the zoo (004 Theorem 1's logit update, 000 App. B.1's token-level
  gradients) are checked against torch autograd, and the transcribed losses against ``prefdyn.losses``;
- the zoo's symbols and derivatives are prefdyn.symbolic's (nothing re-declared, nothing re-derived).

The chapter's views of all this (tables, Markdown, the figure) are tested in ``tests/test_gradients_view.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from prefdyn import losses as L
from prefdyn import printed as P
from prefdyn import symbolic as S

PRINTED_KEYS = [p.key for p in P.PRINTED]
ERRATA_IDS = [e.id for e in P.ERRATA]


# ------------------------------------------------------------------------------------------ right prints
@pytest.mark.parametrize("key", PRINTED_KEYS)
def test_printed_equals_derivation_symbolically(key):
    assert P.PRINTED_BY_KEY[key].symbolic_difference() == 0


@pytest.mark.parametrize("key", PRINTED_KEYS)
def test_printed_equals_derivation_numerically(key):
    entry = P.PRINTED_BY_KEY[key]
    assert entry.max_relative_error(n=6, seed=1) < 1e-9


def test_printed_catalogue_covers_the_issue_list():
    keys = " | ".join(PRINTED_KEYS)
    for needle in ("000 Cor. 1", "000 eq. 9", "000 eq. 10", "000 eq. 12", "000 eq. 13", "000 App. B.2.1",
                   "000 App. B.2.2", "000 App. B.1 softmax", "000 Sec. 4", "002 eq. 2/4", "002 Cor. 1",
                   "004 eq. 2", "004 Prop. 1", "004 eq. 26", "004 eq. 27", "004 eq. 28-29"):
        assert needle in keys, needle


# ------------------------------------------------------------------------------------------ errata
@pytest.mark.parametrize("eid", ERRATA_IDS)
def test_erratum_printed_differs_and_corrected_agrees_at_its_point(eid):
    chk = P.ERRATA_BY_ID[eid].check()
    assert chk["printed_rel_err"] > 1e-3, chk
    assert chk["corrected_rel_err"] < 1e-9, chk
    assert math.isfinite(chk["derivation"]) and chk["derivation"] != 0.0  # the default points avoid underflow


@pytest.mark.parametrize("eid", ERRATA_IDS)
def test_erratum_corrected_equals_derivation_symbolically(eid):
    assert P.ERRATA_BY_ID[eid].symbolic_corrected_difference() == 0


@pytest.mark.parametrize("eid", ERRATA_IDS)
def test_erratum_at_random_points(eid):
    e = P.ERRATA_BY_ID[eid]
    syms = sorted(set(e.point), key=lambda s: s.name)
    pts = P.random_points(syms, 5, seed=3, domains=e.domains)
    checked = 0
    for pt in pts:
        if e.limit is not None:
            pt[e.limit[0]] = P.LIMIT_POINT
        try:
            chk = e.check(pt)
        except ValueError:  # 004 eq. 25 as printed takes the log of a negative number at some points
            continue
        checked += 1
        assert chk["corrected_rel_err"] < 1e-9, (pt, chk)
        assert chk["printed_rel_err"] > 1e-6, (pt, chk)
    assert checked >= 3


def test_errata_records_are_complete():
    assert len(P.ERRATA) >= 10
    for e in P.ERRATA:
        assert e.paper in {"000", "002", "004"}
        assert e.kind and e.where and e.quantity
        assert e.explanation and "\n" not in e.explanation
        d = e.as_dict()
        assert d["printed"] != d["corrected"]


def test_token_errata_are_exact_up_to_the_vanishing_factor():
    """000 App. B.1: exact dl/dx = corrected / (1 + alpha z); the factor -> 1 as pi- -> 0."""
    factor = 1 + P.ALPHA_FLEX * P.SEQ_P ** (-P.BETA_P) * P.SEQ_M ** P.BETA_M
    for eid in ("000-B1-token-chosen-c", "000-B1-token-chosen-c'", "000-B1-token-rejected-c", "000-B1-token-rejected-c'"):
        e = P.ERRATA_BY_ID[eid]
        pt = dict(e.point)
        pt[P.REST_M] = 0.2  # far from the limit: the identity is exact
        exact = P.evaluate(e.reference_expr(), pt)
        corr = P.evaluate(e.corrected_value_expr() / factor, pt)
        assert exact == pytest.approx(corr, rel=1e-12)


# ------------------------------------------------------------------------------------------ torch legs
def _seq_logp(rest: float, logits: torch.Tensor) -> torch.Tensor:
    return math.log(rest) + torch.log_softmax(logits, dim=-1)[0]


def test_token_level_derivation_matches_torch_autograd():
    """000 App. B.1: d l^{DPO'} / d logits, sympy vs autograd of prefdyn.losses.flex_dpo through a softmax."""
    pt = {P.XC_P: 0.5, P.XD_P: -0.3, P.XO_P: 1.0, P.XC_M: -0.2, P.XD_M: 0.4, P.XO_M: 0.8, P.REST_P: 0.3,
          P.REST_M: 0.2, P.REF_P: 0.12, P.REF_M: 0.15, P.BETA_P: 0.5, P.BETA_M: 0.25}
    xp = torch.tensor([pt[P.XC_P], pt[P.XD_P], pt[P.XO_P]], dtype=torch.float64, requires_grad=True)
    xm = torch.tensor([pt[P.XC_M], pt[P.XD_M], pt[P.XO_M]], dtype=torch.float64, requires_grad=True)
    loss = L.pair_loss("flex_dpo", _seq_logp(pt[P.REST_P], xp), _seq_logp(pt[P.REST_M], xm),
                       math.log(pt[P.REF_P]), math.log(pt[P.REF_M]),
                       beta_chosen=pt[P.BETA_P], beta_rejected=pt[P.BETA_M])
    gp, gm = torch.autograd.grad(loss, (xp, xm))
    for sym, val in ((P.XC_P, gp[0]), (P.XD_P, gp[1]), (P.XC_M, gm[0]), (P.XD_M, gm[1])):
        assert P.evaluate(sp.diff(P.LOSS_TOKEN, sym), pt) == pytest.approx(float(val), rel=1e-10)


@pytest.mark.parametrize("c12", [0.0, -0.3])
@pytest.mark.parametrize("tau", [1, -1])
@pytest.mark.parametrize("kind", ["dpo", "balanced"])
def test_logit_update_matches_one_torch_gradient_step(kind, tau, c12):
    """004 Theorem 1 / App. C: Delta s_1 of one SGD step on logits s = W theta with W W^T = g^2 (I + C)."""
    g, lr, cb = 1.3, 0.01, 1.7
    s0 = torch.tensor([0.2, -0.4, 0.9], dtype=torch.float64)
    ref = (0.3, 0.25)
    gram = g ** 2 * torch.tensor([[1.0, c12, 0.0], [c12, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    W = torch.linalg.cholesky(gram)  # rows have the prescribed norms and cosines
    theta = torch.linalg.solve(W, s0).requires_grad_(True)
    s = W @ theta
    logp = torch.log_softmax(s, dim=0)
    if kind == "dpo":
        if tau == 1:
            loss = L.pair_loss("dpo", logp[0], logp[1], math.log(ref[0]), math.log(ref[1]), beta=1.0)
        else:
            loss = L.pair_loss("dpo", logp[1], logp[0], math.log(ref[1]), math.log(ref[0]), beta=1.0)
        expr = P._logit_update(P.LOSS_T1_DPO, c12=c12)
    else:
        p = logp.exp()
        loss = -F.logsigmoid(cb * tau * (p[0] - p[1]))  # the balanced loss of 004 eq. 11 (not a zoo loss)
        expr = P._logit_update(P.LOSS_T1_BAL, c12=c12)
    (grad,) = torch.autograd.grad(loss, theta)
    ds = W @ (-lr * grad)
    pt = {P.S1: 0.2, P.S2: -0.4, P.S3: 0.9, P.REF1: ref[0], P.REF2: ref[1], P.TAU: tau, P.LR: lr, P.G: g, P.CB: cb}
    assert P.evaluate(expr, pt) == pytest.approx(float(ds[0]), rel=1e-10)


_LOSS_PRINTS = {  # printed loss transcription -> (zoo loss, parameter symbols -> zoo parameter names)
    "000 eq. 6": ("dpo", {P.BETA: "beta"}),
    "000 App. B.2.1 loss": ("flex_dpo", {P.BETA_P: "beta_chosen", P.BETA_M: "beta_rejected"}),
    "000 eq. 8": ("ipo", {P.ETA: "beta"}),
    "004 eq. 1": ("dpo", {P.BETA: "beta"}),
    "004 eq. 28-29": ("bdpo", {P.BETA: "beta"}),
}


@pytest.mark.parametrize("key", sorted(_LOSS_PRINTS))
def test_printed_losses_match_the_torch_losses(key):
    name, pmap = _LOSS_PRINTS[key]
    entry = P.PRINTED_BY_KEY[key]
    for pt in P.random_points(entry.symbols, 6, seed=5):
        kw = {v: pt[k] for k, v in pmap.items()}
        t = L.pair_loss(name, torch.tensor(math.log(pt[P.PI_P]), dtype=torch.float64),
                        torch.tensor(math.log(pt[P.PI_M]), dtype=torch.float64),
                        torch.tensor(math.log(pt[P.REF_P]), dtype=torch.float64),
                        torch.tensor(math.log(pt[P.REF_M]), dtype=torch.float64), **kw)
        assert P.evaluate(entry.printed, pt) == pytest.approx(float(t), rel=1e-10)


def test_slic_and_002_and_reward_model_match_torch():
    slic = P.PRINTED_BY_KEY["000 eq. 11 (hinge active)"]
    for pt in slic.numeric_points(5, seed=2):
        t = L.pair_loss("slic", torch.tensor(math.log(pt[P.PI_P]), dtype=torch.float64), math.log(pt[P.PI_M]),
                        0.0, 0.0, delta=pt[P.DELTA], eta=pt[P.ETA])
        assert P.evaluate(slic.printed, pt) == pytest.approx(float(t), rel=1e-10)
    e002 = P.PRINTED_BY_KEY["002 eq. 1"]
    for pt in e002.numeric_points(5, seed=2):
        # x1 = pi+/pi0+, x2 = pi-/pi0-: any reference gives the same loss
        t = L.pair_loss("dpo", torch.tensor(math.log(pt[P.X1] * 0.01), dtype=torch.float64),
                        torch.tensor(math.log(pt[P.X2] * 0.02), dtype=torch.float64), math.log(0.01), math.log(0.02),
                        beta=pt[P.BETA])
        assert P.evaluate(e002.printed, pt) == pytest.approx(float(t), rel=1e-10)
    for rp, rm in ((1.0, -0.5), (-3.0, 2.0), (0.0, 0.0)):
        t = L.reward_model_loss(torch.tensor(rp, dtype=torch.float64), torch.tensor(rm, dtype=torch.float64))
        assert P.evaluate(P.LOSS_RM, {P.R_P: rp, P.R_M: rm}) == pytest.approx(float(t), rel=1e-12)


@pytest.mark.parametrize("symmetric", [False, True])
def test_printed_nbdpo_v2_eq27_matches_torch(symmetric):
    entry = P.PRINTED_BY_KEY["004 eq. 27"]
    for pt in P.random_points(entry.symbols, 6, seed=7):
        pt[P.DLMIN] = float(L.delta_lambda_min(pt[P.CLIP], symmetric))
        t = L.pair_loss("nbdpo_v2", torch.tensor(math.log(pt[P.PI_P]), dtype=torch.float64),
                        torch.tensor(math.log(pt[P.PI_M]), dtype=torch.float64), math.log(pt[P.REF_P]),
                        math.log(pt[P.REF_M]), beta=pt[P.BETA], clip=pt[P.CLIP], symmetric=symmetric)
        assert P.evaluate(entry.printed, pt) == pytest.approx(float(t), rel=1e-10)


def test_corrected_nbdpo_eq25_gradient_matches_torch():
    """004 eq. 25 corrected, pi^det held constant: dl/dlog pi+ = lambda x DPO's, as prefdyn.losses.nbdpo."""
    corr = P.expand_sigma(P.ERRATA_BY_ID["004-eq25"].corrected)  # pi^det still a free symbol: held constant
    d_logp = sp.diff(corr, P.PI_P) * P.PI_P
    for pc, pr, rc, rr in ((0.3, 0.05, 0.15, 0.1), (0.2, 0.25, 0.3, 0.2), (0.01, 0.001, 0.02, 0.01)):
        lam = float(L.nbdpo_lambda(math.log(pc), math.log(pr), clip=0.5, symmetric=False))
        gc, _ = L.logprob_grads("nbdpo", torch.tensor(math.log(pc), dtype=torch.float64), math.log(pr),
                                math.log(rc), math.log(rr), beta=1.0, clip=0.5)
        pt = {P.PI_P: pc, P.PI_M: pr, P.REF_P: rc, P.REF_M: rr, P.PW_DET: pc, P.LAM: lam, P.BETA: 1.0}
        assert P.evaluate(d_logp, pt) == pytest.approx(float(gc), rel=1e-10)


# ------------------------------------------------------------------------------------------ the chapter's helpers
def test_printed_takes_the_zoo_symbols_from_symbolic():
    """One set of symbols: every sympy Symbol of prefdyn.printed named like one of prefdyn.symbolic's is that
    very object (a Symbol with other assumptions would be another symbol, and substitutions would miss it)."""
    theirs = {v.name: v for v in vars(S).values() if isinstance(v, sp.Symbol)}
    shared = {k: v for k, v in vars(P).items() if isinstance(v, sp.Symbol) and v.name in theirs}
    assert all(v is theirs[v.name] for v in shared.values()), shared
    assert {v.name for v in shared.values()} >= {"pi^+", "pi^-", "pi_0^+", "pi_0^-", "beta", "beta^+", "beta^-",
                                                 "gamma", "delta", "eta", "r^+", "r^-"}
    assert P.CLIP is S.CLIP and P.DLMIN is S.DLMIN


@pytest.mark.parametrize("name", L.LOSS_NAMES)
def test_gradients_are_symbolic_derive_with_the_ratio_rewritten(name):
    """printed.gradients differentiates nothing: its derivatives are symbolic.derive's; only the ratio is
    rewritten (simplified) for display, and it is the same function."""
    d, g = S.derive(name), P.gradients(name)
    for f in ("loss", "loss_sg", "d_pi_c", "d_pi_r", "d_logp_c", "d_logp_r", "d_pi_c_sg", "d_pi_r_sg"):
        assert getattr(g, f) is getattr(d, f), f
    assert g.stop_gradient == d.stop_gradient and g.balanced_log == d.balanced_log
    rng = np.random.default_rng(0)
    params = S.param_values(name)
    for _ in range(4):
        pt = dict(zip((P.PI_P, P.PI_M, P.REF_P, P.REF_M), rng.uniform(0.05, 0.9, 4).tolist()))
        pt.update(zip(d.params.values(), params))
        assert P.evaluate(g.ratio, pt) == pytest.approx(P.evaluate(d.d_pi_r / d.d_pi_c, pt), rel=1e-12)


@pytest.mark.parametrize("name", L.LOSS_NAMES)
def test_gradient_path_matches_the_sympy_gradients(name):
    params = P.loss_params({}, [name])[name]
    path = P.gradient_path(name, params, 0.3, 0.12, 0.2, 1e-6, 7)
    g = P.gradients(name)
    subs = P._param_subs(name, params)
    for which, key in (("d_pi_c", "d_pi_plus"), ("d_pi_r", "d_pi_minus")):
        expr = getattr(g, which).xreplace(subs)
        for pm, val in zip(path["pi_minus"], path[key]):
            ref = P.evaluate(expr, {P.PI_P: 0.3, P.PI_M: float(pm), P.REF_P: 0.12, P.REF_M: 0.2})
            assert val == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_comparison_table_rows():
    names = ["dpo", "sft_dpo", "slic", "ipo"]
    rows = P.comparison_table(names, P.loss_params({}, names), pi_chosen=0.12, ref_chosen=0.12,
                              ref_rejected=0.12, pi_rejected_end=1e-12)
    assert list(rows) == names
    dpo = rows["dpo"]
    assert dpo["d_pi_plus_vanishes"] is True and dpo["balanced_log"] is True
    assert dpo["d_pi_minus_limit"] == "inf" and dpo["ratio_limit"] == "inf"
    assert dpo["ratio_at_end"] == pytest.approx(0.12 / 1e-12, rel=1e-9)  # 000 Cor. 1: pi+/pi-
    assert rows["sft_dpo"]["d_pi_plus_vanishes"] is False and rows["sft_dpo"]["d_pi_plus_limit"] == "finite"
    assert rows["slic"]["d_pi_minus_limit"] == "0" and rows["slic"]["ratio_at_end"] == 0.0
    assert rows["ipo"]["balanced_log"] is True and rows["ipo"]["d_pi_plus_limit"] == "inf"


def test_every_limit_in_the_comparison_table_is_decided():
    # DPOP's ratio defeats sympy's limit directly; it is decided from its two gradients' leading orders
    names = ["dpop", "nbdpo"]
    rows = P.comparison_table(names, P.loss_params({}, names), pi_chosen=0.12, ref_chosen=0.12,
                              ref_rejected=0.12, pi_rejected_end=1e-12)
    assert rows["dpop"]["ratio_limit"] == "inf" and rows["dpop"]["d_pi_plus_limit"] == "0"
    assert rows["nbdpo"]["ratio_limit"] == "inf" and rows["nbdpo"]["d_pi_minus_limit"] == "finite"
    assert all("undecided" not in (r["ratio_limit"], r["d_pi_plus_limit"], r["d_pi_minus_limit"]) for r in rows.values())


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="pi_rejected_end"):
        P.gradient_path("dpo", {"beta": 0.1}, 0.3, 0.1, 0.1, 0.2, 5)
    with pytest.raises(ValueError, match="pi_chosen"):
        P.gradient_path("dpo", {"beta": 0.1}, 1.5, 0.1, 0.1, 1e-3, 5)
    with pytest.raises(ValueError, match="what"):
        P.derived("dpo", "hessian")
    with pytest.raises(ValueError, match="unknown loss"):
        P.loss_params({}, ["nosuch"])
    with pytest.raises(ValueError, match="beta"):
        P.loss_params({"beta": -1.0}, ["dpo"])
    with pytest.raises(ValueError, match="n must be"):
        P.random_points([P.PI_P], 0)


def test_notes_show_the_missing_conditions():
    n = {x.id: x for x in P.NOTES}
    r = n["002-remark1"].check()
    assert r["rate at x1 = x2 = 1"] == pytest.approx(1.0, rel=1e-12)  # not < 1 at pi = pi_ref
    assert r["rate at x1 = 0.5, x2 = 2"] == pytest.approx(4.0, rel=1e-12)  # x2/x1
    r = n["004-cor1"].check()
    assert r["the ratio |dL/dpi_w|/|dL/dpi_l| at pi_w = 0.1, pi_l = 0.3"] == pytest.approx(3.0, rel=1e-12)  # positively imbalanced
    assert r["the ratio |dL/dpi_w|/|dL/dpi_l| at pi_w = 0.3, pi_l = 0.1"] == pytest.approx(1 / 3, rel=1e-12)


def test_display_latex_uses_powers_not_roots():
    assert P.display_latex(P.PI_M ** sp.Rational(1, 10)) == r"\left(\pi^{-}\right)^{1/10}"


def test_printed_agreement_groups_by_paper():
    by = P.printed_agreement({p.key: 0.0 for p in P.PRINTED})
    assert sum(map(len, by.values())) == len(P.PRINTED) and set(by) == set(P.PAPERS)


# ------------------------------------------------------------------------------------------ errata the book had missed
def test_corollary2_condition_is_not_needed_for_the_chosen_gradient():
    """000 Cor. 2: dl/dpi+ -> 0 at every beta > 0; beta < 1 is what |dl/dpi-| -> inf needs."""
    lims = P.corollary2_limits([0.1, 0.5, 1.0, 2.0, 5.0])
    assert all(r["d_pi_plus_limit"] == "0" and r["ratio_limit"] == "inf" for r in lims.values())
    assert [lims[b]["d_pi_minus_limit"] for b in (0.1, 0.5, 1.0, 2.0, 5.0)] == ["inf", "inf", "finite", "0", "0"]
    assert [lims[b]["exponent_plus"] for b in (0.1, 1.0, 5.0)] == [0.1, 1.0, 5.0]
    e = P.ERRATA_BY_ID["000-cor2"]
    assert e.kind == "condition" and e.reference_expr() == 1           # derived: holds for every beta > 0
    assert e.check({P.BETA: 0.5})["printed_rel_err"] == 0.0           # the print is right below 1 ...
    assert e.check({P.BETA: 1.5})["printed_rel_err"] == 1.0           # ... and excludes beta >= 1 wrongly


def test_002_field_diverges_at_low_x1():
    small, smaller = P.field_002(1e-4), P.field_002(1e-8)
    assert smaller["d_x1"] > 1e3 * small["d_x1"] > 1e3               # ~ beta / x1, not 0
    assert smaller["d_x1"] == pytest.approx(0.1 / 1e-8 / (1 + 1e-8 ** 0.1), rel=1e-12)
    chk = P.ERRATA_BY_ID["002-sec3.2"].check()
    assert chk["printed"] == 0.0 and chk["derivation"] > 1e100


def test_every_erratum_is_ranked_by_consequence():
    rows = P.errata_ranking()
    assert sorted(r["id"] for r in rows) == sorted(P.ERRATA_BY_ID)
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows)
    assert {r["rank"] for r in rows} <= set(P.CONSEQUENCE_CLASSES)
    assert all(r["reason"] and len(r["reason"]) <= 80 for r in rows)
    by = {r["id"]: r for r in rows}
    # the printed losses with the wrong sign come first, the notation slip last
    assert by["004-eq3"]["rank"] == by["000-eq7"]["rank"] == 1 and rows[-1]["id"] == "000-D2-fig10"
    assert [P.ERRATA[r["number"] - 1].id for r in rows] == [r["id"] for r in rows]


def test_numeric_limits_agree_with_the_symbolic_ones():
    names = list(L.LOSS_NAMES)
    ps = P.loss_params({}, names)
    rows = P.comparison_table(names, ps, pi_chosen=0.12, ref_chosen=0.12, ref_rejected=0.12, pi_rejected_end=1e-12)
    for n in names:
        num = P.path_limits(n, ps[n], 0.12, 0.12, 0.12)
        assert num["d_pi_plus_limit"] == rows[n]["d_pi_plus_limit"], n
        assert num["d_pi_minus_limit"] == rows[n]["d_pi_minus_limit"], n


def test_numeric_limit_reads_powers_and_logs():
    t = P.PI_M
    cases = {t ** sp.Rational(1, 10): "0", t ** -sp.Rational(9, 10): "inf", 3 + t: "finite",
             1 / sp.log(t): "0", sp.log(t) ** 2: "inf", 1 / (t * sp.log(t)): "inf", sp.Integer(0): "0"}
    for expr, want in cases.items():
        assert P.numeric_limit(expr, {})["limit"] == want, expr


def test_matched_beta_nbdpo_rejected_gradient_follows_beta():
    names = ["dpo", "nbdpo", "bdpo", "slic"]
    m = P.matched_beta(names, {}, [0.1, 1.0], pi_chosen=0.12, ref_chosen=0.12, ref_rejected=0.12,
                       pi_rejected_end=1e-12)
    assert m[1.0]["nbdpo"]["d_pi_minus_limit"] == m[1.0]["dpo"]["d_pi_minus_limit"] == "finite"
    assert m[0.1]["nbdpo"]["d_pi_minus_limit"] == m[0.1]["dpo"]["d_pi_minus_limit"] == "inf"
    assert m[0.1]["bdpo"]["d_pi_plus_limit"] == m[1.0]["bdpo"]["d_pi_plus_limit"] == "finite"
    assert m[0.1]["slic"] == m[1.0]["slic"]                            # no beta
    assert m[0.1]["dpo"]["ratio_at_end"] == pytest.approx(0.12 / 1e-12, rel=1e-9)


def _bdpo_torch(pc, pr, rc, rr, beta, detach):
    lc = torch.tensor(math.log(pc), dtype=torch.float64, requires_grad=True)
    lr = torch.tensor(math.log(pr), dtype=torch.float64, requires_grad=True)
    lw = lr / (lc + lr)
    if detach:
        lw = lw.detach()
    loss = -F.logsigmoid(beta * (lw * (lc - math.log(rc)) - (1 - lw) * (lr - math.log(rr))))
    gc, gr = torch.autograd.grad(loss, (lc, lr))
    return float(gc) / pc, float(gr) / pr


@pytest.mark.parametrize("pt", [(0.3, 0.05, 0.12, 0.2, 1.0), (0.12, 1e-6, 0.12, 0.12, 0.1), (0.05, 0.2, 0.1, 0.3, 2.0)])
def test_bdpo_not_detached_matches_torch_and_the_extra_term(pt):
    pc, pr, rc, rr, beta = pt
    gcn, grn = P.bdpo_not_detached()
    g = P.gradients("bdpo")
    point = {P.PI_P: pc, P.PI_M: pr, P.REF_P: rc, P.REF_M: rr, P.BETA: beta}
    tn, td = _bdpo_torch(pc, pr, rc, rr, beta, False), _bdpo_torch(pc, pr, rc, rr, beta, True)
    assert P.evaluate(gcn, point) == pytest.approx(tn[0], rel=1e-10)
    assert P.evaluate(grn, point) == pytest.approx(tn[1], rel=1e-10)
    assert P.evaluate(g.d_pi_c, point) == pytest.approx(td[0], rel=1e-10)   # the book's: detached
    # the difference is -sigma(-m) beta (h+ + h-) dlambda_w/dpi, as the chapter states
    lw = sp.log(P.PI_M) / (sp.log(P.PI_P) + sp.log(P.PI_M))
    hp, hm = sp.log(P.PI_P / P.REF_P), sp.log(P.PI_M / P.REF_M)
    m = P.BETA * (lw * hp - (1 - lw) * hm)
    for gn, gd, v in ((gcn, g.d_pi_c, P.PI_P), (grn, g.d_pi_r, P.PI_M)):
        extra = -P.sigma(-m) * P.BETA * (hp + hm) * sp.diff(lw, v)
        assert P.evaluate(gn - gd, point) == pytest.approx(P.evaluate(extra, point), rel=1e-10, abs=1e-14)


def test_bdpo_detachment_agrees_at_the_reference_and_parts_along_the_path():
    res = P.bdpo_detachment([0.12, 1e-12, 1e-200], 1.0, 0.12, 0.12, 0.12)
    d, n = res["detached"], res["not_detached"]
    assert d["d_pi_plus"][0] == pytest.approx(n["d_pi_plus"][0], rel=1e-12)   # pi = pi_ref: 004 Prop. 1
    assert abs(n["d_pi_plus"][-1]) < 0.05 * abs(d["d_pi_plus"][-1])
    lims = P.detachment_limits(1.0, 0.12, 0.12, 0.12)
    assert lims["detached"]["d_pi_plus_limit"] == "finite" and lims["not_detached"]["d_pi_plus_limit"] == "0"
    assert lims["not_detached"]["q_plus"] == pytest.approx(0.25, rel=0.01)   # ~ 1/|log pi-|
