"""Validators shared by every validated dataclass of the project (parameters, recipes, configs).

Each takes the dotted path of the field (for the error message) and the value; a wrong type raises
ParameterTypeError (a TypeError), a bad value ParameterError (a ValueError), both naming the field.
"""

from __future__ import annotations

import math

from twin_core.errors import ParameterError, ParameterTypeError

T_MIN_K = 200.0
"""Lowest temperature any parameter may take [K]; below is a unit mistake (degC given as K)."""
T_MAX_K = 700.0
"""Highest temperature any parameter may take [K]."""


def number(path: str, value: object) -> float:
    """``value`` as a finite float (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterTypeError(path, value, "a real number")
    v = float(value)
    if not math.isfinite(v):
        raise ParameterError(path, value, "must be finite")
    return v


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
