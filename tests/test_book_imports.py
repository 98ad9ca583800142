"""Every third-party module a chapter imports is a declared dependency of prefdyn.

A chapter (``notebooks/*.md``, jupytext MyST) runs in the environment of ``pip install prefdyn[book]``, so
each module its code cells import, directly or through the ``prefdyn`` modules they import (including the
imports inside their functions, which a chapter may call), must belong to a distribution that
``pyproject.toml`` declares: a base dependency or one of the ``[book]`` extra. A module that only arrives as
a dependency of a dependency (IPython through ipykernel, pandas through TRL) is not enough: the book would
break the day that package drops it.

Import names are mapped to distributions with ``importlib.metadata.packages_distributions()`` (``IPython``
-> ``ipython``, ``mpl_toolkits`` -> ``matplotlib``). Static (``ast``) on purpose: it sees lazy imports, runs
nothing, and is not fooled by optional imports that third-party packages make when something happens to be
installed (torch imports ``dill`` if present).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib" / "prefdyn"
CHAPTERS = sorted((ROOT / "notebooks").glob("*.md"))
_CELL = re.compile(r"^(?P<fence>`{3,})\{code-cell\}[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.S | re.M)


def _norm(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=None)
def declared() -> frozenset[str]:
    """The base dependencies and the ``[book]`` extra of pyproject.toml (normalised names)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", [])) + list(project["optional-dependencies"]["book"])
    names = {re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1) for r in reqs}
    return frozenset(_norm(n) for n in names)


@lru_cache(maxsize=None)
def distributions_of() -> dict[str, list[str]]:
    return md.packages_distributions()


def third_party(name: str) -> bool:
    return name not in sys.stdlib_module_names and name != "prefdyn"


def cell_sources(chapter: Path) -> list[str]:
    """The code of every ``{code-cell}``: cell options (``:tags: ...`` lines, a ``---`` block) dropped,
    IPython magics and shell lines commented out."""
    out = []
    for m in _CELL.finditer(chapter.read_text(encoding="utf-8")):
        lines = m.group("body").splitlines()
        if lines and lines[0].strip() == "---":
            end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), 0)
            lines = lines[end + 1:]
        while lines and lines[0].startswith(":"):
            lines = lines[1:]
        out.append("\n".join("# " + ln if ln.lstrip().startswith(("%", "!")) else ln for ln in lines))
    return out


def imports_of(tree: ast.AST, package: str | None = None) -> set[str]:
    """Absolute dotted names imported anywhere in ``tree`` (function bodies too). ``from a import b`` yields
    ``a`` and ``a.b`` (``b`` may be a module); relative imports are resolved against ``package``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    continue
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names if a.name != "*")
    return out


def _module_file(dotted: str) -> Path | None:
    """The source of a ``prefdyn`` module (``None`` if ``dotted`` names no module, e.g. a function)."""
    parts = dotted.split(".")[1:]
    init = PACKAGE.joinpath(*parts, "__init__.py")
    if init.is_file():
        return init
    if parts:
        mod = PACKAGE.joinpath(*parts[:-1], parts[-1] + ".py")
        if mod.is_file():
            return mod
    return None


def prefdyn_closure(names: set[str]) -> dict[str, Path]:
    """Every ``prefdyn`` module that importing ``names`` can load, following the imports of each module
    (lazy ones inside functions too) and the packages above each module."""
    todo = [n for n in names if n == "prefdyn" or n.startswith("prefdyn.")]
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for k in range(1, len(parts) + 1):                    # importing a.b.c runs a, a.b, a.b.c
            mod = ".".join(parts[:k])
            if mod in seen:
                continue
            path = _module_file(mod)
            if path is None:
                continue
            seen[mod] = path
            package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
            todo.extend(n for n in imports_of(ast.parse(path.read_text(encoding="utf-8")), package)
                        if n == "prefdyn" or n.startswith("prefdyn."))
    return seen


def undeclared(modules: dict[str, set[str]]) -> list[str]:
    """``"<top-level module> (<where>)"`` for each third-party module whose distribution is not declared."""
    bad = []
    for top, where in sorted(modules.items()):
        dists = distributions_of().get(top)
        if not dists:
            bad.append(f"{top} (not installed; from {', '.join(sorted(where))})")
        elif not any(_norm(d) in declared() for d in dists):
            bad.append(f"{top} -> {'/'.join(sorted(set(dists)))} (from {', '.join(sorted(where))})")
    return bad


def test_the_book_has_chapters_with_code_cells():
    assert CHAPTERS, "no notebooks/*.md"
    for chapter in CHAPTERS:
        assert cell_sources(chapter), chapter.name


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_imports_are_declared_dependencies(chapter):
    direct: dict[str, set[str]] = {}
    via: dict[str, set[str]] = {}
    names: set[str] = set()
    for i, src in enumerate(cell_sources(chapter)):
        try:
            tree = ast.parse(src)
        except SyntaxError as err:
            pytest.fail(f"{chapter.name}: code cell {i} does not parse: {err}")
        names |= imports_of(tree)
    for n in names:
        top = n.split(".")[0]
        if third_party(top):
            direct.setdefault(top, set()).add(f"{chapter.name}")
    for mod, path in prefdyn_closure(names).items():
        for n in imports_of(ast.parse(path.read_text(encoding="utf-8")), mod):
            top = n.split(".")[0]
            if third_party(top):
                via.setdefault(top, set()).add(mod)
    assert not undeclared(direct), (
        f"{chapter.name} imports modules whose distributions pyproject.toml does not declare (add them to the "
        f"[book] extra with a version range; the pin goes to requirements.lock): {undeclared(direct)}")
    assert not undeclared(via), (
        f"the prefdyn modules {chapter.name} imports import undeclared modules (add them to the [book] extra or "
        f"the base dependencies): {undeclared(via)}")


def test_the_import_scan_sees_what_it_should(tmp_path):
    """The scanner itself: cell options and magics, lazy and relative imports, the module closure."""
    path = tmp_path / "probe.md"
    path.write_text("```{code-cell} ipython3\n:tags: [parameters]\n\nx = 1\n```\n\n"
                    "````{code-cell} ipython3\n%matplotlib inline\nimport numpy as np\n"
                    "from IPython.display import display\ndef f():\n    import scipy.stats\n````\n", encoding="utf-8")
    srcs = cell_sources(path)
    assert srcs[0].strip() == "x = 1"
    tops = {n.split(".")[0] for n in imports_of(ast.parse(srcs[1]))}
    assert tops == {"numpy", "IPython", "scipy"}
    assert not any(third_party(t) for t in ("os", "json", "__future__", "prefdyn"))
    assert "prefdyn.validate" in imports_of(ast.parse("from .validate import Range"), "prefdyn")
    assert "prefdyn.losses" in imports_of(ast.parse("from ..losses import get"), "prefdyn.chapters")
    closure = prefdyn_closure({"prefdyn.fields"})
    assert {"prefdyn", "prefdyn.fields", "prefdyn.losses", "prefdyn.validate"} <= set(closure)
    assert "ipython" in distributions_of().get("IPython", [])
    assert not undeclared({"numpy": {"probe.md"}, "mpl_toolkits": {"probe.md"}})     # base dependencies
    # installed (TRL needs it) but not declared: a chapter importing pandas is flagged
    if distributions_of().get("pandas") and "pandas" not in declared():
        assert undeclared({"pandas": {"probe.md"}}) == ["pandas -> pandas (from probe.md)"]
    assert undeclared({"no_such_module_xyz": {"probe.md"}}) == ["no_such_module_xyz (not installed; from probe.md)"]
