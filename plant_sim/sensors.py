"""Temperature transmitters: first-order lag, Gaussian noise, quantisation, injectable faults.

Each scan of dt seconds the transmitter's sensing element follows the true value through a
first-order lag (thermowell), discretised exactly for a value held over the scan:
    y <- y + (1 - exp(-dt/tau)) (x - y)
then the reading is y + N(0, sd), rounded to a multiple of the quantum (ADC / register resolution).

Faults (codes: twin_core.signals.SensorFault, the ``sim_sensor_fault`` hook):
    0 none; 1 stuck (the reading freezes at its value when the fault starts); 2 drift (the reading
    walks away at drift_K_per_s from the fault start); 3 spike (each scan, with probability
    p * dt, a one-scan excursion of +-spike_K); 4 dropout (no value: NaN).
"""

from __future__ import annotations

import math

import numpy as np

from plant_sim.config import SensorSpec
from twin_core.signals.plc import SensorFault


class RandomStream:
    """Normal and uniform variates drawn in blocks from one numpy Generator.

    Drawing one scalar at a time from numpy costs microseconds; a scan needs a few, so they are
    drawn 4096 at a time. The sequence depends only on the seed and the order of calls.
    """

    BLOCK = 4096

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._normal: list[float] = []
        self._uniform: list[float] = []
        self._in = 0
        self._iu = 0

    def normal(self) -> float:
        """A standard normal variate."""
        if self._in >= len(self._normal):
            self._normal = self._rng.standard_normal(self.BLOCK).tolist()
            self._in = 0
        v = self._normal[self._in]
        self._in += 1
        return v

    def uniform(self) -> float:
        """A uniform variate in [0, 1)."""
        if self._iu >= len(self._uniform):
            self._uniform = self._rng.random(self.BLOCK).tolist()
            self._iu = 0
        v = self._uniform[self._iu]
        self._iu += 1
        return v


def quantise(value: float, quantum: float) -> float:
    """value rounded to the nearest multiple of quantum (unchanged for quantum 0)."""
    if quantum <= 0.0:
        return value
    return round(value / quantum) * quantum


class TemperatureSensor:
    """One transmitter scanned every ``dt_s`` seconds (``ideal``: reading = true value)."""

    def __init__(self, spec: SensorSpec, dt_s: float, random: RandomStream, ideal: bool = False,
                 drift_K_per_s: float = 0.0, spike_K: float = 0.0, spike_probability_per_s: float = 0.0) -> None:
        self.spec = spec
        self.dt_s = float(dt_s)
        self.ideal = ideal
        self.random = random
        self._alpha = 1.0 if spec.tau_s == 0.0 else 1.0 - math.exp(-self.dt_s / spec.tau_s)
        self.drift_K_per_s = drift_K_per_s
        self.spike_K = spike_K
        self._spike_p = spike_probability_per_s * self.dt_s
        self.element_K: float | None = None  # the lagged sensing element (None until first read)
        self.reading = math.nan
        self.fault = SensorFault.NONE
        self._fault_start_s = 0.0
        self._stuck_value = math.nan

    def set_fault(self, fault: int, t_s: float) -> None:
        """Start fault ``fault`` (SensorFault code) at plant time t_s; 0 clears any fault."""
        self.fault = SensorFault(int(fault))
        self._fault_start_s = t_s
        self._stuck_value = self.reading

    def reset(self, value_K: float) -> None:
        """Put the sensing element at value_K (e.g. a probe dipped into a fresh charge)."""
        self.element_K = float(value_K)

    def read(self, true_K: float, t_s: float) -> float:
        """The reading [K] at plant time t_s for true value true_K (advances the lag by one scan)."""
        if self.ideal:
            y = true_K
            self.element_K = y
        else:
            if self.element_K is None:
                self.element_K = true_K
            else:
                self.element_K += self._alpha * (true_K - self.element_K)
            y = self.element_K + self.spec.noise_sd_K * self.random.normal()
        fault = self.fault
        if fault:
            if fault == SensorFault.STUCK:
                y = self._stuck_value
            elif fault == SensorFault.DRIFT:
                y += self.drift_K_per_s * (t_s - self._fault_start_s)
            elif fault == SensorFault.SPIKE:
                if self.random.uniform() < self._spike_p:
                    y += self.spike_K if self.random.uniform() < 0.5 else -self.spike_K
            else:
                self.reading = math.nan
                return math.nan
        if not self.ideal and fault != SensorFault.STUCK:
            y = quantise(y, self.spec.quantum_K)
        self.reading = y
        return y
