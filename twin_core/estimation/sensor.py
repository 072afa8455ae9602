"""The soft sensor: an extended Kalman filter on the hybrid model with non-negativity projection,
out-of-sequence lab assays, robust weighting of suspicious readings and model-health monitoring.

This module is the facade (lifecycle, input checks, the per-scan path, what is published); the
parts live by concern in this package, docs/softsensor.md gives the reasoning:

    config.py      SoftSensorConfig, the tuning
    state.py       layout of the augmented state, Estimate, LabResult
    scans.py       pooling of the scans between filter steps (weighted line fit, jacket average)
    ekf.py         propagation on the model's rhs and analytic Jacobian, T and lab updates, projection
    history.py     one record per filter step: late labs re-processed from their sample time, smoothing
    health.py      NIS window, CUSUM, stuck reading, and the alarms
    forecast.py    forecast of the rest of the batch from the estimate
    checkpoint.py  get_state / set_state as named plain data with a format version

Measurements: the reactor temperature at every scan (the jacket temperature is the input) and lab
assays of c_B and c_C that arrive 30-45 min after their sample was drawn. Suspicious values are
down-weighted (Huber); impossible ones are refused with MeasurementError and leave the estimator
untouched.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np

from twin_core.analysis import Economics
from twin_core.errors import MeasurementError, ParameterError, ParameterTypeError
from twin_core.estimation.checkpoint import Checkpoint
from twin_core.estimation.config import SoftSensorConfig
from twin_core.estimation.ekf import Ekf
from twin_core.estimation.forecast import Forecast, forecast_from, jacket_plan
from twin_core.estimation.health import ALARM_FLAGS, SENSOR_FAULTS, ModelHealth, SoftSensorAlarm
from twin_core.estimation.history import History, Record, run_record
from twin_core.estimation.scans import ScanPool
from twin_core.estimation.state import IK1, IK2, IL1, IL2, IT, N_STATES, Estimate, LabResult
from twin_core.hybrid import CorrectionModel
from twin_core.model import coefficients
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.validate import number as _num

CORRECTION_MISMATCH_BIT = int(SoftSensorAlarm.CORRECTION_MISMATCH)


class SoftSensor:
    """State estimator of the batch reactor on the hybrid model (see the module docstring).

    Lifecycle: ``SoftSensor(params, correction, config)`` does no work; :meth:`start` at the start
    of the batch; then :meth:`update` once per scan with the measured reactor and jacket
    temperatures, :meth:`add_lab` when a lab result arrives, :meth:`forecast` (or
    :meth:`set_plan` for automatic forecasts). :meth:`get_state` / :meth:`set_state` checkpoint
    everything as plain data; a restored estimator continues bit-identically.
    """

    def __init__(self, params: ModelParams | None = None, correction: CorrectionModel | None = None,
                 config: SoftSensorConfig | None = None, economics: Economics | None = None) -> None:
        self.params = params if params is not None else ModelParams()
        self.correction = correction
        self.config = config if config is not None else SoftSensorConfig()
        self.economics = economics if economics is not None else Economics()
        if not isinstance(self.economics, Economics):
            raise ParameterTypeError("economics", self.economics, "Economics")
        if not isinstance(self.params, ModelParams):
            raise ParameterTypeError("params", self.params, "ModelParams")
        if not isinstance(self.config, SoftSensorConfig):
            raise ParameterTypeError("config", self.config, "SoftSensorConfig")
        self._ekf = Ekf(coefficients(self.params), correction, self.config)
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, t0_s: float = 0.0, x0: Sequence[float] | None = None,
              factors0: Sequence[float] = (1.0, 1.0, 1.0), T_measured_K: float | None = None,
              trust0: Sequence[float] = (1.0, 1.0), prior_std: Sequence[float] | None = None) -> Estimate:
        """Start (or restart) the estimator at time t0_s [s] of the batch.

        x0 = (c_A, c_B, c_C [mol/m3], T [K]) is the prior guess (default: the charge of the
        parameters); factors0 the prior (UA, k1, k2) factors; a measured T_measured_K [K] replaces
        the guessed temperature (with the sensor's noise as its uncertainty); trust0 the prior mean
        of the trust weights (lambda_1, lambda_2) on the learned correction (std ``trust0_std``).
        prior_std = (UA_factor, k1_factor, k2_factor, lambda_1, lambda_2) prior standard deviations
        replaces the configuration's (``UA_factor0_std``, ``k1_factor0_std``, ``k2_factor0_std``,
        ``trust0_std``) for this batch: what the plant's previous batches said
        (:class:`twin_core.estimation.PlantPrior`).
        """
        cfg = self.config
        t0 = _num("t0_s", t0_s)
        x4 = list(self.params.charge.x0 if x0 is None else x0)
        if len(x4) != 4:
            raise ParameterError("x0", x0, "must be (c_A, c_B, c_C, T)")
        for i, v in enumerate(x4):
            _num(f"x0[{i}]", v)
        if min(x4[:3]) < 0.0:
            raise ParameterError("x0", x0, "concentrations must be >= 0")
        if len(factors0) != 3:
            raise ParameterError("factors0", factors0, "must be (UA_factor, k1_factor, k2_factor)")
        for i, v in enumerate(factors0):
            if not cfg.factor_min <= _num(f"factors0[{i}]", v) <= cfg.factor_max:
                raise ParameterError(f"factors0[{i}]", v, f"must be within [{cfg.factor_min}, {cfg.factor_max}]")
        if len(trust0) != 2:
            raise ParameterError("trust0", trust0, "must be (lambda_1, lambda_2)")
        for i, v in enumerate(trust0):
            if not cfg.trust_min <= _num(f"trust0[{i}]", v) <= cfg.trust_max:
                raise ParameterError(f"trust0[{i}]", v, f"must be within [{cfg.trust_min}, {cfg.trust_max}]")
        if prior_std is None:
            prior_std = (cfg.UA_factor0_std, cfg.k1_factor0_std, cfg.k2_factor0_std, cfg.trust0_std, cfg.trust0_std)
        if len(prior_std) != 5:
            raise ParameterError("prior_std", prior_std, "must be (UA_factor, k1_factor, k2_factor, lambda_1, lambda_2) SDs")
        for i, v in enumerate(prior_std):
            if not _num(f"prior_std[{i}]", v) > 0.0:
                raise ParameterError(f"prior_std[{i}]", v, "must be > 0")
        T_std = cfg.T0_std_K
        if T_measured_K is not None:
            x4[3] = self._check_T("T_measured", T_measured_K)
            T_std = math.hypot(cfg.T_noise_std_K, cfg.T_floor_std_K)
        self._x = np.array([*map(float, x4), *map(float, factors0), *map(float, trust0)])
        self._trust0 = (float(trust0[0]), float(trust0[1]))
        c_total = x4[0] + x4[1] + x4[2]
        self._P = np.diag(np.array([cfg.c_A0_rel_std * max(c_total, 1.0), cfg.c_BC0_std_mol_per_m3,
                                    cfg.c_BC0_std_mol_per_m3, T_std, *map(float, prior_std)]) ** 2)
        self._h = 0.0
        # Rate factors used by the extrapolation until the first step (then those of each step).
        self._ekf.held.f1, self._ekf.held.f2 = float(factors0[1]), float(factors0[2])
        self._ekf.mismatch = False
        self._t0 = t0
        self._t_filter = t0          # time of the last filter step (the posterior's time)
        self._t_scan = t0            # time of the last scan accepted
        self._n_scans = 0
        self._u = math.nan           # jacket input held over the last step [K]
        self._in_domain = True
        self._history = History(cfg.history_window_s, t0, self._x, self._P)
        self._scans = ScanPool(cfg, t0)
        self._health = ModelHealth(cfg, self.correction is not None)
        self._innov = 0.0
        self._plan: Recipe | None = None
        self._plan_end = math.nan
        self._forecast: Forecast | None = None
        self._t_forecast = -math.inf
        self._started = True
        self._refresh_output()
        return self._estimate(t0)

    # -- per-scan -----------------------------------------------------------------------------------
    def _check_T(self, signal: str, value: object) -> float:
        cfg = self.config
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MeasurementError(signal, value, "not a number")
        v = float(value)
        if not math.isfinite(v):
            raise MeasurementError(signal, value, "not a finite number")
        if not cfg.T_sensor_min_K <= v <= cfg.T_sensor_max_K:
            raise MeasurementError(signal, value, f"outside the sensor range [{cfg.T_sensor_min_K}, {cfg.T_sensor_max_K}] K")
        return v

    def _check_scan(self, t_s: object, T_measured_K: object, T_jacket_K: object) -> None:
        if not self._started:
            raise MeasurementError("t_s", t_s, "the estimator has not been started")
        if isinstance(t_s, bool) or not isinstance(t_s, (int, float)) or not math.isfinite(t_s):
            raise MeasurementError("t_s", t_s, "not a finite time")
        t = float(t_s)
        if self._n_scans and not t > self._t_scan:
            raise MeasurementError("t_s", t_s, f"not after the previous scan at {self._t_scan} s")
        if t < self._t0:
            raise MeasurementError("t_s", t_s, f"before the start of the batch at {self._t0} s")
        self._check_T("T_measured", T_measured_K)
        self._check_T("T_jacket", T_jacket_K)

    def update(self, t_s: float, T_measured_K: float, T_jacket_K: float) -> Estimate:
        """One scan at time t_s [s] with the measured reactor and jacket temperatures [K].

        Raises MeasurementError (estimator unchanged) for a time not after the previous scan, a
        non-finite value or a temperature outside the sensor range.
        """
        cfg = self.config
        lo_T, hi_T = cfg.T_sensor_min_K, cfg.T_sensor_max_K
        # Fast path for the usual scan (plain floats, in range, time moving on; NaN fails every
        # comparison); anything else goes through the checks that name what is wrong.
        if not (type(t_s) is float and type(T_measured_K) is float and type(T_jacket_K) is float
                and self._started and t_s > self._t_scan and t_s < math.inf
                and lo_T <= T_measured_K <= hi_T and lo_T <= T_jacket_K <= hi_T):
            self._check_scan(t_s, T_measured_K, T_jacket_K)
        t = float(t_s)
        y = float(T_measured_K)
        self._health.reading(t, y)   # sensor-fault detection on the raw readings
        self._scans.add(t, y, float(T_jacket_K), self._t_filter)
        self._n_scans += 1
        self._t_scan = t
        if t >= self._next_boundary and t > self._t_filter:
            self._filter_step(t)
            self._refresh_forecast(t)
        return self._estimate(t)

    def predict(self, t_s: float, T_jacket_K: float) -> Estimate:
        """Open loop to time t_s [s]: no reactor-temperature reading (e.g. the PLC link is down), the
        jacket at T_jacket_K [K] (the last reading) held since the last scan.

        The readings pooled so far are filtered first; then one step propagates the state over the
        gap without a temperature update, so the uncertainty grows; late lab assays and the next
        :meth:`update` (closed loop again) correct it. Raises MeasurementError like update().
        """
        self._check_scan(t_s, self.config.T_sensor_min_K, T_jacket_K)
        t, u = float(t_s), float(T_jacket_K)
        if not t > self._t_filter:
            raise MeasurementError("t_s", t_s, f"not after the last filter step at {self._t_filter} s")
        if self._scans.n_acc and self._t_scan > self._t_filter:
            self._filter_step(self._t_scan)
        self._filter_step(t, open_loop_u=u)
        self._scans.Tj_last, self._scans.Tj_last_t = u, t  # the next trapezoid starts here
        self._n_scans += 1
        self._t_scan = t
        self._refresh_forecast(t)
        return self._estimate(t)

    def _refresh_forecast(self, t: float) -> None:
        cfg = self.config
        if cfg.forecast_interval_s > 0.0 and self._plan_end == self._plan_end \
                and t - self._t_forecast >= cfg.forecast_interval_s:
            self._forecast = self.forecast(self._plan, self._plan_end)
            self._t_forecast = t

    def _filter_step(self, t: float, open_loop_u: float | None = None) -> None:
        scans, hist, health = self._scans, self._history, self._health
        if open_loop_u is None:
            z, R = scans.fit(self._t_scan - self._t_filter)
            u = scans.Tj_int / (t - self._t_filter)
            use_T = not (health.alarms & SENSOR_FAULTS)
        else:  # no reading: propagate only
            z, R, u, use_T = math.nan, math.nan, open_loop_u, False
        rec = Record(self._t_filter, t, u, z, R, use_T)
        fresh: tuple[LabResult, ...] = ()
        if hist.pending:
            rec.labs = sorted(hist.pending, key=lambda lab: lab.sample_time_s)
            hist.pending = []
            fresh = tuple(rec.labs)
        x, P, h, (innov, S) = run_record(self._ekf, rec, self._x, self._P, self._h, health.lab, fresh)
        if fresh:
            self._check_trust(x, P)
        hist.records.append(rec)
        self._x, self._P, self._h = x, P, h
        self._t_filter = t
        self._u = u
        self._in_domain = rec.in_domain
        scans.clear()
        hist.prune(t)
        self._innov = innov
        if S > 0.0:
            health.temperature(t, innov, S, use_T)
        self._refresh_output()

    def _check_trust(self, x: np.ndarray, P: np.ndarray) -> None:
        """After fresh lab assays: the trust weights against their prior (ModelHealth.trust)."""
        if self.correction is None:
            return
        before = self._health.alarms & CORRECTION_MISMATCH_BIT
        self._check_trust_tests(x, P)
        if not before and self._health.alarms & CORRECTION_MISMATCH_BIT:
            # Adapt: the correction does not fit, so the prior on how much to trust it was wrong.
            # Open the trust weights and the k-factors again (their prior variances added) and let
            # the k-factors walk faster for the rest of the batch (ekf.mismatch).
            cfg = self.config
            for i, v in ((IL1, cfg.trust0_std ** 2), (IL2, cfg.trust0_std ** 2),
                         (IK1, cfg.k1_factor0_std ** 2), (IK2, cfg.k2_factor0_std ** 2)):
                P[i, i] += v
            self._ekf.mismatch = True

    def _check_trust_tests(self, x: np.ndarray, P: np.ndarray) -> None:
        self._health.trust((float(x[IL1]), float(x[IL2])),
                           (math.sqrt(max(P[IL1, IL1], 0.0)), math.sqrt(max(P[IL2, IL2], 0.0))), self._trust0)
        # The rate shift the assays ask for on top of the correction as trained, whichever states
        # carry it: delta_i = (lambda_i - lambda0_i) g_i + ln k_i, with its variance from P.
        shifts = []
        for il, ik, g, l0 in ((IL1, IK1, self._ekf.last_g[0], self._trust0[0]),
                              (IL2, IK2, self._ekf.last_g[1], self._trust0[1])):
            k = max(float(x[ik]), 1e-9)
            d = (float(x[il]) - l0) * g + math.log(k)
            var = g * g * P[il, il] + P[ik, ik] / (k * k) + 2.0 * g * P[il, ik] / k
            shifts.append((d, math.sqrt(max(var, 0.0))))
        self._health.rate_shift(shifts)

    def _refresh_output(self) -> None:
        """Cache what every scan's estimate needs: derivative for extrapolation, std, next step time."""
        x = self._xl = self._x.tolist()
        u = self._u if self._u == self._u else x[IT]
        self._dx = self._ekf.rate_of_change(x, u)  # with the factors of the last step (include k-factors)
        self._std = tuple(np.sqrt(np.maximum(np.diagonal(self._P), 0.0)).tolist())
        self._nis_mean = self._health.nis_window.mean
        cfg = self.config
        k = math.floor((self._t_filter - self._t0) / cfg.filter_interval_s * (1.0 + 1e-12)) + 1
        self._next_boundary = self._t0 + k * cfg.filter_interval_s

    def _estimate(self, t: float) -> Estimate:
        a, b, c, d, fUA, fk1, fk2, l1, l2 = self._xl
        dx = self._dx
        dt = t - self._t_filter
        x0, x1, x2 = a + dx[0] * dt, b + dx[1] * dt, c + dx[2] * dt
        xs = (x0 if x0 > 0.0 else 0.0, x1 if x1 > 0.0 else 0.0, x2 if x2 > 0.0 else 0.0, d + dx[3] * dt,
              fUA, fk1, fk2, l1, l2)
        health = self._health
        alarms = health.alarms
        return Estimate(t, xs, self._std, self._innov, health.nis, self._nis_mean, health.level(self._in_domain),
                        ALARM_FLAGS[alarms], self._in_domain, not (alarms & SENSOR_FAULTS), self._forecast)

    @property
    def estimate(self) -> Estimate:
        """The estimate at the last scan."""
        self._require_started()
        return self._estimate(self._t_scan)

    def covariance(self) -> np.ndarray:
        """Covariance of the state (STATE_NAMES order) at the last filter step (a copy)."""
        self._require_started()
        return self._P.copy()

    @property
    def alarms(self) -> SoftSensorAlarm:
        return ALARM_FLAGS[self._health.alarms]

    def reset_alarms(self) -> None:
        """Clear latched alarms (operator acknowledgement after the cause was fixed)."""
        self._require_started()
        self._health.reset()
        self._ekf.mismatch = False

    def _require_started(self) -> None:
        if not self._started:
            raise MeasurementError("state", None, "the estimator has not been started")

    # -- lab assays ---------------------------------------------------------------------------------
    def add_lab(self, sample_time_s: float, c_B_mol_per_m3: float, c_C_mol_per_m3: float,
                arrival_time_s: float | None = None) -> Estimate:
        """A lab result for the sample drawn at sample_time_s [s] (arriving now, or at arrival_time_s).

        A result whose sample time falls in the history is applied at its sample time and the
        filter steps since are re-processed; one that falls in the open interval waits for the
        next filter step. Raises MeasurementError (estimator unchanged) for: a non-finite or
        negative value, a value above the assay range, a sample time in the future, before the
        batch started or older than the history window, a duplicate sample time, an arrival before
        the sample was drawn. A result far from the prediction is down-weighted, not refused.
        """
        self._require_started()
        cfg = self.config
        hist = self._history
        vals = []
        for name, v in (("lab_c_B", c_B_mol_per_m3), ("lab_c_C", c_C_mol_per_m3)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise MeasurementError(name, v, "not a finite number")
            if v < 0.0:
                raise MeasurementError(name, v, "negative concentration")
            if v > cfg.lab_max_mol_per_m3:
                raise MeasurementError(name, v, f"above the assay range ({cfg.lab_max_mol_per_m3} mol/m3)")
            vals.append(float(v))
        ts = sample_time_s
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise MeasurementError("lab_sample_time", ts, "not a finite time")
        ts = float(ts)
        if ts > self._t_scan:
            raise MeasurementError("lab_sample_time", ts, f"in the future (the estimator is at {self._t_scan} s)")
        if ts < self._t0:
            raise MeasurementError("lab_sample_time", ts, f"before the batch started at {self._t0} s")
        i = bisect.bisect_left(hist.lab_times, ts)
        for j in (i - 1, i):
            if 0 <= j < len(hist.lab_times) and abs(hist.lab_times[j] - ts) <= 1e-6:
                raise MeasurementError("lab_sample_time", ts, "duplicate: a result for this sample was already used")
        if ts < hist.base_t:
            raise MeasurementError("lab_sample_time", ts,
                                   f"older than the history window ({cfg.history_window_s} s): cannot be re-processed")
        arr = self._t_scan if arrival_time_s is None else arrival_time_s
        if isinstance(arr, bool) or not isinstance(arr, (int, float)) or not math.isfinite(arr):
            raise MeasurementError("lab_arrival_time", arrival_time_s, "not a finite time")
        if arr < ts:
            raise MeasurementError("lab_arrival_time", arr, f"before the sample was drawn at {ts} s")
        lab = LabResult(ts, vals[0], vals[1], float(arr))
        hist.lab_times.insert(i, ts)
        if ts > self._t_filter or not hist.records:
            hist.pending.append(lab)
            return self._estimate(self._t_scan)
        k = hist.index(ts)
        hist.records[k].labs.append(lab)
        hist.records[k].labs.sort(key=lambda r: r.sample_time_s)
        self._x, self._P, self._h = hist.rerun(k, self._ekf, self._health.lab, (lab,))
        self._check_trust(self._x, self._P)
        if hist.records:
            self._in_domain = hist.records[-1].in_domain
        self._refresh_output()
        return self._estimate(self._t_scan)

    # -- past ---------------------------------------------------------------------------------------
    def history(self) -> list[tuple[float, tuple[float, ...], tuple[float, ...]]]:
        """The filtered estimates (t [s], x, std) at every filter step kept in the history window;
        after a late lab assay these are the re-processed ones."""
        self._require_started()
        return self._history.filtered()

    def smoothed_history(self) -> list[tuple[float, tuple[float, ...], tuple[float, ...]]]:
        """Rauch-Tung-Striebel smoothed estimates (t [s], x, std) at every filter step (and lab
        sample time) of the history window (the estimator itself does not change)."""
        self._require_started()
        return self._history.smoothed(self._ekf)

    # -- forecast -----------------------------------------------------------------------------------
    def set_plan(self, recipe: Recipe | None, t_end_s: float | None = None) -> None:
        """What automatic forecasts assume: the recipe's jacket programme (None: the jacket held at
        its current temperature) up to t_end_s [s] (default: the recipe's end)."""
        self._require_started()
        if recipe is None and t_end_s is None:
            self._plan, self._plan_end = None, math.nan
            return
        end = recipe.end_time_s if t_end_s is None and recipe is not None else _num("t_end_s", t_end_s)
        self._plan, self._plan_end = recipe, float(end)
        self._t_forecast = -math.inf

    def forecast(self, recipe: Recipe | None = None, t_end_s: float | None = None) -> Forecast:
        """Forecast of the rest of the batch from the current estimate (does not change the estimator).

        recipe: jacket programme to follow (the measured jacket temperature rejoins it with time
        constant ``jacket_settle_s``); None holds the jacket at its current temperature. t_end_s
        [s]: horizon (default: the recipe's end time). Returns final yield, optimal and economic
        stop, impurity at stop, with the uncertainty of the yield.
        """
        self._require_started()
        if t_end_s is None:
            if recipe is None:
                raise ParameterError("t_end_s", None, "needed when no recipe is given")
            t_end_s = recipe.end_time_s
        t_end = _num("t_end_s", t_end_s)
        # The jacket now: the input of the last filter step, else the last reading, else unknown.
        u_now = self._u if self._u == self._u else self._scans.Tj_last
        cfg = self.config
        jacket = jacket_plan(recipe, u_now, self._t_filter, cfg.jacket_settle_s)
        with self._ekf.preserved():
            return forecast_from(self._ekf.substep, self.params, self._t_filter, self._x, self._P, self._h, t_end,
                                 cfg.forecast_dt_s, jacket, self.economics)

    # -- checkpoint ---------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Everything needed to continue exactly, as plain data (:class:`Checkpoint`, named fields)."""
        self._require_started()
        held = self._ekf.held
        return Checkpoint(
            config=self.config.as_dict(), t0=self._t0, t_filter=self._t_filter, t_scan=self._t_scan,
            n_scans=self._n_scans, x=self._x.tolist(), P=self._P.ravel().tolist(), h=self._h, u=self._u,
            in_domain=self._in_domain, held_f1=held.f1, held_f2=held.f2, innov=self._innov,
            history=self._history.get_state(), scans=self._scans.get_state(), health=self._health.get_state(),
            plan=None if self._plan is None else self._plan.to_mapping(), plan_end=self._plan_end,
            forecast=None if self._forecast is None else self._forecast.to_dict(), t_forecast=self._t_forecast,
            trust0=list(self._trust0), mismatch=bool(self._ekf.mismatch),
        ).to_plain()

    def set_state(self, s: dict) -> None:
        """Restore a state from :meth:`get_state` (the configuration must be the same)."""
        cp = Checkpoint.from_plain(s)
        if cp.config != self.config.as_dict():
            raise ParameterError("state.config", None, "the state was saved with another soft-sensor configuration")
        from twin_core.recipe import recipe_from_mapping

        self.start(float(cp.t0), trust0=tuple(cp.trust0))
        self._t_filter, self._t_scan, self._n_scans = float(cp.t_filter), float(cp.t_scan), int(cp.n_scans)
        self._x = np.array(cp.x, dtype=float)
        self._P = np.array(cp.P, dtype=float).reshape(N_STATES, N_STATES)
        self._h, self._u, self._in_domain = float(cp.h), float(cp.u), bool(cp.in_domain)
        self._ekf.held.f1, self._ekf.held.f2 = float(cp.held_f1), float(cp.held_f2)
        self._innov = float(cp.innov)
        self._ekf.mismatch = bool(cp.mismatch)
        self._history.set_state(cp.history)
        self._scans.set_state(cp.scans)
        self._health.set_state(cp.health)
        self._plan = None if cp.plan is None else recipe_from_mapping(cp.plan)
        self._plan_end = float(cp.plan_end)
        self._forecast = None if cp.forecast is None else Forecast.from_dict(cp.forecast)
        self._t_forecast = float(cp.t_forecast)
        self._refresh_output()
