"""The plant's PLC: scan cycle, ISA-88-style batch phases, jacket control, interlock, alarms.

One ``Plc`` object is the whole simulated plant as seen from outside: the hidden truth
(plant_sim.truth), the transmitters (plant_sim.sensors), the lab (plant_sim.lab) and the PLC logic.
It implements plant_sim.interface.PlcPort (the names, ranges, phase rules and commands
are those of the one declaration, twin_core.signals.plc), which the Modbus server (plant_sim.modbus_server) and
the fast data-set generator (plant_sim.dataset) both drive.

Scan (every ``plc.scan_s`` of plant time; plant time = scan_count * scan_s, never accumulated):
  1. the truth advances one scan with the controller output of the previous scan held;
  2. the transmitters read T_reactor and T_jacket;
  3. the batch clock ticks (only in Charging, Heating, Reacting, Cooling; frozen while Held);
  4. lab results that are due arrive; samples are drawn when batch time reaches a multiple of
     recipe_sample_interval (in Charging/Heating/Reacting, while batch time < recipe_end_time)
     and once more when Reacting ends (the end-of-reaction sample);
  5. phase transitions, then the interlock;
  6. the jacket setpoint for the phase, and the PID computes the output for the next scan;
  7. alarms (active = condition present; unacked = latched on each rising edge until ack_alarms):
     HIGH_T T_reactor > T_high_alarm; HIGH_DTDT filtered dT/dt > alarms.dTdt_limit_K_per_s;
     JACKET_DEVIATION |T_jacket - T_jacket_sp| > alarms.jacket_deviation_K for
     alarms.jacket_deviation_delay_s in Charging/Heating/Reacting; LAB_OUT_OF_SPEC last lab c_C above
     alarms.lab_c_C_max_mol_per_m3; INTERLOCK_TRIP from the trip until Reset; SENSOR_FAULT
     T_reactor dropout (NaN), stuck (unchanged for alarms.stuck_detect_s) or spike (a jump above
     alarms.spike_detect_K in one scan; held 10 s); OUT_OF_RANGE a published measurement saturated.

Published measurements saturate at their signal's declared range (twin_core.signals.plc, the
register map's min/max), as an analogue input card does at the ends of its range: T_reactor and
T_jacket each scan (the PLC logic sees the saturated reading, as a real PLC would), lab results when
they arrive; OUT_OF_RANGE is active while one is saturated.

Phases:
  Idle      vessel empty; jacket at phases.idle_T_jacket_K. ``start`` charges a new batch.
  Charging  phases.charge_time_s after Start; the charge is in (at its own T0), jacket at the
            programme's first temperature recipe_T_0.
  Heating   jacket follows the programme recipe_T(batch_time); ends when T_reactor is within
            phases.heating_band_K of the first hold temperature: the temperature of the first flat
            programme segment (two equal consecutive points) starting at or after the end of
            Charging, or the last programme temperature if there is none (see ``hold_target``).
  Reacting  jacket follows the programme; ends when batch_time >= recipe_end_time.
  Cooling   jacket at phases.cooling_T_jacket_K; ends when T_reactor < phases.T_safe_K.
  Complete  jacket stays at the cooling setpoint; ``reset`` discharges the vessel (-> Idle).
  Held      programme, batch clock and jacket setpoint frozen (the reaction goes on);
            ``resume`` returns to the phase that was held.
  Aborted   full cooling (output forced to -1). Entered by ``abort`` or by the interlock:
            T_reactor above T_trip for alarms.trip_delay_s, in every phase (Aborted included: it
            then quenches a runaway injected after an abort or an earlier trip; the interlock also
            quenches an injected runaway). ``reset`` (-> Idle) is refused while T_reactor >= T_trip.

Settings: recipe_* and T_trip may be written only in Idle, Complete, Aborted or Held. Writes in
Held are the documented path to change a recipe mid-batch: Hold, write, Resume; the programme in
force is taken from the settings at Start and at Resume, where it is checked as a whole (times
strictly increasing from 0, ...): an inconsistent recipe makes Start/Resume raise PlcCommandError.
T_high_alarm and the simulation hooks may be written in any phase. Every write is checked
(finite, in range, integer where the setting is an integer, T_high_alarm <= T_trip) and refused
with PlcWriteError leaving everything unchanged.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from plant_sim.config import PlantConfig
from plant_sim.interface import PlcCommandError, PlcWriteError
from plant_sim.lab import LabAssay, LabResult
from plant_sim.pid import PidController
from plant_sim.sensors import RandomStream, TemperatureSensor
from plant_sim.truth import Truth
from twin_core.errors import ParameterError
from twin_core.recipe import DEFAULT_RECIPE, Recipe
from twin_core.signals.plc import (
    COMMAND_NAMES,
    PLC_SIM_HOOKS,
    RECIPE_MAX_POINTS,
    RECIPE_WRITABLE_PHASES,
    SCAN_COUNT_MODULUS,
    SETTING_RULES,
    Alarm,
    Phase,
    SensorFault,
    plc_signal,
)

log = logging.getLogger(__name__)

RUNNING = frozenset({Phase.CHARGING, Phase.HEATING, Phase.REACTING, Phase.COOLING})
"""Phases in which the batch clock runs."""
_DEVIATION_PHASES = frozenset({Phase.CHARGING, Phase.HEATING, Phase.REACTING})
SIMULATION_SETTINGS = tuple(s.name for s in PLC_SIM_HOOKS)
"""Writable simulation hooks (also in the snapshot)."""
_COMMANDS = (*COMMAND_NAMES, "inject_runaway")
"""Commands Plc.command accepts: the interface's, plus the simulation hook as a command."""
SPIKE_ALARM_HOLD_S = 10.0
"""A detected spike keeps the sensor-fault alarm active this long [s] (visible to a poller)."""
_EPS = 1e-9
_HIGH_T, _HIGH_DTDT, _JACKET_DEVIATION = int(Alarm.HIGH_T), int(Alarm.HIGH_DTDT), int(Alarm.JACKET_DEVIATION)
_LAB_OUT_OF_SPEC, _INTERLOCK_TRIP, _SENSOR_FAULT = (int(Alarm.LAB_OUT_OF_SPEC), int(Alarm.INTERLOCK_TRIP),
                                                    int(Alarm.SENSOR_FAULT))
_OUT_OF_RANGE = int(Alarm.OUT_OF_RANGE)


def _range_of(name: str) -> tuple[float, float]:
    sig = plc_signal(name)
    return sig.min, sig.max


T_REACTOR_RANGE_K = _range_of("T_reactor")
T_JACKET_RANGE_K = _range_of("T_jacket")
LAB_C_B_RANGE_MOL_PER_M3 = _range_of("lab_c_B")
LAB_C_C_RANGE_MOL_PER_M3 = _range_of("lab_c_C")
"""The declared ranges the published measurements saturate at."""


def saturate(value: float, lo_hi: tuple[float, float]) -> tuple[float, bool]:
    """(value clamped to [lo, hi], whether it was outside); NaN stays NaN (no value is not out of range)."""
    lo, hi = lo_hi
    if value > hi:
        return hi, True
    if value < lo:
        return lo, True
    return value, False


def hold_target(recipe: Recipe, charge_time_s: float) -> float:
    """Temperature of the programme's first hold after Charging [K]: the first flat segment (two
    equal consecutive points) starting at or after ``charge_time_s``, else the last point."""
    ts, Ts = recipe.times_s, recipe.temps_K
    for i in range(len(ts) - 1):
        if ts[i] >= charge_time_s - _EPS and Ts[i] == Ts[i + 1]:
            return Ts[i]
    return Ts[-1]


@dataclass(frozen=True)
class BatchRecord:
    """What is known of one batch's charge: ``recorded_*`` a plant knows, ``true_*`` only scoring."""

    batch_id: int
    start_plant_time_s: float
    recorded_c_A0_mol_per_m3: float
    batches_since_cleaning: int
    true_c_A0_mol_per_m3: float
    true_T0_K: float
    true_activity: float
    true_UA_W_per_K: float


class Plc:
    """The simulated plant and its PLC (implements plant_sim.interface.PlcPort).

    ``seed`` fixes every random draw (charges, sensor noise, lab errors and delays): the same
    configuration, seed and sequence of calls give the same plant, bit for bit.
    """

    def __init__(self, config: PlantConfig | None = None, seed: int = 0) -> None:
        self.config = cfg = config if config is not None else PlantConfig()
        self.scan_s = dt = cfg.plc.scan_s
        m = cfg.mismatch
        streams = np.random.SeedSequence(int(seed)).spawn(5)
        self._charge_rng = np.random.default_rng(streams[0])
        s = cfg.sensors
        self.sensor_T_reactor = TemperatureSensor(
            s.T_reactor, dt, RandomStream(np.random.default_rng(streams[1])), ideal=not m.sensors,
            drift_K_per_s=s.drift_K_per_s, spike_K=s.spike_K, spike_probability_per_s=s.spike_probability_per_s)
        self.sensor_T_jacket = TemperatureSensor(s.T_jacket, dt, RandomStream(np.random.default_rng(streams[2])),
                                                 ideal=not m.sensors)
        self.lab = LabAssay(cfg.lab, dt, RandomStream(np.random.default_rng(streams[3])), exact=not m.lab_error)
        self.pid = PidController(cfg.pid, dt)
        T_idle = cfg.phases.idle_T_jacket_K
        self.truth = Truth(cfg, (0.0, 0.0, 0.0, T_idle, T_idle), self._UA_for(0))

        self._settings: dict[str, float] = {name: 0.0 for name in SETTING_RULES}
        self._settings.update({"T_trip": cfg.alarms.T_trip_K, "T_high_alarm": cfg.alarms.T_high_alarm_K})
        for i in range(RECIPE_MAX_POINTS):
            self._settings[f"recipe_T_{i}"] = T_idle
        self._put_recipe(self._settings, DEFAULT_RECIPE, sample_interval_s=1800.0)

        self.phase = Phase.IDLE
        self._held_phase = Phase.IDLE
        self.batch_id = 0
        self.scan_count = 0           # unbounded here; published modulo 2**32
        self._batch_scans = 0
        self._recipe: Recipe = DEFAULT_RECIPE
        self._hold_target = hold_target(DEFAULT_RECIPE, cfg.phases.charge_time_s)
        self._next_sample = 1
        self.batches_since_cleaning = 0
        self.batch: BatchRecord | None = None  # the batch in the vessel (None when Idle)
        self.last_batch: BatchRecord | None = None  # the last batch started
        self.T_jacket_sp = T_idle
        self.T_reactor = self.sensor_T_reactor.read(T_idle, 0.0)
        self.T_jacket = self.sensor_T_jacket.read(T_idle, 0.0)
        self.lab_c_B = math.nan
        self.lab_c_C = math.nan
        self.lab_sample_time = math.nan
        self.lab_valid = 0
        self.lab_seq = 0
        self.last_lab: LabResult | None = None
        self.lab_history: list[LabResult] = []  # results of the current batch, in order of arrival
        self._active = 0   # Alarm bits as a plain int (IntFlag arithmetic is slow in the scan)
        self._unacked = 0
        self._tripped = False
        self._trip_scans = 0
        self._T_saturated = False    # T_reactor or T_jacket saturated at its range this scan
        self._lab_saturated = False  # the last lab result saturated at its range
        self._dev_scans = 0
        self._stuck_scans = 0
        self._spike_scans_left = 0
        self._prev_reading = self.T_reactor
        self._filter_a = 1.0 - math.exp(-dt / cfg.alarms.dTdt_filter_s)
        self._f1 = self._f2 = self.T_reactor
        self.dTdt_K_per_s = 0.0

    # -- clocks ----------------------------------------------------------------------------------
    @property
    def plant_time(self) -> float:
        """PLC clock [s of plant time]."""
        return self.scan_count * self.scan_s

    @property
    def batch_time(self) -> float:
        """Time since Start, frozen while Held and after the batch [s]."""
        return self._batch_scans * self.scan_s

    @property
    def recipe(self) -> Recipe:
        """The programme in force (taken from the settings at the last Start or Resume)."""
        return self._recipe

    # -- PlcPort -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, float]:
        """Every non-command signal of twin_core.signals.plc by name: measurements, settings, simulation
        hooks and the simulation-only truth (input registers 900..)."""
        snap = {
            "T_reactor": self.T_reactor,
            "T_jacket": self.T_jacket,
            "T_jacket_sp": self.T_jacket_sp,
            "pid_output": self.pid.output,
            "phase": float(self.phase),
            "batch_id": float(self.batch_id),
            "batch_time": self.batch_time,
            "recipe_step": float(self.recipe_step),
            "lab_c_B": self.lab_c_B,
            "lab_c_C": self.lab_c_C,
            "lab_sample_time": self.lab_sample_time,
            "lab_valid": float(self.lab_valid),
            "lab_seq": float(self.lab_seq),
            "alarms_active": float(self._active),
            "alarms_unacked": float(self._unacked),
            "plant_time": self.plant_time,
            "scan_count": float(self.scan_count % SCAN_COUNT_MODULUS),
        }
        # SIMULATION ONLY: the hidden truth, for scoring (input registers 900..913).
        x = self.truth.x
        snap["sim_truth_scan_count"] = snap["scan_count"]
        snap["sim_true_c_A"], snap["sim_true_c_B"], snap["sim_true_c_C"] = x[0], x[1], x[2]
        snap["sim_true_T_reactor"], snap["sim_true_T_jacket"] = x[3], x[4]
        snap["sim_true_c_A0"] = self.batch.true_c_A0_mol_per_m3 if self.batch is not None else math.nan
        snap.update(self._settings)
        return snap

    def write_setting(self, name: str, value: float) -> None:
        """Write one setting; PlcWriteError (nothing changed) on a bad name, value or phase."""
        self.write_settings({name: value})

    def write_settings(self, values: Mapping[str, float]) -> None:
        """Write several settings at once: all are checked before any is applied (all or nothing)."""
        new = dict(self._settings)
        for name, value in values.items():
            new[name] = self._check_write(name, value)
        if new["T_high_alarm"] > new["T_trip"]:
            raise PlcWriteError(f"T_high_alarm={new['T_high_alarm']!r} K must not exceed T_trip={new['T_trip']!r} K")
        old = self._settings
        self._settings = new
        if new["sim_sensor_fault"] != old["sim_sensor_fault"]:
            self.sensor_T_reactor.set_fault(int(new["sim_sensor_fault"]), self.plant_time)
            log.info("simulated sensor fault on T_reactor: %s", SensorFault(int(new["sim_sensor_fault"])).name)
        if new["sim_inject_runaway"] != old["sim_inject_runaway"]:
            self._set_runaway(bool(new["sim_inject_runaway"]))

    def command(self, name: str) -> None:
        """Issue a command of COMMANDS (or the hook ``inject_runaway``); PlcCommandError if not
        allowed in the current phase (nothing changed)."""
        if name not in _COMMANDS:
            raise PlcCommandError(f"unknown command {name!r}; expected one of {_COMMANDS}")
        getattr(self, f"_cmd_{name}")()

    # -- conveniences for tests and the generator -----------------------------------------------
    def load_recipe(self, recipe: Recipe, sample_interval_s: float = 1800.0) -> None:
        """Write a twin_core Recipe (jacket mode) into the recipe settings (one atomic write)."""
        if recipe.mode != "jacket":
            raise PlcWriteError(f"recipe {recipe.name!r}: the PLC runs jacket programmes only (mode {recipe.mode!r})")
        if len(recipe.times_s) > RECIPE_MAX_POINTS:
            raise PlcWriteError(f"recipe {recipe.name!r} has {len(recipe.times_s)} points; at most {RECIPE_MAX_POINTS}")
        values: dict[str, float] = {}
        self._put_recipe(values, recipe, sample_interval_s)
        self.write_settings(values)

    def run_scans(self, n: int) -> None:
        """Run ``n`` scans."""
        for _ in range(int(n)):
            self.scan()

    def clean(self) -> None:
        """Cleaning event (maintenance): the heat-transfer surface is clean again from now on.

        Allowed only between batches (Idle, Complete, Aborted)."""
        if self.phase not in (Phase.IDLE, Phase.COMPLETE, Phase.ABORTED):
            raise PlcCommandError(f"cleaning is not allowed in phase {self.phase.name}")
        self.batches_since_cleaning = 0
        self.truth.UA_W_per_K = self._UA_for(0)
        log.info("cleaning event: UA back to %.1f W/K", self.truth.UA_W_per_K)

    @property
    def recipe_step(self) -> int:
        """Index of the active programme segment (0 outside a batch)."""
        if self.phase == Phase.IDLE:
            return 0
        return max(0, bisect.bisect_right(self._recipe.times_s, self.batch_time) - 1)

    @property
    def lab_pending(self) -> int:
        """Samples of the current batch still in the lab."""
        return self.lab.pending

    @property
    def alarms_active(self) -> Alarm:
        """Alarm bits whose condition is present."""
        return Alarm(self._active)

    @property
    def alarms_unacked(self) -> Alarm:
        """Alarm bits latched on a rising edge and not acknowledged yet."""
        return Alarm(self._unacked)

    @property
    def runaway_active(self) -> bool:
        return bool(self._settings["sim_inject_runaway"])

    # -- the scan ----------------------------------------------------------------------------------
    def scan(self) -> None:
        """One scan cycle (see the module docstring for the order of work)."""
        dt = self.scan_s
        cfg = self.config
        t_prev = self.scan_count * dt
        truth = self.truth
        if not truth.c.jacket_dynamics:
            truth.set_state(T_j=self.T_jacket_sp)  # ideal jacket: exactly at its setpoint
        truth.advance(t_prev, dt, self.pid.output)
        self.scan_count += 1
        n = self.scan_count
        t = n * dt
        x = truth.x
        Tr, r_out = saturate(self.sensor_T_reactor.read(x[3], t), T_REACTOR_RANGE_K)
        Tj, j_out = saturate(self.sensor_T_jacket.read(x[4], t), T_JACKET_RANGE_K)
        self.T_reactor, self.T_jacket = Tr, Tj
        self._T_saturated = r_out or j_out

        phase = self.phase
        if phase in RUNNING:
            self._batch_scans += 1
        bt = self._batch_scans * dt

        for res in self.lab.poll(n):
            self._lab_arrived(res)
        interval = self._settings["recipe_sample_interval"]
        end = self._recipe.end_time_s
        if (interval > 0.0 and phase in (Phase.CHARGING, Phase.HEATING, Phase.REACTING)
                and bt >= self._next_sample * interval - _EPS and bt < end - _EPS):
            self.lab.draw(n, bt, x[1], x[2])
            self._next_sample += 1

        ph = cfg.phases
        if phase == Phase.CHARGING:
            if bt >= ph.charge_time_s - _EPS:
                self._enter(Phase.HEATING)
        elif phase == Phase.HEATING or phase == Phase.REACTING:
            if bt >= end - _EPS:
                if interval > 0.0:
                    self.lab.draw(n, bt, x[1], x[2])
                self._enter(Phase.COOLING)
            elif phase == Phase.HEATING and abs(Tr - self._hold_target) <= ph.heating_band_K:
                self._enter(Phase.REACTING)
        elif phase == Phase.COOLING:
            if Tr < ph.T_safe_K:
                self._enter(Phase.COMPLETE)

        if Tr > self._settings["T_trip"]:
            self._trip_scans += 1
            # In every phase; in Aborted only while there is something left to do (a runaway to
            # quench, an operator's abort to mark as a trip), so a hot vessel does not re-trip every scan.
            if self._trip_scans * dt >= cfg.alarms.trip_delay_s - _EPS and (
                    self.phase != Phase.ABORTED or self.runaway_active or not self._tripped):
                self._trip()
        else:
            self._trip_scans = 0

        phase = self.phase
        if phase == Phase.HEATING or phase == Phase.REACTING:
            sp = self._recipe.setpoint(bt)
        elif phase == Phase.CHARGING:
            sp = self._recipe.temps_K[0]
        elif phase == Phase.HELD:
            sp = self.T_jacket_sp
        elif phase == Phase.IDLE:
            sp = ph.idle_T_jacket_K
        else:  # Cooling, Complete, Aborted
            sp = ph.cooling_T_jacket_K
        self.T_jacket_sp = sp
        if phase == Phase.ABORTED:
            self.pid.force(-1.0, sp, Tj)
        else:
            self.pid.update(sp, Tj)

        self._update_alarms(Tr, Tj, sp)

    # -- internals ---------------------------------------------------------------------------------
    def _UA_for(self, batches_since_cleaning: int) -> float:
        cfg = self.config
        if not cfg.mismatch.fouling:
            return cfg.vessel.reactor.UA_W_per_K
        f = cfg.fouling
        return f.UA_clean_W_per_K * max(f.UA_min_fraction, (1.0 - f.loss_per_batch) ** batches_since_cleaning)

    @staticmethod
    def _put_recipe(target: dict[str, float], recipe: Recipe, sample_interval_s: float) -> None:
        n = len(recipe.times_s)
        target["recipe_n_points"] = float(n)
        target["recipe_end_time"] = recipe.end_time_s
        target["recipe_mode"] = 0.0
        target["recipe_sample_interval"] = float(sample_interval_s)
        for i in range(RECIPE_MAX_POINTS):
            j = min(i, n - 1)  # unused points repeat the last one (harmless, and in range)
            target[f"recipe_time_{i}"] = recipe.times_s[j]
            target[f"recipe_T_{i}"] = recipe.temps_K[j]

    def _check_write(self, name: str, value: object) -> float:
        rule = SETTING_RULES.get(name)
        if rule is None:
            raise PlcWriteError(f"{name!r} is not a writable setting")
        if not rule.any_phase and self.phase not in RECIPE_WRITABLE_PHASES:
            raise PlcWriteError(f"{name} cannot be written in phase {self.phase.name}; "
                                "Hold the batch, write, then Resume")
        try:
            return rule.check(value)
        except (ParameterError, TypeError) as exc:
            raise PlcWriteError(str(exc)) from None

    def _recipe_from_settings(self) -> Recipe:
        s = self._settings
        n = int(s["recipe_n_points"])
        try:
            return Recipe(tuple(s[f"recipe_time_{i}"] for i in range(n)), tuple(s[f"recipe_T_{i}"] for i in range(n)),
                          s["recipe_end_time"], mode="jacket", name=f"plc-batch-{self.batch_id + 1}")
        except ParameterError as exc:
            raise PlcCommandError(f"the recipe in the settings is inconsistent: {exc}") from exc

    def _enter(self, phase: Phase) -> None:
        log.debug("batch %d: %s -> %s at batch time %.1f s", self.batch_id, self.phase.name, phase.name, self.batch_time)
        self.phase = phase

    def _draw_charge(self) -> tuple[float, float, float, float]:
        """(true c_A0, true T0, activity, recorded c_A0) of a new charge."""
        cfg = self.config
        nominal = cfg.vessel.charge
        if not cfg.mismatch.charge_variation:
            return nominal.c_A0_mol_per_m3, nominal.T0_K, 1.0, nominal.c_A0_mol_per_m3
        z = np.clip(self._charge_rng.standard_normal(4), -3.0, 3.0)
        cv = cfg.charge
        cA0 = nominal.c_A0_mol_per_m3 * (1.0 + cv.c_A0_rsd * float(z[0]))
        T0 = nominal.T0_K + cv.T0_sd_K * float(z[1])
        activity = math.exp(cv.activity_sd * float(z[2]))
        recorded = cA0 * (1.0 + cv.record_rsd * float(z[3]))
        return cA0, T0, activity, recorded

    def _cmd_start(self) -> None:
        if self.phase != Phase.IDLE:
            raise PlcCommandError(f"start is allowed only in IDLE (phase {self.phase.name}); Reset first")
        recipe = self._recipe_from_settings()
        cA0, T0, activity, recorded = self._draw_charge()
        self._recipe = recipe
        self._hold_target = hold_target(recipe, self.config.phases.charge_time_s)
        self.batch_id += 1
        self._batch_scans = 0
        self._next_sample = 1
        UA = self._UA_for(self.batches_since_cleaning)
        self.batch = BatchRecord(self.batch_id, self.plant_time, recorded, self.batches_since_cleaning,
                                 cA0, T0, activity, UA)
        self.last_batch = self.batch
        self.batches_since_cleaning += 1
        truth = self.truth
        truth.UA_W_per_K = UA
        truth.activity = activity
        truth.set_state(c_A=cA0, c_B=self.config.vessel.charge.c_B0_mol_per_m3,
                        c_C=self.config.vessel.charge.c_C0_mol_per_m3, T=T0)
        # The probe now sits in the fresh charge; restart the dT/dt filters there too.
        self.sensor_T_reactor.reset(T0)
        self.T_reactor = self.sensor_T_reactor.read(T0, self.plant_time)
        self._f1 = self._f2 = T0
        self._prev_reading = self.T_reactor
        self._clear_lab()
        self.phase = Phase.CHARGING
        log.info("batch %d started: recipe %s, c_A0 recorded %.1f mol/m3, UA %.0f W/K",
                 self.batch_id, recipe.name, recorded, UA)

    def _cmd_hold(self) -> None:
        if self.phase not in RUNNING:
            raise PlcCommandError(f"hold is allowed only while a batch runs (phase {self.phase.name})")
        self._held_phase = self.phase
        self.phase = Phase.HELD

    def _cmd_resume(self) -> None:
        if self.phase != Phase.HELD:
            raise PlcCommandError(f"resume is allowed only in HELD (phase {self.phase.name})")
        self._recipe = self._recipe_from_settings()
        self._hold_target = hold_target(self._recipe, self.config.phases.charge_time_s)
        self.phase = self._held_phase

    def _cmd_abort(self) -> None:
        if self.phase not in RUNNING and self.phase != Phase.HELD:
            raise PlcCommandError(f"abort is allowed only while a batch runs or is held (phase {self.phase.name})")
        self.phase = Phase.ABORTED
        self.T_jacket_sp = self.config.phases.cooling_T_jacket_K
        self.pid.force(-1.0)

    def _cmd_reset(self) -> None:
        if self.phase not in (Phase.COMPLETE, Phase.ABORTED):
            raise PlcCommandError(f"reset is allowed only in COMPLETE or ABORTED (phase {self.phase.name})")
        if self.phase == Phase.ABORTED and not self.T_reactor < self._settings["T_trip"]:
            raise PlcCommandError(f"reset refused: T_reactor={self.T_reactor!r} K is not below T_trip")
        self.truth.set_state(c_A=0.0, c_B=0.0, c_C=0.0)  # the vessel is discharged
        self.batch = None
        self._tripped = False
        self._set_runaway(False)
        self._settings["sim_inject_runaway"] = 0.0
        self._batch_scans = 0
        self._clear_lab()
        self.phase = Phase.IDLE

    def _cmd_ack_alarms(self) -> None:
        self._unacked = 0

    def _cmd_inject_runaway(self) -> None:
        self.write_setting("sim_inject_runaway", 1.0)

    def _set_runaway(self, on: bool) -> None:
        self.truth.Q_extra_W = self.config.runaway.heat_W if on else 0.0
        if on:
            log.warning("simulated runaway injected: %.0f W of self-heating", self.config.runaway.heat_W)

    def _trip(self) -> None:
        log.warning("interlock trip: T_reactor %.2f K above T_trip %.2f K in phase %s",
                    self.T_reactor, self._settings["T_trip"], self.phase.name)
        self.phase = Phase.ABORTED
        self._tripped = True
        # Every trip latches the alarm, also one while INTERLOCK_TRIP is still active from an earlier trip.
        self._unacked |= _INTERLOCK_TRIP
        # Emergency quench: stops the injected self-heating.
        self._settings["sim_inject_runaway"] = 0.0
        self._set_runaway(False)

    def _clear_lab(self) -> None:
        self.lab.discard_pending()
        self.lab_c_B = self.lab_c_C = self.lab_sample_time = math.nan
        self.lab_valid = 0
        self.lab_seq = 0
        self._lab_saturated = False
        self.last_lab = None
        self.lab_history = []

    def _lab_arrived(self, res: LabResult) -> None:
        self.lab_c_B, b_out = saturate(res.c_B_mol_per_m3, LAB_C_B_RANGE_MOL_PER_M3)
        self.lab_c_C, c_out = saturate(res.c_C_mol_per_m3, LAB_C_C_RANGE_MOL_PER_M3)
        self._lab_saturated = b_out or c_out
        self.lab_sample_time = res.sample_batch_time_s
        self.lab_valid = 1
        self.lab_seq += 1
        self.last_lab = res
        self.lab_history.append(res)

    def _update_alarms(self, Tr: float, Tj: float, sp: float) -> None:
        cfg = self.config.alarms
        dt = self.scan_s
        active = 0
        if Tr > self._settings["T_high_alarm"]:
            active |= _HIGH_T
        if math.isfinite(Tr):
            a = self._filter_a
            self._f1 += a * (Tr - self._f1)
            self._f2 += a * (self._f1 - self._f2)
            # Two cascaded lags: their difference over tau estimates the slope of a ramp.
            self.dTdt_K_per_s = (self._f1 - self._f2) / cfg.dTdt_filter_s
        if self.dTdt_K_per_s > cfg.dTdt_limit_K_per_s:
            active |= _HIGH_DTDT
        # Not in Cooling: there the setpoint asks for all the cooling there is, and a jacket that
        # lags it is expected, not abnormal (an alarm every batch would teach operators to ignore it).
        if self.phase in _DEVIATION_PHASES and abs(Tj - sp) > cfg.jacket_deviation_K:
            self._dev_scans += 1
        else:
            self._dev_scans = 0
        if self._dev_scans and self._dev_scans * dt >= cfg.jacket_deviation_delay_s - _EPS:
            active |= _JACKET_DEVIATION
        if self.lab_valid and self.lab_c_C > cfg.lab_c_C_max_mol_per_m3:
            active |= _LAB_OUT_OF_SPEC
        if self._tripped:
            active |= _INTERLOCK_TRIP
        if self._sensor_fault(Tr):
            active |= _SENSOR_FAULT
        if self._T_saturated or self._lab_saturated:
            active |= _OUT_OF_RANGE
        self._unacked |= active & ~self._active
        self._active = active

    def _sensor_fault(self, Tr: float) -> bool:
        """Transmitter diagnostics on T_reactor: dropout, stuck, spike (a drift is not detectable
        from one transmitter: that is the soft sensor's job)."""
        cfg = self.config.alarms
        prev = self._prev_reading
        self._prev_reading = Tr
        if not math.isfinite(Tr):
            return True
        if not self.sensor_T_reactor.ideal and self.sensor_T_reactor.spec.noise_sd_K > 0.0:
            # A live transmitter with noise never repeats itself for long; a reading saturated at the
            # range's end does (OUT_OF_RANGE says why), which is no sign of a stuck transmitter.
            self._stuck_scans = self._stuck_scans + 1 if Tr == prev and not self._T_saturated else 0
            if self._stuck_scans * self.scan_s >= cfg.stuck_detect_s - _EPS:
                return True
        if math.isfinite(prev) and abs(Tr - prev) > cfg.spike_detect_K:
            self._spike_scans_left = max(1, math.ceil(SPIKE_ALARM_HOLD_S / self.scan_s))
        if self._spike_scans_left > 0:
            self._spike_scans_left -= 1
            return True
        return False
