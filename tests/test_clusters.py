"""The agent on real clusters: a single-node Slurm (slurmctld, slurmd, slurmdbd on MariaDB) and an sshd on
127.0.0.1, both started by this module's fixtures and shared by its tests; the model is the replay server."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from openai_server import FakeOpenAIServer
from services import SSHD_STATE

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "mdagent_hpc" / "examples" / "demo"
TASK = "Heat a small Cu crystal with EAM to 800 K in NVT"
MDAGENT_LMP = str(Path(sys.executable).parent / "mdagent-lmp")


def answer(script: str) -> str:
    return json.dumps({"script": script, "files": [], "potentials": [], "notes": ""})


def good(steps: int = 2000, extra: str = "") -> str:
    """The demo's good script, running `steps` steps (~0.2 ms each here), with `extra` lines before the run."""
    text = (DEMO / "good.lammps").read_text()
    return re.sub(r"^run\s+\d+", f"{extra}run             {steps}", text, flags=re.M)


def mdagent(*args, env_extra=None, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def llm_env(server) -> dict:
    return {"MDAGENT_LLM_BASE_URL": server.base_url, "MDAGENT_LLM_MODEL": "fake-model", "MDAGENT_LLM_MAX_RETRIES": "0"}


def write_site(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n{body}")
    return path


@pytest.fixture(scope="module")
def sites(tmp_path_factory, slurm, sshd):
    """Site configs for the tests, added with `mdagent site add`."""
    from mdagent_hpc.execution.profile import ensure_profile

    ensure_profile()
    folder = tmp_path_factory.mktemp("sites")
    slurm_body = (
        f"scheduler: slurm\ntransport: {{type: local, use_login_shell: false, safe_interval: 0}}\n"
        f"queue: debug\npoll_interval: 0.5\nresources: {{memory_mb: 1000, walltime: 600}}\n"
        f"lammps: {{binary: {MDAGENT_LMP}}}\n"
    )
    files = {
        "slurm-local": write_site(folder, "slurm-local", slurm_body),
        "slurm-cancel-fail": write_site(folder, "slurm-cancel-fail", slurm_body + "on_failure: {cancelled: fail}\n"),
        "slurm-walltime": write_site(
            folder,
            "slurm-walltime",
            slurm_body.replace("walltime: 600", "walltime: 60") + "on_failure: {walltime: restart}\n",
        ),
        "slurm-ssh": write_site(
            folder,
            "slurm-ssh",
            (
                f"scheduler: slurm\ntransport:\n  type: ssh\n  host: 127.0.0.1\n  port: 2222\n  user: root\n"
                f"  key_filename: {sshd}\n  key_policy: AutoAddPolicy\n  use_login_shell: false\n  safe_interval: 0\n"
                f"workdir: /tmp/mdagent-ssh-work/{{username}}\nqueue: debug\npoll_interval: 0.5\n"
                f"resources: {{memory_mb: 1000, walltime: 600}}\nlammps: {{binary: {MDAGENT_LMP}}}\n"
                f"on_failure: {{connection_lost: resubmit, max_resubmits: 2}}\n"
            ),
        ),
    }
    for path in files.values():
        added = mdagent("site", "add", str(path))
        assert added.returncode == 0, added.stderr
    return files


def jobs(state: str = "RUNNING") -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-t", state, "-o", "%i"], capture_output=True, text=True)
    return listed.stdout.split()


def when_running(action, seconds: float = 600.0) -> threading.Thread:
    """Call `action(job_id)` in a thread as soon as a job submitted after this call is running and LAMMPS in it
    has started writing its log."""
    before = set(jobs("all"))

    def watch():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            running = [job for job in jobs() if job not in before]
            if running and lammps_started(running[0]):
                action(running[0])
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def lammps_started(job: str) -> bool:
    """LAMMPS wrote its log in the job's folder (all sites here run on this host)."""
    folder = subprocess.run(["squeue", "-h", "-j", job, "-o", "%Z"], capture_output=True, text=True).stdout.strip()
    return bool(folder) and (Path(folder) / "log.lammps").is_file()


def job_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def wait_until(condition, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.2)


def lammps_job(node):
    """The LAMMPS CalcJob behind a step: the step itself, or the last job its LammpsJobWorkChain ran."""
    from aiida import orm

    return node if isinstance(node, orm.CalcJobNode) else jobs_of(node)[-1]


def called(pk: int) -> dict:
    from aiida import orm
    from aiida.common.links import LinkType

    node = orm.load_node(pk)
    return {
        link.link_label: link.node
        for link in node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()
    }


# ------------------------------------------------------------------------------------------------ site commands
@pytest.mark.root_only
def test_site_add_is_idempotent_and_site_test_runs_a_job(sites, tmp_path):
    again = mdagent("site", "add", str(sites["slurm-local"]))
    assert again.returncode == 0 and "unchanged" in again.stdout and "up to date" in again.stdout, again.stdout

    tested = mdagent("site", "test", "slurm-local", "--json")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    report = json.loads(tested.stdout)
    assert [s["name"] for s in report["stages"]] == ["aiida", "connect", "scheduler", "lammps job", "read back"]
    assert all(s["ok"] and s["seconds"] >= 0 for s in report["stages"])
    assert re.search(r"job \d+ ran 1 step", report["stages"][3]["detail"])
    assert "accounting: COMPLETED" in report["stages"][4]["detail"]

    # A changed binary replaces the code; the old one stays (hidden) for the runs that used it.
    from aiida import orm

    old = orm.load_code("lammps@slurm-local")
    changed = write_site(
        tmp_path,
        "slurm-local",
        sites["slurm-local"]
        .read_text()
        .split("\n", 1)[1]
        .replace(MDAGENT_LMP, str(Path(sys.executable).parent / "lmp")),
    )
    assert mdagent("site", "add", str(changed)).returncode == 0
    new = orm.load_code("lammps@slurm-local")
    assert new.pk != old.pk and str(new.filepath_executable).endswith("/lmp")
    assert orm.load_node(old.pk).is_hidden
    assert mdagent("site", "add", str(sites["slurm-local"])).returncode == 0  # back to the sandboxed binary


@pytest.mark.root_only
def test_site_test_names_the_failing_stage_and_the_fix(sites, tmp_path):
    broken = write_site(
        tmp_path,
        "slurm-nolmp",
        sites["slurm-local"].read_text().split("\n", 1)[1].replace(MDAGENT_LMP, "/nonexistent/lmp"),
    )
    assert mdagent("site", "add", str(broken)).returncode == 0
    tested = mdagent("site", "test", "slurm-nolmp", "--json")
    assert tested.returncode == 1
    report = json.loads(tested.stdout)
    failed = report["stages"][-1]
    assert failed["name"] == "lammps job" and not failed["ok"] and "lammps.binary" in failed["fix"]

    unknown = mdagent("site", "test", "no-such-site")
    assert unknown.returncode == 2 and "no site 'no-such-site'" in unknown.stderr and "Traceback" not in unknown.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nscheduler: lsf\n")
    added = mdagent("site", "add", str(bad))
    assert added.returncode == 2 and f"{bad}:2: scheduler: 'lsf' is not one of direct, slurm, pbspro" in added.stderr


# ------------------------------------------------------------------------------------------------ agent runs
@pytest.mark.root_only
def test_agent_run_through_sbatch_records_job_id_and_accounting(sites):
    from aiida import orm

    with FakeOpenAIServer([answer(good())]) as server:
        result = mdagent("run", TASK, "--site", "slurm-local", "--json", env_extra=llm_env(server))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["verdict"] == "passed"
    calc = lammps_job(called(summary["pk"])["run_1"])
    assert calc.computer.label == "slurm-local" and calc.computer.scheduler_type == "core.slurm"
    job_id = calc.get_job_id()
    assert job_id and job_id.isdigit()
    sacct = calc.get_detailed_job_info()  # what AiiDA stored from sacct, in provenance
    assert sacct["retval"] == 0 and f"|{job_id}|" in sacct["stdout"]
    accounting = calc.outputs.results["accounting"]
    assert accounting["JobID"] == job_id and accounting["State"] == "COMPLETED"
    assert accounting["ExitCode"] == "0:0" and accounting["Elapsed"], accounting
    script = calc.base.repository.get_object_content("_aiidasubmit.sh")
    assert "#SBATCH --partition=debug" in script and MDAGENT_LMP in script
    assert orm.load_node(summary["pk"]).inputs.site["dry_run"] == "here"


@pytest.mark.root_only
def test_agent_run_over_ssh_with_the_dry_run_as_a_job(sites):
    with FakeOpenAIServer([answer(good())]) as server:
        result = mdagent("run", TASK, "--site", "slurm-ssh", "--json", env_extra=llm_env(server))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["verdict"] == "passed"
    steps = called(summary["pk"])
    dry, run = lammps_job(steps["dryrun_1"]), lammps_job(steps["run_1"])
    assert dry.inputs.skiprun.value and dry.is_finished_ok and dry.get_job_id() != run.get_job_id()
    assert steps["dryrun_report_1"].outputs.result["ok"]
    assert run.computer.transport_type == "core.ssh" and run.computer.hostname == "127.0.0.1"
    assert run.get_remote_workdir().startswith("/tmp/mdagent-ssh-work/root/")
    assert run.outputs.results["accounting"]["State"] == "COMPLETED"


@pytest.mark.root_only
def test_dry_run_job_errors_come_back_as_preflight_feedback(sites):
    broken = good().replace("pair_coeff      1 1 Cu_u3.eam", "pair_coeff      1 1 Cu_u3.eam\nfix 2 all nonesuch")
    with FakeOpenAIServer([answer(broken), answer(good())]) as server:
        result = mdagent("run", TASK, "--site", "slurm-ssh", "--json", env_extra=llm_env(server))
        second_prompt = json.dumps(server.requests[1]["messages"])
    summary = json.loads(result.stdout)
    assert summary["verdict"] == "passed", result.stderr[-3000:]
    steps = called(summary["pk"])
    assert "run_1" not in steps and not steps["dryrun_report_1"].outputs.result["ok"]
    assert "nonesuch" in second_prompt


# ------------------------------------------------------------------------------------------------ faults
# Each fault is met by LammpsJobWorkChain (workflows/lammps_job.py), run here as the agent runs it: the site's code,
# job options and on_failure policy. The agent's side (feedback, continuing from restart files) is tested at the end.
def run_job(site_name: str, script: str, **on_failure):
    """LammpsJobWorkChain on a test site, in this process; returns its node."""
    from mdagent_hpc.execution.profile import run_here
    from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain

    return run_here(LammpsJobWorkChain, **job_inputs(site_name, script, **on_failure))[1]


def job_inputs(site_name: str, script: str, **on_failure) -> dict:
    import io

    from aiida import orm

    from mdagent_hpc.execution.computers import ensure_site
    from mdagent_hpc.execution.registry import find_site
    from mdagent_hpc.execution.site import aiida_calcjob_options

    site = find_site(site_name)
    policy = site.on_failure.model_copy(update=on_failure)
    script_node = orm.SinglefileData(io.BytesIO(script.encode()), filename="in.lammps")
    cu = Path(sys.executable).parents[1] / "lib/python3.11/site-packages/lammps/share/lammps/potentials/Cu_u3.eam"
    return {
        "lammps": {
            "code": ensure_site(site).code,
            "script": script_node,
            "potentials": {"Cu_u3_eam": orm.SinglefileData(cu)},
            "metadata": {"options": aiida_calcjob_options(site)},
        },
        "on_failure": orm.Dict(policy.model_dump()),
        "site": orm.Str(site_name),
    }


def jobs_of(node) -> list:
    """The LammpsCalculations a LammpsJobWorkChain ran, in order."""
    from aiida import orm

    return sorted((n for n in node.called if isinstance(n, orm.CalcJobNode)), key=lambda n: n.ctime)


def report_of(node) -> str:
    from aiida.cmdline.utils.common import get_workchain_report

    return get_workchain_report(node, "REPORT")


@pytest.fixture
def fast_transport_retries():
    """AiiDA retries a failed transport task 2 times, 3 s apart (instead of 5 times from 20 s on)."""
    from mdagent_hpc.execution.profile import ensure_profile

    profile = ensure_profile()
    from aiida.manage import get_config

    config = get_config()
    config.set_option("transport.task_maximum_attempts", 2, scope=profile.name)
    config.set_option("transport.task_retry_initial_interval", 3, scope=profile.name)
    yield
    config.unset_option("transport.task_maximum_attempts", scope=profile.name)
    config.unset_option("transport.task_retry_initial_interval", scope=profile.name)


@pytest.mark.root_only
def test_scancel_with_policy_fail_stops_with_the_job_record(sites):
    cancel = when_running(lambda job: subprocess.run(["scancel", job], check=True))
    node = run_job("slurm-local", good(steps=400000), cancelled="fail")
    cancel.join()
    assert node.exit_status == 420, node.exit_message  # ERROR_JOB_FAULT
    (calc,) = jobs_of(node)
    assert calc.exit_status == 350 and calc.outputs.results["accounting"]["State"].startswith("CANCELLED")
    job = node.outputs.job.get_dict()
    assert job["fault"] == "cancelled" and job["action"] == "fail" and job["resubmissions"] == 0
    assert job["job_id"] == calc.get_job_id() and job["accounting"]["State"].startswith("CANCELLED")
    assert job["site"] == "slurm-local" and job["workdir"] == calc.get_remote_workdir()
    assert "retrieved" in node.outputs and "results" in node.outputs  # the cut-off log, for the agent to read
    assert "site policy: fail" in report_of(node)


@pytest.mark.root_only
def test_scancel_with_policy_resubmit_runs_the_job_again(sites):
    cancel = when_running(lambda job: subprocess.run(["scancel", job], check=True))
    node = run_job("slurm-local", good(steps=30000), cancelled="resubmit", max_resubmits=1)
    cancel.join()
    assert node.is_finished_ok, node.exit_message
    first, second = jobs_of(node)
    assert first.exit_status == 350 and second.is_finished_ok and first.get_job_id() != second.get_job_id()
    assert node.outputs.job["resubmissions"] == 1 and node.outputs.job["job_id"] == second.get_job_id()


@pytest.mark.root_only
def test_node_failure_mid_run_is_resubmitted(sites, slurm):
    def down(job):
        subprocess.run(["scontrol", "update", f"nodename={slurm}", "state=down", "reason=mdagent-test"], check=True)
        wait_until(lambda: job_state(job) != "RUNNING")  # Slurm ended it as a node failure
        subprocess.run(["scontrol", "update", f"nodename={slurm}", "state=resume"], check=False)

    failing = when_running(down)
    node = run_job("slurm-local", good(steps=30000))
    failing.join()
    assert node.is_finished_ok, node.exit_message
    first, second = jobs_of(node)
    assert first.exit_status == 140  # AiiDA's ERROR_SCHEDULER_NODE_FAILURE, from sacct's NODE_FAIL
    assert first.outputs.results["accounting"]["State"] == "NODE_FAIL"
    assert second.is_finished_ok and second.get_job_id() != first.get_job_id()
    job = node.outputs.job.get_dict()
    assert job["fault"] == "node_failure" and job["action"] == "resubmit" and job["resubmissions"] == 1
    assert node.outputs.results.pk == second.outputs.results.pk


@pytest.mark.root_only
def test_lammps_error_is_not_retried(sites):
    node = run_job(
        "slurm-local", good().replace("run             2000", "run 2000\nfix 9 all nonesuch"), node_failure="resubmit"
    )
    assert node.exit_status == 410, node.exit_message  # ERROR_LAMMPS_FAILED
    (calc,) = jobs_of(node)
    assert calc.exit_status == 320 and node.outputs.results["errors"]
    assert node.outputs.job["fault"] is None and node.outputs.retrieved.pk == calc.outputs.retrieved.pk


def sshd_drop() -> None:
    """Stop the test's sshd and end its open sessions: the sshd's own processes, by PID, nothing else."""
    master = int(Path(SSHD_STATE, "sshd.pid").read_text())
    sessions = descendants(master)
    subprocess.run(["bash", str(REPO / "schedulers/sshd-local/stop.sh"), SSHD_STATE], check=True)
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def sshd_start() -> None:
    subprocess.run(["bash", str(REPO / "schedulers/sshd-local/start.sh"), SSHD_STATE], check=True, capture_output=True)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` in the process tree (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.root_only
def test_ssh_drop_mid_run_is_retried_and_recorded(sites, sshd):
    from aiida import orm

    def drop(job):
        sshd_drop()
        wait_until(lambda: job_state(job) not in ("RUNNING", "PENDING"))
        wait_until(lambda: retried(job))  # AiiDA polled while the site was unreachable, and will again
        sshd_start()

    def retried(job) -> bool:
        calcs = orm.QueryBuilder().append(orm.CalcJobNode, filters={"attributes.job_id": job}).all(flat=True)
        return any(
            "retrying after" in entry.metadata.get("msg", "")
            for calc in calcs
            for entry in orm.Log.collection.get_logs_for(calc)
        )

    dropping = when_running(drop)
    node = run_job("slurm-ssh", good(steps=30000))
    dropping.join()
    assert node.is_finished_ok, node.exit_message
    (calc,) = jobs_of(node)  # AiiDA's own retries bridged the drop: no resubmission
    assert calc.outputs.results["accounting"]["State"] == "COMPLETED"
    logged = [entry.metadata.get("msg", "") for entry in orm.Log.collection.get_logs_for(calc)]
    assert any("retrying after" in msg for msg in logged), logged  # the traceback is in entry.message
    assert not any("maximum attempts" in msg for msg in logged), logged


@pytest.mark.root_only
def test_connection_down_past_the_retries_ends_the_job_and_the_policy_resubmits(sites, sshd, fast_transport_retries):
    from aiida import orm

    def drop(job):
        sshd_drop()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # down until AiiDA gave up on the first job
            first = [
                n for n in orm.QueryBuilder().append(orm.CalcJobNode, filters={"attributes.job_id": job}).all(flat=True)
            ]
            if first and first[0].is_terminated:
                break
            time.sleep(0.2)
        sshd_start()

    dropping = when_running(drop)
    node = run_job("slurm-ssh", good(steps=30000), connection_lost="resubmit", max_resubmits=2)
    dropping.join()
    assert node.is_finished_ok, node.exit_message
    first, *rest = jobs_of(node)
    assert first.exit_status == 360 and "Unable to connect" in first.exit_message  # ended, not paused
    assert rest[-1].is_finished_ok and rest[-1].outputs.results["accounting"]["State"] == "COMPLETED"
    job = node.outputs.job.get_dict()
    assert job["fault"] == "connection_lost" and job["action"] == "resubmit" and job["resubmissions"] == len(rest)
    assert "site policy: resubmit" in report_of(node)


def test_connection_never_there_fails_by_policy_without_slurm(fast_transport_retries):
    """No sshd at all (a closed port): every try ends as connection lost, until max_resubmits says stop."""
    import io

    from aiida import orm

    from mdagent_hpc.execution.computers import ensure_site
    from mdagent_hpc.execution.profile import run_here
    from mdagent_hpc.execution.site import SiteConfig
    from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain

    site = SiteConfig(
        name="unreachable",
        scheduler="slurm",
        workdir="/tmp/mdagent-unreachable",
        transport={
            "type": "ssh",
            "host": "127.0.0.1",
            "port": 1,
            "user": "root",
            "key_policy": "AutoAddPolicy",
            "safe_interval": 0,
        },
        lammps={"binary": "lmp"},
    )
    script = orm.SinglefileData(io.BytesIO(b"units lj\n"), filename="in.lammps")
    _, node = run_here(
        LammpsJobWorkChain,
        lammps={
            "code": ensure_site(site).code,
            "script": script,
            "metadata": {"options": {"max_wallclock_seconds": 60}},
        },
        on_failure=orm.Dict({"connection_lost": "resubmit", "max_resubmits": 1}),
        site=orm.Str("unreachable"),
    )
    assert node.exit_status == 420 and "connection to the site was lost" in node.exit_message
    assert [calc.exit_status for calc in jobs_of(node)] == [360, 360]
    job = node.outputs.job.get_dict()
    assert job == {**job, "fault": "connection_lost", "action": "fail", "resubmissions": 1, "site": "unreachable"}


@pytest.mark.root_only
def test_daemon_restart_mid_run_loses_nothing(sites):
    from aiida import orm
    from aiida.engine import submit

    from mdagent_hpc.execution.profile import start_daemon, stop_daemon
    from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain

    start_daemon()
    try:
        node = submit(LammpsJobWorkChain, **job_inputs("slurm-local", good(steps=30000)))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not jobs():
            time.sleep(0.2)
        assert jobs(), "the LAMMPS job never started"
        stop_daemon()  # returns once the daemon is gone, and start_daemon once a new one answers
        start_daemon()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not orm.load_node(node.pk).is_terminated:
            time.sleep(1)
    finally:
        stop_daemon()
    node = orm.load_node(node.pk)
    assert node.is_finished_ok, node.exit_message
    (calc,) = jobs_of(node)
    assert calc.outputs.results["accounting"]["State"] == "COMPLETED" and node.outputs.job["resubmissions"] == 0


# ------------------------------------------------------------------------------------------------ the agent's side
@pytest.mark.root_only
def test_a_walltime_cut_exposes_the_restart_file_and_the_agent_continues_from_it(sites):
    continuation = (DEMO / "good.lammps").read_text()
    continuation = re.sub(
        r"(?s)^.*?pair_style", "units           metal\nread_restart    cont.restart\npair_style", continuation
    )
    continuation = re.sub(r"^velocity.*\n", "", continuation, flags=re.M).replace(
        "run             2000", "run             1000"
    )
    with FakeOpenAIServer(
        [answer(good(steps=5_000_000, extra="restart         500 cont.restart cont.restart\n")), answer(continuation)]
    ) as server:
        result = mdagent("run", TASK, "--site", "slurm-walltime", "--json", env_extra=llm_env(server))
        second_prompt = json.dumps(server.requests[1]["messages"])
    summary = json.loads(result.stdout)
    assert summary["verdict"] == "passed", result.stderr[-3000:]
    steps = called(summary["pk"])
    # the cut job: policy `restart` exposes the restart file, made from the job's retrieved files by a calcfunction
    (first,) = jobs_of(steps["run_1"])
    assert steps["run_1"].exit_status == 420, steps["run_1"].exit_message
    assert first.exit_status == 120 and first.outputs.results["accounting"]["State"] == "TIMEOUT"
    assert first.outputs.results["restart_files"] == ["cont.restart"]
    assert steps["run_1"].outputs.job["fault"] == "walltime" and steps["run_1"].outputs.job["action"] == "restart"
    (restart,) = steps["run_1"].outputs.restart_files.values()
    assert restart.filename == "cont.restart" and restart.get_content(mode="rb")[:4]  # a LAMMPS binary restart
    assert restart.creator.inputs.retrieved.pk == first.outputs.retrieved.pk
    # the agent is told, and the next script reads it
    assert "cont.restart" in second_prompt and "read_restart" in second_prompt
    staged = lammps_job(steps["run_2"]).inputs.files
    assert [node.filename for node in staged.values()] == ["cont.restart"]
    (node,) = staged.values()  # made from run_1's retrieved files by a calcfunction
    assert node.creator.inputs.retrieved.pk == first.outputs.retrieved.pk


@pytest.mark.root_only
def test_agent_feeds_a_cancellation_back(sites):
    cancel = when_running(lambda job: subprocess.run(["scancel", job], check=True))
    with FakeOpenAIServer([answer(good(steps=400000)), answer(good())]) as server:
        result = mdagent("run", TASK, "--site", "slurm-cancel-fail", "--json", env_extra=llm_env(server))
        second_prompt = json.dumps(server.requests[1]["messages"])
    cancel.join()
    summary = json.loads(result.stdout)
    assert summary["verdict"] == "passed", result.stderr[-3000:]
    first = lammps_job(called(summary["pk"])["run_1"])
    assert first.exit_status == 350 and first.outputs.results["accounting"]["State"].startswith("CANCELLED")
    assert "cancelled" in second_prompt
