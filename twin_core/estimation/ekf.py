"""The extended Kalman filter algebra of the soft sensor: propagation, linearisation, updates and
the projection onto the feasible box. No bookkeeping of time, history or alarms (sensor.py,
history.py, health.py).

- Mean: DP5(4) integration of twin_core.model.derivatives with every factor held over the
  sub-step (at most max_step_s): the learned correction's log-factors g_i at the sub-step's
  midpoint (predicted by an Euler half-step),
  weighted by the trust states, exp(lambda_i g_i), times the k-factors, folded into the rate
  constants, the UA factor into UA (twin_core.model.scaled). twin_core.hybrid evaluates the same
  correction in every stage; holding it over a filter sub-step (10 s) costs one ONNX call per
  sub-step instead of seven per integrator step, far below the filter's process noise.
- Covariance: the model's analytic Jacobian (twin_core.model.jacobian, named entries; its
  sparsity pattern is derived from the names) at the step's midpoint, with the two columns of the
  trust weights (dr_i/dlambda_i = g_i r_i, the correction's state dependence held), transition matrix by a
  truncated Taylor series of expm(A dt), process noise in the directions of the two reaction extents
  (so c_A + c_B + c_C stays conserved) and random walks of T and the factors.
- Updates: the (lagging) temperature reading, Huber-weighted; lab assays of c_B and c_C, gated.
- Non-negativity: an estimate that leaves the box (concentrations >= 0, factors within
  [factor_min, factor_max]) is projected onto it in the metric of P^-1 (:func:`_box_qp`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from twin_core.estimation.config import SoftSensorConfig
from twin_core.estimation.state import IB, IC, IT, N_STATES, LabResult
from twin_core.hybrid import CorrectionModel, log_factor_function
from twin_core.integrator import Tolerance, integrate
from twin_core.model import JACOBIAN_PATTERN, Coefficients, Jacobian, RateMultipliers, derivatives, jacobian, scaled

# Non-zero entries of the Jacobian of the augmented right-hand side: the fields of
# twin_core.model.Jacobian (positions derived from their names there), then the trust columns
# (TRUST_ENTRIES, in the order augmented_jacobian appends them).
TRUST_ENTRIES = ((0, 7), (1, 7), (3, 7), (1, 8), (2, 8), (3, 8))
_PATTERN = JACOBIAN_PATTERN + TRUST_ENTRIES
_PATTERN_FLAT = np.array([i * N_STATES + j for i, j in _PATTERN])
# Non-zero entries of the process noise over a step, in the order Ekf.substep writes them.
_Q_FLAT = np.array([i * N_STATES + j for i, j in (
    (0, 0), (0, 1), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 0), (3, 1), (3, 2),
    (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8))])


def augmented_rhs(x: Sequence[float], T_jacket_K: float, c: Coefficients, g1: float = 0.0,
                  g2: float = 0.0) -> np.ndarray:
    """dx/dt of the augmented state x = (c_A, c_B, c_C, T, UA_factor, k1_factor, k2_factor,
    lambda_1, lambda_2) with the learned correction's log-factors (g1, g2) held: the model with
    the rate multipliers k_i_factor exp(lambda_i g_i) and the UA factor folded in; the factors and
    trust weights are random walks (no drift). What :meth:`Ekf.substep` integrates."""
    cA, cB, cC, T, fUA, fk1, fk2, l1, l2 = x
    m1, m2 = fk1 * math.exp(l1 * g1), fk2 * math.exp(l2 * g2)
    return np.array((*derivatives(0.0, (cA, cB, cC, T), T_jacket_K, scaled(c, m1, m2, fUA)),
                     0.0, 0.0, 0.0, 0.0, 0.0))


def augmented_jacobian(x: Sequence[float], T_jacket_K: float, c: Coefficients, g1: float = 0.0,
                       g2: float = 0.0) -> tuple[float, ...]:
    """The analytic Jacobian of :func:`augmented_rhs`: the non-zero entries of
    :class:`~twin_core.model.Jacobian` (named there) followed by the trust columns
    (TRUST_ENTRIES): dr1/dlambda_1 = g1 r1 = g1 k1_factor dr1/dk1_factor, likewise for r2."""
    cA, cB, cC, T, fUA, fk1, fk2, l1, l2 = x
    jac = jacobian((cA, cB, cC, T), T_jacket_K, c, math.exp(l1 * g1), math.exp(l2 * g2), fUA, fk1, fk2)
    return (*jac, *trust_columns(jac, fk1, fk2, g1, g2))


def trust_columns(jac: Jacobian, fk1: float, fk2: float, g1: float, g2: float) -> tuple[float, ...]:
    """The entries TRUST_ENTRIES of the Jacobian from the k-factor columns of ``jac``."""
    a, b = g1 * fk1, g2 * fk2
    return (a * jac.dcA_dk1, a * jac.dcB_dk1, a * jac.dT_dk1, b * jac.dcB_dk2, b * jac.dcC_dk2, b * jac.dT_dk2)


def jacobian_matrix(jac: Sequence[float]) -> np.ndarray:
    """The dense (9, 9) matrix of :func:`augmented_jacobian`'s entries."""
    A = np.zeros(N_STATES * N_STATES)
    A[_PATTERN_FLAT] = jac
    return A.reshape(N_STATES, N_STATES)


class Ekf:
    """Propagation and updates of the soft sensor's (x, P) (the module docstring gives the method).

    Holds only the model, the tuning and scratch of the last sub-step: the rate factors used over
    it (``held``, for the extrapolation between steps), the temperature row of its Jacobian (for the
    lagging transmitter's measurement row) and its transition matrix (for smoothing).
    """

    def __init__(self, coef: Coefficients, correction: CorrectionModel | None, cfg: SoftSensorConfig) -> None:
        self.coef = coef
        self.correction = correction
        self.log_factors = None if correction is None else log_factor_function(correction)
        self.cfg = cfg
        self.tol = Tolerance(rtol=cfg.rtol, atol=(1e-5, 1e-5, 1e-5, 1e-6))
        self.held = RateMultipliers()
        self._M = np.zeros((N_STATES, N_STATES))
        self._Mv = self._M.reshape(-1)   # flat views: one fancy-index write fills the pattern
        self._Qd = np.zeros((N_STATES, N_STATES))
        self._Qv = self._Qd.reshape(-1)
        self.eye = np.eye(N_STATES)
        self.dT_row: tuple[float, ...] = (0.0,) * N_STATES
        self.lo = np.array([0.0, 0.0, 0.0, -math.inf, cfg.factor_min, cfg.factor_min, cfg.factor_min,
                            cfg.trust_min, cfg.trust_min])
        self.hi = np.array([math.inf, math.inf, math.inf, math.inf, cfg.factor_max, cfg.factor_max, cfg.factor_max,
                            cfg.trust_max, cfg.trust_max])
        self._qT = cfg.T_process_std_K_per_sqrt_s ** 2
        self._qUA = cfg.UA_factor_walk_per_sqrt_s ** 2
        self._qk = (cfg.k_factor_walk_per_sqrt_s if correction is not None else cfg.k_factor_walk_physics_per_sqrt_s) ** 2
        self._ql = cfg.trust_walk_per_sqrt_s ** 2
        self._rate_q = cfg.rate_rel_std ** 2 * cfg.rate_noise_time_s
        self._corr_q = cfg.correction_rel_std ** 2 * cfg.rate_noise_time_s
        self._ood = cfg.out_of_domain_noise_factor ** 2
        self._mwf = cfg.mismatch_walk_factor ** 2
        self.lab_gate = cfg.lab_gate_nis
        self.last_phi = self.eye
        self.last_lab_white = (0.0, 0.0)
        self.last_g = (0.0, 0.0)          # the correction's log-factors of the last sub-step
        self.mismatch = False             # CORRECTION_MISMATCH raised: k-factors walk faster (x mismatch_walk_factor)

    @contextmanager
    def preserved(self) -> Iterator[None]:
        """Run propagations (a forecast, a smoothing pass) without changing the filter's scratch."""
        saved = (self.held.f1, self.held.f2, self.dT_row)
        try:
            yield
        finally:
            self.held.f1, self.held.f2, self.dT_row = saved

    def rate_of_change(self, x: Sequence[float], u: float) -> tuple[float, float, float, float]:
        """d(c_A, c_B, c_C, T)/dt at x (augmented, a sequence of 9) with the factors of the last
        sub-step held and jacket temperature u [K] (the extrapolation between steps)."""
        return derivatives(0.0, x[:4], u, scaled(self.coef, self.held.f1, self.held.f2, x[4]))

    # -- propagation --------------------------------------------------------------------------------
    def propagate(self, ta: float, tb: float, x: np.ndarray, P: np.ndarray, h: float,
                  u: float) -> tuple[np.ndarray, np.ndarray, float, bool]:
        """Mean and covariance from ta to tb [s] with jacket temperature u [K] held."""
        span = tb - ta
        if span <= self.cfg.max_step_s:
            return self.substep(ta, tb, x, P, h, u)
        n = math.ceil(span / self.cfg.max_step_s - 1e-9)
        ok_all = True
        phi = self.eye
        for i in range(n):
            a = ta + span * i / n
            b = tb if i == n - 1 else ta + span * (i + 1) / n
            x, P, h, ok = self.substep(a, b, x, P, h, u)
            ok_all = ok_all and ok
            if n > 1:
                phi = self.last_phi @ phi
        if n > 1:
            self.last_phi = phi
        return x, P, h, ok_all

    def substep(self, ta: float, tb: float, x: np.ndarray, P: np.ndarray, h: float,
                u: float) -> tuple[np.ndarray, np.ndarray, float, bool]:
        """One propagation step (no longer than max_step_s): (x, P, h_next, in_domain) at tb."""
        cA, cB, cC, T, fUA, fk1, fk2, l1, l2 = x.tolist()
        held = self.held
        c0 = self.coef
        if self.log_factors is not None:
            # The correction at the sub-step's midpoint, predicted by an Euler half-step with the
            # multipliers of the previous sub-step: holding the midpoint value is second-order
            # accurate (holding the start value is first-order) for one ONNX call per sub-step.
            hw = 0.5 * (tb - ta)
            dA, dB, dC, dT = derivatives(ta, (cA, cB, cC, T), u, scaled(c0, held.f1, held.f2, fUA))
            mid = (max(cA + hw * dA, 0.0), max(cB + hw * dB, 0.0), max(cC + hw * dC, 0.0), T + hw * dT)
            lg1, lg2, ok = self.log_factors(ta + hw, mid)
            f1, f2 = math.exp(l1 * lg1), math.exp(l2 * lg2)
        else:
            lg1 = lg2 = 0.0
            f1, f2, ok = 1.0, 1.0, True
        g1, g2 = fk1 * f1, fk2 * f2
        held.f1, held.f2 = g1, g2
        self.last_g = (lg1, lg2)
        # The hybrid rates with every factor held over the step, folded into the rate constants and
        # UA: one call of the model's rhs per stage (augmented_rhs, without building arrays).
        c = scaled(c0, g1, g2, fUA)

        def f(tt: float, xx: Sequence[float]) -> tuple[float, float, float, float]:
            return derivatives(tt, xx, u, c)

        dt = tb - ta
        (a0, a1, a2, a3), h = integrate(f, ta, (cA, cB, cC, T), tb, self.tol, h0=h if h > 0.0 else dt)
        # Linearisation at the midpoint of the step: second-order accurate for the covariance.
        mA, mB, mT = 0.5 * (cA + a0), 0.5 * (cB + a1), 0.5 * (T + a3)
        jac = jacobian((mA, mB, 0.5 * (cC + a2), mT), u, c0, f1, f2, fUA, fk1, fk2)
        vals = (*jac, *trust_columns(jac, fk1, fk2, lg1, lg2))
        # First-order rates: r = (dr/dc) c.
        r1 = jac.dcB_dcA * mA
        r2 = jac.dcC_dcB * mB
        # Row of d(dT/dt)/dx: kept for the lagging transmitter's measurement row.
        self.dT_row = (jac.dT_dcA, jac.dT_dcB, 0.0, jac.dT_dT, jac.dT_dUA, jac.dT_dk1, jac.dT_dk2, vals[-4], vals[-1])
        rho = dt * max(jac.dcB_dcA, jac.dcC_dcB, abs(jac.dT_dT))
        eye = self.eye
        if rho > 0.25:
            Phi = self._transition_general(dt, vals, rho)
        else:
            # expm(A dt) ~ I + M (I + M/2), M = A dt, written into its fixed pattern in one call.
            self._Mv[_PATTERN_FLAT] = [v * dt for v in vals]
            M = self._M
            Mh = M * 0.5
            Mh += eye
            Phi = M @ Mh
            Phi += eye
        self.last_phi = Phi
        # Process noise over the step: white rate noise along the two reaction extents (keeps
        # c_A + c_B + c_C conserved) and random walks of T and the factors.
        rq = self._rate_q * dt
        # The learned correction is uncertain in proportion to how much it changes a rate: extra
        # relative rate noise correction_rel_std * |lambda_i g_i| (a weight cannot fix the shape
        # of a correction that extrapolates, e.g. a large g2 late in a batch).
        cq = self._corr_q * dt
        w1, w2 = l1 * lg1, l2 * lg2
        rq1, rq2 = rq + cq * w1 * w1, rq + cq * w2 * w2
        qk = self._qk * dt
        if self.mismatch:
            qk *= self._mwf
        if not ok:
            # The learned correction has faded out: the rates are less certain, and so is how
            # the k-factors must move to make up for it.
            rq1 *= self._ood
            rq2 *= self._ood
            qk *= self._ood
        q1, q2 = c.q1, c.q2
        qa = rq1 * r1 * r1 + 1e-12 * dt
        qb = rq2 * r2 * r2 + 1e-12 * dt
        qa1, qb2 = -qa * q1, qb * q2
        qab = qa * q1 - qb * q2
        self._Qv[_Q_FLAT] = (qa, -qa, qa1, -qa, qa + qb, -qb, qab, -qb, qb, qb2, qa1, qab, qb2,
                             qa * q1 * q1 + qb * q2 * q2 + self._qT * dt, self._qUA * dt, qk, qk,
                             self._ql * dt, self._ql * dt)
        P = Phi @ P @ Phi.T
        P += self._Qd
        xn = np.array((a0 if a0 > 0.0 else 0.0, a1 if a1 > 0.0 else 0.0, a2 if a2 > 0.0 else 0.0, a3,
                       fUA, fk1, fk2, l1, l2))
        return xn, P, h, ok

    def _transition_general(self, dt: float, jac: Sequence[float], rho: float) -> np.ndarray:
        """expm(A dt) by a third-order Taylor series with scaling and squaring (long or fast steps);
        rho = dt * (largest rate of the Jacobian's diagonal) decides the scaling."""
        A = jacobian_matrix(jac)
        s = max(0, math.ceil(math.log2(rho / 0.25)))
        M = A * (dt * 0.5 ** s)
        M2 = M @ M
        Phi = self.eye + M + M2 * 0.5 + (M2 @ M) * (1.0 / 6.0)
        for _ in range(s):
            Phi = Phi @ Phi
        return Phi

    # -- updates ------------------------------------------------------------------------------------
    def predicted_reading(self, x: np.ndarray, u: float) -> float:
        """What the (lagging) transmitter should read: T - tau * dT/dt [K]."""
        lag = self.cfg.T_sensor_lag_s
        xl = x.tolist()
        if lag == 0.0:
            return xl[IT]
        return xl[IT] - lag * self.rate_of_change(xl, u)[3]

    def T_update(self, x: np.ndarray, P: np.ndarray, z: float, R: float,
                 u: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Scalar update with the fitted reading z [K] of variance R [K^2]; returns (innovation, S)."""
        cfg = self.cfg
        lag = cfg.T_sensor_lag_s
        if lag == 0.0:
            PH = P[:, IT]
            HPH = float(P[IT, IT])
        else:
            # Reading = T - lag dT/dt: its row is e_T - lag * d(dT/dt)/dx (from the last sub-step).
            r = self.dT_row
            H = np.array((-lag * r[0], -lag * r[1], 0.0, 1.0 - lag * r[3], -lag * r[4], -lag * r[5], -lag * r[6],
                          -lag * r[7], -lag * r[8]))
            PH = P @ H
            HPH = float(H @ PH)
        innov = z - self.predicted_reading(x, u)
        S = HPH + R
        zn2 = innov * innov / S
        gamma = cfg.huber_threshold
        S_eff = S
        if zn2 > gamma * gamma:
            # Huber: weight gamma/|z| on the measurement, i.e. its variance inflated by |z|/gamma.
            S_eff = HPH + R * math.sqrt(zn2) / gamma
        x = x + PH * (innov / S_eff)
        # PH PH' is exactly symmetric (products commute), so P stays symmetric.
        P = P - (PH[:, None] * PH) * (1.0 / S_eff)
        x = self.project(x, P)
        return x, P, (innov, S)

    def lab_update(self, x: np.ndarray, P: np.ndarray, lab: LabResult) -> tuple[np.ndarray, np.ndarray, float]:
        """Update with a lab assay of c_B and c_C at its sample time; returns (x, P, NIS)."""
        cfg = self.cfg
        zB, zC = lab.c_B_mol_per_m3, lab.c_C_mol_per_m3
        rB = cfg.lab_std(zB) ** 2
        rC = cfg.lab_std(zC) ** 2
        vB, vC = zB - x[IB], zC - x[IC]
        pBB, pBC, pCC = P[IB, IB], P[IB, IC], P[IC, IC]
        sBB, sCC = pBB + rB, pCC + rC
        det = sBB * sCC - pBC * pBC
        nis = (sCC * vB * vB - 2.0 * pBC * vB * vC + sBB * vC * vC) / det
        # Whitened innovation L^-1 v (S = L L', Cholesky of the un-inflated S): N(0, I) when the
        # model fits; the correction-mismatch test (health.LabBiasTest) sums them.
        l11 = math.sqrt(sBB)
        l21 = pBC / l11
        e1 = vB / l11
        self.last_lab_white = (e1, (vC - l21 * e1) / math.sqrt(max(sCC - l21 * l21, 1e-300)))
        if nis > self.lab_gate:
            # A result far off: trust it less (variance inflated so that its NIS sits on the gate).
            infl = nis / self.lab_gate
            sBB, sCC = pBB + rB * infl, pCC + rC * infl
            det = sBB * sCC - pBC * pBC
        # S^-1 = [[sCC, -pBC], [-pBC, sBB]] / det
        PH = P[:, IB:IC + 1]
        Sinv = np.array(((sCC, -pBC), (-pBC, sBB))) / det
        K = PH @ Sinv
        x = x + K @ np.array((vB, vC))
        P = P - K @ PH.T
        P = 0.5 * (P + P.T)
        x = self.project(x, P)
        return x, P, float(nis)

    def project(self, x: np.ndarray, P: np.ndarray) -> np.ndarray:
        """Project x onto the feasible box in the metric of P^-1: the estimate the constrained
        update would give (Simon & Simon's estimate projection); P is left as it is."""
        cA, cB, cC, _, fUA, fk1, fk2, l1, l2 = x.tolist()
        fmin, fmax = self.cfg.factor_min, self.cfg.factor_max
        lmin, lmax = self.cfg.trust_min, self.cfg.trust_max
        if (cA >= 0.0 and cB >= 0.0 and cC >= 0.0 and fmin <= fUA <= fmax and fmin <= fk1 <= fmax
                and fmin <= fk2 <= fmax and lmin <= l1 <= lmax and lmin <= l2 <= lmax):
            return x
        return _box_qp(x, P, self.lo, self.hi)


def _box_qp(x0: np.ndarray, P: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """argmin (x - x0)' P^-1 (x - x0) subject to lo <= x <= hi, by a primal active-set method.

    With the set A of components held on a bound b_A, the minimiser is
    x = x0 - P[:, A] mu, mu = P[A, A]^-1 (x0[A] - b_A); a lower bound stays active while its mu < 0,
    an upper bound while mu > 0 (the KKT multipliers are -2 mu and 2 mu). Constraints with the wrong
    sign are released one at a time, violated ones added; seven variables take a few iterations.
    """
    n = len(x0)
    active: dict[int, float] = {}
    x = x0
    for _ in range(4 * n + 4):
        if active:
            idx = np.fromiter(active, dtype=int)
            b = np.fromiter(active.values(), dtype=float)
            try:
                mu = np.linalg.solve(P[np.ix_(idx, idx)], x0[idx] - b)
            except np.linalg.LinAlgError:
                break
            x = x0 - P[:, idx] @ mu
            x[idx] = b  # exactly on the bounds despite rounding
            wrong = [(mu[j] if b[j] == lo[i] else -mu[j], i) for j, i in enumerate(idx)]
            worst, i_worst = max(wrong)
            if worst > 0.0:
                del active[i_worst]
                continue
        viol = [(max(lo[i] - x[i], x[i] - hi[i]), i) for i in range(n) if i not in active and (x[i] < lo[i] or x[i] > hi[i])]
        if not viol:
            return x
        _, i = max(viol)
        active[i] = lo[i] if x[i] < lo[i] else hi[i]
    return np.minimum(np.maximum(x, lo), hi)
