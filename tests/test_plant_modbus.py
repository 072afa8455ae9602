"""The simulated PLC over Modbus TCP: real servers on free loopback ports, the real plant_sim.plc.Plc.

A batch driven end to end by a pymodbus client; the interlock and latched alarms; a table of bad
requests answered with the right exception code and nothing changed; pipelined requests; clean
shutdown. The PLC scans 1 s of plant time here (the interface is under test, not the physics), so a
whole batch is ~10 000 scans.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import ROOT, free_port, wait_for_port
from modbus_raw import Raw, adu, recv_adu
from pymodbus.client import ModbusTcpClient

from plant_sim.config import PlantConfig, PlcTiming
from plant_sim.modbus_server import PlcModbusServer, PlcServerThread, serve
from plant_sim.plc import Plc
from twin_core.clock import Clock, PlantClock
from twin_core.signals.plc import PLC_REGISTER_MAP, RECIPE_MAX_POINTS, Alarm, Phase, register_entry

SCAN_S = 1.0
DEADLINE_S = 60.0
POLL_PLANT_S = 1.0
"""Plant seconds between two polls of wait_until (0.33 ms of wall time at BATCH_SPEED)."""
"""Upper bound for waiting on plant progress (a hang guard, never asserted on)."""


def make_plc(seed: int = 7) -> Plc:
    return Plc(PlantConfig(plc=PlcTiming(scan_s=SCAN_S)), seed=seed)


# -- raw Modbus TCP: tests/modbus_raw.py -------------------------------------------------------------
def read_pdu(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


def write_regs_pdu(address: int, words: list[int], byte_count: int | None = None) -> bytes:
    n = len(words)
    return struct.pack(f">BHHB{n}H", 0x10, address, n, 2 * n if byte_count is None else byte_count, *words)


def write_coils_pdu(address: int, bits: list[int]) -> bytes:
    packed = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        packed[i // 8] |= b << (i % 8)
    return struct.pack(">BHHB", 0x0F, address, len(bits), len(packed)) + bytes(packed)


def f32(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def as_f32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


def _runs(table: str) -> list[tuple[int, int]]:
    """Contiguous mapped (address, count) runs of a table."""
    addrs = sorted(a for e in PLC_REGISTER_MAP if e.binding.table == table for a in e.addresses)
    runs: list[tuple[int, int]] = []
    for a in addrs:
        if runs and runs[-1][0] + runs[-1][1] == a:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((a, 1))
    return runs


FC_OF_TABLE = {"coil": 1, "input": 4, "holding": 3}


def image(raw: Raw) -> dict[str, bytes]:
    """Every mapped register and coil, as the raw response PDUs."""
    return {f"{t}@{a}": raw(read_pdu(FC_OF_TABLE[t], a, n)) for t in FC_OF_TABLE for a, n in _runs(t)}


def same_snapshot(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(repr(a[k]) == repr(b[k]) for k in a)  # NaN == NaN here


# -- pymodbus client helpers -------------------------------------------------------------------
def read_value(client: ModbusTcpClient, name: str) -> float:
    e = register_entry(name)
    b = e.binding
    if b.table == "coil":
        r = client.read_coils(b.address, count=1)
        assert not r.isError(), r
        return float(r.bits[0])
    fn = client.read_input_registers if b.table == "input" else client.read_holding_registers
    r = fn(b.address, count=b.width)
    assert not r.isError(), r
    return b.decode(r.registers)


def phase(client: ModbusTcpClient) -> Phase:
    return Phase(int(read_value(client, "phase")))


def command(client: ModbusTcpClient, name: str) -> None:
    r = client.write_coil(register_entry(f"cmd_{name}").binding.address, True)
    assert not r.isError(), (name, r)


def recipe_words(times: list[float], temps: list[float], end_s: float, sample_s: float) -> tuple[int, list[int]]:
    """(start address, registers) of one FC16 request downloading a whole recipe."""
    n = len(times)
    values = {"recipe_n_points": n, "recipe_mode": 0, "recipe_end_time": end_s, "recipe_sample_interval": sample_s}
    for i in range(RECIPE_MAX_POINTS):
        values[f"recipe_time_{i}"] = times[min(i, n - 1)]
        values[f"recipe_T_{i}"] = temps[min(i, n - 1)]
    entries = sorted((register_entry(k) for k in values), key=lambda e: e.binding.address)
    start = entries[0].binding.address
    words: list[int] = []
    for e in entries:
        assert e.binding.address == start + len(words)  # contiguous
        words += e.binding.encode(values[e.name])
    return start, words


def wait_until(client: ModbusTcpClient, predicate: Callable[[ModbusTcpClient], bool], what: str,
               clock: Clock | None = None) -> None:
    """Poll over Modbus until predicate(client) holds (plant progress, not a readiness sleep); with the
    server's plant clock, one poll per POLL_PLANT_S of plant time instead of back to back."""
    deadline = time.monotonic() + DEADLINE_S
    while not predicate(client):
        if time.monotonic() > deadline:
            raise TimeoutError(f"PLC never reached: {what}")
        if clock is not None:
            clock.wait_until(clock.now() + POLL_PLANT_S)


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paused() -> Iterator[tuple[PlcServerThread, Plc]]:
    """A PLC served with its scan loop paused (speed 0): the image changes only by requests."""
    plc = make_plc()
    with PlcServerThread(plc, port=free_port(), speed=0) as srv:
        wait_for_port(srv.port)
        yield srv, plc


@pytest.fixture()
def raw(paused) -> Iterator[Raw]:
    r = Raw(paused[0].port)
    yield r
    r.close()


# -- a whole batch -------------------------------------------------------------------------------------
BATCH_SPEED = 3000.0
"""Plant seconds per wall second for the whole-batch test: a batch in a few seconds, while polling
over Modbus still sees every phase (Charging lasts 0.2 s of wall time, the others ~1 s)."""


@pytest.mark.slow
def test_whole_batch_over_modbus() -> None:
    plc = make_plc(seed=11)
    with PlcServerThread(plc, port=free_port(), speed=BATCH_SPEED) as srv, \
            ModbusTcpClient("127.0.0.1", port=srv.port, timeout=10) as client:
        assert phase(client) == Phase.IDLE
        assert read_value(client, "batch_id") == 0

        # download the recipe in one atomic FC16 request and read it back
        start, words = recipe_words([0.0, 900.0], [343.15, 343.15], 7200.0, 1200.0)
        assert not client.write_registers(start, words).isError()
        back = client.read_holding_registers(start, count=len(words))
        assert back.registers == words
        assert read_value(client, "recipe_end_time") == 7200.0
        assert read_value(client, "recipe_T_1") == as_f32(343.15)
        assert srv.call(lambda: plc.snapshot()["recipe_end_time"]) == 7200.0

        # Start then Hold at once: the batch clock freezes while plant time goes on
        command(client, "start")
        assert phase(client) == Phase.CHARGING
        command(client, "hold")
        assert phase(client) == Phase.HELD
        assert read_value(client, "batch_id") == 1
        assert read_value(client, "cmd_start") == 0.0  # command coils read back 0
        held_bt = read_value(client, "batch_time")
        t_held = read_value(client, "plant_time")
        wait_until(client, lambda c: read_value(c, "plant_time") > t_held + 300, "300 s of plant time while held",
                   srv.server.clock)
        assert read_value(client, "batch_time") == held_bt
        assert phase(client) == Phase.HELD
        # the documented path to change the recipe mid-batch: Hold, write, Resume
        assert not client.write_registers(register_entry("recipe_sample_interval").binding.address,
                                          f32(1800.0)).isError()
        command(client, "resume")
        assert phase(client) in (Phase.CHARGING, Phase.HEATING)  # back to the phase held, and on
        assert read_value(client, "batch_time") >= held_bt

        seen: list[Phase] = []
        setpoints: set[int] = set()

        def progress(c: ModbusTcpClient) -> bool:
            p = phase(c)
            if not seen or seen[-1] != p:
                seen.append(p)
            if p == Phase.REACTING:
                r = c.read_input_registers(register_entry("T_jacket_sp_degC_x10").binding.address, count=1)
                if phase(c) == Phase.REACTING:  # phases only move on: the setpoint was read in Reacting
                    setpoints.add(r.registers[0])
            return p == Phase.COMPLETE

        wait_until(client, progress, "Complete", srv.server.clock)
        order = [Phase.CHARGING, Phase.HEATING, Phase.REACTING, Phase.COOLING, Phase.COMPLETE]
        assert [p for p in order if p in seen] == [p for p in seen if p in order]  # never out of order
        assert {Phase.HEATING, Phase.REACTING, Phase.COOLING, Phase.COMPLETE} <= set(seen)
        assert setpoints == {700}  # 343.15 K = 70.0 degC, as INT16 degC x 10

        # the batch's record: a clock that stopped, lab results, consistent registers
        bt = read_value(client, "batch_time")
        assert bt > 7200.0
        assert read_value(client, "lab_valid") == 1
        assert read_value(client, "lab_seq") >= 2
        assert 0.0 < read_value(client, "lab_c_B") < 5000.0
        assert 0.0 < read_value(client, "lab_sample_time") <= bt
        r = client.read_input_registers(80, count=4)  # plant_time and scan_count in one request
        pt = register_entry("plant_time").binding.decode(r.registers[:2])
        n = register_entry("scan_count").binding.decode(r.registers[2:])
        assert pt == as_f32(n * SCAN_S)  # plant time = n * scan_s, never accumulated
        snap = srv.call(plc.snapshot)
        assert snap["phase"] == Phase.COMPLETE and snap["batch_id"] == 1

        # a second Start is refused until Reset
        r = client.write_coil(register_entry("cmd_start").binding.address, True)
        assert r.isError() and r.exception_code == 3
        command(client, "reset")
        assert phase(client) == Phase.IDLE


def test_scan_loop_runs_on_the_plant_clock() -> None:
    """Scans run only when the clock says they are due: the published plant time never runs ahead of
    server.clock, and it reaches a time the clock was waited for (no wall-clock assertion)."""
    plc = make_plc(seed=3)
    with PlcServerThread(plc, port=free_port(), speed=BATCH_SPEED) as srv, \
            ModbusTcpClient("127.0.0.1", port=srv.port, timeout=10) as client:
        clock = srv.server.clock
        assert isinstance(clock, PlantClock) and clock.speed == BATCH_SPEED
        target = clock.now() + 600.0
        clock.wait_until(target)
        for _ in range(50):
            t_plc = read_value(client, "plant_time")
            assert t_plc <= clock.now() + 1e-3  # float32 rounding of the published value
        wait_until(client, lambda c: read_value(c, "plant_time") >= target - SCAN_S, "the clock's target", clock)
    paused = PlcServerThread(make_plc(), port=0, speed=0.0)
    with paused:
        assert paused.server.clock is None  # paused: no plant clock runs


def test_interlock_trips_on_injected_runaway_and_alarms_latch_until_ack() -> None:
    plc = make_plc(seed=5)
    with PlcServerThread(plc, port=free_port(), speed=BATCH_SPEED) as srv, \
            ModbusTcpClient("127.0.0.1", port=srv.port, timeout=10) as client:
        limits = register_entry("T_trip").binding.address
        assert not client.write_registers(limits, f32(378.15) + f32(368.15)).isError()  # T_trip, T_high_alarm
        assert read_value(client, "T_trip") == as_f32(378.15)
        start, words = recipe_words([0.0], [313.15], 7200.0, 0.0)
        assert not client.write_registers(start, words).isError()
        command(client, "start")
        runaway = register_entry("sim_inject_runaway").binding.address
        assert not client.write_coil(runaway, True).isError()
        hook = read_value(client, "sim_inject_runaway")
        assert hook == 1.0 or phase(client) == Phase.ABORTED  # 0 only if the trip already quenched it

        wait_until(client, lambda c: phase(c) == Phase.ABORTED, "interlock trip", srv.server.clock)
        unacked = Alarm(int(read_value(client, "alarms_unacked")))
        assert Alarm.INTERLOCK_TRIP in unacked and Alarm.HIGH_T in unacked
        assert Alarm.INTERLOCK_TRIP in Alarm(int(read_value(client, "alarms_active")))
        assert read_value(client, "sim_inject_runaway") == 0.0  # the emergency quench stopped it
        assert read_value(client, "pid_output") == -1.0          # full cooling

        # the high-T condition clears as the quench cools the charge, the alarm stays latched
        wait_until(client, lambda c: Alarm.HIGH_T not in Alarm(int(read_value(c, "alarms_active"))),
                   "T_reactor back below T_high_alarm", srv.server.clock)
        assert Alarm.HIGH_T in Alarm(int(read_value(client, "alarms_unacked")))
        command(client, "ack_alarms")
        assert int(read_value(client, "alarms_unacked")) == 0
        assert Alarm.INTERLOCK_TRIP in Alarm(int(read_value(client, "alarms_active")))  # until Reset
        assert phase(client) == Phase.ABORTED

        command(client, "reset")
        assert phase(client) == Phase.IDLE
        wait_until(client, lambda c: Alarm.INTERLOCK_TRIP not in Alarm(int(read_value(c, "alarms_active"))),
                   "trip condition cleared after Reset", srv.server.clock)
        assert srv.call(lambda: plc.phase) == Phase.IDLE


# -- bad requests ----------------------------------------------------------------------------------------
NAN = [0x7FC0, 0x0000]
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3

BAD_REQUESTS = [
    # -- 01: functions the PLC does not implement
    ("FC2 read discrete inputs (the PLC has none)", read_pdu(2, 0, 1), ILLEGAL_FUNCTION),
    ("FC7 read exception status", b"\x07", ILLEGAL_FUNCTION),
    ("FC8 diagnostics echo", b"\x08\x00\x00\x12\x34", ILLEGAL_FUNCTION),
    ("FC0x14 read file record", b"\x14\x07\x06\x00\x04\x00\x01\x00\x02", ILLEGAL_FUNCTION),
    ("FC0x16 mask write register", b"\x16\x00\x00\xff\xff\x00\x00", ILLEGAL_FUNCTION),
    ("FC0x17 read/write multiple", struct.pack(">BHHHHBH", 0x17, 0, 2, 900, 1, 2, 1), ILLEGAL_FUNCTION),
    ("FC0x2B read device identification", b"\x2b\x0e\x01\x00", ILLEGAL_FUNCTION),
    ("FC0x00", b"\x00\x00\x00\x00\x01", ILLEGAL_FUNCTION),
    ("an exception code as function code", b"\x83\x00\x00\x00\x01", ILLEGAL_FUNCTION),
    # -- 02: addresses not mapped, partial overlaps included
    ("read input register gap", read_pdu(4, 8, 2), ILLEGAL_ADDRESS),
    ("read input registers running into a gap", read_pdu(4, 0, 10), ILLEGAL_ADDRESS),
    ("read past the INT16 block", read_pdu(4, 100, 5), ILLEGAL_ADDRESS),
    ("read at the top of the address space", read_pdu(4, 65530, 6), ILLEGAL_ADDRESS),
    ("read holding register gap", read_pdu(3, 4, 1), ILLEGAL_ADDRESS),
    ("read past the recipe block", read_pdu(3, 168, 3), ILLEGAL_ADDRESS),
    ("read coils past the commands", read_pdu(1, 0, 7), ILLEGAL_ADDRESS),
    ("read coils into the simulation block", read_pdu(1, 899, 2), ILLEGAL_ADDRESS),
    ("write holding register in a gap", struct.pack(">BHH", 6, 50, 1), ILLEGAL_ADDRESS),
    ("write an input register's address (phase) with FC6", struct.pack(">BHH", 6, 20, 1), ILLEGAL_ADDRESS),
    ("FC16 half in a gap", write_regs_pdu(0, f32(380.0) + f32(370.0) + [0, 0]), ILLEGAL_ADDRESS),
    ("FC16 into the simulation block's neighbour", write_regs_pdu(899, [0, 0]), ILLEGAL_ADDRESS),
    ("write coil in a gap", struct.pack(">BHH", 5, 6, 0xFF00), ILLEGAL_ADDRESS),
    ("FC15 running past the commands", write_coils_pdu(0, [0] * 7), ILLEGAL_ADDRESS),
    # -- 03: malformed, out of range, NaN, half values, refused by the PLC
    ("read zero registers", read_pdu(3, 0, 0), ILLEGAL_VALUE),
    ("read 126 registers", read_pdu(4, 0, 126), ILLEGAL_VALUE),
    ("read 2001 coils", read_pdu(1, 0, 2001), ILLEGAL_VALUE),
    ("FC3 PDU too short", b"\x03\x00\x00\x00", ILLEGAL_VALUE),
    ("FC3 PDU too long", read_pdu(3, 0, 2) + b"\x00", ILLEGAL_VALUE),
    ("T_trip NaN", write_regs_pdu(0, NAN), ILLEGAL_VALUE),
    ("T_trip +inf", write_regs_pdu(0, [0x7F80, 0]), ILLEGAL_VALUE),
    ("T_trip out of range", write_regs_pdu(0, f32(600.0)), ILLEGAL_VALUE),
    ("T_high_alarm above T_trip (the PLC refuses)", write_regs_pdu(2, f32(470.0)), ILLEGAL_VALUE),
    ("valid T_trip with a bad T_high_alarm: all or nothing", write_regs_pdu(0, f32(400.0) + NAN), ILLEGAL_VALUE),
    ("FC6 on the high word of a float32", struct.pack(">BHH", 6, 0, 0x43C8), ILLEGAL_VALUE),
    ("FC6 on the low word of a float32", struct.pack(">BHH", 6, 1, 0), ILLEGAL_VALUE),
    ("FC16 starting inside a float32", write_regs_pdu(1, [0] + f32(370.0)), ILLEGAL_VALUE),
    ("FC16 ending inside a float32", write_regs_pdu(0, f32(380.0) + [0x43B9]), ILLEGAL_VALUE),
    ("recipe_n_points 0", struct.pack(">BHH", 6, 100, 0), ILLEGAL_VALUE),
    ("recipe_n_points 17", struct.pack(">BHH", 6, 100, 17), ILLEGAL_VALUE),
    ("recipe_mode 1", struct.pack(">BHH", 6, 101, 1), ILLEGAL_VALUE),
    ("recipe_T_0 below 0 degC", write_regs_pdu(108, f32(250.0)), ILLEGAL_VALUE),
    ("recipe_sample_interval 30 s (PLC: 0 or >= 60)", write_regs_pdu(104, f32(30.0)), ILLEGAL_VALUE),
    ("sim_sensor_fault 5", struct.pack(">BHH", 6, 900, 5), ILLEGAL_VALUE),
    ("FC16 byte count inconsistent", write_regs_pdu(0, f32(380.0), byte_count=3), ILLEGAL_VALUE),
    ("FC16 data shorter than its byte count", write_regs_pdu(0, f32(380.0))[:-2], ILLEGAL_VALUE),
    ("FC16 zero registers", struct.pack(">BHHB", 0x10, 0, 0, 0), ILLEGAL_VALUE),
    ("coil value 0x1234", struct.pack(">BHH", 5, 0, 0x1234), ILLEGAL_VALUE),
    ("resume in Idle (the PLC refuses)", struct.pack(">BHH", 5, 2, 0xFF00), ILLEGAL_VALUE),
    ("hold in Idle", struct.pack(">BHH", 5, 1, 0xFF00), ILLEGAL_VALUE),
    ("reset in Idle", struct.pack(">BHH", 5, 4, 0xFF00), ILLEGAL_VALUE),
    ("two commands in one FC15", write_coils_pdu(0, [1, 1, 0, 0, 0, 0]), ILLEGAL_VALUE),
    ("FC15 byte count inconsistent", struct.pack(">BHHBH", 0x0F, 900, 1, 2, 1), ILLEGAL_VALUE),
]


@pytest.mark.parametrize(("what", "pdu", "code"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_answers_exception_and_changes_nothing(paused, raw: Raw, what: str, pdu: bytes,
                                                           code: int) -> None:
    srv, plc = paused
    before, snap_before = image(raw), srv.call(plc.snapshot)
    assert snap_before["phase"] == Phase.IDLE
    resp = raw(pdu)
    assert resp == bytes([(pdu[0] if pdu else 0) | 0x80, code]), what
    assert image(raw) == before
    assert same_snapshot(srv.call(plc.snapshot), snap_before)


def test_good_writes_on_the_paused_plc_take_effect(paused, raw: Raw) -> None:
    """The counterpart of the bad-request table: the same kinds of requests, valid, do change the PLC."""
    srv, plc = paused
    fault = register_entry("sim_sensor_fault").binding.address
    assert raw(struct.pack(">BHH", 6, fault, 2)) == struct.pack(">BHH", 6, fault, 2)
    assert srv.call(lambda: plc.snapshot()["sim_sensor_fault"]) == 2
    assert raw(struct.pack(">BHH", 6, fault, 0)) == struct.pack(">BHH", 6, fault, 0)
    old = srv.call(lambda: plc.snapshot()["T_high_alarm"])
    assert raw(write_regs_pdu(2, f32(370.0))) == struct.pack(">BHH", 0x10, 2, 2)
    assert raw(read_pdu(3, 2, 2)) == bytes([3, 4]) + struct.pack(">HH", *f32(370.0))
    assert srv.call(lambda: plc.snapshot()["T_high_alarm"]) == 370.0
    assert raw(write_regs_pdu(2, f32(old)))[0] == 0x10
    assert raw(write_coils_pdu(0, [0] * 6)) == struct.pack(">BHH", 0x0F, 0, 6)  # zeros: no command
    assert srv.call(lambda: plc.phase) == Phase.IDLE


def test_recipe_and_commands_refused_in_the_wrong_phase(paused, raw: Raw) -> None:
    srv, plc = paused
    client = ModbusTcpClient("127.0.0.1", port=srv.port, timeout=10)
    client.connect()
    try:
        command(client, "start")
        assert phase(client) == Phase.CHARGING
        before, snap_before = image(raw), srv.call(plc.snapshot)
        for pdu in (write_regs_pdu(102, f32(3600.0)), struct.pack(">BHH", 6, 100, 2), write_regs_pdu(0, f32(390.0)),
                    struct.pack(">BHH", 5, 0, 0xFF00), struct.pack(">BHH", 5, 2, 0xFF00)):
            assert raw(pdu) == bytes([pdu[0] | 0x80, ILLEGAL_VALUE]), pdu.hex()
        assert image(raw) == before
        assert same_snapshot(srv.call(plc.snapshot), snap_before)
        # T_high_alarm may be written in any phase
        assert not client.write_registers(2, f32(360.0)).isError()
        assert read_value(client, "T_high_alarm") == 360.0
    finally:
        command(client, "abort")
        command(client, "reset")
        assert phase(client) == Phase.IDLE
        assert not client.write_registers(2, f32(plc.config.alarms.T_high_alarm_K)).isError()
        client.close()


def test_inconsistent_recipe_refuses_start(paused, raw: Raw) -> None:
    srv, plc = paused
    start, good = recipe_words([0.0, 600.0], [313.15, 323.15], 3600.0, 0.0)
    _, bad = recipe_words([0.0, 600.0, 300.0], [313.15, 323.15, 333.15], 3600.0, 0.0)  # times not increasing
    assert raw(write_regs_pdu(start, bad))[0] == 0x10
    assert raw(struct.pack(">BHH", 5, 0, 0xFF00)) == bytes([0x85, ILLEGAL_VALUE])
    assert srv.call(lambda: plc.phase) == Phase.IDLE
    assert raw(write_regs_pdu(start, good))[0] == 0x10


def test_bad_mbap_header_closes_the_connection(paused) -> None:
    with socket.create_connection(("127.0.0.1", paused[0].port), timeout=10) as s:
        s.sendall(struct.pack(">HHHB", 1, 7, 6, 1) + read_pdu(4, 0, 2))  # protocol id 7
        assert s.recv(100) == b""


# -- pipelining ------------------------------------------------------------------------------------------
PIPELINE = [
    (read_pdu(4, 20, 6), 0x04),                            # batch status
    (read_pdu(3, 100, 70), 0x03),                          # the whole recipe block
    (b"\x2b\x0e\x01\x00", 0xAB),                           # unsupported: exception 01, in its place
    (read_pdu(1, 0, 6), 0x01),                             # command coils
    (read_pdu(4, 8, 2), 0x84),                             # gap: exception 02, in its place
]


@pytest.mark.parametrize("chunk", [None, 5, 1], ids=["one sendall", "5-byte chunks", "byte by byte"])
def test_pipelined_requests_are_all_answered_in_order(paused, chunk: int | None) -> None:
    port = paused[0].port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tids = [0x1234 + 17 * i for i in range(len(PIPELINE))]
        stream = b"".join(adu(t, pdu, unit=1 + i) for i, (t, (pdu, _)) in enumerate(zip(tids, PIPELINE, strict=True)))
        if chunk is None:
            s.sendall(stream)
        else:
            for k in range(0, len(stream), chunk):
                s.sendall(stream[k:k + chunk])
        answers = [recv_adu(s) for _ in PIPELINE]
    assert [a[0] for a in answers] == tids
    assert [a[1] for a in answers] == [1 + i for i in range(len(PIPELINE))]  # unit id echoed
    assert [a[2][0] for a in answers] == [fc for _, fc in PIPELINE]
    # each answer is the one a lone request gets
    raw = Raw(port)
    try:
        for (pdu, _), (_, _, resp) in zip(PIPELINE, answers, strict=True):
            assert raw(pdu) == resp
    finally:
        raw.close()


def test_four_connections_at_once(paused) -> None:
    port = paused[0].port
    expected = Raw(port)
    want = expected(read_pdu(3, 0, 4))
    expected.close()
    results: list[bool] = []

    def worker() -> None:
        r = Raw(port)
        try:
            results.append(all(r(read_pdu(3, 0, 4)) == want for _ in range(50)))
        finally:
            r.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 4


# -- lifecycle -------------------------------------------------------------------------------------------
def test_serve_stops_cleanly_on_stop_event() -> None:
    async def scenario() -> tuple[bytes, bool]:
        stop, ready = asyncio.Event(), asyncio.Event()
        port = free_port()
        task = asyncio.create_task(serve(make_plc(), port=port, speed=100.0, stop_event=stop, ready=ready))
        await ready.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(adu(1, read_pdu(4, 80, 4)))
        first = await reader.readexactly(7 + 10)
        stop.set()
        await asyncio.wait_for(task, 10)
        eof = await asyncio.wait_for(reader.read(), 10) == b""  # our connection was closed by the server
        writer.close()
        try:
            await asyncio.open_connection("127.0.0.1", port)
            refused = False
        except OSError:
            refused = True
        return first, eof and refused

    first, closed = asyncio.run(scenario())
    assert first[7:9] == b"\x04\x08"
    assert closed


def test_ctrl_c_shuts_down_without_traceback() -> None:
    port = free_port()
    code = ("import plant_sim.modbus_server as m, plant_sim.plc as p, plant_sim.config as c;"
            f"m.run(p.Plc(c.PlantConfig(plc=c.PlcTiming(scan_s=1.0))), port={port}, speed=10.0)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_port(port)
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=10)
        client.connect()
        assert not client.read_input_registers(0, count=2).isError()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# -- connection cap and idle timeout ------------------------------------------------------------------
def _closed_by_server(sock: socket.socket) -> bool:
    """Block until the server closes ``sock`` (EOF or reset; the socket timeout is the hang guard)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_are_closed_after_the_timeout_and_a_new_client_gets_in() -> None:
    """The cap used to have no idle timeout: that many idle sockets locked every other client out."""
    with PlcServerThread(make_plc(), port=0, speed=0.0, max_connections=2, idle_timeout_s=0.5) as srv:
        idle = [Raw(srv.port), Raw(srv.port)]
        try:
            for r in idle:  # both served (their handlers are registered)
                assert r(read_pdu(4, 80, 2))[0] == 0x04
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as third:
                assert _closed_by_server(third)  # the cap: a third client is turned away
            for r in idle:
                assert _closed_by_server(r.sock)  # idle for the timeout: closed by the server
            late = Raw(srv.port)
            try:
                assert late(read_pdu(4, 80, 2))[0] == 0x04  # the cap is free again
            finally:
                late.close()
            assert srv.call(lambda: (srv.server.tcp.idle_closed, srv.server.tcp.refused_connections)) == (2, 1)
        finally:
            for r in idle:
                r.close()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_connections": 0}, "max_connections"), ({"max_connections": 1.5}, "max_connections"),
    ({"idle_timeout_s": -1.0}, "idle_timeout_s"), ({"idle_timeout_s": math.nan}, "idle_timeout_s"),
    ({"port": 70000}, "port"), ({"port": -1}, "port"),
])
def test_bad_server_options_are_refused_by_name(kwargs: dict, field: str) -> None:
    from twin_core.errors import ParameterError

    with pytest.raises(ParameterError) as e:
        PlcModbusServer(make_plc(), **kwargs)
    assert e.value.field == field


# -- values beyond the map's range ---------------------------------------------------------------------
def test_a_temperature_beyond_the_map_range_is_published_saturated_with_its_alarm_bit() -> None:
    plc = make_plc()
    for _ in range(60):  # the true reactor at 705 K (the runaway): the reading climbs and saturates
        plc.truth.set_state(T=705.0)
        plc.scan()
    with PlcServerThread(plc, port=0, speed=0.0) as srv:
        raw = Raw(srv.port)
        try:
            T = struct.unpack(">f", raw(read_pdu(4, 0, 2))[2:6])[0]
            (T_x10,) = struct.unpack(">h", raw(read_pdu(4, 100, 1))[2:4])
            active, unacked = struct.unpack(">HH", raw(read_pdu(4, 60, 2))[2:6])
            true_T = struct.unpack(">f", raw(read_pdu(4, 908, 2))[2:6])[0]
        finally:
            raw.close()
    entry = register_entry("T_reactor")
    assert T == entry.signal.max == 500.0                   # the map's declared max, not 705 K
    assert T_x10 == 2268                                    # 226.85 degC x 10 (round half to even)
    assert active & Alarm.OUT_OF_RANGE and unacked & Alarm.OUT_OF_RANGE
    assert active & Alarm.INTERLOCK_TRIP                    # and the interlock acted
    assert true_T > 500.0                                   # the simulation-only truth is the truth
