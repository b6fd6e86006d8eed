"""A WorkChain's own broker calls outlive a broker outage.

Inside the daemon a step that submits a child sends the child's task to RabbitMQ, and a step that waits on it
subscribes to the child's broadcasts. While the broker is down (a restart, permissions revoked) these raise
(`ChannelInvalidStateError`: the channel is closed), and plumpy catches that only around its state-change
broadcasts: the run ends excepted. AiiDA's communicator reconnects by itself (aio-pika's robust connection, every
5 s, in its own thread), so the call is tried again, with backoff, until the broker is back (`PATIENCE` at most).
The worker's other processes wait meanwhile (a step is synchronous); the child node and its checkpoint are made
once, only the broker call is repeated.

Two things an outage does besides, both of which left a run `running` for good:
- A broker call that outlived the thread communicator's timeout (AiiDA's `broker.task_timeout`, 10 s) is still under
  way in the communicator's thread: trying it again made it twice once the broker was back (a process's RPC
  subscriber registered twice: the second raised `DuplicateSubscriberIdentifier`, the worker dropped the process's task
  although the process was not running, and the stray subscriber kept answering for it, so no repair revived it; a
  child's task sent twice). In a daemon worker the communicator waits for such a call instead (`PATIENCE`).
- RabbitMQ gives every task a worker held unacknowledged back to the queue when that worker's connection closes, and
  once the broker is back another worker took it and loaded a second instance of a process still running in the first
  (AiiDA notices a duplicate only in the same worker): two instances of one run stepping the same node. A daemon
  worker now holds a lock (a file lock, released when the worker dies) for each process it has loaded, and refuses to
  load one held elsewhere: its task is dropped as AiiDA drops a duplicate in one worker (the holder runs the process;
  should it die, the server's repair finds the process without a task and without a worker answering for it).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import time
from pathlib import Path

PATIENCE = 600  # seconds a step waits for the broker before its run fails as it would have without this
BROKER_MODULES = {"kiwipy", "aiormq", "aio_pika", "pamqp"}
LOGGER = logging.getLogger("aiida.mdagent.broker")  # under `aiida`: the daemon's log has it


def broker_down(exc: BaseException) -> bool:
    """Is `exc` the broker (or the connection to it) being down, rather than an answer it gave?"""
    import kiwipy

    if isinstance(exc, (kiwipy.DuplicateSubscriberIdentifier, kiwipy.UnroutableError, kiwipy.RemoteException)):
        return False
    names = {c.__module__.split(".")[0] for c in type(exc).__mro__}
    return bool(names & BROKER_MODULES) or isinstance(exc, (ConnectionError, TimeoutError))


def until_the_broker_answers(action, what: str, logger, patience: float = PATIENCE):
    """`action()`, tried again (1, 2, 4, then every 10 s) while the broker is down, for `patience` seconds."""
    deadline = time.monotonic() + patience
    delay = 1.0
    while True:
        try:
            return action()
        except Exception as exc:
            if not broker_down(exc) or time.monotonic() > deadline:
                raise
            logger.warning(f"the message broker is not answering ({type(exc).__name__}); {what} again in {delay:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def check(communicator) -> None:
    """Raises while the broker is down: an RPC to nobody, which the broker answers `unroutable` when it is up."""
    import kiwipy

    try:
        communicator.rpc_send("mdagent.broker-check", None)
    except kiwipy.UnroutableError:
        return


def wait_for_the_broker(communicator, what: str, logger=LOGGER) -> None:
    until_the_broker_answers(lambda: check(communicator), what, logger)


def patient_calls(communicator) -> None:
    """A daemon worker's RabbitMQ communicator waits up to `PATIENCE` for a broker call under way instead of raising
    `TimeoutError` (with the call still going on) after AiiDA's `broker.task_timeout`: see the module. (The built-in
    ZeroMQ broker's communicator has no such thread: nothing to do.)"""
    global _UNPATIENT_WARNED
    from kiwipy.rmq import RmqThreadCommunicator

    inner = getattr(communicator, "_communicator", communicator)  # plumpy's LoopCommunicator wraps kiwipy's
    if not isinstance(inner, RmqThreadCommunicator):
        return
    scheduler = getattr(inner, "_loop_scheduler", None)  # its pytray LoopScheduler, whose timeout that is
    if scheduler is None or not hasattr(scheduler, "task_timeout"):
        if not _UNPATIENT_WARNED:
            LOGGER.warning("kiwipy's communicator has no _loop_scheduler.task_timeout: an outage may repeat a call")
            _UNPATIENT_WARNED = True
        return
    if scheduler.task_timeout is None or scheduler.task_timeout < PATIENCE:
        scheduler.task_timeout = PATIENCE


_UNPATIENT_WARNED = False

_HELD: dict[int, int] = {}  # pk -> file descriptor of its lock, for each process loaded in this worker


def _lock_folder() -> Path:
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config

    folder = Path(get_config().dirpath) / "daemon" / "held" / get_manager().get_profile().name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def hold(pk: int) -> bool:
    """Take the lock of process `pk` for this worker's instance of it; False if an instance holds it already, in
    this worker or another one (daemon workers share a machine: circus runs them)."""
    if pk in _HELD:
        return False
    path = _lock_folder() / f"{pk}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its holder removed as it let go (between our open and our lock)
            _HELD[pk] = fd
            return True
        os.close(fd)


def let_go(pk: int) -> None:
    """Release the lock `hold(pk)` took (the file removed while still locked, so no one locks a removed file)."""
    fd = _HELD.pop(pk, None)
    if fd is None:
        return
    try:
        (_lock_folder() / f"{pk}.lock").unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


class PatientRegistrations:
    """A process's communicator whose registrations (as the process is made or loaded) wait out an outage: one that
    failed excepted a run being loaded, or a child being made, and the worker then dropped the child's task."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def add_rpc_subscriber(self, *args, **kwargs):
        return until_the_broker_answers(lambda: self._inner.add_rpc_subscriber(*args, **kwargs), "registering", LOGGER)

    def add_broadcast_subscriber(self, *args, **kwargs):
        return until_the_broker_answers(
            lambda: self._inner.add_broadcast_subscriber(*args, **kwargs), "registering", LOGGER
        )

    def broadcast_send(self, *args, **kwargs):
        # plumpy sends a process's state changes and lets only a closed connection pass (the change is then lost to
        # a parent waiting on it): an outage's refused channel (ACCESS_REFUSED) excepted the process.
        return until_the_broker_answers(
            lambda: self._inner.broadcast_send(*args, **kwargs), "broadcasting a state change", LOGGER
        )


class PatientWithBroker:
    """Process mixin: registering the process with the broker, submitting a child and waiting on it survive a
    broker outage (see the module)."""

    def init(self) -> None:
        # Only in a daemon worker (its runner submits through the broker): a process made by a submitter (the server,
        # `mdagent run --daemon`) must fail at once during an outage, so that the submitter answers 503, not hang.
        daemon = getattr(self.runner, "_broker_submit", False)
        if not daemon or self._communicator is None:
            super().init()
            return
        import kiwipy

        patient_calls(self.runner.communicator)
        if not isinstance(self._communicator, PatientRegistrations):
            self._communicator = PatientRegistrations(self._communicator)
        if not hold(self.pid):
            LOGGER.warning(f"process {self.pid} is run by another instance already: its task here is a duplicate")
            raise kiwipy.DuplicateSubscriberIdentifier(f"process {self.pid} is held by another instance")
        try:
            super().init()
        except BaseException:
            for cleanup in getattr(self, "_cleanups", None) or []:  # what it registered with the broker so far
                try:
                    cleanup()
                except Exception as exc:  # noqa: BLE001 (the error being raised says why; this one is logged)
                    LOGGER.warning(f"process {self.pid}: undoing a registration failed ({type(exc).__name__})")
            let_go(self.pid)
            raise
        self.add_cleanup(functools.partial(let_go, self.pid))

    def submit(self, process, inputs=None, **kwargs):
        from aiida.engine import utils

        runner = self.runner
        if not getattr(runner, "_broker_submit", False):  # run in this process (no daemon): no broker involved
            return super().submit(process, inputs, **kwargs)
        wait_for_the_broker(runner.communicator, "submitting a step's child", self.logger)
        child = runner.instantiate_process(process, **utils.prepare_inputs(inputs, **kwargs))
        try:
            runner.persister.save_checkpoint(child)
        finally:
            child.close()  # lets go of it here (and its lock), for the worker that gets its task
        until_the_broker_answers(
            lambda: runner.controller.continue_process(child.pid, nowait=False, no_reply=True),
            f"sending the task of {child.pid}",
            self.logger,
        )
        return child.node

    def _do_step(self):
        """A WorkChain step, with the calcfunctions it calls patient too: each registers with the broker as it is
        made (the runner's communicator), and one refused during an outage (`ChannelAccessRefused` as a step
        called `preflight_script`) excepted the run."""
        runner = self.runner
        inner = runner.communicator
        if not getattr(runner, "_broker_submit", False) or inner is None or isinstance(inner, PatientRegistrations):
            return super()._do_step()
        runner._communicator = PatientRegistrations(inner)
        try:
            return super()._do_step()
        finally:
            runner._communicator = inner

    def _action_awaitables(self) -> None:
        from aiida.engine.processes.workchains.awaitable import AwaitableTarget

        for awaitable in self._awaitables:
            if awaitable.target != AwaitableTarget.PROCESS:
                raise AssertionError(f"invalid awaitable target '{awaitable.target}'")
            callback = functools.partial(self.call_soon, self._on_awaitable_finished, awaitable)
            until_the_broker_answers(
                lambda pk=awaitable.pk, cb=callback: self.runner.call_on_process_finish(pk, cb),
                f"waiting on {awaitable.pk}",
                self.logger,
            )
