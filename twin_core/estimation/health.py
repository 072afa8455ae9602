"""Model health of the soft sensor: chi-square bounds, a windowed innovation test, a two-sided
CUSUM, a stuck-reading detector, and the alarms they raise (:class:`ModelHealth`). Plain Python,
no I/O, no scipy.

Every detector keeps its state in plain floats and lists and exposes ``get_state``/``set_state``
so that the estimator (and the FMU that carries it) can checkpoint it exactly.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twin_core.estimation.config import SoftSensorConfig

log = logging.getLogger(__name__)


class SoftSensorAlarm(enum.IntFlag):
    """Alarm bits of the soft sensor (published as an integer)."""

    MODEL_MISMATCH = 1 << 0   # innovation test failing persistently, or two lab assays in a row far off
    T_SENSOR_STUCK = 1 << 1   # reactor temperature reading frozen
    T_SENSOR_DRIFT = 1 << 2   # CUSUM of the temperature innovations crossed its threshold (latched)
    CORRECTION_MISMATCH = 1 << 3  # the lab innovations are biased: the learned correction does not fit (warning)


_MISMATCH = int(SoftSensorAlarm.MODEL_MISMATCH)
_STUCK = int(SoftSensorAlarm.T_SENSOR_STUCK)
_DRIFT = int(SoftSensorAlarm.T_SENSOR_DRIFT)
_CORR = int(SoftSensorAlarm.CORRECTION_MISMATCH)
SENSOR_FAULTS = _STUCK | _DRIFT
"""The alarms that keep the temperature reading out of the filter."""
# Flags are kept as plain ints on the hot path (IntFlag operators cost microseconds); the enum
# values for every combination are built once.
ALARM_FLAGS = tuple(SoftSensorAlarm(i) for i in range(16))

# Acklam's rational approximation of the standard normal quantile (relative error < 1.2e-9).
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


def normal_quantile(p: float) -> float:
    """z with P(N(0,1) <= z) = p, for 0 < p < 1 (Acklam's algorithm)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be within (0, 1), got {p!r}")
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2.0 * math.log(p))
        return ((((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5])
                / ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0))
    if p > 1.0 - lo:
        return -normal_quantile(1.0 - p)
    q = p - 0.5
    r = q * q
    return ((((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0))


def _gamma_p(a: float, x: float) -> float:
    """Regularised lower incomplete gamma function P(a, x) (series below a + 1, continued fraction
    above; Numerical Recipes' gser/gcf), to about 1e-14."""
    if x <= 0.0:
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(1000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return total * math.exp(log_front)
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return 1.0 - math.exp(log_front) * h


def chi2_cdf(x: float, dof: int) -> float:
    """P(X <= x) for X chi-square with ``dof`` degrees of freedom."""
    return _gamma_p(0.5 * dof, 0.5 * x)


def chi2_quantile(p: float, dof: int) -> float:
    """Quantile of the chi-square distribution with ``dof`` degrees of freedom.

    Exact forms for 1 and 2 degrees of freedom; above, Wilson-Hilferty's cube-root normal
    approximation polished by safeguarded Newton steps on :func:`chi2_cdf` (relative 1e-13).
    """
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof!r}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be within (0, 1), got {p!r}")
    if dof == 1:
        z = normal_quantile(0.5 + 0.5 * p)
        return z * z
    if dof == 2:
        return -2.0 * math.log1p(-p)
    z = normal_quantile(p)
    a = 2.0 / (9.0 * dof)
    x = dof * max(1e-6, 1.0 - a + z * math.sqrt(a)) ** 3
    # Newton on the cdf from Wilson-Hilferty's guess, kept inside a bracket that bisection narrows
    # whenever a Newton step would leave it.
    half = 0.5 * dof
    log_norm = half * math.log(2.0) + math.lgamma(half)
    lo, hi = 0.0, math.inf
    for _ in range(100):
        F = chi2_cdf(x, dof)
        if F < p:
            lo = x
        else:
            hi = x
        pdf = math.exp((half - 1.0) * math.log(x) - 0.5 * x - log_norm)
        step = (F - p) / pdf if pdf > 0.0 else math.inf
        nxt = x - step
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi) if hi < math.inf else 2.0 * x
        if abs(nxt - x) <= 1e-13 * x:
            return nxt
        x = nxt
    return x


@lru_cache(maxsize=4096)
def _window_bound(alpha: float, n: int) -> float:
    """(1 - alpha) chi-square quantile for n degrees of freedom, shared by every window of the
    process (an exact quantile costs half a millisecond: once per process, not once per batch)."""
    if n < 30:
        return chi2_quantile(1.0 - alpha, n)
    a = 2.0 / (9.0 * n)
    return n * (1.0 - a + normal_quantile(1.0 - alpha) * math.sqrt(a)) ** 3


class NisWindow:
    """Sum of normalised innovation squares over a sliding time window, tested against chi-square.

    Under a consistent filter the NIS of a scalar innovation is chi-square with 1 dof and the sum
    of N of them chi-square with N dof; the window fails when the sum exceeds its (1 - alpha)
    quantile. Only the upper tail is tested: a too-small NIS means a conservative filter, not a
    fault. Quantiles are cached per N (the window holds at most a few hundred entries).
    """

    def __init__(self, window_s: float, alpha: float, min_count: int = 5) -> None:
        self.window_s = float(window_s)
        self.alpha = float(alpha)
        self.min_count = int(min_count)
        self._t: deque[float] = deque()
        self._v: deque[float] = deque()
        self._sum = 0.0
        self._adds = 0
        self._bound: dict[int, float] = {}
        self.failing = False

    def add(self, t_s: float, nis: float) -> bool:
        """Add one NIS at time t_s [s]; return True when the window test fails."""
        self._t.append(t_s)
        self._v.append(nis)
        self._sum += nis
        cut = t_s - self.window_s
        while self._t and self._t[0] <= cut:
            self._t.popleft()
            self._sum -= self._v.popleft()
        self._adds += 1
        if self._adds % 256 == 0:
            # The running sum accumulates rounding from additions and removals: re-anchor it.
            self._sum = math.fsum(self._v)
        n = len(self._v)
        self.failing = n >= self.min_count and self._sum > self.bound(n)
        return self.failing

    @property
    def count(self) -> int:
        return len(self._v)

    @property
    def mean(self) -> float:
        """Mean NIS in the window (1 for a consistent filter; NaN when empty)."""
        return self._sum / len(self._v) if self._v else math.nan

    def bound(self, n: int) -> float:
        """Upper (1 - alpha) chi-square bound of the window sum for n entries.

        Exact below 30 entries; above, Wilson-Hilferty's approximation (relative error < 0.3 % at
        the 0.1 % tail for n >= 30), which costs a microsecond where the exact one costs half a
        millisecond: the window size changes as steps enter and leave it, and a filter step must
        not stall on a quantile.
        """
        b = self._bound.get(n)
        if b is None:
            b = self._bound[n] = _window_bound(self.alpha, n)
        return b

    def get_state(self) -> dict:
        return {"t": list(self._t), "v": list(self._v), "sum": self._sum, "adds": self._adds}

    def set_state(self, s: dict) -> None:
        self._t = deque(float(v) for v in s["t"])
        self._v = deque(float(v) for v in s["v"])
        self._sum = float(s["sum"])
        self._adds = int(s["adds"])
        n = len(self._v)
        self.failing = n >= self.min_count and self._sum > self.bound(n)


class Cusum:
    """Two-sided CUSUM on normalised innovations z (mean 0, variance 1 when all is well).

    g+ = max(0, g+ + z - k), g- = max(0, g- - z - k); alarm when either exceeds h. Each z is
    clipped to +-clip first so that one wild value (a spike) cannot trip it alone.
    """

    def __init__(self, slack: float, threshold: float, clip: float) -> None:
        self.k = float(slack)
        self.h = float(threshold)
        self.clip = float(clip)
        self.pos = 0.0
        self.neg = 0.0

    def add(self, z: float) -> bool:
        """Add one normalised innovation; True when the CUSUM crosses its threshold."""
        c = self.clip
        z = c if z > c else (-c if z < -c else z)
        self.pos = max(0.0, self.pos + z - self.k)
        self.neg = max(0.0, self.neg - z - self.k)
        return self.pos > self.h or self.neg > self.h

    def reset(self) -> None:
        self.pos = self.neg = 0.0

    def get_state(self) -> dict:
        return {"pos": self.pos, "neg": self.neg}

    def set_state(self, s: dict) -> None:
        self.pos = float(s["pos"])
        self.neg = float(s["neg"])


class StuckDetector:
    """A transmitter whose reading does not change: ``min_readings`` consecutive readings within
    ``tolerance_K`` of the first of them, spanning at least ``min_time_s`` seconds.

    Both conditions matter: at a 0.1 s scan a quantised reading repeats by chance a few times in a
    row, and at a 60 s data-logging interval a few identical readings span minutes.
    """

    def __init__(self, min_time_s: float, min_readings: int, tolerance_K: float) -> None:
        self.min_time_s = float(min_time_s)
        self.min_readings = int(min_readings)
        self.tolerance_K = float(tolerance_K)
        self.value = math.nan
        self.since_s = math.nan
        self.count = 0

    def add(self, t_s: float, value: float) -> bool:
        """Add one reading; True while the reading is stuck."""
        if self.count and abs(value - self.value) <= self.tolerance_K:
            self.count += 1
        else:
            self.value, self.since_s, self.count = value, t_s, 1
        return self.count >= self.min_readings and t_s - self.since_s >= self.min_time_s

    def get_state(self) -> dict:
        return {"value": self.value, "since_s": self.since_s, "count": self.count}

    def set_state(self, s: dict) -> None:
        self.value = float(s["value"])
        self.since_s = float(s["since_s"])
        self.count = int(s["count"])


class LabBiasTest:
    """Windowed mean test on the whitened lab innovations: is the model biased against the lab?

    Each fresh lab assay gives e = L^-1 (z - H x) with S = L L' its innovation covariance: two
    independent N(0, 1) values while the model fits. The statistic over the last n = min(count,
    window) assays is q = |sum e|^2 / n, chi-square with 2 degrees of freedom under that
    hypothesis whatever n; ``failing`` when q exceeds its (1 - alpha) quantile. A learned
    correction that does not fit the plant moves every assay the same way (a bias), which the sum
    accumulates while white noise averages out: a window of 3 finds a bias of about 2.5 sigma per
    assay within three assays at alpha = 1e-4. Each test has false-alarm probability alpha
    (tests/test_softsensor_mismatch.py checks it on simulated white innovations); successive
    tests share assays, so the rate per batch is at most alpha times the assays in it.
    """

    def __init__(self, window: int, alpha: float) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self.window = int(window)
        self.alpha = float(alpha)
        self.bound = chi2_quantile(1.0 - self.alpha, 2)
        self._e: deque[tuple[float, float]] = deque(maxlen=self.window)
        self.q = 0.0
        self.count = 0
        self.failing = False

    def add(self, e: tuple[float, float]) -> bool:
        """Add one whitened innovation; True when the window test fails."""
        self._e.append((float(e[0]), float(e[1])))
        self.count += 1
        n = len(self._e)
        s1 = sum(v[0] for v in self._e)
        s2 = sum(v[1] for v in self._e)
        self.q = (s1 * s1 + s2 * s2) / n
        self.failing = self.q > self.bound
        return self.failing

    def get_state(self) -> dict:
        return {"e": [list(v) for v in self._e], "q": self.q, "count": self.count, "failing": self.failing}

    def set_state(self, s: dict) -> None:
        self._e = deque((tuple(map(float, v)) for v in s["e"]), maxlen=self.window)  # type: ignore[misc]
        self.q, self.count, self.failing = float(s["q"]), int(s["count"]), bool(s["failing"])


def binomial_half_sf(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2) (exact)."""
    return sum(math.comb(n, j) for j in range(max(k, 0), n + 1)) / 2.0 ** n


@lru_cache(maxsize=256)
def runs_bound(n_pairs: int, alpha: float) -> int:
    """The smallest count k of same-sign neighbour pairs with P(X >= k) <= alpha for X ~ Bin(n_pairs,
    1/2): the bound of :class:`LabWhitenessTest` over n_pairs pairs (n_pairs + 1, never reached, when
    even all pairs alike is more likely than alpha)."""
    for k in range(n_pairs + 1):
        if binomial_half_sf(k, n_pairs) <= alpha:
            return k
    return n_pairs + 1


def runs_min_same(window: int, alpha: float) -> int:
    """:func:`runs_bound` of a full window: 2 (window - 1) pairs, every innovation with a sign."""
    return runs_bound(2 * (window - 1), alpha)


class LabWhitenessTest:
    """Windowed whiteness (runs) test on the whitened lab innovations: are they serially correlated?

    While the model fits, the whitened innovations e_k = L^-1 (z_k - H x_k) of successive assays are
    independent N(0, 1) pairs, so each component's sign is a fair coin and the products of
    neighbouring signs s_k s_(k-1) are independent fair coins as well (the map from signs to products
    is one to one given the first). A value within ``dead_zone`` of zero is given no sign: the lab SD
    has an absolute floor (SoftSensorConfig.lab_abs_std_mol_per_m3) that an assay of a low
    concentration lies far inside, so there e is ~0 whatever the model does and its sign is set by
    an error far below the test's concern, not by chance. Over the last ``window`` assays, per
    component, the neighbours among the values with a sign are counted: given their number m (both
    components), the count with the same sign is exactly Binomial(m, 1/2) (the signs of |e| >
    dead_zone are still fair coins), and the test fails when it reaches the smallest k with
    P(X >= k) <= alpha (:func:`runs_bound`; one-sided: a model error that drifts keeps the
    innovations on one side for several assays, which a windowed mean can average away). So the
    false-alarm probability per test is at most alpha whatever m; ``size`` is its exact value on
    white innovations (:func:`runs_size`), which tests/test_softsensor_mismatch.py checks. No test
    before ``window`` assays.
    """

    def __init__(self, window: int, alpha: float, dead_zone: float = 0.0) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window!r}")
        if not 0.0 <= dead_zone < 1.0:
            raise ValueError(f"dead_zone must be within [0, 1), got {dead_zone!r}")
        self.window = int(window)
        self.alpha = float(alpha)
        self.dead_zone = float(dead_zone)
        self.bounds = _runs_bounds(self.window, self.alpha)
        self.bound = self.bounds[-1]          # with every innovation signed: 2 (window - 1) pairs
        self.size = runs_size(self.window, self.alpha, self.dead_zone)
        self._e: deque[tuple[float, float]] = deque(maxlen=self.window)
        self.same = 0
        self.pairs = 0
        self.failing = False

    def add(self, e: tuple[float, float]) -> bool:
        """Add one whitened innovation; True when the window test fails."""
        self._e.append((float(e[0]), float(e[1])))
        self.same = self.pairs = 0
        self.failing = False
        if len(self._e) < self.window:
            return False
        dz = self.dead_zone
        for j in (0, 1):
            signs = [v[j] > 0.0 for v in self._e if abs(v[j]) > dz]
            self.pairs += max(len(signs) - 1, 0)
            self.same += sum(a == b for a, b in zip(signs, signs[1:]))
        self.failing = self.same >= self.bounds[self.pairs]
        return self.failing

    def get_state(self) -> dict:
        return {"e": [list(v) for v in self._e], "same": self.same, "pairs": self.pairs, "failing": self.failing}

    def set_state(self, s: dict) -> None:
        self._e = deque((tuple(map(float, v)) for v in s["e"]), maxlen=self.window)  # type: ignore[misc]
        self.same, self.failing = int(s["same"]), bool(s["failing"])
        self.pairs = int(s.get("pairs", 2 * (len(self._e) - 1) if len(self._e) >= self.window else 0))


@lru_cache(maxsize=64)
def _runs_bounds(window: int, alpha: float) -> tuple[int, ...]:
    return tuple(runs_bound(m, alpha) for m in range(2 * (window - 1) + 1))


@lru_cache(maxsize=64)
def runs_size(window: int, alpha: float, dead_zone: float = 0.0) -> float:
    """Exact false-alarm probability of one :class:`LabWhitenessTest` on white N(0, 1) innovations:
    each of the window's values has a sign with probability q = P(|e| > dead_zone), independently,
    so the number n_j of signed values per component is Binomial(window, q), the pairs
    m = sum max(n_j - 1, 0), and the size is E[P(Bin(m, 1/2) >= runs_bound(m, alpha))]."""
    q = math.erfc(dead_zone / math.sqrt(2.0))
    pn = [math.comb(window, n) * q ** n * (1.0 - q) ** (window - n) for n in range(window + 1)]
    size = 0.0
    for n1, p1 in enumerate(pn):
        for n2, p2 in enumerate(pn):
            m = max(n1 - 1, 0) + max(n2 - 1, 0)
            size += p1 * p2 * binomial_half_sf(runs_bound(m, alpha), m)
    return size


def chi2_bounds_mean(dof: int, n: int, p: float = 0.95) -> tuple[float, float]:
    """Two-sided p-probability bounds of the mean of n independent chi-square(dof) values."""
    a = 0.5 * (1.0 - p)
    return chi2_quantile(a, dof * n) / n, chi2_quantile(1.0 - a, dof * n) / n


class ModelHealth:
    """The soft sensor's alarms (an int of :class:`SoftSensorAlarm` bits) from its detectors.

    - T_SENSOR_STUCK while the raw reading is frozen (:meth:`reading`);
    - MODEL_MISMATCH when the NIS window test has failed for ``mismatch_persist_s``, or two lab
      assays in a row were beyond the lab gate (:meth:`lab`); cleared when both are fine again; not
      raised while CORRECTION_MISMATCH is latched (the model is then known not to fit: the warning
      says so, with its cause);
    - T_SENSOR_DRIFT (latched until :meth:`reset`) when the CUSUM of the normalised temperature
      innovations crosses its threshold (:meth:`temperature`);
    - CORRECTION_MISMATCH (a warning: health level 1, latched until :meth:`reset`) when the lab
      innovations are biased (:class:`LabBiasTest`) or serially correlated
      (:class:`LabWhitenessTest`, both in :meth:`lab`), or when they have moved a trust
      weight confidently away from its prior (:meth:`trust`: the filter's own summary of every lab
      innovation in the direction of the correction). The temperature innovations are
      not used for it: a sensor fault moves the reading, not the assays, and a rate model that is
      off moves the assays first; when the warning comes, the T_SENSOR_DRIFT CUSUM restarts once
      (what it accumulated was the model's error). Off without a learned correction.
    """

    def __init__(self, cfg: SoftSensorConfig, has_correction: bool = True) -> None:
        self.has_correction = bool(has_correction)   # without one, the CORRECTION_MISMATCH tests are off
        self._nis_clip = cfg.nis_clip
        self._persist_s = cfg.mismatch_persist_s
        self._lab_gate = cfg.lab_gate_nis
        self.nis_window = NisWindow(cfg.nis_window_s, cfg.nis_alpha)
        self.cusum = Cusum(cfg.cusum_slack, cfg.cusum_threshold, cfg.cusum_clip)
        self.stuck = StuckDetector(cfg.stuck_time_s, cfg.stuck_min_readings, cfg.stuck_tolerance_K)
        self.lab_bias = LabBiasTest(cfg.lab_bias_window, cfg.lab_bias_alpha)
        self.lab_white = LabWhitenessTest(cfg.lab_white_window, cfg.lab_white_alpha, cfg.lab_white_dead_zone)
        self.rate_prev = False       # the rate-shift test held at the previous lab check (confirmation)
        self._shift_min = cfg.trust_shift_min
        self._shift_z = cfg.trust_shift_z
        self._rate_min = cfg.rate_shift_min
        self.alarms = 0
        self.nis = 0.0               # NIS of the last temperature innovation
        self.warn_since = math.nan   # since when the window test fails [s]
        self.lab_fail_run = 0        # consecutive lab assays far off
        self.lab_warning = False

    def reading(self, t_s: float, T_K: float) -> None:
        """One raw reading of the reactor temperature [K] at t_s [s] (stuck-sensor test)."""
        if self.stuck.add(t_s, T_K):
            self.alarms |= _STUCK
        else:
            self.alarms &= ~_STUCK

    def temperature(self, t_s: float, innov: float, S: float, use_T: bool) -> None:
        """The temperature innovation [K] of a filter step with its variance S [K^2] (S > 0)."""
        zn = innov / math.sqrt(S)
        self.nis = zn * zn
        if not use_T:
            return
        if self.nis_window.add(t_s, min(self.nis, self._nis_clip)):
            if self.warn_since != self.warn_since:
                self.warn_since = t_s
            # With CORRECTION_MISMATCH latched the model is already known not to fit: its persistent
            # disagreement with the temperature is that warning, not a second alarm (as in lab()).
            if t_s - self.warn_since >= self._persist_s and not self.alarms & _CORR:
                self.alarms |= _MISMATCH
        else:
            self.warn_since = math.nan
            if self.lab_fail_run < 2:
                self.alarms &= ~_MISMATCH
        if self.cusum.add(zn):
            if not self.alarms & _DRIFT:
                log.warning("soft sensor: temperature innovations drift (CUSUM) at t=%.0f s", t_s)
            self.alarms |= _DRIFT

    def trust(self, lam: tuple[float, float], sd: tuple[float, float], prior: tuple[float, float]) -> None:
        """The trust weights' estimate and SD after fresh lab assays, against their prior mean:
        CORRECTION_MISMATCH when one has moved by more than ``trust_shift_min`` and by more than
        ``trust_shift_z`` of its SD (the assays decided, with confidence, that the correction must
        be scaled by another weight: it does not fit this plant)."""
        for v, s_, m in zip(lam, sd, prior, strict=True):
            d = abs(v - m)
            if self.has_correction and d > self._shift_min and d > self._shift_z * s_:
                self._correction_mismatch(f"trust weight {v:.2f} +- {s_:.2f} away from {m:.2f}")

    def rate_shift(self, shifts: list[tuple[float, float]]) -> None:
        """The log-rate shifts (delta_i, sd_i) the assays ask for on top of the correction as
        trained (trust weights and k-factors together, SoftSensor._check_trust): CORRECTION_MISMATCH
        when one exceeds ``rate_shift_min`` (beyond the batch-to-batch raw-material activity) and
        ``trust_shift_z`` of its SD at two lab checks in a row (a confirmation: the test is re-run on
        the posterior after every assay, and one assay can carry it just over its margin)."""
        if not self.has_correction:
            return
        hit = [(d, sd) for d, sd in shifts if abs(d) > self._rate_min and abs(d) > self._shift_z * sd]
        if hit and self.rate_prev:
            d, sd = hit[0]
            self._correction_mismatch(f"rate shift {d:+.2f} +- {sd:.2f} on top of the correction (twice)")
        self.rate_prev = bool(hit)

    def _correction_mismatch(self, why: str) -> None:
        if self.alarms & _CORR:
            return
        log.warning("soft sensor: %s: the learned correction does not fit", why)
        self.alarms |= _CORR
        # What the temperature CUSUM accumulated so far is the model's error, not the sensor's:
        # start it afresh once (a drift that continues is found again; nothing is suppressed).
        self.cusum.reset()

    def lab(self, nis: float, white: tuple[float, float] | None = None) -> None:
        """The NIS and whitened innovation of a lab assay processed for the first time."""
        if self.has_correction and white is not None and self.lab_bias.add(white):
            self._correction_mismatch(f"lab innovations biased (q={self.lab_bias.q:.1f} > {self.lab_bias.bound:.1f})")
        if self.has_correction and white is not None and self.lab_white.add(white):
            w = self.lab_white
            self._correction_mismatch(f"lab innovations correlated ({w.same} of {w.pairs} neighbours "
                                      f"alike >= {w.bounds[w.pairs]})")
        if nis > self._lab_gate:
            self.lab_fail_run += 1
            self.lab_warning = True
            # With CORRECTION_MISMATCH latched the assays are already known to disagree with the
            # corrected model (and the filter has re-opened its trust and rate priors): assays far
            # off are that warning, not a second, separate model-mismatch alarm.
            if self.lab_fail_run >= 2 and not self.alarms & _CORR:
                self.alarms |= _MISMATCH
        else:
            self.lab_fail_run = 0
            self.lab_warning = False

    def level(self, in_domain: bool) -> int:
        """0 good, 1 warning (window test failing, a lab assay far off, correction out of its
        domain, CORRECTION_MISMATCH), 2 alarm (any other alarm bit)."""
        if self.alarms & ~_CORR:
            return 2
        if self.nis_window.failing or self.lab_warning or not in_domain or self.alarms:
            return 1
        return 0

    def reset(self) -> None:
        """Clear the alarms and the latches behind them (operator acknowledgement)."""
        self.alarms = 0
        self.cusum.reset()
        self.lab_bias = LabBiasTest(self.lab_bias.window, self.lab_bias.alpha)
        self.lab_white = LabWhitenessTest(self.lab_white.window, self.lab_white.alpha, self.lab_white.dead_zone)
        self.rate_prev = False
        self.warn_since = math.nan
        self.lab_fail_run = 0
        self.lab_warning = False

    def get_state(self) -> dict:
        return {"nis_window": self.nis_window.get_state(), "cusum": self.cusum.get_state(),
                "stuck": self.stuck.get_state(), "lab_bias": self.lab_bias.get_state(),
                "lab_white": self.lab_white.get_state(), "rate_prev": self.rate_prev, "alarms": self.alarms, "nis": self.nis,
                "warn_since": self.warn_since, "lab_fail_run": self.lab_fail_run, "lab_warning": self.lab_warning}

    def set_state(self, s: dict) -> None:
        self.nis_window.set_state(s["nis_window"])
        self.cusum.set_state(s["cusum"])
        self.stuck.set_state(s["stuck"])
        self.lab_bias.set_state(s["lab_bias"])
        self.lab_white.set_state(s.get("lab_white", {"e": [], "same": 0, "failing": False}))  # absent before v4
        self.rate_prev = bool(s.get("rate_prev", False))
        self.alarms = int(s["alarms"])
        self.nis = float(s["nis"])
        self.warn_since = float(s["warn_since"])
        self.lab_fail_run, self.lab_warning = int(s["lab_fail_run"]), bool(s["lab_warning"])
