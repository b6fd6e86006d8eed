"""The embedded default: an AiiDA profile, a `local` computer and a LAMMPS code, made on first use.

With nothing configured, mdagent keeps its own AiiDA configuration under MDAGENT_HOME (SQLite storage and
AiiDA's built-in ZeroMQ broker: no services, no root). `MDAGENT_AIIDA_PROFILE` selects a profile of the
user's own AiiDA configuration instead (e.g. a shared PostgreSQL + RabbitMQ one).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from mdagent_hpc.home import mdagent_home

PROFILE = "mdagent"
LOCAL_COMPUTER = "local"
LOCAL_CODE = "lammps"


class ProfileError(RuntimeError):
    pass


def configure_environment() -> str:
    """Point AiiDA at our configuration folder (before AiiDA reads it); returns the profile name."""
    if name := os.environ.get("MDAGENT_AIIDA_PROFILE"):
        return name
    os.environ["AIIDA_PATH"] = str(mdagent_home())
    warnings.filterwarnings("ignore", message="Creating AiiDA configuration folder")
    bindir = str(Path(sys.executable).parent)  # the daemon needs `verdi` on PATH
    if bindir not in os.environ.get("PATH", "").split(":"):
        os.environ["PATH"] = f"{bindir}:{os.environ.get('PATH', '')}"
    return PROFILE


def ensure_profile():
    """Load (creating on first use) the profile, the `local` computer and its LAMMPS code."""
    name = configure_environment()
    from aiida import load_profile
    from aiida.common.exceptions import ProfileConfigurationError
    from aiida.manage.configuration import create_profile, get_config
    from aiida.plugins import BrokerFactory

    if not os.environ.get("MDAGENT_AIIDA_PROFILE"):
        from aiida.manage.configuration.settings import AiiDAConfigDir

        if AiiDAConfigDir.get().parent != mdagent_home():
            raise ProfileError(f"AiiDA was loaded before mdagent chose its folder (it uses {AiiDAConfigDir.get()}); "
                               "call mdagent_hpc.execution.profile.configure_environment() before importing aiida")
    config = get_config(create=True)
    if name not in config.profile_names:
        if os.environ.get("MDAGENT_AIIDA_PROFILE"):
            raise ProfileError(f"AiiDA profile '{name}' (MDAGENT_AIIDA_PROFILE) does not exist; "
                               "create it with `verdi profile setup` or unset the variable")
        # What `verdi presto --use-zeromq` does: SQLite storage, the built-in ZeroMQ broker.
        create_profile(config, name=name, email="mdagent@localhost", storage_backend="core.sqlite_dos",
                       storage_config={}, broker_backend="core.zeromq",
                       broker_config=BrokerFactory("core.zeromq").get_default_config())
        config.set_option("runner.poll.interval", 1, scope=name)
        config.set_default_profile(name, overwrite=True)
        config.store()
    try:
        profile = load_profile(name, allow_switch=True)
    except ProfileConfigurationError as exc:
        raise ProfileError(str(exc)) from None
    ensure_local_code()
    return profile


def ensure_local_code():
    """The `local` computer (direct scheduler, local transport) and `lammps@local` under bubblewrap, up to date."""
    from mdagent_hpc.execution.computers import ensure_site, local_site

    return ensure_site(local_site()).code


# A runner in the CLI's own process has no broker: a workchain learns that a child it waits for has finished only
# by polling. The profile's interval (whole seconds) cost ~1 s per waited step; a tenth of a second is one cheap
# SQLite query per waiting process.
LOCAL_POLL_SECONDS = 0.1


def run_here(process_class, **inputs):
    """Run a process in this Python process (not the daemon); returns (results, node)."""
    from aiida.manage import get_manager

    runner = get_manager().create_runner(communicator=None, poll_interval=LOCAL_POLL_SECONDS)
    try:
        return runner.run_get_node(process_class, inputs)
    finally:
        runner.close()
