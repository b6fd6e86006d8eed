"""The `mdagent` command as a user meets it: one sentence and exit 2 for every mistake, the lazy command group,
`llm check` against the fake OpenAI server, `verdi` and `daemon` on mdagent's profile, and what `run`/`show`
print. Real processes: each command runs as `python -m mdagent_hpc.cli` in the session's MDAGENT_HOME."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]
GOOD = (REPO / "mdagent_hpc" / "examples" / "demo" / "good.lammps").read_text()


def mdagent(*args, env_extra=None, timeout=300, env=None):
    env = {**(env if env is not None else os.environ), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def one_sentence(result, *words) -> str:
    """The command failed with exit 2 and one line on stderr naming `words`; returns that line."""
    assert result.returncode == 2, (result.returncode, result.stdout[-1000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def aiida_profile():
    from mdagent_hpc.api import load_profile

    return load_profile()


# -- the group ------------------------------------------------------------------------------------------------
def test_help_lists_every_command_without_importing_heavy_modules():
    code = (
        "import sys\nfrom mdagent_hpc.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in ('aiida', 'rich', 'pydantic', 'mdagent_hpc.models', 'mdagent_hpc.lammps', 'yaml')"
        " if m in sys.modules]\nassert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from mdagent_hpc.cli.main import COMMANDS

    for name in COMMANDS:
        assert f"\n  {name} " in result.stdout


def test_import_mdagent_hpc_is_light_and_the_api_is_there():
    code = (
        "import sys, mdagent_hpc\nassert 'pydantic' not in sys.modules and 'aiida' not in sys.modules\n"
        "from mdagent_hpc import run, get_run, list_runs, check, evaluate, find_potentials, Run, MDAgentError\n"
        "assert 'aiida' not in sys.modules\n"
        "try:\n    mdagent_hpc.no_such_thing\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_check_starts_without_aiida(tmp_path):
    script = tmp_path / "in.lj"
    script.write_text(
        "units lj\natom_style atomic\nlattice fcc 0.8442\nregion box block 0 2 0 2 0 2\n"
        "create_box 1 box\ncreate_atoms 1 box\nmass 1 1.0\npair_style lj/cut 2.5\n"
        "pair_coeff 1 1 1.0 1.0 2.5\nrun 10\n"
    )
    code = (
        "import sys\nfrom mdagent_hpc.cli.main import main\n"
        f"try:\n    main(['check', '--no-dry-run', {str(script)!r}])\nexcept SystemExit as e:\n    code = e.code\n"
        "assert code == 0, code\nassert 'aiida' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize(
    "module", ["main", "check", "evaluate", "potentials", "run", "runs", "site", "image", "llm", "verdi", "render"]
)
def test_each_command_module_imports_on_its_own_without_aiida(module):
    code = f"import sys, mdagent_hpc.cli.{module}; assert 'aiida' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "name", ["run", "demo", "show", "runs", "check", "evaluate", "potentials", "site", "image", "llm", "daemon"]
)
def test_every_command_has_help(name):
    result = mdagent(name, "--help")
    assert result.returncode == 0 and "Usage: " in result.stdout, result.stderr


def test_python_m_and_the_console_script_are_the_same_command():
    script = Path(sys.executable).parent / "mdagent"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "0.1.0" in result.stdout


# -- item 8: what a new user hit ------------------------------------------------------------------------------
def test_show_a_node_that_is_not_an_agent_run(aiida_profile):
    from aiida import orm

    node = orm.Int(5).store()
    one_sentence(mdagent("show", str(node.pk)), f"{node.pk}", "not an agent run")
    one_sentence(mdagent("show", "999999"), "no node with pk 999999")


@pytest.mark.parametrize(
    "content", [b"\x7fELF\x02\x01\x01\x00\x00\x00\xd0\xff", b"\xff\xfe\x00a", b"name: x\x00\n", b"\x01\x02\x03"]
)
def test_site_add_on_a_binary_file(tmp_path, content):
    path = tmp_path / "site.yaml"
    path.write_bytes(content)
    one_sentence(mdagent("site", "add", str(path)), str(path), "not a text file")


def test_site_add_on_a_folder(tmp_path):
    one_sentence(mdagent("site", "add", str(tmp_path)), str(tmp_path))


@pytest.mark.parametrize(
    "args",
    [
        ["runs"],
        ["show", "1"],
        ["verdi", "process", "list"],
        ["daemon", "status"],
        ["site", "add", str(REPO / "site_configs" / "local.yaml")],
    ],
)
def test_an_mdagent_home_that_cannot_be_created(tmp_path, args):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    home = blocker / "home"
    line = one_sentence(mdagent(*args, env_extra={"MDAGENT_HOME": str(home)}), str(home.parent), "MDAGENT_HOME")
    assert "Not a directory" in line


def test_check_example_without_a_script():
    one_sentence(mdagent("check", "--example", "demo"), "demo", "melt")
    one_sentence(mdagent("check", "--example", "nope"), "nope", "melt")


def test_check_a_folder_and_a_missing_file(tmp_path):
    one_sentence(mdagent("check", str(tmp_path)), "folder")
    one_sentence(mdagent("check", str(tmp_path / "in.none")), "no such script")


@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "empty"),
        (b"hello\nthis is a text file\n", "not a LAMMPS log"),
        (b"\x7fELF\x00\x00\x01\x02" * 64, "binary"),
    ],
)
def test_evaluate_on_something_that_is_not_a_log(tmp_path, content, says):
    path = tmp_path / "log.lammps"
    path.write_bytes(content)
    one_sentence(mdagent("evaluate", str(path)), str(path), says)
    one_sentence(mdagent("evaluate", str(path), "--json"), says)


def test_evaluate_on_a_folder(tmp_path):
    one_sentence(mdagent("evaluate", str(tmp_path)), str(tmp_path), "folder")


def test_potentials_find_needs_element_symbols():
    one_sentence(mdagent("potentials", "find", "cu"), "cu", "element symbol")


# -- request files --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, says",
    [
        ("task: a: b\n", ":1: YAML syntax error"),
        (
            "task: Heat a small Cu crystal to 800 K\nsite: local\nloops:\n  max_attempts: 2\n",
            ":3: loops: unknown key (did you mean loop?); allowed: task, site",
        ),
        ("site: local\nmodel: m\n", ":1: task: required key is missing"),
        ("task: Heat a small Cu crystal to 800 K\nloop:\n  max_attempts: 0\n", ":3: loop.max_attempts"),
        ("- task: a list\n", ":1: expected a mapping of keys at the top, got a list"),
        ("", ":1: the file is empty; a request file needs at least task"),
    ],
)
def test_bad_request_files(tmp_path, text, says):
    path = tmp_path / "request.yaml"
    path.write_text(text)
    one_sentence(mdagent("run", "--file", str(path)), str(path), says)


def test_request_file_that_is_binary_or_missing(tmp_path):
    path = tmp_path / "request.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01")
    one_sentence(mdagent("run", "--file", str(path)), str(path), "not a text file")
    one_sentence(mdagent("run", "--file", str(tmp_path / "none.yaml")), ": no such file")


def test_run_needs_a_task_or_a_file(tmp_path):
    one_sentence(mdagent("run"), "TASK", "--file")
    path = tmp_path / "r.yaml"
    path.write_text("task: Heat a small Cu crystal to 800 K\n")
    one_sentence(mdagent("run", "Heat a small Cu crystal", "--file", str(path)), "either")


def test_a_request_with_answers_is_not_for_the_daemon(aiida_profile):
    one_sentence(
        mdagent("run", "--file", str(REPO / "workflows" / "requests" / "demo.yaml"), "--daemon"), "recorded answers"
    )


# -- llm check ------------------------------------------------------------------------------------------------
def test_llm_check_against_a_working_endpoint():
    with FakeOpenAIServer(["ready"], model="served-model") as server:
        result = mdagent("llm", "check", "--json", env_extra={"MDAGENT_LLM_BASE_URL": server.base_url})
        asked = server.requests
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["reachable"] and report["model"] == "served-model"
    assert report["models"] == ["served-model"] and report["answer"] == "ready"
    assert report["chat_seconds"] >= 0 and report["models_seconds"] >= 0
    assert len(asked) == 1 and asked[0]["model"] == "served-model" and asked[0]["max_tokens"] <= 16
    with FakeOpenAIServer(["ready"]) as server:
        text = mdagent("llm", "check", env_extra={"MDAGENT_LLM_BASE_URL": server.base_url})
    assert text.returncode == 0 and "the endpoint works" in text.stdout and "'ready'" in text.stdout


@pytest.mark.parametrize(
    "answer, says",
    [
        ({"status": 401}, "rejected the API key"),
        ({"garbage": "<html>proxy login</html>"}, "not a chat completion"),
        ({"status": 500}, "HTTP 500"),
    ],
)
def test_llm_check_says_what_is_wrong(answer, says):
    with FakeOpenAIServer([answer]) as server:
        result = mdagent("llm", "check", env_extra={"MDAGENT_LLM_BASE_URL": server.base_url})
    one_sentence(result, server.base_url, says)


def test_llm_check_unreachable_unserved_and_unconfigured():
    one_sentence(
        mdagent("llm", "check", env_extra={"MDAGENT_LLM_BASE_URL": "http://127.0.0.1:9/v1"}),
        "Cannot connect to http://127.0.0.1:9/v1",
    )
    with FakeOpenAIServer(["ready"]) as server:
        one_sentence(
            mdagent("llm", "check", "--model", "other", env_extra={"MDAGENT_LLM_BASE_URL": server.base_url}),
            "'other' is not served",
            "fake-model",
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDAGENT_LLM")}
    one_sentence(mdagent("llm", "check", env=env), "MDAGENT_LLM_BASE_URL")


# -- verdi and the daemon -------------------------------------------------------------------------------------
def test_verdi_runs_on_mdagents_profile(aiida_profile):
    from aiida import orm

    node = orm.Str("seen by verdi").store()
    result = mdagent("verdi", "node", "show", str(node.pk))
    assert result.returncode == 0, result.stderr
    assert node.uuid in result.stdout
    result = mdagent("verdi", "profile", "list")
    assert result.returncode == 0 and aiida_profile.name in result.stdout
    assert str(Path(os.environ["MDAGENT_HOME"])) in result.stdout + result.stderr
    passed = mdagent("verdi", "--help")  # verdi's own help, not mdagent's
    assert passed.returncode == 0 and "verdi [OPTIONS] COMMAND" in passed.stdout
    assert mdagent("verdi", "no-such-command").returncode == 2


def test_daemon_status_start_stop(aiida_profile):
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client()
    try:
        before = json.loads(mdagent("daemon", "status", "--json").stdout)
        assert before["running"] is False and before["profile"] == aiida_profile.name
        started = mdagent("daemon", "start")
        assert started.returncode == 0 and "daemon started" in started.stdout, started.stderr
        status = json.loads(mdagent("daemon", "status", "--json").stdout)
        assert status["running"] is True and status["pid"] == client.get_daemon_pid()
        assert "running (pid" in mdagent("daemon", "status").stdout
        stopped = mdagent("daemon", "stop")
        assert stopped.returncode == 0 and "daemon stopped" in stopped.stdout
        assert not client.is_daemon_running
        assert "stopped" in mdagent("daemon", "status").stdout
    finally:
        if client.is_daemon_running:
            client.stop_daemon(wait=True, timeout=60)


# -- what run and show print ----------------------------------------------------------------------------------
def test_run_and_show_print_the_task_observables_and_failed_generations(aiida_profile, tmp_path):
    request = tmp_path / "request.yaml"
    request.write_text(
        "task: Heat a small Cu crystal with EAM to 800 K in NVT and report its temperature\n"
        "loop:\n  max_attempts: 2\nanswers:\n  - I cannot write that script, sorry.\n"
        "  - |\n    ```lammps\n" + "".join(f"    {line}\n" for line in GOOD.splitlines()) + "    ```\n"
    )
    result = mdagent("run", "--file", str(request))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "task: 'Heat a small Cu crystal" in result.stderr  # the live progress starts with the task
    assert result.stdout.startswith("task: Heat a small Cu crystal")
    assert "observables (metal units): temp " in result.stdout and " K (mean " in result.stdout
    live = result.stderr
    for leak in ("[WARNING]", "[REPORT]", "output parser returned", "AgentWorkChain|"):
        assert leak not in live, live
    pk = int(result.stdout.rsplit("pk ", 1)[1].split()[0])

    shown = mdagent("show", str(pk))
    assert shown.returncode == 0, shown.stderr
    assert "task: Heat a small Cu crystal" in shown.stdout
    assert "attempt 1: reached generate" in shown.stdout and "generate.no_script" in shown.stdout
    assert "observables (metal units): temp " in shown.stdout and "passed" in shown.stdout
    data = json.loads(mdagent("show", str(pk), "--json").stdout)
    assert data["task"].startswith("Heat a small Cu crystal") and data["verdict"] == "passed"
    assert data["observables"]["temp_final"] > 0 and data["grade"] in ("pass", "warn")
    first, second = data["attempts"]
    assert first["attempt"] == 1 and first["stage"] == "generate" and first["script"] is None
    assert first["diagnostics"][0]["code"] == "generate.no_script"
    assert second["passed"] and second["evaluation"]["observables"]["temp_final"] > 0

    listed = json.loads(mdagent("runs", "--json", "--verdict", "passed", "--limit", "50").stdout)
    assert any(row["pk"] == pk and row["attempts"] == 2 and row["observables"] for row in listed)
