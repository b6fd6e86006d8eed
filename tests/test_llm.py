"""mdagent_hpc.llm: settings, prompts, and generate() against a real HTTP server with scripted answers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from mdagent_hpc.agent.feedback import feedback_text
from mdagent_hpc.llm.answers import RESPONSE_SCHEMA, read_answer
from mdagent_hpc.llm.client import LEARNT, check_endpoint, generate, get_client
from mdagent_hpc.llm.config import LLMConfigError, LLMNotConfiguredError, LLMSettings, load_llm_settings
from mdagent_hpc.llm.prompts import (
    STUCK_INSTRUCTION,
    PotentialInfo,
    SiteCapabilities,
    build_messages,
    describe_limits,
    relevant_potentials,
    task_elements,
)
from mdagent_hpc.llm.unavailable import LLMUnavailableError
from mdagent_hpc.models import Attempt, Diagnostic, Limits, Severity

if TYPE_CHECKING:
    from openai_server import FakeOpenAIServer


StartServer = Callable[..., "FakeOpenAIServer"]
SECRET = "sk-test-secret-123"
SCRIPT = "units metal\nlattice fcc 3.615\nregion box block 0 4 0 4 0 4\ncreate_box 1 box\nrun 0\n"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MDAGENT_HOME", str(tmp_path))
    for var in ("BASE_URL", "MODEL", "API_KEY", "TIMEOUT", "TEMPERATURE", "MAX_TOKENS"):
        monkeypatch.delenv(f"MDAGENT_LLM_{var}", raising=False)
    get_client.cache_clear()  # a port may be reused by a later test's server
    LEARNT.clear()


def settings_for(srv: FakeOpenAIServer, **kw) -> LLMSettings:
    values = {
        "base_url": srv.base_url,
        "model": "fake-model",
        "api_key": SECRET,
        "timeout_s": 5,
        "max_retries": 2,
    }
    return LLMSettings(**(values | kw))


def answer(script: str = SCRIPT, **kw) -> str:
    return json.dumps({"script": script, "files": [], "potentials": [], "notes": "ok"} | kw)


MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Melt Cu"}]


# --- settings -------------------------------------------------------------------------------------


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDAGENT_LLM_BASE_URL", "http://gpu01:8000")
    monkeypatch.setenv("MDAGENT_LLM_MODEL", "Qwen/Qwen2.5-Coder-32B-Instruct")
    monkeypatch.setenv("MDAGENT_LLM_API_KEY", SECRET)
    monkeypatch.setenv("MDAGENT_LLM_TIMEOUT", "30")
    monkeypatch.setenv("MDAGENT_LLM_TEMPERATURE", "0.7")
    monkeypatch.setenv("MDAGENT_LLM_MAX_TOKENS", "2048")
    s = load_llm_settings()
    assert s.base_url == "http://gpu01:8000/v1"  # /v1 added to a bare host:port
    assert (s.model, s.timeout_s, s.temperature, s.max_tokens) == (
        "Qwen/Qwen2.5-Coder-32B-Instruct",
        30,
        0.7,
        2048,
    )
    assert s.api_key.get_secret_value() == SECRET
    assert (s.max_retries, s.structured_output) == (3, "auto")
    assert SECRET not in repr(s) and SECRET not in str(s) and SECRET not in s.model_dump_json()


def test_settings_priority_yaml_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    (tmp_path / "config.yaml").write_text(
        "site: {name: test}\n"
        "llm:\n  base_url: http://yaml:8000/v1\n  model: m-yaml\n  temperature: 0.1\n"
        "  structured_output: 'off'\n  seed: 7\n"
    )
    s = load_llm_settings()
    assert (s.base_url, s.model, s.temperature, s.seed, s.structured_output) == (
        "http://yaml:8000/v1",
        "m-yaml",
        0.1,
        7,
        "off",
    )
    assert s.api_key.get_secret_value() == "EMPTY" and s.timeout_s == 120
    monkeypatch.setenv("MDAGENT_LLM_MODEL", "m-env")
    assert load_llm_settings().model == "m-env"
    s = load_llm_settings({"model": "m-override", "temperature": None})
    assert (s.model, s.temperature) == ("m-override", 0.1)


def test_not_configured(tmp_path) -> None:
    with pytest.raises(LLMNotConfiguredError) as exc:
        load_llm_settings()
    msg = str(exc.value)
    assert "MDAGENT_LLM_BASE_URL" in msg and str(tmp_path / "config.yaml") in msg and "\n" not in msg
    assert isinstance(exc.value, LLMConfigError)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDAGENT_LLM_BASE_URL", "http://localhost:8000/v1")
    monkeypatch.setenv("MDAGENT_LLM_TIMEOUT", "abc")
    with pytest.raises(LLMConfigError, match=r"\$MDAGENT_LLM_TIMEOUT.*'abc'.*timeout_s") as exc:
        load_llm_settings()
    assert "\n" not in str(exc.value)


def test_bad_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDAGENT_LLM_BASE_URL", "localhost:8000")
    with pytest.raises(LLMConfigError, match="MDAGENT_LLM_BASE_URL.*http"):
        load_llm_settings()


def test_unknown_yaml_key(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  base_url: http://x:8000/v1\n  temprature: 0.3\n")
    with pytest.raises(LLMConfigError, match="temprature") as exc:
        load_llm_settings()
    assert str(path) in str(exc.value)


def test_bad_yaml_value_names_the_file(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  base_url: http://x:8000/v1\n  max_tokens: lots\n")
    with pytest.raises(LLMConfigError, match=r"config\.yaml \(llm\.max_tokens\).*'lots'"):
        load_llm_settings()


def test_yaml_syntax_error(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  base_url: [http://x\n  model: m\n")
    with pytest.raises(LLMConfigError, match="not valid YAML") as exc:
        load_llm_settings()
    assert str(path) in str(exc.value) and "line" in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_override_key() -> None:
    with pytest.raises(LLMConfigError, match="override 'colour'"):
        load_llm_settings({"base_url": "http://x:1/v1", "colour": "red"})


# --- element extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "elements"),
    [
        ("Cu–Ni nanoparticle", ["Cu", "Ni"]),
        ("Al", ["Al"]),
        ("Melt Al at 2000 K and measure the diffusion coefficient", ["Al"]),
        ("Cu-Ni nanoparticle annealed at 2000 K", ["Cu", "Ni"]),
        ("Lattice constant of Cu at 300K.", ["Cu"]),
        ("In this task, compute the bulk modulus of Ta", ["Ta"]),
        ("As a test, heat Fe from 300 K to 1500 K", ["Fe"]),
        ("At what temperature does Si melt?", ["Si"]),
        ("I want the melting point of copper", ["Cu"]),
        ("Thermal conductivity of aluminium and silicon", ["Al", "Si"]),
        ("GaAs zincblende under 5 GPa", ["Ga", "As"]),
        ("InP nanowire", ["In", "P"]),
        ("In-Ga liquid alloy", ["In", "Ga"]),
        ("Cu3Au order-disorder transition", ["Cu", "Au"]),
        ("Cu50Zr50 metallic glass quenched at 1e12 K/s", ["Cu", "Zr"]),
        ("Al2O3 on SiO2", ["Al", "O", "Si"]),
        ("He bubbles in W", ["He", "W"]),
        ("K atoms in a bcc lattice", ["K"]),
        ("NPT run with EAM for FCC Ni, then NVE", ["Ni"]),
        ("water H2O at 25 °C", ["H", "O"]),
        ("Au/Pd core-shell cluster", ["Au", "Pd"]),
        ("Run at P = 0 and T = 300 K with N = 4000 atoms", []),
        ("ReaxFF simulation of CO2 adsorption", ["C", "O"]),
        ("Ni Ni nickel", ["Ni"]),
    ],
)
def test_task_elements(task: str, elements: list[str]) -> None:
    assert task_elements(task) == elements


# --- prompts --------------------------------------------------------------------------------------

CAPS = SiteCapabilities(
    lammps_version="22 Jul 2025",
    packages=["MANYBODY", "EXTRA-DUMP"],
    potentials=[PotentialInfo(name="CuNi.eam.alloy", pair_style="eam/alloy", elements=["Cu", "Ni"])],
    limits=describe_limits(Limits(max_atoms=100_000)),
)


def attempt(n: int, stage: str = "preflight", script: str = SCRIPT, diagnostics=(), evaluation: str = "") -> Attempt:
    feedback = feedback_text(list(diagnostics)) + (f"\nEvaluation: {evaluation}" if evaluation else "")
    return Attempt(number=n, stage=stage, script=script, feedback=feedback)


def test_system_prompt_rules_and_format() -> None:
    system, user = build_messages("Melt a Cu-Ni nanoparticle", CAPS, [])
    assert (system["role"], user["role"]) == ("system", "user")
    for needle in ("`shell`", "`python`", "`plugin`", "absolute paths", "`..`", "bare file name", "`print`"):
        assert needle in system["content"]
    for field in ('"script"', '"files"', '"potentials"', '"notes"'):
        assert field in system["content"]
    text = user["content"]
    assert "Melt a Cu-Ni nanoparticle" in text and "22 Jul 2025" in text and "MANYBODY" in text
    assert "CuNi.eam.alloy | eam/alloy | Cu Ni" in text and "100,000 atoms" in text
    assert "Earlier attempts" not in text and STUCK_INSTRUCTION not in text


def test_history_and_stuck() -> None:
    diag = Diagnostic(
        severity=Severity.ERROR,
        code="potential.missing",
        message="file Cu.eam not found",
        line=4,
        command="pair_coeff * * Cu.eam",
        hint="use CuNi.eam.alloy",
    )
    history = [
        attempt(1, script="units metal\npair_coeff * * Cu.eam\n", diagnostics=[diag]),
        attempt(2, stage="evaluate", evaluation="energy drift 5% > 1%; use a smaller timestep"),
    ]
    text = build_messages("task", CAPS, history, stuck=True)[1]["content"]
    assert text.index("Attempt 1 (failed at: preflight)") < text.index("Attempt 2 (failed at: evaluate)")
    assert "   2| pair_coeff * * Cu.eam" in text
    assert "script:4 [potential.missing] file Cu.eam not found" in text and "hint: use CuNi.eam.alloy" in text
    assert "Evaluation: energy drift 5% > 1%" in text
    assert STUCK_INSTRUCTION in text and text.index(STUCK_INSTRUCTION) > text.index("Attempt 2")


def test_history_keeps_the_last_in_full_and_summarises_older_ones() -> None:
    big = "".join(f"variable v{i} equal {i}\n" for i in range(150))  # ~4500 chars with line numbers
    diag = Diagnostic(severity=Severity.ERROR, code="lammps.error", message="Unrecognized pair style 'x'", line=3)
    history = [
        Attempt(
            number=n,
            stage="preflight",
            script=big.replace("variable", f"variable a{n}"),
            diagnostics=[diag],
            feedback=feedback_text([diag]),
        )
        for n in range(1, 7)
    ]
    text = build_messages("task", CAPS, history, history_tokens=4000)[1]["content"]
    assert "variable a6" in text and "variable a5" in text  # the last, and the one before while it fits
    assert "variable a4" not in text and "variable a1" not in text
    assert "- Attempt 4 (failed at: preflight): [lammps.error] at line 3 Unrecognized pair style 'x'" in text
    assert "- Attempt 1 (failed at: preflight)" in text
    assert len(text) < 3 * 4000 + 2000
    tiny = build_messages("task", CAPS, history, history_tokens=10)[1]["content"]
    assert "variable a6" in tiny and "(5 older attempt(s) omitted.)" in tiny and "Attempt 5" not in tiny


def test_history_fits_the_models_context() -> None:
    big = "".join(f"variable v{i} equal {i}\n" for i in range(2000))  # ~44000 chars: a runaway answer
    history = [Attempt(number=n, stage="preflight", script=big, feedback="Problems found: x") for n in (1, 2, 3)]
    text = build_messages("task", CAPS, history, context_tokens=16384, answer_tokens=4096)[1]["content"]
    assert "more lines not shown" in text and len(text) // 3 < 16384 - 4096
    assert "- Attempt 1" in text and "- Attempt 2" in text  # older ones in one line each


def test_an_attempt_without_a_script_is_said_so() -> None:
    history = [Attempt(number=1, stage="generate", script="", feedback="Problems found: prose")]
    text = build_messages("task", CAPS, history)[1]["content"]
    assert "(the answer held no script)" in text and "```" not in text


def test_grammar_prompt_asks_for_the_bare_script() -> None:
    system, user = build_messages("Melt Cu", CAPS, [], answer="script")
    assert '"script"' not in system["content"] and "no code fences" in system["content"]
    assert user["content"].endswith("the LAMMPS input only.")


def test_relevant_potentials() -> None:
    pots = [
        PotentialInfo(name="Cu.eam", pair_style="eam", elements=["Cu"]),
        PotentialInfo(name="CuNi.eam.alloy", pair_style="eam/alloy", elements=["Cu", "Ni"]),
        PotentialInfo(name="Fe.eam.fs", pair_style="eam/fs", elements=["Fe"]),
    ]
    assert [p.name for p in relevant_potentials(pots, ["Cu", "Ni"])] == ["CuNi.eam.alloy"]
    assert [p.name for p in relevant_potentials(pots, ["Cu", "Zr"])] == ["Cu.eam", "CuNi.eam.alloy"]
    assert len(relevant_potentials(pots, [])) == 3


# --- reading answers ------------------------------------------------------------------------------


def test_response_schema_is_strict() -> None:
    def check(obj: dict) -> None:
        if obj.get("type") == "object":
            assert obj["additionalProperties"] is False and set(obj["required"]) == set(obj["properties"])
            for sub in obj["properties"].values():
                check(sub)
        if obj.get("type") == "array":
            check(obj["items"])

    check(RESPONSE_SCHEMA)


@pytest.mark.parametrize(
    "text",
    [
        "<think>they want copper</think>\n" + answer(),
        "Here it is:\n```json\n" + answer() + "\n```",
        "Sure!\n```lammps\n" + SCRIPT + "```\nThis sets up fcc Cu.",
        "Setup:\n```\n" + SCRIPT + "```",
        "# fcc copper\n" + SCRIPT,
    ],
)
def test_read_answer_formats(text: str) -> None:
    script, problems = read_answer(text)
    assert problems == [] and script is not None
    assert script.script.strip().endswith(SCRIPT.strip())


# --- generate() against the fake server -----------------------------------------------------------


def test_structured_answer(fake_openai: StartServer) -> None:
    files = [{"name": "cu.data", "content": "1 atoms\n"}]
    srv = fake_openai([answer(files=files, potentials=["Cu_u3.eam"])])
    settings = settings_for(srv, seed=42, top_p=0.9)
    gen = generate(settings, MESSAGES)
    assert gen.problems == [] and gen.script is not None
    assert gen.script.script == SCRIPT and gen.script.files == {"cu.data": "1 atoms\n"}
    assert gen.script.potentials == ["Cu_u3.eam"] and gen.script.notes == "ok"
    assert (gen.format_used, gen.model, gen.finish_reason) == ("json_schema", "fake-model", "stop")
    assert gen.params == {"temperature": 0.2, "max_tokens": 4096, "top_p": 0.9, "seed": 42}
    assert gen.usage["total_tokens"] == gen.usage["prompt_tokens"] + gen.usage["completion_tokens"] > 0
    assert gen.messages == MESSAGES and gen.latency_s > 0 and gen.base_url == srv.base_url
    (body,) = srv.requests
    assert body["model"] == "fake-model" and body["messages"] == MESSAGES and body["temperature"] == 0.2
    assert body["seed"] == 42 and body["top_p"] == 0.9 and body["max_tokens"] == 4096
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "lammps_script"
    assert fmt["json_schema"]["strict"] is True and fmt["json_schema"]["schema"] == RESPONSE_SCHEMA
    headers = {k.lower(): v for k, v in srv.headers[0].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in gen.model_dump_json()


def test_temperature_override_and_model_from_server(fake_openai: StartServer) -> None:
    srv = fake_openai([answer()], model="served-model")
    gen = generate(settings_for(srv, model=None), MESSAGES, temperature=0.8)
    assert srv.requests[0]["temperature"] == 0.8 and gen.params["temperature"] == 0.8
    assert srv.requests[0]["model"] == "served-model" == gen.model


def test_prose_answer(fake_openai: StartServer) -> None:
    srv = fake_openai(["To melt copper you should heat it above 1358 K and watch the RDF."])
    gen = generate(settings_for(srv), MESSAGES)
    assert gen.script is None and [p.code for p in gen.problems] == ["generate.no_script"]
    assert gen.problems[0].hint and gen.raw_response.startswith("To melt copper")


def test_invalid_json(fake_openai: StartServer) -> None:
    srv = fake_openai(['{"script": "units metal\nrun 0", "files": [}'])
    gen = generate(settings_for(srv), MESSAGES)
    assert gen.script is None and [p.code for p in gen.problems] == ["generate.invalid_json"]
    assert "line" in gen.problems[0].message


def test_truncated_answer(fake_openai: StartServer) -> None:
    srv = fake_openai([{"content": '{"script": "units metal\\nlattice fcc', "finish_reason": "length"}])
    gen = generate(settings_for(srv, max_tokens=10), MESSAGES)
    assert [p.code for p in gen.problems] == ["generate.invalid_json"]
    assert "max_tokens (10)" in gen.problems[0].message and gen.finish_reason == "length"


def test_structured_answer_that_is_not_json_falls_back_to_fence(fake_openai: StartServer) -> None:
    srv = fake_openai(["```lammps\n" + SCRIPT + "```"])
    gen = generate(settings_for(srv), MESSAGES)
    assert gen.problems == [] and gen.script is not None and gen.script.script == SCRIPT
    assert gen.format_used == "json_schema"


def test_empty_script(fake_openai: StartServer) -> None:
    srv = fake_openai([answer(script="  \n", notes="no potential for Og")])
    gen = generate(settings_for(srv), MESSAGES)
    assert gen.script is None and [p.code for p in gen.problems] == ["generate.empty_script"]
    assert "no potential for Og" in gen.problems[0].message


def test_server_without_structured_output(fake_openai: StartServer) -> None:
    fenced = "Here is the script:\n```lammps\n" + SCRIPT + "```"
    srv = fake_openai([{"reject_response_format": True}, fenced, fenced])
    settings = settings_for(srv)
    gen = generate(settings, MESSAGES)
    assert gen.problems == [] and gen.script is not None and gen.script.script == SCRIPT
    assert gen.format_used == "fenced_block" and "Here is the script" in gen.script.notes
    assert "response_format" in srv.requests[0] and "response_format" not in srv.requests[1]
    gen = generate(settings, MESSAGES)  # the client remembers: no second rejection
    assert gen.script is not None and gen.format_used == "fenced_block"
    assert len(srv.requests) == 3 and "response_format" not in srv.requests[2]


def test_json_schema_required_but_rejected(fake_openai: StartServer) -> None:
    srv = fake_openai([{"reject_response_format": True}])
    with pytest.raises(LLMUnavailableError, match="structured_output") as exc:
        generate(settings_for(srv, structured_output="json_schema"), MESSAGES)
    assert exc.value.kind == "bad_request" and len(srv.requests) == 1


def test_structured_output_off(fake_openai: StartServer) -> None:
    srv = fake_openai([answer()])
    gen = generate(settings_for(srv, structured_output="off"), MESSAGES)
    assert gen.script is not None and gen.format_used == "fenced_block"
    assert "response_format" not in srv.requests[0]


def test_500_then_success(fake_openai: StartServer) -> None:
    srv = fake_openai([{"status": 500}, answer()])
    gen = generate(settings_for(srv), MESSAGES)
    assert gen.script is not None and len(srv.requests) == 2


def test_429_retried(fake_openai: StartServer) -> None:
    srv = fake_openai([{"status": 429}, answer()])
    assert generate(settings_for(srv), MESSAGES).script is not None and len(srv.requests) == 2


def test_429_persistent(fake_openai: StartServer) -> None:
    srv = fake_openai([{"status": 429}] * 2)
    with pytest.raises(LLMUnavailableError) as exc:
        generate(settings_for(srv, max_retries=1), MESSAGES)
    assert exc.value.kind == "rate_limited" and len(srv.requests) == 2


def test_429_says_which_limit_and_when_it_resets(fake_openai: StartServer) -> None:
    """A gateway's quota refusal names the limit and its reset time: the user must see that sentence."""
    message = "daily LLM token budget reached (quota tokens_per_day); it resets at 2026-12-01T00:00:00Z"
    srv = fake_openai([{"status": 429, "message": message}])
    with pytest.raises(LLMUnavailableError) as exc:
        generate(settings_for(srv, max_retries=0), MESSAGES)
    assert exc.value.kind == "rate_limited" and message in str(exc.value)


def test_401_not_retried(fake_openai: StartServer) -> None:
    srv = fake_openai([{"status": 401}, answer()])
    with pytest.raises(LLMUnavailableError, match="MDAGENT_LLM_API_KEY") as exc:
        generate(settings_for(srv), MESSAGES)
    assert exc.value.kind == "auth" and len(srv.requests) == 1
    assert SECRET not in str(exc.value)


def test_hang_times_out(fake_openai: StartServer) -> None:
    srv = fake_openai([{"hang": 4}, {"hang": 4}])
    start = time.monotonic()
    with pytest.raises(LLMUnavailableError, match="MDAGENT_LLM_TIMEOUT") as exc:
        generate(settings_for(srv, timeout_s=1, max_retries=1), MESSAGES)
    assert exc.value.kind == "timeout" and len(srv.requests) == 2
    assert time.monotonic() - start < 1 * 2 + 2  # two 1 s attempts plus backoff


def test_unreachable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, timeout_s=2)
    start = time.monotonic()
    with pytest.raises(LLMUnavailableError, match="Cannot connect") as exc:
        generate(settings, MESSAGES)
    assert exc.value.kind == "unreachable" and time.monotonic() - start < 5


@pytest.mark.parametrize("content_type", ["text/html", "application/json"])
def test_garbage_body(fake_openai: StartServer, content_type: str) -> None:
    srv = fake_openai([{"garbage": "<html>proxy login</html>", "content_type": content_type}])
    with pytest.raises(LLMUnavailableError, match="/v1") as exc:
        generate(settings_for(srv), MESSAGES)
    assert exc.value.kind == "server_error" and len(srv.requests) == 1


def test_script_ran_out(fake_openai: StartServer) -> None:
    srv = fake_openai([])
    with pytest.raises(LLMUnavailableError, match="ran out") as exc:
        generate(settings_for(srv, max_retries=0), MESSAGES)
    assert exc.value.kind == "server_error"


def test_check_endpoint(fake_openai: StartServer) -> None:
    srv = fake_openai([])
    ok = check_endpoint(settings_for(srv))
    assert ok["reachable"] and ok["models"] == ["fake-model"] and ok["model_served"] is True
    wrong = check_endpoint(settings_for(srv, model="other"))
    assert wrong["model_served"] is False and "fake-model" in wrong["error"]
    auto = check_endpoint(settings_for(srv, model=None))
    assert auto["model"] == "fake-model" and auto["model_served"] is True
    srv.stop()
    down = check_endpoint(settings_for(srv, max_retries=0, timeout_s=1))
    assert down["reachable"] is False and down["kind"] == "unreachable"


# --- issue 11: settings, servers without structured output, the context, k candidates, the grammar ----------


def test_every_setting_has_an_environment_variable() -> None:
    from mdagent_hpc.llm.config import ENV_VARS

    assert set(ENV_VARS) == set(LLMSettings.model_fields)
    assert all(var.startswith("MDAGENT_LLM_") for var in ENV_VARS.values())


@pytest.mark.parametrize(
    ("written", "read"),
    [("off", "off"), ("no", "off"), ("false", "off"), ("'off'", "off"), ("grammar", "grammar"), ("on", "auto")],
)
def test_structured_output_written_plainly_in_yaml(tmp_path, written: str, read: str) -> None:
    (tmp_path / "config.yaml").write_text(f"llm:\n  base_url: http://x:8000/v1\n  structured_output: {written}\n")
    assert load_llm_settings().structured_output == read


def test_new_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDAGENT_LLM_BASE_URL", "http://gpu01:8000/v1")
    for var, value in (
        ("STRUCTURED_OUTPUT", "off"),
        ("CANDIDATES", "4"),
        ("CONTEXT_TOKENS", "8192"),
        ("TOP_P", "0.9"),
        ("SEED", "3"),
    ):
        monkeypatch.setenv(f"MDAGENT_LLM_{var}", value)
    s = load_llm_settings()
    assert (s.structured_output, s.candidates, s.context_tokens, s.top_p, s.seed) == ("off", 4, 8192, 0.9, 3)
    monkeypatch.setenv("MDAGENT_LLM_CANDIDATES", "0")
    with pytest.raises(LLMConfigError, match=r"\$MDAGENT_LLM_CANDIDATES"):
        load_llm_settings()


def test_llama_cpp_500_on_response_format_falls_back_once_and_is_remembered(
    fake_openai: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    fenced = "```lammps\n" + SCRIPT + "```"
    # llama.cpp's server answers an unsupported response_format with HTTP 500 (twice: a 5xx is asked once more)
    srv = fake_openai([{"reject_response_format": 500}, {"reject_response_format": 500}, fenced, fenced])
    with caplog.at_level("WARNING", logger="mdagent_hpc.llm.client"):
        gen = generate(settings_for(srv), MESSAGES)
        assert gen.script is not None and gen.script.script == SCRIPT and gen.format_used == "fenced_block"
        assert gen.fallback and "HTTP 500" in gen.fallback and "response_format" in gen.fallback
        assert [("response_format" in r) for r in srv.requests] == [True, True, False]
        # a new temperature is a new client: it still knows, and nothing more is said
        gen = generate(settings_for(srv), MESSAGES, temperature=0.9)
    assert gen.format_used == "fenced_block" and gen.fallback and len(srv.requests) == 4
    assert "response_format" not in srv.requests[3] and srv.requests[3]["temperature"] == 0.9
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1


def test_a_passing_500_keeps_structured_output(fake_openai: StartServer) -> None:
    srv = fake_openai([{"status": 500}, answer(), answer()])
    assert generate(settings_for(srv), MESSAGES).format_used == "json_schema"
    gen = generate(settings_for(srv), MESSAGES)
    assert gen.format_used == "json_schema" and gen.fallback is None and "response_format" in srv.requests[2]


def test_a_broken_server_is_not_taken_for_one_without_structured_output(fake_openai: StartServer) -> None:
    srv = fake_openai([{"status": 500}] * 5)
    with pytest.raises(LLMUnavailableError, match="HTTP 500") as exc:
        generate(settings_for(srv, max_retries=2), MESSAGES)
    assert exc.value.kind == "server_error"
    assert [("response_format" in r) for r in srv.requests] == [True, True, False, False, False]
    assert not LEARNT.refused


def test_max_tokens_sized_to_the_served_context(fake_openai: StartServer) -> None:
    srv = fake_openai([answer()], max_model_len=2048)
    long = [{"role": "user", "content": "x" * 4000}]  # 1001 tokens for the fake server's tokenizer
    gen = generate(settings_for(srv, max_tokens=4096), long)  # a 4096 default is refused by a 2048 context
    assert gen.script is not None and gen.context_tokens == 2048 and len(srv.requests) == 1
    assert 64 <= srv.requests[0]["max_tokens"] == gen.params["max_tokens"] <= 2048 - 1001


def test_a_wrong_context_guess_is_corrected_from_the_servers_words(fake_openai: StartServer) -> None:
    long = [{"role": "user", "content": "x" * 4000}]  # 1001 tokens for the fake tokenizer
    # vLLM 0.32 refuses a max_tokens above max_model_len, and says only that: the prompt is estimated
    srv = fake_openai([answer()], max_model_len=2048)
    gen = generate(settings_for(srv, max_tokens=4096, context_tokens=100_000), long)  # a setting that is wrong
    assert gen.script is not None and len(srv.requests) == 2
    assert srv.requests[0]["max_tokens"] == 4096 and 64 <= srv.requests[1]["max_tokens"] <= 2048 - 1001
    # OpenAI (and older vLLM) refuse prompt + max_tokens over the context, and give the prompt's size
    srv = fake_openai([answer()], max_model_len=2048, refuse_overflow=True)
    gen = generate(settings_for(srv, max_tokens=1500, context_tokens=100_000), long)
    assert gen.script is not None and [r["max_tokens"] for r in srv.requests] == [1500, 2048 - 1001 - 1]


def test_a_prompt_that_fills_the_context_says_so(fake_openai: StartServer) -> None:
    srv = fake_openai([answer()], max_model_len=512)
    with pytest.raises(LLMUnavailableError, match="max-model-len") as exc:
        generate(settings_for(srv, context_tokens=100_000), [{"role": "user", "content": "x" * 4000}])
    assert exc.value.kind == "bad_request"


def test_k_candidates_in_one_request(fake_openai: StartServer) -> None:
    other = SCRIPT.replace("3.615", "3.6")
    srv = fake_openai([{"choices": [answer(), "I cannot help", answer(other)]}])
    gen = generate(settings_for(srv, candidates=3), MESSAGES)
    assert srv.requests[0]["n"] == 3 and len(gen.choices) == 3
    assert [c.script.script if c.script else None for c in gen.choices] == [SCRIPT, None, other]
    assert gen.choices[1].problems[0].code == "generate.no_script"
    single = fake_openai([answer()])  # a server that ignores n answers once: one candidate
    assert len(generate(settings_for(single, candidates=3), MESSAGES).choices) == 1
    one = fake_openai([answer()])
    generate(settings_for(one), MESSAGES)
    assert "n" not in one.requests[0]


GRAMMAR = 'root ::= "units metal\\n" "run 0\\n"'


def test_grammar_sent_as_structured_outputs_and_the_answer_is_the_script(fake_openai: StartServer) -> None:
    srv = fake_openai(["units metal\nrun 0\n"])
    gen = generate(settings_for(srv, structured_output="grammar"), MESSAGES, grammar=GRAMMAR)
    assert srv.requests[0]["structured_outputs"] == {"grammar": GRAMMAR} and "response_format" not in srv.requests[0]
    assert gen.format_used == "grammar" and gen.script is not None and gen.script.script == "units metal\nrun 0\n"


def test_grammar_refused_falls_back_to_fenced(fake_openai: StartServer) -> None:
    fenced = "```lammps\n" + SCRIPT + "```"
    srv = fake_openai([{"reject_grammar": True}, fenced, fenced])
    settings = settings_for(srv, structured_output="grammar")
    gen = generate(settings, MESSAGES, grammar=GRAMMAR)
    assert gen.format_used == "fenced_block" and gen.script is not None and "structured_outputs" in gen.fallback
    assert generate(settings, MESSAGES, grammar=GRAMMAR).format_used == "fenced_block"
    assert ["structured_outputs" in r for r in srv.requests] == [True, False, False]


def test_grammar_answer_cut_off(fake_openai: StartServer) -> None:
    srv = fake_openai(
        [
            {"content": "units metal\nlattice fcc", "finish_reason": "length"},
            {"content": "units met", "finish_reason": "length"},
        ]
    )
    gen = generate(settings_for(srv, structured_output="grammar"), MESSAGES, grammar=GRAMMAR)
    assert gen.script is not None and gen.script.script == "units metal\n"  # the complete lines
    assert [(p.code, p.severity) for p in gen.problems] == [("generate.cut_off", Severity.WARNING)]
    gen = generate(settings_for(srv, structured_output="grammar"), MESSAGES, grammar=GRAMMAR)
    assert gen.script is None and [(p.code, p.severity) for p in gen.problems] == [("generate.cut_off", "error")]


def test_fenced_fallback_never_takes_a_python_block() -> None:
    text = "Use this:\n```python\nfrom lammps import lammps\nlmp = lammps()\n```"
    script, problems = read_answer(text)
    assert script is None and "python" in problems[0].message
    both = "```python\nimport os\n```\nand\n```\n" + SCRIPT + "```"
    script, problems = read_answer(both)
    assert problems == [] and script is not None and script.script == SCRIPT


def test_a_bad_command_is_quoted_once() -> None:
    script = "units lj\npair_style lj/cutt 2.5\nvariable c equal 2.5\npair_style lj/cut ${c} extra\n"
    wrong = Diagnostic(
        severity=Severity.ERROR,
        code="lammps.error",
        message="Unrecognized pair style 'lj/cutt'",
        line=2,
        file="in.lammps",
        command="pair_style lj/cutt 2.5",
    )
    substituted = Diagnostic(
        severity=Severity.ERROR,
        code="lammps.error",
        message="Illegal pair_style command",
        line=4,
        file="in.lammps",
        command="pair_style lj/cut 2.5 extra",
    )
    text = feedback_text([wrong, substituted], script=script)
    assert "command: pair_style lj/cutt" not in text  # line 2 of the numbered script shows it
    assert "command: pair_style lj/cut 2.5 extra" in text  # what LAMMPS saw differs from the line: said
    history = [Attempt(number=1, stage="preflight", script=script, diagnostics=[wrong], feedback=text)]
    prompt = build_messages("task", CAPS, history)[1]["content"]
    assert prompt.count("pair_style lj/cutt 2.5") == 1


def test_grammar_names_exactly_the_binarys_commands_and_styles() -> None:
    import re

    from mdagent_hpc.lammps.install import capabilities
    from mdagent_hpc.llm.grammar import lammps_grammar

    styles = capabilities().styles
    rules = dict(line.split(" ::= ", 1) for line in lammps_grammar(styles).splitlines())
    names = {rule: set(re.findall(r'"([^"]+)"', body)) for rule, body in rules.items() if rule.endswith("-name")}
    assert names["pair-style-name"] == set(styles["pair"]) - {"python"} | {"none"}
    assert names["fix-name"] == set(styles["fix"]) - {
        "python/invoke",
        "python/move",
        "imd",
        "ipi",
        "mdi/qm",
        "mdi/qmmm",
        "python",
    }
    assert names["compute-name"] == set(styles["compute"]) and "eam/alloy" in names["pair-style-name"]
    assert {"units", "run", "read_data", "velocity", "thermo_style"} <= names["plain-name"]
    assert not {"shell", "log", "python", "plugin", "geturl", "pair_style", "fix"} & names["plain-name"]
    assert "getenv" not in names["variable-name"] and "equal" in names["variable-name"]
    # a toy binary: only its own names
    toy = lammps_grammar({"pair": ["lj/cut"], "command": ["run"]})
    assert '"lj/cut"' in toy and '"eam"' not in toy and '"fix"' not in toy
