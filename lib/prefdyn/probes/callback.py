"""``ThreeDCallback``: the 3D-properties of 000 watched during a real preference-training run.

A ``transformers.TrainerCallback`` for TRL's ``DPOTrainer`` (and any ``transformers.Trainer`` whose model is
a causal LM: the callback runs its own forward passes, so it needs nothing from the trainer's loss). Every
``every`` optimiser updates (and once before the first), on a fixed held-out probe set of (prompt, chosen,
rejected) pairs, it measures with :func:`prefdyn.probes.pair_logprobs` (no gradients, eval mode):

=========================  ==========================================================================
``3d/drift_chosen``        mean over probe pairs of ``(log pi+ - log pi0+) / L+``: per-token drift of the
                           chosen response from the reference (nats per token; 000 Table 1's convention)
``3d/drift_rejected``      the same for the rejected response
``3d/margin``              mean of ``h = (log pi+ - log pi0+) - (log pi- - log pi0-)`` (sequence sums; DPO's
                           implicit reward margin over beta, TRL's "logits")
``3d/reward_accuracy``     fraction of probe pairs with ``h > 0``
``3d/log_grad_ratio``      ``log`` of mean ``|dl/dpi-|`` over mean ``|dl/dpi+|`` (probability space, 000 Sec.
                           3.1 / Cor. 1; sequence probabilities), from the loss's own log-prob gradient
``3d/tok_log_grad_ratio``  the same with the per-token (geometric-mean token) probability ``exp(log pi / L)``
``3d/log_mass_kept``       mean over probe pairs of ``log((pi+ + pi-) / (pi0+ + pi0-))``: how much of its
                           probability on the two probe responses the policy keeps (0: all of it; negative:
                           mass moved elsewhere - the "probability leaks" of 000 Sec. 3.2)
=========================  ==========================================================================

(the full row, every column of :data:`prefdyn.probes.PROBE_COLUMNS`, is kept in :attr:`ThreeDCallback.history`).
The reference ``pi0`` is the model as it is when training begins (TRL's default reference: a copy of the
initial policy), or ``ref_model`` when given. The gradients come from the loss of :mod:`prefdyn.losses`:
``loss=None`` reads TRL's config (``loss_type=["sigmoid"]`` with ``beta``: DPO, 000 eq. 5); any other TRL
loss type needs an explicit ``loss=`` (a name of :mod:`prefdyn.losses` or a user's loss, with
``loss_params``), else the callback refuses to start (a one-line ``ValueError`` at ``on_train_begin``,
before the first update).

**Warnings** (each once per run: a ``logging`` warning from ``prefdyn.probes.callback`` and an entry
``{"step": s, "3d/warning": "..."}`` in ``state.log_history``; the list in :attr:`ThreeDCallback.warnings`):

- *degradation* (000 Sec. 3.2, "DPO degrades into unlearning"): since the previous probe the chosen
  per-token log-prob fell while the margin rose, and the chosen drift is below ``-degradation_nats`` per
  token (``0.05`` by default: a fall the probe set's noise does not make);
- *drastic drop* (000 Property 1): the rejected per-token drift is below ``-drop_nats`` (``0.5`` nats per
  token by default: the rejected response has lost a factor ``e^0.5`` of probability per token).

**Several processes** (accelerate / DDP, ``torch.distributed`` initialised): every process computes the
log-probs of its share of the probe pairs (pair ``i`` on process ``i % world_size``), the shares are
gathered (``all_gather_object``, in pair order) and only the main process (``state.is_world_process_zero``)
computes the row, logs and warns. Every process must run the callback (the gather is collective).

**Cost**: one forward pass over the probe set per probe (``batch_size`` pairs per forward), no backward.
``prefdyn bench probes`` measures the overhead on a ``DPOTrainer`` run at the default interval.

Usage::

    from prefdyn.probes import ThreeDCallback
    cb = ThreeDCallback(heldout_pairs)               # [{"prompt", "chosen", "rejected"}, ...]
    trainer = DPOTrainer(..., callbacks=[cb]); trainer.train()   # cb.history, cb.warnings
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch
import transformers

from .. import losses as L
from ..validate import check_bool, check_int, check_number
from .gradients import gradient_probes, probe_row
from .logprobs import PairLogProbs, model_device, pair_logprobs
from .train import as_token_pairs

__all__ = ["ThreeDCallback", "LOGGED", "WARNINGS", "DEFAULT_EVERY"]

logger = logging.getLogger(__name__)

#: The columns the callback writes into the trainer's log history (prefixed ``3d/``); the module docstring
#: defines each one. :attr:`ThreeDCallback.history` keeps these and every column of ``PROBE_COLUMNS``.
LOGGED = ("drift_chosen", "drift_rejected", "margin", "reward_accuracy", "log_grad_ratio", "tok_log_grad_ratio",
          "log_mass_kept")

#: The default probe interval (optimiser updates): one probe of 64 pairs then adds about 3% to a TRL run
#: of batch 8 (``prefdyn bench probes``, ``callback_overhead``): a probe costs a forward over the probe
#: set, about ``pairs / (3 x batch)`` updates, so the overhead is about ``pairs / (3 x batch x every)``.
DEFAULT_EVERY = 100

#: The warnings, each given at most once per run.
WARNINGS = ("degradation", "drastic_drop")

#: TRL's loss types that are a loss of :mod:`prefdyn.losses` as they stand (tests/test_trl_peer.py).
_TRL_LOSSES = {("sigmoid",): "dpo"}


def _dist() -> tuple[int, int]:
    """(rank, world size) of ``torch.distributed`` when it is initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ThreeDCallback(transformers.TrainerCallback):
    """Probes of the 3D-properties during a ``transformers``/TRL training run (module docstring).

    ``pairs``: the held-out probe pairs, anything :func:`prefdyn.probes.as_token_pairs` takes (a list of
    ``{"prompt", "chosen", "rejected"}`` texts, tokenized with ``tokenizer`` or, by default, the trainer's
    ``processing_class``; or :class:`~prefdyn.probes.TokenPairs`). ``every``: optimiser updates between two
    probes (also one at step 0). ``loss``/``loss_params``: the loss whose gradient the ratio columns use
    (``None``: from TRL's config, DPO only). ``ref_model``: the reference (default: the model at the start
    of training). ``batch_size``: probe pairs per forward pass. ``degradation_nats``/``drop_nats``: the
    warning thresholds, per token. ``max_length``: truncation of the probe pairs (``as_token_pairs``).
    ``autocast``: ``None`` = bf16 autocast when the trainer trains in bf16 on CUDA, else ``False``/``True``.
    """

    def __init__(self, pairs: Any, *, every: int = DEFAULT_EVERY, loss: Any = None, loss_params: Mapping[str, Any] | None = None,
                 ref_model: Any = None, tokenizer: Any = None, batch_size: int = 8, degradation_nats: float = 0.05,
                 drop_nats: float = 0.5, max_length: int | None = None, autocast: bool | None = None):
        self.every = check_int("every", every, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.degradation_nats = check_number("degradation_nats", degradation_nats, 0.0)
        self.drop_nats = check_number("drop_nats", drop_nats, 0.0, low_open=True)
        if autocast is not None:
            check_bool("autocast", autocast)
        self.autocast = autocast
        if loss is not None:
            self._loss = L.get(loss)
            self._loss_params = self._loss.check(**dict(loss_params or {}))
        elif loss_params:
            raise ValueError("loss_params: expected None when loss=None (the loss then comes from TRL's config), "
                             f"got {dict(loss_params)!r}")
        else:
            self._loss, self._loss_params = None, {}
        self._pairs_in, self._tokenizer, self._max_length = pairs, tokenizer, max_length
        self.pairs = None
        if tokenizer is not None or not _needs_tokenizer(pairs):
            self.pairs = as_token_pairs(pairs, tokenizer, max_length=max_length)
            if len(self.pairs) == 0:
                raise ValueError("pairs: expected at least one probe pair, got none")
        self.ref_model = ref_model
        self.ref: PairLogProbs | None = None
        self.history: list[dict[str, float]] = []
        self.warnings: list[dict[str, Any]] = []
        self._bf16 = False

    # ------------------------------------------------------------------ the measurement
    def _logprobs(self, model: Any) -> PairLogProbs | None:
        """Log-probs of this process's share of the probe pairs, gathered: every pair's on the main
        process (in pair order), ``None`` on the others."""
        rank, world = _dist()
        n = len(self.pairs)
        mine = list(range(rank, n, world))
        bf16 = self._bf16 if self.autocast is None else (self.autocast and model_device(model).type == "cuda")
        kw = dict(batch_size=self.batch_size, autocast=torch.bfloat16 if bf16 else None)
        part = pair_logprobs(model, self.pairs.select(mine), **kw) if mine else None
        if world == 1:
            return part
        cols = ("chosen", "rejected", "chosen_len", "rejected_len")
        local = None if part is None else {c: getattr(part, c) for c in cols}
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, local)
        if rank != 0:
            return None
        out = {c: torch.empty(n, dtype=torch.float64 if "len" not in c else torch.long) for c in cols}
        for r, g in enumerate(gathered):
            if g is not None:
                for c in cols:
                    out[c][r::world] = g[c]
        z = torch.zeros(n, 0, dtype=torch.float64)
        return PairLogProbs(out["chosen"], out["rejected"], out["chosen_len"], out["rejected_len"], z, z)

    def measure(self, lp: PairLogProbs) -> dict[str, float]:
        """The row of the probes at the policy log-probs ``lp`` against the reference's (:attr:`ref`):
        every column of ``PROBE_COLUMNS`` but ``step``/``grad_norm``, plus ``margin`` and ``log_mass_kept``."""
        ref = self.ref
        pr = gradient_probes(self._loss, lp.chosen, lp.rejected, ref.chosen, ref.rejected, lp.chosen_len,
                             lp.rejected_len, **self._loss_params)
        row = probe_row(pr, lp.chosen, lp.rejected, lp.chosen_len, lp.rejected_len)
        row["margin"] = float(pr.margin.mean())
        kept = (torch.logaddexp(lp.chosen, lp.rejected) - torch.logaddexp(ref.chosen, ref.rejected))
        row["log_mass_kept"] = float(kept.mean())
        return row

    def _probe(self, state: Any, model: Any) -> None:
        lp = self._logprobs(model)
        if lp is None or not state.is_world_process_zero:
            return
        row = {"step": int(state.global_step), **self.measure(lp)}
        prev = self.history[-1] if self.history else None
        self.history.append(row)
        state.log_history.append({"step": row["step"], **{f"3d/{k}": row[k] for k in LOGGED}})
        for kind, message in self.check(row, prev):
            self.warnings.append({"step": row["step"], "kind": kind, "message": message})
            logger.warning("prefdyn ThreeDCallback, step %d: %s: %s", row["step"], kind, message)
            state.log_history.append({"step": row["step"], "3d/warning": f"{kind}: {message}"})

    def check(self, row: Mapping[str, float], prev: Mapping[str, float] | None) -> list[tuple[str, str]]:
        """The warnings ``row`` raises after ``prev`` (the previous probe's row), each kind once per run:
        a list of ``(kind, message)``."""
        given = {w["kind"] for w in self.warnings}
        out = []
        if ("degradation" not in given and prev is not None and row["drift_chosen"] < -self.degradation_nats
                and row["drift_chosen"] < prev["drift_chosen"] and row["margin"] > prev["margin"]):
            out.append(("degradation",
                        f"the chosen responses' log-prob falls ({row['drift_chosen']:+.3g} nats per "
                        f"token from the reference, {row['drift_chosen'] - prev['drift_chosen']:+.3g} since step "
                        f"{prev['step']:.0f}) while the margin still rises ({prev['margin']:.3g} -> "
                        f"{row['margin']:.3g})"))
        if "drastic_drop" not in given and row["drift_rejected"] < -self.drop_nats:
            out.append(("drastic_drop",
                        f"the rejected responses' log-prob has fallen {-row['drift_rejected']:.3g} "
                        f"nats per token from the reference (threshold {self.drop_nats:g}); the chosen moved "
                        f"{row['drift_chosen']:+.3g}"))
        return out

    def columns(self) -> dict[str, "np.ndarray"]:
        """:attr:`history` as columns: ``{name: float64 array over the probes}`` (``step`` first)."""
        import numpy as np

        if not self.history:
            return {}
        return {k: np.array([r[k] for r in self.history], dtype=np.float64) for k in self.history[0]}

    def first_warning(self, kind: str) -> int | None:
        """The step at which warning ``kind`` (one of :data:`WARNINGS`) was given, or ``None``."""
        if kind not in WARNINGS:
            raise ValueError(f"kind: expected one of {', '.join(WARNINGS)}, got {kind!r}")
        return next((w["step"] for w in self.warnings if w["kind"] == kind), None)

    # ------------------------------------------------------------------ the trainer's events
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self._loss is None:
            self._loss, self._loss_params = _loss_from_config(args)
        if self.pairs is None:
            tok = self._tokenizer if self._tokenizer is not None else processing_class
            tok = getattr(tok, "tokenizer", tok)                  # a processor wraps its tokenizer
            if tok is None:
                raise ValueError("tokenizer: the probe pairs are texts and the trainer has no processing_class; "
                                 "pass tokenizer= to ThreeDCallback")
            self.pairs = as_token_pairs(self._pairs_in, tok, max_length=self._max_length)
            if len(self.pairs) == 0:
                raise ValueError("pairs: expected at least one probe pair, got none")
        self._bf16 = bool(getattr(args, "bf16", False))
        self.history, self.warnings = [], []
        # the reference's log-probs: every pair's on the main process, None on the others
        self.ref = self._logprobs(self.ref_model if self.ref_model is not None else model)
        self._probe(state, model)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._probe(state, model)
        return control


def _needs_tokenizer(pairs: Any) -> bool:
    """Whether ``pairs`` are text pairs (a list of dicts with ``prompt``/``chosen``/``rejected``), which
    are tokenized when training begins unless a tokenizer was given."""
    try:
        first = pairs[0]
    except (TypeError, IndexError, KeyError):
        return False
    return isinstance(first, Mapping) and "prompt" in first and "prompt_ids" not in first


def _loss_from_config(args: Any) -> tuple[L.Loss, dict[str, Any]]:
    """DPO with the config's ``beta`` when the trainer's ``loss_type`` is TRL's ``sigmoid`` (or the config
    has no ``loss_type``, a plain ``transformers.Trainer``: then ``loss=`` is required)."""
    lt = getattr(args, "loss_type", None)
    key = tuple([lt] if isinstance(lt, str) else lt or ())
    beta = getattr(args, "beta", None)
    if key in _TRL_LOSSES and isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0:
        Lo = L.get(_TRL_LOSSES[key])
        return Lo, Lo.check(beta=float(beta))
    raise ValueError(f"loss: the trainer's loss_type {list(key) or None} is not one of "
                     f"{[list(k) for k in _TRL_LOSSES]} with a beta; pass loss= (a name of prefdyn.losses) and "
                     f"loss_params= to ThreeDCallback")
