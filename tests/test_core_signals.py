"""twin_core.signals as a package: one declaration per name, its declarations' checks, its place in the kernel."""

from __future__ import annotations

import ast
import importlib

import pytest
from conftest import ROOT

from twin_core.errors import ParameterError
from twin_core.signals.table import Signal
from twin_core.signals.twin import TWIN_SIGNALS, by_name

SUBMODULES = ("table", "twin", "modbus", "plc", "text", "runtime")


def _public_definitions(path) -> set[str]:
    """Names a module defines at top level (not imports), without a leading underscore."""
    out: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            out |= {e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return {n for n in out if not n.startswith("_")}


def test_every_public_name_is_declared_in_exactly_one_submodule() -> None:
    seen: dict[str, str] = {}
    for sub in SUBMODULES:
        mod = importlib.import_module(f"twin_core.signals.{sub}")
        for name in _public_definitions(ROOT / "twin_core" / "signals" / f"{sub}.py"):
            assert name not in seen, f"{name} declared in both {seen[name]} and {sub}"
            seen[name] = sub
            assert hasattr(mod, name)


def test_the_twin_table_loads_neither_the_plc_interface_nor_its_text_views() -> None:
    """What the FMU imports (twin.py and what it needs) stays apart from the PLC map."""
    import subprocess
    import sys

    probe = ("import sys, twin_core.signals.twin; "
             "print(sorted(m for m in sys.modules if m.startswith('twin_core.signals')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == str(["twin_core.signals", "twin_core.signals.modbus", "twin_core.signals.table",
                                      "twin_core.signals.twin"])


def test_the_signal_table_imports_only_the_kernel() -> None:
    """twin_core.signals and twin_core.clock are kernel: nothing from plant_sim, gateways, fmu, ml_onnx,
    and no I/O or CLI packages."""
    forbidden = {"plant_sim", "gateways", "fmu", "ml_onnx", "argparse", "socket", "asyncua", "pymodbus",
                 "scipy", "matplotlib", "tqdm"}
    files = sorted((ROOT / "twin_core" / "signals").glob("*.py")) + [ROOT / "twin_core" / "clock.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path.name} imports {n}"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"unit": "furlong"}, "x.unit"),
    ({"unit": "K", "display_unit": "h"}, "x.display_unit"),
    ({"unit": "K", "display_unit": "parsec"}, "x.display_unit"),
    ({"unit": "K", "min": 2.0, "max": 1.0}, "x.min"),
])
def test_bad_signal_declarations_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ParameterError) as info:
        Signal("x", role="output", description="d", **kwargs)
    assert info.value.field == field


def test_twin_table_is_unchanged_by_the_split() -> None:
    """The FMU's variables come from TWIN_SIGNALS: same names, same order as before the package split
    (plus, for issue 10, T_measured_valid: the estimator's open loop while the PLC link is down, and
    impurity_forecast; for issue 12, the trust weights lambda_1, lambda_2 and their estimates and std,
    and the six parameters of the estimator's plant prior after sigma_rate_rel)."""
    names = [s.name for s in TWIN_SIGNALS]
    assert len(names) == len(set(names)) == 55
    i = names.index("sigma_rate_rel")
    assert names[i + 1:i + 7] == ["UA_factor0", "sigma_UA_factor0", "sigma_k1_factor0", "sigma_k2_factor0",
                                  "sigma_lambda_1", "sigma_lambda_2"]
    assert names[names.index("T_measured") + 1] == "T_measured_valid"
    assert names[:3] == ["k1_ref", "k2_ref", "T_ref"] and names[-1] == "model_health"
    assert by_name()["T"].display_unit == "degC"
    assert all(s.modbus is None for s in TWIN_SIGNALS)
