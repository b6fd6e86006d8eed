"""`mdagent llm serve`: a vLLM server as a scheduler job on a site, through AiiDA's scheduler and transport plugins.

The job script comes from the site's AiiDA scheduler (`get_submit_script` of a `JobTemplate`), so Slurm and PBS
directives are AiiDA's own. The job picks a free port on its node and writes `mdagent-endpoint.json` (node, port)
before the server starts; the API key travels in a file of mode 600, never on a command line. The server listens on
the node's loopback only, so nobody else on the cluster network reaches it, and wants the key on every route but
/health (vLLM's own key guards only /v1; `serving/model_guard.py` the rest, for other users of the node and of the
tunnel's local end); `serving/tunnel.py` forwards a local port to
it over SSH to the node, through the login node (paramiko), in a process of its own that outlives this command. The
registry of endpoints is `settings/endpoints.py`.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.execution.site import SiteConfig
from mdagent_hpc.home import mdagent_home
from mdagent_hpc.serving import model_guard
from mdagent_hpc.settings.endpoints import Endpoint, EndpointError, load_endpoints, now, save_endpoint, served_model

SCRIPT = "_aiidasubmit.sh"
ENDPOINT_FILE = "mdagent-endpoint.json"
KEY_FILE = ".api-key"
LOG = "vllm.log"
GUARD_FILE = "model_guard.py"  # serving/model_guard.py in the job's folder
GUARD = "model_guard.RequireKey"
LOOPBACK = "127.0.0.1"
# A free port on the node, with a random one where the node has no python3.
PICK_PORT = (
    "PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])' "
    "2>/dev/null || echo $((20000 + RANDOM % 20000)))"
)


class LlmJobError(MDAgentError):
    """One sentence: what went wrong with the server job and what to do."""


def check_site(site: SiteConfig) -> None:
    if site.vllm is None:
        raise LlmJobError(
            f"site {site.name} has no `vllm:` section: add one to its config (docs/llm.md, "
            "'vLLM as a job') and `mdagent site add` it again"
        )
    if site.scheduler == "direct":
        raise LlmJobError(
            f"site {site.name} has no batch scheduler (scheduler: direct): `mdagent llm serve` submits "
            "a Slurm or PBS job; on this machine start `vllm serve` yourself (docs/llm.md)"
        )


def server_argv(site: SiteConfig, model: str) -> list[str]:
    """The server's command line as the job runs it (`$PORT` expands in the job).

    `--host 127.0.0.1` comes last, so a site's `args` cannot open the server to the node's network (the last wins);
    the key guards every route but /health (`serving/model_guard.py`, copied into the job's folder, on vLLM's path).
    """
    v = site.vllm
    assert v is not None
    serve = [*shlex.split(v.command), model, *v.args, "--middleware", GUARD, "--host", LOOPBACK, "--port", "$PORT"]
    if not v.image:
        return serve
    options = ["--nv"] if v.nv else []
    for spec in v.binds:
        options += ["--bind", spec]
    for key, value in v.env.items():
        options += ["--env", f"{key}={value}"]
    return ["apptainer", "exec", *options, v.image, *serve]


class _PbsproGpus:
    """AiiDA's core.pbspro with `ngpus` added to its `select` line (it writes that line itself, with no hook)."""

    def __new__(cls, gpus: int):
        from aiida.schedulers.plugins.pbspro import PbsproScheduler

        class PbsproWithGpus(PbsproScheduler):
            def _get_resource_lines(self, *args, **kwargs):
                lines = super()._get_resource_lines(*args, **kwargs)
                return [f"{line}:ngpus={gpus}" if line.startswith("#PBS -l select=") else line for line in lines]

        return PbsproWithGpus()


def scheduler_for(site: SiteConfig, gpus: int):
    from aiida.plugins import SchedulerFactory

    from mdagent_hpc.execution.site import AIIDA_SCHEDULERS

    if site.scheduler == "pbspro" and gpus:
        return _PbsproGpus(gpus)
    return SchedulerFactory(AIIDA_SCHEDULERS[site.scheduler])()


def submit_script(site: SiteConfig, model: str, name: str, gpus: int, hours: float, scheduler=None) -> str:
    """The job script: the scheduler's directives (GPUs: Slurm `--gres=gpu:N`, PBS `ngpus=N`), then the server."""
    from aiida.common.datastructures import CodeRunMode
    from aiida.schedulers.datastructures import JobTemplate, JobTemplateCodeInfo

    check_site(site)
    v = site.vllm
    scheduler = scheduler or scheduler_for(site, gpus)
    template = JobTemplate()
    template.shebang = "#!/bin/bash"
    template.job_name = f"vllm-{name}"  # PBS keeps 15 characters
    template.rerunnable = False
    template.sched_output_path = "_scheduler-stdout.txt"
    template.sched_error_path = "_scheduler-stderr.txt"
    template.job_resource = scheduler.create_job_resource(
        num_machines=1, num_mpiprocs_per_machine=1, num_cores_per_mpiproc=v.cpus
    )
    template.max_wallclock_seconds = max(60, int(hours * 3600))
    if v.memory_mb:
        template.max_memory_kb = v.memory_mb * 1024
    for key, value in (("queue_name", v.queue or site.queue), ("account", site.account), ("qos", site.qos)):
        if value:
            template[key] = value
    if gpus and site.scheduler == "slurm":
        template.custom_scheduler_commands = f"#SBATCH --gres=gpu:{gpus}"
    key_var = "APPTAINERENV_VLLM_API_KEY" if v.image else "VLLM_API_KEY"  # Apptainer passes APPTAINERENV_X as X
    path_var = "APPTAINERENV_PYTHONPATH" if v.image else "PYTHONPATH"
    lines = [
        f"# mdagent llm serve: endpoint {name}, model {model}",
        *(f"module load {m}" for m in v.modules),
        *v.setup,
        PICK_PORT,
        f'export {key_var}="$(cat {KEY_FILE})"',
        f'export {path_var}="$PWD${{PYTHONPATH:+:$PYTHONPATH}}"',  # the job's folder: model_guard.py
    ]
    if not v.image:
        lines += [f"export {k}={shlex.quote(val)}" for k, val in v.env.items()]
    lines.append(f'printf \'{{"node": "%s", "port": %s}}\\n\' "$(hostname)" "$PORT" > {ENDPOINT_FILE}')
    template.prepend_text = "\n".join(lines)
    template.codes_info = [
        JobTemplateCodeInfo(
            cmdline_params=server_argv(site, model), use_double_quotes=[False, True], stdout_name=LOG, join_files=True
        )
    ]
    template.codes_run_mode = CodeRunMode.SERIAL
    return scheduler.get_submit_script(template)


# ---------------------------------------------------------------- the job on the site


class SiteSession:
    """The site's AiiDA computer: a transport opened for each use, its scheduler on it."""

    def __init__(self, site: SiteConfig):
        from mdagent_hpc.execution.computers import ensure_site

        self.site = site
        self.computer = ensure_site(site).computer

    def __enter__(self):
        self.transport = self.computer.get_transport()
        self.transport.open()
        self.scheduler = self.computer.get_scheduler()
        self.scheduler.set_transport(self.transport)
        return self

    def __exit__(self, *exc):
        self.transport.close()

    def workdir(self) -> str:
        return self.computer.get_workdir().format(username=self.transport.whoami())

    def read(self, path: str) -> str | None:
        retval, stdout, _ = self.transport.exec_command_wait(f"cat {shlex.quote(path)}")
        return stdout if retval == 0 else None

    def job_state(self, job_id: str) -> str | None:
        """The scheduler's state of the job (queued, running, ...), None once it left the queue."""
        info = self.scheduler.get_jobs(jobs=[job_id], as_dict=True).get(job_id)
        if info is None or info.job_state.value == "done":
            return None
        return info.job_state.value


def submit(site: SiteConfig, model: str, name: str, gpus: int, hours: float) -> Endpoint:
    """Write the job folder (script, key file of mode 600), submit, register the endpoint as submitted."""
    check_site(site)
    if (old := load_endpoints().get(name)) is not None and old.state in ("submitted", "starting", "ready"):
        raise LlmJobError(
            f"endpoint {name} is already registered (job {old.job_id} on {old.site}): stop it with "
            f"`mdagent llm stop {name}` or choose another --name"
        )
    api_key = secrets.token_urlsafe(24)
    with SiteSession(site) as s:
        folder = f"{s.workdir()}/llm/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        s.transport.makedirs(folder, ignore_existing=True)
        # the key never exists with looser permissions, here or there
        retval, _, stderr = s.transport.exec_command_wait(
            f"umask 077 && cat > {shlex.quote(f'{folder}/{KEY_FILE}')}", stdin=api_key.encode()
        )
        if retval != 0:
            raise LlmJobError(f"cannot write the server's key file in {folder} on {site.name}: {stderr.strip()}")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / SCRIPT).write_text(submit_script(site, model, name, gpus, hours, s.scheduler))
            s.transport.putfile(str(Path(tmp) / SCRIPT), f"{folder}/{SCRIPT}")
        s.transport.putfile(str(Path(model_guard.__file__)), f"{folder}/{GUARD_FILE}")
        job_id = s.scheduler.submit_job(folder, SCRIPT)
    if not isinstance(job_id, str):
        raise LlmJobError(f"the {site.scheduler} scheduler of site {site.name} refused the job: {job_id}")
    endpoint = Endpoint(
        name=name,
        site=site.name,
        model=model,
        job_id=job_id,
        workdir=folder,
        api_key=api_key,
        gpus=gpus,
        hours=hours,
        submitted=now(),
    )
    save_endpoint(endpoint)
    return endpoint


def log_tail(s: SiteSession, endpoint: Endpoint, lines: int = 15) -> str:
    """The last lines of the server's log and the job's stderr."""
    text = "\n".join((s.read(f"{endpoint.workdir}/{name}") or "") for name in (LOG, "_scheduler-stderr.txt"))
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def ended(s: SiteSession, endpoint: Endpoint, why: str) -> Endpoint:
    tail = log_tail(s, endpoint)
    message = why + (f"; last lines:\n{tail}" if tail else "")
    endpoint = endpoint.model_copy(update={"state": "ended", "message": message})
    stop_tunnel(endpoint)
    save_endpoint(endpoint)
    return endpoint


def locate(s: SiteSession, endpoint: Endpoint) -> Endpoint:
    """Once the job has written its node and port: the URL the client uses (directly or through a tunnel)."""
    text = s.read(f"{endpoint.workdir}/{ENDPOINT_FILE}")
    if not text:
        return endpoint
    found = json.loads(text)
    node, port = found["node"], int(found["port"])
    site = s.site
    if is_this_machine(node) and not site.vllm.tunnel:
        pid, base = None, f"http://{node}:{port}/v1"  # the node is this machine: its loopback is ours
    elif site.vllm.tunnel is False:
        raise LlmJobError(
            f"site {site.name}: tunnel: false, but the server listens only on node {node}'s loopback; "
            "remove `tunnel: false` so mdagent reaches it through an SSH tunnel"
        )
    elif site.transport.type != "ssh":
        raise LlmJobError(
            f"site {site.name}: the server listens only on node {node}'s loopback, reached through an SSH "
            "tunnel to the node; give the site an ssh transport (the login node to tunnel through)"
        )
    else:
        pid, local_port = start_tunnel(site, endpoint.name, node, port)
        base = f"http://127.0.0.1:{local_port}/v1"
    endpoint = endpoint.model_copy(
        update={"node": node, "port": port, "base_url": base, "tunnel_pid": pid, "state": "starting"}
    )
    save_endpoint(endpoint)
    return endpoint


def is_this_machine(node: str) -> bool:
    """Whether the node's name is a loopback address here (mdagent runs on the node itself)."""
    import ipaddress

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(node, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def wait_ready(
    site: SiteConfig, endpoint: Endpoint, timeout: float, say: Callable[[str], None] = lambda _: None
) -> Endpoint:
    """Follow the job until its server answers /health (then registered as ready) or it ends (LlmJobError)."""
    from mdagent_hpc.settings.endpoints import healthy

    start = time.monotonic()
    with SiteSession(site) as s:
        while True:
            state = s.job_state(endpoint.job_id)
            waited = time.monotonic() - start
            if state is None:
                endpoint = ended(s, endpoint, f"job {endpoint.job_id} ended before the server answered")
                raise LlmJobError(
                    f"{endpoint.message}\nlook at {endpoint.workdir}/{LOG} on {site.name}; fix the "
                    "model or the site's vllm: section and `mdagent llm serve` again"
                )
            if state == "running" and endpoint.base_url is None:
                endpoint = locate(s, endpoint)
            if endpoint.base_url and healthy(endpoint):
                model = served_model(endpoint)
                endpoint = endpoint.model_copy(update={"state": "ready", "ready": now(), "served_model": model["id"]})
                save_endpoint(endpoint)
                return endpoint
            if waited > timeout:
                raise LlmJobError(
                    f"{endpoint.describe()} did not answer within {timeout:.0f} s (job {state}); it "
                    f"keeps running: `mdagent llm status {endpoint.name}` to check again, "
                    f"`mdagent llm stop {endpoint.name}` to end it"
                )
            where = f" on {endpoint.node}" if endpoint.node else ""
            say(
                f"job {endpoint.job_id} {state}{where}"
                + (", loading the model" if endpoint.base_url else "")
                + f" ({waited:.0f} s)"
            )
            time.sleep(2)


def refresh(endpoint: Endpoint) -> Endpoint:
    """Check a registered endpoint against its job and its server; an ended job is noticed and recorded."""
    from mdagent_hpc.execution.registry import find_site
    from mdagent_hpc.settings.endpoints import healthy

    if endpoint.state in ("ended", "stopped"):
        return endpoint
    site = find_site(endpoint.site)
    with SiteSession(site) as s:
        state = s.job_state(endpoint.job_id)
        if state is None:
            return ended(s, endpoint, f"job {endpoint.job_id} is no longer in the queue")
        if state == "running" and endpoint.base_url is None:
            endpoint = locate(s, endpoint)
    if endpoint.tunnel_pid and not alive(endpoint.tunnel_pid):
        pid, local_port = start_tunnel(site, endpoint.name, endpoint.node, endpoint.port)
        endpoint = endpoint.model_copy(update={"tunnel_pid": pid, "base_url": f"http://127.0.0.1:{local_port}/v1"})
        save_endpoint(endpoint)
    if endpoint.state != "ready" and endpoint.base_url and healthy(endpoint):
        endpoint = endpoint.model_copy(
            update={"state": "ready", "ready": now(), "served_model": served_model(endpoint)["id"]}
        )
        save_endpoint(endpoint)
    return endpoint


def stop(endpoint: Endpoint) -> Endpoint:
    """Cancel the job (if it still runs), close the tunnel, record the endpoint as stopped."""
    from mdagent_hpc.execution.registry import find_site

    if endpoint.state not in ("ended", "stopped"):
        with SiteSession(find_site(endpoint.site)) as s:
            if s.job_state(endpoint.job_id) is not None and not s.scheduler.kill_job(endpoint.job_id):
                raise LlmJobError(
                    f"the scheduler did not cancel job {endpoint.job_id}; cancel it on the site "
                    "(scancel/qdel) and run `mdagent llm stop` again"
                )
            for _ in range(30):  # the job leaves the queue in seconds
                if s.job_state(endpoint.job_id) is None:
                    break
                time.sleep(1)
    stop_tunnel(endpoint)
    endpoint = endpoint.model_copy(update={"state": "stopped", "message": f"stopped at {now()}"})
    save_endpoint(endpoint)
    return endpoint


# ---------------------------------------------------------------- the tunnel process


def alive(pid: int) -> bool:
    """The process runs (a zombie does not: the tunnel's parent has exited, and not every init reaps)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): it answered the signal


def start_tunnel(site: SiteConfig, name: str, node: str, port: int, timeout: float = 60) -> tuple[int, int]:
    """Start `python -m mdagent_hpc.serving.tunnel` in its own session; returns (its pid, the local port).

    The tunnel is an SSH connection to the node itself, through the login node (and the site's own jumps), on the
    login node's SSH port, forwarding to the server on the node's loopback: clusters let a user SSH to a node where
    their job runs (Slurm's pam_slurm_adopt).
    """
    folder = mdagent_home() / "llm"
    folder.mkdir(parents=True, exist_ok=True)
    port_file, log = folder / f"{name}.tunnel-port", folder / f"{name}.tunnel.log"
    port_file.unlink(missing_ok=True)
    t = site.transport
    login = f"{t.user + '@' if t.user else ''}{t.host}:{t.port}"
    jumps = ",".join(j for j in (t.proxy_jump, login) if j)
    argv = [
        sys.executable,
        "-m",
        "mdagent_hpc.serving.tunnel",
        "--host",
        node,
        "--port",
        str(t.port),
        "--proxy-jump",
        jumps,
        "--target",
        f"{LOOPBACK}:{port}",
        "--port-file",
        str(port_file),
        "--key-policy",
        t.key_policy,
    ]
    for flag, value in (("--user", t.user), ("--key", t.key_filename)):
        if value:
            argv += [flag, str(Path(value).expanduser()) if flag == "--key" else value]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.is_file() and port_file.read_text().strip():
            return proc.pid, int(port_file.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    said = " ".join(tail) or "no output"
    raise LlmJobError(
        f"the SSH tunnel to port {port} on node {node} through {t.host} did not open ({said});"
        f" check that `ssh -J {t.host} {node}` works (SSH to the node of a running job)"
    )


def stop_tunnel(endpoint: Endpoint) -> None:
    if endpoint.tunnel_pid and alive(endpoint.tunnel_pid) and _is_our_tunnel(endpoint.tunnel_pid):
        os.kill(endpoint.tunnel_pid, 15)


def _is_our_tunnel(pid: int) -> bool:
    """The PID is still the tunnel process we started (not a PID the system reused)."""
    try:
        return b"mdagent_hpc.serving.tunnel" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the registry


__all__ = ["EndpointError", "LlmJobError", "refresh", "stop", "submit", "submit_script", "wait_ready"]
