"""End to end through OPC UA: plant process -> runtime (`serve`: what `twin run` runs) -> OPC UA clients.

What SCADA reads equals what the twin computed (the FMU's outputs of the recorded scans, converted
to operator units) to 1e-9; a client that is not asyncua (the `opcua` package) reads the same;
methods reach the PLC and refusals come back Bad with the reason; HistoryRead returns the batch
afterwards; events arrive for an injected sensor fault and for the optimal stop.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import ua
from conftest import until
from opcua_helpers import USERS, call_full, make_client, namespace_index, signal_node_id

from gateways.config import ReactorConfig, RuntimeConfig
from gateways.fmu_runner import FmuRunner
from gateways.plant_process import PlantProcess
from gateways.plc_client import PlcClient
from gateways.runtime import Runtime, serve
from gateways.users import TEST_ONLY_KDF, UserStore
from twin_core.recipe import Recipe
from twin_core.signals.plc import Phase, SensorFault
from twin_core.signals.runtime import TwinMode

SPEED = 2000.0
RECIPE = Recipe((0.0, 1800.0), (298.15, 343.15), 5 * 3600.0, name="ramp-5h")
PLANT = "plant"
OPERATOR = "olga"
REASON = ua.Variant("test batch", ua.VariantType.String)


class Events:
    def __init__(self) -> None:
        self.items: list[object] = []

    def event_notification(self, event: object) -> None:
        self.items.append(event)

    def texts(self) -> list[str]:
        return [getattr(e, "Message").Text for e in self.items]  # noqa: B009


@pytest.mark.slow
def test_scada_reads_what_the_twin_computed_and_events_and_history_cover_the_batch(dist_artifacts: Path,
                                                                                     tmp_path: Path) -> None:
    fmu = dist_artifacts / "BatchReactorTwin.fmu"

    async def main() -> dict:
        out: dict = {}
        with PlantProcess(speed=SPEED, seed=4) as plant:
            # an operator logs in over SecurityPolicy None (loopback); the `opcua` package reads anonymously
            store = UserStore(tmp_path / "users.json", kdf=TEST_ONLY_KDF)
            store.add(OPERATOR, USERS[OPERATOR][0], USERS[OPERATOR][1])
            cfg = RuntimeConfig(plant=PLANT, opcua_endpoint="opc.tcp://127.0.0.1:0/batch-twin/", mirror_port=-1,
                                opcua_allow_none=True, opcua_allow_anonymous=True,
                                scan_s=60.0, speed=SPEED, data_dir=str(tmp_path), reconnect_min_s=0.05,
                                reconnect_max_s=0.2, plc_timeout_s=0.5,
                                reactors=(ReactorConfig(name="R1", plc_port=plant.port, fmu=str(fmu)),))
            stop = asyncio.Event()
            ready: asyncio.Future = asyncio.get_running_loop().create_future()

            def on_ready(rt: Runtime, servers: list) -> None:
                rt.reactors["R1"].record_steps()
                ready.set_result((rt, servers))

            task = asyncio.create_task(serve(cfg, stop, on_ready=on_ready))
            rt, servers = await asyncio.wait_for(ready, 60.0)
            r1 = rt.reactors["R1"]
            url = servers[0].endpoint_url
            out["url"] = url
            try:
                async with await make_client(url, OPERATOR) as client:
                    ns = await namespace_index(client)
                    obj = ua.NodeId(f"{PLANT}.R1", ns)
                    events = Events()
                    sub = await client.create_subscription(20, events)
                    await sub.subscribe_events(client.get_node(obj))
                    await until(lambda: r1.link.name == "UP")
                    # a refusal comes back Bad with the PLC's reason; a good StartBatch starts the batch
                    bad = Recipe(tuple(600.0 * i for i in range(20)), tuple(300.0 + i for i in range(20)), 36000.0)
                    res = await call_full(client, obj, ua.NodeId(f"{PLANT}.R1.StartBatch", ns),
                                          ua.Variant(bad.to_toml(), ua.VariantType.String), REASON)
                    assert not res.StatusCode.is_good() and "16 points" in res.OutputArguments[0].Value
                    res = await call_full(client, obj, ua.NodeId(f"{PLANT}.R1.StartBatch", ns),
                                          ua.Variant(RECIPE.to_toml(), ua.VariantType.String), REASON)
                    assert res.StatusCode.is_good(), res
                    await until(lambda: r1.mode is TwinMode.TRACKING and r1.m["batch_time"] > 1800.0)
                    # Hold and Resume reach the PLC (its phase, as the runtime reads it back)
                    res = await call_full(client, obj, ua.NodeId(f"{PLANT}.R1.Hold", ns))
                    assert res.StatusCode.is_good(), res
                    await until(lambda: r1.m["phase"] == Phase.HELD)
                    res = await call_full(client, obj, ua.NodeId(f"{PLANT}.R1.Hold", ns))  # not in Held
                    assert not res.StatusCode.is_good() and "refused" in res.OutputArguments[0].Value
                    res = await call_full(client, obj, ua.NodeId(f"{PLANT}.R1.Resume", ns))
                    assert res.StatusCode.is_good(), res
                    await until(lambda: r1.m["phase"] != Phase.HELD)
                    await until(lambda: r1.mode is TwinMode.TRACKING and r1.m["batch_time"] > 4.2 * 3600)
                    # a stuck reactor-temperature transmitter, injected at the plant (simulation hook)
                    with PlcClient(port=plant.port) as plc:
                        plc.write("sim_sensor_fault", float(SensorFault.STUCK))
                    await until(lambda: any("ended" in t for t in events.texts()), timeout_s=120.0)
                    # what the client reads now is the twin's last output, in mol/L
                    c_B = signal_node_id(ns, PLANT, "R1", "Estimates", "c_B")
                    out["c_B_read"] = (await client.get_node(c_B).read_data_value()).Value.Value
                    out["c_B_twin"] = r1.steps[-1]["outputs"]["c_B"]
                    hist = await client.get_node(c_B).read_raw_history(
                        datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=2))
                    out["history"] = [dv.Value.Value for dv in hist]
                    out["events"] = events.texts()
                    out["steps"] = [s["outputs"]["c_B"] for s in r1.steps if "outputs" in s]
                    out["recorded"] = list(r1.steps)
                    out["opcua_pkg"] = await asyncio.to_thread(_read_with_python_opcua, url, ns)
            finally:
                stop.set()
                await task
        return out

    out = asyncio.run(main())
    assert out["c_B_read"] == pytest.approx(out["c_B_twin"] / 1000.0, rel=1e-9)
    # the recorded PLC readings replayed offline through a fresh instance of the same FMU give what
    # SCADA read
    with FmuRunner(fmu, instance_name="replay") as replay:
        for st in out["recorded"]:
            if "params" in st:
                replay.start(st["params"], t0_s=st["t0"])
            else:
                last = replay.step(st["t"], st["dt"], st["inputs"])
    assert out["c_B_read"] == pytest.approx(last["c_B"] / 1000.0, rel=1e-9)
    assert out["opcua_pkg"] == pytest.approx(out["c_B_read"], rel=1e-12)
    # HistoryRead: the whole batch, as the twin computed it (in mol/L)
    hist = [v for v in out["history"] if isinstance(v, float)]
    assert len(hist) >= 0.9 * len(out["steps"])
    steps = {round(v / 1000.0, 12) for v in out["steps"]}
    assert sum(round(v, 12) in steps for v in hist) >= 0.9 * len(out["steps"])
    texts = out["events"]
    assert any("started" in t for t in texts) and any("optimal stop" in t for t in texts)
    assert any("SENSOR_FAULT" in t for t in texts) or any("model health" in t for t in texts), texts


def _read_with_python_opcua(url: str, ns: int) -> float:
    """The same value through python-opcua (a separate, synchronous code base)."""
    import opcua

    client = opcua.Client(url, timeout=10)
    client.connect()
    try:
        return client.get_node(opcua.ua.NodeId(f"{PLANT}.R1.Estimates.c_B", ns)).get_value()
    finally:
        client.disconnect()
