"""twin_core.clock: plant time with a speed-up and an offset, wall time, virtual time for tests.

Oracles: a fake monotonic source (exact arithmetic), and the real monotonic clock only as an order
relation (never an assertion on how long something took)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from twin_core.clock import Clock, ManualClock, PlantClock, WallClock
from twin_core.errors import ParameterError, ParameterTypeError


class FakeMonotonic:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_plant_clock_is_offset_plus_speed_times_wall_time() -> None:
    mono = FakeMonotonic()
    clock = PlantClock(speed=720.0, t0_s=3600.0, monotonic=mono)
    assert clock.now() == 3600.0
    mono.t += 2.5
    assert clock.now() == 3600.0 + 720.0 * 2.5
    assert clock.wall_seconds_until(3600.0 + 720.0 * 3.5) == pytest.approx(1.0, rel=1e-12)
    assert clock.wall_seconds_until(0.0) < 0.0


def test_plant_clock_is_computed_not_accumulated() -> None:
    """After a million reads at 0.1 s the reading is t0 + speed * elapsed exactly, not a summed 0.1."""
    mono = FakeMonotonic(0.0)
    clock = PlantClock(speed=3.0, t0_s=0.0, monotonic=mono)
    for n in range(1, 1_000_001, 1000):
        mono.t = n * 0.1
        last = clock.now()
    assert last == 3.0 * (999_001 * 0.1)


def test_reset_reanchors_and_paused_clock_stands_still() -> None:
    mono = FakeMonotonic()
    clock = PlantClock(speed=10.0, monotonic=mono)
    mono.t += 1.0
    clock.reset(50.0)
    assert clock.now() == 50.0 and clock.t0_s == 50.0
    mono.t += 1.0
    assert clock.now() == 60.0
    paused = PlantClock(speed=0.0, t0_s=5.0, monotonic=mono)
    mono.t += 100.0
    assert paused.now() == 5.0
    assert paused.wall_seconds_until(6.0) == math.inf
    assert paused.wall_seconds_until(5.0) == 0.0


def test_real_clocks_never_go_back() -> None:
    for clock in (PlantClock(speed=1000.0, t0_s=1.0), WallClock()):
        readings = [clock.now() for _ in range(10_000)]
        assert all(b >= a for a, b in zip(readings, readings[1:], strict=False))
    assert abs(WallClock().now() - time.time()) < 3600.0  # epoch seconds, not an uptime


def test_wait_until_reaches_the_time_asked_for() -> None:
    clock = PlantClock(speed=1000.0, t0_s=0.0)
    assert clock.wait_until(20.0) >= 20.0  # about 20 ms of wall time
    assert clock.wait_until(1.0) >= 20.0   # already past: returns at once


def test_sleep_until_lets_the_event_loop_run() -> None:
    clock = PlantClock(speed=1000.0)
    ticks: list[float] = []

    async def other() -> None:
        while True:
            ticks.append(clock.now())
            await asyncio.sleep(0)

    target: list[float] = []

    async def main() -> float:
        task = asyncio.create_task(other())
        target.append(clock.now() + 30.0)
        t = await clock.sleep_until(target[0])
        task.cancel()
        return t

    t = asyncio.run(main())
    # It returned no earlier than asked, and the other task ran meanwhile, before the target. (The
    # first tick is no reference for the target: on a loaded machine it may come after it was set.)
    assert t >= target[0] and ticks and ticks[0] < target[0] and len(ticks) > 1


def test_manual_clock_steps_as_t0_plus_n_dt_and_jumps_when_waited_on() -> None:
    clock = ManualClock(t0_s=10.0, dt_s=0.1)
    assert isinstance(clock, Clock) and clock.now() == 10.0
    for _ in range(1000):
        clock.step()
    assert clock.now() == 10.0 + 1000 * 0.1 and clock.steps == 1000
    assert clock.wait_until(500.0) == 500.0
    assert asyncio.run(clock.sleep_until(600.0)) == 600.0
    assert clock.wait_until(1.0) == 600.0  # the past: no change
    clock.step(3)
    assert clock.now() == 600.0 + 3 * 0.1
    with pytest.raises(ParameterError, match="never goes back"):
        clock.set(1.0)


@pytest.mark.parametrize(("make", "error", "field"), [
    (lambda: PlantClock(speed=-1.0), ParameterError, "speed"),
    (lambda: PlantClock(speed=math.nan), ParameterError, "speed"),
    (lambda: PlantClock(speed=math.inf), ParameterError, "speed"),
    (lambda: PlantClock(speed="fast"), ParameterTypeError, "speed"),
    (lambda: PlantClock(speed=True), ParameterTypeError, "speed"),
    (lambda: PlantClock(t0_s=math.inf), ParameterError, "t0_s"),
    (lambda: PlantClock(t0_s=None), ParameterTypeError, "t0_s"),
    (lambda: PlantClock(monotonic=3.0), ParameterTypeError, "monotonic"),
    (lambda: PlantClock().reset(math.nan), ParameterError, "t_s"),
    (lambda: PlantClock().wait_until("soon"), ParameterTypeError, "t_s"),
    (lambda: ManualClock(dt_s=0.0), ParameterError, "dt_s"),
    (lambda: ManualClock(t0_s=math.nan), ParameterError, "t0_s"),
    (lambda: ManualClock().step(-1), ParameterError, "n"),
    (lambda: ManualClock().step(1.5), ParameterTypeError, "n"),
    (lambda: ManualClock().set(math.inf), ParameterError, "t_s"),
])
def test_bad_arguments_are_refused_naming_them(make, error: type, field: str) -> None:
    with pytest.raises(error) as info:
        make()
    assert info.value.field == field
