"""Discrete PID controller of the jacket temperature, as a PLC function block would run it.

Parallel form on the error e = sp - pv (K), output u = Kp (e + I + D) in [-1, +1]:
  - integral by forward Euler, with back-calculation anti-windup: when the applied output differs
    from the unsaturated one (clamp or slew limit), I is pulled back at rate (u - v) / (Kp Tt), so it
    does not wind up while the utilities are at their limits (Astrom & Hagglund, PID Controllers);
  - derivative on the measurement (no kick on setpoint steps) through a first-order filter Td/N;
  - output clamped to [-1, 1] and slew-limited to rate_limit_per_s (valve actuator speed).
``force(u)`` overrides the output (interlock full cooling) and makes the integral track it, so
that releasing the override is bumpless.
"""

from __future__ import annotations

import math

from plant_sim.config import Pid


class PidController:
    """PID with anti-windup, output and rate limits; ``update`` once per scan of ``dt_s`` seconds."""

    def __init__(self, cfg: Pid, dt_s: float) -> None:
        self.cfg = cfg
        self.dt_s = float(dt_s)
        self.integral_K = 0.0
        self.derivative_K = 0.0
        self.output = 0.0
        self._pv_prev: float | None = None
        # Backward-Euler filter coefficients of the derivative term (Tf = Td/N).
        tf = cfg.Td_s / cfg.derivative_filter_N
        self._d_keep = tf / (tf + self.dt_s) if cfg.Td_s > 0.0 else 0.0
        self._d_gain = cfg.Td_s / (tf + self.dt_s) if cfg.Td_s > 0.0 else 0.0
        self._max_step = cfg.rate_limit_per_s * self.dt_s

    def update(self, sp_K: float, pv_K: float) -> float:
        """One scan: the new output [-1, 1] for setpoint sp_K and measurement pv_K [K].

        A non-finite measurement (transmitter dropout) holds the output and freezes the integral.
        """
        if not math.isfinite(pv_K):
            return self.output
        cfg = self.cfg
        e = sp_K - pv_K
        if self._pv_prev is not None:
            self.derivative_K = self._d_keep * self.derivative_K - self._d_gain * (pv_K - self._pv_prev)
        self._pv_prev = pv_K
        v = cfg.Kp_per_K * (e + self.integral_K + self.derivative_K)
        u = 1.0 if v > 1.0 else (-1.0 if v < -1.0 else v)
        lo, hi = self.output - self._max_step, self.output + self._max_step
        u = hi if u > hi else (lo if u < lo else u)
        self.integral_K += self.dt_s * (e / cfg.Ti_s + (u - v) / (cfg.Kp_per_K * cfg.Tt_s))
        self.output = u
        return u

    def force(self, u: float, sp_K: float | None = None, pv_K: float | None = None) -> float:
        """Override the output with u at once (no slew limit: an interlock acts immediately) and track it.

        With sp and pv given, the integral is set so that the unsaturated output would equal u
        (bumpless transfer when the override is released).
        """
        self.output = min(1.0, max(-1.0, float(u)))
        if sp_K is not None and pv_K is not None and math.isfinite(pv_K):
            self.integral_K = self.output / self.cfg.Kp_per_K - (sp_K - pv_K) - self.derivative_K
            self._pv_prev = pv_K
        return self.output
