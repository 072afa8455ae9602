"""The Modbus mirror as Modbus/TCP Security: TLS with client certificates (pymodbus's TLS server) on a
free loopback port, read with pymodbus's TLS client and with a raw ``ssl`` socket that frames MBAP by
hand (tests/modbus_raw.py). The same values as the plain mirror, read-only, a client without a trusted
certificate refused in the handshake, a certificate revoked while the mirror runs refused at its next
connection.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, wait_for_port
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from modbus_raw import Raw
from opcua_helpers import ClientCert, make_client_cert
from pymodbus.client import ModbusTlsClient
from test_modbus_mirror import ENTRIES, MirrorThread

from gateways.certs import Pki, TrustList, load_certificate_file, thumbprint
from gateways.modbus_mirror import TlsMirror

APP_URI = "urn:batch-reactor-twin:plant"


class TlsMirrorThread(MirrorThread):
    """The plain mirror of tests/test_modbus_mirror.py plus its TLS server on the same loop."""

    def __init__(self, data: Path, port: int, tls_port: int) -> None:
        super().__init__(("R1", "R2"), port=port)
        self.tls = TlsMirror(self.mirror, "127.0.0.1", tls_port, pki=Pki(data), application_uri=APP_URI)

    def __enter__(self) -> TlsMirrorThread:
        super().__enter__()
        self.call(self.tls.start())
        wait_for_port(self.tls.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.tls.stop())
        super().__exit__(*exc)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsMirrorThread, dict[str, ClientCert]]]:
    data = tmp_path_factory.mktemp("tls-mirror")
    folder = tmp_path_factory.mktemp("tls-clients")
    certs = {"scada": make_client_cert(folder, "scada", trust_in=data),
             "rogue": make_client_cert(folder, "rogue"),
             "old-hmi": make_client_cert(folder, "old-hmi", trust_in=data)}
    with TlsMirrorThread(data, free_port(), 0) as m:
        m.publish("R1", {"c_B": 612.5, "T": 350.25})
        m.publish("R2", {"c_B": 100.0})
        yield m, certs


def _pem(der_path: Path, folder: Path) -> Path:
    out = folder / (der_path.stem + ".pem")
    out.write_bytes(load_certificate_file(der_path).public_bytes(serialization.Encoding.PEM))
    return out


def client_context(cert: ClientCert | None, server_cert_der: Path, folder: Path, *,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """A client's TLS context: the server pinned (its certificate), the host name checked (127.0.0.1 is
    in the server certificate's subjectAltName; pymodbus's client passes no server name, so not for it),
    the client's certificate when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(_pem(server_cert_der, folder)))
    if cert is not None:
        ctx.load_cert_chain(str(_pem(cert.cert, folder)), str(cert.key))
    return ctx


def raw_tls(port: int, ctx: ssl.SSLContext) -> Raw:
    """tests/modbus_raw.py's client over an ``ssl`` socket (handshake done here)."""
    raw = Raw.__new__(Raw)
    raw.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
    raw.tid = 0
    return raw


def _float(words: list[int]) -> float:
    """A float32 register pair (ABCD), decoded here by hand."""
    return struct.unpack(">f", struct.pack(">HH", *words))[0]


def test_pymodbus_tls_client_reads_the_published_values(served, tmp_path: Path) -> None:
    m, certs = served
    ctx = client_context(certs["scada"], m.tls.pki.cert_path, tmp_path, check_hostname=False)
    e = ENTRIES["c_B"]
    with ModbusTlsClient("127.0.0.1", port=m.tls.port, sslctx=ctx, timeout=5, retries=0) as client:
        for unit, expected in ((1, 612.5), (2, 100.0)):
            rr = client.read_input_registers(e.binding.address, count=e.binding.width, device_id=unit)
            assert not rr.isError(), rr
            assert _float(rr.registers) == expected
        rr = client.read_holding_registers(e.binding.address, count=e.binding.width, device_id=1)
        assert _float(rr.registers) == 612.5  # FC3 reads the same image
        wr = client.write_register(e.binding.address, 1, device_id=1)
        assert wr.isError() and wr.exception_code == 0x01  # read-only
    assert m.tls.refused == 0


def test_raw_tls_socket_reads_the_same_words_as_the_plain_mirror(served, tmp_path: Path) -> None:
    m, certs = served
    e = ENTRIES["T"]
    plain = Raw(m.mirror.port)
    secure = raw_tls(m.tls.port, client_context(certs["scada"], m.tls.pki.cert_path, tmp_path))
    try:
        assert secure.sock.version() in ("TLSv1.2", "TLSv1.3")
        words = secure.read(1, e.binding.address, e.binding.width)
        assert words == plain.read(1, e.binding.address, e.binding.width)
        assert _float(words) == 350.25
        assert secure(struct.pack(">BHH", 0x06, e.binding.address, 7)) == bytes([0x86, 0x01])  # write: 01
        assert secure(struct.pack(">BHH", 0x04, e.binding.address, 2), unit=9) == bytes([0x84, 0x0B])  # no unit 9
        # A request pymodbus's decoder refuses (quantity 0) never reaches the mirror's handler: pymodbus
        # answers it itself, function 0x80 exception 01 (the plain mirror answers 0x84 03; docs/security.md)
        assert secure(struct.pack(">BHH", 0x04, 0, 0)) == bytes([0x80, 0x01])
        assert secure.read(1, e.binding.address, e.binding.width) == words  # and the connection serves on
    finally:
        plain.close()
        secure.close()


@pytest.mark.parametrize("who", ["rogue", None])
def test_a_client_without_a_trusted_certificate_is_refused_in_the_handshake(served, tmp_path: Path,
                                                                            who: str | None) -> None:
    m, certs = served
    ctx = client_context(certs[who] if who else None, m.tls.pki.cert_path, tmp_path)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        raw = raw_tls(m.tls.port, ctx)
        try:
            raw.read(1, ENTRIES["c_B"].binding.address, 2)  # TLS 1.3: the refusal arrives with the first read
        finally:
            raw.close()
    with ModbusTlsClient("127.0.0.1", port=m.tls.port, sslctx=client_context(
            certs[who] if who else None, m.tls.pki.cert_path, tmp_path, check_hostname=False), timeout=2,
            retries=0) as client:
        rr = None
        try:
            rr = client.read_input_registers(ENTRIES["c_B"].binding.address, count=2, device_id=1)
        except Exception:  # noqa: BLE001 -- pymodbus raises ModbusIOException/ConnectionException here
            rr = None
        assert rr is None or rr.isError()


def test_a_certificate_revoked_while_running_is_refused_at_its_next_connection(served, tmp_path: Path) -> None:
    m, certs = served
    ctx = client_context(certs["old-hmi"], m.tls.pki.cert_path, tmp_path)
    raw = raw_tls(m.tls.port, ctx)
    assert _float(raw.read(1, ENTRIES["c_B"].binding.address, 2)) == 612.5
    raw.close()
    TrustList(m.tls.pki).revoke(thumbprint(load_certificate_file(certs["old-hmi"].cert)))
    refused_before = m.tls.refused
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        raw = raw_tls(m.tls.port, ctx)
        try:
            raw.read(1, ENTRIES["c_B"].binding.address, 2)
        finally:
            raw.close()
    assert m.tls.refused == refused_before + 1


def test_the_server_presents_the_instance_certificate(served, tmp_path: Path) -> None:
    m, certs = served
    raw = raw_tls(m.tls.port, client_context(certs["scada"], m.tls.pki.cert_path, tmp_path))
    try:
        presented = x509.load_der_x509_certificate(raw.sock.getpeercert(binary_form=True))
    finally:
        raw.close()
    assert thumbprint(presented) == thumbprint(load_certificate_file(m.tls.pki.cert_path))


def test_tls_port_is_checked_without_io() -> None:
    from twin_core.errors import ParameterError

    with pytest.raises(ParameterError, match="mirror_tls_port"):
        TlsMirror(None, "127.0.0.1", 70000, pki=Pki("unused"), application_uri=APP_URI)  # type: ignore[arg-type]


def test_the_runtime_configuration_turns_the_tls_mirror_on(tmp_path: Path) -> None:
    from gateways.config import config_from_mapping
    from gateways.modbus_mirror import ModbusMirror, tls_mirror_from_config

    mirror = ModbusMirror("127.0.0.1", 0, ("R1",))
    assert tls_mirror_from_config(mirror, config_from_mapping({"data_dir": str(tmp_path)})) is None  # off by default
    tls = tls_mirror_from_config(mirror, config_from_mapping({"data_dir": str(tmp_path), "plant": "P7",
                                                              "mirror_tls_port": 802}))
    assert tls is not None and (tls.port, tls.host, tls.application_uri) == (802, "127.0.0.1", "urn:batch-reactor-twin:P7")
    assert tls.pki.root == tmp_path / "pki"
