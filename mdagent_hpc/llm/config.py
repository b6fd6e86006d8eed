"""The LLM client's settings: resolved by `mdagent_hpc.settings.resolver` (overrides > MDAGENT_LLM_* > config.yaml >
the endpoint `mdagent llm serve` registered), its problems raised as the llm package's errors."""

from __future__ import annotations

from typing import Any

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.settings.resolver import LLM_ENV as ENV_VARS
from mdagent_hpc.settings.resolver import LLMSettings, NotConfiguredError, SettingsError, config_file, resolve_llm


class LLMError(MDAgentError):
    """Base of every error of the llm package."""


class LLMConfigError(LLMError):
    """A setting has a bad value; the message names where it came from."""


class LLMNotConfiguredError(LLMConfigError):
    """No endpoint (base_url) is configured at all."""


def load_llm_settings(overrides: dict[str, Any] | None = None) -> LLMSettings:
    """The settings of the first source that has each (None values in `overrides` and empty variables count as
    not set); LLMNotConfiguredError when no source names an endpoint, LLMConfigError naming where a bad value came
    from."""
    try:
        return resolve_llm(overrides)
    except NotConfiguredError as exc:
        raise LLMNotConfiguredError(str(exc)) from None
    except SettingsError as exc:
        raise LLMConfigError(str(exc)) from None


__all__ = [
    "ENV_VARS",
    "LLMConfigError",
    "LLMError",
    "LLMNotConfiguredError",
    "LLMSettings",
    "config_file",
    "load_llm_settings",
]
