"""Plant batch data turned into training targets for the rate correction.

The plant data set (data/simulated_batch_data.csv, columns in docs/plant.md) is read by the one
data-set reader, :func:`twin_core.offline.batches.read_batches`: one ``Batch`` per batch with what a
plant measures (reactor and jacket temperatures, jacket setpoint, controller output, phase, the
recorded charge, the lab assays of c_B and c_C with the batch time each sample was drawn) and, apart
in ``truth``, the simulator's hidden states. Nothing in this module's fitting path reads ``truth``:
``ml_onnx.train`` hands :func:`reconcile` the batches ``without_truth()``
(tests/test_ml_train.py checks that scrambling the ``true_*`` columns changes no target).

Targets ("fitting through the ODE at the lab-sample times", incremental identification):
for each batch the species balances of twin_core.model are integrated with the reactor temperature
*imposed* from its measurement, so the plant's heat-transfer drift (UA fouling) cannot leak into the
rates, with log rate factors ln f1(t), ln f2(t) piecewise linear in time (knots every ``knot_s``).
The knots are estimated by regularised least squares of simulated vs lab c_B, c_C (relative assay
error), with a random-walk prior between knots and a weak prior towards 0 (the physics is right
until data say otherwise). The fitted factor curves and the reconstructed states then give
training rows (features of ml_onnx.features -> ln f1, ln f2) for the regressor.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import lil_matrix

from ml_onnx.features import feature_matrix
from twin_core.errors import ParameterError
from twin_core.model import coefficients
from twin_core.offline.batches import Batch
from twin_core.params import ModelParams
from twin_core.validate import spec, validated

log = logging.getLogger(__name__)


def fill_gaps(v: np.ndarray) -> np.ndarray:
    """A measured signal with NaN (sensor dropout) filled by linear interpolation in row index."""
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(v)
    if ok.all():
        return v.copy()
    if not ok.any():
        raise ParameterError("signal", "all NaN", "no valid measurement to fill from")
    idx = np.arange(len(v))
    return np.interp(idx, idx[ok], v[ok])


def measured_temperature(b: Batch) -> np.ndarray:
    """Reactor temperature [K] for reconciliation: gaps filled, then a 3-point median against
    single-row spikes (the transmitter's lag of ~10 s is well below the 60 s rows)."""
    T = fill_gaps(b.T_reactor_K)
    if len(T) >= 3:
        T[1:-1] = np.median(np.stack([T[:-2], T[1:-1], T[2:]]), axis=0)
    return T


# -- species balances with imposed temperature ------------------------------------------------------
def propagate(t_s: np.ndarray, T_K: np.ndarray, ln_f: np.ndarray, c_A0: np.ndarray,
              p: ModelParams) -> np.ndarray:
    """Species (c_A, c_B, c_C) [mol/m3] on row grids, vectorised over batches.

    t_s, T_K: (nb, L) row times [s] and imposed reactor temperatures [K] (pad a shorter batch by
    repeating its last time: zero-length intervals leave the state unchanged); ln_f: (nb, L-1, 2)
    log-factors held over each interval; c_A0: (nb,) charges. Over each interval T is the mean of
    its end points and the consecutive first-order system has the closed-form solution
        c_A <- c_A e^{-a h},  c_B <- c_B e^{-b h} + c_A a (e^{-a h} - e^{-b h}) / (b - a),
    with a = f1 k1(T), b = f2 k2(T), h the interval; c_C follows from the conserved sum.
    Returns (nb, L, 3).
    """
    c = coefficients(p)
    h = np.diff(t_s, axis=1)
    Tm = 0.5 * (T_K[:, 1:] + T_K[:, :-1])
    # twin_core.model's rate law with the log-factor inside the exponent: the same value as
    # rate_constants(Tm) * exp(ln_f) to rounding (tests/test_ml_train.py checks it), written this way
    # because the reconciliation is an iterative fit: another rounding moves the trained correction.
    d = 1.0 / Tm - c.inv_T_ref
    a = c.k1_ref * np.exp(-c.E1_over_R * d + ln_f[..., 0])
    b = c.k2_ref * np.exp(-c.E2_over_R * d + ln_f[..., 1])
    ea, eb = np.exp(-a * h), np.exp(-b * h)
    diff = b - a
    close = np.abs(diff) * h < 1e-9
    g = np.where(close, a * h * ea, a * (ea - eb) / np.where(close, 1.0, diff))
    nb, L = t_s.shape
    cA = np.empty((nb, L))
    cA[:, 0] = c_A0
    cA[:, 1:] = c_A0[:, None] * np.cumprod(ea, axis=1)
    # c_B_{i+1} = eb_i c_B_i + g_i c_A_i: a first-order linear recurrence, solved with products
    # P_i = prod_{j<i} eb_j as c_B_i = P_i * sum_{j<i} g_j c_A_j / P_{j+1}.
    P = np.ones((nb, L))
    P[:, 1:] = np.cumprod(eb, axis=1)
    P = np.maximum(P, 1e-300)
    cB = np.zeros((nb, L))
    cB[:, 1:] = P[:, 1:] * np.cumsum(g * cA[:, :-1] / P[:, 1:], axis=1)
    cC = c_A0[:, None] - cA - cB
    return np.stack([cA, cB, cC], axis=-1)


@validated("reconcile")
class ReconcileConfig:
    """Settings of the per-batch estimation of the rate factors (see module docstring).

    knot_s: spacing of the knots of ln f1, ln f2 in time [s]; rw_sd_per_knot: prior SD of the change
    of ln f between neighbouring knots [1]; level_sd: prior SD of ln f itself [1]; lab_rsd: relative
    SD of a lab result [1]; lab_floor_mol_per_m3: absolute SD floor of a result [mol/m3] (rounding,
    near-zero values).
    """

    knot_s: float = spec(3600.0, unit="s", gt=0.0)
    rw_sd_per_knot: float = spec(0.15, gt=0.0)
    level_sd: float = spec(1.0, gt=0.0)
    lab_rsd: float = spec(0.015, gt=0.0)
    lab_floor_mol_per_m3: float = spec(1.0, unit="mol/m3", gt=0.0)


@dataclass(frozen=True)
class Reconciled:
    """One batch after estimation: row times [s], imposed T [K], reconstructed species (N, 3)
    [mol/m3], log-factors at the rows (N, 2), the knots (K, 2), and the lab fit (RMS of the
    standardised residuals [1]). Rows after the last lab sample carry no information (``n_informed``
    rows are up to that sample)."""

    batch_id: int
    t_s: np.ndarray
    T_K: np.ndarray
    c: np.ndarray
    ln_f: np.ndarray
    knots: np.ndarray
    lab_rms: float
    n_informed: int

    def states(self) -> np.ndarray:
        """Reconstructed states (c_A, c_B, c_C, T) (N, 4) at the rows."""
        return np.column_stack([self.c, self.T_K])


def _hat_basis(t: np.ndarray, K: int, knot_s: float) -> np.ndarray:
    """Piecewise-linear interpolation weights (len(t), K) of knots at 0, knot_s, ... (flat beyond)."""
    u = np.clip(t / knot_s, 0.0, K - 1.0)
    i = np.minimum(np.floor(u).astype(int), K - 2) if K > 1 else np.zeros(len(t), dtype=int)
    w = u - i
    B = np.zeros((len(t), K))
    B[np.arange(len(t)), i] = 1.0 - w
    if K > 1:
        B[np.arange(len(t)), i + 1] += w
    return B


def reconcile(batches: list[Batch], params: ModelParams | None = None,
              config: ReconcileConfig | None = None) -> list[Reconciled]:
    """Estimate each batch's log rate factors ln f1(t), ln f2(t) from its lab assays.

    All batches are solved in one sparse least-squares problem (their parameters do not interact,
    so finite differences perturb one knot of every batch at once). Batches without lab results
    are skipped with a warning.
    """
    p = params if params is not None else ModelParams()
    cfg = config if config is not None else ReconcileConfig()
    use = [b for b in batches if len(b.lab_t_s) > 0]
    for b in batches:
        if not len(b.lab_t_s):
            log.warning("batch %d has no lab result: not used for fitting", b.batch_id)
    if not use:
        raise ParameterError("batches", len(batches), "no batch with lab results to fit")
    nb = len(use)
    n_rows = [int(np.searchsorted(b.t_s, b.lab_t_s[-1], side="right")) + 1 for b in use]
    n_rows = [min(n, len(b.t_s)) for n, b in zip(n_rows, use, strict=True)]
    L = max(n_rows)
    t = np.empty((nb, L))
    T = np.empty((nb, L))
    for k, (b, n) in enumerate(zip(use, n_rows, strict=True)):
        t[k, :n], T[k, :n] = b.t_s[:n], measured_temperature(b)[:n]
        t[k, n:], T[k, n:] = b.t_s[n - 1], T[k, n - 1]
    K = int(math.ceil(float(np.max(t)) / cfg.knot_s)) + 1
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    B = np.stack([_hat_basis(mid[k], K, cfg.knot_s) for k in range(nb)])  # (nb, L-1, K)
    M = max(len(b.lab_t_s) for b in use)
    lab_idx = np.zeros((nb, M), dtype=int)
    lab_w = np.zeros((nb, M))
    lab_obs = np.zeros((nb, M, 2))
    lab_sd = np.ones((nb, M, 2))
    lab_mask = np.zeros((nb, M))
    for k, b in enumerate(use):
        m = len(b.lab_t_s)
        j = np.clip(np.searchsorted(t[k, :n_rows[k]], b.lab_t_s, side="right") - 1, 0, max(n_rows[k] - 2, 0))
        tj, tj1 = t[k, j], t[k, np.minimum(j + 1, L - 1)]
        lab_idx[k, :m] = j
        lab_w[k, :m] = np.where(tj1 > tj, (b.lab_t_s - tj) / np.where(tj1 > tj, tj1 - tj, 1.0), 0.0)
        obs = np.column_stack([b.lab_c_B, b.lab_c_C])
        lab_obs[k, :m] = obs
        lab_sd[k, :m] = np.sqrt((cfg.lab_rsd * obs) ** 2 + cfg.lab_floor_mol_per_m3 ** 2)
        lab_mask[k, :m] = 1.0
    cA0 = np.array([b.c_A0_recorded_mol_per_m3 for b in use])
    rows = np.arange(nb)[:, None]

    def unpack(theta: np.ndarray) -> np.ndarray:
        return theta.reshape(nb, 2, K)

    def model_at_lab(knots: np.ndarray) -> np.ndarray:
        ln_f = np.einsum("blk,bqk->blq", B, knots)
        c = propagate(t, T, ln_f, cA0, p)
        lo = c[rows, lab_idx][..., 1:]
        hi = c[rows, np.minimum(lab_idx + 1, L - 1)][..., 1:]
        return lo + lab_w[..., None] * (hi - lo)

    def residuals(theta: np.ndarray) -> np.ndarray:
        knots = unpack(theta)
        r_lab = (model_at_lab(knots) - lab_obs) / lab_sd * lab_mask[..., None]   # (nb, M, 2)
        r_rw = np.diff(knots, axis=2) / cfg.rw_sd_per_knot                          # (nb, 2, K-1)
        r_lvl = knots / cfg.level_sd                                                # (nb, 2, K)
        return np.concatenate([r_lab.reshape(nb, -1), r_rw.reshape(nb, -1), r_lvl.reshape(nb, -1)], axis=1).ravel()

    n_res_b = 2 * M + 2 * (K - 1) + 2 * K
    sparsity = lil_matrix((nb * n_res_b, nb * 2 * K), dtype=int)
    for k in range(nb):
        sparsity[k * n_res_b:(k + 1) * n_res_b, k * 2 * K:(k + 1) * 2 * K] = 1
    log.info("reconciling %d batches: %d knots per factor, %d lab samples at most", nb, K, M)
    sol = least_squares(residuals, np.zeros(nb * 2 * K), jac_sparsity=sparsity.tocsr(), method="trf",
                        x_scale=1.0, xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=200)
    knots = unpack(sol.x)
    ln_f = np.einsum("blk,bqk->blq", B, knots)
    c = propagate(t, T, ln_f, cA0, p)
    r_lab = ((model_at_lab(knots) - lab_obs) / lab_sd * lab_mask[..., None])
    out = []
    for k in range(nb):
        b, n = use[k], n_rows[k]
        # Factors at the rows: interpolated at the row times (the intervals hold their midpoint values).
        ln_rows = _hat_basis(t[k, :n], K, cfg.knot_s) @ knots[k].T
        m = len(b.lab_t_s)
        rms = float(np.sqrt(np.mean(r_lab[k, :m] ** 2)))
        out.append(Reconciled(b.batch_id, t[k, :n].copy(), T[k, :n].copy(), c[k, :n].copy(), ln_rows,
                              knots[k].T.copy(), rms, n))
    log.info("reconciliation: %d evaluations, cost %.3g, median lab RMS %.2f", sol.nfev, sol.cost,
             float(np.median([r.lab_rms for r in out])))
    return out


def training_table(rec: list[Reconciled], feature_names: tuple[str, ...],
                   stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (X [N, n], y = (ln f1, ln f2) [N, 2], groups = batch id [N]) from reconciled batches,
    every ``stride``-th row up to each batch's last lab sample."""
    Xs, ys, gs = [], [], []
    for r in rec:
        sl = slice(0, r.n_informed, stride)
        Xs.append(feature_matrix(feature_names, r.t_s[sl], r.states()[sl]))
        ys.append(r.ln_f[sl])
        gs.append(np.full(len(r.t_s[sl]), r.batch_id))
    return np.vstack(Xs), np.vstack(ys), np.concatenate(gs)
