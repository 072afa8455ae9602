"""The PLC signal table, its register map and the Modbus encodings (no sockets)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from plant_sim import interface
from plant_sim.modbus_server import format_register_map, register_map_csv
from twin_core.signals import (
    COMMAND_NAMES,
    PLC_COMMANDS,
    PLC_MEASUREMENTS,
    PLC_REGISTER_MAP,
    PLC_SETTINGS,
    PLC_SIGNALS,
    PLC_SIM_HOOKS,
    RECIPE_MAX_POINTS,
    register_entry,
)
from twin_core.signals import INT16_NO_VALUE, ModbusBinding

F32 = ModbusBinding("holding", 0, "float32")
DT = ModbusTcpClient.DATATYPE


# -- float32: high word first, big-endian bytes -------------------------------------------------
@pytest.mark.parametrize(("value", "words"), [
    (1.0, (0x3F80, 0x0000)),
    (-2.0, (0xC000, 0x0000)),
    (0.1, (0x3DCC, 0xCCCD)),
    (298.15, (0x4395, 0x1333)),
    (0.0, (0x0000, 0x0000)),
    (-0.0, (0x8000, 0x0000)),
    (math.inf, (0x7F80, 0x0000)),
])
def test_float32_known_bit_patterns(value: float, words: tuple[int, int]) -> None:
    assert F32.encode(value) == words
    assert F32.decode(words) == struct.unpack(">f", struct.pack(">f", value))[0]


def test_float32_nan_has_a_nan_pattern() -> None:
    hi, lo = F32.encode(math.nan)
    assert hi & 0x7F80 == 0x7F80 and (hi & 0x007F or lo)
    assert math.isnan(F32.decode((hi, lo)))


@given(st.floats(width=32, allow_nan=False))
@example(1.0)
@example(-3.4028234663852886e38)
@example(1.401298464324817e-45)
def test_float32_round_trip_and_word_order(value: float) -> None:
    words = F32.encode(value)
    assert F32.decode(words) == value
    # high word first: the words, each big-endian, concatenated are the big-endian float
    assert struct.pack(">HH", *words) == struct.pack(">f", value)
    # an independent codec (pymodbus's client) agrees with word_order="big"
    assert list(words) == ModbusTcpClient.convert_to_registers(value, DT.FLOAT32, word_order="big")
    assert ModbusTcpClient.convert_from_registers(list(words), DT.FLOAT32, word_order="big") == value


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_float32_decode_then_encode_keeps_every_non_nan_pattern(hi: int, lo: int) -> None:
    v = F32.decode((hi, lo))
    if not math.isnan(v):
        assert F32.encode(v) == (hi, lo)


def test_float32_overflow_is_refused_or_saturated() -> None:
    with pytest.raises(ValueError):
        F32.encode(1e39)
    assert F32.encode(1e39, saturate=True) == (0x7F80, 0x0000)
    assert F32.encode(-1e39, saturate=True) == (0xFF80, 0x0000)


# -- integers ------------------------------------------------------------------------------------
U32 = ModbusBinding("input", 0, "uint32")
DEGC10 = ModbusBinding("input", 0, "int16", 10.0, 273.15)


@given(st.integers(0, 0xFFFF_FFFF))
def test_uint32_high_word_first(n: int) -> None:
    words = U32.encode(n)
    assert words == (n >> 16, n & 0xFFFF)
    assert U32.decode(words) == n
    assert list(words) == ModbusTcpClient.convert_to_registers(n, DT.UINT32, word_order="big")


@given(st.integers(-32767, 32767))
def test_scaled_int16_round_trip(raw: int) -> None:
    value = raw / 10.0 + 273.15
    words = DEGC10.encode(value)
    assert words == (raw & 0xFFFF,)
    assert ModbusTcpClient.convert_from_registers(list(words), DT.INT16) == raw
    assert DEGC10.encode(DEGC10.decode(words)) == words


@pytest.mark.parametrize(("kelvin", "raw"), [(273.15, 0), (298.15, 250), (373.15, 1000), (253.15, -200)])
def test_degc_x10_convention(kelvin: float, raw: int) -> None:
    assert DEGC10.encode(kelvin) == (raw & 0xFFFF,)
    assert DEGC10.decode((raw & 0xFFFF,)) == pytest.approx(kelvin, abs=1e-9)


@pytest.mark.parametrize(("binding", "value"), [
    (DEGC10, math.nan), (DEGC10, 273.15 + 3276.8), (DEGC10, 273.15 - 3276.9),
    (ModbusBinding("input", 0, "uint16"), -1), (ModbusBinding("input", 0, "uint16"), 65536),
    (ModbusBinding("input", 0, "uint16"), math.nan), (U32, 2**32), (U32, -1),
])
def test_integer_out_of_range_is_refused_strict_and_saturated_on_publish(binding: ModbusBinding, value: float) -> None:
    with pytest.raises(ValueError):
        binding.encode(value)
    words = binding.encode(value, saturate=True)
    lo, hi = (-32767, 32767) if binding.encoding == "int16" else (0, 2**(16 * binding.width) - 1)
    if math.isnan(value):
        assert words[0] == (INT16_NO_VALUE & 0xFFFF if binding.encoding == "int16" else 0)
    else:
        decoded = (binding.decode(words) - binding.offset) * binding.scale
        assert round(decoded) == (hi if value > binding.offset else lo)


@pytest.mark.parametrize("kwargs", [
    {"table": "input", "address": -1}, {"table": "input", "address": 65535},  # float32 needs 2 registers
    {"table": "input", "address": 0, "encoding": "bool"}, {"table": "coil", "address": 0, "encoding": "uint16"},
    {"table": "input", "address": 0, "encoding": "int16", "scale": 0.0},
    {"table": "input", "address": 0, "encoding": "int16", "offset": math.nan},
    {"table": "memory", "address": 0},
])
def test_binding_rejects_bad_declarations(kwargs: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        ModbusBinding(**kwargs)


# -- the table agrees with the PLC's interface ------------------------------------------------------
def test_measurements_agree_with_interface() -> None:
    assert {s.name: s.unit for s in PLC_MEASUREMENTS} == interface.MEASUREMENTS
    assert all(s.modbus is not None and s.modbus.table == "input" for s in PLC_MEASUREMENTS)


def test_settings_agree_with_interface() -> None:
    expected = dict(interface.SETTINGS)
    for i in range(interface.RECIPE_MAX_POINTS):
        expected[f"recipe_time_{i}"] = "s"
        expected[f"recipe_T_{i}"] = "K"
    assert {s.name: s.unit for s in PLC_SETTINGS} == expected
    assert RECIPE_MAX_POINTS == interface.RECIPE_MAX_POINTS
    assert all(s.modbus is not None and s.modbus.table == "holding" for s in PLC_SETTINGS)


def test_commands_and_hooks_agree_with_interface() -> None:
    assert COMMAND_NAMES == interface.COMMANDS
    assert [s.name for s in PLC_COMMANDS] == [f"cmd_{c}" for c in interface.COMMANDS]
    assert {s.name for s in PLC_SIM_HOOKS} == {f"sim_{h}" for h in interface.SIMULATION_HOOKS}
    assert all(s.modbus is not None and s.modbus.address >= 900 for s in PLC_SIM_HOOKS)


def test_phase_and_alarm_ranges_cover_the_enums() -> None:
    phase = register_entry("phase").signal
    assert phase.max == max(interface.Phase) and phase.min == min(interface.Phase)
    assert register_entry("alarms_active").signal.max >= sum(interface.Alarm)


# -- the map -----------------------------------------------------------------------------------------
def test_map_has_no_overlap_and_every_signal_once() -> None:
    seen: dict[tuple[str, int], str] = {}
    for e in PLC_REGISTER_MAP:
        for a in e.addresses:
            assert (e.binding.table, a) not in seen, (e.name, seen.get((e.binding.table, a)))
            seen[(e.binding.table, a)] = e.name
    primary = [e.signal.name for e in PLC_REGISTER_MAP if e.name == e.signal.name]
    assert sorted(primary) == sorted(s.name for s in PLC_SIGNALS)


def test_whole_recipe_fits_one_write_multiple_request() -> None:
    recipe = [e for e in PLC_REGISTER_MAP if e.name.startswith("recipe_") and e.binding.table == "holding"]
    lo = min(e.binding.address for e in recipe)
    hi = max(e.binding.address + e.binding.width for e in recipe)
    assert hi - lo <= 123
    assert sum(e.binding.width for e in recipe) == hi - lo  # contiguous: no gap inside the recipe block


def test_committed_register_map_csv_is_the_generated_one(root) -> None:
    committed = (root / "docs" / "modbus_register_map_plc.csv").read_text(encoding="utf-8")
    assert committed == register_map_csv()


def test_text_map_lists_every_register() -> None:
    text = format_register_map()
    for e in PLC_REGISTER_MAP:
        assert f" {e.name} " in text
    assert "high word first" in text


def test_setting_ranges_agree_with_the_plc() -> None:
    """The signal table's min/max (what the server checks, what integrators read) are the PLC's own."""
    from plant_sim.plc import SETTING_SPECS

    writable = {e.signal.name: e.signal for e in PLC_REGISTER_MAP if e.access != "R" and e.kind != "command"}
    assert set(writable) == set(SETTING_SPECS)
    for name, spec in SETTING_SPECS.items():
        sig = writable[name]
        assert (sig.min, sig.max) == ((0.0 if spec.zero_ok else spec.lo), spec.hi), name
        assert (sig.type in ("Integer", "Boolean")) == spec.integer, name
