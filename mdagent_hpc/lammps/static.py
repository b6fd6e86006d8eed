"""Static checks: mistakes `lmp -skiprun` does not catch (they surface only when a run starts), input files
that are missing (all reported at once, before the dry run stops at the first), and settings that make no
physical sense.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

from mdagent_hpc.lammps.files import file_accesses, number
from mdagent_hpc.lammps.units import DEFAULT_TIMESTEP, fix_parameter_problems, lattice_problem, timestep_problem
from mdagent_hpc.models import Command, Diagnostic, ParsedScript, Severity

# Pair styles that cannot mix i-j coefficients from i-i and j-j: every pair must be given.
NO_MIXING = re.compile(r"^(table|buck|born|morse|soft|gauss|yukawa/colloid|lj/class2/coul/long/cs)\b")
BUILTIN_COMPUTES = {"thermo_temp", "thermo_press", "thermo_pe"}


def _types(word: str, ntypes: int) -> range | None:
    """LAMMPS type ranges: `3`, `*`, `2*`, `*4`, `2*4`."""
    m = re.fullmatch(r"(\d*)\*(\d*)|(\d+)", word)
    if not m:
        return None
    if m.group(3):
        return range(int(m.group(3)), int(m.group(3)) + 1)
    lo = int(m.group(1)) if m.group(1) else 1
    hi = int(m.group(2)) if m.group(2) else ntypes
    return range(lo, hi + 1)


def _data_file(path: Path) -> tuple[int | None, str | None]:
    """Atom types in a data file's header, and its pair section ('Pair Coeffs' or 'PairIJ Coeffs'), if any."""
    ntypes, section = None, None
    if not path.is_file():
        return ntypes, section
    with path.open(errors="replace") as fh:
        for line in fh:
            if ntypes is None and (m := re.match(r"\s*(\d+)\s+atom types\b", line)):
                ntypes = int(m.group(1))
            elif line.startswith(("Pair Coeffs", "PairIJ Coeffs")):
                section = line.split("#")[0].strip()
                break
    return ntypes, section


def _diag(cmd: Command, code: str, message: str, hint: str, severity: Severity = Severity.ERROR) -> Diagnostic:
    return Diagnostic.at(cmd, code, message, hint, severity)


def pair_coefficient_checks(script: ParsedScript, run_dir: Path | None) -> list[Diagnostic]:
    """At each first run after setup: are coefficients set for every type (and pair, where needed)?"""
    out: list[Diagnostic] = []
    ntypes: int | None = None
    style = ""
    covered: set[tuple[int, int]] = set()
    checked = False
    for cmd in script.commands:
        n, a = cmd.name, cmd.args
        if n == "clear":
            ntypes, style, covered, checked = None, "", set(), False
        elif n == "create_box" and a and a[0].isdigit():
            ntypes = int(a[0])
        elif n == "read_data" and a and run_dir is not None and ntypes is None:
            ntypes, section = _data_file(run_dir / a[0])
            if ntypes and section:
                first = range(1, ntypes + 1)
                covered |= {(i, j) for i in first for j in first if i == j or section == "PairIJ Coeffs"}
        elif n == "read_restart":
            ntypes = None  # coefficients may come from the restart file
        elif n == "pair_style" and a:
            style, covered, checked = a[0], set(), False
        elif n == "pair_coeff" and len(a) >= 2 and ntypes:
            ri, rj = _types(a[0], ntypes), _types(a[1], ntypes)
            if ri is None or rj is None:
                continue
            covered |= {(min(i, j), max(i, j)) for i in ri for j in rj}
        elif n in ("run", "minimize") and ntypes and style and style not in ("none", "zero") and not checked:
            checked = True
            missing_self = [i for i in range(1, ntypes + 1) if (i, i) not in covered]
            if missing_self:
                out.append(
                    _diag(
                        cmd,
                        "static.pair_coeff_missing",
                        f"pair coefficients are not set for atom type(s) {missing_self} of {ntypes} before this {n}",
                        f"add `pair_coeff {missing_self[0]} {missing_self[0]} ...` "
                        "(or `pair_coeff * * ...` for a many-body potential)",
                    )
                )
            elif NO_MIXING.match(style):
                pairs = [
                    (i, j) for i in range(1, ntypes + 1) for j in range(i + 1, ntypes + 1) if (i, j) not in covered
                ]
                if pairs:
                    out.append(
                        _diag(
                            cmd,
                            "static.pair_coeff_missing",
                            f"pair_style {style} cannot mix coefficients, and pairs {pairs[:5]} are "
                            f"not set before this {n}",
                            f"add `pair_coeff {pairs[0][0]} {pairs[0][1]} ...`",
                        )
                    )
    return out


_REFERENCE = re.compile(r"(?<![A-Za-z0-9_])([vcf])_([A-Za-z0-9_]+)")
FORMULA_STYLES = {"equal", "vector", "atom"}


def _references(cmd: Command) -> list[tuple[str, str, str]]:
    """(word, kind, name) of the `v_`, `c_`, `f_` references a command evaluates."""
    n, a = cmd.name, cmd.args
    if n == "thermo_style":
        words = a[1:]
    elif n in ("fix", "compute") and len(a) > 2:
        words = a[3:]
    elif n == "dump" and len(a) > 4:
        words = a[5:]
    elif n == "variable" and len(a) > 2 and a[1] in FORMULA_STYLES:
        return [(m.group(0), m.group(1), m.group(2)) for m in _REFERENCE.finditer(" ".join(a[2:]))]
    else:
        return []
    return [(w, m.group(1), m.group(2)) for w in words if (m := re.fullmatch(r"([vcf])_([A-Za-z0-9_]+)(\[.*\])*", w))]


def reference_checks(script: ParsedScript) -> list[Diagnostic]:
    """`v_`, `c_`, `f_` references (thermo output, fixes, computes, dumps, formulas) name things the script
    defines. Fixes with a temperature or pressure define the computes ID_temp and ID_press."""
    variables = set(script.variables)
    fixes = {c.args[0] for c in script.find("fix") if c.args}
    computes = {c.args[0] for c in script.find("compute") if c.args} | BUILTIN_COMPUTES
    computes |= {f"{f}_{q}" for f in fixes for q in ("temp", "press")}
    out: list[Diagnostic] = []
    for cmd in script.commands:
        for word, kind, name in _references(cmd):
            known = {"v": variables, "c": computes, "f": fixes}[kind]
            if name not in known:
                what = {"v": "variable", "c": "compute", "f": "fix"}[kind]
                out.append(
                    _diag(
                        cmd,
                        "static.undefined_reference",
                        f"{word} refers to {what} '{name}', which the script never defines",
                        f"define the {what} '{name}' before this line, or remove {word}",
                    )
                )
    return out


# Atom styles whose masses are per type (the `mass` command or a data file's Masses section).
PER_TYPE_MASS = {"atomic", "charge", "bond", "angle", "molecular", "full", "dipole", "spin", "template"}
# Fix styles that move atoms (time integration); two on the same atoms integrate them twice.
# Pair styles whose potential files set the masses.
MASS_FROM_POTENTIAL = re.compile(r"^(eam|meam|adp|bop|kim|polymorphic)(/|$)")
INTEGRATOR = re.compile(r"^(nve|nvt|npt|nph|nvk|rigid|brownian|sph|meso|tfmc|smd/integrate)(/|$)")


def _data_sections(path: Path) -> set[str]:
    """Section names of a data file (Masses, Atoms, Pair Coeffs, ...)."""
    if not path.is_file():
        return set()
    with path.open(errors="replace") as fh:
        return {
            s
            for line in fh
            if (s := line.split("#")[0].strip())
            and s[0].isupper()
            and not s[0].isdigit()
            and s.replace(" ", "").isalpha()
        }


def mass_checks(script: ParsedScript, run_dir: Path | None) -> list[Diagnostic]:
    """At the first run after setup: does every atom type have a mass (styles with per-type masses)?"""
    out: list[Diagnostic] = []
    style, ntypes, massed, checked, unknown = "atomic", None, set(), False, False
    for cmd in script.commands:
        n, a = cmd.name, cmd.args
        if n == "clear":
            style, ntypes, massed, checked, unknown = "atomic", None, set(), False, False
        elif n == "atom_style" and a:
            style = a[0]
        elif n == "create_box" and a and a[0].isdigit():
            ntypes = int(a[0])
        elif n == "read_data" and a and run_dir is not None and ntypes is None:
            path = run_dir / a[0]
            ntypes, _ = _data_file(path)
            if "Masses" in _data_sections(path) and ntypes:
                massed |= set(range(1, ntypes + 1))
            unknown = unknown or not path.is_file()
        elif n in ("read_restart", "labelmap", "molecule") or (n == "set" and "mass" in a):
            unknown = True  # masses from elsewhere, or type labels we do not map
        elif n == "pair_style" and any(MASS_FROM_POTENTIAL.match(w) for w in a):
            unknown = True
        elif n == "mass" and a and ntypes:
            types = _types(a[0], ntypes)
            if types is None:
                unknown = True
            else:
                massed |= set(types)
        elif (
            (n in ("run", "minimize") or n == "velocity" and "create" in a)
            and ntypes
            and not checked
            and not unknown
            and style in PER_TYPE_MASS
        ):
            checked = True
            missing = [i for i in range(1, ntypes + 1) if i not in massed]
            if missing:
                out.append(
                    _diag(
                        cmd,
                        "static.mass_missing",
                        f"atom type(s) {missing} of {ntypes} have no mass before this {n} "
                        f"(LAMMPS stops here: 'Not all per-type masses are set')",
                        f"add `mass {missing[0]} VALUE` for each type after create_box/read_data",
                    )
                )
    return out


def integrator_checks(script: ParsedScript) -> list[Diagnostic]:
    """At each run: two time integrators on the same atoms (same group, or one of them on `all`)."""
    out: list[Diagnostic] = []
    fixes: dict[str, Command] = {}
    reported: set[tuple[str, str]] = set()
    for cmd in script.commands:
        n, a = cmd.name, cmd.args
        if n == "fix" and len(a) > 2:
            fixes[a[0]] = cmd
        elif n == "unfix" and a:
            fixes.pop(a[0], None)
        elif n == "clear":
            fixes = {}
        elif n == "run":
            moving = [c for c in fixes.values() if INTEGRATOR.match(c.args[2])]
            for i, first in enumerate(moving):
                for second in moving[i + 1 :]:
                    g1, g2 = first.args[1], second.args[1]
                    key = (first.args[0], second.args[0])
                    if key in reported or not (g1 == g2 or "all" in (g1, g2)):
                        continue
                    reported.add(key)
                    out.append(
                        _diag(
                            second,
                            "static.double_integration",
                            f"fix {second.args[2]} on group '{g2}' and fix {first.args[2]} (line "
                            f"{first.line}) on group '{g1}' both move the same atoms: they would be "
                            "integrated twice",
                            "keep one integrator per atom: `unfix` one of them, "
                            "or put them on groups that do not overlap",
                        )
                    )
    return out


# LAMMPS's fix langevin `gjf` keyword (Gronbech-Jensen/Farago) keeps configurational sampling right at large
# timesteps; LAMMPS's own examples/gjf run metal units at `timestep 0.1` with it. Such a step is a warning there.
GJF_NOTE = (
    "; fix langevin's gjf integrator is made for large steps (LAMMPS's own examples/gjf use 0.1 ps in "
    "metal units), so this is a warning"
)


def _gjf_follows(script: ParsedScript, at: int) -> bool:
    """Is a `fix ... langevin ... gjf vhalf|vfull|yes` defined in the simulation of command `at` (between
    `clear`s)?"""
    after, before = script.commands[at:], script.commands[:at]
    start = next((i for i in range(len(before) - 1, -1, -1) if before[i].name == "clear"), -1) + 1
    end = next((i for i, c in enumerate(after) if c.name == "clear"), len(after))
    for cmd in before[start:] + after[:end]:
        a = cmd.args
        if cmd.name == "fix" and len(a) > 2 and a[2].startswith("langevin") and "gjf" in a[:-1]:
            if a[a.index("gjf") + 1] != "no":
                return True
    return False


def parameter_checks(script: ParsedScript) -> list[Diagnostic]:
    """Timesteps and thermostat/barostat settings that make no physical sense for the unit style."""
    out: list[Diagnostic] = []
    units, dt, units_cmd, written = "lj", None, None, "lj"
    lattices = script.find("lattice")
    for index, cmd in enumerate(script.commands):
        n, a = cmd.name, cmd.args
        if n == "units" and a:
            units, dt, units_cmd, written = a[0], None, cmd, a[0]
        elif n == "read_restart":
            units = written  # a restart file brings the units it was written with
        elif (
            n == "lattice"
            and len(a) > 1
            and a[0] != "none"
            and (value := number(a[1])) is not None
            and value > 0
            and (problem := lattice_problem(units, value, first=cmd is lattices[0]))
        ):
            # the other commands were written for the other unit style: the `units` line is the mistake
            out.append(
                _diag(
                    units_cmd or cmd,
                    "static.units",
                    f"{problem} (`{cmd.text}`, line {cmd.line})",
                    "lj lattices take a reduced density (about 0.8-1.2), metal and real ones a lattice "
                    "constant in Angstrom; make `units` match the rest of the script",
                )
            )
        elif n == "clear":
            units, dt = "lj", None
        elif n == "timestep" and a and a[0] != "0" and (value := number(a[0])) is not None:
            dt = value
            if (problem := timestep_problem(units, value)) and value > 0 and _gjf_follows(script, index):
                out.append(
                    _diag(
                        cmd,
                        "static.timestep",
                        problem + GJF_NOTE,
                        "keep it only if the GJF "
                        "integrator is what you mean to run; it integrates stably at larger steps, not "
                        "at any step",
                        Severity.WARNING,
                    )
                )
            elif problem:
                out.append(
                    _diag(
                        cmd,
                        "static.timestep",
                        problem,
                        f"use a timestep near {DEFAULT_TIMESTEP.get(units, 'the default'):g} for "
                        f"{units} units, or check the `units` command",
                    )
                )
        elif n == "fix" and len(a) > 2:
            for problem in fix_parameter_problems(cmd.words, dt or DEFAULT_TIMESTEP.get(units)):
                out.append(
                    _diag(
                        cmd,
                        "static.fix_parameter",
                        problem,
                        "temperatures are absolute (K, or lj units); damping is a time in the units' time unit",
                    )
                )
    return out


def _written_before(script: ParsedScript, path: str, line_index: int) -> bool:
    """Does a command before `line_index` write `path` (restart and dump names may hold `*` and `%`)?"""
    for cmd in script.commands[:line_index]:
        for access in script.files:
            if access.mode == "write" and access.line == cmd.line and access.file == cmd.file:
                pattern = access.path.replace("%", "*")
                if access.path == path or ("*" in pattern and fnmatchcase(path, pattern)):
                    return True
    return False


def missing_input_checks(script: ParsedScript, run_dir: Path | None) -> list[Diagnostic]:
    """Every file the script reads (data, restart, include, molecule, fix and variable files) must exist in the
    run folder or be written earlier by the script. Potential files are resolved in potentials.py.

    A file read inside an `if` may never be read (the other branch, or a condition that never holds): a warning."""
    if run_dir is None:
        return []
    out: list[Diagnostic] = []
    seen: set[tuple[str, int, str]] = set()
    for index, cmd in enumerate(script.commands):
        for access in file_accesses(cmd, cmd.words):
            if access.mode != "read" or access.kind == "potential" or "$" in access.path:
                continue
            if (access.file, access.line, access.path) in seen:
                continue
            seen.add((access.file, access.line, access.path))
            pattern = access.path.replace("%", "*")
            exists = (run_dir / access.path).exists() if "*" not in pattern else any(run_dir.glob(pattern))
            if exists or _written_before(script, access.path, index):
                continue
            maybe = cmd.context == "if"
            out.append(
                Diagnostic(
                    severity=Severity.WARNING if maybe else Severity.ERROR,
                    code="file.missing",
                    message=f"{access.kind} file '{access.path}' is not in the run folder"
                    + (" (read only if the `if` takes this branch)" if maybe else ""),
                    line=access.line,
                    file=access.file,
                    command=access.command,
                    hint=f"create '{access.path}' in the run folder (or pass it as an extra file), or write it earlier "
                    "in the script",
                )
            )
    return out


RUN_KEYWORDS = {"upto": 0, "start": 1, "stop": 1, "pre": 1, "post": 1}


def _integer(word: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", word) is not None


def run_syntax_checks(script: ParsedScript) -> list[Diagnostic]:
    """`run` and `minimize` arguments: the dry run skips these commands, so LAMMPS would only see them at run time."""
    out: list[Diagnostic] = []
    for cmd in script.commands:
        a = cmd.args
        problem = None
        if cmd.name == "run":
            if not a:
                problem = "run needs a number of steps"
            elif not _integer(a[0]):
                problem = f"run expects an integer number of steps, not '{a[0]}'"
            i = 1
            while problem is None and i < len(a):
                if a[i] == "every":  # every N command... : the rest are commands
                    if i + 1 >= len(a) or not _integer(a[i + 1]):
                        problem = "run ... every expects an integer"
                    break
                if a[i] not in RUN_KEYWORDS:
                    problem = f"unknown run keyword '{a[i]}' (upto, start, stop, pre, post, every)"
                elif a[i] in ("pre", "post") and (i + 1 >= len(a) or a[i + 1] not in ("yes", "no")):
                    problem = f"run {a[i]} expects yes or no"
                elif a[i] in ("start", "stop") and (i + 1 >= len(a) or not _integer(a[i + 1])):
                    problem = f"run {a[i]} expects an integer step"
                i += 1 + RUN_KEYWORDS.get(a[i], 0)
        elif cmd.name == "minimize":
            if len(a) != 4:
                problem = f"minimize takes 4 arguments (etol ftol maxiter maxeval), not {len(a)}"
            elif number(a[0]) is None or number(a[1]) is None:
                problem = "minimize etol and ftol must be numbers"
            elif not (_integer(a[2]) and _integer(a[3])):
                problem = "minimize maxiter and maxeval must be integers"
        if problem:
            out.append(
                _diag(
                    cmd,
                    "static.run_syntax",
                    problem + " (LAMMPS stops here when the run starts)",
                    f"see the LAMMPS manual page of {cmd.name}",
                )
            )
    return out


def static_checks(script: ParsedScript, run_dir: Path | None = None) -> list[Diagnostic]:
    return (
        missing_input_checks(script, run_dir)
        + pair_coefficient_checks(script, run_dir)
        + mass_checks(script, run_dir)
        + integrator_checks(script)
        + parameter_checks(script)
        + run_syntax_checks(script)
        + reference_checks(script)
    )
