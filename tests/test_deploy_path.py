"""docs/deploy.md followed literally, as a new group admin and one user would, on the real PostgreSQL and RabbitMQ.

The page's runnable blocks are marked `<!-- as: admin -->` or `<!-- as: alice -->` before a ```console block:
each `$ COMMAND` line is run with bash, in order, as written, and each line printed under it must be among the
lines the command prints (`…` stands for any text). A command whose quoted output starts with `error:` must exit
2, one with `^C` is interrupted once the user's run is running (and exits 1, the run cancelled), `mdagent server
serve` runs in the background until the next block marked `server: stopped`. `<!-- file: PATH; mode M; as: WHO -->`
before a block writes that file. The only changes made to the page's text are the names this machine needs
(SUBSTITUTIONS): a unique profile, database and vhost, free ports, temporary folders, the replayed model.

The admin is a fresh HOME with no MDAGENT_HOME (the service account's default home, as the page says), the user
another. Both run in a copy of the repository whose .venv gets its dependencies from this checkout's .venv (no
download); after the install steps, `mdagent` on PATH is this checkout's (the same package).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from mdagent_hpc.llm.replay import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deploy.md"
VENV_BIN = Path(sys.executable).parent
TASK = "Heat a small Cu crystal with EAM to 800 K in NVT and report its temperature"
GOOD = f"```lammps\n{(REPO / 'mdagent_hpc' / 'examples' / 'demo' / 'good.lammps').read_text()}```\n"
LONG = GOOD.replace("run             2000", "run             2000000")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MARK = re.compile(r"<!--\s*(as|file):\s*(.*?)\s*-->")


# -- the page -------------------------------------------------------------------------------------------------------
@dataclass
class Command:
    who: str
    line: str
    expected: list[str]
    server_stopped: bool = False  # the block says: the server is stopped before it


@dataclass
class File:
    who: str
    path: str
    mode: int
    content: str


def documented(text: str) -> list[Command | File]:
    """The runnable steps of the page, in order."""
    steps: list[Command | File] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        mark = MARK.fullmatch(lines[i].strip())
        i += 1
        if not mark:
            continue
        kind, attrs = mark[1], [a.strip() for a in mark[2].split(";")]
        assert lines[i].startswith("```"), f"a marked block must follow its mark: {lines[i - 1]}"
        end = lines.index("```", i + 1)
        body = lines[i + 1 : end]
        i = end + 1
        if kind == "file":
            options = dict(a.split(" ", 1) for a in attrs[1:])
            content = "\n".join(body) + "\n"
            steps.append(
                File(options["as:"] if "as:" in options else "admin", attrs[0], int(options["mode"], 8), content)
            )
            continue
        who, stopped = attrs[0], "server: stopped" in attrs[1:]
        for raw in body:
            if raw.startswith("$ "):
                steps.append(Command(who, raw[2:], [], stopped))
                stopped = False
            elif (
                steps and isinstance(steps[-1], Command) and steps[-1].expected == [] and steps[-1].line.endswith("\\")
            ):
                steps[-1].line = steps[-1].line[:-1] + raw.strip()
            elif raw.strip():
                steps[-1].expected.append(raw.rstrip())
    return steps


def pattern(expected: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in expected.strip().split("…")))


def shown(expected: list[str], printed: str) -> list[str]:
    """The expected lines not among the printed ones."""
    lines = [line.strip() for line in printed.splitlines()]
    return [e for e in expected if e != "^C" and not any(pattern(e).fullmatch(line) for line in lines)]


# -- the machine ----------------------------------------------------------------------------------------------------
@dataclass
class Actor:
    name: str
    home: Path
    env: dict
    state: Path  # the shell's exported variables, carried from one command to the next

    def bash(self, line: str) -> str:
        return (
            f"[ -f {shlex.quote(str(self.state))} ] && . {shlex.quote(str(self.state))}\n"
            f"{line}\nstatus=$?\nexport -p > {shlex.quote(str(self.state))}\nexit $status\n"
        )


@dataclass
class Deployment:
    name: str
    port: int
    clone: Path
    tmp: Path
    model: FakeOpenAIServer
    actors: dict[str, Actor]
    substitutions: dict[str, str]
    server: subprocess.Popen | None = None
    server_log: Path | None = None
    keys: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)

    def sub(self, text: str) -> str:
        for old, new in self.substitutions.items():
            text = text.replace(old, new)
        return text

    def env_of(self, who: str) -> dict:
        """The environment the actor's shell ends up with (what their exports set)."""
        actor = self.actors[who]
        done = subprocess.run(
            ["bash", "-c", actor.bash("env -0")], capture_output=True, env=actor.env, cwd=self.clone, timeout=60
        )
        return dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(60)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None


def run_step(d: Deployment, step: Command | File) -> None:
    actor = d.actors[step.who]
    if isinstance(step, File):
        path = Path(d.sub(step.path).replace("~", str(actor.home), 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        content = d.sub(step.content).replace("mdk_…", d.keys.get(step.who, "mdk_…"))
        path.write_text(content)
        path.chmod(step.mode)
        if step.who != "admin":  # and the server's certificate, which the admin hands over with the key
            cert = (d.actors["admin"].home / "tls" / "cert.pem").read_bytes()
            (actor.home / "mdagent-server.pem").write_bytes(cert)
        d.ran.append(f"file {step.path}")
        return
    if step.server_stopped:
        d.stop_server()
    line = d.sub(step.line)
    if line.startswith("sudo "):  # root's part: the tests run as root
        line = line[len("sudo ") :]
    expected = [d.sub(e) for e in step.expected]
    d.ran.append(step.line)
    if re.match(r"mdagent server serve\b", line):
        serve(d, actor, line, expected)
        return
    if "^C" in expected:
        interrupted(d, actor, line, expected)
        return
    done = subprocess.run(
        ["bash", "-c", actor.bash(line)], capture_output=True, text=True, env=actor.env, cwd=d.clone, timeout=900
    )
    printed = done.stdout + done.stderr
    want = 2 if any(e.startswith("error:") for e in expected) else 0
    assert done.returncode == want, (
        f"`{step.line}` exited {done.returncode}, the page implies {want}:\n{printed[-3000:]}"
    )
    assert "Traceback" not in printed, f"`{step.line}`:\n{printed[-3000:]}"
    assert not (missing := shown(expected, printed)), f"`{step.line}` did not print {missing}; it printed:\n{printed}"
    if key := re.search(r"API key \(shown only now; give it to (\w+) privately\): (mdk_\S+)", printed):
        d.keys[key[1]] = key[2]


def serve(d: Deployment, actor: Actor, line: str, expected: list[str]) -> None:
    d.stop_server()
    d.server_log = d.tmp / f"server-{len(d.ran)}.log"
    with d.server_log.open("w") as log:
        d.server = subprocess.Popen(
            ["bash", "-c", actor.bash(f"exec {line}")],
            env=actor.env,
            cwd=d.clone,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    first = pattern(expected[0])
    deadline = time.monotonic() + 240
    while not any(first.fullmatch(x.strip()) for x in d.server_log.read_text().splitlines()):
        assert d.server.poll() is None, f"`{line}` ended:\n{d.server_log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"`{line}` never printed {expected[0]!r}:\n{d.server_log.read_text()}"
        time.sleep(0.5)
    url = f"https://localhost:{d.port}/health"
    cert = ssl.create_default_context(cafile=d.actors["admin"].home / "tls" / "cert.pem")
    while True:  # it says it serves before the socket answers TLS: wait for the health check
        try:
            if httpx.get(url, verify=cert, timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, d.server_log.read_text()
            time.sleep(0.5)
    printed = d.server_log.read_text()
    assert not (missing := shown(expected, printed)), f"`{line}` did not print {missing}:\n{printed}"


def interrupted(d: Deployment, actor: Actor, line: str, expected: list[str]) -> None:
    """The command is the user's `mdagent run`: Ctrl-C once their run is running, as a person would."""
    with d.model._lock:
        d.model.answers.appendleft(LONG)  # this run's script: long enough to be interrupted
    client = d.env_of(actor.name)
    proc = subprocess.Popen(
        ["bash", "-c", actor.bash(f"exec {line}")],
        env=actor.env,
        cwd=d.clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    key = (actor.home / ".config" / "mdagent" / "key").read_text().strip()
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started"
        runs = httpx.get(
            f"{client['MDAGENT_SERVER']}/api/v1/runs",
            headers={"authorization": f"Bearer {key}"},
            verify=ssl.create_default_context(cafile=client["SSL_CERT_FILE"]),
            timeout=30,
        ).json()
        if any(r["verdict"] == "running" and "long" in r["task"] for r in runs):
            break
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    printed = out + err
    assert proc.returncode == 1, f"`{line}` exited {proc.returncode} after Ctrl-C:\n{printed}"
    assert "Traceback" not in printed, printed
    assert not (missing := shown(expected, printed)), f"`{line}` did not print {missing}:\n{printed}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    import psycopg

    tmp = tmp_path_factory.mktemp("deploy-path")
    name = f"mdagent-test-deploy-{uuid.uuid4().hex[:8]}"
    clone = tmp / "mdagent-hpc"
    for rel in subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split():
        if (REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            (clone / rel).write_bytes((REPO / rel).read_bytes())
    subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True, timeout=300)
    site = next((clone / ".venv" / "lib").glob("python3*/site-packages"))
    purelib = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (site / "dependencies.pth").write_text(purelib + "\n")  # the dependencies: this checkout's, not PyPI's
    model = FakeOpenAIServer([GOOD] * 20, model="fake-model").start()
    port = free_port()
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MDAGENT_", "AIIDA_")) and k not in ("SSL_CERT_FILE", "VIRTUAL_ENV")
    }
    base["PATH"] = f"{VENV_BIN}:{base.get('PATH', '/usr/bin:/bin')}"
    actors = {}
    for who in ("admin", "alice"):
        home = tmp / who
        home.mkdir()
        actors[who] = Actor(who, home, {**base, "HOME": str(home)}, tmp / f"{who}.env")
    # what the admin typed into an editor: the database password (PostgreSQL here trusts 127.0.0.1: any works)
    secret = actors["admin"].home / ".config" / "mdagent" / "db-password"
    secret.parent.mkdir(parents=True)
    secret.write_text("p@ss:w/rd")
    secret.chmod(0o600)
    d = Deployment(
        name=name,
        port=port,
        clone=clone,
        tmp=tmp,
        model=model,
        actors=actors,
        substitutions={
            "mdagent-shared": name,
            "mdagent_shared": name.replace("-", "_"),
            "mdagent-restored": f"{name}-r",
            "mdagent_restored": f"{name}-r".replace("-", "_"),
            "mdagent.group.example": "localhost",
            "0.0.0.0": "127.0.0.1",
            "8765": str(port),
            "/var/backups/mdagent": str(tmp / "backups"),
            "http://127.0.0.1:8000/v1": model.base_url,
            "my-model": "fake-model",
        },
    )
    try:
        yield d
    finally:
        d.stop_server()
        stop = subprocess.run(
            ["bash", "-c", actors["admin"].bash("mdagent daemon stop")],
            env=actors["admin"].env,
            cwd=clone,
            capture_output=True,
            text=True,
            timeout=300,
        )
        model.stop()
        subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60)
        with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            for db in (name, f"{name}-r"):
                conn.execute(f'DROP DATABASE IF EXISTS "{db.replace("-", "_")}" WITH (FORCE)')
        assert stop.returncode == 0, stop.stdout + stop.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the tests ----------------------------------------------------------------------------------------------------
def test_the_page_has_a_runnable_path_with_each_step():
    steps = documented(DOC.read_text())
    commands = " ".join(s.line for s in steps if isinstance(s, Command))
    for step in (
        "install.sh --root",
        "install.sh --client",
        "rabbitmqctl add_vhost",
        "rabbitmqctl set_permissions",
        "server setup",
        "users defaults",
        "users add",
        "openssl req -x509",
        "server serve",
        "mdagent run",
        "daemon stop",
        "server backup",
        "server restore",
        "verdi storage migrate",
    ):
        assert step in commands, f"docs/deploy.md has no runnable step with `{step}`"
    assert any(isinstance(s, File) and s.path.endswith("config.yaml") for s in steps), "the model endpoint"
    assert not re.search(r"--(db|broker)-password\b", commands), "a password on a command line"


@pytest.mark.slow
def test_the_documented_path_works_when_followed_literally(deployment):
    for step in documented(DOC.read_text()):
        run_step(deployment, step)
    admin = deployment.actors["admin"]
    backups = deployment.tmp / "backups"
    for path in [backups, *backups.rglob("*")]:
        if not path.is_symlink():
            assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    settings = json.loads((admin.home / ".local" / "share" / "mdagent" / "server.json").read_text())
    assert settings["profile"] == deployment.name, "the restore repointed server.json without being asked"
    assert not (admin.home / ".aiida").exists(), "a command made a local AiiDA configuration"


def walked(d: Deployment) -> Deployment:
    assert d.server is not None and d.server.poll() is None, "the documented path ran first and left the server up"
    return d


def commands() -> list[list[str]]:
    """Every command and subcommand of `mdagent --help`, as `--help`, and those that only read, as a user would
    type them (with a pk that does not exist where one is needed)."""
    import click

    from mdagent_hpc.cli.main import COMMANDS, main

    found = []
    ctx = click.Context(main)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        found.append([name, "--help"])
        if isinstance(command, click.Group):
            found += [[name, sub, "--help"] for sub in command.list_commands(ctx)]
    found += [
        ["runs"],
        ["runs", "--json"],
        ["show", "999999"],
        ["runs", "query", "--element", "Cu"],
        ["plot", "999999"],
        ["runs", "diff", "999998", "999999"],
        ["runs", "index"],
        ["cancel", "999999"],
        ["daemon", "status"],
        ["verdi", "process", "list"],
        ["site", "list"],
        ["llm", "list"],
        ["users", "list"],
        ["sweep", "status", "999999"],
        ["export", "999999"],
        ["potentials", "list"],
    ]
    return found


@pytest.mark.slow
def test_every_command_with_mdagent_server_set_and_with_the_servers_home_gives_no_traceback(deployment):
    d = walked(deployment)
    for who in ("alice", "admin"):
        env = d.env_of(who)
        for args in commands():
            done = subprocess.run(
                [sys.executable, "-m", "mdagent_hpc.cli", *args],
                capture_output=True,
                text=True,
                env=env,
                cwd=d.tmp,
                timeout=300,
                stdin=subprocess.DEVNULL,
            )
            said = done.stdout + done.stderr
            assert "Traceback" not in said, (who, args, said[-3000:])
            if done.returncode == 2 and said.strip():
                assert said.strip().splitlines()[-1].startswith(("error:", "Error:")), (who, args, said[-2000:])
    assert not (d.actors["admin"].home / ".aiida").exists() and not (d.actors["alice"].home / ".aiida").exists()


@pytest.mark.slow
def test_https_against_plain_http_and_an_untrusted_certificate_are_one_sentence_each(deployment):
    d = walked(deployment)
    env = d.env_of("alice")
    plain = f"http://localhost:{d.port}"  # the server speaks TLS: plain HTTP to it
    for url, said in (
        (f"https://localhost:{free_port()}", "does not answer"),
        (plain, "if it serves HTTPS, use https://"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mdagent_hpc.cli", "runs"],
            capture_output=True,
            text=True,
            env={**env, "MDAGENT_SERVER": url},
            timeout=120,
        )
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    untrusted = {k: v for k, v in env.items() if k != "SSL_CERT_FILE"}
    done = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "runs"], capture_output=True, text=True, env=untrusted, timeout=120
    )
    assert done.returncode == 2 and "certificate this machine does not trust" in done.stderr, done.stderr
    with FakePlainServer() as port:  # a server without TLS, asked with https://
        done = subprocess.run(
            [sys.executable, "-m", "mdagent_hpc.cli", "runs"],
            capture_output=True,
            text=True,
            env={**env, "MDAGENT_SERVER": f"https://127.0.0.1:{port}"},
            timeout=120,
        )
    assert done.returncode == 2 and "answers plain HTTP, not HTTPS" in done.stderr, done.stderr


class FakePlainServer:
    """A plain HTTP server on a free port (what `server serve` without certificates is, to a TLS client)."""

    def __enter__(self) -> int:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self.httpd.server_address[1]

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
def test_the_servers_commands_elsewhere_refuse_instead_of_making_a_local_store_or_profile(deployment, tmp_path):
    d = walked(deployment)
    elsewhere = {**d.actors["admin"].env, "HOME": str(tmp_path)}  # another account on the server host
    for args, said in (
        (["users", "add", "carol"], "not the mdagent server's home"),
        (["users", "list"], "not the mdagent server's home"),
        (["users", "defaults", "--concurrent-runs", "2"], "not the mdagent server's home"),
        (["server", "backup", str(tmp_path / "b")], "no shared profile yet"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=elsewhere, timeout=300
        )
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    assert not (tmp_path / ".local" / "share" / "mdagent" / "users.db").exists()
    # in the server's home, a profile server.json does not know is refused, not made
    env = {**d.env_of("admin"), "MDAGENT_AIIDA_PROFILE": "no-such-profile"}
    done = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "runs"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 2 and "no local profile is made here" in done.stderr, done.stderr


def test_a_remote_users_run_names_the_admin_for_the_servers_model_settings_and_not_the_servers_disk():
    from mdagent_hpc.api.remote import on_server

    said = "No LLM endpoint is configured: set MDAGENT_LLM_BASE_URL (e.g. http://localhost:8000/v1 for vLLM)"
    run = on_server(
        {
            "pk": 7,
            "uuid": "u",
            "task": TASK,
            "ctime": "2026-12-07T10:00:00",
            "verdict": "failed",
            "exit_message": said,
            "attempts": [
                {
                    "number": 1,
                    "stage": "generate",
                    "diagnostics": [{"severity": "error", "code": "llm.unavailable", "message": said}],
                    "job": {"site": "local", "workdir": "/srv/mdagent/.local/share/mdagent/work/ab/cd"},
                }
            ],
        }
    )
    assert "ask your mdagent admin" in run.exit_message and said in run.exit_message
    assert "ask your mdagent admin" in run.attempts[0].diagnostics[0].message
    assert "/srv/mdagent" not in run.attempts[0].job.workdir and "mdagent dashboard" in run.attempts[0].job.workdir
