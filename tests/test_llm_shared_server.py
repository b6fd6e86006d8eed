"""The session's shared `vllm serve` (CPU build, tiny model; tests/services.py `vllm_server`): behind its key on every
route, and found by runs through the endpoint registry."""

import pytest
from test_llm_serve import get  # GET with the key, (status, JSON)


@pytest.mark.slow
def test_the_shared_server_is_real_vllm_with_a_long_context_behind_its_key(vllm_server):
    from openai import OpenAI

    assert vllm_server.base_url.endswith("/v1")
    assert get(f"{vllm_server.root_url}/health")[0] == 200
    # vLLM's own key guards /v1 only: the rest (a whole generation at /invocations) is model_guard's
    for path in ("/invocations", "/tokenize", "/metrics", "/version", "/v1/models"):
        assert get(f"{vllm_server.root_url}{path}")[0] == 401, path
        assert get(f"{vllm_server.root_url}{path}", "wrong")[0] == 401, path
    assert get(f"{vllm_server.root_url}/version", vllm_server.api_key)[0] == 200
    assert get(f"{vllm_server.base_url}/models")[0] == 401
    assert get(f"{vllm_server.base_url}/models", "wrong")[0] == 401
    status, models = get(f"{vllm_server.base_url}/models", vllm_server.api_key)
    assert status == 200 and models["data"][0]["id"] == vllm_server.model
    assert models["data"][0]["owned_by"] == "vllm"
    assert vllm_server.max_model_len >= 16384  # mdagent's first prompt alone is over 512 tokens

    client = OpenAI(base_url=vllm_server.base_url, api_key=vllm_server.api_key, timeout=60)
    answer = client.chat.completions.create(
        model=vllm_server.model,
        messages=[{"role": "user", "content": "Write a LAMMPS script."}],
        max_tokens=8,
        n=2,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "s",
                "strict": True,
                "schema": {"type": "object", "properties": {"script": {"type": "string"}}, "required": ["script"]},
            },
        },
    )
    assert len(answer.choices) == 2
    assert answer.usage.prompt_tokens > 5 and answer.usage.completion_tokens > 0
    for choice in answer.choices:  # cut at 8 tokens, but constrained: it starts as the schema's object
        assert choice.message.content.startswith('{"')


@pytest.mark.slow
def test_runs_use_the_registered_endpoint_unless_one_is_configured(vllm_server, tmp_path, monkeypatch):
    from mdagent_hpc.llm.config import LLMConfigError, load_llm_settings
    from mdagent_hpc.settings.endpoints import Endpoint, save_endpoint

    monkeypatch.setenv("MDAGENT_HOME", str(tmp_path))
    common = {"site": "s", "model": "/models/tiny", "workdir": "/w", "api_key": vllm_server.api_key}
    save_endpoint(
        Endpoint(
            name="old",
            job_id="1",
            state="ended",
            base_url="http://127.0.0.1:9/v1",
            submitted="2026-01-01T00:00:00+00:00",
            **common,
        )
    )
    save_endpoint(
        Endpoint(
            name="tiny",
            job_id="2",
            state="ready",
            base_url=vllm_server.base_url,
            served_model=vllm_server.model,
            submitted="2026-01-02T00:00:00+00:00",
            **common,
        )
    )
    assert (tmp_path / "llm" / "endpoints.json").stat().st_mode & 0o777 == 0o600  # it holds the keys
    settings = load_llm_settings()
    assert (settings.base_url, settings.model) == (vllm_server.base_url, vllm_server.model)
    assert settings.api_key.get_secret_value() == vllm_server.api_key
    assert load_llm_settings({"model": "other"}).model == "other"
    # a run's generation step gets the URL from its stored settings (never the key): the key goes with the URL
    assert load_llm_settings({"base_url": vllm_server.base_url}).api_key.get_secret_value() == vllm_server.api_key
    monkeypatch.setenv("MDAGENT_LLM_BASE_URL", "http://elsewhere:8000/v1")
    assert load_llm_settings().base_url == "http://elsewhere:8000/v1"  # a configured endpoint wins
    monkeypatch.delenv("MDAGENT_LLM_BASE_URL")
    save_endpoint(
        Endpoint(
            name="gone",
            job_id="3",
            state="ready",
            base_url="http://127.0.0.1:9/v1",
            submitted="2026-01-03T00:00:00+00:00",
            **common,
        )
    )
    with pytest.raises(LLMConfigError, match="endpoint gone .* does not answer.*mdagent llm status"):
        load_llm_settings()
