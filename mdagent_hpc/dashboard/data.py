"""What the dashboard reads from provenance: runs (as `models.Run`), their thermo output, running work, sweeps.

Read only, and only what the request's caller may read (`provenance.Caller`). Every function runs in the
server's one event-loop thread (the AiiDA session is per thread), and each request starts with `fresh()` so a page
shows work that finished since the last one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mdagent_hpc.dashboard.filters import models_of
from mdagent_hpc.models import Run
from mdagent_hpc.provenance import Caller
from mdagent_hpc.provenance.filters import Query

CACHE_S = 60.0
LIVE_DAYS = 7  # "Running now" looks at the runs started this recently (a run's state is not indexed)
_unindexed: dict[str, float] = {}


class NotFoundError(LookupError):
    """The URL names something that is not there; the message says what to do."""


def fresh() -> None:
    """End the session's read transaction: the next query sees what other processes committed since."""
    from aiida.manage import get_manager

    get_manager().get_profile_storage().get_session().rollback()


def find_runs(caller: Caller, query: Query) -> list[dict]:
    """The runs the query asks for, as the query layer's rows (`provenance.query.ROW_FIELDS`)."""
    from mdagent_hpc.provenance.query import search

    return search(query, caller)


def unindexed(values: dict[str, str]) -> int:
    """How many finished runs have no recorded query fields, when the filters need them (else 0).

    Counting them reads every run (~0.5 s at 100k), so the count is kept for a minute.
    """
    from mdagent_hpc.provenance.query import count_unindexed

    if not values.keys() - {"since", "until", "sort", "limit"}:
        return 0
    if time.monotonic() - _unindexed.get("at", -CACHE_S) >= CACHE_S:
        _unindexed.update(at=time.monotonic(), count=count_unindexed())
    return _unindexed["count"]


def choices(caller: Caller) -> dict[str, list[str]]:
    """The sites, models and stop reasons offered on the filter form: of the caller's newest runs only."""
    from mdagent_hpc.provenance.suggestions import choices

    return choices(caller)


def get_run(caller: Caller, pk: str) -> Run:
    from mdagent_hpc import api

    if not pk.isdigit():
        raise NotFoundError(f"{pk!r} is not a run number; runs are numbered by their pk, e.g. /runs/42")
    try:
        return api.get_run(int(pk), caller=caller)
    except api.MDAgentError as exc:
        raise NotFoundError(str(exc).replace("`mdagent runs` (or list_runs())", "the runs page")) from None


def sweep_of_point(caller: Caller, pk: str) -> int | None:
    """The sweep a sweep point (listed with the runs) belongs to; None for anything else the caller may read."""
    from mdagent_hpc.provenance.sweeps import sweep_of_point as of_point

    return of_point(caller, pk)


def stop(run: Run) -> str:
    """Why the run ended, as the queries name it (passed, max_attempts, stuck, killed, ...)."""
    from aiida import orm

    from mdagent_hpc.provenance.query import stop_reason

    return stop_reason(orm.load_node(run.pk))


def thermo_png(caller: Caller, pk: str, number: str) -> bytes:
    """The thermo plot (PNG) of attempt `number` of run `pk`, drawn by the queries' `mdagent plot`."""
    import tempfile
    from pathlib import Path

    from mdagent_hpc.provenance.plot import plot_thermo
    from mdagent_hpc.provenance.query import NoSuchRunError, attempt_log

    if not number.isdigit():
        raise NotFoundError(f"{number!r} is not an attempt number; attempts are numbered 1, 2, ...")
    try:
        title, log = attempt_log(caller, f"{pk}:{number}")
    except NoSuchRunError as exc:
        raise NotFoundError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="mdagent-dashboard-") as folder:
        try:
            return plot_thermo(log, Path(folder) / "thermo.png", title).read_bytes()
        except ValueError as exc:  # no thermo rows
            raise NotFoundError(f"attempt {number} of run {pk}: {exc}") from None


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


def running(caller: Caller) -> list[Progress]:
    """The caller's agent runs still going that started in the last LIVE_DAYS, newest first (`verdict=running`
    finds all)."""
    from mdagent_hpc.provenance.runs import running_nodes

    return [progress(node) for node in running_nodes(caller, datetime.now(tz=UTC) - timedelta(days=LIVE_DAYS))]


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
        "models": models_of(run),
    }
    if run.verdict == "running":
        data["progress"] = progress(orm.load_node(run.pk)).as_dict()
    return data


# -- sweeps ---------------------------------------------------------------------------------------------------------
def list_sweeps(caller: Caller, limit: int = 100) -> list:
    """The caller's newest sweeps."""
    from mdagent_hpc.provenance.sweeps import list_sweeps

    return list_sweeps(caller, limit)


def get_sweep(caller: Caller, pk: str):
    from mdagent_hpc import api

    if not pk.isdigit():
        raise NotFoundError(f"{pk!r} is not a sweep number; sweeps are numbered by their pk, e.g. /sweeps/42")
    try:
        return api.get_sweep(int(pk), caller=caller)
    except api.MDAgentError as exc:
        raise NotFoundError(str(exc).replace("`mdagent sweep status`", "the sweeps page")) from None


def sweep_png(caller: Caller, pk: str) -> bytes:
    """The plot the sweep made when it finished (its `plot` output)."""
    from aiida import orm

    sweep = get_sweep(caller, pk)
    node = orm.load_node(sweep.pk)
    if "plot" not in node.outputs:
        why = "yet: it is still running" if sweep.verdict == "running" else "(no point passed)"
        raise NotFoundError(f"sweep {sweep.pk} has no plot {why}")
    return node.outputs.plot.get_content(mode="rb")
