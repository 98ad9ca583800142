"""The toy trainer's written-out backward pass (:meth:`prefdyn.toy.BatchedPolicy.logits_and_vjp`) against
autograd, and its buffered records against the same run recorded step by step."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from prefdyn import losses as L
from prefdyn import toy

train_mod = importlib.import_module("prefdyn.toy.train")


def _moved(pol):
    """Move the policy off its initialisation (any weights must work)."""
    with torch.no_grad():
        for i, p in enumerate(pol.param_list()):
            p.mul_(1.5).add_(0.03 * (i + 1))
    return pol


def _autograd(pol, g):
    params = pol.param_list()
    z = pol.forward()
    return z.detach(), torch.autograd.grad(z, params, g)


@pytest.mark.parametrize("activation,depth", [("relu", 2), ("tanh", 2), ("gelu", 2), ("silu", 2), ("linear", 2),
                                              ("relu", 1), ("tanh", 3), ("linear", 4)])
def test_mlp_vjp_is_autograd(activation, depth):
    spec = toy.ToySpec()
    pol = _moved(toy.MLPPolicy(spec, [1, 4, 6], hidden=12, activation=activation, depth=depth, device="cpu",
                               dtype=torch.float64))
    g = torch.randn(3, spec.n_prompts, spec.n_responses, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z_ref, grads_ref = _autograd(pol, g)
    work = {}
    for _ in range(2):                                              # the second call reuses the buffers
        out = [torch.full_like(p, float("nan")).detach() for p in pol.param_list()]
        for use_work, use_out in ((False, False), (True, True), (True, False)):
            z, vjp = pol.logits_and_vjp(work if use_work else None)
            torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-14)
            grads = vjp(g, out=out if use_out else None)
            assert len(grads) == len(grads_ref)
            for a, b, p in zip(grads, grads_ref, pol.param_list()):
                assert a.shape == p.shape
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
            if use_out:                                             # written into the given tensors
                assert all(a.data_ptr() == o.data_ptr() for a, o in zip(grads, out))
    hidden = {f"{k}{i}" for i in range(1, depth + 1) for k in ("a", "h", "g_h")}
    assert hidden | {"z"} | {f"g_a{i}" for i in range(2, depth + 1)} <= set(work)
    assert len(grads) == 2 * depth + 2 and pol.output_layer == (f"W{depth + 1}", f"b{depth + 1}")


def test_mlp_depth_and_init_scale():
    """depth = number of hidden layers (the paper's network is depth 2); init_scale multiplies every
    initial bound, so the same seeds give the same weights times the factor; bad values are refused."""
    spec = toy.ToySpec()
    shapes = {n: s for n, s, _ in toy.MLPPolicy(spec, [0], hidden=5, depth=3, device="cpu").layout}
    assert shapes == {"W1": (4, 5), "b1": (1, 5), "W2": (5, 5), "b2": (1, 5), "W3": (5, 5), "b3": (1, 5),
                      "W4": (5, 10), "b4": (1, 10)}
    a = toy.MLPPolicy(spec, [3, 5], hidden=7, device="cpu", dtype=torch.float64)
    b = toy.MLPPolicy(spec, [3, 5], hidden=7, init_scale=0.25, device="cpu", dtype=torch.float64)
    torch.testing.assert_close(b.flat(), 0.25 * a.flat(), rtol=1e-15, atol=0)
    for kw, msg in (({"depth": 0}, "depth"), ({"init_scale": 0.0}, "init_scale"), ({"activation": "elu"}, "activation")):
        with pytest.raises(ValueError, match=msg):
            toy.MLPPolicy(spec, [0], **kw)


def test_fixed_pairs_reuse_the_step_zero_draw():
    """pairs="fixed" trains on one set of pairs (the step-0 draw of "fresh"); "fresh" draws new ones."""
    kw = dict(steps=6, hidden=6, sft_steps=5, progress=False, device="cpu", dtype=torch.float64)
    cfg = [toy.ToyConfig("dpo", {"beta": 0.5})]
    fixed = toy.run_grid(cfg, 2, pairs="fixed", **kw)
    fresh = toy.run_grid(cfg, 2, pairs="fresh", **kw)
    # the pairs' losses differ from step 1 on (fresh pairs), never at step 0 (same draw, same policy)
    np.testing.assert_array_equal(fixed.records["loss"][0], fresh.records["loss"][0])
    assert not np.allclose(fixed.records["loss"][1:], fresh.records["loss"][1:])
    assert fixed.settings["pairs"] == "fixed"
    with pytest.raises(ValueError, match="pairs"):
        toy.run_grid(cfg, 2, pairs="shuffled", **kw)


def test_tabular_and_default_vjp_are_autograd():
    spec = toy.ToySpec()
    g = torch.randn(2, spec.n_prompts, spec.n_responses, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tab = _moved(toy.TabularPolicy(spec, 2, device="cpu", dtype=torch.float64))
    mlp = _moved(toy.MLPPolicy(spec, [3, 8], hidden=6, activation="tanh", device="cpu", dtype=torch.float64))
    for pol, method in ((tab, tab.logits_and_vjp), (mlp, lambda w=None: toy.BatchedPolicy.logits_and_vjp(mlp, w))):
        z_ref, grads_ref = _autograd(pol, g)
        z, vjp = method()
        assert not z.requires_grad
        torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
        for a, b in zip(vjp(g), grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("policy", ["mlp", "tabular"])
def test_buffered_records_equal_step_by_step_records(policy):
    """Records flushed a few steps at a time across sampling chunks (odd sizes) equal records flushed
    at every step, with record_every > 1 and the probabilities recorded."""
    spec = toy.ToySpec()
    pol = toy.make_policy(policy, spec, torch.tensor([2, 7, 9]), hidden=8, device="cpu", dtype=torch.float64)
    toy.sft(pol, toy.initial_distribution(spec), steps=20)
    loss = L.get("dpo")
    groups = [(slice(0, 3), loss, loss.check(beta=0.3))]
    out = []
    for chunk, record_chunk in ((256, 1), (3, 2), (2, 64)):
        p = pol.clone()
        out.append(train_mod._preference_train(p, groups, steps=11, lr=1e-2, optimizer="adam", pairs_per_prompt=3,
                                               record_every=3, record_probs=True, progress=False, chunk=chunk,
                                               record_chunk=record_chunk) + (p.flat(),))
    (rec0, steps0, probs0, flat0) = out[0]
    assert list(steps0) == [0, 3, 6, 9, 11]
    for rec, steps, probs, flat in out[1:]:
        assert list(steps) == list(steps0)
        for k in rec0:                                              # row by row; batch sizes may round apart
            np.testing.assert_allclose(rec[k], rec0[k], rtol=1e-13, atol=0, err_msg=k)
        np.testing.assert_array_equal(probs, probs0)
        torch.testing.assert_close(flat, flat0, rtol=0, atol=0)
    assert np.isfinite(rec0["log_grad_rejected"]).all() and (np.diff(rec0["chosen"], axis=0) != 0).any()
