"""``python -m prefdyn.probes``: preference training of a local Hugging Face model with the probes logged.

The pairs are a JSON-lines file, one ``{"prompt": ..., "chosen": ..., "rejected": ...}`` per line. The
log (:data:`prefdyn.probes.PROBE_COLUMNS`, one value per logged step) is written to ``OUT/log.npz``, the
settings and every update's loss to ``OUT/run.json``; nothing is downloaded. A 1B-class model on one
GPU (float32 weights and AdamW state, about 20 GB for 1.2 B parameters, plus activations; bf16
autocast)::

    python -m prefdyn.probes --model-path /models/Llama-3.2-1B-Instruct --pairs pairs.jsonl \\
        --loss dpo --loss-param beta=0.1 --steps 200 --batch-size 16 --grad-accum 4 --lr 5e-7 \\
        --max-length 1024 --log-every 10 --out runs/probes/llama-1b

With several GPUs visible the model is split over them (``device_map="auto"``) with the same command.
(The memory figure is an estimate; the CUDA path is tested by a test that skips without a GPU and has
not been run on one yet.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .pairs import TRUNCATIONS
from .train import OPTIMIZERS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m prefdyn.probes", description="Preference training of a local "
                                "Hugging Face model with the log-prob and gradient probes logged.")
    p.add_argument("--model-path", required=True, help="local Hugging Face model directory (config.json, weights, tokenizer)")
    p.add_argument("--pairs", required=True, help="JSON-lines file of {prompt, chosen, rejected}")
    p.add_argument("--out", required=True, help="output folder (log.npz, run.json)")
    p.add_argument("--loss", default="dpo", help="a loss of prefdyn.losses (default dpo)")
    p.add_argument("--loss-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a loss parameter, e.g. beta=0.1 (repeatable)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per update")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per update")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    p.add_argument("--max-grad-norm", type=float, default=None)
    p.add_argument("--max-length", type=int, default=None, help="tokens per prompt+response")
    p.add_argument("--truncation", default="keep_start", choices=TRUNCATIONS)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    return p


def _value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return float(text)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        params = {}
        for item in args.loss_param:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--loss-param: expected NAME=VALUE, got {item!r}")
            try:
                params[name.strip()] = _value(value)
            except ValueError:
                raise ValueError(f"--loss-param: expected a number or true/false for {name!r}, got {value!r}") from None
        path = Path(args.pairs)
        if not path.is_file():
            raise ValueError(f"--pairs: no such file {args.pairs!r}")
        pairs = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    pairs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"--pairs: line {i} of {args.pairs!r} is not JSON ({e.msg})") from None
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: {args.out!r} exists and is not a folder")
        import numpy as np

        from .train import train_preference

        run = train_preference(args.model_path, pairs, loss=args.loss, loss_params=params, steps=args.steps,
                               batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                               optimizer=args.optimizer, max_grad_norm=args.max_grad_norm,
                               max_length=args.max_length, truncation=args.truncation, log_every=args.log_every,
                               seed=args.seed, device=args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "log.npz", **run.log)
    (out / "run.json").write_text(json.dumps({"config": run.config, "losses": run.losses.tolist()}, indent=1,
                                             default=str) + "\n", encoding="utf-8")
    last = {k: float(v[-1]) for k, v in run.log.items()
            if k in ("step", "loss", "drift_chosen", "drift_rejected", "log_grad_ratio")}
    print(" ".join(f"{k}={v:.4g}" for k, v in last.items()))
    print(f"wrote {out / 'log.npz'} and {out / 'run.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
