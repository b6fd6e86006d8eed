"""`mdagent llm serve` as a job on the test Slurm cluster (the shared `vllm serve`: test_llm_shared_server.py)."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_the_model_guard_wants_the_key_on_every_route_but_health():
    import asyncio

    import httpx

    from mdagent_hpc.serving.model_guard import RequireKey

    async def served(scope, receive, send):  # stands in for vLLM's app
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"generated"})

    async def ask(app, path, key=None, scheme="Bearer"):
        headers = {"authorization": f"{scheme} {key}"} if key is not None else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
            return (await client.post(path, headers=headers)).status_code

    async def checks():
        guarded = RequireKey(served, key="s3cret")
        assert await ask(guarded, "/invocations") == 401
        assert await ask(guarded, "/invocations", "wrong") == 401
        assert await ask(guarded, "/invocations", "s3cret", scheme="Basic") == 401
        assert await ask(guarded, "/invocations", "s3cret") == 200
        assert await ask(guarded, "/tokenize", "s3cret ") == 200  # as vLLM's own check: surrounding blanks
        assert await ask(guarded, "/health") == 200
        assert await ask(RequireKey(served, key=""), "/invocations", "") == 401  # no key set: nobody

        sent = []

        async def record(message):
            sent.append(message)

        await guarded({"type": "websocket", "path": "/v1/realtime", "headers": []}, None, record)
        assert sent == [{"type": "websocket.close", "code": 1008}]

    asyncio.run(checks())


# ---------------------------------------------------------------- `mdagent llm serve`: the job script


def job_site(scheduler: str, **vllm):
    from mdagent_hpc.execution.site import SiteConfig

    extra = {"qos": "normal"} if scheduler == "slurm" else {}
    return SiteConfig(
        name="gpu",
        scheduler=scheduler,
        queue="gpu",
        account="proj",
        **extra,
        vllm={
            "image": "/apps/vllm.sif",
            "binds": ["/scratch"],
            "env": {"HF_HOME": "/scratch/hf"},
            "args": ["--max-model-len", "16384"],
            "cpus": 16,
            "memory_mb": 64000,
            **vllm,
        },
    )


def directives(script: str, prefix: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith(prefix)]


def server_line(script: str) -> list[str]:
    import shlex

    line = next(line for line in script.splitlines() if "vllm" in line and "serve" in line and "#" not in line)
    return shlex.split(line.replace('"$PORT"', "PORT"))


@pytest.mark.parametrize("scheduler", ["slurm", "pbspro"])
def test_the_job_runs_vllm_from_the_image_with_nv_and_asks_for_the_gpus(scheduler):
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()  # AiiDA's scheduler plugins read their configuration folder on import
    from mdagent_hpc.serving.llm_job import ENDPOINT_FILE, KEY_FILE, submit_script

    script = submit_script(job_site(scheduler), "Qwen/Qwen2.5-Coder-7B-Instruct", "coder", gpus=2, hours=6)
    argv = server_line(script)
    assert argv[:6] == ["apptainer", "exec", "--nv", "--bind", "/scratch", "--env"]
    assert argv[6:9] == ["HF_HOME=/scratch/hf", "/apps/vllm.sif", "vllm"]
    assert argv[9:] == [
        "serve",
        "Qwen/Qwen2.5-Coder-7B-Instruct",
        "--max-model-len",
        "16384",
        "--middleware",  # the key on every route (vLLM's own guards /v1 only): serving/model_guard.py
        "model_guard.RequireKey",
        "--host",  # the node's loopback only
        "127.0.0.1",
        "--port",
        "PORT",
        ">",
        "vllm.log",
        "2>&1",
    ]
    if scheduler == "slurm":
        assert "#SBATCH --gres=gpu:2" in directives(script, "#SBATCH")
        assert {
            "#SBATCH --time=06:00:00",
            "#SBATCH --cpus-per-task=16",
            "#SBATCH --partition=gpu",
            "#SBATCH --account=proj",
            "#SBATCH --qos=normal",
            "#SBATCH --mem=64000",
        } <= set(directives(script, "#SBATCH"))
    else:
        assert "#PBS -l select=1:mpiprocs=1:ncpus=16:mem=65536000kb:ngpus=2" in directives(script, "#PBS")
        assert {"#PBS -l walltime=06:00:00", "#PBS -q gpu", "#PBS -A proj"} <= set(directives(script, "#PBS"))
    # the key comes from a file of mode 600 into the container's environment, never on a command line
    assert f'export APPTAINERENV_VLLM_API_KEY="$(cat {KEY_FILE})"' in script
    assert 'export APPTAINERENV_PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"' in script  # model_guard.py's folder
    assert "--api-key" not in script
    assert ENDPOINT_FILE in script.split("apptainer")[0]  # node and port are written before the server starts


def test_a_site_without_an_image_runs_its_own_command_and_a_cpu_job_asks_for_no_gpu():
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()
    from mdagent_hpc.serving.llm_job import submit_script

    site = job_site("slurm", image=None, binds=[], modules=["vllm/0.10"], setup=["source /apps/venv/bin/activate"])
    script = submit_script(site, "/models/m", "m", gpus=0, hours=1)
    assert server_line(script)[:3] == ["vllm", "serve", "/models/m"]
    assert not any("gres" in line for line in directives(script, "#SBATCH"))
    assert "apptainer" not in script and "--nv" not in script
    assert (
        script.index("module load vllm/0.10")
        < script.index("source /apps/venv/bin/activate")
        < script.index('"vllm" "serve"')
    )
    assert "export VLLM_API_KEY=" in script and "export HF_HOME=/scratch/hf" in script


def test_a_site_cannot_open_the_server_to_the_nodes_network():
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()
    from mdagent_hpc.serving.llm_job import submit_script

    site = job_site("slurm", image=None, args=["--host", "0.0.0.0", "--max-model-len", "16384"])
    argv = server_line(submit_script(site, "/models/m", "m", gpus=0, hours=1))
    hosts = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--host"]
    assert hosts[-1] == "127.0.0.1"  # vLLM (argparse) takes the last one
    assert "0.0.0.0" not in argv[argv.index("--host", argv.index("0.0.0.0")) :]


def test_the_node_is_reached_directly_only_when_it_is_this_machine():
    import socket

    from mdagent_hpc.serving.llm_job import is_this_machine

    assert is_this_machine("localhost") and is_this_machine("127.0.0.1")
    assert is_this_machine(socket.gethostname()) == all(
        info[4][0].startswith("127.") or info[4][0] == "::1" for info in socket.getaddrinfo(socket.gethostname(), None)
    )
    assert not is_this_machine("192.0.2.77")  # a node elsewhere (TEST-NET): through the tunnel only
    assert not is_this_machine("no-such-node.invalid")


def test_llm_serve_refuses_a_site_without_a_vllm_section_in_one_sentence(tmp_path):
    from test_cli import mdagent, one_sentence

    one_sentence(mdagent("llm", "serve", "--site", "local", "--model", "m"), "local", "vllm:")
    one_sentence(mdagent("llm", "serve", "--site", "nowhere", "--model", "m"), "nowhere")
    one_sentence(mdagent("llm", "stop", "nothing"), "nothing")


# ---------------------------------------------------------------- `mdagent llm serve` on the test Slurm cluster


def open_to_network(port: int) -> list[str]:
    """This machine's non-loopback addresses on which `port` accepts a connection."""
    import ipaddress
    import socket
    import subprocess

    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    addresses = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    assert addresses, "this machine has no non-loopback address to test from"
    open_on = []
    for address in addresses:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
            s.settimeout(5)
            if s.connect_ex((address, port)) == 0:
                open_on.append(address)
    return open_on


def squeue(job_id: str) -> str:
    """The job's state letters in the queue ('' once it left)."""
    import subprocess

    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%t"], capture_output=True, text=True).stdout.strip()


def add_site(folder, name: str, body: str):
    from test_cli import mdagent

    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n{body}")
    added = mdagent("site", "add", str(path))
    assert added.returncode == 0, added.stderr


@pytest.mark.slow
def test_llm_serve_over_ssh_through_a_tunnel_is_registered_used_by_a_run_and_stopped(tmp_path, slurm, sshd, vllm_built):
    """The real thing on CPU: Slurm job, Apptainer (the test double) running the real `vllm serve` with the tiny
    model, node and port found, an SSH tunnel through the login node (sshd on 127.0.0.1:2222), health, registry,
    an `mdagent run` that finds the endpoint by itself, `llm stop`. (vllm_built: the shared venv and model.)"""

    from services import TINY_MODEL, VLLM_VENV, tiny_model_args
    from test_cli import mdagent

    from mdagent_hpc.serving.llm_job import alive
    from mdagent_hpc.settings.endpoints import load_endpoints

    image = tmp_path / "vllm.sandbox"  # a sandbox folder: an image the double accepts
    image.mkdir()
    double_log = tmp_path / "apptainer.log"
    args = tiny_model_args()[1:]  # after the model
    body = f"""scheduler: slurm
transport: {{type: ssh, host: 127.0.0.1, port: 2222, user: root, key_filename: {sshd}, key_policy: AutoAddPolicy,
  use_login_shell: false, safe_interval: 0}}
workdir: /tmp/mdagent-ssh-work/{{username}}
queue: debug
vllm:
  image: {image}
  nv: true
  command: {VLLM_VENV}/bin/vllm serve
  binds: [{TINY_MODEL}]
  env: {{VLLM_CPU_KVCACHE_SPACE: "1", VLLM_CACHE_ROOT: {tmp_path}/vllm-cache, HF_HUB_OFFLINE: "1"}}
  args: {json.dumps(args)}
  setup: ["export PATH={REPO}/tests/doubles:$PATH", "export APPTAINER_DOUBLE_LOG={double_log}"]
  gpus: 0
  cpus: 1
  memory_mb: 6000
  hours: 0.25
  tunnel: true
"""
    add_site(tmp_path, "vllm-ssh", body)
    served = mdagent("llm", "serve", "--site", "vllm-ssh", "--model", str(TINY_MODEL), "--json", timeout=900)
    assert served.returncode == 0, served.stderr[-3000:]
    endpoint = json.loads(served.stdout)
    job = endpoint["job_id"]
    try:
        assert endpoint["state"] == "ready" and endpoint["served_model"] == "mdagent-tiny"
        assert endpoint["api_key"] == "***" and endpoint["node"] == slurm
        assert endpoint["base_url"].startswith("http://127.0.0.1:") and endpoint["tunnel_pid"]
        assert squeue(job) == "R"
        # the container was started with --nv and the model bound in (the GPU lines: the tests above)
        argv = json.loads(double_log.read_text().splitlines()[0])
        assert argv[:2] == ["exec", "--nv"] and ["--bind", str(TINY_MODEL)] == argv[2:4]
        assert argv[argv.index(str(image)) + 1 :][:3] == [f"{VLLM_VENV}/bin/vllm", "serve", str(TINY_MODEL)]
        # through the tunnel, behind the key only the registry holds
        key = load_endpoints()["vllm-ssh"].api_key
        assert get(f"{endpoint['base_url']}/models")[0] == 401
        assert get(f"{endpoint['base_url']}/models", key)[1]["data"][0]["max_model_len"] == 32768
        # every route but /health wants the key at the tunnel's local end too (vLLM's own key guards /v1 only)
        root = endpoint["base_url"].removesuffix("/v1")
        assert [get(f"{root}{path}")[0] for path in ("/invocations", "/tokenize", "/health")] == [401, 401, 200]
        # and it listens on the node's loopback only: from the node's network address (another machine's view of
        # it) nothing answers on its port
        assert open_to_network(endpoint["port"]) == []

        # a random model reaches preflight with grammar-constrained output (as in test_llm_real.py); no seed: vLLM
        # 0.32 on CPU dies on a seeded request prefilled in chunks (docs/limits.md)
        task = "Melt a 4000-atom Lennard-Jones crystal at reduced temperature 3.0 and report the final temperature"
        settings = {"STRUCTURED_OUTPUT": "grammar", "MAX_TOKENS": "400", "CANDIDATES": "3"}
        env = {f"MDAGENT_LLM_{k}": v for k, v in settings.items()}  # sampling only: no endpoint configured
        run = mdagent("run", task, "--max-attempts", "1", "--json", env_extra=env, timeout=600)
        assert "Traceback" not in run.stderr, run.stderr[-3000:]
        attempt = json.loads(run.stdout)["attempts"][0]
        assert attempt["usage"]["model"] == "mdagent-tiny", (attempt, run.stderr[-2000:])  # the registered one
        assert attempt["stage"] in ("preflight", "dry_run", "run", "evaluate"), attempt

        status = mdagent("llm", "status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["state"] == "ready", status.stderr
    finally:
        stopped = mdagent("llm", "stop", "vllm-ssh")
    assert stopped.returncode == 0, stopped.stderr
    assert squeue(job) == ""
    assert not alive(endpoint["tunnel_pid"])  # the tunnel process ended
    status = mdagent("llm", "status", "vllm-ssh", "--json")
    assert status.returncode == 1 and json.loads(status.stdout)["state"] == "stopped"


@pytest.mark.slow
def test_a_job_that_ends_or_hangs_is_reported_and_noticed(tmp_path, slurm):
    """No vLLM needed: a 'server' that never answers, then one that exits at once."""
    import subprocess

    from test_cli import mdagent

    from mdagent_hpc.settings.endpoints import EndpointError, load_endpoints, registered_settings

    common = (
        "scheduler: slurm\ntransport: {{type: local, use_login_shell: false, safe_interval: 0}}\nqueue: debug\n"
        "vllm: {{command: {command}, gpus: 0, cpus: 1, memory_mb: 200, hours: 0.1}}\n"
    )
    add_site(tmp_path, "hangs", common.format(command="'bash -c \"sleep 300\" --'"))
    add_site(tmp_path, "fails", common.format(command="'bash -c \"echo no such model >&2; exit 3\" --'"))

    hung = mdagent("llm", "serve", "--site", "hangs", "--model", "m", "--timeout", "5")
    assert hung.returncode == 2 and "Traceback" not in hung.stderr
    assert "did not answer within 5 s" in hung.stderr and "mdagent llm stop hangs" in hung.stderr
    endpoint = load_endpoints()["hangs"]
    assert endpoint.state == "starting" and endpoint.base_url == f"http://{slurm}:{endpoint.port}/v1"
    key = Path(endpoint.workdir) / ".api-key"  # the server's key: readable by its owner only, never in the script
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_text() == endpoint.api_key
    assert endpoint.api_key not in (Path(endpoint.workdir) / "_aiidasubmit.sh").read_text()
    said = []
    with pytest.raises(EndpointError, match="not ready after"):  # a run arriving now waits, with a message
        registered_settings(timeout=3, say=said.append)
    assert "still loading" in said[0]

    subprocess.run(["scancel", endpoint.job_id], check=True)
    for _ in range(30):
        if not squeue(endpoint.job_id):
            break
        time.sleep(1)
    listed = mdagent("llm", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["state"] for e in json.loads(listed.stdout) if e["name"] == "hangs"] == ["ended"]
    assert "no longer in the queue" in load_endpoints()["hangs"].message

    failed = mdagent("llm", "serve", "--site", "fails", "--model", "m")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "ended before the server answered" in failed.stderr and "no such model" in failed.stderr
    assert load_endpoints()["fails"].state == "ended"


@pytest.mark.parametrize(
    ("site", "script", "model", "gpus", "hours"),
    [
        ("slurm-gpu", "slurm.sh", "Qwen/Qwen2.5-Coder-32B-Instruct", 4, 12),
        ("pbspro-gpu", "pbspro.sh", "/scratch/jdoe/models/Qwen2.5-Coder-7B-Instruct", 1, 4),
    ],
)
def test_the_job_templates_in_schedulers_are_what_llm_serve_submits(site, script, model, gpus, hours):
    from test_cli import mdagent

    folder = REPO / "schedulers" / "vllm-serve"
    made = mdagent(
        "llm",
        "serve",
        "--site",
        site,
        "--model",
        model,
        "--gpus",
        str(gpus),
        "--hours",
        str(hours),
        "--dry-run",
        env_extra={"MDAGENT_SITE_CONFIGS": str(folder)},
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout == (folder / script).read_text()
