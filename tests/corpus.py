"""The test corpus: LAMMPS examples from Debian's `lammps-examples`, each run once with this machine's LAMMPS.

Debian ships 621 example inputs with their data files (and `lammps-data` the potential files they link to or
name), but no reference logs. `SELECTION` names the examples the tests use. `build()` runs each one once in a
scratch copy of its folder, keeps its log as the reference log and the files the run read (seen by their access
times), and writes `manifest.json`. The corpus is cached outside the repo and rebuilt only when the selection,
the example files or the LAMMPS binary change. An example that fails with this LAMMPS is skipped and listed.

    python tests/corpus.py            build (or reuse) the corpus and print its folder
    python tests/corpus.py --screen   run every Debian example once (6 s limit) into tests/corpus-screening.tsv
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mdagent_hpc.lammps.install import find_lammps

EXAMPLES = Path(os.environ.get("MDAGENT_LAMMPS_EXAMPLES", "/usr/share/lammps/examples"))
POTENTIALS = EXAMPLES.parent / "potentials"  # Debian's lammps-data
CACHE = Path(
    os.environ.get("MDAGENT_TEST_CORPUS")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdagent-hpc" / "test-corpus"
)
SCREENING = Path(__file__).with_name("corpus-screening.tsv")
REFERENCE_LOG = "log.reference"

# Picked from tests/corpus-screening.tsv (every Debian example, run once here): examples that run to the end in
# under ~5 s on one core with only their own folder's files, covering units, atom styles, pair styles, minimizers,
# fixes, computes, thermo styles and input loops. Everything else there is slower, fails with this LAMMPS (newer
# syntax, missing packages, files outside the folder) or repeats what is here. This selection is for speed: the
# false-error figure is taken over every example the screening saw run (`screened_ok()`, tests/test_false_errors.py).
# Debian's 2022 examples have no thermo_style yaml (tests/test_log.py runs one itself).
SELECTION = [
    # lj units, atomic, pair lj/cut: dynamics, minimizers, boundaries, flows
    "melt/in.melt",  # 3d melt, fix nve, thermo_style one
    "min/in.min",  # 2d, nvt then minimize (cg)
    "min/in.min.box",  # fix box/relax, several minimizations, custom thermo
    "fire/in.fire",  # min_style fire
    "indent/in.indent.min",  # fix indent with minimization, variables
    "flow/in.flow.pois",  # 2d Poiseuille flow, fix addforce, groups
    "nemd/in.nemd",  # triclinic box, fix deform, nvt/sllod
    "wall/in.wall.specular",  # fix wall/reflect, fix_modify
    "balance/in.balance",  # balance, fix balance
    "MC/in.mc",  # Monte Carlo as an input loop: label/jump, if, run 1 pre no post no
    "steinhardt/in.fcc",  # compute orientorder/atom, variables
    "rigid/in.rigid",  # fix rigid over molecules by group
    "micelle/in.micelle",  # bonds, soft then lj/cut, 2d
    "deposit/in.deposit.atom",  # fix deposit: the atom count grows
    # other units and atom styles
    "UNITS/in.ar.metal",  # metal units, immediate $() variables
    "UNITS/in.ar.real",  # real units
    "dipole/in.dipole",  # hybrid sphere dipole, lj/cut/dipole/cut
    "ellipse/in.ellipse.gayberne",  # ellipsoids, gayberne
    "granregion/in.granregion.box",  # granular in a region, five runs
    "pour/in.pour.2d.molecule",  # fix pour with a molecule file, granular history
    "multi/in.colloid",  # neighbor multi, colloid
    "dreiding/in.dreiding",  # real units, hbond/dreiding
    "cmap/in.cmap",  # CHARMM force field with CMAP
    "peptide/in.peptide",  # PPPM, SHAKE, thermo_style multi
    "PACKAGES/mofff/in.hkust1",  # MOF-FF, buck6d
    "PACKAGES/dpd-react/dpd-shardlow/in.dpd-shardlow",  # DPD, fix shardlow
    "PACKAGES/eff/CH4/in.ch4.min",  # electron force field, minimize
    "PACKAGES/mop/in.compute_stress_mop",  # compute stress/mop, fix ave/time
    "SPIN/spinmin/in.spin.iron_min",  # spins, min_style spin
    "SPIN/iron/in.spin.iron",  # spin dynamics with eam/alloy under hybrid/overlay
    # many-body potentials read from files
    "ELASTIC/in.elastic",  # include files, loops over strains, sw
    "eim/in.eim",  # EIM
    "meam/in.meam",  # MEAM library and parameter files
    "tersoff/in.tersoff",  # tersoff, tersoff/mod, tersoff/mod/c; clear between runs
    "threebody/in.threebody",  # sw, vashishta, tersoff; clear between runs
    "vashishta/in.vashishta.inp",  # vashishta
    "comb/in.comb.Cu",  # COMB, charge equilibration
    "reaxff/in.reaxff.rdx",  # ReaxFF with a control file
    "snap/in.snap.Ta06A",  # SNAP
    "mliap/in.mliap.so3.Ni_Mo",  # ML-IAP
    "PACKAGES/edip/in.edip-Si",  # EDIP
    "PACKAGES/agni/in.vacancy",  # AGNI
    "PACKAGES/edip/in.edip-SiC",  # EDIP multi-element
    "tersoff/in.hBN_shift",  # tersoff shift, charge atom style
    "PACKAGES/dielectric/in.confined",  # dielectric atom style, PPPM
]


class CorpusError(RuntimeError):
    """The corpus cannot be built here (no Debian examples, no usable LAMMPS)."""


def example_name(source: str) -> str:
    """'melt/in.melt' -> 'melt-melt', 'PACKAGES/extep/in.extep-bn' -> 'PACKAGES-extep-extep-bn'."""
    folder, _, script = source.rpartition("/")
    return f"{folder.replace('/', '-')}-{script.removeprefix('in.')}"


def prepare_example(source: str, scratch: Path) -> str:
    """Copy one Debian example's folder to `scratch` as the screening runs it; the input script's name there."""
    folder, _, script = source.rpartition("/")
    shutil.copytree(EXAMPLES / folder, scratch, ignore=_dangling)  # links (to Debian's potentials) as files
    # Potential files the script names that Debian keeps in its potentials folder (LAMMPS_POTENTIALS upstream)
    words = set(re.findall(r"[^\s'\"]+", (scratch / script).read_text(errors="replace")))
    for name in sorted(words & set(os.listdir(POTENTIALS)) if POTENTIALS.is_dir() else []):
        if not (scratch / name).exists():
            shutil.copy(POTENTIALS / name, scratch / name)
    for path in [scratch, *scratch.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return script


def screened_ok() -> list[str]:
    """The examples the screening saw run to the end with this machine's LAMMPS (outcome `ok`)."""
    rows = [line.split("\t") for line in SCREENING.read_text().splitlines()[1:] if line]
    return [row[0] for row in rows if row[1] == "ok"]


def run_example(source: str, scratch: Path, timeout: float) -> dict:
    """Run one Debian example in `scratch` (a copy of its folder); what happened, its log and the files it read."""
    script = prepare_example(source, scratch)
    before = {}
    for path in scratch.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode | 0o200)
            os.utime(path, (0, path.stat().st_mtime))  # atime 0: any read sets it to now
            before[path.relative_to(scratch).as_posix()] = (path, path.stat().st_ino)
    lmp = find_lammps()
    env = lmp.environ()
    env.pop("LAMMPS_POTENTIALS", None)  # only the folder's own files count
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            lmp.command("-in", script, "-log", "log.lammps", "-nocite"),
            cwd=scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
        status: int | str = proc.returncode
        screen = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        status, screen = "timeout", ""
    wall = time.perf_counter() - start
    read = sorted(rel for rel, (path, inode) in before.items() if _was_read(path, inode))
    if status == 0 and script not in read:
        raise CorpusError(
            f"the file system under {scratch.parent} does not record reads (mounted noatime?): "
            "set MDAGENT_TEST_CORPUS to a folder on another file system"
        )
    log_path = scratch / "log.lammps"
    log = log_path.read_text(errors="replace") if log_path.is_file() else ""
    reason = ""
    if status == "timeout":
        reason = f"still running after {timeout:g} s"
    elif status != 0 or "Total wall time" not in log:
        errors = [line.strip() for line in (log + "\n" + screen).splitlines() if line.startswith("ERROR")]
        reason = errors[0] if errors else f"exit {status}, log incomplete"
    return {"status": status, "wall_s": round(wall, 2), "reason": reason, "log": log, "read": read}


def _dangling(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if not os.path.exists(os.path.join(folder, n))]


def _was_read(path: Path, inode: int) -> bool:
    """The file that was there before the run (not one the run replaced or removed) and its contents were read."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return stat.st_ino == inode and stat.st_atime > 0


def thermo_summary(log: str) -> tuple[str, list[str], int]:
    """LAMMPS version, the first run's thermo column names and the number of runs with a memory line.

    Read independently of mdagent_hpc.lammps.log, which the corpus tests check against these values."""
    version = re.search(r"^LAMMPS \((.+)\)", log, re.M)
    lines = log.splitlines()
    memory = [i for i, line in enumerate(lines) if line.startswith("Per MPI rank memory allocation")]
    columns: list[str] = []
    if memory:
        rest = lines[memory[0] + 1 :]
        if rest[0].startswith("------------ Step"):  # thermo_style multi: "Name = value" records
            columns = ["Step"]
            for line in rest[1:]:
                pairs = re.findall(r"(\S+)\s+=\s+\S+", line)
                if not pairs or line.startswith("------------"):
                    break
                columns += pairs
        elif rest[0] == "---" and rest[1].startswith("keywords:"):  # thermo_style yaml
            columns = re.findall(r"'([^']*)'", rest[1])
        else:
            columns = rest[0].split()
    return (version.group(1) if version else "unknown"), columns, len(memory)


def cache_key() -> str:
    """Changes with this file (the selection, the builder), the selected example folders or the LAMMPS binary."""
    lmp = Path(find_lammps().executable).resolve()
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"{lmp}\n{lmp.stat().st_size}\n{lmp.stat().st_mtime_ns}\n".encode())
    for source in SELECTION:
        for path in sorted((EXAMPLES / source).parent.rglob("*")):
            if path.is_file():
                digest.update(f"{path}\n{path.stat().st_size}\n{path.stat().st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _require_examples() -> None:
    if not EXAMPLES.is_dir():
        raise CorpusError(
            f"no LAMMPS examples at {EXAMPLES}: install Debian's lammps-examples and lammps-data "
            "(as root: bash scripts/install.sh --test), or set MDAGENT_LAMMPS_EXAMPLES"
        )


def _workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def build(timeout: float = 120, quiet: bool = False) -> Path:
    """The corpus folder, built first if the cache is missing or stale. Safe to call from parallel processes."""
    _require_examples()
    key = cache_key()
    folder = CACHE / key  # one folder per key: a second checkout (another LAMMPS) never removes one in use
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = folder / "manifest.json"
        if not (manifest.is_file() and json.loads(manifest.read_text()).get("key") == key):
            _build(folder, key, timeout, quiet)
    os.utime(folder)  # in use: kept by _forget_unused
    _forget_unused()
    return folder


def _forget_unused(days: int = 14) -> None:
    """Corpora of other keys not used for `days` (an old checkout's, an old LAMMPS's) are removed."""
    cutoff = time.time() - days * 86400
    for old in CACHE.iterdir():
        if old.is_dir() and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _build(target: Path, key: str, timeout: float, quiet: bool) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    _say(
        quiet,
        f"== building the test corpus in {target}: {len(SELECTION)} examples from {EXAMPLES}, {_workers()} at a time",
    )
    start = time.perf_counter()
    done = itertools.count(1)

    def one(source: str) -> tuple[str, dict]:
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            result = run_example(source, Path(tmp) / "run", timeout)
            if not result["reason"]:
                folder = target / example_name(source)
                for rel in result["read"]:
                    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(Path(tmp) / "run" / rel, folder / rel)
                (folder / REFERENCE_LOG).write_text(result["log"])
        _say(
            quiet,
            f"  [{next(done)}/{len(SELECTION)}] {source}: {result['wall_s']:.1f} s"
            + (f"  SKIPPED: {result['reason']}" if result["reason"] else ""),
        )
        return source, result

    with ThreadPoolExecutor(_workers()) as pool:
        results = list(pool.map(one, SELECTION))
    examples, failed = [], []
    for source, result in results:
        if result["reason"]:
            failed.append({"source": source, "reason": result["reason"]})
            continue
        version, columns, blocks = thermo_summary(result["log"])
        script = source.rpartition("/")[2]
        examples.append(
            {
                "name": example_name(source),
                "source": source,
                "input": script,
                "reference_log": REFERENCE_LOG,
                "reference_log_lammps_version": version,
                "thermo_columns": columns,
                "thermo_blocks": blocks,
                "files": result["read"],
                "wall_s": result["wall_s"],
                "command": f"lmp -in {script} -log log.lammps -nocite  (OMP_NUM_THREADS=1, LAMMPS_POTENTIALS unset)",
            }
        )
    manifest = {
        "key": key,
        "examples_dir": str(EXAMPLES),
        "lammps": find_lammps().executable,
        "examples": examples,
        "failed": failed,
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    _say(
        quiet,
        f"== test corpus: {len(examples)} examples in {time.perf_counter() - start:.0f} s"
        + "".join(f"\n   skipped {f['source']}: {f['reason']}" for f in failed),
    )


def screen(timeout: float = 6) -> None:
    """Run every Debian example once and write one line per example to SCREENING (the measured exclusions).

    Resumable: examples already in SCREENING are not run again."""
    _require_examples()
    sources = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("in.*") if p.is_file())
    header = "source\toutcome\twall_s\tfiles_read\treason\n"
    rows = {}
    if SCREENING.is_file():
        rows = {line.split("\t")[0]: line for line in SCREENING.read_text().splitlines()[1:] if line}
    todo = [s for s in sources if s not in rows]
    out = SCREENING.open("a" if rows else "w")
    if not rows:
        out.write(header)

    def one(source: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_example(source, Path(tmp) / "run", timeout)
        outcome = "ok" if not r["reason"] else ("timeout" if r["status"] == "timeout" else "fails")
        reason = " ".join(r["reason"].split())[:200]
        rows[source] = f"{source}\t{outcome}\t{r['wall_s']}\t{len(r['read'])}\t{reason}"
        out.write(rows[source] + "\n")
        out.flush()
        print(f"  [{len(rows)}/{len(sources)}] {rows[source]}", file=sys.stderr, flush=True)

    with out, ThreadPoolExecutor(_workers()) as pool:
        list(pool.map(one, todo))
    SCREENING.write_text(header + "".join(rows[s] + "\n" for s in sources))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--screen", action="store_true", help="run every Debian example once into " + SCREENING.name)
    args = parser.parse_args()
    try:
        if args.screen:
            screen()
        else:
            print(build())
    except CorpusError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
