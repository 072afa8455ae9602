"""Jacket utilities: the split-range controller output turned into a heat duty on the jacket fluid.

One controller output u in [-1, 1] drives two valves (split range):
    u in (0, 1]  : hot thermal-oil valve open u          -> heating duty  u * kA_heat * (T_hot - T_j)
    u in [-1, 0) : chilled-water valve open -u           -> cooling duty  u * kA_cool * (T_j - T_cold)
The duty is written against the supply temperatures, so the jacket can never be heated above the
oil supply nor cooled below the chilled water, whatever the controller asks: that is the
utility limit, and it is where the controller's anti-windup earns its keep.
"""

from __future__ import annotations

from plant_sim.config import Jacket


def split_range(u: float) -> tuple[float, float]:
    """(hot-oil valve, chilled-water valve) openings in [0, 1] for controller output u in [-1, 1]."""
    u = min(1.0, max(-1.0, u))
    return (u, 0.0) if u > 0.0 else (0.0, -u)


def utility_duty_W(u: float, T_jacket_K: float, j: Jacket) -> float:
    """Heat [W] the utilities put into the jacket fluid (negative: removed) at controller output u."""
    heat, cool = split_range(u)
    if heat > 0.0:
        return heat * j.kA_heat_W_per_K * (j.T_hot_supply_K - T_jacket_K)
    if cool > 0.0:
        return -cool * j.kA_cool_W_per_K * (T_jacket_K - j.T_cold_supply_K)
    return 0.0
