"""A fast fake of vLLM's OpenAI server for perf/gateway.py: so the gateway, not the model, is what is measured.

A bare ASGI app on uvicorn (uvloop and httptools when installed, as vLLM runs): `/v1/models`,
`POST /v1/chat/completions` (one server-sent event per token in vLLM's chunk format, a finish chunk, the usage chunk
when `stream_options.include_usage` is set, `data: [DONE]`; or one JSON answer), and `/tokenize`. Every chunk is
made once at start; `--chunk-delay 0` streams them as fast as the event loop can write. `/v1` needs the key.

    .venv/bin/python perf/fake_upstream.py --port 0 --api-key KEY --tokens 128 --chunk-delay 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

import uvicorn

MODEL = "fake-model"
MAX_MODEL_LEN = 32768


def sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def chunk(index: int, delta: dict, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return sse(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000 + index,
            "model": MODEL,
            "choices": [choice],
        }
    )


class FakeUpstream:
    def __init__(self, api_key: str, tokens: int, chunk_delay: float):
        self.auth = f"Bearer {api_key}".encode()
        self.tokens = tokens
        self.chunk_delay = chunk_delay
        self.chunks = [chunk(0, {"role": "assistant", "content": ""})]
        self.chunks += [chunk(i, {"content": " word"}) for i in range(1, tokens + 1)]
        self.chunks.append(chunk(tokens + 1, {}, "length"))

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path.startswith("/v1/") and (b"authorization", self.auth) not in scope["headers"]:
            return await answer(send, 401, {"error": {"message": "Unauthorized"}})
        if path == "/v1/models":
            return await answer(send, 200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        if path == "/tokenize":
            request = json.loads(body or b"{}")
            text = request.get("prompt") or json.dumps(request.get("messages"))
            count = len(str(text).split())
            return await answer(send, 200, {"count": count, "max_model_len": MAX_MODEL_LEN, "tokens": [0] * count})
        if path != "/v1/chat/completions":
            return await answer(send, 404, {"error": {"message": "Not Found"}})
        request = json.loads(body or b"{}")
        prompt = len(json.dumps(request.get("messages")).split())
        usage = {"prompt_tokens": prompt, "total_tokens": prompt + self.tokens, "completion_tokens": self.tokens}
        if not request.get("stream"):
            message = {"role": "assistant", "content": " word" * self.tokens}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            return await answer(send, 200, {"id": "chatcmpl-fake", "model": MODEL, "choices": [choice], "usage": usage})
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for data in self.chunks:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        tail = b"data: [DONE]\n\n"
        if (request.get("stream_options") or {}).get("include_usage"):
            tail = sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage}) + tail
        await send({"type": "http.response.body", "body": tail, "more_body": False})


async def answer(send, status: int, data: dict) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--tokens", type=int, default=128, help="tokens (chunks) per streamed answer")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks (0: at once)")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # IPPROTO_TCP: TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"serving at http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    config = uvicorn.Config(
        FakeUpstream(args.api_key, args.tokens, args.chunk_delay),
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=1024,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
