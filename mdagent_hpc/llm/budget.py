"""The token budget of a request: how much of the model's context the prompt takes, and what that leaves for the
answer's `max_tokens`.

A prompt's tokens are estimated from its characters (at a cautious ratio until the server has counted one prompt);
a server that refuses a request too long for its context says the context length, and often the prompt's tokens,
in its message.
"""

from __future__ import annotations

import re
from typing import Any

CHARS_PER_TOKEN = 3.0  # a cautious first guess; replaced by the server's own count after one answer
MIN_ANSWER_TOKENS = 64

_CONTEXT_LENGTH = re.compile(r"maximum (?:context|model) length is (\d+)|max_model_len[= ]+(\d+)", re.IGNORECASE)
_PROMPT_TOKENS = re.compile(
    r"(\d+) (?:input|prompt) tokens|prompt contains (?:at least )?(\d+)|messages resulted in (\d+) tokens",
    re.IGNORECASE,
)


def message_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages)


def prompt_estimate(messages: list[dict[str, Any]], chars_per_token: float) -> float:
    """The prompt's tokens, from its characters (the chat template adds a few tokens a message)."""
    return message_chars(messages) / chars_per_token * 1.1 + 8 * len(messages) + 16


def answer_tokens(wanted: int, context: int | None, prompt: float) -> int:
    """`max_tokens`: `wanted`, lowered to what the context leaves after the prompt, never below MIN_ANSWER_TOKENS."""
    if not context:
        return wanted
    return max(MIN_ANSWER_TOKENS, min(wanted, int(context - prompt)))


def context_refusal(message: str) -> tuple[int, int | None] | None:
    """(the context length, the prompt's tokens when said) from a server's refusal of a request too long for its
    context (vLLM 0.32: "max_tokens=N cannot be greater than max_model_len=M"; OpenAI and older vLLM: "maximum
    context length is M tokens ... N input tokens"); None for any other refusal."""
    context = _CONTEXT_LENGTH.search(message)
    if not context:
        return None
    prompt = _PROMPT_TOKENS.search(message)
    length = int(next(g for g in context.groups() if g))
    return length, int(next(g for g in prompt.groups() if g)) if prompt else None
