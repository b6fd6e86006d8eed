"""Per-user quotas and the decisions about them, pure (time is passed in).

The LLM gateway enforces `tokens_per_day` and `requests_per_minute`; `concurrent_runs`, `sweep_points` and
`core_hours_per_day` are for the shared server. `None` is no limit. Days are UTC days.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

DESCRIPTIONS = {
    "tokens_per_day": "daily LLM token budget",
    "requests_per_minute": "LLM request rate limit",
    "concurrent_runs": "concurrent runs limit",
    "sweep_points": "sweep points limit",
    "core_hours_per_day": "daily core-hours budget",
}


class Quota(BaseModel):
    tokens_per_day: int | None = Field(None, ge=0, description="prompt + completion tokens per UTC day")
    requests_per_minute: int | None = Field(None, ge=0, description="LLM requests in any 60 s")
    concurrent_runs: int | None = Field(None, ge=0, description="runs in flight at once")
    sweep_points: int | None = Field(None, ge=0, description="points in one sweep")
    core_hours_per_day: float | None = Field(None, ge=0, description="core-hours of jobs per UTC day")


class Refusal(BaseModel):
    """A quota that says no: which one, its limit, what was used, and when it lets the next request through."""

    quota: str
    limit: float
    used: float
    resets_at: datetime

    def retry_after(self, now: datetime) -> int:
        return max(1, int((self.resets_at - now).total_seconds() + 0.999))

    @property
    def message(self) -> str:
        what = DESCRIPTIONS.get(self.quota, self.quota)
        when = self.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            f"{what} reached ({_num(self.used)} used of {_num(self.limit)}, quota {self.quota}); "
            f"it resets at {when}; ask your mdagent admin to raise it (`mdagent users set`) if you need more"
        )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}"


def utc_day(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%d")


def next_midnight(now: datetime) -> datetime:
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1)


def check_daily(quota: str, limit: float | None, used: float, now: datetime) -> Refusal | None:
    """Refuse once today's use has reached the limit (the request that crosses it was already let through)."""
    if limit is None or used < limit:
        return None
    return Refusal(quota=quota, limit=limit, used=used, resets_at=next_midnight(now))


class RateWindow:
    """Requests per key in the last `period` seconds: a sliding log, kept in this process's memory."""

    def __init__(self, period: float = 60.0, quota: str = "requests_per_minute"):
        self.period = period
        self.quota = quota
        self._log: dict[object, deque[float]] = {}

    def admit(self, who: object, limit: int | None, now: float) -> Refusal | None:
        """Count the request and return None, or return a Refusal without counting it. `now` is epoch seconds."""
        if limit is None:
            return None
        log = self._log.setdefault(who, deque())
        while log and log[0] <= now - self.period:
            log.popleft()
        if len(log) >= limit:
            reset = log[0] + self.period if log else now + self.period
            return Refusal(quota=self.quota, limit=limit, used=len(log), resets_at=datetime.fromtimestamp(reset, UTC))
        log.append(now)
        return None
