"""LLM access: settings, prompts and the script-generating client."""

from mdagent_hpc.llm.client import GeneratedScript, Generation, LLMUnavailable, check_endpoint, generate
from mdagent_hpc.llm.config import LLMConfigError, LLMError, LLMNotConfigured, LLMSettings, load_llm_settings
from mdagent_hpc.llm.prompts import (
    AttemptFeedback,
    PotentialInfo,
    SiteCapabilities,
    build_messages,
    task_elements,
)

__all__ = [
    "AttemptFeedback",
    "GeneratedScript",
    "Generation",
    "LLMConfigError",
    "LLMError",
    "LLMNotConfigured",
    "LLMSettings",
    "LLMUnavailable",
    "PotentialInfo",
    "SiteCapabilities",
    "build_messages",
    "check_endpoint",
    "generate",
    "load_llm_settings",
    "task_elements",
]
