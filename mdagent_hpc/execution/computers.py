"""A site config as an AiiDA Computer and LAMMPS Code, created or brought up to date on every use.

Computers are mutable in AiiDA and are updated in place. Codes are immutable nodes that past runs point to:
a changed code is stored anew under the same label, and the old one is relabelled and hidden, so provenance
keeps what actually ran.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mdagent_hpc.execution.site import (
    SiteConfig,
    SiteConfigError,
    aiida_code_kwargs,
    aiida_code_type,
    aiida_computer_kwargs,
    aiida_configure_kwargs,
)

CODE_LABEL = "lammps"


@dataclass
class SiteSetup:
    computer: object
    code: object
    changes: list[str] = field(default_factory=list)


def local_site() -> SiteConfig:
    """The embedded default: this machine, no scheduler, LAMMPS under bubblewrap (`mdagent-lmp`)."""
    return SiteConfig(
        name="local",
        description="this machine; LAMMPS runs under bubblewrap",
        scheduler="direct",
        # No login shell: it costs ~0.15 s per scheduler command, and the code's path is absolute.
        transport={"type": "local", "safe_interval": 0, "use_login_shell": False},
        poll_interval=0.2,
        lammps={"binary": str(Path(sys.executable).parent / "mdagent-lmp")},
    )


def resolved_binary(site: SiteConfig) -> SiteConfig:
    """On a local-transport site a bare binary name becomes the absolute path it has here."""
    binary = site.lammps.binary
    if site.transport.type != "local" or binary is None or "/" in binary or site.lammps.modules:
        return site
    path = shutil.which(binary)
    if path is None:
        raise SiteConfigError(
            f"site {site.name}: lammps.binary '{binary}' is not on PATH here; give its absolute "
            "path (e.g. the output of `which lmp`) or the modules that provide it"
        )
    return site.model_copy(update={"lammps": site.lammps.model_copy(update={"binary": path})})


def ensure_site(site: SiteConfig) -> SiteSetup:
    """The site's Computer (configured for the current user) and `lammps@NAME` Code, up to date."""
    site = resolved_binary(site)
    changes: list[str] = []
    computer = ensure_computer(site, changes)
    code = _ensure_code(site, computer, changes)
    return SiteSetup(computer=computer, code=code, changes=changes)


def ensure_computer(site: SiteConfig, changes: list[str]):
    """The site's Computer, created or brought up to date (each change said in `changes`)."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    wanted = aiida_computer_kwargs(site)
    try:
        computer = orm.load_computer(site.name)
        created = False
    except NotExistent:
        computer = orm.Computer(**{k: v for k, v in wanted.items() if k != "metadata"}).store()
        changes.append(f"created computer {site.name}")
        created = True
    for key in ("description", "hostname", "transport_type", "scheduler_type"):
        if getattr(computer, key) != wanted[key]:
            changes.append(f"computer {site.name}: {key} {getattr(computer, key)!r} -> {wanted[key]!r}")
            setattr(computer, key, wanted[key])
    if computer.get_workdir() != wanted["workdir"]:
        changes.append(f"computer {site.name}: workdir -> {wanted['workdir']}")
        computer.set_workdir(wanted["workdir"])
    metadata = dict(computer.metadata or {})
    desired = {**metadata, **wanted["metadata"], "minimum_scheduler_poll_interval": site.poll_interval}
    for key in ("default_memory_per_machine", "use_double_quotes"):
        if key not in wanted["metadata"]:
            desired.pop(key, None)
    if desired != metadata:
        if not created:
            changes.append(f"computer {site.name}: settings updated")
        computer.metadata = desired

    auth = aiida_configure_kwargs(site)
    current = computer.get_configuration() if computer.is_configured else None
    if current is None or any(current.get(k) != v for k, v in auth.items()):
        computer.configure(**auth)
        changes.append(f"computer {site.name}: transport configured")
    return computer


PILOT_CODE = "pilot"


def login_site(site: SiteConfig) -> SiteConfig:
    """The site's login host as a site of its own, `NAME-login`: same transport and workdir, no scheduler (AiiDA's
    core.direct), so a job there (the sweep's Parsl driver) is a process on the login host that AiiDA follows."""
    return site.model_copy(
        update={
            "name": f"{site.name}-login",
            "scheduler": "direct",
            "queue": None,
            "account": None,
            "qos": None,
            "lammps": site.lammps.model_copy(update={"image": None, "binary": "lmp"}),
            # the driver is one small process: no memory limit (core.direct has none)
            "resources": site.resources.model_copy(update={"memory_mb": None}),
        }
    )


def ensure_pilot_code(site: SiteConfig):
    """`pilot@NAME-login`: the Python that runs the sweep driver (`python -m mdagent_hpc.execution.parsl.driver`)
    on the site's login host."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    login = login_site(site)
    computer = ensure_computer(login, [])
    python = site.pilot.python or (sys.executable if site.transport.type == "local" else "python3")
    try:
        code = orm.load_code(f"{PILOT_CODE}@{login.name}")
        if str(code.filepath_executable) == python:
            return code
        code.label, code.is_hidden = f"{PILOT_CODE}-replaced-{code.pk}", True
    except NotExistent:
        pass
    return orm.InstalledCode(
        label=PILOT_CODE,
        computer=computer,
        filepath_executable=python,
        description=f"the sweep driver's Python on {site.name}'s login host",
        default_calc_job_plugin="mdagent.sweep.pilot",
    ).store()


def _ensure_code(site: SiteConfig, computer, changes: list[str]):
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent
    from aiida.plugins import DataFactory

    kwargs = aiida_code_kwargs(site, CODE_LABEL)
    kwargs["computer"] = computer
    code_class = DataFactory(aiida_code_type(site))
    try:
        code = orm.load_code(f"{CODE_LABEL}@{site.name}")
    except NotExistent:
        code = None
    except MultipleObjectsError:
        raise SiteConfigError(
            f"several codes are labelled {CODE_LABEL}@{site.name}; hide or relabel all but one with `verdi code`"
        ) from None
    if code is not None and _same_code(code, code_class, kwargs):
        return code
    if code is not None:
        code.label = f"{CODE_LABEL}-replaced-{code.pk}"
        code.is_hidden = True
        changes.append(f"code {CODE_LABEL}@{site.name} replaced (the old one is pk {code.pk}, hidden)")
    else:
        changes.append(f"created code {CODE_LABEL}@{site.name}")
    return code_class(**kwargs).store()


def _same_code(code, code_class, kwargs: dict) -> bool:
    if type(code) is not code_class:
        return False
    for key in ("filepath_executable", "image_name", "engine_command", "prepend_text", "description"):
        if key in kwargs and str(getattr(code, key)) != str(kwargs[key]):
            return False
    return code.default_calc_job_plugin == kwargs["default_calc_job_plugin"]


def dry_run_where(site: SiteConfig) -> str:
    """`here` when this machine runs the site's LAMMPS binary itself, else `job` (a short job on the site)."""
    return "here" if site.transport.type == "local" and site.lammps.binary else "job"


def workflow_inputs(site: SiteConfig) -> dict:
    """The AgentWorkChain inputs a site decides: code, job options, limits, dry-run place, failure policy."""
    from aiida import orm

    from mdagent_hpc.agent.loop import SiteRun
    from mdagent_hpc.execution.site import aiida_calcjob_options

    setup = ensure_site(site)
    try:
        options = aiida_calcjob_options(site)
    except ValueError as exc:
        raise SiteConfigError(str(exc)) from None
    run = SiteRun(name=site.name, dry_run=dry_run_where(site), on_failure=site.on_failure.model_dump())
    return {
        "code": setup.code,
        "options": orm.Dict(options),
        "limits": orm.Dict(site.limits.model_dump()),
        "site": orm.Dict(run.model_dump()),
    }
