"""004 Sec. 3-5 (Ma et al., gradient imbalance) checked against real updates, in float64.

004 argues from one step of gradient descent on a softmax policy. Its statements are checked here
against autograd, in five groups:

1. **One step, exactly (004 Thm. 1-2).** A *tabular* softmax policy has the logits as its parameters, so
   ``ds_i/dtheta = e_i``: 004's Assumption 1 holds with ``g = 1`` and Assumption 2 (``c_ij = 0``) holds
   exactly. :func:`one_step` takes one SGD step on many random states (:func:`random_states`) and
   compares the actual change of the logits and probabilities with 004 eq. 10, 12 (DPO) and 11, 14 (a
   balanced loss), and with the exact forms derived below.
2. **Assumption 2 broken (004 Sec. 3.2, App. C).** Logits ``s = Phi theta`` with random features
   (:func:`feature_check`): the gradients ``ds_i/dtheta = Phi_i`` are no longer orthogonal;
   :func:`correlated_check` gives them a controlled common correlation (004 eq. 35).
3. **004 Fig. 1 and Thm. 3** (:func:`fig1_curves`, :func:`theorem3`): ``w_i`` and ``w_i pi_i`` for a
   Gaussian policy P and a Gaussian utility Q on ``A = {0, ..., n-1}``.
4. **Lemmas 3-4 and Thms. 4, 5, 7** (:func:`theorem4`, :func:`theorem5`, :func:`theorem7`,
   :func:`lemma_checks`): both sides of each inequality, evaluated.
5. **Training runs** (float32, :mod:`prefdyn.toy`, :mod:`prefdyn.rlhf`): Thm. 6 on the tabular policy and the
   MLP (:func:`tabular_zero_reference`, :func:`unpaired_growth`), Prop. 2 from the records' gradient
   columns (:func:`gradient_trends`), Cor. 3 on the toy RLHF (:func:`ppo_imbalance`), and 004 App. C's
   "E[c_ij] < 0 empirically" on the toy MLP (:func:`logit_gradient_cosines`).

Conventions (the chapter states them too)
-----------------------------------------
- **One step on the summed loss.** A state is one prompt with ``R`` responses, logits ``s`` and a set of
  ``K`` preference pairs; the update is one SGD step of size ``eta`` on the SUM of the per-pair losses,
  ``s' = s - eta d(sum_k l_k)/ds``. 004 speaks of "an epoch" that sums ``Delta^j s_i`` over the samples
  (App. D eq. 37); a sequence of one-pair steps differs at second order in ``eta``
  (:func:`sequential_gap`).
- **kappa.** ``kappa_ij = exp(-l)`` of the pair's own loss (004 Sec. 4.1: "the sigma term"), read from the
  loss zoo's value; ``w_i = sum over the pairs that contain i of tau (1 - kappa)`` (004 Thm. 2), ``tau = +1``
  for the winner, ``-1`` for the loser (:func:`pair_weights`).
- **DPO** is :func:`prefdyn.losses.dpo` with a general ``beta`` (004 sets ``beta = 1``): one pair gives
  ``dl/ds = -beta (1 - kappa)(e_w - e_l)`` (the softmax terms cancel), so 004 eq. 10 becomes
  ``Delta^j s_i = eta g^2 beta tau (1 - kappa)`` and is exact for the tabular policy; eq. 12 for the
  probabilities is its first-order consequence (error ``O(eta^2)``).
- **The balanced loss** (004 Def. 1, eq. 8: ``dl/dpi_w + dl/dpi_l = 0``) is the zoo's reward-model loss
  :func:`prefdyn.losses.reward_model_loss` (000 eq. 3, 004 eq. 3) with the probabilities as rewards,
  ``r = c pi``. For one pair, exactly,
  ``dl/ds_k = -c (1 - kappa) [p_w delta_kw - p_l delta_kl - p_k (p_w - p_l)]``: the winner's component is
  ``-c (1 - kappa) p_w (1 - p_w + p_l)``, so 004 eq. 11 lacks the factor ``pi_theta(y_i|x)`` that 004's own
  proof (App. D, "Delta_b s_i = C pi_i Delta_d s_i") and eq. 14 use (an erratum, derived symbolically in
  :mod:`prefdyn.printed` as ``004-eq11``); and the logits of responses in no pair move too, by
  ``-c eta (1 - kappa) p_k (p_w - p_l)``. Summed over the pairs, exactly,
  ``Delta s = c eta [w p - (sum_k w_k p_k) p]`` (:func:`balanced_logit_update`); eq. 14 keeps the first
  term only (its approximation eq. 13), so its error does not vanish with ``eta``, only with ``max pi``.
- **Fig. 1** (004 Sec. 4.2): ``pi_ref`` uniform, so ``kappa`` of DPO with ``beta = 1`` is
  ``sigma(log p_i - log p_j) = p_i/(p_i + p_j)``; the label of pair (i, j) is ``tau = +1`` with probability
  ``q_ij = u_i/(u_i + u_j)`` (004 eq. 17), so the expected ``tau (1 - kappa)`` is ``q_ij - p_i/(p_i + p_j)``
  and ``w_i = beta_i - alpha_i`` (004 Lemma 2, eq. 18). Uniform sampling weights every pair (i, j != i)
  equally; shiftless sampling weights it by ``p_i p_j`` (004 Sec. 4.2). The balanced curve is ``w_i pi_i``
  with the same ``w`` (004 Fig. 1, eq. 14 with C = 1).
- Expectations over responses (Thms. 4, 5, 7, Lemmas 3-4) are over ``i`` uniform on ``A`` (or ``A_0``);
  variances are population variances (``1/n``).

Everything here is float64 and vectorised over states, pairs, widths and learning rates (loops run over
a handful of settings, over the positions of a *sequence* of one-pair steps, and over the steps of a
descent). Losses come only from :mod:`prefdyn.losses`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .. import losses as L
from ..device import cpu_settings
from ..stats import rank_correlation
from ..validate import check_choice, check_int, check_number, check_positive

__all__ = [
    # 1. one step, exactly
    "PairStates", "random_states", "LOSS_KINDS", "pair_losses", "logit_gradient", "pair_weights",
    "thm1_logit_update", "prob_change", "first_order_prob_update", "eq12_prob_update", "eq11_logit_update",
    "balanced_logit_update", "eq14_prob_update", "balanced_prob_update", "one_step", "OneStep",
    "PREDICTIONS", "error_table", "eq11_erratum", "loglog_slope", "error_by_max_prob", "sequential_gap",
    "share_error_exceeds_change",
    # 2. Assumption 2 broken
    "feature_check", "feature_size_scan", "correlated_check",
    # 3. Fig. 1 and Thm. 3
    "gaussian_probs", "fig1_curves", "local_extrema", "theorem3", "fig1_summary", "SAMPLINGS",
    # 4. Lemmas 3-4, Thms. 4, 5, 7
    "normalised", "theorem4", "theorem5", "theorem7", "lemma_checks", "random_theorem_checks",
    "ood_comparison",
    # 5. training runs
    "tabular_zero_reference", "unpaired_growth", "gradient_trends", "ppo_imbalance", "eq5_ratio",
    "logit_gradient_cosines",
    # helpers
    "below",
]

DT = torch.float64

#: The two losses of the one-step checks: DPO (004 eq. 1) and the balanced reward-model loss on r = c pi.
LOSS_KINDS = ("dpo", "balanced")


def _deterministic():
    """float64 work on one thread (the same reduction order on every run); subnormals kept."""
    return cpu_settings(1, flush_denormal=False)


def below(x: float, bound: float) -> str:
    """``"< bound"`` when ``x`` is float rounding residue below ``bound``, else ``x`` at 4 digits: residue
    differs in its last bits between CPUs, so the printed text must not show its digits."""
    return f"< {bound:g}" if abs(float(x)) < bound else f"{float(x):.4g}"


# ================================================================================================
# 1. One step on a tabular softmax policy (004 Thm. 1-2)
# ================================================================================================

@dataclass(frozen=True)
class PairStates:
    """``S`` independent one-prompt states over ``R`` responses: ``logits [S, R]`` (the policy's),
    ``ref_logits [S, R]`` (pi_ref of DPO) and ``K`` pairs per state, ``chosen``/``rejected`` ``[S, K]``
    (int64; the winner and the loser of each pair, never the same response)."""

    logits: torch.Tensor
    ref_logits: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    @property
    def n_states(self) -> int:
        return self.logits.shape[0]

    @property
    def n_responses(self) -> int:
        return self.logits.shape[-1]

    @property
    def n_pairs(self) -> int:
        return self.chosen.shape[-1]

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, -1)

    def with_logits(self, logits: torch.Tensor) -> "PairStates":
        return PairStates(logits, self.ref_logits, self.chosen, self.rejected)


def random_states(n_states: int, n_responses: int, n_pairs: int, seed: int = 0, *,
                  scale_range: tuple[float, float] = (0.1, 10.0)) -> PairStates:
    """Random states (float64, ``torch.Generator(seed)``): logits ``scale * N(0, 1)`` with one ``scale``
    per state, log-uniform in ``scale_range`` (so ``max pi`` ranges from near ``1/R`` to near 1),
    reference logits ``N(0, 1)`` (so ``kappa`` varies), and ``n_pairs`` pairs per state with winner and
    loser drawn uniformly (different responses; pairs may repeat or share responses)."""
    S = check_int("n_states", n_states, 1)
    R = check_int("n_responses", n_responses, 2)
    K = check_int("n_pairs", n_pairs, 1)
    check_int("seed", seed, 0)
    lo = check_positive("scale_range[0]", scale_range[0])
    hi = check_number("scale_range[1]", scale_range[1], lo)
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(S, 1, generator=g, dtype=DT)
    scale = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    logits = scale * torch.randn(S, R, generator=g, dtype=DT)
    ref = torch.randn(S, R, generator=g, dtype=DT)
    chosen = torch.randint(0, R, (S, K), generator=g)
    rejected = (chosen + torch.randint(1, R, (S, K), generator=g)) % R
    return PairStates(logits, ref, chosen, rejected)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x [..., S, R]`` at ``idx [S, K]`` -> ``[..., S, K]`` (leading dimensions broadcast)."""
    return x.gather(-1, idx.expand(*x.shape[:-1], idx.shape[-1]))


def _check_kind(kind: str, beta: float, c: float) -> None:
    check_choice("kind", kind, LOSS_KINDS)
    L.check_loss_params("dpo", beta=beta)
    check_positive("c", c)


def pair_losses(kind: str, logits: torch.Tensor, states: PairStates, *, beta: float = 1.0,
                c: float = 1.0) -> torch.Tensor:
    """Per-pair losses ``[..., S, K]`` at ``logits [..., S, R]`` for the pairs of ``states``, from the zoo:
    ``kind="dpo"``: :func:`prefdyn.losses.dpo` (``pi_ref`` = softmax of ``states.ref_logits``);
    ``"balanced"``: :func:`prefdyn.losses.reward_model_loss` of the rewards ``c pi_w``, ``c pi_l``."""
    logp = torch.log_softmax(logits, -1)
    lp_w, lp_l = _gather(logp, states.chosen), _gather(logp, states.rejected)
    if kind == "dpo":
        ref = torch.log_softmax(states.ref_logits, -1)
        return L.get("dpo").fn(lp_w, lp_l, _gather(ref, states.chosen), _gather(ref, states.rejected), beta=beta)
    return L.reward_model_loss(c * lp_w.exp(), c * lp_l.exp())


def logit_gradient(kind: str, states: PairStates, *, beta: float = 1.0, c: float = 1.0,
                   logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d sum_k l_k / ds [..., S, R], per-pair loss [..., S, K])`` by autograd, at ``logits`` (default:
    the states')."""
    _check_kind(kind, beta, c)
    s = (states.logits if logits is None else logits).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = pair_losses(kind, s, states, beta=beta, c=c)
        g, = torch.autograd.grad(loss.sum(), s)
    return g, loss.detach()


def pair_weights(kappa: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, n_responses: int) -> torch.Tensor:
    """004 Thm. 2's ``w_i = sum over the pairs (i, j, tau) of tau (1 - kappa_ij)``: ``+(1 - kappa)`` to each
    pair's winner, ``-(1 - kappa)`` to its loser. ``kappa [..., S, K]`` -> ``w [..., S, R]``."""
    one = 1.0 - kappa
    w = torch.zeros(*kappa.shape[:-1], n_responses, dtype=kappa.dtype)
    w.scatter_add_(-1, chosen.expand_as(one), one)
    w.scatter_add_(-1, rejected.expand_as(one), -one)
    return w


def thm1_logit_update(w: torch.Tensor, eta, *, beta: float = 1.0, g2=1.0) -> torch.Tensor:
    """004 Thm. 1 (eq. 10) summed over the pairs (App. D eq. 37-38), with DPO's ``beta``:
    ``Delta s = eta g^2 beta w``."""
    return eta * g2 * beta * w


def prob_change(logits: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """The exact change of the softmax probabilities when the logits move by ``ds``:
    ``p_i' - p_i = p_i expm1(ds_i - log1p(sum_j p_j expm1(ds_j)))``, the same as
    ``softmax(logits + ds) - softmax(logits)`` but without its cancellation (a change of 1e-12 in a
    probability near 1 keeps its digits)."""
    p = torch.softmax(logits, -1)
    dlogz = torch.log1p((p * torch.expm1(ds)).sum(-1, keepdim=True))
    return p * torch.expm1(ds - dlogz)


def first_order_prob_update(p: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """004 eq. 39 (Lemma 1's softmax Jacobian): ``Delta p_i = p_i (Delta s_i - sum_j p_j Delta s_j)``."""
    return p * (ds - (p * ds).sum(-1, keepdim=True))


def eq12_prob_update(p: torch.Tensor, w: torch.Tensor, gamma) -> torch.Tensor:
    """004 eq. 12 (DPO): ``Delta pi_i = gamma pi_i (w_i - sum_j w_j pi_j)``, ``gamma = eta g^2`` (times
    ``beta`` for a general beta)."""
    return gamma * p * (w - (w * p).sum(-1, keepdim=True))


def eq11_logit_update(p: torch.Tensor, kappa: torch.Tensor, states: PairStates, eta, *, c: float = 1.0,
                      printed: bool = True) -> torch.Tensor:
    """004 eq. 11 for the balanced loss, summed over the pairs: each pair moves its winner by
    ``C eta tau (1 - kappa)(1 - pi_i + pi_j)`` and its loser likewise (``tau = -1``), as printed
    (``printed=True``), or with the missing factor ``pi_i`` (corrected); no other logit moves. ``C = c``,
    ``g = 1``."""
    pw, pl = _gather(p, states.chosen), _gather(p, states.rejected)
    fw, fl = 1.0 - pw + pl, 1.0 - pl + pw
    if not printed:
        fw, fl = fw * pw, fl * pl
    one = 1.0 - kappa
    out = torch.zeros_like(p)
    out.scatter_add_(-1, states.chosen.expand_as(one), one * fw)
    out.scatter_add_(-1, states.rejected.expand_as(one), -one * fl)
    return c * eta * out


def balanced_logit_update(p: torch.Tensor, w: torch.Tensor, eta, *, c: float = 1.0) -> torch.Tensor:
    """The exact logit update of the balanced loss (module docstring): ``c eta [w p - (sum_k w_k p_k) p]``
    (``w`` from the balanced loss's own ``kappa``). Its first term is corrected eq. 11 without the pair's
    ``(p_w - p_l)`` terms; the second moves every logit, paired or not."""
    return c * eta * (w * p - (w * p).sum(-1, keepdim=True) * p)


def eq14_prob_update(p: torch.Tensor, w: torch.Tensor, gamma) -> torch.Tensor:
    """004 eq. 14 (balanced loss, ``C`` folded into ``gamma``):
    ``Delta pi_i = gamma pi_i (w_i pi_i - sum_j w_j pi_j^2)``."""
    return gamma * p * (w * p - (w * p * p).sum(-1, keepdim=True))


def balanced_prob_update(p: torch.Tensor, w: torch.Tensor, gamma) -> torch.Tensor:
    """First-order probability update of the balanced loss from its exact logit update (eq. 39 applied
    to :func:`balanced_logit_update`):
    ``gamma p_i [w_i p_i - sum_j w_j p_j^2 - (sum_k w_k p_k)(p_i - sum_j p_j^2)]``; eq. 14 drops the last
    term."""
    return first_order_prob_update(p, balanced_logit_update(p, w, gamma))


@dataclass
class OneStep:
    """:func:`one_step`'s result: ``lrs`` ``[E]``, and per loss kind the actual ``ds``/``dp`` ``[E, S, R]``,
    the pair weights ``w`` ``[S, R]`` and ``kappa`` ``[S, K]``; ``predicted[name]`` ``[E, S, R]`` for every
    entry of :data:`PREDICTIONS`; ``p`` ``[S, R]``."""

    lrs: np.ndarray
    p: torch.Tensor
    actual: dict[str, torch.Tensor]
    predicted: dict[str, torch.Tensor]
    w: dict[str, torch.Tensor]
    kappa: dict[str, torch.Tensor]

    def rel_err(self, name: str) -> torch.Tensor:
        """``|pred - actual|_2 / |actual|_2`` per lr and state, ``[E, S]``."""
        a = self.actual[PREDICTIONS[name][1]]
        return (self.predicted[name] - a).norm(dim=-1) / a.norm(dim=-1)

    def abs_err(self, name: str) -> torch.Tensor:
        """``max_i |pred_i - actual_i|`` per lr and state, ``[E, S]``."""
        a = self.actual[PREDICTIONS[name][1]]
        return (self.predicted[name] - a).abs().amax(-1)


#: The predictions :func:`one_step` compares with the actual step: name -> (label, actual quantity).
PREDICTIONS = {
    "thm1": ("DPO logits, 004 eq. 10 (Thm. 1)", "dpo_ds"),
    "eq12": ("DPO probabilities, 004 eq. 12 (Thm. 2)", "dpo_dp"),
    "eq11_printed": ("balanced logits, 004 eq. 11 as printed", "bal_ds"),
    "eq11_corrected": ("balanced logits, eq. 11 with the factor π_i", "bal_ds"),
    "balanced_exact": ("balanced logits, exact form (every logit)", "bal_ds"),
    "eq14": ("balanced probabilities, 004 eq. 14", "bal_dp"),
    "balanced_first_order": ("balanced probabilities, first order of the exact form", "bal_dp"),
}


def _lrs(lrs) -> torch.Tensor:
    vals = [check_positive("lrs", x) for x in (lrs if isinstance(lrs, (list, tuple, np.ndarray)) else [lrs])]
    if not vals:
        raise ValueError("lrs: expected at least one learning rate > 0, got []")
    return torch.tensor(vals, dtype=DT)


def one_step(states: PairStates, lrs, *, beta: float = 1.0, c: float = 1.0) -> OneStep:
    """One SGD step of each size in ``lrs`` on the summed DPO loss and on the summed balanced loss, for
    every state, and the predictions of :data:`PREDICTIONS` (module docstring: the conventions)."""
    _check_kind("dpo", beta, c)
    eta = _lrs(lrs)
    E = eta.view(-1, 1, 1)
    with _deterministic():
        s = states.logits.to(DT)
        p = torch.softmax(s, -1)
        actual, predicted, ws, kappas = {}, {}, {}, {}
        for kind, tag in (("dpo", "dpo"), ("balanced", "bal")):
            g, loss = logit_gradient(kind, states, beta=beta, c=c)
            ds = -E * g                                       # the autograd step s' = s - eta g, [E, S, R]
            actual[f"{tag}_ds"] = ds
            actual[f"{tag}_dp"] = prob_change(s, ds)
            kappas[kind] = torch.exp(-loss)                   # 004: kappa = e^{-L}
            ws[kind] = pair_weights(kappas[kind], states.chosen, states.rejected, states.n_responses)
        wd, wb, kb = ws["dpo"], ws["balanced"], kappas["balanced"]
        predicted["thm1"] = thm1_logit_update(wd, E, beta=beta)
        predicted["eq12"] = eq12_prob_update(p, wd, E * beta)
        predicted["eq11_printed"] = eq11_logit_update(p, kb, states, E, c=c, printed=True)
        predicted["eq11_corrected"] = eq11_logit_update(p, kb, states, E, c=c, printed=False)
        predicted["balanced_exact"] = balanced_logit_update(p, wb, E, c=c)
        predicted["eq14"] = eq14_prob_update(p, wb, E * c)
        predicted["balanced_first_order"] = balanced_prob_update(p, wb, E * c)
    return OneStep(eta.numpy(), p, actual, predicted, ws, kappas)


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log10 y`` on ``log10 x`` (points with ``y > 0`` only; NaN if fewer than 2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = (x > 0) & (y > 0) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log10(x[ok]), np.log10(y[ok]), 1)[0])


def error_table(res: OneStep, names: Sequence[str] = tuple(PREDICTIONS)) -> dict[str, dict[str, list[float]]]:
    """Per prediction: ``max_rel`` (largest relative error over the states), ``median_rel`` and
    ``max_abs_over_eta2`` (largest absolute error divided by ``eta^2``), one value per learning rate."""
    eta2 = res.lrs ** 2
    out = {}
    for n in names:
        rel, ab = res.rel_err(n), res.abs_err(n)
        out[n] = {"max_rel": rel.amax(-1).tolist(), "median_rel": rel.median(-1).values.tolist(),
                  "max_abs_over_eta2": (ab.amax(-1).numpy() / eta2).tolist()}
    return out


def error_by_max_prob(res: OneStep, names: Sequence[str] = ("eq14", "balanced_first_order"),
                      edges: Sequence[float] = (0.0, 0.1, 0.3, 0.6, 1.0), lr_index: int = -1) -> dict[str, Any]:
    """How the relative error of the balanced predictions depends on ``max_i pi_i`` of the state, at the
    learning rate ``res.lrs[lr_index]``: per bin of ``max pi`` (``edges``) the number of states and each
    prediction's median relative error, and the rank correlation of the error with ``max pi`` over all
    states."""
    pmax = res.p.amax(-1).numpy()
    out: dict[str, Any] = {"edges": list(edges), "n_states": [], "lr": float(res.lrs[lr_index])}
    errs = {n: res.rel_err(n)[lr_index].numpy() for n in names}
    bins = [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
    for lo, hi in bins:
        out["n_states"].append(int(((pmax > lo) & (pmax <= hi)).sum()))
    for n in names:
        med = []
        for lo, hi in bins:
            m = (pmax > lo) & (pmax <= hi)
            med.append(float(np.median(errs[n][m])) if m.any() else float("nan"))
        out[n] = {"median_rel": med, **rank_correlation(pmax, errs[n])}
    return out


def eq11_erratum(res: OneStep, lr_index: int = -1) -> dict[str, float]:
    """004 eq. 11 as printed against eq. 11 with the factor ``pi_theta(y_i|x)`` (and against the exact form),
    on the balanced loss's actual logit step at ``res.lrs[lr_index]``: the median and largest relative
    error of each over the states, and the share of states in which the corrected form is closer to the
    autograd step than the printed one."""
    pr, co, ex = (res.rel_err(n)[lr_index] for n in ("eq11_printed", "eq11_corrected", "balanced_exact"))
    return {"lr": float(res.lrs[lr_index]), "printed_median": float(pr.median()), "printed_max": float(pr.max()),
            "corrected_median": float(co.median()), "corrected_max": float(co.max()),
            "exact_max": float(ex.max()), "share_corrected_closer": float((co < pr).double().mean())}


def share_error_exceeds_change(res: OneStep, names: Sequence[str], lr_index: int = 0) -> dict[str, float]:
    """Per prediction in ``names``: the share of the (state, response) entries at ``res.lrs[lr_index]`` whose
    error ``|pred - actual|`` is larger than the actual change ``|actual|`` itself (entries where the
    prediction is off by more than 100%, e.g. a first-order term that the second order outweighs)."""
    out = {}
    for n in names:
        a = res.actual[PREDICTIONS[n][1]][lr_index]
        e = (res.predicted[n][lr_index] - a).abs()
        out[n] = float((e > a.abs()).double().mean())
    return out


def sequential_gap(states: PairStates, lrs, *, beta: float = 1.0) -> dict[str, list[float]]:
    """One step on the summed DPO loss against ``K`` one-pair steps in sequence (pair 1 first), per
    learning rate: the largest ``|s_sum - s_seq|`` over states and responses, and that divided by
    ``eta^2``. The loop runs over the positions of the sequence (each step needs the previous one),
    vectorised over states and learning rates."""
    _check_kind("dpo", beta, 1.0)
    eta = _lrs(lrs)
    E = eta.view(-1, 1, 1)
    with _deterministic():
        s = states.logits.to(DT)
        g, _ = logit_gradient("dpo", states, beta=beta)
        s_sum = s - E * g
        s_seq = s.expand(len(eta), *s.shape).clone()
        for k in range(states.n_pairs):
            one = PairStates(states.logits, states.ref_logits, states.chosen[:, k:k + 1], states.rejected[:, k:k + 1])
            gk, _ = logit_gradient("dpo", one, beta=beta, logits=s_seq)
            s_seq = s_seq - E * gk
        gap = (s_sum - s_seq).abs().amax(dim=(-1, -2))
    return {"max_abs": gap.tolist(), "max_abs_over_eta2": (gap / eta ** 2).tolist()}


# ================================================================================================
# 2. Assumption 2 broken: logits s = Phi theta (004 Sec. 3.2, App. C)
# ================================================================================================

def _feature_step(states: PairStates, phi: torch.Tensor, theta: torch.Tensor, eta: float, beta: float) -> dict[str, torch.Tensor]:
    """One SGD step on theta for logits ``s = Phi theta`` (``phi [S, R, N]``, ``theta [S, N]``): actual
    ``ds``, ``dp`` and the predictions with ``g^2 = mean_i |Phi_i|^2`` and ``c_ij = 0`` (004 eq. 10, 12)."""
    th = theta.clone().requires_grad_(True)
    with torch.enable_grad():
        s = torch.einsum("srn,sn->sr", phi, th)
        loss = pair_losses("dpo", s, states, beta=beta)
        gth, = torch.autograd.grad(loss.sum(), th)
    s0 = s.detach()
    ds = torch.einsum("srn,sn->sr", phi, -eta * gth)                   # Phi (theta' - theta)
    p = torch.softmax(s0, -1)
    w = pair_weights(torch.exp(-loss.detach()), states.chosen, states.rejected, states.n_responses)
    g2 = (phi * phi).sum(-1).mean(-1, keepdim=True)                     # [S, 1]
    return {"ds": ds, "dp": prob_change(s0, ds),
            "ds_pred": thm1_logit_update(w, eta, beta=beta, g2=g2),
            "dp_pred": eq12_prob_update(p, w, eta * beta * g2)}


def _cosines(phi: torch.Tensor) -> torch.Tensor:
    """c_ij of 004 eq. 7 for the rows of ``phi [S, R, N]``, off-diagonal entries only, ``[S, R(R-1)]``."""
    u = torch.nn.functional.normalize(phi, dim=-1)
    c = u @ u.transpose(-1, -2)
    R = phi.shape[-2]
    off = ~torch.eye(R, dtype=torch.bool)
    return c[:, off]


def feature_check(states: PairStates, widths: Sequence[int], eta: float, *, beta: float = 1.0,
                  seed: int = 0) -> dict[str, Any]:
    """004 Assumptions 1-2 broken on purpose: for each width ``N`` in ``widths``, features
    ``Phi [S, R, N]`` with i.i.d. ``N(0, 1/N)`` entries and parameters ``theta ~ N(0, 1)`` (so ``s = Phi theta``
    has unit-scale logits), one SGD step of size ``eta`` on ``theta`` for the states' pairs. Per width:
    ``mean_abs_c`` and ``mean_c`` (004 eq. 7, over the states and i != j), ``n_mean_c2`` = ``N E[c_ij^2]``
    (004 Sec. 3.2: ``E[c^2] = O(1/N)``), ``cv_norm2`` (the spread of ``|Phi_i|^2`` around ``g^2``,
    Assumption 1) and the median and largest relative errors of 004 eq. 10 (``ds``) and eq. 12 (``dp``).
    The tabular policy (``Phi = I``) is the reference row ``"tabular"``. Also the log-log slopes of
    ``E[c^2]`` and of the median errors against ``N``."""
    widths = [check_int("widths", n, 1) for n in widths]
    if not widths:
        raise ValueError("widths: expected at least one width, got []")
    eta = check_positive("eta", eta)
    L.check_loss_params("dpo", beta=beta)
    check_int("seed", seed, 0)
    S, R = states.n_states, states.n_responses
    rows: dict[str, dict[str, float]] = {}
    with _deterministic():
        eye = torch.eye(R, dtype=DT).expand(S, R, R)
        cases = [("tabular", eye, states.logits.to(DT))]
        for n in widths:
            g = torch.Generator().manual_seed(int(seed) * 7919 + n)
            phi = torch.randn(S, R, n, generator=g, dtype=DT) / math.sqrt(n)
            theta = torch.randn(S, n, generator=g, dtype=DT)
            cases.append((str(n), phi, theta))
        for name, phi, theta in cases:
            st = _feature_step(states, phi, theta, eta, beta)
            rel_s = (st["ds_pred"] - st["ds"]).norm(dim=-1) / st["ds"].norm(dim=-1)
            rel_p = (st["dp_pred"] - st["dp"]).norm(dim=-1) / st["dp"].norm(dim=-1)
            c = _cosines(phi)
            n2 = (phi * phi).sum(-1)
            rows[name] = {
                "width": float(phi.shape[-1]) if name != "tabular" else float("nan"),
                "mean_abs_c": float(c.abs().mean()), "mean_c": float(c.mean()),
                "n_mean_c2": float((c * c).mean() * phi.shape[-1]) if name != "tabular" else 0.0,
                "cv_norm2": float((n2.std(-1, unbiased=False) / n2.mean(-1)).mean()),
                "median_rel_err_ds": float(rel_s.median()), "max_rel_err_ds": float(rel_s.max()),
                "median_rel_err_dp": float(rel_p.median()), "max_rel_err_dp": float(rel_p.max()),
            }
    ns = [float(n) for n in widths]
    slopes = {
        "mean_c2": loglog_slope(ns, [rows[str(n)]["n_mean_c2"] / n for n in widths]),
        "median_rel_err_ds": loglog_slope(ns, [rows[str(n)]["median_rel_err_ds"] for n in widths]),
        "median_rel_err_dp": loglog_slope(ns, [rows[str(n)]["median_rel_err_dp"] for n in widths]),
        "median_rel_err_dp_last_two": (loglog_slope(ns[-2:], [rows[str(n)]["median_rel_err_dp"] for n in widths[-2:]])
                                       if len(widths) > 1 else float("nan")),
    }
    return {"eta": eta, "rows": rows, "slopes": slopes}


def feature_size_scan(n_responses: Sequence[int], widths: Sequence[int], eta: float, *, n_states: int = 64,
                      n_pairs: int = 8, beta: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """How the error of 004 eq. 10/12 under random features (:func:`feature_check`) depends on the number
    ``R`` of responses as well as the width ``N``. With ``E[c_ij^2] = 1/N`` the neglected term of a logit's
    step, ``sum_{j != i} c_ij |Phi_i||Phi_j| dl/ds_j``, has size ``~ N^(-1/2) |dl/ds|``, for each of the ``R``
    logits, so the relative error of ``Delta s`` over all ``R`` logits should be about ``sqrt(R/N)``.
    Per ``R`` (fresh :func:`random_states` with ``n_states`` states and ``n_pairs`` pairs) and ``N``: the
    median relative errors of ``Delta s`` and ``Delta pi`` and each divided by ``sqrt(R/N)``."""
    Rs = [check_int("n_responses", r, 2) for r in n_responses]
    if not Rs:
        raise ValueError("n_responses: expected at least one number of responses, got []")
    out: dict[str, Any] = {"eta": float(eta), "widths": [int(n) for n in widths], "rows": {}}
    for R in Rs:
        st = random_states(n_states, R, n_pairs, seed)
        rows = feature_check(st, widths, eta, beta=beta, seed=seed)["rows"]
        out["rows"][str(R)] = {str(n): {
            "sqrt_r_over_n": math.sqrt(R / n),
            "median_rel_err_ds": rows[str(n)]["median_rel_err_ds"],
            "median_rel_err_dp": rows[str(n)]["median_rel_err_dp"],
            "ds_over_sqrt_r_over_n": rows[str(n)]["median_rel_err_ds"] / math.sqrt(R / n),
            "dp_over_sqrt_r_over_n": rows[str(n)]["median_rel_err_dp"] / math.sqrt(R / n)} for n in widths}
    return out


def correlated_check(states: PairStates, rhos: Sequence[float], eta: float, *, beta: float = 1.0) -> dict[str, Any]:
    """004 App. C, eq. 35, with features of a controlled common correlation: ``Phi`` with Gram matrix
    ``(1 - rho) I + rho 1 1^T`` (unit norms, every ``c_ij = rho``; Cholesky factor, ``N = R``;
    ``rho > -1/(R-1)``), ``theta`` solving ``Phi theta = s`` for the states' logits. Per ``rho``: the actual
    DPO logit step of the pairs' winners divided by Thm. 1's ``eta beta tau (1-kappa)`` summed (ratio
    ``measured``, mean and spread over the states' winners), 004 eq. 35's factor ``1 - lambda`` with
    ``lambda = -E[c_ij] = -rho`` (printed), and ``1 + lambda`` (the corrected sign)."""
    eta = check_positive("eta", eta)
    L.check_loss_params("dpo", beta=beta)
    R = states.n_responses
    out = {}
    with _deterministic():
        for rho in rhos:
            rho = check_number("rhos", rho, -1.0 / (R - 1), 1.0, low_open=True, high_open=True)
            gram = (1.0 - rho) * torch.eye(R, dtype=DT) + rho * torch.ones(R, R, dtype=DT)
            phi = torch.linalg.cholesky(gram).expand(states.n_states, R, R)
            theta = torch.linalg.solve_triangular(phi, states.logits.to(DT).unsqueeze(-1), upper=False).squeeze(-1)
            st = _feature_step(states, phi, theta, eta, beta)
            pred = st["ds_pred"]                                          # eta beta w (g^2 = 1)
            m = pred.abs() > 1e-3 * pred.abs().amax(-1, keepdim=True)     # responses in some pair
            ratio = (st["ds"][m] / pred[m])
            lam = -rho
            out[f"{rho:g}"] = {"rho": rho, "lambda": lam, "measured_mean": float(ratio.mean()),
                               "measured_spread": float(ratio.max() - ratio.min()),
                               "eq35_printed": 1.0 - lam, "corrected": 1.0 + lam}
    return out


# ================================================================================================
# 3. 004 Fig. 1 and Theorem 3
# ================================================================================================

#: The pair sampling of 004 Sec. 4.2: uniform over pairs, or shiftless (pair (i, j) with weight p_i p_j).
SAMPLINGS = ("uniform", "shiftless")


def gaussian_probs(n: int, mu, sigma2: float) -> torch.Tensor:
    """004 eq. 15-16 on ``A = {0, ..., n-1}``: ``exp(-(y - mu)^2 / (2 sigma^2))`` normalised over A, float64,
    ``[rows, n]`` for ``mu`` a number or a sequence of ``rows`` means."""
    y = torch.arange(int(n), dtype=DT)
    mu = torch.as_tensor(mu, dtype=DT).reshape(-1, 1)
    return torch.softmax(-(y - mu) ** 2 / (2.0 * sigma2), -1)


def fig1_curves(mu_p, mu_q, sigma2: float = 100.0, n: int = 100, sampling: str = "uniform") -> dict[str, torch.Tensor]:
    """The curves of 004 Fig. 1 for rows ``(mu_p, mu_q)`` (each ``[rows]``): ``p`` (P, the policy),
    ``u`` (Q, the utility), ``alpha``, ``beta`` (004 Sec. 4.3.2, weighted by the sampling), ``w`` (DPO)
    and ``wpi = w p`` (the balanced loss), all ``[rows, n]``. ``w`` is the expected
    ``sum_j weight_ij tau (1 - kappa_ij)`` over the labels: ``kappa`` from the zoo's DPO loss with ``beta = 1``
    and ``pi_ref`` uniform, the label drawn with 004 eq. 17; ``w_lemma2 = beta - alpha`` (004 eq. 18)."""
    check_choice("sampling", sampling, SAMPLINGS)
    n = check_int("n", n, 2)
    sigma2 = check_positive("sigma2", sigma2)
    mu_p, mu_q = torch.as_tensor(mu_p, dtype=DT).reshape(-1), torch.as_tensor(mu_q, dtype=DT).reshape(-1)
    if mu_p.shape != mu_q.shape:
        raise ValueError(f"mu_p, mu_q: expected the same number of rows, got {mu_p.numel()} and {mu_q.numel()}")
    with _deterministic():
        p, u = gaussian_probs(n, mu_p, sigma2), gaussian_probs(n, mu_q, sigma2)
        pi, pj = p[:, :, None], p[:, None, :]
        ui, uj = u[:, :, None], u[:, None, :]
        off = ~torch.eye(n, dtype=torch.bool)
        weight = (pi * pj if sampling == "shiftless" else torch.ones_like(pi * pj)) * off
        lp, zero = p.log(), torch.zeros((), dtype=DT)
        dpo = L.get("dpo").fn
        # kappa of the pair with i the winner (tau = +1) and with j the winner (tau = -1); pi_ref uniform
        k_win = torch.exp(-dpo(lp[:, :, None], lp[:, None, :], zero, zero, beta=1.0))
        k_lose = torch.exp(-dpo(lp[:, None, :], lp[:, :, None], zero, zero, beta=1.0))
        q = ui / (ui + uj)                                                    # 004 eq. 17
        per_pair = q * (1.0 - k_win) - (1.0 - q) * (1.0 - k_lose)
        w = (weight * per_pair).sum(-1)
        alpha = (weight * pi / (pi + pj)).sum(-1)
        beta_ = (weight * q).sum(-1)
    return {"p": p, "u": u, "w": w, "wpi": w * p, "alpha": alpha, "beta": beta_, "w_lemma2": beta_ - alpha}


def local_extrema(y: torch.Tensor | np.ndarray) -> list[int]:
    """Indices ``k`` (interior points) where the discrete differences change sign strictly:
    ``(y[k] - y[k-1]) (y[k+1] - y[k]) < 0`` (local maxima and minima)."""
    d = np.diff(np.asarray(y, dtype=np.float64))
    return [int(k) + 1 for k in np.flatnonzero(d[:-1] * d[1:] < 0)]


def theorem3(w, wpi, mu_p: float, mu_q: float) -> dict[str, Any]:
    """004 Thm. 3's statements for one curve ``w`` (and ``wpi = w pi``), ``mu_p <= mu_q``:

    1. every local extremum ``y*`` of ``w`` has ``y* > mu_q`` or ``y* < mu_p``;
    2. for every extremum ``y* > mu_q`` of ``w`` some extremum of ``w pi`` lies in ``(mu_p, y*)``;
    3. as printed: for every extremum ``y* > mu_q`` of ``w`` some extremum of ``w pi`` lies in
       ``(y*, mu_p)`` (an empty interval: it holds only if ``w`` has no extremum above ``mu_q``);
       corrected (the proof's reading, the extremum nearest ``mu_p``): for every extremum ``y* < mu_p`` of
       ``w`` some extremum of ``w pi`` lies in ``(y*, mu_p)``.

    Returns the extrema and, per statement, whether it holds and how many extrema it was tested on
    (a statement about no extremum holds vacuously)."""
    if not mu_p <= mu_q:
        raise ValueError(f"mu_p: 004 Thm. 3 takes mu_p <= mu_q (w.l.o.g.), got mu_p={mu_p!r} > mu_q={mu_q!r}")
    ew, ewp = local_extrema(w), local_extrema(wpi)
    above = [y for y in ew if y > mu_q]
    below_ = [y for y in ew if y < mu_p]
    return {
        "extrema_w": ew, "extrema_wpi": ewp,
        "s1_holds": all(y > mu_q or y < mu_p for y in ew), "s1_tested": len(ew),
        "s2_holds": all(any(mu_p < z < y for z in ewp) for y in above), "s2_tested": len(above),
        "s3_printed_holds": all(any(y < z < mu_p for z in ewp) for y in above), "s3_printed_tested": len(above),
        "s3_corrected_holds": all(any(y < z < mu_p for z in ewp) for y in below_), "s3_corrected_tested": len(below_),
    }


def fig1_summary(mu_p: Sequence[float], mu_q: Sequence[float], sigma2: float = 100.0, n: int = 100) -> dict[str, Any]:
    """Everything the chapter reports on 004 Fig. 1, per row ``"mu_p-mu_q"`` and sampling: argmax/argmin of
    ``w`` and ``w pi``, Thm. 3's statements (:func:`theorem3`), the share of ``sum |curve|`` on responses
    outside ``[min(mu) - 2 sigma, max(mu) + 2 sigma]`` (``ood_share_w``, ``ood_share_wpi``), and the
    correlation of the two normalised curves. Also Lemma 2's largest ``|w - (beta - alpha)|`` (uniform)."""
    out: dict[str, Any] = {}
    sd = math.sqrt(sigma2)
    y = np.arange(n)
    curves = {s: fig1_curves(mu_p, mu_q, sigma2, n, s) for s in SAMPLINGS}
    lemma2 = float((curves["uniform"]["w"] - curves["uniform"]["w_lemma2"]).abs().max())
    for r, (a, b) in enumerate(zip(mu_p, mu_q)):
        key = f"{a:g}-{b:g}"
        out[key] = {}
        ood = (y < min(a, b) - 2 * sd) | (y > max(a, b) + 2 * sd)
        for s in SAMPLINGS:
            w, wpi = curves[s]["w"][r].numpy(), curves[s]["wpi"][r].numpy()
            t3 = theorem3(w, wpi, float(a), float(b))
            out[key][s] = {
                "w_argmax": int(np.argmax(w)), "w_argmin": int(np.argmin(w)),
                "wpi_argmax": int(np.argmax(wpi)), "wpi_argmin": int(np.argmin(wpi)),
                "ood_share_w": float(np.abs(w)[ood].sum() / np.abs(w).sum()),
                "ood_share_wpi": float(np.abs(wpi)[ood].sum() / np.abs(wpi).sum()),
                "corr_w_wpi": float(np.corrcoef(w, wpi)[0, 1]),
                **{k: v for k, v in t3.items() if not k.startswith("extrema")},
                "extrema_w": t3["extrema_w"], "extrema_wpi": t3["extrema_wpi"],
            }
    return {"rows": out, "lemma2_max_abs_err": lemma2}


# ================================================================================================
# 4. Lemmas 3-4 and Theorems 4, 5, 7
# ================================================================================================

def _var(x: torch.Tensor) -> torch.Tensor:
    return x.var(-1, unbiased=False)


def _cov(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - a.mean(-1, keepdim=True)) * (b - b.mean(-1, keepdim=True))).mean(-1)


def normalised(p: torch.Tensor) -> torch.Tensor:
    """``p`` scaled so that ``E_i[p_i^2] = 1`` (004 Sec. 4.3.2: "normalize p_i by enforcing E[p_i^2] = 1")."""
    return p / (p * p).mean(-1, keepdim=True).sqrt()


def theorem4(p: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> dict[str, Any]:
    """004 Thm. 4 (eq. 20) over ``i`` uniform on the responses, ``p`` normalised (:func:`normalised`),
    ``w = beta - alpha``: ``lhs = Var[w p] - Var[w] E[p^2]``, ``rhs = 2 (Cov[alpha, beta] E[p^2] -
    Cov[alpha p, beta p])``, whether ``lhs >= rhs``, and its condition (``beta_i`` increases with ``p_i``:
    checked as ``beta`` nondecreasing along increasing ``p``, and as Spearman's rho of the two). Tensors
    ``[..., n]``; results are lists over the leading dimension."""
    pn = normalised(p)
    w = beta - alpha
    e2 = (pn * pn).mean(-1)
    lhs = _var(w * pn) - _var(w) * e2
    rhs = 2.0 * (_cov(alpha, beta) * e2 - _cov(alpha * pn, beta * pn))
    order = torch.argsort(p, -1)
    b_sorted = beta.gather(-1, order)
    mono = (b_sorted.diff(dim=-1) >= -1e-12 * b_sorted.abs().amax(-1, keepdim=True)).all(-1)
    rho = [rank_correlation(pp, bb)["spearman_rho"] for pp, bb in zip(p.reshape(-1, p.shape[-1]).numpy(),
                                                                      beta.reshape(-1, p.shape[-1]).numpy())]
    return {"lhs": lhs.reshape(-1).tolist(), "rhs": rhs.reshape(-1).tolist(),
            "holds": (lhs >= rhs).reshape(-1).tolist(), "condition": mono.reshape(-1).tolist(),
            "spearman_p_beta": rho, "var_w_pi_minus_var_w": lhs.reshape(-1).tolist()}


def theorem5(p: torch.Tensor, w_star: torch.Tensor, noise: float, draws: int, seed: int = 0,
             subset: torch.Tensor | None = None) -> dict[str, float]:
    """004 Thm. 5 (eq. 22) for one policy ``p [n]`` and unperturbed ``w* [n]``: ``draws`` perturbations
    ``w = w* + eps`` with ``eps_i`` i.i.d. ``N(0, (noise sd(w*))^2)`` (004 eq. 67's form), variances over
    ``A_0`` (``subset``, a boolean mask; default all of A), ``E_A[p^2]`` over A, ``p`` normalised over A.
    Returns the share of draws with ``lhs <= rhs``, the means of both sides, the mean of ``lhs - rhs`` with
    its Monte Carlo standard error over the draws (``diff_se``, ``sd / sqrt(draws)``) and ``z = mean / se``
    (paired over the draws), and whether the condition ``E_{A_0}[p^2] >= E_A[p^2]`` (eq. 21) holds."""
    draws = check_int("draws", draws, 1)
    check_number("noise", noise, 0.0, low_open=True)
    pn = normalised(p)
    m = torch.ones_like(pn, dtype=torch.bool) if subset is None else subset
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(draws, pn.numel(), generator=g, dtype=DT) * noise * w_star.std(unbiased=False)
    w = w_star + eps
    e2_a = (pn * pn).mean()
    p0, w0, ws0 = pn[m], w[:, m], w_star[m]
    lhs = (_var(w0) - _var(ws0)) * e2_a
    rhs = _var(w0 * p0) - _var(ws0 * p0)
    diff = lhs - rhs
    se = float(diff.std(unbiased=True) / math.sqrt(draws)) if draws > 1 else float("nan")
    return {"share_holds": float((lhs <= rhs).double().mean()), "lhs_mean": float(lhs.mean()),
            "rhs_mean": float(rhs.mean()), "diff_mean": float(diff.mean()), "diff_se": se,
            "z": float(diff.mean()) / se if se > 0 else float("nan"), "condition": bool((p0 * p0).mean() >= e2_a),
            "subset_size": int(m.sum())}


def theorem7(p: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> dict[str, Any]:
    """004 Thm. 7 (eq. 24): ``lhs = sum_j w_j p_j^2``, ``rhs = sum_j w_j p_j E_k[p_k]`` (``E_k`` uniform over the
    responses), ``w = beta - alpha``, whether ``lhs < rhs``, and the condition's measure: Pearson's
    correlation of ``alpha`` and ``beta`` over the responses (independence needs 0). ``[..., n]``."""
    w = beta - alpha
    lhs = (w * p * p).sum(-1)
    rhs = (w * p).sum(-1) * p.mean(-1)
    corr = _cov(alpha, beta) / (_var(alpha) * _var(beta)).sqrt()
    return {"lhs": lhs.reshape(-1).tolist(), "rhs": rhs.reshape(-1).tolist(),
            "holds": (lhs < rhs).reshape(-1).tolist(), "corr_alpha_beta": corr.reshape(-1).tolist()}


def ood_comparison(p: torch.Tensor, w: torch.Tensor, ood) -> dict[str, list[float]]:
    """The OOD question behind 004 Thm. 7 and Fig. 1's text, asked of the probability updates themselves:
    eq. 12 (DPO) and eq. 14 (balanced) for policies ``p [rows, n]`` with weights ``w [rows, n]``, and the
    responses ``ood`` (a boolean mask ``[n]`` or ``[rows, n]``). Per update: ``share_*``, the share of
    ``sum_i |Delta p_i|`` that falls on the OOD responses (how much of the update they get), and ``net_*``,
    the change of their total mass divided by ``sum_i |Delta p_i|`` (which way it goes; > 0: mass moves
    onto them). Dividing by the size of each update removes ``gamma`` and ``C`` (004: "no effect after
    normalization")."""
    ood = torch.as_tensor(np.asarray(ood, dtype=bool))
    out = {}
    for name, d in (("dpo", eq12_prob_update(p, w, 1.0)), ("balanced", eq14_prob_update(p, w, 1.0))):
        size = d.abs().sum(-1)
        out[f"share_{name}"] = ((d.abs() * ood).sum(-1) / size).reshape(-1).tolist()
        out[f"net_{name}"] = ((d * ood).sum(-1) / size).reshape(-1).tolist()
    return out


def _increasing(g: torch.Generator, draws: int, n: int, heavy: bool) -> torch.Tensor:
    """Random positive increasing functions on ``n`` points: cumulative sums of positive steps plus a
    positive offset; ``heavy`` draws log-normal steps (values over many orders of magnitude)."""
    if heavy:
        steps = torch.exp(3.0 * torch.randn(draws, n, generator=g, dtype=DT))
        off = torch.exp(3.0 * torch.randn(draws, 1, generator=g, dtype=DT))
    else:
        steps = torch.rand(draws, n, generator=g, dtype=DT)
        off = torch.rand(draws, 1, generator=g, dtype=DT)
    return steps.cumsum(-1) + off


def lemma_checks(draws: int = 2000, n: int = 30, seed: int = 0) -> dict[str, dict[str, float]]:
    """004 Lemma 3 (``Var[fg] >= Var[f] E[g^2]``) and Lemma 4 (``Cov[fg, g] >= E[f] Var[g]``) on random
    examples: ``X`` uniform on ``n`` points, ``f``, ``g`` random positive increasing functions (uniform and
    log-normal steps, half the draws each). Per lemma: the share of draws where it holds and the smallest
    ``(lhs - rhs) / |lhs|``."""
    draws = check_int("draws", draws, 2)
    n = check_int("n", n, 2)
    g = torch.Generator().manual_seed(int(seed))
    half = draws // 2
    f = torch.cat([_increasing(g, half, n, False), _increasing(g, draws - half, n, True)])
    h = torch.cat([_increasing(g, half, n, False), _increasing(g, draws - half, n, True)])
    l3, r3 = _var(f * h), _var(f) * (h * h).mean(-1)
    l4, r4 = _cov(f * h, h), f.mean(-1) * _var(h)
    return {"lemma3": {"share_holds": float((l3 >= r3).double().mean()), "min_rel_margin": float(((l3 - r3) / l3.abs()).min())},
            "lemma4": {"share_holds": float((l4 >= r4).double().mean()), "min_rel_margin": float(((l4 - r4) / l4.abs()).min())}}


def random_theorem_checks(draws: int = 2000, n: int = 30, seed: int = 0) -> dict[str, dict[str, float]]:
    """Thms. 4 and 7 where their conditions hold by construction, on random one-prompt problems over
    ``n`` responses (uniform sampling, ``w = beta - alpha``): policy ``p = softmax(2 z)``, ``z ~ N(0, 1)``.
    Thm. 4: utility ``u = p^k`` with ``k ~ U(0.2, 3)`` (so ``beta_i`` increases with ``p_i``); Thm. 7: ``u``
    drawn independently of ``p`` (``softmax(2 z')``; independent as random variables, not exactly
    uncorrelated in a finite sample). Per theorem: the share of draws where it holds."""
    draws = check_int("draws", draws, 1)
    n = check_int("n", n, 2)
    g = torch.Generator().manual_seed(int(seed))
    p = torch.softmax(2.0 * torch.randn(draws, n, generator=g, dtype=DT), -1)
    k = 0.2 + 2.8 * torch.rand(draws, 1, generator=g, dtype=DT)
    u_mono = p ** k
    u_ind = torch.softmax(2.0 * torch.randn(draws, n, generator=g, dtype=DT), -1)
    off = ~torch.eye(n, dtype=torch.bool)

    def ab(u):
        pi, pj, ui, uj = p[:, :, None], p[:, None, :], u[:, :, None], u[:, None, :]
        return (off * pi / (pi + pj)).sum(-1), (off * ui / (ui + uj)).sum(-1)

    a4, b4 = ab(u_mono)
    t4 = theorem4(p, a4, b4)
    a7, b7 = ab(u_ind)
    t7 = theorem7(p, a7, b7)
    return {"thm4": {"share_holds": float(np.mean(t4["holds"])), "share_condition": float(np.mean(t4["condition"]))},
            "thm7": {"share_holds": float(np.mean(t7["holds"])),
                     "mean_abs_corr_alpha_beta": float(np.mean(np.abs(t7["corr_alpha_beta"])))}}


# ================================================================================================
# 5. Training runs: Thm. 6, Prop. 2, Cor. 3, App. C on the toy
# ================================================================================================

def tabular_zero_reference(n_responses: int = 8, steps: int = 200, lr: float = 0.5, *, beta: float = 1.0,
                           tiny: float = 1e-30, seed: int = 0) -> dict[str, Any]:
    """004 Thm. 6 on the tabular policy, in float64: ``steps`` SGD steps of DPO on the summed loss of
    fixed pairs ``(2, 3), (3, 4), ..., (R-2, R-1)`` (winner first); response 0 has ``pi_ref = 0`` (logit
    ``-inf``), response 1 has ``pi_ref = tiny``; neither is ever in a pair, and ``pi_theta = pi_ref`` at the
    start. Returns ``pi_T`` of both, ``ratio_tiny = pi_T(1) / pi_ref(1)``, the normaliser ratio
    ``z_ratio = Z_0 / Z_T`` (the factor of every response outside the pairs: their logits never move),
    their difference, and whether response 0's logit is still ``-inf``."""
    R = check_int("n_responses", n_responses, 5)
    steps = check_int("steps", steps, 1)
    lr = check_positive("lr", lr)
    L.check_loss_params("dpo", beta=beta)
    check_number("tiny", tiny, 0.0, 1.0, low_open=True, high_open=True)
    g = torch.Generator().manual_seed(int(seed))
    with _deterministic():
        base = torch.randn(1, R, generator=g, dtype=DT)
        base[0, 0] = -math.inf
        rest = torch.logsumexp(base[0, 2:], 0)
        base[0, 1] = math.log(tiny) + rest - math.log1p(-tiny)          # pi_ref(1) = tiny
        pairs = torch.arange(2, R)
        st = PairStates(base.clone(), base.clone(), pairs[:-1].view(1, -1), pairs[1:].view(1, -1))
        s = base.clone()
        for _ in range(steps):
            gr, _ = logit_gradient("dpo", st, beta=beta, logits=s)
            s = s - lr * gr
        lp0, lpT = torch.log_softmax(base, -1)[0], torch.log_softmax(s, -1)[0]
        z_ratio = float(torch.exp(torch.logsumexp(base, -1) - torch.logsumexp(s, -1)))
        ratio = float(torch.exp(lpT[1] - lp0[1]))
    return {"pi_T_zero": float(lpT[0].exp()), "logit_zero_still_minus_inf": bool(s[0, 0] == -math.inf),
            "pi_ref_tiny": float(lp0[1].exp()), "pi_T_tiny": float(lpT[1].exp()), "ratio_tiny": ratio,
            "z_ratio": z_ratio, "z_ratio_minus_ratio": z_ratio - ratio,
            "paired_logits_moved": float((s[0, 2:] - base[0, 2:]).abs().max())}


def unpaired_growth(run) -> dict[str, float]:
    """004 Thm. 6's question on a toy run (:func:`prefdyn.toy.train` with ``record_probs=True``): how far
    the probability of each *other* prompt's optimal response (in the data, never paired with this prompt)
    moves from ``pi_0``, in orders of magnitude: ``log10 pi_t(y|x) / pi_0(y|x)`` per member, prompt and
    response. Returns its peak over training averaged over the entries (``peak_mean``), the largest entry's
    peak (``peak_max``), its final mean, the mean initial probability, the peak of the same mean for the
    unseen responses (in no pair at all, ``unseen_peak_mean``), and the largest bound
    ``log10 1/pi_0(U|x)`` that the normaliser of a tabular policy allows (``U`` = responses never paired
    with x: their logits never move, so they all grow by ``Z_0/Z_t <= 1/pi_0(U|x)``), and the smallest
    margin to that bound, per member and prompt (``bound_margin_min``: ``log10 1/pi_0(U|x)`` minus the
    largest peak gain of the prompt's unpaired responses; negative: the bound is exceeded)."""
    if run.probs is None:
        raise ValueError("run: expected a toy run with record_probs=True")
    masks = run.spec.role_masks()
    pr = run.probs.astype(np.float64)                       # [T, M, P, R]
    unpaired = (masks["other"] | masks["unseen"]).numpy()
    out = {}
    for role in ("other", "unseen"):
        x = pr[:, :, masks[role].numpy()]                   # [T, M, entries]
        with np.errstate(divide="ignore"):
            l10 = np.log10(x / x[0:1])
        peak = l10.max(axis=0)                              # [M, entries]
        if role == "other":
            out.update(initial_prob_mean=float(x[0].mean()), peak_mean=float(peak.mean()),
                       peak_max=float(peak.max()), final_mean=float(l10[-1].mean()))
        else:
            out["unseen_peak_mean"] = float(peak.mean())
    out["tabular_bound_max"] = float((-np.log10((pr[0] * unpaired).sum(-1))).max())
    gains = np.where(unpaired[None, None], np.log10(pr / pr[0:1]), np.nan)       # [T, M, P, R]
    out["within_prompt_spread"] = float(np.nanmax(np.nanmax(gains, -1) - np.nanmin(gains, -1)))
    bound = -np.log10((pr[0] * unpaired).sum(-1))                                 # [M, P]
    out["bound_margin_min"] = float((bound - np.nanmax(gains, axis=(0, 3))).min())
    return out


def gradient_trends(run) -> dict[str, float]:
    """004 Prop. 2 on a toy run's records: ``g_w`` = ``dpi_chosen`` and ``g_l`` = ``dpi_rejected`` (mean over
    the step's pairs of ``dl/dpi``, 004 eq. 31-32), per member. Returns the share of consecutive recorded
    steps (over members) on which ``g_w`` increases and ``g_l`` decreases in the signed reading (Prop. 2 as
    printed; ``g_w < 0``, so "increases" means towards 0) and in the magnitude reading (``|g_w|`` increases,
    ``|g_l|`` decreases), the means over members at the first and the last step, and the share of members
    whose ``|g_l|`` ends above its start."""
    gw, gl = run.records["dpi_chosen"], run.records["dpi_rejected"]      # [T, M]
    dw, dl = np.diff(gw, axis=0), np.diff(gl, axis=0)
    daw, dal = np.diff(np.abs(gw), axis=0), np.diff(np.abs(gl), axis=0)
    return {"signed_gw_increases": float((dw > 0).mean()), "signed_gl_decreases": float((dl < 0).mean()),
            "abs_gw_increases": float((daw > 0).mean()), "abs_gl_decreases": float((dal < 0).mean()),
            "gw_first": float(gw[0].mean()), "gw_last": float(gw[-1].mean()),
            "gl_first": float(gl[0].mean()), "gl_last": float(gl[-1].mean()),
            "share_members_abs_gl_up": float((np.abs(gl[-1]) > np.abs(gl[0])).mean())}


def eq5_ratio(run, *, shift: float = 0.0, final: bool = False) -> float:
    """004 eq. 5 as printed on a :class:`prefdyn.rlhf.RLHFRun`: ``d J / d pi(y) = r(y) - beta log pi(y)/pi_ref(y)
    - beta`` with the run's reward plus ``shift`` (PPO is unchanged by a constant added to the reward), at
    ``pi_0`` or the final policy; returns the ratio of its mean magnitude at the prompts' optimal responses
    to that over the rejected responses (``> 1``: positively imbalanced in 004 Def. 1's sense)."""
    m = run.spec.role_masks()
    lp = run.final_log_probs if final else run.ref_log_probs
    g = run.rewards + shift - run.beta * (lp - run.ref_log_probs) - run.beta
    return float(np.abs(g[:, m["chosen"].numpy()]).mean() / np.abs(g[:, m["rejected"].numpy()]).mean())


def ppo_imbalance(run, shifts: Sequence[float] = (-5.0, 0.0, 5.0)) -> dict[str, Any]:
    """004 Cor. 3 ("PPO policy loss is positively imbalanced with a good reward model") on a toy RLHF run:
    the ratio ``|dJ/dpi(chosen)| / |dJ/dpi(rejected)|`` in three readings:

    - ``eq5_*``: 004 eq. 5 as printed (:func:`eq5_ratio`) at ``pi_0`` and at the end, and at ``pi_0`` for the
      reward shifted by each ``s`` of ``shifts`` (``eq5_start_shift_<s>``; the reading depends on the
      reward's arbitrary offset);
    - ``advantage_*``: the offset-free form of :mod:`prefdyn.rlhf` (``dl/dpi = -A``, the soft advantage; the
      records' ``grad_chosen``/``grad_rejected``) at the first and last step, and the share of recorded
      steps (over members) with ratio > 1;
    - ``logit_*``: ``|dl/dlog pi|`` (``pi A``), the push each response's logit gets, likewise.
    """
    r = run.records
    adv = r["grad_chosen"] / r["grad_rejected"]
    logit = np.abs(r["dlogp_chosen"]) / np.abs(r["dlogp_rejected"])
    out = {"eq5_start": eq5_ratio(run), "eq5_end": eq5_ratio(run, final=True),
           **{f"eq5_start_shift_{s:g}": eq5_ratio(run, shift=s) for s in shifts},
           "advantage_start": float(np.exp(np.log(adv[0]).mean())), "advantage_end": float(np.exp(np.log(adv[-1]).mean())),
           "advantage_share_above_1": float((adv > 1).mean()),
           "logit_start": float(np.exp(np.log(logit[0]).mean())), "logit_end": float(np.exp(np.log(logit[-1]).mean())),
           "logit_share_above_1": float((logit > 1).mean())}
    return out


def logit_gradient_cosines(run, when: str = "sft") -> dict[str, float]:
    """004 App. C's empirical claim ``E[c_ij] < 0`` measured on a toy MLP run: the cosines ``c_ij`` (004 eq. 7)
    between the parameter gradients of two logits ``s_i``, ``s_j`` (``i != j``) of the same prompt, in
    float64, with the parameters after SFT (``when="sft"``, the run's ``init_params``) or at the end
    (``"final"``). Returns the mean of ``c_ij``, of ``|c_ij|`` and the share of negative ``c_ij`` over the
    members, prompts and response pairs."""
    check_choice("when", when, ("sft", "final"))
    pol = run.policy
    src = run.init_params if when == "sft" else {k: v.detach().cpu().numpy() for k, v in pol.params.items()}
    if src is None:
        raise ValueError("run: expected a run of prefdyn.toy.run_grid (it keeps the post-SFT parameters)")
    params = {k: torch.as_tensor(v, dtype=DT).requires_grad_(True) for k, v in src.items()}
    leaves = list(params.values())
    P, R = run.spec.n_prompts, run.spec.n_responses
    with _deterministic(), torch.enable_grad():
        z = pol.forward(params).to(DT)                                        # [M, P, R]
        rows = []
        for p in range(P):
            for i in range(R):
                gr = torch.autograd.grad(z[:, p, i].sum(), leaves, retain_graph=True)
                rows.append(torch.cat([x.reshape(x.shape[0], -1) for x in gr], dim=1))
        G = torch.stack(rows, 1).view(z.shape[0], P, R, -1)                    # [M, P, R, n_params]
    c = _cosines(G.reshape(-1, R, G.shape[-1]))
    return {"mean_c": float(c.mean()), "mean_abs_c": float(c.abs().mean()), "share_negative": float((c < 0).double().mean())}
