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
def model(monkeypatch):
    """`model(answers)`: the replay model with these answers, in this process's environment (a daemon started
    afterwards inherits it); returns that environment. The daemon is stopped at the end."""
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client()
    assert not client.is_daemon_running, "a daemon left running by an earlier test would not know the replay model"
    servers = []

    def start(answers: list[str]) -> dict:
        servers.append(FakeOpenAIServer(answers).start())
        for key, value in llm_env(servers[-1]).items():
            monkeypatch.setenv(key, value)
        return dict(os.environ)

    yield start
    if client.is_daemon_running:
        client.stop_daemon(wait=True, timeout=60)
    for server in servers:
        server.stop()


@pytest.fixture
def daemon_env(model):
    return model([answer(long_script())] * 3)


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


# -- sweeps: per-point jobs and Parsl pilot blocks ---------------------------------------------------------------
SWEEP_TEMPLATE = """```lammps
variable N index 1000
units lj
atom_style atomic
lattice fcc 0.8442
region box block 0 5 0 5 0 5
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
velocity all create 1.0 87287 mom yes rot yes dist gaussian
fix 1 all nvt temp 1.0 1.0 0.5
thermo 100
thermo_style custom step temp press pe
run ${N}
```
"""


def sweep_spec(tmp_path: Path, site: str, engine: str) -> Path:
    """Validated at N=1000 (seconds); the other points run for minutes, long enough to be cancelled mid-run."""
    import yaml

    spec = {
        "task": "NVT of a 500-atom LJ crystal at T=1.0 for N steps; report the mean temperature and energy",
        "parameters": [{"name": "N", "values": [1000, LONG_STEPS, LONG_STEPS + 1]}],
        "observables": [{"name": "temp", "column": "temp"}],
        "probe": [{"N": 1000}],
        "point_seconds": 5,
        "engine": engine,
        "site": site,
        "loop": {"max_attempts": 1},
    }
    path = tmp_path / f"sweep-{engine}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep_jobs_running(engine: str) -> list[str]:
    """The Slurm ids of the sweep's RUNNING jobs once they are its long ones: two point jobs, or a Parsl block."""
    running = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %j"], capture_output=True, text=True)
    jobs = [line.split() for line in running.stdout.splitlines() if line.strip()]
    if engine == "parsl":
        return [job for job, name in jobs if name.startswith("parsl")]
    return [job for job, _ in jobs] if len(jobs) >= 2 else []


def states(node) -> str:
    return "; ".join(f"{n.pk} {n.process_label} {n.process_state}" for n in [node, *node.called_descendants])


@root_only
@pytest.mark.parametrize("engine", ["calcjob", "parsl"])
def test_cancel_stops_a_sweep_and_every_job_it_queued(site, model, tmp_path, engine):
    from mdagent_hpc.execution.registry import add_site

    name = f"slurm-cancel-{engine}"
    body = (
        f"name: {name}\nscheduler: slurm\ntransport: {{type: local, use_login_shell: false, safe_interval: 0}}\n"
        f"queue: debug\npoll_interval: 0.5\nresources: {{memory_mb: 1000, walltime: 600}}\n"
        f"lammps: {{binary: {MDAGENT_LMP}}}\nsweep: {{max_concurrent_jobs: 2}}\n"
    )
    if engine == "parsl":
        body += "pilot: {cores_per_node: 2, address: 127.0.0.1, lost_after: 10}\n"
    (tmp_path / f"{name}.yaml").write_text(body)
    add_site(tmp_path / f"{name}.yaml")
    before = set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())
    assert not before, f"the test cluster is busy with {before}: the job count below would be wrong"

    daemon_env = model([SWEEP_TEMPLATE] * 3)
    started = mdagent(
        "sweep", "--spec", str(sweep_spec(tmp_path, name, engine)), "--daemon", "--yes", "--json", env=daemon_env
    )
    assert started.returncode == 0, started.stderr[-3000:]
    pk = json.loads(started.stdout)["pk"]
    jobs = wait_for(lambda: sweep_jobs_running(engine), 300, "the sweep's long jobs to run")

    cancelled = mdagent("cancel", str(pk), env=daemon_env, timeout=180)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{pk} cancelled" in cancelled.stdout or "cancel sent" in cancelled.stdout, cancelled.stdout
    run = wait_for(lambda: fresh(pk) if fresh(pk).is_terminated else None, 120, f"sweep {pk} to end")
    assert run.is_killed, states(run)
    # A point job is cancelled by AiiDA (CANCELLED); a Parsl block is drained by the driver's cleanup (it may end
    # COMPLETED): either way nothing of the sweep stays in the queue.
    ended = ("CANCELLED",) if engine == "calcjob" else ("CANCELLED", "COMPLETED")
    for job_id in jobs:
        wait_for(lambda job_id=job_id: slurm_state(job_id).startswith(ended), 120, f"job {job_id} to end")
    assert [n.pk for n in run.called_descendants if not n.is_terminated] == []
    left = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert left == [], f"jobs left in the queue: {left}"
