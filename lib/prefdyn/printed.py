"""The papers' printed gradient equations, transcribed exactly as printed, and the errata.

This module is the "printed equations" leg of the book's three-way check of the loss zoo (issue [2/7]):

1. :mod:`prefdyn.symbolic` derives every gradient with sympy from the loss definitions;
2. **here** every gradient formula the three seed papers print is transcribed *as printed* (slips included)
   as a sympy expression, with its source, and compared with the derivation;
3. the torch losses of :mod:`prefdyn.losses` are compared with both (``tests/test_symbolic.py``,
   ``tests/test_printed.py``).

Seed papers are quoted by their file number in ``shared/seeds``: 000 (Yan et al., "3D-Properties"),
002 (Feng et al., "Towards analyzing and understanding the limitations of DPO"), 004 (Ma et al., "Gradient
imbalance in DPO").

Contents
--------
- :data:`PRINTED`: every printed equation that is **right**, as a :class:`Printed` (key, source, the printed
  sympy expression, and a function that returns the independent derivation);
- :data:`ERRATA`: every printed equation that is **wrong**, as an :class:`Erratum` (paper, equation, kind,
  printed form, corrected form, one-line explanation, and :meth:`Erratum.check`, which evaluates the printed
  form, the corrected form and the derivation at a numeric point);
- :data:`NOTES`: printed claims (not equations) that hold only under a condition the paper does not state,
  each with the numbers that show it;
- :func:`comparison_table`: the chapter's table of all losses (gradient ratio, does dl/dpi+ vanish as
  pi- -> 0, balanced in log space?), computed from :mod:`prefdyn.symbolic`; :func:`gradient_path`, both
  gradients along a path of falling pi- (torch); :func:`printed_agreement`, the agreeing forms by paper;
- :func:`latex`, :func:`display_latex`: LaTeX of an expression with the book's symbol names.

The ``gradients`` chapter shows all this through :mod:`prefdyn.chapters.gradients_view` (tables, Markdown,
the figure); nothing here renders.

Conventions
-----------
Probabilities are sequence probabilities: ``pi^+ = pi(a+|x)`` (chosen, 004's ``pi(y_w|x)``), ``pi^- =
pi(a-|x)`` (rejected, 004's ``pi(y_l|x)``), and ``pi_0^+``, ``pi_0^-`` the reference model's (004's
``pi_ref``). 002 works in ``x1 = pi^+/pi_0^+`` and ``x2 = pi^-/pi_0^-``. 000's IPO parameter ``eta`` is the
loss zoo's ``beta`` (as in TRL); 000's flex-beta ``beta^+``, ``beta^-`` are ``beta_chosen``,
``beta_rejected``. Where a printed equation is a limit ("->" as ``pi^- -> 0``), the entry says so
(``limit``), and the comparison is of the leading-order term: ``exact / printed -> 1``.

Derivations of things that are not losses of the zoo (the softmax Jacobian, 004 Theorem 1's logit update
``Delta s_i`` of one gradient step, the token-level gradients of 000 App. B.1) are done here, by sympy
differentiation of the model the paper states; derivations of the zoo's losses come from
:func:`prefdyn.symbolic.derive` (the one independent sympy derivation), and so do their symbols (this
module names them ``PI_P``, ``PI_M``, ... for ``symbolic.PI_C``, ``symbolic.PI_R``, ...).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import sympy as sp

from . import symbolic
from .symbolic import BETA, CLIP, DELTA, DLMIN, ETA, GAMMA
from .symbolic import BETA_C as BETA_P, BETA_R as BETA_M, PI_C as PI_P, PI_R as PI_M
from .symbolic import R_C as R_P, R_R as R_M, REF_C as REF_P, REF_R as REF_M

__all__ = [
    "relative_error",
    "Printed",
    "Erratum",
    "PRINTED",
    "ERRATA",
    "PRINTED_BY_KEY",
    "ERRATA_BY_ID",
    "PAPERS",
    "SYMBOLS",
    "DOMAINS",
    "latex",
    "display_latex",
    "evaluate",
    "random_points",
    "comparison_table",
    "gradient_path",
    "gradients",
    "derived",
    "loss_params",
    "printed_agreement",
    "Note",
    "NOTES",
    "CONSEQUENCE_CLASSES",
    "CONSEQUENCES",
    "errata_ranking",
    "corollary2_limits",
    "field_002",
    "bdpo_not_detached",
    "bdpo_detachment",
    "BALANCED",
    "matched_beta",
    "numeric_limit",
    "path_limits",
    "detachment_limits",
]

# ============================================================================ symbols
# The zoo's symbols are :mod:`prefdyn.symbolic`'s (imported at the top, under this module's +/- names):
# PI_P, PI_M = pi(a+|x), pi(a-|x); REF_P, REF_M = pi_0(a+|x), pi_0(a-|x); BETA; BETA_P, BETA_M = flex-beta
# DPO's beta+, beta- (000 App. B.2.1); GAMMA, the SFT weight (000 eq. 7; also 004's step gamma = eta g^2);
# ETA, SLiC's eta (000 eq. 11; also 000's IPO eta, eq. 8); DELTA, SLiC's margin; CLIP, DLMIN = 004 eq. 26's
# Delta lambda_max, Delta lambda_min; R_P, R_M the reward-model scores (000 Sec. 4). Those below are the
# papers' own.
X1, X2 = sp.symbols("x_1 x_2", positive=True)                # 002: x1 = pi+/pi0+, x2 = pi-/pi0-
# 000 App. B.1, token level: position i of the chosen / rejected sequence, sampled token c, another token c',
# and one more logit standing for the rest of the vocabulary; pi_{-i} is the product over the other positions.
XC_P, XD_P, XO_P = sp.symbols("xc^+ xd^+ xo^+", real=True)
XC_M, XD_M, XO_M = sp.symbols("xc^- xd^- xo^-", real=True)
REST_P, REST_M = sp.symbols("rest^+ rest^-", positive=True)
# 004 Sec. 3-4: a softmax over three responses with logits s1, s2, s3; the pair is (i, j) = (1, 2).
S1, S2, S3 = sp.symbols("s_1 s_2 s_3", real=True)
REF1, REF2 = sp.symbols("pi_ref1 pi_ref2", positive=True)
TAU = sp.Symbol("tau", real=True)                             # +1: y_i preferred, -1: y_j preferred
LR = sp.Symbol("eta_lr", positive=True)                       # 004's learning rate eta
G = sp.Symbol("g", positive=True)                             # 004 Assumption 1: |ds_i/dtheta| = g
CB = sp.Symbol("C", positive=True)                            # 004 eq. 11: the constant of a balanced loss
LAMC = sp.Symbol("lambda_c", positive=True)                   # 004 App. C: lambda = -E[c_ij]
W1, W2, W3 = sp.symbols("w_1 w_2 w_3", real=True)             # 004 Theorem 2: w_i
LAM = sp.Symbol("lambda", positive=True)                      # 004 eq. 25-27: the nbDPO weight
PW_DET = sp.Symbol("pi^+_det", positive=True)                 # 004 eq. 25: pi_theta^detached(y_w|x)
R1, R2, R3 = sp.symbols("r_1 r_2 r_3", real=True)             # 004 eq. 4-5: rewards of three responses
Q1, Q2, Q3 = sp.symbols("q_1 q_2 q_3", positive=True)         # 004 eq. 4-5: policy probabilities
QREF1, QREF2, QREF3 = sp.symbols("q_ref1 q_ref2 q_ref3", positive=True)

SYMBOLS: dict[str, sp.Symbol] = {
    s.name: s for s in (PI_P, PI_M, REF_P, REF_M, BETA, BETA_P, BETA_M, GAMMA, ETA, DELTA, X1, X2, R_P, R_M,
                        XC_P, XD_P, XO_P, XC_M, XD_M, XO_M, REST_P, REST_M, S1, S2, S3, REF1, REF2, TAU, LR,
                        G, CB, LAMC, W1, W2, W3, LAM, PW_DET, R1, R2, R3, Q1, Q2, Q3, QREF1, QREF2, QREF3)
}

#: LaTeX names where sympy's default would not read like the papers.
LATEX_NAMES: dict[sp.Symbol, str] = {
    XC_P: r"x^{+}_{i,c}", XD_P: r"x^{+}_{i,c'}", XO_P: r"x^{+}_{i,o}",
    XC_M: r"x^{-}_{i,c}", XD_M: r"x^{-}_{i,c'}", XO_M: r"x^{-}_{i,o}",
    REST_P: r"\pi^{+}_{-i}", REST_M: r"\pi^{-}_{-i}",
    REF1: r"\pi_{\mathrm{ref}}(y_i)", REF2: r"\pi_{\mathrm{ref}}(y_j)",
    LR: r"\eta", LAMC: r"\lambda", PW_DET: r"\pi_\theta^{\mathrm{det}}(y_w)",
    Q1: r"\pi_1", Q2: r"\pi_2", Q3: r"\pi_3",
    QREF1: r"\pi_{\mathrm{ref},1}", QREF2: r"\pi_{\mathrm{ref},2}", QREF3: r"\pi_{\mathrm{ref},3}",
    S1: r"s_i", S2: r"s_j", S3: r"s_k",
}


def latex(expr: Any) -> str:
    """LaTeX of a sympy expression with the book's symbol names (e.g. ``\\pi^{+}_{0}``)."""
    return sp.latex(expr, symbol_names=LATEX_NAMES)


def display_latex(expr: Any) -> str:
    """LaTeX for display: the book's symbol names, powers written as powers (``(\\pi^-)^{1/10}``, not a
    10th root, which is hard to read at the size of an exponent)."""
    return sp.latex(expr, symbol_names=LATEX_NAMES, root_notation=False, fold_frac_powers=True)


#: Where random test points are drawn, per symbol: ("log", lo, hi) log-uniform, ("lin", lo, hi) uniform,
#: ("choice", values).
DOMAINS: dict[sp.Symbol, tuple] = {
    PI_P: ("log", 1e-3, 0.95), PI_M: ("log", 1e-3, 0.95), REF_P: ("log", 1e-3, 0.95), REF_M: ("log", 1e-3, 0.95),
    BETA: ("log", 0.02, 3.0), BETA_P: ("log", 0.02, 3.0), BETA_M: ("log", 0.02, 3.0),
    GAMMA: ("log", 0.01, 2.0), ETA: ("log", 0.01, 2.0), DELTA: ("lin", 0.1, 8.0),
    X1: ("log", 0.01, 20.0), X2: ("log", 0.01, 20.0), R_P: ("lin", -6.0, 6.0), R_M: ("lin", -6.0, 6.0),
    XC_P: ("lin", -3.0, 3.0), XD_P: ("lin", -3.0, 3.0), XO_P: ("lin", -3.0, 3.0),
    XC_M: ("lin", -3.0, 3.0), XD_M: ("lin", -3.0, 3.0), XO_M: ("lin", -3.0, 3.0),
    REST_P: ("log", 1e-3, 1.0), REST_M: ("log", 1e-3, 1.0),
    S1: ("lin", -3.0, 3.0), S2: ("lin", -3.0, 3.0), S3: ("lin", -3.0, 3.0),
    REF1: ("log", 1e-2, 0.9), REF2: ("log", 1e-2, 0.9), TAU: ("choice", (-1, 1)), LR: ("log", 1e-3, 0.1),
    G: ("log", 0.3, 3.0), CB: ("log", 0.3, 3.0), LAMC: ("lin", 0.05, 0.5),
    W1: ("lin", -2.0, 2.0), W2: ("lin", -2.0, 2.0), W3: ("lin", -2.0, 2.0), LAM: ("lin", 1.0, 1.5),
    PW_DET: ("log", 1e-3, 0.95), CLIP: ("lin", 0.0, 1.0), DLMIN: ("lin", -0.5, 0.0),
    R1: ("lin", -3.0, 3.0), R2: ("lin", -3.0, 3.0), R3: ("lin", -3.0, 3.0),
    Q1: ("log", 0.05, 0.9), Q2: ("log", 0.05, 0.9), Q3: ("log", 0.05, 0.9),
    QREF1: ("log", 0.05, 0.9), QREF2: ("log", 0.05, 0.9), QREF3: ("log", 0.05, 0.9),
}


def sigma(u: sp.Expr) -> sp.Expr:
    """The logistic sigmoid ``1 / (1 + exp(-u))``."""
    return 1 / (1 + sp.exp(-u))


#: An unevaluated sigma(u) for display (the printed forms read like the papers); :func:`expand_sigma`
#: turns it into :func:`sigma` before anything is evaluated or simplified.
SIG = sp.Function("sigma")


def expand_sigma(expr: sp.Expr) -> sp.Expr:
    """Replace every display ``SIG(u)`` by ``1 / (1 + exp(-u))``."""
    return sp.sympify(expr).replace(SIG, lambda u: sigma(u))


# ============================================================================ evaluation helpers
def _n(expr: sp.Expr, point: Mapping[sp.Symbol, Any], digits: int = 40) -> sp.Expr:
    """``expr`` at ``point`` as a sympy Float of ``digits`` digits (mpmath; no float under/overflow)."""
    subs = {k: sp.Float(v, digits + 10) if not isinstance(v, int) else sp.Integer(v) for k, v in point.items()}
    val = sp.N(sp.sympify(expr).subs(subs), digits)
    if not val.is_real or not val.is_finite:
        raise ValueError(f"expression is not a finite real number at this point: {val}")
    return val


def evaluate(expr: sp.Expr, point: Mapping[sp.Symbol, Any], digits: int = 40) -> float:
    """``expr`` at ``point`` in ``digits``-digit arithmetic (mpmath), returned as a float.

    High precision so that points deep in a limit (``pi^- = 1e-200``) and cancellations are exact to double
    precision. Raises ``ValueError`` if the value is not a finite real number.
    """
    out = float(_n(expr, point, digits))
    if not math.isfinite(out):
        raise ValueError(f"expression overflows a float at this point: {expr}")
    return out


def relative_error(a: sp.Expr, b: sp.Expr, point: Mapping[sp.Symbol, Any]) -> float:
    """``|a - b| / |b|`` at ``point`` in high precision (``|a|`` if ``b`` is exactly 0)."""
    va, vb = _n(a, point), _n(b, point)
    if vb == 0:
        return float(abs(va))
    return float(abs(va - vb) / abs(vb))


#: The value a limit variable takes in numeric checks of leading-order forms (deep enough that
#: (pi^-)^0.02 ~ 1e-60 is negligible next to 1).
LIMIT_POINT = sp.Float("1e-3000", 50)


def _draw(spec: tuple, rng: random.Random) -> Any:
    kind = spec[0]
    if kind == "log":
        return math.exp(rng.uniform(math.log(spec[1]), math.log(spec[2])))
    if kind == "lin":
        return rng.uniform(spec[1], spec[2])
    if kind == "choice":
        return rng.choice(spec[1])
    raise ValueError(f"unknown domain kind {kind!r}")


def random_points(symbols: Sequence[sp.Symbol], n: int, seed: int = 0,
                  condition: Callable[[dict], bool] | None = None,
                  domains: Mapping[sp.Symbol, tuple] | None = None) -> list[dict]:
    """``n`` random points (dicts symbol -> number) over ``DOMAINS`` (or ``domains``), seeded.

    ``condition(point) -> bool`` rejects points (e.g. one branch of SLiC's hinge); at most 200 n draws.
    """
    if n < 1:
        raise ValueError(f"random_points: n must be >= 1 (got {n})")
    doms = dict(DOMAINS)
    if domains:
        doms.update(domains)
    rng = random.Random(seed)
    out: list[dict] = []
    syms = sorted(set(symbols), key=lambda s: s.name)
    for _ in range(200 * n):
        pt = {s: _draw(doms[s], rng) for s in syms}
        if condition is None or condition(pt):
            out.append(pt)
            if len(out) == n:
                return out
    raise ValueError(f"random_points: only {len(out)} of {n} points satisfy the condition")


# ============================================================================ the derivation side
@lru_cache(maxsize=None)
def gradients(name: str) -> symbolic.Derivation:
    """The derivation of loss ``name``: :func:`prefdyn.symbolic.derive`'s, with its ``ratio`` in the form
    the chapter shows.

    ``derive`` differentiates the loss (detached quantities constant, substituted afterwards, as in
    :mod:`prefdyn.losses`); here only the ratio (dl/dpi-)/(dl/dpi+) is rewritten: simplified in the
    stop-gradient form, where the common sigmoid factor cancels, then the detached values substituted.
    Everything else is ``derive``'s (same symbols: this module's are :mod:`prefdyn.symbolic`'s).
    """
    d = symbolic.derive(name)
    ratio = symbolic.heaviside0(sp.simplify(d.d_pi_r_sg / d.d_pi_c_sg).subs(d.stop_gradient))
    return replace(d, ratio=ratio)


#: What :func:`derived` returns -> the :class:`prefdyn.symbolic.Derivation` field that holds it.
_WHAT = {"loss": "loss", "d_pi_plus": "d_pi_c", "d_pi_minus": "d_pi_r", "ratio": "ratio",
         "d_logp_plus": "d_logp_c", "d_logp_minus": "d_logp_r"}


def derived(name: str, what: str, **params: sp.Symbol) -> sp.Expr:
    """One derived quantity of loss ``name`` (:func:`gradients`).

    ``what`` is one of ``"loss"``, ``"d_pi_plus"``, ``"d_pi_minus"``, ``"ratio"`` ((dl/dpi-)/(dl/dpi+)),
    ``"d_logp_plus"``, ``"d_logp_minus"``. ``params`` renames a loss parameter to a paper's symbol, e.g.
    ``derived("ipo", "loss", beta=ETA)`` (000's IPO eta is the zoo's beta).
    """
    if what not in _WHAT:
        raise ValueError(f"what must be one of {', '.join(_WHAT)} (got {what!r})")
    expr = getattr(gradients(name), _WHAT[what])
    if params:
        expr = expr.xreplace({symbolic.PARAM_SYMBOLS[name][k]: sym for k, sym in params.items()})
    return expr


# ============================================================================ the containers
@dataclass(frozen=True)
class Printed:
    """One printed equation that is right.

    ``printed`` is the expression exactly as printed (in this module's symbols); ``reference()`` returns the
    independent derivation of the same quantity. ``limit = (symbol, 0)`` marks a printed leading-order form
    ("-> as symbol -> 0"): then ``reference() / printed -> 1`` is what is checked. ``condition`` restricts
    random test points (e.g. one branch of SLiC's hinge); ``branch`` is a substitution applied to the
    reference before simplifying (e.g. the active branch of a ``Max``).
    """

    key: str
    source: str
    what: str
    printed: sp.Expr
    reference: Callable[[], sp.Expr]
    limit: tuple | None = None
    condition: Callable[[dict], bool] | None = None
    branch: Callable[[sp.Expr], sp.Expr] | None = None
    domains: dict = field(default_factory=dict)
    note: str = ""

    def reference_expr(self) -> sp.Expr:
        ref = self.reference()
        return self.branch(ref) if self.branch is not None else ref

    @property
    def symbols(self) -> list[sp.Symbol]:
        syms = self.printed.free_symbols | self.reference().free_symbols
        return sorted(syms, key=lambda s: s.name)

    def symbolic_difference(self) -> sp.Expr:
        """0 when the print is right: ``simplify(printed - reference)``, or for a limit
        ``limit(reference / printed) - 1``."""
        ref = self.reference_expr()
        if self.limit is None:
            return _simplify_zero(self.printed - ref)
        var, at = self.limit
        return sp.simplify(sp.limit(sp.simplify(ref / self.printed), var, at, "+") - 1)

    def numeric_points(self, n: int = 8, seed: int = 0) -> list[dict]:
        pts = random_points(self.symbols, n, seed=seed, condition=self.condition, domains=self.domains)
        if self.limit is not None:
            var, _ = self.limit
            for p in pts:
                p[var] = LIMIT_POINT
        return pts

    def max_relative_error(self, n: int = 8, seed: int = 0) -> float:
        """Largest :func:`relative_error` of the printed form against the reference over ``n`` random points
        (a limit form: at ``symbol = LIMIT_POINT``)."""
        ref = self.reference_expr()
        return max(relative_error(self.printed, ref, p) for p in self.numeric_points(n, seed))


@dataclass(frozen=True)
class Erratum:
    """One printed equation that is wrong.

    ``printed`` is the expression as printed, ``corrected`` the corrected form, ``reference()`` the
    derivation the corrected form must agree with (for a leading-order statement, ``limit = (symbol, 0)``:
    the exact expression, which the corrected form matches as ``symbol -> 0``). ``point`` is the numeric
    point :meth:`check` uses by default (chosen so the printed expression is real and finite).
    """

    id: str
    paper: str
    where: str
    kind: str
    quantity: str
    printed: sp.Expr
    corrected: sp.Expr
    explanation: str
    reference: Callable[[], sp.Expr]
    point: Mapping[sp.Symbol, Any]
    limit: tuple | None = None
    branch: Callable[[sp.Expr], sp.Expr] | None = None
    definitions: Mapping[sp.Symbol, sp.Expr] | Callable[[], Mapping[sp.Symbol, sp.Expr]] = field(default_factory=dict)
    #: where random test points are drawn for this erratum (overrides :data:`DOMAINS`), e.g. the beta >= 1
    #: that a wrong condition excludes
    domains: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"{self.paper} {self.where}"

    def reference_expr(self) -> sp.Expr:
        ref = self.reference()
        return self.branch(ref) if self.branch is not None else ref

    def check(self, point: Mapping[sp.Symbol, Any] | None = None) -> dict[str, Any]:
        """Evaluate printed form, corrected form and derivation at ``point`` (default :attr:`point`).

        Returns ``{"point": {name: value}, "printed": p, "corrected": c, "derivation": d,
        "printed_rel_err": |p-d|/|d|, "corrected_rel_err": |c-d|/|d|}``, the last two computed with
        high precision (:func:`relative_error`).
        """
        pt = dict(self.point if point is None else point)
        pe, ce, ref = self.printed_value_expr(), self.corrected_value_expr(), self.reference_expr()
        return {
            "point": {_plain_name(k): _plain_value(v) for k, v in sorted(pt.items(), key=lambda kv: kv[0].name)},
            "printed": float(_n(pe, pt)),
            "corrected": float(_n(ce, pt)),
            "derivation": float(_n(ref, pt)),
            "printed_rel_err": relative_error(pe, ref, pt),
            "corrected_rel_err": relative_error(ce, ref, pt),
        }

    def printed_value_expr(self) -> sp.Expr:
        """The printed form with the display symbols (:attr:`definitions`) replaced by their values."""
        return expand_sigma(self.printed.xreplace(self._definitions()))

    def corrected_value_expr(self) -> sp.Expr:
        return expand_sigma(self.corrected.xreplace(self._definitions()))

    def _definitions(self) -> dict:
        d = self.definitions() if callable(self.definitions) else self.definitions
        return dict(d)

    def symbolic_corrected_difference(self) -> sp.Expr:
        """0 when the corrected form equals the derivation (for a limit: ``limit(ref/corrected) - 1``)."""
        ref = self.reference_expr()
        corr = self.corrected_value_expr()
        if self.limit is None:
            return _simplify_zero(corr - ref)
        var, at = self.limit
        return sp.simplify(sp.limit(sp.simplify(ref / corr), var, at, "+") - 1)

    def as_dict(self) -> dict[str, Any]:
        """The erratum as JSON-able text (LaTeX of the forms) plus its numeric check."""
        return {
            "id": self.id,
            "paper": self.paper,
            "where": self.where,
            "kind": self.kind,
            "quantity": self.quantity,
            "printed": latex(self.printed),
            "corrected": latex(self.corrected),
            "explanation": self.explanation,
            "check": self.check(),
        }


def _plain_name(s: sp.Symbol) -> str:
    return s.name


def _plain_value(v: Any) -> Any:
    """A JSON-able number: a float, or the text of a value a float cannot hold (e.g. 1e-3000)."""
    if isinstance(v, (int, bool)):
        return v
    f = float(v)
    return f if (f != 0.0 or v == 0) else str(sp.Float(v, 5))


def _simplify_zero(expr: sp.Expr) -> sp.Expr:
    """Simplify an expression expected to be 0; tries a few rewritings (logs and powers of positive
    symbols expanded) and returns the first that gives 0, else the last result."""
    tries = (
        lambda e: sp.simplify(e),
        lambda e: sp.simplify(sp.expand_log(sp.expand_power_base(e, force=True), force=True)),
        lambda e: sp.simplify(sp.together(sp.expand(sp.powsimp(sp.expand_log(e, force=True), force=True)))),
        lambda e: sp.simplify(e.rewrite(sp.exp)),
    )
    out = expr
    for t in tries:
        out = t(expr)
        if out == 0:
            return out
    return out


# ============================================================================ models the papers state
def _softmax3(a: sp.Expr, b: sp.Expr, c: sp.Expr) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    den = sp.exp(a) + sp.exp(b) + sp.exp(c)
    return sp.exp(a) / den, sp.exp(b) / den, sp.exp(c) / den


# 000 Sec. 3.1: alpha = (pi0+/pi0-)^beta, z = pi-/pi+ (as printed).
ALPHA_000 = (REF_P / REF_M) ** BETA
Z_000 = PI_M / PI_P
# 000 App. B.2.1 (flex-beta): alpha = pi0+^beta+ / pi0-^beta-, z = pi-^beta- / pi+^beta+ (as printed).
ALPHA_FLEX = REF_P ** BETA_P / REF_M ** BETA_M
Z_FLEX = PI_M ** BETA_M / PI_P ** BETA_P

# 000 App. B.1, token level: position i of each sequence is a softmax over three tokens (the sampled token
# c, another token c', and one logit for the rest of the vocabulary); pi = pi_{-i} * pi_i.
TOK_P = _softmax3(XC_P, XD_P, XO_P)           # (pi^+_{i,c}, pi^+_{i,c'}, pi^+_{i,o})
TOK_M = _softmax3(XC_M, XD_M, XO_M)
SEQ_P = REST_P * TOK_P[0]                     # pi^+ as a function of the logits at position i
SEQ_M = REST_M * TOK_M[0]
# flex-beta DPO' of 000 App. B.1/B.2.1 as a function of those logits (B.1 writes beta+, beta- and l^{DPO'}).
LOSS_TOKEN = sp.log(1 + ALPHA_FLEX * SEQ_P ** (-BETA_P) * SEQ_M ** BETA_M)
# 000 App. B.1: C(pi+, pi-) := alpha beta+ (pi+)^{-beta+} (pi-)^{beta-} (as printed), at the model's pi+-.
C_TOKEN = ALPHA_FLEX * BETA_P * SEQ_P ** (-BETA_P) * SEQ_M ** BETA_M

# 000 Sec. 4: the reward-model loss -log sigma(r+ - r-) = log(1 + e^(r- - r+)) and its gradients w.r.t. the
# two rewards, as :func:`prefdyn.symbolic.derive_reward_model` derives them.
_RM = symbolic.derive_reward_model()
LOSS_RM = _RM.loss

# 004 Sec. 3-4: softmax over three responses (Lemma 1, eq. 6); the pair (i, j, tau) = (1, 2, tau), beta = 1.
P1, P2, P3 = _softmax3(S1, S2, S3)
_H12 = sp.log(P1 / REF1) - sp.log(P2 / REF2)
LOSS_T1_DPO = -sp.log(sigma(TAU * _H12))            # 004 eq. 1 with beta = 1, written with tau
KAPPA_DPO = sigma(TAU * _H12)                       # 004: kappa_ij = e^{-L}, the sigma term
LOSS_T1_BAL = -sp.log(sigma(CB * TAU * (P1 - P2)))  # a balanced loss: dL/dp_w = -dL/dp_l (004 Def. 1)
KAPPA_BAL = sigma(CB * TAU * (P1 - P2))


def _logit_update(loss: sp.Expr, c12: sp.Expr = 0, c13: sp.Expr = 0) -> sp.Expr:
    """004 Theorem 1's Delta s_1 after one gradient step of size eta on ``loss``, derived exactly.

    Under 004's Assumptions 1-2 the logit gradients have norm g and cosines c_ik, so one step
    ``theta -= eta dL/dtheta`` changes s_1 by ``-eta g^2 sum_k c_1k dL/ds_k`` (c_11 = 1). This is exact for
    logits linear in theta with that Gram matrix (``tests/test_printed.py`` checks it with torch).
    """
    grads = [sp.diff(loss, s) for s in (S1, S2, S3)]
    return -LR * G ** 2 * (grads[0] + c12 * grads[1] + c13 * grads[2])


def _prob_update(ds: Sequence[sp.Expr]) -> sp.Expr:
    """004 eq. 39: first-order change of p_1 for logit changes ``ds`` (softmax Jacobian, 004 eq. 9)."""
    return sum(sp.diff(P1, s) * d for s, d in zip((S1, S2, S3), ds))



# ============================================================================ the printed equations that are right
def _d(name: str, what: str, **params: sp.Expr) -> Callable[[], sp.Expr]:
    """A lazy reference: :func:`derived` of loss ``name`` (params renamed, e.g. ``beta=ETA`` for IPO)."""
    return lambda: derived(name, what, **params)


def _x_coords(expr: sp.Expr) -> sp.Expr:
    """002's coordinates: pi+ = x1 pi0+, pi- = x2 pi0-."""
    return sp.simplify(expr.xreplace({PI_P: X1 * REF_P, PI_M: X2 * REF_M}))


def _hinge_active(p: dict) -> bool:
    """000 eq. 12's branch: delta > log(pi+/pi-), away from the kink."""
    return p[DELTA] - math.log(p[PI_P] / p[PI_M]) > 1e-3


def _hinge_inactive(p: dict) -> bool:
    return p[DELTA] - math.log(p[PI_P] / p[PI_M]) < -1e-3


def _branch(active: bool) -> Callable[[sp.Expr], sp.Expr]:
    """Resolve SLiC's hinge in an expression: Max(0, u) -> u (active) or 0; Heaviside(u) -> 1 or 0."""
    def f(e: sp.Expr) -> sp.Expr:
        e = e.replace(lambda a: isinstance(a, sp.Max), lambda a: (sum(x for x in a.args if x != 0) if active else sp.Integer(0)))
        e = e.replace(lambda a: isinstance(a, sp.Heaviside), lambda a: sp.Integer(1 if active else 0))
        e = e.replace(lambda a: isinstance(a, sp.Piecewise), lambda a: _piece(a, active))
        return e
    return f


def _piece(pw: sp.Piecewise, active: bool) -> sp.Expr:
    """Pick the branch of SLiC's hinge Piecewise (condition 'margin > 0' is the active one)."""
    for expr, cond in pw.args:
        if cond is sp.true:
            return expr
        # the active branch's condition holds at a point with delta huge
        test = cond.subs({DELTA: 1e6, PI_P: 0.5, PI_M: 0.5})
        if bool(test) == active:
            return expr
    return pw.args[-1][0]


_DZ_P = sp.diff(Z_000, PI_P)            # 000 leaves dz/dpi+ symbolic: -pi-/pi+^2
_DZ_M = sp.diff(Z_000, PI_M)            # 1/pi+
_CHAIN = ALPHA_000 * BETA / (1 + ALPHA_000 * Z_000 ** BETA) * Z_000 ** (BETA - 1)
_FLEX_CHAIN = ALPHA_FLEX / (1 + ALPHA_FLEX * Z_FLEX)
_H_IPO = sp.log(PI_P * REF_M / (PI_M * REF_P))
_LAMBDA_26 = 1 + sp.Min(sp.Max(sp.log(PI_P / PI_M), DLMIN), CLIP)  # 004 eq. 26, clip(x, lo, hi)


PRINTED: list[Printed] = [
    # ---------------------------------------------------------------- 000, Sec. 3.1 / App. B.1 (DPO)
    Printed("000 eq. 6", "000 Sec. 3.1, eq. 6 (= App. B.1)", "DPO loss rewritten: log(1 + alpha z^beta)",
            sp.log(1 + (REF_P / REF_M * PI_M / PI_P) ** BETA), _d("dpo", "loss")),
    Printed("000 Sec. 3.1 dl/dpi+", "000 Sec. 3.1 (= App. B.1), first line", "dl/dpi+ = alpha beta z^(beta-1) / (1 + alpha z^beta) dz/dpi+",
            _CHAIN * _DZ_P, _d("dpo", "d_pi_plus")),
    Printed("000 Sec. 3.1 dl/dpi-", "000 Sec. 3.1 (= App. B.1), second line", "dl/dpi- = alpha beta z^(beta-1) / (1 + alpha z^beta) dz/dpi-",
            _CHAIN * _DZ_M, _d("dpo", "d_pi_minus")),
    Printed("000 Cor. 1 (magnitudes)", "000 Cor. 1, read as |dl/dpi-| / |dl/dpi+|", "ratio of gradient magnitudes",
            PI_P / PI_M, lambda: sp.Abs(derived("dpo", "d_pi_minus")) / sp.Abs(derived("dpo", "d_pi_plus")),
            note="As printed (signed) the ratio has the wrong sign: see ERRATA '000-cor1'."),
    Printed("000 App. B.1 limit dl/dpi+", "000 Cor. 2 / App. B.1", "leading order of dl/dpi+ as pi- -> 0",
            -ALPHA_000 * BETA * PI_P ** (-BETA - 1) * PI_M ** BETA, _d("dpo", "d_pi_plus"), limit=(PI_M, 0)),
    Printed("000 App. B.1 limit dl/dpi-", "000 Cor. 2 / App. B.1", "leading order of dl/dpi- as pi- -> 0",
            ALPHA_000 * BETA * PI_P ** (-BETA) * PI_M ** (BETA - 1), _d("dpo", "d_pi_minus"), limit=(PI_M, 0)),
    Printed("000 App. B.1 softmax ds_i/dz_i", "000 App. B.1 (= 004 eq. 9, i = j)", "softmax Jacobian, diagonal",
            P1 * (1 - P1), lambda: sp.diff(P1, S1)),
    Printed("000 App. B.1 softmax ds_j/dz_i", "000 App. B.1 (= 004 eq. 9, i != j)", "softmax Jacobian, off-diagonal",
            -P1 * P2, lambda: sp.diff(P2, S1)),
    Printed("000 App. B.1 dpi/dpi_i", "000 App. B.1", "sequence probability w.r.t. one token's probability: pi_{-i}",
            REST_P, lambda: sp.diff(REST_P * sp.Symbol("pi_i^+", positive=True), sp.Symbol("pi_i^+", positive=True))),
    # ---------------------------------------------------------------- 000 App. B.2.1 (flex-beta)
    Printed("000 App. B.2.1 loss", "000 App. B.2.1, rewritten flex-beta loss", "log(1 + (pi0+/pi+)^beta+ (pi-/pi0-)^beta-)",
            sp.log(1 + (REF_P / PI_P) ** BETA_P * (PI_M / REF_M) ** BETA_M), _d("flex_dpo", "loss")),
    Printed("000 App. B.2.1 dl/dpi+", "000 App. B.2.1", "dl/dpi+ = alpha/(1 + alpha z) dz/dpi+",
            _FLEX_CHAIN * sp.diff(Z_FLEX, PI_P), _d("flex_dpo", "d_pi_plus")),
    Printed("000 App. B.2.1 dl/dpi-", "000 App. B.2.1", "dl/dpi- = alpha/(1 + alpha z) dz/dpi-",
            _FLEX_CHAIN * sp.diff(Z_FLEX, PI_M), _d("flex_dpo", "d_pi_minus")),
    Printed("000 App. B.2.1 limit dl/dpi+", "000 App. B.2.1", "leading order of dl/dpi+ as pi- -> 0",
            -ALPHA_FLEX * BETA_P * PI_P ** (-BETA_P - 1) * PI_M ** BETA_M, _d("flex_dpo", "d_pi_plus"), limit=(PI_M, 0)),
    Printed("000 App. B.2.1 limit dl/dpi-", "000 App. B.2.1", "leading order of dl/dpi- as pi- -> 0",
            ALPHA_FLEX * BETA_M * PI_P ** (-BETA_P) * PI_M ** (BETA_M - 1), _d("flex_dpo", "d_pi_minus"), limit=(PI_M, 0)),
    # ---------------------------------------------------------------- 000 App. B.2.2 (SFT-DPO)
    Printed("000 App. B.2.2 dl/dpi+", "000 App. B.2.2, right-hand side", "dl/dpi+ of SFT-DPO",
            _CHAIN * _DZ_P - GAMMA / PI_P, _d("sft_dpo", "d_pi_plus")),
    Printed("000 App. B.2.2 dl/dpi-", "000 App. B.2.2", "dl/dpi- of SFT-DPO",
            _CHAIN * _DZ_M, _d("sft_dpo", "d_pi_minus")),
    Printed("000 App. B.2.2 limit dl/dpi+", "000 App. B.2.2", "dl/dpi+ -> -gamma/pi+ as pi- -> 0",
            -GAMMA / PI_P, _d("sft_dpo", "d_pi_plus"), limit=(PI_M, 0)),
    # ---------------------------------------------------------------- 000 App. B.3.1 (IPO), eta = beta
    Printed("000 eq. 8", "000 App. B.3.1, eq. 8", "IPO loss (000's eta is the zoo's beta)",
            (_H_IPO - 1 / (2 * ETA)) ** 2, _d("ipo", "loss", beta=ETA)),
    Printed("000 eq. 9", "000 App. B.3.1, eq. 9", "dl/dpi- of IPO",
            -2 * (_H_IPO - 1 / (2 * ETA)) / PI_M, _d("ipo", "d_pi_minus", beta=ETA)),
    Printed("000 eq. 10", "000 App. B.3.1, eq. 10", "dl/dpi+ of IPO",
            2 * (_H_IPO - 1 / (2 * ETA)) / PI_P, _d("ipo", "d_pi_plus", beta=ETA)),
    # ---------------------------------------------------------------- 000 App. B.3.2 (SLiC)
    Printed("000 eq. 11 (hinge active)", "000 App. B.3.2, eq. 11", "SLiC loss, delta > log(pi+/pi-)",
            DELTA - sp.log(PI_P) + sp.log(PI_M) - ETA * sp.log(PI_P), _d("slic", "loss"),
            condition=_hinge_active, branch=_branch(True)),
    Printed("000 eq. 12 dl/dpi+", "000 App. B.3.2, eq. 12 (delta > log(pi+/pi-))", "dl/dpi+ of SLiC, hinge active",
            -(1 + ETA) / PI_P, _d("slic", "d_pi_plus"), condition=_hinge_active, branch=_branch(True)),
    Printed("000 eq. 12 dl/dpi-", "000 App. B.3.2, eq. 12 (delta > log(pi+/pi-))", "dl/dpi- of SLiC, hinge active",
            1 / PI_M, _d("slic", "d_pi_minus"), condition=_hinge_active, branch=_branch(True)),
    Printed("000 eq. 13 dl/dpi+", "000 App. B.3.2, eq. 13 (else)", "dl/dpi+ of SLiC, hinge inactive",
            -ETA / PI_P, _d("slic", "d_pi_plus"), condition=_hinge_inactive, branch=_branch(False)),
    Printed("000 eq. 13 dl/dpi-", "000 App. B.3.2, eq. 13 (else)", "dl/dpi- of SLiC, hinge inactive",
            sp.Integer(0), _d("slic", "d_pi_minus"), condition=_hinge_inactive, branch=_branch(False)),
    # ---------------------------------------------------------------- 000 Sec. 4 (reward model)
    Printed("000 Sec. 4 dl/dr+ (middle)", "000 Sec. 4", "dl^RM/dr+ = -e^(r- - r+) / (1 + e^(r- - r+))",
            -sp.exp(R_M - R_P) / (1 + sp.exp(R_M - R_P)), lambda: _RM.d_r_c),
    Printed("000 Sec. 4 dl/dr+", "000 Sec. 4", "dl^RM/dr+ = -1 / (1 + e^(r+ - r-))",
            -1 / (1 + sp.exp(R_P - R_M)), lambda: _RM.d_r_c),
    Printed("000 Sec. 4 dl/dr- (middle)", "000 Sec. 4", "dl^RM/dr- = e^(r- - r+) / (1 + e^(r- - r+))",
            sp.exp(R_M - R_P) / (1 + sp.exp(R_M - R_P)), lambda: _RM.d_r_r),
    Printed("000 Sec. 4 dl/dr-", "000 Sec. 4", "dl^RM/dr- = 1 / (1 + e^(r+ - r-))",
            1 / (1 + sp.exp(R_P - R_M)), lambda: _RM.d_r_r),
    Printed("000 Sec. 4 loss", "000 Sec. 4 (rewritten in the gradient line)", "l^RM = log(1 + e^(r- - r+))",
            sp.log(1 + sp.exp(R_M - R_P)), lambda: LOSS_RM),
    # ---------------------------------------------------------------- 002 (x1 = pi+/pi0+, x2 = pi-/pi0-)
    Printed("002 eq. 1", "002 Sec. 3.1, eq. 1 (last line)", "DPO loss in x1, x2: -log(x1^beta / (x1^beta + x2^beta))",
            -sp.log(X1 ** BETA / (X1 ** BETA + X2 ** BETA)), lambda: _x_coords(derived("dpo", "loss"))),
    Printed("002 eq. 2/4 dL/dx1", "002 Theorem 1, eq. 2 (= Theorem 2, eq. 4)", "dL/dx1",
            -BETA * X2 ** BETA / (X1 * (X1 ** BETA + X2 ** BETA)), lambda: _x_coords(derived("dpo", "d_pi_plus") * REF_P)),
    Printed("002 eq. 2/4 dL/dx2", "002 Theorem 1, eq. 2 (= Theorem 2, eq. 4)", "dL/dx2",
            BETA * X2 ** (BETA - 1) / (X1 ** BETA + X2 ** BETA), lambda: _x_coords(derived("dpo", "d_pi_minus") * REF_M)),
    Printed("002 Cor. 1 (eq. 3)", "002 Corollary 1, eq. 3", "the rate ratio |dL/dx1 / dL/dx2| = x2/x1",
            X2 / X1, lambda: sp.Abs(_x_coords(derived("dpo", "d_pi_plus") * REF_P / (derived("dpo", "d_pi_minus") * REF_M)))),
    Printed("002 eq. 5 (first line)", "002 App. A, eq. 5, first line", "dL/dx1, unsimplified",
            -(X1 ** BETA + X2 ** BETA) / X1 ** BETA * (BETA * X1 ** (BETA - 1) / (X1 ** BETA + X2 ** BETA)
                                                       + (-BETA * X1 ** (2 * BETA - 1)) / (X1 ** BETA + X2 ** BETA) ** 2),
            lambda: _x_coords(derived("dpo", "d_pi_plus") * REF_P)),
    Printed("002 eq. 5 (second line)", "002 App. A, eq. 5, second line", "dL/dx1, one fraction",
            -(BETA * X1 ** (BETA - 1) * (X1 ** BETA + X2 ** BETA) - BETA * X1 ** (2 * BETA - 1)) / (X1 ** BETA * (X1 ** BETA + X2 ** BETA)),
            lambda: _x_coords(derived("dpo", "d_pi_plus") * REF_P)),
    Printed("002 eq. 5 (third line)", "002 App. A, eq. 5, third line", "dL/dx1, before cancelling x1^(beta-1)",
            -BETA * X1 ** (BETA - 1) * X2 ** BETA / (X1 ** BETA * (X1 ** BETA + X2 ** BETA)),
            lambda: _x_coords(derived("dpo", "d_pi_plus") * REF_P)),
    Printed("002 eq. 6 (first line)", "002 App. A, eq. 6, first line", "dL/dx2, unsimplified",
            1 / (X1 ** BETA + X2 ** BETA) * BETA * X2 ** (BETA - 1), lambda: _x_coords(derived("dpo", "d_pi_minus") * REF_M)),
    # ---------------------------------------------------------------- 004
    Printed("004 eq. 1", "004 Sec. 3.1, eq. 1", "DPO loss", -sp.log(sigma(BETA * sp.log(PI_P / REF_P) - BETA * sp.log(PI_M / REF_M))),
            _d("dpo", "loss")),
    Printed("004 eq. 2", "004 Sec. 3.1, eq. 2", "(dL/dpi_w) / (dL/dpi_l) = -pi_l/pi_w",
            -PI_M / PI_P, lambda: derived("dpo", "d_pi_plus") / derived("dpo", "d_pi_minus")),
    Printed("004 eq. 3 (balance)", "004 Sec. 3.1, after eq. 3", "balance: |dL_R/dr_w| = |dL_R/dr_l| (as the ratio of the two)",
            sp.Integer(1), lambda: sp.Abs(_RM.d_r_c) / sp.Abs(_RM.d_r_r)),
    Printed("004 eq. 5", "004 Sec. 3.1, eq. 5", "dL_ppo/dpi(y) of eq. 4 as printed (the KL-regularised return J)",
            R1 - BETA * sp.log(Q1 / QREF1) - BETA,
            lambda: sp.diff(sum(q * (r - BETA * sp.log(q / qr)) for q, r, qr in ((Q1, R1, QREF1), (Q2, R2, QREF2), (Q3, R3, QREF3))), Q1)),
    Printed("004 eq. 9 (i = j)", "004 Lemma 1, eq. 9", "dp_i/ds_i = p_i (1 - p_i)", P1 * (1 - P1), lambda: sp.diff(P1, S1)),
    Printed("004 eq. 9 (i != j)", "004 Lemma 1, eq. 9", "dp_i/ds_j = -p_i p_j", -P1 * P2, lambda: sp.diff(P1, S2)),
    Printed("004 eq. 10", "004 Theorem 1, eq. 10", "Delta^j s_i of one DPO step (beta = 1, c_ij = 0)",
            LR * G ** 2 * TAU * (1 - KAPPA_DPO), lambda: _logit_update(LOSS_T1_DPO), domains={TAU: ("choice", (-1, 1))}),
    Printed("004 eq. 12 (= eq. 41)", "004 Theorem 2, eq. 12 (App. D eq. 39-41)", "Delta p_i for Delta s_k = gamma w_k (DPO)",
            GAMMA * P1 * (W1 - (W1 * P1 + W2 * P2 + W3 * P3)), lambda: _prob_update([GAMMA * W1, GAMMA * W2, GAMMA * W3])),
    Printed("004 eq. 40", "004 App. D, eq. 40", "Delta p_i, expanded",
            GAMMA * W1 * P1 * (1 - P1) - (GAMMA * W2 * P1 * P2 + GAMMA * W3 * P1 * P3),
            lambda: _prob_update([GAMMA * W1, GAMMA * W2, GAMMA * W3])),
    Printed("004 eq. 14", "004 Theorem 2, eq. 14 (C = 1)", "Delta p_i for a balanced loss, Delta s_k = gamma w_k p_k",
            GAMMA * P1 * (W1 * P1 - (W1 * P1 ** 2 + W2 * P2 ** 2 + W3 * P3 ** 2)),
            lambda: _prob_update([GAMMA * W1 * P1, GAMMA * W2 * P2, GAMMA * W3 * P3])),
    Printed("004 Sec. 5.1 lambda for balance", "004 Sec. 5.1, after eq. 25", "the nbDPO weight that balances dL/dpi_w + dL/dpi_l = 0",
            PI_P / PI_M, lambda: sp.simplify(-derived("dpo", "d_pi_minus") / derived("dpo", "d_pi_plus"))),
    Printed("004 eq. 26", "004 Sec. 5.1, eq. 26", "lambda = 1 + clip(log(pi_w/pi_l), Delta lambda_min, Delta lambda_max)",
            _LAMBDA_26, lambda: gradients("nbdpo").stop_gradient[symbolic.SG_LAMBDA]),
    Printed("004 eq. 27", "004 Sec. 5.2, eq. 27 with lambda of eq. 26", "nbDPO v2 loss",
            -sp.log(sigma(BETA * _LAMBDA_26 * sp.log(PI_P / REF_P) - BETA * sp.log(PI_M / REF_M))), _d("nbdpo_v2", "loss")),
    Printed("004 eq. 28-29", "004 Sec. 5.3, eq. 28-29", "bDPO loss with lambda_w = log pi_l / (log pi_w + log pi_l)",
            -sp.log(sigma(BETA * (sp.log(PI_M) / (sp.log(PI_P) + sp.log(PI_M))) * sp.log(PI_P / REF_P)
                          - BETA * (1 - sp.log(PI_M) / (sp.log(PI_P) + sp.log(PI_M))) * sp.log(PI_M / REF_M))),
            _d("bdpo", "loss")),
    Printed("004 Prop. 1 (eq. 30)", "004 Proposition 1, eq. 30, at pi = pi_ref",
            "(dL/dpi_w) / (dL/dpi_l) of bDPO = -pi_l log pi_l / (pi_w log pi_w)",
            -PI_M * sp.log(PI_M) / (PI_P * sp.log(PI_P)),
            lambda: (derived("bdpo", "d_pi_plus") / derived("bdpo", "d_pi_minus")).xreplace({REF_P: PI_P, REF_M: PI_M})),
]
PRINTED_BY_KEY: dict[str, Printed] = {p.key: p for p in PRINTED}
assert len(PRINTED_BY_KEY) == len(PRINTED), "duplicate PRINTED keys"


# ============================================================================ the errata
# Display symbols: the errata show the papers' compact notation; ``Erratum.definitions`` gives their values.
C_SYM = sp.Symbol("C")                                   # 000 App. B.1's C(pi+, pi-)
PIC_P, PID_P = sp.Symbol("pic^+", positive=True), sp.Symbol("pid^+", positive=True)  # token probabilities
PIC_M, PID_M = sp.Symbol("pic^-", positive=True), sp.Symbol("pid^-", positive=True)
PI_I, PI_J = sp.symbols("p_i p_j", positive=True)        # 004: pi_theta(y_i|x), pi_theta(y_j|x)
KAPPA = sp.Symbol("kappa_ij", positive=True)             # 004: kappa_ij
DL_P, DL_M = sp.symbols("dl/dpi^+ dl/dpi^-", real=True)  # 000 App. D: the two gradients
LATEX_NAMES.update({
    C_SYM: r"C(\pi^+,\pi^-)", PIC_P: r"\pi^{+}_{i,c}", PID_P: r"\pi^{+}_{i,c'}", PIC_M: r"\pi^{-}_{i,c}",
    PID_M: r"\pi^{-}_{i,c'}", PI_I: r"\pi_\theta(y_i|x)", PI_J: r"\pi_\theta(y_j|x)", KAPPA: r"\kappa_{ij}",
    DL_P: r"\frac{\partial \ell^{\mathrm{DPO}}}{\partial \pi^+}", DL_M: r"\frac{\partial \ell^{\mathrm{DPO}}}{\partial \pi^-}",
})

_TOKEN_DEFS = {C_SYM: C_TOKEN, PIC_P: TOK_P[0], PID_P: TOK_P[1], PIC_M: TOK_M[0], PID_M: TOK_M[1]}
_TOKEN_POINT = {XC_P: 0.5, XD_P: -0.3, XO_P: 1.0, XC_M: -0.2, XD_M: 0.4, XO_M: 0.8, REST_P: 0.3,
                REST_M: 1e-100, REF_P: 0.12, REF_M: 0.12, BETA_P: 0.5, BETA_M: 0.25}
_DPO_POINT = {PI_P: 0.5, PI_M: 0.05, REF_P: 0.12, REF_M: 0.12, BETA: 0.1}
_T1_POINT = {S1: 0.2, S2: -0.4, S3: 0.9, REF1: 0.3, REF2: 0.3, TAU: 1, LR: 0.01, G: 1.0, CB: 1.0, LAMC: 0.3}
_T1_DEFS_DPO = {PI_I: P1, PI_J: P2, KAPPA: KAPPA_DPO}
_T1_DEFS_BAL = {PI_I: P1, PI_J: P2, KAPPA: KAPPA_BAL}
_H_P = sp.log(PI_P / REF_P)
_H_M = sp.log(PI_M / REF_M)


def _cor2_holds() -> sp.Expr:
    """000 Cor. 2, derived: 1 where dl/dpi+ of DPO -> 0 as pi- -> 0, i.e. theta(e) with e the exponent of
    pi- in its leading term (:func:`prefdyn.symbolic.leading_order`; e = beta, so 1 for every beta > 0)."""
    lo = symbolic.leading_order(derived("dpo", "d_pi_plus"), PI_M)
    return sp.Heaviside(lo.exponent)


def _ppo_return(sign: int) -> sp.Expr:
    return sign * sum(q * (r - BETA * sp.log(q / qr)) for q, r, qr in ((Q1, R1, QREF1), (Q2, R2, QREF2), (Q3, R3, QREF3)))


def _tok(which: str) -> Callable[[], sp.Expr]:
    var = {"c+": XC_P, "d+": XD_P, "c-": XC_M, "d-": XD_M}[which]
    return lambda: sp.diff(LOSS_TOKEN, var)


ERRATA: list[Erratum] = [
    # ---------------------------------------------------------------- 000
    Erratum(
        id="000-cor1", paper="000", where="Sec. 3.1, Corollary 1", kind="sign",
        quantity=r"\frac{\partial \ell^{\mathrm{DPO}}}{\partial \pi^-} \Big/ \frac{\partial \ell^{\mathrm{DPO}}}{\partial \pi^+}",
        printed=PI_P / PI_M, corrected=-PI_P / PI_M,
        explanation="dz/dpi- / dz/dpi+ = (1/pi+) / (-pi-/pi+^2) = -pi+/pi-: the two gradients have opposite "
                    "signs; the printed pi+/pi- is the ratio of their magnitudes (004 eq. 2 prints the sign).",
        reference=lambda: derived("dpo", "ratio"), point=_DPO_POINT),
    Erratum(
        id="000-cor2", paper="000", where="Sec. 3.1, Corollary 2", kind="condition",
        quantity=r"\mathbb{1}\Big[\frac{\partial \ell^{\mathrm{DPO}}}{\partial \pi^+} \to 0 "
                 r"\text{ as } \pi^- \to 0\Big]",
        printed=sp.Heaviside(1 - BETA), corrected=sp.Integer(1),
        explanation="Corollary 2 reads 'As pi- -> 0 and given that beta < 1, dl/dpi+, which is proportional "
                    "to (pi-)^beta, tends towards zero'. The leading term of dl/dpi+ is proportional to "
                    "(pi-)^beta, which tends to 0 for every beta > 0: the degradation holds at any beta. "
                    "beta < 1 is the condition of the next sentence, |dl/dpi-| ~ (pi-)^(beta-1) -> inf (at "
                    "beta = 1 it tends to a finite value, above 1 to 0). Here 1[.] is 1 where the statement "
                    "holds, theta(u) = 1 for u > 0 and 0 for u < 0; the derivation is 1[e > 0] with e the "
                    "exponent of pi- in the leading term of dl/dpi+ (prefdyn.symbolic.leading_order).",
        reference=lambda: _cor2_holds(), point={BETA: 2.0}, domains={BETA: ("log", 1.0, 10.0)}),
    Erratum(
        id="000-eq7", paper="000", where="App. B.2.2, eq. 7", kind="sign",
        quantity=r"\ell^{\mathrm{SFT\text{-}DPO}}",
        printed=-(sp.log(SIG(BETA * _H_P - BETA * _H_M)) - GAMMA * sp.log(PI_P)),
        corrected=-(sp.log(SIG(BETA * _H_P - BETA * _H_M)) + GAMMA * sp.log(PI_P)),
        explanation="As printed, -{log sigma[...] - gamma log pi(a+)} = l_DPO + gamma log pi(a+), whose "
                    "minimisation lowers pi(a+) and whose dl/dpi+ has +gamma/pi+; the paper's own gradient "
                    "(-gamma/pi+) and 'SFT loss' need the term -gamma log pi(a+).",
        reference=lambda: derived("sft_dpo", "loss"), point={**_DPO_POINT, GAMMA: 0.1}),
    Erratum(
        id="000-B22-chain", paper="000", where="App. B.2.2, first equation (middle expression)", kind="missing term",
        quantity=r"\frac{\partial \ell^{\mathrm{SFT\text{-}DPO}}}{\partial \pi^+}",
        printed=_CHAIN * _DZ_P, corrected=_CHAIN * _DZ_P - GAMMA / PI_P,
        explanation="The chain-rule expression d log(1 + alpha z^beta)/dz * dz/dpi+ is only the DPO part: "
                    "the derivative of the SFT term, -gamma/pi+, is missing from it (the right-hand side has it).",
        reference=lambda: derived("sft_dpo", "d_pi_plus"), point={**_DPO_POINT, GAMMA: 0.1}),
    Erratum(
        id="000-B1-token-chosen-c", paper="000", where="App. B.1, dl/dx+_{i,c}", kind="logit for probability",
        quantity=r"\frac{\partial \ell^{\mathrm{DPO'}}}{\partial x^{+}_{i,c}}\ (\pi^-\to 0)",
        printed=-C_SYM * (1 - XC_P), corrected=-C_SYM * (1 - PIC_P),
        explanation="d pi_i/d x_{i,c} = pi_i (1 - pi_i) for a softmax, so the factor is 1 - pi+_{i,c} (the "
                    "token's probability), not 1 - x+_{i,c} (its logit; the print is not even shift-invariant).",
        reference=_tok("c+"), point=_TOKEN_POINT, limit=(REST_M, 0), definitions=_TOKEN_DEFS),
    Erratum(
        id="000-B1-token-chosen-c'", paper="000", where="App. B.1, dl/dx+_{i,c'}", kind="logit for probability",
        quantity=r"\frac{\partial \ell^{\mathrm{DPO'}}}{\partial x^{+}_{i,c'}}\ (\pi^-\to 0)",
        printed=C_SYM * XD_P, corrected=C_SYM * PID_P,
        explanation="d pi_{i,c}/d x_{i,c'} = -pi_{i,c} pi_{i,c'}, so the factor is the probability "
                    "pi+_{i,c'} of token c', not its logit x+_{i,c'}.",
        reference=_tok("d+"), point=_TOKEN_POINT, limit=(REST_M, 0), definitions=_TOKEN_DEFS),
    Erratum(
        id="000-B1-token-rejected-c", paper="000", where="App. B.1, dl/dx-_{i,c}",
        kind="logit for probability; missing factor beta-/beta+",
        quantity=r"\frac{\partial \ell^{\mathrm{DPO'}}}{\partial x^{-}_{i,c}}\ (\pi^-\to 0)",
        printed=C_SYM * (1 - XC_M), corrected=BETA_M / BETA_P * C_SYM * (1 - PIC_M),
        explanation="Factor 1 - pi-_{i,c} (probability, not logit); and dl/dpi- carries beta-, not beta+, so "
                    "the coefficient is alpha beta- (pi+)^-beta+ (pi-)^beta- = (beta-/beta+) C (equal only "
                    "for vanilla DPO, beta+ = beta-).",
        reference=_tok("c-"), point=_TOKEN_POINT, limit=(REST_M, 0), definitions=_TOKEN_DEFS),
    Erratum(
        id="000-B1-token-rejected-c'", paper="000", where="App. B.1, dl/dx-_{i,c'}",
        kind="logit for probability; missing factor beta-/beta+",
        quantity=r"\frac{\partial \ell^{\mathrm{DPO'}}}{\partial x^{-}_{i,c'}}\ (\pi^-\to 0)",
        printed=-C_SYM * XD_M, corrected=-BETA_M / BETA_P * C_SYM * PID_M,
        explanation="Factor pi-_{i,c'} (probability, not logit), and coefficient (beta-/beta+) C as for "
                    "the sampled token.",
        reference=_tok("d-"), point=_TOKEN_POINT, limit=(REST_M, 0), definitions=_TOKEN_DEFS),
    Erratum(
        id="000-D2-fig10", paper="000", where="App. D.2, text on Fig. 10", kind="typo",
        quantity=r"\text{left side / right side of the claimed } \gg",
        printed=DL_M / sp.Abs(DL_M), corrected=sp.Abs(DL_M) / sp.Abs(DL_P),
        explanation="The text compares dl/dpi- with |dl/dpi-| itself (a ratio of 1); meant is "
                    "|dl/dpi-| >> |dl/dpi+|, a ratio of pi+/pi- (Cor. 1).",
        reference=lambda: PI_P / PI_M, point=_DPO_POINT,
        definitions=lambda: {DL_P: derived("dpo", "d_pi_plus"), DL_M: derived("dpo", "d_pi_minus")}),
    # ---------------------------------------------------------------- 002
    Erratum(
        id="002-sec3.2", paper="002", where="Sec. 3.2, paragraph after Fig. 1", kind="wrong limit (text)",
        quantity=r"\left|\frac{\partial \mathcal{L}_{DPO}}{\partial x_1}\right|\ (x_1 \to 0)",
        printed=sp.Integer(0), corrected=BETA / X1,
        explanation="002 writes 'the gradient vector field vanishes in the area of low x1 and then moves "
                    "away'. By eq. 2, |dL/dx1| = beta x2^beta / (x1 (x1^beta + x2^beta)), whose leading "
                    "term as x1 -> 0 is beta/x1: it diverges there (002's own first bullet has the flow "
                    "'rapidly increase x1' at small x1). Likewise at low x2 only the x1-component vanishes; "
                    "|dL/dx2| = beta x2^(beta-1) / (x1^beta + x2^beta) diverges for beta < 1.",
        reference=lambda: -_x_coords(derived("dpo", "d_pi_plus") * REF_P),
        point={X1: 1e-200, X2: 1.0, BETA: 0.1}, limit=(X1, 0)),
    # ---------------------------------------------------------------- 004
    Erratum(
        id="004-eq3", paper="004", where="Sec. 3.1, eq. 3", kind="sign",
        quantity=r"\mathcal{L}_R",
        printed=sp.log(SIG(R_P - R_M)), corrected=-sp.log(SIG(R_P - R_M)),
        explanation="The Bradley-Terry reward-model loss is -log sigma(r_w - r_l) (000 eq. 3); without the "
                    "minus sign its minimisation would rank the losing response first.",
        reference=lambda: LOSS_RM, point={R_P: 1.0, R_M: -0.5}),
    Erratum(
        id="004-eq4", paper="004", where="Sec. 3.1, eq. 4", kind="sign",
        quantity=r"\mathcal{L}_{ppo}",
        printed=_ppo_return(1), corrected=_ppo_return(-1),
        explanation="Printed as the PPO policy 'loss', E[r - beta log(pi/pi_ref)] is the objective that PPO "
                    "maximises (000 eq. 4); the loss is its negative (eq. 5 differentiates the printed form, "
                    "so it is the gradient of the objective).",
        reference=lambda: -_ppo_return(1),
        point={Q1: 0.5, Q2: 0.3, Q3: 0.2, QREF1: 0.3, QREF2: 0.3, QREF3: 0.4, R1: 1.0, R2: 0.0, R3: -1.0, BETA: 0.1}),
    Erratum(
        id="004-eq11", paper="004", where="Theorem 1, eq. 11", kind="missing factor",
        quantity=r"\Delta^j s_i\ \text{(balanced loss)}",
        printed=CB * LR * G ** 2 * TAU * (1 - KAPPA) * (1 - PI_I + PI_J),
        corrected=CB * LR * G ** 2 * TAU * (1 - KAPPA) * PI_I * (1 - PI_I + PI_J),
        explanation="dL/ds_i = dL/dp_i p_i(1 - p_i) + dL/dp_j (-p_i p_j) carries a factor p_i = pi_theta(y_i|x); "
                    "004's own proof (App. D: Delta_b s_i = C pi_theta(y_i|x) Delta_d s_i) and eq. 14 use it.",
        reference=lambda: _logit_update(LOSS_T1_BAL), point=_T1_POINT, definitions=_T1_DEFS_BAL),
    Erratum(
        id="004-eq35", paper="004", where="App. C, eq. 35", kind="sign",
        quantity=r"\mathbb{E}[\Delta^j s_i]\ \text{(DPO, } c_{ij} = -\lambda)",
        printed=(1 - LAMC) * LR * G ** 2 * TAU * (1 - KAPPA),
        corrected=(1 + LAMC) * LR * G ** 2 * TAU * (1 - KAPPA),
        explanation="One step changes s_i by -eta g^2 (dL/ds_i + c_ij dL/ds_j) = eta g^2 tau (1 - kappa)(1 - c_ij) "
                    "= (1 + lambda) eta g^2 tau (1 - kappa): a negative correlation enlarges the update, so App. C's "
                    "'the lambda term will decrease s_i if y_i is the winning response' is reversed.",
        reference=lambda: _logit_update(LOSS_T1_DPO, c12=-LAMC), point=_T1_POINT, definitions=_T1_DEFS_DPO),
    Erratum(
        id="004-eq36", paper="004", where="App. C, eq. 36", kind="missing factor; wrong correlation term; unbalanced bracket",
        quantity=r"\Delta^j s_i\ \text{(balanced loss, } c_{ij} = -\lambda)",
        printed=CB * LR * G ** 2 * TAU * (1 - KAPPA) * (1 - PI_I + PI_J + LAMC * (PI_I - PI_I ** 2 + PI_I * PI_J - 2 * PI_J)),
        corrected=CB * LR * G ** 2 * TAU * (1 - KAPPA) * (PI_I * (1 - PI_I + PI_J) + LAMC * PI_J * (1 + PI_I - PI_J)),
        explanation="With c_ij = -lambda (the model of eq. 35), -eta g^2 (dL/ds_i - lambda dL/ds_j) gives "
                    "C eta g^2 tau (1-kappa)[p_i(1-p_i+p_j) + lambda p_j(1+p_i-p_j)]; the print lacks eq. 11's p_i, "
                    "has a different lambda term and a stray ']'. (With c_ik = -lambda for all k != i it is "
                    "(1+lambda) times the corrected eq. 11.)",
        reference=lambda: _logit_update(LOSS_T1_BAL, c12=-LAMC), point=_T1_POINT, definitions=_T1_DEFS_BAL),
    Erratum(
        id="004-eq25", paper="004", where="Sec. 5.1, eq. 25", kind="misplaced parenthesis",
        quantity=r"\mathcal{L}_{bdpo}\ \text{(Naive-bDPO)}",
        printed=-sp.log(SIG(BETA * LAM * _H_P)) - BETA * sp.log(PI_M / REF_M - BETA * (LAM - 1) * sp.log(PW_DET / REF_P)),
        corrected=-sp.log(SIG(BETA * LAM * _H_P - BETA * _H_M - BETA * (LAM - 1) * sp.log(PW_DET / REF_P))),
        explanation="The sigmoid closes after the first term and a log( opens around pi_l/pi_ref - ...; the "
                    "intended loss keeps all three terms inside sigma, so that (at pi^det = pi) its value is "
                    "DPO's, as the text says ('does not change the value of the loss').",
        reference=lambda: derived("dpo", "loss"),
        point={PI_P: 0.3, REF_P: 0.15, PI_M: 0.05, REF_M: 0.1, LAM: 1.5, BETA: 1.0},
        definitions={PW_DET: PI_P}),
]
# 004 Theorem 3 (App. D, eq. 42-51): w(y_i) = -sum_{j != i} (p_i/(p_i+p_j) - q_i/(q_i+q_j)) as a function of a
# continuous response y_i, with p_i = p(y_i) and q_i = q(y_i) Gaussian-shaped (so p' = -f_p(y - mu_p) p with
# f_p(u) = u / sigma_p^2, as 004 eq. 44-45 assume) and two other responses a, b (constants p_a, p_b, q_a, q_b).
Y = sp.Symbol("y_i", real=True)
MUP, MUQ = sp.symbols("mu_p mu_q", real=True)
SP2, SQ2 = sp.symbols("sigma_p^2 sigma_q^2", positive=True)
PA, PB, QA, QB = sp.symbols("p_a p_b q_a q_b", positive=True)
P_Y = sp.exp(-(Y - MUP) ** 2 / (2 * SP2))
Q_Y = sp.exp(-(Y - MUQ) ** 2 / (2 * SQ2))
W_Y = -sum(P_Y / (P_Y + pj) - Q_Y / (Q_Y + qj) for pj, qj in ((PA, QA), (PB, QB)))
# display symbols of 004's notation
PI_S, QI_S, DPI_S, DQI_S, FP_S, FQ_S, DW_S = sp.symbols("p_i q_i p'_i q'_i f_p f_q w'", real=True)
LATEX_NAMES.update({PI_S: "p_i", QI_S: "q_i", DPI_S: "p'_i", DQI_S: "q'_i", FP_S: "f_p", FQ_S: "f_q",
                    DW_S: r"\frac{\partial w}{\partial y}"})
DOMAINS.update({Y: ("lin", -3.0, 3.0), MUP: ("lin", -1.0, 1.0), MUQ: ("lin", -1.0, 2.0), SP2: ("log", 0.3, 3.0),
                SQ2: ("log", 0.3, 3.0), PA: ("log", 0.05, 1.0), PB: ("log", 0.05, 1.0), QA: ("log", 0.05, 1.0),
                QB: ("log", 0.05, 1.0)})
_T3_DEFS = {PI_S: P_Y, QI_S: Q_Y, DPI_S: sp.diff(P_Y, Y), DQI_S: sp.diff(Q_Y, Y), FP_S: (Y - MUP) / SP2,
            FQ_S: (Y - MUQ) / SQ2, DW_S: sp.diff(W_Y, Y)}
_T3_POINT = {Y: 1.3, MUP: 0.0, MUQ: 1.0, SP2: 1.0, SQ2: 1.5, PA: 0.4, PB: 0.7, QA: 0.2, QB: 0.9}
_OTHERS = ((PA, QA), (PB, QB))
_T3_47 = sum(FP_S * PI_S ** 2 * pj / (PI_S + pj) ** 2 + FP_S * PI_S ** 2 / (PI_S + pj)
             - FQ_S * QI_S * qj * PI_S / (QI_S + qj) ** 2 - FP_S * QI_S * PI_S / (QI_S + qj) for pj, qj in _OTHERS)
_T3_48 = sum(FP_S * PI_S * pj / (PI_S + pj) ** 2 + FP_S * PI_S / (PI_S + pj)
             - FQ_S * QI_S * qj / (QI_S + qj) ** 2 - FP_S * QI_S / (QI_S + qj) for pj, qj in _OTHERS)
_T3_SUMW = sum(PI_S / (PI_S + pj) - QI_S / (QI_S + qj) for pj, qj in _OTHERS)

ERRATA += [
    Erratum(
        id="004-eq43", paper="004", where="App. D, eq. 43 (proof of Theorem 3)", kind="typo (missing sum)",
        quantity=r"\frac{\partial w(y_i)}{\partial y_i}\ \text{(other responses } j \in \{a, b\})",
        printed=-(PA * DPI_S / (PI_S + PA) ** 2 - QA * DQI_S / (QI_S + QA) ** 2),
        corrected=-sum(pj * DPI_S / (PI_S + pj) ** 2 - qj * DQI_S / (QI_S + qj) ** 2 for pj, qj in _OTHERS),
        explanation="w(y_i) (eq. 42) is a sum over j != i, so its derivative is the sum of the printed term over "
                    "j (eq. 46 has the sum); evaluated here with j = a as the printed single term.",
        reference=lambda: sp.diff(W_Y, Y), point=_T3_POINT, definitions=_T3_DEFS),
    Erratum(
        id="004-eq47", paper="004", where="App. D, eq. 47 (proof of Theorem 3)", kind="sign",
        quantity=r"\frac{\partial \hat w(y)}{\partial y},\quad \hat w = w\, p_i",
        printed=-_T3_47, corrected=_T3_47,
        explanation="d(w p_i)/dy = w' p_i + w p'_i with p'_i = -f_p p_i gives +sum(...), not -sum(...); the "
                    "sign is harmless where the proof sets it to 0 (eq. 48).",
        reference=lambda: sp.diff(W_Y * P_Y, Y), point=_T3_POINT, definitions=_T3_DEFS),
    Erratum(
        id="004-eq49", paper="004", where="App. D, eq. 49 (proof of Theorem 3)", kind="sign",
        quantity=r"g(y_i) \text{ (the left side of eq. 48)}",
        printed=-DW_S + FP_S * _T3_SUMW, corrected=DW_S + FP_S * _T3_SUMW,
        explanation="The left side of eq. 48 equals +dw/dy + f_p sum(p_i/(p_i+p_j) - q_i/(q_i+q_j)) = "
                    "dw/dy - f_p w; eq. 51 (at dw/dy = 0) is unaffected.",
        reference=lambda: _T3_48.xreplace(_T3_DEFS), point=_T3_POINT, definitions=_T3_DEFS),
]
ERRATA_BY_ID: dict[str, Erratum] = {e.id: e for e in ERRATA}
assert len(ERRATA_BY_ID) == len(ERRATA), "duplicate ERRATA ids"

# ============================================================================ the errata by consequence
#: The consequence classes, most consequential first (an ordinal rank).
CONSEQUENCE_CLASSES: dict[int, str] = {
    1: "wrong objective or update direction",
    2: "a stated conclusion fails",
    3: "wrong value, reading stands",
    4: "slip in a step, result right",
    5: "notation slip",
}

#: Every erratum's consequence: (class of :data:`CONSEQUENCE_CLASSES`, one-line reason).
CONSEQUENCES: dict[str, tuple[int, str]] = {
    "000-eq7": (1, "minimising the printed loss lowers pi(a+): the SFT term works backwards"),
    "004-eq3": (1, "minimising the printed reward-model loss ranks the losing response first"),
    "004-eq4": (1, "minimising the printed PPO 'loss' lowers the return"),
    "004-eq35": (1, "a negative correlation enlarges DPO's update; App. C says it shrinks it"),
    "004-eq25": (1, "as printed, Naive-bDPO is another loss with another gradient"),
    "000-cor2": (2, "suggests beta >= 1 escapes the degradation; dl/dpi+ -> 0 at every beta"),
    "002-sec3.2": (2, "says the field vanishes where |dL/dx1| diverges (low x1)"),
    "000-B1-token-rejected-c": (2, "flex-beta token gradients differ by beta-/beta+, not 'same scale'"),
    "000-B1-token-rejected-c'": (2, "as the sampled token: the beta-/beta+ factor is missing"),
    "004-eq11": (3, "overstates the balanced update by 1/p_i (the proof has p_i)"),
    "004-eq36": (3, "wrong lambda term and missing p_i in App. C's balanced update"),
    "000-B1-token-chosen-c": (3, "a logit where a probability belongs: wrong value, sign if x > 1"),
    "000-B1-token-chosen-c'": (3, "a logit where a probability belongs: wrong value"),
    "000-cor1": (3, "sign of a ratio whose magnitude (the part used) is right"),
    "000-B22-chain": (4, "a missing term in the middle step; the right-hand side has it"),
    "004-eq43": (4, "a missing sum in a proof step; eq. 46 has it"),
    "004-eq47": (4, "a sign in a proof step that is set to 0 (eq. 48)"),
    "004-eq49": (4, "a sign in a proof step; eq. 51 is unaffected"),
    "000-D2-fig10": (5, "compares dl/dpi- with its own magnitude; the meaning is clear"),
}
assert set(CONSEQUENCES) == set(ERRATA_BY_ID), "every erratum needs a consequence"


def errata_ranking(errata: Sequence[Erratum] | None = None) -> list[dict[str, Any]]:
    """The errata ranked by consequence (:data:`CONSEQUENCES`): one dict per erratum, most consequential
    first (class, then the order of ``errata``), with ``number`` its 1-based position in ``errata`` (as
    the chapter's boxes are numbered), ``id``, ``paper``, ``where``, ``rank``, ``consequence`` (the class)
    and ``reason``."""
    errata = ERRATA if errata is None else list(errata)
    rows = [{"number": k, "id": e.id, "paper": e.paper, "where": e.where, "rank": CONSEQUENCES[e.id][0],
             "consequence": CONSEQUENCE_CLASSES[CONSEQUENCES[e.id][0]], "reason": CONSEQUENCES[e.id][1]}
            for k, e in enumerate(errata, 1)]
    return sorted(rows, key=lambda r: (r["rank"], r["number"]))


# ============================================================================ the chapter's comparison
def loss_params(params: Mapping[str, Any], losses: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per-loss parameters from the ``gradients`` chapter's parameters, by the book-wide names of
    :func:`prefdyn.losses.loss_params_from` (``beta``; ``beta_balanced`` for nbdpo, nbdpo_v2 and bdpo;
    the others by their own name), validated, defaults filled in."""
    from .losses import LOSS_NAMES, loss_params_from

    return loss_params_from(params, list(losses if losses is not None else params.get("losses", LOSS_NAMES)))


def _param_subs(name: str, p: Mapping[str, Any]) -> dict:
    """Numeric (rational) values of loss ``name``'s parameters ``p``, keyed by their symbols
    (:func:`prefdyn.symbolic.param_values`: ``symmetric`` becomes Delta lambda_min's value)."""
    values = symbolic.param_values(name, **p)
    return {sym: sp.Rational(repr(v)) for sym, v in zip(symbolic.PARAM_SYMBOLS[name].values(), values)}


def gradient_path(name: str, params: Mapping[str, Any], pi_chosen: float, ref_chosen: float,
                  ref_rejected: float, pi_rejected_end: float, n_points: int) -> dict[str, Any]:
    """|dl/dpi+| and |dl/dpi-| of loss ``name`` along pi- from ``ref_rejected`` down to ``pi_rejected_end``
    (log-spaced, ``n_points``) with pi+ = ``pi_chosen`` fixed, from torch autograd of :mod:`prefdyn.losses`
    in float64 (``dl/dpi = (dl/dlog pi) / pi``; detached weights are constants, as in training).

    Returns numpy arrays ``pi_minus``, ``d_pi_plus``, ``d_pi_minus`` (signed).
    """
    import torch

    from .losses import logprob_grads

    for nm, v in (("pi_chosen", pi_chosen), ("ref_chosen", ref_chosen), ("ref_rejected", ref_rejected)):
        if not 0.0 < v < 1.0:
            raise ValueError(f"gradient_path: {nm} must be in (0, 1) (got {v!r})")
    if not 0.0 < pi_rejected_end < ref_rejected:
        raise ValueError(f"gradient_path: pi_rejected_end must be in (0, ref_rejected={ref_rejected}) (got {pi_rejected_end!r})")
    if int(n_points) < 2:
        raise ValueError(f"gradient_path: n_points must be >= 2 (got {n_points!r})")
    lr = torch.linspace(math.log(ref_rejected), math.log(pi_rejected_end), int(n_points), dtype=torch.float64)
    lc = torch.full_like(lr, math.log(pi_chosen))
    gc, gr = logprob_grads(name, lc, lr, torch.full_like(lr, math.log(ref_chosen)),
                           torch.full_like(lr, math.log(ref_rejected)), **params)
    pm = lr.exp()
    return {"pi_minus": pm.numpy(), "d_pi_plus": (gc / pi_chosen).numpy(), "d_pi_minus": (gr / pm).numpy()}


def _tends(lo) -> str:
    if lo.zero:
        return "0"
    t = lo.tends_to()
    return t if t is not None else "undecided"


def comparison_table(losses: Sequence[str], params: Mapping[str, Mapping[str, Any]], pi_chosen: float = 0.12,
                     ref_chosen: float = 0.12, ref_rejected: float = 0.12,
                     pi_rejected_end: float = 1e-12) -> dict[str, dict[str, Any]]:
    """The chapter's comparison of all losses, one row (dict) per loss name.

    For each loss, from :func:`gradients` (sympy) with the numeric parameters ``params[name]`` substituted and
    :func:`prefdyn.symbolic.leading_order` as pi- -> 0 (000 Cor. 1-3):

    - ``ratio``: LaTeX of the signed ratio (dl/dpi-)/(dl/dpi+) (symbolic parameters);
    - ``ratio_at_end``: |dl/dpi-| / |dl/dpi+| at pi+ = ``pi_chosen``, pi- = ``pi_rejected_end`` (torch);
    - ``ratio_limit``, ``d_pi_plus_limit``, ``d_pi_minus_limit``: what |.| tends to as pi- -> 0 ('0',
      'finite', 'inf'), for the given parameter values;
    - ``d_pi_plus_vanishes``: ``d_pi_plus_limit == '0'`` (000 Cor. 2's "degradation");
    - ``balanced_log``: dl/dlog pi+ + dl/dlog pi- == 0 identically (as the reward model's, 000 Sec. 4);
    - ``lead_d_pi_plus``, ``lead_d_pi_minus``: LaTeX of the leading terms (numeric parameters), and
      ``lead_exprs``: the two as sympy expressions (None where undecided), for
      :func:`prefdyn.chapters.gradients_view.loss_markdown`.
    """
    return {name: dict(_comparison_row(name, tuple(sorted(params[name].items())), pi_chosen, ref_chosen,
                                       ref_rejected, pi_rejected_end)) for name in losses}


@lru_cache(maxsize=None)
def _comparison_row(name: str, pkey: tuple, pi_chosen: float, ref_chosen: float, ref_rejected: float,
                    pi_rejected_end: float) -> dict[str, Any]:
    """One row of :func:`comparison_table` (cached by loss, parameters and path)."""
    p = dict(pkey)
    g = gradients(name)
    subs = _param_subs(name, p)
    gc, gr = g.d_pi_c.xreplace(subs), g.d_pi_r.xreplace(subs)
    lc, lr = symbolic.leading_order(gc, PI_M), symbolic.leading_order(gr, PI_M)
    lq = symbolic.leading_order(g.ratio.xreplace(subs), PI_M)
    if not lq.ok:                              # e.g. DPOP: sympy cannot take the ratio's limit directly,
        lq = lr.over(lc)                       # but it decides both gradients (as symbolic.derive does)
    path = gradient_path(name, p, pi_chosen, ref_chosen, ref_rejected, pi_rejected_end, 2)
    a, b = abs(float(path["d_pi_plus"][-1])), abs(float(path["d_pi_minus"][-1]))
    le_c, le_r = lc.expr(PI_M), lr.expr(PI_M)
    row = {
        "ratio": latex(g.ratio),
        "ratio_at_end": b / a if a > 0 else float("inf"),
        "ratio_limit": _tends(lq),
        "d_pi_plus_limit": _tends(lc),
        "d_pi_minus_limit": _tends(lr),
        "d_pi_plus_vanishes": _tends(lc) == "0",
        "balanced_log": bool(g.balanced_log),
        "lead_d_pi_plus": display_latex(le_c) if le_c is not None else "undecided",
        "lead_d_pi_minus": display_latex(le_r) if le_r is not None else "undecided",
        "lead_exprs": (le_c, le_r),
    }
    return row


#: The seed papers, by their file number in ``shared/seeds``.
PAPERS = ("000", "002", "004")


def printed_agreement(agree: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The largest relative differences of the printed forms that agree (``{key: max_relative_error}``, keys
    of :data:`PRINTED`), grouped by paper: ``{paper: {location: err}}`` with the paper number taken off the
    key."""
    out: dict[str, dict[str, float]] = {p: {} for p in PAPERS}
    for key, err in agree.items():
        paper, _, rest = key.partition(" ")
        out.setdefault(paper, {})[rest] = err
    return {p: v for p, v in out.items() if v}


# ============================================================================ claims that need a condition
@dataclass(frozen=True)
class Note:
    """A printed claim (not an equation) that holds only under a condition the paper does not state.

    ``check()`` returns the numbers that show it, computed from the derivation.
    """

    id: str
    source: str
    claim: str
    finding: str
    check: Callable[[], dict[str, float]] | None = None


def _rate_002(x1: float, x2: float, beta: float = 0.1) -> float:
    """002 Cor. 1's update rate |dL/dx1 / dL/dx2| at (x1, x2), from the derivation."""
    e = sp.Abs(_x_coords(derived("dpo", "d_pi_plus") * REF_P / (derived("dpo", "d_pi_minus") * REF_M)))
    return evaluate(e, {X1: x1, X2: x2, BETA: beta, REF_P: 0.12, REF_M: 0.12})


def _imbalance_004(pw: float, pl: float, beta: float = 1.0) -> float:
    """|dL/dpi_w| / |dL/dpi_l| of DPO (004 Definition 1: > 1 is 'positively imbalanced')."""
    e = sp.Abs(derived("dpo", "d_pi_plus") / derived("dpo", "d_pi_minus"))
    return evaluate(e, {PI_P: pw, PI_M: pl, REF_P: 0.2, REF_M: 0.2, BETA: beta})


NOTES: list[Note] = [
    Note("002-remark1", "002 Remark 1",
         "the update rate x2/x1 < 1 holds for any pairwise preference data",
         "It holds only once x1 > x2. At the start of training (pi = pi_ref) x1 = x2 = 1 and the rate is 1; "
         "for a pair the policy mis-orders (x2 > x1) it exceeds 1.",
         lambda: {"rate at x1 = x2 = 1": _rate_002(1.0, 1.0), "rate at x1 = 0.5, x2 = 2": _rate_002(0.5, 2.0)}),
    Note("004-cor1", "004 Corollary 1",
         "standard DPO loss is negatively imbalanced",
         "By 004 eq. 2, |dL/dpi_w| / |dL/dpi_l| = pi_l/pi_w: DPO is negatively imbalanced only where "
         "pi_w > pi_l; where the preferred response is the less likely one it is positively imbalanced.",
         lambda: {"the ratio |dL/dpi_w|/|dL/dpi_l| at pi_w = 0.3, pi_l = 0.1": _imbalance_004(0.3, 0.1),
                  "the ratio |dL/dpi_w|/|dL/dpi_l| at pi_w = 0.1, pi_l = 0.3": _imbalance_004(0.1, 0.3)}),
    Note("004-thm3", "004 Theorem 3, third statement",
         "if y* is a local extremum of w and y* > mu_q, then an extremum of w pi lies in (y*, mu_p)",
         "With mu_p <= mu_q < y* that interval is empty; the condition must read y* < mu_p, as the proof "
         "assumes ('the closest local extremum of w(y) to mu_p').", None),
]


# ============================================================================ errata the book had missed: numbers
def corollary2_limits(betas: Sequence[float]) -> dict[float, dict[str, Any]]:
    """000 Cor. 2 at each ``beta``: the exponents of pi- in the leading terms of DPO's dl/dpi+ and
    dl/dpi- as pi- -> 0 (:func:`prefdyn.symbolic.leading_order`, beta a rational number) and what
    |dl/dpi+|, |dl/dpi-| and their ratio tend to ('0', 'finite', 'inf'). Cor. 2 prints the condition
    beta < 1 for dl/dpi+ -> 0; the rows show it holds at every beta (erratum '000-cor2')."""
    out: dict[float, dict[str, Any]] = {}
    for b in betas:
        sub = {BETA: sp.Rational(repr(float(b)))}
        lc = symbolic.leading_order(derived("dpo", "d_pi_plus").xreplace(sub), PI_M)
        lr = symbolic.leading_order(derived("dpo", "d_pi_minus").xreplace(sub), PI_M)
        out[float(b)] = {"exponent_plus": float(lc.exponent), "exponent_minus": float(lr.exponent),
                         "d_pi_plus_limit": _tends(lc), "d_pi_minus_limit": _tends(lr),
                         "ratio_limit": _tends(lr.over(lc))}
    return out


def field_002(x1: float, x2: float = 1.0, beta: float = 0.1) -> dict[str, float]:
    """|dL/dx1| and |dL/dx2| of DPO in 002's coordinates at (x1, x2) (002 eq. 2, from the derivation)."""
    pt = {X1: x1, X2: x2, BETA: beta, REF_P: 0.12, REF_M: 0.12}
    d1 = _x_coords(derived("dpo", "d_pi_plus") * REF_P)
    d2 = _x_coords(derived("dpo", "d_pi_minus") * REF_M)
    return {"d_x1": abs(evaluate(d1, pt)), "d_x2": abs(evaluate(d2, pt))}


@lru_cache(maxsize=None)
def bdpo_not_detached() -> tuple[sp.Expr, sp.Expr]:
    """bDPO's (dl/dpi+, dl/dpi-) with lambda_w = log pi- / (log pi+ + log pi-) (004 eq. 29) NOT detached:
    :func:`prefdyn.symbolic.loss_expr` without stop-gradient (SG_LAMBDA_W replaced by its value) is
    differentiated, so lambda_w's own derivative enters. The book (``prefdyn.losses.bdpo``) detaches it;
    004 does not say which. The two differ by -sigma(-m) beta (h+ + h-) dlambda_w/dpi, which is 0 at
    pi = pi_ref (h+ = h- = 0), where 004 Prop. 1 is stated."""
    loss = symbolic.loss_expr("bdpo")
    return sp.diff(loss, PI_P), sp.diff(loss, PI_M)


def bdpo_detachment(pi_minus: Sequence[float], beta: float, pi_chosen: float, ref_chosen: float,
                    ref_rejected: float) -> dict[str, dict[str, float]]:
    """bDPO's gradients at each ``pi_minus`` (pi+ = ``pi_chosen``) with lambda_w detached (the book's
    choice, :func:`gradients`) and not detached (:func:`bdpo_not_detached`), in high precision.

    Returns ``{"detached": {...}, "not_detached": {...}}``, each with lists ``d_pi_plus``, ``d_pi_minus``
    (signed) and ``ratio`` = |dl/dpi-| / |dl/dpi+|, one entry per ``pi_minus``.
    """
    g = gradients("bdpo")
    forms = {"detached": (g.d_pi_c, g.d_pi_r), "not_detached": bdpo_not_detached()}
    out: dict[str, dict[str, list]] = {}
    for key, (gc, gr) in forms.items():
        rows: dict[str, list] = {"d_pi_plus": [], "d_pi_minus": [], "ratio": []}
        for pm in pi_minus:
            pt = {PI_P: pi_chosen, PI_M: sp.Float(repr(float(pm)), 60) if float(pm) > 0 else pm,
                  REF_P: ref_chosen, REF_M: ref_rejected, BETA: beta}
            a, b = evaluate(gc, pt), evaluate(gr, pt)
            rows["d_pi_plus"].append(a)
            rows["d_pi_minus"].append(b)
            rows["ratio"].append(abs(b) / abs(a) if a != 0 else float("inf"))
        out[key] = rows
    return out


def detachment_limits(beta: float, pi_chosen: float, ref_chosen: float,
                      ref_rejected: float) -> dict[str, dict[str, Any]]:
    """What bDPO's |dl/dpi+| and |dl/dpi-| tend to as pi- -> 0 (pi+ = ``pi_chosen``) with lambda_w
    detached and not (:func:`numeric_limit` of :func:`gradients` and :func:`bdpo_not_detached`):
    ``{"detached": {...}, "not_detached": {...}}`` with ``d_pi_plus_limit``, ``d_pi_minus_limit`` and
    ``q_plus``, the factor by which |dl/dpi+| changes from pi- = 1e-1000 to 1e-4000."""
    g = gradients("bdpo")
    pt = {BETA: sp.Rational(repr(float(beta))), PI_P: sp.Rational(repr(pi_chosen)),
          REF_P: sp.Rational(repr(ref_chosen)), REF_M: sp.Rational(repr(ref_rejected))}
    out = {}
    for key, (gc, gr) in (("detached", (g.d_pi_c, g.d_pi_r)), ("not_detached", bdpo_not_detached())):
        lc, lr = numeric_limit(gc.xreplace(pt), {}), numeric_limit(gr.xreplace(pt), {})
        out[key] = {"d_pi_plus_limit": lc["limit"], "d_pi_minus_limit": lr["limit"], "q_plus": lc["q"]}
    return out


# ============================================================================ matched beta
#: The losses whose temperature is the chapter's ``beta_balanced`` (004's balanced family), and those whose
#: temperature is ``beta``; flex-beta DPO (beta+, beta-) and SLiC have neither.
BALANCED = ("nbdpo", "nbdpo_v2", "bdpo")


#: The two depths of pi- at which :func:`numeric_limit` reads a limit (mpmath has no float underflow).
DEEP = (sp.Float("1e-1000", 30), sp.Float("1e-4000", 30))


def numeric_limit(expr: sp.Expr, point: Mapping[sp.Symbol, Any], t: sp.Symbol = PI_M) -> dict[str, Any]:
    """What |expr| tends to as ``t -> 0`` ('0', 'finite', 'inf'), read from its values at ``t`` = 1e-1000
    and 1e-4000 (:data:`DEEP`, high precision) with the other symbols at ``point``.

    A leading term c t^e |log t|^k gives the slope e' = d log|expr| / d log t = e + O(k / 1e4) and the
    ratio q = |expr(1e-4000)| / |expr(1e-1000)| = 4^k t-ratio^e: e' > 2e-3 -> '0', e' < -2e-3 -> 'inf',
    else (e = 0) q decides: 4^k with k < 0 -> '0', k = 0 -> 'finite', k > 0 -> 'inf'. An exact 0 is '0'.
    Exact for the leading terms of the book's losses (powers of t times powers of log t; a test checks it
    against :func:`prefdyn.symbolic.leading_order` for every loss). Returns the verdict, the slope, q and
    the two values."""
    vals = [abs(_n(expr, {**point, t: d})) for d in DEEP]
    if vals[0] == 0 and vals[1] == 0:
        return {"limit": "0", "slope": None, "q": None, "values": [0.0, 0.0]}
    q = vals[1] / vals[0]
    slope = float(sp.log(q) / (sp.log(DEEP[1]) - sp.log(DEEP[0])))
    if slope > 2e-3:
        verdict = "0"
    elif slope < -2e-3:
        verdict = "inf"
    else:
        verdict = "0" if q < 0.5 else ("inf" if q > 2 else "finite")
    return {"limit": verdict, "slope": slope, "q": float(q), "values": [_plain_value(v) for v in vals]}


def path_limits(name: str, params: Mapping[str, Any], pi_chosen: float, ref_chosen: float,
                ref_rejected: float) -> dict[str, str]:
    """:func:`numeric_limit` of |dl/dpi+| and |dl/dpi-| of loss ``name`` (:func:`gradients`, ``params``
    substituted) along the chapter's path, pi+ = ``pi_chosen``, as pi- -> 0."""
    g = gradients(name)
    pt = {**_param_subs(name, params), PI_P: sp.Rational(repr(pi_chosen)), REF_P: sp.Rational(repr(ref_chosen)),
          REF_M: sp.Rational(repr(ref_rejected))}
    return {"d_pi_plus_limit": numeric_limit(g.d_pi_c.xreplace(pt), {})["limit"],
            "d_pi_minus_limit": numeric_limit(g.d_pi_r.xreplace(pt), {})["limit"]}


def matched_beta(losses: Sequence[str], params: Mapping[str, Any], betas: Sequence[float],
                 pi_chosen: float, ref_chosen: float, ref_rejected: float,
                 pi_rejected_end: float) -> dict[float, dict[str, dict[str, Any]]]:
    """The losses compared at matched temperatures: for each ``b`` in ``betas``, every loss with
    ``beta = beta_balanced = b`` (the chapter's other parameters ``params`` unchanged). 004 runs the
    balanced family at beta = 1 (App. B) and 000 DPO at 0.1; this compares like with like.

    Per beta and loss: ``d_pi_plus_limit``, ``d_pi_minus_limit`` (:func:`path_limits`: read numerically
    deep in the limit, since sympy's limits take minutes for bDPO at beta = 0.1) and ``ratio_at_end``,
    |dl/dpi-| / |dl/dpi+| at pi- = ``pi_rejected_end`` (torch, :func:`gradient_path`)."""
    out: dict[float, dict[str, dict[str, Any]]] = {}
    for b in betas:
        ps = loss_params({**params, "beta": float(b), "beta_balanced": float(b)}, losses)
        rows = {}
        for name in losses:
            row = path_limits(name, ps[name], pi_chosen, ref_chosen, ref_rejected)
            path = gradient_path(name, ps[name], pi_chosen, ref_chosen, ref_rejected, pi_rejected_end, 2)
            a, c = abs(float(path["d_pi_plus"][-1])), abs(float(path["d_pi_minus"][-1]))
            row["ratio_at_end"] = c / a if a > 0 else float("inf")
            rows[name] = row
        out[float(b)] = rows
    return out
