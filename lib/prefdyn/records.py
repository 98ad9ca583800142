"""What a training run records and what is read from it: the per-step record columns of every toy run
(DPO-like losses, RLHF, and the probes to come), the per-member indicators (000 Sec. 3.2.2's phases, the
3D-properties) and their summaries over seeds (mean and 95% interval, :mod:`prefdyn.stats`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from .stats import clip, geo_mean_ci, mean_ci, pow10

if TYPE_CHECKING:
    from .toy.space import ToySpec
    from .toy.train import ToyRun

__all__ = ["RECORDS", "RECORD_ORDER", "role_weights", "state_columns", "gradient_columns", "record_row",
           "INDICATORS", "LABELS", "member_indicators", "GEOMETRIC", "BOUNDS", "summarise", "summarise_members",
           "KEY_INDICATORS", "json_summary", "role_probs"]


#: What :func:`prefdyn.toy.run_grid` (and :mod:`prefdyn.rlhf`) records per step and member (all averaged over the prompts of the member):
RECORDS = {
    "chosen": "pi(a+|x): the prompt's optimal response",
    "rejected": "mean pi(a|x) over the rejected block (likelihood of one rejected response)",
    "rejected_mass": "sum of pi(a|x) over the rejected block",
    "log_chosen": "mean over prompts of log pi(a+|x) (finite when pi underflows)",
    "log_rejected": "mean over prompts of log(mean pi over the rejected block), in log space",
    "other": "mass on the other prompts' optimal responses (in the data, never paired with x)",
    "unseen": "mass on responses that never occur in the data",
    "loss": "the preference loss, mean over the step's pairs",
    "grad_chosen": "mean over the step's pairs of |dl/dpi+| (float64; inf beyond its range, see log_grad_chosen)",
    "grad_rejected": "mean over the step's pairs of |dl/dpi-| (float64; inf beyond its range, see log_grad_rejected)",
    "log_grad_chosen": "natural log of grad_chosen, computed in log space (finite when pi underflows)",
    "log_grad_rejected": "natural log of grad_rejected, computed in log space",
    "dpi_chosen": "mean over the step's pairs of dl/dpi+ (signed)",
    "dpi_rejected": "mean over the step's pairs of dl/dpi- (signed)",
    "dlogp_chosen": "mean over the step's pairs of dl/dlog pi+ (signed)",
    "dlogp_rejected": "mean over the step's pairs of dl/dlog pi- (signed)",
}


#: The state columns (:func:`state_columns`), the loss, the gradient columns (:func:`gradient_columns`):
#: the order of a record row (:func:`record_row`).
STATE_COLUMNS = ("chosen", "rejected_mass", "other", "unseen", "rejected", "log_chosen", "log_rejected")
GRADIENT_COLUMNS = ("log_grad_chosen", "log_grad_rejected", "grad_chosen", "grad_rejected", "dlogp_chosen",
                    "dlogp_rejected", "dpi_chosen", "dpi_rejected")
RECORD_ORDER = STATE_COLUMNS + ("loss",) + GRADIENT_COLUMNS
assert set(RECORD_ORDER) == set(RECORDS)


def role_weights(spec: "ToySpec", device=None) -> torch.Tensor:
    """``[P, R, 4]`` float64 weights of the roles chosen, rejected, other, unseen (:meth:`ToySpec.role_masks`)
    divided by ``P``: contracting probabilities ``[M, P, R]`` with them sums over each role's responses and
    averages over prompts."""
    masks = spec.role_masks(device=device)
    w = torch.stack([masks[k] for k in ("chosen", "rejected", "other", "unseen")], dim=-1).to(torch.float64)
    return w / spec.n_prompts


def state_columns(spec: "ToySpec", logp: torch.Tensor, role_w: torch.Tensor) -> torch.Tensor:
    """The :data:`STATE_COLUMNS` of policies ``logp [M, P, R]`` (log-probabilities), ``[M, 7]`` float64:
    role masses (means over prompts), pi(one rejected) = rejected mass / n_rejected, and the log-space
    ``log_chosen`` and ``log_rejected`` (finite when a probability underflows)."""
    lg = logp.detach().to(torch.float64)
    pr = lg.exp()
    roles = torch.einsum("mpr,prk->mk", pr, role_w)                            # chosen, rejected mass, other, unseen
    rb = spec.rejected_block
    log_c = lg.diagonal(dim1=1, dim2=2).mean(-1)
    # each prompt's log rejected mass; in log space (logsumexp) only where the mass underflows to 0
    log_rej = pr[..., rb.start: rb.stop].sum(-1).log_()
    if not bool(torch.isfinite(log_rej).all()):
        log_rej = torch.where(torch.isfinite(log_rej), log_rej, torch.logsumexp(lg[..., rb.start: rb.stop], -1))
    log_r = (log_rej - math.log(spec.n_rejected)).mean(-1)
    return torch.cat([roles, (roles[:, 1] / spec.n_rejected)[:, None], log_c[:, None], log_r[:, None]], dim=1)


def _gradient_columns(g: torch.Tensor, lpd: torch.Tensor) -> torch.Tensor:
    """:func:`gradient_columns` of float64 ``g`` and ``lpd`` ``[M, 2, n]``.

    The mean magnitude ``sum_i |g_i| / pi_i / n`` is summed directly: each term ``|g| exp(-log pi)`` is
    at least ``|g|`` (log pi <= 0), so none underflows; where the sum is not finite (a pi below e^-709
    overflows ``exp(-log pi)``) it is recomputed in log space (logsumexp), so ``log_mag`` stays finite."""
    ge = g * lpd.neg().exp_()                                               # dl/dpi per pair
    mag = ge.abs().mean(-1)
    log_mag = mag.log()
    bad = ~torch.isfinite(log_mag)
    if bool(bad.any()):
        log_ls = torch.logsumexp(g.abs().log() - lpd, dim=-1) - math.log(g.shape[-1])
        log_mag = torch.where(bad, log_ls, log_mag)
        mag = torch.where(bad, log_ls.exp(), mag)
    return torch.cat([log_mag, mag, g.mean(-1), ge.mean(-1)], dim=1)


def gradient_columns(dlogp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """The :data:`GRADIENT_COLUMNS`, ``[M, 8]`` float64, from the per-pair derivatives ``dlogp [M, 2, n]``
    (dl/dlog pi of the chosen, side 0, and rejected, side 1, response of each of the ``n`` pairs) and the
    pairs' log-probabilities ``logp [M, 2, n]``: dl/dpi = (dl/dlog pi) / pi (000 Sec. 3.1); the mean
    magnitudes stay finite when pi underflows (log space where needed)."""
    return _gradient_columns(dlogp.detach().to(torch.float64), logp.detach().to(torch.float64))


def record_row(spec: "ToySpec", logp, lp, g_lp, member_loss, role_w, n_pairs: int, K: int) -> torch.Tensor:
    """One row of the toy trainer's records, ``[M, len(RECORD_ORDER)]`` float64, in a handful of batched
    ops: ``logp [M, P, R]`` the policies, ``lp [M, P, 2K]`` the pairs' log-probs (K chosen then K rejected
    per prompt), ``g_lp`` d(member loss)/d``lp`` (``g_lp * n_pairs`` is each pair's own dl/dlog pi: the
    trained loss is the mean over the ``n_pairs = P*K`` pairs), ``member_loss [M]``. The trainer passes
    many steps at once (``M`` = steps x members)."""
    M = logp.shape[0]
    g = torch.empty(M, 2, n_pairs, dtype=torch.float64, device=logp.device)     # [M, side, P*K]
    g.view(M, 2, -1, K).copy_((g_lp.detach() * n_pairs).view(M, -1, 2, K).transpose(1, 2))
    lpd = torch.empty(M, 2, n_pairs, dtype=torch.float64, device=logp.device)
    lpd.view(M, 2, -1, K).copy_(lp.detach().view(M, -1, 2, K).transpose(1, 2))
    return torch.cat([state_columns(spec, logp, role_w), member_loss.detach().to(torch.float64)[:, None],
                      _gradient_columns(g, lpd)], dim=1)


#: Indicators of :func:`member_indicators` (per member) and :func:`summarise` (mean and 95% interval).
INDICATORS = {
    "initial_chosen_prob": "pi(chosen) after SFT",
    "peak_chosen_prob": "max over training of pi(chosen)",
    "peak_chosen_step": "update count at which pi(chosen) peaks",
    "final_chosen_prob": "pi(chosen) after the last update",
    "chosen_drop": "peak minus final pi(chosen) (Degradation)",
    "initial_rejected_prob": "pi(one rejected response) after SFT",
    "final_rejected_prob": "pi(one rejected response) after the last update",
    "initial_unseen_mass": "mass on the unseen responses after SFT",
    "final_unseen_mass": "mass on the unseen responses after the last update",
    "unseen_gain": "final minus initial unseen mass (Dispersion)",
    "final_other_mass": "mass on the other prompts' optimal responses after the last update",
    "initial_unpaired_mass": "mass on responses never paired with the prompt (other + unseen) after SFT",
    "final_unpaired_mass": "mass on responses never paired with the prompt (other + unseen) at the end",
    "unpaired_gain": "final minus initial unpaired mass (Dispersion, broad reading)",
    "grad_ratio_initial": "|dl/dpi-| / |dl/dpi+| at the first step (summarised by the geometric mean)",
    "grad_ratio_final": "|dl/dpi-| / |dl/dpi+| at the last recorded step (summarised by the geometric mean)",
    "log10_grad_ratio_final": "log10 of grad_ratio_final, from the log-space records (finite where the ratio overflows)",
    "rejected_drop_orders": "log10(initial / final pi(rejected)): orders of magnitude the rejected likelihood fell",
    "grad_ratio_10_step": "first update count with |dl/dpi-| / |dl/dpi+| > 10 (NaN if never)",
    "grad_ratio_100_step": "first update count with |dl/dpi-| / |dl/dpi+| > 100 (NaN if never)",
    "rejected_log_decline_rate": "mean decline of log pi(rejected) per update over the first `rate_window` updates (Prop. 1)",
    "rejected_tenfold_step": "first update count at which pi(rejected) is down tenfold from pi_0 (NaN if never; Prop. 1)",
}


#: Short display labels of the :data:`INDICATORS`, for the row and column labels of the chapters' tables
#: (one wording in every chapter; the long descriptions above say exactly what each one is).
LABELS = {
    "initial_chosen_prob": "initial π(chosen)",
    "peak_chosen_prob": "peak π(chosen)",
    "peak_chosen_step": "update of the peak",
    "final_chosen_prob": "final π(chosen)",
    "chosen_drop": "drop of π(chosen) after its peak",
    "initial_rejected_prob": "initial π(one rejected)",
    "final_rejected_prob": "final π(one rejected)",
    "initial_unseen_mass": "initial unseen mass",
    "final_unseen_mass": "final unseen mass",
    "unseen_gain": "unseen mass gained",
    "final_other_mass": "final mass on other prompts' optimal",
    "initial_unpaired_mass": "initial unpaired mass",
    "final_unpaired_mass": "final unpaired mass",
    "unpaired_gain": "unpaired mass gained",
    "grad_ratio_initial": "initial gradient ratio",
    "grad_ratio_final": "final gradient ratio",
    "log10_grad_ratio_final": "final log10 gradient ratio",
    "rejected_drop_orders": "orders of magnitude π(rejected) fell",
    "grad_ratio_10_step": "update where the ratio passes 10",
    "grad_ratio_100_step": "update where the ratio passes 100",
    "rejected_log_decline_rate": "decline of log π(rejected) per update",
    "rejected_tenfold_step": "update where π(rejected) is down tenfold",
}


def _first_step(mask: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """First ``steps`` value where ``mask [T, M]`` is true, per member; NaN where never."""
    hit = mask.any(axis=0)
    first = np.argmax(mask, axis=0)
    return np.where(hit, steps[first].astype(np.float64), np.nan)


def member_indicators(run: ToyRun, rate_window: int = 50) -> dict[str, np.ndarray]:
    """The :data:`INDICATORS` per member (``[M]`` float64 arrays), computed from the records.

    The gradient ratio is (mean over pairs |dl/dpi-|) / (mean over pairs |dl/dpi+|), from the log-space
    records; +inf where the chosen gradient vanishes and the rejected does not, NaN where both vanish.
    """
    rc, st = run.records, run.steps
    ch = rc["chosen"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):    # both gradients 0: NaN, silently
        ratio = np.exp(rc["log_grad_rejected"] - rc["log_grad_chosen"])
        log10_ratio_final = (rc["log_grad_rejected"][-1] - rc["log_grad_chosen"][-1]) / math.log(10.0)
    peak_i = np.argmax(ch, axis=0)
    M = ch.shape[1]
    w = min(int(rate_window), int(st[-1])) if st[-1] > 0 else 0
    if w > 0:
        j = int(np.searchsorted(st, w))
        j = min(j, len(st) - 1)
        rate = (rc["log_rejected"][0] - rc["log_rejected"][j]) / st[j]
    else:
        rate = np.full(M, np.nan)
    return {
        "initial_chosen_prob": ch[0],
        "peak_chosen_prob": ch[peak_i, np.arange(M)],
        "peak_chosen_step": st[peak_i].astype(np.float64),
        "final_chosen_prob": ch[-1],
        "chosen_drop": ch[peak_i, np.arange(M)] - ch[-1],
        "initial_rejected_prob": rc["rejected"][0],
        "final_rejected_prob": rc["rejected"][-1],
        "initial_unseen_mass": rc["unseen"][0],
        "final_unseen_mass": rc["unseen"][-1],
        "unseen_gain": rc["unseen"][-1] - rc["unseen"][0],
        "final_other_mass": rc["other"][-1],
        "initial_unpaired_mass": rc["unseen"][0] + rc["other"][0],
        "final_unpaired_mass": rc["unseen"][-1] + rc["other"][-1],
        "unpaired_gain": rc["unseen"][-1] + rc["other"][-1] - rc["unseen"][0] - rc["other"][0],
        "grad_ratio_initial": ratio[0],
        "grad_ratio_final": ratio[-1],
        "log10_grad_ratio_final": log10_ratio_final,
        "rejected_drop_orders": (rc["log_rejected"][0] - rc["log_rejected"][-1]) / math.log(10.0),
        "grad_ratio_10_step": _first_step(np.nan_to_num(ratio, nan=0.0) > 10.0, st),
        "grad_ratio_100_step": _first_step(np.nan_to_num(ratio, nan=0.0) > 100.0, st),
        "rejected_log_decline_rate": rate,
        "rejected_tenfold_step": _first_step(rc["log_rejected"] <= rc["log_rejected"][0] - math.log(10.0), st),
    }


#: Indicators spanning many orders of magnitude: summarised by the geometric mean and the exponentiated
#: t-interval of the mean log (the arithmetic mean of ratios like 1e3 and 1e30 says nothing).
GEOMETRIC = ("grad_ratio_initial", "grad_ratio_final")


#: The range each bounded indicator can take. Its t-interval is clipped to this range: a probability whose
#: seeds span orders of magnitude (e.g. 1e-36 to 1e-33) otherwise gets a negative lower end.
BOUNDS = {
    **{k: (0.0, 1.0) for k in ("initial_chosen_prob", "peak_chosen_prob", "final_chosen_prob", "chosen_drop",
                               "initial_rejected_prob", "final_rejected_prob", "initial_unseen_mass",
                               "final_unseen_mass", "final_other_mass", "initial_unpaired_mass",
                               "final_unpaired_mass")},
    "unseen_gain": (-1.0, 1.0), "unpaired_gain": (-1.0, 1.0),
}


def summarise(run: ToyRun, rate_window: int = 50, level: float = 0.95) -> dict[str, dict[str, dict[str, float]]]:
    """Per configuration label: per indicator ``{"mean", "lo", "hi", "n", "frac"}`` over its seeds.

    The interval is the Student-t ``level`` confidence interval of the mean over seeds (:func:`mean_ci`),
    clipped to the indicator's range for the probabilities and masses of :data:`BOUNDS`;
    the gradient ratios of :data:`GEOMETRIC` use the geometric mean (:func:`geo_mean_ci`), with
    ``grad_ratio_final`` taken from ``log10_grad_ratio_final`` so that it stays finite where a ratio
    overflows float64.
    """
    ind = member_indicators(run, rate_window=rate_window)
    out = {}
    for i, c in enumerate(run.configs):
        out[c.label()] = summarise_members(ind, run.members_of(i), level)
    return out


def summarise_members(ind: Mapping[str, np.ndarray], members, level: float = 0.95) -> dict[str, dict[str, float]]:
    """The summary of :func:`summarise` for the given member indices of :func:`member_indicators` output."""
    mem = np.asarray(members)
    res = {}
    for k, v in ind.items():
        if k == "grad_ratio_final" and "log10_grad_ratio_final" in ind:
            r = mean_ci(ind["log10_grad_ratio_final"][mem], level)
            res[k] = {q: (pow10(r[q]) if q in ("mean", "lo", "hi") else r[q]) for q in r}
        elif k in GEOMETRIC:
            res[k] = geo_mean_ci(v[mem], level)
        else:
            res[k] = mean_ci(v[mem], level)
            if k in BOUNDS:
                lo, hi = BOUNDS[k]
                res[k]["lo"], res[k]["hi"] = clip(res[k]["lo"], lo, hi), clip(res[k]["hi"], lo, hi)
    return res


#: The indicators the toy chapters put in their JSON (000 Sec. 3.2.2's phases and the 3D-properties).
KEY_INDICATORS = (
    "peak_chosen_prob", "peak_chosen_step", "final_chosen_prob", "final_rejected_prob", "final_unseen_mass",
    "grad_ratio_final", "log10_grad_ratio_final", "grad_ratio_10_step", "grad_ratio_100_step", "final_other_mass",
    "final_unpaired_mass",
    "chosen_drop", "unpaired_gain", "rejected_drop_orders",
)


def json_summary(summary_cfg: Mapping[str, Mapping[str, float]], keys: Sequence[str] = KEY_INDICATORS) -> dict:
    """``{key: {"mean", "lo", "hi"}}`` for a chapter's JSON from one entry of :func:`summarise`; the
    threshold steps also carry ``"frac"`` (the fraction of seeds that crossed the threshold at all).
    Non-finite values (a ratio beyond float64, e.g. 10**481, or a threshold never crossed) become ``None``,
    printed and saved alike; ``log10_grad_ratio_final`` keeps the size of such a ratio."""
    out = {}
    for k in keys:
        r = summary_cfg[k]
        d = {q: (float(r[q]) if np.isfinite(r[q]) else None) for q in ("mean", "lo", "hi")}
        if k.endswith("_step") and k != "peak_chosen_step":
            d["frac"] = r["frac"]
        out[k] = d
    return out


def role_probs(run: ToyRun, config: int | str = 0, when: int = 0) -> np.ndarray:
    """Mean over seeds (and prompts, aligned by role) of the probabilities at record ``when`` of one
    configuration, as ``[R]`` in the order: chosen, other..., rejected..., unseen... (needs
    ``record_probs=True``)."""
    if run.probs is None:
        raise ValueError("run: record_probs=True is needed for role_probs")
    spec = run.spec
    pr = run.probs[when][run.members_of(config)].astype(np.float64)        # [S, P, R]
    P = spec.n_prompts
    order = np.array([[p] + [q for q in range(P) if q != p] + list(spec.rejected_block) + list(spec.unseen_block)
                      for p in range(P)])
    aligned = np.take_along_axis(pr, order[None], axis=2)
    return aligned.mean(axis=(0, 1))
