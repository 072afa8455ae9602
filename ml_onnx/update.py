"""Batch-to-batch learning: refit the correction on a plant's recent batches with the previous
model as the prior, version it, and release it only through a gate (``twin train --update``).

Method (docs/ml.md, "Batch-to-batch learning"):
  1. the plant's last ``window`` completed batches (measured columns only, never the truth) are
     split: the last ``gate_batches`` are the gate, the ones before are fitted;
  2. stage 1 of the training (ml_onnx.dataset.reconcile: log-factors through the ODE from the lab
     assays, temperature imposed) on the fitted batches gives feature rows and targets;
  3. the previous model is the prior, as pseudo-rows: at every fitted row its own log-factors, and
     on ``prior_box_rows`` points spread over its training domain its log-factors there, weighted
     so that the prior counts as ``prior_batches`` batches (function-space ridge toward the old
     model: with few new batches the refit stays near it, with many the plant's data win; where
     the plant never went, the old model is kept). The estimator is the previous one's
     (``twin.estimator``, a ridge family) and the domain is the union of the old one and the rows';
  4. gate: on the gate batches (not fitted) the lab residuals of the imposed-temperature species
     (ml_onnx.trust.species_imposed_T, lambda = 1) are computed for the current and the candidate
     model; the candidate is released when its RMS of standardised residuals is below
     (1 - margin) times the current one's. The comparison is written into the candidate's ONNX
     metadata (``twin.update``: versions, parent hash, fitted and gate batch ids, both scores, margin,
     decision) and into the JSON report, released or not;
  5. a released model is written to ``out`` (a file replaced atomically, between batches: the
     runtime and the FMU load a correction when a batch starts, nothing is swapped mid-batch); a
     refused one to ``<out stem>.refused.onnx`` for inspection.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_onnx.dataset import ReconcileConfig, reconcile, training_table
from ml_onnx.export import MODEL_VERSION, save, to_onnx
from ml_onnx.model import RateCorrectionRegressor, candidates
from ml_onnx.runtime import OnnxCorrection
from ml_onnx.trust import lab_residuals, species_imposed_T
from twin_core.errors import ParameterError
from twin_core.offline.batches import Batch, read_batches, sha256_file
from twin_core.validate import spec, validated

log = logging.getLogger(__name__)


@validated("update")
class UpdateConfig:
    """Settings of one batch-to-batch update (module docstring)."""

    window: int = spec(20, kind="int", ge=3)              # recent batches taken (fitted + gate)
    gate_batches: int = spec(5, kind="int", ge=1)         # the last ones of the window: the gate, not fitted
    margin: float = spec(0.05, ge=0.0, lt=1.0)            # release when candidate <= (1 - margin) * current
    prior_batches: float = spec(3.0, ge=0.0)              # the previous model's weight, in batches
    prior_box_rows: int = spec(500, kind="int", ge=0)     # prior pseudo-rows spread over its domain
    stride: int = spec(5, kind="int", ge=1)               # every stride-th 1-min row of a fitted batch
    seed: int = spec(0, kind="int", ge=0)

    def __post_init__(self) -> None:
        if self.gate_batches >= self.window:
            raise ParameterError("update.gate_batches", self.gate_batches, "must be < window")


def gate_score(correction: OnnxCorrection | None, batches: list[Batch]) -> float:
    """RMS of the standardised lab residuals [1] of the imposed-temperature species over ``batches``
    (the gate's metric: measured data only)."""
    r = np.concatenate([lab_residuals(b, species_imposed_T(b, correction, (1.0, 1.0))) for b in batches])
    if not len(r):
        raise ParameterError("gate batches", len(batches), "carry no lab result")
    return float(np.sqrt(np.mean(r * r)))


@dataclass(frozen=True)
class UpdateResult:
    released: bool
    candidate: OnnxCorrection
    path: Path                    # where the candidate was written (out if released)
    report: dict


def fit_on_batches(batches: list[Batch], prior: OnnxCorrection | None, cfg: UpdateConfig,
                   estimator: str = "ridge_poly2") -> RateCorrectionRegressor:
    """The refit of step 2-3 on ``batches`` (measured columns only) with ``prior`` (None: plain fit)."""
    train_b = [b.without_truth() for b in batches]
    rec = reconcile(train_b, config=ReconcileConfig())
    X, y, _ = training_table(rec, prior.feature_names if prior is not None else
                             ("T_K", "c_A_mol_per_m3", "c_B_mol_per_m3", "c_C_mol_per_m3"), cfg.stride)
    w = np.ones(len(X))
    model = RateCorrectionRegressor(candidates(cfg.seed)[estimator],
                                    tuple(prior.feature_names) if prior is not None else
                                    ("T_K", "c_A_mol_per_m3", "c_B_mol_per_m3", "c_C_mol_per_m3"))
    if prior is None or cfg.prior_batches == 0.0:
        return model.fit(X, y)
    d = prior.domain
    lo, hi = np.asarray(d.lower), np.asarray(d.upper)
    rng = np.random.default_rng(cfg.seed)
    box = lo + (hi - lo) * rng.random((cfg.prior_box_rows, len(lo)))
    Xp = np.vstack([np.clip(X, lo, hi), box])
    yp = prior.predict_log_factors(Xp)
    per_batch = len(X) / max(len(train_b), 1)
    wp = np.full(len(Xp), cfg.prior_batches * per_batch / len(Xp))
    model.fit(np.vstack([X, Xp]), np.vstack([y, yp]), sample_weight=np.concatenate([w, wp]))
    # The domain: the union of the previous model's and the plant's rows (not the box's points,
    # which lie inside the previous domain anyway).
    from ml_onnx.contract import Domain

    nd = model.domain_
    model.domain_ = Domain(nd.feature_names, tuple(min(a, b) for a, b in zip(d.lower, nd.lower, strict=True)),
                           tuple(max(a, b) for a, b in zip(d.upper, nd.upper, strict=True)),
                           tuple(max(a, b) for a, b in zip(d.ramp, nd.ramp, strict=True)))
    return model


def update(current_path: str | Path, data: str | Path, out: str | Path | None = None,
           cfg: UpdateConfig | None = None, report_path: str | Path | None = None) -> UpdateResult:
    """Steps 1-5 of the module docstring: refit on the last batches of the data set ``data`` with
    the model in ``current_path`` as prior; write the released model to ``out`` (default:
    current_path, replaced only when released)."""
    data = Path(data)
    batches = list(read_batches(data).values())
    return update_from_batches(current_path, batches, sha256_file(data), data.name, out, cfg, report_path)


def update_from_batches(current_path: str | Path, batches: list[Batch], data_sha256: str, data_name: str,
                        out: str | Path | None = None, cfg: UpdateConfig | None = None,
                        report_path: str | Path | None = None) -> UpdateResult:
    """:func:`update` on batches already read (the plant's completed batches, in order; aborted ones
    are left out and listed in the gate record as ``skipped_aborted``)."""
    cfg = cfg or UpdateConfig()
    current_path = Path(current_path)
    out = Path(out) if out is not None else current_path
    current = OnnxCorrection(current_path)
    # An aborted batch (interlock trip, runaway) says nothing about the plant's normal rates.
    skipped = [b.batch_id for b in batches if b.aborted]
    batches = [b for b in batches if not b.aborted]
    if len(batches) < cfg.window:
        raise ParameterError(data_name, len(batches), f"needs at least window = {cfg.window} completed batches "
                                                      f"that were not aborted")
    recent = [b.without_truth() for b in batches[-cfg.window:]]
    fit_b, gate_b = recent[:-cfg.gate_batches], recent[-cfg.gate_batches:]
    estimator = current.metadata.get("twin.estimator", "ridge_poly2")
    if estimator not in ("ridge_poly2", "ridge_poly3"):
        estimator = "ridge_poly2"
    model = fit_on_batches(fit_b, current, cfg, estimator)
    parent_sha = sha256_file(current_path)
    version = int(current.metadata.get("twin.update_version", "0")) + 1
    # Score the candidate through the same runtime as the current model (its ONNX form).
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        save(to_onnx(model, data_sha256, MODEL_VERSION), probe)
        s_cur, s_new = gate_score(current, gate_b), gate_score(OnnxCorrection(probe), gate_b)
    released = s_new <= (1.0 - cfg.margin) * s_cur
    gate = {"metric": "RMS of standardised lab residuals (c_B, c_C) of the imposed-T species, lambda = 1",
            "current": s_cur, "candidate": s_new, "margin": cfg.margin,
            "rule": "release when candidate <= (1 - margin) * current", "released": released,
            "gate_batches": [b.batch_id for b in gate_b], "fitted_batches": [b.batch_id for b in fit_b],
            "prior_batches": cfg.prior_batches, "skipped_aborted": skipped, "update_version": version, "parent_sha256": parent_sha,
            "parent_update_version": version - 1, "data": data_name}
    onx = to_onnx(model, data_sha256, MODEL_VERSION,
                  description=f"rate correction ({estimator}) updated batch to batch (update {version}) on "
                              f"{len(fit_b)} batches of {data_name}, prior {current_path.name}",
                  extra_metadata={"twin.estimator": estimator, "twin.update_version": str(version),
                                  "twin.parent_sha256": parent_sha, "twin.update": json.dumps(gate, sort_keys=True),
                                  "twin.training_batches": str(len(fit_b))})
    target = out if released else out.with_name(out.stem + ".refused.onnx")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written next to the target and renamed: a reader sees the old file or the new one, never half.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    save(onx, tmp_name)
    os.replace(tmp_name, target)
    report = {"gate": gate, "written": str(target), "released": released}
    rp = Path(report_path) if report_path is not None else target.with_name(target.stem + "_update.json")
    rp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("update %d: gate %.3f -> %.3f (%s); wrote %s", version, s_cur, s_new,
             "released" if released else "refused", target)
    return UpdateResult(released, OnnxCorrection(target), target, report)
