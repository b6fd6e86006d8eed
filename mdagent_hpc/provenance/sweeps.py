"""Sweeps as a user reads them (`SweepRun`), a sweep's table and plot written out, and what an earlier sweep of the
same spec hands on to a new one (`resumable`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mdagent_hpc.provenance import JOB_TYPES, SWEEP_TYPE, Caller, is_point, load, only, point_process
from mdagent_hpc.sweeps.results import SweepRun, eta

# Extras a SweepWorkChain keeps up to date as it goes (also when it is interrupted): the key of its spec, and
# {"template": pk, "files": {group: {port: pk}}, "records": {point id: {"pk": result pk, "ok": bool}}}.
SPEC_KEY, REUSE = "spec_sha256", "reuse"


class NotASweepError(ValueError):
    """The node is not a SweepWorkChain."""


class StillRunningError(ValueError):
    """An earlier sweep of the same spec is still running: a second one would run its points twice."""


@dataclass
class Earlier:
    """What an earlier sweep hands on: the SweepWorkChain's `reuse` inputs and the pilot's sweep folder."""

    pk: int
    inputs: dict
    sweep_folder: str | None


def resumable(email: str, key: str) -> Earlier | None:
    """The newest earlier sweep of the spec `key` by the user `email` that validated a template (finished, killed,
    or dead with the process that ran it); StillRunningError when a newer one still runs."""
    from aiida import orm

    qb = orm.QueryBuilder().append(
        orm.WorkChainNode, tag="sweep", project=["*"], filters={"process_type": SWEEP_TYPE, f"extras.{SPEC_KEY}": key}
    )
    qb.append(orm.User, with_node="sweep", filters={"email": email})
    for node in qb.order_by({"sweep": {"ctime": "desc"}}).limit(20).all(flat=True):
        if not node.is_terminated and _alive(node):
            raise StillRunningError(
                f"sweep {node.pk} of this spec is still running; follow it with `mdagent sweep status {node.pk}` "
                f"or stop it with `mdagent cancel {node.pk}` first"
            )
        reuse = node.base.extras.get(REUSE, None) or {}
        if not reuse.get("template"):
            continue
        files = {
            group: {port: orm.load_node(pk) for port, pk in ports.items()}
            for group, ports in reuse.get("files", {}).items()
            if ports
        }
        points = {pid: orm.load_node(r["pk"]) for pid, r in reuse.get("records", {}).items() if r["ok"]}
        inputs = {"template": orm.load_node(reuse["template"]), **files, "points": points}
        folder = node.inputs.sweep_folder.value if "sweep_folder" in node.inputs else None
        return Earlier(pk=node.pk, inputs=inputs, sweep_folder=folder)
    return None


def _alive(node) -> bool:
    """Whether an unfinished sweep still has a process: the daemon's are (it resumes them); one run in a CLI
    process is not once that process is gone (killed with SIGKILL, its machine rebooted)."""
    import os
    import socket

    from mdagent_hpc.execution.cancel import RUNNER_EXTRA

    runner = node.base.extras.get(RUNNER_EXTRA, None)
    if not runner or runner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(runner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, KeyError, TypeError):
        return True
    return True


def _interrupted_frame(node):
    """The table of the points an interrupted sweep recorded (none when it ended with its own table)."""
    from aiida import orm

    from mdagent_hpc.sweeps.results import PointResult, table
    from mdagent_hpc.sweeps.spec import SweepSpec

    if "results" in node.outputs or (not node.is_terminated and _alive(node)):
        return None
    records = (node.base.extras.get(REUSE, None) or {}).get("records", {})
    if not records:
        return None
    results = [PointResult(**orm.load_node(r["pk"]).get_dict()) for r in records.values()]
    return table(SweepSpec(**node.inputs.sweep.get_dict()), results)


def read_sweep(node, rows: bool = True) -> SweepRun:
    """The SweepRun of a sweep's node, found by a lookup that took the caller (`get_sweep`, `list_sweeps`)."""
    from aiida import orm

    if not isinstance(node, orm.WorkChainNode) or node.process_type != SWEEP_TYPE:
        what = getattr(node, "process_label", None) or type(node).__name__
        raise NotASweepError(f"node {node.pk} is not a sweep (it is a {what}); `mdagent sweep status` lists the sweeps")
    extras = node.base.extras.all
    running = [c for c in node.called if not c.is_terminated and c.process_type in JOB_TYPES]
    n_running = len(running)
    if "sweep_folder" in node.inputs and running:
        from mdagent_hpc.execution.parsl.driver import pilot_progress  # the pilot knows which of its points run

        progress = pilot_progress(node.inputs.sweep_folder.value)  # empty when the folder is on another host
        n_running = progress["running"] if progress.get("total") else n_running
    state = node.process_state.value if node.process_state else None
    verdict = "passed" if node.is_finished_ok else "failed" if node.is_terminated else "running"
    if verdict == "running" and not _alive(node):
        verdict = "failed"  # its process is gone: `mdagent sweep resume` takes it up
    table_rows = []
    if "results" in node.outputs:
        table_rows = node.outputs.results["rows"]
    elif rows:
        from mdagent_hpc.sweeps.results import table_json

        frame = _interrupted_frame(node)
        table_rows = table_json(frame) if frame is not None else []
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
        rows=table_rows,
        spec=node.inputs.sweep.get_dict(),
    )


def get_sweep(caller: Caller, pk) -> SweepRun:
    """One sweep by pk or UUID; `NotFoundError` when it does not exist or is not the caller's to read."""
    return read_sweep(load(caller, pk, "sweep"))


def list_sweeps(caller: Caller, limit: int = 20) -> list[SweepRun]:
    """The caller's newest sweeps first."""
    from aiida import orm

    qb = orm.QueryBuilder().append(orm.WorkChainNode, tag="sweep", project=["*"], filters={"process_type": SWEEP_TYPE})
    only(qb, "sweep", caller)
    qb.order_by({"sweep": {"ctime": "desc"}}).limit(limit)
    return [read_sweep(node, rows=False) for node in qb.all(flat=True)]


def export_sweep(caller: Caller, pk, folder: Path) -> dict[str, str]:
    """Write the table (CSV, JSON) and the plot (PNG) of a sweep into `folder` (of the points it recorded, when it
    was interrupted); their paths."""
    import json

    node = load(caller, pk, "sweep")
    read_sweep(node)  # NotASweepError for any other node
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
    elif (frame := _interrupted_frame(node)) is not None:
        from mdagent_hpc.sweeps.results import plot, table_json
        from mdagent_hpc.sweeps.spec import SweepSpec

        paths["csv"] = folder / "sweep.csv"
        paths["csv"].write_text(frame.to_csv(index=False))
        paths["json"] = folder / "sweep.json"
        paths["json"].write_text(json.dumps(table_json(frame), indent=1))
        paths["png"] = plot(SweepSpec(**node.inputs.sweep.get_dict()), frame, folder / "sweep.png")
    return {k: str(v) for k, v in paths.items()}


def recorded_points(node) -> list:
    """Every record a sweep (found by a lookup that took the caller) made, in the order made: each point once per
    template it ran with (the output `points` holds the latest). Sweeps before December 2026
    recorded a point per `record_point` process; the record is its output `result`."""
    from aiida.common.links import LinkType

    found = []
    calls = node.base.links.get_outgoing(link_type=LinkType.CALL_CALC).all()
    for link in sorted(calls, key=lambda link: link.node.pk):
        if link.link_label.startswith("records_"):
            made = link.node.base.links.get_outgoing(link_type=LinkType.CREATE, link_label_filter="result_%").all()
            records = [m.node for m in sorted(made, key=lambda m: int(m.link_label.removeprefix("result_")))]
        elif link.link_label.startswith("record_") and "result" in link.node.outputs:
            records = [link.node.outputs.result]
        else:
            continue
        found.extend(records)
    return found


def sweep_of_point(caller: Caller, pk: str) -> int | None:
    """The sweep a sweep point (listed with the runs) belongs to; None for any other node, or one the caller may
    not read."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    if not pk.isdigit():
        return None
    try:
        node = orm.load_node(int(pk))
    except NotExistent:
        return None
    if not caller.may_read(node):
        return None
    if not is_point(node):
        return None
    sweep = point_process(node).caller
    return sweep.pk if sweep is not None else None
