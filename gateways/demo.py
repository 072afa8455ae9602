"""The demo batch: the simulated plant in its own process, reached over Modbus TCP, and the built
FMU as a live soft sensor.

What runs, all on loopback, every part talking over TCP:
  1. `twin plant` in a child process (gateways.plant_process: started on a free port, ready when it
     says so, ended by its PID on every path), plant time accelerated ``speed`` times;
  2. a Modbus client (gateways.plc_client) that downloads the recipe, starts the batch and polls
     the measurements like a SCADA/historian would, paced by a twin_core.clock.PlantClock that
     follows the PLC's published plant time;
  3. dist/BatchReactorTwin.fmu run through FMPy in soft-sensor mode (hybrid model + estimator):
     each poll feeds it the measured reactor and jacket temperatures and any new lab result, and
     reads back c_A, c_B, c_C with their standard deviations, the forecast and the model health.
The plant's hidden truth is read from the plant's SIMULATION ONLY register block (input registers
900..; never available on a real plant), from the same scan as the measurements, only to show how
good the estimate is.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateways.fmu_runner import DEFAULT_FMU, FmuRunner
from gateways.plant_process import PlantProcess
from gateways.plc_client import PlcClient
from twin_core.clock import PlantClock
from twin_core.recipe import DEFAULT_RECIPE, Recipe
from twin_core.signals.plc import Phase

C0_K = 273.15
HEALTH = {0: "good", 1: "warning", 2: "ALARM"}
SAME_SCAN_TRIES = 5
"""Reads of measurements + truth until both come from one scan (the image may refresh in between)."""


@dataclass
class DemoResult:
    """What the demo measured (SI units)."""

    t_s: list[float] = field(default_factory=list)
    c_B_est: list[float] = field(default_factory=list)
    c_B_std: list[float] = field(default_factory=list)
    c_B_true: list[float] = field(default_factory=list)
    health: list[int] = field(default_factory=list)
    labs: int = 0
    step_cost_s: list[float] = field(default_factory=list)
    read_cost_s: list[float] = field(default_factory=list)
    final_phase: str = ""
    plant_pid: int | None = None
    plant_returncode: int | None = None

    @property
    def rmse_pct_of_max(self) -> float:
        """c_B RMSE of the live estimate vs the plant truth, % of the true c_B maximum."""
        err = [(a - b) ** 2 for a, b in zip(self.c_B_est, self.c_B_true)]
        return 100.0 * math.sqrt(sum(err) / len(err)) / max(self.c_B_true)

    @property
    def coverage_95(self) -> float:
        """Fraction of steps where the truth lies inside the estimate's 95 % interval."""
        inside = [abs(a - b) <= 1.96 * s for a, b, s in zip(self.c_B_est, self.c_B_true, self.c_B_std)]
        return sum(inside) / len(inside)


def _read_same_scan(client: PlcClient, read_cost_s: list[float]) -> tuple[dict[str, float], dict[str, float]]:
    """Measurements and the simulation-only truth of one and the same PLC scan; the wall time of each
    measurement poll goes to ``read_cost_s``."""
    for _ in range(SAME_SCAN_TRIES):
        t_read = time.perf_counter()
        m = client.read_measurements()
        read_cost_s.append(time.perf_counter() - t_read)
        truth = client.read_sim_truth()
        if truth["sim_truth_scan_count"] == m["scan_count"]:
            break
    return m, truth


def run_demo(speed: float = 720.0, seed: int = 7, fmu_path: str | Path = DEFAULT_FMU,
             recipe: Recipe = DEFAULT_RECIPE, sample_interval_s: float = 1800.0, step_s: float = 60.0,
             report_every_s: float = 1800.0, port: int = 0, echo: bool = True) -> DemoResult:
    """Run one batch end to end and print a live table; returns the figures.

    The plant process is ended (by its PID) when this returns, raises or is interrupted."""
    say = print if echo else (lambda *a, **k: None)
    res = DemoResult()
    plant = PlantProcess(speed=speed, seed=seed, port=port)
    try:
        # The FMU first: a missing one fails before the plant starts. Each item is entered in turn, so
        # the client is built once the plant listens.
        with FmuRunner(fmu_path) as twin, plant, PlcClient(port=plant.port) as client:
            res.plant_pid = plant.pid
            say(f"PLC (simulated plant, process {plant.pid}) serving Modbus TCP on 127.0.0.1:{plant.port}, "
                f"plant time x{speed:g}", flush=True)
            say(f"Soft sensor: {Path(fmu_path).name} via FMPy (hybrid model + estimator), step {step_s:g} s")
            _batch(client, twin, res, say, speed, recipe, sample_interval_s, step_s, report_every_s)
    finally:
        res.plant_returncode = plant.returncode
    if not res.t_s:
        raise RuntimeError("the batch ended before the soft sensor took a step")
    say("")
    say(f"Batch reached {res.final_phase.lower()} at {res.t_s[-1] / 3600:.2f} h; {res.labs} lab results used")
    say(f"Soft sensor c_B: RMSE {res.rmse_pct_of_max:.2f} % of c_B,max vs the plant's hidden truth; "
        f"truth inside the 95 % interval {100 * res.coverage_95:.0f} % of the time")
    say(f"Final c_B: estimate {res.c_B_est[-1] / 1000:.4f} +- {2 * res.c_B_std[-1] / 1000:.4f} mol/L, "
        f"truth {res.c_B_true[-1] / 1000:.4f} mol/L")
    say(f"Costs: FMU step (FMPy, estimator + ONNX correction) median {1e6 * statistics.median(res.step_cost_s):.0f} us; "
        f"Modbus poll of all measurements median {1e3 * statistics.median(res.read_cost_s):.2f} ms")
    return res


def _batch(client: PlcClient, twin: FmuRunner, res: DemoResult, say: Callable[..., None], speed: float,
           recipe: Recipe, sample_interval_s: float, step_s: float, report_every_s: float) -> None:
    """Start the batch and run the soft sensor beside it until the reaction is over."""
    twin.instantiate()  # before Start: loading the model takes a while in plant time
    client.download_recipe(recipe, sample_interval_s)
    client.command("start")
    say(f"Recipe '{recipe.name}' downloaded, batch started; lab samples every {sample_interval_s / 60:g} min, "
        f"results 30-45 min later\n")
    # One clock, anchored on the PLC's published plant time at every poll, paces the polls.
    m = client.read_measurements()
    clock = PlantClock(speed, t0_s=m["plant_time"])
    while m["batch_time"] <= 0.0:
        clock.wait_until(m["plant_time"] + 0.1)
        m = client.read_measurements()
        clock.reset(m["plant_time"])
    t_prev = m["batch_time"]
    # Inputs are set before initialisation too: the estimator starts from the measured temperature.
    twin.start({"estimator_on": 1, "correction_on": 1, "t_batch_end": recipe.end_time_s,
                "T0": m["T_reactor"], "T_measured": m["T_reactor"], "T_jacket": m["T_jacket"]}, t0_s=t_prev)
    say(f"{'t [h]':>6} {'phase':<9} {'T [C]':>6} {'Tj [C]':>6} {'lab c_B':>8} {'c_B est +- 2sd':>16} "
        f"{'true c_B':>8} {'yield fcst':>10} {'stop fcst':>9}  health")
    say(f"{'':>6} {'':<9} {'':>6} {'':>6} {'[mol/L]':>8} {'[mol/L]':>16} {'[mol/L]':>8} {'[%]':>10} {'[h]':>9}")
    next_report = 0.0
    lab_seq = 0
    lab_text = ""
    while True:
        # Wake when the batch clock should have advanced by step_s (plant time runs on while Held).
        clock.wait_until(m["plant_time"] + max(0.0, t_prev + step_s - m["batch_time"]))
        m, truth = _read_same_scan(client, res.read_cost_s)
        clock.reset(m["plant_time"])
        phase = Phase(int(m["phase"]))
        if phase in (Phase.COOLING, Phase.COMPLETE, Phase.ABORTED, Phase.IDLE):
            res.final_phase = phase.name
            break
        t_now = m["batch_time"]
        if t_now - t_prev < step_s:
            continue
        inputs = {"T_measured": m["T_reactor"], "T_jacket": m["T_jacket"], "lab_valid": m["lab_valid"]}
        if m["lab_valid"] and not math.isnan(m["lab_c_B"]):
            inputs.update(lab_c_B=m["lab_c_B"], lab_c_C=m["lab_c_C"], lab_sample_time=m["lab_sample_time"])
            if int(m["lab_seq"]) != lab_seq:
                lab_seq = int(m["lab_seq"])
                res.labs += 1
                lab_text = f"{m['lab_c_B'] / 1000:.3f}"
        t_step = time.perf_counter()
        out = twin.step(t_prev, t_now - t_prev, inputs)
        res.step_cost_s.append(time.perf_counter() - t_step)
        c_B_true = truth["sim_true_c_B"]
        res.t_s.append(t_now)
        res.c_B_est.append(out["c_B"])
        res.c_B_std.append(out["c_B_std"])
        res.c_B_true.append(c_B_true)
        res.health.append(int(out["model_health"]))
        t_prev = t_now
        if t_now >= next_report:
            next_report += report_every_s
            say(f"{t_now / 3600:6.2f} {phase.name.lower():<9} {m['T_reactor'] - C0_K:6.1f} {m['T_jacket'] - C0_K:6.1f} "
                f"{lab_text:>8} {out['c_B'] / 1000:9.3f} +-{2 * out['c_B_std'] / 1000:5.3f} {c_B_true / 1000:8.3f} "
                f"{100 * out['yield_B_forecast']:10.1f} {out['t_stop_opt'] / 3600:9.2f}  "
                f"{HEALTH.get(int(out['model_health']), '?')}")
            lab_text = ""
