"""The layers of docs/architecture.md: what each part of the package may import (inside functions too)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mdagent_hpc"

# THE LAYER TABLE (docs/architecture.md shows the same): bottom first. A module may import its own layer and the
# layers of lower tiers, never a layer of its own tier or above: there are no upward or sideways imports.
TIERS = [
    ("errors",),  # MDAgentError: the base of every user-facing error
    ("settings",),  # every MDAGENT_* variable (settings/__init__: the standard library only), the resolver and the
    # endpoints `llm serve` registered (its last source)
    ("home", "models"),  # MDAGENT_HOME; the domain types
    ("configfile",),  # a YAML file into a model, with line numbers
    ("lammps",),  # parsing, policy, potentials, preflight, logs, evaluation
    ("llm", "sweeps", "evalbench"),  # the model client and prompts; sweeps as data; benchmark sets and scoring
    ("agent", "accounts", "web"),  # the loop's decisions and memory; users, keys, quotas; what server and gateway share
    ("execution",),  # where a site meets an engine: site configs, AiiDA computers, the profile, Parsl, containers
    ("serving", "provenance"),  # llm serve, tunnel, gateway; THE read side: every read of runs takes the caller
    ("workflows",),  # AiiDA processes only
    ("api",),  # the public functions; api/local (this profile), api/remote (a shared server), api/requests
    ("dashboard",),  # the read-only web pages
    ("server",),  # the shared server: HTTP app, deployment
    ("cli",),  # commands: thin, through the API
]
TIER = {layer: n for n, tier in enumerate(TIERS) for layer in tier}
ALLOWED = {layer: {other for other, m in TIER.items() if m < n} for layer, n in TIER.items()}

ENGINES = ("aiida", "plumpy", "parsl", "openai", "httpx", "requests", "fastapi")
WEB_ENGINES = ("sqlalchemy", "starlette", "uvicorn", "pydantic_settings")
PURE = {"errors", "home", "models", "configfile", "lammps", "sweeps", "evalbench", "agent"}  # no engine at all
PURE_FILES = {  # pure modules inside layers that use an engine elsewhere
    "settings/__init__.py",
    "llm/prompts.py",
    "llm/grammar.py",
    "accounts/keys.py",
    "accounts/quotas.py",
    "serving/gateway/sse.py",
    "provenance/filters.py",
    "provenance/record.py",
    "provenance/diff.py",
    "provenance/plot.py",
    "dashboard/filters.py",
    "dashboard/view.py",
    "server/wire.py",
    "server/access.py",
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    if rel.parts[0] in ("__init__.py", "__main__.py"):
        return "api"
    return rel.parts[0].removesuffix(".py")


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
    layer, rel = layer_of(path), path.relative_to(PACKAGE).as_posix()
    pure = layer in PURE or rel in PURE_FILES
    for name in imports(path):
        parts = name.split(".")
        if parts[0] == "mdagent_hpc" and len(parts) > 1:
            target = layer_of(PACKAGE / parts[1])
            assert target == layer or target in ALLOWED[layer], f"{layer} (tier {TIER[layer]}) may not import {name}"
        if pure:
            assert parts[0] not in ENGINES + WEB_ENGINES, f"{rel} is pure but imports {name}"


def test_the_layer_table_covers_every_package():
    assert {layer_of(p) for p in PACKAGE.rglob("*.py")} <= set(ALLOWED) | {"__main__"}


# -- no circles between files (the layer table alone lets two files of one layer import each other) ---------------
def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at the top or inside functions; `from X import name` of a
    submodule counts as importing that submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_circles_between_files():
    # a package's __init__ that re-exports its submodules is not a circle of ideas: leave it out
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in import_graph().items()}
    assert circles(graph) == []


def test_the_circle_check_sees_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
