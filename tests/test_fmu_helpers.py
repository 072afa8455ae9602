"""Shared helpers of the FMU tests (no tests here): the FMU builds of a test session, the C test
host, the reference run with twin_core's own stepping, and FMPy runs with an input table.

:class:`FmuBuilds` builds each FMU variant at most once, on first use, into the folder it is given
(the session fixture ``fmus`` of tests/conftest.py hands it a pytest temporary folder; never dist/,
which ``python3 build.py`` owns): ``physics`` (no correction), ``hybrid`` (a small correction fitted
here with ml_onnx's own exporter, so the hybrid tests never depend on what is in dist/) and
``variant`` (another model identifier, another build id and other baked-in start values: the "two
different builds in one process" case). Everything else here is a plain function.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOST_C = Path(__file__).resolve().parent / "test_fmu_host.c"

KINDS = ("physics", "hybrid", "variant", "native_physics", "native_hybrid")
NATIVE_IDENTIFIER = "BatchReactorTwinNative"
VARIANT_IDENTIFIER = "BatchReactorTwinVariant"
VARIANT_START = {"k1_ref": 3.0e-4, "T0": 303.15}

# The recipe of the parity tests: a step in the jacket temperature at T_STEP_S.
T_STEP_S = 1800.0
U0_K = 298.15
U1_K = 343.15


def fmi_headers() -> Path:
    import fmpy

    return Path(fmpy.__file__).parent / "c-code"


def synthetic_correction(folder: Path) -> Path:
    """A small correction fitted on a synthetic data set with ml_onnx's own exporter, written to
    ``folder/correction.onnx``: the hybrid tests never depend on what a prior ``twin train`` left in
    dist/. Deterministic (a ridge fit on simulated batches): the same bytes on every run."""
    from sklearn.linear_model import Ridge

    from ml_onnx.export import save, to_onnx
    from ml_onnx.features import DEFAULT_FEATURES, feature_matrix
    from ml_onnx.model import RateCorrectionRegressor
    from twin_core.recipe import Recipe
    from twin_core.simulation import Twin

    rows = []
    for T_j in (310.0, 325.0, 340.0, 355.0):
        tr = Twin().simulate(Recipe.constant_jacket(T_j, 36000.0), dt_out_s=300.0)
        rows.append((tr.t_s, tr.x))
    t = np.concatenate([r[0] for r in rows])
    x = np.concatenate([r[1] for r in rows])
    X = feature_matrix(DEFAULT_FEATURES, t, x)
    # A smooth, temperature-dependent correction of both rates (about +-20 %).
    y = np.column_stack([0.15 * np.tanh((x[:, 3] - 330.0) / 20.0), -0.1 + 1e-4 * x[:, 1]])
    model = RateCorrectionRegressor(estimator=Ridge(alpha=1e-6)).fit(X, y)
    out = Path(folder) / "correction.onnx"
    save(to_onnx(model, "0" * 64, description="test correction"), out)
    return out


def compile_fmu_sources(fmu: Path, folder: Path, name: str) -> Path:
    """A shared library built from nothing but the ``sources/`` of the native FMU ``fmu`` (extracted into
    ``folder``), with the flags the native build uses (no contraction of a*b+c: the C kernel equals
    twin_core to the bit); the tests load it with ctypes to call the kernel or the estimator directly."""
    src = folder / "sources"
    with zipfile.ZipFile(fmu) as zf:
        for n in zf.namelist():
            if n.startswith("sources/"):
                zf.extract(n, folder)
    so = folder / f"{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-std=c99", "-ffp-contract=off", f"-I{src}",
                    *sorted(str(p) for p in src.glob("*.c")), "-o", str(so), "-lm"], check=True,
                   capture_output=True, text=True)
    return so


class FmuBuilds:
    """The FMU variants, the test correction and the C test host of one test session, each made at
    most once, on first use, under ``folder``. The constructor does no work: a session that runs no
    FMU test builds nothing."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._correction: Path | None = None
        self._host: Path | None = None
        self._fmus: dict[str, Path] = {}
        self._extracted: dict[str, Path] = {}
        self._models: dict[str, tuple[str, str, dict[str, int]]] = {}

    def correction(self) -> Path:
        """The test correction (see :func:`synthetic_correction`), the one the hybrid FMU bundles."""
        if self._correction is None:
            self._correction = synthetic_correction(self.folder)
        return self._correction

    def fmu(self, kind: str) -> Path:
        """The built FMU variant ``kind``: physics, hybrid or variant."""
        if kind not in KINDS:
            raise ValueError(kind)
        if kind not in self._fmus:
            from fmu.build import BuildOptions, build_fmu

            name = f"{VARIANT_IDENTIFIER}.fmu" if kind == "variant" else "BatchReactorTwin.fmu"
            out = self.folder / kind / name
            if kind.startswith("native_"):
                from fmu.native_build import build_native_fmu

                corr = self.correction() if kind == "native_hybrid" else None
                self._fmus[kind] = build_native_fmu(BuildOptions(out=self.folder / kind / f"{NATIVE_IDENTIFIER}.fmu",
                                                                 correction=corr, model_identifier=NATIVE_IDENTIFIER))
                return self._fmus[kind]
            if kind == "physics":
                opts = BuildOptions(out=out, correction=None)
            elif kind == "hybrid":
                opts = BuildOptions(out=out, correction=self.correction())
            else:
                opts = BuildOptions(out=out, correction=None, model_identifier=VARIANT_IDENTIFIER,
                                    start=VARIANT_START, tag="variant")
            self._fmus[kind] = build_fmu(opts)
        return self._fmus[kind]

    def extracted(self, kind: str) -> Path:
        """The FMU variant ``kind`` unzipped (what a C master does before loading it)."""
        if kind not in self._extracted:
            from fmpy import extract

            self._extracted[kind] = Path(extract(str(self.fmu(kind)), unzipdir=str(self.folder / f"{kind}_x")))
        return self._extracted[kind]

    def model(self, kind: str) -> tuple[str, str, dict[str, int]]:
        """(model identifier, GUID, value reference by name) of the FMU variant ``kind``."""
        if kind not in self._models:
            from fmpy import read_model_description

            md = read_model_description(str(self.fmu(kind)))
            self._models[kind] = (md.coSimulation.modelIdentifier, md.guid,
                                  {v.name: v.valueReference for v in md.modelVariables})
        return self._models[kind]

    def win_host(self) -> Path:
        """The C test host cross-compiled with mingw-w64 (a static Windows executable for Wine)."""
        exe = self.folder / "fmi2_host.exe"
        if not exe.exists():
            subprocess.run(["x86_64-w64-mingw32-gcc", "-O2", "-Wall", f"-I{fmi_headers()}", str(HOST_C), "-o",
                            str(exe), "-static", "-lpthread"], check=True, capture_output=True, text=True)
        return exe

    def host(self) -> Path:
        """The C test host, compiled with the system C compiler against FMPy's FMI 2.0 headers."""
        if self._host is None:
            exe = self.folder / "fmi2_host"
            cc = shutil.which("cc") or shutil.which("gcc")
            if cc is None:
                raise RuntimeError("no C compiler")
            subprocess.run([cc, "-O2", "-Wall", "-Wextra", f"-I{fmi_headers()}", str(HOST_C), "-o", str(exe),
                            "-ldl", "-lpthread"], check=True, capture_output=True, text=True)
            self._host = exe
        return self._host

    def run_host(self, kind: str, csv: Path, *options: str, timeout: float = 120.0,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the C host on FMU variant ``kind`` in an EMPTY environment (no PYTHONPATH, no
        LD_PRELOAD), plus ``env`` when given."""
        mi, guid, _ = self.model(kind)
        return subprocess.run([str(self.host()), str(self.extracted(kind)), mi, guid, str(csv), *options],
                              env=dict(env or {}), capture_output=True, text=True, timeout=timeout)


    def run_win_host(self, kind: str, csv: Path, *options: str, home: Path, timeout: float = 300.0,
                     wine: str = "/usr/lib/wine/wine64") -> subprocess.CompletedProcess:
        """Run the mingw-w64 C host under Wine on FMU variant ``kind`` (binaries/win64): paths as
        Wine sees them (Z:\\...), a Wine prefix shared by the session, ``home`` as HOME."""
        mi, guid, _ = self.model(kind)
        env = {"WINEDEBUG": "-all", "WINEPREFIX": str(self.folder / "wineprefix"), "HOME": str(home),
               "PATH": "/usr/bin:/bin"}
        return subprocess.run([wine, str(self.win_host()), wine_path(self.extracted(kind)), mi, guid, wine_path(csv),
                               *options], env=env, capture_output=True, text=True, timeout=timeout)


def wine_path(path: Path | str) -> str:
    """A Linux path as a Windows program under Wine sees it (drive Z:)."""
    return "Z:" + str(path).replace("/", "\\")


def read_host_csv(path: Path) -> dict[int, np.ndarray]:
    """Rows of the C host's CSV by instance: columns t, then the recorded outputs."""
    data = np.loadtxt(path, delimiter=",", ndmin=2)
    return {int(k): data[data[:, 0] == k][:, 1:] for k in np.unique(data[:, 0])}


def jacket(t: float, u1: float = U1_K) -> float:
    """T_jacket of the parity recipe at time t (FMPy's input table with a step: after the event)."""
    return u1 if (t > T_STEP_S or math.isclose(t, T_STEP_S)) else U0_K


def input_table(stop: float, u1: float = U1_K) -> np.ndarray:
    """FMPy input table of the parity recipe (a step at T_STEP_S)."""
    return np.array([(0.0, U0_K), (T_STEP_S, U0_K), (T_STEP_S, u1), (stop, u1)],
                    dtype=[("time", np.float64), ("T_jacket", np.float64)])


def reference(stop: float, dt: float, correction: object | None = None, params: object | None = None,
              u1: float = U1_K) -> np.ndarray:
    """twin_core's own stepping of the parity recipe: rows (t, c_A, c_B, c_C, T), times as FMPy makes
    them (next = start + (n+1) dt, step = next - time)."""
    from twin_core.hybrid import HybridTwin

    twin = HybridTwin(params, correction)
    st = twin.initial_state()
    rows = [(0.0, *st.x)]
    time, n = 0.0, 0
    while not (time > stop or math.isclose(time, stop)):
        nxt = 0.0 + (n + 1) * dt
        st = twin.step(st, time, nxt - time, jacket(time, u1))
        time = nxt
        n += 1
        rows.append((time, *st.x))
    return np.array(rows)


def simulate_fmpy(path: Path, stop: float, dt: float, u1: float = U1_K, start_values: dict | None = None,
                  output: tuple[str, ...] = ("c_A", "c_B", "c_C", "T")) -> np.ndarray:
    """FMPy's simulate_fmu with the parity input table; rows (t, outputs...)."""
    from fmpy import simulate_fmu

    r = simulate_fmu(str(path), stop_time=stop, output_interval=dt, input=input_table(stop, u1),
                     start_values=start_values or {}, output=list(output))
    return np.column_stack([r["time"]] + [r[name] for name in output])
