"""Declarative validation of every validated dataclass: parameters, recipes, configurations.

A field states its rule once, where it is declared::

    @validated("kinetics")
    class Kinetics:
        k1_ref_per_s: float = spec(1.85e-4, unit="1/s", gt=0.0)
        T_ref_K: float = spec(353.15, unit="K", kind="temperature")

:func:`validated` makes the class a frozen dataclass whose ``__post_init__`` first checks every
field against its rule (:func:`check_fields`), then runs the class's own ``__post_init__`` (checks
that involve several fields). One checker names the offending field as ``section.field``: a wrong
type raises :class:`~twin_core.errors.ParameterTypeError` (a ``TypeError``), a bad value
:class:`~twin_core.errors.ParameterError` (a ``ValueError``). :func:`from_mapping` builds a class
from a mapping (a TOML table), nested sections included, and rejects unknown keys. Every validated
class is listed in :data:`REGISTRY` (tests walk it).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, dataclass_transform

from twin_core.errors import ParameterError, ParameterTypeError

T_MIN_K = 200.0
"""Lowest temperature any parameter may take [K]; below is a unit mistake (degC given as K)."""
T_MAX_K = 700.0
"""Highest temperature any parameter may take [K]."""

Kind = Literal["real", "int", "bool", "str", "temperature"] | type
RULE = "twin_core.validate.rule"
"""Key of a field's :class:`Rule` in its dataclass metadata."""

REGISTRY: dict[str, type] = {}
"""Every class made by :func:`validated`, by ``module.QualName``."""


def number(path: str, value: object) -> float:
    """``value`` as a finite float (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterTypeError(path, value, "a real number")
    v = float(value)
    if not math.isfinite(v):
        raise ParameterError(path, value, "must be finite")
    return v


def integer(path: str, value: object) -> int:
    """``value`` as an int (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterTypeError(path, value, "an integer")
    return value


def positive(path: str, value: object) -> None:
    """Finite and > 0."""
    if number(path, value) <= 0.0:
        raise ParameterError(path, value, "must be > 0")


def non_negative(path: str, value: object) -> None:
    """Finite and >= 0."""
    if number(path, value) < 0.0:
        raise ParameterError(path, value, "must be >= 0")


def temperature(path: str, value: object) -> None:
    """A temperature in kelvin within [T_MIN_K, T_MAX_K]."""
    v = number(path, value)
    if not T_MIN_K <= v <= T_MAX_K:
        raise ParameterError(path, value, f"must be a temperature in kelvin within [{T_MIN_K}, {T_MAX_K}]")


@dataclass(frozen=True)
class Rule:
    """What one field accepts.

    kind: ``real`` (finite number, bools refused), ``int``, ``bool``, ``str``, ``temperature``
    (kelvin within [T_MIN_K, T_MAX_K]) or a class (a nested section: an instance of it).
    ge/gt/le/lt: bounds on a number; choices: allowed values; optional: None allowed too.
    unit: the field's unit (SI, FMI spelling; ``1`` when dimensionless), for docs and tools.
    """

    kind: Kind = "real"
    unit: str = "1"
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False

    def check(self, path: str, value: object) -> None:
        """Raise ParameterTypeError / ParameterError naming ``path`` when ``value`` breaks the rule."""
        if value is None and self.optional:
            return
        kind = self.kind
        if isinstance(kind, type):
            if not isinstance(value, kind):
                raise ParameterTypeError(path, value, kind.__name__)
            return
        if kind == "bool":
            if not isinstance(value, bool):
                raise ParameterTypeError(path, value, "a boolean")
        elif kind == "str":
            if not isinstance(value, str):
                raise ParameterTypeError(path, value, "a string")
        elif kind == "int":
            integer(path, value)
        elif kind == "temperature":
            temperature(path, value)
        else:
            number(path, value)
        if self.choices is not None and value not in self.choices:
            raise ParameterError(path, value, f"must be one of {list(self.choices)}")
        if kind in ("real", "int", "temperature"):
            self._check_bounds(path, value)  # type: ignore[arg-type]

    def _check_bounds(self, path: str, v: float) -> None:
        lo = [f">= {self.ge:g}"] if self.ge is not None else [f"> {self.gt:g}"] if self.gt is not None else []
        hi = [f"<= {self.le:g}"] if self.le is not None else [f"< {self.lt:g}"] if self.lt is not None else []
        ok = ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
              and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))
        if not ok:
            raise ParameterError(path, v, "must be " + " and ".join(lo + hi))

    def bounds(self) -> tuple[float, float]:
        """(lowest, highest) value the rule allows, +-inf where open (temperature: its range)."""
        if self.kind == "temperature":
            return T_MIN_K, T_MAX_K
        lo = self.ge if self.ge is not None else self.gt if self.gt is not None else -math.inf
        hi = self.le if self.le is not None else self.lt if self.lt is not None else math.inf
        return lo, hi


def spec(default: Any = MISSING, *, kind: Kind = "real", unit: str = "1", ge: float | None = None,
         gt: float | None = None, le: float | None = None, lt: float | None = None,
         choices: tuple[Any, ...] | None = None, optional: bool = False,
         default_factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A dataclass field carrying its :class:`Rule` (see module docstring)."""
    rule = Rule(kind, unit, ge, gt, le, lt, choices, optional)
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={RULE: rule})
    return dataclasses.field(default=default, metadata={RULE: rule})


def rule_of(f: dataclasses.Field) -> Rule | None:
    """The rule of a dataclass field (None when it has none)."""
    return f.metadata.get(RULE)


def _join(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def check_fields(obj: object, section: str = "") -> None:
    """Check every field of dataclass ``obj`` that has a rule, naming it ``section.field``."""
    for f in fields(obj):  # type: ignore[arg-type]
        rule = f.metadata.get(RULE)
        if rule is not None:
            rule.check(_join(section, f.name), getattr(obj, f.name))


C = TypeVar("C")


@dataclass_transform(frozen_default=True, field_specifiers=(spec, dataclasses.field))
def validated(section: str = "") -> Callable[[type[C]], type[C]]:
    """Class decorator: a frozen dataclass checked by its field rules, then by its own
    ``__post_init__`` (cross-field checks); errors name fields ``section.field``."""

    def decorate(cls: type[C]) -> type[C]:
        own = cls.__dict__.get("__post_init__")

        def __post_init__(self: Any) -> None:
            check_fields(self, section)
            if own is not None:
                own(self)

        __post_init__.__doc__ = own.__doc__ if own is not None else f"Check the fields of {cls.__name__}."
        cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
        cls.SECTION = section  # type: ignore[attr-defined]
        out = dataclass(frozen=True)(cls)
        REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = out
        return out

    return decorate


def from_mapping(cls: type[C], data: object, source: str = "<mapping>", section: str | None = None) -> C:
    """``cls(**data)`` for a validated class, nested sections built from nested tables.

    Unknown keys raise ParameterError naming ``section.key`` and the keys that are known; a section
    given as something other than a table raises ParameterTypeError. Lists become tuples (TOML has
    no tuples).
    """
    path = getattr(cls, "SECTION", "") if section is None else section
    if not isinstance(data, Mapping):
        raise ParameterTypeError(path or source, data, "a table")
    known = {f.name: f for f in fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        f = known.get(key)
        if f is None:
            raise ParameterError(_join(path, str(key)), value, f"unknown key in {source}; expected one of {sorted(known)}")
        rule = f.metadata.get(RULE)
        if rule is not None and isinstance(rule.kind, type) and dataclasses.is_dataclass(rule.kind) \
                and isinstance(value, Mapping):
            value = from_mapping(rule.kind, value, source, _join(path, str(key)))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    own = getattr(cls, "SECTION", "")
    if path == own:
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except ParameterTypeError as exc:  # a section nested under another name: name the field by its path
        raise ParameterTypeError(_rename(exc.field, own, path), exc.value, exc.expected) from exc
    except ParameterError as exc:
        raise ParameterError(_rename(exc.field, own, path), exc.value, exc.reason) from exc


def _rename(field: str, own: str, path: str) -> str:
    """``own.x`` -> ``path.x``: a field named by its class's section, renamed by where it sits."""
    return _join(path, field[len(own) + 1:] if own and field.startswith(own + ".") else field)


def load_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML file; a missing, unreadable or malformed file raises ParameterError
    naming the file (configuration loaders build their classes from it with :func:`from_mapping`)."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError(str(p), None, f"not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ParameterError(str(p), None, f"cannot read: {exc.strerror or exc}") from exc
