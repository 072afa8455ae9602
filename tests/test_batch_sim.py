"""The vectorised batch simulator against the one scalar definition (Twin.simulate, Twin.step)."""

from __future__ import annotations

import numpy as np
import pytest

from twin_core import analysis
from twin_core.batch_sim import (
    Programme,
    coefficients_from_arrays,
    cqas,
    simulate_batches,
    simulate_held,
    simulate_recipes,
    stack_coefficients,
)
from twin_core.errors import ParameterError
from twin_core.model import coefficients
from twin_core.params import ModelParams
from twin_core.recipe import DEFAULT_RECIPE, Recipe
from twin_core.simulation import Twin


def _random_batches(n: int, seed: int) -> tuple[list[ModelParams], list[Recipe]]:
    """Batches that differ in every uncertain parameter, the charge and the programme (1 to 3 points)."""
    rng = np.random.default_rng(seed)
    ps, rs = [], []
    for i in range(n):
        ps.append(ModelParams().replace(
            k1_ref_per_s=1.85e-4 * float(np.exp(rng.normal(0, 0.2))), k2_ref_per_s=5.5e-5 * float(np.exp(rng.normal(0, 0.2))),
            E1_J_per_mol=70e3 * float(1 + rng.normal(0, 0.05)), E2_J_per_mol=100e3 * float(1 + rng.normal(0, 0.05)),
            UA_W_per_K=float(1500 * rng.uniform(0.6, 1.0)), c_A0_mol_per_m3=float(1000 * (1 + rng.normal(0, 0.02))),
            T0_K=float(298.15 + rng.normal(0, 2))))
        end = float(rng.uniform(3, 12) * 3600)
        kind = i % 3
        if kind == 0:
            rs.append(Recipe.constant_jacket(float(rng.uniform(320, 345)), end))
        elif kind == 1:
            rs.append(Recipe((0.0, float(rng.uniform(600, 7200))), (298.15, float(rng.uniform(320, 348))), end))
        else:  # a third point after the end of some batches: breakpoints are only those inside (0, end)
            t1 = float(rng.uniform(600, 5000))
            rs.append(Recipe((0.0, t1, t1 + float(rng.uniform(1000, 40000))),
                             (298.15, float(rng.uniform(330, 348)), float(rng.uniform(315, 340))), end))
    return ps, rs


def test_equals_twin_simulate_per_batch() -> None:
    ps, rs = _random_batches(60, seed=1)
    res = simulate_recipes(ps, rs)
    q = cqas(res, np.array([p.charge.x0 for p in ps]))
    for i, (p, r) in enumerate(zip(ps, rs)):
        twin = Twin(p)
        tr = twin.simulate(r)
        s = analysis.summarize(tr, p)
        assert q["yield_B"][i] == pytest.approx(analysis.yield_of_c_B(tr.x[-1, 1], p), rel=1e-8, abs=0)
        assert q["impurity"][i] == pytest.approx(float(analysis.impurity_fraction(tr.x[-1])), rel=1e-8, abs=0)
        assert q["T_peak_K"][i] == pytest.approx(s.T_peak_K, rel=1e-8, abs=0)
        np.testing.assert_allclose(res.x_end[i], tr.x[-1], rtol=1e-8, atol=0)
        # the same step sequence as the scalar loop
        assert (res.accepted[i], res.rejected[i]) == (twin.stats.accepted, twin.stats.rejected)


def test_a_batch_does_not_depend_on_its_neighbours() -> None:
    """Chunking invariance, bit for bit: what makes the design space reproducible whatever the engine."""
    ps, rs = _random_batches(40, seed=2)
    whole = simulate_recipes(ps, rs)
    for lo, hi in ((0, 1), (3, 17), (17, 40)):
        part = simulate_recipes(ps[lo:hi], rs[lo:hi])
        assert np.array_equal(part.x_end, whole.x_end[lo:hi])
        assert np.array_equal(part.T_peak_K, whole.T_peak_K[lo:hi])
    rev = simulate_recipes(ps[::-1], rs[::-1])
    assert np.array_equal(rev.x_end[::-1], whole.x_end)


def test_held_inputs_equal_twin_step_row_by_row() -> None:
    rng = np.random.default_rng(3)
    t = [np.arange(0, n) * 60.0 for n in (50, 120, 80)]
    u = [320 + 20 * rng.random(len(tt) - 1) for tt in t]
    ps = [ModelParams().replace(UA_W_per_K=ua) for ua in (1500.0, 900.0, 1200.0)]
    X = simulate_held(stack_coefficients([coefficients(p) for p in ps]), np.array([p.charge.x0 for p in ps]), t, u)
    for b, p in enumerate(ps):
        twin = Twin(p)
        st = twin.initial_state()
        rows = [st.x]
        for i in range(len(t[b]) - 1):
            st = twin.step(st, t[b][i], t[b][i + 1] - t[b][i], float(u[b][i]))
            rows.append(st.x)
        np.testing.assert_allclose(X[b, :len(t[b])], np.array(rows), rtol=1e-12, atol=1e-12)
        assert np.all(X[b, len(t[b]):] == X[b, len(t[b]) - 1])  # past the end: the last state


def test_mass_conserved_and_arrays_path_equals_params_path() -> None:
    B = 30
    rng = np.random.default_rng(4)
    p = ModelParams()
    k1 = 1.85e-4 * np.exp(rng.normal(0, 0.1, B))
    ua = 1500 * rng.uniform(0.6, 1, B)
    c = coefficients_from_arrays(p, k1_ref_per_s=k1, UA_W_per_K=ua)
    x0 = np.tile(p.charge.x0, (B, 1))
    prog = Programme.ramp_hold(np.full(B, 298.15), 330 + 15 * rng.random(B), np.full(B, 3600.0), np.full(B, 36000.0))
    res = simulate_batches(c, x0, prog)
    np.testing.assert_allclose(res.x_end[:, :3].sum(axis=1), 1000.0, rtol=1e-12)
    recipes = [Recipe((0.0, 3600.0), (298.15, float(prog.T0[i, 1])), 36000.0) for i in range(B)]
    ref = simulate_recipes([p.replace(k1_ref_per_s=float(a), UA_W_per_K=float(b)) for a, b in zip(k1, ua)], recipes)
    assert np.array_equal(res.x_end, ref.x_end)


def test_programme_from_recipe_edges() -> None:
    r = Recipe((0.0, 3600.0, 7200.0), (298.15, 343.15, 330.0), 5000.0)
    prog = Programme.from_recipes([r, DEFAULT_RECIPE])
    assert prog.edges[0].tolist() == [0.0, 3600.0, 5000.0]
    assert prog.edges[1].tolist() == [0.0, 3600.0, 21600.0]
    assert prog.n_segments.tolist() == [2, 2]
    for i, rec in enumerate((r, DEFAULT_RECIPE)):
        for t in (0.0, 100.0, 1800.0, 3599.0, 4000.0, 4999.0):
            s = int(np.searchsorted(prog.edges[i], t, side="right") - 1)
            T = prog.T0[i, s] + ((t - prog.t0[i, s]) / prog.dt[i, s]) * prog.dT[i, s]
            assert T == rec.setpoint(t)


BAD = [
    ("x0 shape", lambda: simulate_batches(coefficients(ModelParams()), np.zeros((2, 4)),
                                          Programme.from_recipes([DEFAULT_RECIPE]))),
    ("reactor mode", lambda: Programme.from_recipes([Recipe.isothermal(340.0, 3600.0)])),
    ("no recipes", lambda: Programme.from_recipes([])),
    ("times not increasing", lambda: Programme.from_points(np.array([[0.0, 10.0, 5.0]]), np.full((1, 3), 300.0),
                                                           np.array([3]), np.array([100.0]))),
    ("not from 0", lambda: Programme.from_points(np.array([[1.0, 10.0]]), np.full((1, 2), 300.0),
                                                 np.array([2]), np.array([100.0]))),
    ("unknown coefficient", lambda: coefficients_from_arrays(ModelParams(), k3_ref_per_s=np.ones(2))),
    ("negative k1", lambda: coefficients_from_arrays(ModelParams(), k1_ref_per_s=-np.ones(2))),
    ("ragged arrays", lambda: coefficients_from_arrays(ModelParams(), k1_ref_per_s=np.ones(2), UA_W_per_K=np.ones(3))),
    ("ramp of 0 s", lambda: Programme.ramp_hold(np.full(1, 298.0), np.full(1, 340.0), np.zeros(1), np.full(1, 10.0))),
    ("held inputs", lambda: Programme.held([np.arange(3.0)], [np.ones(3)])),
    ("dt_out", lambda: simulate_recipes([ModelParams()], [DEFAULT_RECIPE], dt_out_s=0.0)),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused(case: tuple) -> None:
    with pytest.raises(ParameterError):
        case[1]()


def test_a_failing_batch_is_raised_or_marked() -> None:
    """A batch too stiff for the explicit method (k1_ref 1 /s): more steps than allowed. 'raise'
    names it (the scalar loop's IntegrationError); 'mark' ends it with NaN and leaves the others exact."""
    from twin_core.errors import IntegrationError

    ps, rs = _random_batches(3, seed=6)
    ps[1] = ps[1].replace(k1_ref_per_s=1.0)
    with pytest.raises(IntegrationError, match="batch 1: more than 300 steps"):
        _run(ps, rs, "raise")
    res = _run(ps, rs, "mark")
    assert res.failed.tolist() == [False, True, False]
    assert np.all(np.isnan(res.x_end[1])) and np.isnan(res.T_peak_K[1])
    ok = simulate_recipes([ps[0], ps[2]], [rs[0], rs[2]])
    assert np.array_equal(res.x_end[[0, 2]], ok.x_end) and not ok.failed.any()
    with pytest.raises(ParameterError):
        _run(ps, rs, "ignore")


def _run(ps, rs, on_failure):
    c = stack_coefficients([coefficients(p) for p in ps])
    return simulate_batches(c, np.array([p.charge.x0 for p in ps]), Programme.from_recipes(rs), on_failure=on_failure,
                            max_steps=300)
