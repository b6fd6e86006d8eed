"""Agent runs' attempts as `bench.export.Step`s: the messages each GenerateScript node was given and its answer."""

from __future__ import annotations

from mdagent_hpc.evalbench.export import Step
from mdagent_hpc.provenance import Caller
from mdagent_hpc.provenance.runs import get_run


def steps_of(caller: Caller, pk: int) -> list[Step]:
    """Every attempt of run `pk` (NotFoundError unless `caller` may read it) that reached the model and was answered."""
    from aiida import orm

    run = get_run(caller, pk)
    steps = []
    for attempt in run.attempts:
        if "generate" not in attempt.nodes:
            continue
        node = orm.load_node(attempt.nodes["generate"])
        if "messages" not in node.inputs or "response" not in node.outputs:
            continue
        response = node.outputs.response.get_dict()
        # With k candidates the attempt went on with the chosen one (Attempt.candidates); else the only answer.
        chosen = next((c.number for c in attempt.candidates if c.chosen), 1)
        choices = response.get("choices") or []
        completion = choices[chosen - 1].get("raw_response") if len(choices) >= chosen else None
        if completion is None:
            completion = response.get("raw_response")
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
