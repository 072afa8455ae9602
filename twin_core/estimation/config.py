"""Tuning of the soft sensor: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from twin_core.errors import ParameterError
from twin_core.signals import C_HI, T_HI_K, T_LO_K
from twin_core.validate import number as _num


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
