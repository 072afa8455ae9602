"""One meta-test over every validated configuration class (twin_core.validate.REGISTRY).

Each class declares its rules in its fields' metadata; one checker enforces them. For every class:
every field has a rule (type, range, unit), the loader rejects unknown keys naming them, and for
every field a value of the wrong type, a non-finite number and a value just beyond each bound are
refused with an error that names the field as ``section.field``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest

from ml_onnx.train import TrainConfig
from plant_sim.config import PlantConfig
from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.validate import REGISTRY, from_mapping, rule_of

CONFIG_MODULES = ("twin_core.params", "twin_core.analysis", "twin_core.integrator", "twin_core.estimation", "twin_core.offline.optimize",
                  "plant_sim.config", "ml_onnx.dataset", "ml_onnx.train", "gateways.config")
"""Every module that declares configuration classes (imported so that REGISTRY is complete)."""

EXPECTED = {
    "twin_core.params": {"ModelParams", "Kinetics", "Reactor", "Charge"},
    "twin_core.analysis": {"Economics"},
    "twin_core.integrator": {"Tolerance"},
    "twin_core.estimation.config": {"SoftSensorConfig"},
    "twin_core.offline.optimize": {"OptimizerConfig"},
    "ml_onnx.dataset": {"ReconcileConfig"},
    "ml_onnx.train": {"TrainConfig"},
    "gateways.config": {"RuntimeConfig", "ReactorConfig"},
    "plant_sim.config": {"PlantConfig", "Mismatch", "PlantKinetics", "SideReaction", "Fouling", "Jacket", "Pid",
                         "ChargeVariation", "SensorSpec", "Sensors", "Lab", "Phases", "Alarms", "Runaway",
                         "PlcTiming"},
}
"""Classes that must be validated declaratively (a class dropping out of REGISTRY fails)."""

for _m in CONFIG_MODULES:
    importlib.import_module(_m)

CLASSES = sorted(REGISTRY.items())


def _path(cls: type, name: str) -> str:
    return f"{cls.SECTION}.{name}" if cls.SECTION else name


def test_expected_classes_are_registered() -> None:
    for module, names in EXPECTED.items():
        registered = {c.__qualname__ for c in REGISTRY.values() if c.__module__ == module}
        assert names <= registered, (module, names - registered)


@pytest.mark.parametrize("name,cls", CLASSES, ids=[n for n, _ in CLASSES])
def test_every_field_declares_its_rule(name: str, cls: type) -> None:
    missing = [f.name for f in dataclasses.fields(cls) if f.init and rule_of(f) is None]
    assert not missing, f"{name}: fields without a rule: {missing}"


@pytest.mark.parametrize("name,cls", CLASSES, ids=[n for n, _ in CLASSES])
def test_loader_rejects_unknown_keys(name: str, cls: type) -> None:
    with pytest.raises(ParameterError) as info:
        from_mapping(cls, {"no_such_key": 1.0})
    assert info.value.field == _path(cls, "no_such_key")
    assert "unknown key" in str(info.value)


def _bad_values(rule) -> list[tuple[object, type]]:
    """(value, error class) that ``rule`` must refuse."""
    if isinstance(rule.kind, type):
        return [("a string", ParameterTypeError)]
    if rule.kind == "bool":
        return [(1, ParameterTypeError), ("yes", ParameterTypeError)]
    if rule.kind == "str":
        return [(1.0, ParameterTypeError)]
    out: list[tuple[object, type]] = [("3", ParameterTypeError), (True, ParameterTypeError)]
    if rule.kind == "int":
        out.append((2.5, ParameterTypeError))
    else:
        out += [(math.nan, ParameterError), (math.inf, ParameterError)]
    lo, hi = rule.bounds()
    step = 1 if rule.kind == "int" else None
    if math.isfinite(lo):
        out.append((lo - step if step else (lo if (rule.gt is not None and rule.ge is None) else lo - 1e-9 * max(1.0, abs(lo))), ParameterError))
    if math.isfinite(hi):
        out.append((hi + step if step else (hi if (rule.lt is not None and rule.le is None) else hi + 1e-9 * max(1.0, abs(hi))), ParameterError))
    return out


@pytest.mark.parametrize("name,cls", CLASSES, ids=[n for n, _ in CLASSES])
def test_bad_values_are_refused_naming_the_field(name: str, cls: type) -> None:
    try:
        default = cls()
    except TypeError:
        pytest.fail(f"{name} cannot be built from its defaults")
    checked = 0
    for f in dataclasses.fields(cls):
        rule = rule_of(f)
        if rule is None or not f.init:
            continue
        if rule.optional:
            dataclasses.replace(default, **{f.name: None})  # None is allowed
        for value, exc in _bad_values(rule):
            with pytest.raises(exc) as info:
                dataclasses.replace(default, **{f.name: value})
            assert info.value.field == _path(cls, f.name), (f.name, value)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("build,field", [
    (lambda: TrainConfig(feature_names=("nope",)), "train.feature_names"),
    (lambda: TrainConfig(candidate_names=("nope",)), "train.candidate_names"),
    (lambda: from_mapping(TrainConfig, {"reconcile": {"knot_s": 0.0}}), "train.reconcile.knot_s"),
    (lambda: from_mapping(PlantConfig, {"lab": {"delay_min_s": 3000.0}}), "lab.delay_max_s"),
    (lambda: from_mapping(PlantConfig, {"vessel": {"charge": {"T0_K": 20.0}}}), "vessel.charge.T0_K"),
])
def test_cross_field_and_nested_errors_name_the_field(build, field: str) -> None:
    with pytest.raises(ParameterError) as info:
        build()
    assert info.value.field == field
