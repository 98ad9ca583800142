"""Tests of :mod:`prefdyn.bench`: the batched trainer and the plain loop it is timed against do the same work,
and the numbers the benchmark reports are consistent with each other and with its JSON; ``make bench``
(:func:`prefdyn.bench.bench_all`) writes one record with every key, ``prefdyn book`` records (and with
``--only`` merges) the chapter times, the Performance appendix's tables read with and without them, and the
README quotes the committed record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from prefdyn import bench, toy
from prefdyn import losses as L
from prefdyn.toy.train import _preference_train

SMALL = dict(members=4, steps=3, hidden=8, progress=False, device="cpu", threads=1)


def test_bench_small_batched_and_loop_agree_and_report_consistently(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    r = bench.bench(loop_members=2, repeats=3, out=out, **SMALL)
    # the same members trained both ways end at the same probabilities (float32; measured ~6e-7)
    assert 0.0 <= r["max_abs_diff_final_probs"] < 1e-5
    assert (r["members"], r["steps"], r["hidden"], r["loss"], r["device"]) == (4, 3, 8, "dpo", "cpu")
    assert r["torch_threads"] == 1 and r["loop_torch_threads"] == 1 and r["torch"] == torch.__version__
    # timings: positive, the median of the repeats, the loop scaled by members / loop_members
    assert len(r["batched_repeats_s"]) == 3 and all(t > 0 for t in r["batched_repeats_s"])
    assert r["batched_s"] == float(np.median(r["batched_repeats_s"]))
    assert r["loop_members_measured"] == 2 and r["loop_extrapolated"] is True
    assert r["loop_s"] == pytest.approx(r["loop_measured_s"] * 4 / 2, rel=1e-12)
    assert r["ratio"] == pytest.approx(r["loop_s"] / r["batched_s"], rel=1e-12)
    assert r["batched_us_per_member_step"] == pytest.approx(1e6 * r["batched_s"] / (4 * 3), rel=1e-12)
    assert r["loop_us_per_member_step"] == pytest.approx(1e6 * r["loop_s"] / (4 * 3), rel=1e-12)
    # the JSON written is the returned dict, exactly (floats round-trip)
    assert json.loads(out.read_text(encoding="utf-8")) == r


def test_bench_without_loop_members_runs_every_member_in_the_loop():
    r = bench.bench(repeats=1, **SMALL)
    assert r["loop_members_measured"] == 4 and r["loop_extrapolated"] is False
    assert r["loop_s"] == r["loop_measured_s"]
    assert r["max_abs_diff_final_probs"] < 1e-5


def test_bench_reference_loop_is_the_batched_trainer_per_member():
    """The plain loop of the bench (nn.Sequential + torch.optim.Adam, one member at a time) against the
    batched trainer, in float64: the same records at every step and the same final policy, while the
    policy really moves (a loop that never trained would also "agree")."""
    spec = toy.ToySpec()
    pol = toy.make_policy("mlp", spec, torch.tensor([0, 5, 9]), hidden=8, device="cpu", dtype=torch.float64)
    toy.sft(pol, toy.initial_distribution(spec), steps=30)
    loss = L.get("dpo")
    params = loss.check(beta=0.5)
    steps, K = 12, 3
    start = pol.probs().clone()
    batched = pol.clone()
    rec, rec_steps, _ = _preference_train(batched, [(slice(0, 3), loss, params)], steps=steps, lr=1e-2,
                                          optimizer="adam", pairs_per_prompt=K, progress=False)
    assert list(rec_steps) == list(range(steps + 1))
    for m in range(3):
        ref = bench._single_run_reference(pol, m, loss, params, steps, 1e-2, K)
        for k in ("chosen", "rejected", "unseen", "loss", "grad_chosen", "grad_rejected"):
            np.testing.assert_allclose(ref[k].numpy(), rec[k][:, m], rtol=1e-9, atol=1e-12, err_msg=f"{m} {k}")
        np.testing.assert_allclose(ref["final_probs"].numpy(), batched.probs()[m].numpy(), rtol=0, atol=1e-12)
        assert float((ref["final_probs"] - start[m]).abs().max()) > 1e-3


@pytest.mark.parametrize("activation,depth", [("relu", 2), ("tanh", 2), ("gelu", 2), ("silu", 2), ("linear", 2),
                                              ("relu", 1), ("tanh", 3)])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_member_module_is_the_member(activation, depth, dtype, atol):
    spec = toy.ToySpec()
    pol = toy.MLPPolicy(spec, [2, 11, 4, 7], hidden=16, activation=activation, depth=depth, device="cpu", dtype=dtype)
    with torch.no_grad():                                       # move off the init: any current weights work
        for p in pol.param_list():
            p.mul_(1.7).add_(0.05)
    out = pol.forward().detach()
    for m in (0, 2, 3):
        mod = pol.member_module(m)
        assert isinstance(mod, torch.nn.Sequential) and len(mod) == 2 * depth + 1
        assert isinstance(mod[1], toy.ACTIVATIONS[activation][1])
        with torch.no_grad():
            y = mod(torch.eye(spec.n_prompts, dtype=dtype))
        assert y.dtype == dtype and y.shape == (spec.n_prompts, spec.n_responses)
        torch.testing.assert_close(y, out[m], rtol=0, atol=atol)
    # a module is a copy: training it leaves the batched member alone, and members differ
    mod = pol.member_module(1)
    with torch.no_grad():
        mod[0].bias.add_(1.0)
    torch.testing.assert_close(pol.forward().detach(), out, rtol=0, atol=0)
    assert not torch.allclose(out[0], out[1])
    assert math.isfinite(float(out.abs().max()))


# ----------------------------------------------------------------------------- make bench (prefdyn bench all)
import datetime as _dt
import os
import platform
from pathlib import Path

from prefdyn import cli
from prefdyn.chapters import runner
from prefdyn.chapters.runner import all_chapters

ROOT = Path(__file__).resolve().parents[1]
TINY_TOY = dict(members=4, steps=3, loop_members=2, hidden=8, repeats=1)
TINY_PROBES = dict(pairs=12, steps=3, batch=4, warmup=2, repeats=2, n_layer=1, n_embd=16, n_head=2)


def test_machine_info_names_the_machine_and_the_utc_date():
    m = bench.machine_info()
    assert tuple(m) == ("cpu", "logical_cores", "torch", "torch_threads", "python", "os", "date", "load_average")
    assert len(m["load_average"]) == 3 and all(x >= 0 for x in m["load_average"])
    assert isinstance(m["cpu"], str) and m["cpu"].strip() and m["cpu"] != "unknown"
    assert m["logical_cores"] == os.cpu_count() and m["torch_threads"] == torch.get_num_threads() >= 1
    assert (m["torch"], m["python"], m["os"]) == (torch.__version__, platform.python_version(), platform.platform())
    when = _dt.datetime.strptime(m["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    assert abs((_dt.datetime.now(_dt.timezone.utc) - when).total_seconds()) < 120
    if Path("/proc/cpuinfo").is_file():                       # Linux: the model name, verbatim (spaces collapsed)
        names = [" ".join(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.lower().startswith("model name")]
        assert not names or m["cpu"] == names[0]


def test_bench_all_tiny_writes_one_record_with_every_key(tmp_path):
    pytest.importorskip("trl", reason="the probes benchmark compares with the pinned test extra 'trl'")
    from prefdyn.probes.bench import PROBES_KEYS

    times = bench.record_book_times(tmp_path / "book-times.json", {"dpo-margin": 4.5, "toy-3d": 12.0}, 5.0)
    out = tmp_path / "sub" / "bench.json"
    r = bench.bench_all(out, toy=TINY_TOY, probes=TINY_PROBES, book_times=tmp_path / "book-times.json",
                        progress=False)
    assert tuple(r) == bench.RECORD_KEYS
    assert json.loads(out.read_text(encoding="utf-8")) == r           # the JSON is the returned dict
    assert r["book"] == times and r["book_note"] is None
    assert tuple(r["machine"]) == tuple(bench.machine_info())
    assert r["settings"]["toy"] == {**bench.ALL_TOY, **TINY_TOY}
    assert r["settings"]["probes"] == {**bench.ALL_PROBES, **TINY_PROBES}
    toy = r["toy"]
    assert (toy["members"], toy["steps"], toy["loop_members_measured"], toy["device"]) == (4, 3, 2, "cpu")
    assert toy["ratio"] == pytest.approx(toy["loop_s"] / toy["batched_s"], rel=1e-12)
    assert toy["loop_us_per_member_step"] > 0 and toy["batched_us_per_member_step"] > 0
    assert tuple(r["probes"]) == PROBES_KEYS and r["probes"]["n_pairs"] == 12 and r["probes"]["steps"] == 3
    assert 0 < r["probes"]["callback_overhead"] and r["bench_s"] > 0
    assert bench.load_bench(out) == r


def _fake_benches(monkeypatch):
    """bench_all with both benches replaced by fixed results (the record's assembly alone)."""
    from prefdyn.probes import bench as probes_bench

    monkeypatch.setattr(bench, "bench", lambda **kw: {"fake": "toy", **kw})
    monkeypatch.setattr(probes_bench, "bench_probes", lambda **kw: {"fake": "probes", **kw})


def test_bench_all_without_book_times_says_so_and_bad_settings_fail_first(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"^toy: unknown setting 'nope' \(allowed: members, steps"):
        bench.bench_all(toy={"nope": 1})
    with pytest.raises(ValueError, match=r"^probes: unknown setting 'members'"):
        bench.bench_all(probes={"members": 1})
    _fake_benches(monkeypatch)
    r = bench.bench_all(tmp_path / "b.json", book_times=tmp_path / "missing.json", progress=False)
    assert r["book"] is None and r["book_note"] == bench.BOOK_NOTE and "make book" in r["book_note"]
    assert r["toy"] == {"fake": "toy", "progress": False, **bench.ALL_TOY}
    assert r["probes"] == {"fake": "probes", **bench.ALL_PROBES}
    assert json.loads((tmp_path / "b.json").read_text(encoding="utf-8")) == r
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(ValueError, match=r"^book_times: .*broken.json is not a record of prefdyn book"):
        bench.bench_all(book_times=tmp_path / "broken.json")


def test_prefdyn_book_records_times_and_merges_them_with_only(tmp_path, monkeypatch, capsys):
    """``prefdyn book`` (chapters and site build replaced by no-ops) writes _build/book-times.json; with
    ``--only`` it re-times those chapters and keeps the others' times and dates; on another machine it
    starts afresh."""
    from prefdyn.chapters import pages

    ran = []
    monkeypatch.setattr(runner, "run_chapter", lambda cid, **kw: ran.append(cid))
    monkeypatch.setattr(runner, "build_site", lambda *a, **k: 0)
    monkeypatch.setattr(runner, "repo_root", lambda *a, **k: tmp_path)
    monkeypatch.setattr(pages, "write_pages", lambda root: [])
    path = tmp_path / bench.BOOK_TIMES
    assert cli.main(["book", "-q"]) == 0 and ran == all_chapters()
    full = bench.load_book_times(path)
    assert list(full["chapters"]) == all_chapters() == full["retimed"]
    assert full["site_build_s"] >= 0 and full["site_built_at"] == full["executed_at"]
    assert full["total_s"] == pytest.approx(sum(full["chapters"].values()) + full["site_build_s"], rel=1e-12)
    assert f"times written to {path}" in capsys.readouterr().out

    old = dict(full, chapters={**full["chapters"], "toy-3d": 123.0, "dpo-margin": 456.0},
               chapter_timed_at={**full["chapter_timed_at"], "toy-3d": "2000-01-01T00:00:00Z"},
               site_build_s=7.0)
    path.write_text(json.dumps(old))
    assert cli.main(["book", "--only", "dpo-margin", "--no-build", "-q"]) == 0
    merged = bench.load_book_times(path)
    assert merged["retimed"] == ["dpo-margin"] and merged["chapters"]["dpo-margin"] < 456.0
    assert merged["chapters"]["toy-3d"] == 123.0 and merged["chapter_timed_at"]["toy-3d"] == "2000-01-01T00:00:00Z"
    assert merged["chapter_timed_at"]["dpo-margin"] == merged["executed_at"]
    assert set(merged["chapters"]) == set(all_chapters()) and merged["site_build_s"] == 7.0
    assert merged["site_built_at"] == full["site_built_at"]
    assert merged["total_s"] == pytest.approx(sum(merged["chapters"].values()) + 7.0, rel=1e-12)

    path.write_text(json.dumps(dict(merged, machine=dict(merged["machine"], cpu="another CPU"))))
    assert cli.main(["book", "--only", "toy-3d", "--no-build", "-q"]) == 0
    fresh = bench.load_book_times(path)
    assert list(fresh["chapters"]) == ["toy-3d"] and fresh["site_build_s"] is None
    assert fresh["total_s"] == fresh["chapters"]["toy-3d"]
    with pytest.raises(ValueError, match=r"^site_build_s: expected a finite number >= 0"):
        bench.record_book_times(path, {}, -1.0)


def _synthetic_record(book: bool) -> dict:
    from prefdyn.probes.bench import PROBES_KEYS

    toy = {"members": 256, "steps": 200, "device": "cpu", "torch_threads": 1, "loop_torch_threads": 1,
           "batched_s": 0.9, "loop_s": 54.0, "ratio": 60.0, "batched_us_per_member_step": 17.5,
           "loop_us_per_member_step": 1050.0, "loop_members_measured": 64, "loop_extrapolated": True,
           "max_abs_diff_final_probs": 2.5e-4}
    probes = dict.fromkeys(PROBES_KEYS, 1)
    probes.update(model="gpt2(tiny)", n_params=805376, n_pairs=64, batch=8, steps=20, repeats=3, optimizer="adamw",
                  trl="1.16.0", torch_threads=1, logprob_batched_pairs_per_s=264.7, logprob_loop_pairs_per_s=156.6,
                  logprob_batched_tokens_per_s=16770.0, logprob_loop_tokens_per_s=9919.0, logprob_ratio=1.69,
                  ours_ms_per_step=80.0, trl_ms_per_step=85.0, floor_ms_per_step=77.5, ours_pairs_per_s=100.0,
                  trl_pairs_per_s=94.12, train_ratio=1.0625, callback_every=100, callback_pairs=64,
                  callback_probe_ms=238.0, callback_overhead=0.028)
    machine = {"cpu": "Test CPU 9000", "logical_cores": 2, "torch": "2.13.0+cpu", "torch_threads": 2,
               "python": "3.11.7", "os": "Linux-test", "date": "2030-04-05T06:07:08Z",
               "load_average": [1.5, 1.25, 1.0]}
    times = None
    if book:
        chapters = {"zz-extra": 1.0, "performance": 17.5, "dpo-margin": 4.75, "llm-3d": 186.0}
        times = {"chapters": chapters, "chapter_timed_at": {c: "2030-04-01T00:00:00Z" for c in chapters},
                 "retimed": list(chapters), "site_build_s": 5.25, "site_built_at": "2030-04-02T00:00:00Z",
                 "total_s": sum(chapters.values()) + 5.25, "executed_at": "2030-04-02T00:00:00Z",
                 "machine": dict(machine, date="2030-04-02T00:00:00Z")}
    return {"machine": machine, "bench_s": 95.4, "settings": {"toy": {}, "probes": {}}, "book": times,
            "book_note": None if book else bench.BOOK_NOTE, "toy": toy, "probes": probes}


def test_bench_tables_without_build_times():
    t = bench.bench_tables(_synthetic_record(book=False))
    assert list(t) == ["summary", "machine", "toy", "logprobs", "dpo_step", "callback"]
    assert [label for label, _ in t["summary"].rows] == ["toy: µs per member-step", "log-probs: pairs/s",
                                                          "DPO step: ms", "ThreeDCallback: % of TRL's run"]
    assert t["summary"].cell("toy: µs per member-step", "speed-up") == 60.0
    assert t["summary"].cell("ThreeDCallback: % of TRL's run", "ours") == pytest.approx(2.8)
    assert t["machine"].cell("CPU", "value") == "Test CPU 9000" and t["machine"].cell("logical cores", "value") == 2
    assert t["machine"].cell("load average, 1/5/15 min", "value") == [1.5, 1.25, 1.0]
    assert t["dpo_step"].cell("model work alone", "pairs/s") == pytest.approx(8000 / 77.5)
    assert t["dpo_step"].cell("model work alone", "TRL's ms / this") == pytest.approx(85 / 77.5)
    for name in ("summary", "toy", "logprobs", "dpo_step", "callback"):
        assert "2030-04-05" in t[name].title, name                       # each says when it was measured
    assert "loop timed on 64 members (scaled)" in t["toy"].note
    for table in t.values():
        assert all(len(line) < 100 for line in table.text().splitlines()), table.title


def test_bench_tables_with_build_times_in_book_order():
    t = bench.bench_tables(_synthetic_record(book=True), order=all_chapters())
    assert list(t) == ["summary", "machine", "book", "toy", "logprobs", "dpo_step", "callback"]
    labels = [label for label, _ in t["book"].rows]
    order = all_chapters()
    assert labels == sorted(["dpo-margin", "llm-3d", "performance"], key=order.index) + [
        "zz-extra", "site build", "total"]
    assert t["book"].cell("llm-3d", "seconds") == 186.0 and t["book"].cell("site build", "seconds") == 5.25
    assert t["book"].cell("total", "seconds") == pytest.approx(214.5)
    assert t["book"].cell("site build", "timed (UTC)") == "2030-04-02"
    assert t["book"].cell("dpo-margin", "timed (UTC)") == "2030-04-01"
    assert t["summary"].cell("the book: chapters and site, s", "ours") == pytest.approx(214.5)
    assert "Test CPU 9000" in t["book"].note
    figures = bench.key_figures(_synthetic_record(book=True))
    assert figures["book_total_s"] == pytest.approx(214.5) and figures["book_chapters"] == 4
    assert "book_total_s" not in bench.key_figures(_synthetic_record(book=False))


def test_readme_block_quotes_the_committed_record():
    """The README's make bench figures are the rendering of book/data/bench.json (regenerate them with
    ``python -c "from prefdyn.bench import sync_readme; sync_readme()"``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    i, j = text.find(bench.README_START), text.find(bench.README_END)
    assert 0 <= i < j, "README.md: no make bench block"
    record = bench.load_bench(ROOT / "book" / "data" / "bench.json")
    assert text[i:j + len(bench.README_END)] == bench.readme_block(record)
    m = record["machine"]
    assert f"on {m['cpu']}" in text[i:j] and m["date"][:10] in text[i:j]
    block = bench.readme_block(_synthetic_record(book=True))
    assert "Test CPU 9000" in block and "| the book: chapters and site, s | 214.5 | - | - |" in block
    assert "on 2030-04-05, load average 1.5 at the start, with the build times" in " ".join(block.split())


def test_bench_file_is_checked_before_any_work(tmp_path):
    from prefdyn.chapters.catalog import get_chapter
    from prefdyn.chapters.params import ParameterError

    with pytest.raises(ParameterError, match=r"^performance: parameter 'bench_file': no such file .*nope\.json"):
        get_chapter("performance").resolve({"bench_file": "nope.json"})
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ValueError, match=r"^bench_file: .*x\.json is not a record of prefdyn bench all"):
        bench.load_bench(tmp_path / "x.json")


def test_cli_bench_all_takes_no_per_bench_option(capsys):
    assert cli.main(["bench", "all", "--members", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--members: not an option of the all benchmark" in err
    assert cli.main(["bench", "all", "--threads", "2"]) == 2
    assert cli.main(["bench", "nope"]) == 2
    assert "available: toy, probes, all" in capsys.readouterr().err
