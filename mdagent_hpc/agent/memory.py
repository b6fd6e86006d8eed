"""Failure memory: past failures like this one, and the change that fixed them. Pure functions.

A failure's signature is its diagnostic code, the command it points at and that command's style (`pair_style
eam/alloy` -> eam/alloy; `fix 1 all nvt` -> nvt; `compute c all rdf` -> rdf). `lessons` turns a run's attempts
into entries (failure + the script change of the next attempt that no longer had that failure); `recall` finds
the entries closest to a new failure (same signature first, then same code and command, then same code; ties by
the words the messages share); `render` shows them in a few lines under the correction prompt.
"""

from __future__ import annotations

import difflib
import re

from pydantic import BaseModel, Field

from mdagent_hpc.models import Attempt, Diagnostic, Evaluation, Severity

STYLE_AT = {"fix": 2, "compute": 2, "dump": 2}  # style word position; `*_style` commands: the first argument


class Signature(BaseModel):
    code: str
    command: str = ""
    style: str = ""

    def key(self) -> str:
        return " ".join(p for p in (self.code, self.command, self.style) if p)


class Lesson(BaseModel):
    """A past failure and what changed in the script that no longer had it."""

    signature: Signature
    message: str
    fix: list[str] = Field(default_factory=list, description="changed lines: '- old', '+ new'")
    kind: str | None = Field(None, description="a label of the fix, when known (the mutation bench)")
    run: int | None = None
    attempt: int | None = None


def signature(diagnostic: Diagnostic) -> Signature:
    words = (diagnostic.command or "").split()
    command = words[0] if words else ""
    position = STYLE_AT.get(command, 0 if command.endswith("_style") else None)
    style = words[1 + position] if position is not None and len(words) > 1 + position else ""
    return Signature(code=diagnostic.code, command=command, style=style if "$" not in style else "")


def first_error(diagnostics: list[Diagnostic], evaluation: Evaluation | None = None) -> Diagnostic | None:
    """The failure that stopped an attempt: its first error, else the evaluation's first failed rule."""
    first = next((d for d in diagnostics if d.severity == Severity.ERROR), None)
    if first is None and evaluation is not None:
        rule = next((f for f in evaluation.findings if f.severity == Severity.ERROR), None)
        if rule is not None:
            first = Diagnostic(severity=Severity.ERROR, code=f"eval.{rule.rule}", message=rule.message)
    return first


def script_change(before: str, after: str, limit: int = 6, width: int = 120) -> list[str]:
    """The lines removed and added between two scripts (comments and blank lines ignored), at most `limit`."""

    def lines(text: str) -> list[str]:
        return [" ".join(line.split("#")[0].split()) for line in text.splitlines() if line.split("#")[0].strip()]

    changed = [f"{d[0]} {d[2:]}" for d in difflib.ndiff(lines(before), lines(after)) if d[:2] in ("- ", "+ ")]
    return [c if len(c) <= width else c[: width - 1] + "…" for c in changed[:limit]]


def lessons(attempts: list[Attempt], run: int | None = None) -> list[Lesson]:
    """Each failed attempt whose failure the next attempt no longer had, with the change between their scripts."""
    found = []
    for before, after in zip(attempts, attempts[1:], strict=False):
        failure = first_error(before.diagnostics, before.evaluation)
        if before.passed or failure is None or not before.script or not after.script:
            continue
        sig = signature(failure)
        again = first_error(after.diagnostics, after.evaluation)
        if again is not None and signature(again) == sig:
            continue
        change = script_change(before.script, after.script)
        if change:
            found.append(Lesson(signature=sig, message=failure.message, fix=change, run=run, attempt=before.number))
    return found


_WORD = re.compile(r"[a-z_/]{3,}")


def recall(memory: list[Lesson], failure: Diagnostic, limit: int = 2) -> list[Lesson]:
    """The lessons closest to `failure`, best first: the same signature, else code and command, else code."""
    sig = signature(failure)
    words = set(_WORD.findall(failure.message.lower()))

    def rank(lesson: Lesson) -> tuple[int, float]:
        s = lesson.signature
        level = 3 if s == sig else 2 if (s.code, s.command) == (sig.code, sig.command) else int(s.code == sig.code)
        theirs = set(_WORD.findall(lesson.message.lower()))
        overlap = len(words & theirs) / len(words | theirs) if words | theirs else 0.0
        return level, overlap

    ranked = sorted(((rank(m), -i, m) for i, m in enumerate(memory)), key=lambda t: (t[0], t[1]), reverse=True)
    return [m for (level, _), _, m in ranked if level > 0][:limit]


def render(found: list[Lesson]) -> str:
    """Compact lines for the correction prompt."""
    if not found:
        return ""
    lines = ["Past fixes of the same kind of failure (from earlier runs):"]
    for lesson in found:
        lines.append(f"- [{lesson.signature.key()}] {lesson.message[:100]}")
        lines += [f"    {change}" for change in lesson.fix[:4]]
    return "\n".join(lines)
