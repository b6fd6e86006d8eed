"""Rules on the last rows of an MD block (the window): still drifting, fluctuating too much, off the thermostat's or
barostat's target."""

from __future__ import annotations

import math

from mdagent_hpc.lammps.evaluate.runs import Run, barostat_target, ensemble_of, off_equilibrium, thermostat_target
from mdagent_hpc.lammps.evaluate.stats import finite, first_column, fit, mean, std
from mdagent_hpc.lammps.evaluate.thresholds import EvaluationThresholds
from mdagent_hpc.lammps.log import ThermoBlock
from mdagent_hpc.models import Finding, Severity


def check_equilibrium(
    label: str,
    block: ThermoBlock,
    w: slice,
    run: Run | None,
    natoms: int | None,
    th: EvaluationThresholds,
    out: list[Finding],
) -> None:
    """The rules over the window `w` (see `stats.window`) of an MD block."""
    steps = first_column(block, "Step")
    x = steps[w] if steps else [float(k) for k in range(len(block.rows))][w]
    temp, press = first_column(block, "Temp"), first_column(block, "Press")
    ensemble = ensemble_of(run) if run else None
    thermostat, t_target, t_note = thermostat_target(run) if run else (False, None, None)
    barostat, p_target = barostat_target(run) if run else (False, None)
    t_ramp = t_target is not None and t_target[0] != t_target[1]
    p_ramp = p_target is not None and p_target[0] != p_target[1]

    if run is None or (ensemble != "other" and not off_equilibrium(run)):
        _check_drifting(label, block, w, x, t_ramp, p_ramp, th, out)
        _check_fluctuations(label, block, w, ensemble, natoms, t_ramp, th, out)
    if thermostat and finite(temp):
        _check_temp_target(label, block, w, x, temp, t_target, t_note, th, out)
    if barostat and finite(press) and p_target is not None:
        _check_press_target(label, block, w, x, press, p_target, th, out)


def _check_drifting(
    label: str,
    block: ThermoBlock,
    w: slice,
    x: list[float],
    t_ramp: bool,
    p_ramp: bool,
    th: EvaluationThresholds,
    out: list[Finding],
) -> None:
    """A trend over the window larger than its noise: not equilibrated (a ramped target is meant to trend)."""
    drifting = []
    for name, values, rel, skip in (
        ("Temp", first_column(block, "Temp"), th.equil_rel_temp, t_ramp),
        ("PotEng", first_column(block, "PotEng", "E_pair"), th.equil_rel_pe, t_ramp),
        ("Press", first_column(block, "Press"), th.equil_rel_press, p_ramp),
    ):
        if skip or not finite(values):
            continue
        y = values[w]
        slope, _, noise = fit(x, y)
        change = slope * (x[-1] - x[0])
        scale = abs(mean(y))
        if abs(change) > th.equil_sigma * noise and abs(change) > rel * scale:
            drifting.append(f"{name} changes by {change:+.4g} (mean {mean(y):.4g})")
    if drifting:
        out.append(
            Finding(
                rule="equilibration",
                severity=Severity.WARNING,
                message=f"{label}: not equilibrated, the last {len(x)} thermo rows still drift: " + "; ".join(drifting),
                hint="run longer (or equilibrate first) before measuring; the last 20% of a "
                "run should fluctuate around a constant value",
            )
        )


def _check_fluctuations(
    label: str,
    block: ThermoBlock,
    w: slice,
    ensemble: str | None,
    natoms: int | None,
    t_ramp: bool,
    th: EvaluationThresholds,
    out: list[Finding],
) -> None:
    """TotEng and Temp fluctuations larger than expected for this many atoms."""
    temp, pe = first_column(block, "Temp"), first_column(block, "PotEng", "E_pair")
    etot, ke = first_column(block, "TotEng"), first_column(block, "KinEng")
    if finite(etot) and natoms:
        y = etot[w]
        scale = max([abs(mean(y))] + [abs(mean(v[w])) for v in (pe, ke) if finite(v)])
        limit = (th.energy_fluct_nve if ensemble == "nve" else th.energy_fluct) / math.sqrt(natoms)
        rel = std(y) / scale if scale > 0 else 0.0
        if rel > limit:
            out.append(
                Finding(
                    rule="energy_fluctuation",
                    severity=Severity.WARNING,
                    value=rel,
                    threshold=limit,
                    message=f"{label}: TotEng fluctuates by {100 * rel:.3g}% ({ensemble or 'unknown ensemble'}, "
                    f"{natoms} atoms; limit {100 * limit:.3g}%)",
                    hint="reduce the timestep"
                    if ensemble == "nve"
                    else "equilibrate longer or use a gentler thermostat damping",
                )
            )
    if finite(temp) and natoms and not t_ramp:
        y = temp[w]
        if mean(y) > 0:
            rel, limit = std(y) / mean(y), th.temp_fluct / math.sqrt(natoms)
            if rel > limit:
                out.append(
                    Finding(
                        rule="temperature_stability",
                        severity=Severity.WARNING,
                        value=rel,
                        threshold=limit,
                        message=f"{label}: Temp fluctuates by {100 * rel:.3g}% in the last "
                        f"rows (expected below {100 * limit:.3g}% for {natoms} atoms)",
                        hint="equilibrate longer; check the thermostat damping (about 100 timesteps)",
                    )
                )


def _progress(block: ThermoBlock, step: float) -> float:
    steps = block.column("Step") if "Step" in block.columns else []
    if len(steps) < 2 or steps[-1] == steps[0]:
        return 1.0
    return (step - steps[0]) / (steps[-1] - steps[0])


def _check_temp_target(
    label: str,
    block: ThermoBlock,
    w: slice,
    x: list[float],
    temp: list[float],
    target_pair: tuple[float, float] | None,
    note: str | None,
    th: EvaluationThresholds,
    out: list[Finding],
) -> None:
    if target_pair is None:
        out.append(
            Finding(
                rule="temperature_target",
                severity=Severity.INFO,
                message=f"{label}: thermostat target not checked: {note}",
            )
        )
        return
    t0, t1 = target_pair
    target = mean([t0 + (t1 - t0) * _progress(block, s) for s in x])
    if target <= 0:
        return
    y = temp[w]
    average, spread = mean(y), std(y)
    tol = max(th.temp_target_rel * target, th.temp_target_sigma * spread)
    ratio = average / target
    if ratio > th.temp_target_fail_ratio or ratio < 1 / th.temp_target_fail_ratio:
        severity, verdict = Severity.ERROR, f"{ratio:.2g} x the target"
    elif abs(average - target) > tol:
        severity, verdict = Severity.WARNING, f"off by {average - target:+.3g}, tolerance {tol:.3g}"
    else:
        severity, verdict = Severity.INFO, "matches"
    out.append(
        Finding(
            rule="temperature_target",
            severity=severity,
            value=average,
            threshold=target,
            message=f"{label}: <Temp> = {average:.4g} +- {spread:.2g} over the last rows, thermostat "
            f"target {target:.4g}: {verdict}",
            hint=None
            if severity == Severity.INFO
            else "run longer or use a shorter damping time (about 100 timesteps); check that the "
            "temperature is in the units of the unit style",
        )
    )


def _check_press_target(
    label: str,
    block: ThermoBlock,
    w: slice,
    x: list[float],
    press: list[float],
    target_pair: tuple[float, float],
    th: EvaluationThresholds,
    out: list[Finding],
) -> None:
    y = press[w]
    p0, p1 = target_pair
    target = mean([p0 + (p1 - p0) * _progress(block, s) for s in x])
    spread = std(y)
    if spread <= 0:
        return
    ok = abs(mean(y) - target) <= th.press_target_sigma * spread
    out.append(
        Finding(
            rule="pressure_target",
            severity=Severity.INFO if ok else Severity.WARNING,
            value=mean(y),
            threshold=target,
            message=f"{label}: <Press> = {mean(y):.4g} +- {spread:.3g} vs barostat target {target:.4g}"
            + ("" if ok else f" (off by more than {th.press_target_sigma:g} std)"),
            hint=None
            if ok
            else "run longer, or check Pdamp (about 1000 timesteps) and the pressure units of the barostat",
        )
    )
