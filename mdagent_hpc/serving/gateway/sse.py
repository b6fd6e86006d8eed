"""Server-sent events as OpenAI streams them: split a byte stream into events and find the usage chunk."""

from __future__ import annotations

import json
import re

_BOUNDARY = re.compile(rb"\r?\n\r?\n")
_USAGE = re.compile(rb'"usage"\s*:\s*\{')  # usage with a value (OpenAI sends "usage":null in every chunk)


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


def split_events(data: bytes) -> list[bytes]:
    """Complete events (each with its blank line) as one piece of bytes, e.g. from StreamTally, split."""
    splitter = EventSplitter()
    return splitter.feed(data) + ([rest] if (rest := splitter.rest()) else [])


class StreamTally:
    """Reads a stream as the gateway passes it on, at a few byte searches per read.

    `feed` returns the complete events a read finishes (an event cut between reads waits for its end), less the
    usage-only chunk when the user did not ask for it. Only events with a `usage` object are parsed as they pass; the
    others are kept as they are and read for their text only if it is needed (`generated`: the stream ended without
    its usage), or when more than `fold_bytes` of them are kept, which bounds what a long stream holds.
    """

    def __init__(self, keep_usage_chunk: bool = True, fold_bytes: int = 1 << 20) -> None:
        self.usage: dict | None = None  # the last usage the stream carried
        self._keep_usage_chunk = keep_usage_chunk
        self._fold_bytes = fold_bytes
        self._buffer = b""
        self._unread: list[bytes] = []  # events passed on, not yet read for their text
        self._unread_bytes = 0
        self._text: list[str] = []
        self._chunks = 0  # events that carried text

    def feed(self, chunk: bytes) -> bytes:
        buffer = self._buffer + chunk if self._buffer else chunk
        end = _end_of_last_event(buffer)
        complete, self._buffer = buffer[:end], buffer[end:]
        if _USAGE.search(complete):
            complete = self._read_usage(complete)
        if complete:
            self._unread.append(complete)
            self._unread_bytes += len(complete)
            if self._unread_bytes > self._fold_bytes:
                self._fold()
        return complete

    def rest(self) -> bytes:
        """What is left when the stream ends (an event without its blank line), to pass on as it is."""
        rest, self._buffer = self._buffer, b""
        return rest

    def generated(self) -> tuple[str, int]:
        """(the text the events passed on carried, how many events carried some)."""
        self._fold()
        return "".join(self._text), self._chunks

    def _read_usage(self, complete: bytes) -> bytes:
        kept = []
        for event in split_events(complete):
            data = event_data(event)
            if usage := usage_of(data):
                self.usage = usage
                if usage_only(data) and not self._keep_usage_chunk:
                    continue
            kept.append(event)
        return b"".join(kept)

    def _fold(self) -> None:
        for event in split_events(b"".join(self._unread)):
            if text := generated_text(event_json(event)):
                self._text.append(text)
                self._chunks += 1
        self._unread, self._unread_bytes = [], 0


def _end_of_last_event(buffer: bytes) -> int:
    """Where the last complete event in `buffer` ends (0: none is complete)."""
    if b"\r" not in buffer:  # the usual case (vLLM, OpenAI): events end with \n\n
        last = buffer.rfind(b"\n\n")
        return last + 2 if last >= 0 else 0
    ends = [boundary.end() for boundary in _BOUNDARY.finditer(buffer)]
    return ends[-1] if ends else 0


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
