"""Benchmarks through the system: code tasks through the agent loop (AgentWorkChain), questions through the endpoint.

Every benchmark run is an AiiDA Group `mdagent/bench/<kind>/<name>`; its agent runs (code generation) or answer
Dicts (questions) are its members, each with the extra `bench` saying which task or question and which role. Running
the same name again resumes: what is finished is kept, the rest runs. Agent runs go `concurrency` at a time on one
in-process runner (each waits on its endpoint or its LAMMPS job without blocking the others); questions go through a
thread pool, and only the main thread touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.evalbench import judge as judging
from mdagent_hpc.evalbench import qa
from mdagent_hpc.evalbench.scoring import Answered, RunRecord
from mdagent_hpc.evalbench.sets import CodeTask, Question, QuestionType
from mdagent_hpc.models import LoopPolicy, Request

PREFIX = "mdagent/bench"
KINDS = ("codegen", "qa")
REPLAY_MODEL = "replay"


class BenchError(MDAgentError):
    """A benchmark that cannot start or be read, in one sentence."""


class BenchInterruptedError(BenchError):
    """Ctrl-C or SIGTERM stopped the runs under way (closed as killed; a resume runs them again)."""


# -- groups -----------------------------------------------------------------------------------------------------
def group_label(kind: str, name: str) -> str:
    return f"{PREFIX}/{kind}/{name}"


def file_sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def open_group(kind: str, name: str, settings: dict):
    """The group of this benchmark run, made on first use; resuming with other settings is refused."""
    from aiida import orm

    label = group_label(kind, name)
    group, created = orm.Group.collection.get_or_create(label=label)
    if created:
        group.description = f"mdagent {kind} benchmark {name}"
        group.base.extras.set_many({"kind": kind, "settings": settings, "started": time.time()})
        return group
    before = group.base.extras.get("settings", {})
    changed = sorted(k for k in settings if k in before and before[k] != settings[k])
    if changed:
        raise BenchError(
            f"benchmark {name!r} was started with other settings ({', '.join(changed)}); resume it with "
            f"the same ones or give another --name"
        )
    return group


def find_group(name: str):
    """A benchmark run by name (codegen or qa) or by full group label."""
    from aiida import orm

    labels = [name] if name.startswith(PREFIX + "/") else [group_label(k, name) for k in KINDS]
    found = [g for (g,) in orm.QueryBuilder().append(orm.Group, filters={"label": {"in": labels}}).all()]
    if not found:
        raise BenchError(f"no benchmark run named {name!r}; `mdagent bench list` shows them")
    if len(found) > 1:
        raise BenchError(f"{name!r} names both a codegen and a qa run; give the full label {found[0].label!r}")
    return found[0]


def list_groups() -> list[dict]:
    from aiida import orm

    qb = orm.QueryBuilder().append(orm.Group, filters={"label": {"like": f"{PREFIX}/%"}})
    return [
        {
            "label": g.label,
            "kind": g.base.extras.get("kind"),
            "members": g.count(),
            "settings": g.base.extras.get("settings", {}),
        }
        for (g,) in qb.all()
    ]


# -- code generation --------------------------------------------------------------------------------------------
def codegen_jobs(tasks: list[CodeTask], k: int, loop: bool) -> list[tuple[str, str, int]]:
    """(task, mode, index) of every run: with the loop, one loop run (whose first attempt is candidate 1) and
    k-1 one-shot runs; without it, k one-shot runs."""
    jobs = []
    for task in tasks:
        if loop:
            jobs.append((task.id, "loop", 0))
        jobs += [(task.id, "oneshot", i) for i in range(1 if loop else 0, k)]
    return jobs


def finished_jobs(group) -> set[tuple[str, str, int]]:
    from aiida import orm

    done = set()
    for node in group.nodes:
        tag = node.base.extras.get("bench", None)
        if isinstance(node, orm.WorkChainNode) and tag and node.is_finished:
            done.add((tag["task"], tag["mode"], tag["index"]))
    return done


def run_codegen(
    tasks: list[CodeTask],
    *,
    name: str,
    settings: dict,
    model: str | None = None,
    k: int = 1,
    loop: bool = True,
    max_attempts: int = 3,
    concurrency: int = 2,
    replay: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_done: Callable[[tuple, object], None] | None = None,
):
    """Run every task's pending runs (resuming `name`); returns the group."""
    check_replay(tasks, replay)
    group = open_group("codegen", name, settings)
    remember_tasks(group, tasks)
    by_id = {t.id: t for t in tasks}
    jobs = [j for j in codegen_jobs(tasks, k, loop) if j not in finished_jobs(group)]
    if on_start:
        on_start(len(codegen_jobs(tasks, k, loop)) - len(jobs), len(jobs))

    @contextlib.contextmanager
    def inputs_for(job) -> Iterator[dict]:
        from mdagent_hpc.workflows.launch import LaunchError, _inputs

        task, mode, index = by_id[job[0]], job[1], job[2]
        request = Request(
            task=task.task, model=model, loop=LoopPolicy(max_attempts=max_attempts if mode == "loop" else 1)
        )
        try:
            if not replay:
                yield _inputs(request, {"model": model} if model else {})
                return
            from mdagent_hpc.llm.replay import FakeOpenAIServer

            answers = task.answers if mode == "loop" else [task.answers[index % len(task.answers)]]
            with FakeOpenAIServer(list(answers), model=REPLAY_MODEL) as server:
                yield _inputs(request, {"base_url": server.base_url, "model": REPLAY_MODEL, "max_retries": 0})
        except LaunchError as exc:
            raise BenchError(str(exc)) from None

    def tag(job, node) -> None:
        node.base.extras.set("bench", {"task": job[0], "mode": job[1], "index": job[2]})
        group.add_nodes(node)

    _run_concurrently(jobs, inputs_for, concurrency, on_created=tag, on_done=on_done)
    return group


def check_replay(tasks: list[CodeTask], replay: bool) -> None:
    """Every task can become a request (mdagent's own bounds on a task's length), with answers for --replay."""
    for task in tasks:
        if not 10 <= len(task.task) <= 4000:
            raise BenchError(f"task {task.id}: a task is 10 to 4000 characters, this one has {len(task.task)}")
    if replay and (missing := [t.id for t in tasks if not t.answers]):
        raise BenchError(
            f"--replay needs recorded answers (`answers`) in every task; these have none: {', '.join(missing[:5])}"
        )


def _run_concurrently(jobs, inputs_for, concurrency: int, on_created, on_done) -> None:
    """Agent runs on one in-process runner, at most `concurrency` at a time; Ctrl-C closes the unfinished ones."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager
    from plumpy.persistence import InMemoryPersister

    from mdagent_hpc.execution.cancel import stop_children
    from mdagent_hpc.execution.profile import LOCAL_POLL_SECONDS
    from mdagent_hpc.workflows.agent import AgentWorkChain

    class NoCheckpoints(InMemoryPersister):  # as run_here: nothing resumes an in-process run from a checkpoint
        def save_checkpoint(self, process, tag=None) -> None:
            pass

    runner = get_manager().create_runner(communicator=None, poll_interval=LOCAL_POLL_SECONDS, persister=NoCheckpoints())
    live: dict = {}
    interrupted: list[int] = []
    killed: list = []

    def interrupt(signum: int) -> None:
        """Ctrl-C (or SIGTERM): kill the runs under way, as AiiDA's runner does for one; start no new one."""
        interrupted.append(signum)
        for process in list(live.values()):
            if not process.is_killing and not process.has_terminated():
                process.kill(msg_text="killed: the benchmark was interrupted")

    async def one(job, gate: asyncio.Semaphore) -> None:
        async with gate:
            if interrupted:
                return
            with inputs_for(job) as inputs:
                process = instantiate_process(runner, AgentWorkChain, **inputs)
                live[job] = process
                on_created(job, process.node)
                await process.step_until_terminated()
                live.pop(job)
            if process.node.is_killed:
                killed.append(process.node)
            elif on_done:
                on_done(job, process.node)

    async def everything() -> None:
        gate = asyncio.Semaphore(max(1, concurrency))
        await asyncio.gather(*(one(job, gate) for job in jobs))

    # Through the loop's wakeup fd: a signal that lands while a calcfunction holds SIGINT (AiiDA's own handler kills
    # that calcfunction only) still reaches `interrupt`.
    for sig in (signal.SIGINT, signal.SIGTERM):
        runner.loop.add_signal_handler(sig, interrupt, sig)
    try:
        runner.loop.run_until_complete(everything())
    except BaseException:
        from plumpy import ProcessState

        for process in live.values():  # a crash: close them, so a resume runs them again
            node = process.node
            if not node.is_terminated:
                node.set_process_state(ProcessState.KILLED)
                node.set_process_status("killed: the benchmark stopped")
                node.seal()
                stop_children(node)
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            runner.loop.remove_signal_handler(sig)
        runner.close()
    for node in killed:  # once nothing runs them any more: a kill reaches children only through a broker
        stop_children(node)
    if interrupted:
        raise BenchInterruptedError(
            "interrupted: the runs under way were stopped; run the same command again to resume"
        )


def codegen_records(group) -> list[RunRecord]:
    """Every finished run of a codegen benchmark, newest last (a job run twice: the last one counts)."""
    from aiida import orm

    from mdagent_hpc.provenance.runs import read_run

    records: dict[tuple, RunRecord] = {}
    nodes = sorted((n for n in group.nodes if isinstance(n, orm.WorkChainNode)), key=lambda n: n.ctime)
    for node in nodes:
        tag = node.base.extras.get("bench", None)
        if not tag or not node.is_finished:
            continue
        run = read_run(node)
        records[(tag["task"], tag["mode"], tag["index"])] = RunRecord(
            task=tag["task"],
            mode=tag["mode"],
            index=tag["index"],
            verdict=run.verdict,
            attempts=run.attempts,
            seconds=run.seconds,
            pk=run.pk,
            judge=node.base.extras.get("bench_judge", None),
        )
    return list(records.values())


def judge_codegen(group, tasks: list[CodeTask], settings, concurrency: int = 2) -> int:
    """The judge's score for each loop run's final script against the task's reference; returns how many judged."""
    by_id = {t.id: t for t in tasks}
    todo = [
        (r, by_id[r.task])
        for r in codegen_records(group)
        if r.mode == "loop" and r.judge is None and r.task in by_id and by_id[r.task].reference
    ]
    todo = [(r, t, next((a.script for a in reversed(r.attempts) if a.script), "")) for r, t in todo]

    def ask(item) -> float | None:
        record, task, script = item
        if not script:
            return 0.0
        text, _, _ = chat(settings, judging.code_messages(task.task, task.reference, script), max_tokens=256)
        return judging.read_score(text)

    from aiida import orm

    judged = 0
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = {pool.submit(ask, item): item for item in todo}
        for future in as_completed(futures):
            value = future.result()
            if value is not None:
                orm.load_node(futures[future][0].pk).base.extras.set("bench_judge", value)
                judged += 1
    return judged


# -- questions --------------------------------------------------------------------------------------------------
def run_qa(
    questions: list[Question],
    *,
    name: str,
    settings_record: dict,
    llm_settings,
    judge: bool = True,
    concurrency: int = 4,
    on_start=None,
    on_done=None,
):
    """Ask every question not yet answered in `name`; each answer is a Dict in the group. Returns the group."""
    from aiida import orm

    group = open_group("qa", name, settings_record)
    answered = {n.base.extras.get("bench", {}).get("question") for n in group.nodes if isinstance(n, orm.Dict)}
    todo = [q for q in questions if q.id not in answered]
    if on_start:
        on_start(len(questions) - len(todo), len(todo))
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = [pool.submit(answer_question, llm_settings, q, judge) for q in todo]
        for future in as_completed(futures):
            result = future.result()
            node = orm.Dict(result.model_dump(mode="json")).store()
            node.base.extras.set("bench", {"question": result.id})
            group.add_nodes(node)
            if on_done:
                on_done(result)
    return group


def answer_question(settings, question: Question, judge: bool) -> Answered:
    """Ask one question (in a worker thread: no database here) and score the answer."""
    from mdagent_hpc.llm import LLMError

    base = {"id": question.id, "type": question.type.value, "difficulty": question.difficulty, "tags": question.tags}
    try:
        text, usage, seconds = chat(settings, qa.messages(question))
    except LLMError as exc:
        return Answered(**base, error=str(exc))
    predicted = qa.extract(question, text)
    result = Answered(
        **base,
        response=text,
        predicted=predicted,
        score=qa.score(question, predicted),
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
        seconds=seconds,
    )
    if judge and question.type == QuestionType.OPEN and question.scorable:
        if not predicted:
            result.judge = 0.0
            return result
        try:
            verdict, _, _ = chat(
                settings, judging.open_messages(question.question, question.answer_text, str(predicted)), max_tokens=256
            )
        except LLMError:
            return result
        result.judge = judging.read_score(verdict)
    return result


def qa_records(group) -> list[Answered]:
    from aiida import orm

    return [Answered(**n.get_dict()) for n in sorted(group.nodes, key=lambda n: n.ctime) if isinstance(n, orm.Dict)]


# -- one chat completion ----------------------------------------------------------------------------------------
def chat(settings, messages: list[dict], max_tokens: int = 512, temperature: float = 0.0) -> tuple[str, dict, float]:
    """One plain chat completion: (text, usage, seconds). Raises LLMUnavailableError with one sentence."""
    from mdagent_hpc.llm.client import get_client

    start = time.monotonic()
    response = get_client(settings).chat(messages, max_tokens=max_tokens, temperature=temperature)
    text = response.choices[0].message.content or ""
    usage = response.usage.model_dump() if response.usage else {}
    return text, {k: v for k, v in usage.items() if isinstance(v, int)}, round(time.monotonic() - start, 3)


# -- reports ----------------------------------------------------------------------------------------------------
def report(group) -> dict:
    """A benchmark run's numbers: {"label", "kind", "settings", "summary", "items", ...} (plain JSON)."""
    from mdagent_hpc.evalbench import scoring

    kind = group.base.extras.get("kind", None)
    settings = group.base.extras.get("settings", {})
    if kind == "qa":
        answers = qa_records(group)
        return {
            "label": group.label,
            "kind": kind,
            "settings": settings,
            "summary": scoring.qa_summary(answers).model_dump(mode="json"),
            "items": [a.model_dump(mode="json") for a in answers],
        }
    if kind != "codegen":
        raise BenchError(f"group {group.label!r} is not an mdagent benchmark run")
    meta = group.base.extras.get("tasks", {})
    records = codegen_records(group)
    k, loop = settings.get("k", 1), settings.get("loop", True)
    by_task: dict[str, list[RunRecord]] = {t: [] for t in meta}
    for r in records:
        by_task.setdefault(r.task, []).append(r)
    results = [scoring.task_result(t, runs, k, **meta.get(t, {})) for t, runs in by_task.items()]
    done = finished_jobs(group)
    complete = {t for t in by_task if all(j in done for j in codegen_jobs([CodeTask(id=t, task=t)], k, loop))}
    return {
        "label": group.label,
        "kind": kind,
        "settings": settings,
        "summary": scoring.codegen_summary(results, k, loop, complete).model_dump(mode="json"),
        "items": [r.model_dump(mode="json") for r in results],
        "by_tag": scoring.breakdown(results, "tags"),
        "by_difficulty": scoring.breakdown(results, "difficulty"),
    }


def remember_tasks(group, tasks: list[CodeTask]) -> None:
    """Keep each task's tags and difficulty with the group, for reports without the set file."""
    group.base.extras.set("tasks", {t.id: {"tags": t.tags, "difficulty": t.difficulty} for t in tasks})
