"""The ``prefdyn`` command: list chapters and their parameters, run a chapter, build the book.

    prefdyn list                                   chapters and parameters (type, default, range, meaning)
    prefdyn run CHAPTER [-p NAME VALUE ...] [--out DIR | --into-book]
    prefdyn book [--only CHAPTER ...] [--no-execute] [--no-build]
    prefdyn bench toy [...]                        batched vs looped toy trainer (see prefdyn.toy)

Exit codes: 0 success; 1 a chapter or the site build failed; 2 bad input (unknown chapter or parameter,
value out of range), reported in one line before anything runs or is written.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time

from .chapters.params import ParameterError, parse_overrides


def _cmd_list(args) -> int:
    from .chapters.catalog import CHAPTERS

    for chapter in CHAPTERS.values():
        print(f"{chapter.id}  -  {chapter.title}  [part {chapter.part}]")
        if not chapter.params:
            print("    (no parameters)")
        for p in chapter.params:
            print(f"    {p.name} ({p.type}, default {p.default_text()}): {p.allowed()}")
            print(textwrap.indent(textwrap.fill(p.help, 90), "        "))
        print()
    return 0


def _cmd_run(args) -> int:
    from .chapters.catalog import get_chapter
    from .chapters.runner import ChapterFailed, run_chapter

    chapter = get_chapter(args.chapter)
    overrides = chapter.validate(parse_overrides(args.param or []))
    chapter.resolve(overrides)                                 # constraints between parameters, before any work
    t0 = time.perf_counter()
    try:
        res = run_chapter(chapter.id, overrides, out=args.out, into_book=args.into_book, progress=not args.quiet)
    except ChapterFailed as exc:
        print(f"prefdyn: {exc}", file=sys.stderr)
        return 1
    print(f"{chapter.id}: executed in {time.perf_counter() - t0:.1f} s")
    print(f"  notebook: {res.notebook}")
    if res.results:
        print(f"  results:  {res.results}")
    return 0


def _cmd_book(args) -> int:
    from .chapters.catalog import get_chapter
    from .chapters.runner import ChapterFailed, all_chapters, build_site, run_chapter

    ids = [get_chapter(c).id for c in args.only] if args.only else all_chapters()
    if not args.no_execute:
        for cid in ids:
            t0 = time.perf_counter()
            try:
                run_chapter(cid, into_book=True, progress=not args.quiet)
            except ChapterFailed as exc:
                print(f"prefdyn: {exc}", file=sys.stderr)
                return 1
            print(f"{cid}: executed into book/ in {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.no_build:
        t0 = time.perf_counter()
        code = build_site()
        if code != 0:
            print("prefdyn: the site build failed (see the warnings above)", file=sys.stderr)
            return 1
        print(f"site built in {time.perf_counter() - t0:.1f} s: open _build/html/index.html")
    return 0


def _cmd_bench(args) -> int:
    if args.what != "toy":
        raise ParameterError(f"unknown benchmark '{args.what}' (available: toy)")
    from . import toy

    return toy.bench_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefdyn", description="The executable book on the training dynamics of DPO.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="chapters and their parameters")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="execute one chapter with parameters (into runs/ by default)")
    p.add_argument("chapter", help="chapter id (see `prefdyn list`)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a parameter (repeatable); lists as a,b,c")
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

    p = sub.add_parser("bench", help="benchmarks (toy: batched vs looped toy trainer)")
    p.add_argument("what", help="which benchmark: toy")
    p.add_argument("--members", type=int, default=256, help="ensemble members (default 256)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the benchmark's own)")
    p.add_argument("--loop-members", type=int, default=None,
                   help="time the plain loop on this many members and scale linearly (default: all)")
    p.add_argument("--loss", default="dpo", help="loss of prefdyn.losses (default dpo)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the batched trainer (default 1)")
    p.add_argument("--loop-threads", type=int, default=None,
                   help="torch intra-op threads of the plain loop (default: --threads)")
    p.add_argument("--out", default=None, help="JSON file for the result (default runs/bench/toy.json)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ParameterError as exc:
        print(f"prefdyn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("prefdyn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
