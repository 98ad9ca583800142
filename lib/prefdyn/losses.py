"""The loss zoo: DPO and its variants, once, as pure torch functions of sequence log-probs.

Every preference loss of the book lives here and nowhere else (the one exception is the independent sympy
derivation in :mod:`prefdyn.symbolic`, which the tests compare against this module). Seed papers are quoted
by their file number in ``shared/seeds``: 000 (Yan et al., 3D-properties), 004 (Ma et al., gradient
imbalance).

Signature and conventions
-------------------------
Each loss is ``fn(logp_chosen, logp_rejected, ref_chosen, ref_rejected, **params) -> Tensor``:

- inputs are **sequence** log-probabilities ``log pi(a|x)``: the SUM of the token log-probs of the response
  (as in TRL 1.16's ``DPOTrainer._compute_loss``: ``logps = per_token_logps.sum(dim=1)``; TRL's IPO instead averages over tokens, see ``ipo``). In the toy
  model a response is one token. ``ref_*`` are the frozen reference model's log-probs (``pi_0`` in 000,
  ``pi_ref`` in 004);
- any broadcastable batch shapes, float32 or float64, any device; plain numbers are accepted too;
- the result is the **per-pair** loss, no reduction (``.mean()`` it yourself);
- every loss is written in log space with ``F.logsigmoid`` / ``relu``: values and gradients stay finite for
  log-probs anywhere in ``[-1e4, 0]``, including ``chosen == rejected`` and ``pi == pi_ref``;
- the reference log-probs are constants of the loss: gradients are meant w.r.t. the policy log-probs.

Notation: ``h+ = logp_chosen - ref_chosen`` and ``h- = logp_rejected - ref_rejected`` (log-ratios), and
``h = h+ - h-`` (the "logits" of TRL's ``dpo_loss``).

=============  ======================================  ===============================================
name           params (defaults)                       loss per pair
=============  ======================================  ===============================================
``dpo``        beta=0.1                                -log s(beta h)                      000 eq. 5
``flex_dpo``   beta_chosen=0.1, beta_rejected=0.01     -log s(b+ h+ - b- h-)      000 App. B.2.1
``sft_dpo``    beta=0.1, gamma=0.1                     dpo - gamma logp_chosen             000 eq. 7
``ipo``        beta=0.1                                (h - 1/(2 beta))^2                  000 eq. 8
``slic``       delta=5.0, eta=0.1                      max(0, delta - logp+ + logp-) - eta logp+
                                                                                           000 eq. 11
``dpop``       beta=0.1, lam=50.0                      -log s(beta (h+ - h- - lam max(0, ref+ - logp+)))
                                                                  DPO-Positive, Pal et al. 2024 ([22] of 000)
``nbdpo``      beta=1.0, clip=0.5, symmetric=False     value of dpo; gradient on logp+ times lambda
                                                                            004 eq. 25 (corrected), 26
``nbdpo_v2``   beta=1.0, clip=0.5, symmetric=False     -log s(beta (lambda h+ - h-))       004 eq. 27, 26
``bdpo``       beta=1.0                                -log s(beta (lw h+ - (1 - lw) h-))  004 eq. 28-29
=============  ======================================  ===============================================

(``s`` is the logistic sigmoid.) Default values are the papers': beta=0.1, IPO eta=0.1, SLiC delta=5 and
eta=0.1 (000 App. D.1), Flex-DPO beta1=0.1, beta2=0.01 (000 Table 10), gamma=0.1 for SFT-DPO (000 gives no
value; 0.1 is the book's choice), DPOP lambda=50 (Pal et al.), nbDPO/bDPO beta=1 and clip=0.5 (004 App. B).

Choices where the papers or TRL differ
--------------------------------------
- **IPO** (000 eq. 8): ``(h - 1/(2 beta))^2``. The paper's ``eta`` is our ``beta``, as in TRL
  (``loss_type="ipo"``: ``(ipo_delta - 1/(2*beta))**2``). TRL 1.16 (``DPOTrainer._compute_loss``) divides
  each response's log-ratio by its number of completion tokens before IPO; we take whatever log-probs we
  are given (sums by convention), so pass per-token averages (policy and reference) to reproduce TRL's IPO.
  TRL's ``sigmoid`` loss is our ``dpo`` on the same summed log-probs.
- **SLiC** (000 eq. 11): exactly the printed form ``max(0, delta - log pi+ + log pi-) - eta log pi+``: a
  hinge on the policy log-ratio (no reference model; ``ref_*`` are accepted and ignored) plus ``eta`` times
  the SFT loss of the chosen response (000 App. A.3 describes the regulariser as a cross-entropy term). At
  the hinge's kink the subgradient 0 is used (``relu``), the "else" branch of 000 eq. 13.
- **nbDPO** (004 eq. 25): the printed equation has a misplaced parenthesis: it closes the sigmoid after
  the first term and opens a ``log(`` around ``pi_l/pi_ref - beta (lambda-1) log(...)``. The intended loss,
  whose value equals DPO's as the text says, is

      L = -log s( beta lambda h+  -  beta h-  -  beta (lambda - 1) sg[h+] )

  with ``sg[.]`` the stop-gradient (004's ``pi_theta^detached``). We implement it in the algebraically
  identical form ``h+' = sg[h+] + lambda (h+ - sg[h+])`` so the value is *bit-identical* to ``dpo`` while
  ``dL/dlogp_chosen`` is multiplied by lambda and ``dL/dlogp_rejected`` is DPO's.
- **lambda** (004 eq. 26) ``= 1 + clip(log pi_w - log pi_l, dl_min, dl_max)`` is computed from the
  *detached* policy log-probs (it is a gradient weight). ``clip`` is ``dl_max``; asymmetric:
  ``dl_min = 0``; symmetric: ``dl_min = 1/(1 + clip) - 1``, so lambda lies in ``[1/(1+clip), 1+clip]``.
- **nbDPO v2** (004 eq. 27): lambda of eq. 26, detached as in nbDPO (004 calls v2 the same reweighting
  without the detached correction term). Its value therefore differs from DPO's.
- **bDPO** (004 eq. 28-29): ``lw = log pi_l / (log pi_w + log pi_l)`` is **detached**. Reasons: 004 calls
  bDPO "a computationally efficient gradient *reweighting* mechanism" and describes lw as a weight between
  the two terms; 004 Prop. 1 (the gradient ratio at pi = pi_ref) holds with a detached lw, and would hold
  without detaching too since there h+ = h- = 0 kills the d(lw) terms, so it does not decide; a
  non-detached lw would add gradient terms ``(h+ + h-) d(lw)`` that the paper never mentions. lw is computed
  from ``min(logp, 0)`` (only relevant for inputs above 0, which are not log-probabilities), and set to 1/2
  when ``log pi_w + log pi_l = 0`` (both responses certain: the limit along ``pi_w = pi_l``). Because lw is
  detached, this guard never changes a gradient.
- **DPOP**: the penalty sits inside ``beta(...)`` as in Pal et al.'s DPOP loss (the formula of issue 3); ``lam`` is
  their lambda. Not a seed paper: it is cited by 000 as [22].

Which quantities are detached (stop-gradient): lambda in ``nbdpo`` and ``nbdpo_v2``; the correction term
``sg[h+]`` in ``nbdpo``; lw in ``bdpo``. Nothing else.

Entry points
------------
- :data:`LOSSES` (name -> :class:`Loss`) and :func:`get` (a name, a ``Loss`` or any function with the loss
  signature -> ``Loss``). Calling a ``Loss`` validates its parameters; ``Loss.check(**params)`` validates
  once and ``Loss.fn`` is the unchecked function, for loops (the toy trainer validates at its boundary and
  calls ``fn`` on every step). ``losses.dpo`` etc. are the same ``Loss`` objects.
- :func:`register` (or ``LOSSES["name"] = fn``) makes a loss of your own work everywhere a name works.
- :func:`pair_loss` (= ``get(loss)(...)``), :func:`check_loss_params`, :func:`logprob_grads` (per-pair
  ``dl/dlogp`` by autograd; ``dl/dpi = (dl/dlogp) / pi``), :func:`loss_params_from` (one mapping from a
  chapter's parameters to each loss's, :data:`CHAPTER_NAMES`).
- Views of the registry: :data:`LOSS_NAMES` (the book's losses), :data:`LOSS_DEFAULTS`,
  :data:`LOSS_PARAM_RANGES`, :data:`LOSS_SOURCES`, :data:`DETACHED`.

Also here: :func:`reward_model_loss` (000 Sec. 4 / eq. 3, 004 eq. 3 up to its sign slip) and
:func:`sft_loss`.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .validate import Range

__all__ = [
    "Loss",
    "LOSSES",
    "SIGNATURE",
    "register",
    "get",
    "names",
    "CHAPTER_NAMES",
    "chapter_name",
    "loss_params_from",
    "LOSS_NAMES",
    "LOSS_DEFAULTS",
    "LOSS_PARAM_RANGES",
    "LOSS_SOURCES",
    "DETACHED",
    "ParamRange",
    "check_loss_params",
    "pair_loss",
    "logprob_grads",
    "reward_model_loss",
    "sft_loss",
    "delta_lambda_min",
    "nbdpo_lambda",
    "bdpo_weight",
    "dpo",
    "flex_dpo",
    "sft_dpo",
    "ipo",
    "slic",
    "dpop",
    "nbdpo",
    "nbdpo_v2",
    "bdpo",
]


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class ParamRange(Range):
    """The allowed values of one loss parameter (machine-readable; a chapter parameter declared from it,
    :func:`prefdyn.chapters.params.loss_param`, has the same range).

    ``type`` is ``"float"`` or ``"bool"``; ``low``/``high`` bound a float, ``low_open``/``high_open`` make a
    bound strict (inherited from :class:`prefdyn.validate.Range`). Floats must also be finite. A float parameter may be a
    torch tensor (every element is checked), so a sweep over e.g. beta can be one broadcast call.
    """

    type: str
    default: Any
    help: str

    def allowed(self) -> str:
        """The allowed values in words, e.g. ``'a finite number > 0'``."""
        if self.type == "bool":
            return "True or False"
        rng = self.range.text()
        return "a finite number" + (" " + rng if rng else "")

    def check(self, loss: str, name: str, value: Any) -> Any:
        """Return ``value`` (a Python float/bool or a float tensor) or raise a one-line ``ValueError``
        (the message is built only then)."""
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if type(value).__name__ == "bool_":  # numpy.bool_
                return bool(value)
        elif isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                value = value.to(torch.get_default_dtype())
            if self.range.contains_all(value):
                return value
            raise ValueError(f"{loss}: parameter '{name}' must be {self.allowed()} (got a tensor with values outside)")
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and self.range.contains(float(value)):
            return float(value)
        raise ValueError(f"{loss}: parameter '{name}' must be {self.allowed()} (got {value!r})")


_BETA = "inverse temperature beta of the log-ratios"
_PARAMS: dict[str, dict[str, ParamRange]] = {
    "dpo": {"beta": ParamRange("float", 0.1, _BETA + " (000 eq. 5)", low=0.0, low_open=True)},
    "flex_dpo": {
        "beta_chosen": ParamRange("float", 0.1, "beta+ on the chosen log-ratio (000 App. B.2.1, beta_1)", low=0.0, low_open=True),
        "beta_rejected": ParamRange("float", 0.01, "beta- on the rejected log-ratio (000 App. B.2.1, beta_2)", low=0.0, low_open=True),
    },
    "sft_dpo": {
        "beta": ParamRange("float", 0.1, _BETA + " (000 eq. 7)", low=0.0, low_open=True),
        "gamma": ParamRange("float", 0.1, "weight of the SFT term -log pi(a+) (000 eq. 7)", low=0.0),
    },
    "ipo": {"beta": ParamRange("float", 0.1, "IPO regularisation (000 eq. 8's eta, TRL's beta); target margin 1/(2 beta)", low=0.0, low_open=True)},
    "slic": {
        "delta": ParamRange("float", 5.0, "hinge margin delta on log pi+ - log pi- (000 eq. 11)", low=0.0),
        "eta": ParamRange("float", 0.1, "weight of the SFT regulariser -log pi+ (000 eq. 11)", low=0.0),
    },
    "dpop": {
        "beta": ParamRange("float", 0.1, _BETA + " (DPO-Positive)", low=0.0, low_open=True),
        "lam": ParamRange("float", 50.0, "DPOP penalty weight lambda on max(0, log pi0+ - log pi+)", low=0.0),
    },
    "nbdpo": {
        "beta": ParamRange("float", 1.0, _BETA + " (004 eq. 25)", low=0.0, low_open=True),
        "clip": ParamRange("float", 0.5, "Delta lambda_max of 004 eq. 26 (lambda <= 1 + clip)", low=0.0),
        "symmetric": ParamRange("bool", False, "symmetric clipping Delta lambda_min = 1/(1+clip) - 1, else 0 (004 Sec. 5.1)"),
    },
    "nbdpo_v2": {
        "beta": ParamRange("float", 1.0, _BETA + " (004 eq. 27)", low=0.0, low_open=True),
        "clip": ParamRange("float", 0.5, "Delta lambda_max of 004 eq. 26 (lambda <= 1 + clip)", low=0.0),
        "symmetric": ParamRange("bool", False, "symmetric clipping Delta lambda_min = 1/(1+clip) - 1, else 0 (004 Sec. 5.2)"),
    },
    "bdpo": {"beta": ParamRange("float", 1.0, _BETA + " (004 eq. 28)", low=0.0, low_open=True)},
}

_SOURCES: dict[str, str] = {
    "dpo": "000 eq. 5 (= 004 eq. 1)",
    "flex_dpo": "000 App. B.2.1",
    "sft_dpo": "000 eq. 7",
    "ipo": "000 eq. 8",
    "slic": "000 eq. 11",
    "dpop": "Pal et al. 2024 (DPO-Positive, [22] of 000)",
    "nbdpo": "004 eq. 25 (parenthesis corrected) with lambda of eq. 26",
    "nbdpo_v2": "004 eq. 27 with lambda of eq. 26",
    "bdpo": "004 eq. 28-29",
}
_DETACHED: dict[str, tuple[str, ...]] = {
    "dpo": (),
    "flex_dpo": (),
    "sft_dpo": (),
    "ipo": (),
    "slic": (),
    "dpop": (),
    "nbdpo": ("lambda (004 eq. 26)", "the correction term log(pi+/pi0+) (004 eq. 25, pi^detached)"),
    "nbdpo_v2": ("lambda (004 eq. 26)",),
    "bdpo": ("lambda_w (004 eq. 29)",),
}


# ----------------------------------------------------------------------------- helpers
def _tensors(*xs: Any) -> tuple[torch.Tensor, ...]:
    """Tensors from tensors / numbers / arrays; non-float and non-tensor inputs take the first float dtype."""
    ref = next((x for x in xs if isinstance(x, torch.Tensor) and x.is_floating_point()), None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else None
    out = []
    for x in xs:
        if isinstance(x, torch.Tensor):
            out.append(x if x.is_floating_point() else x.to(dtype))
        else:
            out.append(torch.as_tensor(x, dtype=dtype, device=device))
    return tuple(out)


def _shape(*xs: torch.Tensor) -> torch.Size:
    return torch.broadcast_shapes(*(x.shape for x in xs))


def delta_lambda_min(clip: Any, symmetric: bool) -> Any:
    """004 Sec. 5.1: ``0`` (asymmetric) or ``1/(1+clip) - 1`` (symmetric), so lambda >= 1/(1+clip)."""
    if not symmetric:
        return 0.0 * clip if isinstance(clip, torch.Tensor) else 0.0
    return 1.0 / (1.0 + clip) - 1.0


def nbdpo_lambda(logp_chosen: Any, logp_rejected: Any, clip: Any = 0.5, symmetric: bool = False) -> torch.Tensor:
    """004 eq. 26: ``lambda = 1 + clip(log pi_w - log pi_l, dl_min, clip)``, from DETACHED policy log-probs
    (``clip`` and ``symmetric`` validated as nbDPO's parameters)."""
    check_loss_params("nbdpo", clip=clip, symmetric=symmetric)
    return _nb_lambda(*_tensors(logp_chosen, logp_rejected), clip, symmetric)


def _nb_lambda(lp_c: torch.Tensor, lp_r: torch.Tensor, clip: Any, symmetric: bool) -> torch.Tensor:
    """:func:`nbdpo_lambda` on checked tensors and parameters (the losses' own call)."""
    d = lp_c.detach() - lp_r.detach()
    lo = delta_lambda_min(clip, symmetric)
    lo_t = torch.as_tensor(lo, dtype=d.dtype, device=d.device)
    hi_t = torch.as_tensor(clip, dtype=d.dtype, device=d.device)
    return 1.0 + torch.minimum(torch.maximum(d, lo_t), hi_t)


def bdpo_weight(logp_chosen: Any, logp_rejected: Any) -> torch.Tensor:
    """004 eq. 29: ``lambda_w = log pi_l / (log pi_w + log pi_l)``, DETACHED, in [0, 1].

    Computed as ``b / (a + b)`` with ``a = -min(log pi_w, 0)``, ``b = -min(log pi_l, 0)``; 1/2 where
    ``a + b = 0`` (both log-probs 0).
    """
    lp_c, lp_r = _tensors(logp_chosen, logp_rejected)
    a = (-lp_c.detach()).clamp_min(0.0)
    b = (-lp_r.detach()).clamp_min(0.0)
    s = a + b
    pos = s > 0
    return torch.where(pos, b / torch.where(pos, s, torch.ones_like(s)), torch.full_like(s, 0.5))


# ----------------------------------------------------------------------------- the losses
def dpo(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta=0.1) -> torch.Tensor:
    """DPO, 000 eq. 5 / 004 eq. 1: ``-log s(beta [(logp+ - ref+) - (logp- - ref-)])``."""
    lp_c, lp_r, ref_c, ref_r = _tensors(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return -F.logsigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r)))


def flex_dpo(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta_chosen=0.1, beta_rejected=0.01) -> torch.Tensor:
    """Flexible-beta DPO, 000 App. B.2.1: ``-log s(beta+ (logp+ - ref+) - beta- (logp- - ref-))``."""
    lp_c, lp_r, ref_c, ref_r = _tensors(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return -F.logsigmoid(beta_chosen * (lp_c - ref_c) - beta_rejected * (lp_r - ref_r))


def sft_dpo(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta=0.1, gamma=0.1) -> torch.Tensor:
    """SFT-regularised DPO, 000 eq. 7: ``dpo + gamma * (-logp+)``."""
    lp_c, lp_r, ref_c, ref_r = _tensors(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return -F.logsigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r))) - gamma * lp_c


def ipo(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta=0.1) -> torch.Tensor:
    """IPO, 000 eq. 8: ``(h - 1/(2 beta))^2`` with ``h = (logp+ - ref+) - (logp- - ref-)``; 000's eta = beta (TRL)."""
    lp_c, lp_r, ref_c, ref_r = _tensors(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return ((lp_c - ref_c) - (lp_r - ref_r) - 1.0 / (2.0 * beta)) ** 2


def slic(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, delta=5.0, eta=0.1) -> torch.Tensor:
    """SLiC, 000 eq. 11: ``max(0, delta - logp+ + logp-) - eta logp+``. ``ref_*`` only set the batch shape."""
    lp_c, lp_r, ref_c, ref_r = _tensors(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    out = F.relu(delta - lp_c + lp_r) - eta * lp_c
    shape = _shape(lp_c, lp_r, ref_c, ref_r)
    if out.shape != shape:
        out = out.expand(shape).clone()
    return out


def dpop(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta=0.1, lam=50.0) -> torch.Tensor:
    """DPO-Positive (Pal et al. 2024): ``-log s(beta [h+ - h- - lam max(0, ref+ - logp+)])``."""
    lp_c, lp_r, ref_c, ref_r = _tensors(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return -F.logsigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r) - lam * F.relu(ref_c - lp_c)))


def nbdpo(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta=1.0, clip=0.5, symmetric=False) -> torch.Tensor:
    """Naive balanced DPO, 004 eq. 25 with the misplaced parenthesis corrected, lambda of eq. 26.

    Printed (004 eq. 25): ``-log s(beta lam log(pi_w/pi_ref)) - beta log(pi_l/pi_ref - beta(lam-1) log(...))``.
    Corrected: ``-log s(beta lam h+ - beta h- - beta (lam - 1) sg[h+])`` (sg = stop-gradient, lam detached).
    The value equals :func:`dpo`'s (bit-identical here); ``dL/dlogp_chosen`` is lam times DPO's.
    """
    lp_c, lp_r, ref_c, ref_r = _tensors(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    lam = _nb_lambda(lp_c, lp_r, clip, symmetric)
    lp_c_det = lp_c.detach()
    lp_c_scaled = lp_c_det + lam * (lp_c - lp_c_det)  # value == lp_c exactly; gradient lam
    return -F.logsigmoid(beta * ((lp_c_scaled - ref_c) - (lp_r - ref_r)))


def nbdpo_v2(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta=1.0, clip=0.5, symmetric=False) -> torch.Tensor:
    """Naive balanced DPO v2, 004 eq. 27: ``-log s(beta [lam h+ - h-])``, lam of eq. 26 (detached)."""
    lp_c, lp_r, ref_c, ref_r = _tensors(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    lam = _nb_lambda(lp_c, lp_r, clip, symmetric)
    return -F.logsigmoid(beta * (lam * (lp_c - ref_c) - (lp_r - ref_r)))


def bdpo(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta=1.0) -> torch.Tensor:
    """Balanced DPO, 004 eq. 28-29: ``-log s(beta [lw h+ - (1 - lw) h-])``, lw of eq. 29 detached."""
    lp_c, lp_r, ref_c, ref_r = _tensors(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    lw = bdpo_weight(lp_c, lp_r)
    return -F.logsigmoid(beta * (lw * (lp_c - ref_c) - (1.0 - lw) * (lp_r - ref_r)))


# ----------------------------------------------------------------------------- the registry
#: The signature every loss has: ``fn(logp_chosen, logp_rejected, ref_chosen, ref_rejected, **params)``.
SIGNATURE = "fn(logp_chosen, logp_rejected, ref_chosen, ref_rejected, **params) -> per-pair Tensor"


@dataclass(frozen=True, eq=False)
class Loss:
    """One registered loss: its name, the unchecked function ``fn`` (module docstring's signature), the
    allowed values of its parameters, its source and its detached quantities.

    Calling a ``Loss`` validates the parameters and fills in the defaults (:meth:`check`) on every call:
    the safe entry point for a single evaluation. A loop that calls the loss many times (the toy trainer,
    the fields) checks the parameters once with :meth:`check` and then calls ``fn`` directly.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    params: Mapping[str, ParamRange] = field(default_factory=dict)
    source: str = ""
    detached: tuple[str, ...] = ()
    builtin: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: r.default for k, r in self.params.items()}

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.fn.__doc__)   # help(losses.dpo) shows the loss's docstring

    def check(self, **params: Any) -> dict[str, Any]:
        """``params`` validated (one-line ``ValueError`` naming the loss and the parameter), defaults filled."""
        for key in params:
            if key not in self.params:
                raise ValueError(f"{self.name}: unknown parameter {key!r}; allowed: {', '.join(self.params) or 'none'}")
        return {key: (rng.check(self.name, key, params[key]) if key in params else rng.default)
                for key, rng in self.params.items()}

    def __call__(self, logp_chosen, logp_rejected, ref_chosen, ref_rejected, **params) -> torch.Tensor:
        return self.fn(logp_chosen, logp_rejected, ref_chosen, ref_rejected, **self.check(**params))

    def __repr__(self) -> str:
        return f"Loss({self.name!r}, params={self.defaults})"


def _infer_params(name: str, fn: Callable) -> dict[str, ParamRange]:
    """The parameters of a user's loss function from its signature: every argument after the four
    log-probs needs a default, a bool (a flag) or a real number (a finite float, unbounded)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise ValueError(f"loss: cannot read the signature of {fn!r}; pass params= to register()") from None
    args = list(sig.parameters.values())
    positional = [a for a in args if a.kind in (a.POSITIONAL_ONLY, a.POSITIONAL_OR_KEYWORD)][:4]
    if len(positional) < 4 and not any(a.kind == a.VAR_POSITIONAL for a in args):
        raise ValueError(f"loss {name!r}: expected the signature {SIGNATURE}")
    out = {}
    for a in args:
        if a in positional or a.kind in (a.VAR_POSITIONAL, a.VAR_KEYWORD):
            continue
        d = a.default
        if isinstance(d, bool):
            out[a.name] = ParamRange("bool", d, f"parameter {a.name} of {name}")
        elif isinstance(d, numbers.Real):
            out[a.name] = ParamRange("float", float(d), f"parameter {a.name} of {name}")
        else:
            raise ValueError(f"loss {name!r}: parameter {a.name!r} needs a number or bool default "
                             f"(or pass params= to register())")
    return out


def _as_ranges(name: str, params: Mapping[str, Any]) -> dict[str, ParamRange]:
    out = {}
    for k, v in params.items():
        if isinstance(v, ParamRange):
            out[k] = v
        elif isinstance(v, bool):
            out[k] = ParamRange("bool", v, f"parameter {k} of {name}")
        elif isinstance(v, numbers.Real):
            out[k] = ParamRange("float", float(v), f"parameter {k} of {name}")
        else:
            raise ValueError(f"params: expected a ParamRange or a default number/bool for {k!r} of {name!r}, got {v!r}")
    return out


class _Registry(dict):
    """name -> :class:`Loss`. ``LOSSES["hinge"] = fn`` registers ``fn`` (see :func:`register`)."""

    def __setitem__(self, name: str, fn: Any) -> None:
        register(name, fn, replace=True)

    def _put(self, loss: Loss) -> None:
        dict.__setitem__(self, loss.name, loss)


#: name -> :class:`Loss`: the book's losses (:data:`LOSS_NAMES`) and any registered with :func:`register`.
LOSSES: _Registry = _Registry()


def register(name: str, fn: Callable[..., torch.Tensor], params: Mapping[str, Any] | None = None, *,
             source: str = "", detached: Sequence[str] = (), replace: bool = False) -> Loss:
    """Make ``name`` a loss everywhere (the toy trainer, the fields, the chapters' helpers, the probes).

    ``fn`` has the signature :data:`SIGNATURE` and returns the per-pair loss; ``params`` maps each
    parameter to a :class:`ParamRange` or just its default (a float: any finite number; a bool). Without
    ``params`` they are read from ``fn``'s keyword defaults. The book's losses cannot be replaced;
    re-registering a user's name needs ``replace=True``.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name: expected a Python identifier, got {name!r}")
    if isinstance(fn, Loss):
        fn = fn.fn
    if not callable(fn):
        raise ValueError(f"fn: expected a callable {SIGNATURE}, got {fn!r}")
    old = LOSSES.get(name)
    if old is not None and (old.builtin or not replace):
        raise ValueError(f"loss {name!r} is already registered" + ("" if old.builtin else " (pass replace=True)"))
    ranges = _as_ranges(name, params) if params is not None else _infer_params(name, fn)
    loss = Loss(name, fn, ranges, source, tuple(detached))
    LOSSES._put(loss)
    return loss


def get(loss: Any) -> Loss:
    """The :class:`Loss` for a registered name, a :class:`Loss`, or a plain function with the loss
    signature (its parameters read from its keyword defaults; its name is the function's name)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        try:
            return LOSSES[loss]
        except KeyError:
            pass
    elif callable(loss):
        name = getattr(loss, "__name__", type(loss).__name__)
        return Loss(name, loss, _infer_params(name, loss))
    raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}, or a function {SIGNATURE}")


def names() -> tuple[str, ...]:
    """Every registered loss name: the book's (:data:`LOSS_NAMES`) first, then the user's."""
    return tuple(LOSSES)


for _name, _fn in (("dpo", dpo), ("flex_dpo", flex_dpo), ("sft_dpo", sft_dpo), ("ipo", ipo), ("slic", slic),
                   ("dpop", dpop), ("nbdpo", nbdpo), ("nbdpo_v2", nbdpo_v2), ("bdpo", bdpo)):
    LOSSES._put(Loss(_name, _fn, _PARAMS[_name], _SOURCES[_name], _DETACHED[_name], builtin=True))

#: The book's losses (the zoo of the module docstring), in the book's order. Each has a sympy derivation
#: (:mod:`prefdyn.symbolic`); losses added with :func:`register` are in :data:`LOSSES`, not here.
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)
# The public names are the validated losses (``dpo(..., beta=-1)`` raises; ``dpo.fn`` is unchecked).
globals().update(LOSSES)


class _View(Mapping):
    """A read-only view of one attribute of every registered :class:`Loss` (follows :func:`register`)."""

    def __init__(self, attr: Callable[[Loss], Any]):
        self._attr = attr

    def __getitem__(self, name: str) -> Any:
        return self._attr(LOSSES[name])

    def __iter__(self):
        return iter(LOSSES)

    def __len__(self) -> int:
        return len(LOSSES)

    def __repr__(self) -> str:
        return repr(dict(self))


#: name -> {parameter: :class:`ParamRange`}, name -> defaults, name -> source, name -> detached
#: quantities: views of :data:`LOSSES`.
LOSS_PARAM_RANGES: Mapping[str, Mapping[str, ParamRange]] = _View(lambda l: l.params)
LOSS_DEFAULTS: Mapping[str, dict[str, Any]] = _View(lambda l: l.defaults)
LOSS_SOURCES: Mapping[str, str] = _View(lambda l: l.source)
DETACHED: Mapping[str, tuple[str, ...]] = _View(lambda l: l.detached)


def check_loss_params(name: Any, **params: Any) -> dict[str, Any]:
    """Validate ``params`` for loss ``name`` (a name, :class:`Loss` or loss function) and return them with
    the defaults filled in.

    Raises a one-line ``ValueError`` naming the loss/parameter and what is allowed for an unknown loss, an
    unknown parameter, or a value out of range (e.g. ``beta <= 0``, ``clip < 0``, ``gamma < 0``).
    """
    return get(name).check(**params)


#: Chapter parameters that hold a loss parameter under another name, book-wide: the Balanced-DPO family's
#: beta (004 uses beta = 1 where 000 uses 0.1) is ``beta_balanced`` in every chapter that also has DPO's
#: ``beta``. Every other loss parameter is a chapter parameter of its own name (``delta``, ``lam``, ...).
CHAPTER_NAMES: dict[tuple[str, str], str] = {
    ("nbdpo", "beta"): "beta_balanced", ("nbdpo_v2", "beta"): "beta_balanced", ("bdpo", "beta"): "beta_balanced",
}


def chapter_name(loss: str, param: str) -> str:
    """The chapter parameter that holds ``param`` of ``loss`` (:data:`CHAPTER_NAMES`, else ``param``)."""
    return CHAPTER_NAMES.get((loss, param), param)


def loss_params_from(params: Mapping[str, Any], losses: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per-loss parameters from a chapter's parameters: each loss parameter is read from the chapter
    parameter :func:`chapter_name` gives (missing: the loss's default), validated once."""
    out = {}
    for n in losses:
        loss = get(n)
        out[loss.name] = loss.check(**{k: params[chapter_name(loss.name, k)] for k in loss.params
                                       if chapter_name(loss.name, k) in params})
    return out


def pair_loss(loss: Any, logp_chosen, logp_rejected, ref_chosen, ref_rejected, **params) -> torch.Tensor:
    """The per-pair loss ``loss`` (a name, :class:`Loss` or loss function); parameters validated, defaults
    filled."""
    return get(loss)(logp_chosen, logp_rejected, ref_chosen, ref_rejected, **params)


def logprob_grads(loss: Any, logp_c, logp_r, ref_c, ref_r, **params) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair ``(dl/dlogp_chosen, dl/dlogp_rejected)`` of ``loss``, by autograd, vectorised.

    The four inputs are broadcast to one shape; one backward pass of ``loss.sum()`` gives every pair's own
    derivatives (pairs do not interact). Detached weights (nbDPO lambda, bDPO lambda_w) are constants, as
    in training. Works under ``torch.no_grad()``. The gradient w.r.t. a probability is
    ``dl/dpi = (dl/dlogp) / pi`` (000 Sec. 3.1 works in pi-space).
    """
    L = get(loss)
    p = L.check(**params)
    lp_c, lp_r, ref_c, ref_r = torch.broadcast_tensors(*_tensors(logp_c, logp_r, ref_c, ref_r))
    lp_c = lp_c.detach().clone().requires_grad_(True)
    lp_r = lp_r.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = L.fn(lp_c, lp_r, ref_c.detach(), ref_r.detach(), **p)
        gc, gr = torch.autograd.grad(value.sum(), (lp_c, lp_r))
    return gc, gr


# ----------------------------------------------------------------------------- reward model and SFT
def reward_model_loss(r_chosen, r_rejected) -> torch.Tensor:
    """Bradley-Terry reward-model loss, 000 Sec. 4 / eq. 3: ``-log s(r+ - r-)`` per pair (no reduction).

    (004 eq. 3 prints it without the minus sign.) Its gradients are balanced: ``dl/dr+ = -dl/dr-``.
    """
    r_c, r_r = _tensors(r_chosen, r_rejected)
    return -F.logsigmoid(r_c - r_r)


def sft_loss(logp_chosen) -> torch.Tensor:
    """SFT loss of the chosen response: ``-log pi(a+)`` per example (the gamma-term of 000 eq. 7)."""
    (lp_c,) = _tensors(logp_chosen)
    return -lp_c
