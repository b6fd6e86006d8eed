"""Statistics over thermo columns: the window where they are taken, means, spreads and linear trends."""

from __future__ import annotations

import math

from mdagent_hpc.lammps.evaluate.thresholds import EvaluationThresholds
from mdagent_hpc.lammps.log import ThermoBlock


def window(block: ThermoBlock, th: EvaluationThresholds) -> slice | None:
    """The last `window_fraction` of a block's rows, at least `min_window_rows`, never its first row; None when the
    block is too short for statistics (or finished without a step)."""
    n = len(block.rows)
    size = max(math.ceil(th.window_fraction * n), th.min_window_rows)
    if n - 1 < size or not block.steps and block.finished:
        return None
    return slice(n - size, n)


def mean(v: list[float]) -> float:
    return sum(v) / len(v)


def std(v: list[float]) -> float:
    m = mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


def fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x: (slope b, standard error of b, residual std)."""
    mx, my = mean(x), mean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return 0.0, math.inf, 0.0
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    resid = [b - my - slope * (a - mx) for a, b in zip(x, y, strict=True)]
    rss = sum(r * r for r in resid)
    se = math.sqrt(rss / max(len(x) - 2, 1) / sxx)
    return slope, se, math.sqrt(rss / len(x))


def first_column(block: ThermoBlock, *names: str) -> list[float] | None:
    for name in names:
        if name in block.columns:
            return block.column(name)
    return None


def finite(values: list[float] | None) -> bool:
    return values is not None and all(math.isfinite(v) for v in values)
