"""The ``gradients`` chapter's views (prefdyn.chapters.gradients_view): the tables fit the page, the Markdown
is valid MyST math, wide formulas are broken into lines that fit the column and balance.

What the views show (the printed equations, the errata, the comparison of the losses) is tested in
``tests/test_printed.py``; the rendered chapter is compared with ``book/gradients.ipynb`` by nbval.
"""

from __future__ import annotations

import re

import pytest
import sympy as sp

from prefdyn import printed as P
from prefdyn.chapters import gradients_view as V


def _balanced(tex):
    """Braces and \\left/\\right pairs balance within one line (as MathJax needs in each aligned row)."""
    depth = lefts = 0
    for m in re.finditer(r"\\left\\?.|\\right\\?.|(?<!\\)[{}]", tex):
        t = m.group()
        if t == "{":
            depth += 1
        elif t == "}":
            depth -= 1
        elif t.startswith("\\left"):
            lefts += 1
        else:
            lefts -= 1
        if depth < 0 or lefts < 0:
            return False
    return depth == 0 and lefts == 0


def test_md_escape_keeps_plain_text_plain():
    assert V.md_escape("pi+_{i,c} * |dl/dpi-| [x] $y$") == r"pi+\_{i,c} \* \|dl/dpi-\| \[x\] \$y\$"


def test_tex_width_follows_tex_sizes():
    w = V.tex_width
    assert w("x") == pytest.approx(1.0)
    assert w("x^{2}") == pytest.approx(1.7)                 # a superscript in script size
    assert w(r"\frac{a}{b}") < w("ab")                      # a fraction is as wide as its wider part
    assert w(r"\frac{abcd}{b}") > w(r"\frac{ab}{b}")
    assert w(r"\left( x \right)") == pytest.approx(w("(x)") + 0.1)
    assert w(r"\text{printed:}") == pytest.approx(0.75 * 8)


@pytest.mark.parametrize("eid", ["004-eq4", "004-eq36", "004-eq25", "004-eq47", "004-eq43"])
def test_break_lines_cuts_wide_errata_into_valid_lines(eid):
    e = P.ERRATA_BY_ID[eid]
    budget = V.WIDTH_BOX - 3                                # as erratum_markdown cuts them
    assert V.tex_width(P.display_latex(e.printed)) > budget or V.tex_width(P.display_latex(e.corrected)) > budget
    for expr in (e.printed, e.corrected):
        lines = V.break_lines(expr, budget)
        assert len(lines) >= 2 or V.tex_width(lines[0]) <= budget, eid
        assert all(_balanced(ln) for ln in lines), lines
        assert max(map(V.tex_width, lines)) <= budget, lines
        joined = " ".join(lines)
        assert joined.count(r"\Bigl") + joined.count(r"\biggl") == joined.count(r"\Bigr") + joined.count(r"\biggr")
        if isinstance(expr, sp.Add) and r"\Bigl" not in joined and r"\biggl" not in joined:
            # a sum cut between its terms is the same LaTeX, only split
            assert re.sub(r"\s+", "", joined) == re.sub(r"\s+", "", P.display_latex(expr))


def test_break_lines_keeps_what_fits_on_one_line():
    expr = P.ERRATA_BY_ID["000-cor1"].corrected
    assert V.break_lines(expr, 40) == [P.display_latex(expr)]
    wide = P.gradients("dpop").d_pi_c                       # a fraction: nothing to cut, set smaller
    assert V.break_lines(wide, 10)[0].startswith(r"\small ")


def test_views_fit_the_page():
    names = ["dpo", "slic"]
    rows = P.comparison_table(names, P.loss_params({}, names))
    for t in (V.comparison_view(rows), V.params_view(P.loss_params({})), V.papers_view({"000 eq. 6": 0.0}),
              V.errata_view({"000-cor1": P.ERRATA_BY_ID["000-cor1"].check()})):
        assert len(t.columns) <= 5 and "<table" in t._repr_html_()
    view = V.comparison_view(rows)
    assert view.cell("DPO", "balanced (log)") is True and view.cell("SLiC", "|∂ℓ/∂π⁻| →") == "0"
    assert "sympy" not in view.text() and "∞" in view.text()


def test_loss_markdown_is_myst_math():
    rows = P.comparison_table(["dpop"], P.loss_params({}, ["dpop"]))
    md = V.loss_markdown("dpop", rows["dpop"])
    assert md.startswith("### DPOP") and md.count("$$") % 2 == 0
    assert r"\begin{aligned}" in md and "Heaviside" in md and "**no**" in md
    assert r"\sqrt[" not in md                              # powers, not roots


def test_erratum_markdown_is_one_box_with_both_forms():
    for k, e in enumerate(P.ERRATA, 1):
        md = V.erratum_markdown(e, k)
        assert md.startswith(f":::{{admonition}} Erratum {k}: {e.paper}") and md.endswith(":::")
        assert md.count(":::") == 2 and md.count("$$") % 2 == 0
        assert ("printed:" in md and "corrected:" in md) or ("Printed:" in md and "Corrected:" in md)
        assert "\n#" not in md                               # no headings inside a box


def test_printed_markdown_lists_every_agreeing_form():
    agree = {p.key: 0.0 for p in P.PRINTED}
    md = V.printed_markdown(agree).splitlines()
    assert len(md) == 2 + len(P.PRINTED) and all(ln.startswith("| ") for ln in md)


def test_note_markdown_escapes_plain_text():
    n = {x.id: x for x in P.NOTES}
    assert r"mu\_p" in V.note_markdown(n["004-thm3"], str)     # escaped: not Markdown emphasis
    md = V.note_markdown(n["004-cor1"], lambda x: f"{x:.3f}")
    assert md.startswith(":::{admonition} 004 Corollary 1") and md.endswith(":::") and "**0.333**" in md


def test_ranking_and_new_views_fit_the_page():
    t = V.ranking_view(P.errata_ranking())
    assert len(t.columns) <= 5 and len(t.rows) == len(P.ERRATA)
    assert t.rows[0][1][1].startswith("1: ") and t.rows[-1][1][1].startswith("5: ")
    t = V.corollary2_view(P.corollary2_limits([0.1, 2.0]))
    assert len(t.columns) <= 5 and t.cell("β = 2", "|∂ℓ/∂π⁺| →") == "0"
    t = V.field_002_view({1e-4: P.field_002(1e-4)}, 1.0, 0.1)
    assert len(t.columns) == 2


def test_conditional_row_states_its_condition():
    m = {0.1: {"nbdpo": {"d_pi_minus_limit": "inf"}, "dpo": {"d_pi_minus_limit": "inf"}},
         1.0: {"nbdpo": {"d_pi_minus_limit": "finite"}, "dpo": {"d_pi_minus_limit": "finite"}}}
    md = V.conditional_row(m, "nbdpo")
    assert md.startswith("**nbDPO") and "holds at β = 1 (→ finite)" in md and "fails at β = 0.1 (→ ∞)" in md
    assert "follows β" in md
    m[1.0]["dpo"]["d_pi_minus_limit"] = "inf"
    assert "own" in V.conditional_row(m, "nbdpo")
    lims = {"detached": {"d_pi_plus_limit": "finite", "d_pi_minus_limit": "inf", "q_plus": 1.0},
            "not_detached": {"d_pi_plus_limit": "0", "d_pi_minus_limit": "inf", "q_plus": 0.25}}
    md = V.detachment_markdown(lims)
    assert "only if λ\\_w is detached" in md and "0.25" in md
