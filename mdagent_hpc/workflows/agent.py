"""AgentWorkChain (`mdagent.agent`): generate, preflight, run, evaluate, feed back; until pass or stop."""

from __future__ import annotations

from pathlib import Path

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from mdagent_hpc.agent.loop import (
    AttemptRecord,
    LoopPolicy,
    error_key,
    evaluation_error_key,
    is_stuck,
    next_temperature,
    passes,
    script_sha,
    should_stop_stuck,
)
from mdagent_hpc.lammps.install import capabilities
from mdagent_hpc.lammps.potentials import find_potentials
from mdagent_hpc.llm import AttemptFeedback, PotentialInfo, SiteCapabilities, build_messages, task_elements
from mdagent_hpc.llm.prompts import describe_limits
from mdagent_hpc.models import Diagnostic, Evaluation, Limits, Severity
from mdagent_hpc.workflows.generate import GenerateScript
from mdagent_hpc.workflows.lammps_calc import LammpsCalculation, node_key
from mdagent_hpc.workflows.steps import evaluate_run, preflight_script


def _diag(code: str, message: str, hint: str | None = None) -> dict:
    return Diagnostic(severity=Severity.ERROR, code=code, message=message, hint=hint).model_dump(mode="json")


class AgentWorkChain(WorkChain):
    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("task", valid_type=orm.Str, help="what the user asked for, in plain language")
        spec.input("code", valid_type=orm.AbstractCode, help="the LAMMPS code to run on")
        spec.input("llm", valid_type=orm.Dict, help="endpoint and sampling settings (never the API key)")
        spec.input("loop", valid_type=orm.Dict, default=lambda: orm.Dict(LoopPolicy().model_dump(mode="json")))
        spec.input("limits", valid_type=orm.Dict, default=lambda: orm.Dict(Limits().model_dump()))
        spec.input("options", valid_type=orm.Dict, default=lambda: orm.Dict({"max_wallclock_seconds": 3600}),
                   help="metadata.options of the LAMMPS CalcJob")
        spec.outline(
            cls.setup,
            while_(cls.should_try)(
                cls.generate,
                cls.check,
                if_(cls.checked_ok)(cls.run_lammps, cls.evaluate),
                cls.decide,
            ),
            cls.finalize,
        )
        spec.output("script", valid_type=orm.SinglefileData, required=False, help="the script that passed")
        spec.output("evaluation", valid_type=orm.Dict, required=False)
        spec.output("retrieved", valid_type=orm.FolderData, required=False, help="log and output of the run")
        spec.exit_code(300, "ERROR_LLM_UNAVAILABLE", message="the LLM endpoint failed: {message}")
        spec.exit_code(310, "ERROR_NO_VALID_SCRIPT", message="no attempt produced a script that passed preflight")
        spec.exit_code(320, "ERROR_MAX_ATTEMPTS", message="no run passed evaluation in {attempts} attempts")
        spec.exit_code(330, "ERROR_STUCK", message="stuck: the same script or error {times} times in a row")

    # -- the loop ---------------------------------------------------------------------------------------------
    def setup(self):
        self.ctx.policy = LoopPolicy(**self.inputs.loop.get_dict()).model_dump(mode="json")
        self.ctx.attempt = 0
        self.ctx.records = []
        self.ctx.feedback = []
        self.ctx.passed = False
        self.ctx.ran_any = False
        task = self.inputs.task.value
        caps = capabilities()
        elements = task_elements(task)
        potentials = [PotentialInfo(name=p.name, pair_style=p.style or "?", elements=p.elements)
                      for p in find_potentials(elements)[:20]] if elements else []
        limits = Limits(**self.inputs.limits.get_dict())
        self.ctx.capabilities = SiteCapabilities(lammps_version=caps.version, packages=list(caps.packages),
                                                 potentials=potentials, limits=describe_limits(limits)
                                                 ).model_dump(mode="json")
        self.node.base.extras.set_many({"task": task, "verdict": "running", "attempts": 0})
        self.report(f"task: {task!r}; elements {elements or 'none named'}; {len(potentials)} potentials offered")

    def should_try(self):
        policy = LoopPolicy(**self.ctx.policy)
        records = [AttemptRecord(**r) for r in self.ctx.records]
        return not self.ctx.passed and self.ctx.attempt < policy.max_attempts and not should_stop_stuck(records, policy)

    def generate(self):
        self.ctx.attempt += 1
        policy = LoopPolicy(**self.ctx.policy)
        records = [AttemptRecord(**r) for r in self.ctx.records]
        stuck = is_stuck(records)
        settings = dict(self.inputs.llm.get_dict())
        settings["temperature"] = next_temperature(settings.get("temperature", 0.2), records, policy)
        messages = build_messages(self.inputs.task.value, SiteCapabilities(**self.ctx.capabilities),
                                  [AttemptFeedback(**f) for f in self.ctx.feedback], stuck=stuck)
        self.report(f"attempt {self.ctx.attempt}: generating (temperature {settings['temperature']:.2f}"
                    f"{', stuck: asking for a new strategy' if stuck else ''})")
        self.node.base.extras.set("attempts", self.ctx.attempt)
        future = self.submit(GenerateScript, messages=orm.List(messages), settings=orm.Dict(settings),
                             metadata={"call_link_label": f"generate_{self.ctx.attempt}"})
        return ToContext(generation=future)

    def check(self):
        gen = self.ctx.generation
        self.ctx.checked = False
        self.ctx.script_text = ""
        if gen.exit_status == GenerateScript.exit_codes.ERROR_LLM_UNAVAILABLE.status:
            failure = gen.outputs.response.get_dict()
            self.node.base.extras.set("verdict", "failed")
            return self.exit_codes.ERROR_LLM_UNAVAILABLE.format(message=f"{failure['error']}: {failure['message']}")
        response = gen.outputs.response.get_dict()
        if "script" not in gen.outputs:
            problems = response.get("problems") or [_diag("generate.no_script", "the answer held no script")]
            self.report(f"attempt {self.ctx.attempt}: no script in the answer ({problems[0]['message']})")
            self._record("generate", "", problems)
            return None
        script = gen.outputs.script
        self.ctx.script_text = script.get_content()
        files = dict(gen.outputs.files) if "files" in gen.outputs else {}
        report = preflight_script(script, self.inputs.limits, **files,
                                  metadata={"call_link_label": f"preflight_{self.ctx.attempt}"}).get_dict()
        refused = [_diag("policy.path", f"the extra file name '{name}' is not a plain name in the run folder",
                         "name extra files like data.lmp, without folders") for name in response["refused_files"]]
        if refused:
            report["ok"] = False
            report["diagnostics"] = refused + report["diagnostics"]
        if not report["ok"]:
            errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
            self.report(f"attempt {self.ctx.attempt}: preflight failed: {errors[0]['code']} at line "
                        f"{errors[0].get('line')}: {errors[0]['message']}")
            self._record("preflight", self.ctx.script_text, report["diagnostics"])
            return None
        self.ctx.checked = True
        self.ctx.potential_paths = {p["name"]: p["resolved"] for p in report["potentials"]
                                    if p.get("resolved") and p.get("source") != "run-folder"}
        self.report(f"attempt {self.ctx.attempt}: preflight passed ({len(report['diagnostics'])} notes)")
        return None

    def checked_ok(self):
        return self.ctx.checked

    def run_lammps(self):
        gen = self.ctx.generation
        inputs = {"code": self.inputs.code, "script": gen.outputs.script,
                  "metadata": {"options": self.inputs.options.get_dict(),
                               "call_link_label": f"run_{self.ctx.attempt}"}}
        if "files" in gen.outputs:
            inputs["files"] = dict(gen.outputs.files)
        if self.ctx.potential_paths:
            inputs["potentials"] = {node_key(Path(name).name): orm.SinglefileData(path, filename=Path(name).name)
                                    for name, path in self.ctx.potential_paths.items()}
        self.report(f"attempt {self.ctx.attempt}: running LAMMPS on {self.inputs.code.full_label}")
        return ToContext(calc=self.submit(LammpsCalculation, **inputs))

    def evaluate(self):
        calc = self.ctx.calc
        self.ctx.ran_any = True
        if "retrieved" not in calc.outputs:
            message = f"the LAMMPS job failed before producing output: {calc.exit_message or calc.process_state}"
            self.report(f"attempt {self.ctx.attempt}: {message}")
            self._record("run", self.ctx.script_text, [_diag("run.failed", message)])
            return
        evaluation = evaluate_run(calc.outputs.retrieved, self.ctx.generation.outputs.script,
                                  metadata={"call_link_label": f"evaluate_{self.ctx.attempt}"})
        result = Evaluation(**evaluation.get_dict())
        policy = LoopPolicy(**self.ctx.policy)
        ok = passes(result, policy)
        worst = next((f for f in result.findings if f.severity == Severity.ERROR), None)
        self.report(f"attempt {self.ctx.attempt}: evaluated {result.grade.value}, reward {result.reward:.2f}"
                    + (f" ({worst.rule}: {worst.message})" if worst else ""))
        if ok:
            self.ctx.passed = True
            self.out("script", self.ctx.generation.outputs.script)
            self.out("evaluation", evaluation)
            self.out("retrieved", calc.outputs.retrieved)
            self.ctx.evaluation = result.model_dump(mode="json")
            self.ctx.records.append(AttemptRecord(attempt=self.ctx.attempt, stage="evaluate", passed=True,
                                                  script_sha=script_sha(self.ctx.script_text)).model_dump())
            return
        findings = "; ".join(f"{f.rule}: {f.message}" + (f" (hint: {f.hint})" if f.hint else "")
                             for f in result.findings if f.severity != Severity.INFO)
        self._record("evaluate", self.ctx.script_text, [], evaluation=f"grade {result.grade.value}, reward "
                     f"{result.reward:.2f}. {findings}", key=evaluation_error_key(result) or f"eval:{result.grade}")

    def decide(self):
        if self.ctx.passed:
            return
        records = [AttemptRecord(**r) for r in self.ctx.records]
        policy = LoopPolicy(**self.ctx.policy)
        if should_stop_stuck(records, policy):
            self.report(f"stuck: the same script or error {policy.stuck_limit} times in a row; stopping")

    def finalize(self):
        attempts = self.ctx.attempt
        if self.ctx.passed:
            grade = self.ctx.evaluation["grade"]
            self.node.base.extras.set_many({"verdict": "passed", "grade": grade,
                                            "reward": self.ctx.evaluation["reward"]})
            self.report(f"passed after {attempts} attempt(s), grade {grade}")
            return None
        records = [AttemptRecord(**r) for r in self.ctx.records]
        policy = LoopPolicy(**self.ctx.policy)
        self.node.base.extras.set("verdict", "failed")
        if should_stop_stuck(records, policy) and attempts < policy.max_attempts:
            return self.exit_codes.ERROR_STUCK.format(times=policy.stuck_limit)
        if not self.ctx.ran_any:
            return self.exit_codes.ERROR_NO_VALID_SCRIPT
        return self.exit_codes.ERROR_MAX_ATTEMPTS.format(attempts=attempts)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _record(self, stage: str, script: str, diagnostics: list[dict], evaluation: str | None = None,
                key: str | None = None) -> None:
        parsed = [Diagnostic(**d) for d in diagnostics]
        self.ctx.feedback.append(AttemptFeedback(attempt=self.ctx.attempt, script=script, diagnostics=parsed,
                                                 evaluation=evaluation, stage=stage).model_dump(mode="json"))
        self.ctx.records.append(AttemptRecord(attempt=self.ctx.attempt, stage=stage,
                                              script_sha=script_sha(script) if script else None,
                                              error_key=key or error_key(parsed)).model_dump())
