"""Exception hierarchy of the twin, built on builtins so callers can catch either.

Each boundary translates these once: FMI -> fmi2Error/fmi2Discard with a logged message,
OPC UA -> a Bad* status code, Modbus -> an exception response.
"""

from __future__ import annotations


class TwinError(Exception):
    """Base class of every error the twin raises on purpose."""


class ParameterError(TwinError, ValueError):
    """A parameter, recipe or configuration value is invalid.

    ``field`` names the offending field (dotted path where nested), ``value`` is what was given.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class ParameterTypeError(TwinError, TypeError):
    """A parameter has the wrong type (e.g. a string where a number is expected)."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}={value!r}: expected {expected}, got {type(value).__name__}")


class IntegrationError(TwinError, ArithmeticError):
    """The integrator could not meet its tolerance (step size underflow, non-finite state)."""


class MeasurementError(TwinError, ValueError):
    """A measurement was refused (NaN, out of range, out of order, duplicate...)."""

    def __init__(self, signal: str, value: object, reason: str) -> None:
        self.signal = signal
        self.value = value
        self.reason = reason
        super().__init__(f"{signal}={value!r} refused: {reason}")
