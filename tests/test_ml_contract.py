"""Contract of a correction model: the runtime refuses a model that breaks it, with a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ml_onnx.contract import INPUT_NAME, OUTPUT_NAME, REQUIRED_METADATA, ModelContractError
from ml_onnx.export import save, to_onnx
from ml_onnx.features import DEFAULT_FEATURES
from ml_onnx.model import Monomials, RateCorrectionRegressor, candidates
from ml_onnx.runtime import OnnxCorrection
from twin_core.errors import TwinError


def synthetic_rows(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows (T, c_A, c_B, c_C) and smooth log-factor targets shaped like the plant's."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.uniform(300.0, 350.0, n), rng.uniform(0.0, 1000.0, n),
                         rng.uniform(0.0, 700.0, n), rng.uniform(0.0, 400.0, n)])
    y = np.column_stack([0.2 + 1010.0 * (1.0 / X[:, 0] - 1.0 / 353.15),
                         np.log(1.25 + 1.8e-3 * X[:, 3])])
    return X, y


def synthetic_onnx_bytes(n: int = 600, seed: int = 3) -> bytes:
    """A ridge_poly2 correction fitted on ``synthetic_rows(n, seed)``, as ONNX bytes (deterministic):
    the hybrid, trust, update and design-space tests share this one small model."""
    X, y = synthetic_rows(n, seed=seed)
    model = RateCorrectionRegressor(candidates()["ridge_poly2"]).fit(X, y)
    return to_onnx(model, "0" * 64).SerializeToString()


def synthetic_onnx(path: Path, n: int = 600, seed: int = 3) -> Path:
    """:func:`synthetic_onnx_bytes` written to ``path``."""
    path.write_bytes(synthetic_onnx_bytes(n, seed))
    return path


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[RateCorrectionRegressor, Path]:
    X, y = synthetic_rows()
    model = RateCorrectionRegressor(candidates()["ridge_poly2"], DEFAULT_FEATURES).fit(X, y)
    path = tmp_path_factory.mktemp("contract") / "good.onnx"
    save(to_onnx(model, "0" * 64), path)
    return model, path


def _write(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def _rename_input(m: onnx.ModelProto) -> None:
    old = m.graph.input[0].name
    m.graph.input[0].name = "x"
    for node in m.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = "x"


def _rename_output(m: onnx.ModelProto) -> None:
    old = m.graph.output[0].name
    m.graph.output[0].name = "y"
    for node in m.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = "y"


def _input_width(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3


def _input_float32(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def _output_width(m: onnx.ModelProto) -> None:
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3


def _drop_meta(key: str):  # type: ignore[no-untyped-def]
    def edit(m: onnx.ModelProto) -> None:
        keep = [(p.key, p.value) for p in m.metadata_props if p.key != key]
        del m.metadata_props[:]
        for k, v in keep:
            e = m.metadata_props.add()
            e.key, e.value = k, v
    return edit


def _set_meta(key: str, value: str):  # type: ignore[no-untyped-def]
    def edit(m: onnx.ModelProto) -> None:
        for p in m.metadata_props:
            if p.key == key:
                p.value = value
    return edit


def _opset(version: int):  # type: ignore[no-untyped-def]
    def edit(m: onnx.ModelProto) -> None:
        for o in m.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = version
    return edit


CASES = [
    ("wrong input name", _rename_input, "inputs ['x'], expected exactly ['features']"),
    ("wrong input shape", _input_width, "has shape"),
    ("float32 input", _input_float32, "expected DOUBLE (float64)"),
    ("wrong output name", _rename_output, "no output named 'log_rate_factors'"),
    ("wrong output shape", _output_width, "expected [N, 2]"),
    ("missing domain metadata", _drop_meta("twin.domain_upper"), "missing metadata key(s) ['twin.domain_upper']"),
    ("missing data hash", _drop_meta("twin.training_data_sha256"), "twin.training_data_sha256"),
    ("unknown feature", _set_meta("twin.feature_names", json.dumps(["T_K", "c_A_mol_per_m3", "c_B_mol_per_m3", "pH"])),
     "unknown feature(s) ['pH']"),
    ("unit mismatch", _set_meta("twin.feature_units", json.dumps(["degC", "mol/m3", "mol/m3", "mol/m3"])),
     "feature units"),
    ("bad domain", _set_meta("twin.domain_lower", json.dumps([400.0, 0.0, 0.0, 0.0])), "invalid training domain"),
    ("metadata not JSON", _set_meta("twin.domain_ramp", "[1, 2"), "is not valid JSON"),
    ("contract version", _set_meta("twin.contract_version", "99"), "contract version '99'"),
    ("opset too new", _opset(40), "outside the supported range"),
]


@pytest.mark.parametrize(("label", "edit", "message"), CASES, ids=[c[0] for c in CASES])
def test_contract_breach_is_refused_with_a_clear_error(good_model, tmp_path: Path, label: str, edit, message: str) -> None:
    _, path = good_model
    m = onnx.load(str(path))
    edit(m)
    bad = _write(m, tmp_path / "bad.onnx")
    with pytest.raises(ModelContractError) as info:
        OnnxCorrection(bad)
    assert message in str(info.value), str(info.value)
    assert str(bad) in str(info.value)  # the error names the file


@pytest.mark.parametrize("keep_fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_or_empty_file_is_refused(good_model, tmp_path: Path, keep_fraction: float) -> None:
    _, path = good_model
    data = path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(ModelContractError) as info:
        OnnxCorrection(bad)
    assert "truncated.onnx" in str(info.value)


def test_missing_file_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(ModelContractError, match="cannot read the file"):
        OnnxCorrection(tmp_path / "nope.onnx")


def test_contract_error_is_a_twin_error_and_a_value_error() -> None:
    err = ModelContractError("m.onnx", "broken")
    assert isinstance(err, TwinError) and isinstance(err, ValueError)


def test_good_model_carries_every_required_metadata_key(good_model) -> None:
    _, path = good_model
    corr = OnnxCorrection(path)
    assert set(REQUIRED_METADATA) <= set(corr.metadata)
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == [INPUT_NAME]
    assert [o.name for o in m.graph.output] == [OUTPUT_NAME]
    assert json.loads(corr.metadata["twin.feature_names"]) == list(DEFAULT_FEATURES)
    assert json.loads(corr.metadata["twin.feature_units"]) == ["K", "mol/m3", "mol/m3", "mol/m3"]
    assert json.loads(corr.metadata["twin.library_versions"])["onnxruntime"]


def test_export_is_reproducible_with_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = synthetic_rows()
    model = RateCorrectionRegressor(candidates()["ridge_poly3"]).fit(X, y)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = save(to_onnx(model, "ab" * 32), tmp_path / "a.onnx")
    b = save(to_onnx(model, "ab" * 32), tmp_path / "b.onnx")
    assert a == b
    assert OnnxCorrection(tmp_path / "a.onnx").metadata["twin.created_utc"] == "2023-11-14T22:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000001")
    assert save(to_onnx(model, "ab" * 32), tmp_path / "c.onnx") != a


def test_monomials_match_polynomial_features() -> None:
    from sklearn.preprocessing import PolynomialFeatures

    X, _ = synthetic_rows(50)
    for degree in (1, 2, 3):
        ours = Monomials(degree).fit_transform(X)
        ref = PolynomialFeatures(degree, include_bias=False).fit_transform(X)
        np.testing.assert_allclose(ours, ref, rtol=1e-15, atol=0.0)


@pytest.mark.parametrize("name", ["ridge_poly2", "ridge_poly3", "mlp"])
def test_every_shippable_candidate_exports_in_float64(tmp_path: Path, name: str) -> None:
    X, y = synthetic_rows(300)
    model = RateCorrectionRegressor(candidates()[name]).fit(X, y)
    save(to_onnx(model, "0" * 64), tmp_path / "m.onnx")
    got = OnnxCorrection(tmp_path / "m.onnx").predict_log_factors(X)
    want = model.predict(X)
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0)


def test_runtime_imports_neither_sklearn_nor_skl2onnx_nor_scipy() -> None:
    code = ("import sys, ml_onnx.runtime; bad = [m for m in ('sklearn', 'skl2onnx', 'scipy') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"ml_onnx.runtime pulled in: {r.stdout.strip()} {r.stderr[-500:]}"


def test_monomials_pass_scikit_learns_estimator_checks() -> None:
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(Monomials(), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert len(results) > 20 and failed == []


def test_correction_regressor_keeps_the_estimator_contract() -> None:
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    from twin_core.errors import ParameterError

    # No logic in __init__: even invalid parameters are stored as given, and refused by fit.
    est = RateCorrectionRegressor(estimator=None, feature_names=("nope",), ramp_fraction=-1.0)
    assert est.get_params()["feature_names"] == ("nope",) and est.ramp_fraction == -1.0
    X, y = synthetic_rows(100)
    with pytest.raises(ParameterError):
        est.fit(X, y)
    good = RateCorrectionRegressor(candidates()["ridge_poly2"])
    twin = clone(good)
    assert twin.get_params().keys() == good.get_params().keys()
    with pytest.raises(NotFittedError):
        good.predict(X)
    assert good.fit(X, y) is good  # fit returns self
    learned = {k for k in vars(good) if k not in good.get_params(deep=False)}
    assert learned and all(k.endswith("_") for k in learned), learned
    assert list(good.feature_names_in_) == list(DEFAULT_FEATURES) and good.n_features_in_ == 4
    with pytest.raises(ParameterError, match="must have 4 columns"):
        good.predict(X[:, :3])  # feature names are fixed


@pytest.mark.parametrize("name, n_nodes", [("ridge_poly2", 4), ("ridge_poly3", None)])
def test_quadratic_ridge_exports_as_a_four_node_quadratic_form(tmp_path: Path, name: str, n_nodes: int | None) -> None:
    """ridge_poly2 (scaler, degree-2 monomials, ridge) is written as Gemm, MatMul, Mul, MatMul with the
    scaling, the monomial selection and the intercept folded into the constants; degree 3 keeps the
    generic converter. Both agree with scikit-learn to 1e-9 relative, inside and beyond the training box."""
    X, y = synthetic_rows(300)
    model = RateCorrectionRegressor(candidates()[name]).fit(X, y)
    onx = to_onnx(model, "0" * 64)
    ops = [node.op_type for node in onx.graph.node]
    if n_nodes is not None:
        assert ops == ["Gemm", "MatMul", "Mul", "MatMul"]  # no Cast: float64 throughout
    else:
        assert "Gather" in ops
    save(onx, tmp_path / "m.onnx")
    corr = OnnxCorrection(tmp_path / "m.onnx")
    rng = np.random.default_rng(7)
    lo, hi = X.min(axis=0), X.max(axis=0)
    Xt = rng.uniform(lo - 0.2 * (hi - lo), hi + 0.2 * (hi - lo), (2000, 4))
    want = model.predict(Xt)
    np.testing.assert_allclose(corr.predict_log_factors(Xt), want, rtol=1e-9, atol=0.0)
    np.testing.assert_allclose(corr.predict_log_factors(Xt[:1]), want[:1], rtol=1e-9, atol=0.0)
