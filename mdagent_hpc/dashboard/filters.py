"""The runs list's filters, read from a URL's query string: one clear sentence for a bad value (pure: no I/O)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from mdagent_hpc.models import Run

VERDICTS = ("passed", "failed", "running")
GRADES = ("pass", "warn", "fail")
# AgentWorkChain's exit statuses (workflows/agent.py) as the words the list filters on
STOP_REASONS = {0: "passed", 300: "llm_unavailable", 310: "no_valid_script", 320: "max_attempts", 330: "stuck"}
REASONS = (*STOP_REASONS.values(), "killed", "excepted", "running", "other")
FIELDS = ("task", "site", "model", "verdict", "grade", "reason", "since", "until", "limit")
MAX_LIMIT = 500


class BadFilter(ValueError):
    """A query parameter the list cannot use, said in one sentence."""


def stop_reason(run: Run) -> str:
    """Why a run ended, as one word: passed, stuck, max_attempts, no_valid_script, llm_unavailable, killed, ..."""
    if run.verdict == "running":
        return "running"
    if run.state in ("killed", "excepted"):
        return run.state
    return STOP_REASONS.get(run.exit_status, "other")


def models_of(run: Run) -> set[str]:
    return {a.usage.model for a in run.attempts if a.usage.model}


def grade_of(run: Run) -> str | None:
    """The grade of the passed attempt, else of the last attempt that was evaluated."""
    if run.evaluation is not None:
        return run.evaluation.grade.value
    graded = [a.evaluation for a in run.attempts if a.evaluation is not None]
    return graded[-1].grade.value if graded else None


class RunFilter:
    """What the runs list shows: each field narrows it; empty fields are ignored."""

    def __init__(self, params: dict[str, str]):
        unknown = sorted(set(params) - set(FIELDS))
        if unknown:
            raise BadFilter(f"unknown filter {unknown[0]!r}; the filters are {', '.join(FIELDS)}")
        values = {k: v.strip() for k, v in params.items() if v and v.strip()}
        self.task = values.get("task")
        self.site = values.get("site")
        self.model = values.get("model")
        self.verdict = _choice(values, "verdict", VERDICTS)
        self.grade = _choice(values, "grade", GRADES)
        self.reason = _choice(values, "reason", REASONS)
        self.since = _day(values, "since")
        self.until = _day(values, "until")
        if self.since and self.until and self.until < self.since:
            raise BadFilter(f"until ({values['until']}) is before since ({values['since']})")
        self.limit = _limit(values.get("limit", "50"))
        self.values = values

    def matches(self, run: Run) -> bool:
        """The filters the store does not apply exactly (task text, model, grade, stop reason), on a read run."""
        return (
            (self.task is None or self.task.lower() in run.task.lower())  # the store's ILIKE reads % and _
            and (self.model is None or self.model in models_of(run))
            and (self.grade is None or grade_of(run) == self.grade)
            and (self.reason is None or stop_reason(run) == self.reason)
        )

    @property
    def start(self) -> datetime | None:
        return datetime.combine(self.since, datetime.min.time(), UTC) if self.since else None

    @property
    def end(self) -> datetime | None:
        """Midnight after `until`: the whole day is in the window."""
        return datetime.combine(self.until + timedelta(days=1), datetime.min.time(), UTC) if self.until else None


def _choice(values: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = values.get(name)
    if value is not None and value not in allowed:
        raise BadFilter(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def _day(values: dict[str, str], name: str) -> date | None:
    value = values.get(name)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadFilter(f"{name} {value!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-11-30") from None


def _limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadFilter(f"limit {value!r} is not a whole number from 1 to {MAX_LIMIT}")
    return int(value)
