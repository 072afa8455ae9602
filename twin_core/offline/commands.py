"""twin_core's sub-commands of ``twin``: simulate, signals (optimize and study in their modules)."""

from __future__ import annotations

import argparse
from pathlib import Path

from twin_core.offline.plots import plot_trajectory
from twin_core.params import ModelParams, load_params
from twin_core.recipe import DEFAULT_RECIPE, Recipe, load_recipe
from twin_core.signals import text as signals
from twin_core.simulation import Trajectory, Twin


def _load(args: argparse.Namespace) -> tuple[ModelParams, Recipe]:
    params = load_params(args.params) if getattr(args, "params", None) else ModelParams()
    recipe = load_recipe(args.recipe) if getattr(args, "recipe", None) else DEFAULT_RECIPE
    return params, recipe


def write_trajectory_csv(tr: Trajectory, path: str | Path) -> None:
    """Write a trajectory as CSV with SI units in the column names."""
    import numpy as np

    header = "t_s,c_A_mol_per_m3,c_B_mol_per_m3,c_C_mol_per_m3,T_K,T_jacket_K"
    data = np.column_stack([tr.t_s, tr.x, tr.T_jacket_K])
    np.savetxt(path, data, delimiter=",", header=header, comments="", fmt="%.10g")


def cmd_simulate(args: argparse.Namespace) -> int:
    from twin_core import analysis

    params, recipe = _load(args)
    tr = Twin(params).simulate(recipe, dt_out_s=args.dt)
    summary = analysis.summarize(tr, params)
    print(f"Batch '{recipe.name}' ({recipe.mode} programme), {tr.t_s[-1] / 3600:.2f} h, outputs every {args.dt:g} s")
    print(analysis.format_summary(summary))
    econ = analysis.Economics()
    e = analysis.economic_stop(tr, params, econ)
    print(f"  economic stop (value {econ.value_B_per_mol:g}/mol B, vessel {econ.cost_per_h:g}/h, "
          f"C <= {100 * econ.impurity_spec_fraction:g} %): {e.t_stop_s / 3600:.2f} h, yield B {100 * e.yield_B:.1f} %, "
          f"impurity C {100 * e.impurity_fraction:.1f} %, profit {e.profit:.0f} per batch ({e.limited_by.replace('_', ' ')})")
    if args.csv:
        write_trajectory_csv(tr, args.csv)
        print(f"wrote {args.csv}")
    if args.plot:
        plot_trajectory(tr, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_signals(args: argparse.Namespace) -> int:
    if args.csv is not None:
        text = signals.to_csv()
        if args.csv == "-":
            print(text, end="")
        else:
            Path(args.csv).write_text(text, encoding="utf-8")
            print(f"wrote {args.csv}")
    else:
        print(signals.to_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate one batch with the mechanistic model")
    p.add_argument("--recipe", help="recipe TOML (default: built-in ramp to 70 degC, 6 h)")
    p.add_argument("--params", help="parameter TOML (default: built-in parameter set)")
    p.add_argument("--dt", type=float, default=60.0, help="output interval [s] (default 60)")
    p.add_argument("--csv", help="write the trajectory to this CSV file")
    p.add_argument("--plot", help="write a plot (PNG) to this file")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("signals", help="print the signal table (or write it as CSV)")
    p.add_argument("--csv", nargs="?", const="-", default=None, metavar="FILE", help="CSV to FILE (or stdout)")
    p.set_defaults(func=cmd_signals)

    # The offline tools live in their own modules; importing them here keeps one entry point per package.
    from twin_core.offline import designspace, fit, optimize, report, sensitivity, study

    optimize.register(sub)
    study.register(sub)
    sensitivity.register(sub)
    report.register(sub)
    designspace.register(sub)
    fit.register(sub)
