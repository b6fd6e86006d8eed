"""Provenance queries (issue 12): the filters, the recorded fields, `runs query|diff|index`, `plot`, the API.

The filters and records are pure and tested directly. The rest runs on real runs (real AiiDA, real LAMMPS under
bubblewrap, the replay server as the model) made once per back end, each in its own AiiDA configuration: SQLite,
and PostgreSQL at 127.0.0.1:5432 in a database made for this module and dropped at its end. A run that passed
after three attempts, one that failed evaluation (lost atoms), one stuck on a missing potential file, one whose
model endpoint was down (the infrastructure fault a run meets here; job faults need a scheduler: their recording
is tested on the record), and a two-point sweep (its validating agent run and its two points).
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mdagent_hpc.provenance.diff import Side, diff_sides, parse_spec
from mdagent_hpc.provenance.filters import QueryError, Range, build_query, parse_range, parse_time
from mdagent_hpc.provenance.record import index_record, script_fields

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "mdagent_hpc" / "examples" / "demo"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


# -- pure: filters, records, diffs -------------------------------------------------------------------------------
def test_ranges_text_times_and_sorts_parse_as_typed():
    q = build_query(
        task="re:^Heat .*NVT",
        reward="0.5..",
        attempts="..2",
        seconds="1m..2h",
        elements="cu, Ni",
        obs=["temp_final=700..900"],
        params={"T": "1200..", "lattice": "fcc"},
        since="7d",
        sort="-obs.temp_final",
        limit=5,
    )
    assert q.task.regex and q.task.matches("heat a Cu crystal in NVT") and not q.task.matches("Melt it")
    assert q.reward == Range(low=0.5) and q.attempts == Range(high=2) and q.seconds == Range(low=60, high=7200)
    assert q.elements == ["Cu", "Ni"] and q.obs["temp_final"] == Range(low=700, high=900)
    assert q.params == {"T": Range(low=1200), "lattice": "fcc"} and q.sort_key == ("obs.temp_final", True)
    assert parse_range(0.7, "reward") == Range(low=0.7, high=0.7) and parse_range((None, 3), "x") == Range(high=3)
    assert parse_time("2d", "since", now=parse_time("2026-11-03", "x")) == parse_time("2026-11-01", "x")
    assert build_query().sort == "-ctime" and build_query(verdict=None, task=None).limit == 50


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"reward": "high"}, "reward: 'high' is not a number"),
        ({"reward": "0.9..0.1"}, "above its end"),
        ({"reward": ".."}, "at least one end"),
        ({"task": "re:(unclosed"}, "is not a regular expression"),
        ({"since": "last week"}, "neither a span like 7d"),
        ({"elements": "Cu Xx"}, "'Xx' is not an element symbol"),
        ({"verdict": "ok"}, "verdict 'ok' is not one of running, passed, failed"),
        ({"obs": ["temp_final>1200"]}, "write NAME=VALUE"),
        ({"sort": "colour"}, "sort: 'colour' is not one of"),
        ({"limit": 0}, "limit must be a whole number"),
        ({"colour": "red"}, "unknown filter 'colour'"),
    ],
)
def test_a_bad_filter_is_one_sentence(options, says):
    with pytest.raises(QueryError) as caught:
        build_query(**options)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_regular_expression_costs_linear_time():
    # Python's `re` backtracks: on 40 `a`s and a `!` this pattern takes minutes (x1.6 per extra `a`), holding the GIL
    q = build_query(task="re:(a|aa)+$")
    assert not q.task.matches("Heat it " + "a" * 60 + "!")
    assert q.task.matches("Heat it " + "a" * 60) and build_query(task="re:HEAT").task.matches("heat")


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        (r"(Cu)\1", "backreferences"),
        ("(?=Cu)Cu", "lookaround"),
        ("(?<!Ni)Cu", "lookaround"),
        ("x" * 2000, "at most"),
    ],
)
def test_a_pattern_without_a_linear_time_match_is_refused(pattern, says):
    from mdagent_hpc.provenance.filters import Text

    for task in (f"re:{pattern}", Text(pattern=pattern, regex=True)):  # typed, or built in Python
        with pytest.raises(QueryError) as caught:
            build_query(task=task)
        assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_record_of_a_run_names_its_final_script_evaluation_and_faults():
    from mdagent_hpc.models import Attempt, Evaluation, Finding, Job, PotentialUse, Run, Usage

    lost = Evaluation(
        grade="fail",
        reward=0.2,
        findings=[Finding(rule="lost_atoms", severity="error", message="x")],
        observables={"temp_final": 90.0, "press_final": float("nan")},
    )
    run = Run(
        pk=1,
        uuid="u",
        task="Heat Cu",
        ctime="2026-11-30T00:00:00",
        verdict="failed",
        seconds=12.5,
        attempts=[
            Attempt(
                number=1,
                stage="run",
                script="units metal\n",
                job=Job(fault="walltime", action="restart"),
                usage=Usage(model="m1"),
            ),
            Attempt(
                number=2,
                stage="evaluate",
                evaluation=lost,
                usage=Usage(model="m2"),
                script=(DEMO / "wrong-potential.lammps").read_text(),
            ),
        ],
    )
    record = index_record(
        run,
        [PotentialUse(name="Cu_u3.eam", pair_style="eam", elements=["Cu"], md5="abc")],
        user="me@x",
        stop="max_attempts",
        elements=["Cu"],
    )
    assert record["faults"] == ["walltime"] and record["findings"] == ["lost_atoms"] and record["model"] == "m2"
    assert record["grade"] == "fail" and record["reward"] == 0.2 and record["obs"] == {"temp_final": 90.0}
    assert (record["pair_styles"], record["units"], record["ensembles"]) == (["eam"], "metal", ["nvt"])
    assert record["potentials"] == ["Cu_u3.eam"] and record["md5"] == ["abc"] and record["attempts"] == 2
    assert len(json.dumps(record)) < 2000  # stays in PostgreSQL's row, uncompressed
    hybrid = script_fields("units real\npair_style hybrid lj/cut 10.0 tersoff\nfix 1 all npt temp 1 1 1 iso 1 1 1\n")
    assert hybrid == {"pair_styles": ["lj/cut", "tersoff"], "units": "real", "ensembles": ["npt"]}


def test_diff_of_two_sides_and_run_specs():
    a = Side(
        label="A",
        script="units lj\nrun 10\n",
        settings={"llm.temperature": 0.2, "loop.max_attempts": 3},
        observables={"temp_final": 1.0, "atoms": 256},
    )
    b = Side(
        label="B",
        script="units lj\nrun 20\n",
        settings={"llm.temperature": 0.5, "loop.max_attempts": 3},
        observables={"temp_final": 1.5},
    )
    result = diff_sides(a, b)
    assert "-run 10" in result["script_diff"] and "+run 20" in result["script_diff"] and not result["same_script"]
    assert result["settings"] == [["llm.temperature", 0.2, 0.5]] and result["same_settings"] == 1
    assert result["observables"] == [["atoms", 256, None, None], ["temp_final", 1.0, 1.5, 0.5]]
    assert parse_spec("42") == (42, None) and parse_spec("42:2") == (42, 2)
    for bad in ("x", "42:", "42:0", "-1"):
        with pytest.raises(ValueError, match="pk"):
            parse_spec(bad)


def test_plot_draws_every_segment_of_a_real_log(tmp_path):
    from mdagent_hpc.lammps.log import read_log
    from mdagent_hpc.provenance.plot import plot_thermo, quantities

    log = read_log(REPO / "tests" / "data" / "log.27Nov18.min.g++.1")
    out = plot_thermo(log, tmp_path / "min.png", "min example")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "Step" not in quantities(log) and quantities(log)
    with pytest.raises(ValueError, match="no thermo output"):
        plot_thermo(type(log)(), tmp_path / "none.png", "empty")


RESET_SCRIPT = """units lj
atom_style atomic
lattice fcc 0.8442
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
displace_atoms all random 0.05 0.05 0.05 1234
thermo 10
minimize 1e-4 1e-6 50 500
reset_timestep 0
velocity all create 1.0 87287
fix 1 all nve
run 100
reset_timestep 0
run 60
"""


def test_segments_after_reset_timestep_follow_each_other_on_the_step_axis(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from mdagent_hpc.lammps.log import read_log
    from mdagent_hpc.provenance.plot import plot_thermo

    (tmp_path / "in.reset").write_text(RESET_SCRIPT)
    lmp = str(Path(sys.executable).parent / "lmp")
    subprocess.run(
        [lmp, "-in", "in.reset", "-log", "log.reset", "-screen", "none"], cwd=tmp_path, check=True, timeout=120
    )
    log = read_log(tmp_path / "log.reset")
    minimized = log.blocks[0].column("Step")[-1]
    assert [b.column("Step")[0] for b in log.blocks] == [0, 0, 0]  # each segment starts again at step 0
    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self) or original(self, *a, **k))
    plot_thermo(log, tmp_path / "thermo.png", "minimize, then two runs after reset_timestep")
    ax = figures[-1].axes[0]
    starts_ends = [(line.get_xdata()[0], line.get_xdata()[-1]) for line in ax.get_lines()]
    assert starts_ends == [(0, minimized), (minimized, minimized + 100), (minimized + 100, minimized + 160)]
    assert {a.get_xlabel() for a in figures[-1].axes if a.get_visible()} - {""} == {"Step (cumulative over segments)"}


# -- real runs on both back ends ---------------------------------------------------------------------------------
def fenced(name: str) -> str:
    return f"```lammps\n{(DEMO / name).read_text()}```"


# One process makes the runs (saves interpreter and AiiDA start-ups) and a two-point sweep (an agent run validating
# the template at T=0.6, then both points recorded); `index_runs` records the points; it prints the pks.
MAKE_RUNS = """
import json, os, sys
from mdagent_hpc import api
from mdagent_hpc.models import LoopPolicy, Request

good, lost, wrong, sweep_file = json.loads(sys.argv[1])
pks = {}
pks["passed"] = api.run(Request(task="Heat a small Cu crystal with EAM to 800 K in NVT and report its temperature",
                                loop=LoopPolicy(max_attempts=3), answers=[wrong, lost, good])).pk
pks["failed"] = api.run(Request(task="Melt a small Lennard-Jones crystal and report the final temperature",
                                loop=LoopPolicy(max_attempts=1), answers=[lost])).pk
pks["stuck"] = api.run(Request(task="Heat copper with EAM to 800 K in NVT and report its temperature",
                               loop=LoopPolicy(max_attempts=4, stuck_limit=2), answers=[wrong, wrong])).pk
spec = api.load_sweep_spec(sweep_file)
T = spec.parameters[0].model_copy(update={"values": [0.6, 1.2], "start": None, "stop": None, "step": None})
sweep = api.sweep(spec.model_copy(update={"parameters": [T]}))
assert sweep.verdict == "passed", sweep
from aiida import orm
from mdagent_hpc.provenance.sweeps import recorded_points
pks["sweep"] = sweep.pk
for child in orm.load_node(sweep.pk).called:
    if child.process_type == "aiida.workflows:mdagent.agent":
        pks["probe"] = child.pk
for record in recorded_points(orm.load_node(sweep.pk)):
    pks[f"T{record['vars']['T']}"] = record.pk
os.environ.update(MDAGENT_LLM_BASE_URL="http://127.0.0.1:9/v1", MDAGENT_LLM_MODEL="down", MDAGENT_LLM_MAX_RETRIES="0")
pks["down"] = api.run("Melt bulk aluminium with EAM at 1500 K and report the final temperature").pk
api.index_runs()
print(json.dumps(pks))
"""

RUNS = {"passed", "failed", "stuck", "down", "probe"}
POINTS = {"T0.6", "T1.2"}
LJ = {"failed", "probe"} | POINTS
# Each query as the API takes it ("SWEEP": the sweep's pk), and the runs and points it must return.
QUERIES = [
    ({}, RUNS | POINTS),
    ({"verdict": "passed"}, {"passed", "probe"} | POINTS),
    ({"verdict": "failed"}, {"failed", "stuck", "down"}),
    ({"stop": "stuck"}, {"stuck"}),
    ({"stop": "max_attempts"}, {"failed"}),
    ({"stop": "llm_unavailable"}, {"down"}),
    ({"elements": "Cu"}, {"passed", "stuck"}),
    ({"elements": ["Al"]}, {"down"}),
    ({"elements": "Cu,Ni"}, set()),
    ({"pair_style": "eam"}, {"passed", "stuck"}),
    ({"pair_style": "lj/cut"}, LJ),
    ({"units": "lj"}, LJ),
    ({"ensemble": "nvt", "units": "metal"}, {"passed", "stuck"}),
    ({"potential": "u3"}, {"passed", "stuck"}),
    ({"potential": r"re:^Cu_u3\.eam$"}, {"passed"}),
    ({"potential": "typo"}, {"stuck"}),
    ({"grade": "pass", "units": "metal"}, {"passed"}),
    ({"reward": "0.95.."}, {"passed"}),
    ({"reward": "..0.5"}, {"failed"}),
    ({"attempts": "2.."}, {"passed", "stuck"}),
    ({"finding": "lost_atoms"}, {"failed"}),
    ({"task": "COPPER"}, {"stuck"}),
    ({"task": "re:^(Heat|Melt) (a|bulk)"}, {"passed", "failed", "down"}),
    ({"task": "100%_"}, set()),  # LIKE's wildcards are text here
    ({"model": "replay"}, {"passed", "failed", "stuck", "probe"}),
    ({"obs": {"temp_final": "700..900"}}, {"passed"}),
    ({"obs": {"temp_final": "..700"}}, {"failed", "probe"}),
    ({"site": "local", "user": "mdagent@localhost", "seconds": "..900"}, RUNS | POINTS),
    ({"since": "1h", "kind": "run"}, RUNS),
    ({"until": "2000-01-01"}, set()),
    ({"kind": "point"}, POINTS),
    ({"sweep": "SWEEP"}, {"probe"} | POINTS),
    ({"params": {"T": "1.0.."}}, {"T1.2"}),
    ({"params": {"T": 0.6}}, {"probe", "T0.6"}),
    ({"kind": "point", "obs": {"pe": "..-5.5"}}, {"T0.6"}),
]
ORDERED = [
    ({"sort": "-reward"}, ["passed", "probe", "failed"]),  # only runs with a reward, highest first
    ({"sort": "attempts", "verdict": "failed"}, ["down", "failed", "stuck"]),  # ties: the newest first
    ({"sort": "pk", "limit": 2}, ["passed", "failed"]),
    ({"sort": "-ctime", "limit": 1, "kind": "run"}, ["down"]),
    ({"sort": "-param.T", "kind": "point"}, ["T1.2", "T0.6"]),
]

ASK = """
import json, sys
from mdagent_hpc import api
out = {"rows": [[r["pk"] for r in api.find_runs(**q)] for q in json.loads(sys.argv[1])]}
frame = api.query_runs(elements="Cu", sort="pk")
out["frame"] = {"columns": list(frame.columns), "pks": frame["pk"].tolist(), "ctime": str(frame["ctime"].dtype),
                "temp": [None if t != t else t for t in frame["obs.temp_final"]]}  # NaN: no value
print(json.dumps(out))
"""


def python(code: str, *args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=timeout)


def mdagent(*args: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def psql(sql: str) -> None:
    import psycopg

    with psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request, tmp_path_factory):
    """(env, {name: pk}, back end): an AiiDA configuration of its own, on SQLite or on PostgreSQL, with the runs."""
    home = tmp_path_factory.mktemp(f"query-{request.param}")
    env = {**os.environ, "MDAGENT_HOME": str(home)}
    env.pop("MDAGENT_AIIDA_PROFILE", None)
    database = None
    if request.param == "postgres":
        name = f"mdagent-test-query-{uuid.uuid4().hex[:8]}"
        database = name.replace("-", "_")
        env.update(AIIDA_PATH=str(home), MDAGENT_AIIDA_PROFILE=name)
        made = python(
            f"from mdagent_hpc.execution.profile import ensure_postgres_profile as make; make({name!r}, broker=False)",
            env=env,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr[-2000:]
    try:
        answers = json.dumps(
            [
                fenced("good.lammps"),
                fenced("lost-atoms.lammps"),
                fenced("wrong-potential.lammps"),
                str(REPO / "workflows" / "sweeps" / "lj-melt-temperature.yaml"),
            ]
        )
        made = python(MAKE_RUNS, answers, env=env, timeout=600)
        assert made.returncode == 0, made.stderr[-3000:]
        yield env, json.loads(made.stdout.strip().splitlines()[-1]), request.param
    finally:
        if database:
            psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.mark.slow
def test_queries_return_the_right_runs(backend):
    env, pks, _ = backend
    name = {pk: key for key, pk in pks.items()}
    asked = [{k: str(pks["sweep"]) if v == "SWEEP" else v for k, v in q.items()} for q, _ in QUERIES + ORDERED]
    result = python(ASK, json.dumps(asked), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    for (query, expected), found in zip(QUERIES, answer["rows"], strict=False):
        assert {name[pk] for pk in found} == expected, query
    for (query, expected), found in zip(ORDERED, answer["rows"][len(QUERIES) :], strict=True):
        assert [name[pk] for pk in found] == expected, query
    frame = answer["frame"]
    assert frame["pks"] == [pks["passed"], pks["stuck"]] and frame["ctime"].startswith("datetime64")
    assert {"pk", "verdict", "reward", "elements", "obs.temp_final"} <= set(frame["columns"])
    assert 700 < frame["temp"][0] < 900 and frame["temp"][1] is None


ONE_BACK_END = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the same code path on both


@pytest.mark.slow
@ONE_BACK_END
def test_runs_query_prints_a_table_json_and_csv_and_refuses_bad_filters(backend):
    env, pks, _ = backend
    table = mdagent("runs", "query", "--element", "Cu", "--sort", "pk", env={**env, "COLUMNS": "120"})
    assert table.returncode == 0, table.stderr
    lines = [line.split() for line in table.stdout.splitlines() if line.strip()]
    assert [int(words[0]) for words in lines[2:]] == [pks["passed"], pks["stuck"]]  # header, rule, rows
    as_json = mdagent("runs", "query", "--obs", "temp_final=700..", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    (row,) = json.loads(as_json.stdout)
    assert row["pk"] == pks["passed"] and row["potentials"] == ["Cu_u3.eam"] and row["obs"]["atoms"] == 256
    assert row["stop"] == "passed" and row["attempts"] == 3 and row["units"] == "metal" and row["indexed"]
    as_csv = mdagent("runs", "query", "--verdict", "failed", "--sort", "pk", "--csv", env=env)
    assert as_csv.returncode == 0, as_csv.stderr
    header, *rows = as_csv.stdout.strip().splitlines()
    assert header.startswith("pk,kind,uuid,ctime,verdict") and len(rows) == 3
    assert [int(r.split(",")[0]) for r in rows] == [pks["failed"], pks["stuck"], pks["down"]]
    bad = mdagent("runs", "query", "--reward", "lots", env=env)
    assert bad.returncode == 2 and "reward: 'lots' is not a number" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
@ONE_BACK_END
def test_runs_diff_and_plot(backend, tmp_path):
    env, pks, _ = backend
    run = pks["passed"]
    diff = mdagent("runs", "diff", f"{run}:2", f"{run}:3", "--json", env=env)
    assert diff.returncode == 0, diff.stderr
    result = json.loads(diff.stdout)
    assert "-units           lj" in result["script_diff"] and "+units           metal" in result["script_diff"]
    assert result["a"]["grade"] == "fail" and result["b"]["grade"] == "pass"
    observables = {name: (a, b) for name, a, b, _ in result["observables"]}
    assert observables["atoms"][0] is None and observables["atoms"][1] == 256 and "temp_final" in observables
    runs = mdagent("runs", "diff", str(pks["passed"]), str(pks["stuck"]), env=env)
    assert runs.returncode == 0 and "Cu_u3_typo.eam" in runs.stdout and "loop.stuck_limit" in runs.stdout
    png = tmp_path / "thermo.png"
    plotted = mdagent("plot", str(run), "--out", str(png), env=env)
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    never_ran = mdagent("plot", f"{run}:1", env=env)
    assert never_ran.returncode == 2 and "LAMMPS never ran" in never_ran.stderr
    missing = mdagent("runs", "diff", f"{run}:9", str(run), env=env)
    assert missing.returncode == 2 and "there is no attempt 9" in missing.stderr


FORGET = """
import json, sys
from mdagent_hpc import api
api.load_profile()
from aiida import orm
orm.load_node(int(sys.argv[1])).base.extras.delete("query")
print(json.dumps({r["pk"]: r["indexed"] for r in api.find_runs()}))  # still listed, as not recorded
"""


@pytest.mark.slow
def test_runs_index_back_fills_a_run_recorded_before_the_fields_existed(backend):
    env, pks, kind = backend
    forgot = python(FORGET, str(pks["passed"]), env=env)
    assert forgot.returncode == 0, forgot.stderr[-2000:]
    assert json.loads(forgot.stdout.strip().splitlines()[-1])[str(pks["passed"])] is False
    before = mdagent("runs", "query", "--element", "Cu", "--json", env=env)
    assert [r["pk"] for r in json.loads(before.stdout)] == [pks["stuck"]]
    assert "1 finished run(s) have no recorded fields yet" in before.stderr and "mdagent runs index" in before.stderr
    index = mdagent("runs", "index", "--json", env=env)
    assert index.returncode == 0, index.stderr
    assert json.loads(index.stdout) == {"recorded": 1, "problems": []}
    after = mdagent("runs", "query", "--element", "Cu", "--sort", "pk", "--json", env=env)
    assert [r["pk"] for r in json.loads(after.stdout)] == [pks["passed"], pks["stuck"]]
    if kind == "postgres":  # `runs index` also made the indexes queries use
        import psycopg

        database = env["MDAGENT_AIIDA_PROFILE"].replace("-", "_")
        with psycopg.connect(**PG, dbname=database, connect_timeout=5) as conn:
            names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'db_dbnode'")}
        assert {"mdagent_query_fields", "mdagent_query_ctime", "mdagent_query_reward"} <= names


@pytest.mark.slow
@ONE_BACK_END
def test_a_pattern_search_reads_a_bounded_number_of_runs(backend):
    """A regular expression that matches nothing reads at most SCAN_BUDGET runs, then says how to narrow it."""
    env, _, _ = backend
    code = (
        "import json\n"
        "from mdagent_hpc.api import load_profile\n"
        "load_profile()\n"
        "from mdagent_hpc.provenance import EVERYONE, query\n"
        "from mdagent_hpc.provenance.filters import QueryError, build_query\n"
        "query.SCAN_BUDGET = 2\n"
        "try:\n"
        "    query.search(build_query(task=r're:\\d\\d\\d\\d\\d\\d\\d', limit=5), EVERYONE)\n"
        "    print(json.dumps('no error'))\n"
        "except QueryError as exc:\n"
        "    print(json.dumps(str(exc)))\n"
    )
    done = python(code, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert "tried on 2 runs" in said and "narrow the search" in said, said
