"""twin_core's sub-commands of ``twin``: they run and write the files they promise."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twin_core import Twin, load_recipe
from twin_core.offline.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_simulate_writes_csv_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_csv, out_png = tmp_path / "batch.csv", tmp_path / "batch.png"
    assert main(["simulate", "--csv", str(out_csv), "--plot", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert "optimal stop" in text and "economic stop" in text
    data = np.loadtxt(out_csv, delimiter=",", skiprows=1)
    header = out_csv.read_text().splitlines()[0].split(",")
    assert header == ["t_s", "c_A_mol_per_m3", "c_B_mol_per_m3", "c_C_mol_per_m3", "T_K", "T_jacket_K"]
    assert data.shape == (6 * 60 + 1, 6)
    assert data[-1, 0] == 6 * 3600.0
    assert np.allclose(data[:, 1:4].sum(axis=1), 1000.0, rtol=1e-9)
    assert out_png.read_bytes()[:8] == PNG


def test_simulate_with_a_bad_recipe_reports_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("end_time_s = 100\npoints = [[0.0, 300.0], [50.0, 310.0], [20.0, 320.0]]\n", encoding="utf-8")
    assert main(["simulate", "--recipe", str(bad)]) == 2
    assert "recipe.times_s[2]" in capsys.readouterr().err


def test_signals_csv_through_the_installed_script(tmp_path: Path) -> None:
    out = tmp_path / "signals.csv"
    twin = Path(sys.executable).with_name("twin")
    proc = subprocess.run([str(twin), "signals", "--csv", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = {r["name"]: r for r in rows}
    for name in ("c_A", "c_B", "c_C", "T", "T_jacket", "k1_ref", "UA"):
        assert name in names
    assert names["T"]["unit"] == "K" and names["c_B"]["unit"] == "mol/m3"


def test_optimize_writes_a_loadable_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "opt.toml"
    assert main(["optimize", "--segments", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "best constant jacket" in text and "best reactor-isothermal" in text and "gain over" in text
    r = load_recipe(out)
    assert r.mode == "jacket" and len(r.times_s) == 3
    tr = Twin().simulate(r, dt_out_s=60.0)
    assert tr.T_K.max() < 273.15 + 85.0
    # The recipe file simulates through the CLI too.
    assert main(["simulate", "--recipe", str(out)]) == 0


def test_study_writes_plot_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, table = tmp_path / "study.png", tmp_path / "study.csv"
    assert main(["study", "--plot", str(png), "--csv", str(table), "--hours", "8"]) == 0
    text = capsys.readouterr().out
    assert "best yield at optimal stop" in text
    assert png.read_bytes()[:8] == PNG
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18
    assert all(float(r["t_end_s"]) == 8 * 3600.0 for r in rows)


def test_sensitivity_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sens.csv"
    assert main(["sensitivity", "--csv", str(out)]) == 0
    assert "d ln y / d ln p" in capsys.readouterr().out
    with out.open(newline="") as f:
        rows = {r["parameter"]: r for r in csv.DictReader(f)}
    assert len(rows) == 15
    assert float(rows["k2_ref_per_s"]["S_yield_B_end"]) < 0.0  # faster B -> C: less B at the end
    assert rows["c_B0_mol_per_m3"]["zero_valued"] == "1"
