"""Where the LLM endpoint is and how to sample from it: defaults < config.yaml < env vars < overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from mdagent_hpc.home import mdagent_home


class LLMError(Exception):
    """Base of every error of the llm package."""


class LLMConfigError(LLMError):
    """A setting has a bad value; the message names where it came from."""


class LLMNotConfigured(LLMConfigError):
    """No endpoint (base_url) is configured at all."""


class LLMSettings(BaseModel):
    """Endpoint and sampling settings. Frozen (and so hashable) so clients can be cached per settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    model: str | None = Field(None, description="model name; None = the first model the server lists")
    api_key: SecretStr = SecretStr("EMPTY")
    timeout_s: float = Field(120.0, gt=0, description="timeout of one HTTP request")
    max_retries: int = Field(3, ge=0, le=10, description="retries on connection errors, timeouts, 429, 5xx")
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int = Field(4096, gt=0)
    seed: int | None = None
    structured_output: Literal["auto", "json_schema", "grammar", "off"] = Field(
        "auto",
        description="auto: json_schema, falling back to fenced blocks if the server rejects it; json_schema: never"
        " fall back; grammar: the script constrained by a LAMMPS grammar (vLLM structured_outputs), falling back"
        " to fenced blocks; off: plain text",
    )
    candidates: int = Field(1, ge=1, le=16, description="scripts asked for per request (n); all are preflighted")
    context_tokens: int | None = Field(
        None, gt=0, description="the model's context length; None: read from the server (vLLM's max_model_len)"
    )

    @field_validator("structured_output", mode="before")
    @classmethod
    def _plain_off(cls, value: Any) -> Any:
        # YAML reads a bare `off`/`no`/`false` as False (and `on`/`yes` as True).
        if isinstance(value, bool):
            return "auto" if value else "off"
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "none", "0"):
            return "off"
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL like http://localhost:8000/v1, got {url!r}")
        url = url.strip().rstrip("/")
        # vLLM and most servers mount the API under /v1; people often give just host:port.
        return url + "/v1" if parts.path in ("", "/") else url


ENV_VARS = {
    "base_url": "MDAGENT_LLM_BASE_URL",
    "model": "MDAGENT_LLM_MODEL",
    "api_key": "MDAGENT_LLM_API_KEY",
    "timeout_s": "MDAGENT_LLM_TIMEOUT",
    "temperature": "MDAGENT_LLM_TEMPERATURE",
    "max_tokens": "MDAGENT_LLM_MAX_TOKENS",
    "max_retries": "MDAGENT_LLM_MAX_RETRIES",
    "top_p": "MDAGENT_LLM_TOP_P",
    "seed": "MDAGENT_LLM_SEED",
    "structured_output": "MDAGENT_LLM_STRUCTURED_OUTPUT",
    "candidates": "MDAGENT_LLM_CANDIDATES",
    "context_tokens": "MDAGENT_LLM_CONTEXT_TOKENS",
}


def config_file() -> Path:
    return mdagent_home() / "config.yaml"


def _read_config_section(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise LLMConfigError(f"{path}: not valid YAML ({problem}{where})") from None
    except OSError as err:
        raise LLMConfigError(f"{path}: cannot read ({err.strerror})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise LLMConfigError(f"{path}: expected a mapping with an 'llm:' section, got {type(doc).__name__}")
    section = doc.get("llm") or {}
    if not isinstance(section, dict):
        raise LLMConfigError(f"{path}: 'llm:' must be a mapping of settings, got {type(section).__name__}")
    unknown = sorted(set(map(str, section)) - set(LLMSettings.model_fields))
    if unknown:
        known = ", ".join(LLMSettings.model_fields)
        raise LLMConfigError(f"{path}: unknown key llm.{unknown[0]} (known keys: {known})")
    return section


def load_llm_settings(overrides: dict[str, Any] | None = None) -> LLMSettings:
    """Merge defaults, `$MDAGENT_HOME/config.yaml` (`llm:`), `MDAGENT_LLM_*` env vars and `overrides`.

    None values in `overrides` and empty env vars count as not set.
    """
    path = config_file()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in _read_config_section(path).items():
        values[key], sources[key] = value, f"{path} (llm.{key})"
    for key, var in ENV_VARS.items():
        if env := os.environ.get(var, "").strip():
            values[key], sources[key] = env, f"${var}"
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key], sources[key] = value, f"override {key!r}"

    from mdagent_hpc.llm.serve import registered_key, registered_settings

    if not values.get("base_url"):
        # the endpoint `mdagent llm serve` started (waits while its model loads), with its own URL and key
        if (registered := registered_settings()) is not None:
            found, source = registered
            values |= {"base_url": found["base_url"], "api_key": found["api_key"]}
            sources |= {"base_url": source, "api_key": source}
            if not values.get("model"):
                values["model"], sources["model"] = found["model"], source
    elif not values.get("api_key") and (key := registered_key(str(values["base_url"]))):
        values["api_key"], sources["api_key"] = key, "the endpoint `mdagent llm serve` registered at that URL"
    if not values.get("base_url"):
        raise LLMNotConfigured(
            "No LLM endpoint is configured: set MDAGENT_LLM_BASE_URL (e.g. http://localhost:8000/v1 for vLLM)"
            f" or add 'llm: {{base_url: http://localhost:8000/v1, model: MODEL}}' to {path},"
            " or start one with `mdagent llm serve --site SITE --model MODEL`."
        )
    try:
        return LLMSettings(**values)
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "?"
        source = sources.get(key, f"setting {key!r}")
        shown = "***" if key == "api_key" else repr(first.get("input"))
        raise LLMConfigError(f"{source}: bad value {shown} for {key}: {first['msg']}") from None
