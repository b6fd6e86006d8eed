"""The embedded default: an AiiDA profile, a `local` computer and a LAMMPS code, made on first use.

With nothing configured, mdagent keeps its own AiiDA configuration under MDAGENT_HOME (SQLite storage and
AiiDA's built-in ZeroMQ broker: no services, no root). `MDAGENT_AIIDA_PROFILE` selects a profile of the
user's own AiiDA configuration instead (e.g. a shared PostgreSQL + RabbitMQ one).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.home import mdagent_home
from mdagent_hpc.settings import env

PROFILE = "mdagent"
LOCAL_COMPUTER = "local"
LOCAL_CODE = "lammps"


class ProfileError(MDAgentError, RuntimeError):
    pass


def shared_profile() -> str | None:
    """The shared profile `mdagent server setup` saved in this MDAGENT_HOME's server.json (the server's home)."""
    from mdagent_hpc.settings import saved_server_settings

    return saved_server_settings().get("profile") or None


def configure_environment() -> str:
    """Point AiiDA at our configuration folder (before AiiDA reads it); returns the profile name.

    In the server's home (a server.json there) every command uses the shared profile from that home's AiiDA
    configuration, also with MDAGENT_AIIDA_PROFILE set (a restored profile lives there too)."""
    shared = shared_profile()
    if (name := env("MDAGENT_AIIDA_PROFILE")) and not shared:
        return name
    os.environ["AIIDA_PATH"] = str(mdagent_home())
    warnings.filterwarnings("ignore", message="Creating AiiDA configuration folder")
    bindir = str(Path(sys.executable).parent)  # the daemon needs `verdi` on PATH
    if bindir not in os.environ.get("PATH", "").split(":"):
        os.environ["PATH"] = f"{bindir}:{os.environ.get('PATH', '')}"
    return name or shared or PROFILE


def ensure_profile():
    """Load (creating on first use) the profile, the `local` computer and its LAMMPS code."""
    name = configure_environment()
    shared = shared_profile()
    from aiida import load_profile
    from aiida.common.exceptions import ProfileConfigurationError
    from aiida.manage.configuration import create_profile, get_config
    from aiida.plugins import BrokerFactory

    if shared or not env("MDAGENT_AIIDA_PROFILE"):
        from aiida.manage.configuration.settings import AiiDAConfigDir

        if AiiDAConfigDir.get().parent != mdagent_home():
            raise ProfileError(
                f"AiiDA was loaded before mdagent chose its folder (it uses {AiiDAConfigDir.get()}); "
                "call mdagent_hpc.execution.profile.configure_environment() before importing aiida"
            )
    config = get_config(create=True)
    if name not in config.profile_names:
        if shared:
            raise ProfileError(
                f"this is the mdagent server's home ({mdagent_home()}: server.json names profile '{shared}') but "
                f"profile '{name}' is not in its AiiDA configuration; no local profile is made here: run "
                "`mdagent server setup` again, or `mdagent server restore`"
            )
        if env("MDAGENT_AIIDA_PROFILE"):
            raise ProfileError(
                f"AiiDA profile '{name}' (MDAGENT_AIIDA_PROFILE) does not exist; "
                "create it with `verdi profile setup` or unset the variable"
            )
        # What `verdi presto --use-zeromq` does: SQLite storage, the built-in ZeroMQ broker.
        create_profile(
            config,
            name=name,
            email="mdagent@localhost",
            storage_backend="core.sqlite_dos",
            storage_config={},
            broker_backend="core.zeromq",
            broker_config=BrokerFactory("core.zeromq").get_default_config(),
        )
        config.set_option("runner.poll.interval", 1, scope=name)
        config.set_default_profile(name, overwrite=True)
        config.store()
    if not env("MDAGENT_AIIDA_PROFILE"):
        fast_sqlite(mdagent_home())
    try:
        profile = load_profile(name, allow_switch=True)
    except ProfileConfigurationError as exc:
        raise ProfileError(str(exc)) from None
    ensure_local_code()
    return profile


# Where a write-ahead log is unsafe: its shared-memory index needs every process on one host's page cache.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.sshfs", "9p", "afs"}
)


def fast_sqlite(folder: Path) -> bool:
    """WAL journal and NORMAL sync for the SQLite storage of the embedded profile, unless `folder` is on a network
    filesystem; True if set.

    With the default rollback journal every commit waits for the disk, and AiiDA commits on each state change of
    each process (~15 per LAMMPS job): on a busy disk that was a third of an attempt's orchestration. In WAL mode a
    commit is an append; an application crash loses nothing, a power cut at most the last commits, never the file.
    """
    if filesystem_type(folder) in NETWORK_FILESYSTEMS:
        return False
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _wal_journal):
        event.listen(Engine, "connect", _wal_journal)
    return True


def _wal_journal(dbapi_connection, _record) -> None:
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem `path` is on (ext4, nfs4, ...), from /proc/self/mounts; None if unknown."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return None
    target = str(path.resolve())
    best = max(
        (point for point, _ in mounts if target == point or target.startswith(point.rstrip("/") + "/")),
        key=len,
        default=None,
    )
    return dict(mounts).get(best) if best else None


def ensure_local_code():
    """The `local` computer (direct scheduler, local transport) and `lammps@local` under bubblewrap, up to date."""
    from mdagent_hpc.execution.computers import ensure_site, local_site

    return ensure_site(local_site()).code


# A runner in the CLI's own process has no broker: a workchain learns that a child it waits for has finished only
# by polling. The profile's interval (whole seconds) cost ~1 s per waited step; a tenth of a second is one cheap
# SQLite query per waiting process.
LOCAL_POLL_SECONDS = 0.1


class _RunKeepsSigint:
    """What `aiida.engine.processes.functions` sees as the `signal` module during `run_here`: a calcfunction's
    `signal.signal(SIGINT, ...)` leaves the run's handler in place."""

    SIGINT = signal.SIGINT
    getsignal = staticmethod(signal.getsignal)

    @staticmethod
    def signal(signum, _handler):
        return signal.getsignal(signum)


def run_here(process_class, **inputs):
    """Run a process in this Python process (not the daemon); returns (results, node).

    No checkpoints: an in-process run is in no broker's queue, so nothing resumes it from one (a run that must
    outlive its terminal goes to the daemon, which keeps them); writing one on each state change of each process
    cost a fifth of an attempt's orchestration. Provenance is unaffected.
    """
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager
    from plumpy.exceptions import KilledError
    from plumpy.persistence import InMemoryPersister

    from mdagent_hpc.execution import cancel

    class NoCheckpoints(InMemoryPersister):
        def save_checkpoint(self, process, tag=None) -> None:
            pass

    runner = get_manager().create_runner(communicator=None, poll_interval=LOCAL_POLL_SECONDS, persister=NoCheckpoints())
    process = None

    # Ctrl-C kills the whole run wherever it lands. AiiDA's runner kills the run from its SIGINT handler, but each
    # calcfunction swaps in a handler of its own while it runs, which kills that calcfunction only: a Ctrl-C during
    # a sweep's `record_point` excepted the sweep's step, or went unnoticed while the sweep ran on. So here the
    # calcfunctions leave SIGINT alone (the run's kill waits for the step to end).
    import aiida.engine.processes.functions as process_functions

    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread only
    if main:
        process_functions.signal = _RunKeepsSigint
    try:
        process = instantiate_process(runner, process_class, **inputs)
        cancel.mark_in_process(process.node)
        cancel.watch(runner, process)  # `mdagent cancel PK` from another terminal: as Ctrl-C
        try:
            results = _execute(runner, process, main)
        except KilledError:  # Ctrl-C: the process was killed; its node says so
            results = {}
    finally:
        if main:
            process_functions.signal = signal
        runner.close()
        if process is not None:
            cancel.forget(process.node.pk)
    if process.node.is_killed:
        cancel.stop_children(process.node)
    return results, process.node


def _execute(runner, process, main: bool) -> dict:
    """Run `process` on `runner`'s loop until it ends, as AiiDA's `Runner.run` does; Ctrl-C or SIGTERM kills it.

    AiiDA's runner kills the process inside its signal handler, wherever the main thread happens to be: in the middle
    of a database call (the connection was left closed, a LAMMPS job's poll excepted, and the job ran on after its
    run ended), or after a step's check for a pending kill (plumpy dropped the kill, and the run waited on its job for
    ever); both were seen in loaded CI runs. Here the handler only queues the kill on the loop, which runs it while
    the process waits or between two of its steps (the loop gets a turn after each step), never inside one."""
    import asyncio

    from aiida.engine.utils import loop_scope

    def kill() -> None:
        if not process.has_terminated() and not process.is_killing:
            process.kill(msg_text="Process was killed because the runner received an interrupt")

    def interrupted(_signum, _frame) -> None:
        runner.loop.call_soon_threadsafe(kill)

    async def step_until_terminated() -> None:
        while not process.has_terminated():
            await process.step()
            await asyncio.sleep(0)  # a queued kill runs here, between two steps

    process.step_until_terminated = step_until_terminated
    with loop_scope(runner.loop):
        before = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            return process.execute()
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


DAEMON_TIMEOUT_S = 120  # circus answers slowly on a loaded machine (AiiDA's default is 2 s)


SEE_LOG = "its log says why (`mdagent daemon status` names it)"


class DaemonError(ProfileError):
    """The daemon did not start or stop in time; the message is one sentence."""


def start_daemon(workers: int = 1, timeout: float = DAEMON_TIMEOUT_S) -> None:
    """Start the daemon unless it runs, wait until it answers with a worker (and its ZeroMQ broker with it), and
    point this process at the broker it runs; DaemonError if it does not within `timeout` seconds.

    A daemon still stopping (its circus arbiter quitting after `verdi daemon stop`) keeps its pid file for a while:
    AiiDA's own start then saw "running" and returned, and the old daemon went away. So: wait for a stopping
    daemon to be gone, start, and return only once the new one answers.

    The built-in ZeroMQ broker is supervised by the daemon: once the daemon has been restarted, a process still
    holding a connection to the old broker hands its submissions to nobody, and they never run.
    """
    from aiida.brokers.zeromq import ZeromqBroker
    from aiida.engine.daemon.client import DaemonException, get_daemon_client
    from aiida.manage import get_manager

    client = get_daemon_client()
    deadline = time.monotonic() + timeout
    while not daemon_answers(client):
        if time.monotonic() > deadline:
            raise DaemonError(f"the AiiDA daemon did not answer within {timeout:.0f} s; {SEE_LOG}")
        if _daemon_process(client) is None:  # neither running nor stopping (or it died starting): start it
            try:  # returns once the new daemon has written its pid file
                client.start_daemon(number_workers=workers, timeout=max(1, deadline - time.monotonic()))
            except DaemonException:
                raise DaemonError(f"the AiiDA daemon failed to start; {SEE_LOG}") from None
        time.sleep(0.2)  # starting, or an earlier one still stopping
    manager = get_manager()
    manager.reset_runner()
    manager.reset_broker()
    broker = manager.get_broker()
    if isinstance(broker, ZeromqBroker):  # the built-in broker is a watcher of the daemon: wait for it too
        while not _broker_answers(broker):
            if time.monotonic() > deadline:
                raise DaemonError(f"the daemon's ZeroMQ broker did not start within {timeout:.0f} s; {SEE_LOG}")
            time.sleep(0.2)


def stop_daemon(timeout: float = DAEMON_TIMEOUT_S) -> None:
    """Stop the daemon and wait until its process is gone (not only until circus says it quits); DaemonError if
    it is still there after `timeout` seconds."""
    from aiida.engine.daemon.client import DaemonException, DaemonNotRunningException, get_daemon_client

    client = get_daemon_client()
    deadline = time.monotonic() + timeout
    if _daemon_process(client) is not None:
        try:
            client.stop_daemon(wait=True, timeout=timeout)
        except DaemonNotRunningException:
            pass
        except DaemonException:  # no answer (busy, or already quitting): its process going away is what counts
            pass
    while (process := _daemon_process(client)) is not None:
        if time.monotonic() > deadline:
            raise DaemonError(f"the AiiDA daemon (pid {process.pid}) did not stop within {timeout:.0f} s; {SEE_LOG}")
        time.sleep(0.2)


def _daemon_process(client):
    """The daemon's circus process if its pid file names a live one (running or still stopping), else None."""
    import psutil

    pid = client.get_daemon_pid()
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if not any(name in process.cmdline() for name in ("start-circus", "circusd")):
            return None  # the pid was reused: the pid file is stale (AiiDA's start removes it)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return process


def daemon_answers(client) -> bool:
    """Circus answers that the daemon's watcher is active with at least one worker."""
    from aiida.engine.daemon.client import DaemonException

    if client.get_daemon_pid() is None:
        return False
    try:
        return client.get_status(timeout=10).get("status") == "active" and client.get_number_of_workers(timeout=10) > 0
    except DaemonException:
        return False


def _broker_answers(broker) -> bool:
    """The broker's process runs (it wrote its socket folder first; a ZeroMQ connection waits for the bind)."""
    return broker.check_service_reachable()


def ensure_postgres_profile(
    name: str,
    *,
    database: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5432,
    user: str = "postgres",
    password: str = "",
    broker: bool = True,
    broker_host: str = "127.0.0.1",
    broker_port: int = 5672,
    broker_user: str = "guest",
    broker_password: str = "guest",
):
    """An AiiDA profile `name` on PostgreSQL (and RabbitMQ, unless `broker` is False), made unless it exists; the
    Profile (not loaded). Checks what it finds and says in one sentence (ProfileError) what to do when something
    is missing: the server down, a login refused, a profile of that name on another storage.

    The database (default: `name` with '-' as '_') is made with the C.UTF-8 collation: AiiDA's own creation asks
    for en_US.UTF-8, which a minimal Debian does not have until the locale is generated and PostgreSQL restarted.
    """
    from aiida.manage.configuration import create_profile, get_config

    config = get_config(create=True)
    database = database or name.replace("-", "_")
    if name in config.profile_names:
        profile = config.get_profile(name)
        if profile.storage_backend != "core.psql_dos":
            raise ProfileError(
                f"AiiDA profile '{name}' exists on {profile.storage_backend}, not PostgreSQL; "
                "choose another name or delete it (`verdi profile delete`)"
            )
        stored = profile.storage_config
        _postgres_database(
            stored["database_hostname"],
            stored["database_port"],
            stored["database_username"],
            stored["database_password"],
            stored["database_name"],
            create=False,
        )
        return profile
    broker_config = {}
    if broker:
        from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config

        try:
            broker_config = detect_rabbitmq_config(
                host=broker_host, port=broker_port, username=broker_user, password=broker_password
            )
        except ConnectionError:
            raise ProfileError(
                f"RabbitMQ at {broker_host}:{broker_port} does not answer (or refuses {broker_user}): "
                "start it (`service rabbitmq-server start`), check the login, or make the profile "
                "without a broker (in-process runs only, no daemon)"
            ) from None
    _postgres_database(host, port, user, password, database, create=True)
    storage = {
        "database_engine": "postgresql_psycopg",
        "database_hostname": host,
        "database_port": port,
        "database_username": user,
        "database_password": password,
        "database_name": database,
        "repository_uri": f"file://{mdagent_home() / 'repositories' / name}",
    }
    profile = create_profile(
        config,
        name=name,
        email="mdagent@localhost",
        storage_backend="core.psql_dos",
        storage_config=storage,
        broker_backend="core.rabbitmq" if broker else None,
        broker_config=broker_config or None,
    )
    config.set_option("runner.poll.interval", 1, scope=name)
    config.store()
    return profile


def _postgres_database(host: str, port: int, user: str, password: str, database: str, create: bool) -> None:
    """Check that PostgreSQL answers and `database` is there (making it, UTF-8 with C.UTF-8 collation, if asked)."""
    import psycopg

    where = f"PostgreSQL at {host}:{port}"
    try:
        with psycopg.connect(
            host=host, port=port, user=user, password=password, dbname="postgres", connect_timeout=5, autocommit=True
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if not exists and not create:
                raise ProfileError(
                    f"database '{database}' is gone from {where}; restore it or delete the profile "
                    "(`verdi profile delete`) and make it again"
                )
            if not exists:
                conn.execute(
                    psycopg.sql.SQL(
                        "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' "
                        "LC_CTYPE 'C.UTF-8' TEMPLATE template0"
                    ).format(psycopg.sql.Identifier(database), psycopg.sql.Identifier(user))
                )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise ProfileError(
            f"{where} does not answer or refuses {user} ({reason}): start it "
            "(`service postgresql start`) or give the right host, port, user and password"
        ) from None
    except psycopg.errors.InsufficientPrivilege:
        raise ProfileError(
            f"{user} may not create databases on {where}: create '{database}' as a superuser "
            f"(`createdb -O {user} -T template0 -l C.UTF-8 {database}`) or grant CREATEDB"
        ) from None
