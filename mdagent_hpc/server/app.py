"""The server's ASGI app: keys checked against the users store, each route a thin call into service.py or the API.

AiiDA is touched only in worker threads: reads in a small pool (each thread has its own database session),
submissions and cancels in one thread with its own event loop (AiiDA's runner lives there). `Guard` wraps the app:
before any routing it checks the key (all but /health) and the body size, and it writes one JSON line per request
to the request log (best-effort), with the user and a request id. Answers say what went wrong, never how: an
unexpected failure is a 500 naming its request id, whose log line has the exception type.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from mdagent_hpc import web
from mdagent_hpc.accounts.quotas import utc_day
from mdagent_hpc.accounts.store import AccountsError, Store, User
from mdagent_hpc.server.access import Refused, check_submit, identity
from mdagent_hpc.server.dashboard import DashboardGate
from mdagent_hpc.server.wire import API, STATE, Me, QueryIn, RunIn, Submitted, SweepIn, error_body, parse_pk
from mdagent_hpc.web import RequestRefusedError, bearer_key, uvicorn_config


class ServerSettings(BaseModel):
    group_read: bool = False  # may users read each other's runs (never each other's secrets)
    request_log: Path | None = None
    read_threads: int = 4  # API reads at once (each thread its own run-database connection)
    page_threads: int = 2  # dashboard pages at once (the same)
    max_body_bytes: int = 1 << 20  # a request body larger than this is refused (413) before it is read
    statement_timeout_s: int = 30  # a run-database query longer than this is cancelled by PostgreSQL (400)


MAX_LIST = 1000  # the most runs or sweeps one listing answers
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class BodyTooLargeError(Exception):
    pass


def too_large(limit: int) -> RequestRefusedError:
    return RequestRefusedError(
        413, "body_too_large", f"the request body is larger than this server accepts ({limit} bytes)"
    )


def parse_limit(text: str | None, default: int = 20) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIST:
        raise RequestRefusedError(400, "bad_request", f"limit must be a whole number from 1 to {MAX_LIST}")
    return int(text)


def unavailable(what: str) -> RequestRefusedError:
    return RequestRefusedError(
        503,
        "unavailable",
        f"{what} is not answering; retry in a minute (your request did nothing)",
        {"retry-after": "30"},
    )


def service_down(exc: BaseException) -> str | None:
    """Which backing service `exc` says is down, or None when it is not that kind of failure."""
    if isinstance(exc, AccountsError):
        return "the users database"
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    ):
        return "the run database"
    names = {c.__module__.split(".")[0] for c in type(exc).__mro__}
    if names & {"kiwipy", "aiormq", "aio_pika", "pamqp"} or isinstance(exc, (ConnectionError, TimeoutError)):
        return "the message broker"
    return None


def too_long(exc: BaseException) -> bool:
    """Did PostgreSQL cancel the request's query at the server's statement timeout?"""
    from psycopg import errors

    return isinstance(exc, sa_exc.DBAPIError) and isinstance(exc.orig, errors.QueryCanceled)


def _dropped_connection(exc: BaseException) -> bool:
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def _fresh_session() -> None:
    """After a dropped database connection: this thread's AiiDA session rolled back, so the next query reconnects."""
    from aiida.manage import get_manager

    with contextlib.suppress(Exception):  # the retry that follows says whether the database is back
        get_manager().get_profile_storage().get_session().rollback()


def once_more_after_a_blip(fn):
    """`fn()`, and again once if the database had dropped the connection (a restart, an idle timeout)."""
    try:
        return fn()
    except sa_exc.DBAPIError as exc:
        if not _dropped_connection(exc):
            raise
        _fresh_session()
        return fn()


def _ping() -> None:
    from aiida import orm

    orm.QueryBuilder().append(orm.User, project="id").limit(1).all()


class RequestLog:
    """One JSON line per request, best-effort: a failing write is reported once on stderr and never fails a request."""

    def __init__(self, path: Path | None):
        self.path = path
        self.file = path.open("a", buffering=1) if path else None  # OSError: the caller says it in one sentence
        self.failed = False

    def write(self, line: dict) -> None:
        if self.file is None:
            return
        try:
            self.file.write(json.dumps(line) + "\n")
        except (OSError, ValueError) as exc:
            if not self.failed:
                self.failed = True
                print(
                    f"mdagent server: cannot write the request log {self.path} ({exc}); serving on without it",
                    file=sys.stderr,
                    flush=True,
                )

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()


class Guard:
    """The outer ASGI layer: a request id, the key checked before routing (all but /health), the body size limit
    (Content-Length checked, streamed bodies counted), a last-resort 500, and the log line."""

    def __init__(self, server: Server, app):
        self.server, self.app = server, app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope[STATE] = {"id": uuid.uuid4().hex[:16], "user": None, "status": 500, "error": None, "sent": False}
        limit = self.server.settings.max_body_bytes
        received = 0

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["sent"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", state["id"].encode())]}
            await send(message)

        async def counting() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLargeError
            return message

        try:
            if scope["path"] != "/health":
                request = Request(scope)
                state["user"] = await self.server.authenticate(request)
                length = request.headers.get("content-length")
                if length is not None and (not length.isdigit() or int(length) > limit):
                    raise (
                        too_large(limit)
                        if length.isdigit()
                        else RequestRefusedError(400, "bad_request", "bad Content-Length")
                    )
            await self.app(scope, counting, sending)
        except Exception as exc:  # noqa: BLE001 (the server answers and keeps serving; the log has the type)
            if state["sent"]:
                raise  # the answer has started: nothing else can be said
            await self.server.answer(exc, state)(scope, receive, sending)
        finally:
            user = state["user"]
            self.server.request_log.write(
                {
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "id": state["id"],
                    "user": user.name if user else None,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": state["status"],
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                    **({"error": state["error"]} if state["error"] else {}),
                }
            )


def _one_thread_with_a_loop() -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())


def _threads(n: int, name: str) -> ThreadPoolExecutor:
    """`n` threads for AiiDA work, each with an event loop of its own (AiiDA's runner and the dashboard's pages
    want one)."""
    return ThreadPoolExecutor(n, thread_name_prefix=name, initializer=_one_thread_with_a_loop)


HEALTH_TIMEOUT_S = 5  # a database that does not answer the health probe's count in this long is unavailable (503)
HEALTH_EVERY_S = 1.0  # the probe's period: /health says what the last probe found, and never waits for a query


class Server:
    def __init__(self, settings: ServerSettings, store: Store):
        self.settings = settings
        self.store = store
        # Every thread that reads AiiDA keeps its own session and connection, so the work runs on threads of its own:
        # as many as the run database's pool has connections (`run_db_pool`). Shared worker threads (anyio's) each
        # kept one more, until the pool ran dry and a request waited 30 s for a connection.
        self.reads = _threads(settings.read_threads, "aiida-read")
        self.pages = _threads(settings.page_threads, "aiida-page")
        self.probe = _threads(1, "aiida-health")  # the health probe never waits behind reads
        self.found: tuple[bool, str] | None = None  # (the database answered, why not): the last probe's finding
        self.probed: asyncio.Event | None = None
        self.writes = _threads(1, "aiida-submit")
        self.request_log = RequestLog(settings.request_log)

    def app(self) -> Starlette:
        r = [
            Route("/health", self.health),
            Route(f"{API}/me", self.me),
            Route(f"{API}/runs", self.runs, methods=["GET", "POST"]),
            Route(f"{API}/runs/{{pk}}", self.run),
            Route(f"{API}/runs/{{pk}}/cancel", self.cancel, methods=["POST"]),
            Route(f"{API}/runs/{{pk}}/plot", self.plot),
            Route(f"{API}/query", self.query, methods=["POST"]),
            Route(f"{API}/diff", self.diff),
            Route(f"{API}/sweeps", self.sweeps, methods=["GET", "POST"]),
            Route(f"{API}/sweeps/plan", self.plan, methods=["POST"]),
            Route(f"{API}/sweeps/{{pk}}", self.sweep),
            Route(f"{API}/sweeps/{{pk}}/export", self.export),
            Mount("/dashboard", app=DashboardGate(self)),
        ]
        return Guard(self, Starlette(routes=r, lifespan=self.lifespan))

    @contextlib.asynccontextmanager
    async def lifespan(self, _app):
        from mdagent_hpc.server import repair

        def repair_unqueued():
            ids = {identity(u.name, u.email): u.id for u in self.store.users()}
            return repair.repair(lambda email: self.store.user_lock(ids[email]) if email in ids else None)

        async def repair_once():
            try:
                await self.write(repair_unqueued)
            except Exception as exc:  # noqa: BLE001 (serving goes on; the admin hears it; the next round retries)
                await self.write(repair.fresh_broker)
                print(
                    f"mdagent server: the check for runs nobody runs failed ({type(exc).__name__}); "
                    f"again in {repair.EVERY} s",
                    file=sys.stderr,
                    flush=True,
                )

        async def repair_now_and_then():
            while True:
                await asyncio.sleep(repair.EVERY)
                await repair_once()

        self.probed = asyncio.Event()
        probes = asyncio.create_task(self.probe_now_and_then())
        await repair_once()  # before serving: nothing counted that nobody runs
        repairs = asyncio.create_task(repair_now_and_then())
        yield
        repairs.cancel()
        probes.cancel()
        for threads in (self.reads, self.pages, self.probe, self.writes):
            threads.shutdown(wait=True)
        self.request_log.close()

    # -- plumbing ------------------------------------------------------------------------------------------------
    async def read(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(
            self.reads, lambda: once_more_after_a_blip(lambda: fn(*args, **kwargs))
        )

    async def write(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.writes, lambda: fn(*args, **kwargs))

    async def handle(self, request: Request, work) -> Response:
        """Run `work(user)` for the user Guard authenticated; failures become one-sentence answers."""
        state = request.scope[STATE]
        try:
            return await work(state["user"])
        except Exception as exc:  # noqa: BLE001 (the server answers and keeps serving; the log has the type)
            return self.answer(exc, state)

    def answer(self, exc: Exception, state: dict) -> Response:
        """The answer to a failed request: what went wrong in one sentence, never how (no exception text)."""
        from mdagent_hpc.api import MDAgentError
        from mdagent_hpc.workflows.launch import LaunchError

        if isinstance(exc, BodyTooLargeError):
            exc = too_large(self.settings.max_body_bytes)
        if isinstance(exc, RequestRefusedError):
            return JSONResponse(error_body(exc.message, exc.code), exc.status, headers=exc.headers)
        if too_long(exc):
            return self.answer(
                RequestRefusedError(
                    400,
                    "too_expensive",
                    f"this request ran longer than the server allows ({self.settings.statement_timeout_s} s); "
                    "narrow it (a time window, a site, a task) and ask again",
                ),
                state,
            )
        if (down := service_down(exc)) is not None:  # before MDAgentError: the users store's errors are both
            state["error"] = type(exc).__name__
            return self.answer(unavailable(down), state)
        if isinstance(exc, (MDAgentError, LaunchError)):  # a user's mistake, said by this project's own code
            return JSONResponse(error_body(str(exc), "bad_request"), 400)
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            return JSONResponse(error_body(f"{where}: {first['msg']}", "bad_request"), 400)
        state["error"] = type(exc).__name__
        print(f"request {state['id']} failed:", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
        return JSONResponse(
            error_body(
                f"the server failed on this request; the admin's request log has the id {state['id']}", "internal"
            ),
            500,
        )

    async def page(self, app, scope, receive, send) -> None:
        """Serve a dashboard page on a page thread. The dashboard's handlers read AiiDA in their own event loop (as
        `mdagent dashboard` serves them, one thread); here each page runs on its thread's loop, its messages passed
        to and from this one, so a page never holds up the API or /health."""
        loop = asyncio.get_running_loop()

        def here(fn):
            async def call(*args):
                return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(*args), loop))

            return call

        def serve_page() -> None:
            asyncio.get_event_loop().run_until_complete(app(scope, here(receive), here(send)))

        await loop.run_in_executor(self.pages, serve_page)

    async def readable(self, user: User, pk: str, what: str = "run"):
        """The node, or the same 404 whether it does not exist or is not this user's to read (no pk oracle)."""
        from mdagent_hpc.server import service

        parse_pk(pk, what)
        try:
            return await self.read(service.readable, user, pk, self.visible_to(user), what)
        except (service.DeniedError, service.MissingError):
            raise RequestRefusedError(
                404, "not_found", f"no {what} {pk} that you may read; `mdagent runs` lists yours"
            ) from None

    async def authenticate(self, request: Request) -> User:
        key = bearer_key(request.headers.get("authorization", "")) or ""
        if not key:
            raise RequestRefusedError(
                401,
                "missing_api_key",
                "no API key: set MDAGENT_API_KEY (or write it to "
                "~/.config/mdagent/key); an admin gives keys with `mdagent users add NAME`",
            )
        try:
            user = await anyio.to_thread.run_sync(self.store.authenticate, key)
        except AccountsError:
            raise unavailable("the users database") from None
        if user is None:
            raise RequestRefusedError(
                401,
                "invalid_api_key",
                "this API key is not valid (unknown or revoked); ask your mdagent "
                "admin for a new one (`mdagent users key NAME`)",
            )
        return user

    def visible_to(self, user: User) -> bool:
        return self.settings.group_read or user.admin

    def caller(self, user: User):
        """Whose work `user` may read (every read through the API takes it)."""
        from mdagent_hpc.server import service

        return service.caller(user, self.settings.group_read)

    async def body(self, request: Request, model: type[BaseModel]):
        try:
            return model.model_validate(await request.json())
        except ValueError as exc:  # ValidationError is a ValueError; so is bad JSON
            if isinstance(exc, ValidationError):
                raise
            raise RequestRefusedError(400, "bad_request", "the request body is not JSON") from None

    def over_quota(self, user: User, points: int = 0) -> Refused | None:
        """The quota a new run (or sweep of `points`) would break, counted now (call it holding the user's lock)."""
        from mdagent_hpc.server import service

        now = datetime.now(UTC)
        q = user.quota
        running = service.in_flight(user) if q.concurrent_runs is not None else 0
        hours = service.core_hours_today(user, now) if q.core_hours_per_day is not None else 0.0
        tokens = 0
        if q.tokens_per_day is not None:  # through the gateway, and by the user's runs (the daemon's own calls)
            tokens = self.store.tokens_used(user.id, utc_day(now)) + service.tokens_today(user, now)
        return check_submit(q, now, in_flight=running, points=points, core_hours_today=hours, tokens_today=tokens)

    def submit_locked(self, user: User, launch, points: int, request_id: str | None) -> tuple[int, str, bool]:
        """Under the user's lock: the run this request id made already, else the quotas counted and the run made;
        (pk, uuid, made now). The request id is committed before the run is made and the run carries it (an extra,
        committed with the node), so a server killed at any point leaves what the retry finds: no run (made now),
        or the run (queued now if it never was)."""
        from mdagent_hpc.server import repair, service

        with self.store.user_lock(user.id) as db:
            found = self.store.submitted(db, user.id, request_id) if request_id else None
            if found is not None and found[0] is not None:
                return (*found, False)
            once_more_after_a_blip(_ping)  # this thread's database connection, fresh if the database dropped it
            if found is not None and (node := service.made_by(user, request_id)) is not None:
                service.queue_if_never_queued(node)  # a broker down: 503, and the next retry queues it
                self.store.settle(user.id, request_id, node.pk, node.uuid)
                return node.pk, node.uuid, False
            refused = once_more_after_a_blip(lambda: self.over_quota(user, points))
            if refused is not None:
                headers = {"retry-after": str(refused.retry_after)} if refused.retry_after is not None else None
                raise RequestRefusedError(429, refused.quota, refused.message, headers)
            if request_id and found is None:
                self.store.claim(user.id, request_id)
            service.crash_point("request_stored")
            started = datetime.now(UTC)
            try:
                node = launch(request_id)
            except Exception as exc:
                if service_down(exc) == "the message broker":
                    repair.fresh_broker()
                if not request_id:  # nobody will ask for this run again: ended, not left counting
                    self.end_failed_submission(user, started)
                raise  # with a request id the retry (or the repair) queues the run it made
            service.crash_point("run_queued")
            if request_id:
                self.store.settle(user.id, request_id, node.pk, node.uuid)
            return node.pk, node.uuid, True

    @staticmethod
    def end_failed_submission(user: User, started: datetime) -> None:
        """No run left `created` for good by a submission that failed after making its node (a broker down)."""
        from mdagent_hpc.server.repair import end_failed_submission

        try:
            end_failed_submission(identity(user.name, user.email), started)
        except Exception as exc:  # noqa: BLE001 (the submission's own failure is what the user hears)
            print(
                f"mdagent server: cannot end the run a failed submission left ({type(exc).__name__})", file=sys.stderr
            )

    async def submit(self, user: User, request: Request, launch, points: int = 0) -> Response:
        request_id = request.headers.get("idempotency-key")
        if request_id is not None and not REQUEST_ID.fullmatch(request_id):
            raise RequestRefusedError(
                400, "bad_request", "Idempotency-Key must be 1-128 letters, digits, '.', '_', ':' or '-'"
            )
        pk, uuid_, made = await self.write(self.submit_locked, user, launch, points, request_id)
        return JSONResponse(Submitted(pk=pk, uuid=uuid_, user=user.name).model_dump(), 201 if made else 200)

    def known_site(self, name: str | None) -> None:
        """An unknown site in one sentence, without listing the others."""
        from mdagent_hpc.execution.registry import site_files

        if name is not None and name not in site_files():
            raise RequestRefusedError(
                400, "unknown_site", f"no site {name[:64]!r} on this server; ask your mdagent admin which sites it has"
            )

    @staticmethod
    def attempt_of(spec: str) -> str:
        """The run's pk in PK or PK:N (N an attempt number)."""
        pk, _, attempt = spec.partition(":")
        if attempt and not attempt.isdigit():
            raise RequestRefusedError(400, "bad_request", f"{spec[:40]!r} is not PK or PK:N (N an attempt number)")
        return pk

    # -- routes --------------------------------------------------------------------------------------------------
    async def probe_now_and_then(self) -> None:
        """Count the users every HEALTH_EVERY_S on the probe's own thread; /health answers with the last finding, so
        a request queue, a busy database or a hung query costs /health nothing but the age of that finding."""
        from aiida import orm

        def count():
            return once_more_after_a_blip(lambda: orm.QueryBuilder().append(orm.User).count())

        while True:
            try:
                await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self.probe, count), HEALTH_TIMEOUT_S)
                self.found = (True, "")
            except Exception as exc:  # noqa: BLE001 (the probe says unavailable, and why in one word)
                self.found = (False, type(exc).__name__)
            self.probed.set()
            await asyncio.sleep(HEALTH_EVERY_S)

    async def health(self, _request: Request) -> Response:
        if self.probed is not None and not self.probed.is_set():  # just started: the first probe's finding
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.probed.wait(), HEALTH_TIMEOUT_S)
        ok, reason = self.found or (False, "Starting")
        if not ok:
            return JSONResponse({"status": "unavailable", "reason": reason}, 503)
        return JSONResponse({"status": "ok"})

    async def me(self, request: Request) -> Response:
        async def work(user: User):
            me = Me(
                name=user.name,
                email=identity(user.name, user.email),
                admin=user.admin,
                group_read=self.settings.group_read,
                quota=user.quota.model_dump(),
            )
            return JSONResponse(me.model_dump())

        return await self.handle(request, work)

    async def runs(self, request: Request) -> Response:
        from mdagent_hpc.server import service

        async def submit(user: User):
            body = await self.body(request, RunIn)
            if body.request.answers:
                raise RequestRefusedError(
                    400,
                    "bad_request",
                    "a request with recorded answers runs only in your own process; "
                    "unset MDAGENT_SERVER to replay answers locally",
                )
            self.known_site(body.request.site)
            return await self.submit(
                user, request, lambda rid: service.submit_run(user, body.request, self.settings.group_read, rid)
            )

        async def listing(user: User):
            q = request.query_params
            limit = parse_limit(q.get("limit"))
            verdict = q.get("verdict")
            if verdict is not None and verdict not in ("running", "passed", "failed"):
                raise RequestRefusedError(400, "bad_request", "verdict must be one of running, passed, failed")
            found = await self.read(
                service.list_runs, user, limit, verdict, q.get("site"), q.get("task"), self.visible_to(user)
            )
            return JSONResponse([r.model_dump(mode="json") for r in found])

        return await self.handle(request, submit if request.method == "POST" else listing)

    async def run(self, request: Request) -> Response:
        from mdagent_hpc import api

        async def work(user: User):
            pk = request.path_params["pk"]
            await self.readable(user, pk)
            return JSONResponse((await self.read(api.get_run, pk, caller=self.caller(user))).model_dump(mode="json"))

        return await self.handle(request, work)

    async def cancel(self, request: Request) -> Response:
        from mdagent_hpc.server import service

        async def work(user: User):
            pk = parse_pk(request.path_params["pk"])
            try:
                said = await self.write(service.cancel, user, pk, self.visible_to(user))
            except service.MissingError:
                raise RequestRefusedError(
                    404, "not_found", f"no run {pk} that you may read; `mdagent runs` lists yours"
                ) from None
            except service.DeniedError as exc:
                raise RequestRefusedError(403, "forbidden", str(exc)) from None
            return JSONResponse({"message": said})

        return await self.handle(request, work)

    async def plot(self, request: Request) -> Response:
        from mdagent_hpc import api

        async def work(user: User):
            spec = request.path_params["pk"]
            await self.readable(user, self.attempt_of(spec))
            with tempfile.TemporaryDirectory() as folder:
                path = await self.read(api.plot_run, spec, Path(folder) / "plot.png", caller=self.caller(user))
                return Response(path.read_bytes(), media_type="image/png")

        return await self.handle(request, work)

    async def query(self, request: Request) -> Response:
        from mdagent_hpc import api

        async def work(user: User):
            filters: dict[str, Any] = (await self.body(request, QueryIn)).filters
            if not self.visible_to(user):
                me = identity(user.name, user.email)
                if filters.get("user") not in (None, "", me):
                    raise RequestRefusedError(
                        403,
                        "forbidden",
                        f"this server does not share runs within the group: you may query only your own (user {me})",
                    )
                filters["user"] = me
            rows = await self.read(api.find_runs, caller=self.caller(user), **filters)
            if not self.visible_to(user):  # the user filter matches text: keep exactly this user's
                rows = [r for r in rows if r.get("user") == filters["user"]]
            return JSONResponse(json.loads(json.dumps(rows, default=str)))

        return await self.handle(request, work)

    async def diff(self, request: Request) -> Response:
        from mdagent_hpc import api

        async def work(user: User):
            a, b = request.query_params.get("a"), request.query_params.get("b")
            if not a or not b:
                raise RequestRefusedError(400, "bad_request", "give two runs (a=PK or PK:N, b=PK or PK:N)")
            for side in (a, b):
                await self.readable(user, self.attempt_of(side))
            return JSONResponse(
                json.loads(json.dumps(await self.read(api.diff_runs, a, b, caller=self.caller(user)), default=str))
            )

        return await self.handle(request, work)

    async def sweeps(self, request: Request) -> Response:
        from mdagent_hpc import api
        from mdagent_hpc.server import service

        async def submit(user: User):
            from mdagent_hpc.sweeps.spec import SweepSpec

            spec = SweepSpec.model_validate((await self.body(request, SweepIn)).spec)
            self.known_site(spec.site)
            plan = await self.read(api.plan_sweep, spec)
            return await self.submit(
                user,
                request,
                lambda rid: service.submit_sweep(user, spec, self.settings.group_read, rid),
                points=plan.points,
            )

        async def listing(user: User):
            limit = parse_limit(request.query_params.get("limit"))
            found = await self.read(service.list_sweeps, user, limit, self.visible_to(user))
            return JSONResponse([s.model_dump(mode="json") for s in found])

        return await self.handle(request, submit if request.method == "POST" else listing)

    async def sweep(self, request: Request) -> Response:
        from mdagent_hpc import api

        async def work(user: User):
            pk = request.path_params["pk"]
            await self.readable(user, pk, "sweep")
            return JSONResponse((await self.read(api.get_sweep, pk, caller=self.caller(user))).model_dump(mode="json"))

        return await self.handle(request, work)

    async def plan(self, request: Request) -> Response:
        from mdagent_hpc import api
        from mdagent_hpc.sweeps.spec import SweepSpec

        async def work(_user: User):
            spec = SweepSpec.model_validate((await self.body(request, SweepIn)).spec)
            return JSONResponse((await self.read(api.plan_sweep, spec)).model_dump(mode="json"))

        return await self.handle(request, work)

    async def export(self, request: Request) -> Response:
        from mdagent_hpc import api

        async def work(user: User):
            pk = request.path_params["pk"]
            await self.readable(user, pk, "sweep")
            with tempfile.TemporaryDirectory() as folder:
                paths = await self.read(api.export_sweep, pk, folder, caller=self.caller(user))
                files = {
                    kind: (Path(p).name, base64.b64encode(Path(p).read_bytes()).decode()) for kind, p in paths.items()
                }
            return JSONResponse(files)

        return await self.handle(request, work)


# -- N server processes -------------------------------------------------------------------------------------------
# Each process has its own pools: the run database (AiiDA's engine) one connection per read and page thread, one
# for the health probe and one for the submission thread; the users database USERS_POOL (key checks, and the
# submission lock, held while the same thread counts tokens on a second one). No overflow: a thread beyond them
# waits for a connection.
USERS_POOL = 4
RESERVED_CONNECTIONS = 20  # left for the daemon's workers, verdi, backups and the admin's psql
PROCESS_PLAN = "MDAGENT_SERVER_PROCESS"  # how `serve` hands each process uvicorn starts what to build


class ProcessPlan(BaseModel):
    """What each server process builds its app from (uvicorn starts them afresh: it reaches them as JSON in the
    environment)."""

    users_db: str
    settings: ServerSettings


def run_db_pool(settings: ServerSettings) -> int:
    return settings.read_threads + settings.page_threads + 2  # and the health probe's, the submission thread's


def connections_per_process(settings: ServerSettings) -> int:
    return run_db_pool(settings) + USERS_POOL


def processes_that_fit(max_connections: int, settings: ServerSettings) -> int:
    """How many server processes PostgreSQL's `max_connections` allows, RESERVED_CONNECTIONS kept for the rest."""
    return max(0, (max_connections - RESERVED_CONNECTIONS) // connections_per_process(settings))


def max_connections() -> int:
    """PostgreSQL's max_connections, read through the loaded profile's database."""
    from aiida.manage import get_manager
    from sqlalchemy import text

    session = get_manager().get_profile_storage().get_session()
    try:
        return int(session.execute(text("SHOW max_connections")).scalar_one())
    finally:
        session.rollback()


def run_db_engine_options(settings: ServerSettings) -> dict:
    """SQLAlchemy engine options of a server process's run database: `run_db_pool` connections, no overflow, and a
    statement timeout, so that no query, however a user asks it, holds the database longer."""
    timeout_ms = settings.statement_timeout_s * 1000
    return {
        "pool_size": run_db_pool(settings),
        "max_overflow": 0,
        "connect_args": {"options": f"-c statement_timeout={timeout_ms}"},
    }


def size_run_db_pool(settings: ServerSettings) -> None:
    """This process's AiiDA engine made again with `run_db_engine_options` (the loaded profile's storage settings,
    in memory only; PostgreSQL profiles, the only kind `server setup` makes)."""
    from aiida.manage import get_manager

    manager = get_manager()
    profile = manager.get_profile()
    if profile.storage_backend != "core.psql_dos":
        return
    profile.storage_config["engine_kwargs"] = run_db_engine_options(settings)
    manager.reset_profile_storage()


def close_run_db() -> None:
    """This process's run-database connections closed (the supervisor of N processes holds none)."""
    from aiida.manage import get_manager

    get_manager().reset_profile_storage()


def process_app():
    """The app of one server process: uvicorn's factory, called in each process it starts (the profile named by
    MDAGENT_AIIDA_PROFILE, which `serve` set, loaded here, with this process's own pools)."""
    from mdagent_hpc import api
    from mdagent_hpc.accounts.store import Store

    plan = ProcessPlan.model_validate_json(os.environ[PROCESS_PLAN])
    api.load_profile()
    size_run_db_pool(plan.settings)
    return Server(plan.settings, Store(plan.users_db, pool_size=USERS_POOL)).app()


def serve(server: Server, sock, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    """Serve in this process until SIGINT or SIGTERM."""
    size_run_db_pool(server.settings)
    web.serve(server.app(), sock, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)


def serve_processes(
    plan: ProcessPlan, workers: int, sock, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None
) -> None:
    """Serve with `workers` processes on one socket until SIGINT or SIGTERM: uvicorn's supervisor starts them
    (each builds its app with process_app), and starts again one that dies."""
    from uvicorn.supervisors import Multiprocess

    os.environ[PROCESS_PLAN] = plan.model_dump_json()
    config = uvicorn_config(
        f"{__name__}:process_app", factory=True, workers=workers, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile
    )
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[sock]).run()
