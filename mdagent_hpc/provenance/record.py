"""What is recorded about each run for queries: one flat, small dict (the `query` extra of the run's node).

The script fields (elements, pair styles, potentials, units, ensembles) describe the final script: the one that
passed, else the last one the model wrote. Grade, reward, findings and observables are those of the final
evaluation: the passed attempt's, else the last evaluated one's. Kept small (well under 2 kB) so PostgreSQL keeps
it in the row, uncompressed: a filter reads it without a detour.
"""

from __future__ import annotations

from mdagent_hpc.models import Evaluation, PotentialUse, Run, Severity

VERSION = 1  # bump when the fields change: `mdagent runs index` re-records the older ones
FIELDS = (
    "version",
    "kind",
    "task",
    "elements",
    "pair_styles",
    "potentials",
    "md5",
    "units",
    "ensembles",
    "site",
    "model",
    "user",
    "verdict",
    "grade",
    "reward",
    "attempts",
    "stop",
    "faults",
    "findings",
    "problems",
    "seconds",
    "sweep",
    "point",
    "template",
    "params",
    "obs",
)

# Integrators and thermostats that name the ensemble a script samples.
ENSEMBLES = {
    "nve",
    "nvt",
    "npt",
    "nph",
    "nve/limit",
    "langevin",
    "temp/berendsen",
    "temp/rescale",
    "temp/csvr",
    "press/berendsen",
    "nvt/sllod",
    "npt/asphere",
    "nvt/asphere",
    "nve/asphere",
    "rigid",
    "rigid/nvt",
    "rigid/npt",
    "nvk",
    "gld",
    "gle",
    "box/relax",
}


def final_attempt_with_script(run: Run):
    passed = next((a for a in run.attempts if a.passed), None)
    return passed or next((a for a in reversed(run.attempts) if a.script), None)


def final_evaluation(run: Run) -> Evaluation | None:
    return run.evaluation or next((a.evaluation for a in reversed(run.attempts) if a.evaluation), None)


def script_fields(script: str | None) -> dict:
    """Pair styles, units and ensembles a script uses (read the way LAMMPS reads it)."""
    if not script:
        return {"pair_styles": [], "units": None, "ensembles": []}
    from mdagent_hpc.lammps.parser import parse_text

    parsed = parse_text(script, "in.lammps")
    styles, ensembles, units = set(), set(), None
    for command in parsed.commands:
        name, args = command.name, command.args
        if name == "pair_style" and args:
            # hybrid: the sub-styles are the words that are not numbers (a keyword may slip in; rare)
            styles |= {a for a in args[1:] if a[:1].isalpha()} if args[0].startswith("hybrid") else {args[0]}
        elif name == "units" and args:
            units = args[0]
        elif name == "fix" and len(args) > 2 and args[2] in ENSEMBLES:
            ensembles.add(args[2])
        elif name == "minimize":
            ensembles.add("minimize")
    return {"pair_styles": sorted(styles), "units": units, "ensembles": sorted(ensembles)}


def _present(record: dict) -> dict:
    """Fields without a value are left out: a query on them cannot match, and an index skips them."""
    return {key: value for key, value in record.items() if value is not None}


def index_record(
    run: Run,
    potentials: list[PotentialUse],
    *,
    user: str | None,
    stop: str,
    elements: list[str],
    sweep: dict | None = None,
    params: dict | None = None,
) -> dict:
    """The recorded fields of a finished run. `elements`: those of the potentials, else those the task names."""
    final = final_attempt_with_script(run)
    evaluation = final_evaluation(run)
    fields = script_fields(final.script if final else None)
    units = fields["units"] or (evaluation.summary.get("units") if evaluation else None)
    model = next((a.usage.model for a in reversed(run.attempts) if a.usage.model), None)
    return _present(
        {
            "version": VERSION,
            "kind": "run",
            "task": run.task,
            "elements": sorted(set(elements)),
            "pair_styles": fields["pair_styles"],
            "potentials": sorted({p.name for p in potentials}),
            "md5": sorted({p.md5 for p in potentials if p.md5}),
            "units": units,
            "ensembles": fields["ensembles"],
            "site": run.site,
            "model": model,
            "user": user,
            "verdict": run.verdict,
            "grade": evaluation.grade.value if evaluation else None,
            "reward": evaluation.reward if evaluation else None,
            "attempts": len(run.attempts),
            "stop": stop,
            "faults": sorted({a.job.fault for a in run.attempts if a.job and a.job.fault}),
            "findings": sorted({f.rule for f in evaluation.findings if f.severity != Severity.INFO})
            if evaluation
            else [],
            "seconds": run.seconds,
            "sweep": sweep,
            "params": params or {},
            "obs": {k: v for k, v in (evaluation.observables if evaluation else {}).items() if _finite(v)},
        }
    )


def point_record(
    result: dict,
    *,
    task: str,
    template: str | None,
    sweep: dict,
    site: str | None,
    model: str | None,
    user: str | None,
    seconds: float | None,
) -> dict:
    """The recorded fields of one sweep point, from its record (`sweep.results.PointResult` as a dict): the
    sweep's task, the template's script fields, the point's values as `params`, its observables as `obs`."""
    fields = script_fields(template)
    from mdagent_hpc.llm.prompts import task_elements

    ok = bool(result.get("ok"))
    return _present(
        {
            "version": VERSION,
            "kind": "point",
            "task": task,
            "elements": sorted(set(task_elements(task))),
            "pair_styles": fields["pair_styles"],
            "potentials": [],
            "md5": [],
            "units": fields["units"],
            "ensembles": fields["ensembles"],
            "site": site,
            "model": model,
            "user": user,
            "verdict": "passed" if ok else "failed",
            "grade": result.get("grade"),
            "reward": None,
            "attempts": None,
            "stop": "passed" if ok else "failed",
            "faults": [],
            "findings": [],
            "problems": list(result.get("problems") or [])[:5],
            "seconds": result.get("seconds") if result.get("seconds") is not None else seconds,
            "sweep": sweep,
            "point": result.get("id"),
            "template": result.get("template"),
            "params": dict(result.get("vars") or {}),
            "obs": {k: v for k, v in (result.get("observables") or {}).items() if _finite(v)},
        }
    )


def _finite(value) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")
