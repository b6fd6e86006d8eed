"""Knowledge questions: the prompt, reading the model's answer, and scoring it. Pure functions.

Choice questions are scored exactly (the set of letters must be the right set); fill-blank answers by normalised
matching (`normalise`: case, Unicode forms, spaces, quotes and trailing punctuation do not count; numbers equal to
1e-6 relative; an answer "X or Y" accepts either); open answers by the judge (perf/judge.py), 0 to 1.
"""

from __future__ import annotations

import math
import re
import unicodedata

from mdagent_hpc.evalbench.sets import Question, QuestionType

SYSTEM = (
    "You are an expert in molecular dynamics and LAMMPS. Answer the question exactly in the format asked, "
    "with nothing before the answer line."
)

_FORMATS = {
    QuestionType.SINGLE: "Exactly one option is right. Answer with one line: `Answer: <letter>`.",
    QuestionType.MULTIPLE: (
        "One or more options are right. Answer with one line: `Answer: <letters separated by "
        "commas>`, e.g. `Answer: A, C`."
    ),
    QuestionType.FILL: (
        "Fill in the blank. Answer with one line: `Answer: <the text for the blank>`, as short as "
        "possible (a command, a number or a few words)."
    ),
    QuestionType.OPEN: "Answer in at most 150 words, starting with `Answer:`.",
}


def messages(question: Question) -> list[dict[str, str]]:
    """The chat messages that ask `question`."""
    lines = [question.question.strip()]
    if question.options:
        lines += [f"{letter}. {text}" for letter, text in sorted(question.options.items())]
    lines += ["", _FORMATS[question.type]]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


_ANSWER = re.compile(r"answer\s*[:：]\s*(.*)", re.IGNORECASE | re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def extract(question: Question, text: str) -> str | list[str] | None:
    """What the model answered: the letters (choice types) or the text after `Answer:`; None if it gave none."""
    text = _THINK.sub("", text or "").strip()
    match = _ANSWER.search(text)
    body = (match.group(1) if match else text).strip()
    if question.type in (QuestionType.SINGLE, QuestionType.MULTIPLE):
        first = body.splitlines()[0] if body else ""
        allowed = set(question.options) or set("ABCDEFGH")
        found = re.findall(r"(?<![A-Za-z])([A-H])(?![a-z])", first)
        picked = sorted({f for f in found if f in allowed})
        return picked or None
    if question.type == QuestionType.FILL:
        first = body.splitlines()[0].strip() if body else ""
        return first or None
    return body or None


def score(question: Question, predicted) -> float | None:
    """1.0 or 0.0 for choice and fill-blank questions; None when the question has no answer or is open."""
    if not question.scorable or question.type == QuestionType.OPEN:
        return None
    if predicted is None:
        return 0.0
    if question.type in (QuestionType.SINGLE, QuestionType.MULTIPLE):
        return 1.0 if sorted(predicted) == sorted(question.answer or []) else 0.0
    return 1.0 if fill_matches(str(predicted), question.answer_text or "") else 0.0


def normalise(text: str) -> str:
    """Case, Unicode compatibility forms, dashes, spaces, surrounding quotes and trailing punctuation removed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[\u2010-\u2015\u2212]", "-", text)
    previous = None
    while previous != text:  # `x`. or "x"; -> x
        previous = text
        text = text.strip().strip("`'\"\u201c\u201d\u2018\u2019").rstrip(".;,:。")
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"\s*([,;/()=*+])\s*", r"\1", text)


def fill_matches(predicted: str, expected: str) -> bool:
    """The blank is filled right: the same text after `normalise`, or the same number; "X or Y" accepts either."""
    got = normalise(predicted)
    for alternative in re.split(r"\s+or\s+|或", expected):
        want = normalise(alternative)
        if want and (got == want or _same_number(got, want)):
            return True
    return False


def _same_number(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12)


ASK_SYSTEM = (
    "You answer questions on molecular dynamics and LAMMPS for a materials scientist. Be exact and brief. "
    "When the answer depends on what this site's LAMMPS has, use the facts below; say so when a command or "
    "style is not available here, and what to use instead."
)


def ask_messages(
    question: str, version: str, packages: list[str], styles: dict[str, list[str]], potentials: list[str]
) -> list[dict[str, str]]:
    """`mdagent ask`: the question, with the site's LAMMPS facts in the system message."""
    facts = [f"LAMMPS version: {version}", f"Packages: {', '.join(packages) or 'none beyond the core'}"]
    facts += [f"{kind} styles: {', '.join(names)}" for kind, names in sorted(styles.items()) if names]
    facts.append(f"Potential files here: {', '.join(potentials) if potentials else 'none found for this question'}")
    system = f"{ASK_SYSTEM}\n\nThis site's LAMMPS:\n" + "\n".join(facts)
    return [{"role": "system", "content": system}, {"role": "user", "content": question.strip()}]
