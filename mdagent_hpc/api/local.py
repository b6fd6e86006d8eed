"""The API's backend on this machine's profile: each function takes inputs the API has resolved already
(`mdagent_hpc/api/__init__.py`) and reads or writes the AiiDA profile. `mdagent_hpc/api/remote.py` is the same
functions through a shared server.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdagent_hpc.errors import MDAgentError

if TYPE_CHECKING:
    from mdagent_hpc.models import Request, Run
    from mdagent_hpc.provenance import Caller
    from mdagent_hpc.provenance.filters import Query
    from mdagent_hpc.sweeps.results import SweepRun
    from mdagent_hpc.sweeps.spec import SweepSpec
    from mdagent_hpc.workflows.sweep_launch import SweepPlan


def _caller(caller: Caller | None) -> Caller:
    """Who reads: as given (the server passes its user), else whoever uses this profile directly."""
    from mdagent_hpc.provenance import local_caller

    return caller if caller is not None else local_caller()


# -- the agent ------------------------------------------------------------------------------------------------
def run(request: Request) -> Run:
    """Run the agent loop in this process and wait for it."""
    return _launch(request, daemon=False)


def submit(request: Request) -> Run:
    """Hand the agent loop to the AiiDA daemon (starting it if needed) and return at once."""
    if request.answers:
        raise MDAgentError("a request with recorded answers runs in this process; use run(), not submit()")
    return _launch(request, daemon=True)


def _launch(request: Request, daemon: bool) -> Run:
    """Start the agent run in this process (waiting for it) or hand it to the daemon; the `Run` as it is then."""
    load_profile()
    from mdagent_hpc.provenance.runs import read_run
    from mdagent_hpc.workflows.launch import run_request, submit_request

    node = (submit_request if daemon else run_request)(request)  # LaunchError: an MDAgentError
    return read_run(node)  # made here, by this caller


def get_run(pk: int | str, caller: Caller | None) -> Run:
    """One agent run (by pk or UUID): task, verdict, the passed script, its evaluation and observables, attempts."""
    load_profile()
    from mdagent_hpc.provenance import NotFoundError
    from mdagent_hpc.provenance.runs import NotAnAgentRunError, get_run

    try:
        return get_run(_caller(caller), pk)
    except NotFoundError:
        raise MDAgentError(f"no node with pk {pk}; `mdagent runs` (or list_runs()) lists the runs") from None
    except NotAnAgentRunError as exc:
        raise MDAgentError(str(exc)) from None


def list_runs(
    limit: int, verdict: str | None, site: str | None, task_contains: str | None, caller: Caller | None
) -> list[Run]:
    """Recent agent runs, newest first."""
    load_profile()
    from mdagent_hpc.provenance.runs import list_runs as query

    return query(_caller(caller), limit=limit, verdict=verdict, site=site, task_contains=task_contains)


# -- provenance queries (docs/queries.md) -------------------------------------------------------------------
def find_runs(query: Query, caller: Caller | None) -> list[dict]:
    """The runs `query` finds, as JSON-ready dicts."""
    load_profile()
    from mdagent_hpc.provenance.query import search

    return search(query, _caller(caller))


def diff_runs(a: int | str, b: int | str, caller: Caller | None) -> dict:
    """Run against run ("42") or attempt against attempt ("42:1", "42:2"): `script_diff` (unified), `settings`
    that differ ([key, a, b]), `observables` side by side ([name, a, b, b - a])."""
    load_profile()
    from mdagent_hpc.provenance.query import NoSuchRunError, diff
    from mdagent_hpc.provenance.runs import NotAnAgentRunError

    try:
        return diff(_caller(caller), a, b)
    except (NoSuchRunError, NotAnAgentRunError, ValueError) as exc:
        raise MDAgentError(str(exc)) from None


def plot_run(run: int | str, out: str | Path | None, caller: Caller | None) -> Path:
    """Thermo quantities against step (or time) for every run segment of a run's passed (else last) attempt, or
    of attempt N ("42:2"), as a PNG; returns its path (default: run-PK[-N].png here)."""
    load_profile()
    from mdagent_hpc.provenance.plot import plot_thermo
    from mdagent_hpc.provenance.query import NoSuchRunError, attempt_log
    from mdagent_hpc.provenance.runs import NotAnAgentRunError

    try:
        title, log = attempt_log(_caller(caller), run)
        path = Path(out) if out else Path(f"run-{str(run).replace(':', '-')}.png")
        return plot_thermo(log, path, title)
    except (NoSuchRunError, NotAnAgentRunError, ValueError) as exc:
        raise MDAgentError(str(exc)) from None


def index_runs(redo: bool, progress) -> tuple[int, list[str]]:
    """Record the query fields of past runs that lack them (all with `redo`); on PostgreSQL also the indexes.
    Returns (runs recorded, problems)."""
    load_profile()
    from mdagent_hpc.provenance.query import ensure_indexes
    from mdagent_hpc.provenance.query import index_runs as backfill

    ensure_indexes()
    return backfill(redo=redo, progress=progress)


# -- parameter sweeps (docs/sweeps.md) ----------------------------------------------------------------------
def plan_sweep(spec: SweepSpec) -> SweepPlan:
    """What a sweep would run where; checks the limits."""
    from mdagent_hpc.workflows.sweep_launch import plan_sweep as plan

    return plan(spec)  # LaunchError, SweepError: MDAgentErrors


def sweep(spec: SweepSpec, daemon: bool) -> SweepRun:
    """Run the sweep here (waiting for it) or hand it to the daemon."""
    load_profile()
    from mdagent_hpc.provenance.sweeps import read_sweep
    from mdagent_hpc.workflows.sweep_launch import run_sweep, submit_sweep

    node = submit_sweep(spec) if daemon else run_sweep(spec)
    return read_sweep(node)  # made here, by this caller


def get_sweep(pk: int | str, caller: Caller | None) -> SweepRun:
    """One sweep (by pk or UUID): progress, verdict, LLM calls, the template, the table rows."""
    load_profile()
    from mdagent_hpc.provenance import NotFoundError
    from mdagent_hpc.provenance.sweeps import NotASweepError, get_sweep

    try:
        return get_sweep(_caller(caller), pk)
    except NotFoundError:
        raise MDAgentError(f"no node with pk {pk}; `mdagent sweep status` lists the sweeps") from None
    except NotASweepError as exc:
        raise MDAgentError(str(exc)) from None


def list_sweeps(limit: int, caller: Caller | None) -> list[SweepRun]:
    """Recent sweeps, newest first."""
    load_profile()
    from mdagent_hpc.provenance.sweeps import list_sweeps as query

    return query(_caller(caller), limit)


def export_sweep(pk: int | str, folder: str | Path | None, caller: Caller | None) -> dict[str, str]:
    """Write a sweep's table (CSV, JSON) and plot (PNG) to `folder` (default: MDAGENT_HOME/sweeps/PK); their paths."""
    from mdagent_hpc.home import mdagent_home
    from mdagent_hpc.provenance.sweeps import export_sweep as export

    found = get_sweep(pk, caller)
    return export(_caller(caller), found.pk, Path(folder) if folder else mdagent_home() / "sweeps" / str(found.pk))


# -- setup ----------------------------------------------------------------------------------------------------
_loaded: dict[str, Any] = {}


def load_profile():
    """Load mdagent's AiiDA profile (creating it, its `local` computer and LAMMPS code on first use)."""
    from mdagent_hpc.home import HomeError, ensure_home, mdagent_home

    key = str(mdagent_home())
    if key in _loaded:
        return _loaded[key]
    from mdagent_hpc.execution.profile import ProfileError, ensure_profile

    try:
        ensure_home()
        _loaded[key] = ensure_profile()
    except (HomeError, ProfileError) as exc:
        raise MDAgentError(str(exc)) from None
    return _loaded[key]


def cancel(pk: int | str, by: str | None) -> str:
    """Stop a running agent run or sweep and everything it started (its scheduler jobs and pilot blocks are
    cancelled); what happened, in one sentence. `by` names who asked (default: this account)."""
    load_profile()
    import getpass

    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from mdagent_hpc.execution.cancel import CancelError
    from mdagent_hpc.execution.cancel import cancel as stop

    try:
        node = orm.load_node(int(pk))
    except (NotExistent, MultipleObjectsError, ValueError, TypeError, OverflowError):
        raise MDAgentError(f"no run or sweep with pk {pk}; `mdagent runs` lists the runs") from None
    if not isinstance(node, orm.WorkflowNode):
        raise MDAgentError(f"node {pk} is not a run or a sweep; `mdagent runs` lists the runs")
    top = node
    while top.caller is not None:
        top = top.caller
    if top.pk != node.pk and not node.is_terminated:
        raise MDAgentError(f"{pk} is a step of run or sweep {top.pk}: cancel that (`mdagent cancel {top.pk}`)")
    try:
        return "run " + stop(node, by or getpass.getuser())
    except CancelError as exc:
        raise MDAgentError(str(exc)) from None
