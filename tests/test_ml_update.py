"""Batch-to-batch learning (ml_onnx.update, `twin train --update`): the release gate refuses a
model that is not better, releases one that is, versions it with the comparison in its ONNX
metadata, and a short campaign on a seeded synthetic plant lowers the open-loop error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ml_onnx.runtime import OnnxCorrection
from ml_onnx.trust import open_loop_trust
from ml_onnx.update import UpdateConfig, update_from_batches
from tests.test_hybrid_trust import plant_batch
from twin_core.errors import ParameterError

CFG = UpdateConfig(window=8, gate_batches=3, margin=0.05, prior_batches=4.0)


@pytest.fixture(scope="module")
def corr_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_ml_contract import synthetic_onnx

    path = synthetic_onnx(tmp_path_factory.mktemp("upd") / "current.onnx")
    return path


def campaign(corr: OnnxCorrection, lam: tuple[float, float], n: int, seed0: int = 0) -> list:
    rng = np.random.default_rng(seed0)
    return [plant_batch(corr, lam, batch_id=seed0 + k + 1, seed=seed0 + k, T_jacket_C=float(rng.uniform(55.0, 72.0)))
            for k in range(n)]


def rmse(corr, batches) -> float:
    return float(np.sqrt(np.mean([np.mean((open_loop_trust(b, corr, (1.0, 1.0))[:, 1] - b.truth[:, 1]) ** 2)
                                  for b in batches])))


def test_gate_refuses_a_model_that_is_not_better(corr_path: Path, tmp_path: Path) -> None:
    cur = tmp_path / "current.onnx"
    shutil.copy(corr_path, cur)
    before = cur.read_bytes()
    corr = OnnxCorrection(cur)
    # The plant is exactly the current model (lambda = 1): a refit cannot beat it by 5 %.
    r = update_from_batches(cur, campaign(corr, (1.0, 1.0), 8), "0" * 64, "synthetic", cfg=CFG)
    assert not r.released
    assert cur.read_bytes() == before                     # nothing replaced
    assert r.path.name == "current.refused.onnx" and r.path.is_file()
    gate = json.loads(r.candidate.metadata["twin.update"])
    assert gate["released"] is False and gate["candidate"] > (1 - CFG.margin) * gate["current"]
    assert r.candidate.metadata["twin.update_version"] == "1"


def test_gate_releases_a_better_model_with_its_comparison(corr_path: Path, tmp_path: Path) -> None:
    cur = tmp_path / "current.onnx"
    shutil.copy(corr_path, cur)
    parent = OnnxCorrection(cur)
    r = update_from_batches(cur, campaign(parent, (0.2, 0.4), 8, seed0=20), "1" * 64, "synthetic", cfg=CFG)
    assert r.released and r.path == cur
    m = OnnxCorrection(cur).metadata
    gate = json.loads(m["twin.update"])
    assert gate["candidate"] <= (1 - CFG.margin) * gate["current"]
    assert gate["fitted_batches"] == [21, 22, 23, 24, 25] and gate["gate_batches"] == [26, 27, 28]
    assert m["twin.update_version"] == "1" and len(m["twin.parent_sha256"]) == 64
    assert json.loads((tmp_path / "current_update.json").read_text())["released"] is True


def test_campaign_learning_lowers_the_error(corr_path: Path, tmp_path: Path) -> None:
    """A plant with lambda = (0.3, 0.5) of the shipped correction: updates after batches 8, 12 and
    16 (window 8, gate 3); the open-loop error on 6 fresh batches of the plant falls with each
    released update, and the last is well below the starting model's."""
    cur = tmp_path / "current.onnx"
    shutil.copy(corr_path, cur)
    start = OnnxCorrection(cur)
    plant = campaign(start, (0.3, 0.5), 16, seed0=40)
    fresh = campaign(start, (0.3, 0.5), 6, seed0=90)
    errors = [rmse(start, fresh)]
    for k in (8, 12, 16):
        r = update_from_batches(cur, plant[:k], "2" * 64, "synthetic", cfg=CFG)
        errors.append(rmse(OnnxCorrection(cur), fresh))
        if not r.released:
            assert errors[-1] == errors[-2]
    assert all(b <= a * 1.02 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0], errors
    assert OnnxCorrection(cur).metadata["twin.update_version"] != "0"


def test_too_few_batches_is_an_error(corr_path: Path, tmp_path: Path) -> None:
    cur = tmp_path / "c.onnx"
    shutil.copy(corr_path, cur)
    with pytest.raises(ParameterError, match="window"):
        update_from_batches(cur, campaign(OnnxCorrection(cur), (1.0, 1.0), 3), "0" * 64, "synthetic", cfg=CFG)
    with pytest.raises(ParameterError, match="gate_batches"):
        UpdateConfig(window=5, gate_batches=5)


def test_twin_train_update_cli(corr_path: Path, tmp_path: Path, capsys) -> None:
    from plant_sim.config import load_plant_config
    from plant_sim.dataset import generate
    from twin_core.offline.cli import main

    data = tmp_path / "plant.csv"
    generate(data, 8, 7, load_plant_config(Path(__file__).resolve().parents[1] / "validation/plants/smaller_mismatch.toml"),
             progress=False)
    cur = tmp_path / "current.onnx"
    shutil.copy(corr_path, cur)
    assert main(["train", "--update", str(cur), "--data", str(data), "--window", "8", "--gate-batches", "3"]) == 0
    out = capsys.readouterr().out
    assert "update 1: fitted 5 batches" in out and ("RELEASED" in out or "REFUSED" in out)


def test_aborted_batches_are_left_out(corr_path: Path, tmp_path: Path) -> None:
    """A batch the PLC aborted (phase ABORTED: a trip or runaway) is neither fitted nor gated on; the
    window is filled with the batches before it, and the record lists what was left out."""
    from dataclasses import replace

    from twin_core.signals.plc import Phase

    cur = tmp_path / "current.onnx"
    shutil.copy(corr_path, cur)
    plant = campaign(OnnxCorrection(cur), (0.2, 0.4), 9, seed0=20)      # batches 21..29
    ph = plant[5].phase.copy()
    ph[len(ph) // 2:] = int(Phase.ABORTED)
    plant[5] = replace(plant[5], phase=ph)                                 # batch 26 aborted
    assert plant[5].aborted and not plant[4].aborted
    r = update_from_batches(cur, plant, "1" * 64, "synthetic", cfg=CFG)
    gate = json.loads(r.candidate.metadata["twin.update"])
    assert gate["skipped_aborted"] == [26]
    assert gate["fitted_batches"] == [21, 22, 23, 24, 25] and gate["gate_batches"] == [27, 28, 29]
    with pytest.raises(ParameterError, match="not aborted"):
        update_from_batches(cur, plant[:8], "1" * 64, "synthetic", cfg=CFG)   # 7 usable < window 8
