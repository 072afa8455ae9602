"""The physical features a rate correction may use, declared once (name, SI unit, meaning).

A feature is one entry of the raw vector (t_s, c_A, c_B, c_C, T) the hybrid twin has at every
communication step: time in batch and the twin's own state. Derived quantities (1/T, products of
concentrations...) belong inside the estimator's pipeline, so that the exported ONNX graph contains
them and the runtime stays a plain gather.

The jacket temperature is deliberately *not* a feature: it enters the rates only through T, and a
correction that saw it could learn the plant's heat-transfer drift (UA fouling), which is not a rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin_core.errors import ParameterError


@dataclass(frozen=True)
class Feature:
    """One model input: ``index`` into the raw vector (t_s, c_A, c_B, c_C, T)."""

    name: str
    unit: str
    description: str
    index: int


FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature("t_s", "s", "time since the start of the batch", 0),
    Feature("c_A_mol_per_m3", "mol/m3", "concentration of A (twin state)", 1),
    Feature("c_B_mol_per_m3", "mol/m3", "concentration of B, the product (twin state)", 2),
    Feature("c_C_mol_per_m3", "mol/m3", "concentration of C, the impurity (twin state)", 3),
    Feature("T_K", "K", "reactor temperature (twin state)", 4),
)}

DEFAULT_FEATURES: tuple[str, ...] = ("T_K", "c_A_mol_per_m3", "c_B_mol_per_m3", "c_C_mol_per_m3")
"""What the shipped correction uses: the state the rates depend on. Time in batch is available but
left out by default: rates depend on the state, not on the clock, and a clock feature breaks on a
held or re-timed batch (docs/ml.md)."""


def check_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a feature list (known names, no repeats) and return it as a tuple."""
    names = tuple(names)
    if not names:
        raise ParameterError("features", names, "needs at least one feature")
    for n in names:
        if n not in FEATURES:
            raise ParameterError("features", n, f"unknown feature; expected some of {sorted(FEATURES)}")
    if len(set(names)) != len(names):
        raise ParameterError("features", names, "a feature is listed twice")
    return names


def indices(names: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of the named features in the raw vector (t_s, c_A, c_B, c_C, T)."""
    return tuple(FEATURES[n].index for n in check_names(names))


def units(names: tuple[str, ...]) -> tuple[str, ...]:
    """SI units of the named features."""
    return tuple(FEATURES[n].unit for n in check_names(names))


def feature_matrix(names: tuple[str, ...], t_s: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Feature rows [N, len(names)] (float64) for times t_s [s] (N,) and twin states x (N, 4)."""
    t = np.asarray(t_s, dtype=np.float64).reshape(-1, 1)
    xs = np.asarray(x, dtype=np.float64)
    if xs.ndim != 2 or xs.shape[1] != 4 or xs.shape[0] != t.shape[0]:
        raise ParameterError("x", xs.shape, f"must be ({t.shape[0]}, 4): one state (c_A, c_B, c_C, T) per time")
    raw = np.hstack([t, xs])
    return np.ascontiguousarray(raw[:, list(indices(names))])
