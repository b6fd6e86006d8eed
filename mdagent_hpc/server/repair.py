"""Runs that a crash or a broker outage left `created` and never queued: found and repaired, never left counting.

AiiDA's `submit` stores the process node and its checkpoint, then sends the task that tells the daemon to run it.
A server killed between the two, or a broker down at that moment, leaves a node `created` that nothing will ever
run, and that `concurrent_runs` would count for good. A submission that fails on the broker ends its node at once
(`end_failed_submission`); the server's start finds the others (`repair`) and queues them again (AiiDA's own
`revive_processes`).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from aiida import orm

from mdagent_hpc.provenance import AGENT_TYPE as AGENT
from mdagent_hpc.provenance import SWEEP_TYPE as SWEEP

GRACE = timedelta(seconds=30)  # a task sent this recently may be on its way to a worker: not an orphan yet


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


def end(node: orm.ProcessNode, reason: str) -> None:
    """A process that will never run, ended as excepted with `reason` (so nothing counts it in flight)."""
    from plumpy.process_states import ProcessState

    node.set_exception(reason)
    node.set_process_state(ProcessState.EXCEPTED)
    node.seal()


def end_failed_submission(email: str, since: datetime) -> int:
    """After a submission that raised: end the nodes it left `created` (the broker never got their task)."""
    orphans = created(since=since, email=email)
    for node in orphans:
        end(node, "the server could not queue this run (its message broker failed); nothing ran: submit it again")
    return len(orphans)


def queued() -> set[int]:
    """The pks that have a task waiting in the broker's queue (tasks a worker holds are not listed)."""
    from aiida.engine.processes.control import get_process_tasks
    from aiida.manage import get_manager

    return set(get_process_tasks(get_manager().get_broker()))


def repair(lock_for, now: datetime | None = None) -> list[int]:
    """Every server user's run left `created` before the grace period and not in the queue, queued again (the
    daemon resumes it from its checkpoint, which AiiDA saves as the node is made); their pks. Each is looked at
    holding its user's submission lock (`lock_for(email)`, None for a user the server does not know: not its to
    repair), so a submission still on its way to the queue is never taken for an orphan. Said on stderr."""
    from aiida.engine.processes.control import revive_processes

    now = now or datetime.now(UTC)
    requeue = []
    for node in created(before=now - GRACE):
        lock = lock_for(node.user.email)
        if lock is None:
            continue
        with lock:
            node = orm.load_node(node.pk)  # its state now: a worker may have taken it meanwhile
            if node.process_state is None or node.process_state.value != "created" or node.pk in queued():
                continue
            try:
                revive_processes([node])
            except Exception as exc:  # noqa: BLE001 (the daemon or broker is down: the admin hears it)
                print(
                    f"mdagent server: cannot queue run {node.pk} again ({type(exc).__name__}); it was left "
                    "unqueued by a crash: `verdi process repair` (daemon stopped) does it",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            requeue.append(node.pk)
    if requeue:
        print(
            f"mdagent server: {len(requeue)} run(s) left unqueued by a crash queued again: "
            + ", ".join(map(str, requeue)),
            file=sys.stderr,
            flush=True,
        )
    return requeue
