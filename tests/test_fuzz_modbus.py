"""Bad Modbus peers (tests/modbus_fuzz.py) against the twin's mirror and the plant's PLC server.

Each kind of malformed frame gets the reaction the Modbus application protocol asks for (exception 01,
02 or 03, or a closed connection when the header cannot be framed), while slow senders hold connections
open byte by byte; a valid client reading between the frames gets exact values throughout and after.
Slow senders that fill the connection cap are closed by the idle timeout, and valid clients get in again.
The benchmark (benchmarks/bench_load.py) sends 10,000 frames; these tests a few hundred.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import free_port
from modbus_fuzz import FRAME_KINDS, Fuzzer, frames
from modbus_raw import Raw

from gateways.modbus_mirror import ModbusMirror
from gateways.model import Value
from gateways.plant_process import PlantProcess
from gateways.plc_client import PlcClient
from twin_core.signals.plc import Phase
from twin_core.signals.runtime import MIRROR_MAP

C_B = next(e for e in MIRROR_MAP if e.name == "c_B")
VALUE = 123.456


class Mirror:
    """A ModbusMirror on its own loop in a thread (values published once, then read back)."""

    def __init__(self, **kwargs: object) -> None:
        self.mirror = ModbusMirror("127.0.0.1", free_port(), ("R1",), **kwargs)  # type: ignore[arg-type]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.mirror.start(), self.loop).result(20)
        # start() returns once the port is bound: no probe connection (it would count against the cap)
        asyncio.run_coroutine_threadsafe(self.mirror.publish("R1", {"c_B": Value(VALUE)}), self.loop).result(20)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.mirror.stop(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _c_B(raw: Raw) -> float:
    hi, lo = raw.read(1, C_B.binding.address, 2)
    return struct.unpack(">f", struct.pack(">HH", hi, lo))[0]


class SlowSenders:
    """``n`` connections that trickle a request's header one byte at a time and never finish it."""

    def __init__(self, port: int, n: int, period_s: float = 0.05) -> None:
        self.port, self.n, self.period_s = port, n, period_s
        self.socks: list[socket.socket] = []
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        header = struct.pack(">HHHB", 1, 0, 6, 1)
        i = 0
        while not self._stop.is_set():
            for s in list(self.socks):
                try:
                    s.send(header[i % 6: i % 6 + 1])  # never the 7th byte: no request is ever complete
                except OSError:
                    self.socks.remove(s)
                    self.closed_by_server += 1
            i += 1
            self._stop.wait(self.period_s)

    def __enter__(self) -> SlowSenders:
        self.socks = [socket.create_connection(("127.0.0.1", self.port), timeout=5) for _ in range(self.n)]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()


def _fuzz(port: int, n: int, check, **kw: object) -> Fuzzer:  # noqa: ANN001
    fz = Fuzzer(port)
    try:
        for i, f in enumerate(frames(n, seed=n, **kw)):  # type: ignore[arg-type]
            fz.send(f)
            if i % 25 == 0:
                check()
    finally:
        fz.close()
    return fz


def _assert_clean(fz: Fuzzer, n: int) -> None:
    assert fz.result.sent == n
    assert not fz.result.wrong, fz.result.wrong
    assert {k for k, _ in fz.result.reactions} == set(FRAME_KINDS)


@pytest.fixture()
def mirror() -> Iterator[Mirror]:
    with Mirror() as m:
        yield m


def test_the_mirror_survives_malformed_frames_and_slow_senders(mirror: Mirror) -> None:
    n = 360
    valid = Raw(mirror.mirror.port)
    reads: list[float] = []
    try:
        with SlowSenders(mirror.mirror.port, 4):
            fz = _fuzz(mirror.mirror.port, n, lambda: reads.append(_c_B(valid)))
        _assert_clean(fz, n)
        assert reads and all(v == pytest.approx(VALUE, rel=1e-7) for v in reads)
        after = Raw(mirror.mirror.port)  # a new client after the fuzzing
        assert _c_B(after) == pytest.approx(VALUE, rel=1e-7)
        after.close()
        # the server closed every connection it had to, the kept ones too at the end: no leak
        assert mirror.mirror.tcp.connections <= 2
    finally:
        valid.close()


def test_slow_senders_at_the_connection_cap_are_closed_and_valid_clients_get_in() -> None:
    with Mirror(max_connections=4, idle_timeout_s=0.5) as m:
        with SlowSenders(m.mirror.port, 4) as slow:
            deadline = time.monotonic() + 20
            while slow.closed_by_server < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert slow.closed_by_server == 4  # each was closed: a trickle is no request
            raw = Raw(m.mirror.port)
            assert _c_B(raw) == pytest.approx(VALUE, rel=1e-7)
            raw.close()
        assert m.mirror.tcp.idle_closed >= 4 and m.mirror.tcp.refused_connections == 0


@pytest.mark.slow
def test_the_plant_plc_survives_malformed_frames_and_slow_senders() -> None:
    n = 240
    with PlantProcess(speed=100.0, seed=2) as plant:
        times: list[float] = []

        def check() -> None:
            with PlcClient(port=plant.port) as plc:
                m = plc.read_measurements()
            assert Phase(int(m["phase"])) in Phase and math.isfinite(m["plant_time"])
            times.append(m["plant_time"])

        with SlowSenders(plant.port, 4):
            fz = _fuzz(plant.port, n, check, read_only=False)
        _assert_clean(fz, n)
        check()
        assert times == sorted(times) and times[-1] > times[0]  # the PLC kept running and serving
        assert plant.returncode is None
