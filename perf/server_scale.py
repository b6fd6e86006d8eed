"""The shared server's throughput next to the bound this machine allows: req/s and p50/p95/p99 per route at 1, 10,
50 and 100 clients, with 1 and N server processes, and /health's latency measured at the same time.

Setup as perf/server_load.py's: a new PostgreSQL database and RabbitMQ vhost made by `mdagent server setup`, --users
users (`mdagent users add`, every quota 'none': no 429 is expected), the replay model server answering with a good
LAMMPS script, and `mdagent server serve --workers W --port P` as a process of its own for each W. First --runs real
runs (one attempt, real LAMMPS through the daemon), spread over the users, must pass: they are what the reads read.

Then for each W in --workers, read route and C in --clients: C simulated clients (asyncio, one httpx.AsyncClient
with C connections) each send the route's request, wait for the answer and send the next, for --seconds, after one
unmeasured request each. Client i is user i mod --users (users read only their own runs). The routes:
  query      POST /api/v1/query, filters QUERY (what `mdagent runs query --element Cu --verdict passed` sends)
  show       GET /api/v1/runs/PK, the client's user's runs in turn
  dashboard  GET /dashboard/runs (the page /dashboard/ redirects to: the runs list and its filter form)
  running    GET /dashboard/api/running (the data the runs page polls every 3 s)
Meanwhile one more client GETs /health every --health-every s: its p50/p99 in each row.
submit (POST /api/v1/runs) starts a real run each time, so it is no timed loop (that would flood the daemon): for
each W and C in --submit-clients, C clients submit --submits runs in all, each right after its last was answered;
then the script waits for them to end before the next row. Every one must pass.

The bound: the CPU time (utime + stime, /proc/PID/stat) over a row of the server's process tree (uvicorn's supervisor
and its W processes) and of the PostgreSQL backends connected to this database, divided by the requests answered
(the route's and /health's), is the CPU cost of one request ("cpu/req"; "srv" is the server's share of it). bound =
cores / the cost in the row with the fewest clients of the same route and W (uncontended); ratio = req/s / bound,
the target >= 0.8 at 50 clients. "busy": the share of all cores the server and its backends used in the row (a low
ratio with cores left idle: something other than CPU bounds it). For submit the backends' CPU includes the daemon's.
"gen": the load generator's own CPU time, as a share of one core (it runs on the same cores).

Exit status 1 if any request failed (an exception, or a status other than 2xx) or any submitted run did not pass.
At the end, also on Ctrl-C, SIGTERM or an error, everything it started is stopped by PID (the daemon by `mdagent
daemon stop`, then any process still carrying this run's environment) and its database and vhost are dropped.

    .venv/bin/python perf/server_scale.py [--workers 1 N] [--clients 1 10 50 100] [--seconds 15] [--runs 10]
        [--users 10] [--submit-clients 1 10] [--submits 20]     (N: os.cpu_count())
    smoke: --workers 1 2 --clients 1 4 --seconds 3 --runs 2 --submit-clients 1 2 --submits 2  (--routes: some only)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from server_load import PG, QUERY, REPO, TASK, mdagent, pct  # noqa: E402 (the same setup, task and query)

TICK = os.sysconf("SC_CLK_TCK")
READS = ("query", "show", "dashboard", "running")
FIXED = {
    "query": ("POST", "/api/v1/query", {"filters": QUERY}),
    "dashboard": ("GET", "/dashboard/runs", None),
    "running": ("GET", "/dashboard/api/running", None),
}


def ask(route: str, user: int, n: int, runs: dict[int, list[int]]) -> tuple[str, str, dict | None]:
    if route in FIXED:
        return FIXED[route]
    if route == "show":
        return "GET", f"/api/v1/runs/{runs[user][n % len(runs[user])]}", None
    task = f"{TASK} (user {user}, {uuid.uuid4().hex[:8]})"
    return "POST", "/api/v1/runs", {"request": {"task": task, "loop": {"max_attempts": 1}}}


def proc(name: str):
    """(pid, /proc/PID/NAME) of every process whose file this user may read."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield int(entry), Path(f"/proc/{entry}/{name}").read_bytes()
            except OSError:  # another user's, or it ended meanwhile
                continue


def processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks used) of every process now."""
    stats = ((pid, stat.rsplit(b")", 1)[1].split()) for pid, stat in proc("stat"))
    return {pid: (int(f[1]), int(f[11]) + int(f[12])) for pid, f in stats}


def tree(root: int, table: dict[int, tuple[int, int]]) -> set[int]:
    found = {root}
    while more := {pid for pid, (parent, _) in table.items() if parent in found} - found:
        found |= more
    return found & table.keys()


def cpu_now(server: int, database: str) -> dict[str, dict[int, int]]:
    with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
        backends = {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))}
    table = processes()
    return {
        "server": {p: table[p][1] for p in tree(server, table)},
        "db": {p: table[p][1] for p in backends if p in table},
    }


def cpu_used(before: dict, after: dict) -> dict[str, float]:
    return {k: sum(t - before[k].get(p, 0) for p, t in after[k].items()) / TICK for k in after}


async def measure(url, route, clients, users, keys, runs, seconds, budget, health_every, meter) -> dict:
    """One row: `clients` closed loops on `route` for `seconds` (or until `budget` requests), /health probed."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    ms, health, errors, made = [], [], [], []
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=120, trust_env=False) as http,
        httpx.AsyncClient(base_url=url, timeout=120, trust_env=False) as probe,
    ):

        async def call(client, i: int, n: int, health: bool = False, into: list | None = None) -> None:
            user = (i + n) % users if route == "submit" else i % users  # one client's submissions: every user's
            method, path, body = ("GET", "/health", None) if health else ask(route, user, n, runs)
            started = time.perf_counter()
            try:
                answer = await client.request(method, path, json=body, headers={"authorization": keys[user]})
                if not 200 <= answer.status_code < 300:
                    said = " ".join(re.sub(r"<style.*</style>|<[^>]+>", " ", answer.text, flags=re.S).split())
                    errors.append(f"{method} {path}: HTTP {answer.status_code} {said[:300]}")
                elif route == "submit" and not health:
                    made.append((user, answer.json()["pk"]))
            except httpx.HTTPError as exc:
                errors.append(f"{method} {path}: {type(exc).__name__} {exc}")
            if into is not None:
                into.append((time.perf_counter() - started) * 1000)

        if route != "submit":  # one unmeasured request each (a submission would start a run)
            await asyncio.gather(*(call(http, i, 0) for i in range(clients)))
        before, own, start = meter(), time.process_time(), time.perf_counter()
        tickets = itertools.count(1)

        def more() -> bool:
            return next(tickets) <= budget if budget else time.perf_counter() - start < seconds

        async def client(i: int) -> None:
            for n in itertools.count(1):
                if not more():
                    return
                await call(http, i, n, into=ms)

        async def prober() -> None:
            while True:
                await call(probe, 0, 0, health=True, into=health)
                await asyncio.sleep(health_every)

        probing = asyncio.create_task(prober())
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed, own = time.perf_counter() - start, time.process_time() - own
        probing.cancel()
        await asyncio.wait([probing])
        cpu = cpu_used(before, meter())
    return {"ms": ms, "health": health, "errors": errors, "made": made, "s": elapsed, "own": own, **cpu}


def start_server(workers: int, env: dict, log: Path, started: list) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = [sys.executable, "-m", "mdagent_hpc.cli", "server", "serve", "--workers", str(workers), "--port", str(port)]
    with log.open("w") as out:
        server = subprocess.Popen(serve, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(server)  # stopped at the end whatever happens
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5, trust_env=False).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise SystemExit(f"the server ({workers} processes) did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # its own session: the supervisor and its processes
            server.wait(30)


def wait_for(url: str, keys: list[str], made: list[tuple[int, int]], seconds: float) -> dict[int, str]:
    """Each run's verdict once it has ended ('running' for those still running after `seconds`)."""
    verdicts, deadline = {pk: "running" for _, pk in made}, time.monotonic() + seconds
    with httpx.Client(base_url=f"{url}/api/v1", timeout=120, trust_env=False) as http:
        while "running" in verdicts.values() and time.monotonic() < deadline:
            for user, pk in made:
                if verdicts[pk] == "running":
                    answer = http.get(f"/runs/{pk}", headers={"authorization": keys[user]})
                    answer.raise_for_status()
                    verdicts[pk] = answer.json()["verdict"]
            time.sleep(2)
    return verdicts


def leftovers(tag: bytes) -> list[int]:
    """The processes still carrying this run's environment (all started by this script, its server or daemon)."""
    return [pid for pid, env in proc("environ") if pid != os.getpid() and tag in env.split(b"\0")]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50, 100])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--runs", type=int, default=10, help="runs submitted first, for the reads to read")
    parser.add_argument("--users", type=int, default=10, help="at most --runs")
    parser.add_argument("--submit-clients", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--submits", type=int, default=20, help="runs submitted in each submit row")
    parser.add_argument("--health-every", type=float, default=0.1)
    parser.add_argument("--routes", nargs="+", default=[*READS, "submit"], choices=[*READS, "submit"])
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C: cleaned up
    sys.path.insert(0, str(REPO))
    from _deployment import GOOD_ANSWER, deployment_env

    from mdagent_hpc.llm.replay import FakeOpenAIServer

    users = min(args.users, args.runs)
    submits = args.runs + len(args.workers) * len(args.submit_clients) * args.submits
    root = Path(tempfile.mkdtemp(prefix="mdagent-server-scale-"))
    name = f"mdagent-bench-scale-{uuid.uuid4().hex[:8]}"
    model = FakeOpenAIServer([GOOD_ANSWER] * (2 * submits + 10), model="fake-model").start()
    env = deployment_env(root / "home", name, model.base_url)
    database, servers, rows, failed = name.replace("-", "_"), [], [], []
    try:
        rabbitmqctl("add_vhost", name)
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        print(f"setting up profile {name} (PostgreSQL + RabbitMQ), {users} users ...", flush=True)
        mdagent("server", "setup", "--profile", name, "--accept-consumer-timeout", "--json", env=env)
        unlimited = [x for q in ("tokens-per-day", "requests-per-minute", "concurrent-runs", "sweep-points",
                                 "core-hours-per-day") for x in (f"--{q}", "none")]  # fmt: skip
        keys = [
            "Bearer " + json.loads(mdagent("users", "add", f"user{i:03d}", *unlimited, "--json", env=env).stdout)["key"]
            for i in range(users)
        ]

        def row(route, workers, clients, url, budget=0, runs=None) -> dict:
            meter = lambda: cpu_now(servers[-1].pid, database)  # noqa: E731
            got = asyncio.run(
                measure(url, route, clients, users, keys, runs, args.seconds, budget, args.health_every, meter)
            )
            failed.extend(got["errors"])
            rows.append({"route": route, "W": workers, "C": clients, **got})
            if got["made"]:
                verdicts = wait_for(url, keys, got["made"], max(600, 60 * len(got["made"])))
                failed.extend(f"run {pk} ended {v}" for pk, v in verdicts.items() if v != "passed")
            return got

        url = start_server(args.workers[0], env, root / "server-first.log", servers)
        print(f"submitting {args.runs} runs and waiting for them ...", flush=True)
        first = row("submit", args.workers[0], 1, url, budget=args.runs)
        rows.pop()
        if failed:
            raise SystemExit("the first runs did not all pass: " + "; ".join(failed[:5]))
        runs = defaultdict(list)
        for user, pk in first["made"]:
            runs[user].append(pk)
        stop_server(servers[-1])
        for routes, counts in ((READS, args.clients), (("submit",), args.submit_clients)):
            routes = [r for r in routes if r in args.routes]
            for workers in args.workers if routes else ():
                url = start_server(workers, env, root / f"server-{workers}.log", servers)
                for route in routes:
                    for clients in counts:
                        print(f"{route}: {workers} server processes, {clients} clients ...", flush=True)
                        row(route, workers, clients, url, args.submits if route == "submit" else 0, runs)
                stop_server(servers[-1])
        report(rows, failed)
        for log in sorted(root.glob("server-*.log")) if failed else ():  # what the servers said, before it goes
            print(f"--- {log.name}, last lines:\n" + "\n".join(log.read_text().splitlines()[-30:]))
        sys.exit(1 if failed else 0)
    finally:
        aiida = {**env, "MDAGENT_AIIDA_PROFILE": name, "AIIDA_PATH": env["MDAGENT_HOME"]}
        daemon_stop = [sys.executable, "-m", "mdagent_hpc.cli", "daemon", "stop"]
        tag = f"AIIDA_BROKER_VIRTUAL_HOST={name}".encode()
        steps = [
            *((f"stop the server {server.pid}", lambda server=server: stop_server(server)) for server in servers),
            ("stop the daemon", lambda: subprocess.run(daemon_stop, env=aiida, capture_output=True, timeout=120,
                                                       check=True)),
            ("stop what is left", lambda: stop_left(tag)),
            ("stop the model server", model.stop),
            ("delete the vhost", lambda: rabbitmqctl("delete_vhost", name)),
            ("drop the database", lambda: drop(database)),
            ("remove the folder", lambda: shutil.rmtree(root)),
        ]  # fmt: skip
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 (said, and the rest of the cleanup still done)
                print(f"cleanup: could not {what}: {type(exc).__name__} {exc}", file=sys.stderr)


def stop_left(tag: bytes) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in leftovers(tag):
            print(f"stopping process {pid}, left running (signal {sig.name})", file=sys.stderr)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # it ended meanwhile
                continue
        time.sleep(2)


def drop(database: str) -> None:
    with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def report(rows: list[dict], failed: list[str]) -> None:
    cores = os.cpu_count() or 1
    base, fewest = {}, {}
    for r in rows:
        r["cost"] = (r["server"] + r["db"]) / max(1, len(r["ms"]) + len(r["health"]))
        if r["C"] < fewest.get((r["route"], r["W"]), sys.maxsize):
            fewest[(r["route"], r["W"])], base[(r["route"], r["W"])] = r["C"], r["cost"]
    print(f"\ncores {cores}, load average {os.getloadavg()[0]:.1f}; latencies in ms; cpu/req = server + PostgreSQL")
    print(
        "route      W    C    req/s    p50    p95    p99  err  cpu/req   srv   bound ratio  busy  /health p50/p99  gen"
    )
    for r in rows:
        rate, bound = len(r["ms"]) / r["s"], cores / max(base[(r["route"], r["W"])], 1e-9)
        p = [pct(r["ms"], q) for q in (0.5, 0.95, 0.99)] if r["ms"] else [float("nan")] * 3
        r["h"] = [statistics.median(r["health"]), pct(r["health"], 0.99)] if r["health"] else [float("nan")] * 2
        r["ratio"] = rate / bound
        print(
            f"{r['route']:<9} {r['W']:>2} {r['C']:>4} {rate:>8.1f} {p[0]:>6.1f} {p[1]:>6.1f} {p[2]:>6.1f} "
            f"{len(r['errors']):>4} {1000 * r['cost']:>6.1f}ms {r['server'] / max(r['server'] + r['db'], 1e-9):>4.0%} "
            f"{bound:>7.1f} {r['ratio']:>5.2f} {(r['server'] + r['db']) / r['s'] / cores:>5.0%} "
            f"{r['h'][0]:>8.1f}/{r['h'][1]:<7.1f} {r['own'] / r['s']:>4.0%}"
        )
    for r in (r for r in rows if r["C"] == 50 and r["route"] != "submit"):
        print(
            f"at 50 clients, {r['route']} with {r['W']} processes: {r['ratio']:.2f} x bound (target >= 0.8), "
            f"/health p99 {r['h'][1]:.1f} ms (target < 50)"
        )
    for e in failed[:10]:
        print("  failed:", e)
    print(f"{len(failed)} failures" if failed else "every request answered 2xx and every submitted run passed")


if __name__ == "__main__":
    main()
