"""Preflight of the k candidate scripts of one generation, all at once: one calcfunction, a thread per script.

Each preflight is mostly waiting on its `lmp -skiprun` subprocess (under bubblewrap), so threads run them side by
side; the node records every script and file it judged and returns each report.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiida import orm
from aiida.engine import calcfunction

from mdagent_hpc.lammps.preflight import preflight
from mdagent_hpc.models import Limits, PreflightReport
from mdagent_hpc.workflows.calcfunctions import finite
from mdagent_hpc.workflows.lammps_calc import INPUT, node_key


def candidate_inputs(candidates: dict[int, tuple[orm.SinglefileData, dict[str, orm.SinglefileData]]]) -> dict:
    """The calcfunction's inputs: `candidate_N` (the script) and `candidate_N_file_<key>` (its files)."""
    inputs = {}
    for number, (script, files) in candidates.items():
        inputs[f"candidate_{number}"] = script
        inputs |= {f"candidate_{number}_file_{node_key(name)}": node for name, node in files.items()}
    return inputs


def _check(script: str, files: list[tuple[str, bytes]], limits: Limits, dry: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="mdagent-check-") as tmp:
        run_dir = Path(tmp)
        (run_dir / INPUT).write_text(script)
        for name, content in files:
            (run_dir / name).write_bytes(content)
        return preflight(run_dir / INPUT, run_dir, limits=limits, dry=dry).model_dump(mode="json")


@calcfunction
def preflight_candidates(limits: orm.Dict, dry: orm.Bool, **nodes: orm.SinglefileData) -> orm.Dict:
    """`candidate_N` -> its preflight report (as `preflight_script` gives for one script)."""
    # The nodes are read here, on the calling thread (AiiDA's storage is not shared across threads).
    work = {
        key: (
            node.get_content(),
            [(f.filename, f.get_content(mode="rb")) for name, f in nodes.items() if name.startswith(f"{key}_file_")],
        )
        for key, node in nodes.items()
        if "_file_" not in key
    }
    limits_ = Limits(**limits.get_dict())
    with ThreadPoolExecutor(max_workers=max(1, min(len(work), os.cpu_count() or 1))) as pool:
        futures = {key: pool.submit(_check, script, files, limits_, dry.value) for key, (script, files) in work.items()}
        reports = {key: future.result() for key, future in futures.items()}
    return orm.Dict(finite(reports))


def reports_of(node: orm.Dict) -> dict[int, PreflightReport]:
    return {int(key.removeprefix("candidate_")): PreflightReport(**report) for key, report in node.get_dict().items()}
