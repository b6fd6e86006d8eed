"""The agent loop meeting what servers really do (issue 11): k candidates preflighted at once and the best run, a
server that refuses structured output (said once, remembered in the run's inputs), the served context length
carried on, the LAMMPS grammar sent. Real AiiDA, real preflight and LAMMPS; FakeOpenAIServer stands in for vLLM
(tests/test_llm_real.py does the same against a real `vllm serve`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import FakeOpenAIServer

pytestmark = pytest.mark.slow  # each runs the whole loop (real AiiDA, preflight, LAMMPS): ~25 s

DATA = Path(__file__).resolve().parents[1] / "mdagent_hpc" / "examples" / "demo"
TASK = "Heat a small Cu crystal with EAM to 800 K in NVT"
GOOD = (DATA / "good.lammps").read_text()
WRONG = (DATA / "wrong-potential.lammps").read_text()


def as_json(script: str) -> str:
    return json.dumps({"script": script, "files": [], "potentials": [], "notes": ""})


def fenced(script: str) -> str:
    return f"Here you go:\n```lammps\n{script}```\n"


@pytest.fixture(scope="module")
def aiida_profile():
    from mdagent_hpc.execution.profile import ensure_profile

    return ensure_profile()


def run(server: FakeOpenAIServer, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {
        **os.environ,
        "MDAGENT_LLM_BASE_URL": server.base_url,
        "MDAGENT_LLM_MODEL": "fake-model",
        "MDAGENT_LLM_MAX_RETRIES": "0",
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "run", TASK, "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return result, json.loads(result.stdout)


def test_best_of_k_candidates_goes_on_and_every_verdict_is_recorded(aiida_profile):
    from aiida import orm

    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.runs import get_run

    with FakeOpenAIServer([{"choices": [as_json(WRONG), "I would rather not.", as_json(GOOD)]}]) as server:
        result, summary = run(server, MDAGENT_LLM_CANDIDATES="3")
        request = server.requests[0]
    assert result.returncode == 0, result.stderr[-2000:]
    assert request["n"] == 3
    (attempt,) = get_run(EVERYONE, summary["pk"]).attempts
    assert attempt.passed and attempt.script == GOOD
    verdicts = {c.number: c for c in attempt.candidates}
    assert [c.number for c in attempt.candidates] == [3, 1, 2]  # best first
    assert verdicts[3].chosen and verdicts[3].ok and verdicts[3].errors == 0
    assert not verdicts[1].ok and verdicts[1].first_error.startswith("potential.missing")
    assert verdicts[2].script_sha is None and verdicts[2].first_error.startswith("generate.no_script")
    # one preflight node judged both scripts; the generation node holds every answer
    check = orm.load_node(attempt.nodes["preflight"])
    assert check.process_label == "preflight_candidates"
    assert sorted(check.outputs.result.get_dict()) == ["candidate_1", "candidate_3"]
    gen = orm.load_node(attempt.nodes["generate"])
    assert gen.inputs.settings["candidates"] == 3 and "candidate_3" in gen.outputs.candidates
    assert len(gen.outputs.response["choices"]) == 3


DATA_FILE = """LAMMPS data file

2 atoms
1 atom types

0 10 xlo xhi
0 10 ylo yhi
0 10 zlo zhi

Masses

1 1.0

Atoms # atomic

1 1 1.0 1.0 1.0
2 1 2.2 1.0 1.0
"""
FROM_DATA = """units lj
atom_style atomic
read_data two.data
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
fix 1 all nve
thermo 10
run 100
"""


def test_a_later_candidates_files_go_on_with_it(aiida_profile):
    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.runs import get_run

    with_file = json.dumps(
        {"script": FROM_DATA, "potentials": [], "notes": "", "files": [{"name": "two.data", "content": DATA_FILE}]}
    )
    missing_file = as_json(FROM_DATA)  # the same script without its data file: preflight fails
    with FakeOpenAIServer([{"choices": [missing_file, with_file]}]) as server:
        result, summary = run(server, "--max-attempts", "1", MDAGENT_LLM_CANDIDATES="2")
    (attempt,) = get_run(EVERYONE, summary["pk"]).attempts
    assert [(c.number, c.ok, c.chosen) for c in attempt.candidates] == [(2, True, True), (1, False, False)]
    assert attempt.files == ["two.data"] and attempt.stage.value in ("run", "evaluate")  # staged with its script


def test_a_server_without_structured_output_is_said_once_and_remembered_in_the_inputs(aiida_profile):
    from aiida import orm

    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.runs import get_run

    answers = [{"reject_response_format": 500}, {"reject_response_format": 500}, fenced(WRONG), fenced(GOOD)]
    with FakeOpenAIServer(answers, max_model_len=16384) as server:
        result, summary = run(server)
        requests = server.requests
    assert result.returncode == 0, result.stderr[-2000:]
    assert ["response_format" in r for r in requests] == [True, True, False, False]
    assert all(r["max_tokens"] <= 16384 - len(json.dumps(r["messages"])) // 4 for r in requests)
    first, second = get_run(EVERYONE, summary["pk"]).attempts
    assert first.diagnostics[0].code == "potential.missing" and second.passed
    gen1, gen2 = (orm.load_node(a.nodes["generate"]) for a in (first, second))
    assert "HTTP 500" in gen1.outputs.response["fallback"] and gen1.outputs.response["context_tokens"] == 16384
    assert gen2.inputs.settings["structured_output"] == "off" and gen2.inputs.settings["context_tokens"] == 16384
    reports = [log.message for log in orm.Log.collection.get_logs_for(orm.load_node(summary["pk"]))]
    assert sum("fenced code blocks from now on" in m for m in reports) == 1


def test_grammar_constrained_generation_sends_the_binarys_grammar(aiida_profile):
    from aiida import orm

    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.runs import get_run

    with FakeOpenAIServer([GOOD]) as server:  # under a grammar the answer is the bare script
        result, summary = run(server, MDAGENT_LLM_STRUCTURED_OUTPUT="grammar")
        request = server.requests[0]
    assert result.returncode == 0, result.stderr[-2000:]
    grammar = request["structured_outputs"]["grammar"]
    assert '"eam/alloy"' in grammar and '"nvt"' in grammar and '"python"' not in grammar
    assert "no code fences" in request["messages"][0]["content"] and "response_format" not in request
    (attempt,) = get_run(EVERYONE, summary["pk"]).attempts
    gen = orm.load_node(attempt.nodes["generate"])
    assert gen.outputs.response["format_used"] == "grammar" and gen.inputs.grammar.value == grammar
