"""Recorded runs as training data (docs/bench.md): every attempt of past agent runs, with its prompt messages,
completion, reward and diagnostics, in the layout of verl, TRL, OpenRLHF or plain SFT; read from this machine's
profile."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mdagent_hpc.api.local_only import refuse_through_server
from mdagent_hpc.errors import MDAgentError


def export_trajectories(
    fmt: str,
    folder: str | Path = "trajectories",
    *,
    test_fraction: float = 0.1,
    bench: str | None = None,
    limit: int = 10000,
    status: Callable[[str], contextlib.AbstractContextManager] | None = None,
    track: Callable[[Sequence[int], str], Iterable[int]] | None = None,
    **filters,
) -> dict:
    """Write every attempt of the runs matching `filters` (those of `query_runs`; with `bench`, only that benchmark
    run's) to `folder` as train.* and test.* (verl: Parquet, the others JSONL), deduplicated, with `test_fraction` of
    the tasks held out (by task, never split across). At most `limit` runs, newest first.

    Returns {"format", "runs", "attempts", "rows": {"train", "test"}, "files": {split: path}}. Progress:
    `status(message)` around finding the runs, `track(pks, description)` over reading them.
    """
    from mdagent_hpc.evalbench.export import FORMATS, rows

    if fmt not in FORMATS:
        raise MDAgentError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    refuse_through_server("exporting trajectories", "which exports none")
    from mdagent_hpc.provenance import local_caller
    from mdagent_hpc.provenance.trajectories import steps_of

    with (status or contextlib.nullcontext)("finding the runs ..."):
        pks = _runs(bench, limit, filters)
    steps = []
    for pk in (track or _all)(pks, "reading attempts"):
        steps += steps_of(local_caller(), pk)
    if not steps:
        raise MDAgentError("no attempt matches these filters; `mdagent runs query` with the same filters lists runs")
    data = rows(steps, fmt, test_fraction)
    folder = Path(folder)
    return {
        "format": fmt,
        "runs": len(pks),
        "attempts": len(steps),
        "rows": {split: len(items) for split, items in data.items()},
        "files": {split: _write(folder, split, fmt, items) for split, items in data.items() if items},
    }


def _runs(bench: str | None, limit: int, filters: dict) -> list[int]:
    """The pks of the runs to export, newest first: a benchmark run's finished members, those matching the filters,
    or both."""
    from mdagent_hpc.api import find_runs, index_runs
    from mdagent_hpc.api.local import load_profile

    filters = {k: v for k, v in filters.items() if v not in (None, [], ())}
    members = None
    if bench:
        load_profile()
        from mdagent_hpc.workflows.bench import find_group

        group = find_group(bench)
        members = [
            n.pk
            for n in sorted(group.nodes, key=lambda n: n.ctime, reverse=True)
            if n.base.extras.get("bench", None) and n.is_finished
        ]
    if members is not None and not filters:
        return members[:limit]
    index_runs()  # runs finished before their query fields were recorded: record them, so the filters see them
    pks = [row["pk"] for row in find_runs(**filters, limit=limit)]
    if members is None:
        return pks
    finished = set(members)
    return [pk for pk in pks if pk in finished]


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
        raise MDAgentError(f"cannot write to {folder}: {exc.strerror}") from None
    return str(path)


def _all(pks: Sequence[int], _description: str) -> Iterable[int]:
    return pks
