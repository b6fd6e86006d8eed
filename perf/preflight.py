"""Preflight time against real run time, over the LAMMPS example corpus.

For each example of the test corpus (tests/corpus.py, built if needed; `--limit N` for fewer) this measures, in
two separate writable temporary copies:

- `preflight(script, run_dir)`: wall time (and the `lmp -skiprun` part of it);
- the real run, `lmp -in <input> -log log.lammps -nocite` with OMP_NUM_THREADS=1 and the install's environ().

It prints the median, p95 and max preflight time, the median per-example ratio preflight/run and the ratio of
the totals, and whether the target "preflight median < 0.5 s" is met. Timings are never asserted.

    .venv/bin/python perf/preflight.py [--limit N] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mdagent_hpc.lammps.install import find_lammps
from mdagent_hpc.lammps.preflight import preflight

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from corpus import CorpusError  # noqa: E402  (the test corpus: tests/corpus.py)
from corpus import build as build_corpus  # noqa: E402

TARGET_S = 0.5
RUN_TIMEOUT_S = 300


def copy_example(src: Path, dest: Path) -> Path:
    """A writable copy of a (read-only) corpus folder (as tests/conftest.py does)."""
    shutil.copytree(src, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return dest


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def examples(corpus: Path) -> list[tuple[str, str]]:
    """(folder, input script) for each example, from the manifest, else from the folders."""
    manifest = corpus / "manifest.json"
    if manifest.exists():
        return [(e["name"], e["input"]) for e in json.loads(manifest.read_text())["examples"]]
    return [(p.name, next(p.glob("in.*")).name) for p in sorted(corpus.iterdir()) if p.is_dir()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--corpus", type=Path, help="a folder of examples (default: the test corpus)")
    args = parser.parse_args()
    if args.corpus is None:
        try:
            args.corpus = build_corpus()
        except CorpusError as exc:
            print(exc, file=sys.stderr)
            sys.exit(2)
    if not args.corpus.is_dir():
        print(f"no corpus at {args.corpus}: pass a folder of examples with --corpus", file=sys.stderr)
        sys.exit(2)
    install = find_lammps()
    env = install.environ()
    env["OMP_NUM_THREADS"] = "1"
    todo = examples(args.corpus)[: args.limit]
    print(f"LAMMPS: {install.executable}\n{len(todo)} examples from {args.corpus}\n", flush=True)

    rows = []  # (name, ok, preflight s, skiprun s, run s, run exit status)
    with tempfile.TemporaryDirectory(prefix="mdagent-bench-") as tmp:
        for i, (name, script) in enumerate(todo, 1):
            pre_dir = copy_example(args.corpus / name, Path(tmp) / "pre" / name)
            report = preflight(pre_dir / script, pre_dir, install=install)
            run_dir = copy_example(args.corpus / name, Path(tmp) / "run" / name)
            start = time.monotonic()
            try:
                proc = subprocess.run(
                    install.command("-in", script, "-log", "log.lammps", "-nocite"),
                    cwd=run_dir,
                    env=env,
                    capture_output=True,
                    timeout=RUN_TIMEOUT_S,
                )
                status = proc.returncode
            except subprocess.TimeoutExpired:
                status = "timeout"
            run_s = time.monotonic() - start
            rows.append((name, report.ok, report.seconds, report.skiprun_seconds or 0.0, run_s, status))
            print(
                f"[{i:2}/{len(todo)}] {name:32} preflight {report.seconds:6.3f} s "
                f"(skiprun {report.skiprun_seconds or 0:6.3f}) {'ok ' if report.ok else 'BAD'}  "
                f"run {run_s:7.2f} s exit {status}  ratio {report.seconds / run_s:5.2f}",
                flush=True,
            )
            shutil.rmtree(pre_dir)
            shutil.rmtree(run_dir)

    pre = [r[2] for r in rows]
    skip = [r[3] for r in rows]
    run = [r[4] for r in rows]
    ratios = [r[2] / r[4] for r in rows]
    median = statistics.median(pre)
    print("\nsummary")
    print(f"{'':28}{'median':>10}{'p95':>10}{'max':>10}{'total':>10}")
    print(f"{'preflight (s)':28}{median:10.3f}{percentile(pre, 95):10.3f}{max(pre):10.3f}{sum(pre):10.2f}")
    print(
        f"{'  of which lmp -skiprun (s)':28}{statistics.median(skip):10.3f}{percentile(skip, 95):10.3f}"
        f"{max(skip):10.3f}{sum(skip):10.2f}"
    )
    print(
        f"{'real run (s)':28}{statistics.median(run):10.3f}{percentile(run, 95):10.3f}{max(run):10.3f}{sum(run):10.2f}"
    )
    print(
        f"{'ratio preflight/run':28}{statistics.median(ratios):10.3f}{percentile(ratios, 95):10.3f}"
        f"{max(ratios):10.3f}{sum(pre) / sum(run):10.3f}"
    )
    print(
        f"preflight passed {sum(r[1] for r in rows)}/{len(rows)}; runs exited 0: "
        f"{sum(r[5] == 0 for r in rows)}/{len(rows)}"
    )
    print(f"target preflight median < {TARGET_S} s: {'MET' if median < TARGET_S else 'NOT MET'} ({median:.3f} s)")


if __name__ == "__main__":
    main()
