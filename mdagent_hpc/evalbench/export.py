"""Attempts as training data, in the layouts RL and SFT trainers read. Pure functions.

Each attempt of an agent run is a `Step`: the chat messages the model was sent (the GenerateScript node's `messages`
input), its completion (the raw answer), the reward (the evaluation's, 0 when the attempt never ran), whether it
passed, and the diagnostics that stopped it. `rows` deduplicates (same prompt and completion: one row, the best
reward) and splits by task: a task is in the held-out `test` split or in `train` by a hash of its text, so no task
is in both and the split is the same on every export.

- verl: `data_source`, `prompt` (chat messages), `ability`, `reward_model` {style, ground_truth: the task},
  `extra_info` {split, index, task, run, attempt, completion, reward, passed, stage, grade, diagnostics} (parquet);
- trl: `prompt` (messages) and `completion` ([assistant message]) plus extra columns a reward function receives:
  reward, passed, task, run, attempt, diagnostics;
- openrlhf: `input` (messages, for --apply_chat_template), `label` (the task, for a remote reward function),
  `output`, `reward`, `passed`;
- sft: `messages` (the prompt and the assistant's completion), attempts that passed only.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, Field

FORMATS = ("verl", "trl", "openrlhf", "sft")
SOURCE = "mdagent"


class Step(BaseModel):
    task: str
    run: int
    attempt: int
    messages: list[dict] = Field(description="the chat messages sent to the model")
    completion: str
    reward: float = 0.0
    passed: bool = False
    stage: str = ""
    grade: str | None = None
    diagnostics: list[str] = Field(default_factory=list, description="'code: message' of what stopped it")
    model: str | None = None


def split_of(task: str, test_fraction: float) -> str:
    """`test` for a stable `test_fraction` of tasks (by a hash of the task's words), else `train`."""
    digest = hashlib.sha256(" ".join(task.lower().split()).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def dedupe(steps: list[Step]) -> list[Step]:
    """One step per (prompt, completion): the one with the best reward, first seen on ties."""
    best: dict[str, Step] = {}
    for step in steps:
        key = hashlib.sha256(json.dumps([step.messages, step.completion], sort_keys=True).encode()).hexdigest()
        if key not in best or step.reward > best[key].reward:
            best[key] = step
    return list(best.values())


def rows(steps: list[Step], fmt: str, test_fraction: float = 0.1) -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]} rows of `fmt` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for step in dedupe(steps):
        if fmt == "sft" and not step.passed:
            continue
        split = split_of(step.task, test_fraction)
        out[split].append(_row(step, fmt, split, len(out[split])))
    return out


def _row(step: Step, fmt: str, split: str, index: int) -> dict:
    answer = {"role": "assistant", "content": step.completion}
    if fmt == "verl":
        return {
            "data_source": SOURCE,
            "prompt": step.messages,
            "ability": "lammps",
            "reward_model": {"style": "rule", "ground_truth": step.task},
            "extra_info": {
                "split": split,
                "index": index,
                "task": step.task,
                "run": step.run,
                "attempt": step.attempt,
                "completion": step.completion,
                "reward": step.reward,
                "passed": step.passed,
                "stage": step.stage,
                "grade": step.grade or "",
                "diagnostics": step.diagnostics,
            },
        }
    if fmt == "trl":
        return {
            "prompt": step.messages,
            "completion": [answer],
            "reward": step.reward,
            "passed": step.passed,
            "task": step.task,
            "run": step.run,
            "attempt": step.attempt,
            "diagnostics": step.diagnostics,
        }
    if fmt == "openrlhf":
        return {
            "input": step.messages,
            "label": step.task,
            "output": step.completion,
            "reward": step.reward,
            "passed": step.passed,
            "run": step.run,
            "attempt": step.attempt,
        }
    return {"messages": [*step.messages, answer]}
