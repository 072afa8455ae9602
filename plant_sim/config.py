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

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from twin_core.errors import ParameterError
from twin_core.params import ModelParams
from twin_core.validate import from_mapping, load_toml, spec, validated

DEFAULT_CONFIG_PATH = Path(__file__).with_name("plant.toml")
"""The default plant configuration shipped with the package (equal to ``PlantConfig()``)."""


# -- sections ------------------------------------------------------------------------------------
@validated("mismatch")
class Mismatch:
    """Switches: each True makes the plant differ from twin_core in one documented way."""

    kinetics: bool = spec(True, kind="bool")  # plant's k1_ref, k2_ref, E1, E2 instead of the twin's
    side_reaction: bool = spec(True, kind="bool")  # B -> C catalysed by C (r3 = k3(T) c_B c_C), unknown to the twin
    fouling: bool = spec(True, kind="bool")  # UA falls batch after batch, recovers at cleaning
    jacket_dynamics: bool = spec(True, kind="bool")  # jacket energy balance + utilities + PID (off: T_j = setpoint)
    charge_variation: bool = spec(True, kind="bool")  # c_A0, T0 and raw-material activity vary from batch to batch
    sensors: bool = spec(True, kind="bool")  # lag, noise, quantisation (off: measurements = truth)
    lab_error: bool = spec(True, kind="bool")  # assay error on lab results (off: exact results; delay stays)


@validated("kinetics")
class PlantKinetics:
    """The plant's true A -> B -> C kinetics (used when mismatch.kinetics is on).

    Defaults differ from twin_core's Kinetics by +20 % (k1_ref), +25 % (k2_ref), -12 % (E1) and
    +15 % (E2); T_ref and the reaction enthalpies are the twin's.
    """

    k1_ref_per_s: float = spec(2.22e-4, unit="1/s", gt=0.0)
    k2_ref_per_s: float = spec(6.875e-5, unit="1/s", gt=0.0)
    E1_J_per_mol: float = spec(61.6e3, unit="J/mol", gt=0.0)
    E2_J_per_mol: float = spec(115.0e3, unit="J/mol", gt=0.0)


@validated("side_reaction")
class SideReaction:
    """Degradation of B catalysed by C: B -> C, r3 = k3(T) c_B c_C (second order)."""

    k3_ref_m3_per_mol_s: float = spec(1.0e-7, unit="m3/(mol.s)", gt=0.0)
    E3_J_per_mol: float = spec(90.0e3, unit="J/mol", gt=0.0)
    # No enthalpy of its own: the overall change B -> C is the same as reaction 2's, so (enthalpy
    # being a state function) it releases dH2 per mol whichever path it takes.


@validated("fouling")
class Fouling:
    """Heat-transfer fouling: UA = UA_clean * max(UA_min_fraction, (1 - loss_per_batch)**n), n the
    batches since the last cleaning (with mismatch.fouling off, UA is twin_core's value)."""

    UA_clean_W_per_K: float = spec(1500.0, unit="W/K", gt=0.0)
    loss_per_batch: float = spec(0.02, ge=0.0, lt=0.5)
    UA_min_fraction: float = spec(0.6, gt=0.0, le=1.0)


@validated("jacket")
class Jacket:
    """Jacket fluid and utilities (split range: heating by hot thermal oil, cooling by chilled water).

    Utility duty [W] at controller output u in [-1, 1]:
        u > 0:  u * kA_heat * (T_hot_supply - T_j)     (heating, can't exceed the supply temperature)
        u < 0:  u * kA_cool * (T_j - T_cold_supply)    (cooling, can't go below the chilled water)
    """

    heat_capacity_J_per_K: float = spec(1.2e6, unit="J/K", gt=0.0)  # ~0.3 m3 of water/glycol in jacket and loop
    kA_heat_W_per_K: float = spec(2000.0, unit="W/K", gt=0.0)
    T_hot_supply_K: float = spec(453.15, unit="K", kind="temperature")  # 180 degC thermal oil
    kA_cool_W_per_K: float = spec(3000.0, unit="W/K", gt=0.0)
    T_cold_supply_K: float = spec(278.15, unit="K", kind="temperature")  # 5 degC chilled water
    UA_ambient_W_per_K: float = spec(30.0, unit="W/K", ge=0.0)  # jacket losses to the plant room
    T_ambient_K: float = spec(293.15, unit="K", kind="temperature")

    def __post_init__(self) -> None:
        if not self.T_cold_supply_K < self.T_hot_supply_K:
            raise ParameterError("jacket.T_cold_supply_K", self.T_cold_supply_K, "must be below T_hot_supply_K")


@validated("pid")
class Pid:
    """Jacket temperature controller: PID on the measured jacket temperature, output -1..+1.

    Parallel form u = Kp (e + I + D): integral with back-calculation anti-windup (tracking time
    Tt_s), derivative on the measurement with a first-order filter (Td_s / derivative_filter_N),
    output clamped to [-1, 1] and slew-limited to rate_limit_per_s.
    """

    Kp_per_K: float = spec(0.08, unit="1/K", gt=0.0)
    Ti_s: float = spec(240.0, unit="s", gt=0.0)
    Td_s: float = spec(0.0, unit="s", ge=0.0)
    derivative_filter_N: float = spec(10.0, gt=0.0)
    Tt_s: float = spec(60.0, unit="s", gt=0.0)
    rate_limit_per_s: float = spec(0.05, unit="1/s", gt=0.0)


@validated("charge")
class ChargeVariation:
    """Batch-to-batch variation of the charge (mismatch.charge_variation) and what is recorded.

    The nominal charge is the vessel's (``vessel.charge``: c_A0, T0). True c_A0 = nominal *
    (1 + N(0, c_A0_rsd)); true T0 = nominal + N(0, T0_sd); raw-material activity (a factor on k1)
    = exp(N(0, activity_sd)). Draws are clipped to +-3 sigma. The plant records the charged amount
    by weighing: recorded c_A0 = true * (1 + N(0, record_rsd)).
    """

    c_A0_rsd: float = spec(0.02, ge=0.0, lt=0.2)
    T0_sd_K: float = spec(2.0, unit="K", ge=0.0)
    activity_sd: float = spec(0.05, ge=0.0, lt=0.5)
    record_rsd: float = spec(0.003, ge=0.0, lt=0.1)


@validated("sensors")
class SensorSpec:
    """One temperature transmitter: first-order lag, Gaussian noise, quantisation."""

    tau_s: float = spec(10.0, unit="s", ge=0.0)
    noise_sd_K: float = spec(0.05, unit="K", ge=0.0)
    quantum_K: float = spec(0.01, unit="K", ge=0.0)


@validated("sensors")
class Sensors:
    """Transmitters (mismatch.sensors) and the injectable faults on T_reactor."""

    T_reactor: SensorSpec = spec(kind=SensorSpec, default_factory=lambda: SensorSpec(10.0, 0.05, 0.01))
    T_jacket: SensorSpec = spec(kind=SensorSpec, default_factory=lambda: SensorSpec(5.0, 0.05, 0.01))
    drift_K_per_s: float = spec(0.005, unit="K/s")  # drift fault: 0.3 K/min
    spike_K: float = spec(8.0, unit="K", ge=0.0)  # spike fault: +-8 K for one scan ...
    spike_probability_per_s: float = spec(0.02, unit="1/s", ge=0.0, lt=10.0)  # ... about once every 50 s


@validated("lab")
class Lab:
    """Lab assays of c_B and c_C: result arrives U(delay_min, delay_max) after the sample is drawn,
    with a relative error N(0, rsd) (mismatch.lab_error)."""

    delay_min_s: float = spec(1800.0, unit="s", ge=0.0)
    delay_max_s: float = spec(2700.0, unit="s", ge=0.0)
    rsd: float = spec(0.015, ge=0.0, lt=0.5)

    def __post_init__(self) -> None:
        if self.delay_max_s < self.delay_min_s:
            raise ParameterError("lab.delay_max_s", self.delay_max_s, "must be >= delay_min_s")


@validated("phases")
class Phases:
    """What each ISA-88 phase does (see plant_sim.plc)."""

    charge_time_s: float = spec(600.0, unit="s", ge=0.0)  # Charging lasts this long, jacket at the programme start
    heating_band_K: float = spec(5.0, unit="K", gt=0.0)  # Heating ends when T_reactor is this close to T_jacket_sp
    cooling_T_jacket_K: float = spec(288.15, unit="K", kind="temperature")  # Cooling / Complete / Aborted jacket setpoint
    T_safe_K: float = spec(323.15, unit="K", kind="temperature")  # Cooling ends (Complete) below this reactor temperature
    idle_T_jacket_K: float = spec(298.15, unit="K", kind="temperature")  # Idle jacket setpoint

    def __post_init__(self) -> None:
        if not self.cooling_T_jacket_K < self.T_safe_K:
            raise ParameterError("phases.cooling_T_jacket_K", self.cooling_T_jacket_K, "must be below T_safe_K")


@validated("alarms")
class Alarms:
    """Alarm and interlock settings (T_high_alarm and T_trip themselves are PLC settings)."""

    T_high_alarm_K: float = spec(368.15, unit="K", kind="temperature")  # initial value of the setting T_high_alarm
    T_trip_K: float = spec(378.15, unit="K", kind="temperature")  # initial value of the setting T_trip
    trip_delay_s: float = spec(1.0, unit="s", ge=0.0)  # T above T_trip this long trips (filters single spikes)
    dTdt_limit_K_per_s: float = spec(0.05, unit="K/s", gt=0.0)  # high dT/dt alarm: 3 K/min
    dTdt_filter_s: float = spec(30.0, unit="s", gt=0.0)  # dT/dt from a filtered T (noise would trip it otherwise)
    jacket_deviation_K: float = spec(10.0, unit="K", gt=0.0)
    jacket_deviation_delay_s: float = spec(600.0, unit="s", ge=0.0)
    lab_c_C_max_mol_per_m3: float = spec(450.0, unit="mol/m3", gt=0.0)  # impurity specification on the lab result
    stuck_detect_s: float = spec(30.0, unit="s", gt=0.0)  # T_reactor unchanged this long = stuck transmitter
    spike_detect_K: float = spec(3.0, unit="K", gt=0.0)  # a jump larger than this in one scan = spike

    def __post_init__(self) -> None:
        if self.T_high_alarm_K > self.T_trip_K:
            raise ParameterError("alarms.T_high_alarm_K", self.T_high_alarm_K, "must be <= T_trip_K")


@validated("runaway")
class Runaway:
    """Simulation hook ``inject_runaway``: a self-heating decomposition adds heat_W to the charge
    until the interlock's emergency quench stops it (or Reset)."""

    heat_W: float = spec(5.0e5, unit="W", gt=0.0)


@validated("plc")
class PlcTiming:
    """PLC scan cycle [s of plant time]."""

    scan_s: float = spec(0.1, unit="s", ge=1e-3, le=60.0)


@validated("")
class PlantConfig:
    """Everything that defines the simulated plant (the vessel itself comes from ``vessel``)."""

    mismatch: Mismatch = spec(kind=Mismatch, default_factory=Mismatch)
    kinetics: PlantKinetics = spec(kind=PlantKinetics, default_factory=PlantKinetics)
    side_reaction: SideReaction = spec(kind=SideReaction, default_factory=SideReaction)
    fouling: Fouling = spec(kind=Fouling, default_factory=Fouling)
    jacket: Jacket = spec(kind=Jacket, default_factory=Jacket)
    pid: Pid = spec(kind=Pid, default_factory=Pid)
    charge: ChargeVariation = spec(kind=ChargeVariation, default_factory=ChargeVariation)
    sensors: Sensors = spec(kind=Sensors, default_factory=Sensors)
    lab: Lab = spec(kind=Lab, default_factory=Lab)
    phases: Phases = spec(kind=Phases, default_factory=Phases)
    alarms: Alarms = spec(kind=Alarms, default_factory=Alarms)
    runaway: Runaway = spec(kind=Runaway, default_factory=Runaway)
    plc: PlcTiming = spec(kind=PlcTiming, default_factory=PlcTiming)
    vessel: ModelParams = spec(kind=ModelParams, default_factory=ModelParams)

    @classmethod
    def ideal(cls, **sections: Any) -> PlantConfig:
        """Every mismatch switched off: the plant's truth is twin_core's model (other sections may
        be given as keyword arguments)."""
        off = Mismatch(**{f.name: False for f in fields(Mismatch)})
        return cls(mismatch=off, **sections)


def config_from_mapping(data: Mapping[str, Any], source: str = "<mapping>") -> PlantConfig:
    """Build a PlantConfig from a nested mapping ``{table: {key: value}}``; unknown keys raise
    ParameterError. A ``[vessel]`` table takes twin_core's ``kinetics``/``reactor``/``charge`` layout
    (``[vessel.reactor]`` ...) to describe a different vessel."""
    return from_mapping(PlantConfig, data, source)


def load_plant_config(path: str | Path | None = None) -> PlantConfig:
    """Load a plant configuration TOML (None: the shipped default plant_sim/plant.toml)."""
    p = DEFAULT_CONFIG_PATH if path is None else Path(path)
    return config_from_mapping(load_toml(p), source=str(p))
