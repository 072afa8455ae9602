"""Forecast of the rest of a batch from the soft sensor's current estimate (no I/O).

The estimator's own propagation (mean by the DP5 integrator with its factors held, covariance by
the linearised transition) is run from the current posterior to the end of the batch under a
jacket programme. From the forecast trajectory: final yield (with its standard deviation), the
optimal stop (maximum of c_B, twin_core.analysis.optimal_stop), the economic stop
(twin_core.analysis.economic_stop) and the impurity at each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np

from twin_core.analysis import Economics, economic_stop, impurity_fraction, optimal_stop, yield_of_c_B
from twin_core.errors import ParameterError
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.simulation import Trajectory, output_times

SubStep = Callable[[float, float, np.ndarray, np.ndarray, float, float], tuple[np.ndarray, np.ndarray, float, bool]]
"""(t_a, t_b, x, P, h, T_jacket_K) -> (x, P, h, in_domain): the estimator's propagation over one step."""


@dataclass(frozen=True)
class Forecast:
    """Forecast of the batch from t_from_s to t_end_s [s] (yields and impurity fractions in [1]).

    ``t_stop_opt_s`` is the time of maximum c_B (no earlier than t_from_s: a maximum already passed
    means "stop now"); ``t_stop_econ_s`` the most profitable discharge time within the impurity
    spec (analysis.Economics); ``econ_limited_by`` why it stops there. The trajectory fields hold the
    forecast at every ``forecast_dt_s``.
    """

    t_from_s: float
    t_end_s: float
    yield_end: float
    yield_end_std: float
    c_B_end_mol_per_m3: float
    c_C_end_mol_per_m3: float
    impurity_end: float
    t_stop_opt_s: float
    yield_at_opt: float
    yield_at_opt_std: float
    impurity_at_opt: float
    t_stop_econ_s: float
    yield_at_econ: float
    impurity_at_econ: float
    profit_at_econ: float
    econ_limited_by: str
    in_domain: bool
    t_s: tuple[float, ...]
    c_A_mol_per_m3: tuple[float, ...]
    c_B_mol_per_m3: tuple[float, ...]
    c_C_mol_per_m3: tuple[float, ...]
    T_K: tuple[float, ...]
    c_B_std_mol_per_m3: tuple[float, ...]
    t_stop_opt_lo_s: float = math.nan   # the stop-time interval: times whose forecast c_B is within
    t_stop_opt_hi_s: float = math.nan   # 1.96 sd (at the optimum) of the maximum (forecast_from)

    def to_dict(self) -> dict:
        """Plain data (lists for the trajectory)."""
        d = asdict(self)
        for f in fields(self):
            if isinstance(d[f.name], tuple):
                d[f.name] = list(d[f.name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Forecast:
        kw = {}
        for f in fields(cls):
            if f.name not in d and f.default is not MISSING:
                continue
            v = d[f.name]
            kw[f.name] = tuple(float(a) for a in v) if isinstance(v, list) else v
        return cls(**kw)


def jacket_plan(recipe: Recipe | None, u_now_K: float, t0_s: float, settle_s: float) -> Callable[[float], float]:
    """The jacket temperature [K] a forecast assumes, as a function of time [s].

    With a recipe, the measured jacket temperature u_now_K at t0_s rejoins the programme with time
    constant settle_s [s] (its controller closes the gap; NaN: no reading yet, the programme from
    the start). Without one the jacket is held at u_now_K (ParameterError when it is NaN).
    """
    if recipe is not None:
        offset = u_now_K - recipe.setpoint(t0_s) if u_now_K == u_now_K else 0.0

        def jacket(t: float) -> float:
            return recipe.setpoint(t) + offset * math.exp(-(t - t0_s) / settle_s)
        return jacket
    if u_now_K != u_now_K:
        raise ParameterError("recipe", None, "no jacket temperature measured yet: give a recipe")

    def held(t: float) -> float:
        return u_now_K
    return held


def _interp(t: np.ndarray, y: np.ndarray, tq: float) -> float:
    return float(np.interp(tq, t, y))


def forecast_from(substep: SubStep, params: ModelParams, t0_s: float, x0: np.ndarray, P0: np.ndarray,
                  h0: float, t_end_s: float, dt_s: float, jacket: Callable[[float], float],
                  economics: Economics | None = None) -> Forecast:
    """Run ``substep`` from (t0_s, x0, P0) to t_end_s in steps of dt_s with T_j = jacket(t) [K]
    (evaluated mid-step and held) and summarise the batch (see :class:`Forecast`)."""
    econ = economics if economics is not None else Economics()
    cA0 = params.charge.c_A0_mol_per_m3
    x, P, h = x0, P0, h0
    if t_end_s > t0_s:
        t = output_times(t_end_s, dt_s, t0_s)
    else:
        t = np.array([t0_s])
    X = np.empty((len(t), 4))
    sB = np.empty(len(t))
    X[0] = x[:4]
    sB[0] = math.sqrt(max(P[1, 1], 0.0))
    ok_all = True
    for i in range(1, len(t)):
        a, b = float(t[i - 1]), float(t[i])
        x, P, h, ok = substep(a, b, x, P, h, jacket(0.5 * (a + b)))
        ok_all = ok_all and ok
        X[i] = x[:4]
        sB[i] = math.sqrt(max(P[1, 1], 0.0))
    Tj = np.array([jacket(float(tt)) for tt in t])
    if len(t) >= 2:
        tr = Trajectory(t, X, Tj, Recipe.constant_jacket(float(Tj[0]), float(t[-1]), name="forecast"))
        t_opt, cB_opt = optimal_stop(tr)
        es = economic_stop(tr, params, econ)
        t_econ, y_econ, f_econ, p_econ, why = (es.t_stop_s, es.yield_B, es.impurity_fraction, es.profit,
                                                es.limited_by)
    else:
        t_opt, cB_opt = float(t[0]), float(X[0, 1])
        f0 = float(impurity_fraction(X[0]))
        t_econ, y_econ, f_econ, why = t_opt, yield_of_c_B(cB_opt, params), f0, "end_of_trajectory"
        p_econ = float(econ.profit(t_econ, cB_opt, params))
    # The interval of the optimal stop: the contiguous times around t_opt whose forecast c_B lies
    # within 1.959964 sd (the forecast's own, at the optimum) of the maximum: stopping anywhere in
    # it gives a yield the forecast cannot tell from the best. It carries the trust weights' and the
    # bias states' covariance through sB. Not a confidence interval of the argmax itself.
    i_opt = int(np.argmin(np.abs(t - t_opt)))
    near = X[:, 1] >= cB_opt - 1.959963984540054 * float(sB[i_opt])
    lo = hi = i_opt
    while lo > 0 and near[lo - 1]:
        lo -= 1
    while hi < len(t) - 1 and near[hi + 1]:
        hi += 1
    x_opt = np.array([_interp(t, X[:, j], t_opt) for j in range(4)])
    x_opt[1] = cB_opt
    return Forecast(
        t_from_s=float(t[0]), t_end_s=float(t[-1]),
        yield_end=yield_of_c_B(float(X[-1, 1]), params), yield_end_std=float(sB[-1]) / cA0,
        c_B_end_mol_per_m3=float(X[-1, 1]), c_C_end_mol_per_m3=float(X[-1, 2]),
        impurity_end=float(impurity_fraction(X[-1])),
        t_stop_opt_s=float(t_opt), yield_at_opt=yield_of_c_B(cB_opt, params),
        yield_at_opt_std=_interp(t, sB, t_opt) / cA0, impurity_at_opt=float(impurity_fraction(x_opt)),
        t_stop_econ_s=float(t_econ), yield_at_econ=float(y_econ), impurity_at_econ=float(f_econ),
        profit_at_econ=float(p_econ), econ_limited_by=str(why), in_domain=ok_all,
        t_s=tuple(t.tolist()), c_A_mol_per_m3=tuple(X[:, 0].tolist()), c_B_mol_per_m3=tuple(X[:, 1].tolist()),
        c_C_mol_per_m3=tuple(X[:, 2].tolist()), T_K=tuple(X[:, 3].tolist()), c_B_std_mol_per_m3=tuple(sB.tolist()),
        t_stop_opt_lo_s=float(t[lo]), t_stop_opt_hi_s=float(t[hi]),
    )
