"""Services the tests start once per session and share: the test Slurm cluster and an sshd on 127.0.0.1.

Each is started by the first test that asks for it and stopped at the end of the session, by the PIDs it wrote,
only if this session started it; a service that was already running is used and left running.
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SSHD_STATE = "/tmp/mdagent-sshd-tests"


SLURM_PIDFILES = ("/run/slurmdbd.pid", "/run/slurmctld.pid", "/run/slurmd.pid")


def running(pidfile: str) -> bool:
    try:
        os.kill(int(Path(pidfile).read_text().split()[0]), 0)
        return True
    except (OSError, ValueError, IndexError):
        return False


@pytest.fixture(scope="session")
def slurm():
    """The test cluster; partition `debug`, accounting through slurmdbd.

    A cluster that was running before is used and left running; one started here is stopped at the end by the
    PIDs it wrote (munge too, unless it ran before).
    """
    slurm_before = any(running(p) for p in SLURM_PIDFILES)
    munge_before = running("/run/munge/munged.pid")
    started = subprocess.run(["bash", str(REPO / "schedulers/slurm-local/start.sh")], capture_output=True,
                             text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    yield subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    if not slurm_before:
        stop = ["bash", str(REPO / "schedulers/slurm-local/stop.sh"), "--quiet"]
        subprocess.run(stop + (["--slurm-only"] if munge_before else []), check=True, timeout=120)


@pytest.fixture(scope="session")
def sshd():
    started = subprocess.run(["bash", str(REPO / "schedulers/sshd-local/start.sh"), SSHD_STATE],
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    yield started.stdout.strip().splitlines()[-1]
    subprocess.run(["bash", str(REPO / "schedulers/sshd-local/stop.sh"), SSHD_STATE], capture_output=True)
