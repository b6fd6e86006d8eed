"""The filters of `mdagent runs query` and `query_runs()`: parsed from the words people type, checked, engine-free.

Text: a substring (case-insensitive), or `re:PATTERN` for a regular expression (case-insensitive, searched), matched
by RE2 in time linear in the text: no backreferences or lookaround (Python's `re` can take minutes on one pattern).
Numbers: `0.5..` (at least), `..0.5` (at most), `0.2..0.8` (both ends included), or one value.
Time windows: `7d`, `12h`, `30m`, `2w` (that long ago until now) or a date `2026-11-01` / ISO time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import re2
from pydantic import BaseModel, Field

from mdagent_hpc.errors import MDAgentError

VERDICTS = ("running", "passed", "failed")
KINDS = ("run", "point")
GRADES = ("pass", "warn", "fail")
# What a query can sort on: node columns and the recorded numbers; `obs.NAME`, `param.NAME` too.
SORTS = ("ctime", "pk", "reward", "attempts", "seconds")
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_PATTERN = 500  # characters of a regular expression; RE2's memory for one is bounded by its own max_mem too


class QueryError(MDAgentError, ValueError):
    """A filter that cannot be understood, in one sentence."""


class Text(BaseModel):
    """A substring (case-insensitive) or a regular expression."""

    pattern: str
    regex: bool = False

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.regex:
            return compile_regex(self.pattern, "text").search(value) is not None
        return self.pattern.lower() in value.lower()


@lru_cache(maxsize=256)
def _compiled(pattern: str):
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    return re2.compile(pattern, options)


def compile_regex(pattern: str, what: str):
    """`pattern` compiled by RE2 (case-insensitive), or `QueryError` saying why it cannot be used."""
    if len(pattern) > MAX_PATTERN:
        raise QueryError(f"{what}: a regular expression may have at most {MAX_PATTERN} characters, not {len(pattern)}")
    try:
        return _compiled(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise QueryError(
            f"{what}: {pattern!r} is not a regular expression this search can run in linear time ({reason}; "
            "backreferences and lookaround are not supported)"
        ) from None


def required_literals(pattern: str, shortest: int = 2) -> list[str]:
    """Plain text any match of `pattern` must contain ("Cu.?Ni" -> ["Cu", "Ni"]): what a database can look for
    before the regular expression itself is tried. [] when nothing is certain (alternatives at the top, ...)."""
    from re import _constants as c
    from re import _parser

    try:  # parsed, never matched: Python's parser only names the literals; RE2 does the matching
        parsed = _parser.parse(pattern)
    except (re.error, RecursionError, OverflowError):  # RE2 syntax Python does not read (\pL, \Q..\E, ...)
        return []
    literals, run = [], ""
    for op, value in parsed:
        if op is c.LITERAL:
            run += chr(value)
            continue
        if op is c.BRANCH:
            return []
        literals.append(run)
        run = ""
    literals.append(run)
    return [text for text in literals if len(text) >= shortest]


class Range(BaseModel):
    """Both ends included; None: open."""

    low: float | None = None
    high: float | None = None

    def matches(self, value: float | None) -> bool:
        if value is None:
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


class Query(BaseModel):
    """Which runs, in which order, how many. Every field None or empty: all runs, newest first."""

    task: Text | None = None
    elements: list[str] = Field(default_factory=list, description="runs with all of these elements")
    pair_style: str | None = None
    potential: Text | None = Field(None, description="a potential file name")
    md5: str | None = Field(None, description="a potential file's md5")
    units: str | None = None
    ensemble: str | None = Field(None, description="nve, nvt, npt, langevin, minimize, ...")
    site: str | None = None
    model: Text | None = None
    user: str | None = None
    kind: str | None = Field(None, description="run (an agent run) or point (a sweep point)")
    verdict: str | None = None
    grade: str | None = None
    reward: Range | None = None
    attempts: Range | None = None
    stop: str | None = Field(None, description="passed, max_attempts, stuck, no_valid_script, llm_unavailable, ...")
    fault: str | None = Field(None, description="a job fault in any attempt: walltime, node_failure, ...")
    finding: str | None = Field(None, description="an evaluation rule that warned or failed, e.g. lost_atoms")
    seconds: Range | None = Field(None, description="the run's duration")
    sweep: str | None = Field(None, description="the sweep's pk or label")
    params: dict[str, Range | str] = Field(default_factory=dict, description="sweep parameter values")
    obs: dict[str, Range] = Field(default_factory=dict, description="observables, e.g. temp_final")
    since: datetime | None = None
    until: datetime | None = None
    sort: str = "-ctime"
    limit: int = Field(50, ge=1, le=100_000)

    @property
    def sort_key(self) -> tuple[str, bool]:
        """(field, descending)."""
        return self.sort.lstrip("-+"), self.sort.startswith("-")


def parse_text(value: str, what: str) -> Text:
    if value.startswith("re:"):
        pattern = value[3:]
        compile_regex(pattern, what)
        return Text(pattern=pattern, regex=True)
    if not value:
        raise QueryError(f"{what}: give some text (or re:PATTERN)")
    return Text(pattern=value)


def parse_number(value: str, what: str) -> float:
    text = value.strip()
    match = _SPAN.fullmatch(text) if what in ("seconds", "duration") else None
    if match:
        return float(match[1]) * _SECONDS[match[2]]
    try:
        return float(text)
    except ValueError:
        raise QueryError(f"{what}: {value!r} is not a number (write e.g. 0.5, 0.5.., ..0.5 or 0.2..0.8)") from None


def parse_range(value: str | float | int | tuple | Range, what: str) -> Range:
    """`0.5..`, `..0.5`, `0.2..0.8` or one value; a (low, high) tuple or a number from Python."""
    if isinstance(value, Range):
        return value
    if isinstance(value, bool):
        raise QueryError(f"{what}: {value!r} is not a number or a range")
    if isinstance(value, int | float):
        return Range(low=float(value), high=float(value))
    if isinstance(value, tuple | list) and len(value) == 2:
        low, high = value
        return _checked(
            Range(low=None if low is None else float(low), high=None if high is None else float(high)), what
        )
    if not isinstance(value, str):
        raise QueryError(f"{what}: {value!r} is not a number or a range")
    if ".." not in value:
        number = parse_number(value, what)
        return Range(low=number, high=number)
    low, _, high = value.partition("..")
    if not low.strip() and not high.strip():
        raise QueryError(f"{what}: give at least one end of the range (0.5.., ..0.5 or 0.2..0.8)")
    return _checked(
        Range(
            low=parse_number(low, what) if low.strip() else None,
            high=parse_number(high, what) if high.strip() else None,
        ),
        what,
    )


def _checked(r: Range, what: str) -> Range:
    if r.low is not None and r.high is not None and r.low > r.high:
        raise QueryError(f"{what}: the range starts at {r.low:g}, above its end {r.high:g}")
    return r


def parse_time(value: str | datetime, what: str, now: datetime | None = None) -> datetime:
    """`7d` (that long before now) or a date/time (UTC unless it says otherwise)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    now = now or datetime.now(tz=UTC)
    match = _SPAN.fullmatch(value.strip())
    if match:
        return now - timedelta(seconds=float(match[1]) * _SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise QueryError(
            f"{what}: {value!r} is neither a span like 7d, 12h, 30m, 2w nor a date like 2026-11-01"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_assignments(values, what: str) -> dict[str, str]:
    """`NAME=VALUE` words (or a dict from Python) into a dict."""
    if isinstance(values, dict):
        items = list(values.items())
    else:
        items = []
        for word in [values] if isinstance(values, str) else values:
            name, eq, value = str(word).partition("=")
            if not eq:
                raise QueryError(f"{what}: write NAME=VALUE or NAME=LOW..HIGH, not {word!r}")
            items.append((name.strip(), value.strip()))
    for name, _ in items:
        if not _NAME.fullmatch(str(name)):
            raise QueryError(f"{what}: {name!r} is not a name (letters, digits, _)")
    return dict(items)


def _words(value, what: str) -> list[str]:
    """`Cu,Ni`, `Cu Ni` or a list."""
    words = re.split(r"[\s,]+", value) if isinstance(value, str) else [str(v) for v in value]
    words = [w for w in words if w]
    if not words:
        raise QueryError(f"{what}: give at least one")
    return words


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise QueryError(f"{what} {value!r} is not one of {', '.join(choices)}")
    return value


def build_query(**options) -> Query:
    """A `Query` from the words a user typed (or Python values); unknown or bad filters raise `QueryError`.

    Options with None values are ignored, so a CLI can pass every option it has.
    """
    options = {k: v for k, v in options.items() if v not in (None, (), [], {})}
    unknown = sorted(set(options) - set(Query.model_fields))
    if unknown:
        raise QueryError(f"unknown filter {unknown[0]!r}; the filters are {', '.join(Query.model_fields)}")
    q: dict = {}
    for name in ("task", "potential", "model"):
        if name in options:
            text = options[name]
            if isinstance(text, Text) and text.regex:
                compile_regex(text.pattern, name)
            q[name] = text if isinstance(text, Text) else parse_text(str(text), name)
    for name in ("reward", "attempts", "seconds"):
        if name in options:
            q[name] = parse_range(options[name], name)
    for name in ("pair_style", "md5", "units", "ensemble", "site", "user", "stop", "fault", "finding", "sweep"):
        if name in options:
            q[name] = str(options[name]).strip()
            if not q[name]:
                raise QueryError(f"{name}: give a value")
    if "elements" in options:
        q["elements"] = sorted({_element(e) for e in _words(options["elements"], "elements")})
    if "kind" in options:
        q["kind"] = _choice(options["kind"], KINDS, "kind")
    if "verdict" in options:
        q["verdict"] = _choice(options["verdict"], VERDICTS, "verdict")
    if "grade" in options:
        q["grade"] = _choice(options["grade"], GRADES, "grade")
    if "params" in options:
        q["params"] = {
            name: _param(value, name) for name, value in parse_assignments(options["params"], "param").items()
        }
    if "obs" in options:
        q["obs"] = {
            name: parse_range(value, f"observable {name}")
            for name, value in parse_assignments(options["obs"], "observable").items()
        }
    for name in ("since", "until"):
        if name in options:
            q[name] = parse_time(options[name], name)
    if "sort" in options:
        q["sort"] = _sort(str(options["sort"]))
    if "limit" in options:
        limit = options["limit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise QueryError(f"limit must be a whole number from 1 to 100000, not {limit!r}")
        q["limit"] = limit
    return Query(**q)


def _element(word: str) -> str:
    from mdagent_hpc.lammps.elements import SYMBOL_SET

    symbol = word.strip().capitalize()
    if symbol not in SYMBOL_SET:
        raise QueryError(f"elements: {word!r} is not an element symbol (write Cu, Ni, ...)")
    return symbol


def _param(value, name: str) -> Range | str:
    """A number or range when it reads as one, else a value to match exactly (e.g. a lattice name)."""
    if isinstance(value, int | float | tuple | Range):
        return parse_range(value, f"param {name}")
    try:
        return parse_range(str(value), f"param {name}")
    except QueryError:
        return str(value)


def _sort(value: str) -> str:
    field = value.lstrip("-+")
    prefix, _, name = field.partition(".")
    if field in SORTS or (prefix in ("obs", "param") and _NAME.fullmatch(name or "")):
        return value
    raise QueryError(
        f"sort: {field!r} is not one of {', '.join(SORTS)}, obs.NAME, param.NAME (a leading - sorts descending)"
    )
