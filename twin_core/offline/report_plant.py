"""Report sections against the (simulated) plant: physics-only vs hybrid vs truth on the held-out
batches, the plant variants of the robustness evaluation, the correction (ONNX vs scikit-learn, its
training domain and what happens outside it) and the soft sensor. All replays run now, through the
one open-loop replay and the one scoring of twin_core/offline/batches.py."""

from __future__ import annotations

import importlib.util
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from twin_core.offline.report import ROOT, Context, Unavailable, md_table
from twin_core.params import ModelParams

C0 = 273.15


def alarm_names(bits: int) -> str:
    """The soft sensor's alarm bits by name ('none' when no bit is set)."""
    from twin_core.estimation import SoftSensorAlarm

    return ", ".join(f.name or "?" for f in SoftSensorAlarm if bits & int(f)) or "none"


def _lab_points(ax: Any, batch: Any, col: int) -> None:
    t = np.array([a.sample_s for a in batch.labs if math.isfinite(a.c_B_mol_per_m3)])
    v = np.array([(a.c_B_mol_per_m3, a.c_C_mol_per_m3)[col] for a in batch.labs if math.isfinite(a.c_B_mol_per_m3)])
    if len(t):
        ax.plot(t / 3600, v / 1000, "o", color="tab:red", ms=4, label="lab assay (at its sample time)")


def hybrid(ctx: Context) -> str:
    from twin_core.offline.batches import JACKET_INPUT_RULE, open_loop, score
    from twin_core.offline.plots import pyplot

    plt = pyplot()
    corr = ctx.correction()
    hold = ctx.holdout()
    if not hold:
        raise Unavailable("the data set has no held-out batch")
    rows, runs = [], {}
    for b in hold:
        ph, hy = open_loop(b, None, None), open_loop(b, None, corr)
        sp, sh = score(b, ph.x, ph.in_domain), score(b, hy.x, hy.in_domain)
        runs[b.batch_id] = (b, ph.x, hy.x)
        rows.append((b, sp, sh))
    phys = np.array([r[1].rmse_c_B_mol_per_m3 for r in rows])
    hyb = np.array([r[2].rmse_c_B_mol_per_m3 for r in rows])
    improvement = 1.0 - hyb.mean() / phys.mean()
    ratio = hyb / phys
    yph = np.sqrt(np.mean([r[1].final_yield_error ** 2 for r in rows]))
    yhy = np.sqrt(np.mean([r[2].final_yield_error ** 2 for r in rows]))
    ctx.cache["hybrid_rows"] = rows
    # The README states -74 % for this replay; issue 12's 80 % goal is the trust-weighted hybrid's (next section).
    ctx.check("improvement", f"held-out c_B RMSE reduction, hybrid with the correction as trained (λ = 1), "
              f"{len(rows)} batches (README: −74 %)", 100 * improvement, ">=", 70.0, "%")
    ctx.check("never_worse", "worst held-out batch: hybrid RMSE / physics RMSE", float(ratio.max()), "<=", 1.05)
    table = md_table(["batch", "recipe", "physics c_B RMSE [% of c_B,max]", "hybrid c_B RMSE [% of c_B,max]",
                      "physics final-yield error [points]", "hybrid final-yield error [points]",
                      "rows in training domain [%]"],
                     [[b.batch_id, b.recipe_id, sp.rmse_c_B_percent, sh.rmse_c_B_percent, 100 * sp.final_yield_error,
                       100 * sh.final_yield_error, 100 * sh.in_domain_fraction] for b, sp, sh in rows])
    order = np.argsort(ratio)
    picks = [rows[order[0]][0], rows[order[len(order) // 2]][0], rows[order[-1]][0]]
    picks = list({b.batch_id: b for b in picks}.values())
    fig, axes = plt.subplots(1, len(picks), figsize=(5.5 * len(picks), 4.5), squeeze=False)
    for ax, b in zip(axes[0], picks, strict=True):
        _, xp, xh = runs[b.batch_id]
        t = b.t_s / 3600
        ax.plot(t, b.truth[:, 1] / 1000, "k-", lw=1.5, label="plant truth (hidden)")
        ax.plot(t, xp[:, 1] / 1000, "--", label="physics only")
        ax.plot(t, xh[:, 1] / 1000, "-", label="hybrid (ONNX correction)")
        _lab_points(ax, b, 0)
        ax.set(xlabel="time in batch [h]", ylabel="c_B [mol/L]", title=f"batch {b.batch_id} ({b.recipe_id})")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Open-loop replay of held-out batches: best, median and worst hybrid/physics ratio")
    figure = ctx.figure("hybrid_overlay", fig, "c_B of physics-only and hybrid twin against the plant's hidden truth")
    return (f"Correction `{ctx.correction_path.name}` (model version {corr.metadata.get('twin.model_version', '?')}, "
            f"{corr.metadata.get('twin.estimator', '?')}); {len(rows)} held-out batches of "
            f"`{ctx.data_path.name}`{' (the first 4: --quick)' if ctx.quick else ''}, never used in training. "
            f"Replay: `twin_core.offline.batches.open_loop` ({JACKET_INPUT_RULE}).\n\n"
            f"Mean c_B RMSE: physics {phys.mean():.1f} → hybrid {hyb.mean():.1f} mol/m³ ({100 * improvement:.0f} % "
            f"lower); final-yield RMS error {100 * yph:.2f} → {100 * yhy:.2f} points.\n\n" + table + "\n" + figure)


def _robustness_module(ctx: Context) -> Any:
    path = ROOT / "validation" / "robustness.py"
    if not path.is_file():
        raise Unavailable("validation/robustness.py (the plant-variant evaluation of issue 12) is not in this build")
    spec = importlib.util.spec_from_file_location("validation_robustness", path)
    if spec is None or spec.loader is None:
        raise Unavailable("validation/robustness.py cannot be loaded")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _goal_checks(ctx: Context, mod: Any, res: dict, key: str = "", name: str = "") -> None:
    """The issue-12 goals as PASS/FAIL rows from one robustness result (keys prefixed ``key``,
    names suffixed ``name``)."""

    def check(k: str, text: str, *a, **kw) -> None:  # noqa: ANN002, ANN003
        ctx.check(key + k, text + name, *a, **kw)

    v, h = res["variants"], res["holdout"]
    ol = [r["open_loop_rmse_c_B_mol_per_m3"] for r in v.values()]
    check("never_worse", "trust-weighted hybrid vs physics, worst variant: RMSE ratio",
          max(o["hybrid_trust"] / o["physics"] for o in ol), "<=", 1.05)
    check("holdout_gain", "trust-weighted hybrid on the committed held-out batches: error reduction",
          100 * h["hybrid_trust_gain"], ">=", 80.0, "%")
    large = [r["hybrid_trust_gain"] for n, r in v.items() if n in mod.LARGE]
    if large:
        check("large_gain", "trust-weighted hybrid, variants with a mismatch ≥ the training plant's: smallest "
              "error reduction", 100 * min(large), ">=", 50.0, "%")
    check("b2b", "batch-to-batch learning: learned / 150-batch-reference error, worst variant",
          max(r["b2b"]["ratio_learned_to_reference"] for r in v.values()), "<=", 1.5)
    ss = [r.get("softsensor_learning", r["softsensor_adaptive"]) for r in v.values()]   # the deployed soft sensor
    check("ss_rmse_mean", "deployed soft sensor c_B RMSE, worst variant mean", max(x["rmse_pct_mean"] for x in ss),
          "<=", 2.0, "% of c_B,max")
    check("ss_rmse_worst", "deployed soft sensor c_B RMSE, worst batch of any variant",
          max(x["rmse_pct_worst"] for x in ss), "<=", 3.0, "% of c_B,max")
    check("ss_cov_lo", "95 % coverage of c_B, lowest variant", 100 * min(x["coverage95"] for x in ss), ">=", 90.0, "%")
    check("ss_cov_hi", "95 % coverage of c_B, highest variant", 100 * max(x["coverage95"] for x in ss), "<=", 99.0, "%")
    ff = [r["fault_free"] for r in v.values()]
    check("false_alarms", "fresh fault-free batches with an alarm (sensor fault or model mismatch), all variants",
          sum(f["with_alarm"] for f in ff), "<=", 0, "batches")
    check("false_sensor_alarms", "fresh fault-free batches with a sensor-fault alarm, all variants",
          sum(f.get("with_sensor_fault_alarm", f["with_alarm"]) for f in ff), "<=", 0, "batches")
    if "training plant" in v:
        check("false_cm_training", "fresh fault-free batches of the training plant with CORRECTION_MISMATCH",
              v["training plant"]["fault_free"]["with_correction_mismatch"], "<=", 0, "batches")
    mm = [r["mismatch_warning"] for r in v.values() if r.get("correction_worse_than_physics")]
    if mm:
        check("mismatch", "CORRECTION_MISMATCH within three labs where the fixed correction is worse than physics "
              "with the clean UA and with the fouling trend (fraction of batches)",
              sum(m["within_3_labs"] for m in mm) / sum(m["batches"] for m in mm), ">=", 1.0)
    check("forecast_variants", "final-yield forecast at 50 %, worst variant MAE",
          max(x["yield50_mae_pts"] for x in ss), "<=", 2.0, "points")
    if "softsensor_learning" in h:
        check("forecast_holdout", "final-yield forecast at 50 %, committed held-out MAE (deployed: batch-to-batch "
              "learning, prequential)", h["softsensor_learning"]["yield50_mae_pts"], "<=", 1.0, "points")
    check("forecast_holdout_shipped", "final-yield forecast at 50 %, committed held-out MAE (shipped correction, "
          "no learning)", h["softsensor_adaptive"]["yield50_mae_pts"], "<=", 1.0, "points")


def robustness(ctx: Context) -> str:
    mod = _robustness_module(ctx)
    from twin_core.offline.plots import pyplot

    corr = ctx.correction()  # Unavailable without a correction
    del corr
    sizes = mod.TINY if ctx.quick else mod.QUICK
    names = ("larger mismatch",) if ctx.quick else None
    res = mod.run_robustness(quick=True, out_dir=None, correction=ctx.correction_path, variants=names, sizes=sizes)
    v = res["variants"]
    _goal_checks(ctx, mod, res, name=f" (this run: {sizes['batches']} batches per variant)")
    committed_json = ROOT / "validation" / "robustness.json"
    full = json.loads(committed_json.read_text(encoding="utf-8")) if committed_json.is_file() else None
    if full is not None and not full.get("quick", True):
        _goal_checks(ctx, mod, full, key="full_", name=" (committed full run, validation/robustness.json)")
    plt = pyplot()
    ncol = min(3, len(v))
    nrow = -(-len(v) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4.0 * nrow), squeeze=False)
    flat = list(axes.ravel())
    for extra in flat[len(v):]:
        extra.set_axis_off()
    for i, (ax, (n, r)) in enumerate(zip(flat, v.items())):
        pb = r["per_batch"]
        k = np.arange(1, len(pb) + 1)
        lab = (lambda text: text) if i == 0 else (lambda text: None)  # one legend, on the first panel
        for key, label in (("physics", "physics only"), ("hybrid_fixed", "hybrid, λ = 1"),
                           ("hybrid_trust", "hybrid, trust-weighted")):
            ax.plot(k, [x[key] for x in pb], "o-", ms=3, lw=1.2, label=lab(label))
        e = r["b2b"]["errors"]
        ax.plot(np.arange(1, len(e) + 1), e, "--", lw=1.2, label=lab("batch-to-batch learning (campaign)"))
        ax.axhline(r["b2b"]["rmse_reference"], color="k", lw=0.8, ls=":", label=lab("correction fitted on 150 batches "
                                                                                   "of the variant"))
        ax.set(xlabel="batch number [1]", ylabel="open-loop c_B RMSE [mol/m3]", title=n, yscale="log")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Error against batch number on each plant variant (learning curves)")
    figure = ctx.figure("report_robustness_learning", fig, "open-loop error per batch on each plant variant: physics, "
                        "fixed and trust-weighted hybrid, batch-to-batch learning")
    table = mod.render(res)
    committed = ROOT / "validation" / "robustness.md"
    if committed.is_file():
        table += ("\nThe full evaluation as last committed (not rerun by this report): "
                  "[validation/robustness.md](robustness.md).\n")
    return (f"`validation/robustness.py` (`run_robustness`, sizes {sizes}{', one variant: --quick' if ctx.quick else ''})"
            f", correction `{ctx.correction_path.name}`, {res['elapsed_s']:.0f} s. Plants generated now from the "
            "committed configs of `validation/plants/` with their seeds; no setting was fitted to them (docs/softsensor.md). "
            "The full evaluation (40 batches per variant, 100 fault-free, 50-batch campaigns) is `twin validate "
            "robustness`; its committed result is checked too (rows marked \"committed full run\").\n\n"
            + table + "\n" + figure)


def correction(ctx: Context) -> str:
    from twin_core.offline.batches import open_loop
    from twin_core.offline.plots import pyplot

    plt = pyplot()
    corr = ctx.correction()
    meta = corr.metadata
    names = json.loads(meta["twin.feature_names"])
    units = json.loads(meta.get("twin.feature_units", "[]")) or ["?"] * len(names)
    lo, hi = json.loads(meta["twin.domain_lower"]), json.loads(meta["twin.domain_upper"])
    ramp = json.loads(meta["twin.domain_ramp"])
    dom = md_table(["feature", "unit", "lower", "upper", "fade-out width (ramp)"],
                   [[n, u, f"{a:.5g}", f"{b:.5g}", f"{r:.4g}"] for n, u, a, b, r in zip(names, units, lo, hi, ramp,
                                                                                      strict=True)])
    out = [f"Shipped correction `{ctx.correction_path.name}`: {meta.get('twin.estimator')} model version "
           f"{meta.get('twin.model_version')}, created {meta.get('twin.created_utc')}, fitted on "
           f"{meta.get('twin.training_batches')} batches of the data set with SHA-256 "
           f"`{meta.get('twin.training_data_sha256', '?')[:16]}…`. Training domain (ONNX metadata): outside it each "
           "feature's excess is measured in units of its ramp and the log-factors fade to zero (smoothstep) over "
           "one ramp; `in_domain` says so.", "", dom]

    # ONNX vs scikit-learn: a fresh training run (the shipped file keeps no scikit-learn model).
    train_mod = ctx.need("ml_onnx.train", "ml_onnx training")
    with tempfile.TemporaryDirectory(prefix="twin_report_") as tmp:
        cfg = train_mod.TrainConfig(candidate_names=("ridge_poly2",), n_splits=2 if ctx.quick else 5,
                                    max_train_batches=12 if ctx.quick else None)
        res = train_mod.train(ctx.data_path, Path(tmp) / "correction.onnx", cfg, progress=False, score=False)
        feats = ctx.need("ml_onnx.features", "ml_onnx features")
        Xin = np.vstack([feats.feature_matrix(res.model.feature_names, b.t_s, open_loop(b).x) for b in ctx.holdout()])
        d = res.model.domain_
        rng = np.random.default_rng(0)
        span = np.asarray(d.upper) - np.asarray(d.lower)
        Xout = np.asarray(d.lower) - 0.5 * span + rng.random((2000, len(span))) * 2.0 * span
        rows = []
        for label, X in (("held-out rows (the physics twin's states)", Xin),
                         ("random points in a box twice the domain", Xout)):
            a, o = res.model.predict(X), res.correction.predict_log_factors(X)
            abs_d = float(np.max(np.abs(a - o)))
            rel_d = float(np.max(np.abs(a - o) / np.maximum(np.abs(a), 1e-6)))
            rows.append([label, len(X), abs_d, rel_d])
            ctx.check(f"parity_{'in' if X is Xin else 'out'}", f"ONNX vs scikit-learn, {label}: max |Δ ln f| relative",
                      rel_d, "<=", 1e-9)
    out += ["", f"**ONNX vs scikit-learn parity.** A fresh `twin train` run (ridge_poly2, "
            f"{cfg.n_splits}-fold grouped CV, {len(res.train_batches)} training batches) in a temporary folder; its "
            "scikit-learn model and its ONNX export (onnxruntime, float64) on the same rows (raw model outputs, no "
            "fade):", "", md_table(["rows", "count", "max abs difference [ln f]", "max relative difference"], rows)]

    # Outside the domain: sweep the temperature through and beyond the training box.
    x_mid = [0.5 * (lo[names.index(n)] + hi[names.index(n)]) if n in names else 0.0
             for n in ("c_A_mol_per_m3", "c_B_mol_per_m3", "c_C_mol_per_m3")]
    jT = names.index("T_K")
    T = np.linspace(lo[jT] - 3 * ramp[jT], hi[jT] + 3 * ramp[jT], 241)
    f = np.array([corr.factors(0.0, (x_mid[0], x_mid[1], x_mid[2], float(Ti)), float(Ti))[:3] for Ti in T])
    far = (T < lo[jT] - ramp[jT]) | (T > hi[jT] + ramp[jT])
    inside = (T >= lo[jT]) & (T <= hi[jT])
    ctx.check("fade_far", "factors more than one ramp outside the domain: max |f − 1|",
              float(np.max(np.abs(f[far, :2] - 1.0))), "<=", 0.0)
    ctx.check("flag_outside", "in_domain flag outside the training box (fraction of points flagged out)",
              float(np.mean(f[~inside, 2] == 0.0)), ">=", 1.0)
    ctx.check("flag_inside", "in_domain flag inside the training box (fraction flagged in)",
              float(np.mean(f[inside, 2] == 1.0)), ">=", 1.0)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.axvspan(lo[jT] - C0, hi[jT] - C0, color="tab:green", alpha=0.12, label="training domain of T")
    ax.plot(T - C0, f[:, 0], label="f1 (A → B)")
    ax.plot(T - C0, f[:, 1], label="f2 (B → C)")
    ax.axhline(1.0, color="k", lw=0.8, ls=":", label="physics only (f = 1)")
    ax.set(xlabel="reactor temperature [°C]", ylabel="rate factor f_i [1]",
           title=f"Correction factors across and beyond the domain (c_A, c_B, c_C = "
           f"{x_mid[0]:.0f}, {x_mid[1]:.0f}, {x_mid[2]:.0f} mol/m³)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.append(ctx.figure("correction_domain", fig, "the correction fades to physics outside its training domain"))
    hy = ctx.cache.get("hybrid_rows")
    if hy:
        outside = [(b, sp, sh) for b, sp, sh in hy if sh.in_domain_fraction < 1.0]
        out.append(f"Held-out batches that leave the domain for part of the batch: {len(outside)} of {len(hy)}"
                   + ("; c_B RMSE physics → hybrid there: " + ", ".join(
                       f"batch {b.batch_id} {sp.rmse_c_B_percent:.1f} → {sh.rmse_c_B_percent:.1f} % "
                       f"({100 * sh.in_domain_fraction:.0f} % of rows inside)" for b, sp, sh in outside) if outside else "")
                   + ".")
    return "\n".join(out) + "\n"


def softsensor(ctx: Context) -> str:
    from twin_core.estimation import IB, IC, SoftSensor, SoftSensorAlarm, SoftSensorConfig
    from twin_core.offline.batches import c_B_rmse_percent, params_for
    from twin_core.offline.plots import pyplot
    from twin_core.offline.softsensor_replay import inject_fault, replay, true_final_yield

    plt = pyplot()
    corr = ctx.correction()
    hold = ctx.holdout()
    fractions = (0.25, 0.5, 0.75) if ctx.quick else tuple(np.round(np.arange(0.1, 0.91, 0.1), 2))
    base = ModelParams()
    from twin_core.estimation import STATE_NAMES

    lam_idx = [STATE_NAMES.index(n) for n in ("lambda_1", "lambda_2") if n in STATE_NAMES]
    rows, first = [], None
    fc_err: dict[float, list[float]] = {f: [] for f in fractions}
    cover_all = []
    for b in hold:
        res = replay(SoftSensor(params_for(b, base), corr, SoftSensorConfig()), b, [f * b.t_end_s for f in fractions])
        if first is None:
            first = (b, res)
        truth = b.truth
        cover = np.abs(res.x[:, IB] - truth[:, 1]) <= 1.96 * res.std[:, IB]
        cover_all.append(cover)
        y = true_final_yield(b)
        for f in fractions:
            fc_err[f].append(100 * (res.forecasts[f * b.t_end_s].yield_end - y))
        lam = ([f"{res.x[-1, j]:.2f} ± {res.std[-1, j]:.2f}" for j in lam_idx] if lam_idx else [])
        rows.append([b.batch_id, b.recipe_id, c_B_rmse_percent(res.x[:, IB], truth[:, 1]), 100 * float(np.mean(cover)),
                     fc_err[0.5][-1], len(b.labs), alarm_names(int(np.bitwise_or.reduce(res.alarms))), *lam])
    rmse = np.array([r[2] for r in rows])
    coverage = float(np.mean(np.concatenate(cover_all)))
    fc50 = float(np.mean(np.abs(fc_err[0.5])))
    alarmed = sum(1 for r in rows if r[6] != "none")
    ctx.check("rmse_mean", "c_B RMSE of the live estimate, mean over held-out batches", float(rmse.mean()), "<=", 2.0,
              "% of c_B,max")
    ctx.check("rmse_worst", "c_B RMSE, worst held-out batch", float(rmse.max()), "<=", 3.0, "% of c_B,max")
    ctx.check("coverage_lo", "95 % interval of c_B covers the truth (all rows)", 100 * coverage, ">=", 90.0, "%")
    ctx.check("coverage_hi", "95 % interval of c_B not over-wide (all rows)", 100 * coverage, "<=", 99.0, "%")
    ctx.check("forecast50", "final-yield forecast at 50 % of the batch: mean absolute error", fc50, "<=", 1.0, "points")
    ctx.check("false_alarms", "fault-free held-out batches with any alarm", alarmed, "<=", 0, "batches")

    # Faults: a stuck and a drifting reactor-temperature transmitter at 40 % of the batch.
    fault_batches = hold[:2] if ctx.quick else hold
    faults = {"stuck": (SoftSensorAlarm.T_SENSOR_STUCK, 0.0), "drift 0.3 K/min": (SoftSensorAlarm.T_SENSOR_DRIFT, 0.005)}
    frows = []
    for name, (flag, rate) in faults.items():
        delays = []
        for b in fault_batches:
            t_f = 0.4 * b.t_end_s
            rf = replay(SoftSensor(params_for(b, base), corr, SoftSensorConfig()),
                        inject_fault(b, "stuck" if rate == 0.0 else "drift", t_f, rate))
            t_det = rf.first_alarm_s(flag)
            delays.append(t_det - t_f if t_det >= t_f else math.nan)
        d = np.array(delays)
        ok = np.isfinite(d)
        frows.append([name, flag.name, f"{ok.sum()}/{len(d)}", float(np.mean(d[ok]) / 60) if ok.any() else math.nan,
                      float(np.max(d[ok]) / 60) if ok.any() else math.nan])
        ctx.check(f"detect_{name.split()[0]}", f"{name} fault at 40 % of the batch detected ({flag.name})",
                  float(ok.mean()), ">=", 1.0, "fraction")

    fresh = ""
    if not ctx.quick:
        fresh = _fresh_false_alarms(ctx, corr)

    b, res = first
    t = res.t_s / 3600
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for ax, i, col, name in ((a1, IB, 1, "c_B (product)"), (a2, IC, 2, "c_C (impurity)")):
        est, sd = res.x[:, i] / 1000, res.std[:, i] / 1000
        ax.fill_between(t, np.maximum(est - 1.96 * sd, 0), est + 1.96 * sd, alpha=0.25, label="95 % interval")
        ax.plot(t, est, label="soft sensor (live)")
        ax.plot(t, b.truth[:, col] / 1000, "k--", lw=1, label="plant truth (hidden)")
        _lab_points(ax, b, col - 1)
        ax.set(ylabel=f"{name} [mol/L]", title=f"{name}: estimate vs truth")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    a2.set_xlabel("time in batch [h]")
    fig.suptitle(f"Soft sensor on held-out batch {b.batch_id} ({b.recipe_id})")
    fig1 = ctx.figure("softsensor_estimate", fig, f"soft-sensor estimate with its 95 % interval and the lab assays, "
                      f"batch {b.batch_id}")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    fr = np.array(fractions)
    ax.plot(100 * fr, [np.mean(np.abs(fc_err[f])) for f in fractions], "o-", label="mean |error|")
    ax.plot(100 * fr, [np.max(np.abs(fc_err[f])) for f in fractions], "s--", label="worst batch")
    ax.axhline(ctx.limit("softsensor.forecast50", 1.0), color="k", ls=":", label="goal at 50 % (1 point)")
    ax.set(xlabel="forecast made at [% of the batch time]", ylabel="final-yield forecast error [points]",
           title=f"Final-yield forecast accuracy over batch time ({len(hold)} held-out batches)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig2 = ctx.figure("softsensor_forecast", fig, "final-yield forecast error against the time the forecast is made")
    return ("\n".join([
        "`twin_core/estimation/` (EKF on the hybrid model with the shipped correction), each held-out batch replayed "
        "row by row (`twin_core.offline.softsensor_replay.replay`: measured T and T_j every minute, lab assays on the "
        "row where they arrived, 30–45 min after sampling); scored against the plant's hidden truth.", "",
        md_table(["batch", "recipe", "c_B RMSE [% of c_B,max]", "95 % coverage of c_B [%]",
                  "yield forecast error at 50 % [points]", "lab results", "alarms raised",
                  *(["trust λ1 at the end (± 1 sd)", "trust λ2 at the end (± 1 sd)"] if lam_idx else [])], rows),
        f"Coverage over all rows {100 * coverage:.1f} %; forecast at 50 %: mean |error| {fc50:.2f} points.", "",
        "**Sensor faults injected at 40 % of the batch** (detected / injected, delay from fault to alarm):", "",
        md_table(["fault", "alarm", "detected", "mean delay [min]", "worst delay [min]"], frows),
        fresh, fig1, fig2]) + "\n")


def _fresh_false_alarms(ctx: Context, corr: Any) -> str:
    """Alarms on batches freshly generated by plant_sim with another seed (none seen in training)."""
    from twin_core.estimation import SoftSensor, SoftSensorConfig
    from twin_core.offline.batches import params_for, read_batches
    from twin_core.offline.softsensor_replay import replay

    ds = ctx.need("plant_sim.dataset", "the simulated plant (plant_sim)")
    n, seed = 20, 11
    with tempfile.TemporaryDirectory(prefix="twin_report_") as tmp:
        path = Path(tmp) / "fresh.csv"
        ds.generate(path, batches=n, seed=seed, progress=False)
        batches = list(read_batches(path).values())
    flagged = 0
    for b in batches:
        res = replay(SoftSensor(params_for(b, ModelParams()), corr, SoftSensorConfig()), b)
        flagged += int(np.bitwise_or.reduce(res.alarms) != 0)
    ctx.check("false_alarms_fresh", f"fresh fault-free batches (plant_sim seed {seed}) with any alarm", flagged, "<=", 0,
              f"of {len(batches)}")
    return (f"\n**False alarms**: {flagged} of {len(batches)} fault-free batches freshly generated by plant_sim (seed "
            f"{seed}, never seen in training) raised an alarm.\n")
