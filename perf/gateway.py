"""What the LLM gateway costs: added latency per request and streaming throughput, gateway against direct.

In one run, against the same upstream:

1. latency: `-n` (default 200) small non-streaming chat completions one after the other, alternating direct and
   through the gateway; p50 and p99 of each and what the gateway adds (target: p50 added < 5 ms);
2. throughput: 32 (`-c`) concurrent streaming chat completions, `--rounds` times, direct then through the gateway,
   alternated twice; completed requests and streamed chunks per second (target: gateway >= 0.95 of direct).

The upstream is perf/fake_upstream.py in its own process by default (a bare ASGI app on uvicorn), streaming
`--tokens` chunks `--chunk-delay` s apart (0, the default: as fast as it can, so the gateway, not the model, is
what is measured; 0.02 is like a model generating 50 tokens/s per request); or a real
server with `--upstream URL [--upstream-key KEY] [--model M]` (then `--max-tokens` per request, and for vLLM
`--ignore-eos` so every stream has that length). The gateway is
`mdagent gateway serve` in its own process, with a fresh users database and audit log in a temporary folder, both
written on every request as in production. Both processes are stopped by their PIDs at the end. Times are printed,
never asserted.

    .venv/bin/python perf/gateway.py [-n 200] [-c 32] [--rounds 4] [--tokens 128] [--chunk-delay 0]
    .venv/bin/python perf/gateway.py --upstream http://127.0.0.1:8000/v1 --upstream-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mdagent_hpc.accounts.store import Store  # noqa: E402


def start(cmd: list[str], env: dict, log: Path, ready: str) -> tuple[subprocess.Popen, str]:
    """Start a process, wait for `ready` in its output; returns it and the word that follows `ready`."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text()
        if ready in text:
            return proc, text.split(ready, 1)[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop(proc)
    sys.exit(f"{cmd[2:4]} did not start:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def chat(client: httpx2.AsyncClient, url: str, key: str, body: dict) -> tuple[int, float, float]:
    """One chat completion: (streamed chunks (1 for a non-streaming answer), seconds to the first chunk, in all)."""
    headers = {"authorization": f"Bearer {key}"}
    start = time.perf_counter()
    if not body.get("stream"):
        response = await client.post(url, json=body, headers=headers)
        response.raise_for_status()
        took = time.perf_counter() - start
        return 1, took, took
    chunks, first, tail = 0, 0.0, b""
    async with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        async for raw in response.aiter_raw():  # counted on the bytes: the client must cost less than the gateway
            if not first:
                first = time.perf_counter() - start
            chunks += (tail + raw).count(b"data: ")  # a 5-byte tail holds no whole "data: ", so none counted twice
            tail = raw[-5:]
    return chunks - 1, first, time.perf_counter() - start  # less the closing data: [DONE]


async def latency(targets: dict[str, tuple[str, str]], body: dict, n: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in targets}
    async with httpx2.AsyncClient(timeout=120, trust_env=False) as client:
        for url, key in targets.values():  # warm-up: connections, caches
            for _ in range(5):
                await chat(client, url, key, body)
        for _ in range(n):
            for name, (url, key) in targets.items():
                _, _, took = await chat(client, url, key, body)
                times[name].append(took * 1000)
    return times


@dataclass
class Streams:
    """One throughput run: `concurrency` streams at a time, `rounds` x `concurrency` requests."""

    seconds: float
    chunks: int
    first_ms: list[float]  # per request: time to its first chunk
    total_ms: list[float]  # per request: time to its last
    warm_up_chunks: int  # streamed before the clock started (the gateway's CPU is measured over both)

    @property
    def requests_per_s(self) -> float:
        return len(self.total_ms) / self.seconds

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds


async def throughput(url: str, key: str, body: dict, concurrency: int, rounds: int) -> Streams:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(timeout=600, trust_env=False, limits=limits) as client:
        warm = await asyncio.gather(*(chat(client, url, key, body) for _ in range(concurrency)))  # connections
        left = concurrency * rounds
        run = Streams(0.0, 0, [], [], sum(chunks for chunks, _, _ in warm))

        async def worker():
            nonlocal left
            while left > 0:
                left -= 1
                chunks, first, took = await chat(client, url, key, body)
                run.chunks += chunks
                run.first_ms.append(first * 1000)
                run.total_ms.append(took * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - start
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="sequential requests per side for the latency")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="requests per stream slot in the throughput phase")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per side, alternated")
    parser.add_argument("--tokens", type=int, default=128, help="fake upstream: tokens (chunks) per answer")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="fake upstream: seconds between chunks")
    parser.add_argument("--upstream", help="a real OpenAI-compatible server instead of the fake, e.g. .../v1")
    parser.add_argument("--upstream-key", default=os.environ.get("MDAGENT_GATEWAY_UPSTREAM_KEY"))
    parser.add_argument("--model", help="model to ask (default: the first the upstream lists)")
    parser.add_argument("--max-tokens", type=int, default=64, help="real upstream: tokens per answer")
    parser.add_argument(
        "--ignore-eos",
        action="store_true",
        help="real vLLM upstream: always generate --max-tokens (equal streams; vLLM-only parameter)",
    )
    parser.add_argument("--budget", type=int, help="give the bench user a daily token budget (reserve and settle)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the users db, audit log and logs (removed at exit)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mdagent-bench-gateway-"))
    if not args.keep:
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    env = {**os.environ, "MDAGENT_HOME": str(tmp), "MDAGENT_USERS_DB": f"sqlite:///{tmp / 'users.db'}"}
    procs = []
    try:
        if args.upstream:
            upstream, upstream_key = args.upstream.rstrip("/"), args.upstream_key or "EMPTY"
        else:
            upstream_key = "bench-upstream-key"
            fake = [sys.executable, str(REPO / "perf" / "fake_upstream.py"), "--port", "0"]
            fake += ["--api-key", upstream_key, "--tokens", str(args.tokens), "--chunk-delay", str(args.chunk_delay)]
            proc, upstream = start(fake, env, tmp / "upstream.log", "serving at ")
            procs.append(proc)
        store = Store(env["MDAGENT_USERS_DB"])
        _, user_key = store.add_user("bench")
        if args.budget:
            store.set_quota("bench", tokens_per_day=args.budget)
        store.close()
        serve = [sys.executable, "-m", "mdagent_hpc.cli", "gateway", "serve", "--upstream", upstream, "--port", "0"]
        serve += ["--audit-log", str(tmp / "audit.jsonl")]
        proc, gateway = start(
            serve, {**env, "MDAGENT_GATEWAY_UPSTREAM_KEY": upstream_key}, tmp / "gateway.log", "gateway on "
        )
        procs.append(proc)
        model = (
            args.model
            or httpx2.get(
                f"{upstream}/models", headers={"authorization": f"Bearer {upstream_key}"}, trust_env=False
            ).json()["data"][0]["id"]
        )
        targets = {
            "direct": (f"{upstream}/chat/completions", upstream_key),
            "gateway": (f"{gateway}/chat/completions", user_key),
        }
        small = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1}
        streamed = {
            "model": model,
            "messages": [{"role": "user", "content": "Write a LAMMPS script."}],
            "stream": True,
            "max_tokens": args.max_tokens if args.upstream else args.tokens,
        }
        if args.ignore_eos:
            streamed |= {"ignore_eos": True, "min_tokens": args.max_tokens}

        print(
            f"upstream {upstream} ({'real' if args.upstream else 'fake'}, model {model}); gateway {gateway}",
            file=sys.stderr,
        )
        print(f"latency: {args.n} sequential requests per side ...", file=sys.stderr)
        times = asyncio.run(latency(targets, small, args.n))
        runs: dict[str, list[Streams]] = {"direct": [], "gateway": []}
        gateway_cpu: list[float] = []  # CPU seconds the gateway process used in each of its throughput runs
        for rep in range(args.repeats):
            for name, (url, key) in targets.items():
                print(
                    f"throughput {rep + 1}/{args.repeats} {name}: {args.concurrency} concurrent streams "
                    f"x {args.rounds} ...",
                    file=sys.stderr,
                )
                before = cpu_seconds(proc.pid)
                runs[name].append(asyncio.run(throughput(url, key, streamed, args.concurrency, args.rounds)))
                if name == "gateway":
                    gateway_cpu.append(cpu_seconds(proc.pid) - before)
    finally:
        for proc in reversed(procs):
            stop(proc)

    result = summarize(times, runs, gateway_cpu)
    audit = (tmp / "audit.jsonl").read_text().splitlines()
    result["audit_lines"] = len(audit)
    result["load_average"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    c = args.concurrency
    for name in ("direct", "gateway"):
        r = result[name]
        print(
            f"{name:8s} 1 request: p50 {r['p50_ms']:7.2f} ms p99 {r['p99_ms']:7.2f} ms | {c} streams: "
            f"{r['requests_per_s']:6.1f} req/s {r['chunks_per_s']:8.0f} chunks/s, per stream "
            f"p50 {r['stream_p50_ms']:7.1f} ms p95 {r['stream_p95_ms']:7.1f} ms (first chunk p50 "
            f"{r['first_p50_ms']:6.1f} ms)"
        )
    print(
        f"added by the gateway, 1 request: p50 {result['added_p50_ms']:.2f} ms, p99 {result['added_p99_ms']:.2f} ms; "
        f"{c} streams: p50 {result['added_stream_p50_ms']:.2f} ms (target < 5), "
        f"p95 {result['added_stream_p95_ms']:.2f} ms, first chunk p50 {result['added_first_p50_ms']:.2f} ms"
    )
    print(
        f"throughput ratio gateway/direct: {result['throughput_ratio']:.3f} (target >= 0.95; "
        f"each run: {', '.join(f'{x:.3f}' for x in result['ratios'])})"
    )
    print(
        f"gateway CPU: {result['gateway_cpu_us_per_chunk']:.1f} us per streamed chunk, so "
        f"{result['gateway_cores_needed']:.2f} of a core to keep up with the direct rate"
    )
    print(f"audit log: {len(audit)} lines" + (f"; users db and logs in {tmp}" if args.keep else ""))
    print(
        f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a busy machine lowers the ratio)"
    )


def summarize(times: dict[str, list[float]], runs: dict[str, list[Streams]], gateway_cpu: list[float]) -> dict:
    result = {name: {"p50_ms": percentile(t, 0.5), "p99_ms": percentile(t, 0.99)} for name, t in times.items()}
    result["added_p50_ms"] = result["gateway"]["p50_ms"] - result["direct"]["p50_ms"]
    result["added_p99_ms"] = result["gateway"]["p99_ms"] - result["direct"]["p99_ms"]
    for name, side in runs.items():
        total = [t for run in side for t in run.total_ms]
        first = [t for run in side for t in run.first_ms]
        result[name] |= {
            "requests_per_s": statistics.median(run.requests_per_s for run in side),
            "chunks_per_s": statistics.median(run.chunks_per_s for run in side),
            "stream_p50_ms": percentile(total, 0.5),
            "stream_p95_ms": percentile(total, 0.95),
            "first_p50_ms": percentile(first, 0.5),
        }
    for what in ("stream_p50", "stream_p95", "first_p50"):
        result[f"added_{what}_ms"] = result["gateway"][f"{what}_ms"] - result["direct"][f"{what}_ms"]
    # requests of equal length (the fake's fixed answer; --ignore-eos on vLLM), so requests/s is the work done; chunks
    # are not: vLLM puts several tokens in one chunk when its reader lags. Each gateway run against the direct run
    # just before it, so a change of the machine's load between runs moves both.
    result["ratios"] = [
        g.requests_per_s / d.requests_per_s for d, g in zip(runs["direct"], runs["gateway"], strict=True)
    ]
    result["throughput_ratio"] = statistics.median(result["ratios"])
    per_chunk = [cpu / (run.chunks + run.warm_up_chunks) for cpu, run in zip(gateway_cpu, runs["gateway"], strict=True)]
    result["gateway_cpu_us_per_chunk"] = statistics.median(per_chunk) * 1e6
    result["gateway_cores_needed"] = result["gateway_cpu_us_per_chunk"] * result["direct"]["chunks_per_s"] / 1e6
    return result


if __name__ == "__main__":
    main()
