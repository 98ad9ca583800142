"""Tests of :mod:`prefdyn.stats`: the means and intervals over seeds every summary of the book is built on.

Each test states a property that a wrong implementation breaks (an interval that misses its mean, NaNs
counted as values, a t-quantile of the wrong degrees of freedom, underflow of the squares, ...)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from prefdyn import stats

FAST = settings(max_examples=80, deadline=None, derandomize=True, database=None)

# Finite samples over a wide range of magnitudes (sums of 20 values stay below float64's maximum).
finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=2, max_size=20)


def _t_half(x, level=0.95):
    """Reference half-width, straight from the definition: t quantile times the standard error."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    return sps.t.ppf(0.5 + level / 2, n - 1) * np.std(x, ddof=1) / math.sqrt(n)


# ----------------------------------------------------------------------------- mean_ci
@FAST
@given(samples, st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_mean_ci_interval_contains_the_mean(x, level):
    r = stats.mean_ci(x, level)
    assert r["n"] == len(x) and r["frac"] == 1.0
    assert all(math.isfinite(r[k]) for k in ("mean", "lo", "hi")), r
    assert r["lo"] <= r["mean"] <= r["hi"]
    ulp = math.ulp(abs(r["mean"]) + (r["hi"] - r["mean"]))
    assert r["mean"] - r["lo"] == pytest.approx(r["hi"] - r["mean"], rel=1e-9, abs=4 * ulp)   # symmetric


@FAST
@given(st.lists(st.floats(min_value=-1e3, max_value=1e3), min_size=2, max_size=30))
def test_mean_ci_is_the_student_t_interval(x):
    r = stats.mean_ci(x)
    assert r["mean"] == pytest.approx(np.mean(x), rel=1e-12, abs=1e-12)
    assert r["hi"] - r["mean"] == pytest.approx(_t_half(x), rel=1e-9, abs=1e-9)


def test_mean_ci_known_value_and_level_widens():
    # sd([1, 2, 3]) = 1; with 2 degrees of freedom the t quantile has the closed form (2p - 1) / sqrt(2p(1 - p))
    p = 0.975
    t2 = (2 * p - 1) / math.sqrt(2 * p * (1 - p))                   # 4.30265...
    r = stats.mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["hi"] - 2.0 == pytest.approx(t2 / math.sqrt(3), rel=1e-12)
    assert 2.0 - r["lo"] == pytest.approx(t2 / math.sqrt(3), rel=1e-12)
    widths = [stats.mean_ci([1.0, 2.0, 3.0, 5.0], level)["hi"] for level in (0.5, 0.9, 0.95, 0.99)]
    assert widths == sorted(widths) and len(set(widths)) == 4


@FAST
@given(st.lists(st.one_of(st.floats(min_value=-1e6, max_value=1e6), st.just(float("nan"))), min_size=1, max_size=25))
def test_mean_ci_drops_nans(x):
    r = stats.mean_ci(x)
    fin = [v for v in x if not math.isnan(v)]
    assert r["n"] == len(fin)
    assert r["frac"] == len(fin) / len(x)
    ref = stats.mean_ci(fin) if fin else None
    if not fin:
        assert all(math.isnan(r[k]) for k in ("mean", "lo", "hi"))
        return
    for k in ("mean", "lo", "hi"):                                  # the same as the sample without its NaNs
        assert r[k] == ref[k] or (math.isnan(r[k]) and math.isnan(ref[k])), k


def test_mean_ci_empty_and_single_value():
    r = stats.mean_ci([])
    assert r["n"] == 0 and r["frac"] == 0.0 and all(math.isnan(r[k]) for k in ("mean", "lo", "hi"))
    r = stats.mean_ci([float("nan")] * 3)
    assert r["n"] == 0 and r["frac"] == 0.0 and math.isnan(r["mean"])
    r = stats.mean_ci([0.25, float("nan")])                       # n < 2: a mean, no interval
    assert r["n"] == 1 and r["frac"] == 0.5 and r["mean"] == 0.25
    assert math.isnan(r["lo"]) and math.isnan(r["hi"])


def test_mean_ci_infinite_values_give_the_range():
    r = stats.mean_ci([1.0, 2.0, math.inf, float("nan")])
    assert r["mean"] == math.inf and (r["lo"], r["hi"]) == (1.0, math.inf) and r["n"] == 3
    r = stats.mean_ci([-math.inf, -3.0, 4.0])
    assert r["mean"] == -math.inf and (r["lo"], r["hi"]) == (-math.inf, 4.0)


def test_mean_ci_constant_sample_has_zero_width():
    r = stats.mean_ci([0.3, 0.3, 0.3, 0.3])
    assert r["lo"] == r["hi"] == r["mean"]
    r = stats.mean_ci([0.0, 0.0])
    assert (r["lo"], r["mean"], r["hi"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("scale", [1e-255, 1e-300, 1e-320, 1.0, 1e200])
def test_mean_ci_is_scale_safe(scale):
    """The interval of ``scale * x`` is ``scale`` times that of ``x``: the squares of 1e-255 underflow to 0
    (and of subnormals), so an unscaled standard deviation would collapse the interval to the mean."""
    x = np.array([1.0, 0.0, 0.0, 0.0, 3.0])
    ref = stats.mean_ci(x)
    r = stats.mean_ci(x * scale)
    rel = 1e-9 if scale >= 1e-300 else 1e-3                        # 1e-320 is subnormal: 3-4 digits left
    for k in ("mean", "lo", "hi"):
        assert r[k] == pytest.approx(ref[k] * scale, rel=rel, abs=0), (k, r)
    assert r["lo"] < 0 < r["mean"] < r["hi"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_mean_ci_does_not_overflow_on_finite_samples():
    r = stats.mean_ci([1e308, 1e308])
    assert r["mean"] == 1e308 and r["lo"] == r["hi"] == 1e308
    r = stats.mean_ci([1.7e308, 1.7e308, -1.7e308])
    assert math.isfinite(r["mean"]) and r["lo"] <= r["mean"] <= r["hi"]


# ----------------------------------------------------------------------------- geo_mean_ci
def test_geo_mean_ci_on_log_normal_samples():
    rng = np.random.default_rng(7)
    for mu, sigma in ((0.0, 1.0), (50.0, 20.0), (-600.0, 30.0)):       # ratios around 1, 1e21, 1e-261
        logs = rng.normal(mu, sigma, size=16)
        x = np.exp(logs)
        r = stats.geo_mean_ci(x)
        ref = stats.mean_ci(logs / math.log(10.0))
        assert r["n"] == 16 and r["frac"] == 1.0
        assert r["lo"] <= r["mean"] <= r["hi"]
        # the geometric mean is 10**mean(log10 x) and equals scipy's gmean where x is representable
        assert math.log10(r["mean"]) == pytest.approx(ref["mean"], rel=1e-9, abs=1e-9)
        assert math.log10(r["lo"]) == pytest.approx(ref["lo"], rel=1e-9, abs=1e-9)
        assert math.log10(r["hi"]) == pytest.approx(ref["hi"], rel=1e-9, abs=1e-9)
        if mu == 0.0:
            assert r["mean"] == pytest.approx(sps.gmean(x), rel=1e-9)
            assert r["mean"] < np.mean(x)                           # AM-GM, strict for a non-constant sample


def test_geo_mean_ci_of_powers_of_ten_and_special_values():
    r = stats.geo_mean_ci([1e2, 1e4, 1e6])
    assert r["mean"] == pytest.approx(1e4, rel=1e-12)
    assert r["mean"] ** 2 == pytest.approx(r["lo"] * r["hi"], rel=1e-9)      # symmetric in log space
    r = stats.geo_mean_ci([10.0, np.nan, 1000.0])
    assert r["n"] == 2 and r["frac"] == pytest.approx(2 / 3) and r["mean"] == pytest.approx(100.0)
    r = stats.geo_mean_ci([10.0, math.inf, 100.0])                # an overflowing ratio: infinite mean
    assert r["mean"] == math.inf and r["lo"] == pytest.approx(10.0) and r["hi"] == math.inf
    r = stats.geo_mean_ci([0.0, 1.0, 10.0])                       # a vanished ratio: geometric mean 0
    assert r["mean"] == 0.0 and r["lo"] == 0.0 and r["hi"] == pytest.approx(10.0)


# ----------------------------------------------------------------------------- curve_ci
@FAST
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_curve_ci_shapes_and_bands(T, n, seed):
    v = np.random.default_rng(seed).normal(size=(T, n)) * 10.0 ** np.random.default_rng(seed + 1).integers(-5, 5)
    mean, lo, hi = stats.curve_ci(v)
    assert mean.shape == lo.shape == hi.shape == (T,)
    np.testing.assert_allclose(mean, v.mean(axis=1), rtol=1e-12, atol=0)
    assert np.all(lo <= mean) and np.all(mean <= hi)
    if n == 1:                                                    # one seed: a zero-width band on the curve
        assert np.array_equal(lo, mean) and np.array_equal(hi, mean)
        lo[0] += 1.0                                              # copies, not views of the mean
        assert mean[0] != lo[0]
    else:
        for t in range(T):                                        # each row is mean_ci of that row
            r = stats.mean_ci(v[t])
            assert lo[t] == pytest.approx(r["lo"], rel=1e-9, abs=1e-300)
            assert hi[t] == pytest.approx(r["hi"], rel=1e-9, abs=1e-300)


# ----------------------------------------------------------------------------- rank_correlation
@FAST
@given(st.lists(st.integers(-10**6, 10**6), min_size=3, max_size=20, unique=True),
       st.sampled_from(["increasing", "decreasing"]))
def test_rank_correlation_of_monotone_data_is_plus_minus_one(x, direction):
    x = np.asarray(x, dtype=np.float64)
    y = np.exp(x / 1e6) if direction == "increasing" else -x ** 3     # monotone, not linear
    r = stats.rank_correlation(x, y)
    assert r["n_points"] == len(x)
    assert r["spearman_rho"] == pytest.approx(1.0 if direction == "increasing" else -1.0, abs=1e-12)
    assert 0.0 <= r["p_value"] <= 1.0


def test_rank_correlation_needs_three_finite_points_and_two_sides_that_vary():
    r = stats.rank_correlation([1.0, 2.0, np.inf, 4.0], [1.0, 2.0, 3.0, np.nan])
    assert r["n_points"] == 2 and math.isnan(r["spearman_rho"]) and math.isnan(r["p_value"])
    r = stats.rank_correlation([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])     # a constant side: no correlation
    assert r["n_points"] == 3 and math.isnan(r["spearman_rho"])
    r = stats.rank_correlation([3.0, 1.0, 2.0, np.nan, 5.0], [30.0, 10.0, 20.0, 0.0, 50.0])
    assert r["n_points"] == 4 and r["spearman_rho"] == pytest.approx(1.0)
    r = stats.rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])            # one swap: rho = 1 - 6*2/(4*15)
    assert r["spearman_rho"] == pytest.approx(0.8)


# ----------------------------------------------------------------------------- pow10, clip
def test_pow10_overflows_to_inf_and_underflows_to_zero():
    assert stats.pow10(2.0) == 100.0 and stats.pow10(-3.0) == pytest.approx(1e-3)
    assert stats.pow10(308.0) == pytest.approx(1e308)
    assert stats.pow10(400.0) == math.inf and stats.pow10(math.inf) == math.inf
    assert stats.pow10(-400.0) == 0.0 and stats.pow10(-math.inf) == 0.0
    assert math.isnan(stats.pow10(float("nan")))
    assert isinstance(stats.pow10(1.0), float)


def test_clip():
    assert stats.clip(0.5, 0.0, 1.0) == 0.5
    assert stats.clip(-0.2, 0.0, 1.0) == 0.0 and stats.clip(1.2, 0.0, 1.0) == 1.0
    assert stats.clip(math.inf, 0.0, 1.0) == 1.0 and stats.clip(-math.inf, -1.0, 1.0) == -1.0
    assert math.isnan(stats.clip(float("nan"), 0.0, 1.0))
