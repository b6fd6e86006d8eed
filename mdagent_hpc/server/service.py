"""The AiiDA side of the server: launching work as a user and reading only what that user may see.

A process node's user is set when it is made, from the storage backend's default user (aiida-core caches it on
the backend). `as_user` makes the requesting user's AiiDA user that default for the duration of one submission,
under a lock, so the root workflow node and its input nodes carry that user; nodes the daemon makes later
(steps, LAMMPS jobs) belong to the profile's default user, so the root also gets the extra `mdagent_user`, and
each LAMMPS job's scheduler script carries the user (Slurm `--comment`, a comment line elsewhere).
Nothing is kept here between requests: everything lives in the database and the broker.
"""

from __future__ import annotations

import contextlib
import os
import threading
from datetime import datetime

from aiida import orm

from mdagent_hpc.accounts.store import User
from mdagent_hpc.provenance import EVERYONE, GROUP_READ_EXTRA, Caller, owner, usage
from mdagent_hpc.provenance.usage import REQUEST_EXTRA
from mdagent_hpc.server.access import identity, may_cancel, may_read

USER_EXTRA = "mdagent_user"
CRASH_AT = "MDAGENT_TEST_CRASH_AT"  # tests only: the server dies (as by SIGKILL) at this named point of a submission


class DeniedError(Exception):
    """Not this user's to see or touch (HTTP 403), in one sentence."""


class MissingError(Exception):
    """No such run or sweep (HTTP 404), in one sentence."""


_submit_lock = threading.Lock()


def aiida_user(user: User) -> orm.User:
    email = identity(user.name, user.email)
    found = orm.QueryBuilder().append(orm.User, filters={"email": email}).first(flat=True)
    return found or orm.User(email=email, first_name=user.name, last_name="", institution="mdagent").store()


@contextlib.contextmanager
def as_user(user: User):
    """Nodes made inside belong to `user`'s AiiDA user (one submission at a time: the default is global)."""
    backend = orm.User.collection.backend
    with _submit_lock:
        previous = backend.default_user
        backend._default_user = aiida_user(user)  # noqa: SLF001 (aiida has no setter)
        try:
            yield
        finally:
            backend._default_user = previous  # noqa: SLF001


def scheduler_mark(scheduler: str, user: User) -> str:
    """A line in the job script that puts the user into the scheduler's accounting."""
    who = identity(user.name, user.email)
    if scheduler == "core.slurm":
        return f"#SBATCH --comment=mdagent:{who}"
    if scheduler == "core.pbspro":
        return f"#PBS -v MDAGENT_USER={who}"
    return f"# mdagent user: {who}"


def caller(user: User, group_read: bool) -> Caller:
    """Whose work `user` may read on this server."""
    return EVERYONE if group_read or user.admin else Caller(identity(user.name, user.email))


def crash_point(name: str) -> None:
    """Tests kill the server between the steps of a submission here (never set in a deployment)."""
    if os.environ.get(CRASH_AT) == name:
        os._exit(137)


def launch(process_class, inputs: dict, extras: dict) -> orm.ProcessNode:
    """What `aiida.engine.submit` does, with the root node, its inputs, its extras (the user, the request id) and
    its checkpoint committed in one transaction: a crash leaves either no node or one a retry can find by its
    request id. Then the task goes to the broker (a crash before that: the retry or the repair queues it)."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    runner = get_manager().get_runner()
    with get_manager().get_profile_storage().transaction():
        process = instantiate_process(runner, process_class, **inputs)
        process.node.base.extras.set_many(extras)
        runner.persister.save_checkpoint(process)
        process.close()
    crash_point("run_stored")
    runner.controller.continue_process(process.pid, nowait=False, no_reply=True)
    return process.node


def extras_of(user: User, group_read: bool, request_id: str | None) -> dict:
    """The user's name on the root; with the group setting, its failure memory may read the group's runs (absent,
    the safe default: own runs only); the request id that made it."""
    return {USER_EXTRA: user.name, GROUP_READ_EXTRA: group_read, **({REQUEST_EXTRA: request_id} if request_id else {})}


def submit_run(user: User, request, group_read: bool = False, request_id: str | None = None):
    """Submit an agent run to the daemon on behalf of `user`; the root node."""
    from mdagent_hpc.workflows.agent import AgentWorkChain
    from mdagent_hpc.workflows.launch import agent_inputs

    with as_user(user):  # the input nodes too are made here, so they carry the user
        inputs = agent_inputs(request)
        code = inputs.get("code")
        options = inputs["options"].get_dict() if "options" in inputs else {"max_wallclock_seconds": 3600}
        mark = scheduler_mark(code.computer.scheduler_type if code is not None else "", user)
        options["custom_scheduler_commands"] = "\n".join(filter(None, [options.get("custom_scheduler_commands"), mark]))
        inputs["options"] = orm.Dict(options)
        return launch(AgentWorkChain, inputs, extras_of(user, group_read, request_id))


def submit_sweep(user: User, spec, group_read: bool = False, request_id: str | None = None):
    from mdagent_hpc.workflows.launch import LaunchError
    from mdagent_hpc.workflows.sweep import SweepWorkChain
    from mdagent_hpc.workflows.sweep_launch import sweep_inputs

    if spec.answers:
        raise LaunchError("a sweep with recorded answers runs only in your own process")
    with as_user(user):
        return launch(SweepWorkChain, sweep_inputs(spec), extras_of(user, group_read, request_id))


def queue_if_never_queued(node: orm.ProcessNode) -> None:
    """A run a cut-short submission made: its task sent now unless the broker or a worker has it already."""
    from mdagent_hpc.server.repair import held, queued

    if node.process_state is not None and node.process_state.value == "created":
        if node.pk not in queued() and not held([node.pk]):
            from aiida.manage import get_manager

            get_manager().get_process_controller().continue_process(node.pk, nowait=False, no_reply=True)


def load(pk: int | str, what: str = "run") -> orm.Node:
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        return orm.load_node(pk)
    except (NotExistent, MultipleObjectsError, ValueError, TypeError):
        raise MissingError(f"no {what} with pk {pk}; `mdagent runs` lists yours") from None


def readable(user: User, pk: int | str, group_read: bool, what: str = "run") -> orm.Node:
    node = load(pk, what)
    if not may_read(identity(user.name, user.email), user.admin, owner(node), group_read):
        raise DeniedError(f"{what} {pk} belongs to another user and this server does not share runs within the group")
    return node


def cancel(user: User, pk: int | str, group_read: bool = False) -> str:
    """Missing for a run the user may not even read (as for one that does not exist: no oracle for which pks
    exist), DeniedError for one they may read but not stop."""
    from mdagent_hpc import api

    me, whose = identity(user.name, user.email), owner(load(pk))
    if not may_read(me, user.admin, whose, group_read):
        raise MissingError(f"no run with pk {pk}; `mdagent runs` lists yours")
    if not may_cancel(me, user.admin, whose):
        raise DeniedError(f"run {pk} belongs to another user; only they (or an admin) may cancel it")
    return api.cancel(pk, by=me)


def list_runs(user: User, limit: int, verdict: str | None, site: str | None, task: str | None, group_read: bool):
    """What `mdagent runs` lists, only the user's own unless the group setting (or admin) allows all."""
    from mdagent_hpc.provenance.runs import list_runs

    return list_runs(caller(user, group_read), limit, verdict, site, task)


def list_sweeps(user: User, limit: int, group_read: bool):
    from mdagent_hpc.provenance.sweeps import list_sweeps

    return list_sweeps(caller(user, group_read), limit)


# -- what a user has used (read in provenance/usage.py) ----------------------------------------------------------
def made_by(user: User, request_id: str):
    return usage.made_by(identity(user.name, user.email), request_id)


def in_flight(user: User) -> int:
    return usage.in_flight(identity(user.name, user.email))


def tokens_today(user: User, now: datetime | None = None) -> int:
    return usage.tokens_today(identity(user.name, user.email), now)


def core_hours_today(user: User, now: datetime | None = None) -> float:
    return usage.core_hours_today(identity(user.name, user.email), now)
