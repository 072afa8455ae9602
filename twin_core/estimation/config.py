"""Tuning of the soft sensor: one frozen dataclass whose fields declare their rules
(twin_core.validate: type, range, unit); errors name the field as ``softsensor.<field>``."""

from __future__ import annotations

from dataclasses import asdict

from twin_core.errors import ParameterError
from twin_core.estimation.health import binomial_half_sf
from twin_core.signals.table import C_HI, T_HI_K, T_LO_K
from twin_core.validate import from_mapping, spec, validated

LAB_WINDOW_MAX = 16
"""The longest lab-test window (the C estimator's BT_EST_LAB_WINDOW, fmu/native/twin_estimator.h)."""


@validated("softsensor")
class SoftSensorConfig:
    """Tuning of the soft sensor. Defaults suit the plant of plant_sim (docs/plant.md, docs/softsensor.md)."""

    # -- filter timing
    filter_interval_s: float = spec(10.0, unit="s", gt=0.0)        # time between filter steps (scans in between are pooled)
    max_step_s: float = spec(60.0, unit="s", gt=0.0)               # longest propagation sub-step (the Jacobian is re-evaluated)
    history_window_s: float = spec(5400.0, unit="s", gt=0.0)       # how far back a late lab assay can still be re-processed
    rtol: float = spec(1e-6, ge=1e-12, lt=1e-2)                    # integrator tolerance of the mean (noise is far larger)
    # -- temperature measurement
    T_noise_std_K: float = spec(0.05, unit="K", gt=0.0)            # white noise of one reading
    T_floor_std_K: float = spec(0.02, unit="K", gt=0.0)            # floor on a fitted step value: lag model, quantisation, correlation
    T_sensor_lag_s: float = spec(10.0, unit="s", ge=0.0)           # first-order lag of the transmitter (0: none)
    T_sensor_min_K: float = spec(T_LO_K, unit="K")                 # sensor range: readings outside are refused
    T_sensor_max_K: float = spec(T_HI_K, unit="K")
    # -- lab assays (std of one assay = abs + rel * value)
    lab_abs_std_mol_per_m3: float = spec(0.5, unit="mol/m3", ge=0.0)
    lab_rel_std: float = spec(0.015, gt=0.0)
    lab_max_mol_per_m3: float = spec(C_HI, unit="mol/m3", gt=0.0)  # assay range: above is refused
    # -- process noise
    rate_rel_std: float = spec(0.03, ge=0.0)                       # relative std of the unmodelled, fast part of r1 and r2 ...
    rate_noise_time_s: float = spec(300.0, unit="s", gt=0.0)       # ... and its correlation time
    correction_rel_std: float = spec(0.15, ge=0.0)                  # extra relative rate noise per unit of |lambda_i g_i| (the correction's own error)
    T_process_std_K_per_sqrt_s: float = spec(0.001, unit="K/s0.5", ge=0.0)  # energy-balance model error (random walk on T)
    UA_factor_walk_per_sqrt_s: float = spec(2e-4, unit="1/s0.5", ge=0.0)    # random walk of the UA factor
    k_factor_walk_per_sqrt_s: float = spec(5e-4, unit="1/s0.5", ge=0.0)     # random walk of k1_factor and k2_factor (hybrid) ...
    k_factor_walk_physics_per_sqrt_s: float = spec(5e-4, unit="1/s0.5", ge=0.0)  # ... and without a correction (the model is further off)
    trust_walk_per_sqrt_s: float = spec(1e-4, unit="1/s0.5", ge=0.0)        # random walk of lambda_1 and lambda_2 (nearly constant in a batch)
    out_of_domain_noise_factor: float = spec(20.0, ge=1.0)         # rate noise and k-factor walk x this while the correction is faded out
    mismatch_walk_factor: float = spec(6.0, ge=1.0)                # k-factor walk x this for the rest of a batch after CORRECTION_MISMATCH
    # -- initial uncertainty (start of the batch)
    c_A0_rel_std: float = spec(0.005, gt=0.0)                      # the charge is weighed (plant records it to ~0.3 %)
    c_BC0_std_mol_per_m3: float = spec(1.0, unit="mol/m3", gt=0.0)
    T0_std_K: float = spec(2.0, unit="K", gt=0.0)
    UA_factor0_std: float = spec(0.2, gt=0.0)
    k1_factor0_std: float = spec(0.1, gt=0.0)
    k2_factor0_std: float = spec(0.15, gt=0.0)
    trust0_std: float = spec(0.3, gt=0.0)                          # prior std of lambda_1, lambda_2 around their prior mean (1)
    trust_min: float = spec(-3.0)                                  # feasible range of the trust weights
    trust_max: float = spec(4.0)
    factor_min: float = spec(0.1, gt=0.0)                          # feasible box of the three factors
    factor_max: float = spec(10.0)
    # -- robustness
    huber_threshold: float = spec(3.0, gt=0.0)                     # normalised innovation beyond which R is inflated
    scan_jump_K: float = spec(1.0, unit="K", gt=0.0)               # a reading jumping more than this (+ the rate below) ...
    T_rate_max_K_per_s: float = spec(0.1, unit="K/s", gt=0.0)      # ... from the previous one is a spike: down-weighted
    lab_gate_nis: float = spec(13.8, gt=0.0)                       # lab NIS beyond which the assay's R is inflated (chi2_2 99.9 %)
    # -- model health
    nis_window_s: float = spec(1800.0, unit="s", gt=0.0)
    nis_alpha: float = spec(0.001, gt=0.0, lt=0.5)                 # window test: upper chi-square quantile 1 - alpha
    nis_clip: float = spec(25.0, gt=0.0)                           # one NIS counts at most this much in the window (spikes)
    mismatch_persist_s: float = spec(1800.0, unit="s", gt=0.0)     # window failing this long -> MODEL_MISMATCH
    cusum_slack: float = spec(2.0, ge=0.0)                         # CUSUM of normalised T innovations: shifts beyond ~2 sigma ...
    cusum_threshold: float = spec(10.0, gt=0.0)                    # ... accumulated to this -> T_SENSOR_DRIFT
    cusum_clip: float = spec(5.0, gt=0.0)                          # one innovation adds at most clip - slack (spikes)
    lab_bias_window: int = spec(3, kind="int", ge=1, le=LAB_WINDOW_MAX)    # CORRECTION_MISMATCH: windowed mean test over this many lab assays ...
    lab_bias_alpha: float = spec(1e-4, gt=0.0, lt=0.5)             # ... at this false-alarm probability per test
    lab_white_window: int = spec(8, kind="int", ge=2, le=LAB_WINDOW_MAX)   # ... and a whiteness (runs) test over this many ...
    lab_white_alpha: float = spec(1e-4, gt=0.0, lt=0.5)            # ... at most this false-alarm probability per test;
    lab_white_dead_zone: float = spec(0.1, ge=0.0, lt=1.0)         # ... a whitened innovation within this of 0 has no sign there
    trust_shift_min: float = spec(0.25, gt=0.0)                    # CORRECTION_MISMATCH also when a trust weight moved more than this ...
    trust_shift_z: float = spec(2.0, gt=0.0)                       # ... and more than this many of its SD from its prior mean
    rate_shift_min: float = spec(0.25, gt=0.0)                     # ... or when the rates need a log-shift beyond this on top of the correction
    stuck_time_s: float = spec(60.0, unit="s", gt=0.0)
    stuck_min_readings: int = spec(10, kind="int", ge=2)             # identical readings by chance: ~0.08^(n-1) at 0.05 K noise, 0.01 K steps
    stuck_tolerance_K: float = spec(0.0, unit="K", ge=0.0)
    # -- forecast
    forecast_interval_s: float = spec(60.0, unit="s", ge=0.0)      # automatic forecast refresh (0: only on request)
    forecast_dt_s: float = spec(60.0, unit="s", gt=0.0)            # forecast output and propagation step
    jacket_settle_s: float = spec(600.0, unit="s", gt=0.0)         # time constant over which T_j rejoins the recipe in a forecast

    def __post_init__(self) -> None:
        """Checks across fields (each field's own rule has been checked before)."""
        if not self.factor_max > self.factor_min:
            raise ParameterError("softsensor.factor_max", self.factor_max, "must be > factor_min")
        if not self.trust_max > 1.0 > self.trust_min:
            raise ParameterError("softsensor.trust_max", self.trust_max, "the trust range must contain 1 strictly (and trust_min < 1)")
        if not self.T_sensor_max_K > self.T_sensor_min_K:
            raise ParameterError("softsensor.T_sensor_max_K", self.T_sensor_max_K, "must be > T_sensor_min_K")
        if binomial_half_sf(2 * (self.lab_white_window - 1), 2 * (self.lab_white_window - 1)) > self.lab_white_alpha:
            raise ParameterError("softsensor.lab_white_window", self.lab_white_window,
                                 f"too short for lab_white_alpha {self.lab_white_alpha}: even all neighbours alike "
                                 "is more likely than that (the whiteness test could never fail)")
        if self.max_step_s < self.filter_interval_s:
            raise ParameterError("softsensor.max_step_s", self.max_step_s, "must be >= filter_interval_s")

    def lab_std(self, value_mol_per_m3: float) -> float:
        """Standard deviation [mol/m3] of one lab assay reading ``value_mol_per_m3``: abs + rel * value."""
        return self.lab_abs_std_mol_per_m3 + self.lab_rel_std * value_mol_per_m3

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: dict, source: str = "<mapping>") -> SoftSensorConfig:
        """Build from a mapping (e.g. a TOML table); unknown keys raise ParameterError."""
        return from_mapping(cls, data, source)
