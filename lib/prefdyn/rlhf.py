"""RLHF with a reward model on the toy of 000 Sec. 3.2: why the 3D-properties should not appear (000 Sec. 4).

000 Sec. 4 argues that reward-based alignment (RLHF-PPO) does not have the 3D-properties of DPO: the
reward model's loss (000 eq. 3, ``-log s(r+ - r-)``) has gradients of equal size and opposite sign,
``dl/dr+ = -1/(1 + e^(r+ - r-)) = -dl/dr-``, whatever r+ and r- are. This module puts that claim on the toy
model of :mod:`prefdyn.toy` (same space, same SFT policy pi_0, same preference pairs as the DPO chapters):

(a) :func:`train_reward_model` - a reward model of the same MLP family (000 Sec. 3.2.1), whose ``R`` outputs
    per prompt are read as the rewards ``r(x, a)`` of the responses, trained with
    :func:`prefdyn.losses.reward_model_loss` on the pairs of :func:`prefdyn.toy.sample_rejected`. Every step
    records ``dl/dr+`` and ``dl/dr-`` per pair (from the training backward pass) and how far they are from
    balanced (``|dl/dr+ + dl/dr-|``) and from 000 Sec. 4's closed form;
(b) :func:`rlhf_exact` - KL-regularised policy optimisation of 000 eq. 4,
    ``J = sum_x E_{a~pi(.|x)} [ r(x,a) - beta log pi(a|x)/pi_0(a|x) ]``, by gradient ascent on the EXACT
    expectation over the (tiny) response space, with the closed-form optimum
    ``pi* = pi_0 exp(r/beta) / Z`` (:func:`kl_optimal_log_probs`) and its value ``beta log Z``
    (:func:`kl_optimal_value`) as the check;
(c) :func:`rlhf_ppo` - PPO-clip (Schulman et al. 2017, [24] of 000) with responses sampled from the policy,
    the KL penalty folded into the reward as in InstructGPT ([21] of 000).

Every run is a :class:`prefdyn.toy.ToyRun` with the records of :data:`prefdyn.records.RECORDS` (plus extra
ones, :data:`EXTRA_RECORDS`), so :func:`prefdyn.records.member_indicators` and :func:`prefdyn.records.summarise`
give the same indicators (peak / final pi(chosen), pi(rejected), unseen mass, gradient ratio) as for DPO.

Choices (the paper gives no toy set-up for Sec. 4; these are ours)
------------------------------------------------------------------
- **Reward model.** The MLP of 000 Sec. 3.2.1 (or the tabular table), initialised from the member's seed
  like the policy, with the LAST layer (``W3``, ``b3``) set to zero: ``r == 0`` at the start, so the policy
  the reward model induces (next item) starts exactly at pi_0, as DPO's policy does. A consequence: the
  reward of a response that never occurs in any pair (the unseen block) stays exactly 0 (its output
  weights never get a gradient), while the rewards of the other prompts' optimal responses ("other") move
  through the shared ``b3`` and hidden features. Trained with the same optimiser, learning rate, steps
  and pairs as the DPO run.
- **The reward model's "policy".** To put the reward model in the same table as the policies, its
  probability columns are those of ``pi_r = pi_0 exp(r/beta) / Z``: the optimum of 000 eq. 4 for the
  current reward model, i.e. the policy exact RLHF would reach with it (DPO's policy is the same map
  applied to DPO's implicit reward ``beta log pi/pi_0``). Its gradient columns are in REWARD space,
  ``|dl/dr+-|`` (000 Sec. 4), not in probability space.
- **Probability-space gradient of eq. 4.** ``J`` is defined on the simplex only, so ``dJ/dpi(a)`` is fixed
  up to a constant per prompt. We take the policy-gradient form ``dl/dpi(a) = -A(x, a)`` with the *soft
  advantage* ``A = q - E_pi[q]``, ``q(x,a) = r(x,a) - beta log pi(a|x)/pi_0(a|x)`` (:func:`soft_advantage`).
  It reproduces the logit gradient exactly: ``dl/dlog pi(a) = pi(a) dl/dpi(a) = -pi(a) A(x,a) = dl/dz_a``
  (000 Sec. 3.1's convention ``dl/dpi = (dl/dlog pi)/pi``), and vanishes at the optimum. Records
  ``grad_chosen`` / ``grad_rejected`` are its mean absolute value over the same pairs as DPO's
  (:func:`prefdyn.toy.sample_rejected`); for PPO they are the same exact quantity at the current policy
  (a diagnostic; PPO itself only sees samples).
- **PPO.** Every ``epochs`` updates, a rollout draws ``samples`` responses per prompt and member from the
  current policy pi_old (Gumbel-max with counter-based noise: a member's draws depend only on its seed,
  never on its batch); the sampled reward is ``R = r(x,a) - beta log pi_old(a|x)/pi_0(a|x)`` (the
  per-sample KL penalty of InstructGPT, no gradient through it); the advantage is ``R - b`` with the
  baseline ``b`` = the mean of the OTHER samples of the same prompt (``"loo"``, leave-one-out: unbiased, no
  critic, the toy has one step per episode so there is no value function to learn); ``"exact"`` uses the
  exact value ``E_{pi_old}[R]`` instead, ``"none"`` no baseline. Advantages are not whitened (keeps beta's
  meaning). Then ``epochs`` full-batch updates of the clipped surrogate
  ``-mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A))``, ``rho = pi(a|x)/pi_old(a|x)``. One "step" is one
  optimiser update, as for DPO, so step counts and learning rates compare directly.
- Objectives are averaged over prompts (000 eq. 4 sums them; a constant factor, as DPO's mean over pairs).

Seed paper: ``shared/seeds/000_5df0dc2126a6b6d8.txt`` (000): eq. 2-4, Sec. 3.2, Sec. 4, App. B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import losses as L
from . import records
from .device import cpu_settings, resolve_device
from .toy import (OPTIMIZERS, POLICIES, BatchedPolicy, ToyConfig, ToyRun, ToySpec, as_seeds, check_pairable, hash_keys,
                  make_optimizer, make_policy, resolve_init, sample_rejected, sft)
from .validate import check_choice, check_int, check_positive

__all__ = [
    "METHODS", "BASELINES", "EXTRA_RECORDS", "RLHFRun",
    "kl_optimal_log_probs", "kl_objective", "kl_optimal_value", "soft_advantage",
    "make_reward_model", "reward_gradients", "train_reward_model", "induced_log_probs",
    "rlhf_exact", "rlhf_ppo", "fitted_policy", "run_rlhf", "gumbel_sample",
    "KEYS", "ROLES", "member_indicators", "summarise_runs", "reward_balance", "final_rewards", "optimum_check",
    "optimum_by_beta", "BALANCE_LABELS", "OPTIMUM_LABELS", "log_gap_to_optimum", "LOG_GAP_LABELS",
]

#: The methods of the chapter, as labels of the runs (and keys of the comparison table).
METHODS = ("reward_model", "rlhf_exact", "rlhf_ppo")
#: PPO baselines (see the module docstring).
BASELINES = ("loo", "exact", "none")

#: Records beyond :data:`prefdyn.records.RECORDS` (per step and member).
EXTRA_RECORDS = {
    "reward": "E_pi[r(x,a)] under the method's policy, mean over prompts (r = the final reward model for "
              "the policies, the current one for the reward model)",
    "kl": "KL(pi || pi_0), mean over prompts",
    "objective": "J of 000 eq. 4 (mean over prompts) with the method's reward",
    "optimum_gap": "J(pi*) - J(pi) >= 0, with pi* = pi_0 exp(r/beta)/Z",
    "tv_to_optimum": "total variation between pi and pi*, mean over prompts",
    "reward_chosen": "r(x, a+) (reward model: current; policies: the reward they optimise)",
    "reward_rejected": "mean r over the rejected block",
    "reward_other": "mean r over the other prompts' optimal responses",
    "reward_unseen": "mean r over the unseen block",
    "grad_balance": "reward model only: max over pairs of |dl/dr+ + dl/dr-| (0 = balanced)",
    "grad_closed_form_err": "reward model only: max over pairs of |dl/dr+ - (-1/(1+e^(r+-r-)))|",
    "accuracy": "reward model only: fraction of the step's pairs with r+ > r-",
    "clip_frac": "PPO only: fraction of the update's samples whose ratio is clipped",
}


@dataclass
class RLHFRun(ToyRun):
    """A :class:`prefdyn.toy.ToyRun` (one configuration, one member per seed) with, in addition,

    ``rewards``: ``[M, P, R]`` float64, the reward the run's policy optimises (for the reward model: its
    final rewards); ``ref_log_probs``: ``[M, P, R]`` float64, log pi_0; ``final_log_probs``: ``[M, P, R]``
    float64, the final policy (for the reward model: its induced policy); ``beta``; ``reward_model``: the
    trained reward network (reward-model run only; there ``policy`` is that network too).
    """

    rewards: np.ndarray | None = None
    ref_log_probs: np.ndarray | None = None
    final_log_probs: np.ndarray | None = None
    beta: float = 0.1
    reward_model: BatchedPolicy | None = None

    def optimum_log_probs(self) -> np.ndarray:
        """log pi* = log_softmax(log pi_0 + r/beta) for the run's reward, ``[M, P, R]``."""
        return kl_optimal_log_probs(torch.as_tensor(self.ref_log_probs), torch.as_tensor(self.rewards),
                                    self.beta).numpy()


# ================================================================================================
# Closed forms of 000 eq. 4
# ================================================================================================

def _check_beta(beta) -> float:
    return check_positive("beta", beta)


def kl_optimal_log_probs(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """log pi* of the optimum of 000 eq. 4: ``pi* = pi_0 exp(r/beta) / Z`` (``log_softmax`` over the last
    dimension, responses). Rafailov et al. ([23] of 000) eq. 4."""
    beta = _check_beta(beta)
    return torch.log_softmax(ref_logp + reward / beta, dim=-1)


def kl_optimal_value(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """The optimal value per prompt: ``max_pi E_pi[r - beta log pi/pi_0] = beta log sum_a pi_0 e^(r/beta)``."""
    beta = _check_beta(beta)
    return beta * torch.logsumexp(ref_logp + reward / beta, dim=-1)


def kl_objective(logp: torch.Tensor, ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """000 eq. 4 per prompt (no reduction): ``sum_a pi(a) [r(a) - beta (log pi(a) - log pi_0(a))]``.

    Differentiable in ``logp`` (log-probabilities over the last dimension). Terms with ``pi = 0`` count 0.
    """
    beta = _check_beta(beta)
    p = logp.exp()
    return (p * (reward - beta * (logp - ref_logp))).sum(-1)


def soft_advantage(logp: torch.Tensor, ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """``A(x,a) = q(x,a) - E_pi[q]`` with ``q = r - beta log pi/pi_0``; ``dJ/dz_a = pi(a) A(x,a)`` for the
    logits ``z`` of ``pi``, and ``A == 0`` exactly at the optimum. Computed without gradient."""
    beta = _check_beta(beta)
    with torch.no_grad():
        q = reward - beta * (logp - ref_logp)
        return q - (logp.exp() * q).sum(-1, keepdim=True)


# ================================================================================================
# Shared helpers
# ================================================================================================

def _reward_tensor(reward, policy: BatchedPolicy) -> torch.Tensor:
    P, R = policy.spec.n_prompts, policy.spec.n_responses
    try:
        t = torch.as_tensor(reward, dtype=policy.dtype, device=policy.device)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"reward: expected a tensor of shape [{P}, {R}] or [M, {P}, {R}]") from None
    if t.ndim == 2 and t.shape == (P, R):
        t = t.expand(policy.members, P, R)
    if t.shape != (policy.members, P, R):
        raise ValueError(f"reward: expected shape [{P}, {R}] or [{policy.members}, {P}, {R}], got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("reward: every entry must be finite")
    return t.detach().clone()


def _check_policy(policy) -> None:
    if not isinstance(policy, BatchedPolicy):
        raise ValueError(f"policy: expected a prefdyn.toy BatchedPolicy (MLPPolicy or TabularPolicy), got {type(policy).__name__}")


class _Recorder:
    """Per-step records ``[n_records, M]`` at the update counts 0, every ``record_every``, and ``steps``."""

    def __init__(self, names, steps: int, record_every: int, M: int, device, dtype):
        self.steps = sorted(set(range(0, steps + 1, record_every)) | {steps})
        self.slot = {s: i for i, s in enumerate(self.steps)}
        self.out = {k: torch.full((len(self.steps), M), float("nan"), dtype=dtype, device=device) for k in names}

    def wants(self, t: int) -> bool:
        return t in self.slot

    def put(self, t: int, **values) -> None:
        i = self.slot[t]
        for side in ("chosen", "rejected"):        # records.RECORDS' log-space copies of the gradient sizes
            if f"grad_{side}" in values and f"log_grad_{side}" in self.out:
                values.setdefault(f"log_grad_{side}", torch.log(values[f"grad_{side}"].double()))
        for k, v in values.items():
            self.out[k][i] = v

    def numpy(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return ({k: v.to(torch.float64).cpu().numpy() for k, v in self.out.items()},
                np.asarray(self.steps))


def _reward_records(spec: ToySpec, reward: torch.Tensor, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    def block_mean(mask):
        n = mask.sum(-1).clamp_min(1)
        return ((reward * mask).sum(-1) / n).mean(-1)
    out = {"reward_chosen": block_mean(w["chosen"]), "reward_rejected": block_mean(w["rejected"]),
           "reward_other": block_mean(w["other"])}
    out["reward_unseen"] = block_mean(w["unseen"]) if spec.n_unseen > 0 else torch.full_like(out["reward_chosen"], float("nan"))
    return out


def _policy_state_records(spec, logp, ref_logp, reward, beta, w) -> dict[str, torch.Tensor]:
    """Role masses, reward, KL, objective and distance to the optimum of a policy ``logp [M, P, R]``."""
    p = logp.exp()
    opt_logp = torch.log_softmax(ref_logp + reward / beta, dim=-1)
    J = kl_objective(logp, ref_logp, reward, beta)
    out = dict(zip(records.STATE_COLUMNS, records.state_columns(spec, logp, records.role_weights(spec, logp.device)).unbind(1)))
    out.update(
        reward=(p * reward).sum(-1).mean(-1),
        kl=(p * (logp - ref_logp)).sum(-1).mean(-1),
        objective=J.mean(-1),
        optimum_gap=(beta * torch.logsumexp(ref_logp + reward / beta, dim=-1) - J).mean(-1),
        tv_to_optimum=0.5 * (p - opt_logp.exp()).abs().sum(-1).mean(-1),
    )
    out.update(_reward_records(spec, reward, w))
    return out


def _policy_grad_records(logp, ref_logp, reward, beta, pos_idx, neg_idx) -> dict[str, torch.Tensor]:
    """The gradient columns of :func:`prefdyn.records.gradient_columns` on the pairs (pos_idx, neg_idx)
    ``[M, P, K]``, with dl/dpi = -A (see the module docstring), i.e. dl/dlog pi = -pi A."""
    M = logp.shape[0]
    A = soft_advantage(logp, ref_logp, reward, beta)
    d = torch.stack([-A.gather(2, pos_idx).reshape(M, -1), -A.gather(2, neg_idx).reshape(M, -1)], dim=1)
    lp = torch.stack([logp.gather(2, pos_idx).reshape(M, -1), logp.gather(2, neg_idx).reshape(M, -1)], dim=1)
    cols = records.gradient_columns(lp.exp() * d, lp)                                    # [M, 2, P*K] in
    return dict(zip(records.GRADIENT_COLUMNS, cols.unbind(1)))


def _make_run(policy: BatchedPolicy, name: str, recorder: _Recorder, *, ref_logp, reward, final_logp, beta,
              settings: dict, init_probs, target=None, sft_kl=None, reward_model=None) -> RLHFRun:
    records, steps = recorder.numpy()
    M = policy.members
    spec = policy.spec
    ref = ref_logp.detach().to(torch.float64).cpu()
    return RLHFRun(
        spec=spec, configs=[ToyConfig(loss=name, loss_params={"beta": beta}, name=name)], member_config=np.zeros(M, dtype=np.int64),
        member_seed=policy.seeds.cpu().numpy(), steps=steps, records=records, probs=None,
        init_probs=init_probs,
        targets=(np.full((1, spec.n_prompts, spec.n_responses), np.nan) if target is None else target),
        sft_kl=(np.full(M, np.nan) if sft_kl is None else sft_kl), policy=policy, settings=settings,
        rewards=reward.detach().to(torch.float64).cpu().numpy(), ref_log_probs=ref.numpy(),
        final_log_probs=final_logp.detach().to(torch.float64).cpu().numpy(), beta=beta,
        reward_model=reward_model)


def _pi0_probs(policy: BatchedPolicy) -> np.ndarray:
    """pi_0 as :class:`prefdyn.toy.ToyRun` stores it (``init_probs``), bit for bit."""
    return policy.probs().to(torch.float64).cpu().numpy()


def _pairs(policy: BatchedPolicy, steps: int, pairs_per_prompt: int, chunk: int = 256):
    """Generator of (pos_idx, neg_idx) ``[M, P, K]`` per step: the DPO chapters' pairs (toy.sample_rejected)."""
    spec, dev = policy.spec, policy.device
    M, P, K = policy.members, spec.n_prompts, pairs_per_prompt
    pos_idx = torch.arange(P, device=dev).view(1, P, 1).expand(M, P, K)
    for start in range(0, steps + 1, chunk):
        span = torch.arange(start, min(start + chunk, steps + 1), device=dev)
        rej = sample_rejected(spec, policy.seeds, span, K)
        for i in range(rej.shape[0]):
            yield pos_idx, rej[i]


def _cpu(device: torch.device, threads):
    """:class:`prefdyn.device.cpu_settings` on the CPU (``threads`` intra-op threads, subnormals flushed), as
    :func:`prefdyn.toy.run_grid` trains, so the same seeds give the same numbers; nothing on CUDA."""
    if threads is not None:
        check_int("threads", threads, 1)
    cpu = torch.device(device).type == "cpu"
    return cpu_settings(threads if cpu else None, flush_denormal=cpu)


def _bar(steps: int, desc: str, progress: bool):
    from .progress import bar
    return bar(range(steps + 1), total=steps + 1, desc=desc) if progress else range(steps + 1)


# ================================================================================================
# (a) The reward model (000 eq. 3 / Sec. 4)
# ================================================================================================

def make_reward_model(spec: ToySpec, seeds, *, kind: str = "mlp", hidden: int = 64, activation: str = "relu",
                      device="auto", dtype=torch.float32) -> BatchedPolicy:
    """A batched reward model: a :func:`prefdyn.toy.make_policy` network whose outputs ``[M, P, R]`` are read
    as rewards ``r(x, a)``, with its last layer zeroed (``r == 0`` at the start; see the module docstring)."""
    rm = make_policy(kind, spec, seeds, hidden=hidden, activation=activation, device=device, dtype=dtype)
    with torch.no_grad():
        for name in (rm.output_layer if kind == "mlp" else tuple(rm.params)):
            rm.params[name].zero_()
    return rm


def reward_gradients(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair ``(dl/dr+, dl/dr-)`` of :func:`prefdyn.losses.reward_model_loss` by autograd (000 Sec. 4:
    ``-1/(1 + e^(r+ - r-))`` and ``+1/(1 + e^(r+ - r-))``)."""
    rc = torch.as_tensor(r_chosen).detach().clone().requires_grad_(True)
    rr = torch.as_tensor(r_rejected, dtype=rc.dtype).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        gc, gr = torch.autograd.grad(L.reward_model_loss(rc, rr).sum(), (rc, rr))
    return gc, gr


def induced_log_probs(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """The reward model's policy ``pi_r = pi_0 exp(r/beta)/Z`` (= :func:`kl_optimal_log_probs`)."""
    return kl_optimal_log_probs(ref_logp, reward, beta)


def train_reward_model(ref_policy: BatchedPolicy, *, beta: float = 0.1, kind: str = "mlp", steps: int = 1000,
                       lr: float = 1e-3, optimizer: str = "adam", pairs_per_prompt: int = 4, hidden: int = 64,
                       activation: str = "relu", record_every: int = 1, progress: bool = True,
                       desc: str | None = None, threads: int | None = 1) -> RLHFRun:
    """Train a reward model per member of ``ref_policy`` (its seeds; its policy is pi_0) with
    :func:`prefdyn.losses.reward_model_loss` on the DPO chapters' pairs (000 eq. 3, Sec. 4).

    Records, per step: the probability columns of the induced policy pi_r = pi_0 exp(r/beta)/Z; ``loss``;
    ``grad_chosen``/``grad_rejected`` = mean over pairs of |dl/dr+| and |dl/dr-| (reward space!);
    ``dpi_*`` = their signed means; ``dlogp_*`` NaN; ``grad_balance`` = max over pairs of
    |dl/dr+ + dl/dr-|; ``grad_closed_form_err``; ``accuracy``; the reward and ``kl``/``objective`` columns
    of pi_r. The gradients come from the training backward pass itself (w.r.t. the gathered rewards).
    """
    _check_policy(ref_policy)
    beta = _check_beta(beta)
    _check_run_args(steps, pairs_per_prompt, record_every, lr)
    check_choice("kind", kind, POLICIES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    spec, dev, dt = ref_policy.spec, ref_policy.device, ref_policy.dtype
    M, P, K = ref_policy.members, spec.n_prompts, pairs_per_prompt
    with torch.no_grad():
        ref_logp = ref_policy.log_probs().detach()
    rm = make_reward_model(spec, ref_policy.seeds.cpu(), kind=kind, hidden=hidden, activation=activation,
                           device=dev, dtype=dt)
    leaves = rm.param_list()
    opt = make_optimizer(optimizer, leaves, lr)
    w = {k: v.to(torch.float64) for k, v in spec.role_masks(device=dev).items()}
    rec = _Recorder(list(records.RECORDS) + list(EXTRA_RECORDS), steps, record_every, M, dev, torch.float64)
    n_pairs = P * K
    ref64 = ref_logp.double()
    pairs = _pairs(ref_policy, steps, K)
    with _cpu(dev, threads):
        for t in _bar(steps, desc or f"reward model ({M} members)", progress):
            pos_idx, neg_idx = next(pairs)
            r = rm.forward()
            rg = r.gather(2, torch.cat([pos_idx, neg_idx], dim=2))                  # [M, P, 2K]
            per_pair = L.reward_model_loss(rg[..., :K], rg[..., K:])
            member_loss = per_pair.mean(dim=(1, 2))
            *g_theta, g_r = torch.autograd.grad(member_loss.sum(), [*leaves, rg])
            if rec.wants(t):
                with torch.no_grad():
                    g = g_r * n_pairs                                                # dl_pair / dr, per pair
                    gp, gn = g[..., :K], g[..., K:]
                    rd = r.detach().double()
                    margin = rg[..., :K].detach() - rg[..., K:].detach()
                    closed = -torch.sigmoid(-margin)                                 # -1/(1+e^(r+ - r-))
                    ilogp = induced_log_probs(ref64, rd, beta)
                    vals = _policy_state_records(spec, ilogp, ref64, rd, beta, w)
                    vals.update(
                        loss=member_loss.detach(),
                        grad_chosen=gp.abs().mean(dim=(1, 2)), grad_rejected=gn.abs().mean(dim=(1, 2)),
                        dpi_chosen=gp.mean(dim=(1, 2)), dpi_rejected=gn.mean(dim=(1, 2)),
                        grad_balance=(gp + gn).abs().amax(dim=(1, 2)),
                        grad_closed_form_err=(gp - closed).abs().amax(dim=(1, 2)),
                        accuracy=(margin > 0).double().mean(dim=(1, 2)),
                    )
                    rec.put(t, **vals)
            if t < steps:
                opt.step(g_theta)
    with torch.no_grad():
        r_final = rm.forward().detach()
        final_logp = induced_log_probs(ref64, r_final.double(), beta)
    settings = dict(method="reward_model", beta=beta, kind=kind, steps=steps, lr=lr, optimizer=optimizer,
                    pairs_per_prompt=K, hidden=hidden, activation=activation, record_every=record_every,
                    device=dev.type, dtype=str(dt).replace("torch.", ""), seeds=ref_policy.seeds.cpu().tolist())
    return _make_run(rm, "reward_model", rec, ref_logp=ref_logp, reward=r_final, final_logp=final_logp,
                     beta=beta, settings=settings, reward_model=rm, init_probs=_pi0_probs(ref_policy))


# ================================================================================================
# (b) Exact KL-regularised policy optimisation (000 eq. 4)
# ================================================================================================

def _check_run_args(steps, pairs_per_prompt, record_every, lr) -> None:
    """The arguments every optimiser of this module shares, each checked with a one-line ValueError."""
    check_int("steps", steps, 0)
    check_int("pairs_per_prompt", pairs_per_prompt, 1)
    check_int("record_every", record_every, 1)
    check_positive("lr", lr)


def _check_policy_args(policy, beta, steps, pairs_per_prompt, record_every, lr, optimizer) -> float:
    """The arguments both policy optimisers of 000 eq. 4 share, checked before any work; returns beta."""
    _check_policy(policy)
    beta = _check_beta(beta)
    _check_run_args(steps, pairs_per_prompt, record_every, lr)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    return beta


def _policy_setup(policy: BatchedPolicy, reward, *, steps: int, lr: float, optimizer: str, record_every: int,
                  pairs_per_prompt: int):
    """What both policy optimisers of 000 eq. 4 start from: the reward tensor, a trainable copy of the
    policy, its (detached) log-probs as the reference pi_0, the optimiser, the role masks, the recorder and
    the DPO chapters' pair stream (for the comparable gradient records)."""
    r = _reward_tensor(reward, policy)
    pol = policy.clone()
    with torch.no_grad():
        ref_logp = pol.log_probs().detach()
    leaves = pol.param_list()
    opt = make_optimizer(optimizer, leaves, lr)
    w = {k: v.to(torch.float64) for k, v in pol.spec.role_masks(device=pol.device).items()}
    rec = _Recorder(list(records.RECORDS) + list(EXTRA_RECORDS), steps, record_every, pol.members, pol.device,
                    torch.float64)
    return r, pol, ref_logp, leaves, opt, w, rec, _pairs(pol, steps, pairs_per_prompt)


def rlhf_exact(policy: BatchedPolicy, reward, *, beta: float = 0.1, steps: int = 1000, lr: float = 1e-3,
               optimizer: str = "adam", pairs_per_prompt: int = 4, record_every: int = 1,
               progress: bool = True, desc: str | None = None, threads: int | None = 1) -> RLHFRun:
    """Gradient ascent on the exact 000 eq. 4, ``J = mean_x sum_a pi(a|x) [r(x,a) - beta log pi(a|x)/pi_0(a|x)]``.

    ``policy`` is the fitted pi_0 (not modified: a copy is trained); ``reward`` ``[P, R]`` or ``[M, P, R]``
    (e.g. ``train_reward_model(...).rewards``). Records :data:`prefdyn.records.RECORDS` (``loss`` = -J,
    gradients = -A on the DPO chapters' pairs) and :data:`EXTRA_RECORDS`.
    """
    beta = _check_policy_args(policy, beta, steps, pairs_per_prompt, record_every, lr, optimizer)
    r, pol, ref_logp, leaves, opt, w, rec, pairs = _policy_setup(policy, reward, steps=steps, lr=lr,
                                                                 optimizer=optimizer, record_every=record_every,
                                                                 pairs_per_prompt=pairs_per_prompt)
    spec, dev, dt, M = pol.spec, pol.device, pol.dtype, pol.members
    ref64, r64 = ref_logp.double(), r.double()
    with _cpu(dev, threads):
        for t in _bar(steps, desc or f"RLHF exact ({M} members)", progress):
            pos_idx, neg_idx = next(pairs)
            logp = pol.log_probs()
            J = kl_objective(logp, ref_logp, r, beta).mean(-1)                       # [M]
            g_theta = torch.autograd.grad(-J.sum(), leaves)
            if rec.wants(t):
                with torch.no_grad():
                    lp = logp.detach().double()
                    vals = _policy_state_records(spec, lp, ref64, r64, beta, w)
                    vals.update(_policy_grad_records(lp, ref64, r64, beta, pos_idx, neg_idx))
                    vals["loss"] = -J.detach()
                    rec.put(t, **vals)
            if t < steps:
                opt.step(g_theta)
    with torch.no_grad():
        final_logp = pol.log_probs().detach()
    settings = dict(method="rlhf_exact", beta=beta, steps=steps, lr=lr, optimizer=optimizer,
                    pairs_per_prompt=pairs_per_prompt, record_every=record_every, device=dev.type,
                    dtype=str(dt).replace("torch.", ""), seeds=pol.seeds.cpu().tolist())
    return _make_run(pol, "rlhf_exact", rec, ref_logp=ref_logp, reward=r, final_logp=final_logp, beta=beta,
                     settings=settings, init_probs=_pi0_probs(policy))


# ================================================================================================
# (c) PPO-clip with sampled responses
# ================================================================================================

_PPO_STREAM = 3   # prefdyn.toy uses stream 1 (initial weights) and 2 (rejected responses of the pairs)


def gumbel_sample(logp: torch.Tensor, seeds: torch.Tensor, rollout: int, samples: int) -> torch.Tensor:
    """``samples`` draws per (member, prompt) from ``pi = exp(logp)`` ``[M, P, R]`` -> int64 ``[M, P, samples]``.

    Gumbel-max (``argmax(log pi + G)``) with noise from the counter-based hash of
    (seed, stream 3, rollout, prompt, sample, response): a member's draws depend only on its seed and the
    rollout index, never on the other members of the batch.
    """
    M, P, R = logp.shape
    dev = logp.device
    h = hash_keys(seeds.to(dev).view(M, 1, 1, 1), _PPO_STREAM, int(rollout),
                       torch.arange(P, device=dev).view(1, P, 1, 1),
                       torch.arange(samples, device=dev).view(1, 1, samples, 1),
                       torch.arange(R, device=dev).view(1, 1, 1, R))
    u = (h.to(torch.float64) + 0.5) / 2.0 ** 32
    g = -torch.log(-torch.log(u))
    return (logp.detach().to(torch.float64).unsqueeze(2) + g).argmax(dim=-1)


def rlhf_ppo(policy: BatchedPolicy, reward, *, beta: float = 0.1, steps: int = 1000, lr: float = 1e-3,
             optimizer: str = "adam", samples: int = 16, epochs: int = 4, clip: float = 0.2,
             baseline: str = "loo", pairs_per_prompt: int = 4, record_every: int = 1, progress: bool = True,
             desc: str | None = None, threads: int | None = 1) -> RLHFRun:
    """PPO-clip on 000 eq. 4 with sampled responses (see the module docstring for every choice).

    ``steps`` optimiser updates in all; a rollout of ``samples`` responses per prompt and member before
    every ``epochs``-th update. Records as :func:`rlhf_exact` (exact quantities of the current policy),
    plus ``clip_frac``.
    """
    beta = _check_policy_args(policy, beta, steps, pairs_per_prompt, record_every, lr, optimizer)
    check_int("samples", samples, 1)
    check_int("epochs", epochs, 1)
    clip = check_positive("clip", clip)
    check_choice("baseline", baseline, BASELINES)
    if baseline == "loo" and samples < 2:
        raise ValueError(f"samples: the 'loo' baseline needs at least 2 samples per prompt, got {samples!r}")
    r, pol, ref_logp, leaves, opt, w, rec, pairs = _policy_setup(policy, reward, steps=steps, lr=lr,
                                                                 optimizer=optimizer, record_every=record_every,
                                                                 pairs_per_prompt=pairs_per_prompt)
    spec, dev, dt, M = pol.spec, pol.device, pol.dtype, pol.members
    ref64, r64 = ref_logp.double(), r.double()
    a = adv = lp_old = None
    with _cpu(dev, threads):
        for t in _bar(steps, desc or f"RLHF PPO ({M} members)", progress):
            pos_idx, neg_idx = next(pairs)
            if t % epochs == 0:                                                      # rollout from pi_old
                with torch.no_grad():
                    logp_old = pol.log_probs().detach()
                    a = gumbel_sample(logp_old, pol.seeds, t // epochs, samples)       # [M, P, S]
                    lp_old = logp_old.gather(2, a)
                    shaped = r.gather(2, a) - beta * (lp_old - ref_logp.gather(2, a))  # r - beta log pi_old/pi_0
                    if baseline == "loo":
                        b = (shaped.sum(-1, keepdim=True) - shaped) / (samples - 1)
                    elif baseline == "exact":
                        q = r - beta * (logp_old - ref_logp)
                        b = (logp_old.exp() * q).sum(-1, keepdim=True)
                    else:
                        b = torch.zeros_like(shaped)
                    adv = shaped - b
            logp = pol.log_probs()
            ratio = torch.exp(logp.gather(2, a) - lp_old)
            surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
            member_loss = -surr.mean(dim=(1, 2))
            g_theta = torch.autograd.grad(member_loss.sum(), leaves)
            if rec.wants(t):
                with torch.no_grad():
                    lp = logp.detach().double()
                    J = kl_objective(lp, ref64, r64, beta).mean(-1)
                    vals = _policy_state_records(spec, lp, ref64, r64, beta, w)
                    vals.update(_policy_grad_records(lp, ref64, r64, beta, pos_idx, neg_idx))
                    vals["loss"] = -J
                    rd = ratio.detach()
                    vals["clip_frac"] = ((rd < 1.0 - clip) | (rd > 1.0 + clip)).double().mean(dim=(1, 2))
                    rec.put(t, **vals)
            if t < steps:
                opt.step(g_theta)
    with torch.no_grad():
        final_logp = pol.log_probs().detach()
    settings = dict(method="rlhf_ppo", beta=beta, steps=steps, lr=lr, optimizer=optimizer, samples=samples,
                    epochs=epochs, clip=clip, baseline=baseline, pairs_per_prompt=pairs_per_prompt,
                    record_every=record_every, device=dev.type, dtype=str(dt).replace("torch.", ""),
                    seeds=pol.seeds.cpu().tolist())
    return _make_run(pol, "rlhf_ppo", rec, ref_logp=ref_logp, reward=r, final_logp=final_logp, beta=beta,
                     settings=settings, init_probs=_pi0_probs(policy))


# ================================================================================================
# The whole pipeline: SFT -> reward model -> exact RLHF and PPO
# ================================================================================================

def fitted_policy(seeds=32, *, spec: ToySpec | None = None, init=None, policy: str = "mlp", hidden: int = 64,
                  activation: str = "relu", sft_steps: int = 500, sft_lr: float = 1e-2, device="auto",
                  dtype=torch.float32, threads: int | None = 1) -> tuple[BatchedPolicy, dict]:
    """Step 1 of 000 Sec. 3.2.1 exactly as :func:`prefdyn.toy.run_grid` does it for one configuration: the
    same seeds give the same pi_0 as the DPO run. Returns (policy, {"target", "sft_kl"})."""
    spec = ToySpec() if spec is None else spec
    if not isinstance(spec, ToySpec):
        raise ValueError(f"spec: expected a ToySpec, got {type(spec).__name__}")
    check_int("sft_steps", sft_steps, 0)
    check_positive("sft_lr", sft_lr)
    target = resolve_init(spec, init)
    dev = resolve_device(device)
    pol = make_policy(policy, spec, as_seeds(seeds), hidden=hidden, activation=activation, device=dev,
                      dtype=dtype)
    with _cpu(dev, threads):
        fit = sft(pol, target.to(dev), steps=sft_steps, lr=sft_lr)
    return pol, {"target": target.numpy()[None], "sft_kl": fit["kl"].cpu().numpy()}


def run_rlhf(seeds=32, *, spec: ToySpec | None = None, init=None, policy: str = "mlp", beta: float = 0.1,
             steps: int = 1000, lr: float = 1e-3, optimizer: str = "adam", pairs_per_prompt: int = 4,
             hidden: int = 64, activation: str = "relu", sft_steps: int = 500, sft_lr: float = 1e-2,
             rm_kind: str = "mlp", rm_steps: int | None = None, rm_lr: float | None = None,
             samples: int = 16, epochs: int = 4, clip: float = 0.2, baseline: str = "loo",
             methods=METHODS, record_every: int = 1, device="auto", dtype=torch.float32,
             progress: bool = True, threads: int | None = 1) -> dict[str, RLHFRun]:
    """000 Sec. 4 on the toy, for every seed at once: SFT (as the DPO chapters), a reward model on the
    same pairs (``rm_steps``/``rm_lr`` default to ``steps``/``lr``), then exact RLHF and PPO with the final
    reward model. Returns ``{method: RLHFRun}`` for ``methods`` (a subset of :data:`METHODS`; the reward
    model is always trained since the policies need it). All arguments are validated first.
    """
    check_pairable(ToySpec() if spec is None else spec)
    methods = tuple(methods) if not isinstance(methods, str) else (methods,)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods: expected a non-empty subset of {', '.join(METHODS)}, got {list(methods)!r}")
    beta = _check_beta(beta)
    for name, v in (("steps", steps), ("pairs_per_prompt", pairs_per_prompt), ("samples", samples),
                    ("epochs", epochs), ("record_every", record_every), ("sft_steps", sft_steps)):
        check_int(name, v, 0 if name in ("steps", "sft_steps") else 1)
    rm_steps = steps if rm_steps is None else rm_steps
    check_int("rm_steps", rm_steps, 0)
    rm_lr = lr if rm_lr is None else rm_lr
    for name, v in (("lr", lr), ("rm_lr", rm_lr), ("clip", clip), ("sft_lr", sft_lr)):
        check_positive(name, v)
    check_choice("policy", policy, POLICIES)
    check_choice("rm_kind", rm_kind, POLICIES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    if baseline not in BASELINES:
        raise ValueError(f"baseline: expected one of {', '.join(BASELINES)}, got {baseline!r}")
    if baseline == "loo" and samples < 2:
        raise ValueError(f"samples: the 'loo' baseline needs at least 2 samples per prompt, got {samples!r}")
    if threads is not None:
        check_int("threads", threads, 1)

    pol, fit = fitted_policy(seeds, spec=spec, init=init, policy=policy, hidden=hidden, activation=activation,
                             sft_steps=sft_steps, sft_lr=sft_lr, device=device, dtype=dtype, threads=threads)
    common = dict(pairs_per_prompt=pairs_per_prompt, record_every=record_every, progress=progress,
                  threads=threads)
    out: dict[str, RLHFRun] = {}
    rm_run = train_reward_model(pol, beta=beta, kind=rm_kind, steps=rm_steps, lr=rm_lr, optimizer=optimizer,
                                hidden=hidden, activation=activation, **common)
    reward = torch.as_tensor(rm_run.rewards, dtype=dtype, device=pol.device)
    if "reward_model" in methods:
        out["reward_model"] = rm_run
    if "rlhf_exact" in methods:
        out["rlhf_exact"] = rlhf_exact(pol, reward, beta=beta, steps=steps, lr=lr, optimizer=optimizer, **common)
    if "rlhf_ppo" in methods:
        out["rlhf_ppo"] = rlhf_ppo(pol, reward, beta=beta, steps=steps, lr=lr, optimizer=optimizer,
                                   samples=samples, epochs=epochs, clip=clip, baseline=baseline, **common)
    for run in out.values():
        run.targets = fit["target"]
        run.sft_kl = fit["sft_kl"]
        run.settings.update(policy=policy, sft_steps=sft_steps, sft_lr=sft_lr, init=repr(init))
    return out


# ================================================================================================
# Summaries for the chapter: indicators, the reward model's balance, the closed-form check, pi* by beta
# ================================================================================================

#: The indicators the chapter summarises: the toy chapters' key indicators, then four of its own.
KEYS = tuple(records.KEY_INDICATORS) + ("rejected_log_decline_rate", "unseen_gain", "grad_ratio_initial",
                                    "log10_max_grad_rejected")

#: Roles of the responses, in the order the chapter shows them.
ROLES = ("chosen", "rejected", "other", "unseen")


def member_indicators(run: ToyRun, rate_window: int = 50) -> dict[str, np.ndarray]:
    """:func:`prefdyn.records.member_indicators` plus ``log10_max_grad_rejected``: log10 of the largest
    recorded ``|dl/dpi-|`` over training, per member (in reward space, ``|dl/dr-|``, for the reward model)."""
    ind = records.member_indicators(run, rate_window=rate_window)
    ind["log10_max_grad_rejected"] = np.max(run.records["log_grad_rejected"], axis=0) / math.log(10.0)
    return ind


def summarise_runs(runs, rate_window: int = 50, level: float = 0.95) -> dict[str, dict[str, dict[str, float]]]:
    """``{name: summary}`` for runs of one configuration each (all members are that configuration's seeds),
    with the summary of :func:`prefdyn.records.summarise_members` over :func:`member_indicators`."""
    out = {}
    for name, run in runs.items():
        ind = member_indicators(run, rate_window=rate_window)
        out[name] = records.summarise_members(ind, np.arange(len(run.member_seed)), level)
    return out


def reward_balance(run: RLHFRun) -> dict[str, float]:
    """How balanced the reward model's gradients were over all its records (000 Sec. 4): the largest
    ``|dl/dr+ + dl/dr-|`` of any pair, the largest ``| |dl/dr-| / |dl/dr+| - 1 |`` (mean sizes per step and
    member), the largest distance of ``dl/dr+`` to the closed form ``-1/(1+e^(r+-r-))``, and the final loss
    and pair accuracy (means over members)."""
    r = run.records
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = r["grad_rejected"] / r["grad_chosen"]
    return {
        "max_abs_sum_of_gradients": float(np.max(r["grad_balance"])),
        "max_abs_ratio_minus_1": float(np.max(np.abs(ratio - 1.0))),
        "max_abs_err_closed_form": float(np.max(r["grad_closed_form_err"])),
        "final_loss": float(np.mean(r["loss"][-1])),
        "final_accuracy": float(np.mean(r["accuracy"][-1])),
    }


#: Display labels of :func:`reward_balance`'s entries.
BALANCE_LABELS = {
    "max_abs_sum_of_gradients": "largest |∂ℓ/∂r+ + ∂ℓ/∂r−|",
    "max_abs_ratio_minus_1": "largest | |∂ℓ/∂r−| / |∂ℓ/∂r+| − 1 |",
    "max_abs_err_closed_form": "largest |∂ℓ/∂r+ + 1/(1 + exp(r+ − r−))|",
    "final_loss": "final loss",
    "final_accuracy": "final share of pairs with r+ > r−",
}


def final_rewards(run: RLHFRun) -> dict[str, float]:
    """The reward model's final mean reward per role (mean over prompts, then over members)."""
    return {role: float(np.mean(run.records[f"reward_{role}"][-1])) for role in ROLES}


#: Display labels of :func:`optimum_check`'s entries.
OPTIMUM_LABELS = {
    "initial_tv_to_optimum": "total variation to π* at the start",
    "final_tv_to_optimum_mean": "total variation to π* at the end",
    "final_tv_to_optimum_max": "largest total variation to π* at the end",
    "final_optimality_gap_max": "largest gap J(π*) − J(π) at the end",
    "final_expected_reward": "expected reward at the end",
    "final_kl": "KL(π ‖ π0) at the end",
    "mean_clip_fraction": "share of PPO samples clipped",
}


def optimum_check(run: RLHFRun) -> dict[str, float]:
    """How close a policy run ends to the closed-form optimum pi* of its objective: total variation to pi*
    at the start and the end (mean over members; the end also as the largest member), the largest
    optimality gap ``J(pi*) - J(pi)`` at the end, and the final expected reward and KL(pi || pi_0); a PPO
    run adds the mean fraction of clipped samples."""
    r = run.records
    out = {
        "initial_tv_to_optimum": float(np.mean(r["tv_to_optimum"][0])),
        "final_tv_to_optimum_mean": float(np.mean(r["tv_to_optimum"][-1])),
        "final_tv_to_optimum_max": float(np.max(r["tv_to_optimum"][-1])),
        "final_optimality_gap_max": float(np.max(r["optimum_gap"][-1])),
        "final_expected_reward": float(np.mean(r["reward"][-1])),
        "final_kl": float(np.mean(r["kl"][-1])),
    }
    clip = r.get("clip_frac")
    if clip is not None and np.isfinite(clip).any():
        out["mean_clip_fraction"] = float(np.nanmean(clip))
    return out


def optimum_by_beta(run: RLHFRun, betas) -> dict[str, list[float]]:
    """The closed-form optimum ``pi* = pi_0 exp(r/beta)/Z`` of the run's final reward for each ``beta`` in
    ``betas``: per role the probability mass (mean over prompts and members; ``rejected`` is per rejected
    response), one value per beta, in float64."""
    b = torch.tensor([_check_beta(x) for x in betas], dtype=torch.float64).view(-1, 1, 1, 1)
    ref, rew = torch.as_tensor(run.ref_log_probs)[None], torch.as_tensor(run.rewards)[None]
    probs = torch.log_softmax(ref + rew / b, dim=-1).exp()                  # [n_betas, M, P, R]
    masks = run.spec.role_masks()
    out = {}
    for role in ROLES:
        mass = (probs * masks[role]).sum(-1).mean(-1).mean(-1)              # [n_betas]
        if role == "rejected":
            mass = mass / run.spec.n_rejected
        out[role] = [float(x) for x in mass]
    return out


#: Display labels of :func:`log_gap_to_optimum`'s entries.
LOG_GAP_LABELS = {
    "final_kl_optimum_to_policy_mean": "KL(π* ‖ π) at the end",
    "final_kl_optimum_to_policy_max": "largest KL(π* ‖ π) at the end",
    "final_max_abs_log_ratio_mean": "max over responses of |log π − log π*|",
    "final_max_abs_log_ratio_max": "largest max |log π − log π*| of any member",
    "log10_rejected_ratio_to_optimum_mean": "log10 π(rejected) / π*(rejected)",
    "log10_rejected_ratio_to_optimum_min": "smallest log10 π(rejected) / π*(rejected)",
    "log10_chosen_ratio_to_optimum_mean": "log10 π(chosen) / π*(chosen)",
}


def log_gap_to_optimum(run: RLHFRun) -> dict[str, float]:
    """How far a policy run ends from the closed-form optimum pi* in log-probabilities, where the total
    variation of :func:`optimum_check` cannot see it (two tiny probabilities many orders apart are close in
    total variation).

    From the final policy and log pi* (:meth:`RLHFRun.optimum_log_probs`), in float64: KL(pi* || pi) per
    prompt, averaged over prompts (mean and largest over members); the largest |log pi - log pi*| over
    prompts and responses (natural log; mean and largest over members); log10 pi/pi* averaged over the
    rejected responses of every prompt (mean over members, and the smallest member: every member's rejected
    responses are at least that many orders above pi*), and the same for each prompt's chosen response.
    """
    lp = np.asarray(run.final_log_probs, dtype=np.float64)
    lo = np.asarray(run.optimum_log_probs(), dtype=np.float64)
    if lp.shape != lo.shape:
        raise ValueError(f"log_gap_to_optimum: final log-probabilities {lp.shape} and pi* {lo.shape} differ")
    d = lp - lo                                                            # [M, P, R]
    kl = (np.exp(lo) * (lo - lp)).sum(-1).mean(-1)                         # KL(pi* || pi), [M]
    worst = np.abs(d).max(axis=(1, 2))                                     # [M]
    masks = run.spec.role_masks()
    ln10 = math.log(10.0)
    rej_ratio = d[:, masks["rejected"].numpy()].mean(-1) / ln10            # [M]
    cho_ratio = d[:, masks["chosen"].numpy()].mean(-1) / ln10
    return {
        "final_kl_optimum_to_policy_mean": float(kl.mean()),
        "final_kl_optimum_to_policy_max": float(kl.max()),
        "final_max_abs_log_ratio_mean": float(worst.mean()),
        "final_max_abs_log_ratio_max": float(worst.max()),
        "log10_rejected_ratio_to_optimum_mean": float(rej_ratio.mean()),
        "log10_rejected_ratio_to_optimum_min": float(rej_ratio.min()),
        "log10_chosen_ratio_to_optimum_mean": float(cho_ratio.mean()),
    }
