"""`mdagent show` and `mdagent runs` (with `runs query`, `runs diff`, `runs index`): agent runs as recorded in
provenance."""

from __future__ import annotations

import click

from mdagent_hpc.cli.main import emit_json, out
from mdagent_hpc.cli.options import json_option


@click.command(short_help="One run, attempt by attempt, with its observables.")
@click.argument("pk", type=int)
@json_option("the run")
def show(pk, as_json) -> None:
    """The story of one run: the task, each attempt's script diff, diagnostics and evaluation, the observables."""
    from mdagent_hpc import api
    from mdagent_hpc.cli.render import print_run, run_json

    result = api.get_run(pk)
    if as_json:
        emit_json(run_json(result))
    else:
        print_run(result)


@click.group(short_help="Recent agent runs; query, diff and index them.", invoke_without_command=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--verdict", type=click.Choice(["running", "passed", "failed"]), help="only runs with this verdict")
@click.option("--site", help="only runs on this site")
@click.option("--task", "task_contains", help="only runs whose task contains this text")
@json_option("the runs")
@click.pass_context
def runs(ctx, limit, verdict, site, task_contains, as_json) -> None:
    """Recent agent runs: task, verdict, grade, attempts, final temperature, time.

    `mdagent runs query` filters on everything a run recorded, `runs diff` compares two runs or attempts,
    `runs index` records the query fields of older runs (docs/queries.md).
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.box import SIMPLE_HEAD
    from rich.table import Column, Table

    from mdagent_hpc import api
    from mdagent_hpc.cli.render import UNITS, runs_rows

    rows = runs_rows(api.list_runs(limit, verdict=verdict, site=site, task_contains=task_contains))
    if as_json:
        emit_json(rows)
        return
    if not rows:
        filtered = verdict or site or task_contains
        out().print(
            "no agent runs match"
            if filtered
            else 'no agent runs yet; start one with `mdagent run "TASK"` (or try `mdagent demo`)'
        )
        return
    names = ("pk", "task", "verdict", "grade", "attempts", "T final", "started", "s")
    table = Table(
        *(Column(name, no_wrap=True) for name in names), box=SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    room = max(12, min(60, out().width - 62))  # the task gives way on a narrow terminal; the rest fits in 62
    for r in rows:
        temp = r["observables"].get("temp_final")
        unit = UNITS.get(r["units"] or "", {}).get("temp", "")
        table.add_row(
            str(r["pk"]),
            _cut(r["task"] or "", room),
            r["verdict"] or "",
            r["grade"] or "",
            str(r["attempts"]),
            "" if temp is None else f"{temp:.5g} {unit}".strip(),
            r["ctime"][5:16].replace("T", " "),
            "" if r["seconds"] is None else f"{r['seconds']:.1f}",
        )
    out().print(table)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- runs query / diff / index (docs/queries.md) -----------------------------------------------------------------
def _many(ctx, param, values):  # noqa: ARG001 (click's callback signature)
    return list(values) or None


@runs.command(short_help="Runs matching filters on what they recorded.")
@click.option("--task", help="text in the task (re:PATTERN for a regular expression)")
@click.option("--element", "elements", multiple=True, callback=_many, help="an element the run has (repeat: all)")
@click.option("--pair-style", help="a pair style the script uses, e.g. eam/alloy")
@click.option("--potential", help="text in a potential file name (re:PATTERN)")
@click.option("--md5", help="a potential file's md5")
@click.option("--units", help="the script's units style: metal, real, lj, ...")
@click.option("--ensemble", help="nve, nvt, npt, langevin, minimize, ...")
@click.option("--site", help="the site it ran on")
@click.option("--model", help="text in the model's name (re:PATTERN)")
@click.option("--user", help="the AiiDA user (email)")
@click.option("--kind", help="run (agent runs) or point (sweep points)")
@click.option("--verdict", help="running, passed or failed")
@click.option("--grade", help="the final evaluation's grade: pass, warn or fail")
@click.option("--reward", help="a range: 0.5.., ..0.5, 0.2..0.8")
@click.option("--attempts", help="a range, e.g. 2.. or ..1")
@click.option("--stop", help="why it stopped: passed, max_attempts, stuck, no_valid_script, llm_unavailable, ...")
@click.option("--fault", help="a job fault in an attempt: walltime, node_failure, cancelled, connection_lost")
@click.option("--finding", help="a rule the final evaluation warned or failed on, e.g. lost_atoms")
@click.option("--duration", "seconds", help="a range of seconds, e.g. ..60 or 5m..")
@click.option("--sweep", help="the sweep's pk or label")
@click.option("--param", "params", multiple=True, callback=_many, help="a sweep parameter: NAME=VALUE, NAME=LOW..HIGH")
@click.option("--obs", multiple=True, callback=_many, help="an observable: NAME=LOW..HIGH, e.g. temp_final=1200..")
@click.option("--since", help="7d, 12h, 30m, 2w or a date (2026-11-01)")
@click.option("--until", help="the same forms as --since")
@click.option(
    "--sort",
    default="-ctime",
    show_default=True,
    help="ctime, pk, reward, attempts, seconds, obs.NAME, param.NAME; a leading - sorts descending",
)
@click.option("--limit", type=int, default=50, show_default=True)
@json_option("the rows")
@click.option("--csv", "as_csv", is_flag=True, help="print the rows as CSV (observables as obs.NAME columns)")
def query(as_json, as_csv, **filters) -> None:
    """Past runs that match every filter given, newest first (or as --sort says), at most --limit."""
    from mdagent_hpc import api

    if as_json and as_csv:
        raise click.UsageError("--json or --csv, not both")
    if as_csv:
        click.echo(api.query_runs(**filters).to_csv(index=False), nl=False)
    else:
        rows = api.find_runs(**filters)
        emit_json(rows) if as_json else _print_rows(rows, filters["limit"])
    _hint_unindexed(filters)


def _print_rows(rows: list[dict], limit: int) -> None:
    from rich.box import SIMPLE_HEAD
    from rich.table import Column, Table

    if not rows:
        out().print("no runs match")
        return
    wide = out().width >= 110  # site and model only where they fit; --json and --csv have every field
    names = ["pk", "started", "verdict", "grade", "reward", "att", "task", "elements", "s"]
    names[-1:-1] = ["site", "model"] if wide else []
    table = Table(*(Column(n, no_wrap=True) for n in names), box=SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    room = max(12, min(50, out().width - (90 if wide else 66)))  # the task gives way; the rest fits in 66 (90)
    for r in rows:
        cells = {
            "pk": str(r["pk"]),
            "started": r["ctime"][5:16].replace("T", " "),
            "verdict": r["verdict"],
            "grade": r["grade"] or "",
            "reward": "" if r["reward"] is None else f"{r['reward']:.2f}",
            "att": str(r["attempts"] or ""),
            "task": _cut(r["task"] or "", room),
            "elements": _cut("-".join(r["elements"]), 10),
            "site": _cut(r["site"] or "", 12),
            "model": _cut(r["model"] or "", 16),
            "s": "" if r["seconds"] is None else f"{r['seconds']:.0f}",
        }
        table.add_row(*(cells[n] for n in names))
    out().print(table)
    if len(rows) == limit:
        out().print(f"[dim]the first {limit}; --limit shows more[/]", highlight=False)


def _hint_unindexed(filters: dict) -> None:
    """Runs from before the fields were recorded cannot match a filter on them: say so, and how to fix it."""

    from mdagent_hpc.cli.main import err
    from mdagent_hpc.provenance.query import count_unindexed
    from mdagent_hpc.settings import env

    if env("MDAGENT_SERVER"):  # the runs are the server's; its admin runs `runs index` there
        return
    plain = {"since", "until", "sort", "limit"}
    if any(v not in (None, [], ()) for k, v in filters.items() if k not in plain):
        missing = count_unindexed()
        if missing:
            err().print(
                f"{missing} finished run(s) have no recorded fields yet and cannot match these filters; "
                "`mdagent runs index` records them",
                highlight=False,
            )


@runs.command(short_help="Two runs, or two attempts, side by side.")
@click.argument("a")
@click.argument("b")
@json_option("the comparison")
def diff(a, b, as_json) -> None:
    """Compare A and B: a run (PK: its passed or last attempt) or one attempt (PK:N). Prints the script diff,
    the settings that differ and the observables side by side."""
    from rich.table import Table

    from mdagent_hpc import api

    result = api.diff_runs(a, b)
    if as_json:
        emit_json(result)
        return
    for side in ("a", "b"):
        s = result[side]
        grade = f"{s['grade']} (reward {s['reward']:.2f})" if s["grade"] else "not evaluated"
        out().print(f"[bold]{side.upper()}[/]: {s['label']}, {grade}", highlight=False)
    out().rule("script")
    if result["same_script"]:
        out().print("(same script)")
    for line in result["script_diff"].splitlines():
        color = (
            "green"
            if line.startswith("+")
            else "red"
            if line.startswith("-")
            else "cyan"
            if line.startswith("@@")
            else None
        )
        out().print(f"[{color}]{_escape(line)}[/]" if color else _escape(line), highlight=False)
    out().rule("settings")
    if result["settings"]:
        table = Table("setting", "A", "B")
        for key, x, y in result["settings"]:
            table.add_row(key, _escape(str(x)), _escape(str(y)))
        out().print(table)
    out().print(f"{result['same_settings']} other setting(s) the same")
    out().rule("observables")
    if not result["observables"]:
        out().print("no observables on either side")
        return
    table = Table("observable", "A", "B", "B - A")
    for name, x, y, delta in result["observables"]:
        table.add_row(name, _number(x), _number(y), _number(delta))
    out().print(table)


def _number(value) -> str:
    return "" if value is None else f"{value:.6g}"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@runs.command(short_help="Record the query fields of older runs.")
@click.option("--all", "redo", is_flag=True, help="record every finished run again, not only those without fields")
@json_option("the counts")
def index(redo, as_json) -> None:
    """Back-fill: record what `runs query` filters on for finished runs that do not have it yet (runs made before
    this version, or whose recording failed). On a PostgreSQL profile, also make the indexes queries use."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from mdagent_hpc import api
    from mdagent_hpc.cli.main import err

    with Progress(
        TextColumn("recording runs"), BarColumn(), MofNCompleteColumn(), console=err(), disable=as_json
    ) as progress:
        task = progress.add_task("index", total=None)
        done, problems = api.index_runs(redo=redo, progress=lambda i, n: progress.update(task, completed=i, total=n))
    if as_json:
        emit_json({"recorded": done, "problems": problems})
    else:
        out().print(f"recorded the query fields of {done} run(s)", highlight=False)
        for problem in problems:
            err().print(f"[yellow]could not record run {problem}[/]", highlight=False)
    if problems:
        raise SystemExit(1)
