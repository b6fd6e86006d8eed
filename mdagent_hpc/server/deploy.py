"""The shared deployment (docs/deploy.md): the profile on PostgreSQL + RabbitMQ and what `server setup` saved
(server.json), the users store, backup and restore. `mdagent server ...` and `mdagent users ...` are thin faces
over these functions; every error is a `DeployError`, one sentence.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from mdagent_hpc.api import MDAgentError

DEFAULT_PROFILE = "mdagent-shared"
RESERVED = frozenset({"mdagent@localhost"})  # the default user `server setup` gives the shared profile: its own work

Progress = Callable[[str], AbstractContextManager]  # shows a message while a slow step runs


def quietly(_message: str) -> AbstractContextManager:
    return nullcontext()


class DeployError(MDAgentError):
    """Something of the deployment is missing or refused; the message says what to do."""


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


def users_db_url(user: str, password: str, host: str, port: int, database: str) -> str:
    return (
        f"postgresql://{quote(user, safe='')}{':' + quote(password, safe='') if password else ''}@"
        f"{host}:{port}/{database}"
    )


# -- the users store ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def users_store(url: str | None):
    """The users store; its errors (and an unusable MDAGENT_HOME) are a DeployError, one sentence."""
    from mdagent_hpc.accounts.store import AccountsError, Store
    from mdagent_hpc.home import HomeError

    opened = None
    try:
        opened = Store(url or shared_users_db())
        yield opened
    except (AccountsError, HomeError) as exc:
        raise DeployError(str(exc)) from None
    finally:
        if opened is not None:
            opened.close()


def shared_users_db() -> str | None:
    """The users database `mdagent server setup` chose (the shared profile's PostgreSQL), if it ran here."""
    return saved().get("users_db")


# -- setup -------------------------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """What `setup` made and found: each check a (name, ok, detail)."""

    profile: str
    users_db: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)


def setup(
    profile: str,
    *,
    database: str | None,
    db_host: str,
    db_port: int,
    db_user: str,
    db_password: str,
    broker_host: str,
    broker_port: int,
    broker_user: str,
    broker_password: str,
    progress: Progress = quietly,
) -> Setup:
    """Make (or check) the shared profile on PostgreSQL + RabbitMQ, the users tables in the same database, and
    say what to fix when something is missing. Safe to run again."""
    from mdagent_hpc.execution.profile import ProfileError, ensure_postgres_profile

    checks: list[tuple[str, bool, str]] = []
    try:
        with progress(f"checking PostgreSQL at {db_host}:{db_port} and RabbitMQ at {broker_host}:{broker_port} ..."):
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
        raise DeployError(str(exc)) from None
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
    users_db = users_db_url(
        db_user, db_password, storage["database_hostname"], storage["database_port"], storage["database_name"]
    )
    with users_store(users_db) as users:
        checks.append(("users", True, f"{sum(u.active for u in users.users())} active in the same database"))
    os.environ["MDAGENT_AIIDA_PROFILE"] = profile
    from mdagent_hpc import api

    with progress("loading the profile (the local computer and LAMMPS code) ..."):
        api.load_profile()
    checks.append(("profile", True, f"{profile} loads; `local` computer and LAMMPS code ready"))
    save_settings({"profile": profile, "users_db": users_db})
    return Setup(profile, users_db, checks)


def consumer_timeout(host: str) -> str | None:
    """RabbitMQ's consumer_timeout (ms or 'undefined') when the broker runs here; None when it cannot be read."""
    if not loopback(host) or not shutil.which("rabbitmqctl"):
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


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def profile_name(profile: str | None) -> str:
    from mdagent_hpc.settings import env

    name = profile or env("MDAGENT_AIIDA_PROFILE") or saved().get("profile")
    if not name:
        raise DeployError("no shared profile yet: run `mdagent server setup` first (or give --profile)")
    return name


# -- backup and restore ------------------------------------------------------------------------------------------------
def backup(dest: Path, profile: str | None, keep: int, progress: Progress = quietly) -> tuple[Path, int]:
    """Back up the shared profile into folder `dest` while it runs: the whole PostgreSQL database (runs, users and
    their keys' hashes, usage) and the file repository, with AiiDA's own backup (pg_dump + rsync, incremental).
    Returns the backup's folder and its size in bytes."""
    os.environ["MDAGENT_AIIDA_PROFILE"] = profile_name(profile)
    os.environ.pop("MDAGENT_SERVER", None)
    from mdagent_hpc import api

    for exe in ("pg_dump", "rsync"):
        if not shutil.which(exe):
            raise DeployError(f"`{exe}` is not installed here; install it (Debian: postgresql-client, rsync) and retry")
    api.load_profile()
    from aiida.manage import get_manager

    dest.mkdir(parents=True, exist_ok=True)
    with progress(f"backing up profile {os.environ['MDAGENT_AIIDA_PROFILE']} into {dest} ..."):
        try:
            get_manager().get_profile_storage().backup(str(dest), keep=keep)
        except Exception as exc:  # noqa: BLE001 (aiida raises BackupError and others: one sentence)
            raise DeployError(f"the backup failed: {exc}; check that DEST is writable and PostgreSQL answers") from None
    last = (dest / "last-backup").resolve()
    size = sum(p.stat().st_size for p in last.rglob("*") if p.is_file())
    return last, size


def restore(
    source: Path,
    profile: str,
    *,
    database: str | None,
    db_host: str,
    db_port: int,
    db_user: str,
    db_password: str,
    progress: Progress = quietly,
) -> str:
    """Restore a backup from `source` (a folder `server backup` wrote) into a new profile and database, users
    included, and point server.json at it. Same pks, same users and keys. Returns the database's name."""
    import psycopg

    from mdagent_hpc.home import ensure_home

    folder = source / "last-backup" if (source / "last-backup").exists() else source
    dump, container = folder / "db.psql", folder / "container"
    if not dump.is_file() or not container.is_dir():
        raise DeployError(
            f"{source} is not a backup (no db.psql and container/ in {folder}); give the folder "
            "`mdagent server backup` wrote"
        )
    if not shutil.which("psql"):
        raise DeployError("`psql` is not installed here; install it (Debian: postgresql-client) and retry")
    from aiida.manage.configuration import get_config

    if profile in get_config(create=True).profile_names:
        raise DeployError(f"profile {profile} exists already; restore into a new one (--profile NEW)")
    database = database or profile.replace("-", "_")
    where = {"host": db_host, "port": db_port, "user": db_user, "password": db_password}
    try:
        with psycopg.connect(**where, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                raise DeployError(f"database {database} exists already on {db_host}:{db_port}; give a new --database")
            conn.execute(
                psycopg.sql.SQL(
                    "CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' TEMPLATE template0"
                ).format(psycopg.sql.Identifier(database))
            )
    except psycopg.OperationalError as exc:
        raise DeployError(
            f"PostgreSQL at {db_host}:{db_port} does not answer or refuses {db_user} ({exc}); start it "
            "or give the right --db-host/--db-port/--db-user"
        ) from None
    with progress(f"loading {dump} into database {database} ..."):
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
        raise DeployError(
            f"psql could not load {dump}: {loaded.stderr.strip().splitlines()[-1:]}; database {database} "
            "is left for inspection (drop it before retrying)"
        )
    target = ensure_home() / "repositories" / profile / "container"
    with progress(f"copying the file repository to {target} ..."):
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
        raise DeployError(
            "RabbitMQ does not answer (or refuses guest): start it (`service rabbitmq-server start`); "
            f"then retry with a new --database (drop {database} first)"
        ) from None
    save_settings({"profile": profile, "users_db": users_db_url(db_user, db_password, db_host, db_port, database)})
    return database


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
