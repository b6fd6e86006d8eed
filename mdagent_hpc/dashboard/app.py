"""The dashboard's web app (starlette, server-rendered jinja2 pages): runs, one run's attempts, sweeps, live progress.

Read only. Every handler is `async` so that all AiiDA reads happen in the event loop's one thread. A URL or query
parameter the app cannot use gives a 4xx page with one sentence; an unexpected failure a 500 page saying where to
look, never a traceback in the browser.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from mdagent_hpc.dashboard import data, view
from mdagent_hpc.dashboard.filters import GRADES, MORE, VERDICTS, QueryError, read_filters
from mdagent_hpc.provenance import Caller, local_caller

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals.update(view=view)
REFRESH_S = 3  # how often a page with running work asks for news
CALLER = "mdagent.caller"  # set by the shared server (server/dashboard.py): whose work this request may read
STOPS = ("passed", "max_attempts", "stuck", "no_valid_script", "llm_unavailable", "killed", "excepted")


def caller(request: Request) -> Caller:
    """Whose work the request may read: as the shared server said, else whoever uses this profile directly."""
    return request.scope.get(CALLER) or local_caller()


def page(request: Request, name: str, status_code: int = 200, **context) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


async def home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=302)


async def runs(request: Request) -> Response:
    data.fresh()
    params, me = request.query_params.multi_items(), caller(request)
    if not me.everyone:  # only this user's runs, whatever the user filter asked
        params = [(k, v) for k, v in params if k != "user"]
    try:
        query, values = read_filters(params)
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    rows = data.find_runs(me, query)
    found = data.choices(me)
    found["stop"] = sorted({*STOPS, *found["stop"]})
    return page(
        request,
        "runs.html",
        rows=rows,
        query=query,
        values=values,
        filtered=bool(values.keys() - {"limit", "sort"}),
        unindexed=data.unindexed(values),
        running=data.running(me),
        choices={**found, "verdict": VERDICTS, "grade": GRADES},
        more=MORE,
        refresh=REFRESH_S,
    )


async def run(request: Request) -> Response:
    data.fresh()
    try:
        result = _run(request)
    except HTTPException:
        sweep = data.sweep_of_point(caller(request), request.path_params["pk"])
        if sweep is None:
            raise
        return RedirectResponse(f"/sweeps/{sweep}", status_code=303)  # the runs list holds sweep points too
    diffs = [view.script_diff(previous, attempt) for previous, attempt in view.pairs(result.attempts)]
    live = data.run_summary(result).get("progress")
    return page(request, "run.html", run=result, stop=data.stop(result), diffs=diffs, live=live, refresh=REFRESH_S)


async def thermo_png(request: Request) -> Response:
    data.fresh()
    _run(request)  # the run's own 404 first
    try:
        png = data.thermo_png(caller(request), request.path_params["pk"], request.path_params["attempt"])
    except data.NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(png, media_type="image/png")


async def run_json(request: Request) -> Response:
    data.fresh()
    return JSONResponse(data.run_summary(_run(request)))


async def running_json(request: Request) -> Response:
    data.fresh()
    return JSONResponse([p.as_dict() for p in data.running(caller(request))])


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def sweeps(request: Request) -> Response:
    data.fresh()
    return page(request, "sweeps.html", sweeps=data.list_sweeps(caller(request)), refresh=REFRESH_S)


async def sweep(request: Request) -> Response:
    data.fresh()
    try:
        found = data.get_sweep(caller(request), request.path_params["pk"])
    except data.NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    return page(request, "sweep.html", sweep=found, refresh=REFRESH_S)


async def sweep_png(request: Request) -> Response:
    data.fresh()
    try:
        png = data.sweep_png(caller(request), request.path_params["pk"])
    except data.NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(png, media_type="image/png")


def _run(request: Request):
    try:
        return data.get_run(caller(request), request.path_params["pk"])
    except data.NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None


# -- errors: one sentence, the right status, HTML for pages and JSON for /api -----------------------------------
async def http_error(request: Request, exc: HTTPException) -> Response:
    message = (
        exc.detail
        if exc.status_code != 404 or exc.detail != "Not Found"
        else (f"there is no page at {request.url.path}; the dashboard has /runs, /runs/PK and /sweeps")
    )
    if exc.status_code == 405:
        message = "the dashboard is read only: it answers GET requests only"
    return _error(request, exc.status_code, message)


async def server_error(request: Request, exc: Exception) -> Response:
    # uvicorn logs the traceback in the server's terminal (Starlette re-raises after this response)
    # what went wrong, never how: no exception text (a shared server's page would show it to any user)
    return _error(
        request,
        500,
        "the dashboard failed reading this page; the log of the terminal or server running it has the details",
    )


def _error(request: Request, status: int, message: str) -> Response:
    root, path = request.scope.get("root_path", ""), request.scope["path"]
    if path.removeprefix(root).startswith("/api/"):  # also under the server's /dashboard mount
        return JSONResponse({"error": message}, status_code=status)
    return page(request, "error.html", status_code=status, status=status, message=message)


routes = [
    Route("/", home),
    Route("/runs", runs),
    Route("/runs/{pk}", run),
    Route("/runs/{pk}/attempts/{attempt}/thermo.png", thermo_png),
    Route("/sweeps", sweeps),
    Route("/sweeps/{pk}", sweep),
    Route("/sweeps/{pk}/plot.png", sweep_png),
    Route("/api/health", health),
    Route("/favicon.ico", lambda request: Response(status_code=204)),
    Route("/api/running", running_json),
    Route("/api/runs/{pk}", run_json),
]


LOCAL_NAMES = ["127.0.0.1", "localhost", "[::1]"]


def make_app(hosts: list[str] | None = None) -> Starlette:
    """The app, answering only requests addressed to `hosts` (default: this machine's loopback names).

    Checking the Host header keeps a web page in the user's browser from reading the dashboard through a DNS name
    that points at 127.0.0.1 (DNS rebinding); ["*"] turns the check off.
    """
    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts or LOCAL_NAMES)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
