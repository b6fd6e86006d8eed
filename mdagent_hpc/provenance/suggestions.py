"""What the dashboard's filter form offers: sites, models and stop reasons of the caller's newest runs."""

from __future__ import annotations

from mdagent_hpc.provenance import RECORD, Caller, listed, only

RECENT = 2000  # runs the suggestions are taken from


def choices(caller: Caller) -> dict[str, list[str]]:
    """The sites, models and stop reasons of the newest RECENT runs and sweep points `caller` may read.

    Only the newest: a distinct over every run's extras costs seconds at 100k runs; the form's fields still take
    any value.
    """
    from aiida import orm

    names = ("site", "model", "stop")
    qb = orm.QueryBuilder().append(
        orm.Node,
        tag="run",
        filters=listed(),
        project=[f"extras.{RECORD}.{name}" for name in names],
    )
    only(qb, "run", caller)
    rows = qb.order_by({"run": {"ctime": "desc"}}).limit(RECENT).all()
    return {name: sorted({row[i] for row in rows if isinstance(row[i], str)}) for i, name in enumerate(names)}
