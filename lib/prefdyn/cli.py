"""The ``prefdyn`` command: list chapters and their parameters, run a chapter, build the book.

    prefdyn list [CHAPTER]                         chapters, parameters (type, default, range, meaning), constraints
    prefdyn run CHAPTER [-p NAME VALUE ...] [--out DIR | --into-book]
    prefdyn book [--only CHAPTER ...] [--no-execute] [--no-build]
    prefdyn check CHAPTER [RUN_JSON] [--device D]  a run's key numbers vs the book's, under the chapter's tolerances
    prefdyn bench toy [...]                        batched vs looped toy trainer (see prefdyn.bench)
    prefdyn bench probes [...]                     LLM probes vs a plain loop and vs TRL's DPOTrainer
    prefdyn bench all [--out FILE]                 both, the machine and the book's times in one record (make bench)
    prefdyn --version

Exit codes: 0 success; 1 a chapter or the site build failed, ``check`` found numbers beyond tolerance, or its files could not be moved into place;
2 bad input (unknown chapter or parameter, value out of range, a bad option, an unusable ``--out``),
reported in one line before anything runs or is written; 130 interrupted (SIGINT), 143 terminated
(SIGTERM), both after the run's temporary folder and kernel are cleaned up.

``-p NAME VALUE`` takes its two values verbatim, so a negative number works (``-p lr -1e-3``; argparse alone
would read ``-1e-3`` as an option).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import textwrap
import time

from . import __version__
from .chapters.params import ParameterError, parse_overrides


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM, so that ``finally`` blocks, ``with TemporaryDirectory`` and
    the kernel's shutdown run as they do for Ctrl-C (a ``KeyboardInterrupt``, which asyncio and nbclient
    already let through)."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)          # a second SIGTERM ends the process at once
    raise Terminated()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prefdyn: error: ...``, exit code 2 (no usage block)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        message = " ".join(str(message).split())
        self.exit(2, f"prefdyn: error: {message} (see prefdyn -h)\n")


def _cmd_list(args) -> int:
    from .chapters.catalog import CHAPTERS, get_chapter

    chapters = [get_chapter(args.chapter)] if args.chapter else list(CHAPTERS.values())
    for chapter in chapters:
        print(f"{chapter.id}  -  {chapter.title}  [part {chapter.part}]")
        if not chapter.params:
            print("    (no parameters)")
        for p in chapter.params:
            print(f"    {p.name} ({p.type}, default {p.default_text()}): {p.allowed()}")
            print(textwrap.indent(textwrap.fill(p.help, 90), "        "))
        if chapter.checks:
            print("    constraints:")
            for check in chapter.checks:
                print(f"        {describe_check(check)}")
        print()
    return 0


from .chapters.params import describe_check  # noqa: E402  (re-exported: `prefdyn list` prints it)


def _cmd_run(args) -> int:
    from .chapters.catalog import get_chapter
    from .chapters.runner import ChapterFailed, InstallFailed, check_destination, run_chapter

    chapter = get_chapter(args.chapter)
    overrides = chapter.validate(parse_overrides(args.param or []))
    chapter.resolve(overrides)                                 # constraints between parameters, before any work
    if args.out is not None:
        check_destination(args.out)                            # before any work, too
    t0 = time.perf_counter()
    try:
        res = run_chapter(chapter.id, overrides, out=args.out, into_book=args.into_book, progress=not args.quiet)
    except (ChapterFailed, InstallFailed) as exc:
        print(f"prefdyn: {exc}", file=sys.stderr)
        return 1
    print(f"{chapter.id}: executed in {time.perf_counter() - t0:.1f} s")
    print(f"  notebook: {res.notebook}")
    if res.results:
        print(f"  results:  {res.results}")
    return 0


def _cmd_book(args) -> int:
    from .chapters.catalog import get_chapter
    from .chapters.runner import ChapterFailed, InstallFailed, all_chapters, build_site, run_chapter

    ids = [get_chapter(c).id for c in args.only] if args.only else all_chapters()
    times: dict[str, float] = {}                  # wall time of every executed chapter, for book-times.json
    if not args.no_execute:
        for cid in ids:
            t0 = time.perf_counter()
            try:
                run_chapter(cid, into_book=True, progress=not args.quiet)
            except (ChapterFailed, InstallFailed) as exc:
                print(f"prefdyn: {exc}", file=sys.stderr)
                return 1
            times[cid] = time.perf_counter() - t0
            print(f"{cid}: executed into book/ in {times[cid]:.1f} s", flush=True)
    from .chapters.pages import write_pages
    from .chapters.rerun import refresh_book_notebooks
    from .chapters.runner import repo_root

    for path in refresh_book_notebooks(repo_root()):   # the "Rerun this chapter" boxes, without re-execution
        print(f"updated {path}")
    for path in write_pages(repo_root()):      # findings, parameters, ...: from the chapters' results
        print(f"generated {path}")
    site_s = None
    if not args.no_build:
        t0 = time.perf_counter()
        code = build_site()
        if code != 0:
            print("prefdyn: the site build failed (see the warnings above)", file=sys.stderr)
            return 1
        site_s = time.perf_counter() - t0
        print(f"site built in {site_s:.1f} s: open _build/html/index.html")
    if times or site_s is not None:
        from .bench import BOOK_TIMES, record_book_times

        # a partial run (--only, --no-execute, --no-build) keeps the times of what it did not redo
        partial = bool(args.only) or args.no_execute or args.no_build
        path = repo_root() / BOOK_TIMES
        record_book_times(path, times, site_s, merge=partial)
        print(f"times written to {path} (prefdyn bench all includes them)")
    return 0


def _cmd_check(args) -> int:
    """Compare a run's JSON (or a fresh execution with the book's parameters) with book/data/<id>.json."""
    import json
    import tempfile
    from pathlib import Path

    from . import regression
    from .chapters.golden import golden_path
    from .chapters.catalog import get_chapter
    from .chapters.runner import ChapterFailed, InstallFailed, run_chapter

    chapter = get_chapter(args.chapter)
    if args.device and "device" not in chapter.param_names:
        raise ParameterError(f"{chapter.id}: this chapter has no 'device' parameter")
    overrides = chapter.validate({"device": args.device}) if args.device else {}
    if args.run_json is not None and not Path(args.run_json).is_file():
        raise ParameterError(f"run JSON '{args.run_json}' is not a file")
    if args.deviations < 0:
        raise ParameterError(f"--deviations must be >= 0 (got {args.deviations})")
    with tempfile.TemporaryDirectory(prefix=f"prefdyn-check-{chapter.id}-") as tmp:
        path = args.run_json
        if path is None:
            try:
                path = run_chapter(chapter.id, overrides, out=Path(tmp) / "run", progress=not args.quiet).results
            except (ChapterFailed, InstallFailed) as exc:
                print(f"prefdyn: {exc}", file=sys.stderr)
                return 1
        produced = json.loads(Path(path).read_text(encoding="utf-8"))
    golden = json.loads(golden_path(chapter.id).read_text(encoding="utf-8"))
    mismatches = regression.check_data(chapter, produced, golden)
    if args.deviations:
        dev = regression.deviations(produced.get("results", {}), golden.get("results", {}))
        for key, d in sorted(dev.items(), key=lambda kd: -kd[1]["rel"])[:args.deviations]:
            print(f"  {key}: rel {d['rel']:.3g}, abs {d['abs']:.3g} (book {d['golden']:.4g}, run "
                  f"{d['produced']:.4g}; tolerance: {chapter.tolerances.for_key(key).describe()})")
    where = (f" (a GPU run: tolerances x{regression.GPU_LOOSENING:g})"
             if regression.on_gpu(produced.get("parameters", {})) else "")
    if mismatches:
        print(regression.report(mismatches))
        n = len(mismatches)
        print(f"{chapter.id}: {n} key number{'s differ' if n != 1 else ' differs'} from the book beyond its "
              f"tolerances{where}")
        return 1
    print(f"{chapter.id}: the key numbers reproduce the book within its tolerances{where}")
    return 0


_TOY_ONLY = ("members", "loop_members", "loss", "device", "loop_threads")
_PROBES_ONLY = ("pairs", "batch", "repeats", "optimizer", "model_path")
_BOTH = ("steps", "threads")


def _cmd_bench(args) -> int:
    """``prefdyn bench toy``: runs :func:`prefdyn.bench.bench` from the parsed arguments (``None`` takes
    its defaults; ``--out`` defaults to ``runs/bench/toy.json``), prints every number.
    ``prefdyn bench probes``: :func:`_cmd_bench_probes`; ``prefdyn bench all``: :func:`_cmd_bench_all`."""
    if args.what not in ("toy", "probes", "all"):
        raise ParameterError(f"unknown benchmark '{args.what}' (available: toy, probes, all)")
    other = {"toy": _PROBES_ONLY, "probes": _TOY_ONLY, "all": _TOY_ONLY + _PROBES_ONLY + _BOTH}[args.what]
    for name in other:
        if getattr(args, name, None) is not None:
            flag = "--" + name.replace("_", "-")
            raise ParameterError(f"{flag}: not an option of the {args.what} benchmark")
    if args.what == "probes":
        return _cmd_bench_probes(args)
    if args.what == "all":
        return _cmd_bench_all(args)
    from pathlib import Path

    from .bench import bench
    from .device import resolve_device
    from .losses import check_loss_params
    from .validate import check_int

    def get(name, default):
        v = getattr(args, name, None)
        return default if v is None else v

    out = get("out", "runs/bench/toy.json")
    members, steps = get("members", 256), get("steps", 200)
    loop_members, loss, device = get("loop_members", None), get("loss", "dpo"), get("device", "auto")
    threads, loop_threads = get("threads", 1), get("loop_threads", None)
    # Bad input is a one-line ParameterError (exit code 2), found before any work.
    try:
        check_int("--members", members, 1)
        check_int("--steps", steps, 1)
        if loop_members is not None:
            check_int("--loop-members", loop_members, 1, members)
        check_int("--threads", threads, 1)
        if loop_threads is not None:
            check_int("--loop-threads", loop_threads, 1)
        check_loss_params(loss)
        if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
            raise ValueError(f"--device: expected auto, cpu or cuda, got {device!r}")
        resolve_device(device)
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        raise ParameterError("--" + msg if msg.startswith("device:") else msg) from None
    if not str(out).strip() or Path(out).is_dir():
        raise ParameterError(f"--out: expected a JSON file, got {str(out)!r}" + (" (a folder)" if str(out).strip() else ""))
    res = bench(members=members, steps=steps, loop_members=loop_members, loss=loss, device=device,
                threads=threads, loop_threads=loop_threads, out=out)
    for k, v in res.items():
        if isinstance(v, list):
            v = "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
        print(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}")
    ops = res.get("batched_aten_ops_per_step")
    loop_ops = res.get("loop_aten_ops_per_member_step")
    print(f"summary: batched {res['batched_s']:.3g} s = {res['batched_us_per_member_step']:.3g} us per member-step"
          + (f", {ops:.0f} aten ops per step" if ops is not None else "")
          + f"; plain loop {res['loop_s']:.3g} s = {res['loop_us_per_member_step']:.3g} us per member-step"
          + (f", {loop_ops:.0f} aten ops per member-step" if loop_ops is not None else "")
          + f"; ratio {res['ratio']:.1f}x")
    print(f"wrote {out}")
    return 0


def _cmd_bench_probes(args) -> int:
    """``prefdyn bench probes``: runs :func:`prefdyn.probes.bench.bench_probes` from the parsed arguments
    (``--out`` defaults to ``runs/bench/probes.json``), prints every number and a summary."""
    from pathlib import Path

    from .probes.bench import PROBES_OPTIMIZERS, bench_probes
    from .validate import check_choice, check_int

    def get(name, default):
        v = getattr(args, name, None)
        return default if v is None else v

    out = get("out", "runs/bench/probes.json")
    pairs, steps, batch = get("pairs", 64), get("steps", 20), get("batch", 8)
    threads, repeats, optimizer = get("threads", 1), get("repeats", 3), get("optimizer", "adamw")
    model_path = get("model_path", None)
    try:
        check_int("--pairs", pairs, 1)
        check_int("--steps", steps, 1)
        check_int("--batch", batch, 1, pairs)
        check_int("--threads", threads, 1)
        check_int("--repeats", repeats, 1)
        check_choice("--optimizer", optimizer, tuple(PROBES_OPTIMIZERS))
        if model_path is not None:
            from .probes.train import _model_dir
            _model_dir(model_path)
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        if msg.startswith("model_path:"):
            msg = "--model-path" + msg[len("model_path"):]
        raise ParameterError(msg) from None
    if not str(out).strip() or Path(out).is_dir():
        raise ParameterError(f"--out: expected a JSON file, got {str(out)!r}" + (" (a folder)" if str(out).strip() else ""))
    try:
        import datasets  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise ParameterError(f"trl: the probes benchmark needs transformers, datasets and trl (the test extra "
                             f"'trl'), got {' '.join(str(exc).split())}") from None
    res = bench_probes(pairs=pairs, steps=steps, batch=batch, threads=threads, repeats=repeats, optimizer=optimizer,
                       model_path=model_path, out=out)
    for k, v in res.items():
        if isinstance(v, list):
            v = "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
        print(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}")
    print(f"summary: log-probs batched {res['logprob_batched_pairs_per_s']:.4g} pairs/s "
          f"({res['logprob_batched_tokens_per_s']:.4g} tokens/s) vs one at a time "
          f"{res['logprob_loop_pairs_per_s']:.4g} pairs/s ({res['logprob_loop_tokens_per_s']:.4g} tokens/s), "
          f"{res['logprob_ratio']:.2f}x; DPO step ours {res['ours_ms_per_step']:.3g} ms = "
          f"{res['ours_pairs_per_s']:.4g} pairs/s vs TRL {res['trl_ms_per_step']:.3g} ms = "
          f"{res['trl_pairs_per_s']:.4g} pairs/s, {res['train_ratio']:.2f}x (model work alone "
          f"{res['floor_ms_per_step']:.3g} ms); losses max |diff| {res['loss_max_abs_diff']:.2g}; "
          f"ThreeDCallback: one probe of {res['callback_pairs']} pairs {res['callback_probe_ms']:.3g} ms every "
          f"{res['callback_every']} updates adds {100 * res['callback_overhead']:.2g}% to TRL's run")
    print(f"wrote {out}")
    return 0


def _cmd_bench_all(args) -> int:
    """``prefdyn bench all`` (``make bench``): :func:`prefdyn.bench.bench_all` with its settings, the book's
    times from ``_build/book-times.json`` when ``prefdyn book`` wrote them; ``--out`` defaults to
    ``_build/bench.json``. Prints a short summary and the path."""
    from pathlib import Path

    from .bench import BOOK_TIMES, bench_all, summary_lines
    from .chapters.runner import repo_root

    out = args.out if args.out is not None else "_build/bench.json"
    if not str(out).strip() or Path(out).is_dir():
        raise ParameterError(f"--out: expected a JSON file, got {str(out)!r}"
                             + (" (a folder)" if str(out).strip() else ""))
    try:
        book_times = repo_root() / BOOK_TIMES
    except FileNotFoundError:                    # not run from a clone: no book to time
        book_times = None
    try:
        import datasets  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise ParameterError(f"trl: the probes benchmark needs transformers, datasets and trl (the test extra "
                             f"'trl'), got {' '.join(str(exc).split())}") from None
    record = bench_all(out, book_times=book_times)
    for line in summary_lines(record):
        print(line)
    print(f"wrote {out} in {record['bench_s']:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prefdyn", description="The executable book on the training dynamics of DPO.")
    parser.add_argument("--version", action="version", version=f"prefdyn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="chapters and their parameters")
    p.add_argument("chapter", nargs="?", help="list only this chapter")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="execute one chapter with parameters (into runs/ by default)")
    p.add_argument("chapter", help="chapter id (see `prefdyn list`)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a parameter (repeatable); lists as a,b,c; the VALUE may be negative (-p lr -1e-3)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", help="folder for the executed notebook and JSON (default runs/<run-name>/)")
    where.add_argument("--into-book", action="store_true", help="write book/<chapter>.ipynb and book/data/<chapter>.json")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("book", help="execute every chapter into book/ with its defaults and build the site")
    p.add_argument("--only", nargs="+", metavar="CHAPTER", help="execute only these chapters")
    p.add_argument("--no-execute", action="store_true", help="only build the site from the committed chapters")
    p.add_argument("--no-build", action="store_true", help="only execute the chapters")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_book)

    p = sub.add_parser("check", help="compare a run's key numbers with the book's, under the chapter's tolerances")
    p.add_argument("chapter", help="chapter id (see `prefdyn list`)")
    p.add_argument("run_json", nargs="?", default=None,
                   help="the run's JSON (default: execute the chapter now with the book's parameters)")
    p.add_argument("--device", default=None, help="execute on this device (cpu, cuda, auto); a GPU run is "
                   "compared with tolerances loosened by prefdyn.regression.GPU_LOOSENING")
    p.add_argument("--deviations", type=int, default=0, metavar="N",
                   help="also print the N largest relative deviations from the book (to calibrate tolerances)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("bench", help="benchmarks (toy: batched vs looped toy trainer; probes: LLM log-probs "
                       "and DPO step vs a plain loop and TRL's DPOTrainer)")
    p.add_argument("what", help="which benchmark: toy, probes, or all (both and the book's times in one "
                   "record, make bench)")
    p.add_argument("--members", type=int, default=None, help="toy: ensemble members (default 256)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the benchmark's own)")
    p.add_argument("--loop-members", type=int, default=None,
                   help="toy: time the plain loop on this many members and scale linearly (default: all)")
    p.add_argument("--loss", default=None, help="toy: loss of prefdyn.losses (default dpo)")
    p.add_argument("--device", default=None, help="toy: auto, cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of the batched trainer (default 1)")
    p.add_argument("--loop-threads", type=int, default=None,
                   help="toy: torch intra-op threads of the plain loop (default: --threads)")
    p.add_argument("--pairs", type=int, default=None, help="probes: preference pairs (default 64)")
    p.add_argument("--batch", type=int, default=None, help="probes: pairs per update and per forward (default 8)")
    p.add_argument("--repeats", type=int, default=None, help="probes: timed runs of each side, median (default 3)")
    p.add_argument("--optimizer", default=None, help="probes: adamw or sgd, the same on both sides (default adamw)")
    p.add_argument("--model-path", default=None, help="probes: a local Hugging Face model directory (default: "
                   "a 4-layer GPT-2 built in memory)")
    p.add_argument("--out", default=None, help="JSON file for the result (default runs/bench/<what>.json; "
                   "all: _build/bench.json)")
    p.set_defaults(func=_cmd_bench)
    return parser


_PARAM_FLAGS = ("-p", "--param")


def extract_params(argv: list[str]) -> tuple[list[str], list[list[str]]]:
    """Take every ``-p/--param NAME VALUE`` out of the ``run`` command's arguments, values verbatim.

    argparse (3.11) reads a value such as ``-1e-3`` as an option and fails with "expected 2 arguments";
    taken out beforehand, ``-p lr -1e-3`` reaches the parameter validation like any other value. Returns
    the remaining arguments and the ``[NAME, VALUE]`` pairs; a ``-p`` without two values is a one-line
    :class:`ParameterError`. Arguments after ``--``, and commands other than ``run``, are left alone.
    """
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if command is None or argv[command] != "run":
        return list(argv), []
    rest, pairs = list(argv[:command + 1]), []
    i = command + 1
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        if a in _PARAM_FLAGS:
            if len(argv) - i < 3:
                raise ParameterError(f"{a} needs a NAME and a VALUE (e.g. {a} beta 0.5)")
            pairs.append([argv[i + 1], argv[i + 2]])
            i += 3
            continue
        rest.append(a)
        i += 1
    return rest, pairs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = None
    try:
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:                                    # not the main thread (an embedding): leave it
            previous = None
        try:
            argv, params = extract_params(argv)
            args = build_parser().parse_args(argv)
            if params:
                args.param = (args.param or []) + params
            code = args.func(args)
            sys.stdout.flush()                                # a closed pipe shows up here, not at exit
            return code
        except ParameterError as exc:
            print(f"prefdyn: error: {exc}", file=sys.stderr)
            return 2
        except Terminated:
            print("prefdyn: terminated", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("prefdyn: interrupted", file=sys.stderr)
            return 130
    except BrokenPipeError:
        # The reader went away (``prefdyn list | head -1``): no traceback. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
