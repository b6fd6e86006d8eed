"""Knowledge questions about MD and LAMMPS through the configured endpoint, with this machine's LAMMPS in context."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from mdagent_hpc.errors import MDAgentError

STYLE_KINDS = ("atom", "pair", "bond", "angle", "dihedral", "kspace", "fix", "compute", "minimize", "dump")


def ask(
    question: str,
    *,
    model: str | None = None,
    max_tokens: int = 1024,
    status: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> dict:
    """Answer `question` through the endpoint the agent uses; the prompt carries this LAMMPS's version, packages,
    styles and the potential files for the elements the question names. Returns {"question", "answer", "usage",
    "seconds", "elements", "potentials"}; `status(message)` is around the wait for the model."""
    from mdagent_hpc.evalbench.qa import ask_messages
    from mdagent_hpc.lammps.install import LammpsNotFoundError, capabilities
    from mdagent_hpc.lammps.potentials import find_potentials
    from mdagent_hpc.llm import LLMError, load_llm_settings, task_elements
    from mdagent_hpc.workflows.bench import chat

    if len(question.split()) < 2:
        raise MDAgentError('ask a question in a sentence, e.g. mdagent ask "Which pair styles can model Cu-Ni?"')
    settings = load_llm_settings({"model": model} if model else {})
    try:
        caps = capabilities()
    except LammpsNotFoundError as exc:
        raise MDAgentError(str(exc)) from None
    elements = task_elements(question)
    found = find_potentials(elements)[:20] if elements else []
    potentials = [f"{p.name} ({p.style or 'style unknown'}: {' '.join(p.elements)})" for p in found]
    styles = {kind: list(caps.styles.get(kind, ())) for kind in STYLE_KINDS}
    messages = ask_messages(question, caps.version, list(caps.packages), styles, potentials)
    try:
        with (status or contextlib.nullcontext)(f"asking {settings.model or 'the model'} at {settings.base_url} ..."):
            text, usage, seconds = chat(settings, messages, max_tokens=max_tokens, temperature=0.2)
    except LLMError as exc:
        raise MDAgentError(f"{exc}; `mdagent llm check` tests the endpoint") from None
    return {
        "question": question,
        "answer": text,
        "usage": usage,
        "seconds": seconds,
        "elements": elements,
        "potentials": potentials,
    }
