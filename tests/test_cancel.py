"""`mdagent cancel PK` on runs that are really running: a LAMMPS job RUNNING on the test Slurm cluster, the run
held by the daemon, by a `mdagent run` in another process, or by nobody (the daemon stopped). Each time the job is
cancelled in Slurm and every node of the run ends terminated. The model is the replay server."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "mdagent_hpc" / "examples" / "demo"
TASK = "Heat a small Cu crystal with EAM to 800 K in NVT"
MDAGENT_LMP = str(Path(sys.executable).parent / "mdagent-lmp")
LONG_STEPS = 2_000_000  # ~400 s here: far longer than any wait below, shorter than the site's walltime

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="starts Slurm: needs root")


def long_script() -> str:
    text = (DEMO / "good.lammps").read_text()
    return re.sub(r"^run\s+\d+", f"run             {LONG_STEPS}", text, flags=re.M)


def answer(script: str) -> str:
    return json.dumps({"script": script, "files": [], "potentials": [], "notes": ""})


def mdagent(*args, env: dict | None = None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=timeout,
    )


def llm_env(server) -> dict:
    return {
        "MDAGENT_LLM_BASE_URL": server.base_url,
        "MDAGENT_LLM_MODEL": "fake-model",
        "MDAGENT_LLM_MAX_RETRIES": "0",
    }


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def fresh(pk: int):
    from aiida import orm
    from aiida.manage import get_manager

    get_manager().get_profile_storage().get_session().commit()  # see what other processes wrote
    return orm.load_node(pk)


def slurm_state(job_id: str) -> str:
    """The job's state: from squeue while it is known there, else from accounting."""
    queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    if queued.returncode == 0 and queued.stdout.strip():
        return queued.stdout.strip()
    done = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    return done.stdout.strip().split("\n")[0]


def running_job(pk: int) -> str:
    """The Slurm id of run `pk`'s LAMMPS job once Slurm says it is RUNNING."""
    from aiida import orm

    def job():
        run = fresh(pk)
        for node in run.called_descendants:
            if isinstance(node, orm.CalcJobNode) and node.get_job_id():
                if slurm_state(node.get_job_id()) == "RUNNING":
                    return node.get_job_id()
        return None

    return wait_for(job, 180, f"a RUNNING Slurm job of run {pk}")


def assert_cancelled(pk: int, job_id: str) -> None:
    run = wait_for(lambda: fresh(pk) if fresh(pk).is_terminated else None, 120, f"run {pk} to end")
    assert run.is_killed, (run.process_state, run.exit_status)
    open_nodes = [n.pk for n in run.called_descendants if hasattr(n, "is_terminated") and not n.is_terminated]
    assert open_nodes == [], f"nodes left open: {open_nodes}"
    wait_for(lambda: slurm_state(job_id).startswith("CANCELLED"), 60, f"job {job_id} CANCELLED in Slurm")


@pytest.fixture(scope="module")
def site(slurm, tmp_path_factory):
    from mdagent_hpc.execution.profile import ensure_profile

    ensure_profile()
    path = tmp_path_factory.mktemp("sites") / "slurm-cancel.yaml"
    path.write_text(
        "name: slurm-cancel\nscheduler: slurm\n"
        "transport: {type: local, use_login_shell: false, safe_interval: 0}\n"
        "queue: debug\npoll_interval: 0.5\nresources: {memory_mb: 1000, walltime: 600}\n"
        f"lammps: {{binary: {MDAGENT_LMP}}}\n"
    )
    added = mdagent("site", "add", str(path))
    assert added.returncode == 0, added.stderr
    return "slurm-cancel"


@pytest.fixture
def daemon_env(monkeypatch):
    """The replay model in this process's environment (the daemon inherits it); the daemon stopped at the end."""
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client()
    assert not client.is_daemon_running, "a daemon left running by an earlier test would not know the replay model"
    server = FakeOpenAIServer([answer(long_script())] * 3).start()
    for key, value in llm_env(server).items():
        monkeypatch.setenv(key, value)
    yield dict(os.environ)
    if client.is_daemon_running:
        client.stop_daemon(wait=True, timeout=60)
    server.stop()


@root_only
def test_cancel_stops_a_daemon_run_and_its_running_slurm_job(site, daemon_env):
    submitted = mdagent("run", TASK, "--site", site, "--daemon", "--json", env=daemon_env)
    assert submitted.returncode == 0, submitted.stderr
    pk = json.loads(submitted.stdout)["pk"]
    job_id = running_job(pk)

    cancelled = mdagent("cancel", str(pk), env=daemon_env, timeout=180)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{pk} cancelled" in cancelled.stdout, cancelled.stdout
    assert_cancelled(pk, job_id)
    assert "cancelled by" in (fresh(pk).process_status or "") or fresh(pk).is_killed

    again = mdagent("cancel", str(pk), env=daemon_env)
    assert again.returncode == 0 and "already ended" in again.stdout, again.stdout + again.stderr


@root_only
def test_cancel_stops_a_run_held_by_a_stopped_daemon(site, daemon_env):
    from aiida.engine.daemon.client import get_daemon_client

    submitted = mdagent("run", TASK, "--site", site, "--daemon", "--json", env=daemon_env)
    assert submitted.returncode == 0, submitted.stderr
    pk = json.loads(submitted.stdout)["pk"]
    job_id = running_job(pk)
    get_daemon_client().stop_daemon(wait=True, timeout=60)

    cancelled = mdagent("cancel", str(pk), env=daemon_env, timeout=180)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "daemon was stopped" in cancelled.stdout, cancelled.stdout
    assert_cancelled(pk, job_id)


@root_only
def test_cancel_from_another_terminal_stops_a_foreground_run(site):
    from datetime import UTC, datetime

    started = datetime.now(UTC)
    with FakeOpenAIServer([answer(long_script())] * 3) as server:
        env = {**os.environ, **llm_env(server)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdagent_hpc.cli", "run", TASK, "--site", site, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            from aiida import orm

            def the_run():
                qb = orm.QueryBuilder().append(
                    orm.WorkChainNode,
                    filters={"attributes.process_label": "AgentWorkChain", "ctime": {">": started}},
                    project=["id"],
                )
                qb.order_by({orm.WorkChainNode: {"ctime": "desc"}})
                fresh_ids = [pk for (pk,) in qb.all()]
                return fresh_ids[0] if fresh_ids else None

            pk = wait_for(the_run, 120, "the foreground run to start")
            job_id = running_job(pk)
            cancelled = mdagent("cancel", str(pk), env=env, timeout=180)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:  # the test failed early: stop the run by its PID
                proc.kill()
                proc.wait()
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{pk} cancelled" in cancelled.stdout, cancelled.stdout
    assert proc.returncode != 0, out
    assert_cancelled(pk, job_id)


def test_cancel_refuses_what_it_cannot_cancel_in_one_sentence():
    for pk in ("abc", "99999999999999999999", "0"):
        done = mdagent("cancel", pk)
        assert done.returncode == 2, (pk, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and "no run or sweep" in done.stderr, done.stderr
