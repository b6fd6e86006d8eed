"""`mdagent potentials`: the potential files available here."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mdagent_hpc.cli.main import emit_json, out
from mdagent_hpc.cli.options import json_option


@click.group(short_help="Potential files available here.")
def potentials() -> None:
    """Search the potential files available here."""


@potentials.command("find")
@click.argument("elements", nargs=-1, required=True)
@click.option("--style", help="pair style, e.g. eam/alloy, tersoff, meam")
@json_option("matches")
def find(elements, style, as_json) -> None:
    """Potential files covering all ELEMENTS (e.g. `mdagent potentials find Cu Ni --style eam/alloy`)."""
    from rich.table import Table

    from mdagent_hpc import api

    matches = api.find_potentials(list(elements), style)
    if as_json:
        emit_json([m.model_dump(mode="json") for m in matches])
    elif matches:
        table = Table("file", "styles", "elements", "folder", "md5")
        for m in matches:
            table.add_row(m.name, " ".join(m.styles) or "?", " ".join(m.elements), str(Path(m.path).parent), m.md5[:12])
        out().print(table)
    else:
        out().print(
            f"no potential file covers {' '.join(elements)}{' for ' + style if style else ''}; "
            "try without --style, or put a file in the run folder or MDAGENT_SITE_POTENTIALS"
        )
    sys.exit(0 if matches else 1)
