"""The signal table: every signal of the twin and of the PLC interface, declared once.

Each signal has a name (also the FMI variable name and the OPC UA browse name), an SI unit, a
role, min/max/nominal, a description and, where it crosses Modbus, its register binding. FMU
variables, the OPC UA address space, the Modbus register maps and their CSVs are generated from
these tables, never hand-copied.

Submodules, one concern each:
    table   Signal, UNITS, DISPLAY_UNITS, the common ranges (T_LO_K, T_HI_K, C_HI)
    twin    TWIN_SIGNALS: the FMU's parameters, inputs and outputs; by_name, params_from_signals
    modbus  ModbusBinding (encodings), INT16_NO_VALUE, RegisterEntry, build_register_map
    plc     the PLC interface: measurements, settings and their rules, commands, Phase, Alarm,
            SensorFault, RECIPE_MAX_POINTS, the simulation hooks and truth block, PLC_REGISTER_MAP
    text    CSV and aligned-text views of the tables and maps
    runtime what the runtime (`twin run`) publishes per reactor: OPC UA folders, quality, the mirror's map

Import from the submodule that declares a name (``from twin_core.signals.plc import Phase``): the
package re-exports nothing, so a user of the twin's table (the FMU) loads neither the PLC interface
nor its register map, and editing the PLC map leaves the FMU's build id alone.
"""
