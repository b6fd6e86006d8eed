"""Pydantic types shared by every layer. Plain data: no I/O, no AiiDA, no HTTP."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Diagnostic(BaseModel):
    """One thing a check found, pointing at the script line that caused it."""

    severity: Severity
    code: str = Field(description="stable identifier, e.g. 'policy.shell', 'potential.missing', 'lammps.error'")
    message: str
    line: int | None = Field(None, description="1-based line in `file` where the command starts")
    file: str | None = Field(None, description="script file the line is in, relative to the run folder")
    command: str | None = Field(None, description="the command as LAMMPS would execute it")
    hint: str | None = Field(None, description="what to change")

    @classmethod
    def at(
        cls,
        command: Command,
        code: str,
        message: str,
        hint: str | None = None,
        severity: Severity = Severity.ERROR,
        words: list[str] | None = None,
    ) -> Diagnostic:
        """A diagnostic pointing at `command` (shown as `words` when given: the variant that was judged)."""
        return cls(
            severity=severity,
            code=code,
            message=message,
            line=command.line,
            file=command.file,
            command=" ".join(words) if words else command.text,
            hint=hint,
        )

    def render(self) -> str:
        where = f"{self.file or 'script'}:{self.line}" if self.line else (self.file or "script")
        text = f"{self.severity.value.upper()} {where} [{self.code}] {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class LimitError(ValueError):
    """A request's limit above its site's, in one sentence."""


class Limits(BaseModel):
    """What an agent-written script may ask for. A site sets them; a request may lower them, never raise them."""

    max_atoms: int = Field(1_000_000, gt=0)
    max_steps: int = Field(10_000_000, gt=0)
    max_walltime_s: float = Field(24 * 3600, gt=0, allow_inf_nan=False)
    skiprun_timeout_s: float = Field(60.0, gt=0, allow_inf_nan=False)

    def within(self, ceiling: Limits, site: str) -> Limits:
        """These limits where they were given, `ceiling`'s (the site's) elsewhere; one above the site's raises
        `LimitError`."""
        given = {name: getattr(self, name) for name in self.model_fields_set}
        for name, value in given.items():
            if value > getattr(ceiling, name):
                raise LimitError(
                    f"limits.{name} {value:g} is above site {site}'s {getattr(ceiling, name):g}: a request may "
                    "lower the site's limits, not raise them"
                )
        return Limits(**{**ceiling.model_dump(), **given})


class FileAccess(BaseModel):
    """A file a script reads or writes, as LAMMPS will see the path."""

    path: str
    mode: str = Field(description="'read' or 'write'")
    kind: str = Field(description="data, restart, include, molecule, potential, dump, log, print, fix, ...")
    line: int
    file: str
    command: str


class Command(BaseModel):
    """One LAMMPS command after joining `&` continuations and stripping comments."""

    line: int = Field(description="1-based line where the command starts in `file`")
    file: str = Field(description="script file, relative to the run folder")
    text: str = Field(description="the command text as written (variables not substituted)")
    words: list[str] = Field(description="words after variable substitution where the value is known")
    variants: list[list[str]] = Field(
        default_factory=list,
        description="every distinct word list this command can execute as (loops, index variables)",
    )
    context: str = Field("", description="'if', 'run' or 'partition' when carried inside that command")

    @property
    def name(self) -> str:
        return self.words[0] if self.words else ""

    @property
    def args(self) -> list[str]:
        return self.words[1:]


class ParsedScript(BaseModel):
    main: str = Field(description="main input file, relative to the run folder")
    commands: list[Command]
    variables: dict[str, list[str]] = Field(
        default_factory=dict, description="variable name -> every value it may take ('0' when computed at run time)"
    )
    files: list[FileAccess] = Field(default_factory=list)
    diagnostics: list[Diagnostic] = Field(default_factory=list)

    def find(self, name: str) -> list[Command]:
        return [c for c in self.commands if c.name == name]


class PotentialUse(BaseModel):
    """A potential file a script uses, resolved to where it will come from."""

    name: str = Field(description="the name as written in the script")
    pair_style: str
    elements: list[str] = Field(default_factory=list, description="elements the script maps to atom types")
    resolved: str | None = Field(None, description="absolute path of the file that will be used")
    source: str | None = Field(None, description="run-folder, user-cache, site-cache, lammps, downloaded")
    md5: str | None = None
    line: int | None = None


class PreflightReport(BaseModel):
    script: str
    ok: bool
    diagnostics: list[Diagnostic]
    potentials: list[PotentialUse] = Field(default_factory=list)
    files: list[FileAccess] = Field(default_factory=list)
    skiprun_seconds: float | None = None
    seconds: float = 0.0


class Finding(BaseModel):
    """One judgement of the evaluator about a finished run."""

    rule: str = Field(description="stable rule id, e.g. 'completion', 'lost_atoms', 'energy_drift'")
    severity: Severity
    message: str
    value: float | None = None
    threshold: float | None = None
    hint: str | None = None


class Grade(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


class Evaluation(BaseModel):
    grade: Grade
    reward: float = Field(ge=0.0, le=1.0)
    findings: list[Finding]
    summary: dict[str, float | int | str | None] = Field(default_factory=dict)
    observables: dict[str, float] = Field(
        default_factory=dict,
        description="physical results read from the log, e.g. temp_final, temp_mean, press_mean, toteng_final",
    )


class LoopPolicy(BaseModel):
    max_attempts: int = Field(5, ge=1, le=50)
    pass_grade: Grade = Field(Grade.WARN, description="the worst grade that still passes (pass or warn)")
    min_reward: float = Field(0.5, ge=0.0, le=1.0)
    stuck_limit: int = Field(3, ge=2, description="the same script or error this many times in a row: stop")
    temperature_step: float = Field(0.3, description="added to the sampling temperature while stuck")
    max_temperature: float = 1.2


class Request(BaseModel):
    """What a user asks for: a task in plain language, where to run it, and how hard to try.

    A request file (`workflows/requests/*.yaml`) holds one; `answers` are recorded model answers to replay, so
    an example runs without an endpoint.
    """

    model_config = {"extra": "forbid"}

    task: str = Field(min_length=10, max_length=4000, description="the simulation, in plain language")
    site: str | None = Field(None, description="a site config name; None: this machine, sandboxed")
    model: str | None = Field(None, description="model name; None: MDAGENT_LLM_MODEL or the server's first")
    loop: LoopPolicy = Field(default_factory=lambda: LoopPolicy())
    limits: Limits | None = Field(None, description="None: the site's limits")
    answers: list[str] | None = Field(None, description="recorded model answers, replayed in order")
    description: str | None = None


class Stage(StrEnum):
    """How far an attempt got: the last step it reached."""

    GENERATE = "generate"
    PREFLIGHT = "preflight"
    DRY_RUN = "dry_run"
    RUN = "run"
    EVALUATE = "evaluate"


class Job(BaseModel):
    """The LAMMPS job of an attempt, as the scheduler saw it."""

    site: str = "local"
    job_id: str | None = None
    exit_status: int | None = None
    accounting: dict = Field(default_factory=dict, description="the scheduler's record (sacct fields)")
    fault: str | None = Field(None, description="cancelled, walltime, node_failure, connection_lost")
    action: str | None = Field(None, description="what the site's policy did about the fault")
    resubmissions: int = 0
    restarts: int = Field(0, description="continuations from restart files after a wall-time cut")
    workdir: str | None = None


class Usage(BaseModel):
    """What one generation cost."""

    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None


class Candidate(BaseModel):
    """One of the k scripts an attempt asked the model for (`candidates` > 1), as preflight judged it."""

    number: int = Field(ge=1, description="the answer's place in the model's reply")
    script_sha: str | None = Field(None, description="None: the answer held no script")
    ok: bool = Field(False, description="preflight passed")
    errors: int = 0
    warnings: int = 0
    first_error: str | None = Field(None, description="`code: message` of its first error")
    chosen: bool = Field(False, description="the one that went on as the attempt's script")


class Attempt(BaseModel):
    """Everything one attempt of the agent loop is: the one shape every consumer reads."""

    number: int = Field(ge=1)
    stage: Stage = Field(description="the last step this attempt reached")
    passed: bool = False
    script: str | None = None
    script_sha: str | None = None
    files: list[str] = Field(default_factory=list, description="extra files staged next to the script")
    diagnostics: list[Diagnostic] = Field(default_factory=list, description="what stopped or warned this attempt")
    evaluation: Evaluation | None = None
    job: Job | None = None
    feedback: str | None = Field(None, description="what the model was told about this attempt")
    error_key: str | None = Field(None, description="the first blocking problem, reduced to a comparable key")
    seconds: dict[str, float] = Field(default_factory=dict, description="step name -> wall seconds")
    usage: Usage = Field(default_factory=Usage)
    nodes: dict[str, int] = Field(default_factory=dict, description="step name -> provenance node pk")
    candidates: list[Candidate] = Field(
        default_factory=list, description="with k > 1 scripts asked for: each one's preflight verdict, best first"
    )


class Run(BaseModel):
    """One agent run as a user reads it: the request, the verdict, the passed script and every attempt."""

    pk: int
    uuid: str
    task: str
    site: str = "local"
    state: str | None = Field(None, description="AiiDA process state: created, waiting, running, finished, ...")
    exit_status: int | None = None
    exit_message: str | None = None
    verdict: str = Field("running", description="running, passed or failed")
    ctime: str
    seconds: float | None = None
    script: str | None = Field(None, description="the script that passed")
    evaluation: Evaluation | None = Field(None, description="the evaluation of the run that passed")
    attempts: list[Attempt] = Field(default_factory=list)

    @property
    def observables(self) -> dict[str, float]:
        return self.evaluation.observables if self.evaluation else {}
