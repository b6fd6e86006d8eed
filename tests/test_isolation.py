"""Isolation by construction (issue 19): every read of runs takes the caller, in one profile shared by two users.

Runs are made here as their nodes (an agent run's node, its attempt records, its recorded query fields) under two
AiiDA users, alice and bob; the readers of `mdagent_hpc.provenance` must show each only their own.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

SECRET = "bob-private-potential-9f3c.eam"  # bob's file name: it must never reach alice's prompt


@pytest.fixture(scope="module")
def profile():
    from mdagent_hpc.execution.profile import ensure_profile

    return ensure_profile()


def aiida_user(email: str):
    from aiida import orm

    found = orm.QueryBuilder().append(orm.User, filters={"email": email}).first(flat=True)
    return found or orm.User(email=email, first_name=email.split("@")[0], last_name="").store()


def attempt(number: int, script: str, error: str | None = None) -> dict:
    from mdagent_hpc.models import Attempt, Diagnostic, Severity, Stage

    problems = [Diagnostic(severity=Severity.ERROR, code="potential.missing", message=error or "", command=script)]
    return Attempt(
        number=number,
        stage=Stage.PREFLIGHT if error else Stage.EVALUATE,
        passed=error is None,
        script=script,
        diagnostics=problems if error else [],
    ).model_dump(mode="json")


def agent_run(email: str, task: str, attempts: list[dict], site: str, model: str):
    """An agent run's node as the AgentWorkChain leaves it, owned by `email`."""
    from aiida import orm
    from aiida.common.links import LinkType

    from mdagent_hpc.provenance import AGENT_TYPE, RECORD
    from mdagent_hpc.workflows.owned import default_user

    with default_user(aiida_user(email)):
        node = orm.WorkChainNode()
        node.set_process_type(AGENT_TYPE)
        node.base.links.add_incoming(orm.Str(task).store(), LinkType.INPUT_WORK, "task")
        node.base.links.add_incoming(orm.Dict({"name": site}).store(), LinkType.INPUT_WORK, "site")
        node.set_process_state("finished")
        node.set_exit_status(0)
        node.store()
        for record in attempts:
            out = orm.Dict(record).store()
            out.base.links.add_incoming(node, LinkType.RETURN, f"attempts__attempt_{record['number']}")
        node.seal()
    fields = {"user": email, "site": site, "model": model, "stop": "passed", "task": task, "kind": "run"}
    node.base.extras.set(RECORD, fields)
    return node


@pytest.fixture(scope="module")
def two_users(profile):
    tag = uuid.uuid4().hex[:8]
    alice, bob = f"alice-{tag}@example.org", f"bob-{tag}@example.org"
    lesson = [
        attempt(1, f"pair_coeff 1 1 {SECRET}", f"no potential file {SECRET}"),
        attempt(2, "pair_coeff 1 1 Cu_u3.eam"),
    ]
    bobs = agent_run(bob, f"bob's melt {tag}", lesson, site=f"bob-cluster-{tag}", model=f"bob-model-{tag}")
    alices = agent_run(
        alice, f"alice's melt {tag}", [attempt(1, "pair_style lj/cut 2.5")], site=f"alice-site-{tag}", model="m-a"
    )
    return SimpleNamespace(alice=alice, bob=bob, alices=alices, bobs=bobs, tag=tag)


def test_the_failure_memory_of_alices_run_never_holds_bobs_lessons(two_users):
    from mdagent_hpc.provenance import EVERYONE, Caller
    from mdagent_hpc.provenance.lessons import past_lessons
    from mdagent_hpc.workflows.agent import AgentWorkChain

    def secret_in(lessons) -> bool:
        return any(SECRET in " ".join([lesson.message, *lesson.fix]) for lesson in lessons)

    assert secret_in(past_lessons(Caller(two_users.bob)))  # bob learns from his own run
    assert secret_in(past_lessons(EVERYONE))  # and the group would (with --group-read)
    assert not secret_in(past_lessons(Caller(two_users.alice)))
    # what the AgentWorkChain recalls for alice's run: her runs only
    recalled = AgentWorkChain._lessons(SimpleNamespace(node=two_users.alices))
    assert not secret_in(recalled)
    bobs_next = agent_run(two_users.bob, "bob's next run", [], site="s", model="m")
    assert secret_in(AgentWorkChain._lessons(SimpleNamespace(node=bobs_next)))  # his own, from his other run


def test_the_group_setting_on_a_run_shares_the_groups_lessons(two_users):
    from aiida import orm

    from mdagent_hpc.provenance import EVERYONE, GROUP_READ_EXTRA, Caller, run_caller

    assert run_caller(two_users.alices) == Caller(two_users.alice)
    shared = agent_run(two_users.alice, "a group run", [], site="s", model="m")
    shared.base.extras.set(GROUP_READ_EXTRA, True)
    assert run_caller(orm.load_node(shared.pk)) == EVERYONE
    shared.base.extras.set(GROUP_READ_EXTRA, "yes")  # only True shares
    assert run_caller(shared) == Caller(two_users.alice)


def test_runs_lists_queries_and_suggestions_are_the_callers_own(two_users):
    from mdagent_hpc.provenance import EVERYONE, Caller, NotFoundError
    from mdagent_hpc.provenance.filters import build_query
    from mdagent_hpc.provenance.query import search
    from mdagent_hpc.provenance.runs import get_run, list_runs
    from mdagent_hpc.provenance.suggestions import choices

    alice, tag = Caller(two_users.alice), two_users.tag
    assert get_run(alice, two_users.alices.pk).pk == two_users.alices.pk
    with pytest.raises(NotFoundError, match="that you may read"):
        get_run(alice, two_users.bobs.pk)
    with pytest.raises(NotFoundError, match="that you may read"):  # the same answer for a pk that does not exist
        get_run(alice, 2**31 - 1)
    assert [r.pk for r in list_runs(alice, limit=1000, task_contains=tag)] == [two_users.alices.pk]
    assert two_users.bobs.pk in [r.pk for r in list_runs(EVERYONE, limit=1000, task_contains=tag)]

    assert [r["pk"] for r in search(build_query(task=tag), alice)] == [two_users.alices.pk]
    assert search(build_query(task=tag, user=two_users.bob), alice) == []  # asking for bob's: nothing
    assert {r["pk"] for r in search(build_query(task=tag), EVERYONE)} == {two_users.alices.pk, two_users.bobs.pk}

    offered = choices(alice)
    assert f"alice-site-{tag}" in offered["site"]
    assert f"bob-cluster-{tag}" not in offered["site"] and f"bob-model-{tag}" not in offered["model"]
    assert f"bob-cluster-{tag}" in choices(EVERYONE)["site"]


def test_nodes_made_in_a_runs_steps_carry_its_user(profile):
    """A workchain created under alice, its steps run with the profile's default user as AiiDA's default: the
    calcfunction it calls, and that call's output, still belong to alice (OwnedSteps)."""
    from aiida import orm
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager
    from plumpy.persistence import InMemoryPersister

    from mdagent_hpc.workflows.owned import default_user

    alice = aiida_user(f"alice-{uuid.uuid4().hex[:8]}@example.org")
    runner = get_manager().create_runner(communicator=None, persister=InMemoryPersister())
    try:
        with default_user(alice):
            process = instantiate_process(runner, owned_demo())
        assert orm.User.collection.get_default().email != alice.email
        runner.run(process)
    finally:
        runner.close()
    node = process.node
    assert node.is_finished_ok
    (called,) = node.called
    assert node.user.email == called.user.email == called.outputs.result.user.email == alice.email


def test_users_add_refuses_reserved_duplicate_and_malformed_identities(tmp_path):
    from mdagent_hpc.accounts.store import AccountsError, Store
    from mdagent_hpc.cli.users import RESERVED
    from mdagent_hpc.server.access import identity

    store = Store(f"sqlite:///{tmp_path / 'users.db'}")
    try:

        def add(name, email=None):
            return store.add_user(name, email=email, identity=identity, reserved=RESERVED)

        with pytest.raises(AccountsError, match="reserved"):
            add("mallory", "mdagent@localhost")
        with pytest.raises(AccountsError, match="reserved"):
            add("mallory", "MDAgent@LocalHost")
        add("alice", "alice@example.org")
        with pytest.raises(AccountsError, match="already has the identity"):
            add("alice2", "Alice@Example.org")
        add("bob")  # bob@mdagent.local
        with pytest.raises(AccountsError, match="already has the identity"):
            add("bobby", "BOB@mdagent.local")
        for bad in ("two@at@signs", "no-at-sign", "spa ce@example.org", "@example.org", "x@"):
            with pytest.raises(AccountsError, match="not valid"):
                add("carol", bad)
        assert sorted(u.name for u in store.users()) == ["alice", "bob"]
    finally:
        store.close()


def owned_demo():
    """A workchain with OwnedSteps whose one step calls a calcfunction (made after the profile: AiiDA loads late)."""
    from aiida import orm
    from aiida.engine import WorkChain, calcfunction

    from mdagent_hpc.workflows.owned import OwnedSteps

    @calcfunction
    def owned_demo_record(x: orm.Int) -> orm.Int:
        return orm.Int(x.value + 1)

    class OwnedDemoWorkChain(OwnedSteps, WorkChain):
        @classmethod
        def define(cls, spec):
            super().define(spec)
            spec.outline(cls.record)

        def record(self):
            owned_demo_record(orm.Int(1))

    # a process is found again by its module and name (its checkpoint): make both this module's
    for made in (OwnedDemoWorkChain, owned_demo_record):
        made.__qualname__ = made.__name__
        globals()[made.__name__] = made
    return OwnedDemoWorkChain
