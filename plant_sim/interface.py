"""The contract between the PLC logic (plant_sim.plc) and its Modbus TCP server (plant_sim.modbus_server).

The server knows nothing of the plant: it reads ``Plc.snapshot()`` after each scan and forwards
writes and commands to the PLC, translating the PLC's exceptions into Modbus exception responses:
    PlcWriteError   -> exception 03 (illegal data value); the PLC guarantees nothing changed;
    PlcCommandError -> exception 03 (command not allowed in this phase); nothing changed.
Names below are signal names of the PLC signal table (twin_core.plc_signals), which assigns their
Modbus addresses and encodings.
"""

from __future__ import annotations

import enum
from typing import Protocol

from twin_core.errors import TwinError


class Phase(enum.IntEnum):
    """ISA-88-style batch phase, as published in input register ``phase``."""

    IDLE = 0
    CHARGING = 1
    HEATING = 2
    REACTING = 3
    COOLING = 4
    COMPLETE = 5
    HELD = 6
    ABORTED = 7


class Alarm(enum.IntFlag):
    """Alarm bits, as published in input registers ``alarms_active`` and ``alarms_unacked``."""

    HIGH_T = 1 << 0
    HIGH_DTDT = 1 << 1
    JACKET_DEVIATION = 1 << 2
    LAB_OUT_OF_SPEC = 1 << 3
    INTERLOCK_TRIP = 1 << 4
    SENSOR_FAULT = 1 << 5


class PlcWriteError(TwinError, ValueError):
    """A write was refused (bad value, out of range, wrong phase); the PLC state is unchanged."""


class PlcCommandError(TwinError, ValueError):
    """A command is not allowed in the current phase; the PLC state is unchanged."""


# Read-only values the PLC publishes (input registers), with their SI units.
MEASUREMENTS: dict[str, str] = {
    "T_reactor": "K",          # measured reactor temperature (sensor: lag, noise, quantisation, faults)
    "T_jacket": "K",           # measured jacket temperature
    "T_jacket_sp": "K",        # jacket temperature setpoint (from the recipe programme, or full cooling)
    "pid_output": "1",         # jacket controller output, -1 (full cooling) .. +1 (full heating)
    "phase": "1",              # Phase enum
    "batch_id": "1",           # increments at each Start
    "batch_time": "s",         # time since Start (frozen while Held)
    "recipe_step": "1",        # index of the active recipe segment
    "lab_c_B": "mol/m3",       # last lab result for B
    "lab_c_C": "mol/m3",       # last lab result for C
    "lab_sample_time": "s",    # batch time at which that sample was drawn
    "lab_valid": "1",          # 1 when lab_* hold a result of the current batch
    "lab_seq": "1",            # counts lab results of the current batch (a new value = a new result)
    "alarms_active": "1",      # Alarm bits whose condition is present
    "alarms_unacked": "1",     # Alarm bits latched and not yet acknowledged
    "plant_time": "s",         # PLC clock (plant time since the PLC started)
    "scan_count": "1",         # increments every scan (heartbeat, wraps at 2**32)
}

# Writable settings (holding registers). The recipe may be written only in Idle, Complete or Aborted
# (the "documented path" to change it mid-batch: Hold, then write ``recipe_*``, then Resume applies it).
SETTINGS: dict[str, str] = {
    "recipe_n_points": "1",        # number of valid programme points (1..RECIPE_MAX_POINTS)
    "recipe_end_time": "s",        # end condition: batch time at which Reacting ends and Cooling starts
    "recipe_mode": "1",            # 0 = jacket programme (only mode the plant PLC runs)
    "recipe_sample_interval": "s", # lab sample every this many seconds of batch time (0 = none)
    "T_trip": "K",                 # interlock trip limit on the reactor temperature
    "T_high_alarm": "K",           # high-temperature alarm limit
    # plus recipe_time_<i> [s] and recipe_T_<i> [K] for i = 0 .. RECIPE_MAX_POINTS-1
}
RECIPE_MAX_POINTS = 16

COMMANDS = ("start", "hold", "resume", "abort", "reset", "ack_alarms")
"""Commands (coils ``cmd_<name>``): writing 1 issues the command; the coil reads back 0."""

SIMULATION_HOOKS = ("inject_runaway", "sensor_fault")
"""Simulation-only inputs (documented as such, in a separate address block): inject a runaway
(coil ``sim_inject_runaway``) and a sensor fault on T_reactor (holding ``sim_sensor_fault``:
0 none, 1 stuck, 2 drift, 3 spike, 4 dropout).

On the PLC side (plant_sim.plc.Plc) both hooks are settings, writable in every phase and present in
``snapshot()``: ``write_setting("sim_inject_runaway", 1)`` (or ``command("inject_runaway")``) starts
the runaway, 0 stops it (the interlock trip and Reset also stop it and set it back to 0);
``write_setting("sim_sensor_fault", code)`` starts fault ``code`` on T_reactor, 0 clears it. Bad
values raise PlcWriteError like any other setting."""


class PlcPort(Protocol):
    """What the Modbus server needs from the PLC."""

    def scan(self) -> None:
        """Advance the plant and the PLC logic by one scan cycle of plant time."""

    def snapshot(self) -> dict[str, float]:
        """Every MEASUREMENTS name and every SETTINGS name (including recipe_time_<i>, recipe_T_<i>)
        mapped to its current value, plus the simulation hooks' current values."""

    def write_setting(self, name: str, value: float) -> None:
        """Write one setting; raises PlcWriteError (state unchanged) on a bad value or wrong phase."""

    def write_settings(self, values: dict[str, float]) -> None:
        """Write several settings atomically (one Modbus write-multiple request): all or nothing."""

    def command(self, name: str) -> None:
        """Issue a command of COMMANDS; raises PlcCommandError (state unchanged) if not allowed now."""
