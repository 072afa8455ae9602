"""A TCP relay whose link can be cut: the demo's (and the tests') way to lose the PLC link without
stopping the PLC, as a pulled cable or a switch reboot would.

``TcpRelay(target_host, target_port)`` listens on loopback and forwards every connection to the
target, both ways. ``cut(seconds)`` closes every relayed connection at once and refuses new ones for
that long (wall time); then connections are relayed again. Constructor no I/O; ``await start()``,
``await stop()``, ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from twin_core.errors import ParameterError

log = logging.getLogger(__name__)

CHUNK = 65536


class TcpRelay:
    """Forward host:port -> target, with a switch to cut the link."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0 < target_port <= 0xFFFF or not 0 <= port <= 0xFFFF:
            raise ParameterError("port", (target_port, port), "must be TCP ports")
        self.target = (target_host, target_port)
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._cut_until = 0.0
        self.cuts = 0

    @property
    def is_cut(self) -> bool:
        return time.monotonic() < self._cut_until

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._drop_all()  # the handlers see their connections end and return
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5.0)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def cut(self, seconds: float) -> None:
        """Cut every relayed connection now and refuse new ones for ``seconds`` of wall time."""
        self._cut_until = time.monotonic() + seconds
        self.cuts += 1
        log.info("relay to %s:%d cut for %.2f s", *self.target, seconds)
        self._drop_all()

    def _drop_all(self) -> None:
        for w in list(self._pipes):
            w.transport.abort()  # a reset, not a polite close: what a cut cable looks like to a client
        self._pipes.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        if self.is_cut:
            writer.transport.abort()
            return
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._pipes |= {writer, t_writer}
        try:
            await asyncio.gather(self._pump(reader, t_writer), self._pump(t_reader, writer))
        finally:
            for w in (writer, t_writer):
                self._pipes.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(CHUNK):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
