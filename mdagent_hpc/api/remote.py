"""The API's backend through a shared server (`mdagent server`): the same functions as `local.py`, each one HTTP
request with the user's key. `mdagent_hpc.api` calls these when MDAGENT_SERVER is set (checked on every call). The key
is MDAGENT_API_KEY, else the file MDAGENT_API_KEY_FILE, else ~/.config/mdagent/key. A refusal from the server (no key,
a run you may not read, a quota) is an `MDAgentError` with the server's sentence: the CLI prints it, exit 2.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2

from mdagent_hpc.errors import MDAgentError

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
        response = httpx2.request(
            method,
            f"{url}{API}{path}",
            json=json,
            params=params,
            headers=headers,
            timeout=httpx2.Timeout(120, connect=10),
            trust_env=False,
            verify=tls_context(),
        )
    except httpx2.HTTPError as exc:
        raise MDAgentError(unreachable(url, exc)) from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code} from {url}"
        if response.status_code >= 500:
            message += "; ask your mdagent admin (the server's log says why)"
        raise MDAgentError(message)
    return response.content if raw else response.json()


@functools.cache
def tls_context():
    """The system's certificates (and SSL_CERT_FILE, e.g. a self-signed server's certificate the admin gave)."""
    import ssl

    return ssl.create_default_context()


def unreachable(url: str, exc: httpx2.HTTPError) -> str:
    """Why the server at `url` gave no answer, in one sentence, with what to do."""
    said = str(exc)
    if url.startswith("https:") and "WRONG_VERSION_NUMBER" in said:
        return (
            f"the mdagent server {url} answers plain HTTP, not HTTPS: use http:// in MDAGENT_SERVER, or ask your "
            "admin to serve it with a certificate"
        )
    if "CERTIFICATE_VERIFY_FAILED" in said:
        return (
            f"the mdagent server {url} has a certificate this machine does not trust: ask your admin for it and "
            "set SSL_CERT_FILE to that file (or install it in the system's certificates)"
        )
    if url.startswith("http:") and isinstance(exc, httpx2.RemoteProtocolError):
        return f"the mdagent server {url} closed the connection: if it serves HTTPS, use https:// in MDAGENT_SERVER"
    return (
        f"the mdagent server {url} does not answer ({type(exc).__name__}); check MDAGENT_SERVER "
        "or ask your admin whether it runs"
    )


def whoami() -> dict:
    return call("GET", "/me")


# -- the API functions, remotely -------------------------------------------------------------------------------
def load_profile():
    """Nothing to load here: the profile is the server's."""
    return None


def submit(request):
    return get_run(_post_run(request))


def _post_run(request) -> int:
    if request.answers:
        raise MDAgentError("a request with recorded answers runs only in your own process; unset MDAGENT_SERVER")
    return call("POST", "/runs", json={"request": request.model_dump(mode="json")})["pk"]


def run(request):
    """Submit through the server and wait for the end, showing the run's progress on stderr. Ctrl-C, from the moment
    the command starts, cancels the run (once the server has answered with it) and shows its end; a second Ctrl-C
    stops waiting."""
    pk = None
    with _ctrl_c_noted() as pressed:
        try:
            pk = _post_run(request)
            return _wait(pk, pressed)
        except KeyboardInterrupt:  # the second Ctrl-C
            if pk is None:
                print("stopped; if the server made the run, `mdagent runs` lists it", file=sys.stderr)
            else:
                print(f"stopped waiting; `mdagent show {pk}` shows how run {pk} ended", file=sys.stderr)
            raise


@contextlib.contextmanager
def _ctrl_c_noted():
    """Within: Ctrl-C is counted, not raised (the yielded function gives the count); a second one interrupts. So a
    Ctrl-C that comes while a request is on its way is never lost between two statements."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return
    count = [0]

    def note(signum, frame):
        count[0] += 1
        if count[0] > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield lambda: count[0]
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait(pk: int, pressed) -> Any:
    from rich.console import Console

    cancelled = False
    with Console(stderr=True).status(f"run {pk} on {server_url()} ... (Ctrl-C cancels it)") as shown:
        while True:
            if pressed() and not cancelled:  # as a local run: Ctrl-C cancels it, then its end is shown
                cancelled = True
                try:
                    said = cancel(pk)
                except MDAgentError as exc:  # it ended meanwhile, or the server is gone: say so, and wait on
                    said = str(exc)
                print(f"Ctrl-C: {said} (Ctrl-C again stops waiting)", file=sys.stderr)
            found = get_run(pk)
            if found.verdict != "running":
                return found
            shown.update(f"run {pk} on {server_url()}: {found.state}, {len(found.attempts)} attempt(s) done")
            _sleep_unless(pressed, cancelled)


def _sleep_unless(pressed, cancelled: bool) -> None:
    """Sleep one poll, ended early by a first Ctrl-C (the signal handler does not interrupt time.sleep)."""
    end = time.monotonic() + POLL_SECONDS
    while time.monotonic() < end and (cancelled or not pressed()):
        time.sleep(0.05)


def cancel(pk, by=None) -> str:  # the server knows who asks: the key's user
    return call("POST", f"/runs/{pk}/cancel")["message"]


def get_run(pk, caller=None):  # the caller is the key's user
    return on_server(call("GET", f"/runs/{pk}"))


def on_server(found: dict):
    """A run from the server, its jobs' folders (the server's disk) given as where its files are read instead."""
    from mdagent_hpc.models import Run

    run = Run.model_validate(found)
    run.exit_message = the_admins(run.exit_message)
    for attempt in run.attempts:
        if attempt.job is not None and attempt.job.workdir:
            attempt.job.workdir = f"on the server: `mdagent dashboard` shows run {run.pk}'s files"
        for diagnostic in attempt.diagnostics:
            diagnostic.message = the_admins(diagnostic.message)
    return run


def the_admins(message: str | None) -> str | None:
    """A server-side message about the model's settings, which are the admin's: said so."""
    if message and "MDAGENT_LLM_" in message:
        return f"{message} (on the server: ask your mdagent admin; your own MDAGENT_LLM_* settings are not used there)"
    return message


def list_runs(limit, verdict, site, task_contains, caller=None):

    params = {
        k: v
        for k, v in {"limit": limit, "verdict": verdict, "site": site, "task": task_contains}.items()
        if v is not None
    }
    return [on_server(r) for r in call("GET", "/runs", params=params)]


def find_runs(filters: dict) -> list[dict]:
    return call("POST", "/query", json={"filters": {k: _jsonable(v) for k, v in filters.items()}})


def _jsonable(value):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, tuple):
        return "..".join("" if v is None else str(v) for v in value)  # a (low, high) range as the CLI writes it
    return value


def diff_runs(a, b, caller=None) -> dict:
    return call("GET", "/diff", params={"a": str(a), "b": str(b)})


def plot_run(run, out=None, caller=None) -> Path:
    path = Path(out) if out else Path(f"run-{str(run).replace(':', '-')}.png")
    path.write_bytes(call("GET", f"/runs/{run}/plot", raw=True))
    return path


def index_runs(redo=False, progress=None):  # noqa: ARG001 (the local signature)
    raise MDAgentError("`runs index` is for the server's admin: run it on the server without MDAGENT_SERVER")


def plan_sweep(spec):
    from mdagent_hpc.workflows.sweep_launch import SweepPlan

    return SweepPlan.model_validate(call("POST", "/sweeps/plan", json={"spec": spec.model_dump(mode="json")}))


def sweep(spec, daemon=False):
    done = call("POST", "/sweeps", json={"spec": spec.model_dump(mode="json")})
    found = get_sweep(done["pk"])
    while not daemon and found.verdict == "running":
        time.sleep(POLL_SECONDS)
        found = get_sweep(done["pk"])
    return found


def get_sweep(pk, caller=None):
    from mdagent_hpc.sweeps.results import SweepRun

    return SweepRun.model_validate(call("GET", f"/sweeps/{pk}"))


def list_sweeps(limit=20, caller=None):
    from mdagent_hpc.sweeps.results import SweepRun

    return [SweepRun.model_validate(s) for s in call("GET", "/sweeps", params={"limit": limit})]


def export_sweep(pk, folder=None, caller=None) -> dict[str, str]:
    """The sweep's table and plot from the server, written to `folder` (default: ./sweep-PK)."""
    folder = (Path(folder) if folder else Path(f"sweep-{pk}")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, (name, content) in call("GET", f"/sweeps/{pk}/export").items():
        paths[kind] = str(folder / name)
        (folder / name).write_bytes(base64.b64decode(content))
    return paths
