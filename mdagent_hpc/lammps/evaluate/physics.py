"""Rules that say a run's numbers mean nothing: non-finite values, atoms lost, no or too many neighbors, a box that
exploded or collapsed, energy not conserved in NVE, implausible timesteps and fix parameters."""

from __future__ import annotations

import math

from mdagent_hpc.lammps.evaluate.runs import Run, off_equilibrium, removes_atoms
from mdagent_hpc.lammps.evaluate.stats import finite, first_column, fit, mean
from mdagent_hpc.lammps.evaluate.thresholds import EvaluationThresholds
from mdagent_hpc.lammps.log import LammpsLog, ThermoBlock
from mdagent_hpc.lammps.units import BOLTZMANN, DEFAULT_TIMESTEP, TIME_UNIT, fix_parameter_problems, timestep_problem
from mdagent_hpc.models import Finding, Severity

# Columns whose non-finite value means the simulation blew up (others: one quantity is undefined).
KEY_COLUMNS = {"TotEng", "Temp", "Press", "PotEng", "E_pair", "KinEng", "Volume", "Density"}


def check_nonfinite(label: str, block: ThermoBlock, out: list[Finding]) -> None:
    found: dict[bool, list[str]] = {True: [], False: []}  # key column? -> "Temp = nan at step 3"
    for j, name in enumerate(block.columns):
        bad = next((row for row in block.rows if not math.isfinite(row[j])), None)
        if bad is not None:
            step = f" at step {bad[0]:.0f}" if block.columns[0] == "Step" else ""
            found[name in KEY_COLUMNS].append(f"{name} = {bad[j]}{step}")
    if found[True]:
        out.append(
            Finding(
                rule="nan",
                severity=Severity.ERROR,
                value=float(len(found[True])),
                message=f"{label}: non-finite thermo values: " + ", ".join(found[True]),
                hint="the simulation blew up or atoms overlap: minimize first, reduce the timestep, "
                "check the potential and units",
            )
        )
    if found[False]:
        out.append(
            Finding(
                rule="nan_column",
                severity=Severity.WARNING,
                value=float(len(found[False])),
                message=f"{label}: non-finite thermo values: " + ", ".join(found[False]),
                hint="a thermo quantity is undefined (e.g. a compute over an empty group or a "
                "division by zero in a variable)",
            )
        )


def check_neighbors(label: str, block: ThermoBlock, th: EvaluationThresholds, out: list[Finding]) -> None:
    stats = block.neighbors
    if stats is None:
        return
    if stats.dangerous_builds:
        out.append(
            Finding(
                rule="dangerous_builds",
                severity=Severity.WARNING,
                value=stats.dangerous_builds,
                threshold=0,
                hint="use `neigh_modify every 1 delay 0 check yes` or a larger skin",
                message=f"{label}: {stats.dangerous_builds} dangerous neighbor list builds (atoms "
                "may have missed interactions)",
            )
        )
    per_atom = stats.neighs_per_atom
    if per_atom is not None and per_atom == 0 and (block.atoms or 0) > 1:
        out.append(
            Finding(
                rule="no_neighbors",
                severity=Severity.WARNING,
                value=0.0,
                message=f"{label}: 0 neighbors per atom: atoms do not interact",
                hint="the pair cutoff is shorter than the atom spacing (check units, lattice "
                "constant and pair_coeff cutoffs)",
            )
        )
    elif per_atom is not None and per_atom > th.max_neighs_per_atom:
        out.append(
            Finding(
                rule="too_many_neighbors",
                severity=Severity.WARNING,
                value=per_atom,
                threshold=th.max_neighs_per_atom,
                message=f"{label}: {per_atom:.0f} neighbors per atom",
                hint="the cutoff is very long or the system collapsed; check the pair cutoff and density",
            )
        )


def check_volume(label: str, block: ThermoBlock, run: Run | None, th: EvaluationThresholds, out: list[Finding]) -> None:
    deforming = run is not None and off_equilibrium(run)
    for name in ("Volume", "Density"):
        values = [v for v in (first_column(block, name) or []) if math.isfinite(v)]
        if not values:
            continue
        if name == "Volume" and min(values) <= 0:
            out.append(
                Finding(
                    rule="volume",
                    severity=Severity.ERROR,
                    value=min(values),
                    threshold=0.0,
                    message=f"{label}: Volume became {min(values):g}",
                    hint="the box collapsed: check the barostat settings and the timestep",
                )
            )
            continue
        positive = [v for v in values if v > 0]
        jumps = [max(a / b, b / a) for a, b in zip(positive, positive[1:], strict=False)]
        if jumps and max(jumps) > th.volume_jump_factor and not deforming:
            out.append(
                Finding(
                    rule="volume_jump",
                    severity=Severity.ERROR,
                    value=max(jumps),
                    threshold=th.volume_jump_factor,
                    message=f"{label}: {name} changed by a factor {max(jumps):.2f} between two thermo outputs "
                    "(box exploded or collapsed)",
                    hint="use a larger barostat damping (Pdamp ~ 1000 timesteps), start closer to the right "
                    "density, or equilibrate in NVT first",
                )
            )
        elif positive and max(positive) / min(positive) > th.volume_change_factor and not deforming:
            ratio = max(positive) / min(positive)
            out.append(
                Finding(
                    rule="volume_change",
                    severity=Severity.WARNING,
                    value=ratio,
                    threshold=th.volume_change_factor,
                    message=f"{label}: {name} varies by a factor {ratio:.2f}",
                    hint="check that the starting density is sensible for this system",
                )
            )


def check_drift(
    label: str,
    block: ThermoBlock,
    run: Run | None,
    natoms: int | None,
    log: LammpsLog,
    th: EvaluationThresholds,
    out: list[Finding],
) -> None:
    etot, steps, temp = first_column(block, "TotEng"), first_column(block, "Step"), first_column(block, "Temp")
    if not (finite(etot) and steps and natoms) or len(steps) - 1 < th.min_window_rows:
        return
    units = (run.units if run else None) or block.units or log.units or "lj"
    if units not in DEFAULT_TIMESTEP:
        return
    dt = (run.timestep if run else None) or block.timestep or DEFAULT_TIMESTEP[units]
    norm = run.norm if run and run.norm is not None else units == "lj"
    # Row 0 is the state before the first step; the energy there may not be on the integrator's trajectory.
    t = [s * dt for s in steps[1:]]
    e = [v if norm else v / natoms for v in etot[1:]]
    slope, se, _ = fit(t, e)
    tunit = TIME_UNIT[units]
    text = f"{label}: NVE energy drift {slope:+.3g} energy/atom/{tunit}"
    mean_t = mean(temp[1:]) if finite(temp) else 0.0
    if mean_t <= 0:
        out.append(
            Finding(
                rule="energy_drift",
                severity=Severity.INFO,
                value=abs(slope),
                message=text + " (no temperature to compare it with)",
            )
        )
        return
    kt = BOLTZMANN[units] * mean_t
    limit = th.nve_drift_kt * kt / (1000 * DEFAULT_TIMESTEP[units])
    in_kt = abs(slope) * 1000 * DEFAULT_TIMESTEP[units] / kt
    text += f" = {in_kt:.2g} kT per 1000 default timesteps"
    significant = abs(slope) > 2 * se
    if abs(slope) > th.nve_drift_fail_factor * limit and significant and len(t) >= 2 * th.min_window_rows:
        severity = Severity.ERROR
    elif abs(slope) > limit and significant:
        severity = Severity.WARNING
    else:
        severity = Severity.INFO
    out.append(
        Finding(
            rule="energy_drift",
            severity=severity,
            value=abs(slope),
            threshold=limit,
            message=text + ("" if severity == Severity.INFO else f" (limit {th.nve_drift_kt:g})"),
            hint=None
            if severity == Severity.INFO
            else f"energy is not conserved: reduce the timestep (now {dt:g} {tunit}), use "
            "`neigh_modify every 1 delay 0 check yes`, or a smooth (shifted) pair cutoff",
        )
    )


def check_atoms(label: str, block: ThermoBlock, run: Run | None, log: LammpsLog, out: list[Finding]) -> None:
    """Atoms at the end of a run vs at its start, unless a fix removes atoms on purpose."""
    if block.atoms is None or block.atoms_start is None or block.atoms >= block.atoms_start:
        return
    # run not known: any removing fix anywhere in the echo excuses it
    commands = list(run.fixes.values()) if run is not None else [text.split() for _, text in log.commands]
    if removes_atoms(commands):
        return
    lost = block.atoms_start - block.atoms
    out.append(
        Finding(
            rule="atoms_not_conserved",
            severity=Severity.ERROR,
            value=float(lost),
            threshold=0.0,
            message=f"{label}: {lost} of {block.atoms_start} atoms disappeared during the run "
            f"({block.atoms} at its end) and no command removes atoms on purpose",
            hint="atoms were lost (`thermo_modify lost ignore` hides it): reduce the timestep, "
            "minimize first, check units and potential parameters; use `boundary` s/m if atoms "
            "may legitimately leave, or remove them on purpose (`delete_atoms`, `fix evaporate`)",
        )
    )


def check_parameters(label: str, run: Run, out: list[Finding]) -> None:
    units = run.units or "lj"
    dt = run.timestep or DEFAULT_TIMESTEP.get(units)
    problems = [p for p in [timestep_problem(units, run.timestep)] if p] if run.timestep is not None else []
    problems += [p for words in run.fixes.values() for p in fix_parameter_problems(words, dt)]
    for problem in problems:
        out.append(
            Finding(
                rule="implausible_parameter",
                severity=Severity.ERROR,
                message=f"{label}: {problem}",
                hint="the run finished but its numbers mean nothing: fix the setting and run again",
            )
        )
