"""A sweep interrupted in its own process (Ctrl-C, SIGKILL) keeps the table of the points it finished, and running
the same spec again (or `mdagent sweep resume ID`) reuses those points and the validated template: the model gets
no new request and no passed point runs again. On both engines: one job per point on this machine, and Parsl
pilot jobs on the test Slurm cluster."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mdagent_hpc.configfile import load_config
from mdagent_hpc.provenance.sweeps import recorded_points
from mdagent_hpc.sweeps.spec import SweepSpec, expand

REPO = Path(__file__).resolve().parents[1]
MDAGENT_LMP = str(Path(sys.executable).parent / "mdagent-lmp")
EIGHT_TEMPERATURES = [{"name": "T", "values": [0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0]}]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def profile():
    from mdagent_hpc.api import load_profile

    return load_profile()


def add_site(tmp_path: Path, name: str, body: str) -> None:
    from mdagent_hpc.execution.registry import add_site as add

    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{body}")
    add(path)


def spec_file(tmp_path: Path, site: str, engine: str) -> tuple[Path, SweepSpec, list[str]]:
    """The recorded LJ sweep over eight temperatures, without its answers (the fake server gives them); its
    description names the test, so that no other test's sweep is the same spec."""
    recorded = load_config(REPO / "workflows/sweeps/lj-melt-temperature.yaml", SweepSpec, "a sweep spec")
    data = recorded.model_dump(mode="json")
    data.update(answers=None, site=site, engine=engine, parameters=EIGHT_TEMPERATURES, description=tmp_path.name)
    spec = SweepSpec(**data)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    return path, spec, list(recorded.answers)


def start(args: list[str], server) -> subprocess.Popen:
    env = {
        **os.environ,
        "MDAGENT_LLM_BASE_URL": server.base_url,
        "MDAGENT_LLM_MODEL": "fake-model",
        "MDAGENT_LLM_MAX_RETRIES": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "mdagent_hpc.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def newest_sweep(after: int | None):
    from aiida import orm

    from mdagent_hpc.provenance import SWEEP_TYPE

    qb = orm.QueryBuilder().append(orm.WorkChainNode, filters={"process_type": SWEEP_TYPE}, project=["id"])
    pks = [pk for (pk,) in qb.all() if after is None or pk > after]
    return max(pks) if pks else None


def running_job(node) -> bool:
    """A LAMMPS or pilot job of the sweep runs (its CalcJob waits on the scheduler) and nothing is just being
    created: AiiDA cannot kill a process in the instant it creates a child (docs/limits.md)."""
    descendants = [n for n in node.called_descendants if not n.is_terminated]
    jobs = ("LammpsCalculation", "PilotCalculation")
    return any(n.process_label in jobs and n.get_job_id() for n in descendants) and not any(
        n.process_state is not None and n.process_state.value == "created" for n in descendants
    )


def interrupt_after_two_points(proc: subprocess.Popen, sig: int, before: int | None) -> int:
    """Wait until the sweep this process runs has recorded 2 points and runs a job for more; send `sig`; its pk."""
    from aiida import orm

    deadline = time.monotonic() + 900
    pk = None
    while time.monotonic() < deadline and proc.poll() is None:
        pk = pk or newest_sweep(before)
        if pk is not None:
            node = orm.load_node(pk)
            if node.base.extras.get("points_done", 0) >= 2 and running_job(node):
                break
        time.sleep(0.5)
    assert proc.poll() is None, f"the sweep ended before it was interrupted: {proc.communicate()[1][-3000:]}"
    proc.send_signal(sig)
    proc.wait(timeout=300)
    return pk


def children(node, prefix: str) -> dict:
    from aiida.common.links import LinkType

    links = node.base.links.get_outgoing(link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC)).all()
    return {link.link_label: link.node for link in links if link.link_label.startswith(prefix)}


def check_interrupted_and_resumed(tmp_path, fake_openai, site: str, engine: str, sig: int):
    from aiida import orm

    from mdagent_hpc.api import get_sweep

    path, spec, answers = spec_file(tmp_path, site, engine)
    server = fake_openai(answers)
    proc = start(["sweep", "--spec", str(path), "--yes", "--json"], server)
    first_pk = interrupt_after_two_points(proc, sig, newest_sweep(None))
    out, err = proc.communicate()
    assert proc.returncode != 0 and "Traceback" not in err, err[-4000:]
    first = get_sweep(first_pk)
    assert first.verdict == "failed" and 2 <= first.points_done < 8
    # its finished points are tabulated: in the JSON it printed (Ctrl-C) and by `sweep show` (either way)
    passed = sorted(row["point"] for row in first.rows if row["ok"])
    assert len(passed) == first.points_done
    if sig == signal.SIGINT:
        assert sorted(r["point"] for r in json.loads(out)["rows"] if r["ok"]) == passed
    shown = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "sweep", "show", str(first_pk), "--json"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert Path(json.loads(shown.stdout)["files"]["csv"]).read_text().count("\n") == len(first.rows) + 1
    requests = len(server.requests)
    assert requests == 1

    # again: the same spec file (SIGINT) or `mdagent sweep resume ID` (SIGKILL)
    args = (
        ["sweep", "--spec", str(path), "--yes", "--json"]
        if sig == signal.SIGINT
        else ["sweep", "resume", str(first_pk), "--json"]
    )
    again = start(args, server)
    out, err = again.communicate(timeout=1800)
    assert again.returncode == 0, err[-3000:]
    second = json.loads(out)
    assert second["verdict"] == "passed" and len(second["rows"]) == 8 and all(r["ok"] for r in second["rows"])
    assert len(server.requests) == requests  # no model call: the template was reused
    assert second["llm_calls"] == 0
    node = orm.load_node(second["pk"])
    assert not children(node, "validate") and not children(node, "correct")
    reused = sorted(node.inputs.reuse.points)
    assert reused == passed  # every passed point reused, none run again
    points = {p.id for p in expand(spec)}
    records = recorded_points(node)
    assert {n["vars"]["T"] for n in records} | {node.inputs.reuse.points[pid]["vars"]["T"] for pid in reused} == {
        p.vars["T"] for p in expand(spec)
    }
    assert sorted(f"{n['id']}_t{n['template']}" for n in records) == sorted(f"{pid}_t1" for pid in points - set(passed))
    return first_pk, node


def test_calcjob_sweep_interrupted_with_ctrl_c_keeps_its_table_and_the_same_spec_reuses_it(
    profile, tmp_path, fake_openai
):
    add_site(
        tmp_path,
        "local-resume",
        "scheduler: direct\ntransport: {type: local, use_login_shell: false, "
        f"safe_interval: 0}}\npoll_interval: 0.2\nlammps: {{binary: {MDAGENT_LMP}}}\n"
        "sweep: {max_concurrent_jobs: 1}\n",
    )
    check_interrupted_and_resumed(tmp_path, fake_openai, "local-resume", "calcjob", signal.SIGINT)


def test_calcjob_sweep_killed_with_sigkill_is_resumed_by_id(profile, tmp_path, fake_openai):
    add_site(
        tmp_path,
        "local-resume",
        "scheduler: direct\ntransport: {type: local, use_login_shell: false, "
        f"safe_interval: 0}}\npoll_interval: 0.2\nlammps: {{binary: {MDAGENT_LMP}}}\n"
        "sweep: {max_concurrent_jobs: 1}\n",
    )
    check_interrupted_and_resumed(tmp_path, fake_openai, "local-resume", "calcjob", signal.SIGKILL)


PILOT_SITE = (
    "scheduler: slurm\ntransport: {type: local, use_login_shell: false, safe_interval: 0}\nqueue: debug\n"
    f"poll_interval: 1\nresources: {{memory_mb: 1000, walltime: 600}}\nlammps: {{binary: {MDAGENT_LMP}}}\n"
    "pilot: {cores_per_node: 1, address: 127.0.0.1, lost_after: 10}\n"
)


def runs_of_each_point(node) -> dict[str, int]:
    folder = Path(node.inputs.sweep_folder.value)
    return {p.name: len(p.joinpath("runs.log").read_text().splitlines()) for p in (folder / "points").iterdir()}


@pytest.mark.root_only
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_parsl_sweep_interrupted_mid_pilot_resumes_on_its_sweep_folder(slurm, profile, tmp_path, fake_openai, sig):
    from aiida import orm

    add_site(tmp_path, "slurm-resume-pilot", PILOT_SITE)
    first_pk, node = check_interrupted_and_resumed(tmp_path, fake_openai, "slurm-resume-pilot", "parsl", sig)
    first = orm.load_node(first_pk)
    assert node.inputs.sweep_folder.value == first.inputs.sweep_folder.value  # the folder's result.json are reused
    pilots = children(node, "pilot_")
    assert pilots and all(p.process_type == "aiida.workflows:mdagent.sweep.pilot_job" for p in pilots.values())
    runs = runs_of_each_point(node)
    # the validating probe ran in the agent run; every other point ran in the folder, and none that ended twice
    # (a point cut off by Ctrl-C had not ended: it may start again)
    assert len(runs) == 7
    if sig == signal.SIGKILL:  # the first driver was not stopped: it ran its points to the end, once each
        assert set(runs.values()) == {1}
