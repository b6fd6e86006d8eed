"""AgentWorkChain (`mdagent.agent`): generate, preflight, run, evaluate, feed back; until pass or stop."""

from __future__ import annotations

from pathlib import Path

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from mdagent_hpc.agent.loop import (
    AttemptRecord,
    SiteRun,
    error_key,
    evaluation_error_key,
    is_stuck,
    next_temperature,
    passes,
    script_sha,
    should_stop_stuck,
)
from mdagent_hpc.execution.accounting import FAULT_MESSAGES, Fault, decide
from mdagent_hpc.execution.site import OnFailure
from mdagent_hpc.lammps.install import capabilities
from mdagent_hpc.lammps.potentials import find_potentials
from mdagent_hpc.llm import AttemptFeedback, PotentialInfo, SiteCapabilities, build_messages, task_elements
from mdagent_hpc.llm.prompts import describe_limits
from mdagent_hpc.models import Diagnostic, Evaluation, Limits, LoopPolicy, Severity
from mdagent_hpc.workflows.generate import GenerateScript
from mdagent_hpc.workflows.lammps_calc import LammpsCalculation, node_key
from mdagent_hpc.workflows.steps import dry_run_report, evaluate_run, preflight_script, restart_files_of


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
        spec.input("site", valid_type=orm.Dict, default=lambda: orm.Dict(SiteRun().model_dump()),
                   help="the site's name, where the dry run happens, and what to do when a job dies")
        spec.outline(
            cls.setup,
            while_(cls.should_try)(
                cls.generate,
                cls.check,
                if_(cls.needs_dry_run_job)(cls.dry_run_job, cls.check_dry_run_job),
                if_(cls.checked_ok)(
                    cls.run_lammps,
                    while_(cls.should_resubmit)(cls.run_lammps),
                    cls.evaluate,
                ),
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
        self.ctx.restart_files = {}
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
        self.ctx.runs = 0  # LAMMPS jobs of this attempt (1 + resubmissions)
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
        files = {**self.ctx.restart_files, **(dict(gen.outputs.files) if "files" in gen.outputs else {})}
        dry_here = self.inputs.site["dry_run"] == "here"
        report = preflight_script(script, self.inputs.limits, dry=orm.Bool(dry_here), **files,
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
        paths = {p["name"]: p["resolved"] for p in report["potentials"]
                 if p.get("resolved") and p.get("source") != "run-folder"}
        # Stored now: the dry-run job, the run and any resubmission stage the same nodes.
        self.ctx.potential_nodes = {node_key(Path(name).name): orm.SinglefileData(path, filename=Path(name).name)
                                    .store() for name, path in paths.items()}
        where = "" if dry_here else f"; dry run next, as a short job on {self.inputs.site['name']}"
        self.report(f"attempt {self.ctx.attempt}: preflight passed ({len(report['diagnostics'])} notes{where})")
        return None

    def needs_dry_run_job(self):
        return self.ctx.checked and self.inputs.site["dry_run"] == "job"

    def dry_run_job(self):
        options = self.inputs.options.get_dict()
        options["max_wallclock_seconds"] = min(options.get("max_wallclock_seconds", 600), 600)
        inputs = self._lammps_inputs(options, f"dryrun_{self.ctx.attempt}")
        inputs["skiprun"] = orm.Bool(True)
        self.report(f"attempt {self.ctx.attempt}: dry run (lmp -skiprun) on {self.inputs.code.full_label}")
        return ToContext(dry_calc=self.submit(LammpsCalculation, **inputs))

    def check_dry_run_job(self):
        calc = self.ctx.dry_calc
        if "retrieved" not in calc.outputs:
            message = f"the dry-run job failed before LAMMPS wrote anything: {calc.exit_message or calc.process_state}"
            self.report(f"attempt {self.ctx.attempt}: {message}")
            self._record("preflight", self.ctx.script_text, [_diag("preflight.job", message)])
            self.ctx.checked = False
            return
        report = dry_run_report(calc.outputs.retrieved, self.ctx.generation.outputs.script, self.inputs.limits,
                                metadata={"call_link_label": f"dryrun_report_{self.ctx.attempt}"}).get_dict()
        if not report["ok"]:
            errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
            self.report(f"attempt {self.ctx.attempt}: dry run failed: {errors[0]['message']}")
            self._record("preflight", self.ctx.script_text, report["diagnostics"])
            self.ctx.checked = False

    def checked_ok(self):
        return self.ctx.checked

    def run_lammps(self):
        self.ctx.runs += 1
        label = f"run_{self.ctx.attempt}" + (f"_{self.ctx.runs}" if self.ctx.runs > 1 else "")
        inputs = self._lammps_inputs(self.inputs.options.get_dict(), label)
        again = f" (resubmission {self.ctx.runs - 1})" if self.ctx.runs > 1 else ""
        self.report(f"attempt {self.ctx.attempt}: running LAMMPS on {self.inputs.code.full_label}{again}")
        return ToContext(calc=self.submit(LammpsCalculation, **inputs))

    def should_resubmit(self):
        """Read a fault the scheduler reports and apply the site's policy; True to run the same job again."""
        calc = self.ctx.calc
        self.ctx.fault = None
        fault = _fault(calc)
        if fault is None:
            return False
        results = calc.outputs.results.get_dict() if "results" in calc.outputs else {}
        policy = OnFailure(**self.inputs.site["on_failure"])
        action = decide(fault, policy, self.ctx.runs - 1, results.get("restart_files", []))
        job = f"job {calc.get_job_id()}" if calc.get_job_id() else "the job"
        self.report(f"attempt {self.ctx.attempt}: {job}: {FAULT_MESSAGES[fault]} (exit {calc.exit_status}); "
                    f"site policy: {action}")
        if action == "resubmit":
            return True
        self.ctx.fault = {"fault": fault.value, "action": action, "results": results,
                          "exit_status": calc.exit_status}
        return False

    def evaluate(self):
        calc = self.ctx.calc
        self.ctx.ran_any = True
        self.ctx.restart_files = {}
        if self.ctx.fault:
            self._record_fault(calc)
            return
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
    def _lammps_inputs(self, options: dict, label: str) -> dict:
        gen = self.ctx.generation
        inputs = {"code": self.inputs.code, "script": gen.outputs.script,
                  "metadata": {"options": options, "call_link_label": label}}
        files = {**self.ctx.restart_files, **(dict(gen.outputs.files) if "files" in gen.outputs else {})}
        if files:
            inputs["files"] = files
        if self.ctx.potential_nodes:
            inputs["potentials"] = self.ctx.potential_nodes
        return inputs

    def _record_fault(self, calc) -> None:
        """A job the scheduler killed: the agent hears what happened, and gets the restart files if asked to."""
        fault, action, results = Fault(self.ctx.fault["fault"]), self.ctx.fault["action"], self.ctx.fault["results"]
        step = f" at step {results['last_step']}" if results.get("last_step") is not None else ""
        message = f"{FAULT_MESSAGES[fault]}{step} (scheduler state {results.get('accounting', {}).get('State', '?')})"
        hint = None
        if action == "restart":
            self.ctx.restart_files = dict(restart_files_of(
                calc.outputs.retrieved, metadata={"call_link_label": f"restart_files_{self.ctx.attempt}"}))
            names = ", ".join(node.filename for node in self.ctx.restart_files.values())
            hint = (f"the restart file(s) {names} it wrote are in the run folder of the next run: continue from the "
                    "newest with read_restart, and run only the steps that remain")
        elif fault == Fault.WALLTIME:
            hint = ("write restart files (`restart N file.*`) so a run cut off can continue, or ask for fewer steps; "
                    f"the wall time is {self.inputs.options.get_dict().get('max_wallclock_seconds')} s")
        self.report(f"attempt {self.ctx.attempt}: {message}" + (f"; {hint}" if hint else ""))
        self._record("run", self.ctx.script_text, [_diag(f"run.{fault.value}", message, hint)], key=f"run:{fault}")

    def _record(self, stage: str, script: str, diagnostics: list[dict], evaluation: str | None = None,
                key: str | None = None) -> None:
        parsed = [Diagnostic(**d) for d in diagnostics]
        self.ctx.feedback.append(AttemptFeedback(attempt=self.ctx.attempt, script=script, diagnostics=parsed,
                                                 evaluation=evaluation, stage=stage).model_dump(mode="json"))
        self.ctx.records.append(AttemptRecord(attempt=self.ctx.attempt, stage=stage,
                                              script_sha=script_sha(script) if script else None,
                                              error_key=key or error_key(parsed)).model_dump())


def _fault(calc) -> Fault | None:
    """The scheduler fault behind a finished job, if there is one."""
    if calc.is_killed:
        return Fault.CANCELLED
    results = calc.outputs.results.get_dict() if "results" in calc.outputs else {}
    if results.get("fault"):
        return Fault(results["fault"])
    return {120: Fault.WALLTIME, 140: Fault.NODE_FAILURE, 350: Fault.CANCELLED}.get(calc.exit_status)
