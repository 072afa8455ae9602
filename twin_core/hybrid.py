"""The hybrid twin: mechanistic rates scaled by a learned correction, held over each step.

A correction model (``ml_onnx.runtime.OnnxCorrection`` in production) maps the physical state to two
rate factors, r_i -> f_i * r_i. Calling an ONNX session inside every Runge-Kutta stage would cost
six calls per step, so the factors are evaluated once at the start of each communication step and
held over it (zero-order hold, like the jacket input). Mass stays conserved by construction (the
correction only rescales the two rates) and outside the correction's training domain the factors
fade to 1 and ``in_domain`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from twin_core.integrator import Tolerance, integrate
from twin_core.model import RateMultipliers, State, derivatives
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.simulation import DEFAULT_TOLERANCE, StepState, Trajectory, Twin, output_times


class CorrectionModel(Protocol):
    """What the hybrid twin needs from a learned correction."""

    def factors(self, t_s: float, x: Sequence[float], T_jacket_K: float) -> tuple[float, float, bool]:
        """(f1, f2, in_domain): multiplicative factors on r1 and r2 at time t_s [s] in the batch,
        state x = (c_A, c_B, c_C [mol/m3], T [K]); in_domain False when the correction faded out."""


@dataclass(frozen=True)
class HybridStepState(StepState):
    """StepState plus the factors used over the last step and whether they were in the domain."""

    f1: float = 1.0
    f2: float = 1.0
    in_domain: bool = True


class HybridTwin:
    """Mechanistic twin with an optional learned rate correction (None: physics only)."""

    def __init__(self, params: ModelParams | None = None, correction: CorrectionModel | None = None,
                 tolerance: Tolerance = DEFAULT_TOLERANCE) -> None:
        self.correction = correction
        self._held = RateMultipliers()
        self.twin = Twin(params, self._held if correction is not None else None, tolerance)
        self.params = self.twin.params

    def initial_state(self) -> HybridStepState:
        return HybridStepState(self.params.charge.x0, 0.0)

    def step(self, state: StepState, t: float, dt: float, u: float) -> HybridStepState:
        """One communication step from t to t + dt with jacket temperature u [K] held."""
        f1 = f2 = 1.0
        ok = True
        if self.correction is not None:
            f1, f2, ok = self.correction.factors(t, state.x, u)
            self._held.f1, self._held.f2 = f1, f2
        nxt = self.twin.step(state, t, dt, u)
        return HybridStepState(nxt.x, nxt.h_s, f1, f2, ok)

    def simulate(self, recipe: Recipe, t_end_s: float | None = None, dt_out_s: float = 60.0,
                 x0: State | None = None) -> Trajectory:
        """Whole batch in jacket mode, one communication step per output interval.

        Physics only (no correction): same as Twin.simulate. With a correction, the factors are
        evaluated at each output time and held; the jacket input follows the recipe inside each
        interval (the recipe is a known function of time, unlike a measured input).
        """
        if self.correction is None:
            return self.twin.simulate(recipe, t_end_s, dt_out_s, x0)
        if recipe.mode != "jacket":
            raise ValueError("the hybrid twin simulates jacket-mode recipes only")
        t_end = recipe.end_time_s if t_end_s is None else float(t_end_s)
        t = output_times(t_end, dt_out_s)
        out = np.empty((len(t), 4))
        x = tuple(self.params.charge.x0 if x0 is None else x0)
        out[0] = x
        h: float | None = None
        c = self.twin._c
        held = self._held

        def f(tt: float, xx: Sequence[float]) -> State:
            return derivatives(tt, xx, recipe.setpoint(tt), c, held)

        bps = recipe.breakpoints(t_end)
        for i in range(1, len(t)):
            held.f1, held.f2, _ = self.correction.factors(t[i - 1], x, recipe.setpoint(t[i - 1]))
            edges = [t[i - 1], *[b for b in bps if t[i - 1] < b < t[i]], t[i]]
            for a, b in zip(edges[:-1], edges[1:]):
                x, h = integrate(f, a, x, b, self.twin.tolerance, h0=h, stats=self.twin.stats)
            out[i] = x
        T_j = np.array([recipe.setpoint(tt) for tt in t])
        return Trajectory(t, out, T_j, recipe)
