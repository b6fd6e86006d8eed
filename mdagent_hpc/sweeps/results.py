"""What a sweep reports: observables per point with block-average uncertainties, the table, the plot. Pure.

A point's observables come from its production segment: the last MD thermo block of its log, rows after the first
(the starting state). A mean's uncertainty is the standard error of `blocks` contiguous block means, so correlated
neighbouring rows do not make it look smaller than it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from mdagent_hpc.lammps.evaluate import evaluate
from mdagent_hpc.lammps.log import LammpsLog, ThermoBlock
from mdagent_hpc.lammps.parser import ScriptError, parse_text
from mdagent_hpc.models import Grade, Severity
from mdagent_hpc.sweeps.spec import Observable, Parameter, Point, SweepProposal, Value

if TYPE_CHECKING:
    import pandas


class PointResult(BaseModel):
    """One point as recorded in provenance: its values, whether it passed, its observables and their errors."""

    id: str
    vars: dict[str, Value]
    ok: bool
    grade: str
    problems: list[str] = Field(default_factory=list, description="why the point failed, for the agent and the user")
    observables: dict[str, float | None] = Field(default_factory=dict)
    errors: dict[str, float | None] = Field(default_factory=dict, description="block-average standard errors")
    rows: int = Field(0, description="thermo rows in the production segment")
    seconds: float | None = Field(None, description="LAMMPS wall time")
    template: int = Field(1, description="which template (1: the first, 2: after one correction, ...)")


def block_average(values: list[float], blocks: int) -> tuple[float, float | None]:
    """(mean, standard error of the block means); no error with fewer rows than blocks."""
    mean = sum(values) / len(values)
    if len(values) < blocks:
        return mean, None
    size = len(values) // blocks
    means = [sum(values[i * size : (i + 1) * size]) / size for i in range(blocks)]
    spread = sum((m - sum(means) / blocks) ** 2 for m in means) / (blocks - 1)
    return mean, math.sqrt(spread / blocks)


def production(log: LammpsLog) -> ThermoBlock | None:
    """The last MD (not minimization) thermo block with rows."""
    md = [b for b in log.blocks if not b.minimization and b.rows and b.columns]
    return md[-1] if md else None


def measure(block: ThermoBlock, observable: Observable) -> tuple[float | None, float | None, str | None]:
    """(value, error, problem) of one observable over a production block."""
    if observable.header not in block.columns:
        return (
            None,
            None,
            (
                f"the production run prints no {observable.column} column (thermo columns: "
                f"{' '.join(block.columns)}); add it to thermo_style custom"
            ),
        )
    values = block.column(observable.header)
    body = values[1:] or values
    if not all(math.isfinite(v) for v in body):
        return None, None, f"{observable.column} is not finite during the production run"
    if observable.stat == "mean":
        value, error = block_average(body, observable.blocks)
        return value, error, None
    picked = {"final": values[-1], "min": min(body), "max": max(body)}[observable.stat]
    return picked, None, None


def point_result(
    point: Point, log: LammpsLog, template: str, observables: list[Observable], template_number: int = 1
) -> PointResult:
    """Judge one point's log (the evaluator's rules, with the point's variable values) and read its observables."""
    try:
        parsed = parse_text(template, "in.lammps", variables={k: str(v) for k, v in point.vars.items()})
    except ScriptError:
        parsed = None
    evaluation = evaluate(log, parsed)
    problems = [f"{f.rule}: {f.message}" for f in evaluation.findings if f.severity == Severity.ERROR]
    values: dict[str, float | None] = {}
    errors: dict[str, float | None] = {}
    block = production(log)
    if block is None:
        problems.append("no thermo output from an MD run: nothing to read the observables from")
    else:
        for observable in observables:
            values[observable.name], errors[observable.name], problem = measure(block, observable)
            if problem:
                problems.append(problem)
    ok = evaluation.grade != Grade.FAIL and not problems
    return PointResult(
        id=point.id,
        vars=point.vars,
        ok=ok,
        grade=evaluation.grade.value,
        problems=problems,
        observables=values,
        errors=errors,
        rows=max(len(block.rows) - 1, 0) if block else 0,
        seconds=_seconds(log),
        template=template_number,
    )


def _seconds(log) -> float | None:
    """LAMMPS's wall time: its total (whole seconds) or, when longer, the sum of its runs' loop times."""
    loops = [b.loop_time for b in log.blocks if b.loop_time is not None]
    times = [t for t in (log.total_wall_time, sum(loops) if loops else None) if t is not None]
    return max(times, default=None)


# -- the table and the plot --------------------------------------------------------------------------------------
def table(spec: SweepProposal, results: list[PointResult]) -> pandas.DataFrame:
    """One row per point in sweep order: the swept values, ok, each observable and its error (`NAME_err`)."""
    import pandas

    rows = []
    for r in results:
        row = {"point": r.id, **r.vars, "ok": r.ok}
        for o in spec.observables:
            row[o.name] = r.observables.get(o.name)
            row[f"{o.name}_err"] = r.errors.get(o.name)
        row["problems"] = "; ".join(r.problems)
        rows.append(row)
    columns = [
        "point",
        *(p.name for p in spec.parameters),
        "ok",
        *(c for o in spec.observables for c in (o.name, f"{o.name}_err")),
        "problems",
    ]
    frame = pandas.DataFrame(rows, columns=columns)
    return frame.sort_values([p.name for p in spec.parameters], kind="stable").reset_index(drop=True)


def table_json(frame: pandas.DataFrame) -> list[dict]:
    """The table as JSON-safe records (NaN -> None)."""
    import json

    return json.loads(frame.to_json(orient="records"))


def plot(spec: SweepProposal, frame: pandas.DataFrame, path: Path | str) -> Path:
    """PNG: each observable against the parameter with the most values, with error bars; one line per value of the
    next multi-valued parameter; single-valued parameters (and the first value of any further one) in the title."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    multi = sorted((p for p in spec.parameters if p.count > 1), key=lambda p: -p.count)  # stable: ties keep order
    x = multi[0] if multi else spec.parameters[0]
    group = multi[1] if len(multi) > 1 else None
    held = {p.name: p.expanded()[0] for p in spec.parameters if p not in (x, group)}  # one value drawn of each
    data = frame[frame["ok"]]
    if held:
        data = data[(data[list(held)] == list(held.values())).all(axis=1)]
    n = len(spec.observables)
    figure, axes = pyplot.subplots(n, 1, figsize=(6.4, 3.2 * n), squeeze=False)
    for ax, observable in zip(axes[:, 0], spec.observables, strict=True):
        series = [(None, data)] if group is None else [(v, data[data[group.name] == v]) for v in group.expanded()]
        for value, part in series:
            if part.empty:
                continue
            part = part.sort_values(x.name)
            errors = part[f"{observable.name}_err"].astype(float)
            ax.errorbar(
                part[x.name].astype(float),
                part[observable.name].astype(float),
                yerr=None if errors.isna().all() else errors.fillna(0),
                marker="o",
                capsize=3,
                label=None if value is None else _setting(group, value),
            )
        ax.set_xlabel(x.label())
        ax.set_ylabel(observable.label())
        ax.grid(alpha=0.3)
        if group is not None:
            ax.legend(fontsize="small")
    task = spec.task if len(spec.task) <= 70 else spec.task[:67] + "..."
    fixed = ", ".join(
        _setting(p, held[p.name]) + (f" (first of {p.count})" if p.count > 1 else "")
        for p in spec.parameters
        if p.name in held
    )
    axes[0, 0].set_title(f"{task}\n{fixed}" if fixed else task, fontsize="small")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _setting(parameter: Parameter, value: Value) -> str:
    return f"{parameter.name} = {value} {parameter.units}".rstrip()


class SweepRun(BaseModel):
    """One sweep as a user reads it: progress, verdict, the table rows and where the files are."""

    pk: int
    uuid: str
    task: str
    site: str = "local"
    engine: str
    state: str | None = Field(None, description="AiiDA process state: created, waiting, running, finished, ...")
    verdict: str = Field("running", description="running, passed (every point), failed")
    exit_status: int | None = None
    exit_message: str | None = None
    ctime: str
    seconds: float | None = None
    points_total: int = 0
    points_done: int = Field(0, description="points that passed")
    points_failed: int = 0
    points_running: int = 0
    eta_s: float | None = Field(None, description="seconds left, from the points done so far")
    llm_calls: int = Field(0, description="model answers asked for (template and corrections)")
    template: str | None = Field(None, description="the last template that passed")
    rows: list[dict] = Field(default_factory=list, description="the results table, one row per point")
    files: dict[str, str] = Field(default_factory=dict, description="table CSV/JSON and plot PNG, once exported")
    spec: dict = Field(default_factory=dict, description="the spec it ran (without recorded answers): resume runs it")


def eta(total: int, finished: int, running: int, elapsed_s: float, concurrency: int) -> float | None:
    """Seconds left: the time per finished point so far, times the rounds of `concurrency` points still to run."""
    if finished == 0 or finished >= total:
        return None if finished == 0 else 0.0
    per_round = elapsed_s / math.ceil(finished / max(concurrency, 1))
    return per_round * math.ceil((total - finished) / max(concurrency, 1))
