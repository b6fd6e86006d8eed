"""False errors over every Debian example LAMMPS runs here, through the `mdagent check` a user runs.

The examples are the screening's `ok` set (tests/corpus-screening.tsv: every Debian `lammps-examples` input run
once with this machine's LAMMPS; `ok` = it ran to the end). Each is copied as the screening ran it
(tests/corpus.py `prepare_example`: its folder plus the Debian potential files it names) and checked with
`mdagent check --json SCRIPT` in that folder, the command and path a user walks (parse, policy, potentials, static
checks, `lmp -skiprun`). Any error on a script LAMMPS runs to the end is a false error; each is printed with its
example and first error. Warnings are counted too, not judged. Timings are never asserted.

    .venv/bin/python perf/false_errors.py [--jobs 2] [--limit N] [--only SOURCE,...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from corpus import CorpusError, _require_examples, prepare_example, screened_ok  # noqa: E402

MDAGENT = Path(sys.executable).with_name("mdagent")


def check_example(source: str) -> dict:
    """`mdagent check --json` on one example; its errors and warnings (rendered) and the wall time."""
    with tempfile.TemporaryDirectory(prefix="mdagent-screen-") as tmp:
        run_dir = Path(tmp) / "run"
        script = prepare_example(source, run_dir)
        start = time.monotonic()
        proc = subprocess.run(
            [str(MDAGENT), "check", "--json", script], cwd=run_dir, capture_output=True, text=True, timeout=600
        )
        wall = time.monotonic() - start
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {
            "source": source,
            "exit": proc.returncode,
            "errors": [f"no report: {last}"],
            "warnings": [],
            "wall_s": wall,
        }

    def render(d: dict) -> str:
        return f"{d.get('file') or script}:{d.get('line')}: {d['code']}: {d['message'][:160]}"

    return {
        "source": source,
        "exit": proc.returncode,
        "wall_s": wall,
        "errors": [render(d) for d in report["diagnostics"] if d["severity"] == "error"],
        "warnings": [render(d) for d in report["diagnostics"] if d["severity"] == "warning"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="examples checked at once (default 2)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--only", help="comma-separated sources (e.g. gjf/in.gjf.vhalf)")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    args = parser.parse_args()
    try:
        _require_examples()
    except CorpusError as exc:
        sys.exit(str(exc))
    sources = args.only.split(",") if args.only else screened_ok()[: args.limit]
    start = time.monotonic()
    print(f"{len(sources)} examples LAMMPS runs to the end here (screening `ok`); mdagent check each", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = []
        for i, r in enumerate(pool.map(check_example, sources), 1):
            results.append(r)
            mark = "ok " if not r["errors"] else "ERR"
            print(
                f"[{i:3}/{len(sources)}] {mark} {r['source']:50} {r['wall_s']:6.2f} s  {len(r['warnings'])} warning(s)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    false = [r for r in results if r["errors"]]
    print(
        f"\nfalse errors: {len(false)} of {len(results)} examples LAMMPS runs (target 0): "
        f"{'MET' if not false else 'NOT MET'}"
    )
    for r in false:
        print(
            f"  {r['source']}: {r['errors'][0]}" + (f" (+{len(r['errors']) - 1} more)" if len(r["errors"]) > 1 else "")
        )
    warned = [r for r in results if r["warnings"]]
    print(f"examples with warnings: {len(warned)}")
    for r in warned:
        print(f"  {r['source']}: {r['warnings'][0]}")
    walls = sorted(r["wall_s"] for r in results)
    print(
        f"mdagent check per example: median {walls[len(walls) // 2]:.2f} s, max {walls[-1]:.2f} s; "
        f"whole screen {time.monotonic() - start:.0f} s with {args.jobs} at a time"
    )
    sys.exit(1 if false else 0)


if __name__ == "__main__":
    main()
