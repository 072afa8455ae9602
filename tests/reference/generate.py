"""Regenerate the reference outputs of tests/test_reference_outputs.py (run only on a deliberate
change of behaviour, and say so in the commit).

    python tests/reference/generate.py

Writes, with 17 significant digits (float64 round-trips exactly; twin_simulate_default.csv is
what `twin simulate --csv` writes, kept by hand):
    simulate_default.csv   twin_core's default batch as `twin simulate` computes it (60 s outputs)
    fmu_c_B.csv            c_B of the physics and the hybrid FMU (test correction) run by FMPy on
                           the parity recipe of tests/test_fmu_helpers.py, 60 s steps over 6 h
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

STOP_S = 6 * 3600.0
DT_S = 60.0


def simulate_default() -> np.ndarray:
    from twin_core.recipe import DEFAULT_RECIPE
    from twin_core.simulation import Twin

    tr = Twin().simulate(DEFAULT_RECIPE, dt_out_s=DT_S)
    return np.column_stack([tr.t_s, tr.x, tr.T_jacket_K])


def fmu_c_B(physics_fmu: Path, hybrid_fmu: Path) -> np.ndarray:
    from test_fmu_helpers import simulate_fmpy

    a = simulate_fmpy(physics_fmu, STOP_S, DT_S, output=("c_B",))
    b = simulate_fmpy(hybrid_fmu, STOP_S, DT_S, output=("c_B",))
    if not np.array_equal(a[:, 0], b[:, 0]):
        raise RuntimeError("the two FMU runs have different time grids")
    return np.column_stack([a, b[:, 1]])


def write(name: str, header: str, data: np.ndarray) -> None:
    np.savetxt(HERE / name, data, fmt="%.17g", delimiter=",", header=header, comments="")
    print(f"wrote {HERE / name}: {data.shape[0]} rows")


def main() -> None:
    import tempfile

    from test_fmu_helpers import synthetic_correction

    from fmu.build import BuildOptions, build_fmu

    write("simulate_default.csv", "t_s,c_A,c_B,c_C,T_K,T_jacket_K", simulate_default())
    with tempfile.TemporaryDirectory() as tmp:
        corr = synthetic_correction(Path(tmp))
        phys = build_fmu(BuildOptions(out=Path(tmp) / "p" / "BatchReactorTwin.fmu", correction=None))
        hyb = build_fmu(BuildOptions(out=Path(tmp) / "h" / "BatchReactorTwin.fmu", correction=corr))
        write("fmu_c_B.csv", "t_s,c_B_physics,c_B_hybrid", fmu_c_B(phys, hyb))


if __name__ == "__main__":
    main()
