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

from typing import Any, Mapping, Sequence

import numpy as np

from ..stats import mean_ci
from ..validate import check_number
from . import scenarios as SC

__all__ = ["VARIANTS", "PAPER_TABLE10", "variant_losses", "run_variants", "variants_table", "method_claims"]

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
    out = {}
    for name, (loss, params) in variant_losses(variants, beta, gamma).items():
        out[name] = SC.run_scenarios(split, eval_sets, seeds=seeds, scenarios=(scenario,), beta=beta, loss=loss,
                                     loss_params=params, **kw)
    return out


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


def _ci(d: Mapping[str, float]) -> str:
    from ..tables import MeanCI

    return MeanCI.of(d).text()


def _verdict(held: Sequence[str], tested: Sequence[str]) -> str:
    if tested and len(held) == len(tested):
        return "reproduces"
    return "reproduces partly" if held else "does not reproduce"


def method_claims(table: Mapping[str, Any], rm: Mapping[str, Any], rl: Any, *, ood: str = "ood_carry",
                  overfit_accuracy: float = 0.99) -> dict[str, dict[str, Any]]:
    """The chapter's verdicts on 000's claims about DPO's alternatives, computed from its results:
    ``table`` (:func:`variants_table`, training pairs), ``rm`` (:func:`prefdyn.lm.reward.rm_dpo_summary`)
    and ``rl`` (:class:`prefdyn.lm.rl.RLComparison`). Each claim: ``{"source", "statement", "verdict"
    ("reproduces" / "reproduces partly" / "does not reproduce"), "holds" (bool), "evidence" (the numbers,
    text), "numbers"}``. A difference "holds" when its 95% interval over seeds excludes 0 on the claim's
    side; "on par or better" when the interval of the accuracy difference reaches 0 or above."""
    out: dict[str, dict[str, Any]] = {}
    names = [n for n in table if n != "DPO"]
    dpo = table["DPO"]

    par = [n for n in names if all(table[n]["vs_dpo"][f"accuracy_{e}"]["hi"] >= 0
                                   for e in ("in_distribution", ood))]
    out["variants_on_par"] = {
        "source": "000 App. D.2, Table 10",
        "statement": "DPO's variants reach on-par or better accuracy than DPO (in distribution and OOD)",
        "verdict": _verdict(par, names), "holds": len(par) == len(names),
        "evidence": "not worse: " + (", ".join(par) or "none") + "; worse: " + (
            ", ".join(f"{n} {_ci(table[n]['vs_dpo']['accuracy_in_distribution'])}" for n in names if n not in par)
            or "none"),
        "numbers": {n: table[n]["vs_dpo"]["accuracy_in_distribution"] for n in names}}
    for key, what, src in (("drastic_drop", "the drastic drop", "000 Property 1, Sec. 4; 004 Sec. 5"),
                           ("degradation", "the degradation", "000 Property 2, Sec. 4")):
        tested = names if dpo[key] else []
        removed = [n for n in tested if not table[n][key]]
        num = "excess_drop" if key == "drastic_drop" else "change_chosen"
        out[f"variants_remove_{key}"] = {
            "source": src,
            "statement": f"the variants remove {what} DPO shows at the same rate and β",
            "verdict": _verdict(removed, tested) if dpo[key] else "not tested here",
            "holds": bool(tested) and len(removed) == len(tested),
            "evidence": (f"DPO {num.replace('_', ' ')} {_ci(dpo[num])}; removed by: " + (", ".join(removed) or "none")
                         + "; kept by: " + (", ".join(n for n in tested if n not in removed) or "none"))
            if dpo[key] else f"DPO does not show {what} here ({num.replace('_', ' ')} {_ci(dpo[num])})",
            "numbers": {n: table[n][num] for n in table}}
    d = rm["dpo_minus_rm"]["test"]
    fl = d["fluctuation"]
    ex = d["excess_variation"]
    out["dpo_fluctuates_more"] = {
        "source": "000 Sec. 5.3, Fig. 4",
        "statement": "DPO's held-out pairwise accuracy fluctuates more over training than a reward model's",
        "verdict": "reproduces" if ex["lo"] > 0 else "does not reproduce", "holds": bool(ex["lo"] > 0),
        "evidence": f"DPO - RM: fluctuation {_ci(fl)}, beyond the net change {_ci(ex)}",
        "numbers": {"fluctuation": fl, "excess_variation": ex}}
    dp = rm["dpo"]
    final_train = dp["train"]["final_accuracy"]
    g = dp["test"]["epoch_gain"]
    slows = len(g) >= 2 and g[1]["hi"] < g[0]["lo"]
    saturates = final_train["mean"] >= overfit_accuracy
    out["dpo_overfits_second_epoch"] = {
        "source": "000 App. D.2, Fig. 11",
        "statement": (f"DPO overfits by the second epoch: train accuracy reaches 100% (here: >= {overfit_accuracy:g})"
                      " and held-out growth slows sharply"),
        "verdict": ("reproduces" if slows and saturates else "reproduces partly" if slows or saturates
                    else "does not reproduce"),
        "holds": bool(slows and saturates),
        "evidence": (f"DPO train accuracy at the end {_ci(final_train)}; held-out gain epoch 1 {_ci(g[0])}"
                     + (f", epoch 2 {_ci(g[1])}" if len(g) >= 2 else "")),
        "numbers": {"final_train_accuracy": final_train, "heldout_epoch_gain": g}}
    diff = rl.rl_minus_dpo["in_distribution"]["greedy"]
    # a rule on which RLOO and DPO agree on every seed (the difference's interval is [0, 0]) is at its
    # ceiling for both: it cannot separate them and is not counted
    tied = [r for r in diff if diff[r]["lo"] == diff[r]["hi"] == 0]
    rules = [r for r in diff if r not in tied]
    better = [r for r in rules if diff[r]["lo"] > 0]
    from .rl import PAPER_TABLE3

    printed = [v for task in PAPER_TABLE3.values() for v in task.values()]
    ahead = sum(v["RLHF-PPO"] > v["DPO"] for v in printed)
    out["rl_beats_dpo"] = {
        "source": "000 Sec. 5.2.1, Table 3",
        "statement": (f"RL on an explicit score beats DPO rule by rule (000 Table 3: RLHF-PPO ahead on {ahead} of "
                      f"{len(printed)} rules; here held-out problems, greedy)"),
        "verdict": _verdict(better, rules), "holds": bool(rules) and len(better) == len(rules),
        "evidence": "; ".join(f"{r} {_ci(diff[r])}" for r in rules) + " (RLOO - DPO)"
                    + (f"; equal on every seed: {', '.join(tied)}" if tied else ""),
        "numbers": diff}
    return out
