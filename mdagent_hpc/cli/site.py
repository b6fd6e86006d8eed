"""`mdagent site`: the clusters and machines LAMMPS runs on (site configs)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mdagent_hpc.cli.main import emit_json, err, out
from mdagent_hpc.cli.options import json_option


@click.group(short_help="Clusters and machines LAMMPS runs on.")
def site() -> None:
    """Clusters and machines LAMMPS runs on (site configs)."""


@site.command("add", short_help="Validate and keep a site config; set up its AiiDA code.")
@click.argument("file", type=click.Path(path_type=Path))
def add(file) -> None:
    """Validate FILE, keep it as your site config, and create or update its AiiDA computer and code."""
    from mdagent_hpc import api

    added = api.add_site(file)
    out().print(f"site {added.site.name}: {'saved' if added.changed else 'unchanged'} {added.path}", highlight=False)
    for change in added.changes or [f"computer {added.site.name} and code {added.code} up to date"]:
        out().print(f"  {change}", highlight=False)
    out().print(f"next: `mdagent site test {added.site.name}`", highlight=False)


@site.command("list", short_help="The site configs found.")
@json_option("the sites")
def list_sites(as_json) -> None:
    """The site configs found (your folder, MDAGENT_SITE_CONFIGS, the bundled ones), first one of a name wins."""
    from rich.table import Table

    from mdagent_hpc import api

    rows = api.list_sites()
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "scheduler", "transport", "host", "lammps", "file")
    for r in rows:
        if r["problem"]:
            table.add_row(r["name"], "[red]invalid[/]", "", "", r["problem"], r["path"])
        else:
            table.add_row(r["name"], r["scheduler"], r["transport"], r["host"], r["lammps"], r["path"])
    out().print(table)


@site.command("test", short_help="Connect, submit a 1-step job, read it back, timed.")
@click.argument("name")
@json_option("the stages")
def probe(name, as_json) -> None:
    """Connect to site NAME, query its scheduler, run a 1-step LAMMPS job and read it back, timing each stage."""
    from mdagent_hpc import api

    stages = []
    for stage in api.test_site(name) if as_json else _with_progress(api.test_site(name)):
        stages.append(stage)
        if not as_json:
            mark = "[green]ok[/]  " if stage.ok else "[bold red]FAIL[/]"
            out().print(f"{mark} {stage.name:11} {stage.seconds:6.2f} s  {stage.detail}", highlight=False)
            if stage.fix:
                out().print(f"     fix: {stage.fix}", highlight=False)
    ok = all(s.ok for s in stages) and len(stages) == 5
    if as_json:
        emit_json({"site": name, "ok": ok, "stages": [vars(s) for s in stages]})
    else:
        total = sum(s.seconds for s in stages)
        out().print(
            f"{'[bold green]site ' + name + ' works[/]' if ok else '[bold red]site ' + name + ' failed[/]'} "
            f"in {total:.1f} s",
            highlight=False,
        )
    sys.exit(0 if ok else 1)


def _with_progress(stages):
    """Show a spinner while each stage runs (submitting and waiting for a job can take a while)."""
    names = iter(
        [
            "creating the AiiDA computer and code",
            "connecting",
            "asking the scheduler",
            "running a 1-step LAMMPS job",
            "reading it back",
        ]
    )
    while True:
        with err().status(f"{next(names, 'working')} ...", spinner="dots"):
            stage = next(stages, None)
        if stage is None:
            return
        yield stage
