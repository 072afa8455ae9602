"""Normalised local sensitivities of the batch outcome to every model parameter.

For an output y (final yield, optimal-stop time ...) and a parameter p of ModelParams the
normalised sensitivity is

    S = d ln y / d ln p = (p / y) * dy/dp

("a 1 % larger p changes y by S %"). It is computed by central differences in ln p,

    S ~ (y(p e^h) - y(p e^-h)) / (2 h y(p)),     h = 1e-4 by default,

whose truncation error is O(h^2): below 1e-6 relative even for T_ref_K, whose S is ~10-30 (checked
against the analytic isothermal solution in the tests). The simulations run at a tight tolerance
(rtol 1e-10) so that the integrator's own error, which does not vary smoothly with p because the
adaptive step sequence changes, stays far below the difference quotient (noise ~ rtol / h ~ 1e-6).
The optimal-stop time is refined between samples by a quartic (twin_core.analysis), so it varies
smoothly with p as well.

A parameter whose value is 0 (c_B0, c_C0 in the default charge) has S = 0 by definition; it is
flagged in the table rather than perturbed.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin_core import analysis
from twin_core.errors import ParameterError
from twin_core.integrator import Tolerance
from twin_core.params import ModelParams, load_params
from twin_core.recipe import DEFAULT_RECIPE, Recipe, load_recipe
from twin_core.simulation import Twin

log = logging.getLogger(__name__)

OUTPUTS = ("yield_B_end", "t_stop_opt_s", "yield_B_at_opt", "impurity_end")
"""Outputs whose sensitivities are computed: yield of B and impurity fraction at the end of the
batch, the optimal-stop time [s] and the yield of B at that time."""

SENSITIVITY_TOLERANCE = Tolerance(rtol=1e-10, atol=(1e-8, 1e-8, 1e-8, 1e-8))
"""Tight tolerance for the finite differences (see module docstring)."""


def batch_outputs(params: ModelParams, recipe: Recipe, tolerance: Tolerance = SENSITIVITY_TOLERANCE,
                  dt_out_s: float = 60.0) -> dict[str, float]:
    """The :data:`OUTPUTS` of one simulated batch (yields and impurity [1], time [s])."""
    tr = Twin(params, tolerance=tolerance).simulate(recipe, dt_out_s=dt_out_s)
    s = analysis.summarize(tr, params)
    if s.t_stop_opt_s >= tr.t_s[-1] or s.t_stop_opt_s <= tr.t_s[0]:
        log.warning("maximum of c_B at the end of the trajectory (%s): the optimal-stop time is not "
                    "an interior optimum and its sensitivities mean little", recipe.name)
    return {"yield_B_end": s.yield_B, "t_stop_opt_s": s.t_stop_opt_s, "yield_B_at_opt": s.yield_B_at_opt,
            "impurity_end": s.impurity_fraction}


@dataclass(frozen=True)
class Sensitivities:
    """Normalised sensitivities: ``S[i, j] = d ln outputs[j] / d ln parameters[i]``."""

    parameters: tuple[str, ...]
    values: tuple[float, ...]
    outputs: tuple[str, ...]
    nominal: tuple[float, ...]
    S: np.ndarray
    zero_valued: tuple[bool, ...]
    recipe_name: str

    def get(self, parameter: str, output: str) -> float:
        """S for one (parameter, output) pair."""
        return float(self.S[self.parameters.index(parameter), self.outputs.index(output)])


def local_sensitivities(params: ModelParams | None = None, recipe: Recipe = DEFAULT_RECIPE,
                        parameters: tuple[str, ...] | None = None, rel_step: float = 1e-4,
                        tolerance: Tolerance = SENSITIVITY_TOLERANCE, dt_out_s: float = 60.0,
                        progress: bool = False) -> Sensitivities:
    """Normalised local sensitivities of :data:`OUTPUTS` to ``parameters`` (default: every leaf
    parameter of ModelParams, by its field name such as ``k1_ref_per_s``).

    rel_step is h, the step in ln p. Two simulations per non-zero parameter.
    """
    if not (isinstance(rel_step, float) and math.isfinite(rel_step) and 1e-8 <= rel_step <= 0.1):
        raise ParameterError("rel_step", rel_step, "must be a float within [1e-8, 0.1]")
    p0 = params if params is not None else ModelParams()
    flat = p0.flat()
    names = tuple(flat) if parameters is None else tuple(parameters)
    for n in names:
        if n not in flat:
            raise ParameterError("parameters", n, f"not a parameter of ModelParams; expected one of {sorted(flat)}")
    y0 = batch_outputs(p0, recipe, tolerance, dt_out_s)
    nominal = np.array([y0[o] for o in OUTPUTS])
    S = np.zeros((len(names), len(OUTPUTS)))
    zero = []
    it = names
    if progress:
        from tqdm import tqdm

        it = tqdm(names, desc="sensitivities", unit="param")
    for i, n in enumerate(it):
        v = flat[n]
        zero.append(v == 0.0)
        if v == 0.0:
            continue
        yp = batch_outputs(p0.replace(**{n: v * math.exp(rel_step)}), recipe, tolerance, dt_out_s)
        ym = batch_outputs(p0.replace(**{n: v * math.exp(-rel_step)}), recipe, tolerance, dt_out_s)
        for j, o in enumerate(OUTPUTS):
            S[i, j] = (yp[o] - ym[o]) / (2.0 * rel_step * y0[o]) if y0[o] != 0.0 else math.nan
    return Sensitivities(names, tuple(flat[n] for n in names), OUTPUTS, tuple(float(v) for v in nominal), S,
                         tuple(zero), recipe.name)


def format_sensitivities(s: Sensitivities) -> str:
    """Console table of the sensitivities."""
    head = f"{'parameter':<26}{'value':>12}" + "".join(f"{o:>16}" for o in s.outputs)
    lines = [f"Normalised sensitivities d ln y / d ln p, recipe '{s.recipe_name}'",
             "nominal: " + ", ".join(f"{o} = {v:.6g}" for o, v in zip(s.outputs, s.nominal, strict=True)),
             head, "-" * len(head)]
    for i, n in enumerate(s.parameters):
        row = f"{n:<26}{s.values[i]:>12.5g}"
        if s.zero_valued[i]:
            row += "   (p = 0: S = 0 by definition)"
        else:
            row += "".join(f"{s.S[i, j]:>16.4f}" for j in range(len(s.outputs)))
        lines.append(row)
    return "\n".join(lines)


def to_csv(s: Sensitivities, path: str | Path) -> None:
    """Write the sensitivities as CSV: one row per parameter, one column per output."""
    lines = ["parameter,value,zero_valued," + ",".join(f"S_{o}" for o in s.outputs)]
    for i, n in enumerate(s.parameters):
        lines.append(f"{n},{s.values[i]!r},{int(s.zero_valued[i])}," + ",".join(repr(float(v)) for v in s.S[i]))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def cmd_sensitivity(args: argparse.Namespace) -> int:
    params = load_params(args.params) if args.params else ModelParams()
    recipe = load_recipe(args.recipe) if args.recipe else DEFAULT_RECIPE
    s = local_sensitivities(params, recipe, progress=True)
    print(format_sensitivities(s))
    if args.csv:
        to_csv(s, args.csv)
        print(f"wrote {args.csv}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``twin sensitivity``."""
    p = sub.add_parser("sensitivity", help="normalised local sensitivities of yield and optimal stop to every parameter")
    p.add_argument("--recipe", help="recipe TOML (default: built-in ramp to 70 degC, 6 h)")
    p.add_argument("--params", help="parameter TOML (default: built-in parameter set)")
    p.add_argument("--csv", help="write the table to this CSV file")
    p.set_defaults(func=cmd_sensitivity)
