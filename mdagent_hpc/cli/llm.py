"""`mdagent llm`: the language model endpoint."""

from __future__ import annotations

import sys

import click

from mdagent_hpc.cli.main import UserError, emit_json, err, out, status


@click.group(short_help="The LLM endpoint: check that it answers.")
def llm() -> None:
    """The LLM endpoint the agent asks for scripts (see docs/llm.md)."""


@llm.command("check")
@click.option("--model", help="the model to try (default: MDAGENT_LLM_MODEL, else the first the server lists)")
@click.option("--timeout", type=click.FloatRange(min=0.1), help="seconds for each request (default: the setting)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def check(model, timeout, as_json) -> None:
    """Reach the configured endpoint: list its models and ask for one tiny chat completion, each timed."""
    from mdagent_hpc.llm import LLMError, check_endpoint, load_llm_settings

    try:
        settings = load_llm_settings({"model": model, "timeout_s": timeout})
    except LLMError as exc:
        raise UserError(str(exc)) from None
    with status(f"asking {settings.base_url} ...", quiet=as_json):
        result = check_endpoint(settings)
    if as_json:
        emit_json(result)
    else:
        if result["reachable"]:
            out().print(f"endpoint {result['base_url']}: {len(result['models'])} model(s) listed in "
                        f"{result['models_seconds']:.2f} s: {', '.join(result['models'])}", highlight=False)
        if result["ok"]:
            out().print(f"model {result['model']}: answered {result['answer']!r} in {result['chat_seconds']:.2f} s",
                        highlight=False)
            out().print("[bold green]the endpoint works[/]")
        else:
            err().print(f"[bold red]error:[/] {result['error']}", highlight=False)
    sys.exit(0 if result["ok"] else 2)
