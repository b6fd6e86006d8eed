"""The shared server under load: 20 clients on loopback submitting runs and querying for a bounded time.

Sets up its own shared deployment as `mdagent server setup` does (a new PostgreSQL database and RabbitMQ vhost,
removed at the end), one user per client, the replay model server for the LLM, and starts `mdagent server serve`
as a process of its own. Each client first submits `--runs` agent runs (one attempt, a good recorded script, real
LAMMPS through the daemon), then, until `--seconds` have passed, alternates `runs query` (POST /api/v1/query with
a filter on elements and verdict, what `mdagent runs query --element Cu` sends) and `show` of one of its runs.
Then it waits for every run to end and checks that every submitted run passed and is found once: each user's list
(GET /runs) and each user's `runs query` (verdict passed, Cu) hold each of their runs exactly once, no run is in two
users' lists, and nothing else is there. By default 20 clients x 5 runs = 100 runs.

Reported: p50/p95/max latency of `runs query` through the server under that load; then, with the runs ended,
the same query from all clients at once for `--query-seconds` (queries only) and from one client; and the same
query in-process (api.find_runs in a Python process on the profile, the baseline), in the same run, with the
ratios of the p95s.

    .venv/bin/python perf/server_load.py [--clients 20] [--seconds 60] [--runs 1] [--query-seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TASK = "Heat a small Cu crystal with EAM to 800 K in NVT and report its temperature"
QUERY = {"elements": "Cu", "verdict": "passed", "limit": 50}
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def mdagent(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if done.returncode != 0:
        raise SystemExit(f"mdagent {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(ms: list[float]) -> str:
    return f"n={len(ms)} p50 {statistics.median(ms):.1f} ms, p95 {pct(ms, 0.95):.1f} ms, max {max(ms):.1f} ms"


IN_PROCESS = """
import json, sys, time
from mdagent_hpc.execution.profile import ensure_profile
ensure_profile()
from mdagent_hpc import api
query = json.loads(sys.argv[1]); n = int(sys.argv[2])
api.find_runs(**query)
ms = []
for _ in range(n):
    t = time.perf_counter(); rows = api.find_runs(**query); ms.append((time.perf_counter() - t) * 1000)
print(json.dumps({"ms": ms, "rows": len(rows)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--runs", type=int, default=5, help="runs each client submits (default 5: 100 in all)")
    parser.add_argument("--repeat", type=int, default=50, help="queries timed for the baselines")
    parser.add_argument("--wait", type=float, default=60, help="seconds per run to wait for the runs to end (60)")
    parser.add_argument("--query-seconds", type=float, default=20, help="then all clients only query, this long")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from _deployment import GOOD_ANSWER, deployment_env

    from mdagent_hpc.llm.replay import FakeOpenAIServer

    root = Path(tempfile.mkdtemp(prefix="mdagent-server-load-"))
    name = f"mdagent-bench-server-{uuid.uuid4().hex[:8]}"
    model = FakeOpenAIServer([GOOD_ANSWER] * (args.clients * args.runs + 10), model="fake-model").start()
    env = deployment_env(root / "home", name, model.base_url)
    server = None
    try:
        subprocess.run(["rabbitmqctl", "add_vhost", name], check=True, capture_output=True, timeout=60)
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        print(f"setting up profile {name} (PostgreSQL + RabbitMQ) ...", flush=True)
        mdagent("server", "setup", "--profile", name, "--accept-consumer-timeout", "--json", env=env)
        keys = [
            json.loads(mdagent("users", "add", f"user{i:02d}", "--concurrent-runs", "none", "--json", env=env).stdout)[
                "key"
            ]
            for i in range(args.clients)
        ]
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        log = (root / "server.log").open("w")
        server = subprocess.Popen(
            [sys.executable, "-m", "mdagent_hpc.cli", "server", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        print(f"server on {url}; {args.clients} clients for {args.seconds:.0f} s ...", flush=True)

        submitted: dict[int, list[int]] = {i: [] for i in range(args.clients)}
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        start = time.monotonic()

        def client(i: int) -> None:
            headers = {"authorization": f"Bearer {keys[i]}"}
            with httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=120, trust_env=False) as http:
                for n in range(args.runs):
                    answer = http.post(
                        "/runs",
                        json={"request": {"task": f"{TASK} (client {i}, run {n})", "loop": {"max_attempts": 1}}},
                    )
                    if answer.status_code != 201:
                        with lock:
                            errors.append(f"client {i} submit: HTTP {answer.status_code} {answer.text[:200]}")
                        continue
                    submitted[i].append(answer.json()["pk"])
                turn = 0
                while time.monotonic() - start < args.seconds:
                    turn += 1
                    if turn % 2 or not submitted[i]:
                        t = time.perf_counter()
                        answer = http.post("/query", json={"filters": QUERY})
                        ms = (time.perf_counter() - t) * 1000
                        with lock:
                            latencies.append(ms)
                    else:
                        answer = http.get(f"/runs/{submitted[i][turn % len(submitted[i])]}")
                    if answer.status_code != 200:
                        with lock:
                            errors.append(f"client {i}: HTTP {answer.status_code} {answer.text[:200]}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"load over; waiting for the {sum(map(len, submitted.values()))} runs to end ...", flush=True)
        pending = {pk: i for i, pks in submitted.items() for pk in pks}
        verdicts: dict[int, str] = {}
        deadline = time.monotonic() + max(900, args.wait * len(pending))
        with httpx.Client(base_url=f"{url}/api/v1", timeout=120, trust_env=False) as http:
            while pending and time.monotonic() < deadline:
                for pk, i in list(pending.items()):
                    run = http.get(f"/runs/{pk}", headers={"authorization": f"Bearer {keys[i]}"}).json()
                    if run["verdict"] != "running":
                        verdicts[pk] = run["verdict"]
                        del pending[pk]
                time.sleep(2)
            # every run found once: in its user's list and its user's query, exactly once, and in no other list
            listed_by: Counter = Counter()
            problems: list[str] = []
            total_asked = args.clients * args.runs
            for i, pks in submitted.items():
                headers = {"authorization": f"Bearer {keys[i]}"}
                listing = http.get("/runs", params={"limit": 1000}, headers=headers)
                query = http.post("/query", json={"filters": {**QUERY, "limit": 2 * total_asked}}, headers=headers)
                for what, answer in (("list", listing), ("query", query)):
                    if answer.status_code != 200:
                        problems.append(f"user{i:02d}'s {what}: HTTP {answer.status_code} {answer.text[:200]}")
                listed = Counter(r["pk"] for r in listing.json()) if listing.status_code == 200 else Counter()
                listed_by.update(listed)
                found = Counter(r["pk"] for r in query.json()) if query.status_code == 200 else Counter()
                for pk in pks:
                    if listed[pk] != 1 or found[pk] != 1:
                        problems.append(
                            f"run {pk} of user{i:02d}: in its list {listed[pk]}x, in its query {found[pk]}x"
                        )
                if extra := set(listed) - set(pks):
                    problems.append(f"user{i:02d} lists runs it did not submit: {sorted(extra)}")
            problems += [f"run {pk} is in {n} users' lists" for pk, n in listed_by.items() if n > 1]
            owned_ok = not problems
            # the same 20 clients querying only, with the runs ended: the server's own cost under concurrency
            only: list[float] = []

            def querier(i: int) -> None:
                headers = {"authorization": f"Bearer {keys[i]}"}
                with httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=120, trust_env=False) as c:
                    end = time.monotonic() + args.query_seconds
                    while time.monotonic() < end:
                        t = time.perf_counter()
                        answer = c.post("/query", json={"filters": QUERY})
                        with lock:
                            only.append((time.perf_counter() - t) * 1000)
                            if answer.status_code != 200:
                                errors.append(f"client {i} query: HTTP {answer.status_code}")

            threads = [threading.Thread(target=querier, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            idle = []
            headers = {"authorization": f"Bearer {keys[0]}"}
            http.post("/query", json={"filters": QUERY}, headers=headers)
            for _ in range(args.repeat):
                t = time.perf_counter()
                http.post("/query", json={"filters": QUERY}, headers=headers)
                idle.append((time.perf_counter() - t) * 1000)
        base_env = {**env, "MDAGENT_AIIDA_PROFILE": name, "AIIDA_PATH": env["MDAGENT_HOME"]}
        base = json.loads(
            subprocess.run(
                [sys.executable, "-c", IN_PROCESS, json.dumps(QUERY), str(args.repeat)],
                capture_output=True,
                text=True,
                env=base_env,
                check=True,
                timeout=600,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        total = sum(map(len, submitted.values()))
        print(
            f"\nclients {args.clients}, {args.seconds:.0f} s of load, {total} runs submitted "
            f"({args.clients * args.runs} asked), {len(errors)} request errors, cores {os.cpu_count()}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"runs ended: {len(verdicts)} of {total} ({sum(v == 'passed' for v in verdicts.values())} passed), "
            f"still running: {len(pending)}; every run in its user's list and query exactly once: {owned_ok}"
        )
        print(f"runs query through the server, under load:  {summary(latencies)}")
        print(
            f"runs query through the server, {args.clients} clients querying only: {summary(only)} "
            f"({len(only) / args.query_seconds:.0f} queries/s)"
        )
        print(f"runs query through the server, one client:  {summary(idle)}")
        print(f"runs query in-process (api.find_runs):       {summary(base['ms'])} ({base['rows']} rows)")
        print(
            f"p95 ratio to in-process: under load {pct(latencies, 0.95) / pct(base['ms'], 0.95):.1f}, "
            f"{args.clients} clients querying only {pct(only, 0.95) / pct(base['ms'], 0.95):.1f}, "
            f"one client {pct(idle, 0.95) / pct(base['ms'], 0.95):.1f}"
        )
        for e in errors[:5]:
            print("  error:", e)
        for problem in problems[:10]:
            print("  not found once:", problem)
        not_passed = {pk: v for pk, v in verdicts.items() if v != "passed"}
        for pk, verdict in list(not_passed.items())[:10]:
            print(f"  run {pk} ended {verdict}")
        bad = total != args.clients * args.runs or pending or not owned_ok or not_passed
        print(
            f"every run passed and found once: {total} of {args.clients * args.runs} submitted, "
            f"{total - len(not_passed) - len(pending)} passed, {len(problems)} not found once"
            if not bad
            else "NOT EVERY RUN PASSED AND WAS FOUND ONCE"
        )
        sys.exit(1 if bad else 0)
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        subprocess.run(
            [sys.executable, "-m", "mdagent_hpc.cli", "daemon", "stop"],
            capture_output=True,
            env={**env, "MDAGENT_AIIDA_PROFILE": name, "AIIDA_PATH": env["MDAGENT_HOME"]},
            timeout=120,
        )
        model.stop()
        subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60)
        import psycopg

        with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name.replace("-", "_")}" WITH (FORCE)')
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
