"""The ``prefdyn`` command and papermill as a user expects them (issue [5/11], item 5).

Injected parameters are coerced and used; ``--out`` is checked before anything runs; bad ``bench`` input
and argparse errors are one line; run folders never collide; notebook and JSON are moved into place
together; SIGTERM cleans up like SIGINT; the kernel talks over IPC; ``list CHAPTER``, constraints,
``--version``, no BrokenPipe traceback, ``-p lr -1e-3``; git ignores what runs write; pytest removes its
temporary folders.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prefdyn
from prefdyn import cli
from prefdyn.chapters import CHAPTERS, Chapter, Param, ParameterError, catalog, get_chapter, start
from prefdyn.chapters import runner
from prefdyn.chapters.runner import (InstallFailed, check_destination, install_files, install_folder,
                                     ipc_kernel_manager, run_chapter, run_name)

from throwaway_book import make_book

ROOT = Path(__file__).resolve().parents[1]
PREFDYN = [sys.executable, "-m", "prefdyn.cli"]


def _env(**extra) -> dict[str, str]:
    return dict(os.environ, PREFDYN_PROGRESS="0", **extra)


def _main(capsys, *args) -> tuple[int, str, str]:
    """``prefdyn ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:                       # argparse's exits (--version, errors)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("prefdyn: error: "), err
    return lines[0]


@pytest.fixture
def no_execution(monkeypatch):
    """Fail the test if a chapter or the bench starts running."""
    import papermill

    from prefdyn import bench

    def boom(*a, **k):
        raise AssertionError("executed although the input was bad")

    monkeypatch.setattr(runner, "run_chapter", boom)
    monkeypatch.setattr(papermill, "execute_notebook", boom)
    monkeypatch.setattr(bench, "bench", boom)


# ------------------------------------------------------------------------------ injected parameters
def _toy3d_namespace(**values):
    ns = get_chapter("toy-3d").defaults()
    ns.update(values)
    return ns


def test_start_writes_the_coerced_parameters_back_into_the_namespace():
    ns = _toy3d_namespace(n_seeds=4.0, steps="20", lr="0.01", beta=1)
    ch = start("toy-3d", ns, style=False)
    assert ns["n_seeds"] == 4 and type(ns["n_seeds"]) is int           # papermill -p n_seeds 4.0
    assert ns["steps"] == 20 and type(ns["steps"]) is int              # papermill -r steps 20
    assert ns["lr"] == 0.01 and ns["beta"] == 1.0 and type(ns["beta"]) is float
    assert {k: ns[k] for k in ch.params} == ch.params

    ns = get_chapter("dpo-margin").defaults() | {"betas": "0.1,0.2", "beta": "0.5"}
    ch = start("dpo-margin", ns, style=False)
    assert ns["betas"] == [0.1, 0.2] and ns["beta"] == 0.5
    assert ns["betas"] is not ch.params["betas"]                       # no shared mutable list


def test_start_still_refuses_unknown_injected_names_and_bad_values():
    ns = get_chapter("dpo-margin").defaults() | {"In": ["", "# Parameters\nbeta = 0.5\nnosuch = 1\n"], "nosuch": 1}
    with pytest.raises(ParameterError, match="unknown parameter 'nosuch'"):
        start("dpo-margin", ns, style=False)
    ns = _toy3d_namespace(n_seeds=4.5)
    with pytest.raises(ParameterError, match="'n_seeds' must be an integer"):
        start("toy-3d", ns, style=False)
    assert ns["n_seeds"] == 4.5                                        # nothing written back on failure


def test_plain_papermill_cli_injected_strings_are_used_coerced(tmp_path):
    """``papermill ... -p betas 0.1,0.2`` injects a string, ``-r beta 0.5`` a raw string: both worked only
    until the chapter used them."""
    results = tmp_path / "results"
    papermill = Path(sys.executable).with_name("papermill")
    cmd = [str(papermill)] if papermill.exists() else [sys.executable, "-m", "papermill"]
    proc = subprocess.run([*cmd, str(ROOT / "book" / "dpo-margin.ipynb"), str(tmp_path / "out.ipynb"),
                           "-p", "betas", "0.1,0.2", "-r", "beta", "0.5", "--no-progress-bar", "--cwd", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=_env(PREFDYN_RESULTS_DIR=str(results)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((results / "dpo-margin.json").read_text())
    assert data["parameters"]["beta"] == 0.5 and data["parameters"]["betas"] == [0.1, 0.2]
    assert data["results"]["grad_at_zero_margin"] == -0.25                # -beta/2 computed with the float
    assert sorted(data["results"]["margin_where_grad_is_1pct"]) == ["beta_0.1", "beta_0.2"]


# ------------------------------------------------------------------------------------ --out checks
def test_out_that_is_a_file_empty_or_under_a_file_is_refused_before_anything_runs(tmp_path, capsys, no_execution):
    f = tmp_path / "file.txt"
    f.write_text("keep")
    for out, needle in ((str(f), "is an existing file, not a folder"),
                        ("", "empty path"),
                        ("   ", "empty path"),
                        (str(f / "sub"), "which is a file, not a folder")):
        code, _, err = _main(capsys, "run", "dpo-margin", "--out", out)
        assert code == 2, err
        assert needle in _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"] and f.read_text() == "keep"


def test_out_in_an_unwritable_folder_is_refused(tmp_path, capsys, no_execution):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() == 0:
            pytest.skip("running as root: permission bits do not stop root's writes "
                        "(test_out_on_a_file_system_that_refuses_files covers the probe file)")
        code, _, err = _main(capsys, "run", "dpo-margin", "--out", str(locked / "run"))
        assert code == 2 and "cannot write into" in _one_line(err)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_on_a_file_system_that_refuses_files(capsys, no_execution):
    """/proc takes no new files, even from root: the probe file catches what os.access does not."""
    code, _, err = _main(capsys, "run", "dpo-margin", "--out", "/proc/prefdyn-run")
    assert code == 2 and "cannot write into '/proc'" in _one_line(err)


def test_check_destination_also_guards_the_library_call(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(ParameterError, match="existing file"):
        run_chapter("dpo-margin", out=f, progress=False)
    assert check_destination(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()                             # checking writes nothing
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


# ---------------------------------------------------------------------------------- bench, argparse
@pytest.mark.parametrize("args, needle", [
    (["--members", "0"], "--members: expected an integer >= 1, got 0"),
    (["--members", "abc"], "argument --members: invalid int value: 'abc'"),
    (["--steps", "0"], "--steps: expected an integer >= 1"),
    (["--members", "8", "--loop-members", "9"], "--loop-members: expected an integer in [1, 8]"),
    (["--device", "nosuch"], "--device: expected auto, cpu or cuda, got 'nosuch'"),
    (["--loss", "nosuch"], "unknown loss 'nosuch'"),
    (["--threads", "0"], "--threads: expected an integer >= 1, got 0"),
    (["--loop-threads", "-1"], "--loop-threads: expected an integer >= 1"),
    (["--out", ""], "--out: expected a JSON file"),
])
def test_bench_bad_input_is_one_line_exit_2(capsys, no_execution, args, needle):
    code, out, err = _main(capsys, "bench", "toy", *args)
    assert code == 2 and needle in _one_line(err) and out == ""


def test_bench_unknown_benchmark_and_out_folder(tmp_path, capsys, no_execution):
    code, _, err = _main(capsys, "bench", "nosuch")
    assert code == 2 and "unknown benchmark 'nosuch' (available: toy, probes, all)" in _one_line(err)
    code, _, err = _main(capsys, "bench", "toy", "--out", str(tmp_path))
    assert code == 2 and "--out: expected a JSON file" in _one_line(err)


@pytest.mark.parametrize("args, needle", [
    ([], "the following arguments are required: command"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["run"], "the following arguments are required: chapter"),
    (["run", "dpo-margin", "--nosuch"], "unrecognized arguments: --nosuch"),
    (["run", "dpo-margin", "--out", "a", "--into-book"], "not allowed with argument"),
    (["book", "--only"], "expected at least one argument"),
])
def test_argparse_errors_are_one_line_exit_2(capsys, no_execution, args, needle):
    code, out, err = _main(capsys, *args)
    assert code == 2 and needle in _one_line(err) and out == ""


def test_argparse_errors_in_a_real_process_are_one_line():
    proc = subprocess.run([*PREFDYN, "bench", "toy", "--members", "abc"], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert _one_line(proc.stderr) == "prefdyn: error: argument --members: invalid int value: 'abc' (see prefdyn -h)"


# ------------------------------------------------------------------------------------------ -p values
def test_p_values_are_taken_verbatim_before_argparse():
    rest, pairs = cli.extract_params(["run", "toy-3d", "-p", "lr", "-1e-3", "--out", "x", "--param", "beta", "-0.5"])
    assert rest == ["run", "toy-3d", "--out", "x"] and pairs == [["lr", "-1e-3"], ["beta", "-0.5"]]
    assert cli.extract_params(["list", "-p"]) == (["list", "-p"], [])  # only `run` has -p
    assert cli.extract_params(["run", "x", "--", "-p"]) == (["run", "x", "--", "-p"], [])


def test_negative_value_reaches_the_range_check(capsys, no_execution):
    # no parameter of the book accepts a negative number: -1e-3 must fail on lr's range, not in argparse
    code, _, err = _main(capsys, "run", "toy-3d", "-p", "lr", "-1e-3")
    line = _one_line(err)
    assert code == 2 and "toy-3d: parameter 'lr' must be a number in (0, 1] (got '-1e-3')" in line
    assert "expected 2 arguments" not in line


def test_p_without_two_values_is_one_line(capsys, no_execution):
    for args in (["-p", "beta"], ["-p"], ["--param", "beta"]):
        code, _, err = _main(capsys, "run", "dpo-margin", *args)
        assert code == 2 and "needs a NAME and a VALUE" in _one_line(err)


# ------------------------------------------------------------------------------- list, version, pipe
def test_list_one_chapter(capsys):
    code, out, _ = _main(capsys, "list", "toy-3d")
    assert code == 0
    headers = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert headers == ["toy-3d"]
    for p in get_chapter("toy-3d").params:
        assert f"    {p.name} ({p.type}, default {p.default_text()}): {p.allowed()}" in out
    code, out, err = _main(capsys, "list", "nosuch")
    assert code == 2 and out == "" and "unknown chapter 'nosuch' (available: dpo-margin" in _one_line(err)


def test_list_shows_the_constraints_between_parameters(capsys):
    code, out, _ = _main(capsys, "list")
    assert code == 0
    assert "start_low < start_high" in out and "loop_members <= members" in out
    n = 0
    for chapter in CHAPTERS.values():
        section = out.split(f"{chapter.id}  -  ", 1)[1].split("\n\n", 1)[0]
        for check in chapter.checks:
            assert cli.describe_check(check) in section
            assert getattr(check, "description", "")                   # every check says what it checks
            n += 1
    assert n > 0


def test_below_describes_itself():
    check = catalog.below("a", "b", "why not")
    assert check.description == "a < b (why not)"
    assert catalog.below("a", "b", strict=False).description == "a <= b"
    assert check({"a": 1, "b": 2}) is None and "must be below b" in check({"a": 2, "b": 2})


def test_version(capsys):
    code, out, _ = _main(capsys, "--version")
    assert code == 0 and out == f"prefdyn {prefdyn.__version__}\n"


def test_no_broken_pipe_traceback_when_the_reader_leaves_early():
    """``prefdyn list | head -1``: the reader closes the pipe while prefdyn still writes."""
    import fcntl

    r, w = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)                        # smaller than `prefdyn list`'s output
    proc = subprocess.Popen([*PREFDYN, "list"], stdout=w, stderr=subprocess.PIPE, text=True, env=_env())
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        first = reader.readline()                                       # like head -1, then go away
    _, err = proc.communicate(timeout=120)
    assert first.startswith(b"dpo-margin")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode != 0 or err == ""


def test_no_broken_pipe_traceback_through_a_shell_pipe():
    cmd = " ".join(PREFDYN) + " list | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.stdout.startswith("dpo-margin") and len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------- run names
def test_run_names_are_injective_and_readable():
    ch = Chapter("names", "Names", "test", params=[
        Param("label", "str", "x", "a free string"),
        Param("betas", "list[float]", [1.0], "floats", low=0.0, low_open=True),
    ])
    names = {v: run_name(ch, {"label": v}) for v in ("a b", "a/b", "a_b", "a__b", "a b ", "A_b")}
    assert len(set(names.values())) == len(names) - 1                   # "a b " strips to "a b"
    assert names["a b"] == names["a b "]
    assert all(n.startswith("names__label-a") or n.startswith("names__label-A") for n in names.values())
    assert run_name(ch, {}) == "names" and run_name(ch, {"label": "x", "betas": "1"}) == "names"
    assert run_name(ch, {"betas": "0.1,0.2"}) == run_name(ch, {"betas": [0.1, 0.2]})
    assert run_name(ch, {"betas": "0.1,0.2"}) != run_name(ch, {"betas": [0.2, 0.1]})
    long = run_name(ch, {"betas": ",".join(str(0.001 * i) for i in range(1, 500))})
    assert len(long) <= len("names") + 2 + runner.RUN_NAME_READABLE + 1 + 2 + 10
    import re

    for n in (*names.values(), long):
        assert re.fullmatch(r"[A-Za-z0-9.+~_-]+", n), n


# ------------------------------------------------------------------------------ moving into place
def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fail_on(monkeypatch, attr: str, suffix: str):
    real = getattr(runner, attr)

    def flaky(src, dst):
        if str(dst).endswith(suffix):
            raise OSError(28, "No space left on device (simulated)")
        return real(src, dst)

    monkeypatch.setattr(runner, attr, flaky)


def _heal(monkeypatch):
    monkeypatch.setattr(runner, "_replace", os.replace)
    monkeypatch.setattr(runner, "_rename", os.rename)


def test_install_files_is_all_or_nothing(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "c.ipynb").write_text("new nb")
    (src / "c.json").write_text("new json")
    book = tmp_path / "book"
    (book / "data").mkdir(parents=True)
    (book / "c.ipynb").write_text("old nb")
    (book / "data" / "c.json").write_text("old json")
    pairs = [(src / "c.ipynb", book / "c.ipynb"), (src / "c.json", book / "data" / "c.json")]

    _fail_on(monkeypatch, "_replace", ".json")                          # the second move fails
    with pytest.raises(InstallFailed, match="nothing was changed"):
        install_files(pairs)
    assert _files(book) == {"c.ipynb": "old nb", "data/c.json": "old json"}   # rolled back, no leftovers

    fresh = tmp_path / "fresh"                                          # the same when nothing was there
    with pytest.raises(InstallFailed):
        install_files([(src / "c.ipynb", fresh / "c.ipynb"), (src / "c.json", fresh / "c.json")])
    assert _files(fresh) == {}

    _heal(monkeypatch)
    install_files(pairs)
    assert _files(book) == {"c.ipynb": "new nb", "data/c.json": "new json"}


def test_install_folder_is_all_or_nothing(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "c.ipynb").write_text("nb")
    (src / "c.json").write_text("json")
    dst = tmp_path / "runs" / "deep" / "c__x"
    _fail_on(monkeypatch, "_rename", "c__x")
    with pytest.raises(InstallFailed):
        install_folder([src / "c.ipynb", src / "c.json"], dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]       # no stage, no parents left
    _heal(monkeypatch)
    assert install_folder([src / "c.ipynb", src / "c.json"], dst)
    assert _files(dst) == {"c.ipynb": "nb", "c.json": "json"} and sorted(os.listdir(dst.parent)) == ["c__x"]
    assert not install_folder([src / "c.ipynb"], dst)                  # exists: the caller uses install_files


@pytest.fixture
def tiny_book(tmp_path, monkeypatch):
    """A throw-away book root with one quick chapter that writes its JSON."""
    return make_book(tmp_path, monkeypatch, "tiny", [
        "import json, os, pathlib\n"
        "pathlib.Path(os.environ['PREFDYN_RESULTS_DIR'], 'tiny.json').write_text(json.dumps({'steps': steps}))\n"
        "print(steps)"])


def test_into_book_keeps_the_old_pair_when_the_second_move_fails(tiny_book, monkeypatch):
    book = tiny_book / "book"
    (book / "tiny.ipynb").write_text("golden nb")
    (book / "data" / "tiny.json").write_text("golden json")
    _fail_on(monkeypatch, "_replace", "tiny.json")
    with pytest.raises(InstallFailed):
        run_chapter("tiny", {"steps": 5}, root=tiny_book, into_book=True, progress=False)
    assert _files(book) == {"tiny.ipynb": "golden nb", "data/tiny.json": "golden json"}
    _heal(monkeypatch)
    res = run_chapter("tiny", {"steps": 5}, root=tiny_book, into_book=True, progress=False)
    assert json.loads(res.results.read_text()) == {"steps": 5} and sorted(_files(book)) == ["data/tiny.json", "tiny.ipynb"]


def test_a_run_folder_appears_whole_or_not_at_all(tiny_book, monkeypatch):
    _fail_on(monkeypatch, "_rename", "")
    with pytest.raises(InstallFailed):
        run_chapter("tiny", {"steps": 5}, root=tiny_book, progress=False)
    assert not (tiny_book / "runs").exists()
    _heal(monkeypatch)
    res = run_chapter("tiny", {"steps": 5}, root=tiny_book, progress=False)
    folder = tiny_book / "runs" / run_name(get_chapter("tiny"), {"steps": 5})
    assert res.notebook.parent == folder and sorted(os.listdir(folder)) == ["tiny.ipynb", "tiny.json"]
    res = run_chapter("tiny", {"steps": 5}, root=tiny_book, progress=False)   # again, into the existing folder
    assert sorted(os.listdir(folder)) == ["tiny.ipynb", "tiny.json"]
    assert os.listdir(tiny_book / "runs") == [folder.name]


def test_cli_reports_a_failed_move_in_one_line(tiny_book, monkeypatch, capsys):
    monkeypatch.chdir(tiny_book)                                        # the CLI finds its book from the cwd
    _fail_on(monkeypatch, "_rename", "")
    code, _, err = _main(capsys, "run", "tiny", "--out", str(tiny_book / "out"), "-q")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "could not move the results into place, nothing was changed" in lines[0]
    assert not (tiny_book / "out").exists()


# ------------------------------------------------------------------------------------ kernel and signals
def test_the_kernel_manager_uses_ipc_in_the_given_folder(tmp_path):
    km = ipc_kernel_manager(tmp_path)(kernel_name="python3")
    assert km.transport == "ipc"
    assert Path(km.connection_file).parent == tmp_path
    assert km.ip == str(tmp_path / "kernel-ipc")
    km = ipc_kernel_manager(tmp_path / "a", tmp_path / "b")(kernel_name="python3")
    assert Path(km.connection_file).parent == tmp_path / "a" and km.ip == str(tmp_path / "b" / "kernel-ipc")


def test_a_long_temporary_path_still_runs_and_leaves_nothing(tiny_book, monkeypatch):
    """Unix sockets take ~100 bytes of path: under a long TMPDIR they go to a short folder, also removed."""
    long_tmp = tiny_book / ("t" * 60)
    long_tmp.mkdir()
    monkeypatch.setattr(runner.tempfile, "tempdir", str(long_tmp))
    seen = []
    real = runner.ipc_kernel_manager
    monkeypatch.setattr(runner, "ipc_kernel_manager", lambda folder, sockets=None: seen.append((folder, sockets)) or real(folder, sockets))
    res = run_chapter("tiny", {"steps": 4}, root=tiny_book, progress=False)
    assert json.loads(res.results.read_text()) == {"steps": 4}
    (folder, sockets), = seen
    assert str(folder).startswith(str(long_tmp)) and len(str(sockets / "kernel-ipc-00")) <= 100
    assert not folder.exists() and not sockets.exists() and os.listdir(long_tmp) == []


def test_two_concurrent_runs_both_succeed_over_ipc(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    procs = [subprocess.Popen([*PREFDYN, "run", "dpo-margin", "--out", str(tmp_path / name), "-q"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(TMPDIR=str(tmpdir)))
             for name in ("a", "b")]
    for name, proc in zip(("a", "b"), procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "TCP" not in err and "port" not in err.lower() and "WARNING" not in err, err
        assert sorted(os.listdir(tmp_path / name)) == ["dpo-margin.ipynb", "dpo-margin.json"]
    assert os.listdir(tmpdir) == []                                     # connection and socket files gone too


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("delay", [0.0, 2.0], ids=["kernel-starting", "chapter-running"])
def test_a_signal_cleans_the_temporary_folder_and_the_kernel(tmp_path, sig, code, delay):
    tmpdir, out = tmp_path / "tmp", tmp_path / "out"
    tmpdir.mkdir()
    # A shell that starts a job in the background (as CI scripts may) makes it ignore SIGINT, and Python
    # keeps an ignored SIGINT ignored: give the run a default SIGINT, as a terminal would.
    proc = subprocess.Popen([*PREFDYN, "run", "toy-3d", "-p", "steps", "100000", "--out", str(out), "-q"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(TMPDIR=str(tmpdir)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        # the kernel runs (its command line names the connection file in the run's temporary folder)
        while not (list(tmpdir.glob("prefdyn-toy-3d-*/kernel.json")) and _processes_mentioning(str(tmpdir))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the kernel never started"
            time.sleep(0.1)
        time.sleep(delay)                          # still starting (outside nbclient's cleanup), or running a cell
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == ("prefdyn: terminated" if sig == signal.SIGTERM else "prefdyn: interrupted"), err
    assert "Traceback" not in err and "Parent appears to have exited" not in err, err   # the kernel was stopped
    assert list(tmpdir.glob("prefdyn-*")) == []                         # the run's temporary folder is gone
    assert not out.exists()                                             # no partial file at the destination
    time.sleep(0.5)
    assert _processes_mentioning(str(tmpdir)) == []                     # and so is the kernel


# ------------------------------------------------------------------------------------ housekeeping
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and the checkout")
def test_git_ignores_what_runs_write():
    ignored = ["runs/dpo-margin__beta-0.5__0123456789/dpo-margin.ipynb", "runs/dpo-margin/dpo-margin.json",
               "book/runs/dpo-margin/dpo-margin.json", "out.ipynb", "book/.dpo-margin.ipynb.partial",
               "book/data/.dpo-margin.json.backup.partial", "x.partial", "runs/.dpo-margin__x.partial/a"]
    kept = ["book/dpo-margin.ipynb", "book/data/dpo-margin.json", "notebooks/dpo-margin.md"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *ignored, *kept], cwd=ROOT, capture_output=True, text=True)
    assert sorted(proc.stdout.split()) == sorted(ignored)


def test_pytest_removes_its_temporary_folders(request):
    # "failed", not "none": with "none" pytest locks no folder and a session that ends removes those of
    # every other session still running (see pyproject.toml)
    assert request.config.getini("tmp_path_retention_policy") == "failed"


_LEFT_BEHIND = []


def test_a_passing_tests_folder_is_made(tmp_path):
    (tmp_path / "file").write_text("x")
    _LEFT_BEHIND.append(tmp_path)


def test_a_passing_tests_folder_is_removed_at_its_teardown():
    if not _LEFT_BEHIND:
        pytest.skip("runs after test_a_passing_tests_folder_is_made")
    assert not _LEFT_BEHIND[0].exists()


# ----------------------------------------------------------------------------------------- check
def test_check_accepts_the_book_and_names_a_changed_number(tmp_path):
    golden = ROOT / "book" / "data" / "dpo-margin.json"
    ok = subprocess.run(PREFDYN + ["check", "dpo-margin", str(golden)], capture_output=True, text=True, env=_env())
    assert ok.returncode == 0 and "reproduce the book within its tolerances" in ok.stdout
    data = json.loads(golden.read_text())
    key, value = next((k, v) for k, v in data["results"].items() if isinstance(v, float) and v != 0)
    data["results"][key] = -value
    bad = tmp_path / "run.json"
    bad.write_text(json.dumps(data))
    res = subprocess.run(PREFDYN + ["check", "dpo-margin", str(bad), "--deviations", "3"],
                         capture_output=True, text=True, env=_env())
    assert res.returncode == 1
    assert f"dpo-margin: {key} = " in res.stdout and "beyond its tolerances" in res.stdout
    assert f"{key}: rel 2, abs " in res.stdout                 # the deviation report: |x - (-x)| / |x| = 2


@pytest.mark.parametrize("args, needle", [
    (["check", "nosuch"], "unknown chapter"),
    (["check", "dpo-margin", "/nonexistent.json"], "is not a file"),
    (["check", "dpo-margin", "--device", "cpu"], "no 'device' parameter"),
    (["check", "toy-3d", "--device", "tpu"], "parameter 'device'"),
])
def test_check_bad_input_is_one_line_exit_2(args, needle):
    res = subprocess.run(PREFDYN + args, capture_output=True, text=True, env=_env())
    assert res.returncode == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
