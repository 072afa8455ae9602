"""The native FMU (``twin build-fmu --native``) as a file and in hosts that have no Python: its archive
(linux64, win64, sources/), the model description shared with the Python FMU, the glibc symbol
versions, a C host in an empty environment, the win64 DLL under Wine through a mingw-compiled host,
the FMU rebuilt from its own sources/, and two independent masters (libcosim, ecos)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from test_fmu_helpers import T_STEP_S, U0_K, U1_K, FmuBuilds, read_host_csv, reference, simulate_fmpy

from fmu.native_build import GLIBC_MAX, SOURCE_FILES, glibc_versions

NATIVE = ["native_physics", "native_hybrid"]
WINE = "/usr/lib/wine/wine64"


def _md(fmus: FmuBuilds, kind: str) -> ElementTree.Element:
    with zipfile.ZipFile(fmus.fmu(kind)) as zf:
        return ElementTree.fromstring(zf.read("modelDescription.xml"))


@pytest.mark.parametrize("kind", NATIVE)
def test_archive_holds_linux64_win64_and_sources(fmus: FmuBuilds, kind: str) -> None:
    mi, _, _ = fmus.model(kind)
    with zipfile.ZipFile(fmus.fmu(kind)) as zf:
        names = set(zf.namelist())
    assert {f"binaries/linux64/{mi}.so", f"binaries/win64/{mi}.dll", "modelDescription.xml"} <= names
    assert {f"sources/{f}" for f in SOURCE_FILES} <= names
    assert not any(n.endswith(".py") for n in names)  # no Python anywhere
    cs = _md(fmus, kind).find("CoSimulation")
    assert cs.get("needsExecutionTool") == "false"
    assert [f.get("name") for f in cs.findall("SourceFiles/File")] == list(SOURCE_FILES)


def test_model_description_is_the_python_fmus(fmus: FmuBuilds) -> None:
    """The same generator: variables (units, ranges, start values, descriptions), unit definitions
    and model structure are identical; only identity and capability flags differ."""
    py, nat = _md(fmus, "physics"), _md(fmus, "native_physics")
    for section in ("ModelVariables", "UnitDefinitions", "ModelStructure", "DefaultExperiment"):
        assert ElementTree.tostring(py.find(section)) == ElementTree.tostring(nat.find(section)), section
    hy, nh = _md(fmus, "hybrid"), _md(fmus, "native_hybrid")
    assert ElementTree.tostring(hy.find("ModelVariables")) == ElementTree.tostring(nh.find("ModelVariables"))
    correction_on = nh.find("ModelVariables/ScalarVariable[@name='correction_on']/Boolean")
    assert correction_on.get("start") == "true"
    assert nat.find("ModelVariables/ScalarVariable[@name='correction_on']/Boolean").get("start") == "false"


@pytest.mark.parametrize("kind", NATIVE)
def test_linux_binary_loads_on_glibc_2_17(fmus: FmuBuilds, kind: str, tmp_path: Path) -> None:
    """The highest GLIBC_ symbol version the binary needs is <= 2.17 (RHEL 7/8, Ubuntu 20.04, ...);
    it needs no library beyond libc and libm."""
    mi, _, _ = fmus.model(kind)
    so = fmus.extracted(kind) / "binaries" / "linux64" / f"{mi}.so"
    need = glibc_versions(so)
    assert need and max(need) <= GLIBC_MAX, need
    dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    libs = sorted(re.findall(r"\(NEEDED\).*\[(.+)\]", dyn))
    assert libs == ["libc.so.6", "libm.so.6"], libs


@pytest.mark.parametrize("kind", NATIVE)
def test_windows_dll_imports_only_system_libraries(fmus: FmuBuilds, kind: str) -> None:
    mi, _, _ = fmus.model(kind)
    dll = fmus.extracted(kind) / "binaries" / "win64" / f"{mi}.dll"
    out = subprocess.run(["x86_64-w64-mingw32-objdump", "-p", str(dll)], capture_output=True, text=True,
                         check=True).stdout
    assert sorted(set(re.findall(r"DLL Name: (\S+)", out))) == ["KERNEL32.dll", "msvcrt.dll"]
    exports = set(re.findall(r"\]\s+(fmi2\w+)", out))
    assert {"fmi2Instantiate", "fmi2DoStep", "fmi2GetReal", "fmi2SerializeFMUstate"} <= exports


def _host_args(fmus: FmuBuilds, kind: str, stop: float = 7200.0, dt: float = 60.0) -> list[str]:
    _, _, vr = fmus.model(kind)
    outs = ",".join(str(vr[n]) for n in ("c_A", "c_B", "c_C", "T"))
    return ["--stop", repr(stop), "--dt", repr(dt), "--in", str(vr["T_jacket"]), "--out", outs,
            "--step", f"{T_STEP_S!r}:{U0_K!r}:{U1_K!r}"]


@pytest.mark.parametrize("kind", NATIVE)
def test_c_host_in_an_empty_environment_equals_twin_core(fmus: FmuBuilds, kind: str, tmp_path: Path) -> None:
    from ml_onnx.runtime import OnnxCorrection

    csv = tmp_path / "out.csv"
    proc = fmus.run_host(kind, csv, *_host_args(fmus, kind))
    assert proc.returncode == 0, proc.stderr
    got = read_host_csv(csv)[0]
    want = reference(7200.0, 60.0, OnnxCorrection(fmus.correction()) if kind == "native_hybrid" else None)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("kind", NATIVE)
def test_state_get_set_serialize_in_the_c_host(fmus: FmuBuilds, kind: str, tmp_path: Path) -> None:
    """--state-check: get + serialize at 1200 s, finish, deserialize + set, redo: bit-identical (exit 3 if not)."""
    proc = fmus.run_host(kind, tmp_path / "s.csv", *_host_args(fmus, kind), "--state-check", "1200")
    assert proc.returncode == 0, proc.stderr


def _wine_ok() -> str | None:
    """None when wine64 and mingw-w64 are here, else why the Windows tests skip. Under .ci/run
    (BATCHTWIN_CI=1, which installs both) a missing tool is a failure, never a skip."""
    if not (os.path.exists(WINE) and shutil.which("x86_64-w64-mingw32-gcc")):
        why = "wine64 or mingw-w64 not installed (.ci/run installs them: apt-get install wine64 mingw-w64)"
        if os.environ.get("BATCHTWIN_CI"):
            pytest.fail(f"CI: {why}; .ci/run could not install them", pytrace=False)
        return why
    return None


@pytest.mark.slow
@pytest.mark.skipif(_wine_ok() is not None, reason=str(_wine_ok()))
@pytest.mark.parametrize("kind", NATIVE)
def test_win64_dll_under_wine_prints_the_linux64_trajectory(fmus: FmuBuilds, kind: str, tmp_path: Path) -> None:
    """A host cross-compiled with mingw-w64 loads binaries/win64/*.dll under Wine: the same c_B
    trajectory as the linux64 binary to 1e-12 relative (in practice to the last digit)."""
    args = _host_args(fmus, kind)
    lin = tmp_path / "lin.csv"
    proc = fmus.run_host(kind, lin, *args)
    assert proc.returncode == 0, proc.stderr
    win = tmp_path / "win.csv"
    proc = fmus.run_win_host(kind, win, *args, home=tmp_path, wine=WINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_host_csv(lin)[0], read_host_csv(win)[0]
    assert a.shape == b.shape == (121, 5)
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("kind", NATIVE)
def test_fmu_compiled_from_its_sources_alone_gives_identical_results(fmus: FmuBuilds, kind: str,
                                                                     tmp_path: Path) -> None:
    """What a tool on another platform does: cc -shared sources/*.c, nothing else (no build script,
    no generated file from outside the FMU); the rebuilt binary gives the same CSV, byte for byte."""
    mi, _, _ = fmus.model(kind)
    copy = tmp_path / "fmu"
    shutil.copytree(fmus.extracted(kind), copy)
    so = copy / "binaries" / "linux64" / f"{mi}.so"
    so.unlink()
    src = copy / "sources"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", f"-I{src}", *[str(src / f) for f in SOURCE_FILES], "-o", str(so),
                    "-lm"], check=True, capture_output=True, text=True)
    _, guid, _ = fmus.model(kind)
    args = _host_args(fmus, kind)
    ref_csv, new_csv = tmp_path / "ref.csv", tmp_path / "new.csv"
    assert fmus.run_host(kind, ref_csv, *args).returncode == 0
    proc = subprocess.run([str(fmus.host()), str(copy), mi, guid, str(new_csv), *args], env={}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert new_csv.read_bytes() == ref_csv.read_bytes()


LIBCOSIM = r"""
import json, sys
from libcosimpy.CosimExecution import CosimExecution
from libcosimpy.CosimLogging import CosimLogLevel, log_output_level
from libcosimpy.CosimManipulator import CosimManipulator
from libcosimpy.CosimObserver import CosimObserver
from libcosimpy.CosimSlave import CosimLocalSlave

fmu, vr_in, outs, dt, n, t_step, u0, u1 = sys.argv[1:9]
vr_in, dt, n, t_step, u0, u1 = int(vr_in), float(dt), int(n), float(t_step), float(u0), float(u1)
out = [int(v) for v in outs.split(",")]
log_output_level(CosimLogLevel.ERROR)
ex = CosimExecution.from_step_size(int(round(dt * 1e9)))
i = ex.add_local_slave(CosimLocalSlave(fmu_path=fmu, instance_name="twin"))
obs = CosimObserver.create_last_value()
ex.add_observer(obs)
man = CosimManipulator.create_override()
ex.add_manipulator(man)
ex.real_initial_value(i, vr_in, u0)
rows = []
for step in range(n):
    if step * dt >= t_step:
        man.slave_real_values(i, [vr_in], [u1])
    if not ex.step():
        sys.exit("libcosim step failed")
    rows.append([(step + 1) * dt, *obs.last_real_values(i, out)])
print("RESULT " + json.dumps(rows))
"""

ECOS = r"""
import json, sys
from ecospy import EcosSimulation, EcosSimulationStructure

fmu, dt, n, t_step, u0, u1 = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), *map(float, sys.argv[4:7])
ss = EcosSimulationStructure()
ss.add_model("twin", fmu)
rows = []
with EcosSimulation(structure=ss, step_size=dt) as sim:
    sim.init()
    for step in range(n):
        sim.set_real("twin::T_jacket", u1 if step * dt >= t_step else u0)
        sim.step()
        rows.append([(step + 1) * dt, *[sim.get_real(f"twin::{v}") for v in ("c_A", "c_B", "c_C", "T")]])
    sim.terminate()
print("RESULT " + json.dumps(rows))
"""


def _run_master(script: str, args: list[str], cwd: Path) -> np.ndarray:
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return np.array(json.loads(line[len("RESULT "):]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*NATIVE, "hybrid"])
def test_fmpy_libcosim_and_ecos_agree(fmus: FmuBuilds, kind: str, tmp_path: Path) -> None:
    """Three independent masters (FMPy, libcosim via libcosimpy, ecos via ecospy) run the native
    FMU (and the Python one) to the same results (each master in a child process but FMPy)."""
    stop, dt = 3600.0, 60.0
    n = int(stop / dt)
    _, _, vr = fmus.model(kind)
    want = simulate_fmpy(fmus.fmu(kind), stop, dt)[1:]
    outs = ",".join(str(vr[v]) for v in ("c_A", "c_B", "c_C", "T"))
    cosim = _run_master(LIBCOSIM, [str(fmus.fmu(kind)), str(vr["T_jacket"]), outs, repr(dt), str(n), repr(T_STEP_S),
                                   repr(U0_K), repr(U1_K)], tmp_path)
    ecos = _run_master(ECOS, [str(fmus.fmu(kind)), repr(dt), str(n), repr(T_STEP_S), repr(U0_K), repr(U1_K)], tmp_path)
    for got in (cosim, ecos):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize(("native", "python"), [("native_physics", "physics"), ("native_hybrid", "hybrid")])
def test_forecast_outputs_equal_the_python_fmus(fmus: FmuBuilds, native: str, python: str) -> None:
    """The C forecast (twin_forecast.c: hold the jacket, step to t_batch_end, refine the maximum of
    c_B on a local quartic) gives the Python FMU's t_stop_opt, yield_B_forecast and
    impurity_forecast to 1e-9 relative at every forecast (every 300 s, the default)."""
    out = ("t_stop_opt", "yield_B_forecast", "impurity_forecast", "c_B")
    a = simulate_fmpy(fmus.fmu(native), 7200.0, 60.0, output=out)
    b = simulate_fmpy(fmus.fmu(python), 7200.0, 60.0, output=out)
    assert len(set(b[:, 1])) > 5  # the forecast moves as the batch goes on
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("extra", [["--instances", "4", "--threads"], ["--reload"]], ids=["threads", "reload"])
def test_native_fmu_in_threads_and_after_a_reload(fmus: FmuBuilds, extra: list[str], tmp_path: Path) -> None:
    """Four instances each stepped from its own host thread (instance k gets U1 + 5 k), and a run after
    fmi2FreeInstance + dlclose + dlopen: each equals twin_core's stepping (no global state in the C)."""
    from ml_onnx.runtime import OnnxCorrection

    csv = tmp_path / "out.csv"
    proc = fmus.run_host("native_hybrid", csv, *_host_args(fmus, "native_hybrid", stop=2400.0), *extra)
    assert proc.returncode == 0, proc.stderr
    corr = OnnxCorrection(fmus.correction())
    if "--reload" in extra:
        data = np.loadtxt(csv, delimiter=",", ndmin=2)[:, 1:]
        first, second = data[: len(data) // 2], data[len(data) // 2:]
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(first, reference(2400.0, 60.0, corr), rtol=1e-12, atol=0.0)
        return
    rows = read_host_csv(csv)
    assert sorted(rows) == [0, 1, 2, 3]
    for k in range(4):
        np.testing.assert_allclose(rows[k], reference(2400.0, 60.0, corr, u1=U1_K + 5.0 * k), rtol=1e-12, atol=0.0)
