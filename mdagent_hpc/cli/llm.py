"""`mdagent llm`: the language model endpoint."""

from __future__ import annotations

import sys

import click

from mdagent_hpc.cli.main import emit_json, err, out, status
from mdagent_hpc.cli.options import json_option


@click.group(short_help="The LLM endpoint: check it; serve a model as a cluster job.")
def llm() -> None:
    """The LLM endpoint the agent asks for scripts (see docs/llm.md); vLLM servers run as scheduler jobs."""


@llm.command("check")
@click.option("--model", help="the model to try (default: MDAGENT_LLM_MODEL, else the first the server lists)")
@click.option("--timeout", type=click.FloatRange(min=0.1), help="seconds for each request (default: the setting)")
@json_option("the result")
def check(model, timeout, as_json) -> None:
    """Reach the configured endpoint: list its models and ask for one tiny chat completion, each timed."""
    from mdagent_hpc.llm import check_endpoint, load_llm_settings

    settings = load_llm_settings({"model": model, "timeout_s": timeout})
    with status(f"asking {settings.base_url} ...", quiet=as_json):
        result = check_endpoint(settings)
    if as_json:
        emit_json(result)
    else:
        if result["reachable"]:
            out().print(
                f"endpoint {result['base_url']}: {len(result['models'])} model(s) listed in "
                f"{result['models_seconds']:.2f} s: {', '.join(result['models'])}",
                highlight=False,
            )
        if result["ok"]:
            out().print(
                f"model {result['model']}: answered {result['answer']!r} in {result['chat_seconds']:.2f} s",
                highlight=False,
            )
            out().print("[bold green]the endpoint works[/]")
        else:
            err().print(f"[bold red]error:[/] {result['error']}", highlight=False)
    sys.exit(0 if result["ok"] else 2)


# ---------------------------------------------------------------- vLLM as a scheduler job


def _public(endpoint) -> dict:
    data = endpoint.model_dump(exclude={"api_key"})
    data["api_key"] = "***" if endpoint.api_key else ""
    return data


@llm.command("serve", short_help="Start a vLLM server as a job on a site and register it.")
@click.option("--site", "site_name", required=True, help="the site (its config needs a vllm: section)")
@click.option("--model", required=True, help="what `vllm serve` loads: a Hugging Face name or a path on the site")
@click.option("--gpus", type=click.IntRange(min=0), help="GPUs for the job (default: the site's vllm.gpus)")
@click.option("--hours", type=click.FloatRange(min=0.02), help="wall time (default: the site's vllm.hours)")
@click.option("--name", help="the endpoint's name (default: the site's name)")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=1800,
    show_default=True,
    help="seconds to wait for the server to answer",
)
@click.option("--dry-run", is_flag=True, help="print the job script and submit nothing")
@json_option("the endpoint")
def serve(site_name, model, gpus, hours, name, timeout, dry_run, as_json) -> None:
    """Submit a job that runs `vllm serve MODEL` on SITE, wait until it answers, and register it: `mdagent run`
    then uses it without configuration (unless MDAGENT_LLM_BASE_URL or config.yaml name another endpoint)."""
    from mdagent_hpc import api

    job = {"gpus": gpus, "hours": hours, "name": name}
    if dry_run:
        click.echo(api.llm_job_script(site_name, model, **job), nl=False)
        return
    with status(f"submitting vllm serve {model} to {site_name} ...", quiet=as_json):
        endpoint = api.serve_model(site_name, model, **job)
    if not as_json:
        err().print(f"job {endpoint.job_id} submitted to {endpoint.site} (folder {endpoint.workdir})", highlight=False)
    try:
        with status(f"job {endpoint.job_id} submitted", quiet=as_json) as spinner:

            def say(message: str) -> None:
                if spinner is not None:
                    spinner.update(message)

            endpoint = api.wait_for_model(endpoint, timeout, say)
    except KeyboardInterrupt:
        err().print(
            f"interrupted: job {endpoint.job_id} keeps running; `mdagent llm status {endpoint.name}` follows it, "
            f"`mdagent llm stop {endpoint.name}` ends it",
            highlight=False,
        )
        sys.exit(130)
    if as_json:
        emit_json(_public(endpoint))
        return
    via = f" (SSH tunnel to {endpoint.node}:{endpoint.port}, pid {endpoint.tunnel_pid})" if endpoint.tunnel_pid else ""
    out().print(f"endpoint {endpoint.name}: {endpoint.served_model} at {endpoint.base_url}{via}", highlight=False)
    out().print("registered: `mdagent run` uses it; `mdagent llm stop` ends it", highlight=False)


@llm.command("list", short_help="The endpoints `llm serve` started, checked against their jobs.")
@click.option("--all", "show_all", is_flag=True, help="also the ended and stopped ones")
@json_option("the endpoints")
def list_endpoints(show_all, as_json) -> None:
    """The registered endpoints; each live one is checked against its job (an ended job is noticed and said)."""
    from rich.table import Table

    from mdagent_hpc import api

    endpoints = api.list_endpoints(show_all)
    if as_json:
        emit_json([_public(e) for e in endpoints])
        return
    if not endpoints:
        out().print("no endpoints: start one with `mdagent llm serve --site SITE --model MODEL`")
        return
    table = Table("name", "state", "site", "job", "model", "url")
    for e in endpoints:
        table.add_row(e.name, e.state, e.site, e.job_id, e.served_model or e.model, e.base_url or "")
    out().print(table)
    for e in endpoints:
        if e.state == "ended":
            err().print(f"endpoint {e.name}: {e.message.splitlines()[0]}", highlight=False)


@llm.command("status", short_help="One endpoint: its job, its server, its model.")
@click.argument("name", required=False)
@json_option("the endpoint")
def status_endpoint(name, as_json) -> None:
    """NAME's job and server (default: the endpoint runs use). Exit 0 when it answers, 1 when not (yet)."""
    from mdagent_hpc import api

    endpoint = api.endpoint_status(name)
    if as_json:
        emit_json(_public(endpoint))
    else:
        where = f" on {endpoint.node}:{endpoint.port}" if endpoint.node else ""
        out().print(
            f"endpoint {endpoint.name}: {endpoint.state}, job {endpoint.job_id} on site {endpoint.site}{where}",
            highlight=False,
        )
        if endpoint.base_url:
            tunnel = f" (SSH tunnel, pid {endpoint.tunnel_pid})" if endpoint.tunnel_pid else ""
            out().print(
                f"  url {endpoint.base_url}{tunnel}; model {endpoint.served_model or endpoint.model}", highlight=False
            )
        if endpoint.message:
            out().print(f"  {endpoint.message}", highlight=False)
        if endpoint.state == "ended":
            err().print(
                f"start a new one with `mdagent llm serve --site {endpoint.site} --model {endpoint.model}`",
                highlight=False,
            )
    sys.exit(0 if endpoint.state == "ready" else 1)


@llm.command("stop", short_help="Cancel an endpoint's job and close its tunnel.")
@click.argument("name", required=False)
def stop_endpoint(name) -> None:
    """Cancel NAME's job (default: the endpoint runs use), close its SSH tunnel, mark it stopped."""
    from mdagent_hpc import api

    endpoint = api.get_endpoint(name)
    with status(f"cancelling job {endpoint.job_id} on {endpoint.site} ..."):
        endpoint = api.stop_endpoint(endpoint.name)
    out().print(f"endpoint {endpoint.name} stopped (job {endpoint.job_id} on {endpoint.site})", highlight=False)
