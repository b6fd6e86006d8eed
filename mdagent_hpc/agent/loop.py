"""The agent loop's decisions as pure functions: pass or retry, stuck or not, how hot to sample next, go on or stop,
and which exit code a run ends with. They read the attempts so far (`models.Attempt`, oldest first)."""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from mdagent_hpc.models import Attempt, Diagnostic, Evaluation, Grade, LoopPolicy, Severity, Stage

LLM_UNAVAILABLE = "llm.unavailable"  # the diagnostic code of a generation the endpoint could not answer


class SiteRun(BaseModel):
    """How the loop uses its site: where the dry run happens and what a dead job means (a site's on_failure)."""

    name: str = "local"
    dry_run: Literal["here", "job"] = Field("here", description="here: lmp -skiprun on this machine; job: on the site")
    on_failure: dict = Field(default_factory=dict, description="the site's on_failure policy")


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


def evaluation_error_key(evaluation: Evaluation) -> str:
    first = next((f for f in evaluation.findings if f.severity == Severity.ERROR), None)
    return f"eval:{first.rule}" if first else f"eval:{evaluation.grade.value}"


def passes(evaluation: Evaluation, policy: LoopPolicy) -> bool:
    order = {Grade.PASS: 0, Grade.WARN: 1, Grade.FAIL: 2}
    return order[evaluation.grade] <= order[policy.pass_grade] and evaluation.reward >= policy.min_reward


def repeats(history: list[Attempt]) -> int:
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


def is_stuck(history: list[Attempt]) -> bool:
    """The same script or the same error twice in a row: the next attempt must change strategy."""
    return repeats(history) >= 2


def should_stop_stuck(history: list[Attempt], policy: LoopPolicy) -> bool:
    return repeats(history) >= policy.stuck_limit


def next_temperature(base: float, history: list[Attempt], policy: LoopPolicy) -> float:
    """Sample hotter for each repeat beyond the first, so a stuck model explores."""
    extra = max(0, repeats(history) - 1) * policy.temperature_step
    return min(policy.max_temperature, base + extra) if extra else base


class Stop(StrEnum):
    """Why the loop stops."""

    PASSED = "passed"
    LLM_UNAVAILABLE = "llm_unavailable"
    MAX_ATTEMPTS = "max_attempts"
    STUCK = "stuck"


def unavailable(attempt: Attempt) -> Diagnostic | None:
    """The diagnostic of a generation the endpoint could not answer at all (no retry can help)."""
    return next((d for d in attempt.diagnostics if d.code == LLM_UNAVAILABLE), None)


def stop_reason(history: list[Attempt], policy: LoopPolicy) -> Stop | None:
    """Go on (None) or stop, and why, after the attempts so far."""
    if not history:
        return None
    last = history[-1]
    if last.passed:
        return Stop.PASSED
    if unavailable(last):
        return Stop.LLM_UNAVAILABLE
    # Stuck first: a run stuck on its last attempt says so, not merely that the attempts ran out.
    if should_stop_stuck(history, policy):
        return Stop.STUCK
    if len(history) >= policy.max_attempts:
        return Stop.MAX_ATTEMPTS
    return None


# The AgentWorkChain's exit codes: (status, name, message). Stored provenance names them, so they never change.
EXIT_CODES = (
    (300, "ERROR_LLM_UNAVAILABLE", "the LLM endpoint failed: {message}"),
    (310, "ERROR_NO_VALID_SCRIPT", "no attempt produced a script that passed preflight"),
    (320, "ERROR_MAX_ATTEMPTS", "no run passed evaluation in {attempts} attempts"),
    (330, "ERROR_STUCK", "stuck: the same script or error {times} times in a row"),
)


def stop_reason_of(exit_status: int | None) -> str | None:
    """The short name of an agent run's exit status (max_attempts, stuck, ...); None for a status it never sets."""
    return next((name.removeprefix("ERROR_").lower() for code, name, _ in EXIT_CODES if code == exit_status), None)


def exit_code(history: list[Attempt], policy: LoopPolicy) -> tuple[str, dict] | None:
    """The AgentWorkChain exit code a finished loop ends with, as (name, message parameters); None: it passed.

    300 the endpoint failed, 330 stuck (also on the last attempt), 310 no script ever got past preflight to a
    LAMMPS run, 320 every attempt used without a pass.
    """
    reason = stop_reason(history, policy)
    if reason == Stop.PASSED:
        return None
    if reason == Stop.LLM_UNAVAILABLE:
        return "ERROR_LLM_UNAVAILABLE", {"message": unavailable(history[-1]).message}
    if reason == Stop.STUCK:
        return "ERROR_STUCK", {"times": policy.stuck_limit}
    if not any(a.stage in (Stage.RUN, Stage.EVALUATE) for a in history):
        return "ERROR_NO_VALID_SCRIPT", {}
    return "ERROR_MAX_ATTEMPTS", {"attempts": len(history)}
