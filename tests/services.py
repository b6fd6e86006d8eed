"""Services the tests start once per session and share: the test Slurm cluster, an sshd on 127.0.0.1, a real
`vllm serve` (CPU build) with the tiny test model.

Each is started by the first test that asks for it and stopped at the end of the session, by the PIDs it wrote,
only if this session started it; a service that was already running is used and left running.
"""

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from mdagent_hpc.serving import llm_job, model_guard

REPO = Path(__file__).resolve().parents[1]
SSHD_STATE = "/tmp/mdagent-sshd-tests"


SLURM_PIDFILES = ("/run/slurmdbd.pid", "/run/slurmctld.pid", "/run/slurmd.pid")


def running(pidfile: str) -> bool:
    try:
        os.kill(int(Path(pidfile).read_text().split()[0]), 0)
        return True
    except (OSError, ValueError, IndexError):
        return False


@pytest.fixture(scope="session")
def slurm():
    """The test cluster; partition `debug`, accounting through slurmdbd.

    A cluster that was running before is used and left running; one started here is stopped at the end by the
    PIDs it wrote (munge too, unless it ran before).
    """
    slurm_before = any(running(p) for p in SLURM_PIDFILES)
    munge_before = running("/run/munge/munged.pid")
    started = subprocess.run(
        ["bash", str(REPO / "schedulers/slurm-local/start.sh")], capture_output=True, text=True, timeout=600
    )
    assert started.returncode == 0, started.stdout + started.stderr
    yield subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    if not slurm_before:
        stop = ["bash", str(REPO / "schedulers/slurm-local/stop.sh"), "--quiet"]
        subprocess.run(stop + (["--slurm-only"] if munge_before else []), check=True, timeout=120)


@pytest.fixture(scope="session")
def sshd():
    started = subprocess.run(
        ["bash", str(REPO / "schedulers/sshd-local/start.sh"), SSHD_STATE], capture_output=True, text=True, timeout=300
    )
    assert started.returncode == 0, started.stdout + started.stderr
    yield started.stdout.strip().splitlines()[-1]
    subprocess.run(["bash", str(REPO / "schedulers/sshd-local/stop.sh"), SSHD_STATE], capture_output=True)


# ---------------------------------------------------------------- vLLM (CPU build), built by scripts/vllm_env.sh
VLLM_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdagent-hpc"
VLLM_VENV = Path(os.environ.get("MDAGENT_VLLM_VENV") or VLLM_CACHE / "vllm-venv")
TINY_MODEL = VLLM_CACHE / "models" / "tiny-qwen2-v1"  # scripts/tiny_model.py TINY
VLLM_READY_TIMEOUT_S = float(os.environ.get("MDAGENT_TEST_VLLM_TIMEOUT", "420"))  # 70-95 s measured, busy machine


@dataclasses.dataclass(frozen=True)
class VllmServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # the served model name
    api_key: str
    pid: int
    max_model_len: int
    root_url: str  # http://127.0.0.1:PORT (/health, /invocations, ... live here, outside /v1)
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_env(cache_root: Path) -> dict[str, str]:
    """The environment a CPU `vllm serve` needs here (docs/llm.md, "vLLM on CPU")."""
    return os.environ | {
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
        "VLLM_CACHE_ROOT": str(cache_root),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def tiny_model_args(model_dir: Path = TINY_MODEL, name: str = "mdagent-tiny") -> list[str]:
    """`vllm serve` arguments for the tiny random model (a random model needs xgrammar without free whitespace,
    or JSON fills with blanks)."""
    return [
        str(model_dir),
        "--served-model-name",
        name,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "32768",
        "--max-num-seqs",
        "8",
        "--structured-outputs-config",
        '{"backend":"xgrammar","disable_any_whitespace":true}',
    ]


def vllm_missing() -> str | None:
    """Why the vLLM venv or the tiny model cannot be used, with the command that builds them; None if ready."""
    if not (VLLM_VENV / "bin" / "vllm").is_file():
        return f"the vLLM CPU venv {VLLM_VENV} is missing: build it with `bash scripts/vllm_env.sh` (2-7 min)"
    if not (TINY_MODEL / ".complete").is_file():
        return f"the tiny test model {TINY_MODEL} is missing: build it with `bash scripts/vllm_env.sh`"
    return None


def stop_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM the server we started (vLLM stops its engine process with it), SIGKILL its session if it hangs."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:  # not our child (already reaped)
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)  # the session we started it in: the server and its engine process
        os.waitpid(pid, 0)


def wait_for_health(root_url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"vllm serve exited with {proc.returncode} before it was healthy; {log}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{root_url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    raise RuntimeError(f"vllm serve was not healthy after {timeout:.0f} s (MDAGENT_TEST_VLLM_TIMEOUT); {log}:\n{tail}")


@pytest.fixture(scope="session")
def vllm_built() -> None:
    """The vLLM CPU venv and the tiny model, built (a test that starts its own `vllm serve`); fails, never skips."""
    missing = vllm_missing()
    if missing:
        pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """ONE real `vllm serve` (CPU) with the tiny random model for the whole session, on a free loopback port,
    behind its key (every route but /health, as `mdagent llm serve` runs it); stopped at the end by its PID. Fails
    (never skips) when the venv is not built."""
    missing = vllm_missing()
    if missing:
        pytest.fail(missing, pytrace=False)
    folder = tmp_path_factory.mktemp("vllm")
    port, api_key, name = free_port(), secrets.token_urlsafe(16), "mdagent-tiny"
    log = folder / "vllm.log"
    command = [
        str(VLLM_VENV / "bin" / "vllm"),
        "serve",
        *tiny_model_args(TINY_MODEL, name),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--middleware",  # the key on every route, as `mdagent llm serve` runs it
        llm_job.GUARD,
    ]
    shutil.copy(model_guard.__file__, folder / llm_job.GUARD_FILE)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=vllm_env(folder / "cache") | {"VLLM_API_KEY": api_key, "PYTHONPATH": str(folder)},
            start_new_session=True,
        )
    root = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(root, proc, log, VLLM_READY_TIMEOUT_S)
        request = urllib.request.Request(f"{root}/v1/models", headers={"Authorization": f"Bearer {api_key}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            served = json.load(answer)["data"][0]
    except BaseException as exc:
        stop_pid(proc.pid)
        if isinstance(exc, RuntimeError):
            pytest.fail(str(exc), pytrace=False)
        raise
    yield VllmServer(f"{root}/v1", served["id"], api_key, proc.pid, served["max_model_len"], root, log)
    stop_pid(proc.pid)
