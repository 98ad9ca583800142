"""The chapter pipeline: parameter declarations, results helper, runner and CLI ([1/7])."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefdyn import results
from prefdyn.chapters import CHAPTERS, Chapter, Param, ParameterError, get_chapter
from prefdyn.chapters import catalog
from prefdyn.chapters.runner import ChapterFailed, clean_executed, repo_root, run_chapter, run_name, source_notebook

from throwaway_book import make_book

ROOT = Path(__file__).resolve().parents[1]
PREFDYN = [sys.executable, "-m", "prefdyn.cli"]


# ----------------------------------------------------------------------------------------------- Param
def test_param_coerces_strings_and_numbers():
    p = Param("beta", "float", 0.1, "b", low=0.0, low_open=True, high=10.0)
    assert p.coerce("0.5") == 0.5 and p.coerce(2) == 2.0 and isinstance(p.coerce(2), float)
    n = Param("n", "int", 3, "n", low=1)
    assert n.coerce("7") == 7 and n.coerce(4.0) == 4 and n.coerce("4.0") == 4 and n.coerce(" 1e1 ") == 10
    b = Param("flag", "bool", False, "f")
    assert b.coerce("true") is True and b.coerce("0") is False and b.coerce(True) is True
    lst = Param("losses", "list[str]", ["dpo"], "l", choices=("dpo", "ipo"))
    assert lst.coerce("dpo, ipo") == ["dpo", "ipo"] and lst.coerce('["ipo"]') == ["ipo"]
    fl = Param("betas", "list[float]", [0.1], "b", low=0.0, low_open=True)
    assert fl.coerce("0.1,0.2") == [0.1, 0.2] and fl.coerce(0.3) == [0.3]


@pytest.mark.parametrize("param, value", [
    (Param("beta", "float", 0.1, "b", low=0.0, low_open=True), "-1"),
    (Param("beta", "float", 0.1, "b", low=0.0, low_open=True), "0"),
    (Param("beta", "float", 0.1, "b", low=0.0, low_open=True), "nan"),
    (Param("beta", "float", 0.1, "b", low=0.0, low_open=True), "abc"),
    (Param("beta", "float", 0.1, "b"), True),
    (Param("n", "int", 3, "n", low=1, high=10), "11"),
    (Param("n", "int", 3, "n"), "2.5"),
    (Param("flag", "bool", False, "f"), "maybe"),
    (Param("loss", "str", "dpo", "l", choices=("dpo", "ipo")), "nosuch"),
    (Param("losses", "list[str]", ["dpo"], "l", choices=("dpo", "ipo")), "dpo,nosuch"),
    (Param("losses", "list[str]", ["dpo"], "l", choices=("dpo", "ipo")), ""),
    (Param("betas", "list[float]", [0.1], "b", low=0.0, low_open=True), "0.1,-2"),
])
def test_param_rejects_bad_values_in_one_line(param, value):
    with pytest.raises(ParameterError) as err:
        param.coerce(value, chapter="ch")
    msg = str(err.value)
    assert "\n" not in msg and f"'{param.name}'" in msg and msg.startswith("ch: ")


def test_bad_declarations_fail_at_import_time():
    with pytest.raises(ValueError):
        Param("beta", "float", -1.0, "b", low=0.0)          # default out of its own range
    with pytest.raises(ValueError):
        Param("beta", "complex", 1.0, "b")                   # unknown type
    with pytest.raises(ValueError):
        Chapter("x", "X", "p", params=[Param("a", "int", 1, "a"), Param("a", "int", 1, "a")])


def test_constraints_between_parameters_are_checked_on_the_full_set():
    chapter = get_chapter("gradient-fields")
    assert chapter.resolve({"start_low": 0.1})["start_low"] == 0.1
    with pytest.raises(ParameterError, match="^gradient-fields: parameter 'start_low' must be below start_high"):
        chapter.resolve({"start_low": 0.45})                 # equal to the default start_high
    with pytest.raises(ParameterError, match="start_low"):
        chapter.resolve({"start_high": 0.01})                # the default start_low is now above it


def test_chapter_validation_names_unknown_parameters():
    ch = get_chapter("dpo-margin")
    with pytest.raises(ParameterError, match=r"unknown parameter 'nosuch' \(this chapter takes: beta"):
        ch.validate({"nosuch": 1})
    assert ch.resolve({"beta": "0.5"})["beta"] == 0.5
    with pytest.raises(ParameterError, match="unknown chapter 'nope'"):
        get_chapter("nope")


def test_run_name_lists_only_non_default_parameters():
    ch = get_chapter("dpo-margin")
    assert run_name(ch, {}) == "dpo-margin"
    assert run_name(ch, {"beta": 0.1}) == "dpo-margin"
    name = run_name(ch, {"beta": 0.5, "betas": [0.1, 1.0]})
    assert name.startswith("dpo-margin__beta-0.5__betas-0.1_1__")       # readable part, then a short hash
    assert len(name.rsplit("__", 1)[1]) == 10
    assert run_name(ch, {"betas": "0.1,1", "beta": "0.5"}) == name       # the same values: the same folder


# --------------------------------------------------------------------------------------------- results
def test_results_round_print_and_save_the_same_numbers(tmp_path, monkeypatch, capsys):
    import numpy as np
    import torch

    monkeypatch.setenv(results.ENV, str(tmp_path))
    path = results.save_results("demo", {
        "a": 0.123456789, "n": 32, "t": torch.tensor(2.0 / 3.0), "arr": np.array([1.0 / 3.0, 2.0]),
        "nested": {"x": 1e-9 / 3, "ok": True}, "bad": float("nan"), "big": float("-inf"),
    }, {"beta": 0.1}, echo=True)
    assert path == tmp_path / "demo.json"
    data = json.loads(path.read_text())
    assert data["results"] == {"a": 0.1235, "n": 32, "t": 0.6667, "arr": [0.3333, 2.0],
                               "nested": {"x": 3.333e-10, "ok": True}, "bad": "nan", "big": "-inf"}
    assert data["parameters"] == {"beta": 0.1} and data["chapter"] == "demo"
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["a = 0.1235", "n = 32", "t = 0.6667", "arr = [0.3333, 2]",
                       "nested.x = 3.333e-10", "nested.ok = True", "bad = nan", "big = -inf"]
    assert results.lines(data["results"]) == printed     # the saved JSON prints back to the same text
    results.save_results("demo", {"a": 1.0, "nested": {"x": [1, 2], "y": {}}})   # the chapters' default
    assert capsys.readouterr().out == "4 key numbers saved to demo.json\n"
    with pytest.raises(TypeError):
        results.rounded({"x": object()})
    with pytest.raises(ValueError):
        results.save_results("demo", {})


def test_results_default_to_a_run_folder_not_the_book(tmp_path, monkeypatch):
    monkeypatch.delenv(results.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert results.results_path("demo") == tmp_path / "runs" / "demo" / "demo.json"


def test_source_cell_ids_are_stable_and_unique():
    chapter = get_chapter("dpo-margin")
    a, b = source_notebook(chapter, repo_root()), source_notebook(chapter, repo_root())
    ids = [c.id for c in a.cells]
    assert ids == [c.id for c in b.cells] and len(set(ids)) == len(ids)


def test_clean_executed_removes_timings():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"duration": 1.0, "start_time": "t", "parameters": {"beta": 0.5}, "input_path": "/tmp/x"}
    cell = nbformat.v4.new_code_cell("1")
    cell.metadata["papermill"] = {"duration": 0.1, "status": "completed"}
    cell.metadata["execution"] = {"iopub.status.busy": "t"}
    nb.cells.append(cell)
    clean_executed(nb)
    assert nb.metadata["papermill"] == {"parameters": {"beta": 0.5}}
    assert "execution" not in cell.metadata and cell.metadata["papermill"] == {"status": "completed"}


# ---------------------------------------------------------------------------------------- CLI and runner
def _cli(*args, cwd=ROOT):
    env = dict(os.environ, PREFDYN_PROGRESS="0")
    return subprocess.run([*PREFDYN, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


@pytest.mark.parametrize("args, needle", [
    (["run", "dpo-margin", "-p", "beta", "-1"], "parameter 'beta' must be a number in (0, 100] (got '-1')"),
    (["run", "dpo-margin", "-p", "nosuch", "1"], "unknown parameter 'nosuch' (this chapter takes: beta, betas, margin_range)"),
    (["run", "no-such-chapter"], "unknown chapter 'no-such-chapter' (available: "),
    (["run", "dpo-margin", "-p", "betas", "0.1,zero"], "parameter 'betas' must be a comma-separated list of float"),
    (["run", "performance", "-p", "loop_members", "999"], "parameter 'loop_members' must be at most members (256)"),
    (["run", "toy-scenarios", "-p", "p_off", "0.12"], "parameter 'p_off' must be below p_on"),
])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, needle):
    before_runs, before_book = _tree(ROOT / "runs"), _tree(ROOT / "book")
    proc = _cli(*args, "--out", str(tmp_path / "out")) if args[1] in CHAPTERS else _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
    assert _tree(ROOT / "runs") == before_runs and _tree(ROOT / "book") == before_book


def test_cli_list_shows_every_parameter():
    proc = _cli("list")
    assert proc.returncode == 0
    for chapter in CHAPTERS.values():
        assert chapter.id in proc.stdout
        for p in chapter.params:
            assert f"{p.name} ({p.type}, default {p.default_text()}): {p.allowed()}" in proc.stdout


def test_cli_run_writes_a_run_folder_with_the_parameters(tmp_path):
    out = tmp_path / "run"
    proc = _cli("run", "dpo-margin", "-p", "beta", "0.5", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["dpo-margin.ipynb", "dpo-margin.json"]
    data = json.loads((out / "dpo-margin.json").read_text())
    assert data["parameters"]["beta"] == 0.5
    assert data["results"]["grad_at_zero_margin"] == -0.25          # -beta/2 at beta = 0.5
    import nbformat

    nb = nbformat.read(out / "dpo-margin.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert ["parameters"] in tags and ["injected-parameters"] in tags
    assert "duration" not in nb.metadata.get("papermill", {})


@pytest.fixture
def failing_book(tmp_path, monkeypatch):
    """A throw-away book root with one chapter that fails in its third cell."""
    return make_book(tmp_path, monkeypatch, "failing",
                     ["steps_twice = 2 * steps", "raise RuntimeError(f'boom after {steps} steps')"],
                     data_folder=False)


def test_a_failing_chapter_leaves_nothing_and_names_the_cell(failing_book):
    with pytest.raises(ChapterFailed) as err:
        run_chapter("failing", {"steps": 5}, root=failing_book, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "chapter 'failing' failed in cell In [4] (starts: raise RuntimeError" in msg
    assert msg.endswith("RuntimeError: boom after 5 steps")
    with pytest.raises(ChapterFailed):
        run_chapter("failing", root=failing_book, into_book=True, progress=False)
    assert not (failing_book / "runs").exists()
    assert list((failing_book / "book").iterdir()) == []


def test_plain_papermill_refuses_unknown_and_bad_parameters(tmp_path):
    import papermill as pm

    src = ROOT / "book" / "dpo-margin.ipynb"
    for params, needle in (({"nosuch": 1}, "unknown parameter 'nosuch'"),
                           ({"beta": -1.0}, "parameter 'beta' must be a number in (0, 100]")):
        with pytest.raises(pm.PapermillExecutionError) as err:
            pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), parameters=params, progress_bar=False,
                                kernel_name="python3", cwd=str(tmp_path))
        assert err.value.ename == "ParameterError" and needle in err.value.evalue
