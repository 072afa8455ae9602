"""Configuration of the simulated plant: frozen, validated dataclasses loaded from TOML.

The plant deliberately differs from twin_core's model. Each difference is a *mismatch* that the
``[mismatch]`` table switches on or off; with every switch off the plant's truth reduces to the
twin's model (an ideal jacket that follows its setpoint, the twin's kinetics, no side reaction, a
clean heat-transfer surface, the nominal charge, perfect sensors and lab). docs/plant.md gives
what, why and how large each mismatch is.

The vessel itself (volume, density, heat capacity, reaction enthalpies, T_ref) is shared with
twin_core.params.ModelParams: the plant and the twin describe the same piece of equipment.

TOML layout: one table per dataclass below (``[mismatch]``, ``[kinetics]``, ``[side_reaction]``,
``[fouling]``, ``[jacket]``, ``[pid]``, ``[charge]``, ``[sensors]``, ``[lab]``, ``[phases]``,
``[alarms]``, ``[runaway]``, ``[plc]``); missing keys take their defaults, unknown keys and unknown
tables raise ParameterError naming the field. plant_sim/plant.toml holds the defaults.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.params import ModelParams
from twin_core.validate import non_negative as _non_negative
from twin_core.validate import number as _number
from twin_core.validate import positive as _positive
from twin_core.validate import temperature as _temperature

DEFAULT_CONFIG_PATH = Path(__file__).with_name("plant.toml")
"""The default plant configuration shipped with the package (equal to ``PlantConfig()``)."""


# -- validators ----------------------------------------------------------------------------------
def _fraction(path: str, value: object, hi: float = 1.0) -> None:
    v = _number(path, value)
    if not 0.0 <= v < hi:
        raise ParameterError(path, value, f"must be within [0, {hi})")


def _boolean(path: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ParameterTypeError(path, value, "true or false")


# -- sections ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mismatch:
    """Switches: each True makes the plant differ from twin_core in one documented way."""

    kinetics: bool = True          # plant's k1_ref, k2_ref, E1, E2 instead of the twin's
    side_reaction: bool = True     # B -> C catalysed by C (r3 = k3(T) c_B c_C), unknown to the twin
    fouling: bool = True           # UA falls batch after batch, recovers at cleaning
    jacket_dynamics: bool = True   # jacket energy balance + utilities + PID (off: T_j = setpoint)
    charge_variation: bool = True  # c_A0, T0 and raw-material activity vary from batch to batch
    sensors: bool = True           # lag, noise, quantisation (off: measurements = truth)
    lab_error: bool = True         # assay error on lab results (off: exact results; delay stays)

    def __post_init__(self) -> None:
        for f in fields(self):
            _boolean(f"mismatch.{f.name}", getattr(self, f.name))


@dataclass(frozen=True)
class PlantKinetics:
    """The plant's true A -> B -> C kinetics (used when mismatch.kinetics is on).

    Defaults differ from twin_core's Kinetics by +20 % (k1_ref), +25 % (k2_ref), -12 % (E1) and
    +15 % (E2); T_ref and the reaction enthalpies are the twin's.
    """

    k1_ref_per_s: float = 2.22e-4
    k2_ref_per_s: float = 6.875e-5
    E1_J_per_mol: float = 61.6e3
    E2_J_per_mol: float = 115.0e3

    def __post_init__(self) -> None:
        for f in fields(self):
            _positive(f"kinetics.{f.name}", getattr(self, f.name))


@dataclass(frozen=True)
class SideReaction:
    """Degradation of B catalysed by C: B -> C, r3 = k3(T) c_B c_C (second order)."""

    k3_ref_m3_per_mol_s: float = 1.0e-7
    E3_J_per_mol: float = 90.0e3
    # No enthalpy of its own: the overall change B -> C is the same as reaction 2's, so (enthalpy
    # being a state function) it releases dH2 per mol whichever path it takes.

    def __post_init__(self) -> None:
        _positive("side_reaction.k3_ref_m3_per_mol_s", self.k3_ref_m3_per_mol_s)
        _positive("side_reaction.E3_J_per_mol", self.E3_J_per_mol)


@dataclass(frozen=True)
class Fouling:
    """Heat-transfer fouling: UA = UA_clean * max(UA_min_fraction, (1 - loss_per_batch)**n), n the
    batches since the last cleaning (with mismatch.fouling off, UA is twin_core's value)."""

    UA_clean_W_per_K: float = 1500.0
    loss_per_batch: float = 0.02
    UA_min_fraction: float = 0.6

    def __post_init__(self) -> None:
        _positive("fouling.UA_clean_W_per_K", self.UA_clean_W_per_K)
        _fraction("fouling.loss_per_batch", self.loss_per_batch, 0.5)
        v = _number("fouling.UA_min_fraction", self.UA_min_fraction)
        if not 0.0 < v <= 1.0:
            raise ParameterError("fouling.UA_min_fraction", v, "must be within (0, 1]")


@dataclass(frozen=True)
class Jacket:
    """Jacket fluid and utilities (split range: heating by hot thermal oil, cooling by chilled water).

    Utility duty [W] at controller output u in [-1, 1]:
        u > 0:  u * kA_heat * (T_hot_supply - T_j)     (heating, can't exceed the supply temperature)
        u < 0:  u * kA_cool * (T_j - T_cold_supply)    (cooling, can't go below the chilled water)
    """

    heat_capacity_J_per_K: float = 1.2e6       # ~0.3 m3 of water/glycol in jacket and loop
    kA_heat_W_per_K: float = 2000.0
    T_hot_supply_K: float = 453.15             # 180 degC thermal oil
    kA_cool_W_per_K: float = 3000.0
    T_cold_supply_K: float = 278.15            # 5 degC chilled water
    UA_ambient_W_per_K: float = 30.0           # jacket losses to the plant room
    T_ambient_K: float = 293.15

    def __post_init__(self) -> None:
        _positive("jacket.heat_capacity_J_per_K", self.heat_capacity_J_per_K)
        _positive("jacket.kA_heat_W_per_K", self.kA_heat_W_per_K)
        _temperature("jacket.T_hot_supply_K", self.T_hot_supply_K)
        _positive("jacket.kA_cool_W_per_K", self.kA_cool_W_per_K)
        _temperature("jacket.T_cold_supply_K", self.T_cold_supply_K)
        _non_negative("jacket.UA_ambient_W_per_K", self.UA_ambient_W_per_K)
        _temperature("jacket.T_ambient_K", self.T_ambient_K)
        if not self.T_cold_supply_K < self.T_hot_supply_K:
            raise ParameterError("jacket.T_cold_supply_K", self.T_cold_supply_K, "must be below T_hot_supply_K")


@dataclass(frozen=True)
class Pid:
    """Jacket temperature controller: PID on the measured jacket temperature, output -1..+1.

    Parallel form u = Kp (e + I + D): integral with back-calculation anti-windup (tracking time
    Tt_s), derivative on the measurement with a first-order filter (Td_s / derivative_filter_N),
    output clamped to [-1, 1] and slew-limited to rate_limit_per_s.
    """

    Kp_per_K: float = 0.08
    Ti_s: float = 240.0
    Td_s: float = 0.0
    derivative_filter_N: float = 10.0
    Tt_s: float = 60.0
    rate_limit_per_s: float = 0.05

    def __post_init__(self) -> None:
        _positive("pid.Kp_per_K", self.Kp_per_K)
        _positive("pid.Ti_s", self.Ti_s)
        _non_negative("pid.Td_s", self.Td_s)
        _positive("pid.derivative_filter_N", self.derivative_filter_N)
        _positive("pid.Tt_s", self.Tt_s)
        _positive("pid.rate_limit_per_s", self.rate_limit_per_s)


@dataclass(frozen=True)
class ChargeVariation:
    """Batch-to-batch variation of the charge (mismatch.charge_variation) and what is recorded.

    The nominal charge is the vessel's (``vessel.charge``: c_A0, T0). True c_A0 = nominal *
    (1 + N(0, c_A0_rsd)); true T0 = nominal + N(0, T0_sd); raw-material activity (a factor on k1)
    = exp(N(0, activity_sd)). Draws are clipped to +-3 sigma. The plant records the charged amount
    by weighing: recorded c_A0 = true * (1 + N(0, record_rsd)).
    """

    c_A0_rsd: float = 0.02
    T0_sd_K: float = 2.0
    activity_sd: float = 0.05
    record_rsd: float = 0.003

    def __post_init__(self) -> None:
        _fraction("charge.c_A0_rsd", self.c_A0_rsd, 0.2)
        _non_negative("charge.T0_sd_K", self.T0_sd_K)
        _fraction("charge.activity_sd", self.activity_sd, 0.5)
        _fraction("charge.record_rsd", self.record_rsd, 0.1)


@dataclass(frozen=True)
class SensorSpec:
    """One temperature transmitter: first-order lag, Gaussian noise, quantisation."""

    tau_s: float = 10.0
    noise_sd_K: float = 0.05
    quantum_K: float = 0.01

    def __post_init__(self) -> None:
        _non_negative("sensors.tau_s", self.tau_s)
        _non_negative("sensors.noise_sd_K", self.noise_sd_K)
        _non_negative("sensors.quantum_K", self.quantum_K)


@dataclass(frozen=True)
class Sensors:
    """Transmitters (mismatch.sensors) and the injectable faults on T_reactor."""

    T_reactor: SensorSpec = field(default_factory=lambda: SensorSpec(10.0, 0.05, 0.01))
    T_jacket: SensorSpec = field(default_factory=lambda: SensorSpec(5.0, 0.05, 0.01))
    drift_K_per_s: float = 0.005          # drift fault: 0.3 K/min
    spike_K: float = 8.0                  # spike fault: +-8 K for one scan ...
    spike_probability_per_s: float = 0.02  # ... about once every 50 s

    def __post_init__(self) -> None:
        for name in ("T_reactor", "T_jacket"):
            if not isinstance(getattr(self, name), SensorSpec):
                raise ParameterTypeError(f"sensors.{name}", getattr(self, name), "a table")
        _number("sensors.drift_K_per_s", self.drift_K_per_s)
        _non_negative("sensors.spike_K", self.spike_K)
        _fraction("sensors.spike_probability_per_s", self.spike_probability_per_s, 10.0)


@dataclass(frozen=True)
class Lab:
    """Lab assays of c_B and c_C: result arrives U(delay_min, delay_max) after the sample is drawn,
    with a relative error N(0, rsd) (mismatch.lab_error)."""

    delay_min_s: float = 1800.0
    delay_max_s: float = 2700.0
    rsd: float = 0.015

    def __post_init__(self) -> None:
        _non_negative("lab.delay_min_s", self.delay_min_s)
        _non_negative("lab.delay_max_s", self.delay_max_s)
        if self.delay_max_s < self.delay_min_s:
            raise ParameterError("lab.delay_max_s", self.delay_max_s, "must be >= delay_min_s")
        _fraction("lab.rsd", self.rsd, 0.5)


@dataclass(frozen=True)
class Phases:
    """What each ISA-88 phase does (see plant_sim.plc)."""

    charge_time_s: float = 600.0          # Charging lasts this long, jacket at the programme start
    heating_band_K: float = 5.0           # Heating ends when T_reactor is this close to T_jacket_sp
    cooling_T_jacket_K: float = 288.15    # Cooling / Complete / Aborted jacket setpoint
    T_safe_K: float = 323.15              # Cooling ends (Complete) below this reactor temperature
    idle_T_jacket_K: float = 298.15       # Idle jacket setpoint

    def __post_init__(self) -> None:
        _non_negative("phases.charge_time_s", self.charge_time_s)
        _positive("phases.heating_band_K", self.heating_band_K)
        _temperature("phases.cooling_T_jacket_K", self.cooling_T_jacket_K)
        _temperature("phases.T_safe_K", self.T_safe_K)
        _temperature("phases.idle_T_jacket_K", self.idle_T_jacket_K)
        if not self.cooling_T_jacket_K < self.T_safe_K:
            raise ParameterError("phases.cooling_T_jacket_K", self.cooling_T_jacket_K, "must be below T_safe_K")


@dataclass(frozen=True)
class Alarms:
    """Alarm and interlock settings (T_high_alarm and T_trip themselves are PLC settings)."""

    T_high_alarm_K: float = 368.15        # initial value of the setting T_high_alarm
    T_trip_K: float = 378.15              # initial value of the setting T_trip
    trip_delay_s: float = 1.0             # T above T_trip this long trips (filters single spikes)
    dTdt_limit_K_per_s: float = 0.05      # high dT/dt alarm: 3 K/min
    dTdt_filter_s: float = 30.0           # dT/dt from a filtered T (noise would trip it otherwise)
    jacket_deviation_K: float = 10.0
    jacket_deviation_delay_s: float = 600.0
    lab_c_C_max_mol_per_m3: float = 450.0  # impurity specification on the lab result
    stuck_detect_s: float = 30.0          # T_reactor unchanged this long = stuck transmitter
    spike_detect_K: float = 3.0           # a jump larger than this in one scan = spike

    def __post_init__(self) -> None:
        _temperature("alarms.T_high_alarm_K", self.T_high_alarm_K)
        _temperature("alarms.T_trip_K", self.T_trip_K)
        if self.T_high_alarm_K > self.T_trip_K:
            raise ParameterError("alarms.T_high_alarm_K", self.T_high_alarm_K, "must be <= T_trip_K")
        _non_negative("alarms.trip_delay_s", self.trip_delay_s)
        _positive("alarms.dTdt_limit_K_per_s", self.dTdt_limit_K_per_s)
        _positive("alarms.dTdt_filter_s", self.dTdt_filter_s)
        _positive("alarms.jacket_deviation_K", self.jacket_deviation_K)
        _non_negative("alarms.jacket_deviation_delay_s", self.jacket_deviation_delay_s)
        _positive("alarms.lab_c_C_max_mol_per_m3", self.lab_c_C_max_mol_per_m3)
        _positive("alarms.stuck_detect_s", self.stuck_detect_s)
        _positive("alarms.spike_detect_K", self.spike_detect_K)


@dataclass(frozen=True)
class Runaway:
    """Simulation hook ``inject_runaway``: a self-heating decomposition adds heat_W to the charge
    until the interlock's emergency quench stops it (or Reset)."""

    heat_W: float = 5.0e5

    def __post_init__(self) -> None:
        _positive("runaway.heat_W", self.heat_W)


@dataclass(frozen=True)
class PlcTiming:
    """PLC scan cycle [s of plant time]."""

    scan_s: float = 0.1

    def __post_init__(self) -> None:
        v = _number("plc.scan_s", self.scan_s)
        if not 1e-3 <= v <= 60.0:
            raise ParameterError("plc.scan_s", v, "must be within [0.001, 60] s")


@dataclass(frozen=True)
class PlantConfig:
    """Everything that defines the simulated plant (the vessel itself comes from ``vessel``)."""

    mismatch: Mismatch = field(default_factory=Mismatch)
    kinetics: PlantKinetics = field(default_factory=PlantKinetics)
    side_reaction: SideReaction = field(default_factory=SideReaction)
    fouling: Fouling = field(default_factory=Fouling)
    jacket: Jacket = field(default_factory=Jacket)
    pid: Pid = field(default_factory=Pid)
    charge: ChargeVariation = field(default_factory=ChargeVariation)
    sensors: Sensors = field(default_factory=Sensors)
    lab: Lab = field(default_factory=Lab)
    phases: Phases = field(default_factory=Phases)
    alarms: Alarms = field(default_factory=Alarms)
    runaway: Runaway = field(default_factory=Runaway)
    plc: PlcTiming = field(default_factory=PlcTiming)
    vessel: ModelParams = field(default_factory=ModelParams)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ParameterTypeError(name, getattr(self, name), cls.__name__)
        if not isinstance(self.vessel, ModelParams):
            raise ParameterTypeError("vessel", self.vessel, "ModelParams")

    @classmethod
    def ideal(cls, **sections: Any) -> PlantConfig:
        """Every mismatch switched off: the plant's truth is twin_core's model (other sections may
        be given as keyword arguments)."""
        off = Mismatch(**{f.name: False for f in fields(Mismatch)})
        return cls(mismatch=off, **sections)


_SECTIONS: dict[str, type] = {
    "mismatch": Mismatch, "kinetics": PlantKinetics, "side_reaction": SideReaction, "fouling": Fouling,
    "jacket": Jacket, "pid": Pid, "charge": ChargeVariation, "sensors": Sensors, "lab": Lab,
    "phases": Phases, "alarms": Alarms, "runaway": Runaway, "plc": PlcTiming,
}


def _build(cls: type, data: Mapping[str, Any], path: str, source: str) -> Any:
    if not isinstance(data, Mapping):
        raise ParameterTypeError(path, data, "a table")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ParameterError(f"{path}.{key}", value, f"unknown key in {source}; expected one of {sorted(known)}")
        if cls is Sensors and key in ("T_reactor", "T_jacket"):
            kwargs[key] = _build(SensorSpec, value, f"{path}.{key}", source)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_from_mapping(data: Mapping[str, Any], source: str = "<mapping>") -> PlantConfig:
    """Build a PlantConfig from a nested mapping ``{table: {key: value}}``; unknown keys raise
    ParameterError. A ``[vessel]`` table takes twin_core's ``kinetics``/``reactor``/``charge`` layout
    (``[vessel.reactor]`` ...) to describe a different vessel."""
    from twin_core.params import params_from_mapping

    kwargs: dict[str, Any] = {}
    for name, values in data.items():
        if name == "vessel":
            if not isinstance(values, Mapping):
                raise ParameterTypeError("vessel", values, "a table")
            kwargs["vessel"] = params_from_mapping(values, source=f"{source} [vessel]")
        elif name in _SECTIONS:
            kwargs[name] = _build(_SECTIONS[name], values, name, source)
        else:
            raise ParameterError(name, values, f"unknown table in {source}; expected one of {sorted([*_SECTIONS, 'vessel'])}")
    return PlantConfig(**kwargs)


def load_plant_config(path: str | Path | None = None) -> PlantConfig:
    """Load a plant configuration TOML (None: the shipped default plant_sim/plant.toml)."""
    p = DEFAULT_CONFIG_PATH if path is None else Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError(str(p), None, f"not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ParameterError(str(p), None, f"cannot read: {exc}") from exc
    return config_from_mapping(data, source=str(p))
