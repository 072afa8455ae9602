"""``twin train``: fit the rate correction on plant data and export it to ONNX (ml_onnx.train)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ml_onnx.model import candidates
from ml_onnx.train import DEFAULT_DATA, DEFAULT_OUT, TrainConfig, train


def cmd_train(args: argparse.Namespace) -> int:
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fit the learned rate correction on plant data and export it to ONNX")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"plant data CSV (default {DEFAULT_DATA})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"ONNX model to write (default {DEFAULT_OUT})")
    p.add_argument("--report", type=Path, default=None, help="JSON report (default: <out stem>_report.json)")
    p.add_argument("--candidates", nargs="+", choices=sorted(candidates()), help="regressors to compare (default all)")
    p.add_argument("--folds", type=int, default=5, help="GroupKFold folds (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="also print the held-out summary as JSON")
    p.set_defaults(func=cmd_train)
