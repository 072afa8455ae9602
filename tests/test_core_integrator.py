"""The integrator and the co-simulation step: bit-identical restarts, agreement between the step and
the whole-batch paths, the step as integrate() with the fast right-hand side, and error handling."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest

from twin_core import IntegrationError, ModelParams, ParameterError, RateMultipliers, Recipe, StepState, Tolerance, Twin
from twin_core.hybrid import HybridTwin
from twin_core.integrator import Stats, integrate
from twin_core.model import coefficients, derivatives, jacket_rhs

C0 = 273.15


def jacket_input(n: int) -> float:
    """A jacket temperature that changes every step, as a measured input does."""
    return C0 + 60.0 + 15.0 * math.sin(n / 40.0) + 0.37 * (n % 7)


def test_restored_state_continues_bit_identically() -> None:
    dt, n_total, n_cut = 1.0, 3000, 1234
    a = Twin()
    s = a.initial_state()
    straight = []
    for n in range(n_total):
        s = a.step(s, n * dt, dt, jacket_input(n))
        straight.append(s)
    # Interrupted run: stop at n_cut, store the state as an FMU would (plain floats), restore it into
    # a fresh twin and carry on.
    b = Twin()
    s = b.initial_state()
    for n in range(n_cut):
        s = b.step(s, n * dt, dt, jacket_input(n))
    blob = pickle.dumps((list(s.x), s.h_s))
    x, h = pickle.loads(blob)
    c = Twin()
    s = StepState(tuple(x), h)
    for n in range(n_cut, n_total):
        s = c.step(s, n * dt, dt, jacket_input(n))
        assert s == straight[n], f"step {n} differs after restore"
    assert straight[-1].x[1] > 10.0  # the batch went somewhere


def test_hybrid_restore_bit_identical() -> None:
    class Factors:
        def factors(self, t_s, x, T_jacket_K):
            return 1.0 + 0.2 * math.sin(x[3] / 7.0), 1.0 - 0.1 * math.cos(t_s / 500.0), True

    a, b = HybridTwin(correction=Factors()), HybridTwin(correction=Factors())
    s = a.initial_state()
    full = []
    for n in range(1500):
        s = a.step(s, 2.0 * n, 2.0, jacket_input(n))
        full.append(s.x)
    s = b.initial_state()
    for n in range(700):
        s = b.step(s, 2.0 * n, 2.0, jacket_input(n))
    s = StepState(tuple(float(v) for v in s.x), float(s.h_s))
    c = HybridTwin(correction=Factors())
    for n in range(700, 1500):
        s = c.step(s, 2.0 * n, 2.0, jacket_input(n))
        assert s.x == full[n]


def test_step_sequence_agrees_with_simulate() -> None:
    tol = Tolerance(rtol=1e-10, atol=(1e-10, 1e-10, 1e-10, 1e-10))
    twin = Twin(tolerance=tol)
    Tj = C0 + 70.0
    tr = twin.simulate(Recipe.constant_jacket(Tj, 6 * 3600.0), dt_out_s=60.0)
    s = twin.initial_state()
    xs = [s.x]
    for n in range(len(tr.t_s) - 1):
        s = twin.step(s, 60.0 * n, 60.0, Tj)
        xs.append(s.x)
    xs = np.array(xs)
    scale = np.abs(tr.x).max(axis=0)
    assert np.max(np.abs(xs - tr.x) / scale) <= 1e-8
    assert tr.T_K.max() > Tj  # exotherm: non-isothermal


def test_step_with_one_s_steps_agrees_with_simulate_at_one_s_outputs() -> None:
    twin = Twin(tolerance=Tolerance(rtol=1e-10, atol=(1e-10,) * 4))
    tr = twin.simulate(Recipe.constant_jacket(C0 + 65.0, 3600.0), dt_out_s=1.0)
    s = twin.initial_state()
    for n in range(3600):
        s = twin.step(s, float(n), 1.0, C0 + 65.0)
    assert np.max(np.abs(np.array(s.x) - tr.x[-1]) / np.abs(tr.x).max(axis=0)) <= 1e-8


class Visits(list):
    """Records every accepted step the integrator reports."""

    def append_visit(self, t: float, x: tuple, h: float, ks: tuple) -> None:
        self.append((t, x, h, ks))


def test_step_is_integrate_with_the_models_rhs() -> None:
    """Twin.step is integrate() over one communication step with the fast right-hand side; the same
    as integrate() with a plain closure around derivatives(), bit for bit, rejected steps included."""
    c = coefficients(ModelParams())
    tol = Tolerance()
    for u in (C0 + 20.0, C0 + 75.0, C0 + 110.0):
        def f(t, x, u=u):
            return derivatives(t, x, u, c)

        twin = Twin(tolerance=tol)
        s = StepState(ModelParams().charge.x0, 0.0)
        x, h = ModelParams().charge.x0, 0.0
        sn = Stats()
        visits = Visits()
        for n in range(10):
            # Whole-hour steps started with the whole hour as first try: rejections are exercised too.
            s = twin.step(s, 3600.0 * n, 3600.0, u)
            x, h = integrate(f, 3600.0 * n, x, 3600.0 * (n + 1), tol, h0=h, stats=sn, on_step=visits.append_visit)
            assert s.x == x and s.h_s == h
        assert (twin.stats.accepted, twin.stats.rejected, twin.stats.rhs_calls) == (sn.accepted, sn.rejected, sn.rhs_calls)
        assert sn.rejected > 0  # the comparison covered rejected steps too
        assert sn.rhs_calls == 1 * 10 + 6 * (sn.accepted + sn.rejected)
        assert len(visits) == sn.accepted and all(type(v[1]) is tuple for v in visits)


@pytest.mark.parametrize("correction", [None, RateMultipliers(1.3, 0.8),
                                        lambda t, x, r1, r2: (r1 * (1 + x[3] / 1e3), r2 * (1 - t / 1e6))],
                         ids=["none", "multipliers", "callable"])
def test_step_rhs_closure_is_bit_identical_to_derivatives(correction) -> None:
    c = coefficients(ModelParams())
    f, u_cell = jacket_rhs(c, correction)
    rng = random.Random(7)
    for _ in range(2000):
        x = (rng.uniform(0, 2000), rng.uniform(0, 2000), rng.uniform(0, 2000), rng.uniform(250, 450))
        u = rng.uniform(250, 450)
        t = rng.uniform(0, 1e5)
        u_cell[0] = u
        assert f(t, x) == derivatives(t, x, u, c, correction)


def test_multipliers_changed_between_steps_take_effect() -> None:
    m = RateMultipliers()
    twin = Twin(correction=m)
    s0 = StepState((800.0, 150.0, 50.0, 340.0), 0.0)
    base = twin.step(s0, 0.0, 10.0, 340.0)
    m.f1 = 2.0
    faster = twin.step(s0, 0.0, 10.0, 340.0)
    assert faster.x[0] < base.x[0]
    # Same result as a twin built with the factor from the start.
    assert faster == Twin(correction=RateMultipliers(2.0, 1.0)).step(s0, 0.0, 10.0, 340.0)


def test_correction_can_be_replaced_on_a_twin() -> None:
    twin = Twin()
    s0 = StepState((800.0, 150.0, 50.0, 340.0), 0.0)
    plain = twin.step(s0, 0.0, 10.0, 340.0)
    twin.correction = RateMultipliers(0.5, 0.5)
    assert twin.step(s0, 0.0, 10.0, 340.0) == Twin(correction=RateMultipliers(0.5, 0.5)).step(s0, 0.0, 10.0, 340.0)
    twin.correction = None
    assert twin.step(s0, 0.0, 10.0, 340.0) == plain


def test_integrate_lands_exactly_on_t1_and_counts_work() -> None:
    stats = Stats()
    x, h = integrate(lambda t, x: (-x[0],), 0.0, (1.0,), 10.0, Tolerance(atol=(1e-12,)), stats=stats)
    assert abs(x[0] - math.exp(-10.0)) <= 1e-9
    assert h > 0.0
    assert stats.rhs_calls == 1 + 6 * (stats.accepted + stats.rejected)


@pytest.mark.parametrize(("dt", "u", "field"), [(0.0, 300.0, "dt"), (-1.0, 300.0, "dt"), (math.nan, 300.0, "dt"),
                                                (math.inf, 300.0, "dt"), (1.0, math.nan, "T_jacket"),
                                                (1.0, math.inf, "T_jacket")])
def test_step_refuses_bad_inputs(dt: float, u: float, field: str) -> None:
    twin = Twin()
    with pytest.raises(ParameterError) as exc:
        twin.step(twin.initial_state(), 0.0, dt, u)
    assert exc.value.field == field


def test_integration_error_on_blow_up_and_backwards_interval() -> None:
    with pytest.raises(IntegrationError):
        integrate(lambda t, x: (x[0] * x[0], 0.0, 0.0, 0.0), 0.0, (1.0, 0.0, 0.0, 0.0), 2.0, Tolerance())
    with pytest.raises(IntegrationError):
        integrate(lambda t, x: (math.nan, 0.0), 0.0, (1.0, 0.0), 1.0, Tolerance(atol=(1e-6, 1e-6)))
    with pytest.raises(IntegrationError):
        integrate(lambda t, x: (0.0,), 1.0, (1.0,), 0.0, Tolerance(atol=(1e-6,)))


@pytest.mark.parametrize("n", [1, 4])
def test_trial_stage_outside_the_model_domain_rejects_the_step(n: int) -> None:
    def f(t, x):
        # exp overflows once a trial stage overshoots below -70: like 1/T in Arrhenius for T <= 0.
        return tuple(-v + 0.0 * math.exp(-10.0 * v) for v in x)

    stats = Stats()
    x, _ = integrate(f, 0.0, (1.0,) * n, 5.0, Tolerance(atol=(1e-10,) * n), h0=1000.0, stats=stats)
    assert stats.rejected >= 1
    assert all(abs(v - math.exp(-5.0)) <= 1e-8 for v in x)


def test_simulate_survives_a_first_step_that_overshoots() -> None:
    # A long first recipe segment: the first trial step is the whole segment.
    r = Recipe((0.0, 6400.0), (351.0, 351.0), 10 * 3600.0)
    tr = Twin().simulate(r, dt_out_s=60.0)
    assert np.all(np.isfinite(tr.x)) and tr.T_K.min() > 290.0


@pytest.mark.parametrize("recipe", [Recipe((0.0,), (300.0,), 1000.0),
                                    Recipe((0.0, 3600.0), (298.15, 343.15), 21600.0),
                                    Recipe((0.0, 10.0, 35.5, 100.0), (300.0, 320.0, 310.0, 305.0), 200.0, mode="reactor")])
def test_vectorised_programme_equals_recipe_methods(recipe: Recipe) -> None:
    from twin_core.simulation import _setpoints, _slopes

    rng = np.random.default_rng(3)
    t = np.concatenate([rng.uniform(-10.0, 1.5 * max(recipe.times_s[-1], 100.0), 3000), recipe.times_s])
    assert np.array_equal(_setpoints(recipe, t), [recipe.setpoint(v) for v in t])
    assert np.array_equal(_slopes(recipe, t), [recipe.slope(v) for v in t])


def test_step_accepts_a_list_or_array_state_with_identical_result() -> None:
    twin = Twin()
    x = (812.5, 150.25, 37.25, 341.0)
    a = twin.step(StepState(x, 2.0), 100.0, 1.0, 345.0)
    b = twin.step(StepState(list(x), 2.0), 100.0, 1.0, 345.0)  # type: ignore[arg-type]
    c = twin.step(StepState(np.array(x), 2.0), 100.0, 1.0, 345.0)  # type: ignore[arg-type]
    assert a == b == c
    assert all(type(v) is float for v in c.x)
