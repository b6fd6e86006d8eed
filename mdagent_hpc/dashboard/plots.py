"""Thermo plots as PNG: each quantity against the step, one line per run segment (matplotlib, no pyplot state)."""

from __future__ import annotations

import io

from mdagent_hpc.lammps.log import ThermoBlock

# the columns worth a panel, in this order; others fill up to MAX_PANELS
PREFERRED = ("Temp", "TotEng", "PotEng", "E_pair", "Press", "Volume", "Density")
SKIP = {"Step", "Elapsed", "Time", "CPU", "CPULeft", "TimeoutLeft", "Atoms"}
MAX_PANELS = 4


def panels(blocks: list[ThermoBlock]) -> list[str]:
    """The columns to draw: those the blocks have, preferred ones first."""
    present = [c for b in blocks for c in b.columns if c not in SKIP]
    ordered = [c for c in PREFERRED if c in present] + [c for c in dict.fromkeys(present) if c not in PREFERRED]
    return ordered[:MAX_PANELS]


def thermo_png(blocks: list[ThermoBlock], title: str) -> bytes:
    from matplotlib.figure import Figure

    names = panels(blocks)
    fig = Figure(figsize=(8, 1.2 + 1.9 * max(1, len(names))), dpi=90, layout="constrained")
    axes = fig.subplots(max(1, len(names)), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(title)
    if not names:
        axes[0].text(0.5, 0.5, "no thermo output", ha="center", va="center", transform=axes[0].transAxes)
    for ax, name in zip(axes, names, strict=False):
        for i, block in enumerate(blocks):
            if name in block.columns:
                ax.plot(
                    block.column("Step"),
                    block.column(name),
                    marker="." if len(block.rows) < 30 else None,
                    label=f"segment {i + 1}" + (f": {block.command}" if block.command else ""),
                )
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    if len(blocks) > 1 and names:
        axes[0].legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def sweep_png(xs: list[float], series: dict[str, list[float | None]], xlabel: str, title: str) -> bytes:
    """One panel per observable against the sweep parameter."""
    from matplotlib.figure import Figure

    names = list(series)[:MAX_PANELS] or ["(no observables)"]
    fig = Figure(figsize=(8, 1.2 + 1.9 * len(names)), dpi=90, layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(title)
    for ax, name in zip(axes, names, strict=True):
        points = [(x, y) for x, y in zip(xs, series.get(name, []), strict=False) if y is not None]
        if points:
            ax.plot(*zip(*sorted(points), strict=True), marker="o")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(xlabel)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
