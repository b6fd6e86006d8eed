"""The agent loop's decisions (mdagent_hpc/agent/), without AiiDA: each runs in milliseconds."""

import subprocess
import sys

import pytest

from mdagent_hpc.agent.feedback import (
    dry_run_job_failed,
    endpoint_failed,
    evaluation_text,
    feedback_text,
    no_script,
    run_failed,
    run_fault,
)
from mdagent_hpc.agent.loop import (
    Stop,
    error_key,
    evaluation_error_key,
    exit_code,
    is_stuck,
    next_temperature,
    passes,
    script_sha,
    should_stop_stuck,
    stop_reason,
)
from mdagent_hpc.agent.staging import (
    files_to_stage,
    offered_potentials,
    potentials_to_stage,
    refused_files,
    refused_name,
)
from mdagent_hpc.lammps.potentials import PotentialEntry
from mdagent_hpc.models import (
    Attempt,
    Diagnostic,
    Evaluation,
    Finding,
    Grade,
    Job,
    LoopPolicy,
    PotentialUse,
    PreflightReport,
    Severity,
    Stage,
)

POLICY = LoopPolicy()


def attempt(
    number: int,
    stage: Stage = Stage.EVALUATE,
    key: str | None = None,
    sha: str | None = None,
    passed: bool = False,
    diagnostics: list[Diagnostic] | None = None,
) -> Attempt:
    return Attempt(
        number=number, stage=stage, error_key=key, script_sha=sha, passed=passed, diagnostics=diagnostics or []
    )


def evaluation(grade: Grade, reward: float, *findings: Finding) -> Evaluation:
    return Evaluation(grade=grade, reward=reward, findings=list(findings))


LOST = Finding(rule="lost_atoms", severity=Severity.ERROR, message="Lost atoms: 256 -> 21", hint="reduce the timestep")
DRIFT = Finding(rule="energy_drift", severity=Severity.WARNING, message="drift 2%")
NOTE = Finding(rule="completion", severity=Severity.INFO, message="the run completed")


def test_no_aiida_import():
    code = (
        "import sys, mdagent_hpc.agent.loop, mdagent_hpc.agent.feedback, mdagent_hpc.agent.staging; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiida', 'openai', 'httpx', 'parsl'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- go on or stop, and the exit code ---------------------------------------------------------------------------
def test_go_on_until_an_attempt_passes():
    assert stop_reason([], POLICY) is None
    assert stop_reason([attempt(1, key="eval:lost_atoms")], POLICY) is None
    history = [attempt(1, key="eval:lost_atoms"), attempt(2, passed=True)]
    assert stop_reason(history, POLICY) == Stop.PASSED and exit_code(history, POLICY) is None


def test_an_endpoint_that_cannot_answer_stops_at_once_with_300():
    history = [attempt(1, Stage.GENERATE, diagnostics=[endpoint_failed("auth", "401 Unauthorized")])]
    assert stop_reason(history, POLICY) == Stop.LLM_UNAVAILABLE
    assert exit_code(history, POLICY) == ("ERROR_LLM_UNAVAILABLE", {"message": "auth: 401 Unauthorized"})


def test_out_of_attempts_is_320_or_310_when_nothing_ever_ran():
    policy = LoopPolicy(max_attempts=2)
    ran = [attempt(1, Stage.PREFLIGHT, key="a"), attempt(2, Stage.EVALUATE, key="b")]
    assert stop_reason(ran, policy) == Stop.MAX_ATTEMPTS
    assert exit_code(ran, policy) == ("ERROR_MAX_ATTEMPTS", {"attempts": 2})
    never_ran = [attempt(1, Stage.PREFLIGHT, key="a"), attempt(2, Stage.DRY_RUN, key="b")]
    assert exit_code(never_ran, policy) == ("ERROR_NO_VALID_SCRIPT", {})
    a_fault_counts_as_a_run = [attempt(1, Stage.PREFLIGHT, key="a"), attempt(2, Stage.RUN, key="run:walltime")]
    assert exit_code(a_fault_counts_as_a_run, policy)[0] == "ERROR_MAX_ATTEMPTS"


def test_stuck_stops_with_330_even_on_the_last_attempt():
    same = [attempt(i, key="eval:lost_atoms") for i in (1, 2, 3)]
    assert stop_reason(same, POLICY) == Stop.STUCK
    assert exit_code(same, POLICY) == ("ERROR_STUCK", {"times": 3})
    assert exit_code(same, LoopPolicy(max_attempts=3)) == ("ERROR_STUCK", {"times": 3})


def test_stuck_rules_and_temperature():
    same = [attempt(i, key="eval:lost_atoms") for i in (1, 2)]
    assert is_stuck(same) and not should_stop_stuck(same, POLICY)
    assert next_temperature(0.2, same, POLICY) == pytest.approx(0.5)
    assert should_stop_stuck([*same, attempt(3, key="eval:lost_atoms")], POLICY)
    assert next_temperature(1.0, [*same, attempt(3, key="eval:lost_atoms")], POLICY) == POLICY.max_temperature
    different = [attempt(1, key="a"), attempt(2, key="b")]
    assert not is_stuck(different) and next_temperature(0.2, different, POLICY) == 0.2
    same_script = [attempt(1, key="a", sha="s1"), attempt(2, key="b", sha="s1")]
    assert is_stuck(same_script)


def test_script_sha_ignores_spacing_and_blank_lines():
    assert script_sha("units lj\n\nrun   100\n") == script_sha("  units lj\nrun 100")
    assert script_sha("run 100") != script_sha("run 200")


def test_error_keys_leave_out_what_changes_between_attempts():
    a = Diagnostic(severity=Severity.ERROR, code="lammps.error", message="Lost atoms: original 256 current 21", line=9)
    b = Diagnostic(severity=Severity.ERROR, code="lammps.error", message="Lost atoms: original 256 current 3", line=12)
    assert error_key([a]) == error_key([b]) == "lammps.error:Lost atoms: original current"
    warning = Diagnostic(severity=Severity.WARNING, code="x", message="y")
    assert error_key([warning]) is None
    assert evaluation_error_key(evaluation(Grade.FAIL, 0.0, NOTE, LOST)) == "eval:lost_atoms"
    assert evaluation_error_key(evaluation(Grade.WARN, 0.3, DRIFT)) == "eval:warn"


def test_passes_needs_the_grade_and_the_reward():
    assert passes(evaluation(Grade.WARN, 0.6), POLICY)
    assert not passes(evaluation(Grade.WARN, 0.4), POLICY)
    assert not passes(evaluation(Grade.FAIL, 0.9), POLICY)
    assert not passes(evaluation(Grade.WARN, 0.9), LoopPolicy(pass_grade=Grade.PASS))


# -- what to offer and what to stage ----------------------------------------------------------------------------
def entry(name: str, elements: list[str], styles: list[str]) -> PotentialEntry:
    return PotentialEntry(name=name, path=f"/pots/{name}", styles=styles, elements=elements, md5="0", size=1)


def test_potentials_offered_in_the_prompt():
    ranked = [entry(f"Cu{i}.eam", ["Cu"], ["eam"]) for i in range(30)] + [entry("x.table", ["Cu"], [])]
    offered = offered_potentials(["Cu"], ranked)
    assert len(offered) == 20 and offered[0].name == "Cu0.eam" and offered[0].pair_style == "eam"
    assert offered_potentials(["Cu"], ranked[-1:])[0].pair_style == "?"
    assert offered_potentials([], ranked) == []  # no element named: a pair style without a file


@pytest.mark.parametrize(
    "name, refused",
    [
        ("data.lmp", False),
        ("in.cu", False),
        ("../escape.txt", True),
        ("/etc/passwd", True),
        ("sub/data.lmp", True),
        ("..", True),
        ("${dir}", True),
    ],
)
def test_extra_file_names_that_leave_the_run_folder_are_refused(name, refused):
    assert (refused_name(name) is not None) == refused


def test_refused_files_are_told_to_the_model_and_never_staged():
    problems = refused_files(["data.lmp", "../escape.txt"])
    assert [d.code for d in problems] == ["policy.path"]
    assert "'../escape.txt' is not a plain name" in problems[0].message and problems[0].hint
    staged = files_to_stage({"data.lmp": "new", "../escape.txt": "x"}, {"data.lmp": "old", "restart.100": "r"})
    assert staged == {"data.lmp": "new", "restart.100": "r"}  # the answer's file wins over a restart file


def test_potential_files_staged_are_those_found_outside_the_run_folder():
    report = PreflightReport(
        script="in.lammps",
        ok=True,
        diagnostics=[],
        potentials=[
            PotentialUse(name="Cu_u3.eam", pair_style="eam", resolved="/lammps/potentials/Cu_u3.eam", source="lammps"),
            PotentialUse(name="own.eam", pair_style="eam", resolved="/run/own.eam", source="run-folder"),
            PotentialUse(name="missing.eam", pair_style="eam"),
        ],
    )
    assert potentials_to_stage(report) == {"Cu_u3.eam": "/lammps/potentials/Cu_u3.eam"}


# -- the feedback for each kind of failure ----------------------------------------------------------------------
def test_feedback_for_a_failed_preflight_shows_each_problem_with_line_command_and_hint():
    problem = Diagnostic(
        severity=Severity.ERROR,
        code="potential.missing",
        message="file 'Cu.eam' not found",
        line=8,
        file="in.lammps",
        command="pair_coeff * * Cu.eam",
        hint="use Cu_u3.eam",
    )
    text = feedback_text([problem])
    assert text.splitlines() == [
        "Problems found:",
        "ERROR in.lammps:8 [potential.missing] file 'Cu.eam' not found",
        "    hint: use Cu_u3.eam",
        "    command: pair_coeff * * Cu.eam",
    ]


def test_feedback_for_an_answer_without_a_script():
    assert [d.code for d in no_script([])] == ["generate.no_script"]
    found = Diagnostic(severity=Severity.ERROR, code="generate.prose", message="the answer is prose")
    assert no_script([found]) == [found]
    assert "generate.no_script" in feedback_text(no_script([]))


def test_feedback_for_a_dry_run_job_and_a_run_that_left_nothing():
    assert "dry-run job failed before LAMMPS wrote anything: out of memory" in feedback_text(
        [dry_run_job_failed("out of memory")]
    )
    assert run_failed("excepted").code == "run.failed"


def test_feedback_for_a_run_fault():
    walltime = Job(site="hpc", fault="walltime", action="fail")
    cut = run_fault(walltime, "the job ran out of its wall time at step 4000; site policy: fail", [], 600)
    assert cut.code == "run.walltime" and "at step 4000" in cut.message
    assert "restart" in cut.hint and "600 s" in cut.hint
    restarted = run_fault(Job(fault="walltime", action="restart", restarts=1), "cut", ["cu.restart.4000"], 600)
    assert "cu.restart.4000" in restarted.hint and "read_restart" in restarted.hint
    node = run_fault(Job(fault="node_failure", action="fail"), "the node failed; site policy: fail", [], None)
    assert node.code == "run.node_failure" and node.hint is None


def test_feedback_for_an_evaluation_leaves_out_mere_information():
    text = feedback_text([], evaluation(Grade.FAIL, 0.0, NOTE, LOST, DRIFT))
    assert text.startswith("Evaluation: grade fail, reward 0.00.")
    assert "lost_atoms: Lost atoms: 256 -> 21 (hint: reduce the timestep)" in text and "energy_drift" in text
    assert "completion" not in text
    assert evaluation_text(evaluation(Grade.WARN, 0.4)) == "grade warn, reward 0.40."
