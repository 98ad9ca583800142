"""The ``gradients`` chapter's views: its tables, its Markdown and its figure.

The chapter (``notebooks/gradients.md``) computes with :mod:`prefdyn.printed` (the papers' printed
equations, the errata, the comparison of the losses, the gradient paths) and shows the results through the
functions here: Markdown (parsed as MyST by the book, so ``$...$`` and ``$$...$$`` are typeset) and
:class:`prefdyn.tables.Table` (HTML in the book, aligned text for nbval). Everything here is a deterministic
function of what :mod:`prefdyn.printed` and :mod:`prefdyn.symbolic` compute: no numbers of its own except
float64 evaluations rounded by ``fmt``.

- :func:`params_view`, :func:`comparison_view`, :func:`papers_view`, :func:`errata_view`: the tables
  (:func:`table_text`, :func:`errata_text`: two of them as aligned text, for scripts);
- :func:`loss_markdown`, :func:`printed_markdown`, :func:`erratum_markdown`, :func:`note_markdown`: the
  Markdown blocks;
- :func:`break_lines` and :func:`tex_width`: wide formulas broken into lines that fit the book's column;
  :func:`md_escape`: plain text kept plain in Markdown;
- :func:`plot_gradient_paths`: the figure of both gradients along the path.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import sympy as sp
from matplotlib.ticker import LogLocator, NullFormatter

from ..losses import LOSS_SOURCES
from ..plotting import ROLE_COLORS, loss_label, small_multiples
from ..printed import (ALPHA_FLEX, BETA_M, BETA_P, C_SYM, CONSEQUENCE_CLASSES, ERRATA, ERRATA_BY_ID, PAPERS,
                       PI_M, PI_P,
                       PRINTED_BY_KEY, Erratum, Note, display_latex, gradients, latex, printed_agreement)
from ..results import fmt
from ..tables import Table, cell_text

__all__ = [
    "PX_PER_UNIT",
    "WIDTH_PAGE",
    "WIDTH_BOX",
    "tex_width",
    "break_lines",
    "md_escape",
    "params_view",
    "loss_markdown",
    "comparison_view",
    "table_text",
    "papers_view",
    "printed_markdown",
    "erratum_markdown",
    "errata_view",
    "errata_text",
    "plot_gradient_paths",
    "note_markdown",
    "ranking_view",
    "corollary2_view",
    "field_002_view",
    "detachment_view",
    "matched_view",
    "conditional_row",
    "detachment_markdown",
]

# ---------------------------------------------------------------- display names
_TENDS = {"0": r"\to 0", "finite": r"\to \text{a finite non-zero value}", "inf": r"\to \infty",
          "undecided": r"\text{(sympy could not decide)}"}
_TENDS_TEXT = {"0": "0", "finite": "finite", "inf": "∞", "undecided": "undecided"}
_AUTHORS = {"000": "Yan et al.", "002": "Feng et al.", "004": "Ma et al."}
#: Display names of the losses' parameters (as the papers write them).
_PARAM_NAMES = {"beta": "β", "beta_chosen": "β⁺", "beta_rejected": "β⁻", "gamma": "γ", "delta": "δ",
                "eta": "η", "lam": "λ", "clip": "Δλ_max", "symmetric": "symmetric clipping"}
_MD_SPECIAL = "\\`*_[]<>$|~#"


# ---------------------------------------------------------------- breaking wide formulas into lines
#: Pixels per unit of :func:`tex_width` in the book's MathJax display math (measured on the built pages:
#: 11.6-18.8, median 13.8; taken on the safe side), and the width budgets in units: the content column is
#: about 688 px wide, a boxed block (admonition) about 620 px.
PX_PER_UNIT = 15.0
WIDTH_PAGE = 688 / PX_PER_UNIT
WIDTH_BOX = 620 / PX_PER_UNIT

_TEX_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|[{}^_&]|\s+|[^\\{}^_&\s]")
_TEX_FUNCS = {"log": 2.2, "exp": 2.4, "min": 2.6, "max": 2.6, "sin": 2.0, "cos": 2.2, "lim": 2.0}
_TEX_DELIMS = {"left", "right", "bigl", "bigr", "Bigl", "Bigr", "biggl", "biggr"}
_TEX_SPACES = {"quad": 1.8, "qquad": 3.6, ",": 0.3, ";": 0.5, ":": 0.4, "!": -0.3, " ": 0.4}
_TEX_RELATIONS = {"to", "sim", "equiv", "gg", "ll", "leq", "geq", "approx", "cdot", "times"}


def tex_width(tex: str) -> float:
    """A rough rendered width of one line of display LaTeX, in units of about one italic letter (see
    :data:`PX_PER_UNIT`), following TeX's styles: a fraction's parts one style smaller (display -> text ->
    script -> scriptscript), sub- and superscripts in script size (0.7) or scriptscript size (0.5),
    ``\\left``/``\\right`` their delimiter only. Good to about 20%: enough to decide where to break."""
    toks = [t for t in _TEX_TOKEN.findall(tex) if not t.isspace()]
    size = (1.0, 1.0, 0.7, 0.5)      # display, text, script, scriptscript
    pos = 0

    def raw_group() -> str:
        nonlocal pos
        if pos >= len(toks) or toks[pos] != "{":
            return ""
        depth, out = 0, []
        while pos < len(toks):
            t = toks[pos]
            pos += 1
            depth += (t == "{") - (t == "}")
            if depth == 0:
                break
            if not (t == "{" and depth == 1):
                out.append(t)
        return "".join(out)

    def arg(style: int) -> float:
        nonlocal pos
        if pos >= len(toks):
            return 0.0
        t = toks[pos]
        pos += 1
        return group(style) if t == "{" else one(t, style)

    def one(t: str, style: int) -> float:
        nonlocal pos
        k = size[style]
        if t.startswith("\\"):
            name = t[1:]
            if name == "frac":
                inner = min(style + 1, 3)
                return max(arg(inner), arg(inner)) + 0.3 * k
            if name in ("text", "mathrm", "operatorname", "mathbf", "mathit"):
                return 0.75 * k * len(raw_group())
            if name in ("begin", "end"):
                raw_group()
                return 0.0
            if name in _TEX_DELIMS:
                d = toks[pos] if pos < len(toks) else "."
                pos += 1
                return 0.0 if d == "." else 0.6 * k
            if name in ("mathbb", "mathcal", "hat", "bar", "tilde", "sqrt"):
                return arg(style) + (0.6 * k if name == "sqrt" else 0.0)
            if name in ("displaystyle", "textstyle", "limits", "nonumber", "\\"):
                return 0.0
            if name in _TEX_FUNCS:
                return _TEX_FUNCS[name] * k
            if name in _TEX_SPACES:
                return _TEX_SPACES[name] * k
            return (2.0 if name in _TEX_RELATIONS else 1.0) * k
        if t in "^_":
            return arg(max(2, min(style + 1, 3)))
        if t == "{":
            return group(style)
        if t in "+-=<>":
            return (2.0 if style < 2 else 1.0) * k
        if t in "()[]|":
            return 0.55 * k
        if t in ",.;:'":
            return 0.4 * k
        if t.isalpha() and t.isupper():       # capitals are wider than the italic lower-case letter
            return 1.3 * k
        return 0.0 if t in "&}" else k

    def group(style: int) -> float:
        nonlocal pos
        total = 0.0
        while pos < len(toks):
            t = toks[pos]
            pos += 1
            if t == "}":
                return total
            total += one(t, style)
        return total

    total = 0.0
    while pos < len(toks):
        t = toks[pos]
        pos += 1
        total += one(t, 0)
    return total


# A sum stands in for the sum being cut, so that sympy brackets it exactly as it brackets a sum there.
_PLACEHOLDER = sp.Symbol("XQHOLDA") + sp.Symbol("XQHOLDB")
_GROUP_TOKEN = re.compile(r"\\left\\?.|\\right\\?.|[{}]")


def _unwrap(prefix: str, suffix: str) -> tuple[str, str] | None:
    """Make ``prefix`` + (lines) + ``suffix`` valid across aligned rows: the groups that ``prefix`` opens
    and ``suffix`` closes become ``\\Bigl(`` ... ``\\Bigr)`` (``{\\left(`` loses its brace). None when a
    group cannot be split (e.g. the argument of ``\\frac``)."""
    stack = []
    for m in _GROUP_TOKEN.finditer(prefix):
        t = m.group()
        if t == "{" or t.startswith("\\left"):
            stack.append(m)
        elif stack:
            stack.pop()
    closers, depth = [], 0
    for m in _GROUP_TOKEN.finditer(suffix):
        t = m.group()
        if t == "{" or t.startswith("\\left"):
            depth += 1
        elif depth:
            depth -= 1
        else:
            closers.append(m)
    if len(closers) != len(stack):
        return None
    pre_edits, suf_edits = [], []
    for opener, closer in zip(reversed(stack), closers):
        o, c = opener.group(), closer.group()
        if o.startswith("\\left") and c.startswith("\\right"):
            pre_edits.append((opener.span(), r"\Bigl" + o[5:]))
            suf_edits.append((closer.span(), r"\Bigr" + c[6:]))
        elif o == "{" and c == "}" and prefix[opener.end():].lstrip().startswith("\\left"):
            pre_edits.append((opener.span(), ""))
            suf_edits.append((closer.span(), ""))
        else:
            return None

    def apply(text, edits):
        for (a, b), rep in sorted(edits, reverse=True):
            text = text[:a] + rep + text[b:]
        return text

    return apply(prefix, pre_edits), apply(suffix, suf_edits)


def _terms(expr: sp.Expr) -> list[str]:
    """The LaTeX of the terms of a sum, each with its sign: ``["a", "+ b", "- c"]``."""
    out = []
    for k, t in enumerate(expr.as_ordered_terms()):
        tex = display_latex(t)
        if k and not tex.lstrip().startswith("-"):
            tex = "+ " + tex
        out.append(tex)
    return out


def _chunks(pieces: Sequence[str], budget: float, first: float | None = None) -> list[str]:
    """``pieces`` joined greedily into lines of at most ``budget`` (the first line: ``first``)."""
    lines: list[str] = []
    for piece in pieces:
        room = first if first is not None and len(lines) == 1 else budget
        if lines and tex_width(lines[-1] + " " + piece) <= room:
            lines[-1] += " " + piece
        else:
            lines.append(piece)
    return lines


def break_lines(expr: sp.Expr, budget: float) -> list[str]:
    """The LaTeX of ``expr`` as one line, or, when :func:`tex_width` says it is wider than ``budget``,
    as several lines: a sum is cut between its terms, or else a sum inside it whose brackets can be
    split across lines (a function's argument, a factor in brackets; not a fraction's numerator), its
    brackets becoming ``\\Bigl(``/``\\Bigr)``. Continuation lines start with their operator; join them
    with ``\\\\`` in an aligned environment. The first cut whose lines all fit wins, else the one with
    the narrowest widest line if that is clearly narrower; else one line in ``\\small`` type."""
    tex = display_latex(expr)
    if tex_width(tex) <= budget:
        return [tex]
    options = []
    if isinstance(expr, sp.Add):
        options.append(_chunks(_terms(expr), budget))
    mark = display_latex(_PLACEHOLDER)
    candidates = sorted({a for a in sp.preorder_traversal(expr) if isinstance(a, sp.Add) and a is not expr},
                        key=lambda a: (-tex_width(display_latex(a)), display_latex(a)))
    for sub in candidates:
        whole = display_latex(expr.xreplace({sub: _PLACEHOLDER}))
        if whole.count(mark) != 1:
            continue
        cut = _unwrap(*whole.split(mark))
        if cut is None:
            continue
        prefix, suffix = cut
        if "frac" in display_latex(sub):
            prefix, suffix = prefix.replace(r"\Bigl", r"\biggl"), suffix.replace(r"\Bigr", r"\biggr")
        terms = _terms(sub)
        lines = _chunks(terms, budget - 2.0, first=budget - tex_width(prefix))
        if tex_width(prefix + lines[0]) > budget:          # the first term does not fit after the prefix:
            if tex_width(prefix) < 0.2 * budget:           # give the prefix a line of its own, unless tiny
                continue
            lines = [prefix] + _chunks(terms, budget - 2.0)
        else:
            lines[0] = prefix + lines[0]
        if min(map(tex_width, lines)) < 0.2 * budget:     # no line of a lone "1" or "+ 1)"
            continue
        lines[-1] = lines[-1] + suffix
        if len(lines) > 1:
            options.append(lines)
    for lines in options:
        if max(map(tex_width, lines)) <= budget:
            return lines
    best = min(options, key=lambda ls: max(map(tex_width, ls)), default=None)
    if best is not None and max(map(tex_width, best)) <= 0.8 * tex_width(tex):
        return best
    # Nothing to cut (e.g. a wide fraction): the formula is set a size smaller.
    return [r"\small " + tex]


def _rows(left: str, relation: str, lines: Sequence[str]) -> list[tuple[str, str]]:
    """Aligned rows for ``left relation lines[0]``, continuation lines indented under the right side."""
    return [(left, f"{relation} {lines[0]}")] + [("", rf"\quad {ln}") for ln in lines[1:]]


def _simplified(expr: sp.Expr) -> sp.Expr:
    """A derived gradient in the form the chapter shows (logs expanded, powers combined, simplified)."""
    return sp.simplify(sp.powsimp(sp.expand_log(expr, force=True), force=True))


def md_escape(text: str) -> str:
    """``text`` with the characters Markdown would read as markup escaped (the errata's and notes' plain-text
    explanations write ``pi+_{i,c}``, ``|dl/dpi-|``, ``*``...)."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in text)


def _aligned(rows: Sequence[tuple[str, str]], gap: str = "6pt") -> str:
    """A display block ``$$\\begin{aligned} left &= right \\\\ ... \\end{aligned}$$`` (``rows`` of
    ``(left, right)``, ``right`` starting with its relation)."""
    body = (rf" \\[{gap}]" + "\n").join(f"{a} &{b}" for a, b in rows)
    return "$$\n\\begin{aligned}\n" + body + "\n\\end{aligned}\n$$"


def params_view(params: Mapping[str, Mapping[str, Any]]) -> Table:
    """The per-loss parameters of :func:`~prefdyn.printed.loss_params` as a :class:`prefdyn.tables.Table`:
    β (β⁺ / β⁻ for flex-β DPO) and the loss's other parameters."""
    def one(k, v):
        return f"{_PARAM_NAMES.get(k, k)} = {cell_text(v) if isinstance(v, bool) else fmt(v)}"

    rows = []
    for n, p in params.items():
        betas = [fmt(p[k]) for k in ("beta", "beta_chosen", "beta_rejected") if k in p]
        other = [one(k, v) for k, v in p.items() if not k.startswith("beta")]
        rows.append((loss_label(n), [" / ".join(betas) or None, ", ".join(other) or None]))
    return Table(["β", "other parameters"], rows, corner="loss", note="flex-β DPO: β⁺ / β⁻.")


def loss_markdown(name: str, row: Mapping[str, Any]) -> str:
    """Markdown for one loss of the ``gradients`` chapter: definition, gradients, ratio, leading terms as
    pi- -> 0 and their limits, balance in log space. Wide formulas are broken into lines
    (:func:`break_lines`) so that nothing is cut off at the book's column width.

    ``row`` is the loss's row of :func:`~prefdyn.printed.comparison_table` (limits for the run's parameter
    values).
    """
    g = gradients(name)
    d, budget = r"\partial \ell", WIDTH_PAGE - 6.5       # room for the left side, e.g. "dl/dpi+ ="
    lines = [f"### {loss_label(name)}", "",
             f"`{name}` in `prefdyn.losses`; source: {md_escape(LOSS_SOURCES[name])}.", ""]
    definition = _rows(r"\ell", "=", break_lines(g.loss_sg, budget))
    for k, v in g.stop_gradient.items():
        definition += _rows(display_latex(k), "=", break_lines(v, budget))
    lines += [_aligned(definition), ""]
    notes = []
    if g.stop_gradient:
        notes.append(r"$\operatorname{sg}[\cdot]$ marks a detached quantity: a constant for the gradient.")
    if g.d_pi_c_sg.has(sp.Heaviside) or g.d_pi_r_sg.has(sp.Heaviside):
        notes.append(r"$\theta(u, 0)$ is the Heaviside step: 1 for $u > 0$, 0 for $u \le 0$.")
    if notes:
        lines += [" ".join(notes), ""]
    grads = (_rows(rf"\frac{{{d}}}{{\partial \pi^+}}", "=", break_lines(_simplified(g.d_pi_c_sg), budget))
             + _rows(rf"\frac{{{d}}}{{\partial \pi^-}}", "=", break_lines(_simplified(g.d_pi_r_sg), budget))
             + _rows(rf"\frac{{{d} / \partial \pi^-}}{{{d} / \partial \pi^+}}", "=", break_lines(g.ratio, budget)))
    lines += ["Its gradients:", "", _aligned(grads, "10pt"), ""]
    lead_c, lead_r = row.get("lead_exprs", (None, None))
    lead = []
    for which, expr, tex in (("+", lead_c, row["lead_d_pi_plus"]), ("-", lead_r, row["lead_d_pi_minus"])):
        body = break_lines(expr, budget) if expr is not None else [tex if tex != "undecided" else r"\text{?}"]
        lead += _rows(rf"\frac{{{d}}}{{\partial \pi^{which}}}", r"\sim", body)
    lines += [r"As $\pi^- \to 0$, with this run's parameter values (leading terms):", "", _aligned(lead, "10pt"), "",
              rf"So $|{d}/\partial \pi^+| {_TENDS[row['d_pi_plus_limit']]}$, "
              rf"$|{d}/\partial \pi^-| {_TENDS[row['d_pi_minus_limit']]}$ and their ratio "
              rf"${_TENDS[row['ratio_limit']]}$. Balanced in log space "
              rf"($\partial \ell/\partial \log\pi^+ + \partial \ell/\partial \log\pi^- \equiv 0$): "
              f"**{'yes' if row['balanced_log'] else 'no'}**."]
    return "\n".join(lines)


def comparison_view(rows: Mapping[str, Mapping[str, Any]]) -> Table:
    """The comparison of :func:`~prefdyn.printed.comparison_table` as a :class:`prefdyn.tables.Table`: one
    row per loss, the gradient ratio at the end of the path, the limits as pi- -> 0 and the log-space balance
    (5 columns)."""
    columns = ["ratio at end", "ratio →", "|∂ℓ/∂π⁺| →", "|∂ℓ/∂π⁻| →", "balanced (log)"]
    body = [(loss_label(n), [r["ratio_at_end"], _TENDS_TEXT[r["ratio_limit"]], _TENDS_TEXT[r["d_pi_plus_limit"]],
                             _TENDS_TEXT[r["d_pi_minus_limit"]], bool(r["balanced_log"])]) for n, r in rows.items()]
    return Table(columns, body, corner="loss",
                 note="ratio = |∂ℓ/∂π⁻| / |∂ℓ/∂π⁺|; 'at end': at the end of the path; "
                      "→: the limit as π⁻ → 0 (0, finite or ∞).")


def table_text(rows: Mapping[str, Mapping[str, Any]], fmt: Callable[[Any], str] | None = None) -> str:
    """The comparison table as aligned text (kept for scripts; the chapter shows :func:`comparison_view`)."""
    return comparison_view(rows).text()


def papers_view(agree: Mapping[str, float], errata: Sequence[Erratum] | None = None) -> Table:
    """Per paper: how many printed gradient forms agree with the derivation, their largest relative
    difference, and how many errata (one row per paper)."""
    errata = ERRATA if errata is None else errata
    by = printed_agreement(agree)
    rows = [(f"{p} ({_AUTHORS[p]})", [len(by.get(p, {})), max(by[p].values()) if by.get(p) else None,
                                     sum(e.paper == p for e in errata)]) for p in PAPERS]
    return Table(["forms that agree", "largest rel. difference", "errata"], rows, corner="paper")


def printed_markdown(agree: Mapping[str, float]) -> str:
    """A MyST table of every printed form that agrees: where it is printed, what it is, and the largest
    relative difference between print and derivation (``agree`` as in
    :func:`~prefdyn.printed.printed_agreement`)."""
    lines = ["| printed in | what | largest rel. difference |", "| :-- | :-- | --: |"]
    for key, err in agree.items():
        e = PRINTED_BY_KEY[key]
        what = e.what + (" (leading order)" if e.limit is not None and "leading" not in e.what else "")
        lines.append(f"| {md_escape(e.source)} | {md_escape(what)} | {fmt(err)} |")
    return "\n".join(lines)


def erratum_markdown(e: Erratum, number: int | None = None) -> str:
    """Markdown for one erratum, as one boxed block: where and what, the printed and the corrected form
    one above the other, and why (``number``: its number in the chapter, shown in the title). Forms that
    fit beside their labels are aligned in one display; wider ones get a display each, broken into lines
    (:func:`break_lines`)."""
    defs = e._definitions() if not callable(e.definitions) else {}
    title = f"Erratum {number}: " if number is not None else "Erratum: "
    lines = [f":::{{admonition}} {title}{md_escape(e.paper)} {md_escape(e.where)}", ":class: note", "",
             f"**{md_escape(e.kind[:1].upper() + e.kind[1:])}** in ${e.quantity}$.", ""]
    label = tex_width(r"\text{corrected:}\quad")
    if max(tex_width(latex(e.printed)), tex_width(latex(e.corrected))) + label <= WIDTH_BOX:
        rows = [(r"\text{printed:}", rf"\quad {latex(e.printed)}"),
                (r"\text{corrected:}", rf"\quad {latex(e.corrected)}")]
        lines += [_aligned(rows, "8pt"), ""]
    else:
        for name, expr in (("Printed", e.printed), ("Corrected", e.corrected)):
            body = break_lines(expr, WIDTH_BOX - 3)
            rows = [("", body[0])] + [("", rf"\quad {ln}") for ln in body[1:]]
            lines += [f"{name}:", "", _aligned(rows, "6pt"), ""]
    if C_SYM in defs:
        a = sp.Symbol("alpha")
        lines += [rf"Here ${latex(C_SYM)} = {latex(a * BETA_P * PI_P ** (-BETA_P) * PI_M ** BETA_M)}$ with "
                  rf"$\alpha = {latex(ALPHA_FLEX)}$; $\pi^\pm_{{i,c}}$ is the softmax probability of token $c$ "
                  r"at position $i$ and $x^\pm_{i,c}$ its logit.", ""]
    lines += [md_escape(e.explanation), ":::"]
    return "\n".join(lines)


def errata_view(checks: Mapping[str, Mapping[str, Any]]) -> Table:
    """The errata's numeric checks (``{id: Erratum.check()}``) as a :class:`prefdyn.tables.Table`: the
    printed form and the derivation at the erratum's point, and the relative errors of the printed and of
    the corrected form against the derivation (4 columns). Rows are numbered like
    :func:`erratum_markdown`'s boxes, in the order of ``checks``."""
    rows = []
    for k, (i, c) in enumerate(checks.items(), 1):
        rows.append((f"{k} ({ERRATA_BY_ID[i].paper})",
                     [c["printed"], c["derivation"], c["printed_rel_err"], c["corrected_rel_err"]]))
    return Table(["printed", "derivation", "rel. err. printed", "rel. err. corrected"], rows,
                 corner="erratum", note="rel. err.: |form − derivation| / |derivation| at the erratum's point "
                                        "(the points and the corrected forms' values are saved with the results).")


def errata_text(checks: Mapping[str, Mapping[str, Any]], fmt: Callable[[Any], str] | None = None) -> str:
    """The errata's numeric checks as aligned text (kept for scripts; the chapter shows :func:`errata_view`)."""
    return errata_view(checks).text()


def plot_gradient_paths(paths: Mapping[str, Mapping[str, Any]], ncols: int = 3, panel=(2.4, 2.0)):
    """Small multiples, one panel per loss: |dl/dpi+| and |dl/dpi-| against pi- (log-log) along the
    paths of :func:`~prefdyn.printed.gradient_path`. Exact zeros (e.g. SLiC's inactive hinge) are left out
    of the log plot.

    Sized for the book's content column (about 7 inches at ``ncols=3``), with fonts that stay above 8 pt
    there, few ticks per log axis, and one legend above the panels. Returns ``(fig, axes)``."""
    fig, axes = small_multiples(len(paths), ncols=ncols, sharex=True, sharey=False, panel=panel)
    lines = []
    for ax, (name, path) in zip(axes, paths.items()):
        x = np.asarray(path["pi_minus"])
        for key, role, lab in (("d_pi_plus", "chosen", r"$|\partial\ell/\partial\pi^+|$ (chosen)"),
                               ("d_pi_minus", "rejected", r"$|\partial\ell/\partial\pi^-|$ (rejected)")):
            y = np.abs(np.asarray(path[key], dtype=float))
            y = np.where(y > 0, y, np.nan)
            lines += ax.loglog(x, y, color=ROLE_COLORS[role], label=lab)
        ax.set_title(loss_label(name), fontsize=11)
        ax.tick_params(labelsize=9.5)
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=4))
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=4))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_locator(LogLocator(base=10, subs="auto", numticks=12))
            axis.set_minor_formatter(NullFormatter())
    axes[0].invert_xaxis()  # shared x: once inverts all panels
    fig.legend(lines[:2], [ln.get_label() for ln in lines[:2]], loc="outside upper center", ncols=2, fontsize=10)
    fig.supxlabel(r"$\pi^-$, falling from left to right", fontsize=10)
    fig.supylabel("gradient magnitude", fontsize=10)
    return fig, axes



def note_markdown(note: Note, fmt: Callable[[Any], str]) -> str:
    """Markdown for one :class:`~prefdyn.printed.Note` as one boxed block: the printed claim, what it needs, and the
    computed numbers that show it (formatted by ``fmt``)."""
    lines = [f":::{{admonition}} {md_escape(note.source)}", ":class: note", "",
             f"Printed: *{md_escape(note.claim)}*.", "", md_escape(note.finding)]
    if note.check is not None:
        lines += [""] + [f"- {md_escape(k)}: **{fmt(v)}**" for k, v in note.check().items()]
    lines.append(":::")
    return "\n".join(lines)



# ---------------------------------------------------------------- errata the book had missed; matched beta
def ranking_view(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The errata ranked by consequence (:func:`~prefdyn.printed.errata_ranking`): one row per erratum,
    labelled like its box (number and paper), most consequential first (3 columns)."""
    body = [(f"{r['number']} ({r['paper']})", [r["where"], f"{r['rank']}: {r['consequence']}", r["reason"]])
            for r in rows]
    classes = "; ".join(f"{k} {v}" for k, v in CONSEQUENCE_CLASSES.items())
    return Table(["where", "consequence (rank)", "why"], body, corner="erratum",
                 note=f"rank 1 = most consequential: {classes}.")


def corollary2_view(lims: Mapping[float, Mapping[str, Any]]) -> Table:
    """000 Cor. 2 at several beta (:func:`~prefdyn.printed.corollary2_limits`): the exponents of pi- in
    the leading terms of DPO's two gradients and the limits as pi- -> 0 (5 columns)."""
    body = [(f"β = {fmt(b)}", [r["exponent_plus"], _TENDS_TEXT[r["d_pi_plus_limit"]], r["exponent_minus"],
                               _TENDS_TEXT[r["d_pi_minus_limit"]], _TENDS_TEXT[r["ratio_limit"]]])
            for b, r in lims.items()]
    return Table(["exponent, ∂ℓ/∂π⁺", "|∂ℓ/∂π⁺| →", "exponent, ∂ℓ/∂π⁻", "|∂ℓ/∂π⁻| →", "ratio →"], body,
                 corner="DPO", note="exponent: of π⁻ in the leading term as π⁻ → 0; "
                                    "ratio = |∂ℓ/∂π⁻| / |∂ℓ/∂π⁺|.")


def field_002_view(values: Mapping[float, Mapping[str, float]], x2: float, beta: float) -> Table:
    """002's gradient field at falling x1 (:func:`~prefdyn.printed.field_002`; 2 columns)."""
    body = [(f"x₁ = {fmt(x1)}", [v["d_x1"], v["d_x2"]]) for x1, v in values.items()]
    return Table(["|∂L/∂x₁|", "|∂L/∂x₂|"], body, corner="002, DPO",
                 note=f"at x₂ = {fmt(x2)}, β = {fmt(beta)} (002 eq. 2).")


def detachment_view(res: Mapping[str, Mapping[str, Sequence[float]]], pi_minus: Sequence[float]) -> Table:
    """bDPO with lambda_w detached and not (:func:`~prefdyn.printed.bdpo_detachment`; 4 columns)."""
    d, n = res["detached"], res["not_detached"]
    body = [(f"π⁻ = {fmt(pm)}", [d["d_pi_plus"][k], n["d_pi_plus"][k], d["ratio"][k], n["ratio"][k]])
            for k, pm in enumerate(pi_minus)]
    return Table(["∂ℓ/∂π⁺, sg[λ_w]", "∂ℓ/∂π⁺, λ_w", "ratio, sg[λ_w]", "ratio, λ_w"], body, corner="bDPO",
                 note="sg[λ_w]: λ_w detached (the book's choice); λ_w: not detached. "
                      "ratio = |∂ℓ/∂π⁻| / |∂ℓ/∂π⁺|.")


def matched_view(matched: Mapping[float, Mapping[str, Mapping[str, Any]]]) -> Table:
    """The limits as pi- -> 0 of both gradients of every loss at matched beta
    (:func:`~prefdyn.printed.matched_beta`): two columns per beta."""
    betas = list(matched)
    names = list(matched[betas[0]])
    cols, body = [], []
    for b in betas:
        cols += [f"|∂ℓ/∂π⁺| →, β = {fmt(b)}", f"|∂ℓ/∂π⁻| →, β = {fmt(b)}"]
    for n in names:
        cells = []
        for b in betas:
            r = matched[b][n]
            cells += [_TENDS_TEXT[r["d_pi_plus_limit"]], _TENDS_TEXT[r["d_pi_minus_limit"]]]
        body.append((loss_label(n), cells))
    return Table(cols, body, corner="loss",
                 note="β = beta = beta_balanced; flex-β DPO (β⁺, β⁻) and SLiC have no β and repeat.")


def conditional_row(matched: Mapping[float, Mapping[str, Mapping[str, Any]]], name: str,
                    key: str = "d_pi_minus_limit", value: str = "finite", against: str = "dpo") -> str:
    """A comparison-table row ('<loss>: <gradient> -> <value>') restated with its condition: at which of
    the matched betas it holds, and whether ``against`` (DPO) has the same limit at the same beta. Every
    verdict is computed from ``matched`` (:func:`~prefdyn.printed.matched_beta`)."""
    grad = {"d_pi_minus_limit": "|∂ℓ/∂π⁻|", "d_pi_plus_limit": "|∂ℓ/∂π⁺|"}[key]
    betas = list(matched)
    holds = [b for b in betas if matched[b][name][key] == value]
    fails = [b for b in betas if b not in holds]

    def at(bs, who):
        return ", ".join(f"β = {fmt(b)} (→ {_TENDS_TEXT[matched[b][who][key]]})" for b in bs) or "no β"

    same = [b for b in betas if matched[b][name][key] == matched[b][against][key]]
    text = (f"**{loss_label(name)}: {grad} → {_TENDS_TEXT[value]}** holds at {at(holds, name)}"
            f" and fails at {at(fails, name)}. {loss_label(against)} at the same β: {at(betas, against)}. ")
    if len(same) == len(betas):
        text += (f"At every β compared the two limits agree, so the row follows β, not the balancing of "
                 f"{loss_label(name)}.")
    else:
        text += (f"The limits differ at {', '.join('β = ' + fmt(b) for b in betas if b not in same)}: "
                 f"there the row is {loss_label(name)}'s own.")
    return md_escape(text).replace(r"\*\*", "**")


def detachment_markdown(lims: Mapping[str, Mapping[str, Any]]) -> str:
    """bDPO's limits as pi- -> 0 with lambda_w detached and not
    (:func:`~prefdyn.printed.detachment_limits`), and what they mean for the comparison table's bDPO row;
    every verdict computed from ``lims``."""
    d, n = lims["detached"], lims["not_detached"]
    text = (f"As π⁻ → 0 along the path: with sg[λ_w], |∂ℓ/∂π⁺| → {_TENDS_TEXT[d['d_pi_plus_limit']]} and "
            f"|∂ℓ/∂π⁻| → {_TENDS_TEXT[d['d_pi_minus_limit']]}; with λ_w not detached, |∂ℓ/∂π⁺| → "
            f"{_TENDS_TEXT[n['d_pi_plus_limit']]} and |∂ℓ/∂π⁻| → {_TENDS_TEXT[n['d_pi_minus_limit']]}.")
    if n["d_pi_plus_limit"] == "0" and n["q_plus"] is not None:
        text += (f" Without detaching, |∂ℓ/∂π⁺| falls slowly: from π⁻ = 1e-1000 to 1e-4000 (|log π⁻| four "
                 f"times larger) it changes by the factor {fmt(n['q_plus'])}.")
    if d["d_pi_plus_limit"] != n["d_pi_plus_limit"]:
        text += (f" So the comparison table's row 'bDPO: |∂ℓ/∂π⁺| → {_TENDS_TEXT[d['d_pi_plus_limit']]}' "
                 "holds only if λ_w is detached: the book's assumption, not 004's equations, decides it.")
    else:
        text += " The two choices agree on this limit."
    return md_escape(text)
