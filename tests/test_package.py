"""The package's shape: ``import prefdyn`` exposes every module, and imports only go one way
(losses -> science modules -> chapters/CLI)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import prefdyn

LIB = Path(prefdyn.__file__).parent

#: Each module's layer: a module may import from its own layer or the layers below, never above.
LAYERS = {
    "validate": 0, "device": 0, "progress": 0, "stats": 0,
    "losses": 1,
    "symbolic": 2, "records": 2, "toy": 3, "fields": 2, "printed": 3, "rlhf": 4, "imbalance": 4, "probes": 4, "lm": 4, "bench": 4,
    "regression": 2, "results": 2, "ledger": 3, "tables": 2, "plotting": 2,
    "chapters": 5, "sitebuild": 5, "cli": 6,
}


def _module_of(path: Path) -> str:
    rel = path.relative_to(LIB).with_suffix("")
    return rel.parts[0]


def _prefdyn_imports(path: Path, root: Path = LIB) -> set[str]:
    """Top-level prefdyn modules imported by ``path`` (absolute ``prefdyn.x`` and relative ``.x``/``..x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = path.relative_to(root).parts
    out = set()
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:                  # annotations only: no import at run time
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.split(".")[0] == "prefdyn":
                    parts = node.module.split(".")[1:]
                    out.add(parts[0] if parts else None)
                    if not parts:
                        out.update(a.name for a in node.names)
                continue
            base = list(here[:-1])[: len(here) - node.level]        # the package the import is relative to
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                out.add(parts[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "prefdyn" and "." in a.name:
                    out.add(a.name.split(".")[1])
    out.discard(None)
    return out


def test_import_prefdyn_exposes_every_module_lazily():
    code = ("import sys, prefdyn; assert 'torch' not in sys.modules; "
            "import prefdyn as p; print(p.toy.train.__module__, p.losses.register.__module__, "
            "p.records.summarise.__module__, p.stats.mean_ci.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["prefdyn.toy.train", "prefdyn.losses", "prefdyn.records", "prefdyn.stats"]
    with pytest.raises(AttributeError, match="nosuch"):
        prefdyn.nosuch  # noqa: B018
    for name in prefdyn._MODULES:
        assert getattr(prefdyn, name).__name__ == f"prefdyn.{name}"


def test_every_module_has_a_layer():
    mods = {_module_of(p) for p in LIB.rglob("*.py") if p.name != "__init__.py" or p.parent != LIB}
    assert mods <= set(LAYERS), f"modules without a layer: {sorted(mods - set(LAYERS))}"


@pytest.mark.parametrize("path", sorted(p for p in LIB.rglob("*.py") if not (p.name == "__init__.py" and p.parent == LIB)),
                         ids=lambda p: str(p.relative_to(LIB)))
def test_imports_only_go_down_the_layers(path):
    me = _module_of(path)
    up = {m: LAYERS[m] for m in _prefdyn_imports(path) if m in LAYERS and m != me and LAYERS[m] > LAYERS[me]}
    assert not up, f"{path.relative_to(LIB)} (layer {LAYERS[me]}) imports from a higher layer: {up}"


def test_the_layer_check_can_fail(tmp_path):
    fake = tmp_path / "toy" / "space.py"
    fake.parent.mkdir()
    fake.write_text("from .. import cli\nfrom ..chapters.runner import run_chapter\nfrom .rng import hash_keys\n",
                    encoding="utf-8")
    assert _prefdyn_imports(fake, tmp_path) == {"cli", "chapters", "toy"}


def test_imbalance_submodules_export_distinct_names():
    """prefdyn.imbalance re-exports theory's and benchmark's names: a name in both would shadow one."""
    from prefdyn.imbalance import benchmark, theory

    both = set(theory.__all__) & set(benchmark.__all__)
    assert not both, f"names exported by both prefdyn.imbalance.theory and .benchmark: {sorted(both)}"
