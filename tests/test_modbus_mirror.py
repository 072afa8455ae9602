"""The read-only Modbus mirror of the twin: a real server on a free loopback port, read by pymodbus
and by a raw-socket client that builds MBAP frames by hand (no pymodbus on that side).

Values published through the Publisher protocol read back exactly (float32 ABCD, uint16, uint32,
scaled INT16); values that are not GOOD read as NaN / 0x8000; writes and other function codes are
refused with exception 01 and change nothing; an unknown unit id answers 0x0B; pipelined requests
are all answered in order; several reactors on several unit ids; the committed CSV is the generated
one.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import ROOT, free_port, wait_for_port
from modbus_raw import Raw, adu, recv_adu
from pymodbus.client import ModbusTcpClient

from gateways.modbus_mirror import ModbusMirror
from gateways.model import EventKind, TwinEvent, Value
from twin_core.errors import ParameterError
from twin_core.signals.runtime import MIRROR_MAP, Quality
from twin_core.signals.text import mirror_map_csv

REACTORS = ("R1", "R2", "R3")
ENTRIES = {e.name: e for e in MIRROR_MAP}
IMAGE_END = max(e.binding.address + e.binding.width for e in MIRROR_MAP)


# -- the server in a thread of its own, fed through the Publisher protocol -------------------------------
class MirrorThread:
    """A ModbusMirror on its own event loop in a background thread; ``publish`` runs on that loop."""

    def __init__(self, reactors: Sequence[str], port: int = 0, **kwargs: Any) -> None:
        self.mirror = ModbusMirror("127.0.0.1", port, reactors, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            async with self.mirror:
                self._ready.set()
                await self._stop.wait()

        try:
            self._loop.run_until_complete(main())
        finally:
            self._ready.set()

    def __enter__(self) -> MirrorThread:
        self._thread.start()
        assert self._ready.wait(20.0)
        wait_for_port(self.mirror.port)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20.0)
        self._loop.close()

    def publish(self, reactor: str, values: dict[str, float], quality: Quality = Quality.GOOD) -> None:
        snapshot = {k: Value(v, quality) for k, v in values.items()}
        asyncio.run_coroutine_threadsafe(self.mirror.publish(reactor, snapshot), self._loop).result(10.0)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10.0)


@pytest.fixture(scope="module")
def mirror() -> Iterator[MirrorThread]:
    with MirrorThread(REACTORS, port=free_port()) as m:
        yield m


# -- a Modbus TCP client without pymodbus: tests/modbus_raw.py ---------------------------------------


@pytest.fixture()
def raw(mirror: MirrorThread) -> Iterator[Raw]:
    c = Raw(mirror.mirror.port)
    yield c
    c.close()


def image(raw: Raw, unit: int) -> list[int]:
    """Every mapped register of a unit (three blocks), as raw words."""
    blocks = sorted({e.binding.address // 100 for e in MIRROR_MAP})
    words: list[int] = []
    for b in blocks:
        lo = min(e.binding.address for e in MIRROR_MAP if e.binding.address // 100 == b)
        hi = max(e.binding.address + e.binding.width for e in MIRROR_MAP if e.binding.address // 100 == b)
        if b == 1:  # status words 100.. and counters 120..: two runs
            words += raw.read(unit, 100, 5) + raw.read(unit, 120, 10)
        else:
            words += raw.read(unit, lo, hi - lo)
    return words


def f32(x: float) -> float:
    """x rounded to float32, as the register pair carries it."""
    return struct.unpack(">f", struct.pack(">f", x))[0]


VALUES = {
    "c_A": 123.456, "c_B": 1234.0, "c_C": 56.0, "T": 323.15, "c_A_std": 1.5, "c_B_std": 12.25, "c_C_std": 0.1,
    "T_std": 0.2, "yield_B": 0.61, "t_stop_opt": 18000.0, "yield_B_forecast": 0.8123, "impurity_forecast": 0.05,
    "time_to_stop": 3600.0, "last_scan_plant_time": 12345.5, "model_health": 1, "correction_in_domain": 1,
    "plc_link": 1, "twin_mode": 1, "estimate_quality": 0, "batch_id": 70001, "twin_scans": 2 ** 32 - 1,
    "plc_restarts": 2, "link_losses": 65536, "lab_results_used": 3,
}
INT16 = {"c_B_mol_per_L_x1000": 1234, "T_degC_x10": 500, "c_C_mol_per_L_x1000": 56,
         "yield_B_forecast_pct_x10": 812, "t_stop_opt_h_x100": 500}
"""The INT16 views of VALUES, worked out by hand (e.g. 323.15 K = 50.0 degC -> 500; 18000 s = 5 h -> 500)."""


def words_of(words: list[int], name: str) -> list[int]:
    """The words of entry ``name`` out of image()'s concatenation."""
    order = [(e.binding.address, e) for e in MIRROR_MAP]
    i = 0
    for _, e in sorted(order, key=lambda t: t[0]):
        if e.name == name:
            return words[i:i + e.binding.width]
        i += e.binding.width
    raise KeyError(name)


# -- the map ----------------------------------------------------------------------------------------------
def test_committed_mirror_map_csv_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "modbus_register_map_twin.csv").read_text(encoding="utf-8")
    assert committed == mirror_map_csv(), ("regenerate: python -c \"from twin_core.signals.text import "
                                           "mirror_map_csv; print(mirror_map_csv(), end='')\" > "
                                           "docs/modbus_register_map_twin.csv")


def test_map_is_input_registers_only_with_the_documented_blocks() -> None:
    for e in MIRROR_MAP:
        assert e.binding.table == "input" and e.access == "R"
        enc, a = e.binding.encoding, e.binding.address
        assert (enc == "float32" and a < 100) or (enc == "uint16" and 100 <= a < 120) \
            or (enc == "uint32" and 120 <= a < 200) or (enc == "int16" and 200 <= a < 300), e.name


# -- values read back exactly --------------------------------------------------------------------------------
def test_published_values_read_back_exactly_by_raw_frames(mirror: MirrorThread, raw: Raw) -> None:
    mirror.publish("R1", VALUES)
    words = image(raw, 1)
    for e in MIRROR_MAP:
        w = words_of(words, e.name)
        if e.binding.encoding == "float32":
            assert struct.unpack(">f", struct.pack(">HH", *w))[0] == f32(VALUES[e.name]), e.name
        elif e.binding.encoding == "uint16":
            assert w == [VALUES[e.name]], e.name
        elif e.binding.encoding == "uint32":
            assert w == [VALUES[e.name] >> 16, VALUES[e.name] & 0xFFFF], e.name
        else:
            assert struct.unpack(">h", struct.pack(">H", w[0]))[0] == INT16[e.name], e.name
    assert set(INT16) == {e.name for e in MIRROR_MAP if e.binding.encoding == "int16"}
    # 1.0 is 0x3F80 0x0000 on the wire: high word first, big-endian bytes (ABCD)
    mirror.publish("R1", {**VALUES, "yield_B": 1.0})
    assert raw.read(1, ENTRIES["yield_B"].binding.address, 2) == [0x3F80, 0x0000]


def test_published_values_read_back_exactly_by_pymodbus(mirror: MirrorThread) -> None:
    mirror.publish("R2", VALUES)
    client = ModbusTcpClient("127.0.0.1", port=mirror.mirror.port, timeout=5)
    assert client.connect()
    try:
        dt = ModbusTcpClient.DATATYPE
        for e in MIRROR_MAP:
            rr = client.read_input_registers(e.binding.address, count=e.binding.width, device_id=2)
            assert not rr.isError(), e.name
            enc = e.binding.encoding
            if enc == "float32":
                v = client.convert_from_registers(rr.registers, dt.FLOAT32, word_order="big")
                assert v == f32(VALUES[e.name]), e.name
            elif enc == "uint16":
                assert client.convert_from_registers(rr.registers, dt.UINT16) == VALUES[e.name], e.name
            elif enc == "uint32":
                v = client.convert_from_registers(rr.registers, dt.UINT32, word_order="big")
                assert v == VALUES[e.name], e.name
            else:
                assert client.convert_from_registers(rr.registers, dt.INT16) == INT16[e.name], e.name
                assert e.binding.decode(rr.registers) == pytest.approx(VALUES[e.signal.name], abs=1 / e.binding.scale)
        # FC3 reads the same image
        rr3 = client.read_holding_registers(0, count=28, device_id=2)
        rr4 = client.read_input_registers(0, count=28, device_id=2)
        assert rr3.registers == rr4.registers
    finally:
        client.close()


def test_negative_int16_and_saturation(mirror: MirrorThread, raw: Raw) -> None:
    mirror.publish("R3", {**VALUES, "T": 263.15, "t_stop_opt": 9e6})  # -10.0 degC; 2500 h is beyond INT16
    assert raw.read(3, ENTRIES["T_degC_x10"].binding.address, 1) == [(-100) & 0xFFFF]
    assert raw.read(3, ENTRIES["t_stop_opt_h_x100"].binding.address, 1) == [0x7FFF]


@pytest.mark.parametrize("quality", [Quality.UNCERTAIN_LAST_USABLE, Quality.BAD_COMMUNICATION, Quality.BAD_WAITING])
def test_values_not_good_read_as_nan_and_no_value(mirror: MirrorThread, raw: Raw, quality: Quality) -> None:
    mirror.publish("R1", VALUES)
    mirror.publish("R1", VALUES, quality)
    words = image(raw, 1)
    for e in MIRROR_MAP:
        w = words_of(words, e.name)
        if e.binding.encoding == "float32":
            assert math.isnan(struct.unpack(">f", struct.pack(">HH", *w))[0]), e.name
        elif e.binding.encoding == "int16":
            assert w == [0x8000], e.name
        else:  # integer words have no "no value": the last value stays, the quality words tell
            assert e.binding.decode(w) == VALUES[e.name], e.name
    mirror.publish("R1", VALUES)  # GOOD again: values again
    assert words_of(image(raw, 1), "T_degC_x10") == [500]


def test_a_nan_value_and_a_missing_one_read_as_no_value(mirror: MirrorThread, raw: Raw) -> None:
    values = {k: v for k, v in VALUES.items() if k != "c_C"}
    mirror.publish("R2", {**values, "c_B": math.nan})
    words = image(raw, 2)
    for name in ("c_B", "c_C"):
        assert math.isnan(struct.unpack(">f", struct.pack(">HH", *words_of(words, name)))[0])
    assert words_of(words, "c_B_mol_per_L_x1000") == [0x8000] and words_of(words, "c_C_mol_per_L_x1000") == [0x8000]


def test_several_reactors_on_their_own_unit_ids(mirror: MirrorThread, raw: Raw) -> None:
    for i, r in enumerate(REACTORS):
        mirror.publish(r, {**VALUES, "c_B": 1000.0 + i, "batch_id": 10 + i})
    for i in range(len(REACTORS)):
        words = image(raw, i + 1)
        assert struct.unpack(">f", struct.pack(">HH", *words_of(words, "c_B")))[0] == 1000.0 + i
        assert words_of(words, "batch_id") == [0, 10 + i]
    assert mirror.mirror.unit_ids == {"R1": 1, "R2": 2, "R3": 3}


def test_before_any_publish_everything_reads_as_no_value() -> None:
    with MirrorThread(["only"]) as m:
        c = Raw(m.mirror.port)
        try:
            words = image(c, 1)
        finally:
            c.close()
    for e in MIRROR_MAP:
        w = words_of(words, e.name)
        if e.binding.encoding == "float32":
            assert math.isnan(struct.unpack(">f", struct.pack(">HH", *w))[0])
        else:
            assert w == ([0x8000] if e.binding.encoding == "int16" else [0] * e.binding.width)


# -- refusals -----------------------------------------------------------------------------------------------
REFUSED = [
    # (what, unit, pdu, exception code)
    ("FC6 write single register", 1, struct.pack(">BHH", 6, 100, 1), 0x01),
    ("FC16 write multiple registers", 1, struct.pack(">BHHB2H", 16, 0, 2, 4, 0x3F80, 0), 0x01),
    ("FC5 write single coil", 1, struct.pack(">BHH", 5, 0, 0xFF00), 0x01),
    ("FC15 write multiple coils", 1, struct.pack(">BHHBB", 15, 0, 1, 1, 1), 0x01),
    ("FC23 read/write registers", 1, struct.pack(">BHHHHB2H", 0x17, 0, 1, 0, 1, 2, 1, 0), 0x01),
    ("FC22 mask write", 1, struct.pack(">BHHH", 0x16, 0, 0xFFFF, 0), 0x01),
    ("FC1 read coils (none)", 1, struct.pack(">BHH", 1, 0, 1), 0x01),
    ("FC2 read discrete inputs (none)", 1, struct.pack(">BHH", 2, 0, 1), 0x01),
    ("FC43 device identification", 1, bytes([0x2B, 0x0E, 0x01, 0x00]), 0x01),
    ("write to an unknown unit", 9, struct.pack(">BHH", 6, 100, 1), 0x0B),
    ("read of an unknown unit", 9, struct.pack(">BHH", 4, 0, 2), 0x0B),
    ("read of unit 0", 0, struct.pack(">BHH", 4, 0, 2), 0x0B),
    ("read in the gap", 1, struct.pack(">BHH", 4, IMAGE_END, 1), 0x02),
    ("read across a gap", 1, struct.pack(">BHH", 4, 26, 4), 0x02),
    ("FC3 in the gap", 1, struct.pack(">BHH", 3, 105, 1), 0x02),
    ("quantity 0", 1, struct.pack(">BHH", 4, 0, 0), 0x03),
    ("quantity 126", 1, struct.pack(">BHH", 4, 0, 126), 0x03),
    ("truncated read", 1, struct.pack(">BH", 4, 0), 0x03),
]


@pytest.mark.parametrize(("what", "unit", "pdu", "code"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_requests_answer_the_exception_and_change_nothing(mirror: MirrorThread, raw: Raw, what: str,
                                                                  unit: int, pdu: bytes, code: int) -> None:
    mirror.publish("R1", VALUES)
    before = [image(raw, u) for u in (1, 2, 3)]
    assert raw.request(pdu, unit) == bytes([pdu[0] | 0x80, code])
    assert [image(raw, u) for u in (1, 2, 3)] == before


def test_pymodbus_writes_are_refused_with_illegal_function(mirror: MirrorThread) -> None:
    client = ModbusTcpClient("127.0.0.1", port=mirror.mirror.port, timeout=5)
    assert client.connect()
    try:
        before = client.read_input_registers(0, count=28, device_id=1).registers
        for rr in (client.write_register(0, 1, device_id=1), client.write_registers(0, [1, 2], device_id=1),
                   client.write_coil(0, True, device_id=1), client.write_coils(0, [True], device_id=1)):
            assert rr.isError() and rr.exception_code == 0x01
        assert client.read_input_registers(0, count=28, device_id=1).registers == before
    finally:
        client.close()


# -- pipelining ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_pipelined_requests_are_all_answered_in_order(mirror: MirrorThread, chunk: int | None) -> None:
    for i, r in enumerate(REACTORS):
        mirror.publish(r, {**VALUES, "c_B": 2000.0 + i})
    c_B = ENTRIES["c_B"].binding.address
    requests = [
        (101, 1, struct.pack(">BHH", 4, c_B, 2)),
        (102, 2, struct.pack(">BHH", 4, c_B, 2)),
        (103, 3, struct.pack(">BHH", 3, c_B, 2)),
        (104, 1, struct.pack(">BHH", 6, 0, 1)),            # a write: refused, in its turn
        (105, 7, struct.pack(">BHH", 4, c_B, 2)),          # unknown unit, in its turn
        (106, 3, struct.pack(">BHH", 4, c_B, 2)),
    ]
    data = b"".join(adu(t, p, u) for t, u, p in requests)
    with socket.create_connection(("127.0.0.1", mirror.mirror.port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if chunk is None:
            s.sendall(data)  # all ADUs in one send
        else:
            for k in range(0, len(data), chunk):
                s.sendall(data[k:k + chunk])
        answers = [recv_adu(s) for _ in requests]
    assert [(t, u) for t, u, _ in answers] == [(t, u) for t, u, _ in requests]

    def value(resp: bytes) -> float:
        assert resp[:2] in (b"\x04\x04", b"\x03\x04")
        return struct.unpack(">f", resp[2:6])[0]

    assert [value(answers[i][2]) for i in (0, 1, 2, 5)] == [2000.0, 2001.0, 2002.0, 2002.0]
    assert answers[3][2] == b"\x86\x01" and answers[4][2] == b"\x84\x0b"


# -- lifecycle and arguments ------------------------------------------------------------------------------------
def test_constructor_does_no_io_and_port_zero_binds_a_free_port() -> None:
    m = ModbusMirror("127.0.0.1", 0, ["a", "b"])
    assert m.port == 0 and m.tcp.connections == 0  # nothing bound yet

    async def main() -> tuple[int, bytes]:
        async with m:
            r, w = await asyncio.open_connection("127.0.0.1", m.port)
            w.write(adu(1, struct.pack(">BHH", 4, 100, 1), 2))
            await w.drain()
            head = await r.readexactly(7)
            body = await r.readexactly(struct.unpack(">HHHB", head)[2] - 1)
            await m.event("a", TwinEvent(EventKind.BATCH_STARTED, "batch 1 started"))  # a no-op
            # stop() closes the client's connection: it reads end of file
            stop = asyncio.ensure_future(m.stop())
            eof = await r.read()
            await stop
            w.close()
            return m.port, body + eof

    port, body = asyncio.run(main())
    assert port > 0 and body == bytes([4, 2, 0, 0])


@pytest.mark.parametrize(("reactors", "field"), [
    ([], "reactors"), (["a", "a"], "reactors"), (["a", ""], "reactors"), ([f"r{i}" for i in range(248)], "reactors"),
    ([3], "reactors"),
])
def test_bad_reactor_lists_are_refused(reactors: list[object], field: str) -> None:
    with pytest.raises(ParameterError) as e:
        ModbusMirror("127.0.0.1", 0, reactors)  # type: ignore[arg-type]
    assert e.value.field == field


@pytest.mark.parametrize("port", [-1, 65536, 1.5, True, "5021"])
def test_bad_ports_are_refused(port: object) -> None:
    with pytest.raises(ParameterError) as e:
        ModbusMirror("127.0.0.1", port, ["a"])  # type: ignore[arg-type]
    assert e.value.field == "port"


def test_publish_for_an_unknown_reactor_is_an_error(mirror: MirrorThread) -> None:
    with pytest.raises(KeyError, match="R9"):
        mirror.call(mirror.mirror.publish("R9", {}))


def test_a_port_in_use_is_an_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        m = ModbusMirror("127.0.0.1", s.getsockname()[1], ["a"])
        with pytest.raises(OSError):
            asyncio.run(m.start())


# -- where the shared layer lives ---------------------------------------------------------------------------
def _imports(path: Any) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_plant_sim_imports_only_the_generic_modbus_layer_of_gateways() -> None:
    """plant_sim may import gateways.modbus_tcp (framing, connections, register image) and nothing else
    of gateways; that layer imports no plant and no other gateway module (docs/layout.md)."""
    for path in sorted((ROOT / "plant_sim").glob("*.py")):
        used = {m for m in _imports(path) if m == "gateways" or m.startswith("gateways.")}
        assert used <= {"gateways.modbus_tcp"}, (path.name, used)
    layer = _imports(ROOT / "gateways" / "modbus_tcp.py")
    assert not {m for m in layer if m.split(".")[0] in ("plant_sim", "gateways", "fmu", "ml_onnx")}, layer
