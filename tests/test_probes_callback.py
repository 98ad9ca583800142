"""``prefdyn.probes.ThreeDCallback``: its numbers against a direct computation, its warnings on real TRL
``DPOTrainer`` runs (one built to degrade, one that does not move), its loss from TRL's config, and the
gather of several processes (two gloo processes on the CPU)."""

from __future__ import annotations

import copy
import os
import tempfile
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl", reason="the callback's TRL runs need the pinned test extra 'trl'")

from prefdyn import losses as L  # noqa: E402
from prefdyn.probes import ThreeDCallback, pair_logprobs, tokenize_pairs  # noqa: E402
from prefdyn.probes import bench as B  # noqa: E402

B._offline()
WORDS = [f"t{i}" for i in range(3, 30)]


@pytest.fixture(autouse=True)
def _restore_rng():
    """TRL seeds the global RNGs (``set_seed``); give them back."""
    state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(state)


@pytest.fixture(scope="module")
def tiny():
    tok = B._word_tokenizer(30)
    model = B._tiny_gpt2(30, 0, 2, 64, 2)
    train = B._bench_texts(tok, 64, 1, words=WORDS)
    probe = B._bench_texts(tok, 12, 7, words=WORDS)
    return tok, model, train, probe


def _state(step=0, main=True):
    return SimpleNamespace(global_step=step, is_world_process_zero=main, log_history=[])


def _moved(model, scale=0.05, seed=1):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def test_row_equals_the_direct_computation(tiny):
    tok, model, _, probe = tiny
    beta = 0.3
    cb = ThreeDCallback(probe, tokenizer=tok, loss="dpo", loss_params={"beta": beta}, every=1)
    policy = _moved(model)
    cb.on_train_begin(SimpleNamespace(bf16=False), (st := _state()), None, model=model)
    cb.on_step_end(None, (st2 := _state(step=1)), None, model=policy)
    row = cb.history[-1]
    # direct: the same pairs tokenized here, one forward each, float64 formulas written out
    tp = tokenize_pairs(tok, [d["prompt"] for d in probe], [d["chosen"] for d in probe],
                        [d["rejected"] for d in probe])
    r, p = pair_logprobs(model, tp), pair_logprobs(policy, tp)
    h = (p.chosen - r.chosen) - (p.rejected - r.rejected)
    g = beta * torch.sigmoid(-beta * h)                            # |dl/dlog pi+-| of DPO (000 eq. 6)
    want = {
        "drift_chosen": ((p.chosen - r.chosen) / p.chosen_len).mean(),
        "drift_rejected": ((p.rejected - r.rejected) / p.rejected_len).mean(),
        "margin": h.mean(),
        "reward_accuracy": (h > 0).double().mean(),
        "loss": L.pair_loss("dpo", p.chosen, p.rejected, r.chosen, r.rejected, beta=beta).mean(),
        "log_grad_ratio": torch.log((g / p.rejected.exp()).mean() / (g / p.chosen.exp()).mean()),
        "log_mass_kept": torch.log((p.chosen.exp() + p.rejected.exp()) / (r.chosen.exp() + r.rejected.exp())).mean(),
    }
    for k, v in want.items():
        assert row[k] == pytest.approx(float(v), rel=1e-9, abs=1e-12), k
    assert cb.history[0]["step"] == 0 and cb.history[0]["drift_chosen"] == 0.0
    rows = [e for e in st.log_history + st2.log_history if "3d/margin" in e]
    assert [e["step"] for e in rows] == [0, 1]
    assert set(rows[1]) == {"step", *(f"3d/{k}" for k in ("drift_chosen", "drift_rejected", "margin",
                                        "reward_accuracy", "log_grad_ratio", "tok_log_grad_ratio", "log_mass_kept"))}


def test_the_warnings_fire_once_each_on_their_conditions():
    cb = ThreeDCallback([{"prompt_ids": [3], "chosen_ids": [4], "rejected_ids": [5]}], degradation_nats=0.1,
                        drop_nats=1.0)

    def row(step, dc, dr, m):
        return {"step": step, "drift_chosen": dc, "drift_rejected": dr, "margin": m}

    seq = [row(0, 0.0, 0.0, 0.0), row(1, -0.05, -0.2, 1.0),   # chosen falls, margin rises, but above -0.1
           row(2, -0.2, -0.5, 0.9),                            # below -0.1 but the margin fell
           row(3, -0.3, -0.9, 1.5),                            # degradation
           row(4, -0.4, -1.1, 2.0),                            # drastic drop (degradation again: not repeated)
           row(5, -0.5, -1.5, 2.5)]
    fired = []
    for prev, cur in zip(seq, seq[1:]):
        for kind, msg in cb.check(cur, prev):
            cb.warnings.append({"step": cur["step"], "kind": kind, "message": msg})
            fired.append((cur["step"], kind))
    assert fired == [(3, "degradation"), (4, "drastic_drop")]
    assert cb.check(seq[0], None) == []


def _trl_run(tiny, lr, steps, every, **kw):
    tok, model, train, probe = tiny
    with tempfile.TemporaryDirectory() as tmp:
        trainer = B._trl_trainer(model, tok, train, batch=8, total=steps, optimizer="adamw", lr=lr, beta=0.1,
                                 log_every=10, seed=0, out_dir=tmp)
        cb = ThreeDCallback(probe, every=every, **kw)
        trainer.add_callback(cb)
        trainer.train()
    return cb, trainer.state.log_history


def test_a_dpo_trainer_run_built_to_degrade_warns_and_a_quiet_one_does_not(tiny, caplog):
    # lr 1e-2 on random word pairs: both responses' log-probs fall while the margin first rises
    with caplog.at_level("WARNING", logger="prefdyn.probes.callback"):
        cb, hist = _trl_run(tiny, 1e-2, 40, 5)
    assert [r["step"] for r in cb.history] == list(range(0, 41, 5))
    kinds = [w["kind"] for w in cb.warnings]
    assert sorted(kinds) == ["degradation", "drastic_drop"]
    assert sum("3d/warning" in h for h in hist) == 2
    assert sum("ThreeDCallback" in m for m in caplog.messages) == 2
    assert sum("3d/margin" in h for h in hist) == 9
    assert cb.history[-1]["drift_rejected"] < -0.5
    # lr 1e-6, 8 updates: the policy hardly moves; nothing fires
    cb, hist = _trl_run(tiny, 1e-6, 8, 4)
    assert cb.warnings == [] and not any("3d/warning" in h for h in hist)
    assert abs(cb.history[-1]["drift_chosen"]) < 1e-3


def test_the_loss_comes_from_trls_config_or_must_be_given(tiny):
    tok, model, _, probe = tiny
    cb = ThreeDCallback(probe, tokenizer=tok)
    cb.on_train_begin(SimpleNamespace(loss_type=["sigmoid"], beta=0.25, bf16=False), _state(), None, model=model)
    assert cb._loss.name == "dpo" and cb._loss_params == {"beta": 0.25}
    with pytest.raises(ValueError, match=r"^loss: the trainer's loss_type \['ipo'\]"):
        ThreeDCallback(probe, tokenizer=tok).on_train_begin(SimpleNamespace(loss_type=["ipo"], beta=0.1), _state(),
                                                            None, model=model)
    cb = ThreeDCallback(probe, tokenizer=tok, loss="ipo", loss_params={"beta": 0.1})
    cb.on_train_begin(SimpleNamespace(loss_type=["ipo"], beta=0.1, bf16=False), _state(), None, model=model)
    assert cb._loss.name == "ipo"


def test_texts_are_tokenized_with_the_trainers_tokenizer_and_bad_input_is_refused(tiny):
    tok, model, _, probe = tiny
    cb = ThreeDCallback(probe)
    assert cb.pairs is None                                     # tokenized when training begins
    cb.on_train_begin(SimpleNamespace(loss_type=["sigmoid"], beta=0.1, bf16=False), _state(), None, model=model,
                      processing_class=tok)
    assert len(cb.pairs) == len(probe)
    with pytest.raises(ValueError, match="^tokenizer: "):
        ThreeDCallback(probe).on_train_begin(SimpleNamespace(loss_type=["sigmoid"], beta=0.1), _state(), None,
                                             model=model)
    for kw, name in (({"every": 0}, "every"), ({"drop_nats": 0.0}, "drop_nats"), ({"batch_size": 0}, "batch_size"),
                     ({"loss_params": {"beta": 1.0}}, "loss_params"), ({"loss": "nope"}, "unknown loss")):
        with pytest.raises(ValueError, match=f"^{name}"):
            ThreeDCallback(probe, **kw)
    with pytest.raises(ValueError, match="^pairs: "):
        ThreeDCallback([], tokenizer=tok)


def test_only_the_main_process_records(tiny):
    tok, model, _, probe = tiny
    cb = ThreeDCallback(probe, tokenizer=tok, loss="dpo")
    st = _state(main=False)
    cb.on_train_begin(SimpleNamespace(bf16=False), st, None, model=model)
    assert cb.history == [] and st.log_history == []


def _worker(rank, world, path, out):                           # a spawned process: top level, picklable
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PREFDYN_TEST_PORT"])
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        tok = B._word_tokenizer(30)
        model = B._tiny_gpt2(30, 0, 2, 64, 2)
        probe = B._bench_texts(tok, 7, 7, words=WORDS)             # 7 pairs: uneven shares (4 and 3)
        cb = ThreeDCallback(probe, tokenizer=tok, loss="dpo", batch_size=2, every=1)
        st = _state(main=rank == 0)
        cb.on_train_begin(SimpleNamespace(bf16=False), st, None, model=model)
        cb.on_step_end(None, (st := _state(step=1, main=rank == 0)), None, model=_moved(model))
        if rank == 0:
            torch.save({"history": cb.history, "ref": cb.ref.chosen, "ref_r": cb.ref.rejected}, out)
        else:
            assert cb.history == [] and cb.ref is None and st.log_history == []
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_gather_the_probe_pairs_in_order(tiny, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["PREFDYN_TEST_PORT"] = str(s.getsockname()[1])
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, None, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    tok, model = tiny[0], B._tiny_gpt2(30, 0, 2, 64, 2)
    probe = B._bench_texts(tok, 7, 7, words=WORDS)
    cb = ThreeDCallback(probe, tokenizer=tok, loss="dpo", batch_size=2, every=1)
    cb.on_train_begin(SimpleNamespace(bf16=False), _state(), None, model=model)
    cb.on_step_end(None, _state(step=1), None, model=_moved(model))
    assert torch.allclose(got["ref"], cb.ref.chosen, rtol=0, atol=1e-5)
    assert torch.allclose(got["ref_r"], cb.ref.rejected, rtol=0, atol=1e-5)
    assert len(got["history"]) == len(cb.history) == 2
    for a, b in zip(got["history"], cb.history):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k


def test_columns_and_first_warning():
    cb = ThreeDCallback([{"prompt_ids": [3], "chosen_ids": [4], "rejected_ids": [5]}])
    assert cb.columns() == {} and cb.first_warning("degradation") is None
    cb.history = [{"step": 0, "margin": 0.0}, {"step": 5, "margin": 1.5}]
    cb.warnings = [{"step": 5, "kind": "drastic_drop", "message": "m"}]
    cols = cb.columns()
    assert list(cols) == ["step", "margin"] and cols["margin"].tolist() == [0.0, 1.5]
    assert cb.first_warning("drastic_drop") == 5 and cb.first_warning("degradation") is None
    with pytest.raises(ValueError, match="^kind: "):
        cb.first_warning("nope")
