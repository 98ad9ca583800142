"""Execute chapters: jupytext source -> papermill (with parameters) -> executed notebook + JSON results.

``run_chapter`` is what ``prefdyn run`` and ``prefdyn book`` call. The order of work guarantees the
project's promises:

1. the chapter id and every parameter are validated *before* anything runs or is written
   (:class:`~prefdyn.chapters.params.ParameterError`, one line);
2. the chapter executes in a private temporary folder (notebook and JSON results), with progress bars off
   inside the kernel (``PREFDYN_PROGRESS=0``) and the kernel's working directory set to ``book/`` as nbval
   does;
3. only on success are the files moved to their destination (``runs/<run-name>/`` or, with
   ``into_book``, ``book/<id>.ipynb`` and ``book/data/<id>.json``), notebook and JSON together: a new
   folder is staged whole and renamed into place; into an existing folder both files are staged next to
   their destinations, then renamed, and if the second rename fails the first is rolled back from a
   backup (:func:`install_files`); a chapter failure leaves nothing behind and raises
   :class:`ChapterFailed` naming the failing cell.

The destination is checked before anything runs (:func:`check_destination`: not an existing file, a
writable folder). The kernel talks to papermill over IPC sockets (``transport="ipc"``), whose files live
in the run's temporary folder: no TCP port is taken, so concurrent runs cannot clash, and nothing is left
behind. Run folders are named by :func:`run_name`, injectively.

Executed notebooks are made reproducible: papermill's timing/path metadata and nbclient's execution
timestamps are removed, so a re-execution that prints the same numbers gives the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..results import repo_root  # noqa: F401  (re-exported: the runner's callers find the root here)
from .catalog import CHAPTERS, get_chapter
from .params import Chapter, ParameterError, format_value

KERNEL = "python3"


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; the message names the cell and the error."""


@dataclass
class RunResult:
    chapter: str
    notebook: Path
    results: Path | None
    parameters: dict[str, Any]


#: Longest readable part of a run folder's name (the hash that follows keeps it unique).
RUN_NAME_READABLE = 80


def run_name(chapter: Chapter, overrides: Mapping[str, Any]) -> str:
    """Folder name of a run: the chapter id alone when every parameter has its default, else the chapter id,
    each non-default parameter as ``name-value`` (sanitised for file names, truncated to
    :data:`RUN_NAME_READABLE` characters) and a short hash of the canonical JSON of the non-default,
    coerced parameters, so that different values never share a folder (``"a b"`` and ``"a/b"`` both read
    ``a_b`` but hash differently) and equal values always do (``"0.5"`` and ``0.5``)."""
    values = chapter.validate(dict(overrides))
    defaults = chapter.defaults()
    changed = {name: values[name] for name in sorted(values) if values[name] != defaults[name]}
    if not changed:
        return chapter.id
    readable = "__".join(f"{name}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', format_value(v))}" for name, v in changed.items())
    if len(readable) > RUN_NAME_READABLE:
        readable = readable[:RUN_NAME_READABLE].rstrip("_.-+") + "~"
    canonical = json.dumps(changed, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    return f"{chapter.id}__{readable}__{digest}"


def source_notebook(chapter: Chapter, root: Path):
    """The chapter's jupytext source read as a notebook (papermill cannot read ``.md`` itself), with the
    generated "Rerun this chapter" box (:mod:`prefdyn.chapters.rerun`) after its first markdown cell."""
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
    from .rerun import insert_box

    return insert_box(nb, chapter)           # the "Rerun this chapter" box, after the ids: they do not move


_NB_META_DROP = ("start_time", "end_time", "duration", "exception", "input_path", "output_path")


def clean_executed(nb) -> None:
    """Remove the run-dependent metadata (timings, temporary paths) from an executed notebook, and store its
    figures as palette PNGs (:func:`prefdyn.plotting.palette_png`), in place."""
    small_figures(nb)
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


def small_figures(nb) -> int:
    """Replace every PNG output of ``nb`` by its palette PNG (:func:`prefdyn.plotting.palette_png`), in
    place; returns how many changed."""
    import base64

    from ..plotting import palette_png

    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" not in data:
                continue
            raw = base64.b64decode(data["image/png"])
            small = palette_png(raw)
            if small != raw:
                data["image/png"] = base64.b64encode(small).decode("ascii")
                n += 1
    return n


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


# ------------------------------------------------------------------------------------------ destination
def check_destination(folder: str | os.PathLike, what: str = "--out") -> Path:
    """Check, before anything runs, that the run's files can be written into ``folder``; return it.

    A one-line :class:`ParameterError` (exit code 2 in the CLI) for an empty path, a path that is an
    existing file (or lies under one), or a folder that cannot be written: the nearest existing folder must
    be writable (``os.access``) *and* accept a probe file, which is removed at once (so a read-only file
    system is caught even for root, whom permission bits do not stop).
    """
    text = os.fspath(folder)
    if not str(text).strip():
        raise ParameterError(f"{what}: empty path (give a folder for the notebook and its JSON)")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ParameterError(f"{what}: '{text}' is an existing file, not a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ParameterError(f"{what}: '{text}' lies under '{existing}', which is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ParameterError(f"{what}: cannot write into '{existing}' (permission denied)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".prefdyn-probe-", suffix=".partial", dir=existing)
    except OSError as exc:
        raise ParameterError(f"{what}: cannot write into '{existing}' ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    return path


# ----------------------------------------------------------------------------------------------- install
# The renames of install_files / install_folder (tests replace them to make a move fail).
_replace = os.replace
_rename = os.rename


class InstallFailed(OSError):
    """The executed files could not be moved into place; the destination is as it was before."""


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def install_files(pairs: list[tuple[Path, Path]]) -> None:
    """Move each ``(src, dst)`` file into place, all or none.

    Every ``src`` is first copied next to its ``dst`` as ``.<name>.partial`` (same file system, so the
    renames below are atomic); each existing ``dst`` gets a backup (a hard link, else a copy); then the
    staged files are renamed onto their destinations one by one. If a rename fails, the destinations
    already replaced are restored from their backups (or removed if they did not exist), and
    :class:`InstallFailed` is raised: nothing is left half-updated, and no staging or backup file remains.
    """
    staged: list[tuple[Path, Path, Path | None]] = []        # (partial, dst, backup)
    done: list[tuple[Path, Path | None]] = []                # (dst, backup) already replaced
    try:
        try:
            for src, dst in pairs:
                dst.parent.mkdir(parents=True, exist_ok=True)
                partial = dst.with_name(f".{dst.name}.partial")
                shutil.copyfile(src, partial)
                backup = None
                if dst.exists():
                    backup = dst.with_name(f".{dst.name}.backup.partial")
                    _remove(backup)
                    try:
                        os.link(dst, backup)
                    except OSError:
                        shutil.copy2(dst, backup)
                staged.append((partial, dst, backup))
            for partial, dst, backup in staged:
                _replace(partial, dst)
                done.append((dst, backup))
        except BaseException as exc:                        # an OSError, or an interrupt (SIGINT, SIGTERM)
            for dst, backup in reversed(done):             # roll back what was already replaced
                if backup is not None:
                    os.replace(backup, dst)
                else:
                    _remove(dst)
            if isinstance(exc, OSError):
                raise InstallFailed(f"could not move the results into place, nothing was changed: {exc}") from exc
            raise
    finally:
        for partial, _dst, backup in staged:
            _remove(partial)
            if backup is not None:
                _remove(backup)


def install_folder(files: list[Path], folder: Path) -> bool:
    """Put ``files`` into the new folder ``folder`` at once: stage a sibling ``.<name>.partial`` folder
    holding them, then rename it to ``folder`` (atomic). On failure nothing is left: neither the staging
    folder nor any parent folder this call created. Returns False, having changed nothing, if ``folder``
    exists (e.g. a concurrent run of the same parameters made it meanwhile): use :func:`install_files`.
    """
    created: list[Path] = []
    parent = folder.absolute().parent
    for p in (parent, *parent.parents):
        if p.exists():
            break
        created.append(p)
    stage = folder.with_name(f".{folder.name}.partial")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir()
        for f in files:
            shutil.copyfile(f, stage / f.name)
        if os.path.lexists(folder):
            shutil.rmtree(stage)
            return False
        _rename(stage, folder)
        return True
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError) and folder.is_dir() and os.listdir(folder):
            return False                                   # made meanwhile by someone else: not ours to touch
        for p in created:                                  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        if isinstance(exc, OSError):
            raise InstallFailed(f"could not move the results into place, nothing was changed: {exc}") from exc
        raise


# ------------------------------------------------------------------------------------------------ kernel
#: Longest path of an IPC socket (``sun_path`` holds 108 bytes on Linux, 104 on macOS), with margin.
_IPC_PATH_MAX = 100


def ipc_kernel_manager(folder: Path, sockets: Path | None = None):
    """A jupyter_client kernel manager class whose kernels talk over IPC sockets.

    nbclient creates the manager (papermill passes ``kernel_manager_class`` through to it); its connection
    file is ``folder/kernel.json`` and its sockets ``sockets/kernel-ipc-<n>`` (``sockets`` defaults to
    ``folder``; give a shorter one when ``folder``'s path is too long for a socket): no TCP port is taken
    (two concurrent runs cannot clash, and ipykernel has no reason to warn about unencrypted TCP), and the
    files go away with the folders.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    connection_file = str(Path(folder).absolute() / "kernel.json")
    ip = str(Path(sockets if sockets is not None else folder).absolute() / "kernel-ipc")

    class IPCKernelManager(AsyncKernelManager):
        instances: list = []                               # every manager of this run (see _stop_kernels)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            IPCKernelManager.instances.append(self)

        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("connection_file")
        def _default_connection_file(self):
            return connection_file

        def _ip_default(self):                             # jupyter_client's own hook for the default ip
            return ip if self.transport == "ipc" else super()._ip_default()

        async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False):
            # Shut down while a Ctrl-C / SIGTERM (a KeyboardInterrupt) unwinds the run: kill the busy
            # kernel at once instead of asking it to stop mid-cell (which it answers with a traceback
            # on the terminal, after a wait).
            # The interrupted execution's tasks are still pending in this loop: cancel them, or they
            # resume, find the kernel dead and report it on the terminal.
            if isinstance(sys.exc_info()[1], KeyboardInterrupt):
                now = True
                current = asyncio.current_task()
                for task in asyncio.all_tasks():
                    if task is not current:
                        task.cancel()
            return await super()._async_shutdown_kernel(now=now, restart=restart)

        shutdown_kernel = _async_shutdown_kernel

    IPCKernelManager.instances = []
    return IPCKernelManager


def _stop_kernels(manager_class) -> None:
    """Kill every kernel of ``manager_class`` still running (no-op after a normal shutdown).

    nbclient shuts its kernel down only once it is ready: a Ctrl-C / SIGTERM while the kernel starts (or
    waits to be ready) would leave it running, and writing into the temporary folder being removed.
    """
    for km in getattr(manager_class, "instances", ()):
        process = getattr(getattr(km, "provisioner", None), "process", None)
        if process is not None and process.poll() is None:
            with contextlib.suppress(Exception):
                process.kill()
                process.wait(timeout=10)


def _quiet_abandoned_tasks() -> None:
    """After an interrupt, nbclient's half-run tasks fail when their kernel dies (``DeadKernelError``) and
    asyncio would print them at exit ("Task exception was never retrieved"): drop those reports."""
    try:
        from jupyter_core.utils import ensure_event_loop
        from nbclient.exceptions import DeadKernelError

        loop = ensure_event_loop()
    except Exception:  # pragma: no cover - nothing to quiet
        return
    previous = loop.get_exception_handler()

    def handler(loop, context):
        if isinstance(context.get("exception"), (DeadKernelError, KeyboardInterrupt, asyncio.CancelledError)):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


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

    if into_book:
        folder = root_path / "book"
        nb_dst = folder / f"{chapter.id}.ipynb"
        json_dst = folder / "data" / f"{chapter.id}.json"
        check_destination(folder, "book")
        check_destination(json_dst.parent, "book/data")
    else:
        folder = check_destination(out) if out is not None else root_path / "runs" / run_name(chapter, params)
        if out is None:
            check_destination(folder, "runs")
        nb_dst = folder / f"{chapter.id}.ipynb"
        json_dst = folder / f"{chapter.id}.json"
    nb = source_notebook(chapter, root_path)

    import nbformat
    import papermill as pm

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"prefdyn-{chapter.id}-"))).absolute()
        sockets = tmp
        if len(str(tmp / "kernel-ipc-00")) > _IPC_PATH_MAX:      # a long TMPDIR: sockets in a short folder
            base = tempfile.gettempdir()
            base = base if len(base) + len("/prefdyn-ipc-12345678/kernel-ipc-00") <= _IPC_PATH_MAX else "/tmp"
            sockets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prefdyn-ipc-", dir=base)))
        src = tmp / "source.ipynb"
        executed = tmp / f"{chapter.id}.ipynb"
        nbformat.write(nb, src)
        managers = ipc_kernel_manager(tmp, sockets)
        with _environ(PREFDYN_RESULTS_DIR=str(tmp), PREFDYN_PROGRESS="0"):
            try:
                pm.execute_notebook(
                    str(src), str(executed), parameters=params, kernel_name=KERNEL,
                    progress_bar=progress, cwd=str(root_path / "book"), log_output=False,
                    request_save_on_cell_execute=False, kernel_manager_class=managers,
                )
            except pm.PapermillExecutionError as exc:
                raise ChapterFailed(_failure_message(chapter, exc)) from None
            except KeyboardInterrupt:                      # Ctrl-C, or SIGTERM through prefdyn's handler
                _quiet_abandoned_tasks()
                raise
            finally:
                _stop_kernels(managers)                    # before the temporary folder goes
        out_nb = nbformat.read(executed, as_version=4)
        clean_executed(out_nb)
        nbformat.write(out_nb, executed)
        produced_json = tmp / f"{chapter.id}.json"
        if not produced_json.is_file():
            json_dst = None
        files = [(executed, nb_dst)] + ([(produced_json, json_dst)] if json_dst else [])
        if into_book or not install_folder([f for f, _ in files], folder):
            install_files(files)
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
