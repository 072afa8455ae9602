"""A Modbus TCP client without pymodbus: MBAP frames built and parsed by hand (no tests here).

The plant's and the mirror's tests read the same registers through it as through pymodbus, so a
framing mistake shared by pymodbus and our server could not hide."""

from __future__ import annotations

import socket
import struct


def adu(tid: int, pdu: bytes, unit: int = 1) -> bytes:
    """One request frame: MBAP header (transaction id, protocol 0, length, unit id) + PDU."""
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def recv_adu(sock: socket.socket) -> tuple[int, int, bytes]:
    """(transaction id, unit id, response PDU)."""
    tid, pid, length, unit = struct.unpack(">HHHB", recv_exact(sock, 7))
    assert pid == 0
    return tid, unit, recv_exact(sock, length - 1)


class Raw:
    """A raw Modbus TCP connection: one request, one response. ``raw(pdu)`` asks unit 1."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tid = 0

    def request(self, pdu: bytes, unit: int = 1) -> bytes:
        self.tid = (self.tid + 1) & 0xFFFF
        self.sock.sendall(adu(self.tid, pdu, unit))
        tid, u, resp = recv_adu(self.sock)
        assert (tid, u) == (self.tid, unit)
        return resp

    __call__ = request

    def read(self, unit: int, address: int, count: int, fc: int = 4) -> list[int]:
        """Registers address..address+count-1 of ``unit`` (FC4 input, FC3 holding)."""
        resp = self.request(struct.pack(">BHH", fc, address, count), unit)
        assert resp[0] == fc, f"exception {resp.hex()}"
        assert resp[1] == 2 * count
        return list(struct.unpack(f">{count}H", resp[2:]))

    def close(self) -> None:
        self.sock.close()
