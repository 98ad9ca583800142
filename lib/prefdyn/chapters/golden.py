"""The chapters' golden results: ``book/data/<id>.json``, and a run's JSON checked against them under the
chapter's tolerances (:mod:`prefdyn.regression` does the comparing; this is the chapter-side lookup)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..regression import Mismatch, check_data
from .catalog import get_chapter
from .runner import repo_root

__all__ = ["golden_path", "check"]


def golden_path(chapter_id: str) -> Path:
    """The committed golden results of a chapter: ``book/data/<id>.json``."""
    return repo_root() / "book" / "data" / f"{chapter_id}.json"


def check(chapter_id: str, produced_json: str | os.PathLike, golden_json: str | os.PathLike | None = None,
          *, check_parameters: bool = True) -> list[Mismatch]:
    """:func:`check_data` on a run's JSON file and the golden one (default :func:`golden_path`).
    Returns the mismatches (empty: the run reproduces the book)."""
    chapter = get_chapter(chapter_id)
    produced = json.loads(Path(produced_json).read_text(encoding="utf-8"))
    golden = json.loads(Path(golden_json or golden_path(chapter.id)).read_text(encoding="utf-8"))
    return check_data(chapter, produced, golden, check_parameters=check_parameters)
