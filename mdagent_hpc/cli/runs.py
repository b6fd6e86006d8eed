"""`mdagent show` and `mdagent runs`: agent runs as recorded in provenance."""

from __future__ import annotations

import click

from mdagent_hpc.cli.main import emit_json, out


@click.command(short_help="One run, attempt by attempt, with its observables.")
@click.argument("pk", type=int)
@click.option("--json", "as_json", is_flag=True, help="print the run as JSON")
def show(pk, as_json) -> None:
    """The story of one run: the task, each attempt's script diff, diagnostics and evaluation, the observables."""
    from mdagent_hpc import api
    from mdagent_hpc.cli.render import print_run, run_json

    result = api.get_run(pk)
    if as_json:
        emit_json(run_json(result))
    else:
        print_run(result)


@click.command(short_help="Recent agent runs.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--verdict", type=click.Choice(["running", "passed", "failed"]), help="only runs with this verdict")
@click.option("--site", help="only runs on this site")
@click.option("--task", "task_contains", help="only runs whose task contains this text")
@click.option("--json", "as_json", is_flag=True, help="print the runs as JSON")
def runs(limit, verdict, site, task_contains, as_json) -> None:
    """Recent agent runs: task, verdict, grade, attempts, final temperature, time."""
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
        out().print("no agent runs match" if filtered else
                    "no agent runs yet; start one with `mdagent run \"TASK\"` (or try `mdagent demo`)")
        return
    names = ("pk", "task", "verdict", "grade", "attempts", "T final", "started", "s")
    table = Table(*(Column(name, no_wrap=True) for name in names), box=SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    room = max(12, min(60, out().width - 62))  # the task gives way on a narrow terminal; the rest fits in 62
    for r in rows:
        temp = r["observables"].get("temp_final")
        unit = UNITS.get(r["units"] or "", {}).get("temp", "")
        table.add_row(str(r["pk"]), _cut(r["task"] or "", room), r["verdict"] or "", r["grade"] or "",
                      str(r["attempts"]), "" if temp is None else f"{temp:.5g} {unit}".strip(),
                      r["ctime"][5:16].replace("T", " "), "" if r["seconds"] is None else f"{r['seconds']:.1f}")
    out().print(table)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
