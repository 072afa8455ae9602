"""Report sections on the model itself: what it is (read from the code, the signal table and
docs/model.md, never retyped) and how its numerics were verified (oracles run now)."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any

import numpy as np

from twin_core.offline.report import ROOT, Context, md_table
from twin_core.params import R_J_PER_MOL_K, ModelParams
from twin_core.validate import RULE

C0 = 273.15


# -- reading what the code and docs say ------------------------------------------------------------------
def equations() -> str:
    """The equation block of twin_core/model.py's docstring."""
    from twin_core import model

    doc = model.__doc__ or ""
    block = [ln for ln in doc.splitlines() if ln.startswith("    ")]
    return "\n".join(block)


def rationale_table() -> dict[str, str]:
    """``section.field`` -> rationale, from the parameter table of docs/model.md §2."""
    text = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")
    part = text.split("## 2.", 1)[1].split("## 3.", 1)[0]
    out: dict[str, str] = {}
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and "`" in cells[1]:
            for name in re.findall(r"`([a-z]+\.[A-Za-z0-9_]+)`", cells[1]):
                out[name] = cells[3]
    return out


def assumptions() -> str:
    """The 'Assumptions' paragraph of docs/model.md §1."""
    text = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")
    for para in text.split("\n\n"):
        if para.startswith("Assumptions"):
            return " ".join(para.split())[len("Assumptions"):].strip()
    return "(docs/model.md states no assumptions paragraph)"


def parameter_rows() -> list[list[Any]]:
    """One row per leaf parameter: field, FMU signal, value, unit, description, rationale."""
    from twin_core.signals.twin import TWIN_SIGNALS

    by_param = {s.param: s for s in TWIN_SIGNALS if s.param}
    why = rationale_table()
    p = ModelParams()
    rows = []
    for section in ("kinetics", "reactor", "charge"):
        obj = getattr(p, section)
        for f in fields(obj):
            key = f"{section}.{f.name}"
            rule = f.metadata.get(RULE)
            sig = by_param.get(key)
            rows.append([f"`{key}`", f"`{sig.name}`" if sig else "-", f"{float(getattr(obj, f.name)):.6g}",
                         rule.unit if rule else "?", sig.description if sig else "-", why.get(key, "")])
    return rows


def model(ctx: Context) -> str:
    from twin_core.model import coefficients, rate_constants
    from twin_core.signals.twin import TWIN_SIGNALS

    p = ModelParams()
    rows = parameter_rows()
    missing = [r[0] for r in rows if not r[5]]
    ctx.check("rationale", "parameters without a stated rationale (docs/model.md §2)", len(missing), "<=", 0, "",
              ", ".join(missing))
    ctx.check("signal", "parameters without an FMU signal (signal table)", sum(r[1] == "-" for r in rows), "<=", 0)
    c = coefficients(p)
    k = p.kinetics
    rho_cp = p.reactor.density_kg_per_m3 * p.reactor.heat_capacity_J_per_kg_K
    dT_ad = -k.dH1_J_per_mol * p.charge.c_A0_mol_per_m3 / rho_cp
    tau = p.reactor.heat_capacity_J_per_K / p.reactor.UA_W_per_K
    iso = []
    for T_C in (60.0, 70.0, 80.0):
        k1, k2 = rate_constants(C0 + T_C, c)
        t_star = math.log(k2 / k1) / (k2 - k1)
        iso.append([f"{T_C:.0f} °C", float(k1), float(k2), t_star / 3600.0, (k1 / k2) ** (k2 / (k2 - k1))])
    io_rows = [[f"`{s.name}`", s.role, s.unit, s.display_unit or "", s.min, s.max, s.description]
               for s in TWIN_SIGNALS if s.role in ("input", "output") and s.type == "Real"]
    return "\n".join([
        "The equations, as `twin_core/model.py` states them (one pure right-hand side `rhs(t, x, u, p)`, the "
        "Arrhenius law written once in `rate_constants`):", "", "```", equations(), "```", "",
        f"with k_i(T) = k_i,ref · exp(−E_i/R · (1/T − 1/T_ref)), R = {R_J_PER_MOL_K} J/(mol·K). The learned "
        "correction multiplies the two rates (r_i → f_i · r_i), so c_A + c_B + c_C is conserved whatever it "
        "returns.", "",
        f"**Assumptions** (docs/model.md) {assumptions()}", "",
        "**Parameters** (values and units from the validated dataclasses of `twin_core/params.py`, FMU names and "
        "descriptions from the signal table `twin_core/signals/twin.py`, rationale from docs/model.md §2):", "",
        md_table(["field", "FMU name", "value", "unit", "description", "rationale"], rows),
        f"Derived now from these values: adiabatic temperature rise of A → B {dT_ad:.1f} K; heat-exchange time "
        f"constant ρ·c_p·V/UA = {tau / 60:.0f} min. Isothermal optimum (analytic, t* = ln(k2/k1)/(k2 − k1)):", "",
        md_table(["T", "k1 [1/s]", "k2 [1/s]", "t* [h]", "c_B,max / c_A0"], iso),
        "**Inputs and outputs of the FMU** (signal table; SI units inside, the display unit at the edges):", "",
        md_table(["name", "role", "unit", "display unit", "min", "max", "description"], io_rows),
    ])


# -- numerics ---------------------------------------------------------------------------------------
def analytic_isothermal(t: np.ndarray, k1: float, k2: float, cA0: float) -> np.ndarray:
    """Exact (c_A, c_B, c_C) of A -> B -> C at constant k, c_B0 = c_C0 = 0 (expm1: no cancellation)."""
    e1, e2 = np.expm1(-k1 * t), np.expm1(-k2 * t)
    return np.column_stack([cA0 * (1.0 + e1), cA0 * k1 / (k2 - k1) * (e1 - e2), cA0 * (k1 * e2 - k2 * e1) / (k2 - k1)])


def _wavy(t: float, x: Any, r1: float, r2: float) -> tuple[float, float]:
    """A time- and state-dependent rate correction standing in for any learned one."""
    return r1 * (1.0 + 0.3 * math.sin(t / 900.0)) * (x[3] / 330.0), r2 * (0.5 + x[1] / 1000.0)


def radau_reference(p: ModelParams, recipe: Any, t_out: np.ndarray) -> np.ndarray:
    """scipy's Radau between the recipe's breakpoints (an independent implicit solver), tight tolerances."""
    from scipy.integrate import solve_ivp

    from twin_core.model import rhs

    ref = np.empty((len(t_out), 4))
    ref[0] = p.charge.x0
    x = np.array(p.charge.x0)
    edges = [0.0, *recipe.breakpoints(), recipe.end_time_s]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        m = (t_out > a) & (t_out <= b)
        sol = solve_ivp(lambda t, y: rhs(t, y, recipe.setpoint(t), p), (a, b), x, method="Radau",
                        rtol=1e-10, atol=1e-20, t_eval=t_out[m])
        if not sol.success:
            raise RuntimeError(f"Radau failed: {sol.message}")
        ref[m] = sol.y.T
        x = sol.y[:, -1]
    return ref


def step_run(twin: Any, dt: float, t_end: float, T_j: float) -> np.ndarray:
    """The twin stepped over [0, t_end] with communication step dt [s] at a constant jacket: final state."""
    st = twin.initial_state()
    n = int(round(t_end / dt))
    for i in range(n):
        st = twin.step(st, i * dt, dt, T_j)
    return np.asarray(st.x)


def numerics(ctx: Context) -> str:
    from twin_core.integrator import Tolerance
    from twin_core.model import coefficients, rate_constants
    from twin_core.offline.plots import pyplot
    from twin_core.recipe import DEFAULT_RECIPE, Recipe
    from twin_core.simulation import Twin

    plt = pyplot()
    p = ModelParams()
    out = []
    tight = Tolerance(rtol=1e-12, atol=(1e-14,) * 4)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for T_C in (60.0, 80.0):
        T = C0 + T_C
        k1, k2 = rate_constants(T, coefficients(p))
        tr = Twin(p, tolerance=tight).simulate(Recipe.isothermal(T, 10 * 3600.0), dt_out_s=60.0)
        exact = analytic_isothermal(tr.t_s, k1, k2, p.charge.c_A0_mol_per_m3)
        rel = np.abs(tr.x[1:, :3] - exact[1:]) / np.abs(exact[1:])
        ctx.check(f"isothermal_{T_C:.0f}", f"isothermal {T_C:.0f} °C vs analytic solution: max relative error, "
                  "every species, every output (rtol 1e-12)", float(rel.max()), "<=", 1e-8)
        for j, name in enumerate(("c_A", "c_B", "c_C")):
            ax.semilogy(tr.t_s[1:] / 3600, np.maximum(rel[:, j], 1e-17), label=f"{name}, {T_C:.0f} °C")
    ax.axhline(ctx.limit("numerics.isothermal_60", 1e-8), color="k", ls=":", label="limit")
    ax.set(xlabel="time [h]", ylabel="relative error [1]", title="Isothermal batch: twin vs analytic solution")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    out.append(ctx.figure("numerics_isothermal", fig, "relative error of the twin against the analytic isothermal "
                          "solution, rtol 1e-12"))

    tr = Twin(p, correction=_wavy).simulate(DEFAULT_RECIPE, dt_out_s=60.0)
    drift = np.abs(tr.x[:, :3].sum(axis=1) - p.charge.c_A0_mol_per_m3) / p.charge.c_A0_mol_per_m3
    ctx.check("conservation", "c_A + c_B + c_C conserved with a time- and state-dependent rate correction: max "
              "drift / c_A0", float(drift.max()), "<=", 1e-10)

    pa = p.replace(UA_W_per_K=0.0, T0_K=C0 + 50.0)
    tra = Twin(pa).simulate(Recipe.constant_jacket(C0 + 10.0, 10 * 3600.0), dt_out_s=60.0)
    kk, r, ch = pa.kinetics, pa.reactor, pa.charge
    released = (-kk.dH1_J_per_mol * (ch.c_A0_mol_per_m3 - tra.c_A) * r.volume_m3
                - kk.dH2_J_per_mol * tra.c_C * r.volume_m3) / r.heat_capacity_J_per_K
    rise = tra.T_K - ch.T0_K
    rel_ad = np.abs(rise[1:] - released[1:]) / released[1:]
    ctx.check("adiabatic", f"adiabatic batch (UA = 0): temperature rise vs heat released / (ρ c_p V), max relative "
              f"error (final rise {rise[-1]:.1f} K)", float(rel_ad.max()), "<=", 1e-8)

    tight9 = Tolerance(rtol=1e-9, atol=(1e-14,) * 4)
    tw = Twin(p, tolerance=tight9).simulate(DEFAULT_RECIPE, dt_out_s=60.0)
    ref = radau_reference(p, DEFAULT_RECIPE, tw.t_s)
    rel_r = np.abs(tw.x[1:] - ref[1:]) / np.abs(ref[1:])
    ctx.check("radau_tight", "non-isothermal default batch vs scipy Radau (rtol 1e-10): max pointwise relative error "
              "(twin rtol 1e-9)", float(rel_r.max()), "<=", 1e-6)
    dflt = Twin(p).simulate(DEFAULT_RECIPE, dt_out_s=60.0)
    rel_s = np.abs(dflt.x - ref) / np.abs(ref).max(axis=0)
    ctx.check("radau_default", "same at the default tolerance (rtol 1e-8): max error / each state's scale",
              float(rel_s.max()), "<=", 1e-6)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a1.plot(dflt.t_s / 3600, dflt.c_B / 1000, label="twin (DP5(4), rtol 1e-8)")
    a1.plot(dflt.t_s[::10] / 3600, ref[::10, 1] / 1000, "o", ms=3, mfc="none",
            label="scipy Radau (rtol 1e-10)")
    a1.set(ylabel="c_B [mol/L]", title="Default batch: twin vs an independent implicit solver")
    a1.legend(fontsize=8)
    for j, name in enumerate(("c_A", "c_B", "c_C", "T")):
        a2.semilogy(dflt.t_s / 3600, np.maximum(rel_s[:, j], 1e-17), label=name)
    a2.set(xlabel="time [h]", ylabel="|twin − Radau| / scale [1]", title="error relative to each state's scale")
    a2.legend(fontsize=8, ncol=4)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    out.append(ctx.figure("numerics_radau", fig, "default recipe, twin against scipy's Radau"))

    t_end = 3600.0 * (2.0 if ctx.quick else 10.0)
    finals = {dt: step_run(Twin(p), dt, t_end, C0 + 70.0) for dt in (1.0, 60.0, 3600.0) if t_end / dt >= 1}
    base = finals[1.0]
    worst = max(float(np.max(np.abs(v - base) / np.abs(base).clip(1e-300))) for v in finals.values())
    ctx.check("step_size_core", f"twin_core stepped with 1 s, 60 s, 3600 s communication steps ({t_end / 3600:g} h "
              "at a 70 °C jacket): max relative difference of the final state", worst, "<=", 1e-6)
    out.insert(0, "Oracles run now (the same as tests/test_core_model.py, at the same limits): the analytic solution "
               "of the isothermal batch; mass conservation with an arbitrary rate correction; the adiabatic rise "
               "against the heat released; scipy's Radau as an independent implicit reference; and communication-"
               "step independence of the kernel. The FMUs' step-size independence is in [The FMUs](#the-fmus).\n")
    return "\n".join(out) + "\n"
