"""QbD design space by Monte Carlo: the probability that a recipe meets every CQA, on a factor grid.

At each point of a grid of process parameters (jacket plateau temperature, batch duration, ramp
rate, nominal charge), N batches are simulated with what is uncertain drawn at random:

- the **fitted kinetics** (``twin fit``): k1_ref, k2_ref, E1, E2, UA_clean and the fouling loss per
  batch drawn jointly from the estimate's covariance (``[covariance]`` of the ``--params`` TOML),
  multiplied by ``covariance_inflation`` (1 by default; > 1 where the fit's intervals are known to be
  optimistic, as under model mismatch);
- the **plant's charge variation**: c_A0 = nominal (1 + N(0, rsd)), T0 = T_start + N(0, sd), the raw
  material's activity exp(N(0, rsd)) on k1 (draws clipped at +-clip_sigma, as the plant does), and
  the fouling state: n batches since cleaning, uniform on 0..n_max, UA = UA_clean (1 - loss)^n;
- the **correction's own uncertainty** (with a learned correction): its trust weights
  lambda_i ~ N(mean_i, sd_i), r_i = r_i,phys exp(lambda_i g_i(x)) in every Runge-Kutta stage.

Every batch is run by the vectorised simulator (twin_core.batch_sim); a batch passes when yield of B
at discharge >= yield_min, impurity fraction at discharge <= impurity_max and peak reactor
temperature <= T_peak_max_K. The probability of passing all three is the design-space map; the
design space is where it is >= ``probability`` (0.95 by default). The deterministic edge (the nominal
batch: estimated parameters, nominal charge, mean fouling, mean trust) is drawn for comparison.

Reproducibility: batch i of grid point g draws its numbers from the stream of
``SeedSequence(seed, spawn_key=(g,))``, row i of the point's (N, d) matrix of standard normals, so
its draws depend on (seed, g, i) only; a batch's simulation does not depend on the other batches of
its chunk (tests/test_batch_sim.py), and the per-point sums are exact integers (fixed point, 1e-9),
so the CSV is the same bit for bit whatever the engine, the number of workers and the chunk size.

Engines (one API, :func:`run_designspace`): ``inprocess`` (vectorised, default), ``pool`` (a local
process pool) and ``dask`` (a Dask distributed cluster: a scheduler address, or a LocalCluster of N
workers on 127.0.0.1). Work is cut into chunks of at most ``chunk_size`` batches, so a worker's memory
stays bounded whatever the study's size.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from twin_core.batch_sim import Programme, coefficients_from_arrays, cqas, simulate_batches
from twin_core.errors import ParameterError
from twin_core.params import ModelParams, load_params
from twin_core.validate import T_MAX_K, T_MIN_K, from_mapping, load_toml, spec, validated

log = logging.getLogger(__name__)

FACTORS: dict[str, tuple[str, float, float]] = {
    "plateau_K": ("jacket plateau temperature [degC]", 1.0, -273.15),
    "duration_s": ("batch duration [h]", 1 / 3600.0, 0.0),
    "ramp_K_per_s": ("jacket ramp rate [K/h]", 3600.0, 0.0),
    "c_A0_mol_per_m3": ("nominal charge c_A0 [mol/L]", 1e-3, 0.0),
}
"""Factor name -> (axis label in operator units, scale, offset): display = value * scale + offset."""

FIXED_POINT = 1e9
"""Per-point sums are kept as integers of value * FIXED_POINT: exact whatever the chunking."""


# -- configuration --------------------------------------------------------------------------------------
@validated("factor")
class Factor:
    """One process parameter on the grid: ``num`` values from ``start`` to ``stop`` (SI, its unit in
    its name: plateau_K, duration_s, ramp_K_per_s, c_A0_mol_per_m3)."""

    name: str = spec("plateau_K", kind="str", choices=tuple(FACTORS))
    start: float = spec(328.15)
    stop: float = spec(343.15)
    num: int = spec(7, kind="int", ge=1, le=401)

    @property
    def values(self) -> np.ndarray:
        return np.linspace(self.start, self.stop, self.num)


@validated("recipe")
class RecipeFamily:
    """The jacket recipe of every batch: from T_start_K, a ramp at ramp_K_per_s to plateau_K, held
    until duration_s (the factors replace these values point by point)."""

    T_start_K: float = spec(298.15, unit="K", kind="temperature")
    plateau_K: float = spec(333.15, unit="K", kind="temperature")
    ramp_K_per_s: float = spec(45.0 / 3600.0, unit="K/s", gt=0.0)
    duration_s: float = spec(8 * 3600.0, unit="s", gt=0.0)


@validated("specs")
class Specs:
    """The CQAs' specifications at discharge."""

    yield_min: float = spec(0.55, ge=0.0, le=1.0)
    impurity_max: float = spec(0.20, ge=0.0, le=1.0)
    T_peak_max_K: float = spec(353.15, unit="K", kind="temperature")


@validated("variation")
class Variation:
    """What varies from batch to batch besides the fitted parameters (the plant's charge and
    fouling), and the correction's uncertainty (its trust weights)."""

    c_A0_rsd: float = spec(0.02, ge=0.0, lt=0.5)
    T0_sd_K: float = spec(2.0, unit="K", ge=0.0, lt=50.0)
    activity_rsd: float = spec(0.05, ge=0.0, lt=1.0)
    clip_sigma: float = spec(3.0, gt=0.0)
    batches_since_cleaning_max: int = spec(20, kind="int", ge=0, le=1000)
    fouling_loss_per_batch: float = spec(0.0, ge=0.0, lt=1.0)
    trust_mean_1: float = spec(1.0)
    trust_mean_2: float = spec(1.0)
    trust_sd_1: float = spec(0.0, ge=0.0)
    trust_sd_2: float = spec(0.0, ge=0.0)
    parameter_uncertainty: bool = spec(True, kind="bool")
    covariance_inflation: float = spec(1.0, gt=0.0, le=1e6)


@validated("designspace")
class DesignSpaceConfig:
    """A design-space study (TOML: top-level keys, ``[[factors]]``, ``[recipe]``, ``[specs]``,
    ``[variation]``, ``[set_point]``; docs/designspace.md). ``params``/``correction``: paths (empty:
    the built-in parameters / physics only), relative to the TOML's folder. ``set_point``: (factor,
    value) pairs, snapped to the grid; a factor not named there takes the recipe family's value."""

    name: str = spec("design space", kind="str")
    seed: int = spec(0, kind="int", ge=0)
    n_mc: int = spec(200, kind="int", ge=1, le=10_000_000)
    probability: float = spec(0.95, gt=0.0, lt=1.0)
    dt_out_s: float = spec(60.0, unit="s", gt=0.0)
    chunk_size: int = spec(20_000, kind="int", ge=1)
    params: str = spec("", kind="str")
    correction: str = spec("", kind="str")
    factors: tuple = spec(kind=tuple, default_factory=lambda: (Factor("plateau_K", 328.15, 353.15, 11),
                                                               Factor("duration_s", 4 * 3600.0, 12 * 3600.0, 9)))
    recipe: RecipeFamily = spec(kind=RecipeFamily, default_factory=RecipeFamily)
    specs: Specs = spec(kind=Specs, default_factory=Specs)
    variation: Variation = spec(kind=Variation, default_factory=Variation)
    set_point: tuple = spec((), kind=tuple)

    def __post_init__(self) -> None:
        if not 1 <= len(self.factors) <= 2:
            raise ParameterError("designspace.factors", len(self.factors), "needs one or two factors")
        if not all(isinstance(f, Factor) for f in self.factors):
            raise ParameterError("designspace.factors", self.factors, "must be Factor tables")
        names = [f.name for f in self.factors]
        if len(set(names)) != len(names):
            raise ParameterError("designspace.factors", names, "a factor is listed twice")
        for f in self.factors:
            lo, hi = min(f.start, f.stop), max(f.start, f.stop)
            if f.name == "plateau_K" and not (T_MIN_K <= lo and hi <= T_MAX_K):
                raise ParameterError("designspace.factors.plateau_K", (f.start, f.stop),
                                     f"must be temperatures in kelvin within [{T_MIN_K}, {T_MAX_K}]")
            if f.name != "plateau_K" and not lo > 0.0:
                raise ParameterError(f"designspace.factors.{f.name}", (f.start, f.stop), "values must be > 0")
        for name, value in self.set_point:
            if name not in names:
                raise ParameterError(f"designspace.set_point.{name}", value, f"not a factor of the grid {names}")

    @property
    def n_points(self) -> int:
        return int(np.prod([f.num for f in self.factors]))


def config_from_mapping(data: Mapping[str, Any], source: str = "<mapping>", base: Path | None = None) -> DesignSpaceConfig:
    """A :class:`DesignSpaceConfig` from a TOML-like mapping (unknown keys refused, naming them);
    relative ``params``/``correction`` paths resolved against ``base``."""
    data = dict(data)
    factors = data.pop("factors", None)
    set_point = data.pop("set_point", {})
    if not isinstance(set_point, Mapping):
        raise ParameterError("designspace.set_point", set_point, "must be a table {factor = value}")
    cfg = from_mapping(DesignSpaceConfig, data, source)
    if factors is not None:
        if not isinstance(factors, list):
            raise ParameterError("designspace.factors", factors, "must be an array of tables [[factors]]")
        fs = tuple(from_mapping(Factor, f, source, f"factors[{i}]") for i, f in enumerate(factors))
        cfg = replace(cfg, factors=fs)
    sp = tuple((str(k), float(v)) for k, v in set_point.items())
    cfg = replace(cfg, set_point=sp)
    if base is not None:
        cfg = replace(cfg, **{k: str(base / getattr(cfg, k)) for k in ("params", "correction")
                              if getattr(cfg, k) and not Path(getattr(cfg, k)).is_absolute()})
    return cfg


def load_config(path: str | Path) -> DesignSpaceConfig:
    """Load a design-space TOML (docs/designspace.md)."""
    p = Path(path)
    return config_from_mapping(load_toml(p), str(p), p.parent)


# -- the work: what a chunk of batches is and how it runs -------------------------------------------------
UNCERTAIN = ("k1_ref_per_s", "k2_ref_per_s", "E1_J_per_mol", "E2_J_per_mol", "UA_W_per_K", "fouling_loss_per_batch")
"""Parameters a covariance block may name (the ones the design space samples)."""


@dataclass(frozen=True)
class Study:
    """Everything a worker needs (picklable): the configuration, the parameters and the correction's
    bytes (loaded once per process)."""

    config: DesignSpaceConfig
    params: ModelParams
    correction_bytes: bytes = b""
    correction_suffix: str = ""

    def grid(self) -> np.ndarray:
        """(n_points, n_factors) factor values, the last factor varying fastest."""
        axes = [f.values for f in self.config.factors]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.column_stack([m.ravel() for m in mesh])

    @property
    def n_draws(self) -> int:
        """Normals per batch: the covariance's parameters, then c_A0, T0, activity, fouling, lambda_1, lambda_2."""
        cov = self.params.covariance
        return (len(cov.names) if cov is not None else 0) + 6


@dataclass(frozen=True)
class Chunk:
    """Batches lo..hi-1 of grid point ``point``, for each entry."""

    parts: tuple[tuple[int, int, int], ...]

    @property
    def size(self) -> int:
        return sum(hi - lo for _, lo, hi in self.parts)


def chunks_of(n_points: int, n_mc: int, chunk_size: int) -> list[Chunk]:
    """Cut n_points x n_mc batches into chunks of at most chunk_size batches (whole points when they fit)."""
    out: list[Chunk] = []
    parts: list[tuple[int, int, int]] = []
    room = chunk_size
    for g in range(n_points):
        lo = 0
        while lo < n_mc:
            take = min(n_mc - lo, room)
            parts.append((g, lo, lo + take))
            lo += take
            room -= take
            if room == 0:
                out.append(Chunk(tuple(parts)))
                parts, room = [], chunk_size
    if parts:
        out.append(Chunk(tuple(parts)))
    return out


def draws(study: Study, point: int, lo: int, hi: int) -> np.ndarray:
    """Standard normals (hi - lo, d) of batches lo..hi-1 of grid point ``point``: rows of the point's
    stream SeedSequence(seed, spawn_key=(point,)), so batch i's numbers depend on (seed, point, i) only."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(study.config.seed, spawn_key=(point,))))
    return rng.standard_normal((hi, study.n_draws))[lo:]


def _scaled(value: np.ndarray | float, scale: str) -> np.ndarray:
    return np.exp(value) if scale == "log" else np.asarray(value, dtype=float)


def batch_inputs(study: Study, factor_values: np.ndarray, Z: np.ndarray | None) -> dict[str, Any]:
    """Coefficients, charges, programmes and trust weights of B batches: factor values (B, n_f) and
    their draws Z (B, d) (None: the nominal batch of each point, nothing drawn)."""
    cfg, p = study.config, study.params
    v = cfg.variation
    B = factor_values.shape[0]
    fv = {f.name: factor_values[:, i] for i, f in enumerate(cfg.factors)}
    rec = cfg.recipe
    plateau = fv.get("plateau_K", np.full(B, rec.plateau_K))
    duration = fv.get("duration_s", np.full(B, rec.duration_s))
    ramp_rate = fv.get("ramp_K_per_s", np.full(B, rec.ramp_K_per_s))
    cA0_nom = fv.get("c_A0_mol_per_m3", np.full(B, p.charge.c_A0_mol_per_m3))
    nominal = Z is None
    Z = np.zeros((B, study.n_draws)) if Z is None else Z
    clip = v.clip_sigma
    # the fitted parameters from their covariance (estimate where there is none, or nominal)
    values: dict[str, np.ndarray] = {}
    cov = p.covariance
    loss = np.full(B, v.fouling_loss_per_batch)
    if cov is not None and cov.names:
        est = np.array(cov.estimate)
        M = np.array(cov.matrix) * v.covariance_inflation
        if v.parameter_uncertainty and not nominal:
            L = np.linalg.cholesky(M + 1e-300 * np.eye(len(est))) if np.all(np.linalg.eigvalsh(M) > 0) else _psd_root(M)
            theta = est[None, :] + Z[:, :len(est)] @ L.T
        else:
            theta = np.tile(est, (B, 1))
        for j, (name, scale) in enumerate(zip(cov.names, cov.scales)):
            if name not in UNCERTAIN:
                raise ParameterError(f"covariance.names[{j}]", name, f"the design space samples only {UNCERTAIN}")
            values[name] = _scaled(theta[:, j], scale)
        if "fouling_loss_per_batch" in values:
            loss = np.clip(values.pop("fouling_loss_per_batch"), 0.0, 0.99)
    k = Z.shape[1] - 6
    zc = np.clip(Z[:, k:k + 3], -clip, clip)
    c_A0 = cA0_nom * (1.0 + v.c_A0_rsd * zc[:, 0])
    T0 = rec.T_start_K + v.T0_sd_K * zc[:, 1]
    activity = np.exp(v.activity_rsd * zc[:, 2])
    from scipy.special import ndtr

    n_max = v.batches_since_cleaning_max
    n_clean = (np.minimum(np.floor(ndtr(Z[:, k + 3]) * (n_max + 1)), n_max) if not nominal
               else np.full(B, n_max / 2.0))
    k1 = values.pop("k1_ref_per_s", np.full(B, p.kinetics.k1_ref_per_s)) * activity
    UA = values.pop("UA_W_per_K", np.full(B, p.reactor.UA_W_per_K)) * (1.0 - loss) ** n_clean
    coeffs = coefficients_from_arrays(p, k1_ref_per_s=k1, UA_W_per_K=UA, **values)
    x0 = np.column_stack([c_A0, np.full(B, p.charge.c_B0_mol_per_m3), np.full(B, p.charge.c_C0_mol_per_m3), T0])
    T_start = np.full(B, rec.T_start_K)
    ramp_s = np.abs(plateau - T_start) / ramp_rate
    flat = ramp_s <= 0.0
    times = np.column_stack([np.zeros(B), np.where(flat, 1.0, ramp_s)])
    temps = np.column_stack([T_start, plateau])
    prog = Programme.from_points(times, temps, np.where(flat, 1, 2), duration)
    trust = np.vstack([v.trust_mean_1 + v.trust_sd_1 * Z[:, k + 4], v.trust_mean_2 + v.trust_sd_2 * Z[:, k + 5]])
    return {"c": coeffs, "x0": x0, "programme": prog, "trust": trust}


def _psd_root(M: np.ndarray) -> np.ndarray:
    """A square root L L^T = M of a positive semi-definite matrix (eigen-decomposition)."""
    w, V = np.linalg.eigh(M)
    return V * np.sqrt(np.clip(w, 0.0, None))[None, :]


@lru_cache(maxsize=4)
def _correction(data: bytes, suffix: str) -> VectorisedCorrection | None:
    """The correction of a study, loaded once per process (workers included)."""
    if not data:
        return None
    import tempfile
    from importlib.metadata import entry_points

    for ep in entry_points(group="twin.corrections"):
        if ep.name == suffix:
            loader = ep.load()
            if hasattr(loader, "from_bytes"):
                return VectorisedCorrection(loader.from_bytes(data, f"<design-space correction .{suffix}>"))
            with tempfile.NamedTemporaryFile(suffix="." + suffix) as fh:
                fh.write(data)
                fh.flush()
                return VectorisedCorrection(loader(fh.name))
    raise ParameterError("correction", suffix, f"no loader registered for '.{suffix}' files (twin.corrections)")


def simulate_points(study: Study, factor_values: np.ndarray, Z: np.ndarray | None) -> dict[str, np.ndarray]:
    """CQAs (yield_B, impurity, T_peak_K) and pass flags of B batches (see :func:`batch_inputs`)."""
    inp = batch_inputs(study, factor_values, Z)
    corr = _correction(study.correction_bytes, study.correction_suffix)
    res = simulate_batches(inp["c"], inp["x0"], inp["programme"], dt_out_s=study.config.dt_out_s,
                           correction=corr, trust=inp["trust"] if corr is not None else None, on_failure="mark")
    q = cqas(res, inp["x0"])
    q["failed"] = res.failed  # a batch whose integration failed has NaN CQAs: it passes nothing
    s = study.config.specs
    q["pass_yield"] = q["yield_B"] >= s.yield_min
    q["pass_impurity"] = q["impurity"] <= s.impurity_max
    q["pass_T_peak"] = q["T_peak_K"] <= s.T_peak_max_K
    q["pass_all"] = q["pass_yield"] & q["pass_impurity"] & q["pass_T_peak"]
    return q


SUMS = ("n", "pass_all", "pass_yield", "pass_impurity", "pass_T_peak", "sum_yield_B", "sum_impurity", "sum_T_peak_K",
        "failed")


def run_chunk(study: Study, chunk: Chunk) -> list[tuple[int, tuple[int, ...]]]:
    """Simulate one chunk; per grid point, its integer sums (:data:`SUMS`; means in fixed point)."""
    grid = study.grid()
    fv = np.vstack([np.repeat(grid[g][None, :], hi - lo, axis=0) for g, lo, hi in chunk.parts])
    Z = np.vstack([draws(study, g, lo, hi) for g, lo, hi in chunk.parts])
    q = simulate_points(study, fv, Z)
    out = []
    at = 0
    for g, lo, hi in chunk.parts:
        sl = slice(at, at + hi - lo)
        at += hi - lo
        sums = [hi - lo] + [int(np.count_nonzero(q[k][sl])) for k in ("pass_all", "pass_yield", "pass_impurity", "pass_T_peak")]
        ok = ~q["failed"][sl]
        sums += [int(np.rint(q[k][sl][ok] * FIXED_POINT).astype(np.int64).sum(dtype=object)) for k in ("yield_B", "impurity", "T_peak_K")]
        sums.append(int(np.count_nonzero(~ok)))
        out.append((g, tuple(sums)))
    return out


# -- engines --------------------------------------------------------------------------------------------
ENGINES = ("inprocess", "pool", "dask")


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="batch", unit_scale=True, desc="design space", disable=not enabled)


def execute(study: Study, chunks: Sequence[Chunk], engine: str = "inprocess", workers: int | None = None,
            scheduler: str | None = None, dask_local: int | None = None, progress: bool = True
            ) -> list[list[tuple[int, tuple[int, ...]]]]:
    """Run every chunk on ``engine`` and return their results in chunk order.

    inprocess: this process, vectorised; pool: a local process pool of ``workers`` processes; dask:
    the Dask distributed cluster at ``scheduler`` (tcp://HOST:PORT) or a LocalCluster of
    ``dask_local`` worker processes on 127.0.0.1 (one thread each), closed afterwards.
    """
    if engine not in ENGINES:
        raise ParameterError("engine", engine, f"must be one of {ENGINES}")
    results: list[Any] = [None] * len(chunks)
    bar = _progress(sum(c.size for c in chunks), progress)
    try:
        if engine == "inprocess":
            for i, c in enumerate(chunks):
                results[i] = run_chunk(study, c)
                bar.update(c.size)
        elif engine == "pool":
            import concurrent.futures as cf
            import multiprocessing as mp

            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futs = {pool.submit(run_chunk, study, c): i for i, c in enumerate(chunks)}
                for fut in cf.as_completed(futs):
                    i = futs[fut]
                    results[i] = fut.result()
                    bar.update(chunks[i].size)
        else:
            _run_dask(study, chunks, results, bar, scheduler, dask_local)
    finally:
        bar.close()
    return results


def _run_dask(study: Study, chunks: Sequence[Chunk], results: list[Any], bar: Any, scheduler: str | None,
              dask_local: int | None) -> None:
    from distributed import Client, LocalCluster, as_completed

    if (scheduler is None) == (dask_local is None):
        raise ParameterError("scheduler", scheduler, "give either a scheduler address or --dask-local N")
    cluster = None
    if dask_local is not None:
        if dask_local < 1:
            raise ParameterError("dask_local", dask_local, "needs at least one worker")
        cluster = LocalCluster(n_workers=dask_local, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, protocol="tcp")
        address = cluster.scheduler_address
    else:
        address = scheduler
    try:
        with Client(address) as client:
            shared = client.scatter(study, broadcast=True)
            futs = client.map(run_chunk, [shared] * len(chunks), list(chunks), pure=False)
            index = {f.key: i for i, f in enumerate(futs)}
            for fut in as_completed(futs):
                i = index[fut.key]
                results[i] = fut.result()
                bar.update(chunks[i].size)
    finally:
        if cluster is not None:
            cluster.close()


# -- the result -----------------------------------------------------------------------------------------
@dataclass
class DesignSpaceResult:
    """The outcome of a design-space study.

    ``table``: one dict per grid point (factor values in SI, n, probabilities p_all, p_yield,
    p_impurity, p_T_peak with the Wilson 95 % interval of p_all, the means of the CQAs, n_failed:
    batches whose integration failed (counted as failing every CQA, left out of the means), and the
    nominal batch's CQAs and pass flag). ``par``: proven acceptable range of each factor through the
    set point (the other factors held there), None when the set point is outside the design space.
    ``robust``: the grid point farthest (in grid steps) from any point below the probability and
    from the outside of the grid, the highest probability breaking ties.
    """

    config: DesignSpaceConfig
    factor_names: tuple[str, ...]
    table: list[dict[str, float]]
    set_point: dict[str, float]
    par: dict[str, tuple[float, float] | None]
    robust: dict[str, float]
    engine: str
    elapsed_s: float
    n_batches: int
    csv_path: Path | None = None
    plot_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def p_all(self) -> np.ndarray:
        """P(all CQAs in spec) on the grid, shaped (num_1[, num_2])."""
        return np.array([r["p_all"] for r in self.table]).reshape([f.num for f in self.config.factors])

    def summary(self) -> str:
        """A console summary in operator units."""
        cfg = self.config
        lines = [f"Design space '{cfg.name}': {len(self.table)} grid points x {cfg.n_mc} batches = "
                 f"{self.n_batches} batches, {self.elapsed_s:.1f} s on '{self.engine}' "
                 f"({self.n_batches / max(self.elapsed_s, 1e-9):,.0f} batches/s)",
                 f"  specs: yield >= {100 * cfg.specs.yield_min:g} %, impurity <= {100 * cfg.specs.impurity_max:g} %, "
                 f"peak T <= {cfg.specs.T_peak_max_K - 273.15:g} degC; design space: P(all) >= {cfg.probability:g}"]
        n_in = sum(r["p_all"] >= cfg.probability for r in self.table)
        n_failed = sum(int(r["n_failed"]) for r in self.table)
        if n_failed:
            lines.append(f"  {n_failed} batch(es) failed to integrate (counted as out of specification)")
        n_det = sum(r["nominal_pass"] > 0.5 for r in self.table)
        lines.append(f"  points in the design space: {n_in} of {len(self.table)} (deterministic: {n_det})")
        sp = ", ".join(f"{_fmt(k, v)}" for k, v in self.set_point.items())
        lines.append(f"  set point {sp}: P(all) = {self.extra.get('p_set_point', float('nan')):.3f}")
        for k, rng in self.par.items():
            lines.append(f"  proven acceptable range of {FACTORS[k][0]}: " +
                         ("none (set point outside the design space)" if rng is None
                          else f"{_disp(k, rng[0]):g} .. {_disp(k, rng[1]):g}"))
        rb = ", ".join(_fmt(k, self.robust[k]) for k in self.factor_names)
        if n_in:
            lines.append(f"  most robust set point: {rb} (P(all) = {self.robust['p_all']:.3f}, "
                         f"{self.robust['distance_steps']:.2f} grid steps from the edge)")
        else:
            lines.append(f"  no grid point reaches P(all) >= {cfg.probability:g}; the highest P(all) is "
                         f"{self.robust['p_all']:.3f} at {rb}")
        return "\n".join(lines)


def _disp(name: str, v: float) -> float:
    _, scale, offset = FACTORS[name]
    return round(v * scale + offset, 6)


def _fmt(name: str, v: float) -> str:
    label = FACTORS[name][0]
    return f"{label.split(' [')[0]} {_disp(name, v):g} {label.split('[')[1].rstrip(']')}"


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (95 % by default)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # the bounds are exactly 0 and 1 at k = 0 and k = n (rounding would leave 1 - 1e-16)
    return (0.0 if k == 0 else max(0.0, c - h), 1.0 if k == n else min(1.0, c + h))


def _par(p: np.ndarray, axes: list[np.ndarray], idx: tuple[int, ...], thr: float) -> list[tuple[float, float] | None]:
    out: list[tuple[float, float] | None] = []
    if p[idx] < thr:
        return [None] * len(axes)
    for d, ax in enumerate(axes):
        line = p[tuple(slice(None) if k == d else idx[k] for k in range(len(axes)))]
        lo = hi = idx[d]
        while lo > 0 and line[lo - 1] >= thr:
            lo -= 1
        while hi < len(line) - 1 and line[hi + 1] >= thr:
            hi += 1
        out.append((float(ax[lo]), float(ax[hi])))
    return out


def _robust(p: np.ndarray, thr: float) -> tuple[tuple[int, ...], float]:
    """Grid index farthest (Euclidean, in grid steps) from every point below thr and from the
    outside of the grid (unexplored, so not known to pass); ties: the highest p."""
    idx = np.indices(p.shape).reshape(p.ndim, -1).T
    flat = p.ravel()
    bad = idx[flat < thr]
    shape = np.array(p.shape)
    best, best_key = tuple(int(v) for v in idx[int(np.argmax(flat))]), (-1.0, -1.0)
    for i, ix in enumerate(idx):
        if flat[i] < thr:
            continue
        outside = float(np.min(np.minimum(ix + 1, shape - ix)))
        dist = float(np.min(np.sqrt(((bad - ix) ** 2).sum(axis=1)))) if len(bad) else math.inf
        key = (min(dist, outside), float(flat[i]))
        if key > best_key:
            best, best_key = tuple(int(v) for v in ix), key
    return best, (best_key[0] if best_key[0] >= 0.0 else math.nan)  # NaN: no point reaches thr


def assemble(study: Study, results: Sequence[list[tuple[int, tuple[int, ...]]]], engine: str, elapsed_s: float
             ) -> DesignSpaceResult:
    """Per-point sums of the chunks (exact integers) -> probabilities, means, nominal batch, PAR, robust point."""
    cfg = study.config
    grid = study.grid()
    tot = [[0] * len(SUMS) for _ in range(len(grid))]
    for res in results:
        for g, sums in res:
            for j, v in enumerate(sums):
                tot[g][j] += v
    nominal = simulate_points(study, grid, None)
    names = tuple(f.name for f in cfg.factors)
    table = []
    for g, t in enumerate(tot):
        n = t[0]
        n_ok = max(n - t[8], 1)
        row: dict[str, float] = {nm: float(grid[g, i]) for i, nm in enumerate(names)}
        lo, hi = wilson(t[1], n)
        row.update(n=n, p_all=t[1] / n, p_all_lo95=lo, p_all_hi95=hi, p_yield=t[2] / n, p_impurity=t[3] / n,
                   p_T_peak=t[4] / n, mean_yield_B=t[5] / FIXED_POINT / n_ok, mean_impurity=t[6] / FIXED_POINT / n_ok,
                   mean_T_peak_K=t[7] / FIXED_POINT / n_ok, n_failed=t[8], nominal_yield_B=float(nominal["yield_B"][g]),
                   nominal_impurity=float(nominal["impurity"][g]), nominal_T_peak_K=float(nominal["T_peak_K"][g]),
                   nominal_pass=float(nominal["pass_all"][g]))
        table.append(row)
    axes = [f.values for f in cfg.factors]
    shape = [f.num for f in cfg.factors]
    p = np.array([r["p_all"] for r in table]).reshape(shape)
    # the set point: as configured, else the recipe family's own value (the charge's for c_A0)
    wanted = {"c_A0_mol_per_m3": study.params.charge.c_A0_mol_per_m3,
              **{k: getattr(cfg.recipe, k) for k in ("plateau_K", "duration_s", "ramp_K_per_s")}, **dict(cfg.set_point)}
    idx = tuple(int(np.argmin(np.abs(ax - wanted[nm]))) for nm, ax in zip(names, axes))
    set_point = {nm: float(ax[i]) for nm, ax, i in zip(names, axes, idx)}
    par = dict(zip(names, _par(p, axes, idx, cfg.probability)))
    ridx, dist = _robust(p, cfg.probability)
    robust = {nm: float(ax[i]) for nm, ax, i in zip(names, axes, ridx)}
    robust.update(p_all=float(p[ridx]), distance_steps=dist)
    return DesignSpaceResult(cfg, names, table, set_point, par, robust, engine, elapsed_s,
                             sum(t[0] for t in tot), extra={"p_set_point": float(p[idx])})


def write_csv(result: DesignSpaceResult, path: str | Path) -> Path:
    """The per-point table as CSV (SI units and fractions; repr floats: bit-exact round trip)."""
    cols = list(result.table[0])
    lines = [",".join(cols)] + [",".join(repr(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols)
                                for r in result.table]
    p = Path(path)
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def plot_map(result: DesignSpaceResult, path: str | Path) -> Path:
    """The probability map (2 factors) or curve (1 factor): P(all CQAs in spec), the design-space
    contour at the chosen probability, the deterministic edge, the set point with its PAR, the most
    robust point. Axes in operator units."""
    from twin_core.offline.plots import pyplot, save

    plt = pyplot()
    cfg = result.config
    names = result.factor_names
    p = result.p_all()
    fig, ax = plt.subplots(figsize=(8.5, 6.2))
    axes = [np.array([_disp(n, v) for v in f.values]) for n, f in zip(names, cfg.factors)]
    det = np.array([r["nominal_pass"] for r in result.table]).reshape(p.shape)
    specs = cfg.specs
    title = (f"{cfg.name}: P(all CQAs in spec), {cfg.n_mc} Monte-Carlo batches per point\n"
             f"yield >= {100 * specs.yield_min:g} %, impurity <= {100 * specs.impurity_max:g} %, "
             f"peak T <= {specs.T_peak_max_K - 273.15:g} degC")
    if len(names) == 2:
        X, Y = axes[1], axes[0]
        mesh = ax.pcolormesh(X, Y, p, shading="nearest", cmap="viridis", vmin=0.0, vmax=1.0)
        fig.colorbar(mesh, ax=ax, label="probability of meeting all CQAs [1]")
        handles = []
        from matplotlib.lines import Line2D

        if p.min() < cfg.probability <= p.max() and min(p.shape) > 1:
            ax.contour(X, Y, p, levels=[cfg.probability], colors="white", linewidths=2.2)
        handles.append(Line2D([], [], color="white", lw=2.2, label=f"design space edge, P = {cfg.probability:g}"))
        if 0.0 < det.mean() < 1.0 and min(p.shape) > 1:
            ax.contour(X, Y, det, levels=[0.5], colors="red", linestyles="--", linewidths=1.8)
        handles.append(Line2D([], [], color="red", ls="--", lw=1.8, label="deterministic edge (nominal batch)"))
        sp = result.set_point
        sx, sy = _disp(names[1], sp[names[1]]), _disp(names[0], sp[names[0]])
        handles.append(ax.plot(sx, sy, "o", ms=9, mfc="none", mec="orange", mew=2, label="set point")[0])
        par = result.par
        if par[names[0]] is not None and par[names[1]] is not None:
            ax.plot([_disp(names[1], par[names[1]][0]), _disp(names[1], par[names[1]][1])], [sy, sy], "-", color="orange", lw=3)
            ax.plot([sx, sx], [_disp(names[0], par[names[0]][0]), _disp(names[0], par[names[0]][1])], "-", color="orange", lw=3)
            handles.append(Line2D([], [], color="orange", lw=3, label="proven acceptable ranges"))
        rb = result.robust
        handles.append(ax.plot(_disp(names[1], rb[names[1]]), _disp(names[0], rb[names[0]]), "*", ms=15, color="magenta",
                               mec="black", label="most robust set point")[0])
        ax.set_xlabel(FACTORS[names[1]][0])
        ax.set_ylabel(FACTORS[names[0]][0])
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.85)
    else:
        x = axes[0]
        ax.plot(x, p.ravel(), "o-", label="P(all CQAs in spec)")
        ax.step(x, det.ravel(), where="mid", color="red", ls="--", label="nominal batch passes (deterministic)")
        ax.axhline(cfg.probability, color="k", lw=1, label=f"design space threshold P = {cfg.probability:g}")
        ax.set_xlabel(FACTORS[names[0]][0])
        ax.set_ylabel("probability [1]")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=10)
    out = Path(path)
    save(fig, out)
    return out


# -- the entry points -----------------------------------------------------------------------------------
def make_study(config: DesignSpaceConfig) -> Study:
    """The picklable study of a configuration: parameters loaded, correction file read."""
    params = load_params(config.params) if config.params else ModelParams()
    data, suffix = b"", ""
    if config.correction:
        path = Path(config.correction)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ParameterError("designspace.correction", str(path), f"cannot read: {exc.strerror or exc}") from exc
        suffix = path.suffix.lstrip(".").lower()
    return Study(config, params, data, suffix)


def run_designspace(config: DesignSpaceConfig | str | Path, out_dir: str | Path | None = None, engine: str = "inprocess",
                    workers: int | None = None, scheduler: str | None = None, dask_local: int | None = None,
                    progress: bool = False, chunk_size: int | None = None, n_mc: int | None = None,
                    plot: bool = True) -> DesignSpaceResult:
    """Run a design-space study (a config or the path of its TOML) and, with ``out_dir``, write
    ``designspace.csv`` and ``designspace.png`` there (paths on the result: ``csv_path``,
    ``plot_path``). ``chunk_size``/``n_mc`` override the configuration's."""
    cfg = load_config(config) if isinstance(config, (str, Path)) else config
    if chunk_size is not None:
        cfg = replace(cfg, chunk_size=chunk_size)
    if n_mc is not None:
        cfg = replace(cfg, n_mc=n_mc)
    study = make_study(cfg)
    chunks = chunks_of(cfg.n_points, cfg.n_mc, cfg.chunk_size)
    t0 = time.perf_counter()
    results = execute(study, chunks, engine, workers, scheduler, dask_local, progress)
    res = assemble(study, results, engine, time.perf_counter() - t0)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        res.csv_path = write_csv(res, out / "designspace.csv")
        if plot:
            res.plot_path = plot_map(res, out / "designspace.png")
    return res


def quick_config(n_mc: int = 100, num: int = 5, **changes: Any) -> DesignSpaceConfig:
    """A small 2-factor study (plateau x duration, ``num`` x ``num`` points, ``n_mc`` batches each)
    for reports and tests: the defaults otherwise."""
    f = (Factor("plateau_K", 328.15, 353.15, num), Factor("duration_s", 4 * 3600.0, 12 * 3600.0, num))
    return replace(DesignSpaceConfig(), n_mc=n_mc, factors=f, name="quick design space", **changes)


# -- the vectorised correction ---------------------------------------------------------------------------
class VectorisedCorrection:
    """A correction's faded log-factors for a whole working set at once (twin_core.batch_sim.BatchCorrection).

    Delegates to the correction's own vectorised guard, ``log_factors_batch(t_s, x)``
    (ml_onnx.runtime.OnnxCorrection: clip, excess, smoothstep fade, one onnxruntime run on all rows),
    or, for a correction without one, to its scalar ``log_factors`` row by row. Rows whose stage state
    is not finite (a trial step that overflowed: the step's error rejects it) get g = 0 instead of
    stopping the whole working set.
    """

    def __init__(self, correction: Any) -> None:
        self.inner = correction
        self._batch = getattr(correction, "log_factors_batch", None)

    def log_factors(self, t_s: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        W = x.shape[1]
        t = np.broadcast_to(np.asarray(t_s, dtype=float), (W,))
        ok = np.isfinite(x).all(axis=0) & np.isfinite(t)
        g1, g2 = np.zeros(W), np.zeros(W)
        rows = np.nonzero(ok)[0]
        if not len(rows):
            return g1, g2
        if self._batch is not None:
            a, b, _ = self._batch(t[rows], x[:, rows])
            g1[rows], g2[rows] = a, b
        else:
            for i in rows:
                g1[i], g2[i], _ = self.inner.log_factors(float(t[i]), tuple(float(v) for v in x[:, i]))
        return g1, g2


# -- the command ------------------------------------------------------------------------------------------
def cmd_designspace(args: argparse.Namespace) -> int:
    cfg = load_config(args.config) if args.config else DesignSpaceConfig()
    engine = args.engine
    if args.scheduler or args.dask_local:
        engine = "dask"
    res = run_designspace(cfg, args.out, engine=engine, workers=args.workers, scheduler=args.scheduler,
                          dask_local=args.dask_local, progress=not args.no_progress, chunk_size=args.chunk_size,
                          n_mc=args.n_mc)
    print(res.summary())
    print(f"wrote {res.csv_path}")
    print(f"wrote {res.plot_path}")
    return 0


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``twin designspace``."""
    p = sub.add_parser("designspace", help="QbD design space: P(all CQAs in spec) on a factor grid by Monte Carlo")
    p.add_argument("--config", help="design-space TOML (docs/designspace.md; default: built-in plateau x duration)")
    p.add_argument("--out", default="designspace", help="output folder for designspace.csv/.png (default ./designspace)")
    p.add_argument("--engine", choices=ENGINES, default="inprocess", help="where the batches run (default inprocess)")
    p.add_argument("--workers", type=_positive_int, help="processes of the local pool (engine pool)")
    p.add_argument("--scheduler", help="Dask scheduler address tcp://HOST:PORT (engine dask)")
    p.add_argument("--dask-local", type=_positive_int, metavar="N", help="start a Dask LocalCluster of N workers on 127.0.0.1")
    p.add_argument("--chunk-size", type=_positive_int, help="batches per chunk (bounds a worker's memory)")
    p.add_argument("--n-mc", type=_positive_int, help="Monte-Carlo batches per grid point (overrides the config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_designspace)
