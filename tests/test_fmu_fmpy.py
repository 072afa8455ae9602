"""The FMUs in FMPy (Python host, same process): parity with twin_core's own stepping, several
instances, instantiate -> free -> instantiate, FMU state round trips, and a table of bad values.
Each test runs on the Python FMU and on the native one (``native_*``: C physics and the ONNX
correction compiled to C) where it applies."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_fmu_helpers import U1_K, FmuBuilds, jacket, reference, simulate_fmpy

OUT = ("c_A", "c_B", "c_C", "T")
PHYSICS = ["physics", "native_physics"]
HYBRID = ["hybrid", "native_hybrid"]


def _correction(fmus: FmuBuilds):  # the model the hybrid FMU bundles, run by the un-bundled ml_onnx runtime
    from ml_onnx.runtime import OnnxCorrection

    return OnnxCorrection(fmus.correction())


@pytest.mark.parametrize("kind", PHYSICS + HYBRID)
def test_simulate_fmu_equals_twin_core_stepping(fmus: FmuBuilds, kind: str) -> None:
    """Python FMU, native FMU and twin_core's own stepping: the same batch to 1e-12 relative."""
    stop, dt = 7200.0, 60.0
    got = simulate_fmpy(fmus.fmu(kind), stop, dt)
    want = reference(stop, dt, _correction(fmus) if kind in HYBRID else None)
    assert got.shape == want.shape == (121, 5)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0.0)
    assert got[-1, 2] > 50.0  # the step to 70 degC made B: a non-trivial trajectory


@pytest.mark.parametrize("kind", HYBRID)
def test_hybrid_fmu_applies_the_correction(fmus: FmuBuilds, kind: str) -> None:
    """The hybrid parity above must not pass because the correction does nothing."""
    stop, dt = 7200.0, 60.0
    hybrid = simulate_fmpy(fmus.fmu(kind), stop, dt)
    physics = reference(stop, dt, None)
    assert np.max(np.abs(hybrid[:, 2] - physics[:, 2]) / np.maximum(physics[:, 2], 1.0)) > 1e-3
    # Switched off, the hybrid FMU is the physics twin again.
    off = simulate_fmpy(fmus.fmu(kind), stop, dt, start_values={"correction_on": False})
    np.testing.assert_allclose(off, physics, rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("kind", PHYSICS)
def test_simulate_fmu_with_one_second_steps_matches(fmus: FmuBuilds, kind: str) -> None:
    stop, dt = 2400.0, 1.0
    got = simulate_fmpy(fmus.fmu(kind), stop, dt)
    want = reference(stop, dt)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0)


# -- driving FMU2Slave directly -----------------------------------------------------------------------
class Log:
    """FMI logger callback collecting (status, message)."""

    def __init__(self) -> None:
        from fmpy import calloc, free
        from fmpy.fmi2 import (
            fmi2CallbackAllocateMemoryTYPE,
            fmi2CallbackFreeMemoryTYPE,
            fmi2CallbackFunctions,
            fmi2CallbackLoggerTYPE,
        )

        self.messages: list[tuple[int, str]] = []
        self.callbacks = fmi2CallbackFunctions()
        self.callbacks.logger = fmi2CallbackLoggerTYPE(self._log)
        self.callbacks.allocateMemory = fmi2CallbackAllocateMemoryTYPE(calloc)
        self.callbacks.freeMemory = fmi2CallbackFreeMemoryTYPE(free)

    def _log(self, env, name, status, category, message) -> None:  # noqa: ANN001
        self.messages.append((int(status), message.decode()))

    def errors(self) -> list[str]:
        return [m for s, m in self.messages if s >= 2]


@contextmanager
def slave(fmus: FmuBuilds, kind: str = "physics", name: str = "twin", log: Log | None = None,
          start: dict | None = None, init: bool = True) -> Iterator:
    """An instantiated FMU2Slave (initialised unless init=False); freed (library unloaded) on exit."""
    from fmpy.fmi2 import FMU2Slave

    mi, guid, vrs = fmus.model(kind)
    s = FMU2Slave(guid=guid, unzipDirectory=str(fmus.extracted(kind)), modelIdentifier=mi, instanceName=name)
    s.instantiate(callbacks=log.callbacks if log else None)
    s.vr = vrs
    try:
        if init:
            s.setupExperiment(startTime=0.0)
            for k, v in (start or {}).items():
                s.setReal([vrs[k]], [v])
            s.enterInitializationMode()
            s.setReal([vrs["T_jacket"]], [jacket(0.0)])
            s.exitInitializationMode()
        yield s
    finally:
        s.freeInstance()


def _steps(s, n_from: int, n_to: int, dt: float, u1: float = U1_K) -> list[list[float]]:  # noqa: ANN001
    out_vr = [s.vr[n] for n in OUT]
    rows = []
    time = 0.0 + n_from * dt if n_from else 0.0
    for n in range(n_from, n_to):
        nxt = 0.0 + (n + 1) * dt
        s.setReal([s.vr["T_jacket"]], [jacket(time, u1)])
        s.doStep(currentCommunicationPoint=time, communicationStepSize=nxt - time)
        time = nxt
        rows.append([time, *s.getReal(out_vr)])
    return rows


@pytest.mark.parametrize("kind", PHYSICS)
def test_several_instances_in_one_process_do_not_interfere(fmus: FmuBuilds, kind: str) -> None:
    dt, n = 60.0, 90
    u1s = (330.0, 343.15, 355.0)
    with slave(fmus, kind, name="a") as a, slave(fmus, kind, name="b") as b, slave(fmus, kind, name="c") as c:
        rows: dict[int, list] = {0: [], 1: [], 2: []}
        for i in range(n):  # interleaved, step by step
            for k, s in enumerate((a, b, c)):
                rows[k] += _steps(s, i, i + 1, dt, u1s[k])
    for k, u1 in enumerate(u1s):
        want = reference(n * dt, dt, None, u1=u1)[1:]
        np.testing.assert_allclose(np.array(rows[k]), want, rtol=1e-9, atol=0.0)
    assert not np.allclose(np.array(rows[0]), np.array(rows[2]))


@pytest.mark.parametrize("kind", PHYSICS)
def test_instantiate_free_instantiate(fmus: FmuBuilds, kind: str) -> None:
    """What a second run in Simulink does (pythonfmu issue #222): free, unload, load, run again."""
    dt, n = 60.0, 40
    runs = []
    for _ in range(3):
        with slave(fmus, kind) as s:
            runs.append(np.array(_steps(s, 0, n, dt)))
    want = reference(n * dt, dt)[1:]
    for r in runs:
        np.testing.assert_array_equal(r, want)


@pytest.mark.parametrize("kind", PHYSICS)
def test_reset_returns_to_the_instantiated_state(fmus: FmuBuilds, kind: str) -> None:
    dt, n = 60.0, 40
    with slave(fmus, kind) as s:
        first = np.array(_steps(s, 0, n, dt))
        s.reset()
        s.setupExperiment(startTime=0.0)
        s.enterInitializationMode()
        s.setReal([s.vr["T_jacket"]], [jacket(0.0)])
        s.exitInitializationMode()
        again = np.array(_steps(s, 0, n, dt))
    np.testing.assert_array_equal(first, again)


# -- FMU state ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PHYSICS + HYBRID)
def test_restore_and_continue_is_bit_identical(fmus: FmuBuilds, kind: str) -> None:
    dt, n_mid, n_end = 60.0, 25, 60  # the jacket step (t = 1800 s) falls after the snapshot
    with slave(fmus, kind) as s:
        _steps(s, 0, n_mid, dt)
        state = s.getFMUstate()
        blob = s.serializeFMUstate(state)
        uninterrupted = np.array(_steps(s, n_mid, n_end, dt))
        s.setFMUstate(state)
        restored = np.array(_steps(s, n_mid, n_end, dt))
        s.freeFMUstate(state)
        state2 = s.deSerializeFMUstate(blob)
        s.setFMUstate(state2)
        deserialized = np.array(_steps(s, n_mid, n_end, dt))
        assert s.serializeFMUstate(state2) == blob  # serialize(deserialize(b)) == b
        s.freeFMUstate(state2)
    np.testing.assert_array_equal(restored, uninterrupted)
    np.testing.assert_array_equal(deserialized, uninterrupted)


@pytest.mark.parametrize("kind", PHYSICS)
def test_state_moves_between_instances_and_processes_of_one_build(fmus: FmuBuilds, kind: str) -> None:
    dt = 60.0
    with slave(fmus, kind, name="src") as a:
        _steps(a, 0, 30, dt)
        blob = a.serializeFMUstate(a.getFMUstate())
        tail_a = np.array(_steps(a, 30, 50, dt))
    # A fresh instance, not even initialised: the state carries parameters, mode and integrator.
    with slave(fmus, kind, name="dst", init=False) as b:
        st = b.deSerializeFMUstate(blob)
        b.setFMUstate(st)
        b.freeFMUstate(st)
        tail_b = np.array(_steps(b, 30, 50, dt))
    np.testing.assert_array_equal(tail_a, tail_b)


@pytest.mark.parametrize(("other", "kind"), [("variant", "physics"), ("native_hybrid", "native_physics")])
def test_state_of_another_build_is_refused(fmus: FmuBuilds, other: str, kind: str) -> None:
    from fmpy.fmi1 import FMICallException

    with slave(fmus, other) as v:
        blob = v.serializeFMUstate(v.getFMUstate())
    log = Log()
    with slave(fmus, kind, log=log) as s:
        with pytest.raises(FMICallException):
            s.deSerializeFMUstate(blob)
        with pytest.raises(FMICallException):
            s.deSerializeFMUstate(b"not a state")
        _steps(s, 0, 2, 60.0)  # still usable
    assert any("another build" in m for m in log.errors()), log.messages
    assert any("not a serialized state" in m for m in log.errors())


# -- bad values -----------------------------------------------------------------------------------------
BAD_SET = [
    # (variable, value, phase, words the message must contain)
    ("T_jacket", math.nan, "step", ["T_jacket", "finite"]),
    ("T_jacket", math.inf, "step", ["T_jacket", "finite"]),
    ("T_jacket", 600.0, "step", ["T_jacket", "outside"]),
    ("T_jacket", 20.0, "step", ["T_jacket", "outside"]),  # degC given as K
    ("T_measured", math.nan, "step", ["T_measured", "finite"]),
    ("lab_c_C", math.nan, "step", ["lab_c_C", "finite"]),
    ("lab_sample_time", -math.inf, "step", ["lab_sample_time", "finite"]),
    ("c_A0", -1.0, "init", ["c_A0", "outside"]),
    ("c_B0", math.nan, "init", ["c_B0", "finite"]),
    ("T0", 1000.0, "init", ["T0", "outside"]),
    ("k1_ref", 0.0, "init", ["k1_ref", "outside"]),
    ("UA", -10.0, "init", ["UA", "outside"]),
    ("sigma_k1_factor0", 0.0, "init", ["sigma_k1_factor0", "outside"]),   # the estimator's plant prior
    ("sigma_lambda_2", -0.1, "init", ["sigma_lambda_2", "outside"]),
    ("UA_factor0", 0.05, "init", ["UA_factor0", "outside"]),
    ("sigma_UA_factor0", math.nan, "init", ["sigma_UA_factor0", "finite"]),
    ("k1_ref", 2e-4, "step", ["k1_ref", "fixed parameter", "step"]),
    ("c_A", 1.0, "step", ["c_A", "output"]),
]


@pytest.mark.parametrize("kind", PHYSICS)
@pytest.mark.parametrize(("name", "value", "phase", "words"), BAD_SET)
def test_bad_value_gives_error_status_and_message(fmus: FmuBuilds, kind: str, name: str, value: float, phase: str,
                                                  words: list[str]) -> None:
    from fmpy.fmi1 import FMICallException

    log = Log()
    dt = 60.0
    with slave(fmus, kind, log=log, init=phase == "step") as s:
        if phase == "init":
            s.setupExperiment(startTime=0.0)
            s.enterInitializationMode()
        with pytest.raises(FMICallException) as err:
            s.setReal([s.vr[name]], [value])
        assert "status 3" in str(err.value)
        if phase == "init":
            s.setReal([s.vr["T_jacket"]], [jacket(0.0)])
            s.exitInitializationMode()
        rows = np.array(_steps(s, 0, 5, dt))  # the refused value was not applied: the run goes on
    np.testing.assert_array_equal(rows, reference(5 * dt, dt)[1:])
    assert len(log.errors()) == 1
    msg = log.errors()[0]
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("kind", PHYSICS)
@pytest.mark.parametrize(("start", "words"), [
    ({"c_A0": 0.0}, ["c_A0", "must be > 0"]),  # in the declared range but refused by twin_core
    ({"E1": 1e3, "k1_ref": 0.9}, []),  # legal and extreme: must work (control)
])
def test_parameters_checked_by_twin_core_at_exit_initialization(fmus: FmuBuilds, kind: str, start: dict,
                                                                words: list[str]) -> None:
    from fmpy.fmi1 import FMICallException

    log = Log()
    with slave(fmus, kind, log=log, init=False) as s:
        s.setupExperiment(startTime=0.0)
        s.enterInitializationMode()
        for k, v in start.items():
            s.setReal([s.vr[k]], [v])
        if words:
            with pytest.raises(FMICallException):
                s.exitInitializationMode()
            assert any(all(w in m for w in words) for m in log.errors()), log.messages
            s.setReal([s.vr["c_A0"]], [1000.0])  # fixed: initialisation can be retried
        s.exitInitializationMode()
        _steps(s, 0, 3, 60.0)


@pytest.mark.parametrize("kind", PHYSICS)
def test_step_that_cannot_be_accepted_is_discarded_and_the_state_kept(fmus: FmuBuilds, kind: str) -> None:
    """A runaway the integrator cannot follow: fmi2Discard, the FMU stays at the last good time."""
    from fmpy.fmi1 import FMICallException
    from fmpy.fmi2 import fmi2LastSuccessfulTime

    log = Log()
    # Very fast, strongly exothermic, adiabatic: the temperature explodes within one long step.
    start = {"k1_ref": 0.9, "E1": 3e5, "dH1": -5e5, "UA": 0.0, "cp": 100.0, "c_A0": 20000.0}
    with slave(fmus, kind, log=log, start=start) as s:
        before = s.getReal([s.vr[n] for n in OUT])
        with pytest.raises(FMICallException) as err:
            s.doStep(currentCommunicationPoint=0.0, communicationStepSize=1e5)
        assert "status 2" in str(err.value)
        assert s.getReal([s.vr[n] for n in OUT]) == before
        t_ok = s.getRealStatus(fmi2LastSuccessfulTime)
    assert t_ok == 0.0
    assert any("not accepted" in m for m in log.errors()), log.messages


@pytest.mark.parametrize("kind", PHYSICS)
def test_do_step_out_of_sequence_is_an_error(fmus: FmuBuilds, kind: str) -> None:
    from fmpy.fmi1 import FMICallException

    log = Log()
    with slave(fmus, kind, log=log) as s:
        with pytest.raises(FMICallException):
            s.doStep(currentCommunicationPoint=100.0, communicationStepSize=60.0)
        with pytest.raises(FMICallException):
            s.doStep(currentCommunicationPoint=0.0, communicationStepSize=-1.0)
        _steps(s, 0, 2, 60.0)
    assert any("currentCommunicationPoint" in m for m in log.errors())
    assert any("communicationStepSize" in m for m in log.errors())


@pytest.mark.parametrize("kind", PHYSICS)
def test_outputs_during_initialization_follow_the_parameters(fmus: FmuBuilds, kind: str) -> None:
    with slave(fmus, kind, init=False) as s:
        s.setupExperiment(startTime=0.0)
        s.enterInitializationMode()
        s.setReal([s.vr["c_A0"], s.vr["T0"]], [800.0, 310.0])
        assert s.getReal([s.vr["c_A"], s.vr["T"]]) == [800.0, 310.0]
        s.exitInitializationMode()


def test_fmu_file_name_is_kept(fmus: FmuBuilds, tmp_path: Path) -> None:
    assert fmus.fmu("physics").name == "BatchReactorTwin.fmu"


@pytest.mark.parametrize("kind", HYBRID)
def test_variable_communication_step_sizes(fmus: FmuBuilds, kind: str) -> None:
    """canHandleVariableCommunicationStepSize: any sequence of steps, same as twin_core's stepping
    (the Python FMU bit for bit, the native one to 1e-12: its C model of the correction differs from
    onnxruntime in the last bits)."""
    from twin_core.hybrid import HybridTwin

    sizes = [1.0, 0.25, 7.5, 60.0, 600.0, 3.0, 1e-3, 1200.0, 30.0]
    twin = HybridTwin(None, _correction(fmus))
    st = twin.initial_state()
    with slave(fmus, kind) as s:
        out_vr = [s.vr[n] for n in OUT]
        t = 0.0
        for i, h in enumerate(sizes * 3):
            u = 298.15 + 5.0 * (i % 7)
            s.setReal([s.vr["T_jacket"]], [u])
            s.doStep(currentCommunicationPoint=t, communicationStepSize=h)
            st = twin.step(st, t, h, u)
            t = t + h
            if kind == "hybrid":
                assert s.getReal(out_vr) == list(st.x), (i, h)
            else:
                np.testing.assert_allclose(s.getReal(out_vr), st.x, rtol=1e-12, atol=0.0, err_msg=f"{i} {h}")


# -- inputs of a mode that is off, step-size independence, declared ranges --------------------------------
@pytest.mark.parametrize("kind", PHYSICS)
def test_inputs_of_the_estimator_are_ignored_while_it_is_off(fmus: FmuBuilds, kind: str) -> None:
    """An unconnected Simulink port sends 0: with estimator_on false, T_measured = 0 (and any finite
    lab value) is accepted and changes nothing; NaN is still refused."""
    from fmpy.fmi1 import FMICallException

    log = Log()
    dt = 60.0
    with slave(fmus, kind, log=log, init=False) as s:
        s.setupExperiment(startTime=0.0)
        s.setReal([s.vr["T_measured"], s.vr["lab_c_B"], s.vr["lab_sample_time"]], [0.0, -5.0, 0.0])
        s.enterInitializationMode()
        s.setReal([s.vr["T_jacket"]], [jacket(0.0)])
        s.exitInitializationMode()
        s.setReal([s.vr["T_measured"], s.vr["lab_c_C"]], [0.0, 1e9])
        rows = np.array(_steps(s, 0, 5, dt))
        with pytest.raises(FMICallException):
            s.setReal([s.vr["T_measured"]], [math.nan])
    np.testing.assert_array_equal(rows, reference(5 * dt, dt)[1:])
    assert len(log.errors()) == 1 and "finite" in log.errors()[0]


def test_estimator_inputs_are_checked_once_the_estimator_is_on(fmus: FmuBuilds) -> None:
    """The Python FMU with estimator_on: a T_measured of 0 K set while the estimator was still off is
    refused when exitInitializationMode turns it on, and in step mode at once."""
    from fmpy.fmi1 import FMICallException

    log = Log()
    with slave(fmus, "physics", log=log, init=False) as s:
        s.setupExperiment(startTime=0.0)
        s.setReal([s.vr["T_measured"]], [0.0])
        s.setBoolean([s.vr["estimator_on"]], [True])
        s.enterInitializationMode()
        with pytest.raises(FMICallException):
            s.exitInitializationMode()
        assert any("T_measured" in m and "estimator_on" in m for m in log.errors()), log.messages
        s.setReal([s.vr["T_measured"]], [298.15])
        s.exitInitializationMode()
        with pytest.raises(FMICallException):
            s.setReal([s.vr["T_measured"]], [0.0])
    assert "outside" in log.errors()[-1]


BAD_ESTIMATOR = [
    # (variable, value, words the message must contain): the soft-sensor inputs once estimator_on
    ("T_measured", math.nan, ["T_measured", "finite"]),
    ("T_measured", math.inf, ["T_measured", "finite"]),
    ("T_measured", 0.0, ["T_measured", "outside"]),      # an unconnected port: refused now the mode is on
    ("T_measured", 25.0, ["T_measured", "outside"]),     # degC given as K
    ("lab_c_B", -1.0, ["lab_c_B", "outside"]),
    ("lab_c_C", math.nan, ["lab_c_C", "finite"]),
    ("lab_sample_time", -math.inf, ["lab_sample_time", "finite"]),
    ("sigma_T_meas", 0.02, ["sigma_T_meas", "fixed parameter", "step"]),  # tuning is fixed once running
    ("T_std", 1.0, ["T_std", "output"]),
]


def _estimator_steps(s, n: int, T_meas: float = 300.0) -> list[list[float]]:  # noqa: ANN001
    rows = []
    for k in range(n):
        s.setReal([s.vr["T_jacket"], s.vr["T_measured"]], [jacket(k * 10.0), T_meas + 0.01 * k])
        s.doStep(currentCommunicationPoint=k * 10.0, communicationStepSize=10.0)
        rows.append(s.getReal([s.vr[v] for v in ("c_A", "c_B", "T", "c_B_std", "T_std", "lambda_1_est")]))
    return rows


@contextmanager
def _estimator(fmus: FmuBuilds, kind: str, log: Log | None = None) -> Iterator:
    with slave(fmus, kind, log=log, init=False) as s:
        s.setupExperiment(startTime=0.0)
        s.setBoolean([s.vr["estimator_on"]], [True])
        s.enterInitializationMode()
        s.setReal([s.vr["T_jacket"], s.vr["T_measured"]], [jacket(0.0), 300.0])
        s.exitInitializationMode()
        yield s


@pytest.mark.parametrize("kind", PHYSICS + HYBRID)
@pytest.mark.parametrize(("name", "value", "words"), BAD_ESTIMATOR)
def test_bad_value_in_soft_sensor_mode_gives_error_and_message(fmus: FmuBuilds, kind: str, name: str, value: float,
                                                               words: list[str]) -> None:
    """Both FMUs in soft-sensor mode: a bad value is fmi2Error with a message naming it, nothing is
    applied, and the run goes on exactly as a run that never saw it."""
    from fmpy.fmi1 import FMICallException

    with _estimator(fmus, kind) as s:
        clean = _estimator_steps(s, 8)
    log = Log()
    with _estimator(fmus, kind, log) as s:
        with pytest.raises(FMICallException) as err:
            s.setReal([s.vr[name]], [value])
        assert "status 3" in str(err.value)
        rows = _estimator_steps(s, 8)
    np.testing.assert_array_equal(rows, clean)
    assert len(log.errors()) == 1, log.messages
    for w in words:
        assert w in log.errors()[0], log.errors()[0]


@pytest.mark.parametrize("kind", ["native_physics", "physics"])
def test_correction_on_without_a_correction_is_refused(fmus: FmuBuilds, kind: str) -> None:
    from fmpy.fmi1 import FMICallException

    log = Log()
    with slave(fmus, kind, log=log, init=False) as s:
        s.setupExperiment(startTime=0.0)
        s.setBoolean([s.vr["correction_on"]], [True])
        s.enterInitializationMode()
        with pytest.raises(FMICallException):
            s.exitInitializationMode()
    assert any("without a correction" in m for m in log.errors()), log.messages


@pytest.mark.parametrize("kind", HYBRID)
def test_result_does_not_depend_on_the_communication_step(fmus: FmuBuilds, kind: str) -> None:
    """The correction is evaluated in every Runge-Kutta stage: 1 s, 60 s and 3600 s steps give the
    same states at the common times (every hour) to 1e-6 relative. Constant jacket (an input held
    over a 3600 s step is a different input than one switched inside it)."""
    got = {}
    for dt in (1.0, 60.0, 3600.0):
        with slave(fmus, kind) as s:
            out_vr = [s.vr[n] for n in OUT]
            s.setReal([s.vr["T_jacket"]], [343.15])
            per_hour = int(round(3600.0 / dt))
            rows, t = [], 0.0
            for n in range(4 * per_hour):
                nxt = (n + 1) * dt
                s.doStep(currentCommunicationPoint=t, communicationStepSize=nxt - t)
                t = nxt
                if (n + 1) % per_hour == 0:
                    rows.append(s.getReal(out_vr))
        got[dt] = np.array(rows)
    assert got[1.0][-1, 1] > 100.0  # B was made: a non-trivial trajectory
    for dt in (60.0, 3600.0):
        np.testing.assert_allclose(got[dt], got[1.0], rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("kind", PHYSICS)
@pytest.mark.parametrize("start", [{"c_B0": 5000.0, "c_A0": 1.0},
                                   {"c_A0": 20000.0, "c_B0": 20000.0, "k2_ref": 1e-9, "dH1": 0.0, "dH2": 0.0}])
def test_outputs_stay_within_their_declared_ranges(fmus: FmuBuilds, kind: str, start: dict) -> None:
    """FMI: an output's min/max is a promise. yield_B = (c_B - c_B0)/c_A0 falls to about -5000 with
    c_B0 = 5000, c_A0 = 1 (the issue's case); concentrations reach the charge's sum."""
    from fmpy import read_model_description

    md = read_model_description(str(fmus.fmu(kind)))
    outs = [v for v in md.modelVariables if v.causality == "output" and v.type == "Real"]
    with slave(fmus, kind, start=start) as s:
        rows = np.array([r[1:] for r in _steps_all(s, [v.valueReference for v in outs], 120, 300.0)])
    for j, v in enumerate(outs):
        lo = -math.inf if v.min is None else float(v.min)
        hi = math.inf if v.max is None else float(v.max)
        assert np.all((rows[:, j] >= lo) & (rows[:, j] <= hi)), (v.name, rows[:, j].min(), rows[:, j].max(), lo, hi)
    names = [v.name for v in outs]
    if start["c_A0"] == 1.0:
        assert rows[:, names.index("yield_B")].min() < -1000.0
    else:  # c_B beyond the signal table's C_HI = 20000 mol/m3 (the charge's sum bounds it)
        assert rows[:, names.index("c_B")].max() > 30000.0


def _steps_all(s, vrs: list[int], n: int, dt: float) -> list[list[float]]:  # noqa: ANN001
    rows, time = [], 0.0
    for k in range(n):
        nxt = (k + 1) * dt
        s.setReal([s.vr["T_jacket"]], [jacket(time)])
        s.doStep(currentCommunicationPoint=time, communicationStepSize=nxt - time)
        time = nxt
        rows.append([time, *s.getReal(vrs)])
    return rows


@pytest.mark.parametrize("kind", HYBRID)
def test_trust_weights_scale_the_correction(fmus: FmuBuilds, kind: str) -> None:
    """lambda_1, lambda_2 are twin_core's trust weights: (0, 0) is the physics exactly, (0.5, 2)
    equals HybridTwin(trust=(0.5, 2)); lambda_*_est report them with the estimator off."""
    from twin_core.hybrid import HybridTwin

    stop, dt = 3600.0, 60.0
    zero = simulate_fmpy(fmus.fmu(kind), stop, dt, start_values={"lambda_1": 0.0, "lambda_2": 0.0})
    np.testing.assert_array_equal(zero, reference(stop, dt, None))
    got = simulate_fmpy(fmus.fmu(kind), stop, dt, start_values={"lambda_1": 0.5, "lambda_2": 2.0},
                        output=("c_A", "c_B", "c_C", "T", "lambda_1_est", "lambda_2_est"))
    twin = HybridTwin(None, _correction(fmus), trust=(0.5, 2.0))
    st = twin.initial_state()
    want = [st.x]
    for n in range(int(stop / dt)):
        st = twin.step(st, n * dt, dt, jacket(n * dt))
        want.append(st.x)
    np.testing.assert_allclose(got[:, 1:5], np.array(want), rtol=1e-12, atol=0.0)
    assert np.all(got[1:, 5] == 0.5) and np.all(got[1:, 6] == 2.0)
    assert np.max(np.abs(got[:, 2] - zero[:, 2])) > 1e-3
