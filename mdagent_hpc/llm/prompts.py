"""Chat messages for the script generator. Pure functions: no I/O."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from mdagent_hpc.lammps.elements import SYMBOL_SET
from mdagent_hpc.models import Attempt, Limits, Severity


class PotentialInfo(BaseModel):
    name: str = Field(description="bare file name, as the script must write it")
    pair_style: str
    elements: list[str] = Field(default_factory=list)


class SiteCapabilities(BaseModel):
    """What the site's LAMMPS can do, as far as the model needs to know."""

    lammps_version: str
    packages: list[str] = Field(default_factory=list)
    potentials: list[PotentialInfo] = Field(default_factory=list, description="those relevant to the task")
    limits: str = Field("", description="human-readable limits, see describe_limits()")


RULES = """\
You write LAMMPS input scripts for a materials scientist. The script runs unattended in a sandbox, \
is checked before it runs, and its log is evaluated afterwards.

Rules the script must follow:
1. Use only commands of the LAMMPS version and packages listed. No `shell`, `python`, `plugin` or \
`fix python/*` commands.
2. Read and write only files in the run folder, by plain relative names: no absolute paths, no `..`, \
no subfolders you did not create in `files`.
3. Use only the potentials listed, by their bare file name (e.g. `pair_coeff * * Cu_u3.eam Cu`), with \
the pair_style given for them. Never write potential files yourself.
4. Do not use the `log` command or rely on the log file's name: the runner decides where the log \
goes. Write extra output (dump, fix print, write_data) to relative file names.
5. Stay within the limits given (atoms, steps, wall time).
6. Report every requested quantity with `print`, with its name and units, e.g. \
`print "lattice constant = ${a} Angstrom"`, so that it appears in the log.

"""
ANSWER_JSON = """\
Answer with a single JSON object and nothing else:
{"script": "<the complete LAMMPS input script>",
 "files": [{"name": "<file name>", "content": "<text>"}],
 "potentials": ["<potential file names the script uses>"],
 "notes": "<one or two sentences on the approach>"}
`files` holds small extra text files the script reads (e.g. a data file); it is usually empty."""
# Under a LAMMPS grammar (structured_output: grammar) the answer is the script itself: no JSON, so no extra files.
ANSWER_SCRIPT = """\
Answer with the complete LAMMPS input script and nothing else: no prose, no code fences, one command per line \
(no `&` continuations). Put notes in `#` comments. Build the system with LAMMPS commands (lattice, region, \
create_box, create_atoms): you cannot supply extra files."""
ANSWERS = {"json": ANSWER_JSON, "script": ANSWER_SCRIPT}
LAST_LINE = {
    "json": "Write the script now, as the JSON object described in the instructions.",
    "script": "Write the script now: the LAMMPS input only.",
}
SYSTEM_PROMPT = RULES + ANSWER_JSON

STUCK_INSTRUCTION = (
    "The same script or the same error has now happened twice: small edits are not working. "
    "Change strategy: take a different approach (other commands, setup, ensemble or method), "
    "not a small edit of the last script."
)

CHARS_PER_TOKEN = 3  # cautious (code tokenizes worse than prose); the client sizes the answer from the real count
HISTORY_TOKENS = 6000  # the history's budget when the model's context length is not known


def build_messages(
    task: str,
    capabilities: SiteCapabilities,
    history: list[Attempt],
    *,
    stuck: bool = False,
    history_tokens: int | None = None,
    context_tokens: int | None = None,
    answer_tokens: int = 1024,
    answer: str = "json",
) -> list[dict[str, str]]:
    """System + user message for one generation. `history`: the failed attempts so far, oldest first; each is
    shown with its script and its `feedback` (agent/feedback.py), the older ones summarised to fit.

    The history gets `history_tokens`, else what `context_tokens` (the model's context length) leaves after the
    rest of the prompt and `answer_tokens`, else HISTORY_TOKENS. `answer`: "json" (the JSON object) or "script"
    (the bare script, for grammar-constrained generation)."""
    system = RULES + ANSWERS[answer]
    parts = [f"## Task\n{task.strip()}", _render_capabilities(capabilities)]
    tail = [f"## Important\n{STUCK_INSTRUCTION}"] if stuck else []
    tail.append(LAST_LINE[answer])
    if history:
        if history_tokens is None and context_tokens:
            used = (len(system) + sum(len(p) + 2 for p in parts + tail)) // CHARS_PER_TOKEN
            history_tokens = max(0, context_tokens - min(answer_tokens, context_tokens // 2) - used)
        parts.append(_render_history(history, HISTORY_TOKENS if history_tokens is None else history_tokens))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "\n\n".join(parts + tail)},
    ]


def describe_limits(limits: Limits) -> str:
    return (
        f"at most {limits.max_atoms:,} atoms, {limits.max_steps:,} timesteps in total, "
        f"{limits.max_walltime_s / 3600:g} h wall time"
    )


def relevant_potentials(potentials: list[PotentialInfo], elements: list[str]) -> list[PotentialInfo]:
    """Potentials covering all `elements`; if none does, those covering any of them."""
    if not elements:
        return list(potentials)
    wanted = set(elements)
    full = [p for p in potentials if wanted <= set(p.elements)]
    return full or [p for p in potentials if wanted & set(p.elements)]


def _render_capabilities(caps: SiteCapabilities) -> str:
    lines = ["## This site", f"LAMMPS version: {caps.lammps_version}"]
    lines.append(f"Packages: {', '.join(caps.packages) if caps.packages else '(none beyond the core)'}")
    if caps.potentials:
        lines.append("Potentials available (file name | pair_style | elements):")
        lines += [f"- {p.name} | {p.pair_style} | {' '.join(p.elements)}" for p in caps.potentials]
    else:
        lines.append("Potentials available: none for these elements; use a pair style that needs no file.")
    if caps.limits:
        lines.append(f"Limits: {caps.limits}")
    return "\n".join(lines)


def _render_attempt(att: Attempt, max_chars: int | None = None) -> str:
    """The attempt with its numbered script (cut to about `max_chars`) and what the model was told about it."""
    lines = [f"### Attempt {att.number} (failed at: {att.stage.value})"]
    if not (att.script or "").strip():
        lines.append("(the answer held no script)")
    else:
        numbered = [f"{i:4d}| {line}" for i, line in enumerate(att.script.splitlines(), 1)]
        if max_chars is not None:
            room = max(max_chars - len(att.feedback or "") - 200, 0)
            kept = next(
                (n for n in range(len(numbered)) if sum(len(x) + 1 for x in numbered[: n + 1]) > room), len(numbered)
            )
            if kept < len(numbered):
                numbered = [*numbered[:kept], f"     ({len(numbered) - kept} more lines not shown)"]
        shown = "\n".join(numbered)
        lines.append(f"Script (line numbers added for reference only):\n```\n{shown}\n```")
    if att.feedback:
        lines.append(att.feedback.strip())
    return "\n".join(lines)


def summarise(att: Attempt) -> str:
    """One line for an older attempt: where it failed and its first problem."""
    first = next((d for d in att.diagnostics if d.severity == Severity.ERROR), None)
    if first is not None:
        where = f" at line {first.line}" if first.line else ""
        why = f"[{first.code}]{where} {first.message}"
    elif att.evaluation is not None:
        finding = next((f for f in att.evaluation.findings if f.severity == Severity.ERROR), None)
        why = f"evaluation {att.evaluation.grade.value}" + (f": {finding.rule}: {finding.message}" if finding else "")
    else:
        why = "no script" if not (att.script or "").strip() else "no details"
    why = " ".join(why.split())
    return f"- Attempt {att.number} (failed at: {att.stage.value}): {why[:240]}"


def _render_history(history: list[Attempt], budget_tokens: int) -> str:
    """The last attempt in full; older ones, newest first, in full while they fit, then as one-line summaries."""
    budget = budget_tokens * CHARS_PER_TOKEN
    last = _render_attempt(history[-1], max_chars=max(budget, 4000))
    budget -= len(last)
    full: list[str] = []
    summaries: list[str] = []
    for att in reversed(history[:-1]):
        text = _render_attempt(att)
        if not summaries and len(text) <= budget:
            full.insert(0, text)
        else:
            text = summarise(att)
            if len(text) > budget:
                break
            summaries.insert(0, text)
        budget -= len(text)
    dropped = len(history) - 1 - len(full) - len(summaries)
    head = ["## Earlier attempts (oldest first, most recent last)"]
    if dropped:
        head.append(f"({dropped} older attempt(s) omitted.)")
    if summaries:
        head.append("\n".join(["Older attempts, in short:", *summaries]))
    return "\n\n".join(head + full + [last])


# --- element symbols in a task -------------------------------------------------------------------

_NAMES = {
    name: sym
    for sym, names in (
        pair.split(":")
        for pair in (
            "H:hydrogen He:helium Li:lithium Be:beryllium B:boron C:carbon N:nitrogen O:oxygen F:fluorine "
            "Ne:neon Na:sodium Mg:magnesium Al:aluminium,aluminum Si:silicon P:phosphorus S:sulfur,sulphur "
            "Cl:chlorine Ar:argon K:potassium Ca:calcium Sc:scandium Ti:titanium V:vanadium Cr:chromium "
            "Mn:manganese Fe:iron Co:cobalt Ni:nickel Cu:copper Zn:zinc Ga:gallium Ge:germanium As:arsenic "
            "Se:selenium Br:bromine Kr:krypton Rb:rubidium Sr:strontium Y:yttrium Zr:zirconium Nb:niobium "
            "Mo:molybdenum Tc:technetium Ru:ruthenium Rh:rhodium Pd:palladium Ag:silver Cd:cadmium "
            "In:indium Sn:tin Sb:antimony Te:tellurium I:iodine Xe:xenon Cs:caesium,cesium Ba:barium "
            "La:lanthanum Ce:cerium Pr:praseodymium Nd:neodymium Sm:samarium Eu:europium Gd:gadolinium "
            "Tb:terbium Dy:dysprosium Ho:holmium Er:erbium Tm:thulium Yb:ytterbium Lu:lutetium Hf:hafnium "
            "Ta:tantalum W:tungsten Re:rhenium Os:osmium Ir:iridium Pt:platinum Au:gold Hg:mercury "
            "Tl:thallium Bi:bismuth Rn:radon Th:thorium U:uranium Np:neptunium Pu:plutonium"
        ).split()
    )
    for name in names.split(",")
}  # "lead" is left out: it is mostly the verb.
# Symbols that are also ordinary words or units: elements only next to another element or a material noun.
_AMBIGUOUS = {"In", "As", "At", "I", "Be", "He", "No", "Am", "Re", "Y", "K", "P", "N", "Pa"}
_UNITS = {"K", "C", "Pa", "V", "W"}  # after a number or a degree sign they are units
_MATERIAL_NOUNS = set(
    "atom atoms crystal crystals alloy alloys nanoparticle nanoparticles cluster clusters film films slab "
    "surface surfaces bulk lattice melt liquid metal system substrate nanowire nanowires grain grains "
    "sample dimer dimers bubble bubbles interstitial interstitials vacancy vacancies impurity impurities "
    "solute solutes precipitate layer layers sheet monolayer".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9.]*")
_FORMULA_PART = re.compile(r"([A-Z][a-z]?)(\d+(?:\.\d+)?)?")
_JOINERS = "-\u2010\u2011\u2012\u2013\u2014/:"  # Cu-Ni, Cu–Ni, Cu/Ni


def _formula(word: str) -> list[str]:
    """Symbols if `word` is an element or formula (Cu, Cu3Au, SiO2, Cu50Zr50), else []."""
    word = word.rstrip(".")
    parts = _FORMULA_PART.findall(word)
    if not parts or "".join(s + n for s, n in parts) != word or any(s not in SYMBOL_SET for s, _ in parts):
        return []
    if len(parts) > 1 and word.isupper() and not any(n for _, n in parts):
        return []  # an acronym: FCC, BCC, HCP, CPU, OK
    return [s for s, _ in parts]


def _joined(task: str, a: tuple[int, int, str], b: tuple[int, int, str]) -> bool:
    """Words `a` and `b` are written as one unit with a dash or slash between them (Cu-Ni, Au/Pd)."""
    return b[0] == a[1] + 1 and task[a[1]] in _JOINERS


def task_elements(task: str) -> list[str]:
    """Element symbols a task mentions, in order of first mention.

    "Cu–Ni nanoparticle at 2000 K" -> ["Cu", "Ni"]; names count too ("copper" -> "Cu").
    """
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(task)]
    parsed = [_formula(w) for _, _, w in words]
    found: list[str] = []
    for i, word in enumerate(words):
        symbols = parsed[i]
        if not symbols:
            if sym := _NAMES.get(word[2].lower()):
                found.append(sym)
            continue
        if len(symbols) == 1 and not any(c.isdigit() for c in word[2]):
            sym = symbols[0]
            prev = words[i - 1] if i > 0 else None
            nxt = words[i + 1] if i + 1 < len(words) else None
            material = bool(nxt and not task[word[1] : nxt[0]].strip() and nxt[2].lower() in _MATERIAL_NOUNS)
            joined = bool(
                (prev and parsed[i - 1] and _joined(task, prev, word))
                or (nxt and parsed[i + 1] and _joined(task, word, nxt))
            )
            after_number = re.search(r"(\d|\u00b0)\s*$", task[: word[0]]) is not None
            if sym in _UNITS and after_number and not material:
                continue
            if sym in _AMBIGUOUS and not (joined or material):
                continue
        found.extend(symbols)
    return list(dict.fromkeys(found))
