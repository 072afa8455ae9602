"""Pooling of the scans between two filter steps.

The filter steps every ``filter_interval_s`` (10 s by default), not every scan. Between steps the
reactor-temperature readings are reduced to a weighted straight-line fit (its value at the step
time and that value's variance) and the jacket temperature to its time-average (trapezoid). At a
0.1 s PLC scan this keeps the cost per scan at a few microseconds and stops the filter from
treating 600 correlated readings per minute as independent; at the 60 s rows of the plant data
every row is a step.

A reading that jumps from the previous one by more than the process can move is a spike: it is
Huber-weighted against that jump. The weight depends on the readings only (not on the estimate), so
a re-processed step sees exactly the same data.
"""

from __future__ import annotations

import math

from twin_core.estimation.config import SoftSensorConfig


class ScanPool:
    """Accumulators of the open interval (times relative to its start) and the last readings."""

    def __init__(self, cfg: SoftSensorConfig, t0_s: float) -> None:
        self._var = cfg.T_noise_std_K ** 2
        self._floor = cfg.T_floor_std_K ** 2
        self._jump_K = cfg.scan_jump_K
        self._rate_K_per_s = cfg.T_rate_max_K_per_s
        self.clear()
        self.y_prev = math.nan       # last reactor-temperature reading [K] and its time [s] (spike test)
        self.y_prev_t = t0_s
        self.Tj_last = math.nan      # last jacket reading [K] and its time [s] (left end of the next trapezoid)
        self.Tj_last_t = t0_s

    def clear(self) -> None:
        """Start a new interval."""
        # Weighted straight-line fit of the readings: sums of w, w tau, w tau^2, w y, w tau y.
        self.sw = self.swt = self.swtt = self.swy = self.swty = 0.0
        self.y_ref = math.nan        # first reading of the interval: the fit is of y - y_ref
        self.n_acc = 0
        self.Tj_int = 0.0            # integral of T_j over the interval [K s]

    def add(self, t: float, y: float, uj: float, t_filter: float) -> None:
        """One scan at t [s]: reactor reading y [K], jacket reading uj [K]; the interval began at t_filter."""
        # Jacket: trapezoidal integral over the open interval (held before the first reading).
        if self.Tj_last != self.Tj_last:
            self.Tj_int += uj * (t - self.Tj_last_t)
        else:
            self.Tj_int += 0.5 * (uj + self.Tj_last) * (t - self.Tj_last_t)
        self.Tj_last, self.Tj_last_t = uj, t
        w = 1.0
        if self.y_prev == self.y_prev:
            jump = abs(y - self.y_prev)
            limit = self._jump_K + self._rate_K_per_s * (t - self.y_prev_t)
            if jump > limit:
                w = limit / jump
        self.y_prev, self.y_prev_t = y, t
        if self.n_acc == 0:
            self.y_ref = y
        tau = t - t_filter
        yr = y - self.y_ref
        self.sw += w
        self.swt += w * tau
        self.swtt += w * tau * tau
        self.swy += w * yr
        self.swty += w * tau * yr
        self.n_acc += 1

    def fit(self, tau_k: float) -> tuple[float, float]:
        """Value of the fitted line at tau_k [s] after the interval's start and its variance [K, K^2]."""
        var = self._var
        sw = self.sw
        if self.n_acc >= 2:
            tbar = self.swt / sw
            stt = self.swtt - sw * tbar * tbar
            if stt > 1e-12 * max(1.0, tau_k * tau_k) * sw:
                ybar = self.swy / sw
                slope = (self.swty - sw * tbar * ybar) / stt
                d = tau_k - tbar
                return self.y_ref + ybar + slope * d, var * (1.0 / sw + d * d / stt) + self._floor
        return self.y_ref + self.swy / sw, var / sw + self._floor

    def get_state(self) -> dict:
        return {"sw": self.sw, "swt": self.swt, "swtt": self.swtt, "swy": self.swy, "swty": self.swty,
                "y_ref": self.y_ref, "n_acc": self.n_acc, "Tj_int": self.Tj_int, "Tj_last": self.Tj_last,
                "Tj_last_t": self.Tj_last_t, "y_prev": self.y_prev, "y_prev_t": self.y_prev_t}

    def set_state(self, s: dict) -> None:
        self.sw, self.swt, self.swtt = float(s["sw"]), float(s["swt"]), float(s["swtt"])
        self.swy, self.swty, self.y_ref = float(s["swy"]), float(s["swty"]), float(s["y_ref"])
        self.n_acc = int(s["n_acc"])
        self.Tj_int, self.Tj_last, self.Tj_last_t = float(s["Tj_int"]), float(s["Tj_last"]), float(s["Tj_last_t"])
        self.y_prev, self.y_prev_t = float(s["y_prev"]), float(s["y_prev_t"])
