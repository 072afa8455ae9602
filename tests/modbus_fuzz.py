"""A Modbus/TCP fuzzer (no tests here): malformed frames of every kind, with what a correct server does
with each, and a driver that sends them over one raw socket, reconnecting where the server must close.

Used by tests/test_fuzz_modbus.py (bounded) and benchmarks/bench_load.py (10,000 frames). The frames
are seeded, so a failure names a reproducible frame.

Kinds (``FRAME_KINDS``) and the expected reaction:
- ``unknown_function``: a valid header, a function code the server does not implement -> exception 01;
- ``short_pdu`` / ``long_pdu``: a read request with too few / too many data bytes -> exception 03;
- ``bad_count``: a read of 0 or more than 125 registers -> exception 03;
- ``unmapped``: a read of an address outside the map -> exception 02;
- ``write``: a write function (the mirror is read-only: exception 01; the PLC may answer or refuse);
- ``length_too_big`` / ``length_too_small`` / ``bad_protocol``: an MBAP header that cannot be framed
  -> the server closes the connection (the stream cannot be re-synchronised);
- ``truncated_header`` / ``truncated_pdu``: the client sends part of a frame and closes;
- ``garbage``: random bytes, then end of our stream -> the server answers what it could frame and
  closes, never hangs.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

from modbus_raw import recv_exact

MBAP = struct.Struct(">HHHB")
FRAME_KINDS = ("unknown_function", "short_pdu", "long_pdu", "bad_count", "unmapped", "write", "length_too_big",
               "length_too_small", "bad_protocol", "truncated_header", "truncated_pdu", "garbage")
IMPLEMENTED = {0x01, 0x03, 0x04, 0x05, 0x06, 0x0F, 0x10}


@dataclass(frozen=True)
class Frame:
    kind: str
    data: bytes
    expect: str        # "exception" (an exception response), "close" (the server closes), "abort" (we close),
    #                    "drain" (we end our side; the server answers what it framed, then closes),
    #                    "answer" (a response, normal or exception)
    code: int = 0      # the expected exception code (0: any)


def _adu(tid: int, pdu: bytes, unit: int = 1, pid: int = 0, length: int | None = None) -> bytes:
    return MBAP.pack(tid, pid, len(pdu) + 1 if length is None else length, unit) + pdu


def frames(n: int, seed: int = 0, *, unmapped_address: int = 9000, read_only: bool = True) -> list[Frame]:
    """``n`` malformed frames, the kinds in turn, their contents random (seeded)."""
    rng = random.Random(seed)
    out: list[Frame] = []
    for i in range(n):
        kind = FRAME_KINDS[i % len(FRAME_KINDS)]
        tid = rng.randrange(0x10000)
        if kind == "unknown_function":
            fc = rng.choice([c for c in range(1, 0x80) if c not in IMPLEMENTED])
            out.append(Frame(kind, _adu(tid, bytes([fc]) + rng.randbytes(rng.randrange(0, 8))), "exception", 1))
        elif kind == "short_pdu":
            out.append(Frame(kind, _adu(tid, bytes([rng.choice((3, 4))]) + rng.randbytes(rng.randrange(0, 4))),
                             "exception", 3))
        elif kind == "long_pdu":
            out.append(Frame(kind, _adu(tid, bytes([rng.choice((3, 4))]) + struct.pack(">HH", 0, 2)
                                        + rng.randbytes(rng.randrange(1, 20))), "exception", 3))
        elif kind == "bad_count":
            count = rng.choice((0, 126, 0xFFFF, rng.randrange(126, 0x10000)))
            out.append(Frame(kind, _adu(tid, struct.pack(">BHH", rng.choice((3, 4)), 0, count)), "exception", 3))
        elif kind == "unmapped":
            out.append(Frame(kind, _adu(tid, struct.pack(">BHH", 4, unmapped_address + rng.randrange(100), 2)),
                             "exception", 2))
        elif kind == "write":
            pdu = rng.choice((struct.pack(">BHH", 6, rng.randrange(200), rng.randrange(0x10000)),
                              struct.pack(">BHH", 5, rng.randrange(50), 0xFF00),
                              struct.pack(">BHHBH", 0x10, 300, 1, 2, rng.randrange(0x10000))))
            out.append(Frame(kind, _adu(tid, pdu), "exception" if read_only else "answer", 1 if read_only else 0))
        elif kind == "length_too_big":
            out.append(Frame(kind, _adu(tid, b"\x04\x00\x00\x00\x02", length=rng.choice((255, 300, 0xFFFF))),
                             "close"))
        elif kind == "length_too_small":
            out.append(Frame(kind, _adu(tid, b"", length=rng.choice((0, 1))), "close"))
        elif kind == "bad_protocol":
            out.append(Frame(kind, _adu(tid, b"\x04\x00\x00\x00\x02", pid=rng.randrange(1, 0x10000)), "close"))
        elif kind == "truncated_header":
            out.append(Frame(kind, _adu(tid, b"\x04\x00\x00\x00\x02")[: rng.randrange(1, 7)], "abort"))
        elif kind == "truncated_pdu":
            out.append(Frame(kind, _adu(tid, b"\x04\x00\x00\x00\x02")[: rng.randrange(8, 12)], "abort"))
        else:
            out.append(Frame(kind, rng.randbytes(rng.randrange(1, 64)), "drain"))
    return out


@dataclass
class FuzzResult:
    sent: int = 0
    reactions: Counter = field(default_factory=Counter)   # (kind, what happened) -> count
    wrong: list[str] = field(default_factory=list)        # frames the server answered wrongly (first 20)

    def note(self, frame: Frame, what: str, ok: bool) -> None:
        self.reactions[(frame.kind, what)] += 1
        if not ok and len(self.wrong) < 20:
            self.wrong.append(f"{frame.kind} {frame.data.hex()}: {what}")


class Fuzzer:
    """Sends frames to ``port`` over one raw socket, checks each reaction, reconnects after a close."""

    def __init__(self, port: int, timeout_s: float = 5.0) -> None:
        self.port, self.timeout_s = port, timeout_s
        self.sock: socket.socket | None = None
        self.result = FuzzResult()

    def _conn(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout_s)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _closed_by_server(self, sock: socket.socket) -> bool:
        try:
            return sock.recv(1024) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def send(self, frame: Frame) -> None:
        sock = self._conn()
        self.result.sent += 1
        try:
            sock.sendall(frame.data)
        except (BrokenPipeError, ConnectionResetError):  # closed by the server after the previous frame
            self._drop()
            sock = self._conn()
            sock.sendall(frame.data)
        if frame.expect == "abort":
            self._drop()
            self.result.note(frame, "aborted by us", True)
            return
        if frame.expect == "drain":
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(4096):
                    pass
                what, ok = "closed after end of stream", True
            except ConnectionResetError:
                what, ok = "reset after end of stream", True
            except TimeoutError:
                what, ok = "hung after end of stream", False
            self._drop()
            self.result.note(frame, what, ok)
            return
        if frame.expect == "close":
            closed = self._closed_by_server(sock)
            self._drop()
            self.result.note(frame, "closed" if closed else "kept open", closed)
            return
        try:
            tid, pid, length, _unit = MBAP.unpack(recv_exact(sock, 7))
            pdu = recv_exact(sock, length - 1)
        except (ConnectionError, TimeoutError) as exc:
            self._drop()
            self.result.note(frame, f"no answer ({type(exc).__name__})", False)
            return
        req_tid = MBAP.unpack(frame.data[:7])[0]
        if frame.expect == "answer":
            self.result.note(frame, "answered", tid == req_tid and pid == 0)
            return
        ok = tid == req_tid and pid == 0 and len(pdu) == 2 and pdu[0] == (frame.data[7] | 0x80) and \
            (frame.code == 0 or pdu[1] == frame.code)
        self.result.note(frame, f"exception {pdu[1] if len(pdu) > 1 else '?'}", ok)

    def close(self) -> None:
        self._drop()
