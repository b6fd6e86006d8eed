"""`mdagent run` and `mdagent demo`: the agent loop, from a task sentence or a request file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mdagent_hpc.cli.main import UserError, emit_json, err, out, status
from mdagent_hpc.cli.options import SITE, json_option

DEMO_TASK = "Heat a small Cu crystal with EAM to 800 K in NVT and report its temperature"
DEMO_ANSWERS = ("wrong-potential.lammps", "lost-atoms.lammps", "good.lammps")


@click.command(short_help="Generate, check, run and evaluate LAMMPS for a task.")
@click.argument("task", required=False)
@click.option(
    "--file",
    "request_file",
    type=click.Path(path_type=Path),
    help="a request file (YAML: task, site, model, loop, limits, answers), e.g. workflows/requests/NAME.yaml",
)
@SITE
@click.option("--daemon", is_flag=True, help="submit to the AiiDA daemon and return at once")
@click.option("--max-attempts", type=click.IntRange(1, 50), help="at most this many attempts  [default: 5]")
@click.option("--model", help="model name (default: MDAGENT_LLM_MODEL, else the first the server lists)")
@json_option("the result")
def run(task, request_file, site_name, daemon, max_attempts, model, as_json) -> None:
    """Generate, check, run and evaluate LAMMPS for TASK (or the request in --file), correcting until it passes."""
    from mdagent_hpc import api

    if (task is None) == (request_file is None):
        raise UserError(
            "give either a TASK in quotes or --file REQUEST.yaml, e.g. "
            '`mdagent run "Melt a 4000-atom Cu crystal with EAM at 2000 K"`'
        )
    request = api.load_request(request_file) if request_file else task
    request = api.make_request(request, site=site_name, model=model, max_attempts=max_attempts)
    launch(request, daemon=daemon, as_json=as_json)


@click.command(short_help="The whole loop with a replayed model (no endpoint).")
@json_option("the result")
def demo(as_json) -> None:
    """The whole loop with a replayed model: a wrong potential file, then lost atoms, then a good script.

    Real AiiDA, real preflight, real LAMMPS in the sandbox, real evaluation; only the model's three answers are
    recorded, served by a local OpenAI-compatible replay server. Use `mdagent run` for a real model.
    """
    from mdagent_hpc import api

    launch(
        api.make_request(DEMO_TASK, answers=demo_answers(), max_attempts=len(DEMO_ANSWERS)),
        daemon=False,
        as_json=as_json,
    )


def demo_answers() -> list[str]:
    """The demo's recorded model answers: the scripts in mdagent_hpc/examples/demo, as fenced code blocks."""
    from importlib import resources

    folder = resources.files("mdagent_hpc") / "examples" / "demo"
    return [f"```lammps\n{(folder / name).read_text()}```\n" for name in DEMO_ANSWERS]


def launch(request, *, daemon: bool, as_json: bool) -> None:
    """Run a request here with live progress (exit 0 only on a pass), or hand it to the daemon."""
    from mdagent_hpc import api
    from mdagent_hpc.cli.render import print_run, run_json

    if daemon:
        with status("submitting to the AiiDA daemon (starting it if needed) ...", quiet=as_json):
            submitted = api.submit(request)
        if as_json:
            emit_json({"pk": submitted.pk, "uuid": submitted.uuid, "state": "submitted"})
        else:
            from mdagent_hpc.api.remote import server_url

            daemon_hint = "it runs on the server" if server_url() else "`mdagent daemon status` shows the daemon"
            out().print(
                f"submitted: pk {submitted.pk}; follow it with `mdagent show {submitted.pk}`; {daemon_hint}",
                highlight=False,
            )
        return
    with status("loading the AiiDA profile ...", quiet=as_json):
        api.load_profile()
    quiet_engine_console()  # stdout carries the result (JSON or text), stderr only what live_reports shows
    if not as_json:
        if request.answers:
            err().print(f"replaying {len(request.answers)} recorded model answer(s)", highlight=False)
        live_reports()
    result = api.run(request)
    if as_json:
        emit_json(run_json(result))
    else:
        print_run(result)
    sys.exit(0 if result.verdict == "passed" else 1)


REPORT = 23  # AiiDA's REPORT log level


def quiet_engine_console() -> None:
    """Silence AiiDA's console echo of its log (reports, `[WARNING] output parser returned exit code<320>`, ...).

    The records still reach the provenance database (`mdagent verdi process report PK`).
    """
    import logging

    for handler in logging.getLogger("aiida").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.CRITICAL + 1)


def live_reports() -> None:
    """Show the agent workflow's own `report` messages as they happen, and nothing else of AiiDA's logging.

    A report reads `[PK|AgentWorkChain|step]: message`; engine lines (`output parser returned exit code<320>`,
    reports of the LAMMPS job workchain) stay in the provenance database, where `verdi process report` shows them.
    """
    import logging
    import re

    own = re.compile(r"\[\d+\|AgentWorkChain\|\w+\]: ")

    class Live(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            match = own.match(message)
            if record.levelno == REPORT and match:
                err().print(f"[dim]•[/] {message[match.end() :]}", highlight=False)

    logger = logging.getLogger("aiida.orm.nodes.process.workflow.workchain.WorkChainNode")
    if not any(type(h).__name__ == "Live" for h in logger.handlers):
        logger.addHandler(Live(level=REPORT))
