"""`mdagent verdi ...` and `mdagent daemon ...`: AiiDA's own tools on mdagent's profile."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from mdagent_hpc.cli.main import UserError, emit_json, out, status
from mdagent_hpc.cli.options import json_option


@click.command(
    short_help="AiiDA's verdi on mdagent's profile.",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def verdi(args) -> None:
    """Run AiiDA's `verdi ARGS...` on mdagent's profile, e.g. `mdagent verdi process list -a`.

    Everything after `verdi` goes to verdi unchanged (`mdagent verdi --help` is verdi's help).
    """
    from mdagent_hpc import api

    not_remote("`mdagent verdi`")
    profile = api.load_profile()
    executable = Path(sys.executable).parent / "verdi"
    command = str(executable) if executable.is_file() else shutil.which("verdi")
    if command is None:
        raise UserError("AiiDA's `verdi` command is not installed next to this Python; reinstall mdagent-hpc")
    sys.stdout.flush()
    os.execv(command, [command, "--profile", profile.name, *args])


@click.group(short_help="See, start and stop the AiiDA daemon.")
def daemon() -> None:
    """The AiiDA daemon that `mdagent run --daemon` starts: see it, start it, stop it."""


def not_remote(what: str) -> None:
    """With MDAGENT_SERVER set the profile and its daemon are the server's: one sentence, no traceback."""
    from mdagent_hpc.api.remote import server_url

    if url := server_url():
        raise UserError(
            f"{what} works on the profile here, but MDAGENT_SERVER is set: your runs are on {url}, whose daemon "
            "your admin runs; `mdagent runs` and `mdagent show PK` follow them (unset MDAGENT_SERVER to work here)"
        )


def _client():
    from mdagent_hpc import api

    not_remote("`mdagent daemon`")
    api.load_profile()  # first: importing AiiDA creates its configuration folder
    from aiida.engine.daemon.client import get_daemon_client

    return get_daemon_client()


@daemon.command("status")
@json_option("the status")
def daemon_status(as_json) -> None:
    """Whether the daemon runs, its pid and workers, and the agent runs it holds."""
    client = _client()  # loads the profile before anything of AiiDA is imported
    from aiida.engine.daemon.client import DaemonException

    running = client.is_daemon_running
    info = {
        "profile": client.profile.name,
        "running": running,
        "pid": client.get_daemon_pid() if running else None,
        "workers": None,
        "log": client.daemon_log_file,
    }
    if running:
        try:
            info["workers"] = client.get_number_of_workers()
        except DaemonException:  # circus not answering (yet): the pid is what we know
            info["workers"] = None
    from mdagent_hpc.provenance import EVERYONE
    from mdagent_hpc.provenance.runs import running_nodes

    active = [node.pk for node in running_nodes(EVERYONE)]  # the daemon's view: every user's runs
    info["active_runs"] = sorted(active)
    if as_json:
        emit_json(info)
        return
    if running:
        workers = f", {info['workers']} worker(s)" if info["workers"] is not None else ""
        out().print(
            f"daemon of profile {info['profile']}: [bold green]running[/] (pid {info['pid']}{workers}); "
            f"log {info['log']}",
            highlight=False,
        )
    else:
        out().print(f"daemon of profile {info['profile']}: [bold]stopped[/]", highlight=False)
    if active:
        out().print(
            f"agent runs not finished: {' '.join(map(str, info['active_runs']))} (`mdagent show PK`)", highlight=False
        )


timeout_option = click.option(
    "--timeout", type=click.FloatRange(1, 3600), default=120, show_default=True, help="seconds to wait for the daemon"
)


@daemon.command("start")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="worker processes (default: what `server setup` chose, else 1); a running daemon is set to this many",
)
@timeout_option
def daemon_start(workers, timeout) -> None:
    """Start the daemon (what `mdagent run --daemon` does when it is not running); returns once it answers."""
    client = _client()
    if client.is_daemon_running:
        from mdagent_hpc.execution.profile import daemon_answers

        if daemon_answers(client):
            running = client.get_number_of_workers()
            if workers is not None and workers != running:
                change = client.increase_workers if workers > running else client.decrease_workers
                change(abs(workers - running))
                running = workers
            out().print(f"daemon already running (pid {client.get_daemon_pid()}, {running} worker(s))", highlight=False)
            return
    _start(client, workers or _chosen_workers(), timeout)


def _chosen_workers() -> int:
    from mdagent_hpc.server.deploy import saved

    return saved().get("daemon_workers") or 1


@daemon.command("stop")
@timeout_option
def daemon_stop(timeout) -> None:
    """Stop the daemon; runs it holds wait, and go on when it starts again. Returns once its process is gone."""
    client = _client()
    if not client.is_daemon_running:
        out().print("daemon not running", highlight=False)
        return
    _stop(timeout)
    out().print("daemon stopped", highlight=False)


@daemon.command("restart")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@timeout_option
def daemon_restart(workers, timeout) -> None:
    """Stop the daemon if it runs and start it again (e.g. after upgrading mdagent); returns once it answers."""
    client = _client()
    if client.is_daemon_running:
        _stop(timeout)
    _start(client, workers, timeout)


def _start(client, workers: int, timeout: float) -> None:
    from mdagent_hpc.execution.profile import DaemonError, start_daemon

    try:
        with status("starting the AiiDA daemon ..."):
            start_daemon(workers, timeout=timeout)
    except DaemonError as exc:
        raise UserError(str(exc)) from None
    out().print(f"daemon started (pid {client.get_daemon_pid()}, {workers} worker(s))", highlight=False)


def _stop(timeout: float) -> None:
    from mdagent_hpc.execution.profile import DaemonError, stop_daemon

    try:
        with status("stopping the AiiDA daemon ..."):
            stop_daemon(timeout=timeout)
    except DaemonError as exc:
        raise UserError(str(exc)) from None
