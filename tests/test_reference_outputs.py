"""Behaviour pinned bit for bit: the default batch of `twin simulate` and the FMUs' c_B trajectory.

The references in tests/reference/ were computed by the code before the layout change of issue 9
(tests/reference/generate.py writes them, 17 significant digits: float64 round-trips exactly;
twin_simulate_default.csv is the file `twin simulate --csv` wrote, byte for byte).
A refactoring must leave them equal to the last bit; a deliberate change of behaviour regenerates
them in a commit that says so. A missing reference fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_fmu_helpers import FmuBuilds, simulate_fmpy

REF = Path(__file__).resolve().parent / "reference"


def _load(name: str) -> np.ndarray:
    path = REF / name
    if not path.is_file():
        pytest.fail(f"reference {path} is missing: run tests/reference/generate.py")
    return np.loadtxt(path, delimiter=",", skiprows=1)


def test_default_batch_is_bit_identical_to_the_reference():
    from twin_core.recipe import DEFAULT_RECIPE
    from twin_core.simulation import Twin

    ref = _load("simulate_default.csv")
    tr = Twin().simulate(DEFAULT_RECIPE, dt_out_s=60.0)
    got = np.column_stack([tr.t_s, tr.x, tr.T_jacket_K])
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_twin_simulate_cli_writes_the_reference_batch(tmp_path: Path):
    from twin_core.offline.cli import main

    out = tmp_path / "batch.csv"
    assert main(["simulate", "--csv", str(out)]) == 0
    ref = REF / "twin_simulate_default.csv"
    if not ref.is_file():
        pytest.fail(f"reference {ref} is missing")
    assert out.read_text() == ref.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("kind,column", [("physics", 1), ("hybrid", 2)])
def test_fmu_c_B_trajectory_is_bit_identical_to_the_reference(fmus: FmuBuilds, kind: str, column: int):
    ref = _load("fmu_c_B.csv")
    got = simulate_fmpy(fmus.fmu(kind), 6 * 3600.0, 60.0, output=("c_B",))
    np.testing.assert_array_equal(got[:, 0], ref[:, 0])
    np.testing.assert_array_equal(got[:, 1], ref[:, column])
