"""Loss landscapes, gradient fields and gradient flows over (pi+, pi-) for every loss of the book.

This reproduces and extends the field-theory view of 002 (Feng et al.): the DPO loss as a function of the
two probability ratios ``x1 = pi(y_w)/pi_ref(y_w)`` and ``x2 = pi(y_l)/pi_ref(y_l)`` (002 eq. 1), its
gradient vector field (002 Theorem 1, eq. 2) and the reading of that field (002 Corollary 1, Remarks 1-3,
Fig. 1), and it runs the gradient flows the figure only suggests.

Every loss value comes from :func:`prefdyn.losses.pair_loss` (the one source of truth); the reward-model loss
from :func:`prefdyn.losses.reward_model_loss`. Gradients are taken by autograd, vectorised: one backward pass
of ``loss.sum()`` over the whole grid gives every point's own gradient because pairs do not interact.

Coordinates (``coords``)
------------------------
- ``"ratio"``: the variables are 002's ratios ``x = pi / pi_ref`` (002 eq. 1); the gradient is
  ``dl/dx = pi_ref * dl/dpi``. With ``pi_ref = 1`` (002 footnote 2, the book's default) ``x = pi``.
  ``x`` lives in ``(0, 1/pi_ref]`` (002 Remark 1: ``x1 in [0, a]`` with ``pi_ref(y_w) = 1/a``).
- ``"prob"``: the variables are the probabilities ``(pi+, pi-)`` in ``(0, 1]`` with a general reference
  ``pi_ref``; the gradient is ``dl/dpi`` (the coordinates of 000 Sec. 3.1).
- ``"reward"``: only for ``"reward_model"``: the variables are the rewards ``(r+, r-)`` of 000 Sec. 4.

Gradients of the reweighted losses (``nbdpo``, ``nbdpo_v2``, ``bdpo``) treat their detached weights as
constants, exactly as in training (see :mod:`prefdyn.losses`); their "gradient field" is therefore the
update direction, not the gradient of the plotted landscape.

Gradient flows
--------------
:func:`gradient_flow` integrates ``d state/dt = -grad l`` with a fixed step (explicit Euler, i.e. plain
gradient descent with learning rate ``lr``, or classical RK4), batched over the start points:

- ``space="box"``: the state is ``(pi+, pi-)`` itself, unconstrained except that it is clamped to the
  box ``[eps, 1]^2`` after every step (and every RK4 stage). This is 002's picture: ``x1`` and ``x2`` are
  independent, ``pi+ + pi-`` may exceed 1. What happens at the boundary: the DPO-like losses push ``pi-``
  towards 0 with a gradient ``~ (pi-)^(beta-1)`` that diverges there (000 Cor. 2), so ``pi-`` reaches the
  floor ``eps`` in finite time and stays there (projected gradient descent); ``pi+`` is pushed up until the
  ceiling 1 and sits on it. A clamped coordinate keeps the clamp value while the other one moves on.
- ``space="simplex"``: the state is the logit vector ``z = [z+, z-, z_rest]`` and the probabilities are
  ``softmax(z)`` over [chosen, rejected, everything else]. This is the toy model of 000 Sec. 3.2 with one
  lumped "rest" response: probability mass can leave *both* responses, which is 000's dispersion
  (Property 3, Cor. 3). The gradient w.r.t. the logits sums to zero (softmax invariance), so ``sum z`` is
  conserved and the probabilities sum to 1 by construction.

Why fixed steps and not an adaptive solver (``scipy.integrate.solve_ivp``): the question is "how many
updates until ...", i.e. the number of optimiser steps at a given learning rate, which is what a fixed-step
Euler integrator counts. Near ``pi- -> 0`` the box field is stiff and unbounded; an adaptive solver would
take ever smaller steps towards a boundary that training simply overshoots and clips.

:func:`region_stats` gives, per start, the steps until ``pi+ >= 0.9`` and until ``pi- <= 0.01`` (``-1`` if
never within the budget) and where the flow ends.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from .losses import LOSS_NAMES, check_loss_params, pair_loss, reward_model_loss

__all__ = [
    "FIELD_LOSSES",
    "COORDS",
    "SPACES",
    "METHODS",
    "DEFAULT_LR",
    "Field",
    "Flow",
    "check_field_params",
    "loss_and_grad",
    "field_grid",
    "gradient_ratio",
    "ratio_fractions",
    "dpo_ratio_area",
    "gradient_flow",
    "gradient_flows",
    "region_stats",
    "corner_starts",
    "plot_landscape",
    "plot_field",
    "field_cmap",
    "axis_labels",
]

#: Losses with a field: every loss of :mod:`prefdyn.losses` plus the reward-model loss (reward coordinates).
FIELD_LOSSES: tuple[str, ...] = LOSS_NAMES + ("reward_model",)
COORDS: tuple[str, ...] = ("ratio", "prob", "reward")
SPACES: tuple[str, ...] = ("box", "simplex")
METHODS: tuple[str, ...] = ("euler", "rk4")
#: Default step sizes: in probability space (box) the DPO gradient is ~ beta / pi, in logit space (simplex)
#: it is bounded by ~ beta, so the logits take a larger step.
DEFAULT_LR: dict[str, float] = {"box": 1e-2, "simplex": 1.0}
DTYPE = torch.float64
_MAX_GRID = 4000
_MAX_STEPS = 1_000_000


# ----------------------------------------------------------------------------- validation helpers
def check_field_params(loss: Any, coords: str | None = None, **params: Any) -> dict[str, Any]:
    """Validate ``loss`` (one of :data:`FIELD_LOSSES`), ``coords`` and the loss parameters.

    Returns the loss parameters with defaults filled (``{}`` for ``"reward_model"``, which has none).
    Raises a one-line ``ValueError`` otherwise.
    """
    if not isinstance(loss, str) or loss not in FIELD_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(FIELD_LOSSES)} (got {loss!r})")
    if coords is not None:
        if coords not in COORDS:
            raise ValueError(f"coords must be one of {', '.join(COORDS)} (got {coords!r})")
        if (loss == "reward_model") != (coords == "reward"):
            raise ValueError(
                f"coords={coords!r} does not fit loss {loss!r}: 'reward_model' takes coords='reward', "
                "every other loss 'ratio' or 'prob'"
            )
    if loss == "reward_model":
        if params:
            raise ValueError(f"reward_model: takes no parameters (got {', '.join(params)})")
        return {}
    return check_loss_params(loss, **params)


def _tensor(x: Any, name: str) -> torch.Tensor:
    """float64 tensor from ``x``; ``ValueError`` naming ``name`` if not numeric or not finite."""
    if isinstance(x, bool):
        raise ValueError(f"{name} must be a number or an array of numbers (got {x!r})")
    try:
        t = x.detach().to(DTYPE) if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=DTYPE)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number or an array of numbers (got {x!r})") from None
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def _check_prob(t: torch.Tensor, name: str, *, upper: float = 1.0, closed_upper: bool = True) -> None:
    ok = bool((t > 0).all()) and (bool((t <= upper * (1 + 1e-12)).all()) if closed_upper else bool((t < upper).all()))
    if not ok:
        bracket = "]" if closed_upper else ")"
        raise ValueError(f"{name} must lie in (0, {upper:g}{bracket} (got values outside)")


def _check_int(v: Any, name: str, low: int, high: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not (low <= int(v) <= high):
        raise ValueError(f"{name} must be an integer in [{low}, {high}] (got {v!r})")
    return int(v)


def _check_pos_float(v: Any, name: str, high: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)) or float(v) <= 0 or (
        high is not None and float(v) >= high
    ):
        rng = f"in (0, {high:g})" if high is not None else "> 0"
        raise ValueError(f"{name} must be a finite number {rng} (got {v!r})")
    return float(v)


# ----------------------------------------------------------------------------- pointwise loss and gradient
def _loss_grad_raw(loss: str, coords: str, u1: torch.Tensor, u2: torch.Tensor, lr1: torch.Tensor,
                   lr2: torch.Tensor, params: Mapping[str, Any]):
    """No validation: value and gradient w.r.t. (u1, u2) (``lr*`` are the reference LOG-probs)."""
    u1 = u1.detach().clone().requires_grad_(True)
    u2 = u2.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if coords == "reward":
            value = reward_model_loss(u1, u2)
        else:
            lp1, lp2 = torch.log(u1), torch.log(u2)
            if coords == "ratio":  # x = pi / pi_ref  ->  log pi = log x + log pi_ref
                lp1, lp2 = lp1 + lr1, lp2 + lr2
            value = pair_loss(loss, lp1, lp2, lr1, lr2, **params)
        g1, g2 = torch.autograd.grad(value.sum(), (u1, u2))
    return value.detach(), g1, g2


def loss_and_grad(loss: str, chosen: Any, rejected: Any, *, coords: str = "prob", ref_chosen: Any = 1.0,
                  ref_rejected: Any = 1.0, **params: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and its gradient at the points ``(chosen, rejected)``, any broadcastable shapes, float64.

    ``chosen``/``rejected`` are ``pi+``/``pi-`` (``coords="prob"``), 002's ``x1``/``x2`` (``"ratio"``) or
    ``r+``/``r-`` (``"reward"``, only for ``loss="reward_model"``). ``ref_chosen``/``ref_rejected`` are the
    reference PROBABILITIES ``pi_ref`` in ``(0, 1]`` (ignored for rewards). Returns
    ``(loss, dl/d chosen, dl/d rejected)``, each of the broadcast shape, from one autograd call.
    """
    p = check_field_params(loss, coords, **params)
    c, r = _tensor(chosen, "chosen"), _tensor(rejected, "rejected")
    rc, rr = _tensor(ref_chosen, "ref_chosen"), _tensor(ref_rejected, "ref_rejected")
    if coords != "reward":
        _check_prob(rc, "ref_chosen")
        _check_prob(rr, "ref_rejected")
        if coords == "prob":
            _check_prob(c, "chosen (pi+)")
            _check_prob(r, "rejected (pi-)")
        else:
            if not bool((c > 0).all()) or not bool((c * rc <= 1 + 1e-12).all()):
                raise ValueError("chosen (x1 = pi+/pi_ref+) must lie in (0, 1/ref_chosen] (got values outside)")
            if not bool((r > 0).all()) or not bool((r * rr <= 1 + 1e-12).all()):
                raise ValueError("rejected (x2 = pi-/pi_ref-) must lie in (0, 1/ref_rejected] (got values outside)")
    try:
        c, r, rc, rr = torch.broadcast_tensors(c, r, rc, rr)
    except RuntimeError:
        raise ValueError("chosen, rejected, ref_chosen and ref_rejected must have broadcastable shapes") from None
    return _loss_grad_raw(loss, coords, c, r, torch.log(rc), torch.log(rr), p)


# ----------------------------------------------------------------------------- grids
def _ratio(g_chosen: torch.Tensor, g_rejected: torch.Tensor) -> torch.Tensor:
    a, b = g_chosen.abs(), g_rejected.abs()
    out = b / torch.where(a > 0, a, torch.ones_like(a))
    out = torch.where(a > 0, out, torch.where(b > 0, torch.full_like(b, math.inf), torch.full_like(b, math.nan)))
    return out


def gradient_ratio(g_chosen: Any, g_rejected: Any) -> torch.Tensor:
    """``|dl/d rejected| / |dl/d chosen|`` (002 Cor. 1 inverted; 000 Cor. 1): ``inf`` where only the chosen
    gradient vanishes, ``nan`` where both do. For DPO in ratio coordinates it equals ``x1 / x2``."""
    a, b = _tensor(g_chosen, "g_chosen"), _tensor(g_rejected, "g_rejected")
    return _ratio(a, b)


def ratio_fractions(ratio: Any, thresholds: Sequence[float] = (10.0, 100.0)) -> dict[float, float]:
    """Fraction of the grid points where ``ratio > t`` for each threshold ``t`` (``nan`` never counts)."""
    t = ratio.detach().to(DTYPE) if isinstance(ratio, torch.Tensor) else torch.as_tensor(ratio, dtype=DTYPE)
    if t.numel() == 0:
        raise ValueError("ratio must not be empty")
    out = {}
    for th in thresholds:
        th = _check_pos_float(th, "thresholds")
        out[th] = float((t > th).to(DTYPE).mean())
    return out


def dpo_ratio_area(k: float, a: float = 1.0, b: float = 1.0) -> float:
    """Exact area fraction of the box ``(0, a] x (0, b]`` where DPO's ratio ``x1/x2`` exceeds ``k``.

    From 002 Cor. 1: ``|dl/dx2| / |dl/dx1| = x1/x2 > k`` iff ``x2 < x1/k``: a triangle of area
    ``a^2/(2k)`` when ``a/k <= b`` (else the box minus the other triangle), divided by ``a b``.
    """
    k, a, b = _check_pos_float(k, "k"), _check_pos_float(a, "a"), _check_pos_float(b, "b")
    if a / k <= b:
        area = a * a / (2 * k)
    else:
        area = a * b - k * b * b / 2
    return area / (a * b)


@dataclass(frozen=True)
class Field:
    """Loss and gradient on a regular grid. Arrays are ``[i_rejected, j_chosen]`` (rows = ``pi-`` axis,
    columns = ``pi+`` axis), as matplotlib's ``contourf(chosen, rejected, value)`` expects."""

    loss: str
    coords: str
    params: dict
    ref: tuple[float, float]
    chosen: torch.Tensor          # (n,) axis of the chosen variable (x1, pi+ or r+)
    rejected: torch.Tensor        # (n,) axis of the rejected variable (x2, pi- or r-)
    value: torch.Tensor           # (n, n)
    grad_chosen: torch.Tensor     # (n, n) dl/d chosen
    grad_rejected: torch.Tensor   # (n, n) dl/d rejected

    @property
    def magnitude(self) -> torch.Tensor:
        """Euclidean norm of the gradient."""
        return torch.hypot(self.grad_chosen, self.grad_rejected)

    @property
    def ratio(self) -> torch.Tensor:
        """``|dl/d rejected| / |dl/d chosen|`` at every grid point (see :func:`gradient_ratio`)."""
        return _ratio(self.grad_chosen, self.grad_rejected)

    def fractions(self, thresholds: Sequence[float] = (10.0, 100.0)) -> dict[float, float]:
        """Fraction of the grid where the rejected gradient dominates by more than each threshold."""
        return ratio_fractions(self.ratio, thresholds)


def _axis(n: int, lo: float, hi: float) -> torch.Tensor:
    """Cell centres of ``n`` equal cells of ``[lo, hi]`` (so grid fractions estimate area fractions)."""
    return lo + (torch.arange(n, dtype=DTYPE) + 0.5) * (hi - lo) / n


def _range(rng: Any, name: str, default: tuple[float, float], lo_min: float | None, hi_max: float | None):
    if rng is None:
        return default
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers (got {rng!r})") from None
    ok = math.isfinite(lo) and math.isfinite(hi) and lo < hi
    if ok and lo_min is not None:
        ok = lo >= lo_min
    if ok and hi_max is not None:
        ok = hi <= hi_max * (1 + 1e-12)
    if not ok:
        lim = f"[{lo_min:g}, {hi_max:g}]" if lo_min is not None and hi_max is not None else "the real line"
        raise ValueError(f"{name} must be a pair low < high inside {lim} (got {rng!r})")
    return lo, hi


def field_grid(loss: str, n: int = 101, *, coords: str = "ratio", chosen_range: Any = None,
               rejected_range: Any = None, ref_chosen: float = 1.0, ref_rejected: float = 1.0,
               **params: Any) -> Field:
    """Loss and gradient on an ``n x n`` grid of cell centres, in one vectorised autograd call.

    Default ranges: ``(0, 1/pi_ref]`` per axis for ``coords="ratio"`` (002 Fig. 1 with ``pi_ref = 1``:
    the unit square), ``(0, 1]`` for ``"prob"``, ``[-5, 5]`` for ``"reward"``. The grid points are the
    cell centres (``x_i = (i + 1/2)/n`` on the unit square), so no point sits on ``pi = 0`` and the fraction
    of grid points in a region estimates its area fraction.
    """
    p = check_field_params(loss, coords, **params)
    n = _check_int(n, "n", 2, _MAX_GRID)
    rc = _check_pos_float(ref_chosen, "ref_chosen", None)
    rr = _check_pos_float(ref_rejected, "ref_rejected", None)
    if coords != "reward" and (rc > 1 or rr > 1):
        raise ValueError(f"ref_chosen and ref_rejected must lie in (0, 1] (got {rc:g}, {rr:g})")
    if coords == "reward":
        c_lo, c_hi = _range(chosen_range, "chosen_range", (-5.0, 5.0), None, None)
        r_lo, r_hi = _range(rejected_range, "rejected_range", (-5.0, 5.0), None, None)
    else:
        c_max = 1.0 / rc if coords == "ratio" else 1.0
        r_max = 1.0 / rr if coords == "ratio" else 1.0
        c_lo, c_hi = _range(chosen_range, "chosen_range", (0.0, c_max), 0.0, c_max)
        r_lo, r_hi = _range(rejected_range, "rejected_range", (0.0, r_max), 0.0, r_max)
    ca, ra = _axis(n, c_lo, c_hi), _axis(n, r_lo, r_hi)
    C, R = torch.meshgrid(ca, ra, indexing="xy")  # (n_rej, n_ch): C varies along columns
    lrc = torch.full_like(C, math.log(rc))
    lrr = torch.full_like(C, math.log(rr))
    value, gc, gr = _loss_grad_raw(loss, coords, C, R, lrc, lrr, p)
    return Field(loss=loss, coords=coords, params=dict(p), ref=(rc, rr), chosen=ca, rejected=ra,
                 value=value, grad_chosen=gc, grad_rejected=gr)


# ----------------------------------------------------------------------------- flows
@dataclass(frozen=True)
class Flow:
    """Gradient-flow trajectories of one loss from ``S`` start points.

    ``probs`` is ``(n_steps + 1, S, K)``: ``K = 2`` columns ``(pi+, pi-)`` in the box, ``K = 3`` columns
    ``(pi+, pi-, pi_rest)`` on the simplex. ``logits`` (simplex only) is ``(n_steps + 1, S, 3)``.
    ``loss_path`` is ``(n_steps + 1, S)``: the loss at every recorded state.
    """

    loss: str
    space: str
    method: str
    lr: float
    n_steps: int
    params: dict
    starts: torch.Tensor          # (S, 2)
    ref: torch.Tensor             # (S, 2) reference probabilities
    probs: torch.Tensor
    loss_path: torch.Tensor
    logits: torch.Tensor | None = None
    eps: float = 1e-6


def corner_starts(low: float = 0.05, high: float = 0.45) -> torch.Tensor:
    """The four starts of 002 Sec. 3.3.2 / Remark 3 as rows ``(pi+, pi-)``: low/high pi+ x low/high pi-.

    Order: ``(low, low)``, ``(low, high)``, ``(high, low)``, ``(high, high)``. ``high < 1/2`` keeps every
    corner strictly inside the simplex (``pi+ + pi- < 1``) so the same starts serve both spaces.
    """
    low = _check_pos_float(low, "low", 0.5)
    high = _check_pos_float(high, "high", 0.5)
    if not low < high:
        raise ValueError(f"low must be < high (got {low:g}, {high:g})")
    return torch.tensor([[low, low], [low, high], [high, low], [high, high]], dtype=DTYPE)


def _check_starts(starts: Any, need_simplex: bool) -> torch.Tensor:
    s = _tensor(starts, "starts")
    if s.ndim == 1 and s.numel() == 2:
        s = s.reshape(1, 2)
    if s.ndim != 2 or s.shape[1] != 2:
        raise ValueError(f"starts must have shape (S, 2) with rows (pi+, pi-) (got shape {tuple(s.shape)})")
    _check_prob(s, "starts")
    if need_simplex and not bool((s.sum(1) < 1).all()):
        raise ValueError("starts on the simplex need pi+ + pi- < 1 (some mass on the rest)")
    return s


def _check_refs(ref_chosen: Any, ref_rejected: Any, S: int) -> torch.Tensor:
    refs = []
    for v, name in ((ref_chosen, "ref_chosen"), (ref_rejected, "ref_rejected")):
        t = _tensor(v, name)
        if t.numel() == 1:
            t = t.reshape(()).expand(S)
        if t.shape != (S,):
            raise ValueError(f"{name} must be a number or one value per start ({S}) (got shape {tuple(t.shape)})")
        _check_prob(t, name)
        refs.append(t.clone())
    return torch.stack(refs, 1)


def gradient_flows(losses: Sequence[str], starts: Any, *, spaces: Sequence[str] = SPACES, n_steps: int = 1000,
                   lr: Any = None, method: str = "euler", ref_chosen: Any = 1.0, ref_rejected: Any = 1.0,
                   eps: float = 1e-6, params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[tuple[str, str], Flow]:
    """Gradient flows of several losses, in one or both spaces, from every row ``(pi+, pi-)`` of ``starts``.

    Everything is integrated together: per step one forward call of :func:`prefdyn.losses.pair_loss` per
    loss (on all starts of both spaces at once) and ONE backward pass for all of them (the losses share no
    variables, so the gradient of the sum is each flow's own gradient). Returns ``{(loss, space): Flow}``.

    ``space="box"``: descend on ``(pi+, pi-)`` with every step (and RK4 stage) clamped to ``[eps, 1]^2``;
    ``space="simplex"``: descend on the logits of ``softmax([z+, z-, z_rest])`` (module docstring).
    ``lr``: ``None`` (:data:`DEFAULT_LR`), one number for every space, or ``{space: lr}``.
    ``ref_chosen`` / ``ref_rejected``: reference probabilities, one number or one per start (e.g.
    ``starts[:, 0]`` for the usual ``pi_ref = pi_SFT = start``). ``params``: ``{loss: {param: value}}``,
    missing parameters take the defaults of :data:`prefdyn.losses.LOSS_DEFAULTS`.
    """
    if isinstance(losses, str) or not isinstance(losses, Sequence) or len(losses) == 0:
        raise ValueError(f"losses must be a non-empty list of loss names from {', '.join(LOSS_NAMES)} (got {losses!r})")
    if len(set(losses)) != len(losses):
        raise ValueError(f"losses must not repeat a name (got {list(losses)})")
    for name in losses:
        if name == "reward_model":
            raise ValueError("loss 'reward_model' has no probability coordinates; flows take one of "
                             + ", ".join(LOSS_NAMES))
        if not isinstance(name, str) or name not in LOSS_NAMES:
            raise ValueError(f"losses must be names from {', '.join(LOSS_NAMES)} (got {name!r})")
    params = {} if params is None else params
    if not isinstance(params, Mapping) or any(k not in losses for k in params):
        raise ValueError(f"params must map loss names among {list(losses)} to parameter dicts (got {params!r})")
    p = [check_loss_params(name, **dict(params.get(name, {}))) for name in losses]
    if isinstance(spaces, str) or not isinstance(spaces, Sequence) or not spaces or any(sp not in SPACES for sp in spaces) \
            or len(set(spaces)) != len(spaces):
        raise ValueError(f"spaces must be a non-empty list from {', '.join(SPACES)} without repeats (got {spaces!r})")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    n_steps = _check_int(n_steps, "n_steps", 1, _MAX_STEPS)
    if lr is None:
        lrs = {sp: DEFAULT_LR[sp] for sp in spaces}
    elif isinstance(lr, Mapping):
        if any(sp not in lr for sp in spaces):
            raise ValueError(f"lr must give a step size for every space in {list(spaces)} (got {dict(lr)!r})")
        lrs = {sp: _check_pos_float(lr[sp], f"lr[{sp!r}]") for sp in spaces}
    else:
        lrs = {sp: _check_pos_float(lr, "lr") for sp in spaces}
    eps = _check_pos_float(eps, "eps", 0.5)
    s = _check_starts(starts, "simplex" in spaces)
    S, L = s.shape[0], len(losses)
    ref = _check_refs(ref_chosen, ref_rejected, S)

    use_box, use_simplex = "box" in spaces, "simplex" in spaces
    nsp = int(use_box) + int(use_simplex)
    lrc = torch.log(ref[:, 0]).repeat(nsp)          # (nsp * S,) box starts first, then simplex starts
    lrr = torch.log(ref[:, 1]).repeat(nsp)

    def grad(box, z):
        """Values (L, nsp*S) and gradients of all flows at the states box (L, S, 2), z (L, S, 3)."""
        leaves, lps = [], []
        with torch.enable_grad():
            if use_box:
                box = box.detach().clone().requires_grad_(True)
                leaves.append(box)
                lps.append(torch.log(box))
            if use_simplex:
                z = z.detach().clone().requires_grad_(True)
                leaves.append(z)
                lps.append(torch.log_softmax(z, dim=2)[..., :2])
            lp = torch.cat(lps, dim=1)                # (L, nsp*S, 2)
            values = torch.stack([pair_loss(name, lp[i, :, 0], lp[i, :, 1], lrc, lrr, **p[i])
                                  for i, name in enumerate(losses)])
            grads = torch.autograd.grad(values.sum(), leaves)
        grads = list(grads)
        return values.detach(), (grads.pop(0) if use_box else None), (grads.pop(0) if use_simplex else None)

    def advance(box, z, gb, gz, h):
        """state - h * lr * grad, projected (box clamped to [eps, 1]^2)."""
        nb = (box - h * lrs["box"] * gb).clamp(eps, 1.0) if use_box else None
        nz = (z - h * lrs["simplex"] * gz) if use_simplex else None
        return nb, nz

    # Tiny tensors, thousands of steps: intra-op threads only add synchronisation (10x slower on a loaded
    # 2-core machine), so the loop runs single-threaded and restores the setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _integrate(losses, p, spaces, s, ref, grad, advance, n_steps, method, lrs, eps, use_box, use_simplex)
    finally:
        torch.set_num_threads(threads)


def _integrate(losses, p, spaces, s, ref, grad, advance, n_steps, method, lrs, eps, use_box, use_simplex):
    """The time loop of :func:`gradient_flows` (arguments already validated)."""
    S, L = s.shape[0], len(losses)
    box = s.clamp(eps, 1.0).expand(L, S, 2).clone() if use_box else None
    z = torch.log(torch.cat([s, 1 - s.sum(1, keepdim=True)], 1)).expand(L, S, 3).clone() if use_simplex else None
    boxes, zs, values = [box], [z], []
    for _ in range(n_steps):
        v, gb, gz = grad(box, z)
        values.append(v)
        if method == "euler":
            box, z = advance(box, z, gb, gz, 1.0)
        else:  # classical RK4; every stage projected back into the box
            _, gb2, gz2 = grad(*advance(box, z, gb, gz, 0.5))
            _, gb3, gz3 = grad(*advance(box, z, gb2, gz2, 0.5))
            _, gb4, gz4 = grad(*advance(box, z, gb3, gz3, 1.0))
            box, z = advance(box, z,
                             (gb + 2 * gb2 + 2 * gb3 + gb4) / 6 if use_box else None,
                             (gz + 2 * gz2 + 2 * gz3 + gz4) / 6 if use_simplex else None, 1.0)
        boxes.append(box)
        zs.append(z)
    values.append(grad(box, z)[0])
    vals = torch.stack(values)                        # (T+1, L, nsp*S)
    out: dict[tuple[str, str], Flow] = {}
    for i, name in enumerate(losses):
        k = 0
        for sp in SPACES:
            if sp not in spaces:
                continue
            v = vals[:, i, k * S:(k + 1) * S]
            k += 1
            if sp == "box":
                probs, logits = torch.stack([b[i] for b in boxes]), None
            else:
                logits = torch.stack([zz[i] for zz in zs])
                probs = torch.softmax(logits, dim=2)
            if not bool(torch.isfinite(probs).all()) or not bool(torch.isfinite(v).all()):
                raise FloatingPointError(f"{name}: the {sp} flow left the finite numbers; reduce lr (was {lrs[sp]:g})")
            out[(name, sp)] = Flow(loss=name, space=sp, method=method, lr=lrs[sp], n_steps=n_steps,
                                   params=dict(p[i]), starts=s, ref=ref, probs=probs, loss_path=v,
                                   logits=logits, eps=eps)
    return out


def gradient_flow(loss: str, starts: Any, *, space: str = "box", n_steps: int = 1000, lr: float | None = None,
                  method: str = "euler", ref_chosen: Any = 1.0, ref_rejected: Any = 1.0, eps: float = 1e-6,
                  **params: Any) -> Flow:
    """The flow of one loss in one ``space`` (see :func:`gradient_flows`); ``params`` are the loss's."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)} (got {space!r})")
    if loss not in LOSS_NAMES:  # checked here too so the message names `loss`, not `losses`
        if loss == "reward_model":
            raise ValueError("loss 'reward_model' has no probability coordinates; flows take one of "
                             + ", ".join(LOSS_NAMES))
        raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)} (got {loss!r})")
    flows = gradient_flows([loss], starts, spaces=[space], n_steps=n_steps,
                           lr=None if lr is None else {space: lr}, method=method, ref_chosen=ref_chosen,
                           ref_rejected=ref_rejected, eps=eps, params={loss: params})
    return flows[(loss, space)]


def region_stats(flow: Flow, chosen_target: float = 0.9, rejected_target: float = 0.01,
                 stationary_tol: float = 1e-9) -> list[dict]:
    """Per start: steps until ``pi+ >= chosen_target`` and until ``pi- <= rejected_target`` (``-1``: never
    within ``flow.n_steps``), the end point, the lowest ``pi+`` on the way, and where the flow ends.

    ``end`` is ``"preferred"`` (final ``pi+ >= chosen_target``), ``"unlearning only"`` (final
    ``pi- <= rejected_target`` but ``pi+`` below target: 000's degradation into unlearning),
    ``"stationary"`` (neither, and the last step moved no probability by more than ``stationary_tol``: the
    flow has reached a minimum of its loss short of the target, as IPO does at its target margin) or
    ``"stalled"`` (neither, still moving). ``stationary`` says separately whether the flow has stopped
    moving (whatever its ``end``). ``final_rest`` (simplex only) is the mass on everything else (000's
    dispersion); in the box it is ``None``.
    """
    if not isinstance(flow, Flow):
        raise ValueError(f"flow must be a Flow from gradient_flow (got {type(flow).__name__})")
    ct = _check_pos_float(chosen_target, "chosen_target", 1.0 + 1e-12)
    rt = _check_pos_float(rejected_target, "rejected_target", 1.0 + 1e-12)
    if ct > 1 or rt > 1:
        raise ValueError(f"chosen_target and rejected_target must lie in (0, 1] (got {ct:g}, {rt:g})")
    pc, pr = flow.probs[..., 0], flow.probs[..., 1]        # (T+1, S)
    hit_c, hit_r = pc >= ct, pr <= rt
    first_c = torch.where(hit_c.any(0), hit_c.to(torch.int64).argmax(0), torch.full_like(hit_c[0], -1, dtype=torch.int64))
    first_r = torch.where(hit_r.any(0), hit_r.to(torch.int64).argmax(0), torch.full_like(hit_r[0], -1, dtype=torch.int64))
    tol = _check_pos_float(stationary_tol, "stationary_tol", 1.0)
    final = flow.probs[-1]
    min_c = pc.min(0).values
    if flow.probs.shape[0] > 1:
        last_move = (flow.probs[-1] - flow.probs[-2]).abs().amax(-1)          # (S,)
    else:
        last_move = torch.full((flow.probs.shape[1],), float("inf"), dtype=flow.probs.dtype)
    out = []
    for i in range(flow.starts.shape[0]):  # building the per-start dicts only; the work above is vectorised
        fc, fr = float(final[i, 0]), float(final[i, 1])
        end = ("preferred" if fc >= ct else "unlearning only" if fr <= rt
               else "stationary" if float(last_move[i]) <= tol else "stalled")
        out.append({
            "start_chosen": float(flow.starts[i, 0]),
            "start_rejected": float(flow.starts[i, 1]),
            "steps_to_chosen": int(first_c[i]),
            "steps_to_rejected": int(first_r[i]),
            "final_chosen": fc,
            "final_rejected": fr,
            "final_rest": float(final[i, 2]) if flow.space == "simplex" else None,
            "min_chosen": float(min_c[i]),
            "end": end,
            "stationary": bool(float(last_move[i]) <= tol),
        })
    return out


# ----------------------------------------------------------------------------- drawing
_AXIS_LABELS = {
    "ratio": (r"$x_1 = \pi^+/\pi_{\mathrm{ref}}^+$", r"$x_2 = \pi^-/\pi_{\mathrm{ref}}^-$"),
    "prob": (r"$\pi^+$ (chosen)", r"$\pi^-$ (rejected)"),
    "reward": (r"$r^+$ (chosen reward)", r"$r^-$ (rejected reward)"),
}


def axis_labels(coords: str) -> tuple[str, str]:
    """The (x, y) axis labels of a field in ``coords``."""
    if coords not in _AXIS_LABELS:
        raise ValueError(f"coords must be one of {', '.join(COORDS)} (got {coords!r})")
    return _AXIS_LABELS[coords]


def plot_landscape(ax, fld: Field, *, norm=None, levels: int = 30, cmap: str = "viridis", labels: bool = True):
    """Filled contours of the loss on ``ax``; returns the contour set (pass it to ``colorbar``)."""
    cs = ax.contourf(fld.chosen.numpy(), fld.rejected.numpy(), fld.value.numpy(), levels=levels, norm=norm,
                     cmap=cmap, extend="both" if norm is not None else "neither")
    if labels:
        xl, yl = axis_labels(fld.coords)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    return cs


def field_cmap():
    """The colour map of gradient magnitudes: ``plasma`` without its palest yellow (lines stay visible on
    white)."""
    import matplotlib
    import matplotlib.colors as mcolors
    import numpy as np

    return mcolors.ListedColormap(matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, 256)), name="prefdyn_field")


def plot_field(ax, fld: Field, *, norm=None, cmap=None, density: float = 1.0, background: bool = False,
               labels: bool = True):
    """Streamlines of the descent direction ``-grad l`` coloured by ``|grad l|`` (log colour scale unless a
    ``norm`` is given; default colour map :func:`field_cmap`), optionally over a faint magnitude
    background. Returns the streamlines' ``LineCollection`` (a mappable for ``colorbar``). The streamline
    spacing does not encode speed; the colour carries the magnitude."""
    import matplotlib.colors as mcolors
    import numpy as np

    cmap = field_cmap() if cmap is None else cmap
    mag = fld.magnitude.numpy()
    if norm is None:
        pos = mag[mag > 0]
        lo, hi = (float(pos.min()), float(pos.max())) if pos.size else (1e-12, 1.0)
        norm = mcolors.LogNorm(vmin=lo, vmax=max(hi, lo * 10))
    x, y = fld.chosen.numpy(), fld.rejected.numpy()
    u, v = -fld.grad_chosen.numpy(), -fld.grad_rejected.numpy()
    shown = np.clip(mag, norm.vmin, norm.vmax)
    if background:
        ax.pcolormesh(x, y, shown, norm=norm, cmap=cmap, alpha=0.3, shading="nearest", rasterized=True)
    # Unit directions so streamplot's integration is not dominated by the diverging edges.
    m = np.where(mag > 0, mag, 1.0)
    sp = ax.streamplot(x, y, u / m, v / m, color=shown, norm=norm, cmap=cmap, density=density, linewidth=1.0,
                       arrowsize=0.8)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    if labels:
        xl, yl = axis_labels(fld.coords)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    return sp.lines
