"""Benchmark of the batched toy trainer against a plain loop of single runs (``prefdyn bench toy``,
:func:`bench`). The LLM probes' benchmark (``prefdyn bench probes``) is :mod:`prefdyn.probes.bench`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import losses as L
from .device import cpu_settings, resolve_device
from .toy.policy import make_policy
from .toy.space import ToySpec, initial_distribution, sample_rejected
from .toy.train import _preference_train, sft
from .validate import check_int

__all__ = ["bench", "count_aten_ops"]


def count_aten_ops(fn) -> int | None:
    """The number of ATen operator calls ``fn()`` makes: every call that reaches the dispatcher below
    autograd (kernels, in-place and ``out=`` ops and views alike, backward ops included; a composite op
    counts as the ops it decomposes into), counted with a ``TorchDispatchMode``; ``None`` where this torch
    has no dispatch modes. Unlike a time, the count does not depend on the machine or its load: it
    measures the Python and dispatcher work of the code."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:                                      # pragma: no cover - old torch
        return None

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with _Count() as counter:
        fn()
    return counter.n


def _single_run_reference(pol, m: int, loss: L.Loss, params: dict, steps: int, lr: float,
                          pairs_per_prompt: int) -> dict[str, torch.Tensor]:
    """The plain way: member ``m`` of ``pol`` as a ``torch.nn.Sequential``
    (:meth:`prefdyn.toy.MLPPolicy.member_module`, on the CPU), ``torch.optim.Adam``, a Python step loop;
    the same pairs, loss, records and per-step gradients as the batched trainer."""
    spec = pol.spec
    P, K = spec.n_prompts, pairs_per_prompt
    model = pol.member_module(m).cpu()
    seed = int(pol.seeds[m])
    x = torch.eye(P, dtype=pol.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.no_grad():
        ref = torch.log_softmax(model(x), -1)
    pos = torch.arange(P).view(P, 1).expand(P, K)
    ref_pos = ref.gather(1, pos)
    rej = sample_rejected(spec, torch.tensor([seed]), torch.arange(steps + 1), K)[:, 0]   # [T, P, K]
    n = steps + 1
    recs = {k: torch.empty(n, dtype=pol.dtype) for k in ("chosen", "rejected", "unseen", "loss", "grad_chosen", "grad_rejected")}
    rb, ub = spec.rejected_block, spec.unseen_block
    for t in range(n):
        logp = torch.log_softmax(model(x), -1)
        lp_pos = logp.gather(1, pos)
        lp_neg = logp.gather(1, rej[t])
        lp_pos.retain_grad()
        lp_neg.retain_grad()
        loss_v = loss.fn(lp_pos, lp_neg, ref_pos, ref.gather(1, rej[t]), **params).mean()
        opt.zero_grad()
        loss_v.backward()
        with torch.no_grad():
            pr = logp.exp()
            recs["chosen"][t] = pr.diagonal().mean()
            recs["rejected"][t] = pr[:, rb.start: rb.stop].mean()
            recs["unseen"][t] = pr[:, ub.start: ub.stop].sum(-1).mean()
            recs["loss"][t] = loss_v
            recs["grad_chosen"][t] = (lp_pos.grad * P * K / lp_pos.exp()).abs().mean()
            recs["grad_rejected"][t] = (lp_neg.grad * P * K / lp_neg.exp()).abs().mean()
        if t < steps:
            opt.step()
    with torch.no_grad():
        recs["final_probs"] = torch.softmax(model(x), -1)
    return recs


def bench(members: int = 256, steps: int = 200, *, loop_members: int | None = None, loss: str = "dpo",
          hidden: int = 64, pairs_per_prompt: int = 4, lr: float = 1e-3, device="auto", threads: int | None = 1,
          loop_threads: int | None = None, repeats: int = 3, out: str | Path | None = None, progress: bool = True,
          count_ops: bool = True) -> dict[str, Any]:
    """Time the same work (``members`` x ``steps`` preference-optimisation updates of the MLP toy, with
    all records) done by the batched trainer and by a plain loop of single runs (``nn.Sequential`` +
    ``torch.optim.Adam``, one member at a time, as a plain script would do it).

    Both start from the same post-SFT parameters (SFT is not timed), see the same pairs and run under
    the same :class:`cpu_settings` (``threads``, subnormals flushed), so the bench also reports the
    largest difference between their final probabilities. ``loop_members`` (default: all) runs the loop
    on the first members only and scales its time by ``members / loop_members`` (the loop's cost is
    linear in the members; ``loop_extrapolated`` says so). The batched trainer runs on ``device``
    (float32) after one untimed warm-up run, ``repeats`` times, and its median time is reported (the
    loop, 256 runs long, averages the machine's load by itself); the loop, after a short untimed warm-up
    run, runs on the CPU with ``loop_threads`` intra-op threads (default: ``threads``; one thread is the loop's fastest setting on
    the 2-core machine, so ``threads=2, loop_threads=1`` compares each side at its best).
    ``count_ops`` (default) also counts the ATen ops (:func:`count_aten_ops`) of one more, untimed,
    batched run (``batched_aten_ops_per_step``: its ops / ``steps``, set-up and records included) and of
    one member's loop run (``loop_aten_ops_per_member_step``; ``loop_aten_ops_per_step`` = that x
    ``members``: the loop's ops for the work of one batched step); ``None`` when not counted.
    Returns a dict (and writes it as JSON to ``out`` when given).
    """
    from .progress import bar

    check_int("members", members, 1)
    check_int("steps", steps, 1)
    loop_members = members if loop_members is None else loop_members
    check_int("loop_members", loop_members, 1, members)
    check_int("hidden", hidden, 1)
    check_int("repeats", repeats, 1)
    if threads is not None:
        check_int("threads", threads, 1)
    loop_threads = threads if loop_threads is None else loop_threads
    if loop_threads is not None:
        check_int("loop_threads", loop_threads, 1)
    loss_fn = L.get(loss)
    params = loss_fn.check()
    dev = resolve_device(device)
    spec = ToySpec()
    seeds = torch.arange(members)
    with cpu_settings(threads):
        pol = make_policy("mlp", spec, seeds, hidden=hidden, device=dev)
        sft(pol, initial_distribution(spec).to(dev), steps=300)
        groups = [(slice(0, members), loss_fn, params)]

        def train(p):
            _preference_train(p, groups, steps=steps, lr=lr, optimizer="adam", pairs_per_prompt=pairs_per_prompt,
                              progress=False)

        def batched():
            p = pol.clone()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train(p)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0, p

        batched()  # warm-up (allocations, first kernels) with the same shapes
        times = []
        for _ in range(repeats):
            t_run, p_final = batched()
            times.append(t_run)
        t_batched = float(np.median(times))
        threads_used = torch.get_num_threads()
        p_count = pol.clone()
        ops_batched = count_aten_ops(lambda: train(p_count)) if count_ops else None
    with cpu_settings(loop_threads):
        _single_run_reference(pol, 0, loss_fn, params, min(steps, 5), lr, pairs_per_prompt)  # untimed warm-up
        t0 = time.perf_counter()
        finals = []
        for m in (bar(range(loop_members), desc="plain loop") if progress else range(loop_members)):
            r = _single_run_reference(pol, m, loss_fn, params, steps, lr, pairs_per_prompt)
            finals.append(r["final_probs"])
        t_loop_measured = time.perf_counter() - t0
        loop_threads_used = torch.get_num_threads()
        ops_loop = (count_aten_ops(lambda: _single_run_reference(pol, 0, loss_fn, params, steps, lr, pairs_per_prompt))
                    if count_ops else None)
    t_loop = t_loop_measured * members / loop_members
    diff = float((torch.stack(finals) - p_final.probs()[:loop_members].cpu()).abs().max())
    res = {
        "members": members, "steps": steps, "loss": loss_fn.name, "hidden": hidden, "pairs_per_prompt": pairs_per_prompt,
        "device": dev.type, "torch_threads": threads_used, "loop_torch_threads": loop_threads_used,
        "torch": torch.__version__,
        "batched_s": t_batched, "batched_repeats_s": times, "loop_s": t_loop, "loop_measured_s": t_loop_measured,
        "loop_members_measured": loop_members, "loop_extrapolated": loop_members != members,
        "ratio": t_loop / t_batched,
        "batched_us_per_member_step": 1e6 * t_batched / (members * steps),
        "loop_us_per_member_step": 1e6 * t_loop / (members * steps),
        "max_abs_diff_final_probs": diff,
        "batched_aten_ops_per_step": None if ops_batched is None else ops_batched / steps,
        "loop_aten_ops_per_member_step": None if ops_loop is None else ops_loop / steps,
        "loop_aten_ops_per_step": None if ops_loop is None else ops_loop * members / steps,
    }
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return res
