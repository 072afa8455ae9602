"""Model parameters: frozen, validated dataclasses with SI units in every field name.

The defaults describe a pharmaceutical API step (A -> B -> C, B the product, C the impurity) in a
~2 m3 glass-lined jacketed vessel; docs/model.md gives the rationale for each value.
Arrhenius constants are written around a reference temperature T_ref_K:
    k_i(T) = k_i_ref * exp(-E_i/R * (1/T - 1/T_ref))
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.validate import T_MAX_K, T_MIN_K  # noqa: F401  (re-exported: part of this module's API)
from twin_core.validate import non_negative as _non_negative
from twin_core.validate import number as _check_number
from twin_core.validate import positive as _positive
from twin_core.validate import temperature as _temperature

R_J_PER_MOL_K = 8.314462618
"""Molar gas constant [J/(mol*K)]."""

@dataclass(frozen=True)
class Kinetics:
    """Consecutive first-order reactions A -> B (1) and B -> C (2)."""

    k1_ref_per_s: float = 1.85e-4
    k2_ref_per_s: float = 5.5e-5
    T_ref_K: float = 353.15
    E1_J_per_mol: float = 70.0e3
    E2_J_per_mol: float = 100.0e3
    dH1_J_per_mol: float = -80.0e3
    dH2_J_per_mol: float = -60.0e3

    def __post_init__(self) -> None:
        _positive("kinetics.k1_ref_per_s", self.k1_ref_per_s)
        _positive("kinetics.k2_ref_per_s", self.k2_ref_per_s)
        _temperature("kinetics.T_ref_K", self.T_ref_K)
        _positive("kinetics.E1_J_per_mol", self.E1_J_per_mol)
        _positive("kinetics.E2_J_per_mol", self.E2_J_per_mol)
        _check_number("kinetics.dH1_J_per_mol", self.dH1_J_per_mol)
        _check_number("kinetics.dH2_J_per_mol", self.dH2_J_per_mol)


@dataclass(frozen=True)
class Reactor:
    """Vessel and heat transfer to the jacket."""

    volume_m3: float = 2.0
    density_kg_per_m3: float = 950.0
    heat_capacity_J_per_kg_K: float = 2000.0
    UA_W_per_K: float = 1500.0

    def __post_init__(self) -> None:
        _positive("reactor.volume_m3", self.volume_m3)
        _positive("reactor.density_kg_per_m3", self.density_kg_per_m3)
        _positive("reactor.heat_capacity_J_per_kg_K", self.heat_capacity_J_per_kg_K)
        # UA = 0 is legitimate: the adiabatic case.
        _non_negative("reactor.UA_W_per_K", self.UA_W_per_K)

    @property
    def heat_capacity_J_per_K(self) -> float:
        """Total heat capacity of the charge, rho * c_p * V [J/K]."""
        return self.density_kg_per_m3 * self.heat_capacity_J_per_kg_K * self.volume_m3


@dataclass(frozen=True)
class Charge:
    """Initial charge: concentrations and temperature at t = 0."""

    c_A0_mol_per_m3: float = 1000.0
    c_B0_mol_per_m3: float = 0.0
    c_C0_mol_per_m3: float = 0.0
    T0_K: float = 298.15

    def __post_init__(self) -> None:
        _positive("charge.c_A0_mol_per_m3", self.c_A0_mol_per_m3)
        _non_negative("charge.c_B0_mol_per_m3", self.c_B0_mol_per_m3)
        _non_negative("charge.c_C0_mol_per_m3", self.c_C0_mol_per_m3)
        _temperature("charge.T0_K", self.T0_K)

    @property
    def x0(self) -> tuple[float, float, float, float]:
        """Initial state (c_A, c_B, c_C [mol/m3], T [K])."""
        return (float(self.c_A0_mol_per_m3), float(self.c_B0_mol_per_m3),
                float(self.c_C0_mol_per_m3), float(self.T0_K))


@dataclass(frozen=True)
class ModelParams:
    """All parameters of the mechanistic model."""

    kinetics: Kinetics = field(default_factory=Kinetics)
    reactor: Reactor = field(default_factory=Reactor)
    charge: Charge = field(default_factory=Charge)

    def __post_init__(self) -> None:
        for name, cls in (("kinetics", Kinetics), ("reactor", Reactor), ("charge", Charge)):
            if not isinstance(getattr(self, name), cls):
                raise ParameterTypeError(name, getattr(self, name), cls.__name__)

    def replace(self, **changes: float) -> ModelParams:
        """Copy with changed leaf values given as ``section__field=value`` or unique ``field=value``."""
        sections: dict[str, dict[str, float]] = {}
        for key, value in changes.items():
            section, name = _locate(key)
            sections.setdefault(section, {})[name] = value
        return ModelParams(**{s: dataclasses.replace(getattr(self, s), **kv) for s, kv in sections.items()},
                           **{s: getattr(self, s) for s in ("kinetics", "reactor", "charge") if s not in sections})

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
    kwargs: dict[str, Any] = {}
    for section, values in data.items():
        if section not in _SECTIONS:
            raise ParameterError(section, values, f"unknown section in {source}; expected one of {sorted(_SECTIONS)}")
        if not isinstance(values, Mapping):
            raise ParameterTypeError(section, values, "a table")
        known = {f.name for f in fields(_SECTIONS[section])}
        for key in values:
            if key not in known:
                raise ParameterError(f"{section}.{key}", values[key], f"unknown key in {source}; expected one of {sorted(known)}")
        kwargs[section] = _SECTIONS[section](**values)
    return ModelParams(**kwargs)


def load_params(path: str | Path) -> ModelParams:
    """Load parameters from a TOML file with ``[kinetics]``, ``[reactor]``, ``[charge]`` tables.

    Missing keys take their defaults; unknown keys raise ParameterError.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError(str(p), None, f"not valid TOML: {exc}") from exc
    return params_from_mapping(data, source=str(p))
