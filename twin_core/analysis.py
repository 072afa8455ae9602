"""Batch analysis: yield, selectivity, conversion, impurity, and the best time to stop.

Definitions (c_X0 the charge, c_X the value at the time considered):
    conversion   X   = (c_A0 - c_A) / c_A0
    yield of B   Y_B = (c_B - c_B0) / c_A0
    selectivity  S   = (c_B - c_B0) / (c_A0 - c_A)      (B formed per A converted; NaN before any conversion)
    impurity     f_C = c_C / (c_A + c_B + c_C)          (mole fraction of C among the three species)
Optimal stop: the time of maximum c_B on the trajectory, refined between samples by the quartic
through the five samples around the largest one (a parabola through three where fewer exist).

Economic stop (:class:`Economics`): the batch is worth its product minus the vessel time it takes,

    profit(t) = value_B * V * (c_B(t) - c_B0) - cost_per_h * (t + turnaround) / 3600

and is discharged at the time of maximum profit among the times where the impurity fraction is
still within its specification (C never turns back into B, so once the spec is crossed the batch
cannot recover: the feasible window is [0, first crossing]).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from twin_core.params import ModelParams
from twin_core.simulation import Trajectory
from twin_core.validate import spec, validated


def conversion(x: np.ndarray, p: ModelParams) -> np.ndarray:
    """Conversion of A [1] for state rows x."""
    cA0 = p.charge.c_A0_mol_per_m3
    return (cA0 - np.asarray(x)[..., 0]) / cA0


def yield_of_c_B(c_B: float | np.ndarray, p: ModelParams) -> float | np.ndarray:
    """Yield of B [1] at concentration c_B [mol/m3] (B formed per A charged): (c_B - c_B0) / c_A0.

    The one place the formula is written (a float for a float, elementwise for an array).
    """
    return (c_B - p.charge.c_B0_mol_per_m3) / p.charge.c_A0_mol_per_m3


def yield_B(x: np.ndarray, p: ModelParams) -> np.ndarray:
    """Yield of B [1] (B formed per A charged) for state rows x."""
    return yield_of_c_B(np.asarray(x)[..., 1], p)


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


def _local_poly(t: np.ndarray, y: np.ndarray, i: int, npts: int) -> tuple[np.ndarray, float, float, int, int]:
    """Polynomial through ``npts`` samples around index i, in the scaled time s = (t - t_i) / dt.

    Returns (coefficients, highest power first; t_i; dt; first index; last index). Fewer points are
    used near the ends of the arrays. The samples are taken relative to y_i: near a flat maximum
    they differ from each other by far less than their own size.
    """
    n = len(t)
    npts = min(npts, n)
    lo = min(max(0, i - npts // 2), n - npts)
    hi = lo + npts - 1
    dt = float(t[min(i + 1, n - 1)] - t[max(i - 1, 0)]) / (2 if 0 < i < n - 1 else 1)
    s = (t[lo:hi + 1] - t[i]) / dt
    coef = np.linalg.solve(np.vander(s, npts), y[lo:hi + 1] - y[i])
    return coef, float(t[i]), dt, lo, hi


def _refine_max(t: np.ndarray, y: np.ndarray, i: int) -> tuple[float, float]:
    """(t, y) of the maximum of the samples y near their largest sample i (an interior index).

    Newton on the derivative of the local quartic (five samples) started from the parabola through
    three; a quartic's vertex error falls with the fourth power of the sample spacing, so the result
    varies smoothly with the parameters (what finite-difference sensitivities need).
    """
    t0, t1, t2 = t[i - 1:i + 2]
    y0, y1, y2 = y[i - 1:i + 2]
    denom = (t0 - t1) * (t0 - t2) * (t1 - t2)
    a = (t2 * (y1 - y0) + t1 * (y0 - y2) + t0 * (y2 - y1)) / denom
    b = (t2 * t2 * (y0 - y1) + t1 * t1 * (y2 - y0) + t0 * t0 * (y1 - y2)) / denom
    if a >= 0.0:
        return float(t1), float(y1)
    t_par = -b / (2.0 * a)
    if len(t) < 5:
        return float(t_par), float(y1 + a * (t_par * t_par - t1 * t1) + b * (t_par - t1))
    coef, tc, dt, lo, hi = _local_poly(t, y, i, 5)
    d1, d2 = np.polyder(coef), np.polyder(coef, 2)
    s = (t_par - tc) / dt
    s_lo, s_hi = (t[i - 1] - tc) / dt, (t[i + 1] - tc) / dt
    for _ in range(20):
        curv = np.polyval(d2, s)
        if not curv < 0.0:
            break
        step = np.polyval(d1, s) / curv
        s = min(max(s - step, s_lo), s_hi)
        if abs(step) < 1e-13:
            break
    return float(tc + s * dt), float(y[i] + np.polyval(coef, s))


def optimal_stop(tr: Trajectory) -> tuple[float, float]:
    """(time [s], c_B [mol/m3]) of the maximum of c_B on the trajectory.

    The maximum is refined between samples (see :func:`_refine_max`); if c_B still rises at the end
    of the trajectory (or falls from its start), that end is returned.
    """
    cB = tr.c_B
    i = int(np.argmax(cB))
    if i == 0 or i == len(cB) - 1:
        return float(tr.t_s[i]), float(cB[i])
    return _refine_max(tr.t_s, cB, i)


@validated("economics")
class Economics:
    """Economic data of a batch for the economic stop (currency units are the user's, e.g. EUR).

    value_B_per_mol         value of one mol of B in the discharged batch [currency/mol]
    cost_per_h              cost of one hour of vessel time: depreciation, utilities, labour [currency/h]
    turnaround_s            vessel time per batch outside the reaction: charge, discharge, clean [s]
    impurity_spec_fraction  highest mole fraction of C (among A, B, C) accepted at discharge [1]

    Defaults: an API intermediate at 50 per mol in a 2 m3 GMP vessel at 2000 per hour (vessel,
    utilities, operators and overheads of a GMP suite), a 4 h turnaround (cleaning of a glass-lined
    vessel dominates) and a 15 mol% spec on C (purged downstream by crystallisation). With the default
    parameters the marginal product pays for the vessel while dY_B/dt > cost / (value V c_A0) = 2 %/h.
    The turnaround adds a constant to the profit of every discharge time, so it shifts the profit but
    not the economic stop.
    """

    value_B_per_mol: float = spec(50.0, unit="1/mol", gt=0.0)
    cost_per_h: float = spec(2000.0, unit="1/h", ge=0.0)
    turnaround_s: float = spec(4 * 3600.0, unit="s", ge=0.0)
    impurity_spec_fraction: float = spec(0.15, gt=0.0, le=1.0)

    def profit(self, t_s: np.ndarray | float, c_B_mol_per_m3: np.ndarray | float, p: ModelParams) -> np.ndarray:
        """Profit of a batch discharged at t_s [s] with c_B [mol/m3] (currency units)."""
        return (self.value_B_per_mol * p.reactor.volume_m3 * (np.asarray(c_B_mol_per_m3) - p.charge.c_B0_mol_per_m3)
                - self.cost_per_h * (np.asarray(t_s) + self.turnaround_s) / 3600.0)


StopReason = Literal["optimum", "impurity_spec", "end_of_trajectory", "infeasible"]


@dataclass(frozen=True)
class EconomicStop:
    """Result of :func:`economic_stop`.

    limited_by: ``optimum`` (profit has an interior maximum inside the spec window),
    ``impurity_spec`` (profit still rising when the impurity reaches its spec: stop at the crossing),
    ``end_of_trajectory`` (profit still rising at the last sample), ``infeasible`` (off spec from t = 0).
    """

    t_stop_s: float
    profit: float
    c_B_mol_per_m3: float
    yield_B: float
    impurity_fraction: float
    limited_by: StopReason


def _interp(t: np.ndarray, y: np.ndarray, i: int, tq: float, npts: int = 4) -> float:
    """y at tq from the polynomial through ``npts`` samples around index i."""
    coef, tc, dt, _, _ = _local_poly(t, y, i, npts)
    return float(y[i] + np.polyval(coef, (tq - tc) / dt))


def _crossing(t: np.ndarray, y: np.ndarray, k: int, level: float) -> float:
    """Time in [t_{k-1}, t_k] where the local cubic through the samples around k crosses ``level``
    (y_{k-1} <= level < y_k); bisection, so it stays in the bracket whatever the cubic does."""
    coef, tc, dt, _, _ = _local_poly(t, y, k, 4)
    target = level - y[k]
    a, b = (t[k - 1] - tc) / dt, 0.0
    fa = np.polyval(coef, a) - target
    for _ in range(60):
        m = 0.5 * (a + b)
        fm = np.polyval(coef, m) - target
        if (fm > 0.0) == (fa > 0.0):
            a, fa = m, fm
        else:
            b = m
    return float(tc + 0.5 * (a + b) * dt)


def economic_stop(tr: Trajectory, p: ModelParams, econ: Economics) -> EconomicStop:
    """Most profitable discharge time on the trajectory within the impurity spec (see module doc)."""
    t, cB = tr.t_s, tr.c_B
    fC = impurity_fraction(tr.x)
    spec = econ.impurity_spec_fraction
    profit = econ.profit(t, cB, p)

    def result(t_stop: float, c_B: float, f_C: float, why: StopReason) -> EconomicStop:
        return EconomicStop(t_stop, float(econ.profit(t_stop, c_B, p)), c_B,
                            yield_of_c_B(c_B, p), f_C, why)

    if fC[0] > spec:
        return result(float(t[0]), float(cB[0]), float(fC[0]), "infeasible")
    over = np.flatnonzero(fC > spec)
    k = int(over[0]) if len(over) else len(t)  # first sample off spec; samples [0, k) are on spec
    i = int(np.argmax(profit[:k]))
    rising_at_window_end = k < len(t) and profit[k] > profit[k - 1]
    if i == k - 1 and rising_at_window_end:
        # Profit still rising when the impurity reaches its spec: discharge at the crossing.
        t_c = _crossing(t, fC, k, spec)
        return result(t_c, _interp(t, cB, k, t_c), spec, "impurity_spec")
    if i == len(t) - 1:
        return result(float(t[i]), float(cB[i]), float(fC[i]), "end_of_trajectory")
    if i == 0:
        # Profit falls from the start (k == 1 and not rising is the same case): do not run.
        return result(float(t[0]), float(cB[0]), float(fC[0]), "optimum")
    # The maximum lies within [t_{i-1}, t_{i+1}]; only its part up to the crossing is on spec.
    t_opt, _ = _refine_max(t, profit, i)
    if i + 1 == k and t_opt > t[i]:
        t_c = _crossing(t, fC, k, spec)
        if t_opt > t_c:
            return result(t_c, _interp(t, cB, k, t_c), spec, "impurity_spec")
    return result(t_opt, _interp(t, cB, i, t_opt, 5), _interp(t, fC, i, t_opt, 5), "optimum")
    if i == 0:
        return result(float(t[0]), float(cB[0]), float(fC[0]), "optimum")
    if k == len(t):
        return result(float(t[-1]), float(cB[-1]), float(fC[-1]), "end_of_trajectory")
    t_c = _crossing(t, fC, k, spec)
    return result(t_c, _interp(t, cB, k, t_c), spec, "impurity_spec")


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
        yield_B_at_opt=yield_of_c_B(cB_max, p),
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
