"""Report sections on the process: the temperature-profile study, the optimal stop, the optimised
recipe against the best constant jacket, and the design space. Every figure is computed now."""

from __future__ import annotations

import math

import numpy as np

from twin_core.offline.report import Context, md_table
from twin_core.params import ModelParams

C0 = 273.15


def study(ctx: Context) -> str:
    from twin_core.offline.plots import pyplot
    from twin_core.offline.study import default_grid, profile_study

    plt = pyplot()
    hours = 10.0
    grid = default_grid(hours * 3600.0)
    if ctx.quick:
        grid = grid[::3]
    rows, trs = profile_study(grid, ModelParams(), dt_out_s=60.0)
    best = max(rows, key=lambda r: r.yield_B_at_opt)
    table = md_table(["recipe", "mode", "Y_B end [%]", "C end [%]", "t_opt [h]", "Y_B at t_opt [%]", "C at t_opt [%]",
                      "T peak [°C]"],
                     [[r.name + (" **(best)**" if r is best else ""), r.mode, 100 * r.yield_B_end, 100 * r.impurity_end,
                       r.t_stop_opt_s / 3600, 100 * r.yield_B_at_opt, 100 * r.impurity_at_opt, r.T_peak_K - C0]
                      for r in rows])
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(19, 5.5))
    colors = plt.get_cmap("tab20")(np.arange(len(rows)) % 20)
    for r, tr, col in zip(rows, trs, colors, strict=True):
        ls = "-" if r.mode == "reactor" else "--"
        a1.plot(tr.t_s / 3600, tr.c_B / 1000, ls, color=col)
        a2.plot(tr.t_s / 3600, tr.T_K - C0, ls, color=col)
        a3.scatter(100 * r.impurity_at_opt, 100 * r.yield_B_at_opt, color=col, label=r.name,
                   marker="o" if r.mode == "reactor" else "s")
    a1.set(xlabel="time [h]", ylabel="c_B [mol/L]", title="product B")
    a2.set(xlabel="time [h]", ylabel="reactor temperature [°C]", title="reactor temperature")
    a3.set(xlabel="impurity C at optimal stop [mol %]", ylabel="yield of B at optimal stop [%]",
           title="trade-off at the optimal stop")
    a3.legend(fontsize=7, bbox_to_anchor=(1.02, 1.0), loc="upper left", title="recipe (colour in all panels)",
              title_fontsize=7)
    for a in (a1, a2, a3):
        a.grid(alpha=0.3)
    fig.suptitle("Temperature-profile study (solid: reactor programme, dashed: jacket programme)")
    figure = ctx.figure("study", fig, f"{len(rows)} recipes of {hours:g} h: c_B, reactor temperature and the "
                        "yield–impurity trade-off at the optimal stop")
    # The study's isothermal rows against the analytic optimum c_B,max / c_A0 (where the stop is inside the batch).
    from twin_core.model import coefficients, rate_constants

    c = coefficients(ModelParams())
    errs = []
    for r in rows:
        if r.mode == "reactor" and r.name.endswith("degC") and "ramp" not in r.name and r.t_stop_opt_s < r.t_end_s:
            k1, k2 = rate_constants(r.T_peak_K, c)
            errs.append(abs(r.yield_B_at_opt - (k1 / k2) ** (k2 / (k2 - k1))) / r.yield_B_at_opt)
    ctx.check("isothermal_optimum", f"isothermal rows of the study ({len(errs)} with the stop inside the batch): yield at "
              "the optimal stop vs the analytic c_B,max / c_A0, max relative error", max(errs) if errs else math.nan,
              "<=", 1e-6)
    return (f"`twin_core/offline/study.py`, {len(rows)} recipes{' (every third of the grid: --quick)' if ctx.quick else ''}"
            f", {hours:g} h batches. Best yield at the optimal stop: {best.name}, {100 * best.yield_B_at_opt:.1f} %.\n\n"
            + table + "\n" + figure)


def optimal_stop(ctx: Context) -> str:
    from twin_core.analysis import Economics, economic_stop, summarize
    from twin_core.analysis import optimal_stop as opt_stop
    from twin_core.model import coefficients, rate_constants
    from twin_core.offline.plots import pyplot
    from twin_core.recipe import DEFAULT_RECIPE, Recipe
    from twin_core.simulation import Twin

    plt = pyplot()
    p = ModelParams()
    rows = []
    for T_C in (60.0, 70.0, 80.0):
        k1, k2 = rate_constants(C0 + T_C, coefficients(p))
        t_star = math.log(k2 / k1) / (k2 - k1)
        c_max = p.charge.c_A0_mol_per_m3 * (k1 / k2) ** (k2 / (k2 - k1))
        tr = Twin(p).simulate(Recipe.isothermal(C0 + T_C, 2 * t_star), dt_out_s=60.0)
        t_opt, c_opt = opt_stop(tr)
        err_t, err_c = abs(t_opt - t_star) / t_star, abs(c_opt - c_max) / c_max
        rows.append([f"{T_C:.0f} °C", t_star / 3600, t_opt / 3600, err_t, c_max, c_opt, err_c])
        ctx.check(f"t_star_{T_C:.0f}", f"optimal stop at {T_C:.0f} °C vs analytic t*: relative error", err_t, "<=", 1e-6)
        ctx.check(f"c_max_{T_C:.0f}", f"c_B at the stop at {T_C:.0f} °C vs analytic c_B,max: relative error", err_c,
                  "<=", 1e-6)
    tr = Twin(p).simulate(DEFAULT_RECIPE, dt_out_s=60.0)
    s = summarize(tr, p)
    econ = Economics()
    es = economic_stop(tr, p, econ)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(tr.t_s / 3600, tr.c_B / 1000, label="c_B, default recipe")
    ax.plot(tr.t_s / 3600, tr.c_C / 1000, label="c_C (impurity)")
    ax.axvline(s.t_stop_opt_s / 3600, color="tab:green", ls="--", label=f"optimal stop {s.t_stop_opt_s / 3600:.2f} h")
    ax.axvline(es.t_stop_s / 3600, color="tab:red", ls=":", label=f"economic stop {es.t_stop_s / 3600:.2f} h "
               f"({es.limited_by})")
    ax.set(xlabel="time [h]", ylabel="concentration [mol/L]", title=f"Stops of the default recipe ({DEFAULT_RECIPE.name})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    figure = ctx.figure("optimal_stop", fig, "optimal (maximum c_B) and economic stop of the default recipe")
    return ("The optimal stop is the time of maximum c_B, refined between samples (`twin_core.analysis.optimal_stop`); "
            "checked against the analytic isothermal optimum t* = ln(k2/k1)/(k2 − k1):\n\n"
            + md_table(["T", "t* analytic [h]", "t_opt twin [h]", "rel. error", "c_B,max analytic [mol/m3]",
                        "c_B at t_opt [mol/m3]", "rel. error"], rows)
            + f"\nDefault recipe: optimal stop {s.t_stop_opt_s / 3600:.2f} h at a yield of {100 * s.yield_B_at_opt:.1f} %; "
            f"economic stop (value {econ.value_B_per_mol:g}/mol, {econ.cost_per_h:g}/h, spec "
            f"{100 * econ.impurity_spec_fraction:.0f} mol% C) {es.t_stop_s / 3600:.2f} h, yield {100 * es.yield_B:.1f} %, "
            f"C {100 * es.impurity_fraction:.1f} %, limited by {es.limited_by}.\n\n" + figure)


def optimise(ctx: Context) -> str:
    from twin_core.offline.optimize import OptimizerConfig, optimize_recipe
    from twin_core.offline.plots import pyplot
    from twin_core.simulation import Twin

    plt = pyplot()
    p = ModelParams()
    cfg = OptimizerConfig(n_segments=2, max_iter=15, grid_step_K=5.0) if ctx.quick else OptimizerConfig()
    res = optimize_recipe(p, cfg)
    rows = []
    for c in (res.best_reactor_isothermal, res.best_constant_jacket, res.optimised):
        rows.append([c.label, c.recipe.end_time_s / 3600, 100 * c.yield_B, 100 * c.impurity_fraction, c.profit,
                     c.T_peak_K - C0, f"{c.T_jacket_range_K[0] - C0:.1f}…{c.T_jacket_range_K[1] - C0:.1f}",
                     "yes" if c.feasible else "NO: " + "; ".join(c.violations)])
    gain = 100 * res.gain
    ctx.check("gain", "optimised recipe minus the best constant jacket (same bounds, T_max, spec): yield gain",
              gain, ">=", 0.0, "points")
    ctx.check("feasible", "optimised recipe meets every constraint on re-simulation (1 = yes)",
              float(res.optimised.feasible), ">=", 1.0)
    ctx.check("impurity", "optimised recipe: impurity at discharge vs the spec", 100 * res.optimised.impurity_fraction,
              "<=", 100 * cfg.impurity_spec_fraction + 1e-6, "mol %")
    ctx.check("T_max", "optimised recipe: peak reactor temperature vs T_max", res.optimised.T_peak_K - C0, "<=",
              cfg.T_max_K - C0, "°C")
    twin = Twin(p)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for c, col in zip((res.best_constant_jacket, res.optimised), ("tab:blue", "tab:red"), strict=True):
        tr = twin.simulate(c.recipe, dt_out_s=30.0)
        a1.plot(tr.t_s / 3600, tr.c_B / 1000, color=col, label=c.label)
        a2.plot(tr.t_s / 3600, tr.T_K - C0, color=col, label=f"{c.label}: reactor")
        a2.plot(tr.t_s / 3600, tr.T_jacket_K - C0, "--", color=col, label=f"{c.label}: jacket")
    a2.axhline(cfg.T_max_K - C0, color="k", lw=0.8, ls=":", label="T_max")
    a1.set(ylabel="c_B [mol/L]", title="product B")
    a2.set(xlabel="time [h]", ylabel="temperature [°C]", title="reactor and jacket temperature")
    a1.legend(fontsize=8)
    a2.legend(fontsize=7)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.suptitle(f"Optimised jacket programme ({cfg.n_segments} segments) vs the best constant jacket")
    figure = ctx.figure("optimised_recipe", fig, "optimised recipe against the best constant-jacket recipe")
    prog = ", ".join(f"({t / 3600:.2f} h, {T - C0:.1f} °C)" for t, T in zip(res.optimised.recipe.times_s,
                                                                          res.optimised.recipe.temps_K, strict=True))
    return (f"`twin optimize` (`twin_core/offline/optimize.py`): {cfg.n_segments} piecewise-linear jacket segments"
            f"{' (--quick: 2 segments, 15 SLSQP iterations, 5 K grid)' if ctx.quick else ''}, objective "
            f"{cfg.objective}; constraints: C ≤ {100 * cfg.impurity_spec_fraction:.0f} mol %, T ≤ {cfg.T_max_K - C0:.0f} °C, "
            f"jacket {cfg.T_jacket_min_K - C0:.0f}…{cfg.T_jacket_max_K - C0:.0f} °C, ramps ≤ {60 * cfg.ramp_max_K_per_s:.1f} "
            f"K/min. SLSQP: {res.message} ({res.iterations} iterations, {res.simulations} simulations). The fair "
            "baseline is the best constant jacket under the same bounds; the reactor-isothermal line is an idealisation.\n\n"
            + md_table(["recipe", "t_end [h]", "yield B [%]", "C end [%]", "profit", "T peak [°C]", "T_j range [°C]", "ok"],
                       rows)
            + f"\nGain over the best constant jacket: {gain:+.2f} points of yield. Optimised programme: {prog}.\n\n" + figure)


def design_space(ctx: Context) -> str:
    ds = ctx.need("twin_core.offline.designspace", "the design space (twin designspace, issue 14)")
    bs = ctx.need("twin_core.batch_sim", "the vectorised batch simulator (issue 14)")
    import tempfile

    from twin_core.analysis import impurity_fraction
    from twin_core.offline.plots import pyplot
    from twin_core.recipe import Recipe
    from twin_core.simulation import Twin

    plt = pyplot()
    n_mc, num = (100, 5) if ctx.quick else (400, 9)
    cfg = ds.quick_config(n_mc=n_mc, num=num)
    with tempfile.TemporaryDirectory(prefix="twin_report_") as tmp:
        res = ds.run_designspace(cfg, out_dir=tmp, plot=False)
        again = ds.run_designspace(cfg, out_dir=None, plot=False)
    p = res.p_all()
    ctx.check("reproducible", "the same seeded study run twice: max |ΔP(all)| over the grid",
              float(np.max(np.abs(p - again.p_all()))), "<=", 0.0)

    # The vectorised simulator against Twin.simulate, batch by batch (a few random jacket plateaus).
    rng = np.random.default_rng(1)
    base = ModelParams()
    params = [base.replace(k1_ref_per_s=base.kinetics.k1_ref_per_s * float(f), T0_K=float(T0))
              for f, T0 in zip(rng.uniform(0.8, 1.2, 6), rng.uniform(293.0, 303.0, 6), strict=True)]
    recipes = [Recipe((0.0, 3600.0), (p_.charge.T0_K, C0 + float(Tp)), 8 * 3600.0, mode="jacket", name=f"r{i}")
               for i, (p_, Tp) in enumerate(zip(params, rng.uniform(55.0, 80.0, 6), strict=True))]
    vec = bs.cqas(bs.simulate_recipes(params, recipes), np.array([p_.charge.x0 for p_ in params]))
    worst = 0.0
    for i, (p_, r) in enumerate(zip(params, recipes, strict=True)):
        tr = Twin(p_).simulate(r, dt_out_s=60.0)
        ref = {"yield_B": (tr.x[-1, 1] - p_.charge.c_B0_mol_per_m3) / p_.charge.c_A0_mol_per_m3,
               "impurity": float(impurity_fraction(tr.x[-1])), "T_peak_K": float(tr.T_K.max())}
        worst = max(worst, *(abs(vec[k][i] - v) / abs(v) for k, v in ref.items()))
    ctx.check("vectorised", "vectorised batch simulator vs Twin.simulate, 6 random batches: max relative difference "
              "of yield, impurity, peak T", worst, "<=", 1e-8)

    names = res.factor_names
    scale = {n: ds.FACTORS[n] for n in names}
    disp = [np.array([v * scale[n][1] + scale[n][2] for v in f.values]) for n, f in zip(names, cfg.factors, strict=True)]
    fig, ax = plt.subplots(figsize=(8.5, 6))
    mesh = ax.pcolormesh(disp[1], disp[0], p, shading="nearest", cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(mesh, ax=ax, label="P(all CQAs in spec) [1]")
    if p.min() < cfg.probability <= p.max():
        ax.contour(disp[1], disp[0], p, levels=[cfg.probability], colors="white", linewidths=2)
    ax.plot([], [], color="white", lw=2, label=f"design-space edge, P = {cfg.probability:g}")
    det = np.array([r["nominal_pass"] for r in res.table]).reshape(p.shape)
    if 0.0 < det.mean() < 1.0:
        ax.contour(disp[1], disp[0], det, levels=[0.5], colors="red", linestyles="--")
    ax.plot([], [], color="red", ls="--", label="deterministic edge (nominal batch)")
    rb = res.robust
    ax.plot(rb[names[1]] * scale[names[1]][1] + scale[names[1]][2], rb[names[0]] * scale[names[0]][1] + scale[names[0]][2],
            "*", ms=15, color="magenta", mec="k", label="most robust set point")
    ax.set(xlabel=scale[names[1]][0], ylabel=scale[names[0]][0],
           title=f"{cfg.name}: {n_mc} Monte-Carlo batches per point ({res.n_batches} in all)")
    ax.legend(fontsize=8, loc="lower left")
    figure = ctx.figure("designspace", fig, "probability that every CQA is within specification, with the "
                        "design-space contour and the deterministic edge")
    n_in = int(np.sum(p >= cfg.probability))
    return (f"`twin designspace` (`twin_core/offline/designspace.py`, vectorised `twin_core/batch_sim.py`), "
            f"{len(res.table)} grid points × {n_mc} batches{' (--quick)' if ctx.quick else ''}, engine "
            f"{res.engine}, {res.elapsed_s:.1f} s. Sampled per batch: the fitted parameters from their covariance, "
            "the plant's charge and fouling variation, the correction's trust (docs/designspace.md). "
            f"{n_in} of {p.size} points have P(all) ≥ {cfg.probability:g}.\n\n```\n{res.summary()}\n```\n\n" + figure)


def parameter_fit(ctx: Context) -> str:
    fit_mod = ctx.need("twin_core.offline.fit", "parameter estimation (twin fit, issue 14)")
    from twin_core.offline.plots import pyplot

    plt = pyplot()
    n = 12 if ctx.quick else 40
    train = [b.without_truth() for b in ctx.batches().values() if b.split == "train"][:n]
    res = fit_mod.fit(train, covariance="batch")
    o = res.obs
    rows = []
    for kind, name in ((1, "lab c_B"), (2, "lab c_C"), (0, "reactor T")):
        m = o["kind"] == kind
        resid = o["measured"][m] - o["predicted"][m]
        rows.append([name, int(m.sum()), float(np.sqrt(np.nanmean(resid ** 2))), "K" if kind == 0 else "mol/m3"])
    ctx.check("ci_finite", "every estimated parameter has a finite 95 % interval (fraction)",
              float(np.mean(np.isfinite(res.ci95).all(axis=1))), ">=", 1.0)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.8))
    for kind, name in ((1, "c_B (product)"), (2, "c_C (impurity)")):
        m = o["kind"] == kind
        a1.plot(o["predicted"][m] / 1000, o["measured"][m] / 1000, "o", ms=3, alpha=0.6, label=name)
    top = float(np.nanmax(o["measured"][o["kind"] > 0])) / 1000 * 1.05
    a1.plot([0, top], [0, top], "k-", lw=0.8, label="parity")
    a1.set(xlabel="fitted model [mol/L]", ylabel="lab assay [mol/L]", title="lab assays")
    a1.legend(fontsize=8)
    m = o["kind"] == 0
    a2.plot(o["predicted"][m] - C0, o["measured"][m] - C0, ".", ms=1.5, alpha=0.3, label="reactor T")
    lo, hi = float(np.nanmin(o["measured"][m])) - C0, float(np.nanmax(o["measured"][m])) - C0
    a2.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="parity")
    a2.set(xlabel="fitted model [°C]", ylabel="measured [°C]", title="reactor temperature")
    a2.legend(fontsize=8)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.suptitle(f"twin fit on {res.n_batches} training batches: measured against fitted")
    figure = ctx.figure("fit_parity", fig, "parity of the lab assays and the reactor temperature with the fitted model")
    return (f"`twin fit` (`twin_core/offline/fit.py`): weighted nonlinear least squares (scipy) on the first {n} training "
            "batches (lab assays and measured temperatures only, never the hidden truth), cluster-robust covariance by "
            "batch. The fitted set, with its covariance, is what the design space samples (`--params`).\n\n"
            f"```\n{res.summary()}\n```\n\n"
            + md_table(["observations", "count", "RMS residual", "unit"], rows) + "\n" + figure)
