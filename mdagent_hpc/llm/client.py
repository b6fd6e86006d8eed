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
import threading
import time
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, Field, field_validator

from mdagent_hpc.llm.config import LLMConfigError, LLMError, LLMSettings
from mdagent_hpc.models import Diagnostic, Severity

log = logging.getLogger(__name__)

UnavailableKind = Literal["unreachable", "auth", "rate_limited", "server_error", "timeout", "bad_request"]


class LLMUnavailable(LLMError):
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


class Choice(BaseModel):
    """One of the answers of a request (several when `candidates` > 1)."""

    script: GeneratedScript | None = Field(description="None when the answer could not be read; see problems")
    raw_response: str
    finish_reason: str | None = None
    problems: list[Diagnostic] = Field(default_factory=list)


FormatUsed = Literal["json_schema", "grammar", "fenced_block"]


class Generation(BaseModel):
    """One request, with everything needed to reproduce or audit it (never the API key)."""

    choices: list[Choice] = Field(description="the answers, in the server's order; at least one")
    model: str
    base_url: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = Field(
        description="sampling parameters sent: temperature, max_tokens (sized to the context), top_p, seed, n"
    )
    usage: dict[str, int] = Field(default_factory=dict)
    latency_s: float
    format_used: FormatUsed = Field(
        description="json_schema: the request carried response_format; grammar: a LAMMPS grammar "
        "(structured_outputs); fenced_block: plain text answer"
    )
    fallback: str | None = Field(None, description="why the constraint asked for was not used: the server refused it")
    context_tokens: int | None = Field(None, description="the model's context length, when known")

    # The first answer, for callers that asked for one.
    @property
    def script(self) -> GeneratedScript | None:
        return self.choices[0].script

    @property
    def raw_response(self) -> str:
        return self.choices[0].raw_response

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    @property
    def problems(self) -> list[Diagnostic]:
        return self.choices[0].problems


Key = tuple[str, str]  # (endpoint, model)


class _Learnt:
    """What this process learnt about each endpoint and model, whatever client asked: the constraints it refused
    (and why), those that worked, its context length and how many characters a prompt token is."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.refused: dict[Key, dict[str, str]] = {}
        self.works: dict[Key, set[str]] = {}
        self.context: dict[Key, int | None] = {}
        self.chars_per_token: dict[Key, float] = {}

    def clear(self) -> None:
        with self.lock:
            for table in (self.refused, self.works, self.context, self.chars_per_token):
                table.clear()


LEARNT = _Learnt()
CHARS_PER_TOKEN = 3.0  # a cautious first guess; replaced by the server's own count after one answer
MIN_ANSWER_TOKENS = 64


class LLMClient:
    """An openai client for one settings object. What it learns about the server is kept per endpoint and model
    for the whole process (`LEARNT`), so a client made for another temperature knows it too."""

    def __init__(self, settings: LLMSettings):
        self.settings = settings
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
        return list(self._served())

    def _served(self) -> dict[str, int | None]:
        """Model id -> its context length (vLLM's `max_model_len`; None where the server does not say)."""
        try:
            data = self._openai.models.list().data
            served = {m.id: getattr(m, "max_model_len", None) for m in data}
        except (openai.APIError, ValueError, AttributeError, TypeError) as err:
            raise self._unavailable(err) from err
        with LEARNT.lock:
            for model, length in served.items():
                LEARNT.context[(self.url, model)] = length if isinstance(length, int) and length > 0 else None
        return served

    def context_tokens(self, model: str) -> int | None:
        """The model's context length: the setting, else what the server said (asked once per process)."""
        if self.settings.context_tokens:
            return self.settings.context_tokens
        if (self.url, model) not in LEARNT.context:
            try:
                self._served()
            except LLMUnavailable:
                LEARNT.context[(self.url, model)] = None  # the chat request will say what is wrong
        return LEARNT.context.get((self.url, model))

    def generate(
        self, messages: list[dict[str, Any]], *, temperature: float | None = None, grammar: str | None = None
    ) -> Generation:
        s = self.settings
        model = self.model_name()
        key = (self.url, model)
        wanted = {"auto": "json_schema", "json_schema": "json_schema", "grammar": "grammar", "off": None}[
            s.structured_output
        ]
        if wanted == "grammar" and not grammar:
            raise LLMConfigError("structured_output is 'grammar' but no grammar was given")
        constraint = (
            {"response_format": RESPONSE_FORMAT}
            if wanted == "json_schema"
            else {"extra_body": {"structured_outputs": {"grammar": grammar}}}
        )
        params: dict[str, Any] = {
            "temperature": s.temperature if temperature is None else temperature,
            "max_tokens": self._answer_tokens(key, messages, self.context_tokens(model)),
        }
        params |= {k: v for k, v in (("top_p", s.top_p), ("seed", s.seed)) if v is not None}
        if s.candidates > 1:
            params["n"] = s.candidates
        start = time.monotonic()
        response, used, fallback = self._ask(model, messages, params, wanted, constraint)
        usage = self._learn_usage(key, messages, response)
        choices = []
        for choice in response.choices:
            text = (choice.message.content if choice.message else None) or ""
            if used == "grammar":
                script, problems = read_script(text, choice.finish_reason, params["max_tokens"])
            else:
                script, problems = read_answer(text, choice.finish_reason, params["max_tokens"])
            choices.append(
                Choice(script=script, raw_response=text, finish_reason=choice.finish_reason, problems=problems)
            )
        return Generation(
            choices=choices,
            model=response.model or model,
            base_url=self.url,
            messages=messages,
            params=params,
            usage=usage,
            latency_s=round(time.monotonic() - start, 3),
            format_used=used or "fenced_block",
            fallback=fallback,
            context_tokens=LEARNT.context.get(key) or s.context_tokens,
        )

    def ask_json(
        self, messages: list[dict[str, Any]], schema: dict[str, Any], name: str
    ) -> tuple[str, str | None, int]:
        """One answer meant to be a JSON object of `schema` (e.g. a sweep spec): asked with response_format
        json_schema unless structured_output is 'off' (a LAMMPS grammar is for scripts only), with `generate`'s
        fallbacks, learnt refusals and context budget. The answer's text, its finish reason and the max_tokens
        asked for."""
        model = self.model_name()
        key = (self.url, model)
        wanted = None if self.settings.structured_output == "off" else "json_schema"
        constraint = {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}}
        params: dict[str, Any] = {
            "temperature": self.settings.temperature,
            "max_tokens": self._answer_tokens(key, messages, self.context_tokens(model)),
        }
        response, _, _ = self._ask(model, messages, params, wanted, constraint)
        self._learn_usage(key, messages, response)
        choice = response.choices[0]
        text = (choice.message.content if choice.message else None) or ""
        return _THINK.sub("", text).strip(), choice.finish_reason, params["max_tokens"]

    def _ask(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        wanted: str | None,
        constraint: dict[str, Any],
    ) -> tuple[ChatCompletion, str | None, str | None]:
        """The response, the constraint it was asked under (None: plain text) and why `wanted` was not used."""
        fallback = LEARNT.refused.get((self.url, model), {}).get(wanted) if wanted else None
        response, used = None, None
        if wanted and not fallback:
            response, fallback = self._constrained(model, messages, params, wanted, constraint)
            used = wanted if fallback is None else None
        if response is None:
            response = self._create(model, messages, params, None)
        return response, used, fallback

    def _learn_usage(self, key: Key, messages: list[dict[str, Any]], response: ChatCompletion) -> dict[str, int]:
        """The response's token counts; the prompt's tells how many characters a token is here."""
        counts = response.usage.model_dump() if response.usage else {}
        usage = {k: v for k, v in counts.items() if k.endswith("_tokens") and isinstance(v, int)}
        if usage.get("prompt_tokens"):
            LEARNT.chars_per_token[key] = _chars(messages) / usage["prompt_tokens"]
        return usage

    def _answer_tokens(self, key: Key, messages: list[dict[str, Any]], context: int | None) -> int:
        """`max_tokens`, lowered to what the context leaves after the prompt (estimated; see `_create`)."""
        wanted = self.settings.max_tokens
        if not context:
            return wanted
        return max(MIN_ANSWER_TOKENS, min(wanted, int(context - _prompt_estimate(key, messages))))

    def _room_left(
        self, model: str, messages: list[dict[str, Any]], message: str, max_tokens: int | None
    ) -> int | None:
        """Tokens left for the answer when the server's `message` says the request does not fit the context
        (vLLM 0.32: "max_tokens=N cannot be greater than max_model_len=M"; OpenAI and older vLLM: "maximum
        context length is M tokens ... N input tokens"); None for any other refusal."""
        context = _CONTEXT_LENGTH.search(message)
        if not (context and max_tokens):
            return None
        length = int(next(g for g in context.groups() if g))
        with LEARNT.lock:
            LEARNT.context[(self.url, model)] = length
        prompt = _PROMPT_TOKENS.search(message)
        used = int(next(g for g in prompt.groups() if g)) if prompt else _prompt_estimate((self.url, model), messages)
        room = int(length - used - 1)
        return room if room < max_tokens else None

    def _constrained(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], kind: str, extra: dict[str, Any]
    ) -> tuple[ChatCompletion | None, str | None]:
        """Ask with the constraint `kind` (the request's `extra` fields). A server that cannot do it may say so
        with any status (vLLM 400, llama.cpp 500): until the constraint has worked once here, a refusal is tried
        again without it, and if that answers, the constraint is taken as unsupported (for this process) and the
        answer used."""
        key = (self.url, model)
        if kind not in LEARNT.works.get(key, set()):
            try:
                response = self._create(model, messages, params, extra, retries=0)
            except LLMUnavailable as err:
                if err.refusal:
                    return self._refused(model, messages, params, extra, kind, err)
                if err.kind in ("auth", "server_error") or not self.settings.max_retries:
                    raise
                # 429, a timeout, no connection: the retries left
                response = self._create(model, messages, params, extra, retries=self.settings.max_retries - 1)
        else:
            response = self._create(model, messages, params, extra)
        with LEARNT.lock:
            LEARNT.works.setdefault(key, set()).add(kind)
        return response, None

    def _refused(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        extra: dict[str, Any],
        kind: str,
        err: LLMUnavailable,
    ) -> tuple[ChatCompletion | None, str | None]:
        """The first request with the constraint failed: it may be the constraint, or the server."""
        if err.kind == "server_error":  # a 5xx may pass on: ask once more with the constraint
            try:
                return self._create(model, messages, params, extra, retries=0), None
            except LLMUnavailable as again:
                if not again.refusal:
                    raise
                err = again
        if self.settings.structured_output == "json_schema":
            raise LLMUnavailable(
                err.kind,
                f"{err.message} If the server does not support json_schema structured output, "
                "set structured_output to 'auto' or 'off'.",
            ) from None
        response = self._create(model, messages, params, None)  # fails as the server fails, if it is the server
        reason = f"{self.url} refused {_CONSTRAINT_NAMES[kind]} ({err.status_text})"
        key = (self.url, model)
        with LEARNT.lock:
            first = kind not in LEARNT.refused.setdefault(key, {})
            LEARNT.refused[key][kind] = reason
        if first:
            log.warning("%s; using fenced code blocks with %s from now on", reason, model)
        return response, reason

    def _create(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        extra: dict[str, Any] | None,
        retries: int | None = None,
    ) -> ChatCompletion:
        """One chat completion. A `max_tokens` the context cannot hold is lowered once, to what the server
        says is left."""
        client = self._openai if retries is None else self._openai.with_options(max_retries=retries)
        try:
            response = client.chat.completions.create(model=model, messages=messages, **params, **(extra or {}))
        except openai.BadRequestError as err:
            room = self._room_left(model, messages, _server_message(err), params.get("max_tokens"))
            if room is None:
                raise self._unavailable(err) from err
            if room < MIN_ANSWER_TOKENS:
                raise LLMUnavailable(
                    "bad_request",
                    f"The prompt leaves no room for an answer in {model}'s context ({_server_message(err)});"
                    " serve the model with a longer context (vLLM --max-model-len) or shorten the task.",
                ) from err
            log.info(
                "%s: max_tokens %s does not fit the context; asking for %d", self.url, params.get("max_tokens"), room
            )
            params["max_tokens"] = room
            return self._create(model, messages, params, extra, retries)
        except openai.APIStatusError as err:
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

    def chat(self, messages: list[dict[str, Any]], max_tokens: int, temperature: float = 0.0) -> ChatCompletion:
        """One plain chat completion (questions, judging): no script reading; raises LLMUnavailable."""
        model = self.model_name()
        params = {"temperature": temperature, "max_tokens": min(max_tokens, self.settings.max_tokens)}
        return self._create(model, messages, params, None)

    def _unavailable(self, err: Exception) -> LLMUnavailable:
        unavailable = self._explain(err)
        if isinstance(err, openai.APIStatusError):
            unavailable.status = err.status_code
            unavailable.status_text = f"HTTP {err.status_code}: {_server_message(err)}"
        return unavailable

    def _explain(self, err: Exception) -> LLMUnavailable:
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
            return LLMUnavailable("auth", f"{url} rejected the API key (HTTP {code}); check MDAGENT_LLM_API_KEY.")
        if code == 429:
            return LLMUnavailable(
                "rate_limited",
                f"{url} still answers HTTP 429 after {attempts} ({msg}); wait until the limit resets"
                " or lower the request rate.",
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


_CONSTRAINT_NAMES = {"json_schema": "response_format json_schema", "grammar": "structured_outputs grammar"}
_CONTEXT_LENGTH = re.compile(r"maximum (?:context|model) length is (\d+)|max_model_len[= ]+(\d+)", re.IGNORECASE)
_PROMPT_TOKENS = re.compile(
    r"(\d+) (?:input|prompt) tokens|prompt contains (?:at least )?(\d+)|messages resulted in (\d+) tokens",
    re.IGNORECASE,
)


def _prompt_estimate(key: Key, messages: list[dict[str, Any]]) -> float:
    """The prompt's tokens, from its characters (the chat template adds a few tokens a message)."""
    return _chars(messages) / LEARNT.chars_per_token.get(key, CHARS_PER_TOKEN) * 1.1 + 8 * len(messages) + 16


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages)


@functools.lru_cache(maxsize=16)
def get_client(settings: LLMSettings) -> LLMClient:
    """The shared client for these settings (so what it learnt about the server is kept)."""
    return LLMClient(settings)


def generate(
    settings: LLMSettings,
    messages: list[dict[str, Any]],
    *,
    temperature: float | None = None,
    grammar: str | None = None,
) -> Generation:
    """Ask the model for `settings.candidates` scripts. Raises LLMUnavailable if no answer could be had; an answer
    without a usable script comes back as a Choice with `script=None` and `problems`. `grammar` (see
    `llm.grammar`) is used when `structured_output` is `grammar`."""
    return get_client(settings).generate(messages, temperature=temperature, grammar=grammar)


def check_endpoint(settings: LLMSettings) -> dict[str, Any]:
    """Reach the endpoint as the agent will (for `mdagent llm check`), without retries, each step timed.

    Lists the served models, says whether the configured one is among them, and asks it for one tiny chat
    completion. `ok` is True only when all of that worked; otherwise `kind` (as in `LLMUnavailable`) and `error`
    (one sentence saying what to do) tell why.
    """
    client = get_client(settings.model_copy(update={"max_retries": 0}))
    result: dict[str, Any] = {
        "ok": False,
        "base_url": client.url,
        "model": settings.model,
        "reachable": False,
        "models": [],
        "model_served": False,
        "models_seconds": None,
        "chat_seconds": None,
        "answer": None,
        "kind": None,
        "error": None,
    }
    start = time.monotonic()
    try:
        models = client.list_models()
    except LLMUnavailable as err:
        return result | {"kind": err.kind, "error": err.message}
    model = settings.model or (models[0] if models else None)
    result |= {
        "reachable": True,
        "models": models,
        "models_seconds": round(time.monotonic() - start, 3),
        "model": model,
        "model_served": model in models,
    }
    if not result["model_served"]:
        return result | {
            "kind": "bad_request",
            "error": f"model {model!r} is not served by {client.url}; served: "
            f"{', '.join(models) or 'none'} (set MDAGENT_LLM_MODEL to one of them)",
        }
    start = time.monotonic()
    try:
        response = client._create(
            model,
            [{"role": "user", "content": "Answer with one word: ready"}],
            {"temperature": 0.0, "max_tokens": 16},
            None,
        )
    except LLMUnavailable as err:
        return result | {"kind": err.kind, "error": err.message}
    text = (response.choices[0].message.content if response.choices[0].message else None) or ""
    return result | {
        "ok": True,
        "chat_seconds": round(time.monotonic() - start, 3),
        "answer": _one_line(text, 80),
        "context_tokens": LEARNT.context.get((client.url, model)),
    }


# --- reading the answer ---------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning models may prefix their answer with this
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_CORE_COMMANDS = re.compile(r"^(units|atom_style|read_data|create_box|pair_style|run|minimize)\b", re.MULTILINE)


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
        other = sorted({lang for lang, _ in _code_blocks(text)})
        if other:
            return None, [
                _problem(
                    "generate.no_script",
                    f"The answer holds code in {', '.join(other)}, not a LAMMPS input script.",
                    "Write the LAMMPS input script itself (in the JSON object's `script`, or a ```lammps block).",
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


def read_script(
    text: str, finish_reason: str | None = None, max_tokens: int | None = None
) -> tuple[GeneratedScript | None, list[Diagnostic]]:
    """An answer written under the LAMMPS grammar: the script itself. Cut off at max_tokens, its complete lines
    are still a script the grammar allowed (preflight judges what is missing), with a warning."""
    text = _THINK.sub("", text)
    if finish_reason == "length":
        complete = text[: text.rfind("\n") + 1]
        cut = _problem(
            "generate.cut_off",
            f"The script was cut off at max_tokens ({max_tokens})"
            + ("; its last, unfinished line is left out." if complete.strip() else "."),
            "Write a shorter script: fewer comments, no repeated blocks.",
        )
        if not complete.strip():
            return None, [cut]
        return GeneratedScript(script=complete), [cut.model_copy(update={"severity": Severity.WARNING})]
    if text.strip():
        return GeneratedScript(script=text.strip() + "\n"), []
    return None, [_problem("generate.empty_script", "The answer was empty.", "Write the complete LAMMPS script.")]


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block that is not a JSON object."""
    return [(lang.lower(), body) for lang, body in _FENCE.findall(text) if not body.strip().startswith("{")]


def _script_from_text(text: str) -> GeneratedScript | None:
    """A ```lammps (or unlabelled) block, else a bare script. A block in another language (python, bash) is never
    taken: running it as LAMMPS input would only confuse the model's next attempt."""
    blocks = _code_blocks(text)
    tagged = [body for lang, body in blocks if lang in ("lammps", "lmp")]
    untagged = [body for lang, body in blocks if not lang]
    if tagged or untagged:
        body = tagged[0] if tagged else max(untagged, key=len)
        notes = _one_line(_FENCE.sub(" ", text))[:500]
        return GeneratedScript(script=body.strip() + "\n", notes=notes)
    if blocks:
        return None
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
