"""Dormand-Prince 5(4) embedded Runge-Kutta with error control and dense output.

Own code in plain Python on purpose: the FMU runs it inside C hosts where scipy's shutdown
crashes, and for a 4-state system scalar Python beats numpy's per-call overhead. The integrator
knows nothing of the reactor: it integrates any ``f(t, x) -> tuple`` given as a callable.

Local error control: a step is accepted when the RMS over components of
``err_i / (atol_i + rtol * max(|x_i|, |x_new_i|))`` is <= 1; step size adapts with the usual
0.9 * err^(-1/5) rule, bounded to [0.2, 5] times the previous step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twin_core.errors import IntegrationError, ParameterError
from twin_core.validate import number, spec, validated

Vector = tuple[float, ...]
Rhs = Callable[[float, Vector], Sequence[float]]

# Butcher tableau of Dormand & Prince (1980), the RK5(4)7M pair.
C2, C3, C4, C5 = 1 / 5, 3 / 10, 4 / 5, 8 / 9
A21 = 1 / 5
A31, A32 = 3 / 40, 9 / 40
A41, A42, A43 = 44 / 45, -56 / 15, 32 / 9
A51, A52, A53, A54 = 19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729
A61, A62, A63, A64, A65 = 9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656
B1, B3, B4, B5, B6 = 35 / 384, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84
# Error coefficients: 5th-order weights minus the embedded 4th-order ones.
E1, E3, E4, E5, E6, E7 = 71 / 57600, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40

# Dense output (Shampine's free 4th-order interpolant, as in Hairer-Norsett-Wanner and scipy's RK45):
# x(t0 + s*h) = x0 + h * sum_j Q_j s^(j+1), with Q = K^T P.
P = (
    (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
    (0.0, 0.0, 0.0, 0.0),
    (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
    (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
    (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
    (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
    (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
)

SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 5.0
MAX_STEPS_PER_INTERVAL = 100_000


@validated("tolerance")
class Tolerance:
    """Error tolerances: relative (dimensionless) and absolute per component (units of the state)."""

    rtol: float = spec(1e-8, ge=1e-15, lt=1.0)
    atol: tuple[float, ...] = spec((1e-6, 1e-6, 1e-6, 1e-6), kind=tuple)

    def __post_init__(self) -> None:
        if not self.atol:
            raise ParameterError("tolerance.atol", self.atol, "needs one value per state")
        for i, a in enumerate(self.atol):
            if number(f"tolerance.atol[{i}]", a) <= 0.0:
                raise ParameterError(f"tolerance.atol[{i}]", a, "must be finite and > 0")


@dataclass
class Stats:
    """Work counters, accumulated over calls."""

    accepted: int = 0
    rejected: int = 0
    rhs_calls: int = 0


def integrate(f: Rhs, t0: float, x0: Sequence[float], t1: float, tol: Tolerance,
              h0: float | None = None, stats: Stats | None = None,
              on_step: Callable[[float, Vector, float, tuple], None] | None = None) -> tuple[Vector, float]:
    """Integrate dx/dt = f(t, x) from t0 to exactly t1.

    Returns (x(t1), h_next) where h_next is the step size the controller proposes for what follows
    (keep it for the next call: it is part of the integrator's state). ``on_step(t, x, h, ks)`` is
    called after each accepted step with its start point, size and stages (for dense output).
    Raises IntegrationError on a non-finite state or step-size underflow.
    """
    x: Vector = tuple(x0) if type(x0) is tuple else tuple(float(v) for v in x0)
    span = t1 - t0
    if span == 0.0:
        return x, (h0 if h0 else 0.0)
    if not span > 0.0:
        raise IntegrationError(f"integration interval must go forward: t0={t0}, t1={t1}")
    if len(tol.atol) != len(x):
        raise ParameterError("tolerance.atol", tol.atol, f"needs one entry per state ({len(x)})")
    # No usable proposal (none, <= 0, NaN, or longer than the interval): try the whole interval.
    h = h0 if h0 is not None and 0.0 < h0 <= span else span
    return _integrate(f, t0, x, t1, h, tol, stats, on_step)


def _count(stats: Stats | None, accepted: int, rejected: int, rhs_calls: int) -> None:
    if stats is not None:
        stats.accepted += accepted
        stats.rejected += rejected
        stats.rhs_calls += rhs_calls


def _integrate(f: Rhs, t0: float, x: Vector, t1: float, h: float, tol: Tolerance, stats: Stats | None,
               on_step: Callable[[float, Vector, float, tuple], None] | None) -> tuple[Vector, float]:
    """The step loop of :func:`integrate` (any number of states), from a first step size h.

    One loop for every caller, the co-simulation step included: the stages, the error norm and the
    controller are written inline (no helper calls per step), and the stage states are passed to
    ``f`` as lists (``f`` takes any sequence; accepted states are tuples).
    """
    h_min = 1e-12 * max(1.0, abs(t1))
    rtol, atol = tol.rtol, tol.atol
    n = len(x)
    t = t0
    k1 = f(t, x)
    accepted = rejected = 0
    while True:
        remaining = t1 - t
        last = h >= remaining * (1.0 - 1e-12)
        hh = remaining if last else h
        try:
            ha = hh * A21
            k2 = f(t + C2 * hh, [xi + ha * a for xi, a in zip(x, k1)])
            k3 = f(t + C3 * hh, [xi + hh * (A31 * a + A32 * b) for xi, a, b in zip(x, k1, k2)])
            k4 = f(t + C4 * hh, [xi + hh * (A41 * a + A42 * b + A43 * c) for xi, a, b, c in zip(x, k1, k2, k3)])
            k5 = f(t + C5 * hh, [xi + hh * (A51 * a + A52 * b + A53 * c + A54 * d)
                                 for xi, a, b, c, d in zip(x, k1, k2, k3, k4)])
            k6 = f(t + hh, [xi + hh * (A61 * a + A62 * b + A63 * c + A64 * d + A65 * e)
                            for xi, a, b, c, d, e in zip(x, k1, k2, k3, k4, k5)])
            x_new = tuple([xi + hh * (B1 * a + B3 * c + B4 * d + B5 * e + B6 * g)
                           for xi, a, c, d, e, g in zip(x, k1, k3, k4, k5, k6)])
            k7 = f(t + hh, x_new)
            # RMS of the scaled error err_i / (atol_i + rtol * max(|x_i|, |x_new_i|)).
            s = 0.0
            for xi, yi, a, c, d, e, g, m, at in zip(x, x_new, k1, k3, k4, k5, k6, k7, atol):
                u, v = abs(xi), abs(yi)
                q = hh * (E1 * a + E3 * c + E4 * d + E5 * e + E6 * g + E7 * m) / (at + rtol * (u if u >= v else v))
                s += q * q
            en = math.sqrt(s / n)
        except (OverflowError, ZeroDivisionError):
            # A trial step so long that a stage state left the model's domain (T <= 0 in an
            # exponent, ...): reject it like a non-finite error estimate.
            en = math.inf
        if en <= 1.0:  # False for NaN: a non-finite error rejects the step
            accepted += 1
            if on_step is not None:
                on_step(t, x, hh, (k1, k2, k3, k4, k5, k6, k7))
            # SAFETY * en^-0.2 >= SAFETY > MIN_FACTOR since en <= 1: only the upper bound can bite.
            factor = MAX_FACTOR if en == 0.0 else min(MAX_FACTOR, SAFETY * en ** -0.2)
            x, k1 = x_new, k7
            if last:
                # After a step shortened to land on t1, propose from the controller's own step size.
                _count(stats, accepted, rejected, 1 + 6 * (accepted + rejected))
                return x, (h if h >= hh else hh) * factor
            t = t + hh
            h = hh * factor
        else:
            rejected += 1
            h = hh * max(MIN_FACTOR, SAFETY * en ** -0.2) if math.isfinite(en) else hh * MIN_FACTOR
            if h < h_min:
                _count(stats, accepted, rejected, 1 + 6 * (accepted + rejected))
                raise IntegrationError(f"step size underflow at t={t} (h={h}); state {x}")
        if accepted + rejected > MAX_STEPS_PER_INTERVAL:
            _count(stats, accepted, rejected, 1 + 6 * (accepted + rejected))
            raise IntegrationError(f"more than {MAX_STEPS_PER_INTERVAL} steps between t={t0} and t={t1}")
