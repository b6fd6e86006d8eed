"""`mdagent bench codegen|qa|compare|list`: measure a model through the whole system (docs/bench.md)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from mdagent_hpc.cli.main import UserError, emit_json, err, out, status
from mdagent_hpc.cli.options import json_option
from mdagent_hpc.errors import MDAgentError


@click.group(short_help="Benchmark a model: code generation, Q&A, compare.")
def bench() -> None:
    """Benchmark a model through the whole system; every benchmark run is a provenance group (docs/bench.md)."""


def _progress(as_json: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err(),
        disable=as_json,
        transient=False,
    )


class _Bar:
    """A benchmark's progress bar on stderr, from the moment its runs start until they end (or the judging starts:
    one live display at a time)."""

    def __init__(self, kind: str, as_json: bool):
        self.kind, self.as_json = kind, as_json
        self.shown = contextlib.ExitStack()
        self.progress = self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, _tb) -> None:
        self.end()
        if isinstance(exc, MDAgentError):
            # A benchmark stopped (Ctrl-C, SIGTERM or an error) ends the command; the engine's child tasks left on
            # the closed loop complain when collected.
            from mdagent_hpc.cli.main import engine_messages_to_log

            engine_messages_to_log()

    def start(self, name: str, done: int, todo: int) -> None:
        from mdagent_hpc.cli.run import quiet_engine_console

        quiet_engine_console()  # the profile is loaded now, and the runs are about to start
        self.progress = self.shown.enter_context(_progress(self.as_json))
        self.bar = self.progress.add_task(f"{self.kind} {name}", total=done + todo, completed=done)

    def advance(self) -> None:
        self.progress.advance(self.bar)

    def end(self) -> None:
        self.shown.close()


@bench.command(short_help="Run a code-generation set through the agent loop.")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--model", help="model name (default: MDAGENT_LLM_MODEL, else the first the server lists)")
@click.option(
    "-k",
    "k",
    type=click.IntRange(1, 20),
    default=1,
    show_default=True,
    help="one-shot candidates per task (Exec-Success@k)",
)
@click.option("--loop/--no-loop", default=True, show_default=True, help="also run the correction loop")
@click.option(
    "--max-attempts", type=click.IntRange(1, 50), default=3, show_default=True, help="attempts of the correction loop"
)
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=2, show_default=True, help="agent runs at the same time"
)
@click.option("--name", help="the benchmark run's name (default: FILE's stem and the model); the same name resumes")
@click.option("--replay", is_flag=True, help="replay each task's recorded `answers` instead of asking an endpoint")
@click.option("--judge", is_flag=True, help="also score the final scripts against the references with the LLM judge")
@json_option("the result")
def codegen(file, model, k, loop, max_attempts, concurrency, name, replay, judge, as_json) -> None:
    """Run every task of FILE (MD-EvalBench's code-generation JSON, or JSONL of {task, reference?}) through the
    system: Exec-Success@k, success with the correction loop, attempts, grade, reward, tokens and time per task."""
    from mdagent_hpc import api

    with _Bar("codegen", as_json) as shown:

        def started(name: str, done: int, todo: int) -> None:
            shown.start(name, done, todo)
            if done:
                err().print(f"resuming {name}: {done} run(s) already finished", highlight=False)

        def finished(job: tuple, verdict: str) -> None:
            shown.advance()
            if not as_json:
                shown.progress.console.print(f"[dim]•[/] {job[0]} {job[1]} {job[2]}: {verdict}", highlight=False)

        def judging(message: str):
            shown.end()
            return status(message, quiet=as_json)

        result = api.bench_codegen(
            file,
            model=model,
            k=k,
            loop=loop,
            max_attempts=max_attempts,
            concurrency=concurrency,
            name=name,
            replay=replay,
            judge=judge,
            on_start=started,
            on_done=finished,
            status=judging,
        )
    if as_json:
        emit_json(result)
    else:
        _print_codegen(result)


@bench.command(short_help="Ask a question set (MD-EvalBench's QA format) and score the answers.")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--model", help="model name (default: MDAGENT_LLM_MODEL, else the first the server lists)")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="questions in flight at the same time",
)
@click.option("--name", help="the benchmark run's name (default: FILE's stem and the model); the same name resumes")
@click.option("--judge/--no-judge", default=True, show_default=True, help="score open answers with the LLM judge")
@json_option("the result")
def qa(file, model, concurrency, name, judge, as_json) -> None:
    """Ask every question of FILE (JSONL: id, type, question, options, answer, answer_text, difficulty, tags):
    exact scoring of choices, normalised matching of fill-blanks, the judge for open answers; by type, difficulty
    and tag."""
    from mdagent_hpc import api

    with _Bar("qa", as_json) as shown:
        result = api.bench_qa(
            file,
            model=model,
            concurrency=concurrency,
            name=name,
            judge=judge,
            on_start=shown.start,
            on_done=shown.advance,
        )
    if as_json:
        emit_json(result)
    else:
        _print_qa(result)
    errors = result["summary"]["errors"]
    if errors:
        err().print(
            f"{errors} question(s) got no answer from the endpoint; `mdagent llm check` tests it, and "
            f"running the same command again asks only those",
            highlight=False,
        )


@bench.command(short_help="Two benchmark runs side by side, with a plot.")
@click.argument("first")
@click.argument("second")
@click.option("--plot", type=click.Path(path_type=Path), help="where to write the PNG (default: A-vs-B.png here)")
@json_option("the result")
def compare(first, second, plot, as_json) -> None:
    """Benchmark runs FIRST and SECOND (names from `mdagent bench list`) per task or question and in total."""
    from mdagent_hpc import api

    a, b = api.bench_report(first), api.bench_report(second)
    if a["kind"] != b["kind"]:
        raise UserError(f"{first} is a {a['kind']} run and {second} a {b['kind']} run; compare runs of one kind")
    plot = plot or Path(f"{first}-vs-{second}.png".replace("/", "_"))
    _plot(a, b, first, second, plot)
    if as_json:
        emit_json({"first": a, "second": b, "plot": str(plot)})
        return
    from rich.table import Table

    table = Table(title=f"{first} vs {second}")
    for col in ("item", first, second):
        table.add_column(col)
    left = {i.get("task", i.get("id")): i for i in a["items"]}
    right = {i.get("task", i.get("id")): i for i in b["items"]}
    for item in sorted(set(left) | set(right)):
        table.add_row(item, _cell(left.get(item), a["kind"]), _cell(right.get(item), b["kind"]))
    out().print(table)
    for metric in _metrics(a):
        out().print(f"{metric}: {_fmt(_metric(a, metric))} vs {_fmt(_metric(b, metric))}", highlight=False)
    out().print(f"plot: {plot}", highlight=False)


@bench.command("list", short_help="The benchmark runs kept in provenance.")
@json_option("the result")
def list_(as_json) -> None:
    """Every benchmark run (its group, kind, members and settings)."""
    from mdagent_hpc import api

    groups = api.list_benches()
    if as_json:
        emit_json(groups)
        return
    for g in groups:
        s = g["settings"]
        out().print(
            f"{g['label']}  {g['members']} members  model {s.get('model')}  file {s.get('file')}", highlight=False
        )
    if not groups:
        out().print("no benchmark runs yet: `mdagent bench codegen FILE` or `mdagent bench qa FILE`")


# -- output -----------------------------------------------------------------------------------------------------
def _print_codegen(result: dict) -> None:
    from rich.table import Table

    s = result["summary"]
    table = Table(title=result["label"])
    for col in ("task", f"one-shot (k={s['k']})", "loop", "grade", "reward", "tokens", "seconds", "judge"):
        table.add_column(col)
    for r in result["items"]:
        shots = "".join("✓" if c else "✗" for c in r["candidates"]) or "-"
        loop = (
            "-"
            if r["loop_passed"] is None
            else (f"passed at {r['attempts_to_pass']}" if r["loop_passed"] else f"failed ({r['attempts']} attempts)")
        )
        table.add_row(
            r["task"],
            shots,
            loop,
            r["grade"] or "none",
            f"{r['reward']:.2f}",
            str(r["prompt_tokens"] + r["completion_tokens"]),
            f"{r['seconds']:.1f}",
            _fmt(r["judge"]),
        )
    out().print(table)
    for metric in _metrics(result):
        out().print(f"{metric}: {_fmt(_metric(result, metric))}", highlight=False)
    if s["incomplete"]:
        out().print(f"{s['incomplete']} task(s) have runs missing: run the same command again to finish them")


def _print_qa(result: dict) -> None:
    s = result["summary"]
    out().print(
        f"{result['label']}: {_fmt(s['total']['points'])} / {s['total']['scored']} scored questions "
        f"= {_fmt(_acc(s['total']))} ({s['total']['questions']} asked, {s['unscored']} unscored, "
        f"{s['errors']} without an answer)",
        highlight=False,
    )
    for title in ("by_type", "by_difficulty", "by_tag"):
        parts = [f"{k} {_fmt(_acc(v))} ({v['scored']})" for k, v in s[title].items()]
        out().print(f"{title.replace('_', ' ')}: {', '.join(parts)}", highlight=False)
    out().print(f"tokens {s['prompt_tokens']} + {s['completion_tokens']}, {s['seconds']} s", highlight=False)


def _acc(bucket: dict) -> float | None:
    return round(bucket["points"] / bucket["scored"], 4) if bucket["scored"] else None


def _metrics(result: dict) -> list[str]:
    if result["kind"] == "qa":
        return ["accuracy", "unscored", "errors", "prompt_tokens", "completion_tokens", "seconds"]
    return [
        "exec_success_at_1",
        "exec_success_at_k",
        "loop_success",
        "mean_attempts_to_pass",
        "mean_reward",
        "judge_mean",
        "prompt_tokens",
        "completion_tokens",
        "seconds",
    ]


def _metric(result: dict, metric: str):
    s = result["summary"]
    return _acc(s["total"]) if metric == "accuracy" else s.get(metric)


def _cell(item: dict | None, kind: str) -> str:
    if item is None:
        return "-"
    if kind == "qa":
        value = item["score"] if item["score"] is not None else item["judge"]
        return f"{_fmt(value)} ({item['predicted']})"
    return (
        f"@k {'✓' if item['exec_success_at_k'] else '✗'}, loop {'✓' if item['loop_passed'] else '✗'}, "
        f"reward {item['reward']:.2f}"
    )


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _plot(a: dict, b: dict, first: str, second: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        m
        for m in _metrics(a)
        if m in ("exec_success_at_1", "exec_success_at_k", "loop_success", "mean_reward", "judge_mean", "accuracy")
    ]
    values = [[_metric(r, m) or 0.0 for m in names] for r in (a, b)]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    width = 0.38
    for i, (label, vals) in enumerate(((first, values[0]), (second, values[1]))):
        ax.bar([x + (i - 0.5) * width for x in range(len(names))], vals, width, label=label)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise UserError(f"cannot write the plot to {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
