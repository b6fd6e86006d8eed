"""Whole-sweep throughput: `mdagent sweep --spec FILE --yes --json` timed end to end against the ideal.

Starts the test cluster (schedulers/slurm-local/start.sh; stopped at the end only if this run started it) and, in a
temporary MDAGENT_HOME, runs the recorded LJ sweep (workflows/sweeps/lj-melt-temperature.yaml: 500 atoms, 3000
steps) over N temperatures on the Parsl engine (pilot blocks on the test Slurm node, one worker per core), for each
N of --points (default 100 and 1000). The time is the whole command as a user runs it: the CLI's start, the plan,
the validating agent run (its answer replayed), every point, their records in provenance, the table, the plot and
their export.

The ideal is the sum of LAMMPS's own time over every point, measured in the same run (each point's `seconds` in the
sweep folder's result.json; the validating point's LAMMPS wall time from its record), divided by the parallel slots
(the node's cores that Slurm offers). The ratio is whole / ideal (targets: <= 1.3 at 100 points, <= 1.15 at 1,000).
A breakdown from the provenance says where the rest went. Timings are printed, never asserted.

    .venv/bin/python perf/sweep_throughput.py [--points 100 1000]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGETS = {100: 1.3, 1000: 1.15}
LMP = str(Path(sys.executable).parent / "mdagent-lmp")


def site_yaml(cores: int) -> str:
    return (
        "name: bench-sweep\nscheduler: slurm\ntransport: {type: local, use_login_shell: false, safe_interval: 0}\n"
        "queue: debug\npoll_interval: 1\nresources: {memory_mb: 1000, walltime: 7200}\n"
        f"lammps: {{binary: {LMP}}}\nsweep: {{max_points: 10000, max_core_hours: 100000}}\n"
        f"pilot: {{cores_per_node: {cores}, address: 127.0.0.1}}\n"
    )


def spec_file(folder: Path, n: int) -> Path:
    data = yaml.safe_load((REPO / "workflows/sweeps/lj-melt-temperature.yaml").read_text())
    data |= {"site": "bench-sweep", "engine": "parsl", "point_seconds": 2}
    data["parameters"] = [{"name": "T", "values": [round(0.6 + 0.002 * i, 4) for i in range(n)]}]
    path = folder / f"sweep-{n}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def span(nodes) -> float:
    nodes = list(nodes)
    return (max(n.mtime for n in nodes) - min(n.ctime for n in nodes)).total_seconds() if nodes else 0.0


def breakdown(pk: int) -> dict:
    """Where the sweep's time went, from its provenance, and the LAMMPS seconds of its points."""
    from aiida import orm
    from aiida.common.links import LinkType

    from mdagent_hpc.provenance.sweeps import recorded_points

    node = orm.load_node(pk)
    links = node.base.links.get_outgoing(link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC)).all()
    by = {}
    for link in links:
        by.setdefault(link.link_label.split("_")[0], []).append(link.node)
    folder = Path(node.inputs.sweep_folder.value)
    lammps = [json.loads(p.read_text())["seconds"] for p in folder.glob("points/*/result.json")]
    ran = {p.parent.name for p in folder.glob("points/*/result.json")}
    records = recorded_points(node)
    lammps += [r["seconds"] or 0 for r in records if r["id"] not in ran]  # the validating point: its agent's run
    # The records' time as the sweep spends it: from each pilot's end to what the sweep starts next (the next pilot,
    # or the table), so the query fields and the checkpoint each record step writes count too.
    pilots = sorted(by.get("pilot", []), key=lambda n: n.ctime)
    starts = [n.ctime for n in pilots[1:]] + [min((n.ctime for n in by.get("results", [])), default=node.mtime)]
    return {
        "sweep": (node.mtime - node.ctime).total_seconds(),
        "validate": span(by.get("validate", [])),
        "pilots": [round((p.mtime - p.ctime).total_seconds(), 1) for p in pilots],
        "records": sum((start - p.mtime).total_seconds() for p, start in zip(pilots, starts, strict=True)),
        "records_calls": len(by.get("records", [])),
        "records_n": len(records),
        "table": span(by.get("results", [])),
        "lammps_seconds": lammps,
    }


def one(home: Path, n: int, cores: int) -> None:
    path = spec_file(home, n)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "sweep", "--spec", str(path), "--yes", "--json"],
        capture_output=True,
        text=True,
    )
    whole = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"the {n}-point sweep failed: {result.stderr[-2000:]}")
    sweep = json.loads(result.stdout)
    if sweep["verdict"] != "passed" or len(sweep["rows"]) != n or not sweep["files"].get("png"):
        sys.exit(f"the {n}-point sweep did not tabulate every point: {sweep['verdict']} {len(sweep['rows'])}")
    parts = breakdown(sweep["pk"])
    busy = sum(parts["lammps_seconds"])
    ideal = busy / cores
    ratio = whole / ideal
    target = TARGETS.get(n)
    verdict = f" (target <= {target}: {'met' if ratio <= target else 'MISSED'})" if target else ""
    print(
        f"{n} points: whole `mdagent sweep --spec` {whole:.1f} s; ideal {busy:.1f} LAMMPS-s / {cores} slots = "
        f"{ideal:.1f} s; {ratio:.2f} x ideal{verdict}",
        flush=True,
    )
    print(
        f"    in the sweep node {parts['sweep']:.1f} s (CLI start, plan, profile outside it: "
        f"{whole - parts['sweep']:.1f} s): validation {parts['validate']:.1f} s, pilot jobs {parts['pilots']} s, "
        f"{parts['records_n']} records in {parts['records_calls']} calls {parts['records']:.1f} s, "
        f"table and plot {parts['table']:.1f} s; "
        f"LLM calls {sweep['llm_calls']}",
        flush=True,
    )


def running(pidfile: str) -> bool:
    try:
        os.kill(int(Path(pidfile).read_text().split()[0]), 0)
        return True
    except (OSError, ValueError, IndexError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    slurm_before = any(running(p) for p in ("/run/slurmdbd.pid", "/run/slurmctld.pid", "/run/slurmd.pid"))
    munge_before = running("/run/munge/munged.pid")
    print("starting the test cluster ...", file=sys.stderr)
    subprocess.run(["bash", str(REPO / "schedulers/slurm-local/start.sh")], check=True, stdout=subprocess.DEVNULL)
    home = Path(tempfile.mkdtemp(prefix="mdagent-bench-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)  # its profile, sweep folders and jobs' work folders
    os.environ["MDAGENT_HOME"] = str(home)
    try:
        from mdagent_hpc.execution.profile import configure_environment, ensure_profile

        configure_environment()
        ensure_profile()
        from mdagent_hpc.execution.registry import add_site

        cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()
        cores = int(cpus[0]) if cpus else os.cpu_count() or 1
        (home / "bench-sweep.yaml").write_text(site_yaml(cores))
        add_site(home / "bench-sweep.yaml")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        for n in args.points:
            one(home, n, cores)
        print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if not slurm_before:  # what tests/services.py does: stop only what this run started, by its PIDs
            stop = ["bash", str(REPO / "schedulers/slurm-local/stop.sh"), "--quiet"]
            subprocess.run(stop + (["--slurm-only"] if munge_before else []), check=False)


if __name__ == "__main__":
    main()
