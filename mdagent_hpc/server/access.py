"""Who may do what on the shared server, and the per-user quotas at submission: pure decisions, time passed in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mdagent_hpc.accounts.quotas import Quota, check_daily

EMAIL_DOMAIN = "mdagent.local"  # an AiiDA user needs an email-like id; a user without an e-mail gets NAME@this


def identity(name: str, email: str | None) -> str:
    """The AiiDA user (email) that carries an mdagent user's work in provenance."""
    return email or f"{name}@{EMAIL_DOMAIN}"


def may_read(viewer: str, admin: bool, owner: str | None, group_read: bool) -> bool:
    """Own work always; others' work when the server's group setting allows it (or for an admin)."""
    return owner == viewer or admin or group_read


def may_cancel(viewer: str, admin: bool, owner: str | None) -> bool:
    return owner == viewer or admin


@dataclass
class Refused:
    quota: str
    message: str
    retry_after: int | None  # seconds to the reset, for the Retry-After header; None: waiting does not free it


def check_submit(
    quota: Quota,
    now: datetime,
    *,
    in_flight: int,
    points: int = 0,
    core_hours_today: float = 0.0,
    tokens_today: int = 0,
) -> Refused | None:
    """The first quota a new run (points == 0) or sweep (points > 0) would break, else None."""
    if quota.concurrent_runs is not None and in_flight >= quota.concurrent_runs:
        return Refused(
            "concurrent_runs",
            f"concurrent runs limit reached ({in_flight} in flight of "
            f"{quota.concurrent_runs}, quota concurrent_runs); wait for a run to end or cancel one "
            "(`mdagent runs --verdict running` lists them); ask your mdagent admin to raise it "
            "(`mdagent users set`) if you need more",
            None,
        )
    if points and quota.sweep_points is not None and points > quota.sweep_points:
        return Refused(
            "sweep_points",
            f"sweep points limit: this sweep has {points} points, your limit is "
            f"{quota.sweep_points} per sweep (quota sweep_points); split it into smaller sweeps or ask "
            "your mdagent admin to raise it (`mdagent users set`)",
            None,
        )
    for name, limit, used in (
        ("core_hours_per_day", quota.core_hours_per_day, core_hours_today),
        ("tokens_per_day", quota.tokens_per_day, tokens_today),
    ):
        refusal = check_daily(name, limit, used, now)
        if refusal is not None:
            return Refused(name, refusal.message, refusal.retry_after(now))
    return None
