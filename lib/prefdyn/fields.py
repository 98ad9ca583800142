"""Loss landscapes, gradient fields and gradient flows over (pi+, pi-) for every loss of the book.

This reproduces and extends the field-theory view of 002 (Feng et al.): the DPO loss as a function of the
two probability ratios ``x1 = pi(y_w)/pi_ref(y_w)`` and ``x2 = pi(y_l)/pi_ref(y_l)`` (002 eq. 1), its
gradient vector field (002 Theorem 1, eq. 2) and the reading of that field (002 Corollary 1, Remarks 1-3,
Fig. 1), and it runs the gradient flows the figure only suggests.

Every loss value comes from the registry of :mod:`prefdyn.losses` (the one source of truth): a field or
flow takes any registered loss (the book's :data:`prefdyn.losses.LOSS_NAMES` and any added with
:func:`prefdyn.losses.register`) plus ``"reward_model"`` (:func:`prefdyn.losses.reward_model_loss`). Each
entry point looks the loss up once with :func:`prefdyn.losses.get`, validates its parameters once
(:meth:`prefdyn.losses.Loss.check`) and then calls the unchecked ``Loss.fn`` (on every step of a flow).
Gradients are taken by autograd, vectorised: one backward pass of ``loss.sum()`` over the whole grid gives
every point's own gradient because pairs do not interact.

Naming: ``lr`` is always a learning rate (step size). Log-probabilities are ``lp_c``/``lp_r`` (policy,
chosen/rejected) and ``ref_lp_c``/``ref_lp_r`` (reference); ``ref_chosen``/``ref_rejected`` are the
reference PROBABILITIES.

Coordinates (``coords``)
------------------------
Every function that takes ``coords`` defaults to ``"prob"``: it is the coordinate system of every loss of
the book (000 Sec. 3.1), of the flows and of the chapter's small multiples, and the points need no
reference to be valid. 002's ratios are asked for explicitly (``coords="ratio"``); with ``pi_ref = 1`` the
two coincide.

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

What the ``gradient-fields`` chapter reads off the fields and flows
------------------------------------------------------------------
Each returns plain data (dicts, frozen dataclasses with ``as_dict``) that the chapter shows as
:class:`prefdyn.tables.Table` and saves: :func:`loss_params` (the chapter's parameters of every loss),
:func:`dpo_ratio_checks` (002 Cor. 1, Remarks 1-2), :func:`corner_claims` (002 Sec. 3.2, 3.3.2 and Remark 3
at the corners), :func:`field_summary` (ratio fractions, flat and balanced fields), :func:`region_statistics`
(per-start statistics of every flow), :func:`classify_flow` (escape / partial / stall / stationary short of
the target / step artefact, with :func:`first_step` and :func:`direction_changes`) and
:func:`simplex_dispersion` (000's dispersion; DPO's fixed rest logit). The ``plot_*`` helpers at the end draw
the chapter's figures at the width of the book's content column.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from .losses import LOSS_NAMES, LOSS_SOURCES, get as get_loss, loss_params_from, names as loss_names, reward_model_loss
from .validate import Range, check_choice, check_int, check_number, check_positive, num

__all__ = [
    "FIELD_LOSSES",
    "field_losses",
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
    "radius_invariant",
    "radius_drift",
    "exact_box_end",
    "floor_dependence",
    "floor_verdicts",
    "floor_table",
    "penalty_active_fraction",
    "corner_starts",
    "plot_landscape",
    "plot_field",
    "field_cmap",
    "axis_labels",
    "CHAPTER_PARAMS",
    "loss_params",
    "parameter_table",
    "dpo_ratio_checks",
    "CornerClaim",
    "CORNER_READINGS",
    "corner_points",
    "corner_claims",
    "field_summary",
    "CATEGORIES",
    "CATEGORY_LABELS",
    "region_statistics",
    "direction_changes",
    "first_step",
    "FlowVerdict",
    "low_chosen_starts",
    "classify_flow",
    "classify_flows",
    "verdict_summary",
    "simplex_dispersion",
    "per_start_table",
    "START_COLORS",
    "FIG_WIDTH",
    "plot_dpo_overview",
    "plot_landscapes",
    "plot_fields",
    "plot_ratio_maps",
    "plot_flows",
    "plot_start_over_steps",
]

#: The book's losses with a field: every loss of :data:`prefdyn.losses.LOSS_NAMES` plus the reward-model loss
#: (reward coordinates). A loss added with :func:`prefdyn.losses.register` has a field too
#: (:func:`field_losses` lists every loss a field takes now).
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
#: A probability: ``(0, 1]``. Closed upper bounds of tensors admit a relative ``1e-12`` of rounding
#: (``x = 1/pi_ref`` computed in floating point).
_PROB = Range(low=0.0, high=1.0, low_open=True)
_ROUNDING = 1e-12


def field_losses() -> tuple[str, ...]:
    """Every loss a field takes now: every registered loss of :mod:`prefdyn.losses` (the book's and any added
    with :func:`prefdyn.losses.register`) plus ``"reward_model"``."""
    return tuple(n for n in loss_names() if n != "reward_model") + ("reward_model",)


def _flow_losses() -> tuple[str, ...]:
    """Every loss a flow takes (probability coordinates): every registered loss."""
    return tuple(n for n in loss_names() if n != "reward_model")


# ----------------------------------------------------------------------------- validation helpers
# Numbers, integers and choices are checked with prefdyn.validate; only the checks of this module's own
# objects (tensors of probabilities, starts, ranges, Fields and Flows) live here, each written once.
def _short(x: Any, limit: int = 80) -> str:
    """``repr(x)`` on one line, at most ``limit`` characters (messages stay one line)."""
    text = " ".join(repr(x).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _no_probability_coords(name: str) -> ValueError:
    return ValueError(f"{name}: expected a loss with probability coordinates (one of "
                      f"{', '.join(_flow_losses())}), got 'reward_model' (reward coordinates only)")


def _resolve(loss: Any, coords: str | None, params: Mapping[str, Any]):
    """``(loss function, validated parameters)`` of a field's loss: the registry's unchecked ``Loss.fn``
    (or :func:`prefdyn.losses.reward_model_loss`) and its parameters checked once, defaults filled."""
    check_choice("loss", loss, field_losses())
    if coords is not None:
        check_choice("coords", coords, COORDS)
        if loss == "reward_model" and coords != "reward":
            raise ValueError(f"coords: expected 'reward' for loss 'reward_model', got {coords!r}")
        if loss != "reward_model" and coords == "reward":
            raise ValueError(f"coords: expected 'ratio' or 'prob' for loss {loss!r} ('reward' is only the reward "
                             "model's), got 'reward'")
    if loss == "reward_model":
        if params:
            raise ValueError(f"reward_model: expected no parameters, got {', '.join(params)}")
        return reward_model_loss, {}
    entry = get_loss(loss)
    return entry.fn, entry.check(**params)


def check_field_params(loss: Any, coords: str | None = None, **params: Any) -> dict[str, Any]:
    """Validate ``loss`` (a registered loss of :mod:`prefdyn.losses` or ``"reward_model"``:
    :func:`field_losses`), ``coords`` and the loss parameters.

    Returns the loss parameters with defaults filled (``{}`` for ``"reward_model"``, which has none).
    Raises a one-line ``ValueError`` naming the argument otherwise.
    """
    return _resolve(loss, coords, params)[1]


def _expect(name: str, v: Any, cls: type, what: str) -> None:
    if not isinstance(v, cls):
        raise ValueError(f"{name}: expected {what}, got {type(v).__name__}")


def _tensor(x: Any, name: str) -> torch.Tensor:
    """float64 tensor from ``x``; ``ValueError`` naming ``name`` if not numeric, empty or not finite."""
    if isinstance(x, (bool, str, bytes)):
        raise ValueError(f"{name}: expected a number or an array of numbers, got {_short(x)}")
    try:
        t = x.detach().to(DTYPE) if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=DTYPE)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name}: expected a number or an array of numbers, got {_short(x)}") from None
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty array, got an empty one")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, got nan or inf")
    return t


def _with_rounding(rng: Range) -> Range:
    """``rng`` with a closed upper bound widened by a relative ``1e-12`` (values computed in floating point)."""
    if rng.high is None or rng.high_open:
        return rng
    return Range(low=rng.low, high=rng.high * (1 + _ROUNDING), low_open=rng.low_open)


def _check_in(t: torch.Tensor, name: str, rng: Range, what: str = "values") -> None:
    """Every element of the finite tensor ``t`` in ``rng`` (:func:`_with_rounding`), else
    ``ValueError("<name>: expected <what> in ..., got values from <min> to <max>")``."""
    if not _with_rounding(rng).contains_all(t):
        raise ValueError(f"{name}: expected {what} {rng.text()}, got values from {num(float(t.min()))} to "
                         f"{num(float(t.max()))}")


# ----------------------------------------------------------------------------- pointwise loss and gradient
def _loss_grad_raw(fn, coords: str, u_c: torch.Tensor, u_r: torch.Tensor, ref_lp_c: torch.Tensor,
                   ref_lp_r: torch.Tensor, params: Mapping[str, Any]):
    """No validation: value and gradient of the unchecked loss function ``fn`` w.r.t. ``(u_c, u_r)``, the
    chosen and rejected coordinates; ``ref_lp_*`` are the reference LOG-probs."""
    u_c = u_c.detach().clone().requires_grad_(True)
    u_r = u_r.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if coords == "reward":
            value = fn(u_c, u_r)
        else:
            lp_c, lp_r = torch.log(u_c), torch.log(u_r)
            if coords == "ratio":  # x = pi / pi_ref  ->  log pi = log x + log pi_ref
                lp_c, lp_r = lp_c + ref_lp_c, lp_r + ref_lp_r
            value = fn(lp_c, lp_r, ref_lp_c, ref_lp_r, **params)
        g_c, g_r = torch.autograd.grad(value.sum(), (u_c, u_r))
    return value.detach(), g_c, g_r


def loss_and_grad(loss: str, chosen: Any, rejected: Any, *, coords: str = "prob", ref_chosen: Any = 1.0,
                  ref_rejected: Any = 1.0, **params: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and its gradient at the points ``(chosen, rejected)``, any broadcastable shapes, float64.

    ``chosen``/``rejected`` are ``pi+``/``pi-`` (``coords="prob"``, the default of every function of this
    module: see the module docstring), 002's ``x1``/``x2`` (``"ratio"``) or ``r+``/``r-`` (``"reward"``,
    only for ``loss="reward_model"``). ``ref_chosen``/``ref_rejected`` are the reference PROBABILITIES
    ``pi_ref`` in ``(0, 1]`` (ignored for rewards). Returns ``(loss, dl/d chosen, dl/d rejected)``, each of
    the broadcast shape, from one autograd call.
    """
    fn, p = _resolve(loss, coords, params)
    c, r = _tensor(chosen, "chosen"), _tensor(rejected, "rejected")
    ref_c, ref_r = _tensor(ref_chosen, "ref_chosen"), _tensor(ref_rejected, "ref_rejected")
    try:
        c, r, ref_c, ref_r = torch.broadcast_tensors(c, r, ref_c, ref_r)
    except RuntimeError:
        raise ValueError("chosen, rejected, ref_chosen, ref_rejected: expected broadcastable shapes, got "
                         + ", ".join(str(tuple(t.shape)) for t in (c, r, ref_c, ref_r))) from None
    if coords != "reward":
        _check_in(ref_c, "ref_chosen", _PROB)
        _check_in(ref_r, "ref_rejected", _PROB)
        if coords == "prob":
            _check_in(c, "chosen", _PROB, "pi+")
            _check_in(r, "rejected", _PROB, "pi-")
        else:  # x in (0, 1/pi_ref]  <=>  pi = x * pi_ref in (0, 1]
            _check_in(c * ref_c, "chosen", _PROB, "pi+ = x1 * ref_chosen")
            _check_in(r * ref_r, "rejected", _PROB, "pi- = x2 * ref_rejected")
    return _loss_grad_raw(fn, coords, c, r, torch.log(ref_c), torch.log(ref_r), p)


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
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Iterable):
        raise ValueError(f"thresholds: expected a list of numbers > 0, got {_short(thresholds)}")
    ths = [check_positive("thresholds", th) for th in thresholds]
    t = ratio.detach().to(DTYPE) if isinstance(ratio, torch.Tensor) else torch.as_tensor(ratio, dtype=DTYPE)
    if t.numel() == 0:
        raise ValueError("ratio: expected a non-empty array, got an empty one")
    return {th: float((t > th).to(DTYPE).mean()) for th in ths}


def dpo_ratio_area(k: float, a: float = 1.0, b: float = 1.0) -> float:
    """Exact area fraction of the box ``(0, a] x (0, b]`` where DPO's ratio ``x1/x2`` exceeds ``k``.

    From 002 Cor. 1: ``|dl/dx2| / |dl/dx1| = x1/x2 > k`` iff ``x2 < x1/k``: a triangle of area
    ``a^2/(2k)`` when ``a/k <= b`` (else the box minus the other triangle), divided by ``a b``.
    """
    k, a, b = check_positive("k", k), check_positive("a", a), check_positive("b", b)
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


def _range(rng: Any, name: str, default: tuple[float, float], bounds: Range) -> tuple[float, float]:
    """An axis range ``(low, high)`` with ``low < high``, both in ``bounds`` (closed upper bound with a
    relative ``1e-12`` of rounding, :func:`_with_rounding`); ``None`` gives ``default``."""
    if rng is None:
        return default
    inside = f", both {bounds.text()}" if bounds.text() else ""
    bad = ValueError(f"{name}: expected a pair (low, high) of numbers with low < high{inside}, got {_short(rng)}")
    if isinstance(rng, (str, bytes)):
        raise bad
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError, RuntimeError):
        raise bad from None
    test = _with_rounding(bounds)
    if not (test.contains(lo) and test.contains(hi) and lo < hi):
        raise bad
    return lo, hi


def field_grid(loss: str, n: int = 101, *, coords: str = "prob", chosen_range: Any = None,
               rejected_range: Any = None, ref_chosen: float = 1.0, ref_rejected: float = 1.0,
               **params: Any) -> Field:
    """Loss and gradient on an ``n x n`` grid of cell centres, in one vectorised autograd call.

    ``coords`` defaults to ``"prob"``, as in :func:`loss_and_grad` (the module docstring says why); 002's
    Fig. 1 is ``coords="ratio"``. Default ranges: ``(0, 1/pi_ref]`` per axis for ``coords="ratio"`` (002
    Fig. 1 with ``pi_ref = 1``: the unit square), ``(0, 1]`` for ``"prob"``, ``[-5, 5]`` for ``"reward"``.
    The grid points are the cell centres (``x_i = (i + 1/2)/n`` on the unit square), so no point sits on
    ``pi = 0`` and the fraction of grid points in a region estimates its area fraction. ``ref_chosen`` and
    ``ref_rejected`` are reference probabilities in ``(0, 1]`` (unused for rewards).
    """
    fn, p = _resolve(loss, coords, params)
    n = check_int("n", n, 2, _MAX_GRID)
    ref_c = check_number("ref_chosen", ref_chosen, 0.0, 1.0, low_open=True)
    ref_r = check_number("ref_rejected", ref_rejected, 0.0, 1.0, low_open=True)
    if coords == "reward":
        c_lo, c_hi = _range(chosen_range, "chosen_range", (-5.0, 5.0), Range())
        r_lo, r_hi = _range(rejected_range, "rejected_range", (-5.0, 5.0), Range())
    else:
        c_max = 1.0 / ref_c if coords == "ratio" else 1.0
        r_max = 1.0 / ref_r if coords == "ratio" else 1.0
        c_lo, c_hi = _range(chosen_range, "chosen_range", (0.0, c_max), Range(low=0.0, high=c_max))
        r_lo, r_hi = _range(rejected_range, "rejected_range", (0.0, r_max), Range(low=0.0, high=r_max))
    ca, ra = _axis(n, c_lo, c_hi), _axis(n, r_lo, r_hi)
    C, R = torch.meshgrid(ca, ra, indexing="xy")  # (n_rej, n_ch): C varies along columns
    ref_lp_c = torch.full_like(C, math.log(ref_c))
    ref_lp_r = torch.full_like(C, math.log(ref_r))
    value, gc, gr = _loss_grad_raw(fn, coords, C, R, ref_lp_c, ref_lp_r, p)
    return Field(loss=loss, coords=coords, params=dict(p), ref=(ref_c, ref_r), chosen=ca, rejected=ra,
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
    #: box only, per start ``(S,)``: the first recorded state (step) at which a coordinate sits on the
    #: floor ``eps`` (``floor_step``) or on the ceiling 1 (``ceiling_step``) because the clamp acted; ``-1``:
    #: never within ``n_steps``. ``None`` on the simplex (no clamp).
    floor_step: torch.Tensor | None = None
    ceiling_step: torch.Tensor | None = None
    #: the flow was run with ``stop_at_floor=True``: a start whose step would reach the floor keeps its
    #: last state above it from then on (``floor_step`` is that step)
    stop_at_floor: bool = False

    @property
    def floor(self) -> float:
        """The floor of the box, ``eps``: the clamp's lower bound (see :func:`gradient_flows`)."""
        return self.eps


def corner_starts(low: float = 0.05, high: float = 0.45) -> torch.Tensor:
    """The four starts of 002 Sec. 3.3.2 / Remark 3 as rows ``(pi+, pi-)``: low/high pi+ x low/high pi-.

    Order: ``(low, low)``, ``(low, high)``, ``(high, low)``, ``(high, high)``. ``high < 1/2`` keeps every
    corner strictly inside the simplex (``pi+ + pi- < 1``) so the same starts serve both spaces.
    """
    low = check_number("low", low, 0.0, 0.5, low_open=True, high_open=True)
    high = check_number("high", high, 0.0, 0.5, low_open=True, high_open=True)
    if not low < high:
        raise ValueError(f"low: expected a number below high = {num(high)}, got {num(low)}")
    return torch.tensor([[low, low], [low, high], [high, low], [high, high]], dtype=DTYPE)


def _check_starts(starts: Any, need_simplex: bool) -> torch.Tensor:
    s = _tensor(starts, "starts")
    if s.ndim == 1 and s.numel() == 2:
        s = s.reshape(1, 2)
    if s.ndim != 2 or s.shape[1] != 2:
        raise ValueError(f"starts: expected shape (S, 2) with rows (pi+, pi-), got shape {tuple(s.shape)}")
    _check_in(s, "starts", _PROB)
    if need_simplex and not bool((s.sum(1) < 1).all()):
        raise ValueError("starts: expected pi+ + pi- < 1 in every row on the simplex (some mass on the rest), "
                         f"got a row summing to {num(float(s.sum(1).max()))}")
    return s


def _check_refs(ref_chosen: Any, ref_rejected: Any, S: int) -> torch.Tensor:
    refs = []
    for v, name in ((ref_chosen, "ref_chosen"), (ref_rejected, "ref_rejected")):
        t = _tensor(v, name)
        if t.numel() == 1:
            t = t.reshape(()).expand(S)
        if t.shape != (S,):
            raise ValueError(f"{name}: expected a number or one value per start ({S}), got shape {tuple(t.shape)}")
        _check_in(t, name, _PROB)
        refs.append(t.clone())
    return torch.stack(refs, 1)


def gradient_flows(losses: Sequence[str], starts: Any, *, spaces: Sequence[str] = SPACES, n_steps: int = 1000,
                   lr: Any = None, method: str = "euler", ref_chosen: Any = 1.0, ref_rejected: Any = 1.0,
                   eps: float = 1e-6, params: Mapping[str, Mapping[str, Any]] | None = None,
                   stop_at_floor: bool = False) -> dict[tuple[str, str], Flow]:
    """Gradient flows of several losses, in one or both spaces, from every row ``(pi+, pi-)`` of ``starts``.

    ``losses``: names of registered losses (:func:`prefdyn.losses.names`, the book's and any added with
    :func:`prefdyn.losses.register`). Everything is validated once, before the first step: each loss is
    looked up with :func:`prefdyn.losses.get` and its parameters checked with ``Loss.check``; every step
    then calls the unchecked ``Loss.fn``. Everything is integrated together: per step one forward call per
    loss (on all starts of both spaces at once) and ONE backward pass for all of them (the losses share no
    variables, so the gradient of the sum is each flow's own gradient). Returns ``{(loss, space): Flow}``.

    ``space="box"``: descend on ``(pi+, pi-)`` with every step (and RK4 stage) clamped to ``[eps, 1]^2``;
    ``space="simplex"``: descend on the logits of ``softmax([z+, z-, z_rest])`` (module docstring).
    ``lr``: ``None`` (:data:`DEFAULT_LR`), one number for every space, or ``{space: lr}``.
    ``ref_chosen`` / ``ref_rejected``: reference probabilities, one number or one per start (e.g.
    ``starts[:, 0]`` for the usual ``pi_ref = pi_SFT = start``). ``params``: ``{loss: {param: value}}``,
    missing parameters take the defaults of :data:`prefdyn.losses.LOSS_DEFAULTS`.

    The floor ``eps`` of the box is a modelling choice, not a property of the loss: for a loss of the
    margin alone the exact box flow keeps ``pi+^2 + pi-^2`` (:func:`radius_invariant`) and ends on that
    circle, so where a clamped flow ends beyond it is set by the floor (:func:`exact_box_end`,
    :func:`floor_dependence`). Every box flow records per start the step at which the floor and the
    ceiling first acted (``Flow.floor_step``, ``Flow.ceiling_step``); ``stop_at_floor=True`` stops a start
    there instead (it keeps its last state above the floor).
    """
    if not isinstance(stop_at_floor, bool):
        raise ValueError(f"stop_at_floor: expected True or False, got {_short(stop_at_floor)}")
    if isinstance(losses, (str, bytes)) or not isinstance(losses, Sequence) or len(losses) == 0:
        raise ValueError(f"losses: expected a non-empty list of loss names, got {_short(losses)}")
    for name in losses:
        if name == "reward_model":
            raise _no_probability_coords("losses")
        check_choice("losses", name, _flow_losses())
    if len(set(losses)) != len(losses):
        raise ValueError(f"losses: expected each loss once, got a repeated name in {list(losses)}")
    params = {} if params is None else params
    if not isinstance(params, Mapping) or any(k not in losses or not isinstance(v, Mapping) for k, v in params.items()):
        raise ValueError(f"params: expected a dict mapping loss names among {list(losses)} to parameter dicts, "
                         f"got {_short(params)}")
    entries = [get_loss(name) for name in losses]
    p = [e.check(**dict(params.get(name, {}))) for e, name in zip(entries, losses)]   # validated once
    fns = [e.fn for e in entries]                                                      # unchecked, per step
    if isinstance(spaces, (str, bytes)) or not isinstance(spaces, Sequence) or not spaces \
            or any(sp not in SPACES for sp in spaces) or len(set(spaces)) != len(spaces):
        raise ValueError(f"spaces: expected a non-empty list from {', '.join(SPACES)} without repeats, "
                         f"got {_short(spaces)}")
    check_choice("method", method, METHODS)
    n_steps = check_int("n_steps", n_steps, 1, _MAX_STEPS)
    if lr is None:
        lrs = {sp: DEFAULT_LR[sp] for sp in spaces}
    elif isinstance(lr, Mapping):
        if any(sp not in lr for sp in spaces):
            raise ValueError(f"lr: expected a step size for every space in {list(spaces)}, got {_short(dict(lr))}")
        lrs = {sp: check_positive(f"lr[{sp!r}]", lr[sp]) for sp in spaces}
    else:
        lrs = {sp: check_positive("lr", lr) for sp in spaces}
    eps = check_number("eps", eps, 0.0, 0.5, low_open=True, high_open=True)
    s = _check_starts(starts, "simplex" in spaces)
    S = s.shape[0]
    ref = _check_refs(ref_chosen, ref_rejected, S)

    use_box, use_simplex = "box" in spaces, "simplex" in spaces
    nsp = int(use_box) + int(use_simplex)
    ref_lp_c = torch.log(ref[:, 0]).repeat(nsp)        # (nsp * S,) box starts first, then simplex starts
    ref_lp_r = torch.log(ref[:, 1]).repeat(nsp)

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
            values = torch.stack([fn(lp[i, :, 0], lp[i, :, 1], ref_lp_c, ref_lp_r, **p[i])
                                  for i, fn in enumerate(fns)])
            grads = torch.autograd.grad(values.sum(), leaves)
        grads = list(grads)
        return values.detach(), (grads.pop(0) if use_box else None), (grads.pop(0) if use_simplex else None)

    clamped = {}  # the last advance's (below floor, above ceiling) flags per (loss, start), box only

    def advance(box, z, gb, gz, h):
        """state - h * lr * grad, projected (box clamped to [eps, 1]^2; the clamp flags kept)."""
        nb = nz = None
        if use_box:
            raw = box - h * lrs["box"] * gb
            clamped["low"] = (raw < eps).any(-1) | clamped.get("low", False)
            clamped["high"] = (raw > 1.0).any(-1) | clamped.get("high", False)
            nb = raw.clamp(eps, 1.0)
        if use_simplex:
            nz = z - h * lrs["simplex"] * gz
        return nb, nz

    # Tiny tensors, thousands of steps: intra-op threads only add synchronisation (10x slower on a loaded
    # 2-core machine), so the loop runs single-threaded and restores the setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _integrate(losses, p, spaces, s, ref, grad, advance, n_steps, method, lrs, eps, use_box, use_simplex,
                          clamped, stop_at_floor)
    finally:
        torch.set_num_threads(threads)


def _integrate(losses, p, spaces, s, ref, grad, advance, n_steps, method, lrs, eps, use_box, use_simplex,
               clamped, stop_at_floor):
    """The time loop of :func:`gradient_flows` (arguments already validated). A step (any RK4 stage
    included) that the clamp had to project marks its start's ``floor_step`` / ``ceiling_step``."""
    S, L = s.shape[0], len(losses)
    box = s.clamp(eps, 1.0).expand(L, S, 2).clone() if use_box else None
    z = torch.log(torch.cat([s, 1 - s.sum(1, keepdim=True)], 1)).expand(L, S, 3).clone() if use_simplex else None
    never = torch.full((L, S), -1, dtype=torch.int64)
    floor_step, ceiling_step = never.clone(), never.clone()
    boxes, zs, values = [box], [z], []
    for k in range(1, n_steps + 1):
        v, gb, gz = grad(box, z)
        values.append(v)
        old = box
        clamped.clear()
        if method == "euler":
            box, z = advance(box, z, gb, gz, 1.0)
        else:  # classical RK4; every stage projected back into the box
            _, gb2, gz2 = grad(*advance(box, z, gb, gz, 0.5))
            _, gb3, gz3 = grad(*advance(box, z, gb2, gz2, 0.5))
            _, gb4, gz4 = grad(*advance(box, z, gb3, gz3, 1.0))
            box, z = advance(box, z,
                             (gb + 2 * gb2 + 2 * gb3 + gb4) / 6 if use_box else None,
                             (gz + 2 * gz2 + 2 * gz3 + gz4) / 6 if use_simplex else None, 1.0)
        if use_box:
            floor_step = torch.where((floor_step < 0) & clamped["low"], k, floor_step)
            ceiling_step = torch.where((ceiling_step < 0) & clamped["high"], k, ceiling_step)
            if stop_at_floor:  # a start that reached the floor keeps its last state above it
                box = torch.where((floor_step >= 0).unsqueeze(-1), old, box)
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
            box_only = sp == "box"
            out[(name, sp)] = Flow(loss=name, space=sp, method=method, lr=lrs[sp], n_steps=n_steps,
                                   params=dict(p[i]), starts=s, ref=ref, probs=probs, loss_path=v,
                                   logits=logits, eps=eps, floor_step=floor_step[i].clone() if box_only else None,
                                   ceiling_step=ceiling_step[i].clone() if box_only else None,
                                   stop_at_floor=stop_at_floor and box_only)
    return out


def gradient_flow(loss: str, starts: Any, *, space: str = "box", n_steps: int = 1000, lr: float | None = None,
                  method: str = "euler", ref_chosen: Any = 1.0, ref_rejected: Any = 1.0, eps: float = 1e-6,
                  stop_at_floor: bool = False, **params: Any) -> Flow:
    """The flow of one loss in one ``space`` (see :func:`gradient_flows`); ``params`` are the loss's."""
    check_choice("space", space, SPACES)
    if loss == "reward_model":  # checked here too so the message names `loss`, not `losses`
        raise _no_probability_coords("loss")
    check_choice("loss", loss, _flow_losses())
    flows = gradient_flows([loss], starts, spaces=[space], n_steps=n_steps,
                           lr=None if lr is None else {space: lr}, method=method, ref_chosen=ref_chosen,
                           ref_rejected=ref_rejected, eps=eps, params={loss: params},
                           stop_at_floor=stop_at_floor)
    return flows[(loss, space)]


def region_stats(flow: Flow, chosen_target: float = 0.9, rejected_target: float = 0.01,
                 stationary_tol: float = 1e-9) -> list[dict]:
    """Per start: steps until ``pi+ >= chosen_target`` and until ``pi- <= rejected_target`` (``-1``: never
    within ``flow.n_steps``), the end point, the lowest ``pi+`` on the way, and where the flow ends.

    ``end`` is ``"preferred"`` (final ``pi+ >= chosen_target``), ``"unlearning only"`` (final
    ``pi- <= rejected_target`` but ``pi+`` below target: 000's degradation into unlearning),
    ``"floor"`` (a flow run with ``stop_at_floor=True`` that reached the floor before ``pi+`` reached its
    target: it stopped there), ``"stationary"`` (neither, and the last step moved no probability by more than ``stationary_tol``: the
    flow has reached a minimum of its loss short of the target, as IPO does at its target margin) or
    ``"still moving"`` (neither, and not stationary: the steps ran out). ``stationary`` says separately
    whether the flow has stopped moving (whatever its ``end``). ``final_rest`` (simplex only) is the mass
    on everything else (000's dispersion); in the box it is ``None``. ``floor_step`` / ``ceiling_step``
    (box only, else ``None``): the step at which the clamp first acted (``-1``: never; ``Flow.floor_step``).
    """
    _expect("flow", flow, Flow, "a Flow from gradient_flow")
    ct = check_number("chosen_target", chosen_target, 0.0, 1.0, low_open=True)
    rt = check_number("rejected_target", rejected_target, 0.0, 1.0, low_open=True)
    tol = check_number("stationary_tol", stationary_tol, 0.0, 1.0, low_open=True, high_open=True)
    pc, pr = flow.probs[..., 0], flow.probs[..., 1]        # (T+1, S)
    hit_c, hit_r = pc >= ct, pr <= rt
    first_c = torch.where(hit_c.any(0), hit_c.to(torch.int64).argmax(0), torch.full_like(hit_c[0], -1, dtype=torch.int64))
    first_r = torch.where(hit_r.any(0), hit_r.to(torch.int64).argmax(0), torch.full_like(hit_r[0], -1, dtype=torch.int64))
    final = flow.probs[-1]
    min_c = pc.min(0).values
    if flow.probs.shape[0] > 1:
        last_move = (flow.probs[-1] - flow.probs[-2]).abs().amax(-1)          # (S,)
    else:
        last_move = torch.full((flow.probs.shape[1],), float("inf"), dtype=flow.probs.dtype)
    out = []
    for i in range(flow.starts.shape[0]):  # building the per-start dicts only; the work above is vectorised
        fc, fr = float(final[i, 0]), float(final[i, 1])
        on_floor = flow.stop_at_floor and flow.floor_step is not None and int(flow.floor_step[i]) >= 0
        end = ("preferred" if fc >= ct else "floor" if on_floor else "unlearning only" if fr <= rt
               else "stationary" if float(last_move[i]) <= tol else "still moving")
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
            "floor_step": int(flow.floor_step[i]) if flow.floor_step is not None else None,
            "ceiling_step": int(flow.ceiling_step[i]) if flow.ceiling_step is not None else None,
        })
    return out


# ----------------------------------------------------------------------------- the invariant of the box and its floor
#: Parameter values at which a loss's log-space weights balance (the invariant holds): ``{loss: {param:
#: (symbol name, value)}}``, read by :func:`radius_invariant`. nbDPO and bDPO have none.
_BALANCING = {"flex_dpo": ("beta_rejected", "beta_chosen"), "sft_dpo": ("gamma", 0), "slic": ("eta", 0),
              "dpop": ("lam", 0)}


def radius_invariant(loss: str) -> dict[str, Any]:
    """Does the box flow of ``loss`` keep ``pi+^2 + pi-^2``? Sympy, exact (:mod:`prefdyn.symbolic`).

    The flow ``dpi/dt = -dl/dpi`` changes the squared radius at the rate
    ``d(pi+^2 + pi-^2)/dt = -2 (pi+ dl/dpi+ + pi- dl/dpi-) = -2 (dl/dlog pi+ + dl/dlog pi-)``. For a loss of
    the margin ``h = log pi+ - log pi- + const`` alone, ``dl/dlog pi+ = l'(h) = -dl/dlog pi-``: the sum is
    identically 0 and the radius is invariant (002's Limitation 1, the gradient of ``x1`` tied to that of
    ``x2``, in its exact form). Differentiated in the stop-gradient form (detached weights constant, as in
    training), at every value of the parameters and references.

    Returns ``{"loss", "identically_zero": bool, "expr": the sum as a sympy expression (0 if identically
    zero), "zero_if": "param = value" or None}``; ``zero_if`` names the parameter value at which the sum
    vanishes for the losses that add a term to the margin (flex-β DPO at ``beta_rejected = beta_chosen``,
    SFT-DPO at ``gamma = 0``, SLiC at ``eta = 0``, DPOP at ``lam = 0``), checked by sympy too.
    """
    import sympy as sp

    from . import symbolic as S

    check_choice("loss", loss, tuple(S.PARAM_SYMBOLS))
    expr = S.loss_expr(loss, stop_gradient=True)
    total = S.PI_C * sp.diff(expr, S.PI_C) + S.PI_R * sp.diff(expr, S.PI_R)
    total = S.heaviside0(total.subs(S.stop_gradient_values(loss)))

    def zero(e) -> bool:
        return sp.simplify(sp.powsimp(sp.expand_log(e, force=True))) == 0

    is_zero = zero(total)
    zero_if = None
    if not is_zero and loss in _BALANCING:
        name, value = _BALANCING[loss]
        sym = S.PARAM_SYMBOLS[loss][name]
        val = S.PARAM_SYMBOLS[loss][value] if isinstance(value, str) else sp.Integer(value)
        if zero(total.subs(sym, val)):
            zero_if = f"{name} = {value}"
    return {"loss": loss, "identically_zero": is_zero, "expr": sp.Integer(0) if is_zero else total,
            "zero_if": zero_if}


def _clamp_step(flow: Flow) -> torch.Tensor:
    """Per start: the first step at which the floor or the ceiling acted, ``n_steps + 1`` if never."""
    big = flow.n_steps + 1
    fs = torch.where(flow.floor_step >= 0, flow.floor_step, big)
    cs = torch.where(flow.ceiling_step >= 0, flow.ceiling_step, big)
    return torch.minimum(fs, cs)


def radius_drift(flow: Flow) -> list[float]:
    """Per start of a box flow: the largest ``|r^2 - r_0^2|``, ``r^2 = pi+^2 + pi-^2``, over the states
    before the clamp first acted (floor or ceiling; every state if it never did). For a loss of the margin
    alone (:func:`radius_invariant`) the exact flow keeps ``r^2``: what is left is the integrator's error
    (explicit Euler adds ``lr^2 |grad l|^2`` per step, which grows as ``pi- -> 0``)."""
    if not isinstance(flow, Flow) or flow.space != "box":
        got = f"a {flow.space} Flow" if isinstance(flow, Flow) else type(flow).__name__
        raise ValueError(f"flow: expected a box Flow (gradient_flow(..., space='box')), got {got}")
    r2 = (flow.probs ** 2).sum(-1)                                 # (T+1, S)
    dev = (r2 - r2[0]).abs()
    t = torch.arange(r2.shape[0]).unsqueeze(1)
    before = t < _clamp_step(flow).unsqueeze(0)                   # states before the first clamp
    return [float(v) for v in torch.where(before, dev, torch.zeros_like(dev)).amax(0)]


def exact_box_end(loss: str, starts: Any, *, lr: float = DEFAULT_LR["box"], ref_chosen: Any = 1.0,
                  ref_rejected: Any = 1.0, n_grid: int = 4000, **params: Any) -> dict[str, list]:
    """Where the exact (unclamped, continuous-time) box flow of a loss of the margin alone ends, per start.

    On the circle ``pi+ = r cos(theta)``, ``pi- = r sin(theta)`` of the start's radius (the invariant of
    :func:`radius_invariant`) the flow is one ODE, ``dtheta/dt = (pi+ v- - pi- v+) / r^2`` with ``v = -grad
    l``. It moves ``theta`` monotonically towards the first zero of ``dtheta/dt`` (a minimum of the loss on
    the circle, reached only as ``t -> oo``: ``steps`` is ``None``) or, if there is none, to ``pi- = 0``
    (``theta = 0``, end ``"pi- = 0"``) or ``pi+ = 0``, reached at the finite time ``t* = int dtheta /
    |dtheta/dt|`` when that integral converges (DPO with ``beta < 1``: the rejected gradient diverges like
    ``(pi-)^(beta-1)``, 000 Cor. 2). ``steps`` is ``t* / lr``, the number of gradient-descent updates of
    size ``lr`` the exact flow takes, and after ``t*`` the flow is not defined (``log 0``): a clamped
    flow's state beyond it is set by its floor.

    ``ref_chosen`` / ``ref_rejected``: one number or one per start, as in :func:`gradient_flows`.
    Returns ``{"radius", "final_chosen", "final_rejected", "steps", "end", "above_ceiling"}`` (lists, one
    entry per start); ``above_ceiling``: the end has ``pi+ > 1`` (the box's ceiling would act first).
    Raises ``ValueError`` for a loss that is not of the margin alone (the radius would not be invariant).
    """
    import numpy as np
    from scipy.integrate import quad
    from scipy.optimize import brentq

    fn, p = _resolve(loss, "prob", params)
    if loss == "reward_model":
        raise _no_probability_coords("loss")
    lr = check_positive("lr", lr)
    n_grid = check_int("n_grid", n_grid, 10, 1_000_000)
    s = _check_starts(starts, False)
    refs = torch.log(_check_refs(ref_chosen, ref_rejected, s.shape[0])).tolist()

    def omega(r: float, theta: Any) -> np.ndarray:
        th = torch.as_tensor(np.atleast_1d(theta), dtype=DTYPE)
        pc, pr = r * torch.cos(th), r * torch.sin(th)
        _, gc, gr = _loss_grad_raw(fn, "prob", pc, pr, torch.full_like(pc, lc), torch.full_like(pc, lr_), p)
        if bool(((pc * gc + pr * gr).abs() > 1e-9 * (pc * gc).abs().clamp_min(1e-300)).any()):
            raise ValueError(f"loss: expected a loss of the margin alone (pi+ dl/dpi+ + pi- dl/dpi- = 0), got "
                             f"{loss!r} with parameters {p}")
        return ((pc * -gr - pr * -gc) / r ** 2).numpy()

    out: dict[str, list] = {k: [] for k in ("radius", "final_chosen", "final_rejected", "steps", "end",
                                            "above_ceiling")}
    tiny = 1e-12
    for (pc0, pr0), (lc, lr_) in zip(s.tolist(), refs):
        r, th0 = math.hypot(pc0, pr0), math.atan2(pr0, pc0)
        w0 = float(omega(r, th0)[0])
        edge = tiny if w0 < 0 else math.pi / 2 - tiny
        grid = np.linspace(th0, edge, n_grid)
        w = omega(r, grid)
        flip = np.nonzero(np.sign(w) != np.sign(w0))[0]
        if w0 == 0:
            th_end, t_end, end = th0, None, "stationary"
        elif flip.size:
            j = int(flip[0])
            th_end = brentq(lambda t: float(omega(r, t)[0]), grid[j - 1], grid[j], xtol=1e-15)
            t_end, end = None, "stationary"
        else:
            th_end = 0.0 if w0 < 0 else math.pi / 2
            t_end, _ = quad(lambda t: 1.0 / abs(float(omega(r, t)[0])), min(th0, edge), max(th0, edge),
                            limit=200)
            end = "pi- = 0" if w0 < 0 else "pi+ = 0"
        out["radius"].append(r)
        out["final_chosen"].append(r * math.cos(th_end))
        out["final_rejected"].append(r * math.sin(th_end))
        out["steps"].append(None if t_end is None else t_end / lr)
        out["end"].append(end)
        out["above_ceiling"].append(r * math.cos(th_end) > 1.0)
    return out


def floor_dependence(by_floor: Mapping[float, Mapping[tuple[str, str], Flow]], loss: str,
                     chosen_target: float = 0.9) -> dict[str, dict[str, list]]:
    """Where the box flow of ``loss`` ends as a function of the floor: ``by_floor`` maps each floor to the
    flows of :func:`gradient_flows` run with ``eps = floor`` (same starts, steps and step size). Returns
    ``{f"{floor:g}": {"final_chosen", "final_rejected", "floor_step", "steps_to_chosen"}}``, one value per
    start (``-1``: never)."""
    if not isinstance(by_floor, Mapping) or not by_floor:
        raise ValueError(f"by_floor: expected a dict {{floor: flows}}, got {_short(by_floor)}")
    out = {}
    for fl_value, flows in by_floor.items():
        if (loss, "box") not in flows:
            raise ValueError(f"by_floor: expected a box flow of {loss!r} at floor {fl_value!r}")
        fl = flows[(loss, "box")]
        rs = region_stats(fl, chosen_target)
        out[f"{fl.eps:g}"] = {k: [r[k] for r in rs] for k in ("final_chosen", "final_rejected", "floor_step",
                                                               "steps_to_chosen")}
    return out


def floor_verdicts(by_floor: Mapping[float, Mapping[tuple[str, str], Flow]],
                   stopped: Mapping[tuple[str, str], Flow], **kwargs: Any) -> dict[str, dict[str, Any]]:
    """Every box verdict of :func:`classify_flow` rechecked at every floor, and on the flows ``stopped``
    at the floor (``stop_at_floor=True``: what the field gives before the clamp acts).

    Returns ``{loss: {"floors": {f"{floor:g}": category}, "before_floor": category, "condition": text}}``.
    ``condition`` says for which floors the verdict at the largest floor holds: ``"every floor"`` (the
    same at every floor and on the stopped flow, so the floor plays no part), ``"only floor ≥ X"`` (the
    same down to the floor ``X``, the smallest floor tested that still gives it, and a different one
    below it) or ``"floor ≥ X, not stopped"`` (the same at every floor tested, down to ``X``, but not on
    the flow stopped at the floor: the clamp is needed, whatever its value in the range tested).
    """
    if not isinstance(by_floor, Mapping) or not by_floor:
        raise ValueError(f"by_floor: expected a dict {{floor: flows}}, got {_short(by_floor)}")
    floors = sorted(by_floor, reverse=True)
    losses = [n for (n, sp) in stopped if sp == "box"]
    out = {}
    for n in losses:
        cats = {f: classify_flow(by_floor[f][(n, "box")], **kwargs).category for f in floors}
        before = classify_flow(stopped[(n, "box")], **kwargs).category
        main = cats[floors[0]]
        lowest = floors[0]
        for f in floors:
            if cats[f] != main:
                break
            lowest = f
        if lowest != floors[-1]:
            cond = f"only floor ≥ {lowest:g}"
        else:
            cond = "every floor" if before == main else f"floor ≥ {lowest:g}, not stopped"
        out[n] = {"floors": {f"{f:g}": c for f, c in cats.items()}, "before_floor": before, "condition": cond}
    return out


def floor_table(dep: Mapping[str, Mapping[str, list]], exact: Mapping[str, list], starts: Any, *,
                title: str = "", note: str = ""):
    """A :class:`prefdyn.tables.Table` of :func:`floor_dependence` next to :func:`exact_box_end`, one column
    per start: the exact flow's end ``pi+`` (the start's radius when it ends at ``pi- = 0``) and its steps,
    then per floor the final ``pi+`` and the step at which the floor first acted (``-``: never)."""
    from .results import fmt
    from .tables import Table

    s = _tensor(starts, "starts").reshape(-1, 2)
    cols = [f"({fmt(float(a))}, {fmt(float(b))})" for a, b in s]
    rows = [("exact flow: final π+", list(exact["final_chosen"])),
            ("exact flow: steps to its end", [None if v is None else v for v in exact["steps"]])]
    for f, d in dep.items():
        rows.append((f"floor {f}: final π+", list(d["final_chosen"])))
        rows.append((f"floor {f}: step on the floor", [None if k < 0 else k for k in d["floor_step"]]))
    return Table(cols, rows, title=title, note=note, corner="start (π+, π−)")


def penalty_active_fraction(fld: Field) -> float:
    """DPOP's penalty ``max(0, log pi_ref+ - log pi+)``: the fraction of the field's grid where it is
    active (``pi+ < pi_ref+``). With 002's ``pi_ref = 1`` that is the whole open square."""
    if not isinstance(fld, Field) or fld.loss != "dpop" or fld.coords == "reward":
        raise ValueError("fld: expected a DPOP Field in probability or ratio coordinates")
    pc = fld.chosen * (fld.ref[0] if fld.coords == "ratio" else 1.0)
    return float((pc < fld.ref[0]).to(DTYPE).mean())


# ----------------------------------------------------------------------------- the chapter's loss parameters
def loss_params(params: Mapping[str, Any], losses: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per-loss parameters from a chapter's parameters, by the book-wide names of
    :func:`prefdyn.losses.loss_params_from` (``beta``, ``delta``, ``beta_balanced``, ...).

    ``losses`` (from :func:`field_losses`: any registered loss or ``"reward_model"``) defaults to
    ``params["losses"]``, else :data:`FIELD_LOSSES`. A chapter parameter missing from ``params`` leaves the
    loss's default; the result is validated and complete, ``{}`` for ``"reward_model"`` (no parameters).
    """
    _expect("params", params, Mapping, "a dict of the chapter's parameters")
    names = losses if losses is not None else params.get("losses", FIELD_LOSSES)
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise ValueError(f"losses: expected a list of loss names, got {_short(names)}")
    names = list(names)
    for n in names:
        check_choice("losses", n, field_losses())
    per_loss = loss_params_from(params, [n for n in names if n != "reward_model"])
    return {n: ({} if n == "reward_model" else per_loss[n]) for n in names}


def parameter_table(per_loss: Mapping[str, Mapping[str, Any]]):
    """A :class:`prefdyn.tables.Table` of each loss's parameters and its source (:data:`LOSS_SOURCES`)."""
    from .plotting import loss_label
    from .results import fmt
    from .tables import Table

    rows = [(loss_label(n), [", ".join(f"{k} = {fmt(v)}" for k, v in p.items()) or "-",
                             LOSS_SOURCES.get(n, "000 Sec. 4 (reward coordinates)")])
            for n, p in per_loss.items()]
    return Table(["parameters", "source"], rows, corner="loss")


# ----------------------------------------------------------------------------- 002's reading of the DPO field
def _thr_key(t: float) -> str:
    return f"{t:g}"


def dpo_ratio_checks(fld: Field, *, other_beta: float | None = None, thresholds: Sequence[float] = (1.0, 10.0, 100.0),
                     rtol: float = 1e-10) -> dict[str, Any]:
    """002 Cor. 1 and Remarks 1-2 checked on a DPO field in 002's coordinates (``coords="ratio"``).

    Returns plain data: ``ratio_equals_x1_over_x2`` (the ratio ``|dl/dx2| / |dl/dx1|`` equals ``x1/x2`` on
    every grid point within ``rtol``), ``ratio_independent_of_beta`` (the same ratio at ``other_beta``,
    default ten times the field's beta), ``no_stationary_point`` (``dl/dx1 < 0 < dl/dx2`` everywhere: the
    signs of 002 eq. 2), ``frac_ratio_gt`` (grid fraction with ratio above each threshold, keyed
    ``"1"``, ``"10"``, ...) and ``exact_area_ratio_gt`` (the exact area fraction, :func:`dpo_ratio_area`).
    """
    if not isinstance(fld, Field) or fld.loss != "dpo" or fld.coords != "ratio":
        got = f"loss {fld.loss!r} in coords={fld.coords!r}" if isinstance(fld, Field) else type(fld).__name__
        raise ValueError("fld: expected a DPO Field in 002's coordinates (field_grid('dpo', coords='ratio')), "
                         f"got {got}")
    beta = float(fld.params["beta"])
    other = 10 * beta if other_beta is None else check_positive("other_beta", other_beta)
    x1, x2 = torch.meshgrid(fld.chosen, fld.rejected, indexing="xy")
    dev = float(((fld.ratio - x1 / x2).abs() / (x1 / x2)).max())
    dpo = get_loss("dpo")
    _, g1, g2 = _loss_grad_raw(dpo.fn, "ratio", x1, x2, torch.full_like(x1, math.log(fld.ref[0])),
                               torch.full_like(x2, math.log(fld.ref[1])), dpo.check(beta=other))
    a, b = 1.0 / fld.ref[0], 1.0 / fld.ref[1]
    frac = fld.fractions(tuple(thresholds))
    return {
        "ratio_equals_x1_over_x2": dev < rtol,
        "ratio_independent_of_beta": bool(torch.allclose(_ratio(g1, g2), fld.ratio, rtol=rtol)),
        "other_beta": other,
        "no_stationary_point": bool((fld.grad_chosen < 0).all() and (fld.grad_rejected > 0).all()),
        "frac_ratio_gt": {_thr_key(t): frac[float(t)] for t in thresholds},
        "exact_area_ratio_gt": {_thr_key(t): dpo_ratio_area(t, a, b) for t in thresholds},
    }


@dataclass(frozen=True)
class CornerClaim:
    """One of 002's readings of a corner of its Fig. 1(b), tested at one point.

    ``grad`` is ``(dl/dx1, dl/dx2)``; ``ratio`` is ``|dl/dx2| / |dl/dx1|``; ``rel_magnitude`` is
    ``|grad l|`` over its median on the field's grid; ``test`` says in words what ``holds`` checked.
    """

    corner: str
    point: tuple[float, float]
    grad: tuple[float, float]
    ratio: float
    rel_magnitude: float
    source: str
    claim: str
    test: str
    holds: bool

    def as_dict(self) -> dict[str, Any]:
        return {"corner": self.corner, "x1": self.point[0], "x2": self.point[1], "dl_dx1": self.grad[0],
                "dl_dx2": self.grad[1], "ratio": self.ratio, "grad_over_median": self.rel_magnitude,
                "source": self.source, "claim": self.claim, "holds": self.holds}


#: 002's readings of the corners (Sec. 3.2, Sec. 3.3.2, Remark 3): (corner, source, claim, test in words).
CORNER_READINGS: tuple[tuple[str, str, str, str], ...] = (
    ("top-left", "002 Sec. 3.2", "x1 rises rapidly, x2 changes little",
     "ratio < 1/dominance and |grad| > median"),
    ("top-right", "002 Sec. 3.2", "x1 rises and x2 falls, overall change minor",
     "dl/dx1 < 0 < dl/dx2 and |grad| < median"),
    ("bottom-right", "002 Sec. 3.2, 3.3.2", "x2 falls rapidly, x1 changes little",
     "ratio > dominance and |grad| > median"),
    ("bottom-left", "002 Sec. 3.2 (lower part)", "x2 falls rapidly, x1 changes little",
     "ratio > dominance and |grad| > median"),
    ("bottom-left", "002 Remark 3", "direction does not entirely prioritise x1",
     "ratio >= 1"),
)


def corner_points(fld: Field, low: float) -> dict[str, tuple[float, float]]:
    """The four corner points of the field's plane at distance ``low`` from its edges: ``x = low`` or
    ``x = upper - low`` per axis (upper: ``1/pi_ref`` in 002's coordinates, 1 for probabilities)."""
    _expect("fld", fld, Field, "a Field from field_grid")
    if fld.coords == "reward":
        raise ValueError("fld: expected a field in probability or ratio coordinates for corner points, "
                         "got coords='reward'")
    up_c = 1.0 / fld.ref[0] if fld.coords == "ratio" else 1.0
    up_r = 1.0 / fld.ref[1] if fld.coords == "ratio" else 1.0
    low = check_number("low", low, 0.0, min(up_c, up_r) / 2, low_open=True, high_open=True)
    lo_c, hi_c, lo_r, hi_r = low, up_c - low, low, up_r - low
    return {"top-left": (lo_c, hi_r), "top-right": (hi_c, hi_r), "bottom-right": (hi_c, lo_r),
            "bottom-left": (lo_c, lo_r)}


def corner_claims(fld: Field, low: float = 0.05, *, dominance: float = 10.0) -> list[CornerClaim]:
    """002's readings of the corners of its Fig. 1(b) (:data:`CORNER_READINGS`), each tested at the corner
    point of :func:`corner_points`.

    "Rapid" / "minor overall change" compare ``|grad l|`` with its median over ``fld``'s grid; "changes
    little" means the other component is more than ``dominance`` times larger. One result per reading
    (the bottom-left corner has two), in the order of :data:`CORNER_READINGS`.
    """
    _expect("fld", fld, Field, "a Field from field_grid")
    dominance = check_positive("dominance", dominance)
    pts = corner_points(fld, low)
    xy = torch.tensor(list(pts.values()), dtype=DTYPE)
    _, g1, g2 = loss_and_grad(fld.loss, xy[:, 0], xy[:, 1], coords=fld.coords, ref_chosen=fld.ref[0],
                              ref_rejected=fld.ref[1], **fld.params)
    median = float(fld.magnitude.median())
    at = {c: (float(g1[i]), float(g2[i])) for i, c in enumerate(pts)}
    out = []
    for corner, source, claim, test in CORNER_READINGS:
        d1, d2 = at[corner]
        ratio = abs(d2) / abs(d1) if d1 != 0 else math.inf
        rel = math.hypot(d1, d2) / median
        holds = {
            "top-left": ratio < 1 / dominance and rel > 1,
            "top-right": d1 < 0 < d2 and rel < 1,
            "bottom-right": ratio > dominance and rel > 1,
            "bottom-left": ratio >= 1 if source == "002 Remark 3" else (ratio > dominance and rel > 1),
        }[corner]
        out.append(CornerClaim(corner=corner, point=pts[corner], grad=(d1, d2), ratio=ratio, rel_magnitude=rel,
                               source=source, claim=claim, test=test, holds=bool(holds)))
    return out


def field_summary(fld: Field, thresholds: Sequence[float] = (1.0, 10.0, 100.0),
                  flat_tol: float = 1e-9) -> dict[str, Any]:
    """What the small multiples of one loss show, as numbers: the grid fraction where the rejected gradient
    dominates by more than each threshold (``frac_ratio_gt``, keyed ``"1"``, ``"10"``, ...), the median
    ``|grad l|``, whether the landscape is flat (max - min below ``flat_tol``; then ``flat_value`` is its
    value, else ``None``) and whether the field is balanced (ratio 1 at every grid point, as the
    reward model's, 000 Sec. 4)."""
    _expect("fld", fld, Field, "a Field from field_grid")
    flat_tol = check_positive("flat_tol", flat_tol)
    frac = fld.fractions(tuple(thresholds))
    flat = float(fld.value.max() - fld.value.min()) < flat_tol
    r = fld.ratio
    return {
        "frac_ratio_gt": {_thr_key(t): frac[float(t)] for t in thresholds},
        "median_grad": float(fld.magnitude.median()),
        "flat": flat,
        "flat_value": float(fld.value.mean()) if flat else None,
        "balanced": bool(torch.isfinite(r).all() and torch.allclose(r, torch.ones_like(r), rtol=1e-12)),
    }


# ----------------------------------------------------------------------------- what the flows show
#: Verdicts of :func:`classify_flow`, in the order the chapter lists them.
CATEGORIES: tuple[str, ...] = ("escape", "partial", "stall", "stationary_short", "floor_first", "step_artefact")
CATEGORY_LABELS: dict[str, str] = {
    "escape": "escapes",
    "partial": "escapes from some",
    "stall": "stalls",
    "stationary_short": "stops short (minimum)",
    "floor_first": "floor first",
    "step_artefact": "step artefact",
}


def region_statistics(flows: Mapping[tuple[str, str], Flow], chosen_target: float = 0.9,
                      rejected_target: float = 0.01) -> dict[str, dict[str, dict[str, list]]]:
    """:func:`region_stats` of every flow, regrouped for tables and JSON: ``{space: {loss: {key: [one value
    per start]}}}`` with keys ``steps_to_chosen``, ``steps_to_rejected`` (``-1``: not within the steps),
    ``final_chosen``, ``final_rejected``, ``final_rest`` (simplex only), ``min_chosen``, ``final_loss``,
    ``end``, ``stationary`` and (box only) ``floor_step``, ``ceiling_step``."""
    out: dict[str, dict[str, dict[str, list]]] = {}
    for (loss, space), fl in flows.items():
        rs = region_stats(fl, chosen_target, rejected_target)
        keys = ["steps_to_chosen", "steps_to_rejected", "final_chosen", "final_rejected"]
        keys += ["final_rest"] if space == "simplex" else []
        keys += ["min_chosen", "end", "stationary"]
        keys += ["floor_step", "ceiling_step"] if space == "box" else []
        d = {k: [r[k] for r in rs] for k in keys}
        d["final_loss"] = [float(v) for v in fl.loss_path[-1]]
        out.setdefault(space, {})[loss] = d
    return out


def direction_changes(path: Any, tail: float = 0.5) -> torch.Tensor:
    """How often each column of ``path`` (``(T+1, ...)``, time first) reverses direction in its last
    ``tail`` fraction of steps. Steps that do not move (a clamped coordinate) neither count nor break a
    run; a monotone path has 0, one that bounces around a value once per step about one per step."""
    tail = check_number("tail", tail, 0.0, 1.0, low_open=True)
    p = _tensor(path, "path")
    if p.ndim < 1 or p.shape[0] < 3:
        raise ValueError(f"path: expected at least 3 time steps along its first axis, got shape {tuple(p.shape)}")
    p = p[min(int(p.shape[0] * (1 - tail)), p.shape[0] - 3):]
    d = torch.sign(torch.diff(p, dim=0))
    # carry the sign of the last step that moved over steps that did not (vectorised forward fill)
    t = torch.arange(d.shape[0]).reshape(-1, *([1] * (d.ndim - 1))).expand_as(d)
    idx = torch.where(d != 0, t, torch.zeros_like(t)).cummax(0).values
    filled = d.gather(0, idx)
    out = ((filled[1:] * filled[:-1]) < 0).sum(0)
    return out


def first_step(flow: Flow) -> list[float]:
    """Per start: the size ``lr * |dl/dpi+|`` of the first update of ``pi+`` before any clamping (box: the
    step in probability; simplex: the step of the chosen logit, ``lr * |dl/dz+|``)."""
    _expect("flow", flow, Flow, "a Flow from gradient_flow")
    entry = get_loss(flow.loss)
    p = entry.check(**flow.params)
    s = flow.starts
    ref_lp_c, ref_lp_r = torch.log(flow.ref[:, 0]), torch.log(flow.ref[:, 1])
    if flow.space == "box":
        _, g, _ = _loss_grad_raw(entry.fn, "prob", s[:, 0], s[:, 1], ref_lp_c, ref_lp_r, p)
    else:
        z = flow.logits[0].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            lp = torch.log_softmax(z, dim=1)
            v = entry.fn(lp[:, 0], lp[:, 1], ref_lp_c, ref_lp_r, **p)
            (gz,) = torch.autograd.grad(v.sum(), (z,))
        g = gz[:, 0]
    return [flow.lr * abs(float(x)) for x in g]


@dataclass(frozen=True)
class FlowVerdict:
    """What one flow shows from its low-``pi+`` starts (002's left side, 000's off-policy chosen response).

    ``reached``: how many of the ``low_starts`` reach ``pi+ >= chosen_target``; ``slowest``: the largest
    number of steps they take (``-1`` unless all reach it); ``jump``: the first update alone would carry
    ``pi+`` from a low start past the ceiling 1 (box only: the clamp, not the field, brings it to the
    target); ``reversals``: the most direction changes of ``pi+`` or ``pi-`` in the second half of any
    start's path (:func:`direction_changes`); ``oscillates``: ``reversals > max_reversals``.
    ``category`` is one of :data:`CATEGORIES`:

    - ``"step_artefact"``: ``jump`` or ``oscillates``: the explicit step is too large for this loss, so the
      flow says nothing about the field (the other verdicts are not given);
    - ``"escape"``: every low start reaches the target;
    - ``"stationary_short"``: some do not, and each of those has stopped moving (a minimum of the loss
      short of the target, like IPO at its target margin);
    - ``"floor_first"`` (flows run with ``stop_at_floor=True``): some do not, and one of those stopped
      because it reached the floor first: what the field gives before the clamp acts;
    - ``"partial"``: some but not all reach it (and not every miss is stationary);
    - ``"stall"``: none reaches it (and not every miss is stationary).
    """

    loss: str
    space: str
    low_starts: tuple[int, ...]
    steps: tuple[int, ...]
    final_chosen: tuple[float, ...]
    reached: int
    slowest: int
    first_step: tuple[float, ...]
    jump: bool
    reversals: int
    oscillates: bool
    category: str

    def as_dict(self) -> dict[str, Any]:
        return {"category": self.category, "reached": self.reached, "slowest": self.slowest,
                "steps": list(self.steps), "final_chosen": list(self.final_chosen),
                "first_step": list(self.first_step), "jump": self.jump, "reversals": self.reversals,
                "oscillates": self.oscillates}


def low_chosen_starts(starts: Any) -> tuple[int, ...]:
    """Indices of the starts with the lowest ``pi+`` (rows ``(pi+, pi-)``)."""
    s = _tensor(starts, "starts").reshape(-1, 2)
    m = float(s[:, 0].min())
    return tuple(j for j in range(s.shape[0]) if float(s[j, 0]) == m)


def classify_flow(flow: Flow, *, chosen_target: float = 0.9, rejected_target: float = 0.01,
                  low_starts: Sequence[int] | None = None, max_reversals: int = 10,
                  stationary_tol: float = 1e-9) -> FlowVerdict:
    """The verdict on one flow (see :class:`FlowVerdict`); ``low_starts`` defaults to the starts with the
    lowest ``pi+`` (:func:`low_chosen_starts`)."""
    _expect("flow", flow, Flow, "a Flow from gradient_flow")
    S = flow.starts.shape[0]
    bad_low = ValueError(f"low_starts: expected a non-empty list of start indices in [0, {S}), "
                         f"got {_short(low_starts)}")
    if low_starts is None:
        low = low_chosen_starts(flow.starts)
    elif isinstance(low_starts, (str, bytes)) or not isinstance(low_starts, Iterable):
        raise bad_low
    else:
        low = tuple(low_starts)
    if not low or any(isinstance(j, bool) or not isinstance(j, numbers.Integral) or not 0 <= j < S for j in low):
        raise bad_low
    max_reversals = check_int("max_reversals", max_reversals, 0, _MAX_STEPS)
    rs = region_stats(flow, chosen_target, rejected_target, stationary_tol)
    steps = tuple(rs[j]["steps_to_chosen"] for j in low)
    reached = sum(k >= 0 for k in steps)
    step1 = first_step(flow)
    jump = flow.space == "box" and any(step1[j] >= 1.0 - float(flow.starts[j, 0]) for j in low)
    reversals = int(direction_changes(flow.probs[..., :2]).max()) if flow.probs.shape[0] >= 3 else 0
    oscillates = reversals > max_reversals
    misses = [j for j in low if rs[j]["steps_to_chosen"] < 0]
    if jump or oscillates:
        category = "step_artefact"
    elif not misses:
        category = "escape"
    elif any(rs[j]["end"] == "floor" for j in misses):
        category = "floor_first"
    elif all(rs[j]["stationary"] for j in misses):
        category = "stationary_short"
    elif reached > 0:
        category = "partial"
    else:
        category = "stall"
    return FlowVerdict(loss=flow.loss, space=flow.space, low_starts=low, steps=steps,
                       final_chosen=tuple(rs[j]["final_chosen"] for j in low), reached=reached,
                       slowest=max(steps) if not misses else -1, first_step=tuple(step1[j] for j in low),
                       jump=jump, reversals=reversals, oscillates=oscillates, category=category)


def classify_flows(flows: Mapping[tuple[str, str], Flow], **kwargs: Any) -> dict[tuple[str, str], FlowVerdict]:
    """:func:`classify_flow` of every flow of :func:`gradient_flows` (same keys)."""
    return {k: classify_flow(fl, **kwargs) for k, fl in flows.items()}


def verdict_summary(verdicts: Mapping[tuple[str, str], FlowVerdict]) -> dict[str, dict[str, list[str]]]:
    """``{space: {category: [losses]}}`` for every category of :data:`CATEGORIES` (empty lists kept), the
    losses in the order of ``verdicts``."""
    out: dict[str, dict[str, list[str]]] = {}
    for (loss, space), v in verdicts.items():
        out.setdefault(space, {c: [] for c in CATEGORIES})[v.category].append(loss)
    return out


def simplex_dispersion(flow: Flow, atol: float = 1e-12) -> dict[str, Any]:
    """000's dispersion on the simplex: how much mass the rest (everything but the two responses) gains.

    Returns ``rest_increase`` (per start: the highest rest mass on the way minus the start's),
    ``max_rest_increase`` (over the starts), ``rest_logit_fixed`` (the rest logit moved by at most
    ``atol``: the loss's log-space weights are balanced, ``dl/dlog pi+ = -dl/dlog pi-``, as DPO's) and
    ``chosen_monotone`` (``pi+`` never decreases, up to 1e-15).
    """
    if not isinstance(flow, Flow) or flow.space != "simplex" or flow.logits is None:
        got = f"a {flow.space} Flow" if isinstance(flow, Flow) else type(flow).__name__
        raise ValueError(f"flow: expected a simplex Flow (gradient_flow(..., space='simplex')), got {got}")
    atol = check_positive("atol", atol)
    rest = flow.probs[..., 2]
    inc = rest.max(0).values - rest[0]
    z = flow.logits[..., 2]
    pc = flow.probs[..., 0]
    return {
        "rest_increase": [float(v) for v in inc],
        "max_rest_increase": float(inc.max()),
        "rest_logit_fixed": bool((z - z[0]).abs().max() <= atol),
        "chosen_monotone": bool((pc[1:] >= pc[:-1] - 1e-15).all()),
    }


def per_start_table(values: Mapping[str, Sequence[Any]], starts: Any, *, title: str = "", note: str = "",
                    never: Any = -1):
    """A :class:`prefdyn.tables.Table` with one row per loss and one column per start ``(pi+, pi-)``; a
    cell equal to ``never`` (the ``-1`` of the step counts) is shown as ``-``."""
    from .plotting import loss_label
    from .results import fmt
    from .tables import Table

    s = _tensor(starts, "starts").reshape(-1, 2)
    cols = [f"({fmt(float(a))}, {fmt(float(b))})" for a, b in s]
    rows = [(loss_label(n), [None if (never is not None and v == never) else v for v in vs])
            for n, vs in values.items()]
    return Table(cols, rows, title=title, note=note, corner="loss \\ start (π+, π−)")


# ----------------------------------------------------------------------------- drawing
_AXIS_LABELS = {
    "ratio": (r"$x_1 = \pi^+/\pi_{\mathrm{ref}}^+$", r"$x_2 = \pi^-/\pi_{\mathrm{ref}}^-$"),
    "prob": (r"$\pi^+$ (chosen)", r"$\pi^-$ (rejected)"),
    "reward": (r"$r^+$ (chosen reward)", r"$r^-$ (rejected reward)"),
}


def axis_labels(coords: str) -> tuple[str, str]:
    """The (x, y) axis labels of a field in ``coords``."""
    return _AXIS_LABELS[check_choice("coords", coords, COORDS)]


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


# ----------------------------------------------------------------------------- the chapter's figures
#: One colour per corner start, in the order of :func:`corner_starts` (Okabe-Ito).
START_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7")
#: Width (inches) of the chapter's figures and their fonts. The book shows a figure at the width of its
#: content column (about 684 px at a 1280 px window), so a figure ``w`` inches wide is shown at
#: ``6.2 / w`` of its size (at 110 dpi); at 8.4 inches the 10-point fonts below read as 8.5 points.
FIG_WIDTH = 8.4
_FONTS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 10,
          "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 11}
_SHORT_LABELS = {"ratio": ("$x_1$", "$x_2$"), "prob": (r"$\pi^+$", r"$\pi^-$"), "reward": ("$r^+$", "$r^-$")}


def _readable():
    """The fonts of the chapter's figures (a ``matplotlib.rc_context``)."""
    import matplotlib

    return matplotlib.rc_context(_FONTS)


def _panel_title(fld: Field) -> str:
    from .plotting import loss_label

    return loss_label(fld.loss) + (" (rewards)" if fld.coords == "reward" else "")


def _short_labels(ax, fld: Field) -> None:
    """Short axis labels and three ticks per axis (small multiples)."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    xl, yl = _SHORT_LABELS[fld.coords]
    ax.set_xlabel(xl, labelpad=1)
    ax.set_ylabel(yl, labelpad=1)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=2))
        axis.set_major_formatter(FormatStrFormatter("%g"))


def _grid_of(n: int, ncols: int, height: float):
    """``small_multiples`` at the chapter's width: ``ncols`` panels across :data:`FIG_WIDTH`."""
    from .plotting import small_multiples

    ncols = max(1, min(ncols, n))
    return small_multiples(n, ncols=ncols, sharex=False, sharey=False, panel=(FIG_WIDTH / ncols, height))


def _log10_ratio(fld: Field, clip: float = 3.0):
    """``log10`` of the field's ratio, ``+-inf`` clipped to ``+-clip``, ``nan`` (both components vanish)
    masked."""
    import numpy as np

    with np.errstate(divide="ignore"):
        log_ratio = np.log10(fld.ratio.numpy())
    return np.ma.masked_invalid(np.clip(np.where(np.isinf(log_ratio), np.sign(log_ratio) * clip, log_ratio),
                                        -clip, clip))


def plot_dpo_overview(fld: Field, ratio_levels: Sequence[float] = (1.0, 10.0, 100.0)):
    """002 Fig. 1 redrawn: (a) the landscape, (b) the descent field coloured by ``|grad l|`` (log scale)
    with the level lines where ``|dl/dx2| / |dl/dx1|`` equals each of ``ratio_levels``. Returns the figure."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    import numpy as np

    with _readable():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(FIG_WIDTH, 3.6))
        cs = plot_landscape(ax1, fld, levels=25)
        fig.colorbar(cs, ax=ax1, label=r"$\mathcal{L}_{\mathrm{DPO}}$")
        beta = fld.params.get("beta")
        ax1.set_title(f"(a) {_panel_title(fld)} landscape" + (f", β = {beta:g}" if beta is not None else ""))
        mag = fld.magnitude
        norm = mcolors.LogNorm(vmin=float(mag.min()), vmax=float(mag.max()))
        lines = plot_field(ax2, fld, norm=norm, density=0.9)
        fig.colorbar(lines, ax=ax2, label=r"$|\nabla\mathcal{L}|$ (log scale)")
        levels = [math.log10(k) for k in ratio_levels]
        styles = [":", "--", "-", "-."][:len(levels)]
        rl = ax2.contour(fld.chosen.numpy(), fld.rejected.numpy(), _log10_ratio(fld).filled(np.nan),
                         levels=levels, colors="k", linestyles=styles, linewidths=1.2)
        ax2.clabel(rl, fmt={lv: f"ratio {k:g}" for lv, k in zip(levels, ratio_levels)}, fontsize=10)
        ax2.set_title(r"(b) descent field $-\nabla\mathcal{L}$")
    return fig


def plot_landscapes(fields: Mapping[str, Field], ncols: int = 3):
    """Small multiples of the landscapes of ``fields`` (``{loss: Field}``) on one logarithmic colour scale
    (from the smallest positive value, at least 1e-3, to the largest), with each panel's own level lines in
    white; a flat landscape says so. Returns the figure."""
    import matplotlib.colors as mcolors
    import numpy as np
    from matplotlib.cm import ScalarMappable

    from .results import fmt

    vals = torch.cat([f.value.flatten() for f in fields.values()])
    norm = mcolors.LogNorm(vmin=max(1e-3, float(vals[vals > 0].min())), vmax=float(vals.max()))
    levels = np.geomspace(norm.vmin, norm.vmax, 30)
    with _readable():
        fig, axes = _grid_of(len(fields), ncols, 2.3)
        for ax, fld in zip(axes, fields.values()):
            x, y, v = fld.chosen.numpy(), fld.rejected.numpy(), fld.value.numpy()
            ax.contourf(x, y, np.clip(v, norm.vmin, norm.vmax), levels=levels, norm=norm, cmap="viridis")
            if float(v.max() - v.min()) > 1e-9:
                own = ax.contour(x, y, v, levels=5, colors="white", linewidths=0.7)
                ax.clabel(own, fontsize=9, fmt="%.3g")
            else:
                ax.text(0.5, 0.5, f"flat: {fmt(float(v.mean()))}", transform=ax.transAxes, ha="center",
                        va="center", color="white")
            _short_labels(ax, fld)
            ax.set_title(_panel_title(fld))
        fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=axes, label="loss (log scale, shared)",
                     shrink=0.7)
        fig.suptitle("Loss landscapes (colour: one scale; white: each panel's levels)")
    return fig


def plot_fields(fields: Mapping[str, Field], ncols: int = 3, density: float = 0.5,
                titles: Sequence[str] | None = None):
    """Small multiples of the descent fields of ``fields`` (:func:`plot_field`), one logarithmic colour
    scale for ``|grad l|`` clipped at its 1st and 99th percentiles over all panels; ``titles``: one per
    panel (default: the loss's label). Returns the figure."""
    import matplotlib.colors as mcolors
    from matplotlib.cm import ScalarMappable

    mags = torch.cat([f.magnitude.flatten() for f in fields.values()])
    pos = mags[mags > 0]
    norm = mcolors.LogNorm(vmin=float(torch.quantile(pos, 0.01)), vmax=float(torch.quantile(pos, 0.99)))
    with _readable():
        fig, axes = _grid_of(len(fields), ncols, 2.3)
        names = [_panel_title(f) for f in fields.values()] if titles is None else list(titles)
        for ax, fld, title in zip(axes, fields.values(), names):
            plot_field(ax, fld, norm=norm, density=density)
            _short_labels(ax, fld)
            ax.set_title(title)
        fig.colorbar(ScalarMappable(norm=norm, cmap=field_cmap()), ax=axes, extend="both",
                     label=r"$|\nabla\ell|$ (log scale, shared)", shrink=0.7)
        fig.suptitle(r"Descent fields $-\nabla\ell$")
    return fig


def plot_ratio_maps(fields: Mapping[str, Field], ncols: int = 3, clip: float = 3.0):
    """Small multiples of ``log10 |dl/d rejected| / |dl/d chosen|`` on one diverging scale (clipped to
    ``+-clip``; red: the rejected gradient dominates; grey: both components vanish), with the level lines
    10 (dashed) and 100 (solid), and each panel's percentage of the grid above 10 in its title. Returns
    the figure."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.cm import ScalarMappable

    from .results import fmt

    norm = mcolors.Normalize(vmin=-clip, vmax=clip)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.75")
    with _readable():
        fig, axes = _grid_of(len(fields), ncols, 2.3)
        for ax, fld in zip(axes, fields.values()):
            log_ratio = _log10_ratio(fld, clip)
            x, y = fld.chosen.numpy(), fld.rejected.numpy()
            ax.pcolormesh(x, y, log_ratio, norm=norm, cmap=cmap, shading="nearest", rasterized=True)
            if np.nanmax(log_ratio.filled(np.nan)) > 1:
                ax.contour(x, y, log_ratio.filled(np.nan), levels=[1, 2], colors="k", linestyles=["--", "-"],
                           linewidths=0.9)
            _short_labels(ax, fld)
            ax.set_title(f"{_panel_title(fld)}: {fmt(100 * fld.fractions((10.0,))[10.0])}%")
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.7,
                     label=r"$\log_{10}$ ratio rejected / chosen (shared)")
        fig.suptitle("Where the rejected gradient dominates (dashed: 10x, solid: 100x;\n"
                     "title: % of the grid above 10x)")
    return fig


def _start_label(s) -> str:
    from .results import fmt

    return f"({fmt(float(s[0]))}, {fmt(float(s[1]))})"


def plot_flows(flows: Mapping[tuple[str, str], Flow], losses: Sequence[str], space: str, *,
               chosen_target: float = 0.9, rejected_target: float = 0.01, ncols: int = 4):
    """Small multiples of the flows of ``losses`` in ``space`` in the ``(pi+, pi-)`` plane, ``pi-`` on a
    log axis (it collapses by orders of magnitude); one colour per start, o start, x end, dotted lines at
    the targets, and on the simplex the edge ``pi+ + pi- = 1``. The legend sits below the panels."""
    import numpy as np

    from .plotting import loss_label, small_multiples

    lows = [flows[(n, space)].probs[..., 1] for n in losses]
    floor = min([1e-6] + [float(p[p > 0].min()) for p in lows if bool((p > 0).any())])
    with _readable():
        ncols = max(1, min(ncols, len(losses)))
        fig, axes = small_multiples(len(losses), ncols=ncols, sharex=True, sharey=True,
                                    panel=(FIG_WIDTH / ncols, 2.2))
        for ax, n in zip(axes, losses):
            fl = flows[(n, space)]
            p = fl.probs.numpy()
            for j in range(p.shape[1]):
                c = START_COLORS[j % len(START_COLORS)]
                ax.plot(p[:, j, 0], p[:, j, 1], color=c, lw=1.3, label=f"start {_start_label(fl.starts[j])}")
                ax.plot(p[0, j, 0], p[0, j, 1], "o", color=c, ms=4)
                ax.plot(p[-1, j, 0], p[-1, j, 1], "x", color=c, ms=6)
            ax.axvline(chosen_target, color="0.4", ls=":", lw=1)
            ax.axhline(rejected_target, color="0.4", ls=":", lw=1)
            if space == "simplex":
                xs = np.linspace(0, 1, 200)
                ax.plot(xs, np.clip(1 - xs, 0.5 * floor, None), color="0.2", lw=0.8)
            ax.set_yscale("log")
            ax.set_xlim(0, 1.02)
            ax.set_ylim(0.5 * floor, 1.5)
            ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
            ax.set_title(loss_label(n))
        for ax in axes[-ncols:]:
            ax.set_xlabel(r"$\pi^+$")
        for ax in axes[::ncols]:
            ax.set_ylabel(r"$\pi^-$ (log)")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4,
                   title="(π+, π−) at the start: o, at the end: x", handlelength=1.5, columnspacing=1.0)
    return fig


def plot_start_over_steps(flows: Mapping[tuple[str, str], Flow], losses: Sequence[str], start: int, *,
                          chosen_target: float = 0.9):
    """Three panels over the steps (log axis) from start number ``start``: ``pi+`` in the box, ``pi+`` on
    the simplex and the rest ``1 - pi+ - pi-`` on the simplex, one line per loss; legend below the
    panels. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .plotting import loss_color, loss_label

    some = flows[(losses[0], "box")]
    steps = np.arange(some.n_steps + 1) + 1
    with _readable():
        fig, axes = plt.subplots(1, 3, figsize=(FIG_WIDTH, 3.4), sharey=True)
        for n in losses:
            c = loss_color(n)
            axes[0].plot(steps, flows[(n, "box")].probs[:, start, 0], color=c, label=loss_label(n))
            axes[1].plot(steps, flows[(n, "simplex")].probs[:, start, 0], color=c)
            axes[2].plot(steps, flows[(n, "simplex")].probs[:, start, 2], color=c)
        for ax, title in zip(axes, [r"box: $\pi^+$", r"simplex: $\pi^+$", r"simplex: rest"]):
            ax.set_xscale("log")
            ax.set_xlabel("step + 1")
            ax.set_title(title)
            ax.set_ylim(-0.02, 1.02)
        for ax in axes[:2]:
            ax.axhline(chosen_target, color="0.4", ls=":", lw=1)
        axes[0].set_ylabel("probability")
        fig.suptitle(f"From the start (π+, π−) = {_start_label(some.starts[start])}; "
                     "rest = 1 − π+ − π−")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4)
    return fig
