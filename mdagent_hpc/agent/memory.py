"""Failure memory: past failures like this one, and the change that fixed them. Pure functions.

A failure's signature is its diagnostic code, the command it points at and that command's style (`pair_style
eam/alloy` -> eam/alloy; `fix 1 all nvt` -> nvt; `compute c all rdf` -> rdf). `lessons` turns a run's attempts
into entries (failure + the script change of the next attempt that no longer had that failure); `recall` finds
the entries closest to a new failure: the same code, then the closest wording (the message's words without the
script's own names, so "Unknown fix nvt keyword: tempp" reads as "unknown keyword"), then the same command, then
the same style; `render` shows them in a few lines under the correction prompt.
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
    wording: list[str] = Field(default_factory=list, description="the message's words that are not the script's")
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


_WORD = re.compile(r"[a-z][a-z_]{2,}")


def wording(diagnostic: Diagnostic) -> list[str]:
    """The words of the message that are not words of the command: what kind of error, not which names."""
    own = set(_WORD.findall((diagnostic.command or "").lower()))
    return sorted(set(_WORD.findall(diagnostic.message.lower())) - own)


def lesson(failure: Diagnostic, fix: list[str], **extra) -> Lesson:
    return Lesson(signature=signature(failure), message=failure.message, wording=wording(failure), fix=fix, **extra)


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
            found.append(lesson(failure, change, run=run, attempt=before.number))
    return found


def recall(memory: list[Lesson], failure: Diagnostic, limit: int = 2) -> list[Lesson]:
    """The lessons of the same code closest to `failure`, best first (see the module docstring)."""
    sig = signature(failure)
    words = set(wording(failure))

    def rank(past: Lesson) -> tuple[float, bool, bool]:
        theirs = set(past.wording)
        overlap = len(words & theirs) / len(words | theirs) if words | theirs else 1.0
        return overlap, past.signature.command == sig.command, past.signature.style == sig.style

    same_code = [(rank(m), -i, m) for i, m in enumerate(memory) if m.signature.code == sig.code]
    return [m for _, _, m in sorted(same_code, key=lambda t: (t[0], t[1]), reverse=True)][:limit]


def render(found: list[Lesson]) -> str:
    """Compact lines for the correction prompt."""
    if not found:
        return ""
    lines = ["Past fixes of the same kind of failure (from earlier runs):"]
    for lesson in found:
        lines.append(f"- [{lesson.signature.key()}] {lesson.message[:100]}")
        lines += [f"    {change}" for change in lesson.fix[:4]]
    return "\n".join(lines)
