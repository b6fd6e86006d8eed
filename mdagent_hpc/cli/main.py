"""The `mdagent` group, loading each command's module only when that command runs (as `verdi` does).

Exit codes: 0 clean, 1 the check or run found a failure, 2 bad input or setup (one sentence, no traceback).
Command modules import their heavy dependencies (AiiDA, rich, pydantic models, LAMMPS tools) inside the commands,
so `mdagent --help` and `mdagent check` start fast.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import sys
from pathlib import Path

import click

# name -> "module:attribute" under mdagent_hpc.cli, in the order `mdagent --help` lists them.
COMMANDS = {
    "run": "run:run",
    "demo": "run:demo",
    "sweep": "sweep:sweep",
    "show": "runs:show",
    "runs": "runs:runs",
    "plot": "plot:plot",
    "dashboard": "dashboard:dashboard",
    "check": "check:check",
    "evaluate": "evaluate:evaluate",
    "potentials": "potentials:potentials",
    "site": "site:site",
    "image": "image:image",
    "llm": "llm:llm",
    "gateway": "gateway:gateway",
    "users": "users:users",
    "server": "server:server",
    "cancel": "server:cancel",
    "verdi": "verdi:verdi",
    "daemon": "verdi:daemon",
    "bench": "bench:bench",
    "ask": "ask:ask",
    "export": "export:export",
}


class UserError(click.ClickException):
    """One clear sentence for the user, exit status 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: ARG002 (click's signature)
        err().print(f"[bold red]error:[/] {self.message}", highlight=False)


class LazyGroup(click.Group):
    """A group whose commands live in modules imported only when a command is asked for.

    The API's `MDAgentError` (one sentence about a user mistake) becomes a `UserError` here, once for all commands.
    """

    def main(self, args=None, **kwargs):
        if args is None:  # the real command line (a test runner passes args): end without the module teardown
            atexit.register(_end_now)
            engine_messages_to_log()
        try:
            return super().main(args, **kwargs)
        except SystemExit as exc:
            _exit_status["code"] = exc.code
            raise

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(f"mdagent_hpc.cli.{module}"), attribute)

    def invoke(self, ctx: click.Context):
        from mdagent_hpc.api import MDAgentError

        try:
            return super().invoke(ctx)
        except MDAgentError as exc:
            raise UserError(str(exc)) from None


ENGINE_LOGGERS = ("asyncio", "plumpy", "kiwipy", "aio_pika", "aiormq")
_engine_log: list[bool] = []


def engine_messages_to_log() -> None:
    """The engine's own messages go to MDAGENT_HOME/logs/engine.log, not the user's terminal.

    AiiDA's engine libraries (plumpy, kiwipy, asyncio) log to no handler of their own, so Python printed their
    errors on stderr with tracebacks, and a run or sweep stopped by Ctrl-C or a cancel leaves tasks and sessions
    that complain when collected ("Task was destroyed but it is pending!", "Exception ignored in ...": greenback's
    KeyError, SQLAlchemy). None of it is for the user (the run's state and its reason are in the database, and the
    command says what happened); all of it is kept in the engine log (opened only when something is written).
    """
    import logging
    import traceback

    if _engine_log:  # once per process
        return
    _engine_log.append(True)

    class EngineLog(logging.FileHandler):
        def _open(self):
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            return super()._open()

    from mdagent_hpc.home import mdagent_home

    handler = EngineLog(mdagent_home() / "logs" / "engine.log", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False

    def hook(unraisable) -> None:
        lines = traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
        message = unraisable.err_msg or "Exception ignored in"
        logging.getLogger("asyncio").warning(f"{message}: {unraisable.object!r}\n{''.join(lines)}")

    sys.unraisablehook = hook


_exit_status: dict[str, object] = {"code": 1}  # an exception that is not SystemExit ends with 1, as Python does


def _end_now() -> None:
    """The last exit handler (registered before AiiDA is imported, so it runs after AiiDA's own): flush and end.

    Once AiiDA, SQLAlchemy and pydantic are loaded, the interpreter's teardown of their modules takes half a second
    to seconds after the command is done; nothing in it is needed once the exit handlers have run.
    """
    code = _exit_status["code"]
    if "logging" in sys.modules:  # flush and close log handlers, as the interpreter's own exit would
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`mdagent runs | head`)
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mdagent-hpc")
def main() -> None:
    """Plain-language LAMMPS simulations, generated, checked, run and evaluated by an LLM agent.

    Exit status: 0 clean or passed, 1 the check or run found a failure, 2 bad input or setup.
    `mdagent COMMAND --help` for each command; docs/cli.md for all, docs/python.md for the Python API.
    """
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()  # before anything imports AiiDA, which reads AIIDA_PATH once


# -- output helpers shared by the commands ------------------------------------------------------------------
@functools.cache
def out():
    """The console for results (stdout)."""
    from rich.console import Console

    return Console(soft_wrap=True)


@functools.cache
def err():
    """The console for progress and errors (stderr)."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def status(message: str, quiet: bool = False):
    """A spinner on stderr while something slow runs (nothing when `quiet`, e.g. with --json)."""
    import contextlib

    return contextlib.nullcontext() if quiet else err().status(message, spinner="dots")
