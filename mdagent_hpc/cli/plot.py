"""`mdagent plot`: a run's thermo output as a PNG."""

from __future__ import annotations

import click

from mdagent_hpc.cli.main import emit_json, out
from mdagent_hpc.cli.options import json_option


@click.command(short_help="Thermo quantities of a run against step or time, as a PNG.")
@click.argument("run")
@click.option("--out", "path", type=click.Path(dir_okay=False), help="the PNG to write (default: run-PK.png here)")
@json_option("the file's path")
def plot(run, path, as_json) -> None:
    """Plot RUN's thermo quantities (temperature, energies, pressure, ...) against step, or time when the log has
    it, one line per run segment: RUN is a pk (its passed attempt, else the last that ran) or PK:N (attempt N)."""
    from mdagent_hpc import api

    written = api.plot_run(run, path)
    if as_json:
        emit_json({"path": str(written)})
    else:
        out().print(f"wrote {written}", highlight=False)
