"""What each run was meant to do: the commands replayed up to every run/minimize (units, timestep, fixes in
force), matched to the log's thermo blocks, and read as an ensemble, a thermostat target and a barostat target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mdagent_hpc.lammps.files import number
from mdagent_hpc.lammps.log import LammpsLog, ThermoBlock
from mdagent_hpc.models import Finding, ParsedScript, Severity

RUN_COMMANDS = ("run", "rerun", "minimize")
# Fixes that keep an NVE run energy-conserving: integrators, constraints, output and bookkeeping.
NVE_SAFE = {
    "nve",
    "nve/sphere",
    "nve/asphere",
    "nve/body",
    "nve/line",
    "nve/tri",
    "nve/dot",
    "rigid",
    "rigid/small",
    "rigid/nve",
    "rigid/nve/small",
    "shake",
    "rattle",
    "enforce2d",
    "momentum",
    "recenter",
    "print",
    "ave/time",
    "ave/chunk",
    "ave/atom",
    "ave/histo",
    "ave/correlate",
    "ave/correlate/long",
    "store/state",
    "vector",
    "halt",
    "balance",
    "cmap",
    "property/atom",
    "spring/self",
}
# Fixes that drive a system away from equilibrium or change its atoms: no equilibration/fluctuation rules.
NON_EQUILIBRIUM = {
    "deform",
    "pour",
    "deposit",
    "evaporate",
    "gcmc",
    "widom",
    "indent",
    "move",
    "addforce",
    "aveforce",
    "setforce",
    "efield",
    "ttm",
    "ttm/mod",
    "ttm/grid",
    "wall/piston",
    "viscous",
    "oneway",
    "flow/gauss",
    "smd",
    "external",
    "heat",
    "ehex",
    "thermal/conductivity",
    "viscosity",
    "nvt/sllod",
    "bond/create",
    "bond/break",
    "bond/react",
    "electron/stopping",
}
# Thermostats without a 'temp' keyword: index of Tstart among the fix arguments.
SIMPLE_THERMOSTATS = {"langevin": 0, "temp/berendsen": 0, "temp/csvr": 0, "temp/csld": 0, "temp/rescale": 1}
THERMOSTAT_HINTS = ("langevin", "temp/", "nvt", "npt", "gle", "gld", "ttm", "tstat", "nvk")
BAROSTAT_STYLES = ("npt", "nph", "rigid/npt", "rigid/nph", "press/berendsen", "press/langevin")
# Fixes and commands that remove atoms on purpose: fewer atoms after a run is then no loss.
REMOVING_FIXES = {"evaporate", "gcmc", "reaxff/species", "charge/regulation", "bond/react", "sgcmc", "widom"}


@dataclass
class Run:
    """What was in force when one run/minimize started."""

    kind: str
    units: str | None = None
    timestep: float | None = None
    norm: bool | None = None
    temp_compute: bool = False  # thermo_modify temp: thermo Temp is not the default compute
    fixes: dict[str, list[str]] = field(default_factory=dict)
    modified_temp: set[str] = field(default_factory=set)  # fix ids with fix_modify temp


def _finite_number(word: str) -> float | None:
    """A finite number, else None."""
    value = number(word)
    return value if value is not None and math.isfinite(value) else None


def fix_style(word: str) -> str:
    for suffix in ("/omp", "/kk", "/gpu", "/intel", "/opt"):
        word = word.removesuffix(suffix)
    return word


def replay(commands: list[list[str]]) -> list[Run]:
    """Replay the commands that matter and snapshot the state at every run/rerun/minimize."""
    runs: list[Run] = []
    state = Run(kind="")
    for words in commands:
        if not words:
            continue
        name, args = words[0], words[1:]
        if name == "units" and args:
            state.units, state.timestep = args[0], None
        elif name == "timestep" and args:
            state.timestep = _finite_number(args[0])
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
            state = Run(kind="")
        elif name in ("run", "rerun") or name.startswith("minimize"):
            runs.append(
                Run(
                    kind="minimize" if name.startswith("minimize") else name,
                    units=state.units,
                    timestep=state.timestep,
                    norm=state.norm,
                    temp_compute=state.temp_compute,
                    fixes=dict(state.fixes),
                    modified_temp=set(state.modified_temp),
                )
            )
    return runs


def _kind(command: str) -> str:
    name = command.split()[0] if command.split() else ""
    return "minimize" if name.startswith("minimize") else name


def _consistent(blocks: list[ThermoBlock], runs: list[Run]) -> bool:
    return all(b.command is None or _kind(b.command) == r.kind for b, r in zip(blocks, runs, strict=False))


def match_runs(log: LammpsLog, script: ParsedScript | None, out: list[Finding]) -> list[Run | None]:
    """The k-th thermo block belongs to the k-th executed run; None where that cannot be told.

    The input echo in the log is what LAMMPS really executed (loops unrolled, variables substituted), so it is
    used first; the script is the fallback when the log has no echo (screen output, `echo none`).
    """
    n = len(log.blocks)
    if n == 0:
        return []
    # a line with '$' is echoed again after substitution
    echoed = replay([text.split() for _, text in log.commands if "$" not in text])
    if len(echoed) == n and all(b.command for b in log.blocks) and _consistent(log.blocks, echoed):
        return list(echoed)
    if script is not None:
        runs = replay([c.words for c in script.commands])
        looping = any(c.name in ("jump", "next") or (c.context and c.name in RUN_COMMANDS) for c in script.commands)
        # Without loops a run that stopped early leaves fewer blocks than run commands; with loops only equal
        # counts are trustworthy.
        if (len(runs) == n or (not looping and n < len(runs))) and _consistent(log.blocks, runs):
            return list(runs[:n])
    out.append(
        Finding(
            rule="run_mapping",
            severity=Severity.INFO,
            message=f"could not match the {n} thermo blocks to run/minimize commands "
            f"({'script' if script else 'no script'}, {len(echoed)} echoed runs); ensemble, thermostat "
            "target and energy-drift checks were skipped",
            hint="keep the input echo in the log (default `echo log`) or pass the parsed script",
        )
    )
    return [None] * n


def thermostat_target(run: Run) -> tuple[bool, tuple[float, float] | None, str | None]:
    """(thermostat present, (Tstart, Tstop) comparable with thermo Temp, why no target)."""
    found: list[tuple[str, list[str]]] = []
    for fix_id, words in run.fixes.items():
        style, args = fix_style(words[3]), words[4:]
        if (
            style in SIMPLE_THERMOSTATS
            or any(h in style for h in THERMOSTAT_HINTS)
            or (style.startswith("rigid") and ("langevin" in args or "temp" in args))
        ):
            found.append((fix_id, words))
    if not found:
        return False, None, None
    if len(found) > 1:
        return True, None, "several thermostats are active"
    fix_id, words = found[0]
    style, group, args = fix_style(words[3]), words[2], words[4:]
    if style.startswith("rigid"):
        return True, None, f"{style} controls rigid-body temperature, not thermo Temp"
    if group != "all":
        return True, None, f"fix {fix_id} acts on group '{group}' but thermo Temp covers all atoms"
    if fix_id in run.modified_temp or run.temp_compute:
        return True, None, "a custom temperature compute is used (fix_modify/thermo_modify temp)"
    if style in SIMPLE_THERMOSTATS:
        k = SIMPLE_THERMOSTATS[style]
        values = args[k : k + 2]
    elif "temp" in args:
        k = args.index("temp") + 1
        values = args[k : k + 2]
    else:
        return True, None, f"no temperature target read from fix {style}"
    targets = [_finite_number(v) for v in values]
    if len(targets) != 2 or targets[0] is None or targets[1] is None:
        return True, None, f"target of fix {fix_id} is not a number ({' '.join(values)})"
    return True, (targets[0], targets[1]), None


def barostat_target(run: Run) -> tuple[bool, tuple[float, float] | None]:
    present, target = False, None
    for words in run.fixes.values():
        style, args = fix_style(words[3]), words[4:]
        if not style.startswith(BAROSTAT_STYLES):
            continue
        present = True
        for key in ("iso", "aniso", "tri"):
            if key in args:
                k = args.index(key) + 1
                values = [_finite_number(v) for v in args[k : k + 2]]
                if len(values) == 2 and values[0] is not None and values[1] is not None:
                    target = (values[0], values[1])
                break
    return present, target


def ensemble_of(run: Run) -> str:
    thermostat, _, _ = thermostat_target(run)
    barostat, _ = barostat_target(run)
    if thermostat or barostat:
        return ("npt" if thermostat else "nph") if barostat else "nvt"
    styles = [fix_style(w[3]) for w in run.fixes.values()]
    if styles and all(s in NVE_SAFE for s in styles) and any(s.startswith(("nve", "rigid")) for s in styles):
        return "nve"
    return "other"


def off_equilibrium(run: Run) -> bool:
    """A fix drives the system away from equilibrium or changes its atoms."""
    return any(fix_style(words[3]) in NON_EQUILIBRIUM for words in run.fixes.values())


def removes_atoms(fixes: list[list[str]]) -> bool:
    """One of these commands is a `fix` that removes atoms on purpose."""
    return any(len(words) > 3 and words[0] == "fix" and fix_style(words[3]) in REMOVING_FIXES for words in fixes)
