"""The soft sensor's checkpoint: everything needed to continue exactly, with named fields and a
format version, as plain data (floats, ints, bools, strings, lists, dicts: JSON-ready).

Version history: 1 kept the scan accumulators, the base posterior and each record as unnamed
lists; 2 named every value; 3 (this one) adds the trust weights lambda_1, lambda_2 to the state
(x and P are 9 long / 9 x 9). A checkpoint of another version is refused (ParameterError
naming the versions): the FMU and the runtime store them, and a silently misread one would
continue a batch from a wrong state.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from twin_core.errors import ParameterError

CHECKPOINT_VERSION = 3


@dataclass
class Checkpoint:
    """A soft sensor's state (SoftSensor.get_state / set_state go through this class)."""

    config: dict                 # SoftSensorConfig.as_dict(): a state only restores into the same tuning
    t0: float                    # start of the batch [s]
    t_filter: float              # time of the last filter step (the posterior's time) [s]
    t_scan: float                # time of the last scan accepted [s]
    n_scans: int
    x: list                      # posterior state (STATE_NAMES order)
    P: list                      # its covariance, row-major 9 x 9
    h: float                     # integrator's proposed next step [s]
    u: float                     # jacket temperature held over the last step [K] (NaN before the first)
    in_domain: bool              # the learned correction was inside its domain over the last step
    held_f1: float               # rate factors of the last sub-step (correction x k-factor)
    held_f2: float
    innov: float                 # last temperature innovation [K]
    history: dict                # History.get_state(): base posterior, records, pending labs, lab times
    scans: dict                  # ScanPool.get_state(): accumulators of the open interval, last readings
    health: dict                 # ModelHealth.get_state(): detectors and alarms
    plan: dict | None            # recipe of the automatic forecasts (Recipe.to_mapping()), None: none
    plan_end: float              # their horizon [s] (NaN: no automatic forecasts)
    forecast: dict | None        # the last automatic forecast (Forecast.to_dict())
    t_forecast: float            # when it was made [s]
    trust0: list                 # prior mean of the trust weights (lambda_1, lambda_2) the batch started from
    mismatch: bool               # CORRECTION_MISMATCH adaptation active (k-factors walk faster)
    version: int = CHECKPOINT_VERSION

    def to_plain(self) -> dict:
        """Plain data, field by field. The values are not copied again: SoftSensor.get_state builds
        every list and mapping afresh, so later work on the estimator does not reach into them (a
        deep copy here would cost twenty times the rest of get_state)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_plain(cls, d: object) -> Checkpoint:
        """Read :meth:`to_plain`'s output; ParameterError for another version or a wrong layout."""
        if not isinstance(d, dict):
            raise ParameterError("state", type(d).__name__, "a soft-sensor state is a mapping")
        if d.get("version") != CHECKPOINT_VERSION:
            raise ParameterError("state.version", d.get("version"),
                                 f"expected a soft-sensor state of version {CHECKPOINT_VERSION}")
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(d) - names), sorted(names - set(d))
        if unknown or missing:
            raise ParameterError("state", f"unknown {unknown}, missing {missing}",
                                 f"not a soft-sensor state of version {CHECKPOINT_VERSION}")
        return cls(**d)
