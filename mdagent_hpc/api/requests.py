"""What a caller asks for, resolved once before any backend sees it: a run request, a sweep spec (from a file, a
`SweepSpec`, or a study in plain language that the model turns into one)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mdagent_hpc.errors import MDAgentError

if TYPE_CHECKING:
    from mdagent_hpc.models import Request
    from mdagent_hpc.sweeps.spec import SweepSpec


def make_request(
    task: str | Request,
    *,
    site: str | None = None,
    model: str | None = None,
    max_attempts: int | None = None,
    answers: list[str] | None = None,
) -> Request:
    """A `Request` from a task sentence (or a copy of a request) with the given fields replaced."""
    from pydantic import ValidationError

    from mdagent_hpc.configfile import explain
    from mdagent_hpc.models import Request

    if isinstance(task, Request):
        data = task.model_dump()
    elif isinstance(task, str):
        data = {"task": task}
    else:
        raise MDAgentError(f"a task is a sentence or a Request, not {type(task).__name__}")
    data.update({k: v for k, v in {"site": site, "model": model, "answers": answers}.items() if v is not None})
    if max_attempts is not None:
        data["loop"] = {**dict(data.get("loop") or {}), "max_attempts": max_attempts}
    if isinstance(data.get("task"), str) and len(data["task"].split()) < 3:
        raise MDAgentError(
            "describe the simulation in a sentence (3 words to 4000 characters), e.g. "
            '"Melt a 4000-atom Cu crystal with EAM at 2000 K"'
        )
    try:
        return Request.model_validate(data)
    except ValidationError as exc:
        raise MDAgentError(explain(exc.errors()[0], Request)) from None


def load_request(path: str | Path) -> Request:
    """Read a request file (YAML with the fields of `Request`); a bad file names file:line: key for each problem."""
    from mdagent_hpc.configfile import ConfigFileError, load_config
    from mdagent_hpc.models import Request

    try:
        return load_config(path, Request, "a request file")
    except ConfigFileError as exc:
        raise MDAgentError(str(exc)) from None


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read a sweep spec file (YAML with the fields of `SweepSpec`, e.g. workflows/sweeps/NAME.yaml)."""
    from mdagent_hpc.configfile import load_config
    from mdagent_hpc.sweeps.spec import SweepSpec

    return load_config(path, SweepSpec, "a sweep spec")


def propose_sweep(study: str, *, site: str | None = None, model: str | None = None) -> SweepSpec:
    """Ask the model for the sweep spec of a study in plain language (structured output through the script
    generator's client: its fallbacks, learnt refusals and context budget)."""
    from mdagent_hpc.llm import load_llm_settings
    from mdagent_hpc.llm.structured import ask_structured
    from mdagent_hpc.sweeps.spec import SweepProposal, SweepSpec, proposal_messages

    if not isinstance(study, str) or len(study.split()) < 3:
        raise MDAgentError(
            'describe the study in a sentence, e.g. "thermal expansion of Al with EAM from 300 to '
            '900 K every 100 K at zero pressure"'
        )
    settings = load_llm_settings({"model": model} if model else {})  # LLMError: an MDAgentError
    proposal = ask_structured(settings, proposal_messages(study), SweepProposal, "sweep spec")
    return SweepSpec(**proposal.model_dump(), site=site, model=model, description=study)


def sweep_spec(spec: str | Path | SweepSpec, site: str | None = None) -> SweepSpec:
    """The `SweepSpec` a sweep runs: `spec`, a spec file, or a study in plain language; `site` replaces its site."""
    from mdagent_hpc.sweeps.spec import SweepSpec

    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        spec = load_sweep_spec(spec)
    elif isinstance(spec, str):
        spec = propose_sweep(spec, site=site)
    elif not isinstance(spec, SweepSpec):
        raise MDAgentError(f"a sweep is a SweepSpec, a spec file or a sentence, not {type(spec).__name__}")
    return spec.model_copy(update={"site": site}) if site is not None else spec
