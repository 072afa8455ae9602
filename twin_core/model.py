"""The mechanistic model: mole balances of A -> B -> C and the energy balance of the charge.

    r1 = k1(T) c_A,  r2 = k2(T) c_B                          [mol/(m3*s)]
    dc_A/dt = -r1,  dc_B/dt = r1 - r2,  dc_C/dt = r2
    rho c_p V dT/dt = V (-dH1 r1 - dH2 r2) + UA (T_j - T)     [W]

The right-hand side is one pure function, ``rhs(t, x, u, p)``; it knows nothing of integrators,
FMI, OPC UA or Modbus. An optional rate correction (the hybrid part) replaces (r1, r2) by corrected
rates; because the species balances are written in terms of the two rates, c_A + c_B + c_C is
conserved by construction whatever the correction returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from twin_core.params import R_J_PER_MOL_K, ModelParams

State = tuple[float, float, float, float]
"""x = (c_A [mol/m3], c_B [mol/m3], c_C [mol/m3], T [K])."""

RateCorrection = Callable[[float, Sequence[float], float, float], tuple[float, float]]
"""(t [s], x, r1, r2 [mol/(m3*s)]) -> corrected (r1, r2) [mol/(m3*s)]."""


class Coefficients(NamedTuple):
    """Constants of the right-hand side, hoisted out of the hot path."""

    k1_ref: float
    k2_ref: float
    inv_T_ref: float
    E1_over_R: float
    E2_over_R: float
    q1: float  # -dH1 / (rho c_p)   [K*m3/mol]: temperature rise per mol/m3 converted by reaction 1
    q2: float  # -dH2 / (rho c_p)
    ua: float  # UA / (rho c_p V)   [1/s]


@lru_cache(maxsize=256)
def coefficients(p: ModelParams) -> Coefficients:
    """Precompute the constants of ``rhs`` for parameter set ``p``."""
    k, r = p.kinetics, p.reactor
    rho_cp = r.density_kg_per_m3 * r.heat_capacity_J_per_kg_K
    return Coefficients(
        k1_ref=k.k1_ref_per_s,
        k2_ref=k.k2_ref_per_s,
        inv_T_ref=1.0 / k.T_ref_K,
        E1_over_R=k.E1_J_per_mol / R_J_PER_MOL_K,
        E2_over_R=k.E2_J_per_mol / R_J_PER_MOL_K,
        q1=-k.dH1_J_per_mol / rho_cp,
        q2=-k.dH2_J_per_mol / rho_cp,
        ua=r.UA_W_per_K / (rho_cp * r.volume_m3),
    )


def rate_constants(T_K: float | np.ndarray, c: Coefficients) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Arrhenius rate constants (k1, k2) [1/s] at temperature T_K [K]: the one rate law.

    k_i = k_i,ref exp(-E_i/R (1/T - 1/T_ref)). T_K may be an array (then elementwise, numpy's exp).
    """
    d = 1.0 / T_K - c.inv_T_ref
    # math.exp for scalars: the hot path, and numpy scalars stay on libm's exp like plain floats;
    # numpy's vectorised exp for arrays (it may differ from libm's in the last bit).
    exp = np.exp if isinstance(d, np.ndarray) else math.exp
    return c.k1_ref * exp(-c.E1_over_R * d), c.k2_ref * exp(-c.E2_over_R * d)


def rates(x: Sequence[float], c: Coefficients) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Mechanistic reaction rates (r1, r2) = (k1 c_A, k2 c_B) [mol/(m3*s)] at state x.

    x may hold arrays (x[0] the c_A values, ..., x[3] the temperatures): e.g. ``rates(X.T, c)``.
    """
    k1, k2 = rate_constants(x[3], c)
    return k1 * x[0], k2 * x[1]


def scaled(c: Coefficients, k1_factor: float, k2_factor: float, UA_factor: float) -> Coefficients:
    """``c`` with the rate constants and UA multiplied by dimensionless factors (held rate
    corrections, the soft sensor's bias states): r_i -> k_i_factor * r_i, UA -> UA_factor * UA."""
    return Coefficients(c.k1_ref * k1_factor, c.k2_ref * k2_factor, c.inv_T_ref, c.E1_over_R, c.E2_over_R,
                        c.q1, c.q2, c.ua * UA_factor)


def derivatives(t: float, x: Sequence[float], T_jacket_K: float, c: Coefficients,
                correction: RateCorrection | None = None) -> State:
    """dx/dt for coefficient set ``c``: :func:`rhs` with the constants precomputed."""
    r1, r2 = rates(x, c)
    if correction is not None:
        r1, r2 = correction(t, x, r1, r2)
    return (-r1, r1 - r2, r2, c.q1 * r1 + c.q2 * r2 + c.ua * (T_jacket_K - x[3]))


class Jacobian(NamedTuple):
    """The non-zero partial derivatives of the right-hand side, ``d<row>_d<column>``.

    Rows are the derivatives of (c_A, c_B, c_C, T); columns the state (cA, cB, cC [mol/m3], T [K])
    and three dimensionless multipliers (UA: UA_factor, k1: k1_factor, k2: k2_factor) with which the
    rates are r_i = k_i_factor f_i k_i(T) c_i (f_i a held correction) and UA is UA_factor UA.
    Units: 1/s for d(c)/d(c); mol/(m3 s K) for d(c)/dT; mol/(m3 s) for d(c)/d(factor); K m3/(mol s)
    for dT/d(c); 1/s for dT/dT; K/s for dT/d(factor). Every other entry is zero; the field names
    give the position (:data:`JACOBIAN_PATTERN`).
    """

    dcA_dcA: float
    dcA_dT: float
    dcA_dk1: float
    dcB_dcA: float
    dcB_dcB: float
    dcB_dT: float
    dcB_dk1: float
    dcB_dk2: float
    dcC_dcB: float
    dcC_dT: float
    dcC_dk2: float
    dT_dcA: float
    dT_dcB: float
    dT_dT: float
    dT_dUA: float
    dT_dk1: float
    dT_dk2: float


JACOBIAN_VARIABLES = ("cA", "cB", "cC", "T", "UA", "k1", "k2")
"""Column order of the Jacobian (the soft sensor's augmented state order)."""
JACOBIAN_PATTERN: tuple[tuple[int, int], ...] = tuple(
    (JACOBIAN_VARIABLES.index(row), JACOBIAN_VARIABLES.index(col))
    for row, col in (name[1:].split("_d") for name in Jacobian._fields))
"""(row, column) of each :class:`Jacobian` field, derived from its name."""


def jacobian(x: Sequence[float], T_jacket_K: float, c: Coefficients, f1: float = 1.0, f2: float = 1.0,
             UA_factor: float = 1.0, k1_factor: float = 1.0, k2_factor: float = 1.0) -> Jacobian:
    """Analytic Jacobian of :func:`derivatives` with coefficients
    ``scaled(c, k1_factor * f1, k2_factor * f2, UA_factor)`` at state x = (c_A, c_B, c_C, T) and
    jacket temperature T_jacket_K [K]: with respect to the state and to the three factors.

    f1, f2 are a held rate correction (constants, not differentiated). dr_i/dT = r_i E_i/(R T^2).
    """
    cA, cB, _, T = x
    k1, k2 = rate_constants(T, c)
    d1A = k1_factor * f1 * k1           # dr1/dc_A [1/s]
    d2B = k2_factor * f2 * k2           # dr2/dc_B
    r1 = d1A * cA
    r2 = d2B * cB
    d1T = r1 * c.E1_over_R / (T * T)    # dr1/dT [mol/(m3 s K)]
    d2T = r2 * c.E2_over_R / (T * T)
    d1k = f1 * k1 * cA                  # dr1/dk1_factor [mol/(m3 s)]
    d2k = f2 * k2 * cB
    q1, q2 = c.q1, c.q2
    return Jacobian(-d1A, -d1T, -d1k, d1A, -d2B, d1T - d2T, d1k, -d2k, d2B, d2T, d2k,
                    q1 * d1A, q2 * d2B, q1 * d1T + q2 * d2T - c.ua * UA_factor, c.ua * (T_jacket_K - T),
                    q1 * d1k, q2 * d2k)


def jacket_rhs(c: Coefficients, correction: RateCorrection | None = None
               ) -> tuple[Callable[[float, Sequence[float]], State], list[float]]:
    """:func:`derivatives` as a two-argument ``f(t, x)`` for the integrator, built once per twin.

    Returns ``(f, u_cell)``: set ``u_cell[0]`` to the jacket temperature [K] before integrating.
    Not thread-safe: one ``u_cell`` per closure.

    The co-simulation hot path (seven calls per internal step): without a correction or with a
    :class:`RateMultipliers` one (factors read at every call, so a hybrid twin may change them between
    steps), the rates are computed inline with the constants as closure variables; this halves the
    cost of a call (benchmarks/bench_core.py). It is :func:`rate_constants` / :func:`derivatives`
    written out, same arithmetic in the same order (no correction = factors of exactly 1.0, an exact
    multiplication), and tests/test_core_integrator.py checks it bit for bit against them. Any other
    correction goes through :func:`derivatives`.
    """
    u_cell = [0.0]
    if correction is not None and type(correction) is not RateMultipliers:
        def f_general(t: float, x: Sequence[float]) -> State:
            return derivatives(t, x, u_cell[0], c, correction)

        return f_general, u_cell
    m = correction if correction is not None else RateMultipliers()
    k1_ref, k2_ref, inv_T_ref, E1_over_R, E2_over_R, q1, q2, ua = c
    exp = math.exp

    def f(t: float, x: Sequence[float]) -> State:
        cA, cB, _, T = x
        d = 1.0 / T - inv_T_ref
        r1 = m.f1 * (k1_ref * exp(-E1_over_R * d) * cA)
        r2 = m.f2 * (k2_ref * exp(-E2_over_R * d) * cB)
        return (-r1, r1 - r2, r2, q1 * r1 + q2 * r2 + ua * (u_cell[0] - T))

    return f, u_cell


def rhs(t: float, x: Sequence[float], u: float, p: ModelParams,
        correction: RateCorrection | None = None) -> State:
    """Right-hand side dx/dt of the batch reactor.

    t [s]; x = (c_A, c_B, c_C [mol/m3], T [K]); u = jacket temperature T_j [K]; p the parameters.
    Returns (dc_A/dt, dc_B/dt, dc_C/dt [mol/(m3*s)], dT/dt [K/s]).
    """
    return derivatives(t, x, u, coefficients(p), correction)


def isothermal_derivatives(t: float, x: Sequence[float], dT_dt_K_per_s: float, c: Coefficients,
                           correction: RateCorrection | None = None) -> State:
    """dx/dt when the reactor temperature is imposed (isothermal/temperature-programmed mode).

    The species follow the same balances; T follows the programme (its slope is given), whatever
    the jacket has to do to achieve it.
    """
    r1, r2 = rates(x, c)
    if correction is not None:
        r1, r2 = correction(t, x, r1, r2)
    return (-r1, r1 - r2, r2, dT_dt_K_per_s)


class RateMultipliers:
    """A rate correction that scales the two rates by constant factors: r_i -> f_i * r_i.

    The hybrid twin evaluates its learned correction once per communication step and holds it
    over the step with this class (the ONNX model is too costly to call inside every stage).
    """

    __slots__ = ("f1", "f2")

    def __init__(self, f1: float = 1.0, f2: float = 1.0) -> None:
        self.f1 = float(f1)
        self.f2 = float(f2)

    def __call__(self, t: float, x: Sequence[float], r1: float, r2: float) -> tuple[float, float]:
        return self.f1 * r1, self.f2 * r2

    def __repr__(self) -> str:
        return f"RateMultipliers(f1={self.f1!r}, f2={self.f2!r})"


def heat_release_W(x: Sequence[float], p: ModelParams, r: tuple[float, float] | None = None) -> float:
    """Heat released by the reactions [W] at state x (mechanistic rates unless r is given)."""
    r1, r2 = r if r is not None else rates(x, coefficients(p))
    k = p.kinetics
    return p.reactor.volume_m3 * (-k.dH1_J_per_mol * r1 - k.dH2_J_per_mol * r2)
