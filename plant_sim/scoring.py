"""Read the batch data set back and score a twin against the plant's hidden truth.

``read_batches`` parses data/simulated_batch_data.csv into one ``BatchData`` per batch (numpy arrays
per column; empty cells become NaN). ``twin_prediction`` runs twin_core's mechanistic model the way
the plant-floor runtime would: the batch's *measured* jacket temperature as input (held over each
1-minute row, zero-order hold), the *nominal* charge (the recipe's c_A0; T0 the first measured
reactor temperature). ``c_B_rmse_fraction`` compares its c_B with the plant's true c_B.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin_core.params import ModelParams
from twin_core.simulation import Twin

_STRING_COLUMNS = ("recipe_id", "split")


@dataclass(frozen=True)
class BatchData:
    """One batch of the data set: ``columns`` maps each numeric column name to an array."""

    batch_id: int
    recipe_id: str
    split: str
    columns: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]


def read_batches(path: str | Path) -> list[BatchData]:
    """Every batch of a data-set CSV, in file order."""
    rows_by_batch: dict[int, list[dict[str, str]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows_by_batch.setdefault(int(row["batch_id"]), []).append(row)
    out = []
    for bid, rows in rows_by_batch.items():
        cols = {k: np.array([float(r[k]) if r[k] != "" else math.nan for r in rows])
                for k in rows[0] if k not in _STRING_COLUMNS}
        out.append(BatchData(bid, rows[0]["recipe_id"], rows[0]["split"], cols))
    return out


def twin_prediction(batch: BatchData, params: ModelParams | None = None) -> np.ndarray:
    """twin_core's states (c_A, c_B, c_C, T) at the batch's row times, driven by the measured
    jacket temperature (zero-order hold over each row) from the nominal charge."""
    p = params if params is not None else ModelParams()
    t = batch["time_s"]
    Tj = batch["T_jacket_K"]
    twin = Twin(p.replace(T0_K=float(batch["T_reactor_K"][0])))
    state = twin.initial_state()
    x = np.empty((len(t), 4))
    x[0] = state.x
    for i in range(1, len(t)):
        # a dropout row (empty cell) keeps the previous input, as the runtime would
        u = Tj[i - 1] if math.isfinite(Tj[i - 1]) else Tj[max(0, i - 2)]
        state = twin.step(state, float(t[i - 1]), float(t[i] - t[i - 1]), float(u))
        x[i] = state.x
    return x


def c_B_rmse_fraction(batch: BatchData, params: ModelParams | None = None) -> float:
    """RMSE of the twin's c_B against the true c_B over the batch, as a fraction of max true c_B."""
    pred = twin_prediction(batch, params)[:, 1]
    true = batch["true_c_B_mol_per_m3"]
    return float(np.sqrt(np.mean((pred - true) ** 2)) / np.max(true))
