"""Judge a finished LAMMPS run from its log (and its script when known), rule by rule.

Every rule and threshold is explained in docs/evaluation.md. Statistics use the last part of each thermo block
(the "window": the last `window_fraction` of the rows, at least `min_window_rows`, never the first row).
What each run was meant to do (ensemble, thermostat target, timestep) comes from the commands the log echoes,
else from the script's commands, when the k-th `run`/`minimize` can be matched to the k-th thermo block.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from mdagent_hpc.lammps.files import number
from mdagent_hpc.lammps.log import LammpsLog, ThermoBlock
from mdagent_hpc.lammps.units import (
    BOLTZMANN,
    DEFAULT_TIMESTEP,
    TIME_UNIT,
    fix_parameter_problems,
    timestep_problem,
)
from mdagent_hpc.models import Evaluation, Finding, Grade, ParsedScript, Severity

RUN_COMMANDS = ("run", "rerun", "minimize")
# Fixes that keep an NVE run energy-conserving: integrators, constraints, output and bookkeeping.
NVE_SAFE = {"nve", "nve/sphere", "nve/asphere", "nve/body", "nve/line", "nve/tri", "nve/dot", "rigid",
            "rigid/small", "rigid/nve", "rigid/nve/small", "shake", "rattle", "enforce2d", "momentum",
            "recenter", "print", "ave/time", "ave/chunk", "ave/atom", "ave/histo", "ave/correlate",
            "ave/correlate/long", "store/state", "vector", "halt", "balance", "cmap", "property/atom",
            "spring/self"}
# Fixes that drive a system away from equilibrium or change its atoms: no equilibration/fluctuation rules.
NON_EQUILIBRIUM = {"deform", "pour", "deposit", "evaporate", "gcmc", "widom", "indent", "move", "addforce",
                   "aveforce", "setforce", "efield", "ttm", "ttm/mod", "ttm/grid", "wall/piston", "viscous",
                   "oneway", "flow/gauss", "smd", "external", "heat", "ehex", "thermal/conductivity",
                   "viscosity", "nvt/sllod", "bond/create", "bond/break", "bond/react", "electron/stopping"}
# Thermostats without a 'temp' keyword: index of Tstart among the fix arguments.
SIMPLE_THERMOSTATS = {"langevin": 0, "temp/berendsen": 0, "temp/csvr": 0, "temp/csld": 0, "temp/rescale": 1}
THERMOSTAT_HINTS = ("langevin", "temp/", "nvt", "npt", "gle", "gld", "ttm", "tstat", "nvk")
BAROSTAT_STYLES = ("npt", "nph", "rigid/npt", "rigid/nph", "press/berendsen", "press/langevin")
# Fixes and commands that remove atoms on purpose: fewer atoms after a run is then no loss.
REMOVING_FIXES = {"evaporate", "gcmc", "reaxff/species", "charge/regulation", "bond/react", "sgcmc", "widom"}
KEY_COLUMNS = {"TotEng", "Temp", "Press", "PotEng", "E_pair", "KinEng", "Volume", "Density"}
# LAMMPS messages (ERROR or WARNING) that mean the simulation is broken, with what to change.
BROKEN = [
    ("lost_atoms", re.compile(r"Lost atoms"),
     "atoms flew out of the box: reduce the timestep, relax overlaps with `minimize` first, check units and "
     "potential parameters, or use `boundary` s/m if atoms may legitimately leave"),
    ("bond_atoms_missing", re.compile(r"(Bond|Angle|Dihedral|Improper) atoms .*missing"),
     "a bonded partner moved too far (unstable dynamics): reduce the timestep, minimize first, or increase "
     "`comm_modify cutoff`"),
    ("out_of_range_atoms", re.compile(r"Out of range atoms"),
     "atoms moved too far for PPPM/neighbor lists (unstable dynamics): reduce the timestep or minimize "
     "first"),
    ("double_integration", re.compile(r"time integrated more than once"),
     "two integrators (e.g. fix nvt and fix nve) move the same atoms: keep one per atom"),
    ("non_numeric", re.compile(r"Non-numeric (atom coords|pressure)"),
     "coordinates or pressure became NaN/inf (the simulation blew up): reduce the timestep, minimize first, "
     "check overlapping atoms and potential parameters"),
]


class EvaluationThresholds(BaseModel):
    """Thresholds of the rules; docs/evaluation.md explains each default."""

    window_fraction: float = Field(0.2, description="last fraction of each block used for statistics")
    min_window_rows: int = Field(5, description="fewer rows than this (after the first): skip statistics")
    energy_fluct_nve: float = Field(0.05, description="NVE: std(TotEng)/|E| may be at most this / sqrt(N)")
    energy_fluct: float = Field(1.0, description="thermostatted/unknown: std(TotEng)/|E| <= this / sqrt(N)")
    temp_fluct: float = Field(3.0, description="std(Temp)/<Temp> may be at most this / sqrt(N)")
    equil_sigma: float = Field(3.0, description="a trend counts if its change over the window > this x noise")
    equil_rel_temp: float = Field(0.05, description="... and more than this fraction of <Temp>")
    equil_rel_pe: float = Field(0.01, description="... and more than this fraction of |<PotEng>|")
    equil_rel_press: float = Field(0.5, description="... and more than this fraction of |<Press>|")
    temp_target_rel: float = Field(0.10, description="tolerated |<T> - target| as a fraction of the target")
    temp_target_sigma: float = Field(2.0, description="... or this many std of Temp, whichever is larger")
    temp_target_fail_ratio: float = Field(3.0, description="<T>/target beyond this factor: error")
    press_target_sigma: float = Field(3.0, description="tolerated |<P> - target| in std of Press")
    nve_drift_kt: float = Field(
        0.005, description="NVE: max |dE/dt| per atom, in k_B<T> per 1000 default timesteps of the unit style"
    )
    nve_drift_fail_factor: float = Field(10.0, description="drift above this x nve_drift_kt: error")
    volume_jump_factor: float = Field(2.0, description="Volume/Density change between two rows: error")
    volume_change_factor: float = Field(2.0, description="max/min of Volume/Density within a block: warning")
    max_neighs_per_atom: float = Field(2000.0, description="LAMMPS' default neigh_modify one limit")
    warning_decay: float = Field(0.8, description="reward of a WARN grade: 0.5 + 0.5 * decay**warnings")
    max_findings_per_rule: int = Field(3, description="more findings of one rule are folded into a count")


@dataclass
class _Run:
    """What was in force when one run/minimize started."""

    kind: str
    units: str | None = None
    timestep: float | None = None
    norm: bool | None = None
    temp_compute: bool = False  # thermo_modify temp: thermo Temp is not the default compute
    fixes: dict[str, list[str]] = field(default_factory=dict)
    modified_temp: set[str] = field(default_factory=set)  # fix ids with fix_modify temp


def _float(word: str) -> float | None:
    """A finite number, else None."""
    value = number(word)
    return value if value is not None and math.isfinite(value) else None


def _style(word: str) -> str:
    for suffix in ("/omp", "/kk", "/gpu", "/intel", "/opt"):
        word = word.removesuffix(suffix)
    return word


def _runs(commands: list[list[str]]) -> list[_Run]:
    """Replay the commands that matter and snapshot the state at every run/rerun/minimize."""
    runs: list[_Run] = []
    state = _Run(kind="")
    for words in commands:
        if not words:
            continue
        name, args = words[0], words[1:]
        if name == "units" and args:
            state.units, state.timestep = args[0], None
        elif name == "timestep" and args:
            state.timestep = _float(args[0])
        elif name == "fix" and len(args) >= 3:
            state.fixes[args[0]] = words
            state.modified_temp.discard(args[0])
        elif name == "unfix" and args:
            state.fixes.pop(args[0], None)
        elif name == "fix_modify" and "temp" in args[1:]:
            state.modified_temp.add(args[0])
        elif name == "thermo_style":  # resets thermo_modify settings
            state.norm, state.temp_compute = None, False
        elif name == "thermo_modify":
            for key, value in zip(args, args[1:], strict=False):
                if key == "norm":
                    state.norm = value == "yes"
                elif key == "temp":
                    state.temp_compute = True
        elif name == "clear":
            state = _Run(kind="")
        elif name in ("run", "rerun") or name.startswith("minimize"):
            runs.append(_Run(kind="minimize" if name.startswith("minimize") else name, units=state.units,
                             timestep=state.timestep, norm=state.norm, temp_compute=state.temp_compute,
                             fixes=dict(state.fixes), modified_temp=set(state.modified_temp)))
    return runs


def _kind(command: str) -> str:
    name = command.split()[0] if command.split() else ""
    return "minimize" if name.startswith("minimize") else name


def _consistent(blocks: list[ThermoBlock], runs: list[_Run]) -> bool:
    return all(b.command is None or _kind(b.command) == r.kind for b, r in zip(blocks, runs, strict=False))


def _match_runs(log: LammpsLog, script: ParsedScript | None, out: list[Finding]) -> list[_Run | None]:
    """The k-th thermo block belongs to the k-th executed run; None where that cannot be told.

    The input echo in the log is what LAMMPS really executed (loops unrolled, variables substituted), so it is
    used first; the script is the fallback when the log has no echo (screen output, `echo none`).
    """
    n = len(log.blocks)
    if n == 0:
        return []
    # a line with '$' is echoed again after substitution
    echoed = _runs([text.split() for _, text in log.commands if "$" not in text])
    if len(echoed) == n and all(b.command for b in log.blocks) and _consistent(log.blocks, echoed):
        return list(echoed)
    if script is not None:
        runs = _runs([c.words for c in script.commands])
        looping = any(c.name in ("jump", "next") or (c.context and c.name in RUN_COMMANDS)
                      for c in script.commands)
        # Without loops a run that stopped early leaves fewer blocks than run commands; with loops only equal
        # counts are trustworthy.
        if (len(runs) == n or (not looping and n < len(runs))) and _consistent(log.blocks, runs):
            return list(runs[:n])
    out.append(Finding(
        rule="run_mapping", severity=Severity.INFO,
        message=f"could not match the {n} thermo blocks to run/minimize commands "
                f"({'script' if script else 'no script'}, {len(echoed)} echoed runs); ensemble, thermostat "
                "target and energy-drift checks were skipped",
        hint="keep the input echo in the log (default `echo log`) or pass the parsed script"))
    return [None] * n


def _thermostat(run: _Run) -> tuple[bool, tuple[float, float] | None, str | None]:
    """(thermostat present, (Tstart, Tstop) comparable with thermo Temp, why no target)."""
    found: list[tuple[str, list[str]]] = []
    for fix_id, words in run.fixes.items():
        style, args = _style(words[3]), words[4:]
        if (style in SIMPLE_THERMOSTATS or any(h in style for h in THERMOSTAT_HINTS)
                or (style.startswith("rigid") and ("langevin" in args or "temp" in args))):
            found.append((fix_id, words))
    if not found:
        return False, None, None
    if len(found) > 1:
        return True, None, "several thermostats are active"
    fix_id, words = found[0]
    style, group, args = _style(words[3]), words[2], words[4:]
    if style.startswith("rigid"):
        return True, None, f"{style} controls rigid-body temperature, not thermo Temp"
    if group != "all":
        return True, None, f"fix {fix_id} acts on group '{group}' but thermo Temp covers all atoms"
    if fix_id in run.modified_temp or run.temp_compute:
        return True, None, "a custom temperature compute is used (fix_modify/thermo_modify temp)"
    if style in SIMPLE_THERMOSTATS:
        k = SIMPLE_THERMOSTATS[style]
        values = args[k:k + 2]
    elif "temp" in args:
        k = args.index("temp") + 1
        values = args[k:k + 2]
    else:
        return True, None, f"no temperature target read from fix {style}"
    targets = [_float(v) for v in values]
    if len(targets) != 2 or targets[0] is None or targets[1] is None:
        return True, None, f"target of fix {fix_id} is not a number ({' '.join(values)})"
    return True, (targets[0], targets[1]), None


def _barostat(run: _Run) -> tuple[bool, tuple[float, float] | None]:
    present, target = False, None
    for words in run.fixes.values():
        style, args = _style(words[3]), words[4:]
        if not style.startswith(BAROSTAT_STYLES):
            continue
        present = True
        for key in ("iso", "aniso", "tri"):
            if key in args:
                k = args.index(key) + 1
                values = [_float(v) for v in args[k:k + 2]]
                if len(values) == 2 and values[0] is not None and values[1] is not None:
                    target = (values[0], values[1])
                break
    return present, target


def _ensemble(run: _Run) -> str:
    thermostat, _, _ = _thermostat(run)
    barostat, _ = _barostat(run)
    if thermostat or barostat:
        return ("npt" if thermostat else "nph") if barostat else "nvt"
    styles = [_style(w[3]) for w in run.fixes.values()]
    if styles and all(s in NVE_SAFE for s in styles) and any(s.startswith(("nve", "rigid")) for s in styles):
        return "nve"
    return "other"


# --- statistics ----------------------------------------------------------------------------------------


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def _std(v: list[float]) -> float:
    m = _mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


def _fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x: (slope b, standard error of b, residual std)."""
    mx, my = _mean(x), _mean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return 0.0, math.inf, 0.0
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    resid = [b - my - slope * (a - mx) for a, b in zip(x, y, strict=True)]
    rss = sum(r * r for r in resid)
    se = math.sqrt(rss / max(len(x) - 2, 1) / sxx)
    return slope, se, math.sqrt(rss / len(x))


def _col(block: ThermoBlock, *names: str) -> list[float] | None:
    for name in names:
        if name in block.columns:
            return block.column(name)
    return None


def _finite(values: list[float] | None) -> bool:
    return values is not None and all(math.isfinite(v) for v in values)


def _label(i: int, block: ThermoBlock) -> str:
    what = " ".join(block.command.split()) if block.command else ("minimize" if block.minimization else "run")
    return f"block {i + 1} ('{what}', log line {block.line})"


# --- rules ---------------------------------------------------------------------------------------------


def _check_messages(log: LammpsLog, out: list[Finding]) -> None:
    for err in log.errors:
        text = f"LAMMPS ERROR at log line {err.line}: {err.message}"
        if err.last_input:
            text += f" (last input line: {err.last_input})"
        hint = next((h for _, pattern, h in BROKEN if pattern.search(err.message)), None)
        out.append(Finding(rule="lammps_error", severity=Severity.ERROR, message=text,
                           hint=hint or f"fix the command `{err.last_input or '?'}`"
                           + (f"; see {err.url}" if err.url else "")))
    messages = [(line, text, "ERROR") for line, text in ((e.line, e.message) for e in log.errors)]
    messages += [(line, text, "WARNING") for line, text in log.warnings]
    for rule, pattern, hint in BROKEN:
        hits = [(line, text, kind) for line, text, kind in messages if pattern.search(text)]
        if hits:
            line, text, kind = hits[0]
            out.append(Finding(rule=rule, severity=Severity.ERROR, value=float(len(hits)),
                               message=f"{kind} at log line {line}: {text}", hint=hint))
    if not log.completed:
        if log.errors:
            msg = f"the run stopped with an ERROR at log line {log.errors[0].line}"
            hint = "fix the error above and run again"
        elif log.blocks and not log.blocks[-1].finished:
            msg = (f"the log ends inside a run (last thermo step "
                   f"{_last_step(log.blocks[-1])}): the job was killed or is still running")
            hint = "check the job's wall-time and memory limits, or shorten the run / write restart files"
        else:
            msg = "no 'Total wall time' line: LAMMPS did not finish"
            hint = "check the job's wall-time and memory limits and its stderr"
        out.append(Finding(rule="completion", severity=Severity.ERROR, message=msg, hint=hint))
    elif not log.blocks:
        out.append(Finding(rule="no_thermo", severity=Severity.WARNING,
                           message="LAMMPS finished but printed no thermo output (no run or minimize)",
                           hint="add a `run` (and `thermo N`) if the task needs dynamics"))
    others = sorted({text for _, text in log.warnings if not any(p.search(text) for _, p, _ in BROKEN)})
    if others:
        out.append(Finding(rule="lammps_warnings", severity=Severity.INFO, value=float(len(log.warnings)),
                           message=f"{len(log.warnings)} WARNING line(s), e.g.: " + " | ".join(others[:5])))


def _last_step(block: ThermoBlock) -> str:
    if block.rows and "Step" in block.columns:
        return f"{block.column('Step')[-1]:.0f}"
    return "?"


def _check_nonfinite(label: str, block: ThermoBlock, out: list[Finding]) -> None:
    found: dict[bool, list[str]] = {True: [], False: []}  # key column? -> "Temp = nan at step 3"
    for j, name in enumerate(block.columns):
        bad = next((row for row in block.rows if not math.isfinite(row[j])), None)
        if bad is not None:
            step = f" at step {bad[0]:.0f}" if block.columns[0] == "Step" else ""
            found[name in KEY_COLUMNS].append(f"{name} = {bad[j]}{step}")
    if found[True]:
        out.append(Finding(rule="nan", severity=Severity.ERROR, value=float(len(found[True])),
                           message=f"{label}: non-finite thermo values: " + ", ".join(found[True]),
                           hint="the simulation blew up or atoms overlap: minimize first, reduce the timestep, "
                                "check the potential and units"))
    if found[False]:
        out.append(Finding(rule="nan_column", severity=Severity.WARNING, value=float(len(found[False])),
                           message=f"{label}: non-finite thermo values: " + ", ".join(found[False]),
                           hint="a thermo quantity is undefined (e.g. a compute over an empty group or a "
                                "division by zero in a variable)"))


def _check_neighbors(label: str, block: ThermoBlock, th: EvaluationThresholds, out: list[Finding]) -> None:
    stats = block.neighbors
    if stats is None:
        return
    if stats.dangerous_builds:
        out.append(Finding(rule="dangerous_builds", severity=Severity.WARNING, value=stats.dangerous_builds,
                           threshold=0, hint="use `neigh_modify every 1 delay 0 check yes` or a larger skin",
                           message=f"{label}: {stats.dangerous_builds} dangerous neighbor list builds (atoms "
                                   "may have missed interactions)"))
    per_atom = stats.neighs_per_atom
    if per_atom is not None and per_atom == 0 and (block.atoms or 0) > 1:
        out.append(Finding(rule="no_neighbors", severity=Severity.WARNING, value=0.0,
                           message=f"{label}: 0 neighbors per atom: atoms do not interact",
                           hint="the pair cutoff is shorter than the atom spacing (check units, lattice "
                                "constant and pair_coeff cutoffs)"))
    elif per_atom is not None and per_atom > th.max_neighs_per_atom:
        out.append(Finding(rule="too_many_neighbors", severity=Severity.WARNING, value=per_atom,
                           threshold=th.max_neighs_per_atom,
                           message=f"{label}: {per_atom:.0f} neighbors per atom",
                           hint="the cutoff is very long or the system collapsed; check the pair cutoff and "
                                "density"))


def _check_volume(label: str, block: ThermoBlock, run: _Run | None, th: EvaluationThresholds,
                  out: list[Finding]) -> None:
    deforming = run is not None and any(_style(w[3]) in NON_EQUILIBRIUM for w in run.fixes.values())
    for name in ("Volume", "Density"):
        values = [v for v in (_col(block, name) or []) if math.isfinite(v)]
        if not values:
            continue
        if name == "Volume" and min(values) <= 0:
            out.append(Finding(rule="volume", severity=Severity.ERROR, value=min(values), threshold=0.0,
                               message=f"{label}: Volume became {min(values):g}",
                               hint="the box collapsed: check the barostat settings and the timestep"))
            continue
        positive = [v for v in values if v > 0]
        jumps = [max(a / b, b / a) for a, b in zip(positive, positive[1:], strict=False)]
        if jumps and max(jumps) > th.volume_jump_factor and not deforming:
            out.append(Finding(
                rule="volume_jump", severity=Severity.ERROR, value=max(jumps), threshold=th.volume_jump_factor,
                message=f"{label}: {name} changed by a factor {max(jumps):.2f} between two thermo outputs "
                        "(box exploded or collapsed)",
                hint="use a larger barostat damping (Pdamp ~ 1000 timesteps), start closer to the right "
                     "density, or equilibrate in NVT first"))
        elif positive and max(positive) / min(positive) > th.volume_change_factor and not deforming:
            ratio = max(positive) / min(positive)
            out.append(Finding(rule="volume_change", severity=Severity.WARNING, value=ratio,
                               threshold=th.volume_change_factor,
                               message=f"{label}: {name} varies by a factor {ratio:.2f}",
                               hint="check that the starting density is sensible for this system"))


def _check_md(label: str, block: ThermoBlock, run: _Run | None, natoms: int | None, log: LammpsLog,
              th: EvaluationThresholds, out: list[Finding]) -> None:
    n = len(block.rows)
    size = max(math.ceil(th.window_fraction * n), th.min_window_rows)
    if n - 1 < size or not block.steps and block.finished:
        return
    w = slice(n - size, n)
    steps = _col(block, "Step")
    x = steps[w] if steps else [float(k) for k in range(n)][w]
    temp, pe, press = _col(block, "Temp"), _col(block, "PotEng", "E_pair"), _col(block, "Press")
    etot, ke = _col(block, "TotEng"), _col(block, "KinEng")
    ensemble = _ensemble(run) if run else None
    thermostat, t_target, t_note = _thermostat(run) if run else (False, None, None)
    barostat, p_target = _barostat(run) if run else (False, None)
    equilibrium = run is None or (ensemble != "other"
                                  and not any(_style(v[3]) in NON_EQUILIBRIUM for v in run.fixes.values()))
    t_ramp = t_target is not None and t_target[0] != t_target[1]
    p_ramp = p_target is not None and p_target[0] != p_target[1]

    if equilibrium:
        drifting = []
        for name, values, rel, skip in (("Temp", temp, th.equil_rel_temp, t_ramp),
                                        ("PotEng", pe, th.equil_rel_pe, t_ramp),
                                        ("Press", press, th.equil_rel_press, p_ramp)):
            if skip or not _finite(values):
                continue
            y = values[w]
            slope, _, noise = _fit(x, y)
            change = slope * (x[-1] - x[0])
            scale = abs(_mean(y))
            if abs(change) > th.equil_sigma * noise and abs(change) > rel * scale:
                drifting.append(f"{name} changes by {change:+.4g} (mean {_mean(y):.4g})")
        if drifting:
            out.append(Finding(rule="equilibration", severity=Severity.WARNING,
                               message=f"{label}: not equilibrated, the last {size} thermo rows still drift: "
                                       + "; ".join(drifting),
                               hint="run longer (or equilibrate first) before measuring; the last 20% of a "
                                    "run should fluctuate around a constant value"))
        if _finite(etot) and natoms:
            y = etot[w]
            scale = max([abs(_mean(y))] + [abs(_mean(v[w])) for v in (pe, ke) if _finite(v)])
            limit = (th.energy_fluct_nve if ensemble == "nve" else th.energy_fluct) / math.sqrt(natoms)
            rel = _std(y) / scale if scale > 0 else 0.0
            if rel > limit:
                out.append(Finding(
                    rule="energy_fluctuation", severity=Severity.WARNING, value=rel, threshold=limit,
                    message=f"{label}: TotEng fluctuates by {100 * rel:.3g}% ({ensemble or 'unknown ensemble'}, "
                            f"{natoms} atoms; limit {100 * limit:.3g}%)",
                    hint="reduce the timestep" if ensemble == "nve"
                    else "equilibrate longer or use a gentler thermostat damping"))
        if _finite(temp) and natoms and not t_ramp:
            y = temp[w]
            if _mean(y) > 0:
                rel, limit = _std(y) / _mean(y), th.temp_fluct / math.sqrt(natoms)
                if rel > limit:
                    out.append(Finding(rule="temperature_stability", severity=Severity.WARNING, value=rel,
                                       threshold=limit,
                                       message=f"{label}: Temp fluctuates by {100 * rel:.3g}% in the last "
                                               f"rows (expected below {100 * limit:.3g}% for {natoms} atoms)",
                                       hint="equilibrate longer; check the thermostat damping (about 100 "
                                            "timesteps)"))

    if thermostat and _finite(temp):
        _check_temp_target(label, block, w, x, temp, t_target, t_note, th, out)
    if barostat and _finite(press) and p_target is not None:
        y = press[w]
        target = _mean([p_target[0] + (p_target[1] - p_target[0]) * _progress(block, s) for s in x])
        std = _std(y)
        if std > 0:
            dev = _mean(y) - target
            ok = abs(dev) <= th.press_target_sigma * std
            out.append(Finding(rule="pressure_target", severity=Severity.INFO if ok else Severity.WARNING,
                               value=_mean(y), threshold=target,
                               message=f"{label}: <Press> = {_mean(y):.4g} +- {std:.3g} vs barostat target "
                                       f"{target:.4g}" + ("" if ok else " (off by more than "
                                                          f"{th.press_target_sigma:g} std)"),
                               hint=None if ok else "run longer, or check Pdamp (about 1000 timesteps) and "
                                                    "the pressure units of the barostat"))
    if ensemble == "nve":
        _check_drift(label, block, run, natoms, log, th, out)


def _progress(block: ThermoBlock, step: float) -> float:
    steps = block.column("Step") if "Step" in block.columns else []
    if len(steps) < 2 or steps[-1] == steps[0]:
        return 1.0
    return (step - steps[0]) / (steps[-1] - steps[0])


def _check_temp_target(label: str, block: ThermoBlock, w: slice, x: list[float], temp: list[float],
                       target_pair: tuple[float, float] | None, note: str | None,
                       th: EvaluationThresholds, out: list[Finding]) -> None:
    if target_pair is None:
        out.append(Finding(rule="temperature_target", severity=Severity.INFO,
                           message=f"{label}: thermostat target not checked: {note}"))
        return
    t0, t1 = target_pair
    target = _mean([t0 + (t1 - t0) * _progress(block, s) for s in x])
    if target <= 0:
        return
    y = temp[w]
    mean, std = _mean(y), _std(y)
    tol = max(th.temp_target_rel * target, th.temp_target_sigma * std)
    ratio = mean / target
    if ratio > th.temp_target_fail_ratio or ratio < 1 / th.temp_target_fail_ratio:
        severity, verdict = Severity.ERROR, f"{ratio:.2g} x the target"
    elif abs(mean - target) > tol:
        severity, verdict = Severity.WARNING, f"off by {mean - target:+.3g}, tolerance {tol:.3g}"
    else:
        severity, verdict = Severity.INFO, "matches"
    out.append(Finding(rule="temperature_target", severity=severity, value=mean, threshold=target,
                       message=f"{label}: <Temp> = {mean:.4g} +- {std:.2g} over the last rows, thermostat "
                               f"target {target:.4g}: {verdict}",
                       hint=None if severity == Severity.INFO else
                       "run longer or use a shorter damping time (about 100 timesteps); check that the "
                       "temperature is in the units of the unit style"))


def _check_drift(label: str, block: ThermoBlock, run: _Run | None, natoms: int | None, log: LammpsLog,
                 th: EvaluationThresholds, out: list[Finding]) -> None:
    etot, steps, temp = _col(block, "TotEng"), _col(block, "Step"), _col(block, "Temp")
    if not (_finite(etot) and steps and natoms) or len(steps) - 1 < th.min_window_rows:
        return
    units = (run.units if run else None) or block.units or log.units or "lj"
    if units not in DEFAULT_TIMESTEP:
        return
    dt = (run.timestep if run else None) or block.timestep or DEFAULT_TIMESTEP[units]
    norm = run.norm if run and run.norm is not None else units == "lj"
    # Row 0 is the state before the first step; the energy there may not be on the integrator's trajectory.
    t = [s * dt for s in steps[1:]]
    e = [v if norm else v / natoms for v in etot[1:]]
    slope, se, _ = _fit(t, e)
    tunit = TIME_UNIT[units]
    text = f"{label}: NVE energy drift {slope:+.3g} energy/atom/{tunit}"
    mean_t = _mean(temp[1:]) if _finite(temp) else 0.0
    if mean_t <= 0:
        out.append(Finding(rule="energy_drift", severity=Severity.INFO, value=abs(slope),
                           message=text + " (no temperature to compare it with)"))
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
    out.append(Finding(rule="energy_drift", severity=severity, value=abs(slope), threshold=limit,
                       message=text + ("" if severity == Severity.INFO else f" (limit {th.nve_drift_kt:g})"),
                       hint=None if severity == Severity.INFO else
                       f"energy is not conserved: reduce the timestep (now {dt:g} {tunit}), use "
                       "`neigh_modify every 1 delay 0 check yes`, or a smooth (shifted) pair cutoff"))


def _check_atoms(label: str, block: ThermoBlock, run: _Run | None, log: LammpsLog, out: list[Finding]) -> None:
    """Atoms at the end of a run vs at its start, unless a fix removes atoms on purpose."""
    if block.atoms is None or block.atoms_start is None or block.atoms >= block.atoms_start:
        return
    if run is not None:
        removing = any(_style(w[3]) in REMOVING_FIXES for w in run.fixes.values())
    else:  # run not known: any removing fix anywhere in the echo excuses it
        removing = any(len(w) > 3 and w[0] == "fix" and _style(w[3]) in REMOVING_FIXES
                       for w in (text.split() for _, text in log.commands))
    if removing:
        return
    lost = block.atoms_start - block.atoms
    out.append(Finding(rule="atoms_not_conserved", severity=Severity.ERROR, value=float(lost),
                       threshold=0.0,
                       message=f"{label}: {lost} of {block.atoms_start} atoms disappeared during the run "
                               f"({block.atoms} at its end) and no command removes atoms on purpose",
                       hint="atoms were lost (`thermo_modify lost ignore` hides it): reduce the timestep, "
                            "minimize first, check units and potential parameters; use `boundary` s/m if atoms "
                            "may legitimately leave, or remove them on purpose (`delete_atoms`, `fix evaporate`)"))


def _check_parameters(label: str, run: _Run, out: list[Finding]) -> None:
    units = run.units or "lj"
    dt = run.timestep or DEFAULT_TIMESTEP.get(units)
    problems = [p for p in [timestep_problem(units, run.timestep)] if p] if run.timestep is not None else []
    problems += [p for words in run.fixes.values() for p in fix_parameter_problems(words, dt)]
    for problem in problems:
        out.append(Finding(rule="implausible_parameter", severity=Severity.ERROR, message=f"{label}: {problem}",
                           hint="the run finished but its numbers mean nothing: fix the setting and run again"))


def _check_block(i: int, block: ThermoBlock, run: _Run | None, log: LammpsLog, th: EvaluationThresholds,
                 out: list[Finding]) -> None:
    label = _label(i, block)
    _check_nonfinite(label, block, out)
    _check_atoms(label, block, run, log, out)
    if run is not None and run.kind != "minimize":
        _check_parameters(label, run, out)
    _check_neighbors(label, block, th, out)
    if block.minimization or (run is not None and run.kind == "minimize"):
        stop = block.min_stop or ""
        if "max iterations" in stop or "max force evaluations" in stop:
            out.append(Finding(rule="minimize_not_converged", severity=Severity.WARNING,
                               message=f"{label}: minimization stopped at its limit ({stop}), not at a "
                                       "tolerance",
                               hint="raise maxiter/maxeval of `minimize` or loosen etol/ftol"))
        return
    if run is not None and run.kind != "run":
        return
    _check_volume(label, block, run, th, out)
    _check_md(label, block, run, block.atoms or log.atoms, log, th, out)


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


# thermo column -> observable name (units-style neutral: values are in the units the log was written in)
OBSERVABLE_COLUMNS = {"Temp": "temp", "Press": "press", "TotEng": "toteng", "PotEng": "pe", "KinEng": "ke",
                      "E_pair": "epair", "Enthalpy": "enthalpy", "Volume": "vol", "Density": "density",
                      "Lx": "lx", "Ly": "ly", "Lz": "lz", "Pxx": "pxx", "Pyy": "pyy", "Pzz": "pzz"}


def observables(log: LammpsLog) -> dict[str, float]:
    """What a user asks a simulation for, read from the thermo output (docs/evaluation.md lists the keys).

    `<q>_final`: last row of the production block (the last MD block with rows); `<q>_mean`, `<q>_std`: over
    that block's rows after its first (the starting state); `<q>_mean_all`: over the rows of every MD block.
    `pe` is PotEng, else E_pair + E_mol. After a minimization, `min_pe_final` is its last energy.
    """
    md = [b for b in log.blocks if not b.minimization and b.rows and b.columns]
    out: dict[str, float] = {}

    def column(block: ThermoBlock, name: str) -> list[float] | None:
        if name in block.columns:
            return block.column(name)
        if name == "PotEng" and {"E_pair", "E_mol"} <= set(block.columns):
            return [a + b for a, b in zip(block.column("E_pair"), block.column("E_mol"), strict=True)]
        return None

    def put(key: str, value: float) -> None:
        if math.isfinite(value):
            out[key] = value

    if md:
        last = md[-1]
        for name, key in OBSERVABLE_COLUMNS.items():
            values = column(last, name)
            if values is None:
                continue
            put(f"{key}_final", values[-1])
            body = values[1:] or values
            put(f"{key}_mean", _mean(body))
            put(f"{key}_std", _std(body))
            every = [v for b in md for v in ((column(b, name) or [])[1:] or (column(b, name) or []))]
            if len(md) > 1 and every:
                put(f"{key}_mean_all", _mean(every))
        if last.atoms is not None:
            out["atoms"] = float(last.atoms)
        if "Step" in last.columns:
            steps = last.column("Step")
            out["production_steps"] = steps[-1] - steps[0]
    minimized = [b for b in log.blocks if b.minimization and b.rows]
    if minimized and (values := column(minimized[-1], "PotEng")) is not None:
        put("min_pe_final", values[-1])
    return out


def evaluate(log: LammpsLog, script: ParsedScript | None = None, *,
             thresholds: EvaluationThresholds | None = None) -> Evaluation:
    """Grade a run: FAIL on any error finding, WARN on warnings, else PASS; reward in [0, 1]."""
    th = thresholds or EvaluationThresholds()
    findings: list[Finding] = []
    _check_messages(log, findings)
    runs = _match_runs(log, script, findings)
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
    return Evaluation(grade=grade, reward=reward, findings=findings, summary=_summary(log),
                      observables=observables(log))
