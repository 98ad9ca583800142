"""Train the two small GPT-2 models of prefdyn.lm and write them, in Hugging Face format, to models/.

    .venv/bin/python scripts/make_models.py                 # both models -> models/arith-a, models/arith-b
    .venv/bin/python scripts/make_models.py --only arith-b  # one of them
    .venv/bin/python scripts/make_models.py --out /tmp/m    # elsewhere (e.g. to compare with the shipped ones)

Each model: fixed seed, one CPU thread, deterministic batches (prefdyn.lm.models.train_model); the
directory gets model.safetensors (float32), config.json, the tokenizer files and train_log.json (the spec,
the parameter count, the loss of every step and the seconds it took). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from prefdyn.lm import models as M, prefdata as P, task as T  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(M.SPECS), action="append", help="train only this model (repeatable)")
    ap.add_argument("--out", type=Path, default=M.MODELS_DIR, help="parent directory (default: models/)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the shipped models: 1)")
    args = ap.parse_args(argv)
    test = T.sample_problems(500, 3, split="test", seed=12345)
    ood = T.sample_problems(500, 4, split="any", seed=12346)
    for name in args.only or sorted(M.SPECS):
        spec = M.SPECS[name]
        t0 = time.perf_counter()
        model, log = M.train_model(spec, threads=args.threads)
        out = M.save_model(model, log, spec, args.out / name)
        size = (out / "model.safetensors").stat().st_size / 1e6
        print(f"{name}: {M.n_params(model)} parameters, {size:.2f} MB, {spec.steps} steps in "
              f"{time.perf_counter() - t0:.0f} s, final loss {log['loss'][-1]:.4f}; greedy accuracy "
              f"{P.accuracy(model, test):.3f} in distribution, {P.accuracy(model, ood):.3f} OOD -> {out}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
