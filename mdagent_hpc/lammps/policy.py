"""The sandbox policy: what an untrusted (LLM-written) script may do.

Judged on every variant of every command (see parser.py), so a command name or path hidden behind a variable
is judged by the values it can take, not by its literal text. The runtime sandbox (bubblewrap or the site's
container) is the second wall; this is the first, and the only one before the dry run executes the script.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath

from mdagent_hpc.lammps.files import WRITE, command_files
from mdagent_hpc.lammps.files import number as _number
from mdagent_hpc.models import Command, Diagnostic, Limits, ParsedScript

# command -> why it is refused
REFUSED_COMMANDS = {
    "python": "runs Python code",
    "plugin": "loads compiled code into LAMMPS",
    "geturl": "downloads from the network",
    "message": "opens a network or file channel to another program",
    "server": "opens a network or file channel to another program",
    "mdi": "opens a channel to another program",
    "kim": "queries the OpenKIM web service",
    "kim_query": "queries the OpenKIM web service",
}
REFUSED_FIX_STYLES = {
    "python": "runs Python code",
    "python/invoke": "runs Python code",
    "python/move": "runs Python code",
    "imd": "opens a network socket",
    "ipi": "opens a network socket",
    "mdi/qm": "opens a channel to another program",
    "mdi/qmmm": "opens a channel to another program",
}
REFUSED_VARIABLE_STYLES = {"python": "runs Python code", "getenv": "reads the environment (it may hold secrets)"}
SHELL_FILE_COMMANDS = {"rm", "mkdir", "mv", "rmdir"}
# Commands whose free text is printed, not executed or opened.
TEXT_COMMANDS = {"print", "variable", "if", "label", "title", "thermo_modify", "dump_modify", "fix_modify"}
SAFE_PATH = re.compile(r"[A-Za-z0-9._+\-*%/=,:@]+")


def _diag(cmd: Command, code: str, message: str, hint: str, words: list[str] | None = None) -> Diagnostic:
    return Diagnostic.at(cmd, code, message, hint, words=words)


def path_problem(path: str) -> str | None:
    """Why `path` is not a plain path inside the run folder, or None."""
    if "$" in path:
        return "depends on a value known only at run time"
    if path.startswith(("/", "~")):
        return "is an absolute path"
    if ".." in PurePosixPath(path).parts:
        return "leaves the run folder (..)"
    if not SAFE_PATH.fullmatch(path):
        return "has characters outside [A-Za-z0-9._+-*%/=,:@]"
    return None


def _path_problems(cmd: Command, words: list[str], run_dir: Path | None) -> list[Diagnostic]:
    """Files (and words that look like paths) outside the run folder, or links leading out of it."""
    name, a = words[0], words[1:]
    out: list[Diagnostic] = []
    for path, mode, kind in command_files(words):
        if problem := path_problem(path):
            out.append(
                _diag(
                    cmd,
                    "policy.path",
                    f"{kind} file '{path}' ({mode}) {problem}",
                    "use a plain relative path inside the run folder",
                    words,
                )
            )
        elif run_dir is not None and (run_dir / path).is_symlink():
            target = (run_dir / path).resolve()
            if not target.is_relative_to(run_dir.resolve()):
                out.append(
                    _diag(
                        cmd,
                        "policy.path",
                        f"'{path}' is a link to {target}, outside the run folder",
                        "copy the file into the run folder instead of linking it",
                        words,
                    )
                )
    if name not in TEXT_COMMANDS and not (name == "fix" and len(a) > 2 and a[2] == "print"):
        listed = {p for p, _, _ in command_files(words)}
        for w in a:
            if w not in listed and (w.startswith(("/", "~/")) or ".." in PurePosixPath(w).parts):
                out.append(
                    _diag(
                        cmd,
                        "policy.path",
                        f"'{w}' looks like a path outside the run folder",
                        "use a plain relative path inside the run folder",
                        words,
                    )
                )
    return out


def _check_words(cmd: Command, words: list[str], run_dir: Path | None) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    name, a = words[0], words[1:]
    if "$" in name:
        return [
            _diag(
                cmd,
                "policy.unresolved_command",
                f"the command name '{name}' is known only at run time",
                "write the command name literally, not through a variable",
                words,
            )
        ]
    if name in REFUSED_COMMANDS:
        out.append(
            _diag(
                cmd,
                f"policy.{name}",
                f"`{name}` is not allowed: it {REFUSED_COMMANDS[name]}",
                "do without it; the sandbox allows only LAMMPS's own commands",
                words,
            )
        )
    if name == "shell":
        sub = a[0] if a else ""
        if sub not in SHELL_FILE_COMMANDS:
            out.append(
                _diag(
                    cmd,
                    "policy.shell",
                    f"`shell {sub}` is not allowed: it runs a program",
                    "only `shell rm|mkdir|mv|rmdir` on files in the run folder are allowed",
                    words,
                )
            )
    if name == "fix" and len(a) > 2 and a[2] in REFUSED_FIX_STYLES:
        out.append(
            _diag(
                cmd,
                "policy.fix_style",
                f"fix {a[2]} is not allowed: it {REFUSED_FIX_STYLES[a[2]]}",
                "use a fix that runs inside LAMMPS",
                words,
            )
        )
    if name == "pair_style" and "python" in a:
        out.append(
            _diag(
                cmd,
                "policy.pair_python",
                "pair_style python is not allowed: it runs Python code",
                "use a tabulated (pair_style table) or built-in potential",
                words,
            )
        )
    if name == "variable" and len(a) > 1 and a[1] in REFUSED_VARIABLE_STYLES:
        out.append(
            _diag(
                cmd,
                f"policy.variable_{a[1]}",
                f"variable style {a[1]} is not allowed: it {REFUSED_VARIABLE_STYLES[a[1]]}",
                "set the value literally in the script",
                words,
            )
        )
    if name == "dump" and len(a) > 2 and a[2] == "movie":
        out.append(
            _diag(
                cmd,
                "policy.dump_movie",
                "dump movie is not allowed: it starts ffmpeg",
                "use dump image and assemble the movie afterwards",
                words,
            )
        )
    out += _path_problems(cmd, words, run_dir)
    return out


def check_policy(script: ParsedScript, limits: Limits | None = None, run_dir: Path | None = None) -> list[Diagnostic]:
    """Every refusal, one diagnostic per command and rule (not per variant)."""
    limits = limits or Limits()
    found: dict[tuple[int, str, str, str], Diagnostic] = {}
    for cmd in script.commands:
        for words in cmd.variants or [cmd.words]:
            if words:
                for d in _check_words(cmd, words, run_dir):
                    found.setdefault((cmd.line, cmd.file, d.code, d.message), d)
    for d in _included_but_not_given(script):
        found.setdefault((d.line, d.file, d.code, d.message), d)
    return list(found.values()) + check_limits(script, limits, run_dir)


def _included_but_not_given(script: ParsedScript) -> list[Diagnostic]:
    """`include`/`jump` of a file the script writes itself (`print ... file`, `fix print`, `log`, `shell mv`, ...), or
    whose name is known only at run time: its commands were never checked, so it could hold any command, `shell`
    included. A script may read as input only the files it was given (a missing one is `file.missing`)."""
    every = [(cmd, words) for cmd in script.commands for words in (cmd.variants or [cmd.words]) if words]
    written = {
        PurePosixPath(path).as_posix() for _, words in every for path, mode, _ in command_files(words) if mode == WRITE
    }
    out = []
    for cmd, words in every:
        if words[0] not in ("include", "jump") or len(words) < 2 or words[1] == "SELF":
            continue
        target = words[1]
        if "$" in target or "{" in target:
            why = "its name is known only at run time"
        elif PurePosixPath(target).as_posix() in written:
            why = "the script writes it itself"
        else:
            continue
        out.append(
            _diag(
                cmd,
                "policy.include_unchecked",
                f"`{words[0]} {target}` is not allowed: {why}, so its commands cannot be checked before the run",
                "put the commands in the script itself, or give the file with the script",
                words,
            )
        )
    return out


def _loop_multipliers(script: ParsedScript) -> list[int]:
    """How many times each command runs, from `label`/`jump SELF` loops over loop or index variables."""
    mult = [1] * len(script.commands)
    cmds = script.commands
    for j, cmd in enumerate(cmds):
        if cmd.name != "jump" or len(cmd.words) < 3 or cmd.words[1] != "SELF":
            continue
        start = next(
            (
                i
                for i in range(j - 1, -1, -1)
                if cmds[i].name == "label" and cmds[i].args[:1] == [cmd.words[2]] and cmds[i].file == cmd.file
            ),
            None,
        )
        if start is None:
            continue
        nexted = [w for c in cmds[start:j] if c.name == "next" for w in c.args]
        counts = [_value_count(script, v) for v in nexted]
        times = max(counts, default=1) or 1
        for i in range(start, j + 1):
            mult[i] *= times
    return mult


def _value_count(script: ParsedScript, name: str) -> int:
    """Values a loop/index variable takes; loop counts are read from the definition (values are capped)."""
    for cmd in script.find("variable"):
        a = cmd.args
        if len(a) > 2 and a[0] == name and a[1] in ("loop", "uloop"):
            bounds = [int(w) for w in a[2:4] if w.lstrip("-").isdigit()]
            return bounds[0] if len(bounds) == 1 else bounds[1] - bounds[0] + 1 if bounds else 1
    return len(script.variables.get(name, []))


def count_steps(script: ParsedScript) -> tuple[float, list[tuple[Command, float]]]:
    """Total MD steps and minimizer iterations the script asks for, and each run's share."""
    runs = []
    for cmd, times in zip(script.commands, _loop_multipliers(script), strict=True):
        if cmd.name == "run" and cmd.args:
            n = _number(cmd.args[0])
        elif cmd.name == "minimize" and len(cmd.args) > 2:
            n = _number(cmd.args[2])
        else:
            continue
        if n is not None:
            runs.append((cmd, n * times))
    return sum(n for _, n in runs), runs


_BASIS = {"sc": 1, "bcc": 2, "fcc": 4, "hcp": 4, "diamond": 8, "sq": 1, "sq2": 2, "hex": 2}


def estimate_atoms(script: ParsedScript, run_dir: Path | None) -> float | None:
    """Atoms the script will create, from lattices, regions, read_data headers and replicate; None if unknown."""
    units, dim, lattice, scale = "lj", 3, ("none", 1), 1.0
    regions: dict[str, tuple[str, list[float], bool]] = {}
    total: float | None = 0.0
    for cmd in script.commands:
        n, a = cmd.name, cmd.args
        if n == "clear":
            total = 0.0
        elif n == "units" and a:
            units = a[0]
        elif n == "dimension" and a:
            dim = int(_number(a[0]) or 3)
        elif n == "lattice" and len(a) > 1:
            basis = _BASIS.get(a[0], a.count("basis") or 1)
            value = _number(a[1]) or 1.0
            scale = (basis / value) ** (1 / dim) if units == "lj" else value
            lattice = (a[0], basis)
        elif n == "region" and len(a) > 2:
            nums = [_number(w) for w in a[2:9]]
            lattice_units = not ("units" in a and a[a.index("units") + 1] == "box")
            regions[a[0]] = (a[1], [x if x is not None else math.nan for x in nums], lattice_units)
        elif n == "create_atoms" and len(a) > 1 and total is not None:
            if a[1] == "random" and len(a) > 2 and (count := _number(a[2])) is not None:
                total += count
            elif a[1] in ("box", "region"):
                rid = a[2] if a[1] == "region" and len(a) > 2 else None
                region = regions.get(rid) if rid else next(iter(regions.values()), None)
                total = None if region is None else total + _region_atoms(region, lattice[1], scale, dim)
            elif a[1] == "single":
                total += 1
        elif n == "read_data" and a and run_dir is not None and total is not None:
            total = _data_atoms(run_dir / a[0], total)
        elif n == "replicate" and len(a) >= 3 and total is not None:
            factors = [_number(w) or 1 for w in a[:3]]
            total *= factors[0] * factors[1] * factors[2]
    return None if total is None or math.isnan(total) else total


def _region_atoms(region: tuple[str, list[float], bool], basis: int, scale: float, dim: int) -> float:
    style, nums, lattice_units = region
    cell = 1.0 if lattice_units else scale**dim
    if style == "block" and len(nums) >= 6:
        extent = (nums[1] - nums[0]) * (nums[3] - nums[2]) * (1 if dim == 2 else nums[5] - nums[4])
        return basis * abs(extent) / cell
    if style == "sphere" and len(nums) >= 4:
        return basis * 4 / 3 * math.pi * nums[3] ** 3 / cell
    return math.nan


def _data_atoms(path: Path, total: float) -> float:
    if not path.is_file():
        return total
    with path.open(errors="replace") as fh:
        for _, line in zip(range(50), fh, strict=False):
            m = re.match(r"\s*(\d+)\s+atoms\b", line)
            if m:
                return total + int(m.group(1))
    return total


def _hms(text: str) -> float | None:
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    return seconds


def check_limits(script: ParsedScript, limits: Limits, run_dir: Path | None) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    total, runs = count_steps(script)
    for cmd, n in runs:
        if n > limits.max_steps:
            out.append(
                _diag(
                    cmd,
                    "limit.steps",
                    f"this run asks for {n:.0f} steps; the limit is {limits.max_steps}",
                    "run fewer steps, or ask the site admin for a higher limit",
                )
            )
    if total > limits.max_steps and all(n <= limits.max_steps for _, n in runs) and runs:
        out.append(
            _diag(
                runs[-1][0],
                "limit.steps",
                f"the script asks for {total:.0f} steps in all; the limit is {limits.max_steps}",
                "run fewer or shorter runs",
            )
        )
    atoms = estimate_atoms(script, run_dir)
    if atoms is not None and atoms > limits.max_atoms:
        cmd = next(
            (c for c in script.commands if c.name in ("create_atoms", "read_data", "replicate")), script.commands[0]
        )
        out.append(
            _diag(
                cmd,
                "limit.atoms",
                f"the script creates about {atoms:.0f} atoms; the limit is {limits.max_atoms}",
                "use a smaller box or region",
            )
        )
    for cmd in script.find("timer"):
        if len(cmd.args) > 1 and cmd.args[0] == "timeout" and (s := _hms(cmd.args[1])) is not None:
            if s > limits.max_walltime_s:
                out.append(
                    _diag(
                        cmd,
                        "limit.walltime",
                        f"timer timeout {cmd.args[1]} exceeds the wall-time limit of {limits.max_walltime_s:.0f} s",
                        "lower the timeout",
                    )
                )
    return out
