"""What is the plant's own in the contract between the PLC logic (plant_sim.plc) and its Modbus TCP
server (plant_sim.modbus_server): the port the server drives and the PLC's refusals.

The interface itself (every name, unit, range, phase rule, command, the Phase and Alarm codes and the
register map) is declared once, in twin_core.signals.plc; nothing here repeats it.

The server knows nothing of the plant: it reads ``Plc.snapshot()`` after each scan and forwards
writes and commands to the PLC, translating the PLC's exceptions into Modbus exception responses:
    PlcWriteError   -> exception 03 (illegal data value); the PLC guarantees nothing changed;
    PlcCommandError -> exception 03 (command not allowed in this phase); nothing changed.
"""

from __future__ import annotations

from typing import Protocol

from twin_core.errors import TwinError


class PlcWriteError(TwinError, ValueError):
    """A write was refused (bad value, out of range, wrong phase); the PLC state is unchanged."""


class PlcCommandError(TwinError, ValueError):
    """A command is not allowed in the current phase; the PLC state is unchanged."""


class PlcPort(Protocol):
    """What the Modbus server needs from the PLC (names are those of twin_core.signals.plc)."""

    def scan(self) -> None:
        """Advance the plant and the PLC logic by one scan cycle of plant time."""

    def snapshot(self) -> dict[str, float]:
        """Every non-command PLC signal (PLC_MEASUREMENTS, PLC_SETTINGS, PLC_SIM_HOOKS, PLC_SIM_TRUTH)
        mapped to its current value, in its SI unit."""

    def write_setting(self, name: str, value: float) -> None:
        """Write one setting (or simulation hook); raises PlcWriteError (state unchanged) on a bad
        value or wrong phase (rules: twin_core.signals.plc.SETTING_RULES)."""

    def write_settings(self, values: dict[str, float]) -> None:
        """Write several settings atomically (one Modbus write-multiple request): all or nothing."""

    def command(self, name: str) -> None:
        """Issue a command of COMMAND_NAMES; raises PlcCommandError (state unchanged) if not allowed now."""
