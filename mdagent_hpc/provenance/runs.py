"""Agent runs as a user reads them (`models.Run`), from the Attempt records the AgentWorkChain leaves.

An attempt is in provenance once it is over (output `attempts.attempt_N`); a run still going shows the attempts
finished so far, and its node's extra `attempts` holds the number of the attempt under way.
"""

from __future__ import annotations

from datetime import datetime

from mdagent_hpc.models import Attempt, Run
from mdagent_hpc.provenance import ACTIVE, AGENT_TYPE, Caller, is_point, load, only, point_process

VERDICTS = ("running", "passed", "failed")


class NotAnAgentRunError(ValueError):
    """The node is not an AgentWorkChain."""


def read_run(node) -> Run:
    """The Run of an agent run's node, found by a lookup that took the caller (`get_run`, `list_runs`, ...)."""
    from aiida import orm
    from aiida.common.links import LinkType

    if not isinstance(node, orm.WorkChainNode) or node.process_type != AGENT_TYPE:
        if is_point(node) and (sweep := point_process(node).caller) is not None:
            raise NotAnAgentRunError(
                f"node {node.pk} is a point of sweep {sweep.pk}; `mdagent sweep show {sweep.pk}` shows its table"
            )
        what = getattr(node, "process_label", None) or type(node).__name__
        raise NotAnAgentRunError(f"node {node.pk} is not an agent run (it is a {what}); `mdagent runs` lists the runs")
    # Three queries, the columns and attributes projected: reading them through the node and its links (each
    # property, inputs.task, inputs.site, each attempt) made ~36 statements a run.
    # Each query expires the loaded node, and touching it again reloads it: so it is read once, here.
    pk = node.pk
    columns = ("uuid", "ctime", "mtime", "attributes")
    row = orm.QueryBuilder().append(orm.Node, filters={"id": pk}, project=list(columns)).one()
    uuid, ctime, mtime, attributes = row
    given = orm.QueryBuilder().append(orm.Node, filters={"id": pk}, tag="run")
    given.append(
        orm.Data,
        with_outgoing="run",
        edge_filters={"type": LinkType.INPUT_WORK.value, "label": {"in": ["task", "site"]}},
        edge_project="label",
        project="attributes",
    )
    inputs = {label: values for values, label in given.all()}
    made = orm.QueryBuilder().append(orm.Node, filters={"id": pk}, tag="run")
    made.append(
        orm.Data,
        with_incoming="run",
        edge_filters={"type": LinkType.RETURN.value, "label": {"like": "attempts\\_\\_%"}},
        project="attributes",
    )
    attempts = sorted((Attempt(**record) for record in made.all(flat=True)), key=lambda a: a.number)
    passed = next((a for a in attempts if a.passed), None)
    state, exit_status = attributes.get("process_state"), attributes.get("exit_status")
    terminated = state in ("finished", "excepted", "killed")
    verdict = "passed" if state == "finished" and exit_status == 0 else "failed" if terminated else "running"
    reason = attributes.get("exit_message") or (
        attributes.get("process_status") if state in ("killed", "excepted") else None
    )
    end = mtime if terminated else datetime.now(tz=ctime.tzinfo)
    return Run(
        pk=pk,
        uuid=uuid,
        task=inputs["task"]["value"],
        site=inputs.get("site", {}).get("name", "local"),
        state=state,
        exit_status=exit_status,
        exit_message=reason,
        verdict=verdict,
        ctime=ctime.isoformat(timespec="seconds"),
        seconds=round((end - ctime).total_seconds(), 1),
        script=passed.script if passed else None,
        evaluation=passed.evaluation if passed else None,
        attempts=attempts,
    )


def get_run(caller: Caller, pk) -> Run:
    """One agent run by pk or UUID; `NotFoundError` when it does not exist or is not the caller's to read."""
    return read_run(load(caller, pk, "run"))


def list_runs(
    caller: Caller,
    limit: int = 20,
    verdict: str | None = None,
    site: str | None = None,
    task_contains: str | None = None,
) -> list[Run]:
    """The caller's newest agent runs first, optionally only those with a verdict, on a site, or whose task has
    some words."""
    from aiida import orm

    if verdict is not None and verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    qb = orm.QueryBuilder().append(
        orm.WorkChainNode, tag="run", project=["*"], filters={"process_type": AGENT_TYPE, **verdict_filter(verdict)}
    )
    only(qb, "run", caller)
    if site is not None:
        qb.append(orm.Dict, with_outgoing="run", edge_filters={"label": "site"}, filters={"attributes.name": site})
    if task_contains:
        qb.append(
            orm.Str,
            with_outgoing="run",
            edge_filters={"label": "task"},
            filters={"attributes.value": {"ilike": f"%{task_contains}%"}},
        )
    qb.order_by({"run": {"ctime": "desc"}}).limit(limit)
    return [read_run(node) for node in qb.all(flat=True)]


def verdict_filter(verdict: str | None) -> dict:
    state = "attributes.process_state"
    if verdict == "running":
        return {state: {"in": list(ACTIVE)}}
    if verdict == "passed":
        return {state: "finished", "attributes.exit_status": 0}
    if verdict == "failed":
        return {
            "or": [
                {state: {"in": ["excepted", "killed"]}},
                {state: "finished", "attributes.exit_status": {"!==": 0}},
            ]
        }
    return {}


def running_nodes(caller: Caller, since: datetime | None = None) -> list:
    """The caller's agent run nodes not yet ended (started after `since`, when given), newest first."""
    from aiida import orm

    filters = {"process_type": AGENT_TYPE, "attributes.process_state": {"in": list(ACTIVE)}}
    if since is not None:
        filters["ctime"] = {">": since}
    qb = orm.QueryBuilder().append(orm.WorkChainNode, tag="run", project=["*"], filters=filters)
    only(qb, "run", caller)
    return qb.order_by({"run": {"ctime": "desc"}}).all(flat=True)
