"""The runtime's domain guard and its CorrectionModel behaviour (synthetic model, no plant data)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ml_onnx.contract import smoothstep_weight
from ml_onnx.export import save, to_onnx
from ml_onnx.model import RateCorrectionRegressor, candidates
from ml_onnx.runtime import OnnxCorrection
from tests.test_ml_contract import synthetic_rows
from twin_core.errors import MeasurementError
from twin_core.hybrid import HybridTwin
from twin_core.params import ModelParams
from twin_core.recipe import DEFAULT_RECIPE


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[RateCorrectionRegressor, OnnxCorrection]:
    X, y = synthetic_rows(600, seed=1)
    model = RateCorrectionRegressor(candidates()["ridge_poly2"]).fit(X, y)
    path = tmp_path_factory.mktemp("guard") / "m.onnx"
    save(to_onnx(model, "0" * 64), path)
    return model, OnnxCorrection(path)


def _state(row: np.ndarray) -> tuple[float, float, float, float]:
    T, cA, cB, cC = (float(v) for v in row)
    return (cA, cB, cC, T)


def test_inside_the_domain_the_factors_are_the_model_unchanged(fitted) -> None:
    model, corr = fitted
    X, _ = synthetic_rows(50, seed=7)  # same ranges as training: strictly inside
    d = corr.domain
    inside = np.all((X >= np.array(d.lower)) & (X <= np.array(d.upper)), axis=1)
    assert inside.sum() >= 40
    want = np.exp(model.predict(X[inside]))
    for row, (w1, w2) in zip(X[inside], want, strict=True):
        f1, f2, ok = corr.factors(1000.0, _state(row), 340.0)
        assert ok is True
        assert f1 == pytest.approx(w1, rel=1e-12) and f2 == pytest.approx(w2, rel=1e-12)
        assert not (f1 == 1.0 and f2 == 1.0)  # a real correction, so "unchanged" means something


@pytest.mark.parametrize(("feature", "side"), [(0, "upper"), (0, "lower"), (3, "upper"), (1, "lower")])
def test_beyond_one_ramp_width_the_correction_is_zero_and_flagged(fitted, feature: int, side: str) -> None:
    _, corr = fitted
    d = corr.domain
    row = np.array([(lo + hi) / 2 for lo, hi in zip(d.lower, d.upper, strict=True)])
    for k in (1.0, 1.5, 10.0):
        r = row.copy()
        r[feature] = d.upper[feature] + k * d.ramp[feature] if side == "upper" else d.lower[feature] - k * d.ramp[feature]
        f1, f2, ok = corr.factors(0.0, _state(r), 300.0)
        assert (f1, f2, ok) == (1.0, 1.0, False)


def test_the_fade_is_smooth_and_monotone_across_the_ramp(fitted) -> None:
    _, corr = fitted
    d = corr.domain
    row = np.array([(lo + hi) / 2 for lo, hi in zip(d.lower, d.upper, strict=True)])
    row[0] = d.upper[0]
    f1_edge, f2_edge, ok_edge = corr.factors(0.0, _state(row), 300.0)
    assert ok_edge is True
    ln_edge = np.log([f1_edge, f2_edge])
    assert np.all(np.abs(ln_edge) > 1e-3)
    prev = np.abs(ln_edge)
    for e in np.linspace(0.05, 0.95, 19):
        r = row.copy()
        r[0] = d.upper[0] + e * d.ramp[0]
        f1, f2, ok = corr.factors(0.0, _state(r), 300.0)
        assert ok is False
        ln = np.log([f1, f2])
        # Evaluated at the clipped input, then scaled by the smoothstep weight.
        np.testing.assert_allclose(ln, smoothstep_weight(e) * ln_edge, rtol=1e-9)
        assert np.all(np.abs(ln) <= prev + 1e-15)
        prev = np.abs(ln)


def test_smoothstep_weight_end_points_and_slopes() -> None:
    assert smoothstep_weight(-1.0) == 1.0 and smoothstep_weight(0.0) == 1.0
    assert smoothstep_weight(1.0) == 0.0 and smoothstep_weight(3.0) == 0.0
    assert smoothstep_weight(0.5) == pytest.approx(0.5)
    h = 1e-6  # zero slope at both ends: no kink when a feature crosses a bound
    assert (smoothstep_weight(h) - 1.0) / h == pytest.approx(0.0, abs=1e-5)
    assert smoothstep_weight(1.0 - h) / h == pytest.approx(0.0, abs=1e-5)


def test_time_and_jacket_temperature_do_not_change_a_model_without_them(fitted) -> None:
    _, corr = fitted
    x = (500.0, 200.0, 100.0, 330.0)
    assert corr.factors(0.0, x, 300.0) == corr.factors(9e9, x, 400.0)


def test_a_non_finite_state_is_refused(fitted) -> None:
    _, corr = fitted
    with pytest.raises(MeasurementError, match="non-finite"):
        corr.factors(0.0, (math.nan, 200.0, 100.0, 330.0), 300.0)


def test_the_hybrid_twin_runs_with_the_onnx_correction_and_conserves_mass(fitted) -> None:
    _, corr = fitted
    p = ModelParams()
    phys = HybridTwin(p).simulate(DEFAULT_RECIPE)
    hyb = HybridTwin(p, corr).simulate(DEFAULT_RECIPE)
    total = hyb.x[:, :3].sum(axis=1)
    np.testing.assert_allclose(total, p.charge.c_A0_mol_per_m3, rtol=1e-7)
    assert np.max(np.abs(hyb.c_B - phys.c_B)) > 10.0  # the correction does act
    assert corr.in_domain_calls > 0


def test_from_bytes_equals_from_path(fitted, tmp_path: Path) -> None:
    _, corr = fitted
    data = Path(corr.label).read_bytes()
    other = OnnxCorrection.from_bytes(data, "resources/correction.onnx")
    x = (400.0, 300.0, 150.0, 335.0)
    assert other.factors(0.0, x, 300.0) == corr.factors(0.0, x, 300.0)
