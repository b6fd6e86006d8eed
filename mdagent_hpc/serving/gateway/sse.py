"""Server-sent events as OpenAI streams them: split a byte stream into events and find the usage chunk."""

from __future__ import annotations

import json
import re

_BOUNDARY = re.compile(rb"\r?\n\r?\n")


class EventSplitter:
    """Feed it bytes as they arrive; it returns each complete event (with its blank line) as soon as it has one."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        events = []
        start = 0
        for boundary in _BOUNDARY.finditer(self._buffer):
            events.append(self._buffer[start : boundary.end()])
            start = boundary.end()
        self._buffer = self._buffer[start:]
        return events

    def rest(self) -> bytes:
        """What is left when the stream ends (an event without its blank line), to pass on as it is."""
        rest, self._buffer = self._buffer, b""
        return rest


def event_data(event: bytes) -> dict | None:
    """The JSON object of an event that carries `usage`, or None (other events, [DONE], comments, not JSON)."""
    return event_json(event) if b'"usage"' in event else None


def event_json(event: bytes) -> dict | None:
    """The JSON object in an event's `data:` lines, or None ([DONE], comments, not JSON)."""
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines or lines == [b"[DONE]"]:
        return None
    try:
        data = json.loads(b"\n".join(lines))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def generated_text(data: dict | None) -> str:
    """The text a chunk adds, over all its choices: content, reasoning, tool-call arguments (what was generated)."""
    choices = data.get("choices") if data else None
    if not isinstance(choices, list):
        return ""
    pieces = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        reasoning = delta.get("reasoning") or delta.get("reasoning_content")  # newer vLLM may send both, alike
        pieces += [choice.get("text"), delta.get("content"), reasoning]
        for call in delta.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                pieces += [function.get("name"), function.get("arguments")]
    return "".join(p for p in pieces if isinstance(p, str))


def usage_of(data: dict | None) -> dict | None:
    usage = data.get("usage") if data else None
    return usage if isinstance(usage, dict) else None


def usage_only(data: dict | None) -> bool:
    """The chunk `stream_options.include_usage` adds at the end: usage and no choices."""
    return bool(data) and usage_of(data) is not None and not data.get("choices")
