"""Execute chapters: jupytext source -> papermill (with parameters) -> executed notebook + JSON results.

``run_chapter`` is what ``prefdyn run`` and ``prefdyn book`` call. The order of work guarantees the
project's promises:

1. the chapter id and every parameter are validated *before* anything runs or is written
   (:class:`~prefdyn.chapters.params.ParameterError`, one line);
2. the chapter executes in a private temporary folder (notebook and JSON results), with progress bars off
   inside the kernel (``PREFDYN_PROGRESS=0``) and the kernel's working directory set to ``book/`` as nbval
   does;
3. only on success are the files moved to their destination (``runs/<run-name>/`` or, with
   ``into_book``, ``book/<id>.ipynb`` and ``book/data/<id>.json``), each by an atomic rename; a failure
   leaves nothing behind and raises :class:`ChapterFailed` naming the failing cell.

Executed notebooks are made reproducible: papermill's timing/path metadata and nbclient's execution
timestamps are removed, so a re-execution that prints the same numbers gives the same file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .catalog import CHAPTERS, get_chapter
from .params import Chapter, format_value

KERNEL = "python3"


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; the message names the cell and the error."""


@dataclass
class RunResult:
    chapter: str
    notebook: Path
    results: Path | None
    parameters: dict[str, Any]


def repo_root(start: Path | None = None) -> Path:
    """The book's root folder: the nearest parent of ``start`` (default: cwd) holding ``_toc.yml`` and
    ``notebooks/``, else the checkout this package was installed from (editable install)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "notebooks").is_dir():
            return folder
    pkg_root = Path(__file__).resolve().parents[3]
    if (pkg_root / "_toc.yml").is_file():
        return pkg_root
    raise FileNotFoundError("cannot find the book's root (a folder with _toc.yml and notebooks/); run from the repository")


def run_name(chapter: Chapter, overrides: Mapping[str, Any]) -> str:
    """Folder name of a run: the chapter id, then each non-default parameter as ``name-value``."""
    parts = [chapter.id]
    defaults = chapter.defaults()
    for name in sorted(overrides):
        if overrides[name] != defaults[name]:
            value = re.sub(r"[^A-Za-z0-9.+-]+", "_", format_value(overrides[name]))
            parts.append(f"{name}-{value}")
    return "__".join(parts)


def source_notebook(chapter: Chapter, root: Path):
    """The chapter's jupytext source read as a notebook (papermill cannot read ``.md`` itself)."""
    import jupytext

    path = root / chapter.source
    if not path.is_file():
        raise FileNotFoundError(f"{chapter.id}: source {path} not found")
    nb = jupytext.read(path)
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": KERNEL})
    for i, cell in enumerate(nb.cells):      # stable ids (jupytext draws random ones): clean diffs of book/
        cell.id = f"cell-{i:03d}"
    n_param = sum("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells)
    if n_param != 1:
        raise ValueError(f"{chapter.id}: the source must have exactly one cell tagged 'parameters' (found {n_param})")
    return nb


_NB_META_DROP = ("start_time", "end_time", "duration", "exception", "input_path", "output_path")


def clean_executed(nb) -> None:
    """Remove the run-dependent metadata (timings, temporary paths) from an executed notebook, in place."""
    pm = nb.metadata.get("papermill", {})
    for key in _NB_META_DROP:
        pm.pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cpm = cell.metadata.get("papermill")
        if cpm is not None:
            for key in ("start_time", "end_time", "duration", "exception"):
                cpm.pop(key, None)
            if not cpm:
                cell.metadata.pop("papermill")
        if cell.cell_type == "code":
            cell.metadata.pop("scrolled", None)


@contextlib.contextmanager
def _environ(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failure_message(chapter: Chapter, exc: Exception) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    count = getattr(exc, "exec_count", None)
    source = (getattr(exc, "source", "") or "").strip().splitlines()
    first = next((line for line in source if line.strip() and not line.startswith("#")), "")
    where = f"cell In [{count}]" if count is not None else "a cell"
    snippet = f" (starts: {first[:80]})" if first else ""
    return f"chapter '{chapter.id}' failed in {where}{snippet}: {ename}: {evalue}"


def _move_into(src: Path, dst: Path) -> None:
    """Copy ``src`` next to ``dst`` under a temporary name, then rename it onto ``dst`` (atomic)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def run_chapter(chapter_id: str, overrides: Mapping[str, Any] | None = None, out: str | os.PathLike | None = None,
                into_book: bool = False, progress: bool = True, root: str | os.PathLike | None = None) -> RunResult:
    """Execute one chapter with ``overrides`` (validated first) and write notebook + JSON results.

    Default destination: ``runs/<run-name>/`` under the book root; ``out`` names another folder;
    ``into_book`` writes ``book/<id>.ipynb`` and ``book/data/<id>.json`` (the golden outputs).
    """
    chapter = get_chapter(chapter_id)
    params = chapter.validate(dict(overrides or {}))          # ParameterError before any work
    chapter.resolve(params)                                    # ... including the constraints between them
    if into_book and out is not None:
        raise ValueError("give either --out or --into-book, not both")
    root_path = Path(root).resolve() if root else repo_root()
    nb = source_notebook(chapter, root_path)

    if into_book:
        nb_dst = root_path / "book" / f"{chapter.id}.ipynb"
        json_dst = root_path / "book" / "data" / f"{chapter.id}.json"
    else:
        folder = Path(out) if out is not None else root_path / "runs" / run_name(chapter, params)
        nb_dst = folder / f"{chapter.id}.ipynb"
        json_dst = folder / f"{chapter.id}.json"

    import nbformat
    import papermill as pm

    with tempfile.TemporaryDirectory(prefix=f"prefdyn-{chapter.id}-") as tmpdir:
        tmp = Path(tmpdir)
        src = tmp / "source.ipynb"
        executed = tmp / f"{chapter.id}.ipynb"
        nbformat.write(nb, src)
        with _environ(PREFDYN_RESULTS_DIR=str(tmp), PREFDYN_PROGRESS="0"):
            try:
                pm.execute_notebook(
                    str(src), str(executed), parameters=params, kernel_name=KERNEL,
                    progress_bar=progress, cwd=str(root_path / "book"), log_output=False,
                    request_save_on_cell_execute=False,
                )
            except pm.PapermillExecutionError as exc:
                raise ChapterFailed(_failure_message(chapter, exc)) from None
        out_nb = nbformat.read(executed, as_version=4)
        clean_executed(out_nb)
        nbformat.write(out_nb, executed)
        produced_json = tmp / f"{chapter.id}.json"
        _move_into(executed, nb_dst)
        if produced_json.is_file():
            _move_into(produced_json, json_dst)
        else:
            json_dst = None
    return RunResult(chapter.id, nb_dst, json_dst, chapter.resolve(params))


def build_site(root: str | os.PathLike | None = None, strict: bool = True) -> int:
    """Build the static site into ``_build/html`` with Jupyter Book 1.x (no execution).

    ``strict``: warnings are errors, nitpicky references, keep going to report them all (``-W -n
    --keep-going``). Returns the build's exit code.
    """
    import subprocess
    import sys

    root_path = Path(root).resolve() if root else repo_root()
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root_path), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    return subprocess.call(cmd, cwd=root_path)


def all_chapters() -> list[str]:
    """Chapter ids in book order."""
    return list(CHAPTERS)
