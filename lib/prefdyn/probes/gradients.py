"""Gradient probes: what the loss pushes on each response, from the loss's own log-prob gradient.

For a pair with sequence log-probs ``log pi+`` (chosen) and ``log pi-`` (rejected), reference log-probs
``log pi0+-`` and response lengths ``L+-``, the per-pair loss ``l`` of :mod:`prefdyn.losses` has the
derivatives ``g+- = dl/dlog pi+-`` (:func:`prefdyn.losses.logprob_grads`: autograd through the LOSS only,
a function of ``2n`` numbers; in training the same ``g`` then drives the one backward pass through the
model, so the probes cost no extra backward pass through the model). From them, per pair:

=====================  ==================================================  ======================================
probe                  definition                                          convention
=====================  ==================================================  ======================================
``dlogp_*``            ``g+-`` = dl/dlog pi+-                              sum (sequence log-prob)
``log_grad_*``         ``log|dl/dpi+-| = log|g+-| - log pi+-``             sum: pi = the sequence probability;
                       (the sign of dl/dpi is that of ``g``)
``log_grad_ratio``     ``log(|dl/dpi-| / |dl/dpi+|)``                      sum; DPO: ``log pi+ - log pi-``
                                                                           (000 Cor. 1, ratio = pi+/pi-)
``tok_dlogp_*``        ``L g+-`` = dl/d(log pi / L)                        per-token mean log-prob ``m = log pi/L``
``tok_log_grad_*``     ``log|dl/dp|`` with ``p = exp(m)``:                 per-token mean: p is the geometric
                       ``log L + log|g| - m``                              mean token probability
``tok_log_grad_ratio`` ``tok_log_grad_rejected - tok_log_grad_chosen``     per-token mean
``drift_*``            ``(log pi+- - log pi0+-) / L+-``                    per-token mean drift from the reference
``margin``             ``h = (log pi+ - log pi0+) - (log pi- - log pi0-)``  sum (TRL's "logits"; > 0: ranked right)
=====================  ==================================================  ======================================

``dl/dpi = (dl/dlog pi) / pi`` is 000 Sec. 3.1's probability-space gradient (000 Fig. 10 plots its size
during DPO on an LLM). A whole sequence's probability underflows (a thousand tokens at one nat each
give ``log pi = -1000``, below float64's smallest number ``e^-745``; ``dl/dpi`` then overflows), so every
probability-space probe is a LOG (``log|.|``, natural log); only the aggregated ``grad_*`` / ``dpi_*``
columns of :func:`probe_row` exponentiate, and are ``inf`` beyond float64 (their ``log_*`` columns stay
finite). A gradient that is exactly 0 (a hinge loss past its margin) has ``log|.| = -inf``, and the ratio
of two such gradients is NaN (0/0), as in the toy records.

:func:`probe_row` aggregates a step's pairs into the columns of the training log (:data:`PROBE_COLUMNS`),
reusing the toy records' gradient columns (:func:`prefdyn.records.gradient_columns`, same names, same
meaning: means over the step's pairs) for both conventions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from .. import losses as L
from .. import records

__all__ = ["GradientProbes", "gradient_probes", "probe_row", "PROBE_COLUMNS"]


@dataclass
class GradientProbes:
    """Per-pair probes (float64 tensors ``[n]``); the table in the module docstring defines each one."""

    loss: torch.Tensor
    dlogp_chosen: torch.Tensor
    dlogp_rejected: torch.Tensor
    log_grad_chosen: torch.Tensor
    log_grad_rejected: torch.Tensor
    log_grad_ratio: torch.Tensor
    tok_dlogp_chosen: torch.Tensor
    tok_dlogp_rejected: torch.Tensor
    tok_log_grad_chosen: torch.Tensor
    tok_log_grad_rejected: torch.Tensor
    tok_log_grad_ratio: torch.Tensor
    drift_chosen: torch.Tensor
    drift_rejected: torch.Tensor
    margin: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _f64(x: Any) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def gradient_probes(loss: Any, logp_chosen, logp_rejected, ref_chosen, ref_rejected, len_chosen, len_rejected,
                    *, grads: tuple[torch.Tensor, torch.Tensor] | None = None, **params) -> GradientProbes:
    """The per-pair probes of ``loss`` (a name, a :class:`~prefdyn.losses.Loss` or a user's loss function,
    :func:`prefdyn.losses.get`) at the sequence log-probs ``logp_*`` (sums over each response's tokens),
    reference log-probs ``ref_*`` and response lengths ``len_*``.

    ``grads`` = ``(dl/dlog pi+, dl/dlog pi-)`` per pair when the caller already has them (the training
    loop does); otherwise they come from :func:`prefdyn.losses.logprob_grads`. Parameters are validated
    by the loss (one-line ``ValueError``)."""
    Lo = L.get(loss)
    p = Lo.check(**params)
    lc, lr, rc, rr = (_f64(x) for x in (logp_chosen, logp_rejected, ref_chosen, ref_rejected))
    nc, nr = _f64(len_chosen), _f64(len_rejected)
    if grads is None:
        gc, gr = L.logprob_grads(Lo, lc, lr, rc, rr, **p)
    else:
        gc, gr = (_f64(g) for g in grads)
    with torch.no_grad():
        value = Lo.fn(lc, lr, rc, rr, **p).to(torch.float64)
    with torch.no_grad():
        lgc, lgr = gc.abs().log() - lc, gr.abs().log() - lr
        mc, mr = lc / nc, lr / nr
        tlc, tlr = nc.log() + gc.abs().log() - mc, nr.log() + gr.abs().log() - mr
    return GradientProbes(value, gc, gr, lgc, lgr, lgr - lgc, nc * gc, nr * gr, tlc, tlr, tlr - tlc,
                          (lc - rc) / nc, (lr - rr) / nr, (lc - rc) - (lr - rr))


#: The columns of the training log (:func:`prefdyn.probes.train_preference`), one value per logged step.
#: "Mean" is over the step's pairs (the pairs of that update, all micro-batches); "sum" = sequence
#: log-probs (sums over the response's tokens), "per-token" = per-token mean log-probs ``log pi / L``.
PROBE_COLUMNS = {
    "step": "updates done before this step's forward pass (0: the initial policy)",
    "loss": "the preference loss, mean over the step's pairs (the value trained)",
    "reward_accuracy": "fraction of the step's pairs with log pi+/pi0+ > log pi-/pi0- (implicit reward, 000 Sec. 5.3)",
    "log_chosen": "mean of log pi(a+|x) (sum)",
    "log_rejected": "mean of log pi(a-|x) (sum)",
    "token_log_chosen": "mean of log pi(a+|x) / L+ (per-token, 000 Table 1)",
    "token_log_rejected": "mean of log pi(a-|x) / L- (per-token, 000 Table 1)",
    "drift_chosen": "mean of (log pi+ - log pi0+) / L+: per-token drift from the reference",
    "drift_rejected": "mean of (log pi- - log pi0-) / L-: per-token drift from the reference",
    **{k: records.RECORDS[k] + " [sum: pi = the sequence probability]" for k in records.GRADIENT_COLUMNS},
    "log_grad_ratio": "log_grad_rejected - log_grad_chosen: log of the ratio of the mean |dl/dpi| (sum; 000 Cor. 1)",
    **{"tok_" + k: records.RECORDS[k].replace("pi", "p") + " [per-token: p = exp(log pi / L), "
       "dl/dlog p = L dl/dlog pi]" for k in records.GRADIENT_COLUMNS},
    "tok_log_grad_ratio": "tok_log_grad_rejected - tok_log_grad_chosen (per-token)",
    "grad_norm": "2-norm of the parameters' gradient of the step (before clipping)",
}


def probe_row(probes: GradientProbes, logp_chosen, logp_rejected, len_chosen, len_rejected) -> dict[str, float]:
    """One row of the training log from a step's per-pair probes and log-probs (all columns of
    :data:`PROBE_COLUMNS` but ``step`` and ``grad_norm``). The gradient columns are
    :func:`prefdyn.records.gradient_columns` of the pairs, once with ``(g, log pi)`` (sum) and once with
    ``(L g, log pi / L)`` (per-token)."""
    lc, lr = _f64(logp_chosen), _f64(logp_rejected)
    nc, nr = _f64(len_chosen), _f64(len_rejected)
    g = torch.stack([probes.dlogp_chosen, probes.dlogp_rejected])[None]
    seq = records.gradient_columns(g, torch.stack([lc, lr])[None])[0]
    tok = records.gradient_columns(g * torch.stack([nc, nr])[None], torch.stack([lc / nc, lr / nr])[None])[0]
    row = {
        "loss": probes.loss.mean(),
        "reward_accuracy": (probes.margin > 0).to(torch.float64).mean(),
        "log_chosen": lc.mean(), "log_rejected": lr.mean(),
        "token_log_chosen": (lc / nc).mean(), "token_log_rejected": (lr / nr).mean(),
        "drift_chosen": probes.drift_chosen.mean(), "drift_rejected": probes.drift_rejected.mean(),
    }
    row.update({k: seq[i] for i, k in enumerate(records.GRADIENT_COLUMNS)})
    row["log_grad_ratio"] = row["log_grad_rejected"] - row["log_grad_chosen"]
    row.update({"tok_" + k: tok[i] for i, k in enumerate(records.GRADIENT_COLUMNS)})
    row["tok_log_grad_ratio"] = row["tok_log_grad_rejected"] - row["tok_log_grad_chosen"]
    return {k: float(v) for k, v in row.items()}

