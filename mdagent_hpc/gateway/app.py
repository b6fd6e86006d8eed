"""The gateway: an ASGI app that lets users with a valid key through to a few routes of one upstream server.

Every request: its key is looked up (hashed) in the users store; only the routes OpenAI clients need are
forwarded, with the upstream's own key in place of the user's; per-user rate limits and daily token budgets are
checked first; token usage is read from the answer (`usage`, or the last chunk of a stream, which the gateway asks
for); each request is one JSON line in the audit log. Everything else, vLLM's open routes included, is refused.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
from pydantic import BaseModel, SecretStr
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mdagent_hpc.accounts.quotas import RateWindow, Refusal, check_daily, utc_day
from mdagent_hpc.accounts.store import AccountsError, Store
from mdagent_hpc.gateway.sse import EventSplitter, event_data, usage_of, usage_only

# path -> method: what the agent and ordinary OpenAI clients use; everything else is refused
FORWARDED = {
    "/v1/models": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/embeddings": "POST",
}
SERVED = "GET /v1/models, POST /v1/chat/completions, POST /v1/completions and POST /v1/embeddings"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class GatewaySettings(BaseModel):
    upstream: str  # base URL of the server, without /v1
    upstream_key: SecretStr | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    timeout_s: float = 600.0  # one upstream request (a long generation streams for minutes)
    audit_log: Path | None = None


def upstream_base(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all mean the server at http://host:8000."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"the upstream {url!r} is not an http(s) URL; give the model server's address, e.g. http://gpu042:8000/v1"
        )
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


def error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which every OpenAI client reads and shows."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@dataclass
class Exchange:
    """What the audit log and the usage counters get from one request."""

    method: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    user: str | None = None
    user_id: int | None = None
    status: int = 0
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refused: str | None = None  # why the gateway said no (a quota name, invalid_api_key, ...)

    def count(self, usage: dict | None) -> None:
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)


class Gateway:
    def __init__(self, settings: GatewaySettings, store: Store):
        self.settings = settings
        self.store = store
        self.upstream = upstream_base(settings.upstream)
        self.rate = RateWindow()
        self.client: httpx2.AsyncClient | None = None
        self._audit = settings.audit_log.open("a", buffering=1) if settings.audit_log else None
        self._audit_lock = threading.Lock()

    def app(self) -> Starlette:
        routes = [Route("/health", self.health, methods=["GET"]), Route("/{path:path}", self.handle, methods=METHODS)]
        return Starlette(routes=routes, lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app):
        timeout = httpx2.Timeout(self.settings.timeout_s, connect=10.0)
        limits = httpx2.Limits(max_connections=512, max_keepalive_connections=64)
        # trust_env=False: an http_proxy meant for the users' side must not reroute the upstream
        async with httpx2.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
            self.client = client
            yield
        if self._audit:
            self._audit.close()

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})  # says nothing about users, the upstream or the routes

    async def handle(self, request: Request) -> Response:
        ex = Exchange(method=request.method, route=request.url.path[:200])
        key = _bearer(request.headers.get("authorization", ""))
        if not key:
            return self.refuse(
                ex,
                401,
                "invalid_request_error",
                "missing_api_key",
                "no API key: send your mdagent key as `Authorization: Bearer KEY` (OpenAI clients: "
                "api_key=KEY, or MDAGENT_LLM_API_KEY for mdagent); an admin gives keys with "
                "`mdagent users add`",
            )
        try:
            user = await run_in_threadpool(self.store.authenticate, key)
        except AccountsError:
            return self.unavailable(ex)
        if user is None:
            return self.refuse(
                ex,
                401,
                "invalid_request_error",
                "invalid_api_key",
                "this API key is not valid or has been revoked; ask your mdagent admin for a new one",
            )
        ex.user, ex.user_id = user.name, user.id
        if FORWARDED.get(ex.route) != request.method:
            return self.refuse(
                ex,
                404,
                "invalid_request_error",
                "not_found",
                f"{request.method} {ex.route} is not served here: this gateway forwards only {SERVED}",
            )
        body = await _read_body(request, self.settings.max_body_bytes)
        if body is None:
            return self.refuse(
                ex,
                413,
                "invalid_request_error",
                "request_too_large",
                f"the request body is over this gateway's limit of {self.settings.max_body_bytes} "
                "bytes; send a shorter prompt",
            )
        try:
            refusal = await self.check_quota(user)
        except AccountsError:
            return self.unavailable(ex)
        if refusal is not None:
            return self.refuse_quota(ex, refusal)
        wants_usage = True
        if request.method == "POST":
            try:
                body, ex.stream, wants_usage = _prepare(body)
            except ValueError as exc:
                return self.refuse(ex, 400, "invalid_request_error", "invalid_json", str(exc))
        return await self.forward(request, body, ex, wants_usage)

    async def check_quota(self, user) -> Refusal | None:
        refusal = self.rate.admit(user.id, user.quota.requests_per_minute, time.time())
        if refusal is None and user.quota.tokens_per_day is not None:
            now = datetime.now(UTC)
            used = await run_in_threadpool(self.store.tokens_used, user.id, utc_day(now))
            refusal = check_daily("tokens_per_day", user.quota.tokens_per_day, used, now)
        return refusal

    async def forward(self, request: Request, body: bytes, ex: Exchange, wants_usage: bool) -> Response:
        url = self.upstream + ex.route + (f"?{request.url.query}" if request.url.query else "")
        headers = {
            "content-type": request.headers.get("content-type", "application/json"),
            "accept": request.headers.get("accept", "*/*"),
            "accept-encoding": "identity",  # the stream is passed on as it comes (aiter_raw), so never compressed
        }
        if self.settings.upstream_key is not None:
            headers["authorization"] = f"Bearer {self.settings.upstream_key.get_secret_value()}"
        upstream_request = self.client.build_request(request.method, url, headers=headers, content=body)
        try:
            response = await self.client.send(upstream_request, stream=True)
        except httpx2.TimeoutException:
            return self.refuse(
                ex,
                504,
                "server_error",
                "upstream_timeout",
                f"the model server did not answer within {self.settings.timeout_s:g} s; try again later",
            )
        except httpx2.TransportError:
            return self.refuse(
                ex,
                502,
                "server_error",
                "upstream_unreachable",
                "the model server behind this gateway cannot be reached (it may be starting or "
                "stopped); try again later or tell your mdagent admin",
            )
        if response.status_code in (401, 403):
            await response.aclose()
            return self.refuse(
                ex,
                502,
                "server_error",
                "upstream_auth",
                "the model server refused the gateway's own key; tell your mdagent admin (the gateway's "
                "--upstream-key or MDAGENT_GATEWAY_UPSTREAM_KEY is wrong)",
            )
        ex.status = response.status_code
        content_type = response.headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):
            return StreamingResponse(
                self.relay(response, ex, wants_usage),
                status_code=response.status_code,
                headers={"cache-control": "no-cache"},
                media_type=content_type,
            )
        try:
            data = await response.aread()
        except httpx2.TransportError:
            return self.refuse(
                ex, 502, "server_error", "upstream_broken", "the model server broke off its answer; try again"
            )
        finally:
            await response.aclose()
        if response.status_code == 200 and content_type.startswith("application/json"):
            with contextlib.suppress(ValueError):
                ex.count(usage_of(json.loads(data)))
        return Response(
            data, status_code=response.status_code, media_type=content_type, background=BackgroundTask(self.finish, ex)
        )

    async def relay(self, response: httpx2.Response, ex: Exchange, wants_usage: bool):
        """Pass the stream on as it comes, reading the usage chunk (and dropping it if the user did not ask).

        Each read from the server is passed on at once, as the complete events it holds: one event when the gateway
        keeps up, several in one write when it falls behind, which costs less per event.
        """
        events = EventSplitter()
        try:
            async for chunk in response.aiter_raw():
                kept = []
                for event in events.feed(chunk):
                    data = event_data(event)
                    ex.count(usage_of(data))
                    if wants_usage or not usage_only(data):
                        kept.append(event)
                if kept:
                    yield b"".join(kept)
            if rest := events.rest():
                yield rest
        except httpx2.TransportError:
            ex.refused = "upstream_broken"  # the user sees the stream end early; the log says why
        finally:
            with anyio.CancelScope(shield=True):  # also when the user went away mid-stream
                await response.aclose()
                await run_in_threadpool(self.finish, ex)

    # -- refusals, usage and the audit log ----------------------------------------------------------------------
    def refuse(
        self, ex: Exchange, status: int, type_: str, code: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        ex.status, ex.refused = status, code
        return JSONResponse(
            error_body(message, type_, code),
            status_code=status,
            headers=headers,
            background=BackgroundTask(self.finish, ex),
        )

    def refuse_quota(self, ex: Exchange, refusal: Refusal) -> Response:
        now = datetime.now(UTC)
        headers = {"retry-after": str(refusal.retry_after(now))}
        if refusal.quota == "tokens_per_day":
            headers["x-should-retry"] = "false"  # OpenAI clients would retry at once; nothing changes before midnight
            type_ = "insufficient_quota"
        else:
            type_ = "rate_limit_error"
        return self.refuse(ex, 429, type_, refusal.quota, refusal.message, headers)

    def unavailable(self, ex: Exchange) -> Response:
        return self.refuse(
            ex,
            503,
            "server_error",
            "users_db_unavailable",
            "the gateway cannot read its users database right now; try again shortly, or tell your mdagent admin",
            {"retry-after": "10"},
        )

    def finish(self, ex: Exchange) -> None:
        """Count the request for its user and write its audit line (in a worker thread: both may touch disk)."""
        store_error = None
        if ex.user_id is not None:
            refused = ex.refused is not None and ex.status >= 400
            try:
                self._record(ex, refused)
            except AccountsError as exc:  # the answer is sent already; the audit line keeps the tokens
                store_error = str(exc)
        if self._audit is None:
            return
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "user": ex.user,
            "method": ex.method,
            "route": ex.route,
            "status": ex.status,
            "stream": ex.stream,
            "prompt_tokens": ex.prompt_tokens,
            "completion_tokens": ex.completion_tokens,
            "latency_ms": round((time.perf_counter() - ex.started) * 1000, 2),
            "refused": ex.refused,
            "store_error": store_error,
        }
        with self._audit_lock:
            self._audit.write(json.dumps(line) + "\n")

    def _record(self, ex: Exchange, refused: bool) -> None:
        self.store.record(
            ex.user_id,
            utc_day(datetime.now(UTC)),
            requests=0 if refused else 1,
            refused=1 if refused else 0,
            prompt_tokens=ex.prompt_tokens,
            completion_tokens=ex.completion_tokens,
        )


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is over `limit` bytes (told by Content-Length, or counted as it arrives)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _prepare(body: bytes) -> tuple[bytes, bool, bool]:
    """(body to send, streamed?, did the user ask for the usage chunk?); a stream is made to end with usage."""
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        raise ValueError("the request body is not JSON; send the OpenAI request as a JSON object") from None
    if not isinstance(payload, dict):
        raise ValueError("the request body must be a JSON object, as the OpenAI API expects")
    if payload.get("stream") is not True:
        return body, False, True
    options = payload.get("stream_options") if isinstance(payload.get("stream_options"), dict) else {}
    if options.get("include_usage") is True:
        return body, True, True
    payload["stream_options"] = {**options, "include_usage": True}
    return json.dumps(payload).encode(), True, False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: any free port); OSError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only then (without it: +40 ms per keep-alive request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    gateway: Gateway, sock: socket.socket, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None
) -> None:
    """Serve until SIGINT or SIGTERM (open streams get 5 s to finish)."""
    import uvicorn

    config = uvicorn.Config(
        gateway.app(),
        log_level="warning",
        access_log=False,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn has shut down cleanly, then re-raises it
        uvicorn.Server(config).run(sockets=[sock])


def probe_upstream(settings: GatewaySettings, timeout: float = 5.0) -> tuple[bool, str]:
    """Does the upstream list its models with the gateway's key? (ok, what it said), for the start-up message."""
    headers = {}
    if settings.upstream_key is not None:
        headers["authorization"] = f"Bearer {settings.upstream_key.get_secret_value()}"
    url = upstream_base(settings.upstream) + "/v1/models"
    try:
        response = httpx2.get(url, headers=headers, timeout=timeout, trust_env=False)
    except httpx2.HTTPError as exc:
        return False, f"{url} does not answer ({type(exc).__name__})"
    if response.status_code in (401, 403):
        return False, f"{url} refuses the upstream key (HTTP {response.status_code}); check --upstream-key"
    try:
        models = [m["id"] for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return False, f"{url} answered HTTP {response.status_code} without a model list"
    return True, ", ".join(models) or "no models"
