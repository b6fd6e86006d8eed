"""The benchmark harness: set loaders (MD-EvalBench's format), scoring, the failure memory, and the harness end to
end through the real system (AiiDA, preflight, LAMMPS, evaluation) against the replay server and the CPU vLLM."""

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import datasets  # a test dependency: missing, the module fails at once, not a skip at a long test's end
import pytest
from openai_server import FakeOpenAIServer

from mdagent_hpc.agent import memory
from mdagent_hpc.agent.feedback import feedback_text
from mdagent_hpc.evalbench import qa, scoring
from mdagent_hpc.evalbench.sets import QuestionType, SetError, load_code_tasks, load_questions
from mdagent_hpc.models import Attempt, Diagnostic, Evaluation, Grade, Severity, Stage, Usage

DATA = Path(__file__).resolve().parents[1] / "mdagent_hpc" / "evalbench" / "data"
CODEGEN = DATA / "codegen-small.jsonl"
QA = DATA / "qa-small.jsonl"


def b64(value) -> str:
    return "BASE64:" + base64.b64encode(json.dumps(value).encode()).decode()


def mdagent(*args, env_extra=None, timeout=900):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# -- sets ---------------------------------------------------------------------------------------------------------
def test_md_evalbench_code_and_question_files_decode(tmp_path):
    code = tmp_path / "LammpsCodeGenEval_sub.json"
    code.write_text(
        json.dumps(
            [
                {"task": "Melt an LJ crystal", "standrd_code": b64("units lj\nrun 10")},
                {"task": "Heat Cu with EAM", "standrd_code": b64("units metal\nrun 10")},
            ]
        )
    )
    tasks = load_code_tasks(code)
    assert [(t.id, t.task, t.reference) for t in tasks] == [
        ("task001", "Melt an LJ crystal", "units lj\nrun 10"),
        ("task002", "Heat Cu with EAM", "units metal\nrun 10"),
    ]
    questions = tmp_path / "qa.jsonl"
    records = [
        {
            "id": "q1",
            "type": "single_choice",
            "question": "Units?",
            "options": {"A": "lj", "B": "metal"},
            "answer": b64(["B"]),
            "answer_text": None,
            "difficulty": "easy",
            "tags": ["LAMMPS", "units"],
        },
        {
            "id": "q2",
            "type": "multiple-choice",
            "question": "Thermostats?",
            "options": {"A": "nvt", "B": "nve"},
            "answer": b64(["A"]),
            "difficulty": "hard",
            "tags": ["fix"],
        },
        {
            "id": "f3",
            "type": "fill_blank",
            "question": "Run 10 steps: ____",
            "answer_text": b64("run 10"),
            "difficulty": "hard",
            "tags": ["LAMMPS"],
        },
        {"id": "q4", "type": "single_choice", "question": "No key?", "options": {"A": "x", "B": "y"}},
        {"id": "o5", "type": "open", "question": "Why NVT?", "answer_text": "canonical sampling"},
        {"id": "f6", "type": "fill-blank", "question": "Units of LJ: ____", "answer": b64(["lj"])},  # text in answer
    ]
    questions.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    loaded = load_questions(questions)
    assert [q.type for q in loaded] == [
        QuestionType.SINGLE,
        QuestionType.MULTIPLE,
        QuestionType.FILL,
        QuestionType.SINGLE,
        QuestionType.OPEN,
        QuestionType.FILL,
    ]
    assert loaded[0].answer == ["B"] and loaded[2].answer_text == "run 10" and loaded[1].tags == ["fix"]
    assert [q.scorable for q in loaded] == [True, True, True, False, True, True]
    assert (loaded[5].answer, loaded[5].answer_text) == (None, "lj")


def test_the_project_sets_have_every_question_type():
    questions = load_questions(QA)
    tasks = load_code_tasks(CODEGEN)
    assert len(questions) == 20 and len(tasks) == 10
    assert {q.type for q in questions} == set(QuestionType)
    assert all(t.answers and t.reference for t in tasks)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a", "type": "essay_question", "question": "x"}', "is not one of"),
        ('{"id": "a", "type": "open", "question": "x"}\n{"id": "a", "type": "open", "question": "y"}', "appears twice"),
        ("not json", "not a JSON object"),
        ('{"id": "a", "type": "single_choice", "question": "x", "answer": "BASE64:!!"}', "does not decode"),
    ],
)
def test_bad_question_files_are_one_sentence(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SetError, match=message) as info:
        load_questions(path)
    assert str(path) in str(info.value)


def test_bad_set_file_on_the_command_line_exits_2(tmp_path):
    result = mdagent("bench", "qa", str(tmp_path / "missing.jsonl"), timeout=120)
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


# -- scoring ------------------------------------------------------------------------------------------------------
def test_choice_answers_are_scored_exactly_and_fill_blanks_normalised():
    single, multiple, fill = (q for q in load_questions(QA) if q.id in ("s01", "m01", "f03"))
    assert qa.extract(single, "Answer: B") == ["B"] and qa.score(single, ["B"]) == 1.0
    assert qa.score(single, qa.extract(single, "<think>A or C?</think>\nAnswer: C")) == 0.0
    assert qa.extract(multiple, "Answer: A, C and B") == ["A", "B", "C"]
    assert qa.score(multiple, ["A", "B"]) == 0.0  # a subset is wrong: exact sets only
    assert qa.score(multiple, None) == 0.0
    assert qa.score(fill, qa.extract(fill, "Answer: `Pair_Style  lj/cut 2.5`.")) == 1.0
    assert qa.score(fill, "pair_style lj/cut 3.0") == 0.0
    assert qa.fill_matches("2.8373", "2.837300") and qa.fill_matches("B-spline", "B‐spline or cardinal")


def attempt(number, passed=False, reward=None, diagnostics=(), tokens=(10, 5), script="run 1"):
    evaluation = (
        None if reward is None else Evaluation(grade=Grade.PASS if passed else Grade.FAIL, reward=reward, findings=[])
    )
    return Attempt(
        number=number,
        stage=Stage.EVALUATE if evaluation else Stage.PREFLIGHT,
        passed=passed,
        evaluation=evaluation,
        diagnostics=list(diagnostics),
        script=script,
        usage=Usage(prompt_tokens=tokens[0], completion_tokens=tokens[1]),
    )


def test_task_numbers_from_runs():
    bad = Diagnostic(severity=Severity.ERROR, code="potential.missing", message="no file")
    loop = scoring.RunRecord(
        task="t",
        mode="loop",
        verdict="passed",
        seconds=3.0,
        attempts=[attempt(1, diagnostics=[bad]), attempt(2, True, 0.9)],
    )
    shot = scoring.RunRecord(
        task="t", mode="oneshot", index=1, verdict="passed", seconds=1.0, attempts=[attempt(1, True, 1.0)]
    )
    result = scoring.task_result("t", [loop, shot], k=2, tags=["metal"])
    assert result.candidates == [False, True] and not result.exec_success_at_1 and result.exec_success_at_k
    assert (result.loop_passed, result.attempts_to_pass, result.reward, result.grade) == (True, 2, 0.9, "pass")
    assert (result.prompt_tokens, result.completion_tokens, result.seconds) == (30, 15, 4.0)
    never = scoring.task_result(
        "u", [scoring.RunRecord(task="u", mode="loop", verdict="failed", attempts=[attempt(1, diagnostics=[bad])])], k=1
    )
    summary = scoring.codegen_summary([result, never], k=2, loop=True)
    assert (summary.exec_success_at_1, summary.exec_success_at_k, summary.loop_success) == (0.0, 0.5, 0.5)
    assert summary.mean_attempts_to_pass == 2 and summary.grades == {"none": 1, "pass": 1}
    answers = [
        scoring.Answered(id="a", type="single_choice", difficulty="easy", tags=["x"], score=1.0),
        scoring.Answered(id="b", type="open", tags=["x", "y"], judge=0.5),
        scoring.Answered(id="c", type="open", error="HTTP 500"),
    ]
    qs = scoring.qa_summary(answers)
    assert (qs.total.scored, qs.total.points, qs.unscored, qs.errors) == (2, 1.5, 1, 1)
    assert qs.by_tag["x"].accuracy == 0.75 and qs.by_type["open"].questions == 2


# -- failure memory -----------------------------------------------------------------------------------------------
def test_failure_memory_finds_the_fix_of_the_same_failure():
    wrong = Diagnostic(
        severity=Severity.ERROR,
        code="potential.missing",
        message="Cu_u3_typo.eam: no such file",
        command="pair_coeff 1 1 Cu_u3_typo.eam",
        line=8,
    )
    other = Diagnostic(
        severity=Severity.ERROR,
        code="lammps.error",
        message="Unknown command: veloctiy",
        command="veloctiy all create 1.5 1",
    )
    history = [
        attempt(1, diagnostics=[wrong], script="pair_style eam\npair_coeff 1 1 Cu_u3_typo.eam\nrun 1"),
        attempt(2, True, 1.0, script="pair_style eam\npair_coeff 1 1 Cu_u3.eam\nrun 1"),
    ]
    typo = [
        attempt(1, diagnostics=[other], script="veloctiy all create 1.5 1\nrun 1"),
        attempt(2, True, 1.0, script="velocity all create 1.5 1\nrun 1"),
    ]
    lessons = memory.lessons(history, run=7) + memory.lessons(typo, run=8)
    assert [(m.signature.key(), m.fix, m.run) for m in lessons] == [
        ("potential.missing pair_coeff", ["- pair_coeff 1 1 Cu_u3_typo.eam", "+ pair_coeff 1 1 Cu_u3.eam"], 7),
        ("lammps.error veloctiy", ["- veloctiy all create 1.5 1", "+ velocity all create 1.5 1"], 8),
    ]
    again = wrong.model_copy(update={"message": "Cu_u4.eam: no such file", "command": "pair_coeff * * Cu_u4.eam"})
    assert memory.recall(lessons, again, limit=1)[0].run == 7
    assert (
        memory.signature(
            Diagnostic(severity=Severity.ERROR, code="x", message="m", command="fix 1 all nvt temp 1 1 1")
        ).style
        == "nvt"
    )
    text = feedback_text([again], memory=lessons)
    assert "Past fixes" in text and "+ pair_coeff 1 1 Cu_u3.eam" in text
    assert "Past fixes" not in feedback_text([again])  # no memory: the feedback as before


# -- the harness end to end ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aiida_profile():
    from mdagent_hpc.execution.profile import ensure_profile

    return ensure_profile()


# Hand-checked from the recorded answers of codegen-small.jsonl (k=2: candidate 1 is the loop's first attempt,
# candidate 2 replays the task's second answer, or its only one):
#   cg01 [good]            c1 pass  c2 pass  loop pass at 1      cg06 [wrong x3]  fail fail  loop fails (3)
#   cg02 [good]            pass     pass     pass at 1           cg07 [typo, good] fail pass pass at 2
#   cg03 [wrong pot, good] fail     pass     pass at 2           cg08 [good]      pass pass  pass at 1
#   cg04 [lost atoms, good] fail    pass     pass at 2           cg09 [lost x3]   fail fail  loop fails (3)
#   cg05 [prose, wrong, good] fail  fail     pass at 3           cg10 [good]      pass pass  pass at 1
EXPECTED = {
    "cg01": ([True, True], 1),
    "cg02": ([True, True], 1),
    "cg03": ([False, True], 2),
    "cg04": ([False, True], 2),
    "cg05": ([False, False], 3),
    "cg06": ([False, False], None),
    "cg07": ([False, True], 2),
    "cg08": ([True, True], 1),
    "cg09": ([False, False], None),
    "cg10": ([True, True], 1),
}


@pytest.mark.slow
def test_codegen_harness_replayed_end_to_end_resumes_compares_and_exports(aiida_profile, tmp_path):
    result = mdagent(
        "bench", "codegen", str(CODEGEN), "--replay", "-k", "2", "--concurrency", "2", "--name", "small", "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    s = report["summary"]
    assert (s["tasks"], s["exec_success_at_1"], s["exec_success_at_k"], s["loop_success"]) == (10, 0.4, 0.7, 0.8)
    assert s["mean_attempts_to_pass"] == round(13 / 8, 2)  # 13 attempts over the 8 loops that passed
    # the Cu script passes clean, the LJ one with a drift warning; cg06 never ran, cg09's runs lose atoms
    assert s["incomplete"] == 0 and s["grades"] == {"fail": 1, "none": 1, "pass": 4, "warn": 4}
    items = {i["task"]: i for i in report["items"]}
    assert {t: (i["candidates"], i["attempts_to_pass"]) for t, i in items.items()} == EXPECTED
    assert (items["cg06"]["attempts"], items["cg06"]["grade"], items["cg06"]["reward"]) == (3, None, 0.0)
    assert s["prompt_tokens"] == sum(i["prompt_tokens"] for i in items.values()) > 0
    assert report["by_difficulty"]["easy"] == {"tasks": 4, "exec_success_at_k": 1.0, "loop_success": 1.0}

    # the same name again: nothing left to run, the same numbers
    again = mdagent("bench", "codegen", str(CODEGEN), "--replay", "-k", "2", "--name", "small", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["summary"] == s
    other = mdagent("bench", "codegen", str(CODEGEN), "--replay", "-k", "3", "--name", "small")
    assert other.returncode == 2 and "other settings (k)" in other.stderr

    # a second benchmark (two tasks, one-shot only) and the comparison
    two = tmp_path / "two.jsonl"
    two.write_text("".join(CODEGEN.read_text().splitlines(keepends=True)[2:4]))
    assert mdagent("bench", "codegen", str(two), "--replay", "--no-loop", "--name", "two").returncode == 0
    plot = tmp_path / "cmp.png"
    compared = mdagent("bench", "compare", "small", "two", "--plot", str(plot), "--json")
    assert compared.returncode == 0, compared.stderr
    both = json.loads(compared.stdout)
    assert both["second"]["summary"]["exec_success_at_1"] == 0.0 and both["second"]["summary"]["tasks"] == 2
    assert plot.stat().st_size > 5000 and plot.read_bytes()[:4] == b"\x89PNG"

    # the failure memory reads the lessons of these runs back: cg03's wrong potential file and the line that fixed it
    from mdagent_hpc.provenance import local_caller
    from mdagent_hpc.provenance.lessons import past_lessons

    lessons = past_lessons(local_caller())
    fix = next(m for m in lessons if m.signature.key() == "potential.missing pair_coeff")
    assert fix.fix == ["- pair_coeff 1 1 Cu_u3_typo.eam", "+ pair_coeff 1 1 Cu_u3.eam"]
    assert any(m.signature.code == "lammps.error" and "+ velocity" in " ".join(m.fix) for m in lessons)  # cg07
    # ... and a new run that makes cg03's mistake is shown that fix under its feedback, in the correction prompt
    from aiida import orm

    from mdagent_hpc import api

    tasks = {t.id: t for t in load_code_tasks(CODEGEN)}
    run = api.run("Keep an fcc Cu crystal at 800 K with EAM in NVT", answers=tasks["cg03"].answers, max_attempts=2)
    assert run.verdict == "passed" and "Past fixes" in run.attempts[0].feedback
    prompt = orm.load_node(run.attempts[1].nodes["generate"]).inputs.messages.get_list()[-1]["content"]
    assert "Past fixes of the same kind of failure" in prompt and "+ pair_coeff 1 1 Cu_u3.eam" in prompt

    exported = {}
    for fmt in ("verl", "trl", "openrlhf", "sft"):
        out = mdagent(
            "export",
            "trajectories",
            "--format",
            fmt,
            "--bench",
            "small",
            "--out",
            str(tmp_path / fmt),
            "--test-fraction",
            "0.3",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        exported[fmt] = json.loads(out.stdout)
    check_exports(exported, tmp_path)


@pytest.mark.slow
def test_ctrl_c_stops_the_benchmark_and_the_same_command_resumes_it(aiida_profile, tmp_path):
    three = tmp_path / "three.jsonl"
    three.write_text("".join(CODEGEN.read_text().splitlines(keepends=True)[:3]))
    command = [
        sys.executable,
        "-m",
        "mdagent_hpc.cli",
        "bench",
        "codegen",
        str(three),
        "--replay",
        "-k",
        "2",
        "--name",
        "interrupted",
    ]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # the first run done: interrupt the others
        seen.append(line)
        if line.startswith("• "):
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "interrupted" in rest and "Traceback" not in rest, "".join(seen) + rest
    from mdagent_hpc.workflows.bench import find_group, finished_jobs

    done = finished_jobs(find_group("interrupted"))
    assert 1 <= len(done) < 6
    again = mdagent("bench", "codegen", str(three), "--replay", "-k", "2", "--name", "interrupted", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming interrupted: {len(done)} run(s) already finished" in again.stderr
    summary = json.loads(again.stdout)["summary"]
    assert (summary["incomplete"], summary["loop_success"]) == (0, 1.0) and summary["exec_success_at_1"] == 0.6667


def check_exports(exported: dict, folder: Path) -> None:
    """What the trainers' own loader (`datasets`) reads back: the columns, the rows, the split by task."""
    verl = exported["verl"]
    # 20 runs, 29 attempts; one-shot candidates that repeat a loop's first answer are the same row
    assert verl["runs"] == 20 and verl["attempts"] == 29
    unique = verl["rows"]["train"] + verl["rows"]["test"]
    assert unique == 29 - 6  # cg01, cg02, cg06, cg08, cg09, cg10: candidate 2 is the loop's first attempt again
    tasks = {}
    for split in ("train", "test"):
        if not verl["rows"][split]:
            continue
        data = datasets.load_dataset("parquet", data_files=str(folder / "verl" / f"{split}.parquet"))["train"]
        assert {"data_source", "prompt", "ability", "reward_model", "extra_info"} <= set(data.column_names)
        assert len(data) == verl["rows"][split]
        row = data[0]
        assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["role"] == "user"
        assert row["reward_model"]["ground_truth"] and 0.0 <= row["extra_info"]["reward"] <= 1.0
        tasks[split] = {r["ground_truth"] for r in data["reward_model"]}
    assert not (tasks.get("train", set()) & tasks.get("test", set()))  # no task in both splits
    trl = datasets.load_dataset("json", data_files=str(folder / "trl" / "train.jsonl"))["train"]
    assert {"prompt", "completion", "reward", "passed", "task", "diagnostics"} <= set(trl.column_names)
    assert trl[0]["completion"][0]["role"] == "assistant"
    openrlhf = datasets.load_dataset("json", data_files=str(folder / "openrlhf" / "train.jsonl"))["train"]
    assert {"input", "label", "output", "reward"} <= set(openrlhf.column_names)
    sft = exported["sft"]
    assert sft["rows"]["train"] + sft["rows"]["test"] == 15 - 4  # passing attempts, less the 4 repeated candidates
    messages = datasets.load_dataset("json", data_files=str(folder / "sft" / "train.jsonl"))["train"]
    assert messages.column_names == ["messages"] and messages[0]["messages"][-1]["role"] == "assistant"


def test_ask_carries_this_lammps_and_the_potentials_for_the_question(fake_openai):
    server = fake_openai(["Use pair_style eam/alloy with CuNi.eam.alloy."])
    env = {"MDAGENT_LLM_BASE_URL": server.base_url, "MDAGENT_LLM_MODEL": "fake-model", "MDAGENT_LLM_MAX_RETRIES": "0"}
    result = mdagent("ask", "Which potential should I use for a Cu-Ni alloy?", "--json", env_extra=env, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["answer"].startswith("Use pair_style eam/alloy") and answer["elements"] == ["Cu", "Ni"]
    system = server.requests[0]["messages"][0]["content"]
    assert "LAMMPS version:" in system and "pair styles:" in system and "eam/alloy" in system
    assert any(p.startswith("CuNi") for p in answer["potentials"]) and answer["potentials"][0] in system
    bad = mdagent("ask", "hello", env_extra=env, timeout=120)
    assert bad.returncode == 2 and "in a sentence" in bad.stderr


class RoutingServer(FakeOpenAIServer):
    """The replay server answering by question, so answers do not depend on the order requests arrive in."""

    def __init__(self, answers: dict[str, str], judge: str):
        super().__init__([])
        self.by_question, self.judge = answers, judge

    def _next_answer(self, body, headers):
        with self._lock:
            self.requests.append(body)
            text = body["messages"][-1]["content"]
            if "REFERENCE:" in text:
                return self.judge
            return next((a for q, a in self.by_question.items() if q in text), "I do not know.")


def test_qa_harness_scores_every_type_by_type_difficulty_and_tag(aiida_profile):
    questions = load_questions(QA)
    right = {
        "single_choice": lambda q: f"Answer: {q.answer[0]}",
        "multiple_choice": lambda q: f"Answer: {', '.join(q.answer)}",
        "fill_blank": lambda q: f"Answer: {q.answer_text.upper()}.",
        "open": lambda q: "Answer: because.",
    }
    answers = {q.question: right[q.type.value](q) for q in questions}
    answers[questions[0].question] = "Answer: D"  # s01 wrong
    answers[next(q.question for q in questions if q.id == "m02")] = "Answer: A"  # m02: one of two, wrong
    answers[next(q.question for q in questions if q.id == "f02")] = "Answer: femtoseconds"  # wrong
    with RoutingServer(answers, judge="The answer misses the fluctuations.\nScore: 6") as server:
        env = {
            "MDAGENT_LLM_BASE_URL": server.base_url,
            "MDAGENT_LLM_MODEL": "fake-model",
            "MDAGENT_LLM_MAX_RETRIES": "0",
        }
        result = mdagent(
            "bench", "qa", str(QA), "--concurrency", "3", "--name", "qa-small", "--json", env_extra=env, timeout=300
        )
        assert result.returncode == 0, result.stderr
        judged = sum("REFERENCE:" in r["messages"][-1]["content"] for r in server.requests)
    s = json.loads(result.stdout)["summary"]
    # 6 single (1 wrong), 5 multiple (1 wrong), 5 fill (1 wrong), 4 open (3 with a reference, judged 0.6; 1 without)
    assert judged == 3
    assert (s["total"]["questions"], s["total"]["scored"], s["unscored"], s["errors"]) == (20, 19, 1, 0)
    assert s["total"]["points"] == pytest.approx(5 + 4 + 4 + 3 * 0.6)
    assert {k: (v["scored"], v["points"]) for k, v in s["by_type"].items() if k != "open"} == {
        "single_choice": (6, 5.0),
        "multiple_choice": (5, 4.0),
        "fill_blank": (5, 4.0),
    }
    assert s["by_difficulty"]["easy"]["questions"] == 10 and s["by_tag"]["units"]["points"] == 1.0


def test_code_judge_scores_the_final_script_against_the_reference(aiida_profile, tmp_path):
    task = load_code_tasks(CODEGEN)[0]
    one = tmp_path / "one.jsonl"
    one.write_text(CODEGEN.read_text().splitlines()[0] + "\n")
    with RoutingServer({task.task: task.answers[0]}, judge="Sound setup, the temperature is printed.\nScore: 8") as srv:
        env = {"MDAGENT_LLM_BASE_URL": srv.base_url, "MDAGENT_LLM_MODEL": "fake-model", "MDAGENT_LLM_MAX_RETRIES": "0"}
        result = mdagent("bench", "codegen", str(one), "--judge", "--name", "judged", "--json", env_extra=env)
        judged = [r for r in srv.requests if "REFERENCE:" in r["messages"][-1]["content"]]
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["items"][0]["judge"] == 0.8 and report["summary"]["judge_mean"] == 0.8
    assert len(judged) == 1 and task.reference in judged[0]["messages"][-1]["content"]
    assert "pair_coeff      1 1 Cu_u3.eam" in judged[0]["messages"][-1]["content"]  # the script it judged


def test_harness_reports_a_model_that_fails_everything(aiida_profile, vllm_server, tmp_path):
    """The real CPU vLLM with its tiny random model: every task fails, the harness says so, nothing crashes."""
    server = vllm_server
    two = tmp_path / "two.jsonl"
    two.write_text("".join(CODEGEN.read_text().splitlines(keepends=True)[:2]))
    env = {
        "MDAGENT_LLM_BASE_URL": server.base_url,
        "MDAGENT_LLM_MODEL": server.model,
        "MDAGENT_LLM_API_KEY": server.api_key,
        "MDAGENT_LLM_MAX_RETRIES": "0",
        "MDAGENT_LLM_TIMEOUT": "900",  # CPU generation on a loaded test machine: an answer late is no error here
    }
    result = mdagent("bench", "codegen", str(two), "--max-attempts", "1", "--name", "vllm", "--json", env_extra=env)
    assert result.returncode == 0, result.stderr[-3000:]
    s = json.loads(result.stdout)["summary"]
    assert (s["tasks"], s["exec_success_at_k"], s["loop_success"], s["incomplete"]) == (2, 0.0, 0.0, 0)
    assert s["completion_tokens"] > 0
    answered = mdagent("bench", "qa", str(QA), "--name", "vllm-qa", "--json", env_extra=env)
    assert answered.returncode == 0, answered.stderr[-3000:]
    report = json.loads(answered.stdout)
    q = report["summary"]
    errors = [(a.get("id"), a["error"]) for a in report["items"] if a.get("error")]
    assert (q["total"]["questions"], errors) == (20, []) and q["completion_tokens"] > 0
    # whatever the random model says is scored by the rules: the points are the sum of the items' scores
    assert q["total"]["points"] == pytest.approx(sum(i["score"] or i["judge"] or 0 for i in report["items"]))
