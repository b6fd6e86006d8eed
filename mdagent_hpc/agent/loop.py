"""The agent loop's decisions as pure functions: pass or retry, stuck or not, how hot to sample next."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, Field

from mdagent_hpc.models import Diagnostic, Evaluation, Grade, LoopPolicy, Severity


class SiteRun(BaseModel):
    """How the loop uses its site: where the dry run happens and what a dead job means (a site's on_failure)."""

    name: str = "local"
    dry_run: Literal["here", "job"] = Field("here", description="here: lmp -skiprun on this machine; job: on the site")
    on_failure: dict = Field(default_factory=dict, description="the site's on_failure policy")


class AttemptRecord(BaseModel):
    """One attempt as the loop remembers it (plain data, so it persists in the workflow's context)."""

    attempt: int
    stage: str = Field(description="generate, preflight, run or evaluate: where it ended")
    script_sha: str | None = None
    error_key: str | None = Field(None, description="the first blocking problem, reduced to a comparable key")
    passed: bool = False


def script_sha(text: str) -> str:
    normalized = "\n".join(" ".join(line.split()) for line in text.strip().splitlines() if line.strip())
    return hashlib.sha256(normalized.encode()).hexdigest()[:16]


def error_key(diagnostics: list[Diagnostic]) -> str | None:
    """What failed, without the details that change between attempts (numbers, line numbers)."""
    first = next((d for d in diagnostics if d.severity == Severity.ERROR), None)
    if first is None:
        return None
    words = [w for w in first.message.split() if not any(c.isdigit() for c in w)]
    return f"{first.code}:{' '.join(words[:12])}"


def evaluation_error_key(evaluation: Evaluation) -> str | None:
    first = next((f for f in evaluation.findings if f.severity == Severity.ERROR), None)
    return f"eval:{first.rule}" if first else None


def passes(evaluation: Evaluation, policy: LoopPolicy) -> bool:
    order = {Grade.PASS: 0, Grade.WARN: 1, Grade.FAIL: 2}
    return order[evaluation.grade] <= order[policy.pass_grade] and evaluation.reward >= policy.min_reward


def repeats(history: list[AttemptRecord]) -> int:
    """How many of the latest attempts in a row had the same script or the same error as the last one."""
    if not history:
        return 0
    last = history[-1]
    count = 1
    for previous in reversed(history[:-1]):
        same_script = last.script_sha is not None and previous.script_sha == last.script_sha
        same_error = last.error_key is not None and previous.error_key == last.error_key
        if not (same_script or same_error):
            break
        count += 1
    return count


def is_stuck(history: list[AttemptRecord]) -> bool:
    """The same script or the same error twice in a row: the next attempt must change strategy."""
    return repeats(history) >= 2


def should_stop_stuck(history: list[AttemptRecord], policy: LoopPolicy) -> bool:
    return repeats(history) >= policy.stuck_limit


def next_temperature(base: float, history: list[AttemptRecord], policy: LoopPolicy) -> float:
    """Sample hotter for each repeat beyond the first, so a stuck model explores."""
    extra = max(0, repeats(history) - 1) * policy.temperature_step
    return min(policy.max_temperature, base + extra) if extra else base
