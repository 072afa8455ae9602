"""The soft-sensor mode of both FMUs (estimator_on), physics and hybrid: the FMU's outputs are
twin_core's SoftSensor fed with the FMU's inputs (the Python FMU runs it; the native FMU runs its C
port, fmu/native/twin_estimator.c, to <= 1e-9 relative), its whole state (covariance, history of
filter steps, health monitors, forecast) survives get/set/serialize bit-identically, and bad
measurements are refused without stopping the run."""

from __future__ import annotations

import numpy as np
import pytest
from test_fmu_fmpy import Log, slave
from test_fmu_helpers import FmuBuilds, read_host_csv

from twin_core.estimation import SoftSensor, SoftSensorConfig
from twin_core.hybrid import HybridTwin
from twin_core.params import ModelParams
from twin_core.signals.twin import by_name

DT = 10.0
N = 540  # 1.5 h
T_JACKET_STEP_S = 600.0
LAB_SAMPLE_S, LAB_ARRIVAL_S = 1800.0, 4200.0  # an assay that arrives 40 min late: out of sequence
OUT = ("c_A", "c_B", "c_C", "T", "c_A_std", "c_B_std", "c_C_std", "T_std", "yield_B", "t_stop_opt",
       "yield_B_forecast")


KINDS = ("physics", "hybrid", "native_physics", "native_hybrid")


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def _correction(fmus: FmuBuilds, kind: str):  # noqa: ANN202
    if not kind.endswith("hybrid"):
        return None
    from ml_onnx.runtime import OnnxCorrection

    return OnnxCorrection(fmus.correction())


def _jacket(t: float) -> float:
    return 343.15 if t >= T_JACKET_STEP_S else 298.15


@pytest.fixture(scope="module")
def plant() -> dict[str, np.ndarray]:
    """A 'plant' that is not the model (k1 20 % faster) and a noisy temperature transmitter."""
    twin = HybridTwin(ModelParams().replace(k1_ref_per_s=1.85e-4 * 1.2))
    st = twin.initial_state()
    xs = [st.x]
    for n in range(N):
        st = twin.step(st, n * DT, DT, _jacket(n * DT))
        xs.append(st.x)
    x = np.array(xs)
    rng = np.random.default_rng(7)
    return {"x": x, "T_meas": x[:, 3] + 0.1 * rng.standard_normal(len(x))}


def _lab(plant: dict) -> tuple[float, float]:
    i = int(LAB_SAMPLE_S / DT)
    return float(plant["x"][i, 1]), float(plant["x"][i, 2])


def _fmu_run(s, plant: dict, n_from: int, n_to: int) -> np.ndarray:  # noqa: ANN001
    vr = s.vr
    rows = []
    cB, cC = _lab(plant)
    for n in range(n_from, n_to):
        t = n * DT
        s.setReal([vr["T_jacket"], vr["T_measured"]], [_jacket(t), plant["T_meas"][n + 1]])
        if t + DT >= LAB_ARRIVAL_S:
            s.setReal([vr["lab_c_B"], vr["lab_c_C"], vr["lab_sample_time"]], [cB, cC, LAB_SAMPLE_S])
            s.setBoolean([vr["lab_valid"]], [True])
        s.doStep(currentCommunicationPoint=t, communicationStepSize=DT)
        rows.append([t + DT, *s.getReal([vr[k] for k in OUT]), *s.getInteger([vr["model_health"]])])
    return np.array(rows)


def _reference(plant: dict, n: int, correction=None, **start) -> np.ndarray:  # noqa: ANN001, ANN003
    """twin_core's SoftSensor driven as the FMU documents it (scan at t + dt, assay on arrival);
    ``start``: more keywords of SoftSensor.start (the plant prior)."""
    sig = by_name()  # the FMU's tuning parameters at their start values (signal table)
    cfg = SoftSensorConfig(T_noise_std_K=sig["sigma_T_meas"].start, lab_abs_std_mol_per_m3=sig["sigma_lab"].start,
                           rate_rel_std=sig["sigma_rate_rel"].start, forecast_interval_s=sig["forecast_interval"].start)
    sensor = SoftSensor(ModelParams(), correction, cfg)
    sensor.start(0.0, T_measured_K=plant["T_meas"][0], **start)
    sensor.set_plan(None, 36000.0)
    cB, cC = _lab(plant)
    rows, lab_done = [], False
    for k in range(n):
        t = k * DT
        est = sensor.update(t + DT, plant["T_meas"][k + 1], _jacket(t))
        if t + DT >= LAB_ARRIVAL_S and not lab_done:
            est = sensor.add_lab(LAB_SAMPLE_S, cB, cC)
            lab_done = True
        fc = est.forecast
        rows.append([t + DT, *est.x[:4], *est.std[:4], (est.x[1] - 0.0) / 1000.0,
                     fc.t_stop_opt_s if fc else 36000.0, fc.yield_at_opt if fc else 0.0, est.health])
    return np.array(rows)


@pytest.fixture(scope="module")
def fmu_rows(fmus: FmuBuilds, plant: dict, kind: str) -> np.ndarray:
    with slave(fmus, kind, init=False) as s:
        _init(s, plant)
        return _fmu_run(s, plant, 0, N)


def _init(s, plant: dict, prior: dict[str, float] | None = None) -> None:  # noqa: ANN001
    s.setupExperiment(startTime=0.0)
    s.enterInitializationMode()
    s.setBoolean([s.vr["estimator_on"]], [True])
    if prior:
        s.setReal([s.vr[k] for k in prior], list(prior.values()))
    s.setReal([s.vr["T_jacket"], s.vr["T_measured"]], [_jacket(0.0), plant["T_meas"][0]])
    s.exitInitializationMode()


def test_fmu_outputs_are_the_soft_sensor_estimates(fmus: FmuBuilds, plant: dict, fmu_rows: np.ndarray,
                                                   kind: str) -> None:
    want = _reference(plant, N, _correction(fmus, kind))
    np.testing.assert_allclose(fmu_rows, want, rtol=1e-9, atol=0.0)
    assert np.all(fmu_rows[:, 5:9] > 0.0)  # standard deviations are reported
    # the late assay pulled the estimate of c_B towards the plant's
    i = int(LAB_ARRIVAL_S / DT) - 1
    assert abs(fmu_rows[i + 1, 2] - plant["x"][i + 2, 1]) < abs(fmu_rows[i - 1, 2] - plant["x"][i, 1]) + 1.0


PRIOR = {"UA_factor0": 0.9, "sigma_UA_factor0": 0.05, "sigma_k1_factor0": 0.03, "sigma_k2_factor0": 0.04,
         "sigma_lambda_1": 0.1, "sigma_lambda_2": 0.08}


def test_plant_prior_parameters_start_the_soft_sensor(fmus: FmuBuilds, plant: dict, fmu_rows: np.ndarray,
                                                      kind: str) -> None:
    """UA_factor0 and the sigma_*0 / sigma_lambda_* parameters are SoftSensor.start's factors0 and
    prior_std (what ml_onnx.trust.PlantPrior gives for a known plant), in all four FMUs."""
    with slave(fmus, kind, init=False) as s:
        _init(s, plant, PRIOR)
        got = _fmu_run(s, plant, 0, N)
        lam_sd = s.getReal([s.vr["lambda_1_std"], s.vr["lambda_2_std"]])
    p = list(PRIOR.values())
    want = _reference(plant, N, _correction(fmus, kind), factors0=(p[0], 1.0, 1.0), prior_std=tuple(p[1:]))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0)
    assert not np.allclose(got[:, 1:5], fmu_rows[:, 1:5], rtol=1e-6)   # the prior changed the estimate
    if kind.endswith("hybrid"):   # the prior SD grown by the trust walk at most (the lab only narrows it)
        walk = SoftSensorConfig().trust_walk_per_sqrt_s ** 2 * N * DT
        assert 0.0 < lam_sd[0] <= np.sqrt(0.1 ** 2 + walk) + 1e-12
        assert 0.0 < lam_sd[1] <= np.sqrt(0.08 ** 2 + walk) + 1e-12


def test_soft_sensor_state_restores_bit_identically(fmus: FmuBuilds, plant: dict, fmu_rows: np.ndarray,
                                                    kind: str) -> None:
    """Snapshot before the late assay arrives: the restored run re-processes it exactly alike."""
    n_mid = int(3000.0 / DT)
    with slave(fmus, kind, init=False) as s:
        _init(s, plant)
        _fmu_run(s, plant, 0, n_mid)
        state = s.getFMUstate()
        blob = s.serializeFMUstate(state)
        s.freeFMUstate(state)
    with slave(fmus, kind, init=False) as s2:  # another instance, not even initialised
        st = s2.deSerializeFMUstate(blob)
        s2.setFMUstate(st)
        s2.freeFMUstate(st)
        tail = _fmu_run(s2, plant, n_mid, N)
    np.testing.assert_array_equal(tail, fmu_rows[n_mid:])


def test_refused_lab_assay_is_a_warning_and_the_run_goes_on(fmus: FmuBuilds, plant: dict, kind: str) -> None:
    from fmpy.fmi1 import FMICallException

    log = Log()
    with slave(fmus, kind, log=log, init=False) as s:
        _init(s, plant)
        vr = s.vr
        _fmu_run(s, plant, 0, 10)
        # A sample drawn "in the future" (after the estimator's time): refused with a reason.
        s.setReal([vr["lab_c_B"], vr["lab_c_C"], vr["lab_sample_time"]], [10.0, 0.1, 5000.0])
        s.setBoolean([vr["lab_valid"]], [True])
        s.setReal([vr["T_jacket"], vr["T_measured"]], [298.15, plant["T_meas"][11]])
        status = s.fmi2DoStep(s.component, 100.0, DT, 1)
        assert status == 1  # fmi2Warning: estimate kept, run goes on
        with pytest.raises(FMICallException):
            s.setReal([vr["lab_c_B"]], [-3.0])  # negative concentration: fmi2Error at the boundary
        s.setBoolean([vr["lab_valid"]], [False])
        s.setReal([vr["T_measured"]], [plant["T_meas"][12]])
        s.doStep(currentCommunicationPoint=110.0, communicationStepSize=DT)
    warnings = [m for st, m in log.messages if st == 1]
    assert any("lab assay refused" in m and "lab_sample_time" in m and "future" in m for m in warnings), log.messages
    assert any("lab_c_B" in m and "outside" in m for m in log.errors())


def test_open_loop_steps_are_the_soft_sensors_predictions(fmus: FmuBuilds, plant: dict, kind: str) -> None:
    """T_measured_valid false (the PLC link is down): the FMU predicts open loop on T_jacket, as
    SoftSensor.predict does, its uncertainty growing; true again: closed loop resumes."""
    n_closed, n_open = 120, 60
    with slave(fmus, kind, init=False) as s:
        _init(s, plant)
        vr = s.vr
        _fmu_run(s, plant, 0, n_closed)
        s.setBoolean([vr["T_measured_valid"]], [False])
        s.setReal([vr["T_measured"]], [250.0])  # whatever the input holds is not used
        sds = []
        for n in range(n_closed, n_closed + n_open):
            s.setReal([vr["T_jacket"]], [_jacket(n * DT)])
            s.doStep(currentCommunicationPoint=n * DT, communicationStepSize=DT)
            sds.append(s.getReal([vr["T_std"]])[0])
        got = s.getReal([vr["c_B"], vr["T"]])
    sig = by_name()
    cfg = SoftSensorConfig(T_noise_std_K=sig["sigma_T_meas"].start, lab_abs_std_mol_per_m3=sig["sigma_lab"].start,
                           rate_rel_std=sig["sigma_rate_rel"].start, forecast_interval_s=sig["forecast_interval"].start)
    sensor = SoftSensor(ModelParams(), _correction(fmus, kind), cfg)
    sensor.start(0.0, T_measured_K=plant["T_meas"][0])
    sensor.set_plan(None, 36000.0)
    for k in range(n_closed):
        sensor.update((k + 1) * DT, plant["T_meas"][k + 1], _jacket(k * DT))
    for k in range(n_closed, n_closed + n_open):
        est = sensor.predict((k + 1) * DT, _jacket(k * DT))
    np.testing.assert_allclose(got, [est.x[1], est.x[3]], rtol=1e-12 if kind in ("physics", "hybrid") else 1e-9)
    assert all(b >= a for a, b in zip(sds, sds[1:])) and sds[-1] > 2 * sds[0]


def _host_inputs(fmus: FmuBuilds, kind: str, plant: dict, path) -> list[str]:  # noqa: ANN001
    """The recorded batch as C-host arguments: the readings of every step and the late assay."""
    _, _, vr = fmus.model(kind)
    cB, cC = _lab(plant)
    T = [float(v) for v in plant["T_meas"]]
    lines = [f"-1 R {vr['T_measured']} {T[0]!r}"]
    for n in range(N):
        t = n * DT
        lines.append(f"{t!r} R {vr['T_measured']} {T[n + 1]!r}")
        if t + DT >= LAB_ARRIVAL_S and (n - 1) * DT + DT < LAB_ARRIVAL_S:
            lines += [f"{t!r} R {vr['lab_c_B']} {cB!r}", f"{t!r} R {vr['lab_c_C']} {cC!r}",
                      f"{t!r} R {vr['lab_sample_time']} {LAB_SAMPLE_S!r}", f"{t!r} B {vr['lab_valid']} 1"]
    path.write_text("\n".join(lines) + "\n")
    outs = ",".join(str(vr[k]) for k in OUT)
    return ["--stop", repr(N * DT), "--dt", repr(DT), "--in", str(vr["T_jacket"]), "--out", outs,
            "--step", f"{T_JACKET_STEP_S!r}:298.15:343.15", "--setb", f"{vr['estimator_on']}=1", "--inputs", str(path)]


@pytest.mark.parametrize("native", ["native_physics", "native_hybrid"])
def test_native_fmu_in_the_c_host_equals_the_soft_sensor(fmus: FmuBuilds, plant: dict, native: str, tmp_path) -> None:  # noqa: ANN001
    """The recorded batch through the native FMU in the C host (empty environment, no Python):
    the outputs are twin_core's SoftSensor's to <= 1e-9; a state saved mid-batch (before the late
    assay) and restored continues bit-identically."""
    args = _host_inputs(fmus, native, plant, tmp_path / "inputs.txt")
    csv = tmp_path / "out.csv"
    proc = fmus.run_host(native, csv, *args)
    assert proc.returncode == 0, proc.stderr
    got = read_host_csv(csv)[0][1:]  # the first row is the start
    want = _reference(plant, N, _correction(fmus, native))[:, :-1]  # health is an Integer: not in the CSV
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0)
    proc = fmus.run_host(native, tmp_path / "s.csv", *args, "--state-check", "3000")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "identical=1" in proc.stdout


@pytest.mark.slow
def test_win64_dll_under_wine_runs_the_soft_sensor(fmus: FmuBuilds, plant: dict, tmp_path) -> None:  # noqa: ANN001
    """The win64 DLL (mingw-w64, msvcrt's libm) in soft-sensor mode under Wine: the recorded batch
    gives twin_core's SoftSensor estimates to <= 1e-9 as the linux64 binary does."""
    from test_fmu_helpers import wine_path
    from test_native_fmu import WINE, _wine_ok

    why = _wine_ok()
    if why is not None:
        pytest.skip(why)
    kind = "native_hybrid"
    args = _host_inputs(fmus, kind, plant, tmp_path / "inputs.txt")
    args[-1] = wine_path(args[-1])
    win = tmp_path / "win.csv"
    proc = fmus.run_win_host(kind, win, *args, home=tmp_path, timeout=600, wine=WINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = read_host_csv(win)[0][1:]
    want = _reference(plant, N, _correction(fmus, kind))[:, :-1]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hybrid", "native_hybrid"])
def test_long_plc_outage_at_one_second_steps(fmus: FmuBuilds, kind: str) -> None:
    """A 25-min outage at 1-s steps: every open-loop step is a filter step of the history (1500 of
    them, beyond what 10-s filter steps need); the estimates stay SoftSensor's, and a state saved
    mid-outage (history packed) restores bit-identically in another instance."""
    n_closed, n_open = 300, 1500
    rng = np.random.default_rng(3)
    T_meas = 298.15 + 0.05 * rng.standard_normal(n_closed + 1)

    def run(s, n_from: int, n_to: int) -> list:  # noqa: ANN001
        rows = []
        for n in range(n_from, n_to):
            closed = n < n_closed
            s.setBoolean([s.vr["T_measured_valid"]], [closed])
            s.setReal([s.vr["T_jacket"], s.vr["T_measured"]], [_jacket(float(n)), T_meas[n + 1] if closed else 300.0])  # a stale reading, not used
            s.doStep(currentCommunicationPoint=float(n), communicationStepSize=1.0)
            rows.append(s.getReal([s.vr[k] for k in OUT]))
        return rows

    plant = {"T_meas": T_meas}
    with slave(fmus, kind, init=False) as s:
        _init(s, plant)
        rows = run(s, 0, 1200)
        blob = s.serializeFMUstate(s.getFMUstate())
        rows += run(s, 1200, n_closed + n_open)
    with slave(fmus, kind, init=False) as s2:
        s2.setFMUstate(s2.deSerializeFMUstate(blob))
        tail = run(s2, 1200, n_closed + n_open)
    np.testing.assert_array_equal(tail, rows[1200:])
    sig = by_name()
    cfg = SoftSensorConfig(T_noise_std_K=sig["sigma_T_meas"].start, lab_abs_std_mol_per_m3=sig["sigma_lab"].start,
                           rate_rel_std=sig["sigma_rate_rel"].start, forecast_interval_s=sig["forecast_interval"].start)
    sensor = SoftSensor(ModelParams(), _correction(fmus, kind), cfg)
    sensor.start(0.0, T_measured_K=T_meas[0])
    sensor.set_plan(None, 36000.0)
    for n in range(n_closed + n_open):
        est = (sensor.update(n + 1.0, T_meas[n + 1], _jacket(float(n))) if n < n_closed
               else sensor.predict(n + 1.0, _jacket(float(n))))
    assert len(sensor.history()) > 1400
    np.testing.assert_allclose(rows[-1][:8], [*est.x[:4], *est.std[:4]], rtol=1e-9, atol=0.0)
