"""Provenance queries on AiiDA: record each run's query fields, back-fill old runs, search with QueryBuilder.

The fields (`query.record.index_record`) live in the `query` extra of the run's node (and of each sweep point's);
a QueryBuilder query on the node table answers a search. What QueryBuilder cannot say (a regular expression; a
substring of one of the potential file names) is checked here on the rows the database has already narrowed
down, in the asked order, until `limit` rows match. Every equality filter (site, units, elements, grade, stop
reason, ...) is sent as one JSON containment, which the GIN index of `ensure_indexes` answers on PostgreSQL.
docs/queries.md says why newest-first listings go by time windows and number sorts walk their index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from mdagent_hpc.agent.loop import stop_reason_of
from mdagent_hpc.provenance import (
    AGENT_TYPE,
    POINT_NODE_TYPE,
    POINT_TYPE,
    RECORD,
    SWEEP_TYPE,
    Caller,
    NotFoundError,
    is_point,
    listed,
    owner,
    point_process,
)
from mdagent_hpc.provenance.filters import Query, QueryError, Range, required_literals
from mdagent_hpc.provenance.record import VERSION, final_attempt_with_script, index_record, point_record
from mdagent_hpc.provenance.runs import get_run, read_run, verdict_filter

WINDOW_DAYS = (7, 56)  # newest-first listings look at the last week, then back to 8 weeks, then the rest
BATCH = 5000  # at most this many rows per query while a regular expression is tried on them
SCAN_BUDGET = 100_000  # rows one search reads to try what the database cannot (a regex): a bounded cost per request
# On PostgreSQL, partial indexes over our nodes only: the GIN index answers every equality filter (one JSON
# containment); the btree ones give the newest, best, longest or most-tried runs in order, so a listing stops after
# `limit` rows instead of sorting every match. The predicate is written as the searches write theirs (an OR of
# equalities: AiiDA sends a list as an `unnest` subquery, which no planner can match to an index predicate).
OURS = f"(process_type = '{AGENT_TYPE}' OR process_type = '{POINT_TYPE}' OR node_type = '{POINT_NODE_TYPE}')"
INDEXES = {
    "mdagent_query_fields": f"ON db_dbnode USING gin ((extras #> '{{query}}') jsonb_path_ops) WHERE {OURS}",
    "mdagent_query_ctime": f"ON db_dbnode (ctime, id) WHERE {OURS}",
    "mdagent_query_missing": f"ON db_dbnode (id) WHERE {OURS} AND NOT ((extras #> '{{}}') ? 'query')",  # as QB says it
    # only runs that have the number (a missing one would come first in a descending walk)
    **{
        f"mdagent_query_{name}": f"ON db_dbnode (((extras #>> '{{query,{name}}}')::double precision), id) "
        f"WHERE {OURS} AND (extras #> '{{query,{name}}}') IS NOT NULL"
        for name in ("reward", "seconds", "attempts")
    },
}


# -- recording --------------------------------------------------------------------------------------------------
STOP_REASON = "stop_reason"  # the extra an agent run records when it ends (AgentWorkChain.on_terminated)


def stop_reason(node) -> str:
    """passed, killed, excepted, running, or the name of the exit code the run stopped with (max_attempts, ...)."""
    if node.is_finished_ok:
        return "passed"
    if node.is_killed or node.is_excepted:
        return node.process_state.value
    if node.exit_status is None:
        return "running"
    recorded = node.base.extras.get(STOP_REASON, None)
    return recorded or stop_reason_of(node.exit_status) or f"exit_{node.exit_status}"


def record_fields(node) -> dict:
    """The query fields of a terminated agent run (see `query.record`)."""
    from aiida import orm

    from mdagent_hpc.llm.prompts import task_elements
    from mdagent_hpc.models import PreflightReport

    run = read_run(node)
    final = final_attempt_with_script(run)
    potentials = []
    if final is not None and "preflight" in final.nodes:
        check = orm.load_node(final.nodes["preflight"])
        if "result" in check.outputs:
            potentials = PreflightReport(**check.outputs.result.get_dict()).potentials
    elements = sorted({e for p in potentials for e in p.elements}) or task_elements(run.task)
    caller = node.caller  # a sweep validates its template with agent runs at probe points
    sweep = (
        {"pk": caller.pk, "label": caller.label or None}
        if caller is not None and caller.process_type == SWEEP_TYPE
        else None
    )
    params = node.inputs.variables.get_dict() if "variables" in node.inputs else None
    return index_record(
        run, potentials, user=owner(node), stop=stop_reason(node), elements=elements, sweep=sweep, params=params
    )


def point_fields(node, sweep=None, spec: dict | None = None, template: str | None = None) -> dict:
    """The query fields of a sweep point (a SweepPoint, or an old point's `record_point` node, under its
    SweepWorkChain). The running sweep gives what it already holds (itself, its spec, its template's text), saving
    three reads a point."""
    process = point_process(node) if sweep is None or template is None else None  # a read the sweep saves
    sweep = process.caller if sweep is None else sweep
    if spec is None:
        spec = sweep.inputs.sweep.get_dict() if sweep is not None and "sweep" in sweep.inputs else {}
    site = sweep.base.extras.get("site", None) if sweep is not None else None
    if node.node_type == POINT_NODE_TYPE:
        result = node.get_dict()
    else:
        result = (
            node.outputs.result.get_dict() if "result" in node.outputs else {"ok": False, "problems": ["no record"]}
        )
    return point_record(
        result,
        task=spec.get("task", ""),
        template=process.inputs.template.get_content() if template is None else template,
        sweep={"pk": sweep.pk, "label": sweep.label or None} if sweep is not None else None,
        site=site,
        model=spec.get("model"),
        user=owner(node),
        seconds=None,
    )


def record_run(node, **known) -> dict:
    """Record (or record again) the query fields on a terminated agent run or a sweep point (`known`: what its sweep
    holds, see `point_fields`); returns them."""
    fields = point_fields(node, **known) if is_point(node) else record_fields(node)
    node.base.extras.set(RECORD, fields)
    return fields


def to_index(redo: bool = False) -> list[int]:
    """Pks of the terminated runs whose fields are missing or older than this version (every one with `redo`)."""
    from aiida import orm

    parts = [listed(), _terminated()]
    if not redo:
        parts.append({"or": [{"extras": {"!has_key": RECORD}}, {f"extras.{RECORD}.version": {"<": VERSION}}]})
    qb = orm.QueryBuilder().append(orm.Node, filters={"and": parts}, project=["id"]).order_by({orm.Node: "id"})
    return [pk for (pk,) in qb.all()]


def index_runs(redo: bool = False, progress: Callable[[int, int], None] | None = None) -> tuple[int, list[str]]:
    """Back-fill: record the fields of runs without them. Returns (runs recorded, problems: 'pk: why')."""
    from aiida import orm

    pks, problems, done = to_index(redo), [], 0
    for i, pk in enumerate(pks, 1):
        try:
            record_run(orm.load_node(pk))
            done += 1
        except Exception as exc:  # noqa: BLE001 (one unreadable run must not stop the back-fill; each is reported)
            problems.append(f"{pk}: {type(exc).__name__}: {exc}")
        if progress:
            progress(i, len(pks))
    return done, problems


def count_unindexed() -> int:
    """Terminated runs without recorded fields (on PostgreSQL, `mdagent_query_missing` makes this a lookup)."""
    from aiida import orm

    filters = {"and": [listed(), {"extras": {"!has_key": RECORD}}, _terminated()]}
    return orm.QueryBuilder().append(orm.Node, filters=filters).count()


def _terminated() -> dict:
    """A run that ended (a sweep point is recorded when its job has ended)."""
    return {
        "or": [
            {"attributes.process_state": {"in": ["finished", "excepted", "killed"]}},
            {"node_type": {"==": POINT_NODE_TYPE}},
        ]
    }


def ensure_indexes() -> list[str]:
    """On a PostgreSQL profile, the indexes queries use (made once; IF NOT EXISTS; one made before sweep points were
    SweepPoints is made again, its predicate lacking them); [] on SQLite."""
    from aiida.manage import get_manager
    from sqlalchemy import text

    storage = get_manager().get_profile_storage()
    if "psql" not in type(storage).__module__:
        return []
    session = storage.get_session()
    for name, definition in INDEXES.items():
        made = session.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"), {"name": name})
        before = made.scalar()
        if before is not None and POINT_NODE_TYPE not in before:
            session.execute(text(f"DROP INDEX {name}"))
        session.execute(text(f"CREATE INDEX IF NOT EXISTS {name} {definition}"))
    session.commit()
    return list(INDEXES)


# -- searching --------------------------------------------------------------------------------------------------
def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _range(r: Range) -> dict:
    parts = ([{">=": r.low}] if r.low is not None else []) + ([{"<=": r.high}] if r.high is not None else [])
    return parts[0] if len(parts) == 1 else {"and": parts}


def _filters(query: Query) -> dict:
    """QueryBuilder filters on the run node for everything the database can answer."""
    key = f"extras.{RECORD}"
    filters: dict = listed(query.kind)
    if query.verdict == "running":
        filters.update(verdict_filter("running"))
    if query.since or query.until:
        filters["ctime"] = {
            "and": ([{">=": query.since}] if query.since else []) + ([{"<=": query.until}] if query.until else [])
        }
    same: dict = {}  # one JSON containment for every equality (the GIN index on PostgreSQL answers it)
    for name, field in (
        ("units", "units"),
        ("site", "site"),
        ("user", "user"),
        ("grade", "grade"),
        ("stop", "stop"),
        ("kind", "kind"),
    ):
        if getattr(query, name) is not None:
            same[field] = getattr(query, name)
    for name, field in (
        ("pair_style", "pair_styles"),
        ("md5", "md5"),
        ("ensemble", "ensembles"),
        ("fault", "faults"),
        ("finding", "findings"),
    ):
        if getattr(query, name) is not None:
            same[field] = [getattr(query, name)]
    if query.elements:
        same["elements"] = list(query.elements)
    if query.verdict in ("passed", "failed"):  # a sweep point's verdict is its record's, not its process state
        same["verdict"] = query.verdict
    if query.sweep is not None:
        same["sweep"] = {"pk": int(query.sweep)} if query.sweep.isdigit() else {"label": query.sweep}
    exact_params = {k: v for k, v in query.params.items() if isinstance(v, str)}
    if exact_params:
        same["params"] = exact_params
    if same:
        filters[key] = {"contains": same}
    for name in ("task", "model"):
        text = getattr(query, name)
        if text is None:
            continue
        # a regular expression is tried on the rows; the plain text every match must contain narrows them first
        words = required_literals(text.pattern) if text.regex else [text.pattern]
        likes = [{"ilike": f"%{_escape_like(word)}%"} for word in words]
        if likes:
            filters[f"{key}.{name}"] = likes[0] if len(likes) == 1 else {"and": likes}
    for name in ("reward", "attempts", "seconds"):
        if getattr(query, name) is not None:
            filters[f"{key}.{name}"] = _range(getattr(query, name))
    for name, r in query.params.items():
        if isinstance(r, Range):
            filters[f"{key}.params.{name}"] = _range(r)
    for name, r in query.obs.items():
        filters[f"{key}.obs.{name}"] = _range(r)
    field, _ = query.sort_key
    if field not in ("ctime", "pk"):  # a run without the number cannot be placed: only runs with one
        path, number = _path(field), {"of_type": "number"}
        filters[path] = {"and": [filters[path], number]} if path in filters else number
    return filters


def _path(field: str) -> str:
    """A sort field (reward, obs.temp_final, param.T) as a path in the node's extras."""
    prefix, _, name = field.partition(".")
    return f"extras.{RECORD}.params.{name}" if prefix == "param" else f"extras.{RECORD}.{field}"


def _order(query: Query) -> dict:
    field, descending = query.sort_key
    order = "desc" if descending else "asc"
    if field == "ctime":
        return {"ctime": order}
    if field == "pk":
        return {"id": order}
    return {_path(field): {"order": order, "cast": "f"}}


def _python_checks(query: Query) -> list[Callable[[dict], bool]]:
    """What QueryBuilder cannot say, checked on a row's recorded fields."""
    checks = []
    for name in ("task", "model"):
        text = getattr(query, name)
        if text is not None and text.regex:
            checks.append(lambda rec, name=name, text=text: text.matches(rec.get(name)))
    if query.potential is not None:
        checks.append(lambda rec: any(query.potential.matches(p) for p in rec.get("potentials") or []))
    return checks


PROJECT = [
    "id",
    "uuid",
    "ctime",
    "attributes.process_state",
    "attributes.exit_status",
    "node_type",
    "extras",  # one projection: each JSON path projected costs QueryBuilder milliseconds to build
]


def search(query: Query, caller: Caller) -> list[dict]:
    """The runs `caller` may read that match `query`, in its order, at most `query.limit`: one dict per run (see
    `row`). Whose a run is: its node's user (every node of a run carries it, `workflows.owned`), so a run not
    recorded yet is found too."""
    from aiida import orm

    owner_id = None
    if not caller.everyone:
        owner_id = orm.QueryBuilder().append(orm.User, filters={"email": caller.email}, project=["id"]).first(flat=True)
        if owner_id is None:
            return []
    found: dict[int, dict] = {}
    for window in _windows(query):
        for r in _search(window.model_copy(update={"limit": query.limit - len(found)}), owner_id):
            found.setdefault(r["pk"], r)
        if len(found) >= query.limit:
            break
    return list(found.values())


def _windows(query: Query, now: datetime | None = None) -> list[Query]:
    """Newest first: the last week, the weeks before it back to 8 weeks, then the rest; else the query itself.

    A database cannot know how many runs a filter keeps, so it sorts every match before it takes the newest; in
    a window it sorts only that window's. Most listings are filled from the first window; a rare match costs
    three queries.
    """
    if query.sort != "-ctime":
        return [query]
    now = query.until or now or datetime.now(tz=UTC)
    windows, upper = [], query.until
    for days in WINDOW_DAYS:
        edge = now - timedelta(days=days)
        if query.since is not None and edge <= query.since:
            break
        windows.append(query.model_copy(update={"since": edge, "until": upper}))
        upper = edge
    return [*windows, query.model_copy(update={"until": upper})]


@contextmanager
def _in_index_order(query: Query):
    """Sorting by a recorded number that has an index (reward, seconds, attempts), on PostgreSQL: walk that index
    in order and stop at `limit` rows. The planner cannot estimate how many rows the JSON filters keep and would
    otherwise fetch every match to sort it; so, for this query only, sorting is made its last resort (SET LOCAL
    ends with the transaction)."""
    from aiida.manage import get_manager
    from sqlalchemy import text

    storage = get_manager().get_profile_storage()
    if f"mdagent_query_{query.sort_key[0]}" not in INDEXES or "psql" not in type(storage).__module__:
        yield
        return
    with storage.transaction() as session:
        session.execute(text("SET LOCAL enable_sort = off"))  # only the index gives that order without a sort
        session.execute(text("SET LOCAL jit = off"))  # compiling costs more than the few rows it reads
        yield


def _search(query: Query, owner_id: int | None) -> list[dict]:
    with _in_index_order(query):
        return _search_here(query, owner_id)


def _search_here(query: Query, owner_id: int | None) -> list[dict]:
    from aiida import orm

    filters = _filters(query) | ({"user_id": owner_id} if owner_id is not None else {})
    qb = orm.QueryBuilder().append(orm.Node, tag="run", filters=filters, project=PROJECT)
    qb.order_by({"run": [_order(query), {"id": "desc"}]})
    checks = _python_checks(query)
    if not checks:
        return [row(values) for values in qb.limit(query.limit).all()]
    found = []  # read on, in the asked order, until `limit` rows pass the checks (or the scan budget is spent)
    for read, values in enumerate(_batches(qb, first=4 * query.limit)):
        if read == SCAN_BUDGET:
            raise QueryError(
                f"the pattern was tried on {SCAN_BUDGET:,} runs and found {len(found)} of the {query.limit} asked for; "
                "narrow the search first (since/until, site, user, or a plain word instead of re:)"
            )
        record = (values[-1] or {}).get(RECORD) or {}
        if all(check(record) for check in checks):
            found.append(row(values))
            if len(found) == query.limit:
                break
    return found


def _batches(qb, first: int) -> Iterator[list]:
    """The rows of `qb` in growing batches: a common match is found in the first, a rare one costs few queries."""
    offset, size = 0, first
    while True:
        chunk = qb.offset(offset).limit(size).all()
        yield from chunk
        if len(chunk) < size:
            return
        offset += size
        size = min(2 * size, BATCH)


ROW_FIELDS = (
    "pk",
    "kind",
    "uuid",
    "ctime",
    "verdict",
    "task",
    "site",
    "model",
    "user",
    "grade",
    "reward",
    "attempts",
    "stop",
    "seconds",
    "elements",
    "pair_styles",
    "potentials",
    "md5",
    "units",
    "ensembles",
    "faults",
    "findings",
    "sweep",
    "params",
    "obs",
    "point",
    "indexed",
)


def row(values) -> dict:
    """One result row: the node's columns and its recorded fields (None where a run has not been recorded yet)."""
    pk, uuid, ctime, state, exit_status, node_type, extras = values
    extras = extras or {}
    record = extras.get(RECORD) or {}
    task, site, attempts = extras.get("task"), extras.get("site"), extras.get("attempts")
    point = node_type == POINT_NODE_TYPE
    verdict = record.get("verdict") or (
        "unrecorded"  # a point's verdict is in its query fields, which `mdagent runs index` records
        if point
        else "passed"
        if state == "finished" and exit_status == 0
        else "failed"
        if state in ("finished", "excepted", "killed")
        else "running"
    )
    data = {name: record.get(name) for name in ROW_FIELDS}
    data.update(
        pk=pk,
        uuid=uuid,
        ctime=ctime.isoformat(timespec="seconds"),
        verdict=verdict,
        kind=record.get("kind", "point" if point else "run"),
        task=record.get("task", task),
        site=record.get("site", site),
        attempts=record.get("attempts", attempts),
        indexed=bool(record),
    )
    for name in ("elements", "pair_styles", "potentials", "md5", "ensembles", "faults", "findings"):
        data[name] = data[name] or []
    data["params"], data["obs"] = data["params"] or {}, data["obs"] or {}
    return data


# -- one run against another; its thermo -----------------------------------------------------------------------
class NoSuchRunError(ValueError):
    """A pk or attempt that does not exist, in one sentence."""


def _run_and_attempt(caller: Caller, spec: str | int, *, with_log: bool = False):
    """(run, attempt) for 'PK' (the passed attempt, else the last that got as far) or 'PK:N'."""
    from mdagent_hpc.provenance.diff import parse_spec

    pk, number = parse_spec(spec)
    try:
        run = get_run(caller, pk)
    except NotFoundError:
        raise NoSuchRunError(f"no node with pk {pk}; `mdagent runs query` lists the runs") from None
    if number is not None:
        attempt = next((a for a in run.attempts if a.number == number), None)
        if attempt is None:
            raise NoSuchRunError(f"run {pk} has {len(run.attempts)} attempt(s); there is no attempt {number}")
        return run, attempt
    if with_log:
        attempt = next((a for a in run.attempts if a.passed), None) or next(
            (a for a in reversed(run.attempts) if "run" in a.nodes), None
        )
    else:
        attempt = final_attempt_with_script(run) or (run.attempts[-1] if run.attempts else None)
    if attempt is None:
        raise NoSuchRunError(f"run {pk} has no attempt {'that ran LAMMPS ' if with_log else ''}yet")
    return run, attempt


def side(caller: Caller, spec: str | int):
    """A run (its final attempt) or one attempt, as `query.diff.Side`: script, settings, observables."""
    from aiida import orm

    from mdagent_hpc.provenance.diff import Side, flatten

    run, attempt = _run_and_attempt(caller, spec)
    node = orm.load_node(run.pk)
    inputs = {
        name: node.inputs[name].get_dict()
        for name in ("llm", "loop", "limits", "site", "options")
        if name in node.inputs
    }
    if "generate" in attempt.nodes:  # the settings this attempt was generated with (temperature rises when stuck)
        generation = orm.load_node(attempt.nodes["generate"])
        if "settings" in generation.inputs:
            inputs["llm"] = generation.inputs.settings.get_dict()
    settings = flatten(inputs) | {"attempt.model": attempt.usage.model, "attempt.stage": attempt.stage.value}
    evaluation = attempt.evaluation
    return Side(
        label=f"run {run.pk} attempt {attempt.number}",
        script=attempt.script,
        settings=settings,
        observables=evaluation.observables if evaluation else {},
        grade=evaluation.grade.value if evaluation else None,
        reward=evaluation.reward if evaluation else None,
    )


def diff(caller: Caller, spec_a: str | int, spec_b: str | int) -> dict:
    from mdagent_hpc.provenance.diff import diff_sides

    return diff_sides(side(caller, spec_a), side(caller, spec_b))


def attempt_log(caller: Caller, spec: str | int):
    """(title, LammpsLog) of the LAMMPS run of a run's passed (else last run) attempt, or of attempt N."""
    from aiida import orm

    from mdagent_hpc.lammps.log import parse_log
    from mdagent_hpc.lammps.run_folder import LOG

    run, attempt = _run_and_attempt(caller, spec, with_log=True)
    if "run" not in attempt.nodes:
        raise NoSuchRunError(
            f"attempt {attempt.number} of run {run.pk} stopped at {attempt.stage.value}: "
            "LAMMPS never ran, there is no thermo output"
        )
    job = orm.load_node(attempt.nodes["run"])
    if "retrieved" not in job.outputs or LOG not in job.outputs.retrieved.base.repository.list_object_names():
        raise NoSuchRunError(f"attempt {attempt.number} of run {run.pk}: the job left no {LOG}")
    text = job.outputs.retrieved.base.repository.get_object_content(LOG, mode="r")
    task = run.task if len(run.task) <= 70 else run.task[:69] + "…"
    return f"run {run.pk} attempt {attempt.number}: {task}", parse_log(text)
