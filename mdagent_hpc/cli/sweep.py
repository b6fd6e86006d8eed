"""`mdagent sweep "STUDY"` / `--spec FILE`, `mdagent sweep resume ID`, `mdagent sweep status [ID]`,
`mdagent sweep show ID`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from mdagent_hpc.cli.main import UserError, emit_json, err, out, status

SUBCOMMANDS = ("start", "resume", "status", "show")


class SweepGroup(click.Group):
    """`mdagent sweep STUDY ...` starts a sweep; `mdagent sweep status|show ...` reads them."""

    def parse_args(self, ctx, args):
        if args and args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=SweepGroup, short_help="Parameter sweeps: one template, many points.")
def sweep() -> None:
    """Parameter sweeps: the agent writes one LAMMPS template, validated at the range's ends, and every point runs
    with `-var` (no model call per point). Every point is recorded in provenance; the table and plot at the end.

    \b
    mdagent sweep "thermal expansion of Al with EAM from 300 to 900 K every 100 K at zero pressure"
    mdagent sweep --spec workflows/sweeps/al-thermal-expansion.yaml --yes
    mdagent sweep resume ID        run an interrupted sweep's spec again: its passed points and template reused
    mdagent sweep status [ID]      progress: done, running, failed, ETA
    mdagent sweep show ID          the table and where the plot is

    \b
    Starting a sweep (`mdagent sweep start --help`): --spec FILE, --site NAME, --yes (do not ask), --daemon
    (return at once), --save FILE (keep the proposed spec), --json. docs/sweeps.md has the spec's fields.
    """


@sweep.command("start", hidden=True)
@click.argument("study", required=False)
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), help="a sweep spec file (YAML, docs/sweeps.md)")
@click.option("--site", "site_name", help="where LAMMPS runs (`mdagent site list`; default: this machine)")
@click.option("--yes", "-y", is_flag=True, help="run without asking")
@click.option("--daemon", is_flag=True, help="submit to the AiiDA daemon and return at once")
@click.option("--save", type=click.Path(path_type=Path), help="write the spec to this file (YAML) before running")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def start(study, spec_file, site_name, yes, daemon, save, as_json) -> None:
    """Plan a sweep from STUDY (the model proposes the spec) or --spec FILE, show it, and run it."""
    import yaml

    from mdagent_hpc import api

    if (study is None) == (spec_file is None):
        raise UserError(
            'give either a STUDY in quotes or --spec FILE, e.g. `mdagent sweep "thermal expansion of '
            'Al with EAM from 300 to 900 K every 100 K"`'
        )
    if spec_file is not None:
        spec = api.load_sweep_spec(spec_file)
    else:
        with status("asking the model for a sweep spec ...", quiet=as_json):
            spec = api.propose_sweep(study, site=site_name)
    if site_name is not None:
        spec = spec.model_copy(update={"site": site_name})
    plan = api.plan_sweep(spec)
    shown = spec.model_dump(mode="json", exclude={"answers"}, exclude_none=True)
    if save is not None:
        save.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False))
    if not as_json:
        err().print(yaml.safe_dump(shown, sort_keys=False, width=110).rstrip(), highlight=False, markup=False)
        err().print(
            f"[bold]{plan.points} points[/] on {plan.site}, engine {plan.engine} ({plan.why}); template "
            f"validated first at {', '.join(plan.probes)}; ~{plan.core_hours:g} core-hours",
            highlight=False,
        )
    if not yes:
        if as_json:
            raise UserError("add --yes to run the sweep with --json (there is no one to ask)")
        if not click.confirm("Run this sweep?", default=True, err=True):
            err().print("not run" + (f"; the spec is in {save}" if save else ""), highlight=False)
            raise SystemExit(1)
    if daemon:
        with status("submitting to the AiiDA daemon (starting it if needed) ...", quiet=as_json):
            found = api.sweep(spec, daemon=True)
        if as_json:
            emit_json({"pk": found.pk, "uuid": found.uuid, "state": "submitted"})
        else:
            out().print(f"submitted: pk {found.pk}; follow it with `mdagent sweep status {found.pk}`", highlight=False)
        return
    _run_here(spec, plan.points, as_json)


@sweep.command("resume")
@click.argument("pk")
@click.option("--daemon", is_flag=True, help="submit to the AiiDA daemon and return at once")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def resume(pk, daemon, as_json) -> None:
    """Run sweep PK's spec again: the points that passed and the validated template are reused (no model call);
    only the other points run. The same as running its spec file again."""
    from mdagent_hpc import api
    from mdagent_hpc.sweeps.spec import SweepSpec

    found = api.get_sweep(pk)
    if found.verdict == "running":
        raise UserError(f"sweep {found.pk} is still running; follow it with `mdagent sweep status {found.pk}`")
    if found.verdict == "passed":
        raise UserError(f"sweep {found.pk} passed every point; `mdagent sweep show {found.pk}` shows its table")
    spec = SweepSpec(**found.spec)
    if daemon:
        with status("submitting to the AiiDA daemon (starting it if needed) ...", quiet=as_json):
            started = api.sweep(spec, daemon=True)
        if as_json:
            emit_json({"pk": started.pk, "uuid": started.uuid, "state": "submitted"})
        else:
            out().print(
                f"submitted: pk {started.pk}; follow it with `mdagent sweep status {started.pk}`", highlight=False
            )
        return
    _run_here(spec, found.points_total, as_json)


def _run_here(spec, points: int, as_json: bool) -> None:
    """Run the sweep in this process, print its table (also of the points that ended when it is interrupted)."""
    from mdagent_hpc import api
    from mdagent_hpc.cli.run import quiet_engine_console

    with status("loading the AiiDA profile ...", quiet=as_json):
        api.load_profile()
    quiet_engine_console()
    if not as_json:
        if spec.answers:
            err().print(f"replaying {len(spec.answers)} recorded model answer(s)", highlight=False)
        _live_reports(points)
    found = api.sweep(spec)
    files = api.export_sweep(found.pk) if found.rows else {}
    found = found.model_copy(update={"files": files})
    if as_json:
        emit_json(found.model_dump(mode="json"))
    else:
        _print_sweep(found)
    sys.exit(0 if found.verdict == "passed" else 1)


@sweep.command("status")
@click.argument("pk", required=False)
@click.option("--watch/--once", default=True, help="follow a running sweep until it ends  [default: watch]")
@click.option("--json", "as_json", is_flag=True, help="print the state as JSON (once)")
def status_(pk, watch, as_json) -> None:
    """The progress of sweep PK (done, running, failed, ETA), or the recent sweeps."""
    from mdagent_hpc import api

    if pk is None:
        found = api.list_sweeps()
        if as_json:
            emit_json([s.model_dump(mode="json", exclude={"rows", "template"}) for s in found])
            return
        if not found:
            out().print('no sweeps yet; start one with `mdagent sweep "STUDY"` or `mdagent sweep --spec FILE`')
            return
        from rich.table import Table

        table = Table("pk", "state", "done", "failed", "engine", "site", "task", box=None)
        for s in found:
            table.add_row(
                str(s.pk),
                s.verdict,
                f"{s.points_done}/{s.points_total}",
                str(s.points_failed),
                s.engine,
                s.site,
                s.task[:60],
            )
        out().print(table)
        return
    current = api.get_sweep(pk)
    if as_json or not watch or current.verdict != "running":
        if as_json:
            emit_json(current.model_dump(mode="json", exclude={"rows", "template"}))
        else:
            out().print(_line(current), highlight=False)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("sweep {task.fields[pk]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[text]}"),
        console=err(),
    ) as progress:
        bar = progress.add_task("sweep", total=current.points_total, pk=current.pk, text="")
        while True:
            progress.update(bar, completed=current.points_done + current.points_failed, text=_counts(current))
            if current.verdict != "running":
                break
            time.sleep(1)
            current = api.get_sweep(pk)
    out().print(_line(current), highlight=False)


@sweep.command("show")
@click.argument("pk")
@click.option("--json", "as_json", is_flag=True, help="print the sweep and its table as JSON")
def show(pk, as_json) -> None:
    """The table of sweep PK and where its table files and plot are (written under MDAGENT_HOME/sweeps/PK)."""
    from mdagent_hpc import api

    found = api.get_sweep(pk)
    found = found.model_copy(update={"files": api.export_sweep(pk) if found.rows else {}})
    if as_json:
        emit_json(found.model_dump(mode="json"))
        return
    _print_sweep(found)


# -- output ---------------------------------------------------------------------------------------------------
def _counts(s) -> str:
    eta = f", ETA {s.eta_s:.0f} s" if s.eta_s else ""
    return f"done {s.points_done}, running {s.points_running}, failed {s.points_failed}{eta}"


def _line(s) -> str:
    return (
        f"sweep {s.pk} {s.verdict}: {s.points_done}/{s.points_total} points passed ({_counts(s)}); engine "
        f"{s.engine} on {s.site}; LLM calls {s.llm_calls}" + (f"; {s.exit_message}" if s.exit_message else "")
    )


def _print_sweep(s) -> None:
    from rich.table import Table

    out().print(f"[bold]{s.task}[/]", highlight=False)
    out().print(_line(s), highlight=False)
    if s.rows:
        columns = [c for c in s.rows[0] if c != "problems"]
        table = Table(*columns, box=None)
        for row in s.rows:
            table.add_row(*(_cell(row[c]) for c in columns))
        out().print(table)
        for row in s.rows:
            if row.get("problems"):
                out().print(f"[red]{row['point']}[/]: {row['problems']}", highlight=False)
    for kind, path in s.files.items():
        out().print(f"{kind}: {path}", highlight=False)
    if s.verdict == "failed" and not s.rows:
        out().print(f"nothing to tabulate; `mdagent verdi process report {s.pk}` shows what happened", highlight=False)
    elif s.verdict == "failed" and s.state != "finished":
        out().print(
            f"interrupted: `mdagent sweep resume {s.pk}` runs the rest (the points that passed are kept)",
            highlight=False,
        )


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def _live_reports(total: int) -> None:
    """Show the sweep's and its agent runs' `report` messages as they happen."""
    import logging
    import re

    own = re.compile(r"\[\d+\|(SweepWorkChain|AgentWorkChain)\|\w+\]: ")

    class Live(logging.Handler):
        def emit(self, record):
            message = record.getMessage().lstrip()
            match = own.match(message)
            if record.levelno == 23 and match:
                indent = "  " if match.group(1) == "AgentWorkChain" else ""
                err().print(f"[dim]{indent}•[/] {message[match.end() :]}", highlight=False)

    logger = logging.getLogger("aiida.orm.nodes.process.workflow.workchain.WorkChainNode")
    if not any(type(h).__name__ == "Live" for h in logger.handlers):
        logger.addHandler(Live(level=23))
