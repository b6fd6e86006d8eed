"""The LLM gateway (`mdagent gateway serve`) as a real process in front of a vLLM-like server, and `mdagent users`.

The upstream is tests/vllm_like.py: the FakeOpenAIServer with vLLM's `--api-key` behaviour (only /v1 protected;
/invocations, /tokenize, /metrics ... open) and streaming. The same checks against the real `vllm serve` are in
test_gateway_vllm below (slow). The pure parts (quotas, the event splitter) are tested first, in milliseconds.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from vllm_like import VLLMLikeServer

from mdagent_hpc.accounts.quotas import RateWindow, check_daily, next_midnight
from mdagent_hpc.serving.gateway.app import _prepare, upstream_base
from mdagent_hpc.serving.gateway.sse import EventSplitter, StreamTally, event_data, usage_of, usage_only

UPSTREAM_KEY = "upstream-" + secrets.token_hex(8)
ANSWER = "units metal and then some more words"
# every route a client could try; only the first four are forwarded, and only with a valid key
ROUTES = [
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/invocations"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/version"),
    ("GET", "/load"),
    ("GET", "/ping"),
    ("POST", "/inference/v1/generate"),
    ("DELETE", "/v1/models"),
    ("GET", "/"),
]
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "write a lammps script please"}]}


# -- pure parts ------------------------------------------------------------------------------------------------
def test_rate_window_counts_per_user_and_says_when_it_frees():
    window = RateWindow(period=60)
    assert window.admit("a", 2, now=100.0) is None
    assert window.admit("a", 2, now=110.0) is None
    assert window.admit("b", 2, now=110.0) is None  # another user has their own count
    refusal = window.admit("a", 2, now=120.0)
    assert refusal.quota == "requests_per_minute" and refusal.used == 2
    assert refusal.resets_at.timestamp() == 160.0  # when the first of the two leaves the window
    assert window.admit("a", 2, now=160.5) is None
    assert window.admit("a", None, now=161) is None  # no limit


def test_daily_budget_refuses_from_the_limit_on_until_midnight_utc():
    now = datetime(2026, 11, 30, 17, 5, tzinfo=UTC)
    assert check_daily("tokens_per_day", 1000, 999, now) is None
    assert check_daily("tokens_per_day", None, 10**9, now) is None
    refusal = check_daily("tokens_per_day", 1000, 1000, now)
    assert refusal.resets_at == next_midnight(now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert refusal.retry_after(now) == 6 * 3600 + 55 * 60
    assert "daily LLM token budget" in refusal.message and "2026-12-01T00:00:00Z" in refusal.message


def test_events_are_split_as_they_complete_and_the_usage_chunk_is_found():
    splitter = EventSplitter()
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    stream = (
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"b"}}],"usage":null}\r\n\r\n'
        + b"data: "
        + json.dumps({"choices": [], "usage": usage}).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    pieces = [stream[i : i + 7] for i in range(0, len(stream), 7)]  # cut anywhere, even inside "\r\n\r\n"
    events = [e for piece in pieces for e in splitter.feed(piece)]
    assert b"".join(events) == stream and len(events) == 4 and splitter.rest() == b""
    data = [event_data(e) for e in events]
    assert data[0] is None  # no "usage" in it: not even parsed
    assert usage_of(data[1]) is None and not usage_only(data[1])
    assert usage_of(data[2]) == usage and usage_only(data[2])
    assert data[3] is None


def sse_chunk(data: dict, end: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(data).encode() + end


def test_a_stream_passes_on_as_read_and_only_its_usage_chunk_is_parsed_on_the_way():
    usage = {"prompt_tokens": 3, "completion_tokens": 3}
    stream = (
        sse_chunk({"choices": [{"delta": {"content": "usage"}}], "usage": None})  # the word, and OpenAI's null
        + sse_chunk({"choices": [{"delta": {"content": '"usage":{'}}]}, b"\r\n\r\n")  # the key, quoted in text
        + sse_chunk({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]})
        + sse_chunk({"choices": [], "usage": usage})
        + b"data: [DONE]\n\n"
    )
    for wanted in (True, False):
        tally = StreamTally(keep_usage_chunk=wanted)
        pieces = [stream[i : i + 5] for i in range(0, len(stream), 5)]  # cut anywhere, even inside "\r\n\r\n"
        passed = [tally.feed(piece) for piece in pieces]
        assert all(p.endswith((b"\n\n", b"")) for p in passed)  # only whole events are passed on
        out = b"".join(passed) + tally.rest()
        usage_chunk = sse_chunk({"choices": [], "usage": usage})
        assert out == (stream if wanted else stream.replace(usage_chunk, b""))
        assert tally.usage == usage
        assert tally.generated() == ('usage"usage":{{}', 3)


def test_a_long_stream_keeps_its_text_not_its_events():
    tally = StreamTally(fold_bytes=1000)
    event = sse_chunk({"id": "x" * 200, "choices": [{"delta": {"content": "ab"}}]})
    for _ in range(500):
        tally.feed(event)
        assert tally._unread_bytes <= 1000 + len(event)  # bounded, however long the stream
    assert tally.usage is None and tally.generated() == ("ab" * 500, 500)
    tally.feed(b"data: {cut off")
    assert tally.rest() == b"data: {cut off" and tally.generated() == ("ab" * 500, 500)


def test_a_stream_is_made_to_end_with_usage_unless_it_already_does():
    body, stream, wants = _prepare(json.dumps({"stream": True, "messages": []}).encode())
    assert stream and not wants and json.loads(body)["stream_options"] == {"include_usage": True}
    original = json.dumps({"stream": True, "stream_options": {"include_usage": True}}).encode()
    assert _prepare(original) == (original, True, True)
    assert _prepare(b'{"messages": []}') == (b'{"messages": []}', False, True)
    with pytest.raises(ValueError, match="not JSON"):
        _prepare(b"{nope")
    assert upstream_base("http://gpu042:8000/v1/") == upstream_base("http://gpu042:8000") == "http://gpu042:8000"
    with pytest.raises(ValueError, match="not an http"):
        upstream_base("gpu042:8000")


# -- the gateway as a process ----------------------------------------------------------------------------------
def mdagent(*args, env, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen
    log: Path
    audit: Path


def start_gateway(tmp: Path, env: dict, upstream: str, *extra: str) -> Gateway:
    """`mdagent gateway serve` on a free port, ready (its /health answers); stop it with stop_gateway."""
    log, audit = tmp / f"gateway-{secrets.token_hex(3)}.log", tmp / "audit.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "mdagent_hpc.cli",
        "gateway",
        "serve",
        "--upstream",
        upstream,
        "--port",
        "0",
        "--audit-log",
        str(audit),
        *extra,
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    url = None
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text()
        if url is None and "gateway on " in text:
            url = text.split("gateway on ", 1)[1].split()[0].removesuffix("/v1")
        if url:
            try:
                if HTTP.get(url + "/health", timeout=1).status_code == 200:
                    return Gateway(url, proc, log, audit)
            except httpx2.TransportError:
                pass
        time.sleep(0.1)
    stop_gateway(proc)
    raise AssertionError(f"the gateway did not come up:\n{log.read_text()}")


def stop_gateway(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def env(tmp):
    """The users database of these tests, and the upstream's key where only the gateway sees it."""
    return {
        **os.environ,
        "MDAGENT_USERS_DB": f"sqlite:///{tmp / 'users.db'}",
        "MDAGENT_GATEWAY_UPSTREAM_KEY": UPSTREAM_KEY,
    }


@pytest.fixture(scope="module")
def upstream():
    with VLLMLikeServer(api_key=UPSTREAM_KEY, repeat=ANSWER) as srv:
        yield srv


@pytest.fixture(scope="module")
def gateway(tmp, env, upstream):
    gw = start_gateway(tmp, env, upstream.base_url, "--max-body-kb", "64")
    yield gw
    stop_gateway(gw.proc)


KEYS: list[str] = []  # every key handed out in this module: none may appear in the audit log


def add_user(env, name, *quota) -> str:
    result = mdagent("users", "add", name, *quota, "--json", env=env)
    assert result.returncode == 0, result.stderr
    KEYS.append(json.loads(result.stdout)["key"])
    return KEYS[-1]


HTTP = httpx2.Client(timeout=30, trust_env=False)  # one client: making one costs ~50 ms (its TLS context)


def call(gw: Gateway, method: str, route: str, key: str | None = None, **kwargs) -> httpx2.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if method == "POST" and "json" not in kwargs and "content" not in kwargs:
        kwargs["json"] = {**CHAT, "prompt": "hi", "input": "hi"}
    return HTTP.request(method, gw.url + route, headers=headers, **kwargs)


def usage_of_user(env, name) -> dict:
    result = mdagent("users", "usage", name, "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    return rows[0] if rows else {}


def test_no_key_a_wrong_key_and_a_revoked_key_are_refused_on_every_route(gateway, upstream, env):
    key = add_user(env, "mallory")
    assert call(gateway, "POST", "/v1/chat/completions", key).status_code == 200  # works until revoked
    revoked = mdagent("users", "revoke", "mallory", env=env)
    assert revoked.returncode == 0 and "revoked user mallory" in revoked.stdout
    seen = len(upstream.requests)
    for bad in [None, "wrong", "mdk_" + secrets.token_urlsafe(32), key, UPSTREAM_KEY]:
        for method, route in ROUTES:
            response = call(gateway, method, route, bad)
            assert response.status_code == 401, (bad, method, route, response.text)
            error = response.json()["error"]
            assert error["code"] == ("missing_api_key" if bad is None else "invalid_api_key")
            assert "mdagent" in error["message"]  # says what to do: whom to ask
    assert upstream.open_hits == [] and len(upstream.requests) == seen  # nothing reached the server


def test_a_valid_key_reaches_only_the_openai_routes_and_never_the_upstream_key(gateway, upstream, env):
    key = add_user(env, "alice")
    for method, route in ROUTES[4:]:
        response = call(gateway, method, route, key)
        assert response.status_code == 404, (method, route, response.text)
        assert "forwards only GET /v1/models" in response.json()["error"]["message"]
    assert upstream.open_hits == []
    models = call(gateway, "GET", "/v1/models", key)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "fake-model"
    chat = call(gateway, "POST", "/v1/chat/completions", key)
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == ANSWER
    sent = {k.lower(): v for k, v in upstream.headers[-1].items()}
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the gateway's key, not alice's
    assert UPSTREAM_KEY not in chat.text + models.text
    assert call(gateway, "GET", "/health").json() == {"status": "ok"}  # open, and tells nothing


def test_two_users_usage_is_counted_apart(gateway, env):
    alice, bob = add_user(env, "ann"), add_user(env, "bob")
    expected = {"ann": [0, 0, 0], "bob": [0, 0, 0]}
    for name, key, route in [
        ("ann", alice, "/v1/chat/completions"),
        ("ann", alice, "/v1/chat/completions"),
        ("bob", bob, "/v1/completions"),
        ("bob", bob, "/v1/embeddings"),
    ]:
        response = call(gateway, "POST", route, key)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        counts = expected[name]
        counts[0] += 1
        counts[1] += usage["prompt_tokens"]
        counts[2] += usage.get("completion_tokens", 0)
    time.sleep(0.3)  # usage is written just after the answer is sent
    for name, (requests, prompt, completion) in expected.items():
        row = usage_of_user(env, name)
        assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (requests, prompt, completion)
        assert row["prompt_tokens"] > 0
    assert expected["ann"] != expected["bob"]


def test_a_daily_token_budget_is_enforced_with_a_clear_refusal(gateway, upstream, env):
    key = add_user(env, "carol", "--tokens-per-day", "5")
    first = call(gateway, "POST", "/v1/chat/completions", key)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 5  # this one crosses the budget
    time.sleep(0.3)
    seen = len(upstream.requests)
    second = call(gateway, "POST", "/v1/chat/completions", key)
    assert second.status_code == 429
    error = second.json()["error"]
    assert error["code"] == "tokens_per_day" and error["type"] == "insufficient_quota"
    midnight = next_midnight(datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "daily LLM token budget" in error["message"] and f"resets at {midnight}" in error["message"]
    assert 0 < int(second.headers["retry-after"]) <= 86400 and second.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == seen
    raised = mdagent("users", "set", "carol", "--tokens-per-day", "none", env=env)
    assert raised.returncode == 0 and "no limits" in raised.stdout
    assert call(gateway, "POST", "/v1/chat/completions", key).status_code == 200
    time.sleep(0.3)
    assert usage_of_user(env, "carol")["refused"] == 1


def test_a_rate_limit_is_enforced_per_user(gateway, env):
    key, other = (
        add_user(env, "dave", "--requests-per-minute", "2"),
        add_user(env, "erin", "--requests-per-minute", "2"),
    )
    assert [call(gateway, "GET", "/v1/models", key).status_code for _ in range(2)] == [200, 200]
    third = call(gateway, "GET", "/v1/models", key)
    assert third.status_code == 429 and third.json()["error"]["code"] == "requests_per_minute"
    assert "LLM request rate limit" in third.json()["error"]["message"]
    assert 0 < int(third.headers["retry-after"]) <= 60 and "x-should-retry" not in third.headers
    assert call(gateway, "GET", "/v1/models", other).status_code == 200


def test_streaming_is_passed_through_chunk_by_chunk_and_its_usage_counted(gateway, upstream, env):
    from openai import OpenAI

    key = add_user(env, "frank")
    client = OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    upstream.chunk_delay = 0.15
    try:
        start = time.monotonic()
        arrivals, text, chunks = [], "", []
        for chunk in client.chat.completions.create(stream=True, **CHAT):
            chunks.append(chunk)
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - start)
                text += chunk.choices[0].delta.content
    finally:
        upstream.chunk_delay = 0.0
    assert text == ANSWER
    words = len(ANSWER.split())
    assert len(arrivals) == words
    # the first words arrive while the server is still producing the last ones, 0.15 s apart
    assert arrivals[-1] - arrivals[0] > 0.1 * (words - 1)
    assert all(c.choices for c in chunks)  # frank did not ask for the usage chunk: he does not get it
    assert upstream.requests[-1]["stream_options"] == {"include_usage": True}  # the gateway asked for it
    time.sleep(0.3)
    row = usage_of_user(env, "frank")
    assert row["requests"] == 1 and row["completion_tokens"] == words and row["prompt_tokens"] > 0
    asked = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **CHAT)
    last = list(asked)[-1]
    assert not last.choices and last.usage.completion_tokens == words


def test_a_user_leaving_mid_stream_is_still_logged(gateway, upstream, env):
    key = add_user(env, "lea")
    upstream.chunk_delay = 0.3
    try:
        body = {**CHAT, "stream": True}
        with HTTP.stream(
            "POST", gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as response:
            first = next(response.iter_lines())
            assert first.startswith("data: ")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the gateway notices at its next write, then logs the request
            lines = [json.loads(line) for line in gateway.audit.read_text().splitlines()]
            if any(line["user"] == "lea" for line in lines):
                break
            time.sleep(0.1)
        [line] = [line for line in lines if line["user"] == "lea"]
        assert line["stream"] and line["status"] == 200
    finally:
        upstream.chunk_delay = 0.0


def test_a_request_over_the_size_limit_is_refused(gateway, upstream, env):
    key = add_user(env, "gina")
    seen = len(upstream.requests)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = call(gateway, "POST", "/v1/chat/completions", key, json=big)
    assert response.status_code == 413 and "65536 bytes" in response.json()["error"]["message"]
    assert len(upstream.requests) == seen


def test_the_agents_client_works_through_the_gateway(gateway, env):
    key = add_user(env, "hank")
    result = mdagent(
        "llm", "check", env={**env, "MDAGENT_LLM_BASE_URL": gateway.url + "/v1", "MDAGENT_LLM_API_KEY": key}
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_audit_log_has_every_request_and_no_key(gateway):
    time.sleep(0.3)
    text = gateway.audit.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert {"time", "user", "route", "status", "prompt_tokens", "completion_tokens", "latency_ms"} <= set(lines[0])
    assert {"alice", "bob", "carol", "frank", None} <= {line["user"] for line in lines}
    assert any(line["route"] == "/invocations" and line["status"] == 401 and line["user"] is None for line in lines)
    assert any(line["refused"] == "tokens_per_day" and line["user"] == "carol" for line in lines)
    streamed = [line for line in lines if line["user"] == "frank" and line["stream"]]
    assert streamed and streamed[0]["completion_tokens"] == len(ANSWER.split())
    for secret in [*KEYS, UPSTREAM_KEY]:
        assert secret not in text and secret[4:20] not in text
    assert "mdk_" not in text


def test_users_cli_lists_and_refuses_bad_input_in_one_sentence(env, tmp):
    listed = json.loads(mdagent("users", "list", "--json", env=env).stdout)
    by_name = {u["name"]: u for u in listed}
    assert not by_name["mallory"]["active"] and by_name["alice"]["active"]
    assert by_name["alice"]["keys"] == [KEYS[1][:12]]
    db = (tmp / "users.db").read_bytes()
    assert all(k.encode() not in db for k in KEYS)  # stored hashed only
    for args, said in [
        (["users", "add", "no spaces"], "is not valid"),
        (["users", "add", "alice"], "exists already"),
        (["users", "revoke", "nobody"], "no user 'nobody'"),
        (["users", "revoke", "alice", "--key", "mdk_nothere"], "no active key"),
        (["users", "set", "alice"], "at least one quota"),
        (["users", "list", "--db", "nonsense"], "not a database URL"),
        (["gateway", "serve", "--upstream", "gpu042:8000"], "not an http(s) URL"),
    ]:
        result = mdagent(*args, env=env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert said in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_upstream_is_a_502_that_says_so(tmp, env):
    key = add_user(env, "ivan")
    dead = start_gateway(tmp, env, "http://127.0.0.1:9/v1")  # port 9 (discard): nothing listens
    try:
        assert "warning:" in dead.log.read_text() and "does not answer" in dead.log.read_text()
        response = call(dead, "POST", "/v1/chat/completions", key)
        assert response.status_code == 502 and "cannot be reached" in response.json()["error"]["message"]
    finally:
        stop_gateway(dead.proc)
    assert dead.proc.returncode is not None


class BadUpstream(socketserver.ThreadingTCPServer):
    """An upstream that misbehaves as the request's model says: `break` (a stream cut off in its second event),
    `silent` (never answers), `garbage` (not HTTP); over TLS with a certificate no one trusts when given one."""

    daemon_threads = allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), BadUpstreamHandler)
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server_address[1]}/v1"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def get_request(self):
        sock, addr = super().get_request()
        return (self.tls.wrap_socket(sock, server_side=True) if self.tls else sock), addr


class BadUpstreamHandler(socketserver.StreamRequestHandler):
    def handle(self):
        head = b""
        while not head.endswith(b"\r\n\r\n") and (line := self.rfile.readline()):
            head += line
        length = int(
            next((h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
        )
        model = json.loads(self.rfile.read(length) or b"{}").get("model")
        if model == "silent":
            time.sleep(5)
        elif model == "garbage":
            self.wfile.write(b"nonsense\r\n\r\n")
        elif model == "break":
            event = b"data: " + json.dumps({"choices": [{"delta": {"content": "hi"}}]}).encode() + b"\n\n"
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event) + b"%x\r\n%s" % (len(event), event[:9]))
        else:
            self.wfile.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")


def test_an_upstream_that_breaks_off_times_out_or_is_not_trusted_is_told_without_details(tmp_path, env):
    key = add_user(env, "olga")
    bad = BadUpstream()
    gw = start_gateway(tmp_path, env, bad.url, "--timeout", "1")
    try:
        with HTTP.stream(
            "POST",
            gw.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={**CHAT, "model": "break", "stream": True},
        ) as response:
            assert response.status_code == 200
            assert response.read().count(b"data: ") == 1  # the whole first event, not the cut one
        response = call(gw, "POST", "/v1/chat/completions", key, json={**CHAT, "model": "silent"})
        assert response.status_code == 504 and "did not answer within 1 s" in response.json()["error"]["message"]
        response = call(gw, "POST", "/v1/chat/completions", key, json={**CHAT, "model": "garbage"})
        assert response.status_code == 502 and "cannot be reached" in response.json()["error"]["message"]
    finally:
        stop_gateway(gw.proc)
    lines = [json.loads(line) for line in gw.audit.read_text().splitlines()]
    assert [(line["status"], line["refused"]) for line in lines] == [
        (200, "upstream_broken"),
        (504, "upstream_timeout"),
        (502, "upstream_unreachable"),
    ]
    cert, private = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(private),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, private)
    untrusted = BadUpstream(tls)
    gw = start_gateway(tmp_path, env, untrusted.url)
    try:
        response = call(gw, "POST", "/v1/chat/completions", key, json={**CHAT, "model": "break", "stream": True})
        message = response.json()["error"]["message"]
        assert response.status_code == 502 and "cannot be reached" in message
        assert "127.0.0.1" not in message and "certificate" not in message.lower()
    finally:
        stop_gateway(gw.proc)
    for server in (bad, untrusted):
        server.shutdown()
        server.server_close()


def test_the_users_store_works_on_postgresql_and_a_lost_database_is_a_503(tmp, env, upstream):
    """The shared deployment's store on the real PostgreSQL, in a database made here; the gateway keeps running and
    says 503 when that database goes away under it (dropped here), and the CLI says so in one sentence."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    from mdagent_hpc.accounts.store import Store

    name = f"mdagent_test_users_{secrets.token_hex(4)}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    admin = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres", "autocommit": True}
    with psycopg.connect(**admin, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    store = gw = None
    try:
        store = Store(url)
        user, key = store.add_user("pat", email="pat@example.org")
        assert store.authenticate(key).name == "pat" and store.authenticate(key[:-1] + "x") is None
        with ThreadPoolExecutor(8) as pool:  # the gateway records from a thread pool: no update may be lost
            list(
                pool.map(lambda _: store.record(user.id, "2026-11-30", prompt_tokens=3, completion_tokens=2), range(40))
            )
        [day] = store.usage("pat")
        assert (day.requests, day.prompt_tokens, day.completion_tokens) == (40, 120, 80)
        assert store.tokens_used(user.id, "2026-11-30") == 200 and store.tokens_used(user.id, "2026-11-29") == 0
        other = store.new_key("pat")
        store.revoke("pat", other[:12])
        assert store.authenticate(other) is None and store.authenticate(key).name == "pat"

        gw = start_gateway(tmp, {**env, "MDAGENT_USERS_DB": url}, upstream.base_url)
        assert call(gw, "GET", "/v1/models", key).status_code == 200
        with psycopg.connect(**admin, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        lost = call(gw, "GET", "/v1/models", key)
        assert lost.status_code == 503 and lost.json()["error"]["code"] == "users_db_unavailable"
        assert call(gw, "GET", "/health").status_code == 200  # still up
        listed = mdagent("users", "list", "--db", url, env=env)
        assert listed.returncode == 2 and "cannot open the users database" in listed.stderr
        assert "Traceback" not in listed.stderr
    finally:
        if gw is not None:
            stop_gateway(gw.proc)
        if store is not None:
            store.close()
        with psycopg.connect(**admin, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- in front of the real vLLM (the session's one `vllm serve`, tests/services.py) ---------------------------------
@pytest.mark.slow
def test_the_gateway_in_front_of_a_real_vllm(vllm_server, tmp):
    env = {
        **os.environ,
        "MDAGENT_USERS_DB": f"sqlite:///{tmp / 'users-vllm.db'}",
        "MDAGENT_GATEWAY_UPSTREAM_KEY": vllm_server.api_key,
    }
    model = vllm_server.model
    chat = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
    # vLLM's own key leaves /invocations (a full completion) open; model_guard closes it, with the one shared key
    # (the gateway's upstream key: it tells no users apart and counts nothing), so users go through the gateway
    assert HTTP.post(vllm_server.root_url + "/invocations", json=chat).status_code == 401
    headers = {"authorization": f"Bearer {vllm_server.api_key}"}
    direct = HTTP.post(vllm_server.root_url + "/invocations", json=chat, headers=headers)
    assert direct.status_code == 200 and direct.json()["choices"][0]["message"]["content"]
    gw = start_gateway(tmp, env, vllm_server.base_url)
    try:
        alice, bob = add_user(env, "real-alice"), add_user(env, "real-bob", "--tokens-per-day", "30")
        revoked = add_user(env, "real-carl")
        assert call(gw, "GET", "/v1/models", revoked).status_code == 200
        assert mdagent("users", "revoke", "real-carl", env=env).returncode == 0
        for bad in [None, "wrong", revoked, vllm_server.api_key]:
            for method, route in ROUTES:
                response = call(gw, method, route, bad, json=chat)
                assert response.status_code == 401, (bad, method, route, response.text)
        for method, route in ROUTES[4:]:
            assert call(gw, method, route, alice, json=chat).status_code == 404, (method, route)
        assert call(gw, "GET", "/v1/models", alice).json()["data"][0]["id"] == model

        counted = {"real-alice": [1, 0, 0], "real-bob": [0, 0, 0]}  # requests (alice's GET /v1/models), tokens
        for name, key, route, body in [
            ("real-alice", alice, "/v1/chat/completions", chat),
            ("real-alice", alice, "/v1/completions", {"model": model, "prompt": "units metal", "max_tokens": 5}),
            ("real-bob", bob, "/v1/chat/completions", chat),
        ]:
            response = call(gw, "POST", route, key, json=body)
            assert response.status_code == 200, response.text
            usage = response.json()["usage"]
            for i, n in enumerate([1, usage["prompt_tokens"], usage["completion_tokens"]]):
                counted[name][i] += n
        refused = call(gw, "POST", "/v1/chat/completions", bob, json=chat)  # 16 + 8 of 30 used: the prompt does not fit
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "tokens_per_day"

        from openai import OpenAI

        client = OpenAI(base_url=gw.url + "/v1", api_key=alice, max_retries=0)
        stream = client.chat.completions.create(
            stream=True, extra_body={"ignore_eos": True, "min_tokens": 16}, **{**chat, "max_tokens": 16}
        )
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        assert len(pieces) > 1
        time.sleep(0.3)
        lines = [json.loads(line) for line in gw.audit.read_text().splitlines()]
        streamed = [r for r in lines if r["user"] == "real-alice" and r["stream"]]
        assert streamed[-1]["completion_tokens"] == 16 and streamed[-1]["prompt_tokens"] > 0
        counted["real-alice"][0] += 1
        counted["real-alice"][1] += streamed[-1]["prompt_tokens"]
        counted["real-alice"][2] += 16
        for name, (requests, prompt, completion) in counted.items():
            row = usage_of_user(env, name)
            assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (requests, prompt, completion)
        assert usage_of_user(env, "real-bob")["refused"] == 1
    finally:
        stop_gateway(gw.proc)
