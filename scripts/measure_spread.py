#!/usr/bin/env python
"""Measure how far each chapter's key numbers move between CPU code paths, to choose its tolerances.

Runs every chapter (or those named) once per environment variant below, each in a fresh kernel through
``prefdyn run --out``, and compares its JSON with the golden ``book/data/<id>.json``:

    .venv/bin/python scripts/measure_spread.py [CHAPTER ...] [--out runs/spread] [--variants NAME ...]

It prints, per chapter and tolerance rule, the largest relative, absolute and log10 deviation over all
variants and keys (and the key where it occurs), and whether the chapter's declared tolerances accept
every variant. The variants change the code path of the math libraries the way another machine would:

- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, the SSE2 code path;
- ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (and SSE4_2): cap MKL's instruction set;
- ``ATEN_CPU_CAPABILITY=default``: PyTorch's non-vectorised kernels (a machine without AVX2 / another ISA);
- ``OMP_NUM_THREADS=1`` / ``2``: thread counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from prefdyn import regression  # noqa: E402
from prefdyn.chapters import CHAPTERS  # noqa: E402

VARIANTS = {
    "default": {},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "mkl-sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-default+mkl-compatible": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
    "omp-1": {"OMP_NUM_THREADS": "1"},
    "omp-2": {"OMP_NUM_THREADS": "2"},
}


def run(cid: str, variant: str, out: Path) -> Path:
    folder = out / variant / cid
    produced = folder / f"{cid}.json"
    if produced.is_file():
        return produced
    env = {**os.environ, **VARIANTS[variant], "PREFDYN_PROGRESS": "0"}
    env.pop("PREFDYN_RESULTS_DIR", None)
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "prefdyn"), "run", cid, "--out", str(folder), "-q"],
                   env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  {cid} [{variant}] {time.perf_counter() - t0:.0f} s", flush=True)
    return produced


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chapters", nargs="*", default=[c for c in CHAPTERS if c != "performance"])
    ap.add_argument("--out", default=str(ROOT / "runs" / "spread"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--json", default=None, help="write the per-key maxima here")
    args = ap.parse_args()
    out = Path(args.out)
    report = {}
    ok_all = True
    for cid in args.chapters:
        chapter = CHAPTERS[cid]
        golden = json.loads((ROOT / "book" / "data" / f"{cid}.json").read_text())
        per_key: dict[str, dict] = {}
        failures = []
        for v in args.variants:
            produced = json.loads(run(cid, v, out).read_text())
            for key, d in regression.deviations(produced["results"], golden["results"]).items():
                best = per_key.setdefault(key, {"rel": 0.0, "abs": 0.0, "log10": 0.0, "golden": d["golden"]})
                for q in ("rel", "abs", "log10"):
                    if d.get(q, 0.0) > best[q]:
                        best[q] = d[q]
                        best[q + "_variant"] = v
            failures += [f"[{v}] {m}" for m in regression.compare(cid, produced["results"], golden["results"],
                                                                    chapter.tolerances)]
        report[cid] = per_key
        moved = {k: d for k, d in per_key.items() if d["abs"] > 0}
        print(f"\n== {cid}: {len(per_key)} numeric keys, {len(moved)} move under some variant")
        by_rule: dict[str, list] = {}
        for k, d in moved.items():
            by_rule.setdefault(chapter.tolerances.for_key(k).describe(), []).append((k, d))
        for rule, items in by_rule.items():
            print(f"  rule [{rule}]: {len(items)} keys")
            for q in ("rel", "abs", "log10"):
                k, d = max(items, key=lambda kd: kd[1][q])
                print(f"    max {q:5s} {d[q]:.3g} at {k} (golden {d['golden']:.4g}, {d.get(q + '_variant', '-')})")
        if failures:
            ok_all = False
            print(f"  NOT accepted by the declared tolerances ({len(failures)}):")
            print("\n".join("    " + f for f in failures[:30]))
        else:
            print("  every variant is accepted by the declared tolerances")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
