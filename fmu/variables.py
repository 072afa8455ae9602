"""The FMU's variables, generated from the signal table (twin_core.signals), never hand-listed.

Each signal becomes one FMI 2.0 scalar variable. Its value reference is its position in the table,
which is also its slot in the two value buffers the slave shares with the native FMI layer:
``real`` (array of C doubles, Real variables) and ``ints`` (array of C ints, Integer and Boolean
variables, plus one hidden slot at the end holding the FMU's life-cycle mode). The native layer
reads outputs straight from these buffers and validates and writes inputs and parameters into them,
so fmi2GetReal/fmi2SetReal never enter Python.

Mapping of roles (FMI 2.0 spec, table of causality/variability/initial):
    parameter -> causality=parameter, variability=fixed, initial=exact (settable until
                 fmi2ExitInitializationMode)
    input     -> causality=input, variability=continuous (Real) or discrete (Integer/Boolean)
    output    -> causality=output, variability=continuous/discrete, initial=calculated
    local     -> causality=local, initial=calculated
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from twin_core.signals.table import C_HI, Signal
from twin_core.signals.twin import TWIN_SIGNALS

# Life-cycle modes kept in the hidden last slot of the integer buffer (read by the native layer).
MODE_INSTANTIATED = 0
MODE_INITIALIZATION = 1
MODE_STEP = 2
MODE_TERMINATED = 3

MODE_GATES: dict[str, str] = {
    "T_measured": "estimator_on",
    "lab_c_B": "estimator_on",
    "lab_c_C": "estimator_on",
    "lab_sample_time": "estimator_on",
}
"""Inputs used only in one mode -> the Boolean parameter that turns that mode on. While it is off,
such an input is accepted whatever its finite value and ignored (an unconnected Simulink port
sends 0); its range is checked when exitInitializationMode turns the mode on (both FMUs)."""

OUTPUT_BOUNDS: dict[str, tuple[float, float]] = {
    # c_A + c_B + c_C is conserved, so no concentration exceeds the charge's sum (<= 3 C_HI); near
    # zero the integrator's absolute tolerance (1e-6 mol/m3) lets one dip below it (c_B = -1.8e-7
    # with c_B0 = 5000, c_A0 = 1: tests/test_fmu_fmpy.py), so no minimum is promised.
    "c_A": (-math.inf, 3 * C_HI),
    "c_B": (-math.inf, 3 * C_HI),
    "c_C": (-math.inf, 3 * C_HI),
    # (c_B - c_B0) / c_A0 falls below 0 as B turns into C (-5000 with c_B0 = 5000, c_A0 = 1).
    "yield_B": (-math.inf, math.inf),
    "yield_B_forecast": (-math.inf, math.inf),
    # A runaway (or an endothermic charge) leaves the jacket's range.
    "T": (-math.inf, math.inf),
    # c_C / (c_A + c_B + c_C): 1.0000000000000913 when c_A and c_B dip below zero (see above).
    "impurity_forecast": (-math.inf, math.inf),
    # A time in batch: the current time once past the planned end, whatever the start time.
    "t_stop_opt": (-math.inf, math.inf),
}
"""Declared ranges of outputs that the signal table's operator ranges do not bound (FMI: an output's
min/max is a promise). Everything else declares the signal table's range."""

_CAUSALITY = {"parameter": "parameter", "input": "input", "output": "output", "local": "local"}
KIND_CODES = {"Real": "R", "Integer": "I", "Boolean": "B"}
CAUSALITY_CODES = {"parameter": "p", "input": "i", "output": "o", "local": "l"}


@dataclass(frozen=True)
class FmiVariable:
    """One FMI scalar variable: the signal it comes from and its FMI attributes."""

    vr: int
    signal: Signal
    causality: str
    variability: str
    initial: str | None

    @property
    def name(self) -> str:
        return self.signal.name

    @property
    def type(self) -> str:
        return self.signal.type

    @property
    def settable(self) -> bool:
        """Whether a master may set it (parameters before initialisation ends, inputs always)."""
        return self.causality in ("parameter", "input")

    @property
    def start(self) -> float | None:
        return self.signal.start

    @property
    def min(self) -> float:
        """Declared minimum: the signal's, or the output's honest bound (:data:`OUTPUT_BOUNDS`)."""
        return OUTPUT_BOUNDS[self.name][0] if self.causality == "output" and self.name in OUTPUT_BOUNDS else self.signal.min

    @property
    def max(self) -> float:
        return OUTPUT_BOUNDS[self.name][1] if self.causality == "output" and self.name in OUTPUT_BOUNDS else self.signal.max


def fmi_variables(table: Iterable[Signal] = TWIN_SIGNALS) -> tuple[FmiVariable, ...]:
    """The FMI variables of the signal table, value reference = position in the table."""
    out = []
    for vr, s in enumerate(table):
        causality = _CAUSALITY[s.role]
        continuous = "continuous" if s.type == "Real" else "discrete"
        if s.role == "parameter":
            variability, initial = "fixed", "exact"
        elif s.role == "input":
            variability, initial = continuous, None  # FMI 2.0: initial is not allowed on inputs
        else:
            variability, initial = continuous, "calculated"
        if s.role in ("parameter", "input") and s.start is None:
            raise ValueError(f"signal {s.name}: a {s.role} needs a start value")
        out.append(FmiVariable(vr, s, causality, variability, initial))
    return tuple(out)


def check_value(var: FmiVariable, value: float) -> str | None:
    """Why ``value`` cannot be set on ``var`` (None when it can): NaN/inf, outside [min, max].

    The native layer applies the same rule from the same min/max (see :func:`layout_arrays`).
    """
    v = float(value)
    if var.type == "Boolean":
        return None
    if not math.isfinite(v):
        return "must be finite"
    s = var.signal
    if v < s.min or v > s.max:
        return f"outside [{s.min:g}, {s.max:g}] {s.unit}"
    if var.type == "Integer" and v != int(v):
        return "must be an integer"
    return None
