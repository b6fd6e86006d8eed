"""Read a LAMMPS log (log.lammps or captured screen output) into plain data.

A log is a sequence of input echo lines, LAMMPS messages and one thermo block per `run`/`minimize`. A block
starts with the header after "Per MPI rank memory allocation" (2018+) or "Memory usage per processor"
(older), or with a "Step ..." header followed by data (`run N pre no` prints no memory line); it ends with
"Loop time of ...", an ERROR, or the end of the text (a killed run). Inside a block only lines with exactly
one number per column are rows: LAMMPS interleaves WARNINGs, "SHAKE stats" and fix output with them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from pydantic import BaseModel, Field

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.lammps.files import numbers as _numbers

MAX_LOG_BYTES = 200_000_000

_VERSION = re.compile(r"^LAMMPS \((.+)\)\s*$")
_LOOP = re.compile(r"^Loop time of (\S+) on (\d+) procs for (\d+) steps with (\d+) atoms")
_MULTI = re.compile(r"^-+ Step\s+(\S+) -+ CPU =\s*(\S+) \(sec\) -+\s*$")
_KEYVAL = re.compile(r"(\S+)\s*=\s*(\S+)")
_YAML_ROW = re.compile(r"^\s*-\s*\[(.*)\]\s*$")
_ERROR = re.compile(r"^ERROR(?: on proc (\d+))?: (.*)$")
_WARNING = re.compile(r"^WARNING(?: on proc \d+)?: (.*)$")
_SOURCE = re.compile(r"\s*\(([^()]+:\d+)\)\s*$")
_MORE_INFO = re.compile(r"^For more information see (\S+)(?:\s+\(([^()]+:\d+)\))?")
_LAST_INPUT = re.compile(r"^Last (?:input line|command): ?(.*)$")
_ECHO = re.compile(r"^\s*[a-z][a-z0-9_/]*(\s|$)")
_CREATED = re.compile(r"^Created (\d+) atoms")
_DELETED = re.compile(r"^Deleted \d+ atoms, new total = (\d+)")
_READ_ATOMS = re.compile(r"^\s+(\d+) atoms\s*$")
_CPU = re.compile(r"^([\d.]+)% CPU use with (\d+) MPI tasks")
_TIMING = re.compile(r"^(\w+)\s*\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|\s*(\S+)\s*$")
_PERF_UNITS = {
    "ns/day": ("ns_per_day", 1.0),
    "hours/ns": ("hours_per_ns", 1.0),
    "tau/day": ("tau_per_day", 1.0),
    "timesteps/s": ("timesteps_per_s", 1.0),
    "atom-step/s": ("atom_steps_per_s", 1.0),
    "katom-step/s": ("atom_steps_per_s", 1e3),
    "Matom-step/s": ("atom_steps_per_s", 1e6),
    "Gatom-step/s": ("atom_steps_per_s", 1e9),
}
# LAMMPS input commands (an indented log line is taken as an echoed command only if it starts with one).
COMMANDS = frozenset(
    """
angle_coeff angle_style angle_write atom_modify atom_style balance bond_coeff bond_style bond_write boundary
change_box clear comm_modify comm_style compute compute_modify create_atoms create_bonds create_box delete_atoms
delete_bonds dielectric dihedral_coeff dihedral_style dimension displace_atoms dump dump_modify echo fix
fix_modify group if improper_coeff improper_style include info jump kspace_modify kspace_style label labelmap
lattice log mass min_modify min_style minimize molecule neb neigh_modify neighbor newton next package pair_coeff
pair_modify pair_style pair_write partition plugin prd print processors python quit read_data read_dump
read_restart region replicate rerun reset_atoms reset_timestep restart run run_style set shell special_bonds
suffix tad temper thermo thermo_modify thermo_style timer timestep uncompute undump unfix units variable velocity
write_coeff write_data write_dump write_restart
""".split()
)
# thermo_style one: what LAMMPS prints when the script sets no thermo_style
_ONE_COLUMNS = ["Step", "Temp", "E_pair", "E_mol", "TotEng", "Press"]


class LogError(MDAgentError):
    """The log file cannot be read (missing, binary, too large)."""


class Performance(BaseModel):
    ns_per_day: float | None = None
    hours_per_ns: float | None = None
    tau_per_day: float | None = None
    timesteps_per_s: float | None = None
    atom_steps_per_s: float | None = None
    cpu_percent: float | None = None


class TimingRow(BaseModel):
    """One section of the "MPI task timing breakdown" table."""

    avg_seconds: float
    percent: float


class NeighborStats(BaseModel):
    total_neighbors: int | None = None
    neighs_per_atom: float | None = None
    builds: int | None = None
    dangerous_builds: int | None = Field(None, description="None when LAMMPS printed 'not checked'")


class ThermoBlock(BaseModel):
    """The thermo output of one run or minimization."""

    style: str = Field(description="'one', 'custom', 'multi' or 'yaml'")
    line: int = Field(description="1-based log line of the header")
    columns: list[str]
    rows: list[list[float]] = Field(default_factory=list, description="nan/inf kept as float")
    command: str | None = Field(None, description="the echoed run/minimize command that started it")
    units: str | None = Field(None, description="units style in force, if echoed or printed")
    timestep: float | None = Field(None, description="timestep in force, if echoed or printed")
    loop_time: float | None = Field(None, description="seconds; None when the block was cut off")
    procs: int | None = None
    steps: int | None = Field(None, description="run length from the Loop time line")
    atoms: int | None = Field(None, description="atoms at the end, from the Loop time line")
    atoms_start: int | None = Field(
        None, description="atoms when the run started: created, read, replicated, deleted or left by the last run"
    )
    minimization: bool = False
    min_stop: str | None = Field(None, description="minimizer stopping criterion")
    performance: Performance | None = None
    timing: dict[str, TimingRow] = Field(default_factory=dict)
    neighbors: NeighborStats | None = None

    @property
    def finished(self) -> bool:
        return self.loop_time is not None

    def column(self, name: str) -> list[float]:
        if name not in self.columns:
            raise KeyError(f"no thermo column {name!r}; columns are {self.columns}")
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


class LammpsError(BaseModel):
    """One ERROR message of the log."""

    message: str
    line: int = Field(description="1-based log line of the ERROR")
    source: str | None = Field(None, description="LAMMPS source file:line, e.g. src/src/input.cpp:314")
    url: str | None = Field(None, description="docs.lammps.org page explaining the error")
    proc: int | None = Field(None, description="MPI rank for 'ERROR on proc N'")
    last_input: str | None = Field(
        None, description="'Last input line'/'Last command' text, else the last command echoed before the error"
    )


class LammpsLog(BaseModel):
    version: str | None = None
    blocks: list[ThermoBlock] = Field(default_factory=list)
    warnings: list[tuple[int, str]] = Field(default_factory=list, description="(log line, text)")
    errors: list[LammpsError] = Field(default_factory=list)
    commands: list[tuple[int, str]] = Field(
        default_factory=list, description="(log line, text) of echoed input commands (best effort)"
    )
    atoms: int | None = None
    units: str | None = None
    completed: bool = Field(False, description="'Total wall time' printed and no ERROR")
    total_wall_time: float | None = Field(None, description="seconds")

    @property
    def last_block(self) -> ThermoBlock | None:
        return self.blocks[-1] if self.blocks else None


def _is_header(tokens: list[str]) -> bool:
    return bool(tokens) and all(_numbers([t]) is None for t in tokens)


def _wall_seconds(text: str) -> float | None:
    try:
        parts = [float(p) for p in text.strip().split(":")]
    except ValueError:
        return None
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


class _Parser:
    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.log = LammpsLog()
        self.block: ThermoBlock | None = None  # block being read
        self.last: ThermoBlock | None = None  # most recent block (post-run statistics go there)
        self.multi: dict[str, float] | None = None  # multi-style record being read
        self.expect_header = False
        self.timestep: float | None = None
        self.created = 0
        self.read_atoms = 0
        self.echo_since_block: str | None = None  # echoed run-like command not yet given a block
        self.last_echo = ""  # name of the last echoed command
        self.count: int | None = None  # atoms in the system as far as the log tells

    def run(self) -> LammpsLog:
        i = 0
        while i < len(self.lines):
            i = self.step(i)
        self.close_block()
        log = self.log
        finished = [b for b in log.blocks if b.atoms is not None]
        log.atoms = finished[-1].atoms if finished else (self.created + self.read_atoms or None)
        log.completed = log.total_wall_time is not None and not log.errors
        return log

    def step(self, i: int) -> int:
        """Handle line i; return the index of the next line to read."""
        line = self.lines[i]
        s = line.strip()
        if m := _ERROR.match(s):
            return self.error(i, m)
        if m := _WARNING.match(s):
            self.log.warnings.append((i + 1, m.group(1).strip()))
            nxt = self.lines[i + 1].strip() if i + 1 < len(self.lines) else ""
            return i + 2 if _MORE_INFO.match(nxt) else i + 1
        if s.startswith("Loop time of"):
            self.end_block(i, s)
            return i + 1
        if self.block is not None:
            if s.startswith(("Total wall time", "LAMMPS (")):
                self.close_block()
                return self.outside(i, line, s)
            self.block_line(line, s)
            return i + 1
        return self.outside(i, line, s)

    # --- thermo blocks ---------------------------------------------------------------------------------

    def start_block(self, i: int, style: str, columns: list[str]) -> None:
        self.close_block()
        self.block = ThermoBlock(
            style=style,
            line=i + 1,
            columns=columns,
            command=self.echo_since_block,
            units=self.log.units,
            timestep=self.timestep,
            atoms_start=self.count,
        )
        self.echo_since_block = None
        self.expect_header = False
        if self.block.command and self.block.command.split()[0].startswith("minimize"):
            self.block.minimization = True

    def block_line(self, line: str, s: str) -> None:
        block = self.block
        assert block is not None
        if block.style == "multi":
            if m := _MULTI.match(s):
                self.flush_multi()
                self.multi = {"Step": float(m.group(1))}
            elif self.multi is not None and s and not _KEYVAL.sub("", s).strip():
                for key, value in _KEYVAL.findall(s):
                    num = _numbers([value])
                    if num is not None:
                        self.multi[key] = num[0]
            return
        if block.style == "yaml":
            if s.startswith("keywords:"):
                block.columns = re.findall(r"'([^']*)'", s)
            elif m := _YAML_ROW.match(line):
                row = _numbers([t.strip() for t in m.group(1).split(",") if t.strip()])
                if row is not None and len(row) == len(block.columns):
                    block.rows.append(row)
            return
        row = _numbers(s.split())
        if row is not None and len(row) == len(block.columns):
            block.rows.append(row)

    def flush_multi(self) -> None:
        if self.block is None or self.multi is None:
            return
        if len(self.block.columns) == 1:  # the first record names the columns
            self.block.columns += [k for k in self.multi if k != "Step"]
        self.block.rows.append([self.multi.get(c, math.nan) for c in self.block.columns])
        self.multi = None

    def end_block(self, i: int, s: str) -> None:
        if self.block is None:  # a run whose thermo output we did not recognise: keep it, runs are counted
            self.start_block(i, "custom", [])
        block = self.block
        assert block is not None
        if m := _LOOP.match(s):
            block.loop_time = float(m.group(1))
            block.procs, block.steps, block.atoms = int(m.group(2)), int(m.group(3)), int(m.group(4))
            self.count = block.atoms
        self.close_block()

    def close_block(self) -> None:
        if self.block is None:
            return
        self.flush_multi()
        self.log.blocks.append(self.block)
        self.last = self.block
        self.block = None
        self.expect_header = False

    # --- everything outside blocks ---------------------------------------------------------------------

    def outside(self, i: int, line: str, s: str) -> int:
        log = self.log
        tokens = s.split()
        if s.startswith(("Per MPI rank memory allocation", "Memory usage per processor")):
            self.expect_header = True
        elif m := _MULTI.match(s):
            self.start_block(i, "multi", ["Step"])
            self.multi = {"Step": float(m.group(1))}
        elif s == "---" and i + 1 < len(self.lines) and self.lines[i + 1].startswith("keywords:"):
            self.start_block(i, "yaml", [])
        elif self.expect_header and _is_header(tokens):
            self.start_block(i, "one" if tokens == _ONE_COLUMNS else "custom", tokens)
        elif tokens[:1] == ["Step"] and _is_header(tokens) and self.next_is_row(i, len(tokens)):
            self.start_block(i, "one" if tokens == _ONE_COLUMNS else "custom", tokens)
        elif m := _VERSION.match(s):
            log.version = log.version or m.group(1)
        elif s.startswith("Total wall time:"):
            log.total_wall_time = _wall_seconds(s.split(":", 1)[1])
        elif m := _CREATED.match(s):
            self.created += int(m.group(1))
            self.count = (self.count or 0) + int(m.group(1))
        elif m := _DELETED.match(s):
            self.count = int(m.group(1))
        elif m := _READ_ATOMS.match(line):
            self.read_atoms += int(m.group(1))
            # replicate prints the new total; read_data/read_restart the atoms they add
            self.count = int(m.group(1)) + (0 if self.last_echo == "replicate" else self.count or 0)
        elif s.startswith(("Unit style", "Time step")) and ":" in s:
            value = s.split(":", 1)[1].strip()
            if s.startswith("Unit style"):
                log.units = value
            elif (num := _numbers([value])) is not None:
                self.timestep = num[0]
        elif self.is_echo(line, tokens):
            self.echo(i, s, tokens)
        elif self.last is not None:
            self.post_run(s)
        return i + 1

    def next_is_row(self, i: int, ncols: int) -> bool:
        if i + 1 >= len(self.lines):
            return False
        row = _numbers(self.lines[i + 1].split())
        return row is not None and len(row) == ncols

    @staticmethod
    def is_echo(line: str, tokens: list[str]) -> bool:
        """LAMMPS echoes input lines as written; its own messages are capitalised or indented."""
        if not _ECHO.match(line) or (len(tokens) > 1 and tokens[1].startswith("=")):
            return False
        # indented: "  create_atoms CPU = 0.001 seconds", "  restart file = 24 Dec 2020, ..." are output
        return not line[0].isspace() or (tokens[0] in COMMANDS and not {"=", "CPU"} & set(tokens[1:3]))

    def echo(self, i: int, s: str, tokens: list[str]) -> None:
        self.log.commands.append((i + 1, s))
        if "$" in s:  # LAMMPS echoes the line again after substituting variables
            return
        name = tokens[0]
        self.last_echo = name
        if name == "clear":
            self.count = None
        if name == "units" and len(tokens) > 1:
            self.log.units, self.timestep = tokens[1], None
        elif name == "timestep" and len(tokens) > 1 and (num := _numbers(tokens[1:2])) is not None:
            self.timestep = num[0]
        elif name == "clear":
            self.log.units, self.timestep = None, None
        elif name in ("run", "rerun") or name.startswith(("minimize", "temper", "neb", "prd", "tad", "hyper")):
            self.echo_since_block = s

    def post_run(self, s: str) -> None:
        """Statistics LAMMPS prints after 'Loop time' belong to the last block."""
        block = self.last
        assert block is not None
        if s.startswith("Performance:"):
            perf = block.performance or Performance()
            for part in s.split(":", 1)[1].split(","):
                words = part.split()
                if len(words) == 2 and words[1] in _PERF_UNITS and (num := _numbers(words[:1])):
                    field, scale = _PERF_UNITS[words[1]]
                    setattr(perf, field, num[0] * scale)
            block.performance = perf
        elif m := _CPU.match(s):
            block.performance = block.performance or Performance()
            block.performance.cpu_percent = float(m.group(1))
        elif s.startswith("Minimization stats"):
            block.minimization = True
        elif s.startswith("Stopping criterion ="):
            block.min_stop = s.split("=", 1)[1].strip()
        elif (m := _TIMING.match(s)) and m.group(1) != "Section":
            avg, pct = _numbers([m.group(3).strip() or "nan", m.group(6)]) or [math.nan, math.nan]
            block.timing[m.group(1)] = TimingRow(avg_seconds=avg, percent=pct)
        elif "=" in s and s.startswith(
            ("Total # of neighbors", "Ave neighs/atom", "Neighbor list builds", "Dangerous builds")
        ):
            stats = block.neighbors or NeighborStats()
            key, value = (p.strip() for p in s.split("=", 1))
            num = _numbers([value])
            if num is not None:
                field = {
                    "Total # of neighbors": "total_neighbors",
                    "Ave neighs/atom": "neighs_per_atom",
                    "Neighbor list builds": "builds",
                    "Dangerous builds": "dangerous_builds",
                }[key]
                setattr(stats, field, num[0] if field == "neighs_per_atom" else int(num[0]))
            block.neighbors = stats
        elif s.startswith("Dangerous builds not checked"):
            block.neighbors = block.neighbors or NeighborStats()

    def error(self, i: int, m: re.Match[str]) -> int:
        message = m.group(2).strip()
        err = LammpsError(message=message, line=i + 1, proc=int(m.group(1)) if m.group(1) else None)
        if src := _SOURCE.search(message):
            err.source, err.message = src.group(1), message[: src.start()].strip()
        j = i + 1
        while j < len(self.lines) and j <= i + 3:
            s = self.lines[j].strip()
            if info := _MORE_INFO.match(s):
                err.url, err.source = info.group(1), info.group(2) or err.source
            elif last := _LAST_INPUT.match(s):
                err.last_input = last.group(1).strip()
            elif s and set(s) == {"^"}:  # 2025 marks the offending word under 'Last input line'
                pass
            else:
                break
            j += 1
        if err.last_input is None and self.log.commands:
            err.last_input = self.log.commands[-1][1]
        self.log.errors.append(err)
        self.close_block()
        return j


def parse_log(text: str) -> LammpsLog:
    """Parse the text of a LAMMPS log file or of its screen output."""
    return _Parser(text).run()


def read_log(path: Path | str, max_bytes: int = MAX_LOG_BYTES) -> LammpsLog:
    path = Path(path)
    if path.is_dir():
        raise LogError(f"{path} is a folder, not a LAMMPS log file")
    if not path.is_file():
        raise LogError(f"{path}: no such log file")
    size = path.stat().st_size
    if size > max_bytes:
        raise LogError(f"{path} is {size / 1e6:.1f} MB; logs over {max_bytes / 1e6:.0f} MB are not read")
    data = path.read_bytes()
    sample = data[:65536]
    if b"\0" in sample or sample.decode("utf-8", errors="replace").count("\ufffd") > len(sample) // 10:
        raise LogError(f"{path} is a binary file, not a LAMMPS log")
    if not data.strip():
        raise LogError(f"{path} is empty, not a LAMMPS log")
    log = parse_log(data.decode("utf-8", errors="replace"))
    # A log starts with "LAMMPS (version)"; a second log opened by the `log` command does not, but then it
    # holds thermo output, an ERROR or the final wall time.
    if log.version is None and not (log.blocks or log.errors or log.total_wall_time is not None):
        raise LogError(f"{path} is not a LAMMPS log (no 'LAMMPS (version)' line, thermo output or ERROR)")
    return log
