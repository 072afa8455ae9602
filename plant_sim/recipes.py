"""The plant's recipe library for the batch data set: families of jacket programmes.

Every programme starts at the charge temperature (25 degC) for the Charging phase (600 s), then:

Training families (jacket temperatures 55-73 degC, where this plant runs safely: above ~75 degC
a jacket hold lets the reactor run away past the trip limit, see docs/plant.md):
  H  hold        ramp to T_h in [60, 72] degC over 30-60 min, hold;
  R  ramp        ramp to T_1 in [52, 60] in 30 min, slow ramp to T_2 in [66, 72] over 1.5-3 h, hold;
  P  profile     optimised-like decreasing profile: to T_hi in [68, 72], hold 1-1.5 h, down to
                 T_lo in [60, 64] over 1 h, hold (B -> C has the higher activation energy);
  X  perturbed   an H, R or P programme with every temperature moved by up to +-3 K, times by
                 up to +-10 %, and an extra bump or dip of up to +-4 K mid-batch.
Held-out families (recipes unlike any training recipe, for scoring later issues):
  U  push        hold at [62, 66] degC for 2.5-3.5 h, then push the jacket to [78, 82] degC for
                 the last 1-1.5 h: reactor temperatures above the training range, late in the batch
                 when c_C is high;
  C  cold        a long hold at [46, 50] degC (7.5-8.5 h): below every training temperature.
End times follow what the plant's operators learned (near the maximum of c_B, give or take 10 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin_core.recipe import Recipe

C0 = 273.15
CHARGE_TIME_S = 600.0
T_CHARGE_K = 298.15
TRAIN_FAMILIES = ("H", "R", "P", "X")
HOLDOUT_FAMILIES = ("U", "C")
FAMILY_NAMES = {"H": "hold", "R": "ramp", "P": "profile", "X": "perturbed", "U": "push", "C": "cold"}
SAMPLE_INTERVALS_S = (1800.0, 2700.0, 3600.0)


@dataclass(frozen=True)
class PlantRecipe:
    """A library recipe: the jacket programme, the lab sample interval, its family and split."""

    recipe_id: str
    family: str
    split: str
    recipe: Recipe
    sample_interval_s: float


def _r(x: float, step: float) -> float:
    """Round to a multiple of step (recipes are written with round numbers)."""
    return float(round(x / step) * step)


def _programme(points: list[tuple[float, float]], end_h: float, name: str) -> Recipe:
    """Recipe from (time [s], T [degC]) points after the charging hold; times rounded to 1 min."""
    times = [0.0, CHARGE_TIME_S]
    temps = [T_CHARGE_K, T_CHARGE_K]
    for t, T in points:
        t = _r(t, 60.0)
        if t <= times[-1]:
            t = times[-1] + 60.0
        times.append(t)
        temps.append(_r(T + C0, 0.05))
    end = max(_r(end_h * 3600.0, 60.0), times[-1] + 60.0)
    return Recipe(tuple(times), tuple(temps), end, mode="jacket", name=name)


def _hold_end_h(T_C: float) -> float:
    # Operators' rule of thumb for this plant: hotter runs end sooner (c_B peaks earlier).
    return 3.8 + 0.3 * (72.0 - T_C)


def _family(fam: str, rng: np.random.Generator, name: str) -> Recipe:
    t0 = CHARGE_TIME_S
    if fam == "H":
        Th = rng.uniform(60.0, 72.0)
        pts = [(t0 + rng.uniform(1800, 3600), Th)]
        end = _hold_end_h(Th) * rng.uniform(0.9, 1.1)
    elif fam == "R":
        T1, T2 = rng.uniform(52.0, 60.0), rng.uniform(66.0, 72.0)
        t1 = t0 + 1800.0
        pts = [(t1, T1), (t1 + rng.uniform(1.5, 3.0) * 3600.0, T2)]
        end = (_hold_end_h(T2) + 0.4) * rng.uniform(0.9, 1.1)
    elif fam == "P":
        Thi, Tlo = rng.uniform(68.0, 72.0), rng.uniform(60.0, 64.0)
        t1 = t0 + 2400.0
        t2 = t1 + rng.uniform(1.0, 1.5) * 3600.0
        pts = [(t1, Thi), (t2, Thi), (t2 + 3600.0, Tlo)]
        end = rng.uniform(5.0, 6.5)
    elif fam == "X":
        base = _family(str(rng.choice(["H", "R", "P"])), rng, name)
        times = list(base.times_s[2:])
        temps = [T - C0 for T in base.temps_K[2:]]
        pts = [(t0 + (t - t0) * rng.uniform(0.9, 1.1), min(73.0, max(55.0, T + rng.uniform(-3.0, 3.0))))
               for t, T in zip(times, temps, strict=True)]
        # An extra bump or dip mid-batch: between the last point and the end.
        t_last = max(p[0] for p in pts)
        t_mid = t_last + 0.5 * max(3600.0, base.end_time_s - t_last)
        T_last = pts[-1][1]
        pts += [(t_mid - 1800.0, T_last), (t_mid, min(73.0, max(55.0, T_last + rng.uniform(-4.0, 4.0)))),
                (t_mid + 1800.0, T_last)]
        pts.sort()
        end = base.end_time_s / 3600.0 * rng.uniform(0.95, 1.05)
    elif fam == "U":
        Th, Tp = rng.uniform(62.0, 66.0), rng.uniform(78.0, 82.0)
        t1 = t0 + 2400.0
        t2 = t1 + rng.uniform(2.5, 3.5) * 3600.0
        pts = [(t1, Th), (t2, Th), (t2 + 1800.0, Tp)]
        end = (t2 + 1800.0) / 3600.0 + rng.uniform(0.5, 1.0)
    elif fam == "C":
        Tc = rng.uniform(46.0, 50.0)
        pts = [(t0 + 2400.0, Tc)]
        end = rng.uniform(7.5, 8.5)
    else:
        raise ValueError(f"unknown recipe family {fam!r}")
    return _programme(pts, end, name)


def recipe_library(seed: int, per_train_family: int = 8, per_holdout_family: int = 4) -> list[PlantRecipe]:
    """The recipe library of a data set: ``per_train_family`` recipes of each training family and
    ``per_holdout_family`` of each held-out family, drawn from ``seed``. Ids: family letter + number."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7EC1]))
    out: list[PlantRecipe] = []
    for families, n, split in ((TRAIN_FAMILIES, per_train_family, "train"),
                               (HOLDOUT_FAMILIES, per_holdout_family, "holdout")):
        for fam in families:
            for i in range(1, n + 1):
                rid = f"{fam}{i:02d}"
                interval = float(rng.choice(SAMPLE_INTERVALS_S)) if split == "train" else 1800.0
                out.append(PlantRecipe(rid, FAMILY_NAMES[fam], split,
                                       _family(fam, rng, f"{rid}-{FAMILY_NAMES[fam]}"), interval))
    return out
