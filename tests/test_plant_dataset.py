"""The batch data set: reproducibility (hashes), content, the held-out split, and that the plant's
truth really differs from twin_core (otherwise the correction would have nothing to learn)."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from plant_sim import dataset
from plant_sim.config import Fouling
from plant_sim.dataset import COLUMNS, HEADER, HOLDOUT_EVERY, generate
from plant_sim.recipes import HOLDOUT_FAMILIES, TRAIN_FAMILIES, recipe_library
from twin_core.offline.batches import BATCH_TABLE_COLUMNS, Batch, read_batches, score_open_loop, sha256_file
from twin_core.offline.cli import build_parser, main

DATA = ROOT / "data" / "simulated_batch_data.csv"
SHA = ROOT / "data" / "simulated_batch_data.sha256"
PREFIX_BATCHES = 10  # batches 1..10 (batch 10 is held out) are regenerated and compared byte for byte


@pytest.fixture(scope="module")
def batches() -> list[Batch]:
    return list(read_batches(DATA).values())


@pytest.fixture(scope="module")
def batch_table() -> list[dict[str, str]]:
    with open(dataset.batches_path(DATA), newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def recipes() -> list[dict[str, str]]:
    with open(dataset.recipes_path(DATA), newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# -- reproducibility -----------------------------------------------------------------------------------
def test_committed_file_matches_its_recorded_hash() -> None:
    recorded, name = SHA.read_text(encoding="utf-8").split()
    assert name == DATA.name
    assert sha256_file(DATA) == recorded


def test_regenerating_the_first_batches_reproduces_the_committed_file(tmp_path: Path) -> None:
    out = tmp_path / "prefix.csv"
    s = generate(out, batches=PREFIX_BATCHES, seed=0, progress=False)
    new = out.read_bytes()
    assert s.sha256 == hashlib.sha256(new).hexdigest()
    committed = DATA.read_bytes()
    assert committed.startswith(new)
    # ... and the next committed row belongs to the next batch
    assert committed[len(new):].split(b",", 1)[0] == str(PREFIX_BATCHES + 1).encode()
    # the side files too (the recipe library does not depend on the number of batches)
    assert dataset.recipes_path(out).read_bytes() == dataset.recipes_path(DATA).read_bytes()
    table = dataset.batches_path(DATA).read_text(encoding="utf-8").splitlines()
    assert dataset.batches_path(out).read_text(encoding="utf-8").splitlines() == table[:PREFIX_BATCHES + 1]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = generate(tmp_path / "a.csv", batches=2, seed=11, progress=False)
    b = generate(tmp_path / "b.csv", batches=2, seed=11, progress=False)
    c = generate(tmp_path / "c.csv", batches=2, seed=12, progress=False)
    assert a.sha256 == b.sha256 == sha256_file(tmp_path / "b.csv")
    assert c.sha256 != a.sha256


def test_cli_generate_writes_the_same_file_as_the_api(tmp_path: Path) -> None:
    out = tmp_path / "cli.csv"
    sha = tmp_path / "cli.sha256"
    assert main(["plant", "generate", "--batches", "1", "--seed", "3", "--out", str(out), "--no-progress",
                 "--sha256-file", str(sha)]) == 0
    api = generate(tmp_path / "api.csv", batches=1, seed=3, progress=False)
    assert sha256_file(out) == api.sha256
    assert sha.read_text(encoding="utf-8") == f"{api.sha256}  cli.csv\n"


def test_cli_forms_parse() -> None:
    args = build_parser().parse_args(["plant", "--port", "5999", "--speed", "50", "--config", "x.toml"])
    assert (args.plant_action, args.port, args.speed, args.config, args.print_map) == (None, 5999, 50.0, "x.toml", False)
    args = build_parser().parse_args(["plant", "generate", "--batches", "7", "--seed", "4", "--out", "o.csv"])
    assert (args.plant_action, args.batches, args.seed, args.out) == ("generate", 7, 4, "o.csv")


# -- content --------------------------------------------------------------------------------------------------
def test_header_and_size(batches: list[Batch]) -> None:
    with open(DATA, encoding="utf-8") as fh:
        assert fh.readline().rstrip("\n") == HEADER
    assert [c.name for c in COLUMNS] == HEADER.split(",")
    assert len(batches) >= 200
    assert [b.batch_id for b in batches] == list(range(1, len(batches) + 1))
    assert DATA.stat().st_size < 10e6


def test_every_column_is_documented() -> None:
    doc = (ROOT / "docs" / "plant.md").read_text(encoding="utf-8")
    for name, _, _ in COLUMNS:
        assert f"`{name}`" in doc, name
    for name in BATCH_TABLE_COLUMNS:
        assert f"`{name}`" in doc, name


def test_rows_every_minute_from_start(batches: list[Batch]) -> None:
    for b in batches[:20]:
        t = b.t_s
        assert t[0] == 0.0 and np.all(np.diff(t) == 60.0)
        assert b.phase[0] == 1 and b.phase[-1] in (5, 7)


def test_true_states_conserve_mass(batches: list[Batch], batch_table: list[dict[str, str]]) -> None:
    for b, row in zip(batches, batch_table, strict=True):
        total = b.truth[:, 0] + b.truth[:, 1] + b.truth[:, 2]
        assert np.all(np.abs(total - float(row["true_c_A0_mol_per_m3"])) <= 0.16), b.batch_id


def test_split_and_holdout_recipes(batches: list[Batch], recipes: list[dict[str, str]]) -> None:
    for b in batches:
        held = b.batch_id % HOLDOUT_EVERY == 0
        assert b.split == ("holdout" if held else "train")
        assert b.recipe_id[0] in (HOLDOUT_FAMILIES if held else TRAIN_FAMILIES)
    assert sum(b.split == "holdout" for b in batches) == len(batches) // HOLDOUT_EVERY
    # held-out programmes lie outside the training programmes' temperature range
    temps = {r["recipe_id"]: [float(v) for v in r["temps_K"].split(";")[2:]] for r in recipes}
    train = [T for rid, Ts in temps.items() if rid[0] in TRAIN_FAMILIES for T in Ts]
    lo, hi = min(train), max(train)
    for rid, Ts in temps.items():
        if rid[0] == "U":
            assert max(Ts) > hi + 3.0
        elif rid[0] == "C":
            assert max(Ts) < lo - 1.0
    assert {r["split"] for r in recipes if r["recipe_id"][0] in HOLDOUT_FAMILIES} == {"holdout"}
    assert len(recipe_library(0)) == len(recipes)


def test_lab_results_arrive_30_to_45_min_after_sampling_with_1_to_2_percent_rsd(batches: list[Batch]) -> None:
    ratios = []
    for b in batches:
        t = b.t_s
        assert len(b.labs) >= 3
        for ta, ts, c_B, c_C in b.labs:
            assert ta in t  # arrival is recorded on the first row at or after it (rows every 60 s)
            assert 1800.0 <= ta - ts < 2700.0 + 60.0 + 1e-9, (b.batch_id, ta, ts)
            j = int(np.flatnonzero(t == ts)[0])  # samples are drawn on the row grid
            ratios.append(c_B / b.truth[j, 1])
            assert math.isfinite(c_B) and math.isfinite(c_C)
    r = np.array(ratios)
    r = r[np.isfinite(r)]
    assert len(r) > 1000
    assert abs(np.median(r) - 1.0) < 0.003
    assert 0.01 <= np.std(r[np.abs(r - 1) < 0.2]) <= 0.02


def test_fouling_and_cleaning_in_the_batch_table(batch_table: list[dict[str, str]]) -> None:
    f = Fouling()
    cleaned = [int(r["batch_id"]) for r in batch_table if r["cleaned_before"] == "1"]
    assert len(cleaned) >= 5
    for r in batch_table:
        n = int(r["batches_since_cleaning"])
        assert float(r["true_UA_W_per_K"]) == pytest.approx(
            f.UA_clean_W_per_K * max(f.UA_min_fraction, (1 - f.loss_per_batch) ** n), abs=0.06)
        if r["cleaned_before"] == "1":
            assert n == 0
    assert not any(r["aborted"] == "1" for r in batch_table)


def test_measurements_are_noisy_lagged_quantised_views_of_the_truth(batches: list[Batch]) -> None:
    b = batches[0]
    err = b.T_reactor_K - b.truth[:, 3]
    assert np.all(np.abs(b.T_reactor_K * 100 - np.round(b.T_reactor_K * 100)) < 1e-6)
    assert 0.0 < np.std(err) < 0.5 and np.max(np.abs(err)) < 2.0


# -- the truth is not the twin ---------------------------------------------------------------------------------
def test_twin_core_misses_the_holdout_truth_by_at_least_5_percent(batches: list[Batch]) -> None:
    """Pure twin_core in the one open-loop replay (measured jacket temperature, recorded charge):
    RMSE of c_B >= 5 % of the batch's max true c_B (mean and every batch)."""
    scores = [score_open_loop(b).rmse_c_B_percent for b in batches if b.split == "holdout"]
    assert len(scores) == 20
    assert min(scores) >= 5.0
    assert np.mean(scores) >= 5.0
