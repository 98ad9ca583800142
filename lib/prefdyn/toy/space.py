"""The toy space of 000 Sec. 3.2.1 (Fig. 1): prompts x responses, the SFT targets (Sec. 3.2.2, Fig. 3
scenarios) and the preference pairs (optimal chosen, random rejected)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from ..validate import check_choice, check_int, check_number
from .rng import hash_keys

__all__ = ["ToySpec", "check_pairable", "READINGS", "other_probability", "initial_distribution", "SCENARIOS", "SCENARIO_LABELS", "scenario_distribution",
           "resolve_init", "sample_rejected"]


@dataclass(frozen=True)
class ToySpec:
    """The discrete prompt x response space of 000 Sec. 3.2.1 (default 4 x 10).

    Responses ``0..n_prompts-1`` form the chosen block (response p is optimal for prompt p), then
    ``n_rejected`` rejected responses, then ``n_unseen`` responses that never occur in the data.
    ``n_rejected=0, n_unseen=0`` is a square space with one optimal response per prompt and nothing
    else (004 Sec. 6.1's 20 x 20 benchmark, :mod:`prefdyn.imbalance.benchmark`); it has no rejected
    block, so :func:`sample_rejected` (000's pairs) refuses it.
    """

    n_prompts: int = 4
    n_rejected: int = 4
    n_unseen: int = 2

    def __post_init__(self):
        for name, low in (("n_prompts", 1), ("n_rejected", 0), ("n_unseen", 0)):
            check_int(name, getattr(self, name), low)

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


#: The readings of 000 Sec. 3.2.2's "we set the likelihood of each chosen and rejected response at 0.12"
#: (:func:`other_probability`): ``"shared"`` gives every prompt's optimal response the chosen probability
#: for every prompt (responses 1-4 are all "chosen responses"); ``"own"`` reads it per prompt: the
#: prompt's own optimal response and its rejected responses get the scenario's probabilities, and the
#: responses never paired with the prompt (other prompts' optimal, unseen) share the rest equally. A
#: number ``r`` in (0, 1] is the shared reading with the other prompts' optimal responses at ``r`` times
#: the chosen probability.
READINGS = ("shared", "own")


def other_probability(spec: ToySpec, reading: str | float, p_chosen: float, p_rejected: float) -> float:
    """The SFT probability of each *other* prompt's optimal response under ``reading`` (:data:`READINGS`
    or a ratio in (0, 1])."""
    if isinstance(reading, str):
        check_choice("reading", reading, READINGS)
        if reading == "shared":
            return float(p_chosen)
        rest = 1.0 - p_chosen - spec.n_rejected * p_rejected
        if rest <= 0:
            raise ValueError(f"reading: 'own' leaves no mass for the unpaired responses "
                             f"(p_chosen + n_rejected * p_rejected = {1.0 - rest:.6g} >= 1)")
        return rest / (spec.n_prompts - 1 + spec.n_unseen)
    return check_number("reading", reading, 0.0, 1.0, low_open=True) * float(p_chosen)


def initial_distribution(spec: ToySpec, p_chosen: float = 0.12, p_rejected: float = 0.12,
                         p_other: float | None = None, reading: str | float = "shared") -> torch.Tensor:
    """The SFT target of step 1 (000 Sec. 3.2.1), the same for every prompt: ``[P, R]`` float64.

    The prompt's optimal response gets ``p_chosen``, each rejected response ``p_rejected``, each other
    prompt's optimal response ``p_other`` (default: by ``reading``, :data:`READINGS`; ``"shared"`` gives
    ``p_chosen``: the paper's "each chosen and rejected response at 0.12", 000 Sec. 3.2.2, where responses
    1-4 are all "chosen responses"), and the unseen responses share the remainder equally. All
    probabilities must come out > 0 (finite logits).
    """
    check_number("p_chosen", p_chosen, 0.0, 1.0, low_open=True, high_open=True)
    check_number("p_rejected", p_rejected, 0.0, 1.0, low_open=True, high_open=True)
    p_other = other_probability(spec, reading, p_chosen, p_rejected) if p_other is None else p_other
    for name, v in (("p_chosen", p_chosen), ("p_rejected", p_rejected), ("p_other", p_other)):
        check_number(name, v, 0.0, 1.0, low_open=True, high_open=True)
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


def scenario_distribution(spec: ToySpec, scenario: str, on: float = 0.12, off: float = 0.01,
                          reading: str | float = "shared") -> torch.Tensor:
    """The initial distribution of a scenario of 000 Fig. 3: on-policy = probability ``on`` per response,
    off-policy = ``off``, for the chosen block and the rejected block separately; the unseen responses take
    the rest (so off-policy data means that the policy's mass sits on responses outside the data).
    ``reading`` (:data:`READINGS`) says what the other prompts' optimal responses get."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: expected one of {', '.join(SCENARIOS)}, got {scenario!r}")
    c_on, r_on = SCENARIOS[scenario]
    pc = on if c_on else off
    pr = on if r_on else off
    return initial_distribution(spec, p_chosen=pc, p_rejected=pr, reading=reading)


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


def check_pairable(spec: "ToySpec") -> "ToySpec":
    """``spec`` if 000's pairs (a prompt's optimal response against one of the rejected block) can be
    drawn in it, else a one-line ``ValueError``: the square space of 004's benchmark
    (``n_rejected=0``) has no rejected block. Trainers call it before any heavy work."""
    if not isinstance(spec, ToySpec):
        raise ValueError(f"spec: expected a ToySpec, got {type(spec).__name__}")
    if spec.n_rejected < 1:
        raise ValueError(f"spec: 000's pairs need a rejected block (n_rejected >= 1), got n_rejected={spec.n_rejected}")
    return spec


def sample_rejected(spec: ToySpec, seeds: torch.Tensor, steps: torch.Tensor, pairs_per_prompt: int) -> torch.Tensor:
    """Rejected responses of the pairs: int64 ``[T, M, P, K]`` for step indices ``steps [T]``.

    Uniform over the rejected block, a function of (seed, step, prompt, slot) only (counter-based hash).
    """
    check_pairable(spec)
    P, K = spec.n_prompts, pairs_per_prompt
    dev = seeds.device
    h = hash_keys(seeds.view(1, -1, 1, 1), 2, steps.view(-1, 1, 1, 1).to(dev),
                   torch.arange(P, device=dev).view(1, 1, -1, 1), torch.arange(K, device=dev).view(1, 1, 1, -1))
    return spec.n_prompts + (h % spec.n_rejected)
