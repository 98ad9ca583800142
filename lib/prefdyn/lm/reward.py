"""A reward model trained on the same preference pairs as DPO, and the pairwise accuracy over training of the
reward model and of DPO's implicit reward (000 Sec. 4 and Sec. 5.3, Fig. 4; 000 App. D.2, Figs. 11-12).

000 Sec. 5.3 trains, from the same model (Baichuan2-33B), a reward model (RM) and a DPO policy on the same
preference data, and plots the *accuracy*, "the proportion of instances in which the model correctly
identifies the chosen response as superior to the rejected one", over training: the RM's curve is smooth,
DPO's "fluctuates significantly" (000 Fig. 4, held-out sets); and on the training set DPO's accuracy
reaches 100% in the second epoch while its held-out growth "slows down sharply": DPO overfits (000 App. D.2,
Figs. 11-12). This module builds that comparison on the small GPT-2 of :mod:`prefdyn.lm`:

- :func:`reward_model` - "the same transformer with a scalar head" (000 Sec. 4): a
  ``transformers.GPT2ForSequenceClassification`` (``num_labels=1``) carrying the policy's transformer
  weights and a fresh, seeded score head;
- :func:`pair_rewards` - ``r(x, a+)`` and ``r(x, a-)`` of every pair, chosen and rejected in one forward;
- :func:`train_reward_model` - Bradley-Terry training (:func:`prefdyn.losses.reward_model_loss`, 000 eq. 3)
  with the accuracy and mean loss of every evaluation set logged during training;
- :func:`implicit_margins`, :func:`implicit_accuracy`, :func:`implicit_evaluator` - DPO's implicit reward
  ``beta log pi/pi_0`` compared across a pair, and the ``evaluate`` hook that logs it while
  :func:`prefdyn.probes.train_preference` trains;
- :func:`compare_rm_dpo`, :func:`rm_dpo_summary` - both methods per seed on one scenario's train pairs,
  evaluated on the train and held-out pairs at the same steps, and the numbers that decide 000's two claims.

Conventions and choices
-----------------------
- **Reward read at the EOS.** The RM's reward of a sequence is the score head applied to the last hidden
  state (after the final layer norm) at its last non-pad token, which is the response's EOS
  (:func:`prefdyn.probes.tokenize_pairs` appends it). ``GPT2ForSequenceClassification`` finds that token
  from ``config.pad_token_id`` (the rightmost id that is not the pad id), so a response may not end with
  the pad id (checked). Batches come from :func:`prefdyn.probes.collate` (right padding by default;
  position ids count real tokens only), so rewards do not depend on padding or on batch composition
  (tested against each sequence alone, unpadded).
- **Score head.** ``Linear(n_embd, 1, bias=False)`` initialised ``N(0, init_std^2)`` from
  ``torch.Generator().manual_seed(seed)``, ``init_std = 1/sqrt(n_embd)`` by default: initial rewards of
  order 1, random across responses. Not zeros: with a zero head the transformer's first gradient is
  exactly zero. Dropout is 0 everywhere (as the shipped policy), weights float32.
- **Accuracy.** The fraction of pairs whose margin is > 0: ``r+ - r-`` for the RM, the implicit-reward margin
  ``(log pi+ - log pi0+) - (log pi- - log pi0-)`` for DPO (sequence SUMS of the response tokens' log-probs,
  EOS included, :func:`prefdyn.probes.pair_logprobs`; ``beta > 0`` does not change the sign). A tie (margin
  exactly 0) counts as wrong (``ties="wrong"``, the default) or as half right (``ties="half"``). At step 0
  DPO's policy IS its reference, so every margin is exactly 0 (computed with the same batches, bit for bit):
  with ``ties="wrong"`` DPO starts at accuracy 0, with ``"half"`` at 0.5. :func:`compare_rm_dpo` uses
  ``"half"`` by default, so both methods start near chance and the first epoch's gain means the same thing
  for both.
- **Losses.** The RM's training and evaluation loss is the mean over pairs of
  :func:`prefdyn.losses.reward_model_loss` (``-log sigmoid(r+ - r-)``, 000 eq. 3 / 004 eq. 3 with its sign
  corrected); DPO's evaluation loss is the mean over pairs of :func:`prefdyn.losses.pair_loss` ``"dpo"``
  against the reference log-probs cached once.
- **Training.** AdamW, no weight decay, a constant learning rate; ``batch_size`` pairs per update; each
  epoch a permutation of the pairs from ``torch.Generator().manual_seed(seed)``, an epoch's remainder skipped
  (``drop_last``): the SAME batches, in the same order, as :func:`prefdyn.probes.train_preference` with the
  same ``seed`` (the same batching function). So a seed fixes the data order of both methods; for the RM it
  also draws the score head (so the RM's spread over seeds has one source more than DPO's, which starts
  from the fixed policy: conservative for the claim that DPO varies more).
- **Logged rows.** As in :func:`prefdyn.probes.train_preference`: row ``step = t`` is measured at the
  weights after ``t`` updates (its ``loss`` is update ``t``'s batch loss, before that update), rows
  ``0, log_every, 2 log_every, ...`` and ``steps - 1``; ``epoch = t / (updates per epoch)``. The
  evaluation after the last update is :attr:`RewardRun.final`.

Seed paper: 000 Sec. 4 (eq. 3), Sec. 5.3 (Fig. 4), App. D.2 (Figs. 11-12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import losses as L
from ..device import cpu_settings, resolve_device
from ..progress import bar
from ..stats import mean_ci
from ..validate import check_bool, check_choice, check_int, check_number, check_positive
from . import task as T
from .models import load_lm

__all__ = ["ACCURACY_TIES", "RM_DPO_METHODS", "RM_DPO_SIDES", "reward_model", "pair_rewards", "pair_accuracy",
           "RewardRun", "train_reward_model", "implicit_margins", "implicit_accuracy", "implicit_evaluator", "RMvsDPO",
           "compare_rm_dpo", "rm_dpo_summary"]

#: How a tie (margin exactly 0) counts in a pairwise accuracy.
ACCURACY_TIES = ("wrong", "half")
#: The two methods of :func:`compare_rm_dpo`, in the order of its arrays' first axis.
RM_DPO_METHODS = ("reward_model", "dpo")
#: The evaluation sets of :func:`compare_rm_dpo`: the training pairs and the held-out pairs of the split.
RM_DPO_SIDES = ("train", "test")


# ----------------------------------------------------------------------------- the reward model

def reward_model(policy: str = "arith-a", *, seed: int = 0, init_std: float | None = None):
    """The reward model of ``policy`` (a shipped model name or a GPT-2 model directory, :func:`load_lm`): a
    ``GPT2ForSequenceClassification`` with one output whose transformer weights are the policy's, whose
    ``config.pad_token_id`` is the task tokenizer's pad id, with a score head drawn ``N(0, init_std^2)``
    from ``torch.Generator().manual_seed(seed)`` (``init_std`` default ``1/sqrt(n_embd)``), dropout 0,
    float32, eval mode. The caller's global RNG is left as it was."""
    seed = check_int("seed", seed, 0)
    if init_std is not None:
        init_std = check_number("init_std", init_std, 0.0)
    try:
        lm = load_lm(policy)
    except ValueError as e:
        raise ValueError(f"policy: {str(e).split(': ', 1)[-1]}") from None
    if getattr(lm.config, "model_type", None) != "gpt2" or not hasattr(lm, "transformer"):
        raise ValueError(f"policy: expected a GPT-2 model (GPT2LMHeadModel), got {type(lm).__name__}")
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config.from_dict(lm.config.to_dict())
    cfg.num_labels = 1
    cfg.pad_token_id = int(T.make_tokenizer().pad_token_id)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    cfg.architectures = ["GPT2ForSequenceClassification"]
    with torch.random.fork_rng(devices=[]):                # the throw-away default init draws from it
        rm = GPT2ForSequenceClassification(cfg)
    rm.transformer.load_state_dict(lm.transformer.state_dict(), strict=True)
    std = 1.0 / math.sqrt(cfg.n_embd) if init_std is None else init_std
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rm.score.weight.copy_(torch.randn(rm.score.weight.shape, generator=g, dtype=torch.float64) * std)
    return rm.float().eval()


def _pad_id(rm: Any) -> int:
    pad = getattr(getattr(rm, "config", None), "pad_token_id", None)
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"rm: expected a sequence-classification model with config.pad_token_id set, got {pad!r}")
    return pad


def _token_pairs(name: str, pairs: Any, tokenizer: Any, pad: int):
    """``pairs`` as :class:`prefdyn.probes.TokenPairs` (text pairs with ``tokenizer``, default the task's),
    checked: no response ends with the pad id (the reward is read at the last non-pad token)."""
    from ..probes import as_token_pairs

    try:
        tp = as_token_pairs(pairs, tokenizer if tokenizer is not None else T.make_tokenizer())
    except ValueError as e:                                # "pairs...: ..." -> "<name>...: ..."
        msg = str(e)
        raise ValueError(name + msg[5:] if msg.startswith("pairs") else f"{name}: {msg}") from None
    if any(s[-1] == pad for s in (*tp.chosen, *tp.rejected)):
        raise ValueError(f"{name}: a response ends with the pad id {pad}; the reward is read at the last "
                         f"non-pad token (the EOS): tokenize with add_eos")
    return tp


def _rewards(rm: Any, batch) -> torch.Tensor:
    """``[2b]`` rewards of a :class:`prefdyn.probes.Batch` (chosen rows first), with the autograd graph
    when the caller's context has gradients on."""
    from ..probes import model_device

    b = batch.to(model_device(rm))
    out = rm(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
             use_cache=False)
    return out.logits[:, 0]


def pair_rewards(rm: Any, pairs: Any, *, batch_size: int = 64, tokenizer: Any = None,
                 padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``(r+, r-)``: the rewards of every pair's chosen and rejected response (float64 CPU tensors ``[n]``),
    without gradients, in eval mode (restored after), ``batch_size`` pairs (``2 x batch_size`` sequences)
    per forward pass, padded on ``padding_side`` by :func:`prefdyn.probes.collate`. ``pairs``: anything
    :func:`prefdyn.probes.as_token_pairs` takes (text pairs are tokenized with ``tokenizer``, default the
    task's :func:`prefdyn.lm.task.make_tokenizer`). The reward is read at each sequence's EOS (module
    docstring); the result does not depend on ``batch_size`` or ``padding_side`` (tested)."""
    from ..probes import PADDING_SIDES, collate

    batch_size = check_int("batch_size", batch_size, 1)
    check_choice("padding_side", padding_side, PADDING_SIDES)
    pad = _pad_id(rm)
    tp = _token_pairs("pairs", pairs, tokenizer, pad)
    n = len(tp)
    was_training = bool(getattr(rm, "training", False))
    rm.eval()
    parts = []
    try:
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                r = _rewards(rm, collate(tp.select(range(lo, min(n, lo + batch_size))), pad, padding_side))
                r = r.detach().to("cpu", torch.float64)
                parts.append(r.view(2, -1))
    finally:
        if was_training:
            rm.train()
    r = torch.cat(parts, dim=1)
    return r[0], r[1]


def pair_accuracy(margin: Any, ties: str = "wrong") -> float:
    """The fraction of pairs with ``margin > 0`` (a 1-D tensor or array of per-pair margins); a margin
    exactly 0 counts as wrong (``ties="wrong"``) or as half right (``"half"``)."""
    check_choice("ties", ties, ACCURACY_TIES)
    m = torch.as_tensor(margin, dtype=torch.float64).reshape(-1)
    if m.numel() == 0:
        raise ValueError("margin: expected at least one pair, got none")
    if bool(torch.isnan(m).any()):
        raise ValueError("margin: expected numbers, got NaN")
    right = (m > 0).to(torch.float64)
    if ties == "half":
        right = right + 0.5 * (m == 0).to(torch.float64)
    return float(right.mean())


def _rm_metrics(rm: Any, pairs, batch_size: int, ties: str) -> dict[str, float]:
    """``{"accuracy", "loss"}`` of the reward model on ``pairs`` (TokenPairs): pairwise accuracy and the mean
    over pairs of :func:`prefdyn.losses.reward_model_loss`."""
    rc, rr = pair_rewards(rm, pairs, batch_size=batch_size)
    return {"accuracy": pair_accuracy(rc - rr, ties), "loss": float(L.reward_model_loss(rc, rr).mean())}


def _check_eval_sets(eval_pairs: Any, tokenizer: Any, pad: int) -> dict[str, Any]:
    if eval_pairs is None:
        return {}
    if not isinstance(eval_pairs, Mapping):
        raise ValueError(f"eval_pairs: expected a mapping name -> pairs, got {type(eval_pairs).__name__}")
    out = {}
    for name, pairs in eval_pairs.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"eval_pairs: expected non-empty string names, got {name!r}")
        out[name] = _token_pairs(f"eval_pairs[{name!r}]", pairs, tokenizer, pad)
    return out


@dataclass
class RewardRun:
    """The result of :func:`train_reward_model`.

    ``log``: 1-D float64 arrays over the logged rows: ``step``, ``epoch`` (fractional), ``loss`` (the batch
    loss of update ``step``), and per evaluation set ``eval_<name>_accuracy``, ``eval_<name>_loss`` (the
    same column names as :func:`implicit_evaluator` gives a DPO run); ``losses``: the batch loss of every
    update (float64 ``[steps]``); ``final``: ``<name>_accuracy``/``<name>_loss`` after the last update;
    ``model``: the trained reward model; ``config``: the settings."""

    log: dict[str, np.ndarray]
    losses: np.ndarray
    final: dict[str, float]
    model: Any
    config: dict = field(default_factory=dict)


def train_reward_model(rm: Any, train_pairs: Any, *, eval_pairs: Mapping[str, Any] | None = None, epochs: int = 2,
                       batch_size: int = 16, lr: float = 1e-3, seed: int = 0, log_every: int = 1,
                       ties: str = "wrong", tokenizer: Any = None, eval_batch_size: int = 64,
                       device: str | torch.device = "cpu", progress: bool = False) -> RewardRun:
    """Bradley-Terry training of the reward model ``rm`` (:func:`reward_model`) on ``train_pairs`` (000 Sec. 4,
    eq. 3): ``epochs x (n // batch_size)`` AdamW updates (no weight decay, constant ``lr``) of the batch mean
    of :func:`prefdyn.losses.reward_model_loss`, chosen and rejected of the batch in one forward, the batches
    of :func:`prefdyn.probes.train_preference` with the same ``seed``. Every ``log_every`` updates (and at
    step 0, before any update) it logs the batch loss and the accuracy (ties counted as ``ties`` says) and
    mean loss of every set of ``eval_pairs`` (name -> pairs); module docstring: the conventions. ``rm`` is
    trained in place (moved to ``device``) and returned in eval mode in :class:`RewardRun`.

    Every argument is checked before any forward pass (one-line ``ValueError``)."""
    from ..probes import collate
    from ..probes.train import _batches

    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    lr = check_positive("lr", lr)
    seed = check_int("seed", seed, 0)
    log_every = check_int("log_every", log_every, 1)
    check_choice("ties", ties, ACCURACY_TIES)
    eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
    progress = check_bool("progress", progress)
    dev = resolve_device(device)
    if not isinstance(rm, torch.nn.Module) or not hasattr(rm, "score"):
        raise ValueError(f"rm: expected a GPT2ForSequenceClassification (see reward_model), got {type(rm).__name__}")
    pad = _pad_id(rm)
    tp = _token_pairs("train_pairs", train_pairs, tokenizer, pad)
    evals = _check_eval_sets(eval_pairs, tokenizer, pad)
    n = len(tp)
    if batch_size > n:
        raise ValueError(f"batch_size: expected at most the number of training pairs ({n}), got {batch_size}")
    per_epoch = n // batch_size
    steps = epochs * per_epoch
    rm.to(dev)
    trainable = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    logged = set(range(0, steps, log_every)) | {steps - 1}
    order = _batches(n, batch_size, steps, seed, True)
    rows: list[dict[str, float]] = []
    losses = np.empty(steps, dtype=np.float64)

    def evaluate() -> dict[str, float]:
        return {f"{name}_{k}": v for name, p in evals.items()
                for k, v in _rm_metrics(rm, p, eval_batch_size, ties).items()}

    devices = list(range(torch.cuda.device_count())) if dev.type == "cuda" else []
    rm.train()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for t in (bar(range(steps), desc="reward model") if progress else range(steps)):
                row = {"step": float(t), "epoch": t / per_epoch}
                if t in logged:                    # at the weights after t updates, before update t
                    row.update({f"eval_{k}": v for k, v in evaluate().items()})
                    rm.train()
                r = _rewards(rm, collate(tp.select(order[t]), pad, "right"))
                loss = L.reward_model_loss(r[:batch_size], r[batch_size:]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[t] = float(loss.detach())
                if t in logged:
                    rows.append({**row, "loss": losses[t]})
            final = evaluate()
    finally:
        rm.eval()
    cols = ["step", "epoch", "loss", *(f"eval_{k}" for k in final)]
    log = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in cols}
    config = dict(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, optimizer="adamw", weight_decay=0.0,
                  seed=seed, log_every=log_every, ties=ties, n_pairs=n, updates_per_epoch=per_epoch,
                  eval_sets={k: len(v) for k, v in evals.items()}, device=str(dev))
    return RewardRun(log, losses, final, rm, config)


# ----------------------------------------------------------------------------- DPO's implicit reward

def _check_ref(ref: Any, n: int):
    from ..probes import PairLogProbs

    if not isinstance(ref, PairLogProbs) or len(ref) != n:
        got = type(ref).__name__ if not isinstance(ref, PairLogProbs) else f"{len(ref)} pairs"
        raise ValueError(f"ref: expected the reference PairLogProbs of the {n} pairs, got {got}")
    return ref


def implicit_margins(model: Any, pairs: Any, ref: Any, *, batch_size: int = 64, tokenizer: Any = None):
    """DPO's implicit-reward margin per pair (divided by ``beta``), float64 ``[n]``:
    ``(log pi(a+|x) - log pi0(a+|x)) - (log pi(a-|x) - log pi0(a-|x))``, sequence SUMS of the response's
    token log-probs (:func:`prefdyn.probes.pair_logprobs` in eval mode, without gradients). ``ref`` is the
    :class:`prefdyn.probes.PairLogProbs` of the reference on the same pairs, computed once (with the same
    ``batch_size``, a policy equal to its reference gives margins exactly 0)."""
    from ..probes import as_token_pairs, pair_logprobs

    batch_size = check_int("batch_size", batch_size, 1)
    tp = as_token_pairs(pairs, tokenizer if tokenizer is not None else T.make_tokenizer())
    ref = _check_ref(ref, len(tp))
    lp = pair_logprobs(model, tp, batch_size=batch_size)
    return (lp.chosen - ref.chosen) - (lp.rejected - ref.rejected)


def implicit_accuracy(model: Any, pairs: Any, ref: Any, *, ties: str = "wrong", batch_size: int = 64,
                      tokenizer: Any = None) -> float:
    """DPO's implicit-reward pairwise accuracy (000 Sec. 5.3, Fig. 4): the fraction of pairs whose
    :func:`implicit_margins` is > 0 (a tie counts as ``ties`` says, :func:`pair_accuracy`)."""
    check_choice("ties", ties, ACCURACY_TIES)
    return pair_accuracy(implicit_margins(model, pairs, ref, batch_size=batch_size, tokenizer=tokenizer), ties)


def implicit_evaluator(eval_pairs: Mapping[str, Any], refs: Mapping[str, Any], *, loss: Any = "dpo",
                       loss_params: Mapping[str, Any] | None = None, ties: str = "wrong", batch_size: int = 64,
                       tokenizer: Any = None) -> Callable[[Any], dict[str, float]]:
    """The ``evaluate`` hook of :func:`prefdyn.probes.train_preference` that logs DPO's implicit-reward
    accuracy: ``evaluate(model) -> {"<name>_accuracy", "<name>_loss"}`` for every set of ``eval_pairs``
    (name -> pairs), with ``refs[name]`` the reference's :class:`prefdyn.probes.PairLogProbs` of those pairs;
    the loss is the mean over pairs of ``loss`` (a name or :class:`prefdyn.losses.Loss`; its ``fn`` on the
    sequence sums, ``loss_params`` checked here). Everything is checked and tokenized once, here."""
    from ..probes import as_token_pairs, pair_logprobs

    Lo = L.get(loss)
    params = Lo.check(**dict(loss_params or {}))
    check_choice("ties", ties, ACCURACY_TIES)
    batch_size = check_int("batch_size", batch_size, 1)
    if not isinstance(eval_pairs, Mapping) or not eval_pairs:
        raise ValueError(f"eval_pairs: expected a non-empty mapping name -> pairs, got {type(eval_pairs).__name__}")
    if not isinstance(refs, Mapping) or set(refs) != set(eval_pairs):
        raise ValueError(f"refs: expected a mapping with the names of eval_pairs ({', '.join(map(str, eval_pairs))}),"
                         f" got {list(refs) if isinstance(refs, Mapping) else type(refs).__name__}")
    tok = tokenizer if tokenizer is not None else T.make_tokenizer()
    sets = {}
    for name, pairs in eval_pairs.items():
        tp = as_token_pairs(pairs, tok)
        sets[name] = (tp, _check_ref(refs[name], len(tp)))

    def evaluate(model: Any) -> dict[str, float]:
        out = {}
        for name, (tp, ref) in sets.items():
            lp = pair_logprobs(model, tp, batch_size=batch_size)
            margin = (lp.chosen - ref.chosen) - (lp.rejected - ref.rejected)
            out[f"{name}_accuracy"] = pair_accuracy(margin, ties)
            out[f"{name}_loss"] = float(Lo.fn(lp.chosen, lp.rejected, ref.chosen, ref.rejected, **params).mean())
        return out

    return evaluate


# ----------------------------------------------------------------------------- the comparison

@dataclass
class RMvsDPO:
    """What :func:`compare_rm_dpo` measured.

    ``accuracy[side]``, ``loss[side]`` (``side`` in :data:`RM_DPO_SIDES`): float64 ``[method, seed, row]``
    (methods in :data:`RM_DPO_METHODS` order), the pairwise accuracy and mean loss at the weights after
    ``steps[row]`` updates; ``epoch [row]`` = ``steps / updates_per_epoch``; the last row is after the last
    update (``epoch = epochs``). ``batch_loss [method, seed, update]``: every update's training loss
    (RM: Bradley-Terry, DPO: DPO, not comparable in size). ``summary()``: :func:`rm_dpo_summary`."""

    seeds: list[int]
    steps: np.ndarray
    epoch: np.ndarray
    accuracy: dict[str, np.ndarray]
    loss: dict[str, np.ndarray]
    batch_loss: np.ndarray
    config: dict = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return rm_dpo_summary(self)


def _check_split(split: Any, scenario: Any) -> None:
    if not isinstance(split, Mapping) or not all(s in split and isinstance(split[s], Mapping) for s in RM_DPO_SIDES):
        raise ValueError("split: expected {'train': {scenario: pairs}, 'test': {scenario: pairs}} "
                         "(prefdyn.lm.scenarios.split_pairs)")
    for s in RM_DPO_SIDES:
        if scenario not in split[s]:
            raise ValueError(f"scenario: expected one of the split's scenarios {sorted(split[s])}, got {scenario!r}")


def compare_rm_dpo(split: Mapping[str, Mapping[int, Any]], scenario: int = 1, *, seeds: Sequence[int] = (0, 1, 2),
                   epochs: int = 2, batch_size: int = 16, rm_lr: float = 1e-3, dpo_lr: float = 1e-4,
                   beta: float = 0.1, log_every: int = 2, ties: str = "half",
                   n_train_eval: int | str | None = "match", policy: str = "arith-a", eval_batch_size: int = 64,
                   device: str | torch.device = "cpu", threads: int | None = 1, progress: bool = False) -> RMvsDPO:
    """000 Fig. 4 / Fig. 11 on the small GPT-2: for every seed, DPO (:func:`prefdyn.probes.train_preference`,
    loss ``"dpo"`` with ``beta``, ``dpo_lr``) and a reward model (:func:`reward_model` with the seed,
    :func:`train_reward_model`, ``rm_lr``) trained on ``split["train"][scenario]``, each from a fresh copy
    of ``policy``, both with AdamW (no weight decay, constant rate), ``batch_size`` pairs per update,
    ``epochs x (n_train // batch_size)`` updates and the same batches in the same order (the seed's
    permutations). Both are evaluated at steps ``0, log_every, 2 log_every, ...`` and after the last update
    (the ``steps`` of the result), on training pairs and on ``split["test"][scenario]`` (the held-out
    pairs): pairwise accuracy (ties as ``ties`` says; ``"half"`` by default, module docstring) and mean
    loss. DPO's reference log-probs are computed once, with the policy before training.

    The training pairs evaluated are the first ``n_train_eval`` of ``split["train"][scenario]`` (a random
    subset: the split is a seeded permutation). ``"match"`` (default): as many as the held-out pairs, so
    both accuracies are fractions of equally many pairs, equally coarse and noisy, at a third of the cost
    of all of them at the default size; ``None``: all of them; an integer: that many.

    Default rates: on the llm-3d data (``n_prompts=256``, scenario 1: 161 training pairs, 10 updates per
    epoch) the reward model barely moves at ``rm_lr`` 3e-5 and 1e-4 and learns best at 1e-3 among 3e-5 ..
    3e-3; DPO's implicit reward learns at every ``dpo_lr`` from 2e-5 to 3e-4 and turns unstable at 1e-3.

    ``threads``: torch CPU threads during the runs (:class:`prefdyn.device.cpu_settings`; ``None`` leaves
    torch's setting; on a shared 2-core machine 1 is the fastest).

    Every argument is checked before any model is loaded (one-line ``ValueError``)."""
    from ..probes import pair_logprobs, train_preference

    _check_split(split, scenario)
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds: expected a list of seeds, got {seeds!r}")
    seeds = [check_int("seeds", s, 0) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected at least one seed, all distinct, got {seeds}")
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    rm_lr, dpo_lr = check_positive("rm_lr", rm_lr), check_positive("dpo_lr", dpo_lr)
    params = L.get("dpo").check(beta=check_positive("beta", beta))
    log_every = check_int("log_every", log_every, 1)
    check_choice("ties", ties, ACCURACY_TIES)
    eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
    if n_train_eval is not None and n_train_eval != "match":
        check_int("n_train_eval", n_train_eval, 1)
    progress = check_bool("progress", progress)
    dev = resolve_device(device)
    if threads is not None:
        check_int("threads", threads, 1)
    tok = T.make_tokenizer()
    tp = {s: _token_pairs(f"split[{s!r}][{scenario!r}]", split[s][scenario], tok, T.PAD) for s in RM_DPO_SIDES}
    n = len(tp["train"])
    if batch_size > n:
        raise ValueError(f"batch_size: expected at most the training pairs of scenario {scenario} ({n}), "
                         f"got {batch_size}")
    n_eval = min(n, n if n_train_eval is None else len(tp["test"]) if n_train_eval == "match" else n_train_eval)
    ev = {"train": tp["train"].select(range(n_eval)), "test": tp["test"]}
    per_epoch = n // batch_size
    steps = epochs * per_epoch
    grid = np.array(sorted(set(range(0, steps, log_every)) | {steps}), dtype=np.int64)   # rows of the arrays
    K, R = len(seeds), len(grid)
    acc = {s: np.zeros((2, K, R)) for s in RM_DPO_SIDES}
    loss = {s: np.zeros((2, K, R)) for s in RM_DPO_SIDES}
    batch_loss = np.zeros((2, K, steps))

    def put(m: int, k: int, log: Mapping[str, np.ndarray], final: Mapping[str, float]) -> None:
        keep = np.isin(log["step"], grid)
        for s in RM_DPO_SIDES:
            acc[s][m, k] = np.append(log[f"eval_{s}_accuracy"][keep], final[f"{s}_accuracy"])
            loss[s][m, k] = np.append(log[f"eval_{s}_loss"][keep], final[f"{s}_loss"])

    with cpu_settings(threads, flush_denormal=False):
        base = load_lm(policy).to(dev)         # the references on the runs' device: step 0's margins are 0
        refs = {s: pair_logprobs(base, ev[s], batch_size=eval_batch_size) for s in RM_DPO_SIDES}
        # train_preference's own reference, computed once (on the CPU it is bit for bit what it would compute;
        # on CUDA it computes its own, under its bf16 autocast)
        train_ref = pair_logprobs(base, tp["train"], batch_size=batch_size) if dev.type == "cpu" else None
        evaluate = implicit_evaluator(ev, refs, loss="dpo", loss_params=params, ties=ties,
                                      batch_size=eval_batch_size, tokenizer=tok)
        for k, seed in enumerate(seeds):
            rr = train_reward_model(reward_model(policy, seed=seed), tp["train"], eval_pairs=ev, epochs=epochs,
                                    batch_size=batch_size, lr=rm_lr, seed=seed, log_every=log_every, ties=ties,
                                    tokenizer=tok, eval_batch_size=eval_batch_size, device=device,
                                    progress=progress)
            put(0, k, rr.log, rr.final)
            batch_loss[0, k] = rr.losses
            run = train_preference(load_lm(policy), tp["train"], tokenizer=tok, loss="dpo", loss_params=params,
                                   steps=steps, batch_size=batch_size, lr=dpo_lr, optimizer="adamw",
                                   weight_decay=0.0, log_every=log_every, ref=train_ref, seed=seed, device=device,
                                   progress=progress, evaluate=evaluate)
            model = run.model.eval()
            with torch.no_grad():
                final = evaluate(model)
            put(1, k, run.log, final)
            batch_loss[1, k] = run.losses
    config = dict(policy=policy, scenario=scenario, seeds=seeds, epochs=epochs, steps=steps, batch_size=batch_size,
                  updates_per_epoch=per_epoch, rm_lr=rm_lr, dpo_lr=dpo_lr, beta=params["beta"], log_every=log_every,
                  ties=ties, optimizer="adamw", weight_decay=0.0, n_train=n, n_test=len(tp["test"]),
                  n_train_eval=n_eval, rm_init_std=1.0 / math.sqrt(base.config.n_embd))
    return RMvsDPO(seeds, grid, grid / per_epoch, acc, loss, batch_loss, config)


def _at_epochs(curves: np.ndarray, steps: np.ndarray, per_epoch: int, epochs: int) -> np.ndarray:
    """``curves [K, R]`` at the ends of epochs ``0 .. epochs`` (``[K, epochs + 1]``): the row at step
    ``e x per_epoch``, linearly interpolated between the neighbouring rows when it is not logged."""
    at = np.arange(epochs + 1) * per_epoch
    return np.stack([np.interp(at, steps, c) for c in curves])


def rm_dpo_summary(res: RMvsDPO) -> dict[str, Any]:
    """The numbers that decide 000's claims, per method (:data:`RM_DPO_METHODS`) and evaluation set
    (:data:`RM_DPO_SIDES`), each a mean with its 95% interval over seeds (:func:`prefdyn.stats.mean_ci`) unless
    said otherwise:

    - ``final_accuracy``, ``final_loss``: after the last update (000 App. D.2: DPO's train accuracy -> 100%);
    - ``epoch_gain``: a list, for epoch ``e = 1 .. epochs``, of the accuracy at the end of epoch ``e`` minus
      that at its start (000 App. D.2: DPO's held-out growth "slows down sharply" in epoch 2);
    - ``fluctuation``: the mean absolute change between consecutive rows, ``mean_t |acc_{t+1} - acc_t|``
      (000 Fig. 4: DPO "fluctuates significantly"); it also grows with the net change, so
    - ``excess_variation``: ``(sum_t |acc_{t+1} - acc_t| - |acc_end - acc_0|) / (rows - 1)``, the movement
      beyond the net change (0 for a monotone curve);
    - ``end_std_over_seeds``: the standard deviation over seeds of the final accuracy (one number, no
      interval; NaN with one seed).

    ``"dpo_minus_rm"``: the same per-seed numbers as paired differences DPO - RM (the seed fixes the data
    order of both), with their 95% intervals: where an interval excludes 0, the methods differ."""
    per_epoch = int(res.config["updates_per_epoch"])
    epochs = int(res.config["epochs"])
    out: dict[str, Any] = {m: {} for m in RM_DPO_METHODS}
    out["dpo_minus_rm"] = {}
    for side in RM_DPO_SIDES:
        per_seed = []
        for m, name in enumerate(RM_DPO_METHODS):
            a = res.accuracy[side][m]                         # [K, R]
            d = np.abs(np.diff(a, axis=1))
            ends = _at_epochs(a, res.steps, per_epoch, epochs)
            vals = {"final_accuracy": a[:, -1], "final_loss": res.loss[side][m][:, -1],
                    "fluctuation": d.mean(1) if d.shape[1] else np.zeros(len(a)),
                    "excess_variation": ((d.sum(1) - np.abs(a[:, -1] - a[:, 0])) / max(1, d.shape[1])),
                    "epoch_gain": [ends[:, e] - ends[:, e - 1] for e in range(1, epochs + 1)]}
            per_seed.append(vals)
            s = {k: ([mean_ci(x) for x in v] if k == "epoch_gain" else mean_ci(v)) for k, v in vals.items()}
            s["end_std_over_seeds"] = float(np.std(a[:, -1], ddof=1)) if len(a) > 1 else float("nan")
            out[name][side] = s
        rm_, dpo_ = per_seed
        out["dpo_minus_rm"][side] = {k: ([mean_ci(x - y) for x, y in zip(dpo_[k], rm_[k])] if k == "epoch_gain"
                                         else mean_ci(dpo_[k] - rm_[k])) for k in rm_}
    return out
