"""Small shared pieces: progress bars stay out of chapters, the plotting style module."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest

from prefdyn import plotting, progress


def test_progress_is_silent_when_asked(monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.enabled()
    assert progress.bar(range(3)).disable
    assert list(progress.bar(range(3))) == [0, 1, 2]
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled() and not progress.bar(range(3)).disable


def test_progress_follows_the_terminal_when_unset(monkeypatch):
    import io
    import sys

    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.enabled()


#: The methods the book draws besides its losses (reward model, RLHF, SFT): they need colours of their own.
BOOK_METHODS = ("nbdpo_sym", "reward_model", "rlhf_exact", "rlhf_ppo", "sft")


def test_every_loss_and_method_has_its_own_colour_and_label():
    import re

    from matplotlib.colors import is_color_like, to_rgb

    from prefdyn.losses import LOSS_NAMES

    names = list(LOSS_NAMES) + list(BOOK_METHODS)
    colours = [plotting.loss_color(n) for n in names]
    for name, c in zip(names, colours):
        assert name in plotting.LOSS_COLORS and name in plotting.LOSS_LABELS, name
        assert re.fullmatch(r"#[0-9A-Fa-f]{6}", c) and is_color_like(c), (name, c)
    # distinct as colours, not only as strings ("#0072b2" and "#0072B2" are one colour)
    assert len({to_rgb(c) for c in colours}) == len(names)
    labels = [plotting.loss_label(n) for n in names]
    assert len(set(labels)) == len(labels) and all(labels)
    assert plotting.loss_label("dpo") == "DPO" and plotting.loss_color("dpo") == "#0072B2"
    assert plotting.loss_label("unknown") == "unknown"


def test_unknown_names_take_a_spare_colour_deterministically():
    """A loss of one's own (prefdyn.losses.register) gets a colour from the spare palette, the same in
    every process: it must not depend on Python's per-process string hashing."""
    import json
    import os
    import subprocess
    import sys

    names = ["hinge", "my_loss", "something-else", "x"]
    colours = [plotting.loss_color(n) for n in names]
    assert all(c in plotting._EXTRA for c in colours)
    # hard-coded: sum of the code points of "hinge" = 523, 523 % 8 = 3
    assert plotting.loss_color("hinge") == "#E6AB02"
    code = f"import json; from prefdyn import plotting; print(json.dumps([plotting.loss_color(n) for n in {names!r}]))"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert json.loads(out.stdout) == colours


def test_spare_colours_differ_from_the_book_colours():
    from matplotlib.colors import to_rgb

    book = {to_rgb(c) for c in plotting.LOSS_COLORS.values()}
    assert not book & {to_rgb(c) for c in plotting._EXTRA}


def test_small_multiples_hides_unused_panels():
    plotting.use_style()
    fig, axes = plotting.small_multiples(5, ncols=3)
    assert len(axes) == 5 and len(fig.axes) == 6
    assert sum(ax.get_visible() for ax in fig.axes) == 5
    with pytest.raises(ValueError):
        plotting.small_multiples(0)


def test_site_extension_drops_duplicate_and_thebe_scripts():
    from sphinx.builders.html._assets import _JavaScript

    from prefdyn.sitebuild import clean_scripts

    toggle = "var togglebuttonSelector = '.toggle';"
    scripts = [_JavaScript("_static/doctools.js"), _JavaScript(None, body=toggle),
               _JavaScript("", body=toggle),                                   # the duplicate Sphinx writes
               _JavaScript(None, body='const THEBE_JS_URL = "https://unpkg.com/thebe"'),
               _JavaScript("_static/sphinx-thebe.js", **{"async": "async"}), _JavaScript("_static/doctools.js")]
    kept = clean_scripts(scripts)
    assert [(js.filename, js.attributes.get("body")) for js in kept] == [("_static/doctools.js", None), (None, toggle)]
