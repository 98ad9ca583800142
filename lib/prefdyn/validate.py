"""Argument checks at the API boundary: one-line ``ValueError`` messages that name the argument and what is
allowed, built only when a check fails.

Every public entry point of the library (:func:`prefdyn.toy.run_grid`, :func:`prefdyn.fields.field_grid`,
:func:`prefdyn.rlhf.run_rlhf`, ...) validates its arguments once with these helpers, before any heavy work;
the loops inside run on checked values and never re-validate. The same :class:`Range` describes the
allowed values of a loss parameter (:class:`prefdyn.losses.ParamRange`) and of a chapter parameter
(:class:`prefdyn.chapters.params.Param`), so the two cannot drift.

Message format: ``"<name>: expected <what is allowed>, got <value>"``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["Range", "check_int", "check_number", "check_positive", "check_choice", "check_bool", "num"]


def num(x: float) -> str:
    """A bound as it reads best: ``1e-12``, ``0.5``, ``100``, ``2147483647``."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True, kw_only=True)
class Range:
    """An interval of allowed numbers: ``low``/``high`` (``None`` = unbounded), ``low_open``/``high_open``
    make a bound strict. Numbers must also be finite.

    Keyword-only fields, so that a declaration can inherit them after its own positional ones: a loss
    parameter (:class:`prefdyn.losses.ParamRange`) and a chapter parameter
    (:class:`prefdyn.chapters.params.Param`) are both a ``Range``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def text(self) -> str:
        """The interval in words: ``"in (0, 1]"``, ``">= 0"``, ``"> 0"``, or ``""`` when unbounded."""
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return f"in {'(' if self.low_open else '['}{num(lo)}, {num(hi)}{')' if self.high_open else ']'}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {num(lo)}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {num(hi)}"
        return ""

    @property
    def range(self) -> "Range":
        """The interval alone (a plain, hashable ``Range``), e.g. to compare two declarations' ranges."""
        return Range(low=self.low, high=self.high, low_open=self.low_open, high_open=self.high_open)

    def contains(self, v: float) -> bool:
        """Whether the finite number ``v`` lies in the interval (NaN and infinities never do)."""
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            return False
        return True

    def contains_all(self, t) -> bool:
        """Whether every element of the tensor ``t`` lies in the interval (one reduction per bound)."""
        import torch

        v = t.detach()
        ok = bool(torch.isfinite(v).all())
        if ok and self.low is not None:
            ok = bool((v > self.low).all()) if self.low_open else bool((v >= self.low).all())
        if ok and self.high is not None:
            ok = bool((v < self.high).all()) if self.high_open else bool((v <= self.high).all())
        return ok


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(name: str, v: Any, low: int | None = None, high: int | None = None) -> int:
    """``v`` as an ``int``, or ``ValueError("<name>: expected an integer >= low, got v")``."""
    if _is_int(v) and (low is None or v >= low) and (high is None or v <= high):
        return int(v)
    rng = Range(low=low, high=high).text()
    raise ValueError(f"{name}: expected an integer{' ' + rng if rng else ''}, got {v!r}")


def check_number(name: str, v: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``v`` as a finite ``float`` in the interval, or a one-line ``ValueError`` naming ``name``."""
    r = Range(low=low, high=high, low_open=low_open, high_open=high_open)
    if _is_real(v) and r.contains(float(v)):
        return float(v)
    rng = r.text()
    raise ValueError(f"{name}: expected a finite number{' ' + rng if rng else ''}, got {v!r}")


def check_positive(name: str, v: Any) -> float:
    """``v`` as a finite ``float > 0`` (learning rates, temperatures, ...)."""
    return check_number(name, v, 0.0, low_open=True)


def check_choice(name: str, v: Any, choices: Iterable[Any]) -> Any:
    """``v`` if it is one of ``choices``, else ``ValueError("<name>: expected one of a, b, got v")``."""
    choices = tuple(choices)
    try:
        if v in choices:
            return v
    except TypeError:                      # unhashable / incomparable values are simply not a choice
        pass
    raise ValueError(f"{name}: expected one of {', '.join(map(str, choices))}, got {v!r}")


def check_bool(name: str, v: Any) -> bool:
    """``v`` as a ``bool`` (numpy's bool too), else a one-line ``ValueError``."""
    if isinstance(v, bool):
        return v
    if type(v).__name__ == "bool_":
        return bool(v)
    raise ValueError(f"{name}: expected True or False, got {v!r}")
