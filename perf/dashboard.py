"""The dashboard at a group's scale: its pages served from 100k recorded runs in a PostgreSQL profile.

The runs are written as perf/query.py writes them (AgentWorkChain and sweep-point nodes with a `query` extra shaped
like a real run's, straight into AiiDA's node table with COPY). A real `mdagent dashboard` process serves that profile
and an empty one; each page is fetched over HTTP (one warm-up, then the median of `--repeat`), the whole server path:
the filter form's choices, the running work, the query, the template. The empty profile is the baseline, in the same
run. Both databases are dropped at the end.

    .venv/bin/python perf/dashboard.py [--runs 100000] [--others 4] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from query import PG, check_shape, fill, potential  # noqa: E402 (the runs perf/query.py writes)

PAGES = [
    ("runs list, newest 50", "/runs"),
    ("passed Cu-Ni eam/alloy runs", "/runs?elements=Cu,Ni&pair_style=eam/alloy&verdict=passed"),
    ("one potential file (md5)", "/runs?md5=POTENTIAL_MD5"),
    ("task regex, last 30 days", "/runs?task=re:melt.*Cu&since=30d"),
    ("final temperature range", "/runs?obs.temp_final=1200..&limit=20"),
    ("stop reason, model", "/runs?stop=stuck&model=qwen"),
    ("sweep points above 1200 K", "/runs?param.T=1200..&limit=100"),
    ("running work (JSON)", "/api/running"),
]


def serve(home: str, profile: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MDAGENT_HOME": home, "MDAGENT_AIIDA_PROFILE": profile}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdagent_hpc.cli", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the dashboard did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        time.sleep(0.2)


def time_pages(url: str, repeat: int, md5: str) -> list[float]:
    """Median ms of each page (status 200 checked)."""
    result = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for _, path in PAGES:
            path = path.replace("POTENTIAL_MD5", md5)
            assert client.get(path).status_code == 200, path
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, path
            result.append(statistics.median(times))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=4, help="other nodes per run in the table")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="mdagent-bench-dashboard-")
    os.environ["MDAGENT_HOME"] = home
    os.environ.pop("MDAGENT_AIIDA_PROFILE", None)
    from mdagent_hpc.execution.profile import ProfileError, configure_environment, ensure_postgres_profile

    configure_environment()
    check_shape()
    tag = uuid.uuid4().hex[:6]
    names = {"empty": f"bench-dashboard-empty-{tag}", "full": f"bench-dashboard-{tag}"}
    made = []
    try:
        for name in names.values():
            ensure_postgres_profile(name, broker=False)
            made.append(name.replace("-", "_"))
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    servers = []
    try:
        from aiida import load_profile, orm

        from mdagent_hpc.provenance.query import ensure_indexes

        load_profile(names["full"], allow_switch=True)
        print(f"writing {args.runs} recorded runs and {args.runs * args.others} other nodes ...", flush=True)
        seconds = fill(names["full"].replace("-", "_"), args.runs, args.others, orm.User.collection.get_default().pk)
        print(f"  {seconds:.1f} s", flush=True)
        ensure_indexes()  # what `mdagent runs index` makes
        _, md5 = potential(["Cu", "Ni"], "eam/alloy")
        timings = {}
        for key in ("empty", "full"):
            proc, url = serve(home, names[key])
            servers.append(proc)
            timings[key] = time_pages(url, args.repeat, md5)
        print(f"\n{'page':32} {'full ms':>8} {'empty ms':>9} {'ratio':>6}")
        for (label, _), full_ms, empty_ms in zip(PAGES, timings["full"], timings["empty"], strict=True):
            print(f"{label:32} {full_ms:8.1f} {empty_ms:9.1f} {full_ms / empty_ms:6.1f}")
        print(f"(median of {args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end)")
    finally:
        for proc in servers:  # stopped by their PIDs
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        import psycopg
        from aiida.manage import get_manager

        get_manager().unload_profile()
        with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
            for database in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
