"""`mdagent ask`: knowledge questions through the configured endpoint, with this site's LAMMPS facts in context."""

from __future__ import annotations

import click

from mdagent_hpc.cli.main import UserError, emit_json, out, status
from mdagent_hpc.cli.options import json_option

STYLE_KINDS = ("atom", "pair", "bond", "angle", "dihedral", "kspace", "fix", "compute", "minimize", "dump")


@click.command(short_help="Ask an MD or LAMMPS question (this LAMMPS in context).")
@click.argument("question")
@click.option("--model", help="model name (default: MDAGENT_LLM_MODEL, else the first the server lists)")
@click.option("--max-tokens", type=click.IntRange(16, 8192), default=1024, show_default=True)
@json_option("the answer")
def ask(question, model, max_tokens, as_json) -> None:
    """Answer QUESTION through the same endpoint the agent uses; the prompt carries this LAMMPS's version,
    packages, styles and the potential files for the elements the question names."""
    from mdagent_hpc.evalbench.qa import ask_messages
    from mdagent_hpc.lammps.install import LammpsNotFound, capabilities
    from mdagent_hpc.lammps.potentials import find_potentials
    from mdagent_hpc.llm import LLMError, load_llm_settings, task_elements
    from mdagent_hpc.workflows.bench import chat

    if len(question.split()) < 2:
        raise UserError('ask a question in a sentence, e.g. mdagent ask "Which pair styles can model Cu-Ni?"')
    try:
        settings = load_llm_settings({"model": model} if model else {})
        caps = capabilities()
    except (LLMError, LammpsNotFound) as exc:
        raise UserError(str(exc)) from None
    elements = task_elements(question)
    found = find_potentials(elements)[:20] if elements else []
    potentials = [f"{p.name} ({p.style or 'style unknown'}: {' '.join(p.elements)})" for p in found]
    styles = {kind: list(caps.styles.get(kind, ())) for kind in STYLE_KINDS}
    messages = ask_messages(question, caps.version, list(caps.packages), styles, potentials)
    try:
        with status(f"asking {settings.model or 'the model'} at {settings.base_url} ...", quiet=as_json):
            text, usage, seconds = chat(settings, messages, max_tokens=max_tokens, temperature=0.2)
    except LLMError as exc:
        raise UserError(f"{exc}; `mdagent llm check` tests the endpoint") from None
    if as_json:
        emit_json(
            {
                "question": question,
                "answer": text,
                "usage": usage,
                "seconds": seconds,
                "elements": elements,
                "potentials": potentials,
            }
        )
    else:
        out().print(text.strip(), highlight=False)
