"""Processes by state, for the server's repair of runs no worker holds (server/repair.py): every user's, as only
the server's own upkeep asks."""

from __future__ import annotations

from datetime import datetime

from aiida import orm

from mdagent_hpc.provenance import ACTIVE
from mdagent_hpc.provenance import AGENT_TYPE as AGENT
from mdagent_hpc.provenance import SWEEP_TYPE as SWEEP


def created(since: datetime | None = None, before: datetime | None = None, email: str | None = None) -> list:
    """Agent runs and sweeps still `created` (made in [since, before), of the AiiDA user `email`)."""
    ctime = {**({">=": since} if since else {}), **({"<": before} if before else {})}
    qb = orm.QueryBuilder().append(
        orm.WorkChainNode,
        tag="p",
        project="*",
        filters={
            "process_type": {"in": [AGENT, SWEEP]},
            "attributes.process_state": "created",
            **({"ctime": ctime} if ctime else {}),
        },
    )
    if email is not None:
        qb.append(orm.User, with_node="p", filters={"email": email})
    return qb.all(flat=True)


def active(before: datetime) -> list[orm.ProcessNode]:
    """Every process not ended (or with no state at all: cut short as it was made), made before `before`; process
    functions aside (they run inside their caller's step and are never queued)."""
    state = {"or": [{"attributes.process_state": {"in": list(ACTIVE)}}, {"attributes.process_state": None}]}
    functions = [
        "process.calculation.calcfunction.CalcFunctionNode.",
        "process.workflow.workfunction.WorkFunctionNode.",
    ]
    qb = orm.QueryBuilder().append(
        orm.ProcessNode,
        project="*",
        filters={"and": [state, {"ctime": {"<": before}}, {"node_type": {"!in": functions}}]},
    )
    return qb.all(flat=True)
