"""Lab assays: a sample drawn from the reactor comes back as c_B and c_C some time later.

A sample drawn at scan n (plant time) is analysed with a relative error N(0, rsd) on each result
(clipped to +-3 rsd, results never negative) and its result becomes available at scan
n + round(delay / scan), the delay drawn uniformly in [delay_min, delay_max] and floored to the
scan grid (so a result never arrives outside that window). Results come back in order of arrival.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plant_sim.config import Lab
from plant_sim.sensors import RandomStream


@dataclass(frozen=True)
class LabResult:
    """One assay: results [mol/m3], the batch time the sample was drawn [s], when it arrived [s]."""

    c_B_mol_per_m3: float
    c_C_mol_per_m3: float
    sample_batch_time_s: float
    sample_plant_time_s: float
    arrival_plant_time_s: float
    true_c_B_mol_per_m3: float
    true_c_C_mol_per_m3: float


class LabAssay:
    """The lab: takes samples, returns results after a delay (one instance per plant)."""

    def __init__(self, cfg: Lab, scan_s: float, random: RandomStream, exact: bool = False) -> None:
        self.cfg = cfg
        self.scan_s = float(scan_s)
        self.random = random
        self.exact = exact
        self._pending: list[tuple[int, int, LabResult]] = []  # (arrival scan, draw order, result)
        self._drawn = 0

    def _error(self) -> float:
        if self.exact:
            return 1.0
        z = max(-3.0, min(3.0, self.random.normal()))
        return max(0.0, 1.0 + self.cfg.rsd * z)

    def draw(self, scan: int, batch_time_s: float, c_B: float, c_C: float) -> int:
        """Draw a sample at scan ``scan`` from true concentrations; returns the scan of its arrival."""
        delay = self.cfg.delay_min_s + (self.cfg.delay_max_s - self.cfg.delay_min_s) * self.random.uniform()
        steps = max(math.ceil(self.cfg.delay_min_s / self.scan_s - 1e-9), math.floor(delay / self.scan_s + 1e-9))
        arrival = scan + steps
        result = LabResult(c_B * self._error(), c_C * self._error(), batch_time_s, scan * self.scan_s,
                           arrival * self.scan_s, c_B, c_C)
        self._pending.append((arrival, self._drawn, result))
        self._pending.sort(key=lambda p: (p[0], p[1]))
        self._drawn += 1
        return arrival

    def poll(self, scan: int) -> list[LabResult]:
        """Results whose arrival scan is <= ``scan``, oldest first (removed from the queue)."""
        out: list[LabResult] = []
        while self._pending and self._pending[0][0] <= scan:
            out.append(self._pending.pop(0)[2])
        return out

    @property
    def pending(self) -> int:
        """Samples in the lab whose results have not arrived yet."""
        return len(self._pending)

    def discard_pending(self) -> None:
        """Forget samples not yet returned (a new batch starts: they go to the LIMS, not the PLC)."""
        self._pending.clear()
