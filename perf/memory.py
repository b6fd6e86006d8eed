"""Failure memory measured for what it is for: is the past fix found, and does it help the next script?

perf/mutations.py makes mutants of the test corpus's passing scripts (one model-like mistake each, of a known kind).
Each is preflighted (with its `lmp -skiprun` dry run); a refused mutant is a failure with a first error and a fix
(the change from the mutant back to the script). The split is by the changed command (the fix's right lines,
numbers masked): a held-out failure never has a near-duplicate in history, and held-out failures are deduplicated
by it (one per changed command). The ranking (`agent.memory.recall`) is frozen: this bench does not change it.

1. Retrieval: for each held-out failure, is the lesson `recall` ranks first of the mutant's kind (precision@1)?
   Baselines: the commonest kind of the same diagnostic code, the commonest kind overall.
2. Usefulness: the prompt the agent builds (`agent.feedback.feedback_text`, with the recalled lessons, and the same
   without them) goes to a scripted corrector that applies only what that prompt says: a past fix transferred to
   the failing line (the same words replaced, numbers scaled by the same factor, a trailing word dropped, lines
   inserted, the line removed), else what the feedback itself spells out (a suggested potential file or timestep).
   The corrected script is preflighted: fixed = it passes; restored = it is the original script.

    .venv/bin/python perf/memory.py [--per-kind 1] [--holdout 0.3] [--jobs 2] [--limit N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutations import KINDS, copy_example, mutants, test_corpus  # noqa: E402 (the corpus and mutants of the bench)

from mdagent_hpc.agent import memory  # noqa: E402
from mdagent_hpc.agent.feedback import feedback_text  # noqa: E402
from mdagent_hpc.lammps.preflight import preflight  # noqa: E402
from mdagent_hpc.models import Diagnostic  # noqa: E402


def held_out(key: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 < fraction


_NUMBER = re.compile(r"(?<![\w.])[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(?![\w.])")


def changed_command(fix: list[str]) -> str:
    """The near-duplicate key of a failure: the right line(s) the mutation changed (the fix's added lines, else its
    removed ones), numbers masked, so `thermo 100` in one example and `thermo 50` in another are the same."""
    added = [c[2:] for c in fix if c.startswith("+ ")]
    lines = added or [c[2:] for c in fix if c.startswith("- ")]
    return " | ".join(_NUMBER.sub("#", line) for line in lines)


def refused(args) -> list[tuple[str, str, dict, list[str], str, str]]:
    """(example, kind, first error, fix, mutant text, original text) of every mutant of one example that preflight
    refuses."""
    corpus, example, script_name, per_kind = args
    found = []
    with tempfile.TemporaryDirectory(prefix="mdagent-memory-") as tmp:
        run_dir = copy_example(corpus / example, Path(tmp) / "run")
        original = (run_dir / script_name).read_text(errors="replace")
        for mutant in mutants(example, run_dir, script_name, per_kind, list(KINDS)):
            (run_dir / script_name).write_text(mutant.text)
            report = preflight(run_dir / script_name, run_dir)
            first = memory.first_error(report.diagnostics)
            if first is not None:
                found.append(
                    (
                        example,
                        mutant.kind,
                        first.model_dump(mode="json"),
                        memory.script_change(mutant.text, original),
                        mutant.text,
                        original,
                    )
                )
        (run_dir / script_name).write_text(original)
    return found


# ------------------------------------------------------------------ a corrector that applies only what it is told


def prompt_lessons(prompt: str) -> list[tuple[list[str], list[str]]]:
    """(removed lines, added lines) of each past fix the prompt shows (memory.render's format)."""
    found: list[tuple[list[str], list[str]]] = []
    for line in prompt.splitlines():
        if line.startswith("- ["):
            found.append(([], []))
        elif found and line.startswith("    - "):
            found[-1][0].append(line[6:])
        elif found and line.startswith("    + "):
            found[-1][1].append(line[6:])
    return found


def _num(word: str) -> float | None:
    try:
        return float(word)
    except ValueError:
        return None


def transfer(lines: list[str], at: int, removed: list[str], added: list[str]) -> list[str] | None:
    """A past fix applied by analogy to the failing line `at` (0-based) of `lines`, or None when it does not fit:
    the same words replaced (numbers scaled by the same factor), a trailing word dropped, lines inserted before the
    failing one, or the failing line removed when the fix removed a line of the same command."""
    target = lines[at].split("#")[0].split()
    if not target:
        return None
    if len(removed) == 1 and len(added) == 1:
        old, new = removed[0].split(), added[0].split()
        if old[:1] != new[:1] or old[:1] != target[:1]:
            return None
        if len(old) == len(new) == len(target):
            out = list(target)
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                if a == b:
                    continue
                if (x := _num(a)) and (y := _num(b)) is not None and (t := _num(target[i])) is not None:
                    out[i] = f"{t * y / x:g}"
                elif a in target:
                    out[target.index(a)] = b
                else:
                    return None
            return lines[:at] + [" ".join(out)] + lines[at + 1 :] if out != target else None
        if new == old[:-1] and target[-1] == old[-1]:
            return lines[:at] + [" ".join(target[:-1])] + lines[at + 1 :]
        return None
    if added and not removed:
        return lines[:at] + added + lines[at:]
    if removed and not added and len(removed) == 1 and removed[0].split()[:1] == target[:1]:
        return lines[:at] + lines[at + 1 :]
    return None


def hinted(lines: list[str], at: int, diagnostic: Diagnostic) -> list[str] | None:
    """What the feedback itself spells out: a suggested potential file, a suggested timestep."""
    target = lines[at].split("#")[0].split()
    hint = diagnostic.hint or ""
    if diagnostic.code == "potential.missing" and (m := re.search(r"files holding [^:]+: ([^,;( ]+)", hint)):
        missing = re.search(r"'([^']+)'", diagnostic.message)
        if missing and missing.group(1) in target:
            target[target.index(missing.group(1))] = m.group(1)
            return lines[:at] + [" ".join(target)] + lines[at + 1 :]
    if diagnostic.code == "static.timestep" and (m := re.search(r"timestep near ([\d.eE+-]+)", hint)):
        if target[:1] == ["timestep"] and len(target) > 1:
            return lines[:at] + [f"timestep {m.group(1)}"] + lines[at + 1 :]
    return None


def correct(text: str, diagnostic: Diagnostic, prompt: str, use_memory: bool) -> str | None:
    """The next script: the first past fix of the prompt that applies, else what the feedback spells out."""
    lines = text.splitlines()
    if not diagnostic.line or diagnostic.line > len(lines):
        return None
    at = diagnostic.line - 1
    if use_memory:
        for removed, added in prompt_lessons(prompt):
            if (fixed := transfer(lines, at, removed, added)) is not None:
                return "\n".join(fixed) + "\n"
    fixed = hinted(lines, at, diagnostic)
    return "\n".join(fixed) + "\n" if fixed is not None else None


def replay(args) -> tuple[str, dict[str, tuple[bool, bool, bool]]]:
    """One held-out mutant, corrected once with the memory's prompt and once without: (applied, passes
    preflight, restores the original) for each arm."""
    corpus, example, script_name, kind, first, text, original, history = args
    diagnostic = Diagnostic(**first)
    result = {}
    with tempfile.TemporaryDirectory(prefix="mdagent-memory-") as tmp:
        run_dir = copy_example(corpus / example, Path(tmp) / "run")
        for arm, lessons in (("memory", history), ("none", None)):
            prompt = feedback_text([diagnostic], memory=lessons, script=text)
            fixed = correct(text, diagnostic, prompt, use_memory=lessons is not None)
            if fixed is None:
                result[arm] = (False, False, False)
                continue
            (run_dir / script_name).write_text(fixed)
            ok = preflight(run_dir / script_name, run_dir).ok
            result[arm] = (True, ok, memory.script_change(fixed, original) == [])
    return kind, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=1, help="mutants per kind and example (default 1)")
    parser.add_argument("--holdout", type=float, default=0.3, help="share of changed commands held out (default 0.3)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel examples (default 2: the machine's cores)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--misses", type=int, default=10, help="print this many misses (default 10)")
    args = parser.parse_args()
    corpus, examples = test_corpus()
    examples = examples[: args.limit]
    inputs = {e["name"]: e["input"] for e in examples}
    start = time.monotonic()
    print(
        f"corpus {corpus}: {len(examples)} examples, {len(KINDS)} mutation kinds; preflighting mutants ...", flush=True
    )
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        work = [(corpus, e["name"], e["input"], args.per_kind) for e in examples]
        failures = [f for batch in pool.map(refused, work) for f in batch]

    # The split: by the changed command (numbers masked), so no held-out failure has a near-duplicate in history;
    # held-out failures deduplicated by it too (one per changed command).
    history, tests, seen = [], [], set()
    for example, kind, first, fix, text, original in sorted(
        failures, key=lambda f: (changed_command(f[3]), f[0], f[1])
    ):
        key = changed_command(fix)
        if held_out(key, args.holdout):
            if key not in seen:
                seen.add(key)
                tests.append((example, kind, first, text, original))
        else:
            history.append(memory.lesson(Diagnostic(**first), fix, kind=kind))
    if not history or not tests:
        sys.exit("too few refused mutants to split; use more examples or --per-kind")
    # How many held-out failures the earlier split (by example name) left with a near-duplicate in history
    old_history = {changed_command(f[3]) for f in failures if not held_out(f[0], 0.3)}
    old_tests = [f for f in failures if held_out(f[0], 0.3)]
    near = sum(changed_command(f[3]) in old_history for f in old_tests)
    print(
        f"\n{len(failures)} refused mutants; {len(history)} lessons in history, {len(tests)} held-out failures "
        f"(one per changed command, none in history). The earlier split by example name held out "
        f"{len(old_tests)}, of which {near} had the same changed command in history."
    )

    # 1. Retrieval: is the recalled lesson of the held-out mutant's kind (precision at 1)?
    by_code: dict[str, Counter] = defaultdict(Counter)
    for lesson in history:
        by_code[lesson.signature.code][lesson.kind] += 1
    overall = Counter(lesson.kind for lesson in history).most_common(1)[0][0]
    hits = code_hits = overall_hits = 0
    for _, kind, first, _, _ in tests:
        top = memory.recall(history, Diagnostic(**first), limit=1)
        hits += bool(top) and top[0].kind == kind
        common = by_code[first["code"]].most_common(1)
        code_hits += bool(common) and common[0][0] == kind
        overall_hits += overall == kind
    n = len(tests)
    print(
        f"\n1. retrieval, precision@1 (the recalled lesson has the held-out mutant's kind): {ratio(hits, n)}; "
        f"commonest kind of the same code {ratio(code_hits, n)}; commonest kind overall ({overall}) "
        f"{ratio(overall_hits, n)}"
    )

    # 2. Usefulness: the next script, written by a corrector that applies only what the prompt says
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        work = [
            (corpus, ex, inputs[ex], kind, first, text, original, history) for ex, kind, first, text, original in tests
        ]
        results = list(pool.map(replay, work))
    per_kind: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"memory": [0, 0, 0], "none": [0, 0, 0]})
    for kind, result in results:
        for arm, flags in result.items():
            for i, flag in enumerate(flags):
                per_kind[kind][arm][i] += flag
    count = Counter(kind for kind, _ in results)
    print(
        "\n2. usefulness: the next script after one correction, with the recalled lessons in the prompt / "
        "without\n   (applied = the prompt told the corrector something it could apply; fixed = the corrected "
        "script passes\n   preflight; restored = it is the original script again)"
    )
    print(f"{'kind':30}{'held-out':>9}{'applied':>10}{'fixed':>10}{'restored':>10}   (memory / none)")
    totals = {"memory": [0, 0, 0], "none": [0, 0, 0]}
    for kind in sorted(per_kind):
        m, z = per_kind[kind]["memory"], per_kind[kind]["none"]
        for arm in totals:
            totals[arm] = [a + b for a, b in zip(totals[arm], per_kind[kind][arm], strict=True)]
        print(f"{kind:30}{count[kind]:9}" + "".join(f"{f'{m[i]} / {z[i]}':>10}" for i in range(3)))
    m, z = totals["memory"], totals["none"]
    print(f"{'total':30}{n:9}" + "".join(f"{f'{m[i]} / {z[i]}':>10}" for i in range(3)))
    print(
        f"\nfixed in one correction: with memory {ratio(m[1], n)}, without {ratio(z[1], n)}; restored exactly: "
        f"with memory {ratio(m[2], n)}, without {ratio(z[2], n)}"
    )
    print(f"whole bench {time.monotonic() - start:.0f} s")


def ratio(a: int, b: int) -> str:
    return f"{a}/{b} = {a / b:.3f}" if b else f"{a}/0"


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
