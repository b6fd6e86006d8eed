"""The client of an OpenAI-compatible chat endpoint (vLLM, OpenAI, ...): a request for LAMMPS scripts (or a JSON
object, or plain chat) asked under a constraint (json_schema, a LAMMPS grammar) and asked again without it when the
server refuses it, `max_tokens` sized to the model's context; what it learns about each endpoint is kept for the
process (`LEARNT`). Reading the answers is `llm.answers`, the token arithmetic `llm.budget`, the errors
`llm.unavailable`.

Retries, backoff and timeouts are the openai client's own: it retries connection errors, timeouts,
408/409/429 and 5xx up to `max_retries` times with exponential backoff (0.5 s doubling, at most 8 s,
or the server's Retry-After up to 2 min), and never retries 400/401/403/404.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
from openai.types.chat import ChatCompletion

from mdagent_hpc.llm.answers import (
    RESPONSE_FORMAT,
    Choice,
    Generation,
    one_line,
    read_answer,
    read_script,
    without_thinking,
)
from mdagent_hpc.llm.budget import (
    CHARS_PER_TOKEN,
    MIN_ANSWER_TOKENS,
    answer_tokens,
    context_refusal,
    message_chars,
    prompt_estimate,
)
from mdagent_hpc.llm.config import LLMConfigError, LLMSettings
from mdagent_hpc.llm.unavailable import CHECK_URL, LLMUnavailableError, server_message, unavailable

log = logging.getLogger(__name__)

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
                raise LLMUnavailableError("bad_request", f"{self.url} serves no models; set MDAGENT_LLM_MODEL.")
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
            raise unavailable(err, self.url, self.settings) from err
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
            except LLMUnavailableError:
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
        return without_thinking(text), choice.finish_reason, params["max_tokens"]

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
            LEARNT.chars_per_token[key] = message_chars(messages) / usage["prompt_tokens"]
        return usage

    def _answer_tokens(self, key: Key, messages: list[dict[str, Any]], context: int | None) -> int:
        """`max_tokens`, lowered to what the context leaves after the prompt (estimated; see `_create`)."""
        return answer_tokens(self.settings.max_tokens, context, _prompt_estimate(key, messages))

    def _room_left(
        self, model: str, messages: list[dict[str, Any]], message: str, max_tokens: int | None
    ) -> int | None:
        """Tokens left for the answer when the server's `message` says the request does not fit the context (see
        `budget.context_refusal`); None for any other refusal."""
        refusal = context_refusal(message)
        if not (refusal and max_tokens):
            return None
        length, prompt = refusal
        with LEARNT.lock:
            LEARNT.context[(self.url, model)] = length
        used = prompt if prompt is not None else _prompt_estimate((self.url, model), messages)
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
            except LLMUnavailableError as err:
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
        err: LLMUnavailableError,
    ) -> tuple[ChatCompletion | None, str | None]:
        """The first request with the constraint failed: it may be the constraint, or the server."""
        if err.kind == "server_error":  # a 5xx may pass on: ask once more with the constraint
            try:
                return self._create(model, messages, params, extra, retries=0), None
            except LLMUnavailableError as again:
                if not again.refusal:
                    raise
                err = again
        if self.settings.structured_output == "json_schema":
            raise LLMUnavailableError(
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
            room = self._room_left(model, messages, server_message(err), params.get("max_tokens"))
            if room is None:
                raise unavailable(err, self.url, self.settings) from err
            if room < MIN_ANSWER_TOKENS:
                raise LLMUnavailableError(
                    "bad_request",
                    f"The prompt leaves no room for an answer in {model}'s context ({server_message(err)});"
                    " serve the model with a longer context (vLLM --max-model-len) or shorten the task.",
                ) from err
            log.info(
                "%s: max_tokens %s does not fit the context; asking for %d", self.url, params.get("max_tokens"), room
            )
            params["max_tokens"] = room
            return self._create(model, messages, params, extra, retries)
        except openai.APIStatusError as err:
            raise unavailable(err, self.url, self.settings) from err
        except (openai.APIError, ValueError) as err:  # ValueError: a body that is not JSON
            raise unavailable(err, self.url, self.settings) from err
        if not isinstance(response, ChatCompletion) or not response.choices:
            raise LLMUnavailableError(
                "server_error",
                f"{self.url} answered with something that is not a chat completion "
                f"({one_line(str(response))!r}); {CHECK_URL}",
            )
        return response

    def chat(self, messages: list[dict[str, Any]], max_tokens: int, temperature: float = 0.0) -> ChatCompletion:
        """One plain chat completion (questions, judging): no script reading; raises LLMUnavailableError."""
        model = self.model_name()
        params = {"temperature": temperature, "max_tokens": min(max_tokens, self.settings.max_tokens)}
        return self._create(model, messages, params, None)


_CONSTRAINT_NAMES = {"json_schema": "response_format json_schema", "grammar": "structured_outputs grammar"}


def _prompt_estimate(key: Key, messages: list[dict[str, Any]]) -> float:
    return prompt_estimate(messages, LEARNT.chars_per_token.get(key, CHARS_PER_TOKEN))


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
    """Ask the model for `settings.candidates` scripts. Raises LLMUnavailableError if no answer could be had; an answer
    without a usable script comes back as a Choice with `script=None` and `problems`. `grammar` (see
    `llm.grammar`) is used when `structured_output` is `grammar`."""
    return get_client(settings).generate(messages, temperature=temperature, grammar=grammar)


def check_endpoint(settings: LLMSettings) -> dict[str, Any]:
    """Reach the endpoint as the agent will (for `mdagent llm check`), without retries, each step timed.

    Lists the served models, says whether the configured one is among them, and asks it for one tiny chat
    completion. `ok` is True only when all of that worked; otherwise `kind` (as in `LLMUnavailableError`) and `error`
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
    except LLMUnavailableError as err:
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
    except LLMUnavailableError as err:
        return result | {"kind": err.kind, "error": err.message}
    text = (response.choices[0].message.content if response.choices[0].message else None) or ""
    return result | {
        "ok": True,
        "chat_seconds": round(time.monotonic() - start, 3),
        "answer": one_line(text, 80),
        "context_tokens": LEARNT.context.get((client.url, model)),
    }


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
