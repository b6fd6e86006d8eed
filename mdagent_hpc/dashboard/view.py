"""Small helpers the page templates call: diffs, numbered script lines, labels (pure: models and stdlib)."""

from __future__ import annotations

import difflib

from markupsafe import Markup

from mdagent_hpc.dashboard.filters import grade_of, models_of
from mdagent_hpc.models import Attempt, Severity

__all__ = ["grade_of", "models_of"]

BADGE = {"passed": "ok", "pass": "ok", "running": "live", "warn": "warn", "warning": "warn", "info": "info"}


def badge(word: str | None) -> str:
    """The CSS class of a verdict, grade or severity word."""
    return BADGE.get(word or "", "bad" if word else "none")


def pairs(attempts: list[Attempt]) -> list[tuple[Attempt | None, Attempt]]:
    """Each attempt with the latest earlier attempt that had a script (None for the first)."""
    out, previous = [], None
    for attempt in attempts:
        out.append((previous, attempt))
        if attempt.script:
            previous = attempt
    return out


def script_diff(previous: Attempt | None, attempt: Attempt) -> Markup | None:
    """A side-by-side diff of the attempt's script against the previous one (difflib's HTML table, escaped by it)."""
    if previous is None or not attempt.script or not previous.script:
        return None
    if previous.script == attempt.script:
        return Markup('<p class="same">the same script as attempt {}</p>').format(previous.number)
    table = difflib.HtmlDiff(tabsize=4, wrapcolumn=70).make_table(
        previous.script.splitlines(),
        attempt.script.splitlines(),
        f"attempt {previous.number}",
        f"attempt {attempt.number}",
        context=True,
        numlines=2,
    )
    return Markup(table)  # noqa: S704 (HtmlDiff escapes the script text)


def script_lines(attempt: Attempt) -> list[tuple[int, str, str | None]]:
    """(line number, text, the worst severity of a diagnostic at that line of the main script or None)."""
    marks: dict[int, str] = {}
    rank = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    for d in attempt.diagnostics:
        if (
            d.line
            and (d.file in (None, "in.lammps"))
            and (d.line not in marks or rank[d.severity] < rank[Severity(marks[d.line])])
        ):
            marks[d.line] = d.severity.value
    return [(i, text, marks.get(i)) for i, text in enumerate((attempt.script or "").splitlines(), start=1)]


def where(attempt: Attempt, line: int | None, file: str | None) -> str:
    """The anchor of a diagnostic's line in the attempt's script listing, or '' when it is in another file."""
    return f"#a{attempt.number}-L{line}" if line and file in (None, "in.lammps") and attempt.script else ""


STATS = ("final", "mean", "std")


def observable_rows(observables: dict[str, float]) -> tuple[list[tuple[str, list[float | None]]], dict[str, float]]:
    """[(quantity, [final, mean, std])] for quantities with those statistics, and the other observables."""
    quantities = dict.fromkeys(k.rsplit("_", 1)[0] for k in observables if k.rsplit("_", 1)[-1] in STATS)
    rows = [(q, [observables.get(f"{q}_{stat}") for stat in STATS]) for q in quantities]
    used = {f"{q}_{stat}" for q in quantities for stat in STATS}
    return rows, {k: v for k, v in observables.items() if k not in used}


def number(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def short_time(iso: str) -> str:
    """'2026-11-30T07:40:12+00:00' -> '2026-11-30 07:40'."""
    return iso[:16].replace("T", " ")


def label(name: str) -> str:
    """A filter's name on the form."""
    return {"stop": "stop reason", "pair_style": "pair style", "seconds": "duration (s)"}.get(name, name)


def columns(rows: list[dict]) -> list[str]:
    """The columns of a table given as records, in the order they first appear."""
    return list(dict.fromkeys(key for row in rows for key in row))
