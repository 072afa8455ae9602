"""Every plot of the offline tools, and the helpers they share (headless backend, one way to save).

matplotlib is imported when a plot is drawn, never at import time, so the command line starts fast
and the modules that import this one stay usable without a display. Axes are in operator units
(mol/L, degC, h); the data stay in SI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twin_core.params import ModelParams
from twin_core.simulation import Trajectory, Twin

if TYPE_CHECKING:
    from twin_core.offline.batches import Batch
    from twin_core.offline.optimize import OptimizationResult
    from twin_core.offline.softsensor_replay import ReplayResult
    from twin_core.offline.study import StudyRow

C0 = 273.15
"""0 degC [K]: the offset of every degC axis and display."""
DPI = 120


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path) -> None:
    """Lay out, write (PNG at :data:`DPI`, or the format of the suffix) and close ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_trajectory(tr: Trajectory, path: str | Path, title: str = "") -> None:
    """Concentrations and temperatures against time, axes in mol/L, degC and h."""
    plt = pyplot()
    t_h = tr.t_s / 3600.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for col, label in zip(range(3), ("A", "B (product)", "C (impurity)"), strict=True):
        ax1.plot(t_h, tr.x[:, col] / 1000.0, label=label)
    ax1.set_ylabel("concentration [mol/L]")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(t_h, tr.T_K - C0, label="reactor T")
    ax2.plot(t_h, tr.T_jacket_K - C0, "--", label="jacket T_j")
    ax2.set_ylabel("temperature [degC]")
    ax2.set_xlabel("time [h]")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(title or tr.recipe.name)
    save(fig, path)


def plot_result(res: OptimizationResult, params: ModelParams, path: str | Path) -> None:
    """Jacket and reactor temperature and c_B of the optimised recipe and its baselines."""
    plt = pyplot()
    twin = Twin(params)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for c, color in zip((res.best_reactor_isothermal, res.best_constant_jacket, res.optimised),
                        ("tab:gray", "tab:blue", "tab:red"), strict=True):
        tr = twin.simulate(c.recipe, dt_out_s=30.0)
        ax1.plot(tr.t_s / 3600, tr.c_B / 1000, color=color, label=c.label)
        ax2.plot(tr.t_s / 3600, tr.T_K - C0, color=color, label=f"{c.label}: reactor")
        if c.recipe.mode == "jacket":
            ax2.plot(tr.t_s / 3600, tr.T_jacket_K - C0, "--", color=color, label=f"{c.label}: jacket")
    ax2.axhline(res.config.T_max_K - C0, color="k", lw=0.8, ls=":", label="T_max")
    ax1.set_ylabel("c_B [mol/L]")
    ax2.set_ylabel("temperature [degC]")
    ax2.set_xlabel("time [h]")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(f"Optimised recipe ({res.config.objective} objective)")
    save(fig, path)


def plot_study(rows: list[StudyRow], trs: list[Trajectory], path: str | Path) -> None:
    """c_B and reactor temperature against time for every recipe, plus yield vs impurity at the optimum."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    colors = plt.get_cmap("tab20")(np.arange(len(rows)) % 20)  # one colour per recipe on all three axes
    for r, tr, color in zip(rows, trs, colors, strict=True):
        style = "-" if r.mode == "reactor" else "--"
        axes[0].plot(tr.t_s / 3600, tr.c_B / 1000, style, color=color, label=r.name)
        axes[1].plot(tr.t_s / 3600, tr.T_K - C0, style, color=color)
        axes[2].scatter(100 * r.impurity_at_opt, 100 * r.yield_B_at_opt, color=color,
                        marker="o" if r.mode == "reactor" else "s")
        axes[2].annotate(r.name, (100 * r.impurity_at_opt, 100 * r.yield_B_at_opt), fontsize=6)
    axes[0].set(xlabel="time [h]", ylabel="c_B [mol/L]", title="product B")
    axes[1].set(xlabel="time [h]", ylabel="reactor temperature [degC]", title="temperature")
    axes[2].set(xlabel="impurity C at optimal stop [mol %]", ylabel="yield of B at optimal stop [%]",
                title="at the optimal stop")
    axes[0].legend(fontsize=6)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("Temperature-profile study (solid: reactor programme, dashed: jacket programme)")
    save(fig, path)


def plot_replay(batch: Batch, res: ReplayResult, path: str | Path, ol_hybrid: np.ndarray | None = None,
                ol_physics: np.ndarray | None = None) -> None:
    """Estimates of c_B, c_C and T with 95 % bands vs the truth; lab samples at their sample time
    (filled) joined to their arrival time (open); model health and alarms underneath."""
    from twin_core.estimation import IB, IC, IT, SoftSensorAlarm

    plt = pyplot()
    t_h = res.t_s / 3600.0
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 2, 1]})
    for ax, i, label, unit in ((axes[0], IB, "c_B (product)", "mol/L"), (axes[1], IC, "c_C (impurity)", "mol/L")):
        est, sd = res.x[:, i] / 1000.0, res.std[:, i] / 1000.0
        ax.fill_between(t_h, np.maximum(est - 1.96 * sd, 0.0), est + 1.96 * sd, alpha=0.25, label="95 % interval")
        ax.plot(t_h, est, label="soft sensor (live)")
        if batch.truth is not None:
            ax.plot(t_h, batch.truth[:, i] / 1000.0, "k--", lw=1, label="plant truth")
        if ol_hybrid is not None:
            ax.plot(t_h, ol_hybrid[:, i] / 1000.0, ":", label="open-loop hybrid")
        if ol_physics is not None:
            ax.plot(t_h, ol_physics[:, i] / 1000.0, ":", label="open-loop physics")
        col = 2 if i == IB else 3
        for ta, ts, *vals in batch.labs:
            v = vals[col - 2] / 1000.0
            ax.plot([ts / 3600.0, ta / 3600.0], [v, v], color="tab:red", lw=0.8, alpha=0.6)
            ax.plot(ts / 3600.0, v, "o", color="tab:red", ms=4)
            ax.plot(ta / 3600.0, v, "o", mfc="none", color="tab:red", ms=5)
        ax.plot([], [], "o", color="tab:red", ms=4, label="lab: sampled (filled) -> arrived (open)")
        ax.set_ylabel(f"{label} [{unit}]")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    ax = axes[2]
    ax.plot(t_h, batch.T_reactor_K - C0, ".", ms=2, color="0.5", label="measured T")
    ax.plot(t_h, res.x[:, IT] - C0, label="estimated T")
    if batch.truth is not None:
        ax.plot(t_h, batch.truth[:, 3] - C0, "k--", lw=1, label="true T")
    ax.plot(t_h, batch.T_jacket_K - C0, lw=0.8, label="jacket T_j")
    ax.set_ylabel("temperature [degC]")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[3]
    ax.step(t_h, res.health, where="post", label="health (0 good, 1 warning, 2 alarm)")
    for flag, m in ((SoftSensorAlarm.MODEL_MISMATCH, "x"), (SoftSensorAlarm.T_SENSOR_STUCK, "s"),
                    (SoftSensorAlarm.T_SENSOR_DRIFT, "^")):
        on = (res.alarms & int(flag)) != 0
        if on.any():
            ax.plot(t_h[on], np.full(on.sum(), 2.2), m, ms=3, label=flag.name)
    ax.set_ylim(-0.3, 2.6)
    ax.set_ylabel("health")
    ax.set_xlabel("time in batch [h]")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.suptitle(f"Soft sensor replay: batch {batch.batch_id} ({batch.recipe_id}, {batch.split})")
    save(fig, path)
