"""The agent loop end to end: a real AiiDA profile, real LAMMPS under bubblewrap, a real HTTP server speaking
the OpenAI API (FakeOpenAIServer, the test double for vLLM) replaying scripted answers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_server import FakeOpenAIServer

from mdagent_hpc.models import Stage

DATA = Path(__file__).resolve().parents[1] / "mdagent_hpc" / "examples" / "demo"
TASK = "Heat a small Cu crystal with EAM to 800 K in NVT"


def answer(name: str) -> str:
    return json.dumps({"script": (DATA / name).read_text(), "files": [], "potentials": [], "notes": ""})


THREE_ATTEMPTS = [answer("wrong-potential.lammps"), answer("lost-atoms.lammps"), answer("good.lammps")]


def mdagent(*args, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def aiida_profile():
    from mdagent_hpc.execution.profile import ensure_profile

    return ensure_profile()


def llm_env(server) -> dict:
    return {"MDAGENT_LLM_BASE_URL": server.base_url, "MDAGENT_LLM_MODEL": "fake-model", "MDAGENT_LLM_MAX_RETRIES": "0"}


def test_three_attempts_end_to_end_with_provenance(aiida_profile):
    from aiida import orm

    with FakeOpenAIServer(THREE_ATTEMPTS) as server:
        result = mdagent("run", TASK, "--json", env_extra=llm_env(server))
        prompts = [r["messages"] for r in server.requests]
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["verdict"] == "passed" and summary["exit_status"] == 0
    steps = summary["attempts"]
    assert len(steps) == 3
    assert steps[0]["preflight"]["ok"] is False
    assert steps[0]["preflight"]["diagnostics"][0]["code"] == "potential.missing"
    assert "run" not in steps[0]  # a failed preflight never reaches the scheduler
    assert steps[1]["evaluation"]["grade"] == "fail"
    assert any(f["rule"] == "lost_atoms" for f in steps[1]["evaluation"]["findings"])
    assert steps[2]["evaluation"]["grade"] in ("pass", "warn")

    # The feedback reached the model: attempt 2's prompt names the missing file, attempt 3's the lost atoms.
    assert "Cu_u3_typo.eam" in prompts[1][-1]["content"] and "Cu_u3.eam" in prompts[1][-1]["content"]
    assert "Lost atoms" in prompts[2][-1]["content"]

    # One Attempt record per attempt, in provenance: what it reached, what the model heard, what each step took.
    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.runs import get_run

    run = get_run(EVERYONE, summary["pk"])
    first, second, third = run.attempts
    assert [a.stage for a in run.attempts] == [Stage.PREFLIGHT, Stage.EVALUATE, Stage.EVALUATE]
    assert (
        first.diagnostics[0].code == "potential.missing"
        and first.job is None
        and set(first.nodes) == {"generate", "preflight"}
    )
    assert first.feedback and first.feedback in prompts[1][-1]["content"]  # the model heard exactly this
    assert second.feedback in prompts[2][-1]["content"] and second.error_key.startswith("eval:")
    assert third.passed and third.feedback is None and run.script == third.script
    assert set(third.nodes) == set(third.seconds) == {"generate", "preflight", "run", "evaluate"}
    assert all(seconds > 0 for seconds in third.seconds.values())
    assert third.job.exit_status == 0 and third.job.site == "local" and third.job.workdir
    assert third.usage.model == "fake-model" and third.usage.prompt_tokens > 0 and third.usage.latency_s > 0
    assert run.observables["temp_mean"] == third.evaluation.observables["temp_mean"]

    # The records name the workflow's own steps; each is a node it called, linked to its data.
    node = orm.load_node(summary["pk"])
    assert node.is_finished_ok
    assert sorted(node.outputs.attempts) == ["attempt_1", "attempt_2", "attempt_3"]
    called = {child.pk: child.process_label for child in node.called}
    assert sorted(called) == sorted(pk for a in run.attempts for pk in a.nodes.values())
    assert called[third.nodes["run"]] == "LammpsJobWorkChain" and called[first.nodes["generate"]] == "generate_script"

    # The evaluation was computed from the run's retrieved log and the generated script.
    qb = orm.QueryBuilder()
    qb.append(orm.WorkChainNode, filters={"id": third.nodes["run"]}, tag="run")
    qb.append(orm.FolderData, with_incoming="run", edge_filters={"label": "retrieved"}, tag="log")
    qb.append(orm.CalcFunctionNode, with_incoming="log", project=["id"], tag="ev")
    qb.append(orm.Dict, with_incoming="ev", project=["attributes.grade"])
    assert qb.all() == [[third.nodes["evaluate"], third.evaluation.grade.value]]
    gen = orm.load_node(third.nodes["generate"])
    assert gen.inputs.settings.get_dict()["model"] == "fake-model"
    assert "api_key" not in gen.inputs.settings.get_dict()
    assert gen.outputs.response.get_dict()["usage"]["total_tokens"] > 0
    assert node.outputs.script.uuid == gen.outputs.script.uuid


def test_same_error_twice_changes_strategy_then_stops_stuck(aiida_profile):
    lost = answer("lost-atoms.lammps")
    with FakeOpenAIServer([lost, lost, lost]) as server:
        result = mdagent("run", TASK, "--json", env_extra=llm_env(server))
        temperatures = [r.get("temperature") for r in server.requests]
        third_prompt = server.requests[2]["messages"][-1]["content"]
    summary = json.loads(result.stdout)
    assert result.returncode == 1 and summary["exit_status"] == 330
    assert temperatures[0] == temperatures[1] < temperatures[2]  # hotter once the error repeated
    assert "change" in third_prompt.lower() and "strategy" in third_prompt.lower()


@pytest.mark.parametrize(
    "faults, status, kind",
    [
        ([{"status": 401}], 300, "auth"),
        ([{"status": 500}], 300, "server_error"),
        ([{"garbage": "<html>proxy error</html>"}], 300, "server_error"),
    ],
)
def test_endpoint_faults_end_with_a_clear_exit_code(aiida_profile, faults, status, kind):
    with FakeOpenAIServer(faults) as server:
        result = mdagent("run", TASK, "--json", env_extra=llm_env(server))
    summary = json.loads(result.stdout)
    assert result.returncode == 1
    assert summary["exit_status"] == status and kind in summary["exit_message"]
    (failed,) = summary["attempts"]  # the attempt whose generation failed is recorded, with the reason
    assert failed["stage"] == "generate" and failed["diagnostics"][0]["code"] == "llm.unavailable"
    assert kind in failed["diagnostics"][0]["message"]


def test_unreachable_endpoint_and_timeout_never_hang(aiida_profile):
    start = time.monotonic()
    result = mdagent(
        "run",
        TASK,
        "--json",
        env_extra={
            "MDAGENT_LLM_BASE_URL": "http://127.0.0.1:9/v1",
            "MDAGENT_LLM_MODEL": "m",
            "MDAGENT_LLM_MAX_RETRIES": "0",
        },
    )
    assert json.loads(result.stdout)["exit_status"] == 300 and "unreachable" in result.stdout
    with FakeOpenAIServer([{"hang": 30}]) as server:
        env = {**llm_env(server), "MDAGENT_LLM_TIMEOUT": "2"}
        result = mdagent("run", TASK, "--json", env_extra=env)
    assert json.loads(result.stdout)["exit_status"] == 300 and "timeout" in result.stdout
    assert time.monotonic() - start < 60


def test_prose_and_policy_violations_are_fed_back(aiida_profile):
    evil = json.dumps(
        {
            "script": "units lj\nshell curl http://example.org\n",
            "potentials": [],
            "files": [{"name": "../escape.txt", "content": "x"}],
        }
    )
    with FakeOpenAIServer(["I cannot write that script, sorry.", evil, answer("good.lammps")]) as server:
        result = mdagent("run", TASK, "--json", env_extra=llm_env(server))
        second, third = (r["messages"][-1]["content"] for r in server.requests[1:3])
    summary = json.loads(result.stdout)
    assert result.returncode == 0 and len(summary["attempts"]) == 3
    assert "generate.no_script" in second
    assert "policy.shell" in third and "'../escape.txt' is not a plain name" in third
    assert not list(Path(os.environ["MDAGENT_HOME"]).rglob("escape.txt"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "hi"], "describe the simulation"),
        (["run", ""], "describe the simulation"),
        (["show", "999999"], "no node with pk 999999"),
    ],
)
def test_bad_input_is_a_usage_error(aiida_profile, args, message):
    result = mdagent(*args, env_extra={"MDAGENT_LLM_BASE_URL": "http://127.0.0.1:9/v1"})
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_not_configured_says_how(aiida_profile):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDAGENT_LLM")}
    result = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "run", TASK], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2 and "MDAGENT_LLM_BASE_URL" in result.stderr


def test_ctrl_c_leaves_a_killed_node(aiida_profile):
    from aiida import orm

    with FakeOpenAIServer([{"hang": 15}]) as server:
        env = {**os.environ, **llm_env(server), "MDAGENT_LLM_TIMEOUT": "120"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdagent_hpc.cli", "run", TASK],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode != 0
    qb = (
        orm.QueryBuilder()
        .append(orm.WorkChainNode, filters={"attributes.process_label": "AgentWorkChain"}, project=["*"])
        .order_by({orm.WorkChainNode: {"ctime": "desc"}})
    )
    (node,) = qb.first()
    assert node.is_terminated and not node.is_finished_ok


def test_daemon_submission(aiida_profile):
    from aiida import orm
    from aiida.engine.daemon.client import get_daemon_client

    with FakeOpenAIServer(THREE_ATTEMPTS) as server:
        env = {**llm_env(server)}
        os.environ.update(env)  # the daemon inherits the environment it is started with
        try:
            result = mdagent("run", TASK, "--daemon", "--json", env_extra=env)
            assert result.returncode == 0, result.stderr
            pk = json.loads(result.stdout)["pk"]
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not orm.load_node(pk).is_terminated:
                time.sleep(1)
        finally:
            get_daemon_client().stop_daemon(wait=True, timeout=60)  # slower than the 2 s default when loaded
            for key in env:
                os.environ.pop(key)
    node = orm.load_node(pk)
    assert node.is_finished_ok, node.exit_message
    assert node.base.extras.get("attempts") == 3
    shown = mdagent("show", str(pk), "--json")
    assert json.loads(shown.stdout)["verdict"] == "passed"
    listed = json.loads(mdagent("runs", "--json").stdout)
    assert any(r["pk"] == pk and r["verdict"] == "passed" for r in listed)


def test_request_api_replays_answers_reads_and_lists_runs(aiida_profile):
    from aiida import orm

    from mdagent_hpc.models import LoopPolicy, Request
    from mdagent_hpc.provenance import local_caller
    from mdagent_hpc.provenance.runs import NotAnAgentRunError, get_run, list_runs, read_run
    from mdagent_hpc.workflows.launch import LaunchError, agent_inputs, run_request, submit_request

    me = local_caller()  # this profile's default user: it made these runs
    request = Request(task=TASK + " (replayed)", answers=[answer("good.lammps")], loop=LoopPolicy(max_attempts=1))
    run = read_run(run_request(request))
    assert run.verdict == "passed" and run.attempts[0].usage.model == "replay"
    assert run.observables and run.script == (DATA / "good.lammps").read_text()
    assert get_run(me, run.uuid).pk == run.pk

    assert [r.pk for r in list_runs(me, limit=1)] == [run.pk]
    assert run.pk in [r.pk for r in list_runs(me, verdict="passed", site="local", task_contains="(REPLAYED)")]
    assert run.pk not in [r.pk for r in list_runs(me, verdict="failed")]
    assert list_runs(me, site="no-such-site") == []

    with pytest.raises(NotAnAgentRunError, match="is not an agent run"):
        read_run(orm.load_node(run.attempts[0].nodes["run"]))
    with pytest.raises(LaunchError, match="no site 'nowhere'"):
        agent_inputs(Request(task=TASK, site="nowhere"))
    with pytest.raises(LaunchError, match="recorded answers"):
        submit_request(request)


LONG_LJ = json.dumps(
    {
        "script": "units lj\nlattice fcc 0.8442\nregion box block 0 8 0 8 0 8\ncreate_box 1 box\n"
        "create_atoms 1 box\nmass 1 1.0\nvelocity all create 1.0 87287 loop geom\n"
        "pair_style lj/cut 2.5\npair_coeff 1 1 1.0 1.0 2.5\nfix 1 all nve\nthermo 1000\n"
        "run 5000000\n",
        "files": [],
        "potentials": [],
        "notes": "",
    }
)


def test_ctrl_c_during_the_job_cancels_it_and_closes_every_node(aiida_profile):
    import psutil
    from aiida import orm

    started = time.time()
    with FakeOpenAIServer([LONG_LJ]) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdagent_hpc.cli", "run", TASK],
            env={**os.environ, **llm_env(server), "PYTHONFAULTHANDLER": "1"},  # SIGABRT: where each thread is
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        calc, deadline = None, time.monotonic() + 120
        while calc is None and time.monotonic() < deadline:
            time.sleep(0.3)
            qb = orm.QueryBuilder().append(orm.CalcJobNode, filters={"ctime": {">": _utc(started)}}, project=["*"])
            calc = next((n for (n,) in qb.all() if n.get_job_id()), None)
        assert calc is not None, "the LAMMPS job never started"
        job = psutil.Process(int(calc.get_job_id()))
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=60)
            job.kill()
            pytest.fail(f"mdagent run did not end within 120 s of Ctrl-C; where it was:\n{err[-6000:]}")
    assert proc.returncode != 0
    job.wait(timeout=30)  # raises if the job outlives its run
    calc = orm.load_node(calc.pk)
    run = calc.caller.caller
    assert run.process_label == "AgentWorkChain" and run.is_killed
    assert all(n.is_terminated for n in run.called_descendants), [n.process_state for n in run.called_descendants]
    assert calc.is_killed and calc.is_sealed


def _utc(timestamp: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, tz=UTC)
