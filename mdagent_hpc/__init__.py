"""mdagent-hpc: LLM-agent LAMMPS workflows on HPC clusters, with AiiDA provenance.

The Python API (docs/python.md) is importable from here; its functions and the models they return are loaded on
first use, so `import mdagent_hpc` stays fast:

    from mdagent_hpc import run, get_run, list_runs, check, evaluate, find_potentials
"""

__version__ = "0.1.0"

_API = (
    "MDAgentError",
    "cancel",
    "check",
    "diff_runs",
    "evaluate",
    "find_potentials",
    "find_runs",
    "get_run",
    "index_runs",
    "list_runs",
    "load_profile",
    "load_request",
    "make_request",
    "plot_run",
    "query_runs",
    "run",
    "submit",
    "export_sweep",
    "get_sweep",
    "list_sweeps",
    "load_sweep_spec",
    "plan_sweep",
    "propose_sweep",
    "sweep",
    "add_site",
    "list_sites",
    "test_site",
    "serve_model",
    "wait_for_model",
    "llm_job_script",
    "list_endpoints",
    "get_endpoint",
    "endpoint_status",
    "stop_endpoint",
    "bench_codegen",
    "bench_qa",
    "bench_report",
    "list_benches",
    "export_trajectories",
    "check_image",
    "ask",
)
_MODELS = (
    "Attempt",
    "Diagnostic",
    "Evaluation",
    "Finding",
    "Job",
    "Limits",
    "LoopPolicy",
    "PreflightReport",
    "Request",
    "Run",
    "Usage",
)

__all__ = [*_API, *_MODELS]


def __getattr__(name: str):
    if name in _API:
        from mdagent_hpc import api

        return getattr(api, name)
    if name in _MODELS:
        from mdagent_hpc import models

        return getattr(models, name)
    raise AttributeError(f"module 'mdagent_hpc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
