"""DPO on the small language model in the four scenarios of 000 Table 4, and what 000 Sec. 5 claims
about it (the chapter "The 3D-properties in a language model").

- :func:`carry_problems` - the milder out-of-distribution set: held-out 3-digit problems with a carry out
  of every column (the sampler of :func:`prefdyn.lm.task.sample_problems` is uniform, so these make up
  only about 14% of the training problems: under-represented, not unseen; the 4-digit set of
  :func:`prefdyn.lm.make_pairs` is the strict OOD set, where the shipped models score 0);
- :func:`split_pairs` - a fixed train/test split of the (shared) prompts of :func:`prefdyn.lm.make_pairs`;
- :func:`run_scenarios` - DPO (:func:`prefdyn.probes.train_preference`) per scenario and seed, with the
  per-token log-probs of 000 Table 1 before and after, exact-match accuracies (000 Tables 2, 8, 9) and
  the training logs (000 Fig. 10);
- :func:`logp_table`, :func:`accuracy_table`, :func:`claims`, :func:`paper_claims` - the summaries over
  seeds (:func:`prefdyn.stats.mean_ci`) and the verdicts on 000 Sec. 5's claims, applied in the same way
  to 000's printed Table 1 / Table 2 (:data:`PAPER_TABLE1`, :data:`PAPER_TABLE2`, quoted, not recomputed).

Conventions: log-probs are 000 Table 1's "average log probability of each token" (sum over the response's
tokens, EOS included, divided by its length), averaged over the pairs; a change is after - before, per
seed; a "seed" varies the order in which DPO sees the training pairs (the pairs themselves, their split
and the evaluation problems are fixed by ``data_seed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..device import cpu_settings
from ..stats import mean_ci
from ..validate import check_bool, check_int, check_number
from . import task as T
from .models import load_lm
from .prefdata import SCENARIOS, PrefData, accuracy

__all__ = ["quiet", "PAPER_TABLE1", "PAPER_TABLE2", "has_full_carry", "carry_problems", "split_pairs", "ScenarioRuns",
           "run_scenarios", "logp_table", "accuracy_table", "claims", "paper_claims", "CLAIMS", "EVAL_SETS",
           "ledger_claims"]

def quiet() -> None:
    """Silence ``transformers`` in a chapter before it loads a model: no weight-loading progress bars, only
    errors from its loggers (e.g. not the padding warning of a forward pass without an attention mask,
    which :func:`prefdyn.lm.generate` does on purpose: its prompts share one length), and not tqdm's note
    that a notebook has no widgets. The bars and warnings carry timings and would differ at every run. For
    the TRL page also: no ``datasets`` progress bars (TRL's dataset preparation), and no ``FutureWarning``
    raised inside ``transformers`` or TRL (deprecation notices of their own internals)."""
    import warnings

    from tqdm import TqdmWarning

    warnings.filterwarnings("ignore", category=TqdmWarning)
    for module in ("transformers", "trl"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        import datasets
    except ImportError:                                  # datasets comes with TRL, not with the book extra
        return
    datasets.disable_progress_bars()


#: 000 Table 1 as printed: model -> scenario -> (before, after) -> (log pi(a+), log pi(a-)), per-token means.
PAPER_TABLE1 = {
    "Baichuan2-13B": {1: ((-0.9181, -0.9393), (-0.9681, -0.9982)), 2: ((-1.6776, -0.9238), (-1.6265, -1.2293)),
                      3: ((-0.9461, -1.7110), (-0.8786, -1.8848)), 4: ((-1.7468, -1.7110), (-1.6617, -1.8265))},
    "Baichuan2-33B": {1: ((-0.3603, -0.3634), (-0.3629, -0.3670)), 2: ((-1.4314, -0.3525), (-1.2734, -0.4254)),
                      3: ((-0.3460, -1.1204), (-0.3439, -1.4333)), 4: ((-1.2838, -1.1451), (-1.2273, -1.2234))},
}
#: 000 Table 2 as printed ("4&5 points" = the answer is right, 000 Table 5), model -> row -> fraction;
#: row 0 is the base model.
PAPER_TABLE2 = {
    "Baichuan2-13B": {0: 0.42539, 1: 0.47082, 2: 0.43445, 3: 0.41576, 4: 0.37685},
    "Baichuan2-33B": {0: 0.53229, 1: 0.54759, 2: 0.51409, 3: 0.53924, 4: 0.54648},
}
#: The evaluation sets: key -> description.
EVAL_SETS = {
    "in_distribution": "held-out 3-digit problems (never trained on)",
    "ood_carry": "held-out 3-digit problems with a carry out of every column",
    "ood_4digit": "4-digit operands (one digit more than any training problem)",
}
#: The claims of 000 Sec. 5 tested by :func:`claims` (key -> condition in words).
CLAIMS = {
    "drastic_drop": "Drastic drop: −Δ log π(a−) − |Δ log π(a+)| > 0 (ratio of the means)",
    "degradation": "Degradation: Δ log π(a+) < 0",
    "s1_slowest_rejected_decline": "S1: slowest fall of log π(a−) (000 Sec. 5.2)",
    "s1_best_accuracy": "S1: best accuracy after DPO",
    "off_policy_worst_accuracy": "S4 (off-policy): worst accuracy after DPO",
    "accuracy_changes": "accuracy after DPO − base ≠ 0",
    "grad_rejected_grows_more": "Fig. 10: log|∂ℓ/∂p−| grows more than log|∂ℓ/∂p+|",
}


def has_full_carry(a: torch.Tensor, b: torch.Tensor, digits: int) -> torch.Tensor:
    """Whether adding ``a + b`` column by column (``digits`` columns, units first) carries out of every
    column (bool tensor)."""
    carry = torch.zeros_like(a)
    ok = torch.ones_like(a, dtype=torch.bool)
    for i in range(digits):
        t = (a // 10 ** i) % 10 + (b // 10 ** i) % 10 + carry
        carry = (t >= 10).long()
        ok &= carry.bool()
    return ok


def carry_problems(n: int, digits: int = 3, *, split: str = "test", seed: int = 0) -> T.Problems:
    """``n`` problems of ``split`` (:func:`prefdyn.lm.task.sample_problems`) with a carry out of every
    column, drawn by rejection from ``torch.Generator().manual_seed(seed)`` in batches of ``64 n``."""
    check_int("n", n, 1)
    check_int("digits", digits, 1, 9)
    g = torch.Generator().manual_seed(check_int("seed", seed, 0))
    a, b = [], []
    got = 0
    while got < n:
        p = T.sample_problems(64 * n, digits, split=split, generator=g)
        keep = has_full_carry(p.a, p.b, digits)
        a.append(p.a[keep])
        b.append(p.b[keep])
        got += int(keep.sum())
    return T.Problems(torch.cat(a)[:n], torch.cat(b)[:n], digits)


def split_pairs(data: PrefData, test_frac: float = 0.25, *, seed: int = 0) -> dict[str, dict[int, list]]:
    """``{"train": {s: pairs}, "test": {s: pairs}}``: the pairs of every scenario split by ONE permutation
    of the pair index (``torch.Generator().manual_seed(seed)``), the first ``round(test_frac n)`` to the
    test side. With ``make_pairs(shared=True)`` every scenario has the same prompts in the same order, so
    the split is the same set of prompts for all four (checked)."""
    check_number("test_frac", test_frac, 0.0, 1.0, low_open=True, high_open=True)
    n = {len(p) for p in data.pairs.values()}
    if len(n) != 1 or len({tuple(d["prompt"] for d in p) for p in data.pairs.values()}) != 1:
        raise ValueError("data: expected make_pairs(shared=True): the scenarios must share their prompts")
    n = n.pop()
    k = int(round(test_frac * n))
    if not 1 <= k < n:
        raise ValueError(f"test_frac: expected a split with pairs on both sides of {n} pairs, got {test_frac}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    test, train = perm[:k], perm[k:]
    return {"train": {s: [p[i] for i in train] for s, p in data.pairs.items()},
            "test": {s: [p[i] for i in test] for s, p in data.pairs.items()}}


@dataclass
class ScenarioRuns:
    """What :func:`run_scenarios` measured, for scenarios ``scenarios`` (rows) and ``seeds`` (columns).

    ``logp [S, K, 2 (before/after), 2 (chosen/rejected), 2 (train/test)]``: per-token mean log-probs,
    averaged over the pairs; ``accuracy[set][mode]`` ``[S, K]`` after DPO and ``base_accuracy[set][mode]``
    the policy before DPO (modes ``greedy``, ``sampled``); ``logs[column]`` ``[S, K, T]`` the training log
    of :func:`prefdyn.probes.train_preference` at ``steps``; ``losses [S, K, steps]``."""

    scenarios: list[int]
    seeds: list[int]
    logp: np.ndarray
    accuracy: dict[str, dict[str, np.ndarray]]
    base_accuracy: dict[str, dict[str, float]]
    logs: dict[str, np.ndarray]
    steps: np.ndarray
    losses: np.ndarray
    config: dict = field(default_factory=dict)


def _mean_logp(lp) -> tuple[float, float]:
    return float(lp.chosen_mean.mean()), float(lp.rejected_mean.mean())


def run_scenarios(split: dict[str, dict[int, list]], eval_sets: dict[str, T.Problems], *, seeds: Sequence[int],
                  policy: str = "arith-a", scenarios: Sequence[int] = (1, 2, 3, 4), beta: float = 0.1,
                  steps: int = 40, batch_size: int = 16, lr: float = 1e-4, log_every: int = 4,
                  eval_samples: int = 2, eval_seed: int = 0, sampled_sets: Sequence[str] | None = None,
                  device: str = "cpu", threads: int = 1, progress: bool = False, loss: Any = "dpo",
                  loss_params: Mapping[str, Any] | None = None,
                  base_accuracy: Mapping[str, Mapping[str, float]] | None = None,
                  ref_cache: dict | None = None) -> ScenarioRuns:
    """DPO of ``policy`` (a fresh copy per run) on ``split["train"][s]`` for every scenario ``s`` and seed
    (AdamW, no weight decay, constant ``lr``, ``batch_size`` pairs per update, ``steps`` updates, DPO with
    ``beta``; the seed orders the pairs), then the per-token log-probs of the train and test pairs and the
    accuracy on every problem set of ``eval_sets`` (greedy, and the mean over ``eval_samples`` samples at
    temperature 1 with ``eval_seed`` on ``sampled_sets``, default all). One loop over scenarios x seeds:
    each run trains its own model. ``threads``: torch CPU threads during the runs
    (:class:`prefdyn.device.cpu_settings`). ``loss``/``loss_params``: any loss of :mod:`prefdyn.losses`
    (default DPO with ``beta``; ``loss_params=None`` means ``{"beta": beta}``), checked before any work.
    ``base_accuracy``: the base model's accuracies of an earlier call with the same ``policy``, evaluation
    sets and sampling (its ``ScenarioRuns.base_accuracy``), reused instead of evaluated again.
    ``ref_cache``: a dict shared by calls on the same ``split`` and ``policy``: the reference log-probs of a
    scenario's training pairs (:func:`prefdyn.probes.train_preference`'s ``run.ref``, the same for every seed
    and loss) are computed by the first run and reused by the others (kept per scenario, batch size and
    device)."""
    from ..probes import as_token_pairs, pair_logprobs, train_preference

    from .. import losses as L

    params = L.get(loss).check(**(dict(loss_params) if loss_params is not None else {"beta": beta}))
    seeds = [check_int("seeds", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one seed, got none")
    scenarios = list(scenarios)
    for s in scenarios:
        if s not in SCENARIOS:
            raise ValueError(f"scenarios: expected values in {sorted(SCENARIOS)}, got {s!r}")
    check_int("eval_samples", eval_samples, 1)
    check_int("eval_seed", eval_seed, 0)
    check_bool("progress", progress)
    sampled_sets = list(eval_sets) if sampled_sets is None else list(sampled_sets)
    for name in sampled_sets:
        if name not in eval_sets:
            raise ValueError(f"sampled_sets: expected names of eval_sets ({', '.join(eval_sets)}), got {name!r}")
    if base_accuracy is not None:
        want = {e: {"greedy", "sampled"} for e in eval_sets}
        if {e: set(d) for e, d in base_accuracy.items()} != want:
            raise ValueError(f"base_accuracy: expected greedy and sampled accuracies of the evaluation sets "
                             f"({', '.join(eval_sets)}), got {sorted(base_accuracy)}")
    for s in scenarios:                     # before any training: every scenario has a batch of pairs
        n = len(split["train"][s])
        if batch_size > n:
            raise ValueError(f"batch_size: expected at most the training pairs of scenario {s} ({n}), "
                             f"got {batch_size}")
    tok = T.make_tokenizer()
    refs = {} if ref_cache is None else ref_cache
    S, K = len(scenarios), len(seeds)
    logp = np.zeros((S, K, 2, 2, 2))
    acc = {e: {"greedy": np.zeros((S, K)), "sampled": np.full((S, K), np.nan)} for e in eval_sets}
    logs: dict[str, list] = {}
    losses = []

    def evaluate(model) -> dict[str, dict[str, float]]:
        out = {}
        for e, probs in eval_sets.items():
            out[e] = {"greedy": accuracy(model, probs, greedy=True),
                      "sampled": (accuracy(model, probs, greedy=False, n=eval_samples, seed=eval_seed)
                                  if e in sampled_sets else float("nan"))}
        return out

    with cpu_settings(threads, flush_denormal=False):
        base = load_lm(policy)
        base_acc = evaluate(base) if base_accuracy is None else {e: dict(d) for e, d in base_accuracy.items()}
        for i, s in enumerate(scenarios):
            tp = {side: as_token_pairs(split[side][s], tok) for side in ("train", "test")}
            before_test = _mean_logp(pair_logprobs(base, tp["test"], batch_size=64))
            for j, seed in enumerate(seeds):
                key = (policy, s, batch_size, str(device))
                run = train_preference(load_lm(policy), tp["train"], tokenizer=tok, loss=loss,
                                       loss_params=params, steps=steps, batch_size=batch_size, lr=lr,
                                       optimizer="adamw", weight_decay=0.0, log_every=log_every, seed=seed,
                                       device=device, progress=progress, ref=refs.get(key))
                refs.setdefault(key, run.ref)
                model = run.model.to("cpu").eval()
                logp[i, j, 0, :, 0] = _mean_logp(run.ref)
                logp[i, j, 0, :, 1] = before_test
                logp[i, j, 1, :, 0] = _mean_logp(pair_logprobs(model, tp["train"], batch_size=64))
                logp[i, j, 1, :, 1] = _mean_logp(pair_logprobs(model, tp["test"], batch_size=64))
                for e, d in evaluate(model).items():
                    for m, v in d.items():
                        acc[e][m][i, j] = v
                for k, v in run.log.items():
                    logs.setdefault(k, []).append(v)
                losses.append(run.losses)
    T_ = len(logs["step"][0])
    logs_arr = {k: np.stack(v).reshape(S, K, T_) for k, v in logs.items()}
    config = dict(policy=policy, scenarios=scenarios, seeds=seeds, beta=beta, loss=L.get(loss).name,
                  loss_params=params, steps=steps, batch_size=batch_size,
                  lr=lr, optimizer="adamw", weight_decay=0.0, log_every=log_every, eval_samples=eval_samples,
                  eval_seed=eval_seed, n_train={s: len(split["train"][s]) for s in scenarios},
                  n_test={s: len(split["test"][s]) for s in scenarios},
                  n_eval={e: len(p) for e, p in eval_sets.items()})
    return ScenarioRuns(scenarios, seeds, logp, acc, base_acc, logs_arr, logs_arr["step"][0, 0],
                        np.stack(losses).reshape(S, K, steps), config)


_WHEN, _RESP, _SIDE = ("before", "after"), ("chosen", "rejected"), ("train", "test")


def logp_table(runs: ScenarioRuns) -> dict[str, Any]:
    """``"S<s>" -> before/after/change -> chosen/rejected -> train/test ->`` mean over seeds with its 95%
    interval (:func:`prefdyn.stats.mean_ci`); ``change`` = after - before per seed."""
    out = {}
    for i, s in enumerate(runs.scenarios):
        x = runs.logp[i]
        blocks = {"before": x[:, 0], "after": x[:, 1], "change": x[:, 1] - x[:, 0]}
        out[f"S{s}"] = {w: {r: {side: mean_ci(v[:, a, b]) for b, side in enumerate(_SIDE)}
                            for a, r in enumerate(_RESP)} for w, v in blocks.items()}
    return out


def accuracy_table(runs: ScenarioRuns) -> dict[str, Any]:
    """``"base"`` and ``"S<s>" -> eval set -> greedy/sampled ->`` accuracy (the base model: one number;
    after DPO: mean over seeds with its 95% interval; ``change`` = after - base)."""
    out: dict[str, Any] = {"base": runs.base_accuracy}
    for i, s in enumerate(runs.scenarios):
        out[f"S{s}"] = {e: {m: mean_ci(a[i]) for m, a in d.items()} for e, d in runs.accuracy.items()}
        out[f"S{s}"]["change"] = {e: {m: mean_ci(a[i] - runs.base_accuracy[e][m]) for m, a in d.items()}
                                  for e, d in runs.accuracy.items()}
    return out


def _above(ci: dict) -> bool:
    return bool(ci["lo"] > 0)


def claims(runs: ScenarioRuns, side: str = "train") -> dict[str, Any]:
    """The verdicts on :data:`CLAIMS`, per scenario where the claim is per scenario, each ``{"holds":
    bool, ...numbers}``; a verdict "holds" only when the 95% interval over seeds is on its side of 0
    (or, for "best"/"worst", when the extreme scenario's interval does not overlap the others'). The
    gradient claim compares the growth of ``log|dl/dp|`` per token (:data:`prefdyn.probes.PROBE_COLUMNS`
    ``tok_log_grad_*``; :func:`_growth`: last third of the logged rows against the first third); the same
    growth of the whole-sequence ``log|dl/dpi|`` is reported beside it (``..._sum``): the mean over pairs of
    ``|dl/dpi| = |g|/pi`` is dominated by the least likely response of the update, far noisier."""
    b = _SIDE.index(side)
    lp = runs.logp[..., b]                                  # [S, K, when, resp]
    d_ch, d_rej = lp[:, :, 1, 0] - lp[:, :, 0, 0], lp[:, :, 1, 1] - lp[:, :, 0, 1]
    out: dict[str, Any] = {"drastic_drop": {}, "degradation": {}, "accuracy_changes": {},
                           "grad_rejected_grows_more": {}}
    acc = runs.accuracy["in_distribution"]["greedy"]
    base = runs.base_accuracy["in_distribution"]["greedy"]
    g_ch, g_rej = runs.logs["tok_log_grad_chosen"], runs.logs["tok_log_grad_rejected"]
    s_ch, s_rej = runs.logs["log_grad_chosen"], runs.logs["log_grad_rejected"]
    for i, s in enumerate(runs.scenarios):
        k = f"S{s}"
        gap = mean_ci(-d_rej[i] - np.abs(d_ch[i]))
        out["drastic_drop"][k] = {"holds": _above(gap), "excess_drop": gap,
                                  "ratio_of_means": float(np.mean(-d_rej[i]) / abs(np.mean(d_ch[i])))}
        dc = mean_ci(d_ch[i])
        out["degradation"][k] = {"holds": bool(dc["hi"] < 0), "change_chosen": dc}
        da = mean_ci(acc[i] - base)
        out["accuracy_changes"][k] = {"holds": bool(da["lo"] > 0 or da["hi"] < 0),
                                      "direction": "up" if da["mean"] > 0 else "down", "change": da}
        grow = mean_ci(_growth(g_rej[i]) - _growth(g_ch[i]))
        grow_sum = mean_ci(_growth(s_rej[i]) - _growth(s_ch[i]))
        out["grad_rejected_grows_more"][k] = {"holds": _above(grow), "log_growth_difference": grow,
                                              "log_growth_difference_sum": grow_sum}
    drops = [mean_ci(-d_rej[i]) for i in range(len(runs.scenarios))]
    out["s1_slowest_rejected_decline"] = _extreme(runs.scenarios, drops, 1, lowest=True)
    accs = [mean_ci(acc[i]) for i in range(len(runs.scenarios))]
    out["s1_best_accuracy"] = _extreme(runs.scenarios, accs, 1, lowest=False)
    out["off_policy_worst_accuracy"] = _extreme(runs.scenarios, accs, 4, lowest=True)
    return out


def _growth(x: np.ndarray) -> np.ndarray:
    """Per seed (rows of ``x [K, T]``): the mean of the last third of the logged rows minus the mean of
    the first third (at least one row each): a change over training that one noisy row does not decide."""
    k = max(1, x.shape[1] // 3)
    return x[:, -k:].mean(1) - x[:, :k].mean(1)


def _extreme(scenarios: list[int], cis: list[dict], which: int, *, lowest: bool) -> dict[str, Any]:
    """Whether scenario ``which`` has the lowest (highest) mean, and whether its interval is apart from
    every other scenario's."""
    if which not in scenarios:
        return {"holds": None, "by_means": None}
    means = [c["mean"] for c in cis]
    i = scenarios.index(which)
    others = [c for j, c in enumerate(cis) if j != i]
    best = (min if lowest else max)(range(len(means)), key=means.__getitem__)
    apart = all((cis[i]["hi"] < c["lo"]) if lowest else (cis[i]["lo"] > c["hi"]) for c in others)
    return {"holds": bool(best == i and apart), "by_means": bool(best == i),
            "extreme": f"S{scenarios[best]}"}


def paper_claims(model: str) -> dict[str, Any]:
    """The same verdicts on 000's printed Tables 1 and 2 for ``model`` (one run each, no interval: a
    verdict holds on the sign of the printed difference; Fig. 10 is a picture, not tested here)."""
    t1, t2 = PAPER_TABLE1[model], PAPER_TABLE2[model]
    d = {s: (after[0] - before[0], after[1] - before[1]) for s, (before, after) in t1.items()}
    acc = {s: t2[s] for s in t1}
    s_min_drop = min(d, key=lambda s: -d[s][1])
    return {
        "drastic_drop": {f"S{s}": -dr > abs(dc) for s, (dc, dr) in d.items()},
        "degradation": {f"S{s}": dc < 0 for s, (dc, dr) in d.items()},
        "s1_slowest_rejected_decline": s_min_drop == 1,
        "s1_best_accuracy": max(acc, key=acc.get) == 1,
        "off_policy_worst_accuracy": min(acc, key=acc.get) == 4,
        "accuracy_changes": {f"S{s}": "up" if acc[s] > t2[0] else "down" for s in acc},
    }


#: The per-scenario claims and the number each verdict rests on (key in the claim's entry).
PER_SCENARIO = {"drastic_drop": "excess_drop", "degradation": "change_chosen", "accuracy_changes": "change",
                "grad_rejected_grows_more": "log_growth_difference"}


def claims_tables(c: dict[str, Any], paper: dict[str, dict[str, Any]], label: str = ""):
    """Two :class:`prefdyn.tables.Table` of the verdicts of :func:`claims` (``c``) beside those of
    :func:`paper_claims` (``paper``: model -> verdicts): per scenario, each cell "yes"/"no" with the mean
    and 95% interval it rests on; across scenarios, here and in 000. ``label`` ends both titles."""
    from ..results import fmt
    from ..tables import MeanCI, Table

    scen = list(c["drastic_drop"])
    rows = []
    for k, num in PER_SCENARIO.items():
        rows.append((CLAIMS[k], [f"{'yes' if c[k][s]['holds'] else 'no'}: {MeanCI.of(c[k][s][num]).text()}"
                                 + (f" ({c[k][s]['direction']})" if k == "accuracy_changes" else "")
                                 + (f"; ratio {fmt(c[k][s]['ratio_of_means'])}" if k == "drastic_drop" else "")
                                 for s in scen]))
        for m, pc in paper.items():
            if k in pc:
                rows.append((f"  000, {m}", [("yes" if pc[k][s] is True else "no" if pc[k][s] is False
                                              else pc[k][s]) if s in pc[k] else "-" for s in scen]))
    per = Table(scen, rows, corner="claim (here: mean [95% interval] over seeds)", max_cols=2,
                title="Per-scenario claims of 000 Sec. 5, here and in 000's Tables 1-2" + label)
    cross = ("s1_slowest_rejected_decline", "s1_best_accuracy", "off_policy_worst_accuracy")
    rows2 = [(CLAIMS[k], [f"{'yes' if c[k]['holds'] else 'no'} (by means: {'yes' if c[k]['by_means'] else 'no'}, "
                          f"extreme {c[k]['extreme']})"] + ["yes" if paper[m][k] else "no" for m in paper])
             for k in cross]
    across = Table(["here (intervals apart)"] + [f"000, {m}" for m in paper], rows2, corner="claim",
                   title="Claims across scenarios" + label)
    return per, across


def ledger_claims(results: Mapping[str, Any], *, lr: float, lr_contrast: float) -> list[dict[str, Any]]:
    """000 Sec. 5's claims tested by the chapter llm-3d, as claims of the book's ledger
    (:mod:`prefdyn.ledger`; keyword arguments of :meth:`prefdyn.chapters.ChapterContext.claim`), their
    evidence read from the chapter's ``results``: ``claims``/``logp_table``/``accuracy_table`` (the main run
    at ``lr``) and ``contrast.*`` (the same at ``lr_contrast``). Each claim is tested at one of the two
    rates (``rule``) and at both (``robust``): the drastic drop and the accuracy claims at ``lr``, the
    degradation and the gradient growth, which 000 shows on a model trained to the end, at ``lr_contrast``."""
    scen = [k for k in results["claims"]["drastic_drop"]]                 # "S1", ...

    def both(build, main_first: bool = True):
        ev_m, rule_m = build("", "")
        ev_c, rule_c = build("c_", "contrast.")
        rule, other = (rule_m, rule_c) if main_first else (rule_c, rule_m)
        return {"evidence": {**ev_m, **ev_c}, "rule": rule, "robust": f"({rule}) and ({other})",
                "condition": (f"DPO trains at lr = {lr:g}; it fails at lr = {lr_contrast:g}" if main_first else
                              f"DPO is pushed hard (lr = {lr_contrast:g}); it fails at lr = {lr:g}")}

    def drop(p, r):
        ev = {f"{p}{s.lower()}_lo": f"{r}claims.drastic_drop.{s}.excess_drop.lo" for s in scen}
        return ev, f"min({', '.join(ev)}) > 0"

    def degradation(p, r):
        return {f"{p}s1_hi": f"{r}claims.degradation.S1.change_chosen.hi"}, f"{p}s1_hi < 0"

    def grows(p, r):
        ev = {f"{p}{s.lower()}_lo": f"{r}claims.grad_rejected_grows_more.{s}.log_growth_difference.lo"
              for s in scen}
        return ev, f"min({', '.join(ev)}) > 0"

    def extreme(table: str, key: str, which: str, highest: bool):
        def build(p, r):
            ev = {}
            for s in scen:
                for b in ("lo", "hi"):
                    ev[f"{p}{s.lower()}_{b}"] = f"{r}{table}.{s}.{key}.{b}"
            me = which.lower()
            others = [s.lower() for s in scen if s != which]
            if highest:       # its interval above every other's
                return ev, f"{p}{me}_lo > max({', '.join(f'{p}{o}_hi' for o in others)})"
            return ev, f"{p}{me}_hi < min({', '.join(f'{p}{o}_lo' for o in others)})"
        return build

    sec = "Which of 000's claims reproduce at this scale"
    out = [
        {"id": "drastic-drop", "source": "000 Sec. 5.2, Table 1; Property 1", "section": sec,
         "statement": "in every data scenario DPO lowers the rejected responses' log-prob by more than it "
                      "changes the chosen ones'", **both(drop)},
        {"id": "degradation", "source": "000 Sec. 5.2, Table 1; Property 2", "section": sec,
         "statement": "on on-policy pairs (S1) DPO lowers the chosen responses' log-prob too",
         **both(degradation, main_first=False)},
        {"id": "gradient-rejected-grows", "source": "000 App. D.2, Fig. 10", "section": sec,
         "statement": "over training the gradient on the rejected response's probability grows more than "
                      "the one on the chosen response's, in every scenario",
         **both(grows, main_first=False), "note": "per-token probabilities; growth = last third of the logged "
                                                  "updates minus the first third"},
        {"id": "s1-slowest-rejected-decline", "source": "000 Sec. 5.2", "section": sec,
         "statement": "on-policy pairs (S1) give the slowest decline of the rejected responses' log-prob",
         **both(extreme("logp_table", "change.rejected.train", "S1", highest=True)),
         "note": "per-token change on the training pairs; intervals apart"},
        {"id": "s1-best-accuracy", "source": "000 Sec. 5.2, Tables 2, 8, 9", "section": sec,
         "statement": "DPO on on-policy pairs (S1) gives the best accuracy of the four scenarios",
         **both(extreme("accuracy_table", "in_distribution.greedy", "S1", highest=True)),
         "note": "in distribution, greedy; intervals apart"},
        {"id": "off-policy-worst-accuracy", "source": "000 Sec. 5.2, Tables 2, 8, 9", "section": sec,
         "statement": "DPO on off-policy pairs (S4) gives the worst accuracy of the four scenarios",
         **both(extreme("accuracy_table", "in_distribution.greedy", "S4", highest=False)),
         "note": "in distribution, greedy; intervals apart"},
    ]
    return out
