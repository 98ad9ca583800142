"""Chapter parameters: one declaration per parameter, used to validate, to list and (later) to document.

A chapter declares its parameters once, in :mod:`prefdyn.chapters.catalog`, as :class:`Param` objects. The
same declaration

- validates values before any execution (``prefdyn run -p NAME VALUE``), and again inside the chapter, so
  a plain ``papermill book/<chapter>.ipynb out.ipynb -p beta -1`` fails with the same one-line message;
- is listed by ``prefdyn list`` (type, default, allowed range, meaning);
- must agree with the chapter's ``parameters`` cell (a test checks the defaults).

Errors are :class:`ParameterError` (a ``ValueError``) with a one-line message that names the chapter, the
parameter and what is allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ..validate import Range

TYPES = ("float", "int", "bool", "str", "list[str]", "list[float]", "list[int]")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class ParameterError(ValueError):
    """A bad chapter name, parameter name or parameter value (one-line message)."""


@dataclass(frozen=True)
class Param(Range):
    """One chapter parameter (a loss parameter is declared from the loss registry by :func:`loss_param`).

    ``low``/``high`` bound numbers (the fields of :class:`prefdyn.validate.Range`) (and every item of a numeric list); ``low_open``/``high_open`` make a
    bound strict. ``choices`` restricts a ``str`` (or every item of a ``list[str]``). ``min_len`` is the
    least length of a list.
    """

    name: str
    type: str
    default: Any
    help: str
    choices: Sequence[str] | None = None
    min_len: int = 1

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"Param {self.name!r}: type must be one of {', '.join(TYPES)}, not {self.type!r}")
        if not self.name.isidentifier():
            raise ValueError(f"Param {self.name!r}: name must be a Python identifier")
        if not self.help or "\n" in self.help:
            raise ValueError(f"Param {self.name!r}: help must be one non-empty line")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        # The default must itself be valid: a declaration error shows up at import, not in a user's run.
        object.__setattr__(self, "default", self.coerce(self.default, chapter="<declaration>"))

    # ---------------------------------------------------------------- description
    @property
    def item_type(self) -> str:
        return self.type[5:-1] if self.type.startswith("list[") else self.type

    def allowed(self) -> str:
        """What values are allowed, in words (used in error messages and ``prefdyn list``)."""
        parts: list[str] = []
        if self.type.startswith("list["):
            parts.append(f"a comma-separated list of {self.item_type}" + (f" (at least {self.min_len})" if self.min_len > 1 else ""))
        else:
            parts.append({"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}[self.type])
        rng = self.range_text()
        if rng:
            parts.append(rng)
        if self.choices is not None:
            parts.append("from {" + ", ".join(self.choices) + "}")
        return " ".join(parts)

    def range_text(self) -> str:
        return self.range.text()

    def default_text(self) -> str:
        return format_value(self.default)

    # ---------------------------------------------------------------- validation
    def coerce(self, value: Any, chapter: str = "") -> Any:
        """Return ``value`` converted to this parameter's type, or raise :class:`ParameterError`.

        Strings (from the command line or papermill's ``-p``) are parsed; lists may be given as
        ``a,b,c`` or as JSON ``["a", "b"]``.
        """
        where = f"{chapter}: " if chapter else ""
        bad = ParameterError(f"{where}parameter '{self.name}' must be {self.allowed()} (got {value!r})")
        if self.type.startswith("list["):
            items = _split_list(value)
            if items is None or len(items) < self.min_len:
                raise bad
            out = [self._coerce_item(v, bad) for v in items]
            return out
        return self._coerce_item(value, bad)

    def _coerce_item(self, value: Any, bad: ParameterError) -> Any:
        t = self.item_type
        try:
            if t == "bool":
                if isinstance(value, bool):
                    v: Any = value
                elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                    v = value.strip().lower() in _TRUE
                else:
                    raise bad
            elif t == "int":
                if isinstance(value, bool):
                    raise bad
                if isinstance(value, int):
                    v = value
                elif isinstance(value, float) and value.is_integer():
                    v = int(value)
                elif isinstance(value, str):
                    text = value.strip()
                    try:
                        v = int(text)
                    except ValueError:                     # "4.0" (e.g. papermill -r n_seeds 4.0) is 4
                        f = float(text)
                        if not (math.isfinite(f) and f.is_integer()):
                            raise bad from None
                        v = int(f)
                else:
                    raise bad
            elif t == "float":
                if isinstance(value, bool):
                    raise bad
                if isinstance(value, (int, float)):
                    v = float(value)
                elif isinstance(value, str):
                    v = float(value.strip())
                else:
                    raise bad
                if not math.isfinite(v):
                    raise bad
            else:  # str
                if not isinstance(value, str):
                    raise bad
                v = value.strip()
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ParameterError):
                raise
            raise bad from None
        if t in ("int", "float") and not self.range.contains(v):
            raise bad
        if self.choices is not None and v not in self.choices:
            raise bad
        return v


def loss_param(name: str, losses: Sequence[str], *, default: Any = None, help: str | None = None,
               type: str | None = None) -> Param:
    """The chapter parameter ``name`` that holds a loss parameter of ``losses`` (the book-wide name of
    :func:`prefdyn.losses.chapter_name`, e.g. ``beta``, ``delta``, ``beta_balanced``), declared from the
    loss registry: its type, range and default (of the first loss that takes it) are the registry's, so a
    chapter cannot allow what the loss refuses. ``default``/``help`` override the registry's for this
    chapter; ``type="list[float]"`` declares a sweep over the parameter."""
    from .. import losses as L

    found = [(loss, k, r) for loss in losses for k, r in L.get(loss).params.items()
             if L.chapter_name(L.get(loss).name, k) == name]
    if not found:
        raise ValueError(f"loss_param: no loss of {list(losses)} has a parameter held by {name!r}")
    ranges = {r.range for _, _, r in found}
    if len(ranges) > 1:
        raise ValueError(f"loss_param: {name!r} has different ranges in {[f'{l}.{k}' for l, k, _ in found]}")
    loss, key, rng = found[0]
    users = ", ".join(sorted({l for l, _, _ in found}, key=list(losses).index))
    return Param(name, type or rng.type, rng.default if default is None else default,
                 help or f"{rng.help} [{users}]", low=rng.low, high=rng.high, low_open=rng.low_open,
                 high_open=rng.high_open)


def loss_params(losses: Sequence[str], *, defaults: dict[str, Any] | None = None,
                helps: dict[str, str] | None = None) -> list[Param]:
    """:func:`loss_param` for every chapter parameter the ``losses`` take, in the order they first appear."""
    from .. import losses as L

    names: list[str] = []
    for loss in losses:
        for k in L.get(loss).params:
            n = L.chapter_name(L.get(loss).name, k)
            if n not in names:
                names.append(n)
    defaults, helps = defaults or {}, helps or {}
    return [loss_param(n, losses, default=defaults.get(n), help=helps.get(n)) for n in names]


@dataclass(frozen=True)
class Chapter:
    """A chapter of the book: its id (the name ``prefdyn run`` takes), title, part and parameters."""

    id: str
    title: str
    part: str
    params: tuple[Param, ...] = field(default_factory=tuple)
    source: str = ""  # notebooks/<id>.md unless given
    #: Constraints between parameters: each takes the full, coerced parameter dict and returns ``None`` or
    #: a one-line message naming the parameter at fault (checked by :meth:`resolve`, before any execution).
    checks: tuple[Callable[[dict[str, Any]], str | None], ...] = field(default_factory=tuple)
    #: How the chapter's key numbers may differ from the golden ``book/data/<id>.json`` when re-executed
    #: on another machine (:class:`prefdyn.regression.Tolerances`; default: exact).
    tolerances: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "checks", tuple(self.checks))
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"chapter {self.id!r}: duplicate parameter names {names}")
        if not self.source:
            object.__setattr__(self, "source", f"notebooks/{self.id}.md")
        from ..regression import EXACT_TOLERANCES, Tolerances

        if self.tolerances is None:
            object.__setattr__(self, "tolerances", EXACT_TOLERANCES)
        elif not isinstance(self.tolerances, Tolerances):
            raise ValueError(f"chapter {self.id!r}: tolerances must be a prefdyn.regression.Tolerances")

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        allowed = ", ".join(self.param_names) or "none"
        raise ParameterError(f"{self.id}: unknown parameter '{name}' (this chapter takes: {allowed})")

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: dict[str, Any]) -> dict[str, Any]:
        """Check names and values of ``values`` (a subset of the parameters); return them coerced."""
        return {name: self.param(name).coerce(value, chapter=self.id) for name, value in values.items()}

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """The full parameter dict: defaults overridden by the validated ``values``, with the constraints
        between parameters (``checks``) checked; a violation is a one-line :class:`ParameterError`."""
        out = self.defaults()
        out.update(self.validate(values))
        for check in self.checks:
            message = check(out)
            if message:
                raise ParameterError(f"{self.id}: {message}")
        return out


def describe_check(check) -> str:
    """A constraint between parameters in words: its ``description`` (set by ``catalog.below``), else the
    first line of its docstring, else its name (what ``prefdyn list`` and the rerun boxes print)."""
    text = getattr(check, "description", None) or (getattr(check, "__doc__", None) or "").strip().split("\n")[0]
    return text or getattr(check, "__name__", repr(check))


def _split_list(value: Any) -> list | None:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                parsed = json.loads(s)
            except json.JSONDecodeError:
                return None
            return parsed if isinstance(parsed, list) else None
        return [v.strip() for v in s.split(",") if v.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return None


def format_value(v: Any) -> str:
    """A parameter value as the command line would take it (lists comma-separated)."""
    if isinstance(v, (list, tuple)):
        return ",".join(format_value(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)   # exact: coerce(format_value(v)) == v
    return str(v)


def parse_overrides(pairs: Iterable[Sequence[str]]) -> dict[str, str]:
    """``[(name, value), ...]`` from ``-p NAME VALUE`` to a dict; a repeated name is an error."""
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise ParameterError(f"parameter '{name}' given twice")
        out[name] = value
    return out
