"""Failure memory measured on the mutation corpus: for held-out mutants, is the past fix retrieved of the same kind?

bench/mutations.py makes mutants of the test corpus's passing scripts (one model-like mistake each, of a known kind).
Each is preflighted (with its `lmp -skiprun` dry run); a refused mutant is a failure with a first error. The examples
are split by a hash of their name: the mutants of the history part become lessons (`agent.memory.Lesson`: the
failure's signature and message, the fix = the change from the mutant back to the script, the mutation kind); for
each refused mutant of the held-out part, `agent.memory.recall` retrieves one lesson, and it is a hit when the lesson
is of the mutant's kind (precision at 1). Baselines in the same run: the most common kind among history lessons
with the same diagnostic code (retrieval by code alone), and the most common kind overall. Timings are not asserted.

    .venv/bin/python bench/memory.py [--per-kind 1] [--holdout 0.3] [--jobs 2] [--limit N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutations import KINDS, copy_example, mutants, test_corpus  # noqa: E402 (the corpus and mutants of the bench)

from mdagent_hpc.agent import memory  # noqa: E402
from mdagent_hpc.lammps.preflight import preflight  # noqa: E402
from mdagent_hpc.models import Diagnostic  # noqa: E402


def held_out(example: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.sha256(example.encode()).digest()[:8], "big") / 2**64 < fraction


def refused(args) -> list[tuple[str, str, dict, list[str]]]:
    """(example, kind, first error, fix) of every mutant of one example that preflight refuses."""
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
                    (example, mutant.kind, first.model_dump(mode="json"), memory.script_change(mutant.text, original))
                )
        (run_dir / script_name).write_text(original)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=1, help="mutants per kind and example (default 1)")
    parser.add_argument("--holdout", type=float, default=0.3, help="share of examples held out (default 0.3)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel examples (default 2: the machine's cores)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--misses", type=int, default=10, help="print this many misses (default 10)")
    args = parser.parse_args()
    corpus, examples = test_corpus()
    examples = examples[: args.limit]
    start = time.monotonic()
    print(
        f"corpus {corpus}: {len(examples)} examples, {len(KINDS)} mutation kinds; preflighting mutants ...", flush=True
    )
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        work = [(corpus, e["name"], e["input"], args.per_kind) for e in examples]
        failures = [f for batch in pool.map(refused, work) for f in batch]

    history, tests = [], []
    for example, kind, first, fix in failures:
        diagnostic = Diagnostic(**first)
        if held_out(example, args.holdout):
            tests.append((kind, diagnostic))
        else:
            history.append(memory.lesson(diagnostic, fix, kind=kind))
    if not history or not tests:
        sys.exit("too few refused mutants to split; use more examples or --per-kind")

    by_code: dict[str, Counter] = defaultdict(Counter)
    for lesson in history:
        by_code[lesson.signature.code][lesson.kind] += 1
    overall = Counter(lesson.kind for lesson in history).most_common(1)[0][0]
    hits = code_hits = overall_hits = retrieved = 0
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    misses = []
    for kind, diagnostic in tests:
        top = memory.recall(history, diagnostic, limit=1)
        hit = bool(top) and top[0].kind == kind
        if not hit:
            misses.append((kind, diagnostic, top[0] if top else None))
        retrieved += bool(top)
        hits += hit
        common = by_code[diagnostic.code].most_common(1)
        code_hits += bool(common) and common[0][0] == kind
        overall_hits += overall == kind
        per_kind[kind][0] += 1
        per_kind[kind][1] += hit
        per_kind[kind][2] += bool(common) and common[0][0] == kind

    print(
        f"\n{len(history)} lessons from {len(failures) - len(tests)} refused mutants (history), "
        f"{len(tests)} held-out refused mutants of other examples\n"
    )
    print(f"{'kind':30}{'held-out':>9}{'memory p@1':>11}{'by code':>9}")
    for kind, (n, hit, code) in sorted(per_kind.items()):
        print(f"{kind:30}{n:9}{hit / n:11.2f}{code / n:9.2f}")
    n = len(tests)
    p_at_1, by_code_only, majority = hits / n, code_hits / n, overall_hits / n
    print(f"\nprecision@1 of the failure memory: {hits}/{n} = {p_at_1:.3f} (a lesson retrieved for {retrieved}/{n})")
    print(
        f"baseline, the commonest kind for the same diagnostic code: {code_hits}/{n} = {by_code_only:.3f} "
        f"(memory / baseline = {p_at_1 / by_code_only:.2f})"
        if by_code_only
        else "baseline by code: 0"
    )
    print(f"baseline, the commonest kind overall ({overall}): {overall_hits}/{n} = {majority:.3f}")
    print(f"whole bench {time.monotonic() - start:.0f} s")
    if misses and args.misses:
        print(f"\nmisses (first {args.misses}): held-out kind [signature] message -> retrieved kind [signature]")
        for kind, diagnostic, lesson in misses[: args.misses]:
            print(
                f"  {kind} [{memory.signature(diagnostic).key()}] {diagnostic.message[:70]!r} -> "
                + (f"{lesson.kind} [{lesson.signature.key()}] {lesson.message[:70]!r}" if lesson else "nothing")
            )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
