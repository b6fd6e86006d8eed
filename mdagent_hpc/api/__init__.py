"""The Python API, for notebooks and scripts: `from mdagent_hpc import run, get_run, check, ...`.

Each function resolves its inputs once (a request, a sweep spec, query filters: `requests.py`; a mistake is one
`MDAgentError` sentence before anything runs), then calls its backend, chosen on every call: `local.py` (this
machine's AiiDA profile) or, when MDAGENT_SERVER is set, `remote.py` (the group's shared server, with your key).
The tools that need neither (`check`, `evaluate`, `find_potentials`) are in `tools.py`. They return the shared
models (`Run`, `SweepRun`, `PreflightReport`, `Evaluation`, ...).

Heavy imports (AiiDA, LAMMPS tools, pydantic models) happen inside the functions, so `import mdagent_hpc` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdagent_hpc.api.requests import load_request, load_sweep_spec, make_request, propose_sweep, sweep_spec
from mdagent_hpc.api.tools import check, evaluate, find_potentials
from mdagent_hpc.errors import MDAgentError

if TYPE_CHECKING:
    from mdagent_hpc.models import Request, Run
    from mdagent_hpc.provenance import Caller
    from mdagent_hpc.sweeps.results import SweepRun
    from mdagent_hpc.sweeps.spec import SweepSpec
    from mdagent_hpc.workflows.sweep_launch import SweepPlan

__all__ = [
    "MDAgentError",
    "cancel",
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
VERDICTS = ("running", "passed", "failed")


def _remote() -> bool:
    """Whether calls go through a shared server (MDAGENT_SERVER), asked on every call."""
    from mdagent_hpc.settings import env

    return bool(env("MDAGENT_SERVER"))


def _backend():
    if _remote():
        from mdagent_hpc.api import remote

        return remote
    from mdagent_hpc.api import local

    return local


def _positive(limit: Any) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise MDAgentError(f"limit must be a positive whole number, not {limit!r}")
    return limit


# -- the agent ------------------------------------------------------------------------------------------------
def run(
    task: str | Request,
    *,
    site: str | None = None,
    model: str | None = None,
    max_attempts: int | None = None,
    answers: list[str] | None = None,
) -> Run:
    """Run the agent loop and wait for it: generate, check, run and evaluate until it passes.

    `task` is a sentence or a `Request` (e.g. from `load_request`); `answers` replays recorded model answers
    instead of asking an endpoint (in this process only). Returns the finished `Run` (`.verdict`, `.script`,
    `.observables`). Through a server, progress is shown on stderr and Ctrl-C cancels the run.
    """
    request = make_request(task, site=site, model=model, max_attempts=max_attempts, answers=answers)
    if request.answers and _remote():
        raise MDAgentError("a request with recorded answers runs only in your own process; unset MDAGENT_SERVER")
    return _backend().run(request)


def submit(
    task: str | Request, *, site: str | None = None, model: str | None = None, max_attempts: int | None = None
) -> Run:
    """Hand the agent loop to the AiiDA daemon (or the server) and return at once; follow with `get_run`."""
    request = make_request(task, site=site, model=model, max_attempts=max_attempts)
    return _backend().submit(request)


def get_run(pk: int | str, *, caller: Caller | None = None) -> Run:
    """One agent run (by pk or UUID): task, verdict, the passed script, its evaluation and observables, attempts."""
    return _backend().get_run(pk, caller)


def list_runs(
    limit: int = 20,
    *,
    verdict: str | None = None,
    site: str | None = None,
    task_contains: str | None = None,
    caller: Caller | None = None,
) -> list[Run]:
    """Recent agent runs, newest first; filter by verdict (running, passed, failed), site or words of the task."""
    if verdict is not None and verdict not in VERDICTS:
        raise MDAgentError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    return _backend().list_runs(_positive(limit), verdict, site, task_contains, caller)


def cancel(pk: int | str, *, by: str | None = None) -> str:
    """Stop a running agent run or sweep and everything it started (its scheduler jobs and pilot blocks are
    cancelled); what happened, in one sentence. `by` names who asked (default: this account; a server knows)."""
    return _backend().cancel(pk, by)


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
    from mdagent_hpc.provenance.filters import build_query

    query = build_query(**filters)  # a bad filter is one sentence here, whichever backend answers (QueryError)
    if _remote():
        from mdagent_hpc.api import remote

        return remote.find_runs(filters)
    from mdagent_hpc.api import local

    return local.find_runs(query, caller)


def diff_runs(a: int | str, b: int | str, *, caller: Caller | None = None) -> dict:
    """Run against run ("42") or attempt against attempt ("42:1", "42:2"): `script_diff` (unified), `settings`
    that differ ([key, a, b]), `observables` side by side ([name, a, b, b - a])."""
    return _backend().diff_runs(a, b, caller)


def plot_run(run: int | str, out: str | Path | None = None, *, caller: Caller | None = None) -> Path:
    """Thermo quantities of every run segment of a run's passed (else last) attempt, or of attempt N ("42:2"), as a
    PNG on one continuous axis; returns its path (default: run-PK[-N].png here)."""
    return _backend().plot_run(run, out, caller)


def index_runs(redo: bool = False, progress=None) -> tuple[int, list[str]]:
    """Record the query fields of past runs that lack them (all with `redo`); on PostgreSQL also the indexes.
    Returns (runs recorded, problems). On the server's host only."""
    return _backend().index_runs(redo, progress)


# -- parameter sweeps (docs/sweeps.md) ----------------------------------------------------------------------
def plan_sweep(spec: str | Path | SweepSpec, *, site: str | None = None) -> SweepPlan:
    """What a sweep would run where: points, probe points, engine and why, estimated core-hours; checks the limits."""
    return _backend().plan_sweep(sweep_spec(spec, site))


def sweep(spec: str | Path | SweepSpec, *, site: str | None = None, daemon: bool = False) -> SweepRun:
    """Run a sweep: a `SweepSpec`, a spec file, or a study in plain language (the model proposes the spec, here).

    Without `daemon` it waits for the end (the table in `.rows`); with `daemon=True` it returns at once (follow it
    with `get_sweep`).
    """
    return _backend().sweep(sweep_spec(spec, site), daemon)


def get_sweep(pk: int | str, *, caller: Caller | None = None) -> SweepRun:
    """One sweep (by pk or UUID): progress, verdict, LLM calls, the template, the table rows."""
    return _backend().get_sweep(pk, caller)


def list_sweeps(limit: int = 20, *, caller: Caller | None = None) -> list[SweepRun]:
    """Recent sweeps, newest first."""
    return _backend().list_sweeps(_positive(limit), caller)


def export_sweep(pk: int | str, folder: str | Path | None = None, *, caller: Caller | None = None) -> dict[str, str]:
    """Write a sweep's table (CSV, JSON) and plot (PNG) to `folder`; their paths. Default folder: MDAGENT_HOME/
    sweeps/PK here, ./sweep-PK through a server."""
    return _backend().export_sweep(pk, folder, caller)


# -- setup ----------------------------------------------------------------------------------------------------
def load_profile():
    """Load mdagent's AiiDA profile (creating it, its `local` computer and LAMMPS code on first use); through a
    server, nothing (the profile is the server's)."""
    return _backend().load_profile()


# -- what only this machine does (sites, served models, benchmarks, training data) and the tools beside them ----
# Each refuses, in one sentence, what a shared server cannot do for it when MDAGENT_SERVER is set (local_only.py).
_ELSEWHERE = {  # loaded on first use, so that `import mdagent_hpc` stays as fast as it was
    **dict.fromkeys(("bench_codegen", "bench_qa", "bench_report", "list_benches"), "bench"),
    "export_trajectories": "export",
    "check_image": "images",
    "ask": "questions",
    **dict.fromkeys(
        (
            "endpoint_status",
            "get_endpoint",
            "list_endpoints",
            "llm_job_script",
            "serve_model",
            "stop_endpoint",
            "wait_for_model",
        ),
        "serving",
    ),
    **dict.fromkeys(("add_site", "list_sites", "test_site"), "sites"),
}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(f"mdagent_hpc.api.{_ELSEWHERE[name]}"), name)
    raise AttributeError(f"module 'mdagent_hpc.api' has no attribute {name!r}")


__all__ += [
    "add_site",
    "ask",
    "bench_codegen",
    "bench_qa",
    "bench_report",
    "check_image",
    "endpoint_status",
    "export_trajectories",
    "get_endpoint",
    "list_benches",
    "list_endpoints",
    "list_sites",
    "llm_job_script",
    "serve_model",
    "stop_endpoint",
    "test_site",
    "wait_for_model",
]
