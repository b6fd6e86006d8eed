"""`mdagent dashboard`: serve the read-only web dashboard (docs/dashboard.md)."""

from __future__ import annotations

import ipaddress
import socket

import click

from mdagent_hpc.cli.main import UserError, err, status

DEFAULT_PORT = 8765


@click.command(short_help="A web page of the runs, their attempts, plots and sweeps (read only).")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="listen on an address other machines can reach (the dashboard has no login yet)",
)
def dashboard(host, port, allow_remote) -> None:
    """Serve the runs (with filters), each run's attempts (script diffs, diagnostics, evaluation, thermo plots),
    sweeps and the work running now, at http://HOST:PORT until Ctrl-C."""
    if not (allow_remote or is_loopback(host)):
        raise UserError(
            f"{host} can be reached from other machines and the dashboard has no login yet, so anyone "
            "there could read every run; keep the default 127.0.0.1 (and use `ssh -L "
            f"{port}:127.0.0.1:{port} THIS-HOST` from your laptop), or pass --allow-remote"
        )
    check_free(host, port)
    from mdagent_hpc import api, remote
    from mdagent_hpc.dashboard.app import LOCAL_NAMES

    hosts = ["*"] if allow_remote else [*LOCAL_NAMES, host]
    if remote.server_url() is not None:  # the pages come from the shared server, with this user's key
        import uvicorn

        app = remote.dashboard_app(hosts)
        err().print(
            f"dashboard of [bold]{remote.server_url()}[/] at [bold]http://{host}:{port}/[/] "
            "(read only; Ctrl-C stops it)",
            highlight=False,
        )
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return
    with status("loading the AiiDA profile"):
        api.load_profile()
        import uvicorn

        from mdagent_hpc.dashboard.app import make_app

        app = make_app(hosts)
    err().print(f"dashboard at [bold]http://{host}:{port}/[/] (read only; Ctrl-C stops it)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: what it resolves to decides
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            raise UserError(f"cannot resolve the host {host!r}; give an address such as 127.0.0.1") from None


def check_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another port with --port") from None
