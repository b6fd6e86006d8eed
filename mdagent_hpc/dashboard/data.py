"""What the dashboard reads from provenance: runs (as `models.Run`), their thermo output, running work, sweeps.

Read only. Every function runs in the server's one event-loop thread (the AiiDA session is per thread), and each
request starts with `fresh()` so a page shows work that finished since the last one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mdagent_hpc.dashboard.filters import RunFilter, models_of
from mdagent_hpc.lammps.log import LogError, ThermoBlock, parse_log
from mdagent_hpc.models import Run

PROCESS_TYPE = "aiida.workflows:mdagent.agent"
ACTIVE = ("created", "waiting", "running")
SCAN = 5000  # the most runs a filtered list reads through before it stops looking


class NotFound(LookupError):
    """The URL names something that is not there; the message says what to do."""


def fresh() -> None:
    """End the session's read transaction: the next query sees what other processes committed since."""
    from aiida.manage import get_manager

    get_manager().get_profile_storage().get_session().rollback()


def find_runs(flt: RunFilter) -> tuple[list[Run], bool]:
    """The newest runs that pass the filter, at most `flt.limit`; and whether more runs would match."""
    from aiida import orm

    from mdagent_hpc.workflows.results import read_run

    filters: dict = {"process_type": PROCESS_TYPE, **_verdict(flt.verdict)}
    window = {k: v for k, v in ((">=", flt.start), ("<", flt.end)) if v is not None}
    if window:
        filters["ctime"] = window
    qb = orm.QueryBuilder().append(orm.WorkChainNode, tag="run", project=["*"], filters=filters)
    if flt.site:
        qb.append(orm.Dict, with_outgoing="run", edge_filters={"label": "site"}, filters={"attributes.name": flt.site})
    if flt.task:
        qb.append(
            orm.Str,
            with_outgoing="run",
            edge_filters={"label": "task"},
            filters={"attributes.value": {"ilike": f"%{flt.task}%"}},
        )
    qb.order_by({"run": {"ctime": "desc"}}).limit(SCAN)
    found: list[Run] = []
    for (node,) in qb.iterall(batch_size=100):
        run = read_run(node)
        if flt.matches(run):
            if len(found) == flt.limit:
                return found, True
            found.append(run)
    return found, False


def choices() -> dict[str, list[str]]:
    """The sites and models that occur in the runs, for the filter form."""
    from aiida import orm

    sites = (
        orm.QueryBuilder()
        .append(orm.WorkChainNode, tag="run", filters={"process_type": PROCESS_TYPE})
        .append(orm.Dict, with_outgoing="run", edge_filters={"label": "site"}, project=["attributes.name"])
        .distinct()
    )
    models = (
        orm.QueryBuilder()
        .append(orm.WorkChainNode, tag="run", filters={"process_type": PROCESS_TYPE})
        .append(
            orm.Dict,
            with_incoming="run",
            edge_filters={"label": {"like": "attempts__%"}},
            project=["attributes.usage.model"],
        )
        .distinct()
    )
    return {"site": sorted({s or "local" for (s,) in sites.all()}), "model": sorted({m for (m,) in models.all() if m})}


def get_run(pk: str) -> Run:
    from mdagent_hpc import api

    if not pk.isdigit():
        raise NotFound(f"{pk!r} is not a run number; runs are numbered by their pk, e.g. /runs/42")
    try:
        return api.get_run(int(pk))
    except api.MDAgentError as exc:
        raise NotFound(str(exc).replace("`mdagent runs` (or list_runs())", "the runs page")) from None


def thermo(run: Run, number: str) -> tuple[str, list[ThermoBlock]]:
    """The thermo output of attempt `number`'s LAMMPS run: (a title, its blocks), from the log it retrieved."""
    from aiida import orm
    from aiida.common.exceptions import NotExistentAttributeError

    attempt = next((a for a in run.attempts if str(a.number) == number), None)
    if attempt is None:
        raise NotFound(f"run {run.pk} has no attempt {number!r}; it has {len(run.attempts)}")
    if "run" not in attempt.nodes:
        raise NotFound(
            f"attempt {attempt.number} of run {run.pk} never ran LAMMPS (it stopped at "
            f"{attempt.stage.value}), so it has no thermo output"
        )
    try:
        retrieved = orm.load_node(attempt.nodes["run"]).outputs.retrieved
        text = retrieved.base.repository.get_object_content("log.lammps")
    except (NotExistentAttributeError, FileNotFoundError):
        raise NotFound(f"attempt {attempt.number} of run {run.pk} left no LAMMPS log") from None
    try:
        blocks = [b for b in parse_log(text).blocks if b.rows and "Step" in b.columns]
    except LogError as exc:
        raise NotFound(f"the log of attempt {attempt.number} of run {run.pk} cannot be read: {exc}") from None
    return f"run {run.pk}, attempt {attempt.number}", blocks


@dataclass
class Progress:
    """Where a running agent run is: the attempt under way, its latest step, its latest report lines."""

    pk: int
    task: str
    attempt: int
    step: str | None
    seconds: float
    messages: list[str]

    def as_dict(self) -> dict:
        return {
            "pk": self.pk,
            "task": self.task,
            "attempt": self.attempt,
            "step": self.step,
            "seconds": self.seconds,
            "messages": self.messages,
        }


def running() -> list[Progress]:
    """Every agent run still going, newest first."""
    from aiida import orm

    qb = (
        orm.QueryBuilder()
        .append(
            orm.WorkChainNode,
            project=["*"],
            filters={"process_type": PROCESS_TYPE, "attributes.process_state": {"in": list(ACTIVE)}},
        )
        .order_by({orm.WorkChainNode: {"ctime": "desc"}})
    )
    return [progress(node) for (node,) in qb.all()]


def progress(node) -> Progress:
    from aiida import orm
    from aiida.common.links import LinkType

    calls = node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()
    latest = max(calls, key=lambda link: link.node.ctime, default=None)
    step = None
    if latest is not None:
        state = latest.node.process_state.value if latest.node.process_state else "created"
        step = f"{latest.link_label.rsplit('_', 1)[0].replace('_', ' ')} ({state})"
    logs = orm.Log.collection.get_logs_for(node)[-5:]
    return Progress(
        pk=node.pk,
        task=node.base.extras.get("task", "") or node.inputs.task.value,
        attempt=node.base.extras.get("attempts", 0),
        step=step,
        seconds=round((datetime.now(tz=UTC) - node.ctime).total_seconds(), 1),
        messages=[log.message for log in logs],
    )


def run_summary(run: Run) -> dict:
    """The JSON a page polls for a run's progress."""
    from aiida import orm

    data = {
        "pk": run.pk,
        "verdict": run.verdict,
        "state": run.state,
        "attempts": len(run.attempts),
        "exit_status": run.exit_status,
        "exit_message": run.exit_message,
        "seconds": run.seconds,
        "models": sorted(models_of(run)),
    }
    if run.verdict == "running":
        data["progress"] = progress(orm.load_node(run.pk)).as_dict()
    return data


# -- sweeps: shown when the API has them (the sweeps work lands separately) -------------------------------------
def sweeps_available() -> bool:
    from mdagent_hpc import api

    return hasattr(api, "list_sweeps") and hasattr(api, "get_sweep")


def _verdict(verdict: str | None) -> dict:
    state = "attributes.process_state"
    if verdict == "running":
        return {state: {"in": list(ACTIVE)}}
    if verdict == "passed":
        return {state: "finished", "attributes.exit_status": 0}
    if verdict == "failed":
        return {
            "or": [{state: {"in": ["excepted", "killed"]}}, {state: "finished", "attributes.exit_status": {"!==": 0}}]
        }
    return {}


def list_sweeps() -> list:
    return []


def get_sweep(pk: str):
    raise NotFound(f"no sweep {pk!r}: this version of mdagent-hpc records no sweeps yet")
