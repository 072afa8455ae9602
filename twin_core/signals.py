"""The signal table: every signal of the twin declared once.

Each signal has a name (also the FMI variable name and the OPC UA browse name), an SI unit, a role,
min/max/nominal, a description and, where it crosses Modbus, its register binding. FMU variables,
OPC UA nodes, the Modbus register maps and the register-map CSV are generated from these tables,
never hand-copied.

Units are written as FMI unit names (``mol/m3``, ``K``, ``s``, ``W/K``, ``J/mol``, ``1``); each maps
to SI base-unit exponents in :data:`UNITS` for the FMU's UnitDefinitions.
"""

from __future__ import annotations

import csv
import io
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

from twin_core.params import ModelParams

Role = Literal["parameter", "input", "output", "local"]
VarType = Literal["Real", "Integer", "Boolean"]

UNITS: dict[str, dict[str, int]] = {
    # FMI 2.0 BaseUnit exponents (kg, m, s, A, K, mol, cd, rad).
    "1": {},
    "K": {"K": 1},
    "s": {"s": 1},
    "1/s": {"s": -1},
    "mol/m3": {"mol": 1, "m": -3},
    "m3": {"m": 3},
    "kg/m3": {"kg": 1, "m": -3},
    "J/mol": {"kg": 1, "m": 2, "s": -2, "mol": -1},
    "J/(kg.K)": {"m": 2, "s": -2, "K": -1},
    "W/K": {"kg": 1, "m": 2, "s": -3, "K": -1},
    "K/s": {"K": 1, "s": -1},
    "W": {"kg": 1, "m": 2, "s": -3},
}
DISPLAY_UNITS: dict[str, tuple[str, float, float]] = {
    # display unit name -> (base unit, factor, offset): display = factor * value + offset
    "degC": ("K", 1.0, -273.15),
    "h": ("s", 1.0 / 3600.0, 0.0),
    "mol/L": ("mol/m3", 1e-3, 0.0),
}


ModbusTable = Literal["input", "holding", "coil", "discrete"]
ModbusEncoding = Literal["float32", "int16", "uint16", "uint32", "bool"]
_ENCODING_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-0x8000, 0x7FFF),
    "uint16": (0, 0xFFFF),
    "uint32": (0, 0xFFFF_FFFF),
    "bool": (0, 1),
}
INT16_NO_VALUE = -0x8000
"""Raw int16 published when a scaled value has no number (NaN): 0x8000, the usual SCADA 'bad' marker."""


@dataclass(frozen=True)
class ModbusBinding:
    """Where a signal sits in a Modbus map and how it is encoded.

    table: ``input`` (input registers, FC4), ``holding`` (FC3/6/16), ``coil`` (FC1/5/15),
    ``discrete`` (FC2). address: 0-based protocol address of the first register (or bit).
    encoding: ``float32`` (IEEE 754 single, two registers, high word first, each word big-endian:
    the bytes on the wire are the big-endian float, "ABCD"), ``int16`` (signed, two's complement),
    ``uint16``, ``uint32`` (two registers, high word first), ``bool`` (one coil or discrete input).
    Integer encodings are scaled: ``raw = round((value - offset) * scale)`` and
    ``value = raw / scale + offset``; e.g. a temperature in K published as degC x 10 has
    ``scale=10, offset=273.15``. float32 and bool ignore scale and offset.
    """

    table: ModbusTable
    address: int
    encoding: ModbusEncoding = "float32"
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.table not in ("input", "holding", "coil", "discrete"):
            raise ValueError(f"Modbus table {self.table!r} unknown")
        if self.encoding not in ("float32", "int16", "uint16", "uint32", "bool"):
            raise ValueError(f"Modbus encoding {self.encoding!r} unknown")
        if isinstance(self.address, bool) or not isinstance(self.address, int):
            raise TypeError(f"Modbus address must be an int, got {self.address!r}")
        if not 0 <= self.address <= 0xFFFF - (self.width - 1):
            raise ValueError(f"Modbus address {self.address} outside 0..65535")
        if (self.encoding == "bool") != (self.table in ("coil", "discrete")):
            raise ValueError(f"encoding {self.encoding} does not fit table {self.table}")
        if not (math.isfinite(self.scale) and self.scale != 0.0 and math.isfinite(self.offset)):
            raise ValueError(f"Modbus scale {self.scale} / offset {self.offset} must be finite, scale non-zero")

    @property
    def width(self) -> int:
        """Registers (or bits) occupied."""
        return 2 if self.encoding in ("float32", "uint32") else 1

    def encode(self, value: float, *, saturate: bool = False) -> tuple[int, ...]:
        """Raw 16-bit register words (or 0/1 bits) for ``value`` in the signal's SI unit.

        Strict (default): raises ValueError when the value cannot be represented (NaN or out of range
        for an integer encoding, beyond the float32 range). ``saturate=True`` is for publishing
        measurements: integers are clamped to their range and NaN becomes :data:`INT16_NO_VALUE`
        (int16) or 0; float32 overflows to +-inf.
        """
        v = float(value)
        if self.encoding == "float32":
            try:
                packed = struct.pack(">f", v)
            except OverflowError:
                if not saturate:
                    raise ValueError(f"{value!r} is beyond the float32 range") from None
                packed = struct.pack(">f", math.copysign(math.inf, v))
            return struct.unpack(">HH", packed)
        lo, hi = _ENCODING_RANGES[self.encoding]
        raw_f = v if self.encoding == "bool" else (v - self.offset) * self.scale
        if not math.isfinite(raw_f):
            if not saturate:
                raise ValueError(f"{value!r} cannot be encoded as {self.encoding}")
            if math.isnan(raw_f):
                raw = INT16_NO_VALUE if self.encoding == "int16" else 0
            else:
                raw = hi if raw_f > 0 else lo
        else:
            raw = round(raw_f)
            if not lo <= raw <= hi or (self.encoding == "int16" and raw == INT16_NO_VALUE):
                if not saturate:
                    raise ValueError(f"{value!r} is out of range for {self.encoding} (raw {raw})")
                # -32768 is reserved for "no value", so saturation stops one short of it
                raw = min(max(raw, lo + (self.encoding == "int16")), hi)
        if self.encoding == "uint32":
            return (raw >> 16) & 0xFFFF, raw & 0xFFFF
        return (raw & 0xFFFF,)

    def decode(self, words: Sequence[int]) -> float:
        """Value in the signal's SI unit from the raw words (the inverse of :meth:`encode`).

        Raises ValueError on a wrong number of words or a word outside 0..65535.
        """
        if len(words) != self.width:
            raise ValueError(f"{self.encoding} needs {self.width} word(s), got {len(words)}")
        if any(not 0 <= w <= 0xFFFF for w in words):
            raise ValueError(f"register words must be 0..65535, got {list(words)}")
        if self.encoding == "float32":
            return struct.unpack(">f", struct.pack(">HH", *words))[0]
        if self.encoding == "bool":
            return float(bool(words[0]))
        if self.encoding == "uint32":
            raw = (words[0] << 16) | words[1]
        elif self.encoding == "int16":
            raw = words[0] - 0x10000 if words[0] & 0x8000 else words[0]
            if raw == INT16_NO_VALUE:
                return math.nan
        else:
            raw = words[0]
        return raw / self.scale + self.offset


@dataclass(frozen=True)
class Signal:
    """One signal of the twin (see module docstring)."""

    name: str
    unit: str
    role: Role
    description: str
    min: float = -math.inf
    max: float = math.inf
    nominal: float = 1.0
    start: float | None = None
    type: VarType = "Real"
    display_unit: str | None = None
    param: str | None = None  # dotted ModelParams field this signal sets, for parameters
    modbus: ModbusBinding | None = None

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"signal {self.name}: unit {self.unit!r} not in UNITS")
        if self.display_unit is not None and DISPLAY_UNITS[self.display_unit][0] != self.unit:
            raise ValueError(f"signal {self.name}: display unit {self.display_unit} does not apply to {self.unit}")
        if not self.min <= self.max:
            raise ValueError(f"signal {self.name}: min {self.min} > max {self.max}")


def _default(param: str) -> float:
    section, name = param.split(".")
    return float(getattr(getattr(ModelParams(), section), name))


def _p(name: str, unit: str, param: str, description: str, lo: float, hi: float, nominal: float,
       display_unit: str | None = None) -> Signal:
    return Signal(name, unit, "parameter", description, lo, hi, nominal, _default(param),
                  display_unit=display_unit, param=param)


T_LO_K, T_HI_K = 250.0, 500.0
"""Range accepted for any temperature signal of the twin [K]."""
C_HI = 20000.0
"""Upper bound of any concentration signal [mol/m3]."""

TWIN_SIGNALS: tuple[Signal, ...] = (
    # -- parameters: kinetics
    _p("k1_ref", "1/s", "kinetics.k1_ref_per_s", "Rate constant of A -> B at T_ref", 1e-9, 1.0, 1e-4),
    _p("k2_ref", "1/s", "kinetics.k2_ref_per_s", "Rate constant of B -> C at T_ref", 1e-9, 1.0, 1e-4),
    _p("T_ref", "K", "kinetics.T_ref_K", "Reference temperature of the Arrhenius laws", T_LO_K, T_HI_K, 350.0, "degC"),
    _p("E1", "J/mol", "kinetics.E1_J_per_mol", "Activation energy of A -> B", 1e3, 3e5, 1e5),
    _p("E2", "J/mol", "kinetics.E2_J_per_mol", "Activation energy of B -> C", 1e3, 3e5, 1e5),
    _p("dH1", "J/mol", "kinetics.dH1_J_per_mol", "Reaction enthalpy of A -> B (negative: exothermic)", -5e5, 5e5, 1e5),
    _p("dH2", "J/mol", "kinetics.dH2_J_per_mol", "Reaction enthalpy of B -> C (negative: exothermic)", -5e5, 5e5, 1e5),
    # -- parameters: reactor
    _p("V", "m3", "reactor.volume_m3", "Liquid volume of the charge", 1e-6, 100.0, 1.0),
    _p("rho", "kg/m3", "reactor.density_kg_per_m3", "Density of the reaction mass", 100.0, 5000.0, 1000.0),
    _p("cp", "J/(kg.K)", "reactor.heat_capacity_J_per_kg_K", "Specific heat capacity of the reaction mass", 100.0, 1e4, 2000.0),
    _p("UA", "W/K", "reactor.UA_W_per_K", "Overall heat-transfer coefficient times area, reactor to jacket", 0.0, 1e6, 1000.0),
    # -- parameters: charge
    _p("c_A0", "mol/m3", "charge.c_A0_mol_per_m3", "Initial concentration of A", 0.0, C_HI, 1000.0),
    _p("c_B0", "mol/m3", "charge.c_B0_mol_per_m3", "Initial concentration of B", 0.0, C_HI, 1000.0),
    _p("c_C0", "mol/m3", "charge.c_C0_mol_per_m3", "Initial concentration of C", 0.0, C_HI, 1000.0),
    _p("T0", "K", "charge.T0_K", "Initial temperature of the charge", T_LO_K, T_HI_K, 300.0, "degC"),
    # -- inputs
    Signal("T_jacket", "K", "input", "Jacket temperature (measured or commanded)", T_LO_K, T_HI_K, 300.0, 298.15,
           display_unit="degC"),
    # -- outputs
    Signal("c_A", "mol/m3", "output", "Concentration of reactant A", 0.0, C_HI, 1000.0),
    Signal("c_B", "mol/m3", "output", "Concentration of product B", 0.0, C_HI, 1000.0),
    Signal("c_C", "mol/m3", "output", "Concentration of impurity C", 0.0, C_HI, 1000.0),
    Signal("T", "K", "output", "Reactor temperature", T_LO_K, T_HI_K, 300.0, display_unit="degC"),
    Signal("yield_B", "1", "output", "Yield of B: (c_B - c_B0) / c_A0", 0.0, 1.0, 1.0),
    # -- FMU: hybrid correction, soft-sensor estimator and forecast (docs/fmu.md)
    Signal("correction_on", "1", "parameter", "Apply the learned ONNX rate correction (hybrid twin); false: physics only",
           start=1.0, type="Boolean"),
    Signal("estimator_on", "1", "parameter",
           "Run the soft-sensor estimator on T_measured and the lab assays; false: open-loop twin",
           start=0.0, type="Boolean"),
    # Start values = the SoftSensorConfig defaults tuned on plant data (docs/softsensor.md; a test keeps them equal).
    Signal("sigma_T_meas", "K", "parameter", "Estimator tuning: standard deviation of the reactor-temperature measurement",
           1e-4, 10.0, 0.1, 0.05),
    Signal("sigma_lab", "mol/m3", "parameter",
           "Estimator tuning: absolute part of the standard deviation of one lab assay of c_B or c_C (a 1.5 % relative part is added)",
           1e-3, 1000.0, 10.0, 0.5),
    Signal("sigma_rate_rel", "1", "parameter",
           "Estimator tuning: relative standard deviation of the reaction rates (process noise)", 0.0, 1.0, 0.05, 0.03),
    Signal("t_batch_end", "s", "parameter", "Planned end of the batch, time in batch: horizon of the forecast",
           1.0, 1e6, 36000.0, 36000.0),
    Signal("forecast_interval", "s", "parameter", "Time between two forecasts of the batch (0: no forecast)",
           0.0, 1e5, 300.0, 300.0),
    Signal("T_measured", "K", "input", "Measured reactor temperature (soft-sensor mode)", T_LO_K, T_HI_K, 300.0, 298.15,
           display_unit="degC"),
    Signal("lab_c_B", "mol/m3", "input", "Lab assay of c_B (used when lab_valid; sampled at lab_sample_time)",
           0.0, C_HI, 1000.0, 0.0),
    Signal("lab_c_C", "mol/m3", "input", "Lab assay of c_C (used when lab_valid; sampled at lab_sample_time)",
           0.0, C_HI, 1000.0, 0.0),
    Signal("lab_sample_time", "s", "input",
           "Time in batch at which the lab sample was drawn; a new assay is recognised by a new sample time",
           0.0, 1e7, 3600.0, 0.0),
    Signal("lab_valid", "1", "input", "True while lab_c_B, lab_c_C and lab_sample_time hold a valid assay",
           start=0.0, type="Boolean"),
    Signal("c_A_std", "mol/m3", "output", "Standard deviation of the estimate of c_A (0 with the estimator off)",
           0.0, C_HI, 10.0),
    Signal("c_B_std", "mol/m3", "output", "Standard deviation of the estimate of c_B (0 with the estimator off)",
           0.0, C_HI, 10.0),
    Signal("c_C_std", "mol/m3", "output", "Standard deviation of the estimate of c_C (0 with the estimator off)",
           0.0, C_HI, 10.0),
    Signal("T_std", "K", "output", "Standard deviation of the estimate of T (0 with the estimator off)", 0.0, 100.0, 0.1),
    Signal("t_stop_opt", "s", "output",
           "Forecast time in batch of the maximum of c_B (optimal stop), jacket temperature held", 0.0, 1e7, 3600.0),
    Signal("yield_B_forecast", "1", "output", "Forecast yield of B at t_stop_opt", 0.0, 1.0, 1.0),
    Signal("correction_in_domain", "1", "output",
           "True while the learned correction is inside its training domain (true when it is off)", type="Boolean"),
    Signal("model_health", "1", "output",
           "0 good; 1 warning (correction outside its domain, or the innovation test failing); "
           "2 alarm (persistent model mismatch or sensor fault)", 0.0, 2.0, 1.0, type="Integer"),
)


def by_name(table: Iterable[Signal] = TWIN_SIGNALS) -> dict[str, Signal]:
    """Signals of ``table`` keyed by name."""
    return {s.name: s for s in table}


def params_from_signals(values: dict[str, float], base: ModelParams | None = None) -> ModelParams:
    """ModelParams with the parameter signals in ``values`` (by signal name) applied to ``base``."""
    sigs = by_name()
    changes = {}
    for name, v in values.items():
        s = sigs.get(name)
        if s is None or s.param is None:
            raise KeyError(f"{name} is not a parameter signal")
        changes[s.param.replace(".", "__")] = v
    return (base or ModelParams()).replace(**changes)


COLUMNS = ("name", "unit", "display_unit", "role", "type", "min", "max", "nominal", "start", "description",
           "modbus_table", "modbus_address", "modbus_encoding", "modbus_scale", "modbus_offset")


def rows(table: Iterable[Signal] = TWIN_SIGNALS) -> list[dict[str, object]]:
    """The table as a list of flat rows (the columns of :data:`COLUMNS`)."""
    out = []
    for s in table:
        m = s.modbus
        out.append({"name": s.name, "unit": s.unit, "display_unit": s.display_unit or "", "role": s.role,
                    "type": s.type, "min": s.min, "max": s.max, "nominal": s.nominal,
                    "start": "" if s.start is None else s.start, "description": s.description,
                    "modbus_table": m.table if m else "", "modbus_address": m.address if m else "",
                    "modbus_encoding": m.encoding if m else "", "modbus_scale": m.scale if m else "",
                    "modbus_offset": m.offset if m else ""})
    return out


def csv_text(columns: Sequence[str], table_rows: Iterable[dict[str, object]]) -> str:
    """Rows (dicts keyed by column) as CSV text with a header line."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(table_rows)
    return buf.getvalue()


def aligned_text(columns: Sequence[str], table_rows: Iterable[dict[str, object]]) -> str:
    """Rows (dicts keyed by column) as an aligned text table with a header and a rule."""
    data = [[str(r[c]) for c in columns] for r in table_rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(d, widths, strict=True)) for d in data]
    return "\n".join(lines)


def to_csv(table: Iterable[Signal] = TWIN_SIGNALS) -> str:
    """The table as CSV text."""
    return csv_text(COLUMNS, rows(table))


def to_text(table: Iterable[Signal] = TWIN_SIGNALS) -> str:
    """The table as an aligned text table for the console."""
    return aligned_text(("name", "unit", "role", "min", "max", "nominal", "start", "description"), rows(table))


_ = fields  # re-exported for generators that introspect Signal
