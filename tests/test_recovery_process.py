"""Kill-and-resume on real processes: the plant process, two `twin run` processes scanning it.

Runtime A runs the batch uninterrupted; runtime B is SIGKILLed mid-batch and started again on the same
data folder. B restores its checkpoint (a TWIN_RESTORED event states the downtime), catches up with the
PLC and continues the same batch (no new BATCH_STARTED); at the end of the batch its estimate of c_B
lies within its own 95 % interval of A's. B's OPC UA history of c_B is Good before the kill and after
the restart with exactly one Bad entry between them, at the restart, marking the gap.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import ua
from conftest import free_port
from opcua_helpers import USERS, make_client, namespace_index, signal_node_id

from gateways.plant_process import PlantProcess, twin_command_module
from gateways.plc_client import PlcClient
from gateways.recovery import CHECKPOINT_FILE, CheckpointStore
from gateways.users import TEST_ONLY_KDF, UserStore
from twin_core.recipe import Recipe
from twin_core.signals.plc import Phase

SPEED = 200.0
RECIPE = Recipe((0.0, 1800.0), (298.15, 343.15), 4 * 3600.0, name="ramp-4h")
PLANT = "plant"
VIEWER = "vic"


class TwinRun:
    """`twin run --config FILE --quiet` in its own session; ``url`` once it serves OPC UA."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> TwinRun:
        self.log.write_text("")
        out = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", twin_command_module(), "run", "--config", str(self.config)],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout_s
        while not re.search(r"serving TwinOpcUaServer: (\S+)", self.log.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"twin run did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    @property
    def url(self) -> str:
        m = re.findall(r"serving TwinOpcUaServer: (\S+)", self.log.read_text())
        return m[-1]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _config(folder: Path, name: str, plc_port: int, fmu: Path) -> Path:
    data = folder / name
    data.mkdir()
    store = UserStore(data / "users.json", kdf=TEST_ONLY_KDF)
    store.add(VIEWER, USERS[VIEWER][0], USERS[VIEWER][1])
    path = folder / f"{name}.toml"
    path.write_text(f"""
plant = "{PLANT}"
opcua_endpoint = "opc.tcp://127.0.0.1:{free_port()}/batch-twin/"
opcua_allow_none = true
mirror_port = -1
scan_s = 60.0
speed = {SPEED}
data_dir = "{data}"
reconnect_min_s = 0.05
reconnect_max_s = 0.2
plc_timeout_s = 1.0
checkpoint_scans = 2

[[reactor]]
name = "R1"
plc_port = {plc_port}
fmu = "{fmu}"
sample_interval_s = 1800.0
""")
    return path


async def _read(url: str, names: tuple[str, ...]) -> dict[str, float]:
    client = await make_client(url, VIEWER)
    async with client:
        ns = await namespace_index(client)
        folders = {"c_B": "Estimates", "c_B_std": "Estimates", "twin_mode": "Status", "batch_time": "Status",
                   "lab_results_used": "Status", "checkpoint_state": "Status"}
        return {n: (await client.get_node(signal_node_id(ns, PLANT, "R1", folders[n], n)).read_value())
                for n in names}


async def _history(url: str) -> tuple[list[ua.DataValue], list[str]]:
    client = await make_client(url, VIEWER)
    async with client:
        ns = await namespace_index(client)
        t0, t1 = datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=1)
        hist = await client.get_node(signal_node_id(ns, PLANT, "R1", "Estimates", "c_B")).read_raw_history(t0, t1)
        events = await client.get_node(ua.NodeId(f"{PLANT}.R1", ns)).read_event_history(t0, t1)
        return hist, [e.Message.Text for e in events]


def _plc_batch_time(port: int) -> tuple[float, Phase]:
    with PlcClient(port=port) as plc:
        m = plc.read_measurements()
    return m["batch_time"], Phase(int(m["phase"]))


def _wait(cond, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_mid_batch_resumes_within_the_estimators_uncertainty(dist_artifacts: Path, tmp_path: Path) -> None:
    # a copy: another session rebuilding dist/ mid-test would give the restarted runtime another FMU
    # build, whose checkpoint it rightly rejects
    fmu = tmp_path / "BatchReactorTwin.fmu"
    shutil.copyfile(dist_artifacts / "BatchReactorTwin.fmu", fmu)
    with PlantProcess(speed=SPEED, seed=21) as plant:
        a = TwinRun(_config(tmp_path, "a", plant.port, fmu), tmp_path / "a.log")
        b = TwinRun(_config(tmp_path, "b", plant.port, fmu), tmp_path / "b.log")
        try:
            a.start()
            b.start()
            with PlcClient(port=plant.port) as plc:
                plc.download_recipe(RECIPE, 1800.0)
                plc.command("start")
            # mid-batch, after a lab result and with a checkpoint of the running twin on disk
            _wait(lambda: _plc_batch_time(plant.port)[0] > 1.4 * 3600.0, 120.0, "1.4 h of batch time")
            before = asyncio.run(_read(b.url, ("c_B", "twin_mode", "lab_results_used")))
            assert before["twin_mode"] == 1 and before["lab_results_used"] >= 1
            b.kill()
            killed_at = datetime.now(UTC)
            with CheckpointStore(tmp_path / "b" / CHECKPOINT_FILE) as store:
                cp = store.load("R1", re.search(r"\((\{[^)]*\})\)", b.log.read_text()).group(1))  # type: ignore[union-attr]
            assert cp is not None and cp.fmu_state is not None and cp.batch_time_s > 3600.0
            b.start()  # same data folder: restore, catch up, continue
            _wait(lambda: _plc_batch_time(plant.port)[1] not in (Phase.HEATING, Phase.REACTING, Phase.CHARGING),
                  240.0, "the end of the batch")
            time.sleep(2 * 60.0 / SPEED + 0.5)  # two scans: both twins have seen the end
            fa = asyncio.run(_read(a.url, ("c_B", "c_B_std", "twin_mode", "lab_results_used")))
            fb = asyncio.run(_read(b.url, ("c_B", "c_B_std", "twin_mode", "lab_results_used", "checkpoint_state")))
            hist, events = asyncio.run(_history(b.url))
        finally:
            a.stop()
            b.stop()
    log_b = b.log.read_text()
    # B continued its batch from the checkpoint instead of starting it afresh from the charge
    restored = [e for e in events if "twin restored from the checkpoint" in e]
    print(f"uninterrupted c_B {fa['c_B']:.5f} mol/L; killed+resumed {fb['c_B']:.5f} +- {1.96 * fb['c_B_std']:.5f} "
          f"(95 %); checkpoint at batch time {cp.batch_time_s:.0f} s; events: {restored}")
    assert len(restored) == 1 and "downtime" in restored[0], (events, log_b[-4000:])
    assert sum("batch 1 started" in e for e in events) == 1, events
    assert "CheckpointRejected" not in log_b and "Traceback" not in log_b, log_b[-3000:]
    # the estimates agree within the estimator's own 95 % interval
    assert fa["twin_mode"] == fb["twin_mode"] == 0  # both saw the batch end
    assert fb["lab_results_used"] >= 1
    assert abs(fb["c_B"] - fa["c_B"]) <= 1.96 * fb["c_B_std"], (fa, fb)
    assert fb["checkpoint_state"] == 0  # written again after the restart
    # history: Good before the kill, one Bad marker at the restart, Good after it
    bad = [i for i, dv in enumerate(hist) if not dv.StatusCode.is_good()]
    good_before = [dv for dv in hist[: bad[-1]] if dv.StatusCode.is_good()] if bad else []
    restart_marks = [i for i in bad if hist[i].SourceTimestamp.replace(tzinfo=UTC) > killed_at]
    assert len(restart_marks) == 1, [(dv.SourceTimestamp, dv.StatusCode) for dv in hist]
    i = restart_marks[0]
    assert hist[i].StatusCode.value == ua.StatusCodes.BadWaitingForInitialData
    assert good_before and good_before[-1].SourceTimestamp.replace(tzinfo=UTC) <= killed_at
    after = hist[i + 1:]
    assert after and all(dv.StatusCode.is_good() for dv in after)
