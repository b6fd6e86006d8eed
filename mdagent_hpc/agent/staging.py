"""What goes into a run: the potentials offered to the model, and the files staged next to the script. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import TypeVar

from mdagent_hpc.lammps.policy import path_problem
from mdagent_hpc.lammps.potentials import PotentialEntry
from mdagent_hpc.llm.prompts import PotentialInfo
from mdagent_hpc.models import Diagnostic, PreflightReport, Severity

MAX_OFFERED = 20
T = TypeVar("T")


def offered_potentials(
    elements: list[str], ranked: list[PotentialEntry], limit: int = MAX_OFFERED
) -> list[PotentialInfo]:
    """The potentials the prompt lists: the best `limit` of those covering the task's elements (ranked best first);
    none when the task names no element (the model then picks a pair style that needs no file)."""
    if not elements:
        return []
    return [PotentialInfo(name=p.name, pair_style=p.style or "?", elements=p.elements) for p in ranked[:limit]]


def refused_name(name: str) -> str | None:
    """Why an extra file of the model's answer may not be written into the run folder, or None."""
    if "/" in name or "\\" in name:
        return "is not a plain name in the run folder"
    if problem := path_problem(name):
        return f"is not a plain name in the run folder ({problem})"
    return None


def refused_files(names: Iterable[str]) -> list[Diagnostic]:
    """One error per extra file name that leaves the run folder (it is not written, and the model hears why)."""
    return [
        Diagnostic(
            severity=Severity.ERROR,
            code="policy.path",
            message=f"the extra file name '{name}' {why}",
            hint="name extra files like data.lmp, without folders",
        )
        for name in names
        if (why := refused_name(name))
    ]


def files_to_stage(generated: Mapping[str, T], restart: Mapping[str, T]) -> dict[str, T]:
    """File name -> file for the run folder: restart files a cut-off run left, then the answer's extra files (which
    win on a clash); names that would leave the run folder are never staged."""
    staged = {**restart, **generated}
    return {name: f for name, f in staged.items() if refused_name(name) is None}


def potentials_to_stage(report: PreflightReport) -> dict[str, str]:
    """Bare file name -> path of each potential the script uses that preflight found outside the run folder."""
    return {
        PurePosixPath(p.name).name: p.resolved for p in report.potentials if p.resolved and p.source != "run-folder"
    }
