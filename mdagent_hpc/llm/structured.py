"""One structured answer from the model: a pydantic object asked for by its JSON schema (e.g. a sweep spec).

It goes through the script generator's client (`llm.client`): `response_format` json_schema where the server
takes it (vLLM and OpenAI constrain the answer to it), the same fallback where it is refused (vLLM's 400,
llama.cpp's 500), the refusals learnt by any request of this process, and `max_tokens` sized to the context.
The JSON is read from the answer's text (the whole of it, a fenced block or the outermost object).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mdagent_hpc.llm.client import get_client
from mdagent_hpc.llm.config import LLMError, LLMSettings

M = TypeVar("M", bound=BaseModel)
_FENCE = re.compile(r"```[\w-]*\n(.*?)```", re.DOTALL)


def ask_structured(settings: LLMSettings, messages: list[dict[str, Any]], model: type[M], name: str) -> M:
    """The model's answer to `messages` as a `model`; LLMError (one sentence) when it cannot be had."""
    schema_name = re.sub(r"[^A-Za-z0-9_-]", "_", name)  # OpenAI takes only these in a json_schema name
    text, finish_reason, max_tokens = get_client(settings).ask_json(messages, model.model_json_schema(), schema_name)
    try:
        return read_structured(text, model, name)
    except LLMError:
        if finish_reason != "length":
            raise
    raise LLMError(
        f"the model's {name} was cut off at max_tokens ({max_tokens}); raise MDAGENT_LLM_MAX_TOKENS "
        "or write the spec yourself (--spec FILE, see docs/sweeps.md)"
    )


def read_structured(text: str, model: type[M], name: str) -> M:
    """The `model` in an answer's text: the whole text, a fenced block or the outermost {...}."""
    candidates = [text.strip(), *(m.strip() for m in _FENCE.findall(text))]
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
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
    raise LLMError(
        f"the model's {name} is not valid ({problem}); ask again, or write the spec yourself "
        "(--spec FILE, see docs/sweeps.md)"
    )
