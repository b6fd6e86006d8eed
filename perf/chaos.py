"""Faults against a real shared server: server SIGKILLs mid-submission, RabbitMQ outages, a daemon SIGKILL.

Sets up its own deployment as `mdagent server setup` does (a new PostgreSQL database and RabbitMQ vhost, both
removed at the end), one user, the replay model server (mdagent_hpc/llm/replay.py: recorded answers, no LLM), and
`mdagent server serve` as a process of its own (which starts the real AiiDA daemon). Then, with a seeded timeline:

- 20 submissions (`POST /api/v1/runs`, one attempt, real LAMMPS through the daemon), each with its own
  `Idempotency-Key` and retried with the same key on a dropped connection or a 5xx, as a careful client would;
  during each one the server is SIGKILLed at a random point (0 to 1 s after the request is sent) and restarted;
- 3 broker outages of 20-60 s: the user's permissions on this run's own vhost are cleared and its connections
  closed (so clients that reconnect are refused too), then restored. Submissions 8 and 15 are sent during outages
  1 and 2; outage 3 comes after the last submission, with runs in flight;
- a SIGKILL of the daemon (circusd and its workers, by the PIDs in its pid file and /proc), then `daemon start`.

At the end it waits for every run to end and reads the profile itself (in a separate process) to print: runs lost
(a submission with no run), duplicated (more than one run for one submission), stuck (not ended), excepted, the
submissions never answered with a pk, and the time from the end of the last fault until every run had ended.
Only what it started is stopped (by PID) and only its own vhost and database are removed.

    .venv/bin/python perf/chaos.py [--submissions 20] [--seed N] [--wait 900]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TASK = "Heat a small Cu crystal with EAM to 800 K in NVT and report its temperature"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
RETRY_FOR_S = 300  # a client gives up on one submission after this long

CENSUS = """
import json, sys
from mdagent_hpc.execution.profile import ensure_profile
ensure_profile()
from aiida import orm
rows = []
qb = orm.QueryBuilder().append(orm.WorkflowNode, filters={"process_type": "aiida.workflows:mdagent.agent"}, tag="n")
for (n,) in qb.iterall():
    if n.caller is not None:
        continue
    task = n.inputs.task.value if "task" in n.inputs else ""
    state = n.process_state.value if n.process_state else None
    rows.append({"pk": n.pk, "task": task, "state": state, "exit_status": n.exit_status})
print(json.dumps(rows))
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mdagent server serve` on one port, SIGKILLed and started again by its PID."""

    def __init__(self, env: dict, port: int, log_path: Path):
        self.env, self.port, self.log_path = env, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def start(self) -> float:
        """Start it and wait for /health (retrying a start that fails, e.g. while the broker is down); seconds."""
        began = time.monotonic()
        while True:
            with self.log_path.open("a") as out:
                self.proc = subprocess.Popen(
                    # one process: a SIGKILL kills all of it (with --workers N, the workers would outlive it)
                    [
                        sys.executable,
                        "-m",
                        "mdagent_hpc.cli",
                        "server",
                        "serve",
                        "--port",
                        str(self.port),
                        "--workers",
                        "1",
                    ],
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            while self.proc.poll() is None:
                try:
                    if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                        return time.monotonic() - began
                except httpx.HTTPError:
                    pass
                if time.monotonic() - began > 300:
                    raise SystemExit(f"the server did not come back in 300 s: {self.log_path.read_text()[-2000:]}")
                time.sleep(0.3)
            log(f"  the server exited at start (code {self.proc.returncode}); starting it again")
            time.sleep(2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def submit(url: str, key: str, task: str, request_id: str, record: dict) -> None:
    """One submission as a careful client makes it: the same Idempotency-Key on every retry."""
    headers = {"authorization": f"Bearer {key}", "idempotency-key": request_id}
    body = {"request": {"task": task, "loop": {"max_attempts": 1}}}
    deadline = time.monotonic() + RETRY_FOR_S
    while time.monotonic() < deadline:
        record["tries"] += 1
        try:
            answer = httpx.post(f"{url}/api/v1/runs", json=body, headers=headers, timeout=60, trust_env=False)
        except httpx.HTTPError as exc:
            record["statuses"].append(type(exc).__name__)
            time.sleep(1)
            continue
        record["statuses"].append(answer.status_code)
        if answer.status_code in (200, 201):
            record["pks"].append(answer.json()["pk"])
            return
        if answer.status_code < 500 and answer.status_code != 429:
            record["refused"] = answer.text[:300]
            return
        time.sleep(min(5.0, float(answer.headers.get("retry-after", 1))))  # capped: the bench measures recovery


def daemon_pids(home: Path, profile: str) -> list[int]:
    """circusd (from its pid file) and every process under it (from /proc)."""
    found = list(home.rglob(f"circus-{profile}.pid"))
    if not found:
        return []
    root = int(found[0].read_text().strip())
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--wait", type=float, default=900, help="seconds to wait for the runs after the last fault")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    sys.path.insert(0, str(REPO))
    from _deployment import GOOD_ANSWER, deployment_env

    from mdagent_hpc.llm.replay import FakeOpenAIServer

    root = Path(tempfile.mkdtemp(prefix="mdagent-chaos-"))
    name = f"mdagent-bench-chaos-{uuid.uuid4().hex[:8]}"
    home = root / "home"
    model = FakeOpenAIServer([GOOD_ANSWER] * (args.submissions * 10), model="fake-model").start()
    env = deployment_env(home, name, model.base_url)
    profile_env = {**env, "MDAGENT_AIIDA_PROFILE": name, "AIIDA_PATH": str(home)}
    server: Server | None = None
    vhost_made = False
    try:
        rabbitmqctl("add_vhost", name)
        vhost_made = True
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        log(f"seed {seed}; setting up profile {name} (PostgreSQL + RabbitMQ vhost {name}) ...")
        cli = [sys.executable, "-m", "mdagent_hpc.cli"]
        subprocess.run(
            [*cli, "server", "setup", "--profile", name, "--accept-consumer-timeout", "--json"],
            env=env,
            check=True,
            capture_output=True,
        )
        added = subprocess.run(
            [*cli, "users", "add", "chaos", "--concurrent-runs", "none", "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        key = json.loads(added.stdout)["key"]
        server = Server(env, free_port(), root / "server.log")
        server.start()
        log(f"server on {server.url}")
        marker = uuid.uuid4().hex[:6]
        records = [
            {
                "task": f"{TASK} (chaos {marker} #{i})",
                "id": f"chaos-{marker}-{i}",
                "tries": 0,
                "statuses": [],
                "pks": [],
            }
            for i in range(args.submissions)
        ]
        restarts: list[float] = []
        outages: list[float] = []
        last_fault_end = time.monotonic()

        def outage(number: int, during=None) -> None:
            nonlocal last_fault_end
            seconds = rng.uniform(20, 60)
            log(f"broker outage {number}: {seconds:.0f} s (permissions on {name} cleared, its connections closed)")
            rabbitmqctl("clear_permissions", "-p", name, "guest")
            rabbitmqctl("close_all_connections", "--vhost", name, "--limit", "1000", f"mdagent chaos outage {number}")
            meanwhile = threading.Thread(target=during, daemon=True) if during is not None else None
            if meanwhile is not None:
                meanwhile.start()
            time.sleep(seconds)
            rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
            if meanwhile is not None:
                meanwhile.join()
            outages.append(seconds)
            last_fault_end = time.monotonic()
            log(f"broker outage {number} over")

        def one_submission(i: int) -> None:
            nonlocal last_fault_end
            record = records[i]
            worker = threading.Thread(
                target=submit, args=(server.url, key, record["task"], record["id"], record), daemon=True
            )
            worker.start()
            time.sleep(rng.uniform(0, 1.0))
            server.kill()
            restarts.append(server.start())
            last_fault_end = time.monotonic()
            worker.join()
            log(f"submission {i + 1}: pks {record['pks']} after {record['tries']} tries {record['statuses']}")

        for i in range(args.submissions):
            if i == 7:
                outage(1, during=lambda i=i: one_submission(i))
            elif i == 14:
                outage(2, during=lambda i=i: one_submission(i))
            else:
                one_submission(i)
            if i == 11:
                pids = daemon_pids(home, name)
                log(f"daemon SIGKILL: {len(pids)} processes")
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(1)
                started = subprocess.run(
                    [*cli, "daemon", "start"], env=profile_env, capture_output=True, text=True, timeout=300
                )
                log(f"daemon start: exit {started.returncode} {(started.stdout + started.stderr).strip()[-300:]}")
                last_fault_end = time.monotonic()
        outage(3)

        def census() -> list[dict]:
            done = subprocess.run(
                [sys.executable, "-c", CENSUS], env=profile_env, capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                raise SystemExit(f"reading the profile failed: {done.stderr[-2000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        ended_states = ("finished", "excepted", "killed")
        recovered_after = None
        while True:
            runs = census()
            if all(r["state"] in ended_states for r in runs):
                recovered_after = time.monotonic() - last_fault_end
                break
            if time.monotonic() - last_fault_end > args.wait:
                break
            time.sleep(5)
        by_task: dict[str, list[dict]] = {}
        for r in runs:
            by_task.setdefault(r["task"], []).append(r)
        mine = [by_task.get(rec["task"], []) for rec in records]
        lost = sum(1 for nodes in mine if not nodes)
        duplicated = sum(max(0, len(nodes) - 1) for nodes in mine)
        stuck = [r for nodes in mine for r in nodes if r["state"] not in ended_states]
        excepted = [r for nodes in mine for r in nodes if r["state"] == "excepted"]
        failed = [r for nodes in mine for r in nodes if r["state"] == "finished" and r["exit_status"] != 0]
        unanswered = sum(1 for rec in records if not rec["pks"])
        mismatched = sum(
            1
            for rec, nodes in zip(records, mine, strict=True)
            if rec["pks"] and set(rec["pks"]) - {n["pk"] for n in nodes}
        )
        print()
        print(
            f"seed {seed}: {args.submissions} submissions, {len(restarts)} server SIGKILLs (restart "
            f"max {max(restarts):.1f} s), broker outages of {', '.join(f'{s:.0f}' for s in outages)} s, "
            f"1 daemon SIGKILL; cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
        )
        print(f"runs lost:        {lost}")
        print(f"runs duplicated:  {duplicated}")
        print(f"runs stuck:       {len(stuck)} {[(r['pk'], r['state']) for r in stuck]}")
        print(f"runs excepted:    {len(excepted)} {[r['pk'] for r in excepted]}")
        print(f"runs failed:      {len(failed)} {[(r['pk'], r['exit_status']) for r in failed]} (ended, not passed)")
        print(f"never answered:   {unanswered} (no pk after {RETRY_FOR_S} s of retries)")
        print(f"answered a pk that is not the submission's run: {mismatched}")
        print(
            "time to recover:  "
            + (
                f"{recovered_after:.0f} s (end of the last fault to every run ended)"
                if recovered_after is not None
                else f"not within {args.wait:.0f} s"
            )
        )
        bad = lost or duplicated or stuck or excepted or unanswered or mismatched
        sys.exit(1 if bad else 0)
    finally:  # each step on its own: one that fails must not leave the vhost or the database behind
        if server is not None:
            server.stop()
        try:
            subprocess.run(
                [sys.executable, "-m", "mdagent_hpc.cli", "daemon", "stop"],
                capture_output=True,
                env=profile_env,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            log("`daemon stop` did not end in 120 s; SIGKILL to the daemon's processes")
        for pid in daemon_pids(home, name):  # left only if the stop failed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        model.stop()
        if vhost_made:
            subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60)
        import psycopg

        with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name.replace("-", "_")}" WITH (FORCE)')
        if os.environ.get("MDAGENT_CHAOS_KEEP"):
            print(f"kept {root} (server.log, the daemon's log under home/)")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
