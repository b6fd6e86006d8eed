"""What a Parsl worker runs for one point of a sweep: the standard library only, so that it starts fast.

`run_point` runs the point's LAMMPS command in its folder unless the point already ended, appends a line to
`runs.log` each time it starts it (the run counter) and writes `result.json` atomically when LAMMPS ends. A LAMMPS
killed from outside (its block cancelled or out of wall time) did not end: `PointKilledError`, and Parsl runs it again.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

# The names LammpsCalculation uses too, so a point's folder reads like a job's (a module of the standard library only).
from mdagent_hpc.lammps.run_folder import LOG, STDOUT

RESULT, LOST, RUNNING, RUNS = "result.json", "lost.json", "running", "runs.log"
# How a run stopped from outside ends: killed by SIGHUP, SIGINT, SIGKILL or SIGTERM, directly or through a wrapper
# (bubblewrap, a shell) that exits with 128 + the signal.
_KILLED = frozenset(code for sig in (1, 2, 9, 15) for code in (-sig, 128 + sig))


class PointKilledError(RuntimeError):
    """The point's LAMMPS was killed by a signal from outside: it did not end, and is run again."""


def write_json(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_point(point_dir: str, command: list[str], sha: str) -> dict:
    """On a worker: run one point unless it already ended, write `result.json` atomically, return it."""
    folder = Path(point_dir)
    previous = read_json(folder / RESULT)
    if isinstance(previous, dict) and previous.get("inputs_sha256") == sha:
        return previous  # ended before its block was lost: never twice
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or "-"
    with open(folder / RUNS, "a") as runs:
        runs.write(f"{time.time():.3f} {socket.gethostname()} job={job}\n")
    (folder / RUNNING).touch()
    start = time.time()
    with open(folder / STDOUT, "wb") as out:
        # ch-run (a Charliecloud site's container) refuses to start without $USER, which batch jobs may not set
        env = {**os.environ, "USER": os.environ.get("USER") or getpass.getuser()}
        returncode = subprocess.run(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if returncode in _KILLED:
        # Stopped from outside (the block cancelled, out of wall time): not an end of the point. Parsl retries it.
        raise PointKilledError(f"LAMMPS was stopped by a signal (exit {returncode}) on {socket.gethostname()}")
    result = {
        "returncode": returncode,
        "seconds": round(time.time() - start, 3),
        "log_file": f"points/{folder.name}/{LOG}",
        "inputs_sha256": sha,
        "ended": time.time(),
        "host": socket.gethostname(),
        "job": job,
    }
    write_json(folder / RESULT, result)
    (folder / RUNNING).unlink(missing_ok=True)
    return result
