"""Sensitivity of the scenario verdicts (000 Sec. 3.2.2, Fig. 3) to the choices the paper leaves open.

A :class:`Variant` changes one choice against the chapter's baseline: a run setting (learning rate,
optimiser, width, depth, activation, initial weight scale, SFT steps, pairs per step, a fixed set of
pairs, steps), the loss's beta, or the SFT target (the
reading of "each chosen and rejected response at 0.12", :data:`prefdyn.toy.space.READINGS`, or the
off-policy probability). :func:`scenario_sensitivity` trains the four scenarios under every variant,
batching the variants that share their run settings into one ensemble, and returns one row per variant:
the scenarios' key indicators (seed means) and 000's claims about Scenario 1 decided on them
(:func:`prefdyn.toy.verdicts.scenario_claims`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..records import summarise
from .space import SCENARIOS
from .train import ToyConfig, run_grid
from .verdicts import scenario_claims

__all__ = ["Variant", "FACTORS", "SENSITIVITY_KEYS", "scenario_variants", "scenario_sensitivity"]

#: The factors of :func:`scenario_variants`, with their display names.
FACTORS = {
    "other_ratio": "other/own ratio", "lr": "learning rate", "sgd": "optimiser", "hidden": "hidden width",
    "activation": "activation", "sft_steps": "SFT steps", "pairs": "pairs per prompt", "steps": "steps",
    "beta": "β", "p_off": "p_off", "depth": "hidden layers", "init_scale": "initial weight scale",
    "pair_set": "pair set",
}

#: The indicators a sensitivity row keeps per scenario (seed means).
SENSITIVITY_KEYS = ("peak_chosen_prob", "peak_chosen_step", "final_chosen_prob", "final_unseen_mass",
                    "final_unpaired_mass")


@dataclass(frozen=True)
class Variant:
    """One change against the baseline: ``run`` overrides keyword arguments of :func:`run_grid`, ``init``
    those of the scenario's SFT target (``on``, ``off``, ``reading``), ``loss`` the loss parameters."""

    factor: str
    value: str
    run: Mapping[str, Any] = field(default_factory=dict)
    init: Mapping[str, Any] = field(default_factory=dict)
    loss: Mapping[str, Any] = field(default_factory=dict)


def scenario_variants(factors: Sequence[str], *, reading: str, other_ratios: Sequence[float], lr: float,
                      sgd_lr: float, hidden: int, steps: int, beta: float, p_off: float) -> list[Variant]:
    """The baseline, the other reading of the SFT target, and one variant per value of each of ``factors``
    (:data:`FACTORS`): the other prompts' optimal responses at ``other_ratios`` of the chosen probability,
    Adam at ``lr``, SGD at ``sgd_lr``, half the width, tanh and linear activations, 1 and 3 hidden layers
    (the paper's MLP has 2), initial weights at 0.5x and 2x the ``torch.nn.Linear`` bounds, one fixed set
    of pairs instead of fresh ones every step, 200 SFT steps, one pair per prompt, half the steps, five
    times beta, a fifth of ``p_off``."""
    from .space import READINGS

    for f in factors:
        if f not in FACTORS:
            raise ValueError(f"factors: expected names from {', '.join(FACTORS)}, got {f!r}")
    table = {
        "other_ratio": [Variant(FACTORS["other_ratio"], f"{x:g}", init={"reading": x}) for x in other_ratios],
        "lr": [Variant(FACTORS["lr"], f"{lr:g}", run={"lr": lr})],
        "sgd": [Variant(FACTORS["sgd"], f"SGD, lr {sgd_lr:g}", run={"optimizer": "sgd", "lr": sgd_lr})],
        "hidden": [Variant(FACTORS["hidden"], f"{hidden // 2}", run={"hidden": hidden // 2})],
        "activation": [Variant(FACTORS["activation"], a, run={"activation": a}) for a in ("tanh", "linear")],
        "depth": [Variant(FACTORS["depth"], f"{d}", run={"depth": d}) for d in (1, 3)],
        "init_scale": [Variant(FACTORS["init_scale"], f"{x:g}x", run={"init_scale": x}) for x in (0.5, 2.0)],
        "pair_set": [Variant(FACTORS["pair_set"], "fixed (step-0 draw)", run={"pairs": "fixed"})],
        "sft_steps": [Variant(FACTORS["sft_steps"], "200", run={"sft_steps": 200})],
        "pairs": [Variant(FACTORS["pairs"], "1", run={"pairs_per_prompt": 1})],
        "steps": [Variant(FACTORS["steps"], f"{steps // 2}", run={"steps": steps // 2})],
        "beta": [Variant(FACTORS["beta"], f"{5 * beta:g}", loss={"beta": 5 * beta})],
        "p_off": [Variant(FACTORS["p_off"], f"{p_off / 5:g}", init={"off": p_off / 5})],
    }
    others = [Variant("reading", r, init={"reading": r}) for r in READINGS if r != reading]
    return [Variant("baseline", "the defaults"), *others, *(v for f in factors for v in table[f])]


def scenario_sensitivity(variants: Sequence[Variant], seeds, *, run_kwargs: Mapping[str, Any],
                         init: Mapping[str, Any], loss: str = "dpo", loss_params: Mapping[str, Any] | None = None,
                         scenarios: Sequence[str] = tuple(SCENARIOS)) -> list[dict[str, Any]]:
    """One row per variant: ``{"factor", "value", "scenarios": {s: {key: seed mean or None}},
    "claims": {...}, "extremes": {...}}`` (JSON-ready). Variants with the same run settings are trained together (one ensemble)."""
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(variants):
        groups.setdefault(tuple(sorted(v.run.items())), []).append(i)
    rows: list[dict[str, Any] | None] = [None] * len(variants)
    for key, members in groups.items():
        configs = [ToyConfig(loss, {**(loss_params or {}), **variants[i].loss},
                             init={**init, **variants[i].init, "scenario": s}, name=f"{i}:{s}")
                   for i in members for s in scenarios]
        run = run_grid(configs, seeds, **{**run_kwargs, **dict(key)})
        summary = summarise(run)
        for i in members:
            per = {s: summary[f"{i}:{s}"] for s in scenarios}
            verdict = scenario_claims(per, list(scenarios))
            rows[i] = {"factor": variants[i].factor, "value": variants[i].value,
                       "scenarios": {s: {k: _finite(per[s][k]["mean"]) for k in SENSITIVITY_KEYS}
                                     for s in scenarios},
                       "claims": verdict["claims"], "extremes": verdict["extremes"]}
    return rows  # type: ignore[return-value]


def _finite(x: float) -> float | None:
    """A seed mean as the chapter's JSON keeps it: ``None`` where it is not finite (a step never reached)."""
    return float(x) if math.isfinite(x) else None
