"""The soft sensor (EKF on the reactor state, with late lab results), split by concern.

Import the public names from here: ``from twin_core.estimation import SoftSensor, SoftSensorConfig``.
The modules (sensor.py's docstring lists them): config, state, scans, ekf, history, health,
forecast, checkpoint, and sensor (the SoftSensor facade).
"""

from twin_core.estimation.checkpoint import CHECKPOINT_VERSION, Checkpoint
from twin_core.estimation.config import SoftSensorConfig
from twin_core.estimation.forecast import Forecast, forecast_from
from twin_core.estimation.health import (
    SENSOR_FAULTS,
    Cusum,
    ModelHealth,
    NisWindow,
    SoftSensorAlarm,
    StuckDetector,
    chi2_bounds_mean,
    chi2_cdf,
    chi2_quantile,
    normal_quantile,
)
from twin_core.estimation.sensor import SoftSensor
from twin_core.estimation.state import (
    IA,
    IB,
    IC,
    IK1,
    IK2,
    IL1,
    IL2,
    IT,
    IUA,
    N_STATES,
    STATE_NAMES,
    STATE_UNITS,
    Z95,
    Estimate,
    LabResult,
)

__all__ = [
    "CHECKPOINT_VERSION", "Checkpoint", "Cusum", "Estimate", "Forecast", "IA", "IB", "IC", "IK1", "IK2", "IL1", "IL2", "IT",
    "IUA", "LabResult", "ModelHealth", "N_STATES", "NisWindow", "SENSOR_FAULTS", "STATE_NAMES", "STATE_UNITS",
    "SoftSensor", "SoftSensorAlarm", "SoftSensorConfig", "StuckDetector", "Z95",
    "chi2_bounds_mean", "chi2_cdf", "chi2_quantile", "forecast_from", "normal_quantile",
]
