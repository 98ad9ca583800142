"""The "Rerun this chapter" boxes and the Parameters page say what the declarations say, and stay current.

- each box, parsed as the book parses it (MyST's markdown-it), holds a table row per declared parameter with
  its name, default (as the command line takes it), allowed values and meaning, and every constraint;
- its commands parse with ``prefdyn``'s own parser and their values pass the chapter's validation;
- every executed chapter ``book/<id>.ipynb`` holds exactly one box, the current one, after its introduction,
  and :func:`refresh_book_notebooks` changes nothing else in the file;
- the committed ``book/parameters.md`` is a fresh rendering; ``prefdyn list`` prints every constraint.
"""

from __future__ import annotations

import copy
import json
import shlex
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml
from markdown_it.renderer import RendererHTML
from myst_parser.config.main import MdParserConfig
from myst_parser.parsers.mdit import create_md_parser

from prefdyn import cli
from prefdyn.chapters import CHAPTERS, Chapter, Param
from prefdyn.chapters import pages, rerun
from prefdyn.chapters.params import format_value, parse_overrides
from prefdyn.chapters.runner import source_notebook

ROOT = Path(__file__).resolve().parents[1]
IDS = list(CHAPTERS)
MD = create_md_parser(MdParserConfig(enable_extensions={"amsmath", "colon_fence", "deflist", "dollarmath",
                                                        "substitution"}), RendererHTML)


# ------------------------------------------------------------------------------------------- parsing
def _inline_text(token) -> str:
    """The visible text of an inline token (code and math kept as written, raw HTML such as <wbr> dropped)."""
    out = []
    for t in token.children or []:
        if t.type in ("text", "code_inline", "math_inline"):
            out.append(t.content)
        elif t.type in ("softbreak", "hardbreak"):
            out.append(" ")
    return " ".join("".join(out).split())


def _dropdown(box: str) -> tuple[str, list]:
    """The dropdown's title and the tokens of its body (parsed again, as sphinx-design does)."""
    tokens = MD.parse(box)
    fences = [t for t in tokens if t.type == "colon_fence"]
    assert len(fences) == 1 and fences[0].info.strip().startswith("{dropdown}"), box[:200]
    assert len([t for t in tokens if t.type != "colon_fence"]) == 0, "everything is inside the box"
    title = fences[0].info.strip()[len("{dropdown}"):].strip()
    body = fences[0].content
    options = [line for line in body.splitlines() if line.startswith(":")]
    assert not any(o.startswith(":open:") for o in options), "the box must be collapsed"
    return title, MD.parse(body)


def _table(tokens) -> list[list[str]]:
    """The rows (header first) of the only table in ``tokens``, as visible text per cell."""
    rows, row, n_tables = [], None, 0
    for t in tokens:
        if t.type == "table_open":
            n_tables += 1
        elif t.type == "tr_open":
            row = []
        elif t.type == "tr_close":
            rows.append(row)
        elif t.type == "inline" and row is not None:
            row.append(_inline_text(t))
        elif t.type == "table_close":
            row = None
    assert n_tables <= 1
    return rows


def _list_items(tokens) -> list[str]:
    items, inside = [], False
    for t in tokens:
        if t.type == "list_item_open":
            inside = True
        elif t.type == "list_item_close":
            inside = False
        elif t.type == "inline" and inside:
            items.append(_inline_text(t))
    return items


def _fenced(tokens) -> list[str]:
    return [line for t in tokens if t.type == "fence" and t.info.strip() == "bash" for line in t.content.splitlines()]


# ------------------------------------------------------------------------------------------- the box
@pytest.mark.parametrize("cid", IDS)
def test_box_lists_every_parameter_default_and_constraint(cid):
    chapter = CHAPTERS[cid]
    title, body = _dropdown(rerun.rerun_box(chapter))
    assert title == "Rerun this chapter"
    rows = _table(body)
    assert rows[0] == ["Parameter", "Default", "Allowed", "Meaning"]
    expected = [[p.name, format_value(p.default), " ".join(p.allowed().split()), " ".join(p.help.split())]
                for p in chapter.params]
    assert rows[1:] == expected, f"{cid}: the table differs from the declaration"
    descriptions = [" ".join(cli.describe_check(c).split()) for c in chapter.checks]
    assert _list_items(body) == descriptions, f"{cid}: the constraints differ from the declaration"
    assert rerun.NO_PARAMETERS not in rerun.rerun_box(chapter)


@pytest.mark.parametrize("cid", IDS)
def test_box_commands_parse_with_prefdyn_and_their_values_validate(cid):
    chapter = CHAPTERS[cid]
    lines = _fenced(_dropdown(rerun.rerun_box(chapter))[1])
    cmds = rerun.commands(chapter)
    assert set(cmds.values()) <= set(lines), f"{cid}: a command is missing from the box"
    example = rerun.example_param(chapter)
    assert example is not None and example.name in chapter.param_names
    parser = cli.build_parser()
    for kind, func in (("run", cli._cmd_run), ("check", cli._cmd_check)):
        words = shlex.split(cmds[kind])
        assert words[0] == "prefdyn"
        argv, pairs = cli.extract_params(words[1:])        # as prefdyn's main() does
        args = parser.parse_args(argv)
        assert args.func is func and args.chapter == cid
        pairs = (args.param or []) + pairs if kind == "run" else pairs
        if kind == "run":
            assert pairs == [[example.name, format_value(example.default)]]
            assert chapter.resolve(parse_overrides(pairs)) == chapter.defaults()
    words = shlex.split(cmds["papermill"])
    assert words[:3] == ["papermill", f"book/{cid}.ipynb", f"runs/{cid}.ipynb"]
    assert (ROOT / words[1]).is_file()
    pairs = [words[i + 1:i + 3] for i, w in enumerate(words) if w == "-p"]
    assert chapter.resolve(parse_overrides(pairs)) == chapter.defaults()


def test_a_chapter_without_parameters_says_so():
    chapter = Chapter("no-params", "A chapter with nothing to set", "9 Test")
    box = rerun.rerun_box(chapter)
    title, body = _dropdown(box)
    assert title == "Rerun this chapter"
    assert rerun.NO_PARAMETERS in box and _table(body) == []
    assert rerun.parameters_table(chapter) == rerun.NO_PARAMETERS
    assert rerun.commands(chapter) == {"run": "prefdyn run no-params", "check": "prefdyn check no-params",
                                       "papermill": "papermill book/no-params.ipynb runs/no-params.ipynb"}


def test_table_cells_survive_bars_math_and_long_lists():
    """A ``|`` in a meaning (also inside math) does not break the table; a long list default wraps (<wbr>)
    yet reads, and copies, as the command line takes it."""
    chapter = Chapter("bars", "Bars", "9 Test", params=[
        Param("x", "float", 1.0, "uses |x| and $|y|_2$ of the `a|b` option", low=0.0),
        Param("names", "list[str]", ["a b", "c"], "names, one item with a space"),
        Param("sep", "str", "a|b", "a separator"),
    ], checks=[lambda p: None])
    chapter.checks[0].description = "x | anything"
    rows = _table(_dropdown(rerun.rerun_box(chapter))[1])
    assert rows[1] == ["x", "1", "a number >= 0", "uses |x| and |y|_2 of the a|b option"]
    assert rows[2][:2] == ["names", "a b,c"]
    assert rows[3] == ["sep", "a|b", "a string", "a separator"]
    assert "`a b`,<wbr>`c`" in rerun.parameters_table(chapter)
    assert chapter.validate({"names": rows[2][1]}) == {"names": ["a b", "c"]}
    assert "-p x 1" in rerun.commands(chapter)["run"]
    assert _list_items(_dropdown(rerun.rerun_box(chapter))[1]) == ["x | anything"]


# ------------------------------------------------------------------------------------------- notebooks
@pytest.mark.parametrize("cid", IDS)
def test_every_book_notebook_has_exactly_one_current_box(cid):
    nb = nbformat.read(ROOT / "book" / f"{cid}.ipynb", as_version=4)
    boxes = [i for i, c in enumerate(nb.cells) if rerun.is_generated(c)]
    assert len(boxes) == 1, f"{cid}: run `prefdyn book --no-execute` to refresh the boxes"
    cell = nb.cells[boxes[0]]
    assert cell.id == rerun.CELL_ID and cell.cell_type == "markdown"
    assert cell.source == rerun.rerun_box(CHAPTERS[cid]).rstrip("\n"), \
        f"{cid}: the box is out of date; run `prefdyn book --no-execute`"
    first_md = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown")
    assert boxes[0] == first_md + 1, f"{cid}: the box belongs right after the introduction"
    expected = rerun.insert_box(copy.deepcopy(nb), CHAPTERS[cid], executed=True).cells[boxes[0]]
    assert cell == expected                                   # metadata too: as a re-execution writes it


def _without_box(text: str) -> dict:
    data = json.loads(text)
    data["cells"] = [c for c in data["cells"] if c.get("metadata", {}).get("prefdyn") != "generated"]
    return data


def _nbformat_text(data: dict) -> str:
    return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n"   # as nbformat.write


@pytest.mark.parametrize("cid", ["dpo-margin", "imbalance"])
def test_refresh_book_notebooks_changes_only_the_box(tmp_path, cid):
    committed = (ROOT / "book" / f"{cid}.ipynb").read_text(encoding="utf-8")
    (tmp_path / "book").mkdir()
    target = tmp_path / "book" / f"{cid}.ipynb"

    stale = json.loads(committed)                              # an old box: replaced, not doubled
    for c in stale["cells"]:
        if c.get("metadata", {}).get("prefdyn") == "generated":
            c["source"] = ["an old box"]
    for start in (_nbformat_text(_without_box(committed)), _nbformat_text(stale)):
        target.write_text(start, encoding="utf-8")
        assert rerun.refresh_book_notebooks(tmp_path) == [f"book/{cid}.ipynb"]
        after = target.read_text(encoding="utf-8")
        assert _without_box(after) == _without_box(start)       # nothing else changed ...
        assert after == committed                               # ... byte for byte, box included
        assert rerun.refresh_book_notebooks(tmp_path) == []     # current: not rewritten
        assert not list((tmp_path / "book").glob(".*"))         # no partial file left


def test_source_notebook_inserts_the_box_after_the_ids():
    chapter = CHAPTERS["dpo-margin"]
    import jupytext

    plain = jupytext.read(ROOT / chapter.source)
    nb = source_notebook(chapter, ROOT)
    source_cells = [c for c in nb.cells if not rerun.is_generated(c)]
    assert [c.id for c in source_cells] == [f"cell-{i:03d}" for i in range(len(plain.cells))]
    assert [c.source for c in source_cells] == [c.source for c in plain.cells]
    assert [c.id for c in nb.cells].index(rerun.CELL_ID) == 1
    assert nb.cells[1].metadata == rerun.MARK and nb.cells[1].source == rerun.rerun_box(chapter).rstrip("\n")


# ------------------------------------------------------------------------------------------- the page
def test_committed_parameters_page_is_a_fresh_rendering():
    assert pages.PAGES["book/parameters.md"] == "prefdyn.chapters.rerun:parameters_page"
    committed = (ROOT / "book" / "parameters.md").read_text(encoding="utf-8")
    assert committed == pages.render("book/parameters.md", ROOT), "run `prefdyn book --no-execute`"
    tokens = MD.parse(committed)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h2"]
    assert headings == [c.title for c in CHAPTERS.values()]                 # book order
    for chapter in CHAPTERS.values():
        section = committed.split(f"## {chapter.title}\n", 1)[1].split("\n## ", 1)[0]
        assert f"{{doc}}`{chapter.id}`" in section
        assert rerun.parameters_table(chapter) in section                  # the boxes' table, one source


def test_parameters_page_is_in_the_toc_after_performance():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    back = next(p for p in toc["parts"] if p["caption"] == "Back matter")
    files = [c["file"] for c in back["chapters"]]
    assert files[files.index("book/performance") + 1] == "book/parameters"


# ------------------------------------------------------------------------------------------- prefdyn list
def _blocks(text: str) -> dict[str, str]:
    return {b.split("  -  ", 1)[0]: b for b in text.strip().split("\n\n")}


def test_prefdyn_list_prints_every_constraint(capsys):
    assert cli.main(["list"]) == 0
    every = _blocks(capsys.readouterr().out)
    assert list(every) == IDS
    for cid, chapter in CHAPTERS.items():
        assert cli.main(["list", cid]) == 0
        one = _blocks(capsys.readouterr().out)
        assert list(one) == [cid]
        for text in (every[cid], one[cid]):
            assert ("constraints:" in text) == bool(chapter.checks), cid
            for check in chapter.checks:
                assert cli.describe_check(check) in text, f"{cid}: {cli.describe_check(check)}"


def test_book_refreshes_the_boxes_before_writing_the_pages(tmp_path, monkeypatch):
    """``prefdyn book --no-execute --no-build`` updates a stale box in place (no execution)."""
    root = tmp_path / "root"
    (root / "book").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    shutil.copy(ROOT / "book" / "dpo-margin.ipynb", root / "book" / "dpo-margin.ipynb")
    data = json.loads((root / "book" / "dpo-margin.ipynb").read_text())
    data["cells"] = [c for c in data["cells"] if c["id"] != rerun.CELL_ID]
    (root / "book" / "dpo-margin.ipynb").write_text(_nbformat_text(data))
    monkeypatch.setattr(pages, "PAGES", {})                   # no page renderers here: only the boxes
    monkeypatch.chdir(root)
    assert cli.main(["book", "--no-execute", "--no-build"]) == 0
    assert (root / "book" / "dpo-margin.ipynb").read_text() == (ROOT / "book" / "dpo-margin.ipynb").read_text()
