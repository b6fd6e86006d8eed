"""`mdagent site test NAME`: each stage of reaching a site, timed, with what to fix when one fails."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mdagent_hpc.execution.site import SiteConfig, SiteConfigError, aiida_calcjob_options
from mdagent_hpc.lammps.templates import lj_script

TEST_SCRIPT = lj_script(4, 1)  # one step of 256 atoms: well under a second


@dataclass
class Stage:
    name: str
    ok: bool
    seconds: float
    detail: str
    fix: str = ""


class StageFailedError(Exception):
    def __init__(self, detail: str, fix: str):
        super().__init__(detail)
        self.detail, self.fix = detail, fix


def probe_site(site: SiteConfig) -> Iterator[Stage]:
    """Yield the stages as they finish; stop after the first that fails."""
    state: dict = {}
    stages: list[tuple[str, Callable[[SiteConfig, dict], str]]] = [
        ("aiida", _aiida),
        ("connect", _connect),
        ("scheduler", _scheduler),
        ("lammps job", _job),
        ("read back", _read_back),
    ]
    for name, step in stages:
        start = time.monotonic()
        try:
            detail = step(site, state)
        except StageFailedError as exc:
            yield Stage(name, False, time.monotonic() - start, exc.detail, exc.fix)
            return
        yield Stage(name, True, time.monotonic() - start, detail)


def _aiida(site: SiteConfig, state: dict) -> str:
    from mdagent_hpc.execution.computers import ensure_site

    try:
        setup = ensure_site(site)
    except SiteConfigError as exc:
        raise StageFailedError(str(exc), "correct the site config and `mdagent site add` it again") from None
    state["setup"] = setup
    return "; ".join(setup.changes) or f"computer {site.name} and code {setup.code.full_label} up to date"


def _connect(site: SiteConfig, state: dict) -> str:
    computer = state["setup"].computer
    where = f"{site.transport.user + '@' if site.transport.user else ''}{computer.hostname}"
    try:
        with computer.get_transport() as transport:
            user = transport.whoami()
            workdir = computer.get_workdir().format(username=user)
            transport.makedirs(workdir, ignore_existing=True)
            probe = f"{workdir}/.mdagent-site-test"
            retval, _, stderr = transport.exec_command_wait(f"touch {probe} && rm {probe}")
            if retval != 0:
                raise OSError(f"cannot write in {workdir}: {stderr.strip()}")
            state["user"] = user
    except Exception as exc:  # noqa: BLE001 (paramiko, OSError, AiiDA: all mean "cannot reach or write")
        if site.transport.type == "ssh":
            t = site.transport
            key = f"-i {t.key_filename} " if t.key_filename else ""
            login = f"{t.user}@{t.host}" if t.user else t.host
            fix = f"check host, port, user and key: `ssh -p {t.port} {key}{login} true` must work without a password"
        else:
            fix = f"make the work directory {computer.get_workdir()} writable, or set workdir in the site config"
        raise StageFailedError(f"cannot use {where}: {type(exc).__name__}: {exc}", fix) from None
    return f"{user}@{computer.hostname} ({site.transport.type}), workdir {workdir} writable"


def _scheduler(site: SiteConfig, state: dict) -> str:
    computer = state["setup"].computer
    try:
        with computer.get_transport() as transport:
            scheduler = computer.get_scheduler()
            scheduler.set_transport(transport)
            jobs = scheduler.get_jobs(user=state["user"], as_dict=True)
    except Exception as exc:  # noqa: BLE001 (any scheduler or transport error is this stage's failure)
        command = {"slurm": "squeue", "pbspro": "qstat", "direct": "ps"}[site.scheduler]
        raise StageFailedError(
            f"{site.scheduler} did not answer: {exc}",
            f"log in to the site and run `{command}`; load the scheduler's module in the login "
            "shell or set use_login_shell",
        ) from None
    return f"{site.scheduler} answers; {len(jobs)} job(s) of {state['user']} queued"


def _job(site: SiteConfig, state: dict) -> str:
    from aiida import orm

    from mdagent_hpc.execution.profile import run_here
    from mdagent_hpc.workflows.lammps_calc import LammpsCalculation

    options = aiida_calcjob_options(site)
    options["max_wallclock_seconds"] = min(options["max_wallclock_seconds"], 600)
    script = orm.SinglefileData(io.BytesIO(TEST_SCRIPT.encode()), filename="in.site-test")
    _, node = run_here(
        LammpsCalculation,
        code=state["setup"].code,
        script=script,
        metadata={"options": options, "label": f"site test {site.name}"},
    )
    state["node"] = node
    job = f"job {node.get_job_id()}" if node.get_job_id() else "job"
    if not node.is_finished_ok:
        stderr = ""
        if (
            "retrieved" in node.outputs
            and "_scheduler-stderr.txt" in node.outputs.retrieved.base.repository.list_object_names()
        ):
            stderr = node.outputs.retrieved.base.repository.get_object_content("_scheduler-stderr.txt", mode="r")
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        detail = f"{job} (pk {node.pk}) ended with exit {node.exit_status}: {node.exit_message or node.process_state}"
        if node.exit_status == LammpsCalculation.exit_codes.ERROR_CONNECTION_LOST.status:
            raise StageFailedError(
                detail,
                "the site stopped answering during the job: check the connection and run `mdagent site test` again",
            )
        raise StageFailedError(
            detail + (f"; stderr: {last}" if last else ""),
            "check lammps.binary/image and modules: the job's _scheduler-stderr.txt is in "
            f"`verdi calcjob outputcat {node.pk} _scheduler-stderr.txt`",
        )
    return f"{job} ran 1 step (pk {node.pk})"


def _read_back(site: SiteConfig, state: dict) -> str:
    results = state["node"].outputs.results.get_dict()
    if not results.get("completed"):
        raise StageFailedError(
            "the log came back but LAMMPS did not complete",
            f"look at the log with `verdi calcjob outputcat {state['node'].pk} log.lammps`",
        )
    accounting = results.get("accounting") or {}
    acct = (
        f"; accounting: {accounting.get('State')}, elapsed {accounting.get('Elapsed')}"
        if accounting
        else ("; no accounting (sacct needs slurmdbd)" if site.scheduler == "slurm" else "")
    )
    return f"log parsed: {results.get('atoms')} atoms, completed{acct}"
