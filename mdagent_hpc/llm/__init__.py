"""LLM access: settings, prompts and the script-generating client.

Names load on first use, so that the pure prompt builder (`llm.prompts`) imports without the openai client.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "GeneratedScript": "answers",
    "Generation": "answers",
    "LLMUnavailableError": "unavailable",
    "check_endpoint": "client",
    "generate": "client",
    "LLMConfigError": "config",
    "LLMError": "config",
    "LLMNotConfiguredError": "config",
    "LLMSettings": "config",
    "load_llm_settings": "config",
    "PotentialInfo": "prompts",
    "SiteCapabilities": "prompts",
    "build_messages": "prompts",
    "task_elements": "prompts",
}
__all__ = [
    "GeneratedScript",
    "Generation",
    "LLMConfigError",
    "LLMError",
    "LLMNotConfiguredError",
    "LLMSettings",
    "LLMUnavailableError",
    "PotentialInfo",
    "SiteCapabilities",
    "build_messages",
    "check_endpoint",
    "generate",
    "load_llm_settings",
    "task_elements",
]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
