"""The book's one plotting style: sizes, fonts, and one colour per loss, so every chapter looks alike.

Chapters call :func:`use_style` (done by :func:`prefdyn.chapters.start`) and pick colours with
:func:`loss_color` and names with ``LOSS_LABELS``. Colours come from the colour-blind-safe Okabe-Ito
palette plus a few tints for the less common variants.
"""

from __future__ import annotations

import math

import matplotlib

FIGSIZE = (6.4, 4.0)          # one panel
FIGSIZE_WIDE = (10.0, 4.0)    # a row of panels
PANEL = (3.2, 2.7)            # one small multiple
DPI = 110

# One colour per loss / method, used in every chapter.
LOSS_COLORS = {
    "dpo": "#0072B2",
    "flex_dpo": "#56B4E9",
    "sft_dpo": "#009E73",
    "ipo": "#E69F00",
    "slic": "#D55E00",
    "dpop": "#CC79A7",
    "nbdpo": "#7F3C8D",
    "nbdpo_sym": "#B07AA1",
    "nbdpo_v2": "#8C564B",
    "bdpo": "#000000",
    "reward_model": "#999999",
    "rlhf_exact": "#4D4D4D",
    "rlhf_ppo": "#A6761D",
    "sft": "#66A61E",
}
LOSS_LABELS = {
    "dpo": "DPO",
    "flex_dpo": "flex-β DPO",
    "sft_dpo": "SFT-DPO",
    "ipo": "IPO",
    "slic": "SLiC",
    "dpop": "DPOP",
    "nbdpo": "nbDPO",
    "nbdpo_sym": "nbDPO (sym.)",
    "nbdpo_v2": "nbDPO v2",
    "bdpo": "bDPO",
    "reward_model": "reward model",
    "rlhf_exact": "RLHF (exact)",
    "rlhf_ppo": "RLHF (PPO)",
    "sft": "SFT",
}
# Roles inside one run (chosen / rejected / unseen responses), used by the toy and LLM chapters.
ROLE_COLORS = {"chosen": "#009E73", "rejected": "#D55E00", "unseen": "#7F7F7F", "other": "#56B4E9"}

_EXTRA = ["#1B9E77", "#E7298A", "#66A61E", "#E6AB02", "#A6761D", "#1F78B4", "#B2DF8A", "#FB9A99"]

STYLE = {
    "figure.figsize": FIGSIZE,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.constrained_layout.use": True,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "image.cmap": "viridis",
    "svg.hashsalt": "prefdyn",   # deterministic SVG ids
}


def use_style() -> None:
    """Apply the book's matplotlib style (idempotent)."""
    matplotlib.rcParams.update(STYLE)


def loss_color(name: str) -> str:
    """The colour of loss/method ``name``; unknown names get a stable colour from a spare palette."""
    if name in LOSS_COLORS:
        return LOSS_COLORS[name]
    return _EXTRA[sum(map(ord, name)) % len(_EXTRA)]


def loss_label(name: str) -> str:
    """The display name of loss/method ``name`` (the name itself if it has none)."""
    return LOSS_LABELS.get(name, name)


def small_multiples(n: int, ncols: int = 3, sharex: bool = True, sharey: bool = True, panel=PANEL, **kwargs):
    """A grid of ``n`` panels (``ncols`` per row); unused trailing axes are hidden.

    Returns ``(fig, axes)`` with ``axes`` a flat list of the ``n`` visible axes.
    """
    import matplotlib.pyplot as plt

    if n < 1:
        raise ValueError("small_multiples: n must be >= 1")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows),
                             sharex=sharex, sharey=sharey, squeeze=False, **kwargs)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]
