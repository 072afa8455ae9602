"""The hybrid twin: mechanistic rates scaled by a learned correction with a trust weight.

    r_i = r_i,phys(x) * exp(lambda_i * g_i(t, x)),   i = 1, 2

g_i is the correction's (faded) log-factor, evaluated at the current stage state inside *every*
Runge-Kutta stage (the correction is part of the right-hand side, not held over a communication
step), so a result does not depend on the communication step size: one 3600 s step and 3600 steps
of 1 s reach the same state to the integrator's tolerance. lambda = (lambda_1, lambda_2) is the
trust weight on the correction: (1, 1) is the correction as trained, (0, 0) is exactly the
mechanistic model (the correction is not even called; the result is Twin's, bit for bit), values
between shrink it toward physics and values above 1 extrapolate it. The soft sensor estimates
lambda online (twin_core.estimation). Mass stays conserved by construction (the correction only
rescales the two rates). Outside the correction's training domain the log-factors fade to 0
(the correction's smoothstep), and ``in_domain`` says so.

The exact semantics of one evaluation (the contract a C port must reproduce) are in
:class:`TrustWeightedRates`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from twin_core.errors import ParameterError
from twin_core.integrator import Tolerance
from twin_core.model import State
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.simulation import DEFAULT_TOLERANCE, StepState, Trajectory, Twin

DEFAULT_TRUST: tuple[float, float] = (1.0, 1.0)
"""The trust weight lambda = (lambda_1, lambda_2) [1] of a correction used as trained."""

LogFactors = Callable[[float, Sequence[float]], tuple[float, float, bool]]
"""(t_s [s], x = (c_A, c_B, c_C [mol/m3], T [K])) -> (g1, g2, in_domain): faded ln-factors [1]."""


class CorrectionModel(Protocol):
    """What the hybrid twin needs from a learned correction."""

    def factors(self, t_s: float, x: Sequence[float], T_jacket_K: float) -> tuple[float, float, bool]:
        """(f1, f2, in_domain): multiplicative factors on r1 and r2 at time t_s [s] in the batch,
        state x = (c_A, c_B, c_C [mol/m3], T [K]); in_domain False when the correction faded out."""


@runtime_checkable
class LogCorrectionModel(CorrectionModel, Protocol):
    """A correction that also gives its log-factors directly: the per-stage entry point.

    ``log_factors(t_s, x)`` returns (g1, g2, in_domain) with exp(g_i) == factors(...)[i] (up to
    the rounding of exp): the log-factors already faded outside the training domain. It is called
    in every Runge-Kutta stage (six to seven times per internal step), so it must be cheap
    (ml_onnx.runtime.OnnxCorrection writes into a pre-allocated, pre-bound row). The jacket
    temperature is not an argument: it is never a feature (ml_onnx.features).
    """

    def log_factors(self, t_s: float, x: Sequence[float]) -> tuple[float, float, bool]:
        """(g1, g2, in_domain) at time t_s [s] and state x = (c_A, c_B, c_C [mol/m3], T [K])."""


def log_factor_function(correction: CorrectionModel) -> LogFactors:
    """The per-stage log-factor function of ``correction``: its ``log_factors`` when it has one,
    else the natural log of its ``factors`` (a model that gives only factors; it is called with
    T_jacket_K = NaN since the jacket temperature is not a feature)."""
    if isinstance(correction, LogCorrectionModel):
        return correction.log_factors
    factors = correction.factors
    log = math.log
    nan, ninf = math.nan, -math.inf

    def from_factors(t_s: float, x: Sequence[float]) -> tuple[float, float, bool]:
        # A trial stage far outside the physical range (rejected by the error control) may give a
        # factor <= 0: its log is -inf (a zero rate), not an exception out of the integrator.
        f1, f2, ok = factors(t_s, x, nan)
        return (log(f1) if f1 > 0.0 else ninf), (log(f2) if f2 > 0.0 else ninf), ok

    return from_factors


def check_trust(trust: Sequence[float]) -> tuple[float, float]:
    """lambda as a validated pair of finite floats (ParameterError naming ``trust`` otherwise)."""
    try:
        l1, l2 = (float(v) for v in trust)
    except (TypeError, ValueError) as exc:
        raise ParameterError("trust", trust, "must be a pair (lambda_1, lambda_2) of numbers") from exc
    if not (math.isfinite(l1) and math.isfinite(l2)):
        raise ParameterError("trust", trust, "must be finite")
    return l1, l2


class TrustWeightedRates:
    """The hybrid rate correction as a ``twin_core.model.RateCorrection`` (called in every stage).

    One evaluation at stage time t [s] and stage state x, with the mechanistic rates (r1, r2)
    computed by twin_core.model.derivatives as r1 = k1(T) * c_A, r2 = k2(T) * c_B:

        g1, g2, ok = log_factors(t, x)          # faded log-factors of the correction at (t, x)
        f1 = exp(lambda_1 * g1);  f2 = exp(lambda_2 * g2)
        return (r1 * f1, r2 * f2)

    With ``lambda`` = (0, 0) the hybrid twin never builds this (physics exactly). ``last`` keeps
    (f1, f2, ok) of the most recent evaluation: after an integration to t1 that is the evaluation
    at (t1, x(t1)) (the integrator's last stage of its last accepted step is the end point), which
    :class:`HybridTwin` reports. ``calls`` counts evaluations. Not thread-safe (one per twin).
    """

    __slots__ = ("_g", "trust", "last_f1", "last_f2", "last_ok", "calls")

    def __init__(self, log_factors: LogFactors, trust: Sequence[float] = DEFAULT_TRUST) -> None:
        self._g = log_factors
        self.trust = list(check_trust(trust))
        self.last_f1 = 1.0
        self.last_f2 = 1.0
        self.last_ok = True
        self.calls = 0

    def __call__(self, t: float, x: Sequence[float], r1: float, r2: float) -> tuple[float, float]:
        g1, g2, ok = self._g(t, x)
        lam = self.trust
        f1 = math.exp(lam[0] * g1)
        f2 = math.exp(lam[1] * g2)
        self.last_f1, self.last_f2, self.last_ok = f1, f2, ok
        self.calls += 1
        return r1 * f1, r2 * f2


@dataclass(frozen=True)
class HybridStepState(StepState):
    """StepState plus the rate factors exp(lambda_i g_i) at the end of the last step and whether the
    correction was inside its training domain there (outputs only: the next step depends on x and
    h_s alone)."""

    f1: float = 1.0
    f2: float = 1.0
    in_domain: bool = True


class HybridTwin:
    """Mechanistic twin with an optional learned rate correction (None: physics only) and its trust
    weight ``trust`` = (lambda_1, lambda_2) (settable between steps; (0, 0): physics exactly)."""

    def __init__(self, params: ModelParams | None = None, correction: CorrectionModel | None = None,
                 tolerance: Tolerance = DEFAULT_TOLERANCE, trust: Sequence[float] = DEFAULT_TRUST) -> None:
        self.correction = correction
        self.twin = Twin(params, None, tolerance)   # the physics, and the lambda = 0 path
        self.params = self.twin.params
        self.rates: TrustWeightedRates | None = None
        self._hybrid: Twin | None = None
        if correction is not None:
            self.rates = TrustWeightedRates(log_factor_function(correction), trust)
            self._hybrid = Twin(self.params, self.rates, tolerance)
            self._hybrid.stats = self.twin.stats   # one set of work counters
        self._trust = check_trust(trust)

    @property
    def trust(self) -> tuple[float, float]:
        """lambda = (lambda_1, lambda_2) [1] applied from the next step on."""
        return self._trust

    @trust.setter
    def trust(self, value: Sequence[float]) -> None:
        self._trust = check_trust(value)
        if self.rates is not None:
            self.rates.trust[:] = self._trust

    def _active(self) -> Twin | None:
        """The hybrid twin, or None when the correction is off (none, or lambda = (0, 0))."""
        if self._hybrid is None or (self._trust[0] == 0.0 and self._trust[1] == 0.0):
            return None
        return self._hybrid

    def initial_state(self) -> HybridStepState:
        return HybridStepState(self.params.charge.x0, 0.0)

    def step(self, state: StepState, t: float, dt: float, u: float) -> HybridStepState:
        """One communication step from t to t + dt with jacket temperature u [K] held; the
        correction is evaluated in every stage, so the result does not depend on dt."""
        hybrid = self._active()
        if hybrid is None:
            nxt = self.twin.step(state, t, dt, u)
            return HybridStepState(nxt.x, nxt.h_s)
        nxt = hybrid.step(state, t, dt, u)
        r = self.rates
        return HybridStepState(nxt.x, nxt.h_s, r.last_f1, r.last_f2, r.last_ok)  # type: ignore[union-attr]

    def simulate(self, recipe: Recipe, t_end_s: float | None = None, dt_out_s: float = 60.0,
                 x0: State | None = None) -> Trajectory:
        """Whole batch, outputs every dt_out_s: Twin.simulate with the correction in the right-hand
        side (dense output between the integrator's own steps; the outputs do not change the
        trajectory). Physics only without a correction or with lambda = (0, 0)."""
        hybrid = self._active()
        return (hybrid or self.twin).simulate(recipe, t_end_s, dt_out_s, x0)

    def in_domain_along(self, t_s: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Whether the correction is inside its training domain at each (t_s[i], x[i]) (True
        everywhere without a correction): for a trajectory from :meth:`simulate`."""
        if self.rates is None:
            return np.ones(len(t_s), dtype=bool)
        g = self.rates._g
        return np.array([g(float(t), tuple(float(v) for v in xi))[2] for t, xi in zip(t_s, x)], dtype=bool)
