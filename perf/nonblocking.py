"""Does a slow LLM call stall the other processes of the same daemon worker?

In a fresh MDAGENT_HOME profile, a daemon with ONE worker runs everything. A FakeOpenAIServer holds its first
answer for `--hang` seconds (default 20) before answering with a good script. The benchmark

1. submits K (`-k`, default 5) small calcfunctions (perf/_bench_processes.py:add) to the idle daemon, once
   as a warm-up, then again as the baseline, timing submission to all terminated;
2. submits an AgentWorkChain (with the inputs `mdagent run --daemon` builds), waits until the server has received its
   request (the generation is in flight, hanging), and submits the same K processes, timed the same way;
3. waits for the agent run to finish (it passes once the answer arrives);
4. the negative control (skip with --no-control): a process whose coroutine `run` calls time.sleep(hang)
   without awaiting (perf/_bench_processes.py:BlockingSleep), then the same K processes: this is what a
   blocking HTTP call would do to the worker;

and stops the daemon (also on error). It prints the times and their ratios to the baseline: near 1 means the
worker was not stalled; a stall shows as about the hang time. Timings are printed, never asserted.

    .venv/bin/python perf/nonblocking.py [-k 5] [--hang 20] [--no-control]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
from openai_server import FakeOpenAIServer  # noqa: E402

TASK = "Heat a small Cu crystal with EAM to 800 K in NVT"
GOOD = json.dumps(
    {
        "script": (REPO / "mdagent_hpc" / "examples" / "demo" / "good.lammps").read_text(),
        "files": [],
        "potentials": [],
        "notes": "",
    }
)


def submit_batch(k: int, tag: int) -> float:
    """Submit k small calcfunctions; seconds until all have terminated."""
    from _bench_processes import add
    from aiida import orm
    from aiida.engine import submit

    start = time.monotonic()
    nodes = [submit(add, x=orm.Int(tag), y=orm.Int(i)) for i in range(k)]
    submitted = time.monotonic() - start
    while not all(n.is_terminated for n in nodes):
        if time.monotonic() - start > 300:
            sys.exit("the small processes did not finish in 300 s")
        time.sleep(0.05)
    seconds = time.monotonic() - start
    bad = [n.pk for n in nodes if not n.is_finished_ok]
    print(
        f"  {k} processes: submitted in {submitted:.2f} s, all terminated after {seconds:.2f} s"
        + (f" (NOT ok: {bad})" if bad else ""),
        flush=True,
    )
    return seconds


def agent_inputs() -> dict:
    """The inputs `mdagent run` builds (workflows.launch)."""
    from mdagent_hpc.models import LoopPolicy, Request
    from mdagent_hpc.workflows.launch import agent_inputs as build

    return build(Request(task=TASK, loop=LoopPolicy(max_attempts=1)))


def blocking_control(k: int, hang: float) -> float:
    """The same batch while a process blocks the worker's event loop for `hang` seconds."""
    from _bench_processes import BlockingSleep
    from aiida import orm
    from aiida.engine import submit
    from plumpy import ProcessState

    blocker = submit(BlockingSleep, seconds=orm.Float(hang))
    print(f"control: submitted BlockingSleep({hang:.0f} s) pk {blocker.pk}; waiting until it runs ...", flush=True)
    deadline = time.monotonic() + 60
    while blocker.process_state != ProcessState.RUNNING:
        if time.monotonic() > deadline:
            sys.exit(f"the blocking process never started ({blocker.process_state})")
        time.sleep(0.05)
    print("control: the event loop is blocked. Same batch now:", flush=True)
    return submit_batch(k, 3)


def measure(server: FakeOpenAIServer, k: int, hang: float, control: bool) -> None:
    from aiida.engine import submit

    from mdagent_hpc.workflows.agent import AgentWorkChain

    print("warm-up (idle daemon):", flush=True)
    submit_batch(k, 0)
    print("baseline (idle daemon):", flush=True)
    baseline = submit_batch(k, 1)

    agent = submit(AgentWorkChain, **agent_inputs())
    print(f"submitted AgentWorkChain pk {agent.pk}; waiting for its LLM request ...", flush=True)
    deadline = time.monotonic() + 120
    while not server.requests:
        if time.monotonic() > deadline or agent.is_terminated:
            sys.exit(f"the agent run never called the endpoint ({agent.process_state}, {agent.exit_message})")
        time.sleep(0.05)
    requested = time.monotonic()
    print(f"request received; the endpoint hangs {hang:.0f} s. Same batch now:", flush=True)
    busy = submit_batch(k, 2)
    in_flight = time.monotonic() - requested
    generation_open = not agent.called or not agent.called[0].is_terminated
    print(
        f"  batch finished {in_flight:.2f} s after the request; generation still in flight: {generation_open}",
        flush=True,
    )

    deadline = time.monotonic() + hang + 120
    while not agent.is_terminated and time.monotonic() < deadline:
        time.sleep(0.5)
    state = "finished ok" if agent.is_finished_ok else f"{agent.process_state} {agent.exit_status}"
    print(f"agent run pk {agent.pk}: {state}, {time.monotonic() - requested:.1f} s after its request", flush=True)
    blocked = blocking_control(k, hang) if control else None

    print("\nsummary")
    print(f"{'':40}{'seconds':>10}")
    print(f"{f'{k} small processes, idle daemon':40}{baseline:10.2f}")
    print(f"{f'{k} small processes, LLM call hanging':40}{busy:10.2f}")
    print(f"{'  ratio to idle':40}{busy / baseline:10.2f}")
    if blocked is not None:
        print(f"{f'{k} small processes, loop blocked (control)':40}{blocked:10.2f}")
        print(f"{'  ratio to idle':40}{blocked / baseline:10.2f}")
    print(f"{'hang of the LLM call / of the control':40}{hang:10.2f}")
    stalled = in_flight >= hang or not generation_open
    print(
        f"verdict: {'STALLED' if stalled else 'not stalled'} (the batch finished while the generation was "
        f"{'in flight' if generation_open else 'already done'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", type=int, default=5, help="number of small processes per batch")
    parser.add_argument("--hang", type=float, default=20.0, help="seconds the endpoint holds its first answer")
    parser.add_argument("--no-control", action="store_true", help="skip the blocking negative control")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="mdagent-bench-home-") as home,
        FakeOpenAIServer([{"hang": args.hang, "content": GOOD}]) as server,
    ):
        # The daemon inherits this environment: set it all before starting it.
        os.environ["MDAGENT_HOME"] = home
        os.environ.pop("MDAGENT_AIIDA_PROFILE", None)
        os.environ.update(
            {
                "MDAGENT_LLM_BASE_URL": server.base_url,
                "MDAGENT_LLM_MODEL": "fake-model",
                "MDAGENT_LLM_MAX_RETRIES": "0",
                "MDAGENT_LLM_TIMEOUT": "60",
            }
        )
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH")) if p)
        print(f"MDAGENT_HOME={home}; endpoint {server.base_url}", flush=True)

        from mdagent_hpc.execution.profile import ensure_profile, start_daemon

        ensure_profile()  # before any other aiida import, which would fix the config folder at ~/.aiida
        from aiida.engine.daemon.client import get_daemon_client

        client = get_daemon_client()
        start = time.monotonic()
        start_daemon()
        try:
            print(
                f"daemon started with {client.get_number_of_workers()} worker in {time.monotonic() - start:.1f} s",
                flush=True,
            )
            measure(server, args.k, args.hang, not args.no_control)
        finally:
            client.stop_daemon(wait=True, timeout=60)  # a loaded machine answers slower than the 2 s default
            print("daemon stopped", flush=True)


if __name__ == "__main__":
    main()
