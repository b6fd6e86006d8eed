"""Why an endpoint gave no answer at all (as opposed to an answer without a usable script): `LLMUnavailableError`, its
kind, and one sentence saying what to do, made from the openai client's error."""

from __future__ import annotations

from typing import Literal

import openai

from mdagent_hpc.llm.answers import one_line
from mdagent_hpc.llm.config import LLMError, LLMSettings

CHECK_URL = "check that the base URL is the OpenAI-compatible API (usually ending in /v1)."


UnavailableKind = Literal["unreachable", "auth", "rate_limited", "server_error", "timeout", "bad_request"]


class LLMUnavailableError(LLMError):
    """The endpoint could not give an answer at all (as opposed to an answer without a usable script)."""

    def __init__(self, kind: UnavailableKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status: int | None = None  # the HTTP status, when the server answered with one
        self.status_text = kind  # "HTTP 500: <the server's words>", for messages that quote it

    @property
    def refusal(self) -> bool:
        """An HTTP error that a request constraint (response_format, a grammar) may have caused."""
        return self.status is not None and self.kind in ("bad_request", "server_error")


def server_message(err: openai.APIStatusError) -> str:
    """The server's own error message, without the client's "Error code: 500 - " prefix."""
    body = err.body
    message = body.get("message") if isinstance(body, dict) else None
    return one_line(str(message or err.message))


def unavailable(err: Exception, url: str, settings: LLMSettings) -> LLMUnavailableError:
    """Why the openai client's `err` left no answer from `url`, in one sentence saying what to do."""
    found = _explain(err, url, settings)
    if isinstance(err, openai.APIStatusError):
        found.status = err.status_code
        found.status_text = f"HTTP {err.status_code}: {server_message(err)}"
    return found


def _explain(err: Exception, url: str, settings: LLMSettings) -> LLMUnavailableError:
    attempts = f"{settings.max_retries + 1} attempt(s)"
    if isinstance(err, openai.APITimeoutError):
        return LLMUnavailableError(
            "timeout",
            f"{url} did not answer within {settings.timeout_s:g} s ({attempts}); the server may be overloaded"
            " or the answer too long: raise MDAGENT_LLM_TIMEOUT or lower max_tokens.",
        )
    if isinstance(err, openai.APIConnectionError):
        cause = f" ({one_line(str(err.__cause__))})" if err.__cause__ else ""
        return LLMUnavailableError(
            "unreachable",
            f"Cannot connect to {url}{cause}; check that the server is running and that MDAGENT_LLM_BASE_URL is right.",
        )
    if not isinstance(err, openai.APIStatusError):
        return LLMUnavailableError(
            "server_error",
            f"{url} answered with something that is not valid JSON ({one_line(str(err))}); {CHECK_URL}",
        )
    code, msg = err.status_code, server_message(err)
    if code in (401, 403):
        return LLMUnavailableError("auth", f"{url} rejected the API key (HTTP {code}); check MDAGENT_LLM_API_KEY.")
    if code == 429:
        return LLMUnavailableError(
            "rate_limited",
            f"{url} still answers HTTP 429 after {attempts} ({msg}); wait until the limit resets"
            " or lower the request rate.",
        )
    if code >= 500:
        return LLMUnavailableError(
            "server_error",
            f"{url} failed with HTTP {code} after {attempts} ({msg}); check the server's log.",
        )
    if code == 404:
        return LLMUnavailableError(
            "bad_request",
            f"{url} has no such model or route (HTTP 404: {msg}); check MDAGENT_LLM_MODEL and that the"
            " base URL ends in /v1.",
        )
    return LLMUnavailableError(
        "bad_request", f"{url} rejected the request (HTTP {code}: {msg}); check the model and max_tokens."
    )
