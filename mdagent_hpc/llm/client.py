"""One call to an OpenAI-compatible chat endpoint (vLLM, OpenAI, ...) that returns a LAMMPS script.

Retries, backoff and timeouts are the openai client's own: it retries connection errors, timeouts,
408/409/429 and 5xx up to `max_retries` times with exponential backoff (0.5 s doubling, at most 8 s,
or the server's Retry-After up to 2 min), and never retries 400/401/403/404.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, Field, field_validator

from mdagent_hpc.llm.config import LLMError, LLMSettings
from mdagent_hpc.models import Diagnostic, Severity

log = logging.getLogger(__name__)

UnavailableKind = Literal["unreachable", "auth", "rate_limited", "server_error", "timeout", "bad_request"]


class LLMUnavailable(LLMError):
    """The endpoint could not give an answer at all (as opposed to an answer without a usable script)."""

    def __init__(self, kind: UnavailableKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class GeneratedScript(BaseModel):
    script: str
    files: dict[str, str] = Field(default_factory=dict, description="extra small text files: name -> content")
    potentials: list[str] = Field(default_factory=list, description="potential file names the script uses")
    notes: str = ""

    @field_validator("files", mode="before")
    @classmethod
    def _files_from_list(cls, value: Any) -> Any:
        # On the wire (strict json_schema) files is a list of {name, content}; see RESPONSE_SCHEMA.
        if isinstance(value, list):
            return {f.get("name"): f.get("content") for f in value if isinstance(f, dict)}
        return value


# Strict structured output (OpenAI) requires closed objects with every property required, so no
# dict[str, str]: files travel as a list of {name, content} and GeneratedScript converts them.
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "script": {"type": "string", "description": "the complete LAMMPS input script"},
        "files": {
            "type": "array",
            "description": "extra small text files the script reads, e.g. a data file",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "content": {"type": "string"}},
                "required": ["name", "content"],
                "additionalProperties": False,
            },
        },
        "potentials": {"type": "array", "items": {"type": "string"}},
        "notes": {"type": "string"},
    },
    "required": ["script", "files", "potentials", "notes"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "lammps_script", "schema": RESPONSE_SCHEMA, "strict": True},
}


class Generation(BaseModel):
    """One generation, with everything needed to reproduce or audit it (never the API key)."""

    script: GeneratedScript | None = Field(description="None when the answer could not be read; see problems")
    raw_response: str
    model: str
    base_url: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = Field(
        description="sampling parameters sent: temperature, max_tokens, top_p, seed"
    )
    usage: dict[str, int] = Field(default_factory=dict)
    latency_s: float
    format_used: Literal["json_schema", "fenced_block"] = Field(
        description="json_schema: the request carried response_format; fenced_block: plain text answer"
    )
    finish_reason: str | None = None
    problems: list[Diagnostic] = Field(default_factory=list)


class LLMClient:
    """An openai client for one settings object. Remembers whether the server does structured output."""

    def __init__(self, settings: LLMSettings):
        self.settings = settings
        self.structured = settings.structured_output != "off"
        self.url = _without_userinfo(settings.base_url)
        self._model = settings.model
        self._openai = openai.OpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key.get_secret_value(),
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )

    def model_name(self) -> str:
        if self._model is None:
            served = self.list_models()
            if not served:
                raise LLMUnavailable("bad_request", f"{self.url} serves no models; set MDAGENT_LLM_MODEL.")
            self._model = served[0]
        return self._model

    def list_models(self) -> list[str]:
        try:
            return [m.id for m in self._openai.models.list().data]
        except (openai.APIError, ValueError, AttributeError, TypeError) as err:
            raise self._unavailable(err) from err

    def generate(self, messages: list[dict[str, Any]], *, temperature: float | None = None) -> Generation:
        s = self.settings
        params: dict[str, Any] = {
            "temperature": s.temperature if temperature is None else temperature,
            "max_tokens": s.max_tokens,
        }
        params |= {k: v for k, v in (("top_p", s.top_p), ("seed", s.seed)) if v is not None}
        start = time.monotonic()
        model = self.model_name()
        response = None
        if self.structured:
            try:
                response = self._create(model, messages, params, RESPONSE_FORMAT)
            except _SchemaRejected as err:
                if s.structured_output == "json_schema":
                    raise LLMUnavailable(
                        "bad_request",
                        f"{self.url} does not support json_schema structured output ({err}); "
                        "set structured_output to 'auto' or 'off'.",
                    ) from None
                log.info(
                    "%s rejected response_format (%s); using fenced code blocks from now on", self.url, err
                )
                self.structured = False
        format_used: Literal["json_schema", "fenced_block"] = (
            "json_schema" if response is not None else "fenced_block"
        )
        if response is None:
            response = self._create(model, messages, params, None)

        choice = response.choices[0]
        text = (choice.message.content if choice.message else None) or ""
        script, problems = read_answer(text, choice.finish_reason, s.max_tokens)
        counts = response.usage.model_dump() if response.usage else {}
        usage = {k: v for k, v in counts.items() if k.endswith("_tokens") and isinstance(v, int)}
        return Generation(
            script=script,
            raw_response=text,
            model=response.model or model,
            base_url=self.url,
            messages=messages,
            params=params,
            usage=usage,
            latency_s=round(time.monotonic() - start, 3),
            format_used=format_used,
            finish_reason=choice.finish_reason,
            problems=problems,
        )

    def _create(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], response_format: Any
    ) -> ChatCompletion:
        extra = {"response_format": response_format} if response_format else {}
        try:
            response = self._openai.chat.completions.create(model=model, messages=messages, **params, **extra)
        except openai.APIStatusError as err:
            if (
                response_format
                and err.status_code in (400, 422)
                and _SCHEMA_WORDS.search(_server_message(err))
            ):
                raise _SchemaRejected(_server_message(err)) from err
            raise self._unavailable(err) from err
        except (openai.APIError, ValueError) as err:  # ValueError: a body that is not JSON
            raise self._unavailable(err) from err
        if not isinstance(response, ChatCompletion) or not response.choices:
            raise LLMUnavailable(
                "server_error",
                f"{self.url} answered with something that is not a chat completion "
                f"({_one_line(str(response))!r}); {_CHECK_URL}",
            )
        return response

    def _unavailable(self, err: Exception) -> LLMUnavailable:
        s, url = self.settings, self.url
        attempts = f"{s.max_retries + 1} attempt(s)"
        if isinstance(err, openai.APITimeoutError):
            return LLMUnavailable(
                "timeout",
                f"{url} did not answer within {s.timeout_s:g} s ({attempts}); the server may be overloaded"
                " or the answer too long: raise MDAGENT_LLM_TIMEOUT or lower max_tokens.",
            )
        if isinstance(err, openai.APIConnectionError):
            cause = f" ({_one_line(str(err.__cause__))})" if err.__cause__ else ""
            return LLMUnavailable(
                "unreachable",
                f"Cannot connect to {url}{cause}; check that the server is running"
                " and that MDAGENT_LLM_BASE_URL is right.",
            )
        if not isinstance(err, openai.APIStatusError):
            return LLMUnavailable(
                "server_error",
                f"{url} answered with something that is not valid JSON ({_one_line(str(err))}); {_CHECK_URL}",
            )
        code, msg = err.status_code, _server_message(err)
        if code in (401, 403):
            return LLMUnavailable(
                "auth", f"{url} rejected the API key (HTTP {code}); check MDAGENT_LLM_API_KEY."
            )
        if code == 429:
            return LLMUnavailable(
                "rate_limited",
                f"{url} still answers HTTP 429 after {attempts}; wait a minute or lower the request rate.",
            )
        if code >= 500:
            return LLMUnavailable(
                "server_error",
                f"{url} failed with HTTP {code} after {attempts} ({msg}); check the server's log.",
            )
        if code == 404:
            return LLMUnavailable(
                "bad_request",
                f"{url} has no such model or route (HTTP 404: {msg}); check MDAGENT_LLM_MODEL and that the"
                " base URL ends in /v1.",
            )
        return LLMUnavailable(
            "bad_request", f"{url} rejected the request (HTTP {code}: {msg}); check the model and max_tokens."
        )


_CHECK_URL = "check that the base URL is the OpenAI-compatible API (usually ending in /v1)."


class _SchemaRejected(Exception):
    """The server said no to response_format (no structured-output support)."""


_SCHEMA_WORDS = re.compile(r"response_format|json_schema|structured|guided", re.IGNORECASE)


@functools.lru_cache(maxsize=16)
def get_client(settings: LLMSettings) -> LLMClient:
    """The shared client for these settings (so what it learnt about the server is kept)."""
    return LLMClient(settings)


def generate(
    settings: LLMSettings, messages: list[dict[str, Any]], *, temperature: float | None = None
) -> Generation:
    """Ask the model for a script. Raises LLMUnavailable if no answer could be had; an answer
    without a usable script comes back as a Generation with `script=None` and `problems`."""
    return get_client(settings).generate(messages, temperature=temperature)


def check_endpoint(settings: LLMSettings) -> dict[str, Any]:
    """Reach the endpoint as the agent will (for `mdagent llm check`), without retries, each step timed.

    Lists the served models, says whether the configured one is among them, and asks it for one tiny chat
    completion. `ok` is True only when all of that worked; otherwise `kind` (as in `LLMUnavailable`) and `error`
    (one sentence saying what to do) tell why.
    """
    client = get_client(settings.model_copy(update={"max_retries": 0}))
    result: dict[str, Any] = {"ok": False, "base_url": client.url, "model": settings.model, "reachable": False,
                              "models": [], "model_served": False, "models_seconds": None, "chat_seconds": None,
                              "answer": None, "kind": None, "error": None}
    start = time.monotonic()
    try:
        models = client.list_models()
    except LLMUnavailable as err:
        return result | {"kind": err.kind, "error": err.message}
    model = settings.model or (models[0] if models else None)
    result |= {"reachable": True, "models": models, "models_seconds": round(time.monotonic() - start, 3),
               "model": model, "model_served": model in models}
    if not result["model_served"]:
        return result | {"kind": "bad_request", "error": f"model {model!r} is not served by {client.url}; served: "
                         f"{', '.join(models) or 'none'} (set MDAGENT_LLM_MODEL to one of them)"}
    start = time.monotonic()
    try:
        response = client._create(model, [{"role": "user", "content": "Answer with one word: ready"}],
                                  {"temperature": 0.0, "max_tokens": 16}, None)
    except LLMUnavailable as err:
        return result | {"kind": err.kind, "error": err.message}
    text = (response.choices[0].message.content if response.choices[0].message else None) or ""
    return result | {"ok": True, "chat_seconds": round(time.monotonic() - start, 3), "answer": _one_line(text, 80)}


# --- reading the answer ---------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning models may prefix their answer with this
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_CORE_COMMANDS = re.compile(
    r"^(units|atom_style|read_data|create_box|pair_style|run|minimize)\b", re.MULTILINE
)


def read_answer(
    text: str, finish_reason: str | None = None, max_tokens: int | None = None
) -> tuple[GeneratedScript | None, list[Diagnostic]]:
    """The script in a model's answer: a JSON object (bare or fenced), else a fenced or bare LAMMPS script."""
    text = _THINK.sub("", text).strip()
    json_error = None
    script = None
    for candidate in _json_candidates(text):
        try:
            script = GeneratedScript.model_validate(json.loads(candidate))
            break
        except ValueError as err:  # JSONDecodeError and ValidationError
            json_error = json_error or _describe_json_error(err)
    script = script or _script_from_text(text)

    if script is None:
        cut = finish_reason == "length"
        if json_error or cut:
            why = f"the answer was cut off at max_tokens ({max_tokens})" if cut else json_error
            return None, [
                _problem(
                    "generate.invalid_json",
                    f"The answer is not a valid JSON object with a script: {why}.",
                    "Answer with exactly one JSON object {script, files, potentials, notes}; escape newlines"
                    " and quotes inside strings" + ("; keep the script shorter." if cut else "."),
                )
            ]
        return None, [
            _problem(
                "generate.no_script",
                "The answer contains no LAMMPS script, only prose.",
                "Answer with the JSON object {script, files, potentials, notes}; put the complete LAMMPS"
                " input in `script`.",
            )
        ]
    if not script.script.strip():
        notes = f" The notes say: {_one_line(script.notes)}" if script.notes.strip() else ""
        return None, [
            _problem(
                "generate.empty_script",
                f"The answer's script is empty.{notes}",
                "Put the complete LAMMPS input script in the `script` field.",
            )
        ]
    return script, []


def _json_candidates(text: str) -> list[str]:
    candidates = [text] if text.startswith("{") else []
    candidates += [body for _, body in _FENCE.findall(text) if body.strip().startswith("{")]
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last and text[first : last + 1] not in candidates:
        candidates.append(text[first : last + 1])
    return candidates


def _script_from_text(text: str) -> GeneratedScript | None:
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text) if not body.strip().startswith("{")]
    tagged = [body for lang, body in blocks if lang in ("lammps", "lmp")]
    if tagged or blocks:
        body = tagged[0] if tagged else max((b for _, b in blocks), key=len)
        notes = _one_line(_FENCE.sub(" ", text))[:500]
        return GeneratedScript(script=body.strip() + "\n", notes=notes)
    # A bare script: every line a lowercase command or a comment, with at least one core command.
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if lines and all(re.match(r"[a-z_]+(\s|$)", line) for line in lines) and _CORE_COMMANDS.search(text):
        return GeneratedScript(script=text + "\n")
    return None


def _describe_json_error(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno} column {err.colno}"
    errors = getattr(err, "errors", None)
    if callable(errors) and errors():
        first = errors()[0]
        return f"field {'.'.join(map(str, first['loc'])) or 'root'}: {first['msg']}"
    return _one_line(str(err))


def _server_message(err: openai.APIStatusError) -> str:
    """The server's own error message, without the client's "Error code: 500 - " prefix."""
    body = err.body
    message = body.get("message") if isinstance(body, dict) else None
    return _one_line(str(message or err.message))


def _problem(code: str, message: str, hint: str) -> Diagnostic:
    return Diagnostic(severity=Severity.ERROR, code=code, message=message, hint=hint)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
