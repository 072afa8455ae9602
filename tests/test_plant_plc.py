"""The PLC through its PlcPort API: phases, commands, settings, interlock, alarms, hooks, CLI.

Most tests run a 1 s scan (the PLC logic is the same at any scan) so that whole batches take a
fraction of a second; one test checks the default 0.1 s scan and its clock.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, free_port, wait_for_port

from plant_sim.config import Alarms, Jacket, PlantConfig, PlcTiming
from plant_sim.interface import PlcCommandError, PlcPort, PlcWriteError
from plant_sim.plc import Plc, hold_target
from twin_core.recipe import DEFAULT_RECIPE, Recipe
from twin_core.signals.plc import COMMAND_NAMES, PLC_COMMANDS, PLC_SIGNALS, RECIPE_MAX_POINTS, Alarm, Phase

SHORT = Recipe((0.0, 60.0, 1860.0), (298.15, 298.15, 343.15), 2 * 3600.0, name="short")


def fast_config(**changes: object) -> PlantConfig:
    base = PlantConfig(plc=PlcTiming(scan_s=1.0), phases=dataclasses.replace(PlantConfig().phases, charge_time_s=60.0))
    return dataclasses.replace(base, **changes)


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Snapshots equal, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


def run_until(plc: Plc, cond, max_scans: int = 200_000) -> int:
    for n in range(max_scans):
        if cond():
            return n
        plc.scan()
    raise AssertionError(f"condition not reached in {max_scans} scans (phase {plc.phase.name})")


@pytest.fixture
def plc() -> Plc:
    p = Plc(fast_config(), seed=1)
    p.load_recipe(SHORT, sample_interval_s=1800.0)
    return p


# -- the API ---------------------------------------------------------------------------------------
def test_plc_implements_the_port_and_publishes_every_name() -> None:
    p = Plc()
    port: PlcPort = p  # checked by type checkers; the loop checks it at run time
    assert all(callable(getattr(port, m)) for m in ("scan", "snapshot", "write_setting", "write_settings", "command"))
    snap = p.snapshot()
    expected = {s.name for s in PLC_SIGNALS} - {s.name for s in PLC_COMMANDS}
    assert {f"recipe_time_{i}" for i in range(RECIPE_MAX_POINTS)} <= expected
    assert set(snap) == expected
    assert all(isinstance(v, float) for v in snap.values())
    assert snap["phase"] == Phase.IDLE and snap["batch_id"] == 0.0
    assert snap["recipe_n_points"] == 2 and snap["recipe_end_time"] == DEFAULT_RECIPE.end_time_s


def test_default_scan_clock_is_exact() -> None:
    p = Plc()
    assert p.scan_s == 0.1
    p.run_scans(12345)
    s = p.snapshot()
    assert s["scan_count"] == 12345.0 and s["plant_time"] == 12345 * 0.1   # n * dt, not summed


def test_full_batch_through_every_phase(plc: Plc) -> None:
    phases = [plc.phase]
    plc.command("start")
    s = plc.snapshot()
    assert s["batch_id"] == 1 and s["phase"] == Phase.CHARGING and s["batch_time"] == 0.0 and s["lab_valid"] == 0
    while plc.phase != Phase.COMPLETE:
        plc.scan()
        if plc.phase != phases[-1]:
            phases.append(plc.phase)
        assert plc.scan_count < 20000
    assert phases == [Phase.IDLE, Phase.CHARGING, Phase.HEATING, Phase.REACTING, Phase.COOLING, Phase.COMPLETE]
    s = plc.snapshot()
    assert s["batch_time"] >= SHORT.end_time_s
    assert s["T_reactor"] < plc.config.phases.T_safe_K
    assert s["T_jacket_sp"] == plc.config.phases.cooling_T_jacket_K
    # samples at 1800, 3600, 5400 s and the end-of-reaction sample at 7200 s
    run_until(plc, lambda: plc.lab_pending == 0)
    assert plc.lab_seq == 4 and plc.snapshot()["lab_valid"] == 1
    assert [r.sample_batch_time_s for r in plc.lab_history] == [1800.0, 3600.0, 5400.0, 7200.0]
    bt = plc.batch_time
    plc.run_scans(100)
    assert plc.batch_time == bt  # the batch clock stops at the end of the batch
    plc.command("reset")
    s = plc.snapshot()
    assert s["phase"] == Phase.IDLE and s["batch_time"] == 0.0 and s["lab_valid"] == 0 and math.isnan(s["lab_c_B"])
    assert plc.truth.x[:3] == (0.0, 0.0, 0.0)
    plc.command("start")
    assert plc.snapshot()["batch_id"] == 2


def test_phase_setpoints(plc: Plc) -> None:
    plc.command("start")
    plc.scan()
    assert plc.T_jacket_sp == SHORT.temps_K[0]                     # Charging: programme start
    run_until(plc, lambda: plc.phase == Phase.HEATING)
    plc.run_scans(300)
    assert plc.T_jacket_sp == pytest.approx(SHORT.setpoint(plc.batch_time))
    assert hold_target(SHORT, 60.0) == 343.15
    assert hold_target(Recipe((0, 600, 1200, 3000, 4000), (298.15, 298.15, 340.0, 340.0, 330.0), 5000), 600.0) == 340.0
    run_until(plc, lambda: plc.phase == Phase.REACTING)
    assert abs(plc.T_reactor - 343.15) <= plc.config.phases.heating_band_K
    plc.command("abort")
    plc.scan()
    assert plc.T_jacket_sp == plc.config.phases.cooling_T_jacket_K and plc.pid.output == -1.0


def test_hold_freezes_batch_time_and_setpoint_resume_continues(plc: Plc) -> None:
    plc.command("start")
    run_until(plc, lambda: plc.phase == Phase.HEATING)
    plc.run_scans(200)
    plc.command("hold")
    frozen = plc.snapshot()
    assert frozen["phase"] == Phase.HELD
    plc.run_scans(500)
    s = plc.snapshot()
    assert s["batch_time"] == frozen["batch_time"] and s["T_jacket_sp"] == frozen["T_jacket_sp"]
    assert s["plant_time"] == frozen["plant_time"] + 500.0
    plc.command("resume")
    assert plc.phase == Phase.HEATING
    plc.run_scans(10)
    assert plc.batch_time == frozen["batch_time"] + 10.0


def test_recipe_write_refused_mid_phase_and_documented_path(plc: Plc) -> None:
    plc.command("start")
    plc.run_scans(100)
    before = plc.snapshot()
    for name, value in (("recipe_end_time", 3600.0), ("recipe_T_2", 330.0), ("T_trip", 390.0)):
        with pytest.raises(PlcWriteError):
            plc.write_setting(name, value)
        assert same(plc.snapshot(), before)
    # anytime settings are accepted while running
    plc.write_setting("T_high_alarm", 360.0)
    assert plc.snapshot()["T_high_alarm"] == 360.0
    # the documented path: Hold, write, Resume applies it
    plc.command("hold")
    plc.write_settings({"recipe_end_time": 3000.0, "recipe_T_2": 333.15})
    assert plc.recipe.end_time_s == SHORT.end_time_s   # not yet in force
    plc.command("resume")
    assert plc.recipe.end_time_s == 3000.0 and plc.recipe.temps_K[2] == 333.15
    run_until(plc, lambda: plc.phase == Phase.COOLING)
    assert plc.batch_time == 3000.0


def test_resume_with_inconsistent_recipe_is_refused(plc: Plc) -> None:
    plc.command("start")
    plc.run_scans(100)
    held_from = plc.phase
    plc.command("hold")
    plc.write_setting("recipe_time_2", 30.0)  # before point 1: not increasing
    before = plc.snapshot()
    with pytest.raises(PlcCommandError, match="inconsistent"):
        plc.command("resume")
    assert same(plc.snapshot(), before) and plc.phase == Phase.HELD
    plc.write_setting("recipe_time_2", 1860.0)
    plc.command("resume")
    assert plc.phase == held_from == Phase.HEATING


BAD_WRITES = [
    ("recipe_end_time", math.nan),
    ("recipe_end_time", math.inf),
    ("recipe_end_time", 0.0),
    ("recipe_end_time", 1e9),
    ("recipe_n_points", 0),
    ("recipe_n_points", RECIPE_MAX_POINTS + 1),
    ("recipe_n_points", 2.5),
    ("recipe_mode", 1),
    ("recipe_sample_interval", 30.0),
    ("recipe_sample_interval", -1.0),
    ("recipe_time_3", -1.0),
    ("recipe_T_0", 200.0),
    ("recipe_T_0", 500.0),
    ("recipe_T_15", math.nan),
    ("T_trip", 250.0),
    ("T_high_alarm", 400.0),          # above T_trip
    ("T_trip", 360.0),                # below T_high_alarm
    ("sim_sensor_fault", 5),
    ("sim_sensor_fault", 1.5),
    ("sim_inject_runaway", 2),
    ("phase", 3),                     # a measurement, not a setting
    ("batch_time", 0.0),
    ("recipe_T_16", 300.0),           # beyond RECIPE_MAX_POINTS
    ("no_such_setting", 1.0),
    ("recipe_end_time", "3600"),
    ("recipe_end_time", True),
    ("recipe_end_time", None),
]


@pytest.mark.parametrize(("name", "value"), BAD_WRITES)
def test_bad_writes_are_refused_and_change_nothing(plc: Plc, name: str, value: object) -> None:
    plc.run_scans(3)
    before = plc.snapshot()
    with pytest.raises(PlcWriteError):
        plc.write_setting(name, value)  # type: ignore[arg-type]
    assert same(plc.snapshot(), before)
    with pytest.raises(PlcWriteError):   # all or nothing: the good value is not applied either
        plc.write_settings({"recipe_end_time": 5000.0, name: value})  # type: ignore[dict-item]
    assert same(plc.snapshot(), before)


def test_good_writes_and_zero_interval() -> None:
    p = Plc(fast_config())
    p.write_settings({"recipe_sample_interval": 0.0, "recipe_n_points": 3, "recipe_time_2": 7200.0,
                      "recipe_T_2": 330.0, "T_trip": 380.0, "T_high_alarm": 370.0})
    s = p.snapshot()
    assert (s["recipe_sample_interval"], s["recipe_n_points"], s["recipe_time_2"], s["T_trip"]) == (0.0, 3.0, 7200.0, 380.0)
    p.command("start")
    assert p.recipe.times_s == (0.0, 3600.0, 7200.0)


BAD_COMMANDS = [
    (Phase.IDLE, "hold"), (Phase.IDLE, "resume"), (Phase.IDLE, "abort"), (Phase.IDLE, "reset"),
    (Phase.CHARGING, "start"), (Phase.CHARGING, "resume"), (Phase.CHARGING, "reset"),
    (Phase.HELD, "hold"), (Phase.HELD, "start"), (Phase.HELD, "reset"),
    (Phase.ABORTED, "start"), (Phase.ABORTED, "abort"), (Phase.ABORTED, "hold"),
    (Phase.IDLE, "explode"), (Phase.IDLE, ""),
]


@pytest.mark.parametrize(("phase", "command"), BAD_COMMANDS)
def test_commands_in_the_wrong_phase_are_refused(plc: Plc, phase: Phase, command: str) -> None:
    path = {Phase.IDLE: [], Phase.CHARGING: ["start"], Phase.HELD: ["start", "hold"],
            Phase.ABORTED: ["start", "abort"]}[phase]
    for c in path:
        plc.command(c)
    plc.run_scans(5)
    assert plc.phase == phase
    before = plc.snapshot()
    with pytest.raises(PlcCommandError):
        plc.command(command)
    assert same(plc.snapshot(), before)


def test_start_with_inconsistent_recipe_refused() -> None:
    p = Plc(fast_config())
    p.write_settings({"recipe_n_points": 3, "recipe_time_1": 100.0, "recipe_time_2": 50.0})
    before = p.snapshot()
    with pytest.raises(PlcCommandError):
        p.command("start")
    assert same(p.snapshot(), before) and p.batch_id == 0
    p.write_setting("recipe_time_0", 10.0)   # must start at 0
    with pytest.raises(PlcCommandError):
        p.command("start")


# -- interlock and alarms -----------------------------------------------------------------------------
def test_interlock_trips_on_injected_runaway(plc: Plc) -> None:
    plc.command("start")
    run_until(plc, lambda: plc.phase == Phase.REACTING)
    plc.command("ack_alarms")
    plc.command("inject_runaway")
    assert plc.snapshot()["sim_inject_runaway"] == 1.0
    saw_dtdt = False
    for _ in range(5000):
        plc.scan()
        saw_dtdt |= bool(plc.alarms_active & Alarm.HIGH_DTDT)
        if plc.phase == Phase.ABORTED:
            break
    assert plc.phase == Phase.ABORTED and saw_dtdt
    s = plc.snapshot()
    trip = s["T_trip"]
    assert s["T_reactor"] > trip
    assert int(s["alarms_active"]) & Alarm.INTERLOCK_TRIP
    unacked = Alarm(int(s["alarms_unacked"]))
    assert Alarm.INTERLOCK_TRIP in unacked and Alarm.HIGH_T in unacked and Alarm.HIGH_DTDT in unacked
    assert s["sim_inject_runaway"] == 0.0                  # emergency quench
    assert s["T_jacket_sp"] == plc.config.phases.cooling_T_jacket_K and s["pid_output"] == -1.0
    with pytest.raises(PlcCommandError):
        plc.command("reset")                                # still above T_trip
    plc.command("ack_alarms")
    s = plc.snapshot()
    assert s["alarms_unacked"] == 0.0 and int(s["alarms_active"]) & Alarm.INTERLOCK_TRIP
    T_peak = plc.truth.x[3]
    run_until(plc, lambda: plc.T_reactor < trip - 5.0)
    assert plc.truth.x[3] < T_peak and plc.pid.output == -1.0
    plc.run_scans(5)
    assert plc.phase == Phase.ABORTED                       # stays aborted until Reset
    plc.command("reset")
    plc.scan()
    assert plc.phase == Phase.IDLE and not plc.alarms_active & Alarm.INTERLOCK_TRIP


def test_runaway_hook_as_a_setting_and_trip_from_idle() -> None:
    p = Plc(fast_config(), seed=2)
    p.write_setting("sim_inject_runaway", 1)
    assert p.truth.Q_extra_W == p.config.runaway.heat_W
    p.write_setting("sim_inject_runaway", 0)
    assert p.truth.Q_extra_W == 0.0
    p.write_setting("sim_inject_runaway", 1)
    run_until(p, lambda: p.phase == Phase.ABORTED, 10000)   # an empty vessel heated past T_trip still trips
    assert p.truth.Q_extra_W == 0.0


def test_alarm_latches_until_acknowledged_and_relatches() -> None:
    p = Plc(fast_config(), seed=0)
    p.run_scans(5)
    assert p.alarms_active == 0 and p.alarms_unacked == 0
    # idle vessel at ~298 K; no trip in this test
    p.write_settings({"T_trip": 473.15, "T_high_alarm": 303.15})
    p.scan()
    assert not p.alarms_active & Alarm.HIGH_T
    p.write_setting("sim_inject_runaway", 1)
    run_until(p, lambda: bool(p.alarms_active & Alarm.HIGH_T))
    assert Alarm.HIGH_T in p.alarms_unacked
    p.write_setting("sim_inject_runaway", 0)
    p.command("ack_alarms")
    p.scan()
    assert Alarm.HIGH_T in p.alarms_active and Alarm.HIGH_T not in p.alarms_unacked   # acked, still present
    p.write_setting("T_high_alarm", 473.15)
    p.scan()
    assert Alarm.HIGH_T not in p.alarms_active and Alarm.HIGH_T not in p.alarms_unacked
    p.write_setting("T_high_alarm", 303.15)
    p.scan()
    assert Alarm.HIGH_T in p.alarms_active and Alarm.HIGH_T in p.alarms_unacked        # a new occurrence


@pytest.mark.parametrize(("code", "scans"), [(4, 2), (1, 40), (3, 2000)])
def test_sensor_fault_hook_raises_sensor_fault_alarm(code: int, scans: int) -> None:
    cfg = fast_config(sensors=dataclasses.replace(PlantConfig().sensors, spike_probability_per_s=0.05))
    p = Plc(cfg, seed=4)
    p.run_scans(20)
    assert not p.alarms_active & Alarm.SENSOR_FAULT
    p.write_setting("sim_sensor_fault", code)
    assert p.snapshot()["sim_sensor_fault"] == code
    seen = False
    for _ in range(scans):
        p.scan()
        seen |= bool(p.alarms_active & Alarm.SENSOR_FAULT)
    assert seen and Alarm.SENSOR_FAULT in p.alarms_unacked
    if code == 4:
        assert math.isnan(p.snapshot()["T_reactor"])
    p.write_setting("sim_sensor_fault", 0)
    p.run_scans(40)
    assert not p.alarms_active & Alarm.SENSOR_FAULT and math.isfinite(p.T_reactor)


def test_drift_fault_moves_the_reading_not_the_truth() -> None:
    p = Plc(fast_config(), seed=4)
    p.run_scans(20)
    p.write_setting("sim_sensor_fault", 2)
    p.run_scans(600)
    assert p.T_reactor - p.truth.x[3] == pytest.approx(0.005 * 600, abs=0.3)


def test_jacket_deviation_alarm_when_utilities_cannot_follow() -> None:
    weak = dataclasses.replace(Jacket(), kA_heat_W_per_K=100.0)
    p = Plc(fast_config(jacket=weak), seed=0)
    p.load_recipe(SHORT, sample_interval_s=0.0)
    p.command("start")
    run_until(p, lambda: bool(p.alarms_active & Alarm.JACKET_DEVIATION), 5000)
    assert p.phase in (Phase.HEATING, Phase.REACTING) and abs(p.T_jacket - p.T_jacket_sp) > 10.0


def test_lab_out_of_spec_alarm() -> None:
    p = Plc(fast_config(alarms=dataclasses.replace(Alarms(), lab_c_C_max_mol_per_m3=0.001)), seed=0)
    p.load_recipe(SHORT, sample_interval_s=1800.0)
    p.command("start")
    run_until(p, lambda: p.lab_seq >= 2)
    p.scan()
    assert Alarm.LAB_OUT_OF_SPEC in p.alarms_active and Alarm.LAB_OUT_OF_SPEC in p.alarms_unacked


def test_lab_results_through_the_plc_are_delayed_and_valid(plc: Plc) -> None:
    plc.command("start")
    run_until(plc, lambda: plc.lab_seq == 1)
    s = plc.snapshot()
    res = plc.lab_history[0]
    assert s["lab_sample_time"] == 1800.0 and s["lab_valid"] == 1
    delay = res.arrival_plant_time_s - res.sample_plant_time_s
    assert 1800.0 <= delay <= 2700.0
    assert s["lab_c_B"] == pytest.approx(res.true_c_B_mol_per_m3, rel=0.06)
    assert s["lab_c_B"] != res.true_c_B_mol_per_m3


def test_same_seed_same_plant_different_seed_different() -> None:
    def run(seed: int) -> dict[str, float]:
        p = Plc(fast_config(), seed=seed)
        p.load_recipe(SHORT)
        p.command("start")
        p.run_scans(4000)
        return p.snapshot()

    a, b, c = run(7), run(7), run(8)
    assert same(a, b)
    assert a["T_reactor"] != c["T_reactor"]


def test_commands_cover_the_interface() -> None:
    assert set(COMMAND_NAMES) == {"start", "hold", "resume", "abort", "reset", "ack_alarms"}
    assert all(callable(getattr(Plc, f"_cmd_{name}", None)) for name in COMMAND_NAMES)  # one handler each


# -- twin plant (the command that serves the PLC) ---------------------------------------------------------
def _interrupt(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C to a `twin plant` child and its output once it has ended (the caller reaps on failure)."""
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=20)


@pytest.mark.slow
def test_twin_plant_serves_on_loopback_and_stops_cleanly_on_ctrl_c() -> None:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "twin_core.offline.cli", "plant", "--port", str(port), "--speed", "100"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        wait_for_port(port)
        out, err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"127.0.0.1:{port}" in out and "PLC stopped" in out
    assert "Traceback" not in err


@pytest.mark.slow
def test_twin_plant_port_0_flat_out_with_a_connection_cap_and_idle_timeout() -> None:
    """--port 0 prints the port bound; --speed inf runs flat out; --max-connections and --idle-timeout
    reach the server (a second client is turned away, an idle one closed, then a new one gets in)."""
    import socket
    import struct

    from gateways.plant_process import READY_LINE

    def read_plant_time(sock: socket.socket) -> float:
        sock.sendall(struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 80, 2))
        data = b""
        while len(data) < 13:
            chunk = sock.recv(13 - len(data))
            assert chunk, "closed"
            data += chunk
        return struct.unpack(">f", data[9:13])[0]

    def closed_by_server(sock: socket.socket) -> bool:
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True

    proc = subprocess.Popen([sys.executable, "-m", "twin_core.offline.cli", "plant", "--port", "0", "--speed", "inf",
                             "--max-connections", "1", "--idle-timeout", "0.5"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = READY_LINE.search(line)
        assert m and int(m.group("port")) > 0, line
        assert "speed xinf" in line and "at most 1 connections, idle timeout 0.5 s" in line
        port = int(m.group("port"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
            t0 = read_plant_time(first)
            t1 = read_plant_time(first)
            while t1 == t0:  # plant time runs (flat out) between two image refreshes
                t1 = read_plant_time(first)
            assert t1 > t0
            with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
                assert closed_by_server(second)
            assert closed_by_server(first)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as late:
            assert read_plant_time(late) >= t1
        out, err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "PLC stopped" in out and "Traceback" not in err


def test_twin_plant_print_map(capsys: pytest.CaptureFixture[str]) -> None:
    from twin_core.offline.cli import main

    assert main(["plant", "--print-map"]) == 0
    out = capsys.readouterr().out
    assert "T_reactor" in out and "cmd_start" in out and "recipe_end_time" in out


# -- the interlock in every phase; published values saturate at the map's range -----------------------
def _tripped_by_runaway(plc: Plc) -> None:
    plc.command("start")
    run_until(plc, lambda: plc.phase == Phase.REACTING)
    plc.command("inject_runaway")
    run_until(plc, lambda: plc.phase == Phase.ABORTED, 5000)
    assert plc.truth.Q_extra_W == 0.0 and Alarm.INTERLOCK_TRIP in plc.alarms_active


@pytest.mark.parametrize("how", ["after a trip", "after an operator abort", "while held"])
def test_a_runaway_injected_later_is_quenched_in_every_phase(plc: Plc, how: str) -> None:
    """The issue's case: a runaway injected after the interlock had tripped (phase Aborted) used to run
    away unquenched (705 K). Now the interlock acts in every phase."""
    trip = plc.snapshot()["T_trip"]
    if how == "after a trip":
        _tripped_by_runaway(plc)
        plc.command("ack_alarms")
    elif how == "after an operator abort":
        plc.command("start")
        run_until(plc, lambda: plc.phase == Phase.REACTING)
        plc.command("abort")
        assert Alarm.INTERLOCK_TRIP not in plc.alarms_active
    else:
        plc.command("start")
        run_until(plc, lambda: plc.phase == Phase.REACTING)
        plc.command("hold")
    plc.command("inject_runaway")
    T_max = published_max = 0.0
    hot_at = quenched_at = None
    for _ in range(6000):  # 100 min of plant time (cooling below T_trip - 5 K takes ~45 min)
        plc.scan()
        T_max = max(T_max, plc.truth.x[3])
        published_max = max(published_max, plc.snapshot()["T_reactor"])
        if hot_at is None and plc.T_reactor > trip:
            hot_at = plc.scan_count
        if quenched_at is None and plc.truth.Q_extra_W == 0.0:
            quenched_at = plc.scan_count
        if quenched_at is not None and plc.T_reactor < trip - 5.0:
            break
        if plc.truth.x[3] > 480.0:
            break  # unquenched: stop before the integrator has to follow a runaway to 700 K
    assert hot_at is not None and quenched_at is not None
    # quenched once the reading has been above T_trip for the trip delay (1 scan of 1 s here)
    assert quenched_at - hot_at <= math.ceil(plc.config.alarms.trip_delay_s / plc.scan_s)
    assert plc.snapshot()["sim_inject_runaway"] == 0.0
    assert plc.phase == Phase.ABORTED and Alarm.INTERLOCK_TRIP in plc.alarms_active
    assert Alarm.INTERLOCK_TRIP in plc.alarms_unacked                                # latched again
    assert T_max < 450.0 and published_max < 450.0   # (unquenched, the vessel passed 700 K)
    assert plc.T_reactor < trip - 5.0                                                # cooling down
    plc.command("reset")
    assert plc.phase == Phase.IDLE


def test_a_hot_aborted_vessel_does_not_trip_again_every_scan(plc: Plc, caplog: pytest.LogCaptureFixture) -> None:
    _tripped_by_runaway(plc)
    trip = plc.snapshot()["T_trip"]
    assert plc.T_reactor > trip
    caplog.clear()
    with caplog.at_level("WARNING", logger="plant_sim.plc"):
        for _ in range(5):
            plc.scan()
    assert plc.T_reactor > trip and not [r for r in caplog.records if "interlock trip" in r.getMessage()]


def ideal_plc() -> Plc:
    """Transmitters without lag or noise (reading = truth); the jacket keeps its own dynamics."""
    cfg = fast_config()
    return Plc(dataclasses.replace(cfg, mismatch=dataclasses.replace(cfg.mismatch, sensors=False)), seed=0)


@pytest.mark.parametrize(("T_true_K", "published_K"), [(600.0, 500.0), (705.0, 500.0), (200.0, 250.0)])
def test_temperatures_beyond_the_map_range_saturate_with_an_alarm_bit(T_true_K: float, published_K: float) -> None:
    p = ideal_plc()
    p.truth.set_state(T=T_true_K, T_j=T_true_K)
    p.scan()
    s = p.snapshot()
    assert s["T_reactor"] == published_K and s["T_jacket"] == published_K
    assert s["sim_true_T_reactor"] != published_K   # the simulation-only truth is not saturated
    assert int(s["alarms_active"]) & Alarm.OUT_OF_RANGE and int(s["alarms_unacked"]) & Alarm.OUT_OF_RANGE
    p.truth.set_state(T=300.0, T_j=300.0)
    p.scan()
    s = p.snapshot()
    assert 290.0 < s["T_reactor"] < 310.0 and not int(s["alarms_active"]) & Alarm.OUT_OF_RANGE
    assert int(s["alarms_unacked"]) & Alarm.OUT_OF_RANGE   # latched until acknowledged


def test_a_saturated_reading_does_not_look_like_a_stuck_transmitter() -> None:
    p = Plc(fast_config(), seed=0)  # a live, noisy transmitter (lag 10 s)
    for _ in range(40):  # the climb to 600 K jumps > 3 K a scan, a spike (SENSOR_FAULT for 10 s): past it, acked
        p.truth.set_state(T=600.0)
        p.scan()
    p.command("ack_alarms")
    for _ in range(120):  # two minutes at 600 K: the stuck detector (30 s) would fire on a flat reading
        p.truth.set_state(T=600.0)
        p.scan()
    assert p.T_reactor == 500.0 and Alarm.OUT_OF_RANGE in p.alarms_active
    assert Alarm.SENSOR_FAULT not in p.alarms_unacked
