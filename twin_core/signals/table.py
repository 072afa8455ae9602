"""The signal record and its units: what every signal of the twin and the PLC is declared with.

Each signal has a name (also the FMI variable name and the OPC UA browse name), an SI unit, a
role, min/max/nominal, a description and, where it crosses Modbus, its register binding.

Units are written as FMI unit names (``mol/m3``, ``K``, ``s``, ``W/K``, ``J/mol``, ``1``); each maps
to SI base-unit exponents in :data:`UNITS` for the FMU's UnitDefinitions. Operator units (degC, h,
mol/L, %) are :data:`DISPLAY_UNITS`, declared per signal as ``display_unit``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from twin_core.errors import ParameterError
from twin_core.signals.modbus import ModbusBinding

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
    "%": ("1", 100.0, 0.0),
}

T_LO_K, T_HI_K = 250.0, 500.0
"""Range accepted for any temperature signal of the twin [K]."""
C_HI = 20000.0
"""Upper bound of any concentration signal [mol/m3]."""


@dataclass(frozen=True)
class Signal:
    """One signal (see the module docstring). ``param``: the dotted ModelParams field a parameter
    signal sets; ``modbus``: its register binding where it crosses Modbus. A bad declaration raises
    ParameterError naming ``<signal>.<field>``."""

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
    param: str | None = None
    modbus: ModbusBinding | None = None

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ParameterError(f"{self.name}.unit", self.unit, "not in UNITS")
        if self.display_unit is not None and (self.display_unit not in DISPLAY_UNITS
                                              or DISPLAY_UNITS[self.display_unit][0] != self.unit):
            raise ParameterError(f"{self.name}.display_unit", self.display_unit, f"does not apply to {self.unit}")
        if not self.min <= self.max:
            raise ParameterError(f"{self.name}.min", self.min, f"above max {self.max}")


def signals_by_name(table: Iterable[Signal]) -> dict[str, Signal]:
    """Signals of ``table`` keyed by name."""
    return {s.name: s for s in table}
