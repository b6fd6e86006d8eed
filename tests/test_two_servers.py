"""Two `mdagent server serve` on two ports (standing in for two hosts) behind one database and broker (issue 22):
the profile, daemon, users and first server (one process) are tests/test_server.py's `shared` fixture (its own
database and vhost); the second server is started here with two processes of its own. A run submitted through one
is listed, shown and cancelled through the other, with the same read rules on both."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import test_server
from test_server import GOOD, TASK, ServerProcess, free_port, mdagent, ok, refused

shared = test_server.shared  # the module's own profile, daemon, users and first server


@pytest.fixture(scope="module")
def second(shared):
    """A second server on the same home (server.json: the same profile, database and vhost), two processes."""
    log = shared["home"] / "second-server.log"
    server = ServerProcess(shared["env"], free_port(), log, "--workers", "2")
    try:
        yield server
    finally:
        server.stop()


def through(shared, server: ServerProcess) -> dict:
    return {**shared["client"], "MDAGENT_SERVER": server.url}


def test_the_second_server_serves_with_two_processes(shared, second):
    assert "2 server process(es)" in second.log.read_text()
    assert httpx.get(f"{second.url}/health", timeout=30).json() == {"status": "ok"}


def test_too_many_processes_for_postgresql_are_refused_in_one_sentence(shared):
    done = mdagent("server", "serve", "--port", str(free_port()), "--workers", "200", env=shared["env"])
    refused(done, "max_connections", "--workers")


@pytest.mark.slow
def test_a_run_submitted_through_one_server_is_listed_shown_and_cancelled_through_the_other(shared, second):
    keys, first = shared["keys"], shared["server"]
    long_run = GOOD.replace("run             2000", "run             2000000")
    assert long_run != GOOD
    with shared["model"]._lock:
        shared["model"].answers.appendleft(long_run)  # the next answer, whatever earlier tests left queued
    sent = json.loads(
        ok(
            mdagent("run", TASK + " (two servers)", "--daemon", "--json", env=through(shared, first), key=keys["alice"])
        ).stdout
    )
    other = through(shared, second)
    listed = json.loads(ok(mdagent("runs", "--limit", "50", "--json", env=other, key=keys["alice"])).stdout)
    assert sent["pk"] in [r["pk"] for r in listed]
    shown = json.loads(ok(mdagent("show", str(sent["pk"]), "--json", env=other, key=keys["alice"])).stdout)
    assert shown["pk"] == sent["pk"] and shown["verdict"] == "running", shown
    # the same read rules on the other server: bob is told there is no such run (or, when an earlier test left
    # the first server sharing reads, that it is another user's); nothing is stopped
    bobs = refused(mdagent("cancel", str(sent["pk"]), env=other, key=keys["bob"]))
    assert "no run" in bobs or "another user" in bobs, bobs
    cancelled = ok(mdagent("cancel", str(sent["pk"]), env=other, key=keys["alice"], timeout=180))
    assert f"{sent['pk']} cancelled" in cancelled.stdout, cancelled.stdout
    deadline = time.monotonic() + 120
    while True:  # the daemon ends the run as killed; the first server says so
        back = json.loads(
            ok(mdagent("show", str(sent["pk"]), "--json", env=through(shared, first), key=keys["alice"])).stdout
        )
        if back["state"] == "killed" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert back["verdict"] != "running" and back["state"] == "killed", back
