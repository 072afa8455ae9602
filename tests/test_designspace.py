"""twin designspace: sampling, probabilities, PAR and robust point, engines and chunking bit for bit,
the vectorised correction against the scalar one, the configuration and the command."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ml_onnx.features import FEATURES
from ml_onnx.runtime import OnnxCorrection
from tests.test_ml_contract import synthetic_onnx, synthetic_onnx_bytes
from twin_core.batch_sim import Programme, coefficients_from_arrays, cqas, simulate_batches
from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.hybrid import HybridTwin
from twin_core.model import coefficients
from twin_core.offline import designspace as ds
from twin_core.offline.cli import main
from twin_core.params import ModelParams, ParameterCovariance
from twin_core.recipe import Recipe

COV = ParameterCovariance(
    names=("k1_ref_per_s", "E2_J_per_mol", "UA_W_per_K", "fouling_loss_per_batch"),
    scales=("log", "linear", "log", "linear"),
    estimate=(math.log(1.85e-4), 100e3, math.log(1500.0), 0.02),
    matrix=((0.04**2, 0.3 * 0.04 * 2000, 0, 0), (0.3 * 0.04 * 2000, 2000.0**2, 0, 0), (0, 0, 0.03**2, 0),
            (0, 0, 0, 0.002**2)), dof=500)


def _study(n_mc: int = 40, num: int = 4, chunk: int = 50, **var: float) -> ds.Study:
    cfg = ds.quick_config(n_mc=n_mc, num=num, chunk_size=chunk)
    if var:
        cfg = dataclasses.replace(cfg, variation=dataclasses.replace(cfg.variation, **var))
    return ds.Study(cfg, dataclasses.replace(ModelParams(), covariance=COV))


def test_draws_depend_on_seed_point_and_index_only() -> None:
    st = _study()
    full = ds.draws(st, 3, 0, 40)
    assert np.array_equal(ds.draws(st, 3, 17, 29), full[17:29])
    assert not np.array_equal(ds.draws(st, 4, 0, 40), full)
    other = dataclasses.replace(st, config=dataclasses.replace(st.config, seed=1))
    assert not np.array_equal(ds.draws(other, 3, 0, 40), full)


def test_chunks_cover_every_batch_once() -> None:
    for n_points, n_mc, size in ((7, 13, 5), (3, 100, 1000), (1, 1, 1), (10, 4, 7)):
        seen = [(g, i) for c in ds.chunks_of(n_points, n_mc, size) for g, lo, hi in c.parts for i in range(lo, hi)]
        assert sorted(seen) == [(g, i) for g in range(n_points) for i in range(n_mc)]
        assert all(c.size <= size for c in ds.chunks_of(n_points, n_mc, size))


def test_parameters_are_sampled_from_the_covariance() -> None:
    st = _study(c_A0_rsd=0.0, T0_sd_K=0.0, activity_rsd=0.0)
    n = 20000
    Z = ds.draws(st, 0, 0, n)
    inp = ds.batch_inputs(st, np.tile(st.grid()[0], (n, 1)), Z)
    c = inp["c"]
    theta = np.column_stack([np.log(c.k1_ref), c.E2_over_R * 8.314462618])
    np.testing.assert_allclose(theta.mean(axis=0), [math.log(1.85e-4), 100e3], rtol=2e-3)
    cov = np.cov(theta.T)
    np.testing.assert_allclose(cov, np.array(COV.matrix)[:2, :2], rtol=0.05, atol=1e-9)
    assert np.all(inp["x0"][:, 0] == 1000.0)


def test_without_uncertainty_the_probability_is_the_deterministic_pass() -> None:
    st = _study(c_A0_rsd=0.0, T0_sd_K=0.0, activity_rsd=0.0, parameter_uncertainty=False,
                batches_since_cleaning_max=0)
    res = ds.assemble(st, ds.execute(st, ds.chunks_of(st.config.n_points, st.config.n_mc, 50), progress=False),
                      "inprocess", 1.0)
    p = [r["p_all"] for r in res.table]
    assert set(p) <= {0.0, 1.0}
    assert p == [r["nominal_pass"] for r in res.table]
    assert 0 < sum(p) < len(p)  # the quick grid crosses the edge


def test_nominal_batch_equals_the_scalar_twin() -> None:
    st = ds.Study(ds.quick_config(num=3), ModelParams())
    grid = st.grid()
    q = ds.simulate_points(st, grid, None)
    v = st.config.variation
    for g, (plateau, duration) in enumerate(grid):
        p = ModelParams().replace(UA_W_per_K=1500.0 * (1 - v.fouling_loss_per_batch) ** (v.batches_since_cleaning_max / 2))
        ramp = (plateau - 298.15) / st.config.recipe.ramp_K_per_s
        tr = HybridTwin(p).simulate(Recipe((0.0, ramp), (298.15, plateau), duration))
        assert q["yield_B"][g] == pytest.approx(tr.c_B[-1] / 1000.0, rel=1e-10)
        assert q["T_peak_K"][g] == pytest.approx(float(np.max(tr.T_K)), rel=1e-12)


def test_result_is_the_same_bit_for_bit_whatever_the_chunking() -> None:
    st = _study(n_mc=30, num=3, trust_sd_1=0.1)
    tables = []
    for size in (13, 90, 1000):
        chunks = ds.chunks_of(st.config.n_points, st.config.n_mc, size)
        tables.append(ds.assemble(st, ds.execute(st, chunks, progress=False), "inprocess", 1.0).table)
    assert tables[0] == tables[1] == tables[2]


@pytest.mark.slow
def test_engines_give_identical_results() -> None:
    """In-process, a local process pool, a Dask LocalCluster on 127.0.0.1 started by the command
    (--dask-local) and one reached by its scheduler address (--scheduler)."""
    from distributed import LocalCluster

    cfg = ds.quick_config(n_mc=25, num=3, chunk_size=40)
    ref = ds.run_designspace(cfg).table
    assert ds.run_designspace(cfg, engine="pool", workers=2).table == ref
    assert ds.run_designspace(cfg, engine="dask", dask_local=2).table == ref
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        big = dataclasses.replace(cfg, chunk_size=1000)
        assert ds.run_designspace(big, engine="dask", scheduler=cluster.scheduler_address).table == ref


def test_par_and_robust_point_on_a_known_map() -> None:
    p = np.array([[0.2, 0.5, 0.6, 0.1],
                  [0.96, 0.97, 0.99, 0.5],
                  [0.97, 0.99, 1.0, 0.96],
                  [0.5, 0.98, 0.99, 0.97]])
    axes = [np.arange(4.0), np.arange(10.0, 14.0)]
    assert ds._par(p, axes, (2, 1), 0.95) == [(1.0, 3.0), (10.0, 13.0)]
    assert ds._par(p, axes, (0, 0), 0.95) == [None, None]
    idx, dist = ds._robust(p, 0.95)
    assert idx == (2, 2) and dist == pytest.approx(math.sqrt(2))  # (3, 2) is as far from failures, but on the grid's edge
    idx, dist = ds._robust(np.array([[0.1, 0.4], [0.3, 0.2]]), 0.95)
    assert idx == (0, 1) and math.isnan(dist)  # nothing in the design space: the highest P, no distance


def test_wilson_interval() -> None:
    lo, hi = ds.wilson(95, 100)
    assert lo == pytest.approx(0.8882, abs=1e-4) and hi == pytest.approx(0.9785, abs=1e-4)
    assert ds.wilson(0, 10)[0] == 0.0 and ds.wilson(10, 10)[1] == 1.0


def test_config_toml_and_bad_configs(tmp_path) -> None:
    path = tmp_path / "ds.toml"
    path.write_text("""
name = "plateau x duration"
seed = 7
n_mc = 12
params = "fit.toml"
[[factors]]
name = "plateau_K"
start = 330.0
stop = 340.0
num = 3
[[factors]]
name = "duration_s"
start = 14400.0
stop = 28800.0
num = 2
[specs]
yield_min = 0.5
[variation]
trust_sd_1 = 0.1
[set_point]
plateau_K = 335.0
""")
    cfg = ds.load_config(path)
    assert cfg.seed == 7 and cfg.n_points == 6 and cfg.specs.yield_min == 0.5
    assert cfg.params == str(tmp_path / "fit.toml")
    assert cfg.set_point == (("plateau_K", 335.0),)
    bad = [
        ({"n_mc": 0}, ParameterError, "designspace.n_mc"),
        ({"no_such": 1}, ParameterError, "designspace.no_such"),
        ({"specs": {"yield_min": 1.5}}, ParameterError, "designspace.specs.yield_min"),
        ({"factors": [{"name": "pressure", "start": 1, "stop": 2, "num": 2}]}, ParameterError, "factors[0].name"),
        ({"factors": [{"name": "plateau_K"}, {"name": "plateau_K"}]}, ParameterError, "designspace.factors"),
        ({"factors": [{"name": "plateau_K"}, {"name": "duration_s"}, {"name": "ramp_K_per_s"}]}, ParameterError,
         "designspace.factors"),
        ({"set_point": {"ramp_K_per_s": 0.01}}, ParameterError, "designspace.set_point.ramp_K_per_s"),
        ({"variation": {"c_A0_rsd": "2 %"}}, ParameterTypeError, "designspace.variation.c_A0_rsd"),
        ({"factors": {"name": "plateau_K"}}, ParameterError, "designspace.factors"),
        ({"factors": [{"name": "plateau_K", "start": 60.0, "stop": 80.0, "num": 3}]}, ParameterError,
         "designspace.factors.plateau_K"),  # degC given as K
        ({"factors": [{"name": "duration_s", "start": 0.0, "stop": 3600.0, "num": 3}]}, ParameterError,
         "designspace.factors.duration_s"),
    ]
    for data, exc, where in bad:
        with pytest.raises(exc) as info:
            ds.config_from_mapping(data)
        assert info.value.field == where, (data, info.value.field)


def test_engine_and_scheduler_arguments_are_checked() -> None:
    st = _study()
    chunks = ds.chunks_of(1, 1, 1)
    with pytest.raises(ParameterError):
        ds.execute(st, chunks, engine="spark", progress=False)
    with pytest.raises(ParameterError):
        ds.execute(st, chunks, engine="dask", progress=False)  # neither scheduler nor local cluster


def test_command_writes_csv_and_plot(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('n_mc = 8\n[[factors]]\nname = "plateau_K"\nstart = 330.0\nstop = 345.0\nnum = 3\n'
                   '[[factors]]\nname = "duration_s"\nstart = 18000.0\nstop = 36000.0\nnum = 3\n')
    assert main(["designspace", "--config", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "most robust set point" in out and "proven acceptable range" in out
    lines = (tmp_path / "o" / "designspace.csv").read_text().splitlines()
    assert lines[0].startswith("plateau_K,duration_s,n,p_all") and len(lines) == 10
    assert (tmp_path / "o" / "designspace.png").stat().st_size > 10_000
    assert main(["designspace", "--config", str(tmp_path / "missing.toml")]) == 2


def test_one_factor_study_with_the_ramp_rate(tmp_path) -> None:
    f = ds.Factor("ramp_K_per_s", 10.0 / 3600, 90.0 / 3600, 3)
    cfg = dataclasses.replace(ds.DesignSpaceConfig(), n_mc=10, factors=(f,), set_point=(("ramp_K_per_s", 45.0 / 3600),))
    res = ds.run_designspace(cfg, tmp_path)
    assert [r["ramp_K_per_s"] for r in res.table] == list(f.values)
    assert res.set_point == {"ramp_K_per_s": f.values[1]}  # snapped to the grid (50 K/h)
    assert res.plot_path is not None and res.plot_path.stat().st_size > 10_000
    assert "ramp" in res.summary()


# -- the correction in vectorised form --------------------------------------------------------------------
@pytest.fixture(scope="module")
def corr(tmp_path_factory: pytest.TempPathFactory) -> OnnxCorrection:
    path = synthetic_onnx(tmp_path_factory.mktemp("ds") / "m.onnx")
    return OnnxCorrection(path)


def test_vectorised_log_factors_equal_the_scalar_ones(corr: OnnxCorrection) -> None:
    d = corr.domain
    rng = np.random.default_rng(5)
    lo, hi, rw = (np.array(v) for v in (d.lower, d.upper, d.ramp))
    n = 400
    # inside, in the fade, beyond it: features from lo - 1.5 ramp to hi + 1.5 ramp
    raw = {name: lo[j] - 1.5 * rw[j] + (hi[j] - lo[j] + 3 * rw[j]) * rng.random(n) for j, name in enumerate(d.feature_names)}
    raw.setdefault("t_s", rng.uniform(0, 3e4, n))
    order = sorted(FEATURES, key=lambda nm: FEATURES[nm].index)  # t_s, c_A, c_B, c_C, T
    x = np.vstack([raw.get(nm, np.full(n, 300.0)) for nm in order[1:]])
    t = raw["t_s"]
    x[:, 7] = np.nan  # a trial stage that overflowed: g = 0 for that row, the others unaffected
    vc = ds.VectorisedCorrection(corr)
    g1, g2 = vc.log_factors(t, x)
    assert (g1[7], g2[7]) == (0.0, 0.0)
    states = 0
    for i in range(n):
        if i == 7:
            continue
        s1, s2, ok = corr.log_factors(float(t[i]), tuple(float(v) for v in x[:, i]))
        assert g1[i] == pytest.approx(s1, rel=1e-12, abs=1e-300) and g2[i] == pytest.approx(s2, rel=1e-12, abs=1e-300), i
        states += ok
    assert 0 < states < n - 1
    # a row's factors do not depend on the rows evaluated with it (chunking invariance)
    sub = vc.log_factors(t[50:90], x[:, 50:90])
    assert np.array_equal(sub[0], g1[50:90]) and np.array_equal(sub[1], g2[50:90])


def test_hybrid_batches_equal_the_hybrid_twin_per_batch(corr: OnnxCorrection) -> None:
    p = ModelParams()
    recipes = [Recipe((0.0, 3600.0), (298.15, T), 8 * 3600.0) for T in (330.0, 338.0, 345.0)]
    trusts = [(1.0, 1.0), (0.5, 1.5), (0.0, 0.8)]
    B = len(recipes)
    c = coefficients_from_arrays(p, k1_ref_per_s=np.full(B, p.kinetics.k1_ref_per_s))
    x0 = np.tile(p.charge.x0, (B, 1))
    res = simulate_batches(c, x0, Programme.from_recipes(recipes), correction=ds.VectorisedCorrection(corr),
                           trust=np.array(trusts).T)
    q = cqas(res, x0)
    for i, (r, lam) in enumerate(zip(recipes, trusts)):
        tr = HybridTwin(p, corr, trust=lam).simulate(r)
        assert q["yield_B"][i] == pytest.approx(tr.c_B[-1] / 1000.0, rel=1e-8)
        assert q["impurity"][i] == pytest.approx(tr.c_C[-1] / tr.x[-1, :3].sum(), rel=1e-8)
        assert q["T_peak_K"][i] == pytest.approx(float(np.max(tr.T_K)), rel=1e-8)
    one = simulate_batches(coefficients_from_arrays(p, k1_ref_per_s=np.full(1, p.kinetics.k1_ref_per_s)),
                           x0[1:2], Programme.from_recipes(recipes[1:2]), correction=ds.VectorisedCorrection(corr),
                           trust=np.array(trusts[1:2]).T)
    assert np.array_equal(one.x_end[0], res.x_end[1]) and one.T_peak_K[0] == res.T_peak_K[1]
    physics = simulate_batches(c, x0, Programme.from_recipes(recipes))
    assert not np.allclose(physics.x_end[0], res.x_end[0], rtol=1e-6)  # the correction did act
    assert coefficients(p).k1_ref == c.k1_ref[0]


def test_study_with_a_correction_file_runs(corr: OnnxCorrection, tmp_path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx_bytes())
    cfg = dataclasses.replace(ds.quick_config(n_mc=6, num=2), correction=str(path))
    cfg = dataclasses.replace(cfg, variation=dataclasses.replace(cfg.variation, trust_sd_1=0.2, trust_sd_2=0.2))
    res = ds.run_designspace(cfg)
    assert res.n_batches == 24
    assert all(0.0 <= r["p_all"] <= 1.0 for r in res.table)


def _onnx_bytes() -> bytes:
    return synthetic_onnx_bytes()


def test_a_fitted_toml_with_covariance_drives_the_sampling(tmp_path) -> None:
    """fit.toml (twin fit's format) -> params of the study -> the batches' k1 spread as its covariance says."""
    (tmp_path / "fit.toml").write_text(
        '[kinetics]\nk1_ref_per_s = 2.0e-4\n[reactor]\nUA_W_per_K = 1400.0\n[covariance]\n'
        'names = ["k1_ref_per_s", "UA_W_per_K", "fouling_loss_per_batch"]\nscales = ["log", "log", "linear"]\n'
        f'estimate = [{math.log(2.0e-4)!r}, {math.log(1400.0)!r}, 0.01]\n'
        'matrix = [[0.0025, 0.0, 0.0], [0.0, 1e-4, 0.0], [0.0, 0.0, 1e-8]]\ndof = 1000\n')
    (tmp_path / "ds.toml").write_text('params = "fit.toml"\nn_mc = 5\n[variation]\nactivity_rsd = 0.0\n'
                                      'batches_since_cleaning_max = 0\n')
    st = ds.make_study(ds.load_config(tmp_path / "ds.toml"))
    assert st.params.covariance is not None and st.params.kinetics.k1_ref_per_s == 2.0e-4
    n = 5000
    inp = ds.batch_inputs(st, np.tile(st.grid()[0], (n, 1)), ds.draws(st, 0, 0, n))
    lk1 = np.log(inp["c"].k1_ref)
    assert lk1.mean() == pytest.approx(math.log(2.0e-4), abs=3 * 0.05 / math.sqrt(n))
    assert lk1.std() == pytest.approx(0.05, rel=0.05)
    nominal = ds.batch_inputs(st, st.grid()[:1], None)
    assert nominal["c"].k1_ref[0] == pytest.approx(2.0e-4, rel=1e-12)
