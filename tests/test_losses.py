"""Tests of prefdyn.losses: hand-computed values, conventions, robustness, vectorisation, bad input."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefdyn import losses as L
from prefdyn.losses import LOSS_NAMES, LOSSES, check_loss_params, logprob_grads, pair_loss


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), in plain math (independent of torch)."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


T64 = dict(dtype=torch.float64)


def t(*xs, dtype=torch.float64):
    return [torch.tensor(x, dtype=dtype) for x in xs]


# ----------------------------------------------------------------------------- registry and defaults
def test_registry_names_and_defaults():
    assert LOSS_NAMES == ("dpo", "flex_dpo", "sft_dpo", "ipo", "slic", "dpop", "nbdpo", "nbdpo_v2", "bdpo")
    assert tuple(LOSSES) == LOSS_NAMES == tuple(L.LOSS_DEFAULTS) == tuple(L.LOSS_PARAM_RANGES)
    assert L.LOSS_DEFAULTS["dpo"] == {"beta": 0.1}
    assert L.LOSS_DEFAULTS["flex_dpo"] == {"beta_chosen": 0.1, "beta_rejected": 0.01}
    assert L.LOSS_DEFAULTS["sft_dpo"] == {"beta": 0.1, "gamma": 0.1}
    assert L.LOSS_DEFAULTS["ipo"] == {"beta": 0.1}
    assert L.LOSS_DEFAULTS["slic"] == {"delta": 5.0, "eta": 0.1}
    assert L.LOSS_DEFAULTS["dpop"] == {"beta": 0.1, "lam": 50.0}
    assert L.LOSS_DEFAULTS["nbdpo"] == {"beta": 1.0, "clip": 0.5, "symmetric": False}
    assert L.LOSS_DEFAULTS["nbdpo_v2"] == {"beta": 1.0, "clip": 0.5, "symmetric": False}
    assert L.LOSS_DEFAULTS["bdpo"] == {"beta": 1.0}
    for name in LOSS_NAMES:
        assert check_loss_params(name) == L.LOSS_DEFAULTS[name]
        assert name in L.LOSS_SOURCES and name in L.DETACHED
        for key, rng in L.LOSS_PARAM_RANGES[name].items():
            assert rng.type in ("float", "bool") and rng.help and "\n" not in rng.help
            assert rng.check(name, key, rng.default) == rng.default  # defaults are allowed


def test_param_ranges_are_chapter_param_compatible():
    from prefdyn.chapters.params import ParameterError, loss_param

    for name, ranges in L.LOSS_PARAM_RANGES.items():
        for key, rng in ranges.items():
            p = loss_param(L.chapter_name(name, key), [name])
            assert p.default == rng.default
            if rng.type == "float" and rng.low is not None:
                bad = rng.low if rng.low_open else rng.low - 1.0
                with pytest.raises(ParameterError):
                    p.coerce(bad)
                with pytest.raises(ValueError):
                    check_loss_params(name, **{key: bad})


# ----------------------------------------------------------------------------- hand-computed values
def test_dpo_hand_values():
    lc, lr, rc, rr = t(-1.0, -2.0, -1.5, -1.5)
    # h = (-1 + 1.5) - (-2 + 1.5) = 1, beta h = 0.1
    assert pair_loss("dpo", lc, lr, rc, rr).item() == pytest.approx(softplus(-0.1), rel=1e-12)
    assert pair_loss("dpo", lc, lr, rc, rr, beta=2.0).item() == pytest.approx(softplus(-2.0), rel=1e-12)
    # chosen == rejected and pi == pi_ref: log 2
    z = torch.zeros((), **T64)
    assert pair_loss("dpo", z - 3, z - 3, z - 3, z - 3).item() == pytest.approx(math.log(2), rel=1e-15)
    # TRL's sigmoid loss: -logsigmoid(beta * logits), logits = (pi_c - pi_r) - (ref_c - ref_r)
    assert pair_loss("dpo", lc, lr, rc, rr).item() == pytest.approx(-math.log(sigmoid(0.1 * ((-1 + 2) - 0))), rel=1e-12)


def test_flex_sft_ipo_slic_dpop_hand_values():
    lc, lr, rc, rr = t(-1.0, -2.0, -1.5, -1.5)
    # flex: beta+ * 0.5 - beta- * (-0.5)
    v = pair_loss("flex_dpo", lc, lr, rc, rr, beta_chosen=0.3, beta_rejected=0.05).item()
    assert v == pytest.approx(softplus(-(0.3 * 0.5 + 0.05 * 0.5)), rel=1e-12)
    # SFT-DPO (000 eq. 7) = DPO + gamma * (-log pi+)
    v = pair_loss("sft_dpo", lc, lr, rc, rr, beta=0.1, gamma=0.2).item()
    assert v == pytest.approx(softplus(-0.1) + 0.2 * 1.0, rel=1e-12)
    # IPO (000 eq. 8, eta = beta): (h - 1/(2 beta))^2 = (1 - 5)^2
    assert pair_loss("ipo", lc, lr, rc, rr).item() == pytest.approx(16.0, rel=1e-15)
    assert pair_loss("ipo", lc, lr, rc, rr, beta=0.5).item() == pytest.approx(0.0, abs=1e-15)
    # SLiC (000 eq. 11): max(0, 5 + 1 - 2) + 0.1 * 1 ; references ignored
    assert pair_loss("slic", lc, lr, rc, rr).item() == pytest.approx(4.1, rel=1e-12)
    assert pair_loss("slic", lc, lr, rc + 7, rr - 3).item() == pytest.approx(4.1, rel=1e-12)
    # hinge inactive: delta < log pi+ - log pi-
    assert pair_loss("slic", lc, lr, rc, rr, delta=0.5, eta=0.0).item() == 0.0
    # DPOP: pi+ below the reference by 1 nat -> penalty lam * 1
    lc2, lr2, rc2, rr2 = t(-3.0, -2.0, -2.0, -1.0)
    h = (-3 + 2) - (-2 + 1)  # 0
    v = pair_loss("dpop", lc2, lr2, rc2, rr2, beta=0.1, lam=50.0).item()
    assert v == pytest.approx(softplus(-0.1 * (h - 50.0 * 1.0)), rel=1e-12)
    # DPOP == DPO when pi+ >= pi0+
    assert pair_loss("dpop", lc, lr, rc, rr).item() == pytest.approx(pair_loss("dpo", lc, lr, rc, rr).item(), rel=1e-15)


def test_nbdpo_lambda_and_values():
    lc, lr, rc, rr = t(-1.0, -1.2, -1.5, -1.5)
    # lambda = 1 + clip(log pi+ - log pi-, dmin, clip) = 1 + 0.2 (inside the clip range)
    assert L.nbdpo_lambda(lc, lr).item() == pytest.approx(1.2, rel=1e-12)
    assert L.nbdpo_lambda(lc, lr - 5).item() == pytest.approx(1.5)  # clipped above
    assert L.nbdpo_lambda(lr, lc).item() == pytest.approx(1.0)  # asymmetric: dmin = 0
    # symmetric: dmin = 1/(1+clip) - 1 = -1/3 -> lambda >= 2/3
    assert L.delta_lambda_min(0.5, True) == pytest.approx(1 / 1.5 - 1)
    assert L.delta_lambda_min(0.5, False) == 0.0
    assert L.nbdpo_lambda(lr, lc, symmetric=True).item() == pytest.approx(0.8)
    assert L.nbdpo_lambda(lr - 5, lc, symmetric=True).item() == pytest.approx(2 / 3)
    # nbDPO value == DPO value; nbDPO v2 uses lambda in the value
    h_c, h_r = 0.5, 0.3
    assert pair_loss("nbdpo", lc, lr, rc, rr).item() == pytest.approx(softplus(-(h_c - h_r)), rel=1e-12)
    assert pair_loss("nbdpo_v2", lc, lr, rc, rr).item() == pytest.approx(softplus(-(1.2 * h_c - h_r)), rel=1e-12)


def test_bdpo_weight_and_value():
    lc, lr, rc, rr = t(-1.0, -3.0, -2.0, -2.5)
    lw = L.bdpo_weight(lc, lr).item()
    assert lw == pytest.approx(3.0 / 4.0)  # log pi- / (log pi+ + log pi-)
    h_c, h_r = 1.0, -0.5
    assert pair_loss("bdpo", lc, lr, rc, rr).item() == pytest.approx(softplus(-(lw * h_c - (1 - lw) * h_r)), rel=1e-12)
    assert pair_loss("bdpo", lc, lr, rc, rr, beta=0.1).item() == pytest.approx(softplus(-0.1 * (lw * h_c - (1 - lw) * h_r)), rel=1e-12)
    # both log-probs 0: lambda_w = 1/2 (guarded 0/0)
    z = torch.zeros(())
    assert L.bdpo_weight(z, z).item() == 0.5
    # pi_w > pi_l  =>  lambda_w > 1/2 (004 after eq. 29)
    assert L.bdpo_weight(torch.tensor(-0.5), torch.tensor(-4.0)).item() > 0.5


def test_reward_model_and_sft_loss():
    assert L.reward_model_loss(0.0, 0.0).item() == pytest.approx(math.log(2))
    rc, rr = t(1.0, -0.5)
    rc.requires_grad_(True)
    rr.requires_grad_(True)
    loss = L.reward_model_loss(rc, rr)
    assert loss.item() == pytest.approx(softplus(-1.5), rel=1e-12)
    loss.backward()
    # 000 Sec. 4: dl/dr+ = -1/(1+e^{r+ - r-}) = -dl/dr-  (balanced)
    assert rc.grad.item() == pytest.approx(-1 / (1 + math.exp(1.5)), rel=1e-12)
    assert rr.grad.item() == pytest.approx(-rc.grad.item(), rel=1e-15)
    assert L.sft_loss(torch.tensor([-2.0, -0.5])).tolist() == [2.0, 0.5]


# ----------------------------------------------------------------------------- gradients (by hand)
def test_gradients_by_hand():
    lc, lr, rc, rr = t(-1.0, -1.3, -1.5, -1.1)
    h = (-1.0 + 1.5) - (-1.3 + 1.1)  # 0.7
    s = sigmoid(-0.1 * h)
    gc, gr = logprob_grads("dpo", lc, lr, rc, rr)
    assert gc.item() == pytest.approx(-0.1 * s, rel=1e-12) and gr.item() == pytest.approx(0.1 * s, rel=1e-12)
    # nbDPO: chosen gradient lambda times DPO's, rejected unchanged (beta=1)
    lam = 1 + min(max(-1.0 + 1.3, 0.0), 0.5)
    s1 = sigmoid(-h)
    gc, gr = logprob_grads("nbdpo", lc, lr, rc, rr)
    assert gc.item() == pytest.approx(-lam * s1, rel=1e-12) and gr.item() == pytest.approx(s1, rel=1e-12)
    # nbDPO v2: same weights, but the sigmoid of lambda h+ - h-
    s2 = sigmoid(-(lam * 0.5 - (-0.2)))
    gc, gr = logprob_grads("nbdpo_v2", lc, lr, rc, rr)
    assert gc.item() == pytest.approx(-lam * s2, rel=1e-12) and gr.item() == pytest.approx(s2, rel=1e-12)
    # bDPO with detached lambda_w
    lw = 1.3 / 2.3
    s3 = sigmoid(-(lw * 0.5 - (1 - lw) * (-0.2)))
    gc, gr = logprob_grads("bdpo", lc, lr, rc, rr)
    assert gc.item() == pytest.approx(-lw * s3, rel=1e-12) and gr.item() == pytest.approx((1 - lw) * s3, rel=1e-12)
    # IPO: d/dlogpi+ = 2 (h - 5) = -d/dlogpi-
    gc, gr = logprob_grads("ipo", lc, lr, rc, rr)
    assert gc.item() == pytest.approx(2 * (h - 5), rel=1e-12) and gr.item() == pytest.approx(-2 * (h - 5), rel=1e-12)
    # SLiC (000 eq. 12 in log space): hinge active -> (-(1+eta), 1); inactive -> (-eta, 0) (eq. 13)
    gc, gr = logprob_grads("slic", lc, lr, rc, rr)
    assert (gc.item(), gr.item()) == pytest.approx((-1.1, 1.0))
    gc, gr = logprob_grads("slic", lc, lr, rc, rr, delta=0.1)
    assert (gc.item(), gr.item()) == pytest.approx((-0.1, 0.0))
    # SFT-DPO: DPO's plus -gamma on the chosen
    gc, gr = logprob_grads("sft_dpo", lc, lr, rc, rr)
    assert gc.item() == pytest.approx(-0.1 * s - 0.1, rel=1e-12) and gr.item() == pytest.approx(0.1 * s, rel=1e-12)


def test_nbdpo_value_bit_identical_to_dpo_and_gradient_scaled():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = -torch.rand(4, 1000, generator=g, dtype=dtype) * 50
        for params in ({}, {"symmetric": True}, {"clip": 2.0, "beta": 0.1}):
            beta = params.get("beta", 1.0)
            nb = pair_loss("nbdpo", *x, **params)
            assert torch.equal(nb, pair_loss("dpo", *x, beta=beta))
            gc, gr = logprob_grads("nbdpo", *x, **params)
            dc, dr = logprob_grads("dpo", *x, beta=beta)
            lam = L.nbdpo_lambda(x[0], x[1], params.get("clip", 0.5), params.get("symmetric", False))
            torch.testing.assert_close(gc, lam * dc)
            torch.testing.assert_close(gr, dr)


def test_detached_weights_have_no_gradient_path():
    lc = torch.tensor([-1.0, -2.0], requires_grad=True)
    lr = torch.tensor([-2.0, -0.5], requires_grad=True)
    assert not L.nbdpo_lambda(lc, lr).requires_grad
    assert not L.bdpo_weight(lc, lr).requires_grad


# ----------------------------------------------------------------------------- robustness (hypothesis)
logp = st.floats(min_value=-1e4, max_value=0.0, allow_nan=False, allow_infinity=False, width=32)
PARAM_DRAW = {
    "beta": st.floats(1e-3, 10.0),
    "beta_chosen": st.floats(1e-3, 10.0),
    "beta_rejected": st.floats(1e-3, 10.0),
    "gamma": st.floats(0.0, 10.0),
    "delta": st.floats(0.0, 20.0),
    "eta": st.floats(0.0, 10.0),
    "lam": st.floats(0.0, 100.0),
    "clip": st.floats(0.0, 5.0),
    "symmetric": st.booleans(),
}


@st.composite
def loss_case(draw):
    name = draw(st.sampled_from(LOSS_NAMES))
    params = {k: draw(PARAM_DRAW[k]) for k in L.LOSS_PARAM_RANGES[name] if draw(st.booleans())}
    n = draw(st.integers(1, 6))
    vals = [draw(st.lists(logp, min_size=n, max_size=n)) for _ in range(4)]
    mode = draw(st.sampled_from(["free", "chosen==rejected", "pi==ref", "all equal"]))
    if mode == "chosen==rejected":
        vals[1] = list(vals[0])
    elif mode == "pi==ref":
        vals[2], vals[3] = list(vals[0]), list(vals[1])
    elif mode == "all equal":
        vals = [list(vals[0])] * 4
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return name, params, vals, dtype


@settings(max_examples=300, deadline=None, derandomize=True)
@given(loss_case())
def test_finite_values_and_gradients(case):
    name, params, vals, dtype = case
    x = [torch.tensor(v, dtype=dtype) for v in vals]
    loss = pair_loss(name, *x, **params)
    assert loss.dtype == dtype and loss.shape == x[0].shape
    assert torch.isfinite(loss).all(), (name, params, vals, loss)
    gc, gr = logprob_grads(name, *x, **params)
    assert gc.dtype == dtype and gc.shape == x[0].shape
    assert torch.isfinite(gc).all() and torch.isfinite(gr).all(), (name, params, vals, gc, gr)
    # also finite through a full backward (all four inputs require grad)
    xs = [v.clone().requires_grad_(True) for v in x]
    pair_loss(name, *xs, **params).sum().backward()
    for v in xs:
        assert v.grad is None or torch.isfinite(v.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_finite_at_all_corners_of_the_range(name, dtype):
    """All 3^4 combinations of log-probs in {-1e4, -1e-6, 0}, with default and extreme parameters."""
    grid = torch.tensor([-1e4, -1e-6, 0.0], dtype=dtype)
    x = torch.cartesian_prod(grid, grid, grid, grid).T  # (4, 81)
    extreme = {k: (10.0 if r.type == "float" else True) for k, r in L.LOSS_PARAM_RANGES[name].items()}
    tiny = {k: (1e-3 if r.type == "float" else False) for k, r in L.LOSS_PARAM_RANGES[name].items()}
    for params in ({}, extreme, tiny):
        loss = pair_loss(name, *x, **params)
        gc, gr = logprob_grads(name, *x, **params)
        assert torch.isfinite(loss).all() and torch.isfinite(gc).all() and torch.isfinite(gr).all(), (name, params)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.sampled_from(LOSS_NAMES), logp, logp)
def test_chosen_equals_rejected_dpo_family(name, a, b):
    """chosen == rejected and pi == pi_ref: every sigmoid loss is log 2 (nbDPO v2 / bDPO included); the
    others have their closed form there: SFT-DPO log 2 - gamma logp, IPO (1/(2 beta))^2, SLiC delta - eta logp
    (000 eq. 7, 8, 11 at h = 0)."""
    x = torch.tensor([a], dtype=torch.float64)
    loss = pair_loss(name, x, x, x, x).item()
    d = L.LOSS_DEFAULTS[name]
    expected = {
        "sft_dpo": math.log(2) - d.get("gamma", 0.0) * a,
        "ipo": (1.0 / (2.0 * d.get("beta", 1.0))) ** 2,
        "slic": d.get("delta", 0.0) - d.get("eta", 0.0) * a,
    }.get(name, math.log(2))
    assert loss == pytest.approx(expected, rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- shapes, dtypes, vectorisation
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_broadcasting_and_dtypes(name):
    g = torch.Generator().manual_seed(1)
    lc = -torch.rand(3, 1, generator=g, dtype=torch.float64) * 5
    lr = -torch.rand(1, 4, generator=g, dtype=torch.float64) * 5
    rc = torch.tensor(-2.0, dtype=torch.float64)
    rr = -torch.rand(4, generator=g, dtype=torch.float64) * 5
    out = pair_loss(name, lc, lr, rc, rr)
    assert out.shape == (3, 4) and out.dtype == torch.float64
    full = [v.expand(3, 4) for v in torch.broadcast_tensors(lc, lr, rc, rr)]
    torch.testing.assert_close(out, pair_loss(name, *[f.contiguous() for f in full]))
    gc, gr = logprob_grads(name, lc, lr, rc, rr)
    assert gc.shape == gr.shape == (3, 4)
    # plain numbers work, and float32 stays float32
    assert pair_loss(name, -1.0, -2.0, -1.5, -1.5).dtype == torch.get_default_dtype()
    assert pair_loss(name, *(v.float() for v in (lc, lr, rc, rr))).dtype == torch.float32
    # works under no_grad
    with torch.no_grad():
        gc2, _ = logprob_grads(name, lc, lr, rc, rr)
    torch.testing.assert_close(gc, gc2)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_vectorised_1e5_pairs_match_single_pairs(name):
    g = torch.Generator().manual_seed(2)
    n = 100_000
    x = -torch.rand(4, n, generator=g, dtype=torch.float64) * 20
    t0 = time.perf_counter()
    loss = pair_loss(name, *x)
    gc, gr = logprob_grads(name, *x)
    elapsed = time.perf_counter() - t0
    assert loss.shape == gc.shape == gr.shape == (n,)
    assert elapsed < 5.0  # one vectorised call, not a Python loop
    for i in (0, 12345, n - 1):
        one = pair_loss(name, *x[:, i])
        assert one.item() == pytest.approx(loss[i].item(), rel=1e-12, abs=1e-12)
        c1, r1 = logprob_grads(name, *x[:, i])
        assert c1.item() == pytest.approx(gc[i].item(), rel=1e-12, abs=1e-15)
        assert r1.item() == pytest.approx(gr[i].item(), rel=1e-12, abs=1e-15)


def test_tensor_valued_beta_sweeps_in_one_call():
    betas = torch.tensor([[0.05], [0.1], [1.0]], dtype=torch.float64)
    x = -torch.rand(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    out = pair_loss("dpo", *x, beta=betas)
    assert out.shape == (3, 7)
    for i, b in enumerate((0.05, 0.1, 1.0)):
        torch.testing.assert_close(out[i], pair_loss("dpo", *x, beta=b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_cuda_device_matches_cpu(name):
    x = -torch.rand(4, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 10
    out = pair_loss(name, *x.cuda(), beta=0.5) if "beta" in L.LOSS_PARAM_RANGES[name] else pair_loss(name, *x.cuda())
    assert out.device.type == "cuda"
    ref = pair_loss(name, *x, beta=0.5) if "beta" in L.LOSS_PARAM_RANGES[name] else pair_loss(name, *x)
    torch.testing.assert_close(out.cpu(), ref)
    gc, gr = logprob_grads(name, *x.cuda())
    torch.testing.assert_close(gc.cpu(), logprob_grads(name, *x)[0])


def test_slic_shape_includes_reference_shape():
    out = pair_loss("slic", torch.tensor(-1.0), torch.tensor(-2.0), torch.zeros(5), torch.zeros(5))
    assert out.shape == (5,)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "name, params, fragment",
    [
        ("dpo", {"beta": 0.0}, "'beta' must be a finite number > 0"),
        ("dpo", {"beta": -1.0}, "'beta'"),
        ("dpo", {"beta": float("nan")}, "'beta'"),
        ("dpo", {"beta": float("inf")}, "'beta'"),
        ("dpo", {"beta": True}, "'beta'"),
        ("dpo", {"beta": "0.1"}, "'beta'"),
        ("dpo", {"beta": torch.tensor([0.1, 0.0])}, "'beta'"),
        ("ipo", {"beta": 0}, "'beta'"),
        ("flex_dpo", {"beta_rejected": 0.0}, "'beta_rejected' must be a finite number > 0"),
        ("sft_dpo", {"gamma": -0.1}, "'gamma' must be a finite number >= 0"),
        ("nbdpo", {"clip": -0.5}, "'clip' must be a finite number >= 0"),
        ("nbdpo_v2", {"clip": -1e-9}, "'clip'"),
        ("nbdpo", {"symmetric": 1}, "'symmetric' must be True or False"),
        ("slic", {"delta": -1.0}, "'delta'"),
        ("slic", {"eta": -1.0}, "'eta'"),
        ("dpop", {"lam": -1.0}, "'lam'"),
        ("dpo", {"gamma": 0.1}, "unknown parameter 'gamma'; allowed: beta"),
        ("bdpo", {"clip": 0.5}, "unknown parameter 'clip'"),
        ("dpoo", {}, "unknown loss 'dpoo'; allowed: dpo, flex_dpo"),
    ],
)
def test_bad_input_raises_one_line_value_error(name, params, fragment):
    import prefdyn.losses as losses_module

    x = torch.zeros(2)
    for call in (
        lambda: check_loss_params(name, **params),
        lambda: pair_loss(name, x, x, x, x, **params),
        lambda: logprob_grads(name, x, x, x, x, **params),
        lambda: LOSSES[name](x, x, x, x, **params) if name in LOSSES else pair_loss(name, x, x, x, x),
        # the module's public functions (prefdyn.losses.dpo, ...) are the validated ones as well
        lambda: getattr(losses_module, name)(x, x, x, x, **params) if name in LOSSES else pair_loss(name, x, x, x, x),
    ):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert fragment in msg and "\n" not in msg


def test_nbdpo_lambda_validates_its_clip():
    from prefdyn.losses import nbdpo_lambda
    with pytest.raises(ValueError, match="'clip'"):
        nbdpo_lambda(torch.zeros(2), torch.zeros(2), clip=-1.0)


def test_loss_params_from_a_chapters_parameter_names():
    from prefdyn.losses import LOSS_DEFAULTS, loss_params_from

    # one name per parameter across the book: the loss's own, except the Balanced family's beta
    out = loss_params_from({"delta": 2.0, "beta": 0.5, "beta_balanced": 3.0}, ["slic", "dpo", "bdpo"])
    assert out == {"slic": {"delta": 2.0, "eta": LOSS_DEFAULTS["slic"]["eta"]}, "dpo": {"beta": 0.5},
                   "bdpo": {"beta": 3.0}}
    with pytest.raises(ValueError, match="unknown loss 'nosuch'"):
        loss_params_from({}, ["nosuch"])
    with pytest.raises(ValueError, match="beta"):
        loss_params_from({"beta": -1.0}, ["dpo"])                         # validated like any loss call
