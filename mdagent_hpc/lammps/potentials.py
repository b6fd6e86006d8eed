"""Potential files: an index of what is available, what a script's pair_coeff lines use, and download.

LAMMPS opens a potential file by the name written in the script, relative to its working folder, and when that
fails by the file's base name inside `$LAMMPS_POTENTIALS`. We search the run folder, then the user cache, the
site cache and the LAMMPS potentials folder, and record the absolute path so the run step can stage the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, Field

from mdagent_hpc.home import mdagent_home, site_potentials_dir, user_potentials_dir
from mdagent_hpc.lammps.elements import BY_NAME, MASSES, SYMBOL_SET, SYMBOLS
from mdagent_hpc.lammps.files import is_number, looks_like_file
from mdagent_hpc.lammps.install import LammpsNotFoundError, find_lammps
from mdagent_hpc.models import Command, Diagnostic, ParsedScript, PotentialUse, Severity

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ACCELERATORS = ("/kk/host", "/kk/device", "/kk", "/omp", "/gpu", "/intel", "/opt")
_ALIASES = {"reax/c": "reaxff", "meam/c": "meam"}
INDEX_VERSION = 1


def _index_version() -> str:
    """Changes with this module, so a new reader rebuilds the cached index."""
    stat = Path(__file__).stat()
    return f"{INDEX_VERSION}-{stat.st_size}-{stat.st_mtime_ns}"


class PotentialEntry(BaseModel):
    """One file in a potentials folder."""

    name: str
    path: str = Field(description="absolute path")
    styles: list[str] = Field(default_factory=list, description="pair styles that read it; [] when unknown")
    elements: list[str] = Field(default_factory=list, description="chemical elements it covers")
    names: list[str] = Field(
        default_factory=list,
        description="labels a pair_coeff must use: element names as the file writes them, or table keywords",
    )
    units: str | None = Field(None, description="from 'UNITS:' on the first line, as LAMMPS checks it")
    md5: str
    size: int

    @property
    def style(self) -> str | None:
        return self.styles[0] if self.styles else None


# ---------------------------------------------------------------- reading element names from files


def _lines(text: str) -> list[list[str]]:
    """Non-empty lines split into words, `#` comments removed."""
    return [w for line in text.splitlines() if (w := line.split("#", 1)[0].split())]


def _distinct(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def element_of(name: str) -> str | None:
    """The chemical element a label stands for: 'Cu' -> Cu, 'AlS' -> Al, 'Ow' -> O, 'C1' -> C, 'X' -> None."""
    for n in (name, name[:2], name[:1]):
        if n in SYMBOL_SET:
            return n
    return None


def elements_from_filename(name: str) -> list[str]:
    """'CuNi_u3.eam.alloy' -> [Cu, Ni]; names that are not all element symbols ('TMD.ILP') -> []."""
    run = re.match(r"[A-Z][A-Za-z]*", name)
    if not run:
        return []
    parts = re.findall(r"[A-Z][a-z]?", run.group())
    if "".join(parts) != run.group() or not all(p in SYMBOL_SET for p in parts):
        return []
    return _distinct(parts)


def _setfl(text: str) -> list[str]:  # eam/alloy, eam/fs, eam/he, eam/cd, adp: line 4 is "N El1 El2 ..."
    lines = text.splitlines()
    words = lines[3].split() if len(lines) > 3 else []
    return words[1 : 1 + int(words[0])] if words and words[0].isdigit() else []


def _funcfl(text: str) -> list[str]:  # eam: line 2 starts with the atomic number
    lines = text.splitlines()
    words = lines[1].split() if len(lines) > 1 else []
    z = int(float(words[0])) if words and is_number(words[0]) else 0
    return [SYMBOLS[z - 1]] if 1 <= z <= len(SYMBOLS) else []


def _counted(text: str) -> list[str]:  # bop, polymorphic: "N ..." then N lines "Z mass El"
    lines = _lines(text)
    if not lines or not lines[0][0].isdigit():
        return []
    return [w[-1] for w in lines[1 : 1 + int(lines[0][0])] if _NAME.fullmatch(w[-1])]


def _columns(text: str) -> list[str]:
    """tersoff, sw, comb, ILP, ...: an entry is names ('Si', 'Si(B)', 'Ow') followed by numbers."""
    names: list[str] = []
    for words in _lines(text):
        lead = next((i for i, w in enumerate(words) if is_number(w)), 0)
        names += words[:lead]
    return _distinct(names)


def _meam(text: str) -> list[str]:  # library: entries start with a quoted name; parameter files have none
    return _distinct(w[0].strip("'\"") for w in _lines(text) if w[0][0] in "'\"")


def _reaxff(text: str) -> list[str]:
    lines = _lines(text.split("\n", 1)[1] if "\n" in text else "")
    try:
        start = 1 + int(lines[0][0])
        count = int(lines[start][0])
    except (IndexError, ValueError):
        return []
    names = [w[0] for w in lines[start + 1 :] if len(w) > 1 and _NAME.fullmatch(w[0]) and is_number(w[1])]
    return names[:count]


def _snapcoeff(text: str) -> list[str]:  # "nelem ncoeff", then "El radius weight" before each block
    return [w[0] for w in _lines(text)[1:] if _NAME.fullmatch(w[0])]


def _keyed(*keys: str) -> Callable[[str], list[str]]:
    """Names on lines starting with one of `keys` ('elems Ta', 'element: Li 3 ...', 'elements: [Cu, Ni]')."""

    skip = {"nk"}  # uf3 knot-spacing keyword

    def read(text: str) -> list[str]:
        names: list[str] = []
        for words in _lines(text.replace("[", " ").replace("]", " ").replace(",", " ")):
            if words[0] in keys:
                names += [w for w in words[1:] if _NAME.fullmatch(w) and w not in skip]
        return _distinct(names)

    return read


def _eim(text: str) -> list[str]:
    return _distinct(w[1] for w in _lines(text) if w[0] == "element:" and len(w) > 1)


def _rann(text: str) -> list[str]:
    lines = _lines(text)
    return next((lines[i + 1] for i, w in enumerate(lines[:-1]) if w[0] == "atomtypes:"), [])


def _meam_spline(text: str) -> list[str]:  # new format: "meam/spline N El1 ... ElN"; old: single element
    first = next(iter(_lines(text)), [])
    return first[2:] if first[:1] == ["meam/spline"] else []


def _smtbq(text: str) -> list[str]:  # "' 1st.element.(Oxygen).Stoechio...:'  'O'   3"
    return _distinct(
        q[-1]
        for line in text.splitlines()
        if "stoechio" in line.lower()
        if (q := re.findall(r"'\s*([A-Za-z]+)\s*'", line))
    )


def _quip(text: str) -> list[str]:
    return _distinct(
        SYMBOLS[int(z) - 1] for z in re.findall(r'atomic_num="(\d+)"', text) if 1 <= int(z) <= len(SYMBOLS)
    )


def _table(text: str) -> list[str]:  # section keywords: the line before "N 1000 ..."
    lines = _lines(text)
    return [lines[i - 1][0] for i, w in enumerate(lines) if i and w[0] == "N" and len(w) > 1 and w[1].isdigit()]


def _fixed(*names: str) -> Callable[[str], list[str]]:
    return lambda text: list(names)


def _nothing(text: str) -> list[str]:
    return []


# File name pattern -> pair styles that read the file, and how to read its element names. First match wins.
FORMATS: list[tuple[str, tuple[str, ...], Callable[[str], list[str]]]] = [
    ("*.eam.alloy", ("eam/alloy",), _setfl),
    ("*.eam.fs", ("eam/fs",), _setfl),
    ("*.eam.he", ("eam/he",), _setfl),
    ("*.eam", ("eam",), _funcfl),
    ("*.cdeam", ("eam/cd", "eam/cd/old"), _setfl),
    ("*.adp", ("adp",), _setfl),
    ("*.poly", ("polymorphic",), _counted),
    ("*.bop.table", ("bop",), _counted),
    ("*.tersoff", ("tersoff", "tersoff/table"), _columns),
    ("*.tersoff.mod", ("tersoff/mod",), _columns),
    ("*.tersoff.modc", ("tersoff/mod/c",), _columns),
    ("*.tersoff.zbl", ("tersoff/zbl",), _columns),
    ("*.sw", ("sw", "sw/mod"), _columns),
    ("*.sw.mod", ("sw/mod",), _columns),
    ("*.quip", ("quip",), _quip),
    ("*.xml", ("quip",), _quip),
    ("*.gw", ("gw",), _columns),
    ("*.gw.zbl", ("gw/zbl",), _columns),
    ("*.edip", ("edip", "edip/multi"), _columns),
    ("*.vashishta", ("vashishta", "vashishta/table"), _columns),
    ("*.extep", ("extep",), _columns),
    ("*.nb3b.harmonic", ("nb3b/harmonic",), _columns),
    ("*.nb3b.screened", ("nb3b/screened",), _columns),
    ("*.ILP", ("ilp/graphene/hbn", "ilp/tmd"), _columns),
    ("*.aip.water.2dm", ("aip/water/2dm", "ilp/water/2dm"), _columns),
    ("*.KC", ("kolmogorov/crespi/full", "kolmogorov/crespi/z"), _columns),
    ("*.KC-full", ("kolmogorov/crespi/full",), _columns),
    ("*.Lebedeva", ("lebedeva/z",), _columns),
    ("*.drip", ("drip",), _columns),
    ("*.streitz", ("coul/streitz",), _columns),
    ("*.ctip", ("coul/ctip",), _columns),
    ("ffield.comb", ("comb",), _columns),
    ("ffield.comb3", ("comb3",), _columns),
    ("lib.comb3", ("comb3",), _nothing),
    ("ffield.eim", ("eim",), _eim),
    ("ffield.smtbq*", ("smtbq",), _smtbq),
    ("ffield.reax*", ("reaxff",), _reaxff),
    ("ffield.ci-reax*", ("reaxff",), _reaxff),
    ("*.meam.spline", ("meam/spline",), _meam_spline),
    ("*.meam.sw.spline", ("meam/sw/spline",), _nothing),
    ("*.msmeam", ("meam/ms",), _meam),
    ("*.meam", ("meam",), _meam),
    ("*.snapcoeff", ("snap",), _snapcoeff),
    ("*.snapparam", ("snap",), _nothing),
    ("*.mliap.descriptor", ("mliap",), _keyed("elems")),
    ("*.mliap.model", ("mliap",), _nothing),
    ("*.airebo", ("airebo",), _fixed("C", "H")),
    ("*.airebo-m", ("airebo/morse",), _fixed("C", "H")),
    ("*.rebo", ("rebo",), _fixed("C", "H")),
    ("*.lcbop", ("lcbop",), _fixed("C")),
    ("*.rebomos", ("rebomos",), _fixed("Mo", "S")),
    ("*.agni", ("agni",), _keyed("element")),
    ("*.rann", ("rann",), _rann),
    ("*.uf3", ("uf3",), _keyed("2B", "3B")),
    ("*.pod", ("pod",), _keyed("species")),
    ("*.ace", ("pace",), _keyed("elements:")),
    ("*.yace", ("pace",), _keyed("elements:")),
    ("*.table", ("table",), _table),
    ("*.mgpt.parmin", ("mgpt",), _nothing),
    ("*.mgpt.potin", ("mgpt",), _nothing),
    ("*.mesocnt", ("mesocnt",), _nothing),
    ("*.mesont", ("mesont/tpm",), _nothing),
]
_MAX_PARSE_BYTES = 20_000_000
_HEAD_ONLY = {_nothing, _setfl, _funcfl, _counted, _meam_spline}  # readers that need the first lines only


def _sniff(text: str) -> tuple[tuple[str, ...], Callable[[str], list[str]]] | None:
    """Formats recognisable from the content when the name says nothing ('acks2_ff.water', 'ZBL.dat')."""
    head = text[:2000].splitlines()
    if len(head) > 1 and "general parameters" in head[1].lower():
        return ("reaxff",), _reaxff
    if _table(text[:100_000]):
        return ("table",), _table
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: Path) -> PotentialEntry:
    """Index entry for one file: styles from its name, element names from its content, md5, size."""
    path = Path(path).resolve()
    size = path.stat().st_size
    fmt = next(((styles, read) for pattern, styles, read in FORMATS if fnmatchcase(path.name, pattern)), None)
    with open(path, "rb") as f:
        text = f.read(65536 if fmt and fmt[1] in _HEAD_ONLY else _MAX_PARSE_BYTES).decode(errors="replace")
    units = re.search(r"UNITS:\s*(\w+)", text.split("\n", 1)[0])
    if fmt is None and "\0" not in text[:1000]:
        fmt = _sniff(text)
    styles, read = fmt or ((), _nothing)
    try:
        names = read(text)
    except (ValueError, IndexError):
        names = []
    if "table" in styles:  # keywords, not elements
        elements = elements_from_filename(path.name)
    else:
        elements = _distinct(e for n in names if (e := element_of(n))) or elements_from_filename(path.name)
    return PotentialEntry(
        name=path.name,
        path=str(path),
        styles=list(styles),
        elements=elements,
        names=names,
        units=units.group(1) if units else None,
        md5=_md5(path),
        size=size,
    )


# ---------------------------------------------------------------- index


def lammps_potentials_dir() -> Path | None:
    try:
        found = find_lammps().potentials_dir
    except LammpsNotFoundError:
        return None
    return Path(found) if found else None


def default_search_path() -> list[tuple[str, Path]]:
    """Where a potential is looked for after the run folder: user cache, site cache, LAMMPS potentials."""
    path: list[tuple[str, Path | None]] = [
        ("user-cache", user_potentials_dir()),
        ("site-cache", site_potentials_dir()),
        ("lammps", lammps_potentials_dir()),
    ]
    return [(label, p) for label, p in path if p is not None]


def index_cache_file() -> Path:
    return mdagent_home() / "cache" / "potentials-index.json"


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("folders", {}) if data.get("version") == _index_version() else {}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_index(folders: Iterable[Path] | None = None) -> list[PotentialEntry]:
    """Entries for every file in `folders` (default: the search path after the run folder), in folder order.

    Cached as JSON in the user's cache folder; a file is read again only when its mtime or size changed.
    """
    folders = [p for _, p in default_search_path()] if folders is None else [Path(f) for f in folders]
    cache_file = index_cache_file()
    cache = _load_cache(cache_file)
    changed = False
    entries: list[PotentialEntry] = []
    for folder in folders:
        key = str(folder.resolve())
        old = cache.get(key, {})
        new: dict[str, list] = {}
        try:
            files = sorted(
                (e for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")), key=lambda e: e.name
            )
        except OSError:
            files = []
        for f in files:
            stat = f.stat()
            cached = old.get(f.name)
            if cached and cached[:2] == [stat.st_mtime_ns, stat.st_size]:
                entry = PotentialEntry.model_validate(cached[2])
            else:
                try:
                    entry = describe(Path(f.path))
                except OSError:  # unreadable: not a file anyone can use
                    continue
                changed = True
            new[f.name] = [stat.st_mtime_ns, stat.st_size, entry.model_dump()]
            entries.append(entry)
        changed |= new.keys() != old.keys()
        cache[key] = new
    for key in [k for k in cache if not Path(k).is_dir()]:
        del cache[key]
        changed = True
    if changed:
        try:
            _write_atomic(cache_file, json.dumps({"version": _index_version(), "folders": cache}).encode())
        except OSError:
            pass  # a read-only home only costs speed
    return entries


def normalize_style(style: str) -> str:
    """'eam/alloy/omp' -> 'eam/alloy', 'reax/c' -> 'reaxff'."""
    suffix = next((s for s in _ACCELERATORS if style.endswith(s)), "")
    style = style[: len(style) - len(suffix)]
    return _ALIASES.get(style, style)


def rank_potentials(
    entries: Iterable[PotentialEntry], elements: list[str], style: str | None = None
) -> list[PotentialEntry]:
    wanted = set(elements)
    style = normalize_style(style) if style else None
    found = [e for e in entries if wanted <= set(e.elements) and (style is None or style in e.styles)]
    return sorted(found, key=lambda e: len(set(e.elements) - wanted))  # stable: folder order breaks ties


def find_potentials(
    elements: list[str], style: str | None = None, *, folders: Iterable[Path] | None = None
) -> list[PotentialEntry]:
    """Files covering all `elements` (extras allowed) for `style`: exact sets first, then fewest extras."""
    return rank_potentials(build_index(folders), elements, style)


# ---------------------------------------------------------------- resolving a script's potentials

_HYBRID = {"hybrid", "hybrid/overlay", "hybrid/scaled"}
# pair style -> number of file arguments after the atom types; element names follow them.
_MANY_BODY = (
    "eam/alloy eam/fs eam/he eam/cd eam/cd/old adp tersoff tersoff/mod tersoff/mod/c tersoff/zbl "
    "tersoff/table sw sw/mod sw/angle/table threebody/table gw gw/zbl edip edip/multi vashishta "
    "vashishta/table extep comb comb3 bop polymorphic meam/spline meam/sw/spline reaxff airebo "
    "airebo/morse rebo rebomos lcbop nb3b/harmonic nb3b/screened agni coul/streitz coul/ctip smtbq "
    "ilp/graphene/hbn ilp/tmd ilp/water/2dm aip/water/2dm saip/metal kolmogorov/crespi/full "
    "kolmogorov/crespi/z lebedeva/z drip rann uf3 pace"
).split()
_FILES_THEN_NAMES = {s: 1 for s in _MANY_BODY} | {"snap": 2, "pod": 2, "pace/extrapolation": 2}
_FILES_ONLY = {"eam": 1, "mgpt": 2, "mesocnt": 1, "quip": 1}
# fix style -> index in Command.args of its parameter file ('reaxff' there means: from the pair style)
_QEQ_FIXES = {s: 7 for s in "qeq/reaxff qeq/reax qeq/point qeq/shielded qeq/slater qeq/dynamic".split()}
_QEQ_FIXES |= {"qeq/fire": 7, "acks2/reaxff": 5}
HINT_STAGE = "copy the file into the run folder or MDAGENT_SITE_POTENTIALS"


def _is_file_word(word: str) -> bool:
    return word == "NULL" or "." in word or "/" in word


@dataclass
class _Resolver:
    run_dir: Path
    search_path: list[tuple[str, Path]]
    uses: list[PotentialUse] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    units: str = "lj"
    mliap_uses: list[PotentialUse] = field(default_factory=list)  # files named by `pair_style mliap`
    mliap_descriptor: PotentialEntry | None = None
    mappings: list[tuple[Command, list[str], list[str]]] = field(default_factory=list)  # pair_coeff * * names
    masses: dict[int, float] = field(default_factory=dict)  # every `mass` of the script, by type
    task: str = ""  # the user's words, for a file whose pair_coeff names no element
    _seen: set[tuple] = field(default_factory=set)
    _entries: dict[Path, PotentialEntry] = field(default_factory=dict)
    _index: list[PotentialEntry] | None = None

    def index(self) -> list[PotentialEntry]:
        if self._index is None:
            self._index = build_index([p for _, p in self.search_path])
        return self._index

    def locate(self, name: str) -> tuple[str, Path] | None:
        candidates = [("run-folder", self.run_dir / name)]
        candidates += [(label, folder / Path(name).name) for label, folder in self.search_path]
        return next(((label, p.resolve()) for label, p in candidates if p.is_file()), None)

    def error(
        self,
        cmd: Command,
        words: list[str],
        code: str,
        message: str,
        hint: str | None = None,
        severity: Severity = Severity.ERROR,
    ) -> None:
        key = (code, message, cmd.file, cmd.line)
        if key not in self._seen:
            self._seen.add(key)
            self.diagnostics.append(Diagnostic.at(cmd, code, message, hint, severity, words))

    def suggest(self, name: str, style: str, names: list[str]) -> list[str]:
        """Files of the same pair style that hold every element mapped: never a file by name similarity."""
        wanted = [n for n in names if n != "NULL"]
        elements = [e for n in wanted if (e := element_of(n))]
        if not elements or len(elements) != len(wanted):
            return []
        return _distinct(e.name for e in rank_potentials(self.index(), elements, style) if e.name != name)[:3]

    def inferred(self, name: str, types: list[str]) -> tuple[list[str], str]:
        """The element a file that maps no names is for (funcfl `eam`: the element comes with the file), and where
        it was read: the file's name, else the masses of the pair_coeff's types, else the task's words."""
        stem = Path(name).name.split(".")[0]
        from_name = elements_from_filename(stem) or _distinct(
            BY_NAME[w] for w in re.findall(r"[a-z]+", stem.lower()) if w in BY_NAME
        )
        if from_name:
            return from_name, "its name"
        ntypes = max(self.masses, default=0)
        wanted = [t for word in types[:2] if (r := _type_range(word, ntypes)) for t in r]
        from_mass = _distinct(e for t in dict.fromkeys(wanted) if (e := element_of_mass(self.masses.get(t))))
        if from_mass:
            return from_mass, "the masses"
        words = re.findall(r"[A-Za-z]+", self.task)
        from_task = _distinct(
            [BY_NAME[w.lower()] for w in words if w.lower() in BY_NAME]
            + [w for w in words if len(w) == 2 and w in SYMBOL_SET]
        )
        return (from_task, "the task") if len(from_task) == 1 else ([], "")

    def suggest_for_file(self, name: str, style: str, elements: list[str]) -> list[str]:
        """Files holding `elements`: of `style` first, then of its family (eam -> eam/alloy, eam/fs), named
        with their style when it differs (the pair_style changes with them)."""
        family = style.split("/")[0]
        ranked = rank_potentials(self.index(), elements)
        exact = [e.name for e in ranked if style in e.styles and e.name != name]
        related = [
            f"{e.name} (pair_style {e.style})"
            for e in ranked
            if style not in e.styles and e.style and e.style.split("/")[0] == family
        ]
        return _distinct(exact + related)[:3]

    def fits(self, name: str, style: str, names: list[str], types: list[str] | None = None) -> str:
        """The hint's list of files that fit, or a sentence saying none does."""
        if not [n for n in names if n != "NULL"] and types is not None and style not in ("table", "python"):
            elements, source = self.inferred(name, types)
            if not elements:
                return ""
            close = self.suggest_for_file(name, style, elements)
            what = " ".join(elements)
            return (
                f"{style} files holding {what} (the element read from {source}): {', '.join(close)}"
                if close
                else f"no available {style} file holds {what} (the element read from {source})"
            )
        close = self.suggest(name, style, names)
        elements = " ".join(_distinct(n for n in names if n != "NULL"))
        if close:
            return f"{style} files holding {elements}: {', '.join(close)}"
        if elements and style != "table":
            return f"no available {style} file holds all of {elements}"
        return ""

    def use(
        self, cmd: Command, words: list[str], name: str, style: str, names: list[str] | None = None
    ) -> tuple[PotentialUse, PotentialEntry | None] | None:
        """Resolve one file argument; None when it is not ours (NULL, variables, absolute paths, '..')."""
        if name == "NULL" or "$" in name or name.startswith(("/", "~")) or ".." in Path(name).parts:
            return None
        names = names or []
        found = self.locate(name)
        entry = None
        if found:
            entry = self._entries.get(found[1]) or describe(found[1])
            self._entries[found[1]] = entry
        elements = [] if style == "table" else _distinct(n for n in names if n != "NULL")  # table: a keyword
        use = PotentialUse(
            name=name,
            pair_style=style,
            elements=elements,
            resolved=str(found[1]) if found else None,
            source=found[0] if found else None,
            md5=entry.md5 if entry else None,
            line=cmd.line,
        )
        if use not in self.uses:
            self.uses.append(use)
        if entry is None:
            where = ", ".join(["the run folder", *(label for label, _ in self.search_path)])
            fits = self.fits(name, style, names, words[1:3] if cmd.name == "pair_coeff" else None)
            hint = (f"{fits}; " if fits else "") + HINT_STAGE
            self.error(cmd, words, "potential.missing", f"potential file '{name}' not found ({where})", hint)
            return use, None
        if entry.units and self.units != entry.units:
            convertible = {entry.units, self.units} == {"metal", "real"}
            self.error(
                cmd,
                words,
                "potential.units",
                f"'{name}' is for {entry.units} units but the script uses {self.units} units"
                + ("; only some styles convert metal<->real" if convertible else ""),
                f"use `units {entry.units}` or a potential written for {self.units} units",
                Severity.WARNING if convertible else Severity.ERROR,
            )
        self.check_names(cmd, words, name, entry.names, names, style)
        return use, entry

    def check_names(
        self, cmd: Command, words: list[str], name: str, available: list[str], names: list[str], style: str
    ) -> None:
        """Every non-NULL name must be one the file defines (files whose names we cannot read pass)."""
        missing = _distinct(n for n in names if n != "NULL" and n not in available)
        if not available or not missing:
            return
        what = "keyword" if style == "table" else "element"
        wanted = [n for n in names if n != "NULL"]
        hint = f"'{name}' defines {' '.join(available)}"
        fits = self.fits(name, style, wanted) if what == "element" else ""
        hint += f"; {fits}" if fits else ""
        self.error(cmd, words, "potential.element_missing", f"{what} {' '.join(missing)} not in '{name}'", hint)

    def check_selected(self, cmd: Command, words: list[str], file: str, selected: list[str], mapped: list[str]) -> None:
        """meam and eim: the names mapped to types must be among those listed right after/before the file."""
        extra = _distinct(n for n in mapped if n != "NULL" and n not in selected)
        if extra:
            self.error(
                cmd,
                words,
                "potential.element_missing",
                f"element {' '.join(extra)} is mapped to a type but not selected from '{file}'",
                f"the selected elements are {' '.join(selected) or 'none'}; add it to them",
            )

    def pair_style(self, cmd: Command) -> None:
        args = cmd.args
        for i, word in enumerate(args):
            style = normalize_style(word)
            if style == "reaxff" and i + 1 < len(args):  # the control file or NULL
                self.use(cmd, cmd.words, args[i + 1], "reaxff")
            elif style == "mliap":  # mliap model TYPE FILE descriptor TYPE FILE | mliap unified FILE
                self.mliap_uses, self.mliap_descriptor = [], None
                for j in range(i + 1, len(args) - 1):
                    key, file = args[j], args[j + 2] if j + 2 < len(args) else ""
                    if key == "unified":
                        file = args[j + 1]
                    elif key not in ("model", "descriptor") or file == "LATER":
                        continue
                    if got := self.use(cmd, cmd.words, file, "mliap"):
                        self.mliap_uses.append(got[0])
                        if key == "descriptor":
                            self.mliap_descriptor = got[1]

    def pair_coeff(self, cmd: Command, words: list[str], style_args: list[str]) -> None:
        rest = words[3:]
        style = normalize_style(style_args[0]) if style_args else ""
        if style in _HYBRID:
            if not rest:
                return
            style = normalize_style(rest[0])
            # a sub-style listed twice in pair_style takes an instance number
            skip = 2 if len(rest) > 1 and rest[1].isdigit() and style_args.count(rest[0]) > 1 else 1
            rest = rest[skip:]
        if style in _FILES_THEN_NAMES:
            n = _FILES_THEN_NAMES[style]
            if words[1:3] == ["*", "*"]:
                self.mappings.append((cmd, words, rest[n:]))
            for file in rest[:n]:
                self.use(cmd, words, file, style, rest[n:])
            if style == "comb3":  # pair comb3 also reads lib.comb3 by that name
                self.use(cmd, words, "lib.comb3", style)
        elif style in _FILES_ONLY:
            for file in rest[: _FILES_ONLY[style]]:
                self.use(cmd, words, file, style)
        elif style in ("meam", "meam/ms"):  # library El... param|NULL El...
            split = next((i for i, w in enumerate(rest[1:], 1) if _is_file_word(w)), len(rest))
            library, mapped = rest[1:split], rest[split + 1 :]
            if rest:
                self.use(cmd, words, rest[0], style, library)
                self.check_selected(cmd, words, rest[0], library, mapped)
            if split < len(rest):
                self.use(cmd, words, rest[split], style, mapped)
        elif style == "eim":  # El... file El...
            split = next((i for i, w in enumerate(rest) if _is_file_word(w)), None)
            if split is not None:
                self.use(cmd, words, rest[split], style, rest[:split])
                self.check_selected(cmd, words, rest[split], rest[:split], rest[split + 1 :])
        elif style == "table":  # file keyword [cutoff]
            if rest:
                self.use(cmd, words, rest[0], style, rest[1:2])
        elif style == "mliap":  # the files came with pair_style; pair_coeff names the elements
            for use in self.mliap_uses:
                use.elements = _distinct(n for n in rest if n != "NULL")
            if d := self.mliap_descriptor:
                self.check_names(cmd, words, d.name, d.names, rest, style)
        elif style != "python":  # a style we do not know: resolve what looks like a file, warn when absent
            for word in filter(looks_like_file, rest):
                n_before = len(self.diagnostics)
                self.use(cmd, words, word, style)
                for d in self.diagnostics[n_before:]:
                    d.severity = Severity.WARNING

    def fix(self, cmd: Command) -> None:
        args = cmd.args
        style = normalize_style(args[2]) if len(args) > 2 else ""
        at = _QEQ_FIXES.get(style)
        if at is not None and at < len(args) and args[at] not in ("reaxff", "coul/streitz"):
            self.use(cmd, cmd.words, args[at], style)


def resolve_potentials(
    script: ParsedScript,
    run_dir: Path,
    *,
    search_path: list[tuple[str, Path]] | None = None,
    task: str = "",
) -> tuple[list[PotentialUse], list[Diagnostic]]:
    """The potential files `script` reads, where each comes from, and what is wrong with them.

    `search_path` lists (label, folder) to try after the run folder; default `default_search_path()`. `task`, the
    user's words, helps name the element of a missing file whose pair_coeff names none.
    """
    r = _Resolver(Path(run_dir).resolve(), default_search_path() if search_path is None else search_path, task=task)
    r.masses = {
        int(c.args[0]): float(c.args[1])
        for c in script.commands
        if c.name == "mass" and len(c.args) > 1 and c.args[0].isdigit() and is_number(c.args[1])
    }
    masses: dict[int, float] = {}
    style_args: list[str] = []
    for cmd in script.commands:
        if cmd.name == "units" and cmd.args:
            r.units = cmd.args[0]
        elif cmd.name == "pair_style":
            style_args = cmd.args
            r.pair_style(cmd)
        elif cmd.name == "pair_coeff":
            for words in _distinct_lists([cmd.words, *cmd.variants]):
                r.pair_coeff(cmd, words, style_args)
        elif cmd.name == "fix":
            r.fix(cmd)
        elif cmd.name == "mass" and len(cmd.args) > 1 and cmd.args[0].isdigit() and is_number(cmd.args[1]):
            masses[int(cmd.args[0])] = float(cmd.args[1])
    for cmd, words, names in r.mappings:
        _check_order(r, cmd, words, names, masses)
    return r.uses, r.diagnostics


def _check_order(r: _Resolver, cmd: Command, words: list[str], names: list[str], masses: dict[int, float]) -> None:
    """Element names in type order: a type whose mass is another mapped element's (and not its own) was swapped.

    Only swaps are judged: a mass far from every mapped element (an isotope, a coarse-grained bead) passes."""
    mapped = {i: element_of(n) for i, n in enumerate(names, 1) if n != "NULL"}
    known = {e: MASSES[e] for e in mapped.values() if e in MASSES}
    for i, element in mapped.items():
        mass = masses.get(i)
        if mass is None or element not in known or abs(mass - known[element]) <= 0.02 * known[element]:
            continue
        other = next((e for e, m in known.items() if e != element and abs(mass - m) <= 0.02 * m), None)
        if other:
            r.error(
                cmd,
                words,
                "potential.element_order",
                f"type {i} is mapped to {element} ({known[element]:g}) but has the mass of {other} "
                f"({mass:g}): the element names are probably in the wrong order",
                f"list the elements in the order of the atom types, one per type (type {i} is {other}?)",
            )


def element_of_mass(mass: float | None) -> str | None:
    """The element whose standard atomic weight is nearest `mass`, within 2 % (as `_check_order` judges)."""
    if not mass or mass <= 0:
        return None
    element, weight = min(MASSES.items(), key=lambda kv: abs(kv[1] - mass))
    return element if abs(weight - mass) <= 0.02 * weight else None


def _type_range(word: str, ntypes: int) -> range | None:
    """LAMMPS type ranges of a pair_coeff: `3`, `*`, `2*`, `*4`, `2*4` (`*` up to the highest type with a mass)."""
    m = re.fullmatch(r"(\d*)\*(\d*)|(\d+)", word)
    if not m:
        return None
    if m.group(3):
        return range(int(m.group(3)), int(m.group(3)) + 1)
    return range(int(m.group(1) or 1), int(m.group(2) or ntypes) + 1)


def _distinct_lists(lists: list[list[str]]) -> list[list[str]]:
    return [list(t) for t in dict.fromkeys(tuple(w) for w in lists)]
