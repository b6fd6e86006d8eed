"""The model side for real: the shared `vllm serve` fixture (CPU, tiny model) and `mdagent llm serve` as a job."""

import json
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_the_shared_server_is_real_vllm_with_a_long_context_behind_its_key(vllm_server):
    from openai import OpenAI

    assert vllm_server.base_url.endswith("/v1")
    assert get(f"{vllm_server.root_url}/health")[0] == 200
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
