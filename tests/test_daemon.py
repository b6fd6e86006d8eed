"""The daemon helpers wait for what they promise: `start_daemon` returns only once a daemon answers and runs what
is submitted, even right after a stop whose circus arbiter is still quitting; `stop_daemon` only once it is gone;
`mdagent daemon start|stop|restart` likewise, and say in one sentence when the daemon does not come up."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROUNDS = 4
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def profile():
    from mdagent_hpc.execution.profile import ensure_profile, stop_daemon

    yield ensure_profile()
    stop_daemon()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def runs_a_process(value: int) -> None:
    from aiida.engine import submit
    from aiida.orm import Int
    from daemon_probe import AddOne

    node = submit(AddOne, value=Int(value))
    # generous: only a daemon that never runs it reaches this (the flake waited forever)
    wait_for(lambda: node.is_terminated, timeout=300, what=f"the daemon to run process {node.pk}")
    assert node.is_finished_ok and node.outputs.value.value == value + 1


def test_each_start_right_after_a_stop_runs_a_submitted_process(profile):
    from aiida.engine.daemon.client import get_daemon_client

    from mdagent_hpc.execution.profile import daemon_answers, start_daemon, stop_daemon

    client = get_daemon_client()
    start_daemon()
    runs_a_process(0)
    for round_ in range(1, ROUNDS + 1):
        old = client.get_daemon_pid()
        if round_ % 2:
            # AiiDA's own stop without waiting (`verdi daemon stop --no-wait`; with waiting the same happens, in a
            # shorter window, on a loaded machine): the arbiter is still quitting and its pid file still there, and
            # a start at once used to see "running", return, and leave no daemon
            client.stop_daemon(wait=False, timeout=120)
        else:
            stop_daemon()
            assert client.get_daemon_pid() is None, "stop_daemon returned before the daemon was gone"
        start_daemon()
        assert daemon_answers(client) and client.get_daemon_pid() != old
        runs_a_process(round_)


def mdagent(*args, path: tuple[Path, ...] = ()):
    """The CLI in a subprocess, with `path` and tests/ on its PYTHONPATH (a daemon it starts imports daemon_probe)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(str(p) for p in (*path, TESTS))}
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_daemon_commands_return_once_done(profile):
    from aiida.engine.daemon.client import get_daemon_client

    from mdagent_hpc.execution.profile import daemon_answers, start_daemon

    client = get_daemon_client()
    stopped = mdagent("daemon", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert client.get_daemon_pid() is None
    started = mdagent("daemon", "start")
    assert started.returncode == 0 and "daemon started" in started.stdout, started.stderr
    assert daemon_answers(client)
    first = client.get_daemon_pid()
    restarted = mdagent("daemon", "restart", "--workers", "2")
    assert restarted.returncode == 0 and "daemon started" in restarted.stdout, restarted.stderr
    assert daemon_answers(client) and client.get_daemon_pid() != first
    assert client.get_number_of_workers(timeout=30) == 2
    status = json.loads(mdagent("daemon", "status", "--json").stdout)
    assert status["running"] and status["workers"] == 2
    again = mdagent("daemon", "start")
    assert again.returncode == 0 and "already running" in again.stdout
    start_daemon()  # finds it running; points this process at the broker of the daemon another process started
    runs_a_process(10)


def test_a_daemon_that_cannot_start_is_one_sentence_and_a_failure(profile, tmp_path):
    """The daemon's circus process dies at once (here: a sitecustomize that exits in it): the command says so in
    one sentence with exit 2, never "daemon started"."""
    from mdagent_hpc.execution.profile import stop_daemon

    stop_daemon()
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nif 'start-circus' in sys.argv:\n    sys.exit('circus refused to start')\n"
    )
    for command in (["daemon", "start"], ["daemon", "restart"]):
        result = mdagent(*command, "--timeout", "60", path=(tmp_path,))
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "daemon started" not in result.stdout and "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == [
            "error: the AiiDA daemon failed to start; its log says why (`mdagent daemon status` names it)"
        ], result.stderr
