"""Sweeps for real: `mdagent sweep --spec` on every file of workflows/sweeps/ (recorded model answers, real AiiDA,
real LAMMPS), the template fixed once when it fails at the hot end, per-point jobs on the test Slurm cluster with the
site's cap, Parsl pilot jobs on Slurm, and a daemon restart in the middle of a sweep."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdagent_hpc.configfile import load_config
from mdagent_hpc.provenance.sweeps import recorded_points
from mdagent_hpc.sweeps.spec import SweepSpec, expand

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "workflows" / "sweeps"
SPECS = sorted(SWEEPS.glob("*.yaml"))
MDAGENT_LMP = str(Path(sys.executable).parent / "mdagent-lmp")
ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="starts Slurm: needs root")

pytestmark = pytest.mark.slow


def mdagent(*args, env_extra=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env_extra or {})},
        timeout=timeout,
    )


def load(name: str) -> SweepSpec:
    return load_config(SWEEPS / name, SweepSpec, "a sweep spec")


@pytest.fixture(scope="module")
def profile():
    from mdagent_hpc.api import load_profile

    return load_profile()


def add_site(tmp_path: Path, name: str, body: str):
    from mdagent_hpc.execution.registry import add_site as add

    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{body}")
    return add(path)[0]


def children(node, prefix: str) -> dict:
    """The sweep's children whose link label starts with `prefix`, by label."""
    from aiida.common.links import LinkType

    links = node.base.links.get_outgoing(link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC)).all()
    return {link.link_label: link.node for link in links if link.link_label.startswith(prefix)}


def check_provenance(node, spec: SweepSpec) -> None:
    """Every point is a SweepPoint under the sweep, made by its batch's record_points with its template, values, log
    and thermo rows."""
    from mdagent_hpc.provenance import POINT_NODE_TYPE

    points = {p.id: p for p in expand(spec)}
    assert sorted(node.outputs.points) == sorted(points)
    for pid, record in node.outputs.points.items():
        result = record.get_dict()
        assert record.node_type == POINT_NODE_TYPE
        assert result["ok"] and result["vars"] == points[pid].vars and result["rows"] >= 10
        call = record.creator
        assert call.process_label == "record_points"
        i = next(link.link_label for link in call.base.links.get_outgoing().all() if link.node.pk == record.pk)
        i = i.removeprefix("result_")
        assert call.inputs.points[int(i)]["vars"] == points[pid].vars
        assert "variable" in call.inputs.template.get_content()
        log = call.outputs[f"log_{i}"] if f"log_{i}" in call.outputs else call.inputs[f"log_{i}"]
        assert "Total wall time" in log.get_content()
        assert len(call.outputs[f"thermo_{i}"]["rows"]) == result["rows"] + 1
        assert record.base.extras.get("query")["point"] == pid  # its query fields, recorded as it was made
    assert node.outputs.plot.get_content(mode="rb")[:4] == b"\x89PNG"
    assert node.outputs.table.get_content().splitlines()[0].startswith("point,")
    # the query docs/sweeps.md gives finds every point's results (a point re-run after a correction: one per template)
    from aiida import orm

    qb = orm.QueryBuilder().append(orm.WorkflowNode, filters={"id": node.pk}, tag="s")
    qb.append(orm.CalcFunctionNode, with_incoming="s", filters={"attributes.process_label": "record_points"}, tag="p")
    qb.append(orm.Data, with_incoming="p", edge_filters={"label": {"like": "result_%"}}, project="attributes")
    found = qb.all(flat=True)
    assert {r["id"] for r in found} == set(points)
    latest = {pid: record["template"] for pid, record in node.outputs.points.items()}
    assert all(r["template"] <= latest[r["id"]] for r in found)


@pytest.fixture(scope="module")
def ran():
    """`mdagent sweep --spec FILE --yes --json` for each spec file, once (the JSON it printed, by file name)."""
    done = {}

    def run(path: Path) -> dict:
        if path.name not in done:
            result = mdagent("sweep", "--spec", str(path), "--yes", "--json")
            assert result.returncode == 0, result.stderr[-3000:]
            assert "Traceback" not in result.stderr and "[REPORT]" not in result.stderr
            done[path.name] = json.loads(result.stdout)
        return done[path.name]

    return run


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_sweep_file_runs_with_every_point_in_provenance(path, profile, ran):
    from aiida import orm

    spec = load_config(path, SweepSpec, "a sweep spec")
    sweep = ran(path)
    n = len(expand(spec))
    assert sweep["verdict"] == "passed" and sweep["points_done"] == sweep["points_total"] == n
    assert sweep["llm_calls"] == len(spec.answers)  # one template (+ one correction), whatever the points
    assert len(sweep["rows"]) == n and all(row["ok"] for row in sweep["rows"])
    assert Path(sweep["files"]["png"]).read_bytes()[:4] == b"\x89PNG" and Path(sweep["files"]["csv"]).is_file()
    node = orm.load_node(sweep["pk"])
    check_provenance(node, spec)
    first = spec.observables[0].name
    assert all(row[f"{first}_err"] is not None and row[f"{first}_err"] >= 0 for row in sweep["rows"])
    shown = mdagent("sweep", "show", str(sweep["pk"]))
    assert shown.returncode == 0 and "png:" in shown.stdout and sweep["rows"][0]["point"] in shown.stdout
    point = next(iter(node.outputs.points.values()))
    as_run = mdagent("show", str(point.pk))  # a point is listed with the runs: showing it says where it belongs
    assert as_run.returncode != 0 and f"is a point of sweep {node.pk}" in as_run.stderr


def test_a_template_failing_at_the_hot_end_is_corrected_once_and_only_failed_points_run_again(profile, ran):
    """lj-timestep-correction: timestep 0.02 passes at T = 0.6, loses atoms at T = 3.0; one correction."""
    from aiida import orm

    spec = load("lj-timestep-correction.yaml")
    node = orm.load_node(ran(SWEEPS / "lj-timestep-correction.yaml")["pk"])
    assert sorted(children(node, "validate")) == ["validate"] and sorted(children(node, "correct")) == ["correct_1"]
    # the probe at the hot end failed with template 1 and was re-done (by the correcting agent) with template 2
    records = {f"{n['id']}_t{n['template']}": n.get_dict() for n in recorded_points(node)}
    assert not records["T_3_t1"]["ok"] and "Lost atoms" in " ".join(records["T_3_t1"]["problems"])
    assert records["T_3_t2"]["ok"] and records["T_0p6_t1"]["ok"]
    # only the failed point ran again: the cold probe kept its template-1 result, the rest ran once with template 2
    assert sorted(children(node, "point_")) == ["point_T_1p2_t2", "point_T_1p8_t2", "point_T_2p4_t2", "point_T_3_t1"]
    assert sorted(records) == ["T_0p6_t1", "T_1p2_t2", "T_1p8_t2", "T_2p4_t2", "T_3_t1", "T_3_t2"]
    assert node.outputs.points["T_0p6"].get_dict()["template"] == 1
    assert node.outputs.points["T_3"].get_dict()["template"] == 2
    assert "timestep 0.005" in node.outputs.template.get_content()
    check_provenance(node, spec)
    state = json.loads(mdagent("sweep", "status", str(node.pk), "--json").stdout)
    assert (state["verdict"], state["points_done"], state["points_failed"], state["llm_calls"]) == ("passed", 5, 0, 2)
    listed = mdagent("sweep", "status")
    assert listed.returncode == 0 and f"{node.pk} " in listed.stdout and "5/5" in listed.stdout


@ROOT
def test_a_sweep_of_per_point_jobs_on_slurm_keeps_to_the_site_cap(slurm, profile, tmp_path):
    from aiida import orm

    add_site(
        tmp_path,
        "slurm-sweep",
        "scheduler: slurm\ntransport: {type: local, use_login_shell: false, "
        f"safe_interval: 0}}\nqueue: debug\npoll_interval: 0.5\nresources: {{memory_mb: 1000, walltime: 600}}\n"
        f"lammps: {{binary: {MDAGENT_LMP}}}\nsweep: {{max_concurrent_jobs: 2}}\n",
    )
    spec = load("lj-melt-temperature.yaml")
    result = mdagent(
        "sweep", "--spec", str(SWEEPS / "lj-melt-temperature.yaml"), "--site", "slurm-sweep", "--yes", "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    node = orm.load_node(json.loads(result.stdout)["pk"])
    check_provenance(node, spec)
    jobs = list(children(node, "point_").values())
    assert len(jobs) == len(expand(spec)) - 1  # the first probe ran inside the validating agent run
    calcs = [job.called[0] for job in jobs]
    assert all(c.computer.label == "slurm-sweep" and c.computer.scheduler_type == "core.slurm" for c in calcs)
    assert all(
        c.get_job_id() and "'-var' 'T'" in c.base.repository.get_object_content("_aiidasubmit.sh") for c in calcs
    )
    events = sorted([(c.ctime, 1) for c in jobs] + [(c.mtime, -1) for c in jobs])
    in_flight = max(sum(step for _, step in events[: i + 1]) for i in range(len(events)))
    assert in_flight <= 2


@ROOT
def test_a_sweep_through_parsl_pilot_jobs_on_slurm(slurm, profile, tmp_path):
    from aiida import orm

    add_site(
        tmp_path,
        "slurm-sweep-pilot",
        "scheduler: slurm\ntransport: {type: local, use_login_shell: false, "
        f"safe_interval: 0}}\nqueue: debug\npoll_interval: 1\nresources: {{memory_mb: 1000, walltime: 600}}\n"
        f"lammps: {{binary: {MDAGENT_LMP}}}\npilot: {{cores_per_node: 2, address: 127.0.0.1, lost_after: 10}}\n",
    )
    spec = load("lj-melt-temperature.yaml").model_copy(update={"engine": "parsl"})
    folder = tmp_path / "spec.yaml"
    import yaml

    folder.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    result = mdagent("sweep", "--spec", str(folder), "--site", "slurm-sweep-pilot", "--yes", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = json.loads(result.stdout)
    assert sweep["engine"] == "parsl" and sweep["llm_calls"] == 1
    node = orm.load_node(sweep["pk"])
    check_provenance(node, spec)
    pilots = children(node, "pilot_")
    # each batch in a PilotBaseWorkChain around one PilotCalculation (no point was missing: no second job)
    assert pilots and all(p.process_type == "aiida.workflows:mdagent.sweep.pilot_job" for p in pilots.values())
    assert all(
        [c.process_type for c in p.called] == ["aiida.calculations:mdagent.sweep.pilot"] for p in pilots.values()
    )
    assert not children(node, "point_")  # no per-point job: the pilot ran them
    ran = [pid for p in pilots.values() for pid in p.outputs.results.get_dict()]
    assert sorted(ran) == sorted(p.id for p in expand(spec)[1:])  # each point once; the first probe in the agent run
    # a batch's points recorded by one record_points: the validating point, the other probe, then the other three
    assert len(children(node, "records_")) == 3 and len(recorded_points(node)) == len(expand(spec))
    assert Path(node.inputs.sweep_folder.value).is_dir()


def running_job(node) -> bool:
    """A LAMMPS job of the sweep runs (its CalcJob waits on the scheduler) and nothing is just being created."""
    descendants = [n for n in node.called_descendants if not n.is_terminated]
    return any(n.process_label == "LammpsCalculation" and n.get_job_id() for n in descendants) and not any(
        n.process_state is not None and n.process_state.value == "created" for n in descendants
    )


def test_a_daemon_restart_mid_sweep_loses_and_repeats_no_point(profile, tmp_path, fake_openai):
    from aiida import orm
    from aiida.engine.daemon.client import get_daemon_client

    from mdagent_hpc.api import get_sweep, sweep
    from mdagent_hpc.execution.profile import start_daemon

    add_site(
        tmp_path,
        "local-one-at-a-time",
        "scheduler: direct\ntransport: {type: local, use_login_shell: false, "
        f"safe_interval: 0}}\npoll_interval: 0.2\nlammps: {{binary: {MDAGENT_LMP}}}\n"
        "sweep: {max_concurrent_jobs: 1}\n",
    )
    recorded = load("lj-melt-temperature.yaml")
    spec = recorded.model_copy(update={"answers": None, "site": "local-one-at-a-time"})
    server = fake_openai(list(recorded.answers))
    env = {"MDAGENT_LLM_BASE_URL": server.base_url, "MDAGENT_LLM_MODEL": "fake-model", "MDAGENT_LLM_MAX_RETRIES": "0"}
    os.environ.update(env)  # the daemon inherits the environment it starts with
    client = get_daemon_client()
    try:
        pk = sweep(spec, daemon=True).pk
        deadline = time.monotonic() + 300
        # Stopped while a point's LAMMPS job runs: not in the instant a child is being submitted, whose launch task
        # AiiDA can lose with the broker (a process left `created`; docs/limits.md).
        while not (get_sweep(pk).points_done >= 2 and running_job(orm.load_node(pk))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get_sweep(pk).verdict == "running", "the sweep ended before the restart: nothing was tested"
        client.stop_daemon(wait=True, timeout=60)
        between = get_sweep(pk)
        start_daemon()
        while not orm.load_node(pk).is_terminated and time.monotonic() < deadline + 600:
            time.sleep(1)
    finally:
        client.stop_daemon(wait=True, timeout=60)
        for key in env:
            os.environ.pop(key)
    node = orm.load_node(pk)
    from aiida.cmdline.utils.common import get_workchain_report

    assert node.is_finished_ok, f"{node.process_state} {node.exit_message}\n{get_workchain_report(node, 'REPORT')}"
    assert 2 <= between.points_done < between.points_total
    check_provenance(node, spec)
    n = len(expand(spec))
    assert sorted(children(node, "point_")) == sorted(f"point_{p.id}_t1" for p in expand(spec)[1:])
    assert len(recorded_points(node)) == n  # each point recorded once
    assert len(server.requests) == 1  # the restart asked the model nothing


def test_a_sweep_over_the_core_hour_cap_at_its_measured_time_stops_before_the_points_fan_out(profile, tmp_path):
    from mdagent_hpc.api import get_sweep, plan_sweep, sweep

    # The spec declares 1 ms a point and the site counts points at 1 ms until one is measured, so the plan passes
    # (5 points: 0.005 core-seconds of the 0.036 allowed); the validation run measures LAMMPS's real time, tenths
    # of a second: 5 points need more than the cap.
    add_site(
        tmp_path,
        "local-tiny-budget",
        "scheduler: direct\ntransport: {type: local, use_login_shell: false, "
        f"safe_interval: 0}}\npoll_interval: 0.2\nlammps: {{binary: {MDAGENT_LMP}}}\n"
        "sweep: {max_core_hours: 0.00001, point_seconds: 0.001}\n",
    )
    spec = load("lj-melt-temperature.yaml").model_copy(update={"site": "local-tiny-budget", "point_seconds": 0.001})
    assert plan_sweep(spec).points == 5
    run = sweep(spec)
    assert run.exit_status == 420, run.exit_message
    assert run.exit_message.startswith("the validation run took ") and "over the site's 1e-05" in run.exit_message
    from aiida import orm

    node = orm.load_node(run.pk)
    assert not children(node, "point_") and len(recorded_points(node)) == 1  # only the validated probe
    assert get_sweep(run.pk).points_done == 1
