"""``twin softsensor``: replay a batch of the plant data set through the soft sensor and plot it.

Reads data/simulated_batch_data.csv (and the recipe library next to it, ``<stem>.recipes.csv``)
with the one data-set reader, twin_core.offline.batches. The learned correction is found through the entry-point group
``twin.corrections`` (ml_onnx registers its ONNX runtime there), so twin_core imports no package
built on top of it; without one the soft sensor runs on the physics alone.
"""

from __future__ import annotations

import argparse
import logging
import math
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from twin_core.errors import ParameterError
from twin_core.estimation import SoftSensor, SoftSensorAlarm, SoftSensorConfig
from twin_core.hybrid import CorrectionModel
from twin_core.offline.batches import DEFAULT_DATA, c_B_rmse_percent, open_loop, params_for, read_batches
from twin_core.offline.plots import plot_replay
from twin_core.offline.softsensor_replay import replay, true_final_yield
from twin_core.params import ModelParams

log = logging.getLogger(__name__)

DEFAULT_CORRECTION = Path("dist/correction.onnx")


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


def cmd_softsensor(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not data.exists():
        raise ParameterError("data", str(data), "no such file (generate it first: twin plant dataset)")
    batches = read_batches(data, {args.batch})
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
        ol_p = open_loop(batch, base, None).x
        ol_h = open_loop(batch, base, correction).x if correction is not None else None
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
