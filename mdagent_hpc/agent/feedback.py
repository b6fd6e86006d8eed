"""What the model is told about a failed attempt, for each kind of failure. Pure functions.

Each failure becomes diagnostics (what went wrong, where, and a hint); `feedback_text` renders them, with the
evaluation when LAMMPS ran, into the text the next prompt shows under the attempt's script.
"""

from __future__ import annotations

from mdagent_hpc.agent import memory as failure_memory
from mdagent_hpc.agent.loop import LLM_UNAVAILABLE
from mdagent_hpc.models import Diagnostic, Evaluation, Job, Severity


def problem(code: str, message: str, hint: str | None = None) -> Diagnostic:
    return Diagnostic(severity=Severity.ERROR, code=code, message=message, hint=hint)


def endpoint_failed(kind: str, message: str) -> Diagnostic:
    """The endpoint gave no answer at all (unreachable, auth, timeout, server error): the loop stops."""
    return problem(LLM_UNAVAILABLE, f"{kind}: {message}")


def no_script(problems: list[Diagnostic]) -> list[Diagnostic]:
    """The answer held no usable script: what the reader of the answer found, or that there was nothing."""
    return problems or [problem("generate.no_script", "the answer held no script")]


def dry_run_job_failed(state: str) -> Diagnostic:
    """The dry-run job died before LAMMPS wrote anything (`state`: the job's exit message or process state)."""
    return problem("preflight.job", f"the dry-run job failed before LAMMPS wrote anything: {state}")


def run_failed(state: str) -> Diagnostic:
    """The LAMMPS job died before producing output, for no scheduler fault we know of."""
    return problem("run.failed", f"the LAMMPS job failed before producing output: {state}")


def run_fault(job: Job, message: str, restart_files: list[str], walltime_s: float | None) -> Diagnostic:
    """A job the scheduler cut short (`job.fault`) and the site's policy did not cure; `message` says what happened.

    With restart files handed on (policy `restart`), the model is told to continue from them; a wall-time cut
    without them asks for restart files or fewer steps.
    """
    hint = None
    if restart_files:
        hint = (
            f"the restart file(s) {', '.join(restart_files)} it wrote are in the run folder of the next run: "
            "continue from the newest with read_restart, and run only the steps that remain"
        )
    elif job.fault == "walltime":
        hint = "write restart files (`restart N file.*`) so a run cut off can continue, or ask for fewer steps" + (
            f"; the wall time is {walltime_s:g} s" if walltime_s else ""
        )
    return problem(f"run.{job.fault or 'fault'}", message, hint)


def evaluation_text(evaluation: Evaluation) -> str:
    """The grade, reward and every finding that is not mere information, with its hint."""
    findings = "; ".join(
        f"{f.rule}: {f.message}" + (f" (hint: {f.hint})" if f.hint else "")
        for f in evaluation.findings
        if f.severity != Severity.INFO
    )
    return f"grade {evaluation.grade.value}, reward {evaluation.reward:.2f}. {findings}".strip()


def feedback_text(
    diagnostics: list[Diagnostic],
    evaluation: Evaluation | None = None,
    memory: list[failure_memory.Lesson] | None = None,
    *,
    script: str | None = None,
) -> str:
    """What the next prompt says about an attempt, below its script; with `memory`, the past fixes of the same
    kind of failure (agent/memory.py). With `script` (the one the prompt shows, numbered), a command is quoted
    again only where LAMMPS saw something else than that line (variables substituted, an included file)."""
    script_lines = (script or "").splitlines()
    lines = []
    if diagnostics:
        lines.append("Problems found:")
        for d in diagnostics:
            lines.append(d.render())
            if d.command and not _quoted(d, script_lines):
                lines.append(f"    command: {d.command}")
    if evaluation is not None:
        lines.append(f"Evaluation: {evaluation_text(evaluation)}")
    first = failure_memory.first_error(diagnostics, evaluation)
    if memory and first is not None and (past := failure_memory.render(failure_memory.recall(memory, first))):
        lines.append(past)
    return "\n".join(lines)


def _quoted(d: Diagnostic, script_lines: list[str]) -> bool:
    """The diagnostic's command is exactly its line of the shown script (so the model sees it there)."""
    if not d.line or d.line > len(script_lines) or not d.command:
        return False
    return script_lines[d.line - 1].split() == d.command.split()
