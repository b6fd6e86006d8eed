"""Two `mdagent server serve` on two ports (standing in for two hosts) behind one database and broker (issue 22):
the profile, daemon, users and first server (one process) are tests/test_server.py's `shared` fixture (its own
database and vhost); the second server is started here with two processes of its own. A run submitted through one
is listed, shown and cancelled through the other, with the same read rules on both."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
import test_server
from test_server import GOOD, TASK, ServerProcess, free_port, mdagent, ok, refused

from mdagent_hpc.server.deploy import DEFAULT_CONCURRENT_RUNS, process_slots

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


def test_setup_sizes_the_daemon_and_daemon_start_sets_its_workers(shared):
    env = {**shared["env"], "MDAGENT_AIIDA_PROFILE": shared["name"], "AIIDA_PATH": str(shared["home"])}
    workers = os.cpu_count()
    slots = process_slots(DEFAULT_CONCURRENT_RUNS, workers)
    checks = {c["name"]: c for c in shared["setup"]["checks"]}
    assert checks["daemon"]["detail"].startswith(f"{workers} worker(s) of {slots} process slots"), checks["daemon"]
    got = ok(mdagent("verdi", "config", "get", "daemon.worker_process_slots", env=env)).stdout
    assert got.strip().splitlines()[-1] == str(slots)
    status = json.loads(ok(mdagent("daemon", "status", "--json", env=env)).stdout)
    assert status["workers"] == workers  # the server started it with what setup chose
    more = ok(mdagent("daemon", "start", "--workers", str(workers + 1), env=env))
    assert f"{workers + 1} worker(s)" in more.stdout, more.stdout
    assert json.loads(ok(mdagent("daemon", "status", "--json", env=env)).stdout)["workers"] == workers + 1
    ok(mdagent("daemon", "start", "--workers", str(workers), env=env))
    assert json.loads(ok(mdagent("daemon", "status", "--json", env=env)).stdout)["workers"] == workers
