"""`mdagent evaluate`: judge a finished LAMMPS run from its log."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mdagent_hpc.cli.main import emit_json
from mdagent_hpc.cli.options import json_option


@click.command(short_help="Judge a finished LAMMPS run from its log.")
@click.argument("log", type=click.Path(path_type=Path))
@click.option("--script", type=click.Path(path_type=Path), help="the input script, for thermostat targets")
@json_option("the evaluation")
def evaluate(log, script, as_json) -> None:
    """Judge a finished LAMMPS run from its LOG: completion, errors, stability, targets, drift."""
    from mdagent_hpc import api
    from mdagent_hpc.cli.render import print_evaluation
    from mdagent_hpc.models import Grade

    result = api.evaluate(log, script)
    if as_json:
        emit_json(result.model_dump(mode="json"))
    else:
        print_evaluation(result)
    sys.exit(1 if result.grade == Grade.FAIL else 0)
