"""Sweep throughput on the single-node test Slurm: Parsl pilot jobs against one CalcJob per point.

Starts the test cluster (schedulers/slurm-local/start.sh; stopped at the end only if this run started it), then,
for N points of a ~1 s LAMMPS run (Lennard-Jones, 864 atoms, 1000 steps, the swept value the variable T):

- t_point: the median of 3 rounds of `cores` runs of one point at once (the sandboxed `mdagent-lmp`) here,
  before and after (a); the faster gives the ideal;
- ideal: N x t_point / cores (the node's CPUs that Slurm offers);
- (a) pilot: PilotCalculation (the Parsl driver as a job on the login host, HTEX blocks on Slurm), from the call
  to its results in provenance;
- (b) calcjob: one LammpsJobWorkChain per point through the daemon, at most sweep.max_concurrent_jobs in the
  queue at once, from the first submission to the last result in provenance.

Prints each time and its ratio to the ideal (target: (a) <= 1.25 x ideal). Then, unless --no-llm, runs the
recorded sweep workflows/sweeps/lj-melt-temperature.yaml through SweepWorkChain (Parsl engine) with 10 and with
--points points and prints the LLM requests each made (GenerateScript calls; target: the same). Works in a
temporary MDAGENT_HOME. Timings are printed, never asserted.

    .venv/bin/python bench/sweep_throughput.py [--points 100] [--skip-pilot] [--skip-calcjob] [--no-llm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.25
from mdagent_hpc.lammps.templates import lj_script  # noqa: E402

TEMPLATE = lj_script(6, 1000).replace("velocity all create 1.0", "velocity all create ${T}")
LMP = str(Path(sys.executable).parent / "mdagent-lmp")


def site_yaml(cores: int, max_concurrent: int) -> str:
    return (
        f"name: bench-pilot\nscheduler: slurm\ntransport: {{type: local, use_login_shell: false, "
        f"safe_interval: 0}}\nqueue: debug\npoll_interval: 1\nresources: {{memory_mb: 1000, walltime: 3600}}\n"
        f"lammps: {{binary: {LMP}}}\nsweep: {{max_concurrent_jobs: {max_concurrent}}}\n"
        f"pilot: {{cores_per_node: {cores}, address: 127.0.0.1}}\n"
    )


def points(n: int) -> list[dict]:
    return [{"id": f"p{i:04d}", "vars": {"T": round(0.5 + 1.5 * i / max(n - 1, 1), 4)}} for i in range(n)]


def point_seconds(folder: Path, cores: int) -> float:
    """Median wall time of 3 rounds of `cores` runs of one point at once (the load a full block puts on a node)."""
    folder.mkdir(exist_ok=True)
    (folder / "in.lammps").write_text(TEMPLATE)
    command = [LMP, "-in", "in.lammps", "-log", "/dev/null", "-nocite", "-var", "T", "1.0"]
    times = []
    for _ in range(3):
        start = time.monotonic()
        runs = [subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL) for _ in range(cores)]
        if any(run.wait() != 0 for run in runs):
            sys.exit(f"{LMP} failed on the bench's point in {folder}")
        times.append(time.monotonic() - start)
    return statistics.median(times)


def pilot(site_name: str, n: int, folder: Path) -> float:
    from aiida import orm

    from mdagent_hpc.execution.profile import run_here
    from mdagent_hpc.workflows.pilot_calc import PilotCalculation

    start = time.monotonic()
    _, node = run_here(
        PilotCalculation,
        template=orm.SinglefileData.from_string(TEMPLATE, filename="in.lj"),
        points=orm.Dict({"points": points(n)}),
        site=orm.Str(site_name),
        sweep_folder=orm.Str(str(folder)),
    )
    seconds = time.monotonic() - start
    if not node.is_finished_ok:
        sys.exit(f"the PilotCalculation failed: {node.exit_status} {node.exit_message}")
    return seconds


def inside_blocks(folder: Path) -> tuple[float, float]:
    """(seconds from the first point's start to the last point's end, the points' LAMMPS seconds summed)."""
    import json

    results = [json.loads(p.read_text()) for p in folder.glob("points/*/result.json")]
    starts = [float(p.read_text().split()[0]) for p in folder.glob("points/*/runs.log")]
    return max(r["ended"] for r in results) - min(starts), sum(r["seconds"] for r in results)


def calcjobs(site, n: int, progress) -> float:
    from aiida import orm
    from aiida.engine import submit

    from mdagent_hpc.execution.computers import ensure_site
    from mdagent_hpc.execution.site import aiida_calcjob_options
    from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain

    code, options = ensure_site(site).code, aiida_calcjob_options(site)
    script = orm.SinglefileData.from_string(TEMPLATE, filename="in.lammps").store()
    todo, running, done = list(points(n)), [], []
    start = time.monotonic()
    while todo or running:
        while todo and len(running) < site.sweep.max_concurrent_jobs:
            point = todo.pop(0)
            running.append(
                submit(
                    LammpsJobWorkChain,
                    lammps={
                        "code": code,
                        "script": script,
                        "variables": orm.Dict(point["vars"]),
                        "metadata": {"options": options},
                    },
                    on_failure=orm.Dict(site.on_failure.model_dump()),
                    site=orm.Str(site.name),
                )
            )
        time.sleep(0.5)
        for node in [node for node in running if node.is_terminated]:
            running.remove(node)
            done.append(node)
            if not node.is_finished_ok:
                sys.exit(f"point job {node.pk} failed: {node.exit_status} {node.exit_message}")
            progress(len(done))
    return time.monotonic() - start


def llm_requests(site_name: str, n: int) -> tuple[int, int]:
    """(LLM requests, points recorded) of the recorded LJ sweep with n points on the Parsl engine."""
    import yaml

    from mdagent_hpc.sweep.spec import SweepSpec
    from mdagent_hpc.workflows.sweep_launch import run_sweep

    data = yaml.safe_load((REPO / "workflows/sweeps/lj-melt-temperature.yaml").read_text())
    data |= {"site": site_name, "engine": "parsl", "point_seconds": 2}
    data["parameters"] = [{"name": "T", "start": 0.6, "stop": round(0.6 + 0.02 * (n - 1), 4), "step": 0.02}]
    node = run_sweep(SweepSpec(**data))
    if not node.is_finished_ok:
        sys.exit(f"the {n}-point sweep failed: {node.exit_status} {node.exit_message}")
    # Every model request is a GenerateScript process called (at any depth) by the sweep.
    calls = sum(1 for p in node.called_descendants if p.process_type == "aiida.calculations:mdagent.generate")
    return calls, len(node.outputs.points)


def running(pidfile: str) -> bool:
    try:
        os.kill(int(Path(pidfile).read_text().split()[0]), 0)
        return True
    except (OSError, ValueError, IndexError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--skip-pilot", action="store_true", help="no (a)")
    parser.add_argument("--skip-calcjob", action="store_true", help="no (b)")
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM requests of 10 and N-point sweeps")
    args = parser.parse_args()
    from rich.progress import Progress

    slurm_before = any(running(p) for p in ("/run/slurmdbd.pid", "/run/slurmctld.pid", "/run/slurmd.pid"))
    munge_before = running("/run/munge/munged.pid")
    print("starting the test cluster ...", file=sys.stderr)
    subprocess.run(["bash", str(REPO / "schedulers/slurm-local/start.sh")], check=True, stdout=subprocess.DEVNULL)
    home = Path(tempfile.mkdtemp(prefix="mdagent-bench-"))
    os.environ["MDAGENT_HOME"] = str(home)
    try:
        run(args, home, Progress)
    finally:
        if not slurm_before:  # what tests/services.py does: stop only what this run started, by its PIDs
            stop = ["bash", str(REPO / "schedulers/slurm-local/stop.sh"), "--quiet"]
            subprocess.run(stop + (["--slurm-only"] if munge_before else []), check=False)


def run(args, home: Path, Progress) -> None:
    from mdagent_hpc.execution.profile import configure_environment, ensure_profile

    configure_environment()
    ensure_profile()
    from mdagent_hpc.execution.registry import add_site

    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()
    cores = int(cpus[0]) if cpus else os.cpu_count() or 1
    (home / "bench-pilot.yaml").write_text(site_yaml(cores, 8))
    site = add_site(home / "bench-pilot.yaml")[0]
    n = args.points

    t_point = point_seconds(home / "one", cores)
    ideal = n * t_point / cores
    print(
        f"t_point {t_point:.2f} s (median of 3 rounds of {cores} at once, before); ideal {n} x {t_point:.2f} / "
        f"{cores} = {ideal:.1f} s",
        flush=True,
    )

    a = None
    if not args.skip_pilot:
        print(f"(a) pilot: {n} points in Parsl blocks ...", file=sys.stderr, flush=True)
        a = pilot(site.name, n, home / "sweep")
        after = point_seconds(home / "one", cores)  # the machine may be quieter now: the faster is the stricter
        t_point = min(t_point, after)
        ideal = n * t_point / cores
        print(f"t_point {after:.2f} s measured again after (a); ideal {ideal:.1f} s from the faster", flush=True)
        print(
            f"(a) pilot jobs:       {a:7.1f} s  = {a / ideal:.2f} x ideal (target <= {TARGET}: "
            f"{'met' if a / ideal <= TARGET else 'MISSED'})",
            flush=True,
        )
        span, busy = inside_blocks(home / "sweep")
        print(
            f"    of which points running: {span:.1f} s (cores busy {busy / (cores * span):.0%}; a point took "
            f"{busy / n:.2f} s on average in the block against {t_point:.2f} s in the rounds); before the first "
            f"point and after the last: {a - span:.1f} s",
            flush=True,
        )
    if not args.skip_calcjob:
        from aiida.engine.daemon.client import get_daemon_client

        from mdagent_hpc.execution.profile import start_daemon

        start_daemon()
        try:
            with Progress(transient=True) as bar:
                task = bar.add_task(f"(b) {n} CalcJobs", total=n)
                b = calcjobs(site, n, lambda done: bar.update(task, completed=done))
        finally:
            get_daemon_client().stop_daemon(wait=True, timeout=60)
        than_pilot = f" ({b / a:.1f} x the pilot)" if a else ""
        print(f"(b) one CalcJob each: {b:7.1f} s  = {b / ideal:.2f} x ideal{than_pilot}", flush=True)
    if not args.no_llm:
        for size in (10, n):
            calls, recorded = llm_requests(site.name, size)
            print(f"LLM requests for a {size}-point sweep: {calls} ({recorded} points recorded)", flush=True)


if __name__ == "__main__":
    main()
