"""The soft sensor's history: one record per filter step, kept for ``history_window_s``, so that a
late lab assay can be applied at its sample time.

A late assay is inserted in the record of its sample time and every record from there on is
re-processed (:meth:`History.rerun`); the result equals what the filter would have produced had the
assay been known at its sample time. Older records are pruned into a base posterior. The same
records give the Rauch-Tung-Striebel smoothed estimates (:meth:`History.smoothed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from twin_core.estimation.ekf import Ekf
from twin_core.estimation.state import N_STATES, LabResult

Posterior = tuple[np.ndarray, np.ndarray, float]
"""(x, P, h): state, covariance and the integrator's proposed step size [s]."""
Estimates = list[tuple[float, tuple[float, ...], tuple[float, ...]]]
"""(t [s], x, std) per node."""


@dataclass(slots=True)
class Record:
    """One filter step: what went in (kept to re-process it) and the posterior that came out."""

    t_prev: float                 # start of the step's interval [s] (the previous posterior's time)
    t: float                      # the step's time [s]
    u: float                      # jacket temperature held over the interval [K]
    z: float                      # fitted temperature reading at t [K]
    R: float                      # its variance [K^2]
    use_T: bool                   # False while a sensor fault keeps the reading out of the filter
    labs: list[LabResult] = field(default_factory=list)  # assays sampled in (t_prev, t], by sample time
    x: np.ndarray = field(default_factory=lambda: np.empty(0))
    P: np.ndarray = field(default_factory=lambda: np.empty(0))
    h: float = 0.0
    in_domain: bool = True

    def to_plain(self) -> dict:
        return {"t_prev": self.t_prev, "t": self.t, "u": self.u, "z": self.z, "R": self.R, "use_T": self.use_T,
                "labs": [lab.to_plain() for lab in self.labs], "x": self.x.tolist(), "P": self.P.ravel().tolist(),
                "h": self.h, "in_domain": self.in_domain}

    @classmethod
    def from_plain(cls, d: dict) -> Record:
        return cls(float(d["t_prev"]), float(d["t"]), float(d["u"]), float(d["z"]), float(d["R"]), bool(d["use_T"]),
                   [LabResult.from_plain(lab) for lab in d["labs"]], np.array(d["x"], dtype=float),
                   np.array(d["P"], dtype=float).reshape(N_STATES, N_STATES), float(d["h"]), bool(d["in_domain"]))


def run_record(ekf: Ekf, rec: Record, x: np.ndarray, P: np.ndarray, h: float,
               on_fresh_lab: Callable[[float, tuple[float, float]], None] | None = None,
               fresh: tuple[LabResult, ...] = ()) -> tuple[np.ndarray, np.ndarray, float, tuple[float, float]]:
    """One filter step from the posterior (x, P, h) at rec.t_prev: labs at their sample times,
    propagation to rec.t, then the temperature update. Stores the posterior in ``rec``; returns it
    with (temperature innovation [K], its variance S [K^2]; 0 when the reading was not used).

    ``fresh`` are the labs processed for the first time: their NIS and whitened innovation go to
    ``on_fresh_lab``.
    """
    t = rec.t_prev
    ok = True
    for lab in rec.labs:
        if lab.sample_time_s > t:
            x, P, h, ok = ekf.propagate(t, lab.sample_time_s, x, P, h, rec.u)
            t = lab.sample_time_s
        x, P, nis = ekf.lab_update(x, P, lab)
        if on_fresh_lab is not None and any(lab is f for f in fresh):
            on_fresh_lab(nis, ekf.last_lab_white)
    if rec.t > t:
        x, P, h, ok = ekf.propagate(t, rec.t, x, P, h, rec.u)
    info = (0.0, 0.0)
    if rec.use_T:
        x, P, info = ekf.T_update(x, P, rec.z, rec.R, rec.u)
    else:
        info = (rec.z - ekf.predicted_reading(x, rec.u), 0.0)
    rec.x, rec.P, rec.h, rec.in_domain = x, P, h, ok
    return x, P, h, info


def _std(P: np.ndarray) -> tuple[float, ...]:
    return tuple(np.sqrt(np.maximum(np.diagonal(P), 0.0)).tolist())


class History:
    """Records of the filter steps in the window, the posterior before the first of them (the
    base), the labs waiting for the next step and the sample times of every lab used."""

    def __init__(self, window_s: float, t0_s: float, x0: np.ndarray, P0: np.ndarray) -> None:
        self.window_s = window_s
        self.base_t, self.base_x, self.base_P, self.base_h, self.base_in = t0_s, x0.copy(), P0.copy(), 0.0, True
        self.records: list[Record] = []
        self.pending: list[LabResult] = []   # labs sampled in the open interval
        self.lab_times: list[float] = []     # sample times of every lab accepted (duplicates are refused)

    def index(self, ts: float) -> int:
        """Index of the record whose interval (t_prev, t] holds ts (the first one also takes its t_prev)."""
        lo, hi = 0, len(self.records)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.records[mid].t < ts:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def prior(self, k: int) -> Posterior:
        """The posterior before record k."""
        if k == 0:
            return self.base_x, self.base_P, self.base_h
        r = self.records[k - 1]
        return r.x, r.P, r.h

    def rerun(self, k: int, ekf: Ekf, on_fresh_lab: Callable[[float, tuple[float, float]], None],
              fresh: tuple[LabResult, ...]) -> Posterior:
        """Re-run records k.. from the posterior before record k; returns the last posterior."""
        x, P, h = self.prior(k)
        for rec in self.records[k:]:
            x, P, h, _ = run_record(ekf, rec, x, P, h, on_fresh_lab, fresh)
        return x, P, h

    def prune(self, t: float) -> None:
        """Drop the records older than the window before t [s] (the last of them becomes the base)."""
        cut = t - self.window_s
        n = 0
        while n < len(self.records) - 1 and self.records[n].t <= cut:
            n += 1
        if n:
            r = self.records[n - 1]
            self.base_t, self.base_x, self.base_P, self.base_h, self.base_in = r.t, r.x, r.P, r.h, r.in_domain
            del self.records[:n]

    def filtered(self) -> Estimates:
        """The filtered estimates at the base and every record."""
        out = [(self.base_t, tuple(self.base_x.tolist()), _std(self.base_P))]
        for r in self.records:
            out.append((r.t, tuple(r.x.tolist()), _std(r.P)))
        return out

    def smoothed(self, ekf: Ekf) -> Estimates:
        """Rauch-Tung-Striebel smoothed estimates at every record (and lab sample time).

        The filter is re-run over the records (nothing stored changes) to collect the prior and the
        transition of each node; the backward pass then spreads every measurement, lab assays
        included, to the times before it.
        """
        # Nodes: (t, prior x, prior P, transition from the previous node, posterior x, posterior P).
        nodes: list[tuple] = [(self.base_t, None, None, None, self.base_x, self.base_P)]
        x, P, h = self.base_x, self.base_P, self.base_h
        eye = ekf.eye
        with ekf.preserved():
            for rec in self.records:
                t = rec.t_prev
                for lab in rec.labs:
                    xp, Pp, phi = x, P, eye
                    if lab.sample_time_s > t:
                        xp, Pp, h, _ = ekf.propagate(t, lab.sample_time_s, x, P, h, rec.u)
                        phi = ekf.last_phi
                        t = lab.sample_time_s
                    x, P, _ = ekf.lab_update(xp, Pp, lab)
                    nodes.append((t, xp, Pp, phi, x, P))
                xp, Pp, phi = x, P, eye
                if rec.t > t:
                    xp, Pp, h, _ = ekf.propagate(t, rec.t, x, P, h, rec.u)
                    phi = ekf.last_phi
                x, P = xp, Pp
                if rec.use_T:
                    x, P, _ = ekf.T_update(xp, Pp, rec.z, rec.R, rec.u)
                nodes.append((rec.t, xp, Pp, phi, x, P))
        n = len(nodes)
        xs, Ps = nodes[-1][4], nodes[-1][5]
        out = [(nodes[-1][0], xs, Ps)]
        for k in range(n - 2, -1, -1):
            _, xp1, Pp1, phi1, _, _ = nodes[k + 1]
            _, _, _, _, xf, Pf = nodes[k]
            C = Pf @ phi1.T @ np.linalg.pinv(Pp1)
            xs = np.minimum(np.maximum(xf + C @ (xs - xp1), ekf.lo), ekf.hi)
            Ps = Pf + C @ (Ps - Pp1) @ C.T
            out.append((nodes[k][0], xs, Ps))
        out.reverse()
        return [(t, tuple(xx.tolist()), _std(PP)) for t, xx, PP in out]

    def get_state(self) -> dict:
        return {"base": {"t": self.base_t, "x": self.base_x.tolist(), "P": self.base_P.ravel().tolist(),
                         "h": self.base_h, "in_domain": self.base_in},
                "records": [r.to_plain() for r in self.records],
                "pending": [lab.to_plain() for lab in self.pending],
                "lab_times": list(self.lab_times)}

    def set_state(self, s: dict) -> None:
        b = s["base"]
        self.base_t, self.base_x = float(b["t"]), np.array(b["x"], dtype=float)
        self.base_P = np.array(b["P"], dtype=float).reshape(N_STATES, N_STATES)
        self.base_h, self.base_in = float(b["h"]), bool(b["in_domain"])
        self.records = [Record.from_plain(r) for r in s["records"]]
        self.pending = [LabResult.from_plain(lab) for lab in s["pending"]]
        self.lab_times = [float(v) for v in s["lab_times"]]



