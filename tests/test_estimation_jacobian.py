"""The soft sensor's analytic Jacobian (twin_core.model.jacobian, used by the EKF) against central
finite differences of the estimator's own right-hand side, at many random states.

The continuous-time Jacobian of the augmented state (c_A, c_B, c_C, T, UA_factor, k1_factor,
k2_factor, lambda_1, lambda_2), with the learned correction's log-factors (g1, g2) held, is what the filter's covariance propagation
rests on; a wrong sign or a missing chain-rule factor would only show as a slightly miscalibrated
filter, so it is checked here entry by entry.
"""

from __future__ import annotations

import numpy as np
import pytest

from twin_core.estimation.config import SoftSensorConfig
from twin_core.estimation.ekf import TRUST_ENTRIES, Ekf, augmented_jacobian, augmented_rhs, jacobian_matrix
from twin_core.estimation.state import N_STATES, STATE_NAMES
from twin_core.model import JACOBIAN_PATTERN, JACOBIAN_VARIABLES, Jacobian, coefficients
from twin_core.params import ModelParams

C = coefficients(ModelParams())
N_POINTS = 400
# Typical magnitude of each state [mol/m3, K, 1]: the finite-difference step is relative to it
# and errors are compared on the scale of a row's largest (state-scaled) entry.
SCALE = np.array([1000.0, 1000.0, 1000.0, 300.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def random_points(n: int, seed: int = 11) -> list[tuple[np.ndarray, float, float, float]]:
    """(x, T_jacket [K], g1, g2): concentrations up to 2000 mol/m3, T 270-430 K, factors 0.2-5,
    trust weights -1..2, log-factors -0.7..0.7."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = np.array([rng.uniform(0.0, 2000.0), rng.uniform(0.0, 2000.0), rng.uniform(0.0, 2000.0),
                      rng.uniform(270.0, 430.0), *np.exp(rng.uniform(np.log(0.2), np.log(5.0), 3)),
                      *rng.uniform(-1.0, 2.0, 2)])
        out.append((x, rng.uniform(270.0, 430.0), float(rng.uniform(-0.7, 0.7)), float(rng.uniform(-0.7, 0.7))))
    return out


def central_differences(x: np.ndarray, u: float, f1: float, f2: float) -> np.ndarray:
    """d(augmented_rhs)/dx by central differences, step 1e-6 of each state's scale."""
    J = np.empty((N_STATES, N_STATES))
    for j in range(N_STATES):
        h = 1e-6 * max(abs(x[j]), SCALE[j])
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        # Divided by the step as represented (xp - xm), not 2h: no rounding of the step itself.
        J[:, j] = (augmented_rhs(xp, u, C, f1, f2) - augmented_rhs(xm, u, C, f1, f2)) / (xp[j] - xm[j])
    return J


def test_jacobian_columns_are_the_estimators_state_order() -> None:
    short = {"c_A": "cA", "c_B": "cB", "c_C": "cC", "T": "T", "UA_factor": "UA", "k1_factor": "k1",
             "k2_factor": "k2"}
    assert tuple(short[name] for name in STATE_NAMES[:7]) == JACOBIAN_VARIABLES
    assert STATE_NAMES[7:] == ("lambda_1", "lambda_2")
    assert TRUST_ENTRIES == ((0, 7), (1, 7), (3, 7), (1, 8), (2, 8), (3, 8))
    assert len(JACOBIAN_PATTERN) == len(Jacobian._fields) == len(set(JACOBIAN_PATTERN)) == 17
    assert JACOBIAN_PATTERN[Jacobian._fields.index("dT_dUA")] == (3, 4)


def test_analytic_jacobian_matches_central_differences_at_many_states() -> None:
    pattern = np.zeros((N_STATES, N_STATES), dtype=bool)
    for i, j in JACOBIAN_PATTERN + TRUST_ENTRIES:
        pattern[i, j] = True
    worst = 0.0
    for x, u, f1, f2 in random_points(N_POINTS):
        A = jacobian_matrix(augmented_jacobian(x, u, C, f1, f2))
        fd = central_differences(x, u, f1, f2)
        # Entries outside the declared pattern are exactly zero in the analytic matrix and vanish
        # in the differences (c_C enters no rate; the factors and trust weights are random walks).
        assert np.all(A[~pattern] == 0.0)
        assert np.all(np.abs(fd[~pattern]) <= 1e-12 * np.abs(fd[pattern]).max())
        # Relative agreement on the scale of each row (states scaled: one unit of each column's
        # typical magnitude), so that an entry that cancels (dc_B/dT = dr1/dT - dr2/dT) is judged on
        # the size of its terms, not on its own near-zero value.
        S = np.maximum(np.abs(x), SCALE)
        As, fds = A * S, fd * S
        row = np.abs(As).max(axis=1, keepdims=True)
        err = np.abs(As - fds)[:4] / row[:4]
        worst = max(worst, float(err.max()))
    assert worst <= 1e-6, f"largest relative error {worst:.2e}"


@pytest.mark.parametrize("factors", [(1.0, 1.0), (1.3, 0.7)], ids=["physics", "corrected"])
def test_filter_propagates_with_this_jacobian(factors: tuple[float, float]) -> None:
    """The EKF's transition over a short sub-step is I + M (I + M/2) with M = A dt, A the analytic
    Jacobian at the step's midpoint: the filter uses exactly the function tested above."""
    f1, f2 = factors

    class Held:
        def factors(self, t_s, x, T_jacket_K):
            return f1, f2, True

        def log_factors(self, t_s, x):
            return float(np.log(f1)), float(np.log(f2)), True

    ekf = Ekf(C, Held(), SoftSensorConfig())
    x, u, _, _ = random_points(1, seed=5)[0]
    dt = 2.0
    xn, _, _, _ = ekf.substep(100.0, 100.0 + dt, x, np.eye(N_STATES), 0.0, u)
    mid = 0.5 * (x + np.array([*xn[:3], xn[3], *x[4:]]))
    mid[4:] = x[4:]
    M = jacobian_matrix(augmented_jacobian(mid, u, C, float(np.log(f1)), float(np.log(f2)))) * dt
    assert np.array_equal(ekf.last_phi, M @ (M * 0.5 + np.eye(N_STATES)) + np.eye(N_STATES))
