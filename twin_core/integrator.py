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


@dataclass(frozen=True)
class Tolerance:
    """Error tolerances: relative (dimensionless) and absolute per component (units of the state)."""

    rtol: float = 1e-8
    atol: tuple[float, ...] = (1e-6, 1e-6, 1e-6, 1e-6)

    def __post_init__(self) -> None:
        if not (isinstance(self.rtol, (int, float)) and math.isfinite(self.rtol) and 1e-15 <= self.rtol < 1.0):
            raise ParameterError("tolerance.rtol", self.rtol, "must be within [1e-15, 1)")
        for i, a in enumerate(self.atol):
            if not (isinstance(a, (int, float)) and math.isfinite(a) and a > 0.0):
                raise ParameterError(f"tolerance.atol[{i}]", a, "must be finite and > 0")


@dataclass
class Stats:
    """Work counters, accumulated over calls."""

    accepted: int = 0
    rejected: int = 0
    rhs_calls: int = 0


def _stages(f: Rhs, t: float, x: Vector, h: float, k1: Sequence[float]) -> tuple:
    """The seven stages of one DP5 step from (t, x) with step h; k1 = f(t, x) (FSAL)."""
    n = len(x)
    r = range(n)
    k2 = f(t + C2 * h, tuple(x[i] + h * A21 * k1[i] for i in r))
    k3 = f(t + C3 * h, tuple(x[i] + h * (A31 * k1[i] + A32 * k2[i]) for i in r))
    k4 = f(t + C4 * h, tuple(x[i] + h * (A41 * k1[i] + A42 * k2[i] + A43 * k3[i]) for i in r))
    k5 = f(t + C5 * h, tuple(x[i] + h * (A51 * k1[i] + A52 * k2[i] + A53 * k3[i] + A54 * k4[i]) for i in r))
    k6 = f(t + h, tuple(x[i] + h * (A61 * k1[i] + A62 * k2[i] + A63 * k3[i] + A64 * k4[i] + A65 * k5[i]) for i in r))
    x_new = tuple(x[i] + h * (B1 * k1[i] + B3 * k3[i] + B4 * k4[i] + B5 * k5[i] + B6 * k6[i]) for i in r)
    k7 = f(t + h, x_new)
    err = tuple(h * (E1 * k1[i] + E3 * k3[i] + E4 * k4[i] + E5 * k5[i] + E6 * k6[i] + E7 * k7[i]) for i in r)
    return x_new, err, (k1, k2, k3, k4, k5, k6, k7)


def _stages4(f: Rhs, t: float, x: Vector, h: float, k1: Sequence[float]) -> tuple:
    """:func:`_stages` unrolled for the reactor's four states (the co-simulation hot path)."""
    x0, x1, x2, x3 = x
    a0, a1, a2, a3 = k1
    b0, b1, b2, b3 = k2 = f(t + C2 * h, (x0 + h * A21 * a0, x1 + h * A21 * a1, x2 + h * A21 * a2, x3 + h * A21 * a3))
    c0, c1, c2, c3 = k3 = f(t + C3 * h, (x0 + h * (A31 * a0 + A32 * b0), x1 + h * (A31 * a1 + A32 * b1),
                                         x2 + h * (A31 * a2 + A32 * b2), x3 + h * (A31 * a3 + A32 * b3)))
    d0, d1, d2, d3 = k4 = f(t + C4 * h, (x0 + h * (A41 * a0 + A42 * b0 + A43 * c0),
                                         x1 + h * (A41 * a1 + A42 * b1 + A43 * c1),
                                         x2 + h * (A41 * a2 + A42 * b2 + A43 * c2),
                                         x3 + h * (A41 * a3 + A42 * b3 + A43 * c3)))
    e0, e1, e2, e3 = k5 = f(t + C5 * h, (x0 + h * (A51 * a0 + A52 * b0 + A53 * c0 + A54 * d0),
                                         x1 + h * (A51 * a1 + A52 * b1 + A53 * c1 + A54 * d1),
                                         x2 + h * (A51 * a2 + A52 * b2 + A53 * c2 + A54 * d2),
                                         x3 + h * (A51 * a3 + A52 * b3 + A53 * c3 + A54 * d3)))
    g0, g1, g2, g3 = k6 = f(t + h, (x0 + h * (A61 * a0 + A62 * b0 + A63 * c0 + A64 * d0 + A65 * e0),
                                    x1 + h * (A61 * a1 + A62 * b1 + A63 * c1 + A64 * d1 + A65 * e1),
                                    x2 + h * (A61 * a2 + A62 * b2 + A63 * c2 + A64 * d2 + A65 * e2),
                                    x3 + h * (A61 * a3 + A62 * b3 + A63 * c3 + A64 * d3 + A65 * e3)))
    x_new = (x0 + h * (B1 * a0 + B3 * c0 + B4 * d0 + B5 * e0 + B6 * g0),
             x1 + h * (B1 * a1 + B3 * c1 + B4 * d1 + B5 * e1 + B6 * g1),
             x2 + h * (B1 * a2 + B3 * c2 + B4 * d2 + B5 * e2 + B6 * g2),
             x3 + h * (B1 * a3 + B3 * c3 + B4 * d3 + B5 * e3 + B6 * g3))
    m0, m1, m2, m3 = k7 = f(t + h, x_new)
    err = (h * (E1 * a0 + E3 * c0 + E4 * d0 + E5 * e0 + E6 * g0 + E7 * m0),
           h * (E1 * a1 + E3 * c1 + E4 * d1 + E5 * e1 + E6 * g1 + E7 * m1),
           h * (E1 * a2 + E3 * c2 + E4 * d2 + E5 * e2 + E6 * g2 + E7 * m2),
           h * (E1 * a3 + E3 * c3 + E4 * d3 + E5 * e3 + E6 * g3 + E7 * m3))
    return x_new, err, (k1, k2, k3, k4, k5, k6, k7)


def _error_norm4(x: Vector, x_new: Vector, err: Vector, tol: Tolerance) -> float:
    """:func:`_error_norm` unrolled for four states."""
    rtol = tol.rtol
    a0, a1, a2, a3 = tol.atol
    e0 = err[0] / (a0 + rtol * max(abs(x[0]), abs(x_new[0])))
    e1 = err[1] / (a1 + rtol * max(abs(x[1]), abs(x_new[1])))
    e2 = err[2] / (a2 + rtol * max(abs(x[2]), abs(x_new[2])))
    e3 = err[3] / (a3 + rtol * max(abs(x[3]), abs(x_new[3])))
    return math.sqrt((e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3) * 0.25)


def _error_norm(x: Vector, x_new: Vector, err: Vector, tol: Tolerance) -> float:
    rtol, atol = tol.rtol, tol.atol
    s = 0.0
    for i in range(len(x)):
        sc = atol[i] + rtol * max(abs(x[i]), abs(x_new[i]))
        e = err[i] / sc
        s += e * e
    return math.sqrt(s / len(x))


def dense_eval(x0: Vector, h: float, ks: tuple, theta: float) -> Vector:
    """Interpolated state at t0 + theta*h inside an accepted step (theta in [0, 1])."""
    n = len(x0)
    s1, s2, s3, s4 = theta, theta * theta, theta ** 3, theta ** 4
    out = []
    for i in range(n):
        acc = 0.0
        for j in range(7):
            pj = P[j]
            kij = ks[j][i]
            acc += kij * (pj[0] * s1 + pj[1] * s2 + pj[2] * s3 + pj[3] * s4)
        out.append(x0[i] + h * acc)
    return tuple(out)


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
    h = span if h0 is None or h0 <= 0.0 or h0 > span else h0
    if len(x) == 4 and len(tol.atol) == 4:
        return _integrate4(f, t0, x, t1, h, tol, stats, on_step)
    return _integrate_n(f, t0, x, t1, h, tol, stats, on_step)


def _count(stats: Stats | None, accepted: int, rejected: int, rhs_calls: int) -> None:
    if stats is not None:
        stats.accepted += accepted
        stats.rejected += rejected
        stats.rhs_calls += rhs_calls


def _integrate_n(f: Rhs, t0: float, x: Vector, t1: float, h: float, tol: Tolerance, stats: Stats | None,
                 on_step: Callable[[float, Vector, float, tuple], None] | None) -> tuple[Vector, float]:
    """The general-length loop of :func:`integrate` (any number of states)."""
    h_min = 1e-12 * max(1.0, abs(t1))
    t = t0
    k1 = f(t, x)
    accepted = rejected = 0
    while True:
        remaining = t1 - t
        last = h >= remaining * (1.0 - 1e-12)
        h_try = remaining if last else h
        try:
            x_new, err, ks = _stages(f, t, x, h_try, k1)
            en = _error_norm(x, x_new, err, tol)
        except (OverflowError, ZeroDivisionError):
            # A trial stage left the model's domain: reject the step (see _integrate4).
            en = math.inf
        if not math.isfinite(en):
            en = math.inf
        if en <= 1.0:
            accepted += 1
            if on_step is not None:
                on_step(t, x, h_try, ks)
            factor = MAX_FACTOR if en == 0.0 else min(MAX_FACTOR, max(MIN_FACTOR, SAFETY * en ** -0.2))
            # After a step shortened to land on t1, propose from the controller's own step size.
            h_next = max(h, h_try) * factor if last else h_try * factor
            x, k1 = x_new, ks[6]
            if last:
                _count(stats, accepted, rejected, 1 + 6 * (accepted + rejected))
                return x, h_next
            t = t + h_try
            h = h_next
        else:
            rejected += 1
            h = h_try * max(MIN_FACTOR, SAFETY * en ** -0.2) if math.isfinite(en) else h_try * MIN_FACTOR
            if h < h_min:
                _count(stats, accepted, rejected, 1 + 6 * (accepted + rejected))
                raise IntegrationError(f"step size underflow at t={t} (h={h}); state {x}")
        if accepted + rejected > MAX_STEPS_PER_INTERVAL:
            _count(stats, accepted, rejected, 1 + 6 * (accepted + rejected))
            raise IntegrationError(f"more than {MAX_STEPS_PER_INTERVAL} steps between t={t0} and t={t1}")


def _integrate4(f: Rhs, t0: float, x: Vector, t1: float, h: float, tol: Tolerance, stats: Stats | None,
                on_step: Callable[[float, Vector, float, tuple], None] | None) -> tuple[Vector, float]:
    """:func:`_integrate_n` for four states with stages, error norm and controller inlined.

    The co-simulation hot path (one call per communication step). Every expression is evaluated in
    the same order as in :func:`_stages` / :func:`_error_norm`, so both loops give bit-identical
    results (tests/test_core_integrator.py checks it); only Python call and lookup overhead is saved.
    """
    h_min = 1e-12 * max(1.0, abs(t1))
    rtol = tol.rtol
    at0, at1, at2, at3 = tol.atol
    t = t0
    x0, x1, x2, x3 = x
    k1 = f(t, x)
    a0, a1, a2, a3 = k1
    accepted = rejected = 0
    while True:
        remaining = t1 - t
        last = h >= remaining * (1.0 - 1e-12)
        hh = remaining if last else h
        try:
            ha = hh * A21
            k2 = f(t + C2 * hh, (x0 + ha * a0, x1 + ha * a1, x2 + ha * a2, x3 + ha * a3))
            b0, b1, b2, b3 = k2
            k3 = f(t + C3 * hh, (x0 + hh * (A31 * a0 + A32 * b0), x1 + hh * (A31 * a1 + A32 * b1),
                                 x2 + hh * (A31 * a2 + A32 * b2), x3 + hh * (A31 * a3 + A32 * b3)))
            c0, c1, c2, c3 = k3
            k4 = f(t + C4 * hh, (x0 + hh * (A41 * a0 + A42 * b0 + A43 * c0),
                                 x1 + hh * (A41 * a1 + A42 * b1 + A43 * c1),
                                 x2 + hh * (A41 * a2 + A42 * b2 + A43 * c2),
                                 x3 + hh * (A41 * a3 + A42 * b3 + A43 * c3)))
            d0, d1, d2, d3 = k4
            k5 = f(t + C5 * hh, (x0 + hh * (A51 * a0 + A52 * b0 + A53 * c0 + A54 * d0),
                                 x1 + hh * (A51 * a1 + A52 * b1 + A53 * c1 + A54 * d1),
                                 x2 + hh * (A51 * a2 + A52 * b2 + A53 * c2 + A54 * d2),
                                 x3 + hh * (A51 * a3 + A52 * b3 + A53 * c3 + A54 * d3)))
            e0, e1, e2, e3 = k5
            k6 = f(t + hh, (x0 + hh * (A61 * a0 + A62 * b0 + A63 * c0 + A64 * d0 + A65 * e0),
                            x1 + hh * (A61 * a1 + A62 * b1 + A63 * c1 + A64 * d1 + A65 * e1),
                            x2 + hh * (A61 * a2 + A62 * b2 + A63 * c2 + A64 * d2 + A65 * e2),
                            x3 + hh * (A61 * a3 + A62 * b3 + A63 * c3 + A64 * d3 + A65 * e3)))
            g0, g1, g2, g3 = k6
            y0 = x0 + hh * (B1 * a0 + B3 * c0 + B4 * d0 + B5 * e0 + B6 * g0)
            y1 = x1 + hh * (B1 * a1 + B3 * c1 + B4 * d1 + B5 * e1 + B6 * g1)
            y2 = x2 + hh * (B1 * a2 + B3 * c2 + B4 * d2 + B5 * e2 + B6 * g2)
            y3 = x3 + hh * (B1 * a3 + B3 * c3 + B4 * d3 + B5 * e3 + B6 * g3)
            x_new = (y0, y1, y2, y3)
            k7 = f(t + hh, x_new)
            m0, m1, m2, m3 = k7
            # Scaled error per component: err_i / (atol_i + rtol * max(|x_i|, |x_new_i|)).
            u, v = abs(x0), abs(y0)
            s0 = hh * (E1 * a0 + E3 * c0 + E4 * d0 + E5 * e0 + E6 * g0 + E7 * m0) / (at0 + rtol * (u if u >= v else v))
            u, v = abs(x1), abs(y1)
            s1 = hh * (E1 * a1 + E3 * c1 + E4 * d1 + E5 * e1 + E6 * g1 + E7 * m1) / (at1 + rtol * (u if u >= v else v))
            u, v = abs(x2), abs(y2)
            s2 = hh * (E1 * a2 + E3 * c2 + E4 * d2 + E5 * e2 + E6 * g2 + E7 * m2) / (at2 + rtol * (u if u >= v else v))
            u, v = abs(x3), abs(y3)
            s3 = hh * (E1 * a3 + E3 * c3 + E4 * d3 + E5 * e3 + E6 * g3 + E7 * m3) / (at3 + rtol * (u if u >= v else v))
            en = math.sqrt((s0 * s0 + s1 * s1 + s2 * s2 + s3 * s3) * 0.25)
        except (OverflowError, ZeroDivisionError):
            # A trial step so long that a stage state left the model's domain (T <= 0 in an
            # exponent, ...): reject it like a non-finite error estimate.
            en = math.inf
        if en <= 1.0:  # False for NaN: a non-finite error rejects the step
            accepted += 1
            if on_step is not None:
                on_step(t, x, hh, (k1, k2, k3, k4, k5, k6, k7))
            if en == 0.0:
                factor = MAX_FACTOR
            else:
                factor = SAFETY * en ** -0.2  # >= SAFETY > MIN_FACTOR since en <= 1
                if factor > MAX_FACTOR:
                    factor = MAX_FACTOR
            x, k1 = x_new, k7
            x0, x1, x2, x3 = y0, y1, y2, y3
            a0, a1, a2, a3 = m0, m1, m2, m3
            if last:
                # After a step shortened to land on t1, propose from the controller's own step size.
                if stats is not None:
                    _count(stats, accepted, rejected, 1 + 6 * (accepted + rejected))
                return x, (h if h >= hh else hh) * factor
            t = t + hh
            h = hh * factor
        else:
            rejected += 1
            if math.isfinite(en):
                h = hh * max(MIN_FACTOR, SAFETY * en ** -0.2)
            else:
                h = hh * MIN_FACTOR
            if h < h_min:
                _count(stats, accepted, rejected, 1 + 6 * (accepted + rejected))
                raise IntegrationError(f"step size underflow at t={t} (h={h}); state {x}")
        if accepted + rejected > MAX_STEPS_PER_INTERVAL:
            _count(stats, accepted, rejected, 1 + 6 * (accepted + rejected))
            raise IntegrationError(f"more than {MAX_STEPS_PER_INTERVAL} steps between t={t0} and t={t1}")
