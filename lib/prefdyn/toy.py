"""The toy model of 000 Sec. 3.2: a batched, GPU-capable trainer in which the 3D-properties can be watched.

000 Sec. 3.2.1 builds a discrete space of 4 prompts x 10 responses. A policy maps a one-hot prompt to a
categorical distribution over the responses. Step 1 (SFT) fits the policy to hand-specified output
probabilities; step 2 runs DPO on preference pairs whose chosen response is the prompt's optimal one and
whose rejected response is drawn from the rejected block. This module implements that set-up for any
loss of :mod:`prefdyn.losses`, and trains many seeds *and* configurations (losses, loss parameters,
initial distributions, learning rates) at once: every tensor carries a leading member dimension ``M``.

Reading of the paper's set-up (000 Sec. 3.2.1, Fig. 1), where the text leaves room
---------------------------------------------------------------------------------------
- Response space. With ``P`` prompts, ``n_rejected`` rejected and ``n_unseen`` unseen responses,
  ``R = P + n_rejected + n_unseen``; indices ``0..P-1`` are the chosen block (response ``p`` is optimal for
  prompt ``p``, "response 1 is optimal for prompt 1"), then the rejected block, then the unseen block.
  Defaults 4 / 4 / 2 give the paper's 4 x 10.
- Roles relative to one prompt ``x`` (what the records measure):
  *chosen* = the optimal response ``x``; *rejected* = the rejected block (every rejected response occurs
  with every prompt, since rejected responses are drawn at random per pair); *unseen* = the unseen block,
  responses that never occur in any pair ("the final 2 dimensions to unseen responses not present in the
  preference dataset"); *other* = the other prompts' optimal responses. These are in the data, but never
  paired with ``x``. The paper does not say how to count them; we keep them apart from "unseen" and
  record them separately, so the dispersion we report (unseen mass) is the paper's narrow reading, and
  the mass on *other* is shown next to it.
- pi(rejected) in the records is the likelihood of *one* rejected response (the mean over the rejected block),
  the quantity the paper sets to 0.12 in Sec. 3.2.2; the summed rejected mass is recorded as well.
- The data. "Optimally chosen responses and randomly selected rejected responses": at every step each
  prompt gets ``pairs_per_prompt`` pairs, chosen = its optimal response, rejected drawn uniformly (with
  replacement) from the rejected block, fresh at every step (an infinite stream of pairs, i.e. SGD over
  the pair distribution rather than epochs over a fixed finite set). The draw depends only on
  (seed, step, prompt, slot), so every configuration trained with the same seed sees the same pairs
  (common random numbers: differences between losses are not sampling noise).
- The initial distribution of Sec. 3.2.2, "the likelihood of each chosen and rejected response at 0.12":
  every response of the chosen and rejected blocks at 0.12 (including the other prompts' optimal
  responses), the remaining 0.04 shared by the 2 unseen responses (see :func:`initial_distribution`).
- The scenarios of Fig. 3 / Table 4: "on-policy" = high initial probability, "off-policy" = low, for the
  chosen and the rejected block separately (see :data:`SCENARIOS`, :func:`scenario_distribution`). The
  paper gives no numbers for the toy scenarios; ours are parameters.
- The MLP ("a three-layer MLP that processes a one-hot vector"): three linear layers,
  one-hot(P) -> H -> H -> R, with an activation (ReLU by default) between them, initialised like
  ``torch.nn.Linear`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases). Hidden width,
  activation, optimiser, learning rate and step counts are not given in the paper; they are parameters
  here. SFT (step 1) minimises the cross-entropy to the target probabilities (= KL + const) with Adam; the
  reference policy pi_0 of the preference losses is the policy *after* SFT (its actual probabilities).
- The tabular-logit policy (one free logit per prompt and response) is the contrast case: for any loss
  of the log-probs of the pair, the logit gradient is ``g+ (e+ - pi) + g- (e- - pi)``; for DPO-like losses
  ``g+ = -g-`` so the ``pi`` terms cancel and the logits of responses outside the pair never move.
  Dispersion in the MLP therefore comes from shared parameters, not from the loss alone.

Gradients in probability space
------------------------------
Every step records dl/dpi+ and dl/dpi- per pair from the same backward pass that trains the policy:
``torch.autograd.grad`` is asked for the gradient of the loss with respect to the parameters *and* to
the gathered log-probs of the pair, then dl/dpi = (dl/dlog pi) / pi (000 Sec. 3.1). For DPO the ratio
|dl/dpi-| / |dl/dpi+| = pi+/pi- (000 Corollary 1); the tests check this and compare the recorded
gradients with :func:`prefdyn.losses.logprob_grads` when it exists.

Batched ensembles
-----------------
Every layer is one leaf tensor with a leading member dimension ``[M, ...]``, and the forward pass is
``torch.baddbmm`` over members. The optimisers here (:class:`BatchedAdam`,
:class:`BatchedSGD`) are elementwise with a per-member learning rate, so members never interact: a member
trained in a batch equals the same member trained alone (to float rounding, tested). Losses are evaluated
once per configuration group on a contiguous slice of members; everything else is one computation.

Randomness is counter-based (a 32-bit integer hash of seed, stream and index, :func:`counter_uniform`):
a member's initial weights and its pairs depend only on its seed, never on the batch it is trained in.

Seed paper: ``shared/seeds/000_5df0dc2126a6b6d8.txt`` (000), Sec. 3.2, Figs. 1-3, Prop. 1, App. B, D.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ToySpec", "SCENARIOS", "initial_distribution", "scenario_distribution",
    "counter_uniform", "resolve_device", "log_softmax_responses",
    "BatchedPolicy", "TabularPolicy", "MLPPolicy", "make_policy", "POLICIES",
    "BatchedAdam", "BatchedSGD", "make_optimizer", "OPTIMIZERS",
    "sft", "sample_rejected", "ToyConfig", "ToyRun", "run_grid", "train",
    "RECORDS", "member_indicators", "summarise", "summarise_members", "mean_ci", "geo_mean_ci", "curve_ci",
    "INDICATORS", "GEOMETRIC", "BOUNDS", "KEY_INDICATORS", "json_summary", "three_d", "plot_band", "role_probs",
    "cpu_settings", "bench", "bench_cli",
    "as_seeds", "check_int", "resolve_init", "hash_keys",
]

# ================================================================================================
# Devices and counter-based randomness
# ================================================================================================

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)`` (validated)."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:n]', got {device!r}") from None
    else:
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:n]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available (use device='auto')")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: only cpu and cuda are supported, got {device!r}")
    return dev


class cpu_settings:
    """Context manager for the toy's tiny tensors on the CPU: ``threads`` intra-op threads (restored on
    exit; ``None`` leaves torch's setting) and flush-to-zero of subnormal floats (``flush_denormal``; set
    back to torch's default, off, on exit).

    Why: the toy's tensors are a few hundred kB, so intra-op threads only add synchronisation, which on
    a shared, oversubscribed 2-core machine made single steps 10-50x slower in our measurements; and
    Adam's second moments and the gradients of near-zero probabilities reach subnormal floats (below
    1.2e-38 in float32), which the CPU handles in slow microcode (2x per step measured). Flushing them to
    zero changes no recorded number at the precision we report.
    """

    def __init__(self, threads: int | None = 1, flush_denormal: bool = True):
        if threads is not None:
            check_int("threads", threads, 1)
        self.threads, self.flush = threads, bool(flush_denormal)

    def __enter__(self):
        self._old = torch.get_num_threads()
        if self.threads is not None and self.threads != self._old:
            torch.set_num_threads(self.threads)
        if self.flush:
            torch.set_flush_denormal(True)
        return self

    def __exit__(self, *exc):
        if self.threads is not None and torch.get_num_threads() != self._old:
            torch.set_num_threads(self._old)
        if self.flush:
            torch.set_flush_denormal(False)
        return False


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 ``x`` in [0, 2**32) without int64 overflow (c split in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """The 'lowbias32' integer hash (C. Wellons) on int64 tensors holding 32-bit values."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def hash_keys(*keys) -> torch.Tensor:
    """Hash a tuple of broadcastable int64 tensors (or ints) to 32-bit values, order-sensitive."""
    h = None
    for k in keys:
        k = torch.as_tensor(k, dtype=torch.int64) if not isinstance(k, torch.Tensor) else k.to(torch.int64)
        k = k & _M32
        h = _hash32(k ^ 0x9E3779B9) if h is None else _hash32(_hash32(h) ^ k)
    return h


def counter_uniform(seeds: torch.Tensor, stream: int, n: int, dtype=torch.float64) -> torch.Tensor:
    """Uniform numbers in (0, 1) of shape ``[M, n]``: row m depends only on (seeds[m], stream, index).

    Counter-based (hash of the key), so a member's random numbers do not depend on which other members
    share its batch. 32 bits of resolution, plenty for initial weights.
    """
    seeds = torch.as_tensor(seeds, dtype=torch.int64)
    idx = torch.arange(n, dtype=torch.int64, device=seeds.device)
    h = hash_keys(seeds[:, None], stream, idx[None, :])
    return (h.to(torch.float64) + 0.5).div_(2.0 ** 32).to(dtype)


# ================================================================================================
# The toy space (000 Sec. 3.2.1, Fig. 1)
# ================================================================================================

@dataclass(frozen=True)
class ToySpec:
    """The discrete prompt x response space of 000 Sec. 3.2.1 (default 4 x 10).

    Responses ``0..n_prompts-1`` form the chosen block (response p is optimal for prompt p), then
    ``n_rejected`` rejected responses, then ``n_unseen`` responses that never occur in the data.
    """

    n_prompts: int = 4
    n_rejected: int = 4
    n_unseen: int = 2

    def __post_init__(self):
        for name, low in (("n_prompts", 1), ("n_rejected", 1), ("n_unseen", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")

    @property
    def n_responses(self) -> int:
        return self.n_prompts + self.n_rejected + self.n_unseen

    @property
    def chosen_block(self) -> range:
        return range(0, self.n_prompts)

    @property
    def rejected_block(self) -> range:
        return range(self.n_prompts, self.n_prompts + self.n_rejected)

    @property
    def unseen_block(self) -> range:
        return range(self.n_prompts + self.n_rejected, self.n_responses)

    def role_masks(self, device=None) -> dict[str, torch.Tensor]:
        """Boolean masks ``[P, R]``: chosen (the prompt's optimal response), other (the other prompts'
        optimal responses), rejected (the rejected block), unseen (never in the data)."""
        P, R = self.n_prompts, self.n_responses
        eye = torch.zeros(P, R, dtype=torch.bool, device=device)
        eye[torch.arange(P), torch.arange(P)] = True
        block = torch.zeros(P, R, dtype=torch.bool, device=device)
        block[:, : self.n_prompts] = True
        rej = torch.zeros(P, R, dtype=torch.bool, device=device)
        rej[:, self.rejected_block.start: self.rejected_block.stop] = True
        uns = torch.zeros(P, R, dtype=torch.bool, device=device)
        uns[:, self.unseen_block.start: self.unseen_block.stop] = True
        return {"chosen": eye, "other": block & ~eye, "rejected": rej, "unseen": uns}

    def role_of(self, prompt: int, response: int) -> str:
        """The role ('chosen', 'other', 'rejected', 'unseen') of ``response`` for ``prompt``."""
        if response == prompt:
            return "chosen"
        if response < self.n_prompts:
            return "other"
        if response < self.n_prompts + self.n_rejected:
            return "rejected"
        return "unseen"


def initial_distribution(spec: ToySpec, p_chosen: float = 0.12, p_rejected: float = 0.12,
                         p_other: float | None = None) -> torch.Tensor:
    """The SFT target of step 1 (000 Sec. 3.2.1), the same for every prompt: ``[P, R]`` float64.

    The prompt's optimal response gets ``p_chosen``, each rejected response ``p_rejected``, each other
    prompt's optimal response ``p_other`` (default ``p_chosen``: the paper's "each chosen and rejected
    response at 0.12", 000 Sec. 3.2.2, where responses 1-4 are all "chosen responses"), and the unseen
    responses share the remainder equally. All probabilities must come out > 0 (finite logits).
    """
    p_other = p_chosen if p_other is None else p_other
    for name, v in (("p_chosen", p_chosen), ("p_rejected", p_rejected), ("p_other", p_other)):
        if not isinstance(v, (int, float, np.floating)) or isinstance(v, bool) or not (0.0 < float(v) < 1.0):
            raise ValueError(f"{name}: expected a probability in (0, 1), got {v!r}")
    P, R = spec.n_prompts, spec.n_responses
    used = p_chosen + (P - 1) * p_other + spec.n_rejected * p_rejected
    rest = 1.0 - used
    if spec.n_unseen == 0:
        if abs(rest) > 1e-9:
            raise ValueError(f"p_chosen/p_rejected/p_other: with n_unseen=0 they must sum to 1 per prompt, got {used:.6g}")
        rest_each = 0.0
    else:
        if rest <= 1e-12:
            raise ValueError(
                f"p_chosen/p_rejected/p_other: the in-data responses take {used:.6g} >= 1 of the mass per prompt;"
                " lower them so the unseen responses keep a positive probability")
        rest_each = rest / spec.n_unseen
    probs = torch.full((P, R), float(p_other), dtype=torch.float64)
    probs[:, spec.rejected_block.start: spec.rejected_block.stop] = float(p_rejected)
    probs[:, spec.unseen_block.start: spec.unseen_block.stop] = rest_each
    probs[torch.arange(P), torch.arange(P)] = float(p_chosen)
    return probs


#: The four scenarios of 000 Fig. 3 / Table 4: (chosen on-policy?, rejected on-policy?).
SCENARIOS: dict[str, tuple[bool, bool]] = {
    "s1": (True, True),     # chosen on-policy,  rejected on-policy
    "s2": (False, True),    # chosen off-policy, rejected on-policy
    "s3": (True, False),    # chosen on-policy,  rejected off-policy
    "s4": (False, False),   # chosen off-policy, rejected off-policy
}
SCENARIO_LABELS = {
    "s1": "S1: chosen on, rejected on",
    "s2": "S2: chosen off, rejected on",
    "s3": "S3: chosen on, rejected off",
    "s4": "S4: chosen off, rejected off",
}


def scenario_distribution(spec: ToySpec, scenario: str, on: float = 0.12, off: float = 0.01) -> torch.Tensor:
    """The initial distribution of a scenario of 000 Fig. 3: on-policy = probability ``on`` per response,
    off-policy = ``off``, for the chosen block and the rejected block separately; the unseen responses take
    the rest (so off-policy data means that the policy's mass sits on responses outside the data)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: expected one of {', '.join(SCENARIOS)}, got {scenario!r}")
    c_on, r_on = SCENARIOS[scenario]
    pc = on if c_on else off
    pr = on if r_on else off
    return initial_distribution(spec, p_chosen=pc, p_rejected=pr, p_other=pc)


# ================================================================================================
# Batched policies
# ================================================================================================

def log_softmax_responses(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last dimension. On the CPU it is computed on a copy with that dimension
    moved to the front and returned as a view in the original layout: PyTorch's CPU kernel is several
    times faster (forward and backward) when the reduced dimension is not the innermost one and is as
    short as the toy's 10 responses. Same values up to float rounding."""
    if logits.device.type != "cpu" or logits.ndim < 2:
        return torch.log_softmax(logits, dim=-1)
    return torch.log_softmax(logits.movedim(-1, 0).contiguous(), dim=0).movedim(0, -1)


class BatchedPolicy:
    """An ensemble of ``M`` independent policies over a :class:`ToySpec`, one leaf tensor per layer.

    Interface (shared by :class:`TabularPolicy` and :class:`MLPPolicy`, used by :mod:`prefdyn.rlhf`):

    - ``params``: dict layer name -> leaf tensor ``[M, *shape]`` (``requires_grad=True``); index m along
      the leading dimension = member m. ``param_list()`` gives them in a fixed order (for autograd and
      the optimisers);
    - ``forward(params=None) -> [M, P, R]``: raw outputs (logits; a reward model reads them as rewards);
    - ``log_probs(params=None)``, ``probs()`` (detached): the categorical policy over responses;
    - ``seeds``: int64 ``[M]``, the seed each member was initialised from (counter-based, so a member's
      initial parameters do not depend on the other members);
    - ``members``, ``spec``, ``device``, ``dtype``, ``n_params`` (per member); ``clone()``,
      ``subset(index)``, ``flat()`` (detached ``[M, n_params]``), ``load_flat(theta)``.

    Pass ``params`` (a dict like ``self.params``) to evaluate other parameter values (e.g. in
    ``torch.func.functional_call`` style); by default the policy's own leaves are used.
    """

    kind = "base"

    def __init__(self, spec: ToySpec, seeds, *, device="auto", dtype=torch.float32):
        if not isinstance(spec, ToySpec):
            raise ValueError(f"spec: expected a ToySpec, got {type(spec).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        seeds = as_seeds(seeds)
        self.spec = spec
        self.device = resolve_device(device)
        self.dtype = dtype
        self.seeds = seeds.to(self.device)
        self.layout: list[tuple[str, tuple[int, ...], int]] = []   # (name, shape, offset in flat())
        self.n_params = 0
        self._build_layout()
        self.load_flat(self._init_flat())

    # -- to implement -------------------------------------------------------------------------
    def _build_layout(self) -> None:
        raise NotImplementedError

    def _init_flat(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def _add(self, name: str, shape: tuple[int, ...]) -> None:
        self.layout.append((name, tuple(shape), self.n_params))
        self.n_params += int(np.prod(shape))

    def param_list(self) -> list[torch.Tensor]:
        """The leaves in layout order."""
        return [self.params[name] for name, _, _ in self.layout]

    def flat(self) -> torch.Tensor:
        """All parameters, detached, as ``[M, n_params]`` (layout order)."""
        M = self.members
        return torch.cat([p.detach().reshape(M, -1) for p in self.param_list()], dim=1)

    @torch.no_grad()
    def load_flat(self, theta: torch.Tensor) -> None:
        """Replace the parameters by ``theta [M', n_params]`` (new leaves; ``M'`` may differ only if it
        matches ``seeds``)."""
        theta = torch.as_tensor(theta)
        if theta.ndim != 2 or theta.shape != (len(self.seeds), self.n_params):
            raise ValueError(f"theta: expected shape [{len(self.seeds)}, {self.n_params}], got {tuple(theta.shape)}")
        theta = theta.to(device=self.device, dtype=self.dtype)
        self.params = {
            name: theta[:, off: off + int(np.prod(shape))].reshape(-1, *shape).clone().requires_grad_(True)
            for name, shape, off in self.layout}

    @property
    def members(self) -> int:
        return int(len(self.seeds))

    def logits(self, params=None) -> torch.Tensor:
        """Alias of :meth:`forward`: ``[M, P, R]``."""
        return self.forward(params)

    def log_probs(self, params=None) -> torch.Tensor:
        """log pi(a|x), ``[M, P, R]`` (``log_softmax`` over responses, see :func:`log_softmax_responses`)."""
        return log_softmax_responses(self.forward(params))

    @torch.no_grad()
    def probs(self) -> torch.Tensor:
        """pi(a|x), detached, ``[M, P, R]``."""
        return torch.softmax(self.forward(), dim=-1)

    def clone(self) -> "BatchedPolicy":
        """An independent copy (same seeds, copied parameters)."""
        return self.subset(slice(None))

    def subset(self, index) -> "BatchedPolicy":
        """A new policy holding members ``index`` (int, slice, list, bool mask or tensor), parameters copied."""
        idx = _as_index(index, self.members, self.device)
        new = object.__new__(type(self))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("params", "seeds")})
        new.seeds = self.seeds[idx].clone()
        new.params = {k: v.detach()[idx].clone().requires_grad_(True) for k, v in self.params.items()}
        return new

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(members={self.members}, spec={self.spec}, n_params={self.n_params}, "
                f"device={self.device.type}, dtype={str(self.dtype).replace('torch.', '')})")


class TabularPolicy(BatchedPolicy):
    """One free logit per (prompt, response): ``logits[m, p, r] = params["logits"][m, p, r]``; initialised
    at 0 (uniform). The contrast case of the toy (see the module docstring)."""

    kind = "tabular"

    def _build_layout(self):
        self._add("logits", (self.spec.n_prompts, self.spec.n_responses))

    def _init_flat(self):
        return torch.zeros(len(self.seeds), self.n_params, dtype=self.dtype, device=self.device)

    def forward(self, params=None):
        params = self.params if params is None else params
        return params["logits"]


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu,
}


class MLPPolicy(BatchedPolicy):
    """The three-layer MLP of 000 Sec. 3.2.1: one-hot prompt -> H -> H -> R logits, per member.

    ``h1 = act(onehot(x) W1 + b1)`` (the one-hot product is a row of ``W1``), ``h2 = act(h1 W2 + b2)``,
    ``logits = h2 W3 + b3``; all members at once with ``torch.baddbmm``. Leaves ``W1 [M, P, H]``,
    ``b1 [M, 1, H]``, ``W2 [M, H, H]``, ``b2``, ``W3 [M, H, R]``, ``b3 [M, 1, R]`` (``W`` is stored
    ``[in, out]`` = ``nn.Linear.weight.T``). Initialisation as ``torch.nn.Linear``
    (U(-1/sqrt(fan_in), +1/sqrt(fan_in)) for weights and biases), drawn from :func:`counter_uniform`
    with the member's seed.
    """

    kind = "mlp"

    def __init__(self, spec: ToySpec, seeds, *, hidden: int = 64, activation: str = "relu",
                 device="auto", dtype=torch.float32):
        if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 1:
            raise ValueError(f"hidden: expected an integer >= 1, got {hidden!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        self.hidden = int(hidden)
        self.activation = activation
        super().__init__(spec, seeds, device=device, dtype=dtype)

    def _build_layout(self):
        P, R, H = self.spec.n_prompts, self.spec.n_responses, self.hidden
        self._add("W1", (P, H)); self._add("b1", (1, H))
        self._add("W2", (H, H)); self._add("b2", (1, H))
        self._add("W3", (H, R)); self._add("b3", (1, R))

    def _init_flat(self):
        bound = torch.empty(self.n_params, dtype=torch.float64)
        fan_in = {"W1": self.spec.n_prompts, "b1": self.spec.n_prompts, "W2": self.hidden,
                  "b2": self.hidden, "W3": self.hidden, "b3": self.hidden}
        for name, shape, off in self.layout:
            bound[off: off + int(np.prod(shape))] = 1.0 / math.sqrt(fan_in[name])
        u = counter_uniform(self.seeds.cpu(), stream=1, n=self.n_params)        # [M, N] in (0, 1)
        return ((2.0 * u - 1.0) * bound).to(device=self.device, dtype=self.dtype)

    def forward(self, params=None):
        v = self.params if params is None else params
        act = _ACTIVATIONS[self.activation]
        h1 = act(v["W1"] + v["b1"])                              # one-hot(x) @ W1 + b1, [M, P, H]
        h2 = act(torch.baddbmm(v["b2"], h1, v["W2"]))            # [M, P, H]
        return torch.baddbmm(v["b3"], h2, v["W3"])               # [M, P, R]


POLICIES = {"mlp": MLPPolicy, "tabular": TabularPolicy}


def make_policy(kind: str, spec: ToySpec, seeds, *, hidden: int = 64, activation: str = "relu",
                device="auto", dtype=torch.float32) -> BatchedPolicy:
    """A batched policy: ``kind`` is ``"mlp"`` (000 Sec. 3.2.1) or ``"tabular"``; one member per seed."""
    if kind not in POLICIES:
        raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, got {kind!r}")
    if kind == "mlp":
        return MLPPolicy(spec, seeds, hidden=hidden, activation=activation, device=device, dtype=dtype)
    return TabularPolicy(spec, seeds, device=device, dtype=dtype)


def as_seeds(seeds) -> torch.Tensor:
    """Seeds as a 1-D int64 tensor: a count ``n`` means ``0..n-1``; a list is taken as given (validated)."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds: expected a positive count or a list of seeds, got {seeds!r}")
        return torch.arange(int(seeds), dtype=torch.int64)
    try:
        t = torch.as_tensor(seeds)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"seeds: expected a count or a 1-D list of non-negative integers, got {seeds!r}") from None
    if t.ndim != 1 or t.numel() == 0 or t.dtype.is_floating_point or t.dtype == torch.bool or bool((t < 0).any()):
        raise ValueError(f"seeds: expected a count or a 1-D list of non-negative integers, got {seeds!r}")
    return t.to(torch.int64).cpu()


def _as_index(index, n: int, device) -> torch.Tensor:
    if isinstance(index, slice):
        return torch.arange(n, device=device)[index]
    t = torch.as_tensor(index, device=device)
    if t.ndim == 0:
        t = t[None]
    if t.dtype == torch.bool:
        t = t.nonzero().flatten()
    if t.numel() == 0 or bool((t < -n).any()) or bool((t >= n).any()):
        raise ValueError(f"index: expected member indices in [0, {n}), got {index!r}")
    return t.to(torch.int64)


# ================================================================================================
# Optimisers with a member dimension
# ================================================================================================

class BatchedSGD:
    """Plain gradient descent on a list of ``[M, ...]`` leaves, learning rate per member (``[M]`` or scalar)."""

    def __init__(self, params: Sequence[torch.Tensor], lr):
        self.params = _check_params(params)
        self.lr = _lr_tensor(lr, self.params[0])

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.sub_(self.lr.view(-1, *([1] * (p.ndim - 1))) * g)


class BatchedAdam:
    """Adam (``torch.optim.Adam`` defaults: betas=(0.9, 0.999), eps=1e-8, no weight decay) on a list of
    ``[M, ...]`` leaves with a per-member learning rate.

    Adam is elementwise, so members never interact. The update runs ``torch._fused_adam_`` (the kernel of
    ``torch.optim.Adam(fused=True)``: one pass over memory, several times faster than a chain of tensor
    ops at these sizes) once per run of consecutive members sharing a learning rate, on contiguous
    row blocks; where that kernel is unavailable it falls back to the same formula in plain tensor ops.
    Both match ``torch.optim.Adam`` to float rounding (tested).
    """

    def __init__(self, params: Sequence[torch.Tensor], lr, betas=(0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None):
        self.params = _check_params(params)
        self.lr = _lr_tensor(lr, self.params[0])
        self.b1, self.b2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.m = [torch.zeros_like(p).detach() for p in self.params]
        self.v = [torch.zeros_like(p).detach() for p in self.params]
        self.t = 0
        self.blocks: list[tuple[int, int, float]] = []             # (start, stop, lr) runs of equal lr
        for i, x in enumerate(self.lr.view(-1).tolist()):
            if self.blocks and self.blocks[-1][2] == x:
                self.blocks[-1] = (self.blocks[-1][0], i + 1, x)
            else:
                self.blocks.append((i, i + 1, x))
        self.fused = hasattr(torch, "_fused_adam_") if fused is None else bool(fused)
        self._step_t = torch.zeros((), dtype=torch.float32, device=self.params[0].device)

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.t += 1
        ps = [p.detach() for p in self.params]
        gs = [g.contiguous() for g in grads]
        if self.fused:
            try:
                self._step_t.fill_(float(self.t))
                for a, b, lr in self.blocks:
                    torch._fused_adam_([p[a:b] for p in ps], [g[a:b] for g in gs], [m[a:b] for m in self.m],
                                       [v[a:b] for v in self.v], [], [self._step_t] * len(ps),
                                       amsgrad=False, lr=lr, beta1=self.b1, beta2=self.b2, weight_decay=0.0,
                                       eps=self.eps, maximize=False, grad_scale=None, found_inf=None)
                return
            except (RuntimeError, TypeError, NotImplementedError):
                if self.t > 1:
                    raise
                self.fused = False                                # first step: fall back for good
        bc1 = 1.0 - self.b1 ** self.t
        bc2_sqrt = math.sqrt(1.0 - self.b2 ** self.t)
        for p, g, m, v in zip(ps, gs, self.m, self.v):
            m.lerp_(g, 1.0 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
            denom = v.sqrt().div_(bc2_sqrt).add_(self.eps)
            p.sub_(m.div(denom).mul_(self.lr.view(-1, *([1] * (p.ndim - 1))) / bc1))


OPTIMIZERS = {"adam": BatchedAdam, "sgd": BatchedSGD}


def make_optimizer(name: str, params: Sequence[torch.Tensor], lr):
    """``"adam"`` (the trainer's default) or ``"sgd"`` on a list of ``[M, ...]`` leaves (``policy.param_list()``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](params, lr)


def _check_params(params) -> list[torch.Tensor]:
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.ndim >= 1 and p.is_contiguous() for p in params):
        raise ValueError("params: expected a non-empty list of contiguous tensors with a leading member dimension")
    if len({p.shape[0] for p in params}) != 1:
        raise ValueError("params: every tensor must have the same leading (member) dimension")
    return params


def _lr_tensor(lr, ref: torch.Tensor) -> torch.Tensor:
    M = ref.shape[0]
    t = torch.as_tensor(lr, dtype=ref.dtype, device=ref.device)
    if t.ndim == 0:
        t = t.expand(M)
    if t.shape != (M,) or not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"lr: expected a positive number or one per member ({M}), got {lr!r}")
    return t.reshape(-1).clone()


# ================================================================================================
# Step 1: SFT to a specified distribution
# ================================================================================================

def sft(policy: BatchedPolicy, target, *, steps: int = 500, lr: float = 1e-2, optimizer: str = "adam",
        method: str = "auto") -> dict[str, torch.Tensor]:
    """Step 1 of 000 Sec. 3.2.1: fit ``policy`` to the output probabilities ``target`` ([P, R] or [M, P, R]).

    ``method="train"`` minimises the cross-entropy ``-sum_a target(a|x) log pi(a|x)`` (KL(target || pi) plus
    a constant) averaged over prompts, for ``steps`` full-batch steps (Adam by default), as the paper does
    ("using them as labels to train the model"); ``"exact"`` (tabular only) sets the logits to
    ``log target``. ``"auto"``: exact for the tabular policy, train for the MLP.
    Returns ``{"kl": [M], "max_abs_err": [M]}`` of the fitted policy (float64, detached).
    """
    target = _check_target(policy, target)
    if method not in ("auto", "train", "exact"):
        raise ValueError(f"method: expected 'auto', 'train' or 'exact', got {method!r}")
    if method == "auto":
        method = "exact" if isinstance(policy, TabularPolicy) else "train"
    if method == "exact":
        if not isinstance(policy, TabularPolicy):
            raise ValueError("method: 'exact' SFT needs the tabular policy; use 'train' for the MLP")
        with torch.no_grad():
            policy.params["logits"].copy_(target.log().to(policy.dtype))
    else:
        check_int("steps", steps, 0)
        params = policy.param_list()
        opt = make_optimizer(optimizer, params, lr)
        tgt = target.to(policy.dtype)
        for _ in range(int(steps)):
            logp = policy.log_probs()
            loss = -(tgt * logp).sum(-1).mean(-1).sum()
            opt.step(torch.autograd.grad(loss, params))
    with torch.no_grad():
        logp = policy.log_probs().to(torch.float64)
        kl = (target * (target.log() - logp)).sum(-1).mean(-1)
        err = (logp.exp() - target).abs().amax(dim=(-1, -2))
    return {"kl": kl, "max_abs_err": err}


def _check_target(policy: BatchedPolicy, target) -> torch.Tensor:
    P, R = policy.spec.n_prompts, policy.spec.n_responses
    t = torch.as_tensor(target, dtype=torch.float64, device=policy.device)
    if t.ndim == 2:
        t = t.expand(policy.members, P, R)
    if t.shape != (policy.members, P, R):
        raise ValueError(f"target: expected probabilities of shape [{P}, {R}] or [{policy.members}, {P}, {R}], got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()) or not torch.allclose(t.sum(-1), torch.ones((), dtype=t.dtype, device=t.device), atol=1e-6):
        raise ValueError("target: every row must be a probability vector with all entries > 0 summing to 1")
    return t / t.sum(-1, keepdim=True)


def check_int(name, v, low, high=None):
    """Raise a one-line ``ValueError`` naming ``name`` unless ``v`` is an integer in ``[low, high]``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected an integer {rng}, got {v!r}")


# ================================================================================================
# Step 2: preference pairs and training
# ================================================================================================

def sample_rejected(spec: ToySpec, seeds: torch.Tensor, steps: torch.Tensor, pairs_per_prompt: int) -> torch.Tensor:
    """Rejected responses of the pairs: int64 ``[T, M, P, K]`` for step indices ``steps [T]``.

    Uniform over the rejected block, a function of (seed, step, prompt, slot) only (counter-based hash).
    """
    P, K = spec.n_prompts, pairs_per_prompt
    dev = seeds.device
    h = hash_keys(seeds.view(1, -1, 1, 1), 2, steps.view(-1, 1, 1, 1).to(dev),
                   torch.arange(P, device=dev).view(1, 1, -1, 1), torch.arange(K, device=dev).view(1, 1, 1, -1))
    return spec.n_prompts + (h % spec.n_rejected)


@dataclass
class ToyConfig:
    """One configuration of a grid (all its seeds share it).

    ``loss``/``loss_params``: any loss of :mod:`prefdyn.losses` and its parameters (validated by
    ``losses.check_loss_params``); ``init``: the SFT target ``[P, R]`` (a tensor/array, a scenario name
    ``"s1".."s4"``, or a dict of :func:`initial_distribution` arguments; default: Sec. 3.2.2's 0.12);
    ``lr``: the preference-optimisation learning rate (``None`` = the grid's); ``name``: a label.
    """

    loss: str = "dpo"
    loss_params: dict = field(default_factory=dict)
    init: Any = None
    lr: float | None = None
    name: str | None = None

    def label(self) -> str:
        if self.name:
            return self.name
        ps = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.loss_params.items())
        return f"{self.loss}({ps})" if ps else self.loss


#: What :func:`run_grid` records per step and member (all averaged over the prompts of the member):
RECORDS = {
    "chosen": "pi(a+|x): the prompt's optimal response",
    "rejected": "mean pi(a|x) over the rejected block (likelihood of one rejected response)",
    "rejected_mass": "sum of pi(a|x) over the rejected block",
    "log_chosen": "mean over prompts of log pi(a+|x) (finite when pi underflows)",
    "log_rejected": "mean over prompts of log(mean pi over the rejected block), in log space",
    "other": "mass on the other prompts' optimal responses (in the data, never paired with x)",
    "unseen": "mass on responses that never occur in the data",
    "loss": "the preference loss, mean over the step's pairs",
    "grad_chosen": "mean over the step's pairs of |dl/dpi+| (float64; inf beyond its range, see log_grad_chosen)",
    "grad_rejected": "mean over the step's pairs of |dl/dpi-| (float64; inf beyond its range, see log_grad_rejected)",
    "log_grad_chosen": "natural log of grad_chosen, computed in log space (finite when pi underflows)",
    "log_grad_rejected": "natural log of grad_rejected, computed in log space",
    "dpi_chosen": "mean over the step's pairs of dl/dpi+ (signed)",
    "dpi_rejected": "mean over the step's pairs of dl/dpi- (signed)",
    "dlogp_chosen": "mean over the step's pairs of dl/dlog pi+ (signed)",
    "dlogp_rejected": "mean over the step's pairs of dl/dlog pi- (signed)",
}


@dataclass
class ToyRun:
    """The result of :func:`run_grid`.

    ``records[name]``: float64 numpy ``[n_records, M]`` (see :data:`RECORDS`) at the update counts
    ``steps`` (0 = after SFT, before any preference update; the last = after the final update).
    ``probs``: optional ``[n_records, M, P, R]`` (float32). Members are grouped by configuration:
    ``member_config[m]`` is the index into ``configs``, ``member_seed[m]`` the seed.
    """

    spec: ToySpec
    configs: list[ToyConfig]
    member_config: np.ndarray
    member_seed: np.ndarray
    steps: np.ndarray
    records: dict[str, np.ndarray]
    probs: np.ndarray | None
    init_probs: np.ndarray           # [M, P, R] after SFT (= pi_0)
    targets: np.ndarray              # [n_configs, P, R] the SFT targets
    sft_kl: np.ndarray               # [M]
    policy: BatchedPolicy
    settings: dict

    def members_of(self, config: int | str) -> np.ndarray:
        """Member indices of a configuration (by index or label)."""
        i = self.config_index(config)
        return np.flatnonzero(self.member_config == i)

    def config_index(self, config: int | str) -> int:
        if isinstance(config, str):
            labels = [c.label() for c in self.configs]
            if config not in labels:
                raise ValueError(f"config: expected one of {labels}, got {config!r}")
            return labels.index(config)
        if not 0 <= int(config) < len(self.configs):
            raise ValueError(f"config: expected an index in [0, {len(self.configs)}), got {config!r}")
        return int(config)

    def record(self, name: str, config: int | str) -> np.ndarray:
        """``records[name]`` of one configuration: ``[n_records, seeds]``."""
        if name not in self.records:
            raise ValueError(f"name: expected one of {', '.join(self.records)}, got {name!r}")
        return self.records[name][:, self.members_of(config)]


def resolve_init(spec: ToySpec, init) -> torch.Tensor:
    """The initial response distribution: the default of ``spec``, a scenario name, a mapping of keyword
    arguments (with an optional ``"scenario"``), or a given ``[n_prompts, n_responses]`` array."""
    if init is None:
        return initial_distribution(spec)
    if isinstance(init, str):
        return scenario_distribution(spec, init)
    if isinstance(init, Mapping):
        init = dict(init)
        if "scenario" in init:
            s = init.pop("scenario")
            return scenario_distribution(spec, s, **init)
        return initial_distribution(spec, **init)
    t = torch.as_tensor(np.asarray(init, dtype=np.float64))
    if t.shape != (spec.n_prompts, spec.n_responses):
        raise ValueError(f"init: expected probabilities of shape [{spec.n_prompts}, {spec.n_responses}], got {tuple(t.shape)}")
    return t


def _normalise_configs(configs) -> list[ToyConfig]:
    if isinstance(configs, (ToyConfig, Mapping)):
        configs = [configs]
    if not isinstance(configs, Sequence) or len(configs) == 0:
        raise ValueError("configs: expected a non-empty list of ToyConfig or dicts")
    out = []
    for c in configs:
        if isinstance(c, Mapping):
            unknown = set(c) - {f.name for f in dataclasses.fields(ToyConfig)}
            if unknown:
                raise ValueError(f"configs: unknown key(s) {sorted(unknown)}; allowed: loss, loss_params, init, lr, name")
            c = ToyConfig(**c)
        if not isinstance(c, ToyConfig):
            raise ValueError(f"configs: expected ToyConfig or dict entries, got {type(c).__name__}")
        out.append(c)
    return out


def run_grid(configs, seeds=32, *, spec: ToySpec | None = None, policy: str = "mlp", steps: int = 1000,
             lr: float = 1e-3, optimizer: str = "adam", pairs_per_prompt: int = 4, hidden: int = 64,
             activation: str = "relu", sft_steps: int = 500, sft_lr: float = 1e-2, record_every: int = 1,
             record_probs: bool = False, device="auto", dtype=torch.float32, progress: bool = True,
             desc: str | None = None, threads: int | None = 1) -> ToyRun:
    """Train every configuration in ``configs`` with every seed, all in one batched computation.

    Members are ``len(configs) x n_seeds``, grouped by configuration (member ``i * n_seeds + j`` = config
    ``i``, seed ``seeds[j]``). Step 1 (:func:`sft`) fits each member to its configuration's ``init``;
    step 2 runs ``steps`` updates of the preference loss on fresh pairs (:func:`sample_rejected`) and
    records :data:`RECORDS` every ``record_every`` updates (and after the last). See the module
    docstring for the reading of the paper's set-up. On the CPU the work runs inside
    :class:`cpu_settings` (``threads`` intra-op threads, subnormals flushed).
    """
    from . import losses as L

    spec = ToySpec() if spec is None else spec
    if not isinstance(spec, ToySpec):
        raise ValueError(f"spec: expected a ToySpec, got {type(spec).__name__}")
    configs = _normalise_configs(configs)
    seed_t = as_seeds(seeds)
    check_int("steps", steps, 0)
    check_int("pairs_per_prompt", pairs_per_prompt, 1)
    check_int("record_every", record_every, 1)
    check_int("sft_steps", sft_steps, 0)
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    for name, v in (("lr", lr), ("sft_lr", sft_lr)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name}: expected a positive number, got {v!r}")
    # validate every configuration before any heavy work
    checked = []
    for i, c in enumerate(configs):
        if c.loss not in L.LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(L.LOSSES)}, got {c.loss!r} (config {i})")
        params = L.check_loss_params(c.loss, **dict(c.loss_params))
        target = resolve_init(spec, c.init)
        c_lr = lr if c.lr is None else c.lr
        if isinstance(c_lr, bool) or not isinstance(c_lr, (int, float)) or not (c_lr > 0 and math.isfinite(c_lr)):
            raise ValueError(f"lr: expected a positive number, got {c.lr!r} (config {i})")
        checked.append((c.loss, params, target, float(c_lr)))
    dev = resolve_device(device)
    S, C = len(seed_t), len(configs)
    M = S * C
    member_seed = seed_t.repeat(C)
    member_config = torch.arange(C).repeat_interleave(S)
    targets = torch.stack([t for _, _, t, _ in checked])                       # [C, P, R]

    if threads is not None:
        check_int("threads", threads, 1)
    with cpu_settings(threads if dev.type == "cpu" else None, flush_denormal=dev.type == "cpu"):
        pol = make_policy(policy, spec, member_seed, hidden=hidden, activation=activation, device=dev, dtype=dtype)
        fit = sft(pol, targets.to(dev)[member_config.to(dev)], steps=sft_steps, lr=sft_lr)
        groups = _loss_groups([(loss, params) for loss, params, _, _ in checked], S, dev, dtype)
        lrs = torch.tensor([c_lr for *_, c_lr in checked], dtype=torch.float64).repeat_interleave(S)
        init_probs = pol.probs().to(torch.float64).cpu().numpy()
        rec, rec_steps, probs = _preference_train(
            pol, groups, steps=steps, lr=lrs, optimizer=optimizer, pairs_per_prompt=pairs_per_prompt,
            record_every=record_every, record_probs=record_probs, progress=progress, desc=desc)
    settings = dict(policy=policy, steps=steps, lr=lr, optimizer=optimizer, pairs_per_prompt=pairs_per_prompt,
                    hidden=hidden, activation=activation, sft_steps=sft_steps, sft_lr=sft_lr,
                    record_every=record_every, device=dev.type, dtype=str(dtype).replace("torch.", ""),
                    seeds=seed_t.tolist())
    return ToyRun(spec=spec, configs=configs, member_config=member_config.numpy(),
                  member_seed=member_seed.numpy(), steps=rec_steps, records=rec, probs=probs,
                  init_probs=init_probs, targets=targets.numpy(), sft_kl=fit["kl"].cpu().numpy(),
                  policy=pol, settings=settings)


def _loss_groups(loss_params: list[tuple[str, dict]], n_seeds: int, device, dtype) -> list[tuple[slice, str, dict]]:
    """Merge adjacent configurations that share a loss (and its boolean parameters) into one group whose
    float parameters become per-member tensors ``[members, 1, 1]``: one ``pair_loss`` call per group."""
    groups: list[list] = []
    for i, (loss, params) in enumerate(loss_params):
        key = (loss, tuple(sorted((k, v) for k, v in params.items() if isinstance(v, bool))))
        if groups and groups[-1][0] == key:
            groups[-1][2].append(params)
            groups[-1][1] = slice(groups[-1][1].start, (i + 1) * n_seeds)
        else:
            groups.append([key, slice(i * n_seeds, (i + 1) * n_seeds), [params]])
    out = []
    for (loss, _), sl, plist in groups:
        merged = {}
        for k, v in plist[0].items():
            vals = [p[k] for p in plist]
            if isinstance(v, bool) or all(_same(x, vals[0]) for x in vals):
                merged[k] = vals[0]
            else:
                t = torch.tensor([float(x) for x in vals], dtype=dtype, device=device)
                merged[k] = t.repeat_interleave(n_seeds).view(-1, 1, 1)
        out.append((sl, loss, merged))
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return a == b


def train(loss: str = "dpo", loss_params: Mapping | None = None, init=None, seeds=32, **kwargs) -> ToyRun:
    """One configuration, many seeds: ``run_grid([ToyConfig(loss, loss_params, init, name=loss)], seeds,
    **kwargs)``; its label (the key of :func:`summarise`) is the loss name."""
    return run_grid([ToyConfig(loss=loss, loss_params=dict(loss_params or {}), init=init, name=loss)], seeds, **kwargs)


_RECORD_ORDER = ("chosen", "rejected_mass", "other", "unseen", "rejected", "log_chosen", "log_rejected", "loss",
                 "log_grad_chosen", "log_grad_rejected", "grad_chosen", "grad_rejected", "dlogp_chosen",
                 "dlogp_rejected", "dpi_chosen", "dpi_rejected")


def _record_row(logp, lp, g_lp, member_loss, role_w, rb: range, n_pairs: int, K: int) -> torch.Tensor:
    """One row of the records, ``[M, len(_RECORD_ORDER)]`` float64, in a handful of batched ops.

    ``g_lp * n_pairs`` is dl_pair/dlog pi per pair (the trained loss is the mean over the P*K pairs);
    dl/dpi = (dl/dlog pi) / pi; the mean magnitudes are also computed in log space (logsumexp), so they
    stay finite when pi underflows.
    """
    M = logp.shape[0]
    lg = logp.detach().to(torch.float64)                                       # [M, P, R]
    roles = torch.einsum("mpr,prk->mk", lg.exp(), role_w)                      # chosen, rejected mass, other, unseen
    n_rej = rb.stop - rb.start
    log_c = lg.diagonal(dim1=1, dim2=2).mean(-1)
    log_r = (torch.logsumexp(lg[..., rb.start: rb.stop], -1) - math.log(n_rej)).mean(-1)
    g = (g_lp.to(torch.float64) * n_pairs).view(M, -1, 2, K)                  # [M, P, side, K]
    lpd = lp.detach().to(torch.float64).view(M, -1, 2, K)
    dlogp = g.mean(dim=(1, 3))                                                 # [M, 2]
    dpi = (g * torch.exp(-lpd)).mean(dim=(1, 3))                               # [M, 2]
    log_mag = torch.logsumexp((g.abs().log() - lpd).transpose(1, 2).reshape(M, 2, -1), dim=-1) - math.log(n_pairs)
    return torch.cat([roles, (roles[:, 1] / n_rej)[:, None], log_c[:, None], log_r[:, None],
                      member_loss.detach().to(torch.float64)[:, None], log_mag, log_mag.exp(), dlogp, dpi], dim=1)


def _preference_train(pol: BatchedPolicy, groups, *, steps: int, lr, optimizer: str, pairs_per_prompt: int,
                      record_every: int = 1, record_probs: bool = False, progress: bool = True,
                      desc: str | None = None, chunk: int = 256):
    """Step 2 on an already fitted policy; ``groups`` = [(member slice, loss name, params)] covering all
    members in order. The reference policy is ``pol`` as given. Returns (records, steps, probs)."""
    from . import losses as L
    from .progress import bar

    spec = pol.spec
    M, P, K = pol.members, spec.n_prompts, pairs_per_prompt
    dev, dt = pol.device, pol.dtype
    with torch.no_grad():
        ref_logp = pol.log_probs().detach()
    params = pol.param_list()
    opt = make_optimizer(optimizer, params, lr)
    masks = spec.role_masks(device=dev)
    role_w = torch.stack([masks[k] for k in ("chosen", "rejected", "other", "unseen")], dim=-1).to(torch.float64)
    role_w /= P                                                               # sums over responses, means over prompts
    rb = spec.rejected_block
    rec_idx = sorted(set(range(0, steps + 1, record_every)) | {steps})
    n_rec = len(rec_idx)
    slot_of = {s: i for i, s in enumerate(rec_idx)}
    rec = torch.empty(n_rec, M, len(_RECORD_ORDER), dtype=torch.float64, device=dev)
    probs_out = torch.empty(n_rec, M, P, spec.n_responses, dtype=torch.float32, device=dev) if record_probs else None
    pos_idx = torch.arange(P, device=dev).view(1, P, 1).expand(M, P, K)
    n_pairs = P * K
    ref_pos = ref_logp.gather(2, pos_idx)
    assert set(_RECORD_ORDER) == set(RECORDS)
    it = bar(range(steps + 1), total=steps + 1, desc=desc or f"toy ({M} members)") if progress else range(steps + 1)
    rej_chunk, chunk_start = None, -1
    for t in it:
        if rej_chunk is None or t >= chunk_start + chunk:
            chunk_start = t
            span = torch.arange(t, min(t + chunk, steps + 1), device=dev)
            rej_chunk = sample_rejected(spec, pol.seeds, span, K)            # [chunk, M, P, K]
        neg_idx = rej_chunk[t - chunk_start]
        logp = pol.log_probs()
        idx = torch.cat([pos_idx, neg_idx], dim=2)                           # [M, P, 2K]
        lp = logp.gather(2, idx)
        lp_pos, lp_neg = lp[..., :K], lp[..., K:]
        ref_neg = ref_logp.gather(2, neg_idx)
        per_pair = torch.cat([
            L.pair_loss(name, lp_pos[sl], lp_neg[sl], ref_pos[sl], ref_neg[sl], **loss_params)
            for sl, name, loss_params in groups], dim=0)                           # [M, P, K]
        member_loss = per_pair.mean(dim=(1, 2))
        *g_theta, g_lp = torch.autograd.grad(member_loss.sum(), [*params, lp])
        if t in slot_of:
            with torch.no_grad():
                rec[slot_of[t]] = _record_row(logp, lp, g_lp, member_loss, role_w, rb, n_pairs, K)
                if probs_out is not None:
                    probs_out[slot_of[t]] = logp.detach().exp().float()
        if t < steps:
            opt.step(g_theta)
    rec_np = rec.cpu().numpy()
    records = {k: rec_np[:, :, i] for i, k in enumerate(_RECORD_ORDER)}
    probs = probs_out.cpu().numpy() if probs_out is not None else None
    return records, np.asarray(rec_idx), probs


# ================================================================================================
# Summaries: indicators per member, mean and 95% interval over seeds
# ================================================================================================

#: Indicators of :func:`member_indicators` (per member) and :func:`summarise` (mean and 95% interval).
INDICATORS = {
    "initial_chosen_prob": "pi(chosen) after SFT",
    "peak_chosen_prob": "max over training of pi(chosen)",
    "peak_chosen_step": "update count at which pi(chosen) peaks",
    "final_chosen_prob": "pi(chosen) after the last update",
    "chosen_drop": "peak minus final pi(chosen) (Degradation)",
    "initial_rejected_prob": "pi(one rejected response) after SFT",
    "final_rejected_prob": "pi(one rejected response) after the last update",
    "initial_unseen_mass": "mass on the unseen responses after SFT",
    "final_unseen_mass": "mass on the unseen responses after the last update",
    "unseen_gain": "final minus initial unseen mass (Dispersion)",
    "final_other_mass": "mass on the other prompts' optimal responses after the last update",
    "initial_unpaired_mass": "mass on responses never paired with the prompt (other + unseen) after SFT",
    "final_unpaired_mass": "mass on responses never paired with the prompt (other + unseen) at the end",
    "unpaired_gain": "final minus initial unpaired mass (Dispersion, broad reading)",
    "grad_ratio_initial": "|dl/dpi-| / |dl/dpi+| at the first step (summarised by the geometric mean)",
    "grad_ratio_final": "|dl/dpi-| / |dl/dpi+| at the last recorded step (summarised by the geometric mean)",
    "log10_grad_ratio_final": "log10 of grad_ratio_final, from the log-space records (finite where the ratio overflows)",
    "rejected_drop_orders": "log10(initial / final pi(rejected)): orders of magnitude the rejected likelihood fell",
    "grad_ratio_10_step": "first update count with |dl/dpi-| / |dl/dpi+| > 10 (NaN if never)",
    "grad_ratio_100_step": "first update count with |dl/dpi-| / |dl/dpi+| > 100 (NaN if never)",
    "rejected_log_decline_rate": "mean decline of log pi(rejected) per update over the first `rate_window` updates (Prop. 1)",
    "rejected_tenfold_step": "first update count at which pi(rejected) is down tenfold from pi_0 (NaN if never; Prop. 1)",
}


#: Short display labels of the :data:`INDICATORS`, for the row and column labels of the chapters' tables
#: (one wording in every chapter; the long descriptions above say exactly what each one is).
LABELS = {
    "initial_chosen_prob": "initial π(chosen)",
    "peak_chosen_prob": "peak π(chosen)",
    "peak_chosen_step": "update of the peak",
    "final_chosen_prob": "final π(chosen)",
    "chosen_drop": "drop of π(chosen) after its peak",
    "initial_rejected_prob": "initial π(one rejected)",
    "final_rejected_prob": "final π(one rejected)",
    "initial_unseen_mass": "initial unseen mass",
    "final_unseen_mass": "final unseen mass",
    "unseen_gain": "unseen mass gained",
    "final_other_mass": "final mass on other prompts' optimal",
    "initial_unpaired_mass": "initial unpaired mass",
    "final_unpaired_mass": "final unpaired mass",
    "unpaired_gain": "unpaired mass gained",
    "grad_ratio_initial": "initial gradient ratio",
    "grad_ratio_final": "final gradient ratio",
    "log10_grad_ratio_final": "final log10 gradient ratio",
    "rejected_drop_orders": "orders of magnitude π(rejected) fell",
    "grad_ratio_10_step": "update where the ratio passes 10",
    "grad_ratio_100_step": "update where the ratio passes 100",
    "rejected_log_decline_rate": "decline of log π(rejected) per update",
    "rejected_tenfold_step": "update where π(rejected) is down tenfold",
}


def _first_step(mask: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """First ``steps`` value where ``mask [T, M]`` is true, per member; NaN where never."""
    hit = mask.any(axis=0)
    first = np.argmax(mask, axis=0)
    return np.where(hit, steps[first].astype(np.float64), np.nan)


def member_indicators(run: ToyRun, rate_window: int = 50) -> dict[str, np.ndarray]:
    """The :data:`INDICATORS` per member (``[M]`` float64 arrays), computed from the records.

    The gradient ratio is (mean over pairs |dl/dpi-|) / (mean over pairs |dl/dpi+|), from the log-space
    records; +inf where the chosen gradient vanishes and the rejected does not, NaN where both vanish.
    """
    rc, st = run.records, run.steps
    ch = rc["chosen"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.exp(rc["log_grad_rejected"] - rc["log_grad_chosen"])
    peak_i = np.argmax(ch, axis=0)
    M = ch.shape[1]
    w = min(int(rate_window), int(st[-1])) if st[-1] > 0 else 0
    if w > 0:
        j = int(np.searchsorted(st, w))
        j = min(j, len(st) - 1)
        rate = (rc["log_rejected"][0] - rc["log_rejected"][j]) / st[j]
    else:
        rate = np.full(M, np.nan)
    return {
        "initial_chosen_prob": ch[0],
        "peak_chosen_prob": ch[peak_i, np.arange(M)],
        "peak_chosen_step": st[peak_i].astype(np.float64),
        "final_chosen_prob": ch[-1],
        "chosen_drop": ch[peak_i, np.arange(M)] - ch[-1],
        "initial_rejected_prob": rc["rejected"][0],
        "final_rejected_prob": rc["rejected"][-1],
        "initial_unseen_mass": rc["unseen"][0],
        "final_unseen_mass": rc["unseen"][-1],
        "unseen_gain": rc["unseen"][-1] - rc["unseen"][0],
        "final_other_mass": rc["other"][-1],
        "initial_unpaired_mass": rc["unseen"][0] + rc["other"][0],
        "final_unpaired_mass": rc["unseen"][-1] + rc["other"][-1],
        "unpaired_gain": rc["unseen"][-1] + rc["other"][-1] - rc["unseen"][0] - rc["other"][0],
        "grad_ratio_initial": ratio[0],
        "grad_ratio_final": ratio[-1],
        "log10_grad_ratio_final": (rc["log_grad_rejected"][-1] - rc["log_grad_chosen"][-1]) / math.log(10.0),
        "rejected_drop_orders": (rc["log_rejected"][0] - rc["log_rejected"][-1]) / math.log(10.0),
        "grad_ratio_10_step": _first_step(np.nan_to_num(ratio, nan=0.0) > 10.0, st),
        "grad_ratio_100_step": _first_step(np.nan_to_num(ratio, nan=0.0) > 100.0, st),
        "rejected_log_decline_rate": rate,
        "rejected_tenfold_step": _first_step(rc["log_rejected"] <= rc["log_rejected"][0] - math.log(10.0), st),
    }


def mean_ci(x, level: float = 0.95) -> dict[str, float]:
    """Mean and the ``level`` Student-t confidence interval of the mean over seeds.

    NaNs (e.g. a threshold never crossed) are left out; ``n`` = the number of finite values used,
    ``frac`` = n / len(x). Infinite values make the interval infinite. With n < 2 the interval is NaN.
    """
    from scipy import stats

    x = np.asarray(x, dtype=np.float64).ravel()
    fin = x[~np.isnan(x)]
    n = fin.size
    out = {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": int(n),
           "frac": float(n / x.size) if x.size else 0.0}
    if n == 0:
        return out
    mean = float(np.mean(fin))
    out["mean"] = mean
    if n >= 2 and np.all(np.isfinite(fin)):
        scale = float(np.max(np.abs(fin)))           # scaled first: the squares of values like 1e-255 underflow
        sem = float(np.std(fin / scale, ddof=1) * scale / math.sqrt(n)) if scale > 0 else 0.0
        half = float(stats.t.ppf(0.5 + level / 2.0, n - 1)) * sem
        out["lo"], out["hi"] = mean - half, mean + half
    elif not np.all(np.isfinite(fin)):
        out["lo"], out["hi"] = float(np.min(fin)), float(np.max(fin))
    return out


#: Indicators spanning many orders of magnitude: summarised by the geometric mean and the exponentiated
#: t-interval of the mean log (the arithmetic mean of ratios like 1e3 and 1e30 says nothing).
GEOMETRIC = ("grad_ratio_initial", "grad_ratio_final")


#: The range each bounded indicator can take. Its t-interval is clipped to this range: a probability whose
#: seeds span orders of magnitude (e.g. 1e-36 to 1e-33) otherwise gets a negative lower end.
BOUNDS = {
    **{k: (0.0, 1.0) for k in ("initial_chosen_prob", "peak_chosen_prob", "final_chosen_prob", "chosen_drop",
                               "initial_rejected_prob", "final_rejected_prob", "initial_unseen_mass",
                               "final_unseen_mass", "final_other_mass", "initial_unpaired_mass",
                               "final_unpaired_mass")},
    "unseen_gain": (-1.0, 1.0), "unpaired_gain": (-1.0, 1.0),
}


def geo_mean_ci(x, level: float = 0.95) -> dict[str, float]:
    """:func:`mean_ci` on ``log10(x)``, mapped back: geometric mean and interval (NaN left out; an infinite
    value in ``x`` gives an infinite mean)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = mean_ci(np.log10(x), level)
    return {k: (_pow10(r[k]) if k in ("mean", "lo", "hi") else r[k]) for k in r}


def _pow10(x: float) -> float:
    """10**x as a float, +inf on overflow (Python's ``10.0 ** x`` raises instead)."""
    with np.errstate(over="ignore"):
        return float(np.power(10.0, np.float64(x)))


def summarise(run: ToyRun, rate_window: int = 50, level: float = 0.95) -> dict[str, dict[str, dict[str, float]]]:
    """Per configuration label: per indicator ``{"mean", "lo", "hi", "n", "frac"}`` over its seeds.

    The interval is the Student-t ``level`` confidence interval of the mean over seeds (:func:`mean_ci`),
    clipped to the indicator's range for the probabilities and masses of :data:`BOUNDS`;
    the gradient ratios of :data:`GEOMETRIC` use the geometric mean (:func:`geo_mean_ci`), with
    ``grad_ratio_final`` taken from ``log10_grad_ratio_final`` so that it stays finite where a ratio
    overflows float64.
    """
    ind = member_indicators(run, rate_window=rate_window)
    out = {}
    for i, c in enumerate(run.configs):
        out[c.label()] = summarise_members(ind, run.members_of(i), level)
    return out


def summarise_members(ind: Mapping[str, np.ndarray], members, level: float = 0.95) -> dict[str, dict[str, float]]:
    """The summary of :func:`summarise` for the given member indices of :func:`member_indicators` output."""
    mem = np.asarray(members)
    res = {}
    for k, v in ind.items():
        if k == "grad_ratio_final" and "log10_grad_ratio_final" in ind:
            r = mean_ci(ind["log10_grad_ratio_final"][mem], level)
            res[k] = {q: (_pow10(r[q]) if q in ("mean", "lo", "hi") else r[q]) for q in r}
        elif k in GEOMETRIC:
            res[k] = geo_mean_ci(v[mem], level)
        else:
            res[k] = mean_ci(v[mem], level)
            if k in BOUNDS:
                lo, hi = BOUNDS[k]
                res[k]["lo"], res[k]["hi"] = _clip(res[k]["lo"], lo, hi), _clip(res[k]["hi"], lo, hi)
    return res


def _clip(x: float, lo: float, hi: float) -> float:
    """``x`` clipped to ``[lo, hi]``; NaN stays NaN."""
    return x if math.isnan(x) else min(max(x, lo), hi)


def curve_ci(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and the t-interval of the mean over seeds for curves ``[T, seeds]`` -> three ``[T]`` arrays."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    n = v.shape[1]
    mean = v.mean(axis=1)
    if n < 2:
        return mean, mean.copy(), mean.copy()
    half = stats.t.ppf(0.5 + level / 2.0, n - 1) * v.std(axis=1, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


#: The indicators the toy chapters put in their JSON (000 Sec. 3.2.2's phases and the 3D-properties).
KEY_INDICATORS = (
    "peak_chosen_prob", "peak_chosen_step", "final_chosen_prob", "final_rejected_prob", "final_unseen_mass",
    "grad_ratio_final", "log10_grad_ratio_final", "grad_ratio_10_step", "grad_ratio_100_step", "final_other_mass",
    "final_unpaired_mass",
    "chosen_drop", "unpaired_gain", "rejected_drop_orders",
)


def json_summary(summary_cfg: Mapping[str, Mapping[str, float]], keys: Sequence[str] = KEY_INDICATORS) -> dict:
    """``{key: {"mean", "lo", "hi"}}`` for a chapter's JSON from one entry of :func:`summarise`; the
    threshold steps also carry ``"frac"`` (the fraction of seeds that crossed the threshold at all).
    Non-finite values (a ratio beyond float64, e.g. 10**481, or a threshold never crossed) become ``None``,
    printed and saved alike; ``log10_grad_ratio_final`` keeps the size of such a ratio."""
    out = {}
    for k in keys:
        r = summary_cfg[k]
        d = {q: (float(r[q]) if np.isfinite(r[q]) else None) for q in ("mean", "lo", "hi")}
        if k.endswith("_step") and k != "peak_chosen_step":
            d["frac"] = r["frac"]
        out[k] = d
    return out


def three_d(summary_cfg: Mapping[str, Mapping[str, float]], drop_orders: float = 2.0,
            degradation: float = 0.05, dispersion: float = 0.05) -> dict[str, bool]:
    """Which of the 3D-properties (000 Properties 1-3) a configuration shows, by stated thresholds on the
    seed means of :func:`summarise`:

    - Drastic drop: pi(rejected) fell by at least ``drop_orders`` orders of magnitude;
    - Degradation: pi(chosen) ends at least the fraction ``degradation`` below its peak
      ((peak - final) / peak);
    - Dispersion: the mass on responses never paired with the prompt (other prompts' optimal responses and
      the unseen ones) grew by at least ``dispersion``.
    """
    peak = summary_cfg["peak_chosen_prob"]["mean"]
    drop = summary_cfg["chosen_drop"]["mean"]
    return {
        "drastic_drop": bool(summary_cfg["rejected_drop_orders"]["mean"] >= drop_orders),
        "degradation": bool(peak > 0 and drop / peak >= degradation),
        "dispersion": bool(summary_cfg["unpaired_gain"]["mean"] >= dispersion),
    }


#: The 3D-properties of :func:`three_d`, in the order the chapters show them, with their display labels.
THREE_D_LABELS = {"drastic_drop": "Drastic drop", "degradation": "Degradation", "dispersion": "Dispersion"}


def removed_by(reference: Mapping[str, bool], verdict: Mapping[str, bool]) -> dict[str, list[str]]:
    """Of the properties the ``reference`` verdict of :func:`three_d` shows (vanilla DPO), those another
    configuration's ``verdict`` no longer shows (``"removes"``) and those it still shows (``"keeps"``)."""
    shown = [k for k in THREE_D_LABELS if reference[k]]
    return {"removes": [k for k in shown if not verdict[k]], "keeps": [k for k in shown if verdict[k]]}


def plot_band(ax, steps, values, *, label=None, color=None, log: bool = False, level: float = 0.95, **kwargs):
    """Plot the mean over seeds of ``values [T, seeds]`` with its ``level`` t-interval as a band;
    ``log=True``: geometric mean and band (``values`` must be > 0), log y-axis."""
    v = np.asarray(values, dtype=np.float64)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            mean, lo, hi = curve_ci(np.log10(v), level)
        with np.errstate(over="ignore"):
            mean, lo, hi = np.power(10.0, mean), np.power(10.0, lo), np.power(10.0, hi)
        ax.set_yscale("log")
    else:
        mean, lo, hi = curve_ci(v, level)
    (line,) = ax.plot(steps, mean, label=label, color=color, **kwargs)
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
    return line


def role_probs(run: ToyRun, config: int | str = 0, when: int = 0) -> np.ndarray:
    """Mean over seeds (and prompts, aligned by role) of the probabilities at record ``when`` of one
    configuration, as ``[R]`` in the order: chosen, other..., rejected..., unseen... (needs
    ``record_probs=True``)."""
    if run.probs is None:
        raise ValueError("run: record_probs=True is needed for role_probs")
    spec = run.spec
    pr = run.probs[when][run.members_of(config)].astype(np.float64)        # [S, P, R]
    P = spec.n_prompts
    order = np.array([[p] + [q for q in range(P) if q != p] + list(spec.rejected_block) + list(spec.unseen_block)
                      for p in range(P)])
    aligned = np.take_along_axis(pr, order[None], axis=2)
    return aligned.mean(axis=(0, 1))


# ------------------------------------------------------------------------------------------------
# The phases of 000 Sec. 3.2.2, 000's claims about the scenarios, and Proposition 1 (toy-3d,
# toy-scenarios): verdicts from the summaries of :func:`summarise`
# ------------------------------------------------------------------------------------------------

#: The checks of :func:`phase_checks` with their display labels (the order the chapter shows them).
PHASE_CHECKS = {
    "rises": "π(chosen) first rises (peak above initial)",
    "falls_after_peak": "then falls (final below peak)",
    "ratio_passes_100": "the gradient ratio passes 100 in every seed",
    "peak_after_ratio_10": "π(chosen) peaks after the ratio passes 10",
    "peak_after_ratio_100": "π(chosen) peaks after the ratio passes 100",
    "ends_above_initial": "final π(chosen) above its initial value",
    "unseen_gain": "the unseen responses 9-10 gain mass",
    "unpaired_gain": "responses never paired with the prompt gain mass",
    "other_takes_unpaired": "other prompts' optimal end above the initial unpaired mass",
}


def _apart(lower: Mapping[str, float], upper: Mapping[str, float]) -> bool:
    """Whether the 95% interval of ``lower`` lies entirely below that of ``upper`` (False if either is NaN)."""
    return bool(lower["hi"] < upper["lo"])


def phase_checks(s: Mapping[str, Mapping[str, float]]) -> dict[str, bool]:
    """The phases of 000 Sec. 3.2.2 in one configuration's summary (:func:`summarise`), each decided by
    non-overlapping 95% intervals over seeds (see :data:`PHASE_CHECKS` for the wording):

    - ``rises``/``falls_after_peak``: initial < peak and final < peak of pi(chosen);
    - ``ratio_passes_100``: every seed's gradient ratio |dl/dpi-|/|dl/dpi+| exceeded 100;
    - ``peak_after_ratio_10``/``_100``: pi(chosen) peaks after the ratio's first crossing of 10 / 100;
    - ``ends_above_initial``: pi(chosen) ends above its initial value (no net unlearning);
    - ``unseen_gain``/``unpaired_gain``: the mass on the unseen responses / on all responses never paired
      with the prompt grew (lower end of the interval above 0);
    - ``other_takes_unpaired``: the other prompts' optimal responses end with more mass than all responses
      never paired with the prompt held after SFT (where the Dispersion goes).
    """
    return {
        "rises": _apart(s["initial_chosen_prob"], s["peak_chosen_prob"]),
        "falls_after_peak": _apart(s["final_chosen_prob"], s["peak_chosen_prob"]),
        "ratio_passes_100": bool(s["grad_ratio_100_step"]["frac"] == 1.0),
        "peak_after_ratio_10": _apart(s["grad_ratio_10_step"], s["peak_chosen_step"]),
        "peak_after_ratio_100": _apart(s["grad_ratio_100_step"], s["peak_chosen_step"]),
        "ends_above_initial": _apart(s["initial_chosen_prob"], s["final_chosen_prob"]),
        "unseen_gain": bool(s["unseen_gain"]["lo"] > 0),
        "unpaired_gain": bool(s["unpaired_gain"]["lo"] > 0),
        "other_takes_unpaired": _apart(s["initial_unpaired_mass"], s["final_other_mass"]),
    }


#: The extremes of :func:`scenario_claims` with their display labels.
EXTREMES = {
    "highest_peak": ("highest peak π(chosen)", "peak_chosen_prob", max),
    "slowest_decline": ("slowest decline of π(rejected)", "rejected_tenfold_step", max),
    "least_unseen": ("least final unseen mass (9-10)", "final_unseen_mass", min),
    "least_unpaired": ("least final unpaired mass", "final_unpaired_mass", min),
}

#: The claims of :func:`scenario_claims` (000 Sec. 3.2.2 about Scenario 1) with their display labels.
SCENARIO_CLAIMS = {
    "s1_peak_about_0_6": "S1's peak π(chosen) is about 0.6 (0.5 to 0.7)",
    "s1_highest_peak": "S1 has the highest peak π(chosen)",
    "s1_least_unseen": "S1 has the least dispersion, narrow reading (unseen)",
    "s1_least_unpaired": "S1 has the least dispersion, broad reading (unpaired)",
    "highest_peak_is_slowest_decline": "the highest peak goes with the slowest decline",
}


def scenario_claims(summary: Mapping[str, Mapping[str, Mapping[str, float]]], scenarios: Sequence[str],
                    about: tuple[float, float] = (0.5, 0.7)) -> dict[str, dict]:
    """000 Sec. 3.2.2's statements about the scenarios (Fig. 3), decided on the seed means of
    :func:`summarise`: ``"extremes"`` names the scenario with the highest peak pi(chosen), the slowest
    decline of pi(rejected) (latest tenfold step), the least final unseen and unpaired mass
    (:data:`EXTREMES`); ``"claims"`` are the booleans of :data:`SCENARIO_CLAIMS` (Scenario 1 is the first
    of ``scenarios``; "approximately 0.6" is read as the interval ``about``)."""
    def mean(sc, key):
        v = summary[sc][key]["mean"]
        return -math.inf if v is None or not np.isfinite(v) else float(v)

    ext = {name: pick(scenarios, key=lambda sc, k=key: mean(sc, k)) for name, (_, key, pick) in EXTREMES.items()}
    s1 = scenarios[0]
    claims = {
        "s1_peak_about_0_6": bool(about[0] <= mean(s1, "peak_chosen_prob") <= about[1]),
        "s1_highest_peak": ext["highest_peak"] == s1,
        "s1_least_unseen": ext["least_unseen"] == s1,
        "s1_least_unpaired": ext["least_unpaired"] == s1,
        "highest_peak_is_slowest_decline": ext["highest_peak"] == ext["slowest_decline"],
    }
    return {"extremes": ext, "claims": claims}


def rank_correlation(x, y) -> dict[str, float]:
    """Spearman's rank correlation of ``x`` and ``y`` over the points where both are finite:
    ``{"spearman_rho", "p_value", "n_points"}`` (NaN rho and p for fewer than three points or a constant
    side)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return {"spearman_rho": float("nan"), "p_value": float("nan"), "n_points": n}
    rho, p = stats.spearmanr(x[ok], y[ok])
    return {"spearman_rho": float(rho), "p_value": float(p), "n_points": n}


#: Proposition 1's predicted sign of the rank correlation between the time pi(rejected) takes to fall
#: tenfold and each severity measure: a slower decline gives a higher peak and final pi(chosen) and a
#: smaller drop from the peak.
PROP1_SIGNS = {"peak_chosen_prob": +1, "final_chosen_prob": +1, "chosen_drop": -1}


def prop1_test(summary: Mapping[str, Mapping[str, Mapping[str, float]]], names: Sequence[str],
               signs: Mapping[str, int] = PROP1_SIGNS, rate: str = "rejected_tenfold_step",
               alpha: float = 0.05) -> dict[str, dict]:
    """000 Proposition 1 on a sweep: for each measure of ``signs``, :func:`rank_correlation` of the seed
    means of ``rate`` (the slowness of the rejected decline) and the measure over the configurations
    ``names``, with ``"predicted_sign"`` and ``"agrees_with_prop1"`` (the sign is the predicted one and
    ``p_value < alpha``)."""
    x = [summary[n][rate]["mean"] for n in names]
    out = {}
    for key, sign in signs.items():
        r = rank_correlation(x, [summary[n][key]["mean"] for n in names])
        agrees = bool(np.isfinite(r["spearman_rho"]) and np.sign(r["spearman_rho"]) == sign and r["p_value"] < alpha)
        out[key] = {**r, "predicted_sign": int(sign), "agrees_with_prop1": agrees}
    return out


# ------------------------------------------------------------------------------------------------
# Plot helpers of the toy chapters (figure plumbing kept out of the pages)
# ------------------------------------------------------------------------------------------------

#: Short tick labels of the responses aligned by their role for a prompt (:func:`role_probs` order).
ROLE_TICKS = {"chosen": "a+", "other": "o", "rejected": "r", "unseen": "u"}

#: Legend labels of the roles in the toy figures.
ROLE_LABELS = {"chosen": "π(chosen)", "rejected": "π(one rejected)", "other": "other prompts' optimal",
               "unseen": "unseen (9-10)"}


def role_order(spec: ToySpec) -> list[str]:
    """The role of each response in :func:`role_probs` order: chosen, other..., rejected..., unseen..."""
    return ["chosen"] + ["other"] * (spec.n_prompts - 1) + ["rejected"] * spec.n_rejected + ["unseen"] * spec.n_unseen


def plot_sft_target(ax, target, spec: ToySpec, *, colorbar: bool = True):
    """The SFT target ``[P, R]`` as an image: rows prompts, columns responses, boxes on each prompt's
    optimal response, lines between the chosen, rejected and unseen blocks."""
    import matplotlib.pyplot as plt

    t = np.asarray(target, dtype=np.float64)
    im = ax.imshow(t, cmap="Greens", vmin=0, vmax=max(0.2, float(t.max())), aspect="auto")
    ax.set_xticks(range(spec.n_responses), [str(r + 1) for r in range(spec.n_responses)])
    ax.set_yticks(range(spec.n_prompts), [f"prompt {p + 1}" for p in range(spec.n_prompts)])
    for p in range(spec.n_prompts):
        ax.add_patch(plt.Rectangle((p - 0.5, p - 0.5), 1, 1, fill=False, ec="k", lw=1.5))
    for edge in (spec.rejected_block.start, spec.unseen_block.start):
        ax.axvline(edge - 0.5, color="k", lw=0.8)
    ax.set_xlabel("response (1-4 chosen block, 5-8 rejected, 9-10 unseen)")
    ax.grid(False)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.9, label="target π(a|x)")
    return im


def plot_role_bars(ax, run: ToyRun, config: int | str = 0, when: Sequence[int] = (0, -1),
                   labels: Sequence[str] | None = None, *, ticks: bool | str = True):
    """Bars of :func:`role_probs` at the records ``when`` (side by side; earlier ones paler), coloured by
    role; x ticks a+ (the prompt's optimal), o (other prompts' optimal), r (rejected), u (unseen): one per
    bar, or ``ticks="groups"`` one per role (for narrow panels), or ``False`` for none."""
    from .plotting import ROLE_COLORS

    roles = role_order(run.spec)
    colors = [ROLE_COLORS[r] for r in roles]
    x = np.arange(len(roles))
    k = len(when)
    width = 0.8 / k
    for i, w in enumerate(when):
        alpha = 1.0 if i == k - 1 else 0.45
        ax.bar(x + (i - (k - 1) / 2) * width, role_probs(run, config, w), width, color=colors, alpha=alpha,
               label=None if labels is None else labels[i])
    if ticks == "groups":
        groups = list(dict.fromkeys(roles))
        ax.set_xticks([float(np.mean([i for i, r in enumerate(roles) if r == g])) for g in groups],
                      [ROLE_TICKS[g] for g in groups])
    elif ticks:
        ax.set_xticks(x, [ROLE_TICKS[r] for r in roles])
    return ax


#: Legend labels and colours (by role) of the recorded gradient magnitudes.
GRAD_LABELS = {"grad_chosen": "|∂ℓ/∂π+|", "grad_rejected": "|∂ℓ/∂π−|"}
_RECORD_ROLE = {"grad_chosen": "chosen", "grad_rejected": "rejected", "log_chosen": "chosen",
                "log_rejected": "rejected", "rejected_mass": "rejected"}


def plot_roles(ax, run: ToyRun, config: int | str = 0, roles: Sequence[str] = ("chosen", "other"), *,
               log: bool = False, labels: Mapping[str, str] | None = None):
    """Bands (mean over seeds, 95% interval) of the records ``roles`` (:data:`RECORDS`) of one
    configuration over training, coloured by role (a gradient record takes its side's colour);
    ``log=True`` for quantities that collapse (geometric mean, log axis)."""
    from .plotting import ROLE_COLORS

    labels = {**ROLE_LABELS, **GRAD_LABELS, **(labels or {})}
    for name in roles:
        plot_band(ax, run.steps, run.record(name, config), label=labels.get(name, name),
                  color=ROLE_COLORS.get(_RECORD_ROLE.get(name, name)), log=log)
    return ax


#: Line styles of :func:`mark_steps`: the detected phase steps of 000 Sec. 3.2.2.
STEP_MARKS = {
    "grad_ratio_10_step": ("ratio passes 10", (0, (4, 2))),
    "grad_ratio_100_step": ("ratio passes 100", (0, (6, 2, 1, 2))),
    "peak_chosen_step": ("peak of π(chosen)", (0, (1, 1.5))),
}


def mark_steps(ax, summary_cfg: Mapping[str, Mapping[str, float]], keys: Sequence[str] = tuple(STEP_MARKS),
               label: bool = False):
    """Vertical lines at the seed means of the step indicators ``keys`` (styles of :data:`STEP_MARKS`);
    ``label=True`` gives them legend entries."""
    for key in keys:
        text, ls = STEP_MARKS[key]
        v = summary_cfg[key]["mean"]
        if v is not None and np.isfinite(v):
            ax.axvline(v, color="0.25", lw=0.9, ls=ls, label=text if label else None)
    return ax


def step_legend(fig, keys: Sequence[str] = tuple(STEP_MARKS), **kwargs):
    """A figure-level legend of the :func:`mark_steps` lines, below the panels (outside the data)."""
    import matplotlib.lines as mlines

    handles = [mlines.Line2D([], [], color="0.25", lw=0.9, ls=STEP_MARKS[k][1], label=STEP_MARKS[k][0])
               for k in keys]
    return fig.legend(handles=handles, **{"loc": "outside lower center", "ncols": len(handles), **kwargs})

# ================================================================================================
# Benchmark: batched trainer vs a plain loop of single runs
# ================================================================================================

def _single_run_reference(spec: ToySpec, hidden: int, activation: str, theta_row: torch.Tensor,
                          layout, seed: int, loss: str, params: dict, steps: int, lr: float,
                          pairs_per_prompt: int) -> dict[str, torch.Tensor]:
    """The plain way: one member, an ``nn.Sequential`` MLP, ``torch.optim.Adam``, a Python step loop;
    the same pairs, loss, records and per-step gradients as the batched trainer."""
    from torch import nn

    from . import losses as L

    P, R, K = spec.n_prompts, spec.n_responses, pairs_per_prompt
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}[activation]
    model = nn.Sequential(nn.Linear(P, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, R))
    model = model.to(dtype=theta_row.dtype)
    views = {name: theta_row[off: off + int(np.prod(shape))].view(*shape) for name, shape, off in layout}
    with torch.no_grad():
        for i, lin in enumerate((model[0], model[2], model[4]), start=1):
            lin.weight.copy_(views[f"W{i}"].T)
            lin.bias.copy_(views[f"b{i}"].view(-1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.eye(P, dtype=theta_row.dtype)
    with torch.no_grad():
        ref = torch.log_softmax(model(x), -1)
    pos = torch.arange(P).view(P, 1).expand(P, K)
    ref_pos = ref.gather(1, pos)
    rej = sample_rejected(spec, torch.tensor([seed]), torch.arange(steps + 1), K)[:, 0]   # [T, P, K]
    n = steps + 1
    recs = {k: torch.empty(n, dtype=theta_row.dtype) for k in ("chosen", "rejected", "unseen", "loss", "grad_chosen", "grad_rejected")}
    rb, ub = spec.rejected_block, spec.unseen_block
    for t in range(n):
        logp = torch.log_softmax(model(x), -1)
        lp_pos = logp.gather(1, pos)
        lp_neg = logp.gather(1, rej[t])
        lp_pos.retain_grad()
        lp_neg.retain_grad()
        loss_v = L.pair_loss(loss, lp_pos, lp_neg, ref_pos, ref.gather(1, rej[t]), **params).mean()
        opt.zero_grad()
        loss_v.backward()
        with torch.no_grad():
            pr = logp.exp()
            recs["chosen"][t] = pr.diagonal().mean()
            recs["rejected"][t] = pr[:, rb.start: rb.stop].mean()
            recs["unseen"][t] = pr[:, ub.start: ub.stop].sum(-1).mean()
            recs["loss"][t] = loss_v
            recs["grad_chosen"][t] = (lp_pos.grad * P * K / lp_pos.exp()).abs().mean()
            recs["grad_rejected"][t] = (lp_neg.grad * P * K / lp_neg.exp()).abs().mean()
        if t < steps:
            opt.step()
    with torch.no_grad():
        recs["final_probs"] = torch.softmax(model(x), -1)
    return recs


def bench(members: int = 256, steps: int = 200, *, loop_members: int | None = None, loss: str = "dpo",
          hidden: int = 64, pairs_per_prompt: int = 4, lr: float = 1e-3, device="auto", threads: int | None = 1,
          loop_threads: int | None = None, repeats: int = 3, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Time the same work (``members`` x ``steps`` preference-optimisation updates of the MLP toy, with
    all records) done by the batched trainer and by a plain loop of single runs (``nn.Sequential`` +
    ``torch.optim.Adam``, one member at a time, as a plain script would do it).

    Both start from the same post-SFT parameters (SFT is not timed), see the same pairs and run under
    the same :class:`cpu_settings` (``threads``, subnormals flushed), so the bench also reports the
    largest difference between their final probabilities. ``loop_members`` (default: all) runs the loop
    on the first members only and scales its time by ``members / loop_members`` (the loop's cost is
    linear in the members; ``loop_extrapolated`` says so). The batched trainer runs on ``device``
    (float32) after one untimed warm-up run, ``repeats`` times, and its median time is reported (the
    loop, 256 runs long, averages the machine's load by itself); the loop, after a short untimed warm-up
    run, runs on the CPU with ``loop_threads`` intra-op threads (default: ``threads``; one thread is the loop's fastest setting on
    the 2-core machine, so ``threads=2, loop_threads=1`` compares each side at its best).
    Returns a dict (and writes it as JSON to ``out`` when given).
    """
    from . import losses as L
    from .progress import bar

    check_int("members", members, 1)
    check_int("steps", steps, 1)
    loop_members = members if loop_members is None else loop_members
    check_int("loop_members", loop_members, 1, members)
    check_int("hidden", hidden, 1)
    check_int("repeats", repeats, 1)
    if threads is not None:
        check_int("threads", threads, 1)
    loop_threads = threads if loop_threads is None else loop_threads
    if loop_threads is not None:
        check_int("loop_threads", loop_threads, 1)
    params = L.check_loss_params(loss)
    dev = resolve_device(device)
    spec = ToySpec()
    seeds = torch.arange(members)
    with cpu_settings(threads):
        pol = make_policy("mlp", spec, seeds, hidden=hidden, device=dev)
        sft(pol, initial_distribution(spec).to(dev), steps=300)
        theta0 = pol.flat()
        groups = [(slice(0, members), loss, params)]

        def batched():
            p = pol.clone()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            _preference_train(p, groups, steps=steps, lr=lr, optimizer="adam", pairs_per_prompt=pairs_per_prompt,
                              progress=False)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0, p

        batched()  # warm-up (allocations, first kernels) with the same shapes
        times = []
        for _ in range(repeats):
            t_run, p_final = batched()
            times.append(t_run)
        t_batched = float(np.median(times))
        threads_used = torch.get_num_threads()
    theta_cpu = theta0.cpu()
    with cpu_settings(loop_threads):
        _single_run_reference(spec, hidden, "relu", theta_cpu[0], pol.layout, int(seeds[0]), loss, params,
                              min(steps, 5), lr, pairs_per_prompt)      # untimed warm-up, like the batched side
        t0 = time.perf_counter()
        finals = []
        for m in (bar(range(loop_members), desc="plain loop") if progress else range(loop_members)):
            r = _single_run_reference(spec, hidden, "relu", theta_cpu[m], pol.layout, int(seeds[m]), loss, params,
                                      steps, lr, pairs_per_prompt)
            finals.append(r["final_probs"])
        t_loop_measured = time.perf_counter() - t0
        loop_threads_used = torch.get_num_threads()
    t_loop = t_loop_measured * members / loop_members
    diff = float((torch.stack(finals) - p_final.probs()[:loop_members].cpu()).abs().max())
    res = {
        "members": members, "steps": steps, "loss": loss, "hidden": hidden, "pairs_per_prompt": pairs_per_prompt,
        "device": dev.type, "torch_threads": threads_used, "loop_torch_threads": loop_threads_used,
        "torch": torch.__version__,
        "batched_s": t_batched, "batched_repeats_s": times, "loop_s": t_loop, "loop_measured_s": t_loop_measured,
        "loop_members_measured": loop_members, "loop_extrapolated": loop_members != members,
        "ratio": t_loop / t_batched,
        "batched_us_per_member_step": 1e6 * t_batched / (members * steps),
        "loop_us_per_member_step": 1e6 * t_loop / (members * steps),
        "max_abs_diff_final_probs": diff,
    }
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return res


def bench_cli(args) -> int:
    """``prefdyn bench toy``: runs :func:`bench` from an argparse namespace (missing attributes and ``None``
    take :func:`bench`'s defaults; ``out`` defaults to ``runs/bench/toy.json``), prints every number."""
    def get(name, default):
        v = getattr(args, name, None)
        return default if v is None else v

    from .chapters.params import ParameterError
    from .losses import check_loss_params

    out = get("out", "runs/bench/toy.json")
    members, steps = get("members", 256), get("steps", 200)
    loop_members, loss, device = get("loop_members", None), get("loss", "dpo"), get("device", "auto")
    threads, loop_threads = get("threads", 1), get("loop_threads", None)
    # Bad input is a one-line ParameterError (exit code 2 in the CLI), found before any work.
    try:
        check_int("--members", members, 1)
        check_int("--steps", steps, 1)
        if loop_members is not None:
            check_int("--loop-members", loop_members, 1, members)
        check_int("--threads", threads, 1)
        if loop_threads is not None:
            check_int("--loop-threads", loop_threads, 1)
        check_loss_params(loss)
        if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
            raise ValueError(f"--device: expected auto, cpu or cuda, got {device!r}")
        resolve_device(device)
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        raise ParameterError("--" + msg if msg.startswith("device:") else msg) from None
    if not str(out).strip() or Path(out).is_dir():
        raise ParameterError(f"--out: expected a JSON file, got {str(out)!r}" + (" (a folder)" if str(out).strip() else ""))
    res = bench(members=members, steps=steps, loop_members=loop_members, loss=loss, device=device,
                threads=threads, loop_threads=loop_threads, out=out)
    for k, v in res.items():
        if isinstance(v, list):
            v = "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
        print(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}")
    print(f"wrote {out}")
    return 0
