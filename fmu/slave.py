"""The FMU's Python slave: a pythonfmu ``Fmi2Slave`` that maps FMI variables to twin_core calls.

Thin on purpose. The variables come from the signal table (fmu.variables); a do_step is one call of
``twin_core.hybrid.HybridTwin.step`` plus writing the outputs. Values live in two flat buffers shared
with the native FMI layer (fmu/native/bridge.c), which serves fmi2Get*/fmi2Set* from them without
entering Python; the slave only runs for the life-cycle calls, do_step and the FMU state.

Errors are translated here, once: a TwinError becomes fmi2Error with a logged message naming the
variable (or fmi2Discard when a step cannot be accepted: the integrator gave up; the state is then
left as it was before the step). The ``_fmi_*`` methods return FMI status codes for the native
layer; the pythonfmu methods (do_step, set_real, ...) stay usable from Python.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# pythonfmu's runtime modules by name: its package __init__ imports its builder (and argparse).
from pythonfmu.default_experiment import DefaultExperiment
from pythonfmu.enums import Fmi2Causality, Fmi2Initial, Fmi2Status, Fmi2Variability
from pythonfmu.fmi2slave import Fmi2Slave
from pythonfmu.variables import Boolean, Integer, Real

from fmu import forecast
from fmu.variables import (
    CAUSALITY_CODES,
    KIND_CODES,
    MODE_GATES,
    MODE_INITIALIZATION,
    MODE_INSTANTIATED,
    MODE_STEP,
    MODE_TERMINATED,
    FmiVariable,
    check_value,
    fmi_variables,
)
from twin_core.analysis import yield_of_c_B
from twin_core.errors import IntegrationError, MeasurementError, ParameterError, TwinError
from twin_core.estimation import IL1, IL2, Estimate, SoftSensor, SoftSensorConfig
from twin_core.hybrid import CorrectionModel, HybridStepState, HybridTwin
from twin_core.integrator import Tolerance
from twin_core.signals.twin import PRIOR_SIGMAS, params_from_signals
from twin_core.simulation import DEFAULT_TOLERANCE

try:
    # Imported when the slave module loads, not lazily: a master may delete the folder it unpacked
    # the FMU into while the process keeps the modules (FMPy does after simulate_fmu).
    from ml_onnx.runtime import OnnxCorrection
except ModuleNotFoundError as exc:  # a physics-only build does not bundle ml_onnx
    if exc.name is None or "ml_onnx" not in exc.name:
        raise
    OnnxCorrection = None

log = logging.getLogger(__name__)

OK, WARNING, DISCARD, ERROR, FATAL = 0, 1, 2, 3, 4
"""fmi2Status codes returned by the ``_fmi_*`` methods."""

MODEL_NAME = "BatchReactorTwin"
CONFIG_FILE = "batchtwin.cfg"
"""key=value file in the FMU's resources written at build time (build id, Python environment)."""
CORRECTION_FILE = "correction.onnx"
STATE_FORMAT = "batchtwin-fmu-state"
STATE_VERSION = 1

_VARS: tuple[FmiVariable, ...] = fmi_variables()
_BY_NAME = {v.name: v for v in _VARS}
_PARAM_TO_SIGNAL = {v.signal.param: v.name for v in _VARS if v.signal.param}
_MODEL_PARAMS = tuple(v for v in _VARS if v.signal.param)
_MODE_SLOT = len(_VARS)

_GATE = {v.vr: _BY_NAME[MODE_GATES[v.name]].vr for v in _VARS if v.name in MODE_GATES}
"""Value reference of a mode's input -> value reference of the Boolean parameter turning the mode on."""

_FMI_ENUMS = {
    "causality": {c.name: c for c in Fmi2Causality},
    "variability": {c.name: c for c in Fmi2Variability},
    "initial": {c.name: c for c in Fmi2Initial},
}


def read_config(resources: Path | None) -> dict[str, str]:
    """The build's ``batchtwin.cfg`` (empty when the slave runs outside a built FMU)."""
    if resources is None:
        return {}
    p = resources / CONFIG_FILE
    if not p.is_file():
        return {}
    out = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


class _SharedCorrection:
    """One loaded correction shared by every instance of a build, serialised by a lock.

    OnnxCorrection keeps a pre-bound input row (fast, not re-entrant) and onnxruntime releases the
    GIL while it runs, so instances stepped from different host threads must not overlap in it.
    One session per process instead of one per instance keeps an extra instance cheap.
    """

    def __init__(self, inner: CorrectionModel) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    def factors(self, t_s: float, x: Any, T_jacket_K: float) -> tuple[float, float, bool]:
        with self._lock:
            return self.inner.factors(t_s, x, T_jacket_K)

    def log_factors(self, t_s: float, x: Any) -> tuple[float, float, bool]:
        """The faded log-factors at a Runge-Kutta stage (twin_core.hybrid's direct path)."""
        with self._lock:
            return self.inner.log_factors(t_s, x)


_CORRECTIONS: dict[str, _SharedCorrection] = {}
_CORRECTIONS_LOCK = threading.Lock()


def load_correction(path: Path) -> _SharedCorrection:
    """The correction model in ``path``, loaded once per process and content."""
    data = path.read_bytes()
    key = hashlib.sha256(data).hexdigest()
    with _CORRECTIONS_LOCK:
        shared = _CORRECTIONS.get(key)
        if shared is None:
            if OnnxCorrection is None:
                raise ParameterError("correction_on", True, "this FMU build does not carry the ONNX runtime wrapper")
            shared = _CORRECTIONS[key] = _SharedCorrection(OnnxCorrection.from_bytes(data, str(path)))
        return shared


@dataclass(frozen=True)
class Snapshot:
    """The FMU state: every value the next steps depend on, as plain data.

    ``real``/``ints`` are the variable buffers (parameters, inputs, outputs, the mode), ``step`` the
    twin's HybridStepState fields (x, h_s, f1, f2, in_domain) including the integrator's proposed
    step size, so that a restored run is bit-identical to an uninterrupted one.
    """

    real: tuple[float, ...]
    ints: tuple[int, ...]
    t: float
    t_start: float
    rtol: float
    step: tuple[Any, ...] | None
    next_forecast: float
    lab_last_sample: float
    estimator: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"real": list(self.real), "ints": list(self.ints), "t": self.t, "t_start": self.t_start,
                "rtol": self.rtol, "step": None if self.step is None else list(self.step),
                "next_forecast": self.next_forecast, "lab_last_sample": self.lab_last_sample,
                "estimator": self.estimator}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Snapshot:
        step = d["step"]
        if step is not None:
            step = (tuple(float(v) for v in step[0]), float(step[1]), float(step[2]), float(step[3]), bool(step[4]))
        return cls(tuple(float(v) for v in d["real"]), tuple(int(v) for v in d["ints"]), float(d["t"]),
                   float(d["t_start"]), float(d["rtol"]), step, float(d["next_forecast"]),
                   float(d["lab_last_sample"]), d.get("estimator"))


class BatchReactorTwin(Fmi2Slave):
    """Hybrid digital twin of a jacketed batch reactor A -> B -> C (co-simulation)."""

    author = "batch-reactor-twin"
    description = ("Hybrid digital twin of a jacketed batch reactor A -> B -> C: mechanistic mole and energy "
                   "balances with a learned ONNX rate correction; SI units")
    version = "0.1.0"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.modelName = MODEL_NAME
        self.default_experiment = DefaultExperiment(start_time=0.0, stop_time=36000.0, step_size=1.0)
        res = kwargs.get("resources")
        self._resources = Path(res) if res else None
        self._config = read_config(self._resources)
        self.build_id = self._config.get("build_id", "dev")
        self._correction_path = self._resources / CORRECTION_FILE if self._resources else None
        self.has_correction = bool(self._correction_path and self._correction_path.is_file())

        n = len(_VARS)
        self._real = array("d", bytes(8 * n))
        self._ints = array("i", bytes(4 * (n + 1)))
        self._starts = self._start_values()
        self._apply_starts()
        for v in _VARS:
            self._register(v)

        vr = {v.name: v.vr for v in _VARS}
        self._vr_T_jacket = vr["T_jacket"]
        self._out_x = (vr["c_A"], vr["c_B"], vr["c_C"], vr["T"])
        self._out_std = (vr["c_A_std"], vr["c_B_std"], vr["c_C_std"], vr["T_std"])
        self._vr_yield = vr["yield_B"]
        self._vr_domain = vr["correction_in_domain"]
        self._vr_health = vr["model_health"]
        self._vr_t_stop = vr["t_stop_opt"]
        self._vr_yield_fc = vr["yield_B_forecast"]
        self._vr_impurity_fc = vr["impurity_forecast"]
        self._vr = vr
        self._reset_run_state()

    # -- variables ---------------------------------------------------------------------------------
    def _start_values(self) -> dict[int, float]:
        """Start value per value reference: the signal table's, then the build's ``start.<name>``
        overrides from batchtwin.cfg (a calibrated parameter set baked into the FMU)."""
        starts = {v.vr: float(v.start) for v in _VARS if v.start is not None}
        # Without a bundled model the correction cannot be on; the start value says so.
        starts[_BY_NAME["correction_on"].vr] = float(self.has_correction)
        for key, text in self._config.items():
            if not key.startswith("start."):
                continue
            name = key[len("start."):]
            v = _BY_NAME.get(name)
            if v is None or not v.settable:
                raise ParameterError(key, text, "not a parameter or input of this FMU")
            value = float(text)
            why = check_value(v, value)
            if why is not None:
                raise ParameterError(name, value, f"build-time start value {why}")
            starts[v.vr] = value
        return starts

    def _apply_starts(self) -> None:
        for v in _VARS:
            value = self._starts.get(v.vr, 0.0)
            if v.type == "Real":
                self._real[v.vr] = value
            else:
                self._ints[v.vr] = int(value)
        self._ints[_MODE_SLOT] = MODE_INSTANTIATED

    def _register(self, v: FmiVariable) -> None:
        cls = {"Real": Real, "Integer": Integer, "Boolean": Boolean}[v.type]
        buf = self._real if v.type == "Real" else self._ints
        i = v.vr
        if v.type == "Real":
            def getter() -> float:
                return buf[i]
        elif v.type == "Boolean":
            def getter() -> bool:  # type: ignore[misc]
                return bool(buf[i])
        else:
            def getter() -> int:  # type: ignore[misc]
                return buf[i]

        def setter(value: Any) -> None:
            self._set_checked(v, value)

        kw: dict[str, Any] = {
            "causality": _FMI_ENUMS["causality"][v.causality],
            "variability": _FMI_ENUMS["variability"][v.variability],
            "description": v.signal.description,
            "getter": getter,
            "setter": setter,  # also for outputs: refuses with a message instead of failing on None
        }
        if v.initial is not None:
            kw["initial"] = _FMI_ENUMS["initial"][v.initial]
        self.register_variable(cls(v.name, **kw))

    def _set_checked(self, v: FmiVariable, value: Any) -> None:
        """Set through the Python API: the same rules as the native layer's fmi2Set*."""
        mode = self._ints[_MODE_SLOT]
        if not v.settable or mode == MODE_TERMINATED or (v.causality == "parameter" and mode == MODE_STEP):
            raise ParameterError(v.name, value, "cannot be set now (causality "
                                 f"{v.causality}, variability {v.variability}, mode {mode})")
        gate = _GATE.get(v.vr)
        if gate is not None and not self._ints[gate]:
            why = None if math.isfinite(float(value)) else "must be finite"  # mode off: accepted, ignored
        else:
            why = check_value(v, value)
        if why is not None:
            raise ParameterError(v.name, value, why)
        if v.type == "Real":
            self._real[v.vr] = float(value)
        else:
            self._ints[v.vr] = int(bool(value)) if v.type == "Boolean" else int(value)

    def _fmi_layout(self) -> tuple[Any, ...]:
        """What the native layer needs to serve fmi2Get*/fmi2Set* from the buffers.

        (real buffer, int buffer, kind per vr ('R'/'I'/'B'), causality per vr ('p'/'i'/'o'/'l'),
        min per vr, max per vr, names, index of the mode slot in the int buffer, gate per vr: the
        Boolean parameter whose mode uses the input, -1 for none; fmu.variables.MODE_GATES).
        """
        kinds = "".join(KIND_CODES[v.type] for v in _VARS).encode()
        caus = "".join(CAUSALITY_CODES[v.causality] for v in _VARS).encode()
        lo = array("d", [v.min if v.type != "Boolean" else -math.inf for v in _VARS])
        hi = array("d", [v.max if v.type != "Boolean" else math.inf for v in _VARS])
        gates = array("i", [_GATE.get(v.vr, -1) for v in _VARS])
        return (self._real, self._ints, kinds, caus, lo, hi, [v.name for v in _VARS], _MODE_SLOT, gates)

    # -- life cycle --------------------------------------------------------------------------------
    def _reset_run_state(self) -> None:
        self._t = 0.0
        self._t_start = 0.0
        self._rtol = DEFAULT_TOLERANCE.rtol
        self._twin: HybridTwin | None = None
        self._state: HybridStepState | None = None
        self._next_forecast = 0.0
        self._lab_last_sample = -math.inf
        self._sensor: SoftSensor | None = None

    def _fmi_setup_experiment(self, start: float, tolerance_defined: bool, tolerance: float) -> int:
        if not math.isfinite(start):
            return self._error(f"setupExperiment: start time {start!r} must be finite")
        if tolerance_defined and not (math.isfinite(tolerance) and 1e-15 <= tolerance < 1.0):
            return self._error(f"setupExperiment: tolerance {tolerance!r} must be within [1e-15, 1)")
        self._t_start = self._t = float(start)
        if tolerance_defined:
            self._rtol = float(tolerance)
        return OK

    def _fmi_enter_init(self) -> int:
        if self._ints[_MODE_SLOT] != MODE_INSTANTIATED:
            return self._error("enterInitializationMode: only allowed once, after instantiation")
        self._ints[_MODE_SLOT] = MODE_INITIALIZATION
        self._fmi_refresh_outputs()
        return OK

    def _fmi_exit_init(self) -> int:
        if self._ints[_MODE_SLOT] != MODE_INITIALIZATION:
            return self._error("exitInitializationMode: not in initialization mode")
        for vr, gate in _GATE.items():  # a mode's inputs, accepted while it was off, must now be in range
            v = _VARS[vr]
            why = check_value(v, self._real[vr]) if self._ints[gate] and v.type == "Real" else None
            if why is not None:
                return self._error(f"exitInitializationMode: {v.name}={self._real[vr]!r} refused: {why} "
                                   f"with {_VARS[gate].name} on")
        try:
            twin, sensor = self._make_models()
            est = None
            if sensor is not None:
                r, vr = self._real, self._vr
                est = sensor.start(self._t_start, T_measured_K=r[vr["T_measured"]],
                                   trust0=(r[vr["lambda_1"]], r[vr["lambda_2"]]),
                                   factors0=(r[vr["UA_factor0"]], 1.0, 1.0),
                                   prior_std=tuple(r[vr[n]] for n in PRIOR_SIGMAS))
                if self._real[self._vr["forecast_interval"]] > 0.0:
                    sensor.set_plan(None, self._real[self._vr["t_batch_end"]])  # jacket held at its value
        except TwinError as exc:
            return self._error(f"exitInitializationMode: {self._name_error(exc)}")
        self._twin, self._sensor = twin, sensor
        self._state = twin.initial_state()
        self._t = self._t_start
        self._next_forecast = self._t_start
        self._ints[_MODE_SLOT] = MODE_STEP
        if est is not None:
            self._write_estimate(est)
        else:
            self._write_outputs(self._state)
            self._maybe_forecast()
        return OK

    def _make_models(self) -> tuple[HybridTwin, SoftSensor | None]:
        """The twin, and the soft sensor when estimator_on, for the current parameter values
        (validated by twin_core's dataclasses)."""
        r, ints, vr = self._real, self._ints, self._vr
        params = params_from_signals({v.name: r[v.vr] for v in _MODEL_PARAMS})
        correction = None
        if ints[vr["correction_on"]]:
            if not self.has_correction or self._correction_path is None:
                raise ParameterError("correction_on", True, "this FMU was built without a correction model")
            correction = load_correction(self._correction_path)
        tol = DEFAULT_TOLERANCE if self._rtol == DEFAULT_TOLERANCE.rtol else Tolerance(self._rtol, DEFAULT_TOLERANCE.atol)
        trust = (r[vr["lambda_1"]], r[vr["lambda_2"]])
        twin = HybridTwin(params, correction, tol, trust=trust)
        sensor = None
        if ints[vr["estimator_on"]]:
            config = SoftSensorConfig(T_noise_std_K=r[vr["sigma_T_meas"]], lab_abs_std_mol_per_m3=r[vr["sigma_lab"]],
                                      rate_rel_std=r[vr["sigma_rate_rel"]],
                                      forecast_interval_s=r[vr["forecast_interval"]])
            sensor = SoftSensor(params, correction, config)
        return twin, sensor

    def _fmi_terminate(self) -> int:
        self._ints[_MODE_SLOT] = MODE_TERMINATED
        return OK

    def _fmi_reset(self) -> int:
        """Back to the state right after instantiation (buffers keep their identity)."""
        self._apply_starts()
        self._reset_run_state()
        return OK

    def _fmi_refresh_outputs(self) -> int:
        """Outputs during initialization mode: the charge as currently parameterised."""
        if self._ints[_MODE_SLOT] != MODE_INITIALIZATION:
            return OK
        r, vr = self._real, self._vr
        x = (r[vr["c_A0"]], r[vr["c_B0"]], r[vr["c_C0"]], r[vr["T0"]])
        for slot, value in zip(self._out_x, x, strict=True):
            r[slot] = value
        r[self._vr_yield] = 0.0
        r[vr["lambda_1_est"]], r[vr["lambda_2_est"]] = r[vr["lambda_1"]], r[vr["lambda_2"]]
        self._ints[self._vr_domain] = 1
        return OK

    # -- stepping ----------------------------------------------------------------------------------
    def _fmi_do_step(self, t: float, dt: float) -> int:
        # The hot path of the FMU: checks first, then one twin_core step and the outputs.
        twin = self._twin
        if twin is None or self._ints[_MODE_SLOT] != MODE_STEP:
            return self._error("doStep: only allowed after exitInitializationMode and before terminate")
        if not 0.0 < dt < math.inf:  # also refuses NaN
            return self._error(f"doStep: communicationStepSize={dt!r} must be finite and > 0")
        if t != self._t and abs(t - self._t) > 1e-9 * max(1.0, abs(t), dt):
            return self._error(f"doStep: currentCommunicationPoint={t!r} but the FMU is at t={self._t!r}")
        if self._sensor is not None:
            return self._step_estimator(t, dt)
        try:
            st = twin.step(self._state, t, dt, self._real[self._vr_T_jacket])
        except IntegrationError as exc:
            self.log(f"doStep t={t!r} dt={dt!r}: step not accepted, state kept: {exc}", Fmi2Status.discard)
            return DISCARD
        except TwinError as exc:
            return self._error(f"doStep t={t!r}: {exc}")
        self._state = st
        t1 = self._t = t + dt
        self._write_outputs(st)
        if self._next_forecast <= t1:
            self._maybe_forecast()
        return OK

    def _write_outputs(self, st: HybridStepState) -> None:
        r = self._real
        x = st.x
        o0, o1, o2, o3 = self._out_x
        r[o0] = x[0]
        r[o1] = x[1]
        r[o2] = x[2]
        r[o3] = x[3]
        r[self._vr_yield] = yield_of_c_B(x[1], self._twin.params)  # type: ignore[union-attr]
        vr = self._vr
        r[vr["lambda_1_est"]] = r[vr["lambda_1"]]  # the estimator is off: the weights as set, certain
        r[vr["lambda_2_est"]] = r[vr["lambda_2"]]
        ok = 1 if st.in_domain else 0
        ints = self._ints
        ints[self._vr_domain] = ok
        ints[self._vr_health] = 1 - ok

    def _step_estimator(self, t: float, dt: float) -> int:
        """Soft-sensor mode: the inputs set for this step are the latest readings, processed as a
        scan at t + dt (where the outputs are reported), or, with T_measured_valid false, an open-loop
        prediction to t + dt on T_jacket; a new lab assay (lab_valid and a sample time not seen
        before) arrives at t + dt. A refused reading or assay is a warning: the estimate is left as
        it was and the run goes on."""
        r, ints, vr = self._real, self._ints, self._vr
        sensor = self._sensor
        t1 = t + dt
        status = OK
        est = None
        try:
            if ints[vr["T_measured_valid"]]:
                est = sensor.update(t1, r[vr["T_measured"]], r[self._vr_T_jacket])
            else:
                est = sensor.predict(t1, r[self._vr_T_jacket])
        except MeasurementError as exc:
            self.log(f"doStep t={t!r}: temperature scan refused, estimate kept: {exc}", Fmi2Status.warning)
            status = WARNING
        except IntegrationError as exc:
            self.log(f"doStep t={t!r} dt={dt!r}: estimator step not accepted: {exc}", Fmi2Status.discard)
            return DISCARD
        sample_t = r[vr["lab_sample_time"]]
        if ints[vr["lab_valid"]] and sample_t != self._lab_last_sample:
            self._lab_last_sample = sample_t  # one attempt per assay, accepted or not
            try:
                est = sensor.add_lab(sample_t, r[vr["lab_c_B"]], r[vr["lab_c_C"]])
            except MeasurementError as exc:
                self.log(f"doStep t={t!r}: lab assay refused: {exc}", Fmi2Status.warning)
                status = WARNING
        self._t = t1
        self._write_estimate(est if est is not None else sensor.estimate)
        return status

    def _write_estimate(self, est: Estimate) -> None:
        r, ints = self._real, self._ints
        x, sd = est.x, est.std
        o = self._out_x
        for i in range(4):
            r[o[i]] = x[i]
            r[self._out_std[i]] = sd[i]
        p = self._sensor.params if self._sensor is not None else self._twin.params
        r[self._vr_yield] = yield_of_c_B(x[1], p)
        vr = self._vr
        r[vr["lambda_1_est"]], r[vr["lambda_2_est"]] = est.lambda_1, est.lambda_2
        r[vr["lambda_1_std"]], r[vr["lambda_2_std"]] = sd[IL1], sd[IL2]
        ints[self._vr_domain] = 1 if est.in_domain else 0
        ints[self._vr_health] = est.health
        fc = est.forecast
        if fc is not None:
            r[self._vr_t_stop] = fc.t_stop_opt_s
            r[self._vr_yield_fc] = fc.yield_at_opt
            r[self._vr_impurity_fc] = fc.impurity_at_opt

    def _maybe_forecast(self) -> None:
        """Refresh t_stop_opt, yield_B_forecast and impurity_forecast every forecast_interval seconds (0: never)."""
        r, vr = self._real, self._vr
        interval = r[vr["forecast_interval"]]
        if not interval > 0.0 or self._twin is None or self._state is None:
            return
        self._next_forecast = self._t + interval
        try:
            t_stop, cB, impurity = forecast.forecast_stop(self._twin, self._state, self._t, r[self._vr_T_jacket],
                                                          r[vr["t_batch_end"]])
        except TwinError as exc:
            self.log(f"forecast at t={self._t!r} failed, previous forecast kept: {exc}", Fmi2Status.warning)
            return
        r[self._vr_t_stop] = t_stop
        r[self._vr_yield_fc] = yield_of_c_B(cB, self._twin.params)
        r[self._vr_impurity_fc] = impurity

    # -- FMU state ---------------------------------------------------------------------------------
    def _fmi_get_state(self) -> Snapshot:
        st = self._state
        step = None if st is None else (tuple(st.x), st.h_s, st.f1, st.f2, st.in_domain)
        sensor = None if self._sensor is None else self._sensor.get_state()
        return Snapshot(tuple(self._real), tuple(self._ints), self._t, self._t_start, self._rtol, step,
                        self._next_forecast, self._lab_last_sample, sensor)

    def _fmi_set_state(self, snap: Snapshot) -> int:
        if not isinstance(snap, Snapshot):
            return self._error(f"setFMUstate: not a state of this FMU ({type(snap).__name__})")
        if len(snap.real) != len(self._real) or len(snap.ints) != len(self._ints):
            return self._error("setFMUstate: the state has a different variable layout")
        old_real, old_ints = tuple(self._real), tuple(self._ints)
        # Assigned in place: the native layer holds pointers into these buffers.
        self._real[:] = array("d", snap.real)
        self._ints[:] = array("i", snap.ints)
        self._t, self._t_start, self._rtol = snap.t, snap.t_start, snap.rtol
        twin = sensor = None
        if snap.step is not None:
            # Rebuilt from the state's own parameters: the state may come from another instance.
            try:
                twin, sensor = self._make_models()
                if (sensor is None) != (snap.estimator is None):
                    raise ParameterError("estimator_on", sensor is not None, "does not match the state's estimator")
                if sensor is not None:
                    sensor.set_state(snap.estimator)
            except TwinError as exc:
                self._real[:] = array("d", old_real)
                self._ints[:] = array("i", old_ints)
                return self._error(f"setFMUstate: {self._name_error(exc)}")
        self._twin, self._sensor = twin, sensor
        self._state = None if snap.step is None else HybridStepState(*snap.step)
        self._next_forecast = snap.next_forecast
        self._lab_last_sample = snap.lab_last_sample
        return OK

    def _fmi_serialize(self, snap: Snapshot) -> bytes | None:
        """The state as bytes (None, with a logged error, when it is not a state of this FMU)."""
        if not isinstance(snap, Snapshot):
            self._error(f"serializeFMUstate: not a state of this FMU ({type(snap).__name__})")
            return None
        doc = {"format": STATE_FORMAT, "version": STATE_VERSION, "build": self.build_id, **snap.to_json()}
        # json writes floats with repr(): the shortest text that reads back to the same double.
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def _fmi_deserialize(self, data: bytes) -> Snapshot | None:
        """The state in ``data`` (None, with a logged error naming the problem, when it is not one)."""
        try:
            return self.deserialize_state(data)
        except ParameterError as exc:
            self._error(f"deSerializeFMUstate: {exc}")
            return None

    def deserialize_state(self, data: bytes) -> Snapshot:
        """Parse a serialized state of this build; ParameterError says why ``data`` is not one."""
        try:
            doc = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ParameterError("FMUstate", f"{len(data)} bytes", f"not a serialized state of this FMU: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or doc.get("version") != STATE_VERSION:
            raise ParameterError("FMUstate", f"{len(data)} bytes", f"not a {STATE_FORMAT} v{STATE_VERSION} document")
        if doc.get("build") != self.build_id:
            raise ParameterError("FMUstate", doc.get("build"), f"serialized by another build; this FMU is {self.build_id}")
        try:
            return Snapshot.from_json(doc)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ParameterError("FMUstate", f"{len(data)} bytes", f"incomplete state: {exc!r}") from exc

    # -- pythonfmu API (used when the slave runs under pythonfmu's own wrapper or from Python) -------
    def setup_experiment(self, start_time: float, stop_time: float | None = None,
                         tolerance: float | None = None) -> None:
        self._check(self._fmi_setup_experiment(start_time, tolerance is not None, tolerance or 0.0))

    def enter_initialization_mode(self) -> None:
        self._check(self._fmi_enter_init())

    def exit_initialization_mode(self) -> None:
        self._check(self._fmi_exit_init())

    def do_step(self, current_time: float, step_size: float) -> bool:
        status = self._fmi_do_step(current_time, step_size)
        if status >= ERROR:
            self._check(status)
        return status == OK

    def terminate(self) -> None:
        self._fmi_terminate()

    def _get_fmu_state(self) -> Snapshot:  # type: ignore[override]
        return self._fmi_get_state()

    def _set_fmu_state(self, state: Snapshot) -> None:  # type: ignore[override]
        self._check(self._fmi_set_state(state))

    def _check(self, status: int) -> None:
        if status >= ERROR:
            msg = self.log_queue[-1].msg if self.log_queue else "error"
            raise ParameterError(self.instance_name, None, msg)

    # -- helpers -----------------------------------------------------------------------------------
    def _error(self, msg: str) -> int:
        self.log(msg, Fmi2Status.error)
        log.debug("%s: %s", self.instance_name, msg)
        return ERROR

    @staticmethod
    def _name_error(exc: TwinError) -> str:
        """The error's message with the FMI variable name in front of a ModelParams field path."""
        field = getattr(exc, "field", None)
        name = _PARAM_TO_SIGNAL.get(field) if isinstance(field, str) else None
        return f"{name}: {exc}" if name else str(exc)
