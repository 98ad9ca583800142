"""Preference pairs as token ids, and their padded batches (chosen and rejected in one forward pass).

A pair is ``(prompt, chosen, rejected)``: three lists of token ids. :func:`token_pairs` checks them once
(equal counts, integer ids, at least one prompt token, a non-empty response after truncation) and
:func:`tokenize_pairs` makes them from text with any Hugging Face tokenizer, the way TRL 1.16's
``DPOTrainer`` does for non-conversational data (``_prepare_dataset``): EOS appended to each response's
text, ``prompt`` and ``prompt + response`` tokenized separately, the response starting where the two
token lists part (``common_prefix_length``).

:func:`collate` lays out ``b`` pairs as ``2b`` sequences, the ``b`` prompt+chosen rows first and the ``b``
prompt+rejected rows after them (TRL's layout), padded on the right or on the left. Position ids are
counted over the real tokens only (``cumsum(attention_mask) - 1``), so a sequence gets the same positions
whichever side is padded and however long its batch is: the log-probs do not depend on padding
(tested to float tolerance).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..validate import check_choice, check_int

__all__ = ["TokenPairs", "token_pairs", "tokenize_pairs", "Batch", "collate", "TRUNCATIONS", "PADDING_SIDES"]

#: How :func:`token_pairs` shortens a prompt+response longer than ``max_length``.
TRUNCATIONS = ("keep_start", "keep_end")
#: Where :func:`collate` puts the padding.
PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class TokenPairs:
    """Checked preference pairs: ``prompt[i]``, ``chosen[i]``, ``rejected[i]`` are tuples of token ids
    (every prompt has at least one token, every response at least one). Make them with
    :func:`token_pairs` or :func:`tokenize_pairs`."""

    prompt: tuple[tuple[int, ...], ...]
    chosen: tuple[tuple[int, ...], ...]
    rejected: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.prompt)

    def select(self, index: Sequence[int] | torch.Tensor) -> "TokenPairs":
        """The pairs at ``index`` (in that order)."""
        idx = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
        return TokenPairs(tuple(self.prompt[i] for i in idx), tuple(self.chosen[i] for i in idx),
                          tuple(self.rejected[i] for i in idx))

    def lengths(self) -> dict[str, torch.Tensor]:
        """Token counts per pair: ``{"prompt", "chosen", "rejected"}``, int64 tensors ``[n]``."""
        return {k: torch.tensor([len(s) for s in getattr(self, k)], dtype=torch.int64)
                for k in ("prompt", "chosen", "rejected")}


def _ids(name: str, i: int, seq: Any) -> tuple[int, ...]:
    if isinstance(seq, torch.Tensor):
        seq = seq.tolist()
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) and not hasattr(seq, "__iter__"):
        raise ValueError(f"{name}[{i}]: expected a list of token ids, got {type(seq).__name__}")
    out = tuple(seq)
    if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 0 for t in out):
        raise ValueError(f"{name}[{i}]: expected non-negative integer token ids, got {list(out)[:8]}")
    return tuple(int(t) for t in out)


def _check_count(prompt: Sequence, chosen: Sequence, rejected: Sequence) -> int:
    """The number of pairs, or a one-line ``ValueError`` for none or for mismatched lengths."""
    n = len(prompt)
    if len(chosen) != n or len(rejected) != n:
        raise ValueError(f"pairs: prompt, chosen and rejected must have equal lengths, got {n}, {len(chosen)}, "
                         f"{len(rejected)}")
    if n == 0:
        raise ValueError("pairs: expected at least one preference pair, got none")
    return n


def token_pairs(prompt: Sequence, chosen: Sequence, rejected: Sequence, *, max_length: int | None = None,
                truncation: str = "keep_start") -> TokenPairs:
    """Checked :class:`TokenPairs` from three equally long sequences of token-id lists.

    ``max_length`` (optional) bounds each prompt+response sequence. ``truncation``:

    - ``"keep_start"`` (TRL's default): the end of prompt+response is cut;
    - ``"keep_end"``: tokens are cut from the start of the prompt (its last token is kept, it is the
      context of the response's first token), then, if the response alone is still too long, from the
      end of the response. (TRL's ``keep_end`` cuts the start of the whole sequence instead, so its first
      kept response token can lose its context.)

    One-line ``ValueError``: empty or mismatched sequences, non-integer ids, an empty prompt (the first
    response token needs a token to be predicted from: add the tokenizer's BOS), or a response with zero
    tokens after truncation (naming the pair).
    """
    _check_count(prompt, chosen, rejected)
    check_choice("truncation", truncation, TRUNCATIONS)
    if max_length is not None:
        check_int("max_length", max_length, 2)
    P = [_ids("prompt", i, s) for i, s in enumerate(prompt)]
    C = [_ids("chosen", i, s) for i, s in enumerate(chosen)]
    R = [_ids("rejected", i, s) for i, s in enumerate(rejected)]
    for i, p in enumerate(P):
        if not p:
            raise ValueError(f"prompt[{i}]: expected at least one token (the first response token is predicted "
                             f"from it; add a BOS token), got none")
    for name, resp in (("chosen", C), ("rejected", R)):
        for i, r in enumerate(resp):
            if not r:
                raise ValueError(f"{name}[{i}]: expected a response of at least one token, got none")
    if max_length is not None:
        if truncation == "keep_end":      # the prompt's start goes first, its last token stays
            P = [p[-max(1, max_length - max(len(c), len(r))):] for p, c, r in zip(P, C, R)]
        C = [c[:max(0, max_length - len(p))] for p, c in zip(P, C)]
        R = [r[:max(0, max_length - len(p))] for p, r in zip(P, R)]
        for name, resp in (("chosen", C), ("rejected", R)):
            for i, r in enumerate(resp):
                if not r:
                    raise ValueError(f"{name}[{i}]: the response has zero tokens after truncation to max_length="
                                     f"{max_length} (prompt of {len(P[i])} tokens); raise max_length or use "
                                     f"truncation='keep_end'")
    return TokenPairs(tuple(P), tuple(C), tuple(R))


def tokenize_pairs(tokenizer: Any, prompt: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], *,
                   add_eos: bool = True, max_length: int | None = None,
                   truncation: str = "keep_start") -> TokenPairs:
    """:class:`TokenPairs` from text, as TRL 1.16's ``DPOTrainer`` tokenizes non-conversational pairs:
    ``add_eos`` appends the tokenizer's EOS to each response's text (unless it ends with it), ``prompt``
    and ``prompt + response`` are tokenized separately (with the tokenizer's own special tokens), and the
    response is what follows their common prefix. Then :func:`token_pairs` checks and truncates."""
    _check_count(prompt, chosen, rejected)
    for name, texts in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"{name}[{i}]: expected a string, got {type(t).__name__}")
    eos = getattr(tokenizer, "eos_token", None)
    if add_eos and not eos:
        raise ValueError("add_eos: the tokenizer has no eos_token; pass add_eos=False")

    def fin(t: str) -> str:
        return t if not add_eos or t.endswith(eos) else t + eos

    P, C, R = [], [], []
    for x, c, r in zip(prompt, chosen, rejected):
        p_ids = list(tokenizer(x)["input_ids"])
        pc = list(tokenizer(x + fin(c))["input_ids"])
        pr = list(tokenizer(x + fin(r))["input_ids"])
        k = min(_common_prefix(p_ids, pc), _common_prefix(p_ids, pr))
        P.append(p_ids[:k])
        C.append(pc[k:])
        R.append(pr[k:])
    return token_pairs(P, C, R, max_length=max_length, truncation=truncation)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


@dataclass(frozen=True)
class Batch:
    """``b`` pairs as ``2b`` padded sequences (rows ``0..b-1`` prompt+chosen, ``b..2b-1`` prompt+rejected).

    ``input_ids``, ``attention_mask``, ``position_ids`` ``[2b, T]``; ``scored`` ``[2b, T-1]`` bool: position
    ``t`` predicts token ``t+1`` and is scored when that token belongs to the response; ``targets``
    ``[2b, T-1]`` the tokens ``t+1``; ``lengths`` ``[2b]`` the response lengths."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    scored: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in
                       ("input_ids", "attention_mask", "position_ids", "scored", "targets", "lengths")))


def collate(pairs: TokenPairs, pad_token_id: int, padding_side: str = "right") -> Batch:
    """The :class:`Batch` of ``pairs``: chosen and rejected of every pair in one ``[2b, T]`` tensor, padded
    with ``pad_token_id`` on ``padding_side`` (``"right"`` or ``"left"``); position ids count real tokens
    only, so padding changes nothing the model sees in its real positions."""
    check_choice("padding_side", padding_side, PADDING_SIDES)
    check_int("pad_token_id", pad_token_id, 0)
    seqs = [p + c for p, c in zip(pairs.prompt, pairs.chosen)] + [p + r for p, r in zip(pairs.prompt, pairs.rejected)]
    resp = [len(c) for c in pairs.chosen] + [len(r) for r in pairs.rejected]
    T = max(len(s) for s in seqs)
    n = len(seqs)
    ids = torch.full((n, T), pad_token_id, dtype=torch.int64)
    attn = torch.zeros((n, T), dtype=torch.int64)
    resp_mask = torch.zeros((n, T), dtype=torch.bool)
    for i, (s, k) in enumerate(zip(seqs, resp)):
        lo = 0 if padding_side == "right" else T - len(s)
        ids[i, lo:lo + len(s)] = torch.tensor(s, dtype=torch.int64)
        attn[i, lo:lo + len(s)] = 1
        resp_mask[i, lo + len(s) - k:lo + len(s)] = True
    pos = (attn.cumsum(1) - 1).clamp_(min=0)
    return Batch(ids, attn, pos, resp_mask[:, 1:].clone(), ids[:, 1:].clone(),
                 torch.tensor(resp, dtype=torch.int64))
