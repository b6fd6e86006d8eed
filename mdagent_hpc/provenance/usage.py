"""What a user's work has used, read from provenance for the server's quotas: runs in flight, core-hours and
model tokens today, and the run a submission with a given request id made. Each takes the user's AiiDA email."""

from __future__ import annotations

from datetime import UTC, datetime

from aiida import orm

from mdagent_hpc.provenance import ACTIVE
from mdagent_hpc.provenance import AGENT_TYPE as AGENT
from mdagent_hpc.provenance import SWEEP_TYPE as SWEEP

REQUEST_EXTRA = "mdagent_request"  # the Idempotency-Key of the submission that made a root node


def made_by(email: str, request_id: str):
    """The root node a submission of the user `email` with this request id made, if it made one."""
    qb = orm.QueryBuilder().append(
        orm.WorkChainNode,
        tag="p",
        project="*",
        filters={"process_type": {"in": [AGENT, SWEEP]}, f"extras.{REQUEST_EXTRA}": request_id},
    )
    qb.append(orm.User, with_node="p", filters={"email": email})
    return qb.first(flat=True)


def in_flight(email: str) -> int:
    """The user's agent runs and sweeps not yet ended."""
    qb = orm.QueryBuilder().append(
        orm.WorkChainNode,
        tag="p",
        filters={"process_type": {"in": [AGENT, SWEEP]}, "attributes.process_state": {"in": list(ACTIVE)}},
    )
    qb.append(orm.User, with_node="p", filters={"email": email})
    return qb.count()


def tokens_today(email: str, now: datetime | None = None) -> int:
    """Tokens the model spent today (UTC) on the user's runs, and on the runs of the user's sweeps: the usage each
    generation's response recorded (the daemon calls the model with the server's key, past the gateway)."""
    now = now or datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    total = 0
    for root in (AGENT, SWEEP):
        qb = orm.QueryBuilder().append(orm.WorkChainNode, tag="root", filters={"process_type": root})
        qb.append(orm.User, with_node="root", filters={"email": email})
        tag = "root"
        if root == SWEEP:
            qb.append(orm.WorkChainNode, with_ancestors="root", tag="run", filters={"process_type": AGENT})
            tag = "run"
        qb.append(orm.ProcessNode, with_incoming=tag, tag="gen", filters={"ctime": {">=": midnight}})  # called by it
        qb.append(
            orm.Dict,
            with_incoming="gen",
            edge_filters={"label": "response"},
            project=["attributes.usage.prompt_tokens", "attributes.usage.completion_tokens"],
        )
        total += sum(int(p or 0) + int(c or 0) for p, c in qb.all())
    return total


def core_hours_today(email: str, now: datetime | None = None) -> float:
    """Core-hours of the LAMMPS jobs of the user's runs today (UTC): cores x (last change - creation), the part
    after midnight. An estimate from provenance (queue time is not counted: a job's node is made at submission,
    its last change is its retrieval); the scheduler's own accounting (`sacct --comment`) is the exact figure."""
    now = now or datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    qb = orm.QueryBuilder().append(
        orm.WorkChainNode,
        tag="p",
        project=["*"],
        filters={"process_type": {"in": [AGENT, SWEEP]}, "mtime": {">=": midnight}},
    )
    qb.append(orm.User, with_node="p", filters={"email": email})
    total = 0.0
    for top in qb.all(flat=True):
        for job in top.called_descendants:
            if not isinstance(job, orm.CalcJobNode) or job.mtime < midnight:
                continue
            resources = job.get_option("resources") or {}
            cores = resources.get("tot_num_mpiprocs") or (
                (resources.get("num_machines") or 1) * (resources.get("num_mpiprocs_per_machine") or 1)
            )
            total += cores * (job.mtime - max(job.ctime, midnight)).total_seconds() / 3600
    return total
