"""The server's ASGI app: keys checked against the users store, each route a thin call into service.py or the API.

AiiDA is touched only in worker threads: reads in a small pool (each thread has its own database session),
submissions and cancels in one thread with its own event loop (AiiDA's runner lives there). Each request is one
JSON line in the request log, with the user.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from mdagent_hpc.accounts.quotas import utc_day
from mdagent_hpc.accounts.store import AccountsError, Store, User
from mdagent_hpc.server.access import Refused, check_submit, identity
from mdagent_hpc.server.dashboard import DashboardGate
from mdagent_hpc.server.wire import API, Me, QueryIn, RunIn, Submitted, SweepIn, error_body


class ServerSettings(BaseModel):
    group_read: bool = False  # may users read each other's runs (never each other's secrets)
    request_log: Path | None = None
    read_threads: int = 4


class Problem(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _one_thread_with_a_loop() -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())


class Server:
    def __init__(self, settings: ServerSettings, store: Store):
        self.settings = settings
        self.store = store
        self.reads = anyio.CapacityLimiter(settings.read_threads)
        self.writes = ThreadPoolExecutor(1, thread_name_prefix="aiida-submit", initializer=_one_thread_with_a_loop)
        self._log = settings.request_log.open("a", buffering=1) if settings.request_log else None

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
        return Starlette(routes=r, lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app):
        yield
        self.writes.shutdown(wait=True)
        if self._log:
            self._log.close()

    # -- plumbing ------------------------------------------------------------------------------------------------
    async def read(self, fn, *args, **kwargs):
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self.reads)

    async def write(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.writes, lambda: fn(*args, **kwargs))

    async def handle(self, request: Request, work) -> Response:
        """Authenticate, run `work(user)`, turn known failures into one-sentence answers, log one line."""
        started, user = time.perf_counter(), None
        try:
            user = await self.authenticate(request)
            response = await work(user)
        except Problem as p:
            response = JSONResponse(error_body(p.message, p.code), p.status, headers=p.headers)
        except Exception as exc:  # noqa: BLE001 (the server answers and keeps serving; the log has the type)
            response = self.translate(exc)
        self.log(request, user, response.status_code, started)
        return response

    def translate(self, exc: Exception) -> Response:
        from mdagent_hpc.api import MDAgentError
        from mdagent_hpc.server.service import Denied, Missing
        from mdagent_hpc.workflows.launch import LaunchError

        if isinstance(exc, Denied):
            return JSONResponse(error_body(str(exc), "forbidden"), 403)
        if isinstance(exc, Missing):
            return JSONResponse(error_body(str(exc), "not_found"), 404)
        if isinstance(exc, (MDAgentError, LaunchError)):
            return JSONResponse(error_body(str(exc), "bad_request"), 400)
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            return JSONResponse(error_body(f"{where}: {first['msg']}", "bad_request"), 400)
        if isinstance(exc, AccountsError):
            return JSONResponse(error_body(str(exc), "users_db_unavailable"), 503)
        return JSONResponse(
            error_body(
                f"the server failed on this request ({type(exc).__name__}: {exc}); "
                "its request log and `mdagent verdi process report` have more",
                "internal",
            ),
            500,
        )

    async def authenticate(self, request: Request) -> User:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key:
            raise Problem(
                401,
                "missing_api_key",
                "no API key: set MDAGENT_API_KEY (or write it to "
                "~/.config/mdagent/key); an admin gives keys with `mdagent users add NAME`",
            )
        try:
            user = await anyio.to_thread.run_sync(self.store.authenticate, key)
        except AccountsError as exc:
            raise Problem(503, "users_db_unavailable", str(exc)) from None
        if user is None:
            raise Problem(
                401,
                "invalid_api_key",
                "this API key is not valid (unknown or revoked); ask your mdagent "
                "admin for a new one (`mdagent users key NAME`)",
            )
        return user

    def log(self, request: Request, user: User | None, status: int, started: float) -> None:
        if self._log is None:
            return
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "user": user.name if user else None,
            "method": request.method,
            "path": request.url.path,
            "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        self._log.write(json.dumps(line) + "\n")

    def visible_to(self, user: User) -> bool:
        return self.settings.group_read or user.admin

    async def body(self, request: Request, model: type[BaseModel]):
        try:
            return model.model_validate(await request.json())
        except ValueError as exc:  # ValidationError is a ValueError; so is bad JSON
            if isinstance(exc, ValidationError):
                raise
            raise Problem(400, "bad_request", "the request body is not JSON") from None

    async def quota(self, user: User, points: int = 0) -> None:
        from mdagent_hpc.server import service

        now = datetime.now(UTC)
        q = user.quota
        running = await self.read(service.in_flight, user) if q.concurrent_runs is not None else 0
        hours = await self.read(service.core_hours_today, user, now) if q.core_hours_per_day is not None else 0.0
        tokens = await self.read(self.store.tokens_used, user.id, utc_day(now)) if q.tokens_per_day is not None else 0
        refused: Refused | None = check_submit(
            q, now, in_flight=running, points=points, core_hours_today=hours, tokens_today=tokens
        )
        if refused is not None:
            raise Problem(429, refused.quota, refused.message, {"retry-after": str(refused.retry_after)})

    # -- routes --------------------------------------------------------------------------------------------------
    async def health(self, _request: Request) -> Response:
        from aiida import orm

        try:
            await self.read(lambda: orm.QueryBuilder().append(orm.User).count())
        except Exception as exc:  # noqa: BLE001
            return JSONResponse({"status": "unavailable", "reason": type(exc).__name__}, 503)
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
                raise Problem(
                    400,
                    "bad_request",
                    "a request with recorded answers runs only in your own process; "
                    "unset MDAGENT_SERVER to replay answers locally",
                )
            await self.quota(user)
            node = await self.write(service.submit_run, user, body.request)
            return JSONResponse(Submitted(pk=node.pk, uuid=node.uuid, user=user.name).model_dump(), 201)

        async def listing(user: User):
            q = request.query_params
            try:
                limit = int(q.get("limit", 20))
            except ValueError:
                raise Problem(400, "bad_request", "limit must be a whole number") from None
            verdict = q.get("verdict")
            if verdict is not None and verdict not in ("running", "passed", "failed"):
                raise Problem(400, "bad_request", f"verdict {verdict!r} is not one of running, passed, failed")
            found = await self.read(
                service.list_runs,
                user,
                max(1, min(limit, 1000)),
                verdict,
                q.get("site"),
                q.get("task"),
                self.visible_to(user),
            )
            return JSONResponse([r.model_dump(mode="json") for r in found])

        return await self.handle(request, submit if request.method == "POST" else listing)

    async def run(self, request: Request) -> Response:
        from mdagent_hpc import api
        from mdagent_hpc.server import service

        async def work(user: User):
            pk = request.path_params["pk"]
            await self.read(service.readable, user, pk, self.visible_to(user))
            return JSONResponse((await self.read(api.get_run, pk)).model_dump(mode="json"))

        return await self.handle(request, work)

    async def cancel(self, request: Request) -> Response:
        from mdagent_hpc.server import service

        async def work(user: User):
            said = await self.write(service.cancel, user, request.path_params["pk"])
            return JSONResponse({"message": said})

        return await self.handle(request, work)

    async def plot(self, request: Request) -> Response:
        from mdagent_hpc import api
        from mdagent_hpc.server import service

        async def work(user: User):
            spec = request.path_params["pk"]
            await self.read(service.readable, user, spec.split(":")[0], self.visible_to(user))
            with tempfile.TemporaryDirectory() as folder:
                path = await self.read(api.plot_run, spec, Path(folder) / "plot.png")
                return Response(path.read_bytes(), media_type="image/png")

        return await self.handle(request, work)

    async def query(self, request: Request) -> Response:
        from mdagent_hpc import api

        async def work(user: User):
            filters: dict[str, Any] = (await self.body(request, QueryIn)).filters
            if not self.visible_to(user):
                me = identity(user.name, user.email)
                if filters.get("user") not in (None, "", me):
                    raise Problem(
                        403,
                        "forbidden",
                        f"this server does not share runs within the group: you may query only your own (user {me})",
                    )
                filters["user"] = me
            rows = await self.read(api.find_runs, **filters)
            if not self.visible_to(user):  # the user filter matches text: keep exactly this user's
                rows = [r for r in rows if r.get("user") == filters["user"]]
            return JSONResponse(json.loads(json.dumps(rows, default=str)))

        return await self.handle(request, work)

    async def diff(self, request: Request) -> Response:
        from mdagent_hpc import api
        from mdagent_hpc.server import service

        async def work(user: User):
            a, b = request.query_params.get("a"), request.query_params.get("b")
            if not a or not b:
                raise Problem(400, "bad_request", "give two runs (a=PK or PK:N, b=PK or PK:N)")
            for side in (a, b):
                await self.read(service.readable, user, side.split(":")[0], self.visible_to(user))
            return JSONResponse(json.loads(json.dumps(await self.read(api.diff_runs, a, b), default=str)))

        return await self.handle(request, work)

    async def sweeps(self, request: Request) -> Response:
        from mdagent_hpc import api
        from mdagent_hpc.server import service

        async def submit(user: User):
            from mdagent_hpc.sweep.spec import SweepSpec

            spec = SweepSpec.model_validate((await self.body(request, SweepIn)).spec)
            plan = await self.read(api.plan_sweep, spec)
            await self.quota(user, points=plan.points)
            node = await self.write(service.submit_sweep, user, spec)
            return JSONResponse(Submitted(pk=node.pk, uuid=node.uuid, user=user.name).model_dump(), 201)

        async def listing(user: User):
            limit = max(1, min(int(request.query_params.get("limit", 20)), 1000))
            found = await self.read(service.list_sweeps, user, limit, self.visible_to(user))
            return JSONResponse([s.model_dump(mode="json") for s in found])

        return await self.handle(request, submit if request.method == "POST" else listing)

    async def sweep(self, request: Request) -> Response:
        from mdagent_hpc import api
        from mdagent_hpc.server import service

        async def work(user: User):
            pk = request.path_params["pk"]
            await self.read(service.readable, user, pk, self.visible_to(user), "sweep")
            return JSONResponse((await self.read(api.get_sweep, pk)).model_dump(mode="json"))

        return await self.handle(request, work)

    async def plan(self, request: Request) -> Response:
        from mdagent_hpc import api
        from mdagent_hpc.sweep.spec import SweepSpec

        async def work(_user: User):
            spec = SweepSpec.model_validate((await self.body(request, SweepIn)).spec)
            return JSONResponse((await self.read(api.plan_sweep, spec)).model_dump(mode="json"))

        return await self.handle(request, work)

    async def export(self, request: Request) -> Response:
        from mdagent_hpc import api
        from mdagent_hpc.server import service

        async def work(user: User):
            pk = request.path_params["pk"]
            await self.read(service.readable, user, pk, self.visible_to(user), "sweep")
            with tempfile.TemporaryDirectory() as folder:
                paths = await self.read(api.export_sweep, pk, folder)
                files = {
                    kind: (Path(p).name, base64.b64encode(Path(p).read_bytes()).decode()) for kind, p in paths.items()
                }
            return JSONResponse(files)

        return await self.handle(request, work)


def serve(server: Server, sock, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    import uvicorn

    config = uvicorn.Config(
        server.app(),
        log_level="warning",
        access_log=False,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
