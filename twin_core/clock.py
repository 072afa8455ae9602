"""One clock for everything that keeps time: the plant's scan loop, the demo, the tests and, next,
the runtime (issue 10).

A clock answers ``now()``: the current time in seconds, either wall time or plant time. Plant time runs
``speed`` plant seconds per wall second from a start offset; it is always computed as
``t0 + speed * (monotonic() - m0)`` (or ``t0 + n * dt`` for the stepped clock), never accumulated by
repeated addition, so it does not drift however long it runs.

    clock = PlantClock(speed=720.0, t0_s=0.0)   # 6 h of plant time in 30 s of wall time
    clock.now()                                 # plant seconds since t0 (starts at t0_s)
    clock.wait_until(3600.0)                    # blocks until plant time 1 h
    await clock.sleep_until(7200.0)             # the same, for asyncio code
    clock.reset(t_plc)                          # re-anchor on another clock's reading (a PLC's)

``WallClock`` is wall time in seconds since the Unix epoch, anchored once on ``time.time()`` and then
advanced by the monotonic clock (a step of the system clock never makes it jump or go back).
``ManualClock`` is virtual time for tests: it moves only when told (``set``, ``step``), and its
``sleep_until`` / ``wait_until`` jump to the requested time instead of waiting.

Constructors do no I/O (they read the monotonic clock, nothing else). Bad arguments raise
:class:`~twin_core.errors.ParameterError` / :class:`~twin_core.errors.ParameterTypeError` naming them.
"""

from __future__ import annotations

import abc
import asyncio
import math
import time
from collections.abc import Callable

from twin_core.errors import ParameterError, ParameterTypeError

__all__ = ["Clock", "ManualClock", "PlantClock", "WallClock"]

MAX_SLEEP_CHUNK_S = 1.0
"""Longest single wall-clock sleep [s] while waiting for a time: a paused clock (speed 0) or a re-anchored
one is re-read at least this often."""


def _number(name: str, value: object, *, minimum: float | None = None, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterTypeError(name, value, "a number")
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ParameterError(name, value, "must be finite")
    if minimum is not None and v < minimum:
        raise ParameterError(name, value, f"must be >= {minimum:g}")
    return v


class Clock(abc.ABC):
    """A source of time in seconds. Subclasses give :meth:`now` and :meth:`wall_seconds_until`."""

    @abc.abstractmethod
    def now(self) -> float:
        """The current time [s]; never decreases between two calls (unless :meth:`reset`)."""

    @abc.abstractmethod
    def wall_seconds_until(self, t_s: float) -> float:
        """Wall-clock seconds until the clock reads ``t_s`` (<= 0 when it already does; inf if never)."""

    def wait_until(self, t_s: float) -> float:
        """Block (time.sleep) until the clock reads at least ``t_s``; returns :meth:`now`."""
        t = _number("t_s", t_s, finite=False)
        while (d := self.wall_seconds_until(t)) > 0.0:
            time.sleep(min(d, MAX_SLEEP_CHUNK_S))
        return self.now()

    async def sleep_until(self, t_s: float) -> float:
        """Wait (asyncio.sleep, the event loop keeps running) until the clock reads at least ``t_s``;
        returns :meth:`now`. Always yields to the event loop at least once."""
        t = _number("t_s", t_s, finite=False)
        d = self.wall_seconds_until(t)
        if d <= 0.0:
            await asyncio.sleep(0)
        while d > 0.0:
            await asyncio.sleep(min(d, MAX_SLEEP_CHUNK_S))
            d = self.wall_seconds_until(t)
        return self.now()


class PlantClock(Clock):
    """Plant time: ``t0_s + speed * (monotonic() - m0)`` [s], m0 taken at construction (or reset).

    speed: plant seconds per wall second (finite, >= 0; 0 = paused: the clock stands at t0_s);
    t0_s: the reading at construction [s] (finite);
    monotonic: the wall-clock source [s] (default time.monotonic; tests may pass their own).
    """

    def __init__(self, speed: float = 1.0, t0_s: float = 0.0, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.speed = _number("speed", speed, minimum=0.0)
        if not callable(monotonic):
            raise ParameterTypeError("monotonic", monotonic, "a callable returning seconds")
        self._monotonic = monotonic
        self._t0 = _number("t0_s", t0_s)
        self._m0 = monotonic()

    @property
    def t0_s(self) -> float:
        """Reading at the last anchor (construction or :meth:`reset`) [s]."""
        return self._t0

    def now(self) -> float:
        return self._t0 + self.speed * (self._monotonic() - self._m0)

    def wall_seconds_until(self, t_s: float) -> float:
        ahead = t_s - self.now()
        if ahead <= 0.0:
            return ahead
        return math.inf if self.speed == 0.0 else ahead / self.speed

    def reset(self, t_s: float) -> None:
        """Re-anchor: the clock reads ``t_s`` now and runs on at ``speed`` from there (used to follow
        another clock, e.g. the PLC's published plant time, or to restart a schedule after a slip).
        May move the clock back: that is the caller's decision, made explicitly."""
        self._t0 = _number("t_s", t_s)
        self._m0 = self._monotonic()

    def __repr__(self) -> str:
        return f"PlantClock(speed={self.speed:g}, now={self.now():.3f} s)"


class WallClock(PlantClock):
    """Wall time: seconds since the Unix epoch, anchored on ``time.time()`` at construction, then
    advanced by the monotonic clock at speed 1 (never jumps when the system clock is stepped)."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(1.0, time.time(), monotonic=monotonic)

    def __repr__(self) -> str:
        return f"WallClock(now={self.now():.3f} s)"


class ManualClock(Clock):
    """Virtual time for tests: ``t0_s + n * dt_s`` after ``step(n)``, or the last :meth:`set`.

    It never moves by itself; :meth:`sleep_until` and :meth:`wait_until` jump to the time asked for
    (so code paced by a clock runs at once under test). Moving it backwards raises ParameterError.
    """

    def __init__(self, t0_s: float = 0.0, dt_s: float = 1.0) -> None:
        self._t0 = _number("t0_s", t0_s)
        self.dt_s = _number("dt_s", dt_s)
        if self.dt_s <= 0.0:
            raise ParameterError("dt_s", dt_s, "must be > 0")
        self._n = 0
        self._t = self._t0

    def now(self) -> float:
        return self._t

    def wall_seconds_until(self, t_s: float) -> float:
        return 0.0  # virtual time: nothing to wait for

    @property
    def steps(self) -> int:
        """Steps taken since t0 (or since the last set)."""
        return self._n

    def step(self, n: int = 1) -> float:
        """Advance by ``n`` steps of dt_s: the clock reads t0 + steps * dt_s. Returns the new time."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise ParameterTypeError("n", n, "an int")
        if n < 0:
            raise ParameterError("n", n, "must be >= 0 (the clock never goes back)")
        self._n += n
        self._t = self._t0 + self._n * self.dt_s
        return self._t

    def set(self, t_s: float) -> float:
        """Jump to ``t_s`` (>= now); steps then count from there."""
        t = _number("t_s", t_s)
        if t < self._t:
            raise ParameterError("t_s", t_s, f"is before now ({self._t!r} s): the clock never goes back")
        self._t0, self._n, self._t = t, 0, t
        return t

    def wait_until(self, t_s: float) -> float:
        t = _number("t_s", t_s)
        if t > self._t:
            self.set(t)
        return self._t

    async def sleep_until(self, t_s: float) -> float:
        self.wait_until(t_s)
        await asyncio.sleep(0)
        return self._t

    def __repr__(self) -> str:
        return f"ManualClock(now={self._t!r} s, dt={self.dt_s!r} s)"
