"""The vectorised batch simulator: many batches at once, each with its own parameters, charge and
jacket programme, integrated by the same Dormand-Prince 5(4) method as :mod:`twin_core.integrator`.

Why a second loop: ``Twin.simulate`` costs about 2 ms of one core per 10 h batch in plain Python; a
Monte-Carlo design space needs 10^5-10^7 batches. Here the state of B batches is a (4, B) array and
every Runge-Kutta stage is a handful of numpy operations over all of them. The method is the one of
:func:`twin_core.integrator.integrate`, written for arrays:

- the same Butcher tableau, error norm (RMS of err_i / (atol_i + rtol max(|x_i|, |x_new_i|))),
  controller (0.9 err^-1/5 within [0.2, 5]), first step (the whole first segment), shortened last
  step onto each breakpoint, step proposal carried over a breakpoint and FSAL stage re-evaluated there;
- **per-batch step control by masks**: every batch has its own time, step size and segment; a step
  is accepted or rejected batch by batch (``np.where``), so each batch takes the step sequence
  ``Twin.simulate`` would take for it. Batches that have finished drop out of the working set
  (it is compacted when a tenth of it is done).

The jacket programme of a batch is a list of segments between breakpoints (recipe points, or the
rows of a recorded batch), each linear in time: T_j(t) = T0 + ((t - t0) / dt) dT, the arithmetic of
:meth:`twin_core.recipe.Recipe.setpoint` (held inputs: dT = 0). So a batch here equals
``Twin.simulate`` of the same recipe (tests/test_batch_sim.py: <= 1e-8 relative in yield, impurity
at the end and peak temperature; in practice ~1e-12), and :func:`simulate_held` equals the open-loop
replay ``Twin.step`` by ``Twin.step`` (twin_core.offline.batches.open_loop).

Peak reactor temperature: the maximum over the output grid t0 + n dt_out (and the end), evaluated by
the same 4th-order dense interpolant as ``Twin.simulate`` (the figure its trajectory gives).

The learned correction (optional, :class:`BatchCorrection`) enters every stage as
r_i = r_i,phys exp(lambda_i g_i(t, x)), g_i the faded log-factor of the correction at the stage state,
evaluated for all batches of the working set in one call (onnxruntime on the whole matrix of rows),
lambda_i per batch (the trust weight; sampled in a design space).

numpy only (a kernel module): no scipy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from twin_core.errors import IntegrationError, ParameterError
from twin_core.integrator import (
    A21,
    A31,
    A32,
    A41,
    A42,
    A43,
    A51,
    A52,
    A53,
    A54,
    A61,
    A62,
    A63,
    A64,
    A65,
    B1,
    B3,
    B4,
    B5,
    B6,
    C2,
    C3,
    C4,
    C5,
    E1,
    E3,
    E4,
    E5,
    E6,
    E7,
    MAX_FACTOR,
    MAX_STEPS_PER_INTERVAL,
    MIN_FACTOR,
    SAFETY,
    P,
    Tolerance,
)
from twin_core.model import Coefficients, coefficients
from twin_core.params import R_J_PER_MOL_K, ModelParams
from twin_core.recipe import Recipe
from twin_core.simulation import DEFAULT_TOLERANCE

_PT = np.array(P)  # (7, 4) dense-output coefficients

COEFFICIENT_FIELDS = Coefficients._fields


class BatchCorrection(Protocol):
    """What the vectorised simulator needs from a learned correction."""

    def log_factors(self, t_s: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Faded log-factors (g1, g2), each (W,), at times t_s [s] (W,) and states x (4, W)
        (rows c_A, c_B, c_C [mol/m3], T [K]); 0 where the correction has faded out."""


# -- inputs -------------------------------------------------------------------------------------------
def stack_coefficients(coeffs: Sequence[Coefficients]) -> Coefficients:
    """One :class:`~twin_core.model.Coefficients` whose fields are (B,) arrays, from B scalar ones."""
    return Coefficients(*(np.array([getattr(c, f) for c in coeffs], dtype=float) for f in COEFFICIENT_FIELDS))


def coefficients_from_arrays(p: ModelParams, **arrays: np.ndarray) -> Coefficients:
    """Coefficients of B parameter sets that differ from ``p`` in the fields given as (B,) arrays.

    Keys: ``k1_ref_per_s``, ``k2_ref_per_s``, ``E1_J_per_mol``, ``E2_J_per_mol``, ``UA_W_per_K``
    (the uncertain ones of a design space). Same arithmetic as :func:`twin_core.model.coefficients`,
    so a batch equals the scalar twin with ``p.replace(...)`` of its values bit for bit.
    """
    allowed = {"k1_ref_per_s", "k2_ref_per_s", "E1_J_per_mol", "E2_J_per_mol", "UA_W_per_K"}
    unknown = set(arrays) - allowed
    if unknown:
        raise ParameterError("coefficients", sorted(unknown), f"unknown array(s); expected some of {sorted(allowed)}")
    sizes = {np.shape(v) for v in arrays.values()}
    if len(sizes) > 1 or any(len(s) != 1 for s in sizes):
        raise ParameterError("coefficients", sorted(sizes), "all arrays must be one-dimensional and of one length")
    n = next(iter(sizes))[0] if sizes else 1
    c = coefficients(p)
    k, r = p.kinetics, p.reactor
    rho_cp = r.density_kg_per_m3 * r.heat_capacity_J_per_kg_K

    def get(name: str, default: float) -> np.ndarray:
        v = np.asarray(arrays.get(name, np.full(n, default)), dtype=float)
        if not np.all(np.isfinite(v)) or np.any(v < 0.0) or (name != "UA_W_per_K" and np.any(v <= 0.0)):
            raise ParameterError(name, "array", "values must be finite and > 0 (UA >= 0)")
        return v

    return Coefficients(
        k1_ref=get("k1_ref_per_s", k.k1_ref_per_s), k2_ref=get("k2_ref_per_s", k.k2_ref_per_s),
        inv_T_ref=np.full(n, c.inv_T_ref),
        E1_over_R=get("E1_J_per_mol", k.E1_J_per_mol) / R_J_PER_MOL_K,
        E2_over_R=get("E2_J_per_mol", k.E2_J_per_mol) / R_J_PER_MOL_K,
        q1=np.full(n, c.q1), q2=np.full(n, c.q2),
        ua=get("UA_W_per_K", r.UA_W_per_K) / (rho_cp * r.volume_m3))


@dataclass(frozen=True)
class Programme:
    """Jacket programmes of B batches as segments between breakpoints.

    ``edges`` (B, S + 1) [s]: segment j of batch b runs from edges[b, j] to edges[b, j + 1]; batch b
    has ``n_segments[b]`` segments (the edges after its last one repeat its end). On segment j the
    jacket temperature is T0 + ((t - t0) / dt) dT [K] with the (B, S) arrays ``t0, dt, T0, dT``.
    """

    edges: np.ndarray
    n_segments: np.ndarray
    t0: np.ndarray
    dt: np.ndarray
    T0: np.ndarray
    dT: np.ndarray

    def __post_init__(self) -> None:
        B, S1 = np.shape(self.edges)
        for name in ("t0", "dt", "T0", "dT"):
            if np.shape(getattr(self, name)) != (B, S1 - 1):
                raise ParameterError(f"programme.{name}", np.shape(getattr(self, name)), f"must be ({B}, {S1 - 1})")
        if np.shape(self.n_segments) != (B,) or np.any(self.n_segments < 1) or np.any(self.n_segments > S1 - 1):
            raise ParameterError("programme.n_segments", self.n_segments, f"must be ({B},) within 1..{S1 - 1}")
        rows = np.arange(B)
        ends = self.edges[rows, self.n_segments]
        if not np.all(np.isfinite(ends)) or np.any(ends <= self.edges[:, 0]):
            raise ParameterError("programme.edges", "end", "each batch must end after it starts")

    @property
    def size(self) -> int:
        return int(self.edges.shape[0])

    @property
    def end_s(self) -> np.ndarray:
        """End time of each batch [s]."""
        return self.edges[np.arange(self.size), self.n_segments]

    @classmethod
    def from_points(cls, times_s: np.ndarray, temps_K: np.ndarray, n_points: np.ndarray,
                    end_s: np.ndarray) -> Programme:
        """Piecewise-linear programmes (the :class:`~twin_core.recipe.Recipe` form) as padded arrays:
        batch b has points (times_s[b, :n], temps_K[b, :n]), n = n_points[b], times from 0 strictly
        increasing, held after the last point; its batch ends at end_s[b]."""
        times = np.atleast_2d(np.asarray(times_s, dtype=float))
        temps = np.atleast_2d(np.asarray(temps_K, dtype=float))
        n_pts = np.asarray(n_points, dtype=np.int64)
        end = np.asarray(end_s, dtype=float)
        B, Pn = times.shape
        if temps.shape != (B, Pn) or n_pts.shape != (B,) or end.shape != (B,):
            raise ParameterError("programme", (times.shape, temps.shape, n_pts.shape, end.shape),
                                 "times and temps (B, P), n_points and end_s (B,)")
        if np.any(n_pts < 1) or np.any(n_pts > Pn) or np.any(times[:, 0] != 0.0) or np.any(end <= 0.0):
            raise ParameterError("programme", "points", "1..P points per batch, starting at t = 0, end > 0")
        cols = np.arange(Pn)
        valid = cols[None, :] < n_pts[:, None]
        if np.any((times[:, 1:] <= times[:, :-1]) & valid[:, 1:]):
            raise ParameterError("programme.times_s", "order", "times must be strictly increasing")
        # breakpoints: the programme's times strictly inside (0, end) (Recipe.breakpoints); being
        # increasing from 0, they are points 1..n_inner
        n_inner = (valid & (times > 0.0) & (times < end[:, None])).sum(axis=1)
        S = int(n_inner.max()) + 1
        pad = ((0, 0), (0, S + 1))
        tp, Tp = np.pad(times, pad), np.pad(temps, pad)
        j = np.arange(S + 1)[None, :]
        edges = np.where(j <= n_inner[:, None], tp[:, :S + 1], end[:, None])
        # segment j follows programme index j: linear to point j + 1 while there is one, else held
        s = np.arange(S)[None, :]
        linear = s < (n_pts[:, None] - 1)
        T_last = temps[np.arange(B), n_pts - 1]
        t0 = np.where(linear, tp[:, :S], 0.0)
        dt = np.where(linear, tp[:, 1:S + 1] - tp[:, :S], 1.0)
        T0 = np.where(linear, Tp[:, :S], T_last[:, None])
        dT = np.where(linear, Tp[:, 1:S + 1] - Tp[:, :S], 0.0)
        return cls(edges, n_inner + 1, t0, dt, T0, dT)

    @classmethod
    def from_recipes(cls, recipes: Sequence[Recipe], end_s: Sequence[float] | None = None) -> Programme:
        """Programmes of jacket-mode recipes (each batch ending at its recipe's end, or ``end_s``)."""
        if not recipes:
            raise ParameterError("recipes", recipes, "needs at least one recipe")
        for i, r in enumerate(recipes):
            if r.mode != "jacket":
                raise ParameterError(f"recipes[{i}].mode", r.mode, "the batch simulator runs jacket-mode recipes")
        Pn = max(len(r.times_s) for r in recipes)
        times = np.zeros((len(recipes), Pn))
        temps = np.zeros((len(recipes), Pn))
        for i, r in enumerate(recipes):
            n = len(r.times_s)
            times[i, :n] = r.times_s
            times[i, n:] = r.times_s[-1]
            temps[i, :n] = r.temps_K
            temps[i, n:] = r.temps_K[-1]
        ends = np.array([r.end_time_s for r in recipes] if end_s is None else end_s, dtype=float)
        return cls.from_points(times, temps, np.array([len(r.times_s) for r in recipes]), ends)

    @classmethod
    def ramp_hold(cls, T_start_K: np.ndarray, T_plateau_K: np.ndarray, ramp_s: np.ndarray,
                  end_s: np.ndarray) -> Programme:
        """Jacket ramps from T_start_K to T_plateau_K over ramp_s [s], then held until end_s [s]:
        ``Recipe((0, ramp_s), (T_start_K, T_plateau_K), end_s)`` for each batch, without building them."""
        T_start = np.asarray(T_start_K, dtype=float)
        B = T_start.shape[0]
        times = np.column_stack([np.zeros(B), np.asarray(ramp_s, dtype=float)])
        if np.any(times[:, 1] <= 0.0):
            raise ParameterError("ramp_s", "array", "must be > 0")
        temps = np.column_stack([T_start, np.asarray(T_plateau_K, dtype=float)])
        return cls.from_points(times, temps, np.full(B, 2), np.asarray(end_s, dtype=float))

    @classmethod
    def held(cls, t_s: Sequence[np.ndarray], u_K: Sequence[np.ndarray]) -> Programme:
        """Inputs held over intervals (recorded batches replayed step by step): per batch, its row
        times t_s[b] (N_b,) [s] and the jacket temperature u_K[b] (N_b - 1,) [K] over each interval."""
        if len(t_s) != len(u_K) or not len(t_s):
            raise ParameterError("u_K", len(u_K), f"needs one input array per batch ({len(t_s)})")
        n = np.array([len(t) - 1 for t in t_s])
        for b, (t, u) in enumerate(zip(t_s, u_K)):
            if len(u) != len(t) - 1 or len(t) < 2:
                raise ParameterError(f"u_K[{b}]", len(u), f"needs {len(t) - 1} values (one per interval)")
        B, S = len(t_s), int(n.max())
        edges = np.empty((B, S + 1))
        T0 = np.empty((B, S))
        for b, (t, u) in enumerate(zip(t_s, u_K)):
            edges[b, :n[b] + 1] = t
            edges[b, n[b] + 1:] = t[-1]
            T0[b, :n[b]] = u
            T0[b, n[b]:] = u[-1]
        return cls(edges, n, np.zeros((B, S)), np.ones((B, S)), T0, np.zeros((B, S)))


# -- outputs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchResult:
    """What the simulator returns for B batches.

    x_end (B, 4): state at each batch's end (c_A, c_B, c_C [mol/m3], T [K]); T_peak_K (B,): peak
    reactor temperature over the output grid (NaN when not asked for); x_edges (B, S + 1, 4): the
    state at every edge (None unless asked for); accepted, rejected (B,): step counts; failed (B,):
    the integration failed (``on_failure="mark"``; its results are NaN).
    """

    x_end: np.ndarray
    T_peak_K: np.ndarray
    x_edges: np.ndarray | None
    accepted: np.ndarray
    rejected: np.ndarray
    failed: np.ndarray


def cqas(result: BatchResult, x0: np.ndarray) -> dict[str, np.ndarray]:
    """Critical quality attributes at the end of each batch (the discharge), from its charge x0 (B, 4):
    ``yield_B`` (c_B - c_B0) / c_A0 [1] (:func:`twin_core.analysis.yield_of_c_B`), ``impurity``
    c_C / (c_A + c_B + c_C) [1] (:func:`twin_core.analysis.impurity_fraction`), ``T_peak_K`` [K]."""
    x, x0 = result.x_end, np.asarray(x0)
    return {"yield_B": (x[:, 1] - x0[:, 1]) / x0[:, 0],
            "impurity": x[:, 2] / (x[:, 0] + x[:, 1] + x[:, 2]),
            "T_peak_K": result.T_peak_K}


# -- the loop -----------------------------------------------------------------------------------------
def simulate_batches(c: Coefficients, x0: np.ndarray, programme: Programme, tolerance: Tolerance = DEFAULT_TOLERANCE,
                     dt_out_s: float | None = 60.0, record_edges: bool = False,
                     correction: BatchCorrection | None = None, trust: np.ndarray | None = None,
                     on_failure: str = "raise", max_steps: int = MAX_STEPS_PER_INTERVAL) -> BatchResult:
    """Integrate B batches: coefficients ``c`` with (B,) array fields (or floats, shared), charges
    x0 (B, 4), jacket ``programme``; tolerances as ``Twin``'s.

    dt_out_s: output grid of the peak temperature (None: no peak, NaN). record_edges: keep the
    state at every programme edge. correction, trust (2, B): the learned correction and its trust
    weights lambda (default 1). A batch whose integration fails (step-size underflow, more than
    ``max_steps`` steps in one segment, the scalar loop's IntegrationError): ``on_failure="raise"``
    raises IntegrationError naming it; ``"mark"`` ends it with NaN results and ``failed`` True and
    carries on with the others (a Monte-Carlo study of 10^7 batches is not stopped by one).
    """
    if on_failure not in ("raise", "mark"):
        raise ParameterError("on_failure", on_failure, "must be 'raise' or 'mark'")
    x0 = np.atleast_2d(np.asarray(x0, dtype=float))
    B = programme.size
    if x0.shape != (B, 4):
        raise ParameterError("x0", x0.shape, f"must be ({B}, 4): one charge per batch")
    if len(tolerance.atol) != 4:
        raise ParameterError("tolerance.atol", tolerance.atol, "needs one entry per state (4)")
    if dt_out_s is not None and not (math.isfinite(dt_out_s) and dt_out_s > 0.0):
        raise ParameterError("dt_out_s", dt_out_s, "must be finite and > 0")
    coef = [np.broadcast_to(np.asarray(v, dtype=float), (B,)).copy() for v in c]
    if trust is None:
        lam = np.ones((2, B))
    else:
        lam = np.array(trust, dtype=float).reshape(2, B)
    loop = _Loop(coef, x0, programme, tolerance, dt_out_s, record_edges, correction, lam)
    loop.on_failure, loop.max_steps = on_failure, int(max_steps)
    return loop.run()


class _Loop:
    """The working set of :func:`simulate_batches` and its step loop (one object per call)."""

    def __init__(self, coef: list[np.ndarray], x0: np.ndarray, prog: Programme, tol: Tolerance,
                 dt_out: float | None, record_edges: bool, correction: BatchCorrection | None,
                 lam: np.ndarray) -> None:
        B = prog.size
        self.B, self.prog, self.dt_out, self.correction = B, prog, dt_out, correction
        self.rtol = tol.rtol
        self.atol = np.array(tol.atol, dtype=float)[:, None]
        self.x_end = np.empty((B, 4))
        self.T_peak = np.full(B, np.nan)
        self.accepted = np.zeros(B, dtype=np.int64)
        self.rejected = np.zeros(B, dtype=np.int64)
        self.x_edges = np.full((B, prog.edges.shape[1], 4), np.nan) if record_edges else None
        if record_edges:
            self.x_edges[:, 0] = x0
        # the working set, one column per batch still running
        self.idx = np.arange(B)
        k1r, k2r, itr, e1, e2, q1, q2, ua = coef
        self.w = {"k1r": k1r, "k2r": k2r, "itr": itr, "ne1": -e1, "ne2": -e2, "q1": q1, "q2": q2, "ua": ua,
                  "lam1": lam[0].copy(), "lam2": lam[1].copy()}
        self.X = x0.T.copy()
        self.t = prog.edges[:, 0].copy()
        self.seg = np.zeros(B, dtype=np.int64)
        self.n_acc = np.zeros(B, dtype=np.int64)
        self.n_rej = np.zeros(B, dtype=np.int64)
        self.n_seg_steps = np.zeros(B, dtype=np.int64)
        self.done = np.zeros(B, dtype=bool)
        self.failed = np.zeros(B, dtype=bool)
        self.on_failure, self.max_steps = "raise", MAX_STEPS_PER_INTERVAL
        if dt_out is not None:
            end = prog.end_s
            n = np.floor(end / dt_out * (1.0 + 1e-12)).astype(np.int64)
            appended = end - dt_out * n > 1e-9 * np.maximum(1.0, end)
            self.n_dense = np.where(appended, n, n - 1)  # grid points 1..n_dense come from dense output
            self.filled = np.ones(B, dtype=np.int64)
            self.peak = x0[:, 3].copy()
        self.b, self.jt0, self.jdt, self.jT0, self.jdT = (np.empty(B) for _ in range(5))
        self._load_segment(np.arange(B))
        self.h = self.b - self.t  # no proposal: the first trial step is the whole first segment
        self.K1 = self.f(self.t, self.X)

    # -- per-batch segment data --
    def _load_segment(self, rows: np.ndarray) -> None:
        """(Re)load the current segment's end and jacket coefficients for working-set rows ``rows``."""
        g, s = self.idx[rows], self.seg[rows]
        p = self.prog
        self.b[rows] = p.edges[g, s + 1]
        self.jt0[rows], self.jdt[rows] = p.t0[g, s], p.dt[g, s]
        self.jT0[rows], self.jdT[rows] = p.T0[g, s], p.dT[g, s]

    def f(self, t: np.ndarray, X: np.ndarray) -> np.ndarray:
        """dx/dt (4, W) of the working set at times t (W,), states X (4, W): model.derivatives."""
        w = self.w
        cA, cB, T = X[0], X[1], X[3]
        d = 1.0 / T - w["itr"]
        r1 = w["k1r"] * np.exp(w["ne1"] * d) * cA
        r2 = w["k2r"] * np.exp(w["ne2"] * d) * cB
        if self.correction is not None:
            g1, g2 = self.correction.log_factors(t, X)
            r1 = r1 * np.exp(w["lam1"] * g1)
            r2 = r2 * np.exp(w["lam2"] * g2)
        Tj = self.jT0 + ((t - self.jt0) / self.jdt) * self.jdT
        out = np.empty_like(X)
        np.negative(r1, out=out[0])
        np.subtract(r1, r2, out=out[1])
        out[2] = r2
        out[3] = w["q1"] * r1 + w["q2"] * r2 + w["ua"] * (Tj - T)
        return out

    def _compact(self) -> None:
        keep = ~self.done
        self.idx = self.idx[keep]
        for name in ("t", "seg", "h", "n_acc", "n_rej", "n_seg_steps", "done", "b", "jt0", "jdt", "jT0", "jdT"):
            setattr(self, name, getattr(self, name)[keep])
        if self.dt_out is not None:
            self.n_dense, self.filled, self.peak = self.n_dense[keep], self.filled[keep], self.peak[keep]
        self.w = {k: v[keep] for k, v in self.w.items()}
        self.X, self.K1 = self.X[:, keep], self.K1[:, keep]

    def _fail(self, rows: np.ndarray) -> None:
        """End rows whose integration failed: NaN results, ``failed`` set."""
        g = self.idx[rows]
        self.failed[g] = True
        self.X[:, rows] = np.nan
        if self.dt_out is not None:
            self.peak[rows] = np.nan
        self._finish(rows)

    def _finish(self, rows: np.ndarray) -> None:
        g = self.idx[rows]
        self.x_end[g] = self.X[:, rows].T
        self.accepted[g], self.rejected[g] = self.n_acc[rows], self.n_rej[rows]
        if self.dt_out is not None:
            self.T_peak[g] = np.maximum(self.peak[rows], self.X[3, rows])
        self.done[rows] = True

    def _dense_peak(self, acc: np.ndarray, t: np.ndarray, hh: np.ndarray, Xold: np.ndarray,
                    ks: tuple[np.ndarray, ...]) -> None:
        """Peak update from the dense output at the grid points inside accepted steps (Twin.simulate's on_step)."""
        dt = self.dt_out
        t1 = t + hh
        lim = t1 * (1.0 + 1e-14)
        j = np.floor(lim / dt).astype(np.int64) + 1       # grid points <= lim: searchsorted(side="right")
        j = np.where(dt * j <= lim, j + 1, j)
        j = np.where(dt * (j - 1) > lim, j - 1, j)
        j = np.minimum(j, self.n_dense + 1)
        todo = acc & (j > self.filled)
        r = np.nonzero(todo)[0]
        # T(theta) = T_start + h sum_j Q_j theta^(j+1), Q_j = sum_s P_sj k_s,T: written out elementwise
        # (not a BLAS product) so that a batch's figures do not depend on the other batches of its chunk
        kT = [k[3, r] for k in ks]
        Q = [sum(_PT[s, jj] * kT[s] for s in range(7) if _PT[s, jj] != 0.0) for jj in range(4)]
        h = hh[r]
        # Only steps whose interpolant can rise above the running peak are evaluated: on [0, 1],
        # |T(theta) - T_start| <= h sum_j |Q_j| (an exact skip, not an approximation).
        reach = Xold[3, r] + h * (np.abs(Q[0]) + np.abs(Q[1]) + np.abs(Q[2]) + np.abs(Q[3]))
        cand = reach >= self.peak[r]
        self.filled[r[~cand]] = j[r[~cand]]
        if not cand.any():
            return
        r, Q, h = r[cand], [q[cand] for q in Q], h[cand]
        f0, jj, t0 = self.filled[r], j[r], t[r]
        x0T = Xold[3, r]
        peak = self.peak[r]
        for m in range(int((jj - f0).max())):
            k = f0 + m
            live = k < jj
            theta = np.minimum((dt * k - t0) / h, 1.0)
            T = x0T + h * (Q[0] * theta + Q[1] * theta ** 2 + Q[2] * theta ** 3 + Q[3] * theta ** 4)
            peak = np.where(live & (T > peak), T, peak)
        self.peak[r] = peak
        self.filled[r] = jj

    def run(self) -> BatchResult:
        rtol, atol = self.rtol, self.atol
        iters = 0
        with np.errstate(all="ignore"):
            while len(self.idx):
                iters += 1
                t, X, K1, h = self.t, self.X, self.K1, self.h
                remaining = self.b - t
                last = h >= remaining * (1.0 - 1e-12)
                hh = np.where(last, remaining, h)
                k1 = K1
                k2 = self.f(t + C2 * hh, X + (hh * A21) * k1)
                k3 = self.f(t + C3 * hh, X + hh * (A31 * k1 + A32 * k2))
                k4 = self.f(t + C4 * hh, X + hh * (A41 * k1 + A42 * k2 + A43 * k3))
                k5 = self.f(t + C5 * hh, X + hh * (A51 * k1 + A52 * k2 + A53 * k3 + A54 * k4))
                k6 = self.f(t + hh, X + hh * (A61 * k1 + A62 * k2 + A63 * k3 + A64 * k4 + A65 * k5))
                Xn = X + hh * (B1 * k1 + B3 * k3 + B4 * k4 + B5 * k5 + B6 * k6)
                k7 = self.f(t + hh, Xn)
                q = hh * (E1 * k1 + E3 * k3 + E4 * k4 + E5 * k5 + E6 * k6 + E7 * k7) / (
                    atol + rtol * np.maximum(np.abs(X), np.abs(Xn)))
                en = np.sqrt((q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]) / 4.0)
                acc = (en <= 1.0) & ~self.done   # False for NaN: a non-finite error rejects the step
                rej = ~acc & ~self.done
                self.n_acc += acc
                self.n_rej += rej
                self.n_seg_steps += ~self.done
                if self.dt_out is not None and acc.any():
                    self._dense_peak(acc, t, hh, X, (k1, k2, k3, k4, k5, k6, k7))
                powed = en ** -0.2
                factor = np.where(en == 0.0, MAX_FACTOR, np.minimum(MAX_FACTOR, SAFETY * powed))
                shrink = np.where(np.isfinite(en), hh * np.maximum(MIN_FACTOR, SAFETY * powed), hh * MIN_FACTOR)
                ended = acc & last
                self.X = np.where(acc, Xn, X)
                self.K1 = np.where(acc, k7, K1)
                self.t = np.where(acc, t + hh, t)
                self.h = np.where(acc, np.where(last, np.where(h >= hh, h, hh) * factor, hh * factor), shrink)
                h_min = 1e-12 * np.maximum(1.0, np.abs(self.b))
                under = rej & (self.h < h_min)
                many = (self.n_seg_steps > self.max_steps) & ~self.done
                if under.any() or many.any():
                    if self.on_failure == "raise":
                        i = int(np.nonzero(under | many)[0][0])
                        why = (f"step size underflow at t={float(t[i])} (h={float(self.h[i])})" if under[i]
                               else f"more than {self.max_steps} steps in one segment (at t={float(t[i])})")
                        raise IntegrationError(f"batch {int(self.idx[i])}: {why}; state {tuple(X[:, i])}")
                    self._fail(np.nonzero(under | many)[0])
                if ended.any():
                    self._end_segments(np.nonzero(ended)[0])
                if self.done.sum() * 10 >= len(self.idx):
                    self._compact()
        T_peak = self.T_peak if self.dt_out is not None else np.full(self.B, np.nan)
        if self.x_edges is not None:  # edges past a batch's last segment repeat its end state
            past = np.arange(self.x_edges.shape[1])[None, :] > self.prog.n_segments[:, None]
            self.x_edges[past] = np.broadcast_to(self.x_end[:, None, :], self.x_edges.shape)[past]
        return BatchResult(self.x_end, T_peak, self.x_edges, self.accepted, self.rejected, self.failed)

    def _end_segments(self, rows: np.ndarray) -> None:
        """Rows that landed on their segment's end: record, start the next segment or finish."""
        g = self.idx[rows]
        self.t[rows] = self.b[rows]  # the next segment starts exactly at the edge (integrate(a=edge))
        self.seg[rows] += 1
        self.n_seg_steps[rows] = 0
        if self.x_edges is not None:
            self.x_edges[g, self.seg[rows]] = self.X[:, rows].T
        fin = self.seg[rows] >= self.prog.n_segments[g]
        if fin.any():
            self._finish(rows[fin])
        nxt = rows[~fin]
        if len(nxt):
            self._load_segment(nxt)
            span = self.b[nxt] - self.t[nxt]
            h0 = self.h[nxt]
            self.h[nxt] = np.where((h0 > 0.0) & (h0 <= span), h0, span)
            # integrate() starts each interval with a fresh k1 = f(a, x)
            t_sub = self.t[nxt]
            X_sub = self.X[:, nxt]
            self.K1[:, nxt] = self._f_rows(nxt, t_sub, X_sub)

    def _f_rows(self, rows: np.ndarray, t: np.ndarray, X: np.ndarray) -> np.ndarray:
        """:meth:`f` on a subset of the working set."""
        saved = (self.w, self.jT0, self.jt0, self.jdt, self.jdT)
        try:
            self.w = {k: v[rows] for k, v in saved[0].items()}
            self.jT0, self.jt0, self.jdt, self.jdT = (a[rows] for a in saved[1:])
            return self.f(t, X)
        finally:
            self.w, self.jT0, self.jt0, self.jdt, self.jdT = saved


# -- conveniences -------------------------------------------------------------------------------------
def simulate_recipes(params: Sequence[ModelParams], recipes: Sequence[Recipe], tolerance: Tolerance = DEFAULT_TOLERANCE,
                     dt_out_s: float | None = 60.0, correction: BatchCorrection | None = None,
                     trust: np.ndarray | None = None) -> BatchResult:
    """B batches given as parameter sets (their charge included) and jacket-mode recipes."""
    if len(params) != len(recipes):
        raise ParameterError("params", len(params), f"needs one parameter set per recipe ({len(recipes)})")
    c = stack_coefficients([coefficients(p) for p in params])
    x0 = np.array([p.charge.x0 for p in params])
    return simulate_batches(c, x0, Programme.from_recipes(recipes), tolerance, dt_out_s, correction=correction,
                            trust=trust)


def simulate_held(c: Coefficients, x0: np.ndarray, t_s: Sequence[np.ndarray], u_K: Sequence[np.ndarray],
                  tolerance: Tolerance = DEFAULT_TOLERANCE) -> np.ndarray:
    """States (B, N_max, 4) at the row times t_s[b] (N_b,) of B batches driven by the jacket
    u_K[b] (N_b - 1,) held over each row interval (``Twin.step`` row by row, for all batches at
    once); rows past a batch's end repeat its last state."""
    res = simulate_batches(c, x0, Programme.held(t_s, u_K), tolerance, dt_out_s=None, record_edges=True)
    return res.x_edges  # type: ignore[return-value]
