"""The trust weight lambda of a plant, learned batch to batch from its lab results.

The hybrid twin's rates are r_i = r_i,phys exp(lambda_i g_i(x)) (twin_core.hybrid). The soft sensor
estimates lambda inside a batch, where it competes with the per-batch k-factors (raw-material
activity); across batches the *plant's* lambda is what carries over. After each completed batch,
:class:`TrustTracker` updates a Gaussian belief N(mean, cov) about lambda from that batch's lab
assays through the species balances with the reactor temperature imposed from its measurement
(:func:`species_imposed_T`, as the training's stage 1 does: the jacket's fouling, UA, stays out of
the fit of a rate weight):

    prior      N(mean, cov + Q)           Q = walk^2 I: the plant may drift between batches
    residuals  e_j(lambda) = (z_j - c_j(t_j; lambda)) / sd_j    c_B and c_C at each lab sample time
    posterior  Gauss-Newton (two iterations, forward-difference Jacobian of the replay) on
               |e|^2 + (lambda - mean)' (cov + Q)^-1 (lambda - mean)

sd_j = lab_rsd * z_j + lab_floor (the assay's error); the residuals of one batch share its random
raw-material activity, so the posterior covariance is inflated by the batch's residual RMS squared
when that exceeds 1 (the assays fit worse than their own error: the rest is model error).
The open-loop hybrid of the next batch runs with the posterior mean (validation/robustness.py,
"hybrid (trust-weighted)"); the soft sensor starts from it (``SoftSensor.start(trust0=...)``).
Only the measured columns of a batch are used (never the hidden truth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ml_onnx.dataset import measured_temperature, propagate
from twin_core.errors import ParameterError
from twin_core.hybrid import CorrectionModel, HybridTwin
from twin_core.offline.batches import Batch, jacket_input, params_for
from twin_core.params import ModelParams

TRUST_BOUNDS = (-3.0, 4.0)
"""Feasible range of each lambda_i (as the soft sensor's trust_min, trust_max)."""


def open_loop_trust(batch: Batch, correction: CorrectionModel | None, trust: tuple[float, float],
                    params: ModelParams | None = None, UA_factor: float = 1.0) -> np.ndarray:
    """States (N, 4) of the open-loop replay of ``batch`` with trust weight ``trust``: the replay
    of twin_core.offline.batches.open_loop (recorded charge, its jacket input rule, one twin step
    per row) with HybridTwin's ``trust`` and the heat-transfer coefficient UA times ``UA_factor``."""
    p = params_for(batch, params)
    if UA_factor != 1.0:
        p = p.replace(UA_W_per_K=p.reactor.UA_W_per_K * UA_factor)
    twin = HybridTwin(p, correction, trust=trust)
    state = twin.initial_state()
    t = batch.t_s
    u = jacket_input(batch)
    x = np.empty((len(t), 4))
    x[0] = state.x
    for i in range(1, len(t)):
        state = twin.step(state, float(t[i - 1]), float(t[i] - t[i - 1]), float(u[i - 1]))
        x[i] = state.x
    return x


def species_imposed_T(batch: Batch, correction: CorrectionModel | None, trust: tuple[float, float],
                      params: ModelParams | None = None, sweeps: int = 4) -> np.ndarray:
    """(c_A, c_B, c_C) (N, 3) [mol/m3] at the rows with the measured reactor temperature imposed
    (ml_onnx.dataset.propagate: closed form over each 1-min row) and the rates scaled by
    exp(lambda_i g_i), g_i the correction's faded log-factors at the state at the start of each row.
    g depends on the state it shapes: a fixed-point sweep (g from the last trajectory, then the
    trajectory again) converges in a few sweeps because the correction varies slowly with the state.
    Needs correction.log_factors_batch (ml_onnx.runtime.OnnxCorrection)."""
    p = params_for(batch, params)
    t = batch.t_s[None, :]
    T = measured_temperature(batch)
    cA0 = np.array([batch.c_A0_recorded_mol_per_m3])
    ln_f = np.zeros((1, len(batch.t_s) - 1, 2))
    c = propagate(t, T[None, :], ln_f, cA0, p)[0]
    if correction is None or (trust[0] == 0.0 and trust[1] == 0.0):
        return c
    lam = np.asarray(trust, dtype=float)
    for _ in range(sweeps):
        g1, g2, _ok = correction.log_factors_batch(batch.t_s[:-1], np.vstack([c[:-1].T, T[None, :-1]]))  # type: ignore[attr-defined]
        ln_f[0, :, 0], ln_f[0, :, 1] = lam[0] * g1, lam[1] * g2
        c = propagate(t, T[None, :], ln_f, cA0, p)[0]
    return c


def lab_arrays(batch: Batch, lab_rsd: float = 0.015, lab_floor_mol_per_m3: float = 1.0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample times [s] (m,), assays z (m, 2) of c_B, c_C [mol/m3], their SDs (m, 2) [mol/m3])."""
    ts = batch.lab_t_s
    z = np.column_stack([batch.lab_c_B, batch.lab_c_C]) if len(ts) else np.zeros((0, 2))
    ok = np.all(np.isfinite(z), axis=1)
    ts, z = ts[ok], z[ok]
    return ts, z, lab_rsd * np.abs(z) + lab_floor_mol_per_m3


def lab_residuals(batch: Batch, x: np.ndarray) -> np.ndarray:
    """Standardised lab residuals (z - predicted) / sd, flattened (c_B, c_C per assay), of the
    trajectory x (N, >= 3) (c_A, c_B, c_C, ...) at the batch's rows (linear interpolation to the
    sample times)."""
    ts, z, sd = lab_arrays(batch)
    if not len(ts):
        return np.zeros(0)
    pred = np.column_stack([np.interp(ts, batch.t_s, x[:, 1]), np.interp(ts, batch.t_s, x[:, 2])])
    return ((z - pred) / sd).ravel()


def fit_trust(batch: Batch, correction: CorrectionModel, mean: np.ndarray, cov: np.ndarray,
              params: ModelParams | None = None, iterations: int = 2, delta: float = 0.05
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """Posterior (mean (2,), cov (2, 2), residual RMS at the mean) of lambda from one batch's labs
    with prior N(mean, cov) (module docstring). A batch without lab results returns the prior."""
    m0 = np.asarray(mean, dtype=float).copy()
    P0 = np.asarray(cov, dtype=float)
    if m0.shape != (2,) or P0.shape != (2, 2):
        raise ParameterError("trust prior", (m0.shape, P0.shape), "mean (2,) and cov (2, 2)")
    if not len(batch.lab_t_s):
        return m0, P0.copy(), math.nan
    P0inv = np.linalg.inv(P0)
    lam = m0.copy()
    lo, hi = TRUST_BOUNDS
    H = P0inv
    for _ in range(iterations):
        r0 = lab_residuals(batch, species_imposed_T(batch, correction, (lam[0], lam[1]), params))
        J = np.empty((len(r0), 2))
        for k in range(2):
            lk = lam.copy()
            lk[k] += delta
            J[:, k] = -(lab_residuals(batch, species_imposed_T(batch, correction, (lk[0], lk[1]), params)) - r0) / delta
        # minimise |r0 - J d|^2 + (lam + d - m0)' P0^-1 (lam + d - m0)
        H = J.T @ J + P0inv
        g = J.T @ r0 - P0inv @ (lam - m0)
        lam = np.clip(lam + np.linalg.solve(H, g), lo, hi)
    r = lab_residuals(batch, species_imposed_T(batch, correction, (lam[0], lam[1]), params))
    rms = float(np.sqrt(np.mean(r * r))) if len(r) else math.nan
    cov_post = np.linalg.inv(H)
    if rms > 1.0:
        # Inflate only the data part: cov = (J'J / rms^2 + P0^-1)^-1.
        JtJ = H - P0inv
        cov_post = np.linalg.inv(JtJ / (rms * rms) + P0inv)
    return lam, 0.5 * (cov_post + cov_post.T), rms


def fit_UA_factor(batch: Batch, correction: CorrectionModel | None, trust: tuple[float, float],
                  params: ModelParams | None = None, iterations: int = 3) -> float:
    """The batch's UA factor [1] that best explains its measured reactor temperature in the
    open-loop replay (Gauss-Newton on ln UA_factor, the T readings' residuals; within [0.2, 2])."""
    T = measured_temperature(batch)
    ln_u = 0.0
    for _ in range(iterations):
        r0 = T - open_loop_trust(batch, correction, trust, params, math.exp(ln_u))[:, 3]
        r1 = T - open_loop_trust(batch, correction, trust, params, math.exp(ln_u + 0.02))[:, 3]
        J = -(r1 - r0) / 0.02
        jj = float(J @ J)
        if not jj > 0.0:
            break
        ln_u = float(np.clip(ln_u + float(J @ r0) / jj, math.log(0.2), math.log(2.0)))
    return math.exp(ln_u)


@dataclass
class TrustTracker:
    """The plant's lambda belief, carried from batch to batch (module docstring).

    ``mean``/``cov`` start at the prior N((1, 1), prior_sd^2 I); :meth:`update` after each batch.
    ``history`` keeps (batch_id, mean, sd, residual RMS) per update.

    The jacket fouls between cleanings, and the open-loop replay of the next batch needs its UA
    before any of its readings: per completed batch the UA factor that explains its measured
    temperature is fitted (:func:`fit_UA_factor`), and :meth:`UA_factor_for` predicts the next one
    by a least-squares line of ln UA_factor on the recorded batches since cleaning over the last
    ``ua_window`` batches (the fouling trend a plant engineer knows; 1 before any batch).
    """

    correction: CorrectionModel
    prior_sd: float = 0.5
    walk_per_batch: float = 0.05
    params: ModelParams | None = None
    mean: np.ndarray = field(default_factory=lambda: np.ones(2))
    cov: np.ndarray = field(default_factory=lambda: np.eye(2))
    history: list[tuple[int, tuple[float, float], tuple[float, float], float]] = field(default_factory=list)
    track_UA: bool = True
    ua_window: int = 15
    ua_history: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (self.prior_sd > 0.0 and self.walk_per_batch >= 0.0):
            raise ParameterError("trust tracker", (self.prior_sd, self.walk_per_batch), "prior_sd > 0, walk >= 0")
        self.cov = np.eye(2) * self.prior_sd ** 2

    @property
    def trust(self) -> tuple[float, float]:
        """The lambda to run the next batch with (posterior mean)."""
        return float(self.mean[0]), float(self.mean[1])

    @property
    def sd(self) -> tuple[float, float]:
        return float(math.sqrt(self.cov[0, 0])), float(math.sqrt(self.cov[1, 1]))

    def UA_factor_for(self, batches_since_cleaning: int) -> float:
        """Predicted UA factor [1] of a batch with this recorded count of batches since cleaning."""
        if not self.track_UA or not self.ua_history:
            return 1.0
        h = self.ua_history[-self.ua_window:]
        n = np.array([a for a, _ in h], dtype=float)
        y = np.log([b for _, b in h])
        if len(set(n.tolist())) < 3:
            return float(math.exp(np.mean(y)))
        slope, icpt = np.polyfit(n, y, 1)
        return float(np.clip(math.exp(icpt + slope * batches_since_cleaning), 0.2, 2.0))

    def update(self, batch: Batch) -> tuple[float, float]:
        """Fold a completed batch's labs into the belief (and its UA factor into the fouling
        trend); returns the new mean."""
        prior_cov = self.cov + np.eye(2) * self.walk_per_batch ** 2
        self.mean, self.cov, rms = fit_trust(batch, self.correction, self.mean, prior_cov, self.params)
        self.history.append((batch.batch_id, self.trust, self.sd, rms))
        if self.track_UA:
            self.ua_history.append((batch.batches_since_cleaning,
                                    fit_UA_factor(batch, self.correction, self.trust, self.params)))
        return self.trust

    def predict(self, batch: Batch) -> np.ndarray:
        """Open-loop states (N, 4) of ``batch`` with the current lambda and predicted UA factor
        (uses only what is known at the batch's start: its recorded charge, batches since
        cleaning, and the jacket readings that drive every open-loop replay)."""
        return open_loop_trust(batch, self.correction, self.trust, self.params,
                               self.UA_factor_for(batch.batches_since_cleaning))
