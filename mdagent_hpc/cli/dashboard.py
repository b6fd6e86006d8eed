"""`mdagent dashboard`: serve the read-only web dashboard (docs/dashboard.md)."""

from __future__ import annotations

import ipaddress
import socket

import click

from mdagent_hpc.cli.main import UserError, err, status

DEFAULT_PORT = 8766  # not `mdagent server serve`'s 8765: both may run on one machine


@click.command(short_help="A web page of the runs, their attempts, plots and sweeps (read only).")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="0: a free port (printed)",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="listen on an address other machines can reach (the local dashboard has no login yet)",
)
def dashboard(host, port, allow_remote) -> None:
    """Serve the runs (with filters), each run's attempts (script diffs, diagnostics, evaluation, thermo plots),
    sweeps and the work running now, at http://HOST:PORT until Ctrl-C."""
    from mdagent_hpc import api
    from mdagent_hpc.api import remote
    from mdagent_hpc.dashboard.app import LOCAL_NAMES

    through_server = remote.server_url() is not None
    if through_server and not is_loopback(host):
        raise UserError(
            f"with MDAGENT_SERVER set the dashboard holds your key, so it listens on 127.0.0.1 only, not {host}; "
            f"from your laptop use `ssh -L {port or DEFAULT_PORT}:127.0.0.1:{port or DEFAULT_PORT} THIS-HOST`"
        )
    if not (allow_remote or is_loopback(host)):
        raise UserError(
            f"{host} can be reached from other machines and the dashboard has no login yet, so anyone "
            "there could read every run; keep the default 127.0.0.1 (and use `ssh -L "
            f"{port}:127.0.0.1:{port} THIS-HOST` from your laptop), or pass --allow-remote"
        )
    hosts = ["*"] if allow_remote else [*LOCAL_NAMES, host]
    if through_server:  # the pages come from the shared server, with this user's key
        from mdagent_hpc.dashboard.proxy import new_token, proxy_app

        url, key, token = remote.server_url(), remote.api_key(), new_token()
        app = proxy_app(url, key, token, hosts)
        listener = listen(host, port)
        where = f"http://{url_host(host)}:{listener.getsockname()[1]}/?token={token}"
        err().print(
            f"dashboard of [bold]{url}[/] at [bold]{where}[/] (read only; the link holds a secret that lets this "
            "browser in, share it with nobody; Ctrl-C stops it)",
            highlight=False,
            soft_wrap=True,
        )
        serve(app, listener)
        return
    listener = listen(host, port)
    with status("loading the AiiDA profile"):
        api.load_profile()
        from mdagent_hpc.dashboard.app import make_app

        app = make_app(hosts)
    where = f"http://{url_host(host)}:{listener.getsockname()[1]}/"
    err().print(f"dashboard at [bold]{where}[/] (read only; Ctrl-C stops it)", highlight=False)
    serve(app, listener)


def serve(app, listener: socket.socket) -> None:
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[listener])


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, made here so that a busy port is one sentence and port 0 gives the port to print."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another port with --port") from None
    return listener
