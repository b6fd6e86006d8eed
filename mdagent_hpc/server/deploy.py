"""`mdagent server setup|serve|backup|restore` and `mdagent cancel`: the shared deployment (docs/deploy.md)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import click

from mdagent_hpc.cli.main import UserError, emit_json, err, out, status
from mdagent_hpc.settings import env

DEFAULT_PROFILE = "mdagent-shared"
DEFAULT_PORT = 8765


def settings_file() -> Path:
    from mdagent_hpc.home import ensure_home

    return ensure_home() / "server.json"


def save_settings(settings: dict) -> None:
    """server.json (it holds the database password): mode 600 from its creation, never readable by others."""
    path = settings_file()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file made earlier with looser permissions
    with os.fdopen(fd, "w") as out_file:
        out_file.write(json.dumps(settings, indent=2) + "\n")


def saved() -> dict:
    from mdagent_hpc.settings.resolver import saved_server_settings

    return saved_server_settings()


@click.group(short_help="The shared server: setup, serve, backup, restore.")
def server() -> None:
    """The shared deployment: one PostgreSQL + RabbitMQ profile, one daemon, an HTTP API for many users.

    `setup` makes and checks the profile, `serve` serves the API (users point MDAGENT_SERVER at it and use their
    key from `mdagent users add`), `backup` and `restore` save and bring back the database and file repository.
    """


@server.command()
@click.option("--profile", default=DEFAULT_PROFILE, show_default=True, help="the AiiDA profile to make or check")
@click.option("--database", help="PostgreSQL database (default: the profile name with _)")
@click.option("--db-host", default="127.0.0.1", show_default=True)
@click.option("--db-port", default=5432, show_default=True, type=int)
@click.option("--db-user", default="postgres", show_default=True)
@click.option("--db-password", default="", envvar="MDAGENT_DB_PASSWORD", help="(or MDAGENT_DB_PASSWORD)")
@click.option("--broker-host", default="127.0.0.1", show_default=True)
@click.option("--broker-port", default=5672, show_default=True, type=int)
@click.option("--broker-user", default="guest", show_default=True)
@click.option("--broker-password", default="guest", envvar="MDAGENT_BROKER_PASSWORD", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print what was found as JSON")
def setup(
    profile,
    database,
    db_host,
    db_port,
    db_user,
    db_password,
    broker_host,
    broker_port,
    broker_user,
    broker_password,
    as_json,
) -> None:
    """Make (or check) the shared profile on PostgreSQL + RabbitMQ, the users tables in the same database, and
    say what to fix when something is missing. Safe to run again."""
    from mdagent_hpc.execution.profile import ProfileError, ensure_postgres_profile

    checks: list[tuple[str, bool, str]] = []
    try:
        with status(
            f"checking PostgreSQL at {db_host}:{db_port} and RabbitMQ at {broker_host}:{broker_port} ...", quiet=as_json
        ):
            made = ensure_postgres_profile(
                profile,
                database=database,
                host=db_host,
                port=db_port,
                user=db_user,
                password=db_password,
                broker_host=broker_host,
                broker_port=broker_port,
                broker_user=broker_user,
                broker_password=broker_password,
            )
    except ProfileError as exc:
        raise UserError(str(exc)) from None
    storage = made.storage_config
    checks.append(
        (
            "PostgreSQL",
            True,
            f"database {storage['database_name']} on {storage['database_hostname']}:"
            f"{storage['database_port']} (C.UTF-8 collation: no en_US locale needed)",
        )
    )
    broker = made.process_control_config
    checks.append(
        (
            "RabbitMQ",
            True,
            f"{broker.get('broker_host')}:{broker.get('broker_port')} vhost "
            f"'{broker.get('broker_virtual_host') or '/'}'",
        )
    )
    timeout = consumer_timeout(broker.get("broker_host", broker_host))
    fix = (
        "set it to undefined: add `[{rabbit, [{consumer_timeout, undefined}]}].` to "
        "/etc/rabbitmq/advanced.config and restart RabbitMQ (or, until the next restart: "
        "`rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, undefined).'`)"
    )
    if timeout is None:
        checks.append(("consumer_timeout", True, "cannot read it from here (remote broker): " + fix))
    else:
        ok = timeout == "undefined"
        checks.append(
            (
                "consumer_timeout",
                ok,
                "undefined" if ok else f"{timeout} ms: runs longer than that are dropped by RabbitMQ; " + fix,
            )
        )
    from aiida.manage.configuration import get_config

    config = get_config()
    config.set_option("warnings.rabbitmq_version", False, scope=profile)
    config.store()
    users_db = (
        f"postgresql://{quote(db_user, safe='')}{':' + quote(db_password, safe='') if db_password else ''}@"
        f"{storage['database_hostname']}:{storage['database_port']}/{storage['database_name']}"
    )
    from mdagent_hpc.cli.users import store

    with store(users_db) as users:
        checks.append(("users", True, f"{sum(u.active for u in users.users())} active in the same database"))
    os.environ["MDAGENT_AIIDA_PROFILE"] = profile
    from mdagent_hpc import api

    with status("loading the profile (the local computer and LAMMPS code) ...", quiet=as_json):
        api.load_profile()
    checks.append(("profile", True, f"{profile} loads; `local` computer and LAMMPS code ready"))
    save_settings({"profile": profile, "users_db": users_db})
    if as_json:
        emit_json(
            {
                "profile": profile,
                "users_db": users_db.split("@")[-1],
                "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks],
            }
        )
        return
    for name, ok, detail in checks:
        out().print(f"{'[green]ok[/]' if ok else '[yellow]fix[/]'}  {name}: {detail}", highlight=False)
    out().print(
        f"saved in {settings_file()}; next: `mdagent users add NAME --email ...`, then `mdagent server serve`",
        highlight=False,
    )


def consumer_timeout(host: str) -> str | None:
    """RabbitMQ's consumer_timeout (ms or 'undefined') when the broker runs here; None when it cannot be read."""
    if not _loopback(host) or not shutil.which("rabbitmqctl"):
        return None
    try:
        said = subprocess.run(
            ["rabbitmqctl", "eval", "application:get_env(rabbit, consumer_timeout)."],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if said == "undefined":
        return "undefined"
    return said.removeprefix("{ok,").removesuffix("}") or None


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
@click.option("--workers", default=1, show_default=True, type=int, help="daemon workers, if it is started here")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="serve HTTPS with this certificate")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="... and this private key")
def serve(host, port, profile, db, group_read, request_log, workers, ssl_certfile, ssl_keyfile) -> None:
    """Serve the API until Ctrl-C; starts the AiiDA daemon if it is not running (it keeps running after)."""
    from mdagent_hpc.cli.users import store
    from mdagent_hpc.serving.gateway.app import bind
    from mdagent_hpc.home import ensure_home
    from mdagent_hpc.server.app import Server, ServerSettings
    from mdagent_hpc.server.app import serve as run_server

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
            start_daemon(workers)
        except DaemonError as exc:
            raise UserError(str(exc)) from None
    request_log = request_log or ensure_home() / "server" / "requests.jsonl"
    try:
        request_log.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make the folder of the request log {request_log} ({exc.strerror})") from None
    with store(db) as users:
        try:
            sock = bind(host, port)
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
            ) from None
        bound = sock.getsockname()
        scheme = "https" if ssl_certfile else "http"
        err().print(f"mdagent server on {scheme}://{bound[0]}:{bound[1]} (profile {profile})", highlight=False)
        err().print(
            f"  users: {sum(u.active for u in users.users())} active; runs shared in the group: "
            f"{'yes' if group_read else 'no'}",
            highlight=False,
        )
        err().print(f"  request log: {request_log}", highlight=False)
        if not ssl_certfile and not _loopback(host):
            err().print(
                "  [yellow]warning:[/] plain HTTP on a network address: keys cross the network in clear; "
                "use --ssl-certfile/--ssl-keyfile or a TLS proxy in front",
                highlight=False,
            )
        err().print("  Ctrl-C to stop (the daemon and the runs go on)", highlight=False)
        settings = ServerSettings(group_read=group_read, request_log=request_log)
        try:
            app = Server(settings, users)
        except OSError as exc:
            raise UserError(
                f"cannot write the request log {request_log} ({exc.strerror}); give a writable --request-log"
            ) from None
        run_server(app, sock, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    err().print("server stopped", highlight=False)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@click.command(short_help="Stop a run or sweep of yours.")
@click.argument("pk")
def cancel(pk) -> None:
    """Stop run (or sweep) PK: its jobs are cancelled, it ends as killed. Through MDAGENT_SERVER: only your own."""
    from mdagent_hpc import api

    out().print(api.cancel(pk), highlight=False)


def _profile_name(profile: str | None) -> str:
    name = profile or env("MDAGENT_AIIDA_PROFILE") or saved().get("profile")
    if not name:
        raise UserError("no shared profile yet: run `mdagent server setup` first (or give --profile)")
    return name


@server.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--profile", help="the shared profile (default: the one `server setup` saved)")
@click.option("--keep", type=click.IntRange(1), default=7, show_default=True, help="backups kept in DEST")
def backup(dest, profile, keep) -> None:
    """Back up the shared profile into folder DEST while it runs: the whole PostgreSQL database (runs, users and
    their keys' hashes, usage) and the file repository, with AiiDA's own backup (pg_dump + rsync, incremental)."""
    os.environ["MDAGENT_AIIDA_PROFILE"] = _profile_name(profile)
    os.environ.pop("MDAGENT_SERVER", None)
    from mdagent_hpc import api

    for exe in ("pg_dump", "rsync"):
        if not shutil.which(exe):
            raise UserError(f"`{exe}` is not installed here; install it (Debian: postgresql-client, rsync) and retry")
    api.load_profile()
    from aiida.manage import get_manager

    dest.mkdir(parents=True, exist_ok=True)
    with status(f"backing up profile {os.environ['MDAGENT_AIIDA_PROFILE']} into {dest} ..."):
        try:
            get_manager().get_profile_storage().backup(str(dest), keep=keep)
        except Exception as exc:  # noqa: BLE001 (aiida raises BackupError and others: one sentence)
            raise UserError(f"the backup failed: {exc}; check that DEST is writable and PostgreSQL answers") from None
    last = (dest / "last-backup").resolve()
    size = sum(p.stat().st_size for p in last.rglob("*") if p.is_file())
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
def restore(source, profile, database, db_host, db_port, db_user, db_password) -> None:
    """Restore a backup from SOURCE (a folder `server backup` wrote) into a new profile and database, users
    included; then `mdagent server serve` uses it. Same pks, same users and keys."""
    import psycopg

    from mdagent_hpc.home import ensure_home

    folder = source / "last-backup" if (source / "last-backup").exists() else source
    dump, container = folder / "db.psql", folder / "container"
    if not dump.is_file() or not container.is_dir():
        raise UserError(
            f"{source} is not a backup (no db.psql and container/ in {folder}); give the folder "
            "`mdagent server backup` wrote"
        )
    if not shutil.which("psql"):
        raise UserError("`psql` is not installed here; install it (Debian: postgresql-client) and retry")
    from aiida.manage.configuration import get_config

    if profile in get_config(create=True).profile_names:
        raise UserError(f"profile {profile} exists already; restore into a new one (--profile NEW)")
    database = database or profile.replace("-", "_")
    where = {"host": db_host, "port": db_port, "user": db_user, "password": db_password}
    try:
        with psycopg.connect(**where, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                raise UserError(f"database {database} exists already on {db_host}:{db_port}; give a new --database")
            conn.execute(
                psycopg.sql.SQL(
                    "CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' TEMPLATE template0"
                ).format(psycopg.sql.Identifier(database))
            )
    except psycopg.OperationalError as exc:
        raise UserError(
            f"PostgreSQL at {db_host}:{db_port} does not answer or refuses {db_user} ({exc}); start it "
            "or give the right --db-host/--db-port/--db-user"
        ) from None
    with status(f"loading {dump} into database {database} ..."):
        loaded = subprocess.run(
            [
                "psql",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                db_host,
                "-p",
                str(db_port),
                "-U",
                db_user,
                "-d",
                database,
                "-f",
                str(dump),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": db_password},
        )
    if loaded.returncode != 0:
        raise UserError(
            f"psql could not load {dump}: {loaded.stderr.strip().splitlines()[-1:]}; database {database} "
            "is left for inspection (drop it before retrying)"
        )
    target = ensure_home() / "repositories" / profile / "container"
    with status(f"copying the file repository to {target} ..."):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(container, target)
    try:
        make_profile(
            profile,
            {
                "database_engine": "postgresql_psycopg",
                "database_hostname": db_host,
                "database_port": db_port,
                "database_username": db_user,
                "database_password": db_password,
                "database_name": database,
                "repository_uri": f"file://{target.parent}",
            },
        )
    except ConnectionError:
        raise UserError(
            "RabbitMQ does not answer (or refuses guest): start it (`service rabbitmq-server start`); "
            f"then retry with a new --database (drop {database} first)"
        ) from None
    users_db = (
        f"postgresql://{quote(db_user, safe='')}{':' + quote(db_password, safe='') if db_password else ''}@"
        f"{db_host}:{db_port}/{database}"
    )
    save_settings({"profile": profile, "users_db": users_db})
    out().print(
        f"restored into profile {profile} (database {database}); `mdagent server serve` serves it", highlight=False
    )


def make_profile(name: str, storage: dict) -> None:
    """A profile on a database and repository restored as they were: AiiDA's `create_profile` without the user
    it would add (the restored database has its users), then brought to the current schema."""
    from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config
    from aiida.manage.configuration import get_config

    config = get_config(create=True)
    profile = config.create_profile(
        name=name,
        storage_backend="core.psql_dos",
        storage_config=storage,
        broker_backend="core.rabbitmq",
        broker_config=detect_rabbitmq_config(),
    )
    profile.default_user_email = "mdagent@localhost"
    config.update_profile(profile)
    config.set_option("runner.poll.interval", 1, scope=name)
    config.set_option("warnings.rabbitmq_version", False, scope=name)
    config.store()
