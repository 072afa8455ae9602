"""Soft sensor: convergence from a wrong initial guess, scan-rate independence, consistency.

The plant here is twin_core's own model with other kinetics and heat transfer (tests/
softsensor_synthetic.py), so the estimator's bias states can represent it exactly: the estimate
must converge to the truth and the factors to the true ratios.
"""

from __future__ import annotations

import numpy as np
import pytest
from softsensor_synthetic import TRUE_PARAMS, make_batch, run

from twin_core.estimation import IA, IB, IT, IUA, SoftSensor, SoftSensorConfig
from twin_core.params import ModelParams

NOMINAL = ModelParams()
TRUE_RATIOS = {
    "UA": TRUE_PARAMS.reactor.UA_W_per_K / NOMINAL.reactor.UA_W_per_K,             # 0.85
    "k1": TRUE_PARAMS.kinetics.k1_ref_per_s / NOMINAL.kinetics.k1_ref_per_s,       # 1.15
    "k2": TRUE_PARAMS.kinetics.k2_ref_per_s / NOMINAL.kinetics.k2_ref_per_s,       # 1.20
}


@pytest.fixture(scope="module")
def noise_free_run():
    batch = make_batch(dt_s=60.0, noise_K=0.0, lab_rsd=0.0, seed=0)
    # Wrong guess: 8 % too much A charged, 4 K too warm; nominal kinetics and UA (true: x1.15, x1.2, x0.85).
    sensor = SoftSensor(NOMINAL, None, SoftSensorConfig(T_sensor_lag_s=0.0, c_A0_rel_std=0.1))
    est = run(sensor, batch, x0=(1080.0, 0.0, 0.0, 302.15))
    return batch, np.array([e.x for e in est]), np.array([e.std for e in est])


def test_converges_from_wrong_initial_guess(noise_free_run):
    batch, X, _ = noise_free_run
    err = X[:, :4] - batch.x_true
    cB_max = batch.x_true[:, 1].max()
    assert abs(err[0, IA]) == pytest.approx(80.0)
    assert abs(err[0, IT]) == pytest.approx(4.0)
    last_hour = batch.t_s >= batch.t_s[-1] - 3600.0
    # c_A is seen only through the heat it releases and the mass balance: it converges last.
    assert np.max(np.abs(err[last_hour, IA])) < 0.15 * 80.0
    assert abs(err[-1, IA]) < 0.1 * 80.0
    assert np.max(np.abs(err[last_hour, IB])) < 0.015 * cB_max
    assert np.max(np.abs(err[last_hour, IT])) < 0.01
    # The temperature is measured: its error is gone within minutes.
    assert np.max(np.abs(err[batch.t_s >= 600.0, IT])) < 0.05


def test_bias_states_converge_to_the_true_ratios(noise_free_run):
    _, X, _ = noise_free_run
    assert X[-1, IUA] == pytest.approx(TRUE_RATIOS["UA"], rel=0.02)
    assert X[-1, IUA + 1] == pytest.approx(TRUE_RATIOS["k1"], rel=0.05)
    assert X[-1, IUA + 2] == pytest.approx(TRUE_RATIOS["k2"], rel=0.05)


def test_uncertainty_shrinks_and_covers_the_error(noise_free_run):
    batch, X, S = noise_free_run
    assert S[-1, IA] < 0.2 * S[0, IA]
    err = np.abs(X[:, :3] - batch.x_true[:, :3])
    # A consistent (or conservative) estimator: errors mostly inside their 95 % intervals.
    assert np.mean(err <= 1.96 * S[:, :3] + 1e-9) > 0.9


def test_scan_rate_does_not_change_the_answer():
    """Scans every 2 s (pooled into 10 s filter steps) and the 60 s rows of the data set agree."""
    cfg = SoftSensorConfig(T_sensor_lag_s=0.0)
    fast = make_batch(dt_s=2.0, seed=5, t_end_s=4 * 3600.0)
    slow = make_batch(dt_s=60.0, seed=5, t_end_s=4 * 3600.0)
    ef = run(SoftSensor(NOMINAL, None, cfg), fast)
    es = run(SoftSensor(NOMINAL, None, cfg), slow)
    cB_max = slow.x_true[:, 1].max()
    for est, b in ((ef, fast), (es, slow)):
        X = np.array([e.x for e in est])
        rmse = np.sqrt(np.mean((X[:, IB] - b.x_true[:, IB]) ** 2))
        assert rmse < 0.02 * cB_max
    assert abs(ef[-1].c_B - es[-1].c_B) < 0.01 * cB_max
    # More readings per minute: a tighter temperature estimate, not a worse one.
    assert ef[-1].std[IT] <= es[-1].std[IT]
