"""From a SweepSpec to a running SweepWorkChain (sweeps are read back in `provenance.sweeps`).

`plan_sweep` resolves the site, validates the sweep against its limits and picks the engine (no AiiDA: the CLI
shows it before asking to go on); `run_sweep` runs it in this process (replaying recorded answers when the spec has
some), `submit_sweep` hands it to the daemon. Both resume: the newest earlier sweep of the same spec by the same
user hands on its validated template and its passed points (docs/sweeps.md, Resuming).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from mdagent_hpc.models import Request
from mdagent_hpc.sweeps.spec import (
    SweepError,
    SweepSpec,
    choose_engine,
    core_hours,
    counted_seconds,
    expand,
    probe_points,
    spec_key,
    validate_sweep,
)
from mdagent_hpc.workflows.launch import REPLAY_MODEL, LaunchError, _inputs


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


def plan_sweep(spec: SweepSpec, site=None) -> SweepPlan:
    """Check the sweep against its site (resolved here unless given); LaunchError (one sentence) when it cannot run
    there."""
    site = site or _site(spec)
    r = site.resources
    cores = r.nodes * r.mpi_ranks_per_node * r.threads_per_rank
    try:
        validate_sweep(spec, site.sweep, walltime=r.walltime, cores_per_point=cores, site=site.name)  # before expand
        points = expand(spec)
        probes = probe_points(spec, points)
        engine, why = choose_engine(spec, len(points), "pilot" in site.model_fields_set, site.name)
    except SweepError as exc:
        raise LaunchError(str(exc)) from None
    return SweepPlan(
        site=site.name,
        points=len(points),
        probes=[p.id for p in probes],
        engine=engine,
        why=why,
        core_hours=round(core_hours(len(points), cores, counted_seconds(spec, site.sweep, r.walltime)), 3),
        max_concurrent=site.sweep.max_concurrent_jobs,
        max_core_hours=site.sweep.max_core_hours,
        cores_per_point=cores,
    )


def sweep_inputs(spec: SweepSpec, llm_overrides: dict | None = None, *, resume_for: str | None = None) -> dict:
    """The SweepWorkChain's inputs: the site resolved and the sweep planned here, once. With `resume_for` (the
    email of the user the sweep will belong to), the newest earlier sweep of the same spec by that user hands on
    its template and passed points (`provenance.sweeps.resumable`)."""
    from aiida import orm

    site = _site(spec)
    plan = plan_sweep(spec, site)
    request = Request(task=spec.task, site=spec.site, model=spec.model, loop=spec.loop)
    overrides = llm_overrides if llm_overrides is not None else ({"model": spec.model} if spec.model else {})
    agent = _inputs(request, overrides, site=site)
    stored = spec.model_dump(mode="json", exclude={"answers"})
    inputs = {
        "sweep": orm.Dict(stored),
        "engine": orm.Str(plan.engine),
        "max_concurrent": orm.Int(plan.max_concurrent),
        "agent": agent,
        "max_core_hours": orm.Float(plan.max_core_hours),
        "cores_per_point": orm.Int(plan.cores_per_point),
    }
    earlier = _earlier(resume_for, spec_key(stored)) if resume_for else None
    if earlier is not None:
        inputs["reuse"] = earlier.inputs
    if plan.engine == "parsl":
        from mdagent_hpc.execution.computers import ensure_pilot_code

        folder = earlier.sweep_folder if earlier is not None and earlier.sweep_folder else None
        if folder is None:
            import getpass
            import uuid

            workdir = agent["code"].computer.get_workdir().replace("{username}", getpass.getuser())
            folder = str(Path(workdir) / "mdagent-sweeps" / uuid.uuid4().hex)
        inputs["sweep_folder"] = orm.Str(folder)
        inputs["pilot"] = {
            "code": ensure_pilot_code(site),
            "site": orm.Dict(site.model_dump(mode="json", exclude_unset=True)),
            "max_iterations": orm.Int(site.on_failure.max_resubmits + 1),
        }
    return inputs


def get_builder_from_spec(spec: SweepSpec, llm_overrides: dict | None = None, *, resume_for: str | None = None):
    """A SweepWorkChain builder with `sweep_inputs` (the site resolved and the sweep planned once)."""
    from mdagent_hpc.workflows.sweep import SweepWorkChain

    builder = SweepWorkChain.get_builder()
    builder._update(sweep_inputs(spec, llm_overrides, resume_for=resume_for))
    return builder


def _earlier(email: str, key: str):
    from mdagent_hpc.provenance.sweeps import StillRunningError, resumable

    try:
        return resumable(email, key)
    except StillRunningError as exc:
        raise LaunchError(str(exc)) from None


def _owner() -> str:
    """Who runs a sweep from this process: the profile's default user (the owner of what it makes)."""
    from aiida import orm

    return orm.User.collection.get_default().email


def run_sweep(spec: SweepSpec):
    """Run the sweep in this process and return its finished node."""
    from mdagent_hpc.execution.profile import run_here

    if not spec.answers:
        return run_here(get_builder_from_spec(spec, resume_for=_owner()))[1]
    from mdagent_hpc.llm.replay import FakeOpenAIServer

    with FakeOpenAIServer(list(spec.answers), model=REPLAY_MODEL) as server:
        overrides = {"base_url": server.base_url, "model": REPLAY_MODEL, "max_retries": 0}
        return run_here(get_builder_from_spec(spec, overrides, resume_for=_owner()))[1]


def submit_sweep(spec: SweepSpec):
    """Hand the sweep to the daemon (started if needed); returns its node at once."""
    if spec.answers:
        raise LaunchError(
            "a sweep with recorded answers runs in this process (without --daemon): the replay "
            "server lives only as long as the run"
        )
    builder = get_builder_from_spec(spec, resume_for=_owner())
    from aiida.engine import submit

    from mdagent_hpc.execution.profile import DaemonError, start_daemon

    try:
        start_daemon()
    except DaemonError as exc:
        raise LaunchError(str(exc)) from None
    return submit(builder)
