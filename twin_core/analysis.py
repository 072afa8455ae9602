"""Batch analysis: yield, selectivity, conversion, impurity, and the best time to stop.

Definitions (c_X0 the charge, c_X the value at the time considered):
    conversion   X   = (c_A0 - c_A) / c_A0
    yield of B   Y_B = (c_B - c_B0) / c_A0
    selectivity  S   = (c_B - c_B0) / (c_A0 - c_A)      (B formed per A converted; NaN before any conversion)
    impurity     f_C = c_C / (c_A + c_B + c_C)          (mole fraction of C among the three species)
Optimal stop: the time of maximum c_B on the trajectory (refined by a parabola through the
three samples around the maximum).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from twin_core.params import ModelParams
from twin_core.simulation import Trajectory


def conversion(x: np.ndarray, p: ModelParams) -> np.ndarray:
    """Conversion of A [1] for state rows x."""
    cA0 = p.charge.c_A0_mol_per_m3
    return (cA0 - np.asarray(x)[..., 0]) / cA0


def yield_B(x: np.ndarray, p: ModelParams) -> np.ndarray:
    """Yield of B [1] (B formed per A charged)."""
    return (np.asarray(x)[..., 1] - p.charge.c_B0_mol_per_m3) / p.charge.c_A0_mol_per_m3


def selectivity(x: np.ndarray, p: ModelParams) -> np.ndarray:
    """Selectivity to B [1] (B formed per A converted); NaN where nothing has converted."""
    x = np.asarray(x)
    converted = p.charge.c_A0_mol_per_m3 - x[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(converted > 0.0, (x[..., 1] - p.charge.c_B0_mol_per_m3) / converted, np.nan)


def impurity_fraction(x: np.ndarray) -> np.ndarray:
    """Mole fraction of C among A, B and C [1]."""
    x = np.asarray(x)
    return x[..., 2] / (x[..., 0] + x[..., 1] + x[..., 2])


def optimal_stop(tr: Trajectory) -> tuple[float, float]:
    """(time [s], c_B [mol/m3]) of the maximum of c_B on the trajectory.

    The maximum is refined by a parabola through the sample and its neighbours; if c_B still rises
    at the end of the trajectory, the end is returned.
    """
    cB = tr.c_B
    i = int(np.argmax(cB))
    if i == 0 or i == len(cB) - 1:
        return float(tr.t_s[i]), float(cB[i])
    t0, t1, t2 = tr.t_s[i - 1:i + 2]
    y0, y1, y2 = cB[i - 1:i + 2]
    denom = (t0 - t1) * (t0 - t2) * (t1 - t2)
    a = (t2 * (y1 - y0) + t1 * (y0 - y2) + t0 * (y2 - y1)) / denom
    b = (t2 * t2 * (y0 - y1) + t1 * t1 * (y2 - y0) + t0 * t0 * (y1 - y2)) / denom
    if a >= 0.0:
        return float(t1), float(y1)
    t_star = -b / (2.0 * a)
    c_star = y1 + a * (t_star * t_star - t1 * t1) + b * (t_star - t1)
    return float(t_star), float(c_star)


@dataclass(frozen=True)
class BatchSummary:
    """Key figures of one batch (SI units; fractions dimensionless)."""

    t_end_s: float
    conversion: float
    yield_B: float
    selectivity: float
    impurity_fraction: float
    c_B_end_mol_per_m3: float
    t_stop_opt_s: float
    c_B_max_mol_per_m3: float
    yield_B_at_opt: float
    T_peak_K: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(tr: Trajectory, p: ModelParams) -> BatchSummary:
    """Key figures of a simulated batch at its end and at its optimal stop."""
    end = tr.x[-1]
    t_opt, cB_max = optimal_stop(tr)
    sel = float(selectivity(end, p))
    return BatchSummary(
        t_end_s=float(tr.t_s[-1]), conversion=float(conversion(end, p)), yield_B=float(yield_B(end, p)),
        selectivity=sel, impurity_fraction=float(impurity_fraction(end)), c_B_end_mol_per_m3=float(end[1]),
        t_stop_opt_s=t_opt, c_B_max_mol_per_m3=cB_max,
        yield_B_at_opt=(cB_max - p.charge.c_B0_mol_per_m3) / p.charge.c_A0_mol_per_m3,
        T_peak_K=float(np.max(tr.T_K)),
    )


def format_summary(s: BatchSummary) -> str:
    """Human-readable summary (display units: h, degC, mol/L, %)."""
    sel = "n/a" if math.isnan(s.selectivity) else f"{100 * s.selectivity:.1f} %"
    return "\n".join([
        f"  at end of batch ({s.t_end_s / 3600:.2f} h): conversion {100 * s.conversion:.1f} %, "
        f"yield B {100 * s.yield_B:.1f} %, selectivity {sel}, impurity C {100 * s.impurity_fraction:.1f} %",
        f"  optimal stop (max c_B): {s.t_stop_opt_s / 3600:.2f} h, c_B {s.c_B_max_mol_per_m3 / 1000:.4f} mol/L, "
        f"yield B {100 * s.yield_B_at_opt:.1f} %",
        f"  peak reactor temperature: {s.T_peak_K - 273.15:.1f} degC",
    ])
