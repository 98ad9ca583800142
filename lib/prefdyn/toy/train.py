"""Training on the toy: step 1 (SFT to a target distribution) and step 2 (preference optimisation on fresh
pairs) of 000 Sec. 3.2.1, for many configurations and seeds at once (:func:`run_grid`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .. import losses as L
from ..device import cpu_settings, resolve_device
from ..records import RECORD_ORDER, RECORDS, record_row, role_weights
from ..validate import check_choice, check_int, check_positive
from .optim import OPTIMIZERS, make_optimizer
from .policy import POLICIES, BatchedPolicy, TabularPolicy, as_seeds, make_policy
from .space import ToySpec, check_pairable, resolve_init, sample_rejected

#: How :func:`run_grid` draws the preference pairs: new rejected responses every step, or one set
#: (the step-0 draw) reused at every step.
PAIRINGS = ("fresh", "fixed")

__all__ = ["PAIRINGS", "sft", "ToyConfig", "ToyRun", "run_grid", "train", "output_change", "feature_overlap", "logit_change", "first_step_transfer"]


def sft(policy: BatchedPolicy, target, *, steps: int = 500, lr: float = 1e-2, optimizer: str = "adam",
        method: str = "auto") -> dict[str, torch.Tensor]:
    """Step 1 of 000 Sec. 3.2.1: fit ``policy`` to the output probabilities ``target`` ([P, R] or [M, P, R]).

    ``method="train"`` minimises the cross-entropy ``-sum_a target(a|x) log pi(a|x)`` (KL(target || pi) plus
    a constant) averaged over prompts, for ``steps`` full-batch steps (Adam by default), as the paper does
    ("using them as labels to train the model"); ``"exact"`` (tabular only) sets the logits to
    ``log target``. ``"auto"``: exact for the tabular policy, train for the MLP.
    Returns ``{"kl": [M], "max_abs_err": [M]}`` of the fitted policy (float64, detached).
    """
    target = _check_target(policy, target)
    if method not in ("auto", "train", "exact"):
        raise ValueError(f"method: expected 'auto', 'train' or 'exact', got {method!r}")
    if method == "auto":
        method = "exact" if isinstance(policy, TabularPolicy) else "train"
    if method == "exact":
        if not isinstance(policy, TabularPolicy):
            raise ValueError("method: 'exact' SFT needs the tabular policy; use 'train' for the MLP")
        with torch.no_grad():
            policy.params["logits"].copy_(target.log().to(policy.dtype))
    else:
        check_int("steps", steps, 0)
        params = policy.param_list()
        opt = make_optimizer(optimizer, params, lr)
        tgt = target.to(policy.dtype)
        for _ in range(int(steps)):
            logp = policy.log_probs()
            loss = -(tgt * logp).sum(-1).mean(-1).sum()
            opt.step(torch.autograd.grad(loss, params))
    with torch.no_grad():
        logp = policy.log_probs().to(torch.float64)
        kl = (target * (target.log() - logp)).sum(-1).mean(-1)
        err = (logp.exp() - target).abs().amax(dim=(-1, -2))
    return {"kl": kl, "max_abs_err": err}


def _check_target(policy: BatchedPolicy, target) -> torch.Tensor:
    P, R = policy.spec.n_prompts, policy.spec.n_responses
    t = torch.as_tensor(target, dtype=torch.float64, device=policy.device)
    if t.ndim == 2:
        t = t.expand(policy.members, P, R)
    if t.shape != (policy.members, P, R):
        raise ValueError(f"target: expected probabilities of shape [{P}, {R}] or [{policy.members}, {P}, {R}], got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()) or not torch.allclose(t.sum(-1), torch.ones((), dtype=t.dtype, device=t.device), atol=1e-6):
        raise ValueError("target: every row must be a probability vector with all entries > 0 summing to 1")
    return t / t.sum(-1, keepdim=True)


@dataclass
class ToyConfig:
    """One configuration of a grid (all its seeds share it).

    ``loss``/``loss_params``: a registered loss name (:data:`prefdyn.losses.LOSSES`), a
    :class:`prefdyn.losses.Loss`, or any function with the loss signature (:data:`prefdyn.losses.SIGNATURE`;
    its keyword defaults are its parameters), and its parameters (validated once, by
    :meth:`prefdyn.losses.Loss.check`); ``init``: the SFT target ``[P, R]`` (a tensor/array, a scenario name
    ``"s1".."s4"``, or a dict of :func:`initial_distribution` arguments; default: Sec. 3.2.2's 0.12);
    ``lr``: the preference-optimisation learning rate (``None`` = the grid's); ``name``: a label.
    """

    loss: Any = "dpo"
    loss_params: dict = field(default_factory=dict)
    init: Any = None
    lr: float | None = None
    name: str | None = None

    def label(self) -> str:
        if self.name:
            return self.name
        name = self.loss if isinstance(self.loss, str) else getattr(self.loss, "name", None) or getattr(
            self.loss, "__name__", type(self.loss).__name__)
        ps = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.loss_params.items())
        return f"{name}({ps})" if ps else name


@dataclass
class ToyRun:
    """The result of :func:`run_grid`.

    ``records[name]``: float64 numpy ``[n_records, M]`` (see :data:`RECORDS`) at the update counts
    ``steps`` (0 = after SFT, before any preference update; the last = after the final update).
    ``probs``: optional ``[n_records, M, P, R]`` (float32). Members are grouped by configuration:
    ``member_config[m]`` is the index into ``configs``, ``member_seed[m]`` the seed.
    """

    spec: ToySpec
    configs: list[ToyConfig]
    member_config: np.ndarray
    member_seed: np.ndarray
    steps: np.ndarray
    records: dict[str, np.ndarray]
    probs: np.ndarray | None
    init_probs: np.ndarray           # [M, P, R] after SFT (= pi_0)
    targets: np.ndarray              # [n_configs, P, R] the SFT targets
    sft_kl: np.ndarray               # [M]
    policy: BatchedPolicy
    settings: dict
    #: the policy's parameters after SFT (layer name -> ``[M, *shape]``), before any preference update
    init_params: dict[str, np.ndarray] | None = None

    def members_of(self, config: int | str) -> np.ndarray:
        """Member indices of a configuration (by index or label)."""
        i = self.config_index(config)
        return np.flatnonzero(self.member_config == i)

    def config_index(self, config: int | str) -> int:
        if isinstance(config, str):
            labels = [c.label() for c in self.configs]
            if config not in labels:
                raise ValueError(f"config: expected one of {labels}, got {config!r}")
            return labels.index(config)
        if not 0 <= int(config) < len(self.configs):
            raise ValueError(f"config: expected an index in [0, {len(self.configs)}), got {config!r}")
        return int(config)

    def record(self, name: str, config: int | str) -> np.ndarray:
        """``records[name]`` of one configuration: ``[n_records, seeds]``."""
        if name not in self.records:
            raise ValueError(f"name: expected one of {', '.join(self.records)}, got {name!r}")
        return self.records[name][:, self.members_of(config)]


def _normalise_configs(configs) -> list[ToyConfig]:
    if isinstance(configs, (ToyConfig, Mapping)):
        configs = [configs]
    if not isinstance(configs, Sequence) or len(configs) == 0:
        raise ValueError("configs: expected a non-empty list of ToyConfig or dicts")
    out = []
    for c in configs:
        if isinstance(c, Mapping):
            unknown = set(c) - {f.name for f in dataclasses.fields(ToyConfig)}
            if unknown:
                raise ValueError(f"configs: unknown key(s) {sorted(unknown)}; allowed: loss, loss_params, init, lr, name")
            c = ToyConfig(**c)
        if not isinstance(c, ToyConfig):
            raise ValueError(f"configs: expected ToyConfig or dict entries, got {type(c).__name__}")
        out.append(c)
    return out


def run_grid(configs, seeds=32, *, spec: ToySpec | None = None, policy: str = "mlp", steps: int = 1000,
             lr: float = 1e-3, optimizer: str = "adam", pairs_per_prompt: int = 4, hidden: int = 64,
             activation: str = "relu", depth: int = 2, init_scale: float = 1.0, pairs: str = "fresh",
             sft_steps: int = 500, sft_lr: float = 1e-2, record_every: int = 1,
             record_probs: bool = False, device="auto", dtype=torch.float32, progress: bool = True,
             desc: str | None = None, threads: int | None = 1) -> ToyRun:
    """Train every configuration in ``configs`` with every seed, all in one batched computation.

    Members are ``len(configs) x n_seeds``, grouped by configuration (member ``i * n_seeds + j`` = config
    ``i``, seed ``seeds[j]``). Step 1 (:func:`sft`) fits each member to its configuration's ``init``;
    step 2 runs ``steps`` updates of the preference loss on fresh pairs (:func:`sample_rejected`) and
    records :data:`RECORDS` every ``record_every`` updates (and after the last). ``pairs``: ``"fresh"``
    (default) draws new rejected responses every step; ``"fixed"`` draws them once (the step-0 draw)
    and reuses that set of ``pairs_per_prompt`` pairs per prompt at every step, a fixed preference
    dataset trained full-batch. ``depth`` and ``init_scale``: the MLP's (:class:`MLPPolicy`). See the module
    docstring for the reading of the paper's set-up. On the CPU the work runs inside
    :class:`cpu_settings` (``threads`` intra-op threads, subnormals flushed).
    """
    spec = check_pairable(ToySpec() if spec is None else spec)
    configs = _normalise_configs(configs)
    seed_t = as_seeds(seeds)
    check_int("steps", steps, 0)
    check_int("pairs_per_prompt", pairs_per_prompt, 1)
    check_int("record_every", record_every, 1)
    check_int("sft_steps", sft_steps, 0)
    check_choice("policy", policy, POLICIES)
    check_choice("pairs", pairs, PAIRINGS)
    check_int("depth", depth, 1, 8)
    check_positive("init_scale", init_scale)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_positive("lr", lr)
    check_positive("sft_lr", sft_lr)
    if threads is not None:
        check_int("threads", threads, 1)
    # validate every configuration before any heavy work; the training loop calls the unchecked losses
    checked = []
    for i, c in enumerate(configs):
        try:
            loss = L.get(c.loss)
            params = loss.check(**dict(c.loss_params))
            target = resolve_init(spec, c.init)
            c_lr = check_positive("lr", lr if c.lr is None else c.lr)
        except ValueError as exc:
            raise ValueError(f"{exc} (config {i})") from None
        checked.append((loss, params, target, c_lr))
    dev = resolve_device(device)
    S, C = len(seed_t), len(configs)
    M = S * C
    member_seed = seed_t.repeat(C)
    member_config = torch.arange(C).repeat_interleave(S)
    targets = torch.stack([t for _, _, t, _ in checked])                       # [C, P, R]

    with cpu_settings(threads if dev.type == "cpu" else None, flush_denormal=dev.type == "cpu"):
        pol = make_policy(policy, spec, member_seed, hidden=hidden, activation=activation, depth=depth,
                          init_scale=init_scale, device=dev, dtype=dtype)
        fit = sft(pol, targets.to(dev)[member_config.to(dev)], steps=sft_steps, lr=sft_lr)
        groups = _loss_groups([(loss, params) for loss, params, _, _ in checked], S, dev, dtype)
        lrs = torch.tensor([c_lr for *_, c_lr in checked], dtype=torch.float64).repeat_interleave(S)
        init_probs = pol.probs().to(torch.float64).cpu().numpy()
        init_params = {k: v.detach().cpu().numpy().copy() for k, v in pol.params.items()}
        rec, rec_steps, probs = _preference_train(
            pol, groups, steps=steps, lr=lrs, optimizer=optimizer, pairs_per_prompt=pairs_per_prompt,
            fixed_pairs=pairs == "fixed", record_every=record_every, record_probs=record_probs, progress=progress, desc=desc)
    settings = dict(policy=policy, steps=steps, lr=lr, optimizer=optimizer, pairs_per_prompt=pairs_per_prompt,
                    hidden=hidden, activation=activation, depth=depth, init_scale=init_scale, pairs=pairs,
                    sft_steps=sft_steps, sft_lr=sft_lr,
                    record_every=record_every, device=dev.type, dtype=str(dtype).replace("torch.", ""),
                    seeds=seed_t.tolist())
    return ToyRun(spec=spec, configs=configs, member_config=member_config.numpy(),
                  member_seed=member_seed.numpy(), steps=rec_steps, records=rec, probs=probs,
                  init_probs=init_probs, targets=targets.numpy(), sft_kl=fit["kl"].cpu().numpy(),
                  policy=pol, settings=settings, init_params=init_params)


def _loss_groups(loss_params: list[tuple[L.Loss, dict]], n_seeds: int, device, dtype) -> list[tuple[slice, L.Loss, dict]]:
    """Merge adjacent configurations that share a loss (and its boolean parameters) into one group whose
    float parameters become per-member tensors ``[members, 1, 1]``: one loss call per group. The
    parameters were validated by :meth:`prefdyn.losses.Loss.check`; the groups feed ``Loss.fn``."""
    groups: list[list] = []
    for i, (loss, params) in enumerate(loss_params):
        key = (loss.name, id(loss.fn), tuple(sorted((k, v) for k, v in params.items() if isinstance(v, bool))))
        if groups and groups[-1][0] == key:
            groups[-1][3].append(params)
            groups[-1][1] = slice(groups[-1][1].start, (i + 1) * n_seeds)
        else:
            groups.append([key, slice(i * n_seeds, (i + 1) * n_seeds), loss, [params]])
    out = []
    for _, sl, loss, plist in groups:
        merged = {}
        for k, v in plist[0].items():
            vals = [p[k] for p in plist]
            if isinstance(v, bool) or all(_same(x, vals[0]) for x in vals):
                merged[k] = vals[0]
            else:
                t = torch.tensor([float(x) for x in vals], dtype=dtype, device=device)
                merged[k] = t.repeat_interleave(n_seeds).view(-1, 1, 1)
        out.append((sl, loss, merged))
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return a == b


def train(loss: Any = "dpo", loss_params: Mapping | None = None, init=None, seeds=32, **kwargs) -> ToyRun:
    """One configuration, many seeds: ``run_grid([ToyConfig(loss, loss_params, init)], seeds, **kwargs)``;
    its label (the key of :func:`prefdyn.records.summarise`) is the loss's name."""
    name = L.get(loss).name
    return run_grid([ToyConfig(loss=loss, loss_params=dict(loss_params or {}), init=init, name=name)], seeds, **kwargs)


def _preference_train(pol: BatchedPolicy, groups, *, steps: int, lr, optimizer: str, pairs_per_prompt: int,
                      fixed_pairs: bool = False, record_every: int = 1, record_probs: bool = False, progress: bool = True,
                      desc: str | None = None, chunk: int = 256, record_chunk: int = 64):
    """Step 2 on an already fitted policy; ``groups`` = [(member slice, loss name, params)] covering all
    members in order, whose parameters are already checked. The reference policy is ``pol`` as given.
    Returns (records, steps, probs).

    The hot loop (see the README, *Performance of the toy trainer*): the policy's forward pass and its
    written-out backward pass (:meth:`BatchedPolicy.logits_and_vjp`, no autograd graph over the
    weights), autograd only through the loss on the gathered log-probs of the pairs, the log-softmax
    backward and the gather's scatter into preallocated buffers, one fused Adam call. The pairs, their
    gather indices and reference log-probs come ``chunk`` steps at a time; the inputs of the records
    (the policy's log-probs, the pairs' log-probs and their gradients, the losses, in the policy's dtype)
    are held and turned into record rows (:func:`prefdyn.records.record_row`, float64) ``record_chunk``
    recorded steps at a time, so the per-step cost does not depend on the records.
    """
    from ..progress import bar

    spec = pol.spec
    M, P, R, K = pol.members, spec.n_prompts, spec.n_responses, pairs_per_prompt
    dev, dt = pol.device, pol.dtype
    with torch.no_grad():
        ref_logp = pol.log_probs().detach()
    params = pol.param_list()
    opt = make_optimizer(optimizer, params, lr)
    role_w = role_weights(spec, dev)
    rec_idx = sorted(set(range(0, steps + 1, record_every)) | {steps})
    n_rec = len(rec_idx)
    slot_of = {s: i for i, s in enumerate(rec_idx)}
    rec = torch.empty(n_rec, M, len(RECORD_ORDER), dtype=torch.float64, device=dev)
    probs_out = torch.empty(n_rec, M, P, R, dtype=torch.float32, device=dev) if record_probs else None
    n_pairs = P * K
    pos_idx = torch.arange(P, device=dev).view(1, 1, P, 1)
    ref_pos = ref_logp.gather(2, pos_idx[0].expand(M, P, K))
    # bounded memory: the int64 indices of a chunk [chunk, M, P, 2K] and the held record inputs stay small
    chunk = max(1, min(int(chunk), (1 << 22) // max(1, M * P * 2 * K)))
    n_buf = max(1, min(int(record_chunk), n_rec, (1 << 22) // max(1, M * (P * R + 4 * P * K + 1))))
    g_logp_t = torch.empty(R, M, P, dtype=dt, device=dev)       # d loss / d log pi, responses first
    g_logp = g_logp_t.permute(1, 2, 0)                          # ... viewed [M, P, R]
    grads = [torch.empty_like(p).detach() for p in params]
    work: dict = {}                                             # the policy's per-step buffers
    single = len(groups) == 1 and groups[0][0] == slice(0, M)
    ones_m = torch.ones(M, dtype=dt, device=dev)                 # d(sum of the member losses)/d(member loss)
    held: list[tuple] = []                                      # (slot, logp [R, M, P], lp, g_lp, loss) not yet recorded

    def flush():
        n, s0 = len(held), held[0][0]
        with torch.no_grad():
            logp_b = torch.stack([h[1].permute(1, 2, 0) for h in held])             # [n, M, P, R]
            lp_b, g_b, loss_b = (torch.stack([h[i] for h in held]) for i in (2, 3, 4))
            rows = record_row(spec, logp_b.view(n * M, P, R), lp_b.view(n * M, P, 2 * K),
                              g_b.view(n * M, P, 2 * K), loss_b.view(n * M), role_w, n_pairs, K)
            rec[s0: s0 + n] = rows.view(n, M, -1)
            if probs_out is not None:
                probs_out[s0: s0 + n] = logp_b.exp().float()
        held.clear()

    it = bar(range(steps + 1), total=steps + 1, desc=desc or f"toy ({M} members)") if progress else range(steps + 1)
    idx_chunk, ref_chunk, chunk_start = [], [], 0
    for t in it:
        if t >= chunk_start + len(idx_chunk):
            chunk_start = t
            span = torch.arange(t, min(t + chunk, steps + 1), device=dev)
            draw = torch.zeros_like(span) if fixed_pairs else span           # "fixed": the step-0 pairs
            rej = sample_rejected(spec, pol.seeds, draw, K)                  # [chunk, M, P, K]
            idx_chunk = torch.cat([pos_idx.expand(len(span), M, P, K), rej], dim=3).unbind(0)   # [M, P, 2K] each
            ref_chunk = ref_logp.expand(len(span), M, P, R).gather(3, rej).unbind(0)          # [M, P, K] each
        idx, ref_neg = idx_chunk[t - chunk_start], ref_chunk[t - chunk_start]
        with torch.no_grad():
            z, vjp = pol.logits_and_vjp(work)
            logp_t = torch.log_softmax(z.permute(2, 0, 1).contiguous(), dim=0)   # [R, M, P]: see log_softmax_responses
            logp = logp_t.permute(1, 2, 0)
            lp = torch.gather(logp, 2, idx)                                      # [M, P, 2K]
        with torch.enable_grad():
            lpg = lp.requires_grad_(True)
            lp_pos, lp_neg = lpg[..., :K], lpg[..., K:]
            if single:
                _, loss, loss_params = groups[0]
                per_pair = loss.fn(lp_pos, lp_neg, ref_pos, ref_neg, **loss_params)     # [M, P, K]
            else:
                per_pair = torch.cat([loss.fn(lp_pos[sl], lp_neg[sl], ref_pos[sl], ref_neg[sl], **loss_params)
                                      for sl, loss, loss_params in groups], dim=0)
            member_loss = per_pair.mean(dim=(1, 2))
            go = ones_m if member_loss.dtype == ones_m.dtype else torch.ones_like(member_loss)
            g_lp, = torch.autograd.grad(member_loss, lpg, go, allow_unused=True, materialize_grads=True)
        with torch.no_grad():
            if t in slot_of:
                held.append((slot_of[t], logp_t, lp.detach(), g_lp, member_loss.detach()))
                if len(held) == n_buf or t == steps:
                    flush()
            if t < steps:
                g_logp.zero_().scatter_add_(2, idx, g_lp)                      # the gather's backward
                g_z = torch._log_softmax_backward_data(g_logp_t, logp_t, 0, logp_t.dtype).permute(1, 2, 0)
                opt.step(vjp(g_z.contiguous(), out=grads))
    rec_np = rec.cpu().numpy()
    records = {k: rec_np[:, :, i] for i, k in enumerate(RECORD_ORDER)}
    probs = probs_out.cpu().numpy() if probs_out is not None else None
    return records, np.asarray(rec_idx), probs


def _sft_params(run: ToyRun, *, mlp: bool = False, dtype=None) -> dict[str, torch.Tensor]:
    """The post-SFT parameters a run kept, as tensors on the policy's device (``dtype``: the policy's);
    a one-line ``ValueError`` for a run without them (or, with ``mlp``, one that is not an MLP)."""
    if run.init_params is None or (mlp and not hasattr(run.policy, "output_layer")):
        what = "an MLP run" if mlp else "a run"
        raise ValueError(f"run: expected {what} of run_grid (it keeps the post-SFT parameters)")
    pol = run.policy
    return {k: torch.as_tensor(v).to(device=pol.device, dtype=dtype or pol.dtype) for k, v in run.init_params.items()}


def output_change(run: ToyRun, config: int | str = 0) -> dict[str, dict[str, float]]:
    """How far preference training moved the MLP's output layer, per block of responses: the largest
    ``|W3[:, :, a]_final - W3[:, :, a]_SFT|`` over the configuration's members and the hidden units, and
    the same for the bias ``b3[a]`` (the output layer, whatever the depth), for the chosen block (responses optimal for some prompt), the rejected
    block and the unseen block (responses in no pair).

    Why it matters for Dispersion (000 Property 3): the logit of a response ``a`` that is in no pair gets
    the gradient ``dl/dz_a = -(g+ + g-) pi(a)`` per pair (``g`` = dl/dlog pi of the pair's two responses),
    which is exactly zero for every loss with ``g+ = -g-`` (DPO, IPO, ...): its output weights and bias
    receive no gradient, up to float rounding in the sum over the pairs, and the unseen responses can only
    gain or lose mass through the shared hidden features and the other logits.
    """
    _sft_params(run, mlp=True)
    mem = run.members_of(config)
    spec = run.spec
    w, b = run.policy.output_layer
    final = {k: run.policy.params[k2].detach().cpu().numpy()[mem] for k, k2 in (("W3", w), ("b3", b))}
    start = {k: run.init_params[k2][mem] for k, k2 in (("W3", w), ("b3", b))}
    blocks = {"chosen_block": spec.chosen_block, "rejected": spec.rejected_block, "unseen": spec.unseen_block}
    out = {}
    for name, blk in blocks.items():
        cols = list(blk)
        if not cols:
            continue
        dw = np.abs(final["W3"][..., cols] - start["W3"][..., cols]).max()
        db = np.abs(final["b3"][..., cols] - start["b3"][..., cols]).max()
        out[name] = {"weights": float(dw), "bias": float(db)}
    return out


def feature_overlap(run: ToyRun, config: int | str = 0) -> dict[str, float]:
    """Mean cosine similarity of the last hidden features ``h2`` of two different prompts, over the
    configuration's members and the prompt pairs, after SFT (``"sft"``) and after preference training
    (``"final"``). Near 1, a push on a response's logit for one prompt moves it for every prompt (the
    shared network's route for Dispersion onto other prompts' responses)."""
    start = _sft_params(run, mlp=True)
    mem = torch.as_tensor(run.members_of(config))
    pol = run.policy
    P = run.spec.n_prompts
    off = ~torch.eye(P, dtype=torch.bool)
    out = {}
    with torch.no_grad():
        for name, params in (("sft", start), ("final", None)):
            h = torch.nn.functional.normalize(pol.features(params).to(torch.float64).cpu()[mem], dim=-1)
            out[name] = float((h @ h.transpose(1, 2))[:, off].mean())
    return out


def logit_change(run: ToyRun, config: int | str = 0) -> float:
    """How far preference training moved the policy's logits, in nats: per member and prompt the largest
    change of a logit centred over the responses (the softmax ignores a shift), averaged over the
    configuration's members and prompts. Comparable between the MLP and the tabular policy (matched
    controls: at equal ``lr`` Adam moves a free logit by about ``lr`` per update)."""
    start = _sft_params(run)
    mem = torch.as_tensor(run.members_of(config))
    pol = run.policy
    with torch.no_grad():
        z0, z1 = (pol.forward(p).to(torch.float64).cpu()[mem] for p in (start, None))
        d = (z1 - z1.mean(-1, keepdim=True)) - (z0 - z0.mean(-1, keepdim=True))
    return float(d.abs().amax(-1).mean())


def first_step_transfer(run: ToyRun, config: int | str = 0) -> float:
    """How much a push on response ``q`` at prompt ``q`` raises ``q`` at the other prompts, after SFT, to
    first order: for a small gradient step that raises ``log pi(q|q)`` (its gradient ``g_qq`` over all
    parameters), the change of ``log pi(q|p)`` is ``lr * g_qp . g_qq``; the transfer is
    ``g_qp . g_qq / |g_qq|^2``, averaged over ``q``, the other prompts ``p`` and the members. 1 means the
    other prompts gain as much as the pushed one, 0 nothing (the tabular policy)."""
    start = {k: v.requires_grad_(True) for k, v in _sft_params(run, dtype=torch.float64).items()}
    mem = run.members_of(config)
    pol = run.policy
    leaves = list(start.values())
    P = run.spec.n_prompts
    with torch.enable_grad():
        logp = torch.log_softmax(pol.forward(start).to(torch.float64), -1)              # [M, P, R]
        grads = []
        for p in range(P):
            for q in range(P):
                g = torch.autograd.grad(logp[:, p, q].sum(), leaves, retain_graph=True)
                grads.append(torch.cat([x.reshape(len(x), -1) for x in g], dim=1))       # [M, n_params]
    g = torch.stack(grads).view(P, P, len(grads[0]), -1)                                  # [p, q, M, N]
    own = torch.stack([g[q, q] for q in range(P)])                                        # [q, M, N]
    ratios = [(g[p, q] * own[q]).sum(-1) / (own[q] * own[q]).sum(-1) for q in range(P) for p in range(P) if p != q]
    return float(torch.stack(ratios)[:, torch.as_tensor(mem)].mean())

