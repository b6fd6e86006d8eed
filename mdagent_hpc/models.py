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
