"""The demo batch: the simulated plant, the runtime (`twin run`: OPC UA server and Modbus mirror) and
a SCADA-like OPC UA client, each part talking over TCP on loopback.

What runs:
  1. `twin plant` in a child process (gateways.plant_process: a free port, ready when it says so,
     ended by its PID on every path), plant time accelerated ``speed`` times;
  2. a TCP relay in front of the PLC (gateways.tcp_relay): the runtime reaches the PLC through it,
     and the demo cuts it once mid-batch, as a pulled cable would;
  3. the runtime (gateways.runtime.serve, what `twin run` runs) with dist/BatchReactorTwin.fmu in
     soft-sensor mode, its OPC UA server and its Modbus mirror on free ports;
  4. a SCADA-like OPC UA client (asyncua): it starts the batch with the StartBatch method and prints
     the live table from its **subscription** (what SCADA sees: values, status codes, events).
The plant's hidden truth is read from the plant's SIMULATION ONLY registers (input registers 900..;
never available on a real plant), directly from the PLC, only to score the estimates.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Client, ua

from gateways.config import ReactorConfig, RuntimeConfig
from gateways.fmu_runner import DEFAULT_FMU, FmuRunner
from gateways.opcua_server import NAMESPACE_URI
from gateways.plant_process import PlantProcess
from gateways.plc_client import AsyncPlcClient, PlcRequestError
from gateways.runtime import serve, wait_event
from gateways.tcp_relay import TcpRelay
from twin_core.errors import ParameterError, TwinError
from twin_core.recipe import DEFAULT_RECIPE, Recipe
from twin_core.signals.plc import Phase
from twin_core.signals.runtime import PUBLISHED_BY_NAME

C0_K = 273.15
HEALTH = {0: "good", 1: "warning", 2: "ALARM"}
PLANT = "plant"
REACTOR = "R1"
WATCHED = ("c_B", "c_B_std", "T_reactor", "T_jacket", "phase", "batch_time", "yield_B_forecast", "t_stop_opt",
           "model_health", "plc_link", "twin_mode", "last_scan_plant_time", "lab_c_B", "lab_results_used")
"""The nodes the SCADA client subscribes to (browse names under Objects/plant/R1/<folder>/)."""
QUALITY = {ua.StatusCodes.Good: "Good", ua.StatusCodes.UncertainLastUsableValue: "Uncertain",
           ua.StatusCodes.BadCommunicationError: "Bad_Comm", ua.StatusCodes.BadWaitingForInitialData: "Waiting"}


class DemoError(TwinError, RuntimeError):
    """The demo batch could not run (a refused StartBatch, ...)."""


@dataclass
class DemoResult:
    """What the demo measured (SI units; estimates as the OPC UA client received them)."""

    t_s: list[float] = field(default_factory=list)
    c_B_est: list[float] = field(default_factory=list)
    c_B_std: list[float] = field(default_factory=list)
    c_B_true: list[float] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)
    health: list[int] = field(default_factory=list)
    labs: int = 0
    events: list[str] = field(default_factory=list)
    final_phase: str = ""
    plant_pid: int | None = None
    plant_returncode: int | None = None
    cut_at_s: float | None = None
    batch_end_s: float = math.nan
    statuses_during_cut: set[tuple[str, str]] = field(default_factory=set)
    notification_latency_s: list[float] = field(default_factory=list)

    @property
    def rmse_pct_of_max(self) -> float:
        """c_B RMSE of the estimate vs the plant truth, % of the true c_B maximum."""
        err = [(a - b) ** 2 for a, b in zip(self.c_B_est, self.c_B_true)]
        return 100.0 * math.sqrt(sum(err) / len(err)) / max(self.c_B_true)

    @property
    def coverage_95(self) -> float:
        """Fraction of samples where the truth lies inside the estimate's 95 % interval."""
        inside = [abs(a - b) <= 1.96 * s for a, b, s in zip(self.c_B_est, self.c_B_true, self.c_B_std)]
        return sum(inside) / len(inside)


class _Scada:
    """The OPC UA client's view: the latest DataValue of every watched node, and the estimate samples
    (c_B with the plant time of the scan that produced it, paired by source timestamp)."""

    def __init__(self, names: dict[ua.NodeId, str]) -> None:
        self.names = names
        self.latest: dict[str, ua.DataValue] = {}
        self.by_time: dict[Any, dict[str, float]] = {}
        self.samples: list[tuple[float, float, float, str]] = []  # (plant time, c_B, c_B_std, quality)
        self.events: list[Any] = []
        self.changed = asyncio.Event()
        self.latency_s: list[float] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:  # asyncua's handler API
        name = self.names[node.nodeid]
        dv = data.monitored_item.Value
        self.latest[name] = dv
        ts = dv.SourceTimestamp
        if name in ("c_B", "c_B_std", "last_scan_plant_time") and ts is not None and isinstance(val, float):
            row = self.by_time.setdefault(ts, {})
            row[name] = val
            if name == "c_B":
                row["_q"] = QUALITY.get(dv.StatusCode.value, dv.StatusCode.name)
            if len(row) == 4:
                q = row.pop("_q")
                self.samples.append((row["last_scan_plant_time"] * 3600.0, row["c_B"], row["c_B_std"], q))
                del self.by_time[ts]
        self.changed.set()

    def event_notification(self, event: Any) -> None:
        self.events.append(event)
        self.changed.set()

    def value(self, name: str) -> float:
        dv = self.latest.get(name)
        v = None if dv is None or dv.Value is None else dv.Value.Value
        return float(v) if isinstance(v, (int, float)) else math.nan

    def status(self, name: str) -> str:
        dv = self.latest.get(name)
        return "-" if dv is None else QUALITY.get(dv.StatusCode.value, dv.StatusCode.name)


def run_demo(speed: float = 720.0, seed: int = 7, fmu_path: str | Path = DEFAULT_FMU,
             recipe: Recipe = DEFAULT_RECIPE, sample_interval_s: float = 1800.0, scan_s: float = 60.0,
             report_every_s: float = 1800.0, cut_at_s: float | None = 2 * 3600.0, cut_for_s: float = 900.0,
             port: int = 0, echo: bool = True) -> DemoResult:
    """Run one batch end to end and print the SCADA client's live table; returns the figures.

    cut_at_s, cut_for_s: batch time at which the PLC link is cut, and for how long [s of plant time]
    (None: no cut). The plant process is ended (by its PID) when this returns, raises or is
    interrupted."""
    if not (isinstance(speed, (int, float)) and 0.0 < speed < math.inf):
        raise ParameterError("speed", speed, "must be a finite number > 0 (plant seconds per wall second)")
    if recipe.mode != "jacket":
        raise ParameterError("recipe.mode", recipe.mode, f"recipe {recipe.name!r}: the PLC runs jacket programmes only")
    FmuRunner(fmu_path).close()  # a missing or broken FMU fails before anything starts
    say = print if echo else (lambda *a, **k: None)
    res = DemoResult(cut_at_s=cut_at_s)
    plant = PlantProcess(speed=speed, seed=seed, port=port)
    try:
        with plant:
            res.plant_pid = plant.pid
            say(f"PLC (simulated plant, process {plant.pid}) serving Modbus TCP on 127.0.0.1:{plant.port}, "
                f"plant time x{speed:g}", flush=True)
            asyncio.run(_demo(plant.port, res, say, speed, fmu_path, recipe, sample_interval_s, scan_s,
                              report_every_s, cut_at_s, cut_for_s))
    finally:
        res.plant_returncode = plant.returncode
    if not res.t_s:
        raise RuntimeError("the batch ended before the soft sensor published an estimate")
    say("")
    say(f"Batch reached {res.final_phase.lower()} at {res.batch_end_s / 3600:.2f} h; {res.labs} lab results used")
    say(f"Soft sensor c_B as SCADA received it: RMSE {res.rmse_pct_of_max:.2f} % of c_B,max vs the plant's hidden "
        f"truth; truth inside the 95 % interval {100 * res.coverage_95:.0f} % of the time")
    say(f"Final c_B: estimate {res.c_B_est[-1] / 1000:.4f} +- {2 * res.c_B_std[-1] / 1000:.4f} mol/L, "
        f"truth {res.c_B_true[-1] / 1000:.4f} mol/L")
    if res.statuses_during_cut:
        seen = ", ".join(f"{n} {q}" for n, q in sorted(res.statuses_during_cut))
        say(f"While the PLC link was cut SCADA saw: {seen}")
    return res


async def _demo(plc_port: int, res: DemoResult, say: Callable[..., None], speed: float, fmu_path: str | Path,
                recipe: Recipe, sample_interval_s: float, scan_s: float, report_every_s: float,
                cut_at_s: float | None, cut_for_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="twin-demo-") as tmp:
        # The demo's SCADA logs in as an operator of its own (a random password, this run only) over
        # SecurityPolicy None, which the demo turns on for loopback; a plant keeps None off.
        import secrets

        from gateways.users import UserStore

        login = ("demo-operator", secrets.token_urlsafe(16))
        await asyncio.to_thread(UserStore(Path(tmp) / "users.json").add, login[0], "operator", login[1])
        say("Demo: OPC UA SecurityPolicy None enabled on loopback (127.0.0.1) for this demo; SCADA logs in as "
            f"operator {login[0]}", flush=True)
        async with TcpRelay("127.0.0.1", plc_port) as relay:
            cfg = RuntimeConfig(plant=PLANT, opcua_endpoint="opc.tcp://127.0.0.1:0/batch-twin/", mirror_port=0,
                                opcua_allow_none=True,
                                scan_s=scan_s, speed=speed, data_dir=tmp, reconnect_min_s=0.05,
                                reconnect_max_s=max(0.1, min(2.0, 60.0 / speed)),
                                plc_timeout_s=max(0.1, min(2.0, 3 * scan_s / speed)),
                                reactors=(ReactorConfig(name=REACTOR, plc_port=relay.port, fmu=str(fmu_path),
                                                        sample_interval_s=sample_interval_s),))
            stop = asyncio.Event()
            ready: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
            runtime = asyncio.create_task(serve(cfg, stop, on_ready=lambda rt, servers: ready.set_result(servers)))
            try:
                async with asyncio.timeout(120.0):  # not wait_for: 3.11's can lose a Ctrl-C (runtime._sleep)
                    servers = await asyncio.shield(ready)
            except BaseException:
                stop.set()
                await runtime
                raise
            try:
                opcua, mirror = servers
                say(f"Runtime (twin run): OPC UA {opcua.endpoint_url}, read-only Modbus mirror 127.0.0.1:"  # type: ignore[attr-defined]
                    f"{mirror.port}, PLC reached through a relay on 127.0.0.1:{relay.port}", flush=True)  # type: ignore[attr-defined]
                await _scada(opcua.endpoint_url, plc_port, relay, res, say, speed, recipe,  # type: ignore[attr-defined]
                             sample_interval_s, report_every_s, cut_at_s, cut_for_s, login)
            finally:
                stop.set()
                await runtime


async def _scada(url: str, plc_port: int, relay: TcpRelay, res: DemoResult, say: Callable[..., None], speed: float,
                 recipe: Recipe, sample_interval_s: float, report_every_s: float, cut_at_s: float | None,
                 cut_for_s: float, login: tuple[str, str]) -> None:
    truth_t: list[float] = []
    truth_cB: list[float] = []
    truth_client = AsyncPlcClient(port=plc_port)  # straight to the PLC: the truth registers are for scoring
    await truth_client.connect()
    client = Client(url, timeout=10)
    client.set_user(login[0])
    client.set_password(login[1])
    async with client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        nodes = {ua.NodeId(f"{PLANT}.{REACTOR}.{PUBLISHED_BY_NAME[n].folder}.{n}", ns): n for n in WATCHED}
        scada = _Scada(nodes)
        sub = await client.create_subscription(max(10.0, 1000.0 * 30.0 / speed), scada)
        await sub.subscribe_data_change([client.get_node(nid) for nid in nodes])
        reactor_obj = client.get_node(ua.NodeId(f"{PLANT}.{REACTOR}", ns))
        await sub.subscribe_events(reactor_obj)
        deadline = time.monotonic() + 60.0
        while scada.value("plc_link") != 1.0:  # the runtime's first reading of the PLC, as SCADA sees it
            if time.monotonic() > deadline:
                raise DemoError("the runtime never reached the PLC")
            scada.changed.clear()
            await wait_event(scada.changed, 0.5)
        request = ua.CallMethodRequest(ObjectId=reactor_obj.nodeid, MethodId=ua.NodeId(f"{PLANT}.{REACTOR}.StartBatch", ns),
                                       InputArguments=[ua.Variant(recipe.to_toml(), ua.VariantType.String),
                                                       ua.Variant(f"twin demo: recipe {recipe.name}", ua.VariantType.String)])
        result = (await client.uaclient.call([request]))[0]
        if not result.StatusCode.is_good():  # the Result output carries the reason, also on a Bad status
            reason = result.OutputArguments[0].Value if result.OutputArguments else ""
            raise DemoError(f"StartBatch('{recipe.name}') refused ({result.StatusCode.name}): {reason}")
        say(f"SCADA client: StartBatch('{recipe.name}') called over OPC UA; lab samples every "
            f"{sample_interval_s / 60:g} min, results 30-45 min later; the table below is the client's subscription\n")
        say(f"{'t [h]':>6} {'phase':<9} {'T [C]':>6} {'Tj [C]':>6} {'c_B est +- 2sd':>16} {'true c_B':>8} "
            f"{'yield fcst':>10} {'stop fcst':>9}  {'health':<7} quality (T / c_B)")
        say(f"{'':>6} {'':<9} {'':>6} {'':>6} {'[mol/L]':>16} {'[mol/L]':>8} {'[%]':>10} {'[h]':>9}")
        next_report = 0.0
        cut_done = cut_at_s is None
        cut_until_h = math.inf
        n_events = 0
        started = shown_cut = False
        phase: Phase | None = None
        batch_h = 0.0
        wall_end = time.monotonic() + 3.0 * recipe.end_time_s / speed + 120.0
        while time.monotonic() < wall_end:
            scada.changed.clear()
            await wait_event(scada.changed, 0.5)
            try:
                t = await truth_client.read_sim_truth()
                m = await truth_client.read_measurements()
                truth_t.append(m["plant_time"])
                truth_cB.append(t["sim_true_c_B"])
            except PlcRequestError:
                pass
            for ev in scada.events[n_events:]:
                text = getattr(ev, "Message", None)
                line = text.Text if hasattr(text, "Text") else str(text)
                res.events.append(line)
                say(f"   event (severity {getattr(ev, 'Severity', '?')}): {line}")
            n_events = len(scada.events)
            phase_v, batch_v = scada.value("phase"), scada.value("batch_time")
            if math.isnan(phase_v) or math.isnan(batch_v):  # no value (e.g. the link is down): the last one
                if phase is None:
                    continue
            else:
                phase, batch_h = Phase(int(phase_v)), batch_v
            started = started or phase in (Phase.CHARGING, Phase.HEATING, Phase.REACTING)
            if relay.is_cut or batch_h < cut_until_h + 0.05:
                for name in ("T_reactor", "c_B"):
                    if relay.is_cut and scada.status(name) != "Good":
                        res.statuses_during_cut.add((name, scada.status(name)))
            if not cut_done and batch_h * 3600.0 >= cut_at_s:  # type: ignore[operator]
                cut_done = True
                relay.cut(cut_for_s / speed)
                cut_until_h = batch_h + cut_for_s / 3600.0
                say(f"   -- PLC link cut at {batch_h:.2f} h for {cut_for_s / 60:g} min of plant time (relay) --")
            if started and phase in (Phase.COOLING, Phase.COMPLETE, Phase.ABORTED):
                res.final_phase = phase.name
                res.batch_end_s = batch_h * 3600.0
                break
            if started and batch_h * 3600.0 >= next_report and scada.status("c_B") != "Waiting":
                next_report += report_every_s
                say(_row(scada, phase, batch_h, _truth_at(truth_t, truth_cB, scada.value("last_scan_plant_time") * 3600.0)))
            elif relay.is_cut and scada.status("T_reactor") != "Good" and not shown_cut:
                shown_cut = True  # one row while the link is down: what SCADA shows then
                say(_row(scada, phase, batch_h, math.nan))
        else:
            raise TimeoutError("the demo batch did not end in time")
        res.labs = int(scada.value("lab_results_used"))
        for plant_t, c_B, sd, q in scada.samples:
            truth = _truth_at(truth_t, truth_cB, plant_t)
            if math.isfinite(truth) and math.isfinite(c_B):
                res.t_s.append(plant_t)
                res.c_B_est.append(c_B * 1000.0)
                res.c_B_std.append(sd * 1000.0)
                res.c_B_true.append(truth)
                res.quality.append(q)
        res.health.append(int(scada.value("model_health")))
    truth_client.close()


def _truth_at(ts: list[float], vs: list[float], t: float) -> float:
    """The plant's true c_B [mol/m3] at plant time t, interpolated between the truth readings."""
    if not ts or not math.isfinite(t) or t < ts[0] or t > ts[-1]:
        return math.nan
    i = bisect.bisect_left(ts, t)
    if ts[i] == t or i == 0:
        return vs[i]
    w = (t - ts[i - 1]) / (ts[i] - ts[i - 1]) if ts[i] > ts[i - 1] else 1.0
    return vs[i - 1] + w * (vs[i] - vs[i - 1])


def _row(scada: _Scada, phase: Phase, batch_h: float, truth_mol_per_m3: float) -> str:
    def num(name: str, width: int, fmt: str, scale: float = 1.0) -> str:
        v = scada.value(name)
        return f"{v * scale:{width}{fmt}}" if math.isfinite(v) else f"{'-':>{width}}"

    cB, sd = scada.value("c_B"), scada.value("c_B_std")
    est = f"{cB:9.3f} +-{2 * sd:5.3f}" if math.isfinite(cB) and math.isfinite(sd) else f"{'-':>16}"
    true = f"{truth_mol_per_m3 / 1000:8.3f}" if math.isfinite(truth_mol_per_m3) else f"{'-':>8}"
    health = scada.value("model_health")
    health_text = HEALTH.get(int(health), "?") if math.isfinite(health) else "-"
    return (f"{batch_h:6.2f} {phase.name.lower():<9} {num('T_reactor', 6, '.1f')} {num('T_jacket', 6, '.1f')} "
            f"{est} {true} {num('yield_B_forecast', 10, '.1f')} {num('t_stop_opt', 9, '.2f')}  {health_text:<7} "
            f"{scada.status('T_reactor')} / {scada.status('c_B')}")
