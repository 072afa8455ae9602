"""The FMU in FMPy (Python host, same process): parity with twin_core's own stepping, several
instances, instantiate -> free -> instantiate, FMU state round trips, and a table of bad values."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_fmu_helpers import U1_K, FmuBuilds, jacket, reference, simulate_fmpy

OUT = ("c_A", "c_B", "c_C", "T")


def _correction(fmus: FmuBuilds):  # the model the hybrid FMU bundles, run by the un-bundled ml_onnx runtime
    from ml_onnx.runtime import OnnxCorrection

    return OnnxCorrection(fmus.correction())


@pytest.mark.parametrize("kind", ["physics", "hybrid"])
def test_simulate_fmu_equals_twin_core_stepping(fmus: FmuBuilds, kind: str) -> None:
    stop, dt = 7200.0, 60.0
    got = simulate_fmpy(fmus.fmu(kind), stop, dt)
    want = reference(stop, dt, _correction(fmus) if kind == "hybrid" else None)
    assert got.shape == want.shape == (121, 5)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0)
    assert got[-1, 2] > 50.0  # the step to 70 degC made B: a non-trivial trajectory


def test_hybrid_fmu_applies_the_correction(fmus: FmuBuilds) -> None:
    """The hybrid parity above must not pass because the correction does nothing."""
    stop, dt = 7200.0, 60.0
    hybrid = simulate_fmpy(fmus.fmu("hybrid"), stop, dt)
    physics = reference(stop, dt, None)
    assert np.max(np.abs(hybrid[:, 2] - physics[:, 2]) / np.maximum(physics[:, 2], 1.0)) > 1e-3
    # Switched off, the hybrid FMU is the physics twin again.
    off = simulate_fmpy(fmus.fmu("hybrid"), stop, dt, start_values={"correction_on": False})
    np.testing.assert_allclose(off, physics, rtol=1e-9, atol=0.0)


def test_simulate_fmu_with_one_second_steps_matches(fmus: FmuBuilds) -> None:
    stop, dt = 2400.0, 1.0
    got = simulate_fmpy(fmus.fmu("physics"), stop, dt)
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


def test_several_instances_in_one_process_do_not_interfere(fmus: FmuBuilds) -> None:
    dt, n = 60.0, 90
    u1s = (330.0, 343.15, 355.0)
    with slave(fmus, name="a") as a, slave(fmus, name="b") as b, slave(fmus, name="c") as c:
        rows: dict[int, list] = {0: [], 1: [], 2: []}
        for i in range(n):  # interleaved, step by step
            for k, s in enumerate((a, b, c)):
                rows[k] += _steps(s, i, i + 1, dt, u1s[k])
    for k, u1 in enumerate(u1s):
        want = reference(n * dt, dt, None, u1=u1)[1:]
        np.testing.assert_allclose(np.array(rows[k]), want, rtol=1e-9, atol=0.0)
    assert not np.allclose(np.array(rows[0]), np.array(rows[2]))


def test_instantiate_free_instantiate(fmus: FmuBuilds) -> None:
    """What a second run in Simulink does (pythonfmu issue #222): free, unload, load, run again."""
    dt, n = 60.0, 40
    runs = []
    for _ in range(3):
        with slave(fmus) as s:
            runs.append(np.array(_steps(s, 0, n, dt)))
    want = reference(n * dt, dt)[1:]
    for r in runs:
        np.testing.assert_array_equal(r, want)


def test_reset_returns_to_the_instantiated_state(fmus: FmuBuilds) -> None:
    dt, n = 60.0, 40
    with slave(fmus) as s:
        first = np.array(_steps(s, 0, n, dt))
        s.reset()
        s.setupExperiment(startTime=0.0)
        s.enterInitializationMode()
        s.setReal([s.vr["T_jacket"]], [jacket(0.0)])
        s.exitInitializationMode()
        again = np.array(_steps(s, 0, n, dt))
    np.testing.assert_array_equal(first, again)


# -- FMU state ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["physics", "hybrid"])
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


def test_state_moves_between_instances_and_processes_of_one_build(fmus: FmuBuilds) -> None:
    dt = 60.0
    with slave(fmus, name="src") as a:
        _steps(a, 0, 30, dt)
        blob = a.serializeFMUstate(a.getFMUstate())
        tail_a = np.array(_steps(a, 30, 50, dt))
    # A fresh instance, not even initialised: the state carries parameters, mode and integrator.
    with slave(fmus, name="dst", init=False) as b:
        st = b.deSerializeFMUstate(blob)
        b.setFMUstate(st)
        b.freeFMUstate(st)
        tail_b = np.array(_steps(b, 30, 50, dt))
    np.testing.assert_array_equal(tail_a, tail_b)


def test_state_of_another_build_is_refused(fmus: FmuBuilds) -> None:
    from fmpy.fmi1 import FMICallException

    with slave(fmus, "variant") as v:
        blob = v.serializeFMUstate(v.getFMUstate())
    log = Log()
    with slave(fmus, log=log) as s:
        with pytest.raises(FMICallException):
            s.deSerializeFMUstate(blob)
        with pytest.raises(FMICallException):
            s.deSerializeFMUstate(b"not a state")
        _steps(s, 0, 2, 60.0)  # still usable
    assert any("another build" in m for m in log.errors())
    assert any("not a serialized state" in m for m in log.errors())


# -- bad values -----------------------------------------------------------------------------------------
BAD_SET = [
    # (variable, value, phase, words the message must contain)
    ("T_jacket", math.nan, "step", ["T_jacket", "finite"]),
    ("T_jacket", math.inf, "step", ["T_jacket", "finite"]),
    ("T_jacket", 600.0, "step", ["T_jacket", "outside"]),
    ("T_jacket", 20.0, "step", ["T_jacket", "outside"]),  # degC given as K
    ("T_measured", math.nan, "step", ["T_measured", "finite"]),
    ("lab_c_B", -5.0, "step", ["lab_c_B", "outside"]),
    ("lab_c_C", math.nan, "step", ["lab_c_C", "finite"]),
    ("c_A0", -1.0, "init", ["c_A0", "outside"]),
    ("c_B0", math.nan, "init", ["c_B0", "finite"]),
    ("T0", 1000.0, "init", ["T0", "outside"]),
    ("k1_ref", 0.0, "init", ["k1_ref", "outside"]),
    ("UA", -10.0, "init", ["UA", "outside"]),
    ("k1_ref", 2e-4, "step", ["k1_ref", "fixed parameter", "step"]),
    ("c_A", 1.0, "step", ["c_A", "output"]),
]


@pytest.mark.parametrize(("name", "value", "phase", "words"), BAD_SET)
def test_bad_value_gives_error_status_and_message(fmus: FmuBuilds, name: str, value: float, phase: str,
                                                  words: list[str]) -> None:
    from fmpy.fmi1 import FMICallException

    log = Log()
    dt = 60.0
    with slave(fmus, log=log, init=phase == "step") as s:
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


@pytest.mark.parametrize(("start", "words"), [
    ({"c_A0": 0.0}, ["c_A0", "must be > 0"]),  # in the declared range but refused by twin_core
    ({"E1": 1e3, "k1_ref": 0.9}, []),  # legal and extreme: must work (control)
])
def test_parameters_checked_by_twin_core_at_exit_initialization(fmus: FmuBuilds, start: dict,
                                                                words: list[str]) -> None:
    from fmpy.fmi1 import FMICallException

    log = Log()
    with slave(fmus, log=log, init=False) as s:
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


def test_step_that_cannot_be_accepted_is_discarded_and_the_state_kept(fmus: FmuBuilds) -> None:
    """A runaway the integrator cannot follow: fmi2Discard, the FMU stays at the last good time."""
    from fmpy.fmi1 import FMICallException
    from fmpy.fmi2 import fmi2LastSuccessfulTime

    log = Log()
    # Very fast, strongly exothermic, adiabatic: the temperature explodes within one long step.
    start = {"k1_ref": 0.9, "E1": 3e5, "dH1": -5e5, "UA": 0.0, "cp": 100.0, "c_A0": 20000.0}
    with slave(fmus, log=log, start=start) as s:
        before = s.getReal([s.vr[n] for n in OUT])
        with pytest.raises(FMICallException) as err:
            s.doStep(currentCommunicationPoint=0.0, communicationStepSize=1e5)
        assert "status 2" in str(err.value)
        assert s.getReal([s.vr[n] for n in OUT]) == before
        t_ok = s.getRealStatus(fmi2LastSuccessfulTime)
    assert t_ok == 0.0
    assert any("not accepted" in m for m in log.errors()), log.messages


def test_do_step_out_of_sequence_is_an_error(fmus: FmuBuilds) -> None:
    from fmpy.fmi1 import FMICallException

    log = Log()
    with slave(fmus, log=log) as s:
        with pytest.raises(FMICallException):
            s.doStep(currentCommunicationPoint=100.0, communicationStepSize=60.0)
        with pytest.raises(FMICallException):
            s.doStep(currentCommunicationPoint=0.0, communicationStepSize=-1.0)
        _steps(s, 0, 2, 60.0)
    assert any("currentCommunicationPoint" in m for m in log.errors())
    assert any("communicationStepSize" in m for m in log.errors())


def test_outputs_during_initialization_follow_the_parameters(fmus: FmuBuilds) -> None:
    with slave(fmus, init=False) as s:
        s.setupExperiment(startTime=0.0)
        s.enterInitializationMode()
        s.setReal([s.vr["c_A0"], s.vr["T0"]], [800.0, 310.0])
        assert s.getReal([s.vr["c_A"], s.vr["T"]]) == [800.0, 310.0]
        s.exitInitializationMode()


def test_fmu_file_name_is_kept(fmus: FmuBuilds, tmp_path: Path) -> None:
    assert fmus.fmu("physics").name == "BatchReactorTwin.fmu"


def test_variable_communication_step_sizes(fmus: FmuBuilds) -> None:
    """canHandleVariableCommunicationStepSize: any sequence of steps, same as twin_core's stepping."""
    from twin_core.hybrid import HybridTwin

    sizes = [1.0, 0.25, 7.5, 60.0, 600.0, 3.0, 1e-3, 1200.0, 30.0]
    twin = HybridTwin(None, _correction(fmus))
    st = twin.initial_state()
    with slave(fmus, "hybrid") as s:
        out_vr = [s.vr[n] for n in OUT]
        t = 0.0
        for i, h in enumerate(sizes * 3):
            u = 298.15 + 5.0 * (i % 7)
            s.setReal([s.vr["T_jacket"]], [u])
            s.doStep(currentCommunicationPoint=t, communicationStepSize=h)
            st = twin.step(st, t, h, u)
            t = t + h
            assert s.getReal(out_vr) == list(st.x), (i, h)
