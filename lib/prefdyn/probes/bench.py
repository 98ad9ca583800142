"""``prefdyn bench probes``: the LLM probes against a plain loop of one (prompt, response) at a time, and our
DPO step (:func:`prefdyn.probes.train_preference`) against TRL 1.16's ``DPOTrainer`` on the same model, data,
batch and optimiser (:func:`bench_probes`). Here, not in :mod:`prefdyn.bench`, because it needs
``transformers`` and TRL, which the toy bench (and the performance chapter that runs it) does not."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import losses as L
from ..device import cpu_settings
from ..validate import check_int

__all__ = ["bench_probes", "PROBES_KEYS", "PROBES_OPTIMIZERS"]


# ----------------------------------------------------------------------------- prefdyn bench probes
#: The optimisers :func:`bench_probes` runs on both sides, with TRL's ``optim`` name for the same update
#: (TRL's default AdamW is PyTorch's fused AdamW; ours is built the same way, see :func:`_our_optimizer`).
PROBES_OPTIMIZERS = {"adamw": "adamw_torch_fused", "sgd": "sgd"}

#: The keys of the dict :func:`bench_probes` returns (and writes as JSON), in order.
PROBES_KEYS = (
    "model", "n_params", "n_pairs", "batch", "steps", "warmup", "repeats", "optimizer", "lr", "beta", "log_every",
    "seed", "torch_threads", "torch", "transformers", "trl", "prompt_tokens", "response_tokens",
    "tokens_per_pair", "padded_tokens_per_pair",
    # log-probs: our batched probe vs one (prompt, response) at a time
    "logprob_batched_s", "logprob_loop_s", "logprob_batched_pairs_per_s", "logprob_loop_pairs_per_s",
    "logprob_batched_tokens_per_s", "logprob_loop_tokens_per_s", "logprob_ratio", "logprob_max_abs_diff",
    # training: our step vs TRL's DPOTrainer step, and the model work alone
    "ours_ms_per_step", "trl_ms_per_step", "floor_ms_per_step", "ours_repeats_ms", "trl_repeats_ms",
    "floor_repeats_ms", "ours_pairs_per_s", "trl_pairs_per_s", "train_ratio", "ours_overhead_ms",
    "trl_overhead_ms", "same_token_ids", "loss_first", "loss_last", "loss_max_abs_diff",
    # ThreeDCallback: one probe of `pairs` held-out pairs, amortised over `callback_every` TRL updates
    "callback_every", "callback_pairs", "callback_probe_ms", "callback_repeats_ms", "callback_overhead",
)


def _offline() -> None:
    """Nothing is downloaded: the Hugging Face libraries run offline (set before they are imported)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _word_tokenizer(vocab: int):
    """A word-level tokenizer built in memory (as in ``tests/test_trl_peer.py``): ``<pad>`` 0, ``<eos>`` 1,
    ``<unk>`` 2 and the words ``t3 .. t{vocab-1}``, split on whitespace."""
    import tokenizers
    import transformers

    words = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>",
                                                unk_token="<unk>")


def _tiny_gpt2(vocab: int, seed: int, n_layer: int, n_embd: int, n_head: int, n_positions: int = 64):
    """A GPT-2 built from its config in memory, seeded, float32, dropout 0."""
    import transformers

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                                      n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      pad_token_id=0, eos_token_id=1, bos_token_id=1)
        return transformers.GPT2LMHeadModel(cfg).to(torch.float32).eval()


def _no_dropout(model) -> None:
    """Dropout off (p = 0) everywhere, so that our run and TRL's see the same function of the weights."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _bench_texts(tokenizer, n: int, seed: int, *, words: list[str], prompt=(8, 16), response=(7, 31)) -> list[dict]:
    """``n`` preference pairs of text, seeded: a prompt of ``prompt`` words, a chosen and a rejected response
    of ``response`` words each (TRL appends EOS: with the word-level tokenizer, prompts of 8-16 tokens,
    responses of 8-32, sequences of 16-48)."""
    gen = torch.Generator().manual_seed(seed)

    def text(lo, hi):
        k = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return " ".join(words[int(i)] for i in torch.randint(0, len(words), (k,), generator=gen))

    return [{"prompt": text(*prompt), "chosen": " " + text(*response), "rejected": " " + text(*response)}
            for _ in range(n)]


def _loop_logprobs(model, tp) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain way: every (prompt, response) alone through the model, no padding, ``log_softmax`` of
    the logits (float32; float64 for a float64 model, as :func:`prefdyn.probes.forward_logprobs`), the
    response's tokens gathered and summed; chosen and rejected sums (float64, ``[n]``)."""
    out = []
    with torch.no_grad():
        for resp in (tp.chosen, tp.rejected):
            sums = []
            for p, r in zip(tp.prompt, resp):
                x = torch.tensor([list(p) + list(r)])
                z = model(input_ids=x, use_cache=False).logits[0, len(p) - 1:-1]
                logp = torch.log_softmax(z.to(torch.float64 if z.dtype == torch.float64 else torch.float32), -1)
                sums.append(logp.gather(-1, torch.tensor(r)[:, None]).sum())
            out.append(torch.stack(sums).to(torch.float64))
    return out[0], out[1]


def _our_optimizer(name: str, params, lr: float, stamps: list):
    """Our side's optimiser: :func:`prefdyn.probes.train._optimizer`'s SGD, or AdamW built as TRL's default
    ``adamw_torch_fused`` builds it (``fused=True``; betas 0.9/0.999, eps 1e-8, no weight decay on both
    sides); a step post-hook stamps the end of every update."""
    from .train import _optimizer

    if name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    else:
        opt = _optimizer(name, params, lr, 0.0, (0.9, 0.999), 1e-8)
    opt.register_step_post_hook(lambda *a: stamps.append(time.perf_counter()))
    return opt


def _steady_ms(stamps: list, warmup: int) -> float:
    """Median time between the ends of consecutive updates, the first ``warmup`` updates left out (ms)."""
    d = np.diff(np.asarray(stamps, dtype=np.float64))[warmup - 1:]
    return 1e3 * float(np.median(d))


def _our_run(init, tokenizer, data, *, batch, total, optimizer, lr, beta, log_every, seed):
    from . import train_preference

    stamps: list[float] = []
    run = train_preference(copy.deepcopy(init), data, tokenizer=tokenizer, loss="dpo", loss_params={"beta": beta},
                           steps=total, batch_size=batch, lr=lr,
                           optimizer=lambda ps: _our_optimizer(optimizer, ps, lr, stamps),
                           log_every=log_every, seed=seed, shuffle=False, device="cpu", bf16=False, progress=False)
    return stamps, np.asarray(run.losses, dtype=np.float64)


def _trl_trainer(init, tokenizer, data, *, batch, total, optimizer, lr, beta, log_every, seed, out_dir):
    """TRL's ``DPOTrainer`` as a user would configure it for the same run: ``loss_type=["sigmoid"]`` (== DPO,
    tests/test_trl_peer.py), ``precompute_ref_log_probs=True`` (the reference log-probs computed once
    before training, as ours), the data in order (``train_sampling_strategy="sequential"``,
    ``dataloader_drop_last=True``: the same batches as ours), constant learning rate, no gradient clipping,
    no weight decay, float32 on the CPU, logging every ``log_every`` steps, no checkpoints, no reports."""
    import datasets
    import transformers
    import trl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # transformers 5's deprecation notices
        args = trl.DPOConfig(output_dir=out_dir, report_to="none", use_cpu=True, bf16=False, fp16=False,
                             gradient_checkpointing=False, disable_tqdm=True, save_strategy="no",
                             precompute_ref_log_probs=True, loss_type=["sigmoid"], beta=beta,
                             per_device_train_batch_size=batch, max_steps=total, learning_rate=lr,
                             lr_scheduler_type="constant", warmup_steps=0, optim=PROBES_OPTIMIZERS[optimizer],
                             max_grad_norm=0.0, weight_decay=0.0, logging_steps=log_every, seed=seed,
                             train_sampling_strategy="sequential", dataloader_drop_last=True)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=copy.deepcopy(init), args=args, train_dataset=datasets.Dataset.from_list(data),
                                 processing_class=tokenizer)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    return trainer


def _trl_run(init, tokenizer, data, **kw):
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trl_trainer(init, tokenizer, data, out_dir=tmp, **kw)
        stamps: list[float] = []
        losses: list[float] = []

        class _Stamp(transformers.TrainerCallback):
            def on_step_end(self, *a, **k):
                stamps.append(time.perf_counter())

        trainer.add_callback(_Stamp())
        inner = trainer.compute_loss

        def compute_loss(model, inputs, *a, **k):     # records the loss TRL optimises (one .item() per step)
            out = inner(model, inputs, *a, **k)
            losses.append(float(out.detach()))
            return out

        trainer.compute_loss = compute_loss
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer.train()
        ids = {k: [tuple(x) for x in trainer.train_dataset[k]] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    return stamps, np.asarray(losses, dtype=np.float64), ids


def _floor_run(init, tp, *, batch, total, optimizer, lr, pad):
    """The model work of a step and nothing else: the same batches, collated beforehand; one forward
    (chosen and rejected together, :func:`prefdyn.probes.forward_logprobs`), one backward of the summed
    sequence log-probs, the optimiser's step. Its time is the floor both trainers share."""
    from . import collate, forward_logprobs

    model = copy.deepcopy(init).train()
    stamps: list[float] = []
    opt = _our_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr, stamps)
    per_epoch = len(tp) // batch
    batches = [collate(tp.select(range(k * batch, (k + 1) * batch)), pad) for k in range(per_epoch)]
    for t in range(total):
        opt.zero_grad(set_to_none=True)
        forward_logprobs(model, batches[t % per_epoch]).sums.sum().div(batch).backward()
        opt.step()
    return stamps


def bench_probes(pairs: int = 64, steps: int = 20, batch: int = 8, *, threads: int | None = 1, warmup: int = 3,
                 repeats: int = 3, optimizer: str = "adamw", lr: float | None = None, beta: float = 0.1,
                 log_every: int = 10, seed: int = 0, model_path: str | os.PathLike | None = None,
                 n_layer: int = 4, n_embd: int = 128, n_head: int = 4, vocab: int = 30,
                 callback_every: int | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Throughput of the LLM probes (:mod:`prefdyn.probes`) on the CPU, float32.

    **Model and data.** A GPT-2 built from ``GPT2Config`` in memory (``n_layer`` 4, ``n_embd`` 128, ``n_head``
    4, a ``vocab``-token word-level tokenizer built in memory; seeded by ``seed``, dropout 0), or the local
    Hugging Face model directory ``model_path`` (its tokenizer; dropout set to 0). ``pairs`` seeded text
    pairs (prompts of 8-16 words, responses of 7-31 words plus EOS), tokenized once as TRL tokenizes them
    (:func:`prefdyn.probes.tokenize_pairs`; ``same_token_ids`` checks TRL's prepared dataset holds the
    same ids).

    **Log-probs.** :func:`prefdyn.probes.pair_logprobs` (``batch`` pairs, ``2 x batch`` sequences per
    forward, no gradients) against a plain loop that runs every (prompt, response) alone
    (:func:`_loop_logprobs`); ``repeats`` timed runs each after one untimed run, medians reported;
    ``logprob_max_abs_diff`` is the largest difference of their sequence log-probs. Tokens per second
    count the real (unpadded) prompt+response tokens of both sequences of every pair.

    **Training.** Our loop (:func:`prefdyn.probes.train_preference`, DPO, its probes logged every
    ``log_every`` updates) against TRL's ``DPOTrainer`` (:func:`_trl_trainer`), from the same initial
    weights, on the same pairs in the same order (no shuffling, ``drop_last``), ``batch`` pairs per update,
    ``warmup + steps`` updates, the same optimiser (``optimizer``: ``"adamw"`` = PyTorch's fused AdamW,
    TRL's default, betas 0.9/0.999, eps 1e-8; or ``"sgd"``), constant ``lr`` (default 1e-3 for AdamW, 1e-2
    for SGD), no clipping, no weight decay, ``beta``. Both use cached reference log-probs (TRL:
    ``precompute_ref_log_probs=True``), computed before the first update. A step's time is the time
    between the ends of two consecutive updates (everything the trainer does per update: batching,
    collation, forward, backward, metrics or probes, optimiser); the first ``warmup`` updates are left
    out, the median over the ``steps`` steady-state updates is a run's ms/step, and the median over
    ``repeats`` runs (ours and TRL's alternating) is reported. ``floor_ms_per_step`` times the model work
    alone (:func:`_floor_run`: forward, backward, optimiser step on pre-collated batches); ``*_overhead_ms``
    = a trainer's ms/step minus the floor. ``loss_max_abs_diff`` is the largest difference between our
    and TRL's batch loss over every update of every repeat (TRL's fused LM head accumulates in float32).

    **The callback.** :class:`prefdyn.probes.ThreeDCallback` on ``pairs`` further seeded held-out pairs
    (``batch`` pairs per probe forward, DPO with ``beta``): ``callback_probe_ms`` is the median over
    ``repeats`` of the time of one probe (``on_step_end`` at a probe step: the forward passes over the probe
    set, the row, the log entry), after the reference and the step-0 probe (``on_train_begin``, untimed);
    ``callback_overhead`` = ``callback_probe_ms / (callback_every x trl_ms_per_step)``, the fraction it adds
    to a TRL run's time at one probe every ``callback_every`` updates (default: the callback's default
    ``every``); the other updates cost the callback one modulo.

    ``threads``: torch intra-op threads for everything (:class:`prefdyn.device.cpu_settings`). The global
    RNG states are restored on return (TRL seeds them). Returns a dict with the keys
    :data:`PROBES_KEYS` (and writes it as JSON to ``out`` when given).
    """
    from ..validate import check_choice, check_positive

    check_int("pairs", pairs, 1)
    check_int("steps", steps, 1)
    check_int("batch", batch, 1, pairs)
    if threads is not None:
        check_int("threads", threads, 1)
    check_int("warmup", warmup, 1)
    check_int("repeats", repeats, 1)
    check_choice("optimizer", optimizer, tuple(PROBES_OPTIMIZERS))
    lr = (1e-3 if optimizer == "adamw" else 1e-2) if lr is None else check_positive("lr", lr)
    beta = check_positive("beta", beta)
    check_int("log_every", log_every, 1)
    check_int("seed", seed, 0)
    if callback_every is None:
        from .callback import DEFAULT_EVERY as callback_every
    check_int("callback_every", callback_every, 1)
    for name, v in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head)):
        check_int(name, v, 1)
    check_int("vocab", vocab, 4)
    if n_embd % n_head:
        raise ValueError(f"n_head: expected a divisor of n_embd={n_embd}, got {n_head}")
    if model_path is not None:
        from .train import _model_dir
        _model_dir(model_path)
    _offline()
    try:
        import datasets  # noqa: F401
        import transformers
        import trl
    except ImportError as exc:
        raise ValueError(f"trl: the probes benchmark needs transformers, datasets and trl 1.16 (the test extra "
                         f"'trl'), got {exc}") from None
    from . import pad_token_id_of, pair_logprobs, tokenize_pairs
    from .train import load_model

    import random
    rng_states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    try:
        with cpu_settings(threads):
            if model_path is None:
                tokenizer = _word_tokenizer(vocab)
                init = _tiny_gpt2(vocab, seed, n_layer, n_embd, n_head)
                words = [f"t{i}" for i in range(3, vocab)]
                model_name = f"gpt2(n_layer={n_layer}, n_embd={n_embd}, n_head={n_head}, vocab={vocab})"
            else:
                init, tokenizer = load_model(model_path, device="cpu", dtype=torch.float32)
                init.eval()
                special = set(tokenizer.all_special_ids)
                words = [w for w, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
                         if i not in special and w.isalnum()][:2000]
                model_name = os.fspath(model_path)
                if not words:
                    raise ValueError(f"model_path: the tokenizer of {model_name!r} has no alphanumeric word to "
                                     f"build text pairs from")
            _no_dropout(init)
            data = _bench_texts(tokenizer, pairs, seed + 1, words=words)
            tp = tokenize_pairs(tokenizer, [d["prompt"] for d in data], [d["chosen"] for d in data],
                                [d["rejected"] for d in data])
            n = len(tp)
            lens = tp.lengths()
            real = int((2 * lens["prompt"] + lens["chosen"] + lens["rejected"]).sum())
            pad = pad_token_id_of(init, tokenizer)
            padded = 0
            for lo in range(0, n, batch):
                sl = slice(lo, min(n, lo + batch))
                longest = torch.maximum(lens["chosen"][sl], lens["rejected"][sl])
                T = int((lens["prompt"][sl] + longest).max())
                padded += 2 * (sl.stop - sl.start) * T

            # 1. log-probs: batched probe vs one sequence at a time
            model = copy.deepcopy(init).eval()
            pair_logprobs(model, tp, batch_size=batch)                 # untimed warm-up
            _loop_logprobs(model, tp.select(range(min(n, 4))))
            t_b, t_l = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                got = pair_logprobs(model, tp, batch_size=batch)
                t_b.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                lc, lr_ = _loop_logprobs(model, tp)
                t_l.append(time.perf_counter() - t0)
            lp_diff = float(torch.maximum((got.chosen - lc).abs(), (got.rejected - lr_).abs()).max())
            tb, tl = float(np.median(t_b)), float(np.median(t_l))

            # 2. training: our step vs TRL's, and the floor
            total = warmup + steps
            kw = dict(batch=batch, total=total, optimizer=optimizer, lr=lr, beta=beta, log_every=log_every,
                      seed=seed)
            ours_ms, trl_ms, floor_ms, diffs = [], [], [], []
            ours_losses = trl_losses = None
            same_ids = None
            for r in range(repeats):
                for side in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
                    if side == "ours":
                        stamps, ours_losses = _our_run(init, tokenizer, data, **kw)
                        ours_ms.append(_steady_ms(stamps, warmup))
                    else:
                        stamps, trl_losses, ids = _trl_run(init, tokenizer, data, **kw)
                        trl_ms.append(_steady_ms(stamps, warmup))
                        if same_ids is None:
                            same_ids = (ids["prompt_ids"] == list(tp.prompt) and ids["chosen_ids"] == list(tp.chosen)
                                        and ids["rejected_ids"] == list(tp.rejected))
                floor_ms.append(_steady_ms(_floor_run(init, tp, batch=batch, total=total, optimizer=optimizer, lr=lr,
                                                      pad=pad), warmup))
                if len(trl_losses) != total or len(ours_losses) != total:
                    raise RuntimeError(f"bench_probes: expected {total} losses per run, got ours {len(ours_losses)}, "
                                       f"TRL {len(trl_losses)}")
                diffs.append(float(np.abs(ours_losses - trl_losses).max()))
            # 3. the ThreeDCallback's probe, amortised over callback_every TRL updates
            from types import SimpleNamespace

            from .callback import ThreeDCallback
            held = _bench_texts(tokenizer, pairs, seed + 2, words=words)
            held_tp = tokenize_pairs(tokenizer, [d["prompt"] for d in held], [d["chosen"] for d in held],
                                     [d["rejected"] for d in held])
            cb = ThreeDCallback(held_tp, every=callback_every, loss="dpo", loss_params={"beta": beta},
                                batch_size=batch)
            state = SimpleNamespace(global_step=0, is_world_process_zero=True, log_history=[])
            cb_model = copy.deepcopy(init).train()
            cb.on_train_begin(SimpleNamespace(bf16=False), state, None, model=cb_model)
            cb_ms = []
            for r in range(repeats):
                state.global_step = callback_every * (r + 1)
                t0 = time.perf_counter()
                cb.on_step_end(None, state, None, model=cb_model)
                cb_ms.append(1e3 * (time.perf_counter() - t0))
            if len(cb.history) != repeats + 1:
                raise RuntimeError(f"bench_probes: expected {repeats + 1} callback probes, got {len(cb.history)}")
            threads_used = torch.get_num_threads()
    finally:
        random.setstate(rng_states[0])
        np.random.set_state(rng_states[1])
        torch.random.set_rng_state(rng_states[2])
    o, t, f = float(np.median(ours_ms)), float(np.median(trl_ms)), float(np.median(floor_ms))
    res = {
        "model": model_name, "n_params": int(sum(p.numel() for p in init.parameters())), "n_pairs": n, "batch": batch,
        "steps": steps, "warmup": warmup, "repeats": repeats, "optimizer": optimizer, "lr": lr, "beta": beta,
        "log_every": log_every, "seed": seed, "torch_threads": threads_used, "torch": torch.__version__,
        "transformers": transformers.__version__, "trl": trl.__version__,
        "prompt_tokens": [int(lens["prompt"].min()), int(lens["prompt"].max())],
        "response_tokens": [int(torch.minimum(lens["chosen"], lens["rejected"]).min()),
                            int(torch.maximum(lens["chosen"], lens["rejected"]).max())],
        "tokens_per_pair": real / n, "padded_tokens_per_pair": padded / n,
        "logprob_batched_s": tb, "logprob_loop_s": tl,
        "logprob_batched_pairs_per_s": n / tb, "logprob_loop_pairs_per_s": n / tl,
        "logprob_batched_tokens_per_s": real / tb, "logprob_loop_tokens_per_s": real / tl,
        "logprob_ratio": tl / tb, "logprob_max_abs_diff": lp_diff,
        "ours_ms_per_step": o, "trl_ms_per_step": t, "floor_ms_per_step": f,
        "ours_repeats_ms": ours_ms, "trl_repeats_ms": trl_ms, "floor_repeats_ms": floor_ms,
        "ours_pairs_per_s": 1e3 * batch / o, "trl_pairs_per_s": 1e3 * batch / t, "train_ratio": t / o,
        "ours_overhead_ms": o - f, "trl_overhead_ms": t - f, "same_token_ids": bool(same_ids),
        "loss_first": float(ours_losses[0]), "loss_last": float(ours_losses[-1]),
        "loss_max_abs_diff": float(max(diffs)),
        "callback_every": callback_every, "callback_pairs": len(held_tp),
        "callback_probe_ms": float(np.median(cb_ms)), "callback_repeats_ms": cb_ms,
        "callback_overhead": float(np.median(cb_ms)) / (callback_every * t),
    }
    assert tuple(res) == PROBES_KEYS
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return res
