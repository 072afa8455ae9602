"""`twin prior` (ml_onnx.commands.cmd_prior): the plant prior of the next batch from a plant's recorded
batches, as FMU parameters. Oracles: the same prior built batch by batch the way the robustness
evaluation builds it (validation/robustness.soft_sensor_row, then PlantPrior.update); the written
TOML is a valid ``[reactor.start]`` table of the runtime; bad arguments are refused with a message."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateways.config import config_from_mapping
from ml_onnx.runtime import OnnxCorrection
from ml_onnx.trust import PlantPrior, TrustTracker
from twin_core.estimation import SoftSensorConfig
from twin_core.offline.batches import read_batches
from twin_core.offline.cli import main
from twin_core.signals.twin import PRIOR_SIGMAS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "simulated_batch_data.csv"
LAST = 4


@pytest.fixture(scope="module")
def written(dist_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("prior") / "prior.toml"
    rc = main(["prior", "--data", str(DATA), "--correction", str(dist_artifacts / "correction.onnx"),
               "--last", str(LAST), "--out", str(out)])
    assert rc == 0
    return tomllib.loads(out.read_text(encoding="utf-8")), dist_artifacts / "correction.onnx"


def test_the_parameters_are_the_prior_the_robustness_evaluation_builds(written) -> None:
    import sys
    sys.path.insert(0, str(ROOT / "validation"))
    import robustness as R

    params, onnx_path = written
    corr = OnnxCorrection(onnx_path)
    cfg = SoftSensorConfig()
    batches = list(read_batches(DATA).values())[-LAST:]
    prior = PlantPrior.for_config(TrustTracker(corr), cfg)
    for b in batches:
        kw = prior.start_kwargs(b)
        row = R.soft_sensor_row(b, corr, cfg, kw["trust0"], kw)
        prior.update(b.without_truth(), row["factors_end"], row["factors_end_std"], row["lab_z"])
    kw = prior.start_kwargs_for(batches[-1].batches_since_cleaning + 1)
    assert set(params) == {"lambda_1", "lambda_2", "UA_factor0", *PRIOR_SIGMAS}
    assert (params["lambda_1"], params["lambda_2"]) == pytest.approx(kw["trust0"], rel=1e-12)
    assert params["UA_factor0"] == pytest.approx(kw["factors0"][0], rel=1e-12)
    assert [params[n] for n in PRIOR_SIGMAS] == pytest.approx(list(kw["prior_std"]), rel=1e-12)
    # learned, not the generic prior: four batches narrow the k-factor SDs and set the fouling
    assert params["sigma_k1_factor0"] < cfg.k1_factor0_std and params["UA_factor0"] < 1.0


def test_the_written_table_is_a_valid_reactor_start(written) -> None:
    params, _ = written
    cfg = config_from_mapping({"reactor": [{"name": "R1", "plc_host": "127.0.0.1", "plc_port": 5020,
                                            "fmu": "dist/BatchReactorTwin.fmu", "start": params}]})
    assert cfg.reactors[0].start == params


def test_printed_without_out(dist_artifacts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["prior", "--data", str(DATA), "--correction", str(dist_artifacts / "correction.onnx"),
               "--last", "1", "--batches-since-cleaning", "0"])
    text = capsys.readouterr().out
    assert rc == 0 and "plant prior from 1 batches" in text and "a batch 0 batches after cleaning" in text
    table = tomllib.loads("\n".join(line for line in text.splitlines() if " = " in line))
    assert table["UA_factor0"] > 0.0 and set(table) >= set(PRIOR_SIGMAS)


@pytest.mark.parametrize("args,message", [
    (["--last", "0"], "--last"),
    (["--batches-since-cleaning", "-1"], "--batches-since-cleaning"),
    (["--data", "no/such/file.csv"], "no/such/file.csv"),
    (["--correction", "no/such/model.onnx"], "no/such/model.onnx"),
])
def test_bad_arguments_are_refused(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prior", "--data", str(DATA), *args]) == 2
    assert message in capsys.readouterr().err
