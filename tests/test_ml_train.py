"""The correction fitted on the plant data set: grouped CV, ONNX parity, held-out accuracy.

One training run per session on a subset (the first 60 training batches, the ridge candidates) keeps
this module fast; ``twin train`` runs the full job (all batches, all candidates).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ml_onnx.dataset import reconcile, training_table
from ml_onnx.features import DEFAULT_FEATURES, feature_matrix
from ml_onnx.train import TrainConfig, TrainResult, choose, train
from tests.conftest import ROOT
from twin_core.offline.batches import open_loop, read_batches

DATA = ROOT / "data" / "simulated_batch_data.csv"
MIN_IMPROVEMENT = 0.50
"""Issue 4: the hybrid twin beats physics-only on held-out c_B RMSE by at least 50 % (goal 80 %)."""


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("ml") / "correction.onnx"
    cfg = TrainConfig(candidate_names=("ridge_poly2", "ridge_poly3"), n_splits=4, max_train_batches=60)
    return train(DATA, out, cfg, progress=False)


def test_no_batch_is_in_both_a_training_and_a_validation_fold(trained: TrainResult) -> None:
    g = trained.groups
    assert len(trained.folds) == 4
    seen: set[int] = set()
    for tr, va in trained.folds:
        overlap = set(g[tr]) & set(g[va])
        assert overlap == set(), f"batches in both: {sorted(overlap)}"
        assert not (set(g[va]) & seen)  # each batch validates in exactly one fold
        seen |= set(g[va])
    assert seen == set(g)
    hold = {b.batch_id for b in trained.holdout_batches}
    assert not (hold & set(g)), "held-out batches must not be fitted"


def test_onnx_equals_scikit_learn_on_the_held_out_set(trained: TrainResult) -> None:
    X = np.vstack([feature_matrix(DEFAULT_FEATURES, b.t_s, open_loop(b).x) for b in trained.holdout_batches])
    assert len(X) > 1000
    want = trained.model.predict(X)
    got = trained.correction.predict_log_factors(X)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0)
    assert trained.report["parity"]["max_rel_diff"] <= 1e-9


def test_hybrid_beats_physics_on_held_out_c_B(trained: TrainResult) -> None:
    s = trained.report["holdout"]["summary"]["all"]
    assert s["batches"] == len(trained.holdout_batches) >= 10
    assert s["c_B_improvement"] >= MIN_IMPROVEMENT, s
    assert s["hybrid_rmse_c_C_mol_per_m3"] < s["physics_rmse_c_C_mol_per_m3"]
    assert s["hybrid_final_yield_rms_error"] < s["physics_final_yield_rms_error"]


def test_hybrid_never_worse_on_batches_outside_the_training_domain(trained: TrainResult) -> None:
    rows = [r for r in trained.report["holdout"]["batches"] if r["in_domain_fraction"] < 1.0]
    assert rows, "no held-out batch leaves the training domain: the guard is not exercised"
    for r in rows:
        assert r["hybrid_rmse_c_B_mol_per_m3"] <= r["physics_rmse_c_B_mol_per_m3"], r


def test_report_holds_cv_table_and_choice(trained: TrainResult, tmp_path: Path) -> None:
    rep = json.loads(Path(trained.correction.label).with_name("correction_report.json").read_text())
    cv = rep["cross_validation"]
    assert set(cv["candidates"]) == {"ridge_poly2", "ridge_poly3"}
    assert cv["chosen"] == choose(cv["candidates"], 4)
    assert trained.correction.metadata["twin.estimator"] == cv["chosen"]
    assert rep["data"]["sha256"] == trained.correction.metadata["twin.training_data_sha256"]


def test_one_standard_error_rule_prefers_the_simpler_model() -> None:
    row = {"exportable_float64": True}
    table = {"ridge_poly2": {**row, "rmse_mean": 0.0431, "rmse_mean_sd_over_folds": 0.002},
             "ridge_poly3": {**row, "rmse_mean": 0.0427, "rmse_mean_sd_over_folds": 0.002},
             "gradient_boosting": {"exportable_float64": False, "rmse_mean": 0.01, "rmse_mean_sd_over_folds": 0.0}}
    assert choose(table, 5) == "ridge_poly2"
    table["ridge_poly3"]["rmse_mean"] = 0.0400
    assert choose(table, 5) == "ridge_poly3"


def test_fitting_never_reads_the_hidden_truth(tmp_path: Path) -> None:
    # The same measurements with the true_* columns scrambled give the same training rows.
    with open(DATA, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        ids: list[str] = []
        rows = []
        for row in reader:
            if row["split"] != "train":
                continue
            if row["batch_id"] not in ids:
                if len(ids) == 4:
                    break
                ids.append(row["batch_id"])
            rows.append(row)
    rng = np.random.default_rng(0)
    paths = []
    for name, scramble in (("plain.csv", False), ("scrambled.csv", True)):
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=header)
            w.writeheader()
            for row in rows:
                out = dict(row)
                if scramble:
                    for k in header:
                        if k.startswith("true_"):
                            out[k] = f"{rng.uniform(1.0, 2000.0):.3f}"
                w.writerow(out)
        paths.append(path)
    tables = []
    for path in paths:
        batches = list(read_batches(path).values())
        assert [b.batch_id for b in batches] == [int(i) for i in ids]
        assert all(b.truth is not None for b in batches)  # read with the truth, as train() reads it
        tables.append(training_table(reconcile(batches), DEFAULT_FEATURES))
    for a, b in zip(tables[0], tables[1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_reconciled_factors_follow_the_lab_assays() -> None:
    some = [b for b in read_batches(DATA).values() if b.split == "train"][:6]
    rec = reconcile(some)
    for r, b in zip(rec, some, strict=True):
        # Standardised lab residuals of order 1 (assay rsd 1.5 %): the ODE goes through the data.
        assert r.lab_rms < 2.0
        c_B_at_lab = np.interp(b.lab_t_s, r.t_s, r.c[:, 1])
        np.testing.assert_allclose(c_B_at_lab, b.lab_c_B, rtol=0.08, atol=5.0)
        # Mass is conserved by construction.
        np.testing.assert_allclose(r.c.sum(axis=1), b.c_A0_recorded_mol_per_m3, rtol=1e-9)


def test_twin_train_cli_writes_the_model_and_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from twin_core.offline.cli import main

    keep: dict[str, set[str]] = {"train": set(), "holdout": set()}
    small = tmp_path / "small.csv"
    with open(DATA, newline="", encoding="utf-8") as fh, open(small, "w", newline="", encoding="utf-8") as out:
        reader = csv.DictReader(fh)
        w = csv.DictWriter(out, fieldnames=reader.fieldnames or [])
        w.writeheader()
        for row in reader:
            ids = keep[row["split"]]
            if row["batch_id"] in ids or len(ids) < (6 if row["split"] == "train" else 2):
                ids.add(row["batch_id"])
                w.writerow(row)
            if len(keep["train"]) >= 6 and len(keep["holdout"]) >= 2 and row["batch_id"] not in keep[row["split"]]:
                break
    model = tmp_path / "out" / "c.onnx"
    rc = main(["train", "--data", str(small), "--out", str(model), "--candidates", "ridge_poly2",
               "--folds", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "chosen by grouped CV" in printed and "held-out batches (2)" in printed
    report = json.loads((tmp_path / "out" / "c_report.json").read_text())
    assert report["data"]["training_batches"] == 6 and report["data"]["holdout_batches"] == 2
    assert report["cross_validation"]["chosen"] == "ridge_poly2"
    from ml_onnx.runtime import OnnxCorrection

    assert OnnxCorrection(model).metadata["twin.training_batches"] == "6"


def test_propagate_follows_the_models_rate_law():
    """One interval at constant temperature: the closed form with twin_core.model.rate_constants."""
    from ml_onnx.dataset import propagate
    from twin_core.model import coefficients, rate_constants
    from twin_core.params import ModelParams

    p = ModelParams()
    rng = np.random.default_rng(3)
    T = rng.uniform(290.0, 390.0, 50)
    ln_f = rng.uniform(-0.5, 0.5, (50, 1, 2))
    h = 600.0
    out = propagate(np.tile([0.0, h], (50, 1)), np.column_stack([T, T]), ln_f, np.full(50, 1000.0), p)
    k1, k2 = rate_constants(T, coefficients(p))
    a, b = k1 * np.exp(ln_f[:, 0, 0]), k2 * np.exp(ln_f[:, 0, 1])
    np.testing.assert_allclose(out[:, 1, 0], 1000.0 * np.exp(-a * h), rtol=1e-13)
    np.testing.assert_allclose(out[:, 1, 1], 1000.0 * a * (np.exp(-a * h) - np.exp(-b * h)) / (b - a), rtol=1e-11)
    np.testing.assert_allclose(out[:, 1].sum(axis=1), 1000.0, rtol=1e-14)
