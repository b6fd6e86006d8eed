"""Submit overhead on the single-node Slurm: AiiDA's round trip against a plain `sbatch --wait`.

Starts the test cluster (schedulers/slurm-local/start.sh), then alternates, `--runs` times each:

- mdagent: the LAMMPS CalcJob on site `slurm-local` (sandboxed `mdagent-lmp`, poll interval 0.5 s), from the call
  to the moment its results are in provenance (upload, sbatch, squeue polls, sacct, retrieve, parse, store);
- mdagent base: the same job in LammpsJobWorkChain, as the agent runs it (the fault handlers' wrapping);
- baseline: `sbatch --wait` of a job script running the same `mdagent-lmp` command on the same files;
- tight: the same job submitted with `sbatch` and watched with `squeue` every 0.1 s (a stricter reference:
  `sbatch --wait` itself polls slowly, so the target ratio alone flatters us).

The job is a ~1 s LAMMPS run (Lennard-Jones, 4000 atoms). Prints both medians and their ratio; target <= 1.5.
Works in a temporary MDAGENT_HOME. Timings are printed, never asserted.

    .venv/bin/python perf/submit_overhead.py [--runs 20]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.5
from mdagent_hpc.lammps.templates import lj_script  # noqa: E402

SCRIPT = lj_script(10, 1000)


def mdagent_run(code, options, base: bool = False) -> float:
    from aiida import orm

    from mdagent_hpc.execution.profile import run_here
    from mdagent_hpc.workflows.lammps_calc import LammpsCalculation
    from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain

    script = orm.SinglefileData(io.BytesIO(SCRIPT.encode()), filename="in.lammps")
    inputs = {"code": code, "script": script, "metadata": {"options": options}}
    start = time.monotonic()
    _, node = run_here(LammpsJobWorkChain, lammps=inputs) if base else run_here(LammpsCalculation, **inputs)
    seconds = time.monotonic() - start
    if not node.is_finished_ok:
        sys.exit(f"the {node.process_label} failed: {node.exit_status} {node.exit_message}")
    return seconds


def sbatch_wait(folder: Path, lmp: str, tight: bool = False) -> float:
    (folder / "in.lammps").write_text(SCRIPT)
    (folder / "job.sh").write_text(
        f"#!/bin/bash\n#SBATCH --partition=debug\n#SBATCH --mem=1000\n#SBATCH --time=10\n"
        f"cd {folder}\n'{lmp}' -in in.lammps -log log.lammps -nocite > lammps.out\n"
    )
    start = time.monotonic()
    wait = [] if tight else ["--wait"]
    done = subprocess.run(
        ["sbatch", *wait, "--parsable", "-o", str(folder / "slurm.out"), str(folder / "job.sh")],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"sbatch failed: {done.stderr.strip()}")
    while (
        tight
        and subprocess.run(
            ["squeue", "-h", "-j", done.stdout.strip().split(";")[0], "-t", "PD,R,CG"], capture_output=True, text=True
        ).stdout.strip()
    ):
        time.sleep(0.1)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    print("starting the test cluster ...", file=sys.stderr)
    subprocess.run(["bash", str(REPO / "schedulers/slurm-local/start.sh")], check=True, stdout=subprocess.DEVNULL)
    home = tempfile.mkdtemp(prefix="mdagent-bench-")
    os.environ["MDAGENT_HOME"] = home
    from mdagent_hpc.execution.profile import configure_environment, ensure_profile

    configure_environment()
    ensure_profile()
    from mdagent_hpc.execution.computers import ensure_site
    from mdagent_hpc.execution.registry import BUNDLED
    from mdagent_hpc.execution.site import aiida_calcjob_options, load_site

    site = load_site(BUNDLED / "slurm-local.yaml")
    setup = ensure_site(site)
    options = aiida_calcjob_options(site)
    lmp = str(setup.code.filepath_executable)

    mdagent_run(setup.code, options)  # warm-up: imports, first connection
    ours, based, baseline, tight = [], [], [], []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="sbatch-", dir=home) as tmp:
            baseline.append(sbatch_wait(Path(tmp), lmp))
        with tempfile.TemporaryDirectory(prefix="sbatch-", dir=home) as tmp:
            tight.append(sbatch_wait(Path(tmp), lmp, tight=True))
        ours.append(mdagent_run(setup.code, options))
        based.append(mdagent_run(setup.code, options, base=True))
        print(
            f"run {i + 1:2}/{args.runs}: mdagent {ours[-1]:5.2f} s   base {based[-1]:5.2f} s   "
            f"sbatch --wait {baseline[-1]:5.2f} s   sbatch + squeue {tight[-1]:5.2f} s",
            file=sys.stderr,
        )
    m_ours, m_base, m_tight = statistics.median(ours), statistics.median(baseline), statistics.median(tight)
    ratio = m_ours / m_base
    print(f"median submit -> results in provenance: {m_ours:.2f} s (min {min(ours):.2f}, max {max(ours):.2f})")
    m_based = statistics.median(based)
    print(
        f"median the same in LammpsJobWorkChain: {m_based:.2f} s (min {min(based):.2f}, max {max(based):.2f}; "
        f"{m_based - m_ours:+.2f} s for the wrapping)"
    )
    print(f"median sbatch --wait:                   {m_base:.2f} s (min {min(baseline):.2f}, max {max(baseline):.2f})")
    print(f"median sbatch + squeue every 0.1 s:     {m_tight:.2f} s (min {min(tight):.2f}, max {max(tight):.2f})")
    print(
        f"ratio {ratio:.2f} (target <= {TARGET}): {'met' if ratio <= TARGET else 'MISSED'}; "
        f"against the tight reference: {m_ours / m_tight:.2f}"
    )


if __name__ == "__main__":
    main()
