"""A chapter's key numbers against its golden numbers, under the tolerances the chapter declares.

Every chapter saves its key numbers to JSON (:mod:`prefdyn.results`); the committed ``book/data/<id>.json``
is the golden copy. nbval compares the *printed text* of a chapter literally, which is right for what is
exact (symbolic results, verdicts, float64 computations rounded to 4 digits) and wrong for float32
training results, whose 4th significant digit differs between CPUs (the math library picks its code path
per machine: ``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``, ATen's ``ATEN_CPU_CAPABILITY``) and between the
CPU and a GPU. Cells that print such numbers are excluded from nbval (tag ``nbval-ignore-output`` with a
reason), and their numbers are compared here instead, key by key:

- :class:`Tol` says how one number may differ: ``|a - b| <= atol + rtol * max(|a|, |b|)``; magnitudes at
  or below ``tiny`` are compared on ``log10`` with ``log10_atol`` (a probability of ``1e-36`` that comes
  out ``1.1e-36`` elsewhere is the same result; ``tiny=inf`` compares on ``log10`` at every magnitude, for
  ratios like ``1e39``); ``ignore`` skips a key (with a ``reason``);
- :class:`Tolerances` maps the flattened keys of a chapter's results (``a.b[2].c``) to a :class:`Tol` by
  ``fnmatch`` patterns, first match wins, else ``default`` (exact unless declared). Each chapter declares
  its :class:`Tolerances` once, in :mod:`prefdyn.chapters.catalog`;
- :func:`compare` returns every difference beyond tolerance as a :class:`Mismatch`, whose text names the
  chapter, the key and both values. Booleans and strings are always compared exactly; ``"nan"``,
  ``"inf"`` and ``null`` (how :mod:`prefdyn.results` saves non-finite numbers) equal only themselves.

A run on a GPU (parameter ``device`` resolved to ``cuda``) is compared with every tolerance loosened by
:data:`GPU_LOOSENING` (exact rules stay exact): float32 reductions on a GPU are ordered differently from
the CPU's. That factor is a declared policy, not yet a measurement (no GPU was available when it was
set); ``prefdyn check`` reports the largest deviations of a GPU run so that it can be calibrated.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

#: Factor applied to rtol, atol and log10_atol when the produced run executed on a GPU (module docstring).
GPU_LOOSENING = 10.0


@dataclass(frozen=True)
class Tol:
    """How far one number may move: ``|a - b| <= atol + rtol * max(|a|, |b|)``, or, when both magnitudes
    are at or below ``tiny`` (and ``log10_atol`` is set), ``|log10|a| - log10|b|| <= log10_atol``.

    ``floor`` (default 0: off): two numbers of the same sign that are both at or below ``floor`` in
    magnitude, or both at or above ``1/floor``, agree whatever their values. For float32 training, where a
    probability below about 1e-30 sits at the edge of the representable range (normal numbers end at
    1.2e-38 and subnormals are flushed), it says only that the probability underflowed, and a ratio
    above 1e30 only that it overflowed; which power of ten it reached depends on the last bits of the
    arithmetic.

    ``ignore=True`` skips the key entirely; ``reason`` says why a tolerance is what it is.
    """

    rtol: float = 0.0
    atol: float = 0.0
    tiny: float = 0.0
    log10_atol: float | None = None
    ignore: bool = False
    reason: str = ""
    floor: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.floor, (int, float)) and 0 <= self.floor < 1):
            raise ValueError(f"Tol: floor must be a number in [0, 1) (got {self.floor!r})")
        for name in ("rtol", "atol", "tiny"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not math.isnan(v) and v >= 0
                    and (math.isfinite(v) or name == "tiny")):
                raise ValueError(f"Tol: {name} must be a finite number >= 0 (got {v!r})"
                                 + (" (tiny may be inf: compare on log10 at every magnitude)" if name == "tiny" else ""))
        if self.log10_atol is not None and not (math.isfinite(self.log10_atol) and self.log10_atol >= 0):
            raise ValueError(f"Tol: log10_atol must be a finite number >= 0 or None (got {self.log10_atol!r})")
        if self.tiny > 0 and self.log10_atol is None:
            raise ValueError("Tol: tiny needs log10_atol (how far log10 may move below it)")

    @property
    def exact(self) -> bool:
        return not self.ignore and self.rtol == 0 and self.atol == 0 and self.log10_atol is None

    def loosened(self, factor: float) -> "Tol":
        """This tolerance with rtol, atol and log10_atol multiplied by ``factor`` (exact stays exact)."""
        if self.exact or self.ignore:
            return self
        return replace(self, rtol=self.rtol * factor, atol=self.atol * factor,
                       log10_atol=None if self.log10_atol is None else self.log10_atol * factor)

    def describe(self) -> str:
        """The rule in words, as the failure messages and the README quote it."""
        if self.ignore:
            return "ignored" + (f" ({self.reason})" if self.reason else "")
        if self.exact:
            return "exact"
        parts = []
        if self.rtol:
            parts.append(f"rtol {self.rtol:g}")
        if self.atol:
            parts.append(f"atol {self.atol:g}")
        if self.log10_atol is not None and self.tiny > 0:
            parts.append(f"log10 within {self.log10_atol:g}"
                         + ("" if math.isinf(self.tiny) else f" below {self.tiny:g}"))
        if self.floor:
            parts.append(f"equal below {self.floor:g} and above {1 / self.floor:g}")
        return ", ".join(parts)

    def accepts(self, golden: float, produced: float) -> bool:
        """Whether two finite numbers agree under this tolerance."""
        if golden == produced:
            return True
        if self.ignore:
            return True
        a, b = abs(golden), abs(produced)
        if self.floor and (golden > 0) == (produced > 0) and (
                max(a, b) <= self.floor or min(a, b) >= 1 / self.floor):
            return True
        if (self.log10_atol is not None and self.tiny > 0 and a <= self.tiny and b <= self.tiny):
            if a == 0 or b == 0 or (golden > 0) != (produced > 0):
                return max(a, b) <= self.atol
            return abs(math.log10(a) - math.log10(b)) <= self.log10_atol
        return abs(golden - produced) <= self.atol + self.rtol * max(a, b)


EXACT = Tol()


@dataclass(frozen=True)
class Tolerances:
    """A chapter's tolerances: ``rules`` are ``(pattern, Tol)`` pairs matched in order against the
    flattened key (``fnmatch``, so ``*`` also matches dots); keys no pattern matches use ``default``."""

    default: Tol = EXACT
    rules: tuple[tuple[str, Tol], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple((str(p), t) for p, t in self.rules))
        for p, t in self.rules:
            if not isinstance(t, Tol):
                raise ValueError(f"Tolerances: the rule for {p!r} must be a Tol (got {type(t).__name__})")

    def for_key(self, key: str) -> Tol:
        for pattern, tol in self.rules:
            if fnmatch.fnmatchcase(key, pattern):
                return tol
        return self.default

    def loosened(self, factor: float) -> "Tolerances":
        return Tolerances(self.default.loosened(factor), tuple((p, t.loosened(factor)) for p, t in self.rules))

    def describe(self) -> list[str]:
        """One line per rule, then the default."""
        return [f"{p}: {t.describe()}" for p, t in self.rules] + [f"everything else: {self.default.describe()}"]


EXACT_TOLERANCES = Tolerances()


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(key, leaf)`` pairs of a nested results dict: dict keys joined by ``.``, list items as ``[i]``.
    An empty dict or list is itself a leaf (so that it is compared, not lost)."""
    if isinstance(obj, Mapping) and obj:
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)) and obj:
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _number(v: Any) -> float | None:
    """A JSON leaf as a float if it is a number (``"nan"``/``"inf"``/``null`` are non-finite numbers);
    ``None`` if it is a bool, a string or a container."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if v is None:
        return math.nan
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    return None


def _text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)


@dataclass(frozen=True)
class Mismatch:
    """One key whose produced value differs from the golden value beyond its tolerance."""

    chapter: str
    key: str
    golden: Any
    produced: Any
    rule: str

    def __str__(self) -> str:
        return (f"{self.chapter}: {self.key} = {_text(self.produced)}, golden {_text(self.golden)} "
                f"(tolerance: {self.rule})")


_MISSING = object()


def _same(g: Any, p: Any, tol: Tol) -> bool:
    if tol.ignore:
        return True
    gn, pn = _number(g), _number(p)
    if gn is None or pn is None:                          # bools, strings, containers: exact, same type
        return type(g) is type(p) and g == p
    if math.isnan(gn) or math.isnan(pn):
        return math.isnan(gn) and math.isnan(pn)
    if math.isinf(gn) or math.isinf(pn):
        return gn == pn
    return tol.accepts(gn, pn)


def compare(chapter: str, produced: Mapping[str, Any], golden: Mapping[str, Any],
            tolerances: Tolerances = EXACT_TOLERANCES) -> list[Mismatch]:
    """Every key of ``golden`` whose value in ``produced`` differs beyond its tolerance, every key missing
    from ``produced`` and every key ``produced`` has that ``golden`` lacks (both results dicts)."""
    g = dict(flatten(golden))
    p = dict(flatten(produced))
    out: list[Mismatch] = []
    for key, gv in g.items():
        tol = tolerances.for_key(key)
        pv = p.get(key, _MISSING)
        if pv is _MISSING:
            if not tol.ignore:
                out.append(Mismatch(chapter, key, gv, "<missing>", "the key must exist"))
            continue
        if not _same(gv, pv, tol):
            out.append(Mismatch(chapter, key, gv, pv, tol.describe()))
    for key in p.keys() - g.keys():
        if not tolerances.for_key(key).ignore:
            out.append(Mismatch(chapter, key, "<missing>", p[key], "the key is not in the golden results"))
    return out


def deviations(produced: Mapping[str, Any], golden: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per numeric key present in both: ``abs`` and ``rel`` difference and, for two non-zero numbers of
    the same sign, ``log10`` difference. The raw material for choosing tolerances (``prefdyn check``)."""
    g = dict(flatten(golden))
    p = dict(flatten(produced))
    out = {}
    for key in g.keys() & p.keys():
        a, b = _number(g[key]), _number(p[key])
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        d = {"golden": a, "produced": b, "abs": abs(a - b),
             "rel": abs(a - b) / max(abs(a), abs(b)) if max(abs(a), abs(b)) > 0 else 0.0}
        if a != 0 and b != 0 and (a > 0) == (b > 0):
            d["log10"] = abs(math.log10(abs(a)) - math.log10(abs(b)))
        out[key] = d
    return out


def on_gpu(parameters: Mapping[str, Any]) -> bool:
    """Whether a run with these parameters executed on a GPU (``device`` "cuda", or "auto" on a machine
    with CUDA)."""
    device = str(parameters.get("device", "cpu"))
    if device.startswith("cuda"):
        return True
    if device == "auto":
        try:
            import torch

            return bool(torch.cuda.is_available())
        except ImportError:  # pragma: no cover - torch is a dependency
            return False
    return False


def parameter_differences(produced: Mapping[str, Any], golden: Mapping[str, Any],
                          ignore: Sequence[str] = ("device",)) -> list[str]:
    """Parameters (other than ``ignore``) whose values differ: a comparison with golden results is only
    meaningful for a run with the golden parameters."""
    out = []
    for name in sorted(set(produced) | set(golden)):
        if name in ignore:
            continue
        if produced.get(name, _MISSING) != golden.get(name, _MISSING):
            out.append(f"{name}: {produced.get(name, '<missing>')!r} (golden {golden.get(name, '<missing>')!r})")
    return out


def check_data(chapter, produced: Mapping[str, Any], golden: Mapping[str, Any], *,
               check_parameters: bool = True) -> list[Mismatch]:
    """:func:`compare` two chapter JSON documents (``{"chapter", "parameters", "results"}``) under
    ``chapter.tolerances``, loosened by :data:`GPU_LOOSENING` if the run executed on a GPU.

    With ``check_parameters``, a run made with other parameters than the golden one (``device`` aside)
    is a single mismatch on ``parameters``: only a run at the golden parameters can reproduce it.
    """
    if check_parameters:
        diff = parameter_differences(produced.get("parameters", {}), golden.get("parameters", {}))
        if diff:
            return [Mismatch(chapter.id, "parameters", golden.get("parameters"), produced.get("parameters"),
                             "a run is compared with the golden results only at the golden parameters; differs in "
                             + "; ".join(diff))]
    tolerances = chapter.tolerances
    if on_gpu(produced.get("parameters", {})):
        tolerances = tolerances.loosened(GPU_LOOSENING)
    return compare(chapter.id, produced.get("results", {}), golden.get("results", {}), tolerances)


def report(mismatches: Sequence[Mismatch], limit: int = 40) -> str:
    """The mismatches as lines, at most ``limit`` of them (then a count of the rest)."""
    lines = [str(m) for m in mismatches[:limit]]
    if len(mismatches) > limit:
        lines.append(f"... and {len(mismatches) - limit} more")
    return "\n".join(lines)
