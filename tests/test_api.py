"""The Python API (`from mdagent_hpc import ...`): every function, on the session's own AiiDA profile, with real
LAMMPS and the fake OpenAI server standing in for the model."""

import os
import time
from pathlib import Path

import pytest
from openai_server import FakeOpenAIServer

import mdagent_hpc
from mdagent_hpc import (
    Evaluation,
    MDAgentError,
    PreflightReport,
    Request,
    Run,
    check,
    evaluate,
    find_potentials,
    get_run,
    list_runs,
    load_profile,
    load_request,
    make_request,
    run,
    submit,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "mdagent_hpc" / "examples" / "demo"
GOOD = (DEMO / "good.lammps").read_text()
TASK = "Heat a small Cu crystal with EAM to 800 K in NVT and report its temperature"


def fenced(script: str) -> str:
    return f"```lammps\n{script}```\n"


@pytest.fixture(scope="module")
def passed_run() -> Run:
    """One run through the API with a recorded answer: a prose answer first, then the good script."""
    load_profile()
    return run(TASK + " (api)", answers=["Sorry, I cannot help with that.", fenced(GOOD)], max_attempts=2)


def test_the_api_is_importable_from_the_package():
    assert mdagent_hpc.run is run and mdagent_hpc.Run is Run
    assert {"run", "submit", "get_run", "list_runs", "check", "evaluate", "find_potentials"} <= set(dir(mdagent_hpc))
    with pytest.raises(AttributeError, match="no_such_function"):
        mdagent_hpc.no_such_function  # noqa: B018


# -- requests -------------------------------------------------------------------------------------------------
def test_make_request_from_a_sentence_or_a_request():
    request = make_request(TASK, site="local", model="m", max_attempts=2)
    assert isinstance(request, Request) and request.site == "local" and request.loop.max_attempts == 2
    again = make_request(request, max_attempts=4)
    assert again.loop.max_attempts == 4 and again.model == "m" and request.loop.max_attempts == 2
    with pytest.raises(MDAgentError, match="describe the simulation"):
        make_request("hi")
    with pytest.raises(MDAgentError, match="loop.max_attempts"):
        make_request(TASK, max_attempts=0)
    with pytest.raises(MDAgentError, match="a task is a sentence"):
        make_request(42)


def test_load_request_reads_a_file_and_names_the_line_of_a_mistake(tmp_path):
    request = load_request(REPO / "workflows" / "requests" / "cu-melt.yaml")
    assert request.answers is None and request.limits.max_atoms == 10000 and "Cu" in request.task
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"task: {TASK}\nloop:\n  max_attempts: 3\n  patience: 2\n")
    with pytest.raises(MDAgentError, match=r"bad.yaml:4: loop.patience: unknown key; allowed: max_attempts, "):
        load_request(bad)
    with pytest.raises(MDAgentError, match="is a folder"):
        load_request(tmp_path)
    # every problem, each at its line: also in sections whose models allow extras (limits), and duplicate keys
    bad.write_text(f"task: {TASK}\nlimits:\n  max_atom: 5\nsite: a\nsite: b\n")
    with pytest.raises(MDAgentError) as info:
        load_request(bad)
    assert str(info.value).splitlines() == [
        f"{bad}:3: limits.max_atom: unknown key (did you mean max_atoms?); allowed: max_atoms, max_steps, "
        "max_walltime_s, skiprun_timeout_s",
        f"{bad}:5: site: duplicate key (first at line 4)",
    ]


# -- running and reading runs ---------------------------------------------------------------------------------
def test_run_waits_and_returns_the_run(passed_run):
    assert passed_run.verdict == "passed" and passed_run.exit_status == 0 and passed_run.state == "finished"
    assert passed_run.script == GOOD and passed_run.task.endswith("(api)")
    assert passed_run.evaluation.grade.value in ("pass", "warn")
    assert 700 < passed_run.observables["temp_mean"] < 900  # the task asked for 800 K
    failed, good = passed_run.attempts
    assert failed.stage.value == "generate" and failed.script is None
    assert failed.diagnostics[0].code == "generate.no_script"
    assert good.passed and good.job.exit_status == 0 and Path(good.job.workdir, "log.lammps").is_file()


def test_run_asks_the_configured_endpoint(monkeypatch):
    with FakeOpenAIServer([fenced(GOOD)], model="endpoint-model") as server:
        monkeypatch.setenv("MDAGENT_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("MDAGENT_LLM_MAX_RETRIES", "0")
        result = run(TASK + " (endpoint)", max_attempts=1)
        assert len(server.requests) == 1 and server.requests[0]["model"] == "endpoint-model"
    assert result.verdict == "passed" and result.attempts[0].usage.model == "endpoint-model"


def test_run_mistakes_are_one_sentence(monkeypatch):
    with pytest.raises(MDAgentError, match="no site 'nowhere'"):
        run(TASK, site="nowhere", answers=[fenced(GOOD)])
    monkeypatch.delenv("MDAGENT_LLM_BASE_URL", raising=False)
    with pytest.raises(MDAgentError, match="MDAGENT_LLM_BASE_URL"):
        run(TASK)


def test_get_run_by_pk_and_uuid(passed_run):
    assert get_run(passed_run.pk) == get_run(passed_run.uuid)
    assert get_run(passed_run.pk).attempts == passed_run.attempts


def test_get_run_of_something_else_says_so(passed_run):
    with pytest.raises(MDAgentError, match=f"node {passed_run.attempts[1].nodes['run']} is not an agent run"):
        get_run(passed_run.attempts[1].nodes["run"])
    with pytest.raises(MDAgentError, match="no node with pk 987654"):
        get_run(987654)


def test_list_runs_filters(passed_run):
    assert passed_run.pk in [r.pk for r in list_runs(50, verdict="passed", site="local", task_contains="(API)")]
    assert passed_run.pk not in [r.pk for r in list_runs(50, verdict="failed")]
    assert list_runs(5, task_contains="no run has this text") == []
    assert all(isinstance(r, Run) for r in list_runs(3)) and len(list_runs(1)) == 1
    with pytest.raises(MDAgentError, match="verdict 'good'"):
        list_runs(verdict="good")
    with pytest.raises(MDAgentError, match="limit"):
        list_runs(0)


def test_submit_returns_at_once_and_the_daemon_finishes_it():
    with pytest.raises(MDAgentError, match="recorded answers"):
        submit(make_request(TASK, answers=[fenced(GOOD)]))
    load_profile()  # before AiiDA is imported
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client()
    with FakeOpenAIServer([fenced(GOOD)]) as server:
        env = {"MDAGENT_LLM_BASE_URL": server.base_url, "MDAGENT_LLM_MAX_RETRIES": "0"}
        os.environ.update(env)  # the daemon inherits the environment it starts with
        try:
            submitted = submit(TASK + " (daemon)", max_attempts=1)
            assert submitted.verdict == "running" and submitted.state in ("created", "waiting", "running")
            deadline = time.monotonic() + 180
            while get_run(submitted.pk).verdict == "running" and time.monotonic() < deadline:
                time.sleep(1)
        finally:
            client.stop_daemon(wait=True, timeout=60)
            for key in env:
                os.environ.pop(key)
    finished = get_run(submitted.pk)
    assert finished.verdict == "passed", finished.exit_message
    assert finished.observables["temp_final"] > 0


# -- the tools ------------------------------------------------------------------------------------------------
def test_check_reports_problems_and_raises_only_for_non_scripts(tmp_path):
    good = tmp_path / "in.good"
    good.write_text(GOOD)
    report = check(good)
    assert isinstance(report, PreflightReport) and report.ok and report.skiprun_seconds is not None
    assert report.potentials[0].name == "Cu_u3.eam" and report.potentials[0].md5
    typo = tmp_path / "in.typo"
    typo.write_text((DEMO / "wrong-potential.lammps").read_text())
    bad = check(typo, dry_run=False)
    assert not bad.ok and bad.diagnostics[0].code == "potential.missing" and bad.skiprun_seconds is None
    assert not check(good, dry_run=False, max_atoms=100).ok  # the crystal has 256 atoms
    with pytest.raises(MDAgentError, match="no such script"):
        check(tmp_path / "in.none")
    with pytest.raises(MDAgentError, match="is a folder"):
        check(tmp_path)
    with pytest.raises(MDAgentError, match="run folder"):
        check(good, run_dir=tmp_path / "nowhere")


def test_evaluate_a_log(passed_run, tmp_path):
    workdir = Path(passed_run.attempts[-1].job.workdir)
    result = evaluate(workdir / "log.lammps", workdir / "in.lammps")
    assert isinstance(result, Evaluation) and result.grade == passed_run.evaluation.grade
    assert result.observables == pytest.approx(passed_run.observables)
    empty = tmp_path / "log.lammps"
    empty.write_text("")
    with pytest.raises(MDAgentError, match="empty"):
        evaluate(empty)
    with pytest.raises(MDAgentError, match="folder"):
        evaluate(tmp_path)


def test_find_potentials():
    found = find_potentials("Cu")
    assert any(p.name == "Cu_u3.eam" for p in found) and all("Cu" in p.elements for p in found)
    alloys = find_potentials(["Cu", "Ni"], style="eam/alloy")
    assert alloys and all({"Cu", "Ni"} <= set(p.elements) for p in alloys)
    with pytest.raises(MDAgentError, match="cu is not an element symbol"):
        find_potentials("cu")
    with pytest.raises(MDAgentError, match="not an element symbol"):
        find_potentials([])


def test_load_profile_and_a_home_that_cannot_be_made(tmp_path, monkeypatch):
    assert load_profile().name == load_profile().name
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MDAGENT_HOME", str(blocker / "home"))
    with pytest.raises(MDAgentError, match="cannot create mdagent's folder"):
        load_profile()
