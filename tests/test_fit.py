"""twin fit on data generated from known parameters: recovery within its own intervals, the TOML."""

from __future__ import annotations

import numpy as np
import pytest

from twin_core.batch_sim import coefficients_from_arrays, simulate_held
from twin_core.errors import ParameterError
from twin_core.offline.batches import Batch, LabAssay, jacket_input
from twin_core.offline.fit import NAMES, fit
from twin_core.params import ModelParams, load_params

TRUE = {"k1_ref_per_s": 2.2e-4, "k2_ref_per_s": 6.9e-5, "E1_J_per_mol": 62e3, "E2_J_per_mol": 112e3,
        "UA_W_per_K": 1450.0, "fouling_loss_per_batch": 0.02}


def synthetic_batches(seed: int, n: int = 6, hours: float = 7.0, sigma_T: float = 0.05, rsd: float = 0.015) -> list[Batch]:
    """Batches of the twin itself with the TRUE parameters: measured jacket on a ramp-hold programme,
    reactor T with Gaussian noise, lab c_B and c_C every 30 min with relative error."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(hours * 60) + 1) * 60.0
    p = ModelParams()
    out = []
    plateaus = np.linspace(325.0, 345.0, n)
    n_clean = np.arange(n) * 2
    cA0 = 1000.0 * (1 + 0.02 * rng.standard_normal(n))
    T0 = 298.15 + rng.normal(0, 1.0, n)
    Tj = [np.where(t < 3600.0, 298.15 + (pl - 298.15) * t / 3600.0, pl) for pl in plateaus]
    tmp = [Batch(i, "S", "train", t, np.zeros(len(t), dtype=int), np.full(len(t), T0[i]), Tj[i], Tj[i],
                 np.zeros(len(t)), float(cA0[i]), int(n_clean[i]), ()) for i in range(n)]
    u = [jacket_input(b) for b in tmp]
    ua = TRUE["UA_W_per_K"] * (1 - TRUE["fouling_loss_per_batch"]) ** n_clean
    c = coefficients_from_arrays(p, k1_ref_per_s=np.full(n, TRUE["k1_ref_per_s"]), k2_ref_per_s=np.full(n, TRUE["k2_ref_per_s"]),
                                 E1_J_per_mol=np.full(n, TRUE["E1_J_per_mol"]), E2_J_per_mol=np.full(n, TRUE["E2_J_per_mol"]),
                                 UA_W_per_K=ua)
    x0 = np.column_stack([cA0, np.zeros(n), np.zeros(n), T0])
    X = simulate_held(c, x0, [t] * n, u)
    for i in range(n):
        T_meas = X[i, :, 3] + sigma_T * rng.standard_normal(len(t))
        T_meas[0] = T0[i]  # the replay starts from the first reading: keep the model exact
        labs = tuple(LabAssay(float(ts), float(ts), float(X[i, k, 1] * (1 + rsd * rng.standard_normal())),
                              float(X[i, k, 2] * (1 + rsd * rng.standard_normal())))
                     for k, ts in enumerate(t) if k > 0 and ts % 1800.0 == 0.0)
        out.append(Batch(i, "S", "train", t, np.zeros(len(t), dtype=int), T_meas, Tj[i], Tj[i], np.zeros(len(t)),
                         float(cA0[i]), int(n_clean[i]), labs))
    return out


def test_recovers_known_parameters_and_writes_a_loadable_toml(tmp_path) -> None:
    res = fit(synthetic_batches(seed=0, n=4, hours=5.0))
    assert res.names == NAMES
    for i, name in enumerate(NAMES):
        lo, hi = res.ci95[i]
        assert lo < res.values[i] < hi
        # within four standard errors of the truth on the parameter's own scale
        truth = np.log(TRUE[name]) if res.scales[i] == "log" else TRUE[name]
        assert abs(res.theta[i] - truth) < 4 * res.std_error[i], (name, res.values[i], TRUE[name])
    assert res.sigma_T_K == pytest.approx(0.05, rel=0.1)
    assert res.lab_rsd == pytest.approx(0.015, rel=0.3)
    np.testing.assert_allclose(np.diag(res.correlation), 1.0)
    path = tmp_path / "fit.toml"
    path.write_text(res.to_toml())
    p = load_params(path)
    assert p.kinetics.k1_ref_per_s == res.values[0]
    assert p.reactor.UA_W_per_K == res.values[4]
    assert p.covariance is not None and p.covariance.names == NAMES
    np.testing.assert_array_equal(np.array(p.covariance.matrix), 0.5 * (res.covariance + res.covariance.T))


@pytest.mark.slow
def test_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    """20 data sets x 6 parameters: the 95 % intervals should hold the truth ~114 of 120 times;
    fewer than 102 (85 %) would be a 4-sigma shortfall of a correct interval."""
    hits = total = 0
    for seed in range(1, 21):
        res = fit(synthetic_batches(seed, n=4, hours=5.0))
        for i, name in enumerate(NAMES):
            lo, hi = res.ci95[i]
            hits += lo <= TRUE[name] <= hi
            total += 1
    assert total == 120
    assert 102 <= hits <= 120, hits


def test_fouling_not_identifiable_without_a_spread_of_cleaning_states() -> None:
    bs = synthetic_batches(seed=3, n=2, hours=2.0)
    same = [Batch(**{**b.__dict__, "batches_since_cleaning": 0}) for b in bs]
    with pytest.raises(ParameterError, match="not identifiable"):
        fit(same)
    res = fit(same, fit_fouling=False)
    assert res.names == NAMES[:5]


def test_no_batches_is_refused() -> None:
    with pytest.raises(ParameterError):
        fit([])


def test_covariance_kinds() -> None:
    bs = synthetic_batches(seed=4, n=3, hours=2.0)
    with pytest.raises(ParameterError, match="must be one of"):
        fit(bs, covariance="bootstrap")
    with pytest.raises(ParameterError, match="at least 12 batches"):
        fit(bs, covariance="batch")


@pytest.mark.slow
def test_by_batch_covariance_agrees_with_iid_on_independent_errors() -> None:
    """On data whose errors are independent the cluster-robust (sandwich) covariance estimates the
    same thing as s^2 (J^T J)^-1: standard errors within a factor of two with 16 batches."""
    bs = synthetic_batches(seed=5, n=16, hours=3.0)
    iid, rob = fit(bs), fit(bs, covariance="batch")
    np.testing.assert_array_equal(iid.theta, rob.theta)
    ratio = rob.std_error / iid.std_error
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    assert rob.params.covariance.dof == 15


@pytest.mark.slow
def test_command_on_the_plant_data_set(tmp_path, capsys) -> None:
    from twin_core.offline.cli import main

    out = tmp_path / "fit.toml"
    assert main(["fit", "--max-batches", "3", "--covariance", "iid", "--out", str(out),
                 "--plots", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "95 % interval" in text and "correlation" in text
    p = load_params(out)
    assert p.covariance is not None and p.covariance.dof > 500
    assert 1e-4 < p.kinetics.k1_ref_per_s < 4e-4 and 1000 < p.reactor.UA_W_per_K < 2000
    for name in ("fit_residuals.png", "fit_parity.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000
    assert main(["fit", "--data", str(tmp_path / "none.csv")]) == 2
