"""Recorded batches: the one data-set schema and reader, the one open-loop replay, the one scoring.

The plant data set (data/simulated_batch_data.csv, written by ``plant_sim.dataset``) has one row a
minute per batch. Its columns are declared here, once (:data:`COLUMNS`, with the fixed float format
the plant writes each one with): the plant writes them, everything offline reads them through
:func:`read_batches`, which gives one :class:`Batch` per batch: what the plant measured, the lab
assays, the recorded charge, the recipe (from the recipe library next to the data file) and, apart in
``truth``, the simulator's hidden states (for scoring only; a real plant has none).

The open-loop replay (:func:`open_loop`) runs the twin on a recorded batch as it would run on the
plant floor without feedback, and it is the only one: the README's physics-only and hybrid figures,
``ml_onnx``'s held-out scoring and the soft-sensor scoring's open-loop rows all come from it.

- **Charge rule**: the recorded charge ``charge_c_A0_recorded_mol_per_m3`` (what the plant knows,
  not the nominal recipe charge), no B or C, T0 the first valid measured reactor temperature
  (:func:`params_for`).
- **Jacket-input rule**: over each row interval [t_i, t_i+1] the jacket temperature is held at the
  mean of the two measured readings that bracket it, (T_j,i + T_j,i+1) / 2 (the trapezoid rule: the
  exact mean of a linearly varying jacket, second-order accurate where a zero-order hold of T_j,i is
  first-order). A missing reading (transmitter dropout, empty cell) is replaced by the last valid
  one (:func:`jacket_input`).

:func:`score` compares a predicted trajectory with the hidden truth: c_B RMSE [mol/m3] and as % of
the batch's largest true c_B, c_C RMSE, the final-yield error; :func:`score_open_loop` is the two
together.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np

from twin_core.analysis import yield_of_c_B
from twin_core.errors import ParameterError
from twin_core.hybrid import CorrectionModel, HybridTwin
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.signals.plc import Phase

# -- the schema ---------------------------------------------------------------------------------------
DEFAULT_DATA = Path("data/simulated_batch_data.csv")
"""The data set every offline command reads by default (relative to the working directory)."""



class Column(NamedTuple):
    """One column of the data-set CSV: its name (SI unit in the name), the format the plant writes
    it with (``""``: a string or an integer written as is; an empty cell is a missing value), and
    whether a plant measures or knows it (``measured``) or only the simulator does (``truth``)."""

    name: str
    fmt: str
    kind: str


COLUMNS: tuple[Column, ...] = (
    Column("batch_id", "", "measured"),
    Column("recipe_id", "", "measured"),
    Column("split", "", "measured"),
    Column("time_s", "", "measured"),
    Column("phase", "", "measured"),
    Column("T_reactor_K", ".2f", "measured"),
    Column("T_jacket_K", ".2f", "measured"),
    Column("T_jacket_sp_K", ".2f", "measured"),
    Column("pid_output", ".3f", "measured"),
    Column("lab_c_B_mol_per_m3", ".2f", "measured"),
    Column("lab_c_C_mol_per_m3", ".2f", "measured"),
    Column("lab_sample_time_s", ".0f", "measured"),
    Column("charge_c_A0_recorded_mol_per_m3", ".1f", "measured"),
    Column("batches_since_cleaning", "", "measured"),
    Column("true_c_A_mol_per_m3", ".1f", "truth"),
    Column("true_c_B_mol_per_m3", ".1f", "truth"),
    Column("true_c_C_mol_per_m3", ".1f", "truth"),
    Column("true_T_K", ".2f", "truth"),
    Column("true_T_jacket_K", ".2f", "truth"),
    Column("true_UA_W_per_K", ".0f", "truth"),
)
"""The data file's columns in file order (documented in docs/plant.md)."""
HEADER = ",".join(c.name for c in COLUMNS)
MEASURED_COLUMNS = tuple(c.name for c in COLUMNS if c.kind == "measured")
TRUTH_STATE_COLUMNS = ("true_c_A_mol_per_m3", "true_c_B_mol_per_m3", "true_c_C_mol_per_m3", "true_T_K")
"""The hidden states (c_A, c_B, c_C, T) read into ``Batch.truth``, in that order."""
RECIPE_COLUMNS = ("recipe_id", "family", "split", "end_time_s", "sample_interval_s", "n_points", "times_s", "temps_K")
"""The recipe library ``<stem>.recipes.csv`` (programme points as ';'-separated lists)."""
BATCH_TABLE_COLUMNS = ("batch_id", "recipe_id", "split", "start_plant_time_s", "cleaned_before",
                       "batches_since_cleaning", "charge_c_A0_recorded_mol_per_m3", "rows", "aborted",
                       "true_c_A0_mol_per_m3", "true_T0_K", "true_activity", "true_UA_W_per_K")
"""The one-row-per-batch table ``<stem>.batches.csv``."""


def recipes_path(data: str | Path) -> Path:
    """Where the recipe library of data file ``data`` is (``<stem>.recipes.csv``)."""
    data = Path(data)
    return data.with_name(data.stem + ".recipes.csv")


def batches_path(data: str | Path) -> Path:
    """Where the one-row-per-batch table of data file ``data`` is (``<stem>.batches.csv``)."""
    data = Path(data)
    return data.with_name(data.stem + ".batches.csv")


# -- one batch ----------------------------------------------------------------------------------------
class LabAssay(NamedTuple):
    """One lab result as the plant received it: on the row of ``arrival_s``, for the sample drawn at
    ``sample_s`` (batch times [s]); c_B, c_C [mol/m3]."""

    arrival_s: float
    sample_s: float
    c_B_mol_per_m3: float
    c_C_mol_per_m3: float


@dataclass(frozen=True, eq=False)
class Batch:
    """One recorded batch. Arrays share the row times ``t_s`` [s from Start]; NaN where a reading is
    missing. ``labs`` in order of arrival. ``truth`` (N, 4): the simulator's hidden (c_A, c_B, c_C
    [mol/m3], T [K]) at the rows, None for real plant data or when read without it; scoring only."""

    batch_id: int
    recipe_id: str
    split: str
    t_s: np.ndarray
    phase: np.ndarray
    T_reactor_K: np.ndarray
    T_jacket_K: np.ndarray
    T_jacket_sp_K: np.ndarray
    pid_output: np.ndarray
    c_A0_recorded_mol_per_m3: float
    batches_since_cleaning: int
    labs: tuple[LabAssay, ...]
    recipe: Recipe | None = None
    truth: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.t_s)
        where = f"batch {self.batch_id}"
        if n < 2:
            raise ParameterError(f"{where}.t_s", n, "needs at least two rows")
        for name in ("phase", "T_reactor_K", "T_jacket_K", "T_jacket_sp_K", "pid_output"):
            if len(getattr(self, name)) != n:
                raise ParameterError(f"{where}.{name}", len(getattr(self, name)), f"must have {n} rows like t_s")
        if self.truth is not None and np.shape(self.truth) != (n, 4):
            raise ParameterError(f"{where}.truth", np.shape(self.truth), f"must be ({n}, 4)")
        if not np.all(np.diff(self.t_s) > 0.0):
            raise ParameterError(f"{where}.t_s", "not increasing", "row times must be strictly increasing")
        if not (math.isfinite(self.c_A0_recorded_mol_per_m3) and self.c_A0_recorded_mol_per_m3 > 0.0):
            raise ParameterError(f"{where}.c_A0_recorded", self.c_A0_recorded_mol_per_m3, "must be finite and > 0")
        if not np.isfinite(self.T_reactor_K).any():
            raise ParameterError(f"{where}.T_reactor_K", "all missing", "needs at least one reading")

    @property
    def aborted(self) -> bool:
        """True when the PLC aborted the batch (phase ABORTED on any row: an interlock trip, a runaway):
        not a batch to learn a plant's normal behaviour from."""
        return bool(np.any(self.phase == int(Phase.ABORTED)))

    @property
    def t_end_s(self) -> float:
        """End of the reaction programme (the discharge decision) [s], or the last row without a recipe."""
        return float(self.recipe.end_time_s) if self.recipe is not None else float(self.t_s[-1])

    @cached_property
    def _labs_by_sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ok = [a for a in self.labs if math.isfinite(a.c_B_mol_per_m3)]
        ts = np.array([a.sample_s for a in ok])
        order = np.argsort(ts, kind="stable")
        return (ts[order], np.array([a.c_B_mol_per_m3 for a in ok])[order],
                np.array([a.c_C_mol_per_m3 for a in ok])[order])

    @property
    def lab_t_s(self) -> np.ndarray:
        """Sample times [s] of the lab results with a c_B value, in order of sampling."""
        return self._labs_by_sample[0]

    @property
    def lab_c_B(self) -> np.ndarray:
        """c_B [mol/m3] of those results, in order of sampling."""
        return self._labs_by_sample[1]

    @property
    def lab_c_C(self) -> np.ndarray:
        """c_C [mol/m3] of those results, in order of sampling."""
        return self._labs_by_sample[2]

    def without_truth(self) -> Batch:
        """The same batch as a plant would have it: no hidden states."""
        return replace(self, truth=None)

    def require_truth(self) -> np.ndarray:
        """``truth``, or a ParameterError saying the batch has none (scoring needs it)."""
        if self.truth is None:
            raise ParameterError(f"batch {self.batch_id}.truth", None, "the batch carries no hidden truth to score against")
        return self.truth


# -- the reader ---------------------------------------------------------------------------------------
def read_recipes(path: str | Path) -> dict[str, Recipe]:
    """recipe_id -> jacket programme, from a recipe-library CSV (:data:`RECIPE_COLUMNS`)."""
    out: dict[str, Recipe] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            times = tuple(float(v) for v in row["times_s"].split(";"))
            temps = tuple(float(v) for v in row["temps_K"].split(";"))
            out[row["recipe_id"]] = Recipe(times, temps, float(row["end_time_s"]), "jacket", row["recipe_id"])
    return out


def _float(cell: str) -> float:
    return float(cell) if cell != "" else math.nan  # an empty cell is a missing value


def _floats(rows: list[list[str]], i: int) -> np.ndarray:
    return np.array([_float(r[i]) for r in rows])


def read_batches(path: str | Path, batch_ids: set[int] | None = None, recipes: dict[str, Recipe] | None = None,
                 with_truth: bool = True) -> dict[int, Batch]:
    """The batches of a data-set CSV (all, or those in ``batch_ids``), by batch id in file order.

    ``recipes``: recipe_id -> programme (default: the library ``<stem>.recipes.csv`` next to the
    file when it exists, else no recipes). ``with_truth`` False leaves ``truth`` None, as does a file
    without the ``true_*`` state columns (real plant data). Raises ParameterError naming a missing
    measured column.
    """
    p = Path(path)
    if recipes is None:
        rp = recipes_path(p)
        recipes = read_recipes(rp) if rp.exists() else {}
    rows_by_batch: dict[int, list[list[str]]] = {}
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        missing = [c for c in MEASURED_COLUMNS if c not in header]
        if missing:
            raise ParameterError(str(p), missing, "missing column(s)")
        at = {name: i for i, name in enumerate(header)}
        i_id = at["batch_id"]
        for row in reader:
            bid = int(row[i_id])
            if batch_ids is None or bid in batch_ids:
                rows_by_batch.setdefault(bid, []).append(row)
    truth_idx = [at[c] for c in TRUTH_STATE_COLUMNS] if with_truth and all(c in at for c in TRUTH_STATE_COLUMNS) else None
    i_ta, i_ts, i_cB, i_cC = (at[c] for c in ("time_s", "lab_sample_time_s", "lab_c_B_mol_per_m3", "lab_c_C_mol_per_m3"))
    out: dict[int, Batch] = {}
    for bid, rows in rows_by_batch.items():
        first = rows[0]
        # a lab result is on the row where it arrived; its sample time says which sample it is
        labs = tuple(LabAssay(float(r[i_ta]), float(r[i_ts]), _float(r[i_cB]), _float(r[i_cC]))
                     for r in rows if r[i_ts] != "")
        truth = np.column_stack([_floats(rows, i) for i in truth_idx]) if truth_idx is not None else None
        out[bid] = Batch(
            batch_id=bid, recipe_id=first[at["recipe_id"]], split=first[at["split"]],
            t_s=_floats(rows, at["time_s"]), phase=np.array([int(r[at["phase"]]) for r in rows]),
            T_reactor_K=_floats(rows, at["T_reactor_K"]), T_jacket_K=_floats(rows, at["T_jacket_K"]),
            T_jacket_sp_K=_floats(rows, at["T_jacket_sp_K"]), pid_output=_floats(rows, at["pid_output"]),
            c_A0_recorded_mol_per_m3=float(first[at["charge_c_A0_recorded_mol_per_m3"]]),
            batches_since_cleaning=int(first[at["batches_since_cleaning"]]), labs=labs,
            recipe=recipes.get(first[at["recipe_id"]]), truth=truth)
    return out


# -- the one open-loop replay ---------------------------------------------------------------------------
JACKET_INPUT_RULE = ("recorded charge c_A0, first valid measured reactor T as T0; over each row interval the "
                     "measured jacket temperature held at the mean of the two readings that bracket it "
                     "(a missing reading replaced by the last valid one)")
"""The charge and jacket-input rules of :func:`open_loop` in one sentence (reports and docs)."""


def params_for(batch: Batch, params: ModelParams | None = None) -> ModelParams:
    """The charge rule: ``params`` (default set) with the batch's recorded charge c_A0 and its first
    valid measured reactor temperature as T0 (also where the soft sensor starts)."""
    p = params if params is not None else ModelParams()
    T0 = batch.T_reactor_K[np.isfinite(batch.T_reactor_K)][0]
    return p.replace(c_A0_mol_per_m3=float(batch.c_A0_recorded_mol_per_m3), T0_K=float(T0))


def jacket_input(batch: Batch) -> np.ndarray:
    """The jacket-input rule: (N - 1,) jacket temperatures [K] held over the row intervals, each the
    mean of the two readings that bracket it; a missing reading is replaced by the last valid one
    (at the start: the first valid one)."""
    Tj = batch.T_jacket_K
    valid = Tj[np.isfinite(Tj)]
    if not len(valid):
        raise ParameterError(f"batch {batch.batch_id}.T_jacket_K", "all missing", "no jacket reading to drive the twin")
    u = np.empty(len(Tj) - 1)
    last = float(valid[0])
    for i in range(1, len(Tj)):
        a = float(Tj[i - 1]) if math.isfinite(Tj[i - 1]) else last
        b = float(Tj[i]) if math.isfinite(Tj[i]) else a
        last = b
        u[i - 1] = 0.5 * (a + b)
    return u


@dataclass(frozen=True)
class OpenLoop:
    """The twin on a recorded batch without feedback: states (N, 4) (c_A, c_B, c_C [mol/m3], T [K])
    at the row times, and per row whether the correction was inside its training domain over the
    step that leaves the row (the last row repeats the one before)."""

    x: np.ndarray
    in_domain: np.ndarray


def open_loop(batch: Batch, params: ModelParams | None = None,
              correction: CorrectionModel | None = None) -> OpenLoop:
    """Replay ``batch`` through the twin (physics only when ``correction`` is None) from the charge
    of :func:`params_for`, driven by :func:`jacket_input`, one twin step per row interval."""
    twin = HybridTwin(params_for(batch, params), correction)
    state = twin.initial_state()
    t = batch.t_s
    u = jacket_input(batch)
    x = np.empty((len(t), 4))
    ok = np.ones(len(t), dtype=bool)
    x[0] = state.x
    for i in range(1, len(t)):
        state = twin.step(state, float(t[i - 1]), float(t[i] - t[i - 1]), float(u[i - 1]))
        x[i] = state.x
        ok[i - 1] = state.in_domain
    ok[-1] = ok[-2]
    return OpenLoop(x, ok)


# -- the one scoring ----------------------------------------------------------------------------------
def c_B_rmse_percent(est_c_B: np.ndarray, true_c_B: np.ndarray) -> float:
    """RMSE of c_B as a percentage of the batch's largest true c_B [%]."""
    return float(100.0 * np.sqrt(np.mean((est_c_B - true_c_B) ** 2)) / np.max(true_c_B))


@dataclass(frozen=True)
class Score:
    """A predicted trajectory of one batch against its hidden truth.

    rmse_c_B_mol_per_m3, rmse_c_C_mol_per_m3: RMSE over the rows; rmse_c_B_percent: the c_B RMSE as
    % of the batch's largest true c_B; final_yield_true [1]: true c_B / true c_A0 at the last row;
    final_yield_error [1]: predicted c_B / recorded c_A0 minus final_yield_true; in_domain_fraction
    [1]: rows with the correction inside its training domain (1 without one).
    """

    batch_id: int
    rmse_c_B_mol_per_m3: float
    rmse_c_B_percent: float
    rmse_c_C_mol_per_m3: float
    final_yield_true: float
    final_yield_error: float
    in_domain_fraction: float = 1.0


def score(batch: Batch, x: np.ndarray, in_domain: np.ndarray | None = None) -> Score:
    """Score states ``x`` (N, >= 3) (c_A, c_B, c_C [mol/m3], ...) at the batch's rows against its truth."""
    xt = batch.require_truth()
    x = np.asarray(x)
    y_true = float(xt[-1, 1]) / float(xt[0, 0] + xt[0, 1] + xt[0, 2])
    return Score(batch_id=batch.batch_id,
                 rmse_c_B_mol_per_m3=float(np.sqrt(np.mean((x[:, 1] - xt[:, 1]) ** 2))),
                 rmse_c_B_percent=c_B_rmse_percent(x[:, 1], xt[:, 1]),
                 rmse_c_C_mol_per_m3=float(np.sqrt(np.mean((x[:, 2] - xt[:, 2]) ** 2))),
                 final_yield_true=y_true,
                 final_yield_error=float(yield_of_c_B(x[-1, 1], params_for(batch)) - y_true),
                 in_domain_fraction=float(np.mean(in_domain)) if in_domain is not None else 1.0)


def score_open_loop(batch: Batch, params: ModelParams | None = None,
                    correction: CorrectionModel | None = None) -> Score:
    """:func:`score` of the :func:`open_loop` replay of ``batch``."""
    ol = open_loop(batch, params, correction)
    return score(batch, ol.x, ol.in_domain)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the identity of a data set: data/simulated_batch_data.sha256)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
