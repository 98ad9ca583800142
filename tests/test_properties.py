"""Property tests (hypothesis): statements that hold for every input of a class, checked on drawn inputs.

- the batched toy trainer does not care in which order the members are stacked;
- 000 Corollary 1 for DPO: |dl/dpi-| / |dl/dpi+| = pi+/pi- at any log-probabilities and beta;
- every interval of :func:`prefdyn.records.summarise` contains its mean;
- every chapter parameter survives the trip value -> command line text -> value
  (:func:`prefdyn.chapters.params.format_value`, :meth:`Param.coerce`).

Each example is cheap (tiny runs, float64 on the CPU) and the example counts are modest.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefdyn import losses as L
from prefdyn import records, toy
from prefdyn.chapters.catalog import CHAPTERS
from prefdyn.chapters.params import Param, format_value

F64 = dict(dtype=torch.float64, device="cpu", progress=False)


def fast(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None)


# ----------------------------------------------------------------------------- (a) member permutations
@fast(8)
@given(st.permutations([1, 2, 3, 8]), st.sampled_from(["dpo", "ipo", "slic", "bdpo", "nbdpo"]))
def test_member_order_does_not_matter(order, loss):
    """Training seeds in any order gives each seed the same records (members never interact)."""
    configs = [{"loss": loss}, {"loss": "dpo", "loss_params": {"beta": 0.3}, "init": "s2"}]
    kw = dict(steps=4, sft_steps=6, hidden=8, pairs_per_prompt=2, **F64)
    ref = toy.run_grid(configs, [1, 2, 3, 8], **kw)
    perm = toy.run_grid(configs, list(order), **kw)
    for ci in range(len(configs)):
        for seed in (1, 2, 3, 8):
            a = int(np.flatnonzero((ref.member_seed == seed) & (ref.member_config == ci))[0])
            b = int(np.flatnonzero((perm.member_seed == seed) & (perm.member_config == ci))[0])
            for name in records.RECORDS:
                np.testing.assert_allclose(perm.records[name][:, b], ref.records[name][:, a], rtol=1e-10,
                                           atol=1e-13, err_msg=f"{loss} config {ci} seed {seed} {name}")
            np.testing.assert_allclose(perm.policy.flat()[b].numpy(), ref.policy.flat()[a].numpy(), rtol=0,
                                       atol=1e-12)
    # the property is not vacuous: different seeds do differ
    assert not np.allclose(ref.records["chosen"][:, 0], ref.records["chosen"][:, 1])


# ----------------------------------------------------------------------------- (b) Corollary 1
logps = st.floats(min_value=-30.0, max_value=-1e-6)


@fast(150)
@given(st.lists(st.tuples(logps, logps, logps, logps), min_size=1, max_size=8),
       st.floats(min_value=1e-3, max_value=5.0))
def test_dpo_gradient_ratio_is_corollary_1(rows, beta):
    """000 Corollary 1: for DPO, |dl/dpi-| / |dl/dpi+| = pi+/pi-, with dl/dpi = (dl/dlog pi) / pi; and
    DPO raises pi+ and lowers pi- (dl/dpi+ < 0 < dl/dpi-). |beta h| <= 5 * 60 keeps sigmoid(-beta h) away
    from float64's underflow, where both gradients are exactly 0."""
    lp_c, lp_r, ref_c, ref_r = (torch.tensor(c, dtype=torch.float64) for c in zip(*rows))
    gc, gr = L.logprob_grads("dpo", lp_c, lp_r, ref_c, ref_r, beta=beta)
    pc, pr = lp_c.exp(), lp_r.exp()
    dpi_c, dpi_r = gc / pc, gr / pr
    assert bool((dpi_c < 0).all()) and bool((dpi_r > 0).all())
    torch.testing.assert_close(dpi_r.abs() / dpi_c.abs(), pc / pr, rtol=1e-9, atol=0)
    # and the size: |dl/dlog pi| = beta * sigmoid(-beta h) on both sides
    h = (lp_c - ref_c) - (lp_r - ref_r)
    torch.testing.assert_close(gr, beta * torch.sigmoid(-beta * h), rtol=1e-9, atol=0)


@fast(60)
@given(st.tuples(logps, logps, logps, logps), st.floats(min_value=1e-2, max_value=2.0),
       st.floats(min_value=1e-2, max_value=2.0))
def test_flex_dpo_gradient_ratio_scales_corollary_1_by_the_betas(row, b_plus, b_minus):
    """Flex-beta DPO (000 App. B.2.1): the ratio of Corollary 1 times beta-/beta+ (why a small beta- eases
    the drastic drop)."""
    lp_c, lp_r, ref_c, ref_r = (torch.tensor([v], dtype=torch.float64) for v in row)
    gc, gr = L.logprob_grads("flex_dpo", lp_c, lp_r, ref_c, ref_r, beta_chosen=b_plus, beta_rejected=b_minus)
    ratio = (gr.abs() / lp_r.exp()) / (gc.abs() / lp_c.exp())
    torch.testing.assert_close(ratio, (b_minus / b_plus) * lp_c.exp() / lp_r.exp(), rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------- (c) summaries
@fast(10)
@given(st.sampled_from(list(L.LOSS_NAMES)), st.integers(2, 4), st.integers(1, 8), st.integers(0, 50))
def test_every_summary_interval_contains_its_mean(loss, n_seeds, steps, first_seed):
    run = toy.train(loss, seeds=list(range(first_seed, first_seed + n_seeds)), steps=steps, sft_steps=5,
                    hidden=8, device="cpu", progress=False)
    s = records.summarise(run)[loss]
    assert set(s) == set(records.INDICATORS)
    for k, r in s.items():
        assert r["n"] <= n_seeds and r["frac"] == r["n"] / n_seeds, k
        assert math.isnan(r["lo"]) == math.isnan(r["hi"]), (k, r)
        if r["n"] >= 2 and not math.isnan(r["mean"]):
            assert r["lo"] <= r["mean"] <= r["hi"], (k, r)
        if k in records.BOUNDS and not math.isnan(r["lo"]):
            lo, hi = records.BOUNDS[k]
            assert lo <= r["lo"] and r["hi"] <= hi, (k, r)


# ----------------------------------------------------------------------------- (d) chapter parameters
def _number(p: Param, integer: bool):
    if integer:
        lo = None if p.low is None else math.ceil(p.low) + int(p.low_open and float(p.low).is_integer())
        hi = None if p.high is None else math.floor(p.high) - int(p.high_open and float(p.high).is_integer())
        return st.integers(min_value=lo, max_value=hi)
    return st.floats(min_value=p.low, max_value=p.high, exclude_min=p.low_open and p.low is not None,
                     exclude_max=p.high_open and p.high is not None, allow_nan=False, allow_infinity=False)


def _item(p: Param):
    t = p.item_type
    if t == "bool":
        return st.booleans()
    if t in ("int", "float"):
        return _number(p, t == "int")
    if p.choices is not None:
        return st.sampled_from(p.choices)
    # a free string that the command line can hold: no surrounding spaces, no list separator
    return st.text(st.characters(categories=("L", "N"), include_characters="_-."), min_size=1, max_size=12)


def value_of(p: Param):
    """Valid values of ``p``: its type, its bounds (open or closed), its choices, its least list length."""
    item = _item(p)
    if p.type.startswith("list["):
        return st.lists(item, min_size=max(1, p.min_len), max_size=6)
    return item


ALL_PARAMS = [(c.id, p) for c in CHAPTERS.values() for p in c.params]


def _same(a, b) -> bool:
    """Equal values of the same type; floats bit for bit (so -0.0 is not 0.0)."""
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is not type(b):
        return False
    return a.hex() == b.hex() if isinstance(a, float) else a == b


@fast(40)
@pytest.mark.parametrize("chapter,p", ALL_PARAMS, ids=[f"{c}.{p.name}" for c, p in ALL_PARAMS])
@given(data=st.data())
def test_chapter_parameter_values_survive_the_command_line(chapter, p, data):
    v = data.draw(value_of(p), label=p.name)
    v = p.coerce(v, chapter=chapter)                                   # a valid value of the right type
    text = format_value(v)
    assert "\n" not in text and text == text.strip()
    back = p.coerce(text, chapter=chapter)
    assert _same(back, v), (text, v, back)
    assert p.coerce(p.default_text()) == p.default


@fast(400)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_value_prints_every_float_exactly(x):
    text = format_value(x)
    assert float(text).hex() == x.hex(), text
    assert "," not in text and " " not in text                         # safe inside a comma-separated list
    short = f"{x:g}"
    if float(short) == x:                                               # the short form whenever it is exact
        assert text == short


def test_format_value_examples():
    assert format_value(0.1) == "0.1" and format_value(1e-12) == "1e-12" and format_value(100.0) == "100"
    assert format_value(0.1234567) == "0.1234567"                      # %g would print 0.123457
    assert format_value(1 / 3) == repr(1 / 3) and format_value(2.0 ** 60) == repr(2.0 ** 60)
    tiny = -2.2250738585072014e-308                                    # the smallest normal, negated
    assert float(format_value(5e-324)) == 5e-324 and float(format_value(tiny)) == tiny
    assert format_value([0.1, 1e-300, 123456789.0]) == "0.1,1e-300,123456789.0"
    assert format_value(True) == "true" and format_value([1, 2]) == "1,2" and format_value("rk4") == "rk4"
