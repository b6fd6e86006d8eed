"""`mdagent image`: container images of LAMMPS (Apptainer, Charliecloud)."""

from __future__ import annotations

import click

from mdagent_hpc.cli.main import emit_json, out, status
from mdagent_hpc.cli.options import json_option


@click.group(short_help="Container images of LAMMPS.")
def image() -> None:
    """Container images of LAMMPS: Apptainer (see containers/README.md for building, signing and publishing them)
    and Charliecloud (scripts/lammps_image.sh builds one)."""


@image.command("check")
@click.argument("image_ref", metavar="IMAGE")
@click.option(
    "--runtime",
    "runtime_name",
    type=click.Choice(["apptainer", "charliecloud"]),
    default="apptainer",
    show_default=True,
    help="the container runtime that runs IMAGE",
)
@click.option("--apptainer", default="apptainer", show_default=True, help="the apptainer command or its path")
@click.option("--ch-run", "ch_run", default="ch-run", show_default=True, help="Charliecloud's ch-run or its path")
@click.option("--executable", default="lmp", show_default=True, help="the LAMMPS binary inside the image")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="seconds for each `apptainer exec` (a URI's first run downloads the image)",
)
@json_option("the report")
def check(
    image_ref: str, runtime_name: str, apptainer: str, ch_run: str, executable: str, timeout: float, as_json: bool
) -> None:
    """Report the LAMMPS version and packages of IMAGE, read from inside it: for Apptainer a .sif path, or an
    oras://, docker:// or library:// URI; for Charliecloud an image folder.

    Runs `apptainer exec --containall IMAGE lmp -h` (run it on a cluster's login node, where Apptainer is), or
    `ch-run IMAGE -- lmp -h` with a scratch run folder bound as a job's would be.
    """
    from rich.table import Table

    from mdagent_hpc import api

    with status(f"Running `{executable} -h` in {image_ref} through {runtime_name}..."):
        report = api.check_image(
            image_ref, runtime=runtime_name, apptainer=apptainer, ch_run=ch_run, executable=executable, timeout=timeout
        )
    if as_json:
        emit_json(report.model_dump())
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("image", report.image)
    table.add_row("LAMMPS", f"[bold]{report.lammps_version}[/]")
    table.add_row(report.runtime, report.runtime_version)
    if report.potentials_dir:
        table.add_row("potentials", f"{report.potentials_dir} ({report.potential_files} files)")
    else:
        table.add_row("potentials", "[yellow]LAMMPS_POTENTIALS is not set to a folder in the image[/]")
    table.add_row(f"packages ({len(report.packages)})", " ".join(report.packages) or "[yellow]none listed[/]")
    out().print(table)
