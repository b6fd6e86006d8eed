"""The shared server (issue 19) tried as a hostile or unlucky user would, on the real PostgreSQL + RabbitMQ profile,
daemon and server process of tests/test_server.py's `shared` fixture (its own database and vhost): each test is an
attack that worked before the fix. A second server process on the same profile (its request log on /dev/full)
shows that the quota lock holds across processes and that a failing request log fails no request.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import test_server
from test_server import PG, TASK, ServerProcess, free_port, mdagent, ok, refused

from mdagent_hpc.accounts.store import Store
from mdagent_hpc.server.app import Server, ServerSettings

pytestmark = pytest.mark.slow
shared = test_server.shared  # the module's own profile, daemon, users and server process

LEAKS = ("Traceback", "Error:", "SELECT", "psycopg", "sqlalchemy", "postgresql", "/tmp", "/work", "http://", "amqp")


def call(shared, method: str, path: str, who: str | None = None, url: str | None = None, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if who is not None:
        headers["authorization"] = f"Bearer {shared['keys'][who]}"
    return httpx.request(method, f"{url or shared['server'].url}{path}", headers=headers, timeout=120, **kwargs)


def says_what_not_how(answer: httpx.Response) -> str:
    message = answer.json()["error"]["message"]
    assert not any(leak in message for leak in LEAKS), message
    return message


def user(shared, name: str, *quota: str) -> str:
    if name not in shared["keys"]:
        shared["keys"][name] = json.loads(ok(mdagent("users", "add", name, "--json", env=shared["env"])).stdout)["key"]
    if quota:
        ok(mdagent("users", "set", name, *quota, env=shared["env"]))
    return shared["keys"][name]


def ended(shared, who: str, pk: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = call(shared, "GET", f"/api/v1/runs/{pk}", who).json()
        if run["verdict"] != "running":
            return run
        assert time.monotonic() < deadline, f"run {pk} still running after {timeout} s"
        time.sleep(2)


def submit(shared, who: str, task: str = TASK, url: str | None = None, **kwargs) -> httpx.Response:
    return call(shared, "POST", "/api/v1/runs", who, url=url, json={"request": {"task": task}}, **kwargs)


@pytest.fixture(scope="module")
def second(shared):
    """Another server process on the same profile and users database, its request log unwritable (/dev/full)."""
    server = ServerProcess(shared["env"], free_port(), shared["home"] / "second.log", "--request-log", "/dev/full")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dave_run(shared):
    """One finished run of dave's (his token budget is 1: it lets this one through, and it spends more)."""
    user(shared, "dave", "--tokens-per-day", "1")
    sent = submit(shared, "dave")
    assert sent.status_code == 201, sent.text
    run = ended(shared, "dave", sent.json()["pk"])
    assert run["verdict"] == "passed", run
    return run["pk"]


ORPHANS = """
import json, sys
from datetime import UTC, datetime
from mdagent_hpc.execution.profile import ensure_profile
ensure_profile()
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from mdagent_hpc.accounts.store import User
from mdagent_hpc.models import Request
from mdagent_hpc.server import service
from mdagent_hpc.workflows.agent import AgentWorkChain
from mdagent_hpc.workflows.launch import agent_inputs
who = User(id=0, name=sys.argv[1], created_at=datetime.now(UTC))
runner = get_manager().get_runner()
pks = []
with service.as_user(who):
    process = instantiate_process(runner, AgentWorkChain, **agent_inputs(Request(task=sys.argv[2])))
runner.persister.save_checkpoint(process)
process.node.base.extras.set("mdagent_user", who.name)
print(process.node.pk)
"""


@pytest.fixture(scope="module")
def orphans(shared):
    """A run of ivan's as a server killed mid-submission leaves it: the node and its checkpoint made, the task never
    sent to the broker (what `aiida.engine.submit` does, stopped before its last step)."""
    user(shared, "ivan", "--concurrent-runs", "1")
    env = {**shared["env"], "MDAGENT_AIIDA_PROFILE": shared["name"], "AIIDA_PATH": str(shared["home"])}
    done = ok(
        subprocess.run(
            [sys.executable, "-c", ORPHANS, "ivan", f"{TASK} (orphan)"], capture_output=True, text=True, env=env
        )
    )
    return int(done.stdout.strip().splitlines()[-1]), time.monotonic()


# -- 8. runs never left `created` --------------------------------------------------------------------------------
def test_a_run_left_unqueued_counts_until_a_server_start_repairs_it(shared, orphans):
    orphan, _ = orphans
    assert call(shared, "GET", f"/api/v1/runs/{orphan}", "ivan").json()["verdict"] == "running"
    answer = submit(shared, "ivan", f"{TASK} (blocked)")
    assert answer.status_code == 429 and "in flight" in answer.text  # counted, though nothing will ever run it


# -- 1. bodies ---------------------------------------------------------------------------------------------------
def raw_post(shared, headers: list[str], chunks) -> str:
    """Send a POST by hand (headers, then body chunks until the server answers or they run out); the status line."""
    host, port = shared["server"].url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        head = ["POST /api/v1/runs HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {shared['keys']['alice']}"]
        s.sendall(("\r\n".join(head + headers) + "\r\n\r\n").encode())
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: read what it said
        return s.recv(65536).decode(errors="replace").split("\r\n")[0]


def test_a_body_over_the_limit_is_refused_without_reading_it(shared):
    assert ServerSettings().max_body_bytes == 1 << 20
    # a Content-Length of 200 MB: refused from the header, after the first 64 KiB of it (the rest is never sent)
    said = raw_post(shared, ["Content-Type: application/json", "Content-Length: 200000000"], [b"{" + b" " * 65535])
    assert " 413 " in said, said
    # chunked: counted while streaming, refused once 1 MiB has gone by (2 MiB offered, no end)
    chunk = b" " * 65536
    chunks = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(32))
    said = raw_post(shared, ["Content-Type: application/json", "Transfer-Encoding: chunked"], chunks)
    assert " 413 " in said, said


# -- 2. the key before routing -----------------------------------------------------------------------------------
def test_unknown_paths_and_wrong_methods_answer_401_without_a_key(shared):
    for method, path in (
        ("GET", "/api/v1/nothing-here"),
        ("GET", "/wp-admin"),
        ("DELETE", "/api/v1/runs"),
        ("PUT", "/api/v1/runs/1/cancel"),
        ("GET", "/dashboard/runs"),
    ):
        answer = call(shared, method, path)
        assert answer.status_code == 401, (method, path, answer.status_code)
    assert call(shared, "GET", "/health").status_code == 200  # open: probes need it
    assert call(shared, "GET", "/api/v1/nothing-here", "alice").status_code == 404  # with a key: routed


# -- 3. no oracle ------------------------------------------------------------------------------------------------
def test_another_users_run_and_a_missing_one_answer_the_same_404(shared, dave_run):
    missing = 10**9  # a pk no node has (AiiDA's pks are 32-bit)
    for path in ("/api/v1/runs/{}", "/api/v1/runs/{}/plot", "/api/v1/sweeps/{}", "/api/v1/sweeps/{}/export"):
        theirs = call(shared, "GET", path.format(dave_run), "bob")
        nothing = call(shared, "GET", path.format(missing), "bob")
        assert theirs.status_code == nothing.status_code == 404, (path, theirs.text, nothing.text)
        assert theirs.json()["error"]["message"].replace(str(dave_run), "N") == nothing.json()["error"][
            "message"
        ].replace(str(missing), "N")
    diff = call(shared, "GET", "/api/v1/diff", "bob", params={"a": dave_run, "b": dave_run})
    assert diff.status_code == 404
    cancel = call(shared, "POST", f"/api/v1/runs/{dave_run}/cancel", "bob")
    assert cancel.status_code == 404 and "another user" not in cancel.text
    assert call(shared, "GET", f"/api/v1/runs/{dave_run}", "dave").status_code == 200


def test_an_unknown_site_is_refused_without_listing_the_sites(shared):
    from mdagent_hpc.execution.registry import site_files

    answer = call(shared, "POST", "/api/v1/runs", "alice", json={"request": {"task": TASK, "site": "nowhere"}})
    message = says_what_not_how(answer)
    assert answer.status_code == 400 and "nowhere" in message and "known" not in message
    assert not [name for name in site_files() if name in message]


# -- 4. errors say what, never how -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/runs/99999999999999999999",
        "/api/v1/runs/12%00",
        "/api/v1/sweeps/99999999999999999999",
        "/api/v1/runs/1'%20OR%201=1",
        "/api/v1/runs/1:x/plot",
        "/api/v1/sweeps?limit=abc",
        "/api/v1/runs?limit=-5",
        "/api/v1/runs?limit=1000000000000",
        "/api/v1/diff?a=99999999999999999999&b=1",
    ],
)
def test_malformed_ids_and_parameters_are_400_in_one_sentence(shared, path):
    answer = call(shared, "GET", path, "alice")
    assert answer.status_code == 400, (path, answer.status_code, answer.text)
    says_what_not_how(answer)


def test_an_unexpected_failure_is_a_500_naming_a_request_id_that_the_log_has(tmp_path):
    """Guard around an app that fails with a secret-laden exception: the answer names only the request id, whose
    log line has the exception type."""
    store = Store(f"sqlite:///{tmp_path / 'users.db'}")
    _, key = store.add_user("ann")
    server = Server(ServerSettings(request_log=tmp_path / "requests.jsonl"), store)

    async def failing(scope, receive, send):
        raise RuntimeError("SELECT password FROM secrets -- postgresql://admin:hunter2@db/x, /etc/mdagent")

    from mdagent_hpc.server.app import Guard

    transport = httpx.ASGITransport(app=Guard(server, failing))

    async def ask():
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/api/v1/runs", headers={"authorization": f"Bearer {key}"})

    import asyncio

    answer = asyncio.run(ask())
    assert answer.status_code == 500
    message = answer.json()["error"]["message"]
    assert "hunter2" not in message and "SELECT" not in message and "RuntimeError" not in message
    request_id = answer.headers["x-request-id"]
    assert message == f"the server failed on this request; the admin's request log has the id {request_id}"
    server.request_log.close()
    lines = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert {"id": request_id, "error": "RuntimeError", "status": 500, "user": "ann"}.items() <= lines[-1].items()


def test_a_server_queues_the_unqueued_run_again(shared, orphans):
    """At its start, or in the repair it repeats every minute (whichever server comes first)."""
    orphan, made = orphans
    time.sleep(max(0.0, 31 - (time.monotonic() - made)))  # older than the repair's grace period (30 s)
    server = ServerProcess(shared["env"], free_port(), shared["home"] / "third.log")
    try:
        logs = server.log.read_text() + shared["server"].log.read_text()
        assert f"left unqueued by a crash queued again: {orphan}" in logs
    finally:
        server.stop()
    assert ended(shared, "ivan", orphan)["verdict"] == "passed"
    again = submit(shared, "ivan", f"{TASK} (after repair)")
    assert again.status_code == 201, again.text  # nothing of ivan's in flight any more
    ended(shared, "ivan", again.json()["pk"])


# -- 5. the request log ------------------------------------------------------------------------------------------
def test_a_request_log_that_cannot_be_written_fails_no_request(shared, second):
    for _ in range(3):
        answer = call(shared, "GET", "/api/v1/runs", "alice", url=second.url)
        assert answer.status_code == 200, answer.text
    said = second.log.read_text()
    assert said.count("cannot write the request log /dev/full") == 1, said[-2000:]
    assert "Traceback" not in said


def test_an_unwritable_request_log_at_start_is_one_sentence(shared):
    done = mdagent(
        "server",
        "serve",
        "--port",
        str(free_port()),
        "--request-log",
        "/proc/mdagent-requests.jsonl",
        env=shared["env"],
        timeout=180,
    )
    refused(done, "cannot write the request log /proc/mdagent-requests.jsonl")


# -- 6, 7. quotas ------------------------------------------------------------------------------------------------
def test_five_parallel_submissions_under_a_quota_of_two_across_two_servers_accept_exactly_two(shared, second):
    user(shared, "frank", "--concurrent-runs", "2")
    answers: list[httpx.Response] = []
    go = threading.Barrier(5)

    def one(i: int) -> None:
        go.wait()
        answers.append(submit(shared, "frank", f"{TASK} (race {i})", url=(shared["server"], second)[i % 2].url))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(a.status_code for a in answers)
    assert codes == [201, 201, 429, 429, 429], [a.text for a in answers]
    for a in answers:
        if a.status_code == 429:
            assert a.json()["error"]["code"] == "concurrent_runs"
            assert "retry-after" not in a.headers  # waiting does not free it: a run ending does
            assert "wait for a run to end or cancel one" in a.json()["error"]["message"]
    shared["frank_runs"] = [a.json()["pk"] for a in answers if a.status_code == 201]


def test_the_tokens_a_users_runs_spend_count_against_their_daily_budget(shared, dave_run):
    answer = submit(shared, "dave", f"{TASK} (over budget)")
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "tokens_per_day"
    now = datetime.now(UTC)
    to_midnight = (now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1) - now).total_seconds()
    assert abs(int(answer.headers["retry-after"]) - to_midnight) < 120


def job_core_hours(shared, pk: int) -> float:
    """The core-hours of run `pk`'s LAMMPS jobs as the profile records them (cores x time), read apart."""
    code = (
        "import sys\n"
        "from mdagent_hpc.execution.profile import ensure_profile\n"
        "ensure_profile()\n"
        "from aiida import orm\n"
        "n = orm.load_node(int(sys.argv[1]))\n"
        "jobs = [c for c in n.called_descendants if isinstance(c, orm.CalcJobNode)]\n"
        "r = [j.get_option('resources') for j in jobs]\n"
        "print(sum((x.get('tot_num_mpiprocs') or (x.get('num_machines') or 1) * (x.get('num_mpiprocs_per_machine')"
        " or 1)) * (j.mtime - j.ctime).total_seconds() / 3600 for j, x in zip(jobs, r)))\n"
    )
    env = {**shared["env"], "MDAGENT_AIIDA_PROFILE": shared["name"], "AIIDA_PATH": str(shared["home"])}
    done = ok(subprocess.run([sys.executable, "-c", code, str(pk)], capture_output=True, text=True, env=env))
    return float(done.stdout.strip().splitlines()[-1])


def test_core_hours_of_a_finished_job_count_and_say_when_they_reset(shared, dave_run):
    spent = job_core_hours(shared, dave_run)
    assert spent > 0
    user(shared, "dave", "--tokens-per-day", "none", "--core-hours-per-day", f"{spent / 2:.9f}")
    answer = submit(shared, "dave", f"{TASK} (over core-hours)")
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "core_hours_per_day", answer.text
    assert int(answer.headers["retry-after"]) > 0 and "resets at" in answer.json()["error"]["message"]


def test_sweep_points_over_the_quota_get_no_retry_after(shared):
    import yaml

    user(shared, "gina", "--sweep-points", "1")
    spec = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "workflows" / "sweeps" / "lj-melt-temperature.yaml").read_text()
    )
    spec.pop("answers", None)
    answer = call(shared, "POST", "/api/v1/sweeps", "gina", json={"spec": spec})
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "sweep_points", answer.text
    assert "retry-after" not in answer.headers


# -- 8. idempotent submissions -----------------------------------------------------------------------------------
def test_a_retried_submission_returns_the_same_run(shared):
    user(shared, "hank")
    key = {"idempotency-key": f"retry-{uuid.uuid4().hex}"}
    answers: list[httpx.Response] = []
    go = threading.Barrier(3)

    def one() -> None:
        go.wait()
        answers.append(submit(shared, "hank", f"{TASK} (once)", headers=dict(key)))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 201], [a.text for a in answers]
    assert len({a.json()["pk"] for a in answers}) == 1
    again = submit(shared, "hank", f"{TASK} (once)", headers=dict(key))
    assert again.status_code == 200 and again.json()["pk"] == answers[0].json()["pk"]
    listed = call(shared, "GET", "/api/v1/runs", "hank").json()
    assert [r["pk"] for r in listed] == [answers[0].json()["pk"]]
    ended(shared, "hank", answers[0].json()["pk"])


@pytest.mark.parametrize("point", ["request_stored", "run_stored", "run_queued"])
def test_a_server_killed_at_any_step_of_a_submission_leaves_one_run_and_it_runs(shared, point):
    """The server dies (as by SIGKILL) after the request id is stored, after the run's node is committed, after
    its task is sent; the client retries with the same key on another server: one run, and it runs."""
    from mdagent_hpc.server.service import CRASH_AT

    user(shared, "kim")
    shared["model"].answers.extend([test_server.GOOD])  # this run's script
    task, key = f"{TASK} (killed at {point})", {"idempotency-key": f"crash-{point}-{uuid.uuid4().hex}"}
    env = {**shared["env"], CRASH_AT: point}  # one process (--workers 1): the crash is the server's, not a worker's
    dying = ServerProcess(env, free_port(), shared["home"] / f"dying-{point}.log", "--workers", "1")
    try:
        with pytest.raises(httpx.TransportError):
            submit(shared, "kim", task, url=dying.url, headers=dict(key))
        assert dying.proc.wait(60) == 137
    finally:
        dying.stop()
    again = submit(shared, "kim", task, headers=dict(key))
    assert again.status_code in (200, 201), again.text
    pk = again.json()["pk"]
    assert [
        r["pk"] for r in call(shared, "GET", "/api/v1/runs", "kim", params={"task": f"(killed at {point})"}).json()
    ] == [pk]
    assert submit(shared, "kim", task, headers=dict(key)).json()["pk"] == pk
    assert ended(shared, "kim", pk)["verdict"] == "passed"


# -- 9. secrets --------------------------------------------------------------------------------------------------
def test_server_json_is_private_and_a_password_with_url_characters_works(shared):
    settings = shared["home"] / "server.json"
    settings.chmod(0o644)  # made looser by hand: setup makes it private again
    env = {**shared["env"], "MDAGENT_DB_PASSWORD": "p@ss:w/rd?#%"}  # PostgreSQL here trusts 127.0.0.1: any works
    ok(
        mdagent(
            "server", "setup", "--profile", shared["name"], "--accept-consumer-timeout", "--json", env=env, timeout=300
        )
    )
    assert settings.stat().st_mode & 0o777 == 0o600
    store = Store(json.loads(settings.read_text())["users_db"])  # the URL parses: host, port and database intact
    assert "dave" in [u.name for u in store.users()]
    store.close()


# -- 4 (cont.). backing services down ----------------------------------------------------------------------------
def database_refuses(shared, refuse: bool) -> None:
    import psycopg

    database = shared["name"].replace("-", "_")
    with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"false" if refuse else "true"}')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))


def test_a_database_down_is_503_with_retry_after_and_the_first_request_after_a_blip_is_served(shared):
    for pk in shared.get("frank_runs", []):  # nothing in flight while the database goes away
        ended(shared, "frank", pk)
    assert call(shared, "GET", "/api/v1/runs", "alice").status_code == 200  # the pool has connections now
    database_refuses(shared, True)
    try:
        for path in ("/api/v1/runs", "/api/v1/me"):
            answer = call(shared, "GET", path, "alice")
            assert answer.status_code == 503 and int(answer.headers["retry-after"]) > 0, answer.text
            says_what_not_how(answer)
        # /health says what its probe (every second, off the request path) last found: unavailable, soon
        assert health_becomes(shared, 503), "/health still said ok 10 s after the database went away"
    finally:
        database_refuses(shared, False)
    for path in ("/api/v1/runs", "/api/v1/sweeps", "/api/v1/me"):  # every pooled connection was dropped
        assert call(shared, "GET", path, "alice").status_code == 200, path
    assert health_becomes(shared, 200), "/health still said unavailable 10 s after the database came back"


def health_becomes(shared, status: int, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if call(shared, "GET", "/health").status_code == status:
            return True
        time.sleep(0.2)
    return False


def test_a_submission_while_the_broker_refuses_is_503(shared):
    vhost = shared["name"]
    subprocess.run(["rabbitmqctl", "clear_permissions", "-p", vhost, "guest"], check=True, capture_output=True)
    try:
        answer = submit(shared, "alice", f"{TASK} (broker down)")
        assert answer.status_code == 503 and int(answer.headers["retry-after"]) > 0, answer.text
        says_what_not_how(answer)
    finally:
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True, capture_output=True
        )
    # nothing that submission made is left `created`, counting against alice for good (its node was rolled back
    # with the failure, or ended)
    left = call(shared, "GET", "/api/v1/runs", "alice", params={"task": "(broker down)"}).json()
    assert [r["verdict"] for r in left] in ([], ["failed"]), left


def children(shared, pk: int) -> int:
    """How many processes run `pk` has called so far (read in a process of its own)."""
    code = (
        "import sys\n"
        "from mdagent_hpc.execution.profile import ensure_profile\n"
        "ensure_profile()\n"
        "from aiida import orm\n"
        "print(len(orm.load_node(int(sys.argv[1])).called_descendants))\n"
    )
    env = {**shared["env"], "MDAGENT_AIIDA_PROFILE": shared["name"], "AIIDA_PATH": str(shared["home"])}
    done = ok(subprocess.run([sys.executable, "-c", code, str(pk)], capture_output=True, text=True, env=env))
    return int(done.stdout.strip().splitlines()[-1])


def test_a_run_in_flight_survives_a_30_s_broker_outage(shared):
    """Permissions on the vhost revoked and its connections closed for 30 s while a run is between its steps: the
    run ends passed (before: `excepted` on ChannelInvalidStateError, or waiting for good)."""
    user(shared, "lena")
    shared["model"].answers.extend([test_server.GOOD])
    answer = submit(shared, "lena", f"{TASK} (outage)")
    assert answer.status_code == 201, answer.text
    pk = answer.json()["pk"]
    deadline = time.monotonic() + 300
    while children(shared, pk) == 0:  # in flight: its first child made
        assert time.monotonic() < deadline, "the run made no child in 300 s"
        time.sleep(1)
    vhost = shared["name"]
    subprocess.run(["rabbitmqctl", "clear_permissions", "-p", vhost, "guest"], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "close_all_connections", "--vhost", vhost, "--limit", "1000", "test outage"],
            check=True,
            capture_output=True,
        )
        time.sleep(30)  # the outage itself (the fault injected, not a wait for a result)
    finally:
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True, capture_output=True
        )
    assert ended(shared, "lena", pk, timeout=900)["verdict"] == "passed"


REPAIR_ACROSS_AN_OUTAGE = """
import json, subprocess, sys, time
from mdagent_hpc.execution.profile import ensure_profile
ensure_profile()
from mdagent_hpc.server import repair

vhost = sys.argv[1]


def ctl(*args):
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def repair_once():
    try:
        return repair.repair(lambda email: None)
    except Exception as exc:
        return type(exc).__name__


seen = {"before": repair_once()}  # the connection is made here and lives through the outage
ctl("clear_permissions", "-p", vhost, "guest")
try:
    ctl("close_all_connections", "--vhost", vhost, "--limit", "1000", "test outage")
    time.sleep(20)  # the outage itself (the fault injected, not a wait for a result)
finally:
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
seen["after"] = repair_once()
print(json.dumps(seen))
"""


def test_the_servers_repair_works_again_after_a_broker_outage(shared):
    """The server's own broker connection, broken by a 20 s outage (permissions revoked, connections closed), is
    made anew: the first repair after the outage succeeds (before: every repair after it failed, RuntimeError)."""
    env = {**shared["env"], "MDAGENT_AIIDA_PROFILE": shared["name"], "AIIDA_PATH": str(shared["home"])}
    done = ok(
        subprocess.run(
            [sys.executable, "-c", REPAIR_ACROSS_AN_OUTAGE, shared["name"]],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(seen["before"], list), seen
    assert isinstance(seen["after"], list), seen  # not the name of an exception
