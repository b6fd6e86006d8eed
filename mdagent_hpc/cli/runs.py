"""`mdagent show` and `mdagent runs`: agent runs as recorded in provenance."""

from __future__ import annotations

import click

from mdagent_hpc.cli.main import emit_json, out


@click.command()
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


@click.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--verdict", type=click.Choice(["running", "passed", "failed"]), help="only runs with this verdict")
@click.option("--site", help="only runs on this site")
@click.option("--task", "task_contains", help="only runs whose task contains this text")
@click.option("--json", "as_json", is_flag=True, help="print the runs as JSON")
def runs(limit, verdict, site, task_contains, as_json) -> None:
    """Recent agent runs: task, verdict, grade, attempts, observables, time."""
    from rich.table import Table

    from mdagent_hpc import api
    from mdagent_hpc.cli.render import format_observables, runs_rows

    rows = runs_rows(api.list_runs(limit, verdict=verdict, site=site, task_contains=task_contains))
    if as_json:
        emit_json(rows)
        return
    if not rows:
        filtered = verdict or site or task_contains
        out().print("no agent runs match" if filtered else
                    "no agent runs yet; start one with `mdagent run \"TASK\"` (or try `mdagent demo`)")
        return
    table = Table("pk", "task", "verdict", "grade", "attempts", "observables", "started", "s")
    for r in rows:
        table.add_row(str(r["pk"]), (r["task"] or "")[:60], r["verdict"] or "", r["grade"] or "",
                      str(r["attempts"]), format_observables(r["observables"], r["units"])[:60], r["ctime"][:19],
                      "" if r["seconds"] is None else f"{r['seconds']:.1f}")
    out().print(table)
