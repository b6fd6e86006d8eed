"""Sweeps as a user reads them (`SweepRun`), and a finished sweep's table and plot written out."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from mdagent_hpc.provenance import SWEEP_TYPE, Caller, load, only
from mdagent_hpc.sweep.results import SweepRun, eta


class NotASweep(ValueError):
    """The node is not a SweepWorkChain."""


def read_sweep(node) -> SweepRun:
    """The SweepRun of a sweep's node, found by a lookup that took the caller (`get_sweep`, `list_sweeps`)."""
    from aiida import orm

    if not isinstance(node, orm.WorkChainNode) or node.process_type != SWEEP_TYPE:
        what = getattr(node, "process_label", None) or type(node).__name__
        raise NotASweep(f"node {node.pk} is not a sweep (it is a {what}); `mdagent sweep status` lists the sweeps")
    extras = node.base.extras.all
    running = [
        c
        for c in node.called
        if not c.is_terminated
        and c.process_type
        and c.process_type.endswith(("mdagent.lammps.job", "mdagent.lammps.base", "mdagent.sweep.pilot"))
    ]
    n_running = len(running)
    if "sweep_folder" in node.inputs and running:
        from mdagent_hpc.execution.parsl.driver import pilot_progress  # the pilot knows which of its points run

        progress = pilot_progress(node.inputs.sweep_folder.value)  # empty when the folder is on another host
        n_running = progress["running"] if progress.get("total") else n_running
    state = node.process_state.value if node.process_state else None
    verdict = "passed" if node.is_finished_ok else "failed" if node.is_terminated else "running"
    end = node.mtime if node.is_terminated else datetime.now(tz=node.ctime.tzinfo)
    elapsed = (end - node.ctime).total_seconds()
    total, done, failed = extras.get("points_total", 0), extras.get("points_done", 0), extras.get("points_failed", 0)
    concurrency = node.inputs.max_concurrent.value if node.inputs.engine.value == "calcjob" else max(n_running, 1)
    return SweepRun(
        pk=node.pk,
        uuid=node.uuid,
        task=extras.get("task", node.inputs.sweep["task"]),
        site=extras.get("site", "local"),
        engine=node.inputs.engine.value,
        state=state,
        verdict=verdict,
        exit_status=node.exit_status,
        exit_message=node.exit_message or (node.process_status if node.is_killed or node.is_excepted else None),
        ctime=node.ctime.isoformat(timespec="seconds"),
        seconds=round(elapsed, 1),
        points_total=total,
        points_done=done,
        points_failed=failed,
        points_running=n_running,
        eta_s=None if node.is_terminated else eta(total, done + failed, n_running, elapsed, concurrency),
        llm_calls=extras.get("llm_calls", 0),
        template=node.outputs.template.get_content() if "template" in node.outputs else None,
        rows=node.outputs.results["rows"] if "results" in node.outputs else [],
    )


def get_sweep(caller: Caller, pk) -> SweepRun:
    """One sweep by pk or UUID; `NotFound` when it does not exist or is not the caller's to read."""
    return read_sweep(load(caller, pk, "sweep"))


def list_sweeps(caller: Caller, limit: int = 20) -> list[SweepRun]:
    """The caller's newest sweeps first."""
    from aiida import orm

    qb = orm.QueryBuilder().append(orm.WorkChainNode, tag="sweep", project=["*"], filters={"process_type": SWEEP_TYPE})
    only(qb, "sweep", caller)
    qb.order_by({"sweep": {"ctime": "desc"}}).limit(limit)
    return [read_sweep(node) for node in qb.all(flat=True)]


def export_sweep(caller: Caller, pk, folder: Path) -> dict[str, str]:
    """Write the table (CSV, JSON) and the plot (PNG) of a finished sweep into `folder`; their paths."""
    import json

    node = load(caller, pk, "sweep")
    read_sweep(node)  # NotASweep for any other node
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    if "table" in node.outputs:
        paths["csv"] = folder / "sweep.csv"
        paths["csv"].write_bytes(node.outputs.table.get_content(mode="rb"))
        paths["json"] = folder / "sweep.json"
        paths["json"].write_text(json.dumps(node.outputs.results["rows"], indent=1))
    if "plot" in node.outputs:
        paths["png"] = folder / "sweep.png"
        paths["png"].write_bytes(node.outputs.plot.get_content(mode="rb"))
    return {k: str(v) for k, v in paths.items()}
