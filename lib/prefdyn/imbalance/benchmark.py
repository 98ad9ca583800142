"""004 Sec. 6.1, Table 1, Fig. 2, App. B: the Balanced-DPO synthetic benchmark, rebuilt and tested.

The set-up of 004 (Sec. 6.1.1, App. B)
--------------------------------------
20 prompts and 20 responses, both labelled 1..20; response ``y = x`` is the best one for prompt ``x``.
Preferences follow 004 eq. 33, ``P(y1 > y2 | x) = u(y1|x) / (u(y1|x) + u(y2|x))``, with the utility of
eq. 34, ``u(y|x) ∝ exp(-alpha (y - x)^2)``, ``alpha = 0.6``. A fraction of the (prompt, response) cells
("mask rate" 0, 0.2, 0.4) never occurs in the data (the out-of-distribution cells). The reference model
is 300 steps of baseline DPO; every method then trains from it with ``beta = 1`` (nbDPO: ``clip = 0.5``).

What 004 leaves open, and what this module does (every choice is a parameter)
----------------------------------------------------------------------------
- **The space** is :class:`prefdyn.toy.ToySpec` with ``n_prompts = 20, n_rejected = 0, n_unseen = 0``
  (indices 0..19 stand for 1..20; response p is optimal for prompt p, as in the toy).
- **The utility** is normalised to a maximum of 1 per prompt: ``u(y|x) = exp(-alpha (y - x)^2)``
  (:func:`utility`). Eq. 34 fixes it only up to a factor; the factor cancels in eq. 33.
- **The masks** (:func:`cell_masks`): each prompt gets exactly ``round(rate * 20)`` masked responses,
  the ones with the lowest counter-based hash of (seed, prompt, response). So the masks of a seed are
  nested (the 0.4 mask contains the 0.2 mask), and every prompt keeps at least two responses.
  Whether the optimal cell ``y = x`` may be masked is not said in 004. ``mask_optimal=True`` (the
  default) masks uniformly among all 20 responses; ``False`` never masks the optimal response.
- **The pairs** (:func:`sample_pairs`): at every step each prompt gets ``pairs_per_prompt`` fresh pairs
  of two different responses drawn from its unmasked responses, either uniformly (``pairs="uniform"``)
  or in proportion to the reference policy (``"reference"``: off-policy data from pi_ref, the usual
  DPO set-up; during the reference's own 300 steps this is the initial policy). The label is
  Bernoulli(eq. 33). All draws are counter-based functions of (seed, phase, step, prompt, slot): every
  method and mask rate of a seed sees the same random numbers (common random numbers), so the
  differences between methods are not sampling noise.
- **The policy**: the tabular policy (one free logit per cell, initialised at 0, i.e. uniform: 004
  Sec. 3.2's raw-logit model, eq. 6) or the toy's MLP (:class:`prefdyn.toy.MLPPolicy`, its ``torch.nn``
  initialisation). No SFT: the initial policy is the policy's initialisation.
- **The reference**: ``ref_steps`` steps of DPO (``beta``) from the initial policy, with the initial
  policy as the reference of those steps, on the same masked data. Every method then starts from this
  policy, with it as pi_ref, a fresh optimiser state, and new pairs (phase 1 of the stream).
- **The optimiser**: the toy's batched Adam or SGD (:func:`prefdyn.toy.make_optimizer`); the loss of a
  member is the MEAN over its ``20 x pairs_per_prompt`` pairs of a step (the toy's convention).
- **The metric** (004 calls it "reward" and prints 3.8-6.2, so it cannot be an expected utility with
  maximum 1): :func:`metrics` gives the expected utility ``E_{y ~ pi(.|x)} u(y|x)`` averaged over the
  prompts (primary; 1 is the optimum), the same summed over the 20 prompts (the reading under which
  004's scale could fit: 20 x 0.2-0.3), the probability of the optimal response and the mass on the
  masked cells (the OOD mass), all averaged over prompts.

The methods (:data:`METHODS`) are the losses of :mod:`prefdyn.losses`, called through ``Loss.fn`` on
contiguous member slices (one call per method, as :func:`prefdyn.toy.run_grid` does): DPO, nbDPO
asymmetric/symmetric (004 eq. 25-26), nbDPO v2 asymmetric/symmetric (eq. 27), bDPO (eq. 28-29), and for
context IPO and SFT-DPO (000 eq. 8 and 7).

What each loss adds to DPO (for the mechanism)
---------------------------------------------
For a pair with ``g± = dl/dlog pi±``, the logit gradient of a tabular policy is
``g+ (e+ - pi) + g- (e- - pi) = a (e+ - e-) + b (e+ + e- - 2 pi)`` with ``a = (g+ - g-)/2`` and
``b = (g+ + g-)/2``. DPO has ``b = 0`` exactly (004 Corollary 1's imbalance is the statement that
``dl/dpi`` differ while ``dl/dlog pi`` are opposite), so it moves only the two logits of the pair.
Every balanced loss has ``b != 0``: it also moves the pair's two logits together against the mass of
all other responses, masked ones included. :func:`run_benchmark` records the mean ``|a|`` and ``b`` of
every member (``grad_balance``; ``a < 0`` for every loss here, so the mean of ``|a|`` is reported).
The two terms can be separated in training (:data:`ABLATIONS`): ``"<m>_a"`` trains on the pair
gradients ``g± - b`` of method ``m`` (its ``a``-term only), ``"<m>_b"`` on DPO's ``g±`` plus ``m``'s
``b`` (DPO plus only the ``b``-term of ``m``); both are exact per pair and per update. A method can
also be trained at several learning rates at once (``lr_scales``), so that no method is judged at a
learning rate chosen for another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .. import losses as L
from .. import stats
from ..device import cpu_settings, resolve_device
from ..tables import Table
from ..toy import OPTIMIZERS, POLICIES, BatchedPolicy, ToySpec, as_seeds, hash_keys, make_optimizer, make_policy
from ..validate import check_bool, check_choice, check_int, check_number, check_positive

__all__ = [
    "METHODS", "METHOD_LABELS", "PAPER_METHODS", "PAPER_MASKS", "PAPER_TABLE1", "PAIRINGS", "METRICS",
    "bench_spec", "utility", "cell_masks", "sample_pairs", "method_losses", "BenchRun", "run_benchmark",
    "ABLATIONS", "BALANCED", "lr_name", "best_lr_rows", "lr_means_table", "mask_effect_table",
    "balance_grid_table", "grid_tests", "metrics", "compare_rows", "paper_relative", "mask_effect", "claims", "CLAIMS", "SETTINGS", "cell_label",
    "run_settings", "grid_rows", "grid_claims", "where_holds", "significant", "mechanism_check", "balance",
    "reward_scale", "data_utility", "mean_table", "delta_table", "paper_table", "sensitivity_table",
    "reference_table", "balance_table", "data_table", "trajectory_table", "claim_table", "MECHANISM_LABELS",
    "mechanism_tables",
]

#: The methods of 004 Table 1 and the two context losses: name -> (loss of :mod:`prefdyn.losses`, the
#: parameters that define the method; the others come from the chapter, :func:`method_losses`).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpo": ("dpo", {}),
    "nbdpo_asym": ("nbdpo", {"symmetric": False}),
    "nbdpo_sym": ("nbdpo", {"symmetric": True}),
    "nbdpo_v2_asym": ("nbdpo_v2", {"symmetric": False}),
    "nbdpo_v2_sym": ("nbdpo_v2", {"symmetric": True}),
    "bdpo": ("bdpo", {}),
    "ipo": ("ipo", {}),
    "sft_dpo": ("sft_dpo", {}),
}
METHOD_LABELS = {
    "dpo": "DPO", "nbdpo_asym": "nbDPO (asym)", "nbdpo_sym": "nbDPO (sym)", "nbdpo_v2_asym": "nbDPO v2 (asym)",
    "nbdpo_v2_sym": "nbDPO v2 (sym)", "bdpo": "bDPO", "ipo": "IPO", "sft_dpo": "SFT-DPO",
}
#: The balanced losses of 004 (eq. 25-29).
BALANCED = ("nbdpo_asym", "nbdpo_sym", "nbdpo_v2_asym", "nbdpo_v2_sym", "bdpo")
#: The ablations (module docstring): name -> (balanced method, "a_only" | "dpo_plus_b").
ABLATIONS: dict[str, tuple[str, str]] = {
    **{f"{m}_a": (m, "a_only") for m in BALANCED}, **{f"{m}_b": (m, "dpo_plus_b") for m in BALANCED}}
METHOD_LABELS.update({f"{m}_a": f"{METHOD_LABELS[m]}: a only" for m in BALANCED})
METHOD_LABELS.update({f"{m}_b": f"DPO + b of {METHOD_LABELS[m]}" for m in BALANCED})
#: 004 Table 1 ("reward", mask rates 0.0, 0.2, 0.4), as printed; "baseline" is DPO.
PAPER_MASKS = (0.0, 0.2, 0.4)
PAPER_TABLE1: dict[str, tuple[float, float, float]] = {
    "dpo": (4.28, 3.98, 4.71),
    "nbdpo_asym": (4.56, 4.46, 5.02),
    "nbdpo_sym": (5.40, 5.30, 6.15),
    "nbdpo_v2_asym": (3.79, 4.05, 4.04),
    "nbdpo_v2_sym": (4.45, 4.24, 4.82),
    "bdpo": (4.45, 4.40, 4.68),
}
PAPER_METHODS = tuple(PAPER_TABLE1)
#: How the pairs are drawn from a prompt's unmasked responses (module docstring).
PAIRINGS = ("uniform", "reference")
#: The metrics of :func:`metrics`.
METRICS = {
    "utility": "expected utility E_pi[u(y|x)], mean over prompts (u normalised to max 1)",
    "utility_sum": "expected utility summed over the prompts (max = number of prompts)",
    "p_optimal": "pi(y = x | x), mean over prompts",
    "masked_mass": "mass on the masked (never in the data) responses, mean over prompts",
    "utility_unmasked": "expected utility of the policy restricted to the unmasked responses (renormalised), "
                        "mean over prompts",
}

_STREAM_PAIRS = 4       # the toy uses 1 (initial weights), 2 (its pairs), 3 (PPO samples)
_STREAM_MASKS = 5


# ----------------------------------------------------------------------------- the space and the data
def bench_spec(n: int = 20) -> ToySpec:
    """The ``n x n`` space of 004 Sec. 6.1.1: ``ToySpec(n_prompts=n, n_rejected=0, n_unseen=0)``."""
    return ToySpec(n_prompts=check_int("n", n, 3), n_rejected=0, n_unseen=0)


def utility(n: int = 20, alpha: float = 0.6) -> torch.Tensor:
    """004 eq. 34 normalised to max 1: ``u[x, y] = exp(-alpha (y - x)^2)``, float64 ``[n, n]``."""
    check_int("n", n, 3)
    check_positive("alpha", alpha)
    i = torch.arange(n, dtype=torch.float64)
    return torch.exp(-alpha * (i[None, :] - i[:, None]) ** 2)


def _uniform(h: torch.Tensor) -> torch.Tensor:
    """32-bit hashes to float64 uniforms in (0, 1) (as :func:`prefdyn.toy.counter_uniform`)."""
    return (h.to(torch.float64) + 0.5) / 2.0 ** 32


def cell_masks(seeds, rates: Sequence[float], n: int = 20, *, mask_optimal: bool = True) -> torch.Tensor:
    """The masked cells, bool ``[len(rates), S, n, n]`` (True = the cell never occurs in the data).

    Per seed and prompt, exactly ``round(rate * n)`` responses are masked: those with the lowest hash of
    (seed, prompt, response), so a seed's masks are nested across rates. With ``mask_optimal=False`` the
    optimal response ``y = x`` is never masked. Every prompt keeps at least two responses."""
    seeds = as_seeds(seeds)
    check_int("n", n, 3)
    check_bool("mask_optimal", mask_optimal)
    rates = [check_number("masks", r, 0.0, 1.0) for r in rates]
    S = len(seeds)
    idx = torch.arange(n)
    key = hash_keys(seeds.view(S, 1, 1), _STREAM_MASKS, idx.view(1, n, 1), idx.view(1, 1, n))
    if not mask_optimal:
        key = torch.where(torch.eye(n, dtype=torch.bool), torch.full_like(key, 2 ** 33), key)
    rank = key.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True)                      # 0 = masked first
    out = []
    for r in rates:
        k = int(round(r * n))
        if k > n - 2:
            raise ValueError(f"masks: expected rates that leave every prompt two responses "
                             f"(at most {(n - 2) / n:g} with {n} responses), got {r!r}")
        out.append(rank < k)
    return torch.stack(out)


def sample_pairs(seeds, member_seed: torch.Tensor, weights: torch.Tensor, util: torch.Tensor,
                 steps: torch.Tensor, pairs_per_prompt: int, phase: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs of ``steps [T]``: chosen and rejected responses, int64 ``[T, M, P, K]``.

    Member m draws two DIFFERENT responses per slot from ``weights[m] [P, R]`` (>= 0: zero for masked
    cells; 1 for uniform sampling, pi_ref for sampling from the reference), the second from the weights
    without the first (an inverse-CDF draw that skips the first's interval), and the label of 004 eq. 33:
    ``y1`` is chosen with probability ``u1 / (u1 + u2)`` (``util [P, R]``). The uniforms are counter-based
    functions of ``(seeds[member_seed[m]], phase, step, prompt, slot)``: members that share a seed share
    them, whatever their method, mask or batch.
    """
    seeds = as_seeds(seeds)
    M, P, R = weights.shape
    K, T, S = int(pairs_per_prompt), len(steps), len(seeds)
    dev = weights.device
    h = hash_keys(seeds.view(1, S, 1, 1, 1), _STREAM_PAIRS, int(phase), steps.view(T, 1, 1, 1, 1).cpu(),
                  torch.arange(P).view(1, 1, P, 1, 1), torch.arange(K).view(1, 1, 1, K, 1),
                  torch.arange(3).view(1, 1, 1, 1, 3))
    u = _uniform(h).to(dev)[:, member_seed.to(dev)]                           # [T, M, P, K, 3]
    u = u.permute(1, 2, 0, 3, 4).reshape(M, P, T * K, 3)
    w = weights.to(torch.float64)
    cdf = w.cumsum(-1)
    total = cdf[..., -1:]
    y1 = torch.searchsorted(cdf, u[..., 0] * total, right=True).clamp_max_(R - 1)
    w1 = w.gather(-1, y1)
    before1 = cdf.gather(-1, y1) - w1
    v = u[..., 1] * (total - w1)
    v = torch.where(v >= before1, v + w1, v)                                   # skip y1's interval
    y2 = torch.searchsorted(cdf, v, right=True).clamp_max_(R - 1)
    ut = util.to(device=dev, dtype=torch.float64).expand(M, P, R)
    u1, u2 = ut.gather(-1, y1), ut.gather(-1, y2)
    first = u[..., 2] * (u1 + u2) < u1
    chosen, rejected = torch.where(first, y1, y2), torch.where(first, y2, y1)

    def back(t):
        return t.view(M, P, T, K).permute(2, 0, 1, 3)

    return back(chosen), back(rejected)


# ----------------------------------------------------------------------------- the methods
def method_losses(methods: Sequence[str], params: Mapping[str, Any] | None = None) -> list[tuple[L.Loss, dict]]:
    """``(Loss, checked parameters)`` per method (:data:`METHODS`). ``params`` holds the losses'
    parameters under the book's chapter names (:func:`prefdyn.losses.loss_params_from`: ``beta`` for
    DPO, IPO and SFT-DPO, ``beta_balanced`` for nbDPO, nbDPO v2 and bDPO, ``clip``, ``gamma``); a
    missing one takes the loss's default. An ablation (:data:`ABLATIONS`) gets its balanced method's loss."""
    params = dict(params or {})
    out = []
    for m in methods:
        check_choice("methods", m, [*METHODS, *ABLATIONS])
        loss_name, fixed = METHODS[ABLATIONS[m][0] if m in ABLATIONS else m]
        loss = L.get(loss_name)
        base = L.loss_params_from(params, [loss_name])[loss.name]
        out.append((loss, loss.check(**{**base, **fixed})))
    return out


# ----------------------------------------------------------------------------- training
def lr_name(method: str, scale: float) -> str:
    """The name of ``method`` trained at ``scale`` times the run's learning rate: ``method`` for 1,
    else ``"method@scale"`` (``"bdpo@0.3"``)."""
    return method if scale == 1.0 else f"{method}@{scale:g}"


@dataclass
class BenchRun:
    """The result of :func:`run_benchmark` (numpy, float64).

    ``probs [T, n_methods, n_pairs, n_masks, S, P, R]`` at the update counts ``steps`` after the
    reference (0 = the reference itself), for the pair samplings ``pairs``; ``ref_probs``/``init_probs
    [n_pairs, n_masks, S, P, R]``: the reference and the initial policy; ``masked [n_masks, S, P, R]``;
    ``util [P, R]``; ``grad_balance``: ``"a"`` and ``"b"`` ``[n_methods, n_pairs, n_masks, S]``, the means
    over all updates, prompts and pairs of ``|a| = |g+ - g-|/2`` and ``b = (g+ + g-)/2`` (``g = dl/dlog
    pi`` per pair, module docstring); ``lr_scale``: each method's factor on the run's learning rate.
    """

    methods: list[str]
    pairs: list[str]
    masks: list[float]
    seeds: list[int]
    steps: list[int]
    probs: np.ndarray
    ref_probs: np.ndarray
    init_probs: np.ndarray
    masked: np.ndarray
    util: np.ndarray
    grad_balance: dict[str, np.ndarray]
    settings: dict = field(default_factory=dict)
    lr_scale: dict[str, float] = field(default_factory=dict)

    def index(self, method: str) -> int:
        """The index of ``method`` along the methods axis."""
        check_choice("method", method, self.methods)
        return self.methods.index(method)

    def pairs_index(self, pairs: str) -> int:
        """The index of the pair sampling ``pairs`` along its axis."""
        check_choice("pairs", pairs, self.pairs)
        return self.pairs.index(pairs)

    def step_index(self, step: int) -> int:
        """The index of update count ``step`` along the steps axis."""
        check_choice("step", step, self.steps)
        return self.steps.index(step)


def _train(pol: BatchedPolicy, ref_logp: torch.Tensor, groups, *, seeds, member_seed, weights, util, steps: int,
           phase: int, optimizer: str, lr: float, pairs_per_prompt: int, record: Sequence[int], chunk: int = 100):
    """``steps`` updates of ``pol`` on fresh pairs; ``groups = [(slice, Loss, params)]`` cover the members
    in order. ``weights [D, P, R]`` and ``member_seed [D]`` describe the data of the first ``D`` members;
    member ``m`` sees the pairs of data row ``m % D`` (the methods of a mask and seed share their data).
    A group may carry a fourth element, an ablation mode with DPO's ``(Loss, params)``
    (:data:`ABLATIONS`, :func:`_groups`): its pair gradients ``g±`` become ``g± - b`` (``"a_only"``) or
    DPO's ``g±`` plus ``b`` (``"dpo_plus_b"``), ``b = (g+ + g-)/2`` of the group's loss. ``lr``: a
    number or one per member. Returns ({step: probs [M, P, R] float64} for the steps in ``record``,
    mean ``|a|`` and ``b`` per member). The backward pass is the toy trainer's: autograd through the loss on the gathered log-probs
    only, then the gather's scatter, the log-softmax backward and the policy's written-out
    vector-Jacobian product (:meth:`prefdyn.toy.BatchedPolicy.logits_and_vjp`)."""
    M, P, R = pol.members, pol.spec.n_prompts, pol.spec.n_responses
    K, dev, dt = pairs_per_prompt, pol.device, pol.dtype
    opt = make_optimizer(optimizer, pol.param_list(), lr)
    out: dict[int, torch.Tensor] = {}
    a_sum = torch.zeros(M, dtype=torch.float64, device=dev)
    b_sum = torch.zeros(M, dtype=torch.float64, device=dev)
    grads = [torch.empty_like(p).detach() for p in pol.param_list()]
    g_logp_t = torch.empty(R, M, P, dtype=dt, device=dev)                  # dl/dlog pi, responses first
    g_logp = g_logp_t.permute(1, 2, 0)
    work: dict = {}
    ones = torch.ones(M, dtype=dt, device=dev)
    scale = float(P * K)                                    # member loss = mean over its P*K pairs
    pairs, start, reps = None, 0, M // len(weights)
    for t in range(steps + 1):
        if t in record:
            with torch.no_grad():
                out[t] = torch.softmax(pol.forward().to(torch.float64), -1)
        if t == steps:
            break
        if pairs is None or t - start >= len(pairs):
            start = t
            span = torch.arange(t, min(t + chunk, steps))
            pairs = torch.cat(sample_pairs(seeds, member_seed, weights, util, span, K, phase), dim=3)
        idx = pairs[t - start].repeat(reps, 1, 1)                            # [M, P, 2K]: chosen, rejected
        with torch.no_grad():
            z, vjp = pol.logits_and_vjp(work)
            logp_t = torch.log_softmax(z.permute(2, 0, 1).contiguous(), dim=0)   # [R, M, P]: faster on the CPU
            logp = logp_t.permute(1, 2, 0)
            lp = logp.gather(2, idx)
            ref = ref_logp.gather(2, idx)
        with torch.enable_grad():
            lpg = lp.requires_grad_(True)
            per_pair = torch.cat([loss.fn(lpg[sl, :, :K], lpg[sl, :, K:], ref[sl, :, :K], ref[sl, :, K:], **kw)
                                  for sl, loss, kw, *_ in groups], dim=0)
            g_lp, = torch.autograd.grad(per_pair.mean(dim=(1, 2)), lpg, ones)
            for sl, _, _, *ablate in groups:
                if ablate and ablate[0] is not None:
                    _ablate(g_lp, lp, ref, sl, K, *ablate[0])
        with torch.no_grad():
            gp, gn = g_lp[..., :K], g_lp[..., K:]
            a_sum += (gp - gn).abs().mean(dim=(1, 2)) * (scale / 2)
            b_sum += (gp + gn).mean(dim=(1, 2)) * (scale / 2)
            g_logp_t.zero_()
            g_logp.scatter_add_(2, idx, g_lp)                                # the gather's backward
            g_z = torch._log_softmax_backward_data(g_logp_t, logp_t, 0, logp_t.dtype).permute(1, 2, 0)
            opt.step(vjp(g_z.contiguous(), out=grads))
    n = max(steps, 1)
    return out, (a_sum / n), (b_sum / n)


def _ablate(g_lp: torch.Tensor, lp: torch.Tensor, ref: torch.Tensor, sl: slice, K: int, mode: str,
            dpo: tuple[L.Loss, dict]) -> None:
    """Replace the pair gradients ``g_lp[sl] = [g+ | g-]`` in place by an ablation's (:func:`_train`)."""
    gp, gn = g_lp[sl, :, :K], g_lp[sl, :, K:]
    b = (gp + gn) / 2
    if mode == "a_only":
        g_lp[sl] = torch.cat([gp - b, gn - b], dim=-1)
        return
    loss, kw = dpo
    x = lp[sl].detach().requires_grad_(True)
    per_pair = loss.fn(x[..., :K], x[..., K:], ref[sl, :, :K], ref[sl, :, K:], **kw)
    g, = torch.autograd.grad(per_pair.mean(dim=(1, 2)).sum(), x)
    g_lp[sl] = g + torch.cat([b, b], dim=-1)


def _groups(losses: Sequence[tuple[L.Loss, dict]], per_method: int, methods: Sequence[str] | None = None,
            dpo: tuple[L.Loss, dict] | None = None) -> list[tuple]:
    """``[(slice, Loss, params, ablation)]``: ``per_method`` consecutive members per entry of ``losses``;
    ``ablation`` is ``None`` or ``(mode, DPO's (Loss, params))`` for the entries of ``methods`` that are
    :data:`ABLATIONS` (then ``dpo`` is needed)."""
    names = list(methods) if methods is not None else [None] * len(losses)
    out = []
    for i, ((loss, kw), m) in enumerate(zip(losses, names)):
        ab = (ABLATIONS[m][1], dpo) if m in ABLATIONS else None
        out.append((slice(i * per_method, (i + 1) * per_method), loss, kw, ab))
    return out


def run_benchmark(seeds=32, *, methods: Sequence[str] = tuple(METHODS), masks: Sequence[float] = PAPER_MASKS,
                  pairs: str | Sequence[str] = "uniform", alpha: float = 0.6, n: int = 20, policy: str = "tabular",
                  optimizer: str = "adam", lr: float = 0.01, pairs_per_prompt: int = 4, ref_steps: int = 300,
                  checkpoints: Sequence[int] = (100, 300, 1000), loss_params: Mapping[str, Any] | None = None,
                  mask_optimal: bool = True, hidden: int = 32, depth: int = 1, device="cpu",
                  dtype=torch.float32, threads: int | None = 1, lr_scales: Sequence[float] = (1.0,)) -> BenchRun:
    """004 Sec. 6.1 for every method, pair sampling, mask rate and seed in one batched computation.

    Phase 0: ``ref_steps`` DPO updates (``loss_params["beta"]``) of the ``pairs x masks x seeds``
    initial policies on their masked data, reference = the initial policy. Phase 1: every method
    (members = methods x pairs x masks x seeds, method-major) trains ``max(checkpoints)`` updates from
    that reference, with it as pi_ref. ``pairs``: one of :data:`PAIRINGS` or a list of them (batched
    together: they differ only in the data). ``checkpoints``: the update counts of phase 1 at which the
    policies are kept (0, the reference, is always kept). See the module docstring for the choices;
    ``loss_params`` as in :func:`method_losses`; ``hidden``, ``depth``: the MLP's width and number of
    hidden layers (:class:`prefdyn.toy.MLPPolicy`). ``methods`` may include :data:`ABLATIONS`.
    ``lr_scales``: phase 1 trains every method at ``lr`` times each scale (the reference always at
    ``lr``); the entries of ``run.methods`` are then :func:`lr_name` ``(method, scale)``, method-major, and
    ``run.lr_scale`` maps each to its scale. 1 must be among the scales (DPO at ``lr`` is the baseline).
    """
    methods = list(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods: expected a non-empty list of distinct names from {', '.join(METHODS)}, "
                         f"got {methods!r}")
    if "dpo" not in methods:
        raise ValueError("methods: expected a list that includes 'dpo' (the baseline of every comparison)")
    scales = [check_positive("lr_scales", x) for x in lr_scales]
    if 1.0 not in scales or len(set(scales)) != len(scales):
        raise ValueError(f"lr_scales: expected distinct positive factors that include 1, got {list(lr_scales)!r}")
    seed_t = as_seeds(seeds)
    check_int("n", n, 3)
    check_positive("alpha", alpha)
    check_choice("policy", policy, POLICIES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_positive("lr", lr)
    pairs = [pairs] if isinstance(pairs, str) else list(pairs)
    if not pairs or len(set(pairs)) != len(pairs):
        raise ValueError(f"pairs: expected one of {', '.join(PAIRINGS)} or a list of distinct ones, got {pairs!r}")
    for q in pairs:
        check_choice("pairs", q, PAIRINGS)
    check_int("pairs_per_prompt", pairs_per_prompt, 1)
    check_int("ref_steps", ref_steps, 0)
    check_int("hidden", hidden, 1)
    check_int("depth", depth, 1, 8)
    checkpoints = sorted({check_int("checkpoints", c, 1) for c in checkpoints})
    if not checkpoints:
        raise ValueError("checkpoints: expected at least one update count >= 1")
    masks = [float(m) for m in masks]
    if not masks or len(set(masks)) != len(masks):
        raise ValueError(f"masks: expected a non-empty list of distinct mask rates, got {masks!r}")
    losses = method_losses(methods, loss_params)
    dpo_loss = method_losses(["dpo"], loss_params)
    mask_t = cell_masks(seed_t, masks, n, mask_optimal=mask_optimal)          # [G, S, P, R]
    if threads is not None:
        check_int("threads", threads, 1)
    dev = resolve_device(device)
    spec = bench_spec(n)
    util = utility(n, alpha)
    names = [lr_name(m, x) for m in methods for x in scales]
    scale_of = {lr_name(m, x): x for m in methods for x in scales}
    losses = [lk for lk in losses for _ in scales]
    Q, G, S, C = len(pairs), len(masks), len(seed_t), len(names)
    D = Q * G * S                                                             # data rows: pairs x masks x seeds
    seed_index = torch.arange(S).repeat(Q * G)                                # data row -> seed
    unmasked = (~mask_t).to(torch.float64).expand(Q, G, S, n, n).reshape(D, n, n).to(dev)
    from_ref = torch.tensor([q == "reference" for q in pairs], device=dev).repeat_interleave(G * S).view(D, 1, 1)

    def weights(logp):
        return unmasked * torch.where(from_ref, logp.exp().to(torch.float64), torch.ones((), dtype=torch.float64))

    common = dict(seeds=seed_t, member_seed=seed_index, util=util, optimizer=optimizer, lr=lr,
                  pairs_per_prompt=pairs_per_prompt)
    with cpu_settings(threads if dev.type == "cpu" else None, flush_denormal=dev.type == "cpu"):
        pol0 = make_policy(policy, spec, seed_t[seed_index], hidden=hidden, depth=depth, device=dev, dtype=dtype)
        with torch.no_grad():
            init_logp = pol0.log_probs().detach()
        rec0, _, _ = _train(pol0, init_logp, _groups(dpo_loss, D), weights=weights(init_logp), steps=ref_steps,
                            phase=0, record=[0, ref_steps], **common)
        with torch.no_grad():
            ref_logp = pol0.log_probs().detach()
        pol = make_policy(policy, spec, seed_t[seed_index].repeat(C), hidden=hidden, depth=depth, device=dev,
                          dtype=dtype)
        pol.load_flat(pol0.flat().repeat(C, 1))
        lr1 = torch.tensor([lr * scale_of[m] for m in names], dtype=dtype, device=dev).repeat_interleave(D)
        rec1, a, b = _train(pol, ref_logp.repeat(C, 1, 1), _groups(losses, D, [m.split("@")[0] for m in names],
                                                                   dpo_loss[0]),
                            weights=weights(ref_logp), steps=max(checkpoints), phase=1, record=[0, *checkpoints],
                            **{**common, "lr": lr1})
    steps_out = [0, *checkpoints]
    probs = torch.stack([rec1[s] for s in steps_out]).cpu().numpy().reshape(len(steps_out), C, Q, G, S, n, n)
    settings = dict(policy=policy, optimizer=optimizer, lr=lr, pairs=pairs, pairs_per_prompt=pairs_per_prompt,
                    ref_steps=ref_steps, alpha=alpha, n=n, mask_optimal=mask_optimal, hidden=hidden, depth=depth,
                    device=dev.type, dtype=str(dtype).replace("torch.", ""),
                    loss_params={m: dict(kw) for m, (_, kw) in zip(names, losses)})
    return BenchRun(methods=names, lr_scale=scale_of, pairs=pairs, masks=masks, seeds=seed_t.tolist(), steps=steps_out,
                    probs=probs, ref_probs=rec0[ref_steps].cpu().numpy().reshape(Q, G, S, n, n),
                    init_probs=rec0[0].cpu().numpy().reshape(Q, G, S, n, n),
                    masked=mask_t.numpy(), util=util.numpy(),
                    grad_balance={k: v.cpu().numpy().reshape(C, Q, G, S) for k, v in (("a", a), ("b", b))},
                    settings=settings)


# ----------------------------------------------------------------------------- metrics and statistics
def metrics(run: BenchRun, probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:data:`METRICS` of ``probs`` (default ``run.probs``; any ``[..., G, S, P, R]`` whose last four axes
    are the masks, seeds, prompts and responses of ``run``): each ``[..., G, S]``, averaged over the
    prompts (``utility_sum``: summed)."""
    p = run.probs if probs is None else np.asarray(probs, dtype=np.float64)
    eu = (p * run.util).sum(-1)                                               # [..., G, S, P]
    keep = p * ~run.masked
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = (keep * run.util).sum(-1) / keep.sum(-1)
    return {"utility": eu.mean(-1), "utility_sum": eu.sum(-1),
            "p_optimal": np.diagonal(p, axis1=-2, axis2=-1).mean(-1),
            "masked_mass": (p * run.masked).sum(-1).mean(-1), "utility_unmasked": cond.mean(-1)}


def compare_rows(values: np.ndarray, methods: Sequence[str], masks: Sequence[float], *, baseline: str = "dpo",
                 meta: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per method and mask rate from ``values [n_methods, n_masks, S]`` (one number per seed):
    ``{method, mask, **meta, mean, std, n, delta_vs_dpo, p_value, p_holm, wins, losses}``.

    ``delta_vs_dpo``: the relative change of the mean against the baseline's (``mean / mean_dpo - 1``);
    ``p_value``: the paired two-sided Wilcoxon signed-rank test against the baseline over the seeds
    (:func:`prefdyn.stats.paired_test`, the seeds are paired by common random numbers); ``p_holm``: Holm's
    adjustment over all the comparisons of this call (every method but the baseline x every mask);
    ``wins``/``losses``: seeds where the method is above / below the baseline. The baseline's own rows
    have ``None`` there."""
    values = np.asarray(values, dtype=np.float64)
    methods = list(methods)
    b = methods.index(baseline)
    rows, pv = [], []
    for j, mask in enumerate(masks):
        base = values[b, j]
        for i, m in enumerate(methods):
            x = values[i, j]
            row = {"method": m, "mask": float(mask), **dict(meta or {}), "mean": float(x.mean()),
                   "std": float(x.std(ddof=1)) if x.size > 1 else float("nan"), "n": int(x.size)}
            if i == b:
                row.update(delta_vs_dpo=0.0, p_value=None, p_holm=None, wins=None, losses=None)
            else:
                t = stats.paired_test(x, base)
                rel = float(x.mean() / base.mean() - 1.0) if base.mean() != 0 else float("nan")
                row.update(delta_vs_dpo=rel, p_value=t["p_value"],
                           p_holm=None, wins=t["wins"], losses=t["losses"])
                pv.append((len(rows), t["p_value"]))
            rows.append(row)
    adj = stats.holm([p for _, p in pv])
    for (k, _), q in zip(pv, adj):
        rows[k]["p_holm"] = float(q)
    return rows


def paper_relative() -> dict[str, list[float]]:
    """004 Table 1 as relative changes against its baseline (DPO), per mask rate of :data:`PAPER_MASKS`."""
    base = PAPER_TABLE1["dpo"]
    return {m: [v / b - 1.0 for v, b in zip(vals, base)] for m, vals in PAPER_TABLE1.items()}


def mask_effect(values: np.ndarray, methods: Sequence[str], masks: Sequence[float], *, low: float = 0.0,
                high: float = 0.4) -> dict[str, dict[str, float]]:
    """Per method, the metric at mask rate ``high`` against ``low`` over the same seeds (paired Wilcoxon,
    Holm over the methods): ``{method: {"diff", "p_value", "p_holm", "lower"}}``, ``lower`` = significantly
    lower at ``high`` (Holm p < 0.05). 004 Sec. 6.1.2 claims a higher mask rate does not necessarily lower
    the reward."""
    masks = [float(m) for m in masks]
    check_choice("low", float(low), masks)
    check_choice("high", float(high), masks)
    j0, j1 = masks.index(float(low)), masks.index(float(high))
    tests = {m: stats.paired_test(values[i, j1], values[i, j0]) for i, m in enumerate(methods)}
    adj = stats.holm([t["p_value"] for t in tests.values()])
    return {m: {"diff": t["mean_diff"], "p_value": t["p_value"], "p_holm": float(q),
                "lower": bool(q < 0.05 and t["mean_diff"] < 0)} for (m, t), q in zip(tests.items(), adj)}


#: The claims of 004 Sec. 6.1.2 (and Sec. 4.3.3 on the OOD cells) that :func:`claims` decides.
CLAIMS = {
    "most_beat_dpo": "most of the five balanced methods beat DPO at every mask rate",
    "nbdpo_sym_best": "symmetric nbDPO is the best method at every mask rate",
    "bdpo_beats_dpo": "bDPO beats DPO at every mask rate",
    "v2_worse_than_v1": "nbDPO v2 is below nbDPO (v1), asym and sym, at every mask rate",
    "mask_some_not_worse": "some method of Table 1 is higher at a mask rate of 0.4 than at 0, and not "
                           "significantly lower (004's existence reading)",
    "mask_not_worse": "no method of Table 1 is significantly worse at a mask rate of 0.4 than at 0 (the "
                      "strong reading)",
    "no_ood_growth": "DPO's mass on the masked cells does not grow beyond the reference's",
}


def claims(rows: Sequence[Mapping[str, Any]], values: np.ndarray, methods: Sequence[str], masks: Sequence[float],
           masked_mass: np.ndarray, ref_masked_mass: np.ndarray, level: float = 0.05) -> dict[str, bool]:
    """The verdict on each of :data:`CLAIMS` for one setting and checkpoint.

    ``rows``: :func:`compare_rows` of ``values [n_methods, n_masks, S]``; "beats" = higher mean and Holm
    p < ``level``; v2 vs v1 by paired Wilcoxon tests (Holm over the asym/sym x mask comparisons);
    ``masked_mass [n_methods, n_masks, S]`` and ``ref_masked_mass [n_masks, S]``: DPO's masked mass is
    compared with the reference's over the masks with masked cells (paired, Holm); the mask rates 0.4 and
    0 by :func:`mask_effect` over the methods of Table 1, in two readings of 004's "a higher mask rate does
    not necessarily lead to worse results": some method is higher at 0.4 and not significantly lower
    (existence), and no method is significantly lower (the strong reading)."""
    methods = list(methods)
    masks = [float(m) for m in masks]
    by = {(r["method"], r["mask"]): r for r in rows}
    balanced = [m for m in PAPER_METHODS if m != "dpo" and m in methods]

    def beats(m, mask):
        r = by[(m, mask)]
        return r["p_holm"] is not None and r["p_holm"] < level and r["delta_vs_dpo"] > 0

    out: dict[str, bool] = {}
    if balanced:
        out["most_beat_dpo"] = all(sum(beats(m, k) for m in balanced) > len(balanced) / 2 for k in masks)
    if "nbdpo_sym" in methods:
        out["nbdpo_sym_best"] = all(max(methods, key=lambda m: by[(m, k)]["mean"]) == "nbdpo_sym" for k in masks)
    if "bdpo" in methods:
        out["bdpo_beats_dpo"] = all(beats("bdpo", k) for k in masks)
    pairs = [(v2, v1) for v2, v1 in (("nbdpo_v2_asym", "nbdpo_asym"), ("nbdpo_v2_sym", "nbdpo_sym"))
             if v2 in methods and v1 in methods]
    if pairs:
        tests = [stats.paired_test(values[methods.index(v2), j], values[methods.index(v1), j])
                 for v2, v1 in pairs for j in range(len(masks))]
        adj = stats.holm([t["p_value"] for t in tests])
        out["v2_worse_than_v1"] = all(q < level and t["mean_diff"] < 0 for t, q in zip(tests, adj))
    table1 = [m for m in PAPER_METHODS if m in methods]
    if 0.0 in masks and 0.4 in masks:
        idx = [methods.index(m) for m in table1]
        eff = mask_effect(values[idx], table1, masks)
        out["mask_some_not_worse"] = any(e["diff"] > 0 and not e["lower"] for e in eff.values())
        out["mask_not_worse"] = not any(e["lower"] for e in eff.values())
    d = methods.index("dpo")
    js = [j for j, k in enumerate(masks) if k > 0]
    if js:
        tests = [stats.paired_test(masked_mass[d, j], ref_masked_mass[j]) for j in js]
        adj = stats.holm([t["p_value"] for t in tests])
        out["no_ood_growth"] = not any(q < level and t["mean_diff"] > 0 for t, q in zip(tests, adj))
    return out


# ----------------------------------------------------------------------------- the grid of open choices
#: The (policy, optimiser) runs of the sensitivity grid; each run holds both pair samplings.
SETTINGS: tuple[tuple[str, str], ...] = (("tabular", "adam"), ("tabular", "sgd"), ("mlp", "adam"), ("mlp", "sgd"))


def cell_label(policy: str, optimizer: str, pairs: str, step: int | None = None) -> str:
    """``"tabular/adam/uniform"`` (``/300`` with a step): the name of one cell of the grid."""
    return f"{policy}/{optimizer}/{pairs}" + ("" if step is None else f"/{step}")


def run_settings(lrs: Mapping[tuple[str, str], float], *, seeds, sensitivity_seeds, primary: tuple[str, str],
                 pairs: Sequence[str] = PAIRINGS, **kwargs) -> dict[tuple[str, str], BenchRun]:
    """:func:`run_benchmark` for every ``(policy, optimizer)`` of ``lrs`` (its learning rate), each with
    all ``pairs``: the ``primary`` one with ``seeds``, the others with ``sensitivity_seeds``. ``kwargs``
    go to every run. All arguments are checked before the first run."""
    lrs = dict(lrs)
    if not lrs:
        raise ValueError("lrs: expected at least one (policy, optimizer) with its learning rate")
    for (policy, optimizer), lr in lrs.items():
        check_choice("policy", policy, POLICIES)
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_positive("lr", lr)
    check_choice("primary", tuple(primary), list(lrs))
    seeds, sensitivity_seeds = as_seeds(seeds), as_seeds(sensitivity_seeds)
    return {key: run_benchmark(seeds if key == tuple(primary) else sensitivity_seeds, policy=key[0],
                               optimizer=key[1], lr=lr, pairs=pairs, **kwargs) for key, lr in lrs.items()}


def _cells(runs: Mapping[tuple[str, str], BenchRun]):
    """``(label meta, run, pairs index, step index)`` for every cell of the grid with a step > 0."""
    for (policy, optimizer), run in runs.items():
        for q, pq in enumerate(run.pairs):
            for ti, step in enumerate(run.steps):
                if step > 0:
                    yield dict(policy=policy, optimizer=optimizer, pairs=pq, step=step), run, q, ti


def grid_rows(runs: Mapping[tuple[str, str], BenchRun], metric: str = "utility") -> list[dict[str, Any]]:
    """:func:`compare_rows` of ``metric`` (:data:`METRICS`) for every cell of the grid: rows
    ``{method, mask, policy, optimizer, pairs, step, mean, std, n, delta_vs_dpo, p_value, p_holm, wins,
    losses}``, Holm over the comparisons of each cell (methods x masks)."""
    check_choice("metric", metric, METRICS)
    rows: list[dict[str, Any]] = []
    cache: dict[int, dict[str, np.ndarray]] = {}
    for meta, run, q, ti in _cells(runs):
        vals = cache.setdefault(id(run), metrics(run))[metric]
        rows += compare_rows(vals[ti, :, q], run.methods, run.masks, meta=meta)
    return rows


def grid_claims(runs: Mapping[tuple[str, str], BenchRun], rows: Sequence[Mapping[str, Any]] | None = None,
                level: float = 0.05) -> dict[str, dict[str, bool]]:
    """:func:`claims` for every cell of the grid, keyed by :func:`cell_label` with the step. ``rows``: the
    grid's :func:`grid_rows` of the utility, if already computed."""
    rows = grid_rows(runs) if rows is None else rows
    by_cell: dict[str, list] = {}
    for r in rows:
        by_cell.setdefault(cell_label(r["policy"], r["optimizer"], r["pairs"], r["step"]), []).append(r)
    out = {}
    cache: dict[int, dict[str, np.ndarray]] = {}
    for meta, run, q, ti in _cells(runs):
        m = cache.setdefault(id(run), metrics(run))
        label = cell_label(**meta)
        ref_mass = m["masked_mass"][0, run.index("dpo"), q]
        out[label] = claims(by_cell[label], m["utility"][ti, :, q], run.methods, run.masks,
                            m["masked_mass"][ti, :, q], ref_mass, level)
    return out


def where_holds(grid: Mapping[str, Mapping[str, bool]], claim: str) -> dict[str, Any]:
    """In how many cells of :func:`grid_claims` ``claim`` holds, and which (labels)."""
    check_choice("claim", claim, CLAIMS)
    cells = [label for label, c in grid.items() if claim in c]
    holds = [label for label in cells if grid[label][claim]]
    return {"n_cells": len(cells), "n_holds": len(holds), "cells": holds}


def significant(rows: Sequence[Mapping[str, Any]], level: float = 0.05, *, better: bool = True) -> list[dict]:
    """The rows of :func:`compare_rows` / :func:`grid_rows` significantly above (``better``) or below DPO
    (Holm p < ``level``)."""
    return [dict(r) for r in rows if r["p_holm"] is not None and r["p_holm"] < level
            and (r["delta_vs_dpo"] > 0 if better else r["delta_vs_dpo"] < 0)]


def mechanism_check(runs: Mapping[tuple[str, str], BenchRun], rows: Sequence[Mapping[str, Any]] | None = None,
                    level: float = 0.05) -> dict[str, Any]:
    """Where a method beats DPO on the expected utility (Holm p < ``level``), does it also keep less mass
    on the masked cells, and does it beat DPO on the unmasked cells alone (``utility_unmasked``)? Counts
    over the whole grid (every setting, sampling, checkpoint and mask rate), and the number of
    significant wins and losses on ``utility_unmasked`` anywhere. ``rows``: the grid's
    :func:`grid_rows` of the utility, if already computed."""
    keys = ("policy", "optimizer", "pairs", "step", "method", "mask")
    util = significant(grid_rows(runs, "utility") if rows is None else rows, level)
    unmasked = grid_rows(runs, "utility_unmasked")
    mass = {tuple(r[k] for k in keys): r for r in grid_rows(runs, "masked_mass")}
    by = {tuple(r[k] for k in keys): r for r in unmasked}
    on_masks = [r for r in util if r["mask"] > 0]
    lower_mass = sum(mass[tuple(r[k] for k in keys)]["delta_vs_dpo"] < 0 for r in on_masks)
    unmasked_wins = significant(unmasked, level)
    also = sum(any(tuple(w[k] for k in keys) == tuple(r[k] for k in keys) for w in unmasked_wins) for r in util)
    steps = sorted({r["step"] for r in unmasked})
    pairs = list(dict.fromkeys(r["pairs"] for r in unmasked))

    def count(rs, key, values):
        return {str(v): sum(r[key] == v for r in rs) for v in values}

    return {"utility_wins": len(util), "utility_wins_with_masks": len(on_masks),
            "with_less_masked_mass": int(lower_mass),
            "utility_wins_by_step": count(util, "step", steps), "utility_wins_by_pairs": count(util, "pairs", pairs),
            "unmasked_wins_by_step": count(unmasked_wins, "step", steps),
            "unmasked_wins_by_pairs": count(unmasked_wins, "pairs", pairs),
            "also_win_on_unmasked_cells": int(also), "unmasked_wins_anywhere": len(unmasked_wins),
            "unmasked_losses_anywhere": len(significant(unmasked, level, better=False)),
            "unmasked_comparisons": sum(r["p_holm"] is not None for r in unmasked),
            "mean_unmasked_delta_at_wins": float(np.mean([by[tuple(r[k] for k in keys)]["delta_vs_dpo"]
                                                          for r in util])) if util else float("nan")}


def balance(run: BenchRun) -> dict[str, dict[str, dict[str, float]]]:
    """Per pair sampling and method: the mean over members of ``a = |g+ - g-|/2`` and ``b = (g+ + g-)/2``
    (``g = dl/dlog pi`` per pair, means over updates, prompts and pairs) and ``b / a``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for q, pq in enumerate(run.pairs):
        out[pq] = {}
        for i, m in enumerate(run.methods):
            a, b = float(run.grad_balance["a"][i, q].mean()), float(run.grad_balance["b"][i, q].mean())
            out[pq][m] = {"a": a, "b": b, "b_over_a": b / a if a else float("nan")}
    return out


def reward_scale(run: BenchRun, pairs: str | None = None) -> dict[str, Any]:
    """004's "reward" scale against the sum reading: the expected utility summed over the prompts of the
    uniform policy, of the initial policy, of the reference and of DPO at each checkpoint (means over
    masks and seeds), with 004 Table 1's smallest and largest values and its largest DPO value; whether
    004's values lie between the uniform policy and DPO at the last checkpoint, and whether 004's DPO
    row lies below the reference."""
    q = run.pairs_index(pairs or run.pairs[0])
    n = run.util.shape[0]
    uniform = float(run.util.sum() / n)                                      # sum over x of the mean over y
    dpo = run.index("dpo")
    m = metrics(run)["utility_sum"]
    paper = [v for vals in PAPER_TABLE1.values() for v in vals]
    last, ref = float(m[-1, dpo, q].mean()), float(m[0, dpo, q].mean())
    return {"max": float(n), "uniform_policy": uniform,
            "initial": float(metrics(run, run.init_probs)["utility_sum"][q].mean()),
            "reference": ref,
            "dpo": {str(s): float(m[ti, dpo, q].mean()) for ti, s in enumerate(run.steps) if s > 0},
            "paper_min": min(paper), "paper_max": max(paper), "paper_dpo_max": max(PAPER_TABLE1["dpo"]),
            "paper_within_uniform_and_last_checkpoint": bool(uniform < min(paper) and max(paper) < last),
            "paper_dpo_below_reference": bool(max(PAPER_TABLE1["dpo"]) < ref)}


def data_utility(run: BenchRun) -> dict[str, np.ndarray]:
    """The expected utility of the data each member is trained on, exactly (no sampling): per pair
    sampling ``[n_pairs, n_masks, S]`` (means over prompts), of a sampled response (``"sampled"``), of the
    chosen and of the rejected response of a pair (``"chosen"``, ``"rejected"``). A pair is ``(i, j)``
    with probability ``w_i w_j / (1 - w_i)`` (:func:`sample_pairs`: ``w`` = the normalised weights,
    uniform or pi_ref on the unmasked cells), ``i`` is chosen with probability ``u_i / (u_i + u_j)``.
    The SFT-like part of a balanced loss pulls the policy towards these responses (module docstring)."""
    un = ~run.masked                                                          # [G, S, P, R]
    out = {"sampled": [], "chosen": [], "rejected": []}
    u = run.util
    ui, uj = u[:, :, None], u[:, None, :]
    win_u = (ui * ui + uj * uj) / (ui + uj)                                   # E[u(chosen) | pair], [P, R, R]
    lose_u = ui + uj - win_u
    for q, pq in enumerate(run.pairs):
        w = un * (run.ref_probs[q] if pq == "reference" else 1.0)
        w = w / w.sum(-1, keepdims=True)
        pair = w[..., :, None] * w[..., None, :] / (1.0 - w[..., :, None])
        pair = pair * (1.0 - np.eye(u.shape[0]))                              # i != j
        out["sampled"].append((w * u).sum(-1).mean(-1))
        out["chosen"].append((pair * win_u).sum((-1, -2)).mean(-1))
        out["rejected"].append((pair * lose_u).sum((-1, -2)).mean(-1))
    return {k: np.stack(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- tables for the chapter
def _pct(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:+.1f}%"


def mean_table(rows: Sequence[Mapping[str, Any]], masks: Sequence[float], **kwargs) -> Table:
    """Methods down, mask rates across: the mean of each row of :func:`compare_rows` (one cell)."""
    by = {(r["method"], r["mask"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    return Table([f"mask {m:g}" for m in masks],
                 [(METHOD_LABELS.get(m, m), [by[(m, float(k))]["mean"] for k in masks]) for m in methods],
                 corner="method", **kwargs)


def delta_table(rows: Sequence[Mapping[str, Any]], masks: Sequence[float], **kwargs) -> Table:
    """Methods down, mask rates across: ``Δ vs DPO, Holm p, wins/n`` of each row of :func:`compare_rows`."""
    by = {(r["method"], r["mask"]): r for r in rows}
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if by[(m, float(masks[0]))]["p_holm"] is not None]

    def cell(r):
        return f"{_pct(r['delta_vs_dpo'])}, p {r['p_holm']:.1g}, {r['wins']}/{r['n']}"

    return Table([f"mask {m:g}" for m in masks],
                 [(METHOD_LABELS.get(m, m), [cell(by[(m, float(k))]) for k in masks]) for m in methods],
                 corner="method", **kwargs)


def paper_table(rows: Sequence[Mapping[str, Any]], **kwargs) -> Table:
    """004 Table 1 beside ours, as relative changes against DPO at 004's mask rates: ours from the rows of
    one cell (:func:`compare_rows`); a method 004 does not run, or a mask rate we did not run, is ``-``."""
    by = {(r["method"], r["mask"]): r for r in rows}
    paper = paper_relative()
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dpo"]
    cols, body = [], []
    for k in PAPER_MASKS:
        cols += [f"004, {k:g}", f"ours, {k:g}"]
    for m in methods:
        cells = []
        for j, k in enumerate(PAPER_MASKS):
            ours = by.get((m, k))
            cells += [_pct(paper[m][j]) if m in paper else "-", _pct(ours["delta_vs_dpo"]) if ours else "-"]
        body.append((METHOD_LABELS.get(m, m), cells))
    return Table(cols, body, corner="method (change vs DPO at mask rate)", max_cols=6, **kwargs)


def sensitivity_table(rows: Sequence[Mapping[str, Any]], level: float = 0.05, **kwargs) -> Table:
    """Cells of the grid down, methods across: ``wins-losses`` = the number of mask rates at which the
    method is significantly above / below DPO (Holm p < ``level``) in that cell (:func:`grid_rows`)."""
    cells: dict[str, dict[str, list[int]]] = {}
    methods: list[str] = []
    for r in rows:
        if r["p_holm"] is None:
            continue
        label = cell_label(r["policy"], r["optimizer"], r["pairs"], r["step"])
        c = cells.setdefault(label, {})
        if r["method"] not in methods:
            methods.append(r["method"])
        wl = c.setdefault(r["method"], [0, 0])
        if r["p_holm"] < level:
            wl[0 if r["delta_vs_dpo"] > 0 else 1] += 1
    return Table([METHOD_LABELS.get(m, m) for m in methods],
                 [(label, [f"{c[m][0]}-{c[m][1]}" for m in methods]) for label, c in cells.items()],
                 corner="policy/optimiser/pairs/update", **kwargs)


def reference_table(runs: Mapping[tuple[str, str], BenchRun], **kwargs) -> Table:
    """The expected utility of the initial policy and of the reference (means over seeds), per run and
    pair sampling (rows) and mask rate (columns)."""
    body = []
    for (policy, optimizer), run in runs.items():
        ref = metrics(run, run.ref_probs)["utility"].mean(-1)                 # [Q, G]
        init = metrics(run, run.init_probs)["utility"].mean(-1)
        for q, pq in enumerate(run.pairs):
            body.append((cell_label(policy, optimizer, pq), [float(init[q].mean()), *map(float, ref[q])]))
    masks = next(iter(runs.values())).masks
    return Table(["initial", *[f"ref., mask {m:g}" for m in masks]], body, corner="policy/optimiser/pairs",
                 **kwargs)


def balance_table(run: BenchRun, **kwargs) -> Table:
    """:func:`balance` as a table: methods down; ``a`` and ``b`` for each pair sampling across."""
    bal = balance(run)
    cols = [f"{k} ({pq})" for pq in run.pairs for k in ("a", "b")]
    return Table(cols, [(METHOD_LABELS.get(m, m), [bal[pq][m][k] for pq in run.pairs for k in ("a", "b")])
                        for m in run.methods], corner="method", **kwargs)


def data_table(run: BenchRun, **kwargs) -> Table:
    """:func:`data_utility` beside the reference's expected utility: pair samplings down (means over
    masks and seeds)."""
    d = data_utility(run)
    ref = metrics(run, run.ref_probs)["utility"]
    return Table(["reference policy", "sampled response", "chosen response", "rejected response"],
                 [(pq, [float(ref[q].mean()), float(d["sampled"][q].mean()), float(d["chosen"][q].mean()),
                        float(d["rejected"][q].mean())]) for q, pq in enumerate(run.pairs)],
                 corner="pairs", **kwargs)


def trajectory_table(runs: Mapping[tuple[str, str], BenchRun], metric: str, methods: Sequence[str],
                     mask: float, pairs: str, **kwargs) -> Table:
    """``metric`` (means over seeds) at every kept update count (columns; 0 = the reference), for each run
    and method (rows), at one mask rate and pair sampling."""
    check_choice("metric", metric, METRICS)
    body, steps = [], None
    for (policy, optimizer), run in runs.items():
        j, q = run.masks.index(float(mask)), run.pairs_index(pairs)
        vals = metrics(run)[metric][:, :, q, j].mean(-1)                      # [T, C]
        steps = run.steps
        for m in methods:
            body.append((f"{policy}/{optimizer}, {METHOD_LABELS.get(m, m)}", [float(v) for v in vals[:, run.index(m)]]))
    return Table([f"update {s}" for s in steps], body, corner=f"{pairs} pairs, mask {mask:g}", **kwargs)


def claim_table(grid: Mapping[str, Mapping[str, bool]], claim: str, **kwargs) -> Table:
    """Where ``claim`` holds in :func:`grid_claims`: policy/optimiser/pairs down, updates across."""
    check_choice("claim", claim, CLAIMS)
    rows: dict[str, dict[str, bool]] = {}
    for label, c in grid.items():
        head, step = label.rsplit("/", 1)
        rows.setdefault(head, {})[step] = c.get(claim)
    steps = list(dict.fromkeys(s for r in rows.values() for s in r))
    return Table([f"update {s}" for s in steps], [(h, [r.get(s) for s in steps]) for h, r in rows.items()],
                 corner="policy/optimiser/pairs", **kwargs)


#: The counts of :func:`mechanism_check` shown by :func:`mechanism_tables`, in words.
MECHANISM_LABELS = {
    "utility_wins": "wins over DPO (expected utility)",
    "utility_wins_with_masks": "... of them with masked cells",
    "with_less_masked_mass": "... of those with less masked mass",
    "also_win_on_unmasked_cells": "wins that hold on the unmasked cells",
    "unmasked_wins_anywhere": "wins on the unmasked cells anywhere",
    "unmasked_losses_anywhere": "losses on the unmasked cells",
    "unmasked_comparisons": "comparisons on the unmasked cells",
}


def mechanism_tables(mech: Mapping[str, Any]) -> tuple[Table, Table]:
    """:func:`mechanism_check` as two tables: the counts (:data:`MECHANISM_LABELS`), and the significant
    wins on the expected utility and on the unmasked cells by update and by pair sampling."""
    counts = Table(["count"], [(label, [mech[k]]) for k, label in MECHANISM_LABELS.items()],
                   corner="over the grid (Holm p < 0.05)")

    def by(kind):
        return [*mech[f"{kind}_by_step"].values(), *mech[f"{kind}_by_pairs"].values()]

    cols = [*(f"update {s}" for s in mech["utility_wins_by_step"]),
            *(f"{p} pairs" for p in mech["utility_wins_by_pairs"])]
    where = Table(cols, [("wins (expected utility)", by("utility_wins")),
                         ("wins (unmasked cells)", by("unmasked_wins"))], corner="where the wins are")
    return counts, where


# ----------------------------------------------------------------------------- learning rates, masks, a and b
def best_lr_rows(run: BenchRun, metric: str = "utility") -> list[dict[str, Any]]:
    """Every method at its best learning rate of a run with several ``lr_scales``: per pair sampling and
    checkpoint, each method's scale is the one with the highest mean of ``metric`` over masks and seeds
    (DPO's too), and :func:`compare_rows` compares the methods at their best scales with DPO at its best
    (rows get ``policy``, ``optimizer``, ``pairs``, ``step`` and ``lr_scale``; ``dpo_lr_scale``: DPO's). The scale is chosen on the
    same seeds as the test, for every method alike."""
    check_choice("metric", metric, METRICS)
    base = list(dict.fromkeys(m.split("@")[0] for m in run.methods))
    vals = metrics(run)[metric]                                               # [T, C, Q, G, S]
    rows: list[dict[str, Any]] = []
    for q, pq in enumerate(run.pairs):
        for ti, step in enumerate(run.steps):
            if step == 0:
                continue
            best = {}
            for m in base:
                cand = [i for i, name in enumerate(run.methods) if name.split("@")[0] == m]
                best[m] = max(cand, key=lambda i: vals[ti, i, q].mean())
            meta = dict(policy=run.settings.get("policy"), optimizer=run.settings.get("optimizer"), pairs=pq,
                        step=step)
            out = compare_rows(np.stack([vals[ti, best[m], q] for m in base]), base, run.masks, meta=meta)
            for r in out:
                r["lr_scale"] = run.lr_scale.get(run.methods[best[r["method"]]], 1.0)
                r["dpo_lr_scale"] = run.lr_scale.get(run.methods[best["dpo"]], 1.0)
            rows += out
    return rows


def lr_means_table(run: BenchRun, step: int, metric: str = "utility", **kwargs) -> Table:
    """Methods down; pair sampling x learning-rate scale across: the mean of ``metric`` over masks and
    seeds at checkpoint ``step`` of a run with several ``lr_scales``."""
    ti = run.step_index(step)
    vals = metrics(run)[metric][ti]                                           # [C, Q, G, S]
    base = list(dict.fromkeys(m.split("@")[0] for m in run.methods))
    scales = sorted(set(run.lr_scale.values()))
    idx = {name: i for i, name in enumerate(run.methods)}
    cols = [f"{pq}, x{x:g}" for pq in run.pairs for x in scales]
    body = [(METHOD_LABELS.get(m, m), [float(vals[idx[lr_name(m, x)], q].mean())
                                       for q in range(len(run.pairs)) for x in scales]) for m in base]
    return Table(cols, body, corner=f"method (update {step})", max_cols=3, **kwargs)


def mask_effect_table(variants: Mapping[str, tuple[BenchRun, int]], methods: Sequence[str] = PAPER_METHODS,
                      low: float = 0.0, high: float = 0.4, **kwargs) -> tuple[Table, dict[str, Any]]:
    """The expected utility at mask rate ``high`` minus ``low`` (mean over seeds), with the Holm-adjusted
    p of the paired test (:func:`mask_effect`), per method (columns) and per variant and pair sampling
    (rows). ``variants``: ``{label: (run, step)}`` (e.g. the optimal cell maskable or never masked).
    Also returns the numbers (``{label/pairs: {method: {diff, p_holm, lower}}}``)."""
    body, out = [], {}
    for label, (run, step) in variants.items():
        ti = run.step_index(step)
        vals = metrics(run)["utility"][ti]                                    # [C, Q, G, S]
        idx = [run.index(m) for m in methods]
        for q, pq in enumerate(run.pairs):
            eff = mask_effect(vals[idx, q], list(methods), run.masks, low=low, high=high)
            out[f"{label}/{pq}"] = eff
            body.append((f"{label}, {pq}", [f"{e['diff']:+.4f} (p {e['p_holm']:.1g})" for e in eff.values()]))
    return Table([METHOD_LABELS.get(m, m) for m in methods], body, corner=f"mask {high:g} minus {low:g}",
                 max_cols=3, **kwargs), out


def balance_grid_table(runs: Mapping[str, BenchRun], methods: Sequence[str] | None = None, **kwargs) -> Table:
    """``|a| / b`` (:func:`balance`, means over updates, prompts, pairs, masks and seeds) for every run
    (``{label: run}``) and pair sampling (rows) and method (columns)."""
    body, cols = [], None
    for label, run in runs.items():
        ms = [m for m in (methods or run.methods) if m in run.methods]
        cols = cols or ms
        bal = balance(run)
        for pq in run.pairs:
            body.append((f"{label}/{pq}", [f"{bal[pq][m]['a']:.3f} / {round(bal[pq][m]['b'], 3) + 0.0:+.3f}" if m in bal[pq]
                                           else "-" for m in cols]))
    return Table([METHOD_LABELS.get(m, m) for m in cols], body, corner="run/pairs: |a| / b", max_cols=4, **kwargs)


def grid_tests(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How many paired tests the rows of :func:`grid_rows` hold, in how many cells (the Holm families),
    and the seeds per cell (``n`` of the rows)."""
    tested = [r for r in rows if r["p_value"] is not None]
    cells = {cell_label(r["policy"], r["optimizer"], r["pairs"], r["step"]) for r in tested}
    return {"tests": len(tested), "cells": len(cells), "seeds": sorted({int(r["n"]) for r in tested})}
