"""The signal table: every signal of the twin and of the PLC interface, declared once.

Each signal has a name (also the FMI variable name and, next, the OPC UA browse name), an SI unit, a
role, min/max/nominal, a description and, where it crosses Modbus, its register binding. FMU
variables, the Modbus register maps and their CSVs are generated from these tables, never
hand-copied (OPC UA nodes will be too: issue 10).

Submodules, one concern each:
    table   Signal, UNITS, DISPLAY_UNITS, the common ranges (T_LO_K, T_HI_K, C_HI)
    twin    TWIN_SIGNALS: the FMU's parameters, inputs and outputs; by_name, params_from_signals
    modbus  ModbusBinding (encodings), INT16_NO_VALUE, RegisterEntry, build_register_map
    plc     the PLC interface: measurements, settings and their rules, commands, Phase, Alarm,
            SensorFault, RECIPE_MAX_POINTS, the simulation hooks and truth block, PLC_REGISTER_MAP
    text    CSV and aligned-text views of the tables and maps

Everything below is re-exported here, so ``from twin_core.signals import X`` works for any of them.
"""

from __future__ import annotations

from twin_core.signals.modbus import (
    INT16_NO_VALUE,
    MODBUS_ENCODINGS,
    MODBUS_TABLES,
    Access,
    Kind,
    ModbusBinding,
    ModbusEncoding,
    ModbusTable,
    RegisterEntry,
    build_register_map,
    register_entry_of,
)
from twin_core.signals.plc import (
    BATCH_TIME_MAX_S,
    CELSIUS_OFFSET_K,
    CO_COMMANDS,
    CO_SIM,
    COMMAND_NAMES,
    HR_LIMITS,
    HR_RECIPE,
    HR_RECIPE_POINTS,
    HR_SIM,
    IR_ALARMS,
    IR_BATCH,
    IR_CLOCK,
    IR_LAB,
    IR_PROCESS,
    IR_SCADA_INT16,
    IR_SIM_TRUTH,
    LIMIT_T_RANGE_K,
    N_PHASES,
    N_SENSOR_FAULTS,
    PLANT_TIME_MAX_S,
    PLC_COMMANDS,
    PLC_MEASUREMENTS,
    PLC_REGISTER_MAP,
    PLC_SETTINGS,
    PLC_SIGNALS,
    PLC_SIM_HOOKS,
    PLC_SIM_TRUTH,
    RECIPE_MAX_POINTS,
    RECIPE_T_RANGE_K,
    RECIPE_TIME_MAX_S,
    RECIPE_WRITABLE_PHASES,
    SAMPLE_INTERVAL_MAX_S,
    SAMPLE_INTERVAL_MIN_S,
    SCADA_INT16_VIEWS,
    SCAN_COUNT_MODULUS,
    SETTING_RULES,
    UINT16_MAX,
    UINT32_MAX,
    Alarm,
    Phase,
    SensorFault,
    SettingRule,
    is_simulation_only,
    plc_signal,
    register_entry,
)
from twin_core.signals.table import (
    C_HI,
    DISPLAY_UNITS,
    T_HI_K,
    T_LO_K,
    UNITS,
    Role,
    Signal,
    VarType,
    signals_by_name,
)
from twin_core.signals.text import (
    COLUMNS,
    MAP_COLUMNS,
    aligned_text,
    csv_text,
    format_register_map,
    register_map_csv,
    register_map_rows,
    rows,
    to_csv,
    to_text,
)
from twin_core.signals.twin import (
    TWIN_SIGNALS,
    by_name,
    params_from_signals,
)

__all__ = [
    "Access", "Alarm", "BATCH_TIME_MAX_S", "CELSIUS_OFFSET_K", "COLUMNS", "COMMAND_NAMES", "CO_COMMANDS", "CO_SIM",
    "C_HI", "DISPLAY_UNITS", "HR_LIMITS", "HR_RECIPE", "HR_RECIPE_POINTS", "HR_SIM", "INT16_NO_VALUE", "IR_ALARMS",
    "IR_BATCH", "IR_CLOCK", "IR_LAB", "IR_PROCESS", "IR_SCADA_INT16", "IR_SIM_TRUTH", "Kind", "LIMIT_T_RANGE_K",
    "MAP_COLUMNS", "MODBUS_ENCODINGS", "MODBUS_TABLES", "ModbusBinding", "ModbusEncoding", "ModbusTable",
    "N_PHASES", "N_SENSOR_FAULTS", "PLANT_TIME_MAX_S", "PLC_COMMANDS", "PLC_MEASUREMENTS", "PLC_REGISTER_MAP",
    "PLC_SETTINGS", "PLC_SIGNALS", "PLC_SIM_HOOKS", "PLC_SIM_TRUTH", "Phase", "RECIPE_MAX_POINTS",
    "RECIPE_TIME_MAX_S", "RECIPE_T_RANGE_K", "RECIPE_WRITABLE_PHASES", "RegisterEntry", "Role",
    "SAMPLE_INTERVAL_MAX_S", "SAMPLE_INTERVAL_MIN_S", "SCADA_INT16_VIEWS", "SCAN_COUNT_MODULUS", "SETTING_RULES",
    "SensorFault", "SettingRule", "Signal", "TWIN_SIGNALS", "T_HI_K", "T_LO_K", "UINT16_MAX", "UINT32_MAX", "UNITS",
    "VarType", "aligned_text", "build_register_map", "by_name", "csv_text", "format_register_map",
    "is_simulation_only", "params_from_signals", "plc_signal", "register_entry", "register_entry_of",
    "register_map_csv", "register_map_rows", "rows", "signals_by_name", "to_csv", "to_text",
]
