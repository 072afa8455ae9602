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
from twin_core.estimation import SoftSensor
from twin_core.hybrid import CorrectionModel, HybridTwin
from twin_core.offline.batches import Batch, jacket_input, params_for
from twin_core.offline.softsensor_replay import ReplayResult, lab_z_scores, replay
from twin_core.params import ModelParams
from twin_core.signals.twin import PRIOR_SIGMAS

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

    def UA_trend(self) -> tuple[float, float, float] | None:
        """The fouling trend ln UA_factor = icpt + slope * batches since cleaning over the last
        ``ua_window`` batches: (slope, icpt, residual SD), or None before three different counts."""
        h = self.ua_history[-self.ua_window:] if self.track_UA else []
        n = np.array([a for a, _ in h], dtype=float)
        if len(set(n.tolist())) < 3:
            return None
        y = np.log([b for _, b in h])
        slope, icpt = np.polyfit(n, y, 1)
        res = y - (icpt + slope * n)
        return float(slope), float(icpt), float(math.sqrt(float(res @ res) / max(len(h) - 2, 1)))

    def UA_factor_for(self, batches_since_cleaning: int) -> float:
        """Predicted UA factor [1] of a batch with this recorded count of batches since cleaning."""
        if not self.track_UA or not self.ua_history:
            return 1.0
        trend = self.UA_trend()
        if trend is None:
            return float(math.exp(np.mean(np.log([b for _, b in self.ua_history[-self.ua_window:]]))))
        slope, icpt, _ = trend
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


@dataclass
class PlantPrior:
    """The soft sensor's prior for the next batch of one plant, from the batches it has finished.

    A soft sensor deployed on a known plant should not start each batch as if the plant were new:
    its generic prior (SoftSensorConfig: lambda +- 0.3, k-factors +- 0.1/0.15, UA factor 1 +- 0.2)
    is what the *first* batch needs, and carried into every batch it makes the intervals too wide
    (docs/softsensor.md, "Robustness on a plant family"). Per completed batch:

    - lambda: mean from the :class:`TrustTracker` belief; SD the larger of the tracker's own
      prediction for the next batch, sqrt(cov + walk^2), and the method-of-moments SD (below) of
      the soft sensor's end-of-batch lambda around the prior mean it started from (the tracker's
      open-loop fit cannot see a correction whose *shape* is off; the filter's scatter does);
    - UA factor: the tracker's fouling trend for the batch's recorded batches-since-cleaning, its SD
      the residual SD of ln UA around the trend line (at least ``UA_sd_min``; the generic SD until
      three batches of different counts since cleaning are known);
    - k1, k2 factors: mean 1 (the correction and lambda carry the plant's systematic part), SD by
      the method of moments of a random-effects model: the end-of-batch estimates k_end = k + e with
      Var e = the filter's end SD^2, so tau^2 = (n0 tau0^2 + sum((k_end - 1)^2 - sd_end^2)) / (n0 + n)
      over the last ``window`` batches (tau0: the generic SD as ``n0`` pseudo-batches), at least
      ``k_sd_min``;
    - all five SDs times :attr:`scale`, learned from the lab z-scores of the recent batches (the
      intervals a plant can check against its own assays), within ``scale_range``.

    :meth:`start_kwargs` gives the keywords of ``SoftSensor.start`` (trust0, factors0, prior_std) for
    the next batch; :meth:`update` folds a finished batch in (its measured columns through the
    tracker, the soft sensor's end-of-batch factors and lambdas with their SDs; the lambda deviation
    is taken from the prior mean the last :meth:`start_kwargs` gave). Before any batch it returns the
    generic prior. Uses only what the plant records (never the hidden truth).
    """

    tracker: TrustTracker
    generic_std: tuple[float, float, float, float, float] = (0.2, 0.1, 0.15, 0.3, 0.3)
    window: int = 15
    n0: float = 1.0
    k_sd_min: float = 0.02
    UA_sd_min: float = 0.03
    k_records: list[tuple[float, float, float, float]] = field(default_factory=list)
    lambda_records: list[tuple[float, float, float, float]] = field(default_factory=list)
    scale_records: list[tuple[float, float]] = field(default_factory=list)
    scale_range: tuple[float, float] = (0.25, 2.0)
    _last_trust0: tuple[float, float] | None = field(default=None, init=False, repr=False)
    _last_scale: float = field(default=1.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.generic_std) != 5 or not all(v > 0.0 for v in self.generic_std):
            raise ParameterError("plant prior generic_std", self.generic_std, "five SDs > 0 (UA, k1, k2, lambda_1, lambda_2)")
        if not (self.window >= 1 and self.n0 >= 0.0 and self.k_sd_min > 0.0 and self.UA_sd_min > 0.0):
            raise ParameterError("plant prior", (self.window, self.n0, self.k_sd_min, self.UA_sd_min),
                                 "window >= 1, n0 >= 0, k_sd_min > 0, UA_sd_min > 0")

    @classmethod
    def for_config(cls, tracker: TrustTracker, config, **kw) -> PlantPrior:
        """A prior whose generic SDs are those of a SoftSensorConfig."""
        c = config
        return cls(tracker, (c.UA_factor0_std, c.k1_factor0_std, c.k2_factor0_std, c.trust0_std, c.trust0_std), **kw)

    def _UA_sd(self) -> float:
        trend = self.tracker.UA_trend()
        return self.generic_std[0] if trend is None else max(trend[2], self.UA_sd_min)

    def _moments(self, records: list, tau0: tuple[float, float], floor: float) -> tuple[float, float]:
        """Method-of-moments SDs of two random effects from (dev_1, dev_2, sd_1, sd_2) records."""
        e = np.array(records[-self.window:], dtype=float).reshape(-1, 4)
        out = []
        for i, t0 in enumerate(tau0):
            s = self.n0 * t0 ** 2 + float(np.sum(e[:, i] ** 2 - e[:, 2 + i] ** 2))
            out.append(max(math.sqrt(max(s / (self.n0 + len(e)), 0.0)), floor))
        return out[0], out[1]

    def _k_sd(self) -> tuple[float, float]:
        return self._moments(self.k_records, self.generic_std[1:3], self.k_sd_min)

    def _lambda_sd(self) -> tuple[float, float]:
        tr = self.tracker
        own = np.sqrt(np.diag(tr.cov) + tr.walk_per_batch ** 2)
        if not self.lambda_records:
            return float(own[0]), float(own[1])
        mom = self._moments(self.lambda_records, self.generic_std[3:5], 0.0)
        return max(float(own[0]), mom[0]), max(float(own[1]), mom[1])

    def start_kwargs(self, batch: Batch) -> dict:
        """Keywords of SoftSensor.start for ``batch`` (only its recorded batches-since-cleaning used)."""
        return self.start_kwargs_for(batch.batches_since_cleaning)

    def start_kwargs_for(self, batches_since_cleaning: int) -> dict:
        """Keywords of SoftSensor.start (trust0, factors0, prior_std) for the plant's next batch, run
        ``batches_since_cleaning`` batches after the jacket was last cleaned."""
        tr, g = self.tracker, self.generic_std
        self._last_trust0 = tr.trust
        if not tr.history and not tr.ua_history and not self.k_records:
            return {"trust0": tr.trust, "prior_std": tuple(g)}
        # A tracker without history (a new correction was released: a new lambda belief) keeps the
        # generic lambda SD; the plant's fouling trend, k-factor records and scale still apply.
        l1, l2 = self._lambda_sd() if tr.history else (g[3], g[4])
        k1, k2 = self._k_sd() if self.k_records else (g[1], g[2])
        s = self._last_scale = self.scale
        return {"trust0": tr.trust, "factors0": (tr.UA_factor_for(batches_since_cleaning), 1.0, 1.0),
                "prior_std": tuple(s * v for v in (self._UA_sd(), k1, k2, l1, l2))}

    def fmu_start(self, batches_since_cleaning: int) -> dict[str, float]:
        """:meth:`start_kwargs_for` as the FMUs' parameters (signal table names: ``lambda_1``,
        ``lambda_2``, ``UA_factor0`` and twin_core.signals.twin.PRIOR_SIGMAS), for a reactor's
        ``[reactor.start]`` table or any FMU host: the same start as SoftSensor.start(**kwargs)."""
        kw = self.start_kwargs_for(batches_since_cleaning)
        out = {"lambda_1": float(kw["trust0"][0]), "lambda_2": float(kw["trust0"][1]),
               "UA_factor0": float(kw.get("factors0", (1.0, 1.0, 1.0))[0])}
        out.update({n: float(v) for n, v in zip(PRIOR_SIGMAS, kw["prior_std"], strict=True)})
        return out

    def learn(self, batch: Batch, correction: CorrectionModel | None, config) -> ReplayResult | None:  # noqa: ANN001
        """Run a finished ``batch`` (its measured columns; the hidden truth, if any, is not used)
        through the soft sensor (``config``, a SoftSensorConfig) started from this prior, fold it
        in (:meth:`update`) and return the replay. What `twin prior` does for each recorded batch.
        An aborted batch (Batch.aborted: a trip or runaway, not the plant's normal behaviour) is
        left out: None, the prior unchanged."""
        if batch.aborted:
            return None
        plain = batch.without_truth()
        sensor = SoftSensor(params_for(plain), correction, config)
        start = self.start_kwargs(plain)
        res = replay(sensor, plain, start=start)
        self.update(plain, tuple(res.x[-1, 4:9]), tuple(res.std[-1, 4:9]), lab_z_scores(plain, res, config))
        return res

    @property
    def scale(self) -> float:
        """Factor on the learned prior SDs from the lab z-scores of the recent batches: per batch
        s_b = s_used sqrt(mean z^2) (z^2 ~ 1 / s^2 where the prior dominates the interval), the
        geometric mean over the window shrunk to 1 by n0 pseudo-batches, within scale_range."""
        recs = [r for r in self.scale_records[-self.window:] if r[1] > 0]
        if not recs:
            return 1.0
        ln = sum(math.log(su) + 0.5 * math.log(m) for su, m in recs) / (self.n0 + len(recs))
        return float(np.clip(math.exp(ln), *self.scale_range))

    def update(self, batch: Batch, factors_end: tuple[float, ...], factors_end_std: tuple[float, ...],
               lab_z: list[float] | None = None) -> None:
        """Fold a finished batch in: its measured columns (tracker) and the soft sensor's end-of-batch
        (UA, k1, k2[, lambda_1, lambda_2]) estimates with their SDs."""
        if len(factors_end) < 3 or len(factors_end_std) < 3:
            raise ParameterError("factors_end", factors_end, "must start with (UA_factor, k1_factor, k2_factor)")
        self.k_records.append((float(factors_end[1]) - 1.0, float(factors_end[2]) - 1.0,
                               float(factors_end_std[1]), float(factors_end_std[2])))
        if len(factors_end) >= 5 and len(factors_end_std) >= 5:
            l0 = self._last_trust0 if self._last_trust0 is not None else self.tracker.trust
            self.lambda_records.append((float(factors_end[3]) - l0[0], float(factors_end[4]) - l0[1],
                                        float(factors_end_std[3]), float(factors_end_std[4])))
        z = [float(v) for v in (lab_z or ()) if math.isfinite(v)]
        if z and self.k_records[:-1]:   # the first batch ran on the generic prior: nothing to scale
            self.scale_records.append((self._last_scale, float(np.mean(np.square(z)))))
        self._last_trust0 = None
        self.tracker.update(batch)

