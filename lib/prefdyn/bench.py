"""Benchmark of the batched toy trainer against a plain loop of single runs (``prefdyn bench toy``,
:func:`bench`). The LLM probes' benchmark (``prefdyn bench probes``) is :mod:`prefdyn.probes.bench`.

``make bench`` (``prefdyn bench all``, :func:`bench_all`) runs both and writes one record with the machine
(:func:`machine_info`) and the chapter times of the last ``prefdyn book`` (:func:`record_book_times`, in
``_build/book-times.json``); :func:`bench_tables` turns a record into the tables of the book's Performance
appendix, :func:`readme_block` into the README's figures."""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import losses as L
from .device import cpu_settings, resolve_device
from .toy.policy import make_policy
from .toy.space import ToySpec, initial_distribution, sample_rejected
from .toy.train import _preference_train, sft
from .validate import check_int, check_number

__all__ = ["bench", "count_aten_ops", "machine_info", "record_book_times", "load_book_times", "bench_all",
           "load_bench", "resolve_bench_file", "bench_tables", "key_figures", "summary_lines", "readme_block",
           "sync_readme", "BOOK_TIMES", "BOOK_NOTE", "ALL_TOY", "ALL_PROBES"]


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


# ----------------------------------------------------------------------------- make bench: the machine
def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (``2025-01-31T12:00:00Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cpu_model() -> str:
    """The CPU's ``model name`` in /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name") and ":" in line:
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a timing was measured on, so that a figure is never quoted without its machine: the CPU model,
    the logical cores (``os.cpu_count``), torch's version and default intra-op threads, Python's version,
    the OS (``platform.platform()``), the UTC date and time (``date``) and the load average over 1, 5 and 15
    minutes (``os.getloadavg``, ``None`` where the OS has none): on a shared machine, timings move with it."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):                       # pragma: no cover - Windows
        load = None
    return {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "os": platform.platform(), "date": utc_now(), "load_average": load}


def _same_machine(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("cpu", "logical_cores"))


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON through a temporary file, so that a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------- make bench: the book's times
#: Where ``prefdyn book`` writes its chapter and site-build times (relative to the repository root).
BOOK_TIMES = "_build/book-times.json"
#: The keys of a book-times record (:func:`record_book_times`).
BOOK_KEYS = ("chapters", "chapter_timed_at", "retimed", "site_build_s", "site_built_at", "total_s", "executed_at",
             "machine")
#: What a bench record says in place of the build times when there were none to include.
BOOK_NOTE = ("This record has no build times: `make book` writes them to _build/book-times.json, and `make bench` "
             "run after it includes them.")


def load_book_times(path: str | os.PathLike) -> dict[str, Any]:
    """A book-times record (:func:`record_book_times`) read from ``path``; a one-line ``ValueError`` if it is
    not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"book_times: cannot read {path} as JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or not isinstance(data.get("chapters"), dict) or any(k not in data for k in BOOK_KEYS):
        raise ValueError(f"book_times: {path} is not a record of prefdyn book (expected the keys "
                         f"{', '.join(BOOK_KEYS)})")
    return data


def record_book_times(path: str | os.PathLike, chapters: dict[str, float], site_build_s: float | None = None, *,
                      merge: bool = False) -> dict[str, Any]:
    """Write the wall times of ``prefdyn book`` to ``path`` (``_build/book-times.json``) and return the record.

    ``chapters``: seconds per executed chapter; ``site_build_s``: the site build's seconds (``None``: not
    built). ``merge`` (``--only``, ``--no-execute`` or ``--no-build``) keeps the times already in ``path``
    for what this run did not time, provided they were measured on the same machine (CPU model and logical
    cores; otherwise, or if the file is not a record, it starts afresh). The record: ``chapters``
    ({id: s}), ``chapter_timed_at`` ({id: UTC time it was timed}), ``retimed`` (the ids this run timed),
    ``site_build_s`` and ``site_built_at``, ``total_s`` (the chapters' times and the site build, added),
    ``executed_at`` (this run) and ``machine`` (:func:`machine_info`).
    """
    for cid, s in chapters.items():
        check_number(f"chapters[{cid!r}]", s, 0.0)
    if site_build_s is not None:
        check_number("site_build_s", site_build_s, 0.0)
    path = Path(path)
    now, machine = utc_now(), machine_info()
    old = None
    if merge and path.is_file():
        try:
            old = load_book_times(path)
        except ValueError:
            old = None
        if old is not None and not _same_machine(old["machine"], machine):
            old = None
    old = old or {"chapters": {}, "chapter_timed_at": {}, "site_build_s": None, "site_built_at": None}
    times = {**old["chapters"], **{c: float(s) for c, s in chapters.items()}}
    site = float(site_build_s) if site_build_s is not None else old["site_build_s"]
    rec = {"chapters": times, "chapter_timed_at": {**old["chapter_timed_at"], **{c: now for c in chapters}},
           "retimed": list(chapters), "site_build_s": site,
           "site_built_at": now if site_build_s is not None else old["site_built_at"],
           "total_s": sum(times.values()) + (site or 0.0), "executed_at": now, "machine": machine}
    _write_json(path, rec)
    return rec


# ----------------------------------------------------------------------------- make bench: one record
#: ``make bench``'s toy settings (:func:`bench`): the defaults of ``prefdyn bench toy`` on the CPU, the loop
#: timed on 64 of the 256 members and scaled (its cost is linear in the members), both sides on one thread.
ALL_TOY = {"members": 256, "steps": 200, "loop_members": 64, "threads": 1, "loop_threads": 1, "device": "cpu"}
#: ``make bench``'s probes settings (:func:`prefdyn.probes.bench.bench_probes`): ``prefdyn bench probes``'s.
ALL_PROBES = {"pairs": 64, "steps": 20, "batch": 8, "threads": 1, "repeats": 3}
#: The keys of a bench record (:func:`bench_all`), in order.
RECORD_KEYS = ("machine", "bench_s", "settings", "book", "book_note", "toy", "probes")


def _settings(name: str, given: dict | None, defaults: dict, fn, reserved: tuple[str, ...]) -> dict:
    import inspect

    params = inspect.signature(fn).parameters
    allowed = [p for p in params if p not in reserved]
    kw = {**defaults, **(given or {})}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):     # takes any keyword: nothing to check
        return kw
    for k in kw:
        if k not in allowed:
            raise ValueError(f"{name}: unknown setting {k!r} (allowed: {', '.join(allowed)})")
    return kw


def bench_all(out: str | os.PathLike | None = None, *, toy: dict | None = None, probes: dict | None = None,
              book_times: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """``make bench``: every timing the book quotes, in one record on one machine.

    Runs :func:`bench` (settings :data:`ALL_TOY` updated by ``toy``) and
    :func:`prefdyn.probes.bench.bench_probes` (:data:`ALL_PROBES` updated by ``probes``), and returns (and
    writes as JSON to ``out``) a dict with the keys :data:`RECORD_KEYS`: ``machine`` (:func:`machine_info`),
    ``bench_s`` (this function's wall time), ``settings`` (both benches' settings), ``book`` (the record of
    ``book_times``, ``_build/book-times.json``, when that file exists; else ``None``, and ``book_note``
    says so: :data:`BOOK_NOTE`), ``toy`` and ``probes`` (the two benches' dicts, every key).
    """
    from .probes.bench import bench_probes

    toy_kw = _settings("toy", toy, ALL_TOY, bench, ("out", "progress"))
    probes_kw = _settings("probes", probes, ALL_PROBES, bench_probes, ("out",))
    book = load_book_times(book_times) if book_times is not None and Path(book_times).is_file() else None
    machine = machine_info()
    t0 = time.perf_counter()
    toy_res = bench(progress=progress, **toy_kw)
    probes_res = bench_probes(**probes_kw)
    record = {"machine": machine, "bench_s": time.perf_counter() - t0,
              "settings": {"toy": toy_kw, "probes": probes_kw}, "book": book,
              "book_note": None if book is not None else BOOK_NOTE, "toy": toy_res, "probes": probes_res}
    assert tuple(record) == RECORD_KEYS
    if out is not None:
        _write_json(Path(out), record)
    return record


def resolve_bench_file(path: str | os.PathLike) -> Path:
    """``path`` (relative to the repository root unless absolute) as an existing file, or a one-line
    ``ValueError`` naming ``bench_file``."""
    from .results import repo_root

    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ValueError(f"bench_file: expected the path of a record of prefdyn bench all, got {path!r}")
    p = Path(path)
    if not p.is_absolute():
        p = repo_root() / p
    if not p.is_file():
        raise ValueError(f"bench_file: no such file {p} (prefdyn bench all --out FILE writes one)")
    return p


def load_bench(path: str | os.PathLike) -> dict[str, Any]:
    """The bench record (:func:`bench_all`) at ``path`` (:func:`resolve_bench_file`); a one-line ``ValueError``
    if it is missing or not one."""
    p = resolve_bench_file(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        raise ValueError(f"bench_file: {p} is not JSON") from None
    missing = [k for k in RECORD_KEYS if k not in data] if isinstance(data, dict) else list(RECORD_KEYS)
    if missing:
        raise ValueError(f"bench_file: {p} is not a record of prefdyn bench all (missing {', '.join(missing)})")
    return data


# ----------------------------------------------------------------------------- make bench: tables and text
def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _day(iso: str | None) -> str | None:
    return None if iso is None else str(iso)[:10]


def _summary_table(record: dict):
    from .tables import Table

    toy, pr, book = record["toy"], record["probes"], record["book"]
    rows = [("toy: µs per member-step", [toy["batched_us_per_member_step"], toy["loop_us_per_member_step"],
                                        toy["ratio"]]),
            ("log-probs: pairs/s", [pr["logprob_batched_pairs_per_s"], pr["logprob_loop_pairs_per_s"],
                                    pr["logprob_ratio"]]),
            ("DPO step: ms", [pr["ours_ms_per_step"], pr["trl_ms_per_step"], pr["train_ratio"]]),
            ("ThreeDCallback: % of TRL's run", [100 * pr["callback_overhead"], None, None])]
    if book is not None:
        rows.append(("the book: chapters and site, s", [book["total_s"], None, None]))
    return Table(["ours", "baseline", "speed-up"], rows, corner="figure",
                 title=f"make bench, measured {_day(record['machine']['date'])}",
                 note="baseline: a plain loop of single runs (toy), one sequence at a time (log-probs), "
                      "TRL (DPO step).")


def bench_tables(record: dict, order: Sequence[str] | None = None) -> dict[str, Any]:
    """The tables of a bench record (:func:`bench_all`) as the Performance appendix shows them
    (:class:`prefdyn.tables.Table`): ``summary``, ``machine``, ``book`` (only when the record has the
    build times: each chapter in ``order``, default the record's, which ``prefdyn book`` writes in book
    order; then the site build, the total), ``toy``, ``logprobs``, ``dpo_step`` and ``callback``; every title
    or note says when its figures were measured."""
    from .results import fmt
    from .tables import Table

    m, toy, pr, book = record["machine"], record["toy"], record["probes"], record["book"]
    on = f"measured {_day(m['date'])}"
    tables = {"summary": _summary_table(record),
              "machine": Table(["value"], [("CPU", [m["cpu"]]), ("logical cores", [m["logical_cores"]]),
                                           ("torch", [f"{m['torch']}, {_threads(m['torch_threads'])} by default"]),
                                           ("Python", [m["python"]]), ("OS", [m["os"]]),
                                           ("measured (UTC)", [m["date"]]),
                                           ("load average, 1/5/15 min", [m.get("load_average")])],
                               title="The machine", corner="")}
    if book is not None:
        order = list(book["chapters"]) if order is None else list(order)
        ids = [c for c in order if c in book["chapters"]] + sorted(c for c in book["chapters"] if c not in order)
        rows = [(c, [book["chapters"][c], _day(book["chapter_timed_at"].get(c))]) for c in ids]
        rows.append(("site build", [book["site_build_s"], _day(book["site_built_at"])]))
        rows.append(("total", [book["total_s"], _day(book["executed_at"])]))
        bm = book["machine"]
        tables["book"] = Table(["seconds", "timed (UTC)"], rows, corner="chapter",
                               title="The book: every chapter executed, then the site built",
                               note=f"total: the chapters and the site build, added; on {bm['cpu']}, "
                                    f"{bm['logical_cores']} logical cores.")
    scaled = " (scaled)" if toy["loop_extrapolated"] else ""
    tables["toy"] = Table(
        ["s", "µs per member-step", "speed-up"],
        [(f"batched, {_threads(toy['torch_threads'])}",
          [toy["batched_s"], toy["batched_us_per_member_step"], toy["ratio"]]),
         (f"plain loop, {_threads(toy['loop_torch_threads'])}",
          [toy["loop_s"], toy["loop_us_per_member_step"], 1.0])],
        corner="toy trainer", title=f"Toy ensemble vs plain loop ({on})",
        note=f"{toy['members']} members x {toy['steps']} DPO updates, {toy['device']}; loop timed on "
             f"{toy['loop_members_measured']} members{scaled}; final |diff| {fmt(toy['max_abs_diff_final_probs'])}")
    tables["logprobs"] = Table(
        ["pairs/s", "tokens/s", "speed-up"],
        [(f"batched, {_threads(pr['torch_threads'])}",
          [pr["logprob_batched_pairs_per_s"], pr["logprob_batched_tokens_per_s"], pr["logprob_ratio"]]),
         ("one at a time", [pr["logprob_loop_pairs_per_s"], pr["logprob_loop_tokens_per_s"], 1.0])],
        corner="log-probs", title=f"LLM probes: sequence log-probs ({on})",
        note=f"{pr['model']}, {pr['n_params']} parameters; {pr['n_pairs']} pairs, {pr['batch']} per forward")
    floor = pr["floor_ms_per_step"]
    tables["dpo_step"] = Table(
        ["ms per step", "pairs/s", "TRL's ms / this"],
        [("ours", [pr["ours_ms_per_step"], pr["ours_pairs_per_s"], pr["train_ratio"]]),
         ("TRL DPOTrainer", [pr["trl_ms_per_step"], pr["trl_pairs_per_s"], 1.0]),
         ("model work alone", [floor, 1e3 * pr["batch"] / floor, pr["trl_ms_per_step"] / floor])],
        corner="DPO step", title=f"DPO step, ours vs TRL ({on})",
        note=f"{pr['batch']} pairs per update, {pr['optimizer']}, median of {pr['repeats']} runs of "
             f"{pr['steps']} updates; TRL {pr['trl']}.")
    tables["callback"] = Table(
        ["probe ms", "pairs", "every", "% of TRL's run"],
        [("ThreeDCallback", [pr["callback_probe_ms"], pr["callback_pairs"], pr["callback_every"],
                             100 * pr["callback_overhead"]])],
        corner="callback", title=f"The callback's cost ({on})",
        note="one probe of the held-out pairs every `every` TRL updates, against those updates' time")
    return tables


def key_figures(record: dict) -> dict[str, Any]:
    """The figures of a bench record a chapter saves as its key numbers (from the record alone, so the
    same record gives the same figures on any machine)."""
    m, toy, pr, book = record["machine"], record["toy"], record["probes"], record["book"]
    out = {"measured_at": m["date"], "cpu": m["cpu"], "logical_cores": m["logical_cores"],
           "toy_ratio": toy["ratio"], "toy_batched_us_per_member_step": toy["batched_us_per_member_step"],
           "toy_loop_us_per_member_step": toy["loop_us_per_member_step"],
           "logprob_batched_pairs_per_s": pr["logprob_batched_pairs_per_s"], "logprob_ratio": pr["logprob_ratio"],
           "ours_ms_per_step": pr["ours_ms_per_step"], "trl_ms_per_step": pr["trl_ms_per_step"],
           "train_ratio": pr["train_ratio"], "callback_overhead": pr["callback_overhead"],
           "book_timed": book is not None}
    if book is not None:
        out["book_total_s"] = book["total_s"]
        out["book_chapters"] = len(book["chapters"])
    return out


def summary_lines(record: dict) -> list[str]:
    """A bench record in a few lines (what ``prefdyn bench all`` prints)."""
    from .results import fmt

    m, toy, pr, book = record["machine"], record["toy"], record["probes"], record["book"]
    lines = [f"machine: {m['cpu']}, {m['logical_cores']} logical cores, torch {m['torch']}, Python {m['python']}, "
             f"{m['os']}, {m['date']}",
             f"toy: batched {fmt(toy['batched_us_per_member_step'])} us vs plain loop "
             f"{fmt(toy['loop_us_per_member_step'])} us per member-step, {fmt(toy['ratio'])}x "
             f"({toy['members']} members x {toy['steps']} updates; loop timed on {toy['loop_members_measured']})",
             f"log-probs: batched {fmt(pr['logprob_batched_pairs_per_s'])} pairs/s "
             f"({fmt(pr['logprob_batched_tokens_per_s'])} tokens/s) vs one at a time "
             f"{fmt(pr['logprob_loop_pairs_per_s'])} pairs/s ({fmt(pr['logprob_loop_tokens_per_s'])} tokens/s), "
             f"{fmt(pr['logprob_ratio'])}x",
             f"DPO step: ours {fmt(pr['ours_ms_per_step'])} ms vs TRL {fmt(pr['trl_ms_per_step'])} ms, "
             f"{fmt(pr['train_ratio'])}x (model work alone {fmt(pr['floor_ms_per_step'])} ms)",
             f"ThreeDCallback: one probe of {pr['callback_pairs']} pairs every {pr['callback_every']} updates adds "
             f"{fmt(100 * pr['callback_overhead'])}% to TRL's run"]
    if book is None:
        lines.append(f"book: {record['book_note']}")
    else:
        lines.append(f"book: {len(book['chapters'])} chapters and the site build, {fmt(book['total_s'])} s in all "
                     f"(timed {book['executed_at']})")
    return lines


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def readme_block(record: dict, source: str = "book/data/bench.json") -> str:
    """The README's ``make bench`` figures, from a bench record: one paragraph naming the machine and the
    date, then the summary table of :func:`bench_tables` in Markdown, between the markers
    :data:`README_START` and :data:`README_END`."""
    import textwrap

    from .tables import cell_text

    m = record["machine"]
    book = ("with the build times of the last `make book`" if record["book"] is not None
            else "without build times (no `make book` before it)")
    load = m.get("load_average")
    load = f", load average {cell_text(load[0])} at the start" if load else ""
    text = (f"Measured by `make bench` (`prefdyn bench all`, {round(record['bench_s'])} s) on {m['cpu']} "
            f"({m['logical_cores']} logical cores; {m['os']}; torch {m['torch']}, Python {m['python']}) on "
            f"{_day(m['date'])}{load}, {book}; the record is `{source}`, shown in full in the book's Performance "
            f"appendix:")
    table = _summary_table(record)
    head = [table.corner, *table.columns]
    rows = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    rows += ["| " + " | ".join([label, *map(cell_text, cells)]) + " |" for label, cells in table.rows]
    return "\n".join([README_START, textwrap.fill(text, 110), "", *rows, "", table.note, README_END])


def sync_readme(readme: str | os.PathLike = "README.md",
                bench_file: str | os.PathLike = "book/data/bench.json") -> bool:
    """Replace the README's block between :data:`README_START` and :data:`README_END` by
    :func:`readme_block` of ``bench_file`` (both paths relative to the repository root unless absolute);
    returns whether the README changed."""
    from .results import repo_root

    path = Path(readme) if Path(readme).is_absolute() else repo_root() / readme
    text = path.read_text(encoding="utf-8")
    i, j = text.find(README_START), text.find(README_END)
    if i < 0 or j < i:
        raise ValueError(f"readme: {path} has no block between {README_START} and {README_END}")
    new = text[:i] + readme_block(load_bench(bench_file), str(bench_file)) + text[j + len(README_END):]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
