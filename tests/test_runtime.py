"""The runtime (`twin run`) against the simulated plant in its own process, over Modbus TCP.

End to end: the plant process, the runtime's scan loop and the built FMU; the published estimates
equal an offline replay of the same PLC readings through a fresh instance of the same FMU; a cut
link turns every PLC value Bad and the estimates Uncertain within one scan, the twin runs open loop
and says so; a restarted PLC is detected and resets the twin; LIMS lab results are validated.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import until

from gateways.config import ReactorConfig, RuntimeConfig
from gateways.fmu_runner import FmuRunner
from gateways.model import EventKind, RequestRefused, TwinEvent, Value
from gateways.plant_process import PlantProcess
from gateways.runtime import Runtime
from twin_core.recipe import Recipe
from twin_core.signals.runtime import PUBLISHED, Quality, TwinMode

SPEED = 3000.0  # plant seconds per wall second
RECIPE = Recipe((0.0, 1800.0), (298.15, 343.15), 2 * 3600.0, name="short-ramp")


class Recorder:
    """A Publisher that keeps what it is given (the servers are tested on their own)."""

    def __init__(self) -> None:
        self.snaps: list[tuple[float, dict[str, Value]]] = []
        self.events: list[TwinEvent] = []

    async def publish(self, reactor: str, snapshot) -> None:  # noqa: ANN001
        self.snaps.append((time.monotonic(), dict(snapshot)))

    async def event(self, reactor: str, event: TwinEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[EventKind]:
        return [e.kind for e in self.events]


def _config(port: int, fmu: Path, scan_s: float = 60.0) -> RuntimeConfig:
    # checkpoint_scans=0: these tests are not about crash recovery (tests/test_recovery.py), and
    # checkpoints in the default data folder would carry state from one test to the next
    return RuntimeConfig(opcua_endpoint="", mirror_port=-1, scan_s=scan_s, speed=SPEED, reconnect_min_s=0.05,
                         reconnect_max_s=0.2, checkpoint_scans=0,
                         reactors=(ReactorConfig(name="R1", plc_port=port, fmu=str(fmu), sample_interval_s=1200.0),))


def _run_batch(fmu: Path, seed: int, until_kind: EventKind, timeout_s: float,
               reactor: Callable[[ReactorConfig], ReactorConfig] | None = None) -> tuple[Runtime, Recorder]:
    """The plant process and the runtime (its FMU's starts and steps recorded; ``reactor`` edits the
    reactor's configuration), StartBatch(RECIPE); returns once the runtime raised ``until_kind``."""
    async def main() -> tuple[Runtime, Recorder]:
        rec = Recorder()
        with PlantProcess(speed=SPEED, seed=seed) as plant:
            cfg = _config(plant.port, fmu)
            if reactor is not None:
                cfg = replace(cfg, reactors=(reactor(cfg.reactors[0]),))
            rt = Runtime(cfg, [rec])
            rt.reactors["R1"].record_steps()
            async with rt:
                r1 = rt.reactors["R1"]
                await until(lambda: r1.link.name == "UP")
                await r1.start_batch(RECIPE)
                await until(lambda: until_kind in rec.kinds(), timeout_s=timeout_s)
        return rt, rec

    return asyncio.run(main())


def test_every_published_value_is_in_each_snapshot(dist_artifacts: Path) -> None:
    async def main() -> None:
        rec = Recorder()
        with PlantProcess(speed=SPEED, seed=3) as plant:
            async with Runtime(_config(plant.port, dist_artifacts / "BatchReactorTwin.fmu"), [rec]):
                await until(lambda: len(rec.snaps) >= 2)
        names = {p.name for p in PUBLISHED}
        for _, snap in rec.snaps:
            assert set(snap) == names
        # no batch yet: the PLC values are Good, the twin has nothing to say
        last = rec.snaps[-1][1]
        assert last["phase"].quality is Quality.GOOD and last["phase"].value == 0
        assert last["c_B"].quality is Quality.BAD_WAITING
        assert last["twin_mode"].value == TwinMode.WAITING

    asyncio.run(main())


@pytest.mark.slow
def test_batch_end_to_end_equals_an_offline_replay_of_the_same_readings(dist_artifacts: Path) -> None:
    fmu_path = dist_artifacts / "BatchReactorTwin.fmu"
    rt, rec = _run_batch(fmu_path, 5, EventKind.BATCH_ENDED, 120.0)
    kinds = rec.kinds()
    assert kinds.index(EventKind.BATCH_STARTED) < kinds.index(EventKind.BATCH_ENDED)
    steps = rt.reactors["R1"].steps
    assert steps and "params" in steps[0] and sum("dt" in s for s in steps) > 50
    assert any("lab_valid" in s.get("inputs", {}) for s in steps)  # lab results reached the twin
    # the same inputs through a fresh instance of the same FMU give the same outputs
    with FmuRunner(fmu_path, instance_name="replay") as replay:
        for s in steps:
            if "params" in s:
                replay.start(s["params"], t0_s=s["t0"])
                continue
            out = replay.step(s["t"], s["dt"], s["inputs"])
            for k, v in s["outputs"].items():
                assert out[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (s["t"], k)
    # and what was published is what the twin computed, Good while the link was up
    tracked = [snap for _, snap in rec.snaps if snap["twin_mode"].value == TwinMode.TRACKING]
    assert tracked and all(sn["c_B"].quality is Quality.GOOD for sn in tracked)
    finals = [sn for sn in tracked if sn["c_B"].value == steps[-1]["outputs"]["c_B"]]
    assert finals


@pytest.mark.slow
def test_link_cut_publishes_bad_within_a_scan_and_a_restarted_plc_resets_the_twin(dist_artifacts: Path) -> None:
    fmu_path = dist_artifacts / "BatchReactorTwin.fmu"

    async def main() -> Recorder:
        rec = Recorder()
        plant = PlantProcess(speed=SPEED, seed=9).start()
        port = plant.port
        try:
            async with Runtime(_config(port, fmu_path, scan_s=30.0), [rec]) as rt:
                r1 = rt.reactors["R1"]
                await until(lambda: r1.link.name == "UP")
                await r1.start_batch(RECIPE)
                await until(lambda: r1.mode is TwinMode.TRACKING and r1.m["batch_time"] > 1800.0)
                n_before = len(rec.snaps)
                await asyncio.to_thread(plant.kill)  # the PLC crashes mid-batch
                t_cut = time.monotonic()
                await until(lambda: EventKind.LINK_LOST in rec.kinds())
                await until(lambda: len(rec.snaps) > n_before + 3)
                while_down = [sn for t, sn in rec.snaps[n_before:] if t > t_cut]
                plant = PlantProcess(speed=SPEED, seed=9, port=port).start()  # a fresh PLC: Idle, batch 0
                await until(lambda: EventKind.PLC_RESTARTED in rec.kinds(), timeout_s=30.0)
                await until(lambda: rec.snaps[-1][1]["plc_link"].value == 1)
                rec.while_down = while_down  # type: ignore[attr-defined]
        finally:
            plant.stop()
        return rec

    rec = asyncio.run(main())
    down = rec.while_down  # type: ignore[attr-defined]
    assert down
    # after the first failed read, nothing from the PLC is Good and the estimates are Uncertain
    first_bad = next(i for i, sn in enumerate(down) if sn["plc_link"].value == 0)
    assert first_bad <= 1
    for sn in down[first_bad:]:
        if sn["plc_link"].value != 0:
            break
        assert sn["T_reactor"].quality is Quality.BAD_COMMUNICATION
        assert sn["phase"].quality is Quality.BAD_COMMUNICATION
        assert sn["c_B"].quality is Quality.UNCERTAIN_LAST_USABLE
        assert sn["twin_mode"].value == TwinMode.OPEN_LOOP
    open_loop = [sn for sn in down[first_bad:] if sn["twin_mode"].value == TwinMode.OPEN_LOOP]
    assert len(open_loop) >= 2
    sds = [sn["c_B_std"].value for sn in open_loop]
    assert sds[-1] >= sds[0]  # uncertainty does not shrink without readings
    kinds = rec.kinds()
    assert kinds.index(EventKind.LINK_LOST) < kinds.index(EventKind.LINK_RESTORED) <= kinds.index(EventKind.PLC_RESTARTED)
    last = rec.snaps[-1][1]
    assert last["twin_mode"].value == TwinMode.WAITING and last["plc_restarts"].value == 1
    assert last["T_reactor"].quality is Quality.GOOD and last["link_losses"].value == 1


@pytest.mark.slow
def test_lab_entries_and_writes_are_validated(dist_artifacts: Path) -> None:
    async def main() -> None:
        with PlantProcess(speed=SPEED, seed=3) as plant:
            async with Runtime(_config(plant.port, dist_artifacts / "BatchReactorTwin.fmu")) as rt:
                r1 = rt.reactors["R1"]
                await until(lambda: r1.link.name == "UP" and bool(r1.m))
                with pytest.raises(RequestRefused, match="no batch"):
                    await r1.enter_lab_result(600.0, 100.0, 1.0)
                for args, words in [((math.nan, 1.0, 1.0), "finite"), ((60.0, -1.0, 1.0), ">= 0"),
                                    ((60.0, 1.0, math.inf), "finite")]:
                    with pytest.raises(RequestRefused, match=words):
                        await r1.enter_lab_result(*args)
                for name, value, words in [("T_trip", 1000.0, "within"), ("c_B", 1.0, "not a writable"),
                                           ("sigma_lab", -1.0, "within"), ("recipe_n_points", 2.5, "integer")]:
                    with pytest.raises(RequestRefused, match=words):
                        await r1.write(name, value)
                await r1.write("T_high_alarm", 370.0)  # a valid write reaches the PLC
                await until(lambda: True)
                with pytest.raises(RequestRefused, match="not a PLC command"):
                    await r1.command("explode")
                await r1.write("sigma_lab", 0.8)
                assert r1.tuning == {"sigma_lab": 0.8}

    asyncio.run(main())


def test_each_reactor_loads_its_fmu_once(dist_artifacts: Path) -> None:
    from gateways.runtime import ReactorRuntime

    async def main() -> None:  # pymodbus's asyncio client wants a running loop at construction
        r = ReactorRuntime(ReactorConfig(fmu=str(dist_artifacts / "BatchReactorTwin.fmu")), RuntimeConfig())
        try:
            r.open()
            first = r.fmu
            r.open()  # serve() opens the FMUs before the servers, Runtime.start() again: one instance
            assert r.fmu is first
        finally:
            r.close()

    asyncio.run(main())


@pytest.mark.parametrize("valid", [True, False], ids=["prior-used", "prior-refused"])
def test_the_plant_prior_file_is_applied_at_each_batch_start(dist_artifacts: Path, tmp_path: Path, valid: bool) -> None:
    """A reactor's ``prior_file`` (what `twin prior --out` writes) is read when a batch starts and set
    over ``start``; a file that does not check leaves the batch tracked on the configured prior, and
    the batch-started event says which."""
    prior = {"lambda_1": 1.08, "lambda_2": 0.97, "UA_factor0": 0.85, "sigma_UA_factor0": 0.02,
             "sigma_k1_factor0": 0.014, "sigma_k2_factor0": 0.015, "sigma_lambda_1": 0.066, "sigma_lambda_2": 0.04}
    f = tmp_path / "R1.prior.toml"
    text = "\n".join(f"{k} = {v!r}" for k, v in prior.items()) + "\n"
    f.write_text(text if valid else text + "sigma_k1_factor0x = 1.0\n", encoding="utf-8")

    rt, rec = _run_batch(dist_artifacts / "BatchReactorTwin.fmu", 6, EventKind.BATCH_STARTED, 60.0,
                         lambda r: replace(r, start={"sigma_k1_factor0": 0.2, "c_A0": 1000.0}, prior_file=str(f)))
    params = next(s["params"] for s in rt.reactors["R1"].steps if "params" in s)
    started = next(e for e in rec.events if e.kind is EventKind.BATCH_STARTED)
    if valid:
        assert {k: params[k] for k in prior} == prior          # over start's sigma_k1_factor0 = 0.2
        assert f"plant prior from {f}" in started.message and "lambda 1.080, 0.970" in started.message
    else:
        assert not set(prior) & (set(params) - {"sigma_k1_factor0"}) and params["sigma_k1_factor0"] == 0.2
        assert "NOT used" in started.message and "sigma_k1_factor0x" in started.message
    assert params["c_A0"] == 1000.0
