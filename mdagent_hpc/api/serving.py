"""Language models served as scheduler jobs (docs/llm.md, "vLLM as a job"): start `vllm serve` on a site and
register the endpoint, list the registered endpoints, follow one, stop one. The registry and the jobs belong to this
machine's AiiDA profile; only the job script (`llm_job_script`) can be written anywhere."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from mdagent_hpc.api.local_only import refuse_through_server
from mdagent_hpc.errors import MDAgentError

if TYPE_CHECKING:
    from mdagent_hpc.settings.endpoints import Endpoint

SERVER_MODELS = "whose models its admin serves"


def llm_job_script(
    site: str, model: str, *, gpus: int | None = None, hours: float | None = None, name: str | None = None
) -> str:
    """The job script `serve_model` would submit (nothing is submitted). Defaults: the site's `vllm:` section, and
    the site's name for the endpoint."""
    config, name, gpus, hours = _resolve(site, name, gpus, hours)
    from mdagent_hpc.serving.llm_job import submit_script

    return submit_script(config, model, name, gpus, hours)


def serve_model(
    site: str, model: str, *, gpus: int | None = None, hours: float | None = None, name: str | None = None
) -> Endpoint:
    """Submit a job that runs `vllm serve MODEL` on SITE and register it as submitted; `wait_for_model` follows it
    until it answers. `model` is a Hugging Face name or a path on the site."""
    refuse_through_server("serving a model", SERVER_MODELS)
    config, name, gpus, hours = _resolve(site, name, gpus, hours)
    from mdagent_hpc.api.local import load_profile
    from mdagent_hpc.serving.llm_job import submit

    load_profile()
    with _site_answers(config.name):
        return submit(config, model, name, gpus, hours)


def wait_for_model(endpoint: Endpoint, timeout: float = 1800, say: Callable[[str], None] | None = None) -> Endpoint:
    """Follow a submitted endpoint's job until its server answers (then it is registered as ready, and `mdagent
    run` uses it) or the job ends or `timeout` seconds pass (an MDAgentError; the job keeps running). `say` gets
    a line of progress now and then."""
    refuse_through_server("serving a model", SERVER_MODELS)
    from mdagent_hpc.execution.registry import find_site
    from mdagent_hpc.serving.llm_job import wait_ready

    site = find_site(endpoint.site)
    with _site_answers(site.name):
        return wait_ready(site, endpoint, timeout, say or (lambda _: None))


def list_endpoints(everything: bool = False) -> list[Endpoint]:
    """The registered endpoints, each live one checked against its job (an ended job is noticed and recorded);
    with `everything` also the ones that had ended or were stopped before."""
    refuse_through_server("listing served models", SERVER_MODELS)
    from mdagent_hpc.settings.endpoints import LIVE, load_endpoints

    endpoints = []
    for endpoint in load_endpoints().values():
        was_live = endpoint.state in LIVE
        if was_live:
            endpoint = _refresh(endpoint)
        if everything or endpoint.state in LIVE or was_live:
            endpoints.append(endpoint)
    return endpoints


def get_endpoint(name: str | None = None) -> Endpoint:
    """A registered endpoint as recorded (default: the one runs use, the newest live one), not checked."""
    refuse_through_server("reading served models", SERVER_MODELS)
    from mdagent_hpc.settings.endpoints import default_endpoint, load_endpoints

    if name is None:
        endpoint = default_endpoint()
        if endpoint is None:
            raise MDAgentError("no endpoint is running: start one with `mdagent llm serve --site SITE --model MODEL`")
        return endpoint
    endpoints = load_endpoints()
    if name not in endpoints:
        raise MDAgentError(f"no endpoint {name!r} (known: {', '.join(endpoints) or 'none'}); `mdagent llm list`")
    return endpoints[name]


def endpoint_status(name: str | None = None) -> Endpoint:
    """A registered endpoint (default: the one runs use) checked against its job and its server."""
    refuse_through_server("checking a served model", SERVER_MODELS)
    return _refresh(get_endpoint(name))


def stop_endpoint(name: str | None = None) -> Endpoint:
    """Cancel an endpoint's job (default: the one runs use), close its SSH tunnel, record it as stopped."""
    refuse_through_server("stopping a served model", SERVER_MODELS)
    endpoint = get_endpoint(name)
    from mdagent_hpc.api.local import load_profile
    from mdagent_hpc.serving.llm_job import stop

    load_profile()
    with _site_answers(endpoint.site):
        return stop(endpoint)


def _resolve(site: str, name: str | None, gpus: int | None, hours: float | None):
    """The site's config (one with a `vllm:` section and a batch scheduler) and the job's defaults from it."""
    from mdagent_hpc.execution.registry import find_site
    from mdagent_hpc.serving.llm_job import check_site

    config = find_site(site)
    check_site(config)
    gpus = config.vllm.gpus if gpus is None else gpus
    hours = config.vllm.hours if hours is None else hours
    return config, name or config.name, gpus, hours


def _refresh(endpoint: Endpoint) -> Endpoint:
    from mdagent_hpc.api.local import load_profile
    from mdagent_hpc.serving.llm_job import refresh

    load_profile()
    with _site_answers(endpoint.site):
        return refresh(endpoint)


@contextlib.contextmanager
def _site_answers(site: str) -> Iterator[None]:
    """Transport and scheduler errors mean the site did not answer: one sentence naming the site and the next step.
    The user's own mistakes (MDAgentErrors) and Ctrl-C pass through."""
    try:
        yield
    except MDAgentError:
        raise
    except Exception as exc:  # noqa: BLE001 (whatever the transport or the scheduler raised)
        raise MDAgentError(
            f"site {site} did not answer ({type(exc).__name__}: {exc}); `mdagent site test {site}` shows which "
            "stage fails"
        ) from None
