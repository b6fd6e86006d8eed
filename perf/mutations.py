"""Preflight and evaluation measured the way a model's mistakes hit them: a mutation corpus.

Takes the passing scripts of the test corpus (located as tests/conftest.py does; `--corpus DIR` overrides) and
applies the mistakes language models make, one per mutant (KINDS below; SOURCES says where each kind comes from,
or that no source was found). Each mutant is

1. preflighted (`lammps.preflight`, with its `lmp -skiprun` dry run) in a writable copy of its example folder,
   and preflighted again without the dry run (our own checks alone);
2. run with the real LAMMPS (`.venv/bin/lmp`, same folder, `--timeout` seconds) and its log evaluated
   (`lammps.evaluate`): the mutant "makes LAMMPS fail" when LAMMPS exits non-zero or prints an ERROR, or the
   evaluation grades the run FAIL.

Every mutant is in the denominator: a careful reviewer rejects it when it makes LAMMPS fail or its physics is
wrong (WRONG_PHYSICS); of those, caught before any job is queued (by our own checks, or only by LAMMPS's dry run),
caught only at run time, or missed; a mutant that runs and passes its evaluation otherwise may be harmless, and
refusing it is a false refusal (so is an error on an unmutated script). Kinds that only the dry run catches are
reported apart. Targets: >= 95 % of reviewer-rejectable mutants caught before queue, false refusals <= 1 %.
Timings are never asserted.

    .venv/bin/python perf/mutations.py [--per-kind N] [--kinds a,b] [--limit N] [--jobs 2] [--timeout 30]
    .venv/bin/python perf/mutations.py --report FILE     (the report of a --json FILE, without running)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from mdagent_hpc.lammps.evaluate import evaluate
from mdagent_hpc.lammps.install import find_lammps
from mdagent_hpc.lammps.log import LogError, read_log
from mdagent_hpc.lammps.parser import parse_text
from mdagent_hpc.lammps.preflight import preflight
from mdagent_hpc.lammps.static import _data_file
from mdagent_hpc.models import Command, Grade, ParsedScript, Severity

REPO = Path(__file__).resolve().parents[1]
TARGET_CAUGHT, TARGET_AT_LINE = 0.95, 0.90


def test_corpus() -> tuple[Path, list[dict]]:
    """The corpus folder and manifest examples, exactly as the tests find them."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import CORPUS, CORPUS_ERROR, MANIFEST  # noqa: PLC0415  (the tests' own locating code)

    if CORPUS_ERROR:
        sys.exit(f"no test corpus: {CORPUS_ERROR}")
    return Path(CORPUS), list(MANIFEST)


def copy_example(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return dest


# --------------------------------------------------------------------------------------------- mutations


@dataclass
class Mutant:
    example: str
    kind: str
    text: str
    line: int  # where the mistake is: the changed line, or for a removed command the command that needs it
    note: str


def _simple(script: ParsedScript, raw: list[str]) -> list[Command]:
    """Top-level commands of the main file on one physical line (no `&`, no triple quotes)."""
    out = []
    for c in script.commands:
        if c.context or c.file != script.main or not c.words:
            continue
        line = raw[c.line - 1]
        before = raw[c.line - 2] if c.line > 1 else ""
        if line.rstrip().endswith("&") or before.rstrip().endswith("&") or '"""' in line:
            continue
        out.append(c)
    return out


def _replace_word(line: str, old: str, new: str, nth: int = 0) -> str | None:
    """`line` with its nth whole-word occurrence of `old` replaced (comments kept), or None."""
    matches = [m for m in re.finditer(rf"(?<!\S){re.escape(old)}(?!\S)", line.split("#")[0])]
    if len(matches) <= nth:
        return None
    m = matches[nth]
    return line[: m.start()] + new + line[m.end() :]


def _typo(word: str, rng: random.Random) -> str:
    """A typo a model makes: a doubled, dropped or swapped letter, never the same word."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    for _ in range(20):
        i = rng.choice(letters)
        how = rng.choice(("double", "drop", "swap"))
        if how == "double":
            new = word[: i + 1] + word[i] + word[i + 1 :]
        elif how == "drop" and len(letters) > 2:
            new = word[:i] + word[i + 1 :]
        elif how == "swap" and i + 1 < len(word) and word[i + 1].isalpha() and word[i + 1] != word[i]:
            new = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        else:
            continue
        if new != word:
            return new
    return word + word[-1]


Mutator = Callable[[str, list[str], ParsedScript, Path, random.Random], list[tuple[str, int, str]]]
KINDS: dict[str, Mutator] = {}


def kind(name: str) -> Callable[[Mutator], Mutator]:
    def register(fn: Mutator) -> Mutator:
        KINDS[name] = fn
        return fn

    return register


def _edit(raw: list[str], index: int, new_line: str) -> str:
    lines = list(raw)
    lines[index] = new_line
    return "\n".join(lines) + "\n"


@kind("misspelled_command")
def _misspelled_command(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        new = _replace_word(raw[c.line - 1], c.name, _typo(c.name, rng))
        if new:
            out.append((_edit(raw, c.line - 1, new), c.line, f"{c.name} misspelled"))
    return out


STYLE_POSITION = {
    "pair_style": 0,
    "atom_style": 0,
    "bond_style": 0,
    "angle_style": 0,
    "fix": 2,
    "compute": 2,
    "min_style": 0,
    "kspace_style": 0,
    "run_style": 0,
    "dihedral_style": 0,
}


@kind("misspelled_style")
def _misspelled_style(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        k = STYLE_POSITION.get(c.name)
        if k is None or len(c.args) <= k or "$" in c.args[k] or c.args[k] in ("none", "zero", "hybrid"):
            continue
        new = _replace_word(raw[c.line - 1], c.args[k], _typo(c.args[k], rng))
        if new:
            out.append((_edit(raw, c.line - 1, new), c.line, f"{c.name} style {c.args[k]} misspelled"))
    return out


KEYWORDED = {
    "thermo_style": 1,
    "velocity": 3,
    "neigh_modify": 0,
    "thermo_modify": 0,
    "fix": 3,
    "dump_modify": 1,
    "create_atoms": 2,
    "compute_modify": 1,
    "min_modify": 0,
}


@kind("misspelled_keyword")
def _misspelled_keyword(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        start = KEYWORDED.get(c.name)
        if start is None:
            continue
        words = [w for w in c.args[start:] if re.fullmatch(r"[a-z][a-z_]{2,}", w)]
        if not words:
            continue
        word = rng.choice(words)
        nth = c.args.count(word) - 1 if c.args.count(word) > 1 else 0
        new = _replace_word(raw[c.line - 1], word, _typo(word, rng), nth)
        if new:
            out.append((_edit(raw, c.line - 1, new), c.line, f"{c.name} keyword {word} misspelled"))
    return out


ARG_COUNT_COMMANDS = {
    "pair_coeff",
    "region",
    "create_box",
    "lattice",
    "velocity",
    "fix",
    "mass",
    "bond_coeff",
    "thermo",
    "timestep",
    "run",
    "minimize",
    "neighbor",
    "create_atoms",
    "compute",
    "dump",
}


@kind("wrong_arg_count")
def _wrong_arg_count(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        if c.name not in ARG_COUNT_COMMANDS or not c.args:
            continue
        line = raw[c.line - 1].split("#")[0].rstrip()
        tokens = line.split()
        if rng.random() < 0.5 and len(tokens) > 2:
            new, note = " ".join(tokens[:-1]), "last argument dropped"
        else:
            new, note = line + " 1.0", "extra argument"
        out.append((_edit(raw, c.line - 1, new), c.line, f"{c.name}: {note}"))
    return out


def _potential_lines(script: ParsedScript, raw: list[str]) -> list[Command]:
    return [
        c
        for c in _simple(script, raw)
        if c.name == "pair_coeff"
        and any(re.search(r"\.[A-Za-z]", w) and not w.startswith(("lj/", "coul/")) for w in c.args[2:])
    ]


@kind("wrong_potential_file")
def _wrong_potential_file(text, raw, script, run_dir, rng):
    out = []
    for c in _potential_lines(script, raw):
        file = next(w for w in c.args[2:] if re.search(r"\.[A-Za-z]", w))
        stem, dot, ext = file.partition(".")
        new = _replace_word(raw[c.line - 1], file, f"{stem}_2{dot}{ext}")
        if new:
            out.append((_edit(raw, c.line - 1, new), c.line, f"{file} -> {stem}_2{dot}{ext}"))
    return out


ELEMENT = re.compile(r"[A-Z][a-z]?")


@kind("element_order")
def _element_order(text, raw, script, run_dir, rng):
    out = []
    for c in _potential_lines(script, raw):
        names = [w for w in c.args[3:] if ELEMENT.fullmatch(w)]
        if len(set(names)) < 2:
            continue
        a, b = names[0], next(n for n in names if n != names[0])
        line = raw[c.line - 1]
        head, _, tail = line.partition(c.args[2])  # only the element list after the file
        swapped = " ".join(b if w == a else a if w == b else w for w in tail.split(" "))
        out.append((_edit(raw, c.line - 1, head + c.args[2] + swapped), c.line, f"elements {a} and {b} swapped"))
    return out


def _ntypes(script: ParsedScript, run_dir: Path) -> int | None:
    for c in script.commands:
        if c.name == "create_box" and c.args and c.args[0].isdigit():
            return int(c.args[0])
        if c.name == "read_data" and c.args:
            return _data_file(run_dir / c.args[0])[0]
    return None


@kind("pair_coeff_missing_type")
def _pair_coeff_missing_type(text, raw, script, run_dir, rng):
    ntypes = _ntypes(script, run_dir)
    out = []
    for c in _simple(script, raw):
        if ntypes and c.name == "pair_coeff" and len(c.args) > 2 and c.args[1].isdigit():
            new = _replace_word(raw[c.line - 1], c.args[1], str(ntypes + 1), 1 if c.args[0] == c.args[1] else 0)
            if new:
                out.append((_edit(raw, c.line - 1, new), c.line, f"type {ntypes + 1} of {ntypes}"))
    return out


def _next_run(script: ParsedScript, after: int) -> int | None:
    """The first command after line `after` that needs masses: velocity create, run, minimize."""
    return next(
        (
            c.line
            for c in script.commands
            if c.file == script.main
            and c.line > after
            and (c.name in ("run", "minimize") or c.name == "velocity" and "create" in c.args)
        ),
        None,
    )


@kind("missing_mass")
def _missing_mass(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        if c.name == "mass" and (run := _next_run(script, c.line)):
            lines = raw[: c.line - 1] + raw[c.line :]
            out.append(("\n".join(lines) + "\n", run - 1, f"mass line {c.line} removed"))
    return out


UNIT_SWAP = {"metal": "real", "real": "metal", "lj": "metal", "si": "cgs", "cgs": "si", "electron": "metal"}


@kind("wrong_units")
def _wrong_units(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        if c.name == "units" and c.args and c.args[0] in UNIT_SWAP:
            new = _replace_word(raw[c.line - 1], c.args[0], UNIT_SWAP[c.args[0]])
            if new:
                out.append((_edit(raw, c.line - 1, new), c.line, f"units {c.args[0]} -> {UNIT_SWAP[c.args[0]]}"))
    return out


@kind("ampersand_blank_line")
def _ampersand_blank_line(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        tokens = raw[c.line - 1].split("#")[0].split()
        if len(tokens) >= 3:
            cut = rng.randrange(2, len(tokens))
            lines = raw[: c.line - 1] + [" ".join(tokens[:cut]) + " &", "", " ".join(tokens[cut:])] + raw[c.line :]
            out.append(("\n".join(lines) + "\n", c.line, f"{c.name} split with & before a blank line"))
    return out


@kind("curly_quotes")
def _curly_quotes(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        line = raw[c.line - 1]
        if line.count('"') >= 2:
            new = re.sub(r'"([^"]*)"', "\u201c\\1\u201d", line, count=1)
            out.append((_edit(raw, c.line - 1, new), c.line, "curly double quotes"))
        elif c.name == "print" or c.name in ("thermo_style",):
            new = line.replace(c.args[0], f"\u201c{c.args[0]}", 1).rstrip() + "\u201d"
            out.append((_edit(raw, c.line - 1, new), c.line, "curly quotes added"))
    return out


@kind("undefined_variable")
def _undefined_variable(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        line = raw[c.line - 1].split("#")[0]
        m = re.search(r"\$\{(\w+)\}|\$(\w)\b|\bv_(\w+)", line)
        if m and c.name != "variable":
            name = m.group(1) or m.group(2) or m.group(3)
            wrong = name + "x"
            new = line[: m.start()] + m.group(0).replace(name, wrong) + line[m.end() :]
            if m.group(2):
                new = line[: m.start()] + "${" + wrong + "}" + line[m.end() :]
            out.append((_edit(raw, c.line - 1, new), c.line, f"{name} -> {wrong}"))
        elif c.name == "run" and c.args and c.args[0].isdigit():
            out.append(
                (
                    _edit(raw, c.line - 1, line.replace(c.args[0], "${nsteps}", 1)),
                    c.line,
                    "run ${nsteps}, never defined",
                )
            )
    return out


BOX = ("create_box", "read_data", "read_restart")


@kind("command_before_box")
def _command_before_box(text, raw, script, run_dir, rng):
    simple = _simple(script, raw)
    box = next((c for c in simple if c.name in BOX), None)
    if box is None:
        return []
    out = []
    for c in simple:
        if c.line > box.line and c.name in ("fix", "velocity", "mass", "group", "compute", "pair_coeff"):
            lines = list(raw)
            moved = lines.pop(c.line - 1)
            lines.insert(box.line - 1, moved)
            out.append(("\n".join(lines) + "\n", box.line, f"{c.name} (line {c.line}) moved before {box.name}"))
    return out


THERMOSTATS = re.compile(r"^(nvt|npt|langevin|temp/|nve|nph|rigid)")


@kind("undefined_group")
def _undefined_group(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        if c.name == "fix" and len(c.args) > 2 and THERMOSTATS.match(c.args[2]):
            new = _replace_word(raw[c.line - 1], c.args[1], c.args[1] + "_atoms")
            if new:
                out.append((_edit(raw, c.line - 1, new), c.line, f"fix {c.args[2]} on group {c.args[1]}_atoms"))
    return out


@kind("float_for_integer")
def _float_for_integer(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        if c.name in ("run", "thermo", "create_box") and c.args and c.args[0].isdigit():
            new = _replace_word(raw[c.line - 1], c.args[0], c.args[0] + ".5")
            if new:
                out.append((_edit(raw, c.line - 1, new), c.line, f"{c.name} {c.args[0]}.5"))
    return out


@kind("timestep_in_wrong_unit")
def _timestep_in_wrong_unit(text, raw, script, run_dir, rng):
    units = next((c.args[0] for c in script.commands if c.name == "units" and c.args), "lj")
    factor = {"metal": 1000.0, "real": 1000.0, "lj": 200.0}.get(units)
    out = []
    for c in _simple(script, raw):
        if factor and c.name == "timestep" and c.args and re.fullmatch(r"[\d.eE+-]+", c.args[0]):
            value = f"{float(c.args[0]) * factor:g}"
            new = _replace_word(raw[c.line - 1], c.args[0], value)
            if new:
                out.append((_edit(raw, c.line - 1, new), c.line, f"timestep {c.args[0]} -> {value} ({units})"))
    return out


@kind("second_integrator")
def _second_integrator(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        if c.name == "fix" and len(c.args) > 2 and re.match(r"^(nvt|npt|nph|langevin|temp/)", c.args[2]):
            extra = f"fix dup_{c.args[0]} {c.args[1]} nve"
            if c.args[2].startswith(("langevin", "temp/")):
                extra = f"fix dup_{c.args[0]} {c.args[1]} nvt temp 1.0 1.0 1.0"
            lines = raw[: c.line] + [extra] + raw[c.line :]
            out.append(("\n".join(lines) + "\n", c.line + 1, f"{extra} after fix {c.args[2]}"))
    return out


@kind("undefined_compute_reference")
def _undefined_compute_reference(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        line = raw[c.line - 1].split("#")[0]
        if c.name in ("thermo_style", "fix", "compute", "variable", "dump") and (
            m := re.search(r"\b([cf])_(\w+)", line)
        ):
            new = line[: m.start()] + f"{m.group(1)}_{m.group(2)}2" + line[m.end() :]
            out.append((_edit(raw, c.line - 1, new), c.line, f"{m.group(0)} -> {m.group(0)}2"))
    return out


@kind("missing_pair_style")
def _missing_pair_style(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        if c.name == "pair_style":
            need = next(
                (
                    d.line
                    for d in script.commands
                    if d.file == script.main
                    and d.line > c.line
                    and d.name in ("pair_coeff", "pair_modify", "read_data", "run", "minimize")
                ),
                None,
            )
            if need:
                lines = raw[: c.line - 1] + raw[c.line :]
                out.append(("\n".join(lines) + "\n", need - 1, "pair_style removed"))
            break
    return out


def mutants(example: str, run_dir: Path, script_name: str, per_kind: int, kinds: list[str]) -> list[Mutant]:
    text = (run_dir / script_name).read_text(errors="replace")
    raw = text.splitlines()
    script = parse_text(text, script_name, run_dir)
    found = []
    for name in kinds:
        rng = random.Random(f"{example}:{name}")
        options = KINDS[name](text, raw, script, run_dir, rng)
        rng.shuffle(options)
        found += [Mutant(example, name, t, line, note) for t, line, note in options[:per_kind] if t != text]
    return found


# --------------------------------------------------------------------------------------------- measuring


@dataclass
class Outcome:
    example: str
    kind: str
    line: int
    note: str
    preflight_ok: bool
    own_ok: bool  # preflight without the dry run: our own checks (parse, policy, potentials, static) only
    first_error: str | None
    first_line: int | None
    first_file: str | None
    hint: bool
    exit_status: int | str
    grade: str
    fails: bool  # LAMMPS failed, or the evaluation graded the run FAIL
    preflight_s: float
    run_s: float


def measure(corpus: Path, script_name: str, mutant: Mutant, timeout: float) -> Outcome:
    install = find_lammps()
    with tempfile.TemporaryDirectory(prefix="mdagent-mutant-") as tmp:
        run_dir = copy_example(corpus / mutant.example, Path(tmp) / "run")
        path = run_dir / script_name
        path.write_text(mutant.text)
        start = time.monotonic()
        report = preflight(path, run_dir, install=install)
        pre_s = time.monotonic() - start
        own = preflight(path, run_dir, install=install, dry=False)
        first = next((d for d in report.diagnostics if d.severity == Severity.ERROR), None)
        env = install.environ()
        env["OMP_NUM_THREADS"] = "1"
        start = time.monotonic()
        try:
            proc = subprocess.run(
                install.command("-in", script_name, "-log", "log.lammps", "-nocite", "-screen", "none"),
                cwd=run_dir,
                env=env,
                capture_output=True,
                timeout=timeout,
            )
            status: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
        run_s = time.monotonic() - start
        try:
            log = read_log(run_dir / "log.lammps")
            grade = evaluate(log, parse_text(mutant.text, script_name, run_dir)).grade
            errored = bool(log.errors)
        except LogError:
            grade, errored = Grade.FAIL, True
        if status == "timeout":
            fails, grade_text = errored, "timeout"
        else:
            fails, grade_text = status != 0 or errored or grade == Grade.FAIL, grade.value
    return Outcome(
        mutant.example,
        mutant.kind,
        mutant.line,
        mutant.note,
        report.ok,
        own.ok,
        first.code + ": " + first.message[:100] if first else None,
        first.line if first else None,
        first.file if first else None,
        bool(first and first.hint),
        status,
        grade_text,
        fails,
        pre_s,
        run_s,
    )


def _measure(args: tuple[Path, str, Mutant, float]) -> Outcome:
    return measure(*args)


def _baseline(corpus: Path, example: dict) -> tuple[str, list[str]]:
    """Errors preflight reports on the unmutated script (false errors)."""
    with tempfile.TemporaryDirectory(prefix="mdagent-mutant-") as tmp:
        run_dir = copy_example(corpus / example["name"], Path(tmp) / "run")
        report = preflight(run_dir / example["input"], run_dir)
    return example["name"], [d.render() for d in report.diagnostics if d.severity == Severity.ERROR]


def ratio(a: int, b: int) -> str:
    return f"{a}/{b} = {100 * a / b:.1f} %" if b else f"{a}/0"


# Kinds whose mutant a careful reviewer rejects even when LAMMPS runs it and its evaluation passes: the physics
# is wrong (other units, swapped elements, a 1000x timestep, atoms integrated twice). Any other mutant that runs
# and passes its evaluation may be harmless (LAMMPS read the curly quote, the dropped argument was optional): a
# refusal of it counts as a false refusal.
WRONG_PHYSICS = {"wrong_units", "element_order", "timestep_in_wrong_unit", "second_integrator"}

# Where each kind comes from: a source on the mistakes models make in LAMMPS input, and what in it. None: no source
# found that names the kind (reported apart as uncited).
LEQS = "MDAgent's LAMMPS script grading rubric, huggingface.co/datasets/FredericFan/MDAgent_LEQS_DATASET: {}"
HOLBROOK = (
    "Holbrook, Verduzco, Strachan, arXiv:2603.20630 (LLM-written LAMMPS inputs: parser pass rate 74 % -> "
    "91 % across eight models)"
)
MDGYM = "Kumar et al., MDGym, arXiv:2605.08941 (agents 'produce physically unstable configurations')"
MDAGENT2 = (
    "Shi et al., MDAgent2, arXiv:2601.02075 (its runtime needs tools that manage potential files; low "
    "executability of generated code)"
)
SYNTAX = LEQS.format("'syntax error: a command that does not exist or a misspelling'") + "; " + HOLBROOK
PARAMETER = LEQS.format("'parameter error: parameters set incorrectly'") + "; " + HOLBROOK
MISSING = LEQS.format("'missing logic: a necessary setting not set'")
SOURCES: dict[str, str | None] = {
    "misspelled_command": SYNTAX,
    "misspelled_style": SYNTAX,
    "misspelled_keyword": SYNTAX,
    "wrong_arg_count": PARAMETER,
    "float_for_integer": PARAMETER,
    "wrong_potential_file": MDAGENT2,
    "missing_mass": MISSING,
    "missing_pair_style": MISSING,
    "pair_coeff_missing_type": MISSING,
    "wrong_units": MDGYM + "; " + LEQS.format("'parameter error'"),
    "timestep_in_wrong_unit": MDGYM + "; " + LEQS.format("'parameter error'"),
    "element_order": None,
    "ampersand_blank_line": None,
    "curly_quotes": None,
    "undefined_variable": None,
    "command_before_box": None,
    "undefined_group": None,
    "second_integrator": None,
    "undefined_compute_reference": None,
}


def rejectable(o: Outcome) -> bool:
    return o.fails or o.kind in WRONG_PHYSICS


def report(outcomes: list[Outcome], kinds: list[str], examples: list[dict], false_errors: list) -> None:
    """Every mutant in the denominator: caught before queue (by our own checks, or only by the dry run), caught
    only at run time, missed, harmless and run, refused though LAMMPS runs it."""
    header = (
        f"{'kind':28}{'mut':>5}{'rej':>5}{'queue':>6}{'own':>5}{'dry':>5}{'run':>5}{'miss':>5}{'ok':>5}"
        f"{'refR':>5}{'refF':>5}{'line':>5}  source"
    )
    print("\n" + header)
    rows = {}
    for name in kinds:
        mine = [o for o in outcomes if o.kind == name]
        rej = [o for o in mine if rejectable(o)]
        queue = [o for o in rej if not o.preflight_ok]
        row = rows[name] = {
            "mut": len(mine),
            "rej": len(rej),
            "queue": len(queue),
            "own": sum(not o.own_ok for o in queue),
            "dry": sum(o.own_ok for o in queue),
            "run": sum(o.preflight_ok and o.fails for o in mine),
            "miss": sum(o.preflight_ok and not o.fails and o.kind in WRONG_PHYSICS for o in mine),
            "ok": sum(o.preflight_ok and not rejectable(o) for o in mine),
            "refR": sum(not o.preflight_ok and not o.fails and o.kind in WRONG_PHYSICS for o in mine),
            "refF": sum(not o.preflight_ok and not rejectable(o) for o in mine),
            "line": sum(at_line(o, examples) for o in queue if o.fails),
        }
        source = "cited" if SOURCES.get(name) else "UNCITED"
        print(f"{name:28}" + "".join(f"{row[k]:>{5 if k != 'queue' else 6}}" for k in row) + f"  {source}")
    total = {k: sum(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    print(f"{'total':28}" + "".join(f"{total[k]:>{5 if k != 'queue' else 6}}" for k in total))
    print(
        "\ncolumns: mut = mutants; rej = a careful reviewer rejects it (LAMMPS fails or the evaluation grades FAIL, "
        "or the\nphysics is wrong: " + ", ".join(sorted(WRONG_PHYSICS)) + "); queue = of those, refused before "
        "any job is queued;\nown / dry = of those, by our own checks (preflight without the dry run) / only by "
        "LAMMPS's dry run; run = preflight\npassed, LAMMPS failed or the evaluation graded FAIL (caught only at run "
        "time); miss = preflight passed, it ran and\npassed its evaluation with wrong physics; ok = it ran and passed "
        "its evaluation (may be harmless); refR / refF = refused\nalthough LAMMPS runs it: wrong physics (a right "
        "refusal) / may be harmless (a false refusal); line = first error at the\nmutated line, of the refused "
        "failing ones"
    )
    # kinds only LAMMPS's parser rejects: our own checks catch (almost) none of them
    parser_only = [k for k in kinds if rows[k]["queue"] and rows[k]["own"] <= 0.1 * rows[k]["queue"]]
    rest = [k for k in kinds if k not in parser_only]

    def share(ks: list[str], num: str, den: str) -> str:
        return ratio(sum(rows[k][num] for k in ks), sum(rows[k][den] for k in ks))

    caught = total["queue"] / total["rej"] if total["rej"] else 1.0
    harmless = total["ok"] + total["refF"]
    print(
        f"\nreviewer-rejectable mutants caught before any job is queued: {ratio(total['queue'], total['rej'])} "
        f"(target >= {TARGET_CAUGHT:.0%}): {'MET' if caught >= TARGET_CAUGHT else 'NOT MET'}"
    )
    print(
        f"  by our own checks (no dry run): {ratio(total['own'], total['rej'])}; only by LAMMPS's dry run: "
        f"{ratio(total['dry'], total['rej'])}"
    )
    print(
        f"  caught only at run time: {ratio(total['run'], total['rej'])}; missed (ran with wrong physics): "
        f"{ratio(total['miss'], total['rej'])}"
    )
    print(f"kinds only LAMMPS's dry run catches (own checks <= 10 % of their catches): {', '.join(parser_only)}")
    print(f"  their mutants caught before queue: {share(parser_only, 'queue', 'rej')}")
    print(
        f"the other kinds: caught before queue {share(rest, 'queue', 'rej')}, by our own checks "
        f"{share(rest, 'own', 'rej')}"
    )
    cited = [k for k in kinds if SOURCES.get(k)]
    uncited = [k for k in kinds if k not in cited]
    print(
        f"cited kinds: caught before queue {share(cited, 'queue', 'rej')}; uncited kinds "
        f"({', '.join(uncited)}): {share(uncited, 'queue', 'rej')}"
    )
    unmutated = len(examples)
    refusals = total["refF"] + len(false_errors)
    print(
        f"false refusals: {total['refF']} of {harmless} mutants that run and pass their evaluation, + "
        f"{len(false_errors)} of {unmutated} unmutated scripts = {ratio(refusals, harmless + unmutated)} "
        f"(target <= 1 %): {'MET' if refusals <= 0.01 * (harmless + unmutated) else 'NOT MET'}"
    )
    refused_failing = sum(not o.preflight_ok and o.fails for o in outcomes)
    print(f"first error at the mutated line: {ratio(total['line'], refused_failing)}")
    for name, errs in false_errors:
        print(f"  false error {name}: {errs[0]}")
    print("\nsources of the kinds:")
    for k in kinds:
        print(f"  {k}: {SOURCES.get(k) or 'UNCITED: no source found that names this mistake'}")
    listing = [
        ("caught only at run time", [o for o in outcomes if o.preflight_ok and o.fails]),
        (
            "missed (wrong physics ran)",
            [o for o in outcomes if o.preflight_ok and not o.fails and o.kind in WRONG_PHYSICS],
        ),
        ("false refusals", [o for o in outcomes if not o.preflight_ok and not rejectable(o)]),
    ]
    for title, items in listing:
        if items:
            print(f"\n{title} ({len(items)}, first 40):")
            for o in items[:40]:
                print(
                    f"  {o.kind:28} {o.example:30} line {o.line}: {o.note} -> exit {o.exit_status}, {o.grade}; "
                    f"{o.first_error or 'no error'}"
                )


def at_line(o: Outcome, examples: list[dict]) -> bool:
    return o.first_line == o.line and o.first_file in (
        None,
        next((e["input"] for e in examples if e["name"] == o.example), None),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a corpus folder with manifest.json (default: the tests')")
    parser.add_argument("--per-kind", type=int, default=2, help="mutants per kind and example (default 2)")
    parser.add_argument("--kinds", help="comma-separated kinds (default: all)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--jobs", type=int, default=2, help="parallel mutants (default 2: the machine's cores)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each real run (default 30)")
    parser.add_argument("--json", type=Path, help="also write every outcome (and the false errors) to this file")
    parser.add_argument("--report", type=Path, help="print the report of a file --json wrote, without running")
    parser.add_argument("--list", action="store_true", help="list the kinds and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(KINDS))
        return
    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    if unknown := [k for k in kinds if k not in KINDS]:
        sys.exit(f"unknown kind(s) {', '.join(unknown)}; --list shows them")
    if args.report:
        saved = json.loads(args.report.read_text())
        if isinstance(saved, list):  # outcomes only: the unmutated scripts are preflighted again
            corpus, examples = test_corpus()
            baseline = [_baseline(corpus, e) for e in examples]
            saved = {
                "outcomes": saved,
                "examples": examples,
                "false_errors": [(name, errs) for name, errs in baseline if errs],
            }
        outcomes = [Outcome(**o) for o in saved["outcomes"]]
        report(
            outcomes, [k for k in kinds if any(o.kind == k for o in outcomes)], saved["examples"], saved["false_errors"]
        )
        return
    if args.corpus:
        corpus = args.corpus
        if not (corpus / "manifest.json").is_file():
            sys.exit(f"no manifest.json in {corpus}")
        examples = json.loads((corpus / "manifest.json").read_text())["examples"]
    else:
        corpus, examples = test_corpus()
    examples = examples[: args.limit]
    start = time.monotonic()
    print(f"corpus {corpus}: {len(examples)} examples; LAMMPS {find_lammps().executable}", flush=True)

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        baseline = list(pool.map(_baseline, [corpus] * len(examples), examples))
        passing = [e for e, (_, errs) in zip(examples, baseline, strict=True) if not errs]
        todo = []
        for e in passing:
            with tempfile.TemporaryDirectory(prefix="mdagent-mutant-") as tmp:
                run_dir = copy_example(corpus / e["name"], Path(tmp) / "run")
                todo += [
                    (corpus, e["input"], m, args.timeout)
                    for m in mutants(e["name"], run_dir, e["input"], args.per_kind, kinds)
                ]
        print(f"{len(todo)} mutants of {len(passing)} passing scripts, {len(kinds)} kinds; running...", flush=True)
        outcomes: list[Outcome] = []
        for i, o in enumerate(pool.map(_measure, todo, chunksize=1), 1):
            outcomes.append(o)
            if i % 50 == 0:
                print(f"  {i}/{len(todo)} ({time.monotonic() - start:.0f} s)", flush=True)

    false_errors = [(name, errs) for name, errs in baseline if errs]
    if args.json:
        args.json.write_text(
            json.dumps(
                {"outcomes": [asdict(o) for o in outcomes], "false_errors": false_errors, "examples": examples},
                indent=1,
            )
        )
    report(outcomes, kinds, examples, false_errors)
    pre_times = sorted(o.preflight_s for o in outcomes)
    if pre_times:
        print(
            f"\npreflight of a mutant: median {pre_times[len(pre_times) // 2]:.3f} s; "
            f"whole bench {time.monotonic() - start:.0f} s"
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
