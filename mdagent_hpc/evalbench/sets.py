"""Code-generation tasks and knowledge questions, read from MD-EvalBench's files or a simple JSONL.

MD-EvalBench (github.com/FredericVAN/PKU_MDAgent2, `MD_Benchmark/`) ships its answers base64-encoded as
`BASE64:<base64 of a JSON value>`; they are decoded here, in memory, never written back.

- code generation: a JSON list of `{"task", "standrd_code"}` (sic), or JSONL of `{"task", "reference"?, "id"?,
  "tags"?, "difficulty"?, "answers"?}` (`answers`: recorded model answers, for `--replay`);
- questions: JSONL of `{"id", "type", "question", "options"?, "answer"?, "answer_text"?, "difficulty"?, "tags"?}`;
  `type` is single_choice, multiple_choice, fill_blank or open (spelt with `-`, `_` or spaces); keys vary by
  record, and a record may carry no answer at all (it is then answered but not scored).
"""

from __future__ import annotations

import base64
import binascii
import json
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from mdagent_hpc.errors import MDAgentError

PREFIX = "BASE64:"


class SetError(MDAgentError, ValueError):
    """A set file that cannot be read, in one sentence naming the file and the record."""


class QuestionType(StrEnum):
    SINGLE = "single_choice"
    MULTIPLE = "multiple_choice"
    FILL = "fill_blank"
    OPEN = "open"


_TYPE_ALIASES = {
    "single": QuestionType.SINGLE,
    "single_choice": QuestionType.SINGLE,
    "choice": QuestionType.SINGLE,
    "multiple": QuestionType.MULTIPLE,
    "multiple_choice": QuestionType.MULTIPLE,
    "multi_choice": QuestionType.MULTIPLE,
    "fill_blank": QuestionType.FILL,
    "fill_in_blank": QuestionType.FILL,
    "fill_in_the_blank": QuestionType.FILL,
    "blank": QuestionType.FILL,
    "open": QuestionType.OPEN,
    "open_ended": QuestionType.OPEN,
    "short_answer": QuestionType.OPEN,
    "essay": QuestionType.OPEN,
}


class CodeTask(BaseModel):
    id: str
    task: str = Field(min_length=1)
    reference: str | None = Field(None, description="a reference script (for the judge), never shown to the agent")
    tags: list[str] = Field(default_factory=list)
    difficulty: str | None = None
    answers: list[str] | None = Field(None, description="recorded model answers, replayed with --replay")


class Question(BaseModel):
    id: str
    type: QuestionType
    question: str = Field(min_length=1)
    options: dict[str, str] = Field(default_factory=dict, description="letter -> text (choice types)")
    answer: list[str] | None = Field(None, description="the right letters (choice types)")
    answer_text: str | None = Field(None, description="the right text (fill-blank, open)")
    difficulty: str | None = None
    tags: list[str] = Field(default_factory=list)

    @property
    def scorable(self) -> bool:
        if self.type in (QuestionType.SINGLE, QuestionType.MULTIPLE):
            return bool(self.answer)
        return bool(self.answer_text and self.answer_text.strip())


def decode(value):
    """A `BASE64:<...>` value decoded to the JSON value it holds; anything else as it is."""
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return value
    try:
        return json.loads(base64.b64decode(value[len(PREFIX) :], validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"a BASE64: field that does not decode to JSON ({exc})") from None


def load_code_tasks(path: str | Path) -> list[CodeTask]:
    """Tasks of a code-generation set: MD-EvalBench's JSON list, or JSONL (see the module docstring)."""
    records = _records(path)
    tasks = []
    for where, record in records:
        try:
            data = {k: decode(v) for k, v in record.items()}
            reference = data.get("reference") or data.get("standrd_code") or data.get("standard_code")
            tasks.append(
                CodeTask(
                    id=str(data.get("id") or f"task{len(tasks) + 1:03d}"),
                    task=data.get("task", ""),
                    reference=reference if isinstance(reference, str) else None,
                    tags=_tags(data.get("tags")),
                    difficulty=data.get("difficulty"),
                    answers=data.get("answers"),
                )
            )
        except (ValueError, ValidationError) as exc:
            raise SetError(f"{where}: {_why(exc)}") from None
    _unique(path, [t.id for t in tasks])
    return tasks


def load_questions(path: str | Path) -> list[Question]:
    """Questions of a QA set (MD-EvalBench's JSONL; a JSON list works too)."""
    questions = []
    for where, record in _records(path):
        try:
            data = {k: decode(v) for k, v in record.items()}
            kind = str(data.get("type", "")).strip().lower().replace("-", "_").replace(" ", "_")
            if kind not in _TYPE_ALIASES:
                raise ValueError(
                    f"type {data.get('type')!r} is not one of single_choice, multiple_choice, fill_blank, open"
                )
            options = data.get("options") or {}
            if isinstance(options, list):  # ["text", ...] -> A, B, ...
                options = {chr(ord("A") + i): str(o) for i, o in enumerate(options)}
            qtype, answer, answer_text = _TYPE_ALIASES[kind], data.get("answer"), data.get("answer_text")
            choice = qtype in (QuestionType.SINGLE, QuestionType.MULTIPLE)
            if not choice and answer_text is None and answer not in (None, "", []):
                answer_text = answer[0] if isinstance(answer, list) and len(answer) == 1 else answer  # text in `answer`
            questions.append(
                Question(
                    id=str(data.get("id") or f"q{len(questions) + 1:03d}"),
                    type=qtype,
                    question=data.get("question", ""),
                    options={str(k): str(v) for k, v in options.items()},
                    answer=letters(answer) if choice else None,
                    difficulty=data.get("difficulty"),
                    tags=_tags(data.get("tags")),
                    answer_text=None if answer_text is None else _text(answer_text),
                )
            )
        except (ValueError, ValidationError) as exc:
            raise SetError(f"{where}: {_why(exc)}") from None
    _unique(path, [q.id for q in questions])
    return questions


def letters(value) -> list[str] | None:
    """Option letters from ["A", "C"], "A,C", "AC" or "A"; None for no answer."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = [c for c in value.upper() if c.isalpha()] if "," not in value else value.split(",")
    return sorted({str(v).strip().upper() for v in value if str(v).strip()}) or None


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _tags(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _records(path: str | Path) -> list[tuple[str, dict]]:
    path = Path(path)
    if not path.is_file():
        raise SetError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        records = [(f"{path}: record {i}", r) for i, r in enumerate(data, 1)]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise SetError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
    bad = next((where for where, r in records if not isinstance(r, dict)), None)
    if bad:
        raise SetError(f"{bad}: not a JSON object")
    if not records:
        raise SetError(f"{path}: no records")
    return records


def _unique(path, ids: list[str]) -> None:
    seen = set()
    for i in ids:
        if i in seen:
            raise SetError(f"{path}: the id {i!r} appears twice; every record needs its own id")
        seen.add(i)


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'record'}: {first['msg']}"
    return str(exc)
