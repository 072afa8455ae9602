"""Train the rate correction on plant data, export it to ONNX and score it on held-out batches.

Pipeline (``twin train``):
  1. read the plant data set; batches with split == "train" are fitted, "holdout" only scored;
  2. per training batch, estimate ln f1(t), ln f2(t) through the ODE from the lab assays
     (ml_onnx.dataset.reconcile) and build feature rows -> log-factor targets;
  3. compare the candidate regressors (ml_onnx.model.candidates) by GroupKFold cross-validation
     grouped by batch (no batch in both a training and a validation fold); ship the best one whose
     ONNX form keeps float64;
  4. fit it on every training batch, export to ONNX (ml_onnx.export), reload with the runtime;
  5. score on the held-out batches against the simulator's hidden truth in the one open-loop replay
     (twin_core.offline.batches.open_loop: recorded charge, measured jacket temperature as the mean
     of the two readings bracketing each row interval), physics only vs hybrid.
The JSON report holds the cross-validation table, the parity of ONNX vs scikit-learn, and the
held-out table.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from ml_onnx.dataset import ReconcileConfig, reconcile, training_table
from ml_onnx.export import MODEL_VERSION, save, to_onnx
from ml_onnx.features import DEFAULT_FEATURES, check_names, feature_matrix
from ml_onnx.model import FLOAT32_ONLY, RateCorrectionRegressor, candidates
from ml_onnx.runtime import OnnxCorrection
from twin_core.errors import ParameterError
from twin_core.hybrid import CorrectionModel
from twin_core.offline.batches import (
    DEFAULT_DATA,
    JACKET_INPUT_RULE,
    Batch,
    open_loop,
    read_batches,
    score_open_loop,
    sha256_file,
)
from twin_core.params import ModelParams
from twin_core.validate import spec, validated

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("dist/correction.onnx")


@validated("train")
class TrainConfig:
    """What to train: features, candidate names (None: all), CV folds, row stride, reconciliation."""

    feature_names: tuple[str, ...] = spec(DEFAULT_FEATURES, kind=tuple)
    candidate_names: tuple[str, ...] | None = spec(None, kind=tuple, optional=True)
    n_splits: int = spec(5, kind="int", ge=2)
    stride: int = spec(5, kind="int", ge=1)
    max_train_batches: int | None = spec(None, kind="int", ge=1, optional=True)
    reconcile: ReconcileConfig = spec(kind=ReconcileConfig, default_factory=ReconcileConfig)
    random_state: int = spec(0, kind="int", ge=0)

    def __post_init__(self) -> None:
        try:
            check_names(self.feature_names)
        except ParameterError as exc:
            raise ParameterError("train.feature_names", exc.value, exc.reason) from exc
        if self.candidate_names is not None:
            unknown = set(self.candidate_names) - set(candidates())
            if unknown or not self.candidate_names:
                raise ParameterError("train.candidate_names", self.candidate_names,
                                     f"expected some of {sorted(candidates())}")


# -- held-out scoring -------------------------------------------------------------------------------
def score_batch(batch: Batch, correction: CorrectionModel, params: ModelParams | None = None) -> dict[str, object]:
    """Physics-only vs hybrid on one batch in the one open-loop replay
    (:func:`twin_core.offline.batches.score_open_loop`), against the hidden truth (scoring only)."""
    out: dict[str, object] = {"batch_id": batch.batch_id, "recipe_id": batch.recipe_id}
    for name, corr in (("physics", None), ("hybrid", correction)):
        s = score_open_loop(batch, params, corr)
        out[f"{name}_rmse_c_B_mol_per_m3"] = s.rmse_c_B_mol_per_m3
        out[f"{name}_rmse_c_B_percent"] = s.rmse_c_B_percent
        out[f"{name}_rmse_c_C_mol_per_m3"] = s.rmse_c_C_mol_per_m3
        out[f"{name}_final_yield_error"] = s.final_yield_error
        if corr is not None:
            out["in_domain_fraction"] = s.in_domain_fraction
    out["final_yield_true"] = s.final_yield_true
    out["c_B_improvement"] = 1.0 - out["hybrid_rmse_c_B_mol_per_m3"] / out["physics_rmse_c_B_mol_per_m3"]  # type: ignore[operator]
    return out


def summarize_holdout(rows: list[dict[str, object]]) -> dict[str, object]:
    """Means over held-out batches, and over those that left the training domain."""
    def mean(key: str, sel: Sequence[dict[str, object]]) -> float:
        return float(np.mean([float(r[key]) for r in sel])) if sel else math.nan  # type: ignore[arg-type]

    def rms(key: str, sel: Sequence[dict[str, object]]) -> float:
        return float(np.sqrt(np.mean([float(r[key]) ** 2 for r in sel]))) if sel else math.nan  # type: ignore[arg-type]

    out: dict[str, object] = {}
    for label, sel in (("all", rows), ("outside_domain", [r for r in rows if float(r["in_domain_fraction"]) < 1.0])):  # type: ignore[arg-type]
        s = {"batches": len(sel)}
        for m in ("physics", "hybrid"):
            s[f"{m}_rmse_c_B_mol_per_m3"] = mean(f"{m}_rmse_c_B_mol_per_m3", sel)
            s[f"{m}_rmse_c_B_percent"] = mean(f"{m}_rmse_c_B_percent", sel)
            s[f"{m}_rmse_c_C_mol_per_m3"] = mean(f"{m}_rmse_c_C_mol_per_m3", sel)
            s[f"{m}_final_yield_rms_error"] = rms(f"{m}_final_yield_error", sel)
        if sel:
            s["c_B_improvement"] = 1.0 - s["hybrid_rmse_c_B_mol_per_m3"] / s["physics_rmse_c_B_mol_per_m3"]
            s["c_C_improvement"] = 1.0 - s["hybrid_rmse_c_C_mol_per_m3"] / s["physics_rmse_c_C_mol_per_m3"]
            s["worst_batch_c_B_improvement"] = min(float(r["c_B_improvement"]) for r in sel)  # type: ignore[arg-type]
        out[label] = s
    return out


# -- model selection ------------------------------------------------------------------------------------
def grouped_folds(groups: np.ndarray, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold splits (train rows, validation rows): every batch id in exactly one validation fold."""
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ParameterError("n_splits", n_splits, f"more folds than batches ({n_groups})")
    return list(GroupKFold(n_splits=n_splits).split(np.zeros(len(groups)), groups=groups))


def cross_validate(X: np.ndarray, y: np.ndarray, groups: np.ndarray, names: Iterable[str], cfg: TrainConfig,
                   progress: bool = True) -> dict[str, dict[str, object]]:
    """Grouped-CV RMSE of (ln f1, ln f2) per candidate [1], with the fit time per fold [s]."""
    folds = grouped_folds(groups, cfg.n_splits)
    cands = candidates(cfg.random_state)
    table: dict[str, dict[str, object]] = {}
    names = list(names)
    bar = tqdm(total=len(names) * len(folds), desc="cross-validation", unit="fit", disable=not progress, leave=False)
    for name in names:
        per_fold = []
        fit_s = []
        for tr, va in folds:
            t0 = time.perf_counter()
            est = clone(cands[name]).fit(X[tr], y[tr])
            fit_s.append(time.perf_counter() - t0)
            pred = np.asarray(est.predict(X[va])).reshape(-1, 2)
            per_fold.append(np.sqrt(np.mean((pred - y[va]) ** 2, axis=0)))
            bar.update(1)
        pf = np.array(per_fold)
        table[name] = {"rmse_ln_f1": float(pf[:, 0].mean()), "rmse_ln_f2": float(pf[:, 1].mean()),
                       "rmse_mean": float(pf.mean()), "rmse_mean_sd_over_folds": float(pf.mean(axis=1).std()),
                       "fit_time_s_per_fold": float(np.mean(fit_s)), "exportable_float64": name not in FLOAT32_ONLY}
    bar.close()
    return table


def choose(table: dict[str, dict[str, object]], n_splits: int) -> str:
    """One-standard-error rule: among the float64-exportable candidates, the simplest (first in
    :func:`~ml_onnx.model.candidates` order, which goes from simple to complex) whose mean grouped-CV
    RMSE is within one standard error (SD over folds / sqrt(folds)) of the best one."""
    ok = {k: v for k, v in table.items() if v["exportable_float64"]}
    if not ok:
        raise ParameterError("candidates", sorted(table), "none is exportable in float64")
    best = min(ok, key=lambda k: float(ok[k]["rmse_mean"]))  # type: ignore[arg-type]
    limit = float(ok[best]["rmse_mean"]) + float(ok[best]["rmse_mean_sd_over_folds"]) / math.sqrt(n_splits)  # type: ignore[arg-type]
    order = [k for k in candidates() if k in ok]
    return next(k for k in order if float(ok[k]["rmse_mean"]) <= limit)  # type: ignore[arg-type]


# -- the whole job ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: RateCorrectionRegressor
    correction: OnnxCorrection
    report: dict[str, object]
    train_batches: list[Batch]
    holdout_batches: list[Batch]
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]


def train(data: str | Path = DEFAULT_DATA, out: str | Path = DEFAULT_OUT, cfg: TrainConfig | None = None,
          report_path: str | Path | None = None, progress: bool = True, score: bool = True) -> TrainResult:
    """Run the pipeline of the module docstring; write the ONNX model and the JSON report."""
    cfg = cfg or TrainConfig()
    t_start = time.perf_counter()
    data, out = Path(data), Path(out)
    report_path = Path(report_path) if report_path is not None else out.with_name(out.stem + "_report.json")
    data_sha = sha256_file(data)
    batches = list(read_batches(data).values())
    # The fitting path sees what a plant would have: the hidden truth is kept for scoring only.
    train_b = [b.without_truth() for b in batches if b.split == "train"]
    hold_b = [b for b in batches if b.split == "holdout"]
    if cfg.max_train_batches is not None:
        train_b = train_b[:cfg.max_train_batches]
    if not train_b:
        raise ParameterError(str(data), 0, "no training batch (split == 'train')")
    log.info("%d training batches, %d held-out batches", len(train_b), len(hold_b))

    stages = tqdm(total=5, desc="twin train", unit="stage", disable=not progress)
    stages.set_postfix_str(f"reconciling {len(train_b)} batches through the ODE")
    t0 = time.perf_counter()
    rec = reconcile(train_b, config=cfg.reconcile)
    t_reconcile = time.perf_counter() - t0
    stages.update(1)
    stages.set_postfix_str("grouped cross-validation")
    X, y, groups = training_table(rec, cfg.feature_names, cfg.stride)
    folds = grouped_folds(groups, cfg.n_splits)
    names = cfg.candidate_names or tuple(candidates())
    t0 = time.perf_counter()
    cv = cross_validate(X, y, groups, names, cfg, progress)
    t_cv = time.perf_counter() - t0
    best = choose(cv, cfg.n_splits)
    log.info("chosen by grouped CV: %s (%s)", best, cv[best])
    stages.update(1)
    stages.set_postfix_str(f"fitting {best}")

    t0 = time.perf_counter()
    model = RateCorrectionRegressor(candidates(cfg.random_state)[best], cfg.feature_names).fit(X, y)
    t_fit = time.perf_counter() - t0
    stages.update(1)
    stages.set_postfix_str("ONNX export")
    t0 = time.perf_counter()
    onx = to_onnx(model, data_sha, MODEL_VERSION,
                  description=f"rate correction ({best}) fitted on {len(train_b)} batches of {data.name}",
                  extra_metadata={"twin.estimator": best,
                                  "twin.cv_rmse_ln_f": json.dumps([cv[best]["rmse_ln_f1"], cv[best]["rmse_ln_f2"]]),
                                  "twin.training_batches": str(len(train_b))})
    model_sha = save(onx, out)
    t_export = time.perf_counter() - t0
    corr = OnnxCorrection(out)
    stages.update(1)
    stages.set_postfix_str("held-out scoring")

    report: dict[str, object] = {
        "data": {"path": str(data), "sha256": data_sha, "training_batches": len(train_b),
                 "holdout_batches": len(hold_b), "training_rows": int(len(y))},
        "model": {"path": str(out), "sha256": model_sha, "estimator": best, "version": MODEL_VERSION,
                  "features": list(cfg.feature_names), "domain": {
                      "lower": list(model.domain_.lower), "upper": list(model.domain_.upper),
                      "ramp": list(model.domain_.ramp)}},
        "reconciliation": {"median_lab_rms": float(np.median([r.lab_rms for r in rec])),
                           "knot_s": cfg.reconcile.knot_s},
        "cross_validation": {"scheme": f"GroupKFold(n_splits={cfg.n_splits}) by batch_id",
                             "target": "RMSE of (ln f1, ln f2) per validation fold, mean over folds",
                             "selection": "one-standard-error rule: simplest float64-exportable candidate "
                                          "within one SE of the lowest mean RMSE",
                             "candidates": cv, "chosen": best},
    }
    t_score = 0.0
    if score and hold_b:
        # Parity of the shipped ONNX model with scikit-learn on held-out feature rows (the physics
        # twin's states on the held-out batches, unclipped).
        Xh = np.vstack([feature_matrix(cfg.feature_names, b.t_s, open_loop(b).x) for b in hold_b])
        a, o = model.predict(Xh), corr.predict_log_factors(Xh)
        report["parity"] = {"rows": int(len(Xh)),
                            "max_abs_diff": float(np.max(np.abs(a - o))),
                            "max_rel_diff": float(np.max(np.abs(a - o) / np.maximum(np.abs(a), 1e-300)))}
        t0 = time.perf_counter()
        rows = [score_batch(b, corr)
                for b in tqdm(hold_b, desc="held-out scoring", unit="batch", disable=not progress, leave=False)
                if b.truth is not None]
        t_score = time.perf_counter() - t0
        report["holdout"] = {"driven_by": f"twin_core.offline.batches.open_loop: {JACKET_INPUT_RULE}; "
                                          "scored against the hidden true_* states",
                             "summary": summarize_holdout(rows), "batches": rows}
    stages.update(1)
    stages.close()
    report["timing_s"] = {"reconcile": t_reconcile, "cross_validation": t_cv, "final_fit": t_fit,
                          "export": t_export, "holdout_scoring": t_score,
                          "total": time.perf_counter() - t_start}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    log.info("wrote %s and %s", out, report_path)
    return TrainResult(model, corr, report, train_b, hold_b, X, y, groups, folds)
