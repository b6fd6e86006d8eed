"""The runs list's filters: a URL's query string read into the query layer's `Query` (pure: no I/O).

The names are those of `mdagent runs query` (docs/queries.md): task, site, model, verdict, grade, stop, since,
until, elements, potential, ... and `obs.NAME` / `param.NAME` for ranges of observables and sweep parameters.
"""

from __future__ import annotations

from mdagent_hpc.models import Run
from mdagent_hpc.provenance.filters import GRADES, VERDICTS, Query, QueryError, build_query

__all__ = ["GRADES", "VERDICTS", "MAIN", "MORE", "QueryError", "read_filters"]

MAIN = ("task", "site", "model", "verdict", "grade", "stop", "since", "until")  # always on the form
MORE = (
    "elements",
    "potential",
    "pair_style",
    "units",
    "ensemble",
    "reward",
    "attempts",
    "seconds",
    "fault",
    "finding",
    "user",
    "sweep",
    "sort",
)  # under "more filters"
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000  # one page; the query itself allows more


def read_filters(params: list[tuple[str, str]]) -> tuple[Query, dict[str, str]]:
    """The `Query` a runs-list URL asks for, and the non-empty values as given (to fill the form again).

    A bad value raises `QueryError` with one sentence.
    """
    values: dict[str, str] = {}
    for name, value in params:
        if value.strip():
            if name in values:
                raise QueryError(f"the filter {name!r} is given twice; give it once")
            values[name] = value.strip()
    options: dict = {"params": {}, "obs": {}}
    for name, value in values.items():
        prefix, dot, rest = name.partition(".")
        if name not in (*MAIN, *MORE, "md5", "limit") and not (dot and prefix in ("obs", "param")):
            raise QueryError(
                f"unknown filter {name!r}; the filters are {', '.join((*MAIN, *MORE, 'md5', 'limit'))}, "
                "obs.NAME and param.NAME"
            )
        if dot and prefix in ("obs", "param"):
            options["params" if prefix == "param" else "obs"][rest] = value
        elif name != "limit":
            options[name] = value
    options["limit"] = _limit(values.get("limit", str(DEFAULT_LIMIT)))
    return build_query(**options), values


def _limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise QueryError(f"limit {value!r} is not a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def models_of(run: Run) -> list[str]:
    return sorted({a.usage.model for a in run.attempts if a.usage.model})


def grade_of(run: Run) -> str | None:
    """The grade of the passed attempt, else of the last attempt that was evaluated."""
    if run.evaluation is not None:
        return run.evaluation.grade.value
    graded = [a.evaluation for a in run.attempts if a.evaluation is not None]
    return graded[-1].grade.value if graded else None
