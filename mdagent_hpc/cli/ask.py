"""`mdagent ask`: knowledge questions through the configured endpoint, with this site's LAMMPS facts in context."""

from __future__ import annotations

import click

from mdagent_hpc.cli.main import emit_json, out, status
from mdagent_hpc.cli.options import json_option


@click.command(short_help="Ask an MD or LAMMPS question (this LAMMPS in context).")
@click.argument("question")
@click.option("--model", help="model name (default: MDAGENT_LLM_MODEL, else the first the server lists)")
@click.option("--max-tokens", type=click.IntRange(16, 8192), default=1024, show_default=True)
@json_option("the answer")
def ask(question, model, max_tokens, as_json) -> None:
    """Answer QUESTION through the same endpoint the agent uses; the prompt carries this LAMMPS's version,
    packages, styles and the potential files for the elements the question names."""
    from mdagent_hpc import api

    answer = api.ask(question, model=model, max_tokens=max_tokens, status=lambda message: status(message, as_json))
    if as_json:
        emit_json(answer)
    else:
        out().print(answer["answer"].strip(), highlight=False)
