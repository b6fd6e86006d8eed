"""AgentWorkChain (`mdagent.agent`): generate, preflight, run, evaluate, decide; until it passes or stops.

Each step is AiiDA plumbing around a decision of `mdagent_hpc.agent` (pure functions). Every attempt, whatever
stage it reached, is recorded as one `models.Attempt` in the output `attempts.attempt_N` (a stored Dict: cheap,
and readable by `provenance.runs` while the run goes on); the steps it took are nodes linked as
`generate_N`, `preflight_N`, `dryrun_N`, `dryrun_report_N`, `run_N` and `evaluate_N`, their pks in `Attempt.nodes`.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from mdagent_hpc.agent import feedback
from mdagent_hpc.agent.candidates import judge
from mdagent_hpc.agent.loop import (
    EXIT_CODES,
    SiteRun,
    Stop,
    error_key,
    evaluation_error_key,
    exit_code,
    is_stuck,
    next_temperature,
    passes,
    script_sha,
    stop_reason,
)
from mdagent_hpc.agent.staging import (
    files_to_stage,
    offered_potentials,
    potentials_to_stage,
    refused_files,
)
from mdagent_hpc.lammps.install import capabilities
from mdagent_hpc.lammps.potentials import find_potentials
from mdagent_hpc.llm.grammar import lammps_grammar
from mdagent_hpc.llm.prompts import SiteCapabilities, build_messages, describe_limits, task_elements
from mdagent_hpc.models import (
    Attempt,
    Diagnostic,
    Evaluation,
    Job,
    Limits,
    LoopPolicy,
    PreflightReport,
    Severity,
    Stage,
    Usage,
)
from mdagent_hpc.workflows.broker import PatientWithBroker
from mdagent_hpc.workflows.calcfunctions import dry_run_report, evaluate_run, preflight_script
from mdagent_hpc.workflows.candidates import candidate_inputs, preflight_candidates, reports_of
from mdagent_hpc.workflows.generate import GenerateScript, LinksOnlyNewOutputs
from mdagent_hpc.workflows.lammps_calc import node_key
from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain
from mdagent_hpc.workflows.owned import OwnedSteps

DRY_RUN_WALLTIME_S = 600


class AgentWorkChain(PatientWithBroker, OwnedSteps, LinksOnlyNewOutputs, WorkChain):
    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("task", valid_type=orm.Str, help="what the user asked for, in plain language")
        spec.input("code", valid_type=orm.AbstractCode, help="the LAMMPS code to run on")
        spec.input("llm", valid_type=orm.Dict, help="endpoint and sampling settings (never the API key)")
        spec.input("loop", valid_type=orm.Dict, default=lambda: orm.Dict(LoopPolicy().model_dump(mode="json")))
        spec.input("limits", valid_type=orm.Dict, default=lambda: orm.Dict(Limits().model_dump()))
        spec.input(
            "options",
            valid_type=orm.Dict,
            default=lambda: orm.Dict({"max_wallclock_seconds": 3600}),
            help="metadata.options of the LAMMPS CalcJob",
        )
        spec.input(
            "site",
            valid_type=orm.Dict,
            default=lambda: orm.Dict(SiteRun().model_dump()),
            help="the site's name, where the dry run happens, and what to do when a job dies",
        )
        spec.input(
            "variables",
            valid_type=orm.Dict,
            required=False,
            help="LAMMPS variables for every job (`-var NAME VALUE`): a sweep template's probe point",
        )
        spec.outline(
            cls.setup,
            while_(cls.should_go_on)(
                cls.generate,
                cls.preflight,
                if_(cls.needs_dry_run_job)(cls.dry_run_job, cls.check_dry_run_job),
                if_(cls.ready_to_run)(cls.run_lammps, cls.evaluate),
                cls.decide,
            ),
            cls.finalize,
        )
        spec.output("script", valid_type=orm.SinglefileData, required=False, help="the script that passed")
        spec.output("evaluation", valid_type=orm.Dict, required=False)
        spec.output("retrieved", valid_type=orm.FolderData, required=False, help="log and output of the run")
        spec.output_namespace(
            "attempts",
            valid_type=orm.Dict,
            dynamic=True,
            required=False,
            help="attempt_N: every attempt as a models.Attempt",
        )
        for status, name, message in EXIT_CODES:
            spec.exit_code(status, name, message=message)

    # -- the loop ---------------------------------------------------------------------------------------------
    def setup(self):
        task = self.inputs.task.value
        self.ctx.attempts = []  # finished attempts: the stored Dict records (models.Attempt)
        self.ctx.restart_files = {}  # restart files a cut-off run left, for the next attempt
        elements = task_elements(task)
        potentials = offered_potentials(elements, find_potentials(elements) if elements else [])
        caps = capabilities()
        self.ctx.capabilities = SiteCapabilities(
            lammps_version=caps.version,
            packages=list(caps.packages),
            potentials=potentials,
            limits=describe_limits(Limits(**self.inputs.limits.get_dict())),
        ).model_dump(mode="json")
        site = SiteRun(**self.inputs.site.get_dict())
        # Stored once, for every preflight and LAMMPS job of this run.
        self.ctx.dry_here = orm.Bool(site.dry_run == "here").store()
        base = LammpsJobWorkChain.spec().inputs
        self.ctx.job_inputs = {
            "on_failure": orm.Dict(site.on_failure).store(),
            "site": orm.Str(site.name).store(),
            "max_iterations": base["max_iterations"].default().store(),
            "clean_workdir": base["clean_workdir"].default().store(),
        }
        # Grammar-constrained generation: the grammar of this LAMMPS's own command and style names, stored once.
        if self.inputs.llm.get_dict().get("structured_output") == "grammar":
            self.ctx.grammar = orm.Str(lammps_grammar(caps.styles)).store()
        self.ctx.fallback = None  # why the server's structured output is not used, once it refused it
        self.ctx.context_tokens = None  # the model's context length, once a generation learnt it
        self.node.base.extras.set_many({"task": task, "site": site.name, "verdict": "running", "attempts": 0})
        self.report(f"task: {task!r}; elements {elements or 'none named'}; {len(potentials)} potentials offered")

    def should_go_on(self):
        return stop_reason(self._history(), self._policy()) is None

    def generate(self):
        history, policy = self._history(), self._policy()
        number = len(history) + 1
        self.ctx.current = Attempt(number=number, stage=Stage.GENERATE).model_dump(mode="json")
        self.ctx.failure = []  # diagnostics of what stopped this attempt
        self.ctx.error_key = None
        self.ctx.files = {}  # file name -> SinglefileData staged next to the script
        self.ctx.potentials = {}  # port name -> potential file
        stuck = is_stuck(history)
        settings = dict(self.inputs.llm.get_dict())
        settings["temperature"] = next_temperature(settings.get("temperature", 0.2), history, policy)
        if self.ctx.fallback:  # in the inputs, so a run resumed elsewhere does not ask again
            settings["structured_output"] = "off"
        if self.ctx.context_tokens:
            settings["context_tokens"] = self.ctx.context_tokens
        grammar = settings.get("structured_output") == "grammar"
        budget = {"context_tokens": self.ctx.context_tokens, "answer_tokens": settings.get("max_tokens", 4096)}
        messages = build_messages(
            self.inputs.task.value,
            SiteCapabilities(**self.ctx.capabilities),
            [a for a in history if not a.passed],
            stuck=stuck,
            **budget,
            answer="script" if grammar else "json",
        )
        self.report(
            f"attempt {number}: generating (temperature {settings['temperature']:.2f}"
            f"{', stuck: asking for a new strategy' if stuck else ''})"
        )
        self.node.base.extras.set("attempts", number)
        future = self.submit(
            GenerateScript,
            messages=orm.List(messages),
            settings=orm.Dict(settings),
            **({"grammar": self.ctx.grammar} if grammar else {}),
            metadata={"call_link_label": f"generate_{number}"},
        )
        return ToContext(generation=future)

    def preflight(self):
        gen = self.ctx.generation
        self._took("generate", gen)
        response = gen.outputs.response.get_dict()
        self._update(
            usage=Usage(
                model=response.get("model"),
                latency_s=response.get("latency_s"),
                prompt_tokens=(response.get("usage") or {}).get("prompt_tokens"),
                completion_tokens=(response.get("usage") or {}).get("completion_tokens"),
            )
        )
        if gen.exit_status == GenerateScript.exit_codes.ERROR_LLM_UNAVAILABLE.status:
            self._fail(Stage.GENERATE, [feedback.endpoint_failed(response["error"], response["message"])])
            return
        self.ctx.context_tokens = response.get("context_tokens") or self.ctx.context_tokens
        if response.get("fallback") and not self.ctx.fallback:
            self.ctx.fallback = response["fallback"]
            self.report(f"{response['fallback']}: answers are read from fenced code blocks from now on")
        candidates = self._candidates(gen, response)
        if not any(script for script, _, _ in candidates.values()):
            self._fail(Stage.GENERATE, feedback.no_script([Diagnostic(**d) for d in response.get("problems", [])]))
            return
        if len(candidates) == 1:
            self.ctx.script, files, names = candidates[1]
            refused = refused_files(names)
            self.ctx.files = files_to_stage(files, self.ctx.restart_files)
            check = preflight_script(
                self.ctx.script,
                self.inputs.limits,
                dry=self.ctx.dry_here,
                **{node_key(name): f for name, f in self.ctx.files.items()},
                metadata={"call_link_label": f"preflight_{self._number()}"},
            )
            report = PreflightReport(**check.get_dict())
        else:
            check, report, refused = self._best_of(candidates)
        self._took("preflight", check.creator)
        script = self.ctx.script
        self._update(
            stage=Stage.PREFLIGHT,
            script=script.get_content(),
            files=sorted(self.ctx.files),
            script_sha=script_sha(script.get_content()),
        )
        if refused or not report.ok:
            self._fail(Stage.PREFLIGHT, refused + report.diagnostics)
            return
        self._update(diagnostics=[d for d in report.diagnostics if d.severity != Severity.INFO])
        # Stored now: the dry-run job and the run stage the same nodes.
        self.ctx.potentials = {
            node_key(name): orm.SinglefileData(path, filename=name).store()
            for name, path in potentials_to_stage(report).items()
        }
        where = "" if self.ctx.dry_here.value else f"; dry run next, as a short job on {self.inputs.site['name']}"
        self.report(f"attempt {self._number()}: preflight passed ({len(report.diagnostics)} notes{where})")

    def needs_dry_run_job(self):
        return not self.ctx.failure and self.inputs.site["dry_run"] == "job"

    def dry_run_job(self):
        self._update(stage=Stage.DRY_RUN)
        options = self.inputs.options.get_dict()
        options["max_wallclock_seconds"] = min(
            options.get("max_wallclock_seconds", DRY_RUN_WALLTIME_S), DRY_RUN_WALLTIME_S
        )
        self.report(f"attempt {self._number()}: dry run (lmp -skiprun) on {self.inputs.code.full_label}")
        return ToContext(dry_run=self._submit_lammps(options, f"dryrun_{self._number()}", skiprun=True))

    def check_dry_run_job(self):
        job = self.ctx.dry_run
        self._took("dry_run", job)
        if "retrieved" not in job.outputs:
            self._fail(Stage.DRY_RUN, [feedback.dry_run_job_failed(job.exit_message or str(job.process_state))])
            return
        report = dry_run_report(
            job.outputs.retrieved,
            self.ctx.script,
            self.inputs.limits,
            metadata={"call_link_label": f"dryrun_report_{self._number()}"},
        )
        self._took("dry_run_report", report.creator)
        diagnostics = [Diagnostic(**d) for d in report["diagnostics"]]
        if not report["ok"]:
            self._fail(Stage.DRY_RUN, diagnostics)

    def ready_to_run(self):
        return not self.ctx.failure

    def run_lammps(self):
        self._update(stage=Stage.RUN)
        self.report(f"attempt {self._number()}: running LAMMPS on {self.inputs.code.full_label}")
        return ToContext(run=self._submit_lammps(self.inputs.options.get_dict(), f"run_{self._number()}"))

    def evaluate(self):
        run = self.ctx.run
        self._took("run", run)
        job = Job(**run.outputs.job.get_dict()) if "job" in run.outputs else Job(site=self.inputs.site["name"])
        restart = dict(run.outputs.restart_files) if "restart_files" in run.outputs else {}
        self.ctx.restart_files = {node.filename: node for node in restart.values()}
        self._update(job=job)
        if run.exit_status == LammpsJobWorkChain.exit_codes.ERROR_JOB_FAULT.status and job.fault:
            walltime = self.inputs.options.get_dict().get("max_wallclock_seconds")
            problem = feedback.run_fault(job, run.exit_message or "", sorted(self.ctx.restart_files), walltime)
            self._fail(Stage.RUN, [problem], key=f"run:{job.fault}")
            return
        if "retrieved" not in run.outputs:
            self._fail(Stage.RUN, [feedback.run_failed(run.exit_message or str(run.process_state))])
            return
        script = self.ctx.script
        node = evaluate_run(run.outputs.retrieved, script, metadata={"call_link_label": f"evaluate_{self._number()}"})
        self._took("evaluate", node.creator)
        evaluation = Evaluation(**node.get_dict())
        worst = next((f for f in evaluation.findings if f.severity == Severity.ERROR), None)
        self.report(
            f"attempt {self._number()}: evaluated {evaluation.grade.value}, reward {evaluation.reward:.2f}"
            + (f" ({worst.rule}: {worst.message})" if worst else "")
        )
        self._update(stage=Stage.EVALUATE, evaluation=evaluation)
        if passes(evaluation, self._policy()):
            self._update(passed=True)
            self.out("script", script)
            self.out("evaluation", node)
            self.out("retrieved", run.outputs.retrieved)
            return
        self._fail(Stage.EVALUATE, [], evaluation=evaluation, key=evaluation_error_key(evaluation))

    def decide(self):
        """Close the attempt: what the model will hear about it, its record in provenance; then go on or stop."""
        attempt = Attempt(**self.ctx.current)
        if not attempt.passed:
            attempt.feedback = feedback.feedback_text(
                self._failure(), attempt.evaluation, self._lessons(), script=attempt.script
            )
            attempt.error_key = self.ctx.error_key or error_key(self._failure())
        record = orm.Dict(attempt.model_dump(mode="json")).store()
        self.ctx.attempts.append(record)
        self.out(f"attempts.attempt_{attempt.number}", record)
        reason = stop_reason(self._history(), self._policy())
        if reason == Stop.STUCK:
            self.report(f"stuck: the same script or error {self._policy().stuck_limit} times in a row; stopping")

    def finalize(self):
        history, policy = self._history(), self._policy()
        outcome = exit_code(history, policy)
        if outcome is None:
            evaluation = history[-1].evaluation
            self.node.base.extras.set_many(
                {"verdict": "passed", "grade": evaluation.grade.value, "reward": evaluation.reward}
            )
            self.report(f"passed after {len(history)} attempt(s), grade {evaluation.grade.value}")
            return None
        self.node.base.extras.set("verdict", "failed")
        name, params = outcome
        return self.exit_codes[name].format(**params)

    def on_terminated(self):
        """Record the fields provenance queries filter on (docs/queries.md), however the run ended."""
        super().on_terminated()
        from mdagent_hpc.provenance.query import STOP_REASON, record_run, stop_reason

        try:
            self.node.base.extras.set(STOP_REASON, stop_reason(self.node))
            record_run(self.node)
        except Exception as exc:  # noqa: BLE001 (the run's outcome stands; its fields can be recorded again)
            self.logger.warning(
                f"could not record the query fields of run {self.node.pk} ({exc}); `mdagent runs index` records them"
            )

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _lessons(self) -> list:
        """Failures of earlier runs like this one and the change that got past them (agent/memory.py): from the
        owner's runs only (the group's when the server shares reads), never another user's errors and scripts."""
        from mdagent_hpc.provenance import run_caller
        from mdagent_hpc.provenance.lessons import past_lessons

        return past_lessons(run_caller(self.node), exclude=self.node.pk)

    def _policy(self) -> LoopPolicy:
        return LoopPolicy(**self.inputs.loop.get_dict())

    def _history(self) -> list[Attempt]:
        return [Attempt(**record.get_dict()) for record in self.ctx.attempts]

    def _number(self) -> int:
        return self.ctx.current["number"]

    def _update(self, **fields) -> None:
        current = Attempt(**self.ctx.current).model_copy(update=fields)
        self.ctx.current = current.model_dump(mode="json")

    def _failure(self) -> list[Diagnostic]:
        return [Diagnostic(**d) for d in self.ctx.failure]

    def _fail(
        self, stage: Stage, problems: list[Diagnostic], evaluation: Evaluation | None = None, key: str | None = None
    ) -> None:
        """This attempt stops at `stage` because of `problems` (or of its evaluation, reported already)."""
        self.ctx.failure = [d.model_dump(mode="json") for d in problems]
        self.ctx.error_key = key
        self._update(stage=stage, diagnostics=Attempt(**self.ctx.current).diagnostics + problems)
        if problems:
            first = next((d for d in problems if d.severity == Severity.ERROR), problems[0])
            line = f" at line {first.line}" if first.line else ""
            self.report(f"attempt {self._number()}: {stage.value} failed: {first.code}{line}: {first.message}")

    def _took(self, step: str, node) -> None:
        """Record the node of a step and the wall time it took."""
        current = Attempt(**self.ctx.current)
        self._update(
            nodes={**current.nodes, step: node.pk},
            seconds={**current.seconds, step: round((node.mtime - node.ctime).total_seconds(), 3)},
        )

    @staticmethod
    def _candidates(gen, response: dict) -> dict:
        """Answer number -> (its script node or None, its files by name, its refused file names)."""
        answers = response.get("choices") or [response]
        extra = dict(gen.outputs.candidates) if "candidates" in gen.outputs else {}
        found = {}
        for number, answer in enumerate(answers, 1):
            if number == 1:
                script = gen.outputs.script if "script" in gen.outputs else None
                files = {n.filename: n for n in gen.outputs.files.values()} if "files" in gen.outputs else {}
            else:
                script = extra.get(f"candidate_{number}")
                files = {n.filename: n for k, n in extra.items() if k.startswith(f"candidate_{number}_file_")}
            found[number] = (script, files, answer.get("refused_files", []))
        return found

    def _best_of(self, candidates: dict):
        """Preflight every candidate at once; the best goes on (`ctx.script`, `ctx.files`); each verdict is recorded."""
        with_script = {
            n: (script, files_to_stage(files, self.ctx.restart_files), refused)
            for n, (script, files, refused) in candidates.items()
            if script is not None
        }
        check = preflight_candidates(
            self.inputs.limits,
            self.ctx.dry_here,
            **candidate_inputs({n: (s, f) for n, (s, f, _) in with_script.items()}),
            metadata={"call_link_label": f"preflight_{self._number()}"},
        )
        reports = reports_of(check)
        verdicts = judge(
            {n: (c[0].get_content() if c[0] is not None else None) for n, c in candidates.items()},
            reports,
            {n: refused_files(r) for n, (_, _, r) in with_script.items()},
        )
        best = next(v.number for v in verdicts if v.chosen)
        self.ctx.script, self.ctx.files, names = with_script[best]
        self._update(candidates=verdicts)
        passed = sum(v.ok for v in verdicts)
        self.report(
            f"attempt {self._number()}: {len(verdicts)} candidates, {passed} passed preflight; candidate {best} goes on"
        )
        return check, reports[best], refused_files(names)

    def _submit_lammps(self, options: dict, label: str, skiprun: bool = False):
        lammps = {"code": self.inputs.code, "script": self.ctx.script, "metadata": {"options": options}}
        if self.ctx.files:
            lammps["files"] = {node_key(name): f for name, f in self.ctx.files.items()}
        if self.ctx.potentials:
            lammps["potentials"] = self.ctx.potentials
        if skiprun:
            lammps["skiprun"] = orm.Bool(True)
        if "variables" in self.inputs:
            lammps["variables"] = self.inputs.variables
        return self.submit(
            LammpsJobWorkChain, lammps=lammps, **self.ctx.job_inputs, metadata={"call_link_label": label}
        )
