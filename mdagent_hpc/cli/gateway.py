"""`mdagent gateway`: the authenticated gateway in front of a shared LLM server."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import click

from mdagent_hpc.cli.main import UserError, err, status


@click.group(short_help="The authenticated gateway in front of a shared LLM server.")
def gateway() -> None:
    """The gateway in front of a shared vLLM (or any OpenAI-compatible) server: per-user keys, usage, limits.

    Users are managed with `mdagent users`; see docs/llm.md.
    """


@gateway.command("serve")
@click.option(
    "--upstream",
    required=True,
    envvar="MDAGENT_GATEWAY_UPSTREAM",
    metavar="URL",
    help="the model server, e.g. http://gpu042:8000/v1 (or MDAGENT_GATEWAY_UPSTREAM)",
)
@click.option(
    "--upstream-key",
    envvar="MDAGENT_GATEWAY_UPSTREAM_KEY",
    metavar="KEY",
    help="the server's own --api-key, added by the gateway; better set MDAGENT_GATEWAY_UPSTREAM_KEY, since "
    "a command line is visible to everyone on the machine",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: every interface)")
@click.option("--port", type=click.IntRange(0, 65535), default=8100, show_default=True, help="0: any free port")
@click.option(
    "--db",
    envvar="MDAGENT_USERS_DB",
    metavar="URL",
    help="users database (default: MDAGENT_USERS_DB, else $MDAGENT_HOME/users.db)",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON lines, one per request (default: $MDAGENT_HOME/gateway/audit.jsonl)",
)
@click.option(
    "--max-body-kb",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="largest request body accepted (larger: 413)",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    help="seconds one upstream request may take",
)
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="serve HTTPS with this certificate")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="... and this private key")
def serve(upstream, upstream_key, host, port, db, audit_log, max_body_kb, timeout, ssl_certfile, ssl_keyfile) -> None:
    """Serve the gateway until Ctrl-C: users' keys in, the upstream's key out, only the OpenAI routes forwarded."""
    from mdagent_hpc.cli.users import store
    from mdagent_hpc.home import HomeError, ensure_home
    from mdagent_hpc.serving.gateway.app import Gateway, GatewaySettings, probe_upstream, serve, upstream_base
    from mdagent_hpc.web import bind

    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise UserError("give both --ssl-certfile and --ssl-keyfile, or neither")
    try:
        base = upstream_base(upstream)
        audit_log = audit_log or ensure_home() / "gateway" / "audit.jsonl"
        audit_log.parent.mkdir(parents=True, exist_ok=True)
        if not audit_log.exists():
            os.close(os.open(audit_log, os.O_CREAT | os.O_WRONLY, 0o600))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except (HomeError, OSError) as exc:
        raise UserError(f"cannot write the audit log {audit_log}: {exc}; give another --audit-log") from None
    settings = GatewaySettings(
        upstream=base,
        upstream_key=upstream_key,
        max_body_bytes=max_body_kb * 1024,
        timeout_s=timeout,
        audit_log=audit_log,
    )
    with store(db) as users:
        active = sum(u.active for u in users.users())
        try:
            sock = bind(host, port)
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
            ) from None
        with status(f"asking {base}/v1/models ..."):
            ok, said = probe_upstream(settings)
        scheme = "https" if ssl_certfile else "http"
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        err().print(f"gateway on {scheme}://{shown}:{bound[1]}/v1 -> {base}", highlight=False)
        if ok:
            err().print(f"  upstream answers, models: {said}", highlight=False)
        else:
            err().print(f"  [yellow]warning:[/] {said}; users get HTTP 502 until it answers", highlight=False)
        err().print(f"  users: {active} active in {users.url} (`mdagent users add NAME` gives a key)", highlight=False)
        err().print(f"  audit log: {audit_log}", highlight=False)
        if not ssl_certfile and not _loopback(host):
            err().print(
                "  [yellow]warning:[/] plain HTTP on a network address: keys cross the network in clear; "
                "use --ssl-certfile/--ssl-keyfile or a TLS proxy in front",
                highlight=False,
            )
        err().print("  Ctrl-C to stop", highlight=False)
        serve(Gateway(settings, users), sock, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    err().print("gateway stopped", highlight=False)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
