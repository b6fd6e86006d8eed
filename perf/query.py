"""Provenance queries at a group's scale: ten typical queries on 100k recorded runs in a PostgreSQL profile.

How the runs are made: a real run is ~30 nodes and seconds of work, so 100k of them cannot be run. Instead this
writes, with PostgreSQL's COPY straight into AiiDA's node table, 100k AgentWorkChain nodes (node type, process
type, process state, exit status as AiiDA stores them) each with a `query` extra shaped exactly like the one a real
run records (same keys as `query.record.index_record`, checked below), drawn at random from a small world of
tasks, elements, potentials, sites, models, users and outcomes over the last year; 10% of them sweep points
(SweepPoint nodes with parameters, as `record_points` makes them). Next to them `--others` (default 4) plain Dict
nodes per run, so the table holds other nodes as a real profile does. The queries do not know this: they go
through the same `provenance.query.search` as `mdagent runs query`, on a profile made by `ensure_postgres_profile`,
with the indexes `mdagent runs index` makes (`provenance.query.INDEXES`).

Each query: one warm-up, then the median of `--repeat` (5) timed calls of `search(build_query(...))`, the whole
Python path (QueryBuilder, SQL, rows). The same queries on an empty profile are the baseline, in the same run.
Target: under 200 ms each at 100k. Both databases are dropped at the end (`--keep` keeps them).

    .venv/bin/python perf/query.py [--runs 100000] [--others 4] [--repeat 5] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}

# The ten queries: what people ask, as `mdagent runs query` options.
QUERIES = [
    ("newest 50 runs", {}),
    ("passed Cu-Ni runs with eam/alloy", {"elements": "Cu,Ni", "pair_style": "eam/alloy", "verdict": "passed"}),
    ("runs with one potential file (md5)", {"md5": "POTENTIAL_MD5"}),
    ("best 20 by reward", {"reward": "0.8..", "sort": "-reward", "limit": 20}),
    ("'melting' in the task, last 30 days", {"task": "melting", "since": "30d"}),
    (
        "sweep points T >= 1200 that lost atoms",
        {"kind": "point", "params": {"T": "1200.."}, "finding": "lost_atoms", "since": "30d"},
    ),
    ("metal runs ending at 1000-1500 K", {"obs": {"temp_final": "1000..1500"}, "units": "metal"}),
    ("stuck runs of one user on one site", {"stop": "stuck", "site": "hpc-a", "user": "ana@lab.org"}),
    ("task regex Cu.?Ni", {"task": "re:Cu.?Ni", "limit": 50}),
    ("llama runs with 3+ attempts, longest", {"model": "llama", "attempts": "3..", "sort": "-seconds"}),
]
TARGET_MS = 200

TASKS = [
    ("Melting point of {a}: heat from 1000 to 1600 K with {style}", "melting"),
    ("Thermal expansion of {a} with {style} from 300 to 900 K at zero pressure", "expansion"),
    ("Equilibrate a {a} nanoparticle at {t} K in NVT", "nanoparticle"),
    ("Vacancy formation energy in {a} with {style}", "vacancy"),
    ("Anneal a {a} grain boundary at {t} K and report the energy", "anneal"),
]
ALLOYS = [["Cu"], ["Ni"], ["Al"], ["Fe"], ["Cu", "Ni"], ["Al", "Cu"], ["Fe", "Cr"], ["Si"], ["Ar"]]
STYLES = {"Si": "tersoff", "Ar": "lj/cut"}
SITES = ["local", "hpc-a", "hpc-b", "cloud"]
MODELS = ["llama-3.1-70b", "qwen2.5-coder-32b", "gpt-4o", "replay"]
USERS = ["ana@lab.org", "ben@lab.org", "chen@lab.org", "dee@lab.org", "eli@lab.org"]
STOPS = [
    ("passed", 0, 0.62),
    ("max_attempts", 320, 0.2),
    ("stuck", 330, 0.1),
    ("no_valid_script", 310, 0.05),
    ("llm_unavailable", 300, 0.03),
]
FINDINGS = ["lost_atoms", "energy_drift", "target_temperature", "completion", "nan"]


def potential(elements: list[str], style: str) -> tuple[str, str]:
    name = "".join(elements) + {"eam/alloy": ".eam.alloy", "eam": "_u3.eam", "tersoff": ".tersoff", "lj/cut": ""}.get(
        style, ".pot"
    )
    return name, uuid.uuid5(uuid.NAMESPACE_URL, name).hex


def make_record(rng: random.Random, point: bool) -> tuple[dict, int]:
    """A query record as a run (or sweep point) would have recorded it, and its exit status."""
    elements = rng.choice(ALLOYS)
    style = STYLES.get(elements[0], "eam/alloy" if len(elements) > 1 else rng.choice(["eam", "eam/alloy"]))
    template, _ = rng.choice(TASKS)
    t = rng.choice(range(300, 2001, 100))
    stop, status, _ = rng.choices(STOPS, weights=[w for *_, w in STOPS])[0]
    passed = stop == "passed"
    grade = "pass" if passed and rng.random() < 0.8 else "warn" if passed else rng.choice(["fail", None])
    reward = round(rng.uniform(0.6, 1.0) if passed else rng.uniform(0, 0.5), 3) if grade else None
    name, md5 = potential(elements, style)
    obs = (
        {}
        if grade is None
        else {
            "temp_final": round(t * rng.uniform(0.95, 1.05), 2),
            "temp_mean": round(t * rng.uniform(0.98, 1.02), 2),
            "temp_std": round(rng.uniform(5, 40), 2),
            "press_final": round(rng.uniform(-500, 500), 1),
            "press_mean": round(rng.uniform(-200, 200), 1),
            "pe_final": round(rng.uniform(-4000, -1000), 3),
            "toteng_final": round(rng.uniform(-3900, -900), 3),
            "atoms": float(rng.choice([256, 500, 4000, 32000])),
            "production_steps": float(rng.choice([2000, 10000, 50000])),
        }
    )
    record = {
        "version": 1,
        "kind": "point" if point else "run",
        "task": template.format(a="-".join(elements), style=style, t=t),
        "elements": sorted(elements),
        "pair_styles": [style],
        "potentials": [name] if style != "lj/cut" else [],
        "md5": [md5] if style != "lj/cut" else [],
        "units": "lj" if style == "lj/cut" else "metal",
        "ensembles": [rng.choice(["nvt", "npt", "nve", "langevin"])],
        "site": rng.choice(SITES),
        "model": rng.choice(MODELS),
        "user": rng.choice(USERS),
        "verdict": "passed" if passed else "failed",
        "grade": grade,
        "reward": reward,
        "attempts": 1 if point else rng.randint(1, 5),
        "stop": stop,
        "faults": ["walltime"] if rng.random() < 0.03 else [],
        "findings": [] if passed else rng.sample(FINDINGS, rng.randint(0, 2)),
        "seconds": round(rng.uniform(5, 7200), 1),
        "sweep": None,
        "params": {},
        "obs": obs,
    }
    if point:
        record.update(
            sweep={"pk": rng.randint(1, 500), "label": None}, params={"T": t}, point=f"T_{t}", template=1, attempts=None
        )
        status = 0
    return {key: value for key, value in record.items() if value is not None}, status  # as index_record leaves them


def check_shape() -> None:
    """The synthetic records have the keys a real run records (query.record.index_record, FIELDS)."""
    from mdagent_hpc.models import Run
    from mdagent_hpc.provenance.record import FIELDS, index_record

    real = index_record(
        Run(pk=1, uuid="u", task="t", ctime="2026-01-01T00:00:00"), [], user=None, stop="passed", elements=[]
    )
    made = [make_record(random.Random(0), point=point)[0] for point in (False, True)]
    assert all(set(m) <= set(FIELDS) for m in [real, *made]) and set(real) <= set(made[0]), made


def fill(database: str, runs: int, others: int, user_id: int) -> float:
    """COPY `runs` run nodes (+ `others` Dict nodes each) into the node table; returns seconds."""
    import psycopg

    from mdagent_hpc.provenance import POINT_NODE_TYPE

    rng = random.Random(12)
    now = datetime.now(tz=UTC)
    start = time.monotonic()
    with psycopg.connect(**PG, dbname=database) as conn, conn.cursor() as cur:
        columns = (
            "uuid, node_type, process_type, label, description, ctime, mtime, attributes, extras, "
            "repository_metadata, user_id"
        )
        with cur.copy(f"COPY db_dbnode ({columns}) FROM STDIN") as copy:
            for i in range(runs):
                point = i % 10 == 0
                record, status = make_record(rng, point)
                ctime = now - timedelta(seconds=rng.uniform(0, 365 * 86400))
                mtime = ctime + timedelta(seconds=record["seconds"])
                if point:  # a SweepPoint: a Dict of the point's result, no process
                    kind = (POINT_NODE_TYPE, None)
                    attributes = {"id": record["point"], "vars": record["params"], "ok": record["verdict"] == "passed"}
                else:
                    kind = ("process.workflow.workchain.WorkChainNode.", "aiida.workflows:mdagent.agent")
                    attributes = {
                        "process_state": "finished",
                        "exit_status": status,
                        "sealed": True,
                        "process_label": "AgentWorkChain",
                    }
                extras = {
                    "query": record,
                    "task": record["task"],
                    "site": record["site"],
                    "verdict": record["verdict"],
                    "attempts": record.get("attempts"),
                }
                copy.write_row(
                    (
                        uuid.uuid4(),
                        kind[0],
                        kind[1],
                        "",
                        "",
                        ctime,
                        mtime,
                        json.dumps(attributes),
                        json.dumps(extras),
                        "{}",
                        user_id,
                    )
                )
                for _ in range(others):
                    payload = {"grade": record.get("grade"), "reward": record.get("reward"), "notes": "x" * 200}
                    copy.write_row(
                        (
                            uuid.uuid4(),
                            "data.core.dict.Dict.",
                            None,
                            "",
                            "",
                            ctime,
                            ctime,
                            json.dumps(payload),
                            "{}",
                            "{}",
                            user_id,
                        )
                    )
        conn.commit()
        cur.execute("ANALYZE db_dbnode")
    return time.monotonic() - start


def time_queries(repeat: int, md5: str) -> list[tuple[float, int]]:
    """(median ms, rows) of each query, on the profile loaded now."""
    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.filters import build_query
    from mdagent_hpc.provenance.query import search

    results = []
    for _, options in QUERIES:
        options = {k: (md5 if v == "POTENTIAL_MD5" else v) for k, v in options.items()}
        query = build_query(**options)  # parsing is part of the cost: built each time below too
        rows = len(search(query, EVERYONE))
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            search(build_query(**options), EVERYONE)
            times.append((time.perf_counter() - start) * 1000)
        results.append((statistics.median(times), rows))
    from mdagent_hpc.provenance.query import count_unindexed  # what `runs query` asks too, for its hint

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        rows = count_unindexed()
        times.append((time.perf_counter() - start) * 1000)
    results.append((statistics.median(times), rows))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=4, help="other nodes per run in the table")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the two databases")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="mdagent-bench-query-")
    os.environ["MDAGENT_HOME"] = home
    os.environ.pop("MDAGENT_AIIDA_PROFILE", None)
    from mdagent_hpc.execution.profile import ProfileError, configure_environment, ensure_postgres_profile

    configure_environment()
    check_shape()
    tag = uuid.uuid4().hex[:6]
    names = {"empty": f"bench-query-empty-{tag}", "full": f"bench-query-{tag}"}
    made = []
    try:
        for name in names.values():
            ensure_postgres_profile(name, broker=False)
            made.append(name.replace("-", "_"))
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        from aiida import load_profile, orm

        from mdagent_hpc.provenance.query import ensure_indexes

        timings = {}
        for key in ("empty", "full"):
            load_profile(names[key], allow_switch=True)
            if key == "full":
                user_id = orm.User.collection.get_default().pk
                print(f"writing {args.runs} recorded runs and {args.runs * args.others} other nodes ...", flush=True)
                seconds = fill(names[key].replace("-", "_"), args.runs, args.others, user_id)
                print(f"  {seconds:.1f} s ({args.runs * (1 + args.others) / seconds:,.0f} nodes/s, COPY)")
            start = time.monotonic()
            ensure_indexes()
            if key == "full":
                print(f"  indexes made in {time.monotonic() - start:.1f} s")
            _, md5 = potential(["Cu", "Ni"], "eam/alloy")
            timings[key] = time_queries(args.repeat, md5)
        print(f"\n{'query':42} {'rows':>5} {'full ms':>8} {'empty ms':>9} {'ratio':>6}  target <{TARGET_MS} ms")
        labels = [*QUERIES, ("(runs without fields: the CLI's hint)", {})]
        for (label, _), (full_ms, rows), (empty_ms, _) in zip(labels, timings["full"], timings["empty"], strict=True):
            verdict = "ok" if full_ms < TARGET_MS else "SLOW"
            print(f"{label:42} {rows:5d} {full_ms:8.1f} {empty_ms:9.1f} {full_ms / empty_ms:6.1f}  {verdict}")
        print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end)")
        slow = sum(1 for ms, _ in timings["full"][: len(QUERIES)] if ms >= TARGET_MS)
        print(f"\n{len(QUERIES) - slow} of {len(QUERIES)} queries under {TARGET_MS} ms (median of {args.repeat})")
    finally:
        if args.keep:
            print(f"kept databases {', '.join(made)} (profiles in {home})")
        else:
            import psycopg
            from aiida.manage import get_manager

            get_manager().unload_profile()
            with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
                for database in made:
                    conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
