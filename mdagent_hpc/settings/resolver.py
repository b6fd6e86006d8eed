"""The settings resolver: each setting from the first of its sources that has it.

    explicit overrides > MDAGENT_* environment > $MDAGENT_HOME/config.yaml > server.json > the endpoint registry

`Settings` holds what the commands share (the users database, from `mdagent server setup`'s server.json after the
environment); `LLMSettings` the LLM endpoint and sampling (config.yaml's `llm:` section, then the endpoint
`mdagent llm serve` registered). Both are pydantic-settings models; a bad value is a `SettingsError` that names
where it came from (`$MDAGENT_LLM_TIMEOUT: bad value ...`, `.../config.yaml (llm.timeout_s): ...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.settings import env, mdagent_home, saved_server_settings, server_file


class SettingsError(MDAgentError, ValueError):
    """A setting has a bad value, or a source cannot be read; the message names where it came from."""


class NotConfiguredError(SettingsError):
    """A required setting has no source at all."""


def config_file() -> Path:
    return mdagent_home() / "config.yaml"


# -- the sources, each a pydantic-settings source that says where its values come from -------------------------------
class Source(PydanticBaseSettingsSource):
    """Values of the settings class's fields from one place; `where(field)` names that place in messages."""

    cheap = True  # asked again to name the source of a bad value

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ gives all values at once

    def __call__(self) -> dict[str, Any]:
        raise NotImplementedError

    def where(self, field: str) -> str:
        raise NotImplementedError


class Overrides(Source):
    """What the caller passes (command-line options, a run's stored settings); None counts as not given."""

    def __init__(self, settings_cls: type[BaseSettings], given: dict[str, Any]):
        super().__init__(settings_cls)
        self.given = {key: value for key, value in given.items() if value is not None}

    def __call__(self) -> dict[str, Any]:
        return dict(self.given)

    def where(self, field: str) -> str:
        return f"override {field!r}"


class Environment(Source):
    """The `MDAGENT_*` variables of the class's ENV table; empty counts as unset."""

    def __call__(self) -> dict[str, Any]:
        return {field: value for field, var in self.settings_cls.ENV.items() if (value := env(var)) is not None}

    def where(self, field: str) -> str:
        return f"${self.settings_cls.ENV[field]}"


class ConfigYaml(Source):
    """A section of `$MDAGENT_HOME/config.yaml` (`llm:`); its unknown keys are refused."""

    def __init__(self, settings_cls: type[BaseSettings], section: str):
        super().__init__(settings_cls)
        self.section, self.path = section, config_file()

    def __call__(self) -> dict[str, Any]:
        path, name = self.path, self.section
        if not path.is_file():
            return {}
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise SettingsError(f"{path}: not valid YAML ({problem}{at})") from None
        except OSError as err:
            raise SettingsError(f"{path}: cannot read ({err.strerror})") from None
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            raise SettingsError(f"{path}: expected a mapping with an '{name}:' section, got {type(doc).__name__}")
        section = doc.get(name) or {}
        if not isinstance(section, dict):
            raise SettingsError(f"{path}: '{name}:' must be a mapping of settings, got {type(section).__name__}")
        if unknown := sorted(set(map(str, section)) - set(self.settings_cls.model_fields)):
            known = ", ".join(self.settings_cls.model_fields)
            raise SettingsError(f"{path}: unknown key {name}.{unknown[0]} (known keys: {known})")
        return section

    def where(self, field: str) -> str:
        return f"{self.path} ({self.section}.{field})"


class ServerFile(Source):
    """What `mdagent server setup` saved: the users database."""

    def __call__(self) -> dict[str, Any]:
        found = saved_server_settings()
        return {"users_db": found["users_db"]} if found.get("users_db") else {}

    def where(self, field: str) -> str:
        return f"{server_file()} ({field})"


class RegisteredEndpoint(Source):
    """The endpoint `mdagent llm serve` started, for a client given no base_url (waiting while its model loads);
    for a client given the base_url of a registered endpoint but no key (a run's stored settings), its key."""

    cheap = False  # it may wait for a model to load

    def __call__(self) -> dict[str, Any]:
        from mdagent_hpc.settings.endpoints import EndpointError, registered_key, registered_settings

        state = self.current_state
        try:
            if not state.get("base_url"):
                if (registered := registered_settings()) is None:
                    return {}
                found, _ = registered
                return found if not state.get("model") else {k: v for k, v in found.items() if k != "model"}
            if not state.get("api_key") and (key := registered_key(str(state["base_url"]))):
                return {"api_key": key}
        except EndpointError as exc:
            raise SettingsError(str(exc)) from None
        return {}

    def where(self, field: str) -> str:
        return "the endpoint `mdagent llm serve` registered"


# -- the models --------------------------------------------------------------------------------------------------------
class Resolved(BaseSettings):
    """A settings model whose values come from `sources()`, first one first; `load` names a bad value's source."""

    ENV: ClassVar[dict[str, str]] = {}

    @classmethod
    def sources(cls, overrides: dict[str, Any]) -> list[Source]:
        return [Overrides(cls, overrides), Environment(cls)]

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[Source, ...]:
        # `load` hands its overrides as init kwargs: init_settings holds them
        return tuple(cls.sources(init_settings.init_kwargs))

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None):
        try:
            return cls(**(overrides or {}))
        except ValidationError as err:
            first = err.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "?"
            sources = cls.sources(overrides or {})
            found = (s.where(field) for s in sources if s.cheap and field in s())
            where = next(found, next((s.where(field) for s in sources if not s.cheap), f"setting {field!r}"))
            shown = "***" if "key" in field or "password" in field else repr(first.get("input"))
            raise SettingsError(f"{where}: bad value {shown} for {field}: {first['msg']}") from None


class Settings(Resolved):
    """What the commands share beyond the LLM."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)
    ENV: ClassVar[dict[str, str]] = {"users_db": "MDAGENT_USERS_DB"}

    users_db: str | None = Field(None, description="the users database URL; None: $MDAGENT_HOME/users.db")

    @classmethod
    def sources(cls, overrides: dict[str, Any]) -> list[Source]:
        return [Overrides(cls, overrides), Environment(cls), ServerFile(cls)]


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


LLM_ENV = {
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


class _ResolvedLLM(Resolved, LLMSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True, validate_default=False)
    ENV: ClassVar[dict[str, str]] = LLM_ENV
    base_url: str | None = None  # required in the end, checked by `resolve_llm` for a message that says how

    @classmethod
    def sources(cls, overrides: dict[str, Any]) -> list[Source]:
        return [Overrides(cls, overrides), Environment(cls), ConfigYaml(cls, "llm"), RegisteredEndpoint(cls)]


def resolve_llm(overrides: dict[str, Any] | None = None) -> LLMSettings:
    """The LLM settings; `NotConfiguredError` when no source names an endpoint, `SettingsError` for a bad value."""
    resolved = _ResolvedLLM.load(overrides)
    if not resolved.base_url:
        raise NotConfiguredError(
            "No LLM endpoint is configured: set MDAGENT_LLM_BASE_URL (e.g. http://localhost:8000/v1 for vLLM)"
            f" or add 'llm: {{base_url: http://localhost:8000/v1, model: MODEL}}' to {config_file()},"
            " or start one with `mdagent llm serve --site SITE --model MODEL`."
        )
    return LLMSettings.model_validate(dict(resolved))


def resolve(overrides: dict[str, Any] | None = None) -> Settings:
    return Settings.load(overrides)


__all__ = ["LLMSettings", "NotConfiguredError", "Settings", "SettingsError", "resolve", "resolve_llm"]
