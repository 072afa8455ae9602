"""Layout of the soft sensor's state and what it publishes: the augmented state vector (indices,
names, units), one scan's :class:`Estimate` and an accepted :class:`LabResult`.

State (n = 9), SI units:
    x = (c_A, c_B, c_C [mol/m3], T [K], UA_factor, k1_factor, k2_factor, lambda_1, lambda_2 [1])
The three factors are random-walk biases: UA_factor scales the heat-transfer coefficient (the
plant's jacket fouls), k1_factor and k2_factor scale the two reaction rates on top of the learned
correction (raw-material activity, catalyst, what the correction missed). lambda_1, lambda_2 are
the trust weights on the learned correction (twin_core.hybrid: r_i = k_i_factor r_i,phys
exp(lambda_i g_i)): prior 1 (the correction as trained), pulled toward 0 (physics) or beyond by
the lab assays when the correction does not fit the plant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from twin_core.estimation.forecast import Forecast
from twin_core.estimation.health import SoftSensorAlarm

N_STATES = 9
IA, IB, IC, IT, IUA, IK1, IK2, IL1, IL2 = range(N_STATES)
STATE_NAMES = ("c_A", "c_B", "c_C", "T", "UA_factor", "k1_factor", "k2_factor", "lambda_1", "lambda_2")
STATE_UNITS = ("mol/m3", "mol/m3", "mol/m3", "K", "1", "1", "1", "1", "1")
# The model's Jacobian columns (twin_core.model.JACOBIAN_VARIABLES) are the first seven, in this
# order (tests/test_estimation_jacobian.py checks it); the two trust weights follow.
Z95 = 1.959963984540054
"""Two-sided 95 % quantile of the standard normal distribution."""


class Estimate(NamedTuple):
    """The soft sensor's output at one scan (SI units; see STATE_NAMES for the order of x and std).

    ``health``: 0 good, 1 warning (innovation test failing, a lab assay far off, or the learned
    correction outside its domain), 2 alarm (any bit of ``alarms``). A NamedTuple: one is built
    every scan, and it is immutable and cheap.
    """

    t_s: float
    x: tuple[float, ...]
    std: tuple[float, ...]
    T_innovation_K: float        # last temperature innovation (filter step), measured - predicted
    nis: float                   # its normalised square
    nis_window_mean: float       # mean NIS over the health window (1 when consistent)
    health: int
    alarms: SoftSensorAlarm
    in_domain: bool              # the learned correction was inside its training domain
    T_used: bool                 # False while a sensor fault keeps the temperature out of the filter
    forecast: Forecast | None = None

    @property
    def c_A(self) -> float:
        return self.x[IA]

    @property
    def c_B(self) -> float:
        return self.x[IB]

    @property
    def c_C(self) -> float:
        return self.x[IC]

    @property
    def T_K(self) -> float:
        return self.x[IT]

    @property
    def UA_factor(self) -> float:
        return self.x[IUA]

    @property
    def k1_factor(self) -> float:
        return self.x[IK1]

    @property
    def k2_factor(self) -> float:
        return self.x[IK2]

    @property
    def lambda_1(self) -> float:
        """Trust weight on the correction of r1 [1] (1: as trained, 0: physics)."""
        return self.x[IL1]

    @property
    def lambda_2(self) -> float:
        """Trust weight on the correction of r2 [1]."""
        return self.x[IL2]

    def interval95(self, i: int) -> tuple[float, float]:
        """95 % interval of state i (concentrations and factors clipped at 0; T and the trust
        weights, which may be negative, not)."""
        lo, hi = self.x[i] - Z95 * self.std[i], self.x[i] + Z95 * self.std[i]
        return (max(0.0, lo) if i not in (IT, IL1, IL2) else lo), hi

    def as_dict(self) -> dict[str, float]:
        """Flat mapping name -> value, with ``<name>_std`` (what a host publishes)."""
        out: dict[str, float] = {"t_s": self.t_s}
        for name, v, s in zip(STATE_NAMES, self.x, self.std, strict=True):
            out[name] = v
            out[f"{name}_std"] = s
        out.update(T_innovation_K=self.T_innovation_K, nis=self.nis, nis_window_mean=self.nis_window_mean,
                   health=float(self.health), alarms=float(int(self.alarms)), in_domain=float(self.in_domain),
                   T_used=float(self.T_used))
        return out


@dataclass(frozen=True, slots=True)
class LabResult:
    """An accepted lab assay: concentrations [mol/m3] of the sample drawn at sample_time_s [s]."""

    sample_time_s: float
    c_B_mol_per_m3: float
    c_C_mol_per_m3: float
    arrival_time_s: float

    def to_plain(self) -> dict[str, float]:
        return {"sample_time_s": self.sample_time_s, "c_B_mol_per_m3": self.c_B_mol_per_m3,
                "c_C_mol_per_m3": self.c_C_mol_per_m3, "arrival_time_s": self.arrival_time_s}

    @classmethod
    def from_plain(cls, d: dict) -> LabResult:
        return cls(float(d["sample_time_s"]), float(d["c_B_mol_per_m3"]), float(d["c_C_mol_per_m3"]),
                   float(d["arrival_time_s"]))
