"""`mdagent server` (issue 13): a real server process on a shared profile on real PostgreSQL and RabbitMQ, made by
this module's own setup (a uniquely named database and RabbitMQ vhost, removed at the end), a real AiiDA daemon,
real LAMMPS, and the replay model server (mdagent_hpc/llm/replay.py) in place of the LLM. Two users run tasks
through the server with `mdagent` and MDAGENT_SERVER; keys, permissions, quotas and a restart mid-run are checked
from the outside, provenance from a separate Python process on the profile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from mdagent_hpc.accounts.quotas import Quota
from mdagent_hpc.llm.replay import FakeOpenAIServer
from mdagent_hpc.server.access import check_submit, identity, may_cancel, may_read

REPO = Path(__file__).resolve().parents[1]
TASK = "Heat a small Cu crystal with EAM to 800 K in NVT and report its temperature"
GOOD = f"```lammps\n{(REPO / 'mdagent_hpc' / 'examples' / 'demo' / 'good.lammps').read_text()}```\n"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


# -- the pure decisions ----------------------------------------------------------------------------------------
def test_who_may_read_and_cancel():
    assert identity("bob", None) == "bob@mdagent.local" and identity("al", "al@x.org") == "al@x.org"
    assert may_read("a@x", False, "a@x", group_read=False)
    assert not may_read("b@x", False, "a@x", group_read=False)
    assert may_read("b@x", False, "a@x", group_read=True) and may_read("b@x", True, "a@x", group_read=False)
    assert may_cancel("a@x", False, "a@x") and not may_cancel("b@x", False, "a@x") and may_cancel("b@x", True, "a@x")


def test_quota_decisions_say_which_quota_and_when_it_resets():
    now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert check_submit(Quota(), now, in_flight=99, points=1000, core_hours_today=1e6, tokens_today=10**9) is None
    runs = check_submit(Quota(concurrent_runs=2), now, in_flight=2)
    assert (
        runs.quota == "concurrent_runs"
        and "2 in flight of 2" in runs.message
        and "wait for a run to end or cancel one" in runs.message
        and runs.retry_after is None
    )
    assert check_submit(Quota(concurrent_runs=2), now, in_flight=1) is None
    points = check_submit(Quota(sweep_points=10), now, in_flight=0, points=11)
    assert points.quota == "sweep_points" and "11 points" in points.message
    hours = check_submit(Quota(core_hours_per_day=1.5), now, in_flight=0, core_hours_today=1.5)
    assert hours.quota == "core_hours_per_day" and "resets at 2026-12-01T00:00:00Z" in hours.message
    assert hours.retry_after == 15 * 3600
    tokens = check_submit(Quota(tokens_per_day=100), now, in_flight=0, tokens_today=150)
    assert tokens.quota == "tokens_per_day" and "150 used of 100" in tokens.message


def test_the_job_script_line_names_the_user_for_each_scheduler():
    from mdagent_hpc.accounts.store import User
    from mdagent_hpc.server.service import scheduler_mark

    alice = User(id=1, name="alice", email="alice@uni.example", created_at=datetime.now(UTC))
    assert scheduler_mark("core.slurm", alice) == "#SBATCH --comment=mdagent:alice@uni.example"
    assert scheduler_mark("core.pbspro", alice) == "#PBS -v MDAGENT_USER=alice@uni.example"
    assert scheduler_mark("core.direct", alice) == "# mdagent user: alice@uni.example"


# -- the real thing ----------------------------------------------------------------------------------------------
def mdagent(
    *args: str, env: dict, key: str | None = None, timeout: int = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    env = dict(env)
    if key is not None:
        env["MDAGENT_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd,
    )


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return done


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one sentence, no traceback, containing each of `words`."""
    assert done.returncode == 2, (done.returncode, done.stdout[-1000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("error:"), done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    return done.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`mdagent server serve` as a process of its own, started and stopped by its PID."""

    def __init__(self, env: dict, port: int, log: Path, *args: str):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        if "--workers" not in args:
            args = ("--workers", "1", *args)  # one process: a crash point (tests/test_hostile.py) ends the server
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mdagent_hpc.cli", "server", "serve", "--port", str(port), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"the server did not answer /health in 180 s: {log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A shared profile made by `mdagent server setup` on its own database and vhost, three users, the replay
    model server, and the server process; everything removed at the end."""
    import psycopg

    home = tmp_path_factory.mktemp("server-home")
    name = f"mdagent-test-server-{uuid.uuid4().hex[:8]}"
    vhost = name
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    model = FakeOpenAIServer([GOOD] * 20, model="fake-model").start()
    env = {
        **os.environ,
        "MDAGENT_HOME": str(home),
        "AIIDA_BROKER_VIRTUAL_HOST": vhost,
        "MDAGENT_LLM_BASE_URL": model.base_url,
        "MDAGENT_LLM_MODEL": "fake-model",
        "MDAGENT_LLM_API_KEY": "x",
    }
    for k in ("MDAGENT_AIIDA_PROFILE", "MDAGENT_SERVER", "MDAGENT_API_KEY", "MDAGENT_USERS_DB", "AIIDA_PATH"):
        env.pop(k, None)
    state = {"env": env, "home": home, "name": name, "model": model, "server": None}
    try:
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        setup = ok(
            mdagent("server", "setup", "--profile", name, "--accept-consumer-timeout", "--json", env=env, timeout=300)
        )
        state["setup"] = json.loads(setup.stdout)
        keys = {}
        for user, extra in (("alice", ["--email", "alice@example.org"]), ("bob", []), ("carol", []), ("eve", [])):
            keys[user] = json.loads(ok(mdagent("users", "add", user, *extra, "--json", env=env)).stdout)["key"]
        ok(mdagent("users", "revoke", "eve", env=env))
        state["keys"] = keys
        state["port"] = free_port()
        state["server"] = ServerProcess(env, state["port"], home / "server.log")
        state["client"] = {**env, "MDAGENT_SERVER": state["server"].url, "MDAGENT_HOME": str(home / "client")}
        for k in ("MDAGENT_LLM_BASE_URL", "MDAGENT_LLM_MODEL", "MDAGENT_LLM_API_KEY"):
            state["client"].pop(k)  # the users' side knows nothing of the model server
        yield state
    finally:
        if state["server"] is not None:
            state["server"].stop()
        stop_env = {**env, "MDAGENT_AIIDA_PROFILE": name, "AIIDA_PATH": str(home)}
        mdagent("daemon", "stop", env=stop_env, timeout=120)
        model.stop()
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)
        with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name.replace("-", "_")}" WITH (FORCE)')


def provenance(shared, pk: int) -> dict:
    """What the profile itself says about run `pk` (read in a process of its own)."""
    code = (
        "import json, sys\n"
        "from mdagent_hpc.execution.profile import ensure_profile\n"
        "ensure_profile()\n"
        "from aiida import orm\n"
        "n = orm.load_node(int(sys.argv[1]))\n"
        "jobs = [c for c in n.called_descendants if isinstance(c, orm.CalcJobNode)]\n"
        "print(json.dumps({'user': n.user.email, 'extra': n.base.extras.get('mdagent_user', None),\n"
        "  'inputs': sorted({x.user.email for x in n.base.links.get_incoming().all_nodes()\n"
        "                    if isinstance(x, orm.Data) and not isinstance(x, orm.AbstractCode)}),\n"
        "  'scheduler': [j.get_option('custom_scheduler_commands') for j in jobs],\n"
        "  'state': n.process_state.value}))\n"
    )
    env = {**shared["env"], "MDAGENT_AIIDA_PROFILE": shared["name"], "AIIDA_PATH": str(shared["home"])}
    done = ok(
        subprocess.run([sys.executable, "-c", code, str(pk)], capture_output=True, text=True, env=env, timeout=120)
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_setup_checks_what_it_finds_and_can_run_again(shared):
    checks = {c["name"]: c for c in shared["setup"]["checks"]}
    assert checks["PostgreSQL"]["ok"] and "C.UTF-8" in checks["PostgreSQL"]["detail"]
    assert checks["RabbitMQ"]["ok"] and shared["name"] in checks["RabbitMQ"]["detail"]  # our own vhost
    assert "consumer_timeout" in checks and checks["profile"]["ok"]
    assert checks["query indexes"]["detail"].startswith("6 on the runs")  # made by setup, not only by `runs index`
    again = json.loads(
        ok(
            mdagent(
                "server", "setup", "--profile", shared["name"], "--accept-consumer-timeout", "--json", env=shared["env"]
            )
        ).stdout
    )
    assert {c["name"]: c for c in again["checks"]}["users"]["detail"].startswith("3 active")  # eve is revoked
    health = httpx.get(f"{shared['server'].url}/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


@pytest.mark.slow
def test_two_users_each_run_a_task_and_see_only_their_own(shared):
    client, keys = shared["client"], shared["keys"]
    mine = json.loads(ok(mdagent("run", TASK, "--max-attempts", "2", "--json", env=client, key=keys["alice"])).stdout)
    assert mine["verdict"] == "passed"
    theirs = json.loads(ok(mdagent("run", TASK + " (bob)", "--daemon", "--json", env=client, key=keys["bob"])).stdout)
    deadline = time.monotonic() + 240
    while True:
        bobs = json.loads(ok(mdagent("show", str(theirs["pk"]), "--json", env=client, key=keys["bob"])).stdout)
        if bobs["verdict"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert bobs["verdict"] == "passed", bobs
    shared["runs"] = {"alice": mine["pk"], "bob": theirs["pk"]}
    listed_a = json.loads(ok(mdagent("runs", "--json", env=client, key=keys["alice"])).stdout)
    listed_b = json.loads(ok(mdagent("runs", "--json", env=client, key=keys["bob"])).stdout)
    assert [r["pk"] for r in listed_a] == [mine["pk"]] and [r["pk"] for r in listed_b] == [theirs["pk"]]
    query_a = json.loads(
        ok(mdagent("runs", "query", "--element", "Cu", "--json", env=client, key=keys["alice"])).stdout
    )
    assert [r["pk"] for r in query_a] == [mine["pk"]] and query_a[0]["user"] == "alice@example.org"
    # provenance: the root node and its inputs carry the user, the extra names them, the job script too
    seen = provenance(shared, mine["pk"])
    assert seen["user"] == "alice@example.org" and seen["extra"] == "alice" and seen["inputs"] == ["alice@example.org"]
    assert seen["scheduler"] and all("alice@example.org" in s for s in seen["scheduler"])
    assert provenance(shared, theirs["pk"])["user"] == "bob@mdagent.local"
    # nothing of the run was made on the users' side
    assert not (Path(client["MDAGENT_HOME"]) / ".aiida").exists()


@pytest.mark.slow
def test_no_key_a_revoked_key_and_another_users_run_are_refused(shared):
    client, keys = shared["client"], shared["keys"]
    alices = shared["runs"]["alice"]
    no_key = {k: v for k, v in client.items() if k != "MDAGENT_API_KEY"} | {"MDAGENT_API_KEY_FILE": "/nonexistent"}
    refused(mdagent("runs", env=no_key), "no key")
    refused(mdagent("runs", env=client, key=keys["eve"]), "not valid (unknown or revoked)")
    refused(mdagent("runs", env=client, key="mdk_" + "x" * 43), "not valid")
    for args in (
        ("show", str(alices)),
        ("plot", str(alices)),
        ("runs", "diff", str(alices), str(alices)),
        ("cancel", str(alices)),
    ):
        refused(mdagent(*args, env=client, key=keys["bob"]), "that you may read")  # as for a missing one
    raw = httpx.get(f"{shared['server'].url}/api/v1/runs/{alices}", timeout=10)
    assert raw.status_code == 401 and "no API key" in raw.json()["error"]["message"]
    forbidden = httpx.get(
        f"{shared['server'].url}/api/v1/runs/{alices}", timeout=10, headers={"authorization": f"Bearer {keys['bob']}"}
    )
    assert forbidden.status_code == 404  # the same as a missing run: no oracle for which pks exist
    # bob's query cannot reach alice's run, even when he asks for her by name
    refused(mdagent("runs", "query", "--user", "alice@example.org", env=client, key=keys["bob"]), "only your own")
    mine = json.loads(ok(mdagent("runs", "query", "--json", env=client, key=keys["bob"])).stdout)
    assert [r["pk"] for r in mine] == [shared["runs"]["bob"]]
    # the request log has each request with its user
    lines = [json.loads(x) for x in (shared["home"] / "server" / "requests.jsonl").read_text().splitlines()]
    assert {"user": "bob", "status": 404} in [{"user": x["user"], "status": x["status"]} for x in lines]
    assert any(x["user"] is None and x["status"] == 401 for x in lines)


@pytest.mark.slow
def test_thirty_readers_at_once_never_run_the_servers_database_pool_dry(shared):
    """Every read route and the dashboard at once, from 30 clients: every answer 200. Before, reads ran
    on shared worker threads, each of which kept an AiiDA session and a connection of its own: the pool (6) ran dry,
    requests waited 30 s for a connection and failed (500), and a page held up the event loop."""
    import asyncio

    pk = shared["runs"]["alice"]
    routes = [
        ("POST", "/api/v1/query", {"filters": {"verdict": "passed"}}),
        ("GET", f"/api/v1/runs/{pk}", None),
        ("GET", "/api/v1/runs", None),
        ("GET", "/dashboard/runs", None),
        ("GET", "/dashboard/api/running", None),
        ("GET", "/health", None),
    ]

    async def client(http: httpx.AsyncClient, n: int) -> list[tuple[str, int]]:
        seen = []
        for i in range(2 * len(routes)):
            method, path, body = routes[(n + i) % len(routes)]
            seen.append((path, (await http.request(method, path, json=body)).status_code))
        return seen

    async def everyone():
        headers = {"authorization": f"Bearer {shared['keys']['alice']}"}
        limits = httpx.Limits(max_connections=30)
        async with httpx.AsyncClient(base_url=shared["server"].url, headers=headers, timeout=120, limits=limits) as h:
            return [x for seen in await asyncio.gather(*(client(h, n) for n in range(30))) for x in seen]

    answers = asyncio.run(everyone())
    assert len(answers) == 360
    assert [a for a in answers if a[1] != 200] == []  # a request that waited out the pool (30 s) answered 500


class LocalDashboard:
    """`mdagent dashboard` with MDAGENT_SERVER set (pages forwarded from the server with the key), by its PID."""

    def __init__(self, env: dict, key: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mdagent_hpc.cli", "dashboard", "--port", "0"],
            env={**env, "MDAGENT_API_KEY": key},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        said = self.proc.stderr.readline()  # the link with the launch's secret, printed once when it listens
        assert "?token=" in said, said + self.proc.stderr.read()[-2000:]
        link = next(w for w in said.split() if "?token=" in w)
        self.url = link.split("/?", 1)[0]
        self.browser = httpx.Client(timeout=60)
        assert self.browser.get(link).status_code == 303  # the cookie, kept by this client from now on

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.browser.get(f"{self.url}{path}", **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.browser.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.slow
def test_the_dashboard_through_the_server_shows_each_user_only_their_own(shared):
    client, keys, runs = shared["client"], shared["keys"], shared["runs"]
    no_key = {k: v for k, v in client.items() if k != "MDAGENT_API_KEY"} | {"MDAGENT_API_KEY_FILE": "/nonexistent"}
    refused(mdagent("dashboard", "--port", str(free_port()), env=no_key, timeout=60), "no key")
    # the server's pages need the key; the browser never holds it
    assert httpx.get(f"{shared['server'].url}/dashboard/runs", timeout=30).status_code == 401
    with LocalDashboard(client, keys["alice"]) as alice, LocalDashboard(client, keys["bob"]) as bob:
        mine = alice.get("/runs")
        assert mine.status_code == 200 and f'href="/runs/{runs["alice"]}"' in mine.text
        assert f'href="/runs/{runs["bob"]}"' not in mine.text
        asked = bob.get("/runs", params={"user": "alice@example.org"})  # asking for her by name changes nothing
        assert asked.status_code == 200 and f'href="/runs/{runs["bob"]}"' in asked.text
        assert f'href="/runs/{runs["alice"]}"' not in asked.text
        assert alice.get(f"/runs/{runs['alice']}").status_code == 200
        theirs = bob.get(f"/runs/{runs['alice']}")
        assert theirs.status_code == 404 and "that you may read" in theirs.text and "<html" in theirs.text
        assert bob.get(f"/api/runs/{runs['alice']}").status_code == 404
        assert bob.get(f"/runs/{runs['alice']}/attempts/1/thermo.png").status_code == 404
        # the Host check stays: a page from another name (DNS rebinding) gets nothing
        assert alice.get("/runs", headers={"host": "evil.example"}).status_code == 400
        redirect = alice.get("/")
        assert redirect.status_code == 302 and redirect.headers["location"] == "/runs"


@pytest.mark.slow
def test_quotas_are_enforced_with_a_clear_message(shared):
    client, env, keys = shared["client"], shared["env"], shared["keys"]
    ok(mdagent("users", "set", "carol", "--concurrent-runs", "0", env=env))
    said = refused(
        mdagent("run", TASK, "--daemon", env=client, key=keys["carol"]),
        "concurrent runs limit",
        "quota concurrent_runs",
    )
    assert "wait for a run to end or cancel one" in said
    ok(mdagent("users", "set", "carol", "--concurrent-runs", "none", "--core-hours-per-day", "0", env=env))
    refused(
        mdagent("run", TASK, "--daemon", env=client, key=keys["carol"]),
        "daily core-hours budget",
        "resets at",
        "T00:00:00Z",
    )
    ok(mdagent("users", "set", "carol", "--core-hours-per-day", "none", "--tokens-per-day", "0", env=env))
    answer = httpx.post(
        f"{shared['server'].url}/api/v1/runs",
        json={"request": {"task": TASK}},
        timeout=30,
        headers={"authorization": f"Bearer {keys['carol']}"},
    )
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "tokens_per_day"
    assert "daily LLM token budget" in answer.json()["error"]["message"] and int(answer.headers["retry-after"]) > 0
    ok(mdagent("users", "set", "carol", "--tokens-per-day", "none", "--sweep-points", "2", env=env))
    spec = REPO / "workflows" / "sweeps" / "lj-melt-temperature.yaml"
    refused(
        mdagent("sweep", "start", "--spec", str(spec), "--daemon", "--yes", env=client, key=keys["carol"]),
        "sweep points limit",
        "quota sweep_points",
    )
    assert json.loads(ok(mdagent("runs", "--json", env=client, key=keys["carol"])).stdout) == []  # nothing started


@pytest.mark.slow
def test_a_sweep_through_the_server_and_a_diff_and_plot_of_own_runs(shared, tmp_path):
    import yaml

    client, alice, model = shared["client"], shared["keys"]["alice"], shared["model"]
    data = yaml.safe_load((REPO / "workflows" / "sweeps" / "lj-melt-temperature.yaml").read_text())
    template = data.pop("answers")[0]  # recorded answers run only locally: the model server answers instead
    data["parameters"][0]["stop"] = 1.2  # two points
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump(data))
    model.answers.clear()
    model.add(template, template, template)
    sent = json.loads(
        ok(mdagent("sweep", "start", "--spec", str(spec), "--daemon", "--yes", "--json", env=client, key=alice)).stdout
    )
    deadline = time.monotonic() + 300
    while True:
        state = json.loads(
            ok(mdagent("sweep", "status", str(sent["pk"]), "--once", "--json", env=client, key=alice)).stdout
        )
        if state["verdict"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert state["verdict"] == "passed" and state["points_done"] == 2, state
    shown = json.loads(
        ok(mdagent("sweep", "show", str(sent["pk"]), "--json", env=client, key=alice, cwd=tmp_path)).stdout
    )
    assert len(shown["rows"]) == 2 and Path(shown["files"]["csv"]).is_file()
    assert provenance(shared, sent["pk"])["user"] == "alice@example.org"
    # the sweep's points and its validating run carry alice: her query finds them, bob's finds none
    found = ("runs", "query", "--sweep", str(sent["pk"]), "--json")
    mine = json.loads(ok(mdagent(*found, env=client, key=alice)).stdout)
    kinds = [r["kind"] for r in mine]
    assert kinds.count("point") == 2 and "run" in kinds and {r["user"] for r in mine} == {"alice@example.org"}, mine
    assert all(provenance(shared, r["pk"])["user"] == "alice@example.org" for r in mine if r["kind"] == "run")
    assert json.loads(ok(mdagent(*found, env=client, key=shared["keys"]["bob"])).stdout) == []
    listed = json.loads(ok(mdagent("sweep", "status", "--once", "--json", env=client, key=alice)).stdout)
    assert sent["pk"] in [s["pk"] for s in (listed if isinstance(listed, list) else [listed])]
    refused(mdagent("sweep", "show", str(sent["pk"]), env=client, key=shared["keys"]["bob"]), "that you may read")
    pk = shared["runs"]["alice"]
    diff = json.loads(ok(mdagent("runs", "diff", str(pk), f"{pk}:1", "--json", env=client, key=alice)).stdout)
    assert diff["same_script"] is True
    ok(mdagent("plot", str(pk), env=client, key=alice, cwd=tmp_path))
    assert (tmp_path / f"run-{pk}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_server_and_daemon_restarted_mid_run_lose_nothing_and_group_read_shares_runs(shared):
    client, keys, model = shared["client"], shared["keys"], shared["model"]
    model.answers.clear()
    model.add({"hang": 12, "content": GOOD}, GOOD, GOOD)
    alices = ("runs", "query", "--user", "alice@example.org", "--json")
    before = json.loads(ok(mdagent(*alices, env=client, key=keys["alice"])).stdout)
    sent = json.loads(
        ok(mdagent("run", TASK + " (restart)", "--daemon", "--json", env=client, key=keys["alice"])).stdout
    )
    time.sleep(3)  # the daemon has it; the model is still answering
    mid = json.loads(ok(mdagent("show", str(sent["pk"]), "--json", env=client, key=keys["alice"])).stdout)
    assert mid["verdict"] == "running" and not mid["attempts"], mid
    shared["server"].stop()
    down = mdagent("runs", env=client, key=keys["alice"])
    refused(down, "does not answer")
    # the daemon too: its processes wait in RabbitMQ with their checkpoints; `serve` starts it again
    daemon_env = {**shared["env"], "MDAGENT_AIIDA_PROFILE": shared["name"], "AIIDA_PATH": str(shared["home"])}
    assert "daemon stopped" in ok(mdagent("daemon", "stop", env=daemon_env, timeout=120)).stdout
    shared["server"] = ServerProcess(shared["env"], shared["port"], shared["home"] / "server.log", "--group-read")
    deadline = time.monotonic() + 300
    while True:
        run = json.loads(ok(mdagent("show", str(sent["pk"]), "--json", env=client, key=keys["alice"])).stdout)
        if run["verdict"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert run["verdict"] == "passed" and len(run["attempts"]) == 1, run
    after = json.loads(ok(mdagent(*alices, env=client, key=keys["alice"])).stdout)
    assert [r["pk"] for r in after] == [sent["pk"]] + [r["pk"] for r in before]  # one more, none twice
    # with --group-read, bob reads alice's runs (and still may not cancel them)
    assert (
        json.loads(ok(mdagent("show", str(sent["pk"]), "--json", env=client, key=keys["bob"])).stdout)["pk"]
        == sent["pk"]
    )
    everyone = {r["pk"] for r in json.loads(ok(mdagent("runs", "--json", env=client, key=keys["bob"])).stdout)}
    assert {sent["pk"], shared["runs"]["alice"], shared["runs"]["bob"]} <= everyone
    refused(mdagent("cancel", str(sent["pk"]), env=client, key=keys["bob"]), "another user")
    with LocalDashboard(client, keys["bob"]) as bob:  # and in the dashboard too
        listed = bob.get("/runs")
        assert f'href="/runs/{shared["runs"]["alice"]}"' in listed.text
        assert bob.get(f"/runs/{shared['runs']['alice']}").status_code == 200


@pytest.mark.slow
def test_backup_while_serving_and_restore_into_a_new_profile(shared, tmp_path):
    import psycopg

    dest = tmp_path / "backups"
    said = ok(mdagent("server", "backup", str(dest), env=shared["env"], timeout=600)).stdout
    assert "backup in" in said and (dest / "last-backup" / "db.psql").is_file()
    restored = f"{shared['name']}-r"
    database = restored.replace("-", "_")
    env = {**shared["env"], "MDAGENT_HOME": str(tmp_path / "home2")}
    try:
        ok(mdagent("server", "restore", str(dest), "--profile", restored, env=env, timeout=600))
        refused(mdagent("server", "restore", str(dest), "--profile", restored, env=env), "exists already")
        code = (
            "import json, sys\n"
            "from mdagent_hpc.execution.profile import ensure_profile\n"
            "ensure_profile()\n"
            "from aiida import orm\n"
            "from mdagent_hpc.server.deploy import saved\n"
            "from mdagent_hpc.accounts.store import Store\n"
            "n = orm.load_node(int(sys.argv[1]))\n"
            "u = Store(saved()['users_db']).authenticate(sys.argv[2])\n"
            "print(json.dumps({'user': n.user.email, 'task': n.inputs.task.value, 'key_of': u.name if u else None,\n"
            "  'script': n.outputs.attempts.attempt_1.get_dict().get('script', '')[:5]}))\n"
        )
        pk = shared["runs"]["alice"]
        seen = ok(
            subprocess.run(
                [sys.executable, "-c", code, str(pk), shared["keys"]["alice"]],
                capture_output=True,
                text=True,
                timeout=120,
                env={**env, "MDAGENT_AIIDA_PROFILE": restored, "AIIDA_PATH": env["MDAGENT_HOME"]},
            )
        )
        seen = json.loads(seen.stdout.strip().splitlines()[-1])
        assert seen["user"] == "alice@example.org" and seen["task"] == TASK and seen["key_of"] == "alice"
    finally:
        with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.mark.slow
def test_a_running_run_is_cancelled_through_the_server_by_its_owner_only(shared):
    """A run whose LAMMPS job is running: another user's cancel is refused, the owner's stops the job and the run."""
    import psutil

    client, keys = shared["client"], shared["keys"]
    long_run = GOOD.replace("run             2000", "run             2000000")
    assert long_run != GOOD
    with shared["model"]._lock:
        shared["model"].answers.appendleft(long_run)  # the next answer, whatever earlier tests left queued
    sent = json.loads(
        ok(mdagent("run", TASK + " (cancel)", "--daemon", "--json", env=client, key=keys["alice"])).stdout
    )
    env = {**shared["env"], "MDAGENT_AIIDA_PROFILE": shared["name"], "AIIDA_PATH": str(shared["home"])}
    job_code = (
        "import sys\n"
        "from mdagent_hpc.execution.profile import ensure_profile\n"
        "ensure_profile()\n"
        "from aiida import orm\n"
        "n = orm.load_node(int(sys.argv[1]))\n"
        "print(next((c.get_job_id() for c in n.called_descendants if isinstance(c, orm.CalcJobNode)\n"
        "            and c.get_job_id()), '') or '')\n"
    )
    deadline, job = time.monotonic() + 180, ""
    while not job and time.monotonic() < deadline:
        time.sleep(1)
        done = subprocess.run(
            [sys.executable, "-c", job_code, str(sent["pk"])], capture_output=True, text=True, env=env, timeout=120
        )
        job = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert job, "the LAMMPS job never started"
    lammps = psutil.Process(int(job))  # the direct scheduler's job id is the job's PID
    # bob may not cancel it: the missing-run answer, or "another user" when an earlier test left the server
    # sharing reads (--group-read); either way nothing is stopped
    bobs = refused(mdagent("cancel", str(sent["pk"]), env=client, key=keys["bob"]))
    assert "no run" in bobs or "another user" in bobs, bobs
    assert lammps.is_running()
    cancelled = ok(mdagent("cancel", str(sent["pk"]), env=client, key=keys["alice"], timeout=180))
    assert f"{sent['pk']} cancelled" in cancelled.stdout, cancelled.stdout
    lammps.wait(timeout=60)  # raises if the job outlives the cancel
    shown = json.loads(ok(mdagent("show", str(sent["pk"]), "--json", env=client, key=keys["alice"])).stdout)
    assert shown["verdict"] != "running" and shown["state"] == "killed", shown
    assert provenance(shared, sent["pk"])["state"] == "killed"


class HoldingProxy:
    """A TCP relay in front of the server that holds the answer to the run's submission (POST .../runs) until the
    test releases it: the moment a user's Ctrl-C can land while the server has made the run but the client has not
    heard of it."""

    def __init__(self, upstream_port: int):
        import socket
        import threading

        self.upstream = ("127.0.0.1", upstream_port)
        self.held = threading.Event()
        self.release = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client) -> None:
        import socket
        import threading

        with client, socket.create_connection(self.upstream) as server:
            first = client.recv(65536)
            server.sendall(first)
            hold = first.startswith(b"POST /api/v1/runs ")
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            while chunk := server.recv(65536):
                if hold:
                    self.held.set()
                    assert self.release.wait(120)
                    hold = False
                client.sendall(chunk)

    @staticmethod
    def _pipe(source, target) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self.release.set()
        self.listener.close()


@pytest.mark.slow
def test_ctrl_c_while_the_submission_is_on_its_way_cancels_the_run_the_server_made(shared):
    """`mdagent run` interrupted after the server made the run but before its answer reached the client: the run is
    cancelled once the answer comes, not left running unseen, and the command says so (no 'Aborted!')."""
    import re

    client, keys = shared["client"], shared["keys"]
    with shared["model"]._lock:
        shared["model"].answers.appendleft(GOOD.replace("run             2000", "run             2000000"))
    proxy = HoldingProxy(shared["port"])
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdagent_hpc.cli", "run", TASK + " (ctrl-c on submit)"],
            env={**client, "MDAGENT_SERVER": proxy.url, "MDAGENT_API_KEY": keys["alice"]},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proxy.held.wait(120), "the submission never reached the server"
            proc.send_signal(signal.SIGINT)
            time.sleep(1)  # the signal lands while the client waits for the answer
            proxy.release.set()
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        proxy.close()
    printed = out + err
    assert "Traceback" not in printed and "Aborted" not in printed, printed
    assert proc.returncode == 1, (proc.returncode, printed)
    cancelled = re.search(r"Ctrl-C: (?:run )?(\d+) cancelled", printed)
    assert cancelled, printed
    pk = int(cancelled.group(1))
    shown = json.loads(ok(mdagent("show", str(pk), "--json", env=client, key=keys["alice"])).stdout)
    assert shown["verdict"] != "running" and shown["state"] == "killed", shown
