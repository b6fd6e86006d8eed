"""Preflight and evaluation as calcfunctions: each wraps one core function and records its inputs and outputs."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from aiida import orm
from aiida.engine import calcfunction

from mdagent_hpc.lammps.evaluate import evaluate
from mdagent_hpc.lammps.log import parse_log
from mdagent_hpc.lammps.parser import parse_text
from mdagent_hpc.lammps.preflight import preflight
from mdagent_hpc.models import Limits
from mdagent_hpc.workflows.lammps_calc import INPUT, LOG


def finite(data):
    """JSON-safe copy: NaN and infinities (a blown-up run has them) become strings."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [finite(v) for v in data]
    return data


@calcfunction
def preflight_script(script: orm.SinglefileData, limits: orm.Dict, **files: orm.SinglefileData) -> orm.Dict:
    """Preflight the script with its files in a fresh folder; the report (ok, diagnostics, potentials)."""
    with tempfile.TemporaryDirectory(prefix="mdagent-check-") as tmp:
        run_dir = Path(tmp)
        (run_dir / INPUT).write_text(script.get_content())
        for node in files.values():
            (run_dir / node.filename).write_text(node.get_content())
        report = preflight(run_dir / INPUT, run_dir, limits=Limits(**limits.get_dict()))
    return orm.Dict(finite(report.model_dump(mode="json")))


@calcfunction
def evaluate_run(retrieved: orm.FolderData, script: orm.SinglefileData) -> orm.Dict:
    """The evaluator's findings, grade and reward for a finished (or failed) run."""
    names = retrieved.base.repository.list_object_names()
    text = retrieved.base.repository.get_object_content(LOG, mode="r") if LOG in names else ""
    parsed = parse_text(script.get_content(), INPUT)
    return orm.Dict(finite(evaluate(parse_log(text), parsed).model_dump(mode="json")))
