"""``twin softsensor``: reads the plant data set, replays a batch, prints scores, writes a plot."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from twin_core.errors import ParameterError
from twin_core.offline.batches import read_batches
from twin_core.offline.cli import main
from twin_core.offline.softsensor_cli import load_correction

DATA = Path(__file__).resolve().parents[1] / "data" / "simulated_batch_data.csv"


def test_read_batches_matches_the_csv():
    batches = read_batches(DATA, {10, 11})
    assert sorted(batches) == [10, 11]
    with open(DATA, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["batch_id"] == "10"]
    b = batches[10]
    assert len(b.t_s) == len(rows) and b.split == "holdout" and b.recipe is not None
    lab_rows = [r for r in rows if r["lab_sample_time_s"] != ""]
    assert len(b.labs) == len(lab_rows) >= 5
    for (ta, ts, cB, cC), r in zip(b.labs, lab_rows, strict=True):
        assert ta == float(r["time_s"]) and ts == float(r["lab_sample_time_s"])
        assert cB == float(r["lab_c_B_mol_per_m3"]) and cC == float(r["lab_c_C_mol_per_m3"])
        assert 1800.0 - 60.0 <= ta - ts <= 2700.0 + 60.0  # 30-45 min late, to the row
    assert b.truth.shape == (len(rows), 4) and np.all(np.isfinite(b.truth))
    assert b.c_A0_recorded_mol_per_m3 == float(rows[0]["charge_c_A0_recorded_mol_per_m3"])
    for j, col in enumerate(("true_c_A_mol_per_m3", "true_c_B_mol_per_m3", "true_c_C_mol_per_m3", "true_T_K")):
        assert b.truth[:, j].tolist() == [float(r[col]) for r in rows]
    for name in ("T_reactor_K", "T_jacket_K", "T_jacket_sp_K", "pid_output"):
        np.testing.assert_array_equal(getattr(b, name), [float(r[name] or "nan") for r in rows])  # NaN == NaN here


def test_twin_softsensor_replays_and_plots(tmp_path, capsys):
    out = tmp_path / "b10.png"
    rc = main(["softsensor", "--batch", "10", "--data", str(DATA), "--correction", "none", "--plot", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "c_B RMSE vs truth" in text and "forecast at" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_twin_softsensor_unknown_batch_is_an_error(capsys):
    rc = main(["softsensor", "--batch", "99999", "--data", str(DATA), "--correction", "none"])
    assert rc == 2
    assert "not in" in capsys.readouterr().err


def test_correction_loading():
    assert load_correction("none") is None
    with pytest.raises(ParameterError, match="no such file"):
        load_correction("/nonexistent/model.onnx")


def test_fmu_tuning_starts_equal_the_estimator_defaults():
    """The FMU's estimator-tuning parameters start at the SoftSensorConfig defaults tuned on plant data."""
    from twin_core.estimation import SoftSensorConfig
    from twin_core.signals.twin import by_name

    sig, cfg = by_name(), SoftSensorConfig()
    assert sig["sigma_T_meas"].start == cfg.T_noise_std_K
    assert sig["sigma_lab"].start == cfg.lab_abs_std_mol_per_m3
    assert sig["sigma_rate_rel"].start == cfg.rate_rel_std
    assert (sig["sigma_UA_factor0"].start, sig["sigma_k1_factor0"].start, sig["sigma_k2_factor0"].start,
            sig["sigma_lambda_1"].start, sig["sigma_lambda_2"].start) == (
        cfg.UA_factor0_std, cfg.k1_factor0_std, cfg.k2_factor0_std, cfg.trust0_std, cfg.trust0_std)
    assert sig["UA_factor0"].start == 1.0
