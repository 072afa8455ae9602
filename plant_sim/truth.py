"""The plant's truth: the hidden physics the twin has to learn to match.

State x = (c_A, c_B, c_C [mol/m3], T [K], T_j [K]); controller output u in [-1, 1] held over a scan.

    r1 = a * k1(T) c_A            A -> B, a = raw-material activity of this batch's charge
    r2 = k2(T) c_B                B -> C
    r3 = k3(T) c_B c_C            B -> C catalysed by C   (the pathway twin_core does not model)
    dc_A/dt = -r1,  dc_B/dt = r1 - r2 - r3,  dc_C/dt = r2 + r3          (sum conserved)
    rho c_p V dT/dt  = V (-dH1 r1 - dH2 (r2 + r3)) + UA (T_j - T) + Q_runaway
    C_j dT_j/dt      = Q_utility(u, T_j) - UA (T_j - T) - UA_amb (T_j - T_amb)

k_i(T) = k_i,ref exp(-E_i/R (1/T - 1/T_ref)), the Arrhenius form of twin_core.model. UA is a
parameter of the batch (fouling changes it between batches). With the jacket dynamics switched
off, T_j is not integrated: it is set to the jacket setpoint at each scan (an ideal jacket), and
with every mismatch off the first four derivatives are exactly twin_core.model.rhs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from plant_sim.config import PlantConfig
from twin_core.errors import ParameterError
from twin_core.integrator import Stats, Tolerance, integrate
from twin_core.params import R_J_PER_MOL_K

TruthState = tuple[float, float, float, float, float]
"""x = (c_A, c_B, c_C [mol/m3], T [K], T_j [K])."""

TRUTH_TOLERANCE = Tolerance(rtol=1e-7, atol=(1e-6, 1e-6, 1e-6, 1e-6, 1e-6))
"""Integration tolerances of the truth: the truth is the reference, so tighter than any sensor."""


class TruthCoefficients(NamedTuple):
    """Constants of the truth right-hand side, hoisted out of the hot path."""

    k1_ref: float
    k2_ref: float
    k3_ref: float          # 0 when the side reaction is switched off
    inv_T_ref: float
    E1_over_R: float
    E2_over_R: float
    E3_over_R: float
    q1: float              # -dH1 / (rho c_p)  [K m3/mol]
    q2: float              # -dH2 / (rho c_p)
    inv_C_reactor: float   # 1 / (rho c_p V)   [K/J]
    jacket_dynamics: bool
    inv_C_jacket: float    # 1 / C_j           [K/J]
    kA_heat: float
    T_hot: float
    kA_cool: float
    T_cold: float
    UA_ambient: float
    T_ambient: float


def truth_coefficients(cfg: PlantConfig) -> TruthCoefficients:
    """The truth's constants for configuration ``cfg`` (honouring its mismatch switches)."""
    m, v = cfg.mismatch, cfg.vessel
    kin = cfg.kinetics if m.kinetics else None
    k1 = kin.k1_ref_per_s if kin else v.kinetics.k1_ref_per_s
    k2 = kin.k2_ref_per_s if kin else v.kinetics.k2_ref_per_s
    E1 = kin.E1_J_per_mol if kin else v.kinetics.E1_J_per_mol
    E2 = kin.E2_J_per_mol if kin else v.kinetics.E2_J_per_mol
    rho_cp = v.reactor.density_kg_per_m3 * v.reactor.heat_capacity_J_per_kg_K
    j = cfg.jacket
    return TruthCoefficients(
        k1_ref=k1, k2_ref=k2,
        k3_ref=cfg.side_reaction.k3_ref_m3_per_mol_s if m.side_reaction else 0.0,
        inv_T_ref=1.0 / v.kinetics.T_ref_K,
        E1_over_R=E1 / R_J_PER_MOL_K, E2_over_R=E2 / R_J_PER_MOL_K,
        E3_over_R=cfg.side_reaction.E3_J_per_mol / R_J_PER_MOL_K,
        q1=-v.kinetics.dH1_J_per_mol / rho_cp, q2=-v.kinetics.dH2_J_per_mol / rho_cp,
        inv_C_reactor=1.0 / (rho_cp * v.reactor.volume_m3),
        jacket_dynamics=m.jacket_dynamics,
        inv_C_jacket=1.0 / j.heat_capacity_J_per_K,
        kA_heat=j.kA_heat_W_per_K, T_hot=j.T_hot_supply_K,
        kA_cool=j.kA_cool_W_per_K, T_cold=j.T_cold_supply_K,
        UA_ambient=j.UA_ambient_W_per_K, T_ambient=j.T_ambient_K,
    )


def truth_rates(x: Sequence[float], activity: float, c: TruthCoefficients) -> tuple[float, float, float]:
    """True reaction rates (r1, r2, r3) [mol/(m3*s)] at state x."""
    cA, cB, cC, T = x[0], x[1], x[2], x[3]
    d = 1.0 / T - c.inv_T_ref
    r1 = activity * c.k1_ref * math.exp(-c.E1_over_R * d) * cA
    r2 = c.k2_ref * math.exp(-c.E2_over_R * d) * cB
    r3 = c.k3_ref * math.exp(-c.E3_over_R * d) * cB * cC if c.k3_ref else 0.0
    return r1, r2, r3


def derivatives(x: Sequence[float], u: float, UA_W_per_K: float, activity: float, Q_extra_W: float,
                c: TruthCoefficients) -> TruthState:
    """dx/dt of the truth [mol/(m3*s), K/s]: the hot-path form (see the module docstring).

    u is the controller output [-1, 1] (ignored without jacket dynamics: dT_j/dt = 0 then),
    Q_extra_W a heat input into the charge [W] (the runaway hook).
    """
    cA, cB, cC, T, Tj = x
    d = 1.0 / T - c.inv_T_ref
    r1 = activity * c.k1_ref * math.exp(-c.E1_over_R * d) * cA
    r2 = c.k2_ref * math.exp(-c.E2_over_R * d) * cB
    r23 = r2 + c.k3_ref * math.exp(-c.E3_over_R * d) * cB * cC if c.k3_ref else r2
    q_wall = UA_W_per_K * (Tj - T)  # [W] from jacket into the charge
    dT = c.q1 * r1 + c.q2 * r23 + (q_wall + Q_extra_W) * c.inv_C_reactor
    if c.jacket_dynamics:
        if u > 0.0:
            q_util = min(u, 1.0) * c.kA_heat * (c.T_hot - Tj)
        elif u < 0.0:
            q_util = max(u, -1.0) * c.kA_cool * (Tj - c.T_cold)
        else:
            q_util = 0.0
        dTj = (q_util - q_wall - c.UA_ambient * (Tj - c.T_ambient)) * c.inv_C_jacket
    else:
        dTj = 0.0
    return (-r1, r1 - r23, r23, dT, dTj)


@dataclass(frozen=True)
class TruthParams:
    """Everything the truth's right-hand side needs besides state and input."""

    coefficients: TruthCoefficients
    UA_W_per_K: float
    activity: float = 1.0
    Q_extra_W: float = 0.0


def rhs(t: float, x: Sequence[float], u: float, p: TruthParams) -> TruthState:
    """Right-hand side dx/dt of the plant's truth (t [s] unused: the truth is autonomous given u)."""
    return derivatives(x, u, p.UA_W_per_K, p.activity, p.Q_extra_W, p.coefficients)


def reduced_rhs_factory(c: TruthCoefficients, UA_W_per_K: float, activity: float, Q_extra_W: float,
                        c_total_mol_per_m3: float, u_cell: list[float]) -> Callable[[float, Sequence[float]], tuple]:
    """f(t, z) for the reduced state z = (c_A, c_B, T, T_j), c_C = c_total - c_A - c_B.

    The species balances conserve c_A + c_B + c_C, so c_C carries no information of its own;
    dropping it gives a four-state system, which twin_core's integrator runs on its inlined hot
    path (about twice as fast as its general loop). Same equations as :func:`derivatives`, with
    every constant bound to a local name; the controller output is read from ``u_cell[0]``.
    """
    k1 = activity * c.k1_ref
    k2, k3 = c.k2_ref, c.k3_ref
    inv_T_ref, e1, e2, e3 = c.inv_T_ref, c.E1_over_R, c.E2_over_R, c.E3_over_R
    q1, q2, inv_Cr = c.q1, c.q2, c.inv_C_reactor
    dyn, inv_Cj = c.jacket_dynamics, c.inv_C_jacket
    kA_heat, T_hot, kA_cool, T_cold = c.kA_heat, c.T_hot, c.kA_cool, c.T_cold
    UA_amb, T_amb = c.UA_ambient, c.T_ambient
    UA, Q, c_tot = UA_W_per_K, Q_extra_W, c_total_mol_per_m3
    exp = math.exp

    def f(_t: float, z: Sequence[float]) -> tuple[float, float, float, float]:
        cA, cB, T, Tj = z
        d = 1.0 / T - inv_T_ref
        r1 = k1 * exp(-e1 * d) * cA
        r23 = k2 * exp(-e2 * d) * cB
        if k3:
            r23 += k3 * exp(-e3 * d) * cB * (c_tot - cA - cB)
        q_wall = UA * (Tj - T)
        dT = q1 * r1 + q2 * r23 + (q_wall + Q) * inv_Cr
        if dyn:
            u = u_cell[0]
            if u > 0.0:
                q_util = (u if u < 1.0 else 1.0) * kA_heat * (T_hot - Tj)
            elif u < 0.0:
                q_util = (u if u > -1.0 else -1.0) * kA_cool * (Tj - T_cold)
            else:
                q_util = 0.0
            dTj = (q_util - q_wall - UA_amb * (Tj - T_amb)) * inv_Cj
        else:
            dTj = 0.0
        return (-r1, r1 - r23, dT, dTj)

    return f


class Truth:
    """The plant's hidden state, advanced scan by scan with the controller output held.

    Attributes read by the PLC and by scoring: ``x`` (TruthState), ``UA_W_per_K``, ``activity``,
    ``Q_extra_W`` (assign them freely: the right-hand side is rebuilt when they change).
    Integration runs on the reduced four-state form (:func:`reduced_rhs_factory`); c_C is
    recovered from the conserved total.
    """

    def __init__(self, cfg: PlantConfig, x0: Sequence[float], UA_W_per_K: float,
                 tolerance: Tolerance = TRUTH_TOLERANCE) -> None:
        self.c = truth_coefficients(cfg)
        self.UA_W_per_K = float(UA_W_per_K)
        self.activity = 1.0
        self.Q_extra_W = 0.0
        if len(tolerance.atol) != 5:
            raise ParameterError("tolerance.atol", tolerance.atol, "needs five entries (c_A, c_B, c_C, T, T_j)")
        self.tolerance = tolerance
        a = tolerance.atol
        self._tol4 = Tolerance(rtol=tolerance.rtol, atol=(a[0], a[1], a[3], a[4]))
        self.stats = Stats()
        self._u_cell = [0.0]
        self._key: tuple | None = None
        self._f: Callable[[float, Sequence[float]], tuple] | None = None
        self._h = 0.0
        self.x = tuple(float(v) for v in x0)  # type: ignore[assignment]

    @property
    def x(self) -> TruthState:
        """(c_A, c_B, c_C [mol/m3], T [K], T_j [K])."""
        z = self._z
        return (z[0], z[1], self._c_total - z[0] - z[1], z[2], z[3])

    @x.setter
    def x(self, value: Sequence[float]) -> None:
        cA, cB, cC, T, Tj = (float(v) for v in value)
        self._c_total = cA + cB + cC
        self._z = (cA, cB, T, Tj)
        self._h = 0.0  # a jump in the state: let the step-size controller start afresh

    def advance(self, t_s: float, dt_s: float, u: float) -> None:
        """Integrate from t_s to t_s + dt_s with controller output u held."""
        key = (self.UA_W_per_K, self.activity, self.Q_extra_W, self._c_total)
        if key != self._key or self._f is None:
            self._f = reduced_rhs_factory(self.c, *key, self._u_cell)
            self._key = key
        self._u_cell[0] = u
        h0 = self._h if self._h > 0.0 else dt_s
        self._z, self._h = integrate(self._f, t_s, self._z, t_s + dt_s, self._tol4, h0=h0, stats=self.stats)  # type: ignore[assignment]

    def set_state(self, **values: float) -> None:
        """Overwrite some state components by name (c_A, c_B, c_C, T, T_j), e.g. at a new charge."""
        names = ("c_A", "c_B", "c_C", "T", "T_j")
        x = list(self.x)
        for k, v in values.items():
            x[names.index(k)] = float(v)
        self.x = x
