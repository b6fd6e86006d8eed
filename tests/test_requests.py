"""The request files in workflows/requests/: each one is a valid Request, and each one carrying recorded model
answers runs through the real loop (`mdagent run --file`, real AiiDA, real LAMMPS) and passes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mdagent_hpc import check, load_request

REPO = Path(__file__).resolve().parents[1]
REQUESTS = sorted((REPO / "workflows" / "requests").glob("*.yaml"))
WITH_ANSWERS = [path for path in REQUESTS if load_request(path).answers]
FENCE = re.compile(r"```lammps\n(.*?)```", re.DOTALL)


def test_there_are_request_files_with_and_without_answers():
    assert len(WITH_ANSWERS) >= 3 and len(WITH_ANSWERS) < len(REQUESTS)


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.name)
def test_every_request_file_is_a_request(path):
    request = load_request(path)
    assert request.description and len(request.task.split()) >= 8
    if request.answers:
        assert request.loop.max_attempts >= len(request.answers)


def test_the_demo_file_replays_the_demo():
    from mdagent_hpc.cli.run import DEMO_TASK, demo_answers

    demo = load_request(REPO / "workflows" / "requests" / "demo.yaml")
    assert demo.task == DEMO_TASK and demo.answers == demo_answers()


@pytest.mark.parametrize("path", WITH_ANSWERS, ids=lambda p: p.name)
def test_the_last_answer_passes_preflight(path, tmp_path):
    (script,) = FENCE.findall(load_request(path).answers[-1])
    (tmp_path / "in.lammps").write_text(script)
    report = check(tmp_path / "in.lammps")
    assert report.ok and not [d for d in report.diagnostics if d.severity != "info"], report.diagnostics


@pytest.mark.parametrize("path", WITH_ANSWERS, ids=lambda p: p.name)
def test_request_with_answers_runs_and_passes(path):
    result = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "run", "--file", str(path), "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[REPORT]" not in result.stderr and "output parser returned" not in result.stderr  # engine log stays quiet
    run = json.loads(result.stdout)
    request = load_request(path)
    assert run["verdict"] == "passed" and run["task"] == request.task
    assert len(run["attempts"]) == len(request.answers)  # each recorded answer was one attempt, the last passed
    assert run["attempts"][-1]["passed"] and run["script"] in request.answers[-1]
    assert run["observables"]["temp_final"] > 0 and run["observables"]["atoms"] > 0


# -- limits: the site's are ceilings ------------------------------------------------------------------------------
TASK = "NVT of a small LJ crystal at T = 1.0 for 1000 steps, print the temperature"


def test_a_request_lowers_the_site_limits_and_keeps_the_rest():
    from mdagent_hpc.execution.computers import local_site
    from mdagent_hpc.models import Limits

    site = local_site().limits
    lowered = Limits(max_atoms=500, max_walltime_s=60).within(site, "local")
    assert lowered.max_atoms == 500 and lowered.max_walltime_s == 60
    assert lowered.max_steps == site.max_steps and lowered.skiprun_timeout_s == site.skiprun_timeout_s


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        ({"max_atoms": 10**12}, "limits.max_atoms 1e+12 is above site local's 1e+06"),
        ({"max_steps": 10**15, "max_atoms": 10}, "limits.max_steps 1e+15 is above site local's 1e+07"),
        ({"max_walltime_s": 1e12}, "limits.max_walltime_s 1e+12 is above site local's 86400"),
        ({"skiprun_timeout_s": 3600}, "limits.skiprun_timeout_s 3600 is above site local's 60"),
    ],
)
def test_a_request_cannot_raise_a_site_limit(limits, says):
    from mdagent_hpc.models import Request
    from mdagent_hpc.workflows.launch import LaunchError, agent_inputs

    with pytest.raises(LaunchError) as caught:
        agent_inputs(Request(task=TASK, limits=limits))
    assert str(caught.value) == f"{says}: a request may lower the site's limits, not raise them"


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_a_limit_is_a_positive_finite_number(value):
    from pydantic import ValidationError

    from mdagent_hpc.models import Request

    with pytest.raises(ValidationError):
        Request(task=TASK, limits={"max_walltime_s": value})
