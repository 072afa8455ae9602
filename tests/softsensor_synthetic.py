"""Synthetic batches for the soft-sensor tests: a "plant" made of twin_core with other parameters.

The truth is twin_core's model with kinetics and heat transfer changed (what the estimator's bias
states must absorb); measurements are the true reactor temperature plus noise, the jacket follows
its programme exactly, lab assays of c_B and c_C are drawn every ``lab_every_s`` and arrive
``lab_delay_s`` later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.simulation import Twin

RECIPE = Recipe(times_s=(0.0, 3600.0), temps_K=(298.15, 343.15), end_time_s=6 * 3600.0, name="ramp-70C")
TRUE_PARAMS = ModelParams().replace(k1_ref_per_s=1.85e-4 * 1.15, k2_ref_per_s=5.5e-5 * 1.2, UA_W_per_K=1500.0 * 0.85)


@dataclass
class Batch:
    t_s: np.ndarray              # scan times [s]
    T_meas_K: np.ndarray         # measured reactor temperature [K]
    T_jacket_K: np.ndarray       # jacket temperature [K]
    x_true: np.ndarray           # true (c_A, c_B, c_C, T) at the scan times
    labs: list[tuple[float, float, float, float]]  # (sample time, c_B, c_C, arrival time)


def make_batch(dt_s: float = 60.0, noise_K: float = 0.05, lab_rsd: float = 0.015, seed: int = 0,
               params: ModelParams = TRUE_PARAMS, recipe: Recipe = RECIPE, lab_every_s: float = 1800.0,
               lab_delay_s: float = 2400.0, t_end_s: float | None = None) -> Batch:
    rng = np.random.default_rng(seed)
    tr = Twin(params).simulate(recipe, t_end_s=t_end_s, dt_out_s=dt_s)
    T_meas = tr.T_K + noise_K * rng.standard_normal(len(tr.t_s))
    labs = []
    for ts in np.arange(lab_every_s, tr.t_s[-1] + 1e-9, lab_every_s):
        i = int(round(ts / dt_s))
        cB, cC = tr.x[i, 1], tr.x[i, 2]
        cB *= 1.0 + lab_rsd * rng.standard_normal()
        cC *= 1.0 + lab_rsd * rng.standard_normal()
        labs.append((float(tr.t_s[i]), float(max(cB, 0.0)), float(max(cC, 0.0)), float(tr.t_s[i] + lab_delay_s)))
    return Batch(tr.t_s, T_meas, tr.T_jacket_K, tr.x, labs)


def run(sensor, batch: Batch, with_labs: bool = True, x0=None):
    """Replay a batch through a SoftSensor; returns the estimates at every scan."""
    est = [sensor.start(float(batch.t_s[0]), x0=x0)]
    pending = sorted(batch.labs, key=lambda r: r[3]) if with_labs else []
    j = 0
    for i in range(1, len(batch.t_s)):
        t = float(batch.t_s[i])
        e = sensor.update(t, float(batch.T_meas_K[i]), float(batch.T_jacket_K[i]))
        while j < len(pending) and pending[j][3] <= t + 1e-9:
            ts, cB, cC, ta = pending[j]
            e = sensor.add_lab(ts, cB, cC, ta)
            j += 1
        est.append(e)
    return est
