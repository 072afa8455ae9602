"""Analysis: economic stop against cases with known answers, sensitivities against the analytic
solution and against independent finite differences, and the temperature-profile study."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from twin_core import DEFAULT_RECIPE, ModelParams, Recipe, Tolerance, Twin
from twin_core.analysis import Economics, economic_stop, impurity_fraction, optimal_stop
from twin_core.model import coefficients, rate_constants
from twin_core.offline.sensitivity import OUTPUTS, local_sensitivities
from twin_core.offline.study import default_grid, format_study, profile_study
from twin_core.params import R_J_PER_MOL_K

C0 = 273.15
T_ISO = C0 + 70.0


@pytest.fixture(scope="module")
def iso_run():
    p = ModelParams()
    k1, k2 = rate_constants(T_ISO, coefficients(p))
    tr = Twin(p, tolerance=Tolerance(rtol=1e-11, atol=(1e-10,) * 4)).simulate(Recipe.isothermal(T_ISO, 10 * 3600.0),
                                                                              dt_out_s=60.0)
    return p, k1, k2, tr


def analytic_fractions(t: float, k1: float, k2: float) -> tuple[float, float, float]:
    """(c_A, c_B, c_C) / c_A0 of the isothermal batch at time t."""
    a = math.exp(-k1 * t)
    b = k1 / (k2 - k1) * (math.exp(-k1 * t) - math.exp(-k2 * t))
    return a, b, 1.0 - a - b


# -- economic stop ----------------------------------------------------------------------------------
def test_economic_stop_without_cost_or_spec_is_the_optimal_stop(iso_run) -> None:
    p, k1, k2, tr = iso_run
    e = economic_stop(tr, p, Economics(cost_per_h=0.0, impurity_spec_fraction=1.0))
    t_opt, cB_opt = optimal_stop(tr)
    assert e.limited_by == "optimum"
    assert abs(e.t_stop_s - t_opt) <= 1e-9 * t_opt
    assert abs(e.c_B_mol_per_m3 - cB_opt) <= 1e-9 * cB_opt
    t_star = math.log(k2 / k1) / (k2 - k1)
    assert abs(e.t_stop_s - t_star) <= 1e-6 * t_star


def test_economic_stop_at_the_spec_crossing_when_spec_binds(iso_run) -> None:
    p, k1, k2, tr = iso_run
    spec = 0.12
    e = economic_stop(tr, p, Economics(cost_per_h=0.0, impurity_spec_fraction=spec))
    t_star = math.log(k2 / k1) / (k2 - k1)
    t_cross = brentq(lambda t: analytic_fractions(t, k1, k2)[2] - spec, 1.0, t_star, xtol=1e-9, rtol=1e-14)
    assert e.limited_by == "impurity_spec"
    assert abs(e.t_stop_s - t_cross) <= 1e-6 * t_cross
    assert e.impurity_fraction == spec
    assert abs(e.yield_B - analytic_fractions(t_cross, k1, k2)[1]) <= 1e-7


def test_economic_stop_interior_optimum_matches_marginal_condition(iso_run) -> None:
    p, k1, k2, tr = iso_run
    econ = Economics(value_B_per_mol=50.0, cost_per_h=3000.0, turnaround_s=3 * 3600.0, impurity_spec_fraction=1.0)
    e = economic_stop(tr, p, econ)
    cA0, V = p.charge.c_A0_mol_per_m3, p.reactor.volume_m3

    def marginal(t: float) -> float:  # d profit / dt
        dcB = cA0 * k1 / (k2 - k1) * (-k1 * math.exp(-k1 * t) + k2 * math.exp(-k2 * t))
        return econ.value_B_per_mol * V * dcB - econ.cost_per_h / 3600.0

    t_star = math.log(k2 / k1) / (k2 - k1)
    t_exact = brentq(marginal, 600.0, t_star, xtol=1e-9, rtol=1e-14)
    assert e.limited_by == "optimum"
    assert t_exact < 0.95 * t_star  # the vessel cost really moves the stop
    assert abs(e.t_stop_s - t_exact) <= 1e-5 * t_exact
    cB = cA0 * analytic_fractions(t_exact, k1, k2)[1]
    profit = econ.value_B_per_mol * V * cB - econ.cost_per_h * (t_exact + econ.turnaround_s) / 3600.0
    assert abs(e.profit - profit) <= 1e-6 * abs(profit)


def test_turnaround_shifts_profit_not_stop(iso_run) -> None:
    p, _, _, tr = iso_run
    a = economic_stop(tr, p, Economics(turnaround_s=0.0, impurity_spec_fraction=1.0))
    b = economic_stop(tr, p, Economics(turnaround_s=5 * 3600.0, impurity_spec_fraction=1.0))
    assert a.t_stop_s == pytest.approx(b.t_stop_s, rel=1e-12)
    assert a.profit - b.profit == pytest.approx(5 * Economics().cost_per_h, rel=1e-12)


def test_economic_stop_end_of_trajectory_and_infeasible() -> None:
    p = ModelParams()
    tr = Twin(p).simulate(Recipe.isothermal(C0 + 60.0, 2 * 3600.0), dt_out_s=60.0)
    e = economic_stop(tr, p, Economics(cost_per_h=0.0, impurity_spec_fraction=1.0))
    assert e.limited_by == "end_of_trajectory" and e.t_stop_s == tr.t_s[-1]
    dirty = p.replace(c_C0_mol_per_m3=300.0)
    tr = Twin(dirty).simulate(Recipe.isothermal(C0 + 60.0, 2 * 3600.0), dt_out_s=60.0)
    e = economic_stop(tr, dirty, Economics(impurity_spec_fraction=0.15))
    assert e.limited_by == "infeasible" and e.t_stop_s == 0.0


def test_economic_stop_on_a_jacket_batch_respects_spec_on_dense_resimulation() -> None:
    p = ModelParams()
    econ = Economics()
    e = economic_stop(Twin(p).simulate(DEFAULT_RECIPE, dt_out_s=120.0), p, econ)
    fine = Twin(p).simulate(DEFAULT_RECIPE, t_end_s=e.t_stop_s, dt_out_s=1.0)
    assert impurity_fraction(fine.x[-1]) == pytest.approx(e.impurity_fraction, abs=1e-7)
    assert fine.c_B[-1] == pytest.approx(e.c_B_mol_per_m3, rel=1e-7)
    assert impurity_fraction(fine.x[-1]) <= econ.impurity_spec_fraction + 1e-7


# -- sensitivities ----------------------------------------------------------------------------------
def _analytic_outputs(q: dict[str, complex], t_end: float) -> dict[str, complex]:
    """OUTPUTS of the isothermal batch at T_ISO, complex-safe (for the complex-step derivative)."""
    d = 1.0 / T_ISO - 1.0 / q["T_ref_K"]
    k1 = q["k1_ref_per_s"] * np.exp(-q["E1_J_per_mol"] / R_J_PER_MOL_K * d)
    k2 = q["k2_ref_per_s"] * np.exp(-q["E2_J_per_mol"] / R_J_PER_MOL_K * d)
    Y = k1 / (k2 - k1) * (np.exp(-k1 * t_end) - np.exp(-k2 * t_end))
    return {"yield_B_end": Y, "t_stop_opt_s": np.log(k2 / k1) / (k2 - k1),
            "yield_B_at_opt": (k1 / k2) ** (k2 / (k2 - k1)), "impurity_end": 1.0 - np.exp(-k1 * t_end) - Y}


def test_sensitivities_match_analytic_isothermal_derivatives() -> None:
    p = ModelParams()
    t_end = 8 * 3600.0
    s = local_sensitivities(p, Recipe.isothermal(T_ISO, t_end))
    flat = p.flat()
    h = 1e-30
    checked = 0
    for name in ("k1_ref_per_s", "k2_ref_per_s", "T_ref_K", "E1_J_per_mol", "E2_J_per_mol"):
        q = {k: complex(v) for k, v in flat.items()}
        y0 = _analytic_outputs(q, t_end)
        q[name] = flat[name] * np.exp(1j * h)  # complex step in ln p: exact to rounding
        y1 = _analytic_outputs(q, t_end)
        for o in OUTPUTS:
            exact = (y1[o].imag / h) / y0[o].real
            assert s.get(name, o) == pytest.approx(exact, rel=1e-5, abs=1e-6), (name, o)
            checked += 1
    assert checked == 20
    # In reactor mode the energy balance and the charge temperature play no part: exactly zero.
    for name in ("dH1_J_per_mol", "dH2_J_per_mol", "volume_m3", "density_kg_per_m3", "heat_capacity_J_per_kg_K",
                 "UA_W_per_K", "T0_K"):
        assert np.all(s.S[s.parameters.index(name)] == 0.0), name
    # First-order kinetics: the yield is independent of how much A is charged.
    assert np.all(np.abs(s.S[s.parameters.index("c_A0_mol_per_m3")]) <= 1e-5)


def test_sensitivities_match_independent_one_sided_differences() -> None:
    p = ModelParams()
    recipe = DEFAULT_RECIPE
    s = local_sensitivities(p, recipe)
    tol = Tolerance(rtol=1e-10, atol=(1e-8,) * 4)

    def outputs(q: ModelParams) -> np.ndarray:
        tr = Twin(q, tolerance=tol).simulate(recipe, dt_out_s=60.0)
        t_opt, cB_opt = optimal_stop(tr)
        cA0 = q.charge.c_A0_mol_per_m3
        x = tr.x[-1]
        return np.array([x[1] / cA0, t_opt, cB_opt / cA0, x[2] / x[:3].sum()])

    y0 = outputs(p)
    h = 1.5e-4  # a different step from local_sensitivities' 1e-4, one-sided instead of central
    for name, v in p.flat().items():
        if v == 0.0:
            assert np.all(s.S[s.parameters.index(name)] == 0.0)
            continue
        y1 = outputs(p.replace(**{name: v * (1.0 + h)}))
        y2 = outputs(p.replace(**{name: v * (1.0 + 2.0 * h)}))
        # Second-order one-sided difference in p, normalised by p / y.
        S_ind = (-3.0 * y0 + 4.0 * y1 - y2) / (2.0 * h * y0)
        for j, o in enumerate(OUTPUTS):
            assert s.get(name, o) == pytest.approx(S_ind[j], rel=1e-4, abs=1e-5), (name, o)
    # The same quantity two ways: V only enters through UA / V, and rho with c_p only as rho * c_p.
    for o in OUTPUTS:
        assert s.get("volume_m3", o) == pytest.approx(-s.get("UA_W_per_K", o), rel=1e-5, abs=1e-7)
        assert s.get("density_kg_per_m3", o) == pytest.approx(s.get("heat_capacity_J_per_kg_K", o), rel=1e-5, abs=1e-7)


# -- study ------------------------------------------------------------------------------------------
def test_profile_study_rows_agree_with_the_analytic_optimum() -> None:
    p = ModelParams()
    grid = default_grid(10 * 3600.0)
    rows, trs = profile_study(grid, p)
    assert [r.name for r in rows] == [g.name for g in grid]
    assert len({r.name for r in rows}) == len(rows)
    text = format_study(rows)
    assert all(r.name in text for r in rows)
    checked = 0
    for r, g in zip(rows, grid, strict=True):
        if g.mode == "reactor" and len(g.times_s) == 1:
            k1, k2 = rate_constants(g.temps_K[0], coefficients(p))
            t_star = math.log(k2 / k1) / (k2 - k1)
            assert r.T_peak_K == pytest.approx(g.temps_K[0], abs=1e-9)
            if t_star < g.end_time_s:
                assert r.t_stop_opt_s == pytest.approx(t_star, rel=1e-3)
                assert r.yield_B_at_opt == pytest.approx((k1 / k2) ** (k2 / (k2 - k1)), rel=1e-3)
                checked += 1
        if g.mode == "jacket" and len(g.times_s) == 1:
            assert r.T_peak_K > g.temps_K[0]  # the exotherm lifts the reactor above the jacket
        assert 0.0 <= r.yield_B_end <= 1.0 and 0.0 <= r.impurity_end <= 1.0
    assert checked >= 3
