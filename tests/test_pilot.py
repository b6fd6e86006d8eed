"""The Parsl engine of sweeps: real HighThroughputExecutor blocks on the test Slurm cluster running real LAMMPS.

A block cancelled mid-run is replaced and no finished point runs again; a driver killed with SIGKILL and started
again cancels the block it left and resumes; PilotCalculation (the driver as a core.direct job on the login host)
survives a daemon restart. Each point's `runs.log` gets a line every time a worker starts it: the run counter.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mdagent_hpc.lammps.templates import lj_script

MDAGENT_LMP = str(Path(sys.executable).parent / "mdagent-lmp")
# ~1 s of LAMMPS here (864 atoms, 1000 steps); the swept value is the LAMMPS variable T.
TEMPLATE = lj_script(6, 1000).replace("velocity all create 1.0", "velocity all create ${T}")
SITE = f"""name: slurm-pilot
scheduler: slurm
transport: {{type: local, use_login_shell: false, safe_interval: 0}}
queue: debug
poll_interval: 1
resources: {{memory_mb: 1000, walltime: 600}}
lammps: {{binary: {MDAGENT_LMP}}}
pilot: {{cores_per_node: 1, address: 127.0.0.1, lost_after: 30}}
"""


@pytest.fixture(scope="module")
def site(slurm, tmp_path_factory):
    from mdagent_hpc.execution.profile import ensure_profile
    from mdagent_hpc.execution.registry import add_site

    ensure_profile()
    path = tmp_path_factory.mktemp("sites") / "slurm-pilot.yaml"
    path.write_text(SITE)
    return add_site(path)[0]


def points(n: int) -> list[dict]:
    return [{"id": f"T_{i}", "vars": {"T": round(0.8 + 0.05 * i, 2)}} for i in range(n)]


def job_folder(folder: Path, site, n: int, template: str = TEMPLATE) -> Path:
    """What PilotCalculation uploads: sweep.json and the template."""
    folder.mkdir(parents=True)
    (folder / "in.lj").write_text(template)
    spec = {
        "site": site.model_dump(mode="json", exclude_unset=True),
        "template": "in.lj",
        "files": [],
        "points": points(n),
    }
    (folder / "sweep.json").write_text(json.dumps(spec))
    return folder


def start_driver(sweep: Path, job: Path) -> subprocess.Popen:
    out = open(job / "driver.out", "a")  # noqa: SIM115 (the child holds it)
    return subprocess.Popen(
        [sys.executable, "-m", "mdagent_hpc.execution.parsl.driver", str(sweep), "--job", str(job)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_for(condition, timeout: float = 600, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def ended(sweep: Path) -> dict[str, dict]:
    found = {}
    for path in (sweep / "points").glob("*/result.json"):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except ValueError:
            raise AssertionError(f"{path} is not whole JSON: result.json must be written atomically") from None
    return found


def runs(sweep: Path, pid: str) -> list[str]:
    return (sweep / "points" / pid / "runs.log").read_text().splitlines()


def queued(job_ids) -> set[str]:
    listed = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    return set(listed) & {str(j) for j in job_ids}


def blocks_of(sweep: Path) -> set[str]:
    """Every Slurm job that ran a point of this sweep (from the points' run counters)."""
    return {
        line.split("job=")[1]
        for path in (sweep / "points").glob("*/runs.log")
        for line in path.read_text().splitlines()
    }


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=300)


# ------------------------------------------------------------------------------------------------ config, pure
def test_the_pilot_section_is_validated_with_file_and_line(tmp_path):
    from mdagent_hpc.execution.site import SiteConfigError, load_site

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nscheduler: pbspro\nsweep: {max_concurrent_jobs: 2}\npilot:\n  max_blocks: 3\n"
        "  launcher: srun\n  walltime: '1:75:00'\n  workers_per_nod: 4\n"
    )
    with pytest.raises(SiteConfigError) as caught:
        load_site(bad)
    problems = "\n".join(caught.value.problems)
    assert f"{bad}:7: pilot.walltime: '1:75:00': minutes and seconds must be below 60" in problems
    assert f"{bad}:8: pilot.workers_per_nod: unknown key (did you mean workers_per_node?)" in problems
    bad.write_text("name: bad\nscheduler: pbspro\nsweep: {max_concurrent_jobs: 2}\npilot:\n  max_blocks: 3\n")
    with pytest.raises(SiteConfigError, match=r"bad.yaml:4: pilot: max_blocks 3 is above sweep.max_concurrent_jobs"):
        load_site(bad)
    bad.write_text("name: bad\nscheduler: pbspro\npilot: {launcher: srun}\n")
    with pytest.raises(SiteConfigError, match=r"bad.yaml:3: pilot: launcher srun needs a slurm site, not pbspro"):
        load_site(bad)
    bad.write_text("name: bad\nscheduler: slurm\npilot: {min_blocks: 2}\n")
    with pytest.raises(SiteConfigError, match=r"min_blocks \(2\) must not exceed max_blocks \(1\)"):
        load_site(bad)


def test_parsl_config_follows_the_site_for_each_scheduler(tmp_path):
    from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher
    from parsl.providers import LocalProvider, PBSProProvider

    from mdagent_hpc.execution.parsl.config import parsl_config
    from mdagent_hpc.execution.site import SiteConfig

    slurm = SiteConfig.model_validate(
        {
            "name": "s",
            "scheduler": "slurm",
            "queue": "short",
            "account": "proj",
            "poll_interval": 30,
            "resources": {"memory_mb": 4000, "walltime": "02:00:00"},
            "sweep": {"max_concurrent_jobs": 4},
            "pilot": {
                "init_blocks": 2,
                "min_blocks": 1,
                "max_blocks": 4,
                "nodes_per_block": 2,
                "workers_per_node": 16,
                "worker_init": "module load lammps",
                "retries": 3,
                "lost_after": 60,
            },
        }
    )
    config = parsl_config(slurm, tmp_path, python="/opt/venv/bin/python")
    executor = config.executors[0]
    provider = executor.provider
    assert type(provider).__name__ == "SqueueSlurmProvider" and provider._cmd.startswith("squeue")
    assert (provider.partition, provider.account, provider.nodes_per_block) == ("short", "proj", 2)
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (2, 1, 4)
    assert provider.walltime == "02:00:00" and "#SBATCH --mem=4000M" in provider.scheduler_options
    assert provider.exclusive and provider.status_polling_interval == 30
    assert isinstance(provider.launcher, SrunLauncher)  # two nodes per block on slurm
    assert provider.worker_init.splitlines() == ['export PATH=/opt/venv/bin:"$PATH"', "module load lammps"]
    assert executor.max_workers_per_node == 16 and executor.heartbeat_threshold == 60
    assert config.retries == 3 and config.strategy == "htex_auto_scale"

    pbs = SiteConfig.model_validate(
        {
            "name": "p",
            "scheduler": "pbspro",
            "queue": "workq",
            "resources": {"mpi_ranks_per_node": 8, "memory_mb": 2000},
            "pilot": {"nodes_per_block": 3, "walltime": 1800},
        }
    )
    provider = parsl_config(pbs, tmp_path).executors[0].provider
    assert isinstance(provider, PBSProProvider)
    assert (provider.queue, provider.cpus_per_node, provider.walltime) == ("workq", 8, "00:30:00")
    assert provider.select_options == "mem=2000mb" and isinstance(provider.launcher, MpiExecLauncher)
    assert parsl_config(pbs, tmp_path).executors[0].max_workers_per_node == 8  # one per core it asked for

    direct = SiteConfig.model_validate({"name": "d", "scheduler": "direct"})
    provider = parsl_config(direct, tmp_path).executors[0].provider
    assert isinstance(provider, LocalProvider) and isinstance(provider.launcher, SingleNodeLauncher)


def test_the_private_names_of_parsl_our_slurm_provider_relies_on():
    """SqueueSlurmProvider sets SlurmProvider's `_cmd` and `_translate_table`: Parsl must still read them."""
    import inspect

    from parsl.providers import SlurmProvider
    from parsl.providers.slurm import slurm

    status = inspect.getsource(SlurmProvider._status)
    assert "self._cmd.format(" in status and "self._translate_table" in status
    assert {"R", "PD", "CA", "CD"} <= set(slurm.squeue_translate_table)


def test_point_command_uses_the_site_binary_or_its_image(tmp_path):
    from mdagent_hpc.execution.parsl.driver import point_command
    from mdagent_hpc.execution.site import SiteConfig

    binary = SiteConfig.model_validate({"name": "b", "scheduler": "slurm", "lammps": {"binary": "/opt/lmp"}})
    assert point_command(binary, tmp_path, {"T": 300, "P": 1.5}) == [
        "/opt/lmp",
        "-in",
        "in.lammps",
        "-log",
        "log.lammps",
        "-nocite",
        "-var",
        "T",
        "300",
        "-var",
        "P",
        "1.5",
    ]
    modules = SiteConfig.model_validate(
        {
            "name": "m",
            "scheduler": "slurm",
            "potentials_dir": "/sw/pot",
            "lammps": {"binary": "lmp", "modules": ["lammps/2025"]},
        }
    )
    shell = point_command(modules, tmp_path, {"T": 300})
    assert shell[:2] == ["bash", "-c"] and shell[2].splitlines() == [
        "module load lammps/2025",
        "export LAMMPS_POTENTIALS=/sw/pot",
        "exec lmp -in in.lammps -log log.lammps -nocite -var T 300",
    ]
    image = SiteConfig.model_validate({"name": "i", "scheduler": "slurm", "lammps": {"image": "/images/lmp.sif"}})
    command = point_command(image, tmp_path, {"T": 300})
    assert command[:8] == ["apptainer", "exec", "--containall", "--net", "--network", "none", "--bind", str(tmp_path)]
    assert command[-10:] == [
        "/images/lmp.sif",
        "lmp",
        "-in",
        "in.lammps",
        "-log",
        "log.lammps",
        "-nocite",
        "-var",
        "T",
        "300",
    ]


def test_values_that_would_smuggle_a_command_are_refused():
    from mdagent_hpc.execution.parsl.driver import refusals
    from mdagent_hpc.execution.site import SiteConfig

    site = SiteConfig.model_validate({"name": "r", "scheduler": "slurm"})
    template = "variable c string ${cmd}\n${c} touch x\nunits lj\n"
    assert refusals(site, template, {"cmd": "print"}) == []
    assert any("shell" in text for text in refusals(site, template, {"cmd": "shell"}))


# ------------------------------------------------------------------------------------------------ real blocks
@pytest.mark.root_only
def test_a_block_just_submitted_is_pending_not_missing(slurm, tmp_path):
    """sacct knows a job only seconds after sbatch: asked too early, Parsl took queued blocks for failed ones."""
    from parsl.jobs.states import JobState

    from mdagent_hpc.execution.parsl.config import parsl_config
    from mdagent_hpc.execution.site import SiteConfig

    site = SiteConfig.model_validate(
        {
            "name": "q",
            "scheduler": "slurm",
            "queue": "debug",
            "poll_interval": 1,
            "resources": {"memory_mb": 100, "walltime": 60},
            "pilot": {"cores_per_node": 1},
        }
    )
    provider = parsl_config(site, tmp_path).executors[0].provider
    provider.script_dir = str(tmp_path)
    job = provider.submit("sleep 30", 1)
    try:
        assert provider.status([job])[0].state in (JobState.PENDING, JobState.RUNNING)
    finally:
        provider.cancel([job])
    assert wait_for(lambda: provider.status([job])[0].state == JobState.CANCELLED, timeout=120, what="cancelled")


@pytest.mark.slow
@pytest.mark.root_only
def test_every_point_runs_once_in_slurm_blocks_and_a_second_driver_runs_nothing(site, tmp_path):
    from mdagent_hpc.execution.parsl.driver import pilot_progress

    sweep, job = tmp_path / "sweep", job_folder(tmp_path / "job", site, 6)
    driver = start_driver(sweep, job)
    try:
        assert driver.wait(timeout=900) == 0, (job / "driver.out").read_text()
    finally:
        stop(driver)
    results = ended(sweep)
    assert sorted(results) == [f"T_{i}" for i in range(6)]
    assert all(r["returncode"] == 0 and r["seconds"] > 0 for r in results.values())
    for pid, result in results.items():
        assert len(runs(sweep, pid)) == 1
        log = (sweep / result["log_file"]).read_text()
        value = next(p["vars"]["T"] for p in points(6) if p["id"] == pid)
        assert f"velocity all create {value} 87287" in log and "Total wall time" in log
    assert json.loads((job / "results.json").read_text()).keys() == results.keys()
    assert all((job / "points" / pid / "log.lammps").is_file() for pid in results)
    assert pilot_progress(sweep) == {"done": 6, "running": 0, "failed": 0, "total": 6}
    assert not queued(blocks_of(sweep)), "the driver left its block in the queue"
    spans = sorted((float(runs(sweep, pid)[0].split()[0]), r["ended"]) for pid, r in results.items())
    assert all(start >= before_end for (_, before_end), (start, _) in zip(spans, spans[1:], strict=False)), (
        "a block of one core ran two points at once"
    )

    again = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.execution.parsl.driver", str(sweep), "--job", str(job)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "6 of 6 point(s) ended before; running 0" in again.stdout
    assert all(len(runs(sweep, pid)) == 1 for pid in results)


@pytest.mark.slow
@pytest.mark.root_only
def test_a_cancelled_block_is_replaced_and_no_finished_point_runs_again(site, tmp_path):
    sweep, job = tmp_path / "sweep", job_folder(tmp_path / "job", site, 8)
    driver = start_driver(sweep, job)
    try:
        first = wait_for(lambda: len(ended(sweep)) >= 2 and ended(sweep), what="two points ending")
        block = wait_for(lambda: blocks_of(sweep), what="a block")
        subprocess.run(["scancel", *block], check=True)
        assert driver.wait(timeout=900) == 0, (job / "driver.out").read_text()
    finally:
        stop(driver)
    results = ended(sweep)
    assert sorted(results) == [f"T_{i}" for i in range(8)] and all(r["returncode"] == 0 for r in results.values())
    for pid, result in first.items():
        assert len(runs(sweep, pid)) == 1 and results[pid]["ended"] == result["ended"], f"{pid} ran again"
    assert len(blocks_of(sweep)) >= 2, "no replacement block ran the remaining points"
    assert not queued(blocks_of(sweep))


@pytest.mark.slow
@pytest.mark.root_only
def test_a_stopped_or_killed_driver_resumes_and_never_reruns_a_point(site, tmp_path):
    sweep, job = tmp_path / "sweep", job_folder(tmp_path / "job", site, 8)
    orphans: list[psutil.Process] = []
    driver = start_driver(sweep, job)
    try:
        wait_for(lambda: ended(sweep), what="a point ending")
        driver.send_signal(signal.SIGTERM)  # what AiiDA's kill of the job sends
        assert driver.wait(timeout=300) == 128 + signal.SIGTERM
        assert json.loads((sweep / "progress.json").read_text())["state"] == "stopped"
        assert not queued(blocks_of(sweep)), "SIGTERM must cancel the driver's blocks"
        stopped = ended(sweep)

        driver = start_driver(sweep, job)
        wait_for(lambda: len(ended(sweep)) >= len(stopped) + 2, what="two more points ending")
        left = set(json.loads((sweep / "progress.json").read_text())["blocks"].values())
        orphans = psutil.Process(driver.pid).children(recursive=True)  # Parsl's interchange outlives a SIGKILL
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=120)
        killed = ended(sweep)
        assert left and queued(left), "the killed driver's block should still be queued"
        driver = start_driver(sweep, job)
        assert driver.wait(timeout=900) == 0, (job / "driver.out").read_text()
    finally:
        stop(driver)
        for orphan in orphans:  # what the killed driver started, by PID
            if orphan.is_running():
                orphan.terminate()
        psutil.wait_procs(orphans, timeout=120)
    out = (job / "driver.out").read_text()
    line = next(line for line in out.splitlines() if "a previous driver left:" in line)
    assert set(line.split(": ", 1)[1].split()) == left
    results = ended(sweep)
    assert sorted(results) == [f"T_{i}" for i in range(8)] and all(r["returncode"] == 0 for r in results.values())
    for pid, result in results.items():  # a point may start again only if it had not ended (stopped mid-run)
        starts = [float(line.split()[0]) for line in runs(sweep, pid)]
        assert max(starts) < result["ended"] and sum(start > min(starts) for start in starts) <= 1, pid
    for pid, result in {**stopped, **killed}.items():
        assert results[pid]["ended"] == result["ended"], f"{pid} ended before and ran again"
    assert not queued(blocks_of(sweep) | left)


@pytest.mark.slow
@pytest.mark.root_only
def test_pilot_calculation_survives_a_daemon_restart(site, tmp_path):
    from aiida import orm
    from aiida.engine import submit
    from aiida.engine.daemon.client import get_daemon_client

    from mdagent_hpc.execution.parsl.driver import pilot_progress
    from mdagent_hpc.execution.profile import start_daemon, stop_daemon
    from mdagent_hpc.workflows.pilot_calc import PilotCalculation

    sweep = tmp_path / "sweep"
    started = not get_daemon_client().is_daemon_running
    start_daemon()
    try:
        node = submit(
            PilotCalculation,
            template=orm.SinglefileData.from_string(TEMPLATE, filename="in.lj"),
            points=orm.Dict({"points": points(6)}),
            site=orm.Str(site.name),
            sweep_folder=orm.Str(str(sweep)),
        )
        assert node.inputs.code.computer.label == "slurm-pilot-login"
        assert node.inputs.code.computer.scheduler_type == "core.direct"
        wait_for(lambda: pilot_progress(sweep)["done"] >= 2, what="two points ending")
        stop_daemon()  # returns once the daemon is gone, and start_daemon once a new one answers
        before = ended(sweep)
        start_daemon()
        wait_for(lambda: node.is_terminated, timeout=900, what="the PilotCalculation to end")
    finally:
        if started:
            stop_daemon()
    assert node.is_finished_ok, node.exit_message
    results = node.outputs.results.get_dict()
    assert sorted(results) == [f"T_{i}" for i in range(6)] and all(r["returncode"] == 0 for r in results.values())
    retrieved = node.outputs.retrieved
    for pid in results:
        assert "Total wall time" in retrieved.base.repository.get_object_content(f"points/{pid}/log.lammps")
        assert len(runs(sweep, pid)) == 1, f"{pid} ran twice"
    assert all(ended(sweep)[pid]["ended"] == r["ended"] for pid, r in before.items()), "a point ended twice"
    assert pilot_progress(sweep) == {"done": 6, "running": 0, "failed": 0, "total": 6}


@pytest.mark.slow
@pytest.mark.root_only
def test_pilot_base_workchain_submits_the_job_again_while_points_are_missing(slurm, tmp_path):
    """Blocks that cannot start (no such partition) leave every point missing: PilotBaseWorkChain submits the pilot
    job again on the same folder, max_iterations times, then ends with 410 and the (empty) results of the last."""
    from mdagent_hpc.execution.profile import ensure_profile, run_here

    ensure_profile()
    from aiida import orm

    from mdagent_hpc.execution.registry import add_site
    from mdagent_hpc.workflows.pilot_job import PilotBaseWorkChain

    path = tmp_path / "slurm-pilot-nowhere.yaml"
    path.write_text(SITE.replace("name: slurm-pilot", "name: slurm-pilot-nowhere").replace("debug", "nowhere"))
    site = add_site(path)[0]
    sweep = tmp_path / "sweep"
    _, node = run_here(
        PilotBaseWorkChain,
        pilot={
            "template": orm.SinglefileData.from_string(TEMPLATE, filename="in.lj"),
            "points": orm.Dict({"points": points(2)}),
            "site": orm.Dict(site.model_dump(mode="json", exclude_unset=True)),
            "sweep_folder": orm.Str(str(sweep)),
        },
        max_iterations=orm.Int(2),
    )
    jobs = [c for c in node.called if c.process_type == "aiida.calculations:mdagent.sweep.pilot"]
    assert len(jobs) == 2 and all(job.exit_status == 410 for job in jobs)
    assert all(job.inputs.sweep_folder.value == str(sweep) for job in jobs)
    assert node.exit_status == 410 and node.exit_message.startswith("2 of 2 point(s) did not end after 2 pilot job")
    assert node.outputs.results.get_dict() == {}
