"""The failure memory's source: lessons (`agent.memory.Lesson`) from the attempts of the caller's newest runs."""

from __future__ import annotations

from mdagent_hpc.provenance import AGENT_TYPE, Caller, only


def past_lessons(caller: Caller, limit: int = 400, exclude: int | None = None) -> list:
    """One query for the newest `limit` attempt records of runs `caller` may read, then each run's consecutive
    attempts compared (a failure and the change that got past it)."""
    from aiida import orm

    from mdagent_hpc.agent.memory import lessons
    from mdagent_hpc.models import Attempt

    qb = orm.QueryBuilder()
    qb.append(orm.WorkChainNode, filters={"process_type": AGENT_TYPE}, project=["id"], tag="run")
    only(qb, "run", caller)
    qb.append(
        orm.Dict,
        with_incoming="run",
        edge_filters={"label": {"like": "attempts__attempt_%"}},
        project=["attributes", "ctime"],
        tag="record",
    )
    qb.order_by({"record": {"ctime": "desc"}}).limit(limit)
    by_run: dict[int, list[Attempt]] = {}
    for pk, record, _ in qb.all():
        if pk != exclude:
            by_run.setdefault(pk, []).append(Attempt(**record))
    found = []
    for pk, attempts in by_run.items():
        found += lessons(sorted(attempts, key=lambda a: a.number), run=pk)
    return found
