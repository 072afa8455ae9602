"""The twin on the plant floor: what the runtime (`twin run`) publishes per reactor, declared once.

Every value the runtime serves, over OPC UA (its address space) and over the read-only Modbus
mirror, is a signal of the table: a PLC measurement or setting it forwards (twin_core.signals.plc),
an output or tuning parameter of the twin (twin_core.signals.twin), or one of the runtime's own
status values declared here (:data:`RUNTIME_SIGNALS`). :data:`PUBLISHED` says, for each, its OPC UA
folder, where its value comes from, whether a client may write it, whether it is trended (history),
and the unit an operator reads; :data:`MIRROR_MAP` is the mirror's register map. The OPC UA nodes and
the mirror's registers are generated from these tables, never hand-copied.

Data quality: every published value carries a :class:`Quality`. A value the runtime could not refresh
(PLC link down) is never published Good: PLC values turn ``BAD_COMMUNICATION``, the twin's estimates
``UNCERTAIN_LAST_USABLE`` (it keeps predicting open loop, with growing uncertainty). The mirror,
which has no per-value status, carries the same information in ``plc_link``, ``twin_mode`` and
``estimate_quality``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from twin_core.signals.modbus import ModbusBinding, RegisterEntry, build_register_map, register_entry_of
from twin_core.signals.plc import PLC_MEASUREMENTS, PLC_SETTINGS, UINT32_MAX, Alarm
from twin_core.signals.table import Signal
from twin_core.signals.twin import TWIN_SIGNALS


class Quality(enum.IntEnum):
    """Data quality of a published value (OPC UA status code family; the mirror's quality words)."""

    GOOD = 0
    UNCERTAIN_LAST_USABLE = 1  # the runtime could not refresh it; the last usable value (or a prediction)
    BAD_COMMUNICATION = 2      # the PLC link is down: the value is unknown
    BAD_WAITING = 3            # no value yet (before the first scan, or no batch)


class LinkState(enum.IntEnum):
    """The runtime's link to a reactor's PLC (``plc_link``)."""

    DOWN = 0
    UP = 1
    CONNECTING = 2


class TwinMode(enum.IntEnum):
    """What the twin is doing (``twin_mode``)."""

    WAITING = 0    # no batch running in the PLC: nothing to estimate
    TRACKING = 1   # closed loop on the PLC's readings and lab results
    OPEN_LOOP = 2  # PLC link lost mid-batch: predicting on the last jacket reading, uncertainty growing


OPERATOR_UNITS: dict[str, str] = {"mol/m3": "mol/L", "s": "h"}
"""What an operator reads a value of each SI unit in, unless its signal says otherwise (no offset units:
a temperature difference such as T_std stays in K; absolute temperatures declare degC themselves)."""

Folder = Literal["Measurements", "Estimates", "Forecasts", "Recipe", "Alarms", "Status", "Twin"]
FOLDERS: tuple[Folder, ...] = ("Measurements", "Estimates", "Forecasts", "Recipe", "Alarms", "Status", "Twin")
"""The folders under ``Objects/<plant>/<reactor>/`` in the OPC UA address space."""
Source = Literal["plc", "twin", "runtime"]


def _r(name: str, description: str, lo: float, hi: float, type_: str = "Integer", unit: str = "1",
       display_unit: str | None = None) -> Signal:
    return Signal(name, unit, "output", description, lo, hi, 1.0, type=type_, display_unit=display_unit)  # type: ignore[arg-type]


ALARM_FLAGS: tuple[Signal, ...] = tuple(
    sig
    for a in Alarm
    for sig in (
        Signal(f"alarm_{a.name.lower()}_active", "1", "output", f"PLC alarm {a.name}: condition present",
               type="Boolean"),
        Signal(f"alarm_{a.name.lower()}_unacked", "1", "output", f"PLC alarm {a.name}: latched, not yet acknowledged",
               type="Boolean"),
    )
)
"""One Boolean per PLC alarm bit and state, decoded from ``alarms_active`` / ``alarms_unacked``."""

RUNTIME_SIGNALS: tuple[Signal, ...] = (
    _r("plc_link", "PLC link: 0 down, 1 up, 2 connecting", 0, 2),
    _r("twin_mode", "Twin: 0 waiting for a batch, 1 tracking the PLC, 2 open loop (PLC link lost)", 0, 2),
    _r("estimate_quality", "Quality of the estimates: 0 good, 1 uncertain (open loop), 2 bad, 3 no value yet", 0, 3),
    _r("plc_restarts", "PLC restarts detected (batch id or plant time went back)", 0, UINT32_MAX),
    _r("link_losses", "PLC link losses since the runtime started", 0, UINT32_MAX),
    _r("twin_scans", "Scans the runtime has made of this reactor (heartbeat)", 0, UINT32_MAX),
    _r("lab_results_used", "Lab results fed to the twin in this batch (PLC and LIMS)", 0, UINT32_MAX),
    _r("time_to_stop", "Time from now to the forecast optimal stop (0 once reached)", 0.0, 1e7, "Real", "s", "h"),
    _r("last_scan_plant_time", "Plant time of the last PLC scan the twin used", 0.0, 1e9, "Real", "s", "h"),
    _r("checkpoint_state", "Crash-recovery checkpoints: 0 written, 1 none yet or off, 2 FAILING (disk full, read-only folder), 3 the stored one was rejected at start", 0, 3),
    *ALARM_FLAGS,
)
"""The runtime's own status values (no PLC or FMU counterpart)."""


@dataclass(frozen=True)
class Published:
    """One value the runtime publishes for each reactor.

    folder: OPC UA folder; source: who computes it; writable: a client may write it (Recipe values
    go to the PLC, Twin tuning to the FMU), checked against the signal's range and type; history:
    trended (HistoryRead returns the batch); display_unit: the operator's unit on OPC UA (default
    the signal's own display unit, else its SI unit).
    """

    signal: Signal
    folder: Folder
    source: Source
    writable: bool = False
    history: bool = False
    display_unit: str | None = None

    @property
    def name(self) -> str:
        return self.signal.name

    @property
    def operator_unit(self) -> str:
        """The unit the value is published in on OPC UA: the record's own, else the signal's display
        unit, else the operator's usual unit for its SI unit (:data:`OPERATOR_UNITS`), else the SI unit."""
        return (self.display_unit or self.signal.display_unit or OPERATOR_UNITS.get(self.signal.unit)
                or self.signal.unit)


_PLC = {s.name: s for s in PLC_MEASUREMENTS + PLC_SETTINGS}
_TWIN = {s.name: s for s in TWIN_SIGNALS}
_RUNTIME = {s.name: s for s in RUNTIME_SIGNALS}

_MEASUREMENTS = ("T_reactor", "T_jacket", "T_jacket_sp", "pid_output", "lab_c_B", "lab_c_C", "lab_sample_time",
                 "lab_valid", "lab_seq")
_STATUS_PLC = ("phase", "batch_id", "batch_time", "recipe_step", "plant_time", "scan_count")
_ESTIMATES = ("c_A", "c_B", "c_C", "T", "c_A_std", "c_B_std", "c_C_std", "T_std", "yield_B", "correction_in_domain")
_FORECASTS = ("t_stop_opt", "yield_B_forecast", "impurity_forecast")
_TWIN_TUNING = ("correction_on", "sigma_T_meas", "sigma_lab", "sigma_rate_rel", "t_batch_end", "forecast_interval")
_TRENDED = {"T_reactor", "T_jacket", "T_jacket_sp", "c_A", "c_B", "c_C", "T", "c_B_std", "yield_B",
            "t_stop_opt", "yield_B_forecast", "impurity_forecast", "model_health", "phase"}
_PERCENT = {"pid_output", "yield_B", "yield_B_forecast", "impurity_forecast"}

PUBLISHED: tuple[Published, ...] = (
    *(Published(_PLC[n], "Measurements", "plc", history=n in _TRENDED,
                display_unit="%" if n in _PERCENT else None) for n in _MEASUREMENTS),
    *(Published(_TWIN[n], "Estimates", "twin", history=n in _TRENDED,
                display_unit="%" if n in _PERCENT else None) for n in _ESTIMATES),
    *(Published(_TWIN[n], "Forecasts", "twin", history=n in _TRENDED,
                display_unit="%" if n in _PERCENT else None) for n in _FORECASTS),
    Published(_RUNTIME["time_to_stop"], "Forecasts", "runtime"),
    *(Published(s, "Recipe", "plc", writable=True) for s in PLC_SETTINGS),
    Published(_PLC["alarms_active"], "Alarms", "plc"),
    Published(_PLC["alarms_unacked"], "Alarms", "plc"),
    *(Published(s, "Alarms", "runtime") for s in ALARM_FLAGS),
    *(Published(_PLC[n], "Status", "plc", history=n in _TRENDED) for n in _STATUS_PLC),
    Published(_TWIN["model_health"], "Status", "twin", history=True),
    *(Published(_RUNTIME[n], "Status", "runtime") for n in
      ("plc_link", "twin_mode", "estimate_quality", "plc_restarts", "link_losses", "twin_scans", "lab_results_used",
       "last_scan_plant_time", "checkpoint_state")),
    *(Published(_TWIN[n], "Twin", "twin", writable=True) for n in _TWIN_TUNING),
)
"""Everything the runtime publishes per reactor, in address-space order."""

PUBLISHED_BY_NAME: dict[str, Published] = {p.name: p for p in PUBLISHED}


# -- the read-only Modbus mirror -----------------------------------------------------------------------
MIRROR_FLOAT_BASE = 0
"""Input registers from here: float32 values (two registers each, ABCD like the PLC map)."""
MIRROR_STATUS_BASE = 100
"""Input registers from here: status words (uint16) and counters (uint32)."""
MIRROR_INT16_BASE = 200
"""Input registers from here: scaled INT16 copies of the main estimates, for 16-bit-only SCADA."""

_MIRROR_FLOATS = ("c_A", "c_B", "c_C", "T", "c_A_std", "c_B_std", "c_C_std", "T_std", "yield_B", "t_stop_opt",
                  "yield_B_forecast", "impurity_forecast", "time_to_stop", "last_scan_plant_time")
_MIRROR_STATUS16 = ("model_health", "correction_in_domain", "plc_link", "twin_mode", "estimate_quality")
_MIRROR_STATUS32 = ("batch_id", "twin_scans", "plc_restarts", "link_losses", "lab_results_used")


def _signal(name: str) -> Signal:
    return _TWIN.get(name) or _RUNTIME.get(name) or _PLC[name]


def _mirror_entries() -> tuple[RegisterEntry, ...]:
    out: list[RegisterEntry] = []
    for i, n in enumerate(_MIRROR_FLOATS):
        out.append(register_entry_of(_bind(_signal(n), ModbusBinding("input", MIRROR_FLOAT_BASE + 2 * i)),
                                     "measurement"))
    for i, n in enumerate(_MIRROR_STATUS16):
        out.append(register_entry_of(_bind(_signal(n), ModbusBinding("input", MIRROR_STATUS_BASE + i, "uint16")),
                                     "measurement"))
    base32 = MIRROR_STATUS_BASE + 20
    for i, n in enumerate(_MIRROR_STATUS32):
        out.append(register_entry_of(_bind(_signal(n), ModbusBinding("input", base32 + 2 * i, "uint32")),
                                     "measurement"))
    views = (("c_B", "mol_per_L_x1000", 1.0, 0.0, "mol/L x 1000"),
             ("T", "degC_x10", 10.0, 273.15, "degC x 10"),
             ("c_C", "mol_per_L_x1000", 1.0, 0.0, "mol/L x 1000"),
             ("yield_B_forecast", "pct_x10", 1000.0, 0.0, "% x 10"),
             ("t_stop_opt", "h_x100", 100.0 / 3600.0, 0.0, "h x 100"))
    for i, (n, suffix, scale, offset, what) in enumerate(views):
        sig = _signal(n)
        out.append(RegisterEntry(f"{n}_{suffix}", sig, ModbusBinding("input", MIRROR_INT16_BASE + i, "int16", scale,
                                                                     offset),
                                 "measurement", f"{sig.description}, as INT16 {what} (0x8000 = no value)"))
    return build_register_map(out)


def _bind(sig: Signal, binding: ModbusBinding) -> Signal:
    from dataclasses import replace

    return replace(sig, modbus=binding)


MIRROR_MAP: tuple[RegisterEntry, ...] = _mirror_entries()
"""The mirror's register map (input registers only: the mirror is read-only). One Modbus unit id
per reactor, in the order of the runtime's configuration (1, 2, ...)."""
