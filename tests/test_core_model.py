"""Oracles for the mechanistic model and its integrator: analytic solution, conservation laws and an
independent stiff reference solver."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twin_core import DEFAULT_RECIPE, ModelParams, RateMultipliers, Recipe, Tolerance, Twin
from twin_core.analysis import optimal_stop
from twin_core.hybrid import HybridTwin
from twin_core.model import coefficients, derivatives, rate_constants, rates, scaled
from twin_core.offline.report_model import radau_reference  # the one Radau oracle (the report runs it too)

C0 = 273.15


def analytic_isothermal(t: np.ndarray, k1: float, k2: float, cA0: float) -> np.ndarray:
    """Exact c_A, c_B, c_C of A -> B -> C at constant k (c_B0 = c_C0 = 0), written with expm1 so that
    the small values at the start (c_C ~ t^2) keep their relative accuracy."""
    e1, e2 = np.expm1(-k1 * t), np.expm1(-k2 * t)  # e^{-kt} - 1
    cA = cA0 * (1.0 + e1)
    cB = cA0 * k1 / (k2 - k1) * (e1 - e2)
    cC = cA0 * (k1 * e2 - k2 * e1) / (k2 - k1)  # = c_A0 - c_A - c_B without cancellation
    return np.column_stack([cA, cB, cC])


@pytest.mark.parametrize("T_C", [60.0, 80.0])
def test_isothermal_matches_analytic_solution(T_C: float) -> None:
    p = ModelParams()
    T = C0 + T_C
    k1, k2 = rate_constants(T, coefficients(p))
    tol = Tolerance(rtol=1e-12, atol=(1e-14, 1e-14, 1e-14, 1e-14))
    tr = Twin(p, tolerance=tol).simulate(Recipe.isothermal(T, 10 * 3600.0), dt_out_s=60.0)
    exact = analytic_isothermal(tr.t_s, k1, k2, p.charge.c_A0_mol_per_m3)
    # Every output after t = 0 (where c_B = c_C = 0 exactly), each species, relative to itself.
    rel = np.abs(tr.x[1:, :3] - exact[1:]) / np.abs(exact[1:])
    assert rel.max() <= 1e-8, f"max relative error {rel.max():.3e} per species {rel.max(axis=0)}"
    assert np.all(tr.T_K == T)


@pytest.mark.parametrize("T_C", [60.0, 70.0, 80.0])
def test_optimal_stop_matches_analytic_optimum(T_C: float) -> None:
    p = ModelParams()
    T = C0 + T_C
    k1, k2 = rate_constants(T, coefficients(p))
    t_star = math.log(k2 / k1) / (k2 - k1)
    cB_max = p.charge.c_A0_mol_per_m3 * (k1 / k2) ** (k2 / (k2 - k1))
    tr = Twin(p).simulate(Recipe.isothermal(T, 2.0 * t_star), dt_out_s=60.0)
    t_opt, c_opt = optimal_stop(tr)
    assert abs(t_opt - t_star) <= 1e-3 * t_star
    assert abs(c_opt - cB_max) <= 1e-3 * cB_max


def _wavy(t: float, x, r1: float, r2: float) -> tuple[float, float]:
    """A state- and time-dependent rate correction (stands in for the learned one)."""
    return r1 * (1.0 + 0.3 * math.sin(t / 900.0)) * (x[3] / 330.0), r2 * (0.5 + x[1] / 1000.0)


@pytest.mark.parametrize("correction", [None, RateMultipliers(1.4, 0.6), _wavy], ids=["none", "multipliers", "state"])
def test_mass_conserved_non_isothermal_with_correction(correction) -> None:
    p = ModelParams()
    cA0 = p.charge.c_A0_mol_per_m3
    twin = Twin(p, correction=correction)
    tr = twin.simulate(DEFAULT_RECIPE, dt_out_s=60.0)
    assert np.ptp(tr.T_K) > 40.0  # really non-isothermal
    total = tr.x[:, 0] + tr.x[:, 1] + tr.x[:, 2]
    assert np.max(np.abs(total - cA0)) <= 1e-10 * cA0
    # The co-simulation path too, with the jacket changing every step.
    s = twin.initial_state()
    for n in range(600):
        s = twin.step(s, 30.0 * n, 30.0, 330.0 + 25.0 * math.sin(n / 50.0))
        assert abs(sum(s.x[:3]) - cA0) <= 1e-10 * cA0
    assert s.x[2] > 1.0  # the reactions ran


def test_mass_conserved_hybrid_twin_with_changing_factors() -> None:
    class Factors:
        def factors(self, t_s, x, T_jacket_K):
            return 1.0 + 0.4 * math.sin(t_s / 1000.0), 1.0 + 0.4 * math.cos(t_s / 700.0), True

    p = ModelParams()
    tr = HybridTwin(p, Factors()).simulate(DEFAULT_RECIPE, dt_out_s=60.0)
    total = tr.x[:, :3].sum(axis=1)
    assert np.max(np.abs(total - p.charge.c_A0_mol_per_m3)) <= 1e-10 * p.charge.c_A0_mol_per_m3


def test_adiabatic_temperature_rise_equals_heat_released() -> None:
    p = ModelParams().replace(UA_W_per_K=0.0, T0_K=C0 + 50.0)
    tr = Twin(p).simulate(Recipe.constant_jacket(C0 + 10.0, 10 * 3600.0), dt_out_s=60.0)
    k, r, ch = p.kinetics, p.reactor, p.charge
    # Heat released [J] by the moles converted in each reaction, over the heat capacity of the charge [J/K].
    converted_1 = (ch.c_A0_mol_per_m3 - tr.c_A) * r.volume_m3
    converted_2 = (tr.c_C - ch.c_C0_mol_per_m3) * r.volume_m3
    rise_expected = (-k.dH1_J_per_mol * converted_1 - k.dH2_J_per_mol * converted_2) / r.heat_capacity_J_per_K
    rise = tr.T_K - ch.T0_K
    # Runs to near-complete conversion to C (full adiabatic rise 73.7 K); the jacket at 10 degC is ignored.
    assert rise[-1] > 70.0
    rel = np.abs(rise[1:] - rise_expected[1:]) / rise_expected[1:]
    assert rel.max() <= 1e-8



def test_non_isothermal_matches_radau() -> None:
    p = ModelParams()
    recipe = DEFAULT_RECIPE
    tight = Twin(p, tolerance=Tolerance(rtol=1e-9, atol=(1e-14, 1e-14, 1e-14, 1e-14))).simulate(recipe, dt_out_s=60.0)
    ref = radau_reference(p, recipe, tight.t_s)
    assert np.ptp(ref[:, 3]) > 40.0
    # Pointwise, every component relative to itself (c_C starts ~1e-7 mol/m3: hence the tiny atol).
    rel = np.abs(tight.x[1:] - ref[1:]) / np.abs(ref[1:])
    assert rel.max() <= 1e-6, rel.max(axis=0)
    # The default tolerance, relative to each component's scale over the batch.
    default = Twin(p).simulate(recipe, dt_out_s=60.0)
    rel_scale = np.abs(default.x - ref) / np.abs(ref).max(axis=0)
    assert rel_scale.max() <= 1e-6, rel_scale.max(axis=0)


def test_rate_law_on_arrays_is_the_scalar_rate_law() -> None:
    """rate_constants / rates take arrays (the reactor-mode jacket uses them on a whole trajectory):
    elementwise the scalar law, to numpy's exp against libm's (an ulp or two)."""
    c = coefficients(ModelParams())
    rng = np.random.default_rng(3)
    T = rng.uniform(250.0, 450.0, 500)
    X = np.column_stack([rng.uniform(0, 2000, 500), rng.uniform(0, 2000, 500), rng.uniform(0, 2000, 500), T])
    k1, k2 = rate_constants(T, c)
    r1, r2 = rates(X.T, c)
    for i in range(len(T)):
        s1, s2 = rate_constants(float(T[i]), c)
        assert type(s1) is float and type(s2) is float
        assert k1[i] == pytest.approx(s1, rel=4e-16) and k2[i] == pytest.approx(s2, rel=4e-16)
        q1, q2 = rates(tuple(X[i].tolist()), c)
        assert r1[i] == pytest.approx(q1, rel=4e-16) and r2[i] == pytest.approx(q2, rel=4e-16)
    # At the reference temperature the rate constants are exactly their reference values.
    kr1, kr2 = rate_constants(ModelParams().kinetics.T_ref_K, c)
    assert (kr1, kr2) == (c.k1_ref, c.k2_ref)


def test_scaled_coefficients_scale_the_rates_and_UA() -> None:
    c = coefficients(ModelParams())
    x = (800.0, 150.0, 50.0, 340.0)
    s = scaled(c, 1.5, 0.5, 0.8)
    r1, r2 = rates(x, c)
    q1, q2 = rates(x, s)
    assert q1 == pytest.approx(1.5 * r1, rel=1e-15) and q2 == pytest.approx(0.5 * r2, rel=1e-15)
    d, ds = derivatives(0.0, x, 300.0, c), derivatives(0.0, x, 300.0, s)
    heat = c.q1 * r1 * 1.5 + c.q2 * r2 * 0.5
    assert ds[3] == pytest.approx(heat + 0.8 * c.ua * (300.0 - x[3]), rel=1e-13)
    assert d[3] != ds[3]
