"""The correction inside the right-hand side with a trust weight (issue 12):
r_i = r_i,phys * exp(lambda_i * g_i(x)), evaluated in every Runge-Kutta stage.

Oracles: lambda = 0 is the mechanistic Twin bit for bit; one 3600 s step and 3600 steps of 1 s
agree to 1e-6 relative (the held correction of before differed by 1.6 %); one evaluation equals the
formula written out from the correction's own log-factors; lambda scales the log-factors linearly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ml_onnx.runtime import OnnxCorrection
from tests.test_ml_contract import synthetic_onnx
from twin_core.errors import ParameterError
from twin_core.hybrid import HybridTwin, TrustWeightedRates, log_factor_function
from twin_core.model import coefficients, rates
from twin_core.params import ModelParams
from twin_core.recipe import DEFAULT_RECIPE, Recipe
from twin_core.simulation import Twin

C0 = 273.15


@pytest.fixture(scope="module")
def corr(tmp_path_factory: pytest.TempPathFactory) -> OnnxCorrection:
    path = synthetic_onnx(tmp_path_factory.mktemp("rhs") / "m.onnx")
    return OnnxCorrection(path)


def _run(twin: HybridTwin, dt: float, t_end: float, u: float = C0 + 62.0):
    s = twin.initial_state()
    n = round(t_end / dt)
    for i in range(n):
        s = twin.step(s, i * dt, dt, u)
    return s


def test_lambda_zero_is_physics_bit_for_bit(corr: OnnxCorrection) -> None:
    phys = Twin()
    hyb = HybridTwin(correction=corr, trust=(0.0, 0.0))
    s_p, s_h = phys.initial_state(), hyb.initial_state()
    calls = corr.in_domain_calls + corr.out_of_domain_calls
    for i in range(200):
        s_p = phys.step(s_p, 30.0 * i, 30.0, C0 + 60.0 + 0.01 * i)
        s_h = hyb.step(s_h, 30.0 * i, 30.0, C0 + 60.0 + 0.01 * i)
        assert s_h.x == s_p.x and s_h.h_s == s_p.h_s
    assert corr.in_domain_calls + corr.out_of_domain_calls == calls  # never even called
    a = Twin().simulate(DEFAULT_RECIPE, dt_out_s=60.0)
    b = HybridTwin(correction=corr, trust=(0.0, 0.0)).simulate(DEFAULT_RECIPE, dt_out_s=60.0)
    np.testing.assert_array_equal(a.x, b.x)
    # Switching lambda to 0 mid-run continues exactly as physics from that state.
    hyb = HybridTwin(correction=corr)
    s = _run(hyb, 60.0, 1800.0)
    hyb.trust = (0.0, 0.0)
    assert hyb.step(s, 1800.0, 60.0, C0 + 62.0).x == Twin().step(s, 1800.0, 60.0, C0 + 62.0).x


def test_lambda_one_changes_the_result(corr: OnnxCorrection) -> None:
    a = _run(HybridTwin(correction=corr), 60.0, 3600.0)
    b = _run(HybridTwin(correction=corr, trust=(0.0, 0.0)), 60.0, 3600.0)
    assert abs(a.x[1] - b.x[1]) > 1.0  # the correction does something [mol/m3]


@pytest.mark.parametrize("trust", [(1.0, 1.0), (0.5, 1.7)])
def test_result_does_not_depend_on_the_communication_step(corr: OnnxCorrection, trust) -> None:
    t_end = 3 * 3600.0
    ref = _run(HybridTwin(correction=corr, trust=trust), 1.0, t_end)
    for dt in (60.0, 3600.0, t_end):
        s = _run(HybridTwin(correction=corr, trust=trust), dt, t_end)
        for a, b in zip(s.x, ref.x, strict=True):
            assert abs(a - b) <= 1e-6 * max(abs(b), 1.0), (dt, s.x, ref.x)
    # simulate() (dense output) reaches the same end state
    tr = HybridTwin(correction=corr, trust=trust).simulate(Recipe.constant_jacket(C0 + 62.0, t_end), dt_out_s=600.0)
    np.testing.assert_allclose(tr.x[-1], ref.x, rtol=1e-6)


def test_one_evaluation_is_the_formula(corr: OnnxCorrection) -> None:
    c = coefficients(ModelParams())
    rng = np.random.default_rng(5)
    rw = TrustWeightedRates(corr.log_factors, (0.7, 1.3))
    for _ in range(50):
        x = (rng.uniform(0, 1000), rng.uniform(0, 700), rng.uniform(0, 400), rng.uniform(295, 360))
        r1, r2 = rates(x, c)
        g1, g2, ok = corr.log_factors(100.0, x)
        got = rw(100.0, x, r1, r2)
        assert got == (r1 * math.exp(0.7 * g1), r2 * math.exp(1.3 * g2))
        assert (rw.last_f1, rw.last_f2, rw.last_ok) == (math.exp(0.7 * g1), math.exp(1.3 * g2), ok)
        f1, f2, ok2 = corr.factors(100.0, x, 300.0)
        assert (f1, f2, ok2) == (math.exp(g1), math.exp(g2), ok)


def test_log_factors_fade_to_zero_far_outside(corr: OnnxCorrection) -> None:
    assert corr.log_factors(0.0, (5000.0, 5000.0, 5000.0, 600.0)) == (0.0, 0.0, False)


def test_a_factors_only_model_is_used_through_its_log() -> None:
    class Factors:
        def factors(self, t_s, x, T_jacket_K):
            return 1.25, 0.8, x[3] < 400.0

    g = log_factor_function(Factors())
    assert g(0.0, (1.0, 1.0, 1.0, 300.0)) == (math.log(1.25), math.log(0.8), True)
    a = HybridTwin(correction=Factors()).step(HybridTwin().initial_state(), 0.0, 600.0, C0 + 60.0)
    assert (a.f1, a.f2, a.in_domain) == (1.25, 0.8, True)
    b = Twin(ModelParams().replace(k1_ref_per_s=ModelParams().kinetics.k1_ref_per_s * 1.25,
                                   k2_ref_per_s=ModelParams().kinetics.k2_ref_per_s * 0.8))
    ref = b.step(b.initial_state(), 0.0, 600.0, C0 + 60.0)
    np.testing.assert_allclose(a.x, ref.x, rtol=1e-7)


@pytest.mark.parametrize("bad", [(1.0,), (1.0, 2.0, 3.0), (math.nan, 1.0), (1.0, math.inf), "ab", None])
def test_bad_trust_is_refused(corr: OnnxCorrection, bad) -> None:
    with pytest.raises(ParameterError, match="trust"):
        HybridTwin(correction=corr, trust=bad)
    twin = HybridTwin(correction=corr)
    with pytest.raises(ParameterError, match="trust"):
        twin.trust = bad


def test_in_domain_is_reported_at_the_end_of_the_step(corr: OnnxCorrection, tmp_path: Path) -> None:
    twin = HybridTwin(correction=corr)
    s = twin.step(twin.initial_state(), 0.0, 60.0, C0 + 62.0)
    assert s.in_domain == corr.log_factors(60.0, s.x)[2]
    assert (s.f1, s.f2) == tuple(math.exp(g) for g in corr.log_factors(60.0, s.x)[:2])


def test_vectorised_log_factors_equal_the_scalar_path(corr: OnnxCorrection) -> None:
    rng = np.random.default_rng(8)
    W = 300
    # inside, near and far outside the domain (T 250-420 K, concentrations up to 1600 mol/m3)
    x = np.vstack([rng.uniform(0, 1600, W), rng.uniform(0, 1100, W), rng.uniform(0, 700, W), rng.uniform(250, 420, W)])
    t = rng.uniform(0, 3e4, W)
    g1, g2, ok = corr.log_factors_batch(t, x)
    want = [corr.log_factors(float(t[i]), tuple(x[:, i])) for i in range(W)]
    np.testing.assert_allclose(g1, [w[0] for w in want], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g2, [w[1] for w in want], rtol=1e-12, atol=1e-15)
    assert ok.tolist() == [w[2] for w in want]
    assert 0 < ok.sum() < W  # both cases present
    with pytest.raises(ParameterError):
        corr.log_factors_batch(t, x[:3])
