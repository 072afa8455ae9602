"""The native FMU's C kernel against the Python one, through ctypes on a library compiled from the
FMU's own sources/ (symbols visible): the DP5(4) step (twin_model.c vs twin_core.integrator), the
ONNX correction compiled by emx-onnx-cgen (vs onnxruntime, inside and outside the training domain)
and its domain guard (twin_correction.c vs OnnxCorrection.log_factors), and the hybrid step with the
correction in every stage (vs twin_core.hybrid.HybridTwin)."""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import numpy as np
import pytest
from test_fmu_helpers import FmuBuilds, compile_fmu_sources

REL = 1e-12


class Coef(ctypes.Structure):
    _fields_ = [(n, ctypes.c_double) for n in ("k1_ref", "k2_ref", "inv_T_ref", "E1_over_R", "E2_over_R", "q1", "q2", "ua")]


class Params(ctypes.Structure):
    _fields_ = [(n, ctypes.c_double) for n in ("k1_ref", "k2_ref", "T_ref", "E1", "E2", "dH1", "dH2", "V", "rho", "cp",
                                               "UA", "c_A0", "c_B0", "c_C0", "T0")]


class Ctx(ctypes.Structure):
    _fields_ = [("c", Coef), ("correction", ctypes.c_void_p), ("lambda1", ctypes.c_double),
                ("lambda2", ctypes.c_double), ("T_jacket_K", ctypes.c_double)]


class Tol(ctypes.Structure):
    _fields_ = [("rtol", ctypes.c_double), ("atol", ctypes.c_double * 4)]


D4 = ctypes.c_double * 4


class Kernel:
    """The C kernel of one native FMU build, loaded with ctypes."""

    def __init__(self, fmu: Path, folder: Path) -> None:
        so = compile_fmu_sources(fmu, folder, "kernel")
        self.lib = ctypes.CDLL(str(so))
        self.lib.bt_integrate.restype = ctypes.c_int
        self.lib.bt_integrate.argtypes = [ctypes.POINTER(Ctx), ctypes.c_double, D4, ctypes.c_double,
                                          ctypes.POINTER(Tol), ctypes.POINTER(ctypes.c_double), ctypes.c_void_p,
                                          ctypes.c_char_p, ctypes.c_uint]
        self.correction = ctypes.c_void_p.in_dll(self.lib, "bt_correction").value

    def ctx(self, hybrid: bool) -> Ctx:
        """The right-hand side context of the default parameters (the signal table's start values)."""
        from twin_core.signals.twin import TWIN_SIGNALS

        values = {s.name: float(s.start) for s in TWIN_SIGNALS if s.param}
        p = Params(**{name: values[name] for name, _ in Params._fields_})
        c = Ctx()
        self.lib.bt_coefficients(ctypes.byref(p), ctypes.byref(c.c))
        c.correction = self.correction if hybrid else None
        c.lambda1 = c.lambda2 = 1.0
        return c

    def step(self, ctx: Ctx, t: float, x: tuple, dt: float, u: float, h: float) -> tuple[tuple, float]:
        from twin_core.simulation import DEFAULT_TOLERANCE

        tol = Tol(DEFAULT_TOLERANCE.rtol, D4(*DEFAULT_TOLERANCE.atol))
        xs = D4(*x)
        hh = ctypes.c_double(h)
        ctx.T_jacket_K = u
        msg = ctypes.create_string_buffer(512)
        rc = self.lib.bt_integrate(ctypes.byref(ctx), t, xs, t + dt, ctypes.byref(tol), ctypes.byref(hh), None, msg, 512)
        assert rc == 0, msg.value
        return tuple(xs), hh.value

    def model(self, row: np.ndarray) -> np.ndarray:
        inp = (ctypes.c_double * len(row))(*row)
        out = (ctypes.c_double * 2)()
        self.lib.bt_correction_model(inp, out)
        return np.array(out[:])

    def log_factors(self, t: float, x: tuple) -> tuple[float, float, bool]:
        fn = ctypes.CFUNCTYPE(None, ctypes.c_double, D4, ctypes.c_double * 2, ctypes.POINTER(ctypes.c_int))(self.correction)
        g = (ctypes.c_double * 2)()
        ok = ctypes.c_int()
        fn(t, D4(*x), g, ctypes.byref(ok))
        return g[0], g[1], bool(ok.value)


@pytest.fixture(scope="module")
def kernel(fmus: FmuBuilds, tmp_path_factory: pytest.TempPathFactory) -> Kernel:
    return Kernel(fmus.fmu("native_hybrid"), tmp_path_factory.mktemp("native_kernel"))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) if a.size else 0.0


def steps(hybrid: bool, kernel: Kernel, onnx, dt: float, n: int, u_of) -> tuple[np.ndarray, np.ndarray]:
    from twin_core.hybrid import HybridTwin

    twin = HybridTwin(None, onnx if hybrid else None)
    st = twin.initial_state()
    ctx = kernel.ctx(hybrid)
    x, h = tuple(st.x), 0.0
    py, c = [], []
    for i in range(n):
        t = i * dt
        st = twin.step(st, t, dt, u_of(t))
        x, h = kernel.step(ctx, t, x, dt, u_of(t), h)
        py.append((*st.x, st.h_s))
        c.append((*x, h))
    return np.array(py), np.array(c)


@pytest.mark.parametrize("hybrid", [False, True], ids=["physics", "hybrid"])
@pytest.mark.parametrize("dt", [1.0, 60.0, 3600.0])
def test_c_step_equals_twin_core_step(kernel: Kernel, onnx, hybrid: bool, dt: float) -> None:
    """The same communication steps (a jacket step at 1800 s) in C and in twin_core. Physics: bit for
    bit, the integrator's proposed step size included. Hybrid: states to 1e-12 relative; the step
    size proposal to 1e-6 (the error estimate is a difference of nearly equal stage values, so the
    last-bit differences between onnxruntime's and the C model's log-factors show up there first)."""
    n = {1.0: 2400, 60.0: 200, 3600.0: 10}[dt]
    py, c = steps(hybrid, kernel, onnx, dt, n, lambda t: 298.15 if t < 1800.0 else 343.15)
    if not hybrid:
        assert np.array_equal(c, py)
    assert rel_err(c[:, :4], py[:, :4]) <= REL
    assert rel_err(c[:, 4], py[:, 4]) <= 1e-6


def _grid(onnx) -> np.ndarray:
    d = onnx.domain
    lo, hi, ramp = map(np.asarray, (d.lower, d.upper, d.ramp))
    axes = [np.linspace(lo[j] - 1.5 * ramp[j], hi[j] + 1.5 * ramp[j], 7) for j in range(len(lo))]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(lo))
    rng = np.random.default_rng(13)
    rand = lo + (hi - lo) * rng.uniform(-0.3, 1.3, size=(500, len(lo)))
    return np.vstack([grid, rand])


def test_compiled_correction_equals_onnxruntime(kernel: Kernel, onnx) -> None:
    """emx-onnx-cgen's C of the model equals onnxruntime on a grid over and beyond the training
    domain and on random points (raw model outputs, no guard)."""
    X = _grid(onnx)
    ref = onnx.predict_log_factors(X)
    got = np.array([kernel.model(row) for row in X])
    scale = np.maximum(np.abs(ref), 1e-3)  # outputs are log-factors of order 0.01..1
    assert float(np.max(np.abs(got - ref) / scale)) <= REL


def test_guarded_log_factors_equal_the_python_guard(kernel: Kernel, onnx) -> None:
    """The C clip and smoothstep fade (twin_correction.c) give OnnxCorrection.log_factors' values
    and in-domain flag, inside, in the fade and beyond it."""
    X = _grid(onnx)
    idx = [["t_s", "c_A_mol_per_m3", "c_B_mol_per_m3", "c_C_mol_per_m3", "T_K"].index(n) for n in onnx.feature_names]
    seen = set()
    worst = 0.0
    for row in X:
        raw = [0.0, 0.0, 0.0, 0.0, 300.0]
        for j, k in enumerate(idx):
            raw[k] = row[j]
        x = tuple(raw[1:])
        g_py = onnx.log_factors(raw[0], x)
        g_c = kernel.log_factors(raw[0], x)
        assert g_c[2] == g_py[2]
        seen.add((g_py[2], g_py[0] == 0.0 and g_py[1] == 0.0))
        for a, b in zip(g_c[:2], g_py[:2]):
            worst = max(worst, abs(a - b) / max(abs(b), 1e-3))
    assert worst <= REL
    assert seen == {(True, False), (False, False), (False, True)}  # inside, fading, beyond


def test_non_finite_state_gives_nan_factors(kernel: Kernel) -> None:
    """A NaN state makes the C guard return NaN (the step is then rejected, never silently 'out of domain')."""
    g1, g2, ok = kernel.log_factors(0.0, (math.nan, 0.0, 0.0, 300.0))
    assert math.isnan(g1) and math.isnan(g2) and not ok
