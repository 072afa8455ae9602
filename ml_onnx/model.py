"""The correction estimator: (ln f1, ln f2) regressed on named physical features.

:class:`RateCorrectionRegressor` follows the scikit-learn estimator contract (no logic in
``__init__``, ``fit`` returns ``self``, learned attributes end in ``_``, feature names fixed by the
``feature_names`` parameter) and wraps any multi-output regressor. Besides the fitted regressor it
records the training domain, which the exporter writes into the ONNX metadata and the runtime guards.

:func:`candidates` lists the regressors compared by grouped cross-validation in ml_onnx.train; each
is a plain scikit-learn pipeline that skl2onnx converts in double precision.
"""

from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.multioutput import MultiOutputRegressor
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from ml_onnx.contract import N_OUTPUTS, Domain
from ml_onnx.features import DEFAULT_FEATURES, FEATURES, check_names
from twin_core.errors import ParameterError

RAMP_FLOOR: dict[str, float] = {"s": 600.0, "mol/m3": 10.0, "K": 2.0}
"""Smallest fade-out ramp per unit [s, mol/m3, K]: below these a ramp is sharper than the twin's
own error on the feature, and the fade would flicker between steps."""


class Monomials(TransformerMixin, BaseEstimator):
    """All monomials of degree 1..``degree`` of the input columns (no bias column).

    The same columns as scikit-learn's ``PolynomialFeatures(degree, include_bias=False)``, in the
    same order, but with a compact ONNX form (ml_onnx.export registers it): outer products,
    reshapes and one gather, ~10 nodes whatever the degree, where skl2onnx writes one node per term
    for PolynomialFeatures (75 nodes, ~50 us per call for degree 3 in 4 features).
    Learned: ``powers_`` (tuple of column-index tuples, one per output column), ``n_features_in_``.
    """

    def __init__(self, degree: int = 2) -> None:
        self.degree = degree

    def fit(self, X: np.ndarray, y: object = None) -> Monomials:
        X = validate_data(self, X, dtype=np.float64, reset=True)
        if not (isinstance(self.degree, int) and 1 <= self.degree <= 3):
            raise ParameterError("degree", self.degree, "must be 1, 2 or 3")
        n = X.shape[1]
        self.powers_ = tuple(c for d in range(1, self.degree + 1)
                             for c in combinations_with_replacement(range(n), d))
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "powers_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        out = np.empty((X.shape[0], len(self.powers_)))
        for j, c in enumerate(self.powers_):
            v = X[:, c[0]].copy()
            for i in c[1:]:
                v = v * X[:, i]
            out[:, j] = v
        return out


def candidates(random_state: int = 0) -> dict[str, BaseEstimator]:
    """The regressors compared by grouped cross-validation (name -> unfitted estimator).

    Sizes are kept small on purpose: the model is evaluated at every communication step of the
    FMU, single row, single thread. The MLP is wrapped in MultiOutputRegressor because skl2onnx
    1.20 reshapes a multi-output MLPRegressor to one column. Tree ensembles are listed for
    comparison only (:data:`FLOAT32_ONLY`).
    """
    return {
        "ridge_poly2": Pipeline([("scale", StandardScaler()), ("poly", Monomials(2)),
                                 ("ridge", Ridge(alpha=1.0))]),
        "ridge_poly3": Pipeline([("scale", StandardScaler()), ("poly", Monomials(3)),
                                 ("ridge", Ridge(alpha=1.0))]),
        "mlp": MultiOutputRegressor(Pipeline([
            ("scale", StandardScaler()),
            ("mlp", MLPRegressor(hidden_layer_sizes=(16, 16), activation="tanh", alpha=1e-4, learning_rate_init=3e-3,
                                 max_iter=400, tol=1e-6, n_iter_no_change=20, random_state=random_state))])),
        "gradient_boosting": MultiOutputRegressor(GradientBoostingRegressor(
            n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8, min_samples_leaf=20,
            random_state=random_state)),
    }


FLOAT32_ONLY = frozenset({"gradient_boosting"})
"""Candidates whose ONNX form cannot keep float64: ai.onnx.ml TreeEnsembleRegressor (v1-v3) always
outputs float32, ~1e-7 relative from scikit-learn, which breaks the 1e-9 parity contract. They are
cross-validated for comparison and never shipped."""


class RateCorrectionRegressor(RegressorMixin, BaseEstimator):
    """Multi-output regressor of the log rate factors (ln f1, ln f2) on physical features.

    Parameters
    ----------
    estimator : an unfitted scikit-learn regressor with two outputs (default: ``ridge_poly2``).
    feature_names : the features (ml_onnx.features names), in the column order of X.
    ramp_fraction : width of the domain guard's fade-out ramp as a fraction of each feature's
        training range [1], floored by :data:`RAMP_FLOOR`.

    Learned attributes: ``estimator_`` (the fitted regressor), ``domain_`` (training bounds and ramp
    widths), ``feature_names_in_``, ``n_features_in_``.
    """

    def __init__(self, estimator: BaseEstimator | None = None,
                 feature_names: tuple[str, ...] = DEFAULT_FEATURES, ramp_fraction: float = 0.1) -> None:
        self.estimator = estimator
        self.feature_names = feature_names
        self.ramp_fraction = ramp_fraction

    def _check_X(self, X: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(names):
            raise ParameterError("X", X.shape, f"must have {len(names)} columns: {list(names)}")
        if not np.all(np.isfinite(X)):
            raise ParameterError("X", "non-finite", "features must be finite")
        return X

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> RateCorrectionRegressor:
        """Fit on features X [N, n] (columns = ``feature_names``) and log-factors y [N, 2], with
        optional row weights (passed to the last step of a Pipeline estimator: the ridge families;
        ml_onnx.update weights the previous model's pseudo-rows with them)."""
        names = check_names(self.feature_names)
        if not (isinstance(self.ramp_fraction, (int, float)) and 0.0 < self.ramp_fraction <= 1.0):
            raise ParameterError("ramp_fraction", self.ramp_fraction, "must be within (0, 1]")
        X = self._check_X(X, names)
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (X.shape[0], N_OUTPUTS) or not np.all(np.isfinite(y)):
            raise ParameterError("y", y.shape, f"must be finite with shape ({X.shape[0]}, {N_OUTPUTS})")
        est = clone(self.estimator) if self.estimator is not None else candidates()["ridge_poly2"]
        if sample_weight is None:
            est.fit(X, y)
        else:
            w = np.asarray(sample_weight, dtype=np.float64)
            if w.shape != (X.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0.0):
                raise ParameterError("sample_weight", w.shape, f"must be ({X.shape[0]},), finite and >= 0")
            if not isinstance(est, Pipeline):
                raise ParameterError("sample_weight", type(est).__name__, "row weights need a Pipeline estimator")
            est.fit(X, y, **{f"{est.steps[-1][0]}__sample_weight": w})
        self.estimator_ = est
        lo, hi = X.min(axis=0), X.max(axis=0)
        ramp = [max(self.ramp_fraction * (h - l), RAMP_FLOOR[FEATURES[n].unit]) for n, l, h in zip(names, lo, hi, strict=True)]
        self.domain_ = Domain(names, tuple(float(v) for v in lo), tuple(float(v) for v in hi), tuple(ramp))
        self.feature_names_in_ = np.array(names, dtype=object)
        self.n_features_in_ = len(names)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Log-factors (ln f1, ln f2) [N, 2] for features X [N, n]; no domain guard (see runtime)."""
        check_is_fitted(self, "estimator_")
        X = self._check_X(X, tuple(self.feature_names_in_))
        return np.asarray(self.estimator_.predict(X), dtype=np.float64).reshape(-1, N_OUTPUTS)
