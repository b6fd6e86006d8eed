"""Endpoints that `mdagent llm serve` started: the registry under MDAGENT_HOME and waiting for a server's health.

The registry is one JSON file (`$MDAGENT_HOME/llm/endpoints.json`, mode 600: it holds each server's API key). The
scheduler side (submitting, polling, cancelling the job) is `serving/llm_job.py`, the SSH tunnel `serving/tunnel.py`;
this module knows only HTTP and the file, so the settings resolver (`settings/resolver.py`) reads it as its last
source, without AiiDA.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.settings import mdagent_home

State = Literal["submitted", "starting", "ready", "ended", "stopped"]
LIVE: tuple[str, ...] = ("submitted", "starting", "ready")


class EndpointError(MDAgentError):
    """A registered endpoint cannot be used; the message says why and what to do."""


class Endpoint(BaseModel):
    """One vLLM server that runs as a scheduler job."""

    model_config = ConfigDict(extra="ignore")

    name: str
    site: str
    model: str  # as asked for (`--model`)
    job_id: str
    workdir: str  # the job's folder on the site
    state: State = "submitted"
    served_model: str | None = None  # the name /v1/models reports
    node: str | None = None
    port: int | None = None
    base_url: str | None = None  # what the client uses: http://node:port/v1, or the tunnel's local end
    api_key: str = ""
    tunnel_pid: int | None = None
    gpus: int = 0
    hours: float = 0
    submitted: str = ""  # ISO time
    ready: str | None = None
    message: str = ""  # why it ended, when it did

    @property
    def root_url(self) -> str | None:
        return self.base_url.removesuffix("/v1") if self.base_url else None

    def describe(self) -> str:
        return f"endpoint {self.name} (job {self.job_id} on site {self.site})"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def registry_file() -> Path:
    return mdagent_home() / "llm" / "endpoints.json"


def load_endpoints() -> dict[str, Endpoint]:
    path = registry_file()
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {name: Endpoint.model_validate(e) for name, e in doc.get("endpoints", {}).items()}
    except (OSError, ValueError) as exc:
        raise EndpointError(f"{path} cannot be read ({exc}); remove it and start the endpoint again") from None


def save_endpoint(endpoint: Endpoint) -> None:
    endpoints = load_endpoints()
    endpoints[endpoint.name] = endpoint
    _write(endpoints)


def forget_endpoint(name: str) -> None:
    endpoints = load_endpoints()
    if endpoints.pop(name, None) is not None:
        _write(endpoints)


def _write(endpoints: dict[str, Endpoint]) -> None:
    path = registry_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"endpoints": {n: e.model_dump() for n, e in endpoints.items()}}, f, indent=1)
    tmp.replace(path)


def default_endpoint() -> Endpoint | None:
    """The endpoint runs use without configuration: the most recently submitted one still live."""
    live = [e for e in load_endpoints().values() if e.state in LIVE]
    return max(live, key=lambda e: e.submitted) if live else None


def healthy(endpoint_or_url: Endpoint | str, timeout: float = 5) -> bool:
    import httpx2

    root = endpoint_or_url.root_url if isinstance(endpoint_or_url, Endpoint) else endpoint_or_url
    if not root:
        return False
    try:
        return httpx2.get(f"{root}/health", timeout=timeout).status_code == 200
    except httpx2.HTTPError:
        return False


def served_model(endpoint: Endpoint, timeout: float = 30) -> dict:
    """The first model of the server's /v1/models (its id and max_model_len)."""
    import httpx2

    answer = httpx2.get(
        f"{endpoint.base_url}/models", headers={"Authorization": f"Bearer {endpoint.api_key}"}, timeout=timeout
    )
    answer.raise_for_status()
    return answer.json()["data"][0]


def wait_healthy(
    root_url: str,
    timeout: float,
    still_alive: Callable[[], str | None] = lambda: None,
    tick: Callable[[float], None] = lambda _: None,
    interval: float = 2,
) -> None:
    """Poll `root_url`/health until it answers 200. `still_alive()` returns why the server cannot come any more
    (its job ended) or None; `tick(seconds waited)` reports progress. Raise EndpointError on either failure."""
    start = time.monotonic()
    while True:
        if healthy(root_url):
            return
        waited = time.monotonic() - start
        if (gone := still_alive()) is not None:
            raise EndpointError(gone)
        if waited > timeout:
            raise EndpointError(f"{root_url} was not healthy after {timeout:.0f} s")
        tick(waited)
        time.sleep(interval)


def registered_key(base_url: str) -> str | None:
    """The API key of the live registered endpoint at `base_url` (a run's stored settings hold the URL, never the
    key), or None."""
    url = base_url.rstrip("/")
    for endpoint in load_endpoints().values():
        if endpoint.state in LIVE and endpoint.base_url and url in (endpoint.base_url, endpoint.root_url):
            return endpoint.api_key
    return None


def registered_settings(
    wait: bool = True, timeout: float = 1800, say: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
) -> tuple[dict[str, str], str] | None:
    """LLM settings (base_url, model, api_key) of the default registered endpoint, and where they came from; None
    when none is registered. A model that is still loading is waited for (a message every 30 s) when `wait`."""
    endpoint = default_endpoint()
    if endpoint is None:
        return None
    source = f"{endpoint.describe()}, registered by `mdagent llm serve`"
    if endpoint.state != "ready":
        if not wait:
            raise EndpointError(f"{endpoint.describe()} is still starting: wait, or see `mdagent llm status`")
        say(f"{endpoint.describe()}: the model is still loading; waiting for it (`mdagent llm status` shows more)")
        endpoint = _wait_registered_ready(endpoint.name, timeout, say)
    elif not healthy(endpoint):
        raise EndpointError(
            f"{endpoint.describe()} does not answer at {endpoint.base_url}; its job may have ended: "
            "`mdagent llm status` checks, `mdagent llm serve` starts a new one"
        )
    return {
        "base_url": endpoint.base_url,
        "model": endpoint.served_model or endpoint.model,
        "api_key": endpoint.api_key,
    }, source


def _wait_registered_ready(name: str, timeout: float, say: Callable[[str], None]) -> Endpoint:
    # `mdagent llm serve` (still running, or --no-wait with `llm status`) moves the entry to ready or ended.
    start = last = time.monotonic()
    while time.monotonic() - start < timeout:
        endpoint = load_endpoints().get(name)
        if endpoint is None or endpoint.state in ("ended", "stopped"):
            why = f": {endpoint.message}" if endpoint and endpoint.message else ""
            raise EndpointError(f"endpoint {name} ended before its model was loaded{why}; `mdagent llm status`")
        if endpoint.base_url and healthy(endpoint):
            return endpoint if endpoint.state == "ready" else endpoint.model_copy(update={"state": "ready"})
        if time.monotonic() - last >= 30:
            say(f"still waiting for {endpoint.describe()} ({time.monotonic() - start:.0f} s)")
            last = time.monotonic()
        time.sleep(2)
    raise EndpointError(f"endpoint {name} was not ready after {timeout:.0f} s; `mdagent llm status {name}`")
