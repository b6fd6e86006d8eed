"""Every node a user's run makes carries that user.

AiiDA gives a new node the storage backend's default user (cached on the backend). A WorkChain step runs
synchronously in the worker's one thread, so for the step's duration the default user is made the workchain
node's own: the child processes it submits, the calcfunctions it calls (a sweep's `record_point`) and the inputs
it makes belong to the same user as the run. The root carries the user from its submission (`server.service`),
so each level hands it down. Nodes the engine makes outside a step (a CalcJob's retrieved folder and parsed
outputs) keep the profile's default user; readers take a node's owner from its top caller (`provenance.owner`).
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def default_user(user):
    """New nodes made inside belong to `user` (not thread-safe: callers serialise, as a worker's steps are)."""
    from aiida import orm

    backend = orm.User.collection.backend
    previous = backend.default_user
    backend._default_user = user  # noqa: SLF001 (aiida has no setter)
    try:
        yield
    finally:
        backend._default_user = previous  # noqa: SLF001


class OwnedSteps:
    """WorkChain mixin: each step makes its nodes under the workchain node's user."""

    def _do_step(self):
        with default_user(self.node.user):
            return super()._do_step()
