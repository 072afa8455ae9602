"""``twin softsensor``: replay a batch of the plant data set through the soft sensor and plot it.

Reads data/simulated_batch_data.csv (and the recipe library next to it, ``<stem>.recipes.csv``)
with the standard csv module. The learned correction is found through the entry-point group
``twin.corrections`` (ml_onnx registers its ONNX runtime there), so twin_core imports no package
built on top of it; without one the soft sensor runs on the physics alone.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from twin_core.errors import ParameterError
from twin_core.estimation import IB, IC, IT, SoftSensor, SoftSensorAlarm, SoftSensorConfig
from twin_core.hybrid import CorrectionModel
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.offline.softsensor_replay import (
    BatchInput,
    ReplayResult,
    c_B_rmse_percent,
    open_loop,
    params_for,
    replay,
    true_final_yield,
)

log = logging.getLogger(__name__)

DEFAULT_DATA = Path("data/simulated_batch_data.csv")
DEFAULT_CORRECTION = Path("dist/correction.onnx")
C0 = 273.15


def recipes_file(data: Path) -> Path:
    """The recipe library written next to a data file (plant_sim.dataset's naming)."""
    return data.with_name(data.stem + ".recipes.csv")


def read_recipes(path: str | Path) -> dict[str, Recipe]:
    """recipe_id -> jacket programme, from a recipe-library CSV."""
    out: dict[str, Recipe] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            times = tuple(float(v) for v in row["times_s"].split(";"))
            temps = tuple(float(v) for v in row["temps_K"].split(";"))
            out[row["recipe_id"]] = Recipe(times, temps, float(row["end_time_s"]), "jacket", row["recipe_id"])
    return out


def _f(v: str) -> float:
    return float(v) if v != "" else math.nan


def read_dataset(path: str | Path, batch_ids: set[int] | None = None,
                 recipes: dict[str, Recipe] | None = None) -> dict[int, BatchInput]:
    """Batches of a plant data-set CSV (all, or those in batch_ids) as BatchInput, in file order."""
    p = Path(path)
    if recipes is None:
        rp = recipes_file(p)
        recipes = read_recipes(rp) if rp.exists() else {}
    rows: dict[int, list[dict[str, str]]] = {}
    with open(p, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            bid = int(row["batch_id"])
            if batch_ids is None or bid in batch_ids:
                rows.setdefault(bid, []).append(row)
    out: dict[int, BatchInput] = {}
    for bid, rr in rows.items():
        t = np.array([_f(r["time_s"]) for r in rr])
        labs = tuple((float(r["time_s"]), float(r["lab_sample_time_s"]), float(r["lab_c_B_mol_per_m3"]),
                      float(r["lab_c_C_mol_per_m3"])) for r in rr if r["lab_sample_time_s"] != "")
        truth = None
        if "true_c_B_mol_per_m3" in rr[0]:
            truth = np.array([[_f(r[k]) for k in ("true_c_A_mol_per_m3", "true_c_B_mol_per_m3",
                                                   "true_c_C_mol_per_m3", "true_T_K")] for r in rr])
        out[bid] = BatchInput(
            batch_id=bid, t_s=t, T_reactor_K=np.array([_f(r["T_reactor_K"]) for r in rr]),
            T_jacket_K=np.array([_f(r["T_jacket_K"]) for r in rr]), labs=labs,
            c_A0_mol_per_m3=float(rr[0]["charge_c_A0_recorded_mol_per_m3"]),
            recipe=recipes.get(rr[0]["recipe_id"]), truth=truth, split=rr[0]["split"], recipe_id=rr[0]["recipe_id"])
    return out


def load_correction(spec: str | None) -> CorrectionModel | None:
    """The learned correction: ``none``; a file path (default dist/correction.onnx when present)
    loaded by the ``twin.corrections`` entry point registered for its suffix (``onnx``)."""
    if spec is not None and spec.lower() == "none":
        return None
    path = Path(spec) if spec else DEFAULT_CORRECTION
    if not path.exists():
        if spec:
            raise ParameterError("correction", spec, "no such file")
        log.warning("no %s: the soft sensor runs on the physics alone", path)
        return None
    kind = path.suffix.lstrip(".").lower()
    for ep in entry_points(group="twin.corrections"):
        if ep.name == kind:
            return ep.load()(path)
    raise ParameterError("correction", str(path), f"no loader registered for '.{kind}' files "
                                                  "(entry-point group twin.corrections)")


def plot_replay(batch: BatchInput, res: ReplayResult, path: str | Path, ol_hybrid: np.ndarray | None = None,
                ol_physics: np.ndarray | None = None) -> None:
    """Estimates of c_B, c_C and T with 95 % bands vs the truth; lab samples at their sample time
    (filled) joined to their arrival time (open); model health and alarms underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_h = res.t_s / 3600.0
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 2, 1]})
    for ax, i, label, unit in ((axes[0], IB, "c_B (product)", "mol/L"), (axes[1], IC, "c_C (impurity)", "mol/L")):
        est, sd = res.x[:, i] / 1000.0, res.std[:, i] / 1000.0
        ax.fill_between(t_h, np.maximum(est - 1.96 * sd, 0.0), est + 1.96 * sd, alpha=0.25, label="95 % interval")
        ax.plot(t_h, est, label="soft sensor (live)")
        if batch.truth is not None:
            ax.plot(t_h, batch.truth[:, i] / 1000.0, "k--", lw=1, label="plant truth")
        if ol_hybrid is not None:
            ax.plot(t_h, ol_hybrid[:, i] / 1000.0, ":", label="open-loop hybrid")
        if ol_physics is not None:
            ax.plot(t_h, ol_physics[:, i] / 1000.0, ":", label="open-loop physics")
        col = 2 if i == IB else 3
        for ta, ts, *vals in batch.labs:
            v = vals[col - 2] / 1000.0
            ax.plot([ts / 3600.0, ta / 3600.0], [v, v], color="tab:red", lw=0.8, alpha=0.6)
            ax.plot(ts / 3600.0, v, "o", color="tab:red", ms=4)
            ax.plot(ta / 3600.0, v, "o", mfc="none", color="tab:red", ms=5)
        ax.plot([], [], "o", color="tab:red", ms=4, label="lab: sampled (filled) -> arrived (open)")
        ax.set_ylabel(f"{label} [{unit}]")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    ax = axes[2]
    ax.plot(t_h, batch.T_reactor_K - C0, ".", ms=2, color="0.5", label="measured T")
    ax.plot(t_h, res.x[:, IT] - C0, label="estimated T")
    if batch.truth is not None:
        ax.plot(t_h, batch.truth[:, 3] - C0, "k--", lw=1, label="true T")
    ax.plot(t_h, batch.T_jacket_K - C0, lw=0.8, label="jacket T_j")
    ax.set_ylabel("temperature [degC]")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[3]
    ax.step(t_h, res.health, where="post", label="health (0 good, 1 warning, 2 alarm)")
    for flag, m in ((SoftSensorAlarm.MODEL_MISMATCH, "x"), (SoftSensorAlarm.T_SENSOR_STUCK, "s"),
                    (SoftSensorAlarm.T_SENSOR_DRIFT, "^")):
        on = (res.alarms & int(flag)) != 0
        if on.any():
            ax.plot(t_h[on], np.full(on.sum(), 2.2), m, ms=3, label=flag.name)
    ax.set_ylim(-0.3, 2.6)
    ax.set_ylabel("health")
    ax.set_xlabel("time in batch [h]")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.suptitle(f"Soft sensor replay: batch {batch.batch_id} ({batch.recipe_id}, {batch.split})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_softsensor(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not data.exists():
        raise ParameterError("data", str(data), "no such file (generate it first: twin plant dataset)")
    batches = read_dataset(data, {args.batch})
    if args.batch not in batches:
        raise ParameterError("batch", args.batch, f"not in {data}")
    batch = batches[args.batch]
    correction = load_correction(args.correction)
    base = ModelParams()
    params = params_for(batch, base)
    sensor = SoftSensor(params, correction, SoftSensorConfig())
    fc_times = [f * batch.t_end_s for f in (0.25, 0.5, 0.75)] if batch.recipe is not None else []
    res = replay(sensor, batch, fc_times)
    print(f"Batch {batch.batch_id} ({batch.recipe_id}, {batch.split}): {len(batch.t_s)} rows, "
          f"{len(batch.labs)} lab results, correction {'on' if correction is not None else 'off'}")
    ol_h = ol_p = None
    if batch.truth is not None:
        ol_p = open_loop(batch, base, None)
        ol_h = open_loop(batch, base, correction) if correction is not None else None
        true_B = batch.truth[:, 1]
        print(f"  c_B RMSE vs truth (% of max c_B): soft sensor {c_B_rmse_percent(res.x[:, 1], true_B):.2f}"
              + (f", open-loop hybrid {c_B_rmse_percent(ol_h[:, 1], true_B):.2f}" if ol_h is not None else "")
              + f", open-loop physics {c_B_rmse_percent(ol_p[:, 1], true_B):.2f}")
        if res.forecasts:
            y_true = true_final_yield(batch)
            print(f"  final yield (at {batch.t_end_s / 3600:.2f} h): true {100 * y_true:.2f} %")
            for tf, fc in res.forecasts.items():
                print(f"    forecast at {tf / 3600:5.2f} h: {100 * fc.yield_end:.2f} +- {100 * fc.yield_end_std:.2f} % "
                      f"(error {100 * (fc.yield_end - y_true):+.2f} points); optimal stop {fc.t_stop_opt_s / 3600:.2f} h "
                      f"(impurity {100 * fc.impurity_at_opt:.1f} %), economic stop {fc.t_stop_econ_s / 3600:.2f} h "
                      f"({fc.econ_limited_by})")
    last = res.x[-1]
    print(f"  end: c_B {last[1]:.1f} +- {res.std[-1, 1]:.1f} mol/m3, c_C {last[2]:.1f} +- {res.std[-1, 2]:.1f} mol/m3, "
          f"factors UA {last[4]:.3f}, k1 {last[5]:.3f}, k2 {last[6]:.3f}")
    first = res.first_alarm_s()
    if math.isnan(first):
        print("  alarms: none")
    else:
        raised = SoftSensorAlarm(int(np.bitwise_or.reduce(res.alarms)))
        print(f"  alarms: first at {first / 3600:.2f} h; raised during the batch: {raised!r}")
    for t, sig, why in res.refused:
        print(f"  refused at {t:.0f} s: {sig}: {why}")
    if args.plot:
        plot_replay(batch, res, args.plot, ol_h, ol_p)
        print(f"wrote {args.plot}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``twin softsensor``."""
    p = sub.add_parser("softsensor", help="replay a batch of the plant data set through the soft sensor")
    p.add_argument("--batch", type=int, required=True, help="batch_id to replay")
    p.add_argument("--data", default=str(DEFAULT_DATA), help=f"plant data set (default {DEFAULT_DATA})")
    p.add_argument("--correction", default=None,
                   help=f"learned correction file, or 'none' (default {DEFAULT_CORRECTION} when present)")
    p.add_argument("--plot", help="write a plot (PNG) to this file")
    p.set_defaults(func=cmd_softsensor)
