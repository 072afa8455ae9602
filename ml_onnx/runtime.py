"""Run an exported correction model with onnxruntime, behind a contract check and a domain guard.

:class:`OnnxCorrection` implements ``twin_core.hybrid.LogCorrectionModel``. It depends only on numpy,
onnx (to read the model's metadata and opset), onnxruntime and twin_core: the FMU bundles it and runs
inside C hosts, where scikit-learn, skl2onnx and scipy must not be imported.

Load time: the file is parsed and its contract checked (ml_onnx.contract: input/output names, shapes,
float64 dtypes, opset, required metadata, known feature names with the right units, a valid domain);
any breach raises :class:`~ml_onnx.contract.ModelContractError` naming what is wrong.

Call time (:meth:`OnnxCorrection.log_factors`, in every Runge-Kutta stage of the hybrid twin; and
:meth:`OnnxCorrection.factors`, its exp): the features are gathered into a pre-allocated row, clipped
to the training domain, and the log-factors from the single-thread session are faded to zero by the
smoothstep of ml_onnx.contract.Domain beyond the bounds.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from ml_onnx.contract import (
    CONTRACT_VERSION,
    ELEM_TYPE_DOUBLE,
    INPUT_NAME,
    N_OUTPUTS,
    OPSET_RANGE,
    OUTPUT_NAME,
    REQUIRED_METADATA,
    Domain,
    ModelContractError,
)
from ml_onnx.features import FEATURES
from twin_core.errors import MeasurementError, ParameterError

log = logging.getLogger(__name__)


def session_options() -> ort.SessionOptions:
    """Single-thread, sequential session: one small row per call, where thread hand-offs cost more
    than the arithmetic and the FMU host owns the cores."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: warnings about unused initialisers are noise here
    return so


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """Shape of a graph input/output: ints for fixed dims, names or None for free ones."""
    out: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


def _json(label: str, meta: dict[str, str], key: str) -> object:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise ModelContractError(label, f"metadata {key!r} is not valid JSON: {exc}") from exc


def check_contract(proto: onnx.ModelProto, label: str) -> tuple[dict[str, str], Domain]:
    """Check a parsed model against the contract; return its metadata and domain.

    Raises ModelContractError naming the first breach found.
    """
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ModelContractError(label, f"not a valid ONNX model: {str(exc).splitlines()[0]}") from exc
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    if "" not in opsets:
        raise ModelContractError(label, "no default-domain opset declared")
    lo, hi = OPSET_RANGE
    if not lo <= opsets[""] <= hi:
        raise ModelContractError(label, f"opset {opsets['']} outside the supported range {lo}..{hi}")
    meta = {p.key: p.value for p in proto.metadata_props}
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelContractError(label, f"missing metadata key(s) {missing}")
    if meta["twin.contract_version"] != CONTRACT_VERSION:
        raise ModelContractError(label, f"contract version {meta['twin.contract_version']!r}, "
                                        f"this runtime reads {CONTRACT_VERSION!r}")
    names = _json(label, meta, "twin.feature_names")
    units = _json(label, meta, "twin.feature_units")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ModelContractError(label, f"metadata 'twin.feature_names' must be a non-empty list of names, got {names!r}")
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ModelContractError(label, f"unknown feature(s) {unknown}; this runtime knows {sorted(FEATURES)}")
    if units != [FEATURES[n].unit for n in names]:
        raise ModelContractError(label, f"feature units {units!r} do not match "
                                        f"{[FEATURES[n].unit for n in names]!r} for features {names!r}")
    n = len(names)

    inputs = list(proto.graph.input)
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ModelContractError(label, f"inputs {[i.name for i in inputs]}, expected exactly [{INPUT_NAME!r}]")
    itype = inputs[0].type.tensor_type.elem_type
    if itype != ELEM_TYPE_DOUBLE:
        raise ModelContractError(label, f"input {INPUT_NAME!r} has element type "
                                        f"{onnx.TensorProto.DataType.Name(itype)}, expected DOUBLE (float64)")
    dims = _dims(inputs[0])
    if len(dims) != 2 or dims[1] != n or (isinstance(dims[0], int) and dims[0] != 1):
        raise ModelContractError(label, f"input {INPUT_NAME!r} has shape {dims}, expected [N, {n}] "
                                        f"for features {names}")
    outputs = {o.name: o for o in proto.graph.output}
    if OUTPUT_NAME not in outputs:
        raise ModelContractError(label, f"no output named {OUTPUT_NAME!r} (outputs: {sorted(outputs)})")
    out = outputs[OUTPUT_NAME]
    otype = out.type.tensor_type.elem_type
    if otype != ELEM_TYPE_DOUBLE:
        raise ModelContractError(label, f"output {OUTPUT_NAME!r} has element type "
                                        f"{onnx.TensorProto.DataType.Name(otype)}, expected DOUBLE (float64)")
    odims = _dims(out)
    if len(odims) != 2 or odims[1] != N_OUTPUTS:
        raise ModelContractError(label, f"output {OUTPUT_NAME!r} has shape {odims}, expected [N, {N_OUTPUTS}]")

    bounds = {k: _json(label, meta, f"twin.domain_{k}") for k in ("lower", "upper", "ramp")}
    try:
        domain = Domain(tuple(names), *(tuple(float(v) for v in bounds[k]) for k in ("lower", "upper", "ramp")))
    except (ParameterError, TypeError) as exc:
        raise ModelContractError(label, f"invalid training domain in metadata: {exc}") from exc
    return meta, domain


class OnnxCorrection:
    """A learned rate correction run by onnxruntime (implements twin_core.hybrid.LogCorrectionModel).

    ``OnnxCorrection(path)`` loads and checks the model; :meth:`log_factors` is the per-stage call.
    Attributes: ``metadata`` (the model's ``twin.*`` metadata), ``domain``, ``feature_names``.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ModelContractError(str(p), f"cannot read the file: {exc.strerror or exc}") from exc
        self._load(data, str(p))

    @classmethod
    def from_bytes(cls, data: bytes, label: str = "<bytes>") -> OnnxCorrection:
        """Load from the serialised model (e.g. read from an FMU's resources)."""
        obj = cls.__new__(cls)
        obj._load(bytes(data), label)
        return obj

    def _load(self, data: bytes, label: str) -> None:
        if not data:
            raise ModelContractError(label, "empty file")
        try:
            proto = onnx.load_model_from_string(data)
        except DecodeError as exc:
            raise ModelContractError(label, f"not a readable ONNX file (truncated or corrupt): {exc}") from exc
        self.label = label
        self.metadata, self.domain = check_contract(proto, label)
        try:
            self._session = ort.InferenceSession(data, sess_options=session_options(),
                                                 providers=["CPUExecutionProvider"])
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.NotImplemented) as exc:
            raise ModelContractError(label, f"onnxruntime cannot load it: {exc}") from exc
        self.feature_names: tuple[str, ...] = self.domain.feature_names
        n = len(self.feature_names)
        # Pre-allocated input row and output, bound once: a call then only writes n floats and runs.
        self._row = np.zeros((1, n), dtype=np.float64)
        self._row_flat = self._row.reshape(-1)
        self._out = np.zeros((1, N_OUTPUTS), dtype=np.float64)
        self._binding = self._session.io_binding()
        self._binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(self._row))
        self._binding.bind_ortvalue_output(OUTPUT_NAME, ort.OrtValue.ortvalue_from_numpy(self._out))
        d = self.domain
        self._spec = tuple((FEATURES[name].index, d.lower[j], d.upper[j], 1.0 / d.ramp[j])
                           for j, name in enumerate(self.feature_names))
        self.in_domain_calls = 0
        self.out_of_domain_calls = 0
        log.info("loaded correction %s: features %s, model version %s, created %s", label,
                 list(self.feature_names), self.metadata["twin.model_version"], self.metadata["twin.created_utc"])

    # -- per-stage call ----------------------------------------------------------------------------
    def log_factors(self, t_s: float, x: Sequence[float]) -> tuple[float, float, bool]:
        """(g1, g2, in_domain): the faded log-factors ln f1, ln f2 at time t_s [s] and twin state
        x = (c_A, c_B, c_C [mol/m3], T [K]) (twin_core.hybrid.LogCorrectionModel: called in every
        Runge-Kutta stage).

        Each feature v is clipped to [lo, hi] of the training domain and its excess
        e = (lo - v)/ramp or (v - hi)/ramp (0 inside) taken; with E the largest excess:
        E == 0: g = the model's output at the row, in_domain True; 0 < E < 1: g = w * output at the
        clipped row with w = 1 - E^2 (3 - 2E) (smoothstep), in_domain False; E >= 1: g = (0, 0)
        without running the model, in_domain False.
        Raises MeasurementError on a non-finite feature (a broken state must not pass as "out of domain").
        """
        raw = (t_s, x[0], x[1], x[2], x[3])
        row = self._row_flat
        excess = 0.0
        j = 0
        for idx, lo, hi, inv_ramp in self._spec:
            v = raw[idx]
            if v < lo:
                e = (lo - v) * inv_ramp
                v = lo
            elif v > hi:
                e = (v - hi) * inv_ramp
                v = hi
            elif v == v:
                e = 0.0
            else:
                raise MeasurementError(self.feature_names[j], v, "non-finite input to the correction")
            if e > excess:
                excess = e
            row[j] = v
            j += 1
        if excess == 0.0:
            self.in_domain_calls += 1
            self._session.run_with_iobinding(self._binding)
            out = self._out
            return float(out[0, 0]), float(out[0, 1]), True
        self.out_of_domain_calls += 1
        if excess >= 1.0 or excess != excess:
            return 0.0, 0.0, False
        self._session.run_with_iobinding(self._binding)
        w = 1.0 - excess * excess * (3.0 - 2.0 * excess)
        out = self._out
        return w * float(out[0, 0]), w * float(out[0, 1]), False

    def factors(self, t_s: float, x: Sequence[float], T_jacket_K: float) -> tuple[float, float, bool]:
        """(f1, f2, in_domain) = (exp g1, exp g2, in_domain) of :meth:`log_factors` at time t_s [s],
        twin state x = (c_A, c_B, c_C [mol/m3], T [K]).

        T_jacket_K [K] is part of the CorrectionModel protocol but not a feature (ml_onnx.features).
        Raises MeasurementError on a non-finite feature.
        """
        g1, g2, ok = self.log_factors(t_s, x)
        return math.exp(g1), math.exp(g2), ok

    def log_factors_batch(self, t_s: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`log_factors` for W points at once: t_s (W,) [s], x (4, W) rows c_A, c_B, c_C
        [mol/m3], T [K]; returns (g1 (W,), g2 (W,), in_domain (W,) bool), the same clip, excess and
        smoothstep fade in numpy (one onnxruntime run for the W rows; equal to the scalar path to
        rounding). Raises MeasurementError on a non-finite feature."""
        t = np.asarray(t_s, dtype=np.float64).reshape(-1)
        xs = np.asarray(x, dtype=np.float64)
        if xs.ndim != 2 or xs.shape[0] != 4 or xs.shape[1] != t.shape[0]:
            raise ParameterError("x", xs.shape, f"must be (4, {t.shape[0]}): rows c_A, c_B, c_C, T")
        raw = np.vstack([t[None, :], xs])
        idx = [FEATURES[n].index for n in self.feature_names]
        V = raw[idx].T  # (W, n)
        if not np.all(np.isfinite(V)):
            j = int(np.argwhere(~np.isfinite(V))[0, 1])
            raise MeasurementError(self.feature_names[j], float(V[~np.isfinite(V)][0]), "non-finite input to the correction")
        d = self.domain
        lo, hi, ramp = np.asarray(d.lower), np.asarray(d.upper), np.asarray(d.ramp)
        excess = np.max(np.maximum(np.maximum(lo - V, V - hi), 0.0) / ramp, axis=1)
        Vc = np.ascontiguousarray(np.clip(V, lo, hi))
        e = np.minimum(excess, 1.0)
        w = 1.0 - e * e * (3.0 - 2.0 * e)
        out = self._session.run([OUTPUT_NAME], {INPUT_NAME: Vc})[0] if len(Vc) else np.zeros((0, N_OUTPUTS))
        return w * out[:, 0], w * out[:, 1], excess == 0.0

    # -- batch use (tests, reports) ----------------------------------------------------------------
    def predict_log_factors(self, X: np.ndarray) -> np.ndarray:
        """The raw model output (ln f1, ln f2) [N, 2] for feature rows X [N, n]: no guard, no clip."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ParameterError("X", X.shape, f"must be [N, {len(self.feature_names)}]: {list(self.feature_names)}")
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: X})[0]

    def __repr__(self) -> str:
        return f"OnnxCorrection({self.label!r}, features={list(self.feature_names)})"
