"""The client against a real `vllm serve` (CPU build, the tiny random-weight model; the session fixture
`vllm_server` in tests/services.py): json_schema output, grammar-constrained output, n > 1, the context length
read from the server, and the agent loop reaching preflight with the server's own answers, best of k recorded.

The model's weights are random: it writes nonsense, so what is checked is what the server's constraints and the
client guarantee (the shape of the answer, the command and style names, the sizes), never that a script is good.
No `seed` here: vLLM 0.32 on CPU dies ("CPU Generator does not use offset") on a seeded request whose prompt is
prefilled in chunks, and this server is shared by the session.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from mdagent_hpc.lammps.install import capabilities
from mdagent_hpc.llm.answers import GeneratedScript
from mdagent_hpc.llm.client import LEARNT, generate, get_client
from mdagent_hpc.llm.config import LLMSettings
from mdagent_hpc.llm.grammar import lammps_grammar

pytestmark = pytest.mark.slow

MESSAGES = [
    {"role": "system", "content": "You write LAMMPS input scripts."},
    {"role": "user", "content": "Melt a small Lennard-Jones crystal and report the temperature."},
]


@pytest.fixture(autouse=True)
def fresh_client():
    get_client.cache_clear()
    LEARNT.clear()


def settings(server, **kw) -> LLMSettings:
    values = {
        "base_url": server.base_url,
        "model": server.model,
        "api_key": server.api_key,
        "timeout_s": 300,
        "max_retries": 1,
        "temperature": 0.8,
    }
    return LLMSettings(**(values | kw))


def test_json_schema_output_and_n_candidates(vllm_server):
    gen = generate(settings(vllm_server, structured_output="json_schema", max_tokens=600, candidates=3), MESSAGES)
    assert gen.format_used == "json_schema" and gen.fallback is None and len(gen.choices) == 3
    assert gen.params["n"] == 3 and gen.context_tokens == vllm_server.max_model_len
    for choice in gen.choices:
        assert choice.raw_response.startswith('{"script":"'), choice.raw_response[:80]  # the schema's first key
        if choice.finish_reason == "stop":  # a finished answer is the whole object, nothing else
            obj = json.loads(choice.raw_response)
            assert list(obj) == ["script", "files", "potentials", "notes"]
            assert choice.script == GeneratedScript.model_validate(obj)
        else:
            assert choice.finish_reason == "length" and choice.problems[0].code == "generate.invalid_json"


def test_grammar_constrained_output_uses_only_the_binarys_names(vllm_server):
    styles = capabilities().styles
    grammar = lammps_grammar(styles)
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
    names = {rule: set(re.findall(r'"([^"]+)"', body)) for rule, body in rules.items() if rule.endswith("-name")}
    styled = {}  # command -> (the rule of its style, the word the style is)
    for alternative in rules["styled"].split(" | "):
        command, before, rule = re.fullmatch(r'"(\w+)"((?: sp word)*) sp ([\w-]+) args', alternative).groups()
        styled[command] = (rule, 1 + before.count("word"))
    gen = generate(
        settings(vllm_server, structured_output="grammar", max_tokens=800, candidates=3), MESSAGES, grammar=grammar
    )
    assert gen.format_used == "grammar" and len(gen.choices) == 3
    lines = []
    for choice in gen.choices:
        text = choice.raw_response
        complete = text if choice.finish_reason == "stop" else text[: text.rfind("\n") + 1]
        for line in complete.splitlines():
            words = re.findall(r'"[^"]*"|\'[^\']*\'|[^\s#]+|#.*', line)  # quoted text is one word
            if words and not words[0].startswith("#"):
                lines.append(words)
        assert all(32 <= ord(c) < 127 or c in "\t\n" for c in text)  # printable ASCII only
    assert len(lines) >= 3, [c.raw_response[:200] for c in gen.choices]  # at most 48 words a line: lines end
    for words in lines:
        command = words[0]
        assert command in names["plain-name"] or command in styled, words
        if command in styled and len(words) > styled[command][1]:
            rule, at = styled[command]
            assert words[at] in names[rule], words


def test_max_tokens_is_sized_to_the_served_context(vllm_server):
    length = vllm_server.max_model_len
    short = generate(settings(vllm_server, structured_output="off", max_tokens=16), MESSAGES)
    assert short.context_tokens == length  # read from /v1/models
    key = (vllm_server.base_url, vllm_server.model)
    ratio = LEARNT.chars_per_token[key]  # learnt from the server's count of that prompt
    # a prompt that leaves about 500 tokens by the client's estimate (so the answer stays short)
    long = [{"role": "user", "content": ("atoms " * 40_000)[: int((length - 550) * ratio / 1.1)]}]
    gen = generate(settings(vllm_server, structured_output="off", max_tokens=10 * length), long)
    assert 64 < gen.params["max_tokens"] <= 1000  # asked 10x the context: vLLM refuses that (HTTP 400)
    assert gen.usage["prompt_tokens"] + gen.params["max_tokens"] <= length
    # a server that does not report its context: vLLM's refusal names it, and the client asks for what is left
    LEARNT.context[key] = None
    gen = generate(settings(vllm_server, structured_output="off", max_tokens=10 * length), long)
    assert LEARNT.context[key] == length and gen.usage["prompt_tokens"] + gen.params["max_tokens"] <= length


def agent_run(server, tmp_path, **env):
    env = {
        **os.environ,
        "MDAGENT_LLM_BASE_URL": server.base_url,
        "MDAGENT_LLM_MODEL": server.model,
        "MDAGENT_LLM_API_KEY": server.api_key,
        "MDAGENT_LLM_MAX_TOKENS": "400",
        "MDAGENT_LLM_TIMEOUT": "300",
        **env,
    }
    task = "Melt a 4000-atom Lennard-Jones crystal at reduced temperature 3.0 and report the final temperature"
    result = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "run", task, "--max-attempts", "2", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_the_loop_reaches_preflight_with_the_servers_grammar_output_best_of_k(vllm_server, tmp_path):
    from mdagent_hpc.execution.profile import ensure_profile

    ensure_profile()  # before aiida is imported: it picks the tests' AiiDA folder
    from aiida import orm

    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.runs import get_run

    summary = agent_run(vllm_server, tmp_path, MDAGENT_LLM_STRUCTURED_OUTPUT="grammar", MDAGENT_LLM_CANDIDATES="3")
    run = get_run(EVERYONE, summary["pk"])
    assert len(run.attempts) == 2 and run.exit_status in (0, 310, 320, 330)  # a random model: any honest end
    for attempt in run.attempts:
        assert attempt.stage.value != "generate"  # every attempt reached preflight with the server's own script
        assert len(attempt.candidates) == 3 and sum(c.chosen for c in attempt.candidates) == 1
        chosen = next(c for c in attempt.candidates if c.chosen)
        assert chosen == attempt.candidates[0] and chosen.script_sha == attempt.script_sha
        check = orm.load_node(attempt.nodes["preflight"])
        assert check.process_label == "preflight_candidates"
        reports = check.outputs.result.get_dict()
        assert {f"candidate_{c.number}" for c in attempt.candidates if c.script_sha} == set(reports)
        for c in attempt.candidates:
            if c.script_sha:
                assert reports[f"candidate_{c.number}"]["ok"] is c.ok
        gen = orm.load_node(attempt.nodes["generate"])
        assert gen.outputs.response["format_used"] == "grammar" and gen.outputs.response["params"]["n"] == 3
    second = orm.load_node(run.attempts[1].nodes["generate"])
    assert second.inputs.settings["context_tokens"] == vllm_server.max_model_len


def test_the_loop_with_json_schema_output(vllm_server, tmp_path):
    from mdagent_hpc.execution.profile import ensure_profile

    ensure_profile()  # before aiida is imported: it picks the tests' AiiDA folder
    from aiida import orm

    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.runs import get_run

    summary = agent_run(vllm_server, tmp_path, MDAGENT_LLM_CANDIDATES="2", MDAGENT_LLM_MAX_TOKENS="1200")
    run = get_run(EVERYONE, summary["pk"])
    assert len(run.attempts) == 2 and run.exit_status in (0, 310, 320, 330)
    for attempt in run.attempts:
        gen = orm.load_node(attempt.nodes["generate"])
        assert gen.outputs.response["format_used"] == "json_schema"
        assert all(c["raw_response"].startswith('{"script":"') for c in gen.outputs.response["choices"])
        # an answer cut off by max_tokens is fed back as such; a complete one goes to preflight
        assert attempt.stage.value == "generate" or attempt.candidates
