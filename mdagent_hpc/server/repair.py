"""Processes that nothing will ever run: found and queued again (or ended with a reason), never left counting.

A process is run by the daemon worker holding its task (RabbitMQ keeps the task, unacknowledged, until the process
ends, and gives it to another worker if that worker dies). Three ways to lose it:
- a submission cut short after its node was committed and before its task was sent (a server killed, a broker down):
  the node stays `created` with nobody to run it (`service.launch` commits node and checkpoint first);
- a task lost by the broker, or a continue task that failed while the broker was down: `waiting` or `running` for
  good (what `verdi process repair` finds);
- a node without a checkpoint (made outside `service.launch` and cut short): nothing can resume it.
`repair` (at the server's start and every `EVERY` seconds) takes every active process older than `GRACE` that has
no task in the queue and that no worker answers for (an RPC to the process: `held`), and sends it a continue task
(AiiDA's `revive_processes`; the worker resumes it from its checkpoint), or ends it with a reason when it has no
checkpoint. A submission that fails on the broker ends its node at once (`end_failed_submission`).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from aiida import orm

from mdagent_hpc.provenance import ACTIVE
from mdagent_hpc.provenance import AGENT_TYPE as AGENT
from mdagent_hpc.provenance import SWEEP_TYPE as SWEEP
from mdagent_hpc.provenance.processes import active, created

GRACE = timedelta(seconds=30)  # a task sent this recently may be on its way to a worker: not an orphan yet
EVERY = 60  # seconds between two repairs in a running server


def fresh_broker() -> None:
    """After a broker failure: the runner, broker connection and process controller dropped, so the next use
    connects anew (a connection that lived through an outage can stay broken for good). aiida-core 2.9's
    `reset_runner` / `reset_broker` forget them only when closing them succeeds, and closing a connection the
    outage broke can fail: they are forgotten all the same."""
    from aiida.manage import get_manager

    manager = get_manager()
    for reset in (manager.reset_runner, manager.reset_broker):
        try:
            reset()
        except Exception as exc:  # noqa: BLE001 (it is being thrown away; the next use says if the broker is back)
            print(f"mdagent server: closing the old broker connection failed ({type(exc).__name__})", file=sys.stderr)
    manager._runner = None  # noqa: SLF001 (aiida has no public way to drop what it could not close)
    manager._broker = None  # noqa: SLF001
    manager._process_controller = None  # noqa: SLF001


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


def held(pks: list[int], timeout: float = 10) -> set[int]:
    """The processes among `pks` that a daemon worker holds (it subscribes to RPCs under the pk while it has one),
    asked all at once. A worker too busy to answer within `timeout` (in all) counts as holding them: never a second
    copy of a process."""
    import concurrent.futures
    import time

    import kiwipy
    from aiida.manage import get_manager

    controller = get_manager().get_process_controller()
    asked = {}
    for pk in pks:
        try:
            asked[pk] = controller.get_status(pk)
        except kiwipy.UnroutableError:
            continue
    deadline = time.monotonic() + timeout
    found = set()
    for pk, future in asked.items():
        try:
            while isinstance(future, concurrent.futures.Future):  # an RPC answers a future of the answer
                future = future.result(timeout=max(0.1, deadline - time.monotonic()))
        except kiwipy.UnroutableError:
            continue
        except Exception:  # noqa: BLE001 (a timeout or an odd answer: someone may have it)
            pass
        found.add(pk)
    return found


def repair(lock_for, now: datetime | None = None) -> list[int]:
    """Every process left with nobody to run it (made before the grace period, no task queued, no worker holding
    it) queued again, or ended with a reason when it has no checkpoint; the pks queued. An agent run or sweep is
    looked at holding its user's submission lock (`lock_for(email)`, None for a user the server does not know: not
    its to repair), so a submission still on its way to the queue is never taken for an orphan. Said on stderr."""
    import contextlib

    from aiida.engine.daemon.client import DaemonException
    from aiida.engine.processes.control import revive_processes

    now = now or datetime.now(UTC)
    requeue, ended = [], []
    try:
        in_queue = queued()
    except Exception:  # noqa: BLE001 (a connection that lived through a broker outage can stay broken: one new try)
        fresh_broker()
        in_queue = queued()  # the broker still down: raised, and the next repair tries again
    candidates = [n for n in active(before=now - GRACE) if n.pk not in in_queue]
    answering = held([n.pk for n in candidates])
    for node in candidates:
        if node.pk in answering:
            continue
        top = node.process_type in (AGENT, SWEEP)
        lock = lock_for(node.user.email)
        if top and lock is None:
            continue
        with lock if lock is not None else contextlib.nullcontext():
            node = orm.load_node(node.pk)  # its state now: a worker may have taken it, or ended it, meanwhile
            state = node.process_state.value if node.process_state is not None else None
            if (state is not None and state not in ACTIVE) or node.pk in queued() or held([node.pk]):
                continue
            if node.checkpoint is None:
                end(node, "this process was cut short as it was made (a crash) and cannot be resumed: submit again")
                ended.append(node.pk)
                continue
            try:
                revive_processes([node])
            except Exception as exc:  # noqa: BLE001 (the daemon or broker is down: the next repair tries again)
                print(
                    f"mdagent server: cannot queue process {node.pk} again ({type(exc).__name__}); the next "
                    f"repair (in {EVERY} s) tries again",
                    file=sys.stderr,
                    flush=True,
                )
                if not isinstance(exc, DaemonException):  # the broker: its connection may be broken for good
                    fresh_broker()
                continue
            requeue.append(node.pk)
    if requeue:
        print(
            f"mdagent server: {len(requeue)} run(s) left unqueued by a crash queued again: "
            + ", ".join(map(str, requeue)),
            file=sys.stderr,
            flush=True,
        )
    if ended:
        print(
            f"mdagent server: {len(ended)} process(es) cut short as they were made ended: "
            + ", ".join(map(str, ended)),
            file=sys.stderr,
            flush=True,
        )
    return requeue
