"""The LLM judge and its published rubric, for open answers and (optionally) generated scripts. Pure functions.

The judge is the same endpoint as the model under test unless told otherwise; it sees the rubric, the reference
and the answer, and answers `Score: N` (0 to 10), which becomes N/10. An answer it does not score is None, and is
reported as unjudged, never as 0.
"""

from __future__ import annotations

import re

OPEN_RUBRIC = """\
Score the ANSWER against the REFERENCE for the QUESTION, from 0 to 10:
10: every point of the reference is there and correct, nothing wrong is added.
7-9: the main point is right; a minor point is missing or imprecise.
4-6: partly right: some key points are right, others missing or wrong.
1-3: mostly wrong or irrelevant, with a fragment of the right idea.
0: wrong, empty, or a refusal.
Judge the physics and the LAMMPS facts, not the style or the length."""

CODE_RUBRIC = """\
Score the SCRIPT (written by a model for the TASK) against the REFERENCE script, from 0 to 10:
10: does what the task asks, with a physically sound setup (units, potential, ensemble, timestep) and the requested
    output; another valid approach than the reference's scores as high.
7-9: does the task with a minor flaw (an odd parameter, a missing requested output).
4-6: the right kind of simulation but a wrong key choice (ensemble, potential, units, missing stage).
1-3: runs something unrelated or physically meaningless for the task.
0: no script, or not LAMMPS.
Judge what the script would compute, not its comments or formatting."""

SYSTEM = "You are a strict, fair examiner in molecular dynamics. Follow the rubric; end with `Score: N`."


def open_messages(question: str, reference: str, answer: str) -> list[dict[str, str]]:
    user = f"{OPEN_RUBRIC}\n\nQUESTION:\n{question}\n\nREFERENCE:\n{reference}\n\nANSWER:\n{answer}\n\nScore: ?"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def code_messages(task: str, reference: str, script: str) -> list[dict[str, str]]:
    user = (
        f"{CODE_RUBRIC}\n\nTASK:\n{task}\n\nREFERENCE:\n```\n{reference}\n```\n\nSCRIPT:\n```\n{script}\n```"
        "\n\nScore: ?"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_SCORE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.IGNORECASE)


def read_score(text: str) -> float | None:
    """The judge's last `Score: N` as N/10 (0..1); None when there is none or it is out of range."""
    found = _SCORE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value / 10 if 0 <= value <= 10 else None
