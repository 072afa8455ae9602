"""The built FMU as a file: FMPy's validation, the model description generated from the signal
table, the bundled code under a build-unique package, the native binaries' dependencies."""

from __future__ import annotations

import ast
import math
import subprocess
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest
from test_fmu_helpers import VARIANT_IDENTIFIER, FmuBuilds

from fmu.build import BuildError, BuildOptions, vendor_source
from fmu.variables import OUTPUT_BOUNDS, fmi_variables
from twin_core.errors import ParameterError
from twin_core.signals.table import DISPLAY_UNITS, UNITS
from twin_core.signals.twin import TWIN_SIGNALS


@pytest.mark.parametrize("kind", ["physics", "hybrid", "variant", "native_physics", "native_hybrid"])
def test_validate_fmu_finds_no_problem(fmus: FmuBuilds, kind: str) -> None:
    from fmpy.validation import validate_fmu

    assert validate_fmu(str(fmus.fmu(kind))) == []


def _md(fmus: FmuBuilds, kind: str) -> ElementTree.Element:
    with zipfile.ZipFile(fmus.fmu(kind)) as zf:
        return ElementTree.fromstring(zf.read("modelDescription.xml"))


@pytest.mark.parametrize("kind", ["physics", "native_physics"])
def test_variables_are_the_signal_table(fmus: FmuBuilds, kind: str) -> None:
    root = _md(fmus, kind)
    svs = root.findall("ModelVariables/ScalarVariable")
    assert [sv.get("name") for sv in svs] == [s.name for s in TWIN_SIGNALS]
    for sv, sig, var in zip(svs, TWIN_SIGNALS, fmi_variables(), strict=True):
        assert sv.get("description") == sig.description
        assert sv.get("causality") == {"parameter": "parameter", "input": "input", "output": "output"}[sig.role]
        t = sv.find(sig.type)
        assert t is not None, sig.name
        if sig.type == "Real":
            assert t.get("unit") == sig.unit
            assert t.get("displayUnit") == sig.display_unit
            # the signal table's range; outputs the honest bounds of fmu.variables.OUTPUT_BOUNDS
            assert (sig.min, sig.max) == (var.min, var.max) or (sig.role == "output" and sig.name in OUTPUT_BOUNDS)
            assert t.get("min") == (repr(var.min) if math.isfinite(var.min) else None), sig.name
            assert t.get("max") == (repr(var.max) if math.isfinite(var.max) else None), sig.name
            if sig.role in ("parameter", "input"):
                # exact: the same double as the signal table, not 16 significant digits
                assert float(t.get("start")) == sig.start, sig.name
        if sig.role == "output":
            assert sv.get("initial") == "calculated" and t.get("start") is None


def test_temperatures_display_in_degC_and_units_are_defined(fmus: FmuBuilds) -> None:
    root = _md(fmus, "physics")
    units = {u.get("name"): u for u in root.findall("UnitDefinitions/Unit")}
    for name, u in units.items():
        base = u.find("BaseUnit")
        assert base is not None
        assert {k: int(v) for k, v in base.attrib.items()} == UNITS[name]
    degC = units["K"].find("DisplayUnit[@name='degC']")
    assert degC is not None and float(degC.get("offset")) == DISPLAY_UNITS["degC"][2]
    absolute = {"T_ref", "T0", "T_jacket", "T", "T_measured"}  # temperature differences keep K
    shown = {sv.get("name"): sv.find("Real").get("displayUnit")
             for sv in root.findall("ModelVariables/ScalarVariable") if sv.find("Real") is not None}
    assert {n for n, d in shown.items() if d == "degC"} == absolute


def test_model_structure_and_capabilities(fmus: FmuBuilds) -> None:
    root = _md(fmus, "physics")
    names = [sv.get("name") for sv in root.findall("ModelVariables/ScalarVariable")]
    outputs = [s.name for s in TWIN_SIGNALS if s.role == "output"]
    for section in ("Outputs", "InitialUnknowns"):
        idx = [int(u.get("index")) for u in root.findall(f"ModelStructure/{section}/Unknown")]
        assert [names[i - 1] for i in idx] == outputs
    # No direct feedthrough: no output depends on an input within a step (T -> T_jacket is no loop).
    assert all(u.get("dependencies") == "" for u in root.findall("ModelStructure/Outputs/Unknown"))
    # Initial unknowns may depend on any known (the attribute left out, as FMI 2.0 allows).
    assert all(u.get("dependencies") is None for u in root.findall("ModelStructure/InitialUnknowns/Unknown"))
    cs = root.find("CoSimulation")
    assert cs.get("needsExecutionTool") == "true"  # an outside CPython with numpy and onnxruntime
    assert cs.get("modelIdentifier") == "BatchReactorTwin"
    for flag in ("canGetAndSetFMUstate", "canSerializeFMUstate", "canHandleVariableCommunicationStepSize"):
        assert cs.get(flag) == "true", flag
    assert cs.get("canBeInstantiatedOnlyOncePerProcess") == "false"
    mi, guid, _ = fmus.model("variant")
    assert mi == VARIANT_IDENTIFIER
    assert guid != fmus.model("physics")[1]


def test_bundled_code_lives_under_a_package_unique_to_the_build(fmus: FmuBuilds) -> None:
    with zipfile.ZipFile(fmus.fmu("physics")) as zf:
        cfg = dict(line.split("=", 1) for line in zf.read("resources/batchtwin.cfg").decode().splitlines()
                   if line and not line.startswith("#"))
        package = cfg["package"]
        assert package == f"batchtwin_{cfg['build_id']}"
        py = [n for n in zf.namelist() if n.endswith(".py")]
        assert py and all(n.startswith(f"resources/{package}/") for n in py)
        for n in py:
            src = zf.read(n).decode()
            for line in src.splitlines():
                s = line.strip()
                for top in ("twin_core", "ml_onnx", "fmu", "pythonfmu"):
                    assert not s.startswith((f"from {top}.", f"from {top} ", f"import {top}")), (n, line)
        assert "resources/correction.onnx" not in zf.namelist()
        assert cfg["libpython"].endswith((".so", ".so.1.0"))
        assert f"binaries/linux64/{cfg['bridge']}" in zf.namelist()
    with zipfile.ZipFile(fmus.fmu("hybrid")) as zf:
        assert "resources/correction.onnx" in zf.namelist()
    with zipfile.ZipFile(fmus.fmu("variant")) as zf:
        cfg_v = zf.read("resources/batchtwin.cfg").decode()
        assert f"build_id={cfg['build_id']}" not in cfg_v


def test_loader_has_no_libpython_dependency(fmus: FmuBuilds, tmp_path) -> None:
    """pythonfmu issue #202: its binary needs libpython preloaded. Ours links only libc (and dl)."""
    with zipfile.ZipFile(fmus.fmu("physics")) as zf:
        (tmp_path / "loader.so").write_bytes(zf.read("binaries/linux64/BatchReactorTwin.so"))
    out = subprocess.run(["readelf", "-d", str(tmp_path / "loader.so")], capture_output=True, text=True,
                         check=True).stdout
    needed = [line for line in out.splitlines() if "(NEEDED)" in line]
    assert needed and not any("python" in line for line in needed), needed


@pytest.mark.parametrize(("source", "expected"), [
    ("from twin_core.errors import TwinError\n", "from P.twin_core.errors import TwinError\n"),
    ("def f():\n    from ml_onnx.runtime import X\n", "def f():\n    from P.ml_onnx.runtime import X\n"),
    ("import twin_core.model as m\n", "import P.twin_core.model as m\n"),
    ("from pythonfmu import Fmi2Slave\n", "from P.pythonfmu import Fmi2Slave\n"),
    ("from .enums import Fmi2Causality\n", "from .enums import Fmi2Causality\n"),
    ("import numpy as np\n", "import numpy as np\n"),
    ("from twin_core_extra import x\n", "from twin_core_extra import x\n"),
])
def test_vendor_source_rewrites_bundled_imports(source: str, expected: str) -> None:
    assert vendor_source(source, "P") == expected


@pytest.mark.parametrize("source", ["import twin_core\n", "import twin_core.model\n",
                                    "x = 1; import fmu.slave as s\n"])
def test_vendor_source_refuses_what_it_cannot_rewrite(source: str) -> None:
    with pytest.raises(BuildError):
        vendor_source(source, "P")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"model_identifier": "not an identifier"}, "model_identifier"),
    ({"start": {"c_A": 1.0}}, "start.c_A"),
    ({"start": {"T0": 900.0}}, "start.T0"),
    ({"start": {"k1_ref": math.nan}}, "start.k1_ref"),
    ({"start": {"nope": 1.0}}, "start.nope"),
])
def test_bad_build_options_are_refused(kwargs: dict, field: str) -> None:
    with pytest.raises(ParameterError) as err:
        BuildOptions(**kwargs)
    assert err.value.field == field


def test_fmi_variables_follow_fmi_rules() -> None:
    for v in fmi_variables():
        if v.causality == "parameter":
            assert (v.variability, v.initial) == ("fixed", "exact")
        elif v.causality == "input":
            assert v.initial is None and v.start is not None
        if v.type != "Real":
            assert v.variability != "continuous"


def test_docs_variable_table_is_generated_from_the_signal_table() -> None:
    from fmu import docs

    text = docs.DOC.read_text(encoding="utf-8")
    assert docs.render(text) == text, "docs/fmu.md is out of date: run python -m fmu.docs"
    for s in TWIN_SIGNALS:
        assert f"`{s.name}`" in text


def test_nothing_in_the_fmu_finalises_python(fmus: FmuBuilds, tmp_path) -> None:
    """pythonfmu's wrapper finalises the interpreter from a library destructor (the crash at exit and
    the second-run crash). The FMU ships neither that wrapper nor any call of Py_Finalize."""
    with zipfile.ZipFile(fmus.fmu("hybrid")) as zf:
        names = zf.namelist()
        binaries = [n for n in names if n.startswith("binaries/")]
        assert not any("pythonfmu" in n for n in binaries), binaries
        for n in binaries:
            (tmp_path / Path(n).name).write_bytes(zf.read(n))
    for so in tmp_path.glob("*.so"):
        syms = subprocess.run(["nm", "-D", str(so)], capture_output=True, text=True, check=True).stdout
        assert "Py_Finalize" not in syms and "Py_FinalizeEx" not in syms, so.name


OFFLINE_ONLY = ("scipy", "sklearn", "skl2onnx", "matplotlib", "tqdm", "argparse")
"""Modules the FMU's Python must never import (scipy's shutdown crashes C hosts; the rest is offline)."""


def _bundled(fmus: FmuBuilds, kind: str) -> tuple[str, set[str]]:
    with zipfile.ZipFile(fmus.fmu(kind)) as zf:
        cfg = dict(line.split("=", 1) for line in zf.read("resources/batchtwin.cfg").decode().splitlines()
                   if line and not line.startswith("#"))
        prefix = f"resources/{cfg['package']}/"
        names = {n[len(prefix):] for n in zf.namelist() if n.startswith(prefix) and n.endswith(".py")}
    return cfg["package"], {n for n in names if n != "__init__.py"}


@pytest.mark.parametrize("kind,correction", [("physics", False), ("hybrid", True)])
def test_fmu_bundles_exactly_the_import_closure_of_its_slave(fmus: FmuBuilds, kind: str, correction: bool) -> None:
    from fmu.build import ROOT as SRC
    from fmu.build import import_closure

    _, bundled = _bundled(fmus, kind)
    names = {n for n in bundled if not n.startswith("pythonfmu/")}
    closure = {f.relative_to(SRC).as_posix() for m, f in import_closure("fmu.slave", correction).items()
               if not m.startswith("pythonfmu")}
    assert names == closure
    # pythonfmu: its runtime modules only, under an __init__ of our own (its own imports the builder)
    assert {n for n in bundled if n.startswith("pythonfmu/")} == {
        "pythonfmu/__init__.py", "pythonfmu/_version.py", "pythonfmu/default_experiment.py", "pythonfmu/enums.py",
        "pythonfmu/fmi2slave.py", "pythonfmu/logmsg.py", "pythonfmu/variables.py"}
    assert "fmu/slave.py" in names and "twin_core/model.py" in names
    assert ("ml_onnx/runtime.py" in names) is correction
    # the offline tools stay out: the CLI, studies, training and export, the build itself
    for n in names:
        assert not n.startswith("twin_core/offline/"), n
        assert n not in ("fmu/build.py", "fmu/commands.py", "ml_onnx/train.py", "ml_onnx/export.py",
                         "ml_onnx/commands.py", "ml_onnx/dataset.py", "ml_onnx/model.py"), n


def test_no_bundled_module_imports_an_offline_only_package() -> None:
    from fmu.build import _imported_names, import_closure

    for name, f in import_closure("fmu.slave", correction=True).items():
        bad = {m for m in _imported_names(f, name) if m.split(".")[0] in OFFLINE_ONLY}
        assert not bad, (name, bad)


def test_import_closure_follows_packages_relative_and_lazy_imports(tmp_path) -> None:
    from fmu.build import import_closure

    closure = import_closure("fmu.slave", correction=True)
    # a module's packages come with it, and a lazy import inside a function counts
    assert {"fmu", "twin_core", "ml_onnx", "ml_onnx.runtime"} <= set(closure)
    assert "ml_onnx" not in {n.split(".")[0] for n in import_closure("fmu.slave", correction=False)}


@pytest.mark.parametrize("kind", ["physics", "hybrid"])
def test_bundled_python_imports_none_of_scipy_sklearn_matplotlib_tqdm_argparse(fmus: FmuBuilds, kind: str,
                                                                               tmp_path) -> None:
    """The FMU's own copy of its Python, imported and run in a fresh interpreter from the extracted
    archive (as the native loader does), leaves none of the offline-only packages in sys.modules.

    One exception, outside our code: ``import onnx`` (the hybrid FMU checks its model's contract with
    onnx) imports the standard library's argparse in onnx's own ``__init__`` (onnx.gen_proto); no
    bundled module imports it (test above)."""
    import sys

    package, _ = _bundled(fmus, kind)
    resources = str(fmus.extracted(kind) / "resources")
    probe = f"""
import sys
sys.path.insert(0, {resources!r})
from {package}.fmu.slave import BatchReactorTwin
s = BatchReactorTwin(instance_name="probe", resources={resources!r})
s.setup_experiment(0.0)
s.enter_initialization_mode()
s.exit_initialization_mode()
for n in range(10):
    s.do_step(60.0 * n, 60.0)
print(sorted({{m.split(".")[0] for m in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    forbidden = set(OFFLINE_ONLY) - ({"argparse"} if kind == "hybrid" else set())
    assert not loaded & forbidden, loaded & forbidden
    assert ("onnxruntime" in loaded) is (kind == "hybrid")
