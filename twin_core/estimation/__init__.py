"""The soft sensor (EKF on the reactor state, with late lab results), split by concern.

Import the public names from here: ``from twin_core.estimation import SoftSensor, SoftSensorConfig``.
"""

from twin_core.estimator import (
    IA, IB, IC, IK1, IK2, IT, IUA, N_STATES, SENSOR_FAULTS, STATE_NAMES, STATE_UNITS, STATE_VERSION, Z95,
    Estimate, LabResult, SoftSensor, SoftSensorAlarm, SoftSensorConfig, chi2_bounds_mean,
)
from twin_core.forecast import Forecast, forecast_from
from twin_core.health import Cusum, NisWindow, StuckDetector, chi2_cdf, chi2_quantile, normal_quantile

__all__ = [
    "IA", "IB", "IC", "IK1", "IK2", "IT", "IUA", "N_STATES", "SENSOR_FAULTS", "STATE_NAMES", "STATE_UNITS",
    "STATE_VERSION", "Z95", "Estimate", "LabResult", "SoftSensor", "SoftSensorAlarm", "SoftSensorConfig",
    "chi2_bounds_mean", "Forecast", "forecast_from", "Cusum", "NisWindow", "StuckDetector", "chi2_cdf",
    "chi2_quantile", "normal_quantile",
]
