"""The PLC interface: every value the (simulated) PLC exposes over Modbus TCP, declared once.

This module is the one declaration of the PLC's interface. plant_sim derives its register image,
its setting checks and its command set from it, and clients (gateways) decode what they read with
it, so neither imports the other:

- measurements and status (:data:`PLC_MEASUREMENTS`): input registers (FC4, read-only);
- settings, the recipe and the limits (:data:`PLC_SETTINGS`), with their ranges, integer-ness and
  phase rules (:data:`SETTING_RULES`): holding registers (FC3 / FC6 / FC16);
- commands (:data:`COMMAND_NAMES`, :data:`PLC_COMMANDS`): coils (FC1 / FC5 / FC15) that read back 0;
- the batch phases (:class:`Phase`), the alarm bits (:class:`Alarm`) and the sensor-fault codes
  (:class:`SensorFault`) the registers carry;
- SIMULATION ONLY, in separate blocks at address 900 of the coil, holding and input tables, so an
  integrator cannot mistake them for plant I/O: the hooks (inject a runaway, a sensor fault;
  :data:`PLC_SIM_HOOKS`) and the plant's hidden truth (:data:`PLC_SIM_TRUTH`: true concentrations and
  temperatures, for scoring a soft sensor; a real PLC has no such registers).

Encodings (see :class:`twin_core.signals.modbus.ModbusBinding` and docs/modbus.md): float32 in two
registers, high word first, each word big-endian (the bytes on the wire are the big-endian IEEE 754
float, "ABCD"); uint16 for phases, flags and alarm bits; uint32 (high word first) for counters; and,
in a separate block of input registers, scaled INT16 copies of the main analogue values for SCADA
systems that only read 16-bit integers (temperatures as degC x 10, controller output as % x 10).

Addresses are 0-based protocol addresses; each block starts on a round number and leaves room to
grow. The register map (:data:`PLC_REGISTER_MAP`; as text by twin_core.signals.text) is generated from
this table; docs/modbus_register_map_plc.csv holds it for integrators.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.signals.modbus import (
    ModbusBinding,
    RegisterEntry,
    build_register_map,
    register_entry_of,
)
from twin_core.signals.table import C_HI, T_HI_K, T_LO_K, Signal


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
    OUT_OF_RANGE = 1 << 6
    """A published measurement (T_reactor, T_jacket, a lab result) is beyond its signal's declared
    range and saturated at the range's end: the true value may be further out."""


class SensorFault(enum.IntEnum):
    """Fault codes of the simulation hook ``sim_sensor_fault`` (on the T_reactor transmitter)."""

    NONE = 0
    STUCK = 1
    DRIFT = 2
    SPIKE = 3
    DROPOUT = 4


RECIPE_MAX_POINTS = 16
"""Points of the jacket temperature programme the PLC holds."""

BATCH_TIME_MAX_S = 7 * 86400.0
"""Longest batch time the PLC accepts in a recipe or publishes meaningfully [s] (one week)."""
RECIPE_TIME_MAX_S = 172800.0
"""Longest programme time and end time a recipe may have [s] (48 h)."""
RECIPE_T_RANGE_K = (273.15, 423.15)
"""Jacket programme temperatures the PLC accepts [K] (0 .. 150 degC: the jacket utilities' range)."""
LIMIT_T_RANGE_K = (303.15, 473.15)
"""T_trip and T_high_alarm the PLC accepts [K] (30 .. 200 degC)."""
SAMPLE_INTERVAL_MIN_S = 60.0
"""Shortest lab sample interval [s] besides 0 (no sampling)."""
SAMPLE_INTERVAL_MAX_S = 86400.0
"""Longest lab sample interval [s]."""
PLANT_TIME_MAX_S = 1e9
"""Upper end of the PLC clock's range [s]; float32 resolves it to 64 s there, to 1/16 s below 2**21 s (24 days)."""
UINT16_MAX = 0xFFFF
UINT32_MAX = 0xFFFF_FFFF
SCAN_COUNT_MODULUS = 2 ** 32
"""scan_count is published modulo this (uint32)."""
N_PHASES = len(Phase)
N_SENSOR_FAULTS = len(SensorFault)

COMMAND_NAMES = ("start", "hold", "resume", "abort", "reset", "ack_alarms")
"""Commands, in coil-address order (coil ``cmd_<name>`` at address = index)."""

RECIPE_WRITABLE_PHASES = frozenset({Phase.IDLE, Phase.COMPLETE, Phase.ABORTED, Phase.HELD})
"""Phases in which the recipe and T_trip may be written (Held: the documented path to change a recipe
mid-batch is Hold, write, Resume). Settings marked ``any_phase`` may be written in every phase."""

# Block starts (0-based protocol addresses). 900: simulation only, in every table.
IR_PROCESS, IR_BATCH, IR_LAB, IR_ALARMS, IR_CLOCK, IR_SCADA_INT16 = 0, 20, 40, 60, 80, 100
IR_SIM_TRUTH = 900
HR_LIMITS, HR_RECIPE, HR_SIM = 0, 100, 900
CO_COMMANDS, CO_SIM = 0, 900
HR_RECIPE_POINTS = HR_RECIPE + 6
"""First programme point: recipe_time_<i> at HR_RECIPE_POINTS + 4 i, recipe_T_<i> two registers later.
The header and the points are contiguous so one FC16 request (<= 123 registers) downloads a whole recipe."""
CELSIUS_OFFSET_K = 273.15


def _ir(address: int, encoding: str = "float32") -> ModbusBinding:
    return ModbusBinding("input", address, encoding)  # type: ignore[arg-type]


def _hr(address: int, encoding: str = "float32") -> ModbusBinding:
    return ModbusBinding("holding", address, encoding)  # type: ignore[arg-type]


def _m(name: str, unit: str, binding: ModbusBinding, description: str, lo: float, hi: float, nominal: float,
       display_unit: str | None = None) -> Signal:
    """A measurement or status value (input register)."""
    typ = "Real" if binding.encoding == "float32" else "Integer"
    return Signal(name, unit, "output", description, lo, hi, nominal, type=typ, display_unit=display_unit,
                  modbus=binding)


def _s(name: str, unit: str, binding: ModbusBinding, description: str, lo: float, hi: float, nominal: float,
       display_unit: str | None = None) -> Signal:
    """A setting (holding register) written by the recipe manager or the operator."""
    typ = "Real" if binding.encoding == "float32" else "Integer"
    return Signal(name, unit, "input", description, lo, hi, nominal, type=typ, display_unit=display_unit,
                  modbus=binding)


def _c(name: str, address: int, description: str) -> Signal:
    return Signal(name, "1", "input", description, 0.0, 1.0, 1.0, start=0.0, type="Boolean",
                  modbus=ModbusBinding("coil", address, "bool"))


PLC_MEASUREMENTS: tuple[Signal, ...] = (
    # -- process values
    _m("T_reactor", "K", _ir(IR_PROCESS + 0), "Measured reactor temperature (sensor lag, noise, quantisation)",
       T_LO_K, T_HI_K, 350.0, "degC"),
    _m("T_jacket", "K", _ir(IR_PROCESS + 2), "Measured jacket temperature", T_LO_K, T_HI_K, 350.0, "degC"),
    _m("T_jacket_sp", "K", _ir(IR_PROCESS + 4), "Jacket temperature setpoint (recipe programme or full cooling)",
       T_LO_K, T_HI_K, 350.0, "degC"),
    _m("pid_output", "1", _ir(IR_PROCESS + 6), "Jacket controller output: -1 full cooling .. +1 full heating",
       -1.0, 1.0, 1.0),
    # -- batch status
    _m("phase", "1", _ir(IR_BATCH + 0, "uint16"), "Batch phase: 0 Idle, 1 Charging, 2 Heating, 3 Reacting, "
       "4 Cooling, 5 Complete, 6 Held, 7 Aborted", 0, N_PHASES - 1, 1.0),
    _m("recipe_step", "1", _ir(IR_BATCH + 1, "uint16"), "Index of the active recipe programme segment",
       0, RECIPE_MAX_POINTS - 1, 1.0),
    _m("batch_id", "1", _ir(IR_BATCH + 2, "uint32"), "Batch number, increments at each Start", 0, UINT32_MAX, 1.0),
    _m("batch_time", "s", _ir(IR_BATCH + 4), "Time since Start (frozen while Held)", 0.0, BATCH_TIME_MAX_S, 3600.0,
       "h"),
    # -- lab results
    _m("lab_c_B", "mol/m3", _ir(IR_LAB + 0), "Last lab result for product B", 0.0, C_HI, 1000.0, "mol/L"),
    _m("lab_c_C", "mol/m3", _ir(IR_LAB + 2), "Last lab result for impurity C", 0.0, C_HI, 1000.0, "mol/L"),
    _m("lab_sample_time", "s", _ir(IR_LAB + 4), "Batch time at which the sample of the last lab result was drawn",
       0.0, BATCH_TIME_MAX_S, 3600.0, "h"),
    _m("lab_valid", "1", _ir(IR_LAB + 6, "uint16"), "1 when lab_* hold a result of the current batch", 0, 1, 1.0),
    _m("lab_seq", "1", _ir(IR_LAB + 7, "uint16"), "Lab results of the current batch so far (a new value = a new "
       "result)", 0, UINT16_MAX, 1.0),
    # -- alarms
    _m("alarms_active", "1", _ir(IR_ALARMS + 0, "uint16"), "Alarm bits whose condition is present: 1 high T, "
       "2 high dT/dt, 4 jacket deviation, 8 lab out of spec, 16 interlock trip, 32 sensor fault, 64 a measurement out "
       "of its range (saturated)", 0, UINT16_MAX, 1.0),
    _m("alarms_unacked", "1", _ir(IR_ALARMS + 1, "uint16"), "Alarm bits latched and not yet acknowledged "
       "(same bits as alarms_active)", 0, UINT16_MAX, 1.0),
    # -- clock and heartbeat
    _m("plant_time", "s", _ir(IR_CLOCK + 0), "PLC clock: plant time since the PLC started", 0.0, PLANT_TIME_MAX_S,
       3600.0, "h"),
    _m("scan_count", "1", _ir(IR_CLOCK + 2, "uint32"), "Scans since the PLC started (heartbeat, wraps at 2**32)",
       0, UINT32_MAX, 1.0),
)

_RECIPE_POINTS: tuple[Signal, ...] = tuple(
    sig
    for i in range(RECIPE_MAX_POINTS)
    for sig in (
        _s(f"recipe_time_{i}", "s", _hr(HR_RECIPE_POINTS + 4 * i), f"Batch time of programme point {i}",
           0.0, RECIPE_TIME_MAX_S, 3600.0, "h"),
        _s(f"recipe_T_{i}", "K", _hr(HR_RECIPE_POINTS + 4 * i + 2), f"Jacket temperature setpoint at point {i} "
           "(linear between points)", *RECIPE_T_RANGE_K, 350.0, "degC"),
    )
)

PLC_SETTINGS: tuple[Signal, ...] = (
    # -- limits
    _s("T_trip", "K", _hr(HR_LIMITS + 0), "Interlock trip limit on the reactor temperature (abort with full "
       "cooling)", *LIMIT_T_RANGE_K, 400.0, "degC"),
    _s("T_high_alarm", "K", _hr(HR_LIMITS + 2), "High reactor temperature alarm limit (<= T_trip)",
       *LIMIT_T_RANGE_K, 390.0, "degC"),
    # -- recipe header, then the programme points
    _s("recipe_n_points", "1", _hr(HR_RECIPE + 0, "uint16"), "Valid programme points", 1, RECIPE_MAX_POINTS, 1.0),
    _s("recipe_mode", "1", _hr(HR_RECIPE + 1, "uint16"), "0 = jacket temperature programme (the only mode)",
       0, 0, 1.0),
    _s("recipe_end_time", "s", _hr(HR_RECIPE + 2), "End condition: batch time at which Reacting ends and "
       "Cooling starts", 1.0, RECIPE_TIME_MAX_S, 3600.0, "h"),
    _s("recipe_sample_interval", "s", _hr(HR_RECIPE + 4), "Lab sample every this many seconds of batch time "
       "(0 = none, else >= 60 s)", 0.0, SAMPLE_INTERVAL_MAX_S, 3600.0, "h"),
    *_RECIPE_POINTS,
)

PLC_COMMANDS: tuple[Signal, ...] = tuple(
    _c(f"cmd_{name}", CO_COMMANDS + i, f"Command {name}: write 1 to issue it (reads back 0)")
    for i, name in enumerate(COMMAND_NAMES)
)

PLC_SIM_HOOKS: tuple[Signal, ...] = (
    _c("sim_inject_runaway", CO_SIM + 0, "SIMULATION ONLY: 1 injects a runaway heat source into the reactor"),
    Signal("sim_sensor_fault", "1", "input", "SIMULATION ONLY: fault on the T_reactor sensor: 0 none, 1 stuck, "
           "2 drift, 3 spike, 4 dropout", 0, N_SENSOR_FAULTS - 1, 1.0, start=0.0, type="Integer",
           modbus=ModbusBinding("holding", HR_SIM + 0, "uint16")),
)
"""Writable simulation hooks (coil 900, holding 900)."""

PLC_SIM_TRUTH: tuple[Signal, ...] = (
    _m("sim_truth_scan_count", "1", _ir(IR_SIM_TRUTH + 0, "uint32"), "SIMULATION ONLY: scan_count of the scan "
       "the truth below belongs to (equal to scan_count when read in the same image)", 0, UINT32_MAX, 1.0),
    _m("sim_true_c_A", "mol/m3", _ir(IR_SIM_TRUTH + 2), "SIMULATION ONLY: the plant's hidden true c_A",
       0.0, C_HI, 1000.0, "mol/L"),
    _m("sim_true_c_B", "mol/m3", _ir(IR_SIM_TRUTH + 4), "SIMULATION ONLY: the plant's hidden true c_B",
       0.0, C_HI, 1000.0, "mol/L"),
    _m("sim_true_c_C", "mol/m3", _ir(IR_SIM_TRUTH + 6), "SIMULATION ONLY: the plant's hidden true c_C",
       0.0, C_HI, 1000.0, "mol/L"),
    _m("sim_true_T_reactor", "K", _ir(IR_SIM_TRUTH + 8), "SIMULATION ONLY: the true reactor temperature "
       "(no sensor lag, noise or fault)", T_LO_K, T_HI_K, 350.0, "degC"),
    _m("sim_true_T_jacket", "K", _ir(IR_SIM_TRUTH + 10), "SIMULATION ONLY: the true jacket temperature",
       T_LO_K, T_HI_K, 350.0, "degC"),
    _m("sim_true_c_A0", "mol/m3", _ir(IR_SIM_TRUTH + 12), "SIMULATION ONLY: true initial c_A of the batch in the "
       "vessel (NaN when there is none)", 0.0, C_HI, 1000.0, "mol/L"),
)
"""The simulated plant's hidden truth (input registers 900..913, read-only): for scoring a soft
sensor against what it estimates. A real PLC has no such registers; nothing but scoring may read them."""

PLC_SIGNALS: tuple[Signal, ...] = PLC_MEASUREMENTS + PLC_SETTINGS + PLC_COMMANDS + PLC_SIM_HOOKS + PLC_SIM_TRUTH
"""Every PLC value, one Signal each."""

_BY_NAME = {s.name: s for s in PLC_SIGNALS}


# -- the settings' rules ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SettingRule:
    """How a writable PLC value is checked: the signal's [min, max], an integer where the signal is
    Integer or Boolean, ``min_nonzero`` (0 or at least this: a lab interval of 0 means no sampling),
    ``any_phase`` (writable in every phase; otherwise only in :data:`RECIPE_WRITABLE_PHASES`)."""

    signal: Signal
    any_phase: bool = False
    min_nonzero: float | None = None

    @property
    def integer(self) -> bool:
        return self.signal.type in ("Integer", "Boolean")

    @property
    def lo(self) -> float:
        """Smallest value accepted besides 0 (the signal's min, or ``min_nonzero``)."""
        return self.signal.min if self.min_nonzero is None else self.min_nonzero

    @property
    def hi(self) -> float:
        return self.signal.max

    def check(self, value: object) -> float:
        """``value`` as a float if acceptable (phase aside); ParameterTypeError for a non-number,
        ParameterError (naming the setting) for a value out of range, not finite or not an integer."""
        name = self.signal.name
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise ParameterTypeError(name, value, "a number")
        try:
            v = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ParameterTypeError(name, value, "a number") from None
        if not math.isfinite(v):
            raise ParameterError(name, value, "must be finite")
        if self.integer and v != math.floor(v):
            raise ParameterError(name, value, "must be an integer")
        if not (self.lo <= v <= self.hi or (self.min_nonzero is not None and v == 0.0)):
            extra = " or 0" if self.min_nonzero is not None else ""
            raise ParameterError(name, value, f"must be within [{self.lo}, {self.hi}]{extra}")
        return v


_ANY_PHASE = frozenset({"T_high_alarm", "sim_inject_runaway", "sim_sensor_fault"})
_MIN_NONZERO = {"recipe_sample_interval": SAMPLE_INTERVAL_MIN_S}

SETTING_RULES: dict[str, SettingRule] = {
    s.name: SettingRule(s, any_phase=s.name in _ANY_PHASE, min_nonzero=_MIN_NONZERO.get(s.name))
    for s in PLC_SETTINGS + PLC_SIM_HOOKS
}
"""Every writable PLC value (settings and simulation hooks) with its rule. Besides these, the PLC
requires T_high_alarm <= T_trip and, at Start and Resume, a consistent recipe (times strictly
increasing from 0 ...)."""


# -- the register map ---------------------------------------------------------------------------------
def _view(source: str, address: int, suffix: str, scale: float, offset: float, what: str) -> RegisterEntry:
    binding = ModbusBinding("input", address, "int16", scale, offset)
    sig = _BY_NAME[source]
    return RegisterEntry(f"{source}_{suffix}", sig, binding, "measurement",
                         f"{sig.description}, as INT16 {what} (0x8000 = no value)")


SCADA_INT16_VIEWS: tuple[RegisterEntry, ...] = (
    _view("T_reactor", IR_SCADA_INT16 + 0, "degC_x10", 10.0, CELSIUS_OFFSET_K, "degC x 10"),
    _view("T_jacket", IR_SCADA_INT16 + 1, "degC_x10", 10.0, CELSIUS_OFFSET_K, "degC x 10"),
    _view("T_jacket_sp", IR_SCADA_INT16 + 2, "degC_x10", 10.0, CELSIUS_OFFSET_K, "degC x 10"),
    _view("pid_output", IR_SCADA_INT16 + 3, "pct_x10", 1000.0, 0.0, "% x 10"),
)
"""Scaled INT16 copies of the main analogue values, for SCADA systems that read 16-bit integers only."""

PLC_REGISTER_MAP: tuple[RegisterEntry, ...] = build_register_map((
    *(register_entry_of(s, "measurement") for s in PLC_MEASUREMENTS),
    *(register_entry_of(s, "setting") for s in PLC_SETTINGS),
    *(register_entry_of(s, "command") for s in PLC_COMMANDS),
    *(register_entry_of(s, "sim_hook") for s in PLC_SIM_HOOKS),
    *(register_entry_of(s, "sim_truth") for s in PLC_SIM_TRUTH),
    *SCADA_INT16_VIEWS,
))
"""The whole map, ordered by table (coils, input registers, holding registers) and address."""

_ENTRIES = {e.name: e for e in PLC_REGISTER_MAP}


def plc_signal(name: str) -> Signal:
    """The PLC signal called ``name`` (KeyError if there is none)."""
    return _BY_NAME[name]


def register_entry(name: str) -> RegisterEntry:
    """The register-map entry called ``name`` (KeyError if there is none)."""
    return _ENTRIES[name]


def is_simulation_only(entry: RegisterEntry) -> bool:
    """True for the simulation-only registers (hooks and truth, address block 900)."""
    return entry.kind in ("sim_hook", "sim_truth")
