"""prefdyn.lm.reward: the reward model on DPO's pairs, its training, DPO's implicit-reward accuracy, their
comparison over training (000 Sec. 4, Fig. 4, Fig. 11), and the ``evaluate`` hook of train_preference."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from prefdyn import losses as L  # noqa: E402
from prefdyn.lm import reward as R, scenarios as SC, task as T  # noqa: E402
from prefdyn.lm.models import load_lm  # noqa: E402
from prefdyn.probes import as_token_pairs, pair_logprobs, train_preference  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")      # tests/conftest.py


@pytest.fixture(scope="module")
def split():
    from prefdyn.lm import make_pairs

    SC.quiet()
    data = make_pairs(load_lm("arith-a"), load_lm("arith-b"), n_prompts=24, n_test=10, n_ood=10, seed=0)
    return SC.split_pairs(data, 0.25, seed=0)


@pytest.fixture(scope="module")
def tp(split):
    tok = T.make_tokenizer()
    return {s: as_token_pairs(split[s][1], tok) for s in ("train", "test")}


# ----------------------------------------------------------------------------- independent references

def _seq_reward(rm, ids) -> torch.Tensor:
    """One sequence alone, unpadded: the score head on the last hidden state (graph kept)."""
    h = rm.transformer(input_ids=torch.tensor([list(ids)])).last_hidden_state[0, -1]
    return rm.score(h)[0]


def _manual_rewards(rm, pairs):
    with torch.no_grad():
        rc = torch.stack([_seq_reward(rm, p + c) for p, c in zip(pairs.prompt, pairs.chosen)])
        rr = torch.stack([_seq_reward(rm, p + r) for p, r in zip(pairs.prompt, pairs.rejected)])
    return rc.double(), rr.double()


def _manual_logp(model, prompt, resp) -> float:
    """Sum of the response tokens' log-probs, one unpadded sequence, float64 log-softmax, a plain loop."""
    ids = list(prompt) + list(resp)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(len(prompt), len(ids)))


def _brute_accuracy(margins, ties="wrong") -> float:
    right = 0.0
    for m in margins:
        m = float(m)
        right += 1.0 if m > 0 else (0.5 if m == 0 and ties == "half" else 0.0)
    return right / len(margins)


def _batches(n, batch_size, epochs, seed):
    """The documented data order, rewritten: each epoch a permutation from one seeded generator, drop_last."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).tolist()
        out += [perm[k * batch_size:(k + 1) * batch_size] for k in range(n // batch_size)]
    return out


# ----------------------------------------------------------------------------- the reward model

def test_reward_model_is_the_policy_transformer_with_a_seeded_scalar_head():
    rm, lm = R.reward_model("arith-a", seed=3), load_lm("arith-a")
    assert type(rm).__name__ == "GPT2ForSequenceClassification" and rm.config.num_labels == 1
    assert rm.config.pad_token_id == T.PAD and not rm.training
    for k, v in lm.transformer.state_dict().items():
        assert torch.equal(rm.transformer.state_dict()[k], v), k
    w = rm.score.weight
    assert w.shape == (1, lm.config.n_embd) and w.dtype == torch.float32 and rm.score.bias is None
    assert torch.equal(w, R.reward_model(seed=3).score.weight)              # seeded
    assert not torch.equal(w, R.reward_model(seed=4).score.weight)
    assert 0.5 < float(w.detach().std()) * lm.config.n_embd ** 0.5 < 1.5    # N(0, 1/n_embd)
    assert float(R.reward_model(seed=3, init_std=0.0).score.weight.detach().abs().max()) == 0.0
    assert all(m.p == 0.0 for m in rm.modules() if isinstance(m, torch.nn.Dropout))


def test_reward_is_read_at_the_eos_of_each_sequence_alone(tp):
    rm = R.reward_model(seed=0)
    pairs = tp["train"]
    assert all(s[-1] == T.EOS for s in (*pairs.chosen, *pairs.rejected))   # the last real token is the EOS
    rc, rr = R.pair_rewards(rm, pairs, batch_size=64)
    mc, mr = _manual_rewards(rm, pairs)
    assert rc.dtype == torch.float64 and rc.shape == (len(pairs),)
    torch.testing.assert_close(rc, mc, rtol=0, atol=1e-5)
    torch.testing.assert_close(rr, mr, rtol=0, atol=1e-5)
    assert float((rc - rr).abs().max()) > 1e-3                               # the check can fail


def test_rewards_do_not_depend_on_padding_or_batch_composition(split, tp):
    rm = R.reward_model(seed=1)
    pairs = tp["train"]
    rc, rr = R.pair_rewards(rm, split["train"][1], batch_size=64)            # text pairs, the task tokenizer
    for bs, side in ((1, "right"), (3, "right"), (5, "left"), (64, "left")):
        c, r = R.pair_rewards(rm, pairs, batch_size=bs, padding_side=side)
        torch.testing.assert_close(c, rc, rtol=0, atol=1e-5)
        torch.testing.assert_close(r, rr, rtol=0, atol=1e-5)
    idx = [7, 0, 3]
    c, r = R.pair_rewards(rm, pairs.select(idx))
    torch.testing.assert_close(c, rc[idx], rtol=0, atol=1e-5)
    torch.testing.assert_close(r, rr[idx], rtol=0, atol=1e-5)
    rm.train()
    R.pair_rewards(rm, pairs)
    assert rm.training                                                       # its mode is restored


def test_pair_accuracy_counts_like_a_loop():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(101, generator=g, dtype=torch.float64)
    m[::7] = 0.0
    for ties in R.ACCURACY_TIES:
        assert R.pair_accuracy(m, ties) == pytest.approx(_brute_accuracy(m, ties), abs=1e-15)
    assert R.pair_accuracy(np.zeros(4), "wrong") == 0.0 and R.pair_accuracy(np.zeros(4), "half") == 0.5


# ----------------------------------------------------------------------------- training

def _reference_training(seed, train, evals, epochs, batch_size, lr):
    """A plain loop: one sequence at a time, unpadded; loss from prefdyn.losses; brute-force accuracies."""
    rm = R.reward_model(seed=seed).train()
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.0)
    losses, acc, eval_loss = [], [], []
    for idx in _batches(len(train), batch_size, epochs, seed):
        mc, mr = _manual_rewards(rm, evals)
        acc.append(_brute_accuracy(mc - mr))
        eval_loss.append(float(L.reward_model_loss(mc, mr).mean()))
        rc = torch.stack([_seq_reward(rm, train.prompt[i] + train.chosen[i]) for i in idx])
        rr = torch.stack([_seq_reward(rm, train.prompt[i] + train.rejected[i]) for i in idx])
        loss = L.reward_model_loss(rc, rr).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    mc, mr = _manual_rewards(rm, evals)
    return np.array(losses), np.array(acc), np.array(eval_loss), _brute_accuracy(mc - mr)


def test_training_matches_a_plain_loop_with_the_reward_model_loss(tp):
    train, test = tp["train"], tp["test"]
    run = R.train_reward_model(R.reward_model(seed=2), train, eval_pairs={"test": test}, epochs=2, batch_size=4,
                               lr=1e-3, seed=2, log_every=1)
    ref_loss, ref_acc, ref_eval_loss, ref_final = _reference_training(2, train, test, 2, 4, 1e-3)
    steps = 2 * (len(train) // 4)
    assert run.log["step"].tolist() == list(range(steps)) and run.losses.shape == (steps,)
    np.testing.assert_allclose(run.log["epoch"], np.arange(steps) / (len(train) // 4))
    np.testing.assert_allclose(run.losses, ref_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(run.log["loss"], ref_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(run.log["eval_test_loss"], ref_eval_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(run.log["eval_test_accuracy"], ref_acc)
    assert run.final["test_accuracy"] == ref_final
    assert not run.model.training                                           # returned in eval mode


def test_training_is_reproducible_and_logs_every_log_every_rows(tp):
    def go(seed):
        return R.train_reward_model(R.reward_model(seed=seed), tp["train"], eval_pairs={"tr": tp["train"]},
                                    epochs=2, batch_size=4, lr=1e-3, seed=seed, log_every=3)
    a, b, c = go(5), go(5), go(6)
    assert a.log["step"].tolist() == [0, 3, 6, 7]                           # and the last update
    assert set(a.log) == {"step", "epoch", "loss", "eval_tr_accuracy", "eval_tr_loss"}
    for k in a.log:
        np.testing.assert_array_equal(a.log[k], b.log[k])
    np.testing.assert_array_equal(a.losses, b.losses)
    assert a.final == b.final and not np.array_equal(a.losses, c.losses)


# ----------------------------------------------------------------------------- DPO's implicit reward

def test_implicit_accuracy_counts_like_a_loop(tp):
    pairs = tp["train"]
    base = load_lm("arith-a")
    ref = pair_logprobs(base, pairs, batch_size=64)
    assert R.implicit_accuracy(load_lm("arith-a"), pairs, ref) == 0.0        # policy == reference: all ties
    assert R.implicit_accuracy(load_lm("arith-a"), pairs, ref, ties="half") == 0.5
    model = load_lm("arith-a")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    brute = []
    for p, c, r in zip(pairs.prompt, pairs.chosen, pairs.rejected):
        brute.append((_manual_logp(model, p, c) - _manual_logp(base, p, c))
                     - (_manual_logp(model, p, r) - _manual_logp(base, p, r)))
    torch.testing.assert_close(R.implicit_margins(model, pairs, ref), torch.tensor(brute, dtype=torch.float64),
                               rtol=0, atol=1e-4)
    acc = R.implicit_accuracy(model, pairs, ref)
    assert acc == _brute_accuracy(brute) and 0.0 < acc < 1.0


# ----------------------------------------------------------------------------- the evaluate hook

def _with_dropout(model, p=0.1):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    return model


def test_train_preference_evaluate_hook(tp):
    train, test = tp["train"], tp["test"]
    ref = pair_logprobs(load_lm("arith-a"), test, batch_size=64)
    seen, snaps = [], {}

    def evaluate(model):
        seen.append((model.training, torch.is_grad_enabled()))
        torch.rand(1000)                    # the global RNG: must not move the training's dropout stream
        snaps[len(seen)] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"calls": len(seen), "acc": R.implicit_accuracy(model, test, ref)}

    def run(steps, ev):
        return train_preference(_with_dropout(load_lm("arith-a")), train, tokenizer=T.make_tokenizer(),
                                steps=steps, batch_size=4, lr=1e-3, log_every=2, seed=0, device="cpu",
                                progress=False, evaluate=ev)

    a, b = run(5, evaluate), run(5, None)
    np.testing.assert_array_equal(a.losses, b.losses)                        # training unchanged by the hook
    for k, v in b.log.items():
        np.testing.assert_array_equal(a.log[k], v)
    assert a.log["step"].tolist() == [0, 2, 4]
    np.testing.assert_array_equal(a.log["eval_calls"], [1, 2, 3])            # once per logged row, in order
    assert a.log["eval_acc"].dtype == np.float64 and a.log["eval_acc"][0] == 0.0  # step 0: before any update
    assert seen == [(False, False)] * 3                                      # eval mode, no gradients
    assert set(a.log) == set(b.log) | {"eval_calls", "eval_acc"}
    # the row at step t sees the weights after t updates: those of a t-update run
    two = run(2, None).model.state_dict()
    assert all(torch.equal(snaps[2][k], v) for k, v in two.items())
    assert a.log["eval_acc"][1] == R.implicit_accuracy(run(2, None).model, test, ref)


def test_train_preference_evaluate_is_checked(tp):
    kw = dict(tokenizer=T.make_tokenizer(), steps=2, batch_size=4, log_every=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="^evaluate: expected None or a callable"):
        train_preference(object(), tp["train"], evaluate="acc", **kw)      # before the model is looked at
    with pytest.raises(ValueError, match="^evaluate: expected a mapping"):
        train_preference(load_lm("arith-a"), tp["train"], evaluate=lambda m: [1.0], **kw)
    with pytest.raises(ValueError, match="^evaluate: expected a number for key 'x'"):
        train_preference(load_lm("arith-a"), tp["train"], evaluate=lambda m: {"x": "high"}, **kw)
    calls = []

    def shifty(model):
        calls.append(1)
        return {f"k{len(calls)}": 1.0}

    with pytest.raises(ValueError, match="^evaluate: expected the keys"):
        train_preference(load_lm("arith-a"), tp["train"], evaluate=shifty, **kw)


# ----------------------------------------------------------------------------- the comparison

def test_compare_rm_dpo_arrays_and_summary(split, tp):
    res = R.compare_rm_dpo(split, 1, seeds=[0, 1], epochs=2, batch_size=4, rm_lr=1e-3, dpo_lr=1e-4, log_every=3)
    per = len(tp["train"]) // 4
    assert res.steps.tolist() == [0, 3, 6, 2 * per] and res.config["updates_per_epoch"] == per == 4
    np.testing.assert_allclose(res.epoch, res.steps / per)
    n_eval = len(tp["test"])
    assert res.config["n_train_eval"] == n_eval
    for s in R.RM_DPO_SIDES:
        assert res.accuracy[s].shape == res.loss[s].shape == (2, 2, 4)
        np.testing.assert_array_equal(res.accuracy[s][1, :, 0], 0.5)       # DPO at step 0: all ties, "half"
        np.testing.assert_allclose(res.loss[s][1, :, 0], np.log(2.0), rtol=1e-12)
    assert res.batch_loss.shape == (2, 2, 2 * per)
    # the reward model's rows are those of train_reward_model on the same pairs (train side: the first n_test)
    ev = {"train": tp["train"].select(range(n_eval)), "test": tp["test"]}
    rr = R.train_reward_model(R.reward_model(seed=1), tp["train"], eval_pairs=ev, epochs=2, batch_size=4,
                              lr=1e-3, seed=1, log_every=3, ties="half")
    for s in R.RM_DPO_SIDES:
        keep = np.isin(rr.log["step"], res.steps)
        want = [*rr.log[f"eval_{s}_accuracy"][keep], rr.final[f"{s}_accuracy"]]
        np.testing.assert_array_equal(res.accuracy[s][0, 1], want)
        mc, mr = _manual_rewards(R.reward_model(seed=1), ev[s])
        assert res.accuracy[s][0, 1, 0] == _brute_accuracy(mc - mr, "half")
    np.testing.assert_array_equal(res.batch_loss[0, 1], rr.losses)
    # DPO: train_preference's own run (its reference computed by itself), the same losses bit for bit
    dpo = train_preference(load_lm("arith-a"), tp["train"], tokenizer=T.make_tokenizer(), loss_params={"beta": 0.1},
                           steps=2 * per, batch_size=4, lr=1e-4, log_every=3, seed=1, device="cpu", progress=False)
    np.testing.assert_array_equal(res.batch_loss[1, 1], dpo.losses)
    # the summary, recomputed by hand
    S = res.summary()
    for m, name in enumerate(R.RM_DPO_METHODS):
        a = res.accuracy["test"][m]
        fl = [np.mean([abs(a[k, t + 1] - a[k, t]) for t in range(3)]) for k in range(2)]
        assert S[name]["test"]["fluctuation"]["mean"] == pytest.approx(np.mean(fl), abs=1e-12)
        ex = [(sum(abs(a[k, t + 1] - a[k, t]) for t in range(3)) - abs(a[k, -1] - a[k, 0])) / 3 for k in range(2)]
        assert S[name]["test"]["excess_variation"]["mean"] == pytest.approx(np.mean(ex), abs=1e-12)
        at4 = a[:, 1] + (a[:, 2] - a[:, 1]) / 3                              # step 4 = end of epoch 1, interpolated
        assert S[name]["test"]["epoch_gain"][0]["mean"] == pytest.approx(np.mean(at4 - a[:, 0]), abs=1e-12)
        assert S[name]["test"]["epoch_gain"][1]["mean"] == pytest.approx(np.mean(a[:, 3] - at4), abs=1e-12)
        assert S[name]["test"]["final_accuracy"]["mean"] == pytest.approx(a[:, -1].mean(), abs=1e-12)
        assert S[name]["test"]["end_std_over_seeds"] == pytest.approx(np.std(a[:, -1], ddof=1), abs=1e-12)
    d = res.accuracy["train"][1, :, -1] - res.accuracy["train"][0, :, -1]
    assert S["dpo_minus_rm"]["train"]["final_accuracy"]["mean"] == pytest.approx(d.mean(), abs=1e-12)


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_raise_one_line_errors_naming_the_parameter(split, tp, monkeypatch):
    rm = R.reward_model(seed=0)
    pairs = tp["train"]
    ref = pair_logprobs(load_lm("arith-a"), pairs, batch_size=64)
    cases = [
        ("seed", lambda: R.reward_model(seed=-1)),
        ("policy", lambda: R.reward_model("no-such-model")),
        ("init_std", lambda: R.reward_model(init_std=-1.0)),
        ("batch_size", lambda: R.pair_rewards(rm, pairs, batch_size=0)),
        ("padding_side", lambda: R.pair_rewards(rm, pairs, padding_side="middle")),
        ("pairs", lambda: R.pair_rewards(rm, [])),
        ("ties", lambda: R.pair_accuracy([1.0], "draw")),
        ("margin", lambda: R.pair_accuracy([])),
        ("epochs", lambda: R.train_reward_model(rm, pairs, epochs=0)),
        ("lr", lambda: R.train_reward_model(rm, pairs, lr=0.0)),
        ("batch_size", lambda: R.train_reward_model(rm, pairs, batch_size=len(pairs) + 1)),
        ("eval_pairs", lambda: R.train_reward_model(rm, pairs, eval_pairs=[pairs])),
        ("train_pairs", lambda: R.train_reward_model(rm, [{"prompt": "1+1="}])),
        ("rm", lambda: R.train_reward_model(load_lm("arith-a"), pairs)),
        ("ref", lambda: R.implicit_accuracy(rm, pairs, ref.select(torch.arange(3)))),
        ("refs", lambda: R.implicit_evaluator({"a": pairs}, {"b": ref})),
        ("scenario", lambda: R.compare_rm_dpo(split, 9)),
        ("split", lambda: R.compare_rm_dpo({"train": {}}, 1)),
        ("seeds", lambda: R.compare_rm_dpo(split, 1, seeds=[])),
        ("seeds", lambda: R.compare_rm_dpo(split, 1, seeds=[0, 0])),
        ("seeds", lambda: R.compare_rm_dpo(split, 1, seeds=[-1])),
        ("beta", lambda: R.compare_rm_dpo(split, 1, beta=-1.0)),
        ("rm_lr", lambda: R.compare_rm_dpo(split, 1, rm_lr=0)),
        ("dpo_lr", lambda: R.compare_rm_dpo(split, 1, dpo_lr="fast")),
        ("n_train_eval", lambda: R.compare_rm_dpo(split, 1, n_train_eval=0)),
        ("batch_size", lambda: R.compare_rm_dpo(split, 1, batch_size=10_000)),
        ("ties", lambda: R.compare_rm_dpo(split, 1, ties="draw")),
        ("device", lambda: R.compare_rm_dpo(split, 1, device="tpu")),
    ]

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    for name, call in cases:
        with monkeypatch.context() as mp:
            if name not in ("policy", "init_std", "seed"):
                mp.setattr(R, "load_lm", no_model)
            with pytest.raises(ValueError) as e:
                call()
        msg = str(e.value)
        assert msg.startswith(f"{name}") and "\n" not in msg, (name, msg)
