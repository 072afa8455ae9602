"""gateways: the PLC Modbus client against the real PLC server, and the end-to-end demo batch."""

from __future__ import annotations

import ast
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, free_port

from gateways.demo import run_demo
from gateways.fmu_runner import DEFAULT_FMU
from gateways.plant_process import PlantProcess, PlantProcessError, twin_command_module
from gateways.plc_client import MEASUREMENT_BLOCKS, SIM_TRUTH_BLOCKS, PlcClient, PlcRequestError
from plant_sim.modbus_server import PlcServerThread
from plant_sim.plc import Plc
from twin_core.errors import ParameterError
from twin_core.recipe import DEFAULT_RECIPE, Recipe
from twin_core.signals.plc import PLC_MEASUREMENTS, PLC_SIM_TRUTH, Phase


@pytest.fixture(scope="module")
def server():
    plc = Plc(seed=3)
    with PlcServerThread(plc, port=0, speed=0.0) as srv:  # paused: the tests drive the state
        yield plc, srv


def test_blocks_cover_every_measurement_once():
    names = [n for b in MEASUREMENT_BLOCKS for n in b.names]
    assert sorted(names) == sorted(s.name for s in PLC_MEASUREMENTS)


def test_gateways_import_nothing_from_plant_sim():
    """gateways talks to the plant over the network only (ARCHITECTURE.md): no import of plant_sim."""
    files = sorted((ROOT / "gateways").rglob("*.py"))
    assert files
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] == "plant_sim"]
    assert offenders == []


def test_truth_block_is_one_request_and_reads_the_plant_truth():
    assert len(SIM_TRUTH_BLOCKS) == 1
    assert sorted(SIM_TRUTH_BLOCKS[0].names) == sorted(s.name for s in PLC_SIM_TRUTH)
    plc = Plc(seed=5)
    plc.load_recipe(DEFAULT_RECIPE)
    plc.command("start")
    plc.run_scans(20_000)  # 2000 s of plant time: the reaction is under way
    with PlcServerThread(plc, port=0, speed=0.0) as srv, PlcClient(port=srv.port) as c:
        truth = c.read_sim_truth()
        m = c.read_measurements()
        x = srv.call(lambda: plc.truth.x)
        c_A0 = srv.call(lambda: plc.batch.true_c_A0_mol_per_m3)
    assert truth["sim_truth_scan_count"] == m["scan_count"] == 20_000
    for name, want in zip(("sim_true_c_A", "sim_true_c_B", "sim_true_c_C", "sim_true_T_reactor",
                           "sim_true_T_jacket"), x, strict=True):
        assert truth[name] == pytest.approx(want, rel=1e-6), name  # float32 on the wire
    assert truth["sim_true_c_B"] > 0.0
    assert truth["sim_true_c_A0"] == pytest.approx(c_A0, rel=1e-6)


def test_plant_process_ends_on_an_exception_and_refuses_bad_arguments():
    plant = PlantProcess(speed=50.0, seed=2)
    with pytest.raises(RuntimeError, match="boom"), plant:
        with PlcClient(port=plant.port) as c:
            assert c.read_measurements()["phase"] == Phase.IDLE
        raise RuntimeError("boom")
    assert plant.returncode == 0  # stopped by SIGINT, cleanly
    assert "PLC stopped" in plant.stdout_tail
    for bad in ({"speed": 0.0}, {"speed": math.inf}, {"seed": 1.5}, {"port": 70000}):
        with pytest.raises(ParameterError):
            PlantProcess(**bad)


@pytest.mark.slow
def test_plant_process_reports_a_plant_that_cannot_start():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        plant = PlantProcess(speed=10.0, port=busy.getsockname()[1])
        with pytest.raises(PlantProcessError, match="status 2"):
            plant.start()
    assert plant.returncode == 2


def test_read_measurements_equal_plc_snapshot(server):
    plc, srv = server
    snap = srv.call(plc.snapshot)
    with PlcClient(port=srv.port) as c:
        m = c.read_measurements()
    for name, value in m.items():
        if math.isnan(snap[name]):
            assert math.isnan(value), name
        else:  # float32 on the wire
            assert value == pytest.approx(snap[name], rel=1e-6, abs=1e-6), name


def test_recipe_download_reaches_plc_settings(server):
    plc, srv = server
    recipe = Recipe((0.0, 1800.0, 7200.0), (300.0, 330.0, 335.0), 9000.0, name="t")
    with PlcClient(port=srv.port) as c:
        c.download_recipe(recipe, 900.0)
    snap = srv.call(plc.snapshot)
    assert snap["recipe_n_points"] == 3
    assert snap["recipe_end_time"] == 9000.0
    assert snap["recipe_sample_interval"] == 900.0
    assert [snap[f"recipe_time_{i}"] for i in range(3)] == [0.0, 1800.0, 7200.0]
    assert [snap[f"recipe_T_{i}"] for i in range(3)] == [300.0, 330.0, 335.0]


@pytest.mark.parametrize(("call", "code"), [
    (lambda c: c.command("resume"), 3),                 # Resume while Idle: wrong phase
    (lambda c: c.write("T_trip", float("nan")), 3),     # NaN refused by the PLC
    (lambda c: c.write("T_trip", 1000.0), 3),           # out of range
])
def test_refused_requests_raise_with_the_exception_code(server, call, code):
    plc, srv = server
    before = srv.call(plc.snapshot)
    with PlcClient(port=srv.port) as c, pytest.raises(PlcRequestError) as exc:
        call(c)
    assert exc.value.code == code
    after = srv.call(plc.snapshot)
    assert {k: v for k, v in after.items() if not (isinstance(v, float) and math.isnan(v))} == \
        {k: v for k, v in before.items() if not (isinstance(v, float) and math.isnan(v))}


def test_connect_refused_is_a_clear_error():
    from conftest import free_port

    with pytest.raises(PlcRequestError, match="connect"):
        PlcClient(port=free_port(), timeout_s=0.5).connect()


@pytest.mark.slow
def test_demo_batch_end_to_end(dist_artifacts):
    """Plant process -> runtime (OPC UA, mirror) -> SCADA client: the estimates the client receives
    track the hidden truth, and the link cut shows as Bad/Uncertain statuses, then recovers."""
    res = run_demo(speed=1500.0, seed=11, fmu_path=DEFAULT_FMU, recipe=DEFAULT_RECIPE, echo=False)
    assert res.final_phase in (Phase.COOLING.name, Phase.COMPLETE.name), res.final_phase
    assert res.labs >= 8, res.labs  # 6 h batch, a sample every 30 min, results 30-45 min later
    assert res.batch_end_s >= 0.9 * DEFAULT_RECIPE.end_time_s, res.batch_end_s
    assert all(c >= 0.0 for c in res.c_B_est)
    assert max(res.health) < 2, "model-health alarm on a fault-free batch"
    # Generous bound: the demo's fidelity figure is printed by `twin demo`; this guards against a
    # broken chain (wrong units or registers would give errors of tens of percent).
    assert res.rmse_pct_of_max < 10.0, res.rmse_pct_of_max
    assert {("T_reactor", "Bad_Comm"), ("c_B", "Uncertain")} <= res.statuses_during_cut
    assert any("lost" in e for e in res.events) and any("restored" in e for e in res.events)
    assert res.quality[-1] == "Good"  # recovered after the cut
    assert res.plant_pid is not None and res.plant_returncode == 0  # the plant process was ended cleanly


def _children() -> set[int]:
    me = os.getpid()
    with open(f"/proc/{me}/task/{me}/children", encoding="ascii") as f:
        return {int(p) for p in f.read().split()}


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="Linux /proc")
@pytest.mark.slow
def test_demo_ends_the_plant_process_when_the_batch_fails(dist_artifacts):
    from gateways.demo import DemoError

    before = _children()
    times = tuple(600.0 * i for i in range(20))  # 20 points: the PLC holds 16, StartBatch is refused
    too_long = Recipe(times, tuple(300.0 + i for i in range(20)), 7 * 3600.0, name="too-long")
    with pytest.raises(DemoError, match="16 points"):
        run_demo(speed=100.0, seed=1, fmu_path=DEFAULT_FMU, recipe=too_long, echo=False)
    assert _children() <= before  # the plant process it started is gone (and reaped)


def _wait_closed(port: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_ctrl_c_in_twin_demo_ends_the_plant_process():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", twin_command_module(), "demo", "--speed", "200",
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    pid = None
    try:
        for line in proc.stdout:  # wait for readiness: the plant line, then the table header
            m = re.search(r"process (\d+)\) serving Modbus TCP on 127\.0\.0\.1:(\d+)", line)
            if m:
                pid = int(m.group(1))
                assert int(m.group(2)) == port
            if line.lstrip().startswith("t [h]"):
                break
        assert pid is not None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert _wait_closed(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the demo ended and reaped its plant


@pytest.mark.parametrize("ticks", range(6))
def test_a_cancel_in_the_tick_the_wait_ends_is_not_lost(ticks: int) -> None:
    """gateways.runtime.wait_event (the runtime's scan sleep, the demo's SCADA waits): a task
    cancelled in the same loop tick as its event is set still ends cancelled, whatever the tick
    offset (Python 3.11's asyncio.wait_for loses it at some: CPython gh-86296; a lost Ctrl-C let
    `twin demo` run on)."""
    import asyncio

    from gateways.runtime import wait_event

    async def main() -> str:
        ev = asyncio.Event()
        task = asyncio.create_task(wait_event(ev, 10.0))
        for _ in range(ticks):
            await asyncio.sleep(0)
        ev.set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "ran on"

    assert asyncio.run(main()) == "cancelled"


def test_wait_event_times_out_or_reports_the_event() -> None:
    import asyncio

    from gateways.runtime import wait_event

    async def main() -> tuple[bool, bool]:
        ev = asyncio.Event()
        timed_out = await wait_event(ev, 0.01)
        asyncio.get_running_loop().call_later(0.01, ev.set)
        return timed_out, await wait_event(ev, 10.0)

    assert asyncio.run(main()) == (False, True)
