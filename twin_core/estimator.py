"""The soft sensor: an extended Kalman filter on the hybrid model with non-negativity projection,
out-of-sequence lab assays, robust weighting of suspicious readings and model-health monitoring.

State (n = 7), SI units:
    x = (c_A, c_B, c_C [mol/m3], T [K], UA_factor, k1_factor, k2_factor [1])
The three factors are random-walk biases: UA_factor scales the heat-transfer coefficient (the
plant's jacket fouls), k1_factor and k2_factor scale the two reaction rates on top of the learned
correction (raw-material activity, catalyst, what the correction missed).

Measurements: the reactor temperature at every scan (the jacket temperature is the input) and lab
assays of c_B and c_C that arrive 30-45 min after their sample was drawn. docs/softsensor.md gives
the reasoning; in short:

- Filter steps every ``filter_interval_s`` (10 s by default), not every scan. Between steps the
  scans are reduced to a weighted straight-line fit of the readings (its value at the step time and
  that value's variance) and a time-average of the jacket temperature. At a 0.1 s PLC scan this
  keeps the cost per scan at a few microseconds and stops the filter from treating 600 correlated
  readings per minute as independent; at the 60 s rows of the plant data every row is a step.
- Mean: DP5(4) integration of twin_core.model.derivatives with the learned rate factors held over
  the step (as in twin_core.hybrid). Covariance: analytic Jacobian of the right-hand side at the
  step's midpoint, transition matrix by a truncated Taylor series of expm(A dt), process noise in
  the directions of the two reaction extents (so c_A + c_B + c_C stays conserved).
- Non-negativity: after every update, an estimate that leaves the feasible box (concentrations
  >= 0, factors within [factor_min, factor_max]) is projected onto it in the metric of P^-1
  (active set: clamped components are fixed by an equality-constrained projection).
- Out-of-sequence lab assays: each filter step is kept as a record (its inputs, the fitted
  temperature, the posterior) for ``history_window_s``; a late assay is inserted in the record of
  its sample time and every record from there on is re-processed. The result equals what the
  filter would have produced had the assay been known at its sample time.
- Suspicious values are down-weighted (Huber: the measurement variance is inflated beyond a
  threshold of normalised innovation); impossible ones are refused with MeasurementError and leave
  the estimator untouched.
"""

from __future__ import annotations

import bisect
import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np

from twin_core.analysis import Economics
from twin_core.errors import MeasurementError, ParameterError, ParameterTypeError
from twin_core.forecast import Forecast, forecast_from
from twin_core.health import Cusum, NisWindow, StuckDetector, chi2_quantile
from twin_core.hybrid import CorrectionModel
from twin_core.integrator import Tolerance, integrate
from twin_core.model import Coefficients, RateMultipliers, coefficients, derivatives
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.signals import C_HI, T_HI_K, T_LO_K
from twin_core.validate import number as _num

log = logging.getLogger(__name__)

N_STATES = 7
IA, IB, IC, IT, IUA, IK1, IK2 = range(N_STATES)
STATE_NAMES = ("c_A", "c_B", "c_C", "T", "UA_factor", "k1_factor", "k2_factor")
STATE_UNITS = ("mol/m3", "mol/m3", "mol/m3", "K", "1", "1", "1")
Z95 = 1.959963984540054
"""Two-sided 95 % quantile of the standard normal distribution."""

STATE_VERSION = 1

# Non-zero entries of the Jacobian of the augmented right-hand side, in the order _substep fills them.
_PATTERN = ((0, 0), (0, 3), (0, 5), (1, 0), (1, 1), (1, 3), (1, 5), (1, 6), (2, 1), (2, 3), (2, 6),
            (3, 0), (3, 1), (3, 3), (3, 4), (3, 5), (3, 6))
_PATTERN_FLAT = np.array([i * N_STATES + j for i, j in _PATTERN])
# Non-zero entries of the process noise over a step, in the order _substep writes them.
_Q_FLAT = np.array([i * N_STATES + j for i, j in (
    (0, 0), (0, 1), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 0), (3, 1), (3, 2),
    (3, 3), (4, 4), (5, 5), (6, 6))])


class SoftSensorAlarm(enum.IntFlag):
    """Alarm bits of the soft sensor (published as an integer)."""

    MODEL_MISMATCH = 1 << 0   # innovation test failing persistently, or two lab assays in a row far off
    T_SENSOR_STUCK = 1 << 1   # reactor temperature reading frozen
    T_SENSOR_DRIFT = 1 << 2   # CUSUM of the temperature innovations crossed its threshold (latched)


_MISMATCH = int(SoftSensorAlarm.MODEL_MISMATCH)
_STUCK = int(SoftSensorAlarm.T_SENSOR_STUCK)
_DRIFT = int(SoftSensorAlarm.T_SENSOR_DRIFT)
SENSOR_FAULTS = _STUCK | _DRIFT
# Flags are kept as plain ints on the hot path (IntFlag operators cost microseconds); the enum
# values for every combination are built once.
_ALARM_FLAGS = tuple(SoftSensorAlarm(i) for i in range(8))


@dataclass(frozen=True)
class SoftSensorConfig:
    """Tuning of the soft sensor. Defaults suit the plant of plant_sim (docs/plant.md, docs/softsensor.md)."""

    # -- filter timing
    filter_interval_s: float = 10.0          # time between filter steps (scans in between are pooled)
    max_step_s: float = 60.0                 # longest propagation sub-step (the Jacobian is re-evaluated)
    history_window_s: float = 5400.0         # how far back a late lab assay can still be re-processed
    rtol: float = 1e-6                       # integrator tolerance of the mean (noise is far larger)
    # -- temperature measurement
    T_noise_std_K: float = 0.05              # white noise of one reading
    T_floor_std_K: float = 0.02              # floor on a fitted step value: lag model, quantisation, correlation
    T_sensor_lag_s: float = 10.0             # first-order lag of the transmitter (0: none)
    T_sensor_min_K: float = T_LO_K           # sensor range: readings outside are refused
    T_sensor_max_K: float = T_HI_K
    # -- lab assays (std of one assay = abs + rel * value)
    lab_abs_std_mol_per_m3: float = 0.5
    lab_rel_std: float = 0.015
    lab_max_mol_per_m3: float = C_HI         # assay range: above is refused
    # -- process noise
    rate_rel_std: float = 0.03               # relative std of the unmodelled, fast part of r1 and r2 ...
    rate_noise_time_s: float = 300.0         # ... and its correlation time
    T_process_std_K_per_sqrt_s: float = 0.001  # energy-balance model error (random walk on T)
    UA_factor_walk_per_sqrt_s: float = 2e-4  # random walk of the UA factor
    k_factor_walk_per_sqrt_s: float = 5e-4   # random walk of k1_factor and k2_factor
    out_of_domain_noise_factor: float = 6.0  # rate noise and k-factor walk x this while the correction is faded out
    # -- initial uncertainty (start of the batch)
    c_A0_rel_std: float = 0.005              # the charge is weighed (plant records it to ~0.3 %)
    c_BC0_std_mol_per_m3: float = 1.0
    T0_std_K: float = 2.0
    UA_factor0_std: float = 0.2
    k1_factor0_std: float = 0.1
    k2_factor0_std: float = 0.15
    factor_min: float = 0.1                  # feasible box of the three factors
    factor_max: float = 10.0
    # -- robustness
    huber_threshold: float = 3.0             # normalised innovation beyond which R is inflated
    scan_jump_K: float = 1.0                 # a reading jumping more than this (+ the rate below) ...
    T_rate_max_K_per_s: float = 0.1          # ... from the previous one is a spike: down-weighted
    lab_gate_nis: float = 13.8               # lab NIS beyond which the assay's R is inflated (chi2_2 99.9 %)
    # -- model health
    nis_window_s: float = 1800.0
    nis_alpha: float = 0.001                 # window test: upper chi-square quantile 1 - alpha
    nis_clip: float = 25.0                   # one NIS counts at most this much in the window (spikes)
    mismatch_persist_s: float = 1800.0       # window failing this long -> MODEL_MISMATCH
    cusum_slack: float = 2.0                 # CUSUM of normalised T innovations: shifts beyond ~2 sigma ...
    cusum_threshold: float = 10.0            # ... accumulated to this -> T_SENSOR_DRIFT
    cusum_clip: float = 5.0                  # one innovation adds at most clip - slack (spikes)
    stuck_time_s: float = 60.0
    stuck_min_readings: int = 6
    stuck_tolerance_K: float = 0.0
    # -- forecast
    forecast_interval_s: float = 60.0        # automatic forecast refresh (0: only on request)
    forecast_dt_s: float = 60.0              # forecast output and propagation step
    jacket_settle_s: float = 600.0           # time constant over which T_j rejoins the recipe in a forecast

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "stuck_min_readings":
                if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                    raise ParameterError("softsensor.stuck_min_readings", v, "must be an integer >= 2")
                continue
            _num(f"softsensor.{f.name}", v)
        positive = ("filter_interval_s", "max_step_s", "history_window_s", "T_noise_std_K", "T_floor_std_K",
                    "lab_rel_std", "rate_noise_time_s", "c_A0_rel_std", "c_BC0_std_mol_per_m3", "T0_std_K",
                    "UA_factor0_std", "k1_factor0_std", "k2_factor0_std", "factor_min", "huber_threshold",
                    "lab_gate_nis", "nis_window_s", "nis_clip", "mismatch_persist_s", "cusum_threshold",
                    "stuck_time_s", "forecast_dt_s", "cusum_clip", "scan_jump_K", "T_rate_max_K_per_s", "jacket_settle_s", "lab_max_mol_per_m3")
        for name in positive:
            if not getattr(self, name) > 0.0:
                raise ParameterError(f"softsensor.{name}", getattr(self, name), "must be > 0")
        if self.out_of_domain_noise_factor < 1.0:
            raise ParameterError("softsensor.out_of_domain_noise_factor", self.out_of_domain_noise_factor, "must be >= 1")
        for name in ("T_sensor_lag_s", "lab_abs_std_mol_per_m3", "rate_rel_std", "T_process_std_K_per_sqrt_s",
                     "UA_factor_walk_per_sqrt_s", "k_factor_walk_per_sqrt_s", "cusum_slack",
                     "stuck_tolerance_K", "forecast_interval_s"):
            if getattr(self, name) < 0.0:
                raise ParameterError(f"softsensor.{name}", getattr(self, name), "must be >= 0")
        if not 1e-12 <= self.rtol < 1e-2:
            raise ParameterError("softsensor.rtol", self.rtol, "must be within [1e-12, 1e-2)")
        if not 0.0 < self.nis_alpha < 0.5:
            raise ParameterError("softsensor.nis_alpha", self.nis_alpha, "must be within (0, 0.5)")
        if not self.factor_max > self.factor_min:
            raise ParameterError("softsensor.factor_max", self.factor_max, "must be > factor_min")
        if not self.T_sensor_max_K > self.T_sensor_min_K:
            raise ParameterError("softsensor.T_sensor_max_K", self.T_sensor_max_K, "must be > T_sensor_min_K")
        if self.max_step_s < self.filter_interval_s:
            raise ParameterError("softsensor.max_step_s", self.max_step_s, "must be >= filter_interval_s")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: dict, source: str = "<mapping>") -> SoftSensorConfig:
        """Build from a mapping (e.g. a TOML table); unknown keys raise ParameterError."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ParameterError(f"softsensor.{key}", data[key], f"unknown key in {source}")
        return cls(**data)


class Estimate(NamedTuple):
    """The soft sensor's output at one scan (SI units; see STATE_NAMES for the order of x and std).

    ``health``: 0 good, 1 warning (innovation test failing, a lab assay far off, or the learned
    correction outside its domain), 2 alarm (any bit of ``alarms``). A NamedTuple: one is built
    every scan, and it is immutable and cheap.
    """

    t_s: float
    x: tuple[float, ...]
    std: tuple[float, ...]
    T_innovation_K: float        # last temperature innovation (filter step), measured - predicted
    nis: float                   # its normalised square
    nis_window_mean: float       # mean NIS over the health window (1 when consistent)
    health: int
    alarms: SoftSensorAlarm
    in_domain: bool              # the learned correction was inside its training domain
    T_used: bool                 # False while a sensor fault keeps the temperature out of the filter
    forecast: Forecast | None = None

    @property
    def c_A(self) -> float:
        return self.x[IA]

    @property
    def c_B(self) -> float:
        return self.x[IB]

    @property
    def c_C(self) -> float:
        return self.x[IC]

    @property
    def T_K(self) -> float:
        return self.x[IT]

    @property
    def UA_factor(self) -> float:
        return self.x[IUA]

    @property
    def k1_factor(self) -> float:
        return self.x[IK1]

    @property
    def k2_factor(self) -> float:
        return self.x[IK2]

    def interval95(self, i: int) -> tuple[float, float]:
        """95 % interval of state i (concentrations and factors clipped at 0)."""
        lo, hi = self.x[i] - Z95 * self.std[i], self.x[i] + Z95 * self.std[i]
        return (max(0.0, lo) if i != IT else lo), hi

    def as_dict(self) -> dict[str, float]:
        """Flat mapping name -> value, with ``<name>_std`` (what a host publishes)."""
        out: dict[str, float] = {"t_s": self.t_s}
        for name, v, s in zip(STATE_NAMES, self.x, self.std, strict=True):
            out[name] = v
            out[f"{name}_std"] = s
        out.update(T_innovation_K=self.T_innovation_K, nis=self.nis, nis_window_mean=self.nis_window_mean,
                   health=float(self.health), alarms=float(int(self.alarms)), in_domain=float(self.in_domain),
                   T_used=float(self.T_used))
        return out


@dataclass(frozen=True, slots=True)
class LabResult:
    """An accepted lab assay: concentrations [mol/m3] of the sample drawn at sample_time_s [s]."""

    sample_time_s: float
    c_B_mol_per_m3: float
    c_C_mol_per_m3: float
    arrival_time_s: float


class _Record:
    """One filter step: what went in (kept to re-process it) and the posterior that came out."""

    __slots__ = ("t_prev", "t", "u", "z", "R", "use_T", "labs", "x", "P", "h", "in_domain")

    def __init__(self, t_prev: float, t: float, u: float, z: float, R: float, use_T: bool) -> None:
        self.t_prev, self.t, self.u, self.z, self.R, self.use_T = t_prev, t, u, z, R, use_T
        self.labs: list[LabResult] = []
        self.x: np.ndarray = np.empty(0)
        self.P: np.ndarray = np.empty(0)
        self.h = 0.0
        self.in_domain = True

    def to_plain(self) -> list:
        return [self.t_prev, self.t, self.u, self.z, self.R, self.use_T,
                [[lab.sample_time_s, lab.c_B_mol_per_m3, lab.c_C_mol_per_m3, lab.arrival_time_s] for lab in self.labs],
                self.x.tolist(), self.P.ravel().tolist(), self.h, self.in_domain]

    @classmethod
    def from_plain(cls, s: list) -> _Record:
        r = cls(float(s[0]), float(s[1]), float(s[2]), float(s[3]), float(s[4]), bool(s[5]))
        r.labs = [LabResult(*(float(v) for v in lab)) for lab in s[6]]
        r.x = np.array(s[7], dtype=float)
        r.P = np.array(s[8], dtype=float).reshape(N_STATES, N_STATES)
        r.h = float(s[9])
        r.in_domain = bool(s[10])
        return r


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
        cfg = self.config
        self._coef: Coefficients = coefficients(self.params)
        self._tol = Tolerance(rtol=cfg.rtol, atol=(1e-5, 1e-5, 1e-5, 1e-6))
        self._held = RateMultipliers()
        self._M = np.zeros((N_STATES, N_STATES))
        self._Mv = self._M.reshape(-1)   # flat views: one fancy-index write fills the pattern
        self._Qd = np.zeros((N_STATES, N_STATES))
        self._Qv = self._Qd.reshape(-1)
        self._eye = np.eye(N_STATES)
        self._dT_row: tuple[float, ...] = (0.0,) * N_STATES
        self._lo = np.array([0.0, 0.0, 0.0, -math.inf, cfg.factor_min, cfg.factor_min, cfg.factor_min])
        self._hi = np.array([math.inf, math.inf, math.inf, math.inf, cfg.factor_max, cfg.factor_max, cfg.factor_max])
        self._qT = cfg.T_process_std_K_per_sqrt_s ** 2
        self._qUA = cfg.UA_factor_walk_per_sqrt_s ** 2
        self._qk = cfg.k_factor_walk_per_sqrt_s ** 2
        self._rate_q = cfg.rate_rel_std ** 2 * cfg.rate_noise_time_s
        self._ood = cfg.out_of_domain_noise_factor ** 2
        self._lab_gate = cfg.lab_gate_nis
        self._last_phi = self._eye
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, t0_s: float = 0.0, x0: Sequence[float] | None = None,
              factors0: Sequence[float] = (1.0, 1.0, 1.0), T_measured_K: float | None = None) -> Estimate:
        """Start (or restart) the estimator at time t0_s [s] of the batch.

        x0 = (c_A, c_B, c_C [mol/m3], T [K]) is the prior guess (default: the charge of the
        parameters); factors0 the prior (UA, k1, k2) factors; a measured T_measured_K [K] replaces
        the guessed temperature (with the sensor's noise as its uncertainty).
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
        T_std = cfg.T0_std_K
        if T_measured_K is not None:
            x4[3] = self._check_T("T_measured", T_measured_K)
            T_std = math.hypot(cfg.T_noise_std_K, cfg.T_floor_std_K)
        self._x = np.array([*map(float, x4), *map(float, factors0)])
        c_total = x4[0] + x4[1] + x4[2]
        self._P = np.diag(np.array([cfg.c_A0_rel_std * max(c_total, 1.0), cfg.c_BC0_std_mol_per_m3,
                                    cfg.c_BC0_std_mol_per_m3, T_std, cfg.UA_factor0_std,
                                    cfg.k1_factor0_std, cfg.k2_factor0_std]) ** 2)
        self._h = 0.0
        # Rate factors used by the extrapolation until the first step (then those of each step).
        self._held.f1, self._held.f2 = float(factors0[1]), float(factors0[2])
        self._t0 = t0
        self._t_filter = t0          # time of the last filter step (the posterior's time)
        self._t_scan = t0            # time of the last scan accepted
        self._n_scans = 0
        self._u = math.nan           # jacket input held over the last step [K]
        self._in_domain = True
        self._base_t, self._base_x, self._base_P, self._base_h, self._base_in = t0, self._x.copy(), self._P.copy(), 0.0, True
        self._records: list[_Record] = []
        self._pending: list[LabResult] = []
        self._lab_times: list[float] = []
        self._reset_accumulators()
        self._y_prev = math.nan      # last reactor-temperature reading and its time (spike test)
        self._y_prev_t = t0
        self._Tj_last = math.nan     # last jacket reading and its time (left end of the next trapezoid)
        self._Tj_last_t = t0
        self._innov = 0.0
        self._nis = 0.0
        self._nis_win = NisWindow(cfg.nis_window_s, cfg.nis_alpha)
        self._cusum = Cusum(cfg.cusum_slack, cfg.cusum_threshold, cfg.cusum_clip)
        self._stuck = StuckDetector(cfg.stuck_time_s, cfg.stuck_min_readings, cfg.stuck_tolerance_K)
        self._alarms = 0
        self._warn_since = math.nan  # since when the window test fails
        self._lab_fail_run = 0       # consecutive lab assays far off
        self._lab_warning = False
        self._plan: Recipe | None = None
        self._plan_end = math.nan
        self._forecast: Forecast | None = None
        self._t_forecast = -math.inf
        self._started = True
        self._refresh_output()
        return self._estimate(t0)

    def _reset_accumulators(self) -> None:
        # Weighted straight-line fit of the readings of the open interval, times relative to its start.
        self._sw = self._swt = self._swtt = self._swy = self._swty = 0.0
        self._y_ref = math.nan
        self._n_acc = 0
        self._Tj_int = 0.0           # integral of T_j over the open interval [K s]

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
        uj = float(T_jacket_K)

        # Sensor-fault detection on the raw readings.
        if self._stuck.add(t, y):
            self._alarms |= _STUCK
        else:
            self._alarms &= ~_STUCK

        # Jacket: trapezoidal integral over the open interval (held before the first reading).
        if self._Tj_last != self._Tj_last:
            self._Tj_int += uj * (t - self._Tj_last_t)
        else:
            self._Tj_int += 0.5 * (uj + self._Tj_last) * (t - self._Tj_last_t)
        self._Tj_last, self._Tj_last_t = uj, t

        # Reactor temperature: a reading that jumps from the previous one by more than the process
        # can move is a spike: Huber-weighted against that jump. The weight depends on the readings
        # only (not on the estimate), so a re-processed step sees exactly the same data.
        w = 1.0
        if self._y_prev == self._y_prev:
            jump = abs(y - self._y_prev)
            limit = cfg.scan_jump_K + cfg.T_rate_max_K_per_s * (t - self._y_prev_t)
            if jump > limit:
                w = limit / jump
        self._y_prev, self._y_prev_t = y, t
        if self._n_acc == 0:
            self._y_ref = y
        tau = t - self._t_filter
        yr = y - self._y_ref
        self._sw += w
        self._swt += w * tau
        self._swtt += w * tau * tau
        self._swy += w * yr
        self._swty += w * tau * yr
        self._n_acc += 1
        self._n_scans += 1
        self._t_scan = t

        if t >= self._next_boundary and t > self._t_filter:
            self._filter_step(t)
            if cfg.forecast_interval_s > 0.0 and self._plan_end == self._plan_end \
                    and t - self._t_forecast >= cfg.forecast_interval_s:
                self._forecast = self.forecast(self._plan, self._plan_end)
                self._t_forecast = t
        return self._estimate(t)

    def _fit(self) -> tuple[float, float]:
        """Value of the fitted line at the step time and its variance [K, K^2]."""
        cfg = self.config
        var = cfg.T_noise_std_K ** 2
        sw = self._sw
        tau_k = self._t_scan - self._t_filter
        if self._n_acc >= 2:
            tbar = self._swt / sw
            stt = self._swtt - sw * tbar * tbar
            if stt > 1e-12 * max(1.0, tau_k * tau_k) * sw:
                ybar = self._swy / sw
                slope = (self._swty - sw * tbar * ybar) / stt
                d = tau_k - tbar
                return self._y_ref + ybar + slope * d, var * (1.0 / sw + d * d / stt) + cfg.T_floor_std_K ** 2
            return self._y_ref + self._swy / sw, var / sw + cfg.T_floor_std_K ** 2
        return self._y_ref + self._swy / sw, var / sw + cfg.T_floor_std_K ** 2

    def _filter_step(self, t: float) -> None:
        z, R = self._fit()
        span = t - self._t_filter
        u = self._Tj_int / span
        use_T = not (self._alarms & SENSOR_FAULTS)
        rec = _Record(self._t_filter, t, u, z, R, use_T)
        fresh: tuple[LabResult, ...] = ()
        if self._pending:
            rec.labs = sorted(self._pending, key=lambda lab: lab.sample_time_s)
            self._pending = []
            fresh = tuple(rec.labs)
        x, P, h, info = self._run_record(rec, self._x, self._P, self._h, fresh)
        self._records.append(rec)
        self._x, self._P, self._h = x, P, h
        self._t_filter = t
        self._u = u
        self._in_domain = rec.in_domain
        self._reset_accumulators()
        self._prune(t)
        innov, S = info
        self._innov = innov
        if S > 0.0:
            self._health_T(t, innov, S, use_T)
        self._refresh_output()

    def _health_T(self, t: float, innov: float, S: float, use_T: bool) -> None:
        cfg = self.config
        zn = innov / math.sqrt(S)
        self._nis = zn * zn
        if not use_T:
            return
        if self._nis_win.add(t, min(self._nis, cfg.nis_clip)):
            if self._warn_since != self._warn_since:
                self._warn_since = t
            if t - self._warn_since >= cfg.mismatch_persist_s:
                self._alarms |= _MISMATCH
        else:
            self._warn_since = math.nan
            if self._lab_fail_run < 2:
                self._alarms &= ~_MISMATCH
        if self._cusum.add(zn):
            if not self._alarms & _DRIFT:
                log.warning("soft sensor: temperature innovations drift (CUSUM) at t=%.0f s", t)
            self._alarms |= _DRIFT

    def _refresh_output(self) -> None:
        """Cache what every scan's estimate needs: derivative for extrapolation, std, scan sd."""
        x = self._xl = self._x.tolist()
        u = self._u if self._u == self._u else x[IT]
        c = self._coef
        d = 1.0 / x[IT] - c.inv_T_ref
        f1, f2 = self._held.f1, self._held.f2  # factors of the last step (include k-factors)
        r1 = f1 * c.k1_ref * math.exp(-c.E1_over_R * d) * x[IA]
        r2 = f2 * c.k2_ref * math.exp(-c.E2_over_R * d) * x[IB]
        self._dx = (-r1, r1 - r2, r2, c.q1 * r1 + c.q2 * r2 + c.ua * x[IUA] * (u - x[IT]))
        self._std = tuple(np.sqrt(np.maximum(np.diagonal(self._P), 0.0)).tolist())
        self._nis_mean = self._nis_win.mean
        cfg = self.config
        k = math.floor((self._t_filter - self._t0) / cfg.filter_interval_s * (1.0 + 1e-12)) + 1
        self._next_boundary = self._t0 + k * cfg.filter_interval_s

    def _estimate(self, t: float) -> Estimate:
        a, b, c, d, fUA, fk1, fk2 = self._xl
        dx = self._dx
        dt = t - self._t_filter
        x0, x1, x2 = a + dx[0] * dt, b + dx[1] * dt, c + dx[2] * dt
        xs = (x0 if x0 > 0.0 else 0.0, x1 if x1 > 0.0 else 0.0, x2 if x2 > 0.0 else 0.0, d + dx[3] * dt,
              fUA, fk1, fk2)
        alarms = self._alarms
        if alarms:
            health = 2
        elif self._nis_win.failing or self._lab_warning or not self._in_domain:
            health = 1
        else:
            health = 0
        return Estimate(t, xs, self._std, self._innov, self._nis, self._nis_mean, health,
                        _ALARM_FLAGS[alarms], self._in_domain, not (alarms & SENSOR_FAULTS), self._forecast)

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
        return _ALARM_FLAGS[self._alarms]

    def reset_alarms(self) -> None:
        """Clear latched alarms (operator acknowledgement after the cause was fixed)."""
        self._require_started()
        self._alarms = 0
        self._cusum.reset()
        self._warn_since = math.nan
        self._lab_fail_run = 0
        self._lab_warning = False

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
        i = bisect.bisect_left(self._lab_times, ts)
        for j in (i - 1, i):
            if 0 <= j < len(self._lab_times) and abs(self._lab_times[j] - ts) <= 1e-6:
                raise MeasurementError("lab_sample_time", ts, "duplicate: a result for this sample was already used")
        if ts < self._base_t:
            raise MeasurementError("lab_sample_time", ts,
                                   f"older than the history window ({cfg.history_window_s} s): cannot be re-processed")
        arr = self._t_scan if arrival_time_s is None else arrival_time_s
        if isinstance(arr, bool) or not isinstance(arr, (int, float)) or not math.isfinite(arr):
            raise MeasurementError("lab_arrival_time", arrival_time_s, "not a finite time")
        if arr < ts:
            raise MeasurementError("lab_arrival_time", arr, f"before the sample was drawn at {ts} s")
        lab = LabResult(ts, vals[0], vals[1], float(arr))
        self._lab_times.insert(i, ts)
        if ts > self._t_filter or not self._records:
            self._pending.append(lab)
            return self._estimate(self._t_scan)
        k = self._record_index(ts)
        self._records[k].labs.append(lab)
        self._records[k].labs.sort(key=lambda r: r.sample_time_s)
        self._reprocess(k, (lab,))
        return self._estimate(self._t_scan)

    def _lab_health(self, nis: float) -> None:
        if nis > self._lab_gate:
            self._lab_fail_run += 1
            self._lab_warning = True
            if self._lab_fail_run >= 2:
                self._alarms |= _MISMATCH
        else:
            self._lab_fail_run = 0
            self._lab_warning = False

    def _record_index(self, ts: float) -> int:
        """Index of the record whose interval (t_prev, t] holds ts (the first one also takes its t_prev)."""
        lo, hi = 0, len(self._records)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._records[mid].t < ts:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _reprocess(self, k: int, fresh: tuple[LabResult, ...] = ()) -> None:
        """Re-run records k.. from the posterior before record k (``fresh`` labs feed the health)."""
        if k == 0:
            x, P, h = self._base_x, self._base_P, self._base_h
        else:
            r = self._records[k - 1]
            x, P, h = r.x, r.P, r.h
        for rec in self._records[k:]:
            x, P, h, _ = self._run_record(rec, x, P, h, fresh)
        self._x, self._P, self._h = x, P, h
        if self._records:
            self._in_domain = self._records[-1].in_domain
        self._refresh_output()

    def _prune(self, t: float) -> None:
        cut = t - self.config.history_window_s
        n = 0
        while n < len(self._records) - 1 and self._records[n].t <= cut:
            n += 1
        if n:
            r = self._records[n - 1]
            self._base_t, self._base_x, self._base_P, self._base_h, self._base_in = r.t, r.x, r.P, r.h, r.in_domain
            del self._records[:n]

    # -- one filter step ----------------------------------------------------------------------------
    def _run_record(self, rec: _Record, x: np.ndarray, P: np.ndarray, h: float,
                    fresh: tuple[LabResult, ...] = ()) -> tuple[np.ndarray, np.ndarray, float, tuple[float, float]]:
        """One filter step: labs at their sample times, propagation to rec.t, then the T update.

        ``fresh`` are the labs processed for the first time: their NIS feeds the model health.
        """
        t = rec.t_prev
        ok = True
        for lab in rec.labs:
            if lab.sample_time_s > t:
                x, P, h, ok = self._propagate(t, lab.sample_time_s, x, P, h, rec.u)
                t = lab.sample_time_s
            x, P, nis = self._lab_update(x, P, lab)
            if any(lab is f for f in fresh):
                self._lab_health(nis)
        if rec.t > t:
            x, P, h, ok = self._propagate(t, rec.t, x, P, h, rec.u)
        info = (0.0, 0.0)
        if rec.use_T:
            x, P, info = self._T_update(x, P, rec.z, rec.R, rec.u)
        else:
            info = (rec.z - self._predicted_reading(x, rec.u), 0.0)
        rec.x, rec.P, rec.h, rec.in_domain = x, P, h, ok
        return x, P, h, info

    def _propagate(self, ta: float, tb: float, x: np.ndarray, P: np.ndarray, h: float,
                   u: float) -> tuple[np.ndarray, np.ndarray, float, bool]:
        """Mean and covariance from ta to tb [s] with jacket temperature u [K] held."""
        span = tb - ta
        if span <= self.config.max_step_s:
            return self._substep(ta, tb, x, P, h, u)
        n = math.ceil(span / self.config.max_step_s - 1e-9)
        ok_all = True
        phi = self._eye
        for i in range(n):
            a = ta + span * i / n
            b = tb if i == n - 1 else ta + span * (i + 1) / n
            x, P, h, ok = self._substep(a, b, x, P, h, u)
            ok_all = ok_all and ok
            if n > 1:
                phi = self._last_phi @ phi
        if n > 1:
            self._last_phi = phi
        return x, P, h, ok_all

    def _substep(self, ta: float, tb: float, x: np.ndarray, P: np.ndarray, h: float,
                 u: float) -> tuple[np.ndarray, np.ndarray, float, bool]:
        cA, cB, cC, T, fUA, fk1, fk2 = x.tolist()
        if self.correction is not None:
            f1, f2, ok = self.correction.factors(ta, (cA, cB, cC, T), u)
        else:
            f1, f2, ok = 1.0, 1.0, True
        g1, g2 = fk1 * f1, fk2 * f2
        held = self._held
        held.f1, held.f2 = g1, g2
        c0 = self._coef
        # The hybrid rates with every factor held over the step (as twin_core.hybrid does), folded
        # into the rate constants and UA: one call of the model's rhs per stage.
        c = Coefficients(c0.k1_ref * g1, c0.k2_ref * g2, c0.inv_T_ref, c0.E1_over_R, c0.E2_over_R,
                         c0.q1, c0.q2, c0.ua * fUA)

        def f(tt: float, xx: Sequence[float]) -> tuple[float, float, float, float]:
            return derivatives(tt, xx, u, c)

        dt = tb - ta
        (a0, a1, a2, a3), h = integrate(f, ta, (cA, cB, cC, T), tb, self._tol, h0=h if h > 0.0 else dt)
        # Linearisation at the midpoint of the step: second-order accurate for the covariance.
        mA, mB, mT = 0.5 * (cA + a0), 0.5 * (cB + a1), 0.5 * (T + a3)
        d = 1.0 / mT - c.inv_T_ref
        k1 = c0.k1_ref * math.exp(-c.E1_over_R * d)
        k2 = c0.k2_ref * math.exp(-c.E2_over_R * d)
        d1A = g1 * k1                       # dr1/dc_A [1/s]
        d2B = g2 * k2                       # dr2/dc_B
        r1 = d1A * mA
        r2 = d2B * mB
        d1T = r1 * c.E1_over_R / (mT * mT)  # dr1/dT [mol/(m3 s K)]
        d2T = r2 * c.E2_over_R / (mT * mT)
        d1k = f1 * k1 * mA                  # dr1/dk1_factor [mol/(m3 s)]
        d2k = f2 * k2 * mB
        q1, q2 = c.q1, c.q2
        # Row of d(dT/dt)/dx: kept for the lagging transmitter's measurement row.
        self._dT_row = (q1 * d1A, q2 * d2B, 0.0, q1 * d1T + q2 * d2T - c.ua, c0.ua * (u - mT), q1 * d1k, q2 * d2k)
        row = self._dT_row
        vals = (-d1A, -d1T, -d1k, d1A, -d2B, d1T - d2T, d1k, -d2k, d2B, d2T, d2k,
                row[0], row[1], row[3], row[4], row[5], row[6])
        rho = dt * max(d1A, d2B, abs(row[3]))
        eye = self._eye
        if rho > 0.25:
            Phi = self._transition_general(dt, vals)
        else:
            # expm(A dt) ~ I + M (I + M/2), M = A dt, written into its fixed pattern in one call.
            self._Mv[_PATTERN_FLAT] = [v * dt for v in vals]
            M = self._M
            Mh = M * 0.5
            Mh += eye
            Phi = M @ Mh
            Phi += eye
        self._last_phi = Phi
        # Process noise over the step: white rate noise along the two reaction extents (keeps
        # c_A + c_B + c_C conserved) and random walks of T and the factors.
        rq = self._rate_q * dt
        qk = self._qk * dt
        if not ok:
            # The learned correction has faded out: the rates are less certain, and so is how
            # the k-factors must move to make up for it.
            rq *= self._ood
            qk *= self._ood
        qa = rq * r1 * r1 + 1e-12 * dt
        qb = rq * r2 * r2 + 1e-12 * dt
        qa1, qb2 = -qa * q1, qb * q2
        qab = qa * q1 - qb * q2
        self._Qv[_Q_FLAT] = (qa, -qa, qa1, -qa, qa + qb, -qb, qab, -qb, qb, qb2, qa1, qab, qb2,
                             qa * q1 * q1 + qb * q2 * q2 + self._qT * dt, self._qUA * dt, qk, qk)
        P = Phi @ P @ Phi.T
        P += self._Qd
        xn = np.array((a0 if a0 > 0.0 else 0.0, a1 if a1 > 0.0 else 0.0, a2 if a2 > 0.0 else 0.0, a3,
                       fUA, fk1, fk2))
        return xn, P, h, ok

    def _transition_general(self, dt: float, vals: tuple[float, ...]) -> np.ndarray:
        """expm(A dt) by a third-order Taylor series with scaling and squaring (long or fast steps)."""
        A = np.zeros(N_STATES * N_STATES)
        A[_PATTERN_FLAT] = vals
        A = A.reshape(N_STATES, N_STATES)
        rho = dt * max(vals[3], vals[8], abs(vals[13]))
        s = max(0, math.ceil(math.log2(rho / 0.25)))
        M = A * (dt * 0.5 ** s)
        M2 = M @ M
        Phi = self._eye + M + M2 * 0.5 + (M2 @ M) * (1.0 / 6.0)
        for _ in range(s):
            Phi = Phi @ Phi
        return Phi

    def _predicted_reading(self, x: np.ndarray, u: float) -> float:
        """What the (lagging) transmitter should read: T - tau * dT/dt [K]."""
        lag = self.config.T_sensor_lag_s
        cA, cB, _, T, fUA, _, _ = x.tolist()
        if lag == 0.0:
            return T
        c = self._coef
        d = 1.0 / T - c.inv_T_ref
        r1 = self._held.f1 * c.k1_ref * math.exp(-c.E1_over_R * d) * cA
        r2 = self._held.f2 * c.k2_ref * math.exp(-c.E2_over_R * d) * cB
        return T - lag * (c.q1 * r1 + c.q2 * r2 + c.ua * fUA * (u - T))

    def _T_update(self, x: np.ndarray, P: np.ndarray, z: float, R: float,
                  u: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Scalar update with the fitted reading z [K] of variance R [K^2]; returns (innovation, S)."""
        cfg = self.config
        lag = cfg.T_sensor_lag_s
        if lag == 0.0:
            PH = P[:, IT]
            HPH = float(P[IT, IT])
        else:
            # Reading = T - lag dT/dt: its row is e_T - lag * d(dT/dt)/dx (from the last sub-step).
            r = self._dT_row
            H = np.array((-lag * r[0], -lag * r[1], 0.0, 1.0 - lag * r[3], -lag * r[4], -lag * r[5], -lag * r[6]))
            PH = P @ H
            HPH = float(H @ PH)
        innov = z - self._predicted_reading(x, u)
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
        x = self._project(x, P)
        return x, P, (innov, S)

    def _lab_update(self, x: np.ndarray, P: np.ndarray, lab: LabResult) -> tuple[np.ndarray, np.ndarray, float]:
        cfg = self.config
        zB, zC = lab.c_B_mol_per_m3, lab.c_C_mol_per_m3
        rB = (cfg.lab_abs_std_mol_per_m3 + cfg.lab_rel_std * zB) ** 2
        rC = (cfg.lab_abs_std_mol_per_m3 + cfg.lab_rel_std * zC) ** 2
        vB, vC = zB - x[IB], zC - x[IC]
        pBB, pBC, pCC = P[IB, IB], P[IB, IC], P[IC, IC]
        sBB, sCC = pBB + rB, pCC + rC
        det = sBB * sCC - pBC * pBC
        nis = (sCC * vB * vB - 2.0 * pBC * vB * vC + sBB * vC * vC) / det
        if nis > self._lab_gate:
            # A result far off: trust it less (variance inflated so that its NIS sits on the gate).
            infl = nis / self._lab_gate
            sBB, sCC = pBB + rB * infl, pCC + rC * infl
            det = sBB * sCC - pBC * pBC
        # S^-1 = [[sCC, -pBC], [-pBC, sBB]] / det
        PH = P[:, IB:IC + 1]
        Sinv = np.array(((sCC, -pBC), (-pBC, sBB))) / det
        K = PH @ Sinv
        x = x + K @ np.array((vB, vC))
        P = P - K @ PH.T
        P = 0.5 * (P + P.T)
        x = self._project(x, P)
        return x, P, float(nis)

    def _project(self, x: np.ndarray, P: np.ndarray) -> np.ndarray:
        """Project x onto the feasible box in the metric of P^-1: the estimate the constrained
        update would give (Simon & Simon's estimate projection); P is left as it is."""
        lo, hi = self._lo, self._hi
        cA, cB, cC, _, fUA, fk1, fk2 = x.tolist()
        fmin, fmax = self.config.factor_min, self.config.factor_max
        if (cA >= 0.0 and cB >= 0.0 and cC >= 0.0 and fmin <= fUA <= fmax and fmin <= fk1 <= fmax
                and fmin <= fk2 <= fmax):
            return x
        return _box_qp(x, P, lo, hi)

    # -- past ---------------------------------------------------------------------------------------
    def history(self) -> list[tuple[float, tuple[float, ...], tuple[float, ...]]]:
        """The filtered estimates (t [s], x, std) at every filter step kept in the history window;
        after a late lab assay these are the re-processed ones."""
        self._require_started()
        out = [(self._base_t, tuple(self._base_x.tolist()),
                tuple(np.sqrt(np.maximum(np.diagonal(self._base_P), 0.0)).tolist()))]
        for r in self._records:
            out.append((r.t, tuple(r.x.tolist()), tuple(np.sqrt(np.maximum(np.diagonal(r.P), 0.0)).tolist())))
        return out

    def smoothed_history(self) -> list[tuple[float, tuple[float, ...], tuple[float, ...]]]:
        """Rauch-Tung-Striebel smoothed estimates at every filter step (and lab sample time) of the
        history window.

        The filter is re-run over the stored records (the estimator itself does not change) to
        collect the prior and the transition of each node; the backward pass then spreads every
        measurement, lab assays included, to the times before it.
        """
        self._require_started()
        saved = (self._held.f1, self._held.f2, self._dT_row)
        # Nodes: (t, prior x, prior P, transition from the previous node, posterior x, posterior P).
        nodes: list[tuple] = [(self._base_t, None, None, None, self._base_x, self._base_P)]
        x, P, h = self._base_x, self._base_P, self._base_h
        try:
            for rec in self._records:
                t = rec.t_prev
                for lab in rec.labs:
                    xp, Pp, phi = x, P, self._eye
                    if lab.sample_time_s > t:
                        xp, Pp, h, _ = self._propagate(t, lab.sample_time_s, x, P, h, rec.u)
                        phi = self._last_phi
                        t = lab.sample_time_s
                    x, P, _ = self._lab_update(xp, Pp, lab)
                    nodes.append((t, xp, Pp, phi, x, P))
                xp, Pp, phi = x, P, self._eye
                if rec.t > t:
                    xp, Pp, h, _ = self._propagate(t, rec.t, x, P, h, rec.u)
                    phi = self._last_phi
                x, P = xp, Pp
                if rec.use_T:
                    x, P, _ = self._T_update(xp, Pp, rec.z, rec.R, rec.u)
                nodes.append((rec.t, xp, Pp, phi, x, P))
        finally:
            self._held.f1, self._held.f2, self._dT_row = saved
        n = len(nodes)
        xs, Ps = nodes[-1][4], nodes[-1][5]
        out = [(nodes[-1][0], xs, Ps)]
        for k in range(n - 2, -1, -1):
            _, xp1, Pp1, phi1, _, _ = nodes[k + 1]
            _, _, _, _, xf, Pf = nodes[k]
            C = Pf @ phi1.T @ np.linalg.pinv(Pp1)
            xs = np.minimum(np.maximum(xf + C @ (xs - xp1), self._lo), self._hi)
            Ps = Pf + C @ (Ps - Pp1) @ C.T
            out.append((nodes[k][0], xs, Ps))
        out.reverse()
        return [(t, tuple(xx.tolist()), tuple(np.sqrt(np.maximum(np.diagonal(PP), 0.0)).tolist())) for t, xx, PP in out]

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
        u_now = self._u if self._u == self._u else self._Tj_last
        cfg = self.config
        t0 = self._t_filter
        if recipe is not None:
            # The measured jacket rejoins the programme (its controller closes the gap).
            offset = u_now - recipe.setpoint(t0) if u_now == u_now else 0.0

            def jacket(t: float) -> float:
                return recipe.setpoint(t) + offset * math.exp(-(t - t0) / cfg.jacket_settle_s)
        else:
            if u_now != u_now:
                raise ParameterError("recipe", None, "no jacket temperature measured yet: give a recipe")

            def jacket(t: float) -> float:
                return u_now

        saved = (self._held.f1, self._held.f2, self._dT_row)
        try:
            return forecast_from(self._substep, self.params, t0, self._x, self._P, self._h, t_end,
                                 cfg.forecast_dt_s, jacket, self.economics)
        finally:
            self._held.f1, self._held.f2, self._dT_row = saved

    # -- checkpoint ---------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Everything needed to continue exactly, as plain data (floats, ints, bools, lists, dicts)."""
        self._require_started()
        return {
            "version": STATE_VERSION,
            "config": self.config.as_dict(),
            "t0": self._t0, "t_filter": self._t_filter, "t_scan": self._t_scan, "n_scans": self._n_scans,
            "x": self._x.tolist(), "P": self._P.ravel().tolist(), "h": self._h, "u": self._u,
            "in_domain": self._in_domain, "held": [self._held.f1, self._held.f2],
            "base": [self._base_t, self._base_x.tolist(), self._base_P.ravel().tolist(), self._base_h, self._base_in],
            "records": [r.to_plain() for r in self._records],
            "pending": [[lab.sample_time_s, lab.c_B_mol_per_m3, lab.c_C_mol_per_m3, lab.arrival_time_s]
                        for lab in self._pending],
            "lab_times": list(self._lab_times),
            "acc": [self._sw, self._swt, self._swtt, self._swy, self._swty, self._y_ref, self._n_acc, self._Tj_int,
                    self._Tj_last, self._Tj_last_t, self._y_prev, self._y_prev_t],
            "innov": self._innov, "nis": self._nis,
            "nis_window": self._nis_win.get_state(), "cusum": self._cusum.get_state(),
            "stuck": self._stuck.get_state(), "alarms": self._alarms, "warn_since": self._warn_since,
            "lab_fail_run": self._lab_fail_run, "lab_warning": self._lab_warning,
            "plan": None if self._plan is None else self._plan.to_mapping(), "plan_end": self._plan_end,
            "forecast": None if self._forecast is None else self._forecast.to_dict(),
            "t_forecast": self._t_forecast,
        }

    def set_state(self, s: dict) -> None:
        """Restore a state from :meth:`get_state` (the configuration must be the same)."""
        if not isinstance(s, dict) or s.get("version") != STATE_VERSION:
            raise ParameterError("state.version", s.get("version") if isinstance(s, dict) else s,
                                 f"expected a soft-sensor state of version {STATE_VERSION}")
        if s["config"] != self.config.as_dict():
            raise ParameterError("state.config", None, "the state was saved with another soft-sensor configuration")
        from twin_core.recipe import recipe_from_mapping

        self.start(float(s["t0"]))
        self._t_filter, self._t_scan, self._n_scans = float(s["t_filter"]), float(s["t_scan"]), int(s["n_scans"])
        self._x = np.array(s["x"], dtype=float)
        self._P = np.array(s["P"], dtype=float).reshape(N_STATES, N_STATES)
        self._h, self._u, self._in_domain = float(s["h"]), float(s["u"]), bool(s["in_domain"])
        self._held.f1, self._held.f2 = float(s["held"][0]), float(s["held"][1])
        b = s["base"]
        self._base_t, self._base_x = float(b[0]), np.array(b[1], dtype=float)
        self._base_P, self._base_h, self._base_in = np.array(b[2], dtype=float).reshape(N_STATES, N_STATES), float(b[3]), bool(b[4])
        self._records = [_Record.from_plain(r) for r in s["records"]]
        self._pending = [LabResult(*(float(v) for v in lab)) for lab in s["pending"]]
        self._lab_times = [float(v) for v in s["lab_times"]]
        a = s["acc"]
        self._sw, self._swt, self._swtt, self._swy, self._swty, self._y_ref = (float(v) for v in a[:6])
        self._n_acc = int(a[6])
        self._Tj_int, self._Tj_last, self._Tj_last_t = float(a[7]), float(a[8]), float(a[9])
        self._y_prev, self._y_prev_t = float(a[10]), float(a[11])
        self._innov, self._nis = float(s["innov"]), float(s["nis"])
        self._nis_win.set_state(s["nis_window"])
        self._cusum.set_state(s["cusum"])
        self._stuck.set_state(s["stuck"])
        self._alarms = int(s["alarms"])
        self._warn_since = float(s["warn_since"])
        self._lab_fail_run, self._lab_warning = int(s["lab_fail_run"]), bool(s["lab_warning"])
        self._plan = None if s["plan"] is None else recipe_from_mapping(s["plan"])
        self._plan_end = float(s["plan_end"])
        self._forecast = None if s["forecast"] is None else Forecast.from_dict(s["forecast"])
        self._t_forecast = float(s["t_forecast"])
        self._refresh_output()


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


def chi2_bounds_mean(dof: int, n: int, p: float = 0.95) -> tuple[float, float]:
    """Two-sided p-probability bounds of the mean of n independent chi-square(dof) values."""
    a = 0.5 * (1.0 - p)
    return chi2_quantile(a, dof * n) / n, chi2_quantile(1.0 - a, dof * n) / n
