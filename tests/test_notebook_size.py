"""The executed book stays small enough to commit on every re-execution.

A full re-execution rewrites at most every ``book/*.ipynb`` and ``book/data/*.json``, and git stores each
new version as one zlib-compressed object; the sum of those compressed sizes therefore bounds how much the
repository grows per re-execution. Nearly all of it is the figures: PNGs inside the notebooks (base64),
which zlib cannot compress further, so their size is set by ``prefdyn.plotting``'s DPI and figure sizes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import zlib
from pathlib import Path

import pytest
from PIL import Image

BOOK = Path(__file__).resolve().parents[1] / "book"
#: Repository growth allowed per full re-execution of the book (bytes, git's zlib objects).
MAX_GROWTH = 1_000_000
#: Widest figure allowed (pixels). The site shows cell outputs 688 CSS px wide (sphinx-book-theme at the
#: browser test's 1280 x 800 viewport), so beyond twice that (a 2x HiDPI screen) pixels are never seen.
MAX_PNG_WIDTH = 2 * 688


def compressed_size(data: bytes) -> int:
    """The size of ``data`` as git stores a new object of it (zlib at git's default level)."""
    return len(zlib.compress(data, zlib.Z_DEFAULT_COMPRESSION))


def book_files() -> list[Path]:
    return sorted(BOOK.glob("*.ipynb")) + sorted((BOOK / "data").glob("*.json"))


def notebook_pngs(path: Path) -> list[tuple[str, bytes]]:
    """Every PNG in the outputs of notebook ``path``, with the cell it belongs to."""
    nb = json.loads(path.read_text())
    return [(f"{path.name} cell {i}", base64.b64decode(out["data"]["image/png"]))
            for i, cell in enumerate(nb["cells"]) for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]


def growth_report(files: list[Path]) -> tuple[int, str]:
    """The compressed size of ``files`` and a line naming the total and the largest files."""
    sizes = {f"{p.parent.name}/{p.name}": compressed_size(p.read_bytes()) for p in files}
    total = sum(sizes.values())
    largest = ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:5])
    return total, f"{total / 1e6:.2f} MB compressed over {len(files)} files (largest: {largest})"


def too_wide(path: Path) -> list[str]:
    """The PNGs of notebook ``path`` wider than ``MAX_PNG_WIDTH``, with their sizes in pixels."""
    found = []
    for where, png in notebook_pngs(path):
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG", where
            if im.width > MAX_PNG_WIDTH:
                found.append(f"{where}: {im.width} x {im.height} px")
    return found


def _with_output(src: Path, dst: Path, png: bytes) -> Path:
    """A copy of notebook ``src`` at ``dst`` with one more cell showing ``png``."""
    nb = json.loads(src.read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "source": "", "execution_count": None,
                        "outputs": [{"output_type": "display_data", "metadata": {},
                                     "data": {"image/png": base64.b64encode(png).decode()}}]})
    dst.write_text(json.dumps(nb))
    return dst


def _smallest_notebook() -> Path:
    return min(BOOK.glob("*.ipynb"), key=lambda p: p.stat().st_size)


def test_the_book_has_notebooks_with_figures():
    notebooks = sorted(BOOK.glob("*.ipynb"))
    assert len(notebooks) >= 10, notebooks
    assert sum(len(notebook_pngs(p)) for p in notebooks) >= 10


def test_repository_growth_per_full_reexecution():
    total, report = growth_report(book_files())
    assert total < MAX_GROWTH, (
        f"a full re-execution of the book may add {report} to the repository, more than "
        f"{MAX_GROWTH / 1e6:.1f} MB: lower prefdyn.plotting's DPI or the figure sizes")


def test_growth_bound_catches_a_larger_book(tmp_path):
    """The same measure passes one small notebook and fails it once it carries an incompressible figure of
    the bound's size."""
    small = _smallest_notebook()
    assert growth_report([small])[0] < MAX_GROWTH
    big = _with_output(small, tmp_path / small.name, os.urandom(MAX_GROWTH))
    assert growth_report([big])[0] > MAX_GROWTH


@pytest.mark.parametrize("path", sorted(BOOK.glob("*.ipynb")), ids=lambda p: p.stem)
def test_figures_are_not_wider_than_the_page_can_show(path):
    assert too_wide(path) == [], f"figures wider than {MAX_PNG_WIDTH} px"


def test_width_check_catches_a_wide_figure(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (MAX_PNG_WIDTH + 1, 10), "white").save(buf, format="PNG")
    wide = _with_output(_smallest_notebook(), tmp_path / "wide.ipynb", buf.getvalue())
    assert too_wide(wide) == [f"wide.ipynb cell {len(json.loads(wide.read_text())['cells']) - 1}: "
                              f"{MAX_PNG_WIDTH + 1} x 10 px"]
