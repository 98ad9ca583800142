"""Tests of :mod:`prefdyn.probes`: log-probs, gradient probes and the training loop on tiny causal LMs.

Nothing is downloaded: the models are 2-layer ``LlamaForCausalLM`` / ``GPT2LMHeadModel`` built from their
configs (hidden size 16, a 20-token vocabulary, float64 unless a test says otherwise, dropout 0) and the
tokenizer is a word-level ``tokenizers`` model built in memory, as in ``tests/test_trl_peer.py``.

Independent computations the library is compared with:

* a slow reference: each (prompt, response) alone, unpadded, through the model, ``log_softmax`` in
  float64, summed over the response (:func:`_slow_logprobs`);
* finite differences of the per-pair loss (the gradient probes), and 000 Cor. 1 (for DPO
  ``|dl/dpi-| / |dl/dpi+| = pi+/pi-``);
* a hand-written DPO step (the slow log-probs, ``pair_loss(...).mean()``, autograd, ``w - lr g``);
* TRL 1.16 (pinned test extra): its sequence log-probs, its per-step DPO losses (the first is ln 2) and
  the weights after a short ``DPOTrainer`` run with the same data, batch, optimiser and seed.
"""

from __future__ import annotations

import copy
import json
import math
import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from prefdyn import losses as L  # noqa: E402
from prefdyn import probes as pb  # noqa: E402
from prefdyn import records  # noqa: E402

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

VOCAB = 20
PAD, EOS, UNK = 0, 1, 2
F64 = dict(rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- tiny models and data
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models' tensors are a few kB: intra-op threads only add synchronisation on a shared
    machine (as :class:`prefdyn.device.cpu_settings` notes). One thread here, restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _llama(seed: int = 0, dtype=torch.float64, lm_head_std: float = 1.0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS)
    m = transformers.LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():      # lm_head_std=1: log-probs spread far from -log V, a non-trivial test
        m.lm_head.weight.normal_(0.0, lm_head_std)
    return m.eval()


def _gpt2(seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=2, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=PAD,
                                  eos_token_id=EOS, bos_token_id=EOS)
    return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


MODELS = {"llama": _llama, "gpt2": _gpt2}


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK, **{f"t{i}": i for i in range(3, VOCAB)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>",
                                                unk_token="<unk>")


def _random_pairs(seed: int, n: int, prompt=(1, 4), resp=(1, 6)) -> pb.TokenPairs:
    gen = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        k = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return torch.randint(3, VOCAB, (k,), generator=gen).tolist()

    return pb.token_pairs([ids(*prompt) for _ in range(n)], [ids(*resp) for _ in range(n)],
                          [ids(*resp) for _ in range(n)])


def _text_pairs(seed: int, n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)

    def text(lo, hi):
        k = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return " ".join(f"t{int(i)}" for i in torch.randint(3, VOCAB, (k,), generator=gen))

    return [{"prompt": text(1, 3), "chosen": " " + text(1, 4), "rejected": " " + text(1, 4)} for _ in range(n)]


def _slow_logprobs(model, prompt, resp) -> tuple[torch.Tensor, torch.Tensor]:
    """One (prompt, response) alone, no padding: per-token log-probs (float64) and their sum."""
    x = torch.tensor([list(prompt) + list(resp)])
    logp = torch.log_softmax(model(input_ids=x).logits[0].to(torch.float64), dim=-1)
    k = len(prompt)
    tok = logp[k - 1:k - 1 + len(resp)].gather(-1, torch.tensor(resp)[:, None]).squeeze(-1)
    return tok, tok.sum()


def _slow_pairs(model, pairs: pb.TokenPairs):
    with torch.no_grad():
        c = [_slow_logprobs(model, p, r) for p, r in zip(pairs.prompt, pairs.chosen)]
        r = [_slow_logprobs(model, p, q) for p, q in zip(pairs.prompt, pairs.rejected)]
    return c, r


class _Counter:
    """Counts the model's forward calls (a forward pre-hook)."""

    def __init__(self, model):
        self.n = 0
        self.h = model.register_forward_pre_hook(lambda *a: setattr(self, "n", self.n + 1))

    def remove(self):
        self.h.remove()


# ----------------------------------------------------------------------------- log-probs
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_logprobs_equal_the_slow_reference(arch):
    model, pairs = MODELS[arch](1), _random_pairs(2, 9)
    got = pb.pair_logprobs(model, pairs, batch_size=4)
    c, r = _slow_pairs(model, pairs)
    for side, ref, sums, toks, lens in (("chosen", c, got.chosen, got.chosen_tokens, got.chosen_len),
                                       ("rejected", r, got.rejected, got.rejected_tokens, got.rejected_len)):
        torch.testing.assert_close(sums, torch.stack([s for _, s in ref]), **F64)
        assert lens.tolist() == [len(t) for t, _ in ref]
        for i, (t, _) in enumerate(ref):
            torch.testing.assert_close(toks[i, :len(t)], t, **F64)
            assert bool((toks[i, len(t):] == 0).all())
    torch.testing.assert_close(got.chosen_mean, got.chosen / got.chosen_len, **F64)
    assert float(got.chosen.min()) < -10.0 and float(got.chosen_tokens.min()) < -3.0   # far from -log V


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padding_side_batch_size_and_composition_change_nothing(arch, dtype):
    model, pairs = MODELS[arch](3, dtype=dtype), _random_pairs(4, 10, prompt=(1, 6), resp=(1, 7))
    tol = F64 if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    base = pb.pair_logprobs(model, pairs, batch_size=10, padding_side="right")
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    inv = torch.argsort(perm)
    for bs, side in ((1, "right"), (3, "left"), (4, "right"), (10, "left")):
        got = pb.pair_logprobs(model, pairs.select(perm), batch_size=bs, padding_side=side).select(inv)
        for f in ("chosen", "rejected", "chosen_tokens", "rejected_tokens"):
            a, b = getattr(base, f), getattr(got, f)
            w = min(a.shape[1], b.shape[1]) if a.dim() == 2 else None
            torch.testing.assert_close(b[:, :w] if w else b, a[:, :w] if w else a, **tol)


def test_without_position_ids_left_padding_would_change_the_result():
    """The check above can fail: the same left-padded batch with the model's default positions (0..T-1
    over the padding) gives other log-probs, which is why :func:`collate` passes position ids. GPT-2's
    learned absolute positions show it (Llama's rotary embeddings see only relative positions, so a shift
    moves its log-probs by rounding alone)."""
    model, pairs = _gpt2(3), _random_pairs(4, 6, prompt=(1, 6), resp=(1, 7))
    b = pb.collate(pairs, PAD, "left")
    with torch.no_grad():
        ours = pb.forward_logprobs(model, b).sums
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].double()
        tok = torch.log_softmax(logits, -1).gather(-1, b.targets[..., None]).squeeze(-1)
        default = torch.where(b.scored, tok, 0.0).sum(-1)
    assert float((ours - default).abs().max()) > 1e-3


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_gradients_through_a_left_padded_batch_are_the_slow_gradients(arch):
    """d(sum of the batch's sequence log-probs)/d(weights) with left padding == the sum of the slow,
    unpadded per-sequence gradients (and finite: padded rows cannot leak NaNs into the backward pass)."""
    model, pairs = MODELS[arch](5), _random_pairs(6, 5, prompt=(1, 5), resp=(1, 5))
    params = list(model.parameters())
    sl = pb.forward_logprobs(model, pb.collate(pairs, PAD, "left"))
    g_batch = torch.autograd.grad(sl.sums.sum(), params)
    total = sum(_slow_logprobs(model, p, r)[1] for p, r in
                list(zip(pairs.prompt, pairs.chosen)) + list(zip(pairs.prompt, pairs.rejected)))
    g_slow = torch.autograd.grad(total, params)
    for a, b in zip(g_batch, g_slow):
        assert bool(torch.isfinite(a).all())
        torch.testing.assert_close(a, b, **F64)


def test_logits_to_keep_is_used_and_changes_nothing():
    """Long prompts: the LM head runs from the first scored position only (``logits_to_keep``)."""
    model, pairs = _llama(7), _random_pairs(8, 4, prompt=(6, 9), resp=(1, 3))
    seen = {}
    h = model.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    try:
        got = pb.pair_logprobs(model, pairs, batch_size=4)
    finally:
        h.remove()
    assert 0 < seen["logits_to_keep"] < seen["input_ids"].shape[1]
    c, _ = _slow_pairs(model, pairs)
    torch.testing.assert_close(got.chosen, torch.stack([s for _, s in c]), **F64)


def test_bf16_autocast_with_the_lm_head_in_float32():
    """Under bf16 autocast (here on the CPU; CUDA in training) the LM head runs in float32: its log-probs
    are closer to the float32 model's than with a bf16 head, and the head is restored afterwards."""
    model, pairs = _llama(31, dtype=torch.float32), _random_pairs(32, 6, resp=(3, 6))
    b = pb.collate(pairs, PAD)
    with torch.no_grad():
        exact = pb.forward_logprobs(model, b).sums
        f32 = pb.forward_logprobs(model, b, autocast=torch.bfloat16).sums
        bf = pb.forward_logprobs(model, b, autocast=torch.bfloat16, fp32_head=False).sums
    err32, err16 = float((f32 - exact).abs().max()), float((bf - exact).abs().max())
    assert 0 < err32 < err16 / 2 and err16 < 1.0
    assert "forward" not in model.lm_head.__dict__


# ----------------------------------------------------------------------------- pairs
def test_truncation_keep_start_and_keep_end():
    P, C, R = [[3, 4, 5, 6]], [[7, 8, 9]], [[10, 11]]
    ks = pb.token_pairs(P, C, R, max_length=6)
    assert ks.prompt == ((3, 4, 5, 6),) and ks.chosen == ((7, 8),) and ks.rejected == ((10, 11),)
    ke = pb.token_pairs(P, C, R, max_length=6, truncation="keep_end")
    assert ke.prompt == ((4, 5, 6),) and ke.chosen == ((7, 8, 9),) and ke.rejected == ((10, 11),)
    ke2 = pb.token_pairs(P, [[7, 8, 9, 12, 13, 14, 15]], R, max_length=4, truncation="keep_end")
    assert ke2.prompt == ((6,),) and ke2.chosen == ((7, 8, 9),) and ke2.rejected == ((10, 11),)
    with pytest.raises(ValueError, match=r"^chosen\[0\]: the response has zero tokens after truncation"):
        pb.token_pairs(P, C, R, max_length=4)


@pytest.mark.parametrize(("args", "kw", "match"), [
    (([], [], []), {}, r"^pairs: expected at least one preference pair"),
    (([[3]], [[4]], []), {}, r"^pairs: prompt, chosen and rejected must have equal lengths"),
    (([[3]], [[]], [[4]]), {}, r"^chosen\[0\]: expected a response of at least one token"),
    (([[]], [[4]], [[5]]), {}, r"^prompt\[0\]: expected at least one token"),
    (([[3]], [[4.5]], [[5]]), {}, r"^chosen\[0\]: expected non-negative integer token ids"),
    (([[3]], [[4]], [[5]]), {"truncation": "middle"}, r"^truncation: expected one of keep_start, keep_end"),
    (([[3]], [[4]], [[5]]), {"max_length": 1}, r"^max_length: expected an integer >= 2"),
])
def test_token_pairs_bad_input(args, kw, match):
    with pytest.raises(ValueError, match=match) as e:
        pb.token_pairs(*args, **kw)
    assert "\n" not in str(e.value)


def test_tokenize_pairs_as_trl(tokenizer):
    tp = pb.tokenize_pairs(tokenizer, ["t3 t4"], [" t5 t6"], [" t7"])
    assert tp.prompt == ((3, 4),) and tp.chosen == ((5, 6, EOS),) and tp.rejected == ((7, EOS),)
    assert pb.tokenize_pairs(tokenizer, ["t3"], [" t5<eos>"], [" t7"], add_eos=False).chosen == ((5, EOS),)


# ----------------------------------------------------------------------------- gradient probes
def _fd(fn, x, eps=1e-6):
    return (fn(x + eps) - fn(x - eps)) / (2 * eps)


def _logp_points(n=16, seed=0, low=-30.0):
    gen = torch.Generator().manual_seed(seed)
    u = lambda: torch.rand(n, generator=gen, dtype=torch.float64) * low  # noqa: E731
    return u(), u(), u(), u(), torch.randint(1, 40, (n,), generator=gen).to(torch.float64), \
        torch.randint(1, 40, (n,), generator=gen).to(torch.float64)


def _hinge(logp_chosen, logp_rejected, ref_chosen, ref_rejected, margin=2.0):
    return torch.relu(margin - (logp_chosen - ref_chosen) + (logp_rejected - ref_rejected))


@pytest.mark.parametrize("loss", [*L.LOSS_NAMES, _hinge])
def test_gradient_probes_against_finite_differences(loss):
    lc, lr, rc, rr, nc, nr = _logp_points(seed=1)
    lo = L.get(loss)
    params = lo.defaults if lo.name not in ("slic",) else {"delta": 40.0, "eta": 0.1}   # away from the kink
    pr = pb.gradient_probes(loss, lc, lr, rc, rr, nc, nr, **params)
    f = lambda c, r: lo.fn(c, r, rc, rr, **params)  # noqa: E731
    gc, gr = _fd(lambda x: f(x, lr), lc), _fd(lambda x: f(lc, x), lr)
    if lo.name == "nbdpo":   # its lambda is a detached gradient weight: the value is DPO's, the gradient is not
        gc = gc * L.nbdpo_lambda(lc, lr, clip=params["clip"], symmetric=params["symmetric"])
    if lo.name in ("nbdpo_v2", "bdpo"):   # detached weights: finite differences see their variation too
        gc, gr = L.logprob_grads(lo, lc, lr, rc, rr, **params)
    torch.testing.assert_close(pr.dlogp_chosen, gc, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(pr.dlogp_rejected, gr, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(pr.loss, f(lc, lr), **F64)
    # probability space, log: |dl/dpi| = |dl/dlog pi| / pi
    torch.testing.assert_close(pr.log_grad_chosen, torch.log(gc.abs() / lc.exp()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pr.log_grad_ratio, pr.log_grad_rejected - pr.log_grad_chosen, equal_nan=True, **F64)
    both_zero = (gc == 0) & (gr == 0)             # a hinge past its margin: no gradient, the ratio is 0/0
    assert torch.equal(torch.isnan(pr.log_grad_ratio), both_zero)
    # per-token mean m = log pi / L, p = exp(m): dl/dm by finite differences of l(L m)
    gm = _fd(lambda m: f(m * nc, lr), lc / nc)
    if lo.name == "nbdpo":
        gm = gm * L.nbdpo_lambda(lc, lr, clip=params["clip"], symmetric=params["symmetric"])
    if lo.name in ("nbdpo_v2", "bdpo"):
        gm = gc * nc
    torch.testing.assert_close(pr.tok_dlogp_chosen, gm, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(pr.tok_log_grad_chosen, torch.log(gm.abs() / (lc / nc).exp()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pr.drift_chosen, (lc - rc) / nc, **F64)
    torch.testing.assert_close(pr.margin, (lc - rc) - (lr - rr), **F64)


def test_dpo_gradient_ratio_is_pi_chosen_over_pi_rejected():
    """000 Cor. 1: for DPO |dl/dpi-| / |dl/dpi+| = pi+/pi-, in log space even where pi underflows."""
    lc = torch.tensor([-3.0, -800.0, -2e4, -50.0], dtype=torch.float64)
    lr = torch.tensor([-5.0, -1500.0, -1e4, -50.0], dtype=torch.float64)
    ones = torch.ones(4, dtype=torch.float64)
    pr = pb.gradient_probes("dpo", lc, lr, lc + 1.0, lr - 2.0, 10 * ones, 20 * ones, beta=0.1)
    torch.testing.assert_close(pr.log_grad_ratio, lc - lr, **F64)
    assert bool(torch.isfinite(pr.log_grad_chosen).all() and torch.isfinite(pr.tok_log_grad_ratio).all())


def test_probe_row_against_numpy():
    lc, lr, rc, rr, nc, nr = _logp_points(seed=2)
    pr = pb.gradient_probes("ipo", lc, lr, rc, rr, nc, nr, beta=0.5)
    row = pb.probe_row(pr, lc, lr, nc, nr)
    g, c = pr.dlogp_rejected.numpy(), lr.numpy()
    assert row["log_grad_rejected"] == pytest.approx(math.log(np.mean(np.abs(g) / np.exp(c))), rel=1e-12)
    assert row["dpi_rejected"] == pytest.approx(np.mean(g / np.exp(c)), rel=1e-12)
    m, gm = (lc / nc).numpy(), (pr.dlogp_chosen * nc).numpy()
    assert row["tok_log_grad_chosen"] == pytest.approx(math.log(np.mean(np.abs(gm) / np.exp(m))), rel=1e-12)
    assert row["token_log_chosen"] == pytest.approx(float((lc / nc).mean()), rel=1e-12)
    assert row["loss"] == pytest.approx(float(L.pair_loss("ipo", lc, lr, rc, rr, beta=0.5).mean()), rel=1e-12)
    h = (lc - rc) - (lr - rr)
    assert row["reward_accuracy"] == pytest.approx(float((h > 0).double().mean()))
    assert set(row) == set(pb.PROBE_COLUMNS) - {"step", "grad_norm"}


def test_probe_row_stays_finite_where_pi_underflows():
    lc = torch.tensor([-900.0, -1200.0], dtype=torch.float64)
    lr = torch.tensor([-2000.0, -3000.0], dtype=torch.float64)
    n = torch.tensor([400.0, 500.0], dtype=torch.float64)
    pr = pb.gradient_probes("dpo", lc, lr, lc, lr, n, n)
    row = pb.probe_row(pr, lc, lr, n, n)
    assert math.isinf(row["grad_rejected"])          # beyond float64, as in the toy records
    for k in ("log_grad_chosen", "log_grad_rejected", "log_grad_ratio", "tok_log_grad_ratio", "loss"):
        assert math.isfinite(row[k]), k
    assert row["log_grad_ratio"] == pytest.approx(
        float(torch.logsumexp(-lr, 0) - torch.logsumexp(-lc, 0)), rel=1e-12)   # DPO: |g+| = |g-| per pair


# ----------------------------------------------------------------------------- the training loop
def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_sgd_step_equals_a_hand_written_dpo_step():
    model, pairs = _llama(9), _random_pairs(10, 6)
    w0 = copy.deepcopy(model)
    beta, lr = 0.5, 0.3
    run = pb.train_preference(model, pairs, loss="dpo", loss_params={"beta": beta}, steps=1, batch_size=6,
                              lr=lr, optimizer="sgd", device="cpu", progress=False)
    ref_c, ref_r = _slow_pairs(w0, pairs)
    rc, rr = torch.stack([s for _, s in ref_c]), torch.stack([s for _, s in ref_r])
    lc = torch.stack([_slow_logprobs(w0, p, r)[1] for p, r in zip(pairs.prompt, pairs.chosen)])
    lrj = torch.stack([_slow_logprobs(w0, p, r)[1] for p, r in zip(pairs.prompt, pairs.rejected)])
    loss = L.pair_loss("dpo", lc, lrj, rc, rr, beta=beta).mean()
    assert float(loss.detach()) == pytest.approx(math.log(2.0), rel=1e-12)
    params = dict(w0.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()))
    for (name, p), g in zip(params.items(), grads):
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), p.detach() - lr * g, **F64)
    assert run.losses[0] == pytest.approx(math.log(2.0), rel=1e-12)
    torch.testing.assert_close(run.ref.chosen, rc, **F64)


def test_grad_accum_padding_side_and_micro_batches_change_nothing():
    pairs = _random_pairs(11, 8, prompt=(1, 5), resp=(1, 6))
    finals = []
    for accum, side in ((1, "right"), (2, "left"), (4, "right"), (8, "left")):
        model = _llama(12)
        pb.train_preference(model, pairs, steps=3, batch_size=8, grad_accum=accum, lr=1e-2, padding_side=side,
                            device="cpu", progress=False, loss_params={"beta": 0.5})
        finals.append(_state(model))
    moved = max(float((finals[0][k] - v).abs().max()) for k, v in _state(_llama(12)).items())
    assert moved > 1e-3
    for other in finals[1:]:
        for k in finals[0]:
            torch.testing.assert_close(other[k], finals[0][k], **F64)


def test_the_log_columns_steps_and_what_they_measure():
    pairs = _random_pairs(13, 8)
    run = pb.train_preference(_llama(14), pairs, steps=7, batch_size=4, lr=2e-2, log_every=3, device="cpu",
                              progress=False, loss_params={"beta": 0.5})
    assert set(run.log) == set(pb.PROBE_COLUMNS)
    assert all(v.shape == (3,) and v.dtype == np.float64 for v in run.log.values())
    assert run.log["step"].tolist() == [0.0, 3.0, 6.0]
    assert run.log["loss"][0] == pytest.approx(math.log(2.0), rel=1e-12)     # ref = the initial policy
    assert run.log["drift_chosen"][0] == 0.0 and run.log["reward_accuracy"][0] == 0.0
    np.testing.assert_allclose(run.log["loss"], run.losses[[0, 3, 6]], rtol=1e-14)
    assert run.log["drift_chosen"][-1] > 0 > run.log["drift_rejected"][-1]
    # row t = the probes at the weights after t updates: rerun 6 updates and measure the 7th batch
    model6 = _llama(14)
    pb.train_preference(model6, pairs, steps=6, batch_size=4, lr=2e-2, device="cpu", progress=False,
                        loss_params={"beta": 0.5})
    idx = pb.train._batches(8, 4, 7, 0, True)[6]
    now = pb.pair_logprobs(model6, pairs.select(idx))
    assert run.log["log_chosen"][-1] == pytest.approx(float(now.chosen.mean()), rel=1e-10)
    assert run.log["token_log_rejected"][-1] == pytest.approx(float(now.rejected_mean.mean()), rel=1e-10)
    pr = pb.gradient_probes("dpo", now.chosen, now.rejected, run.ref.chosen[idx], run.ref.rejected[idx],
                            now.chosen_len, now.rejected_len, beta=0.5)
    row = pb.probe_row(pr, now.chosen, now.rejected, now.chosen_len, now.rejected_len)
    for k in ("log_grad_ratio", "tok_log_grad_chosen", "dlogp_rejected", "drift_rejected"):
        assert run.log[k][-1] == pytest.approx(row[k], rel=1e-9), k


def test_reference_is_computed_once_and_can_be_reused():
    pairs = _random_pairs(15, 8)
    model = _llama(16)
    cnt = _Counter(model)
    backward = []
    hb = model.lm_head.register_full_backward_hook(lambda *a: backward.append(1))
    try:
        run = pb.train_preference(model, pairs, steps=3, batch_size=4, grad_accum=2, lr=1e-3, device="cpu",
                                  progress=False)
        assert cnt.n == 8 // 2 + 3 * 2          # reference: 4 micro-batches of 2; training: 3 x 2
        assert len(backward) == 3 * 2           # one backward pass per micro-batch: the probes cost none
        cnt.n = 0
        pb.train_preference(model, pairs, steps=3, batch_size=4, grad_accum=2, lr=1e-3, device="cpu",
                            progress=False, ref=run.ref)
        assert cnt.n == 3 * 2
    finally:
        cnt.remove()
        hb.remove()


def test_any_loss_and_a_users_callable():
    pairs = _random_pairs(17, 6)
    for loss, params in (("nbdpo", {"beta": 1.0}), ("slic", {}), (_hinge, {"margin": 1.5})):
        run = pb.train_preference(_llama(18), pairs, loss=loss, loss_params=params, steps=2, batch_size=6,
                                  lr=1e-2, log_every=1, device="cpu", progress=False)
        assert all(np.isfinite(run.log[k]).all() for k in ("loss", "dlogp_chosen", "drift_chosen"))
        # log|dl/dpi| is finite where a gradient exists, -inf where none does (the hinge past its margin)
        for side in ("chosen", "rejected"):
            g, lg = run.log[f"dlogp_{side}"], run.log[f"log_grad_{side}"]
            assert np.array_equal(np.isfinite(lg), g != 0) and np.all(lg[g == 0] == -np.inf)
    # nbDPO at pi = pi_ref: lambda = 1 + clip(log pi+ - log pi-, 0, clip) scales dl/dlog pi+ (004 eq. 25-26)
    nb = pb.train_preference(_llama(18), pairs, loss="nbdpo", steps=1, batch_size=6, lr=1e-9, optimizer="sgd",
                             device="cpu", progress=False)
    ref = nb.ref
    lam = L.nbdpo_lambda(ref.chosen, ref.rejected, clip=0.5)
    assert nb.log["dlogp_chosen"][0] == pytest.approx(float((-0.5 * lam).mean()), rel=1e-12)
    assert nb.log["dlogp_rejected"][0] == pytest.approx(0.5, rel=1e-12)


def test_seed_order_and_global_rng():
    pairs = _random_pairs(19, 8)
    model = _llama(20)
    state = torch.random.get_rng_state()
    a = pb.train_preference(model, pairs, steps=4, batch_size=2, lr=1e-2, log_every=1, device="cpu",
                            progress=False, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = pb.train_preference(_llama(20), pairs, steps=4, batch_size=2, lr=1e-2, log_every=1, device="cpu",
                            progress=False, seed=3)
    c = pb.train_preference(_llama(20), pairs, steps=4, batch_size=2, lr=1e-2, log_every=1, device="cpu",
                            progress=False, seed=4)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert not np.array_equal(a.log["log_chosen"], c.log["log_chosen"])
    epochs = pb.train._batches(8, 3, 5, 0, True)     # 2 batches per epoch (drop_last), each epoch a permutation
    assert len(set(torch.cat(epochs[:2]).tolist())) == 6 and len(epochs) == 5


@pytest.mark.parametrize(("kw", "match"), [
    ({"loss": "nosuch"}, r"^unknown loss 'nosuch'"),
    ({"loss_params": {"beta": -1.0}}, r"^dpo: parameter 'beta' must be a finite number > 0"),
    ({"loss_params": {"gamma": 1.0}}, r"^dpo: unknown parameter 'gamma'"),
    ({"pairs": []}, r"^pairs: expected at least one preference pair"),
    ({"pairs": [{"prompt_ids": [3], "chosen_ids": [4]}]}, r"^pairs: each dict needs"),
    ({"max_length": 2}, r"^(chosen|rejected)\[\d+\]: the response has zero tokens after truncation"),
    ({"batch_size": 9}, r"^batch_size: expected at most the number of pairs \(8\)"),
    ({"grad_accum": 3}, r"^grad_accum: expected a divisor of batch_size=4"),
    ({"steps": 0}, r"^steps: expected an integer >= 1"),
    ({"lr": 0.0}, r"^lr: expected a finite number > 0"),
    ({"optimizer": "lion"}, r"^optimizer: expected one of adamw, sgd"),
    ({"bf16": True}, r"^bf16: bf16 autocast runs on CUDA only"),
    ({"padding_side": "both"}, r"^padding_side: expected one of right, left"),
    ({"device": "tpu"}, r"^device: "),
    ({"ref": "cached"}, r"^ref: expected the PairLogProbs of the 8 pairs"),
    ({"pairs": [{"prompt": "t3", "chosen": " t4", "rejected": " t5"}]}, r"^tokenizer: text pairs need a tokenizer"),
])
def test_bad_input_raises_one_line_before_any_forward(kw, match):
    model = _llama(21)
    cnt = _Counter(model)
    args = dict(pairs=_random_pairs(22, 8, prompt=(2, 3)), steps=2, batch_size=4, device="cpu", progress=False)
    args.update(kw)
    try:
        with pytest.raises(ValueError, match=match) as e:
            pb.train_preference(model, **args)
    finally:
        cnt.remove()
    assert "\n" not in str(e.value) and cnt.n == 0


def test_model_path_and_the_command_line(tmp_path, tokenizer, capsys):
    """A local model directory (save_pretrained of a tiny model and its tokenizer), trained through
    ``python -m prefdyn.probes``'s ``main``; its log equals a direct run on the same model."""
    from prefdyn.probes.__main__ import main

    model = _llama(23, dtype=torch.float32)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    data = _text_pairs(24, 6)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in data), encoding="utf-8")
    rc = main(["--model-path", str(tmp_path / "m"), "--pairs", str(tmp_path / "pairs.jsonl"), "--out",
               str(tmp_path / "out"), "--loss-param", "beta=0.5", "--steps", "3", "--batch-size", "3",
               "--log-every", "1", "--device", "cpu", "--lr", "1e-2"])
    assert rc == 0
    log = np.load(tmp_path / "out" / "log.npz")
    assert set(log.files) == set(pb.PROBE_COLUMNS) and log["step"].tolist() == [0.0, 1.0, 2.0]
    cfg = json.loads((tmp_path / "out" / "run.json").read_text())
    assert cfg["config"]["loss_params"] == {"beta": 0.5} and len(cfg["losses"]) == 3
    direct = pb.train_preference(_llama(23, dtype=torch.float32), data, tokenizer=tokenizer, steps=3, batch_size=3,
                                 lr=1e-2, log_every=1, device="cpu", progress=False, loss_params={"beta": 0.5})
    np.testing.assert_allclose(log["log_chosen"], direct.log["log_chosen"], rtol=1e-5)
    assert main(["--model-path", str(tmp_path / "nosuch"), "--pairs", str(tmp_path / "pairs.jsonl"), "--out",
                 str(tmp_path / "o2"), "--device", "cpu"]) == 2
    assert "model_path: expected a local Hugging Face model directory" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_autocast_and_device_map(tmp_path, tokenizer):
    model = _llama(25, dtype=torch.float32)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, _ = pb.load_model(tmp_path / "m")
    assert getattr(loaded, "hf_device_map", None) is not None
    pairs = _random_pairs(26, 8)
    run = pb.train_preference(loaded, pairs, steps=3, batch_size=4, lr=1e-3, log_every=1, progress=False)
    assert run.config["bf16"] and run.config["device"].startswith("cuda")
    assert all(np.isfinite(run.log[k]).all() for k in ("loss", "log_grad_ratio"))
    cpu = pb.pair_logprobs(_llama(25, dtype=torch.float32), pairs)
    torch.testing.assert_close(run.ref.chosen, cpu.chosen, rtol=3e-2, atol=3e-2)   # bf16 vs float32


# ----------------------------------------------------------------------------- peer checks: TRL 1.16
@pytest.fixture(autouse=True)
def _keep_global_rng():
    """``DPOTrainer.__init__`` calls ``transformers.set_seed``: restore the global RNGs afterwards."""
    import random

    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])


def _trl_trainer(tmp_path, tokenizer, model, data, **cfg):
    trl = pytest.importorskip("trl", reason="the TRL peer check needs the pinned test extra 'trl'")
    datasets = pytest.importorskip("datasets")
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False, fp16=False,
                         gradient_checkpointing=False, disable_tqdm=True, save_strategy="no",
                         precompute_ref_log_probs=True, loss_type=["sigmoid"], **cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(data),
                              processing_class=tokenizer)


def test_sequence_logprobs_and_tokenization_equal_trl(tmp_path, tokenizer):
    """Our tokenization == TRL's prepared dataset; our sequence log-probs == TRL's
    (``compute_ref_log_probs``: sums over the completion; TRL's fused LM head accumulates its
    log-sum-exp in float32, hence 1e-5)."""
    data = _text_pairs(27, 8)
    model = _llama(28)
    trainer = _trl_trainer(tmp_path, tokenizer, copy.deepcopy(model), data, per_device_train_batch_size=8)
    ds = trainer.train_dataset
    ours = pb.train.as_token_pairs(data, tokenizer)
    assert [tuple(x) for x in ds["prompt_ids"]] == list(ours.prompt)
    assert [tuple(x) for x in ds["chosen_ids"]] == list(ours.chosen)
    assert [tuple(x) for x in ds["rejected_ids"]] == list(ours.rejected)
    batch = trainer.data_collator([{k: ds[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                                   for i in range(len(ds))])
    with torch.no_grad():
        trl_c, trl_r = trainer.compute_ref_log_probs(trainer.model, batch)
    got = pb.pair_logprobs(model, ours)
    assert float(got.chosen.min()) < -8.0
    torch.testing.assert_close(trl_c.to(torch.float64), got.chosen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trl_r.to(torch.float64), got.rejected, rtol=1e-5, atol=1e-5)
    # and TRL's precomputed reference column (float32 storage) holds the same numbers
    torch.testing.assert_close(torch.tensor(ds["ref_chosen_logps"], dtype=torch.float64), got.chosen,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("trl_optim", "ours", "lr"), [("sgd", "sgd", 0.1), ("adamw_torch_fused", "adamw", 1e-2)])
def test_a_short_dpo_run_ends_at_trls_weights(tmp_path, tokenizer, trl_optim, ours, lr):
    """Same tiny float64 Llama, same 8 pairs as one batch (so TRL's shuffling cannot matter: the loss is
    the mean over the batch), SGD or AdamW (TRL's default, fused; betas 0.9/0.999, eps 1e-8 on both
    sides), constant learning rate, no clipping, no weight decay, 4 updates.

    TRL's per-step losses equal ours (the first is ln 2: the reference is the initial policy) and the
    weights' total change agrees to 1e-5 relative. Tolerance: TRL's fused LM head accumulates in float32
    (``trl/kernels/chunked_logprob.py``) and stores the precomputed reference in float32, so its losses
    and gradients carry ~1e-7 relative errors (measured: 2e-7 for the losses and 2e-7 for the weights
    with SGD, 2e-6 and 3e-7 with AdamW); 1e-5 leaves room and is far below what a 1% change of beta
    moves the weights (8e-4 relative with AdamW, 1e-2 with SGD: the test can fail)."""
    data = _text_pairs(29, 8)
    beta, steps = 0.5, 4
    init = _llama(30)
    trainer = _trl_trainer(tmp_path, tokenizer, copy.deepcopy(init), data, per_device_train_batch_size=8,
                           max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", optim=trl_optim,
                           max_grad_norm=0.0, weight_decay=0.0, beta=beta, logging_steps=100, seed=0)
    seen = []
    orig = trainer.compute_loss

    def record(model, inputs, *a, **k):
        out = orig(model, inputs, *a, **k)
        seen.append(float(out.detach()))
        return out

    trainer.compute_loss = record
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    mine = copy.deepcopy(init)
    run = pb.train_preference(mine, data, tokenizer=tokenizer, loss_params={"beta": beta}, steps=steps,
                              batch_size=8, lr=lr, optimizer=ours, device="cpu", progress=False)
    assert seen[0] == pytest.approx(math.log(2.0), rel=1e-6)
    assert run.losses[0] == pytest.approx(math.log(2.0), rel=1e-12)
    np.testing.assert_allclose(np.array(seen), run.losses, rtol=1e-5)
    assert run.losses[-1] < run.losses[0] - 0.1

    def delta(model):
        w0 = dict(init.named_parameters())
        return torch.cat([(p.detach() - w0[n].detach()).reshape(-1) for n, p in model.named_parameters()])

    d_ours, d_trl = delta(mine), delta(trainer.model)
    assert float(d_ours.norm()) > 0.5
    assert float((d_ours - d_trl).norm() / d_ours.norm()) < 1e-5
    other = copy.deepcopy(init)
    pb.train_preference(other, data, tokenizer=tokenizer, loss_params={"beta": beta * 1.01}, steps=steps,
                        batch_size=8, lr=lr, optimizer=ours, device="cpu", progress=False)
    assert float((delta(other) - d_trl).norm() / d_ours.norm()) > 1e-4     # SGD 1e-2, AdamW 8e-4 measured


def test_records_names_are_reused():
    for k in records.GRADIENT_COLUMNS + ("loss", "log_chosen", "log_rejected"):
        assert k in pb.PROBE_COLUMNS
