"""Any loss plugs in: a loss written by a reader (here a hinge on the DPO margin), passed as a function or
registered by name, trains in the toy, is summarised, drawn and differentiated like the book's own, and
its bad parameters are refused before any training."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from prefdyn import fields, plotting, records, toy
from prefdyn import losses as L

KW = dict(steps=20, sft_steps=20, hidden=8, device="cpu", progress=False)


def hinge(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, margin=1.0):
    """A hinge on the DPO margin h = (logp+ - ref+) - (logp- - ref-): max(0, margin - h)."""
    return torch.relu(margin - ((logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)))


@pytest.fixture
def registered():
    """``hinge`` registered as "hinge_test" for one test; the registry is left as it was found."""
    assert "hinge_test" not in L.LOSSES
    loss = L.register("hinge_test", hinge, source="tests/test_plugin_loss.py")
    try:
        yield loss
    finally:
        for name in ("hinge_test", "hinge_test2"):
            if name in L.LOSSES:
                dict.__delitem__(L.LOSSES, name)


# ----------------------------------------------------------------------------- (a) a function trains
def test_a_loss_function_trains_is_summarised_and_drawn():
    run = toy.train(hinge, seeds=2, **KW)
    assert [c.label() for c in run.configs] == ["hinge"]
    rc = run.records
    for name in records.RECORDS:
        assert np.all(np.isfinite(rc[name])), name
    # the hinge is active at the start (h = 0 < margin): loss 1, gradients -1 and +1 on the log-probs
    np.testing.assert_allclose(rc["loss"][0], 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rc["dlogp_chosen"][0], -1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rc["dlogp_rejected"][0], 1.0, rtol=0, atol=1e-6)
    # it trains: the loss falls and pi(chosen)/pi(rejected) rises in every seed
    assert np.all(rc["loss"][-1] < rc["loss"][0] - 0.01)
    margin = rc["log_chosen"] - rc["log_rejected"]
    assert np.all(margin[-1] > margin[0] + 0.01)
    s = records.summarise(run)
    assert list(s) == ["hinge"] and set(s["hinge"]) == set(records.INDICATORS)
    assert s["hinge"]["final_chosen_prob"]["mean"] == pytest.approx(rc["chosen"][-1].mean())
    fig, axes = plt.subplots(1, 2)
    try:
        plotting.plot_roles(axes[0], run, "hinge", ("chosen", "rejected"))
        line = plotting.plot_band(axes[1], run.steps, run.record("loss", "hinge"), label=plotting.loss_label("hinge"),
                                  color=plotting.loss_color("hinge"))
        assert len(axes[0].lines) == 2 and len(axes[0].collections) == 2         # two curves, two bands
        assert line.get_label() == "hinge"
        assert matplotlib.colors.same_color(line.get_color(), plotting.loss_color("hinge"))
        np.testing.assert_allclose(line.get_ydata(), rc["loss"].mean(axis=1))
        assert len(axes[1].collections) == 1
    finally:
        plt.close(fig)


def test_a_loss_function_with_parameters_in_a_grid():
    """A callable loss with its own parameter next to DPO in one grid: each configuration trains as it
    would alone, and two margins side by side are one merged group whose margin is a per-member tensor."""
    kw = dict(KW, steps=8, dtype=torch.float64)
    configs = [toy.ToyConfig(loss="dpo"), toy.ToyConfig(loss=hinge, loss_params={"margin": 2.0}),
               toy.ToyConfig(loss=hinge, loss_params={"margin": 0.05})]
    run = toy.run_grid(configs, [0, 1], **kw)
    assert [c.label() for c in run.configs] == ["dpo", "hinge(margin=2)", "hinge(margin=0.05)"]
    s = records.summarise(run)
    assert list(s) == ["dpo", "hinge(margin=2)", "hinge(margin=0.05)"]
    for cfg in configs:
        alone = toy.run_grid([cfg], [0, 1], **kw)
        mine = run.members_of(cfg.label())
        for name in ("chosen", "rejected", "loss", "dlogp_chosen", "grad_rejected"):
            np.testing.assert_allclose(run.records[name][:, mine], alone.records[name], rtol=1e-10, atol=1e-13,
                                       err_msg=f"{cfg.label()} {name}")
    # the margin is really used: at the start the loss is the margin (h = 0), and the two hinges differ
    np.testing.assert_allclose(run.record("loss", "hinge(margin=2)")[0], 2.0, atol=1e-12)
    np.testing.assert_allclose(run.record("loss", "hinge(margin=0.05)")[0], 0.05, atol=1e-12)
    assert not np.allclose(run.record("chosen", 1), run.record("chosen", 2))


# ----------------------------------------------------------------------------- (c) a registered name works everywhere
def test_a_registered_loss_works_by_name(registered):
    assert registered.name == "hinge_test" and L.get("hinge_test") is registered
    assert "hinge_test" in L.names() and L.names()[: len(L.LOSS_NAMES)] == L.LOSS_NAMES
    assert "hinge_test" not in L.LOSS_NAMES                       # the book's losses stay the book's
    assert L.LOSS_DEFAULTS["hinge_test"] == {"margin": 1.0}
    assert L.LOSS_SOURCES["hinge_test"] == "tests/test_plugin_loss.py"
    # the toy trainer, by name; its label is the name
    run = toy.train("hinge_test", {"margin": 1.5}, seeds=2, **dict(KW, steps=5))
    assert list(records.summarise(run)) == ["hinge_test"]
    np.testing.assert_allclose(run.records["loss"][0], 1.5, atol=1e-6)
    # pair_loss and logprob_grads, on both sides of the hinge's kink
    lp_c = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    lp_r = torch.tensor([-1.0, -4.0], dtype=torch.float64)
    ref = torch.tensor(-2.0, dtype=torch.float64)
    torch.testing.assert_close(L.pair_loss("hinge_test", lp_c, lp_r, ref, ref),
                               torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(L.pair_loss("hinge_test", lp_c, lp_r, ref, ref, margin=4.0),
                               torch.tensor([4.0, 1.0], dtype=torch.float64))
    gc, gr = L.logprob_grads("hinge_test", lp_c, lp_r, ref, ref)
    torch.testing.assert_close(gc, torch.tensor([-1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(gr, torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="hinge_test: parameter 'margin'"):
        L.pair_loss("hinge_test", lp_c, lp_r, ref, ref, margin=math.inf)
    # the mapping from a chapter's parameters reads the registered loss's own name
    assert L.loss_params_from({"margin": 3.0, "beta": 0.2}, ["hinge_test", "dpo"]) == {
        "hinge_test": {"margin": 3.0}, "dpo": {"beta": 0.2}}
    # LOSSES[name] = fn registers too; replacing a user's loss is allowed there
    L.LOSSES["hinge_test2"] = hinge
    assert L.get("hinge_test2").fn is hinge
    L.LOSSES["hinge_test2"] = lambda a, b, c, d, *, k=2.0: torch.zeros(())
    assert L.LOSS_DEFAULTS["hinge_test2"] == {"k": 2.0}


def test_the_registry_is_clean_after_a_registering_test():
    assert "hinge_test" not in L.LOSSES and "hinge_test2" not in L.LOSSES
    assert all(L.LOSSES[n].builtin for n in L.LOSS_NAMES)


def test_a_registered_loss_has_a_field(registered):
    """register() makes a loss work in the fields too: its landscape and gradient field in probability
    coordinates are the hinge's, max(0, m - log(pi+/pi-)) with dl/dpi+ = -1/pi+, dl/dpi- = 1/pi- where the
    hinge is active and 0 where it is not."""
    assert "hinge_test" in fields.field_losses()
    f = fields.field_grid("hinge_test", n=9, coords="prob", margin=0.5)
    assert f.loss == "hinge_test" and f.params == {"margin": 0.5}
    pc, pr = torch.meshgrid(f.chosen, f.rejected, indexing="xy")           # [i_rejected, j_chosen]
    h = pc.log() - pr.log()
    active = h < 0.5
    assert bool(active.any()) and bool((~active).any())
    torch.testing.assert_close(f.value, torch.relu(0.5 - h), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.grad_chosen, torch.where(active, -1.0 / pc, torch.zeros_like(pc)), rtol=1e-12, atol=0)
    torch.testing.assert_close(f.grad_rejected, torch.where(active, 1.0 / pr, torch.zeros_like(pr)), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="margin"):
        fields.field_grid("hinge_test", n=5, margin=float("nan"))


def test_a_registered_loss_has_a_flow(registered):
    """A gradient flow of the registered hinge in the box: starts where the hinge is active move towards
    a larger pi+ and a smaller pi-; the start already past the margin (0.45/0.05 = 9 > e) never moves."""
    starts = fields.corner_starts()                        # (low, low), (low, high), (high, low), (high, high)
    flow = fields.gradient_flow("hinge_test", starts, space="box", n_steps=3, lr=1e-3)
    assert flow.loss == "hinge_test" and flow.probs.shape == (4, 4, 2)
    assert bool(torch.isfinite(flow.loss_path).all())
    moved = flow.probs[-1] - flow.probs[0]
    still = 2                                                              # (0.45, 0.05): log 9 > margin 1
    assert float(moved[still].abs().max()) == 0.0
    for i in (0, 1, 3):
        assert float(moved[i, 0]) > 0 and float(moved[i, 1]) < 0, (i, moved[i])
        assert float(flow.loss_path[-1, i]) < float(flow.loss_path[0, i])


# ----------------------------------------------------------------------------- (d) what register refuses
def test_register_refuses_builtin_names_and_silent_replacement(registered):
    for name in L.LOSS_NAMES:
        with pytest.raises(ValueError, match=f"loss '{name}' is already registered"):
            L.register(name, hinge)
        with pytest.raises(ValueError, match="already registered"):
            L.register(name, hinge, replace=True)
        with pytest.raises(ValueError, match="already registered"):
            L.LOSSES[name] = hinge
    assert L.get("dpo").fn is L.LOSSES["dpo"].fn and L.get("dpo").builtin
    with pytest.raises(ValueError, match=r"pass replace=True"):
        L.register("hinge_test", hinge)
    assert L.register("hinge_test", hinge, params={"margin": 0.5}, replace=True).defaults == {"margin": 0.5}
    for bad in ("", "has space", "1abc", None):
        with pytest.raises(ValueError, match="Python identifier"):
            L.register(bad, hinge)
    with pytest.raises(ValueError, match="callable"):
        L.register("hinge_test3", 3.0)
    assert "hinge_test3" not in L.LOSSES


def test_extra_parameters_need_number_or_bool_defaults():
    def no_default(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, margin):
        return hinge(logp_chosen, logp_rejected, ref_chosen, ref_rejected, margin=margin)

    def text_default(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, mode="a"):
        return hinge(logp_chosen, logp_rejected, ref_chosen, ref_rejected)

    def too_few(logp_chosen, logp_rejected):
        return logp_chosen - logp_rejected

    for fn, match in ((no_default, "'margin' needs a number or bool default"),
                      (text_default, "'mode' needs a number or bool default"), (too_few, "expected the signature")):
        for call in (lambda: L.register("bad_loss", fn), lambda: L.get(fn),
                     lambda: toy.train(fn, seeds=2, **KW)):
            with pytest.raises(ValueError, match=match) as e:
                call()
            assert "\n" not in str(e.value)
        assert "bad_loss" not in L.LOSSES

    def flagged(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, margin=1, squared=False):
        h = hinge(logp_chosen, logp_rejected, ref_chosen, ref_rejected, margin=margin)
        return h * h if squared else h

    loss = L.get(flagged)
    assert loss.name == "flagged" and loss.defaults == {"margin": 1.0, "squared": False}
    assert type(loss.defaults["margin"]) is float and loss.params["squared"].type == "bool"
    with pytest.raises(ValueError, match="flagged: parameter 'squared' must be True or False"):
        loss.check(squared=1)


# ----------------------------------------------------------------------------- (e) bad parameters, before training
@pytest.mark.parametrize("params,match", [
    ({"margin": float("nan")}, "hinge: parameter 'margin' must be a finite number"),
    ({"margin": math.inf}, "hinge: parameter 'margin' must be a finite number"),
    ({"margin": "2"}, "hinge: parameter 'margin' must be a finite number"),
    ({"margn": 1.0}, "hinge: unknown parameter 'margn'; allowed: margin"),
])
def test_bad_parameters_of_a_loss_function_raise_before_training(monkeypatch, params, match):
    import sys

    T = sys.modules["prefdyn.toy.train"]          # the module (prefdyn.toy.train is also the function)

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the parameters were checked")

    monkeypatch.setattr(T, "make_policy", no_training)
    monkeypatch.setattr(T, "_preference_train", no_training)
    with pytest.raises(ValueError, match=match) as e:
        toy.train(hinge, params, seeds=2, **KW)
    assert "\n" not in str(e.value) and "(config 0)" in str(e.value)
    with pytest.raises(ValueError, match=match.replace("(", r"\(")) as e:
        toy.run_grid([{"loss": "dpo"}, {"loss": hinge, "loss_params": params}], 2, **KW)
    assert "(config 1)" in str(e.value)
    with pytest.raises(ValueError, match=match):
        L.pair_loss(hinge, -1.0, -2.0, -1.5, -1.5, **params)
