"""Tests of :mod:`prefdyn.bench`: the batched trainer and the plain loop it is timed against do the same work,
and the numbers the benchmark reports are consistent with each other and with its JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from prefdyn import bench, toy
from prefdyn import losses as L
from prefdyn.toy.train import _preference_train

SMALL = dict(members=4, steps=3, hidden=8, progress=False, device="cpu", threads=1)


def test_bench_small_batched_and_loop_agree_and_report_consistently(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    r = bench.bench(loop_members=2, repeats=3, out=out, **SMALL)
    # the same members trained both ways end at the same probabilities (float32; measured ~6e-7)
    assert 0.0 <= r["max_abs_diff_final_probs"] < 1e-5
    assert (r["members"], r["steps"], r["hidden"], r["loss"], r["device"]) == (4, 3, 8, "dpo", "cpu")
    assert r["torch_threads"] == 1 and r["loop_torch_threads"] == 1 and r["torch"] == torch.__version__
    # timings: positive, the median of the repeats, the loop scaled by members / loop_members
    assert len(r["batched_repeats_s"]) == 3 and all(t > 0 for t in r["batched_repeats_s"])
    assert r["batched_s"] == float(np.median(r["batched_repeats_s"]))
    assert r["loop_members_measured"] == 2 and r["loop_extrapolated"] is True
    assert r["loop_s"] == pytest.approx(r["loop_measured_s"] * 4 / 2, rel=1e-12)
    assert r["ratio"] == pytest.approx(r["loop_s"] / r["batched_s"], rel=1e-12)
    assert r["batched_us_per_member_step"] == pytest.approx(1e6 * r["batched_s"] / (4 * 3), rel=1e-12)
    assert r["loop_us_per_member_step"] == pytest.approx(1e6 * r["loop_s"] / (4 * 3), rel=1e-12)
    # the JSON written is the returned dict, exactly (floats round-trip)
    assert json.loads(out.read_text(encoding="utf-8")) == r


def test_bench_without_loop_members_runs_every_member_in_the_loop():
    r = bench.bench(repeats=1, **SMALL)
    assert r["loop_members_measured"] == 4 and r["loop_extrapolated"] is False
    assert r["loop_s"] == r["loop_measured_s"]
    assert r["max_abs_diff_final_probs"] < 1e-5


def test_bench_reference_loop_is_the_batched_trainer_per_member():
    """The plain loop of the bench (nn.Sequential + torch.optim.Adam, one member at a time) against the
    batched trainer, in float64: the same records at every step and the same final policy, while the
    policy really moves (a loop that never trained would also "agree")."""
    spec = toy.ToySpec()
    pol = toy.make_policy("mlp", spec, torch.tensor([0, 5, 9]), hidden=8, device="cpu", dtype=torch.float64)
    toy.sft(pol, toy.initial_distribution(spec), steps=30)
    loss = L.get("dpo")
    params = loss.check(beta=0.5)
    steps, K = 12, 3
    start = pol.probs().clone()
    batched = pol.clone()
    rec, rec_steps, _ = _preference_train(batched, [(slice(0, 3), loss, params)], steps=steps, lr=1e-2,
                                          optimizer="adam", pairs_per_prompt=K, progress=False)
    assert list(rec_steps) == list(range(steps + 1))
    for m in range(3):
        ref = bench._single_run_reference(pol, m, loss, params, steps, 1e-2, K)
        for k in ("chosen", "rejected", "unseen", "loss", "grad_chosen", "grad_rejected"):
            np.testing.assert_allclose(ref[k].numpy(), rec[k][:, m], rtol=1e-9, atol=1e-12, err_msg=f"{m} {k}")
        np.testing.assert_allclose(ref["final_probs"].numpy(), batched.probs()[m].numpy(), rtol=0, atol=1e-12)
        assert float((ref["final_probs"] - start[m]).abs().max()) > 1e-3


@pytest.mark.parametrize("activation,depth", [("relu", 2), ("tanh", 2), ("gelu", 2), ("silu", 2), ("linear", 2),
                                              ("relu", 1), ("tanh", 3)])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_member_module_is_the_member(activation, depth, dtype, atol):
    spec = toy.ToySpec()
    pol = toy.MLPPolicy(spec, [2, 11, 4, 7], hidden=16, activation=activation, depth=depth, device="cpu", dtype=dtype)
    with torch.no_grad():                                       # move off the init: any current weights work
        for p in pol.param_list():
            p.mul_(1.7).add_(0.05)
    out = pol.forward().detach()
    for m in (0, 2, 3):
        mod = pol.member_module(m)
        assert isinstance(mod, torch.nn.Sequential) and len(mod) == 2 * depth + 1
        assert isinstance(mod[1], toy.ACTIVATIONS[activation][1])
        with torch.no_grad():
            y = mod(torch.eye(spec.n_prompts, dtype=dtype))
        assert y.dtype == dtype and y.shape == (spec.n_prompts, spec.n_responses)
        torch.testing.assert_close(y, out[m], rtol=0, atol=atol)
    # a module is a copy: training it leaves the batched member alone, and members differ
    mod = pol.member_module(1)
    with torch.no_grad():
        mod[0].bias.add_(1.0)
    torch.testing.assert_close(pol.forward().detach(), out, rtol=0, atol=0)
    assert not torch.allclose(out[0], out[1])
    assert math.isfinite(float(out.abs().max()))
