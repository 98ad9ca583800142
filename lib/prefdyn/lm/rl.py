"""On-policy RL on a rule-based score against DPO on pairs scored by the same rules: 000 Sec. 5.2.1 /
Table 3 on the arithmetic task of :mod:`prefdyn.lm.task`.

000 Sec. 5.2.1 compares DPO with RLHF-PPO on two self-built datasets "with explicit scoring standards"
(poems scored by rules on five metrics, slogans on two; Baichuan2-33B) and finds DPO worse
(:data:`PAPER_TABLE3`, quoted). 000 Sec. 4 gives the reason the book tests: a reward-based method does not
have the 3D-properties of DPO. Here the score is computed by rules on the arithmetic task, so both methods
optimise exactly the metrics they are graded on:

- :data:`RULES` and :func:`rule_scores` - the per-rule scores of a response (the analogue of 000's
  per-metric columns): ``correct``, ``digits``, ``format`` and their weighted sum ``total`` (below);
- :func:`train_rloo` - RLOO (REINFORCE with a leave-one-out baseline, Ahmadian et al. 2024, "Back to
  basics") on ``total``, on-policy, with a KL penalty to the initial policy folded into the reward;
  :func:`rloo_advantages` and :func:`rloo_loss` are its advantage and loss;
- :func:`evaluate_rules` - the mean of each rule's score over problems (greedy or sampled);
- :func:`dpo_vs_rl` - the comparison: base, DPO (:func:`prefdyn.probes.train_preference`, loss ``"dpo"``
  of :mod:`prefdyn.losses`) and RLOO from the same policy, per seed, with 95% intervals over seeds.

The rules
---------
One score per response. :func:`prefdyn.lm.task.score` is the verifier that scores the preference pairs of
:func:`prefdyn.lm.make_pairs`; here it scores RLOO's samples and DPO's pairs alike ("the same rules").

- ``correct``: 1 if the verifier scores the response 1 (its parsed answer's value is ``a + b``), else 0;
- ``digits``: the verifier's score itself, in ``[0, 1]``: 1 when correct, else 0.9 x the fraction of
  right-aligned digits that agree with the ``digits + 1``-digit truth, 0 when unparsable;
- ``format``: 1 if the response is written in one of the task's two answer styles (:func:`is_formatted`):
  *plain*, exactly ``digits + 1`` digits (``"0522"``), or *worked*, ``digits`` two-digit column totals
  separated by ``,``, a ``;`` and ``digits + 1`` digits (``"12,12,05;0522"``); whatever the values (so a
  well-formatted wrong answer scores 1, ``"522"`` scores 0 although it is correct, and a formatted
  response always parses: ``parse_answer`` is not ``None``);
- ``total`` = ``digits + FORMAT_WEIGHT x format`` with :data:`FORMAT_WEIGHT` = 0.1: in ``[0, 1.1]``,
  1.1 for a correct answer in an answer style. The reward of RLOO and the ranking of DPO's pairs.

RLOO (:func:`train_rloo`)
-------------------------
One update per step, every sample drawn from the current policy:

1. ``prompts_per_step`` prompts, the next ones of a seeded permutation of ``problems`` (epochs; an epoch's
   remainder that does not fill a step is skipped, as :func:`prefdyn.probes.train_preference` does);
2. ``k`` responses per prompt from the current policy (:func:`prefdyn.lm.generate`, temperature
   ``temperature``, one ``torch.Generator`` seeded ``seed + 1`` for the whole run);
3. the score ``s_i`` of each (:func:`rule_scores`, rule ``reward``, ``total`` by default), the sequence
   log-probs ``log pi(y_i)`` of the policy (with gradients) and ``log pi_ref(y_i)`` of the reference (the
   initial policy, frozen), both SUMS over the response's tokens (EOS included when it was sampled; a
   response cut at ``max_new_tokens`` is scored as written, without EOS) from
   :func:`prefdyn.probes.response_logprobs`;
4. the shaped reward ``R_i = s_i - kl_coef (log pi(y_i) - log pi_ref(y_i))``, log pi detached: the KL
   penalty in the reward, per sequence (the usual KL-in-reward form of InstructGPT / RLOO; its mean over
   samples is the k1 estimate of ``KL(pi || pi_ref)``, logged as ``kl``);
5. the leave-one-out advantage ``A_i = R_i - mean_{j != i} R_j`` over the ``k`` samples of the same prompt
   (the baseline of each sample is the mean of the OTHER samples: unbiased, no critic); not whitened;
6. the loss ``-mean_i A_i log pi(y_i)`` (``A`` detached; the mean over all ``prompts_per_step x k``
   samples), one backward pass, optional gradient clipping (``max_grad_norm``), one AdamW step (constant
   ``lr``, betas 0.9/0.999, no weight decay).

On-policy exactly at ``temperature = 1`` (the default): ``log pi`` is the policy's own log-prob, so at
another temperature the samples come from the tempered policy and the estimator is biased. The logged row
``step = t`` describes update ``t``'s samples, i.e. the policy after ``t`` updates (steps ``0, log_every,
...`` and the last). The same arguments give the same log on a machine: the prompts' order from
``torch.Generator().manual_seed(seed)``, the samples from ``seed + 1``, a fixed number of CPU threads.

Sampling runs on the CPU (:func:`prefdyn.lm.generate`); with ``device="cuda"`` the forward and backward
passes run on the GPU and a CPU copy of the weights, refreshed every step, samples. The samples are
re-tokenised from their text (:func:`prefdyn.lm.task.encode`), which is exact except for a sampled
``<pad>`` (never a training target, so vanishingly rare), which the text drops.

The RLOO loss is a policy-gradient surrogate of sampled sequences, not a preference loss of the signature
of :mod:`prefdyn.losses` (chosen, rejected and reference log-probs per pair), so it is defined here, as
the toy PPO surrogate is in :mod:`prefdyn.rlhf`; DPO's loss is :mod:`prefdyn.losses`'s ``"dpo"``.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..device import cpu_settings, resolve_device
from ..probes import response_logprobs, train_preference
from ..progress import bar
from ..stats import mean_ci
from ..validate import check_bool, check_choice, check_int, check_number, check_positive
from . import task as T
from .models import generate, load_lm
from .prefdata import Samples
from .scenarios import carry_problems

__all__ = ["PAPER_TABLE3", "RULES", "FORMAT_WEIGHT", "is_formatted", "rule_scores", "evaluate_rules",
           "rloo_advantages", "rloo_loss", "RLOO_COLUMNS", "RLOORun", "train_rloo", "rule_pairs",
           "RL_METHODS", "RL_EVAL_SETS", "EVAL_MODES", "RLComparison", "dpo_vs_rl"]

#: 000 Table 3 as printed (Baichuan2-33B; every metric higher is better): dataset -> metric -> method ->
#: score. The extracted text interleaves the two methods' rows ("RLHF-PPO DPO 0.91 0.93 ..."): the first
#: number of each cell is RLHF-PPO's, as the text's "the performance of DPO on both datasets is worse" reads.
PAPER_TABLE3 = {
    "Poem": {"Row Number": {"Base": 0.75, "RLHF-PPO": 0.91, "DPO": 0.93},
             "Words per Row": {"Base": 0.61, "RLHF-PPO": 0.79, "DPO": 0.75},
             "Rhythm": {"Base": 0.64, "RLHF-PPO": 0.87, "DPO": 0.83},
             "Tone Pattern": {"Base": 0.60, "RLHF-PPO": 0.82, "DPO": 0.75},
             "Title": {"Base": 0.51, "RLHF-PPO": 1.0, "DPO": 0.78}},
    "Slogan": {"Word Count": {"Base": 0.34, "RLHF-PPO": 0.47, "DPO": 0.45},
               "Content": {"Base": 0.57, "RLHF-PPO": 0.78, "DPO": 0.70}},
}
#: The weight of ``format`` in ``total`` (module docstring).
FORMAT_WEIGHT = 0.1
#: The rules, name -> what it scores (module docstring); each is a number per response.
RULES = {
    "correct": "1 if the answer's value is a + b (verifier score 1), else 0",
    "digits": "the verifier's score: 1 if correct, else 0.9 x the agreeing right-aligned digits; 0 if unparsable",
    "format": "1 if written in an answer style of the task (plain: digits+1 digits; worked: columns;answer)",
    "total": f"digits + {FORMAT_WEIGHT} x format, in [0, {1 + FORMAT_WEIGHT}]: the reward and the pairs' ranking",
}
#: The columns of :attr:`RLOORun.log` (per logged step; means over the step's ``prompts_per_step x k``
#: samples).
RLOO_COLUMNS = {
    "step": "update index t (the samples of the policy after t updates)",
    **{r: f"mean {r} score of the step's samples" for r in RULES},
    "reward": "mean shaped reward R = s - kl_coef (log pi - log pi_ref)",
    "kl": "mean of log pi(y) - log pi_ref(y) (sequence sums): the k1 estimate of KL(pi || pi_ref)",
    "loss": "the RLOO loss -mean A log pi(y)",
    "logp_token": "mean per-token log-prob of the samples, log pi(y) / length",
    "length": "mean response length in tokens (EOS included when sampled)",
    "grad_norm": "gradient norm before clipping",
}
#: The methods of :func:`dpo_vs_rl`.
RL_METHODS = ("base", "dpo", "rloo")
#: The evaluation sets of :func:`dpo_vs_rl` (those of :data:`prefdyn.lm.scenarios.EVAL_SETS`).
RL_EVAL_SETS = ("in_distribution", "ood_carry", "ood_4digit")
#: Decoding of the evaluation: greedy, or one sample per problem at temperature 1.
EVAL_MODES = ("greedy", "sampled")


# ----------------------------------------------------------------------------------------------- rules
def is_formatted(response: str, digits: int) -> bool:
    """Whether ``response`` is written in one of the task's answer styles for ``digits``-digit operands
    (module docstring, rule ``format``); the values are not checked."""
    d = check_int("digits", digits, 1, 9)
    plain = rf"[0-9]{{{d + 1}}}"
    return re.fullmatch(rf"{plain}|[0-9]{{2}}(?:,[0-9]{{2}}){{{d - 1}}};{plain}", response) is not None


def rule_scores(responses: Sequence, problems: T.Problems) -> dict[str, torch.Tensor]:
    """The score of every response under every rule of :data:`RULES`: ``{rule: float64 tensor}``.

    ``responses``: one string per problem (tensors ``[P]``) or ``n`` strings per problem (a list of
    ``P`` lists, as :func:`prefdyn.lm.generate` returns them; tensors ``[P, n]``). The verifier runs per
    string (:func:`prefdyn.lm.task.score`, the scorer of :func:`prefdyn.lm.make_pairs`); the rules are
    combined as tensors."""
    if not isinstance(problems, T.Problems):
        raise ValueError(f"problems: expected prefdyn.lm.task.Problems, got {type(problems).__name__}")
    if isinstance(responses, str) or not hasattr(responses, "__len__") or len(responses) != len(problems):
        got = len(responses) if hasattr(responses, "__len__") and not isinstance(responses, str) else responses
        raise ValueError(f"responses: expected one entry per problem ({len(problems)}), got {got!r}")
    flat = all(isinstance(r, str) for r in responses)
    rows = [[r] for r in responses] if flat else [list(r) for r in responses]
    if not all(isinstance(r, str) for rs in rows for r in rs) or len({len(rs) for rs in rows}) != 1:
        raise ValueError("responses: expected strings, or lists of equally many strings, one list per problem")
    d = problems.digits
    ver = torch.tensor([[T.score(r, a, b, d) for r in rs] for rs, a, b in
                        zip(rows, problems.a.tolist(), problems.b.tolist())], dtype=torch.float64)
    fmt = torch.tensor([[is_formatted(r, d) for r in rs] for rs in rows], dtype=torch.float64)
    out = {"correct": (ver == 1.0).double(), "digits": ver, "format": fmt, "total": ver + FORMAT_WEIGHT * fmt}
    return {k: v.squeeze(1) for k, v in out.items()} if flat else out


def _cpu_model(model: Any) -> Any:
    """``model`` if it lives on the CPU, else a CPU copy (sampling runs on the CPU)."""
    p = next(model.parameters(), None)
    return model if p is None or p.device.type == "cpu" else copy.deepcopy(model).to("cpu")


def evaluate_rules(model: Any, problems: T.Problems, *, greedy: bool = True, n: int = 1, seed: int = 0,
                   max_new_tokens: int = 24) -> dict[str, float]:
    """The mean of each rule's score (:data:`RULES`) of ``model``'s responses to ``problems``: greedy
    decoding (one response per problem), or ``n`` samples per problem at temperature 1 from
    ``torch.Generator().manual_seed(seed)`` (the mean over problems and samples)."""
    check_bool("greedy", greedy)
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    check_int("max_new_tokens", max_new_tokens, 1)
    if not isinstance(problems, T.Problems):
        raise ValueError(f"problems: expected prefdyn.lm.task.Problems, got {type(problems).__name__}")
    g = None if greedy else torch.Generator().manual_seed(seed)
    resp = generate(_cpu_model(model), problems.prompts, n=1 if greedy else n, greedy=greedy, generator=g,
                    max_new_tokens=max_new_tokens)
    return {k: float(v.mean()) for k, v in rule_scores(resp, problems).items()}


# ----------------------------------------------------------------------------------------------- RLOO
def rloo_advantages(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                    kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, R)`` for ``[P, k]`` tensors (prompts x samples; sequence log-prob sums), float64, detached:
    the shaped reward ``R = score - kl_coef (logp - ref_logp)`` and the leave-one-out advantage
    ``A_i = R_i - mean_{j != i} R_j`` within each row (``k >= 2``)."""
    score, logp, ref_logp = (torch.as_tensor(x).detach().to(torch.float64) for x in (score, logp, ref_logp))
    if score.dim() != 2 or score.shape[1] < 2 or logp.shape != score.shape or ref_logp.shape != score.shape:
        raise ValueError(f"score: expected [prompts, k >= 2] tensors of one shape, got {tuple(score.shape)}, "
                         f"{tuple(logp.shape)}, {tuple(ref_logp.shape)}")
    k = score.shape[1]
    R = score - check_number("kl_coef", kl_coef, 0.0) * (logp - ref_logp.to(logp.device))
    return R - (R.sum(1, keepdim=True) - R) / (k - 1), R


def rloo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, score: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """The RLOO loss ``-mean_i A_i log pi(y_i)`` over all ``[P, k]`` samples, with ``A``
    (:func:`rloo_advantages`) detached: its gradient is ``-A_i / (P k)`` per sequence log-prob, the
    REINFORCE estimate of minus the gradient of ``E[score] - kl_coef KL(pi || pi_ref)``."""
    A, _ = rloo_advantages(score, logp, ref_logp, kl_coef)
    return -(A.to(logp.device, logp.dtype) * logp).mean()


@dataclass
class RLOORun:
    """The result of :func:`train_rloo`: ``log`` (:data:`RLOO_COLUMNS` -> float64 array over the logged
    steps); ``rewards`` the mean ``reward``-rule score of every update's samples (float64 ``[steps]``);
    ``model`` the trained copy of the policy; ``config`` the settings."""

    log: dict[str, np.ndarray]
    rewards: np.ndarray
    model: Any
    config: dict = field(default_factory=dict)


def _policy_copy(policy: Any) -> Any:
    """A trainable copy of ``policy`` (a model, or a name/directory for :func:`prefdyn.lm.load_lm`)."""
    if isinstance(policy, str):
        return load_lm(policy)
    if not hasattr(policy, "parameters") or not hasattr(policy, "config"):
        raise ValueError(f"policy: expected a causal LM or a model name, got {type(policy).__name__}")
    return copy.deepcopy(policy)


def _prompt_batches(n: int, size: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Problem indices per update: epochs of a seeded permutation, an epoch's remainder skipped."""
    g = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g)
        out.extend(perm[j * size:(j + 1) * size] for j in range(n // size))
    return out[:steps]


def _sampled_ids(model: Any, prompts: list[str], responses: list[list[str]],
                 max_new_tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of every (prompt, sampled response), prompt-major: EOS appended unless the response was
    cut at the length limit of :func:`prefdyn.lm.generate` (then EOS was never sampled)."""
    limit = min(max_new_tokens, model.config.n_positions - len(prompts[0]) - 1)
    p_ids, r_ids = [], []
    for p, rs in zip(prompts, responses):
        pi = T.encode(p)
        for r in rs:
            p_ids.append(pi)
            r_ids.append(T.encode(r) + ([T.EOS] if len(r) < limit else []))
    return p_ids, r_ids


def train_rloo(policy: Any, problems: T.Problems, *, k: int = 4, steps: int = 16, prompts_per_step: int = 16,
               lr: float = 2e-4, kl_coef: float = 0.05, reward: str = "total", max_grad_norm: float | None = 1.0,
               seed: int = 0, log_every: int = 4, temperature: float = 1.0, max_new_tokens: int = 24,
               device: str | torch.device = "cpu", threads: int | None = 1, progress: bool = False) -> RLOORun:
    """RLOO of a copy of ``policy`` (a model, or ``"arith-a"``/a model directory) on ``problems`` (the
    prompt pool): ``steps`` updates of ``prompts_per_step`` prompts x ``k`` samples, the score ``reward``
    (a rule of :data:`RULES`), KL coefficient ``kl_coef`` (module docstring: every step and convention).
    ``threads``: torch CPU threads during the run (:class:`prefdyn.device.cpu_settings`). Every argument is
    checked before any model work (one-line ``ValueError``)."""
    if not isinstance(problems, T.Problems):
        raise ValueError(f"problems: expected prefdyn.lm.task.Problems, got {type(problems).__name__}")
    k = check_int("k", k, 2)
    steps = check_int("steps", steps, 1)
    prompts_per_step = check_int("prompts_per_step", prompts_per_step, 1, len(problems))
    lr = check_positive("lr", lr)
    kl_coef = check_number("kl_coef", kl_coef, 0.0)
    check_choice("reward", reward, RULES)
    if max_grad_norm is not None:
        max_grad_norm = check_positive("max_grad_norm", max_grad_norm)
    seed = check_int("seed", seed, 0)
    log_every = check_int("log_every", log_every, 1)
    temperature = check_positive("temperature", temperature)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
    progress = check_bool("progress", progress)
    if threads is not None:
        check_int("threads", threads, 1)
    dev = resolve_device(device)
    model = _policy_copy(policy)
    with cpu_settings(threads, flush_denormal=False):
        ref = copy.deepcopy(model).eval().requires_grad_(False).to(dev)
        model.to(dev)
        sampler = model if dev.type == "cpu" else copy.deepcopy(model).to("cpu")
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        order = _prompt_batches(len(problems), prompts_per_step, steps, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        logged = set(range(0, steps, log_every)) | {steps - 1}
        rows, rewards = [], np.empty(steps, dtype=np.float64)
        devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for t in (bar(range(steps), desc="RLOO") if progress else range(steps)):
                batch = problems.select(order[t])
                if sampler is not model:
                    sampler.load_state_dict(model.state_dict())
                texts = generate(sampler, batch.prompts, n=k, temperature=temperature, generator=gen,
                                 max_new_tokens=max_new_tokens)
                scores = rule_scores(texts, batch)
                p_ids, r_ids = _sampled_ids(sampler, batch.prompts, texts, max_new_tokens)
                model.train()
                sl = response_logprobs(model, p_ids, r_ids, pad_token_id=T.PAD)
                with torch.no_grad():
                    ref_lp = response_logprobs(ref, p_ids, r_ids, pad_token_id=T.PAD).sums
                P = len(batch)
                logp, ref_lp = sl.sums.view(P, k), ref_lp.view(P, k)
                s = scores[reward].to(dev)
                loss = rloo_loss(logp, ref_lp, s, kl_coef)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    gnorm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
                else:
                    gnorm = float(torch.stack([p.grad.detach().double().norm() for p in params
                                               if p.grad is not None]).norm())
                opt.step()
                rewards[t] = float(scores[reward].mean())
                if t in logged:
                    with torch.no_grad():
                        lp = logp.detach().double().cpu()
                        kl = lp - ref_lp.double().cpu()
                        _, R = rloo_advantages(scores[reward], lp, ref_lp.cpu(), kl_coef)
                        n_tok = sl.lengths.view(P, k).double().cpu()
                        rows.append({"step": float(t), **{r: float(v.mean()) for r, v in scores.items()},
                                     "reward": float(R.mean()), "kl": float(kl.mean()), "loss": float(loss.detach()),
                                     "logp_token": float((lp / n_tok).mean()), "length": float(n_tok.mean()),
                                     "grad_norm": gnorm})
    model.eval()
    log = {c: np.array([r[c] for r in rows], dtype=np.float64) for c in RLOO_COLUMNS}
    config = dict(k=k, steps=steps, prompts_per_step=prompts_per_step, lr=lr, kl_coef=kl_coef, reward=reward,
                  max_grad_norm=max_grad_norm, seed=seed, log_every=log_every, temperature=temperature,
                  max_new_tokens=max_new_tokens, device=str(dev), optimizer="adamw", weight_decay=0.0,
                  reference="the initial policy, frozen", kl="in the reward, per sequence (log-prob sums)",
                  baseline="leave-one-out", n_problems=len(problems), n_generated=steps * prompts_per_step * k)
    return RLOORun(log, rewards, model, config)



# --------------------------------------------------------------------------------------- DPO vs RLOO
def rule_pairs(policy: Any, problems: T.Problems, *, k: int = 4, seed: int = 0, temperature: float = 1.0,
               max_new_tokens: int = 24) -> tuple[list[dict[str, str]], Samples, dict]:
    """DPO pairs scored by the rules: ``k`` samples per problem from ``policy`` (as :func:`train_rloo`
    samples them: :func:`prefdyn.lm.generate`, ``torch.Generator().manual_seed(seed)``), each scored by
    ``total`` (:func:`rule_scores`); chosen = the best, rejected = the worst (:class:`prefdyn.lm.Samples`'s
    ``best``/``worst``: ties go to the first in sampling order, as in :func:`prefdyn.lm.make_pairs`);
    problems whose ``k`` totals are all equal are dropped (no preference; :func:`prefdyn.lm.make_pairs`
    drops its all-right and all-wrong prompts likewise). Returns ``(pairs, samples, meta)``: the pairs as
    ``{"prompt", "chosen", "rejected"}`` text dicts (the format of :mod:`prefdyn.probes`), the scored samples
    of every problem (``scores`` = totals) and the fraction kept."""
    if not isinstance(problems, T.Problems):
        raise ValueError(f"problems: expected prefdyn.lm.task.Problems, got {type(problems).__name__}")
    check_int("k", k, 2)
    check_int("seed", seed, 0)
    check_positive("temperature", temperature)
    check_int("max_new_tokens", max_new_tokens, 1)
    resp = generate(_cpu_model(policy), problems.prompts, n=k, temperature=temperature,
                    generator=torch.Generator().manual_seed(seed), max_new_tokens=max_new_tokens)
    sm = Samples(problems, resp, rule_scores(resp, problems)["total"])
    keep = (sm.scores.max(1).values > sm.scores.min(1).values).nonzero().squeeze(1).tolist()
    best, worst, prompts = sm.best(), sm.worst(), problems.prompts
    pairs = [{"prompt": prompts[i], "chosen": best[i], "rejected": worst[i]} for i in keep]
    meta = {"n_problems": len(problems), "n_samples": k, "n_pairs": len(pairs),
            "frac_kept": len(pairs) / len(problems), "n_generated": len(problems) * k}
    return pairs, sm, meta


@dataclass
class RLComparison:
    """The result of :func:`dpo_vs_rl`.

    ``scores [method, seed, eval set, mode, rule]`` (:data:`RL_METHODS`, ``seeds``, ``eval_sets``,
    ``modes``, :data:`RULES`): the mean rule scores of :func:`evaluate_rules`. The tables hold
    :func:`prefdyn.stats.mean_ci` over seeds (95%): ``table`` ``{method: {rule: ci}}`` on held-out
    in-distribution problems, greedy (000 Table 3's layout); ``tables[set][mode][method][rule]`` every
    evaluation; ``change[set][mode][method][rule]`` method - base per seed; ``rl_minus_dpo[set][mode][rule]``
    RLOO - DPO per seed (paired: both start from the same policy and see the same prompts). The base policy
    is evaluated once (greedy decoding and the fixed ``eval_seed`` make it the same for every seed): its
    interval has zero width. ``rl_log`` (:data:`RLOO_COLUMNS` -> ``[seed, logged step]``), ``dpo_losses``
    ``[seed, steps]``, ``pair_meta`` per seed (:func:`rule_pairs`), ``config``, ``seconds`` the wall time."""

    methods: list[str]
    seeds: list[int]
    eval_sets: list[str]
    modes: list[str]
    scores: np.ndarray
    table: dict
    tables: dict
    change: dict
    rl_minus_dpo: dict
    rl_log: dict[str, np.ndarray]
    dpo_losses: np.ndarray
    pair_meta: list[dict]
    config: dict = field(default_factory=dict)
    seconds: float = float("nan")


def _eval_problems(name: str, n: int, seed: int, digits: int = 3) -> T.Problems:
    if name == "in_distribution":
        return T.sample_problems(n, digits, split="test", seed=seed + 3)
    if name == "ood_4digit":
        return T.sample_problems(n, digits + 1, split="any", seed=seed + 4)
    return carry_problems(n, digits, split="test", seed=seed + 5)


def dpo_vs_rl(policy: Any = "arith-a", *, n_prompts: int = 256, seeds: Sequence[int] = (0, 1, 2), k: int = 4,
              prompts_per_step: int = 16, rl_lr: float = 2e-4, kl_coef: float = 0.05, dpo_lr: float = 2e-5,
              beta: float = 0.1, max_grad_norm: float | None = 1.0, n_eval: int = 200,
              eval_sets: Sequence[str] = RL_EVAL_SETS[:2], modes: Sequence[str] = EVAL_MODES, data_seed: int = 0,
              eval_seed: int = 0, max_new_tokens: int = 24, device: str | torch.device = "cpu",
              threads: int | None = 1, progress: bool = False) -> RLComparison:
    """000 Table 3's comparison on the arithmetic task: the base policy, DPO and RLOO from it, scored per
    rule (:data:`RULES`) on held-out problems, per seed.

    Per seed ``s``, from the same ``n_prompts`` training-split prompts (``sample_problems(..., seed=s)``)
    and the same budget of ``n_prompts x k`` generated responses:

    - **RLOO** (:func:`train_rloo`, ``seed=s``): ``n_prompts / prompts_per_step`` updates (one epoch: every
      prompt once, ``k`` fresh samples of the current policy each), ``rl_lr``, ``kl_coef``;
    - **DPO** (:func:`prefdyn.probes.train_preference`, loss ``"dpo"`` with ``beta``): the pairs of
      :func:`rule_pairs` (``k`` samples per prompt from the initial policy, ``seed=s + 2``, ranked by the
      same ``total``), the same number of updates with ``prompts_per_step`` pairs each (so DPO, having
      dropped its tied prompts, sees its pairs about ``n_prompts / n_pairs`` times; fewer pairs than
      ``prompts_per_step`` shrink its batch to all of them), ``dpo_lr``, the pairs' order seeded ``s``.

    Matched: prompts, generated responses, updates, prompts per update, AdamW (no weight decay, constant
    learning rate), gradient clipping ``max_grad_norm``; not matched: each method's learning rate and its
    regulariser (``kl_coef`` against ``beta``). Evaluation (:func:`evaluate_rules`, fixed by ``data_seed``):
    ``n_eval`` problems of each of ``eval_sets`` (:data:`RL_EVAL_SETS`: held-out 3-digit problems, held-out
    problems with a carry out of every column, 4-digit problems) in each of ``modes`` (greedy; one sample
    per problem at temperature 1 from ``eval_seed``). Every argument is checked before any model work.

    Defaults: 256 prompts, 16 per update (16 updates), ``k = 4`` (1024 generated responses per method and
    seed). The learning rates and ``kl_coef`` were chosen on validation problems (``data_seed=1``: other
    held-out problems than the default evaluation's; seeds 10 and 11), by the greedy exact-match accuracy
    (the base policy: 0.59): ``rl_lr`` in {5e-5, 1e-4, 2e-4, 4e-4} at ``kl_coef`` 0.05 gave 0.87-0.88,
    0.87-0.89, 0.89-0.91, 0.61-0.73, and ``kl_coef`` 0.02 / 0.1 at 2e-4 gave 0.83-0.91 / 0.89-0.90;
    ``dpo_lr`` in {1e-5, 2e-5, 5e-5, 1e-4, 2e-4} gave 0.74, 0.79-0.82, 0.53-0.65, 0.25-0.33, 0.25-0.26 (above
    2e-5 DPO ends below the base policy)."""
    t0 = time.perf_counter()
    seeds = [check_int("seeds", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one seed, got none")
    check_int("n_prompts", n_prompts, 2)
    check_int("k", k, 2)
    check_int("prompts_per_step", prompts_per_step, 1, n_prompts)
    if n_prompts % prompts_per_step:
        raise ValueError(f"n_prompts: expected a multiple of prompts_per_step={prompts_per_step} (RLOO sees every "
                         f"prompt once), got {n_prompts}")
    check_positive("rl_lr", rl_lr)
    check_number("kl_coef", kl_coef, 0.0)
    check_positive("dpo_lr", dpo_lr)
    check_positive("beta", beta)
    if max_grad_norm is not None:
        check_positive("max_grad_norm", max_grad_norm)
    check_int("n_eval", n_eval, 1)
    eval_sets, modes = list(eval_sets), list(modes)
    if not eval_sets or not modes:
        raise ValueError(f"{'eval_sets' if not eval_sets else 'modes'}: expected at least one entry, got none")
    for e in eval_sets:
        check_choice("eval_sets", e, RL_EVAL_SETS)
    for m in modes:
        check_choice("modes", m, EVAL_MODES)
    check_int("data_seed", data_seed, 0)
    check_int("eval_seed", eval_seed, 0)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_bool("progress", progress)
    if threads is not None:
        check_int("threads", threads, 1)
    resolve_device(device)
    steps = n_prompts // prompts_per_step
    rules = list(RULES)
    base = _policy_copy(policy).eval()
    probs = {e: _eval_problems(e, n_eval, data_seed) for e in eval_sets}
    scores = np.zeros((len(RL_METHODS), len(seeds), len(eval_sets), len(modes), len(rules)))

    def evaluate(model) -> np.ndarray:
        out = np.zeros((len(eval_sets), len(modes), len(rules)))
        for i, e in enumerate(eval_sets):
            for j, m in enumerate(modes):
                r = evaluate_rules(model, probs[e], greedy=m == "greedy", n=1, seed=eval_seed,
                                   max_new_tokens=max_new_tokens)
                out[i, j] = [r[x] for x in rules]
        return out

    tok = T.make_tokenizer()
    rl_logs: dict[str, list] = {}
    dpo_losses, pair_meta = [], []
    with cpu_settings(threads, flush_denormal=False):
        scores[0] = evaluate(base)[None]
        for si, s in enumerate(seeds):
            pool = T.sample_problems(n_prompts, 3, split="train", seed=s)
            rl = train_rloo(base, pool, k=k, steps=steps, prompts_per_step=prompts_per_step, lr=rl_lr,
                            kl_coef=kl_coef, max_grad_norm=max_grad_norm, seed=s, log_every=max(1, steps // 8),
                            max_new_tokens=max_new_tokens, device=device, threads=threads, progress=progress)
            scores[2, si] = evaluate(rl.model)
            for c, v in rl.log.items():
                rl_logs.setdefault(c, []).append(v)
            pairs, _, meta = rule_pairs(base, pool, k=k, seed=s + 2, max_new_tokens=max_new_tokens)
            if not pairs:
                raise ValueError(f"seeds: seed {s} gave no pair (every prompt's {k} samples tied); raise n_prompts")
            dpo = train_preference(copy.deepcopy(base), pairs, tokenizer=tok, loss="dpo", loss_params={"beta": beta},
                                   steps=steps, batch_size=min(prompts_per_step, len(pairs)), lr=dpo_lr,
                                   optimizer="adamw", weight_decay=0.0, max_grad_norm=max_grad_norm,
                                   log_every=max(1, steps // 8), seed=s, device=device, progress=progress)
            scores[1, si] = evaluate(dpo.model.eval())
            dpo_losses.append(dpo.losses)
            pair_meta.append({**meta, "dpo_batch_size": min(prompts_per_step, len(pairs))})
    ci = mean_ci
    tables = {e: {m: {meth: {r: ci(scores[a, :, i, j, q]) for q, r in enumerate(rules)}
                      for a, meth in enumerate(RL_METHODS)} for j, m in enumerate(modes)}
              for i, e in enumerate(eval_sets)}
    change = {e: {m: {meth: {r: ci(scores[a, :, i, j, q] - scores[0, :, i, j, q]) for q, r in enumerate(rules)}
                      for a, meth in enumerate(RL_METHODS)} for j, m in enumerate(modes)}
              for i, e in enumerate(eval_sets)}
    diff = {e: {m: {r: ci(scores[2, :, i, j, q] - scores[1, :, i, j, q]) for q, r in enumerate(rules)}
                for j, m in enumerate(modes)} for i, e in enumerate(eval_sets)}
    main = tables[eval_sets[0]][modes[0]]
    config = dict(policy=policy if isinstance(policy, str) else type(policy).__name__, n_prompts=n_prompts,
                  seeds=seeds, k=k, prompts_per_step=prompts_per_step, steps=steps, rl_lr=rl_lr, kl_coef=kl_coef,
                  dpo_lr=dpo_lr, beta=beta, max_grad_norm=max_grad_norm, n_eval=n_eval, eval_sets=eval_sets,
                  modes=modes, data_seed=data_seed, eval_seed=eval_seed, max_new_tokens=max_new_tokens,
                  device=str(resolve_device(device)), threads=threads, n_generated_per_method=n_prompts * k,
                  main_table=(eval_sets[0], modes[0]))
    return RLComparison(list(RL_METHODS), seeds, eval_sets, modes, scores, main, tables, change, diff,
                        {c: np.stack(v) for c, v in rl_logs.items()}, np.stack(dpo_losses), pair_meta, config,
                        time.perf_counter() - t0)
