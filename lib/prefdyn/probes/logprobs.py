"""Per-token and per-sequence log-probs of (prompt, response) pairs under any Hugging Face causal LM.

For a response ``a = (a_1 .. a_L)`` to a prompt ``x`` the model gives the token log-probs
``log pi(a_t | x, a_<t)`` (the log-softmax of the logits at the position before ``a_t``). Two per-sequence
summaries, both returned:

- **sum** ``log pi(a|x) = sum_t log pi(a_t | x, a_<t)``: the sequence log-prob that every loss of
  :mod:`prefdyn.losses` takes (TRL 1.16's convention, ``per_token_logps.sum(dim=1)``);
- **per-token mean** ``log pi(a|x) / L``: the "average log probability of each token" of 000 Table 1.

Prompt tokens are never scored (masked), padding is never scored, and the chosen and rejected response
of every pair go through ONE forward pass (:func:`prefdyn.probes.pairs.collate`). The log-softmax is taken
in float32 (float64 for a float64 model) on the scored positions only, whatever the model's dtype or
autocast; under autocast the LM head itself runs in float32 (``fp32_head``). Where the model's
``forward`` takes ``logits_to_keep`` (most Hugging Face causal LMs), the LM
head runs only from the first position any response needs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from ..validate import check_choice, check_int
from .pairs import PADDING_SIDES, Batch, TokenPairs, collate, token_pairs

__all__ = ["SequenceLogProbs", "PairLogProbs", "forward_logprobs", "pair_logprobs", "response_logprobs",
           "model_device", "pad_token_id_of"]


@dataclass
class SequenceLogProbs:
    """One forward pass over a :class:`~prefdyn.probes.pairs.Batch` (``2b`` rows, chosen first).

    ``tokens [2b, Lmax]`` the response tokens' log-probs, aligned at the response's first token, 0 beyond
    its length; ``sums [2b]`` their sums (sequence log-probs); ``lengths [2b]``. ``tokens`` and ``sums`` carry
    the autograd graph when the forward ran with gradients."""

    tokens: torch.Tensor
    sums: torch.Tensor
    lengths: torch.Tensor

    @property
    def means(self) -> torch.Tensor:
        """Per-token mean log-probs ``sums / lengths`` (000 Table 1's convention)."""
        return self.sums / self.lengths.to(self.sums.dtype)


@dataclass
class PairLogProbs:
    """Log-probs of ``n`` pairs, float64 on the CPU, detached.

    ``chosen``/``rejected`` ``[n]`` sequence log-probs (sums over the response's tokens);
    ``chosen_len``/``rejected_len`` ``[n]`` response lengths; ``chosen_tokens``/``rejected_tokens``
    ``[n, Lmax]`` per-token log-probs aligned at each response's first token, 0 beyond its length."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def __len__(self) -> int:
        return self.chosen.shape[0]

    @property
    def chosen_mean(self) -> torch.Tensor:
        """Per-token mean log-prob of the chosen responses (000 Table 1)."""
        return self.chosen / self.chosen_len.to(self.chosen.dtype)

    @property
    def rejected_mean(self) -> torch.Tensor:
        """Per-token mean log-prob of the rejected responses (000 Table 1)."""
        return self.rejected / self.rejected_len.to(self.rejected.dtype)

    def select(self, index: torch.Tensor) -> "PairLogProbs":
        return PairLogProbs(*(getattr(self, f)[index] for f in
                              ("chosen", "rejected", "chosen_len", "rejected_len", "chosen_tokens", "rejected_tokens")))


def _accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name`` (its signature read once per forward function:
    ``inspect.signature`` costs about 0.2 ms, three times per training step)."""
    forward = getattr(model.forward, "__func__", model.forward)
    try:
        return name in _forward_params(forward)
    except TypeError:                                        # an unhashable callable: no cache
        return name in _forward_params.__wrapped__(forward)


@functools.lru_cache(maxsize=64)
def _forward_params(forward: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def model_device(model: Any) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings (the first device of a model
    loaded with ``device_map="auto"``), else of its first parameter."""
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(model.parameters()).device


def pad_token_id_of(model: Any = None, tokenizer: Any = None) -> int:
    """The padding token: the tokenizer's pad (else its EOS), else the model config's pad (else EOS), else
    0. Padded positions are never scored and never attended to, so any valid id works."""
    for obj in (tokenizer, getattr(model, "config", None)):
        for attr in ("pad_token_id", "eos_token_id"):
            v = getattr(obj, attr, None) if obj is not None else None
            if isinstance(v, (list, tuple)):
                v = v[0] if v else None
            if isinstance(v, int) and v >= 0:
                return v
    return 0


@contextlib.contextmanager
def _fp32_head(model: Any):
    """Run the model's output projection (``get_output_embeddings()``, an ``nn.Linear``) in float32 with
    autocast off, for the duration of the block (as TRL's ``cast_lm_head_to_fp32``): the logits, hence
    the log-probs, then carry float32 rather than bf16 rounding. Other heads are left as they are."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if not isinstance(head, torch.nn.Linear):
        yield
        return
    own = head.__dict__.get("forward")            # accelerate's device hooks live on the instance

    def forward(x):
        w = head.weight
        with torch.autocast(w.device.type, enabled=False):
            return torch.nn.functional.linear(x.to(w.device, torch.float32), w.float(),
                                              None if head.bias is None else head.bias.float())

    head.forward = forward
    try:
        yield
    finally:
        if own is not None:
            head.forward = own
        else:
            del head.forward


def forward_logprobs(model: Any, batch: Batch, *, autocast: torch.dtype | None = None,
                     fp32_head: bool = True) -> SequenceLogProbs:
    """One forward pass of ``model`` over ``batch`` (chosen and rejected together): the response tokens'
    log-probs, their sums and lengths (:class:`SequenceLogProbs`). Runs with or without gradients as the
    caller's context says; ``autocast`` (e.g. ``torch.bfloat16``) wraps the model call in autocast on the
    model's device, with the output projection in float32 unless ``fp32_head=False``. The log-softmax is
    taken outside autocast, in float32 (float64 for a float64 model)."""
    dev = model_device(model)
    b = batch.to(dev)
    T = b.input_ids.shape[1]
    kwargs: dict[str, Any] = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = b.position_ids
    if _accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    first = int(b.scored.any(0).nonzero()[0, 0])           # the first position any response needs
    keep = T - first
    trimmed = _accepts(model, "logits_to_keep") and first > 0
    if trimmed:
        kwargs["logits_to_keep"] = keep
    if autocast is None:
        ctx, head = contextlib.nullcontext(), contextlib.nullcontext()
    else:
        ctx = torch.autocast(dev.type, dtype=autocast)
        head = _fp32_head(model) if fp32_head else contextlib.nullcontext()
    with ctx, head:
        logits = model(**kwargs).logits
    if not trimmed:
        logits = logits[:, first:]
    logits = logits[:, :-1]                                 # positions first .. T-2 predict tokens first+1 .. T-1
    scored = b.scored[:, first:].to(logits.device)
    targets = b.targets[:, first:].to(logits.device)
    sel = logits[scored]                                    # [N, V]: the scored positions only, row-major
    dt = torch.float64 if sel.dtype == torch.float64 else torch.float32
    sel = sel.to(dt)
    tok = sel.gather(-1, targets[scored][:, None]).squeeze(-1) - torch.logsumexp(sel, dim=-1)
    rows, cols = scored.nonzero(as_tuple=True)
    k = (scored.cumsum(1) - 1)[rows, cols]                  # index of each scored token within its response
    lengths = b.lengths.to(logits.device)
    L = int(lengths.max())
    out = torch.zeros(scored.shape[0], L, dtype=dt, device=logits.device)
    out = out.index_put((rows, k), tok)
    return SequenceLogProbs(out, out.sum(-1), lengths)


def pair_logprobs(model: Any, pairs: TokenPairs, *, batch_size: int = 8, padding_side: str = "right",
                  pad_token_id: int | None = None, autocast: torch.dtype | None = None,
                  fp32_head: bool = True, eval_mode: bool = True) -> PairLogProbs:
    """Log-probs of every pair under ``model``, without gradients, ``batch_size`` pairs (``2 x batch_size``
    sequences) per forward pass: :class:`PairLogProbs` (float64, CPU).

    ``autocast``/``fp32_head`` as in :func:`forward_logprobs`. ``eval_mode`` runs the model in eval mode
    (no dropout; its mode is restored afterwards). The result
    does not depend on ``batch_size``, ``padding_side`` or which pairs share a batch, to float tolerance
    (tested)."""
    if not isinstance(pairs, TokenPairs):
        raise ValueError(f"pairs: expected TokenPairs (see token_pairs, tokenize_pairs), got {type(pairs).__name__}")
    check_int("batch_size", batch_size, 1)
    check_choice("padding_side", padding_side, PADDING_SIDES)
    pad = pad_token_id_of(model) if pad_token_id is None else check_int("pad_token_id", pad_token_id, 0)
    was_training = bool(getattr(model, "training", False))
    if eval_mode:
        model.eval()
    n = len(pairs)
    parts = []
    try:
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                sl = forward_logprobs(model, collate(pairs.select(range(lo, min(n, lo + batch_size))), pad,
                                                     padding_side), autocast=autocast, fp32_head=fp32_head)
                parts.append(sl)
    finally:
        if eval_mode and was_training:
            model.train()
    return _gather(parts)


def response_logprobs(model: Any, prompt_ids: Any, response_ids: Any, *, pad_token_id: int | None = None,
                      padding_side: str = "right", autocast: torch.dtype | None = None,
                      fp32_head: bool = True) -> SequenceLogProbs:
    """Log-probs of ``n`` single (prompt, response) sequences (not pairs), in ONE forward pass of ``model``
    through :func:`collate` and :func:`forward_logprobs` (the same masking and log-softmax as
    :func:`pair_logprobs`): a :class:`SequenceLogProbs` with ``n`` rows in the order given (``sums`` are
    sequence log-probs, sums over the response's tokens). Runs with or without gradients as the caller's
    context says (on-policy RL needs the graph), in the model's current mode, on the model's device.

    Layout: sequences with the same prompt are laid out two by two as the chosen and rejected rows of one
    pair; a sequence left without a partner is paired with itself (its row computed twice, one kept), so
    ``n`` sequences cost at most ``n + (number of distinct prompts)`` rows. ``prompt_ids``/``response_ids``:
    equally many lists of token ids (checked as :func:`~prefdyn.probes.pairs.token_pairs` checks pairs)."""
    if isinstance(prompt_ids, (str, bytes)) or not hasattr(prompt_ids, "__len__"):
        raise ValueError(f"prompt_ids: expected a list of token-id lists, got {type(prompt_ids).__name__}")
    if isinstance(response_ids, (str, bytes)) or not hasattr(response_ids, "__len__"):
        raise ValueError(f"response_ids: expected a list of token-id lists, got {type(response_ids).__name__}")
    n = len(prompt_ids)
    if len(response_ids) != n or n == 0:
        raise ValueError(f"response_ids: expected one response per prompt ({n} prompts, at least one), "
                         f"got {len(response_ids)}")
    for name, seqs in (("prompt_ids", prompt_ids), ("response_ids", response_ids)):
        for i, seq in enumerate(seqs):
            if not hasattr(seq, "__len__") or isinstance(seq, (str, bytes)) or len(seq) == 0:
                raise ValueError(f"{name}[{i}]: expected a non-empty list of token ids, got {seq!r}")
    check_choice("padding_side", padding_side, PADDING_SIDES)
    pad = pad_token_id_of(model) if pad_token_id is None else check_int("pad_token_id", pad_token_id, 0)
    keys = [tuple(p.tolist() if isinstance(p, torch.Tensor) else p) for p in prompt_ids]
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    left, right = [], []
    for idx in groups.values():
        left.extend(idx[0::2])
        right.extend(idx[1::2] + ([idx[-1]] if len(idx) % 2 else []))
    tp = token_pairs([prompt_ids[i] for i in left], [response_ids[i] for i in left],
                     [response_ids[i] for i in right])
    sl = forward_logprobs(model, collate(tp, pad, padding_side), autocast=autocast, fp32_head=fp32_head)
    b = len(left)
    row = [0] * n
    for j, i in enumerate(right):
        row[i] = b + j
    for j, i in enumerate(left):                      # a self-paired sequence keeps its chosen row
        row[i] = j
    index = torch.tensor(row, dtype=torch.int64, device=sl.sums.device)
    return SequenceLogProbs(sl.tokens[index], sl.sums[index], sl.lengths.to(index.device)[index])


def _gather(parts: list[SequenceLogProbs]) -> PairLogProbs:
    """Concatenate the chosen and rejected halves of several forward passes into one :class:`PairLogProbs`."""
    L = max(p.tokens.shape[1] for p in parts)
    ch, rj, chl, rjl, cht, rjt = [], [], [], [], [], []
    for p in parts:
        b = p.sums.shape[0] // 2
        tok = torch.nn.functional.pad(p.tokens.detach().to("cpu", torch.float64), (0, L - p.tokens.shape[1]))
        s = p.sums.detach().to("cpu", torch.float64)
        ln = p.lengths.detach().to("cpu")
        ch.append(s[:b]), rj.append(s[b:]), chl.append(ln[:b]), rjl.append(ln[b:])
        cht.append(tok[:b]), rjt.append(tok[b:])
    return PairLogProbs(torch.cat(ch), torch.cat(rj), torch.cat(chl), torch.cat(rjl), torch.cat(cht), torch.cat(rjt))
