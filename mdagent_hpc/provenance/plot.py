"""Thermo quantities against step (or time) for every run segment of a LAMMPS log, as a PNG (matplotlib).

The segments follow each other on one axis (cumulative steps or time), whatever `reset_timestep` did between them.
"""

from __future__ import annotations

import math
from pathlib import Path

from mdagent_hpc.lammps.log import LammpsLog

AXES = ("Time", "Step")  # the x axis: time when the log has it, else the step
NOT_PLOTTED = {"Step", "Time", "Elapsed", "Elaplong", "CPU", "CPULeft", "T/CPU", "S/CPU", "TPCPU", "SPCPU"}


def quantities(log: LammpsLog) -> list[str]:
    """The thermo columns worth a panel, in the order the log first prints them."""
    seen: list[str] = []
    for block in log.blocks:
        seen += [c for c in block.columns if c not in NOT_PLOTTED and c not in seen]
    return seen


def continuous(segments: list[list[float]]) -> list[list[float]]:
    """Each segment's x values shifted to start where the one before ended: a `reset_timestep` (or a step
    jump) between runs would otherwise draw the segments over each other."""
    shifted: list[list[float]] = []
    for x in segments:
        offset = shifted[-1][-1] - x[0] if shifted and x and shifted[-1] else 0.0
        shifted.append([v + offset for v in x])
    return shifted


def plot_thermo(log: LammpsLog, out: Path, title: str) -> Path:
    """One panel per quantity, one line per run segment (run or minimize), the segments one after the other;
    returns `out`.

    Raises ValueError when the log has no thermo rows.
    """
    blocks = [b for b in log.blocks if b.rows]
    names = quantities(log)
    if not blocks or not names:
        raise ValueError("the log has no thermo output to plot")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    x_name = "Time" if all("Time" in b.columns for b in blocks) else "Step"
    xs = continuous([b.column(x_name) for b in blocks])
    restarted = any(not math.isclose(x[0], b.column(x_name)[0], abs_tol=1e-9) for x, b in zip(xs, blocks, strict=True))
    columns = 2 if len(names) > 3 else 1
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 2.3 * rows + 0.8), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for i, (block, x) in enumerate(zip(blocks, xs, strict=True), 1):
            if name not in block.columns:
                continue
            what = "minimize" if block.minimization else f"run {block.steps}" if block.steps else "run"
            ax.plot(x, block.column(name), lw=1.2, label=f"segment {i} ({what})")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax in list(axes.flat[: len(names)])[-columns:]:  # the lowest panel of each column
        units = f"{log.units} units" if log.units and x_name == "Time" else ""
        cumulative = "cumulative over segments" if restarted else ""
        what = ", ".join(w for w in (units, cumulative) if w)
        ax.set_xlabel(x_name + (f" ({what})" if what else ""))
    if len(blocks) > 1:
        axes.flat[0].legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
