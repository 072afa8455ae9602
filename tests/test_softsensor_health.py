"""Model-health building blocks: quantiles against scipy, CUSUM, stuck detector, NIS window."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from twin_core.estimation import (
    Cusum,
    NisWindow,
    StuckDetector,
    chi2_bounds_mean,
    chi2_cdf,
    chi2_quantile,
    normal_quantile,
)


@pytest.mark.parametrize("p", [1e-6, 0.001, 0.01, 0.025, 0.3, 0.5, 0.8, 0.975, 0.999, 1 - 1e-7])
def test_normal_quantile_matches_scipy(p):
    assert normal_quantile(p) == pytest.approx(stats.norm.ppf(p), rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 10, 30, 120, 500, 4000])
@pytest.mark.parametrize("p", [1e-5, 0.001, 0.025, 0.5, 0.975, 0.999, 1 - 1e-6])
def test_chi2_quantile_matches_scipy(dof, p):
    assert chi2_quantile(p, dof) == pytest.approx(stats.chi2.ppf(p, dof), rel=1e-8)
    assert chi2_cdf(stats.chi2.ppf(p, dof), dof) == pytest.approx(p, rel=1e-9)


def test_bad_quantile_arguments():
    with pytest.raises(ValueError):
        normal_quantile(1.0)
    with pytest.raises(ValueError):
        chi2_quantile(0.5, 0)


def test_mean_bounds_contain_the_expectation():
    lo, hi = chi2_bounds_mean(4, 20)
    assert lo < 4.0 < hi
    assert (lo, hi) == pytest.approx((stats.chi2.ppf(0.025, 80) / 20, stats.chi2.ppf(0.975, 80) / 20), rel=1e-8)


def test_cusum_quiet_on_white_noise_fires_on_a_shift_and_ignores_one_spike():
    rng = np.random.default_rng(0)
    c = Cusum(slack=2.0, threshold=10.0, clip=5.0)
    assert not any(c.add(float(z)) for z in rng.standard_normal(20000))
    c.reset()
    assert not c.add(1000.0)  # one wild value adds at most clip - slack
    c.reset()
    fired = [c.add(4.0 + float(z)) for z in rng.standard_normal(20)]
    assert any(fired) and fired.index(True) <= 8
    c.reset()
    fired = [c.add(-4.0) for _ in range(20)]
    assert fired.index(True) == 5  # 2 per step beyond the slack: 12 > 10 after six
    s = c.get_state()
    d = Cusum(2.0, 10.0, 5.0)
    d.set_state(s)
    assert d.get_state() == s


def test_stuck_detector_needs_both_count_and_time():
    d = StuckDetector(min_time_s=60.0, min_readings=6, tolerance_K=0.0)
    # Fast scan: 6 identical readings in 0.5 s are not enough; a minute of them is.
    assert not any(d.add(0.1 * k, 350.0) for k in range(6))
    assert not d.add(59.0, 350.0)
    assert d.add(60.1, 350.0)
    assert not d.add(60.2, 350.01)  # a change restarts it
    # Slow rows: five equal readings over 4 min are not enough, six over 5 min are.
    d = StuckDetector(60.0, 6, 0.0)
    assert [d.add(60.0 * k, 340.0) for k in range(7)] == [False] * 5 + [True, True]


def test_nis_window_consistent_vs_inflated():
    rng = np.random.default_rng(1)
    w = NisWindow(window_s=1800.0, alpha=0.001)
    fails = [w.add(60.0 * k, float(z * z)) for k, z in enumerate(rng.standard_normal(3000))]
    assert np.mean(fails) < 0.01
    assert w.count == 30 and 0.3 < w.mean < 2.5
    w = NisWindow(window_s=1800.0, alpha=0.001)
    fails = [w.add(60.0 * k, float(4.0 * z * z)) for k, z in enumerate(rng.standard_normal(300))]
    assert np.mean(fails[30:]) > 0.9
    s = w.get_state()
    v = NisWindow(1800.0, 0.001)
    v.set_state(s)
    assert v.get_state() == s and v.failing == w.failing


@pytest.mark.parametrize("n", [5, 29, 30, 60, 180, 540])
def test_nis_window_bound_is_the_chi2_quantile(n):
    w = NisWindow(window_s=1800.0, alpha=0.001)
    assert w.bound(n) == pytest.approx(stats.chi2.ppf(0.999, n), rel=3e-3 if n >= 30 else 1e-9)
