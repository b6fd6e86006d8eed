"""How results look on a terminal and in `--json`: diagnostics, evaluations and agent runs (from `models.Run`)."""

from __future__ import annotations

import difflib

from mdagent_hpc.cli.main import out
from mdagent_hpc.models import Attempt, Diagnostic, Evaluation, Run, Severity, Stage

STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}

# The quantities `run`, `show` and `runs` print from Evaluation.observables, in this order, and their units in the
# unit styles that have named ones (lj is reduced: no units). `--json` has every observable.
QUANTITIES = ("temp", "press", "toteng", "pe", "ke", "vol", "density")
ENERGY = ("toteng", "pe", "ke")
UNITS = {
    "metal": {"temp": "K", "press": "bar", "energy": "eV", "vol": "Å³", "density": "g/cm³"},
    "real": {"temp": "K", "press": "atm", "energy": "kcal/mol", "vol": "Å³", "density": "g/cm³"},
    "si": {"temp": "K", "press": "Pa", "energy": "J", "vol": "m³", "density": "kg/m³"},
}


def print_diagnostics(diags: list[Diagnostic], indent: str = "") -> None:
    for d in diags:
        where = f"{d.file or ''}:{d.line}" if d.line else (d.file or "")
        out().print(
            f"{indent}[{STYLE[d.severity]}]{d.severity.value:7}[/] {where:18} [dim]{d.code}[/] {d.message}",
            highlight=False,
        )
        if d.command:
            out().print(f"{indent}        [dim]> {d.command[:160]}[/]", highlight=False)
        if d.hint:
            out().print(f"{indent}        hint: {d.hint}", highlight=False)


def print_evaluation(result: Evaluation) -> None:
    for f in result.findings:
        out().print(f"[{STYLE[f.severity]}]{f.severity.value:7}[/] [dim]{f.rule}[/] {f.message}", highlight=False)
        if f.hint and f.severity != Severity.INFO:
            out().print(f"        hint: {f.hint}", highlight=False)
    print_observables(result)
    color = {"pass": "green", "warn": "yellow", "fail": "red"}[result.grade.value]
    out().print(f"[bold {color}]{result.grade.value.upper()}[/] reward {result.reward:.2f}")


def format_observables(observables: dict[str, float], units: str | None = None) -> str:
    """`temp 801.3 K (mean 799.8 ± 12.1), press ...; 256 atoms` from an evaluation's observables."""
    named = UNITS.get(units or "", {})
    parts = []
    for q in QUANTITIES:
        if f"{q}_final" not in observables:
            continue
        unit = named.get("energy" if q in ENERGY else q)
        text = f"{q} {observables[f'{q}_final']:.5g}{' ' + unit if unit else ''}"
        if f"{q}_mean" in observables:
            spread = f" ± {observables[f'{q}_std']:.3g}" if f"{q}_std" in observables else ""
            text += f" (mean {observables[f'{q}_mean']:.5g}{spread})"
        parts.append(text)
    if "atoms" in observables:
        parts.append(f"{observables['atoms']:g} atoms")
    return ", ".join(parts)


def print_observables(evaluation: Evaluation | None) -> None:
    if evaluation is not None and evaluation.observables:
        units = evaluation.summary.get("units")
        out().print(
            f"observables{f' ({units} units)' if units else ''}: {format_observables(evaluation.observables, units)}",
            highlight=False,
        )


def print_run(run: Run) -> None:
    """The story of one run: the task, each attempt (script diff, what stopped it), verdict and observables."""
    out().print(f"[bold]task:[/] {run.task}", highlight=False)
    previous = None
    for attempt in run.attempts:
        out().rule(f"attempt {attempt.number}: reached {attempt.stage.value}")
        if attempt.script and previous:
            diff = difflib.unified_diff(
                previous.splitlines(), attempt.script.splitlines(), "previous", "this", lineterm=""
            )
            out().print("\n".join(diff) or "(same script)", highlight=False)
        elif attempt.script:
            out().print(attempt.script, highlight=False)
        previous = attempt.script or previous
        print_attempt_outcome(attempt)
    verdict = run.verdict
    color = {"passed": "green", "failed": "red"}.get(verdict, "yellow")
    grade = f", grade {run.evaluation.grade.value} (reward {run.evaluation.reward:.2f})" if run.evaluation else ""
    reason = f": {run.exit_message}" if run.exit_message and verdict != "passed" else ""
    print_observables(run.evaluation)
    out().print(
        f"[bold {color}]{verdict}[/]{grade} after {len(run.attempts)} attempt(s){reason}; pk {run.pk}", highlight=False
    )


def print_attempt_outcome(attempt: Attempt) -> None:
    if attempt.stage == Stage.GENERATE and not attempt.script:
        out().print("[bold red]generation failed[/]: no script to run, because:", highlight=False)
    shown = [d for d in attempt.diagnostics if d.severity != Severity.INFO or not attempt.passed]
    print_diagnostics(shown)
    if attempt.evaluation is not None:
        ev = attempt.evaluation
        out().print(f"evaluation: {ev.grade.value} reward {ev.reward:.2f}", highlight=False)
        for f in ev.findings:
            if f.severity != Severity.INFO:
                out().print(f"  {f.severity.value:7} {f.rule}: {f.message}", highlight=False)
        if not attempt.passed:  # the passed attempt's observables are the run's, printed at the end
            print_observables(ev)
    job = attempt.job
    if job is not None:
        fault = f"; {job.fault} ({job.action})" if job.fault else ""
        where = f" job {job.job_id}" if job.job_id else ""
        out().print(f"outputs ({job.site}{where}{fault}): {job.workdir or '-'}", highlight=False)


def run_json(run: Run) -> dict:
    """`run`, `show` and `demo --json`: the `Run` fields, plus the names earlier versions printed.

    Compatibility names: top-level `grade`, `reward`, `observables`; per attempt `attempt` (= number),
    `generate` {pk}, `preflight` {pk, ok, diagnostics}, `run` {pk, exit_status, workdir}, and `pk` in `evaluation`.
    """
    data = run.model_dump(mode="json")
    data["grade"] = run.evaluation.grade.value if run.evaluation else None
    data["reward"] = run.evaluation.reward if run.evaluation else None
    data["observables"] = run.observables
    for attempt, step in zip(run.attempts, data["attempts"], strict=True):
        step["attempt"] = attempt.number
        nodes = attempt.nodes
        if "generate" in nodes:
            step["generate"] = {"pk": nodes["generate"]}
        if "preflight" in nodes:
            blocked = attempt.stage in (Stage.PREFLIGHT, Stage.DRY_RUN)
            step["preflight"] = {
                "pk": nodes["preflight"],
                "ok": not blocked,
                "diagnostics": step["diagnostics"] if blocked else [],
            }
        if "run" in nodes:
            step["run"] = {
                "pk": nodes["run"],
                "exit_status": attempt.job.exit_status if attempt.job else None,
                "workdir": attempt.job.workdir if attempt.job else None,
            }
        if step.get("evaluation") is not None and "evaluate" in nodes:
            step["evaluation"]["pk"] = nodes["evaluate"]
    return data


def runs_rows(runs: list[Run]) -> list[dict]:
    """`runs --json`: one row per run."""
    return [
        {
            "pk": r.pk,
            "task": r.task,
            "verdict": r.verdict,
            "grade": r.evaluation.grade.value if r.evaluation else None,
            "attempts": len(r.attempts),
            "site": r.site,
            "ctime": r.ctime,
            "seconds": r.seconds,
            "observables": r.observables,
            "units": r.evaluation.summary.get("units") if r.evaluation else None,
        }
        for r in runs
    ]
