"""What a model answered: the script it was asked for (`GeneratedScript`, and the JSON schema it is asked in), each
answer of a request (`Choice`), the request's record (`Generation`), and reading the script out of an answer's text.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from mdagent_hpc.models import Diagnostic, Severity

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning models may prefix their answer with this
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_CORE_COMMANDS = re.compile(r"^(units|atom_style|read_data|create_box|pair_style|run|minimize)\b", re.MULTILINE)


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


def without_thinking(text: str) -> str:
    """The answer without the reasoning a model may put before it."""
    return _THINK.sub("", text).strip()


def read_answer(
    text: str, finish_reason: str | None = None, max_tokens: int | None = None
) -> tuple[GeneratedScript | None, list[Diagnostic]]:
    """The script in a model's answer: a JSON object (bare or fenced), else a fenced or bare LAMMPS script."""
    text = without_thinking(text)
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
        notes = f" The notes say: {one_line(script.notes)}" if script.notes.strip() else ""
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
        notes = one_line(_FENCE.sub(" ", text))[:500]
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
    return one_line(str(err))


def _problem(code: str, message: str, hint: str) -> Diagnostic:
    return Diagnostic(severity=Severity.ERROR, code=code, message=message, hint=hint)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
