"""Model parameters: frozen, validated dataclasses with SI units in every field name.

The defaults describe a pharmaceutical API step (A -> B -> C, B the product, C the impurity) in a
~2 m3 glass-lined jacketed vessel; docs/model.md gives the rationale for each value.
Arrhenius constants are written around a reference temperature T_ref_K:
    k_i(T) = k_i_ref * exp(-E_i/R * (1/T - 1/T_ref))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from twin_core.errors import ParameterError
from twin_core.validate import T_MAX_K, T_MIN_K, from_mapping, load_toml, number, spec, validated  # noqa: F401  (re-exported: part of this module's API)

R_J_PER_MOL_K = 8.314462618
"""Molar gas constant [J/(mol*K)]."""


@validated("kinetics")
class Kinetics:
    """Consecutive first-order reactions A -> B (1) and B -> C (2)."""

    k1_ref_per_s: float = spec(1.85e-4, unit="1/s", gt=0.0)
    k2_ref_per_s: float = spec(5.5e-5, unit="1/s", gt=0.0)
    T_ref_K: float = spec(353.15, unit="K", kind="temperature")
    E1_J_per_mol: float = spec(70.0e3, unit="J/mol", gt=0.0)
    E2_J_per_mol: float = spec(100.0e3, unit="J/mol", gt=0.0)
    dH1_J_per_mol: float = spec(-80.0e3, unit="J/mol")
    dH2_J_per_mol: float = spec(-60.0e3, unit="J/mol")


@validated("reactor")
class Reactor:
    """Vessel and heat transfer to the jacket."""

    volume_m3: float = spec(2.0, unit="m3", gt=0.0)
    density_kg_per_m3: float = spec(950.0, unit="kg/m3", gt=0.0)
    heat_capacity_J_per_kg_K: float = spec(2000.0, unit="J/(kg.K)", gt=0.0)
    UA_W_per_K: float = spec(1500.0, unit="W/K", ge=0.0)  # UA = 0 is legitimate: the adiabatic case

    @property
    def heat_capacity_J_per_K(self) -> float:
        """Total heat capacity of the charge, rho * c_p * V [J/K]."""
        return self.density_kg_per_m3 * self.heat_capacity_J_per_kg_K * self.volume_m3


@validated("charge")
class Charge:
    """Initial charge: concentrations and temperature at t = 0."""

    c_A0_mol_per_m3: float = spec(1000.0, unit="mol/m3", gt=0.0)
    c_B0_mol_per_m3: float = spec(0.0, unit="mol/m3", ge=0.0)
    c_C0_mol_per_m3: float = spec(0.0, unit="mol/m3", ge=0.0)
    T0_K: float = spec(298.15, unit="K", kind="temperature")

    @property
    def x0(self) -> tuple[float, float, float, float]:
        """Initial state (c_A, c_B, c_C [mol/m3], T [K])."""
        return (float(self.c_A0_mol_per_m3), float(self.c_B0_mol_per_m3),
                float(self.c_C0_mol_per_m3), float(self.T0_K))


SCALES = ("log", "linear")


@validated("covariance")
class ParameterCovariance:
    """What an estimate (``twin fit``) knows of its parameters: the estimate of each named parameter
    on its scale (``log``: ln of the value; ``linear``: the value in its SI unit) and the covariance
    matrix of those scaled estimates; a design space samples from it. Names are ModelParams fields
    (``k1_ref_per_s`` ...) or ``fouling_loss_per_batch`` (UA = UA_clean (1 - loss)^n after n batches).
    """

    names: tuple[str, ...] = spec((), kind=tuple)
    scales: tuple[str, ...] = spec((), kind=tuple)
    estimate: tuple[float, ...] = spec((), kind=tuple)
    matrix: tuple[tuple[float, ...], ...] = spec((), kind=tuple)
    dof: int = spec(0, kind="int", ge=0)

    def __post_init__(self) -> None:
        n = len(self.names)
        object.__setattr__(self, "matrix", tuple(tuple(row) if isinstance(row, (list, tuple)) else row
                                                 for row in self.matrix))
        for name in ("scales", "estimate", "matrix"):
            if len(getattr(self, name)) != n:
                raise ParameterError(f"covariance.{name}", getattr(self, name), f"needs {n} entries, one per name")
        for i, sc in enumerate(self.scales):
            if sc not in SCALES:
                raise ParameterError(f"covariance.scales[{i}]", sc, f"must be one of {SCALES}")
        for i, v in enumerate(self.estimate):
            number(f"covariance.estimate[{i}]", v)
        for i, row in enumerate(self.matrix):
            if not isinstance(row, tuple) or len(row) != n:
                raise ParameterError(f"covariance.matrix[{i}]", row, f"must be a row of {n} numbers")
            for j, v in enumerate(row):
                number(f"covariance.matrix[{i}][{j}]", v)
        for i in range(n):
            if self.matrix[i][i] < 0.0:
                raise ParameterError(f"covariance.matrix[{i}][{i}]", self.matrix[i][i], "a variance must be >= 0")
            for j in range(i):
                if abs(self.matrix[i][j] - self.matrix[j][i]) > 1e-9 * math.sqrt(
                        abs(self.matrix[i][i] * self.matrix[j][j])) + 1e-300:
                    raise ParameterError(f"covariance.matrix[{i}][{j}]", self.matrix[i][j], "the matrix must be symmetric")


@validated()
class ModelParams:
    """All parameters of the mechanistic model (``covariance``: optional, what an estimate knows of them)."""

    kinetics: Kinetics = spec(kind=Kinetics, default_factory=Kinetics)
    reactor: Reactor = spec(kind=Reactor, default_factory=Reactor)
    charge: Charge = spec(kind=Charge, default_factory=Charge)
    covariance: ParameterCovariance | None = spec(None, kind=ParameterCovariance, optional=True)

    def replace(self, **changes: float) -> ModelParams:
        """Copy with changed leaf values given as ``section__field=value`` or unique ``field=value``."""
        sections: dict[str, dict[str, float]] = {}
        for key, value in changes.items():
            section, name = _locate(key)
            sections.setdefault(section, {})[name] = value
        return ModelParams(**{s: dataclasses.replace(getattr(self, s), **kv) for s, kv in sections.items()},
                           **{s: getattr(self, s) for s in ("kinetics", "reactor", "charge") if s not in sections},
                           covariance=self.covariance)

    def flat(self) -> dict[str, float]:
        """Every leaf parameter as ``{field_name: value}`` (field names are unique across sections)."""
        out: dict[str, float] = {}
        for section in ("kinetics", "reactor", "charge"):
            obj = getattr(self, section)
            for f in fields(obj):
                out[f.name] = float(getattr(obj, f.name))
        return out


_SECTIONS = {"kinetics": Kinetics, "reactor": Reactor, "charge": Charge}


def _locate(key: str) -> tuple[str, str]:
    if "__" in key:
        section, name = key.split("__", 1)
        if section in _SECTIONS and name in {f.name for f in fields(_SECTIONS[section])}:
            return section, name
        raise ParameterError(key, None, "unknown parameter")
    for section, cls in _SECTIONS.items():
        if key in {f.name for f in fields(cls)}:
            return section, key
    raise ParameterError(key, None, "unknown parameter")


def params_from_mapping(data: Mapping[str, Any], source: str = "<mapping>") -> ModelParams:
    """Build ModelParams from a nested mapping ``{section: {field: value}}``; unknown keys are rejected."""
    return from_mapping(ModelParams, data, source)


def load_params(path: str | Path) -> ModelParams:
    """Load parameters from a TOML file with ``[kinetics]``, ``[reactor]``, ``[charge]`` tables.

    Missing keys take their defaults; unknown keys raise ParameterError.
    """
    return params_from_mapping(load_toml(path), source=str(path))
