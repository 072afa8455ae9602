"""twin_core.offline.batches: the one data-set reader, the one open-loop replay and the one scoring.

Oracles: hand-computed jacket inputs and scores; the replay of a constant-jacket batch against
Twin.simulate of the same constant-jacket recipe (an independent path through the integrator); the
published held-out figures (README, docs/ml.md, docs/softsensor.md) as reference values, so a
change of the replay rule cannot pass silently.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from plant_sim.dataset import generate
from twin_core.errors import ParameterError
from twin_core.offline.batches import (
    COLUMNS,
    HEADER,
    MEASURED_COLUMNS,
    Batch,
    LabAssay,
    c_B_rmse_percent,
    jacket_input,
    open_loop,
    params_for,
    read_batches,
    score,
    score_open_loop,
)
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.simulation import Twin

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "simulated_batch_data.csv"
NAN = math.nan


def make_batch(T_jacket_K: list[float] | np.ndarray, T_reactor_K: list[float] | np.ndarray | None = None,
               dt_s: float = 60.0, c_A0: float = 1000.0, truth: np.ndarray | None = None) -> Batch:
    Tj = np.asarray(T_jacket_K, dtype=float)
    n = len(Tj)
    T = np.full(n, 300.0) if T_reactor_K is None else np.asarray(T_reactor_K, dtype=float)
    return Batch(batch_id=1, recipe_id="X01", split="train", t_s=dt_s * np.arange(n), phase=np.full(n, 3),
                 T_reactor_K=T, T_jacket_K=Tj, T_jacket_sp_K=Tj.copy(), pid_output=np.zeros(n),
                 c_A0_recorded_mol_per_m3=c_A0, batches_since_cleaning=0, labs=(), truth=truth)


@pytest.fixture(scope="module")
def holdout() -> list[Batch]:
    return [b for b in read_batches(DATA).values() if b.split == "holdout"]


# -- the jacket-input and charge rules --------------------------------------------------------------------
def test_jacket_input_is_the_mean_of_the_bracketing_readings_with_dropouts_held() -> None:
    b = make_batch([300.0, 302.0, NAN, 306.0, NAN, NAN, 310.0])
    # (300+302)/2; 302 then a dropout: (302+302)/2; dropout then 306: (302+306)/2; 306 then dropouts;
    # two dropouts: the last valid (306); then 310 arrives: (306+310)/2
    assert jacket_input(b).tolist() == [301.0, 302.0, 304.0, 306.0, 306.0, 308.0]


def test_jacket_input_starting_with_a_dropout_uses_the_first_valid_reading() -> None:
    assert jacket_input(make_batch([NAN, 310.0, 312.0])).tolist() == [310.0, 311.0]
    with pytest.raises(ParameterError, match="no jacket reading"):
        jacket_input(make_batch([NAN, NAN, NAN]))


def test_charge_rule_recorded_c_A0_and_first_valid_temperature() -> None:
    b = make_batch([300.0] * 3, T_reactor_K=[NAN, 301.5, 302.0], c_A0=987.0)
    p = params_for(b, ModelParams())
    assert p.charge.c_A0_mol_per_m3 == 987.0 and p.charge.T0_K == 301.5
    assert p.charge.c_B0_mol_per_m3 == 0.0


# -- the replay -------------------------------------------------------------------------------------
def test_constant_jacket_replay_equals_the_twin_on_the_constant_jacket_recipe() -> None:
    T_j = 345.0
    n = 6 * 60 + 1
    b = make_batch(np.full(n, T_j), T_reactor_K=np.full(n, 298.0), c_A0=950.0)
    ol = open_loop(b)
    p = params_for(b)
    tr = Twin(p).simulate(Recipe.constant_jacket(T_j, float(b.t_s[-1])), dt_out_s=60.0)
    assert tr.t_s.tolist() == b.t_s.tolist()
    np.testing.assert_allclose(ol.x, tr.x, rtol=1e-6, atol=1e-4)
    assert ol.x[-1, 1] > 100.0 and ol.x[-1, 3] > 330.0  # the batch really reacted and heated up
    np.testing.assert_allclose(ol.x[:, :3].sum(axis=1), 950.0, rtol=1e-12)
    assert ol.in_domain.all() and ol.in_domain.shape == (n,)


def test_a_jacket_ramp_is_held_at_each_interval_midpoint() -> None:
    # The trapezoid input leads a zero-order hold of the first reading by half a step of the ramp.
    ramp = 300.0 + 0.1 * np.arange(121)
    u = jacket_input(make_batch(ramp))
    np.testing.assert_array_equal(u, 0.5 * (ramp[:-1] + ramp[1:]))
    np.testing.assert_allclose(u - ramp[:-1], 0.05, rtol=1e-9)


# -- scoring --------------------------------------------------------------------------------------
def test_score_by_hand() -> None:
    truth = np.array([[1000.0, 0.0, 0.0, 300.0], [700.0, 200.0, 100.0, 300.0], [400.0, 400.0, 200.0, 300.0]])
    x = np.array([[900.0, 0.0, 0.0, 300.0], [600.0, 230.0, 70.0, 300.0], [300.0, 370.0, 230.0, 300.0]])
    b = make_batch([300.0] * 3, c_A0=900.0, truth=truth)
    s = score(b, x, np.array([True, True, False]))
    assert s.rmse_c_B_mol_per_m3 == pytest.approx(math.sqrt((0 + 900 + 900) / 3), rel=1e-15)
    assert s.rmse_c_B_percent == pytest.approx(100.0 * math.sqrt(600.0) / 400.0, rel=1e-15)
    assert s.rmse_c_C_mol_per_m3 == pytest.approx(math.sqrt(600.0), rel=1e-15)
    assert s.final_yield_true == pytest.approx(0.4, rel=1e-15)
    assert s.final_yield_error == pytest.approx(370.0 / 900.0 - 0.4, rel=1e-12)
    assert s.in_domain_fraction == pytest.approx(2.0 / 3.0)
    assert c_B_rmse_percent(x[:, 1], truth[:, 1]) == s.rmse_c_B_percent
    with pytest.raises(ParameterError, match="no hidden truth"):
        score(b.without_truth(), x)


def test_published_physics_only_figures_come_from_the_one_replay(holdout: list[Batch]) -> None:
    """README / docs/ml.md / docs/softsensor.md: physics-only open loop on the 20 held-out batches."""
    scores = [score_open_loop(b) for b in holdout]
    assert len(scores) == 20
    assert np.mean([s.rmse_c_B_percent for s in scores]) == pytest.approx(16.698, abs=5e-4)
    assert max(s.rmse_c_B_percent for s in scores) == pytest.approx(25.011, abs=5e-4)
    assert np.mean([s.rmse_c_B_mol_per_m3 for s in scores]) == pytest.approx(96.366, abs=5e-4)
    assert np.mean([s.rmse_c_C_mol_per_m3 for s in scores]) == pytest.approx(62.452, abs=5e-4)


def test_softsensor_scores_open_loop_rows_are_the_one_replay(holdout: list[Batch]) -> None:
    rows = json.loads((ROOT / "validation" / "softsensor_scores.json").read_text())["variants"]["physics only"]["rows"]
    by_id = {b.batch_id: b for b in holdout}
    assert sorted(r["batch"] for r in rows) == sorted(by_id)
    for r in rows[:5]:
        assert score_open_loop(by_id[r["batch"]]).rmse_c_B_percent == r["rmse_open_loop"]


# -- the reader -------------------------------------------------------------------------------------
def test_reader_against_the_csv_module() -> None:
    got = read_batches(DATA, {20, 30})
    assert list(got) == [20, 30]
    with open(DATA, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["batch_id"] == "30"]
    b = got[30]
    assert (b.recipe_id, b.split) == (rows[0]["recipe_id"], rows[0]["split"])
    assert b.recipe is not None and b.recipe.name == b.recipe_id and b.t_end_s == b.recipe.end_time_s
    assert b.phase.tolist() == [int(r["phase"]) for r in rows]
    assert b.batches_since_cleaning == int(rows[0]["batches_since_cleaning"])
    labs = [r for r in rows if r["lab_sample_time_s"]]
    assert b.labs == tuple(LabAssay(float(r["time_s"]), float(r["lab_sample_time_s"]), float(r["lab_c_B_mol_per_m3"]),
                                    float(r["lab_c_C_mol_per_m3"])) for r in labs)
    assert np.all(np.diff(b.lab_t_s) >= 0) and len(b.lab_t_s) == len(labs)
    np.testing.assert_array_equal(np.sort(b.lab_c_B), np.sort([a.c_B_mol_per_m3 for a in b.labs]))


def test_reader_without_truth_and_with_missing_columns(tmp_path: Path) -> None:
    assert all(b.truth is None for b in read_batches(DATA, {10}, with_truth=False).values())
    measured = [c.name for c in COLUMNS if c.kind == "measured"]
    assert tuple(measured) == MEASURED_COLUMNS and HEADER.startswith(",".join(measured))
    with open(DATA, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["batch_id"] == "10"]
    plant = tmp_path / "plant.csv"  # real plant data: no true_* columns
    with open(plant, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=measured, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (b,) = read_batches(plant).values()
    assert b.truth is None and b.recipe is None and len(b.t_s) == len(rows)
    broken = tmp_path / "broken.csv"
    with open(broken, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=[c for c in measured if c != "T_jacket_K"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ParameterError, match="missing column") as err:
        read_batches(broken)
    assert "T_jacket_K" in str(err.value)


def test_what_the_plant_writes_the_reader_reads(tmp_path: Path) -> None:
    out = tmp_path / "two.csv"
    generate(out, batches=2, seed=5, progress=False)
    assert out.read_text(encoding="utf-8").split("\n", 1)[0] == HEADER
    batches = read_batches(out)
    assert list(batches) == [1, 2]
    for b in batches.values():
        assert b.truth is not None and np.all(np.isfinite(b.truth)) and b.recipe is not None and len(b.labs) >= 3


@pytest.mark.parametrize(("change", "match"), [
    ({"t_s": np.array([0.0])}, "at least two rows"),
    ({"t_s": np.array([0.0, 60.0, 60.0])}, "strictly increasing"),
    ({"T_jacket_K": np.array([300.0, 300.0])}, "must have 3 rows"),
    ({"c_A0_recorded_mol_per_m3": 0.0}, "finite and > 0"),
    ({"c_A0_recorded_mol_per_m3": NAN}, "finite and > 0"),
    ({"truth": np.zeros((3, 3))}, r"must be \(3, 4\)"),
    ({"T_reactor_K": np.array([NAN, NAN, NAN])}, "at least one reading"),
])
def test_batch_rejects(change: dict[str, object], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        replace(make_batch([300.0] * 3), **change)
