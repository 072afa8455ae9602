"""Recipes: temperature setpoint programmes written the way batch recipes are (holds and ramps).

A recipe is a piecewise-linear programme of breakpoints (t [s], T [K]) plus an end time. Its mode
says what the programme drives:
  - ``jacket``  : the jacket temperature T_j follows the programme (the twin's input u);
  - ``reactor`` : the reactor temperature is held on the programme (isothermal / temperature-
                  programmed analysis mode; the jacket does whatever it takes).

TOML form (steps are appended to the start point; ``points`` may be given instead of steps)::

    name = "ramp-to-70C"
    mode = "jacket"
    T_start_K = 298.15
    end_time_s = 21600
    [[steps]]
    action = "ramp"        # linear ramp to target_K over duration_s (or at rate_K_per_s)
    target_K = 343.15
    duration_s = 3600
    [[steps]]
    action = "hold"        # hold the last setpoint
    duration_s = 18000
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.params import T_MAX_K, T_MIN_K
from twin_core.validate import load_toml
from twin_core.validate import number as _num

MODES = ("jacket", "reactor")


@dataclass(frozen=True)
class Recipe:
    """Piecewise-linear setpoint programme: ``times_s`` strictly increasing from 0, ``temps_K``."""

    times_s: tuple[float, ...]
    temps_K: tuple[float, ...]
    end_time_s: float
    mode: str = "jacket"
    name: str = "recipe"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ParameterError("recipe.mode", self.mode, f"must be one of {MODES}")
        if len(self.times_s) != len(self.temps_K) or not self.times_s:
            raise ParameterError("recipe.points", (self.times_s, self.temps_K),
                                 "needs at least one (time, temperature) point and equal lengths")
        object.__setattr__(self, "times_s", tuple(_num(f"recipe.times_s[{i}]", t) for i, t in enumerate(self.times_s)))
        object.__setattr__(self, "temps_K", tuple(_num(f"recipe.temps_K[{i}]", v) for i, v in enumerate(self.temps_K)))
        if self.times_s[0] != 0.0:
            raise ParameterError("recipe.times_s[0]", self.times_s[0], "the programme must start at t = 0")
        for i in range(1, len(self.times_s)):
            if not self.times_s[i] > self.times_s[i - 1]:
                raise ParameterError(f"recipe.times_s[{i}]", self.times_s[i],
                                     f"times must be strictly increasing (previous {self.times_s[i - 1]})")
        for i, v in enumerate(self.temps_K):
            if not (T_MIN_K <= v <= T_MAX_K):
                raise ParameterError(f"recipe.temps_K[{i}]", v, f"must be a temperature in kelvin within [{T_MIN_K}, {T_MAX_K}]")
        end = _num("recipe.end_time_s", self.end_time_s)
        if end <= 0.0:
            raise ParameterError("recipe.end_time_s", self.end_time_s, "must be > 0")
        object.__setattr__(self, "end_time_s", end)

    # -- evaluation -----------------------------------------------------------------------------
    def setpoint(self, t_s: float) -> float:
        """Setpoint [K] at time t_s (held constant before 0 and after the last point)."""
        ts, Ts = self.times_s, self.temps_K
        if t_s <= ts[0]:
            return Ts[0]
        if t_s >= ts[-1]:
            return Ts[-1]
        i = bisect.bisect_right(ts, t_s) - 1
        w = (t_s - ts[i]) / (ts[i + 1] - ts[i])
        return Ts[i] + w * (Ts[i + 1] - Ts[i])

    def slope(self, t_s: float) -> float:
        """Setpoint slope [K/s] on the segment that starts at or before t_s (0 outside the programme)."""
        ts, Ts = self.times_s, self.temps_K
        if t_s < ts[0] or t_s >= ts[-1]:
            return 0.0
        i = bisect.bisect_right(ts, t_s) - 1
        return (Ts[i + 1] - Ts[i]) / (ts[i + 1] - ts[i])

    def breakpoints(self, t_end_s: float | None = None) -> list[float]:
        """Times where the programme has a kink, within (0, t_end)."""
        t_end = self.end_time_s if t_end_s is None else t_end_s
        return [t for t in self.times_s if 0.0 < t < t_end]

    @property
    def max_ramp_K_per_s(self) -> float:
        """Steepest ramp of the programme [K/s]."""
        ts, Ts = self.times_s, self.temps_K
        return max((abs(Ts[i + 1] - Ts[i]) / (ts[i + 1] - ts[i]) for i in range(len(ts) - 1)), default=0.0)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def isothermal(cls, T_K: float, end_time_s: float, name: str | None = None) -> Recipe:
        """Reactor held at T_K for the whole batch (analysis mode)."""
        return cls((0.0,), (T_K,), end_time_s, mode="reactor", name=name or f"isothermal-{T_K - 273.15:.1f}C")

    @classmethod
    def constant_jacket(cls, T_K: float, end_time_s: float, name: str | None = None) -> Recipe:
        """Jacket held at T_K for the whole batch."""
        return cls((0.0,), (T_K,), end_time_s, mode="jacket", name=name or f"jacket-{T_K - 273.15:.1f}C")

    def to_mapping(self) -> dict[str, Any]:
        """The TOML-ready mapping of this recipe (points form)."""
        return {"name": self.name, "mode": self.mode, "end_time_s": self.end_time_s,
                "points": [[t, T] for t, T in zip(self.times_s, self.temps_K)]}

    def to_toml(self) -> str:
        """The recipe as TOML text (points form), readable by :func:`load_recipe`."""
        lines = [f'name = "{self.name}"', f'mode = "{self.mode}"', f"end_time_s = {self.end_time_s!r}",
                 "# [time_s, setpoint_K]", "points = ["]
        lines += [f"  [{t!r}, {T!r}]," for t, T in zip(self.times_s, self.temps_K)]
        lines.append("]")
        return "\n".join(lines) + "\n"


_KEYS = {"name", "mode", "T_start_K", "end_time_s", "steps", "points"}
_STEP_KEYS = {"action", "target_K", "duration_s", "rate_K_per_s"}


def recipe_from_mapping(data: Mapping[str, Any], source: str = "<mapping>") -> Recipe:
    """Build a Recipe from a mapping (the TOML layout documented in this module)."""
    for key in data:
        if key not in _KEYS:
            raise ParameterError(f"recipe.{key}", data[key], f"unknown key in {source}; expected one of {sorted(_KEYS)}")
    if "end_time_s" not in data:
        raise ParameterError("recipe.end_time_s", None, f"missing in {source}")
    name = str(data.get("name", Path(source).stem))
    mode = data.get("mode", "jacket")
    if "points" in data:
        if "steps" in data or "T_start_K" in data:
            raise ParameterError("recipe.points", data["points"], "give either points or T_start_K + steps, not both")
        pts = data["points"]
        if not isinstance(pts, Sequence) or not all(isinstance(p, Sequence) and len(p) == 2 for p in pts):
            raise ParameterError("recipe.points", pts, "must be a list of [time_s, T_K] pairs")
        return Recipe(tuple(p[0] for p in pts), tuple(p[1] for p in pts), data["end_time_s"], mode=mode, name=name)
    if "T_start_K" not in data:
        raise ParameterError("recipe.T_start_K", None, f"missing in {source} (or give points)")
    times = [0.0]
    temps = [_num("recipe.T_start_K", data["T_start_K"])]
    for i, step in enumerate(data.get("steps", [])):
        path = f"recipe.steps[{i}]"
        if not isinstance(step, Mapping):
            raise ParameterTypeError(path, step, "a table")
        for key in step:
            if key not in _STEP_KEYS:
                raise ParameterError(f"{path}.{key}", step[key], f"unknown key; expected one of {sorted(_STEP_KEYS)}")
        action = step.get("action")
        if action == "hold":
            dur = _num(f"{path}.duration_s", step.get("duration_s"))
            target = temps[-1]
        elif action == "ramp":
            target = _num(f"{path}.target_K", step.get("target_K"))
            if "duration_s" in step:
                dur = _num(f"{path}.duration_s", step["duration_s"])
            elif "rate_K_per_s" in step:
                rate = _num(f"{path}.rate_K_per_s", step["rate_K_per_s"])
                if rate <= 0.0:
                    raise ParameterError(f"{path}.rate_K_per_s", rate, "must be > 0")
                dur = abs(target - temps[-1]) / rate
            else:
                raise ParameterError(f"{path}.duration_s", None, "a ramp needs duration_s or rate_K_per_s")
        else:
            raise ParameterError(f"{path}.action", action, "must be 'hold' or 'ramp'")
        if dur <= 0.0:
            raise ParameterError(f"{path}.duration_s", dur, "must be > 0")
        times.append(times[-1] + dur)
        temps.append(target)
    return Recipe(tuple(times), tuple(temps), data["end_time_s"], mode=mode, name=name)


def load_recipe(path: str | Path) -> Recipe:
    """Load a recipe from a TOML file; unknown keys and non-monotonic times raise ParameterError."""
    return recipe_from_mapping(load_toml(path), source=str(path))


DEFAULT_RECIPE = Recipe(times_s=(0.0, 3600.0), temps_K=(298.15, 343.15), end_time_s=6 * 3600.0,
                        mode="jacket", name="default-ramp-70C")
"""Default batch: jacket ramps from 25 degC to 70 degC over 1 h, then holds; 6 h batch."""
