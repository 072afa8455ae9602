"""Export a fitted :class:`~ml_onnx.model.RateCorrectionRegressor` to ONNX with its contract metadata.

skl2onnx converts the fitted regressor in double precision (``DoubleTensorType``) with the input and
output names of ml_onnx.contract. The shipped family (StandardScaler -> Monomials of degree <= 2 ->
Ridge) goes through skl2onnx as a :class:`QuadraticForm` with its own converter: 4 nodes instead of
12 (:func:`_quadratic_form_converter`). The metadata
(``metadata_props``) carries the feature names and units, what the output means, the training-domain
bounds and ramp widths, the SHA-256 of the training data, library versions, the model version and the
creation time.

Reproducible builds: every field is a function of the training data and code except the creation
time, which is taken from ``SOURCE_DATE_EPOCH`` when that variable is set (the reproducible-builds
convention) and from the clock otherwise. With it set, two exports are byte-identical.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import skl2onnx
import sklearn
from onnx import numpy_helper
from skl2onnx import convert_sklearn, update_registered_converter
from skl2onnx.common.data_types import DoubleTensorType
from skl2onnx.operator_converters.gradient_boosting import convert_sklearn_gradient_boosting_regressor
from skl2onnx.operator_converters.random_forest import convert_sklearn_random_forest_regressor_converter
from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingRegressor,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ml_onnx.contract import (
    CONTRACT_VERSION,
    INPUT_NAME,
    N_OUTPUTS,
    OUTPUT_MEANING,
    OUTPUT_NAME,
    OUTPUT_NAMES,
)
from ml_onnx.features import units
from ml_onnx.model import Monomials, RateCorrectionRegressor
from twin_core.errors import ParameterError

log = logging.getLogger(__name__)

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
"""Default-domain opset 17 and ai.onnx.ml 3 (the first with double-precision tree ensembles)."""
MODEL_VERSION = "1.0.0"


class _DoubleTreeContainer:
    """Proxy of skl2onnx's graph container that writes tree ensembles in double precision.

    skl2onnx 1.20 computes a tree's thresholds and leaf values in float64 for a double input (with
    thresholds adjusted so that ``x <= t`` reproduces scikit-learn's float32 comparison) but then
    writes them as float32 attributes of ai.onnx.ml TreeEnsembleRegressor v1: predictions differ
    from scikit-learn by ~1e-7 relative. Version 3 of the operator has double ``*_as_tensor``
    attributes; this proxy moves the values there, so parity holds to ~1e-15.
    """

    _DOUBLE_ATTRS = ("nodes_values", "target_weights", "base_values", "nodes_hitrates")

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def add_node(self, op_type: str, inputs: object, outputs: object, op_domain: str = "",
                 op_version: int | None = None, **attrs: object) -> object:
        if op_type == "TreeEnsembleRegressor" and op_domain == "ai.onnx.ml":
            for k in self._DOUBLE_ATTRS:
                if k in attrs:
                    v = np.asarray(attrs.pop(k), dtype=np.float64).ravel()
                    if v.size:
                        attrs[k + "_as_tensor"] = numpy_helper.from_array(v, name=k + "_as_tensor")
            op_version = 3
        return self._inner.add_node(op_type, inputs, outputs, op_domain=op_domain, op_version=op_version, **attrs)


def _double_trees(converter):  # type: ignore[no-untyped-def]
    def convert(scope, operator, container):  # type: ignore[no-untyped-def]
        return converter(scope, operator, _DoubleTreeContainer(container))
    return convert


_FOREST_OPTIONS = {"decision_path": [True, False], "decision_leaf": [True, False]}
for _cls, _alias, _conv, _options in (
        (GradientBoostingRegressor, "SklearnGradientBoostingRegressor", convert_sklearn_gradient_boosting_regressor, None),
        (RandomForestRegressor, "SklearnRandomForestRegressor", convert_sklearn_random_forest_regressor_converter,
         _FOREST_OPTIONS),
        (ExtraTreesRegressor, "SklearnExtraTreesRegressor", convert_sklearn_random_forest_regressor_converter,
         _FOREST_OPTIONS),
        (HistGradientBoostingRegressor, "SklearnHistGradientBoostingRegressor",
         convert_sklearn_random_forest_regressor_converter, {"raw_scores": [True, False]})):
    update_registered_converter(_cls, _alias, calculate_linear_regressor_output_shapes, _double_trees(_conv),
                                options=_options)


def _monomials_shape(operator) -> None:  # type: ignore[no-untyped-def]
    n_out = len(operator.raw_operator.powers_)
    operator.outputs[0].type = operator.inputs[0].type.__class__([operator.inputs[0].get_first_dimension(), n_out])


def _monomials_converter(scope, operator, container) -> None:  # type: ignore[no-untyped-def]
    """ONNX form of :class:`~ml_onnx.model.Monomials`: the degree-d products as the outer product
    of the degree-(d-1) block with the input, flattened; one Gather picks the monomials in
    scikit-learn's order. Each product is formed in the same order as ``Monomials.transform``
    ((x_i x_j) x_k), so the values are bit-identical."""
    op = operator.raw_operator
    n = int(op.n_features_in_)
    x = operator.inputs[0].full_name

    def const(stem: str, values: list[int]) -> str:
        nm = scope.get_unique_variable_name(stem)
        container.add_initializer(nm, onnx.TensorProto.INT64, [len(values)], values)
        return nm

    def node(op_type: str, inputs: list[str], stem: str, **attrs: object) -> str:
        out = scope.get_unique_variable_name(stem)
        container.add_node(op_type, inputs, out, name=scope.get_unique_operator_name(op_type), **attrs)
        return out

    parts, cur, width = [x], x, n
    if op.degree >= 2:
        row = node("Unsqueeze", [x, const("axis1", [1])], "row")             # (N, 1, n)
        axis2 = const("axis2", [2])
        for _ in range(2, op.degree + 1):
            col = node("Unsqueeze", [cur, axis2], "col")                       # (N, w, 1)
            prod = node("Mul", [col, row], "outer")                            # (N, w, n)
            width *= n
            cur = node("Reshape", [prod, const("shape", [-1, width])], "flat")  # (N, w*n)
            parts.append(cur)
    full = node("Concat", parts, "monomials_all", axis=1) if len(parts) > 1 else x
    offsets = [0]
    for d in range(1, op.degree + 1):
        offsets.append(offsets[-1] + n ** d)
    index = []
    for c in op.powers_:
        pos = 0
        for i in c:
            pos = pos * n + int(i)
        index.append(offsets[len(c) - 1] + pos)
    container.add_node("Gather", [full, const("monomial_index", index)], operator.outputs[0].full_name,
                       name=scope.get_unique_operator_name("Gather"), axis=1)


update_registered_converter(Monomials, "TwinMonomials", _monomials_shape, _monomials_converter)


def _quadratic_parts(est: object) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(mean, scale, W) if ``est`` is StandardScaler -> Monomials(degree <= 2) -> a linear model, else None.

    W [n_outputs, n+1, n+1] is the model as a quadratic form in z = [(x - mean) / scale, 1]:
    y_k = z^T W_k z, with each monomial's coefficient in W_k[i, j] (i <= j), the linear terms in
    W_k[i, n] and the intercept in W_k[n, n].
    """
    if not isinstance(est, Pipeline) or len(est.steps) != 3:
        return None
    scaler, mono, lin = (s for _, s in est.steps)
    if not (isinstance(scaler, StandardScaler) and isinstance(mono, Monomials) and mono.degree <= 2
            and isinstance(lin, (Ridge, LinearRegression))):
        return None
    n = int(scaler.n_features_in_)
    mean = np.zeros(n) if scaler.mean_ is None else np.asarray(scaler.mean_, dtype=np.float64)
    scale = np.ones(n) if scaler.scale_ is None else np.asarray(scaler.scale_, dtype=np.float64)
    coef = np.asarray(lin.coef_, dtype=np.float64)
    if coef.shape != (N_OUTPUTS, len(mono.powers_)) or np.size(lin.intercept_) not in (1, N_OUTPUTS):
        return None
    icpt = np.broadcast_to(np.asarray(lin.intercept_, dtype=np.float64), (N_OUTPUTS,))
    W = np.zeros((N_OUTPUTS, n + 1, n + 1))
    for m, c in enumerate(mono.powers_):
        i, j = (int(c[0]), n) if len(c) == 1 else (int(c[0]), int(c[1]))
        W[:, i, j] += coef[:, m]
    W[:, n, n] += icpt
    return mean, scale, W


class QuadraticForm:
    """Export vehicle: the fitted model as y_k = z^T W_k z with z = [(x - mean) / scale, 1].

    Built from a fitted pipeline by :func:`_quadratic_parts` (no fitting of its own); skl2onnx
    converts it with :func:`_quadratic_form_converter`, registered below.
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray, W: np.ndarray) -> None:
        self.mean, self.scale, self.W = mean, scale, W

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The model's output [N, K] in plain numpy (for checks)."""
        z = np.hstack([(np.asarray(X, dtype=np.float64) - self.mean) / self.scale, np.ones((len(X), 1))])
        return np.einsum("ni,kij,nj->nk", z, self.W, z)


def _quadratic_form_shape(operator) -> None:  # type: ignore[no-untyped-def]
    k = operator.raw_operator.W.shape[0]
    operator.outputs[0].type = operator.inputs[0].type.__class__([operator.inputs[0].get_first_dimension(), k])


def _quadratic_form_converter(scope, operator, container) -> None:  # type: ignore[no-untyped-def]
    """The 4-node ONNX form of a ridge on scaled degree-<=2 monomials (see :func:`_quadratic_parts`).

    With m = n + 1 and K outputs, one Gemm writes z = [(x - mean) / scale, 1] K times side by side
    (zz [N, K m]; the scaling is folded into the Gemm as x / scale - mean / scale), a MatMul with the
    block-diagonal W_k^T gives W_k z per block, a Mul forms z_i (W_k z)_i and a MatMul with a 0/1
    matrix sums each block: y_k = z^T W_k z. Same polynomial as scikit-learn's pipeline; only the
    rounding differs (a few 1e-12 relative on the held-out rows, contract 1e-9), in 4 nodes
    instead of the 12 that the generic Monomials converter and skl2onnx's scaler and ridge write.
    """
    op = operator.raw_operator
    mean, scale, W = op.mean, op.scale, op.W
    K, m = W.shape[0], W.shape[1]
    n = m - 1
    A1 = np.zeros((n, m))
    A1[:, :n] = np.diag(1.0 / scale)
    c1 = np.zeros(m)
    c1[:n] = -mean / scale
    c1[n] = 1.0
    A, c = np.tile(A1, (1, K)), np.tile(c1, K)
    B = np.zeros((K * m, K * m))
    S = np.zeros((K * m, K))
    for k in range(K):
        B[k * m:(k + 1) * m, k * m:(k + 1) * m] = W[k].T
        S[k * m:(k + 1) * m, k] = 1.0

    def const(stem: str, v: np.ndarray) -> str:
        nm = scope.get_unique_variable_name(stem)
        container.add_initializer(nm, onnx.TensorProto.DOUBLE, list(v.shape), v.ravel().tolist())
        return nm

    def node(op_type: str, inputs: list[str], out: str) -> str:
        container.add_node(op_type, inputs, out, name=scope.get_unique_operator_name(op_type))
        return out

    x = operator.inputs[0].full_name
    zz = node("Gemm", [x, const("scale_embed", A), const("scale_offset", c)],
              scope.get_unique_variable_name("z_tiled"))                                          # [N, K m]
    wz = node("MatMul", [zz, const("quadratic_form", B)], scope.get_unique_variable_name("Wz"))   # [N, K m]
    terms = node("Mul", [wz, zz], scope.get_unique_variable_name("zWz_terms"))                    # [N, K m]
    node("MatMul", [terms, const("block_sum", S)], operator.outputs[0].full_name)                 # [N, K]


def _drop_final_cast(onx: onnx.ModelProto) -> None:
    """Remove the double -> double Cast skl2onnx appends to rename the output (a no-op on values)."""
    nodes = onx.graph.node
    last = nodes[-1]
    if last.op_type != "Cast" or list(last.output) != [OUTPUT_NAME]:
        return
    if not any(a.name == "to" and a.i == onnx.TensorProto.DOUBLE for a in last.attribute):
        return
    src = last.input[0]
    for nd in nodes:
        for i, out in enumerate(nd.output):
            if out == src:
                nd.output[i] = OUTPUT_NAME
    nodes.remove(last)


update_registered_converter(QuadraticForm, "TwinQuadraticForm", _quadratic_form_shape, _quadratic_form_converter)


def creation_time_utc() -> str:
    """ISO-8601 UTC creation time: ``SOURCE_DATE_EPOCH`` [s since 1970] if set, else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:  # unset or empty: the clock
        try:
            t = dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC)
        except ValueError as exc:
            raise ParameterError("SOURCE_DATE_EPOCH", epoch, "must be an integer number of seconds") from exc
    else:
        t = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    return t.isoformat().replace("+00:00", "Z")


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def to_onnx(model: RateCorrectionRegressor, data_sha256: str, model_version: str = MODEL_VERSION,
            description: str = "", extra_metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Convert a fitted correction to an ONNX model carrying the contract metadata.

    ``data_sha256`` is the hash of the training-data file; ``extra_metadata`` adds ``twin.*`` keys
    (e.g. the estimator name and its cross-validation score).
    """
    if not hasattr(model, "estimator_"):
        raise ParameterError("model", model, "must be fitted before export")
    names = tuple(str(n) for n in model.feature_names_in_)
    doc = description or "Learned factors on the two reaction rates of the batch-reactor twin"
    quadratic = _quadratic_parts(model.estimator_)
    # The ridge_poly2 family goes through skl2onnx as a QuadraticForm (4 nodes), the rest as is.
    onx = convert_sklearn(
        QuadraticForm(*quadratic) if quadratic is not None else model.estimator_,
        initial_types=[(INPUT_NAME, DoubleTensorType([None, len(names)]))],
        final_types=[(OUTPUT_NAME, DoubleTensorType([None, N_OUTPUTS]))],
        target_opset=dict(TARGET_OPSET),
        name="rate_correction",
        doc_string=doc,
    )
    if quadratic is not None:
        _drop_final_cast(onx)
    meta = {
        "twin.contract_version": CONTRACT_VERSION,
        "twin.feature_names": json.dumps(list(names)),
        "twin.feature_units": json.dumps(list(units(names))),
        "twin.output_names": json.dumps(list(OUTPUT_NAMES)),
        "twin.output_meaning": OUTPUT_MEANING,
        **model.domain_.to_metadata(),
        "twin.training_data_sha256": data_sha256,
        "twin.library_versions": json.dumps(library_versions(), sort_keys=True),
        "twin.model_version": model_version,
        "twin.created_utc": creation_time_utc(),
    }
    for k, v in (extra_metadata or {}).items():
        if not k.startswith("twin."):
            raise ParameterError("extra_metadata", k, "keys must start with 'twin.'")
        meta[k] = str(v)
    del onx.metadata_props[:]
    for k in sorted(meta):
        entry = onx.metadata_props.add()
        entry.key, entry.value = k, meta[k]
    onx.producer_name = "batch-reactor-twin ml_onnx"
    onx.producer_version = model_version
    onx.model_version = int(model_version.split(".")[0])
    onnx.checker.check_model(onx)
    return onx


def save(onx: onnx.ModelProto, path: str | Path) -> str:
    """Write the model atomically (temp file + rename) and return its SHA-256."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    data = onx.SerializeToString(deterministic=True)
    tmp.write_bytes(data)
    os.replace(tmp, p)
    log.info("wrote %s (%d bytes)", p, len(data))
    return hashlib.sha256(data).hexdigest()
