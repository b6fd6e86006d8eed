"""Stopping a run or a sweep wherever it runs: in the daemon (a kill sent through the broker, which AiiDA passes on
to every child and turns into a scheduler cancel for each job), in a CLI process of this host (a request file that
process watches, then what Ctrl-C does), or nowhere any more (its jobs cancelled and its nodes closed here).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from mdagent_hpc.errors import MDAgentError

RUNNER_EXTRA = "mdagent_runner"  # {"host": ..., "pid": ...} on a run executed in a CLI process (run_here)
WATCH_SECONDS = 0.5


class CancelError(MDAgentError):
    """A cancel that could not be done; the message says what to do."""


def request_file(pk: int) -> Path:
    from mdagent_hpc.home import mdagent_home

    return mdagent_home() / "cancel" / str(pk)


def mark_in_process(node) -> None:
    """Record that `node` runs in this process, so that `cancel` knows to ask it through a request file."""
    node.base.extras.set(RUNNER_EXTRA, {"host": socket.gethostname(), "pid": os.getpid()})


def watch(runner, process) -> None:
    """Kill `process` (as Ctrl-C would) once a cancel request file for it appears; checked on the runner's loop."""
    path = request_file(process.node.pk)

    def check() -> None:
        if process.has_terminated():
            return
        if path.exists():
            who = path.read_text().strip() or "a user"
            process.kill(msg_text=f"cancelled by {who}")
            return
        runner.loop.call_later(WATCH_SECONDS, check)

    runner.loop.call_later(WATCH_SECONDS, check)


def forget(pk: int) -> None:
    request_file(pk).unlink(missing_ok=True)


def cancel(node, by: str, timeout: float = 60.0) -> str:
    """Stop process `node` and everything it called; one sentence saying what happened."""
    if node.is_terminated:
        return f"{node.pk} has already ended ({node.process_state.value}); nothing to cancel"
    runner = node.base.extras.get(RUNNER_EXTRA, None)
    if runner is not None:
        return _cancel_in_process(node, runner, by, timeout)
    return _cancel_in_daemon(node, by, timeout)


def _cancel_in_process(node, runner: dict, by: str, timeout: float) -> str:
    if runner.get("host") == socket.gethostname() and not _alive(runner.get("pid")):
        close(node, f"cancelled by {by}; the process that ran it had already stopped")
        return f"{node.pk} cancelled: the process that ran it had stopped; its jobs were cancelled"
    path = request_file(node.pk)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(by)
    if _wait_terminated(node, timeout):
        return f"{node.pk} cancelled: its jobs were cancelled and it ended as killed"
    return f"{node.pk}: cancel requested; the `mdagent run` running it stops it within a few seconds"


def _cancel_in_daemon(node, by: str, timeout: float) -> str:
    from aiida.engine.daemon.client import get_daemon_client
    from aiida.manage import get_manager
    from kiwipy import communications
    from plumpy.futures import unwrap_kiwi_future

    if not get_daemon_client().is_daemon_running:
        close(node, f"cancelled by {by} while the daemon was stopped")
        return f"{node.pk} cancelled: the daemon was stopped, so its jobs were cancelled and it was closed here"
    try:
        controller = get_manager().get_process_controller()
        future = controller.kill_process(node.pk, msg_text=f"cancelled by {by}")
    except communications.UnroutableError:
        # Nobody holds the process (the daemon is stopped or has not picked it up): cancel its jobs and close it
        # here; a daemon that loads its task later finds it terminated and drops it.
        close(node, f"cancelled by {by} while no daemon worker held it")
        return f"{node.pk} cancelled: no daemon worker held it, so its jobs were cancelled and it was closed here"
    except Exception:  # noqa: BLE001 (broker down: said in one sentence; the type is what matters here)
        raise CancelError(
            "the broker (RabbitMQ) does not answer, so the cancel could not be sent; try again in a minute"
        ) from None
    try:
        unwrap_kiwi_future(future).result(timeout=timeout)
    except Exception:  # noqa: BLE001 (a timeout or a lost reply: the node tells what happened)
        pass
    if _wait_terminated(node, 5.0):
        return f"{node.pk} cancelled: its jobs were cancelled and it ended as killed"
    return f"{node.pk}: cancel sent; its jobs are being cancelled (`mdagent show {node.pk}` shows when it ends)"


def close(node, reason: str) -> None:
    """End `node` and its unfinished descendants as killed, cancelling their scheduler jobs first."""
    from plumpy import ProcessState

    stop_children(node)
    if not node.is_terminated:
        node.set_process_state(ProcessState.KILLED)
        node.set_process_status(reason)
        node.seal()


def stop_children(node) -> None:
    """Cancel the jobs of a killed run's children and close their nodes.

    Ctrl-C kills the top process of an in-process run, but AiiDA passes a kill on to children only through a
    broker, which an in-process runner has none of: without this the LAMMPS job would run on and its nodes would
    stay `waiting` forever.
    """
    from aiida import orm
    from plumpy import ProcessState

    for child in node.called_descendants:
        if not isinstance(child, orm.ProcessNode) or child.is_terminated:
            continue
        if isinstance(child, orm.CalcJobNode) and child.get_job_id():
            try:
                with child.get_authinfo().get_transport() as transport:
                    scheduler = child.computer.get_scheduler()
                    scheduler.set_transport(transport)
                    scheduler.kill_job(child.get_job_id())
            except Exception as exc:  # noqa: BLE001 (the site may be unreachable: say so, close the node anyway)
                child.logger.error(f"could not cancel job {child.get_job_id()}: {exc}; cancel it by hand")
        child.set_process_state(ProcessState.KILLED)
        child.set_process_status(f"killed with its parent <{node.pk}>")
        child.seal()


def _wait_terminated(node, timeout: float) -> bool:
    from aiida import orm
    from aiida.manage import get_manager

    storage = get_manager().get_profile_storage()
    deadline = time.monotonic() + timeout
    while True:
        if hasattr(storage, "get_session"):
            storage.get_session().commit()  # end the read transaction: see what the daemon has written since
        if orm.load_node(node.pk).is_terminated:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's process, or no pid recorded: assume it runs
    return True
