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

    def render(self) -> str:
        where = f"{self.file or 'script'}:{self.line}" if self.line else (self.file or "script")
        text = f"{self.severity.value.upper()} {where} [{self.code}] {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class Limits(BaseModel):
    """What an agent-written script may ask for. Sites override these."""

    max_atoms: int = 1_000_000
    max_steps: int = 10_000_000
    max_walltime_s: float = 24 * 3600
    skiprun_timeout_s: float = 60.0


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
