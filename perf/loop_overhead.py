"""Orchestration overhead of one agent run that passes in one attempt (SQLite profile, local LAMMPS).

A FakeOpenAIServer answers with mdagent_hpc/examples/demo/good.lammps, so every run is: generate, preflight, LAMMPS
job (LammpsJobWorkChain around the CalcJob), evaluate. In a fresh MDAGENT_HOME (temporary; the first run creates
the AiiDA profile) it does one warm-up run per mode, excluded, then `--runs` measured runs of each, interleaved so
that machine load hits both alike:

- in-process: `workflows.launch.run_request(Request(...))`, as `mdagent run` and the Python API do, without
  Python start-up;
- CLI: `python -m mdagent_hpc.cli run TASK --json`, the whole command.

Per run: total wall time, LAMMPS's own time (the "Loop time" lines of the retrieved log.lammps), the endpoint's time
(the attempt's `usage.latency_s`), the LAMMPS job's start-up (wrapper + bubblewrap + lmp loading, from the files in
its run folder) and the orchestration overhead = total - LAMMPS - endpoint (the issue's measure, which counts the
job's start-up too). Then a per-step breakdown from the Attempt record (`seconds`, `nodes`) and the process nodes'
ctime/mtime. Targets: orchestration < 2 s in-process and < 4 s through the CLI. Timings are printed with their
ratios, never asserted.

A local runner has no broker; `run_here` polls every LOCAL_POLL_SECONDS for children it waits on.

    .venv/bin/python perf/loop_overhead.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from openai_server import FakeOpenAIServer  # noqa: E402

TASK = "Heat a small Cu crystal with EAM to 800 K in NVT"
GOOD = json.dumps(
    {
        "script": (REPO / "mdagent_hpc" / "examples" / "demo" / "good.lammps").read_text(),
        "files": [],
        "potentials": [],
        "notes": "",
    }
)
TARGETS = {"in-process": 2.0, "cli": 4.0}


def run_in_process() -> tuple[float, int]:
    """One agent run in this process, as `mdagent run` does it; (seconds, pk)."""
    from mdagent_hpc.models import LoopPolicy, Request
    from mdagent_hpc.workflows.launch import run_request

    start = time.monotonic()
    node = run_request(Request(task=TASK, loop=LoopPolicy(max_attempts=1)))
    return time.monotonic() - start, node.pk


def run_cli() -> tuple[float, int]:
    """One agent run through the command line; (seconds, pk)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "run", TASK, "--max-attempts", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"the CLI run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)["pk"]


def analyse(pk: int, total: float) -> dict:
    """Times of one finished agent run, from its Attempt record and its nodes."""
    from aiida import orm

    from mdagent_hpc.lammps.log import parse_log
    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.runs import get_run

    run = get_run(EVERYONE, pk)
    if run.verdict != "passed":
        sys.exit(f"agent run {pk} did not pass: {run.exit_status} {run.exit_message}")
    (attempt,) = run.attempts
    node = orm.load_node(pk)
    nodes = {step: orm.load_node(pk) for step, pk in attempt.nodes.items()}
    calc = nodes["run"].called[0]  # the CalcJob inside LammpsJobWorkChain
    log = parse_log(calc.outputs.retrieved.base.repository.get_object_content("log.lammps", mode="r"))
    lammps = sum(b.loop_time or 0.0 for b in log.blocks)
    endpoint = attempt.usage.latency_s or 0.0
    steps = {"setup": (nodes["generate"].ctime - node.ctime).total_seconds()}
    previous = None
    for step in ("generate", "preflight", "run", "evaluate"):
        if previous is not None:
            steps[f"gap {previous}>{step}"] = (nodes[step].ctime - nodes[previous].mtime).total_seconds()
        steps[step] = attempt.seconds[step]
        previous = step
    steps["decide+finalize"] = (node.mtime - nodes["evaluate"].mtime).total_seconds()
    workdir = Path(calc.get_remote_workdir())
    uploaded = datetime.fromtimestamp((workdir / "_aiidasubmit.sh").stat().st_mtime, tz=UTC)
    done = datetime.fromtimestamp((workdir / "log.lammps").stat().st_mtime, tz=UTC)
    seen = calc.get_scheduler_lastchecktime()
    job = (done - uploaded).total_seconds()
    steps["  run: base workchain until CalcJob"] = (calc.ctime - nodes["run"].ctime).total_seconds()
    steps["  run: prepare+upload"] = (uploaded - calc.ctime).total_seconds()
    steps["  run: job (wrapper+bwrap+lmp)"] = job
    steps["  run: until job seen done"] = (seen - done).total_seconds()
    steps["  run: retrieve+parse+seal"] = (calc.mtime - seen).total_seconds()
    steps["  run: CalcJob done > base done"] = (nodes["run"].mtime - calc.mtime).total_seconds()
    steps["workchain node"] = (node.mtime - node.ctime).total_seconds()
    overhead = total - lammps - endpoint
    return {
        "pk": pk,
        "total": total,
        "lammps": lammps,
        "endpoint": endpoint,
        "startup": job - lammps,
        "overhead": overhead,
        "engine": overhead - (job - lammps),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs per mode (after one warm-up)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mdagent-bench-home-") as home, FakeOpenAIServer() as server:
        os.environ["MDAGENT_HOME"] = home
        os.environ.pop("MDAGENT_AIIDA_PROFILE", None)
        os.environ.update(
            {"MDAGENT_LLM_BASE_URL": server.base_url, "MDAGENT_LLM_MODEL": "fake-model", "MDAGENT_LLM_MAX_RETRIES": "0"}
        )
        print(f"MDAGENT_HOME={home}; endpoint {server.base_url}", flush=True)

        server.add(GOOD)
        seconds, _ = run_cli()
        print(f"warm-up (CLI, creates the profile): {seconds:.2f} s", flush=True)
        from mdagent_hpc.execution.profile import LOCAL_POLL_SECONDS, ensure_profile

        ensure_profile()  # before any other aiida import, which would fix the config folder at ~/.aiida
        logging.getLogger("aiida").setLevel(logging.ERROR)  # no REPORT lines from the in-process runs
        print(f"local runner polls every {LOCAL_POLL_SECONDS} s", flush=True)
        server.add(GOOD)
        seconds, _ = run_in_process()
        print(f"warm-up (in-process, imports and caches): {seconds:.2f} s", flush=True)

        results: dict[str, list[dict]] = {"in-process": [], "cli": []}
        for i in range(args.runs):
            for mode, func in (("in-process", run_in_process), ("cli", run_cli)):
                server.add(GOOD)
                r = analyse(*reversed(func()))
                results[mode].append(r)
                print(
                    f"run {i + 1} {mode:10} pk {r['pk']:4}: total {r['total']:6.2f} s  LAMMPS {r['lammps']:5.2f} s"
                    f"  endpoint {r['endpoint']:5.3f} s  overhead {r['overhead']:5.2f} s",
                    flush=True,
                )
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (2 cores: above ~1 the numbers are inflated)")

    keys = ("total", "lammps", "endpoint", "startup", "overhead", "engine")
    med = {mode: {k: statistics.median(r[k] for r in rows) for k in keys} for mode, rows in results.items()}
    print("\nsummary (median over runs, seconds)")
    print(
        f"{'':12}{'total':>8}{'LAMMPS':>8}{'endpoint':>10}{'lmp start':>10}{'overhead':>10}{'engine':>8}"
        f"{'overhead/LAMMPS':>17}"
    )
    for mode, m in med.items():
        print(
            f"{mode:12}{m['total']:8.2f}{m['lammps']:8.2f}{m['endpoint']:10.3f}{m['startup']:10.2f}"
            f"{m['overhead']:10.2f}{m['engine']:8.2f}{m['overhead'] / m['lammps']:17.1f}"
        )
    print(
        "  overhead = total - LAMMPS - endpoint (includes the job's start-up: wrapper, bubblewrap, lmp loading);"
        " engine = overhead - that start-up"
    )
    print(
        f"CLI start-up and profile load (CLI total - in-process total): "
        f"{med['cli']['total'] - med['in-process']['total']:.2f} s; ratio CLI / in-process "
        f"{med['cli']['total'] / med['in-process']['total']:.2f}"
    )

    print("\nper step, in-process (median s, from the Attempt record and node ctime/mtime)")
    for key in results["in-process"][0]["steps"]:
        values = [r["steps"][key] for r in results["in-process"]]
        print(f"  {key:36}{statistics.median(values):7.3f}")
    for mode, target in TARGETS.items():
        overhead = med[mode]["overhead"]
        print(
            f"target {mode} orchestration < {target:.0f} s: {'MET' if overhead < target else 'NOT MET'} "
            f"({overhead:.2f} s, {overhead / target:.2f} of the target)"
        )


if __name__ == "__main__":
    main()
