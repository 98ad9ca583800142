"""The generated pages (prefdyn.chapters.pages) are committed as ``prefdyn book`` last wrote them: a page
that differs from a fresh rendering means a chapter's results or declarations changed without
``prefdyn book`` being run again."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefdyn.chapters import pages

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", list(pages.PAGES))
def test_generated_page_is_current(path):
    fresh = pages.render(path, ROOT)
    committed = (ROOT / path).read_bytes()
    assert committed == (fresh if isinstance(fresh, bytes) else fresh.encode("utf-8")), \
        f"{path} is stale: run `prefdyn book --no-execute`"


def test_write_pages_writes_only_what_changed(tmp_path):
    import shutil

    for sub in ("book", "notebooks/pages"):
        shutil.copytree(ROOT / sub, tmp_path / sub, ignore=shutil.ignore_patterns("*.ipynb"))
    assert pages.write_pages(tmp_path) == []          # the copies are current
    first = next(iter(pages.PAGES))
    (tmp_path / first).write_text("stale\n", encoding="utf-8")
    assert pages.write_pages(tmp_path) == [first]
    fresh = pages.render(first, ROOT)
    assert (tmp_path / first).read_bytes() == (fresh if isinstance(fresh, bytes) else fresh.encode("utf-8"))


def test_unknown_page_fails_clearly():
    with pytest.raises(ValueError, match="path: expected one of the generated pages"):
        pages.render("book/nope.md", ROOT)


def _fake_book(tmp_path):
    import json

    (tmp_path / "book" / "data").mkdir(parents=True)
    data = {"chapter": "toy-3d", "parameters": {}, "results": {"mlp": {"orders": 38.38, "share": 0.3372,
                                                                        "fall": -0.1536, "name": "S2"},
                                                                "runs": [{"x": 1}, {"x": 2}]},
            "claims": [{"id": "drop", "source": "000", "statement": "s", "verdict": "reproduces",
                        "evidence": {}}]}
    (tmp_path / "book" / "data" / "toy-3d.json").write_text(json.dumps(data))
    return tmp_path


def test_fill_reads_saved_results_formats_and_counts(tmp_path):
    root = _fake_book(tmp_path)
    t = pages.fill("{{toy-3d:mlp.orders | .0f}} orders, {{toy-3d:mlp.share | .0%}}, "
                   "{{toy-3d:mlp.fall | neg .2f}} nats, {{toy-3d:mlp.fall}}, {{toy-3d:mlp.name}}, "
                   "{{toy-3d:runs[1].x}}; {{ledger:tested}} tested, {{ledger:reproduces}} reproduce; "
                   "{{verdict:toy-3d/drop}}", root)
    assert t == "38 orders, 34%, 0.15 nats, -0.1536, S2, 2; 1 tested, 1 reproduce; reproduces"


@pytest.mark.parametrize("template, match", [
    ("{{toy-3d:mlp.nope}}", "toy-3d has no key 'mlp.nope'"),
    ("{{llm-3d:claims.x}}", "no saved results for chapter 'llm-3d'"),
    ("{{verdict:toy-3d/gone}}", "verdict has no key 'toy-3d/gone'"),
])
def test_fill_refuses_a_missing_number(tmp_path, template, match):
    with pytest.raises(ValueError, match=match):
        pages.fill(template, _fake_book(tmp_path))


def test_intro_template_has_no_typed_result_and_every_placeholder_resolves():
    import re

    text = (ROOT / pages.TEMPLATES["book/intro.md"]).read_text(encoding="utf-8")
    i, j = text.index("## What the book finds"), text.index("## A reading guide")
    findings = re.sub(r"\{\{[^}]*\}\}", "", text[i:j])
    findings = re.sub(r"(?m)\{doc\}`[^`]*`|\(00[024][^)]*\)|00[024] [A-Z][a-z]+\.? ?\d+|\b00[024]\b|Table \d+|\$[^$]*\$|GPT-2|3D"
                      r"|^\d+\. ", "", findings)
    assert not re.findall(r"\d", findings.split("```{figure}")[0].split("-->", 1)[1]), \
        "a digit typed in the findings list: numbers must come from placeholders"
    assert "{{" not in pages.render("book/intro.md", ROOT)
