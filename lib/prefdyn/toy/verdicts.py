"""Verdicts on toy runs, from the summaries of :func:`prefdyn.records.summarise`: the 3D-properties
(000 Properties 1-3), the phases of 000 Sec. 3.2.2, 000's claims about the scenarios (Fig. 3) and
Proposition 1 on a sweep."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..stats import rank_correlation
from ..tables import Table

__all__ = ["three_d", "THREE_D_LABELS", "removed_by", "matched_removal", "matched_removal_reading",
           "matched_beta_table",
           "falls_further", "PHASE_CHECKS", "phase_checks", "EXTREMES",
           "SCENARIO_CLAIMS", "scenario_claims", "PROP1_SIGNS", "prop1_test", "prop1_series"]


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


def matched_removal(reference: Mapping[float, Mapping[str, bool]], verdict: Mapping[float, Mapping[str, bool]],
                    own: float, base: float) -> dict:
    """Which D a loss removes once the comparison is made at matched beta.

    ``reference[b]`` and ``verdict[b]`` are :func:`three_d` verdicts of the reference loss (vanilla DPO) and
    of the loss at inverse temperature ``b``; ``own`` is the loss's own (default) beta, ``base`` the
    reference's. ``"claimed"``: what :func:`removed_by` says when the loss at ``own`` is compared with the
    reference at ``base`` (the unmatched comparison); ``"at_beta"``: for every ``b`` of both, what the loss
    removes against the reference at the same ``b``; of the claimed properties, ``"matched"`` are those the
    reference at ``own`` still shows (the loss removes them at matched beta) and ``"beta_only"`` those the
    reference at ``own`` no longer shows either (the removal is beta's, not the loss's).
    """
    for name, d in (("reference", reference), ("verdict", verdict)):
        for b in (own, base):
            if b not in d:
                raise ValueError(f"matched_removal: {name} has no verdict at beta={b:g}")
    claimed = removed_by(reference[base], verdict[own])["removes"]
    at_beta = {b: removed_by(reference[b], verdict[b])["removes"] for b in verdict if b in reference}
    return {"claimed": claimed, "at_beta": at_beta,
            "matched": [k for k in claimed if reference[own][k]],
            "beta_only": [k for k in claimed if not reference[own][k]]}


def matched_removal_reading(result: Mapping, own: float, reference: str = "DPO",
                            labels: Mapping[str, str] = THREE_D_LABELS) -> str:
    """One phrase per claimed property of :func:`matched_removal`: removed also at matched beta, or only
    because the reference at the loss's own beta loses it too (naming the other betas at which the loss
    does remove it against the reference at the same beta); then any property removed at some matched
    beta that was not claimed. ``"none claimed"`` if there is nothing to say."""
    def where(k, skip=None):
        return [b for b, ks in result["at_beta"].items() if k in ks and b != skip]

    parts = []
    for k in result["claimed"]:
        if k in result["matched"]:
            parts.append(f"{labels[k]}: also at matched β = {own:g}")
        else:
            text = f"{labels[k]}: only because {reference} at β = {own:g} also loses it"
            others = where(k, skip=own)
            if others:
                text += " (removed at matched β = " + ", ".join(f"{b:g}" for b in others) + ")"
            parts.append(text)
    for k in labels:
        if k not in result["claimed"] and where(k):
            parts.append(f"{labels[k]}: not claimed, removed at matched β = "
                         + ", ".join(f"{b:g}" for b in where(k)))
    return "; ".join(parts) or "none claimed"


def matched_beta_table(at_beta: Mapping[str, Mapping[str, bool]], reference_base: Mapping[str, bool], beta: float,
                       base: float, *, reference: str = "dpo", label=str,
                       labels: Mapping[str, str] = THREE_D_LABELS) -> Table:
    """The 3D-properties of every loss at one inverse temperature ``beta``, and what each removes.

    ``at_beta``: loss name -> :func:`three_d` verdict at ``beta`` (the ``reference`` loss included);
    ``reference_base``: the reference's verdict at its own ``base`` beta. Each loss's "removes" column
    is :func:`removed_by` against the reference at the same ``beta`` (a matched comparison); the
    reference's own row compares it with itself at ``base``, so it says what the change of beta alone
    removes. ``label`` maps a loss name to its display name (e.g. :func:`prefdyn.plotting.loss_label`).
    """
    if reference not in at_beta:
        raise ValueError(f"at_beta: expected a verdict for the reference {reference!r}, got {sorted(at_beta)}")

    def removes(ref, v):
        return ", ".join(labels[k].lower() for k in removed_by(ref, v)["removes"]) or "none"

    rows = []
    for name, v in at_beta.items():
        if name == reference:
            last = "(reference)" if beta == base else removes(reference_base, v)
        else:
            last = removes(at_beta[reference], v)
        rows.append((label(name), [v[k] for k in labels] + [last]))
    ref = label(reference)
    return Table(list(labels.values()) + ["removes"], rows, corner="loss", title=f"The 3D-properties at β = {beta:g}",
                 note=f"removes: against {ref} at β = {beta:g}; {ref}'s row: against {ref} at β = {base:g} (β alone).")


def falls_further(lower: Mapping[str, Mapping[str, float]], upper: Mapping[str, Mapping[str, float]],
                  key: str = "rejected_drop_orders") -> bool:
    """Whether the 95% interval of ``key`` in the summary ``upper`` lies entirely above that in ``lower``
    (e.g. pi(rejected) fell by more orders of magnitude in ``upper``); False if either is NaN."""
    return _apart(lower[key], upper[key])


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


def prop1_series(run, series: Mapping[str, Sequence[str]], signs: Mapping[str, int] = PROP1_SIGNS,
                 rate: str = "rejected_tenfold_step", level: float = 0.95) -> dict[str, dict]:
    """000 Proposition 1 tested within each series of initial states and over seeds.

    ``series`` maps a name to the labels of configurations that differ in one choice only (e.g. the
    rejected probability at a fixed chosen one). For every seed, Spearman's rho across the series'
    configurations relates ``rate`` (the time pi(rejected) takes to fall tenfold) to each measure of
    ``signs``; the seeds are the independent samples (the seed means of a sweep are not). Per series and
    measure: the mean rho with its ``level`` t-interval over seeds, the fraction of seeds whose rho has the
    predicted sign, the two-sided sign-test p-value, and ``agrees_with_prop1`` (the interval lies on the
    predicted side of 0).
    """
    from scipy import stats as sstats

    from ..records import member_indicators
    from ..stats import mean_ci

    ind = member_indicators(run)
    out: dict[str, dict] = {}
    for name, labels in series.items():
        idx = np.stack([run.members_of(c) for c in labels])               # [configs, seeds]
        if len(labels) < 3:
            raise ValueError(f"series: {name!r} needs at least three configurations, got {len(labels)}")
        x = ind[rate][idx]
        res = {}
        for key, sign in signs.items():
            y = ind[key][idx]
            rho = np.array([rank_correlation(x[:, j], y[:, j])["spearman_rho"] for j in range(idx.shape[1])])
            ok = rho[np.isfinite(rho)]
            ci = mean_ci(ok, level)
            hits = int(np.sum(np.sign(ok) == sign))
            p = float(sstats.binomtest(hits, len(ok), 0.5).pvalue) if len(ok) else float("nan")
            side = ci["lo"] > 0 if sign > 0 else ci["hi"] < 0
            res[key] = {"mean_rho": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "n_seeds": int(len(ok)),
                        "frac_predicted_sign": hits / len(ok) if len(ok) else float("nan"),
                        "sign_test_p": p, "predicted_sign": int(sign), "agrees_with_prop1": bool(side)}
        out[name] = res
    return out
