"""Run the model: one communication step (co-simulation) or a whole batch under a recipe.

The integrator (twin_core.integrator) and the model (twin_core.model) stay separate; this module
wires them together. Output times are t0 + n*dt_out, never accumulated by repeated addition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from twin_core.errors import IntegrationError, ParameterError
from twin_core.integrator import P, Stats, Tolerance, integrate
from twin_core.model import RateCorrection, State, coefficients, derivatives, isothermal_derivatives, jacket_rhs, rates
from twin_core.params import ModelParams
from twin_core.recipe import Recipe

DEFAULT_TOLERANCE = Tolerance(rtol=1e-8, atol=(1e-6, 1e-6, 1e-6, 1e-6))
"""Default tolerances: relative 1e-8; 1e-6 mol/m3 on concentrations and 1e-6 K on temperature."""

_P = np.array(P)


@dataclass(frozen=True)
class StepState:
    """Everything a co-simulation step carries forward: the model state and the integrator's
    proposed next internal step size (part of the state: restoring it makes a restored run
    bit-identical to an uninterrupted one)."""

    x: State
    h_s: float = 0.0


@dataclass(frozen=True)
class Trajectory:
    """A simulated batch: times [s], states (c_A, c_B, c_C [mol/m3], T [K]) and jacket temperature [K]."""

    t_s: np.ndarray
    x: np.ndarray
    T_jacket_K: np.ndarray
    recipe: Recipe

    @property
    def c_A(self) -> np.ndarray:
        return self.x[:, 0]

    @property
    def c_B(self) -> np.ndarray:
        return self.x[:, 1]

    @property
    def c_C(self) -> np.ndarray:
        return self.x[:, 2]

    @property
    def T_K(self) -> np.ndarray:
        return self.x[:, 3]


def output_times(t_end_s: float, dt_out_s: float, t0_s: float = 0.0) -> np.ndarray:
    """t0 + n*dt_out for n = 0.. while <= t_end, plus t_end itself if it falls between."""
    if not (math.isfinite(dt_out_s) and dt_out_s > 0.0):
        raise ParameterError("dt_out_s", dt_out_s, "must be finite and > 0")
    if not (math.isfinite(t_end_s) and t_end_s > t0_s):
        raise ParameterError("t_end_s", t_end_s, f"must be finite and > t0 = {t0_s}")
    n = int(math.floor((t_end_s - t0_s) / dt_out_s * (1.0 + 1e-12)))
    t = t0_s + dt_out_s * np.arange(n + 1, dtype=float)
    if t_end_s - t[-1] > 1e-9 * max(1.0, t_end_s):
        t = np.append(t, t_end_s)
    return t


class Twin:
    """The mechanistic (optionally hybrid) twin: parameters + optional rate correction + tolerances."""

    def __init__(self, params: ModelParams | None = None, correction: RateCorrection | None = None,
                 tolerance: Tolerance = DEFAULT_TOLERANCE) -> None:
        self.params = params if params is not None else ModelParams()
        self.tolerance = tolerance
        self.stats = Stats()
        self._c = coefficients(self.params)
        self.correction = correction  # property: also builds the step's right-hand side

    @property
    def correction(self) -> RateCorrection | None:
        """The rate correction (None: physics only)."""
        return self._correction

    @correction.setter
    def correction(self, correction: RateCorrection | None) -> None:
        self._correction = correction
        # Built once, not per step: the jacket temperature goes into self._u_cell.
        self._f_step, self._u_cell = jacket_rhs(self._c, correction)

    def initial_state(self) -> StepState:
        """The charge of the parameter set as a step state."""
        return StepState(self.params.charge.x0, 0.0)

    def step(self, state: StepState, t: float, dt: float, u: float) -> StepState:
        """Advance one communication step from t to t + dt with jacket temperature u [K] held."""
        if not (dt > 0.0 and math.isfinite(dt)):
            raise ParameterError("dt", dt, "communication step must be finite and > 0")
        if not math.isfinite(u):
            raise ParameterError("T_jacket", u, "must be finite")
        self._u_cell[0] = u
        x, h = integrate(self._f_step, t, state.x, t + dt, self.tolerance, h0=state.h_s, stats=self.stats)
        return StepState(x, h)  # type: ignore[arg-type]

    def simulate(self, recipe: Recipe, t_end_s: float | None = None, dt_out_s: float = 60.0,
                 x0: Sequence[float] | None = None) -> Trajectory:
        """Simulate a whole batch under ``recipe`` and return outputs every dt_out_s.

        Jacket mode: T_j follows the programme. Reactor mode: T follows the programme and the
        returned T_jacket_K is the jacket temperature that the energy balance requires (NaN when
        UA = 0). Between output times the integrator takes its own steps; outputs come from its
        4th-order dense interpolant, and every recipe breakpoint is hit exactly.
        """
        t_end = recipe.end_time_s if t_end_s is None else float(t_end_s)
        t_out = output_times(t_end, dt_out_s)
        c, corr = self._c, self.correction
        x = list(self.params.charge.x0 if x0 is None else x0)
        if recipe.mode == "reactor":
            x[3] = recipe.setpoint(0.0)

            def f(tt: float, xx: Sequence[float]) -> State:
                return isothermal_derivatives(tt, xx, recipe.slope(tt), c, corr)
        else:
            def f(tt: float, xx: Sequence[float]) -> State:
                return derivatives(tt, xx, recipe.setpoint(tt), c, corr)

        out = np.empty((len(t_out), 4))
        out[0] = x
        filled = 1

        def on_step(t0: float, x0_: tuple, h: float, ks: tuple) -> None:
            nonlocal filled
            t1 = t0 + h
            j = int(np.searchsorted(t_out, t1 * (1.0 + 1e-14), side="right"))
            if j <= filled:
                return
            theta = np.minimum((t_out[filled:j] - t0) / h, 1.0)
            powers = np.vstack([theta, theta ** 2, theta ** 3, theta ** 4])  # (4, m)
            Q = np.asarray(ks).T @ _P  # (n, 4)
            out[filled:j] = np.asarray(x0_)[None, :] + h * (Q @ powers).T
            filled = j

        edges = [0.0, *recipe.breakpoints(t_end), t_end]
        h: float | None = None
        state = tuple(x)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            state, h = integrate(f, a, state, b, self.tolerance, h0=h, stats=self.stats, on_step=on_step)
        if filled != len(t_out):
            raise IntegrationError(f"dense output filled {filled} of {len(t_out)} points")
        out[-1] = state
        if recipe.mode == "reactor":
            T_j = self._required_jacket(t_out, out, recipe)
        else:
            T_j = _setpoints(recipe, t_out)
        return Trajectory(t_out, out, T_j, recipe)

    def _required_jacket(self, t: np.ndarray, x: np.ndarray, recipe: Recipe) -> np.ndarray:
        c = self._c
        if c.ua == 0.0:
            return np.full(len(t), np.nan)
        r1, r2 = rates(x.T, c)
        slope = _slopes(recipe, t)
        return x[:, 3] + (slope - c.q1 * r1 - c.q2 * r2) / c.ua


def _segments(recipe: Recipe, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Programme arrays and, per time, the index of the segment that starts at or before it."""
    ts, Ts = np.asarray(recipe.times_s), np.asarray(recipe.temps_K)
    i = np.clip(np.searchsorted(ts, t, side="right") - 1, 0, max(len(ts) - 2, 0))
    return ts, Ts, i, np.minimum(i + 1, len(ts) - 1)


def _setpoints(recipe: Recipe, t: np.ndarray) -> np.ndarray:
    """:meth:`Recipe.setpoint` for an array of times, same arithmetic (bit-identical), no Python loop."""
    ts, Ts, i, k = _segments(recipe, t)
    if len(ts) == 1:
        return np.full(len(t), Ts[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        w = (t - ts[i]) / (ts[k] - ts[i])
        out = Ts[i] + w * (Ts[k] - Ts[i])
    out = np.where(t <= ts[0], Ts[0], out)
    return np.where(t >= ts[-1], Ts[-1], out)


def _slopes(recipe: Recipe, t: np.ndarray) -> np.ndarray:
    """:meth:`Recipe.slope` for an array of times (bit-identical)."""
    ts, Ts, i, k = _segments(recipe, t)
    if len(ts) == 1:
        return np.zeros(len(t))
    slope = (Ts[k] - Ts[i]) / (ts[k] - ts[i])
    return np.where((t < ts[0]) | (t >= ts[-1]), 0.0, slope)


def simulate(recipe: Recipe, t_end_s: float | None = None, dt_out_s: float = 60.0,
             params: ModelParams | None = None, correction: RateCorrection | None = None,
             tolerance: Tolerance = DEFAULT_TOLERANCE) -> Trajectory:
    """Convenience wrapper: ``Twin(params, correction, tolerance).simulate(recipe, t_end_s, dt_out_s)``."""
    return Twin(params, correction, tolerance).simulate(recipe, t_end_s, dt_out_s)
