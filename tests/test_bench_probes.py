"""Tests of ``prefdyn bench probes`` (:func:`prefdyn.probes.bench.bench_probes`): at a tiny size the bench runs,
returns the documented keys with consistent numbers, our DPO losses equal TRL's at every update, our
batched log-probs equal the one-at-a-time loop, and bad input is a one-line error before any work.
No timing assertion (the machine is shared): only that times are positive and the reported figures are
the ones derived from them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from prefdyn import bench, cli
from prefdyn import probes as pb
from prefdyn.probes import bench as probes_bench

pytest.importorskip("trl", reason="the probes benchmark compares with the pinned test extra 'trl'")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

TINY = dict(pairs=12, steps=3, batch=4, warmup=2, repeats=2, n_layer=1, n_embd=16, n_head=2, threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "sub" / "probes.json"
    return probes_bench.bench_probes(out=out, **TINY), out


def test_keys_json_and_derived_numbers(tiny):
    r, out = tiny
    assert tuple(r) == probes_bench.PROBES_KEYS
    assert json.loads(out.read_text(encoding="utf-8")) == r         # the JSON is the returned dict, exactly
    assert (r["n_pairs"], r["batch"], r["steps"], r["warmup"], r["repeats"]) == (12, 4, 3, 2, 2)
    assert r["optimizer"] == "adamw" and r["lr"] == 1e-3 and r["torch_threads"] == 1
    assert r["model"].startswith("gpt2(n_layer=1, n_embd=16")
    for side in ("ours", "trl", "floor"):
        ms = r[f"{side}_repeats_ms"]
        assert len(ms) == 2 and all(t > 0 for t in ms)
        assert r[f"{side}_ms_per_step"] == pytest.approx(float(np.median(ms)), rel=1e-12)
    assert r["ours_pairs_per_s"] == pytest.approx(1e3 * 4 / r["ours_ms_per_step"], rel=1e-12)
    assert r["trl_pairs_per_s"] == pytest.approx(1e3 * 4 / r["trl_ms_per_step"], rel=1e-12)
    assert r["train_ratio"] == pytest.approx(r["ours_pairs_per_s"] / r["trl_pairs_per_s"], rel=1e-12)
    assert r["ours_overhead_ms"] == pytest.approx(r["ours_ms_per_step"] - r["floor_ms_per_step"], rel=1e-12)
    assert r["logprob_ratio"] == pytest.approx(r["logprob_loop_s"] / r["logprob_batched_s"], rel=1e-12)
    assert r["logprob_batched_pairs_per_s"] == pytest.approx(12 / r["logprob_batched_s"], rel=1e-12)
    assert r["logprob_loop_tokens_per_s"] == pytest.approx(12 * r["tokens_per_pair"] / r["logprob_loop_s"], rel=1e-12)
    # the callback: one probe of 12 held-out pairs, amortised over the callback's default interval
    from prefdyn.probes.callback import DEFAULT_EVERY

    assert (r["callback_every"], r["callback_pairs"], len(r["callback_repeats_ms"])) == (DEFAULT_EVERY, 12, 2)
    assert r["callback_probe_ms"] == pytest.approx(float(np.median(r["callback_repeats_ms"])), rel=1e-12)
    assert r["callback_overhead"] == pytest.approx(
        r["callback_probe_ms"] / (DEFAULT_EVERY * r["trl_ms_per_step"]), rel=1e-12)


def test_token_counts_are_the_pairs(tiny):
    """The documented sizes (prompts 8-16 tokens, responses 8-32 with EOS) and the token counts, recomputed
    from the same seeded pairs tokenized independently (word by word)."""
    r, _ = tiny
    tok = probes_bench._word_tokenizer(30)
    data = probes_bench._bench_texts(tok, 12, TINY.get("seed", 0) + 1, words=[f"t{i}" for i in range(3, 30)])
    ids = [[int(w[1:]) for w in d["prompt"].split()] for d in data]
    ch = [[int(w[1:]) for w in d["chosen"].split()] + [1] for d in data]
    rj = [[int(w[1:]) for w in d["rejected"].split()] + [1] for d in data]
    real = sum(2 * len(p) + len(c) + len(q) for p, c, q in zip(ids, ch, rj))
    assert r["tokens_per_pair"] == pytest.approx(real / 12, rel=1e-12)
    padded = sum(2 * 4 * max(len(p) + max(len(c), len(q)) for p, c, q in zip(ids[k:k + 4], ch[k:k + 4], rj[k:k + 4]))
                 for k in range(0, 12, 4))
    assert r["padded_tokens_per_pair"] == pytest.approx(padded / 12, rel=1e-12)
    assert 8 <= r["prompt_tokens"][0] <= r["prompt_tokens"][1] <= 16
    assert 8 <= r["response_tokens"][0] <= r["response_tokens"][1] <= 32


def test_losses_equal_trls_and_logprobs_equal_the_loop(tiny):
    r, _ = tiny
    assert r["same_token_ids"] is True
    assert r["loss_first"] == pytest.approx(math.log(2.0), rel=1e-12)    # the reference is the initial policy
    assert r["loss_last"] != r["loss_first"]                              # the weights moved
    assert 0.0 <= r["loss_max_abs_diff"] < 1e-5                           # float32 (TRL's fused head)
    assert 0.0 <= r["logprob_max_abs_diff"] < 1e-4                        # float32, sums of up to 32 tokens


def test_the_runs_compared_are_equal_step_by_step_and_can_differ():
    """The bench's two training runs, directly: the same losses at every update; with another beta on our
    side they differ (the comparison can fail)."""
    tok = probes_bench._word_tokenizer(30)
    init = probes_bench._tiny_gpt2(30, 0, 1, 16, 2)
    data = probes_bench._bench_texts(tok, 8, 1, words=[f"t{i}" for i in range(3, 30)])
    kw = dict(batch=4, total=4, optimizer="sgd", lr=0.5, beta=0.5, log_every=2, seed=0)
    stamps, ours = probes_bench._our_run(init, tok, data, **kw)
    t_stamps, theirs, ids = probes_bench._trl_run(init, tok, data, **kw)
    assert len(stamps) == len(t_stamps) == 4 and len(ours) == len(theirs) == 4
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert abs(ours[-1] - ours[0]) > 1e-3
    _, other = probes_bench._our_run(init, tok, data, **{**kw, "beta": 0.6})
    assert np.abs(other[1:] - theirs[1:]).max() > 1e-4


def test_loop_logprobs_is_independent_and_equal():
    torch.manual_seed(0)
    model = probes_bench._tiny_gpt2(30, 3, 2, 16, 2).to(torch.float64)
    tp = pb.token_pairs([[3, 4, 5], [6]], [[7, 8], [9, 10, 11]], [[12], [13, 14]])
    lc, lr = probes_bench._loop_logprobs(model, tp)
    got = pb.pair_logprobs(model, tp, batch_size=2)
    torch.testing.assert_close(lc, got.chosen, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lr, got.rejected, rtol=1e-10, atol=1e-12)
    # by hand, pair 1 chosen: log p(9 | 6) + log p(10 | 6 9) + log p(11 | 6 9 10)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([[6, 9, 10, 11]])).logits[0], -1)
    assert float(lc[1]) == pytest.approx(float(logp[0, 9] + logp[1, 10] + logp[2, 11]), rel=1e-12)


@pytest.mark.parametrize("kw, match", [
    (dict(pairs=0), "pairs: expected an integer >= 1, got 0"),
    (dict(pairs=4, batch=5), r"batch: expected an integer in \[1, 4\], got 5"),
    (dict(steps=0), "steps: expected an integer >= 1"),
    (dict(threads=0), "threads: expected an integer >= 1"),
    (dict(optimizer="adam"), "optimizer: expected one of"),
    (dict(lr=0.0), "lr: expected"),
    (dict(callback_every=0), "callback_every: expected an integer >= 1, got 0"),
    (dict(n_embd=10, n_head=3), "n_head: expected a divisor of n_embd=10, got 3"),
    (dict(model_path="/nonexistent"), "model_path: expected a local Hugging Face model directory"),
])
def test_bad_input_is_a_one_line_error(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        probes_bench.bench_probes(**kw)
    assert "\n" not in str(e.value)


@pytest.fixture
def no_bench(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("ran although the input was bad")

    monkeypatch.setattr(probes_bench, "bench_probes", boom)
    monkeypatch.setattr(bench, "bench", boom)


@pytest.mark.parametrize("args, needle", [
    (["--pairs", "0"], "--pairs: expected an integer >= 1, got 0"),
    (["--pairs", "4", "--batch", "8"], "--batch: expected an integer in [1, 4], got 8"),
    (["--steps", "0"], "--steps: expected an integer >= 1"),
    (["--threads", "0"], "--threads: expected an integer >= 1"),
    (["--repeats", "0"], "--repeats: expected an integer >= 1"),
    (["--optimizer", "adam"], "--optimizer: expected one of"),
    (["--batch", "x"], "argument --batch: invalid int value: 'x'"),
    (["--model-path", "/nonexistent"], "--model-path: expected a local Hugging Face model directory"),
    (["--members", "8"], "--members: not an option of the probes benchmark"),
    (["--out", ""], "--out: expected a JSON file"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, no_bench, args, needle):
    try:
        code = cli.main(["bench", "probes", *args])
    except SystemExit as exc:                                            # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("prefdyn: error: ")
    assert needle in lines[0]


def test_cli_probes_options_are_refused_by_the_toy_bench(capsys, no_bench):
    code = cli.main(["bench", "toy", "--pairs", "8"])
    _, err = capsys.readouterr()
    assert code == 2 and "--pairs: not an option of the toy benchmark" in err


def test_cli_prints_every_number_and_writes_json(tmp_path, capsys, monkeypatch):
    fake = {k: 1.5 for k in probes_bench.PROBES_KEYS}
    fake.update(ours_repeats_ms=[1.0, 2.0], model="m", same_token_ids=True)
    seen = {}

    def run(**kw):
        seen.update(kw)
        return fake

    monkeypatch.setattr(probes_bench, "bench_probes", run)
    out = tmp_path / "p.json"
    code = cli.main(["bench", "probes", "--pairs", "16", "--steps", "5", "--batch", "4", "--optimizer", "sgd",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert seen == dict(pairs=16, steps=5, batch=4, threads=1, repeats=3, optimizer="sgd", model_path=None, out=str(out))
    for k in probes_bench.PROBES_KEYS:
        assert f"\n{k} = " in "\n" + printed
    assert "ours_repeats_ms = [1, 2]" in printed and "summary: " in printed and f"wrote {out}" in printed


def test_model_path_benches_a_local_model_directory(tmp_path):
    """``model_path``: a local Hugging Face directory (here the tiny GPT-2 and its tokenizer, saved) is
    loaded, its tokenizer builds the pairs, and the run is the in-memory one's (same weights, same words)."""
    probes_bench._offline()
    model = probes_bench._tiny_gpt2(30, 0, 1, 16, 2)
    model.save_pretrained(tmp_path)
    probes_bench._word_tokenizer(30).save_pretrained(tmp_path)
    kw = dict(pairs=8, steps=2, batch=4, warmup=1, repeats=1, threads=1)
    r = probes_bench.bench_probes(model_path=tmp_path, **kw)
    ref = probes_bench.bench_probes(n_layer=1, n_embd=16, n_head=2, **kw)
    assert r["model"] == str(tmp_path) and r["n_params"] == ref["n_params"] and r["same_token_ids"]
    assert r["tokens_per_pair"] == ref["tokens_per_pair"]
    assert r["loss_last"] == pytest.approx(ref["loss_last"], rel=1e-6) and r["loss_max_abs_diff"] < 1e-5
