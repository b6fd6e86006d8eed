"""From a `models.Request` to a running AgentWorkChain: the one place that builds its inputs.

`get_builder_from_request` resolves the site (its AiiDA computer and code, set up or brought up to date), loads the
LLM settings and fills an AgentWorkChain builder; `run_request` runs it in this process and waits (replaying the
request's recorded answers through a local OpenAI-compatible server when it has some); `submit_request` hands it
to the daemon. A user's mistake (unknown site, no endpoint configured, ...) raises `LaunchError` with one sentence.
"""

from __future__ import annotations

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.models import LimitError, Request

REPLAY_MODEL = "replay"


class LaunchError(MDAgentError):
    """A request that cannot start, in one sentence for the user."""


def get_builder_from_request(request: Request, llm_overrides: dict | None = None, site=None):
    """An AgentWorkChain builder with every input for `request`: its limits are the site's, lowered where the
    request lowers them; `llm_overrides` replace LLM settings, `site` a SiteConfig the caller resolved already."""
    from mdagent_hpc.workflows.agent import AgentWorkChain

    overrides = llm_overrides if llm_overrides is not None else {"model": request.model} if request.model else {}
    builder = AgentWorkChain.get_builder()
    builder._update(_inputs(request, overrides, site))
    return builder


def agent_inputs(request: Request) -> dict:
    """Every AgentWorkChain input for `request`, as a dict (what `get_builder_from_request` fills)."""
    return _inputs(request, {"model": request.model} if request.model else {})


def run_request(request: Request):
    """Run `request` in this process (polling every LOCAL_POLL_SECONDS) and return the finished ProcessNode."""
    from mdagent_hpc.execution.profile import run_here

    if not request.answers:
        return run_here(get_builder_from_request(request))[1]
    from mdagent_hpc.llm.replay import FakeOpenAIServer

    with FakeOpenAIServer(list(request.answers), model=REPLAY_MODEL) as server:
        replayed = {"base_url": server.base_url, "model": REPLAY_MODEL, "max_retries": 0}
        return run_here(get_builder_from_request(request, replayed))[1]


def submit_request(request: Request):
    """Hand `request` to the AiiDA daemon (started with one worker if it is not running); returns at once."""
    if request.answers:
        raise LaunchError(
            "a request with recorded answers runs in this process (run_request or `mdagent run` "
            "without --daemon): the replay server lives only as long as the run"
        )
    builder = get_builder_from_request(request)
    from aiida.engine import submit

    from mdagent_hpc.execution.profile import DaemonError, start_daemon

    try:
        start_daemon()
    except DaemonError as exc:
        raise LaunchError(str(exc)) from None
    return submit(builder)


def _inputs(request: Request, llm_overrides: dict, site=None) -> dict:
    """The AgentWorkChain's inputs; `site` when the caller has resolved it already (a sweep), else looked up."""
    from mdagent_hpc.execution.computers import local_site, workflow_inputs
    from mdagent_hpc.execution.profile import ProfileError
    from mdagent_hpc.execution.registry import find_site
    from mdagent_hpc.execution.site import SiteConfigError
    from mdagent_hpc.llm import LLMError, load_llm_settings

    try:
        if site is None:
            site = local_site() if request.site is None else find_site(request.site)
        limits = request.limits.within(site.limits, site.name) if request.limits is not None else site.limits
        settings = load_llm_settings(llm_overrides)
        _load_profile()
        inputs = workflow_inputs(site)  # the site's computer and code, created or brought up to date
    except (SiteConfigError, LimitError, LLMError, ProfileError) as exc:
        raise LaunchError(str(exc)) from None
    from aiida import orm

    from mdagent_hpc.workflows.generate import STORED_SETTINGS

    inputs["limits"] = orm.Dict(limits.model_dump())
    llm = {k: v for k, v in settings.model_dump(mode="json").items() if k in STORED_SETTINGS and v is not None}
    return {
        **inputs,
        "task": orm.Str(request.task),
        "llm": orm.Dict(llm),
        "loop": orm.Dict(request.loop.model_dump(mode="json")),
    }


def _load_profile() -> None:
    from mdagent_hpc.execution.profile import configure_environment, ensure_profile

    configure_environment()
    from aiida.manage import get_manager

    if get_manager().get_profile() is None:
        ensure_profile()
