"""What a chapter calls right after its ``parameters`` cell: ``ch = start("<id>", globals())``.

:func:`start` validates the chapter's parameters as they stand in the notebook's namespace (defaults,
papermill's injected values, or a reader's edits), seeds every random generator, applies the book's plotting
style and returns a :class:`ChapterContext` whose ``save_results`` prints and saves the key numbers.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, MutableMapping

from .. import results as _results
from .catalog import get_chapter
from .params import Chapter, ParameterError

# papermill's injected cell starts with this comment (papermill.translators).
_INJECTED_HEADER = "# Parameters"


@dataclass
class ChapterContext:
    """The running chapter: its declaration, validated parameters and seed."""

    chapter: Chapter
    params: dict[str, Any]
    seed: int
    claims: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.chapter.id

    @staticmethod
    def fmt(x: Any, digits: int = _results.DIGITS) -> str:
        """Format a number exactly as :meth:`save_results` prints it."""
        return _results.fmt(x, digits)

    def claim(self, id: str, *, source: str, statement: str, evidence: Mapping[str, str], rule: str,
              robust: str | None = None, condition: str = "", section: str = "", note: str = "") -> None:
        """Register a claim of the papers that this chapter tests (:class:`prefdyn.ledger.Claim`): its
        ``evidence`` names keys of the results the chapter will save, ``rule`` (and ``robust``, with the
        ``condition``) decide the verdict from them. Resolved by :meth:`save_results`, which fails before
        writing anything when a key is missing; the verdicts go to the Findings page."""
        from ..ledger import Claim, LedgerError

        c = Claim(id, source, statement, evidence, rule, robust, condition, section, note)
        if any(x.id == c.id for x in self.claims):
            raise LedgerError(f"{self.id}: claim {id} registered twice")
        self.claims.append(c)

    def verdicts(self, results: Mapping[str, Any], width: int = 72) -> None:
        """Print the verdict of every registered claim against ``results`` (the dict the chapter is about to
        save), wrapped at ``width``: what :meth:`save_results` will put in the ledger."""
        from ..ledger import entries, verdict_lines

        print("\n".join(verdict_lines(entries(self.claims, results, self.chapter.id), width)))

    def save_results(self, results: Mapping[str, Any]) -> None:
        """Write ``results`` (rounded to 4 significant digits), with the parameters, to the chapter's JSON
        and print one line saying how many numbers were saved.

        The chapter shows its numbers in tables; the JSON keeps every one of them, and the test suite
        compares it with the golden ``book/data/<id>.json`` under the chapter's declared tolerances
        (:mod:`prefdyn.regression`). Returns nothing (the JSON's path differs between runs).
        """
        from ..ledger import entries

        ledger = entries(self.claims, results, self.chapter.id)     # every claim resolved before writing
        _results.save_results(self.chapter.id, results, self.params, claims=ledger)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (CPU and CUDA)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def injected_names(namespace: Mapping[str, Any]) -> set[str]:
    """Names assigned by papermill's injected-parameters cell(s), read from IPython's input history ``In``.

    papermill only *warns* about a parameter the notebook does not have and injects it anyway; reading its
    cell lets the chapter refuse it like ``prefdyn run`` does.
    """
    names: set[str] = set()
    for source in namespace.get("In", []) or []:
        if not isinstance(source, str) or not source.lstrip().startswith(_INJECTED_HEADER):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _write_back(namespace: MutableMapping[str, Any], params: Mapping[str, Any]) -> None:
    """Replace each parameter in ``namespace`` by its validated, coerced value (a fresh copy of lists, so
    the context's ``params`` and the notebook's variables do not share one mutable list)."""
    for name, value in params.items():
        namespace[name] = list(value) if isinstance(value, list) else value


def start(chapter_id: str, namespace: MutableMapping[str, Any], style: bool = True) -> ChapterContext:
    """Validate the chapter's parameters found in ``namespace`` and set the chapter up.

    ``namespace`` is the notebook's ``globals()``: after validation every parameter in it is replaced by
    its coerced value, so the chapter's cells work on exactly what was validated, however the value came
    in (``papermill -p betas 0.1,0.2`` injects a string, ``-r beta 0.5`` a raw string, ``-p n_seeds 4.0``
    a float for an integer parameter).

    Raises :class:`ParameterError` (one line) for an unknown chapter, a parameter missing from the
    ``parameters`` cell, an unknown parameter (e.g. ``papermill -p nosuch 1``, which papermill itself
    only warns about) or a value out of range.
    """
    chapter = get_chapter(chapter_id)
    values: dict[str, Any] = {}
    for name in chapter.param_names:
        if name not in namespace:
            raise ParameterError(f"{chapter.id}: the parameters cell does not define '{name}'")
        values[name] = namespace[name]
    unknown = sorted(n for n in injected_names(namespace) if n not in values)
    if unknown:
        allowed = ", ".join(chapter.param_names) or "none"
        raise ParameterError(f"{chapter.id}: unknown parameter '{unknown[0]}' (this chapter takes: {allowed})")
    params = chapter.resolve(values)
    _write_back(namespace, params)
    seed = int(params.get("seed", 0))
    seed_everything(seed)
    if style:
        from .. import plotting

        plotting.use_style()
    return ChapterContext(chapter=chapter, params=params, seed=seed)
