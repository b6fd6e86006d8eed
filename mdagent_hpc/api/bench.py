"""Benchmarks through the whole system (docs/bench.md): a code-generation set through the agent loop, a question set
through the endpoint; each benchmark run is a provenance group of this machine's profile, and the same name resumes.
The numbers are plain JSON (`bench_report`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from mdagent_hpc.api.local_only import refuse_through_server
from mdagent_hpc.errors import MDAgentError

SERVER_BENCH = "which keeps no benchmarks"


def bench_codegen(
    file: str | Path,
    *,
    model: str | None = None,
    k: int = 1,
    loop: bool = True,
    max_attempts: int = 3,
    concurrency: int = 2,
    name: str | None = None,
    replay: bool = False,
    judge: bool = False,
    on_start: Callable[[str, int, int], None] | None = None,
    on_done: Callable[[tuple[str, str, int], str], None] | None = None,
    status: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> dict:
    """Run every task of a code-generation set (MD-EvalBench's JSON, or JSONL of {task, reference?}) through the
    agent loop: `k` one-shot candidates per task, and with `loop` the correction loop of `max_attempts`; `replay`
    answers with each task's recorded `answers`; `judge` scores the final scripts against the references. Returns
    the report (Exec-Success@k, loop success, attempts, grade, reward, tokens and time per task).

    `name` (default: the file's stem and the model) names the benchmark run; the same name resumes it. Progress:
    `on_start(name, finished, to_run)`, `on_done((task, mode, index), verdict)`, `status(message)` around the
    judging.
    """
    refuse_through_server("a benchmark", SERVER_BENCH)
    from mdagent_hpc.evalbench.sets import load_code_tasks
    from mdagent_hpc.workflows import bench as runs

    file = Path(file)
    tasks = load_code_tasks(file)
    if replay and judge:
        raise MDAgentError("--judge needs a real endpoint; leave it out with --replay")
    runs.check_replay(tasks, replay)
    llm = None if replay else _llm_settings(model)
    model_name = "replay" if replay else (model or llm.model or "default")
    name = name or f"{file.stem}-{model_name}"
    settings = {
        "file": str(file),
        "sha": runs.file_sha(file),
        "model": model_name,
        "k": k,
        "loop": loop,
        "max_attempts": max_attempts,
        "replay": replay,
    }
    _load_profile()

    def finished(job, node) -> None:
        if on_done:
            on_done(job, "passed" if node.is_finished_ok else f"failed ({node.exit_status})")

    group = runs.run_codegen(
        tasks,
        name=name,
        settings=settings,
        model=model,
        k=k,
        loop=loop,
        max_attempts=max_attempts,
        concurrency=concurrency,
        replay=replay,
        on_start=(lambda done, todo: on_start(name, done, todo)) if on_start else None,
        on_done=finished,
    )
    if judge:
        with (status or contextlib.nullcontext)("judging the final scripts ..."):
            runs.judge_codegen(group, tasks, llm, concurrency)
    return runs.report(group)


def bench_qa(
    file: str | Path,
    *,
    model: str | None = None,
    concurrency: int = 4,
    name: str | None = None,
    judge: bool = True,
    on_start: Callable[[str, int, int], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> dict:
    """Ask every question of a set (JSONL: id, type, question, options, answer, answer_text, difficulty, tags) and
    score the answers: choices exactly, fill-blanks normalised, open answers by the LLM judge (with `judge`).
    Returns the report, by type, difficulty and tag. `name` as for `bench_codegen`; progress:
    `on_start(name, answered, to_ask)` and `on_done()` after each question."""
    refuse_through_server("a benchmark", SERVER_BENCH)
    from mdagent_hpc.evalbench.sets import load_questions
    from mdagent_hpc.workflows import bench as runs

    file = Path(file)
    questions = load_questions(file)
    llm = _llm_settings(model)
    model_name = model or llm.model or "default"
    name = name or f"{file.stem}-{model_name}"
    record = {"file": str(file), "sha": runs.file_sha(file), "model": model_name, "judge": judge}
    _load_profile()
    group = runs.run_qa(
        questions,
        name=name,
        settings_record=record,
        llm_settings=llm,
        judge=judge,
        concurrency=concurrency,
        on_start=(lambda done, todo: on_start(name, done, todo)) if on_start else None,
        on_done=(lambda _: on_done()) if on_done else None,
    )
    return runs.report(group)


def bench_report(name: str) -> dict:
    """A benchmark run's numbers, by name (`list_benches`) or full group label: {"label", "kind", "settings",
    "summary", "items", ...}."""
    refuse_through_server("a benchmark", SERVER_BENCH)
    from mdagent_hpc.workflows import bench as runs

    _load_profile()
    return runs.report(runs.find_group(name))


def list_benches() -> list[dict]:
    """Every benchmark run kept in provenance: its group label, kind, members and settings."""
    refuse_through_server("a benchmark", SERVER_BENCH)
    from mdagent_hpc.workflows import bench as runs

    _load_profile()
    return runs.list_groups()


def _llm_settings(model: str | None):
    from mdagent_hpc.llm import load_llm_settings

    return load_llm_settings({"model": model} if model else {})


def _load_profile() -> None:
    from mdagent_hpc.api.local import load_profile

    load_profile()
