"""DPO against its variants on the language model (000 App. D.2, Table 10; 004 Sec. 5).

:data:`VARIANTS` lists the losses of :mod:`prefdyn.losses` compared with DPO, each with its parameters at
a matched ``beta`` (the inverse temperature of the log-ratios, or IPO's regularisation, 000 eq. 8's eta =
TRL's beta): flex-beta with 000 App. D.2's ``beta+ = beta, beta- = beta / 10`` (000: 0.1 and 0.01),
SFT-DPO (000 eq. 7) with ``gamma``, IPO (000 eq. 8), SLiC (000 eq. 11, 000 App. D.1's ``delta = 5``,
``eta = 0.1``; no reference model, so no beta), DPOP (Pal et al. 2024, ``lam = 50``), nbDPO (004 eq.
25-26, clip 0.5) and bDPO (004 eq. 28-29). Every loss is the per-pair loss of :mod:`prefdyn.losses`
applied to sequence log-probs (sums over the response's tokens), averaged over the update's pairs.

:func:`run_variants` trains every variant with :func:`prefdyn.lm.scenarios.run_scenarios` on the same
pairs, seeds (batch orders) and optimiser; :func:`variants_table` reads, per variant, the per-token
log-prob changes of chosen and rejected, the gradient ratio, the accuracies, and the verdicts of
:func:`prefdyn.lm.scenarios.claims` (drastic drop, degradation), plus each variant minus DPO paired by
seed (the same seed = the same batch order) with its 95% interval.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..stats import mean_ci
from ..validate import check_number
from . import scenarios as SC

__all__ = ["VARIANTS", "PAPER_TABLE10", "variant_losses", "run_variants", "variants_table", "method_claims",
           "llm3d_worst"]

#: 000 Table 10 as printed (Baichuan2-33B on mathematical reasoning; flex-DPO with beta1 = 0.1, beta2 =
#: 0.01): method -> (MATH* 5 points, MATH* 4&5 points, SuperCLUE 5 points, SuperCLUE 4&5 points).
PAPER_TABLE10 = {
    "base": (0.257, 0.365, 0.795, 0.844),
    "DPO": (0.299, 0.375, 0.802, 0.866),
    "flex-β": (0.301, 0.380, 0.812, 0.867),
    "IPO": (0.300, 0.377, 0.805, 0.859),
    "SLiC": (0.293, 0.387, 0.797, 0.845),
}

#: Variant -> (loss of :mod:`prefdyn.losses`, a function beta, gamma -> its parameters at matched beta).
VARIANTS: dict[str, tuple[str, Any]] = {
    "DPO": ("dpo", lambda b, g: {"beta": b}),
    "flex-β": ("flex_dpo", lambda b, g: {"beta_chosen": b, "beta_rejected": b / 10}),
    "SFT-DPO": ("sft_dpo", lambda b, g: {"beta": b, "gamma": g}),
    "IPO": ("ipo", lambda b, g: {"beta": b}),
    "SLiC": ("slic", lambda b, g: {"delta": 5.0, "eta": 0.1}),
    "DPOP": ("dpop", lambda b, g: {"beta": b, "lam": 50.0}),
    "nbDPO": ("nbdpo", lambda b, g: {"beta": b, "clip": 0.5}),
    "bDPO": ("bdpo", lambda b, g: {"beta": b}),
}


def variant_losses(names: Sequence[str], beta: float = 0.1, gamma: float = 0.1) -> dict[str, tuple[str, dict]]:
    """``{name: (loss, params)}`` for the variants ``names`` (keys of :data:`VARIANTS`; DPO always first,
    added when missing: every comparison is against it) at ``beta`` and SFT-DPO's ``gamma``."""
    check_number("beta", beta, 0.0, low_open=True)
    check_number("gamma", gamma, 0.0)
    names = list(names)
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"variants: expected names among {', '.join(VARIANTS)}, got {n!r}")
    names = ["DPO", *[n for n in names if n != "DPO"]]
    return {n: (VARIANTS[n][0], VARIANTS[n][1](beta, gamma)) for n in names}


def run_variants(split: Mapping, eval_sets: Mapping, *, variants: Sequence[str] = tuple(VARIANTS),
                 scenario: int = 1, seeds: Sequence[int], beta: float = 0.1, gamma: float = 0.1,
                 **kw) -> dict[str, SC.ScenarioRuns]:
    """Every variant trained on scenario ``scenario``'s pairs, seeds ``seeds``, the other arguments of
    :func:`prefdyn.lm.scenarios.run_scenarios` (``steps``, ``batch_size``, ``lr``, ...) shared:
    ``{name: ScenarioRuns}`` (one scenario each), DPO first."""
    if scenario not in SC.SCENARIOS:
        raise ValueError(f"scenario: expected one of {sorted(SC.SCENARIOS)}, got {scenario!r}")
    out: dict[str, SC.ScenarioRuns] = {}
    refs: dict = {}                                    # the reference log-probs, computed once for every run
    for name, (loss, params) in variant_losses(variants, beta, gamma).items():
        base = next(iter(out.values())).base_accuracy if out else None      # the base model evaluated once
        out[name] = SC.run_scenarios(split, eval_sets, seeds=seeds, scenarios=(scenario,), beta=beta, loss=loss,
                                     loss_params=params, base_accuracy=base, ref_cache=refs, **kw)
    return out


def llm3d_worst(path: str | Path, lr: float) -> dict[str, Any] | None:
    """The scenario with the lowest in-distribution greedy accuracy after DPO in the chapter llm-3d's saved
    results (``path``: its ``book/data/llm-3d.json``), in its run at learning rate ``lr`` (the main run or
    the contrast run): ``{"scenario", "accuracy" (mean over seeds), "lr", "run"}``, or ``None`` when the file
    is missing or neither run used ``lr``."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    res = data.get("results", {})
    runs = {"main": (res.get("config", {}).get("lr"), res.get("accuracy_table")),
            "contrast": (res.get("contrast", {}).get("lr"), res.get("contrast", {}).get("accuracy_table"))}
    for run, (run_lr, table) in runs.items():
        if run_lr is None or table is None or not math.isclose(float(run_lr), float(lr), rel_tol=1e-9):
            continue
        acc = {int(k[1:]): v["in_distribution"]["greedy"]["mean"] for k, v in table.items()
               if k.startswith("S") and k[1:].isdigit()}
        worst = min(acc, key=acc.get)
        return {"scenario": worst, "accuracy": acc[worst], "lr": float(run_lr), "run": run}
    return None


def _paired(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return mean_ci(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64))


def variants_table(runs: Mapping[str, SC.ScenarioRuns], side: str = "train") -> dict[str, Any]:
    """Per variant (``runs`` from :func:`run_variants`), on the ``side`` pairs (``"train"`` or ``"test"``):

    - ``change_chosen``/``change_rejected``: per-token log-prob change after - before (mean over seeds, 95%
      interval), ``excess_drop`` = -change_rejected - |change_chosen| (000 Property 1's gap);
    - ``drastic_drop``/``degradation``: the verdicts of :func:`prefdyn.lm.scenarios.claims` (True when the
      interval is on the claim's side of 0);
    - ``grad_ratio_end``: ``tok_log_grad_ratio`` (log of |dl/dp-| / |dl/dp+| per token) at the last logged
      update, and ``grad_ratio_growth`` its growth (last third of the rows minus the first third);
    - ``accuracy``: greedy accuracy per evaluation set;
    - ``vs_dpo``: the variant minus DPO, paired by seed, for ``change_chosen``, ``change_rejected``,
      ``excess_drop`` and every greedy accuracy (absent for DPO itself).
    """
    if side not in ("train", "test"):
        raise ValueError(f"side: expected train or test, got {side!r}")
    if "DPO" not in runs:
        raise ValueError("runs: expected a DPO run to compare with (run_variants adds it)")
    b = ("train", "test").index(side)

    def numbers(r: SC.ScenarioRuns) -> dict[str, np.ndarray]:
        lp = r.logp[0, :, :, :, b]                          # [K, when, resp]
        dc, dr = lp[:, 1, 0] - lp[:, 0, 0], lp[:, 1, 1] - lp[:, 0, 1]
        g = r.logs["tok_log_grad_ratio"][0]                  # [K, T]
        out = {"change_chosen": dc, "change_rejected": dr, "excess_drop": -dr - np.abs(dc),
               "grad_ratio_end": g[:, -1], "grad_ratio_growth": SC._growth(g)}
        out.update({f"accuracy_{e}": a["greedy"][0] for e, a in r.accuracy.items()})
        return out

    ref = numbers(runs["DPO"])
    table: dict[str, Any] = {}
    for name, r in runs.items():
        x = numbers(r)
        c = SC.claims(r, side)
        s = f"S{r.scenarios[0]}"
        row: dict[str, Any] = {k: mean_ci(v) for k, v in x.items() if not k.startswith("accuracy_")}
        row["accuracy"] = {k[len("accuracy_"):]: mean_ci(v) for k, v in x.items() if k.startswith("accuracy_")}
        row["drastic_drop"] = c["drastic_drop"][s]["holds"]
        row["degradation"] = c["degradation"][s]["holds"]
        if name != "DPO":
            keys = ("change_chosen", "change_rejected", "excess_drop", *[k for k in x if k.startswith("accuracy_")])
            row["vs_dpo"] = {k: _paired(x[k], ref[k]) for k in keys}
        table[name] = row
    return table


def _slug(name: str) -> str:
    """A variant's name as a rule's identifier (``flex-β`` -> ``flex_b``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("β", "b")).strip("_")


def _scenario_text(s: int) -> str:
    chosen, rejected = SC.SCENARIOS[s]
    return f"scenario {s}'s (chosen from the {chosen}, rejected from the {rejected})"


def method_claims(results: Mapping[str, Any], *, scenario: int, worst: int | None = None,
                  ood: str = "ood_carry", overfit_accuracy: float = 0.99) -> list[dict[str, Any]]:
    """000's claims about DPO's alternatives as claims of the book's ledger (:mod:`prefdyn.ledger`): a list
    of keyword arguments of :meth:`prefdyn.chapters.ChapterContext.claim`, whose evidence are keys of the
    chapter's ``results``: ``variants`` (:func:`variants_table` on ``scenario``'s training pairs),
    ``variants_worst`` (the same on scenario ``worst``, when given), ``reward_model``
    (:func:`prefdyn.lm.reward.rm_dpo_summary`) and ``rl.rl_minus_dpo`` (:class:`prefdyn.lm.rl.RLComparison`).

    A difference holds when its 95% interval over seeds excludes 0 on the claim's side; "on par or better"
    when the interval of the accuracy difference reaches 0 or above; a variant removes a property DPO shows
    when its own interval is no longer on the property's side of 0. Where ``variants_worst`` is given, the
    claims about the variants are also tested there (the ``robust`` rule): a claim that holds on
    ``scenario`` but not on ``worst`` reproduces only on ``scenario``'s data."""
    out: list[dict[str, Any]] = []
    tables = {"variants": results["variants"]}
    if worst is not None:
        tables["variants_worst"] = results["variants_worst"]
    where = f"the pairs are {_scenario_text(scenario)}; it fails on scenario {worst}'s" if worst is not None else ""
    section = "DPO and its variants (000 Table 10)"

    def per_variant(pattern: str, table_key: str, prefix: str = "") -> dict[str, str]:
        return {prefix + _slug(n): f"{table_key}.{n}.{pattern}" for n in tables[table_key] if n != "DPO"}

    def claim_over(build) -> dict[str, Any]:
        """``build(table_key, prefix) -> (evidence, rule)`` on the main table, and on the worst as robust."""
        ev, rule = build("variants", "")
        c = {"evidence": ev, "rule": rule}
        if worst is not None:
            ev_w, rule_w = build("variants_worst", "w_")
            c["evidence"] = {**ev, **ev_w}
            c["robust"] = f"({rule}) and ({rule_w})"
            c["condition"] = where
        return c

    def on_par(t, p):
        ev = {**per_variant("vs_dpo.accuracy_in_distribution.hi", t, p + "id_"),
              **per_variant(f"vs_dpo.accuracy_{ood}.hi", t, p + "ood_")}
        return ev, f"min({', '.join(ev)}) >= 0"

    out.append({"id": "variants-on-par", "source": "000 App. D.2, Table 10", "section": section,
                "statement": "DPO's variants reach on-par or better accuracy than DPO, in distribution and OOD",
                **claim_over(on_par)})

    def removes(num: str, bound: str, kept: str):
        """DPO shows the property (degradation: its change_chosen hi < 0; drastic drop: its excess_drop lo >
        0) and every variant has lost it. On the worst scenario a property DPO does not show there leaves
        the claim untested, not failed."""
        def build(t, p):
            ev = {f"{p}dpo": f"{t}.DPO.{num}.{bound}", **per_variant(f"{num}.{kept}", t, p)}
            others = ", ".join(k for k in ev if k != f"{p}dpo")
            shows, removed = ((f"{p}dpo > 0", f"max({others}) <= 0") if num == "excess_drop" else
                              (f"{p}dpo < 0", f"min({others}) >= 0"))
            if p:
                return ev, f"not {shows} or {removed}"
            return ev, f"{shows} and {removed}"
        return build

    def untested(num: str, bound: str, what: str) -> dict[str, str]:
        if worst is None:
            return {}
        v = results["variants_worst"]["DPO"][num][bound]
        shows = v > 0 if num == "excess_drop" else v < 0
        return {} if shows else {"note": f"DPO does not show {what} on scenario {worst}'s pairs, which leave the "
                                         f"claim untested there"}

    out.append({"id": "variants-remove-degradation", "source": "000 Sec. 4, Property 2", "section": section,
                "statement": "the variants remove the degradation DPO shows at the same learning rate and β",
                **claim_over(removes("change_chosen", "hi", "hi")),
                **untested("change_chosen", "hi", "the degradation")})
    out.append({"id": "variants-remove-drastic-drop", "source": "000 Sec. 4, Property 1; 004 Sec. 5",
                "section": section,
                "statement": "the variants remove the drastic drop DPO shows at the same learning rate and β",
                **claim_over(removes("excess_drop", "lo", "lo")),
                **untested("excess_drop", "lo", "the drastic drop")})

    def smaller_drop(t, p):
        ev = per_variant("vs_dpo.excess_drop.hi", t, p)
        return ev, f"max({', '.join(ev)}) < 0"

    out.append({"id": "variants-shrink-drastic-drop", "source": "000 Sec. 4; 004 Sec. 5", "section": section,
                "statement": "each variant shrinks the drastic drop against DPO's (a smaller excess of the "
                             "rejected log-prob's fall over the chosen one's change)",
                **claim_over(smaller_drop)})

    rm = "reward_model"
    rm_section = "A reward model against DPO's implicit reward (000 Fig. 4, Fig. 11)"
    out.append({"id": "dpo-fluctuates-more", "source": "000 Sec. 5.3, Fig. 4", "section": rm_section,
                "statement": "DPO's held-out pairwise accuracy fluctuates more over training than a reward "
                             "model's",
                "evidence": {"excess_lo": f"{rm}.dpo_minus_rm.test.excess_variation.lo",
                             "fluctuation_lo": f"{rm}.dpo_minus_rm.test.fluctuation.lo"},
                "rule": "excess_lo > 0",
                "note": "excess: DPO's movement beyond its net change minus the reward model's"})
    out.append({"id": "dpo-train-accuracy-saturates", "source": "000 App. D.2, Fig. 11", "section": rm_section,
                "statement": "DPO overfits: its accuracy on the training pairs reaches 100% by the second epoch",
                "evidence": {"final_train": f"{rm}.dpo.train.final_accuracy.mean"},
                "rule": f"final_train >= {overfit_accuracy:g}",
                "note": f"100% read as at least {overfit_accuracy:g}, the mean over seeds at the end"})
    if len(results[rm]["dpo"]["test"]["epoch_gain"]) >= 2:
        out.append({"id": "dpo-heldout-growth-stops", "source": "000 App. D.2, Fig. 11", "section": rm_section,
                    "statement": "DPO's held-out accuracy stops growing in the second epoch while training "
                                 "goes on",
                    "evidence": {"gain1_lo": f"{rm}.dpo.test.epoch_gain[0].lo",
                                 "gain2_hi": f"{rm}.dpo.test.epoch_gain[1].hi"},
                    "rule": "gain2_hi < gain1_lo",
                    "note": "the second epoch's gain is below the first's (intervals apart)"})

    from .rl import PAPER_TABLE3

    diff = results["rl"]["rl_minus_dpo"]["in_distribution"]["greedy"]
    printed = [v for task in PAPER_TABLE3.values() for v in task.values()]
    ahead = sum(v["RLHF-PPO"] > v["DPO"] for v in printed)
    key = "rl.rl_minus_dpo.in_distribution.greedy"
    ev = {f"{r}_{b}": f"{key}.{r}.{b}" for r in diff for b in ("lo", "hi")}
    # a rule on which RLOO and DPO agree on every seed (the difference's interval is [0, 0]) is at its ceiling
    # for both: it cannot separate them and is not counted
    every = " and ".join(f"({r}_lo > 0 or {r}_lo == {r}_hi == 0)" for r in diff)
    failing = [r for r in diff if not (diff[r]["lo"] > 0 or diff[r]["lo"] == diff[r]["hi"] == 0)]
    out.append({"id": "rl-beats-dpo", "source": "000 Sec. 5.2.1, Table 3",
                "section": "RL on an explicit score against DPO (000 Table 3)",
                "statement": f"RL on an explicit score beats DPO rule by rule (000 Table 3: RLHF-PPO ahead on "
                             f"{ahead} of {len(printed)} rules)",
                "evidence": ev, "rule": "total_lo > 0", "robust": every,
                "condition": ("the score compared is the total RLOO optimises" +
                              (f", not {', '.join(failing)} alone" if failing else "")),
                "note": "held-out problems, greedy decoding; RLOO − DPO per rule"})
    return out
