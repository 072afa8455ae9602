"""Benchmark of the learned rate correction: inference latency, training + export time, accuracy.

    .venv/bin/python benchmarks/bench_ml.py [--quick]

1. Trains the correction on data/simulated_batch_data.csv (all training batches; the candidates
   compared by grouped CV, or only the shipped ridge candidates with --quick) into a temporary
   folder, and reports the time of each stage (reconciliation through the ODE, cross-validation,
   final fit, ONNX export, held-out scoring).
2. Single-row inference latency [us], same run, same row, single thread:
   - OnnxCorrection.factors (gather + clip + guard + onnxruntime via IOBinding + exp), the per-step call;
   - onnxruntime InferenceSession.run with a pre-allocated input (the raw session);
   - onnxruntime run_with_iobinding on pre-bound buffers (what factors uses);
   - scikit-learn predict on the same row (the baseline).
   Median of repeated timing loops; wall clock on a shared machine, so the ratios matter most.
3. The held-out accuracy table: per batch and mean c_B / c_C RMSE [mol/m3] and final-yield error
   [points] for physics only vs hybrid in the one open-loop replay (twin_core.offline.batches),
   scored against the simulator's hidden truth.

Goal (issue 4): <= 15 us per factors call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ml_onnx.contract import INPUT_NAME, OUTPUT_NAME  # noqa: E402
from ml_onnx.train import TrainConfig, train  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")


def per_call_us(fn, n: int, repeats: int = 7) -> tuple[float, float]:
    """(median, min) over ``repeats`` loops of the mean time of one call [us]."""
    for _ in range(min(n, 2000)):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(out), min(out)


def identity_session() -> tuple[object, object]:
    """A one-node Identity graph on the same [1, 4] float64 row: onnxruntime's own per-call floor."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ml_onnx.runtime import session_options

    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.DOUBLE, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 4])
    graph = helper.make_graph([helper.make_node("Identity", [INPUT_NAME], ["y"])], "floor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    binding = sess.io_binding()
    binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 4))))
    binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 4))))
    return sess, binding


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the ridge candidates, fewer timing loops")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "simulated_batch_data.csv")
    args = ap.parse_args(argv)

    names = ("ridge_poly2", "ridge_poly3") if args.quick else None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train(args.data, Path(tmp) / "correction.onnx", TrainConfig(candidate_names=names), progress=False)
        total = time.perf_counter() - t0
    rep = res.report
    tm = rep["timing_s"]
    print(f"Training on {rep['data']['training_batches']} batches ({rep['data']['training_rows']} rows), "
          f"{rep['data']['holdout_batches']} held out")
    print(f"  reconciliation through the ODE   {tm['reconcile']:8.2f} s")
    print(f"  grouped cross-validation         {tm['cross_validation']:8.2f} s  "
          f"({len(rep['cross_validation']['candidates'])} candidates)")
    print(f"  final fit                        {tm['final_fit']:8.3f} s")
    print(f"  ONNX export                      {tm['export']:8.3f} s")
    print(f"  held-out scoring                 {tm['holdout_scoring']:8.2f} s")
    print(f"  total                            {total:8.2f} s")
    print("Grouped CV (RMSE of ln f1, ln f2; mean over folds):")
    for name, row in rep["cross_validation"]["candidates"].items():
        mark = "*" if name == rep["cross_validation"]["chosen"] else " "
        note = "" if row["exportable_float64"] else "  float32 in ONNX: comparison only"
        print(f"  {mark} {name:18s} {row['rmse_ln_f1']:.4f}  {row['rmse_ln_f2']:.4f}  "
              f"(sd over folds {row['rmse_mean_sd_over_folds']:.4f}, fit {row['fit_time_s_per_fold']:.2f} s){note}")

    corr, model = res.correction, res.model
    b = res.holdout_batches[0]
    i = len(b.t_s) // 2
    x_mid = (400.0, 450.0, 150.0, 340.0)
    row = np.array([[x_mid[3], x_mid[0], x_mid[1], x_mid[2]]])
    if tuple(corr.feature_names) != ("T_K", "c_A_mol_per_m3", "c_B_mol_per_m3", "c_C_mol_per_m3"):
        print(f"note: features {corr.feature_names}; latency row built for the default features")
    sess = corr._session
    binding = corr._binding
    n = 5000 if args.quick else 20000
    floor_sess, floor_binding = identity_session()
    lat = {
        "onnxruntime floor: Identity graph, iobinding": per_call_us(lambda: floor_sess.run_with_iobinding(floor_binding), n),
        "OnnxCorrection.factors (per-step call)": per_call_us(lambda: corr.factors(float(b.t_s[i]), x_mid, 330.0), n),
        "onnxruntime session.run (pre-allocated row)": per_call_us(lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: row}), n),
        "onnxruntime run_with_iobinding": per_call_us(lambda: sess.run_with_iobinding(binding), n),
        "scikit-learn predict (same row)": per_call_us(lambda: model.estimator_.predict(row), max(n // 20, 200)),
    }
    sk = lat["scikit-learn predict (same row)"][0]
    print(f"Single-row inference latency [us] (median and best of loops; estimator {rep['model']['estimator']}):")
    for k, (med, best) in lat.items():
        print(f"  {k:45s} {med:9.2f} us (best {best:7.2f})   {sk / med:6.1f}x faster than scikit-learn")
    goal = lat["OnnxCorrection.factors (per-step call)"][0]
    print(f"  goal <= 15 us per factors call: {'met' if goal <= 15.0 else 'NOT met'} ({goal:.2f} us median; "
          f"os.getloadavg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")

    print("Held-out batches (the one open-loop replay, twin_core.offline.batches.open_loop; scored against the "
          "hidden truth):")
    print("  batch recipe  in-domain  c_B RMSE phys -> hyb   c_C RMSE phys -> hyb   final-yield error phys -> hyb")
    for r in rep["holdout"]["batches"]:
        print(f"  {r['batch_id']:5d} {r['recipe_id']:6s}  {100 * r['in_domain_fraction']:6.0f} %   "
              f"{r['physics_rmse_c_B_mol_per_m3']:7.1f} -> {r['hybrid_rmse_c_B_mol_per_m3']:6.1f}     "
              f"{r['physics_rmse_c_C_mol_per_m3']:7.1f} -> {r['hybrid_rmse_c_C_mol_per_m3']:6.1f}     "
              f"{100 * r['physics_final_yield_error']:+6.1f} -> {100 * r['hybrid_final_yield_error']:+6.1f} points")
    for label, s in rep["holdout"]["summary"].items():
        if not s["batches"]:
            continue
        print(f"  mean over {label} ({s['batches']} batches): c_B {s['physics_rmse_c_B_mol_per_m3']:.1f} -> "
              f"{s['hybrid_rmse_c_B_mol_per_m3']:.1f} mol/m3 ({100 * s['c_B_improvement']:.0f} % better, worst batch "
              f"{100 * s['worst_batch_c_B_improvement']:.0f} %); c_C {s['physics_rmse_c_C_mol_per_m3']:.1f} -> "
              f"{s['hybrid_rmse_c_C_mol_per_m3']:.1f}; final-yield RMS error "
              f"{100 * s['physics_final_yield_rms_error']:.1f} -> {100 * s['hybrid_final_yield_rms_error']:.1f} points")
    print(f"Parity ONNX vs scikit-learn on {rep['parity']['rows']} held-out rows: max relative difference "
          f"{rep['parity']['max_rel_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
