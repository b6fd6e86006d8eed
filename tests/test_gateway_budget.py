"""The gateway's token budget attacked (issue 19): stream flags vLLM reads as true, streams left before their usage
chunk, `max_tokens` far over the budget, parallel requests racing for the last tokens, Retry-After.

The fast tests run the gateway process in front of tests/vllm_like.py with a /tokenize that counts as its usage
does (words) and a `max_tokens` it honours, so every count here is known exactly. The slow ones run against the real
`vllm serve` of the session (tests/services.py).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from test_gateway import CHAT, HTTP, call, mdagent, start_gateway, stop_gateway
from vllm_like import VLLMLikeServer

from mdagent_hpc.accounts.quotas import next_midnight

UPSTREAM_KEY = "upstream-" + secrets.token_hex(8)
ANSWER = " ".join(f"w{i}" for i in range(40))  # 40 words: 40 completion tokens unless max_tokens cuts it
PROMPT_WORDS = len(CHAT["messages"][0]["content"].split())  # 5


class CountingUpstream(VLLMLikeServer):
    """vllm_like with vLLM's /tokenize (a count, in the fake's own tokens: words) and `max_tokens` honoured."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        base = self._httpd.RequestHandlerClass
        server = self
        self.tokenized: list[dict] = []

        class Handler(base):
            def do_POST(self):
                if self.path.split("?")[0] != "/tokenize":
                    return super().do_POST()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                server.tokenized.append(body)
                count = server.usage(body, "")["prompt_tokens"]
                self._send(200, {"count": count, "max_model_len": 4096, "tokens": list(range(count))})

        self._httpd.RequestHandlerClass = Handler

    def answer_for(self, body, headers):
        answer = super().answer_for(body, headers)
        limit = body.get("max_tokens")
        return " ".join(answer.split()[:limit]) if isinstance(limit, int) else answer


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("gateway-budget")


@pytest.fixture(scope="module")
def env(tmp):
    return {
        **os.environ,
        "MDAGENT_USERS_DB": f"sqlite:///{tmp / 'users.db'}",
        "MDAGENT_GATEWAY_UPSTREAM_KEY": UPSTREAM_KEY,
    }


@pytest.fixture(scope="module")
def upstream():
    with CountingUpstream(api_key=UPSTREAM_KEY, repeat=ANSWER) as srv:
        yield srv


@pytest.fixture(scope="module")
def gateway(tmp, env, upstream):
    gw = start_gateway(tmp, env, upstream.base_url)
    yield gw
    stop_gateway(gw.proc)


def add_user(env, *quota) -> tuple[str, str]:
    name = "u" + secrets.token_hex(4)
    result = mdagent("users", "add", name, *quota, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return name, json.loads(result.stdout)["key"]


def used(env, name) -> dict:
    result = mdagent("users", "usage", name, "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    return rows[0] if rows else {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}


def audit_lines(gw, name) -> list[dict]:
    return [line for line in map(json.loads, gw.audit.read_text().splitlines()) if line["user"] == name]


def wait_for_audit(gw, name, count=1) -> list[dict]:
    """The user's audit lines, once there are `count` (written after the answer is sent, or after a user left)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = audit_lines(gw, name)
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"no audit line for {name} after 20 s")


# -- 1. any value vLLM reads as true is a stream, and its usage is counted -------------------------------------
@pytest.mark.parametrize("flag", ["true", 1, "1", "yes", "on", "True"])
def test_a_stream_flag_vllm_reads_as_true_is_counted_as_a_stream(gateway, upstream, env, flag):
    name, key = add_user(env)
    body = {**CHAT, "stream": flag}
    with HTTP.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: {")]
    sent = upstream.requests[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}  # what the server saw
    assert all(json.loads(e[6:])["choices"] for e in events)  # the user did not ask for the usage chunk
    [line] = wait_for_audit(gateway, name)
    assert line["stream"] and (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT_WORDS, 40)
    row = used(env, name)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_WORDS, 40)


def test_a_stream_flag_vllm_would_refuse_is_refused_in_one_sentence(gateway, upstream, env):
    _, key = add_user(env)
    seen = len(upstream.requests)
    for field, value in [("stream", "maybe"), ("stream", 2), ("max_tokens", "lots"), ("max_tokens", 0), ("n", 0)]:
        answer = call(gateway, "POST", "/v1/chat/completions", key, json={**CHAT, field: value})
        assert answer.status_code == 400, (field, value, answer.text)
        message = answer.json()["error"]["message"]
        assert f"`{field}`" in message and "Traceback" not in message and message.count(". ") == 0
    assert len(upstream.requests) == seen


# -- 2. a user who leaves a stream early pays for what was streamed --------------------------------------------
def test_leaving_a_stream_before_its_usage_chunk_is_charged_what_was_streamed(gateway, upstream, env):
    name, key = add_user(env)
    upstream.chunk_delay = 0.2
    try:
        received = []
        body = {**CHAT, "stream": True}
        with HTTP.stream(
            "POST", gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    received.append(line)
                if len(received) == 3:
                    break  # and the connection is closed here, long before the 40th word and the usage chunk
        [line] = wait_for_audit(gateway, name)
    finally:
        upstream.chunk_delay = 0.0
    assert line["stream"] and line["prompt_tokens"] == PROMPT_WORDS
    # the three words read, and the few the gateway had passed on before it noticed (one per 0.2 s chunk)
    assert 3 <= line["completion_tokens"] < 40
    row = used(env, name)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_WORDS, line["completion_tokens"])


# -- 3. max_tokens capped by the budget left; prompts over it refused; no race ---------------------------------
def test_max_tokens_far_over_the_budget_is_capped_to_what_is_left(gateway, upstream, env):
    name, key = add_user(env, "--tokens-per-day", "25")
    answer = call(gateway, "POST", "/v1/chat/completions", key, json={**CHAT, "max_tokens": 10**9})
    assert answer.status_code == 200, answer.text
    assert upstream.requests[-1]["max_tokens"] == 25 - PROMPT_WORDS
    assert answer.json()["usage"]["total_tokens"] == 25
    wait_for_audit(gateway, name)
    assert used(env, name)["prompt_tokens"] + used(env, name)["completion_tokens"] == 25
    spent = call(gateway, "POST", "/v1/chat/completions", key)
    assert spent.status_code == 429 and spent.json()["error"]["code"] == "tokens_per_day"


@pytest.mark.parametrize(
    ("asked", "forwarded"),
    [
        ({}, {"max_tokens": 15}),  # none asked: the budget left is the cap
        ({"max_tokens": "1000000000"}, {"max_tokens": 15}),  # a string vLLM reads as a number
        ({"max_completion_tokens": 10**6}, {"max_tokens": 15, "max_completion_tokens": 15}),
        ({"max_tokens": 8}, {"max_tokens": 8}),  # under the cap: as asked
        ({"max_tokens": 10**6, "n": 3}, {"max_tokens": 5}),  # three answers share what is left
    ],
)
def test_every_way_of_asking_for_tokens_is_capped(gateway, upstream, env, asked, forwarded):
    _, key = add_user(env, "--tokens-per-day", "20")
    answer = call(gateway, "POST", "/v1/chat/completions", key, json={**CHAT, **asked})
    assert answer.status_code == 200, answer.text
    sent = upstream.requests[-1]
    assert {k: sent.get(k) for k in forwarded} == forwarded


def test_a_prompt_over_the_budget_left_is_refused_before_it_reaches_the_server(gateway, upstream, env):
    name, key = add_user(env, "--tokens-per-day", "12")
    assert call(gateway, "POST", "/v1/chat/completions", key, json={**CHAT, "max_tokens": 2}).status_code == 200
    wait_for_audit(gateway, name)  # 5 + 2 used: 5 left, and the prompt is 5
    seen = len(upstream.requests)
    refused = call(gateway, "POST", "/v1/chat/completions", key)
    assert refused.status_code == 429 and len(upstream.requests) == seen
    error = refused.json()["error"]
    assert error["code"] == "tokens_per_day" and error["type"] == "insufficient_quota"
    assert "prompt is 5 tokens and only 5" in error["message"] and "Traceback" not in error["message"]
    now = datetime.now(UTC)
    to_midnight = (next_midnight(now) - now).total_seconds()
    assert abs(int(refused.headers["retry-after"]) - to_midnight) < 60  # the budget is back at 00:00 UTC


def test_a_prompt_over_the_whole_budget_gets_no_retry_after(gateway, upstream, env):
    _, key = add_user(env, "--tokens-per-day", "4")
    refused = call(gateway, "POST", "/v1/chat/completions", key)  # 5 words
    assert refused.status_code == 429 and "retry-after" not in refused.headers  # waiting does not help
    assert "more than your whole daily LLM token budget of 4" in refused.json()["error"]["message"]
    assert refused.headers["x-should-retry"] == "false"


def test_the_rate_limit_says_when_its_window_frees(gateway, env):
    _, key = add_user(env, "--requests-per-minute", "1")
    started = time.time()
    assert call(gateway, "GET", "/v1/models", key).status_code == 200
    refused = call(gateway, "GET", "/v1/models", key)
    assert refused.status_code == 429
    frees = started + 60 - time.time()
    assert frees - 2 <= int(refused.headers["retry-after"]) <= frees + 2


def test_parallel_requests_cannot_share_out_more_than_the_budget(gateway, upstream, env):
    """Ten streams at once on a budget of 60 asking 20 tokens each: (5 + 20) x 2 + (5 + 5) fits, no more."""
    name, key = add_user(env, "--tokens-per-day", "60")
    upstream.chunk_delay = 0.05  # the streams overlap: none has settled when the others are checked
    try:

        def one(_):
            return call(gateway, "POST", "/v1/chat/completions", key, json={**CHAT, "max_tokens": 20, "stream": True})

        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(one, range(10)))
    finally:
        upstream.chunk_delay = 0.0
    admitted = [a for a in answers if a.status_code == 200]
    assert len(admitted) == 3 and all(a.status_code == 429 for a in answers if a not in admitted)
    wait_for_audit(gateway, name, 10)
    row = used(env, name)
    assert row["prompt_tokens"] + row["completion_tokens"] == 60 and row["requests"] == 3


# -- against the real vLLM ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(vllm_server, tmp):
    env = {
        **os.environ,
        "MDAGENT_USERS_DB": f"sqlite:///{tmp / 'users-vllm.db'}",
        "MDAGENT_GATEWAY_UPSTREAM_KEY": vllm_server.api_key,
    }
    gw = start_gateway(tmp, env, vllm_server.base_url)
    yield gw, env, vllm_server
    stop_gateway(gw.proc)


def real_chat(server, **extra) -> dict:
    return {"model": server.model, "messages": [{"role": "user", "content": "Hello there"}], **extra}


@pytest.mark.slow
def test_real_vllm_streams_a_string_flag_and_the_gateway_counts_it(real):
    gw, env, server = real
    name, key = add_user(env)
    body = real_chat(server, stream="true", max_tokens=12, ignore_eos=True)
    with HTTP.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        list(r.iter_lines())
    [line] = wait_for_audit(gw, name)
    assert line["completion_tokens"] == 12 and line["prompt_tokens"] > 0


@pytest.mark.slow
def test_real_vllm_a_stream_left_early_is_charged_and_max_tokens_capped(real):
    gw, env, server = real
    name, key = add_user(env)
    # Long enough that leaving after 6 chunks is early however fast the model is: the tiny CPU model once wrote
    # all of 2,000 tokens before the gateway saw the client go (a CI run; the charge was then 2,000, and right).
    asked = 20_000
    body = real_chat(server, stream=True, max_tokens=asked, ignore_eos=True)
    received = 0
    with HTTP.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as r:
        for line in r.iter_lines():
            received += line.startswith("data: {")
            if received == 6:
                break
    [line] = wait_for_audit(gw, name)
    assert line["prompt_tokens"] > 0 and 5 <= line["completion_tokens"] < asked
    row = used(env, name)
    assert row["completion_tokens"] == line["completion_tokens"]

    capped, capped_key = add_user(env, "--tokens-per-day", "60")
    answer = call(
        gw, "POST", "/v1/chat/completions", capped_key, json=real_chat(server, max_tokens=10**9, ignore_eos=True)
    )
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert usage["total_tokens"] == 60  # the prompt as vLLM's /tokenize counts it, and what was left of the 60
    wait_for_audit(gw, capped)
    row = used(env, capped)
    assert row["prompt_tokens"] + row["completion_tokens"] == 60
    refused = call(gw, "POST", "/v1/chat/completions", capped_key, json=real_chat(server))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0


def test_an_upstream_without_tokenize_is_still_capped_by_an_estimate(tmp, env):
    """A server whose /tokenize gives no count (the plain fake: a token list): the cap still holds."""
    with VLLMLikeServer(api_key=UPSTREAM_KEY, repeat=ANSWER) as plain:
        gw = start_gateway(tmp, env, plain.base_url)
        try:
            _, key = add_user(env, "--tokens-per-day", "100")
            answer = call(gw, "POST", "/v1/chat/completions", key, json={**CHAT, "max_tokens": 10**9})
            assert answer.status_code == 200
            assert 0 < plain.requests[-1]["max_tokens"] < 100
        finally:
            stop_gateway(gw.proc)
