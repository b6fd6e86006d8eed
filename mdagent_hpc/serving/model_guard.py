"""The served model's key on every route: an ASGI middleware for `vllm serve --middleware model_guard.RequireKey`.

vLLM's own `--api-key` / `VLLM_API_KEY` guards only the paths under `/v1`: `/invocations` (a full generation),
`/tokenize`, `/detokenize`, `/metrics` and the rest answer anyone who reaches the port, on the node's loopback (other
users' jobs on a shared node) and on the tunnel's local end on the login node. `mdagent llm serve` copies this file
into the job's folder and puts it on vLLM's path, so every route but `/health` wants the key, and every token is
spent through the gateway, against someone. Standard library only: it runs in vLLM's Python (a venv or an image).
"""

import hmac
import json
import os

OPEN_PATHS = ("/health",)  # what `mdagent llm status` and the gateway's readiness check ask, key-less


class RequireKey:
    """Refuses any request without `Authorization: Bearer <VLLM_API_KEY>` (401; a websocket is closed unaccepted);
    with no key set, every one."""

    def __init__(self, app, key=None):
        self.app = app
        self.key = (key if key is not None else os.environ.get("VLLM_API_KEY", "")).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS or self._allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # closed before it is accepted: the client sees 403
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"error": {"message": "Unauthorized", "type": "authentication_error"}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope) -> bool:
        if not self.key:
            return False
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False
