"""Tests of prefdyn.fields: grids vs pointwise gradients and the closed forms of 002 eq. 2 / 000 Sec. 3.1,
Corollary 1 of 002 and 000 (the DPO gradient ratio), flows that stay in bounds and conserve probability,
region statistics, and one-line ValueErrors for bad input."""

from __future__ import annotations

import math

import pytest
import torch

from prefdyn import fields as F
from prefdyn.losses import LOSS_NAMES, nbdpo_lambda, pair_loss

D = torch.float64


# ----------------------------------------------------------------------------- grids vs pointwise
@pytest.mark.parametrize("loss", list(LOSS_NAMES))
def test_grid_equals_pointwise(loss):
    """One vectorised grid call == the same loss evaluated point by point (pairs do not interact)."""
    fld = F.field_grid(loss, 6, coords="prob", ref_chosen=0.4, ref_rejected=0.7)
    for i, j in [(0, 0), (0, 5), (3, 2), (5, 5), (2, 4)]:
        v, gc, gr = F.loss_and_grad(loss, fld.chosen[j], fld.rejected[i], coords="prob", ref_chosen=0.4,
                                    ref_rejected=0.7)
        assert torch.allclose(v, fld.value[i, j], rtol=1e-12, atol=1e-14)
        assert torch.allclose(gc, fld.grad_chosen[i, j], rtol=1e-10, atol=1e-14)
        assert torch.allclose(gr, fld.grad_rejected[i, j], rtol=1e-10, atol=1e-14)
    # The value is the loss zoo's own value at log pi (one source of truth).
    C, R = torch.meshgrid(fld.chosen, fld.rejected, indexing="xy")
    ref = pair_loss(loss, C.log(), R.log(), torch.tensor(0.4, dtype=D).log(), torch.tensor(0.7, dtype=D).log())
    assert torch.allclose(fld.value, ref, rtol=1e-13)


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("ref", [(1.0, 1.0), (0.3, 0.6)])
def test_dpo_ratio_coords_match_002_eq2(beta, ref):
    """002 Thm. 1 / eq. 2: dl/dx1 = -b x2^b / (x1 (x1^b + x2^b)), dl/dx2 = b x2^(b-1) / (x1^b + x2^b),
    for any pi_ref (DPO depends on x only); and the loss is 002 eq. 1, -log(x1^b / (x1^b + x2^b))."""
    fld = F.field_grid("dpo", 40, coords="ratio", ref_chosen=ref[0], ref_rejected=ref[1], beta=beta)
    x1, x2 = torch.meshgrid(fld.chosen, fld.rejected, indexing="xy")
    b = beta
    assert torch.allclose(fld.grad_chosen, -b * x2**b / (x1 * (x1**b + x2**b)), rtol=1e-11)
    assert torch.allclose(fld.grad_rejected, b * x2 ** (b - 1) / (x1**b + x2**b), rtol=1e-11)
    assert torch.allclose(fld.value, -torch.log(x1**b / (x1**b + x2**b)), rtol=1e-11)
    assert float(fld.chosen.max()) <= 1 / ref[0] and float(fld.rejected.max()) <= 1 / ref[1]


def test_ratio_and_prob_coordinates_are_related_by_the_chain_rule():
    """x = pi / pi_ref  =>  dl/dx = pi_ref dl/dpi at the same policy."""
    rc, rr = 0.5, 0.25
    pi_c = torch.tensor([0.05, 0.2, 0.4], dtype=D)
    pi_r = torch.tensor([0.1, 0.2, 0.25], dtype=D)
    for loss in ("sft_dpo", "ipo", "dpop", "bdpo"):
        vp, gcp, grp = F.loss_and_grad(loss, pi_c, pi_r, coords="prob", ref_chosen=rc, ref_rejected=rr)
        vx, gcx, grx = F.loss_and_grad(loss, pi_c / rc, pi_r / rr, coords="ratio", ref_chosen=rc, ref_rejected=rr)
        assert torch.allclose(vp, vx, rtol=1e-12)
        assert torch.allclose(gcx, rc * gcp, rtol=1e-10)
        assert torch.allclose(grx, rr * grp, rtol=1e-10)


@pytest.mark.parametrize("loss", ["sft_dpo", "ipo", "slic", "dpop", "flex_dpo"])
def test_autograd_matches_central_differences(loss):
    """Losses without detached weights: the gradient is the derivative of the value (central differences)."""
    c = torch.tensor([0.13, 0.52, 0.81], dtype=D)
    r = torch.tensor([0.27, 0.09, 0.66], dtype=D)
    h = 1e-6
    _, gc, gr = F.loss_and_grad(loss, c, r, coords="prob", ref_chosen=0.6, ref_rejected=0.35)
    f = lambda a, b: F.loss_and_grad(loss, a, b, coords="prob", ref_chosen=0.6, ref_rejected=0.35)[0]
    assert torch.allclose(gc, (f(c + h, r) - f(c - h, r)) / (2 * h), rtol=1e-6, atol=1e-8)
    assert torch.allclose(gr, (f(c, r + h) - f(c, r - h)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_nbdpo_field_is_dpo_field_with_lambda_on_the_chosen_gradient():
    """004 eq. 25-26 (as implemented): same value as DPO, dl/dpi+ multiplied by the detached lambda."""
    nb = F.field_grid("nbdpo", 12, coords="prob", beta=0.1)
    dp = F.field_grid("dpo", 12, coords="prob", beta=0.1)
    C, R = torch.meshgrid(nb.chosen, nb.rejected, indexing="xy")
    lam = nbdpo_lambda(C.log(), R.log(), 0.5, False)
    assert torch.equal(nb.value, dp.value)
    assert torch.allclose(nb.grad_chosen, lam * dp.grad_chosen, rtol=1e-12)
    assert torch.allclose(nb.grad_rejected, dp.grad_rejected, rtol=1e-12)
    assert float(lam.max()) > 1.4  # the reweighting is active somewhere on the grid


def test_reward_model_field_is_balanced():
    """000 Sec. 4: dl/dr+ = -dl/dr- = -1/(1 + exp(r+ - r-)); the ratio is 1 everywhere."""
    fld = F.field_grid("reward_model", 21, coords="reward")
    rp, rm = torch.meshgrid(fld.chosen, fld.rejected, indexing="xy")
    assert torch.allclose(fld.grad_chosen, -1 / (1 + torch.exp(rp - rm)), rtol=1e-12)
    assert torch.allclose(fld.grad_rejected, -fld.grad_chosen, rtol=1e-12)
    assert torch.allclose(fld.ratio, torch.ones_like(fld.ratio), rtol=1e-12)
    assert float(fld.chosen[0]) > -5 and float(fld.chosen[-1]) < 5


def test_symbolic_gradients_agree_with_autograd():
    """The lambdified sympy gradients of prefdyn.symbolic (independent derivation) == autograd on the grid."""
    symbolic = pytest.importorskip("prefdyn.symbolic")
    if not hasattr(symbolic, "numeric_gradients"):
        pytest.skip("prefdyn.symbolic.numeric_gradients not available")
    from prefdyn.losses import LOSS_NAMES

    special = {"dpo": {"beta": 0.3}, "nbdpo": {"beta": 0.5}, "nbdpo_v2": {"clip": 0.2, "symmetric": True}}
    for loss in LOSS_NAMES:                               # every loss of the zoo
        params = special.get(loss, {})
        num = symbolic.numeric_gradients(loss, **params)
        fld = F.field_grid(loss, 15, coords="prob", ref_chosen=0.35, ref_rejected=0.8, **params)
        C, R = torch.meshgrid(fld.chosen, fld.rejected, indexing="xy")
        gc, gr = num(C.numpy(), R.numpy(), 0.35, 0.8)
        assert torch.allclose(fld.grad_chosen, torch.from_numpy(gc), rtol=1e-9, atol=1e-12), loss
        assert torch.allclose(fld.grad_rejected, torch.from_numpy(gr), rtol=1e-9, atol=1e-12), loss
        # 002's coordinates x = pi / pi_ref: dl/dx = pi_ref * dl/dpi (chain rule), same grid points
        fx = F.field_grid(loss, 15, coords="ratio", ref_chosen=0.35, ref_rejected=0.8, **params)
        X1, X2 = torch.meshgrid(fx.chosen, fx.rejected, indexing="xy")
        gc, gr = num((0.35 * X1).numpy(), (0.8 * X2).numpy(), 0.35, 0.8)
        assert torch.allclose(fx.grad_chosen, 0.35 * torch.from_numpy(gc), rtol=1e-9, atol=1e-12), loss
        assert torch.allclose(fx.grad_rejected, 0.8 * torch.from_numpy(gr), rtol=1e-9, atol=1e-12), loss


# ----------------------------------------------------------------------------- Corollary 1 and the ratio
@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 3.0])
def test_dpo_ratio_is_x1_over_x2(beta):
    """002 Cor. 1 (eq. 3): |dl/dx1| / |dl/dx2| = x2/x1, i.e. our ratio |dl/dx2|/|dl/dx1| = x1/x2, for any beta."""
    fld = F.field_grid("dpo", 50, coords="ratio", beta=beta)
    x1, x2 = torch.meshgrid(fld.chosen, fld.rejected, indexing="xy")
    assert torch.allclose(fld.ratio, x1 / x2, rtol=1e-10)


def test_dpo_ratio_is_pi_plus_over_pi_minus_with_a_reference():
    """000 Cor. 1: (dl/dpi-) / (dl/dpi+) = -pi+/pi-, whatever pi_0."""
    fld = F.field_grid("dpo", 30, coords="prob", ref_chosen=0.2, ref_rejected=0.9, beta=0.1)
    C, R = torch.meshgrid(fld.chosen, fld.rejected, indexing="xy")
    assert torch.allclose(fld.grad_rejected / fld.grad_chosen, -C / R, rtol=1e-10)


def test_grid_fraction_matches_the_exact_area():
    """On the unit square x1/x2 > k on a fraction 1/(2k) of the area; the cell-centre grid reproduces it."""
    fld = F.field_grid("dpo", 400, coords="ratio", beta=0.1)
    fr = fld.fractions((1.0, 10.0, 100.0))
    assert F.dpo_ratio_area(10) == pytest.approx(0.05)
    assert F.dpo_ratio_area(100) == pytest.approx(0.005)
    assert fr[1.0] == pytest.approx(0.5, abs=0.01)
    assert fr[10.0] == pytest.approx(F.dpo_ratio_area(10), abs=2e-3)
    assert fr[100.0] == pytest.approx(F.dpo_ratio_area(100), abs=2e-3)
    # a box that is not square (pi_ref < 1): both branches of the area formula
    assert F.dpo_ratio_area(2, a=4.0, b=1.0) == pytest.approx((4 - 1) / 4)
    fld2 = F.field_grid("dpo", 400, coords="ratio", ref_chosen=0.25, ref_rejected=1.0)
    assert fld2.fractions((2.0,))[2.0] == pytest.approx(F.dpo_ratio_area(2, a=4.0, b=1.0), abs=5e-3)


def test_gradient_ratio_edge_cases():
    r = F.gradient_ratio(torch.tensor([0.0, 0.0, 2.0, -1.0]), torch.tensor([0.0, 3.0, 1.0, -5.0]))
    assert math.isnan(r[0]) and math.isinf(r[1]) and r[2] == 0.5 and r[3] == 5.0
    fr = F.ratio_fractions(r, (1.0,))
    assert fr[1.0] == 0.5  # inf counts, nan does not


def test_ipo_gradient_vanishes_on_its_target_margin():
    """IPO reaches its target margin 1/(2 beta) inside the unit square: the gradient vanishes (ratio nan)."""
    fld = F.field_grid("ipo", 101, coords="prob", beta=2.0)  # target margin 0.25: pi+/pi- = e^0.25
    assert bool(torch.isfinite(fld.value).all())
    assert float(fld.magnitude.min()) < 0.05 * float(fld.magnitude.median())


# ----------------------------------------------------------------------------- flows
def _all_flows(method="euler", n_steps=300):
    losses = [l for l in LOSS_NAMES]
    return F.gradient_flows(losses, F.corner_starts(), n_steps=n_steps, method=method,
                            lr={"box": 0.02, "simplex": 0.2}, params={l: {} for l in losses})


@pytest.fixture(scope="module")
def flows():
    return _all_flows()


def test_box_flows_stay_in_the_box(flows):
    for (loss, space), fl in flows.items():
        if space != "box":
            continue
        assert fl.probs.shape == (301, 4, 2)
        assert float(fl.probs.min()) >= fl.eps and float(fl.probs.max()) <= 1.0, loss
        assert bool(torch.isfinite(fl.loss_path).all()), loss


def test_simplex_flows_conserve_probability(flows):
    for (loss, space), fl in flows.items():
        if space != "simplex":
            continue
        assert fl.probs.shape == (301, 4, 3)
        assert float(fl.probs.min()) >= 0 and float(fl.probs.max()) <= 1
        assert torch.allclose(fl.probs.sum(2), torch.ones(301, 4, dtype=D), atol=1e-12), loss
        # softmax invariance: the logit gradient sums to zero, so the sum of the logits is conserved
        zsum = fl.logits.sum(2)
        assert torch.allclose(zsum, zsum[0].expand_as(zsum), atol=1e-9), loss
        # the start is the requested point
        assert torch.allclose(fl.probs[0, :, :2], fl.starts, atol=1e-12)


def test_rk4_flows_stay_in_bounds_and_agree_with_euler_for_small_steps():
    st = torch.tensor([[0.2, 0.3], [0.4, 0.1]], dtype=D)
    rk = F.gradient_flows(["dpo", "ipo"], st, n_steps=60, method="rk4", lr={"box": 0.02, "simplex": 0.2})
    eu = F.gradient_flows(["dpo"], st, n_steps=600, method="euler", lr={"box": 0.002, "simplex": 0.02})
    for (loss, space), fl in rk.items():
        assert bool(torch.isfinite(fl.probs).all())
        if space == "box":
            assert float(fl.probs.min()) >= fl.eps and float(fl.probs.max()) <= 1.0
        else:
            assert torch.allclose(fl.probs.sum(2), torch.ones_like(fl.probs[..., 0]), atol=1e-12)
    # Same time t = 1.2 (box) / 12 (simplex): RK4 with 60 steps ~ Euler with 600 ten-times-smaller steps.
    for space in ("box", "simplex"):
        assert torch.allclose(rk[("dpo", space)].probs[-1], eu[("dpo", space)].probs[-1], atol=5e-3)


def test_single_and_batched_flows_agree():
    st = F.corner_starts()
    one = F.gradient_flow("sft_dpo", st, space="simplex", n_steps=50, lr=0.2, beta=0.2, gamma=0.05)
    many = F.gradient_flows(["dpo", "sft_dpo"], st, spaces=["box", "simplex"], n_steps=50,
                            lr={"box": 0.02, "simplex": 0.2}, params={"sft_dpo": {"beta": 0.2, "gamma": 0.05}})
    assert torch.allclose(one.probs, many[("sft_dpo", "simplex")].probs, rtol=0, atol=1e-14)
    assert one.params == {"beta": 0.2, "gamma": 0.05}


def test_dpo_descends_and_moves_the_right_way(flows):
    """DPO's flow lowers the loss, raises pi+ and lowers pi- (002 Sec. 3.2: x1 up, x2 down)."""
    for space in ("box", "simplex"):
        fl = flows[("dpo", space)]
        assert bool((fl.loss_path[-1] < fl.loss_path[0]).all())
        assert bool((fl.probs[-1, :, 0] > fl.probs[0, :, 0]).all())
        assert bool((fl.probs[-1, :, 1] < fl.probs[0, :, 1]).all())
    # free logits: DPO's logit gradient is balanced (g+ = -g-), so the rest logit never moves
    z = flows[("dpo", "simplex")].logits
    assert torch.allclose(z[:, :, 2], z[0, :, 2].expand_as(z[:, :, 2]), atol=1e-12)


def test_box_flow_clamps_at_the_floor():
    """000 Cor. 2: dl/dpi- ~ (pi-)^(beta-1) diverges, so pi- hits the floor eps and stays there."""
    fl = F.gradient_flow("dpo", [[0.5, 0.02]], space="box", n_steps=50, lr=0.01, eps=1e-6)
    assert float(fl.probs[-1, 0, 1]) == pytest.approx(1e-6)
    rs = F.region_stats(fl)[0]
    assert 0 < rs["steps_to_rejected"] < 50


def test_reference_per_start():
    st = F.corner_starts()
    fl = F.gradient_flow("dpo", st, space="simplex", n_steps=5, ref_chosen=st[:, 0], ref_rejected=st[:, 1])
    assert torch.allclose(fl.ref, st)
    # pi = pi_ref at the start: the DPO loss is log 2 at every start
    assert torch.allclose(fl.loss_path[0], torch.full((4,), math.log(2), dtype=D))


# ----------------------------------------------------------------------------- region statistics
def test_region_stats_on_a_hand_made_flow():
    probs = torch.tensor([[[0.1, 0.5, 0.4], [0.1, 0.5, 0.4], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]],
                          [[0.5, 0.2, 0.3], [0.1, 0.05, 0.85], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]],
                          [[0.95, 0.005, 0.045], [0.1, 0.005, 0.895], [0.52, 0.3, 0.18], [0.3, 0.3, 0.4]]],
                         dtype=D)
    fl = F.Flow(loss="dpo", space="simplex", method="euler", lr=1.0, n_steps=2, params={},
                starts=probs[0, :, :2], ref=torch.ones(4, 2, dtype=D), probs=probs,
                loss_path=torch.zeros(3, 4, dtype=D), logits=probs.log())
    rs = F.region_stats(fl)
    assert [r["steps_to_chosen"] for r in rs] == [2, -1, -1, -1]
    assert [r["steps_to_rejected"] for r in rs] == [2, 2, -1, -1]
    assert [r["end"] for r in rs] == ["preferred", "unlearning only", "still moving", "stationary"]
    assert [r["stationary"] for r in rs] == [False, False, False, True]
    assert rs[1]["final_rest"] == pytest.approx(0.895) and rs[0]["min_chosen"] == pytest.approx(0.1)
    rs_box = F.region_stats(F.gradient_flow("dpo", [[0.95, 0.5]], n_steps=3))
    assert rs_box[0]["steps_to_chosen"] == 0 and rs_box[0]["final_rest"] is None


def test_flows_are_deterministic():
    a = F.gradient_flows(["bdpo", "slic"], F.corner_starts(), n_steps=40)
    b = F.gradient_flows(["bdpo", "slic"], F.corner_starts(), n_steps=40)
    for k in a:
        assert torch.equal(a[k].probs, b[k].probs)


# ----------------------------------------------------------------------------- coordinates and the loss registry
def test_coords_default_to_probabilities_everywhere():
    """field_grid and loss_and_grad share one default, "prob" (002's ratios are asked for explicitly)."""
    import inspect

    for fn in (F.field_grid, F.loss_and_grad):
        assert inspect.signature(fn).parameters["coords"].default == "prob", fn.__name__
    fld = F.field_grid("dpo", 5, ref_chosen=0.5, ref_rejected=0.25)
    assert fld.coords == "prob" and float(fld.chosen[-1]) < 1.0            # (0, 1], not (0, 1/pi_ref]
    v, gc, gr = F.loss_and_grad("dpo", fld.chosen[1], fld.rejected[3], ref_chosen=0.5, ref_rejected=0.25)
    assert torch.allclose(v, fld.value[3, 1]) and torch.allclose(gc, fld.grad_chosen[3, 1])
    assert torch.allclose(gr, fld.grad_rejected[3, 1])


@pytest.fixture
def soft_hinge():
    """A loss of the user's own, registered for one test (and removed afterwards); counts its calls."""
    from prefdyn import losses

    calls = {"fn": 0}

    def soft_hinge(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, margin=1.0):
        calls["fn"] += 1
        h = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
        return torch.nn.functional.softplus(margin - h)

    name = "test_fields_soft_hinge"
    losses.register(name, soft_hinge, replace=True)
    try:
        yield name, calls
    finally:
        losses.LOSSES.pop(name, None)


def test_a_registered_loss_has_a_field_and_flows(soft_hinge, monkeypatch):
    """Any loss of the registry works: parameters validated once per call (Loss.check), then Loss.fn on
    every step of a flow."""
    from prefdyn import losses

    name, calls = soft_hinge
    assert name in F.field_losses() and name not in F.FIELD_LOSSES and F.field_losses()[-1] == "reward_model"
    assert F.check_field_params(name, "prob") == {"margin": 1.0}
    fld = F.field_grid(name, 8, margin=2.0)
    C, R = torch.meshgrid(fld.chosen, fld.rejected, indexing="xy")
    h = C.log() - R.log()                                                  # pi_ref = 1
    assert torch.allclose(fld.value, torch.nn.functional.softplus(2.0 - h), rtol=1e-12)
    assert torch.allclose(fld.grad_chosen, -torch.sigmoid(2.0 - h) / C, rtol=1e-10)
    assert torch.allclose(fld.grad_rejected, torch.sigmoid(2.0 - h) / R, rtol=1e-10)
    assert F.loss_params({"losses": [name, "dpo"], "beta": 0.2}) == {name: {"margin": 1.0}, "dpo": {"beta": 0.2}}

    checked = []
    check = losses.Loss.check
    monkeypatch.setattr(losses.Loss, "check", lambda self, **kw: checked.append(self.name) or check(self, **kw))
    calls["fn"] = 0
    flows = F.gradient_flows([name, "dpo"], F.corner_starts(), n_steps=25, params={name: {"margin": 2.0}})
    assert checked == [name, "dpo"]                                        # once per loss, not per step
    assert calls["fn"] == 26                                              # one forward per step + the last value
    assert flows[(name, "box")].params == {"margin": 2.0}
    fl = F.gradient_flow(name, F.corner_starts(), space="simplex", n_steps=10, lr=0.5)
    assert F.classify_flow(fl).loss == name
    with pytest.raises(ValueError, match="margin") as info:
        F.field_grid(name, 5, margin="wide")
    assert "\n" not in str(info.value)


def test_flow_and_grid_arguments_are_checked_before_any_work(monkeypatch):
    monkeypatch.setattr(F, "_integrate", lambda *a, **k: pytest.fail("integrated before validating"))
    monkeypatch.setattr(F, "_loss_grad_raw", lambda *a, **k: pytest.fail("evaluated before validating"))
    bad = [dict(eps=0.7), dict(ref_rejected=[0.5, 0.5, 0.5]), dict(lr=0), dict(n_steps=-1), dict(method="x"),
           dict(params={"dpo": {"beta": -1.0}}), dict(spaces=[]), dict(starts=[[0.5, 0.6]])]
    for kwargs in bad:
        starts = kwargs.pop("starts", F.corner_starts())
        with pytest.raises(ValueError):
            F.gradient_flows(["dpo"], starts, **kwargs)
    for kwargs in (dict(n=1), dict(ref_chosen=2.0), dict(chosen_range=(0.2, 0.1)), dict(beta=0.0)):
        with pytest.raises(ValueError):
            F.field_grid("dpo", **kwargs)
    with pytest.raises(ValueError):
        F.loss_and_grad("dpo", 0.5, 1.5)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, match", [
    (lambda: F.field_grid("nosuch"), r"^loss: expected one of dpo, .*reward_model, got 'nosuch'$"),
    (lambda: F.field_grid("dpo", 1), r"^n: expected an integer in \[2, 4000\], got 1$"),
    (lambda: F.field_grid("dpo", 10.0), r"^n: expected an integer"),
    (lambda: F.field_grid("dpo", coords="logit"), r"^coords: expected one of ratio, prob, reward, got 'logit'$"),
    (lambda: F.field_grid("dpo", coords="reward"), r"^coords: expected 'ratio' or 'prob' for loss 'dpo'"),
    (lambda: F.field_grid("reward_model", coords="prob"), r"^coords: expected 'reward' for loss 'reward_model'"),
    (lambda: F.field_grid("reward_model"), r"^coords: expected 'reward'"),      # the default is "prob"
    (lambda: F.field_grid("reward_model", coords="reward", beta=0.1), r"^reward_model: expected no parameters, got beta"),
    (lambda: F.field_grid("dpo", beta=-1.0), "beta"),
    (lambda: F.field_grid("dpo", gamma=0.1), "gamma"),
    (lambda: F.field_grid("dpo", ref_chosen=1.5), r"^ref_chosen: expected a finite number in \(0, 1\], got 1.5$"),
    (lambda: F.field_grid("dpo", ref_chosen=0.0), r"^ref_chosen: expected"),
    (lambda: F.field_grid("dpo", ref_rejected=True), r"^ref_rejected: expected"),
    (lambda: F.field_grid("dpo", coords="prob", chosen_range=(0.5, 0.2)), r"^chosen_range: expected a pair"),
    (lambda: F.field_grid("dpo", coords="prob", chosen_range=(0.1, 1.5)), r"^chosen_range: .*both in \[0, 1\]"),
    (lambda: F.field_grid("dpo", coords="prob", rejected_range="ab"), r"^rejected_range: expected a pair"),
    (lambda: F.loss_and_grad("dpo", 0.0, 0.5), r"^chosen: expected pi\+ in \(0, 1\], got values from 0 to 0$"),
    (lambda: F.loss_and_grad("dpo", 0.5, 1.2), r"^rejected: expected pi- in \(0, 1\]"),
    (lambda: F.loss_and_grad("dpo", float("nan"), 0.5), r"^chosen: expected finite values"),
    (lambda: F.loss_and_grad("dpo", "a", 0.5), r"^chosen: expected a number or an array of numbers, got 'a'$"),
    (lambda: F.loss_and_grad("dpo", [], 0.5), r"^chosen: expected a non-empty array"),
    (lambda: F.loss_and_grad("dpo", 0.5, 0.5, ref_rejected=0.0), r"^ref_rejected: expected values in \(0, 1\]"),
    (lambda: F.loss_and_grad("dpo", 3.0, 0.5, coords="ratio", ref_chosen=0.5),
     r"^chosen: expected pi\+ = x1 \* ref_chosen in \(0, 1\], got values from 1.5 to 1.5$"),
    (lambda: F.loss_and_grad("dpo", [0.1, 0.2], [0.1, 0.2, 0.3]), r"^chosen, rejected, .*: expected broadcastable shapes"),
    (lambda: F.gradient_flow("reward_model", [[0.1, 0.1]]), r"^loss: expected a loss with probability coordinates"),
    (lambda: F.gradient_flow("nosuch", [[0.1, 0.1]]), r"^loss: expected one of dpo, "),
    (lambda: F.gradient_flow("dpo", [[0.1, 0.1]], space="sphere"), r"^space: expected one of box, simplex, got 'sphere'$"),
    (lambda: F.gradient_flow("dpo", [[0.1, 0.1]], method="rk45"), r"^method: expected one of euler, rk4, got 'rk45'$"),
    (lambda: F.gradient_flow("dpo", [[0.1, 0.1]], n_steps=0), r"^n_steps: expected an integer in \[1, 1000000\], got 0$"),
    (lambda: F.gradient_flow("dpo", [[0.1, 0.1]], lr=-0.1), r"^lr\['box'\]: expected a finite number > 0, got -0.1$"),
    (lambda: F.gradient_flow("dpo", [[0.1, 0.1]], eps=0.0), r"^eps: expected a finite number in \(0, 0.5\), got 0.0$"),
    (lambda: F.gradient_flow("dpo", [[0.1, 0.1, 0.1]]), r"^starts: expected shape \(S, 2\)"),
    (lambda: F.gradient_flow("dpo", [[0.6, 0.6]], space="simplex"), r"^starts: expected pi\+ \+ pi- < 1"),
    (lambda: F.gradient_flow("dpo", [[0.0, 0.5]]), r"^starts: expected values in \(0, 1\]"),
    (lambda: F.gradient_flow("dpo", [[0.1, 0.1]], ref_chosen=[0.5, 0.5]), r"^ref_chosen: expected a number or one value per start"),
    (lambda: F.gradient_flow("dpo", [[0.1, 0.1]], ref_rejected=2.0), r"^ref_rejected: expected values in \(0, 1\]"),
    (lambda: F.gradient_flow("dpo", [[0.1, 0.1]], beta=0.0), "beta"),
    (lambda: F.gradient_flows("dpo", [[0.1, 0.1]]), r"^losses: expected a non-empty list"),
    (lambda: F.gradient_flows(["dpo", "dpo"], [[0.1, 0.1]]), r"^losses: .*repeated"),
    (lambda: F.gradient_flows(["dpo", "reward_model"], [[0.1, 0.1]]), r"^losses: expected a loss with probability"),
    (lambda: F.gradient_flows(["dpo", "nosuch"], [[0.1, 0.1]]), r"^losses: expected one of dpo, "),
    (lambda: F.gradient_flows(["dpo"], [[0.1, 0.1]], params={"ipo": {}}), r"^params: expected a dict mapping"),
    (lambda: F.gradient_flows(["dpo"], [[0.1, 0.1]], params={"dpo": 0.1}), r"^params: expected a dict mapping"),
    (lambda: F.gradient_flows(["dpo"], [[0.1, 0.1]], spaces=["box", "box"]), r"^spaces: expected"),
    (lambda: F.gradient_flows(["dpo"], [[0.1, 0.1]], lr={"box": 0.1}), r"^lr: expected a step size for every space"),
    (lambda: F.gradient_flows(["dpo"], [[0.1, 0.1]], lr={"box": 0.1, "simplex": "x"}), r"^lr\['simplex'\]: expected"),
    (lambda: F.corner_starts(0.3, 0.2), r"^low: expected a number below high = 0.2, got 0.3$"),
    (lambda: F.corner_starts(0.1, 0.6), r"^high: expected a finite number in \(0, 0.5\), got 0.6$"),
    (lambda: F.region_stats("flow"), r"^flow: expected a Flow from gradient_flow, got str$"),
    (lambda: F.region_stats(F.gradient_flow("dpo", [[0.1, 0.1]], n_steps=1), chosen_target=1.5),
     r"^chosen_target: expected a finite number in \(0, 1\], got 1.5$"),
    (lambda: F.region_stats(F.gradient_flow("dpo", [[0.1, 0.1]], n_steps=1), stationary_tol=0),
     r"^stationary_tol: expected"),
    (lambda: F.ratio_fractions(torch.ones(3), (0.0,)), r"^thresholds: expected a finite number > 0, got 0.0$"),
    (lambda: F.ratio_fractions(torch.ones(3), 10.0), r"^thresholds: expected a list"),
    (lambda: F.ratio_fractions(torch.ones(0)), r"^ratio: expected a non-empty array"),
    (lambda: F.dpo_ratio_area(-1.0), r"^k: expected a finite number > 0, got -1.0$"),
    (lambda: F.check_field_params("dpo", "prob", beta="x"), "beta"),
    (lambda: F.axis_labels("logits"), r"^coords: expected one of ratio, prob, reward, got 'logits'$"),
])
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_plot_helpers_draw_labelled_panels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fld = F.field_grid("dpo", 21, coords="ratio")
    fig, (a, b) = plt.subplots(1, 2)
    cs = F.plot_landscape(a, fld)
    lines = F.plot_field(b, fld)
    assert a.get_xlabel() and a.get_ylabel() and b.get_xlabel() and b.get_ylabel()
    assert cs.levels.size > 2 and lines.norm.vmin > 0 and lines.get_array().size > 0
    rm = F.field_grid("reward_model", 11, coords="reward")
    assert "r^+" in F.plot_landscape(a, rm).axes.get_xlabel()
    plt.close(fig)


# ----------------------------------------------------------------------------- the chapter's loss parameters
def _chapter_defaults():
    from prefdyn.chapters.catalog import get_chapter

    return {p.name: p.default for p in get_chapter("gradient-fields").params}


def test_loss_params_map_the_chapter_parameters():
    """The book-wide names: each loss parameter by its own name, the Balanced family's beta by
    ``beta_balanced`` (0.1 here, not their default 1)."""
    cp = _chapter_defaults()
    assert cp["beta_balanced"] == 0.1
    cp.update(beta=0.3, delta=2.0, lam=7.0, clip=0.2, symmetric=True, beta_balanced=0.4)
    p = F.loss_params(cp, list(F.FIELD_LOSSES))
    assert p["dpo"] == {"beta": 0.3} and p["ipo"] == {"beta": 0.3} and p["bdpo"] == {"beta": 0.4}
    assert p["nbdpo"] == p["nbdpo_v2"] == {"beta": 0.4, "clip": 0.2, "symmetric": True}
    assert p["slic"] == {"delta": 2.0, "eta": cp["eta"]}
    assert p["dpop"] == {"beta": 0.3, "lam": 7.0}
    assert p["flex_dpo"] == {"beta_chosen": cp["beta_chosen"], "beta_rejected": cp["beta_rejected"]}
    assert p["reward_model"] == {}
    # default list of losses: the chapter's own; a parameter the dict lacks keeps the loss's default
    assert list(F.loss_params(cp)) == cp["losses"]
    assert F.loss_params({}, ["nbdpo"])["nbdpo"]["beta"] == 1.0
    # every loss parameter of the chapter's losses is a declared chapter parameter, by its book-wide name
    from prefdyn.losses import LOSS_PARAM_RANGES, chapter_name
    held = {chapter_name(n, k) for n in F.FIELD_LOSSES if n != "reward_model" for k in LOSS_PARAM_RANGES[n]}
    assert held <= set(_chapter_defaults())


def test_parameter_table_lists_each_loss_with_its_source():
    t = F.parameter_table(F.loss_params(_chapter_defaults()))
    assert t.cell("DPO", "parameters") == "beta = 0.1"
    assert t.cell("reward model", "parameters") == "-"
    assert t.cell("IPO", "source") == "000 eq. 8"


# ----------------------------------------------------------------------------- 002's reading, as data
@pytest.fixture(scope="module")
def dpo_field():
    return F.field_grid("dpo", 101, coords="ratio", beta=0.1)


def test_dpo_ratio_checks_confirm_corollary_1(dpo_field):
    chk = F.dpo_ratio_checks(dpo_field)
    assert chk["ratio_equals_x1_over_x2"] and chk["ratio_independent_of_beta"] and chk["no_stationary_point"]
    assert chk["other_beta"] == pytest.approx(1.0)
    assert list(chk["frac_ratio_gt"]) == ["1", "10", "100"]
    # Remark 1 holds only below the diagonal: 50 of 101 points per row
    assert chk["frac_ratio_gt"]["1"] == pytest.approx(50 / 101)
    assert chk["exact_area_ratio_gt"] == pytest.approx({"1": 0.5, "10": 0.05, "100": 0.005})
    for k in ("10", "100"):
        assert chk["frac_ratio_gt"][k] == pytest.approx(chk["exact_area_ratio_gt"][k], abs=1e-3)
    with pytest.raises(ValueError, match="^fld: expected a DPO Field .*, got loss 'ipo' in coords='ratio'$"):
        F.dpo_ratio_checks(F.field_grid("ipo", 11, coords="ratio"))
    with pytest.raises(ValueError, match="^fld: expected a DPO Field .*, got loss 'dpo' in coords='prob'$"):
        F.dpo_ratio_checks(F.field_grid("dpo", 11, coords="prob"))


def test_corner_claims_evaluate_as_002_states_for_dpo(dpo_field):
    """Sec. 3.2's top-left, top-right and bottom-right readings and Remark 3 hold at the corner points; the
    'lower part' reading fails in the bottom-left corner, where x1 = x2 makes both components equal."""
    claims = F.corner_claims(dpo_field, 0.05)
    assert [(c.corner, c.source) for c in claims] == [(c, s) for c, s, _, _ in F.CORNER_READINGS]
    by = {(c.corner, c.source): c for c in claims}
    tl, tr = by[("top-left", "002 Sec. 3.2")], by[("top-right", "002 Sec. 3.2")]
    br = by[("bottom-right", "002 Sec. 3.2, 3.3.2")]
    bl, r3 = by[("bottom-left", "002 Sec. 3.2 (lower part)")], by[("bottom-left", "002 Remark 3")]
    assert tl.point == pytest.approx((0.05, 0.95)) and br.point == pytest.approx((0.95, 0.05))
    assert tl.holds and tr.holds and br.holds and r3.holds and not bl.holds
    # the ratio is x1/x2 (Cor. 1), the gradient is 002 eq. 2 (x1 = x2 = 0.05, beta = 0.1: -1 and +1)
    assert br.ratio == pytest.approx(19.0) and tl.ratio == pytest.approx(1 / 19) and bl.ratio == pytest.approx(1.0)
    assert bl.grad == pytest.approx((-1.0, 1.0))
    assert tr.rel_magnitude < 1 < tl.rel_magnitude
    d = br.as_dict()
    assert d["holds"] is True and d["x1"] == pytest.approx(0.95) and d["dl_dx2"] > 0


def test_corner_points_follow_the_reference():
    """In 002's coordinates the square is (0, 1/pi_ref]: the high corner sits at 1/pi_ref - low."""
    fld = F.field_grid("dpo", 21, coords="ratio", ref_chosen=0.5, ref_rejected=0.25)
    pts = F.corner_points(fld, 0.1)
    assert pts["top-right"] == pytest.approx((1.9, 3.9)) and pts["bottom-left"] == pytest.approx((0.1, 0.1))
    with pytest.raises(ValueError, match=r"^low: expected a finite number in \(0, 0.5\), got 0.6$"):
        F.corner_points(F.field_grid("dpo", 11, coords="prob"), 0.6)
    with pytest.raises(ValueError, match="^fld: .*got coords='reward'$"):
        F.corner_points(F.field_grid("reward_model", 11, coords="reward"), 0.1)


def test_field_summary_flags_flat_and_balanced_fields():
    """bDPO at pi_ref = 1 is flat at log 2 (004 eq. 29); the reward model is balanced (000 Sec. 4)."""
    bd = F.field_summary(F.field_grid("bdpo", 31, coords="prob", beta=0.1))
    assert bd["flat"] and bd["flat_value"] == pytest.approx(math.log(2)) and not bd["balanced"]
    rm = F.field_summary(F.field_grid("reward_model", 31, coords="reward"))
    assert rm["balanced"] and not rm["flat"] and rm["frac_ratio_gt"] == {"1": 0.0, "10": 0.0, "100": 0.0}
    dp = F.field_summary(F.field_grid("dpo", 40, coords="prob"))
    assert not dp["flat"] and dp["flat_value"] is None and dp["median_grad"] > 0
    assert dp["frac_ratio_gt"]["1"] == pytest.approx(0.5, abs=0.02)


# ----------------------------------------------------------------------------- flow verdicts
def test_direction_changes_counts_reversals_in_the_second_half():
    t = torch.arange(41, dtype=D)
    assert int(F.direction_changes(t)) == 0                                   # monotone
    zigzag = 0.5 + 0.1 * (-1.0) ** t                                          # reverses every step
    assert int(F.direction_changes(zigzag)) == 19                             # 20 steps in the second half
    # a clamped coordinate that bounces off the ceiling: up, stay, down, ... counts each turn, not the stays
    clamp = torch.tensor([0.5, 1.0, 1.0, 0.8, 1.0, 1.0, 0.8, 1.0, 1.0, 0.8], dtype=D)
    assert int(F.direction_changes(clamp, tail=1.0)) == 5
    two = torch.stack([t, zigzag], 1)                                         # columns counted separately
    assert F.direction_changes(two).tolist() == [0, 19]
    with pytest.raises(ValueError, match="^tail: expected a finite number in"):
        F.direction_changes(t, tail=0.0)
    with pytest.raises(ValueError, match="^path: expected at least 3 time steps"):
        F.direction_changes(t[:2])


def _hand_flow(probs, loss="dpo", space="box", lr=0.01):
    probs = torch.as_tensor(probs, dtype=D)
    S = probs.shape[1]
    return F.Flow(loss=loss, space=space, method="euler", lr=lr, n_steps=probs.shape[0] - 1,
                  params={"beta": 0.1}, starts=probs[0, :, :2].clone(), ref=torch.ones(S, 2, dtype=D),
                  probs=probs, loss_path=torch.zeros(probs.shape[0], S, dtype=D),
                  logits=probs.log() if space == "simplex" else None)


@pytest.fixture(scope="module")
def fast_flows():
    """DPO and SFT-DPO from the four corners with steps five times the chapter's (fast, same fixed points)."""
    return F.gradient_flows(["dpo", "sft_dpo"], F.corner_starts(), n_steps=500, lr={"box": 0.05, "simplex": 0.5})


def test_dpo_flow_from_low_chosen_starts_reaches_the_target(fast_flows):
    for space in ("box", "simplex"):
        v = F.classify_flow(fast_flows[("dpo", space)])
        assert v.low_starts == (0, 1)                                         # the two starts with pi+ = 0.05
        assert v.category == "escape" and v.reached == 2 and not v.jump and not v.oscillates
        rs = F.region_stats(fast_flows[("dpo", space)])
        assert v.steps == (rs[0]["steps_to_chosen"], rs[1]["steps_to_chosen"]) and v.slowest == max(v.steps) > 0
        assert all(f >= 0.9 for f in v.final_chosen)
    # the SFT term pulls pi+ up: fewer steps than DPO from the same starts
    assert F.classify_flow(fast_flows[("sft_dpo", "box")]).slowest < F.classify_flow(fast_flows[("dpo", "box")]).slowest


def test_oversized_first_step_is_a_jump():
    """IPO and DPOP at the chapter's lr_box: the first update alone is larger than the box."""
    fl = F.gradient_flows(["ipo", "dpop"], F.corner_starts(), spaces=["box"], n_steps=30, lr=0.01,
                          params={"ipo": {"beta": 0.1}, "dpop": {"beta": 0.1}})
    for loss in ("ipo", "dpop"):
        v = F.classify_flow(fl[(loss, "box")])
        assert v.jump and v.category == "step_artefact", loss
        assert min(v.first_step) >= 0.95
    # the first step is lr * |dl/dpi+| at the start: DPOP's penalty saturates the sigmoid far below the
    # reference, so it is lr * (1 + lam) * beta / pi+
    assert F.first_step(fl[("dpop", "box")])[0] == pytest.approx(0.01 * (1 + 50) * 0.1 / 0.05, rel=1e-4)
    # the same DPO flow with a small step is no jump, with a huge one it is
    st = F.corner_starts()
    assert not F.classify_flow(F.gradient_flow("dpo", st, n_steps=5, lr=0.01)).jump
    assert F.classify_flow(F.gradient_flow("dpo", st, n_steps=5, lr=100.0)).category == "step_artefact"
    # no jump verdict on the simplex (nothing is clamped there)
    assert not F.classify_flow(F.gradient_flow("dpo", st, space="simplex", n_steps=5, lr=100.0)).jump


def test_oscillating_path_is_flagged():
    T = 41
    up = torch.linspace(0.05, 0.95, T, dtype=D)
    bounce = 0.9 + 0.05 * (-1.0) ** torch.arange(T, dtype=D)
    probs = torch.stack([torch.stack([up, torch.full_like(up, 0.3)], 1),
                         torch.stack([bounce, torch.full_like(up, 0.3)], 1)], 1)        # (T, 2 starts, 2)
    probs[0, 1, 0] = 0.05
    v = F.classify_flow(_hand_flow(probs))
    assert v.oscillates and v.reversals == 19 and v.category == "step_artefact"
    assert not F.classify_flow(_hand_flow(probs[:, :1])).oscillates
    assert F.classify_flow(_hand_flow(probs), max_reversals=50).category == "escape"


def test_partial_stall_and_stationary_verdicts_on_hand_made_flows():
    T = 11
    rise = torch.linspace(0.05, 0.95, T, dtype=D)
    slow = torch.linspace(0.05, 0.3, T, dtype=D)
    flat = torch.full((T,), 0.05, dtype=D)
    rej = torch.full((T,), 0.3, dtype=D)

    def flow(*chosen):
        return _hand_flow(torch.stack([torch.stack([c, rej], 1) for c in chosen], 1))

    assert F.classify_flow(flow(rise, slow)).category == "partial"
    assert F.classify_flow(flow(slow, slow)).category == "stall"
    v = F.classify_flow(flow(rise, flat))                  # the miss has stopped moving: a minimum short of it
    assert v.category == "stationary_short" and v.reached == 1 and v.slowest == -1
    assert F.classify_flow(flow(slow, rise), low_starts=[1]).category == "escape"


def test_ipo_on_the_simplex_stops_short_at_its_minimum():
    fl = F.gradient_flow("ipo", F.corner_starts(), space="simplex", n_steps=300, lr=0.1, beta=0.1)
    v = F.classify_flow(fl)
    assert v.category == "stationary_short" and v.reached == 0
    assert all(f < 0.9 for f in v.final_chosen)
    # the minimum: log(pi+/pi-) = 1/(2 beta) (pi_ref = 1)
    p = fl.probs[-1, v.low_starts[0]]
    assert float(torch.log(p[0] / p[1])) == pytest.approx(5.0, abs=1e-6)


def test_verdict_summary_lists_every_category(fast_flows):
    summ = F.verdict_summary(F.classify_flows(fast_flows))
    assert set(summ) == {"box", "simplex"}
    for space in summ:
        assert list(summ[space]) == list(F.CATEGORIES)
        assert summ[space]["escape"] == ["dpo", "sft_dpo"]
    assert set(F.CATEGORY_LABELS) == set(F.CATEGORIES)


def test_region_statistics_regroup_region_stats(fast_flows):
    rs = F.region_statistics(fast_flows, 0.9, 0.01)
    assert set(rs) == {"box", "simplex"} and set(rs["box"]) == {"dpo", "sft_dpo"}
    one = F.region_stats(fast_flows[("dpo", "simplex")], 0.9, 0.01)
    assert rs["simplex"]["dpo"]["steps_to_rejected"] == [r["steps_to_rejected"] for r in one]
    assert rs["simplex"]["dpo"]["final_rest"] == pytest.approx([r["final_rest"] for r in one])
    assert "final_rest" not in rs["box"]["dpo"]
    assert rs["box"]["dpo"]["final_loss"] == pytest.approx(fast_flows[("dpo", "box")].loss_path[-1].tolist())


def test_simplex_dispersion_dpo_keeps_the_rest_logit(fast_flows):
    """DPO is balanced in log space: the rest logit never moves and pi+ never falls; the SFT term is not."""
    d = F.simplex_dispersion(fast_flows[("dpo", "simplex")])
    assert d["rest_logit_fixed"] and d["chosen_monotone"]
    # from (low, high) pi- leaves faster than pi+ arrives, so the rest gains mass for a while
    assert d["rest_increase"][1] > 0.05 and d["max_rest_increase"] == max(d["rest_increase"])
    assert d["rest_increase"][0] == 0.0                    # from (low, low) the rest (0.9) only shrinks
    s = F.simplex_dispersion(fast_flows[("sft_dpo", "simplex")])
    assert not s["rest_logit_fixed"]
    with pytest.raises(ValueError, match="^flow: expected a simplex Flow .*, got a box Flow$"):
        F.simplex_dispersion(fast_flows[("dpo", "box")])


def test_per_start_table_shows_never_as_a_dash():
    t = F.per_start_table({"dpo": [3, -1], "ipo": [1, 2]}, [[0.05, 0.05], [0.05, 0.45]], title="steps")
    assert t.columns == ["(0.05, 0.05)", "(0.05, 0.45)"]
    assert t.cell("DPO", "(0.05, 0.45)") is None and "-" in t.text().splitlines()[3]
    ends = F.per_start_table({"dpo": ["preferred", "still moving"]}, [[0.05, 0.05], [0.05, 0.45]], never=None)
    assert ends.cell("DPO", "(0.05, 0.45)") == "still moving"


@pytest.mark.parametrize("call, match", [
    (lambda: F.loss_params({}, ["nosuch"]), r"^losses: expected one of dpo, .*reward_model, got 'nosuch'$"),
    (lambda: F.loss_params({}, "dpo"), r"^losses: expected a list of loss names"),
    (lambda: F.loss_params("beta"), r"^params: expected a dict of the chapter's parameters, got str$"),
    (lambda: F.loss_params({"beta": -1.0}, ["dpo"]), "beta"),
    (lambda: F.corner_claims("field"), r"^fld: expected a Field from field_grid, got str$"),
    (lambda: F.corner_claims(F.field_grid("dpo", 11), dominance=0.0), "dominance"),
    (lambda: F.field_summary(None), r"^fld: expected a Field"),
    (lambda: F.field_summary(F.field_grid("dpo", 11), flat_tol=-1.0), r"^flat_tol: expected"),
    (lambda: F.classify_flow("flow"), r"^flow: expected a Flow"),
    (lambda: F.classify_flow(F.gradient_flow("dpo", [[0.1, 0.1]], n_steps=3), low_starts=[2]), "low_starts"),
    (lambda: F.classify_flow(F.gradient_flow("dpo", [[0.1, 0.1]], n_steps=3), max_reversals=-1), "max_reversals"),
    (lambda: F.classify_flow(F.gradient_flow("dpo", [[0.1, 0.1]], n_steps=3), low_starts=5), "low_starts"),
    (lambda: F.first_step(None), r"^flow: expected a Flow from gradient_flow, got NoneType$"),
    (lambda: F.corner_points(F.field_grid("dpo", 11), "a"), r"^low: expected"),
    (lambda: F.dpo_ratio_checks(F.field_grid("dpo", 11, coords="ratio"), other_beta=0), r"^other_beta: expected"),
    (lambda: F.simplex_dispersion(F.gradient_flow("dpo", [[0.1, 0.1]], n_steps=3, space="simplex"), atol=0),
     r"^atol: expected"),
])
def test_analysis_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_chapter_figures_draw_their_panels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = {n: F.field_grid(n, 15, coords="reward" if n == "reward_model" else "prob")
              for n in ("dpo", "bdpo", "reward_model")}
    fig = F.plot_landscapes(fields)
    assert sum(ax.get_visible() for ax in fig.axes) >= 4                      # 3 panels + colour bar
    assert any("flat" in t.get_text() for t in fig.axes[1].texts)             # bDPO is flat at pi_ref = 1
    assert F.plot_fields(fields).axes[0].get_title() == "DPO"
    ratio_fig = F.plot_ratio_maps(fields)
    assert ratio_fig.axes[0].get_title().startswith("DPO: ") and ratio_fig.axes[0].get_title().endswith("%")
    # fonts at least 10 points in a figure FIG_WIDTH inches wide (about 8.5 points on the page)
    assert ratio_fig.get_figwidth() == pytest.approx(F.FIG_WIDTH)
    assert min(t.get_fontsize() for t in ratio_fig.axes[0].get_xticklabels()) >= 10
    assert len(F.plot_dpo_overview(F.field_grid("dpo", 21, coords="ratio")).axes) == 4
    flows = F.gradient_flows(["dpo", "ipo"], F.corner_starts(), n_steps=20)
    fig = F.plot_flows(flows, ["dpo", "ipo"], "simplex")
    assert fig.axes[0].get_yscale() == "log" and len(fig.legends) == 1
    assert fig.axes[0].get_ylim()[0] <= 0.5 * float(flows[("dpo", "simplex")].probs[..., 1].min())
    fig = F.plot_start_over_steps(flows, ["dpo", "ipo"], start=1)
    assert fig.axes[0].get_xscale() == "log" and len(fig.legends) == 1
    plt.close("all")


# ----------------------------------------------------------------------------- the box's invariant and its floor
@pytest.mark.parametrize("loss,zero,zero_if", [
    ("dpo", True, None), ("ipo", True, None),
    ("flex_dpo", False, "beta_rejected = beta_chosen"), ("sft_dpo", False, "gamma = 0"),
    ("slic", False, "eta = 0"), ("dpop", False, "lam = 0"), ("nbdpo", False, None), ("bdpo", False, None)])
def test_radius_invariant_is_exact_for_losses_of_the_margin_alone(loss, zero, zero_if):
    """pi+ dl/dpi+ + pi- dl/dpi- == 0 (sympy) exactly for the losses of the margin alone: the box flow keeps
    pi+^2 + pi-^2; the losses that add a term do so only where that term vanishes."""
    from prefdyn import symbolic as S

    res = F.radius_invariant(loss)
    assert res["identically_zero"] is zero
    assert res["zero_if"] == zero_if
    assert (res["expr"] == 0) is zero
    if not zero:  # not zero at a point (with the loss's default parameters)
        syms = [S.PI_C, S.PI_R, S.REF_C, S.REF_R] + list(S.PARAM_SYMBOLS[loss].values())
        vals = [0.3, 0.2, 0.5, 0.7] + [0.5, 0.05, 0.2][:len(syms) - 4]
        if loss == "nbdpo":
            vals[-1] = 0.0
        assert abs(float(res["expr"].subs(dict(zip(syms, vals))))) > 1e-6
    # the same as prefdyn.symbolic's log-space balance, by its own definition (dl/dlog pi = pi dl/dpi)
    e = S.loss_expr(loss)
    assert (loss in ("dpo", "ipo")) is zero
    if zero:
        num_ = (S.PI_C * e.diff(S.PI_C) + S.PI_R * e.diff(S.PI_R)).subs(
            {S.PI_C: 0.31, S.PI_R: 0.17, S.REF_C: 0.6, S.REF_R: 0.9, S.BETA: 0.3})
        assert abs(float(num_)) < 1e-14


def test_radius_invariant_rejects_unknown_loss():
    with pytest.raises(ValueError, match="^loss: "):
        F.radius_invariant("nope")


@pytest.mark.parametrize("method,lr,tol", [("euler", 1e-3, 5e-3), ("rk4", 1e-3, 1e-6)])
def test_box_flows_conserve_the_radius_until_the_floor(method, lr, tol):
    """Numerically: DPO and IPO keep r^2 = pi+^2 + pi-^2 up to the integrator's error until the clamp acts
    (Euler adds lr^2 |grad|^2 per step: the error shrinks with lr); flex-beta DPO with beta+ != beta- does
    not keep it."""
    st = torch.tensor([[0.2, 0.3], [0.4, 0.1], [0.3, 0.3]], dtype=D)
    n = 400 if method == "rk4" else 2000
    fl = F.gradient_flows(["dpo", "ipo", "flex_dpo"], st, spaces=["box"], n_steps=n, lr=lr, method=method,
                          params={"ipo": {"beta": 0.5}, "flex_dpo": {"beta_chosen": 0.5, "beta_rejected": 0.1}})
    for loss in ("dpo", "ipo"):
        f = fl[(loss, "box")]
        assert max(F.radius_drift(f)) < tol, loss
        assert float((f.probs[-1] - f.probs[0]).abs().max()) > 1e-3, loss  # it did move
    assert max(F.radius_drift(fl[("flex_dpo", "box")])) > 0.1
    # Euler's drift is one-signed (r^2 grows by lr^2 |grad|^2 per step) and shrinks ~ lr
    eu = F.gradient_flow("dpo", st, n_steps=100, lr=1e-2, eps=1e-300)
    eu10 = F.gradient_flow("dpo", st, n_steps=1000, lr=1e-3, eps=1e-300)
    r2 = (eu.probs ** 2).sum(-1)
    assert bool((r2[1:] >= r2[:-1]).all())
    d, d10 = F.radius_drift(eu), F.radius_drift(eu10)
    assert all(b < 0.2 * a for a, b in zip(d, d10))


def test_floor_step_and_stop_at_floor():
    st = F.corner_starts()
    fl = F.gradient_flow("dpo", st, n_steps=400, lr=0.01, eps=1e-6)
    stop = F.gradient_flow("dpo", st, n_steps=400, lr=0.01, eps=1e-6, stop_at_floor=True)
    assert fl.floor == 1e-6 and not fl.stop_at_floor and stop.stop_at_floor
    on_floor = fl.probs[..., 1] <= 1e-6
    for j in range(4):
        k = int(fl.floor_step[j])
        assert k > 0 and bool(on_floor[k, j]) and not bool(on_floor[:k, j].any())
        assert int(stop.floor_step[j]) == k
        # identical before the floor, frozen from then on at the last state above it
        assert torch.equal(fl.probs[:k, j], stop.probs[:k, j])
        assert bool((stop.probs[k:, j] == stop.probs[k - 1, j]).all())
    assert fl.ceiling_step.tolist() == [-1] * 4
    rs = F.region_stats(stop)
    assert [r["end"] for r in rs] == ["floor"] * 4
    assert [r["floor_step"] for r in rs] == fl.floor_step.tolist()
    assert F.classify_flow(stop).category == "floor_first"
    simplex = F.gradient_flow("dpo", st, space="simplex", n_steps=5)
    assert simplex.floor_step is None and F.region_stats(simplex)[0]["floor_step"] is None
    with pytest.raises(ValueError, match="^stop_at_floor: "):
        F.gradient_flows(["dpo"], st, stop_at_floor=1)
    with pytest.raises(ValueError, match="^flow: expected a box Flow"):
        F.radius_drift(simplex)


def test_exact_box_end_dpo_and_ipo():
    """DPO's exact flow ends on the start's circle at pi- = 0 after finitely many steps, close to where Euler
    first reaches the floor; the clamped flows end further out the larger the floor. IPO's ends at its
    target margin log(pi+/pi-) = 1/(2 beta) on the circle (a minimum: never reached)."""
    st = F.corner_starts()
    ex = F.exact_box_end("dpo", st, lr=0.01, beta=0.1)
    r0 = torch.linalg.norm(st, dim=1)
    assert torch.allclose(torch.tensor(ex["final_chosen"], dtype=D), r0, rtol=1e-12)
    assert ex["final_rejected"] == [0.0] * 4 and ex["end"] == ["pi- = 0"] * 4
    by = {f: F.gradient_flows(["dpo"], st, spaces=["box"], n_steps=800, lr=0.01, eps=f) for f in (1e-6, 1e-12, 1e-30)}
    dep = F.floor_dependence(by, "dpo")
    assert list(dep) == ["1e-06", "1e-12", "1e-30"]
    for j in range(4):
        ends = [dep[k]["final_chosen"][j] for k in dep]
        assert ends[0] > ends[1] > ends[2] > ex["final_chosen"][j]
        assert abs(dep["1e-06"]["floor_step"][j] - ex["steps"][j]) <= 0.05 * ex["steps"][j] + 3
    ipo = F.exact_box_end("ipo", st, lr=0.01, beta=0.5)
    for j in range(4):
        assert math.log(ipo["final_chosen"][j] / ipo["final_rejected"][j]) == pytest.approx(1.0, abs=1e-9)
        assert math.hypot(ipo["final_chosen"][j], ipo["final_rejected"][j]) == pytest.approx(float(r0[j]))
    assert ipo["steps"] == [None] * 4 and ipo["end"] == ["stationary"] * 4
    with pytest.raises(ValueError, match="^loss: expected a loss of the margin alone"):
        F.exact_box_end("flex_dpo", st, beta_chosen=0.1, beta_rejected=0.01)


def test_floor_verdicts_name_the_floor():
    st = F.corner_starts()
    kw = dict(spaces=["box"], n_steps=2000, lr=0.01, params={"sft_dpo": {"beta": 0.1, "gamma": 0.1}})
    by = {f: F.gradient_flows(["dpo", "sft_dpo"], st, eps=f, **kw) for f in (1e-6, 1e-12)}
    stopped = F.gradient_flows(["dpo", "sft_dpo"], st, eps=1e-6, stop_at_floor=True, **kw)
    v = F.floor_verdicts(by, stopped)
    assert v["dpo"]["floors"] == {"1e-06": "escape", "1e-12": "stall"}
    assert v["dpo"]["before_floor"] == "floor_first" and v["dpo"]["condition"] == "only floor ≥ 1e-06"
    assert v["sft_dpo"]["floors"] == {"1e-06": "escape", "1e-12": "escape"}
    assert v["sft_dpo"]["condition"] == "floor ≥ 1e-12, not stopped"
    art = F.floor_verdicts({1e-6: by[1e-6]}, {("dpo", "box"): by[1e-6][("dpo", "box")]})
    assert art["dpo"]["condition"] == "every floor"   # the clamped flow as its own "stopped" flow


def test_penalty_active_fraction():
    assert F.penalty_active_fraction(F.field_grid("dpop", 20)) == 1.0
    assert F.penalty_active_fraction(F.field_grid("dpop", 20, ref_chosen=0.25)) == 0.25
    with pytest.raises(ValueError, match="^fld: "):
        F.penalty_active_fraction(F.field_grid("dpo", 20))
