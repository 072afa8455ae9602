"""Exception hierarchy of the twin, built on builtins so callers can catch either.

Each boundary translates these once: FMI -> fmi2Error/fmi2Discard with a logged message,
OPC UA -> a Bad* status code, Modbus -> an exception response.
"""

from __future__ import annotations


class TwinError(Exception):
    """Base class of every error the twin raises on purpose."""


class FieldError(TwinError):
    """A value of a named field was refused: ``field`` (dotted path where nested), ``value`` given."""

    def __init__(self, field: str, value: object, message: str) -> None:
        self.field = field
        self.value = value
        # A file or section that could not be read has no value to show.
        super().__init__(f"{field}: {message}" if value is None else f"{field}={value!r}: {message}")


class ParameterError(FieldError, ValueError):
    """A parameter, recipe or configuration value is invalid; ``reason`` says why."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.reason = reason
        super().__init__(field, value, reason)


class ParameterTypeError(FieldError, TypeError):
    """A parameter has the wrong type (e.g. a string where a number is expected)."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.expected = expected
        super().__init__(field, value, f"expected {expected}, got {type(value).__name__}")


class IntegrationError(TwinError, ArithmeticError):
    """The integrator could not meet its tolerance (step size underflow, non-finite state)."""


class MeasurementError(TwinError, ValueError):
    """A measurement was refused (NaN, out of range, out of order, duplicate...)."""

    def __init__(self, signal: str, value: object, reason: str) -> None:
        self.signal = signal
        self.value = value
        self.reason = reason
        super().__init__(f"{signal}={value!r} refused: {reason}")
