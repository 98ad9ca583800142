"""The chapters' JSON results: the numbers a chapter prints are exactly the numbers it saves.

Every chapter ends with ``ch.save_results({...})`` (see :mod:`prefdyn.chapters`), which calls
:func:`save_results` here. Floats are rounded to ``DIGITS`` significant digits *before* they are printed
and saved, so the text nbval compares and the JSON agree digit for digit, and tiny floating-point noise
does not reach either.

Where the JSON goes: ``$PREFDYN_RESULTS_DIR/<chapter>.json`` when that variable is set (the chapter runner
sets it: ``book/data`` for the book, the run folder for ``prefdyn run``), else
``./runs/<chapter>/<chapter>.json`` relative to the working directory (a plain ``papermill`` call), so a
plain run never overwrites the book's golden results.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

ENV = "PREFDYN_RESULTS_DIR"
DIGITS = 4


def fmt(x: Any, digits: int = DIGITS) -> str:
    """Format a number as the chapters print it: ``digits`` significant digits, ints unchanged."""
    x = _plain(x)
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.{digits}g}"
    return str(x)


def _plain(x: Any) -> Any:
    """numpy / torch scalars (and 0-d arrays) to Python scalars; anything else unchanged."""
    if hasattr(x, "item") and getattr(x, "ndim", 0) == 0 and not isinstance(x, (str, bytes)):
        try:
            return x.item()
        except (TypeError, ValueError):
            return x
    return x


def rounded(obj: Any, digits: int = DIGITS) -> Any:
    """A JSON-able copy of ``obj`` with every float rounded to ``digits`` significant digits.

    Dicts keep their key order, tuples and arrays become lists, numpy/torch scalars become Python
    numbers, and non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no NaN),
    exactly as they are printed.
    """
    obj = _plain(obj)
    if isinstance(obj, Mapping):
        return {str(k): rounded(v, digits) for k, v in obj.items()}
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return rounded(obj.tolist(), digits)
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return fmt(obj)
        return float(f"{obj:.{digits}g}")
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"results: cannot save a value of type {type(obj).__name__} ({obj!r})")


def lines(obj: Any, prefix: str = "", digits: int = DIGITS) -> list[str]:
    """``key = value`` lines for a (nested) results dict, nested keys joined with dots."""
    obj = _plain(obj)
    out: list[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.extend(lines(v, key, digits))
        return out
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()
    if isinstance(obj, (list, tuple)):
        text = "[" + ", ".join(fmt(v, digits) if not isinstance(v, (list, dict)) else json.dumps(rounded(v, digits)) for v in obj) + "]"
    else:
        text = fmt(obj, digits)
    return [f"{prefix} = {text}"]


def results_path(chapter: str) -> Path:
    """Where :func:`save_results` writes the JSON of ``chapter`` (see the module docstring)."""
    base = os.environ.get(ENV)
    folder = Path(base) if base else Path.cwd() / "runs" / chapter
    return folder / f"{chapter}.json"


def count(obj: Any) -> int:
    """How many numbers (leaves) a results dict holds."""
    obj = _plain(obj)
    if isinstance(obj, Mapping):
        return sum(count(v) for v in obj.values()) if obj else 1
    if isinstance(obj, (list, tuple)):
        return sum(count(v) for v in obj) if obj else 1
    return 1


def saved_line(chapter: str, n: int, claims: int = 0) -> str:
    """The one line :func:`save_results` prints: machine-independent (no path, no time)."""
    ledger = f", with the ledger of {claims} claim{'s' if claims != 1 else ''}" if claims else ""
    return f"{n} key numbers saved to {chapter}.json{ledger}"


def save_results(chapter: str, results: Mapping[str, Any], parameters: Mapping[str, Any] | None = None,
                 digits: int = DIGITS, echo: bool | str = "count", claims: list | None = None) -> Path:
    """Round ``results`` and write them, with the parameters, to the chapter's JSON.

    ``echo="count"`` (the chapters' default) prints one line, :func:`saved_line`: the chapter shows its
    numbers in tables, and the JSON keeps all of them for :mod:`prefdyn.regression`. ``echo=True`` prints
    every number as a ``key = value`` line (:func:`lines`), ``False`` nothing.

    The JSON holds ``{"chapter", "parameters", "results"}`` (and ``"claims"``, the chapter's ledger of
    :mod:`prefdyn.ledger`, when ``claims`` is given) with deterministic content (no timestamps), so
    the committed ``book/data/*.json`` only changes when a number does.
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results: save_results needs a non-empty dict of named numbers")
    data = {
        "chapter": chapter,
        "parameters": rounded(dict(parameters or {}), digits),
        "results": rounded(results, digits),
    }
    if claims:                               # the chapter's ledger (prefdyn.ledger.entries), already resolved
        data["claims"] = claims
    if echo == "count":
        print(saved_line(chapter, count(data["results"]), len(claims or ())))
    elif echo:
        print("\n".join(lines(results, digits=digits)))
    path = results_path(chapter)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_results(path: str | os.PathLike) -> dict:
    """Read a chapter's JSON results back (``{"chapter", "parameters", "results"}``)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def repo_root(start: Path | None = None) -> Path:
    """The book's root folder: the nearest parent of ``start`` (default: cwd) holding ``_toc.yml`` and
    ``notebooks/``, else the checkout this package was installed from (editable install)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "notebooks").is_dir():
            return folder
    pkg_root = Path(__file__).resolve().parents[2]
    if (pkg_root / "_toc.yml").is_file():
        return pkg_root
    raise FileNotFoundError("cannot find the book's root (a folder with _toc.yml and notebooks/); run from the repository")
