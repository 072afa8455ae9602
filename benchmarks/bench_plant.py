#!/usr/bin/env python3
"""Benchmark of plant_sim: data-set generation, Modbus requests/s, CPU share of the scan loop.

    .venv/bin/python benchmarks/bench_plant.py [--batches 200] [--requests 4000] [--window 5]

1. Time to generate the batch data set (plant_sim.dataset.generate, fast path, no sockets), against a
   baseline measured in the same run: the bare cost of the PLC scans it needs (``Plc.scan`` alone).
2. Modbus requests/s served to one and to four client connections (FC4, 8 registers, one request in
   flight per connection), against pymodbus 3.16's own ModbusTcpServer serving the same request from
   a plain datastore in the same run. Servers run in a child process (loopback, free port, scan loop
   paused so only Modbus is measured); clients are raw asyncio streams so the server is the bottleneck.
3. CPU share of the PLC scan loop at 100x speed (default plant, 0.1 s scan = 1000 scans per wall
   second): process CPU time / wall time over a fixed window with no clients, against the bare cost
   of 1000 ``Plc.scan`` calls.

Figures depend on the machine; the ratios are what to compare between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plant_sim.config import PlantConfig  # noqa: E402
from plant_sim.modbus_server import PlcServerThread  # noqa: E402
from plant_sim.plc import Plc  # noqa: E402

REQUEST = struct.pack(">BHH", 4, 0, 8)  # FC4: T_reactor, T_jacket, T_jacket_sp, pid_output
PLC_SERVER = """
import sys
from plant_sim.modbus_server import run
from plant_sim.plc import Plc
run(Plc(), port=int(sys.argv[1]), speed=0.0)
"""
PYMODBUS_SERVER = """
import asyncio, logging, sys, warnings
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

async def main():
    dev = ModbusDeviceContext(ir=ModbusSequentialDataBlock(1, [17] * 200))
    srv = ModbusTcpServer(ModbusServerContext(devices=dev, single=True), address=("127.0.0.1", int(sys.argv[1])))
    await srv.serve_forever()

try:
    asyncio.run(main())
except KeyboardInterrupt:
    pass
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing on port {port}") from None
            time.sleep(0.02)


# -- 1. data set -----------------------------------------------------------------------------------
def bench_generation(batches: int) -> None:
    print(f"\n1. data set: {batches} batches through plant_sim.dataset.generate (fast path)")
    try:
        from plant_sim.dataset import DATASET_SCAN_S, dataset_config, generate
    except ImportError as exc:
        print(f"   plant_sim.dataset.generate not available ({exc}): skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        s = generate(Path(tmp) / "bench.csv", batches=batches, seed=0, progress=False)
    plc = Plc(dataset_config(None, DATASET_SCAN_S), seed=0)
    plc.command("start")
    n = 20000
    t = time.perf_counter()
    plc.run_scans(n)
    per_scan_s = (time.perf_counter() - t) / n
    plant_s = s.rows * 60.0  # one row per minute of plant time
    scans = plant_s / DATASET_SCAN_S
    print(f"   wall time                 {s.wall_s:8.1f} s   ({s.wall_s / batches * 1e3:.0f} ms per batch, "
          f"{s.rows} rows)")
    print(f"   plant time simulated      {plant_s / 3600:8.0f} h    ({plant_s / s.wall_s:,.0f} x real time)")
    print(f"   baseline: bare Plc.scan   {per_scan_s * 1e6:8.1f} us  x {scans:,.0f} scans = {per_scan_s * scans:.1f} s")
    print(f"   ratio generate / bare scans: {s.wall_s / (per_scan_s * scans):.2f}")


# -- 2. requests/s -----------------------------------------------------------------------------------
async def _client(port: int, n: int, start: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await start.wait()
    for tid in range(n):
        writer.write(struct.pack(">HHHB", tid & 0xFFFF, 0, len(REQUEST) + 1, 1) + REQUEST)
        head = await reader.readexactly(7)
        body = await reader.readexactly(struct.unpack(">H", head[4:6])[0] - 1)
        if body[0] != 4:
            raise RuntimeError(f"exception response {body.hex()}")
    writer.close()


async def _load(port: int, connections: int, n_each: int) -> float:
    start = asyncio.Event()
    tasks = [asyncio.create_task(_client(port, n_each, start)) for _ in range(connections)]
    await asyncio.sleep(0.2)  # let every client connect before the clock starts
    t = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return connections * n_each / (time.perf_counter() - t)


def _served(script: str, connections: int, n_each: int) -> float:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", script, str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        asyncio.run(_load(port, connections, n_each // 10))  # warm-up
        return asyncio.run(_load(port, connections, n_each))
    finally:
        proc.terminate()
        proc.wait(10)


def bench_requests(requests: int) -> None:
    print(f"\n2. Modbus requests/s (FC4, 8 registers; {requests} requests per run, one in flight per connection)")
    print(f"   {'connections':>11}  {'PLC server':>12}  {'pymodbus 3.16 server':>21}  {'ratio':>6}")
    for conns in (1, 4):
        ours = _served(PLC_SERVER, conns, requests // conns)
        base = _served(PYMODBUS_SERVER, conns, requests // conns)
        print(f"   {conns:>11}  {ours:>10,.0f}/s  {base:>19,.0f}/s  {ours / base:>6.2f}")


# -- 3. CPU share of the scan loop -----------------------------------------------------------------------
def bench_scan_cpu(window_s: float) -> None:
    speed = 100.0
    print(f"\n3. CPU share of the PLC scan loop at {speed:g}x (default plant), {window_s:g} s window, no clients")
    plc = Plc(PlantConfig(), seed=0)
    plc.command("start")  # a batch in progress: the truth model is integrating
    with PlcServerThread(plc, speed=speed) as srv:
        scans0, cpu0, wall0 = srv.server.scans, time.process_time(), time.perf_counter()
        time.sleep(window_s)  # the measuring window itself, not a readiness wait
        scans, cpu, wall = srv.server.scans - scans0, time.process_time() - cpu0, time.perf_counter() - wall0
        slips = srv.server.slips
    bare = Plc(PlantConfig(), seed=0)
    bare.command("start")
    t = time.perf_counter()
    bare.run_scans(scans)
    bare_s = time.perf_counter() - t
    print(f"   scans run                 {scans} ({scans / wall:,.0f} per wall second, {slips} schedule slips)")
    print(f"   CPU share                 {cpu / wall:8.1%}  of one core")
    print(f"   baseline: bare Plc.scan   {bare_s / wall:8.1%}  ({bare_s / scans * 1e6:.1f} us per scan)")
    print(f"   ratio loop / bare scans:  {cpu / bare_s:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--window", type=float, default=5.0)
    args = ap.parse_args()
    print("bench_plant: plant_sim data set, Modbus server, scan loop")
    bench_generation(args.batches)
    bench_requests(args.requests)
    bench_scan_cpu(args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
