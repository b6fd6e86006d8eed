"""A WorkChain's own broker calls outlive a broker outage.

Inside the daemon a step that submits a child sends the child's task to RabbitMQ, and a step that waits on it
subscribes to the child's broadcasts. While the broker is down (a restart, permissions revoked) these raise
(`ChannelInvalidStateError`: the channel is closed), and plumpy catches that only around its state-change
broadcasts: the run ends excepted. AiiDA's communicator reconnects by itself (aio-pika's robust connection, every
5 s, in its own thread), so the call is tried again, with backoff, until the broker is back (`PATIENCE` at most).
The worker's other processes wait meanwhile (a step is synchronous); the child node and its checkpoint are made
once, only the broker call is repeated.
"""

from __future__ import annotations

import functools
import logging
import time

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


class PatientWithBroker:
    """Process mixin: registering the process with the broker, submitting a child and waiting on it survive a
    broker outage (see the module)."""

    def init(self) -> None:
        # Only in a daemon worker (its runner submits through the broker): a process made by a submitter (the server,
        # `mdagent run --daemon`) must fail at once during an outage, so that the submitter answers 503, not hang.
        daemon = getattr(self.runner, "_broker_submit", False)
        if daemon and self._communicator is not None and not isinstance(self._communicator, PatientRegistrations):
            self._communicator = PatientRegistrations(self._communicator)
        super().init()

    def submit(self, process, inputs=None, **kwargs):
        from aiida.engine import utils

        runner = self.runner
        if not getattr(runner, "_broker_submit", False):  # run in this process (no daemon): no broker involved
            return super().submit(process, inputs, **kwargs)
        wait_for_the_broker(runner.communicator, "submitting a step's child", self.logger)
        child = runner.instantiate_process(process, **utils.prepare_inputs(inputs, **kwargs))
        runner.persister.save_checkpoint(child)
        child.close()
        until_the_broker_answers(
            lambda: runner.controller.continue_process(child.pid, nowait=False, no_reply=True),
            f"sending the task of {child.pid}",
            self.logger,
        )
        return child.node

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
