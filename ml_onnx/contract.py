"""The contract between an exported correction model (.onnx) and the runtime that runs it.

Written once here, used by the exporter (ml_onnx.export) to write a model and by the runtime
(ml_onnx.runtime) to refuse one that does not keep it. Standard library only: the runtime is bundled
into the FMU and must not pull scikit-learn or skl2onnx in.

A correction model has
  - one input  ``features``          : float64 tensor [N, n_features] (physical features, SI units,
                                       named and ordered by the metadata key ``twin.feature_names``);
  - one output ``log_rate_factors``  : float64 tensor [N, 2] = (ln f1, ln f2), the natural logarithms
                                       of the multiplicative factors on the mechanistic rates r1, r2.
Working in logarithms keeps the factors positive whatever the regressor returns, and makes
"no correction" the value 0, which is what the domain guard fades to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from twin_core.errors import ParameterError, TwinError

CONTRACT_VERSION = "1"
INPUT_NAME = "features"
OUTPUT_NAME = "log_rate_factors"
OUTPUT_NAMES = ("ln_f1", "ln_f2")
OUTPUT_MEANING = ("natural logarithm of the multiplicative factors (f1, f2) on the mechanistic rates "
                  "r1 = k1(T) c_A and r2 = k2(T) c_B of twin_core.model: corrected r_i = exp(y_i) * r_i")
N_OUTPUTS = 2
ELEM_TYPE_DOUBLE = 11
"""onnx.TensorProto.DOUBLE, spelled out so this module needs no onnx import."""
OPSET_RANGE = (7, 22)
"""Default-domain opsets the runtime accepts (inclusive): the range onnxruntime 1.31 runs and
skl2onnx 1.20 writes; outside it the model was made by a toolchain nobody validated."""

META_PREFIX = "twin."
REQUIRED_METADATA = (
    "twin.contract_version",
    "twin.feature_names",
    "twin.feature_units",
    "twin.output_names",
    "twin.output_meaning",
    "twin.domain_lower",
    "twin.domain_upper",
    "twin.domain_ramp",
    "twin.training_data_sha256",
    "twin.library_versions",
    "twin.model_version",
    "twin.created_utc",
)
"""Metadata keys (ONNX ``metadata_props``) every correction model must carry. Values are strings;
lists and mappings are JSON."""


class ModelContractError(TwinError, ValueError):
    """A correction model does not keep the contract (names, shapes, dtypes, opset, metadata, file)."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(f"correction model {path}: {what}")


@dataclass(frozen=True)
class Domain:
    """The training domain of a correction: per-feature bounds and the width of the fade-out ramp.

    Inside [lower, upper] the correction is used unchanged. Outside, with e_j the distance beyond the
    nearer bound divided by ramp_j and e = max_j e_j, the log-factors are scaled by
    w(e) = 1 - 3 e^2 + 2 e^3 (a C1 smoothstep: 1 at the bound, 0 at one ramp width beyond, with zero
    slope at both ends) and the model is evaluated at the input clipped to the bounds, so a tree or
    a network is never extrapolated. Units are those of the features.
    """

    feature_names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    ramp: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        if n == 0:
            raise ParameterError("domain.feature_names", self.feature_names, "needs at least one feature")
        for name in ("lower", "upper", "ramp"):
            if len(getattr(self, name)) != n:
                raise ParameterError(f"domain.{name}", getattr(self, name), f"needs {n} values, one per feature")
        for j, f in enumerate(self.feature_names):
            lo, hi, rw = self.lower[j], self.upper[j], self.ramp[j]
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ParameterError(f"domain.{f}", (lo, hi), "bounds must be finite and lower <= upper")
            if not (math.isfinite(rw) and rw > 0.0):
                raise ParameterError(f"domain.ramp.{f}", rw, "ramp width must be finite and > 0")

    def to_metadata(self) -> dict[str, str]:
        return {"twin.domain_lower": json.dumps(list(self.lower)),
                "twin.domain_upper": json.dumps(list(self.upper)),
                "twin.domain_ramp": json.dumps(list(self.ramp))}


def smoothstep_weight(excess: float) -> float:
    """Fade weight w(e) of :class:`Domain`: 1 for e <= 0, 0 for e >= 1, 1 - 3e^2 + 2e^3 between."""
    if excess <= 0.0:
        return 1.0
    if excess >= 1.0:
        return 0.0
    return 1.0 - excess * excess * (3.0 - 2.0 * excess)
