"""The read-only Modbus TCP mirror of the twin, for legacy SCADA that speaks Modbus only.

It serves, per reactor, the register map declared once in twin_core.signals.runtime
(:data:`~twin_core.signals.runtime.MIRROR_MAP`, docs/modbus_register_map_twin.csv): estimates,
uncertainties, forecasts, health and status as float32 (ABCD, as the PLC map), status words (uint16),
counters (uint32) and scaled INT16 views, all input registers. The runtime hands it values through
the :class:`gateways.model.Publisher` protocol; the TCP layer is gateways.modbus_tcp, the same as the
simulated PLC's (pipelined requests all answered, connection cap, idle timeout).

- **Unit ids**: one per reactor, 1, 2, ... in the order given (the runtime's configuration order).
  A request to any other unit id (0 included) answers exception **0x0B** (gateway target device
  failed to respond): the mirror is a gateway in front of several virtual devices, and 0x0B is what
  a Modbus gateway answers for a target that is not there (pymodbus's server does the same), so a
  SCADA polling the wrong unit id is told at once instead of timing out.
- **Function codes**: FC4 (read input registers) and FC3 (read holding registers) on the **same**
  image at the same addresses: many legacy SCADA drivers and HMIs poll only the 4xxxx table, and
  serving it read-only costs nothing. Every write function code (5, 6, 15, 16) answers exception
  **01** (illegal function), as does every other function code; nothing changes. Unmapped addresses
  answer 02, a malformed request or a quantity outside 1..125 answers 03.
- **Quality**: a value whose quality is not GOOD (or that is NaN, or not published yet) reads as NaN
  in float32 and as 0x8000 ("no value") in INT16, so a legacy SCADA never reads a stale value as
  fresh. uint16/uint32 words have no "no value" code: they carry the last value published (a zero
  would read as a plausible value, e.g. health good or batch 0), and the quality words
  ``plc_link``, ``twin_mode`` and ``estimate_quality`` say whether the values are fresh.

Each ``publish`` rewrites one reactor's image in one go on the event loop (no await in between), so a
read never sees half of one scan and half of another.

**Modbus/TCP Security** (:class:`TlsMirror`, config ``mirror_tls_port``): the same registers, also served
over TLS 1.2+ with client certificates by pymodbus's TLS server (``ModbusTlsServer``; the framing is
pymodbus's here), read-only like the plain mirror (writes answer 01, unknown unit ids 0x0B: the same
handler answers). The server presents the instance's certificate (gateways.certs, the OPC UA server's);
a client must present a certificate of the trust list (``twin certs trust``): OpenSSL refuses any other
in the handshake. The trust list is read when the mirror starts; a certificate revoked afterwards
(``twin certs revoke``) is refused at its next connection (checked after the handshake, the connection
closed before any request is answered).
"""

from __future__ import annotations

import logging
import math
import ssl
import struct
from collections.abc import Sequence
from pathlib import Path

from gateways.modbus_tcp import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    FC_READ_HOLDING,
    FC_READ_INPUT,
    ExcCodes,
    ModbusTcpServer,
    RegisterImage,
    answer,
    exception_pdu,
)
from gateways.model import Snapshot, TwinEvent
from twin_core.errors import ParameterError
from twin_core.signals.modbus import RegisterEntry
from twin_core.signals.runtime import MIRROR_MAP, Quality

__all__ = ["DEFAULT_MIRROR_PORT", "MIRROR_FUNCTION_CODES", "ModbusMirror", "TlsMirror", "mirror_tls_context",
           "tls_mirror_from_config"]

log = logging.getLogger(__name__)

DEFAULT_MIRROR_PORT = 5021
MIRROR_FUNCTION_CODES = (FC_READ_HOLDING, FC_READ_INPUT)
"""FC3 and FC4, both reading the one input-register image; everything else is exception 01."""


class _ReactorImage:
    """One reactor's registers: encoded from a snapshot, answered to FC3/FC4."""

    def __init__(self, entries: Sequence[RegisterEntry]) -> None:
        self.image = RegisterImage(entries, ("input",))
        # float32 and int16 have a "no value" code (NaN, 0x8000); the integer words keep their last value.
        self._plan = [(e, e.binding.encoding in ("float32", "int16")) for e in self.image.entries]
        for e in self.image.entries:
            self.image.put(e, math.nan)  # nothing published yet: NaN, 0x8000, 0
        read = self._read
        self.handlers = {FC_READ_HOLDING: read, FC_READ_INPUT: read}
        self.publishes = 0

    def _read(self, pdu: bytes) -> bytes:
        return self.image.read_registers(pdu, table="input")

    def update(self, snapshot: Snapshot) -> None:
        put = self.image.put
        for e, has_no_value in self._plan:
            v = snapshot.get(e.signal.name)
            if v is not None and v.quality == Quality.GOOD:
                put(e, v.value)  # NaN (a value that has no number) encodes as NaN / 0x8000 / 0
            elif has_no_value:
                put(e, math.nan)
        self.publishes += 1


class ModbusMirror:
    """The read-only Modbus TCP server of the twin's values (implements gateways.model.Publisher).

    The constructor does no I/O; ``await start()`` binds (``port`` is then the bound port, also when
    0 was asked), ``await stop()`` closes everything (also ``async with``).

    reactors: reactor names in configuration order (unit id 1 is the first);
    entries: the register map (default MIRROR_MAP); max_connections, idle_timeout_s: as the PLC server.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_MIRROR_PORT, reactors: Sequence[str] = ("R1",),
                 *, entries: Sequence[RegisterEntry] = MIRROR_MAP, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S) -> None:
        names = list(reactors)
        if not names or len(names) > 247 or not all(isinstance(n, str) and n for n in names):
            raise ParameterError("reactors", reactors, "must be 1..247 non-empty names (unit ids 1..247)")
        if len(set(names)) != len(names):
            raise ParameterError("reactors", reactors, "names must be unique")
        self.reactors: tuple[str, ...] = tuple(names)
        self.unit_ids: dict[str, int] = {n: i + 1 for i, n in enumerate(names)}
        self._images: dict[int, _ReactorImage] = {u: _ReactorImage(entries) for u in self.unit_ids.values()}
        self.tcp = ModbusTcpServer(self._handle, host, port, max_connections=max_connections,
                                   idle_timeout_s=idle_timeout_s, name="Modbus mirror")
        self.requests = 0

    @property
    def host(self) -> str:
        return self.tcp.host

    @property
    def port(self) -> int:
        """The TCP port (the bound one after start)."""
        return self.tcp.port

    @property
    def endpoint(self) -> str:
        """``host:port`` (after start: the port actually bound)."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind the port (OSError if it cannot be bound or the host resolved) and serve."""
        await self.tcp.start()
        log.info("Modbus mirror listening on %s, unit ids %s", self.endpoint,
                 ", ".join(f"{u}={n}" for n, u in self.unit_ids.items()))

    async def stop(self) -> None:
        await self.tcp.stop()

    async def __aenter__(self) -> ModbusMirror:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- Publisher ------------------------------------------------------------------------------
    async def publish(self, reactor: str, snapshot: Snapshot) -> None:
        """The values of ``reactor`` after a scan (SI units, with quality): the whole image at once."""
        unit = self.unit_ids.get(reactor)
        if unit is None:
            raise KeyError(f"reactor {reactor!r} is not served by the mirror (known: {', '.join(self.reactors)})")
        self._images[unit].update(snapshot)

    async def event(self, reactor: str, event: TwinEvent) -> None:
        """Events have no place in a register map: nothing to do (the status words carry the state)."""

    # -- requests -------------------------------------------------------------------------------
    def _handle(self, unit: int, pdu: bytes) -> bytes:
        self.requests += 1
        image = self._images.get(unit)
        if image is None:
            fc = pdu[0] if pdu else 0
            log.info("mirror: request FC 0x%02X to unit id %d, which serves no reactor", fc, unit)
            return exception_pdu(fc, ExcCodes.GATEWAY_NO_RESPONSE)
        return answer(pdu, image.handlers, "mirror")


# -- Modbus/TCP Security ------------------------------------------------------------------------------
def mirror_tls_context(cert_pem: Path, key_pem: Path, trusted_pem: Path | None) -> ssl.SSLContext:
    """The server side of Modbus/TCP Security: TLS 1.2 or later, the server's certificate and key (PEM),
    a client certificate required and verified against ``trusted_pem`` (a PEM bundle; None or empty:
    no client can connect)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_pem), str(key_pem))
    ctx.verify_mode = ssl.CERT_REQUIRED
    if trusted_pem is not None and trusted_pem.stat().st_size > 0:
        ctx.load_verify_locations(cafile=str(trusted_pem))
    else:
        log.warning("TLS mirror: the trust list is empty: no client certificate will be accepted")
    return ctx


def _mirror_context_class():  # noqa: ANN202 -- built lazily: pymodbus's server module is heavy to import
    from pymodbus.datastore import ModbusServerContext

    class _MirrorContext(ModbusServerContext):
        """pymodbus's datastore interface in front of the mirror's own request handler, so both servers
        answer every request alike (read-only, same exception codes)."""

        def __init__(self, mirror: ModbusMirror) -> None:  # noqa: D107 -- no super().__init__: no blocks
            self.mirror = mirror
            self.old_simulator = True  # pymodbus then calls async_getValues/async_setValues as they are
            self.simdevices = []

        async def async_getValues(self, device_id: int, func_code: int, address: int,  # noqa: N802
                                  count: int = 1) -> list[int] | ExcCodes:
            response = self.mirror._handle(device_id, struct.pack(">BHH", func_code, address, count))
            if response[0] & 0x80:
                return ExcCodes(response[1])
            n = response[1] // 2
            return list(struct.unpack(f">{n}H", response[2:2 + 2 * n]))

        async def async_setValues(self, device_id: int, func_code: int, address: int,  # noqa: N802
                                  values: Sequence[int] | Sequence[bool]) -> ExcCodes:
            self.mirror.requests += 1
            if device_id not in self.mirror._images:
                return ExcCodes.GATEWAY_NO_RESPONSE
            return ExcCodes.ILLEGAL_FUNCTION  # read-only

        def device_ids(self) -> list[int]:
            return list(self.mirror._images)

    return _MirrorContext


class TlsMirror:
    """The mirror's registers over Modbus/TCP Security (pymodbus's TLS server; see the module docstring).

    mirror: the (plain) ModbusMirror whose images are served; host, port: where to listen (0: a free
    port, :attr:`port` after start; 802 is the registered mbaps port); pki: the instance's certificates
    (gateways.certs.Pki); application_uri: the server's (its certificate is generated for it on first
    start, shared with the OPC UA server). No I/O in the constructor; ``await start()`` / ``stop()``.
    """

    def __init__(self, mirror: ModbusMirror, host: str, port: int, *, pki: object, application_uri: str) -> None:
        from gateways.modbus_tcp import check_port

        check_port(port, "mirror_tls_port")
        self.mirror = mirror
        self.host = host
        self._port = port
        self.pki = pki
        self.application_uri = application_uri
        self._server = None
        self.refused = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self._port}"

    async def start(self) -> None:
        import asyncio

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from pymodbus.server import ModbusTlsServer
        from pymodbus.server.requesthandler import ServerRequestHandler

        from gateways.certs import TrustList, ensure_server_certificate, thumbprint

        pki = self.pki
        cert_der, key_pem, _ = await asyncio.to_thread(ensure_server_certificate, pki, self.application_uri,
                                                       [self.host])
        cert_pem = pki.own / "cert.pem"  # type: ignore[attr-defined]
        cert_pem.write_bytes(x509.load_der_x509_certificate(cert_der.read_bytes()).public_bytes(
            serialization.Encoding.PEM))
        trust = TrustList(pki)  # type: ignore[arg-type]
        ctx = mirror_tls_context(cert_pem, key_pem, await asyncio.to_thread(trust.ssl_cafile))
        owner = self

        class _Handler(ServerRequestHandler):
            def callback_connected(self) -> None:
                super().callback_connected()
                sslobj = self.transport.get_extra_info("ssl_object") if self.transport else None
                der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
                tp = thumbprint(der) if der else ""
                if not der or tp in trust.revoked_thumbprints():
                    owner.refused += 1
                    log.warning("TLS mirror: client certificate %s refused (%s)", tp or "-",
                                "revoked" if der else "none presented")
                    self.transport.close()

        class _Server(ModbusTlsServer):
            def callback_new_connection(self) -> ServerRequestHandler:
                return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

        server = _Server(_mirror_context_class()(self.mirror), address=(self.host, self._port), sslctx=ctx)
        await server.serve_forever(background=True)
        self._server = server
        sockets = getattr(server.transport, "sockets", None)
        if sockets:
            self._port = sockets[0].getsockname()[1]
        log.info("Modbus/TCP Security (TLS) mirror listening on %s, client certificates from %s", self.endpoint,
                 pki.trusted)  # type: ignore[attr-defined]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    async def __aenter__(self) -> TlsMirror:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def tls_mirror_from_config(mirror: ModbusMirror, cfg: object) -> TlsMirror | None:
    """The TLS mirror the runtime configuration asks for (``mirror_tls_port`` >= 0), else None; it serves
    ``mirror``'s images with the instance's certificate under ``data_dir``/pki."""
    from gateways.certs import Pki

    port = cfg.mirror_tls_port  # type: ignore[attr-defined]
    if port < 0:
        return None
    return TlsMirror(mirror, cfg.mirror_host, port, pki=Pki(cfg.data_dir),  # type: ignore[attr-defined]
                     application_uri=f"urn:batch-reactor-twin:{cfg.plant}")  # type: ignore[attr-defined]
