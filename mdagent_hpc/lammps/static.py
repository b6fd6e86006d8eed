"""Static checks for mistakes `lmp -skiprun` does not catch (they surface only when a run starts)."""

from __future__ import annotations

import re
from pathlib import Path

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
                out.append(_diag(cmd, "static.pair_coeff_missing",
                                 f"pair coefficients are not set for atom type(s) {missing_self} of {ntypes} "
                                 f"before this {n}", f"add `pair_coeff {missing_self[0]} {missing_self[0]} ...` "
                                 "(or `pair_coeff * * ...` for a many-body potential)"))
            elif NO_MIXING.match(style):
                pairs = [(i, j) for i in range(1, ntypes + 1) for j in range(i + 1, ntypes + 1)
                         if (i, j) not in covered]
                if pairs:
                    out.append(_diag(cmd, "static.pair_coeff_missing",
                                     f"pair_style {style} cannot mix coefficients, and pairs {pairs[:5]} are "
                                     f"not set before this {n}", f"add `pair_coeff {pairs[0][0]} {pairs[0][1]} ...`"))
    return out


def reference_checks(script: ParsedScript) -> list[Diagnostic]:
    """`v_`, `c_`, `f_` references in thermo output and time averages name things the script defines."""
    variables = set(script.variables)
    computes = {c.args[0] for c in script.find("compute") if c.args} | BUILTIN_COMPUTES
    fixes = {c.args[0] for c in script.find("fix") if c.args}
    out: list[Diagnostic] = []
    for cmd in script.commands:
        if cmd.name == "thermo_style":
            refs = cmd.args[1:]
        elif cmd.name == "fix" and len(cmd.args) > 2 and cmd.args[2].startswith("ave/"):
            refs = cmd.args[3:]
        else:
            continue
        for word in refs:
            m = re.fullmatch(r"([vcf])_([A-Za-z0-9_]+)(\[.*\])?", word)
            if not m:
                continue
            kind, name = m.group(1), m.group(2)
            known = {"v": variables, "c": computes, "f": fixes}[kind]
            if name not in known:
                what = {"v": "variable", "c": "compute", "f": "fix"}[kind]
                out.append(_diag(cmd, "static.undefined_reference",
                                 f"{word} refers to {what} '{name}', which the script never defines",
                                 f"define the {what} '{name}' before this line, or remove {word}"))
    return out


def static_checks(script: ParsedScript, run_dir: Path | None = None) -> list[Diagnostic]:
    return pair_coefficient_checks(script, run_dir) + reference_checks(script)
