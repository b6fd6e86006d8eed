"""Orchestration overhead of one agent run that passes in one attempt (SQLite profile, local LAMMPS).

A FakeOpenAIServer answers with mdagent_hpc/examples/demo/good.lammps, so every run is: generate, preflight, LAMMPS
CalcJob, evaluate. In a fresh MDAGENT_HOME (temporary; the first run creates the AiiDA profile) it does one
warm-up run, excluded, then `--runs` measured runs twice over:

- in-process: `run_get_node(AgentWorkChain, ...)` as `mdagent run` does, without Python start-up;
- CLI: `python -m mdagent_hpc.cli run TASK --json`, the whole command.

Per run: total wall time, LAMMPS's own time (the "Loop time" lines of the retrieved log.lammps; its "Total
wall time" has a 1 s resolution), the endpoint's time (`latency_s` of the generation's `response`), and the
orchestration overhead = total - LAMMPS - endpoint; then a per-step breakdown from the process nodes'
ctime/mtime, the CalcJob split by the files in its remote folder (_aiidasubmit.sh written = uploaded,
log.lammps last written = LAMMPS done) and its `scheduler_lastchecktime` (the job seen finished). The target
is an in-process overhead under 3 s. Timings are printed, never asserted.

A local runner has no broker, so a workchain learns that a child it awaits has finished only by polling; `mdagent
run` and this benchmark use `run_here`, which polls every LOCAL_POLL_SECONDS (0.1 s).

    .venv/bin/python bench/loop_overhead.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from openai_server import FakeOpenAIServer  # noqa: E402

TASK = "Heat a small Cu crystal with EAM to 800 K in NVT"
GOOD = json.dumps({"script": (REPO / "mdagent_hpc" / "examples" / "demo" / "good.lammps").read_text(), "files": [],
                   "potentials": [], "notes": ""})
TARGET_S = 3.0
STEPS = ("generate_1", "preflight_1", "run_1", "evaluate_1")


def run_in_process() -> tuple[float, int]:
    """One agent run in this process, as `mdagent run` does it; (seconds, pk)."""
    from aiida import orm

    from mdagent_hpc.execution.profile import LOCAL_CODE, LOCAL_COMPUTER, run_here
    from mdagent_hpc.llm import load_llm_settings
    from mdagent_hpc.models import LoopPolicy
    from mdagent_hpc.workflows.agent import AgentWorkChain
    from mdagent_hpc.workflows.generate import STORED_SETTINGS

    start = time.monotonic()
    settings = load_llm_settings()
    llm = {k: v for k, v in settings.model_dump(mode="json").items() if k in STORED_SETTINGS and v is not None}
    inputs = {"task": orm.Str(TASK), "code": orm.load_code(f"{LOCAL_CODE}@{LOCAL_COMPUTER}"),
              "llm": orm.Dict(llm), "loop": orm.Dict(LoopPolicy(max_attempts=1).model_dump(mode="json"))}
    _, node = run_here(AgentWorkChain, **inputs)
    return time.monotonic() - start, node.pk


def run_cli() -> tuple[float, int]:
    """One agent run through the command line; (seconds, pk)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mdagent_hpc.cli", "run", TASK, "--max-attempts", "1", "--json"],
                          capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"the CLI run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)["pk"]


def analyse(pk: int, total: float) -> dict:
    """Times of one finished agent run, from its nodes."""
    from aiida import orm
    from aiida.common.links import LinkType

    from mdagent_hpc.lammps.log import parse_log

    node = orm.load_node(pk)
    if not node.is_finished_ok:
        sys.exit(f"agent run {pk} did not pass: {node.exit_status} {node.exit_message}")
    called = {link.link_label: link.node for link in
              node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()}
    calc = called["run_1"]
    log = parse_log(calc.outputs.retrieved.base.repository.get_object_content("log.lammps", mode="r"))
    lammps = sum(b.loop_time or 0.0 for b in log.blocks)
    endpoint = called["generate_1"].outputs.response.get_dict()["latency_s"]
    steps = {"setup": (called["generate_1"].ctime - node.ctime).total_seconds()}
    previous = None
    for label in STEPS:
        step = called[label]
        if previous is not None:
            steps[f"gap {previous}>{label}"] = (step.ctime - called[previous].mtime).total_seconds()
        steps[label] = (step.mtime - step.ctime).total_seconds()
        previous = label
    steps["finalize"] = (node.mtime - called[previous].mtime).total_seconds()
    workdir = Path(calc.get_remote_workdir())
    uploaded = datetime.fromtimestamp((workdir / "_aiidasubmit.sh").stat().st_mtime, tz=UTC)
    done = datetime.fromtimestamp((workdir / "log.lammps").stat().st_mtime, tz=UTC)
    seen = calc.get_scheduler_lastchecktime()
    steps["  run_1: prepare+upload"] = (uploaded - calc.ctime).total_seconds()
    steps["  run_1: job (wrapper+bwrap+lmp)"] = (done - uploaded).total_seconds()
    steps["  run_1: until job seen done"] = (seen - done).total_seconds()
    steps["  run_1: retrieve+parse+seal"] = (calc.mtime - seen).total_seconds()
    steps["workchain node"] = (node.mtime - node.ctime).total_seconds()
    return {"pk": pk, "total": total, "lammps": lammps, "endpoint": endpoint,
            "overhead": total - lammps - endpoint, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs per mode (after one warm-up)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mdagent-bench-home-") as home, FakeOpenAIServer() as server:
        os.environ["MDAGENT_HOME"] = home
        os.environ.pop("MDAGENT_AIIDA_PROFILE", None)
        os.environ.update({"MDAGENT_LLM_BASE_URL": server.base_url, "MDAGENT_LLM_MODEL": "fake-model",
                           "MDAGENT_LLM_MAX_RETRIES": "0"})
        print(f"MDAGENT_HOME={home}; endpoint {server.base_url}", flush=True)

        server.add(GOOD)
        seconds, _ = run_cli()
        print(f"warm-up (CLI, creates the profile): {seconds:.2f} s", flush=True)
        from mdagent_hpc.execution.profile import ensure_profile

        ensure_profile()  # before any other aiida import, which would fix the config folder at ~/.aiida
        from mdagent_hpc.execution.profile import LOCAL_POLL_SECONDS

        logging.getLogger("aiida").setLevel(logging.WARNING)  # no REPORT lines from the in-process runs
        print(f"local runner polls every {LOCAL_POLL_SECONDS} s", flush=True)
        server.add(GOOD)
        seconds, _ = run_in_process()
        print(f"warm-up (in-process, imports and caches): {seconds:.2f} s", flush=True)

        results: dict[str, list[dict]] = {"in-process": [], "cli": []}
        for i in range(args.runs):
            for mode, func in (("in-process", run_in_process), ("cli", run_cli)):
                server.add(GOOD)
                r = analyse(*reversed(func()))
                results[mode].append(r)
                print(f"run {i + 1} {mode:10} pk {r['pk']:4}: total {r['total']:6.2f} s  LAMMPS {r['lammps']:5.2f} s"
                      f"  endpoint {r['endpoint']:5.3f} s  overhead {r['overhead']:5.2f} s", flush=True)

    print("\nsummary (median over runs, seconds)")
    print(f"{'':12}{'total':>8}{'LAMMPS':>8}{'endpoint':>10}{'overhead':>10}")
    for mode, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("total", "lammps", "endpoint", "overhead")}
        print(f"{mode:12}{med['total']:8.2f}{med['lammps']:8.2f}{med['endpoint']:10.3f}{med['overhead']:10.2f}")
    cli = statistics.median(r["total"] for r in results["cli"])
    inproc = statistics.median(r["total"] for r in results["in-process"])
    print(f"CLI start-up and profile load (CLI total - in-process total): {cli - inproc:.2f} s")

    print("\nper step, in-process (median s, from node ctime/mtime)")
    for key in results["in-process"][0]["steps"]:
        values = [r["steps"][key] for r in results["in-process"]]
        print(f"  {key:34}{statistics.median(values):7.3f}")
    overhead = statistics.median(r["overhead"] for r in results["in-process"])
    print(f"\ntarget in-process orchestration overhead < {TARGET_S:.0f} s (SQLite profile): "
          f"{'MET' if overhead < TARGET_S else 'NOT MET'} ({overhead:.2f} s)")


if __name__ == "__main__":
    main()
