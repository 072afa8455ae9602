"""``twin train``: fit the rate correction on plant data and export it to ONNX (ml_onnx.train);
``twin train --update``: the batch-to-batch refit (ml_onnx.update); ``twin prior``: the soft
sensor's prior for a plant's next batch from its recorded batches (ml_onnx.trust.PlantPrior);
``twin validate robustness``: the plant-family evaluation (validation/robustness.py)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ml_onnx.model import candidates
from ml_onnx.train import DEFAULT_DATA, DEFAULT_OUT, TrainConfig, train


def cmd_update(args: argparse.Namespace) -> int:
    """``twin train --update CURRENT``: batch-to-batch refit with the release gate (ml_onnx.update)."""
    from ml_onnx.update import UpdateConfig, update

    cfg = UpdateConfig(window=args.window, gate_batches=args.gate_batches, margin=args.margin,
                       prior_batches=args.prior_batches)
    out = args.out if args.out_given else args.update
    r = update(args.update, args.data, out, cfg, report_path=args.report)
    g = r.report["gate"]
    print(f"update {g['update_version']}: fitted {len(g['fitted_batches'])} batches, gate on {g['gate_batches']}: "
          f"lab-residual RMS current {g['current']:.3f} -> candidate {g['candidate']:.3f} "
          f"(release needs <= {(1 - g['margin']) * g['current']:.3f}): {'RELEASED' if r.released else 'REFUSED'}")
    print(f"wrote {r.path}")
    if args.json:
        print(json.dumps(r.report, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.update is not None:
        return cmd_update(args)
    cfg = TrainConfig(candidate_names=tuple(args.candidates) if args.candidates else None, n_splits=args.folds)
    result = train(args.data, args.out, cfg, report_path=args.report, progress=not args.no_progress)
    rep = result.report
    cv = rep["cross_validation"]
    print(f"chosen by grouped CV ({cv['scheme']}): {cv['chosen']}")
    for name, row in cv["candidates"].items():
        note = "" if row["exportable_float64"] else "  (float32 in ONNX: comparison only)"
        print(f"  {name:18s} RMSE ln f1 {row['rmse_ln_f1']:.4f}  ln f2 {row['rmse_ln_f2']:.4f}{note}")
    if "holdout" in rep:
        s = rep["holdout"]["summary"]["all"]
        print(f"held-out batches ({s['batches']}): c_B RMSE physics {s['physics_rmse_c_B_mol_per_m3']:.1f} -> hybrid "
              f"{s['hybrid_rmse_c_B_mol_per_m3']:.1f} mol/m3 ({100 * s['c_B_improvement']:.0f} % better); "
              f"c_C {s['physics_rmse_c_C_mol_per_m3']:.1f} -> {s['hybrid_rmse_c_C_mol_per_m3']:.1f} mol/m3; "
              f"final-yield RMS error {100 * s['physics_final_yield_rms_error']:.1f} -> "
              f"{100 * s['hybrid_final_yield_rms_error']:.1f} points")
        print(f"parity ONNX vs scikit-learn: max relative difference {rep['parity']['max_rel_diff']:.1e}")
    report = args.report or Path(args.out).with_name(Path(args.out).stem + "_report.json")
    print(f"wrote {args.out} and {report}")
    if args.json:
        print(json.dumps(rep["holdout"]["summary"] if "holdout" in rep else {}, indent=2))
    return 0


def cmd_prior(args: argparse.Namespace) -> int:
    """``twin prior``: run a plant's recorded batches in order through the soft sensor, each started
    from the plant prior of the batches before it, and give the prior of the next batch as FMU
    parameters (printed; with --out a TOML table for a reactor's ``[reactor.start]``)."""
    from ml_onnx.runtime import OnnxCorrection
    from ml_onnx.trust import PlantPrior, TrustTracker
    from twin_core.errors import ParameterError
    from twin_core.estimation import SoftSensorConfig
    from twin_core.offline.batches import read_batches

    if args.last is not None and args.last < 1:
        raise ParameterError("--last", args.last, "must be >= 1")
    if args.batches_since_cleaning is not None and args.batches_since_cleaning < 0:
        raise ParameterError("--batches-since-cleaning", args.batches_since_cleaning, "must be >= 0")
    batches = list(read_batches(args.data, with_truth=False).values())
    if args.last is not None:
        batches = batches[-args.last:]
    if not batches:
        raise ParameterError("--data", str(args.data), "holds no batch")
    corr = OnnxCorrection(args.correction)
    cfg = SoftSensorConfig()
    prior = PlantPrior.for_config(TrustTracker(corr), cfg)
    learned, aborted = [], []
    for b in batches:
        (learned if prior.learn(b, corr, cfg) is not None else aborted).append(b.batch_id)
    n_next = args.batches_since_cleaning if args.batches_since_cleaning is not None \
        else batches[-1].batches_since_cleaning + 1
    params = prior.fmu_start(n_next)
    print(f"plant prior from {len(learned)} batches of {args.data} (correction {args.correction}), "
          f"for a batch {n_next} batches after cleaning:")
    if aborted:
        print(f"  left out {len(aborted)} aborted batch(es): {', '.join(map(str, aborted))}")
    print(f"  lambda_1 {params['lambda_1']:.3f} +- {params['sigma_lambda_1']:.3f}, "
          f"lambda_2 {params['lambda_2']:.3f} +- {params['sigma_lambda_2']:.3f}; "
          f"UA factor {params['UA_factor0']:.3f} +- {params['sigma_UA_factor0']:.3f}; "
          f"k-factor SDs {params['sigma_k1_factor0']:.3f}, {params['sigma_k2_factor0']:.3f} "
          f"(interval scale {prior.scale:.2f})")
    lines = [f"{k} = {v!r}" for k, v in params.items()]
    text = ("# Plant prior of the soft sensor for the next batch (`twin prior`): FMU parameters, from\n"
            f"# {len(learned)} batches of {args.data}: the file a reactor's prior_file names (`twin run`\n"
            "# reads it at every batch start), or lines to paste into its [reactor.start] table.\n"
            + "\n".join(lines) + "\n")
    if args.out is not None:
        # Written beside the target and renamed: a runtime starting a batch reads the old or the new one.
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    if args.json:
        print(json.dumps(params, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fit the learned rate correction on plant data and export it to ONNX")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"plant data CSV (default {DEFAULT_DATA})")
    p.add_argument("--out", type=Path, default=None, help=f"ONNX model to write (default {DEFAULT_OUT}; with --update: CURRENT)")
    p.add_argument("--report", type=Path, default=None, help="JSON report (default: <out stem>_report.json)")
    p.add_argument("--candidates", nargs="+", choices=sorted(candidates()), help="regressors to compare (default all)")
    p.add_argument("--folds", type=int, default=5, help="GroupKFold folds (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="also print the held-out summary as JSON")
    u = p.add_argument_group("batch-to-batch update (ml_onnx.update, docs/ml.md)")
    u.add_argument("--update", type=Path, default=None, metavar="CURRENT",
                   help="refit CURRENT (an ONNX correction) on the last batches of --data with CURRENT as prior; "
                        "released to --out (default: CURRENT) only if it passes the gate")
    u.add_argument("--window", type=int, default=20, help="recent batches taken (default 20)")
    u.add_argument("--gate-batches", type=int, default=5, help="last batches of the window kept for the gate (default 5)")
    u.add_argument("--margin", type=float, default=0.05, help="release when candidate <= (1 - margin) * current (default 0.05)")
    u.add_argument("--prior-batches", type=float, default=3.0, help="weight of the previous model, in batches (default 3)")
    p.set_defaults(func=_dispatch)
    q = sub.add_parser("prior", help="the soft sensor's prior for a plant's next batch, learned from its recorded batches")
    q.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"the plant's recorded batches, in order (data-set CSV; default {DEFAULT_DATA})")
    q.add_argument("--correction", type=Path, default=DEFAULT_OUT,
                   help=f"the ONNX correction the plant runs (default {DEFAULT_OUT})")
    q.add_argument("--last", type=int, default=None, help="learn from the last N batches only")
    q.add_argument("--batches-since-cleaning", type=int, default=None,
                   help="of the next batch (default: the last batch's + 1)")
    q.add_argument("--out", type=Path, default=None, help="write the parameters as TOML here")
    q.add_argument("--json", action="store_true", help="also print them as JSON")
    q.set_defaults(func=cmd_prior)
    register_validate(sub)


def _robustness_module():  # type: ignore[no-untyped-def]
    """validation/robustness.py of the source tree (validation/ is not a package: scripts)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "validation" / "robustness.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the robustness evaluation ships with the source tree only")
    spec = importlib.util.spec_from_file_location("validation_robustness", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def cmd_validate_robustness(args: argparse.Namespace) -> int:
    mod = _robustness_module()
    argv = ["--out-dir", str(args.out_dir)] + (["--quick"] if args.quick else [])
    for flag, v in (("--work", args.work), ("--correction", args.correction), ("--figure", args.figure)):
        if v is not None:
            argv += [flag, str(v)]
    return int(mod.main(argv))


def register_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="validation studies of the hybrid twin")
    vsub = p.add_subparsers(dest="study", required=True)
    r = vsub.add_parser("robustness", help="the hybrid twin on a family of plant variants (validation/robustness.py)")
    r.add_argument("--quick", action="store_true", help="small sizes (6 batches per variant)")
    r.add_argument("--out-dir", type=Path, default=Path("validation"), help="where robustness.json/.md go")
    r.add_argument("--work", type=Path, default=None, help="keep the generated plant data here")
    r.add_argument("--correction", type=Path, default=None, help="ONNX correction (default dist/correction.onnx)")
    r.add_argument("--figure", type=Path, default=None, help="figure path")
    r.set_defaults(func=cmd_validate_robustness)


def _dispatch(args: argparse.Namespace) -> int:
    args.out_given = args.out is not None
    if args.out is None and args.update is None:
        args.out = DEFAULT_OUT
    return cmd_train(args)
