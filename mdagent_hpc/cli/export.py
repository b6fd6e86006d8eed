"""`mdagent export trajectories`: every attempt of past runs as training data for verl, TRL, OpenRLHF or SFT."""

from __future__ import annotations

from pathlib import Path

import click

from mdagent_hpc.cli.main import UserError, emit_json, err, out
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
    from mdagent_hpc.cli.main import status
    from mdagent_hpc.evalbench.export import rows

    filters = {k: v for k, v in filters.items() if v not in (None, [], ())}
    limit = filters.pop("limit")
    with status("finding the runs ...", quiet=as_json):
        members = None
        if bench_name:
            api.load_profile()
            from mdagent_hpc.workflows.bench import BenchError, find_group

            try:
                group = find_group(bench_name)
            except BenchError as exc:
                raise UserError(str(exc)) from None
            members = [
                n.pk
                for n in sorted(group.nodes, key=lambda n: n.ctime, reverse=True)
                if n.base.extras.get("bench", None) and n.is_finished
            ]
        if members is not None and not filters:
            pks = members[:limit]
        else:
            api.index_runs()  # runs finished before their query fields were recorded: record them, so filters see them
            pks = [row["pk"] for row in api.find_runs(**filters, limit=limit)]
            if members is not None:
                pks = [pk for pk in pks if pk in set(members)]
    from rich.progress import Progress

    from mdagent_hpc.provenance import local_caller
    from mdagent_hpc.provenance.trajectories import steps_of

    steps = []
    with Progress(console=err(), disable=as_json, transient=True) as progress:
        for pk in progress.track(pks, description="reading attempts"):
            steps += steps_of(local_caller(), pk)
    if not steps:
        raise UserError("no attempt matches these filters; `mdagent runs query` with the same filters lists runs")
    data = rows(steps, fmt, test_fraction)
    written = {split: _write(folder, split, fmt, items) for split, items in data.items() if items}
    result = {
        "format": fmt,
        "runs": len(pks),
        "attempts": len(steps),
        "rows": {split: len(items) for split, items in data.items()},
        "files": written,
    }
    if as_json:
        emit_json(result)
        return
    out().print(
        f"{len(steps)} attempts of {len(pks)} runs -> {result['rows']['train']} train and "
        f"{result['rows']['test']} test rows ({fmt})",
        highlight=False,
    )
    for path in written.values():
        out().print(f"  {path}", highlight=False)


def _write(folder: Path, split: str, fmt: str, items: list[dict]) -> str:
    import json

    try:
        folder.mkdir(parents=True, exist_ok=True)
        if fmt == "verl":
            import pyarrow as pa
            import pyarrow.parquet as pq

            path = folder / f"{split}.parquet"
            pq.write_table(pa.Table.from_pylist(items), path)
        else:
            path = folder / f"{split}.jsonl"
            path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror}") from None
    return str(path)


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
