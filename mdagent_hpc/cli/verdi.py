"""`mdagent verdi ...` and `mdagent daemon ...`: AiiDA's own tools on mdagent's profile."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from mdagent_hpc.cli.main import UserError, emit_json, out, status


@click.command(short_help="AiiDA's verdi on mdagent's profile.",
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def verdi(args) -> None:
    """Run AiiDA's `verdi ARGS...` on mdagent's profile, e.g. `mdagent verdi process list -a`.

    Everything after `verdi` goes to verdi unchanged (`mdagent verdi --help` is verdi's help).
    """
    from mdagent_hpc import api

    profile = api.load_profile()
    executable = Path(sys.executable).parent / "verdi"
    command = str(executable) if executable.is_file() else shutil.which("verdi")
    if command is None:
        raise UserError("AiiDA's `verdi` command is not installed next to this Python; reinstall mdagent-hpc")
    sys.stdout.flush()
    os.execv(command, [command, "--profile", profile.name, *args])


DAEMON_TIMEOUT_S = 60  # circus answers slowly on a loaded machine; AiiDA's default is 2 s


@click.group(short_help="See, start and stop the AiiDA daemon.")
def daemon() -> None:
    """The AiiDA daemon that `mdagent run --daemon` starts: see it, start it, stop it."""


def _client():
    from mdagent_hpc import api

    api.load_profile()  # first: importing AiiDA creates its configuration folder
    from aiida.engine.daemon.client import get_daemon_client

    return get_daemon_client()


@daemon.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def daemon_status(as_json) -> None:
    """Whether the daemon runs, its pid and workers, and the agent runs it holds."""
    client = _client()  # loads the profile before anything of AiiDA is imported
    from aiida import orm
    from aiida.engine.daemon.client import DaemonException

    running = client.is_daemon_running
    info = {"profile": client.profile.name, "running": running, "pid": client.get_daemon_pid() if running else None,
            "workers": None, "log": client.daemon_log_file}
    if running:
        try:
            info["workers"] = client.get_number_of_workers()
        except DaemonException:  # circus not answering (yet): the pid is what we know
            info["workers"] = None
    active = orm.QueryBuilder().append(
        orm.WorkChainNode, filters={"attributes.process_label": "AgentWorkChain",
                                    "attributes.process_state": {"in": ["created", "waiting", "running"]}},
        project=["id"]).all(flat=True)
    info["active_runs"] = sorted(active)
    if as_json:
        emit_json(info)
        return
    if running:
        workers = f", {info['workers']} worker(s)" if info["workers"] is not None else ""
        out().print(f"daemon of profile {info['profile']}: [bold green]running[/] (pid {info['pid']}{workers}); "
                    f"log {info['log']}", highlight=False)
    else:
        out().print(f"daemon of profile {info['profile']}: [bold]stopped[/]", highlight=False)
    if active:
        out().print(f"agent runs not finished: {' '.join(map(str, info['active_runs']))} "
                    f"(`mdagent show PK`)", highlight=False)


@daemon.command("start")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
def daemon_start(workers) -> None:
    """Start the daemon (what `mdagent run --daemon` does when it is not running)."""
    client = _client()
    if client.is_daemon_running:
        out().print(f"daemon already running (pid {client.get_daemon_pid()})", highlight=False)
        return
    from aiida.engine.daemon.client import DaemonException

    from mdagent_hpc.execution.profile import start_daemon

    try:
        with status("starting the AiiDA daemon ..."):
            start_daemon(workers, timeout=DAEMON_TIMEOUT_S)
    except DaemonException as exc:
        raise UserError(f"the daemon did not start ({exc}); see {client.daemon_log_file}") from None
    out().print(f"daemon started (pid {client.get_daemon_pid()}, {workers} worker(s))", highlight=False)


@daemon.command("stop")
def daemon_stop() -> None:
    """Stop the daemon; runs it holds wait, and go on when it starts again."""
    client = _client()
    if not client.is_daemon_running:
        out().print("daemon not running", highlight=False)
        return
    from aiida.engine.daemon.client import DaemonException

    try:
        with status("stopping the AiiDA daemon ..."):
            client.stop_daemon(wait=True, timeout=DAEMON_TIMEOUT_S)
    except DaemonException as exc:
        raise UserError(f"the daemon did not stop ({exc}); `mdagent daemon status` shows its pid") from None
    out().print("daemon stopped", highlight=False)
