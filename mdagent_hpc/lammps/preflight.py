"""Everything knowable before a job is queued: parse, policy, potentials, static checks, `lmp -skiprun`.

The dry run executes the script (every command but run/minimize), so it runs only when the policy found
nothing, in a scratch copy of the run folder, inside the sandbox when bubblewrap is there, under a timeout
and a memory cap. A timeout is a failure, never a pass.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from mdagent_hpc.lammps.install import LammpsInstall, find_lammps
from mdagent_hpc.lammps.log import parse_log
from mdagent_hpc.lammps.parser import ScriptError, parse_script
from mdagent_hpc.lammps.policy import check_policy
from mdagent_hpc.lammps.potentials import resolve_potentials
from mdagent_hpc.lammps.sandbox import bwrap_path, sandboxed
from mdagent_hpc.lammps.static import static_checks
from mdagent_hpc.models import Command, Diagnostic, Limits, ParsedScript, PreflightReport, Severity

DRY_RUN_MEMORY_BYTES = 4 * 1024**3
MAX_COPY_BYTES = 2 * 1024**3

# Errors that only happen because -skiprun skipped the runs that would have computed something.
SKIPRUN_ARTIFACTS = (
    "Energy was not tallied",
    "Virial was not tallied",
    "is not current",
    "used between runs is not current",
    "requires thermo to use/init",
    "cannot be invoked before initialization by a run",
    "not computed at compatible time",
    "Could not find compute ID SPECATOM_",  # fix reaxff/species deletes, at exit, a compute only a run creates
)
# A second dry run after a -skiprun artefact: runs become `run 0` (setup only), under this timeout at most.
SETUP_RUN_TIMEOUT_S = 10.0
_RUN_LINE = re.compile(r"^(\s*)(run|minimize|minimize/\w+|rerun)(\s.*)?$")
# Commands with their own dynamics loop that -skiprun's `timer timeout 0` does not end (prd loops forever):
# left out of the -skiprun pass, with a warning.
_OWN_LOOP_LINE = re.compile(r"^(\s*)(prd|tad)(\s.*)?$")

# (pattern in the LAMMPS error message, hint)
HINTS = [
    (
        r"Unrecognized (\w+) style '([^']+)' is part of the (\S+) package",
        "this LAMMPS lacks the {2} package; pick a {0} style from the installed packages",
    ),
    (r"Unrecognized (\w+) style '([^']+)'", "'{1}' is not a {0} style of this LAMMPS; check the spelling"),
    (r"Unknown command", "check the spelling; it may need a package this LAMMPS lacks"),
    (
        r"Cannot open (?:file|data file|restart file|include file|.*potential file) ([^\s:]+)",
        "the file {0} is not in the run folder or the potentials folders; create it or use an available file",
    ),
    (r"Cannot open", "a file the script reads is missing; create it in the run folder"),
    (r"Substitution for illegal variable", "define the variable before the line that uses it"),
    (r"Incorrect args for pair coefficients", "check the pair_coeff arguments against the pair_style's doc"),
    (r"Illegal (\S+) command", "check the arguments of {0} against the LAMMPS manual"),
    (r"All pair coeffs are not set", "set pair_coeff for every pair of atom types"),
    (r"Invalid atom type", "atom types run from 1 to the number given in create_box or the data file"),
    (r"Did not assign all atoms correctly", "the atoms lie outside the box; check the region and lattice"),
    (
        r"Element .* not in|not found in potential file|Element \S+ not defined",
        "the potential file does not describe that element; choose a file that does",
    ),
    (r"Pair style .* requires", "this pair style needs another setting first; read its doc's restrictions"),
    (r"Must have more than one processor partition", "run without partitions here"),
]


def _hint(message: str) -> str:
    for pattern, hint in HINTS:
        if m := re.search(pattern, message, re.IGNORECASE):
            return hint.format(*m.groups())
    return "read the LAMMPS manual page of this command and fix its arguments"


def _norm(text: str) -> str:
    return " ".join(text.replace('"', "").replace("'", "").split())


def find_command(script: ParsedScript, text: str, occurrence: int = 0) -> Command | None:
    """The command LAMMPS reported as `Last input line:`, matched on words after or before substitution.

    When several commands read the same, `occurrence` (k-th time this text was echoed) picks the k-th of them;
    without it, or in a loop, the last one."""
    target = _norm(text)
    if not target:
        return None
    same = [
        cmd
        for cmd in script.commands
        if target in (_norm(" ".join(cmd.words)), _norm(cmd.text))
        or any(target == _norm(" ".join(v)) for v in cmd.variants)
    ]
    if same:
        return same[occurrence - 1] if 0 < occurrence <= len(same) else same[-1]
    return next((c for c in reversed(script.commands) if target in _norm(c.text)), None) or next(
        (c for c in reversed(script.commands) if c.name == target.split()[0]), None
    )


def _copy_run_dir(src: Path, dest: Path, script: ParsedScript) -> None:
    """Copy what the dry run may read: the files at the top of the run folder and every file the script reads.

    Not the whole tree: a script in /tmp or a home folder would drag everything below it along (and /tmp holds
    the scratch folder itself).
    """
    wanted = {p for p in src.iterdir() if p.is_file() and not p.is_symlink()}
    wanted |= {src / f.path for f in script.files if f.mode == "read" and not Path(f.path).is_absolute()}
    wanted |= {src / c.file for c in script.commands}
    total = 0
    for path in sorted(wanted):
        try:
            if not path.is_file() or dest in path.parents or src.resolve() not in path.resolve().parents:
                continue
            total += path.stat().st_size
            if total > MAX_COPY_BYTES:
                raise ScriptError(
                    f"the run folder {src} holds over {MAX_COPY_BYTES // 1024**3} GB of files; "
                    "keep only the files the script reads there"
                )
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        except FileNotFoundError:  # another program's file, gone while we looked
            continue


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (DRY_RUN_MEMORY_BYTES, DRY_RUN_MEMORY_BYTES))


def _rewrite(scratch: Path, script: ParsedScript, pattern: re.Pattern, replacement: str) -> None:
    """Rewrite every script file in `scratch`: each command whose line matches `pattern` becomes `replacement`
    (group 1 of the pattern, the indentation, kept), its continuation lines blank."""
    for name in {c.file for c in script.commands}:
        path = scratch / name
        if not path.is_file():
            continue
        lines, out, skip = path.read_text(errors="replace").splitlines(), [], False
        for line in lines:
            if skip:  # continuation lines of a rewritten command
                skip = line.rstrip().endswith("&")
                out.append("")
                continue
            m = pattern.match(line)
            if m:
                skip = line.rstrip().endswith("&")
                line = f"{m.group(1)}{replacement}"
            out.append(line)
        path.write_text("\n".join(out) + "\n")


def _setup_only(scratch: Path, script: ParsedScript) -> None:
    """Rewrite every script file in `scratch` so that each run or minimization is `run 0 post no`."""
    _rewrite(scratch, script, _RUN_LINE, "run 0 post no")


def _own_loops(script: ParsedScript) -> list[Diagnostic]:
    return [
        Diagnostic.at(
            c,
            "preflight.skiprun_limit",
            f"the dry run cannot skip {c.name}'s own dynamics loop, so this command was left out of it",
            f"{c.name} is checked only by the real run",
            Severity.WARNING,
        )
        for c in script.commands
        if c.name in ("prd", "tad") and not c.context
    ]


def dry_run(
    script: ParsedScript,
    run_dir: Path,
    install: LammpsInstall,
    limits: Limits,
    stage: dict[str, Path],
    *,
    setup_runs: bool = False,
) -> tuple[list[Diagnostic], float, str]:
    """`lmp -skiprun` in a scratch copy; returns diagnostics, seconds, and the screen text.

    The screen output is read, not the log file: a script may switch or close its log (`log other.log`,
    `log none`), never the screen. `setup_runs`: instead of skipping runs, make each a `run 0` (setup only).
    """
    timeout = min(limits.skiprun_timeout_s, SETUP_RUN_TIMEOUT_S) if setup_runs else limits.skiprun_timeout_s
    with tempfile.TemporaryDirectory(prefix="mdagent-preflight-") as tmp:
        scratch = Path(tmp) / "run"
        scratch.mkdir()
        _copy_run_dir(run_dir, scratch, script)
        for name, path in stage.items():
            if not (scratch / name).exists():
                shutil.copyfile(path, scratch / name)
        if setup_runs:
            _setup_only(scratch, script)
        own_loops = _own_loops(script)
        if own_loops:
            _rewrite(scratch, script, _OWN_LOOP_LINE, "")
        flags = [] if setup_runs else ["-skiprun"]
        argv = install.command("-in", script.main, *flags, "-log", "none", "-echo", "screen", "-nocite")
        env = install.environ({"PATH": "/usr/bin:/bin", "HOME": str(scratch)})
        if bwrap_path():
            read_only = [install.potentials_dir] if install.potentials_dir else []
            argv = sandboxed(argv, scratch, env, read_only)
        start = time.monotonic()
        try:
            proc = subprocess.run(
                argv,
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                preexec_fn=_limit_memory,
            )
        except subprocess.TimeoutExpired:
            seconds = time.monotonic() - start
            what = "with each run made a `run 0`" if setup_runs else "(lmp -skiprun)"
            return (
                [
                    Diagnostic(
                        severity=Severity.ERROR,
                        code="preflight.timeout",
                        message=f"the dry run {what} did not finish in {timeout:.0f} s",
                        hint="the setup itself is too slow (huge system or loop); make it smaller",
                    )
                ],
                seconds,
                "",
            )
        seconds = time.monotonic() - start
    diags = skiprun_diagnostics(script, proc.stdout, proc.returncode, proc.stderr or proc.stdout, limits)
    return (own_loops if not setup_runs else []) + diags, seconds, proc.stdout


def skiprun_diagnostics(
    script: ParsedScript, log_text: str, returncode: int | None, output: str, limits: Limits
) -> list[Diagnostic]:
    """Diagnostics from a `lmp -skiprun` log (here or from a short job on a site), mapped to script lines."""
    diags: list[Diagnostic] = []
    log = parse_log(log_text)
    seen: set[tuple[str, str | None]] = set()
    for err in log.errors:
        if (err.message, err.last_input) in seen:  # the same error read from the log and from the screen
            continue
        seen.add((err.message, err.last_input))
        target = _norm(err.last_input or "")
        echoed = sum(1 for line, text in log.commands if line <= err.line and _norm(text) == target)
        cmd = find_command(script, err.last_input, echoed) if err.last_input else None
        artifact = any(a in err.message for a in SKIPRUN_ARTIFACTS)
        diags.append(
            Diagnostic(
                severity=Severity.WARNING if artifact else Severity.ERROR,
                code="preflight.skiprun_limit" if artifact else "lammps.error",
                message=err.message,
                line=cmd.line if cmd else None,
                file=cmd.file if cmd else None,
                command=cmd.text if cmd else err.last_input,
                hint=(
                    "the dry run skips runs, so this value is not computed yet; it is checked only in the real "
                    "run, and commands after this line were not dry-run"
                )
                if artifact
                else _hint(err.message),
            )
        )
    if returncode != 0 and not log.errors:
        tail = output.strip().splitlines()[-3:]
        diags.append(
            Diagnostic(
                severity=Severity.ERROR,
                code="preflight.crash",
                message=f"lmp -skiprun exited with status {returncode}: {' | '.join(tail)}",
                hint="LAMMPS stopped without an ERROR line; simplify the script around its end",
            )
        )
    if log.atoms and log.atoms > limits.max_atoms:
        cmd = _atoms_command(script, log_text, log.commands, limits.max_atoms)
        diags.append(
            Diagnostic(
                severity=Severity.ERROR,
                code="limit.atoms",
                message=f"the dry run created {log.atoms} atoms; the limit is {limits.max_atoms}",
                line=cmd.line if cmd else None,
                file=cmd.file if cmd else None,
                command=cmd.text if cmd else None,
                hint="use a smaller box or region",
            )
        )
    return diags


_ATOM_COUNT = re.compile(r"^(?:Created (\d+) atoms|\s+(\d+) atoms\s*$)")


def _atoms_command(script: ParsedScript, text: str, echoed: list[tuple[int, str]], limit: int) -> Command | None:
    """The command after which the atom count went over `limit`: the last one echoed before that count."""
    creating = ("create_atoms", "read_data", "replicate", "read_restart", "read_dump")
    total = 0
    for number, line in enumerate(text.splitlines(), 1):
        if m := _ATOM_COUNT.match(line):
            count = int(m.group(1) or m.group(2))
            total += count
            if count > limit or total > limit:
                before = [c for n, c in echoed if n < number]
                if before and (cmd := find_command(script, before[-1])) and cmd.name in creating:
                    return cmd
                break
    return next((c for c in script.commands if c.name in creating), None)  # not echoed (`echo none`)


def preflight(
    script_path: Path,
    run_dir: Path | None = None,
    *,
    limits: Limits | None = None,
    install: LammpsInstall | None = None,
    dry: bool = True,
    task: str = "",
) -> PreflightReport:
    """Check a script in its run folder (default: the script's folder). Never raises for a bad script.

    `task`, the user's words, helps name the element of a missing potential file whose pair_coeff names none."""
    start = time.monotonic()
    script_path = Path(script_path)
    run_dir = Path(run_dir or script_path.parent)
    limits = limits or Limits()
    try:
        script = parse_script(script_path, run_dir)
    except ScriptError as exc:
        return PreflightReport(
            script=str(script_path),
            ok=False,
            diagnostics=[
                Diagnostic(
                    severity=Severity.ERROR,
                    code="script.unreadable",
                    message=str(exc),
                    hint="pass the path of a LAMMPS input script",
                )
            ],
            seconds=time.monotonic() - start,
        )
    policy = check_policy(script, limits, run_dir)
    potentials, potential_diags = resolve_potentials(script, run_dir, task=task)
    diags = list(script.diagnostics) + policy + potential_diags + static_checks(script, run_dir)
    skiprun_seconds = None
    # The policy is the wall before anything executes; an over-large system would only hit the memory cap.
    # Any other finding still lets the dry run locate errors the static checks cannot see (issue 9, item 3).
    blocked = any(
        d.severity == Severity.ERROR and d.code.startswith(("policy.", "limit.atoms", "parse.include")) for d in diags
    )
    if dry and not blocked:
        stage = {
            p.name: Path(p.resolved) for p in potentials if p.resolved and p.source not in ("run-folder", "lammps")
        }
        try:
            lammps = install or find_lammps()
            dry_diags, skiprun_seconds, _ = dry_run(script, run_dir, lammps, limits, stage)
            if any(d.code == "preflight.skiprun_limit" for d in dry_diags):
                dry_diags, more = _past_artifacts(script, run_dir, lammps, limits, stage, dry_diags)
                skiprun_seconds += more
        except ScriptError as exc:
            dry_diags = [Diagnostic(severity=Severity.ERROR, code="preflight.copy", message=str(exc))]
        diags = merge_diagnostics(script, diags, dry_diags)
    ok = not any(d.severity == Severity.ERROR for d in diags)
    return PreflightReport(
        script=script.main,
        ok=ok,
        diagnostics=diags,
        potentials=potentials,
        files=script.files,
        skiprun_seconds=skiprun_seconds,
        seconds=time.monotonic() - start,
    )


def _past_artifacts(
    script: ParsedScript,
    run_dir: Path,
    install: LammpsInstall,
    limits: Limits,
    stage: dict[str, Path],
    skipped: list[Diagnostic],
) -> tuple[list[Diagnostic], float]:
    """-skiprun stopped at a value only a run computes: dry-run again with every run made a `run 0`.

    A `run 0` only sets up (neighbor lists, one force evaluation), so it is cheap; its errors are real ones.
    When that second pass cannot finish (a loop waiting for steps that never come), the artefact stays a
    warning and the rest of the script is checked only by the real run.
    """
    setup, seconds, _ = dry_run(script, run_dir, install, limits, stage, setup_runs=True)
    if any(d.code in ("preflight.timeout", "preflight.crash") for d in setup):
        return skipped, seconds
    return [d for d in skipped if d.code == "preflight.skiprun_limit"] + [
        d for d in setup if d.code != "preflight.skiprun_limit"
    ], seconds


def _order(script: ParsedScript) -> dict[tuple[str | None, int | None], int]:
    return {(c.file, c.line): i for i, c in reversed(list(enumerate(script.commands)))}


def merge_diagnostics(script: ParsedScript, found: list[Diagnostic], dry: list[Diagnostic]) -> list[Diagnostic]:
    """Static and dry-run findings in script order; a dry-run error on a line a check already explains goes.

    A style the dry run finds missing (a package this LAMMPS lacks) is the root cause of the potential
    findings of its pair_coeff lines: those are dropped.
    """
    explained = {(d.file, d.line) for d in found if d.severity == Severity.ERROR and d.line}
    kept = [d for d in dry if not (d.severity == Severity.ERROR and (d.file, d.line) in explained)]
    unknown_pair_style = next(
        (d for d in kept if d.code == "lammps.error" and d.line and re.match(r"Unrecognized pair style", d.message)),
        None,
    )
    if unknown_pair_style is not None:
        found = [
            d
            for d in found
            if not (
                d.code.startswith("potential.")
                and (d.line or 0) > unknown_pair_style.line
                and d.file == unknown_pair_style.file
            )
        ]
    order = _order(script)
    merged = found + kept
    return sorted(merged, key=lambda d: order.get((d.file, d.line), len(order) if d.line is None else len(order) - 1))
