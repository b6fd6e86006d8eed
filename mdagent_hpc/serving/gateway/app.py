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

import aiohttp
import anyio
import httpx2
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mdagent_hpc import web
from mdagent_hpc.accounts.quotas import RateWindow, Refusal, check_daily, next_midnight, utc_day
from mdagent_hpc.accounts.store import AccountsError, Store
from mdagent_hpc.serving.gateway.sse import StreamTally, usage_of
from mdagent_hpc.web import bearer_key

# path -> method: what the agent and ordinary OpenAI clients use; everything else is refused
FORWARDED = {
    "/v1/models": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/embeddings": "POST",
}
GENERATING = {"/v1/chat/completions", "/v1/completions"}  # the routes whose answers are generated tokens
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
    day: str = field(default_factory=lambda: utc_day(datetime.now(UTC)))  # the UTC day the tokens are charged to
    reserved_prompt: int = 0  # charged before forwarding (a user with a budget); settled to the real use after
    reserved_completion: int = 0
    counted: bool = False  # the server's usage was read

    def count(self, usage: dict | None) -> None:
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            self.counted = True


class Gateway:
    def __init__(self, settings: GatewaySettings, store: Store):
        self.settings = settings
        self.store = store
        self.upstream = upstream_base(settings.upstream)
        self.rate = RateWindow()
        self.max_model_len: int | None = None  # the server's context length, once its /tokenize has said it
        self.session: aiohttp.ClientSession | None = None
        self._audit = settings.audit_log.open("a", buffering=1) if settings.audit_log else None
        self._audit_lock = threading.Lock()

    def app(self) -> Starlette:
        routes = [Route("/health", self.health, methods=["GET"]), Route("/{path:path}", self.handle, methods=METHODS)]
        return Starlette(routes=routes, lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app):
        # aiohttp: its C parser de-chunks what one read of the socket holds in one pass (vLLM sends every token as a
        # chunk of its own). Idle connections are closed before the server's (uvicorn's 5 s): a POST is not retried on
        # a connection the server closed. trust_env=False: an http_proxy meant for the users' side must not reroute
        # the upstream; auto_decompress=False: answers are passed on as they come. connect: waiting for a free
        # connection and making one (sock_connect), like httpx2's pool and connect timeouts before.
        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=4.0)
        timeout = aiohttp.ClientTimeout(
            connect=self.settings.timeout_s, sock_connect=10.0, sock_read=self.settings.timeout_s
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
        ) as session:
            self.session = session
            yield
        if self._audit:
            self._audit.close()

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})  # says nothing about users, the upstream or the routes

    async def handle(self, request: Request) -> Response:
        ex = Exchange(method=request.method, route=request.url.path[:200])
        key = bearer_key(request.headers.get("authorization", ""))
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
        refusal = self.rate.admit(user.id, user.quota.requests_per_minute, time.time())
        if refusal is not None:
            return self.refuse_quota(ex, refusal)
        prepared = None
        if request.method == "POST":
            try:
                prepared = _parse(body, ex.route)
            except ValueError as exc:
                return self.refuse(ex, 400, "invalid_request_error", "invalid_request", str(exc))
            ex.stream = prepared.stream
        try:
            refused = await self.check_budget(user, ex, prepared)
        except AccountsError:
            return self.unavailable(ex)
        if refused is not None:
            return refused
        if prepared is not None:
            body = prepared.body()
        return await self.forward(request, body, ex, prepared)

    # -- the daily token budget -----------------------------------------------------------------------------------
    async def check_budget(self, user, ex: Exchange, prepared: Prepared | None) -> Response | None:
        """For a user with a daily budget: a refusal, or None with the request's tokens reserved on `ex`.

        The prompt is counted first (the server's /tokenize); then, in one step in the users database, the budget
        left is read and the prompt plus the most the answer may use are charged. The answer is capped to what is
        left (`max_tokens`), and the charge is settled to the real usage when the request ends.
        """
        limit = user.quota.tokens_per_day
        if limit is None:
            return None
        now = datetime.now(UTC)
        if prepared is None:  # GET /v1/models: costs no tokens, refused once the budget is spent
            used = await run_in_threadpool(self.store.tokens_used, user.id, ex.day)
            refusal = check_daily("tokens_per_day", limit, used, now)
            return None if refusal is None else self.refuse_quota(ex, refusal)
        prompt = await self.prompt_tokens(ex.route, prepared.payload)
        longest = self.max_model_len - prompt if self.max_model_len else None  # what the server allows at most
        seen = {}

        def grant(used: int) -> tuple[int, int] | None:
            seen["left"] = left = limit - used
            if ex.route not in GENERATING:
                return (prompt, 0) if prompt <= left else None
            cap = (left - prompt) // prepared.outputs  # tokens each answer may have
            if cap < 1:
                return None
            wanted = min(x for x in (cap, prepared.max_tokens, longest) if x is not None and x > 0)
            seen["cap"] = cap if wanted == cap and cap != prepared.max_tokens else None
            return prompt, wanted * prepared.outputs

        granted = await run_in_threadpool(self.store.reserve_tokens, user.id, ex.day, grant)
        if granted is None:
            return self.refuse_budget(ex, limit, seen["left"], prompt, now)
        ex.reserved_prompt, ex.reserved_completion = granted
        if seen.get("cap") is not None:
            prepared.cap_tokens(seen["cap"])
        return None

    async def prompt_tokens(self, route: str, payload: dict) -> int:
        """The request's prompt in tokens, as the server counts them (its /tokenize), else an estimate."""
        field_name = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}.get(route, "input")
        prompt = payload.get(field_name)
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            return len(prompt)  # token ids
        if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
            return sum(len(p) for p in prompt)
        if field_name == "messages":
            asked = {"messages": prompt, "add_generation_prompt": True}
            asked |= {k: payload[k] for k in ("tools", "chat_template_kwargs") if k in payload}
        else:
            text = "\n".join(p for p in prompt if isinstance(p, str)) if isinstance(prompt, list) else prompt
            asked = {"prompt": text if isinstance(text, str) else json.dumps(prompt)}
        counted = await self.tokenize({"model": payload.get("model"), **asked})
        return counted if counted is not None else _estimate(json.dumps(prompt))

    async def tokenize(self, request: dict) -> int | None:
        """The server's token count (vLLM's /tokenize), or None when it has none or cannot give it."""
        headers = {}
        if self.settings.upstream_key is not None:
            headers["authorization"] = f"Bearer {self.settings.upstream_key.get_secret_value()}"
        try:
            async with self.session.post(
                self.upstream + "/tokenize", json=request, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as response:
                answer = json.loads(await response.read()) if response.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        if not isinstance(answer, dict):
            return None
        if isinstance(answer.get("max_model_len"), int):
            self.max_model_len = answer["max_model_len"]
        if isinstance(answer.get("count"), int):
            return answer["count"]
        return len(answer["tokens"]) if isinstance(answer.get("tokens"), list) else None

    async def count_unreported(self, ex: Exchange, payload: dict | None, stream: StreamTally) -> None:
        """A stream that ended without its usage chunk (the user left, the server broke off): count what was sent."""
        if ex.counted or payload is None:
            return
        ex.prompt_tokens = ex.reserved_prompt or await self.prompt_tokens(ex.route, payload)
        text, chunks = stream.generated()
        counted = await self.tokenize({"model": payload.get("model"), "prompt": text, "add_special_tokens": False})
        # every chunk of a stream carries at least one new token, so their number is a floor for the count
        ex.completion_tokens = max(chunks, counted if counted is not None else _estimate(text))
        ex.counted = True

    async def forward(self, request: Request, body: bytes, ex: Exchange, prepared: Prepared | None) -> Response:
        target = ex.route + (f"?{request.url.query}" if request.url.query else "")
        headers = {
            "content-type": request.headers.get("content-type", "application/json"),
            "accept": request.headers.get("accept", "*/*"),
            "accept-encoding": "identity",  # the stream is passed on as it comes, so never compressed
        }
        if self.settings.upstream_key is not None:
            headers["authorization"] = f"Bearer {self.settings.upstream_key.get_secret_value()}"
        try:
            response = await self.session.request(request.method, self.upstream + target, headers=headers, data=body)
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors (and ClientErrors)
            return self.refuse(
                ex,
                504,
                "server_error",
                "upstream_timeout",
                f"the model server did not answer within {self.settings.timeout_s:g} s; try again later",
            )
        except aiohttp.ClientError:
            return self.refuse(
                ex,
                502,
                "server_error",
                "upstream_unreachable",
                "the model server behind this gateway cannot be reached (it may be starting or "
                "stopped); try again later or tell your mdagent admin",
            )
        if response.status in (401, 403):
            response.release()
            return self.refuse(
                ex,
                502,
                "server_error",
                "upstream_auth",
                "the model server refused the gateway's own key; tell your mdagent admin (the gateway's "
                "--upstream-key or MDAGENT_GATEWAY_UPSTREAM_KEY is wrong)",
            )
        ex.status = response.status
        content_type = response.headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):
            return StreamingResponse(
                self.relay(response, ex, prepared),
                status_code=response.status,
                headers={"cache-control": "no-cache"},
                media_type=content_type,
            )
        try:
            data = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            return self.refuse(
                ex, 502, "server_error", "upstream_broken", "the model server broke off its answer; try again"
            )
        finally:
            response.release()
        if response.status == 200 and content_type.startswith("application/json"):
            with contextlib.suppress(ValueError):
                ex.count(usage_of(json.loads(data)))
            if not ex.counted:  # a server that does not say what it used: the reservation is the charge
                ex.prompt_tokens, ex.completion_tokens = ex.reserved_prompt, ex.reserved_completion
        return Response(
            data, status_code=response.status, media_type=content_type, background=BackgroundTask(self.finish, ex)
        )

    async def relay(self, response: aiohttp.ClientResponse, ex: Exchange, prepared: Prepared | None):
        """Pass the stream on as it comes, reading the usage chunk (and dropping it if the user did not ask).

        Each read from the server is passed on at once, as the complete events it holds: one event when the gateway
        keeps up, several in one write when it falls behind, which costs less per event. Only events that name
        `usage` are parsed on the way; the others are kept as they are, and read for their text only when the stream
        ends without its usage chunk (the user left): that text is what is charged then.
        """
        stream = StreamTally(keep_usage_chunk=prepared is None or prepared.wants_usage)
        try:
            async for chunk in response.content.iter_any():  # what one read of the socket holds, de-chunked
                if passed := stream.feed(chunk):
                    yield passed
            if rest := stream.rest():
                yield rest
        except (aiohttp.ClientError, TimeoutError):
            ex.refused = "upstream_broken"  # the user sees the stream end early; the log says why
        finally:
            ex.count(stream.usage)
            response.release()  # kept for the next request when read to the end, else closed
            with anyio.CancelScope(shield=True):  # also when the user went away mid-stream
                with contextlib.suppress(Exception):  # counting must not stop the charge below
                    await self.count_unreported(ex, prepared.payload if prepared else None, stream)
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

    def refuse_budget(self, ex: Exchange, limit: int, left: int, prompt: int, now: datetime) -> Response:
        """The budget cannot pay for this request: spent, or the prompt alone needs more than is left."""
        if left <= 0:
            return self.refuse_quota(
                ex, Refusal(quota="tokens_per_day", limit=limit, used=limit - left, resets_at=next_midnight(now))
            )
        if prompt >= limit:  # more than a whole day's budget: waiting does not help, so no Retry-After
            message = (
                f"this request's prompt is {prompt} tokens, more than your whole daily LLM token budget of {limit} "
                "(quota tokens_per_day); send a shorter prompt or ask your mdagent admin to raise the budget"
            )
            headers = {"x-should-retry": "false"}
        else:
            midnight = next_midnight(now)
            message = (
                f"this request's prompt is {prompt} tokens and only {left} of your daily LLM token budget of {limit} "
                f"are left (quota tokens_per_day, it resets at {midnight:%Y-%m-%dT%H:%M:%SZ}); send a shorter prompt"
            )
            headers = {
                "retry-after": str(max(1, int((midnight - now).total_seconds() + 0.999))),
                "x-should-retry": "false",
            }
        return self.refuse(ex, 429, "insufficient_quota", "tokens_per_day", message, headers)

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
        """Add the request's tokens to its day, less what was reserved for it then (which may give some back)."""
        self.store.record(
            ex.user_id,
            ex.day,
            requests=0 if refused else 1,
            refused=1 if refused else 0,
            prompt_tokens=ex.prompt_tokens - ex.reserved_prompt,
            completion_tokens=ex.completion_tokens - ex.reserved_completion,
        )


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


# vLLM reads a request with pydantic's lax rules: "true", 1, "yes" ... are true, "16" is 16. The gateway reads the
# fields it relies on the same way and sends on the values it decided, so the server does what the gateway counted.
_LAX_BOOL = TypeAdapter(bool | None)
_LAX_INT = TypeAdapter(int | None)


@dataclass
class Prepared:
    """A POST body as the gateway read it, and what it decided about it."""

    payload: dict
    stream: bool = False
    wants_usage: bool = True  # the user asked for the usage chunk (else it is dropped again)
    outputs: int = 1  # answers asked for: n (or best_of) for each prompt
    max_tokens: int | None = None  # the smaller of max_tokens and max_completion_tokens, as asked

    def cap_tokens(self, cap: int) -> None:
        self.payload["max_tokens"] = cap
        if "max_completion_tokens" in self.payload:
            self.payload["max_completion_tokens"] = cap

    def body(self) -> bytes:
        return json.dumps(self.payload).encode()


def _lax(adapter: TypeAdapter, payload: dict, name: str, what: str):
    try:
        return adapter.validate_python(payload.get(name))
    except ValidationError:
        raise ValueError(f"`{name}` must be {what}") from None


def _parse(body: bytes, route: str = "/v1/chat/completions") -> Prepared:
    """Read a POST body; a stream is made to end with usage; ValueError (one sentence) for what vLLM would refuse."""
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        raise ValueError("the request body is not JSON; send the OpenAI request as a JSON object") from None
    if not isinstance(payload, dict):
        raise ValueError("the request body must be a JSON object, as the OpenAI API expects")
    prepared = Prepared(payload)
    if route not in GENERATING:
        return prepared
    prepared.stream = bool(_lax(_LAX_BOOL, payload, "stream", "true or false"))
    if "stream" in payload:
        payload["stream"] = prepared.stream
    if prepared.stream:
        options = payload.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ValueError('`stream_options` must be an object, e.g. {"include_usage": true}')
        prepared.wants_usage = bool(_lax(_LAX_BOOL, options, "include_usage", "true or false"))
        payload["stream_options"] = {**options, "include_usage": True}
    asked = [_lax(_LAX_INT, payload, k, "a whole number") for k in ("max_tokens", "max_completion_tokens")]
    if any(x is not None and x < 1 for x in asked):
        raise ValueError("`max_tokens` and `max_completion_tokens` must be at least 1")
    prepared.max_tokens = min((x for x in asked if x is not None), default=None)
    choices = [_lax(_LAX_INT, payload, k, "a whole number") for k in ("n", "best_of")]
    choices = [1 if x is None else x for x in choices]
    if min(choices) < 1:
        raise ValueError("`n` and `best_of` must be at least 1")
    prompts = payload.get("prompt")
    many = route == "/v1/completions" and isinstance(prompts, list) and prompts and not isinstance(prompts[0], int)
    prepared.outputs = max(choices) * (len(prompts) if many else 1)
    return prepared


def _prepare(body: bytes) -> tuple[bytes, bool, bool]:
    """(body to send, streamed?, did the user ask for the usage chunk?) of a chat request."""
    prepared = _parse(body)
    return prepared.body(), prepared.stream, prepared.wants_usage


def _estimate(text: str) -> int:
    """Tokens in a text when the server cannot count them: about 4 bytes a token in English and code."""
    return -(-len(text.encode()) // 4)


def serve(
    gateway: Gateway, sock: socket.socket, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None
) -> None:
    """Serve until SIGINT or SIGTERM (open streams get 5 s to finish)."""
    web.serve(gateway.app(), sock, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)


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
