"""The twin on the plant floor (`twin run`): one asyncio process, one FMU instance per reactor,
scanning each reactor's PLC over Modbus TCP and publishing to OPC UA and the Modbus mirror.

Each scan of a reactor (every ``scan_s`` of plant time, paced by a twin_core.clock.PlantClock
re-anchored on the PLC's published plant time at every reading):
  1. read the measurements (one request per contiguous block of the PLC map);
  2. a PLC that restarted (batch id or plant time went back) resets the twin; a new batch starts the
     twin (the FMU in soft-sensor mode) on the new charge and the recipe's end time; a finished batch
     publishes a summary event;
  3. step the FMU to the PLC's batch time with the measured reactor and jacket temperatures and a
     new lab result when one arrived (from the PLC, or from a LIMS through EnterLabResult);
  4. publish every value of twin_core.signals.runtime.PUBLISHED with its quality and the PLC's
     timestamp, and the events of what changed (model health, optimal stop, impurity forecast above
     specification, PLC alarms).
PLC link lost: the next scans retry with capped exponential backoff; meanwhile every PLC value is
published Bad_CommunicationError and the twin runs open loop (the FMU's T_measured_valid off) on the
last jacket reading, its estimates Uncertain, ``twin_mode`` OPEN_LOOP, an event says so. When the
link returns the twin catches up with the plant's clock (one step to the PLC's batch time).

Crash recovery (gateways.recovery): every ``checkpoint_scans`` scans each reactor's FMU state, its last
PLC scan and its lab queue are checkpointed to ``data_dir``/checkpoint.sqlite (WAL, one transaction per
write, off the event loop). At start a valid checkpoint is restored: the first scan catches up with the
PLC like a restored link, an event states the downtime and the published values carry one Bad entry at
the restart. A rejected checkpoint (corrupt, truncated, another FMU build or format) is reported and
the twin starts afresh from the batch's charge; a failing write is flagged in ``checkpoint_state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateways.config import ReactorConfig, RuntimeConfig, read_prior_file
from gateways.fmu_runner import FmuError, FmuRunner
from gateways.model import EventKind, Publisher, RequestRefused, TwinEvent, Value
from gateways.plc_client import AsyncPlcClient, PlcRequestError
from gateways.recovery import (
    CHECKPOINT_FILE,
    CheckpointRejected,
    CheckpointState,
    CheckpointStore,
    CheckpointWriteError,
    ReactorCheckpoint,
)
from twin_core.clock import PlantClock
from twin_core.errors import FieldError, ParameterError, TwinError
from twin_core.recipe import Recipe
from twin_core.signals.plc import COMMAND_NAMES, SETTING_RULES, Alarm, Phase
from twin_core.signals.runtime import PUBLISHED, PUBLISHED_BY_NAME, LinkState, Quality, TwinMode
from twin_core.signals.twin import by_name as twin_signals

log = logging.getLogger(__name__)

ACTIVE_PHASES = frozenset({Phase.CHARGING, Phase.HEATING, Phase.REACTING, Phase.HELD})
"""Phases in which a batch is in the vessel and the twin tracks it."""
ENDED_PHASES = frozenset({Phase.COOLING, Phase.COMPLETE, Phase.ABORTED})
HEALTH_TEXT = {0: "good", 1: "warning", 2: "ALARM"}
IMPURITY_SPEC = 0.15
"""Impurity fraction of C at discharge above which the forecast raises an event (analysis.Economics'
default specification)."""
_PLC_NAMES = tuple(p.name for p in PUBLISHED if p.source == "plc" and p.folder != "Recipe")
_SETTINGS = tuple(p.name for p in PUBLISHED if p.folder == "Recipe")
SETTINGS_EVERY = 10
"""The PLC's settings (recipe, limits) are read every this many scans, and after a write or a start
(they change only then): two requests instead of two per scan."""
_TWIN_OUT = tuple(p.name for p in PUBLISHED if p.source == "twin" and p.signal.role == "output")
_TUNING = tuple(p.name for p in PUBLISHED if p.folder == "Twin")
_SIGNALS = twin_signals()


@dataclass
class LabEntry:
    """A lab result from outside the PLC (a LIMS), waiting for the next scan (SI units)."""

    sample_time_s: float
    c_B: float
    c_C: float


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` [s] have passed; True if it was set.

    asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a cancellation that arrives in
    the loop tick where the wait ends (CPython gh-86296), and the task then runs on after a stop or
    a Ctrl-C (tests/test_gateways.py)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()
    return event.is_set()


class ReactorRuntime:
    """One reactor: its PLC link, its FMU, its published values. Implements ReactorControl.

    The constructor does no I/O; :meth:`run` is the scan loop (a task), :meth:`close` frees the FMU.
    """

    def __init__(self, cfg: ReactorConfig, rt: RuntimeConfig, publishers: Sequence[Publisher] = ()) -> None:
        self.cfg, self.rt = cfg, rt
        self.name = cfg.name
        self.publishers = list(publishers)
        self.client = AsyncPlcClient(cfg.plc_host, cfg.plc_port, timeout_s=rt.plc_timeout_s, device_id=cfg.plc_unit_id)
        self.fmu: FmuRunner | None = None
        self.link = LinkState.CONNECTING
        self.mode = TwinMode.WAITING
        self.counters = {"plc_restarts": 0, "link_losses": 0, "twin_scans": 0, "lab_results_used": 0}
        self.m: dict[str, float] = {}          # last PLC measurements (SI)
        self.settings: dict[str, float] = {}   # last PLC settings read (SI)
        self._settings_due = 0
        self._settings_offset = 0             # spreads the reactors' settings reads over the scans
        self.out: dict[str, float] = {}        # last FMU outputs (SI)
        self.t_twin = math.nan                 # batch time the twin has reached [s]
        self.twin_batch = -1                   # batch id the twin tracks
        self.lims: deque[LabEntry] = deque()
        self.tuning: dict[str, float] = {}     # Twin-folder writes, applied at the next twin start
        self.scan_wall_s: deque[float] = deque(maxlen=1000)  # cost of each scan [s of wall time]
        self._reset_requested = False
        self._lab_seq = 0
        self._last_sample_time = math.nan
        self._anchor: datetime | None = None   # wall time of plant time 0 (for source timestamps)
        self._clock: PlantClock | None = None
        self._last_health = 0
        self._stop_announced = False
        self._impurity_announced = False
        self._alarms_seen = 0
        self._stop = asyncio.Event()
        self.checkpoint_state = CheckpointState.NONE_YET
        self.restored: ReactorCheckpoint | None = None  # the checkpoint restored at start
        self.rejected: str = ""                          # why the stored checkpoint was not restored
        self._announce_restore = False
        self._scans_to_checkpoint = 0
        self.on_checkpoint: Callable[[ReactorRuntime], None] | None = None
        """Called after every ``checkpoint_scans``-th scan (the runtime queues a checkpoint)."""
        self.steps: list[dict] | None = None
        """With ``record_steps()``: every FMU start ({"t0", "params"}) and step ({"t", "dt", "inputs",
        "outputs"}), in order."""

    def record_steps(self) -> None:
        """Keep every FMU start and step (an offline replay of the same inputs must give the same outputs)."""
        self.steps = []

    # -- life cycle ---------------------------------------------------------------------------------
    def open(self) -> None:
        """Load the FMU (its Python and ONNX session start here, before any batch); once."""
        if self.fmu is None:
            self.fmu = FmuRunner(self.cfg.fmu, instance_name=self.name)
            self.fmu.instantiate()

    def close(self) -> None:
        self._stop.set()
        self.client.close()
        if self.fmu is not None:
            self.fmu.close()
            self.fmu = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Scan until stopped: connect (with backoff), read, step, publish, wait for the next scan."""
        if self.fmu is None:
            self.open()
        if self._announce_restore:
            self._announce_restore = False
            await self._announce_recovery()
        backoff = self.rt.reconnect_min_s
        while not self._stop.is_set():
            t_wall = time.perf_counter()
            m = await self._read()
            if m is None:
                await self._scan_link_down()
                self.scan_wall_s.append(time.perf_counter() - t_wall)
                await self._sleep(backoff)
                backoff = min(2.0 * backoff, self.rt.reconnect_max_s)
                continue
            backoff = self.rt.reconnect_min_s
            try:
                await self._scan(m)
            except (TwinError, ValueError, ArithmeticError):  # one bad scan must not end the reactor's loop
                log.exception("%s: scan at plant time %s s failed; the next scan goes on", self.name,
                              m.get("plant_time"))
            self.scan_wall_s.append(time.perf_counter() - t_wall)
            self._maybe_checkpoint()
            clock = self._clock
            assert clock is not None  # set by the first reading
            await self._sleep(clock.wall_seconds_until(m["plant_time"] + self.rt.scan_s))

    async def _sleep(self, seconds: float) -> None:
        await wait_event(self._stop, seconds)

    async def _read(self) -> dict[str, float] | None:
        """The PLC's measurements, or None when the link is down (it is then closed for a retry)."""
        try:
            if not self.client.connected:
                await self.client.connect()
            m = await self.client.read_measurements()
            if self._settings_due <= 0:
                self.settings = await self.client.read_settings(_SETTINGS)
                self._settings_due = SETTINGS_EVERY + self._settings_offset  # the offset: once, a phase
                self._settings_offset = 0
            self._settings_due -= 1
            # Up once the PLC answered (a connection accepted and dropped again is no link).
            if self.link is LinkState.DOWN:
                await self._event(EventKind.LINK_RESTORED, f"PLC link to {self._where} restored")
            self.link = LinkState.UP
            return m
        except PlcRequestError as exc:
            self.client.close()
            if self.link is not LinkState.DOWN:
                self.counters["link_losses"] += 1
                log.warning("%s: PLC link lost: %s", self.name, exc)
                await self._event(EventKind.LINK_LOST, f"PLC link to {self._where} lost: {exc}")
            self.link = LinkState.DOWN
            return None

    @property
    def _where(self) -> str:
        return f"{self.cfg.plc_host}:{self.cfg.plc_port} unit {self.cfg.plc_unit_id}"

    # -- crash recovery -----------------------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        if self.on_checkpoint is None or self.rt.checkpoint_scans <= 0:
            return
        self._scans_to_checkpoint -= 1
        if self._scans_to_checkpoint <= 0:
            self._scans_to_checkpoint = self.rt.checkpoint_scans
            self.on_checkpoint(self)

    def checkpoint(self) -> ReactorCheckpoint:
        """This reactor's state now: the FMU's serialized state, the last PLC scan, the lab queue.

        Taken between two scans (on the event loop): the FMU state, ``t_twin`` and the lab
        bookkeeping always belong together."""
        fmu = self.fmu
        blob = None
        if fmu is not None and fmu.started and self.mode is not TwinMode.WAITING and fmu.can_serialize:
            blob = fmu.serialize_state()
        runtime = {"mode": int(self.mode) if blob is not None else int(TwinMode.WAITING),
                   "lab_seq": self._lab_seq, "last_sample_time": self._last_sample_time,
                   "lims": [[e.sample_time_s, e.c_B, e.c_C] for e in self.lims],
                   "tuning": dict(self.tuning), "counters": dict(self.counters), "m": dict(self.m),
                   "settings": dict(self.settings), "out": dict(self.out), "last_health": self._last_health,
                   "stop_announced": self._stop_announced, "impurity_announced": self._impurity_announced,
                   "alarms_seen": self._alarms_seen}
        assert fmu is not None  # opened before the first scan
        return ReactorCheckpoint(self.name, fmu.guid, float(self.m.get("plant_time", math.nan)),
                                 self.twin_batch if blob is not None else -1,
                                 self.t_twin if blob is not None else math.nan, runtime, blob)

    def restore(self, cp: ReactorCheckpoint) -> None:
        """Continue from ``cp`` (before the first scan); CheckpointRejected if the FMU refuses its state
        (the reactor is then as if freshly started)."""
        fmu = self.fmu
        assert fmu is not None  # open() first
        rt = cp.runtime
        try:
            lims = deque(LabEntry(float(a), float(b), float(c)) for a, b, c in rt["lims"])
            fields = dict(m={k: float(v) for k, v in rt["m"].items()},
                          settings={k: float(v) for k, v in rt["settings"].items()},
                          out={k: float(v) for k, v in rt["out"].items()},
                          tuning={k: float(v) for k, v in rt["tuning"].items()},
                          counters={k: int(rt["counters"].get(k, 0)) for k in self.counters},
                          mode=TwinMode(int(rt["mode"])), lab_seq=int(rt["lab_seq"]),
                          last_sample_time=float(rt["last_sample_time"]), last_health=int(rt["last_health"]),
                          stop=bool(rt["stop_announced"]), impurity=bool(rt["impurity_announced"]),
                          alarms=int(rt["alarms_seen"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointRejected(f"reactor {self.name}", f"runtime state incomplete: {exc!r}") from exc
        if cp.fmu_state is not None:
            try:
                fmu.restore_state(cp.fmu_state)
            except FmuError as exc:
                fmu.close()  # an instance that refused a state is not trusted with the next batch
                self.fmu = None
                self.open()
                raise CheckpointRejected(f"reactor {self.name}", f"the FMU refused the state: {exc}") from exc
        self.m, self.settings, self.out, self.tuning = fields["m"], fields["settings"], fields["out"], fields["tuning"]
        self.counters.update(fields["counters"])
        self.lims = lims
        if cp.fmu_state is not None:
            self.mode, self.twin_batch, self.t_twin = fields["mode"], cp.batch_id, cp.batch_time_s
        self._lab_seq, self._last_sample_time = fields["lab_seq"], fields["last_sample_time"]
        self._last_health, self._alarms_seen = fields["last_health"], fields["alarms"]
        self._stop_announced, self._impurity_announced = fields["stop"], fields["impurity"]
        self.restored = cp
        self._announce_restore = True

    def reject_checkpoint(self, reason: str) -> None:
        """The stored checkpoint was not restored (``reason``): the twin starts from the batch's charge."""
        self.rejected = reason
        self.checkpoint_state = CheckpointState.REJECTED
        self._announce_restore = True

    async def _announce_recovery(self) -> None:
        cp = self.restored
        if cp is None:
            log.error("%s: checkpoint rejected: %s; the twin restarts from the batch's charge", self.name, self.rejected)
            await self._event(EventKind.CHECKPOINT_REJECTED, f"checkpoint rejected ({self.rejected}); the twin "
                              "restarts from the batch's charge")
            return
        now = datetime.now(UTC)
        where = (f"batch {cp.batch_id} at {cp.batch_time_s / 3600:.2f} h" if cp.fmu_state is not None
                 else "no batch tracked")
        msg = (f"runtime restarted: twin restored from the checkpoint of plant time {cp.plant_time_s:.0f} s "
               f"({where}), saved {cp.saved_utc}; no values from then until {now.isoformat(timespec='seconds')} "
               "(downtime); catching up with the PLC")
        # One Bad entry at the restart marks the gap in every trend (history) and on every display.
        snap = dict(self.snapshot())
        for name in (*_PLC_NAMES, *_SETTINGS, *_TWIN_OUT, "time_to_stop"):
            snap[name] = Value(math.nan, Quality.BAD_WAITING, now)
        for p in self.publishers:
            try:
                await p.publish(self.name, snap)
            except Exception:  # a server's failure must not stop the scans of the plant
                log.exception("%s: %s could not publish", self.name, type(p).__name__)
        await self._event(EventKind.TWIN_RESTORED, msg)

    # -- one scan -----------------------------------------------------------------------------------
    async def _scan(self, m: dict[str, float]) -> None:
        prev = self.m
        if prev and (m["plant_time"] < prev["plant_time"] or m["batch_id"] < prev["batch_id"]):
            self.counters["plc_restarts"] += 1
            await self._event(EventKind.PLC_RESTARTED,
                              f"PLC restarted (plant time {prev['plant_time']:.0f} -> {m['plant_time']:.0f} s, "
                              f"batch {prev['batch_id']:.0f} -> {m['batch_id']:.0f}): twin reset")
            self._end_twin()
            self._anchor = None
        if self._anchor is None:
            self._anchor = datetime.now(UTC) - timedelta(seconds=m["plant_time"] / self.rt.speed)
        if self._clock is None:
            self._clock = PlantClock(self.rt.speed, t0_s=m["plant_time"])
        else:
            self._clock.reset(m["plant_time"])
        self.m = m
        phase = Phase(int(m["phase"]))
        batch = int(m["batch_id"])
        if phase in ACTIVE_PHASES and (batch != self.twin_batch or self._reset_requested) and m["batch_time"] > 0.0:
            await self._start_twin(m)
        elif phase not in ACTIVE_PHASES and self.mode is not TwinMode.WAITING:
            await self._batch_ended(m, phase)
        if self.mode is not TwinMode.WAITING:
            self._step(m, closed_loop=True)
        await self._alarm_events(m)
        self.counters["twin_scans"] += 1
        await self._publish()

    async def _scan_link_down(self) -> None:
        """A scan without the PLC: the twin predicts open loop to the plant time the clock says."""
        if self.mode is not TwinMode.WAITING and self._clock is not None and self.m:
            if Phase(int(self.m["phase"])) is not Phase.HELD:
                t_batch = self.m["batch_time"] + (self._clock.now() - self.m["plant_time"])
                self._step({**self.m, "batch_time": t_batch}, closed_loop=False)
            self.mode = TwinMode.OPEN_LOOP
        self.counters["twin_scans"] += 1
        await self._publish()

    async def _start_twin(self, m: dict[str, float]) -> None:
        fmu = self.fmu
        assert fmu is not None
        t_end = self.settings.get("recipe_end_time", _SIGNALS["t_batch_end"].start or 36000.0)
        prior, prior_note = self._plant_prior()
        params = {"estimator_on": 1, "correction_on": 1, "t_batch_end": t_end, **self.cfg.start, **prior,
                  **self.tuning, "T0": m["T_reactor"], "T_measured": m["T_reactor"], "T_jacket": m["T_jacket"]}
        if self.steps is not None:
            self.steps.append({"t0": m["batch_time"], "params": dict(params)})
        try:
            fmu.start(params, t0_s=m["batch_time"])
        except (FmuError, ParameterError) as exc:
            log.error("%s: the twin could not start batch %d: %s", self.name, int(m["batch_id"]), exc)
            self.mode = TwinMode.WAITING
            return
        self.twin_batch = int(m["batch_id"])
        self.t_twin = m["batch_time"]
        self.mode = TwinMode.TRACKING
        self._reset_requested = False
        self._lab_seq = int(m["lab_seq"])
        self._last_sample_time = math.nan
        self.counters["lab_results_used"] = 0
        self._stop_announced = self._impurity_announced = False
        self._last_health = 0
        self.out = fmu.read(_TWIN_OUT)
        await self._event(EventKind.BATCH_STARTED, f"batch {self.twin_batch} started; the twin tracks it "
                          f"(planned end {t_end / 3600:.2f} h){prior_note}")

    def _plant_prior(self) -> tuple[dict[str, float], str]:
        """The reactor's plant-prior file, read now (a batch starts): its parameters and a note for the
        batch-started event. A missing or invalid file is no reason to leave a batch untracked: the
        twin starts on the configured prior and the event and the log say why."""
        path = self.cfg.prior_file
        if not path:
            return {}, ""
        try:
            prior = read_prior_file(path)
        except FieldError as exc:
            log.warning("%s: plant prior not used: %s", self.name, exc)
            return {}, f"; plant prior {path} NOT used ({exc}): the configured prior instead"
        lam = f"lambda {prior.get('lambda_1', math.nan):.3f}, {prior.get('lambda_2', math.nan):.3f}"
        return prior, f"; plant prior from {path} ({lam})"

    async def _batch_ended(self, m: dict[str, float], phase: Phase) -> None:
        out = self.out
        summary = (f"batch {self.twin_batch} ended ({phase.name.lower()} at {m['batch_time'] / 3600:.2f} h): "
                   f"c_B {out.get('c_B', math.nan) / 1000:.4f} +- {2 * out.get('c_B_std', math.nan) / 1000:.4f} mol/L, "
                   f"yield {100 * out.get('yield_B', math.nan):.1f} %, "
                   f"{self.counters['lab_results_used']} lab results used")
        self.mode = TwinMode.WAITING
        await self._event(EventKind.BATCH_ENDED, summary)

    def _end_twin(self) -> None:
        self.mode = TwinMode.WAITING
        self.twin_batch = -1

    def _step(self, m: dict[str, float], closed_loop: bool) -> None:
        """Advance the FMU to the batch time of ``m`` (measured inputs, or open loop)."""
        fmu = self.fmu
        t_now = m["batch_time"]
        if fmu is None or not t_now > self.t_twin:
            return
        inputs: dict[str, float] = {"T_jacket": m["T_jacket"], "T_measured_valid": 1 if closed_loop else 0}
        if closed_loop:
            inputs["T_measured"] = m["T_reactor"]
            lab = self._next_lab(m)
            if lab is not None:
                inputs.update(lab_valid=1, lab_sample_time=lab.sample_time_s, lab_c_B=lab.c_B, lab_c_C=lab.c_C)
        try:
            self.out = fmu.step(self.t_twin, t_now - self.t_twin, inputs)
        except FmuError as exc:
            log.error("%s: twin step to %.0f s refused: %s", self.name, t_now, exc)
            return
        if self.steps is not None:
            self.steps.append({"t": self.t_twin, "dt": t_now - self.t_twin, "inputs": dict(inputs),
                               "outputs": dict(self.out)})
        self.t_twin = t_now
        if closed_loop:
            self.mode = TwinMode.TRACKING

    def _next_lab(self, m: dict[str, float]) -> LabEntry | None:
        """A new lab result for this step: the PLC's (a new lab_seq), else the oldest LIMS entry."""
        if int(m["lab_seq"]) != self._lab_seq and m["lab_valid"] and math.isfinite(m["lab_c_B"]):
            self._lab_seq = int(m["lab_seq"])
            entry = LabEntry(m["lab_sample_time"], m["lab_c_B"], m["lab_c_C"])
        elif self.lims:
            entry = self.lims.popleft()
        else:
            return None
        if entry.sample_time_s == self._last_sample_time:  # the FMU recognises an assay by its sample time
            return None
        self._last_sample_time = entry.sample_time_s
        self.counters["lab_results_used"] += 1
        return entry

    # -- events -------------------------------------------------------------------------------------
    async def _event(self, kind: EventKind, message: str) -> None:
        log.info("%s: %s", self.name, message)
        ev = TwinEvent(kind, message, time=self._source_time())
        for p in self.publishers:
            try:
                await p.event(self.name, ev)
            except Exception:  # a server's failure must not stop the scans of the plant
                log.exception("%s: %s could not publish an event", self.name, type(p).__name__)

    async def _alarm_events(self, m: dict[str, float]) -> None:
        unacked = int(m["alarms_unacked"])
        new = unacked & ~self._alarms_seen
        self._alarms_seen = unacked
        if new:
            names = ", ".join(a.name for a in Alarm if a & new)
            await self._event(EventKind.PLC_ALARM, f"PLC alarm: {names}")
        if self.mode is TwinMode.WAITING or not self.out:
            return
        health = int(self.out["model_health"])
        if health != self._last_health and health > 0:
            kind = EventKind.HEALTH_ALARM if health >= 2 else EventKind.HEALTH_WARNING
            await self._event(kind, f"model health {HEALTH_TEXT.get(health, health)}")
        self._last_health = health
        if not self._stop_announced and m["batch_time"] >= self.out["t_stop_opt"] > 0.0:
            self._stop_announced = True
            await self._event(EventKind.OPTIMAL_STOP, f"optimal stop reached at {m['batch_time'] / 3600:.2f} h: "
                              f"forecast yield {100 * self.out['yield_B_forecast']:.1f} %; stop the batch now")
        if not self._impurity_announced and self.out["impurity_forecast"] > IMPURITY_SPEC:
            self._impurity_announced = True
            await self._event(EventKind.IMPURITY_FORECAST_HIGH,
                              f"impurity forecast {100 * self.out['impurity_forecast']:.1f} % at the optimal stop, "
                              f"above the {100 * IMPURITY_SPEC:.0f} % specification")

    # -- publishing ---------------------------------------------------------------------------------
    def _source_time(self, plant_time_s: float | None = None) -> datetime:
        if self._anchor is None:
            return datetime.now(UTC)
        t = self.m.get("plant_time", 0.0) if plant_time_s is None else plant_time_s
        return self._anchor + timedelta(seconds=t / self.rt.speed)

    def snapshot(self) -> dict[str, Value]:
        """Every published value of this reactor now (SI units, quality, source time)."""
        m, out = self.m, self.out
        ts = self._source_time()
        link_up = self.link is LinkState.UP
        plc_q = Quality.GOOD if link_up else (Quality.BAD_COMMUNICATION if m else Quality.BAD_WAITING)
        if not out:
            twin_q = Quality.BAD_WAITING
        elif self.mode is TwinMode.OPEN_LOOP or not link_up:
            twin_q = Quality.UNCERTAIN_LAST_USABLE
        else:
            twin_q = Quality.GOOD
        snap: dict[str, Value] = {}
        for name in _PLC_NAMES:
            snap[name] = Value(m.get(name, math.nan), plc_q, ts)
        for name in _SETTINGS:
            snap[name] = Value(self.settings.get(name, math.nan), plc_q, ts)
        for name in _TWIN_OUT:
            snap[name] = Value(out.get(name, math.nan), twin_q, ts)
        active, unacked = int(m.get("alarms_active", 0)), int(m.get("alarms_unacked", 0))
        for a in Alarm:
            key = a.name.lower()
            snap[f"alarm_{key}_active"] = Value(float(bool(active & a)), plc_q, ts)
            snap[f"alarm_{key}_unacked"] = Value(float(bool(unacked & a)), plc_q, ts)
        t_stop = out.get("t_stop_opt", math.nan)
        to_stop = max(0.0, t_stop - m["batch_time"]) if out and m else math.nan
        status = {"plc_link": float(self.link), "twin_mode": float(self.mode), "estimate_quality": float(twin_q),
                  **{k: float(v) for k, v in self.counters.items()},
                  "last_scan_plant_time": m.get("plant_time", math.nan),
                  "checkpoint_state": float(int(self.checkpoint_state))}
        for name, v in status.items():
            snap[name] = Value(v, Quality.GOOD, ts)
        snap["time_to_stop"] = Value(to_stop, twin_q, ts)
        sig = _SIGNALS
        for name in _TUNING:
            v = self.tuning.get(name, self.cfg.start.get(name, sig[name].start))
            snap[name] = Value(float(v if v is not None else math.nan), Quality.GOOD, ts)
        return snap

    async def _publish(self) -> None:
        if not self.publishers:
            return
        snap = self.snapshot()
        for p in self.publishers:
            try:
                await p.publish(self.name, snap)
            except Exception:  # a server's failure must not stop the scans of the plant
                log.exception("%s: %s could not publish", self.name, type(p).__name__)

    # -- ReactorControl -----------------------------------------------------------------------------
    async def _plc(self, what: str, call: Callable[[], object]) -> None:
        if self.link is not LinkState.UP:
            raise RequestRefused(what, f"the PLC link to {self._where} is down")
        try:
            await call()  # type: ignore[misc]
        except PlcRequestError as exc:
            raise RequestRefused(what, f"the PLC refused: {exc}") from exc
        finally:
            self._settings_due = 0  # read them again at the next scan

    async def start_batch(self, recipe: Recipe) -> None:
        await self._plc("StartBatch", lambda: self.client.download_recipe(recipe, self.cfg.sample_interval_s))
        await self._plc("StartBatch", lambda: self.client.command("start"))

    async def command(self, name: str) -> None:
        if name not in COMMAND_NAMES or name == "start":
            raise RequestRefused(name, f"not a PLC command; expected one of {[c for c in COMMAND_NAMES if c != 'start']}")
        await self._plc(name, lambda: self.client.command(name))

    async def reset_twin(self) -> None:
        if not self.m or Phase(int(self.m["phase"])) not in ACTIVE_PHASES:
            raise RequestRefused("ResetTwin", "no batch is running in the PLC")
        self._reset_requested = True

    async def enter_lab_result(self, sample_time_s: float, c_B_mol_per_m3: float, c_C_mol_per_m3: float) -> None:
        what = "EnterLabResult"
        values = {"sample_time": sample_time_s, "c_B": c_B_mol_per_m3, "c_C": c_C_mol_per_m3}
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0.0:
                raise RequestRefused(what, f"{k}={v!r} must be a finite number >= 0")
        if self.mode is TwinMode.WAITING:
            raise RequestRefused(what, "no batch is being tracked")
        if sample_time_s > self.t_twin:
            raise RequestRefused(what, f"sample time {sample_time_s:.0f} s is after the twin's time {self.t_twin:.0f} s")
        hi = _SIGNALS["lab_c_B"].max
        if c_B_mol_per_m3 > hi or c_C_mol_per_m3 > hi:
            raise RequestRefused(what, f"a concentration above {hi} mol/m3")
        self.lims.append(LabEntry(float(sample_time_s), float(c_B_mol_per_m3), float(c_C_mol_per_m3)))

    async def write(self, name: str, value: float) -> None:
        pub = PUBLISHED_BY_NAME.get(name)
        if pub is None or not pub.writable:
            raise RequestRefused(name, "not a writable value")
        if pub.folder == "Recipe":
            try:
                v = SETTING_RULES[name].check(value)
            except (ParameterError, TypeError) as exc:
                raise RequestRefused(name, str(exc)) from exc
            await self._plc(f"write {name}", lambda: self.client.write(name, v))
            return
        s = pub.signal
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not s.min <= value <= s.max:
            raise RequestRefused(name, f"{value!r} must be within [{s.min}, {s.max}] {s.unit}")
        self.tuning[name] = float(value)  # the FMU's parameters are fixed during a run: next start

    # -- the terminal line --------------------------------------------------------------------------
    def status_line(self) -> str:
        m, out = self.m, self.out
        if not m:
            return f"{self.name}: {self.link.name.lower()}, no reading yet"
        phase = Phase(int(m["phase"])).name.lower()
        link = "" if self.link is LinkState.UP else " LINK DOWN"
        if self.checkpoint_state in (CheckpointState.FAILING, CheckpointState.REJECTED):
            link += f" CHECKPOINT {self.checkpoint_state.name}"
        if not out or self.mode is TwinMode.WAITING:
            return f"{self.name}: {phase:<9} T {m['T_reactor'] - 273.15:5.1f} C  twin waiting{link}"
        to_stop = max(0.0, out["t_stop_opt"] - m["batch_time"]) / 3600.0
        return (f"{self.name}: {phase:<9} T {m['T_reactor'] - 273.15:5.1f} C  c_B {out['c_B'] / 1000:.3f} "
                f"+-{2 * out['c_B_std'] / 1000:.3f} mol/L  yield fcst {100 * out['yield_B_forecast']:4.1f} %  "
                f"stop in {to_stop:4.2f} h  health {HEALTH_TEXT.get(int(out['model_health']), '?')}"
                f"{' OPEN LOOP' if self.mode is TwinMode.OPEN_LOOP else ''}{link}")


class Runtime:
    """Every reactor of a configuration in one event loop, with the servers that publish them.

    publishers: the OPC UA server and the mirror (built by :func:`build_publishers`), or any other
    Publisher (tests). ``await start()`` loads the FMUs, restores their checkpoints and starts one scan
    task per reactor; ``await stop()`` ends them, writes a last checkpoint and frees the FMUs.
    checkpoints: the checkpoint store (default ``data_dir``/checkpoint.sqlite when ``checkpoint_scans``
    > 0, else none).
    """

    def __init__(self, cfg: RuntimeConfig, publishers: Sequence[Publisher] = (), *,
                 checkpoints: CheckpointStore | None = None) -> None:
        self.cfg = cfg
        self.publishers = list(publishers)
        self.reactors = {r.name: ReactorRuntime(r, cfg, self.publishers) for r in cfg.reactors}
        if checkpoints is None and cfg.checkpoint_scans > 0:
            checkpoints = CheckpointStore(Path(cfg.data_dir) / CHECKPOINT_FILE)
        self.checkpoints = checkpoints
        self.checkpoint_error = ""  # the last write's error ("" while they succeed)
        self.checkpoints_written = 0
        self._pending: dict[str, ReactorCheckpoint] = {}
        self._wake = asyncio.Event()
        for i, r in enumerate(self.reactors.values()):
            r._settings_offset = i % SETTINGS_EVERY
            if checkpoints is not None and cfg.checkpoint_scans > 0:
                r._scans_to_checkpoint = 1 + i % cfg.checkpoint_scans  # spread over the scans
                r.on_checkpoint = self._offer
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    def add_publisher(self, publisher: Publisher) -> None:
        """Publish to ``publisher`` too (a server built after the runtime, from its reactors)."""
        self.publishers.append(publisher)
        for r in self.reactors.values():
            r.publishers.append(publisher)

    async def start(self) -> None:
        for r in self.reactors.values():
            r.open()
        if self.checkpoints is not None:
            await self._restore()
            self._writer = asyncio.create_task(self._write_loop(), name="checkpoint-writer")
        self._tasks = [asyncio.create_task(r.run(), name=f"scan-{r.name}") for r in self.reactors.values()]

    async def stop(self) -> None:
        for r in self.reactors.values():
            r.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TwinError):
                await t
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
            for r in self.reactors.values():  # a clean stop resumes from where it stopped
                if r.m and r.fmu is not None:
                    self._offer(r)
            await self.flush_checkpoints()
        if self.checkpoints is not None:
            self.checkpoints.close()
        for r in self.reactors.values():
            r.close()

    # -- checkpoints --------------------------------------------------------------------------------
    async def _restore(self) -> None:
        store = self.checkpoints
        assert store is not None
        try:
            await asyncio.to_thread(store.open)
        except CheckpointWriteError as exc:
            self._write_failed(list(self.reactors.values()), str(exc))
            return
        for problem in store.problems:  # the whole file was unreadable (moved aside)
            for r in self.reactors.values():
                r.reject_checkpoint(problem.reason)
        if store.problems:
            return
        for r in self.reactors.values():
            assert r.fmu is not None
            try:
                cp = await asyncio.to_thread(store.load, r.name, r.fmu.guid)
                if cp is not None:
                    r.restore(cp)
                    log.info("%s: restored the checkpoint of plant time %.0f s", r.name, cp.plant_time_s)
            except CheckpointRejected as exc:
                r.reject_checkpoint(exc.reason)

    def _offer(self, r: ReactorRuntime) -> None:
        try:
            self._pending[r.name] = r.checkpoint()
        except FmuError as exc:
            log.error("%s: no checkpoint: %s", r.name, exc)
            return
        self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush_checkpoints()

    async def flush_checkpoints(self) -> None:
        """Write every queued checkpoint now, in one transaction (in a worker thread)."""
        store = self.checkpoints
        batch, self._pending = list(self._pending.values()), {}
        if store is None or not batch:
            return
        reactors = [self.reactors[c.reactor] for c in batch]
        try:
            await asyncio.to_thread(lambda: store.open().save(batch))
        except CheckpointWriteError as exc:
            self._write_failed(reactors, str(exc))
            return
        self.checkpoints_written += len(batch)
        if self.checkpoint_error:
            log.warning("checkpoints are written again to %s", store.path)
            self.checkpoint_error = ""
        for r in reactors:
            r.checkpoint_state = CheckpointState.WRITTEN

    def _write_failed(self, reactors: list[ReactorRuntime], error: str) -> None:
        if not self.checkpoint_error:
            log.error("crash recovery is off until this is fixed: %s (live values are still served)", error)
        self.checkpoint_error = error
        for r in reactors:
            if r.checkpoint_state is not CheckpointState.FAILING:
                r.checkpoint_state = CheckpointState.FAILING
                task = asyncio.get_running_loop().create_task(
                    r._event(EventKind.CHECKPOINT_FAILED, f"checkpoint not written: {error}; live values are still "
                             "served, crash recovery is off until this is fixed"))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def status_loop(self, interval_s: float = 1.0, stream=sys.stderr) -> None:  # noqa: ANN001
        """A live one-line status per reactor on a terminal (rewritten in place on a TTY)."""
        tty = stream.isatty()
        while True:
            lines = [r.status_line() for r in self.reactors.values()]
            if tty:
                stream.write("\x1b[2K\r" + " | ".join(lines))
            else:
                stream.write("\n".join(lines) + "\n")
            stream.flush()
            await asyncio.sleep(interval_s)


def correction_version(fmu: FmuRunner) -> str:
    """The model version of the learned correction inside an FMU ("" when it has none: physics only)."""
    path = Path(fmu.directory) / "resources" / "correction.onnx"
    if not path.is_file():
        return ""
    import onnx  # only here: reading the metadata of the bundled model

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get("twin.model_version", "")


async def serve(cfg: RuntimeConfig, stop: asyncio.Event, *, status_stream=None,  # noqa: ANN001
                on_ready: Callable[[Runtime, list[object]], None] | None = None) -> None:
    """Run the runtime with its OPC UA server and Modbus mirror until ``stop`` is set.

    status_stream: where the live status lines go (None: none); on_ready(runtime, servers) is called
    once everything listens (the CLI prints the endpoints)."""
    from gateways.modbus_mirror import ModbusMirror, tls_mirror_from_config
    from gateways.opcua_server import TwinIdentity, TwinOpcUaServer
    from gateways.security import ServerSecurity

    # pymodbus logs every unanswered request at ERROR with a dump of the frames; the runtime reports
    # a lost link itself (a warning and an event), once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    rt = Runtime(cfg)
    servers: list[object] = []
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(lambda: [r.close() for r in rt.reactors.values()])  # also if a server fails to start
        for r in rt.reactors.values():
            r.open()  # the FMUs first: a missing FMU fails before any port is bound
        if cfg.opcua_endpoint:
            twins = {n: TwinIdentity(r.fmu.guid, correction_version(r.fmu))  # type: ignore[union-attr]
                     for n, r in rt.reactors.items()}
            opcua = TwinOpcUaServer(cfg.opcua_endpoint, cfg.plant, rt.reactors, security=ServerSecurity.from_config(cfg),
                                    history_db=Path(cfg.data_dir) / "history.sqlite", twins=twins)
            await stack.enter_async_context(opcua)
            rt.add_publisher(opcua)
            servers.append(opcua)
        if cfg.mirror_port >= 0:
            mirror = ModbusMirror(cfg.mirror_host, cfg.mirror_port, list(rt.reactors))
            await stack.enter_async_context(mirror)
            rt.add_publisher(mirror)
            servers.append(mirror)
            tls = tls_mirror_from_config(mirror, cfg)  # Modbus/TCP Security: serves the same images
            if tls is not None:
                await stack.enter_async_context(tls)
                servers.append(tls)
        stack.push_async_callback(rt.stop)  # unwound first: the scans end before the servers close
        await rt.start()
        if on_ready is not None:
            on_ready(rt, servers)
        status = asyncio.create_task(rt.status_loop(stream=status_stream)) if status_stream is not None else None
        try:
            await stop.wait()
        finally:
            if status is not None:
                status.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await status
