"""Open-loop forecast of the batch from the twin's current state: when to stop and what yield.

The jacket temperature is held at its current value (the FMU does not know the recipe ahead; a
master that does can run its own forecast) and the twin is stepped to the planned end of the batch
in coarse communication steps. The maximum of c_B on that trajectory, refined by a parabola through
its neighbours (twin_core.analysis.optimal_stop), is the optimal stop.
"""

from __future__ import annotations

import math

import numpy as np

from twin_core.analysis import impurity_fraction, optimal_stop
from twin_core.errors import IntegrationError
from twin_core.hybrid import HybridStepState, HybridTwin
from twin_core.recipe import Recipe
from twin_core.simulation import Trajectory

FORECAST_STEP_S = 600.0
"""Communication step of the forecast [s]: coarse on purpose (one DP5 step covers it at the
batch's time scale of hours), while the parabola refines the maximum between samples."""
MAX_FORECAST_STEPS = 2000


def forecast_stop(twin: HybridTwin, state: HybridStepState, t_s: float, T_jacket_K: float,
                  t_end_s: float) -> tuple[float, float, float]:
    """(t_stop_opt [s], c_B at it [mol/m3], impurity fraction of C at it [1]) from ``state`` at time
    t_s, jacket held at T_jacket_K.

    When the batch is already past its planned end, or c_B is already falling, the answer is the
    current time and c_B. Raises IntegrationError when the forecast cannot be integrated.
    """
    if not t_end_s > t_s:
        return t_s, state.x[1], float(impurity_fraction(np.asarray(state.x)))
    n = min(MAX_FORECAST_STEPS, max(2, math.ceil((t_end_s - t_s) / FORECAST_STEP_S)))
    dt = (t_end_s - t_s) / n
    times = np.empty(n + 1)
    xs = np.empty((n + 1, 4))
    times[0] = t_s
    xs[0] = state.x
    st: HybridStepState = state
    for i in range(n):
        t = t_s + i * dt  # time as t0 + i*dt, never accumulated
        st = twin.step(st, t, dt, T_jacket_K)
        times[i + 1] = t_s + (i + 1) * dt
        xs[i + 1] = st.x
        # c_B has passed its maximum once it falls for two samples in a row: stop early.
        if i >= 2 and xs[i + 1, 1] < xs[i, 1] < xs[i - 1, 1]:
            times, xs = times[:i + 2], xs[:i + 2]
            break
    if not np.all(np.isfinite(xs)):
        raise IntegrationError(f"forecast from t={t_s} s produced a non-finite state")
    tr = Trajectory(times, xs, np.full(len(times), T_jacket_K),
                    Recipe((0.0,), (T_jacket_K,), max(t_end_s, 1.0), name="forecast-hold"))
    t_stop, c_B = optimal_stop(tr)
    x_stop = np.array([np.interp(t_stop, times, xs[:, j]) for j in range(4)])
    return t_stop, c_B, float(impurity_fraction(x_stop))
