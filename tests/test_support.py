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


def test_every_loss_has_a_colour_and_a_label():
    from prefdyn.losses import LOSS_NAMES

    for name in LOSS_NAMES:
        assert name in plotting.LOSS_COLORS and name in plotting.LOSS_LABELS
    assert len(set(plotting.LOSS_COLORS.values())) == len(plotting.LOSS_COLORS)
    assert plotting.loss_color("something-else") == plotting.loss_color("something-else")
    assert plotting.loss_label("unknown") == "unknown"


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
