"""The tools that never need a profile or a server: preflight a script, judge a log, find potential files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from mdagent_hpc.errors import MDAgentError

if TYPE_CHECKING:
    from mdagent_hpc.lammps.potentials import PotentialEntry
    from mdagent_hpc.models import Evaluation, PreflightReport


def check(
    script: str | Path,
    *,
    run_dir: str | Path | None = None,
    dry_run: bool = True,
    max_atoms: int | None = None,
    max_steps: int | None = None,
) -> PreflightReport:
    """Preflight a LAMMPS script: parse, sandbox policy, potentials, static checks and a `lmp -skiprun` dry run.

    Problems in the script are in the report (`.ok`, `.diagnostics`); only a file that is not a script raises.
    """
    from mdagent_hpc.lammps.install import LammpsNotFoundError
    from mdagent_hpc.lammps.preflight import preflight
    from mdagent_hpc.models import Limits

    script = Path(script)
    if script.is_dir():
        raise MDAgentError(f"{script} is a folder; give the input script in it (e.g. {script}/in.lammps)")
    if not script.is_file():
        raise MDAgentError(f"{script}: no such script")
    if run_dir is not None and not Path(run_dir).is_dir():
        raise MDAgentError(f"run folder {run_dir} does not exist")
    limits = Limits(**{k: v for k, v in {"max_atoms": max_atoms, "max_steps": max_steps}.items() if v})
    try:
        report = preflight(script, Path(run_dir) if run_dir else None, limits=limits, dry=dry_run)
    except LammpsNotFoundError as exc:
        raise MDAgentError(str(exc)) from None
    unreadable = [d for d in report.diagnostics if d.code == "script.unreadable"]
    if unreadable:
        raise MDAgentError(unreadable[0].message)
    return report


def evaluate(log: str | Path, script: str | Path | None = None) -> Evaluation:
    """Judge a finished run from its LAMMPS log (and, for thermostat targets, its input script)."""
    from mdagent_hpc.lammps.evaluate import evaluate as judge
    from mdagent_hpc.lammps.log import LogError, read_log
    from mdagent_hpc.lammps.parser import ScriptError, parse_script

    try:
        parsed_log = read_log(log)
        parsed_script = parse_script(Path(script)) if script else None
    except (LogError, ScriptError) as exc:
        raise MDAgentError(str(exc)) from None
    return judge(parsed_log, parsed_script)


_ELEMENT = re.compile(r"[A-Z][a-z]?")


def find_potentials(elements: str | list[str], style: str | None = None) -> list[PotentialEntry]:
    """Potential files here covering all `elements` ("Cu Ni" or ["Cu", "Ni"]), best match first."""
    from mdagent_hpc.lammps.potentials import find_potentials as search

    symbols = elements.split() if isinstance(elements, str) else list(elements)
    bad = [e for e in symbols if not isinstance(e, str) or not _ELEMENT.fullmatch(e)]
    if bad or not symbols:
        raise MDAgentError(f"{', '.join(map(str, bad)) or 'nothing'} is not an element symbol (write Cu, Ni, ...)")
    return search(symbols, style)
