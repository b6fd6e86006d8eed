"""The daemon sized to the work: calcjob sweep throughput through the AiiDA daemon with 1, 2 and 4 workers.

Makes its own AiiDA profile on PostgreSQL (127.0.0.1:5432, user postgres) and RabbitMQ (127.0.0.1:5672,
guest/guest, a vhost of its own) in a temporary MDAGENT_HOME (also AIIDA_PATH), and removes the database, the vhost
and the folder at the end, also after a failure or Ctrl-C. LAMMPS runs on this machine: the `local` site (AiiDA's
core.direct scheduler, local transport, LAMMPS under bubblewrap), its `sweep.max_concurrent_jobs` set to the CPU
count (or --concurrent), on the calcjob engine (one LammpsJobWorkChain per point).

For each N of --workers (default 1 2 4): `mdagent daemon start --workers N`, then `mdagent sweep --spec FILE --daemon
--yes --json` of the recorded LJ sweep (workflows/sweeps/lj-melt-temperature.yaml: 500 atoms, 3000 steps) over
--points temperatures (default 40; each N's spec differs in its description, so nothing is reused from the sweep
before). A daemon's sweep does not replay a spec's answers, so the recorded answer is served by a replay model server
in this process (no LLM). It waits for the sweep's node to end, checks with `mdagent sweep status PK --once --json`
that it passed with every point, and in its provenance that each point was recorded exactly once and passed, then
`mdagent daemon stop`.

Printed per N: the wall time as the client sees it (before the submit command to the node's end, polled each
second) and the sweep node's own (ctime -> mtime), points per minute (client), the ideal (the sum of every point's
LAMMPS seconds from its record, the validating point's included, divided by the slots), the ratio client / ideal,
and the throughput relative to N=1 (the first N: the baseline of the same run); the load average before and after.
Timings are printed, never asserted.

    .venv/bin/python perf/daemon_workers.py [--points 40] [--workers 1 2 4] [--concurrent CPUS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "workflows/sweeps/lj-melt-temperature.yaml"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


class Failed(Exception):
    """An expected failure: its message is the one sentence printed."""


def mdagent(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise Failed(f"`mdagent {' '.join(args)}` did not end within {timeout:.0f} s") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise Failed(f"`mdagent {' '.join(args)}` failed: {said}")
    return done


def rabbitmqctl(*args: str) -> None:
    try:
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise Failed(
            "rabbitmqctl is not on PATH: this benchmark needs a local RabbitMQ it can add a vhost to"
        ) from None
    except subprocess.TimeoutExpired:
        raise Failed(
            "RabbitMQ does not answer `rabbitmqctl` within 60 s: start it (`service rabbitmq-server start`)"
        ) from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[0]
        raise Failed(f"RabbitMQ refused `rabbitmqctl {' '.join(args)}` ({said}): is it running?")


def site_yaml(concurrent: int) -> str:
    """The built-in `local` site, with `concurrent` jobs of one sweep at once."""
    from mdagent_hpc.execution.computers import local_site

    data = local_site().model_dump(mode="json", exclude_unset=True)
    data["sweep"] = {"max_points": 100000, "max_core_hours": 1000000, "max_concurrent_jobs": concurrent}
    return yaml.safe_dump(data, sort_keys=False)


def spec_file(folder: Path, points: int, workers: int) -> Path:
    """The recorded LJ sweep over `points` temperatures, without its answers (the replay server gives them)."""
    data = yaml.safe_load(RECORDED.read_text())
    data.pop("answers")
    data |= {"site": "local", "engine": "calcjob", "description": f"daemon_workers benchmark, {workers} worker(s)"}
    data["parameters"] = [{"name": "T", "values": [round(0.6 + 0.002 * i, 4) for i in range(points)]}]
    path = folder / f"sweep-{workers}w.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wait_sealed(pk: int, timeout: float) -> None:
    """Until the sweep's node is sealed (ended: its mtime is final), asking the database each second."""
    from aiida import orm

    deadline = time.monotonic() + timeout
    while True:
        qb = orm.QueryBuilder().append(orm.WorkflowNode, filters={"id": pk}, project=["attributes.sealed"])
        if qb.first(flat=True):
            return
        if time.monotonic() > deadline:
            raise Failed(f"sweep {pk} did not end within {timeout:.0f} s (`mdagent sweep status {pk}` shows where)")
        time.sleep(1)


def records(pk: int, points: int) -> list[float]:
    """Each point's LAMMPS seconds; Failed unless every point was recorded exactly once and passed."""
    from aiida import orm

    from mdagent_hpc.provenance.sweeps import recorded_points

    found: dict[str, list] = {}
    for record in recorded_points(orm.load_node(pk)):
        found.setdefault(record["id"], []).append(record)
    twice = sorted(pid for pid, results in found.items() if len(results) > 1)
    failed = sorted(pid for pid, results in found.items() if not all(r["ok"] for r in results))
    if len(found) != points or twice or failed:
        raise Failed(
            f"sweep {pk}: {len(found)} of {points} points recorded, recorded more than once: {twice or 'none'}, "
            f"failed: {failed or 'none'}"
        )
    return [results[0]["seconds"] or 0.0 for results in found.values()]


def one(home: Path, points: int, workers: int, slots: int, wait: float) -> dict:
    mdagent("daemon", "start", "--workers", str(workers))
    try:
        load = os.getloadavg()[0]
        path = spec_file(home, points, workers)
        start = time.monotonic()
        pk = json.loads(mdagent("sweep", "--spec", str(path), "--daemon", "--yes", "--json").stdout)["pk"]
        wait_sealed(pk, wait)
        client = time.monotonic() - start
        status = json.loads(mdagent("sweep", "status", str(pk), "--once", "--json").stdout)
        if status["engine"] != "calcjob":
            raise Failed(f"sweep {pk} ran on the {status['engine']} engine, not calcjob")
        if status["verdict"] != "passed" or status["points_done"] != points:
            raise Failed(
                f"sweep {pk} with {workers} worker(s) ended {status['verdict']} ({status['state']}): "
                f"{status['points_done']} of {points} points passed, {status['points_failed']} failed; "
                f"{status['exit_message'] or 'no exit message'}"
            )
        lammps = records(pk, points)
        from aiida import orm

        node = orm.load_node(pk)
        span = (node.mtime - node.ctime).total_seconds()
    finally:
        mdagent("daemon", "stop")
    ideal = sum(lammps) / slots
    return {"n": workers, "pk": pk, "client": client, "node": span, "lammps": sum(lammps), "ideal": ideal, "load": load}


def report(row: dict, points: int, slots: int, base: dict) -> None:
    rate = points / row["client"] * 60
    print(
        f"{row['n']} worker(s): sweep {row['pk']}, {points} points: client {row['client']:.1f} s (sweep node "
        f"{row['node']:.1f} s), {rate:.1f} points/min; ideal {row['lammps']:.1f} LAMMPS-s / {slots} slots = "
        f"{row['ideal']:.1f} s, {row['client'] / row['ideal']:.2f} x ideal; throughput "
        f"{base['client'] / row['client']:.2f} x {base['n']} worker(s)'s; load average at its start {row['load']:.1f}",
        flush=True,
    )


def cleanup(name: str, home: Path, profile_made: bool) -> None:
    """Remove what this run made: the database, the vhost, the folder (each tried; a failure is said)."""
    if profile_made:
        import psycopg
        from aiida.manage import get_manager

        get_manager().unload_profile()  # closes this process's connections to the database
        try:
            with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name.replace("-", "_")}" WITH (FORCE)')
        except psycopg.OperationalError as exc:
            print(f"could not drop database {name.replace('-', '_')}: {str(exc).strip()}", file=sys.stderr)
    try:
        rabbitmqctl("delete_vhost", name)
    except Failed as exc:
        print(f"could not delete vhost {name}: {exc}", file=sys.stderr)
    shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=40, help="temperature points per sweep (40)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="daemon workers, in turn (1 2 4)")
    parser.add_argument("--concurrent", type=int, default=os.cpu_count() or 1, help="jobs at once (the CPU count)")
    parser.add_argument("--wait", type=float, default=120, help="seconds per point to wait for a sweep (120)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Creating AiiDA configuration folder")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM); what this run made was removed"))

    from mdagent_hpc.llm.replay import FakeOpenAIServer

    home = Path(tempfile.mkdtemp(prefix="mdagent-daemon-workers-"))
    name = f"mdagent-bench-daemon-{uuid.uuid4().hex[:8]}"
    # The recorded answer, once per sweep when it passes; spares for the attempts and corrections the spec allows.
    answers = yaml.safe_load(RECORDED.read_text())["answers"]
    model = FakeOpenAIServer(answers * 3 * len(args.workers), model="fake-model").start()
    os.environ |= {
        "MDAGENT_LLM_BASE_URL": model.base_url,
        "MDAGENT_LLM_MODEL": "fake-model",
        "MDAGENT_LLM_API_KEY": "x",
        "MDAGENT_LLM_MAX_RETRIES": "0",
        "MDAGENT_HOME": str(home),
        "AIIDA_PATH": str(home),
        "MDAGENT_AIIDA_PROFILE": name,
        "AIIDA_BROKER_VIRTUAL_HOST": name,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",  # the daemon runs `verdi`
    }
    for key in ("MDAGENT_SERVER", "MDAGENT_API_KEY", "MDAGENT_USERS_DB"):
        os.environ.pop(key, None)
    profile_made = False
    try:
        print(f"setting up profile {name} (PostgreSQL + RabbitMQ) in {home} ...", file=sys.stderr, flush=True)
        rabbitmqctl("add_vhost", name)
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        from mdagent_hpc.execution.profile import ProfileError, ensure_postgres_profile, ensure_profile
        from mdagent_hpc.execution.registry import add_site

        try:
            ensure_postgres_profile(name, broker=True)
            profile_made = True  # its database is there to drop
            ensure_profile()  # loads it here (the records are read in this process) and makes `lammps@local`
        except ProfileError as exc:
            raise Failed(str(exc)) from None
        (home / "local.yaml").write_text(site_yaml(args.concurrent))
        add_site(home / "local.yaml")
        print(
            f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.points} points per "
            f"sweep on the local site, {args.concurrent} jobs at once, calcjob engine",
            flush=True,
        )
        base = None
        for workers in args.workers:
            row = one(home, args.points, workers, args.concurrent, args.wait * args.points)
            base = base or row
            report(row, args.points, args.concurrent, base)
        print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)
    except Failed as exc:
        sys.exit(str(exc))
    except KeyboardInterrupt:
        sys.exit("interrupted; what this run made was removed")
    finally:
        cleanup(name, home, profile_made)
        model.stop()


if __name__ == "__main__":
    main()
