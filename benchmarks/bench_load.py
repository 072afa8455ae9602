#!/usr/bin/env python3
"""Load benchmark of the plant-floor runtime (issue 11): sessions x reactors at 1 Hz, the cost of
SignAndEncrypt against None, memory over many hours of plant time, and Modbus fuzz frames survived.

    .venv/bin/python benchmarks/bench_load.py [--window 10] [--points 50x50,500x50] [--secure-sessions 100]
        [--plant-hours 20] [--fuzz-frames 10000] [--skip load secure memory fuzz]

The default run takes ~6 min here; the figures in docs/runtime.md were taken with
``--window 20 --points 50x50,500x50,500x500 --plant-hours 30`` (and ``--points 500x250``).

1. ``load``: the twin's OPC UA server (gateways.opcua_server, SQLite history on) in a child process with
   N reactors; every second it publishes a full snapshot of every reactor (every value of
   twin_core.signals.runtime.PUBLISHED, 16 of them changed, source timestamp = now), as the runtime does
   after a scan. M anonymous sessions (SecurityPolicy None) in 4 client processes, each subscribed to
   c_B and T of one reactor (round robin), publishing interval 100 ms. Measured over ``--window``
   seconds: the notifications received against those due (2 per session per second: the 1 Hz held or
   not), latency source timestamp -> client callback (p50/p99, one clock: same machine), the server's
   publish round within the window (p99, must stay well under 1 s) and its CPU.
2. ``secure``: the same server, N = the first size, ``--secure-sessions`` sessions SignAndEncrypt
   (Basic256Sha256, client certificates on the trust list), each subscribed to the 16 changing values
   of its reactor, against as many None sessions, one after
   the other in the same run: the server's CPU seconds per notification delivered, above its CPU
   while publishing with no session (measured for 5 s before the clients start), and p99 latency;
   the ratio is the cost of encryption.
3. ``memory``: gateways.runtime.serve (OPC UA + history + mirror + checkpoints) in this process, 4
   reactors with the real FMU against one plant process at a high speed, batches started back to back;
   RSS sampled against plant time, the slope fitted over the second half (MB per hour of plant time).
4. ``fuzz``: ``--fuzz-frames`` malformed frames (tests/modbus_fuzz.py, 12 kinds) against the mirror (in
   a child thread) and against the plant's PLC process, a valid read every 100 frames: frames per
   second survived, wrong reactions, valid reads correct.

Every server listens on 127.0.0.1; every process started here is ended by its PID. The machine has 2
cores shared with other work: figures are noisy (the load average is printed); the client processes
share those cores with the server, so the session counts reached are a floor for the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the fuzzer lives beside the tests that use it

PLANT = "plant"
FOLDER = {"c_A": "Estimates", "c_B": "Estimates", "c_C": "Estimates", "T": "Estimates", "c_A_std": "Estimates",
          "c_B_std": "Estimates", "c_C_std": "Estimates", "T_std": "Estimates", "yield_B": "Estimates",
          "t_stop_opt": "Forecasts", "yield_B_forecast": "Forecasts", "impurity_forecast": "Forecasts",
          "T_reactor": "Measurements", "T_jacket": "Measurements", "batch_time": "Status", "twin_scans": "Status"}
CHANGING = ("c_A", "c_B", "c_C", "T", "c_A_std", "c_B_std", "c_C_std", "T_std", "yield_B", "t_stop_opt",
            "yield_B_forecast", "impurity_forecast", "T_reactor", "T_jacket", "batch_time", "twin_scans")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return math.nan


# -- 1./2. the OPC UA server under sessions ---------------------------------------------------------------
class _NoControl:
    async def start_batch(self, recipe: object) -> None: ...
    async def command(self, name: str) -> None: ...
    async def reset_twin(self) -> None: ...
    async def enter_lab_result(self, *a: float) -> None: ...
    async def write(self, name: str, value: float) -> None: ...


def server_main(port: int, n_reactors: int, data_dir: str, ready: mp.Event, stop: mp.Event, q: mp.Queue) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    from gateways.model import Value
    from gateways.opcua_server import TwinOpcUaServer
    from gateways.security import ServerSecurity
    from twin_core.signals.runtime import PUBLISHED, Quality

    async def main() -> None:
        names = [f"R{i}" for i in range(1, n_reactors + 1)]
        sec = ServerSecurity(Path(data_dir), allow_none=True, allow_anonymous=True)
        srv = TwinOpcUaServer(f"opc.tcp://127.0.0.1:{port}/batch-twin/", PLANT, {n: _NoControl() for n in names},
                              security=sec, history_db=Path(data_dir) / "history.sqlite")
        async with srv:
            ready.set()
            rounds: list[float] = []
            k = 0
            t_next = time.monotonic()
            while not stop.is_set():
                t0 = time.perf_counter()
                now = datetime.now(UTC)
                for i, n in enumerate(names):
                    snap = {p.name: Value(1.0 + (p.name in CHANGING) * ((k * 7 + i) % 1000) * 1e-3, Quality.GOOD, now)
                            for p in PUBLISHED}
                    await srv.publish(n, snap)
                rounds.append((time.time(), time.perf_counter() - t0))
                k += 1
                t_next += 1.0
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
            q.put(rounds)

    asyncio.run(main())


def client_main(url: str, reactors: list[str], secure: tuple[str, str, str] | None, t_start: float, t_end: float,
                q: mp.Queue, items: tuple[str, ...] = ("c_B", "T")) -> None:
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    from asyncua import Client, ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    from gateways.opcua_server import NAMESPACE_URI

    lat: list[float] = []
    count = [0]
    connected = [0]

    class Handler:
        def datachange_notification(self, node, val, data) -> None:  # noqa: ANN001
            now = time.time()
            if t_start <= now <= t_end:
                count[0] += 1
                ts = data.monitored_item.Value.SourceTimestamp
                lat.append(now - ts.replace(tzinfo=UTC).timestamp())

    async def session(reactor: str) -> Client | None:
        c = Client(url, timeout=60)
        c.session_timeout = 120_000
        if secure is not None:
            uri, cert, key = secure
            c.application_uri = uri
            await c.set_security(SecurityPolicyBasic256Sha256, cert, key, mode=ua.MessageSecurityMode.SignAndEncrypt)
        try:
            await c.connect()
            ns = await c.get_namespace_index(NAMESPACE_URI)
            sub = await c.create_subscription(100, Handler())
            await sub.subscribe_data_change([c.get_node(ua.NodeId(f"{PLANT}.{reactor}.{FOLDER[n]}.{n}", ns))
                                             for n in items])
            connected[0] += 1
            return c
        except Exception as exc:  # noqa: BLE001 - a session that could not be opened is counted, not fatal
            print(f"  session to {reactor} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return None

    async def main() -> None:
        clients = []
        for i in range(0, len(reactors), 10):
            clients += await asyncio.gather(*(session(r) for r in reactors[i:i + 10]))
        await asyncio.sleep(max(0.0, t_end - time.time()) + 0.5)
        for c in clients:
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.disconnect()

    asyncio.run(main())
    q.put((connected[0], count[0], lat))


def sessions_run(n_reactors: int, m_sessions: int, window_s: float, secure: tuple[str, str, str] | None = None,
                 data_dir: str | None = None, procs: int = 4, items: tuple[str, ...] = ("c_B", "T")) -> dict:
    ctx = mp.get_context("spawn")
    port = free_port()
    data = data_dir or tempfile.mkdtemp(prefix="bench-load-")
    ready, stop, q = ctx.Event(), ctx.Event(), ctx.Queue()
    srv = ctx.Process(target=server_main, args=(port, n_reactors, data, ready, stop, q))
    srv.start()
    try:
        if not ready.wait(300):
            raise RuntimeError("the OPC UA server did not start")
        idle0 = cpu_s(srv.pid)  # type: ignore[arg-type]
        time.sleep(5.0)
        idle_rate = (cpu_s(srv.pid) - idle0) / 5.0  # type: ignore[arg-type]  # publishing, no session
        url = f"opc.tcp://127.0.0.1:{port}/batch-twin/"
        reactors = [f"R{1 + i % n_reactors}" for i in range(m_sessions)]
        connect_s = 10.0 + 0.15 * m_sessions / procs * (4 if secure else 1)
        t_start = time.time() + connect_s
        t_end = t_start + window_s
        cq = ctx.Queue()
        clients = [ctx.Process(target=client_main, args=(url, reactors[i::procs], secure, t_start, t_end, cq, items))
                   for i in range(procs)]
        for c in clients:
            c.start()
        while time.time() < t_start:
            time.sleep(0.1)
        cpu0 = cpu_s(srv.pid)  # type: ignore[arg-type]
        rss0 = rss_mb(srv.pid)
        while time.time() < t_end:
            time.sleep(0.1)
        cpu1 = cpu_s(srv.pid)  # type: ignore[arg-type]
        rss1 = rss_mb(srv.pid)
        results = [cq.get(timeout=connect_s + window_s + 120) for _ in clients]
        for c in clients:
            c.join(30)
        stop.set()
        rounds = q.get(timeout=60)
    finally:
        stop.set()
        srv.join(30)
        if srv.is_alive():
            srv.kill()
    connected = sum(r[0] for r in results)
    got = sum(r[1] for r in results)
    lat = [x for r in results for x in r[2]]
    due = len(items) * connected * window_s
    return {"reactors": n_reactors, "sessions": m_sessions, "connected": connected, "got": got, "due": due,
            "held": got / due if due else math.nan, "p50_ms": 1e3 * pct(lat, 0.5), "p99_ms": 1e3 * pct(lat, 0.99),
            "round_p99_s": pct([d for t, d in rounds if t_start <= t <= t_end], 0.99), "cpu_s": cpu1 - cpu0, "server_rss_mb": rss1,
            "server_rss0_mb": rss0, "idle_cpu": idle_rate,
            "cpu_per_1k_notif_s": 1e3 * max(0.0, cpu1 - cpu0 - idle_rate * window_s) / got if got else math.nan}


def part_load(args: argparse.Namespace) -> None:
    print("\n1. sessions x reactors at 1 Hz (OPC UA server in a child process, anonymous None sessions)")
    print(f"{'reactors':>8} {'sessions':>8} {'connected':>9} {'held':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'round p99 s':>11} {'srv CPU %':>9} {'srv RSS MB':>10}")
    for n, m in args.points:
        if True:
            r = sessions_run(n, m, args.window)
            print(f"{n:>8} {m:>8} {r['connected']:>9} {100 * r['held']:>5.1f}% {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
                  f"{r['round_p99_s']:>11.3f} {100 * r['cpu_s'] / args.window:>8.0f}% {r['server_rss_mb']:>10.0f}",
                  flush=True)


def part_secure(args: argparse.Namespace) -> None:
    from gateways.certs import Pki, TrustList, generate_client_certificate

    n, m = args.points[0][0], args.secure_sessions
    print(f"\n2. SignAndEncrypt (Basic256Sha256) against None: {n} reactors, {m} sessions each, same run")
    data = tempfile.mkdtemp(prefix="bench-load-sec-")
    certs = Path(tempfile.mkdtemp(prefix="bench-load-certs-"))
    cert, key = generate_client_certificate(certs, "urn:bench:load", "bench-load")
    TrustList(Pki(Path(data))).trust(cert)
    # every changing value of the session's reactor: 16 notifications per session per second, so the
    # sessions' share of the server's CPU is well above its publishing baseline
    none = sessions_run(n, m, args.window, data_dir=data, items=CHANGING)
    enc = sessions_run(n, m, args.window, secure=("urn:bench:load", str(cert), str(key)), data_dir=data,
                       items=CHANGING)
    for name, r in (("None", none), ("SignAndEncrypt", enc)):
        print(f"  {name:<15} connected {r['connected']:>4}  held {100 * r['held']:5.1f}%  p99 {r['p99_ms']:6.1f} ms  "
              f"server CPU {r['cpu_per_1k_notif_s']:.3f} s per 1000 notifications", flush=True)
    ratio = enc["cpu_per_1k_notif_s"] / none["cpu_per_1k_notif_s"]
    print(f"  encryption costs {ratio:.2f}x None in server CPU per notification (goal <= 2x: "
          f"{'MET' if ratio <= 2.0 else 'MISSED'}); p99 latency {enc['p99_ms'] / none['p99_ms']:.2f}x")


# -- 3. memory over plant time ------------------------------------------------------------------------------
def part_memory(args: argparse.Namespace) -> None:
    from gateways.config import ReactorConfig, RuntimeConfig
    from gateways.plant_process import PlantProcess
    from gateways.plc_client import AsyncPlcClient
    from gateways.runtime import serve
    from twin_core.recipe import Recipe
    from twin_core.signals.plc import Phase

    speed = args.memory_speed
    recipe = Recipe((0.0, 1800.0), (298.15, 343.15), 3 * 3600.0, name="ramp-3h")
    print(f"\n3. memory over {args.plant_hours:g} h of plant time: serve() in this process, 4 reactors, real FMU, "
          f"plant x{speed:g}, batches of {recipe.end_time_s / 3600:g} h back to back")
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, PlantProcess(speed=speed, seed=3,
                                                            extra_args=("--max-connections", "32")) as plant:
        cfg = RuntimeConfig(plant=PLANT, opcua_endpoint=f"opc.tcp://127.0.0.1:{free_port()}/batch-twin/",
                            opcua_allow_none=True, mirror_port=0, scan_s=60.0, speed=speed, data_dir=tmp,
                            reconnect_min_s=0.05, reconnect_max_s=0.2, plc_timeout_s=1.0, checkpoint_scans=10,
                            reactors=tuple(ReactorConfig(name=f"R{i}", plc_port=plant.port) for i in range(1, 5)))

        async def main() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(serve(cfg, stop))
            plc = AsyncPlcClient("127.0.0.1", plant.port, timeout_s=2.0)
            await plc.connect()
            t0 = (await plc.read_measurements())["plant_time"]
            batches = 0
            while True:
                m = await plc.read_measurements()
                hours = (m["plant_time"] - t0) / 3600.0
                samples.append((hours, rss_mb()))
                if hours >= args.plant_hours:
                    break
                phase = Phase(int(m["phase"]))
                if phase in (Phase.IDLE, Phase.COMPLETE, Phase.ABORTED):
                    if phase is not Phase.IDLE:
                        await plc.command("reset")
                    await plc.download_recipe(recipe, 1800.0)
                    await plc.command("start")
                    batches += 1
                await asyncio.sleep(0.5)
            plc.close()
            stop.set()
            await task
            print(f"  {batches} batches started")

        asyncio.run(main())
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    xs, ys = [s[0] for s in half], [s[1] for s in half]
    slope = statistics.linear_regression(xs, ys).slope if len(half) > 2 else math.nan
    print(f"  RSS {samples[0][1]:.0f} MB at start, {max(y for _, y in samples):.0f} MB peak, {samples[-1][1]:.0f} MB "
          f"at {samples[-1][0]:.1f} h; slope over the second half {slope:+.2f} MB per plant hour "
          f"({100 * slope / ys[-1]:+.2f} %/h of the RSS; flat if |slope| < 0.1 %/h: "
          f"{'MET' if abs(slope / ys[-1]) < 1e-3 else 'MISSED'})")


# -- 4. fuzz ------------------------------------------------------------------------------------------------
def part_fuzz(args: argparse.Namespace) -> None:
    from modbus_fuzz import Fuzzer, frames
    from modbus_raw import Raw

    from gateways.modbus_mirror import ModbusMirror
    from gateways.model import Value
    from gateways.plant_process import PlantProcess
    from gateways.plc_client import PlcClient
    from twin_core.signals.runtime import MIRROR_MAP

    n = args.fuzz_frames
    print(f"\n4. Modbus fuzz: {n} malformed frames (12 kinds), a valid read every 100")
    addr = next(e for e in MIRROR_MAP if e.name == "c_B").binding.address
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    mirror = ModbusMirror("127.0.0.1", free_port(), ("R1",))
    asyncio.run_coroutine_threadsafe(mirror.start(), loop).result(20)
    asyncio.run_coroutine_threadsafe(mirror.publish("R1", {"c_B": Value(123.456)}), loop).result(20)

    def run(port: int, check, **kw: object) -> None:  # noqa: ANN001
        fz = Fuzzer(port)
        bad_reads = 0
        t0 = time.perf_counter()
        for i, f in enumerate(frames(n, seed=1, **kw)):  # type: ignore[arg-type]
            fz.send(f)
            if i % 100 == 0 and not check():
                bad_reads += 1
        dt = time.perf_counter() - t0
        fz.close()
        print(f"    {n / dt:,.0f} frames/s survived; wrong reactions {len(fz.result.wrong)}; "
              f"valid reads wrong {bad_reads} of {n // 100}; still serving: {check()}", flush=True)

    raw = Raw(mirror.port)

    def mirror_ok() -> bool:
        hi, lo = raw.read(1, addr, 2)
        return abs(struct.unpack(">f", struct.pack(">HH", hi, lo))[0] - 123.456) < 1e-4

    print("  the twin's Modbus mirror:")
    run(mirror.port, mirror_ok)
    raw.close()
    asyncio.run_coroutine_threadsafe(mirror.stop(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    with PlantProcess(speed=100.0, seed=2) as plant:
        def plc_ok() -> bool:
            with PlcClient(port=plant.port) as plc:
                return math.isfinite(plc.read_measurements()["plant_time"])

        print("  the plant's PLC server (its own process):")
        run(plant.port, plc_ok, read_only=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pairs = lambda s: [tuple(int(v) for v in x.split("x")) for x in s.split(",")]  # noqa: E731
    ap.add_argument("--points", type=pairs, default=[(50, 50), (500, 50)],
                    help="REACTORSxSESSIONS,... (default 50x50,500x50; the goal's 500x500 takes ~4 min more)")
    ap.add_argument("--window", type=float, default=10.0, help="measurement window per point [s]")
    ap.add_argument("--secure-sessions", type=int, default=100, help="sessions of the None/SignAndEncrypt pair")
    ap.add_argument("--plant-hours", type=float, default=20.0, help="plant time of the memory run [h]")
    ap.add_argument("--memory-speed", type=float, default=1000.0, help="plant speed of the memory run")
    ap.add_argument("--fuzz-frames", type=int, default=10_000)
    ap.add_argument("--skip", nargs="*", default=[], choices=("load", "secure", "memory", "fuzz"))
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)  # the servers log every refused frame at WARNING
    print(f"bench_load: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared machine: noisy figures)")
    for name, part in (("fuzz", part_fuzz), ("memory", part_memory), ("load", part_load), ("secure", part_secure)):
        if name not in args.skip:
            t0 = time.monotonic()
            part(args)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
