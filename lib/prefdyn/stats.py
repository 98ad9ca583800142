"""Statistics over seeds: means with Student-t intervals (arithmetic and geometric), bands of curves and
rank correlations. Pure numpy/scipy; used by the records' summaries, the verdicts and the plots."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_ci", "geo_mean_ci", "curve_ci", "pow10", "clip", "rank_correlation", "paired_test", "holm"]


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
    finite = bool(np.all(np.isfinite(fin)))
    # scaled first: the squares of values like 1e-255 underflow, the sum of values like 1e308 overflows
    scale = float(np.max(np.abs(fin))) if finite else 0.0
    with np.errstate(over="ignore"):
        mean = float(np.mean(fin))
    if finite and not math.isfinite(mean):                 # the sum overflowed: average the scaled values
        mean = float(np.mean(fin / scale)) * scale
    out["mean"] = mean
    if n >= 2 and finite:
        sem = float(np.std(fin / scale, ddof=1) * scale / math.sqrt(n)) if scale > 0 else 0.0
        half = float(stats.t.ppf(0.5 + level / 2.0, n - 1)) * sem
        out["lo"], out["hi"] = mean - half, mean + half
    elif not np.all(np.isfinite(fin)):
        out["lo"], out["hi"] = float(np.min(fin)), float(np.max(fin))
    return out


def geo_mean_ci(x, level: float = 0.95) -> dict[str, float]:
    """:func:`mean_ci` on ``log10(x)``, mapped back: geometric mean and interval (NaN left out; an infinite
    value in ``x`` gives an infinite mean)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = mean_ci(np.log10(x), level)
    return {k: (pow10(r[k]) if k in ("mean", "lo", "hi") else r[k]) for k in r}


def pow10(x: float) -> float:
    """10**x as a float, +inf on overflow (Python's ``10.0 ** x`` raises instead)."""
    with np.errstate(over="ignore"):
        return float(np.power(10.0, np.float64(x)))


def clip(x: float, lo: float, hi: float) -> float:
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


def paired_test(x, y) -> dict[str, float]:
    """Paired comparison of ``x`` with ``y`` (one value per seed each, same seeds in the same order):
    the two-sided Wilcoxon signed-rank test of ``d = x - y`` (scipy's, exact for n <= 50 without ties or
    zeros, else the normal approximation; zero differences are dropped, ``zero_method="wilcox"``).

    Returns ``{"mean_diff", "p_value", "wins", "losses", "n"}``: wins/losses count the seeds with
    ``x > y`` / ``x < y``; ``p_value`` is 1 when every difference is zero and NaN with fewer than two
    finite pairs. Pairs with a NaN on either side are left out."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"y: expected {x.size} values paired with x, got {y.size}")
    d = (x - y)[~(np.isnan(x) | np.isnan(y))]
    out = {"mean_diff": float(d.mean()) if d.size else float("nan"), "p_value": float("nan"),
           "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "n": int(d.size)}
    if d.size >= 2:
        out["p_value"] = 1.0 if not np.any(d != 0) else float(stats.wilcoxon(d).pvalue)
    return out


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate): the
    i-th smallest becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; NaNs stay NaN and do not count
    in ``m``. Same order as the input."""
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out
