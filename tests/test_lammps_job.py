"""LammpsJobWorkChain and LammpsCalculation on this machine (`lammps@local`: real LAMMPS, real AiiDA).

The scheduler faults need a scheduler: they are in test_clusters.py; the fault table and policy in test_faults.py.
"""

import io

import psutil
import pytest

from mdagent_hpc.lammps.templates import lj_script

GOOD = lj_script(4, 100).replace("run 100", "restart 50 lj.restart\nrun 100")


@pytest.fixture(scope="module")
def code():
    from mdagent_hpc.execution.profile import ensure_profile

    ensure_profile()
    from aiida import orm

    return orm.load_code("lammps@local")


def run_job(code, script: str, **inputs):
    from aiida import orm

    from mdagent_hpc.execution.profile import run_here
    from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain

    node = orm.SinglefileData(io.BytesIO(script.encode()), filename="in.lammps")
    return run_here(
        LammpsJobWorkChain,
        lammps={"code": code, "script": node, "metadata": {"options": {"max_wallclock_seconds": 120}}},
        **inputs,
    )[1]


def test_a_completed_run_exposes_job_log_and_results(code):
    node = run_job(code, GOOD)
    assert node.is_finished_ok, node.exit_message
    (calc,) = node.called
    assert node.outputs.retrieved.pk == calc.outputs.retrieved.pk and node.outputs.results["completed"]
    job = node.outputs.job.get_dict()
    assert job == {
        "site": "local",
        "job_id": calc.get_job_id(),
        "exit_status": 0,
        "accounting": {},
        "fault": None,
        "action": None,
        "resubmissions": 0,
        "restarts": 0,
        "workdir": calc.get_remote_workdir(),
    }
    # the restart files the script writes come back, asked for through aiida-lammps' settings input
    assert calc.inputs.settings["additional_retrieve_list"] == ["lj.restart", "lj.restart.*"]
    names = calc.outputs.retrieved.base.repository.list_object_names()
    assert {"log.lammps", "lammps.out", "lj.restart.50", "lj.restart.100"} <= set(names)
    assert node.outputs.results["restart_files"] == ["lj.restart.100", "lj.restart.50"]


def test_aiida_lammps_tools_read_our_runs(code):
    from aiida_lammps.calculations.raw import LammpsRawCalculation
    from aiida_lammps.parsers.raw import LammpsRawParser

    node = run_job(code, lj_script(4, 20))
    (calc,) = node.called
    assert issubclass(calc.process_class, LammpsRawCalculation)
    assert calc.base.repository.get_object_content("_aiidasubmit.sh").count("'-in' 'in.lammps'") == 1
    outputs, _ = LammpsRawParser.parse_from_node(calc, store_provenance=False)
    assert outputs["results"]["compute_variables"]["total_wall_time"]  # their parser, on our lammps.out


def test_a_lammps_error_is_not_retried_and_is_exposed(code):
    from aiida import orm

    broken = lj_script(4, 20).replace("fix 1 all nve", "fix 1 all nonesuch")
    node = run_job(code, broken, on_failure=orm.Dict({"node_failure": "resubmit", "connection_lost": "resubmit"}))
    assert node.exit_status == 410 and "LAMMPS stopped with an ERROR" in node.exit_message
    (calc,) = node.called
    assert calc.exit_status == 320
    assert any("nonesuch" in error for error in node.outputs.results["errors"])
    assert "log.lammps" in node.outputs.retrieved.base.repository.list_object_names()
    assert node.outputs.job["exit_status"] == 320 and node.outputs.job["fault"] is None


def test_no_log_is_lammps_failing_too(code):
    from aiida import orm

    from mdagent_hpc.execution.computers import local_site
    from mdagent_hpc.execution.profile import run_here
    from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain

    script = orm.SinglefileData(io.BytesIO(b"units lj\n"), filename="in.lammps")
    true = orm.InstalledCode(
        label="true",
        computer=orm.load_computer(local_site().name),
        filepath_executable="/bin/true",
        default_calc_job_plugin="mdagent.lammps",
    ).store()
    _, node = run_here(
        LammpsJobWorkChain,
        lammps={"code": true, "script": script, "metadata": {"options": {"max_wallclock_seconds": 60}}},
    )
    assert node.exit_status == 410 and node.called[0].exit_status == 310  # ERROR_NO_LOG
    assert "job" in node.outputs and "retrieved" in node.outputs


def test_a_killed_job_counts_as_cancelled(code):
    """`verdi process kill` on the LAMMPS job (through the daemon): the site's cancellation policy applies."""
    import time

    from aiida import orm
    from aiida.engine import submit
    from aiida.engine.daemon.client import get_daemon_client
    from aiida.engine.processes.control import kill_processes

    from mdagent_hpc.execution.profile import start_daemon
    from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain

    script = orm.SinglefileData(io.BytesIO(lj_script(8, 400000).encode()), filename="in.lammps")
    client = get_daemon_client()
    start_daemon(timeout=60)
    try:
        node = submit(
            LammpsJobWorkChain,
            lammps={"code": code, "script": script, "metadata": {"options": {"max_wallclock_seconds": 600}}},
            on_failure=orm.Dict({"cancelled": "fail"}),
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (node.called and node.called[0].get_job_id()):
            time.sleep(0.3)
        job = psutil.Process(int(node.called[0].get_job_id()))
        while time.monotonic() < deadline and not any(p.name() == "lmp" for p in job.children(recursive=True)):
            time.sleep(0.3)  # LAMMPS runs (killed before it starts, the sandbox could outlive the job script)
        kill_processes([node.called[0]], timeout=60)
        while time.monotonic() < deadline and not node.is_terminated:
            time.sleep(0.3)
    finally:
        client.stop_daemon(wait=True, timeout=60)
    assert node.called[0].is_killed
    job.wait(timeout=30)  # the job itself stops (raises psutil.TimeoutExpired if it runs on)
    assert node.exit_status == 420 and "cancelled" in node.exit_message
    job = node.outputs.job.get_dict()
    assert job["fault"] == "cancelled" and job["action"] == "fail" and job["job_id"] == node.called[0].get_job_id()
