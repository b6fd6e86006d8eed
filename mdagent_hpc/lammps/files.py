"""Which files a LAMMPS command reads or writes, from its words (after variable substitution)."""

from __future__ import annotations

import re

from mdagent_hpc.models import Command, FileAccess

READ, WRITE = "read", "write"
_STYLE_NAME = re.compile(r"[a-z][a-z0-9]*(/[a-z0-9]+)+")

# `molecule ID file1 keyword values ... file2 keyword values ...`: each keyword's number of values.
_MOLECULE_KEYWORDS = {"offset": 5, "toff": 1, "boff": 1, "aoff": 1, "doff": 1, "ioff": 1, "scale": 1}
# Keywords that end a list of file names in `rerun`.
_RERUN_KEYWORDS = {"first", "last", "every", "skip", "start", "stop", "dump"}
# Keywords, in any command, whose next word is a file written or read.
_WRITE_KEYWORDS = {"file", "append", "outfile", "output", "screen_file"}
_READ_KEYWORDS = {"infile"}
# Commands whose keyword scan is safe (their keywords named `file`/`append` really are files).
_KEYWORD_COMMANDS = {"print", "fix", "info", "compute"}


def number(word: str) -> float | None:
    """The value of a LAMMPS numeric word (`1e-3`, `-2`, `nan`, `inf`), else None. The one number parser."""
    try:
        return float(word)
    except ValueError:
        return None


def numbers(words: list[str]) -> list[float] | None:
    """Every word's value, or None when one word is not a number."""
    values = [number(w) for w in words]
    return None if None in values else values  # type: ignore[return-value]


def is_number(word: str) -> bool:
    return number(word) is not None


def looks_like_file(word: str) -> bool:
    """A word in a coefficient line that names a file rather than a number, element, type or keyword."""
    if is_number(word) or word in ("NULL", "*") or "*" in word and word.replace("*", "").isdigit():
        return False
    if _STYLE_NAME.fullmatch(word):  # a hybrid sub-style such as lj/cut/coul/long
        return False
    return "." in word or "/" in word


def _fix_files(style: str, a: list[str]) -> list[tuple[int, str, str]]:
    """(index into a, mode, kind) for a fix's positional file arguments; a = words after `fix`."""
    at = {
        "qeq/reaxff": [(7, READ)],
        "qeq/reax": [(7, READ)],
        "qeq/point": [(7, READ)],
        "qeq/shielded": [(7, READ)],
        "qeq/slater": [(7, READ)],
        "qeq/dynamic": [(7, READ)],
        "qeq/fire": [(7, READ)],
        "ttm/mod": [(4, READ)],
        "cmap": [(3, READ)],
        "tmd": [(4, READ), (6, WRITE)],
        "reaxff/species": [(6, WRITE)],
        "reaxff/bonds": [(4, WRITE)],
        "electron/stopping": [(4, READ)],
        "eos/table": [(5, READ)],
        "colvars": [(3, READ)],
        "orient/fcc": [(9, READ), (10, READ)],
        "orient/bcc": [(9, READ), (10, READ)],
    }.get(style, [])
    if style == "bond/react":  # ... react ID group Nevery Rmin Rmax pre post map_file ..., once per reaction
        at = [(i + 8, READ) for i, w in enumerate(a) if w == "react"]
    if style == "poems" and len(a) > 4 and a[3] == "file":
        at = [(4, READ)]
    if style == "ttm" and len(a) > 15 and a[13] not in ("infile", "outfile") and not is_number(a[13]):
        at = [(13, READ), (15, WRITE)]  # pre-2022 positional T_infile N T_outfile
    return [
        (i, mode, "fix")
        for i, mode in at
        if i < len(a) and not (style.startswith("qeq") and a[i] in ("reaxff", "coul/streitz"))
    ]


def command_files(words: list[str]) -> list[tuple[str, str, str]]:
    """(path, mode, kind) for every file `words` reads or writes."""
    if not words:
        return []
    name, a = words[0], words[1:]
    found: list[tuple[str, str, str]] = []

    def at(i: int, mode: str, kind: str) -> None:
        if i < len(a):
            found.append((a[i], mode, kind))

    if name in ("read_data", "read_restart", "read_dump", "include", "ndx2group", "fitpod"):
        at(0, READ, {"include": "include", "read_dump": "dump"}.get(name, name.removeprefix("read_")))
    elif name == "jump" and a and a[0] != "SELF":
        at(0, READ, "include")
    elif name == "molecule":
        i = 1
        while i < len(a):
            if a[i] in _MOLECULE_KEYWORDS:
                i += 1 + _MOLECULE_KEYWORDS[a[i]]
                continue
            found.append((a[i], READ, "molecule"))
            i += 1
    elif name == "rerun":
        for w in a:
            if w in _RERUN_KEYWORDS:
                break
            found.append((w, READ, "dump"))
    elif name == "log" and a and a[0] != "none":
        at(0, WRITE, "log")
    elif name in ("write_data", "write_restart", "write_coeff", "region2vmd", "group2ndx"):
        at(0, WRITE, name.removeprefix("write_"))
    elif name == "write_dump":
        at(2, WRITE, "dump")
    elif name == "dump":
        at(4, WRITE, "dump")
    elif name == "restart" and a and a[0] != "0":
        for w in a[1:3]:
            if w not in ("fileper", "nfile"):
                found.append((w, WRITE, "restart"))
    elif name == "pair_write":
        at(6, WRITE, "table")
    elif name == "bond_write":
        at(4, WRITE, "table")
    elif name in ("angle_write", "dihedral_write"):
        at(2, WRITE, "table")
    elif name == "variable" and len(a) > 2 and a[1] in ("file", "atomfile"):
        at(2, READ, "variable")
    elif name == "neb" and len(a) > 6 and a[5] in ("final", "each"):
        at(6, READ, "neb")
    elif name == "pair_style" and a:
        if a[0] == "reaxff" and len(a) > 1 and a[1] != "NULL":
            at(1, READ, "potential")
        elif a[0] == "list":
            at(1, READ, "potential")
        elif a[0] == "mliap":
            found += [
                (a[i + 2], READ, "potential")
                for i, w in enumerate(a[:-2])
                if w in ("model", "descriptor") and looks_like_file(a[i + 2])
            ]
    elif name in ("pair_coeff", "bond_coeff", "angle_coeff", "dihedral_coeff", "improper_coeff"):
        start = 2 if name == "pair_coeff" else 1
        found += [(w, READ, "potential") for w in a[start:] if looks_like_file(w)]
    elif name == "shell" and a:
        sub = a[0]
        if sub in ("mkdir", "rm", "rmdir", "mv", "cd"):
            found += [(w, WRITE, "shell") for w in a[1:]]
    if name == "fix" and len(a) > 2:
        found += [(a[i], mode, kind) for i, mode, kind in _fix_files(a[2], a)]
    if name in _KEYWORD_COMMANDS:
        for i, w in enumerate(a[:-1]):
            if w in _WRITE_KEYWORDS:
                j = i + 2 if w == "outfile" and is_number(a[i + 1]) and i + 2 < len(a) else i + 1
                found.append((a[j], WRITE, name))
            elif w in _READ_KEYWORDS:
                found.append((a[i + 1], READ, name))
            elif name == "info" and w == "out" and a[i + 1] in ("append", "overwrite") and i + 2 < len(a):
                found.append((a[i + 2], WRITE, "info"))
    return found


def file_accesses(command: Command, words: list[str]) -> list[FileAccess]:
    return [
        FileAccess(path=p, mode=m, kind=k, line=command.line, file=command.file, command=" ".join(words))
        for p, m, k in command_files(words)
    ]
