"""Start-up cost of a containerised LAMMPS job against the bubblewrap one, as a ratio, in one run.

Both run the same LAMMPS release on the same 0-step input (`run 0` of a 32-atom EAM crystal), so the time is
start-up: the sandbox or container, loading LAMMPS, reading the potential. `bwrap`: the local site's `mdagent-lmp`;
`charliecloud`: the command a Charliecloud site's job runs (unshare + ch-run, the image from scripts/lammps_image.sh).
Rounds alternate between the two so that a busy machine weighs on both alike; the medians are compared.

    .venv/bin/python perf/container_startup.py [--rounds 10] [--image DIR]
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

from mdagent_hpc.execution.containers import runtime
from mdagent_hpc.execution.site import SiteConfig, container_command

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdagent-hpc"
SCRIPT = (
    "units metal\nlattice fcc 3.615\nregion b block 0 2 0 2 0 2\ncreate_box 1 b\ncreate_atoms 1 box\n"
    "pair_style eam\npair_coeff 1 1 Cu_u3.eam\nrun 0\n"
)


def timed(command: list[str], folder: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    if result.returncode != 0 or "Total wall time" not in (folder / "log.lammps").read_text():
        sys.exit(f"{command[0]} failed (exit {result.returncode}): {(result.stderr or result.stdout)[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--image", type=Path, default=Path(os.environ.get("MDAGENT_LAMMPS_IMAGE") or CACHE / "lammps-image")
    )
    args = parser.parse_args()
    if not (args.image / "opt" / "lammps").is_dir():
        sys.exit(f"no LAMMPS image at {args.image}: build it with `bash scripts/lammps_image.sh`")
    site = SiteConfig(
        name="ch", scheduler="direct", lammps={"container": {"runtime": "charliecloud", "image": str(args.image)}}
    )
    env = {**os.environ, **runtime("charliecloud").environment()}
    lmp_args = ["-in", "in.lammps", "-log", "log.lammps", "-nocite"]
    times: dict[str, list[float]] = {"bwrap": [], "charliecloud": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in times:
            folder = Path(tmp) / name
            folder.mkdir()
            (folder / "in.lammps").write_text(SCRIPT)
        commands = {
            "bwrap": [str(Path(sys.executable).parent / "mdagent-lmp"), *lmp_args],
            "charliecloud": container_command(site, lmp_args, workdir=str(Path(tmp) / "charliecloud")),
        }
        for name, command in commands.items():  # a first, untimed run of each: page cache warm for both
            timed(command, Path(tmp) / name, env)
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(timed(command, Path(tmp) / name, env))
    bwrap, ch = statistics.median(times["bwrap"]), statistics.median(times["charliecloud"])
    print(f"LAMMPS job start-up, median of {args.rounds} rounds (run 0, 32 atoms, EAM):")
    print(f"  bubblewrap (mdagent-lmp)        {bwrap * 1000:7.0f} ms")
    print(f"  charliecloud (unshare + ch-run) {ch * 1000:7.0f} ms")
    print(f"  ratio charliecloud / bubblewrap {ch / bwrap:7.2f}")


if __name__ == "__main__":
    main()
