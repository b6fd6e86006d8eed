"""The layers of docs/architecture.md: what each part of the package may import (inside functions too)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mdagent_hpc"

# layer -> the layers of ours it may import; third-party engines are checked separately below
ALLOWED = {
    # every MDAGENT_* variable and its resolver; the endpoint registry (serving/registry.py) is the resolver's last
    # source, imported inside that source only
    "settings": {"serving"},
    "models": set(),
    "configfile": {"models"},  # reading a YAML file into a model, with line numbers: for every layer below
    "home": {"configfile", "settings"},
    "lammps": {"models", "configfile", "home", "settings"},
    "llm": {"models", "configfile", "home", "lammps", "settings"},  # lammps.elements: the one periodic table
    "agent": {"models", "configfile", "lammps", "llm"},
    "query": {"models", "lammps", "llm"},  # provenance queries as data: filters, recorded fields, diffs, plots
    "sweep": {"models", "configfile", "lammps"},  # parameter sweeps as data: spec, points, results (pandas)
    "accounts": {"models", "configfile", "home", "settings"},  # users, hashed keys, quotas (SQLAlchemy)
    # served models: the endpoint registry, the vLLM job and its tunnel, the gateway (starlette, httpx2, uvicorn)
    "serving": {"models", "configfile", "home", "accounts", "execution"},
    # execution imports workflows only for the site probe's CalcJob
    "execution": {"models", "configfile", "home", "settings", "lammps", "agent", "sweep", "workflows"},
    "workflows": {"models", "configfile", "home", "lammps", "llm", "agent", "sweep", "execution", "query"},
    "api": {"models", "configfile", "home", "lammps", "llm", "agent", "sweep", "execution", "workflows", "query"},
    "cli": {"models", "configfile", "home", "lammps", "llm", "agent", "sweep", "execution", "workflows", "api", "query"},
}
ALLOWED["api"] |= {"accounts"}  # the shared server (issue 13) reads users through the API
ALLOWED["cli"] |= {"accounts", "serving", "settings"}
ENGINES = ("aiida", "plumpy", "parsl", "openai", "httpx", "requests", "fastapi")
PURE = {"models", "configfile", "lammps", "agent", "query", "sweep"}  # no engine at all
ENGINE_FREE_LLM = {"prompts.py", "grammar.py"}  # pure too: the agent's feedback uses prompts
ENGINE_FREE = {("accounts", "keys.py"), ("accounts", "quotas.py"), ("serving", "sse.py")}
WEB_ENGINES = ("sqlalchemy", "starlette", "uvicorn", "httpx2")
# benchmarks as data (issue 14): sets, scoring, training rows; workflows/bench.py runs them through the system
ALLOWED["evalbench"] = {"models"}
for _layer in ("workflows", "api", "cli"):
    ALLOWED[_layer] |= {"evalbench"}
PURE |= {"evalbench"}

# the read-only web dashboard (issue 12): pages over the API and the queries; its filters and view helpers are pure
ALLOWED["dashboard"] = {"models", "query", "workflows", "api"}
ALLOWED["cli"] |= {"dashboard"}
ENGINE_FREE |= {("dashboard", "filters.py"), ("dashboard", "view.py")}
# the shared server (issue 13): server/ over the API, the users store and the workflows; remote.py is its client,
# to which the API hands its calls when MDAGENT_SERVER is set
ALLOWED["server"] = {"models", "configfile", "home", "accounts", "api", "workflows", "execution", "sweep"}
ALLOWED["server"] |= {"dashboard"}  # its /dashboard/ pages are the dashboard app behind the key check
ALLOWED["remote"] = {"models", "api", "sweep", "workflows"}
ALLOWED["api"] |= {"remote"}
for _layer in ("workflows", "api", "remote", "server"):
    ALLOWED[_layer] |= {"settings"}
ALLOWED["cli"] |= {"server", "remote"}
ENGINE_FREE |= {("server", "wire.py"), ("server", "access.py")}
# the read side (issues 18, 19): every read of runs, sweeps, points and lessons, for a caller
ALLOWED["provenance"] = {"models", "home", "agent", "sweep", "evalbench", "execution"}
for _layer in ("workflows", "api", "cli", "dashboard", "server"):
    ALLOWED[_layer] |= {"provenance"}

def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "api"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if layer_of(p) in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_what_its_layer_may(path):
    layer = layer_of(path)
    for name in imports(path):
        parts = name.split(".")
        if parts[0] == "mdagent_hpc" and len(parts) > 1:
            target = parts[1]
            assert target == layer or target in ALLOWED[layer], f"{layer} may not import {name}"
        if layer in PURE or (layer == "llm" and path.name in ENGINE_FREE_LLM):
            assert parts[0] not in ENGINES, f"{path.name} is in the pure core but imports {name}"
        if layer in PURE or (layer, path.name) in ENGINE_FREE:
            assert parts[0] not in ENGINES + WEB_ENGINES, f"{path.name} is pure but imports {name}"


def test_the_layer_table_covers_every_package():
    assert {layer_of(p) for p in PACKAGE.rglob("*.py")} <= set(ALLOWED) | {"__main__"}
