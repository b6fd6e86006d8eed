"""From a SweepSpec to a running SweepWorkChain, and back to what a user reads (`SweepRun`).

`plan_sweep` resolves the site, validates the sweep against its limits and picks the engine (no AiiDA: the CLI
shows it before asking to go on); `run_sweep` runs it in this process (replaying recorded answers when the spec has
some), `submit_sweep` hands it to the daemon. `read_sweep`, `list_sweeps` and `export_sweep` read sweeps back.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from mdagent_hpc.models import Request
from mdagent_hpc.sweep.results import SweepRun, eta
from mdagent_hpc.sweep.spec import (
    SweepError,
    SweepSpec,
    choose_engine,
    core_hours,
    counted_seconds,
    expand,
    probe_points,
    validate_sweep,
)
from mdagent_hpc.workflows.launch import REPLAY_MODEL, LaunchError, _inputs

PROCESS_TYPE = "aiida.workflows:mdagent.sweep"


class SweepPlan(BaseModel):
    """What will run: the points, the probes, the engine and why, the estimated cost."""

    site: str
    points: int
    probes: list[str]
    engine: str
    why: str
    core_hours: float
    max_concurrent: int
    max_core_hours: float  # the site's cap, re-checked with the validation run's measured time
    cores_per_point: int


def _site(spec: SweepSpec):
    from mdagent_hpc.execution.computers import local_site
    from mdagent_hpc.execution.registry import find_site
    from mdagent_hpc.execution.site import SiteConfigError

    try:
        return local_site() if spec.site is None else find_site(spec.site)
    except SiteConfigError as exc:
        raise LaunchError(str(exc)) from None


def plan_sweep(spec: SweepSpec) -> SweepPlan:
    """Check the sweep against its site; LaunchError (one sentence) when it cannot run there."""
    site = _site(spec)
    r = site.resources
    cores = r.nodes * r.mpi_ranks_per_node * r.threads_per_rank
    try:
        validate_sweep(spec, site.sweep, walltime=r.walltime, cores_per_point=cores, site=site.name)  # before expand
        points = expand(spec)
        probes = probe_points(spec, points)
        engine, why = choose_engine(spec, len(points), "pilot" in site.model_fields_set, site.name)
    except SweepError as exc:
        raise LaunchError(str(exc)) from None
    return SweepPlan(site=site.name, points=len(points), probes=[p.id for p in probes], engine=engine, why=why,
                     core_hours=round(core_hours(len(points), cores, counted_seconds(spec, site.sweep, r.walltime)), 3),
                     max_concurrent=site.sweep.max_concurrent_jobs, max_core_hours=site.sweep.max_core_hours,
                     cores_per_point=cores)


def sweep_inputs(spec: SweepSpec, llm_overrides: dict | None = None) -> dict:
    from aiida import orm

    plan = plan_sweep(spec)
    request = Request(task=spec.task, site=spec.site, model=spec.model, loop=spec.loop)
    overrides = llm_overrides if llm_overrides is not None else ({"model": spec.model} if spec.model else {})
    agent = _inputs(request, overrides)
    inputs = {"sweep": orm.Dict(spec.model_dump(mode="json", exclude={"answers"})), "engine": orm.Str(plan.engine),
              "max_concurrent": orm.Int(plan.max_concurrent), "agent": agent,
              "max_core_hours": orm.Float(plan.max_core_hours), "cores_per_point": orm.Int(plan.cores_per_point)}
    if plan.engine == "parsl":
        import getpass
        import uuid

        workdir = agent["code"].computer.get_workdir().replace("{username}", getpass.getuser())
        inputs["sweep_folder"] = orm.Str(str(Path(workdir) / "mdagent-sweeps" / uuid.uuid4().hex))
    return inputs


def run_sweep(spec: SweepSpec):
    """Run the sweep in this process and return its finished node."""
    from mdagent_hpc.execution.profile import run_here
    from mdagent_hpc.workflows.sweep import SweepWorkChain

    if not spec.answers:
        return run_here(SweepWorkChain, **sweep_inputs(spec))[1]
    from mdagent_hpc.llm.replay import FakeOpenAIServer

    with FakeOpenAIServer(list(spec.answers), model=REPLAY_MODEL) as server:
        inputs = sweep_inputs(spec, {"base_url": server.base_url, "model": REPLAY_MODEL, "max_retries": 0})
        return run_here(SweepWorkChain, **inputs)[1]


def submit_sweep(spec: SweepSpec):
    """Hand the sweep to the daemon (started if needed); returns its node at once."""
    if spec.answers:
        raise LaunchError("a sweep with recorded answers runs in this process (without --daemon): the replay "
                          "server lives only as long as the run")
    inputs = sweep_inputs(spec)
    from aiida.engine import submit

    from mdagent_hpc.execution.profile import DaemonError, start_daemon
    from mdagent_hpc.workflows.sweep import SweepWorkChain

    try:
        start_daemon()
    except DaemonError as exc:
        raise LaunchError(str(exc)) from None
    return submit(SweepWorkChain, **inputs)


class NotASweep(ValueError):
    """The node is not a SweepWorkChain."""


def read_sweep(node_or_pk) -> SweepRun:
    from aiida import orm

    node = node_or_pk if isinstance(node_or_pk, orm.Node) else orm.load_node(node_or_pk)
    if not isinstance(node, orm.WorkChainNode) or node.process_type != PROCESS_TYPE:
        what = getattr(node, "process_label", None) or type(node).__name__
        raise NotASweep(f"node {node.pk} is not a sweep (it is a {what}); `mdagent sweep status` lists the sweeps")
    extras = node.base.extras.all
    running = [c for c in node.called if not c.is_terminated and c.process_type
               and c.process_type.endswith(("mdagent.lammps.base", "mdagent.sweep.pilot"))]
    n_running = len(running)
    if "sweep_folder" in node.inputs and running:
        from mdagent_hpc.execution.pilot import pilot_progress  # the pilot knows which of its points run

        progress = pilot_progress(node.inputs.sweep_folder.value)  # empty when the folder is on another host
        n_running = progress["running"] if progress.get("total") else n_running
    state = node.process_state.value if node.process_state else None
    verdict = "passed" if node.is_finished_ok else "failed" if node.is_terminated else "running"
    end = node.mtime if node.is_terminated else datetime.now(tz=node.ctime.tzinfo)
    elapsed = (end - node.ctime).total_seconds()
    total, done, failed = extras.get("points_total", 0), extras.get("points_done", 0), extras.get("points_failed", 0)
    concurrency = node.inputs.max_concurrent.value if node.inputs.engine.value == "calcjob" else max(n_running, 1)
    return SweepRun(
        pk=node.pk, uuid=node.uuid, task=extras.get("task", node.inputs.sweep["task"]),
        site=extras.get("site", "local"),
        engine=node.inputs.engine.value, state=state, verdict=verdict, exit_status=node.exit_status,
        exit_message=node.exit_message or (node.process_status if node.is_killed or node.is_excepted else None),
        ctime=node.ctime.isoformat(timespec="seconds"), seconds=round(elapsed, 1), points_total=total,
        points_done=done, points_failed=failed, points_running=n_running,
        eta_s=None if node.is_terminated else eta(total, done + failed, n_running, elapsed, concurrency),
        llm_calls=extras.get("llm_calls", 0),
        template=node.outputs.template.get_content() if "template" in node.outputs else None,
        rows=node.outputs.results["rows"] if "results" in node.outputs else [])


def list_sweeps(limit: int = 20) -> list[SweepRun]:
    from aiida import orm

    qb = orm.QueryBuilder().append(orm.WorkChainNode, tag="sweep", filters={"process_type": PROCESS_TYPE})
    qb.order_by({"sweep": {"ctime": "desc"}}).limit(limit)
    return [read_sweep(node) for (node,) in qb.all()]


def export_sweep(node_or_pk, folder: Path) -> dict[str, str]:
    """Write the table (CSV, JSON) and the plot (PNG) of a finished sweep into `folder`; their paths."""
    import json

    from aiida import orm

    node = node_or_pk if isinstance(node_or_pk, orm.Node) else orm.load_node(node_or_pk)
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
