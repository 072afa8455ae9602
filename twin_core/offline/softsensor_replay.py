"""Replay a recorded batch through the soft sensor and score it against the hidden truth (no I/O).

Used by ``twin softsensor`` (twin_core.offline.softsensor_cli), by validation/softsensor_scoring.py (the
table in docs/softsensor.md) and by the tests. A batch is given as arrays: the rows of the plant
data set (one a minute), lab results on the row where they arrived, the recorded charge and the
recipe. Sensor faults can be injected into a copy of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from twin_core.errors import MeasurementError
from twin_core.estimation import STATE_NAMES, SoftSensor, SoftSensorAlarm
from twin_core.estimation import Forecast
from twin_core.hybrid import CorrectionModel, HybridTwin
from twin_core.params import ModelParams
from twin_core.recipe import Recipe


@dataclass(frozen=True)
class BatchInput:
    """One recorded batch. Times [s] from the batch start; NaN where a reading is missing.

    labs: (arrival time, sample time, c_B, c_C [mol/m3]) in order of arrival.
    truth: the plant's hidden (c_A, c_B, c_C, T) at the row times, when known (scoring only).
    """

    batch_id: int
    t_s: np.ndarray
    T_reactor_K: np.ndarray
    T_jacket_K: np.ndarray
    labs: tuple[tuple[float, float, float, float], ...]
    c_A0_mol_per_m3: float
    recipe: Recipe | None = None
    truth: np.ndarray | None = None
    split: str = ""
    recipe_id: str = ""

    @property
    def t_end_s(self) -> float:
        """End of the reaction programme (the discharge decision), or the last row."""
        return float(self.recipe.end_time_s) if self.recipe is not None else float(self.t_s[-1])


@dataclass
class ReplayResult:
    """The soft sensor's estimate at every row, what it refused and what it forecast."""

    t_s: np.ndarray
    x: np.ndarray                  # (n, 7) estimates after each row (STATE_NAMES order)
    std: np.ndarray                # (n, 7) standard deviations
    health: np.ndarray             # (n,) 0 good, 1 warning, 2 alarm
    alarms: np.ndarray             # (n,) SoftSensorAlarm bits
    cov4: np.ndarray               # (n, 4, 4) covariance of (c_A, c_B, c_C, T) at the last filter step
    refused: list[tuple[float, str, str]] = field(default_factory=list)  # (time, signal, reason)
    forecasts: dict[float, Forecast] = field(default_factory=dict)
    history: list[tuple[float, tuple[float, ...], tuple[float, ...]]] = field(default_factory=list)

    def first_alarm_s(self, flag: SoftSensorAlarm | int | None = None) -> float:
        """Time of the first row with ``flag`` (any alarm when None) raised; NaN if never."""
        mask = self.alarms != 0 if flag is None else (self.alarms & int(flag)) != 0
        idx = np.flatnonzero(mask)
        return float(self.t_s[idx[0]]) if len(idx) else math.nan


def params_for(batch: BatchInput, params: ModelParams) -> ModelParams:
    """The model parameters with the batch's recorded charge (c_A0) and first measured temperature."""
    T0 = batch.T_reactor_K[np.isfinite(batch.T_reactor_K)][0]
    return params.replace(c_A0_mol_per_m3=float(batch.c_A0_mol_per_m3), T0_K=float(T0))


def replay(sensor: SoftSensor, batch: BatchInput, forecast_times_s: Sequence[float] = (),
           keep_history: bool = False) -> ReplayResult:
    """Run ``batch`` row by row through ``sensor`` (started here from the recorded charge).

    At each row: update with the readings, then the lab results that arrived on that row, then a
    forecast under the batch's recipe if a time of ``forecast_times_s`` has been reached. Refused
    measurements are listed with their reason (the estimate is unchanged by them).
    """
    t = batch.t_s
    n = len(t)
    X = np.empty((n, len(STATE_NAMES)))
    S = np.empty_like(X)
    health = np.zeros(n, dtype=int)
    alarms = np.zeros(n, dtype=int)
    cov4 = np.empty((n, 4, 4))
    refused: list[tuple[float, str, str]] = []
    forecasts: dict[float, Forecast] = {}
    finite = np.isfinite(batch.T_reactor_K)
    T0 = float(batch.T_reactor_K[finite][0])
    est = sensor.start(float(t[0]), x0=(float(batch.c_A0_mol_per_m3), 0.0, 0.0, T0), T_measured_K=T0)
    labs = sorted(batch.labs, key=lambda r: r[0])
    j = 0
    pending_fc = sorted(float(v) for v in forecast_times_s)
    k = 0
    for i in range(n):
        ti = float(t[i])
        try:
            est = sensor.update(ti, float(batch.T_reactor_K[i]), float(batch.T_jacket_K[i]))
        except MeasurementError as exc:
            refused.append((ti, exc.signal, exc.reason))
        while j < len(labs) and labs[j][0] <= ti + 1e-9:
            ta, ts, cB, cC = labs[j]
            j += 1
            try:
                est = sensor.add_lab(ts, cB, cC, ta)
            except MeasurementError as exc:
                refused.append((ti, exc.signal, exc.reason))
        while k < len(pending_fc) and pending_fc[k] <= ti + 1e-9:
            if batch.recipe is not None:
                forecasts[pending_fc[k]] = sensor.forecast(batch.recipe)
            k += 1
        X[i] = est.x
        S[i] = est.std
        health[i] = est.health
        alarms[i] = int(est.alarms)
        cov4[i] = sensor.covariance()[:4, :4]
    return ReplayResult(t.copy(), X, S, health, alarms, cov4, refused, forecasts,
                        sensor.history() if keep_history else [])


def open_loop(batch: BatchInput, params: ModelParams, correction: CorrectionModel | None = None) -> np.ndarray:
    """The twin without feedback: (c_A, c_B, c_C, T) at the row times from the recorded charge and
    the first measured temperature, driven by the measured jacket temperature (the mean of the two
    readings that bracket each row interval, held over it)."""
    twin = HybridTwin(params_for(batch, params), correction)
    state = twin.initial_state()
    t, Tj = batch.t_s, batch.T_jacket_K
    out = np.empty((len(t), 4))
    out[0] = state.x
    last = float(Tj[np.isfinite(Tj)][0])
    for i in range(1, len(t)):
        a = float(Tj[i - 1]) if math.isfinite(Tj[i - 1]) else last
        b = float(Tj[i]) if math.isfinite(Tj[i]) else a
        last = b
        state = twin.step(state, float(t[i - 1]), float(t[i] - t[i - 1]), 0.5 * (a + b))
        out[i] = state.x
    return out


def inject_fault(batch: BatchInput, kind: str, t_fault_s: float, drift_K_per_s: float = 0.005) -> BatchInput:
    """A copy of ``batch`` whose reactor-temperature reading fails at t_fault_s [s]:
    ``stuck`` (frozen at its last value) or ``drift`` (walks away at drift_K_per_s)."""
    T = batch.T_reactor_K.copy()
    i0 = int(np.searchsorted(batch.t_s, t_fault_s))
    if kind == "stuck":
        T[i0:] = T[i0 - 1] if i0 > 0 else T[0]
    elif kind == "drift":
        T[i0:] = T[i0:] + drift_K_per_s * (batch.t_s[i0:] - t_fault_s)
    else:
        raise ValueError(f"unknown fault kind {kind!r}; expected 'stuck' or 'drift'")
    return replace(batch, T_reactor_K=T)


def c_B_rmse_percent(est_c_B: np.ndarray, true_c_B: np.ndarray) -> float:
    """RMSE of c_B as a percentage of the batch's largest true c_B."""
    return float(100.0 * np.sqrt(np.mean((est_c_B - true_c_B) ** 2)) / np.max(true_c_B))


def true_final_yield(batch: BatchInput) -> float:
    """True c_B at the end of the reaction programme over the recorded charge [1]."""
    if batch.truth is None:
        raise ValueError("the batch carries no truth")
    cB = float(np.interp(batch.t_end_s, batch.t_s, batch.truth[:, 1]))
    return cB / batch.c_A0_mol_per_m3


def nees(result: ReplayResult, truth: np.ndarray) -> np.ndarray:
    """Normalised estimation error squared of (c_A, c_B, c_C, T) per row: e' P^-1 e with the
    estimator's own covariance (chi-square with 4 dof for a consistent estimator).

    Rows where a filter step did not coincide with the row (the estimate was extrapolated) use the
    covariance of the last step. The covariance is near-singular along c_A + c_B + c_C when the
    charge is well known, hence the pseudo-inverse."""
    e = result.x[:, :4] - truth[:, :4]
    out = np.empty(len(e))
    for i in range(len(e)):
        out[i] = float(e[i] @ np.linalg.pinv(result.cov4[i], hermitian=True) @ e[i])
    return out
