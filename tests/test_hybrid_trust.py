"""The plant's trust weight learned batch to batch (ml_onnx.trust), on synthetic plants whose
truth *is* the hybrid twin with a known lambda and UA: the fit must find them back."""

from __future__ import annotations

import numpy as np
import pytest

from ml_onnx.runtime import OnnxCorrection
from ml_onnx.trust import TrustTracker, fit_trust, fit_UA_factor, open_loop_trust, species_imposed_T
from tests.test_ml_contract import synthetic_onnx
from twin_core.hybrid import HybridTwin
from twin_core.offline.batches import Batch, LabAssay
from twin_core.params import ModelParams
from twin_core.recipe import Recipe

C0 = 273.15


@pytest.fixture(scope="module")
def corr(tmp_path_factory: pytest.TempPathFactory) -> OnnxCorrection:
    path = synthetic_onnx(tmp_path_factory.mktemp("trust") / "m.onnx")
    return OnnxCorrection(path)


def plant_batch(corr, lam, UA_factor=1.0, batch_id=1, since_cleaning=0, seed=0, T_jacket_C=62.0) -> Batch:
    """A batch recorded on a 'plant' that is the hybrid twin with trust ``lam`` and UA x UA_factor:
    exact jacket and reactor readings, labs every 30 min with 1.5 % error."""
    rng = np.random.default_rng(seed)
    base = ModelParams()
    p = base.replace(UA_W_per_K=base.reactor.UA_W_per_K * UA_factor)
    recipe = Recipe.constant_jacket(C0 + T_jacket_C, 5 * 3600.0)
    tr = HybridTwin(p, corr, trust=lam).simulate(recipe, dt_out_s=60.0)
    labs = []
    for i in range(30, len(tr.t_s), 30):
        cB, cC = tr.x[i, 1] * (1 + 0.015 * rng.standard_normal()), tr.x[i, 2] * (1 + 0.015 * rng.standard_normal())
        labs.append(LabAssay(float(tr.t_s[i]) + 1800.0, float(tr.t_s[i]), float(cB), float(cC)))
    n = len(tr.t_s)
    return Batch(batch_id, "SYN", "train", tr.t_s, np.full(n, 3), tr.T_K.copy(), tr.T_jacket_K.copy(),
                 tr.T_jacket_K.copy(), np.zeros(n), float(base.charge.c_A0_mol_per_m3), since_cleaning,
                 tuple(labs), recipe, tr.x.copy())


def test_imposed_T_species_follow_the_hybrid_twin(corr) -> None:
    b = plant_batch(corr, (0.6, 1.4))
    c = species_imposed_T(b, corr, (0.6, 1.4))
    assert np.max(np.abs(c[:, 1] - b.truth[:, 1])) < 0.01 * np.max(b.truth[:, 1])
    c0 = species_imposed_T(b, corr, (0.0, 0.0))
    assert np.max(np.abs(c0[:, 1] - b.truth[:, 1])) > 5 * np.max(np.abs(c[:, 1] - b.truth[:, 1]))


@pytest.mark.parametrize("lam_true", [(1.0, 1.0), (0.3, 0.5), (-0.8, 1.6)])
def test_one_batch_pulls_lambda_to_the_plant(corr, lam_true) -> None:
    b = plant_batch(corr, lam_true, seed=1)
    mean, cov, rms = fit_trust(b, corr, np.ones(2), np.eye(2) * 0.25)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(mean - lam_true) <= np.maximum(3 * sd, 0.1)), (mean, sd)
    assert np.all(sd < 0.5)  # the labs told something
    assert rms < 2.0


def test_a_batch_without_labs_leaves_the_prior(corr) -> None:
    from dataclasses import replace

    b = replace(plant_batch(corr, (0.5, 0.5)), labs=())
    mean, cov, _ = fit_trust(b, corr, np.array([1.0, 0.9]), np.eye(2) * 0.25)
    assert mean.tolist() == [1.0, 0.9] and cov.tolist() == (np.eye(2) * 0.25).tolist()


def test_UA_factor_is_found_from_the_temperature(corr) -> None:
    b = plant_batch(corr, (1.0, 1.0), UA_factor=0.7, T_jacket_C=70.0)
    assert fit_UA_factor(b, corr, (1.0, 1.0)) == pytest.approx(0.7, rel=0.03)


def test_tracker_learns_the_plant_and_its_fouling_trend(corr) -> None:
    """A campaign of a fouling plant with lambda = (0.4, 0.6): the open-loop error of the tracked
    twin falls below the untracked hybrid's and physics' after a few batches."""
    tr = TrustTracker(corr)
    errs = []
    for k in range(6):
        b = plant_batch(corr, (0.4, 0.6), UA_factor=0.95 ** k, batch_id=k + 1, since_cleaning=k, seed=k)
        errs.append(float(np.sqrt(np.mean((tr.predict(b)[:, 1] - b.truth[:, 1]) ** 2))))
        last = b
        tr.update(b.without_truth())
    assert abs(tr.trust[0] - 0.4) < 0.15 and abs(tr.trust[1] - 0.6) < 0.25, tr.trust
    assert tr.UA_factor_for(6) == pytest.approx(0.95 ** 6, rel=0.05)
    fixed = float(np.sqrt(np.mean((open_loop_trust(last, corr, (1.0, 1.0))[:, 1] - last.truth[:, 1]) ** 2)))
    assert errs[-1] < 0.3 * errs[0] and errs[-1] < 0.3 * fixed, (errs, fixed)
