"""The PLC signal table, its register map and the Modbus encodings (no sockets)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from plant_sim.modbus_server import format_register_map, register_map_csv
from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.signals.modbus import INT16_NO_VALUE, ModbusBinding
from twin_core.signals.plc import (
    COMMAND_NAMES,
    IR_SIM_TRUTH,
    PLC_COMMANDS,
    PLC_MEASUREMENTS,
    PLC_REGISTER_MAP,
    PLC_SETTINGS,
    PLC_SIGNALS,
    PLC_SIM_HOOKS,
    PLC_SIM_TRUTH,
    RECIPE_MAX_POINTS,
    SETTING_RULES,
    Alarm,
    Phase,
    SensorFault,
    is_simulation_only,
    register_entry,
)

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


@pytest.mark.parametrize(("kwargs", "error", "field"), [
    ({"table": "memory", "address": 0}, ParameterError, "modbus.table"),
    ({"table": "input", "address": 0, "encoding": "float64"}, ParameterError, "modbus.encoding"),
    ({"table": "input", "address": "7"}, ParameterTypeError, "modbus.address"),
    ({"table": "input", "address": True}, ParameterTypeError, "modbus.address"),
    ({"table": "input", "address": 0xFFFF}, ParameterError, "modbus.address"),  # float32 needs two registers
    ({"table": "coil", "address": 0, "encoding": "uint16"}, ParameterError, "modbus.encoding"),
    ({"table": "input", "address": 0, "encoding": "int16", "scale": 0.0}, ParameterError, "modbus.scale"),
    ({"table": "input", "address": 0, "encoding": "int16", "scale": "10"}, ParameterTypeError, "modbus.scale"),
    ({"table": "input", "address": 0, "encoding": "int16", "offset": math.inf}, ParameterError, "modbus.offset"),
])
def test_binding_errors_name_the_field(kwargs: dict, error: type, field: str) -> None:
    with pytest.raises(error) as info:
        ModbusBinding(**kwargs)
    assert info.value.field == field


# -- the one declaration of the PLC's interface ----------------------------------------------------
def test_measurements_are_input_registers_and_settings_holding_registers() -> None:
    assert all(s.modbus is not None and s.modbus.table == "input" for s in PLC_MEASUREMENTS)
    assert all(s.modbus is not None and s.modbus.table == "holding" for s in PLC_SETTINGS)
    names = {s.name for s in PLC_SETTINGS}
    assert {f"recipe_time_{i}" for i in range(RECIPE_MAX_POINTS)} <= names
    assert {f"recipe_T_{i}" for i in range(RECIPE_MAX_POINTS)} <= names
    assert f"recipe_time_{RECIPE_MAX_POINTS}" not in names


def test_commands_are_coils_in_the_declared_order() -> None:
    assert [s.name for s in PLC_COMMANDS] == [f"cmd_{c}" for c in COMMAND_NAMES]
    assert [s.modbus.address for s in PLC_COMMANDS if s.modbus] == list(range(len(COMMAND_NAMES)))


def test_simulation_only_blocks_are_separate_and_marked() -> None:
    sim = [e for e in PLC_REGISTER_MAP if is_simulation_only(e)]
    assert {e.signal.name for e in sim} == {s.name for s in PLC_SIM_HOOKS + PLC_SIM_TRUTH}
    assert all(e.binding.address >= 900 and e.description.startswith("SIMULATION ONLY") for e in sim)
    assert all(e.binding.address < 900 for e in PLC_REGISTER_MAP if not is_simulation_only(e))
    truth = [e for e in sim if e.kind == "sim_truth"]
    assert truth and all(e.binding.table == "input" and e.access == "R" for e in truth)
    assert {"sim_true_c_A", "sim_true_c_B", "sim_true_c_C", "sim_true_T_reactor"} <= {e.name for e in truth}
    lo = min(e.binding.address for e in truth)
    hi = max(e.binding.address + e.binding.width for e in truth)
    assert (lo, hi - lo) == (IR_SIM_TRUTH, sum(e.binding.width for e in truth))  # one contiguous read
    assert hi - lo <= 125


def test_phase_and_alarm_ranges_cover_the_enums() -> None:
    phase = register_entry("phase").signal
    assert phase.max == max(Phase) and phase.min == min(Phase)
    assert register_entry("alarms_active").signal.max >= sum(Alarm)
    assert register_entry("sim_sensor_fault").signal.max == max(SensorFault)


def test_every_writable_register_has_one_rule_with_the_signal_range() -> None:
    writable = {e.signal.name: e.signal for e in PLC_REGISTER_MAP if e.access != "R" and e.kind != "command"}
    assert set(writable) == set(SETTING_RULES)
    for name, rule in SETTING_RULES.items():
        assert rule.signal is writable[name]
        assert rule.hi == rule.signal.max
        assert rule.lo == (rule.signal.min if rule.min_nonzero is None else rule.min_nonzero), name
    assert SETTING_RULES["recipe_sample_interval"].min_nonzero == 60.0


@pytest.mark.parametrize(("name", "value", "error"), [
    ("T_trip", math.nan, ParameterError),
    ("T_trip", 473.16, ParameterError),
    ("recipe_n_points", 2.5, ParameterError),
    ("recipe_n_points", 0, ParameterError),
    ("recipe_sample_interval", 59.0, ParameterError),
    ("recipe_sample_interval", "60", ParameterTypeError),
    ("recipe_mode", True, ParameterTypeError),
])
def test_setting_rule_refuses_naming_the_setting(name: str, value: object, error: type) -> None:
    with pytest.raises(error) as info:
        SETTING_RULES[name].check(value)
    assert info.value.field == name


def test_setting_rule_accepts_bounds_and_zero_interval() -> None:
    assert SETTING_RULES["recipe_sample_interval"].check(0) == 0.0
    assert SETTING_RULES["recipe_sample_interval"].check(60) == 60.0
    assert SETTING_RULES["recipe_n_points"].check(RECIPE_MAX_POINTS) == RECIPE_MAX_POINTS


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
