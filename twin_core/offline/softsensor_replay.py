"""Replay a recorded batch through the soft sensor (closed loop) and score it against the hidden truth.

Used by ``twin softsensor`` (twin_core.offline.softsensor_cli), by validation/softsensor_scoring.py
(the table in docs/softsensor.md) and by the tests. A batch is a :class:`~twin_core.offline.batches.Batch`
of the one data-set reader: the rows of the plant data set (one a minute), lab results on the row
where they arrived, the recorded charge and the recipe. The soft sensor is fed every row's readings
as they are (it does its own input checks); the open-loop replay it is compared with is
:func:`twin_core.offline.batches.open_loop`. Sensor faults can be injected into a copy of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from twin_core.analysis import yield_of_c_B
from twin_core.errors import MeasurementError
from twin_core.estimation import STATE_NAMES, Forecast, SoftSensor, SoftSensorAlarm, SoftSensorConfig
from twin_core.offline.batches import Batch, params_for


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


def replay(sensor: SoftSensor, batch: Batch, forecast_times_s: Sequence[float] = (),
           keep_history: bool = False, start: dict | None = None) -> ReplayResult:
    """Run ``batch`` row by row through ``sensor`` (started here from the recorded charge, with the
    further keywords ``start`` of SoftSensor.start: a plant prior's trust0, factors0, prior_std).

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
    est = sensor.start(float(t[0]), x0=(float(batch.c_A0_recorded_mol_per_m3), 0.0, 0.0, T0), T_measured_K=T0,
                       **(start or {}))
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


def inject_fault(batch: Batch, kind: str, t_fault_s: float, drift_K_per_s: float = 0.005) -> Batch:
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


def lab_z_scores(batch: Batch, result: ReplayResult, config: SoftSensorConfig) -> list[float]:
    """Each lab c_B of ``batch`` against the estimate shown at its sample time (before the assay was
    known), standardised by the estimate's SD and the assay's (config.lab_std): what a plant can
    check its intervals by (ml_onnx.trust.PlantPrior's scale). Assays without a c_B or that arrived
    with their sample (nothing was shown before them) are left out."""
    out = []
    for a in batch.labs:
        i = min(int(np.searchsorted(batch.t_s, a.sample_s - 1e-9)), len(batch.t_s) - 1)
        if math.isfinite(a.c_B_mol_per_m3) and a.arrival_s > a.sample_s:
            r = config.lab_std(abs(a.c_B_mol_per_m3))
            out.append(float((a.c_B_mol_per_m3 - result.x[i, 1]) / math.hypot(result.std[i, 1], r)))
    return out


def true_final_yield(batch: Batch) -> float:
    """True c_B at the end of the reaction programme over the recorded charge [1]."""
    cB = float(np.interp(batch.t_end_s, batch.t_s, batch.require_truth()[:, 1]))
    return float(yield_of_c_B(cB, params_for(batch)))


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
