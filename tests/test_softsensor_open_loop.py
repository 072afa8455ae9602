"""SoftSensor.predict: open loop (no reactor-temperature reading, e.g. the PLC link is down).

Oracles: with no correction and the factors at their prior, the mean follows the physics model
(Twin.simulate at the same constant jacket); the uncertainty grows while open loop and shrinks again
once readings return; bad calls are refused with the estimator unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from twin_core.errors import MeasurementError
from twin_core.estimation import SoftSensor, SoftSensorConfig
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.simulation import Twin

T_J = 343.15


def _started(t0: float = 0.0) -> SoftSensor:
    s = SoftSensor(ModelParams(), None, SoftSensorConfig(forecast_interval_s=0.0))
    s.start(t0, T_measured_K=298.15)
    return s


def test_open_loop_mean_follows_the_physics_model():
    s = _started()
    for n in range(1, 61):  # an hour without readings, one prediction a minute
        est = s.predict(60.0 * n, T_J)
    tr = Twin().simulate(Recipe.constant_jacket(T_J, 3600.0), dt_out_s=60.0)
    np.testing.assert_allclose(est.x[:4], tr.x[-1], rtol=2e-5, atol=1e-3)


def test_uncertainty_grows_open_loop_and_shrinks_when_readings_return():
    s = _started()
    truth = Twin().simulate(Recipe.constant_jacket(T_J, 7200.0), dt_out_s=10.0)
    for k in range(1, 181):  # 30 min closed loop, 10 s scans of the true temperature
        s.update(truth.t_s[k], float(truth.x[k, 3]), T_J)
    sd_closed = s.estimate.std[3]
    sds = []
    for k in range(181, 361, 6):  # 30 min open loop, a prediction a minute
        sds.append(s.predict(truth.t_s[k], T_J).std[3])
    assert all(b >= a for a, b in zip(sds, sds[1:]))
    assert sds[-1] > 3 * sd_closed
    for k in range(361, 541):  # readings again
        est = s.update(truth.t_s[k], float(truth.x[k, 3]), T_J)
    assert est.std[3] < sds[-1] / 3
    assert abs(est.x[3] - truth.x[540, 3]) < 0.5
    assert abs(est.x[1] - truth.x[540, 1]) < 0.05 * truth.x[:, 1].max()


def test_pooled_readings_are_filtered_before_the_open_loop_step():
    s = _started()
    for k in range(1, 4):  # 3 scans inside one 10 s filter interval
        s.update(2.0 * k, 298.2, T_J)
    s.predict(30.0, T_J)
    times = [t for t, _, _ in s.history()]
    assert 6.0 in times and 30.0 in times


@pytest.mark.parametrize("t,Tj,words", [
    (0.0, T_J, "not after"),
    (-5.0, T_J, "before the start"),
    (math.nan, T_J, "finite"),
    (60.0, math.nan, "finite"),
    (60.0, 900.0, "sensor range"),
])
def test_bad_predictions_are_refused_and_change_nothing(t: float, Tj: float, words: str):
    s = _started()
    before = s.estimate
    with pytest.raises(MeasurementError, match=words):
        s.predict(t, Tj)
    assert s.estimate == before


def test_predict_before_start_is_refused():
    with pytest.raises(MeasurementError, match="not been started"):
        SoftSensor().predict(10.0, T_J)
