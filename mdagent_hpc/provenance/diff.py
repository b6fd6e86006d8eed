"""One run (or attempt) against another: the scripts as a unified diff, the settings that differ, the observables
side by side."""

from __future__ import annotations

import difflib

from pydantic import BaseModel, Field


class Side(BaseModel):
    """What is compared of one run or attempt."""

    label: str = Field(description="e.g. 'run 42 attempt 3'")
    script: str | None = None
    settings: dict = Field(default_factory=dict, description="flat: 'llm.temperature' -> value")
    observables: dict[str, float] = Field(default_factory=dict)
    grade: str | None = None
    reward: float | None = None


def flatten(data: dict, prefix: str = "") -> dict:
    """{'llm': {'model': 'm'}} -> {'llm.model': 'm'}; lists stay values."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def diff_sides(a: Side, b: Side) -> dict:
    """`script_diff` (unified, '' when the same), `settings` [[key, a, b]] that differ, `same_settings` (count),
    `observables` [[name, a, b, b - a]] over both sides' names, and both sides' label, grade and reward."""
    script_diff = "\n".join(
        difflib.unified_diff(
            (a.script or "").splitlines(), (b.script or "").splitlines(), a.label, b.label, lineterm=""
        )
    )
    keys = sorted(set(a.settings) | set(b.settings))
    differ = [[k, a.settings.get(k), b.settings.get(k)] for k in keys if a.settings.get(k) != b.settings.get(k)]
    observables = []
    for name in sorted(set(a.observables) | set(b.observables)):
        x, y = a.observables.get(name), b.observables.get(name)
        observables.append([name, x, y, None if x is None or y is None else y - x])
    return {
        "a": {"label": a.label, "grade": a.grade, "reward": a.reward},
        "b": {"label": b.label, "grade": b.grade, "reward": b.reward},
        "same_script": (a.script or "") == (b.script or ""),
        "script_diff": script_diff,
        "settings": differ,
        "same_settings": len(keys) - len(differ),
        "observables": observables,
    }


def parse_spec(spec: str | int) -> tuple[int, int | None]:
    """'42' -> (42, None): the run's final attempt; '42:2' -> (42, 2): its attempt 2."""
    text = str(spec).strip()
    pk, colon, number = text.partition(":")
    if not pk.isdigit() or (colon and not number.isdigit()) or (colon and int(number) < 1):
        raise ValueError(f"{spec!r} is not a run: write its pk (42) or pk:attempt (42:2)")
    return int(pk), int(number) if colon else None
