"""Parse a LAMMPS input the way LAMMPS reads it, without running it.

LAMMPS reads a line, joins `&` continuations and triple-quoted text, strips `#` comments outside quotes, then
substitutes `$x`, `${name}` and `$(expr)` outside quotes *before* splitting the line into words, so a variable
can become a command name or several words. We do the same, and because a script can loop (`label`/`jump`,
`next`) and redefine variables, we record two things per command:

- `words`: the command with each variable's value at that point of a straight top-to-bottom reading;
- `variants`: every distinct word list it can execute as, using every value each variable can ever take.

The policy judges all variants, so what it approves is what can run. Values computed at run time (equal-style
formulas, `$(...)`) are numbers, which we stand in for with `0` in variants; values we cannot know at all
(`getenv`, `python`, a file-style variable whose file is absent) stay as the literal reference, and the
policy refuses them wherever they could name a command or a file.
"""

from __future__ import annotations

import ast
import itertools
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.lammps.files import file_accesses
from mdagent_hpc.lammps.log import COMMANDS
from mdagent_hpc.models import Command, Diagnostic, ParsedScript, Severity

MAX_SCRIPT_BYTES = 5_000_000
MAX_VARIANTS = 64
MAX_INCLUDE_DEPTH = 10
NUMBER = "0"  # stands in for a numeric value known only at run time

# Commands whose quoted arguments are themselves commands LAMMPS will execute.
NESTING = {"if", "run", "partition"}


class ScriptError(MDAgentError):
    """The script cannot be read at all (missing, binary, too large)."""


@dataclass
class _Line:
    file: str
    line: int
    text: str
    open_quote: str | None = None  # a quote left open in the line as written
    cut_by_blank: bool = False  # ends with `&` before a blank line, and the next line is no command


@dataclass
class _Vars:
    """Variable values: `current` as of a top-to-bottom reading, `every` over the whole script."""

    current: dict[str, str] = field(default_factory=dict)
    every: dict[str, list[str]] = field(default_factory=dict)
    unknowable: set[str] = field(default_factory=set)

    def define(self, name: str, values: list[str], *, keep_if_defined: bool = False) -> None:
        if not (keep_if_defined and name in self.current):
            self.current[name] = values[0] if values else NUMBER
        bucket = self.every.setdefault(name, [])
        for v in values:
            if v not in bucket:
                bucket.append(v)


def read_script_text(path: Path) -> str:
    if not path.exists():
        raise ScriptError(f"{path}: no such file")
    if path.is_dir():
        raise ScriptError(f"{path} is a folder, not a LAMMPS input script")
    size = path.stat().st_size
    if size > MAX_SCRIPT_BYTES:
        raise ScriptError(f"{path} is {size / 1e6:.1f} MB; an input script is at most {MAX_SCRIPT_BYTES // 10**6} MB")
    data = path.read_bytes()
    if b"\0" in data:
        raise ScriptError(f"{path} is a binary file, not a LAMMPS input script")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def logical_lines(text: str, file: str) -> list[_Line]:
    """Join `&` continuations and triple-quoted blocks; strip comments. Line numbers are 1-based starts."""
    out: list[_Line] = []
    raw = text.splitlines()
    i = 0
    while i < len(raw):
        start = i
        buf = raw[i]
        i += 1
        cut = False
        while True:
            stripped = buf.rstrip()
            if buf.count('"""') % 2 == 1 and i < len(raw):
                buf = buf + "\n" + raw[i]
                i += 1
            elif stripped.endswith("&") and i < len(raw):
                cut = not raw[i].strip()  # LAMMPS joins the blank line: the command ends here
                buf = stripped[:-1] + " " + raw[i]
                i += 1
            else:
                break
        if cut:
            following = next((w for line in raw[i:] if (w := strip_comment(line).split())), None)
            cut = following is not None and following[0] not in COMMANDS
        quote = unmatched_quote(buf)
        buf = strip_comment(buf).strip()
        if buf:
            out.append(_Line(file, start + 1, buf, quote, cut))
    return out


def _quote_spans(text: str):
    """Yield (segment, quote) pieces of text: quote is '', "'", '"' or '\"\"\"'."""
    i, n = 0, len(text)
    plain = ""
    while i < n:
        for q in ('"""', '"', "'"):
            if text.startswith(q, i):
                end = text.find(q, i + len(q))
                if end < 0:
                    end = n
                if plain:
                    yield plain, ""
                    plain = ""
                yield text[i + len(q) : end], q
                i = end + len(q)
                break
        else:
            plain += text[i]
            i += 1
    if plain:
        yield plain, ""


def unmatched_quote(text: str) -> str | None:
    """The quote left open in a logical line (single, double or triple), else None. LAMMPS stops on it."""
    i, n = 0, len(text)
    while i < n:
        if text[i] == "#":
            return None
        for q in ('"""', '"', "'"):
            if text.startswith(q, i):
                end = text.find(q, i + len(q))
                if end < 0:
                    return q
                i = end + len(q)
                break
        else:
            i += 1
    return None


def strip_comment(text: str) -> str:
    out = []
    for seg, q in _quote_spans(text):
        if not q and "#" in seg:
            out.append(seg[: seg.index("#")])
            break
        out.append(f"{q}{seg}{q}")
    return "".join(out)


def split_words(text: str) -> list[str]:
    """Split on whitespace outside quotes; quotes are removed, quoted text is one word."""
    words: list[str] = []
    current: str | None = None
    for seg, q in _quote_spans(text):
        if q:
            current = (current or "") + seg
            continue
        parts = re.split(r"(\s+)", seg)
        for part in parts:
            if not part:
                continue
            if part.isspace():
                if current is not None:
                    words.append(current)
                current = None
            else:
                current = (current or "") + part
    if current is not None:
        words.append(current)
    return words


_REF = re.compile(r"\$(?:\{([^}]*)\}|\(([^)]*)\)|([A-Za-z0-9_]))")


def references(text: str) -> list[str]:
    """Variable names referenced outside quotes (immediate `$(...)` excluded)."""
    names = []
    for seg, q in _quote_spans(text):
        if not q:
            names += [m.group(1) or m.group(3) for m in _REF.finditer(seg) if not m.group(2)]
    return names


def substitute(text: str, values: dict[str, list[str]]) -> list[str]:
    """Every text the line can become, with each referenced variable taking each of its values."""
    names = sorted(set(references(text)))
    choices = [values.get(n) or ["${" + n + "}"] for n in names]
    results: list[str] = []
    for combo in itertools.product(*choices):
        chosen = dict(zip(names, combo, strict=True))
        out = []
        for seg, q in _quote_spans(text):
            if q:
                out.append(f"{q}{seg}{q}")
            else:
                out.append(
                    _REF.sub(lambda m, c=chosen: NUMBER if m.group(2) is not None else c[m.group(1) or m.group(3)], seg)
                )
        result = "".join(out)
        if result not in results:
            results.append(result)
        if len(results) >= MAX_VARIANTS:
            break
    return results


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def evaluate_formula(formula: str, current: dict[str, str]) -> str | None:
    """Value of a literal arithmetic equal-style formula (`2*150`, `v_T/2`), formatted like LAMMPS; else None."""
    expr = re.sub(r"v_([A-Za-z0-9_]+)", lambda m: current.get(m.group(1), "nan"), formula).replace("^", "**")

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError

    try:
        value = ev(ast.parse(expr, mode="eval").body)
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError):
        return None
    return f"{value:.15g}"


def _define_variable(words: list[str], vars: _Vars, run_dir: Path | None) -> None:
    if len(words) < 3:
        return
    name, style, args = words[1], words[2], words[3:]
    if style == "delete":
        return
    if style in ("index", "world", "universe"):
        vars.define(name, args or [""], keep_if_defined=True)
    elif style in ("loop", "uloop"):
        numbers = [a for a in args if a.lstrip("-").isdigit()]
        lo, hi = (
            (1, int(numbers[0]))
            if len(numbers) == 1
            else (int(numbers[0]), int(numbers[1]))
            if len(numbers) >= 2
            else (1, 1)
        )
        vals = [str(v) for v in range(lo, hi + 1)]
        if "pad" in args:
            vals = [v.zfill(len(str(hi))) for v in vals]
        vars.define(name, vals[:MAX_VARIANTS] or [NUMBER], keep_if_defined=True)
    elif style == "string":
        vars.define(name, [" ".join(args)])
    elif style == "file" and args and run_dir is not None and _inside(run_dir, args[0]):
        lines = [ln.strip() for ln in (run_dir / args[0]).read_text(errors="replace").splitlines()]
        vars.define(name, [ln for ln in lines if ln and not ln.startswith("#")][:MAX_VARIANTS] or [""])
    elif style in ("getenv", "python", "file"):
        vars.unknowable.add(name)
        vars.current.pop(name, None)
    elif style == "equal":
        value = evaluate_formula(" ".join(args), vars.current)
        vars.define(name, [value] if value is not None else [NUMBER])
        if value is None:
            vars.current[name] = NUMBER
    else:  # atom, atomfile, vector, internal, format, timer, equal...: numbers at run time
        vars.define(name, [NUMBER])


def _inside(run_dir: Path, rel: str) -> bool:
    if rel.startswith(("/", "~")) or ".." in Path(rel).parts:
        return False
    return (run_dir / rel).is_file()


def _nested_texts(words: list[str]) -> list[str]:
    """Commands carried as arguments: `if ... then "cmd" ...`, `run N every M "cmd"`, `partition yes 1 cmd`."""
    name = words[0]
    if name == "if":
        out, skip_next = [], False
        for w in words[2:]:
            if skip_next:
                skip_next = False
            elif w == "elif":
                skip_next = True
            elif w not in ("then", "else"):
                out.append(w)
        return out
    if name == "run" and "every" in words:
        rest = words[words.index("every") + 2 :]
        return [w for w in rest if w != "NULL"]
    if name == "partition" and len(words) > 3:
        return [" ".join(words[3:])]
    return []


def _line_problems(ln: _Line) -> list[Diagnostic]:
    """What is wrong with a line before its words are read: a continuation cut by a blank line, an open quote."""
    found: list[Diagnostic] = []
    if ln.cut_by_blank:
        found.append(
            Diagnostic(
                severity=Severity.ERROR,
                code="parse.continuation",
                message="this line ends with `&` before a blank line: LAMMPS ends the command there and reads "
                "the next line as a command of its own",
                line=ln.line,
                file=ln.file,
                command=ln.text,
                hint="remove the blank line after `&` (or the `&`)",
            )
        )
    if quote := ln.open_quote:
        kind = {"'": "single", '"': "double", '"""': "triple"}[quote]
        found.append(
            Diagnostic(
                severity=Severity.ERROR,
                code="parse.unmatched_quote",
                message=f"unmatched {kind} quote ({quote}): LAMMPS stops at this line",
                line=ln.line,
                file=ln.file,
                command=ln.text,
                hint="close the quote on the same line (or join lines with &); "
                "curly quotes and apostrophes in plain words count as quotes too",
            )
        )
    return found


def _commands(pending: list[tuple[_Line, str]], vars: _Vars, diagnostics: list[Diagnostic]) -> list[Command]:
    """The commands of the lines read, each with its words now and in every variant of the variables; a variable
    used but never defined is a diagnostic."""
    every = {k: v for k, v in vars.every.items() if k not in vars.unknowable}
    defined = set(vars.every) | vars.unknowable
    commands: list[Command] = []
    for ln, context in pending:
        current_text = substitute(ln.text, {k: [v] for k, v in vars.current.items()})[0]
        variants = [split_words(t) for t in substitute(ln.text, every)]
        for ref in references(ln.text):
            if ref not in defined:
                diagnostics.append(
                    Diagnostic(
                        severity=Severity.ERROR,
                        code="parse.undefined_variable",
                        message=f"variable '{ref}' is used but never defined",
                        line=ln.line,
                        file=ln.file,
                        command=ln.text,
                        hint=f"define it first, e.g. `variable {ref} equal ...`",
                    )
                )
        commands.append(
            Command(
                line=ln.line,
                file=ln.file,
                text=ln.text,
                words=split_words(current_text),
                variants=variants,
                context=context,
            )
        )
    return commands


def parse_text(
    text: str, name: str = "in.lammps", run_dir: Path | None = None, variables: dict[str, str] | None = None
) -> ParsedScript:
    """Parse script text; `run_dir` lets `include` and file-style variables be followed."""
    vars = _Vars()
    for key, value in (variables or {}).items():
        vars.define(key, [value])
    diagnostics: list[Diagnostic] = []
    pending: list[tuple[_Line, str]] = []  # (line, context)

    def walk(lines: list[_Line], depth: int, context: str = "") -> None:
        for ln in lines:
            diagnostics.extend(_line_problems(ln))
            texts = substitute(ln.text, {k: [v] for k, v in vars.current.items()})
            words = split_words(texts[0])
            if not words:
                continue
            pending.append((ln, context))
            cmd = words[0]
            if cmd == "variable":
                _define_variable(words, vars, run_dir)
            elif cmd == "label":
                continue
            elif cmd in NESTING:
                inner = [_Line(ln.file, ln.line, t) for t in _nested_texts(split_words(ln.text))]
                walk(inner, depth, context=cmd)
            if cmd in ("include", "jump") and len(words) > 1 and words[1] != "SELF":
                target = words[1]
                if run_dir is None or not _inside(run_dir, target):
                    continue
                if depth >= MAX_INCLUDE_DEPTH:
                    diagnostics.append(
                        Diagnostic(
                            severity=Severity.ERROR,
                            code="parse.include_depth",
                            message=f"{cmd} nests deeper than {MAX_INCLUDE_DEPTH} files",
                            line=ln.line,
                            file=ln.file,
                            command=ln.text,
                        )
                    )
                    continue
                if cmd == "jump" and any(target == p.file for p, _ in pending):
                    continue  # jumping to a file already read: a loop, not new commands
                sub = read_script_text(run_dir / target)
                walk(logical_lines(sub, target), depth + 1)

    walk(logical_lines(text, name), 0)

    commands = _commands(pending, vars, diagnostics)
    script = ParsedScript(
        main=name, commands=commands, variables={k: v for k, v in vars.every.items()}, diagnostics=diagnostics
    )
    script.files = [fa for c in commands for fa in file_accesses(c, c.words)]
    return script


def parse_script(path: Path, run_dir: Path | None = None, variables: dict[str, str] | None = None) -> ParsedScript:
    """Parse the input file at `path`; `run_dir` defaults to its folder."""
    path = Path(path)
    run_dir = Path(run_dir) if run_dir is not None else path.parent
    text = read_script_text(path)
    try:
        name = str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        name = path.name
    return parse_text(text, name, run_dir, variables)
