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


@pytest.mark.slow
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


# -- bad invocations: every subcommand ends with `twin <cmd>: error: ...`, exit 2, no traceback --------------
BAD_INVOCATIONS = [
    # (id, arguments ({tmp}: a fresh folder, {busy}: a port in use), text the message must contain, fast lane)
    ("simulate missing recipe", "simulate --recipe nope.toml", "nope.toml", True),
    ("simulate missing params", "simulate --params nope.toml", "nope.toml", False),
    ("simulate csv in a missing folder", "simulate --csv {tmp}/no/such/dir/x.csv", "No such file or directory", False),
    ("signals csv in a missing folder", "signals --csv {tmp}/no/such/dir/x.csv", "No such file or directory", False),
    ("study missing params", "study --params nope.toml", "nope.toml", False),
    ("sensitivity missing recipe", "sensitivity --recipe nope.toml", "nope.toml", False),
    ("optimize missing params", "optimize --params nope.toml", "nope.toml", False),
    ("train missing data", "train --data nope.csv", "nope.csv: No such file or directory", False),
    ("softsensor missing data", "softsensor --batch 1 --data nope.csv", "nope.csv", False),
    ("build-fmu missing correction", "build-fmu --correction nope.onnx --out {tmp}/x.fmu", "nope.onnx", False),
    ("plant missing recipe", "plant --port 0 --recipe nope.toml", "nope.toml", False),
    ("plant missing config", "plant --port 0 --config nope.toml", "nope.toml", False),
    ("plant generate missing config", "plant generate --config nope.toml", "nope.toml", False),
    ("plant generate unwritable out", "plant generate --batches 1 --out /dev/null/x.csv", "/dev/null", False),
    ("plant port above range", "plant --port 70000", "argument --port: 70000 is outside 0..65535", True),
    ("plant port negative", "plant --port -1", "argument --port", False),
    ("plant port not a number", "plant --port abc", "argument --port", False),
    ("plant port in use", "plant --port {busy}", "--port={busy}: cannot listen on 127.0.0.1:{busy}", True),
    ("plant host unresolvable", "plant --host no.such.host.invalid --port 0", "--host='no.such.host.invalid'", False),
    ("plant host not ours", "plant --host 192.0.2.1 --port 0", "--host='192.0.2.1'", False),
    ("plant speed 0", "plant --speed 0", "argument --speed: 0 must be > 0", False),
    ("plant speed negative", "plant --speed -3", "argument --speed", False),
    ("plant max connections 0", "plant --max-connections 0", "argument --max-connections", False),
    ("plant idle timeout negative", "plant --idle-timeout -1", "argument --idle-timeout", False),
    ("demo speed 0", "demo --speed 0", "argument --speed: 0 must be > 0", False),
    ("demo port above range", "demo --port 70000", "argument --port", False),
    ("demo missing recipe", "demo --recipe nope.toml", "nope.toml", False),
    ("demo missing fmu", "demo --fmu nope.fmu", "nope.fmu", False),
    ("run missing config", "run --config nope.toml", "nope.toml", False),
]
"""Each case starts an interpreter (~1.7 s): the fast lane runs three (a missing file, a bad argument, a
port in use), the rest are slow."""


def _run_all(cases: list[tuple[str, str, str, bool]], tmp: Path) -> dict[str, object]:
    """The invocations through the installed script, three at a time, with a port held busy meanwhile."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    twin = Path(sys.executable).with_name("twin")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        def run(case: tuple[str, str, str, bool]) -> tuple[str, subprocess.CompletedProcess[str]]:
            args = case[1].format(tmp=tmp, busy=port).split()
            # stdin closed: a command that wrongly started serving would not wait for a terminal
            return case[0], subprocess.run([str(twin), *args], capture_output=True, text=True, timeout=120,
                                           stdin=subprocess.DEVNULL, cwd=tmp)

        with ThreadPoolExecutor(max_workers=3) as pool:
            return {"__port__": port, **dict(pool.map(run, cases))}


@pytest.fixture(scope="module")
def bad_runs_fast(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return _run_all([c for c in BAD_INVOCATIONS if c[3]], tmp_path_factory.mktemp("bad_cli_fast"))


@pytest.fixture(scope="module")
def bad_runs_slow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return _run_all([c for c in BAD_INVOCATIONS if not c[3]], tmp_path_factory.mktemp("bad_cli_slow"))


@pytest.mark.parametrize(("case", "args", "expected", "fast"), [
    pytest.param(*c, id=c[0], marks=() if c[3] else pytest.mark.slow) for c in BAD_INVOCATIONS])
def test_bad_invocations_end_with_a_clear_error_and_exit_2(request: pytest.FixtureRequest, case: str, args: str,
                                                           expected: str, fast: bool) -> None:
    runs = request.getfixturevalue("bad_runs_fast" if fast else "bad_runs_slow")
    proc = runs[case]
    command = args.split()[0]
    expected = expected.format(busy=runs["__port__"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"twin {command}: error: "), proc.stderr
    assert expected in last, last
