"""The soft sensor's prior for the next batch of a plant (ml_onnx.trust.PlantPrior) and the
SoftSensor.start keyword it fills (prior_std): exact values from hand-made records, the generic
prior before any batch, and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml_onnx.trust import PlantPrior, TrustTracker
from tests.test_hybrid_trust import corr, plant_batch  # noqa: F401  (fixture)
from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.estimation import SoftSensor, SoftSensorConfig
from twin_core.params import ModelParams

CFG = SoftSensorConfig()
GENERIC = (CFG.UA_factor0_std, CFG.k1_factor0_std, CFG.k2_factor0_std, CFG.trust0_std, CFG.trust0_std)


def test_before_any_batch_the_prior_is_the_generic_one(corr) -> None:  # noqa: F811
    prior = PlantPrior.for_config(TrustTracker(corr), CFG)
    kw = prior.start_kwargs(plant_batch(corr, (1.0, 1.0)))
    assert kw == {"trust0": (1.0, 1.0), "prior_std": GENERIC}


def test_k_sd_is_the_method_of_moments_of_the_end_estimates(corr) -> None:  # noqa: F811
    prior = PlantPrior.for_config(TrustTracker(corr), CFG, n0=1.0, window=3, k_sd_min=1e-6)
    # (k_end - 1, sd_end) per batch; only the last three count (window).
    recs = [(0.5, 0.5, 0.0, 0.0), (0.10, -0.05, 0.02, 0.01), (-0.08, 0.04, 0.03, 0.02), (0.06, 0.07, 0.01, 0.03)]
    prior.k_records.extend(recs)
    k1, k2 = prior._k_sd()
    e = np.array(recs[1:])
    want1 = math.sqrt((0.1 ** 2 + float(np.sum(e[:, 0] ** 2 - e[:, 2] ** 2))) / 4.0)
    want2 = math.sqrt((0.15 ** 2 + float(np.sum(e[:, 1] ** 2 - e[:, 3] ** 2))) / 4.0)
    assert (k1, k2) == pytest.approx((want1, want2), rel=1e-14)


def test_k_sd_is_floored_when_the_end_estimates_are_no_wider_than_their_own_error(corr) -> None:  # noqa: F811
    prior = PlantPrior.for_config(TrustTracker(corr), CFG, n0=0.0, k_sd_min=0.02)
    prior.k_records.extend([(0.01, -0.01, 0.05, 0.05)] * 5)   # spread below the estimates' SD: tau^2 < 0
    assert prior._k_sd() == (0.02, 0.02)


def test_a_learned_plant_gets_its_own_lambda_UA_and_a_narrower_prior(corr) -> None:  # noqa: F811
    lam, UA = (0.6, 1.3), 0.8
    prior = PlantPrior.for_config(TrustTracker(corr), CFG)
    for i in range(4):
        b = plant_batch(corr, lam, UA_factor=UA, batch_id=i + 1, since_cleaning=i, seed=i)
        prior.update(b, (UA, 1.0, 1.0), (0.02, 0.02, 0.02))
    kw = prior.start_kwargs(plant_batch(corr, lam, UA_factor=UA, batch_id=9, since_cleaning=4, seed=9))
    assert kw["trust0"] == pytest.approx(lam, abs=0.05)
    assert kw["factors0"][0] == pytest.approx(UA, abs=0.03)
    assert kw["factors0"][1:] == (1.0, 1.0)
    sd = kw["prior_std"]
    assert all(a < b for a, b in zip(sd, GENERIC, strict=True))
    tr = prior.tracker
    assert sd[3:] == pytest.approx(tuple(np.sqrt(np.diag(tr.cov) + tr.walk_per_batch ** 2)), rel=1e-14)
    assert sd[0] == prior.UA_sd_min   # the fitted UA factors lie on the trend line (an exact plant)


def test_lambda_sd_is_the_wider_of_the_tracker_and_the_filter_scatter(corr) -> None:  # noqa: F811
    prior = PlantPrior.for_config(TrustTracker(corr), CFG, n0=1.0)
    prior.tracker.history.append((1, (1.0, 1.0), (0.01, 0.01), 1.0))  # a tracker that has seen a batch
    prior.tracker.cov = np.diag([0.01 ** 2, 0.02 ** 2])
    prior.lambda_records.extend([(0.4, 0.0, 0.1, 0.05), (-0.4, 0.01, 0.1, 0.05)])
    l1, l2 = prior._lambda_sd()
    assert l1 == pytest.approx(math.sqrt((0.3 ** 2 + 2 * (0.4 ** 2 - 0.1 ** 2)) / 3.0), rel=1e-14)
    assert l2 == pytest.approx(math.sqrt((0.3 ** 2 + 0.0 - 0.05 ** 2 + 0.01 ** 2 - 0.05 ** 2) / 3.0), rel=1e-14)
    prior.lambda_records.clear()
    own = math.sqrt(0.01 ** 2 + prior.tracker.walk_per_batch ** 2), math.sqrt(0.02 ** 2 + prior.tracker.walk_per_batch ** 2)
    assert prior._lambda_sd() == pytest.approx(own, rel=1e-14)


def test_scale_follows_the_lab_z_scores(corr) -> None:  # noqa: F811
    prior = PlantPrior.for_config(TrustTracker(corr), CFG, n0=1.0)
    assert prior.scale == 1.0
    prior.scale_records.extend([(1.0, 0.25), (0.5, 1.0)])   # z^2 = 1/4 at scale 1; calibrated at 0.5
    assert prior.scale == pytest.approx(math.exp((math.log(0.5) + math.log(0.5)) / 3.0), rel=1e-14)
    prior.scale_records[:] = [(1.0, 1e-6)] * 5               # far too wide: clipped at the range
    assert prior.scale == prior.scale_range[0]
    prior.scale_records[:] = [(2.0, 100.0)] * 5
    assert prior.scale == prior.scale_range[1]


def test_start_puts_the_prior_into_the_covariance() -> None:
    s = SoftSensor(ModelParams(), None, CFG)
    sd = (0.05, 0.04, 0.03, 0.2, 0.1)
    est = s.start(0.0, factors0=(0.9, 1.0, 1.0), prior_std=sd)
    assert tuple(est.std[4:9]) == pytest.approx(sd, rel=1e-15)
    assert est.x[4] == 0.9
    default = SoftSensor(ModelParams(), None, CFG).start(0.0)
    assert tuple(default.std[4:9]) == pytest.approx(GENERIC, rel=1e-15)


@pytest.mark.parametrize("bad", [(0.1, 0.1, 0.1, 0.1), (0.1, 0.1, 0.1, 0.1, 0.0), (0.1, -0.1, 0.1, 0.1, 0.1),
                                 (0.1, 0.1, float("nan"), 0.1, 0.1), (0.1, 0.1, 0.1, float("inf"), 0.1),
                                 (0.1, 0.1, 0.1, 0.1, "x")])
def test_bad_prior_std_is_refused(bad) -> None:
    with pytest.raises((ParameterError, ParameterTypeError), match="prior_std"):
        SoftSensor(ModelParams(), None, CFG).start(0.0, prior_std=bad)


@pytest.mark.parametrize("kw", [{"window": 0}, {"n0": -1.0}, {"k_sd_min": 0.0}, {"UA_sd_min": -0.1},
                                {"generic_std": (0.1, 0.1, 0.1, 0.1)}, {"generic_std": (0.1, 0.1, 0.0, 0.1, 0.1)}])
def test_bad_plant_prior_settings_are_refused(corr, kw) -> None:  # noqa: F811
    with pytest.raises(ParameterError):
        PlantPrior(TrustTracker(corr), **kw)


def test_update_refuses_short_factors(corr) -> None:  # noqa: F811
    prior = PlantPrior.for_config(TrustTracker(corr), CFG)
    with pytest.raises(ParameterError, match="factors_end"):
        prior.update(plant_batch(corr, (1.0, 1.0)), (1.0, 1.0), (0.1, 0.1))


def test_an_aborted_batch_teaches_the_prior_nothing(corr) -> None:  # noqa: F811
    from dataclasses import replace

    from twin_core.signals.plc import Phase

    prior = PlantPrior.for_config(TrustTracker(corr), CFG)
    b = plant_batch(corr, (1.0, 1.0))
    ph = b.phase.copy()
    ph[-5:] = int(Phase.ABORTED)
    before = prior.fmu_start(1)
    assert prior.learn(replace(b, phase=ph), corr, CFG) is None
    assert prior.fmu_start(1) == before and not prior.k_records and not prior.tracker.history
    assert prior.learn(b, corr, CFG) is not None and len(prior.k_records) == 1   # a normal one does
