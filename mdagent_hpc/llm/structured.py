"""One structured answer from the model: a pydantic object asked for by its JSON schema (e.g. a sweep spec).

The request carries `response_format` json_schema (vLLM and OpenAI constrain the answer to it); a server that
refuses it is asked again without, and the JSON is read from the answer's text (a fenced block or the first object).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from mdagent_hpc.llm.config import LLMError, LLMSettings

M = TypeVar("M", bound=BaseModel)
_FENCE = re.compile(r"```[\w-]*\n(.*?)```", re.DOTALL)


def ask_structured(settings: LLMSettings, messages: list[dict[str, Any]], model: type[M], name: str) -> M:
    """The model's answer to `messages` as a `model`; LLMError (one sentence) when it cannot be had."""
    client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key.get_secret_value(),
                           timeout=settings.timeout_s, max_retries=settings.max_retries)
    params: dict[str, Any] = {"temperature": settings.temperature, "max_tokens": settings.max_tokens}
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": model.model_json_schema()}}
    try:
        served = settings.model or client.models.list().data[0].id
        response = None
        if settings.structured_output != "off":
            try:
                response = client.chat.completions.create(model=served, messages=messages, response_format=fmt,
                                                          **params)
            except openai.BadRequestError:  # no structured output here: ask for the JSON in plain text
                response = None
        if response is None:
            response = client.chat.completions.create(model=served, messages=messages, **params)
    except (openai.APIError, IndexError) as exc:
        raise LLMError(f"the LLM endpoint {settings.base_url} failed ({type(exc).__name__}: {exc}); "
                       "check it with `mdagent llm check`") from None
    text = (response.choices[0].message.content or "") if response.choices else ""
    return read_structured(text, model, name)


def read_structured(text: str, model: type[M], name: str) -> M:
    """The `model` in an answer's text: the whole text, a fenced block or the outermost {...}."""
    candidates = [text.strip(), *(m.strip() for m in _FENCE.findall(text))]
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    problem = "no JSON object in the answer"
    for candidate in candidates:
        try:
            return model.model_validate(json.loads(candidate))
        except json.JSONDecodeError:
            continue
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the answer"
            problem = f"{where}: {first['msg']}"
    raise LLMError(f"the model's {name} is not valid ({problem}); ask again, or write the spec yourself "
                   "(--spec FILE, see docs/sweeps.md)")
