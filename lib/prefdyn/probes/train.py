"""A thin preference-training loop for Hugging Face causal LMs that logs the gradient probes.

:func:`train_preference` trains ``model`` on preference pairs with any loss of :mod:`prefdyn.losses` (a
name, a ``Loss`` or a user's function of the loss signature) and records, every ``log_every`` updates,
the probes of :mod:`prefdyn.probes.gradients` aggregated over that update's pairs
(:data:`~prefdyn.probes.gradients.PROBE_COLUMNS`): the training log is a dict of 1-D float64 numpy
arrays over the logged steps, in the toy records' column names where a column means the same thing, so
:mod:`prefdyn.stats` can summarise it.

How one update works (``batch_size`` pairs, ``grad_accum`` micro-batches of ``batch_size / grad_accum``):

1. one forward pass per micro-batch, chosen and rejected together (:func:`forward_logprobs`), giving the
   sequence log-probs (sums over the response's tokens) with their autograd graph;
2. the loss is evaluated in float64 on those sums and the cached reference sums, and
   ``g = dl/dlog pi`` per pair comes from :func:`prefdyn.losses.logprob_grads` (autograd through the loss
   alone);
3. ONE backward pass through the model, of ``sum_i (g+_i log pi+_i + g-_i log pi-_i) / batch_size``: by the
   chain rule exactly the gradient of the batch loss, the MEAN over the update's pairs of the per-pair
   loss (TRL's reduction). The probes reuse the same ``g``: no second backward pass;
4. optional gradient clipping (``max_grad_norm``), then the optimiser's step.

Conventions and choices
-----------------------
- **Reference.** The reference log-probs are computed ONCE, before the first update, for every pair (the
  initial ``model``, or ``ref_model``, in eval mode, without gradients) and cached in the result
  (``run.ref``); pass ``ref=`` to reuse a cache. The policy trains in train mode (dropout as configured).
- **Data order.** Each epoch is a permutation of the pairs from ``torch.Generator().manual_seed(seed)``
  (``shuffle=False``: the given order); an update takes the next ``batch_size`` pairs; an epoch's
  remainder that does not fill a batch is skipped (``drop_last``). ``seed`` also seeds dropout, inside
  ``torch.random.fork_rng`` (the caller's global RNG state is left as it was).
- **Logged step.** Row ``step = t`` holds the probes of update ``t``'s forward pass, i.e. at the weights
  after ``t`` updates; steps ``0, log_every, 2 log_every, ...`` and the last update are logged.
- **Evaluation hook.** ``evaluate(model) -> Mapping[str, float]`` (optional) runs at every logged row, at
  the same weights (after ``t`` updates, before update ``t``'s forward pass; step 0: before any update),
  with the model in eval mode under ``torch.no_grad()`` and inside ``torch.random.fork_rng`` (whatever it
  draws leaves the training's dropout stream alone), then the model goes back to train mode: passing it
  changes no training number. Its values become the log columns ``eval_<key>`` (the same keys at every
  row), aligned with ``log["step"]``. E.g. held-out accuracies over training (000 Fig. 4).
- **Device and precision.** ``device="auto"`` is CUDA when available (:func:`prefdyn.device.resolve_device`).
  A model loaded with a ``device_map`` (``hf_device_map``) stays where it is; another is moved to the
  device. On CUDA the forward runs under bf16 autocast (``bf16=None`` means "on CUDA") with the LM head
  in float32 (``fp32_head``, as TRL's ``cast_lm_head_to_fp32``); on the CPU everything runs in the
  model's dtype (float32 or float64), ``bf16=True`` is refused. Log-softmax, loss and probes are
  float32/float64 whatever the autocast.
- **Loading.** :func:`load_model` takes any local Hugging Face model directory, nothing is downloaded
  (``local_files_only=True``); on CUDA the model loads with ``device_map="auto"`` (accelerate), so a model
  larger than one GPU is split over the GPUs without code changes.

Seed paper: 000 Sec. 5 and Fig. 10 (the size of dl/dpi+- while DPO trains an LLM).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .. import losses as L
from ..device import resolve_device
from ..progress import bar
from ..validate import check_bool, check_choice, check_int, check_number, check_positive
from .gradients import PROBE_COLUMNS, gradient_probes, probe_row
from .logprobs import PairLogProbs, forward_logprobs, pad_token_id_of, pair_logprobs
from .pairs import PADDING_SIDES, TokenPairs, collate, token_pairs, tokenize_pairs

__all__ = ["OPTIMIZERS", "PreferenceRun", "train_preference", "load_model", "load_tokenizer", "as_token_pairs"]

#: Optimisers by name (or pass a function ``params -> torch.optim.Optimizer``).
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class PreferenceRun:
    """The result of :func:`train_preference`.

    ``log``: :data:`~prefdyn.probes.gradients.PROBE_COLUMNS` -> 1-D float64 array over the logged steps;
    ``losses``: the batch loss of every update (float64 ``[steps]``); ``ref``: the cached reference
    log-probs of every pair (:class:`PairLogProbs`); ``model`` the trained model; ``config`` the settings."""

    log: dict[str, np.ndarray]
    losses: np.ndarray
    ref: PairLogProbs
    model: Any
    config: dict = field(default_factory=dict)


def _model_dir(model_path: Any) -> str:
    """``model_path`` as a string, checked: a local directory with a ``config.json`` (one-line error)."""
    path = os.fspath(model_path) if isinstance(model_path, (str, os.PathLike)) else None
    if path is None or not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"model_path: expected a local Hugging Face model directory with a config.json, "
                         f"got {model_path!r}")
    return path


def load_tokenizer(model_path: str | os.PathLike):
    """The tokenizer of a local model directory (nothing downloaded); a missing pad token falls back to
    the EOS token (padding is never scored nor attended to)."""
    path = _model_dir(model_path)
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_path: str | os.PathLike, *, device: str | torch.device = "auto", dtype: Any = None,
               tokenizer: bool = True):
    """``(model, tokenizer)`` from a local Hugging Face model directory, nothing downloaded
    (``tokenizer=False``: ``(model, None)``).

    On CUDA the model loads with ``device_map="auto"`` (accelerate places it over the visible GPUs), on
    the CPU without a device map. ``dtype`` defaults to float32 (the weights the optimiser updates; bf16
    is used through autocast)."""
    path = _model_dir(model_path)
    dev = resolve_device(device)
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, device_map="auto" if dev.type == "cuda" else None, local_files_only=True,
        dtype=torch.float32 if dtype is None else dtype)
    return model, (load_tokenizer(path) if tokenizer else None)


def as_token_pairs(pairs: Any, tokenizer: Any = None, *, max_length: int | None = None,
                   truncation: str = "keep_start") -> TokenPairs:
    """:class:`TokenPairs` from ``TokenPairs`` (truncated if ``max_length``), from dicts with
    ``prompt_ids``/``chosen_ids``/``rejected_ids`` (TRL's tokenized format), or from dicts with
    ``prompt``/``chosen``/``rejected`` text (needs ``tokenizer``, :func:`tokenize_pairs`)."""
    if isinstance(pairs, TokenPairs):
        if max_length is None:
            return pairs
        return token_pairs(pairs.prompt, pairs.chosen, pairs.rejected, max_length=max_length, truncation=truncation)
    if isinstance(pairs, Mapping) or not hasattr(pairs, "__len__") or isinstance(pairs, str):
        raise ValueError(f"pairs: expected TokenPairs or a list of dicts, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError("pairs: expected at least one preference pair, got none")
    first = pairs[0]
    if not isinstance(first, Mapping):
        raise ValueError(f"pairs: expected TokenPairs or a list of dicts, got a list of {type(first).__name__}")
    for keys, text in ((("prompt_ids", "chosen_ids", "rejected_ids"), False), (("prompt", "chosen", "rejected"), True)):
        if all(k in first for k in keys):
            for i, d in enumerate(pairs):
                missing = [k for k in keys if not isinstance(d, Mapping) or k not in d]
                if missing:
                    raise ValueError(f"pairs[{i}]: missing {', '.join(missing)}")
            cols = [[d[k] for d in pairs] for k in keys]
            if not text:
                return token_pairs(*cols, max_length=max_length, truncation=truncation)
            if tokenizer is None:
                raise ValueError("tokenizer: text pairs need a tokenizer (or pass token ids)")
            return tokenize_pairs(tokenizer, *cols, max_length=max_length, truncation=truncation)
    raise ValueError("pairs: each dict needs prompt/chosen/rejected (text) or prompt_ids/chosen_ids/rejected_ids")


def _optimizer(optimizer: Any, params: list, lr: float, weight_decay: float, betas, eps: float):
    if callable(optimizer):
        return optimizer(params)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def train_preference(model: Any, pairs: Any, *, tokenizer: Any = None, loss: Any = "dpo",
                     loss_params: Mapping[str, Any] | None = None, steps: int = 100, batch_size: int = 8,
                     grad_accum: int = 1, lr: float = 1e-6, optimizer: str | Callable = "adamw",
                     weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                     max_grad_norm: float | None = None, log_every: int = 10, ref_model: Any = None,
                     ref: PairLogProbs | None = None, seed: int = 0, shuffle: bool = True,
                     padding_side: str = "right", max_length: int | None = None, truncation: str = "keep_start",
                     device: str | torch.device = "auto", bf16: bool | None = None, fp32_head: bool = True,
                     progress: bool = True,
                     evaluate: Callable[[Any], Mapping[str, float]] | None = None) -> PreferenceRun:
    """Preference training of a causal LM with the probes logged (module docstring: the update, the
    conventions, the log). ``model`` is a ``transformers`` causal LM (or any module whose forward takes
    ``input_ids``/``attention_mask`` and returns ``.logits``) or a local model directory
    (:func:`load_model`; its tokenizer is loaded too). ``pairs``: see :func:`as_token_pairs`.

    ``evaluate``: ``None`` or a callable ``evaluate(model) -> Mapping[str, float]`` run at every logged row
    (module docstring, "Evaluation hook"); its values are added to ``log`` as ``eval_<key>`` columns.

    Every argument is checked before any forward pass (one-line ``ValueError``): unknown loss or loss
    parameter, empty pairs, mismatched lengths, a response with zero tokens after truncation,
    ``batch_size`` larger than the data or not divisible by ``grad_accum``, ``bf16`` on the CPU, ..."""
    Lo = L.get(loss)
    params = Lo.check(**dict(loss_params or {}))
    steps = check_int("steps", steps, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    grad_accum = check_int("grad_accum", grad_accum, 1)
    if batch_size % grad_accum:
        raise ValueError(f"grad_accum: expected a divisor of batch_size={batch_size}, got {grad_accum}")
    lr = check_positive("lr", lr)
    if not callable(optimizer):
        check_choice("optimizer", optimizer, OPTIMIZERS)
    weight_decay = check_number("weight_decay", weight_decay, 0.0)
    eps = check_positive("eps", eps)
    if (not isinstance(betas, (tuple, list)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)):
        raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
    if max_grad_norm is not None:
        max_grad_norm = check_positive("max_grad_norm", max_grad_norm)
    log_every = check_int("log_every", log_every, 1)
    seed = check_int("seed", seed, 0)
    shuffle, progress = check_bool("shuffle", shuffle), check_bool("progress", progress)
    fp32_head = check_bool("fp32_head", fp32_head)
    if evaluate is not None and not callable(evaluate):
        raise ValueError(f"evaluate: expected None or a callable model -> mapping of floats, got "
                         f"{type(evaluate).__name__}")
    check_choice("padding_side", padding_side, PADDING_SIDES)
    dev = resolve_device(device)
    if bf16 is None:
        bf16 = dev.type == "cuda"
    elif check_bool("bf16", bf16) and dev.type != "cuda":
        raise ValueError("bf16: bf16 autocast runs on CUDA only; on the CPU use bf16=False (or None)")

    path = _model_dir(model) if isinstance(model, (str, os.PathLike)) else None
    if path is not None and tokenizer is None:
        tokenizer = load_tokenizer(path)
    tp = as_token_pairs(pairs, tokenizer, max_length=max_length, truncation=truncation)
    n = len(tp)
    if batch_size > n:
        raise ValueError(f"batch_size: expected at most the number of pairs ({n}), got {batch_size}")
    if ref is not None and (not isinstance(ref, PairLogProbs) or len(ref) != n):
        raise ValueError(f"ref: expected the PairLogProbs of the {n} pairs, got "
                         f"{type(ref).__name__ if not isinstance(ref, PairLogProbs) else f'{len(ref)} pairs'}")
    if path is not None:     # every argument is checked: now the weights
        model, _ = load_model(path, device=dev, tokenizer=False)
    if not hasattr(model, "parameters") or not callable(model):
        raise ValueError(f"model: expected a causal LM module or a model directory, got {type(model).__name__}")
    if getattr(model, "hf_device_map", None) is None:
        model.to(dev)
    if ref_model is not None and getattr(ref_model, "hf_device_map", None) is None:
        ref_model.to(dev)
    pad = pad_token_id_of(model, tokenizer)
    autocast = torch.bfloat16 if bf16 else None
    micro = batch_size // grad_accum
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("model: has no parameter with requires_grad=True")
    opt = _optimizer(optimizer, trainable, lr, weight_decay, tuple(betas), eps)
    config = dict(loss=Lo.name, loss_params=dict(params), steps=steps, batch_size=batch_size, grad_accum=grad_accum,
                  lr=lr, optimizer=optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom"),
                  weight_decay=weight_decay, betas=tuple(betas), eps=eps, max_grad_norm=max_grad_norm,
                  log_every=log_every, seed=seed, shuffle=shuffle, padding_side=padding_side, device=str(dev),
                  bf16=bool(bf16), fp32_head=fp32_head, n_pairs=n)

    if ref is None:          # 1. the reference log-probs, once (the initial policy unless ref_model is given)
        ref = pair_logprobs(ref_model if ref_model is not None else model, tp, batch_size=micro,
                            padding_side=padding_side, pad_token_id=pad, autocast=autocast, fp32_head=fp32_head)
    logged = sorted(set(range(0, steps, log_every)) | {steps - 1})
    rows: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    losses = np.empty(steps, dtype=np.float64)
    order = _batches(n, batch_size, steps, seed, shuffle)
    devices = list(range(torch.cuda.device_count())) if dev.type == "cuda" else []
    was_training = bool(getattr(model, "training", False))
    model.train()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for t in (bar(range(steps), desc=f"{Lo.name} training") if progress else range(steps)):
                idx = order[t]
                if evaluate is not None and t in logged:    # the weights after t updates, before update t
                    evals.append(_run_evaluate(evaluate, model, devices, t, evals[0] if evals else None))
                opt.zero_grad(set_to_none=True)
                parts = []
                for j in range(grad_accum):
                    mi = idx[j * micro:(j + 1) * micro]
                    parts.append(_micro_step(model, tp.select(mi), ref.select(mi), Lo, params, pad,
                                             padding_side, autocast, fp32_head, batch_size))
                lc, lr_, rc, rr, nc, nr, gc, gr, val = (torch.cat(z) for z in zip(*parts))
                losses[t] = float(val.mean())
                want = t in logged
                gnorm = None
                if max_grad_norm is not None:
                    gnorm = float(torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm))
                elif want:
                    gnorm = _grad_norm(trainable)
                if want:
                    pr = gradient_probes(Lo, lc, lr_, rc, rr, nc, nr, grads=(gc, gr), **params)
                    rows.append({"step": float(t), **probe_row(pr, lc, lr_, nc, nr), "grad_norm": gnorm})
                opt.step()
    finally:
        if not was_training:
            model.eval()
    log = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in PROBE_COLUMNS}
    if evals:
        log.update({f"eval_{k}": np.array([e[k] for e in evals], dtype=np.float64) for k in evals[0]})
    return PreferenceRun(log, losses, ref, model, config)


def _run_evaluate(evaluate: Callable, model: Any, devices: list, t: int, first: dict | None) -> dict[str, float]:
    """``evaluate(model)`` in eval mode, without gradients, inside ``fork_rng`` (the training's RNG stream
    is left as it was); the model goes back to train mode. Returns its values as floats, checked: a
    mapping of string keys to real numbers, the same keys as at the first logged row (``first``)."""
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            out = evaluate(model)
    finally:
        model.train()
    if not isinstance(out, Mapping) or not all(isinstance(k, str) for k in out):
        raise ValueError(f"evaluate: expected a mapping of str keys to floats, got {type(out).__name__} at step {t}")
    vals = {}
    for k, v in out.items():
        try:
            vals[k] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"evaluate: expected a number for key {k!r}, got {type(v).__name__} at step {t}") from None
    if first is not None and set(vals) != set(first):
        raise ValueError(f"evaluate: expected the keys {list(first)} at every logged row, got {list(vals)} at step {t}")
    return vals


def _micro_step(model, pairs: TokenPairs, ref: PairLogProbs, Lo, params, pad, padding_side, autocast, fp32_head,
                batch_size):
    """Forward, loss gradient per pair, and the backward pass of one micro-batch (its share of the batch
    mean: each pair weighs ``1 / batch_size``). Returns the float64 CPU tensors the probes need."""
    sl = forward_logprobs(model, collate(pairs, pad, padding_side), autocast=autocast, fp32_head=fp32_head)
    b = len(pairs)
    seq = sl.sums
    s64 = seq.detach().to(torch.float64)
    lc, lr = s64[:b], s64[b:]
    rc, rr = ref.chosen.to(s64.device), ref.rejected.to(s64.device)
    gc, gr = L.logprob_grads(Lo, lc, lr, rc, rr, **params)
    with torch.no_grad():
        val = Lo.fn(lc, lr, rc, rr, **params)
    g = torch.cat([gc, gr]).to(seq.dtype) / batch_size
    seq.backward(g)
    ln = sl.lengths.detach().cpu()
    cpu = [x.detach().to("cpu", torch.float64) for x in (lc, lr, rc, rr)]
    return (*cpu, ln[:b], ln[b:], gc.detach().cpu(), gr.detach().cpu(), val.detach().to("cpu", torch.float64))


def _grad_norm(params: list) -> float:
    grads = [p.grad.detach().to(torch.float64).norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _batches(n: int, batch_size: int, steps: int, seed: int, shuffle: bool) -> list[torch.Tensor]:
    """The pair indices of every update: epochs of a seeded permutation, ``drop_last``."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        out.extend(perm[k * batch_size:(k + 1) * batch_size] for k in range(per_epoch))
    return out[:steps]

