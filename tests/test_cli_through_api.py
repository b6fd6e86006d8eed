"""The commands go through the public API (issue 18, item 2): bench, export, llm, site, image and ask reach the
engine only through `mdagent_hpc.api`, and what needs this machine's profile refuses through a shared server."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THROUGH_THE_API = ["bench", "export", "llm", "site", "image", "ask"]
ENGINE = ("workflows", "execution", "serving", "evalbench", "provenance")


def engine_imports(source: str) -> list[str]:
    """The modules of the engine's layers that `source` imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found += [n for n in names if n.split(".")[:2] in (["mdagent_hpc", layer] for layer in ENGINE)]
    return found


def test_the_check_sees_an_engine_import():
    source = (
        "def f():\n    from mdagent_hpc.workflows.probe import probe_site\n    import mdagent_hpc.serving.llm_job\n"
    )
    assert engine_imports(source) == ["mdagent_hpc.workflows.probe", "mdagent_hpc.serving.llm_job"]
    assert engine_imports("from mdagent_hpc import api\nfrom mdagent_hpc.llm import load_llm_settings\n") == []


@pytest.mark.parametrize("module", THROUGH_THE_API)
def test_the_command_reaches_the_engine_only_through_the_api(module):
    assert engine_imports((REPO / "mdagent_hpc" / "cli" / f"{module}.py").read_text()) == []


def test_every_public_function_is_importable_from_the_package_and_documented():
    import mdagent_hpc
    from mdagent_hpc import api

    docs = (REPO / "docs" / "python.md").read_text()
    for name in api.__all__:
        assert name in mdagent_hpc._API, name
        assert getattr(mdagent_hpc, name) is getattr(api, name)
        if name != "MDAgentError":
            assert f"{name}(" in docs, f"docs/python.md does not show {name}"


LOCAL_ONLY = {
    "add_site": lambda api: api.add_site(REPO / "site_configs" / "local.yaml"),
    "test_site": lambda api: api.test_site("local"),
    "serve_model": lambda api: api.serve_model("local", "m"),
    "wait_for_model": lambda api: api.wait_for_model(None),
    "list_endpoints": lambda api: api.list_endpoints(),
    "get_endpoint": lambda api: api.get_endpoint("e"),
    "endpoint_status": lambda api: api.endpoint_status(),
    "stop_endpoint": lambda api: api.stop_endpoint("e"),
    "bench_codegen": lambda api: api.bench_codegen(REPO / "missing.jsonl", replay=True),
    "bench_qa": lambda api: api.bench_qa(REPO / "missing.jsonl"),
    "bench_report": lambda api: api.bench_report("b"),
    "list_benches": lambda api: api.list_benches(),
    "export_trajectories": lambda api: api.export_trajectories("sft"),
}


@pytest.mark.parametrize("name", LOCAL_ONLY)
def test_what_needs_this_machines_profile_says_so_through_a_server(name, tmp_path, monkeypatch):
    from mdagent_hpc import api

    monkeypatch.setenv("MDAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MDAGENT_SERVER", "http://127.0.0.1:9")
    with pytest.raises(api.MDAgentError, match="MDAGENT_SERVER") as refused:
        LOCAL_ONLY[name](api)
    assert len(str(refused.value).splitlines()) == 1
    assert not (tmp_path / "home").exists()  # nothing was written here: no site kept, no profile made


def test_site_add_through_a_server_is_one_sentence_and_keeps_nothing(tmp_path):
    from test_cli import mdagent, one_sentence

    env = {"MDAGENT_HOME": str(tmp_path / "home"), "MDAGENT_SERVER": "http://127.0.0.1:9"}
    one_sentence(mdagent("site", "add", str(REPO / "site_configs" / "local.yaml"), env_extra=env), "MDAGENT_SERVER")
    assert not (tmp_path / "home" / "sites").exists()


def test_the_job_script_needs_no_profile_and_is_written_anywhere(monkeypatch):
    from mdagent_hpc import api

    monkeypatch.setenv("MDAGENT_SERVER", "http://127.0.0.1:9")
    with pytest.raises(api.MDAgentError, match="vllm:"):  # the site's own problem, not the server
        api.llm_job_script("local", "m")
