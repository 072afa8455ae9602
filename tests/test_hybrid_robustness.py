"""validation/robustness.py end to end at tiny sizes (two plants, three batches each): every
table row is computed from real generated plant data, the goals are judged from the numbers, and
the files are written (the full evaluation is the script itself, run once: docs/ml.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("robustness_under_test", ROOT / "validation" / "robustness.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def correction(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_fmu_helpers import synthetic_correction

    return synthetic_correction(tmp_path_factory.mktemp("rob"))


@pytest.mark.slow
def test_tiny_run_writes_tables_and_judges_goals(correction: Path, tmp_path: Path) -> None:
    R = _module()
    res = R.run_robustness(out_dir=tmp_path, work=tmp_path / "work", correction=correction,
                           variants=("training plant", "opposite sign on r1"), figure=tmp_path / "fig.png", sizes=R.TINY)
    v = res["variants"]
    assert set(v) == {"training plant", "opposite sign on r1"}
    for r in v.values():
        o = r["open_loop_rmse_c_B_mol_per_m3"]
        assert all(x > 0 for x in o.values())
        assert len(r["per_batch"]) == 3 and len(r["b2b"]["errors"]) == 6
        assert r["fault_free"]["batches"] == 2
        assert 0.0 <= r["softsensor_adaptive"]["coverage95"] <= 1.0
        assert 0.0 <= r[R.DEPLOYED]["coverage95"] <= 1.0
        # The deployed soft sensor ran each batch with the correction in use then: the shipped one
        # until the first update (batch 4 at TINY sizes), a released one only after a release.
        used = r["b2b"]["models_in_use"]
        assert len(used) == 7 and len(set(used[:4])) == 1
        released = [x["after_batch"] for x in r["b2b"]["releases"] if x["released"]]
        assert (len(set(used)) > 1) == bool(released)
        for k in released:
            assert used[k] != used[k - 1]
    h = res["holdout"]
    assert R.DEPLOYED in h and h["batches"] == 2 and 0.0 <= h[R.DEPLOYED]["coverage95"] <= 1.0
    # The plant with the opposite sign on r1 pulls lambda_1 below the training plant's.
    assert v["opposite sign on r1"]["trust_final"][0] < v["training plant"]["trust_final"][0]
    assert set(res["goals"]) == set(R.GOALS_TEXT)
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["goals"] == res["goals"]
    md = (tmp_path / "robustness.md").read_text()
    assert "| goal | met | value |" in md and ("MET" in md or "MISSED" in md)
    assert (tmp_path / "fig.png").stat().st_size > 10_000
