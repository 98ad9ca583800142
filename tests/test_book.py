"""The committed book is in sync with its sources and declarations ([1/7]).

- every declared chapter has a source in notebooks/, an executed chapter in book/ and JSON in book/data/,
  and a place in _toc.yml (and nothing else is in the toc);
- the executed chapter's cells equal the source's (papermill's injected-parameters cell aside): editing a
  chapter without re-executing it (``prefdyn run <id> --into-book``) fails here;
- the ``parameters`` cell assigns exactly the declared parameters with the declared defaults;
- the executed chapter stores no error and no run-dependent metadata;
- the chapter saves its key numbers (``save_results``), with the golden parameters;
- every cell left out of nbval's comparison says why, next to its tag.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from prefdyn import results
from prefdyn.chapters import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]
IDS = list(CHAPTERS)


def _source(cid):
    return jupytext.read(ROOT / CHAPTERS[cid].source)


def _executed(cid):
    return nbformat.read(ROOT / "book" / f"{cid}.ipynb", as_version=4)


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells       # the generated "Rerun" box aside
            if "injected-parameters" not in c.metadata.get("tags", [])
            and c.metadata.get("prefdyn") != "generated"]


def _toc_files(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("file", "root"):
                yield v
            else:
                yield from _toc_files(v)
    elif isinstance(node, list):
        for v in node:
            yield from _toc_files(v)


def test_every_chapter_has_source_executed_chapter_json_and_toc_entry():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = list(_toc_files(toc))
    for cid in IDS:
        assert (ROOT / CHAPTERS[cid].source).is_file(), cid
        assert (ROOT / "book" / f"{cid}.ipynb").is_file(), f"{cid}: run `prefdyn run {cid} --into-book`"
        assert (ROOT / "book" / "data" / f"{cid}.json").is_file(), cid
        assert f"book/{cid}" in files, f"{cid} missing from _toc.yml"
    for f in files:
        assert (ROOT / f"{f}.md").is_file() or (ROOT / f"{f}.ipynb").is_file(), f
        stem = Path(f).name
        if (ROOT / f"{f}.ipynb").is_file():
            assert stem in CHAPTERS, f"{f}.ipynb is in the toc but not declared in prefdyn.chapters.catalog"
    sources = {p.stem for p in (ROOT / "notebooks").glob("*.md")}
    assert sources == set(IDS), "every notebooks/*.md must be declared in the catalog, and vice versa"


@pytest.mark.parametrize("cid", IDS)
def test_executed_chapter_matches_its_source(cid):
    src, done = _cells(_source(cid)), _cells(_executed(cid))
    assert len(src) == len(done), f"{cid}: cell count differs; re-run `prefdyn run {cid} --into-book`"
    for i, (a, b) in enumerate(zip(src, done)):
        assert a == b, f"{cid}: cell {i} differs from notebooks/{cid}.md; re-run `prefdyn run {cid} --into-book`"


@pytest.mark.parametrize("cid", IDS)
def test_parameters_cell_matches_the_declaration(cid):
    for nb in (_source(cid), _executed(cid)):
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{cid}: exactly one 'parameters' cell"
        assigned = {}
        for node in ast.parse(cells[0].source).body:
            assert isinstance(node, ast.Assign) and len(node.targets) == 1, f"{cid}: parameters cell holds only assignments"
            assigned[node.targets[0].id] = ast.literal_eval(node.value)
        declared = CHAPTERS[cid].defaults()
        assert list(assigned) == list(declared), f"{cid}: parameters cell names/order differ from the catalog"
        for name, value in assigned.items():
            assert CHAPTERS[cid].param(name).coerce(value) == declared[name], f"{cid}: default of {name}"


@pytest.mark.parametrize("cid", IDS)
def test_executed_chapter_is_clean(cid):
    nb = _executed(cid)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), \
        f"{cid}: book/ chapters run with their defaults (no injected parameters)"
    assert "duration" not in nb.metadata.get("papermill", {})
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        assert c.outputs is not None and all(o.output_type != "error" for o in c.outputs), cid
        assert "execution" not in c.metadata
        for o in c.outputs:
            if o.output_type == "stream":
                assert "it/s]" not in o.text and "%|" not in o.text, f"{cid}: progress bar in a stored output"
    assert any(c.cell_type == "code" and c.outputs for c in nb.cells), f"{cid}: no stored outputs for nbval"


@pytest.mark.parametrize("cid", IDS)
def test_the_chapter_saves_its_key_numbers(cid):
    """The chapter ends by saving its key numbers (the JSON the regression compares) and says how many."""
    data = json.loads((ROOT / "book" / "data" / f"{cid}.json").read_text())
    assert data["chapter"] == cid and data["results"]
    assert data["parameters"] == results.rounded(CHAPTERS[cid].defaults())
    text = "".join(
        o.get("text", "") for c in _executed(cid).cells if c.cell_type == "code" for o in c.outputs
        if o.output_type == "stream"
    ).splitlines()
    assert results.saved_line(cid, results.count(data["results"]), len(data.get("claims", []))) in text, \
        f"{cid}: the chapter does not print that it saved its {results.count(data['results'])} key numbers"


@pytest.mark.parametrize("cid", IDS)
def test_cells_left_out_of_nbval_say_why(cid):
    """A cell whose output nbval does not compare carries its reason next to the tag."""
    for i, c in enumerate(_source(cid).cells):
        if "nbval-ignore-output" in c.metadata.get("tags", []):
            reason = c.metadata.get("nbval-ignore-reason", "")
            assert isinstance(reason, str) and len(reason.split()) >= 5, \
                f"{cid}: cell {i} is tagged nbval-ignore-output without an 'nbval-ignore-reason' next to the tag"
        assert "nbval-skip" not in c.metadata.get("tags", []), f"{cid}: cell {i} is skipped by nbval (not executed)"
