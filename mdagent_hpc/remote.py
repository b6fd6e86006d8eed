"""The client side of `mdagent server`: when MDAGENT_SERVER is set, the API functions go through the server.

`mdagent_hpc.api` hands each function named in `REMOTE` to the function of the same name here whenever
MDAGENT_SERVER is set (checked on every call), so the CLI and Python callers need no change. The key is
MDAGENT_API_KEY, else the file MDAGENT_API_KEY_FILE, else ~/.config/mdagent/key. A refusal from the server
(no key, another user's run, a quota) is an `MDAgentError` with the server's sentence: the CLI prints it, exit 2.
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from mdagent_hpc.api import MDAgentError, make_request

REMOTE = (
    "run",
    "submit",
    "get_run",
    "list_runs",
    "find_runs",
    "diff_runs",
    "plot_run",
    "index_runs",
    "plan_sweep",
    "sweep",
    "get_sweep",
    "list_sweeps",
    "export_sweep",
    "load_profile",
    "cancel",
)
POLL_SECONDS = 1.0
API = "/api/v1"


def server_url() -> str | None:
    from mdagent_hpc.settings import env

    url = env("MDAGENT_SERVER") or ""
    return url.rstrip("/") or None


def api_key() -> str:
    from mdagent_hpc.settings import env

    if key := env("MDAGENT_API_KEY"):
        return key
    path = Path(env("MDAGENT_API_KEY_FILE") or Path.home() / ".config" / "mdagent" / "key")
    try:
        return path.read_text().strip()
    except OSError:
        raise MDAgentError(
            f"MDAGENT_SERVER is set but there is no key: set MDAGENT_API_KEY or write your key to "
            f"{path} (mode 600); your mdagent admin gives keys (`mdagent users add NAME`)"
        ) from None


def call(method: str, path: str, *, json: Any = None, params: dict | None = None, raw: bool = False) -> Any:
    """One request to the server; its answer (JSON, or bytes with `raw`); a refusal is an MDAgentError."""
    url = server_url()
    if url is None:
        raise MDAgentError("MDAGENT_SERVER is not set")
    headers = {"authorization": f"Bearer {api_key()}"}
    try:
        response = httpx.request(
            method,
            f"{url}{API}{path}",
            json=json,
            params=params,
            headers=headers,
            timeout=httpx.Timeout(120, connect=10),
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        raise MDAgentError(
            f"the mdagent server {url} does not answer ({type(exc).__name__}); check MDAGENT_SERVER "
            "or ask your admin whether it runs"
        ) from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code} from {url}"
        raise MDAgentError(message)
    return response.content if raw else response.json()


def whoami() -> dict:
    return call("GET", "/me")


# -- the API functions, remotely -------------------------------------------------------------------------------
def load_profile():
    """Nothing to load here: the profile is the server's."""
    return None


def submit(task, *, site=None, model=None, max_attempts=None):
    from mdagent_hpc.models import Run

    request = make_request(task, site=site, model=model, max_attempts=max_attempts)
    if request.answers:
        raise MDAgentError("a request with recorded answers runs only in your own process; unset MDAGENT_SERVER")
    done = call("POST", "/runs", json={"request": request.model_dump(mode="json")})
    return Run.model_validate(call("GET", f"/runs/{done['pk']}"))


def run(task, *, site=None, model=None, max_attempts=None, answers=None):
    """Submit through the server and wait for the end, showing the run's progress on stderr."""
    if answers:
        raise MDAgentError("a request with recorded answers runs only in your own process; unset MDAGENT_SERVER")
    submitted = submit(task, site=site, model=model, max_attempts=max_attempts)
    return wait(submitted.pk)


def wait(pk: int):
    from rich.console import Console

    from mdagent_hpc.models import Run

    console = Console(stderr=True)
    with console.status(f"run {pk} on {server_url()} ...") as shown:
        try:
            while True:
                found = Run.model_validate(call("GET", f"/runs/{pk}"))
                if found.verdict != "running":
                    return found
                shown.update(f"run {pk} on {server_url()}: {found.state}, {len(found.attempts)} attempt(s) done")
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            print(f"stopped waiting; run {pk} goes on on the server: `mdagent show {pk}`", file=sys.stderr)
            raise


def cancel(pk) -> str:
    return call("POST", f"/runs/{pk}/cancel")["message"]


def get_run(pk):
    from mdagent_hpc.models import Run

    return Run.model_validate(call("GET", f"/runs/{pk}"))


def list_runs(limit=20, *, verdict=None, site=None, task_contains=None):
    from mdagent_hpc.models import Run

    params = {
        k: v
        for k, v in {"limit": limit, "verdict": verdict, "site": site, "task": task_contains}.items()
        if v is not None
    }
    return [Run.model_validate(r) for r in call("GET", "/runs", params=params)]


def find_runs(**filters) -> list[dict]:
    return call("POST", "/query", json={"filters": {k: _jsonable(v) for k, v in filters.items()}})


def _jsonable(value):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, tuple):
        return "..".join("" if v is None else str(v) for v in value)  # a (low, high) range as the CLI writes it
    return value


def diff_runs(a, b) -> dict:
    return call("GET", "/diff", params={"a": str(a), "b": str(b)})


def plot_run(run, out=None) -> Path:
    path = Path(out) if out else Path(f"run-{str(run).replace(':', '-')}.png")
    path.write_bytes(call("GET", f"/runs/{run}/plot", raw=True))
    return path


def index_runs(redo=False, progress=None):
    raise MDAgentError("`runs index` is for the server's admin: run it on the server without MDAGENT_SERVER")


def plan_sweep(spec):
    from mdagent_hpc.workflows.sweep_launch import SweepPlan

    return SweepPlan.model_validate(call("POST", "/sweeps/plan", json={"spec": spec.model_dump(mode="json")}))


def sweep(spec, *, site=None, daemon=False):
    """A sweep through the server (a plain-language study is turned into a spec here, with your LLM settings)."""
    from mdagent_hpc import api
    from mdagent_hpc.sweep.spec import SweepSpec

    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        spec = api.load_sweep_spec(spec)
    elif isinstance(spec, str):
        spec = api.propose_sweep(spec, site=site)
    elif not isinstance(spec, SweepSpec):
        raise MDAgentError(f"a sweep is a SweepSpec, a spec file or a sentence, not {type(spec).__name__}")
    if site is not None:
        spec = spec.model_copy(update={"site": site})
    done = call("POST", "/sweeps", json={"spec": spec.model_dump(mode="json")})
    found = get_sweep(done["pk"])
    while not daemon and found.verdict == "running":
        time.sleep(POLL_SECONDS)
        found = get_sweep(done["pk"])
    return found


def get_sweep(pk):
    from mdagent_hpc.sweep.results import SweepRun

    return SweepRun.model_validate(call("GET", f"/sweeps/{pk}"))


def list_sweeps(limit=20):
    from mdagent_hpc.sweep.results import SweepRun

    return [SweepRun.model_validate(s) for s in call("GET", "/sweeps", params={"limit": limit})]


def export_sweep(pk, folder=None) -> dict[str, str]:
    """The sweep's table and plot from the server, written to `folder` (default: ./sweep-PK)."""
    folder = (Path(folder) if folder else Path(f"sweep-{pk}")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, (name, content) in call("GET", f"/sweeps/{pk}/export").items():
        paths[kind] = str(folder / name)
        (folder / name).write_bytes(base64.b64decode(content))
    return paths

