"""The two small GPT-2 models made here (000 Sec. 5's policy and its "other LLM", 000 Table 4): their
specification, reproducible training, saving/loading in Hugging Face format and a seeded sampling loop.

- **Model A** (the policy, 000's Baichuan2): ``GPT2Config`` with 6 layers, width 128 (about 1.2 M
  parameters), trained on a mix of 85% plain and 15% worked answers (:mod:`prefdyn.lm.task`).
- **Model B** (the other LLM, 000's Qwen-7B): 4 layers, width 64 (about 0.2 M parameters), trained on
  15% plain and 85% worked answers, for fewer steps: another size, another data mix, another style.

"A few million parameters" per model does not fit twice in the 10 MB budget at float32 (4 bytes per
parameter); the two models together hold about 1.4 M (:func:`n_params`).

Training (:func:`train_model`): supervised next-token cross-entropy on the response tokens only (prompt
and padding masked; the mean over the batch's response tokens, EOS included), AdamW (betas 0.9/0.98,
weight decay 0.01), gradient norm clipped at 1, linear warm-up then a constant learning rate, no dropout. Every
batch comes from one ``torch.Generator`` seeded with the spec's seed (problems from the training split,
styles by the spec's mix), the weights from ``torch.manual_seed(seed)`` inside ``fork_rng``, and the run
uses a fixed number of CPU threads (1 by default): the same call gives the same losses bit for bit on a
machine (``tests/test_lm.py`` compares the first steps with the shipped log at 1e-4 relative, room for
other CPU code paths; not yet measured across them).

Sampling (:func:`generate`): a batched loop with the key/value cache, temperature 1 (or greedy), each
token drawn by ``torch.multinomial`` from a caller's seeded ``torch.Generator``; every prompt of a batch
has the same length (the task's fixed-width prompts), so no padding is needed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..validate import check_bool, check_int, check_number
from . import task as T

__all__ = ["ModelSpec", "SPECS", "MODELS_DIR", "model_dir", "build_model", "n_params", "train_model",
           "save_model", "load_lm", "generate", "batch_tensors"]

#: Where the shipped models live: ``<repository>/models/<name>``.
MODELS_DIR = Path(__file__).resolve().parents[3] / "models"


@dataclass(frozen=True)
class ModelSpec:
    """How one model is built and trained (all of it is saved in ``train_log.json``)."""

    name: str
    n_embd: int
    n_layer: int
    n_head: int
    plain_fraction: float
    steps: int
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    max_grad_norm: float = 1.0
    seed: int = 0
    digits: int = 3
    n_positions: int = 32


#: The two shipped models.
SPECS = {
    "arith-a": ModelSpec("arith-a", n_embd=128, n_layer=6, n_head=4, plain_fraction=0.85, steps=500, seed=1),
    "arith-b": ModelSpec("arith-b", n_embd=64, n_layer=4, n_head=4, plain_fraction=0.15, steps=300, seed=2),
}


def model_dir(name: str) -> Path:
    """The shipped model directory of ``name`` (``"arith-a"``, ``"arith-b"``)."""
    if name not in SPECS:
        raise ValueError(f"name: expected one of {', '.join(SPECS)}, got {name!r}")
    return MODELS_DIR / name


def build_model(spec: ModelSpec):
    """A freshly initialised ``GPT2LMHeadModel`` of ``spec`` (weights from the global RNG: seed it)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(T.VOCAB), n_positions=spec.n_positions, n_embd=spec.n_embd,
                     n_layer=spec.n_layer, n_head=spec.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=T.EOS, eos_token_id=T.EOS, pad_token_id=T.PAD)
    return GPT2LMHeadModel(cfg)


def n_params(model: Any) -> int:
    """Distinct parameters (the tied embedding counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def batch_tensors(prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, scored)``: prompt + response + EOS per row, right-padded; ``scored [n, T-1]`` marks the
    positions whose next token belongs to the response (EOS included)."""
    seqs = [(T.encode(p), T.encode(r) + [T.EOS]) for p, r in zip(prompts, responses)]
    L = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), L), T.PAD, dtype=torch.int64)
    scored = torch.zeros((len(seqs), L), dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        scored[i, len(p):len(p) + len(r)] = True
    return ids, scored[:, 1:]


def _lr_at(spec: ModelSpec, step: int) -> float:
    """Linear warm-up over ``spec.warmup`` steps, then constant: the schedule does not depend on the
    total number of steps, so a shorter run is exactly a prefix of a longer one."""
    return spec.lr * min(1.0, (step + 1) / spec.warmup)


def train_model(spec: ModelSpec, *, steps: int | None = None, threads: int = 1,
                progress: Callable[[int, Any], None] | None = None):
    """Train ``spec``'s model from scratch for ``steps`` updates (default: ``spec.steps``; the learning-rate
    schedule is always ``spec``'s, so the first ``k`` steps of a full run are reproduced by
    ``steps=k``). Returns ``(model, log)`` with ``log = {"step": [...], "loss": [...], "lr": [...],
    "seconds": s, "threads": t}``, the loss of every update before its step."""
    steps = spec.steps if steps is None else check_int("steps", steps, 1, spec.steps)
    check_int("threads", threads, 1)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(spec.seed)
    log: dict[str, Any] = {"step": [], "loss": [], "lr": []}
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = build_model(spec)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.01)
        for step in range(steps):
            prob = T.sample_problems(spec.batch_size, spec.digits, split="train", generator=g)
            plain = torch.rand(spec.batch_size, generator=g) < spec.plain_fraction
            resp = [T.answer_text(int(a), int(b), spec.digits, "plain" if p else "worked")
                    for a, b, p in zip(prob.a, prob.b, plain)]
            ids, scored = batch_tensors(prob.prompts, resp)
            mask = (ids != T.PAD).long()
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits[scored], ids[:, 1:][scored])
            lr = _lr_at(spec, step)
            for grp in opt.param_groups:
                grp["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
            opt.step()
            log["step"].append(step)
            log["loss"].append(float(loss.detach()))
            log["lr"].append(lr)
            if progress is not None:
                progress(step, model)
    finally:
        torch.set_num_threads(old_threads)
    log["seconds"] = time.perf_counter() - t0
    log["threads"] = threads
    model.eval()
    return model, log


def save_model(model: Any, log: dict, spec: ModelSpec, out: str | os.PathLike) -> Path:
    """Write ``model`` (float32 safetensors, config), the tokenizer and ``train_log.json`` (the spec,
    the parameter count and the training log) into the directory ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    T.make_tokenizer().save_pretrained(out)
    payload = {"spec": asdict(spec), "n_params": n_params(model), **log}
    (out / "train_log.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return out


def load_lm(name_or_path: str | os.PathLike, *, tokenizer: bool = False):
    """A shipped model (``"arith-a"``, ``"arith-b"``) or a model directory, loaded with
    ``from_pretrained`` offline (``local_files_only=True``), float32, eval mode; with ``tokenizer=True``
    ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir(name_or_path) if isinstance(name_or_path, str) and name_or_path in SPECS else Path(name_or_path)
    if not (path / "config.json").is_file():
        raise ValueError(f"name_or_path: expected {', '.join(SPECS)} or a model directory with a config.json, "
                         f"got {str(name_or_path)!r}")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    if tokenizer:
        return model, AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model


@torch.no_grad()
def generate(model: Any, prompts: list[str], *, n: int = 1, greedy: bool = False, temperature: float = 1.0,
             generator: torch.Generator | None = None, max_new_tokens: int = 24,
             batch_size: int = 2048) -> list[list[str]]:
    """``n`` responses per prompt (texts without EOS, cut at the first EOS), ``[len(prompts)][n]``. A
    response stops after ``max_new_tokens`` tokens or when prompt + response + EOS would fill the model's
    ``n_positions``, whichever comes first (a response cut there is kept as written).

    ``greedy``: argmax decoding (then ``n`` copies agree). Sampling: temperature ``temperature`` (1 by
    default: the model's own distribution), each token from ``torch.multinomial`` with ``generator`` (required
    when sampling: the same generator state gives the same responses). Rows are the prompts repeated ``n``
    times (prompt-major), run ``batch_size`` rows at a time in that order (the draws depend on
    ``batch_size``: keep it fixed to reproduce samples). Prompts must share one length."""
    check_int("n", n, 1)
    check_bool("greedy", greedy)
    check_number("temperature", temperature, 0.0, low_open=True)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("batch_size", batch_size, 1)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt, got none")
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("prompts: expected prompts of one length (fixed-width problems), got lengths "
                         f"{sorted({len(p) for p in prompts})}")
    if not greedy and generator is None:
        raise ValueError("generator: expected a seeded torch.Generator when sampling (greedy=False), got None")
    was_training = model.training
    model.eval()
    rows = torch.tensor([T.encode(p) for p in prompts for _ in range(n)], dtype=torch.int64)
    room = model.config.n_positions - rows.shape[1] - 1    # prompt + response + EOS fit the positions
    if room < 1:
        raise ValueError(f"prompts: expected prompts shorter than n_positions - 1 = {room + rows.shape[1]}, "
                         f"got length {rows.shape[1]}")
    steps = min(max_new_tokens, room)
    out = []
    for lo in range(0, rows.shape[0], batch_size):
        ids = rows[lo:lo + batch_size]
        res = model(input_ids=ids, use_cache=True)
        cache, logits = res.past_key_values, res.logits[:, -1]
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        toks = []
        for t in range(steps):
            if greedy:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits.double() / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            nxt = torch.where(done, torch.full_like(nxt, T.PAD), nxt)
            toks.append(nxt)
            done |= nxt == T.EOS
            if bool(done.all()) or t == steps - 1:
                break
            res = model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True)
            cache, logits = res.past_key_values, res.logits[:, -1]
        gen = torch.stack(toks, 1)
        out.extend(T.decode(r) for r in gen)
    if was_training:
        model.train()
    return [out[i * n:(i + 1) * n] for i in range(len(prompts))]
