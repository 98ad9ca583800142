"""Sympy derivations of the gradients of every loss in :mod:`prefdyn.losses`, in probability space.

This is the book's independent derivation: each loss is written again here, as a sympy expression in the
probabilities ``pi^+ = pi(a+|x)``, ``pi^- = pi(a-|x)`` of the policy and ``pi_0^+``, ``pi_0^-`` of the
reference model (all positive symbols) and its parameters, then differentiated. The tests compare the
lambdified results with torch autograd of :mod:`prefdyn.losses` (``dl/dpi = (dl/dlogpi) / pi``).

Public API (stable names; :mod:`prefdyn.printed` uses them):

- :func:`loss_expr(name, stop_gradient=False) <loss_expr>` the loss as a sympy expression;
- :func:`derive(name, symmetric=None) <derive>` a cached :class:`Derivation` with ``d_pi_c`` = dl/dpi+,
  ``d_pi_r`` = dl/dpi-, ``ratio`` = (dl/dpi-) / (dl/dpi+) (the direction of 000 Cor. 1; 004 eq. 2 and
  Prop. 1 quote its inverse), the log-prob gradients ``d_logp_c``, ``d_logp_r``, whether the loss is
  balanced, the leading order of each as pi- -> 0 (000 Cor. 1-3) and the token-level gradient w.r.t. the
  logits of a softmax (000 App. B.1);
- :func:`numeric_gradients(name, **params) <numeric_gradients>` float64 numpy callables
  ``f(pi_c, pi_r, ref_c, ref_r) -> (dl/dpi+, dl/dpi-)``; :func:`numeric` for any one derived expression;
- :func:`derive_reward_model` the Bradley-Terry reward-model gradients (000 Sec. 4);
- :func:`stop_gradient_values`, :func:`heaviside0`, :func:`leading_order` building blocks (cheap).

Symbols: :data:`PI_C`, :data:`PI_R`, :data:`REF_C`, :data:`REF_R`; the parameter symbols of a loss are
``PARAM_SYMBOLS[name]`` (torch parameter name -> symbol); the reward-model scores :data:`R_C`, :data:`R_R`.
:mod:`prefdyn.printed` uses these very symbols (one set of sympy assumptions: a ``Symbol`` with other
assumptions would be another symbol). nbDPO's ``symmetric`` flag is the symbol
:data:`DLMIN` (Delta lambda_min): ``derive(name)`` keeps it symbolic, ``derive(name, symmetric=False)``
puts 0, ``symmetric=True`` puts ``1/(1+clip) - 1`` (004 Sec. 5.1).

Stop-gradient (detached) quantities
-----------------------------------
nbDPO's lambda (004 eq. 26) and its detached correction term ``log(pi^detached/pi_ref)`` (eq. 25), nbDPO
v2's lambda (eq. 27) and bDPO's lambda_w (eq. 29) carry no gradient in :mod:`prefdyn.losses`. Here each is a
separate symbol, :data:`SG_LAMBDA`, :data:`SG_H_C`, :data:`SG_LAMBDA_W` (``sg[...]``), in
``loss_expr(name, stop_gradient=True)``. The derivation differentiates that expression (the symbols are
constants) and only then substitutes their values, ``Derivation.stop_gradient`` (symbol -> expression).
``loss_expr(name)`` (the default) is the loss *value*, with the values substituted: for nbDPO it equals
DPO's value.

Leading order as pi- -> 0
-------------------------
:class:`LeadingOrder` records ``g ~ coefficient * (pi^-)**exponent * log(pi^-)**log_power`` (or ``zero``:
identically 0 near pi- = 0). It is derived, not typed in (:func:`leading_order`): first every
``Max``/``Min``/``Heaviside`` is resolved by the limits of its arguments (e.g. nbDPO's clip is active:
lambda -> 1 + Delta lambda_max; the SLiC hinge is inactive); then with ``pi^- = exp(-u)``, ``u -> oo``,
``exponent = lim -g_u/g`` and the log power is the first ``k`` in (0, 1, -1, 2, -2) for which
``lim g / ((pi^-)**exponent log(pi^-)**k)`` is finite and non-zero, that limit being the coefficient
(sympy ``limit``, i.e. gruntz). Only dl/dpi+ and dl/dpi- are expanded this way; the leading orders of the
log-prob gradients (times pi+, times pi-) and of the ratio (quotient of the leading terms) follow exactly.
``LeadingOrder.tends_to(beta=0.1)`` says whether the term goes to ``'0'``, stays ``'finite'`` or goes to
``'inf'`` (000 Cor. 2: for DPO with beta < 1, dl/dpi+ -> 0 while dl/dpi- -> inf).

Speed: ``derive`` is ``functools.lru_cache``-d; all nine losses take about 10-15 s in a fresh process on
the 2-core machine (the leading orders are most of it), then nothing.

Conventions are those of :mod:`prefdyn.losses` (sequence probabilities; the paper's IPO eta is beta; the
SLiC of 000 eq. 11; subgradient 0 at kinks: ``Heaviside(0) = 0`` like torch's ``relu``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import sympy as sp

from . import losses as _losses

__all__ = [
    "PI_C",
    "PI_R",
    "REF_C",
    "REF_R",
    "BETA",
    "BETA_C",
    "BETA_R",
    "GAMMA",
    "DELTA",
    "ETA",
    "LAM_DPOP",
    "CLIP",
    "DLMIN",
    "SG_LAMBDA",
    "SG_H_C",
    "SG_LAMBDA_W",
    "S_C",
    "S_O",
    "R_C",
    "R_R",
    "PARAM_SYMBOLS",
    "LeadingOrder",
    "Derivation",
    "RewardModelDerivation",
    "loss_expr",
    "stop_gradient_values",
    "heaviside0",
    "derive",
    "derive_reward_model",
    "leading_order",
    "numeric",
    "numeric_gradients",
    "param_values",
]

# ----------------------------------------------------------------------------- symbols
PI_C = sp.Symbol("pi^+", positive=True)  #: pi(a+|x), the policy's chosen-response probability
PI_R = sp.Symbol("pi^-", positive=True)  #: pi(a-|x)
REF_C = sp.Symbol("pi_0^+", positive=True)  #: pi_0(a+|x), reference
REF_R = sp.Symbol("pi_0^-", positive=True)  #: pi_0(a-|x)

BETA = sp.Symbol("beta", positive=True)
BETA_C = sp.Symbol("beta^+", positive=True)  #: flex-DPO beta on the chosen log-ratio (000 App. B.2.1)
BETA_R = sp.Symbol("beta^-", positive=True)
GAMMA = sp.Symbol("gamma", nonnegative=True)  #: SFT weight (000 eq. 7)
DELTA = sp.Symbol("delta", nonnegative=True)  #: SLiC margin (000 eq. 11)
ETA = sp.Symbol("eta", nonnegative=True)  #: SLiC regulariser weight (000 eq. 11)
LAM_DPOP = sp.Symbol("lambda_DPOP", nonnegative=True)  #: DPOP penalty weight
CLIP = sp.Symbol(r"\Delta\lambda_{\max}", nonnegative=True)  #: 004 eq. 26, the ``clip`` parameter
DLMIN = sp.Symbol(r"\Delta\lambda_{\min}", nonpositive=True)  #: 004 eq. 26 (0 or 1/(1+clip) - 1)

SG_LAMBDA = sp.Symbol(r"\operatorname{sg}[\lambda]", positive=True)  #: detached lambda of 004 eq. 26
SG_H_C = sp.Symbol(r"\operatorname{sg}[h^+]", real=True)  #: detached log(pi+/pi0+) of 004 eq. 25
SG_LAMBDA_W = sp.Symbol(r"\operatorname{sg}[\lambda_w]", nonnegative=True)  #: detached lambda_w, 004 eq. 29

S_C = sp.Symbol("s_c", positive=True)  #: softmax probability of the sampled token c (000 App. B.1)
S_O = sp.Symbol("s_{c'}", positive=True)  #: softmax probability of another class c'

PARAM_SYMBOLS: dict[str, dict[str, sp.Symbol]] = {
    "dpo": {"beta": BETA},
    "flex_dpo": {"beta_chosen": BETA_C, "beta_rejected": BETA_R},
    "sft_dpo": {"beta": BETA, "gamma": GAMMA},
    "ipo": {"beta": BETA},
    "slic": {"delta": DELTA, "eta": ETA},
    "dpop": {"beta": BETA, "lam": LAM_DPOP},
    "nbdpo": {"beta": BETA, "clip": CLIP, "symmetric": DLMIN},
    "nbdpo_v2": {"beta": BETA, "clip": CLIP, "symmetric": DLMIN},
    "bdpo": {"beta": BETA},
}
assert tuple(PARAM_SYMBOLS) == _losses.LOSS_NAMES

_LOG = sp.log
H_C = _LOG(PI_C) - _LOG(REF_C)  # log-ratio of the chosen response, h+
H_R = _LOG(PI_R) - _LOG(REF_R)  # h-


def _neg_logsigmoid(z: sp.Expr) -> sp.Expr:
    """``-log s(z) = log(1 + exp(-z))``."""
    return sp.log(1 + sp.exp(-z))


def _nb_lambda() -> sp.Expr:
    """004 eq. 26: ``1 + clip(log pi+ - log pi-, Delta lambda_min, Delta lambda_max)``."""
    return 1 + sp.Min(sp.Max(_LOG(PI_C) - _LOG(PI_R), DLMIN), CLIP)


def _bdpo_weight() -> sp.Expr:
    """004 eq. 29: ``lambda_w = log pi- / (log pi+ + log pi-)``."""
    return _LOG(PI_R) / (_LOG(PI_C) + _LOG(PI_R))


def _build(name: str) -> tuple[sp.Expr, dict[sp.Symbol, sp.Expr]]:
    """(loss with stop-gradient symbols, {stop-gradient symbol: value})."""
    if name == "dpo":  # 000 eq. 5
        return _neg_logsigmoid(BETA * (H_C - H_R)), {}
    if name == "flex_dpo":  # 000 App. B.2.1
        return _neg_logsigmoid(BETA_C * H_C - BETA_R * H_R), {}
    if name == "sft_dpo":  # 000 eq. 7
        return _neg_logsigmoid(BETA * (H_C - H_R)) - GAMMA * _LOG(PI_C), {}
    if name == "ipo":  # 000 eq. 8 with eta -> beta
        return (H_C - H_R - 1 / (2 * BETA)) ** 2, {}
    if name == "slic":  # 000 eq. 11
        return sp.Max(0, DELTA - _LOG(PI_C) + _LOG(PI_R)) - ETA * _LOG(PI_C), {}
    if name == "dpop":  # Pal et al. 2024
        return _neg_logsigmoid(BETA * (H_C - H_R - LAM_DPOP * sp.Max(0, _LOG(REF_C) - _LOG(PI_C)))), {}
    if name == "nbdpo":  # 004 eq. 25 (corrected parenthesis), lambda of eq. 26
        expr = _neg_logsigmoid(BETA * SG_LAMBDA * H_C - BETA * H_R - BETA * (SG_LAMBDA - 1) * SG_H_C)
        return expr, {SG_LAMBDA: _nb_lambda(), SG_H_C: H_C}
    if name == "nbdpo_v2":  # 004 eq. 27
        return _neg_logsigmoid(BETA * (SG_LAMBDA * H_C - H_R)), {SG_LAMBDA: _nb_lambda()}
    if name == "bdpo":  # 004 eq. 28-29
        return _neg_logsigmoid(BETA * (SG_LAMBDA_W * H_C - (1 - SG_LAMBDA_W) * H_R)), {SG_LAMBDA_W: _bdpo_weight()}
    raise _unknown_loss(name)


def _unknown_loss(name: Any) -> ValueError:
    return ValueError(f"unknown loss {name!r}; prefdyn.symbolic derives {', '.join(PARAM_SYMBOLS)}")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or name not in PARAM_SYMBOLS:
        raise _unknown_loss(name)
    return name


def _dlmin_value(symmetric: bool | None) -> sp.Expr | None:
    if symmetric is None:
        return None
    return 1 / (1 + CLIP) - 1 if symmetric else sp.Integer(0)


def loss_expr(name: str, stop_gradient: bool = False, symmetric: bool | None = None) -> sp.Expr:
    """Loss ``name`` as a sympy expression in ``PI_C, PI_R, REF_C, REF_R`` and its parameter symbols.

    ``stop_gradient=True`` returns the form that is differentiated, with the detached quantities as the
    symbols ``SG_*`` (see the module docstring); the default substitutes their values (the loss value).
    ``symmetric`` substitutes nbDPO's Delta lambda_min (None keeps the symbol ``DLMIN``).
    """
    _check_name(name)
    expr, sg = _build(name)
    if not stop_gradient:
        expr = expr.subs(sg)
    d = _dlmin_value(symmetric)
    if d is not None:
        expr = expr.subs(DLMIN, d)
    return expr


def stop_gradient_values(name: str) -> dict[sp.Symbol, sp.Expr]:
    """``{SG_* symbol: its value}`` for loss ``name`` (empty without detached quantities); cheap.

    ``loss_expr(name, stop_gradient=True).subs(stop_gradient_values(name)) == loss_expr(name)``.
    """
    _check_name(name)
    return dict(_build(name)[1])


# ----------------------------------------------------------------------------- leading order
def heaviside0(expr: sp.Expr) -> sp.Expr:
    """Public name of :func:`_heaviside0`: every ``Heaviside(x)`` becomes ``Heaviside(x, 0)``."""
    return _heaviside0(expr)


def _heaviside0(expr: sp.Expr) -> sp.Expr:
    """Use ``Heaviside(x, 0)`` (subgradient 0 at the kink, as torch ``relu``/``clamp`` masks give)."""
    return expr.replace(
        lambda e: isinstance(e, sp.Heaviside) and (len(e.args) == 1 or e.args[1] != 0),
        lambda e: sp.Heaviside(e.args[0], 0),
    )


def _lim(expr: sp.Expr, t: sp.Symbol) -> sp.Expr | None:
    """``lim_{t -> 0+} expr`` or None where sympy fails."""
    try:
        out = sp.limit(expr, t, 0, "+")
    except (NotImplementedError, ValueError, TypeError, RecursionError):
        return None
    if out.has(sp.Limit) or out.has(sp.AccumBounds) or out is sp.nan:
        return None
    return out


def _resolve_branches(expr: sp.Expr, t: sp.Symbol) -> sp.Expr:
    """Replace Max/Min/Heaviside whose arguments depend on ``t`` by the branch taken as ``t -> 0+``."""

    def rebuild(e: sp.Expr) -> sp.Expr:
        if not e.args or not e.has(t):
            return e
        args = [rebuild(a) for a in e.args]
        e = e.func(*args) if any(a is not b for a, b in zip(args, e.args)) else e
        if isinstance(e, (sp.Max, sp.Min)):
            lims = [_lim(a, t) for a in e.args]
            if any(l is None for l in lims):
                return e
            want = sp.oo if isinstance(e, sp.Max) else -sp.oo
            for a, l in zip(e.args, lims):
                if l == want:
                    return a
            # no infinite winner: compare the finite limits pairwise
            best = 0
            for i in range(1, len(lims)):
                diff = sp.simplify(lims[i] - lims[best])
                better = diff.is_extended_positive if isinstance(e, sp.Max) else diff.is_extended_negative
                worse = diff.is_extended_nonpositive if isinstance(e, sp.Max) else diff.is_extended_nonnegative
                if better:
                    best = i
                elif not worse:
                    return e
            return e.args[best]
        if isinstance(e, sp.Heaviside):
            l = _lim(e.args[0], t)
            if l is not None and l.is_extended_positive:
                return sp.Integer(1)
            if l is not None and l.is_extended_negative:
                return sp.Integer(0)
        return e

    return rebuild(expr)


@dataclass(frozen=True)
class LeadingOrder:
    """``g ~ coefficient * t**exponent * log(t)**log_power`` as ``t = pi^- -> 0+`` (or ``zero``).

    Fields are ``None`` where sympy could not decide. ``branch_resolved`` is ``g`` with its Max/Min/Heaviside
    resolved for ``pi^- -> 0``.
    """

    coefficient: sp.Expr | None
    exponent: sp.Expr | None
    log_power: sp.Expr | None
    zero: bool = False
    branch_resolved: sp.Expr | None = None

    @property
    def ok(self) -> bool:
        return self.zero or None not in (self.coefficient, self.exponent, self.log_power)

    def expr(self, t: sp.Symbol = PI_R) -> sp.Expr | None:
        """The leading term as an expression in ``t`` (default ``PI_R``)."""
        if self.zero:
            return sp.Integer(0)
        if not self.ok:
            return None
        return self.coefficient * t**self.exponent * sp.log(t) ** self.log_power

    def times(self, factor: sp.Expr, t_power: int = 0) -> "LeadingOrder":
        """Leading order of ``factor * t**t_power * g`` (``factor`` free of t)."""
        if self.zero or not self.ok:
            return self
        return LeadingOrder(sp.simplify(self.coefficient * factor), self.exponent + t_power, self.log_power)

    def over(self, other: "LeadingOrder") -> "LeadingOrder":
        """Leading order of ``g / h`` from those of ``g`` and ``h`` (``h`` not identically 0)."""
        if self.zero and other.ok and not other.zero:
            return self
        if not (self.ok and other.ok) or other.zero:
            return LeadingOrder(None, None, None)
        return LeadingOrder(
            sp.simplify(self.coefficient / other.coefficient),
            sp.simplify(self.exponent - other.exponent),
            sp.simplify(self.log_power - other.log_power),
        )

    def tends_to(self, **subs: Any) -> str | None:
        """``'0'``, ``'finite'`` or ``'inf'`` (in absolute value) as pi- -> 0, after substituting symbols.

        ``subs`` maps symbol names (e.g. ``beta=0.1``) to values; ``None`` if undecided (e.g. the sign of
        ``beta - 1`` with beta left symbolic).
        """
        if self.zero:
            return "0"
        if not self.ok:
            return None
        syms = sp.sympify(self.exponent).free_symbols | sp.sympify(self.log_power).free_symbols
        rep = {s: subs[s.name] for s in syms if s.name in subs}
        e = sp.sympify(self.exponent).subs(rep)
        k = sp.sympify(self.log_power).subs(rep)
        if e.is_positive:
            return "0"
        if e.is_negative:
            return "inf"
        if e.is_zero:
            if k.is_positive:
                return "inf"
            if k.is_negative:
                return "0"
            if k.is_zero:
                return "finite"
        return None


def _exp_to_pow(expr: sp.Expr) -> sp.Expr:
    """Rewrite ``exp(sum c_i log(y_i) + rest)`` as ``prod y_i**c_i * exp(rest)`` (all y_i positive)."""

    def conv(e: sp.Expr) -> sp.Expr:
        out = []
        rest = []
        for term in sp.Add.make_args(sp.expand(e.args[0])):
            logs = [f for f in sp.Mul.make_args(term) if isinstance(f, sp.log)]
            if len(logs) == 1 and logs[0].args[0].is_positive:
                coeff = term / logs[0]
                if not coeff.has(sp.log):
                    out.append(logs[0].args[0] ** coeff)
                    continue
            rest.append(term)
        return sp.Mul(*out) * sp.exp(sp.Add(*rest))

    return expr.replace(lambda e: isinstance(e, sp.exp), conv)


_U = sp.Symbol("u", positive=True)  # t = exp(-u), u -> oo


def _lim_inf(expr: sp.Expr) -> sp.Expr | None:
    try:
        out = sp.limit(expr, _U, sp.oo)
    except (NotImplementedError, ValueError, TypeError, RecursionError):
        return None
    if out.has(sp.Limit) or out.has(sp.AccumBounds) or out is sp.nan:
        return None
    return out


def leading_order(expr: sp.Expr, t: sp.Symbol = PI_R) -> LeadingOrder:
    """Leading-order behaviour of ``expr`` as ``t -> 0+`` (see :class:`LeadingOrder`).

    Branches (Max/Min/Heaviside) are resolved first. Then ``t = exp(-u)``, ``u -> oo`` (so ``log t = -u``
    and powers of t are exponentials, gruntz's home ground): ``exponent = lim -g_u / g`` and the log power
    is the first ``k`` in (0, 1, -1, 2, -2) for which ``lim g / (t**exponent (-u)**k)`` is finite and
    non-zero (that limit is the coefficient).
    """
    g = _resolve_branches(sp.sympify(expr), t)
    if g.has(sp.Max, sp.Min, sp.Heaviside) and any(a.has(t) for a in g.atoms(sp.Max, sp.Min, sp.Heaviside)):
        return LeadingOrder(None, None, None, branch_resolved=g)
    if g.is_zero or sp.cancel(_exp_to_pow(g)) == 0:
        return LeadingOrder(sp.Integer(0), None, None, zero=True, branch_resolved=sp.Integer(0))
    if not g.has(t):
        return LeadingOrder(g, sp.Integer(0), sp.Integer(0), branch_resolved=g)
    gu = sp.expand_log(_exp_to_pow(g.subs(t, sp.exp(-_U))), force=True)
    gu = _exp_to_pow(gu)
    e = _lim_inf(sp.cancel(-sp.diff(gu, _U) / gu))
    if e is None or not e.is_finite:
        return LeadingOrder(None, None, None, branch_resolved=g)
    e = sp.simplify(sp.powsimp(e, force=True))
    h = sp.powsimp(gu * sp.exp(e * _U))
    for k in (0, 1, -1, 2, -2):
        c = _lim_inf(h / (-_U) ** k)
        if c is not None and c.is_finite and c != 0:
            return LeadingOrder(_nice(c), e, sp.Integer(k), branch_resolved=g)
    return LeadingOrder(None, e, None, branch_resolved=g)


def _nice(c: sp.Expr) -> sp.Expr:
    """Readable coefficient: logs of products expanded, powers combined."""
    return sp.simplify(sp.powsimp(sp.expand_log(sp.simplify(c), force=True)))


# ----------------------------------------------------------------------------- token level (000 App. B.1)
@functools.lru_cache(maxsize=None)
def _softmax_factors() -> tuple[sp.Expr, sp.Expr]:
    """Derive d pi / d x_c = pi (1 - s_c) and d pi / d x_c' = -pi s_c' for pi = P_rest * softmax(x)_c.

    Returns the two factors ``(1 - S_C, -S_O)`` after checking them symbolically against the softmax.
    """
    xc, xo = sp.symbols("x_c x_o", real=True)
    rest, prest = sp.symbols("R P_rest", positive=True)  # sum of exp of the other logits; other tokens' probs
    z = sp.exp(xc) + sp.exp(xo) + rest
    sc, so = sp.exp(xc) / z, sp.exp(xo) / z
    pi = prest * sc  # 000 App. B.1: pi = pi_{-i} * pi_i
    f_c = sp.simplify(sp.diff(pi, xc) / pi)
    f_o = sp.simplify(sp.diff(pi, xo) / pi)
    if sp.simplify(f_c - (1 - sc)) != 0 or sp.simplify(f_o + so) != 0:  # pragma: no cover - a sympy regression
        raise RuntimeError(f"softmax derivative check failed: {f_c}, {f_o}")
    return 1 - S_C, -S_O


# ----------------------------------------------------------------------------- derivation
@dataclass(frozen=True)
class Derivation:
    """Everything derived for one loss (sympy expressions; see the module docstring).

    ``ratio`` is ``d_pi_r / d_pi_c`` (000 Cor. 1's direction). ``balanced_log``: ``d_logp_c + d_logp_r``
    is identically 0 (the pair is pushed apart with equal force in log space, like the reward model of
    000 Sec. 4). ``balanced_prob``: ``d_pi_c + d_pi_r`` identically 0 (004 Definition 1, pointwise).
    ``token_chosen['sampled']`` is dl/dx_c for the logit of the chosen response's sampled token,
    ``token_chosen['other']`` dl/dx_c' for another class (in terms of the softmax probabilities ``S_C``,
    ``S_O``); likewise ``token_rejected``. ``lead_*`` are the :class:`LeadingOrder` as pi- -> 0.
    """

    name: str
    params: dict[str, sp.Symbol]
    loss: sp.Expr
    loss_sg: sp.Expr
    stop_gradient: dict[sp.Symbol, sp.Expr]
    d_pi_c: sp.Expr
    d_pi_r: sp.Expr
    ratio: sp.Expr
    d_logp_c: sp.Expr
    d_logp_r: sp.Expr
    imbalance_log: sp.Expr
    balanced_log: bool
    balanced_prob: bool
    token_chosen: dict[str, sp.Expr]
    token_rejected: dict[str, sp.Expr]
    lead_d_pi_c: LeadingOrder
    lead_d_pi_r: LeadingOrder
    lead_ratio: LeadingOrder
    lead_d_logp_c: LeadingOrder
    lead_d_logp_r: LeadingOrder
    #: the same in the stop-gradient form (``SG_*`` symbols not substituted; equal to the above for losses
    #: without detached quantities), handy for display: e.g. nbDPO's ``d_logp_c_sg`` shows the factor lambda
    d_pi_c_sg: sp.Expr = field(repr=False, default=None)
    d_pi_r_sg: sp.Expr = field(repr=False, default=None)
    ratio_sg: sp.Expr = field(repr=False, default=None)
    d_logp_c_sg: sp.Expr = field(repr=False, default=None)
    d_logp_r_sg: sp.Expr = field(repr=False, default=None)

    @property
    def symbols(self) -> tuple[sp.Symbol, ...]:
        """Argument order of the numeric functions: pi+, pi-, pi0+, pi0-, then the parameter symbols."""
        return (PI_C, PI_R, REF_C, REF_R) + tuple(self.params.values())


def _tidy(expr: sp.Expr) -> sp.Expr:
    """Fast display form: exp of logs as powers, then ``cancel`` (Max/Min/Heaviside are kept as atoms)."""
    return sp.cancel(_exp_to_pow(expr))


def _is_zero(expr: sp.Expr, symbols: tuple[sp.Symbol, ...]) -> bool:
    """Is ``expr`` identically 0? ``cancel`` first; a non-zero value at a rational point settles False."""
    e = sp.cancel(_exp_to_pow(expr))
    if e == 0:
        return True
    rng = np.random.default_rng(0)
    for _ in range(3):
        point = {s: sp.Rational(int(rng.integers(1, 99)), 100) for s in symbols}
        val = sp.N(e.subs(point), 30)
        if val.is_number and abs(val) > 1e-20:
            return False
    return bool(sp.simplify(e) == 0)


@functools.lru_cache(maxsize=None)
def derive(name: str, symmetric: bool | None = None) -> Derivation:
    """Differentiate loss ``name`` symbolically (cached). ``symmetric`` fixes nbDPO's Delta lambda_min.

    Steps: differentiate ``loss_expr(name, stop_gradient=True)`` w.r.t. pi+ and pi- (stop-gradient symbols
    constant), substitute the detached values, set ``Heaviside(0) = 0``. The log-prob gradients are
    ``pi * dl/dpi``; the ratio is formed in the stop-gradient form (where the common sigmoid factor cancels).
    Leading orders are derived for dl/dpi+ and dl/dpi- (:func:`leading_order`); those of the log-prob
    gradients (times pi+, times pi-) and of the ratio (quotient of leading terms) follow from them.
    """
    _check_name(name)
    if symmetric is not None and "symmetric" not in PARAM_SYMBOLS[name]:
        raise ValueError(f"{name}: 'symmetric' applies only to nbdpo and nbdpo_v2 (got symmetric={symmetric!r})")
    if symmetric is not None and not isinstance(symmetric, bool):
        raise ValueError(f"{name}: 'symmetric' must be True, False or None (got {symmetric!r})")
    expr_sg, sg = _build(name)
    dl = _dlmin_value(symmetric)
    if dl is not None:
        sg = {k: v.subs(DLMIN, dl) for k, v in sg.items()}
        expr_sg = expr_sg.subs(DLMIN, dl)
    params = dict(PARAM_SYMBOLS[name])
    if dl is not None and "symmetric" in params:
        params.pop("symmetric")

    def sub(e: sp.Expr) -> sp.Expr:
        return _heaviside0(e.subs(sg)) if sg else _heaviside0(e)

    gc_sg = _heaviside0(sp.diff(expr_sg, PI_C))  # stop-gradient symbols are constants here
    gr_sg = _heaviside0(sp.diff(expr_sg, PI_R))
    gc, gr = sub(gc_sg), sub(gr_sg)
    ratio_sg = _tidy(gr_sg / gc_sg)
    ratio = sp.cancel(sp.together(sub(ratio_sg)))
    if not ratio.has(sp.Max, sp.Min, sp.Heaviside):
        ratio = sp.factor(ratio)
    lc_sg, lr_sg = PI_C * gc_sg, PI_R * gr_sg  # dl/dlog pi = pi dl/dpi
    syms = (PI_C, PI_R, REF_C, REF_R) + tuple(params.values()) + tuple(sg)
    balanced_log = _is_zero(lc_sg + lr_sg, syms)
    balanced_prob = _is_zero(gc_sg + gr_sg, syms)
    d_logp_c_sg, d_logp_r_sg = _tidy(lc_sg), _tidy(lr_sg)
    d_logp_c, d_logp_r = sub(d_logp_c_sg), sub(d_logp_r_sg)
    f_s, f_o = _softmax_factors()
    lead_c = leading_order(gc)
    lead_r = leading_order(gr)
    return Derivation(
        name=name,
        params=params,
        loss=loss_expr(name, symmetric=symmetric),
        loss_sg=expr_sg,
        stop_gradient=sg,
        d_pi_c=gc,
        d_pi_r=gr,
        ratio=ratio,
        d_logp_c=d_logp_c,
        d_logp_r=d_logp_r,
        imbalance_log=sp.Integer(0) if balanced_log else sub(_tidy(lc_sg + lr_sg)),
        balanced_log=balanced_log,
        balanced_prob=balanced_prob,
        token_chosen={"sampled": d_logp_c * f_s, "other": d_logp_c * f_o},
        token_rejected={"sampled": d_logp_r * f_s, "other": d_logp_r * f_o},
        lead_d_pi_c=lead_c,
        lead_d_pi_r=lead_r,
        lead_ratio=lead_r.over(lead_c),
        lead_d_logp_c=lead_c.times(PI_C),
        lead_d_logp_r=lead_r.times(1, t_power=1),
        d_pi_c_sg=gc_sg,
        d_pi_r_sg=gr_sg,
        ratio_sg=ratio_sg,
        d_logp_c_sg=d_logp_c_sg,
        d_logp_r_sg=d_logp_r_sg,
    )


# ----------------------------------------------------------------------------- reward model (000 Sec. 4)
R_C = sp.Symbol("r^+", real=True)  #: the reward-model score of the chosen response (000 Sec. 4)
R_R = sp.Symbol("r^-", real=True)


@dataclass(frozen=True)
class RewardModelDerivation:
    """000 Sec. 4: ``l = -log s(r+ - r-)``; ``d_r_c = -1/(1+e^(r+ - r-)) = -d_r_r`` (balanced)."""

    loss: sp.Expr
    d_r_c: sp.Expr
    d_r_r: sp.Expr
    balanced: bool


@functools.lru_cache(maxsize=None)
def derive_reward_model() -> RewardModelDerivation:
    """Gradients of the Bradley-Terry reward-model loss w.r.t. the two rewards (000 Sec. 4, eq. 3)."""
    loss = _neg_logsigmoid(R_C - R_R)
    dc = sp.simplify(sp.diff(loss, R_C))
    dr = sp.simplify(sp.diff(loss, R_R))
    return RewardModelDerivation(loss, dc, dr, bool(sp.simplify(dc + dr) == 0))


# ----------------------------------------------------------------------------- numeric versions
def param_values(name: str, **params: Any) -> tuple[float, ...]:
    """The validated numeric parameter values of ``name`` in the order of ``derive(name).params``.

    Validation (and defaults) are :func:`prefdyn.losses.check_loss_params`'s; ``symmetric`` becomes the
    value of Delta lambda_min (004 Sec. 5.1).
    """
    p = _losses.check_loss_params(name, **params)
    out = []
    for key in PARAM_SYMBOLS[name]:
        if key == "symmetric":
            out.append(float(_losses.delta_lambda_min(p["clip"], p["symmetric"])))
        else:
            out.append(float(p[key]))
    return tuple(out)


_WHICH = ("loss", "d_pi_c", "d_pi_r", "ratio", "d_logp_c", "d_logp_r")


@functools.lru_cache(maxsize=None)
def _lambdified(name: str, which: str) -> Callable[..., Any]:
    d = derive(name)
    expr = d.loss if which == "loss" else getattr(d, which)
    return sp.lambdify(d.symbols, expr, modules="numpy")


def numeric(name: str, which: str, **params: Any) -> Callable[..., np.ndarray]:
    """Float64 numpy version of one derived quantity: ``f(pi_c, pi_r, ref_c, ref_r) -> array``.

    ``which`` is one of ``'loss', 'd_pi_c', 'd_pi_r', 'ratio', 'd_logp_c', 'd_logp_r'``. Inputs broadcast.
    The lambdified formulas are the raw derivatives (exp/log of ratios): use moderate probabilities
    (log pi in about [-300, 0] and |beta log-ratio| below ~700); the torch losses are the robust ones.
    """
    _check_name(name)
    if which not in _WHICH:
        raise ValueError(f"which must be one of {', '.join(_WHICH)} (got {which!r})")
    vals = param_values(name, **params)
    f = _lambdified(name, which)

    def fn(pi_c, pi_r, ref_c, ref_r):
        args = [np.asarray(a, dtype=np.float64) for a in (pi_c, pi_r, ref_c, ref_r)]
        shape = np.broadcast_shapes(*(a.shape for a in args))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out = f(*args, *vals)
        return np.broadcast_to(np.asarray(out, dtype=np.float64), shape).copy()

    fn.__name__ = f"{name}_{which}"
    return fn


def numeric_gradients(name: str, **params: Any) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Float64 ``f(pi_c, pi_r, ref_c, ref_r) -> (dl/dpi+, dl/dpi-)`` from the sympy derivation of ``name``."""
    fc = numeric(name, "d_pi_c", **params)
    fr = numeric(name, "d_pi_r", **params)

    def fn(pi_c, pi_r, ref_c, ref_r):
        return fc(pi_c, pi_r, ref_c, ref_r), fr(pi_c, pi_r, ref_c, ref_r)

    fn.__name__ = f"{name}_gradients"
    return fn
