"""Verification 1 of issue 3: the sympy derivation (prefdyn.symbolic) == torch autograd (prefdyn.losses).

For every loss, at >= 1000 random points per parameter set (float64), including points with pi == pi_ref,
chosen == rejected, and nbDPO's clip boundaries: dl/dpi from the lambdified sympy gradient equals
(dl/dlogpi)/pi from autograd, relative tolerance 1e-6. Plus the ratio and leading-order checks of
000 Cor. 1-3 / App. B and 004 eq. 2 / Prop. 1, the token-level gradient of 000 App. B.1, and timing.
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import pytest
import sympy as sp
import torch

from prefdyn import losses as L
from prefdyn import symbolic as S
from prefdyn.symbolic import BETA, BETA_C, BETA_R, CLIP, ETA, GAMMA, PI_C, PI_R, REF_C, REF_R

RTOL = 1e-6
ATOL = 1e-12  # only matters for exact zeros (e.g. SLiC's dl/dpi- with the hinge inactive)
N_POINTS = 1200

# parameter sets per loss: the papers' defaults and one other (kept where exp(.) stays in float64 range)
PARAM_SETS = {
    "dpo": [{}, {"beta": 0.7}],
    "flex_dpo": [{}, {"beta_chosen": 0.5, "beta_rejected": 0.2}],
    "sft_dpo": [{}, {"beta": 0.3, "gamma": 1.5}],
    "ipo": [{}, {"beta": 1.0}],
    "slic": [{}, {"delta": 1.0, "eta": 0.5}],
    "dpop": [{}, {"beta": 0.5, "lam": 5.0}],
    "nbdpo": [{}, {"symmetric": True}, {"beta": 0.1, "clip": 0.3, "symmetric": True}],
    "nbdpo_v2": [{}, {"symmetric": True}, {"beta": 0.1, "clip": 2.0}],
    "bdpo": [{}, {"beta": 0.1}],
}
CASES = [(name, p) for name in L.LOSS_NAMES for p in PARAM_SETS[name]]


def test_all_derivations_are_fast():
    """First test of the file, so it times the uncached derivations (and warms the cache for the rest)."""
    t0 = time.perf_counter()
    for name in L.LOSS_NAMES:
        S.derive(name)
    elapsed = time.perf_counter() - t0
    assert elapsed < 45.0, elapsed  # the chapter's budget is 2 minutes in all
    t0 = time.perf_counter()
    for name in L.LOSS_NAMES:
        S.derive(name)
    assert time.perf_counter() - t0 < 0.01  # cached


def random_logprobs(seed: int, n: int = N_POINTS) -> np.ndarray:
    """(4, n) float64 log-probs: generic points, pi == pi_ref, chosen == rejected, clip edges."""
    rng = np.random.default_rng(seed)
    lp = rng.uniform(-12.0, -1e-3, size=(4, n))
    q = n // 6
    lp[2, :q], lp[3, :q] = lp[0, :q], lp[1, :q]  # pi == pi_ref (nbDPO/bDPO weights special here)
    lp[1, q : 2 * q] = lp[0, q : 2 * q]  # chosen == rejected (lambda = 1)
    lp[1:, 2 * q : 3 * q] = lp[0, 2 * q : 3 * q]  # all four equal
    lp[1, 3 * q : 4 * q] = lp[0, 3 * q : 4 * q] - 0.5  # log pi+ - log pi- = 0.5, the default clip edge
    return lp


def autograd_pi_grads(name, lp, **params):
    """(dl/dpi+, dl/dpi-) from torch autograd of prefdyn.losses, float64."""
    x = torch.tensor(lp, dtype=torch.float64)
    gc, gr = L.logprob_grads(name, *x, **params)
    return (gc / torch.exp(x[0])).numpy(), (gr / torch.exp(x[1])).numpy()


def assert_close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert np.isfinite(a).all() and np.isfinite(b).all(), what
    err = np.abs(a - b)
    ok = err <= RTOL * np.maximum(np.abs(a), np.abs(b)) + ATOL
    if not ok.all():
        i = int(np.argmax(~ok))
        raise AssertionError(f"{what}: {int((~ok).sum())} of {a.size} points differ, e.g. #{i}: {a.flat[i]!r} vs {b.flat[i]!r}")


@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}-{i}" for n, p in PARAM_SETS.items() for i, _ in enumerate(p)])
def test_sympy_gradient_equals_autograd(name, params):
    lp = random_logprobs(seed=zlib.crc32(f"{name}{sorted(params.items())}".encode()))
    pi = np.exp(lp)
    # torch gets exactly log(pi) of the float64 pi that sympy gets
    lp_exact = np.log(pi)
    sc, sr = S.numeric_gradients(name, **params)(*pi)
    tc, tr = autograd_pi_grads(name, lp_exact, **params)
    assert sc.shape == (N_POINTS,)
    assert_close(sc, tc, f"{name} {params} dl/dpi+")
    assert_close(sr, tr, f"{name} {params} dl/dpi-")
    # the log-prob gradients and the loss value too
    x = torch.tensor(lp_exact, dtype=torch.float64)
    gc, gr = L.logprob_grads(name, *x, **params)
    assert_close(S.numeric(name, "d_logp_c", **params)(*pi), gc.numpy(), f"{name} dl/dlogpi+")
    assert_close(S.numeric(name, "d_logp_r", **params)(*pi), gr.numpy(), f"{name} dl/dlogpi-")
    assert_close(S.numeric(name, "loss", **params)(*pi), L.pair_loss(name, *x, **params).numpy(), f"{name} loss")


def test_ratio_numeric_equals_autograd_ratio():
    lp = random_logprobs(seed=5)
    pi = np.exp(lp)
    for name in ("dpo", "ipo", "flex_dpo", "nbdpo", "bdpo"):
        tc, tr = autograd_pi_grads(name, np.log(pi))
        assert_close(S.numeric(name, "ratio")(*pi), tr / tc, f"{name} ratio")


# ----------------------------------------------------------------------------- ratios (000 Cor. 1, 004 eq. 2, Prop. 1)
def zero(expr) -> bool:
    return sp.simplify(expr) == 0


def test_dpo_ratio_000_cor1_and_004_eq2():
    d = S.derive("dpo")
    # (dl/dpi-)/(dl/dpi+) = -pi+/pi- ; 000 Cor. 1 prints +pi+/pi- (the minus sign is lost in the print)
    assert zero(d.ratio + PI_C / PI_R)
    assert not zero(d.ratio - PI_C / PI_R)
    # 004 eq. 2: (dl/dpi_w)/(dl/dpi_l) = -pi_l/pi_w
    assert zero(1 / d.ratio + PI_R / PI_C)
    # 000 Sec. 3.1: dz/dpi- / dz/dpi+ with z = pi-/pi+
    z = PI_R / PI_C
    assert zero(d.ratio - sp.diff(z, PI_R) / sp.diff(z, PI_C))


def test_other_ratios():
    assert zero(S.derive("ipo").ratio + PI_C / PI_R)  # same as DPO: balanced in log space
    assert zero(S.derive("flex_dpo").ratio + BETA_R * PI_C / (BETA_C * PI_R))
    # bDPO (detached lambda_w): (dl/dpi_w)/(dl/dpi_l) = -pi_l log pi_l / (pi_w log pi_w), 004 Prop. 1
    d = S.derive("bdpo")
    prop1 = -(PI_R * sp.log(PI_R)) / (PI_C * sp.log(PI_C))
    assert zero(1 / d.ratio - prop1)
    # ... and it holds at pi == pi_ref numerically too
    f = S.numeric("bdpo", "ratio")
    pc, pr = np.array([0.3, 0.01]), np.array([0.2, 0.5])
    np.testing.assert_allclose(1 / f(pc, pr, pc, pr), -(pr * np.log(pr)) / (pc * np.log(pc)), rtol=1e-12)
    # nbDPO / v2: DPO's ratio divided by lambda
    for name in ("nbdpo", "nbdpo_v2"):
        lam = 1 + sp.Min(CLIP, sp.Max(S.DLMIN, sp.log(PI_C) - sp.log(PI_R)))
        assert zero(S.derive(name).ratio + PI_C / (lam * PI_R))


def test_balanced_flags():
    for name in L.LOSS_NAMES:
        d = S.derive(name)
        assert d.balanced_log == (name in ("dpo", "ipo")), name
        assert d.balanced_prob is False, name  # 004 Def. 1 pointwise: DPO is imbalanced (004 Cor. 1)
        if d.balanced_log:
            assert d.imbalance_log == 0 and zero(d.d_logp_c + d.d_logp_r)
        else:
            assert d.imbalance_log != 0
    rm = S.derive_reward_model()
    assert rm.balanced  # 000 Sec. 4 / 004 Cor. 2
    assert zero(rm.d_r_c + 1 / (1 + sp.exp(S.R_C - S.R_R)))


# ----------------------------------------------------------------------------- leading order as pi- -> 0
ALPHA = (REF_C / REF_R) ** BETA


def test_dpo_leading_order_000_cor2_and_app_b1():
    d = S.derive("dpo")
    # App. B.1: dl/dpi+ -> -alpha beta (pi+)^(-beta-1) (pi-)^beta ; dl/dpi- -> alpha beta (pi+)^(-beta) (pi-)^(beta-1)
    assert d.lead_d_pi_c.exponent == BETA and d.lead_d_pi_c.log_power == 0
    assert zero(d.lead_d_pi_c.coefficient + ALPHA * BETA * PI_C ** (-BETA - 1))
    assert zero(d.lead_d_pi_r.exponent - (BETA - 1)) and d.lead_d_pi_r.log_power == 0
    assert zero(d.lead_d_pi_r.coefficient - ALPHA * BETA * PI_C ** (-BETA))
    # Cor. 2: with beta < 1, dl/dpi+ -> 0 and dl/dpi- -> infinity
    assert d.lead_d_pi_c.tends_to(beta=0.1) == "0"
    assert d.lead_d_pi_r.tends_to(beta=0.1) == "inf"
    assert d.lead_d_pi_r.tends_to(beta=1) == "finite" and d.lead_d_pi_r.tends_to(beta=2) == "0"
    assert d.lead_d_pi_r.tends_to() is None  # undecided while beta is symbolic
    # the ratio ~ -pi+/pi- and both log-prob gradients are C = alpha beta (pi+)^-beta (pi-)^beta (App. B.1)
    assert zero(d.lead_ratio.expr() + PI_C / PI_R)
    C = ALPHA * BETA * PI_C ** (-BETA) * PI_R**BETA
    assert zero(d.lead_d_logp_c.expr() + C) and zero(d.lead_d_logp_r.expr() - C)


def test_flex_and_sft_leading_order_000_app_b2():
    d = S.derive("flex_dpo")
    alpha = REF_C**BETA_C / REF_R**BETA_R
    assert d.lead_d_pi_c.exponent == BETA_R
    assert zero(d.lead_d_pi_c.coefficient + alpha * BETA_C * PI_C ** (-BETA_C - 1))
    assert zero(d.lead_d_pi_r.exponent - (BETA_R - 1))
    assert zero(d.lead_d_pi_r.coefficient - alpha * BETA_R * PI_C ** (-BETA_C))
    d = S.derive("sft_dpo")  # B.2.2: dl/dpi+ -> -gamma/pi+ != 0
    assert d.lead_d_pi_c.exponent == 0 and zero(d.lead_d_pi_c.coefficient + GAMMA / PI_C)
    assert d.lead_d_pi_c.tends_to(gamma=0.1) == "finite"


def test_ipo_slic_nbdpo_bdpo_leading_order():
    d = S.derive("ipo")  # logarithmic: dl/dpi+ ~ -(2/pi+) log pi-, dl/dpi- ~ 2 log(pi-)/pi-
    assert (d.lead_d_pi_c.exponent, d.lead_d_pi_c.log_power) == (0, 1) and zero(d.lead_d_pi_c.coefficient + 2 / PI_C)
    assert (d.lead_d_pi_r.exponent, d.lead_d_pi_r.log_power) == (-1, 1) and zero(d.lead_d_pi_r.coefficient - 2)
    assert d.lead_d_pi_c.tends_to() == "inf"
    d = S.derive("slic")  # 000 eq. 13: hinge inactive as pi- -> 0
    assert zero(d.lead_d_pi_c.expr() + ETA / PI_C) and d.lead_d_pi_r.zero and d.lead_ratio.zero
    d = S.derive("nbdpo")  # lambda -> 1 + clip
    assert d.lead_d_pi_c.exponent == BETA
    assert zero(d.lead_d_pi_c.coefficient + (1 + CLIP) * ALPHA * BETA * PI_C ** (-BETA - 1))
    assert zero(d.lead_ratio.expr() + PI_C / ((1 + CLIP) * PI_R))
    d = S.derive("bdpo")  # lambda_w -> 1: dl/dpi+ stays finite; dl/dpi- ~ c / (pi- log pi-)
    assert d.lead_d_pi_c.exponent == 0 and d.lead_d_pi_c.log_power == 0
    assert zero(d.lead_d_pi_c.coefficient + BETA * REF_C**BETA / (PI_C * (1 + REF_C**BETA)))
    assert (d.lead_d_pi_r.exponent, d.lead_d_pi_r.log_power) == (-1, -1)
    assert d.lead_d_pi_r.tends_to(beta=1.0) == "inf"


@pytest.mark.parametrize("name", L.LOSS_NAMES)
def test_leading_terms_match_numbers_near_zero(name):
    """The derived leading term approximates the exact gradient as pi- -> 0 (ratio -> 1)."""
    d = S.derive(name)
    params = {k: 0.5 for k in L.LOSS_PARAM_RANGES[name] if k.startswith("beta")}  # corrections ~ t^beta
    vals = dict(zip((s.name for s in d.params.values()), S.param_values(name, **params)))
    pc, qc, qr = 0.3, 0.2, 0.4
    for which, lead in (("d_pi_c", d.lead_d_pi_c), ("d_pi_r", d.lead_d_pi_r)):
        assert lead.ok, (name, which)
        f = S.numeric(name, which, **params)
        if lead.zero:
            assert f(pc, 1e-40, qc, qr) == 0.0
            continue
        lead_f = sp.lambdify([PI_C, PI_R, REF_C, REF_R, *d.params.values()], lead.expr(), "mpmath")
        rel = []
        for t in (1e-20, 1e-80):
            exact = f(pc, t, qc, qr)
            approx = float(lead_f(pc, t, qc, qr, *[vals[s.name] for s in d.params.values()]))
            rel.append(abs(exact / approx - 1))
        assert rel[1] < 0.05 and rel[1] <= rel[0] + 1e-12, (name, which, rel)


# ----------------------------------------------------------------------------- token level (000 App. B.1)
@pytest.mark.parametrize("name", ["dpo", "ipo", "nbdpo", "bdpo", "sft_dpo"])
def test_token_level_logit_gradient_equals_autograd(name):
    """dl/dx for the logits of one softmax token of each response == autograd through log_softmax."""
    d = S.derive(name)
    rng = np.random.default_rng(11)
    logits_c = torch.tensor(rng.normal(size=6), dtype=torch.float64, requires_grad=True)
    logits_r = torch.tensor(rng.normal(size=6), dtype=torch.float64, requires_grad=True)
    rest_c, rest_r, ref_c, ref_r = -2.0, -3.5, -2.4, -3.0  # other tokens' log-probs, reference seq log-probs
    c, other = 2, 4
    lc = torch.log_softmax(logits_c, 0)[c] + rest_c
    lr = torch.log_softmax(logits_r, 0)[c] + rest_r
    L.pair_loss(name, lc, lr, torch.tensor(ref_c, dtype=torch.float64), torch.tensor(ref_r, dtype=torch.float64)).backward()
    vals = S.param_values(name)
    subs_base = {PI_C: float(np.exp(lc.item())), PI_R: float(np.exp(lr.item())), REF_C: np.exp(ref_c), REF_R: np.exp(ref_r)}
    subs_base.update(dict(zip(d.params.values(), vals)))
    for tok, logits in ((d.token_chosen, logits_c), (d.token_rejected, logits_r)):
        s = torch.softmax(logits.detach(), 0).numpy()
        subs = {**subs_base, S.S_C: float(s[c]), S.S_O: float(s[other])}
        got_c = float(tok["sampled"].subs(subs).evalf())
        got_o = float(tok["other"].subs(subs).evalf())
        assert got_c == pytest.approx(logits.grad[c].item(), rel=1e-9)
        assert got_o == pytest.approx(logits.grad[other].item(), rel=1e-9)
    # the form: dl/dlogpi * (1 - s_c) and -dl/dlogpi * s_c'
    assert zero(d.token_chosen["sampled"] - d.d_logp_c * (1 - S.S_C))
    assert zero(d.token_rejected["other"] + d.d_logp_r * S.S_O)


# ----------------------------------------------------------------------------- API details
def test_loss_expr_values_and_stop_gradient_forms():
    # nbDPO's value equals DPO's (004 Sec. 5.1), symbolically
    assert zero(sp.expand(S.loss_expr("nbdpo").args[0] - S.loss_expr("dpo").args[0]))
    sg = S.loss_expr("nbdpo", stop_gradient=True)
    assert sg.has(S.SG_LAMBDA) and sg.has(S.SG_H_C)
    assert S.loss_expr("bdpo", stop_gradient=True).has(S.SG_LAMBDA_W)
    assert not S.loss_expr("bdpo").has(S.SG_LAMBDA_W)
    assert set(S.derive("nbdpo").stop_gradient) == {S.SG_LAMBDA, S.SG_H_C}
    for name in L.LOSS_NAMES:
        assert S.loss_expr(name, stop_gradient=True).subs(S.stop_gradient_values(name)) == S.loss_expr(name)
    assert S.stop_gradient_values("dpo") == {}
    # symmetric flag substitutes Delta lambda_min
    assert S.derive("nbdpo", symmetric=True).stop_gradient[S.SG_LAMBDA].has(CLIP)
    assert not S.derive("nbdpo", symmetric=False).d_pi_c.has(S.DLMIN)
    assert "symmetric" not in S.derive("nbdpo", symmetric=False).params
    # LaTeX is printable
    assert "\\pi" in sp.latex(S.derive("dpo").ratio)


def test_bad_names_and_params():
    for call in (lambda: S.derive("dpoo"), lambda: S.loss_expr("x"), lambda: S.numeric_gradients("nope")):
        with pytest.raises(ValueError, match="unknown loss"):
            call()
    with pytest.raises(ValueError, match="'beta'"):
        S.numeric_gradients("dpo", beta=-1.0)
    with pytest.raises(ValueError, match="which must be one of"):
        S.numeric("dpo", "hessian")
