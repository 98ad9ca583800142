"""Sensitivity of the scenario verdicts (000 Sec. 3.2.2, Fig. 3) to the choices the paper leaves open.

A :class:`Variant` changes one choice against the chapter's baseline: a run setting (learning rate,
optimiser, width, activation, SFT steps, pairs per step, steps), the loss's beta, or the SFT target (the
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

__all__ = ["Variant", "SENSITIVITY_KEYS", "scenario_sensitivity"]

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
