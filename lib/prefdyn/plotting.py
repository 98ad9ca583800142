"""The book's one plotting style and its figure helpers, so every chapter looks alike.

Chapters call :func:`use_style` (done by :func:`prefdyn.chapters.start`) and pick colours with
:func:`loss_color` and names with ``LOSS_LABELS``. Colours come from the colour-blind-safe Okabe-Ito
palette plus a few tints for the less common variants. The toy chapters' figure plumbing is here too:
bands over seeds (:func:`plot_band`), role bars and curves of a run (:func:`plot_role_bars`,
:func:`plot_roles`), the SFT target (:func:`plot_sft_target`) and the phase marks (:func:`mark_steps`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib
import numpy as np

from . import records, stats

if TYPE_CHECKING:
    from .toy.space import ToySpec
    from .toy.train import ToyRun

FIGSIZE = (6.4, 4.0)          # one panel
FIGSIZE_WIDE = (10.0, 4.0)    # a row of panels
PANEL = (3.2, 2.7)            # one small multiple
DPI = 80                      # about the width the site shows (688 px for a 9-inch figure)

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

_EXTRA = ["#1B9E77", "#E7298A", "#E41A1C", "#E6AB02", "#6A3D9A", "#1F78B4", "#B2DF8A", "#FB9A99"]  # none a book colour

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


#: Colours of a figure's PNG in an executed chapter (:func:`palette_png`).
PNG_COLORS = 256


def palette_png(png: bytes) -> bytes:
    """``png`` reduced to a palette of :data:`PNG_COLORS` colours without dithering (same pixel size).
    The chapter runner applies it to every figure of an executed chapter: line plots and colour maps (256
    levels) lose nothing visible, and the file is about a third of the full-colour PNG, which keeps the
    executed notebooks (committed, re-executed by CI) small. Deterministic: the same input gives the same
    bytes. A PNG that is already a palette image is returned unchanged."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png))
    if img.mode == "P":
        return png
    rgb = img.convert("RGBA")
    flat = Image.new("RGB", rgb.size, (255, 255, 255))
    flat.paste(rgb, mask=rgb.getchannel("A"))            # transparent parts on the page's white
    pal = flat.quantize(colors=PNG_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    pal.save(out, format="PNG", optimize=True)
    return out.getvalue()


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


def plot_band(ax, steps, values, *, label=None, color=None, log: bool = False, level: float = 0.95, **kwargs):
    """Plot the mean over seeds of ``values [T, seeds]`` with its ``level`` t-interval as a band;
    ``log=True``: geometric mean and band (``values`` must be > 0), log y-axis."""
    v = np.asarray(values, dtype=np.float64)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            mean, lo, hi = stats.curve_ci(np.log10(v), level)
        with np.errstate(over="ignore"):
            mean, lo, hi = np.power(10.0, mean), np.power(10.0, lo), np.power(10.0, hi)
        ax.set_yscale("log")
    else:
        mean, lo, hi = stats.curve_ci(v, level)
    (line,) = ax.plot(steps, mean, label=label, color=color, **kwargs)
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
    return line


#: Short tick labels of the responses aligned by their role for a prompt (:func:`role_probs` order).
ROLE_TICKS = {"chosen": "a+", "other": "o", "rejected": "r", "unseen": "u"}

#: Legend labels of the roles in the toy figures.
ROLE_LABELS = {"chosen": "π(chosen)", "rejected": "π(one rejected)", "other": "other prompts' optimal",
               "unseen": "unseen (9-10)"}


def role_order(spec: "ToySpec") -> list[str]:
    """The role of each response in :func:`role_probs` order: chosen, other..., rejected..., unseen..."""
    return ["chosen"] + ["other"] * (spec.n_prompts - 1) + ["rejected"] * spec.n_rejected + ["unseen"] * spec.n_unseen


def plot_sft_target(ax, target, spec: "ToySpec", *, colorbar: bool = True):
    """The SFT target ``[P, R]`` as an image: rows prompts, columns responses, boxes on each prompt's
    optimal response, lines between the chosen, rejected and unseen blocks."""
    import matplotlib.pyplot as plt

    t = np.asarray(target, dtype=np.float64)
    im = ax.imshow(t, cmap="Greens", vmin=0, vmax=max(0.2, float(t.max())), aspect="auto")
    ax.set_xticks(range(spec.n_responses), [str(r + 1) for r in range(spec.n_responses)])
    ax.set_yticks(range(spec.n_prompts), [f"prompt {p + 1}" for p in range(spec.n_prompts)])
    for p in range(spec.n_prompts):
        ax.add_patch(plt.Rectangle((p - 0.5, p - 0.5), 1, 1, fill=False, ec="k", lw=1.5))
    for edge in (spec.rejected_block.start, spec.unseen_block.start):
        ax.axvline(edge - 0.5, color="k", lw=0.8)
    ax.set_xlabel("response (1-4 chosen block, 5-8 rejected, 9-10 unseen)")
    ax.grid(False)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.9, label="target π(a|x)")
    return im


def plot_role_bars(ax, run: "ToyRun", config: int | str = 0, when: Sequence[int] = (0, -1),
                   labels: Sequence[str] | None = None, *, ticks: bool | str = True):
    """Bars of :func:`role_probs` at the records ``when`` (side by side; earlier ones paler), coloured by
    role; x ticks a+ (the prompt's optimal), o (other prompts' optimal), r (rejected), u (unseen): one per
    bar, or ``ticks="groups"`` one per role (for narrow panels), or ``False`` for none."""
    roles = role_order(run.spec)
    colors = [ROLE_COLORS[r] for r in roles]
    x = np.arange(len(roles))
    k = len(when)
    width = 0.8 / k
    for i, w in enumerate(when):
        alpha = 1.0 if i == k - 1 else 0.45
        ax.bar(x + (i - (k - 1) / 2) * width, records.role_probs(run, config, w), width, color=colors, alpha=alpha,
               label=None if labels is None else labels[i])
    if ticks == "groups":
        groups = list(dict.fromkeys(roles))
        ax.set_xticks([float(np.mean([i for i, r in enumerate(roles) if r == g])) for g in groups],
                      [ROLE_TICKS[g] for g in groups])
    elif ticks:
        ax.set_xticks(x, [ROLE_TICKS[r] for r in roles])
    return ax


#: Legend labels and colours (by role) of the recorded gradient magnitudes.
GRAD_LABELS = {"grad_chosen": "|∂ℓ/∂π+|", "grad_rejected": "|∂ℓ/∂π−|"}
_RECORD_ROLE = {"grad_chosen": "chosen", "grad_rejected": "rejected", "log_chosen": "chosen",
                "log_rejected": "rejected", "rejected_mass": "rejected"}


def plot_roles(ax, run: "ToyRun", config: int | str = 0, roles: Sequence[str] = ("chosen", "other"), *,
               log: bool = False, labels: Mapping[str, str] | None = None):
    """Bands (mean over seeds, 95% interval) of the records ``roles`` (:data:`prefdyn.records.RECORDS`) of one
    configuration over training, coloured by role (a gradient record takes its side's colour);
    ``log=True`` for quantities that collapse (geometric mean, log axis)."""
    labels = {**ROLE_LABELS, **GRAD_LABELS, **(labels or {})}
    for name in roles:
        plot_band(ax, run.steps, run.record(name, config), label=labels.get(name, name),
                  color=ROLE_COLORS.get(_RECORD_ROLE.get(name, name)), log=log)
    return ax


#: Line styles of :func:`mark_steps`: the detected phase steps of 000 Sec. 3.2.2.
STEP_MARKS = {
    "grad_ratio_10_step": ("ratio passes 10", (0, (4, 2))),
    "grad_ratio_100_step": ("ratio passes 100", (0, (6, 2, 1, 2))),
    "peak_chosen_step": ("peak of π(chosen)", (0, (1, 1.5))),
}


def mark_steps(ax, summary_cfg: Mapping[str, Mapping[str, float]], keys: Sequence[str] = tuple(STEP_MARKS),
               label: bool = False):
    """Vertical lines at the seed means of the step indicators ``keys`` (styles of :data:`STEP_MARKS`);
    ``label=True`` gives them legend entries."""
    for key in keys:
        text, ls = STEP_MARKS[key]
        v = summary_cfg[key]["mean"]
        if v is not None and np.isfinite(v):
            ax.axvline(v, color="0.25", lw=0.9, ls=ls, label=text if label else None)
    return ax


def step_legend(fig, keys: Sequence[str] = tuple(STEP_MARKS), **kwargs):
    """A figure-level legend of the :func:`mark_steps` lines, below the panels (outside the data)."""
    import matplotlib.lines as mlines

    handles = [mlines.Line2D([], [], color="0.25", lw=0.9, ls=STEP_MARKS[k][1], label=STEP_MARKS[k][0])
               for k in keys]
    return fig.legend(handles=handles, **{"loc": "outside lower center", "ncols": len(handles), **kwargs})
