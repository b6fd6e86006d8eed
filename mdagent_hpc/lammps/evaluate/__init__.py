"""Judge a finished LAMMPS run from its log (and its script when known), rule by rule.

Every rule and threshold is explained in docs/evaluation.md. Statistics use the last part of each thermo block
(the "window": the last `window_fraction` of the rows, at least `min_window_rows`, never the first row).
What each run was meant to do (ensemble, thermostat target, timestep) comes from the commands the log echoes,
else from the script's commands, when the k-th `run`/`minimize` can be matched to the k-th thermo block (`runs`).
The rules: what LAMMPS said (`messages`), numbers that mean nothing (`physics`), equilibration and targets
(`equilibrium`); `observables` reads what the run measured.
"""

from __future__ import annotations

from mdagent_hpc.lammps.evaluate.equilibrium import check_equilibrium
from mdagent_hpc.lammps.evaluate.messages import check_messages
from mdagent_hpc.lammps.evaluate.observables import observables
from mdagent_hpc.lammps.evaluate.physics import (
    check_atoms,
    check_drift,
    check_neighbors,
    check_nonfinite,
    check_parameters,
    check_volume,
)
from mdagent_hpc.lammps.evaluate.runs import Run, ensemble_of, match_runs
from mdagent_hpc.lammps.evaluate.stats import window
from mdagent_hpc.lammps.evaluate.thresholds import EvaluationThresholds
from mdagent_hpc.lammps.log import LammpsLog, ThermoBlock
from mdagent_hpc.models import Evaluation, Finding, Grade, ParsedScript, Severity

__all__ = ["EvaluationThresholds", "evaluate", "observables"]


def _label(i: int, block: ThermoBlock) -> str:
    what = " ".join(block.command.split()) if block.command else ("minimize" if block.minimization else "run")
    return f"block {i + 1} ('{what}', log line {block.line})"


def _check_block(
    i: int, block: ThermoBlock, run: Run | None, log: LammpsLog, th: EvaluationThresholds, out: list[Finding]
) -> None:
    label = _label(i, block)
    check_nonfinite(label, block, out)
    check_atoms(label, block, run, log, out)
    if run is not None and run.kind != "minimize":
        check_parameters(label, run, out)
    check_neighbors(label, block, th, out)
    if block.minimization or (run is not None and run.kind == "minimize"):
        stop = block.min_stop or ""
        if "max iterations" in stop or "max force evaluations" in stop:
            out.append(
                Finding(
                    rule="minimize_not_converged",
                    severity=Severity.WARNING,
                    message=f"{label}: minimization stopped at its limit ({stop}), not at a tolerance",
                    hint="raise maxiter/maxeval of `minimize` or loosen etol/ftol",
                )
            )
        return
    if run is not None and run.kind != "run":
        return
    check_volume(label, block, run, th, out)
    w = window(block, th)
    if w is None:
        return
    natoms = block.atoms or log.atoms
    check_equilibrium(label, block, w, run, natoms, th, out)
    if run is not None and ensemble_of(run) == "nve":
        check_drift(label, block, run, natoms, log, th, out)


def _fold(findings: list[Finding], keep: int) -> list[Finding]:
    """Keep the first `keep` findings of each (rule, severity); count the rest in the last one kept."""
    seen: dict[tuple[str, str], list[Finding]] = {}
    out: list[Finding] = []
    for f in findings:
        group = seen.setdefault((f.rule, f.severity.value), [])
        if len(group) < keep:
            group.append(f)
            out.append(f)
        else:
            group.append(f)
    for group in seen.values():
        if len(group) > keep:
            last = group[keep - 1]
            last.message += f" (and {len(group) - keep} more like this)"
    return out


def _summary(log: LammpsLog) -> dict[str, float | int | str | None]:
    md = [b for b in log.blocks if not b.minimization and b.rows]
    last = md[-1] if md else (log.blocks[-1] if log.blocks else None)

    def final(name: str) -> float | None:
        if last is None or name not in last.columns or not last.rows:
            return None
        return last.column(name)[-1]

    perf = next((b.performance for b in reversed(log.blocks) if b.performance), None)
    return {
        "lammps_version": log.version,
        "units": log.units,
        "atoms": log.atoms,
        "blocks": len(log.blocks),
        "steps": sum(b.steps or 0 for b in log.blocks if not b.minimization),
        "final_temp": final("Temp"),
        "final_toteng": final("TotEng"),
        "final_press": final("Press"),
        "wall_time_s": log.total_wall_time,
        "ns_per_day": perf.ns_per_day if perf else None,
        "tau_per_day": perf.tau_per_day if perf else None,
        "timesteps_per_s": perf.timesteps_per_s if perf else None,
    }


def evaluate(
    log: LammpsLog, script: ParsedScript | None = None, *, thresholds: EvaluationThresholds | None = None
) -> Evaluation:
    """Grade a run: FAIL on any error finding, WARN on warnings, else PASS; reward in [0, 1]."""
    th = thresholds or EvaluationThresholds()
    findings: list[Finding] = []
    check_messages(log, findings)
    runs = match_runs(log, script, findings)
    for i, (block, run) in enumerate(zip(log.blocks, runs, strict=True)):
        _check_block(i, block, run, log, th, findings)
    findings = _fold(findings, th.max_findings_per_rule)
    severities = {f.severity for f in findings}
    if Severity.ERROR in severities:
        grade, reward = Grade.FAIL, 0.0
    elif Severity.WARNING in severities:
        warned = {f.rule for f in findings if f.severity == Severity.WARNING}
        grade, reward = Grade.WARN, 0.5 + 0.5 * th.warning_decay ** len(warned)
    else:
        grade, reward = Grade.PASS, 1.0
    return Evaluation(
        grade=grade, reward=reward, findings=findings, summary=_summary(log), observables=observables(log)
    )
