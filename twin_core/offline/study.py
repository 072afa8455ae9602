"""Temperature-profile study: a grid of isothermal and ramp recipes and what each does to the batch.

Each recipe is simulated over the same batch length; the table gives, per recipe, the yield of B
and the impurity fraction at the end of the batch, the optimal stop (time of maximum c_B) with the
yield and impurity there, and the peak reactor temperature. Recipes of the default grid:

- ``reactor`` mode, isothermal at 50 ... 90 degC (the charge is assumed at temperature at t = 0 and the
  jacket does whatever it takes: the idealised analysis case);
- ``jacket`` mode, jacket held at 55 ... 80 degC from t = 0 (the charge starts at T0 and the exotherm
  is only partly removed: the real plant case);
- ``jacket`` mode, ramps from T0 to 60 ... 80 degC over 1 h, then hold (the default recipe's shape);
- ``reactor`` mode, falling and rising linear programmes across the batch (90 -> 60, 80 -> 60,
  60 -> 80 degC): with E2 > E1, hot early while A is plentiful and cool later to protect B is the
  textbook shape for A -> B -> C.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from twin_core import analysis
from twin_core.errors import ParameterError
from twin_core.offline.plots import C0, plot_study
from twin_core.params import ModelParams, load_params
from twin_core.recipe import Recipe
from twin_core.simulation import Trajectory, Twin


def default_grid(end_time_s: float = 10 * 3600.0, T0_K: float = 298.15) -> list[Recipe]:
    """The default grid of recipes (see module docstring), all ending at end_time_s [s]."""
    if not (math.isfinite(end_time_s) and end_time_s > 3600.0):
        raise ParameterError("end_time_s", end_time_s, "the study needs batches longer than 1 h")
    grid = [Recipe.isothermal(C0 + T, end_time_s, name=f"reactor {T:.0f} degC") for T in (50, 60, 70, 80, 90)]
    grid += [Recipe.constant_jacket(C0 + T, end_time_s, name=f"jacket {T:.0f} degC") for T in (55, 60, 65, 70, 75, 80)]
    grid += [Recipe((0.0, 3600.0), (T0_K, C0 + T), end_time_s, mode="jacket",
                    name=f"jacket ramp {T0_K - C0:.0f}->{T:.0f} degC in 1 h") for T in (60, 70, 80)]
    grid += [Recipe((0.0, end_time_s), (C0 + a, C0 + b), end_time_s, mode="reactor",
                    name=f"reactor ramp {a:.0f}->{b:.0f} degC") for a, b in ((90, 60), (80, 60), (75, 55), (60, 80))]
    return grid


@dataclass(frozen=True)
class StudyRow:
    """One recipe of the study (SI units; fractions dimensionless)."""

    name: str
    mode: str
    t_end_s: float
    yield_B_end: float
    impurity_end: float
    t_stop_opt_s: float
    yield_B_at_opt: float
    impurity_at_opt: float
    T_peak_K: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def study_row(tr: Trajectory, p: ModelParams) -> StudyRow:
    """The study figures of one simulated batch."""
    s = analysis.summarize(tr, p)
    f_opt = analysis.impurity_fraction(np.array([np.interp(s.t_stop_opt_s, tr.t_s, tr.x[:, j]) for j in range(4)]))
    return StudyRow(tr.recipe.name, tr.recipe.mode, s.t_end_s, s.yield_B, s.impurity_fraction, s.t_stop_opt_s,
                    s.yield_B_at_opt, float(f_opt), s.T_peak_K)


def profile_study(recipes: list[Recipe] | None = None, params: ModelParams | None = None, dt_out_s: float = 60.0,
                  progress: bool = False) -> tuple[list[StudyRow], list[Trajectory]]:
    """Simulate every recipe (default: :func:`default_grid`) and return its row and trajectory."""
    p = params if params is not None else ModelParams()
    recipes = recipes if recipes is not None else default_grid(T0_K=p.charge.T0_K)
    twin = Twin(p)
    it = recipes
    if progress:
        from tqdm import tqdm

        it = tqdm(recipes, desc="study", unit="recipe")
    trs = [twin.simulate(r, dt_out_s=dt_out_s) for r in it]
    return [study_row(tr, p) for tr in trs], trs


def format_study(rows: list[StudyRow]) -> str:
    """Console table (display units: h, degC, %); the best yield at the optimal stop is marked."""
    best = max(range(len(rows)), key=lambda i: rows[i].yield_B_at_opt)
    head = (f"{'recipe':<36}{'end h':>7}{'Y_B end':>9}{'C end':>8}{'t_opt h':>9}{'Y_B opt':>9}"
            f"{'C opt':>8}{'T peak':>8}")
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows):
        lines.append(f"{r.name:<36}{r.t_end_s / 3600:>7.2f}{100 * r.yield_B_end:>8.1f}%{100 * r.impurity_end:>7.1f}%"
                     f"{r.t_stop_opt_s / 3600:>9.2f}{100 * r.yield_B_at_opt:>8.1f}%{100 * r.impurity_at_opt:>7.1f}%"
                     f"{r.T_peak_K - C0:>6.1f} C" + ("  <- best yield at optimal stop" if i == best else ""))
    lines.append("Y_B: yield of B (mol B per mol A charged); C: mole fraction of impurity C; "
                 "t_opt: time of maximum c_B (the optimal stop); T peak: highest reactor temperature.")
    return "\n".join(lines)


def write_csv(rows: list[StudyRow], path: str | Path) -> None:
    """The study table as CSV, SI units in the column names."""
    cols = list(rows[0].as_dict()) if rows else []
    lines = [",".join(cols)]
    for r in rows:
        d = r.as_dict()
        lines.append(",".join(f'"{d[c]}"' if isinstance(d[c], str) else repr(d[c]) for c in cols))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def cmd_study(args: argparse.Namespace) -> int:
    params = load_params(args.params) if args.params else ModelParams()
    grid = default_grid(args.hours * 3600.0, params.charge.T0_K)
    rows, trs = profile_study(grid, params, dt_out_s=60.0, progress=True)
    print(f"Temperature-profile study: {len(rows)} recipes, {args.hours:g} h batches")
    print(format_study(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.plot:
        plot_study(rows, trs, args.plot)
        print(f"wrote {args.plot}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``twin study``."""
    p = sub.add_parser("study", help="grid of isothermal and ramp recipes: yield, impurity, optimal stop, peak T")
    p.add_argument("--params", help="parameter TOML (default: built-in parameter set)")
    p.add_argument("--hours", type=float, default=10.0, help="batch length [h] (default 10)")
    p.add_argument("--csv", help="write the table to this CSV file")
    p.add_argument("--plot", help="write a plot (PNG) to this file")
    p.set_defaults(func=cmd_study)
