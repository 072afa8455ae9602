"""The one Modbus TCP server layer of the project: MBAP framing, connections, reads of a register image.

Both Modbus servers use it: the simulated PLC (plant_sim.modbus_server, which adds its writes and
commands in plant_sim.modbus_device) and the twin's read-only mirror (gateways.modbus_mirror). It
lives in gateways because gateways may not import plant_sim (tests/test_gateways.py) while plant_sim
may import this generic layer, and because it is a gateway concern (a protocol adapter with no plant
in it); it imports only twin_core and pymodbus.

- :class:`ModbusTcpServer`: asyncio streams, one task per connection. The handler reads the 7-byte
  MBAP header, then exactly ``length - 1`` bytes of PDU, answers, and loops, so **pipelined requests
  are all answered, in order, each with its own transaction id**, whatever the TCP segmentation
  (pymodbus 3.16's server answers only the first ADU of a segment: docs/modbus.md). ``drain()``
  applies back-pressure, so a client that never reads cannot grow the server's memory. A connection
  cap and an idle timeout keep idle clients from locking the others out. A bad MBAP header closes
  the connection (the stream cannot be re-synchronised), as PLCs do.
- :class:`RegisterImage`: the raw 16-bit words (and bits) of a register map, the check that every
  address of a request is mapped (exception 02), and the answer to FC1/3/4 read requests.
- :class:`ModbusRequestError`, :func:`exception_pdu`, :func:`answer`: a refusal and its exception
  response; ``answer`` dispatches a request PDU on its function code (unknown: exception 01) and
  turns a refusal into the exception response, once, at this boundary.

pymodbus (pinned) decodes the request PDUs and encodes the responses; the framing and the checks are
ours, so every refusal has the exception code the Modbus application protocol specifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import Callable, Iterable, Mapping

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadCoilsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

from twin_core.errors import ParameterError, TwinError
from twin_core.signals.modbus import RegisterEntry

__all__ = ["DEFAULT_IDLE_TIMEOUT_S", "DEFAULT_MAX_CONNECTIONS", "MBAP_HEADER", "ExcCodes", "ModbusRequestError",
           "ModbusTcpServer", "RegisterImage", "answer", "check_port", "exception_pdu", "pdu_bytes"]

log = logging.getLogger(__name__)

MBAP_HEADER = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit id + PDU), unit id
MAX_PDU_BYTES = 253
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_IDLE_TIMEOUT_S = 120.0
"""A connection that sends no request for this long is closed [s of wall time]: a SCADA polls far more
often, and a client that went away without closing (or 16 idle sockets) cannot lock the others out."""

FC_READ_COILS, FC_READ_HOLDING, FC_READ_INPUT = 0x01, 0x03, 0x04
FC_WRITE_COIL, FC_WRITE_REGISTER, FC_WRITE_COILS, FC_WRITE_REGISTERS = 0x05, 0x06, 0x0F, 0x10
WRITE_FUNCTION_CODES = (FC_WRITE_COIL, FC_WRITE_REGISTER, FC_WRITE_COILS, FC_WRITE_REGISTERS)

PduHandler = Callable[[int, bytes], bytes]
"""(unit id, request PDU) -> response PDU (an exception response when refused)."""


class ModbusRequestError(TwinError):
    """A request refused with a Modbus exception code: the boundary answers it as an exception response."""

    def __init__(self, code: ExcCodes, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"exception {int(code):02d} ({code.name}): {reason}")


def exception_pdu(function_code: int, code: int) -> bytes:
    """The exception response PDU: function code | 0x80, exception code."""
    resp = ExceptionResponse(function_code & 0x7F, code)
    return bytes([resp.function_code]) + resp.encode()


def pdu_bytes(resp: ModbusPDU) -> bytes:
    """A pymodbus response as PDU bytes (function code, data)."""
    return bytes([resp.function_code]) + resp.encode()


def decode_request(req: ModbusPDU, pdu: bytes, fixed_len: int | None = None) -> None:
    """Decode ``pdu`` into ``req``; a malformed one (or one not ``fixed_len`` bytes long) is exception 03."""
    if fixed_len is not None and len(pdu) != fixed_len:
        raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"PDU of {len(pdu)} bytes, expected {fixed_len}")
    try:
        req.decode(pdu[1:])
    except (ValueError, IndexError, struct.error) as exc:
        raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"malformed request: {exc}") from None


def answer(pdu: bytes, handlers: Mapping[int, Callable[[bytes], bytes]], who: str = "server") -> bytes:
    """The response PDU to a request PDU: ``handlers[function code](pdu)``; a function code without a
    handler is exception 01; a :class:`ModbusRequestError` becomes its exception response (logged)."""
    fc = pdu[0] if pdu else 0
    try:
        handler = handlers.get(fc)
        if handler is None:
            raise ModbusRequestError(ExcCodes.ILLEGAL_FUNCTION, f"function code 0x{fc:02X} not supported")
        return handler(pdu)
    except ModbusRequestError as exc:
        log.info("%s refused FC 0x%02X: %s", who, fc, exc)
        return exception_pdu(fc, exc.code)


def is_exception(response: bytes) -> bool:
    """True when a response PDU is an exception response."""
    return bool(response) and bool(response[0] & 0x80)


class RegisterImage:
    """The raw words (0..65535) and bits (0/1) of a register map, and its read requests (no I/O).

    tables: the tables served (a map entry in another one is a ValueError). ``put`` encodes a value
    into an entry's words; ``read_words`` returns words (exception 02 if any address is unmapped);
    ``read_registers`` / ``read_coils`` answer FC3/FC4 and FC1 requests; ``table_of`` says which table a
    register read goes to (the mirror serves its input registers to FC3 as well).
    """

    def __init__(self, entries: Iterable[RegisterEntry], tables: Iterable[str] = ("coil", "input", "holding")) -> None:
        self.entries = tuple(entries)
        # (table, address) -> (entry, index of the word inside the entry)
        self.owner: dict[str, dict[int, tuple[RegisterEntry, int]]] = {t: {} for t in tables}
        for e in self.entries:
            if e.binding.table not in self.owner:
                raise ValueError(f"{e.name}: table {e.binding.table} not served here")
            for i, a in enumerate(e.addresses):
                self.owner[e.binding.table][a] = (e, i)
        self.words: dict[str, dict[int, int]] = {t: dict.fromkeys(o, 0) for t, o in self.owner.items()}

    def put(self, entry: RegisterEntry, value: float) -> None:
        """Encode ``value`` (SI) into ``entry``'s words, saturating (NaN: the encoding's 'no value')."""
        img = self.words[entry.binding.table]
        for a, w in zip(entry.addresses, entry.binding.encode(value, saturate=True), strict=True):
            img[a] = w

    def check_mapped(self, table: str, address: int, count: int) -> None:
        """ModbusRequestError(02) unless every address of the request is mapped in ``table``."""
        owner = self.owner.get(table, {})
        for a in range(address, address + count):
            if a not in owner:
                raise ModbusRequestError(ExcCodes.ILLEGAL_ADDRESS, f"{table} address {a} is not mapped")

    def read_words(self, table: str, address: int, count: int) -> list[int]:
        """Raw words (or 0/1 bits) of the image; ModbusRequestError(02) if any is unmapped."""
        self.check_mapped(table, address, count)
        img = self.words[table]
        return [img[a] for a in range(address, address + count)]

    def read_registers(self, pdu: bytes, table: str | None = None) -> bytes:
        """Answer an FC3 (holding) or FC4 (input) request; ``table`` overrides where it reads."""
        fc = pdu[0]
        req = ReadHoldingRegistersRequest() if fc == FC_READ_HOLDING else ReadInputRegistersRequest()
        decode_request(req, pdu, 5)  # pymodbus checks 1 <= count <= 125
        where = table or ("holding" if fc == FC_READ_HOLDING else "input")
        words = self.read_words(where, req.address, req.count)
        cls = ReadHoldingRegistersResponse if fc == FC_READ_HOLDING else ReadInputRegistersResponse
        return pdu_bytes(cls(registers=words))

    def read_coils(self, pdu: bytes) -> bytes:
        """Answer an FC1 request."""
        req = ReadCoilsRequest()
        decode_request(req, pdu, 5)  # pymodbus checks 1 <= count <= 2000
        bits = self.read_words("coil", req.address, req.count)
        return pdu_bytes(ReadCoilsResponse(bits=[bool(b) for b in bits]))


def check_port(port: object, what: str = "port") -> int:
    """``port`` if it is an int in 0..65535 (0 = a free one), else ParameterError naming ``what``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ParameterError(what, port, "must be an int in 0..65535 (0 = a free port)")
    return port


class ModbusTcpServer:
    """A Modbus TCP server: MBAP framing over asyncio streams around a PDU handler.

    The constructor does no I/O; ``await start()`` binds (``port`` is then the bound port, also when 0
    was asked), ``await stop()`` closes the listening socket and every connection (also ``async with``).

    handler: ``(unit id, request PDU) -> response PDU``, called on the event loop (it must not block);
    max_connections: connections served at once (one more is accepted and closed at once);
    idle_timeout_s: a connection with no complete request for this long is closed (checked by one task,
    a quarter of the timeout (at most 1 s) apart, so it goes up to that much later; None or 0: never);
    name: for the log.
    """

    def __init__(self, handler: PduHandler, host: str = "127.0.0.1", port: int = 0, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S, name: str = "Modbus TCP server") -> None:
        self.handler = handler
        self.host = host
        self.port = check_port(port)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ParameterError("max_connections", max_connections, "must be an int >= 1")
        if idle_timeout_s is not None and (isinstance(idle_timeout_s, bool)
                                           or not isinstance(idle_timeout_s, (int, float))
                                           or math.isnan(idle_timeout_s) or idle_timeout_s < 0):
            raise ParameterError("idle_timeout_s", idle_timeout_s, "must be a number >= 0 s (0 = no timeout)")
        self.max_connections = max_connections
        self.idle_timeout_s = None if not idle_timeout_s or math.isinf(idle_timeout_s) else float(idle_timeout_s)
        self.name = name
        self.refused_connections = 0
        self.idle_closed = 0
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._last_request: dict[asyncio.Task[None], float] = {}  # loop time of each connection's last request
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    async def start(self) -> None:
        """Bind the port and accept connections (OSError if the port cannot be bound or the host resolved)."""
        self._server = await asyncio.start_server(self._serve_connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.idle_timeout_s is not None:
            self._watchdog = asyncio.create_task(self._close_idle(self.idle_timeout_s), name=f"{self.name} idle")
        log.info("%s on %s:%d (at most %d connections, idle timeout %s)", self.name, self.host, self.port,
                 self.max_connections, f"{self.idle_timeout_s:g} s" if self.idle_timeout_s else "none")

    async def stop(self) -> None:
        """Close the listening socket and every connection."""
        if self._server is not None:
            self._server.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        # Closing the transports ends each handler's read with EOF, so they finish normally.
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=2.0)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ModbusTcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= self.max_connections:
            self.refused_connections += 1
            log.warning("%s: refusing connection from %s: %d connections open (--max-connections)", self.name, peer,
                        len(self._connections))
            writer.close()
            return
        loop = asyncio.get_running_loop()
        last_request = self._last_request
        if task is not None:
            self._connections[task] = writer
            last_request[task] = loop.time()
        log.debug("connection from %s", peer)
        try:
            while True:
                header = await reader.readexactly(MBAP_HEADER.size)
                tid, pid, length, unit = MBAP_HEADER.unpack(header)
                if pid != 0 or not 2 <= length <= MAX_PDU_BYTES + 1:
                    # the byte stream cannot be re-synchronised: drop the connection, as PLCs do
                    log.warning("%s: closing %s: bad MBAP header (protocol %d, length %d)", self.name, peer, pid,
                                length)
                    break
                pdu = await reader.readexactly(length - 1)
                if task is not None:
                    last_request[task] = loop.time()
                response = self.handler(unit, pdu)
                writer.write(MBAP_HEADER.pack(tid, 0, len(response) + 1, unit) + response)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # client closed the connection (possibly mid-request)
        except ConnectionError as exc:
            log.debug("connection %s lost: %s", peer, exc)
        except asyncio.CancelledError:
            # Only stop() cancels a handler (one stuck writing). Python 3.11's start_server callback calls
            # task.exception() on it, which raises for a cancelled task: end normally instead.
            log.debug("connection %s cancelled at shutdown", peer)
        finally:
            if task is not None:
                self._connections.pop(task, None)
                last_request.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _close_idle(self, timeout_s: float) -> None:
        """Close every connection whose last complete request is older than ``timeout_s``, checking a
        few times per timeout (one task for all connections: a timer per read would cost a third of
        the request rate). Closing the transport ends the handler's read with EOF."""
        loop = asyncio.get_running_loop()
        period = min(1.0, timeout_s / 4.0)
        while True:
            await asyncio.sleep(period)
            limit = loop.time() - timeout_s
            for task, t in list(self._last_request.items()):
                writer = self._connections.get(task)
                if t < limit and writer is not None and not writer.is_closing():
                    self.idle_closed += 1
                    log.info("%s: closing %s: no request for %g s", self.name, writer.get_extra_info("peername"),
                             timeout_s)
                    writer.close()
