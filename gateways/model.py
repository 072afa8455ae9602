"""What the runtime hands to its servers (OPC UA, the Modbus mirror) and what they ask of it.

The runtime (gateways.runtime) owns the reactors: each scan it publishes a :class:`Snapshot` of every
value of twin_core.signals.runtime.PUBLISHED (in SI units, with quality and the PLC's timestamp) and
raises :class:`TwinEvent` s; the servers translate those into their protocol and call back through
:class:`ReactorControl` for methods and writes. A refusal is a :class:`RequestRefused` carrying the
reason in the caller's terms (the OPC UA server turns it into a Bad status with that text).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from twin_core.errors import TwinError
from twin_core.recipe import Recipe
from twin_core.signals.runtime import Quality


@dataclass(frozen=True)
class Value:
    """One published value: SI units, its quality, and the time it describes (the PLC's clock as UTC)."""

    value: float
    quality: Quality = Quality.GOOD
    source_time: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def good(self) -> bool:
        return self.quality is Quality.GOOD and not math.isnan(self.value)


Snapshot = Mapping[str, Value]
"""Every published value of one reactor after a scan, by signal name."""


class EventKind(enum.Enum):
    """The runtime's events: a title and a default severity (OPC UA: 1 lowest .. 1000 highest)."""

    HEALTH_WARNING = ("Model health warning", 500)
    HEALTH_ALARM = ("Model health alarm", 800)
    IMPURITY_FORECAST_HIGH = ("Impurity forecast above specification", 700)
    OPTIMAL_STOP = ("Optimal stop reached", 600)
    LINK_LOST = ("PLC link lost", 800)
    LINK_RESTORED = ("PLC link restored", 300)
    PLC_RESTARTED = ("PLC restarted", 700)
    PLC_ALARM = ("PLC alarm", 800)
    BATCH_STARTED = ("Batch started", 200)
    BATCH_ENDED = ("Batch ended", 200)
    TWIN_RESTORED = ("Twin restored from its checkpoint after a runtime restart", 500)
    CHECKPOINT_REJECTED = ("Checkpoint rejected: the twin restarts from the batch's charge", 700)
    CHECKPOINT_FAILED = ("Checkpoint not written", 700)

    def __init__(self, title: str, severity: int) -> None:
        self.title = title
        self.severity = severity


@dataclass(frozen=True)
class TwinEvent:
    """An event of one reactor: what, a message for the operator, when (plant clock as UTC)."""

    kind: EventKind
    message: str
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    severity: int | None = None

    @property
    def level(self) -> int:
        """Severity 1..1000 (the kind's default unless given)."""
        return self.severity if self.severity is not None else self.kind.severity


class RequestRefused(TwinError, ValueError):
    """A method call or write was refused; ``reason`` says why (e.g. the PLC's exception, a range)."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")


class ReactorControl(Protocol):
    """What the servers may ask of one reactor's runtime (coroutines: they run on the event loop)."""

    async def start_batch(self, recipe: Recipe) -> None:
        """Download ``recipe`` to the PLC and start a batch."""

    async def command(self, name: str) -> None:
        """A PLC command: ``hold``, ``resume``, ``abort``, ``ack_alarms`` (also ``reset``)."""

    async def reset_twin(self) -> None:
        """Restart the twin from the PLC's current batch (its charge and recipe)."""

    async def enter_lab_result(self, sample_time_s: float, c_B_mol_per_m3: float, c_C_mol_per_m3: float) -> None:
        """A lab result from outside the PLC (a LIMS), validated; late results allowed."""

    async def write(self, name: str, value: float) -> None:
        """Write a published writable value (a Recipe setting goes to the PLC, a Twin tuning
        parameter to the FMU), in SI units; RequestRefused when out of range or not allowed now."""


class Publisher(Protocol):
    """A server the runtime publishes to (OPC UA, the mirror)."""

    async def publish(self, reactor: str, snapshot: Snapshot) -> None:
        """The values of ``reactor`` after a scan."""

    async def event(self, reactor: str, event: TwinEvent) -> None:
        """An event of ``reactor``."""
