"""Soft sensor: out-of-sequence lab assays.

Oracle: a late assay, re-processed from its sample time, gives exactly the estimate the filter
would have had with the same assay on time. And a late assay improves the estimate of the present
and of the past (the re-processed history since the sample, and before it the smoothed history).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from softsensor_synthetic import make_batch, run

from twin_core.estimation import IB, IC, SoftSensor, SoftSensorConfig
from twin_core.params import ModelParams

CFG = SoftSensorConfig(T_sensor_lag_s=0.0)


@pytest.fixture(scope="module")
def batch():
    return make_batch(dt_s=60.0, seed=3, lab_rsd=0.005)


def test_late_assay_gives_exactly_the_on_time_estimate(batch):
    arrived = [lab for lab in batch.labs if lab[3] <= batch.t_s[-1]]
    on_time = dataclasses.replace(batch, labs=[(ts, cB, cC, ts) for ts, cB, cC, _ in arrived])
    late = dataclasses.replace(batch, labs=arrived)
    a = SoftSensor(ModelParams(), None, CFG)
    b = SoftSensor(ModelParams(), None, CFG)
    ea, eb = run(a, on_time), run(b, late)
    last_arrival = max(lab[3] for lab in arrived)
    after = np.flatnonzero(batch.t_s >= last_arrival)
    assert len(after) > 10
    for k in after:
        assert ea[k].x == eb[k].x  # bit-identical, not merely close
        assert ea[k].std == eb[k].std
    # Before the assays arrive the late filter knows less: its estimates differ.
    first_sample = min(lab[0] for lab in arrived)
    between = np.flatnonzero((batch.t_s > first_sample + 600.0) & (batch.t_s < min(lab[3] for lab in arrived)))
    assert any(ea[k].x != eb[k].x for k in between)


def test_late_assay_improves_present_and_past(batch):
    sensor = SoftSensor(ModelParams(), None, CFG)
    sensor.start(0.0)
    labs = sorted(batch.labs, key=lambda r: r[3])
    j = 0
    now_before, now_after, past_before, past_after = [], [], [], []
    for k in range(1, len(batch.t_s)):
        t = float(batch.t_s[k])
        sensor.update(t, float(batch.T_meas_K[k]), float(batch.T_jacket_K[k]))
        while j < len(labs) and labs[j][3] <= t:
            ts, cB, cC, ta = labs[j]
            j += 1
            before = sensor.estimate
            hist_before = sensor.history()
            after = sensor.add_lab(ts, cB, cC, ta)
            hist_after = sensor.history()
            true_now = batch.x_true[k, IB]
            now_before.append(abs(before.c_B - true_now))
            now_after.append(abs(after.c_B - true_now))
            # The past: every filter step from the sample time to now, before and after re-processing.
            for (tb, xb, _), (tr_, xa, _) in zip(hist_before, hist_after, strict=True):
                assert tb == tr_
                if ts <= tb < t:
                    true = batch.x_true[int(np.searchsorted(batch.t_s, tb)), IB]
                    past_before.append(abs(xb[IB] - true))
                    past_after.append(abs(xa[IB] - true))
    assert j >= 8
    assert np.mean(now_after) < 0.8 * np.mean(now_before)
    assert np.mean(past_after) < 0.8 * np.mean(past_before)


def test_smoothing_spreads_assays_to_the_times_before_them(batch):
    sensor = SoftSensor(ModelParams(), None, CFG)
    run(sensor, batch)
    filt = sensor.history()
    smooth = sensor.smoothed_history()
    t_f = np.array([h[0] for h in filt])
    t_s = np.array([h[0] for h in smooth])
    assert set(t_f) <= set(t_s)  # the smoother has a node at every step (and at each sample time)

    def rmse(hist: list, times: np.ndarray) -> float:
        idx = np.searchsorted(batch.t_s, times)
        est = np.array([h[1][IB] for h in hist])
        return float(np.sqrt(np.mean((est - batch.x_true[idx, IB]) ** 2)))

    assert rmse(smooth, t_s) < 0.95 * rmse(filt, t_f)
    # RTS: the smoothed uncertainty never exceeds the filtered one at the same time.
    filt_std = {h[0]: h[2] for h in filt}
    for t, _, std in smooth:
        if t in filt_std:
            assert std[IB] <= filt_std[t][IB] * (1 + 1e-9) + 1e-12
    # Smoothing does not change the estimator itself.
    assert sensor.history() == filt


def test_assay_in_the_open_interval_waits_for_the_next_step():
    """Scans every 1 s, filter steps every 10 s: an assay sampled after the last step is held and
    applied at its sample time by the next step (not dropped, not applied twice)."""
    b = make_batch(dt_s=1.0, seed=1, t_end_s=2 * 3600.0)
    with_lab = SoftSensor(ModelParams(), None, CFG)
    without = SoftSensor(ModelParams(), None, CFG)
    with_lab.start(0.0)
    without.start(0.0)
    ts = 3605.0  # between two filter steps (every 10 s from t = 0: 3600 and 3610)
    cB, cC = (float(v) for v in b.x_true[int(ts), 1:3])
    for k in range(1, 3611):
        t = float(b.t_s[k])
        e1 = with_lab.update(t, float(b.T_meas_K[k]), float(b.T_jacket_K[k]))
        e0 = without.update(t, float(b.T_meas_K[k]), float(b.T_jacket_K[k]))
        if t == 3607.0:  # arrives two scans after the sample, three before the next step
            e1 = with_lab.add_lab(ts, cB + 8.0, cC, t)
            assert len(with_lab._history.pending) == 1
        if t < 3610.0:
            assert e1.x == e0.x
    assert e1.c_B > e0.c_B + 1.0  # the step at 3610 s applied it
    labs_used = [lab for r in with_lab._history.records for lab in r.labs]
    assert [lab.sample_time_s for lab in labs_used] == [ts]
    assert not with_lab._history.pending


@pytest.mark.parametrize("state", [IB, IC])
def test_assay_moves_the_estimate_towards_it(state):
    b = make_batch(dt_s=60.0, seed=2, t_end_s=3 * 3600.0)
    sensor = SoftSensor(ModelParams(), None, CFG)
    run(sensor, b, with_labs=False)
    e0 = sensor.estimate
    ts = float(b.t_s[-10])
    hist = {h[0]: h[1] for h in sensor.history()}
    cB, cC = hist[ts][IB], hist[ts][IC]
    shift = 30.0
    e1 = sensor.add_lab(ts, cB + (shift if state == IB else 0.0), cC + (shift if state == IC else 0.0))
    assert 0.0 < e1.x[state] - e0.x[state] < shift
    assert e1.std[state] < e0.std[state]
