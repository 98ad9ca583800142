"""The arithmetic task of the small models made here, as text: problems, two answer styles, a
character tokenizer and the rule-based verifier (the analogue of 000 Sec. 5's GPT-4 grading, 000 Table 5).

Problems
--------
``a + b`` with both operands written with exactly ``digits`` digits (zero-padded), so every prompt of a
problem set has the same length: ``"037+485="`` (``digits=3``, the in-distribution setting) or
``"0037+1485="`` (``digits=4``, the out-of-distribution set: one more digit than any training problem).

Two answer styles (the response, followed by the end-of-sequence token):

- ``"plain"``: the sum with ``digits + 1`` digits, most significant first: ``"0522"``;
- ``"worked"``: the column sums from the units up (each column's two digits plus the carry in, written
  with two digits), a ``;`` and then the plain answer: ``"12,12,05;0522"``. These play the role of 000's
  dataset solutions written in another style than the model's usual output.

Held-out split. A problem ``(a, b)`` is *held out* when ``(a * 1009 + b) % HELD_OUT_MOD == 0`` (one
problem in 16): training problems never are, the in-distribution test problems always are, so the test
problems are unseen by supervised training and by the preference prompts.

Verifier (:func:`score`). The answer is the text after the last ``;`` (the whole response when there is
none); it must be a non-empty string of digits. Score 1 when its value equals ``a + b`` (the worked
chain itself is not graded, as 000 Table 5 counts a correct answer with a flawed process as correct);
otherwise the fraction of agreeing digits, right-aligned over the longer of the two strings with the
truth written with ``digits + 1`` digits, times 0.9 (so that a wrong answer always scores below 1); 0 for
an unparsable response. The partial credit only breaks ties among wrong answers.

Tokenizer: one token per character, ids ``<pad>=0, <eos>=1, <unk>=2``, then ``0-9 + = , ;``
(:data:`VOCAB`); :func:`make_tokenizer` builds it with ``tokenizers`` in memory and wraps it in a
``PreTrainedTokenizerFast`` (no download; ``save_pretrained`` writes it next to a model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..validate import check_choice, check_int, check_number

__all__ = ["VOCAB", "PAD", "EOS", "UNK", "STYLES", "HELD_OUT_MOD", "Problems", "sample_problems",
           "prompt_text", "answer_text", "encode", "decode", "make_tokenizer", "parse_answer", "score",
           "is_held_out"]

#: The vocabulary, in id order.
VOCAB = ("<pad>", "<eos>", "<unk>", *"0123456789", "+", "=", ",", ";")
PAD, EOS, UNK = 0, 1, 2
_ID = {c: i for i, c in enumerate(VOCAB)}
#: Answer styles (see the module docstring).
STYLES = ("plain", "worked")
#: One problem in HELD_OUT_MOD is held out of training (the in-distribution test problems).
HELD_OUT_MOD = 16


def is_held_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Whether the problems ``(a, b)`` belong to the held-out class (bool tensor)."""
    return (a * 1009 + b) % HELD_OUT_MOD == 0


@dataclass(frozen=True)
class Problems:
    """``n`` problems ``a + b`` (int64 tensors ``a``, ``b``) with ``digits``-digit operands."""

    a: torch.Tensor
    b: torch.Tensor
    digits: int

    def __len__(self) -> int:
        return int(self.a.shape[0])

    @property
    def prompts(self) -> list[str]:
        return [prompt_text(int(x), int(y), self.digits) for x, y in zip(self.a, self.b)]

    def answers(self, style: str = "plain") -> list[str]:
        return [answer_text(int(x), int(y), self.digits, style) for x, y in zip(self.a, self.b)]

    def select(self, index) -> "Problems":
        idx = torch.as_tensor(index, dtype=torch.int64)
        return Problems(self.a[idx], self.b[idx], self.digits)


def sample_problems(n: int, digits: int = 3, *, split: str = "train", seed: int | None = None,
                    generator: torch.Generator | None = None) -> Problems:
    """``n`` problems with uniform ``digits``-digit operands (``0 .. 10**digits - 1``), drawn from a
    seeded ``torch.Generator`` (``seed``, or a given ``generator`` whose state advances).

    ``split``: ``"train"`` never returns a held-out problem (redrawn until none is), ``"test"`` returns
    only held-out ones (:func:`is_held_out`), ``"any"`` does not filter (the OOD set: no 4-digit problem is
    ever trained on)."""
    check_int("n", n, 1)
    check_int("digits", digits, 1, 9)
    check_choice("split", split, ("train", "test", "any"))
    if (seed is None) == (generator is None):
        raise ValueError("seed: expected exactly one of seed= or generator=, got "
                         f"{'both' if seed is not None else 'neither'}")
    g = torch.Generator().manual_seed(check_int("seed", seed, 0)) if generator is None else generator
    hi = 10 ** digits
    a = torch.randint(0, hi, (n,), generator=g)
    b = torch.randint(0, hi, (n,), generator=g)
    if split != "any":
        want = split == "test"
        bad = is_held_out(a, b) != want
        while bool(bad.any()):
            k = int(bad.sum())
            a[bad] = torch.randint(0, hi, (k,), generator=g)
            b[bad] = torch.randint(0, hi, (k,), generator=g)
            bad = is_held_out(a, b) != want
    return Problems(a, b, digits)


def prompt_text(a: int, b: int, digits: int) -> str:
    """``"037+485="``: both operands zero-padded to ``digits`` digits."""
    return f"{a:0{digits}d}+{b:0{digits}d}="


def answer_text(a: int, b: int, digits: int, style: str = "plain") -> str:
    """The reference response (without EOS) in ``style``: ``"0522"`` or ``"12,12,05;0522"``."""
    plain = f"{a + b:0{digits + 1}d}"
    if style == "plain":
        return plain
    check_choice("style", style, STYLES)
    cols, carry = [], 0
    for i in range(digits):
        t = (a // 10 ** i) % 10 + (b // 10 ** i) % 10 + carry
        cols.append(f"{t:02d}")
        carry = t // 10
    return ",".join(cols) + ";" + plain


def encode(text: str) -> list[int]:
    """Token ids of ``text``, one per character (``<eos>``/``<pad>`` are not parsed: plain characters only);
    a character outside :data:`VOCAB` becomes ``<unk>``."""
    return [_ID.get(c, UNK) for c in text]


def decode(ids: Sequence[int], *, stop_at_eos: bool = True) -> str:
    """The text of ``ids``: cut at the first ``<eos>`` (``stop_at_eos``), padding dropped, ``<unk>`` as
    ``"?"``."""
    out = []
    for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
        t = int(t)
        if t == EOS and stop_at_eos:
            break
        if t in (PAD, EOS):
            continue
        out.append("?" if t == UNK else VOCAB[t])
    return "".join(out)


def make_tokenizer():
    """The character tokenizer as a ``transformers.PreTrainedTokenizerFast`` (built in memory with
    ``tokenizers``: a word-level model over single characters, no normaliser, no added BOS/EOS; its ids
    equal :func:`encode`'s, tested)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.add_special_tokens(["<pad>", "<eos>", "<unk>"])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="right", model_max_length=64)


def parse_answer(response: str) -> str | None:
    """The answer of a response: the text after the last ``;`` (or all of it), or ``None`` if that is
    not a non-empty string of digits."""
    ans = response.rsplit(";", 1)[-1]
    return ans if ans and ans.isdigit() else None


def score(response: str, a: int, b: int, digits: int, *, partial: float = 0.9) -> float:
    """The verifier's score of ``response`` to ``a + b`` (module docstring): 1 if the parsed answer's
    value is ``a + b``; else ``partial`` x the right-aligned digit agreement with the ``digits + 1``-digit
    truth; 0 if unparsable."""
    check_number("partial", partial, 0.0, 1.0, high_open=True)
    ans = parse_answer(response)
    if ans is None:
        return 0.0
    if int(ans) == a + b:
        return 1.0
    truth = f"{a + b:0{digits + 1}d}"
    m = max(len(ans), len(truth))
    agree = sum(x == y for x, y in zip(ans.rjust(m, "_"), truth.rjust(m, "#")))
    return partial * agree / m
