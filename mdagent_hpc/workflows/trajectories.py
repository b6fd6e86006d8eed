"""Agent runs' attempts as `bench.export.Step`s: the messages each GenerateScript node was given and its answer."""

from __future__ import annotations

from mdagent_hpc.bench.export import Step
from mdagent_hpc.workflows.results import read_run


def steps_of(pk: int) -> list[Step]:
    """Every attempt of run `pk` that reached the model and got an answer."""
    from aiida import orm

    run = read_run(pk)
    steps = []
    for attempt in run.attempts:
        if "generate" not in attempt.nodes:
            continue
        node = orm.load_node(attempt.nodes["generate"])
        if "messages" not in node.inputs or "response" not in node.outputs:
            continue
        response = node.outputs.response.get_dict()
        completion = response.get("raw_response")
        if completion is None and response.get("choices"):  # several candidates: the one the attempt used
            chosen = response.get("chosen", 0) or 0
            completion = response["choices"][chosen].get("raw_response")
        if completion is None:
            continue  # the endpoint gave no answer (an error): nothing to learn from
        problems = [f"{d.code}: {d.message}" for d in attempt.diagnostics if d.severity.value == "error"]
        if attempt.evaluation is not None:
            problems += [
                f"eval.{f.rule}: {f.message}" for f in attempt.evaluation.findings if f.severity.value == "error"
            ]
        steps.append(
            Step(
                task=run.task,
                run=run.pk,
                attempt=attempt.number,
                messages=node.inputs.messages.get_list(),
                completion=completion,
                reward=attempt.evaluation.reward if attempt.evaluation else 0.0,
                passed=attempt.passed,
                stage=attempt.stage.value,
                grade=attempt.evaluation.grade.value if attempt.evaluation else None,
                diagnostics=problems,
                model=attempt.usage.model,
            )
        )
    return steps
