"""The users store's checks are atomic with the writes they guard, across processes, on SQLite too."""

import multiprocessing

from mdagent_hpc.accounts.store import AccountsError, Store

ADDERS = 8


def add_at_once(url: str, name: str, barrier, answers) -> None:
    store = Store(url)
    barrier.wait()
    try:
        store.add_user(name, email="same@example.org")
        answers.put((name, "added"))
    except AccountsError as exc:
        answers.put((name, str(exc)))


def test_users_added_at_once_by_processes_with_one_identity_give_one_user(tmp_path):
    """Eight `mdagent users add` at once, each another name with the same email: one is added, seven are told who has
    that identity (SQLite: the check and the insert in one write transaction, BEGIN IMMEDIATE)."""
    url = f"sqlite:///{tmp_path / 'users.db'}"
    Store(url).close()  # the tables, made once
    context = multiprocessing.get_context("spawn")
    barrier, answers = context.Barrier(ADDERS), context.Queue()
    adders = [context.Process(target=add_at_once, args=(url, f"u{i}", barrier, answers)) for i in range(ADDERS)]
    for adder in adders:
        adder.start()
    said = dict(answers.get(timeout=120) for _ in adders)
    for adder in adders:
        adder.join(timeout=60)
    added = [name for name, answer in said.items() if answer == "added"]
    assert len(added) == 1, said
    assert all("already has the identity 'same@example.org'" in said[name] for name in said if name not in added)
    assert [u.name for u in Store(url).users()] == added
