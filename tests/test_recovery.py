"""Crash recovery (gateways.recovery, the runtime's checkpoints) with the real FMU and real SQLite files.

A checkpoint restored into a fresh runtime continues bit-identically (FMU state, lab queue, counters);
a table of damaged or incompatible checkpoint files (flipped byte, truncated, wrong GUID, wrong format
version, not a database, an edited row) is each rejected, reported (log, event, ``checkpoint_state``)
and the reactor starts clean; a full disk and a read-only data folder are flagged while the live
values keep coming. The kill-and-resume of a real `twin run` process is tests/test_recovery_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import free_port, until

from gateways.config import ReactorConfig, RuntimeConfig
from gateways.model import EventKind, TwinEvent, Value
from gateways.plant_process import PlantProcess
from gateways.plc_client import PlcClient
from gateways.recovery import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointRejected,
    CheckpointState,
    CheckpointStore,
    CheckpointWriteError,
    ReactorCheckpoint,
)
from gateways.runtime import ReactorRuntime, Runtime
from twin_core.recipe import Recipe
from twin_core.signals.runtime import Quality, TwinMode

SPEED = 3000.0
RECIPE = Recipe((0.0, 1800.0), (298.15, 343.15), 2 * 3600.0, name="short-ramp")


class Recorder:
    def __init__(self) -> None:
        self.snaps: list[dict[str, Value]] = []
        self.events: list[TwinEvent] = []

    async def publish(self, reactor: str, snapshot) -> None:  # noqa: ANN001
        self.snaps.append(dict(snapshot))

    async def event(self, reactor: str, event: TwinEvent) -> None:
        self.events.append(event)

    def of(self, kind: EventKind) -> list[str]:
        return [e.message for e in self.events if e.kind is kind]


def _cfg(fmu: Path, data_dir: Path, plc_port: int, checkpoint_scans: int = 2) -> RuntimeConfig:
    return RuntimeConfig(opcua_endpoint="", mirror_port=-1, scan_s=60.0, speed=SPEED, data_dir=str(data_dir),
                         reconnect_min_s=0.05, reconnect_max_s=0.2, plc_timeout_s=0.5,
                         checkpoint_scans=checkpoint_scans,
                         reactors=(ReactorConfig(name="R1", plc_port=plc_port, fmu=str(fmu), sample_interval_s=1200.0),))


def _reading(k: int) -> dict[str, float]:
    """A PLC reading of scan k of a synthetic batch (60 s scans, a jacket ramp, one lab assay)."""
    t = 60.0 * k
    lab = k >= 25
    return {"plant_time": 1000.0 + t, "batch_time": t, "batch_id": 3.0, "phase": 3.0, "T_reactor": 298.15 + 0.02 * k,
            "T_jacket": 300.0 + 0.05 * k, "lab_seq": 1.0 if lab else 0.0, "lab_valid": 1.0 if lab else 0.0,
            "lab_sample_time": 1200.0 if lab else 0.0, "lab_c_B": 180.0 if lab else math.nan,
            "lab_c_C": 10.0 if lab else math.nan, "alarms_unacked": 0.0, "alarms_active": 0.0}


async def _drive(r: ReactorRuntime, ks: range) -> list[dict[str, float]]:
    outs = []
    for k in ks:
        m = _reading(k)
        r.m = m
        if r.mode is TwinMode.WAITING:
            await r._start_twin(m)
        else:
            r._step(m, closed_loop=True)
        outs.append(dict(r.out))
    return outs


def _reactor(fmu: Path, tmp: Path) -> ReactorRuntime:
    cfg = _cfg(fmu, tmp, 1)
    r = ReactorRuntime(cfg.reactors[0], cfg)
    r.open()
    return r


@pytest.fixture(scope="module")
def fmu_path(dist_artifacts: Path) -> Path:
    return dist_artifacts / "BatchReactorTwin.fmu"


@pytest.fixture(scope="module")
def checkpoint_of_a_batch(fmu_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ReactorCheckpoint:
    async def main() -> ReactorCheckpoint:
        r = _reactor(fmu_path, tmp_path_factory.mktemp("cp"))
        try:
            await _drive(r, range(1, 30))
            return r.checkpoint()
        finally:
            r.close()

    return asyncio.run(main())


def test_a_restored_checkpoint_continues_bit_identically(fmu_path: Path, tmp_path: Path) -> None:
    """Uninterrupted vs. checkpoint (with a LIMS result queued) -> file -> a fresh runtime -> continue."""
    async def main() -> None:
        a = _reactor(fmu_path, tmp_path)
        b = _reactor(fmu_path, tmp_path)
        try:
            await _drive(a, range(1, 20))
            await _drive(b, range(1, 20))
            for r in (a, b):
                await r.enter_lab_result(600.0, 150.0, 5.0)  # queued, used at the next step
            cp = b.checkpoint()
            b.close()
            with CheckpointStore(tmp_path / CHECKPOINT_FILE) as store:
                store.save([cp])
            with CheckpointStore(tmp_path / CHECKPOINT_FILE) as store:
                loaded = store.load("R1", a.fmu.guid)  # type: ignore[union-attr]
            assert loaded is not None and loaded.fmu_state == cp.fmu_state and loaded.runtime["lims"] == [[600.0, 150.0, 5.0]]
            c = _reactor(fmu_path, tmp_path)
            try:
                c.restore(loaded)
                assert (c.t_twin, c.twin_batch, c.mode) == (a.t_twin, a.twin_batch, a.mode)
                want = await _drive(a, range(20, 40))
                got = await _drive(c, range(20, 40))
                assert got == want  # bit-identical: the FMU state, the lab queue and the lab bookkeeping
                assert c.counters == a.counters and c.counters["lab_results_used"] == 2
            finally:
                c.close()
        finally:
            a.close()

    asyncio.run(main())


# -- damaged and incompatible checkpoints --------------------------------------------------------------
def _write(path: Path, cp: ReactorCheckpoint) -> None:
    with CheckpointStore(path) as store:  # closing the last connection folds the WAL into the file
        store.save([cp])
    assert not Path(f"{path}-wal").exists()


def _flip_in_state(path: Path, cp: ReactorCheckpoint) -> None:
    _write(path, cp)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the compressed FMU state fills most of the file
    path.write_bytes(bytes(data))


def _flip_in_btree(path: Path, cp: ReactorCheckpoint) -> None:
    _write(path, cp)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # the page type of the schema's b-tree page
    path.write_bytes(bytes(data))


def _truncated(path: Path, cp: ReactorCheckpoint) -> None:
    _write(path, cp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _other_guid(path: Path, cp: ReactorCheckpoint) -> None:
    _write(path, ReactorCheckpoint(cp.reactor, "{00000000-0000-0000-0000-000000000000}", cp.plant_time_s,
                                   cp.batch_id, cp.batch_time_s, cp.runtime, cp.fmu_state))


def _other_version(path: Path, cp: ReactorCheckpoint) -> None:
    _write(path, ReactorCheckpoint(cp.reactor, cp.fmu_guid, cp.plant_time_s, cp.batch_id, cp.batch_time_s,
                                   cp.runtime, cp.fmu_state, version=CHECKPOINT_FORMAT_VERSION + 1))


def _not_a_database(path: Path, cp: ReactorCheckpoint) -> None:
    path.write_bytes(os.urandom(3) + b"this is not an SQLite file" * 200)


def _edited_row(path: Path, cp: ReactorCheckpoint) -> None:
    _write(path, cp)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE checkpoint SET plant_time_s = plant_time_s + 60")
        db.commit()


CORRUPTIONS = [
    ("flipped byte in the FMU state", _flip_in_state, r"checksum mismatch|does not decompress|not a readable"),
    ("flipped byte in the b-tree", _flip_in_btree, r"not a readable checkpoint database"),
    ("truncated file", _truncated, r"not a readable checkpoint database|unreadable|decompress"),
    ("another FMU GUID", _other_guid, r"another FMU build \(GUID \{00000000"),
    ("another format version", _other_version, rf"format version {CHECKPOINT_FORMAT_VERSION + 1}"),
    ("not a database", _not_a_database, r"not a readable checkpoint database"),
    ("an edited row", _edited_row, r"checksum mismatch"),
]


@pytest.mark.parametrize(("case", "damage", "reason"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_damaged_or_incompatible_checkpoint_is_rejected_and_reported(
        case: str, damage, reason: str, fmu_path: Path, checkpoint_of_a_batch: ReactorCheckpoint,  # noqa: ANN001
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import re

    damage(tmp_path / CHECKPOINT_FILE, checkpoint_of_a_batch)

    async def main() -> tuple[Runtime, Recorder]:
        rec = Recorder()
        rt = Runtime(_cfg(fmu_path, tmp_path, free_port()), [rec])  # no PLC: the link stays down
        async with rt:
            r1 = rt.reactors["R1"]
            await until(lambda: bool(rec.of(EventKind.CHECKPOINT_REJECTED)) and len(rec.snaps) >= 1)
            # nothing of the rejected state was taken over: the reactor is as if freshly started
            assert r1.restored is None and r1.mode is TwinMode.WAITING and r1.twin_batch == -1 and not r1.m
            assert not r1.lims and r1.counters["lab_results_used"] == 0
            assert rec.snaps[-1]["checkpoint_state"].value == CheckpointState.REJECTED
            assert "CHECKPOINT REJECTED" in r1.status_line() or not r1.m
        return rt, rec

    with caplog.at_level(logging.ERROR, logger="gateways.runtime"):
        rt, rec = asyncio.run(main())
    (msg,) = rec.of(EventKind.CHECKPOINT_REJECTED)
    assert re.search(reason, msg), msg
    assert "restarts from the batch's charge" in msg
    assert any("checkpoint rejected" in r.getMessage() for r in caplog.records)
    # a file that was not a database was moved aside, and a new one is usable
    with CheckpointStore(tmp_path / CHECKPOINT_FILE) as store:
        store.save([checkpoint_of_a_batch])
        assert store.load("R1", checkpoint_of_a_batch.fmu_guid) is not None


def test_a_checkpoint_the_fmu_refuses_is_rejected(fmu_path: Path, checkpoint_of_a_batch: ReactorCheckpoint,
                                                    tmp_path: Path) -> None:
    """A row whose checks pass but whose FMU state is not one (the FMU's own check): rejected, clean FMU."""
    cp = checkpoint_of_a_batch
    bad = ReactorCheckpoint(cp.reactor, cp.fmu_guid, cp.plant_time_s, cp.batch_id, cp.batch_time_s, cp.runtime,
                            b'{"format":"something else"}')

    async def main() -> None:
        r = _reactor(fmu_path, tmp_path)
        try:
            with pytest.raises(CheckpointRejected, match="the FMU refused the state"):
                r.restore(bad)
            assert r.mode is TwinMode.WAITING and r.fmu is not None and not r.fmu.started
            await _drive(r, range(1, 3))  # and the fresh FMU runs a batch
            assert r.out["c_B"] >= 0.0
        finally:
            r.close()

    asyncio.run(main())


# -- a full disk, a read-only folder: flagged, live values go on ---------------------------------------
async def _batch_running(rt: Runtime, rec: Recorder) -> ReactorRuntime:
    r1 = rt.reactors["R1"]
    await until(lambda: r1.link.name == "UP")
    await r1.start_batch(RECIPE)
    await until(lambda: r1.mode is TwinMode.TRACKING and r1.t_twin > 600.0, timeout_s=60.0)
    return r1


def test_a_full_disk_is_flagged_and_live_values_go_on(fmu_path: Path, tmp_path: Path) -> None:
    # SQLite's page limit fails a write exactly as a full disk does (SQLITE_FULL): room for the
    # checkpoints between batches (no FMU state), none for a running twin's state.
    store = CheckpointStore(tmp_path / CHECKPOINT_FILE, max_pages=4)

    async def main() -> None:
        rec = Recorder()
        with PlantProcess(speed=SPEED, seed=11) as plant:
            rt = Runtime(_cfg(fmu_path, tmp_path, plant.port), [rec], checkpoints=store)
            async with rt:
                r1 = await _batch_running(rt, rec)
                await until(lambda: r1.checkpoint_state is CheckpointState.FAILING)
                n = len(rec.snaps)
                await until(lambda: len(rec.snaps) >= n + 3)  # the scans go on
                last = rec.snaps[-1]
                assert last["checkpoint_state"].value == CheckpointState.FAILING
                assert last["c_B"].quality is Quality.GOOD and last["twin_mode"].value == TwinMode.TRACKING
                assert "CHECKPOINT FAILING" in r1.status_line()
                assert "full" in rt.checkpoint_error
                (msg,) = rec.of(EventKind.CHECKPOINT_FAILED)
                assert "database or disk is full" in msg and "live values are still served" in msg

    asyncio.run(main())


@contextlib.contextmanager
def _read_only(folder: Path):  # noqa: ANN202
    """``folder`` read-only for this process: chmod, and for root (which chmod does not stop) the
    immutable attribute."""
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_read_only_data_folder_is_flagged_and_live_values_go_on(fmu_path: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()

    async def main() -> None:
        rec = Recorder()
        with PlantProcess(speed=SPEED, seed=12) as plant:
            rt = Runtime(_cfg(fmu_path, data, plant.port), [rec])
            async with rt:
                r1 = rt.reactors["R1"]
                assert r1.checkpoint_state is CheckpointState.FAILING  # found at start
                assert "checkpoint file" in rt.checkpoint_error
                await _batch_running(rt, rec)
                last = rec.snaps[-1]
                assert last["checkpoint_state"].value == CheckpointState.FAILING
                assert last["c_B"].quality is Quality.GOOD
                assert "CHECKPOINT FAILING" in r1.status_line()
                assert rec.of(EventKind.CHECKPOINT_FAILED)

    with _read_only(data):
        with pytest.raises(OSError):
            (data / "probe").write_text("x")
        asyncio.run(main())
    assert not (data / CHECKPOINT_FILE).exists()


def test_a_store_that_cannot_be_created_says_where(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointWriteError, match="a-file"):
        CheckpointStore(blocker / "sub" / CHECKPOINT_FILE).open()


def test_after_a_rejected_checkpoint_the_twin_restarts_from_the_batchs_charge(
        fmu_path: Path, checkpoint_of_a_batch: ReactorCheckpoint, tmp_path: Path) -> None:
    """A batch is running in the PLC; the stored checkpoint (another FMU build) is refused, and the twin
    starts on the PLC's batch from the charge (a fresh FMU start), mixing nothing of the old state."""
    _other_guid(tmp_path / CHECKPOINT_FILE, checkpoint_of_a_batch)

    async def main() -> None:
        rec = Recorder()
        with PlantProcess(speed=SPEED, seed=13) as plant:
            with PlcClient(port=plant.port) as plc:
                plc.download_recipe(RECIPE, 1200.0)
                plc.command("start")
            rt = Runtime(_cfg(fmu_path, tmp_path, plant.port), [rec])
            rt.reactors["R1"].record_steps()
            async with rt:
                r1 = rt.reactors["R1"]
                await until(lambda: r1.mode is TwinMode.TRACKING and len(r1.steps or []) > 3, timeout_s=60.0)
                assert r1.checkpoint_state in (CheckpointState.REJECTED, CheckpointState.WRITTEN)
        kinds = [e.kind for e in rec.events]
        assert kinds.index(EventKind.CHECKPOINT_REJECTED) < kinds.index(EventKind.BATCH_STARTED)
        assert EventKind.TWIN_RESTORED not in kinds
        start = r1.steps[0]  # type: ignore[index]
        assert "params" in start and start["params"]["T0"] == pytest.approx(start["params"]["T_measured"])
        assert r1.twin_batch == 1 and start["t0"] > 0.0  # the PLC's batch, from its charge, at its batch time
        assert r1.counters["lab_results_used"] <= 1 and r1.t_twin != checkpoint_of_a_batch.batch_time_s

    asyncio.run(main())
