"""Recipe optimisation: the jacket programme and the batch end time that make the most of a batch.

Offline tool (scipy is allowed here, never on the FMU's runtime path).

Formulation
-----------
Decision variables: the jacket temperatures T_0 ... T_N at N + 1 equally spaced knots
t_i = i * t_end / N (a piecewise-linear programme of N segments, i.e. holds and ramps the way batch
recipes are written) and the end time t_end itself. All are scaled to [0, 1] between their bounds.

    maximise    Y_B(t_end)                                   (objective "yield")
             or profit(t_end) / (value_B * V * c_A0)        (objective "economic", see analysis.Economics)
    subject to  T_jacket_min <= T_i <= T_jacket_max          bounds
                t_end_min <= t_end <= t_end_max              bounds
                |T_{i+1} - T_i| <= ramp_max * t_end / N      ramp-rate limit (linear in the variables)
                f_C(t_end) <= impurity spec                  quality at discharge
                T(t) <= T_max - T_margin at n_samples + 1 times k * t_end / n_samples
                                                             reactor temperature (path constraint)

The path constraint is sampled at fixed fractions of t_end, so every sample moves smoothly with the
variables; the small back-off T_margin keeps the continuous trajectory below T_max between samples
(the result is re-simulated at 10 s resolution and checked).

Method: SLSQP with gradients by central finite differences of simulations at a tight tolerance
(rtol 1e-10, so the integrator's step-sequence noise stays far below the difference quotient). Its
start comes from a grid search: the best constant-jacket recipe (1 K grid of T_j, each simulated to
t_end_max and stopped at its best feasible sample), refined by SLSQP over (T_j, t_end). Every step is
deterministic: two runs give identical results.

Fair comparison
---------------
The optimised recipe manipulates the jacket, starts from the charge at T0 and respects the jacket
bounds; its fair baseline is therefore the best *constant-jacket* recipe under the same bounds,
T_max, spec and end-time bounds (all knots equal is a point of the optimiser's own search space, and
the optimiser starts there, so its gain is what shaping the programme is worth). The best
*reactor-isothermal* recipe is printed as well, but it is an idealisation: the charge is assumed at
temperature at t = 0 (no heat-up) and the jacket is assumed to deliver whatever the energy balance
demands (the demanded range is shown; it may lie outside the jacket bounds).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from twin_core.analysis import Economics, impurity_fraction, yield_of_c_B
from twin_core.errors import ParameterError
from twin_core.integrator import Tolerance
from twin_core.offline.plots import C0, plot_result
from twin_core.params import ModelParams, load_params
from twin_core.recipe import Recipe
from twin_core.simulation import DEFAULT_TOLERANCE, Trajectory, Twin
from twin_core.validate import spec, validated

log = logging.getLogger(__name__)

Objective = Literal["yield", "economic"]
OPTIMISER_TOLERANCE = Tolerance(rtol=1e-10, atol=(1e-8, 1e-8, 1e-8, 1e-8))
"""Integrator tolerance inside the optimiser (finite-difference gradients need clean outputs)."""


@validated("optimizer")
class OptimizerConfig:
    """Bounds, constraints and settings of the recipe optimisation (SI units).

    The impurity spec is ``economics.impurity_spec_fraction`` for both objectives (off-spec product
    is worth nothing, so the spec belongs to the economics of the batch). Defaults: jacket medium
    15 ... 110 degC; reactor at most 85 degC (solvent and product stability); jacket ramps at most
    1 K/min (thermal-shock limit of glass-lined steel); batch 1 ... 10 h.
    """

    n_segments: int = spec(6, kind="int", ge=1, le=48)
    T_jacket_min_K: float = spec(C0 + 15.0, unit="K", kind="temperature")
    T_jacket_max_K: float = spec(C0 + 110.0, unit="K", kind="temperature")
    ramp_max_K_per_s: float = spec(1.0 / 60.0, unit="K/s", gt=0.0)
    T_max_K: float = spec(C0 + 85.0, unit="K", kind="temperature")
    t_end_min_s: float = spec(3600.0, unit="s", gt=0.0)
    t_end_max_s: float = spec(10 * 3600.0, unit="s", gt=0.0)
    objective: Objective = spec("yield", kind="str", choices=("yield", "economic"))
    economics: Economics = spec(kind=Economics, default_factory=Economics)
    n_samples: int = spec(240, kind="int", ge=20, le=5000)
    T_margin_K: float = spec(0.05, unit="K", ge=0.0, lt=5.0)
    max_iter: int = spec(100, kind="int", ge=1)
    grid_step_K: float = spec(1.0, unit="K", gt=0.0, le=10.0)

    def __post_init__(self) -> None:
        if not self.T_jacket_min_K < self.T_jacket_max_K:
            raise ParameterError("optimizer.T_jacket_max_K", self.T_jacket_max_K, "must be > T_jacket_min_K")
        if not 0.0 < self.t_end_min_s < self.t_end_max_s:
            raise ParameterError("optimizer.t_end_max_s", self.t_end_max_s, "need 0 < t_end_min_s < t_end_max_s")

    @property
    def impurity_spec_fraction(self) -> float:
        """Highest mole fraction of C at discharge [1]."""
        return self.economics.impurity_spec_fraction


@dataclass(frozen=True)
class Candidate:
    """A recipe with the figures that matter, re-simulated at the default tolerance.

    objective: Y_B [1] or profit [currency] at t_end. T_jacket_range_K: for a jacket recipe the
    programme's range; for a reactor recipe the range the energy balance demands of the jacket.
    """

    label: str
    recipe: Recipe
    objective: float
    yield_B: float
    impurity_fraction: float
    profit: float
    T_peak_K: float
    T_jacket_range_K: tuple[float, float]
    feasible: bool
    violations: tuple[str, ...] = ()


@dataclass(frozen=True)
class OptimizationResult:
    """The optimised recipe, its baselines and how the optimiser got there."""

    config: OptimizerConfig
    optimised: Candidate
    best_constant_jacket: Candidate
    best_reactor_isothermal: Candidate
    success: bool
    message: str
    iterations: int
    simulations: int

    @property
    def gain(self) -> float:
        """Objective of the optimised recipe minus that of the best constant-jacket one."""
        return self.optimised.objective - self.best_constant_jacket.objective


# -- evaluation -------------------------------------------------------------------------------------
class _Problem:
    """Scaled decision vector -> simulated outputs, with a cache and finite-difference Jacobians.

    z = (z_0 ... z_{n_knots-1}, z_t): knot temperatures and end time, each in [0, 1].
    outputs = (objective, impurity constraint, T constraints at the samples), constraints >= 0.
    """

    def __init__(self, params: ModelParams, cfg: OptimizerConfig, n_knots: int, mode: str,
                 T_lo_K: float, T_hi_K: float) -> None:
        self.params, self.cfg, self.n_knots, self.mode = params, cfg, n_knots, mode
        self.T_lo, self.T_span = T_lo_K, T_hi_K - T_lo_K
        self.t_lo, self.t_span = cfg.t_end_min_s, cfg.t_end_max_s - cfg.t_end_min_s
        self.twin = Twin(params, tolerance=OPTIMISER_TOLERANCE)
        self.simulations = 0
        self._cache: dict[bytes, np.ndarray] = {}
        self._jac_cache: dict[bytes, np.ndarray] = {}
        e, p = cfg.economics, params
        self._profit_scale = e.value_B_per_mol * p.reactor.volume_m3 * p.charge.c_A0_mol_per_m3

    def recipe(self, z: np.ndarray, name: str = "optimised") -> Recipe:
        temps = tuple(float(self.T_lo + self.T_span * v) for v in z[:self.n_knots])
        t_end = float(self.t_lo + self.t_span * z[-1])
        n_seg = self.n_knots - 1
        times = tuple(t_end * i / n_seg for i in range(self.n_knots)) if n_seg else (0.0,)
        return Recipe(times, temps, t_end, mode=self.mode, name=name)

    def outputs(self, z: np.ndarray) -> np.ndarray:
        key = z.tobytes()
        out = self._cache.get(key)
        if out is None:
            r = self.recipe(z)
            tr = self.twin.simulate(r, dt_out_s=r.end_time_s / self.cfg.n_samples)
            self.simulations += 1
            out = np.concatenate(([self.objective(tr)], [self.impurity_margin(tr)], self.T_margin(tr)))
            self._cache[key] = out
        return out

    def objective(self, tr: Trajectory) -> float:
        """Scaled objective to maximise: Y_B or profit / (value_B * V * c_A0)."""
        p, e = self.params, self.cfg.economics
        cB = float(tr.x[-1, 1])
        if self.cfg.objective == "yield":
            return yield_of_c_B(cB, p)
        return float(e.profit(tr.t_s[-1], cB, p)) / self._profit_scale

    def impurity_margin(self, tr: Trajectory) -> float:
        spec = self.cfg.impurity_spec_fraction
        # A relative back-off of 1e-6 so that SLSQP's own constraint tolerance cannot cross the spec.
        return (spec * (1.0 - 1e-6) - float(impurity_fraction(tr.x[-1]))) / spec

    def T_margin(self, tr: Trajectory) -> np.ndarray:
        return (self.cfg.T_max_K - self.cfg.T_margin_K - tr.T_K) / 10.0

    def jacobian(self, z: np.ndarray) -> np.ndarray:
        """Central differences of :meth:`outputs` (step 1e-5 in scaled units, one-sided at a bound)."""
        key = z.tobytes()
        jac = self._jac_cache.get(key)
        if jac is None:
            f0 = self.outputs(z)
            jac = np.empty((len(f0), len(z)))
            d = 1e-5
            for j in range(len(z)):
                zp, zm = z.copy(), z.copy()
                hp = d if z[j] + d <= 1.0 else 0.0
                hm = d if z[j] - d >= 0.0 else 0.0
                zp[j] += hp
                zm[j] -= hm
                jac[:, j] = (self.outputs(zp) - self.outputs(zm)) / (hp + hm)
            self._jac_cache[key] = jac
        return jac

    def ramp_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Linear ramp constraints A z + b >= 0 (scaled by the temperature span)."""
        n_seg = self.n_knots - 1
        rows, b = [], []
        for i in range(n_seg):
            for sign in (1.0, -1.0):
                row = np.zeros(self.n_knots + 1)
                # sign*(T_{i+1} - T_i) <= ramp * t_end / N, everything divided by T_span
                row[i + 1], row[i] = -sign, sign
                row[-1] = self.cfg.ramp_max_K_per_s * self.t_span / n_seg / self.T_span
                rows.append(row)
                b.append(self.cfg.ramp_max_K_per_s * self.t_lo / n_seg / self.T_span)
        return np.array(rows).reshape(-1, self.n_knots + 1), np.array(b)

    def solve(self, z0: np.ndarray, max_iter: int, progress: object | None = None) -> tuple[np.ndarray, object]:
        """SLSQP from z0; returns (z, scipy result)."""
        from scipy.optimize import minimize

        cons = [{"type": "ineq", "fun": lambda z: self.outputs(z)[1:], "jac": lambda z: self.jacobian(z)[1:]}]
        if self.n_knots > 1:
            A, b = self.ramp_matrix()
            cons.append({"type": "ineq", "fun": lambda z: A @ z + b, "jac": lambda z: A})

        def callback(*_: object) -> None:
            if progress is not None:
                progress.update(1)  # type: ignore[attr-defined]

        res = minimize(lambda z: -self.outputs(z)[0], z0, jac=lambda z: -self.jacobian(z)[0], method="SLSQP",
                       bounds=[(0.0, 1.0)] * len(z0), constraints=cons, callback=callback,
                       options={"maxiter": max_iter, "ftol": 1e-10})
        return np.clip(res.x, 0.0, 1.0), res


# -- candidates ---------------------------------------------------------------------------------------
def evaluate(recipe: Recipe, params: ModelParams, cfg: OptimizerConfig, label: str,
             dt_out_s: float = 10.0) -> Candidate:
    """Re-simulate ``recipe`` at the default tolerance with outputs every dt_out_s [s] and check every
    constraint of ``cfg`` on it (bounds, ramp rate, impurity spec, T_max without the back-off)."""
    twin = Twin(params, tolerance=DEFAULT_TOLERANCE)
    tr = twin.simulate(recipe, dt_out_s=dt_out_s)
    e = cfg.economics
    cB = float(tr.x[-1, 1])
    Y = yield_of_c_B(cB, params)
    profit = float(e.profit(tr.t_s[-1], cB, params))
    fC = float(impurity_fraction(tr.x[-1]))
    T_peak = float(np.max(tr.T_K))
    viol = []
    if fC > cfg.impurity_spec_fraction:
        viol.append(f"impurity {fC:.6f} > spec {cfg.impurity_spec_fraction}")
    if T_peak > cfg.T_max_K:
        viol.append(f"peak T {T_peak:.4f} K > T_max {cfg.T_max_K} K")
    if not cfg.t_end_min_s <= recipe.end_time_s <= cfg.t_end_max_s:
        viol.append(f"t_end {recipe.end_time_s} s outside [{cfg.t_end_min_s}, {cfg.t_end_max_s}]")
    if recipe.mode == "jacket":
        Tj = (min(recipe.temps_K), max(recipe.temps_K))
        if Tj[0] < cfg.T_jacket_min_K or Tj[1] > cfg.T_jacket_max_K:
            viol.append(f"jacket programme {Tj} outside [{cfg.T_jacket_min_K}, {cfg.T_jacket_max_K}] K")
        if recipe.max_ramp_K_per_s > cfg.ramp_max_K_per_s:
            viol.append(f"ramp {recipe.max_ramp_K_per_s} K/s > {cfg.ramp_max_K_per_s} K/s")
    else:
        Tj = (float(np.nanmin(tr.T_jacket_K)), float(np.nanmax(tr.T_jacket_K)))
    obj = Y if cfg.objective == "yield" else profit
    return Candidate(label, recipe, obj, Y, fC, profit, T_peak, Tj, not viol, tuple(viol))


def _best_sample(tr: Trajectory, params: ModelParams, cfg: OptimizerConfig) -> tuple[float, float] | None:
    """(objective, t [s]) of the best feasible stop on a trajectory, or None if none is feasible."""
    ok_T = np.maximum.accumulate(tr.T_K) <= cfg.T_max_K - cfg.T_margin_K
    ok = ok_T & (impurity_fraction(tr.x) <= cfg.impurity_spec_fraction) & (tr.t_s >= cfg.t_end_min_s) \
        & (tr.t_s <= cfg.t_end_max_s)
    if not ok.any():
        return None
    p = params
    if cfg.objective == "yield":
        obj = yield_of_c_B(tr.c_B, p)
    else:
        obj = cfg.economics.profit(tr.t_s, tr.c_B, p)
    obj = np.where(ok, obj, -np.inf)
    i = int(np.argmax(obj))
    return float(obj[i]), float(tr.t_s[i])


def _best_constant(params: ModelParams, cfg: OptimizerConfig, mode: str, progress: bool,
                   counter: list[int]) -> tuple[Recipe, float]:
    """Grid search then SLSQP over (T, t_end) for a constant jacket (or reactor) temperature.

    Returns the recipe and its scaled objective. Raises ParameterError if no grid point is feasible.
    """
    if mode == "jacket":
        lo, hi = cfg.T_jacket_min_K, cfg.T_jacket_max_K
    else:
        lo, hi = cfg.T_jacket_min_K, min(cfg.T_jacket_max_K, cfg.T_max_K - cfg.T_margin_K)
    n = int(math.floor((hi - lo) / cfg.grid_step_K)) + 1
    grid = lo + cfg.grid_step_K * np.arange(n)
    twin = Twin(params, tolerance=DEFAULT_TOLERANCE)
    best: tuple[float, float, float] | None = None
    it = grid
    if progress:
        from tqdm import tqdm

        it = tqdm(grid, desc=f"grid: constant {mode}", unit="T", leave=False)
    for T in it:
        r = Recipe((0.0,), (float(T),), cfg.t_end_max_s, mode=mode)
        tr = twin.simulate(r, dt_out_s=60.0)
        counter[0] += 1
        bs = _best_sample(tr, params, cfg)
        if bs is not None and (best is None or bs[0] > best[0]):
            best = (bs[0], float(T), bs[1])
    if best is None:
        raise ParameterError("optimizer", cfg, f"no constant-{mode} recipe on the grid meets the constraints")
    prob = _Problem(params, cfg, 1, mode, lo, hi)
    z0 = np.array([(best[1] - lo) / (hi - lo), (best[2] - prob.t_lo) / prob.t_span])
    z0 = np.clip(z0, 0.0, 1.0)
    z, _ = prob.solve(z0, cfg.max_iter)
    counter[0] += prob.simulations
    if not _feasible(prob, z) or prob.outputs(z)[0] < prob.outputs(z0)[0]:
        z = z0 if _feasible(prob, z0) else z
    name = f"best constant {mode}"
    return prob.recipe(z, name), float(prob.outputs(z)[0])


def _feasible(prob: _Problem, z: np.ndarray) -> bool:
    return bool(np.all(prob.outputs(z)[1:] >= -1e-9))


def _project_ramps(temps: list[float], times: tuple[float, ...], cfg: OptimizerConfig) -> tuple[float, ...]:
    """Clip knots to the jacket bounds and the ramp limit exactly (SLSQP meets linear constraints only
    to its own tolerance; this moves knots by ~1e-9 K at most)."""
    out = [min(max(temps[0], cfg.T_jacket_min_K), cfg.T_jacket_max_K)]
    for i in range(1, len(temps)):
        step = cfg.ramp_max_K_per_s * (times[i] - times[i - 1]) * (1.0 - 1e-12)
        v = min(max(temps[i], out[-1] - step, cfg.T_jacket_min_K), out[-1] + step, cfg.T_jacket_max_K)
        out.append(v)
    return tuple(out)


def optimize_recipe(params: ModelParams | None = None, config: OptimizerConfig | None = None,
                    progress: bool = False) -> OptimizationResult:
    """Optimise the jacket programme and end time (see module docstring)."""
    p = params if params is not None else ModelParams()
    cfg = config if config is not None else OptimizerConfig()
    counter = [0]
    iso_recipe, _ = _best_constant(p, cfg, "reactor", progress, counter)
    cj_recipe, cj_obj = _best_constant(p, cfg, "jacket", progress, counter)
    iso = evaluate(replace(iso_recipe, name="best reactor-isothermal"), p, cfg, "best reactor-isothermal (ideal)")
    cj = evaluate(replace(cj_recipe, name="best constant jacket"), p, cfg, "best constant jacket")

    N = cfg.n_segments
    prob = _Problem(p, cfg, N + 1, "jacket", cfg.T_jacket_min_K, cfg.T_jacket_max_K)
    z_T = (cj_recipe.temps_K[0] - prob.T_lo) / prob.T_span
    z0 = np.array([z_T] * (N + 1) + [(cj_recipe.end_time_s - prob.t_lo) / prob.t_span])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_iter, desc=f"SLSQP, {N} segments", unit="it", leave=False)
    try:
        z, res = prob.solve(z0, cfg.max_iter, bar)
    finally:
        if bar is not None:
            bar.close()
    counter[0] += prob.simulations
    success, message, nit = bool(res.success), str(res.message), int(res.nit)
    if not _feasible(prob, z) or prob.outputs(z)[0] < prob.outputs(z0)[0]:
        log.warning("SLSQP ended at a worse or infeasible point (%s); keeping the constant-jacket start", message)
        z, success, message = z0, False, f"kept the start: {message}"
    r = prob.recipe(z, f"optimised-{N}-segments-{cfg.objective}")
    r = Recipe(r.times_s, _project_ramps(list(r.temps_K), r.times_s, cfg), r.end_time_s, mode="jacket", name=r.name)
    opt = evaluate(r, p, cfg, f"optimised ({N} segments)")
    if not opt.feasible:
        log.warning("optimised recipe violates constraints on re-simulation: %s", "; ".join(opt.violations))
    return OptimizationResult(cfg, opt, cj, iso, success and opt.feasible, message, nit, counter[0] + 3)


# -- reporting ----------------------------------------------------------------------------------------
def format_result(res: OptimizationResult) -> str:
    """Console table of the optimised recipe against its baselines (display units)."""
    cfg = res.config
    obj_name = "yield B" if cfg.objective == "yield" else "profit"
    head = f"{'recipe':<34}{'t_end h':>8}{'yield B':>9}{'C end':>8}{'profit':>10}{'T peak':>9}{'T_j range degC':>17}  ok"
    lines = [
        f"Recipe optimisation: maximise {obj_name} at discharge, {cfg.n_segments} piecewise-linear jacket segments",
        f"constraints: impurity C <= {100 * cfg.impurity_spec_fraction:.1f} %, reactor T <= {cfg.T_max_K - C0:.1f} degC, "
        f"jacket {cfg.T_jacket_min_K - C0:.0f}...{cfg.T_jacket_max_K - C0:.0f} degC, ramps <= "
        f"{cfg.ramp_max_K_per_s * 60:.2f} K/min, batch {cfg.t_end_min_s / 3600:g}...{cfg.t_end_max_s / 3600:g} h",
        head, "-" * len(head)]
    for c in (res.best_reactor_isothermal, res.best_constant_jacket, res.optimised):
        lines.append(f"{c.label:<34}{c.recipe.end_time_s / 3600:>8.2f}{100 * c.yield_B:>8.2f}%"
                     f"{100 * c.impurity_fraction:>7.2f}%{c.profit:>10.0f}{c.T_peak_K - C0:>7.2f} C"
                     f"{c.T_jacket_range_K[0] - C0:>8.1f}..{c.T_jacket_range_K[1] - C0:<7.1f}"
                     f"  {'yes' if c.feasible else 'NO: ' + '; '.join(c.violations)}")
    base = res.best_constant_jacket.objective
    if cfg.objective == "yield":
        gain = f"{100 * res.gain:+.2f} percentage points of yield ({100 * res.gain / base:+.2f} %)"
    else:
        gain = f"{res.gain:+.0f} profit per batch ({100 * res.gain / abs(base):+.2f} %)"
    iso = res.best_reactor_isothermal
    lines += [
        f"gain over the best constant-jacket recipe (the fair baseline): {gain}",
        f"the reactor-isothermal line is an idealisation (no heat-up, jacket delivers whatever is needed: "
        f"{iso.T_jacket_range_K[0] - C0:.1f}...{iso.T_jacket_range_K[1] - C0:.1f} degC demanded)",
        "optimised jacket programme (t [h], T_j [degC]): " + ", ".join(
            f"({t / 3600:.2f}, {T - C0:.1f})" for t, T in zip(res.optimised.recipe.times_s,
                                                               res.optimised.recipe.temps_K, strict=True)),
        f"SLSQP: {res.message} ({res.iterations} iterations, {res.simulations} simulations in all)",
    ]
    return "\n".join(lines)


def cmd_optimize(args: argparse.Namespace) -> int:
    params = load_params(args.params) if args.params else ModelParams()
    cfg = OptimizerConfig(n_segments=args.segments, objective=args.objective)
    res = optimize_recipe(params, cfg, progress=True)
    print(format_result(res))
    if args.out:
        Path(args.out).write_text(res.optimised.recipe.to_toml(), encoding="utf-8")
        print(f"wrote {args.out}")
    if args.plot:
        plot_result(res, params, args.plot)
        print(f"wrote {args.plot}")
    return 0 if res.optimised.feasible else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``twin optimize``."""
    p = sub.add_parser("optimize", help="optimise the jacket programme and end time of a batch")
    p.add_argument("--params", help="parameter TOML (default: built-in parameter set)")
    p.add_argument("--segments", type=int, default=OptimizerConfig.n_segments,
                   help=f"piecewise-linear jacket segments (default {OptimizerConfig.n_segments})")
    p.add_argument("--objective", choices=("yield", "economic"), default="yield",
                   help="maximise the yield of B at discharge, or the profit of the batch (default yield)")
    p.add_argument("--out", help="write the optimised recipe to this TOML file (loadable by twin simulate --recipe)")
    p.add_argument("--plot", help="write a plot (PNG) of the optimised recipe against its baselines")
    p.set_defaults(func=cmd_optimize)
