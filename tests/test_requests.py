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
    result = subprocess.run([sys.executable, "-m", "mdagent_hpc.cli", "run", "--file", str(path), "--json"],
                            capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[REPORT]" not in result.stderr and "output parser returned" not in result.stderr  # engine log stays quiet
    run = json.loads(result.stdout)
    request = load_request(path)
    assert run["verdict"] == "passed" and run["task"] == request.task
    assert len(run["attempts"]) == len(request.answers)  # each recorded answer was one attempt, the last passed
    assert run["attempts"][-1]["passed"] and run["script"] in request.answers[-1]
    assert run["observables"]["temp_final"] > 0 and run["observables"]["atoms"] > 0
