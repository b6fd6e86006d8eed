"""Benchmark numbers from run records. Pure functions over plain records (no AiiDA).

Code generation, per task (docs/bench.md says the same for users):
- candidates: the first attempt of each of the k one-shot candidates passed or not. With the correction loop on,
  candidate 1 *is* the loop run's first attempt (same prompt, same sampling), so k-1 extra runs are made.
- Exec-Success@k: at least one of the k candidates passed (@1: the first did);
- with loop: the loop run passed; attempts to pass: its number of attempts when it passed;
- grade and reward: the evaluation of the passing attempt, else the best evaluated attempt (reward 0, grade none
  when no attempt ran); tokens and seconds: summed over every run of the task.
Questions: the mean score (1/0 for choice and fill-blank, the judge's 0..1 for open answers) over the questions
that can be scored; records without an answer are counted apart.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from pydantic import BaseModel, Field

from mdagent_hpc.models import Attempt


class RunRecord(BaseModel):
    """One agent run made by a benchmark: which task, which role it played, how it went."""

    task: str
    mode: Literal["loop", "oneshot"]
    index: int = 0
    verdict: str
    attempts: list[Attempt] = Field(default_factory=list)
    seconds: float | None = None
    pk: int | None = None
    judge: float | None = None


class TaskResult(BaseModel):
    task: str
    candidates: list[bool] = Field(default_factory=list)
    exec_success_at_1: bool = False
    exec_success_at_k: bool = False
    loop_passed: bool | None = None
    attempts: int = 0
    attempts_to_pass: int | None = None
    grade: str | None = None
    reward: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    judge: float | None = None
    tags: list[str] = Field(default_factory=list)
    difficulty: str | None = None


class CodegenSummary(BaseModel):
    tasks: int
    k: int
    exec_success_at_1: float
    exec_success_at_k: float
    loop_success: float | None
    mean_attempts_to_pass: float | None
    mean_reward: float
    grades: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    judge_mean: float | None = None
    judged: int = 0
    incomplete: int = Field(0, description="tasks with a run missing or not finished")


def task_result(task: str, runs: list[RunRecord], k: int, tags=(), difficulty=None) -> TaskResult:
    loop = next((r for r in runs if r.mode == "loop"), None)
    oneshots = sorted((r for r in runs if r.mode == "oneshot"), key=lambda r: r.index)
    candidates = ([_first_passed(loop)] if loop else []) + [_first_passed(r) for r in oneshots]
    candidates = candidates[:k]
    attempts = [a for r in runs for a in r.attempts]
    best = _best(loop.attempts if loop else []) or _best(attempts)
    judged = [r.judge for r in runs if r.judge is not None]
    return TaskResult(
        task=task,
        candidates=candidates,
        exec_success_at_1=bool(candidates[:1] and candidates[0]),
        exec_success_at_k=any(candidates),
        loop_passed=None if loop is None else loop.verdict == "passed",
        attempts=len(loop.attempts) if loop else 0,
        attempts_to_pass=len(loop.attempts) if loop and loop.verdict == "passed" else None,
        grade=best.evaluation.grade.value if best else None,
        reward=best.evaluation.reward if best else 0.0,
        prompt_tokens=sum(a.usage.prompt_tokens or 0 for a in attempts),
        completion_tokens=sum(a.usage.completion_tokens or 0 for a in attempts),
        seconds=round(sum(r.seconds or 0.0 for r in runs), 1),
        judge=max(judged) if judged else None,
        tags=list(tags),
        difficulty=difficulty,
    )


def codegen_summary(results: list[TaskResult], k: int, loop: bool, complete: set[str] | None = None) -> CodegenSummary:
    n = len(results)
    passed = [r for r in results if r.attempts_to_pass is not None]
    grades: dict[str, int] = defaultdict(int)
    for r in results:
        grades[r.grade or "none"] += 1
    judged = [r.judge for r in results if r.judge is not None]
    return CodegenSummary(
        tasks=n,
        k=k,
        exec_success_at_1=_mean([r.exec_success_at_1 for r in results]),
        exec_success_at_k=_mean([r.exec_success_at_k for r in results]),
        loop_success=_mean([bool(r.loop_passed) for r in results]) if loop else None,
        mean_attempts_to_pass=round(sum(r.attempts_to_pass for r in passed) / len(passed), 2) if passed else None,
        mean_reward=_mean([r.reward for r in results]),
        grades=dict(sorted(grades.items())),
        prompt_tokens=sum(r.prompt_tokens for r in results),
        completion_tokens=sum(r.completion_tokens for r in results),
        seconds=round(sum(r.seconds for r in results), 1),
        judge_mean=_mean(judged) if judged else None,
        judged=len(judged),
        incomplete=0 if complete is None else sum(r.task not in complete for r in results),
    )


class Answered(BaseModel):
    """One question as the model answered it."""

    id: str
    type: str
    difficulty: str | None = None
    tags: list[str] = Field(default_factory=list)
    response: str = ""
    predicted: str | list[str] | None = None
    score: float | None = Field(None, description="exact (choice) or normalised (fill-blank) score, 1 or 0")
    judge: float | None = Field(None, description="the judge's 0..1 for open answers")
    error: str | None = Field(None, description="the endpoint gave no answer")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def value(self) -> float | None:
        """The score that counts: exact or normalised, else the judge's."""
        return self.score if self.score is not None else self.judge


class Bucket(BaseModel):
    questions: int = 0
    scored: int = 0
    points: float = 0.0

    @property
    def accuracy(self) -> float | None:
        return round(self.points / self.scored, 4) if self.scored else None


class QASummary(BaseModel):
    total: Bucket
    unscored: int = Field(description="questions without an answer key, or open ones the judge did not score")
    errors: int = Field(description="questions the endpoint gave no answer to")
    by_type: dict[str, Bucket]
    by_difficulty: dict[str, Bucket]
    by_tag: dict[str, Bucket]
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def qa_summary(answers: list[Answered]) -> QASummary:
    total = Bucket()
    by_type: dict[str, Bucket] = defaultdict(Bucket)
    by_difficulty: dict[str, Bucket] = defaultdict(Bucket)
    by_tag: dict[str, Bucket] = defaultdict(Bucket)
    for a in answers:
        buckets = [total, by_type[a.type], by_difficulty[a.difficulty or "unknown"]]
        buckets += [by_tag[t] for t in dict.fromkeys(a.tags)]
        for b in buckets:
            b.questions += 1
            if a.value is not None:
                b.scored += 1
                b.points += a.value
    return QASummary(
        total=total,
        unscored=sum(a.value is None for a in answers),
        errors=sum(a.error is not None for a in answers),
        by_type=dict(sorted(by_type.items())),
        by_difficulty=dict(sorted(by_difficulty.items())),
        by_tag=dict(sorted(by_tag.items())),
        prompt_tokens=sum(a.prompt_tokens for a in answers),
        completion_tokens=sum(a.completion_tokens for a in answers),
        seconds=round(sum(a.seconds for a in answers), 1),
    )


def breakdown(results: list[TaskResult], key: Literal["tags", "difficulty"]) -> dict[str, dict[str, float]]:
    """Exec-Success@k and loop success per tag or difficulty."""
    groups: dict[str, list[TaskResult]] = defaultdict(list)
    for r in results:
        for name in (r.tags or ["untagged"]) if key == "tags" else [r.difficulty or "unknown"]:
            groups[name].append(r)
    return {
        name: {
            "tasks": len(rs),
            "exec_success_at_k": _mean([r.exec_success_at_k for r in rs]),
            "loop_success": _mean([bool(r.loop_passed) for r in rs]),
        }
        for name, rs in sorted(groups.items())
    }


def _first_passed(run: RunRecord) -> bool:
    return bool(run.attempts and run.attempts[0].passed)


def _best(attempts: list[Attempt]) -> Attempt | None:
    evaluated = [a for a in attempts if a.evaluation is not None]
    passed = [a for a in evaluated if a.passed]
    if passed:
        return passed[0]
    return max(evaluated, key=lambda a: a.evaluation.reward, default=None)


def _mean(values) -> float:
    values = [float(v) for v in values]
    return round(sum(values) / len(values), 4) if values else 0.0
