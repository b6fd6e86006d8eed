"""The read side: runs, sweeps, points and lessons as the graph holds them, read only for a caller.

Every lookup and listing here takes a `Caller` (required, never defaulted): the AiiDA user whose work it may
read, or EVERYONE (an admin, a server whose group shares reads, the admin's own shared profile). A node belongs
to the AiiDA user of its top caller (`owner`); the workflows make every node of a run under that user, so a
listing filters on the node's user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

AGENT_TYPE = "aiida.workflows:mdagent.agent"
SWEEP_TYPE = "aiida.workflows:mdagent.sweep"
# A sweep point is the SweepPoint its batch's `record_points` made; until December 2026 it was the process of the
# calcfunction `record_point` (one per point), and stored sweeps keep those.
POINT_NODE_TYPE = "data.mdagent.point.SweepPoint."
POINT_TYPE = "mdagent_hpc.workflows.sweep.record_point"
PROCESS_TYPES = (AGENT_TYPE, SWEEP_TYPE, POINT_TYPE)
# a sweep's jobs: a point's LAMMPS job (its old name too, for stored sweeps), a pilot job and its restart workchain
JOB_TYPES = tuple(
    f"aiida.{kind}:mdagent.{name}"
    for kind, name in (
        ("workflows", "lammps.job"),
        ("workflows", "lammps.base"),
        ("calculations", "sweep.pilot"),
        ("workflows", "sweep.pilot_job"),
    )
)
ACTIVE = ("created", "waiting", "running")
RECORD = "query"  # the extra holding a run's (or point's) recorded query fields (provenance.query)
GROUP_READ_EXTRA = "mdagent_group_read"  # on a run's root: its failure memory may read the group's runs


def listed(kind: str | None = None) -> dict:
    """QueryBuilder filters (on orm.Node) for what queries list: agent runs (`kind` "run"), sweep points ("point"),
    or both. Written as an OR of equalities, as query.INDEXES's predicate is (a planner matches it only so)."""
    runs = [{"process_type": {"==": AGENT_TYPE}}]
    points = [{"process_type": {"==": POINT_TYPE}}, {"node_type": {"==": POINT_NODE_TYPE}}]
    return {"or": {"run": runs, "point": points}.get(kind, runs + points)}


def is_point(node) -> bool:
    return node.node_type == POINT_NODE_TYPE or getattr(node, "process_type", None) == POINT_TYPE


def point_process(node):
    """The process that recorded a sweep point (its `record_points`, or an old point's own `record_point`)."""
    return node.creator if node.node_type == POINT_NODE_TYPE else node


@dataclass(frozen=True)
class Caller:
    """Who reads: the email of their AiiDA user, or None for everyone (use EVERYONE)."""

    email: str | None

    @property
    def everyone(self) -> bool:
        return self.email is None

    def may_read(self, node) -> bool:
        return self.everyone or owner(node) == self.email


EVERYONE = Caller(None)


class NotFoundError(LookupError):
    """No such node, or not the caller's to read: the same answer for both (no oracle for which pks exist)."""


def owner(node) -> str:
    """The AiiDA user (email) of the run a node belongs to: its top caller's."""
    from aiida import orm

    top = node
    while isinstance(top, orm.ProcessNode) and top.caller is not None:
        top = top.caller
    return top.user.email


def only(qb, tag: str, caller: Caller):
    """`qb` narrowed to the nodes tagged `tag` that `caller` may read."""
    from aiida import orm

    if not caller.everyone:
        qb.append(orm.User, with_node=tag, filters={"email": caller.email})
    return qb


def load(caller: Caller, pk, what: str):
    """The node `pk` (a pk or UUID) if `caller` may read it, else NotFoundError."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        node = orm.load_node(pk)
    except (NotExistent, MultipleObjectsError, ValueError, TypeError):
        node = None
    if node is None or not caller.may_read(node):
        raise NotFoundError(f"no {what} {pk} that you may read")
    return node


def local_caller() -> Caller:
    """Whoever uses the loaded profile directly (the CLI, the Python API, the local dashboard): on a personal
    profile its default user; on the shared profile `mdagent server setup` made, EVERYONE (only the admin, who
    holds its database, uses it directly)."""
    from aiida.manage import get_manager

    from mdagent_hpc.home import mdagent_home

    profile = get_manager().get_profile()
    try:
        shared = json.loads((mdagent_home() / "server.json").read_text()).get("profile")
    except (OSError, ValueError, AttributeError):
        shared = None
    if profile.name == shared:
        return EVERYONE
    return Caller(profile.default_user_email)


def run_caller(node) -> Caller:
    """Whose runs a run's failure memory may read: its owner's, or the group's when the server shares reads."""
    from aiida import orm

    top = node
    while isinstance(top, orm.ProcessNode) and top.caller is not None:
        top = top.caller
    return EVERYONE if top.base.extras.get(GROUP_READ_EXTRA, False) is True else Caller(top.user.email)
