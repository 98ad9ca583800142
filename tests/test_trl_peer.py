"""Peer check of ``prefdyn.losses`` against Hugging Face TRL (issue 3, verification 3).

TRL is a test-only extra, pinned (checked with ``trl==1.16.0``, ``transformers==5.23.0``). TRL 1.x has no
callable ``dpo_loss``: every preference loss is computed inside ``DPOTrainer._compute_loss``, from the
per-token log-probs that the trainer's patched model forward returns. So these tests build a real
``DPOTrainer`` (through ``DPOConfig``, no hub access: a 2-layer ``LlamaConfig`` model with a 16-token
vocabulary built from its config, a word-level tokenizer built in memory), collate batches with the
trainer's own ``DataCollatorForPreference``, and call the trainer's own ``compute_loss``.

Three kinds of tests:

* **Injected log-probs (float64, tolerance 1e-10).** A forward hook replaces the per-token log-probs of
  the policy (``outputs.log_probs``) by random float64 values that we choose, zero outside the completion
  exactly as TRL's fused LM head returns them. The reference log-probs go in through TRL's documented
  precomputed path (``precompute_ref_log_probs=True``; the examples carry ``ref_chosen_logps`` /
  ``ref_rejected_logps``, float32-representable so the collator's float32 tensor holds them exactly).
  TRL's loss code then runs unmodified, and we compare its scalar loss and its gradient w.r.t. every
  per-token log-prob with ``prefdyn.losses.pair_loss(...).mean()`` and its autograd gradient.
* **Real model (float32 tolerance).** No injection: policy and reference are two tiny float64 Llamas, and
  TRL computes everything itself. We recompute the sequence log-probs independently (ordinary forward,
  ``log_softmax`` of the logits, gather the next token, sum over the completion) and compare. TRL's fused
  LM head accumulates its log-sum-exp in float32 (``trl/kernels/chunked_logprob.py`` l. 340-347), hence the
  looser tolerance there.
* **Reward model.** ``reward_model_loss`` (000 Sec. 4) against ``RewardTrainer.compute_loss`` on a tiny
  ``LlamaForSequenceClassification`` whose rewards are injected the same way (float64, 1e-10).

Conventions confirmed in ``trl/trainer/dpo_trainer.py`` (TRL 1.16.0):

* sequence log-prob = SUM of the completion tokens' log-probs: ``logps = per_token_logps.sum(dim=1)``
  (l. 1304); the per-token log-probs are zero outside the completion (``trl/trainer/utils.py`` l. 1658/1660),
  scored at the shifted positions (next-token labels, prompt masked with -100). Same as ``prefdyn``'s inputs.
* the batch loss is the MEAN over pairs of the per-pair loss, summed over ``loss_type`` with
  ``loss_weights`` (l. 1528): ``loss += per_sequence_loss.mean() * loss_weight``.
* ``sigmoid``: ``-logsigmoid(beta * delta_score)`` with ``delta_score = (logp+ - ref+) - (logp- - ref-)``
  (l. 1350, 1383, 1388) == ``dpo`` (000 eq. 5).
* ``robust`` with ``label_smoothing=0`` (l. 1428-1431) reduces exactly to ``sigmoid`` == ``dpo``.
* ``ipo``: ``(ipo_delta - 1/(2 beta))**2`` where the log-RATIOS are divided by the number of completion
  tokens first (l. 1393-1404; TRL's comment says this was "confirmed with the IPO authors"): TRL's IPO ==
  ``prefdyn`` ``ipo`` (000 eq. 8, eta = beta) applied to length-AVERAGED log-probs ``logp/L`` and
  ``ref/L``; == ``ipo`` on sequence sums only for one-token responses (the toy model).
* ``sigmoid_norm`` (l. 1504-1509) == ``dpo`` on length-averaged log-probs.
* ``sft``: ``-chosen_per_token_logps[chosen_mask].mean()`` (l. 1495-1502): a TOKEN mean over the whole
  batch, i.e. ``sft_loss(logp+).sum() / (total chosen tokens)``; equal to the per-pair mean of ``sft_loss``
  only when every chosen response has one token.
* ``["sigmoid", "sft"]`` with ``loss_weights=[1, gamma]`` == ``sft_dpo`` (000 eq. 7) for one-token chosen
  responses.
* ``hinge``: ``relu(1 - beta * delta_score)`` (l. 1391). With ``beta = 1/delta`` and weight ``delta`` it is
  SLiC's rank term ``max(0, delta - h)``; SLiC (000 eq. 11) has no reference model, so the two agree when
  the reference log-ratio is zero (``ref+ == ref-``). ``["hinge", "sft"]`` with ``loss_weights=[delta,
  eta]`` and ``beta=1/delta`` == ``slic`` for one-token chosen responses and ``ref+ == ref-``.
* ``RewardTrainer``: ``-logsigmoid(r+ - r-).mean()`` without margin (``trl/trainer/reward_trainer.py``
  l. 786-792) == ``reward_model_loss(...).mean()``.
* ``DPOTrainer.__init__`` calls ``set_seed(args.seed)`` (l. 559): an autouse fixture restores the global RNGs.

Not compared (no exact TRL counterpart in 1.16.0): ``flex_dpo``, ``dpop``, ``nbdpo``, ``nbdpo_v2``,
``bdpo`` (TRL has none of them).
"""

from __future__ import annotations

import os

# No hub access, ever: everything below is built locally.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from prefdyn.losses import pair_loss, sft_loss  # noqa: E402

# Fallback only: CI installs trl from the lock (test extra "trl").
trl = pytest.importorskip("trl", reason="the TRL peer check needs the pinned test extra 'trl'")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

from trl import DPOConfig, DPOTrainer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

VOCAB = 16
PAD, EOS, UNK = 0, 1, 2
BETAS = (0.01, 0.1, 2.0)  # |beta h| <= 4 (no saturation) up to ~1e3 (deep saturation)
N_PAIRS = 48
RTOL, ATOL = 1e-10, 1e-13  # float64 throughout the injected tests


# ----------------------------------------------------------------------------- local model & trainer
@pytest.fixture(autouse=True)
def _keep_global_rng():
    """``DPOTrainer.__init__`` calls ``transformers.set_seed(args.seed)``: restore the global RNGs afterwards so
    this file leaves no trace on other tests (its tiny models are seeded with ``torch.manual_seed``, its data
    with explicit ``torch.Generator``s)."""
    import random

    import numpy as np

    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK, **{f"t{i}": i for i in range(3, VOCAB)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def _tiny_llama(seed: int, lm_head_std: float = 0.02) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS,
    )
    model = transformers.LlamaForCausalLM(cfg).to(torch.float64)
    with torch.no_grad():  # lm_head_std=1 spreads the next-token distribution (log-probs far from -log V)
        model.lm_head.weight.normal_(0.0, lm_head_std)
    return model


def _trainer(tmp_path, tokenizer, *, model=None, ref_model=None, precompute=True, **dpo_args) -> DPOTrainer:
    """A real DPOTrainer on a tiny local model; ``dpo_args`` go to ``DPOConfig`` (beta, loss_type, ...)."""
    args = DPOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, disable_tqdm=True, save_strategy="no",
        precompute_ref_log_probs=precompute, **dpo_args,
    )
    train = datasets.Dataset.from_dict({"prompt": ["t3 t4"], "chosen": [" t5"], "rejected": [" t6"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(
            model=model if model is not None else _tiny_llama(0), ref_model=ref_model, args=args,
            train_dataset=train, processing_class=tokenizer,
        )


def _examples(gen, n, *, chosen_len=(1, 4), rejected_len=(1, 4), with_ref=True, ref_equal=False):
    """Random tokenized preference pairs (TRL's pretokenized format), optionally with reference log-probs.

    The reference values are float32-representable, so the collator's float32 tensor holds them exactly.
    """
    def ids(lo, hi):
        k = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return torch.randint(3, VOCAB, (k,), generator=gen).tolist()

    out = []
    for _ in range(n):
        ex = {"prompt_ids": ids(1, 3), "chosen_ids": ids(*chosen_len), "rejected_ids": ids(*rejected_len)}
        if with_ref:
            rc, rr = (-(10.0 ** (torch.rand(2, generator=gen) * 4.0 - 2.0))).to(torch.float32).tolist()
            ex["ref_chosen_logps"], ex["ref_rejected_logps"] = rc, (rc if ref_equal else rr)
        out.append(ex)
    return out


def _random_token_logps(gen, shape) -> torch.Tensor:
    """Per-token log-probs spanning 1e-3 .. 3e2 in magnitude (sequence sums down to about -1e3), float64."""
    return -(10.0 ** (torch.rand(shape, generator=gen, dtype=torch.float64) * 5.5 - 3.0))


class _Inject:
    """Forward hook: TRL's fused-head call returns OUR per-token log-probs (zero outside the completion)."""

    def __init__(self, model, per_token: torch.Tensor, shift_mask: torch.Tensor):
        self.per_token, self.shift_mask = per_token, shift_mask
        self.calls = 0
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        if not kwargs.get("fused_lm_head"):
            return output
        scored = kwargs["labels"][:, 1:] != -100  # the positions TRL scores: shifted, prompt masked
        assert torch.equal(scored, self.shift_mask.bool()), "TRL scores other positions than the completion"
        assert output.log_probs.shape == self.per_token.shape
        output.log_probs = self.per_token.masked_fill(~scored, 0.0)
        self.calls += 1
        return output

    def remove(self):
        self.handle.remove()


def _trl_on(trainer, batch, per_token):
    """TRL's loss on ``batch`` with the policy's per-token log-probs replaced by ``per_token``; and its grad."""
    leaf = per_token.detach().clone().requires_grad_(True)
    shift_mask = batch["completion_mask"][:, 1:]
    hook = _Inject(trainer.model, leaf, shift_mask)
    try:
        loss = trainer.compute_loss(trainer.model, batch)
    finally:
        hook.remove()
    assert hook.calls == 1  # precomputed reference: only the policy forward runs
    assert loss.dtype == torch.float64
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad * shift_mask  # only completion positions are log-probs


def _prefdyn_on(batch, per_token, batch_loss):
    """``batch_loss(lc, lr, rc, rr, len_c, len_r)`` on the same log-probs (sequence SUMS), and its grad."""
    leaf = per_token.detach().clone().requires_grad_(True)
    shift_mask = batch["completion_mask"][:, 1:]
    seq = (leaf * shift_mask).sum(dim=1)  # sequence log-prob = sum of its completion tokens
    lengths = batch["completion_mask"].sum(dim=1).to(torch.float64)
    assert torch.equal(lengths, shift_mask.sum(dim=1).to(torch.float64))  # prompt >= 1 token
    lc, lr = seq.chunk(2)
    len_c, len_r = lengths.chunk(2)
    rc = batch["ref_chosen_logps"].to(torch.float64)
    rr = batch["ref_rejected_logps"].to(torch.float64)
    loss = batch_loss(lc, lr, rc, rr, len_c, len_r)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad * shift_mask


def _compare(tmp_path, tokenizer, seed, dpo_args, batch_loss, **example_kw):
    trainer = _trainer(tmp_path, tokenizer, **dpo_args)
    gen = torch.Generator().manual_seed(seed)
    batch = trainer.data_collator(_examples(gen, N_PAIRS, **example_kw))
    assert batch["ref_chosen_logps"].dtype == torch.float32  # TRL's collator; our values are exact in it
    per_token = _random_token_logps(gen, batch["completion_mask"][:, 1:].shape)
    trl_loss, trl_grad = _trl_on(trainer, batch, per_token)
    ours, our_grad = _prefdyn_on(batch, per_token, batch_loss)
    torch.testing.assert_close(trl_loss, ours, rtol=RTOL, atol=ATOL)
    scale = our_grad.abs().max()
    assert scale > 0
    torch.testing.assert_close(trl_grad, our_grad, rtol=RTOL, atol=ATOL * max(1.0, float(scale)))
    return trl_loss, trl_grad


# ----------------------------------------------------------------------------- injected log-probs
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("trl_loss_type", ["sigmoid", "robust"])
def test_dpo_equals_trl_sigmoid(tmp_path, tokenizer, beta, trl_loss_type):
    """``dpo`` (000 eq. 5) == TRL ``sigmoid`` (and ``robust`` at label_smoothing=0), on token-summed log-probs."""
    _compare(
        tmp_path, tokenizer, seed=11,
        dpo_args=dict(beta=beta, loss_type=[trl_loss_type], label_smoothing=0.0),
        batch_loss=lambda lc, lr, rc, rr, nc, nr: pair_loss("dpo", lc, lr, rc, rr, beta=beta).mean(),
    )


@pytest.mark.parametrize("beta", BETAS)
def test_ipo_equals_trl_ipo_on_length_averaged_logps(tmp_path, tokenizer, beta):
    """TRL's IPO divides the log-ratios by the completion length: == ``ipo`` (000 eq. 8) on ``logp/L``."""
    def ours(lc, lr, rc, rr, nc, nr):
        return pair_loss("ipo", lc / nc, lr / nr, rc / nc, rr / nr, beta=beta).mean()

    _compare(tmp_path, tokenizer, seed=12, dpo_args=dict(beta=beta, loss_type=["ipo"]), batch_loss=ours)


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_ipo_equals_trl_ipo_for_one_token_responses(tmp_path, tokenizer, beta):
    """With one-token responses (the toy model) length-averaging is the identity: sums go in directly."""
    _compare(
        tmp_path, tokenizer, seed=13, dpo_args=dict(beta=beta, loss_type=["ipo"]),
        batch_loss=lambda lc, lr, rc, rr, nc, nr: pair_loss("ipo", lc, lr, rc, rr, beta=beta).mean(),
        chosen_len=(1, 1), rejected_len=(1, 1),
    )


def test_ipo_length_convention_matters(tmp_path, tokenizer):
    """The IPO convention is real: on multi-token responses TRL's value differs from ``ipo`` on sums."""
    beta = 0.1
    trainer = _trainer(tmp_path, tokenizer, beta=beta, loss_type=["ipo"])
    gen = torch.Generator().manual_seed(14)
    batch = trainer.data_collator(_examples(gen, N_PAIRS, chosen_len=(2, 4), rejected_len=(2, 4)))
    per_token = _random_token_logps(gen, batch["completion_mask"][:, 1:].shape)
    trl_loss, _ = _trl_on(trainer, batch, per_token)
    on_sums, _ = _prefdyn_on(
        batch, per_token, lambda lc, lr, rc, rr, nc, nr: pair_loss("ipo", lc, lr, rc, rr, beta=beta).mean()
    )
    assert not torch.isclose(trl_loss, on_sums, rtol=1e-3)


@pytest.mark.parametrize("beta", BETAS)
def test_dpo_on_length_averaged_logps_equals_trl_sigmoid_norm(tmp_path, tokenizer, beta):
    def ours(lc, lr, rc, rr, nc, nr):
        return pair_loss("dpo", lc / nc, lr / nr, rc / nc, rr / nr, beta=beta).mean()

    _compare(tmp_path, tokenizer, seed=15, dpo_args=dict(beta=beta, loss_type=["sigmoid_norm"]), batch_loss=ours)


def test_sft_loss_equals_trl_sft_token_mean(tmp_path, tokenizer):
    """TRL's ``sft`` is a token mean over the batch: ``sft_loss(logp+).sum() / total chosen tokens``."""
    _compare(
        tmp_path, tokenizer, seed=16, dpo_args=dict(loss_type=["sft"]),
        batch_loss=lambda lc, lr, rc, rr, nc, nr: sft_loss(lc).sum() / nc.sum(),
        chosen_len=(1, 4),
    )


def test_sft_loss_equals_trl_sft_pair_mean_for_one_token_responses(tmp_path, tokenizer):
    _compare(
        tmp_path, tokenizer, seed=17, dpo_args=dict(loss_type=["sft"]),
        batch_loss=lambda lc, lr, rc, rr, nc, nr: sft_loss(lc).mean(),
        chosen_len=(1, 1),
    )


@pytest.mark.parametrize(("beta", "gamma"), [(0.01, 1.0), (0.1, 0.1), (2.0, 0.5)])
def test_sft_dpo_equals_trl_sigmoid_plus_weighted_sft(tmp_path, tokenizer, beta, gamma):
    """``sft_dpo`` (000 eq. 7) == TRL ``loss_type=["sigmoid", "sft"], loss_weights=[1, gamma]``
    (one-token chosen responses, where TRL's token-mean SFT term is the per-pair mean)."""
    _compare(
        tmp_path, tokenizer, seed=18,
        dpo_args=dict(beta=beta, loss_type=["sigmoid", "sft"], loss_weights=[1.0, gamma]),
        batch_loss=lambda lc, lr, rc, rr, nc, nr: pair_loss("sft_dpo", lc, lr, rc, rr, beta=beta, gamma=gamma).mean(),
        chosen_len=(1, 1), rejected_len=(1, 4),
    )


@pytest.mark.parametrize(("delta", "eta"), [(5.0, 0.1), (0.5, 0.0), (50.0, 1.0)])
def test_slic_equals_trl_hinge_plus_weighted_sft(tmp_path, tokenizer, delta, eta):
    """``slic`` (000 eq. 11) == TRL ``["hinge", "sft"]``, ``loss_weights=[delta, eta]``, ``beta=1/delta``,
    when the reference log-ratio is zero (SLiC has no reference model) and chosen responses have one token."""
    _compare(
        tmp_path, tokenizer, seed=19,
        dpo_args=dict(beta=1.0 / delta, loss_type=["hinge", "sft"], loss_weights=[delta, eta]),
        batch_loss=lambda lc, lr, rc, rr, nc, nr: pair_loss("slic", lc, lr, rc, rr, delta=delta, eta=eta).mean(),
        chosen_len=(1, 1), rejected_len=(1, 4), ref_equal=True,
    )


def test_dpo_equals_trl_at_pi_equal_ref_and_saturation(tmp_path, tokenizer):
    """Edge cases: pi == pi_ref (h = 0, loss log 2) and far-saturated margins (|beta h| ~ 1e3)."""
    beta = 2.0
    trainer = _trainer(tmp_path, tokenizer, beta=beta, loss_type=["sigmoid"])
    gen = torch.Generator().manual_seed(20)
    examples = _examples(gen, 8, chosen_len=(1, 1), rejected_len=(1, 1))
    batch = trainer.data_collator(examples)
    shape = batch["completion_mask"][:, 1:].shape
    per_token = torch.zeros(shape, dtype=torch.float64)
    mask = batch["completion_mask"][:, 1:].bool()
    seq = torch.tensor(
        [-1.0, -3.0, -500.0, -1e3, -0.5, -2.0, -700.0, -1e-3,   # chosen
         -2.0, -3.0, -1e-3, -2.0, -0.5, -4.0, -1.0, -900.0],    # rejected
        dtype=torch.float64,
    )
    per_token[mask] = seq  # one completion token per sequence
    # pairs 0-1: policy == reference, so h = 0 exactly
    for i in (0, 1):
        examples[i]["ref_chosen_logps"], examples[i]["ref_rejected_logps"] = float(seq[i]), float(seq[8 + i])
    batch = trainer.data_collator(examples)
    trl_loss, trl_grad = _trl_on(trainer, batch, per_token)
    ours, our_grad = _prefdyn_on(
        batch, per_token, lambda lc, lr, rc, rr, nc, nr: pair_loss("dpo", lc, lr, rc, rr, beta=beta).mean()
    )
    assert torch.isfinite(trl_loss) and torch.isfinite(trl_grad).all()
    torch.testing.assert_close(trl_loss, ours, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(trl_grad, our_grad, rtol=RTOL, atol=ATOL)
    # at pi == pi_ref both give dl/dlogp+ = -beta/2 per pair (divided by the batch size of the mean)
    torch.testing.assert_close(trl_grad[0][mask[0]], torch.tensor([-beta / 2 / 8], dtype=torch.float64))


# ----------------------------------------------------------------------------- real model, no injection
def _independent_seq_logps(model, batch) -> torch.Tensor:
    """Sequence log-probs from the ordinary forward: log_softmax of the logits, next token, summed on the
    completion. Independent of TRL's fused LM head."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].to(torch.float64), dim=-1)
    tok = logp.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    return (tok * batch["completion_mask"][:, 1:]).sum(dim=1)


@pytest.mark.parametrize("beta", [0.5])
def test_dpo_equals_trl_on_a_real_tiny_model(tmp_path, tokenizer, beta):
    """End to end: TRL computes policy AND reference log-probs from two tiny Llamas; ``dpo`` on our own
    independently computed sequence sums gives the same loss and the same parameter gradients."""
    policy, ref = _tiny_llama(1, lm_head_std=1.0), _tiny_llama(2, lm_head_std=1.0)
    trainer = _trainer(
        tmp_path, tokenizer, model=policy, ref_model=ref, precompute=False, beta=beta, loss_type=["sigmoid"]
    )
    gen = torch.Generator().manual_seed(21)
    batch = trainer.data_collator(_examples(gen, 16, with_ref=False))

    captured = {}

    def grab(module, args, kwargs, output):
        if kwargs.get("fused_lm_head"):
            captured["per_token"] = output.log_probs.detach()

    handle = trainer.model.register_forward_hook(grab, with_kwargs=True)
    try:
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        trl_loss = trainer.compute_loss(trainer.model, batch)
        trl_grads = torch.autograd.grad(trl_loss, params)
    finally:
        handle.remove()

    seq = _independent_seq_logps(trainer.model, batch)
    with torch.no_grad():
        ref_seq = _independent_seq_logps(ref, batch)
    lc, lr = seq.chunk(2)
    rc, rr = ref_seq.chunk(2)
    ours = pair_loss("dpo", lc, lr, rc, rr, beta=beta).mean()
    our_grads = torch.autograd.grad(ours, params)

    # TRL's sequence log-prob is the sum of the completion tokens' log-probs (float32 kernel accumulators)
    torch.testing.assert_close(captured["per_token"].sum(dim=1).to(torch.float64), seq.detach(), rtol=1e-5, atol=1e-4)
    h = (lc - rc) - (lr - rr)
    assert float(seq.detach().min()) < -5.0 and float(h.detach().abs().max()) > 1.0  # a non-trivial batch
    torch.testing.assert_close(trl_loss.detach().to(torch.float64), ours.detach(), rtol=1e-6, atol=1e-7)
    g_trl = torch.cat([g.reshape(-1) for g in trl_grads]).to(torch.float64)
    g_ours = torch.cat([g.reshape(-1) for g in our_grads]).to(torch.float64)
    assert float(g_ours.norm()) > 0
    assert float((g_trl - g_ours).norm() / g_ours.norm()) < 1e-5


# ----------------------------------------------------------------------------- reward model (000 Sec. 4)
def test_reward_model_loss_equals_trl_reward_trainer(tmp_path, tokenizer):
    """``reward_model_loss`` (000 Sec. 4 / eq. 3) == TRL ``RewardTrainer.compute_loss`` (no margin, no reward
    centring): ``-logsigmoid(r+ - r-).mean()`` (``trl/trainer/reward_trainer.py`` l. 786-792), on injected
    float64 rewards; value and gradient w.r.t. every reward."""
    from trl import RewardConfig, RewardTrainer

    from prefdyn.losses import reward_model_loss

    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS,
        num_labels=1,
    )
    model = transformers.LlamaForSequenceClassification(cfg).to(torch.float64)
    args = RewardConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, disable_tqdm=True, save_strategy="no",
    )
    gen = torch.Generator().manual_seed(22)
    examples = [{k: v for k, v in ex.items() if k in ("chosen_ids", "rejected_ids")}
                for ex in _examples(gen, N_PAIRS, with_ref=False)]
    train = datasets.Dataset.from_list(examples[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    assert trainer.args.center_rewards_coefficient is None
    batch = trainer.data_collator(examples)
    assert "margin" not in batch
    rewards = (torch.randn(2 * N_PAIRS, 1, generator=gen, dtype=torch.float64) * 30.0).requires_grad_(True)

    def inject(module, args_, kwargs, output):
        assert output.logits.shape == rewards.shape
        output.logits = rewards
        return output

    handle = trainer.model.register_forward_hook(inject, with_kwargs=True)
    try:
        trl_loss = trainer.compute_loss(trainer.model, batch)
    finally:
        handle.remove()
    (trl_grad,) = torch.autograd.grad(trl_loss, rewards)
    r = rewards.detach().clone().requires_grad_(True)
    r_chosen, r_rejected = r.squeeze(-1).chunk(2)
    ours = reward_model_loss(r_chosen, r_rejected).mean()
    (our_grad,) = torch.autograd.grad(ours, r)
    torch.testing.assert_close(trl_loss.detach(), ours.detach(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(trl_grad, our_grad, rtol=RTOL, atol=ATOL)
    # balanced: dl/dr+ = -dl/dr- pair by pair
    g_c, g_r = our_grad.squeeze(-1).chunk(2)
    torch.testing.assert_close(g_c, -g_r, rtol=0, atol=0)
