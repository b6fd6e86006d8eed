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
from mdagent_hpc.lammps.preflight import preflight, skiprun_diagnostics
from mdagent_hpc.models import Limits, Severity
from mdagent_hpc.workflows.lammps_calc import INPUT, LOG, STDOUT


def finite(data):
    """JSON-safe copy: NaN and infinities (a blown-up run has them) become strings."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [finite(v) for v in data]
    return data


def call_without_broker(function, **inputs) -> dict:
    """Call a calcfunction from a workchain step the way `function(**inputs)` does (same node, inputs, outputs and
    CALL_CALC link to the step's process), but on a runner of the step's event loop with no broker connection.

    In a daemon step, `function(**inputs)` runs on the daemon's runner: the process registers an RPC and a broadcast
    subscriber with RabbitMQ and broadcasts each state change, several broker round trips for a function that runs
    here, now, and that nobody can reach while it does (aiida-core gives a calcfunction called outside a process a
    runner without a broker for the same reason, PR #7343). A sweep records its points with it: one round of broker
    calls per point cost more than the record itself."""
    from aiida.engine import Process
    from aiida.engine.runners import Runner

    current = Process.current()
    if current is None:  # not in a step: aiida-core's own call has no broker either
        return function(**inputs)
    process_class = function.process_class
    process = process_class(inputs=process_class.create_inputs(**inputs), runner=Runner(loop=current.runner.loop))
    return process.execute()


@calcfunction
def preflight_script(
    script: orm.SinglefileData, limits: orm.Dict, dry: orm.Bool | None = None, **files: orm.SinglefileData
) -> orm.Dict:
    """Preflight the script with its files in a fresh folder; the report (ok, diagnostics, potentials).

    `dry` False leaves out the `lmp -skiprun` dry run (done as a short job where LAMMPS is, see `dry_run_report`).
    """
    with tempfile.TemporaryDirectory(prefix="mdagent-check-") as tmp:
        run_dir = Path(tmp)
        (run_dir / INPUT).write_text(script.get_content())
        for node in files.values():
            (run_dir / node.filename).write_bytes(node.get_content(mode="rb"))
        report = preflight(run_dir / INPUT, run_dir, limits=Limits(**limits.get_dict()), dry=dry is None or dry.value)
    return orm.Dict(finite(report.model_dump(mode="json")))


@calcfunction
def dry_run_report(retrieved: orm.FolderData, script: orm.SinglefileData, limits: orm.Dict) -> orm.Dict:
    """Diagnostics from the log of a `lmp -skiprun` job, mapped back to the script's lines."""
    names = retrieved.base.repository.list_object_names()
    read = retrieved.base.repository.get_object_content
    log = read(LOG, mode="r") if LOG in names else ""
    stdout = read(STDOUT, mode="r") if STDOUT in names else ""
    stderr = read("_scheduler-stderr.txt", mode="r") if "_scheduler-stderr.txt" in names else ""
    parsed = parse_text(script.get_content(), INPUT)
    returncode = 0 if "Total wall time" in log else 1
    diags = skiprun_diagnostics(parsed, log + "\n" + stdout, returncode, stderr or stdout, Limits(**limits.get_dict()))
    ok = not any(d.severity == Severity.ERROR for d in diags)
    return orm.Dict({"ok": ok, "diagnostics": [d.model_dump(mode="json") for d in diags]})


@calcfunction
def evaluate_run(retrieved: orm.FolderData, script: orm.SinglefileData) -> orm.Dict:
    """The evaluator's findings, grade and reward for a finished (or failed) run."""
    names = retrieved.base.repository.list_object_names()
    text = retrieved.base.repository.get_object_content(LOG, mode="r") if LOG in names else ""
    parsed = parse_text(script.get_content(), INPUT)
    return orm.Dict(finite(evaluate(parse_log(text), parsed).model_dump(mode="json")))
