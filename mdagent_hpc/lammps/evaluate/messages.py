"""Rules on what LAMMPS said: its ERRORs and WARNINGs, the messages that mean the simulation broke, and whether the
run completed."""

from __future__ import annotations

import re

from mdagent_hpc.lammps.log import LammpsLog, ThermoBlock
from mdagent_hpc.models import Finding, Severity

# LAMMPS messages (ERROR or WARNING) that mean the simulation is broken, with what to change.
BROKEN = [
    (
        "lost_atoms",
        re.compile(r"Lost atoms"),
        "atoms flew out of the box: reduce the timestep, relax overlaps with `minimize` first, check units and "
        "potential parameters, or use `boundary` s/m if atoms may legitimately leave",
    ),
    (
        "bond_atoms_missing",
        re.compile(r"(Bond|Angle|Dihedral|Improper) atoms .*missing"),
        "a bonded partner moved too far (unstable dynamics): reduce the timestep, minimize first, or increase "
        "`comm_modify cutoff`",
    ),
    (
        "out_of_range_atoms",
        re.compile(r"Out of range atoms"),
        "atoms moved too far for PPPM/neighbor lists (unstable dynamics): reduce the timestep or minimize first",
    ),
    (
        "double_integration",
        re.compile(r"time integrated more than once"),
        "two integrators (e.g. fix nvt and fix nve) move the same atoms: keep one per atom",
    ),
    (
        "non_numeric",
        re.compile(r"Non-numeric (atom coords|pressure)"),
        "coordinates or pressure became NaN/inf (the simulation blew up): reduce the timestep, minimize first, "
        "check overlapping atoms and potential parameters",
    ),
]


def check_messages(log: LammpsLog, out: list[Finding]) -> None:
    for err in log.errors:
        text = f"LAMMPS ERROR at log line {err.line}: {err.message}"
        if err.last_input:
            text += f" (last input line: {err.last_input})"
        hint = next((h for _, pattern, h in BROKEN if pattern.search(err.message)), None)
        out.append(
            Finding(
                rule="lammps_error",
                severity=Severity.ERROR,
                message=text,
                hint=hint or f"fix the command `{err.last_input or '?'}`" + (f"; see {err.url}" if err.url else ""),
            )
        )
    messages = [(line, text, "ERROR") for line, text in ((e.line, e.message) for e in log.errors)]
    messages += [(line, text, "WARNING") for line, text in log.warnings]
    for rule, pattern, hint in BROKEN:
        hits = [(line, text, kind) for line, text, kind in messages if pattern.search(text)]
        if hits:
            line, text, kind = hits[0]
            out.append(
                Finding(
                    rule=rule,
                    severity=Severity.ERROR,
                    value=float(len(hits)),
                    message=f"{kind} at log line {line}: {text}",
                    hint=hint,
                )
            )
    if not log.completed:
        if log.errors:
            msg = f"the run stopped with an ERROR at log line {log.errors[0].line}"
            hint = "fix the error above and run again"
        elif log.blocks and not log.blocks[-1].finished:
            msg = (
                f"the log ends inside a run (last thermo step "
                f"{_last_step(log.blocks[-1])}): the job was killed or is still running"
            )
            hint = "check the job's wall-time and memory limits, or shorten the run / write restart files"
        else:
            msg = "no 'Total wall time' line: LAMMPS did not finish"
            hint = "check the job's wall-time and memory limits and its stderr"
        out.append(Finding(rule="completion", severity=Severity.ERROR, message=msg, hint=hint))
    elif not log.blocks:
        out.append(
            Finding(
                rule="no_thermo",
                severity=Severity.WARNING,
                message="LAMMPS finished but printed no thermo output (no run or minimize)",
                hint="add a `run` (and `thermo N`) if the task needs dynamics",
            )
        )
    others = sorted({text for _, text in log.warnings if not any(p.search(text) for _, p, _ in BROKEN)})
    if others:
        out.append(
            Finding(
                rule="lammps_warnings",
                severity=Severity.INFO,
                value=float(len(log.warnings)),
                message=f"{len(log.warnings)} WARNING line(s), e.g.: " + " | ".join(others[:5]),
            )
        )


def _last_step(block: ThermoBlock) -> str:
    if block.rows and "Step" in block.columns:
        return f"{block.column('Step')[-1]:.0f}"
    return "?"
