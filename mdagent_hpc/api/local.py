"""The Python API, for notebooks and scripts: `from mdagent_hpc import run, get_run, check, ...`.

Thin functions over the layers below, returning the shared models (`Run`, `Attempt`, `PreflightReport`,
`Evaluation`, ...). A user mistake (a missing file, a bad request, an unknown site, a node that is not an agent run)
raises `MDAgentError` with one sentence; the `mdagent` command shows that sentence and exits 2.

Heavy imports (AiiDA, LAMMPS tools, pydantic models) happen inside the functions, so `import mdagent_hpc` stays fast.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mdagent_hpc.lammps.potentials import PotentialEntry
    from mdagent_hpc.models import Evaluation, PreflightReport, Request, Run
    from mdagent_hpc.provenance import Caller
    from mdagent_hpc.sweep.results import SweepRun
    from mdagent_hpc.sweep.spec import SweepSpec
    from mdagent_hpc.workflows.sweep_launch import SweepPlan

__all__ = [
    "MDAgentError",
    "check",
    "diff_runs",
    "evaluate",
    "export_sweep",
    "find_potentials",
    "find_runs",
    "get_run",
    "get_sweep",
    "index_runs",
    "list_runs",
    "list_sweeps",
    "load_profile",
    "load_request",
    "load_sweep_spec",
    "make_request",
    "plan_sweep",
    "plot_run",
    "propose_sweep",
    "query_runs",
    "run",
    "submit",
    "sweep",
]


class MDAgentError(Exception):
    """A user mistake or a setup problem, said in one sentence."""


def _caller(caller: Caller | None) -> Caller:
    """Who reads: as given (the server passes its user), else whoever uses this profile directly."""
    from mdagent_hpc.provenance import local_caller

    return caller if caller is not None else local_caller()


# -- the agent ------------------------------------------------------------------------------------------------
def make_request(task: str | Request, *, site: str | None = None, model: str | None = None,
                 max_attempts: int | None = None, answers: list[str] | None = None) -> Request:
    """A `Request` from a task sentence (or a copy of a request) with the given fields replaced."""
    from pydantic import ValidationError

    from mdagent_hpc.configfile import explain
    from mdagent_hpc.models import Request

    if isinstance(task, Request):
        data = task.model_dump()
    elif isinstance(task, str):
        data = {"task": task}
    else:
        raise MDAgentError(f"a task is a sentence or a Request, not {type(task).__name__}")
    data.update({k: v for k, v in {"site": site, "model": model, "answers": answers}.items() if v is not None})
    if max_attempts is not None:
        data["loop"] = {**dict(data.get("loop") or {}), "max_attempts": max_attempts}
    if isinstance(data.get("task"), str) and len(data["task"].split()) < 3:
        raise MDAgentError("describe the simulation in a sentence (3 words to 4000 characters), e.g. "
                           "\"Melt a 4000-atom Cu crystal with EAM at 2000 K\"")
    try:
        return Request.model_validate(data)
    except ValidationError as exc:
        raise MDAgentError(explain(exc.errors()[0], Request)) from None


def load_request(path: str | Path) -> Request:
    """Read a request file (YAML with the fields of `Request`); a bad file names file:line: key for each problem."""
    from mdagent_hpc.configfile import ConfigFileError, load_config
    from mdagent_hpc.models import Request

    try:
        return load_config(path, Request, "a request file")
    except ConfigFileError as exc:
        raise MDAgentError(str(exc)) from None


def run(task: str | Request, *, site: str | None = None, model: str | None = None,
        max_attempts: int | None = None, answers: list[str] | None = None) -> Run:
    """Run the agent loop in this process and wait for it: generate, check, run and evaluate until it passes.

    `task` is a sentence or a `Request` (e.g. from `load_request`); `answers` replays recorded model answers
    instead of asking an endpoint. Returns the finished `Run` (look at `.verdict`, `.script`, `.observables`).
    """
    request = make_request(task, site=site, model=model, max_attempts=max_attempts, answers=answers)
    return _launch(request, daemon=False)


def submit(task: str | Request, *, site: str | None = None, model: str | None = None,
           max_attempts: int | None = None) -> Run:
    """Hand the agent loop to the AiiDA daemon (starting it if needed) and return at once; follow with `get_run`."""
    request = make_request(task, site=site, model=model, max_attempts=max_attempts)
    if request.answers:
        raise MDAgentError("a request with recorded answers runs in this process; use run(), not submit()")
    return _launch(request, daemon=True)


def _launch(request: Request, daemon: bool) -> Run:
    """Start the agent run in this process (waiting for it) or hand it to the daemon; the `Run` as it is then."""
    load_profile()
    from mdagent_hpc.provenance.runs import read_run
    from mdagent_hpc.workflows.launch import LaunchError, run_request, submit_request

    try:
        node = (submit_request if daemon else run_request)(request)
    except LaunchError as exc:
        raise MDAgentError(str(exc)) from None
    return read_run(node)  # made here, by this caller


def get_run(pk: int | str, *, caller: Caller | None = None) -> Run:
    """One agent run (by pk or UUID): task, verdict, the passed script, its evaluation and observables, attempts."""
    load_profile()
    from mdagent_hpc.provenance import NotFound
    from mdagent_hpc.provenance.runs import NotAnAgentRun, get_run

    try:
        return get_run(_caller(caller), pk)
    except NotFound:
        raise MDAgentError(f"no node with pk {pk}; `mdagent runs` (or list_runs()) lists the runs") from None
    except NotAnAgentRun as exc:
        raise MDAgentError(str(exc)) from None


def list_runs(limit: int = 20, *, verdict: str | None = None, site: str | None = None,
              task_contains: str | None = None, caller: Caller | None = None) -> list[Run]:
    """Recent agent runs, newest first; filter by verdict (running, passed, failed), site or words of the task."""
    if verdict is not None and verdict not in ("running", "passed", "failed"):
        raise MDAgentError(f"verdict {verdict!r} is not one of running, passed, failed")
    if not isinstance(limit, int) or limit < 1:
        raise MDAgentError(f"limit must be a positive whole number, not {limit!r}")
    load_profile()
    from mdagent_hpc.provenance.runs import list_runs as query

    return query(_caller(caller), limit=limit, verdict=verdict, site=site, task_contains=task_contains)


# -- provenance queries (docs/queries.md) -------------------------------------------------------------------
def query_runs(**filters) -> Any:
    """Past runs matching `filters`, as a pandas DataFrame, one row per run (docs/queries.md).

    Filters: task, model, potential (substring; "re:PATTERN" for a regular expression), elements ("Cu,Ni" or a
    list: all of them), pair_style, md5, units, ensemble, site, user, verdict, grade, stop, fault, finding, sweep,
    reward / attempts / seconds ("0.5..", "..2", "1..3", a number or a (low, high) tuple), params and obs (dicts
    of name -> value or range), since / until ("7d", "2026-11-01", a datetime); sort ("-ctime", "reward",
    "obs.temp_final", ...) and limit (50). Observables and parameters are columns `obs.NAME` and `param.NAME`.
    """
    import pandas as pd

    from mdagent_hpc.provenance.query import ROW_FIELDS

    rows = find_runs(**filters)
    flat = []
    for r in rows:
        extra = {f"obs.{k}": v for k, v in r["obs"].items()} | {f"param.{k}": v for k, v in r["params"].items()}
        flat.append({k: v for k, v in r.items() if k not in ("obs", "params")} | extra)
    columns = [c for c in ROW_FIELDS if c not in ("obs", "params")]
    frame = pd.DataFrame(flat, columns=columns + sorted({k for r in flat for k in r} - set(columns)))
    frame["ctime"] = pd.to_datetime(frame["ctime"])
    return frame


def find_runs(*, caller: Caller | None = None, **filters) -> list[dict]:
    """What `query_runs` finds, as JSON-ready dicts (`obs` and `params` nested): one per run."""
    from mdagent_hpc.provenance.filters import QueryError, build_query

    try:
        query = build_query(**filters)
    except QueryError as exc:
        raise MDAgentError(str(exc)) from None
    load_profile()
    from mdagent_hpc.provenance.query import search

    return search(query, _caller(caller))


def diff_runs(a: int | str, b: int | str, *, caller: Caller | None = None) -> dict:
    """Run against run ("42") or attempt against attempt ("42:1", "42:2"): `script_diff` (unified), `settings`
    that differ ([key, a, b]), `observables` side by side ([name, a, b, b - a])."""
    load_profile()
    from mdagent_hpc.provenance.query import NoSuchRun, diff
    from mdagent_hpc.provenance.runs import NotAnAgentRun

    try:
        return diff(_caller(caller), a, b)
    except (NoSuchRun, NotAnAgentRun, ValueError) as exc:
        raise MDAgentError(str(exc)) from None


def plot_run(run: int | str, out: str | Path | None = None, *, caller: Caller | None = None) -> Path:
    """Thermo quantities against step (or time) for every run segment of a run's passed (else last) attempt, or
    of attempt N ("42:2"), as a PNG; returns its path (default: run-PK[-N].png here)."""
    load_profile()
    from mdagent_hpc.provenance.plot import plot_thermo
    from mdagent_hpc.provenance.query import NoSuchRun, attempt_log
    from mdagent_hpc.provenance.runs import NotAnAgentRun

    try:
        title, log = attempt_log(_caller(caller), run)
        path = Path(out) if out else Path(f"run-{str(run).replace(':', '-')}.png")
        return plot_thermo(log, path, title)
    except (NoSuchRun, NotAnAgentRun, ValueError) as exc:
        raise MDAgentError(str(exc)) from None


def index_runs(redo: bool = False, progress=None) -> tuple[int, list[str]]:
    """Record the query fields of past runs that lack them (all with `redo`); on PostgreSQL also the indexes.
    Returns (runs recorded, problems)."""
    load_profile()
    from mdagent_hpc.provenance.query import ensure_indexes
    from mdagent_hpc.provenance.query import index_runs as backfill

    ensure_indexes()
    return backfill(redo=redo, progress=progress)


# -- parameter sweeps (docs/sweeps.md) ----------------------------------------------------------------------
def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read a sweep spec file (YAML with the fields of `SweepSpec`, e.g. workflows/sweeps/NAME.yaml)."""
    from mdagent_hpc.configfile import ConfigFileError, load_config
    from mdagent_hpc.sweep.spec import SweepSpec

    try:
        return load_config(path, SweepSpec, "a sweep spec")
    except ConfigFileError as exc:
        raise MDAgentError(str(exc)) from None


def propose_sweep(study: str, *, site: str | None = None, model: str | None = None) -> SweepSpec:
    """Ask the model for the sweep spec of a study in plain language (structured output through the script
    generator's client: its fallbacks, learnt refusals and context budget)."""
    from mdagent_hpc.llm import LLMError, load_llm_settings
    from mdagent_hpc.llm.structured import ask_structured
    from mdagent_hpc.sweep.spec import SweepProposal, SweepSpec, proposal_messages

    if not isinstance(study, str) or len(study.split()) < 3:
        raise MDAgentError("describe the study in a sentence, e.g. \"thermal expansion of Al with EAM from 300 to "
                           "900 K every 100 K at zero pressure\"")
    try:
        settings = load_llm_settings({"model": model} if model else {})
        proposal = ask_structured(settings, proposal_messages(study), SweepProposal, "sweep spec")
    except LLMError as exc:
        raise MDAgentError(str(exc)) from None
    return SweepSpec(**proposal.model_dump(), site=site, model=model, description=study)


def plan_sweep(spec: SweepSpec) -> SweepPlan:
    """What a sweep would run where: points, probe points, engine and why, estimated core-hours; checks the limits."""
    from mdagent_hpc.workflows.launch import LaunchError
    from mdagent_hpc.workflows.sweep_launch import plan_sweep as plan

    try:
        return plan(spec)
    except LaunchError as exc:
        raise MDAgentError(str(exc)) from None


def sweep(spec: str | Path | SweepSpec, *, site: str | None = None, daemon: bool = False) -> SweepRun:
    """Run a sweep: a `SweepSpec`, a spec file, or a study in plain language (the model proposes the spec).

    In this process it waits for the end (the table in `.rows`); with `daemon=True` it returns at once (follow it
    with `get_sweep`).
    """
    from mdagent_hpc.sweep.spec import SweepSpec

    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        spec = load_sweep_spec(spec)
    elif isinstance(spec, str):
        spec = propose_sweep(spec, site=site)
    elif not isinstance(spec, SweepSpec):
        raise MDAgentError(f"a sweep is a SweepSpec, a spec file or a sentence, not {type(spec).__name__}")
    if site is not None:
        spec = spec.model_copy(update={"site": site})
    load_profile()
    from mdagent_hpc.workflows.launch import LaunchError
    from mdagent_hpc.workflows.sweep_launch import run_sweep, submit_sweep

    try:
        node = submit_sweep(spec) if daemon else run_sweep(spec)
    except LaunchError as exc:
        raise MDAgentError(str(exc)) from None
    from mdagent_hpc.provenance.sweeps import read_sweep

    return read_sweep(node)  # made here, by this caller


def get_sweep(pk: int | str, *, caller: Caller | None = None) -> SweepRun:
    """One sweep (by pk or UUID): progress, verdict, LLM calls, the template, the table rows."""
    load_profile()
    from mdagent_hpc.provenance import NotFound
    from mdagent_hpc.provenance.sweeps import NotASweep, get_sweep

    try:
        return get_sweep(_caller(caller), pk)
    except NotFound:
        raise MDAgentError(f"no node with pk {pk}; `mdagent sweep status` lists the sweeps") from None
    except NotASweep as exc:
        raise MDAgentError(str(exc)) from None


def list_sweeps(limit: int = 20, *, caller: Caller | None = None) -> list[SweepRun]:
    """Recent sweeps, newest first."""
    if not isinstance(limit, int) or limit < 1:
        raise MDAgentError(f"limit must be a positive whole number, not {limit!r}")
    load_profile()
    from mdagent_hpc.provenance.sweeps import list_sweeps as query

    return query(_caller(caller), limit)


def export_sweep(pk: int | str, folder: str | Path | None = None, *, caller: Caller | None = None) -> dict[str, str]:
    """Write a sweep's table (CSV, JSON) and plot (PNG) to `folder` (default: MDAGENT_HOME/sweeps/PK); their paths."""
    from mdagent_hpc.home import mdagent_home
    from mdagent_hpc.provenance.sweeps import export_sweep as export

    found = get_sweep(pk, caller=caller)
    return export(_caller(caller), found.pk, Path(folder) if folder else mdagent_home() / "sweeps" / str(found.pk))


# -- the tools ------------------------------------------------------------------------------------------------
def check(script: str | Path, *, run_dir: str | Path | None = None, dry_run: bool = True,
          max_atoms: int | None = None, max_steps: int | None = None) -> PreflightReport:
    """Preflight a LAMMPS script: parse, sandbox policy, potentials, static checks and a `lmp -skiprun` dry run.

    Problems in the script are in the report (`.ok`, `.diagnostics`); only a file that is not a script raises.
    """
    from mdagent_hpc.lammps.install import LammpsNotFound
    from mdagent_hpc.lammps.preflight import preflight
    from mdagent_hpc.models import Limits

    script = Path(script)
    if script.is_dir():
        raise MDAgentError(f"{script} is a folder; give the input script in it (e.g. {script}/in.lammps)")
    if not script.is_file():
        raise MDAgentError(f"{script}: no such script")
    if run_dir is not None and not Path(run_dir).is_dir():
        raise MDAgentError(f"run folder {run_dir} does not exist")
    limits = Limits(**{k: v for k, v in {"max_atoms": max_atoms, "max_steps": max_steps}.items() if v})
    try:
        report = preflight(script, Path(run_dir) if run_dir else None, limits=limits, dry=dry_run)
    except LammpsNotFound as exc:
        raise MDAgentError(str(exc)) from None
    unreadable = [d for d in report.diagnostics if d.code == "script.unreadable"]
    if unreadable:
        raise MDAgentError(unreadable[0].message)
    return report


def evaluate(log: str | Path, script: str | Path | None = None) -> Evaluation:
    """Judge a finished run from its LAMMPS log (and, for thermostat targets, its input script)."""
    from mdagent_hpc.lammps.evaluate import evaluate as judge
    from mdagent_hpc.lammps.log import LogError, read_log
    from mdagent_hpc.lammps.parser import ScriptError, parse_script

    try:
        parsed_log = read_log(log)
        parsed_script = parse_script(Path(script)) if script else None
    except (LogError, ScriptError) as exc:
        raise MDAgentError(str(exc)) from None
    return judge(parsed_log, parsed_script)


_ELEMENT = re.compile(r"[A-Z][a-z]?")


def find_potentials(elements: str | list[str], style: str | None = None) -> list[PotentialEntry]:
    """Potential files here covering all `elements` ("Cu Ni" or ["Cu", "Ni"]), best match first."""
    from mdagent_hpc.lammps.potentials import find_potentials as search

    symbols = elements.split() if isinstance(elements, str) else list(elements)
    bad = [e for e in symbols if not isinstance(e, str) or not _ELEMENT.fullmatch(e)]
    if bad or not symbols:
        raise MDAgentError(f"{', '.join(map(str, bad)) or 'nothing'} is not an element symbol (write Cu, Ni, ...)")
    return search(symbols, style)


# -- setup ----------------------------------------------------------------------------------------------------
_loaded: dict[str, Any] = {}


def load_profile():
    """Load mdagent's AiiDA profile (creating it, its `local` computer and LAMMPS code on first use)."""
    from mdagent_hpc.home import HomeError, ensure_home, mdagent_home

    key = str(mdagent_home())
    if key in _loaded:
        return _loaded[key]
    from mdagent_hpc.execution.profile import ProfileError, ensure_profile

    try:
        ensure_home()
        _loaded[key] = ensure_profile()
    except (HomeError, ProfileError) as exc:
        raise MDAgentError(str(exc)) from None
    return _loaded[key]


def cancel(pk: int | str, by: str | None = None) -> str:
    """Stop a running agent run or sweep and everything it started (its scheduler jobs and pilot blocks are
    cancelled); what happened, in one sentence. `by` names who asked (default: this account)."""
    load_profile()
    import getpass

    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from mdagent_hpc.execution.cancel import CancelError
    from mdagent_hpc.execution.cancel import cancel as stop

    try:
        node = orm.load_node(int(pk))
    except (NotExistent, MultipleObjectsError, ValueError, TypeError, OverflowError):
        raise MDAgentError(f"no run or sweep with pk {pk}; `mdagent runs` lists the runs") from None
    if not isinstance(node, orm.WorkflowNode):
        raise MDAgentError(f"node {pk} is not a run or a sweep; `mdagent runs` lists the runs")
    top = node
    while top.caller is not None:
        top = top.caller
    if top.pk != node.pk and not node.is_terminated:
        raise MDAgentError(f"{pk} is a step of run or sweep {top.pk}: cancel that (`mdagent cancel {top.pk}`)")
    try:
        return "run " + stop(node, by or getpass.getuser())
    except CancelError as exc:
        raise MDAgentError(str(exc)) from None


# -- a shared server (docs/deploy.md): with MDAGENT_SERVER set, these go through it (mdagent_hpc/remote.py) --------
def _through_server(name: str, local):
    import functools

    @functools.wraps(local)
    def call(*args, **kwargs):
        from mdagent_hpc.settings import env

        if env("MDAGENT_SERVER"):
            from mdagent_hpc import remote

            return getattr(remote, name)(*args, **kwargs)
        return local(*args, **kwargs)

    return call


for _name in ("run", "submit", "get_run", "list_runs", "find_runs", "diff_runs", "plot_run", "index_runs",
              "plan_sweep", "sweep", "get_sweep", "list_sweeps", "export_sweep", "load_profile", "cancel"):
    globals()[_name] = _through_server(_name, globals()[_name])
__all__.append("cancel")
