"""The batch data set: many batches run through the PLC (fast path, no sockets), one row a minute.

The generator drives the same ``Plc`` the Modbus server serves, with a coarser scan (5 s of plant
time instead of 0.1 s: the jacket loop's slowest actuator, the valve slew limit, still needs
several scans per minute, and the truth is integrated to tolerance whatever the scan). Batches run
back to back on one plant: the jacket state and the fouling carry over from batch to batch, and a
cleaning event comes every 15-25 batches. Every 10th batch is a held-out batch whose recipe comes
from a family not used in training (plant_sim.recipes).

Rows are written every 60 s of plant time from Start (time_s = 0) until the batch is Complete and
its last lab result has arrived. Floats have fixed formats, so the file is reproducible bit for bit
from (batches, seed, configuration). The columns and their formats are declared once, in
twin_core.offline.batches (the schema every offline reader uses), and documented in docs/plant.md.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from plant_sim.config import PlantConfig, PlcTiming
from plant_sim.plc import Plc
from plant_sim.recipes import PlantRecipe, recipe_library
from twin_core.offline.batches import (
    BATCH_TABLE_COLUMNS,
    COLUMNS,
    HEADER,
    RECIPE_COLUMNS,
    batches_path,
    recipes_path,
)
from twin_core.signals.plc import Phase

log = logging.getLogger(__name__)

DATASET_SCAN_S = 5.0
"""Scan cycle of the fast path [s of plant time]."""
ROW_INTERVAL_S = 60.0
"""One CSV row per minute of plant time."""
HOLDOUT_EVERY = 10
"""Batch numbers divisible by this are held out (split = holdout)."""
CLEANING_EVERY = (15, 25)
"""A cleaning event every this many batches (uniform, inclusive)."""
MAX_BATCH_S = 48 * 3600.0
"""A batch that is not Complete with its lab results in after this long is an error."""


@dataclass(frozen=True)
class GenerationSummary:
    """What ``generate`` did."""

    path: Path
    batches: int
    rows: int
    holdout_batches: tuple[int, ...]
    cleaning_before: tuple[int, ...]
    wall_s: float
    sha256: str


def dataset_config(config: PlantConfig | None = None, scan_s: float = DATASET_SCAN_S) -> PlantConfig:
    """The plant configuration of the fast path: ``config`` (default plant) with the scan replaced."""
    return replace(config if config is not None else PlantConfig(), plc=PlcTiming(scan_s=scan_s))


def _fmt(value: object, spec: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ""  # no value (no lab result on this row, or a transmitter dropout)
    return format(value, spec)


def write_recipes_csv(library: list[PlantRecipe], path: Path) -> None:
    """The recipe library as CSV (programme points as ';'-separated lists)."""
    lines = [",".join(RECIPE_COLUMNS)]
    for r in library:
        rc = r.recipe
        lines.append(",".join([r.recipe_id, r.family, r.split, f"{rc.end_time_s:.0f}", f"{r.sample_interval_s:.0f}",
                               str(len(rc.times_s)), ";".join(f"{t:.0f}" for t in rc.times_s),
                               ";".join(f"{T:.2f}" for T in rc.temps_K)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def batch_schedule(n_batches: int, seed: int, library: list[PlantRecipe]) -> list[tuple[int, PlantRecipe, bool]]:
    """(batch number 1.., recipe, clean before it) for each batch; a prefix of a longer schedule
    with the same seed is the shorter one (so the first K batches of a data set can be re-made alone)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5C4E]))
    train = [r for r in library if r.split == "train"]
    hold = [r for r in library if r.split == "holdout"]
    out = []
    next_clean = 1 + int(rng.integers(CLEANING_EVERY[0], CLEANING_EVERY[1] + 1))
    for b in range(1, n_batches + 1):
        pick = int(rng.integers(len(train)))
        if b % HOLDOUT_EVERY == 0:
            recipe = hold[(b // HOLDOUT_EVERY - 1) % len(hold)]
        else:
            recipe = train[pick]
        clean = b == next_clean
        if clean:
            next_clean = b + int(rng.integers(CLEANING_EVERY[0], CLEANING_EVERY[1] + 1))
        out.append((b, recipe, clean))
    return out


def run_batch(plc: Plc, pr: PlantRecipe, out: io.TextIOBase) -> tuple[int, bool]:
    """Run one batch on ``plc`` (Idle on entry, Idle on return) and write its rows; returns
    (rows written, whether the batch was aborted).

    The batch ends when it is Complete (or Aborted and cooled below T_safe) and its last lab result
    is in the file.
    """
    plc.load_recipe(pr.recipe, pr.sample_interval_s)
    plc.command("start")
    rec = plc.batch
    if rec is None:
        raise RuntimeError("the PLC did not record the batch it started")
    scans_per_row = round(ROW_INTERVAL_S / plc.scan_s)
    if abs(scans_per_row * plc.scan_s - ROW_INTERVAL_S) > 1e-9:
        raise ValueError(f"scan {plc.scan_s} s does not divide the row interval {ROW_INTERVAL_S} s")
    formats = [c.fmt for c in COLUMNS]
    t0_scan = plc.scan_count
    T_safe = plc.config.phases.T_safe_K
    rows = 0
    written = 0  # lab results of this batch already in the file
    nan = math.nan
    while True:
        x = plc.truth.x
        t_s = (plc.scan_count - t0_scan) * plc.scan_s
        lab: tuple[float, float, float] = (nan, nan, nan)
        if written < len(plc.lab_history):
            res = plc.lab_history[written]
            if len(plc.lab_history) > written + 1:
                log.warning("batch %d: two lab results arrived within one row; the later one goes on the next row",
                            rec.batch_id)
            lab = (res.c_B_mol_per_m3, res.c_C_mol_per_m3, res.sample_batch_time_s)
            written += 1
        values = (rec.batch_id, pr.recipe_id, pr.split, round(t_s), int(plc.phase), plc.T_reactor, plc.T_jacket,
                  plc.T_jacket_sp, plc.pid.output, *lab, rec.recorded_c_A0_mol_per_m3, rec.batches_since_cleaning,
                  x[0], x[1], x[2], x[3], x[4], plc.truth.UA_W_per_K)
        out.write(",".join([_fmt(v, f) for v, f in zip(values, formats, strict=True)]))
        out.write("\n")
        rows += 1
        done = plc.phase == Phase.COMPLETE or (plc.phase == Phase.ABORTED and plc.T_reactor < T_safe)
        if done and plc.lab_pending == 0 and written == len(plc.lab_history):
            break
        if t_s > MAX_BATCH_S:
            raise RuntimeError(f"batch {rec.batch_id} (recipe {pr.recipe_id}) still running after {t_s:.0f} s")
        for _ in range(scans_per_row):
            plc.scan()
    aborted = plc.phase == Phase.ABORTED
    if aborted:
        log.warning("batch %d (recipe %s) was aborted (alarms 0x%x)", rec.batch_id, pr.recipe_id, int(plc.alarms_unacked))
    plc.command("ack_alarms")
    plc.command("reset")
    return rows, aborted


def generate(out: str | Path, batches: int = 200, seed: int = 0, config: PlantConfig | None = None,
             scan_s: float = DATASET_SCAN_S, progress: bool = True) -> GenerationSummary:
    """Generate ``batches`` batches into CSV file ``out`` (and the recipe library next to it)."""
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    out = Path(out)
    t_wall = time.perf_counter()
    cfg = dataset_config(config, scan_s)
    library = recipe_library(seed)
    schedule = batch_schedule(batches, seed, library)
    plc = Plc(cfg, seed=seed)
    buf = io.StringIO()
    buf.write(HEADER + "\n")
    table = [",".join(BATCH_TABLE_COLUMNS)]
    rows = 0
    iterator = schedule
    if progress:
        from tqdm import tqdm

        iterator = tqdm(schedule, desc="batches", unit="batch")
    for _b, pr, clean in iterator:
        if clean:
            plc.clean()
        n, aborted = run_batch(plc, pr, buf)
        rows += n
        r = plc.last_batch
        if r is None:
            raise RuntimeError("the PLC lost the record of the batch it ran")
        table.append(f"{r.batch_id},{pr.recipe_id},{pr.split},{r.start_plant_time_s:.0f},{int(clean)},"
                     f"{r.batches_since_cleaning},{r.recorded_c_A0_mol_per_m3:.1f},{n},{int(aborted)},"
                     f"{r.true_c_A0_mol_per_m3:.2f},{r.true_T0_K:.2f},{r.true_activity:.4f},{r.true_UA_W_per_K:.1f}")
    data = buf.getvalue().encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    write_recipes_csv(library, recipes_path(out))
    batches_path(out).write_text("\n".join(table) + "\n", encoding="utf-8", newline="\n")
    return GenerationSummary(out, batches, rows, tuple(b for b, pr, _ in schedule if pr.split == "holdout"),
                             tuple(b for b, _, c in schedule if c), time.perf_counter() - t_wall,
                             hashlib.sha256(data).hexdigest())


