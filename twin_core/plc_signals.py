"""The PLC signal table: every value the simulated PLC exposes over Modbus TCP, declared once.

Measurements and status are input registers (FC4, read-only), the recipe and the limits are holding
registers (FC3 / FC6 / FC16), commands are coils (FC1 / FC5 / FC15) that read back 0. Simulation-only
hooks (inject a runaway, a sensor fault) sit in a separate block at address 900 of the holding and
coil tables, so an integrator cannot mistake them for plant I/O.

Encodings (see :class:`twin_core.signals.ModbusBinding` and docs/modbus.md): float32 in two
registers, high word first, each word big-endian (the bytes on the wire are the big-endian IEEE 754
float, "ABCD"); uint16 for phases, flags and alarm bits; uint32 (high word first) for counters; and,
in a separate block of input registers, scaled INT16 copies of the main analogue values for SCADA
systems that only read 16-bit integers (temperatures as degC x 10, controller output as % x 10).

Addresses are 0-based protocol addresses; each block starts on a round number and leaves room to
grow. The register map (:func:`register_map_csv`, :func:`format_register_map`) is generated from this
table; docs/modbus_register_map_plc.csv holds it for integrators.

The names agree with plant_sim.interface (MEASUREMENTS, SETTINGS, COMMANDS, SIMULATION_HOOKS); a
test checks it, because twin_core must not import plant_sim.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from twin_core.signals import C_HI, T_HI_K, T_LO_K, ModbusBinding, Signal, aligned_text, csv_text

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
SAMPLE_INTERVAL_MAX_S = 86400.0
"""Longest lab sample interval [s]; the PLC also requires >= 60 s unless 0 (no sampling)."""
PLANT_TIME_MAX_S = 1e9
"""Upper end of the PLC clock's range [s]; float32 resolves it to 64 s there, to 1/16 s below 2**21 s (24 days)."""
UINT16_MAX = 0xFFFF
UINT32_MAX = 0xFFFF_FFFF
N_PHASES = 8
"""Phases of plant_sim.interface.Phase (0..7)."""
N_SENSOR_FAULTS = 5
"""Sensor fault kinds of the simulation hook (0 none, 1 stuck, 2 drift, 3 spike, 4 dropout)."""

COMMAND_NAMES = ("start", "hold", "resume", "abort", "reset", "ack_alarms")
"""Commands, in coil-address order (coil ``cmd_<name>`` at address = index)."""

Kind = Literal["measurement", "setting", "command", "sim_hook"]
Access = Literal["R", "RW", "W"]

# Block starts (0-based protocol addresses).
IR_PROCESS, IR_BATCH, IR_LAB, IR_ALARMS, IR_CLOCK, IR_SCADA_INT16 = 0, 20, 40, 60, 80, 100
HR_LIMITS, HR_RECIPE, HR_SIM = 0, 100, 900
CO_COMMANDS, CO_SIM = 0, 900
HR_RECIPE_POINTS = HR_RECIPE + 6
"""First programme point: recipe_time_<i> at HR_RECIPE_POINTS + 4 i, recipe_T_<i> two registers later.
The header and the points are contiguous so one FC16 request (<= 123 registers) downloads a whole recipe."""


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
       "2 high dT/dt, 4 jacket deviation, 8 lab out of spec, 16 interlock trip, 32 sensor fault", 0, UINT16_MAX, 1.0),
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

PLC_SIGNALS: tuple[Signal, ...] = PLC_MEASUREMENTS + PLC_SETTINGS + PLC_COMMANDS + PLC_SIM_HOOKS
"""Every PLC value, one Signal each."""


@dataclass(frozen=True)
class RegisterEntry:
    """One row of the register map: a signal (or a scaled view of one) at a Modbus address.

    name: the register's name (the signal name, or ``<signal>_degC_x10`` style for a scaled view);
    signal: the PLC signal whose value it carries (in the signal's SI unit once decoded);
    kind: what a write does (setting -> Plc.write_setting, command -> Plc.command, ...).
    """

    name: str
    signal: Signal
    binding: ModbusBinding
    kind: Kind
    description: str

    @property
    def access(self) -> Access:
        """R (input registers), RW (holding registers, simulation coils) or W (command coils, read back 0)."""
        if self.binding.table in ("input", "discrete"):
            return "R"
        return "W" if self.kind == "command" else "RW"

    @property
    def addresses(self) -> range:
        """Protocol addresses the entry occupies."""
        return range(self.binding.address, self.binding.address + self.binding.width)


def _entry(sig: Signal, kind: Kind) -> RegisterEntry:
    if sig.modbus is None:
        raise ValueError(f"PLC signal {sig.name} has no Modbus binding")
    return RegisterEntry(sig.name, sig, sig.modbus, kind, sig.description)


_BY_NAME = {s.name: s for s in PLC_SIGNALS}


def _view(source: str, address: int, suffix: str, scale: float, offset: float, what: str) -> RegisterEntry:
    binding = ModbusBinding("input", address, "int16", scale, offset)
    sig = _BY_NAME[source]
    return RegisterEntry(f"{source}_{suffix}", sig, binding, "measurement",
                         f"{sig.description}, as INT16 {what} (0x8000 = no value)")


CELSIUS_OFFSET_K = 273.15

SCADA_INT16_VIEWS: tuple[RegisterEntry, ...] = (
    _view("T_reactor", IR_SCADA_INT16 + 0, "degC_x10", 10.0, CELSIUS_OFFSET_K, "degC x 10"),
    _view("T_jacket", IR_SCADA_INT16 + 1, "degC_x10", 10.0, CELSIUS_OFFSET_K, "degC x 10"),
    _view("T_jacket_sp", IR_SCADA_INT16 + 2, "degC_x10", 10.0, CELSIUS_OFFSET_K, "degC x 10"),
    _view("pid_output", IR_SCADA_INT16 + 3, "pct_x10", 1000.0, 0.0, "% x 10"),
)
"""Scaled INT16 copies of the main analogue values, for SCADA systems that read 16-bit integers only."""

_TABLE_ORDER = {"coil": 0, "discrete": 1, "input": 2, "holding": 3}


def _build_map() -> tuple[RegisterEntry, ...]:
    entries = [_entry(s, "measurement") for s in PLC_MEASUREMENTS]
    entries += [_entry(s, "setting") for s in PLC_SETTINGS]
    entries += [_entry(s, "command") for s in PLC_COMMANDS]
    entries += [_entry(s, "sim_hook") for s in PLC_SIM_HOOKS]
    entries += SCADA_INT16_VIEWS
    entries.sort(key=lambda e: (_TABLE_ORDER[e.binding.table], e.binding.address))
    taken: dict[tuple[str, int], str] = {}
    names: set[str] = set()
    for e in entries:
        if e.name in names:
            raise ValueError(f"register name {e.name} used twice")
        names.add(e.name)
        for a in e.addresses:
            other = taken.setdefault((e.binding.table, a), e.name)
            if other != e.name:
                raise ValueError(f"{e.name} overlaps {other} at {e.binding.table} address {a}")
    return tuple(entries)


PLC_REGISTER_MAP: tuple[RegisterEntry, ...] = _build_map()
"""The whole map, ordered by table (coils, input registers, holding registers) and address."""


def plc_signal(name: str) -> Signal:
    """The PLC signal called ``name`` (KeyError if there is none)."""
    return _BY_NAME[name]


def register_entry(name: str) -> RegisterEntry:
    """The register-map entry called ``name`` (KeyError if there is none)."""
    for e in PLC_REGISTER_MAP:
        if e.name == name:
            return e
    raise KeyError(name)


_REFERENCE_BASE = {"coil": 0, "discrete": 100000, "input": 300000, "holding": 400000}
_FUNCTION_CODES = {"coil": "1,5,15", "discrete": "2", "input": "4", "holding": "3,6,16"}

MAP_COLUMNS = ("table", "function_codes", "address", "reference", "count", "name", "signal", "kind", "access",
               "encoding", "scale", "offset", "unit", "min", "max", "description")
"""Columns of the register-map CSV. ``address`` is the 0-based protocol address, ``reference`` the
conventional 1-based 6-digit register number (0xxxxx coils, 3xxxxx input, 4xxxxx holding). The value
decoded with ``encoding``/``scale``/``offset`` is in ``unit`` (SI); ``min``/``max`` bound writes."""


def register_map_rows(entries: Iterable[RegisterEntry] = PLC_REGISTER_MAP) -> list[dict[str, object]]:
    """The map as flat rows (the columns of :data:`MAP_COLUMNS`)."""
    out = []
    for e in entries:
        b, s = e.binding, e.signal
        scaled = b.encoding in ("int16", "uint16", "uint32")
        out.append({
            "table": b.table, "function_codes": _FUNCTION_CODES[b.table], "address": b.address,
            "reference": f"{_REFERENCE_BASE[b.table] + b.address + 1:06d}", "count": b.width, "name": e.name,
            "signal": s.name, "kind": e.kind, "access": e.access, "encoding": b.encoding,
            "scale": f"{b.scale:g}" if scaled else "", "offset": f"{b.offset:g}" if scaled else "",
            "unit": s.unit, "min": f"{s.min:.10g}", "max": f"{s.max:.10g}", "description": e.description,
        })
    return out


def register_map_csv(entries: Iterable[RegisterEntry] = PLC_REGISTER_MAP) -> str:
    """The register map as CSV text (docs/modbus_register_map_plc.csv)."""
    return csv_text(MAP_COLUMNS, register_map_rows(entries))


def format_register_map(entries: Iterable[RegisterEntry] = PLC_REGISTER_MAP) -> str:
    """The register map as an aligned text table for the console (``twin plant --print-map``)."""
    cols = ("table", "address", "reference", "count", "name", "access", "encoding", "scale", "offset", "unit",
            "min", "max")
    head = [
        "Modbus TCP register map of the simulated PLC (0-based protocol addresses; reference = 1-based number).",
        "float32: two registers, high word first, big-endian bytes (ABCD). uint32: high word first.",
        "int16/uint16/uint32: value = raw / scale + offset, in the SI unit shown. Block 900: simulation only.",
        "",
    ]
    return "\n".join(head) + "\n" + aligned_text(cols, register_map_rows(entries))
