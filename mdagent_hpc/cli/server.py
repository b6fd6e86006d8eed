"""`mdagent server setup|serve|backup|restore` and `mdagent cancel`: the faces of server/deploy.py (docs/deploy.md)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mdagent_hpc.cli.main import UserError, emit_json, err, out, status
from mdagent_hpc.settings import env

DEFAULT_PORT = 8765


def _progress(quiet: bool = False):
    return lambda message: status(message, quiet=quiet)


@click.group(short_help="The shared server: setup, serve, backup, restore.")
def server() -> None:
    """The shared deployment: one PostgreSQL + RabbitMQ profile, one daemon, an HTTP API for many users.

    `setup` makes and checks the profile, `serve` serves the API (users point MDAGENT_SERVER at it and use their
    key from `mdagent users add`), `backup` and `restore` save and bring back the database and file repository.
    """


@server.command()
@click.option("--profile", help="the AiiDA profile to make or check (default: server.json's, else mdagent-shared)")
@click.option("--database", help="PostgreSQL database (default: the profile name with _)")
@click.option("--db-host", default="127.0.0.1", show_default=True)
@click.option("--db-port", default=5432, show_default=True, type=int)
@click.option("--db-user", default="postgres", show_default=True)
@click.option("--db-password", default="", envvar="MDAGENT_DB_PASSWORD", help="(or MDAGENT_DB_PASSWORD)")
@click.option("--broker-host", help="RabbitMQ's host (default: the profile's, else 127.0.0.1)")
@click.option("--broker-port", type=int, help="(default: the profile's, else 5672)")
@click.option("--broker-user", help="(default: the profile's, else guest)")
@click.option("--broker-password", envvar="MDAGENT_BROKER_PASSWORD", help="(or MDAGENT_BROKER_PASSWORD)")
@click.option("--broker-vhost", help="the RabbitMQ vhost, made beforehand (default: the profile's, else /)")
@click.option(
    "--accept-consumer-timeout",
    is_flag=True,
    help="go on although RabbitMQ's consumer_timeout may drop runs longer than it",
)
@click.option("--daemon-workers", type=click.IntRange(1, 64), help="AiiDA daemon workers (default: one per CPU)")
@click.option(
    "--concurrent-runs",
    type=click.IntRange(1, 100_000),
    default=300,
    show_default=True,
    help="runs and sweep points in flight at once: sizes the daemon's process slots",
)
@click.option("--json", "as_json", is_flag=True, help="print what was found as JSON")
def setup(as_json, profile, broker_host, broker_port, broker_user, broker_password, broker_vhost, **where) -> None:
    """Make (or check again) the shared profile on PostgreSQL + RabbitMQ and the users tables in the same database,
    and save them in $MDAGENT_HOME/server.json; says what to fix when something is missing. Safe to run again."""
    from mdagent_hpc.server import deploy

    broker = deploy.Broker(broker_host, broker_port, broker_user, broker_password, broker_vhost)
    profile = profile or deploy.saved().get("profile") or deploy.DEFAULT_PROFILE
    made = deploy.setup(profile, broker=broker, progress=_progress(as_json), **where)
    if as_json:
        emit_json(
            {
                "profile": made.profile,
                "users_db": made.users_db.split("@")[-1],
                "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in made.checks],
            }
        )
        return
    for name, ok, detail in made.checks:
        out().print(f"{'[green]ok[/]' if ok else '[yellow]fix[/]'}  {name}: {detail}", highlight=False)
    out().print(
        f"saved in {deploy.settings_file()}; next: `mdagent users add NAME --email ...`, then `mdagent server serve`",
        highlight=False,
    )


@server.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option("--profile", help="the profile `server setup` made (default: the one it saved)")
@click.option("--db", envvar="MDAGENT_USERS_DB", metavar="URL", help="users database (default: the one setup saved)")
@click.option(
    "--group-read/--private",
    default=False,
    show_default=True,
    help="may users read each other's runs (never each other's keys)",
)
@click.option(
    "--request-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="one JSON line per request (default: $MDAGENT_HOME/server/requests.jsonl)",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="server processes (default: one per CPU, as many as PostgreSQL's max_connections allows)",
)
@click.option(
    "--daemon-workers",
    type=click.IntRange(1, 64),
    help="if the daemon is started here (default: what `server setup` chose)",
)
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="serve HTTPS with this certificate")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="... and this private key")
def serve(host, port, profile, db, group_read, request_log, workers, daemon_workers, ssl_certfile, ssl_keyfile) -> None:
    """Serve the API until Ctrl-C; starts the AiiDA daemon if it is not running (it keeps running after)."""
    from mdagent_hpc.home import ensure_home
    from mdagent_hpc.server import app as server_app
    from mdagent_hpc.server.app import ProcessPlan, Server, ServerSettings
    from mdagent_hpc.server.deploy import saved, users_store
    from mdagent_hpc.web import bind

    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise UserError("give both --ssl-certfile and --ssl-keyfile, or neither")
    found = saved()
    profile = profile or env("MDAGENT_AIIDA_PROFILE") or found.get("profile")
    db = db or found.get("users_db")
    if not profile or not db:
        raise UserError("no shared profile yet: run `mdagent server setup` first (or give --profile and --db)")
    os.environ["MDAGENT_AIIDA_PROFILE"] = profile
    os.environ.pop("MDAGENT_SERVER", None)  # this process is the server: its API calls are local
    from mdagent_hpc import api
    from mdagent_hpc.execution.profile import DaemonError, start_daemon

    with status(f"loading profile {profile} and the daemon ...") as shown:
        api.load_profile()
        if shown is not None:
            shown.update("starting the AiiDA daemon if it is not running ...")
        try:
            start_daemon(daemon_workers or found.get("daemon_workers") or 1)
        except DaemonError as exc:
            raise UserError(str(exc)) from None
    request_log = request_log or ensure_home() / "server" / "requests.jsonl"
    try:
        request_log.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make the folder of the request log {request_log} ({exc.strerror})") from None
    settings = ServerSettings(group_read=group_read, request_log=request_log)
    workers = _server_processes(workers, settings, db)
    with users_store(db, pool_size=server_app.USERS_POOL) as users:
        try:
            sock = bind(host, port)
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
            ) from None
        _say_serving(sock, profile, users, group_read, request_log, workers, settings, bool(ssl_certfile), host)
        err().print("  Ctrl-C to stop (the daemon and the runs go on)", highlight=False)
        try:
            app = Server(settings, users)
        except OSError as exc:
            raise UserError(
                f"cannot write the request log {request_log} ({exc.strerror}); give a writable --request-log"
            ) from None
        if workers == 1:
            server_app.serve(app, sock, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
        else:
            app.request_log.close()
            users.close()  # each process opens its own pools; this one only supervises them
            server_app.close_run_db()
            server_app.serve_processes(
                ProcessPlan(users_db=db, settings=settings),
                workers,
                sock,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
            )
    err().print("server stopped", highlight=False)


def _say_serving(sock, profile, users, group_read, request_log, workers, settings, tls: bool, host: str) -> None:
    """What `serve` prints when it starts: where, for whom, its log, its processes, and a warning without TLS."""
    from mdagent_hpc.server import app as server_app
    from mdagent_hpc.server.deploy import loopback

    bound = sock.getsockname()
    scheme = "https" if tls else "http"
    err().print(f"mdagent server on {scheme}://{bound[0]}:{bound[1]} (profile {profile})", highlight=False)
    err().print(
        f"  users: {sum(u.active for u in users.users())} active; runs shared in the group: "
        f"{'yes' if group_read else 'no'}",
        highlight=False,
    )
    err().print(f"  request log: {request_log}", highlight=False)
    err().print(
        f"  {workers} server process(es), each with {server_app.connections_per_process(settings)} database "
        "connections at most",
        highlight=False,
    )
    if not tls and not loopback(host):
        err().print(
            "  [yellow]warning:[/] plain HTTP on a network address: keys cross the network in clear; "
            "use --ssl-certfile/--ssl-keyfile or a TLS proxy in front",
            highlight=False,
        )


def _server_processes(asked: int | None, settings, users_db: str) -> int:
    """The number of server processes: `asked`, else one per CPU; refused in one sentence when PostgreSQL's
    max_connections cannot hold them, or when the users database is SQLite (its locks hold in one process only)."""
    from mdagent_hpc.server import app as server_app

    fit = server_app.processes_that_fit(server_app.max_connections(), settings)
    one_process_only = users_db.startswith("sqlite")
    if asked is None:
        return 1 if one_process_only else max(1, min(os.cpu_count() or 1, fit))
    if asked > 1 and one_process_only:
        raise UserError("more than one server process needs the users database on PostgreSQL, not SQLite")
    if asked > fit:
        raise UserError(
            f"PostgreSQL's max_connections allows {fit} server process(es) here "
            f"({server_app.connections_per_process(settings)} connections each, "
            f"{server_app.RESERVED_CONNECTIONS} kept for the daemon and the admin): give --workers {max(fit, 1)} "
            "or raise max_connections"
        )
    return asked


@click.command(short_help="Stop a run or sweep of yours.")
@click.argument("pk")
def cancel(pk) -> None:
    """Stop run (or sweep) PK: its jobs are cancelled, it ends as killed. Through MDAGENT_SERVER: only your own."""
    from mdagent_hpc import api

    out().print(api.cancel(pk), highlight=False)


@server.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--profile", help="the shared profile (default: the one `server setup` saved)")
@click.option("--keep", type=click.IntRange(1), default=7, show_default=True, help="backups kept in DEST")
def backup(dest, profile, keep) -> None:
    """Back up the shared profile into folder DEST while it runs: the whole PostgreSQL database (runs, users and
    their keys' hashes, usage) and the file repository, with AiiDA's own backup (pg_dump + rsync, incremental)."""
    from mdagent_hpc.server import deploy

    last, size = deploy.backup(dest, profile, keep, progress=_progress())
    out().print(
        f"backup in {last} ({size / 1e6:.1f} MB); `mdagent server restore {dest} --profile NEW` brings it back",
        highlight=False,
    )


@server.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--profile", required=True, help="the new profile to restore into (it must not exist)")
@click.option("--database", help="the new PostgreSQL database (default: the profile name with _; must not exist)")
@click.option("--db-host", default="127.0.0.1", show_default=True)
@click.option("--db-port", default=5432, show_default=True, type=int)
@click.option("--db-user", default="postgres", show_default=True)
@click.option("--db-password", default="", envvar="MDAGENT_DB_PASSWORD", help="(or MDAGENT_DB_PASSWORD)")
def restore(source, profile, **where) -> None:
    """Restore a backup from SOURCE (a folder `server backup` wrote) into a new profile and database, users
    included, on the vhost of the profile backed up. Same pks, same users and keys. The server keeps serving
    the profile server.json names (`mdagent server setup --profile NEW` makes NEW the server's); on a host with
    no server.json yet, the restored profile becomes the server's."""
    from mdagent_hpc.server import deploy

    done = deploy.restore(source, profile, progress=_progress(), **where)
    out().print(f"restored into profile {profile} (database {done.database}, vhost '{done.vhost}')", highlight=False)
    if done.serving:
        out().print("server.json names it now: `mdagent server serve` serves it", highlight=False)
    else:
        out().print(
            f"the server still serves profile {deploy.saved().get('profile')}; to serve the restored copy instead: "
            f"`mdagent server setup --profile {profile}`",
            highlight=False,
        )
