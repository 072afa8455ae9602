"""The simulated PLC's Modbus TCP server and its scan loop.

One asyncio event loop runs both: the PLC scan loop (``plc.scan()`` every ``scan_s`` of plant time,
``speed`` times faster than real time) and a Modbus TCP server whose register image is refreshed from
``plc.snapshot()`` after the scans of each tick. The server is the PLC's only interface: writes and
commands go to the PLC through :class:`plant_sim.modbus_device.PlcModbusDevice`.

The TCP layer is the project's one Modbus server layer, :class:`gateways.modbus_tcp.ModbusTcpServer`
(shared with the twin's read-only mirror; plant_sim may import that generic layer, gateways never
imports plant_sim). Why our own TCP layer: Modbus TCP lets a client send several requests without
waiting (pipelining, e.g. several ADUs in one TCP segment), and pymodbus 3.16's server answers only the
first ADU of a segment. Patching its framer/transaction manager would tie us to private, churning
internals; instead each connection reads MBAP-framed ADUs one after another and writes each response
before reading the next request, so every request is answered, in order, with its own transaction id,
and TCP back-pressure (``drain``) bounds memory. pymodbus still decodes the request PDUs and encodes
the responses, and is the client in tests and gateways. At most ``max_connections`` clients are
served at once and a connection idle for ``idle_timeout_s`` is closed, so idle sockets cannot lock the
others out. docs/modbus.md explains the encoding and the map.

Entry points: :func:`serve` (async), :func:`run` (blocking, SIGINT/SIGTERM stop it cleanly),
:class:`PlcModbusServer` (explicit lifecycle), :class:`PlcServerThread` (background thread for
tests and benchmarks). :func:`format_register_map` and :func:`register_map_csv` print the map.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from gateways.modbus_tcp import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, ModbusTcpServer
from plant_sim.interface import PlcPort
from plant_sim.modbus_device import PlcModbusDevice
from twin_core.clock import PlantClock
from twin_core.errors import ParameterError
from twin_core.signals.text import format_register_map, register_map_csv

__all__ = ["PlcModbusServer", "PlcServerThread", "format_register_map", "register_map_csv", "run", "serve"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5020
MIN_TICK_S = 0.01
"""Shortest wall-clock interval between scan ticks [s]: above speed scan_s / MIN_TICK_S (10 with the
0.1 s scan) several scans run per tick and the image is refreshed once per tick. An event-loop
wake-up costs ~0.1 ms of CPU on a small VM: 100 ticks/s keep that near 1 % of a core."""
MAX_TICK_BUSY_S = 0.02
"""Longest the scan loop runs scans without yielding to the server [s of wall time]."""
MAX_BACKLOG_S = 0.5
"""When the loop falls this far behind its schedule [s of wall time] it stops trying to catch up and
restarts the schedule from now (plant time then runs slower than asked; counted in ``slips``)."""
_DUE_EPS = 1e-9
"""Relative slack when turning plant time into a scan count (3 * 0.1 / 0.1 is 2.9999999999999996)."""

T = TypeVar("T")


def _check_speed(speed: float) -> float:
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or math.isnan(speed) or speed < 0:
        raise ParameterError("speed", speed, "must be a number >= 0 (0 = paused, inf = as fast as possible)")
    return float(speed)


class PlcModbusServer:
    """A PLC served over Modbus TCP. The constructor does no I/O; ``await start()`` binds the port and
    starts the scan loop, ``await stop()`` closes everything (also ``async with``).

    plc: the PLC (plant_sim.plc.Plc or anything with the PlcPort methods);
    scan_s: plant time per scan [s] (None: ``plc.scan_s``);
    speed: plant seconds per wall second (0 pauses the scan loop; ``math.inf`` runs it flat out);
    port: TCP port (0 picks a free one: see ``port`` after start);
    max_connections: clients served at once (one more is accepted and closed at once);
    idle_timeout_s: a connection with no request for this long [s of wall time] is closed (None: never).
    """

    def __init__(self, plc: PlcPort, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, speed: float = 1.0, *,
                 scan_s: float | None = None, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S) -> None:
        self.plc = plc
        self.speed = _check_speed(speed)
        if scan_s is None:
            scan_s = getattr(plc, "scan_s", None)
            if scan_s is None:
                raise ParameterError("scan_s", None, "not given and the PLC has no scan_s attribute")
        if not (isinstance(scan_s, (int, float)) and math.isfinite(scan_s) and scan_s > 0):
            raise ParameterError("scan_s", scan_s, "must be a finite number > 0")
        self.scan_s = float(scan_s)
        self.device = PlcModbusDevice(plc)
        self.tcp = ModbusTcpServer(lambda unit, pdu: self.device.handle(pdu), host, port,
                                   max_connections=max_connections, idle_timeout_s=idle_timeout_s,
                                   name="PLC Modbus server")
        """The Modbus TCP layer (any unit id is accepted and echoed: an end device, not a gateway)."""
        self.scans = 0
        self.slips = 0
        self.clock: PlantClock | None = None
        """The plant clock pacing the scan loop, from start() on (None when paused or flat out); plant
        time is ``clock.now()``, re-anchored on scans * scan_s after a slip."""
        self._scan_task: asyncio.Task[None] | None = None

    @property
    def host(self) -> str:
        return self.tcp.host

    @property
    def port(self) -> int:
        """The TCP port (the bound one after start, also when 0 was asked)."""
        return self.tcp.port

    @property
    def max_connections(self) -> int:
        return self.tcp.max_connections

    @property
    def idle_timeout_s(self) -> float | None:
        return self.tcp.idle_timeout_s

    async def start(self) -> None:
        """Refresh the image, bind the port and start the scan loop."""
        self.device.refresh()
        await self.tcp.start()
        if 0.0 < self.speed < math.inf:
            self.clock = PlantClock(self.speed, t0_s=self.scans * self.scan_s)
        self._scan_task = asyncio.create_task(self._scan_loop(), name="plc-scan-loop")
        log.info("PLC Modbus server on %s:%d, speed %g, scan %g s", self.host, self.port, self.speed, self.scan_s)

    async def stop(self) -> None:
        """Stop the scan loop, close the listening socket and every connection."""
        if self._scan_task is not None:
            self._scan_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scan_task
        await self.tcp.stop()
        log.info("PLC Modbus server stopped after %d scans (%d schedule slips)", self.scans, self.slips)

    async def __aenter__(self) -> PlcModbusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait(self, stop_event: asyncio.Event | None = None) -> None:
        """Run until ``stop_event`` is set (None: until cancelled); a failing scan loop re-raises here."""
        if self._scan_task is None:
            raise RuntimeError("server not started")
        waiters: set[asyncio.Future[Any]] = {self._scan_task}
        stopper = asyncio.ensure_future(stop_event.wait()) if stop_event is not None else None
        if stopper is not None:
            waiters.add(stopper)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
        if self._scan_task.done() and not self._scan_task.cancelled():
            self._scan_task.result()  # re-raise a PLC failure

    # -- scan loop ------------------------------------------------------------------------------
    async def _scan_loop(self) -> None:
        """Run scans on the plant clock: scan n is due when ``clock.now() >= n * scan_s``.

        Plant time is the clock's reading (t0 + speed * elapsed wall time, never accumulated), and the
        PLC's own clock is scan_count * scan_s; the loop keeps the two together, re-anchoring the
        clock on the PLC's time after a slip."""
        if self.speed == 0.0:
            await asyncio.Event().wait()  # paused: plant time stands still, the server still answers
            return
        loop = asyncio.get_running_loop()
        flat_out = math.isinf(self.speed)
        scan_s = self.scan_s
        period = 0.0 if flat_out else scan_s / self.speed  # wall seconds per scan
        tick = MIN_TICK_S if flat_out else max(period, MIN_TICK_S)
        clock = self.clock  # created by start(): plant time runs from there
        while True:
            now = loop.time()
            plant_now = math.inf if clock is None else clock.now()
            due = math.inf if clock is None else math.floor(plant_now / scan_s + _DUE_EPS)
            busy_until = now + MAX_TICK_BUSY_S
            ran = 0
            while self.scans < due:
                self.plc.scan()
                self.scans += 1
                ran += 1
                if ran % 8 == 0 and loop.time() > busy_until:
                    break  # let the server answer; the rest of the backlog runs next tick
            if ran:
                self.device.refresh()
            if clock is None:
                await asyncio.sleep(0)
                continue
            if (due - self.scans) * period > MAX_BACKLOG_S:
                if self.slips == 0:
                    log.warning("scan loop cannot keep up with speed %g: plant time runs slower", self.speed)
                self.slips += 1
                clock.reset(self.scans * scan_s)
            elif self.scans < due:
                await asyncio.sleep(0)  # backlog left: let the server answer, then go on
                continue
            # next scan's time, but no sooner than one tick after this one began
            await clock.sleep_until(max((self.scans + 1) * scan_s, plant_now + tick * self.speed))


async def serve(plc: PlcPort, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, speed: float = 1.0,
                stop_event: asyncio.Event | None = None, ready: asyncio.Event | None = None, *,
                scan_s: float | None = None, on_ready: Callable[[PlcModbusServer], None] | None = None,
                max_connections: int = DEFAULT_MAX_CONNECTIONS,
                idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S) -> None:
    """Run the PLC scan loop and its Modbus TCP server until ``stop_event`` is set or the task is
    cancelled; sockets are closed either way. Once the port accepts connections ``ready`` is set and
    ``on_ready(server)`` is called (``server.port`` is the bound port, also when ``port`` was 0).
    speed: plant seconds per wall second (0 = paused, inf = flat out); scan_s: None = plc.scan_s;
    max_connections, idle_timeout_s: see :class:`PlcModbusServer`."""
    server = PlcModbusServer(plc, host, port, speed, scan_s=scan_s, max_connections=max_connections,
                             idle_timeout_s=idle_timeout_s)
    async with server:
        if ready is not None:
            ready.set()
        if on_ready is not None:
            on_ready(server)
        await server.wait(stop_event)


def run(plc: PlcPort, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, speed: float = 1.0, *,
        scan_s: float | None = None, on_ready: Callable[[PlcModbusServer], None] | None = None,
        stop_on_stdin_eof: bool = False, max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S) -> None:
    """Blocking: serve until SIGINT (Ctrl-C) or SIGTERM, then shut down cleanly (no traceback).

    stop_on_stdin_eof: also stop when standard input reaches end of file: a parent process that
    started the plant with a pipe on its stdin (gateways' demo) thus ends it even if the parent dies
    without a word. Binding errors (port in use ...) propagate as OSError."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)  # main thread on POSIX only
        if stop_on_stdin_eof:
            def watch_stdin() -> None:
                # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside a buffered
                # reader makes the interpreter abort at shutdown.
                with contextlib.suppress(OSError):
                    while os.read(stdin_fd, 4096):
                        pass
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(stop.set)

            stdin_fd = sys.stdin.fileno()

            threading.Thread(target=watch_stdin, name="plc-stdin-watch", daemon=True).start()
        await serve(plc, host, port, speed, stop_event=stop, scan_s=scan_s, on_ready=on_ready,
                    max_connections=max_connections, idle_timeout_s=idle_timeout_s)

    with contextlib.suppress(KeyboardInterrupt):  # where signal handlers are unavailable
        asyncio.run(main())


class PlcServerThread:
    """The server in a background thread with its own event loop (tests, benchmarks).

        with PlcServerThread(plc, speed=100) as srv:
            client = ModbusTcpClient("127.0.0.1", port=srv.port)

    ``__enter__`` returns once the port accepts connections (or re-raises why it could not start);
    ``call(fn, *args)`` runs ``fn`` in the server's thread, between scans and requests, so the PLC can
    be inspected safely; ``__exit__`` stops the server and joins the thread.
    """

    def __init__(self, plc: PlcPort, port: int = 0, speed: float = 1.0, host: str = DEFAULT_HOST, *,
                 scan_s: float | None = None, start_timeout_s: float = 20.0,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S) -> None:
        self.server = PlcModbusServer(plc, host, port, speed, scan_s=scan_s, max_connections=max_connections,
                                      idle_timeout_s=idle_timeout_s)
        self.start_timeout_s = start_timeout_s
        self._thread = threading.Thread(target=self._run, name="plc-modbus-server", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self.server.port

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with self.server:
                self._ready.set()
                await self.server.wait(self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the caller's thread by __enter__/stop, not swallowed
            self._error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> PlcServerThread:
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            raise TimeoutError(f"PLC server not ready after {self.start_timeout_s} s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server and wait for its thread; re-raises an error of the scan loop."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float = 10.0) -> T:
        """Run ``fn(*args)`` in the server's event loop thread and return its result."""
        if self._loop is None:
            raise RuntimeError("server thread not running")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller's thread, not swallowed
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(job)
        return fut.result(timeout_s)
