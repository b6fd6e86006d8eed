"""`mdagent export trajectories`: every attempt of past runs as training data for verl, TRL, OpenRLHF or SFT."""

from __future__ import annotations

from pathlib import Path

import click

from mdagent_hpc.cli.main import emit_json, err, out, status
from mdagent_hpc.cli.options import json_option


@click.group(short_help="Export recorded runs as training data.")
def export() -> None:
    """Export what provenance recorded, for other tools (docs/bench.md)."""


@export.command(short_help="Attempts as RL/SFT data: verl, trl, openrlhf or sft.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["verl", "trl", "openrlhf", "sft"]),
    required=True,
    help="the trainer's layout (docs/bench.md lists the columns)",
)
@click.option(
    "--out",
    "folder",
    type=click.Path(path_type=Path),
    default=Path("trajectories"),
    show_default=True,
    help="folder for train.* and test.*",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="share of tasks held out in test (by task, never split across)",
)
@click.option("--bench", "bench_name", help="only the runs of this benchmark run (`mdagent bench list`)")
@json_option("what was written")
def trajectories(fmt, folder, test_fraction, bench_name, as_json, **filters) -> None:
    """Every attempt of the runs matching the filters (those of `mdagent runs query`): the prompt messages, the
    completion, the reward and the diagnostics; deduplicated, with a held-out split by task."""
    from mdagent_hpc import api

    def track(pks, description):
        from rich.progress import Progress

        with Progress(console=err(), disable=as_json, transient=True) as progress:
            yield from progress.track(pks, description=description)

    result = api.export_trajectories(
        fmt,
        folder,
        test_fraction=test_fraction,
        bench=bench_name,
        status=lambda message: status(message, as_json),
        track=track,
        **filters,
    )
    if as_json:
        emit_json(result)
        return
    rows = result["rows"]
    out().print(
        f"{result['attempts']} attempts of {result['runs']} runs -> {rows['train']} train and {rows['test']} test "
        f"rows ({fmt})",
        highlight=False,
    )
    for path in result["files"].values():
        out().print(f"  {path}", highlight=False)


def _query_options() -> list[click.Parameter]:
    """The filters of `mdagent runs query` (one definition), without its output options and limit."""
    from mdagent_hpc.cli.runs import query

    return [p for p in query.params if p.name not in ("as_json", "as_csv", "limit", "sort")]


trajectories.params[:0] = _query_options()
trajectories.params.append(
    click.Option(
        ["--limit"],
        type=click.IntRange(1, 100000),
        default=10000,
        show_default=True,
        help="at most this many runs, newest first",
    )
)
