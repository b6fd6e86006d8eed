"""Start-up time of the `mdagent` command, against a bare Python start in the same run.

Measures, interleaved so that machine load hits each alike, the median wall time of:

- `python -c pass` (the baseline: the interpreter alone);
- `mdagent --help`;
- `python -c "import mdagent_hpc"` (the Python API's import cost);
- `mdagent check --no-dry-run` on a 10-line script (parse, policy, potentials, static checks: the CLI's own cost);
- `mdagent check` on the same script (with the `lmp -skiprun` dry run, LAMMPS start included).

and prints each with its ratio to `python -c pass`, and whether `mdagent --help` meets the target (< 0.3 s).
Timings are never asserted.

    .venv/bin/python perf/cli_startup.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_HELP_S = 0.3
SCRIPT = """\
units           lj
atom_style      atomic
lattice         fcc 0.8442
region          box block 0 4 0 4 0 4
create_box      1 box
create_atoms    1 box
mass            1 1.0
pair_style      lj/cut 2.5
pair_coeff      1 1 1.0 1.0 2.5
run             10
"""


def wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs of each command (default 15)")
    args = parser.parse_args()
    mdagent = str(Path(sys.executable).parent / "mdagent")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "in.small"
        script.write_text(SCRIPT)
        assert len(SCRIPT.splitlines()) == 10
        env = {**os.environ, "MDAGENT_HOME": str(Path(tmp) / "home")}
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "mdagent --help": [mdagent, "--help"],
            "import mdagent_hpc": [sys.executable, "-c", "import mdagent_hpc"],
            "mdagent check --no-dry-run (10 lines)": [mdagent, "check", "--no-dry-run", str(script)],
            "mdagent check (10 lines, dry run)": [mdagent, "check", str(script)],
        }
        for command in commands.values():  # warm the file cache and the potentials index once
            wall(command, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, command in commands.items():
                times[name].append(wall(command, env))
    base = statistics.median(times["python -c pass"])
    print(f"median of {args.repeat} runs each, interleaved; ratio = against `python -c pass`")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:40} {median:6.3f} s   x{median / base:5.1f}")
    help_s = statistics.median(times["mdagent --help"])
    verdict = "meets" if help_s < TARGET_HELP_S else "misses"
    print(f"`mdagent --help` {help_s:.3f} s {verdict} the target of {TARGET_HELP_S} s")


if __name__ == "__main__":
    main()
