"""The shared deployment (docs/deploy.md): the profile on PostgreSQL + RabbitMQ and what `server setup` saved
(server.json), the users store, backup and restore. `mdagent server ...` and `mdagent users ...` are thin faces
over these functions; every error is a `DeployError`, one sentence.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from mdagent_hpc.errors import MDAgentError

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
    from mdagent_hpc.settings import saved_server_settings

    return saved_server_settings()


def users_db_url(user: str, password: str, host: str, port: int, database: str) -> str:
    return (
        f"postgresql://{quote(user, safe='')}{':' + quote(password, safe='') if password else ''}@"
        f"{host}:{port}/{database}"
    )


# -- the users store ---------------------------------------------------------------------------------------------------
NOT_SERVER_HOME = (
    "this MDAGENT_HOME has no server.json, so it is not the mdagent server's home: run this as the server's "
    "account (or with its MDAGENT_HOME), or run `mdagent server setup` first"
)


@contextlib.contextmanager
def users_store(url: str | None, *, new_local: bool = True, pool_size: int | None = None):
    """The users store: `url`, else the shared server's (server.json), else $MDAGENT_HOME/users.db (made only when
    `new_local`; otherwise an error that says where the server's store is found). Errors are one sentence."""
    from mdagent_hpc.accounts.store import AccountsError, Store
    from mdagent_hpc.home import HomeError, mdagent_home

    url = url or shared_users_db()
    if url is None and not new_local and not (mdagent_home() / "users.db").exists():
        raise DeployError(
            f"no users database here: {NOT_SERVER_HOME}; for a gateway of your own give --db sqlite:///FILE "
            "(or MDAGENT_USERS_DB)"
        )
    opened = None
    try:
        opened = Store(url, pool_size=pool_size)
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
# What a user added without quotas gets until the admin changes it (`mdagent users defaults`): never unlimited.
DEFAULT_QUOTA = {
    "tokens_per_day": 2_000_000,
    "requests_per_minute": 60,
    "concurrent_runs": 4,
    "sweep_points": 200,
    "core_hours_per_day": 100.0,
}
NO_TIMEOUT_POLICY = "mdagent-consumer-timeout"
LONG_TIMEOUT_MS = 366 * 24 * 3600 * 1000  # a year: longer than any run


@dataclass
class Setup:
    """What `setup` made and found: each check a (name, ok, detail)."""

    profile: str
    users_db: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)


@dataclass
class Broker:
    """The RabbitMQ login `setup` is given; None: the profile's stored value, else AiiDA's default."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    vhost: str | None = None


DEFAULT_CONCURRENT_RUNS = 300  # a department's runs and sweep points in flight at once
PROCESSES_PER_RUN = 3  # an agent run, its attempt's workflow and its calculation job hold a slot each
AIIDA_DEFAULT_SLOTS = 200


def setup(
    profile: str,
    *,
    database: str | None,
    db_host: str,
    db_port: int,
    db_user: str,
    db_password: str,
    broker: Broker,
    accept_consumer_timeout: bool = False,
    daemon_workers: int | None = None,
    concurrent_runs: int = DEFAULT_CONCURRENT_RUNS,
    progress: Progress = quietly,
) -> Setup:
    """Make (or check again) the shared profile on PostgreSQL + RabbitMQ and the users tables in the same database,
    and save them in server.json. The broker is checked on every run, with the options given (else the profile's);
    a consumer_timeout that would drop long runs stops setup unless `accept_consumer_timeout`. Safe to run again."""
    from aiida.manage.configuration import get_config

    from mdagent_hpc.execution.profile import ProfileError, ensure_postgres_profile

    config = get_config(create=True)
    stored = config.get_profile(profile).process_control_config if profile in config.profile_names else {}
    with progress(f"checking RabbitMQ at {broker.host or stored.get('broker_host', '127.0.0.1')} ..."):
        found = check_broker(broker, stored)
    where = f"{found['broker_host']}:{found['broker_port']} vhost '{found['broker_virtual_host'] or '/'}'"
    checks: list[tuple[str, bool, str]] = [("RabbitMQ", True, f"{where} (user {found['broker_username']})")]
    checks.append(check_consumer_timeout(found, accept_consumer_timeout))
    try:
        with progress(f"checking PostgreSQL at {db_host}:{db_port} ..."):
            ensure_postgres_profile(
                profile, database=database, host=db_host, port=db_port, user=db_user, password=db_password, broker=False
            )
    except ProfileError as exc:
        raise DeployError(str(exc)) from None
    daemon_workers = daemon_workers or os.cpu_count() or 1
    slots = process_slots(concurrent_runs, daemon_workers)
    storage = _configure_profile(profile, found, slots)
    checks.insert(
        0,
        (
            "PostgreSQL",
            True,
            f"database {storage['database_name']} on {storage['database_hostname']}:"
            f"{storage['database_port']} (C.UTF-8 collation: no en_US locale needed)",
        ),
    )
    users_db = users_db_url(
        db_user,
        db_password,
        storage["database_hostname"],
        storage["database_port"],
        storage["database_name"],
    )
    with users_store(users_db) as users:
        checks.append(("users", True, f"{sum(u.active for u in users.users())} active in the same database"))
    os.environ["MDAGENT_AIIDA_PROFILE"] = profile
    from mdagent_hpc import api

    with progress("loading the profile (the local computer and LAMMPS code) ..."):
        api.load_profile()
    checks.append(("profile", True, f"{profile} loads; `local` computer and LAMMPS code ready"))
    from mdagent_hpc.provenance.query import ensure_indexes

    with progress("making the query indexes (once; minutes on millions of runs) ..."):
        made = ensure_indexes()
    checks.append(("query indexes", True, f"{len(made)} on the runs and sweep points (docs/queries.md)"))
    defaults = saved().get("default_quota") or DEFAULT_QUOTA
    checks.append(("default quotas", True, quota_text(defaults) + " (`mdagent users defaults` changes them)"))
    daemon = f"{daemon_workers} worker(s) of {slots} process slots each, for {concurrent_runs} runs in flight"
    checks.append(("daemon", True, daemon + " (applies when the daemon starts next)"))
    saving = {"profile": profile, "users_db": users_db, "default_quota": defaults, "daemon_workers": daemon_workers}
    save_settings({**saved(), **saving})
    return Setup(profile, users_db, checks)


def _configure_profile(profile: str, broker: dict, slots: int) -> dict:
    """The profile's broker (RabbitMQ as checked), its daemon's process slots, no RabbitMQ-version warning; its
    storage config."""
    from aiida.manage.configuration import get_config

    config = get_config()
    made = config.get_profile(profile)
    made.set_process_controller("core.rabbitmq", broker)
    config.update_profile(made)
    config.set_option("warnings.rabbitmq_version", False, scope=profile)
    config.set_option("daemon.worker_process_slots", slots, scope=profile)
    config.store()
    return made.storage_config


def process_slots(concurrent_runs: int, workers: int) -> int:
    """AiiDA's daemon.worker_process_slots for `concurrent_runs` runs (or sweep points) in flight on `workers`
    workers: each run holds PROCESSES_PER_RUN processes at once, spread over the workers, and never fewer than
    AiiDA's own default."""
    return max(AIIDA_DEFAULT_SLOTS, -(-concurrent_runs * PROCESSES_PER_RUN // workers))


def check_broker(given: Broker, stored: dict) -> dict:
    """The profile's broker config from the options given, else those stored, else AiiDA's defaults (and the
    AIIDA_BROKER_* environment), checked by connecting; DeployError saying what to do when it fails."""
    import socket

    from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config

    def pick(option, key):
        return option if option is not None else stored.get(f"broker_{key}")

    login = {
        "host": pick(given.host, "host"),
        "port": pick(given.port, "port"),
        "username": pick(given.user, "username"),
        "password": pick(given.password, "password"),
        "virtual_host": pick(given.vhost, "virtual_host"),
    }
    try:
        return detect_rabbitmq_config(**login)
    except ConnectionError:
        pass
    host, port = login["host"] or "127.0.0.1", login["port"] or 5672
    vhost, user = login["virtual_host"] or "/", login["username"] or "guest"
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        raise DeployError(
            f"RabbitMQ does not answer at {host}:{port}: start it (`service rabbitmq-server start`) or give the "
            "right --broker-host/--broker-port"
        ) from None
    raise DeployError(
        f"RabbitMQ at {host}:{port} refuses user {user} on vhost '{vhost}': the vhost must exist and the user have "
        f"permissions on it (as root: `rabbitmqctl add_vhost {vhost}` and `rabbitmqctl set_permissions -p {vhost} "
        f"{user} '.*' '.*' '.*'`), and the password must be right (--broker-password or MDAGENT_BROKER_PASSWORD)"
    )


def check_consumer_timeout(broker: dict, accepted: bool) -> tuple[str, bool, str]:
    """RabbitMQ drops a task held longer than its consumer_timeout (30 min by default), and with it the run.
    Readable when the broker runs here: per vhost (a policy) from RabbitMQ 3.12, else the broker-wide value."""
    vhost = broker["broker_virtual_host"]
    version = rabbitmq_version(broker["broker_host"])
    per_vhost = version is not None and version >= (3, 12)
    if per_vhost:
        fix = (
            f"as root: `rabbitmqctl set_policy -p {vhost} --apply-to queues {NO_TIMEOUT_POLICY} '.*' "
            f"'{{\"consumer-timeout\": {LONG_TIMEOUT_MS}}}'` (this vhost only)"
        )
    else:
        fix = (
            "RabbitMQ before 3.12 has no per-vhost setting: as root add `[{rabbit, [{consumer_timeout, undefined}]}].` "
            "to /etc/rabbitmq/advanced.config and restart RabbitMQ (this changes the whole broker)"
        )
    timeout = vhost_consumer_timeout(vhost) if per_vhost else consumer_timeout(broker["broker_host"])
    if timeout == "undefined" or (timeout is not None and timeout.isdigit() and int(timeout) >= LONG_TIMEOUT_MS):
        return ("consumer_timeout", True, f"{timeout}" + (f" on vhost '{vhost}'" if per_vhost else ""))
    said = (
        "cannot be read from here (a remote broker): make sure it is undefined"
        if timeout is None
        else f"{timeout} ms: a run longer than that is dropped by RabbitMQ"
    )
    if accepted:
        return ("consumer_timeout", False, f"{said}; accepted with --accept-consumer-timeout")
    raise DeployError(
        f"RabbitMQ's consumer_timeout {said}; {fix}; then run setup again (or give --accept-consumer-timeout "
        "to go on with it)"
    )


def rabbitmq_version(host: str) -> tuple[int, int] | None:
    """The local broker's version, (major, minor); None when it is not here or does not say."""
    said = _rabbitmqctl(host, "version")
    try:
        major, minor = said.split(".")[:2] if said else ("", "")
        return int(major), int(minor)
    except ValueError:
        return None


def vhost_consumer_timeout(vhost: str) -> str | None:
    """The consumer-timeout a policy of `vhost` sets (ms), 'undefined' when none does; None when unreadable."""
    said = _rabbitmqctl("127.0.0.1", "list_policies", "-p", vhost, "--formatter", "json")
    if said is None:
        return None
    try:
        policies = json.loads(said)
        found = [json.loads(p["definition"]).get("consumer-timeout") for p in policies]
    except (ValueError, KeyError, TypeError):
        return None
    return str(max(t for t in found if t is not None)) if any(t is not None for t in found) else "undefined"


def consumer_timeout(host: str) -> str | None:
    """RabbitMQ's consumer_timeout (ms or 'undefined') when the broker runs here; None when it cannot be read."""
    said = _rabbitmqctl(host, "eval", "application:get_env(rabbit, consumer_timeout).")
    if said is None:
        return None
    if said == "undefined":
        return "undefined"
    return said.removeprefix("{ok,").removesuffix("}") or None


def _rabbitmqctl(host: str, *args: str) -> str | None:
    """What `rabbitmqctl ARGS` prints when the broker at `host` runs here; None when it cannot be asked."""
    if not loopback(host) or not shutil.which("rabbitmqctl"):
        return None
    try:
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def quota_text(quota: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in quota.items() if v is not None) or "no limits"


def default_quota() -> dict:
    """What a user added without quotas gets on the shared server (server.json); {} when this is not its home."""
    found = saved()
    return dict(found.get("default_quota") or DEFAULT_QUOTA) if found else {}


def set_default_quota(changes: dict) -> dict:
    """Change the defaults for users added from now on (None: no limit); the new defaults."""
    found = saved()
    if not found:
        raise DeployError(NOT_SERVER_HOME)
    quota = {**(found.get("default_quota") or DEFAULT_QUOTA), **changes}
    save_settings({**found, "default_quota": quota})
    return quota


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

    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest.chmod(0o700)  # before anything is written: the dump holds every run, key hash and usage
    with progress(f"backing up profile {os.environ['MDAGENT_AIIDA_PROFILE']} into {dest} ..."):
        umask = os.umask(0o077)
        try:
            with quiet_logger("aiida.storage"):  # it reports each step, and warns of a new backup folder
                get_manager().get_profile_storage().backup(str(dest), keep=keep)
        except Exception as exc:  # noqa: BLE001 (aiida raises BackupError and others: one sentence)
            raise DeployError(f"the backup failed: {exc}; check that DEST is writable and PostgreSQL answers") from None
        finally:
            os.umask(umask)
            private(dest)
    last = (dest / "last-backup").resolve()
    size = sum(p.stat().st_size for p in last.rglob("*") if p.is_file())
    return last, size


@contextlib.contextmanager
def quiet_logger(name: str):
    """Only errors of logger `name` (and its children) while inside (what fails is raised, and said, anyway)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def private(folder: Path) -> None:
    """Folders 700 and files 600 under `folder` (rsync keeps the repository's own modes)."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o700 if path.is_dir() else 0o600)


@dataclass
class Restored:
    database: str
    vhost: str
    serving: bool  # server.json names the restored profile now: `server serve` serves it


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
) -> Restored:
    """Restore a backup from `source` (a folder `server backup` wrote) into a new profile and database, users
    included, on the RabbitMQ vhost of the profile that was backed up. Same pks, same users and keys. server.json
    is pointed at it only when there is none yet (a new host); else `setup --profile NEW` does it, when asked."""
    from mdagent_hpc.home import ensure_home

    folder = source / "last-backup" if (source / "last-backup").exists() else source
    dump, container = folder / "db.psql", folder / "container"
    if not dump.is_file() or not container.is_dir():
        raise DeployError(
            f"{source} is not a backup (no db.psql and container/ in {folder}); give the folder "
            "`mdagent server backup` wrote"
        )
    broker = backed_up_broker(source)
    if not shutil.which("psql"):
        raise DeployError("`psql` is not installed here; install it (Debian: postgresql-client) and retry")
    from aiida.manage.configuration import get_config

    if profile in get_config(create=True).profile_names:
        raise DeployError(f"profile {profile} exists already; restore into a new one (--profile NEW)")
    login = Broker(
        host=broker.get("broker_host"),
        port=broker.get("broker_port"),
        user=broker.get("broker_username"),
        password=broker.get("broker_password"),
        vhost=broker.get("broker_virtual_host"),
    )
    with progress("checking RabbitMQ ..."):
        broker = check_broker(login, {})
    database = database or profile.replace("-", "_")
    load_dump(dump, database, db_host, db_port, db_user, db_password, progress)
    target = ensure_home() / "repositories" / profile / "container"
    with progress(f"copying the file repository to {target} ..."):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(container, target)
        (target / "loose").mkdir(exist_ok=True)  # the backup packs every object and copies no loose/ folder
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
            broker,
        )
    except Exception:  # noqa: BLE001 (AiiDA raises several kinds here: one sentence)
        raise DeployError(
            f"the restored database {database} does not open as an AiiDA profile; it is left for inspection "
            "(drop it before retrying); check that the backup is complete and this mdagent is not older than it"
        ) from None
    found = saved()
    serving = not found
    if serving:
        users_db = users_db_url(db_user, db_password, db_host, db_port, database)
        save_settings({**found, "profile": profile, "users_db": users_db})
    return Restored(database, broker["broker_virtual_host"], serving)


def load_dump(dump: Path, database: str, host: str, port: int, user: str, password: str, progress: Progress) -> None:
    """A new database `database` (it must not exist) with `dump` loaded into it by psql."""
    import psycopg

    where = {"host": host, "port": port, "user": user, "password": password}
    try:
        with psycopg.connect(**where, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                raise DeployError(f"database {database} exists already on {host}:{port}; give a new --database")
            conn.execute(
                psycopg.sql.SQL(
                    "CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' TEMPLATE template0"
                ).format(psycopg.sql.Identifier(database))
            )
    except psycopg.OperationalError:
        raise DeployError(
            f"PostgreSQL at {host}:{port} does not answer or refuses {user}: start it "
            "or give the right --db-host/--db-port/--db-user (and MDAGENT_DB_PASSWORD)"
        ) from None
    with progress(f"loading {dump} into database {database} ..."):
        loaded = subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(port), "-U", user]
            + ["-d", database, "-f", str(dump)],
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": password},
        )
    if loaded.returncode != 0:
        raise DeployError(
            f"psql could not load {dump}: {loaded.stderr.strip().splitlines()[-1:]}; database {database} "
            "is left for inspection (drop it before retrying)"
        )


def backed_up_broker(source: Path) -> dict:
    """The broker config of the profile that was backed up (the config.json AiiDA's backup writes), {} if none."""
    from aiida.manage.configuration.settings import DEFAULT_CONFIG_FILE_NAME

    try:
        config = json.loads((source / DEFAULT_CONFIG_FILE_NAME).read_text())
        (stored,) = config["profiles"].values()
        return dict(stored["process_control"]["config"] or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def make_profile(name: str, storage: dict, broker: dict) -> None:
    """A profile on a database and repository restored as they were: AiiDA's `create_profile` without the user
    it would add (the restored database has its users), then brought to the current schema."""
    from aiida.manage.configuration import get_config

    config = get_config(create=True)
    profile = config.create_profile(
        name=name,
        storage_backend="core.psql_dos",
        storage_config=storage,
        broker_backend="core.rabbitmq",
        broker_config=broker,
    )
    profile.default_user_email = "mdagent@localhost"
    config.update_profile(profile)
    config.set_option("runner.poll.interval", 1, scope=name)
    config.set_option("warnings.rabbitmq_version", False, scope=name)
    config.store()
