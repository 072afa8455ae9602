"""Soft sensor: bad measurements refused with a reason (estimator untouched), suspicious ones
down-weighted, concentrations never negative (projection checked against a QP solver)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize
from softsensor_synthetic import make_batch, run

from twin_core.errors import MeasurementError
from twin_core.estimation import IB, IC, N_STATES, SoftSensor, SoftSensorConfig
from twin_core.params import ModelParams

CFG = SoftSensorConfig(T_sensor_lag_s=0.0, history_window_s=3600.0)


@pytest.fixture()
def running() -> SoftSensor:
    """A soft sensor 2 h into a batch with three lab results used (sampled at 1800, 3600, 5400 s)."""
    b = make_batch(dt_s=60.0, seed=7, t_end_s=2 * 3600.0, lab_delay_s=600.0)
    s = SoftSensor(ModelParams(), None, CFG)
    run(s, b)
    assert s._history.lab_times == [1800.0, 3600.0, 5400.0]
    return s


def snapshot(s: SoftSensor) -> str:
    return json.dumps(s.get_state(), sort_keys=True)


T_NOW = 7200.0
REFUSED_SCANS = [
    # (t_s, T_measured, T_jacket, signal, reason contains)
    (T_NOW + 60, math.nan, 340.0, "T_measured", "not a finite number"),
    (T_NOW + 60, math.inf, 340.0, "T_measured", "not a finite number"),
    (T_NOW + 60, 120.0, 340.0, "T_measured", "outside the sensor range"),
    (T_NOW + 60, 900.0, 340.0, "T_measured", "outside the sensor range"),
    (T_NOW + 60, "350", 340.0, "T_measured", "not a number"),
    (T_NOW + 60, True, 340.0, "T_measured", "not a number"),
    (T_NOW + 60, 340.0, math.nan, "T_jacket", "not a finite number"),
    (T_NOW + 60, 340.0, 600.0, "T_jacket", "outside the sensor range"),
    (T_NOW, 340.0, 340.0, "t_s", "not after the previous scan"),
    (T_NOW - 60, 340.0, 340.0, "t_s", "not after the previous scan"),
    (math.nan, 340.0, 340.0, "t_s", "not a finite time"),
]


@pytest.mark.parametrize("t, T, Tj, signal, reason", REFUSED_SCANS)
def test_bad_scan_is_refused_and_changes_nothing(running, t, T, Tj, signal, reason):
    before = snapshot(running)
    with pytest.raises(MeasurementError) as exc:
        running.update(t, T, Tj)
    assert exc.value.signal == signal
    assert reason in exc.value.reason
    assert snapshot(running) == before


REFUSED_LABS = [
    # (sample time, c_B, c_C, arrival, signal, reason contains)
    (6000.0, math.nan, 10.0, None, "lab_c_B", "not a finite number"),
    (6000.0, 300.0, math.nan, None, "lab_c_C", "not a finite number"),
    (6000.0, -1.0, 10.0, None, "lab_c_B", "negative"),
    (6000.0, 300.0, -0.5, None, "lab_c_C", "negative"),
    (6000.0, 3e4, 10.0, None, "lab_c_B", "above the assay range"),
    (T_NOW + 600.0, 300.0, 10.0, None, "lab_sample_time", "in the future"),
    (-60.0, 300.0, 10.0, None, "lab_sample_time", "before the batch started"),
    (600.0, 300.0, 10.0, None, "lab_sample_time", "older than the history window"),
    (1800.0, 300.0, 10.0, None, "lab_sample_time", "duplicate"),
    (3600.0 + 1e-7, 300.0, 10.0, None, "lab_sample_time", "duplicate"),
    (math.nan, 300.0, 10.0, None, "lab_sample_time", "not a finite time"),
    (6000.0, 300.0, 10.0, 5000.0, "lab_arrival_time", "before the sample was drawn"),
]


@pytest.mark.parametrize("ts, cB, cC, arrival, signal, reason", REFUSED_LABS)
def test_bad_lab_result_is_refused_and_changes_nothing(running, ts, cB, cC, arrival, signal, reason):
    before = snapshot(running)
    with pytest.raises(MeasurementError) as exc:
        running.add_lab(ts, cB, cC, arrival)
    assert exc.value.signal == signal
    assert reason in exc.value.reason
    assert snapshot(running) == before


def test_refusal_before_start_and_recovery_after_a_gap(running):
    with pytest.raises(MeasurementError, match="not been started"):
        SoftSensor().update(0.0, 300.0, 300.0)
    with pytest.raises(MeasurementError, match="not been started"):
        SoftSensor().add_lab(0.0, 1.0, 1.0)
    # A dropout (refused reading) leaves a gap: the next good scan spans it.
    with pytest.raises(MeasurementError):
        running.update(T_NOW + 60.0, math.nan, 340.0)
    e = running.update(T_NOW + 120.0, running.estimate.T_K, running.estimate.T_K)
    assert e.t_s == T_NOW + 120.0 and running._history.records[-1].t_prev == T_NOW


def test_temperature_spike_is_down_weighted():
    b = make_batch(dt_s=60.0, seed=4, t_end_s=3 * 3600.0)
    spiked = dataclasses.replace(b, T_meas_K=b.T_meas_K.copy())
    k = 150
    spiked.T_meas_K[k] += 8.0
    moves = {}
    for name, gamma in (("huber", 3.0), ("trusting", 1e9)):
        cfg = dataclasses.replace(CFG, huber_threshold=gamma)
        clean = run(SoftSensor(ModelParams(), None, cfg), b, with_labs=False)
        spike = run(SoftSensor(ModelParams(), None, cfg), spiked, with_labs=False)
        moves[name] = abs(spike[k].T_K - clean[k].T_K)
    assert moves["trusting"] > 1.0        # trusted blindly, one bad reading drags the estimate
    assert moves["huber"] < 0.3           # down-weighted: it barely moves
    assert moves["huber"] > 0.0           # ... but it is not ignored either


def test_single_scan_spike_at_fast_scan_barely_counts():
    b = make_batch(dt_s=1.0, seed=4, t_end_s=1800.0)
    spiked = dataclasses.replace(b, T_meas_K=b.T_meas_K.copy())
    spiked.T_meas_K[1005] -= 8.0  # inside the interval (1000, 1010]
    clean = run(SoftSensor(ModelParams(), None, CFG), b, with_labs=False)
    spike = run(SoftSensor(ModelParams(), None, CFG), spiked, with_labs=False)
    assert abs(spike[1010].T_K - clean[1010].T_K) < 0.02


def test_far_off_lab_result_is_down_weighted():
    b = make_batch(dt_s=60.0, seed=4, t_end_s=3 * 3600.0)
    shifts = {}
    for name, gate in (("gated", CFG.lab_gate_nis), ("trusting", 1e12)):
        s = SoftSensor(ModelParams(), None, dataclasses.replace(CFG, lab_gate_nis=gate))
        run(s, b, with_labs=False)
        before = s.estimate.c_B
        ts = float(b.t_s[-20])
        cB_true = float(b.x_true[-20, IB])
        after = s.add_lab(ts, 1.5 * cB_true, float(b.x_true[-20, IC]))
        shifts[name] = after.c_B - before
    assert shifts["trusting"] > 0.0
    assert 0.0 < shifts["gated"] < 0.7 * shifts["trusting"]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_concentrations_never_negative_under_aggressive_noise(seed):
    rng = np.random.default_rng(seed)
    b = make_batch(dt_s=60.0, seed=seed, noise_K=1.5, lab_rsd=0.4, lab_every_s=900.0, lab_delay_s=1200.0)
    # Lab results at the start, where c_B and c_C are ~0, read as exactly 0 or far too high.
    labs = [(ts, float(rng.choice([0.0, cB * 3.0])), float(rng.choice([0.0, cC * 5.0 + 1.0])), ta)
            for ts, cB, cC, ta in b.labs]
    noisy = dataclasses.replace(b, labs=labs)
    s = SoftSensor(ModelParams(), None, dataclasses.replace(CFG, T_noise_std_K=1.5))
    est = run(s, noisy, x0=(900.0, 0.0, 0.0, 300.0))
    X = np.array([e.x for e in est])
    S = np.array([e.std for e in est])
    assert np.all(X[:, :3] >= 0.0)
    assert np.all((X[:, 4:] >= CFG.factor_min) & (X[:, 4:] <= CFG.factor_max))
    assert np.all(np.isfinite(S)) and np.all(S >= 0.0)
    for hist in (s.history(), s.smoothed_history()):
        H = np.array([h[1] for h in hist])
        assert np.all(H[:, :3] >= 0.0)
    for e in est:
        lo, _ = e.interval95(IB)
        assert lo >= 0.0


def _qp_reference(x0: np.ndarray, P: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    Pinv = np.linalg.inv(P)
    bounds = [(a if np.isfinite(a) else None, b if np.isfinite(b) else None) for a, b in zip(lo, hi, strict=True)]
    res = minimize(lambda x: (x - x0) @ Pinv @ (x - x0), np.clip(x0, lo, hi), jac=lambda x: 2 * Pinv @ (x - x0),
                   bounds=bounds, method="L-BFGS-B", options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 20000})
    return res.x


def test_projection_is_the_closest_feasible_point_in_the_covariance_metric():
    """Oracle: the active-set projection equals the QP min (x-x0)' P^-1 (x-x0) s.t. bounds (scipy)."""
    s = SoftSensor(ModelParams(), None, CFG)
    rng = np.random.default_rng(1)
    lo, hi = s._ekf.lo, s._ekf.hi
    for _ in range(20):
        L = rng.standard_normal((N_STATES, N_STATES))
        P = L @ L.T + 0.1 * np.eye(N_STATES)
        x0 = np.array([50.0, -3.0, -0.5, 340.0, 1.0, 1.2, 0.05, 1.0, -3.5]) + rng.standard_normal(N_STATES)
        xp = s._ekf.project(x0.copy(), P)
        ref = _qp_reference(x0, P, lo, hi)
        Pinv = np.linalg.inv(P)
        assert np.all(xp >= lo) and np.all(xp <= hi)
        assert (xp - x0) @ Pinv @ (xp - x0) <= (ref - x0) @ Pinv @ (ref - x0) * (1 + 1e-7) + 1e-10
        assert np.allclose(xp, ref, atol=1e-4)
    # Feasible points are left alone.
    x = np.array([50.0, 3.0, 0.5, 340.0, 1.0, 1.2, 0.9, 1.0, 0.0])
    assert s._ekf.project(x, np.eye(N_STATES)) is x
