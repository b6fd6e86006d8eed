"""A real HTTP server speaking the OpenAI chat completions API, replaying scripted answers.

The stand-in for a vLLM server in tests (`tests/openai_server.py`) and in `mdagent demo`, which replays a
recorded correction session so a fresh machine can run the whole loop without a model. Each answer is one of:

- a string: returned as the assistant message content;
- {"content": str, "finish_reason": "length"}: the same, with another finish reason;
- {"status": 500 | 401 | 429 | ...}: an OpenAI-style error with that HTTP status;
- {"hang": seconds, "content": str}: sleep, then answer (the client has usually given up by then);
- {"garbage": "not json"}: status 200 with a body that is not JSON;
- {"choices": [str, ...]}: several answers in one completion (a request with n > 1);
- {"reject_response_format": True | status}: a 400 (or that status: llama.cpp answers 500) like a server
  without structured outputs, if the request has `response_format`; otherwise the entry is skipped and the
  next one answers;
- {"reject_grammar": True | status}: the same for `structured_outputs` (vLLM's grammar-constrained output).

With `max_model_len`, /v1/models reports it (as vLLM does), and a request with a `max_tokens` above it is
refused with vLLM 0.32's HTTP 400 ("max_tokens=N cannot be greater than max_model_len=M"). One whose prompt
(4 characters a token) plus `max_tokens` exceeds it is clamped silently, as vLLM 0.32 does, or, with
`refuse_overflow=True`, refused with the message OpenAI and older vLLM give ("maximum context length is M tokens
... N input tokens").

When the queue is empty the server answers 500 saying so, so that tests fail clearly.

    with FakeOpenAIServer(["hello"]) as srv:
        OpenAI(base_url=srv.base_url, api_key="x") ...
        srv.requests[0]["temperature"]

Standalone: python -m mdagent_hpc.llm.replay --port 8000 --answers answers.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Answer = str | dict[str, Any]


class FakeOpenAIServer:
    def __init__(
        self,
        answers: list[Answer] | None = None,
        *,
        port: int = 0,
        model: str = "fake-model",
        max_model_len: int | None = None,
        refuse_overflow: bool = False,
    ):
        self.answers: deque[Answer] = deque(answers or [])
        self.model = model
        self.max_model_len = max_model_len
        self.refuse_overflow = refuse_overflow
        self.requests: list[dict[str, Any]] = []  # JSON bodies of chat completion requests, in order
        self.headers: list[dict[str, str]] = []  # their HTTP headers
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # don't wait for handlers still sleeping in a "hang"
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add(self, *answers: Answer) -> None:
        with self._lock:
            self.answers.extend(answers)

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_answer(self, body: dict[str, Any], headers: dict[str, str]) -> Answer | None:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            while self.answers:
                answer = self.answers.popleft()
                if isinstance(answer, dict) and _rejection(answer, body) is False:
                    continue
                return answer
            return None

    def context_refusal(self, body: dict[str, Any]) -> str | None:
        """Why a request does not fit `max_model_len`, in the server's words; None when it fits (or is clamped)."""
        length, wanted = self.max_model_len, int(body.get("max_tokens") or 16)
        if not length:
            return None
        if wanted > length:
            return (
                f"max_tokens={wanted} cannot be greater than max_model_len={length}. Please request fewer output"
                f" tokens. (parameter=max_tokens, value={wanted})"
            )
        if self.refuse_overflow and prompt_tokens(body) + wanted > length:
            return (
                f"This model's maximum context length is {length} tokens. However, you requested {wanted}"
                f" output tokens and your prompt contains at least {prompt_tokens(body)} input tokens, for a"
                f" total of at least {prompt_tokens(body) + wanted} tokens."
            )
        return None

    def completion(self, content: str | list[str], finish_reason: str = "stop") -> dict[str, Any]:
        contents = [content] if isinstance(content, str) else content
        prompt = prompt_tokens(self.requests[-1])
        completion = sum(len(c.split()) for c in contents)
        return {
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
                for i, text in enumerate(contents)
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }


def prompt_tokens(body: dict[str, Any]) -> int:
    """The fake tokenizer: 4 characters a token."""
    return sum(len(str(m.get("content") or "")) for m in body.get("messages", [])) // 4 + 1


def _rejection(answer: dict[str, Any], body: dict[str, Any]) -> int | bool | None:
    """For a `reject_*` answer: the status to refuse this request with, or False (skip: the request did not
    carry that constraint); None for any other answer."""
    for key, field in (("reject_response_format", "response_format"), ("reject_grammar", "structured_outputs")):
        if answer.get(key):
            if not body.get(field):
                return False
            return 400 if answer[key] is True else int(answer[key])
    return None


def _error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
    return {"error": {"message": message, "type": kinds.get(status, "server_error"), "param": param, "code": None}}


def _handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                model = {"id": server.model, "object": "model", "created": 0, "owned_by": "fake"}
                if server.max_model_len:
                    model["max_model_len"] = server.max_model_len
                self._send(200, {"object": "list", "data": [model]})
            else:
                self._send(404, _error(404, f"no route {self.path}"))

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, _error(404, f"no route {self.path}"))
                return
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send(400, _error(400, "request body is not JSON"))
                return
            refusal = server.context_refusal(body)
            if refusal:
                server.requests.append(body)
                self._send(400, _error(400, refusal, param="max_tokens"))
                return
            answer = server._next_answer(body, dict(self.headers))
            rejected = _rejection(answer, body) if isinstance(answer, dict) else None
            if rejected:
                what = "response_format json_schema" if answer.get("reject_response_format") else "structured_outputs"
                self._send(rejected, _error(rejected, f"{what} is not supported by this server", param=None))
            elif answer is None:
                n = len(server.requests)
                self._send(500, _error(500, f"FakeOpenAIServer: the scripted answers ran out at request {n}"))
            elif isinstance(answer, str):
                self._send(200, server.completion(answer))
            elif "status" in answer:
                status = answer["status"]
                self._send(status, _error(status, answer.get("message", f"fake error {status}")))
            elif "hang" in answer:
                time.sleep(answer["hang"])
                self._send(200, server.completion(answer.get("content", "")))
            elif "garbage" in answer:
                self._send(200, answer["garbage"], content_type=answer.get("content_type", "text/html"))
            elif "choices" in answer:
                self._send(200, server.completion(answer["choices"], answer.get("finish_reason", "stop")))
            else:
                self._send(200, server.completion(answer["content"], answer.get("finish_reason", "stop")))

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--answers", help="JSON file with a list of answers (see module docstring)")
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args()
    answers = json.loads(Path(args.answers).read_text()) if args.answers else []
    srv = FakeOpenAIServer(answers, port=args.port, model=args.model)
    print(f"serving {len(answers)} scripted answers at {srv.base_url} (Ctrl-C to stop)", flush=True)
    try:
        srv._httpd.serve_forever()
    except KeyboardInterrupt:
        srv._httpd.server_close()


if __name__ == "__main__":
    main()
