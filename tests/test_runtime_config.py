"""`twin run`'s configuration: the shipped example loads; bad files are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

from gateways.config import DEFAULT_OPCUA_ENDPOINT, RuntimeConfig, load_runtime_config
from twin_core.errors import ParameterError, ParameterTypeError


def test_defaults_are_twin_plants_on_loopback() -> None:
    cfg = load_runtime_config(None)
    assert cfg == RuntimeConfig()
    assert cfg.opcua_endpoint == DEFAULT_OPCUA_ENDPOINT == "opc.tcp://127.0.0.1:4840/batch-twin/"
    assert (cfg.mirror_host, cfg.mirror_port) == ("127.0.0.1", 5021)
    (r,) = cfg.reactors
    assert (r.plc_host, r.plc_port, r.plc_unit_id) == ("127.0.0.1", 5020, 1)


def test_the_shipped_example_loads() -> None:
    cfg = load_runtime_config(ROOT / "deployment" / "runtime.example.toml")
    assert [r.name for r in cfg.reactors] == ["R1"]
    assert cfg.reactors[0].start == {"c_A0": 1000.0, "sigma_lab": 0.5}


@pytest.mark.parametrize(("text", "field", "error"), [
    ("scan_s = 0", "runtime.scan_s", ParameterError),
    ("scan_s = 'fast'", "runtime.scan_s", ParameterTypeError),
    ("scan = 1.0", "runtime.scan", ParameterError),                      # unknown key
    ("mirror_port = 70000", "runtime.mirror_port", ParameterError),
    ("opcua_endpoint = 'http://x'", "runtime.opcua_endpoint", ParameterError),
    ("reconnect_min_s = 5.0\nreconnect_max_s = 1.0", "runtime.reconnect_max_s", ParameterError),
    ("reactor = 3", "reactor", ParameterTypeError),
    ("reactors = []", "reactors", ParameterError),
    ("[[reactor]]\nplc_port = 0", "reactor[0].plc_port", ParameterError),
    ("[[reactor]]\nname = 'R 1'", "reactor[0].name", ParameterError),
    ("[[reactor]]\nplc = 5020", "reactor[0].plc", ParameterError),
    ("[[reactor]]\nname = 'A'\n[[reactor]]\nname = 'A'", "runtime.reactors", ParameterError),
    ("[[reactor]]\n[reactor.start]\nk1_refx = 1.0", "reactor[0].start.k1_refx", ParameterError),
    ("[[reactor]]\n[reactor.start]\nc_A0 = -1.0", "reactor[0].start.c_A0", ParameterError),
    ("[[reactor]]\n[reactor.start]\nc_A0 = 'a lot'", "reactor[0].start.c_A0", ParameterTypeError),
    ("[[reactor]]\n[reactor.start]\nc_A = 1.0", "reactor[0].start.c_A", ParameterError),  # an output
])
def test_bad_configuration_is_refused_naming_the_key(tmp_path: Path, text: str, field: str, error: type) -> None:
    f = tmp_path / "run.toml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(error) as info:
        load_runtime_config(f)
    assert info.value.field == field


def test_missing_and_malformed_files_are_parameter_errors(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="cannot read"):
        load_runtime_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("scan_s = = 1", encoding="utf-8")
    with pytest.raises(ParameterError, match="not valid TOML"):
        load_runtime_config(tmp_path / "bad.toml")


PRIOR_TEXT = """# as `twin prior --out` writes it
lambda_1 = 1.08
lambda_2 = 0.98
UA_factor0 = 0.85
sigma_UA_factor0 = 0.02
sigma_k1_factor0 = 0.014
sigma_k2_factor0 = 0.014
sigma_lambda_1 = 0.066
sigma_lambda_2 = 0.04
"""


def test_a_plant_prior_file_is_read_and_checked(tmp_path: Path) -> None:
    from gateways.config import PRIOR_PARAMETERS, read_prior_file

    f = tmp_path / "R1.prior.toml"
    f.write_text(PRIOR_TEXT, encoding="utf-8")
    prior = read_prior_file(f)
    assert set(prior) == set(PRIOR_PARAMETERS) and prior["UA_factor0"] == 0.85 and prior["sigma_lambda_2"] == 0.04


@pytest.mark.parametrize(("text", "needle"), [
    ("c_A0 = 1000.0", "not plant-prior parameters"),            # a start value, but not a prior
    ("lambda_9 = 1.0", "not plant-prior parameters"),
    ("sigma_k1_factor0 = 0.0", "sigma_k1_factor0"),               # below the signal's range
    ("lambda_1 = 'high'", "lambda_1"),
    ("lambda_1 = ", "R1.prior.toml"),                             # not TOML
])
def test_a_bad_plant_prior_file_is_refused_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    from gateways.config import read_prior_file

    f = tmp_path / "R1.prior.toml"
    f.write_text(text + "\n", encoding="utf-8")
    with pytest.raises((ParameterError, ParameterTypeError), match=needle):
        read_prior_file(f)
    with pytest.raises(ParameterError, match="missing.toml"):
        read_prior_file(tmp_path / "missing.toml")
