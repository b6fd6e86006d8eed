"""The Parsl engine of a sweep: many short LAMMPS points in pilot jobs ("blocks") on the site's scheduler.

`python -m mdagent_hpc.execution.parsl.driver SWEEP_FOLDER [--job DIR]` runs every point of the sweep that has not
ended yet, each in `SWEEP_FOLDER/points/<id>/` as `LAMMPS -in in.lammps -var NAME VALUE ...` through the site's
command (its sandboxed binary or its Apptainer image). A point that ends writes `result.json` atomically; a
point with a `result.json` for the same inputs is never run again, so a driver stopped in any way (SIGTERM,
SIGKILL, a lost login session) resumes where it was. Parsl's HighThroughputExecutor runs the points; a block
cancelled or out of wall time is replaced (min_blocks) and its points run again (retries).

The sweep folder:

    inputs/sweep.json       {"site": SiteConfig, "template": NAME, "files": [NAME...], "points": [{"id", "vars"}]}
    inputs/NAME             the template and the files it reads
    points/<id>/            in.lammps and the files, log.lammps, lammps.out, runs.log (one line per start),
                            result.json (ended) or lost.json (Parsl gave up: run again by the next driver)
    progress.json           the driver's view: counts, blocks (their job ids), updated
    runinfo/                Parsl's logs

`--job DIR` (how PilotCalculation runs it) first copies DIR's `sweep.json` and inputs into the sweep folder,
and writes DIR/results.json and DIR/points/<id>/log.lammps for every ended point of the sweep.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.execution.parsl.worker import LOG, LOST, RESULT, RUNNING, read_json, write_json
from mdagent_hpc.execution.site import SiteConfig, container_command
from mdagent_hpc.lammps.run_folder import INPUT

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")
# Blocks are cancelled by job id; a direct site's blocks are processes (their ids may be reused): they stop by
# themselves when the driver's heartbeats stop.
_CANCEL = {"slurm": ["scancel"], "pbspro": ["qdel"]}


class PilotError(MDAgentError):
    """Bad sweep input or a sweep that cannot start; the message says what to do."""


# ---------------------------------------------------------------- pure: the folder, the points, the commands


def load_inputs(folder: Path) -> dict:
    """`inputs/sweep.json`, checked: point ids (folder names), variable names and values (one safe word each)."""
    data = read_json(folder / "inputs" / "sweep.json")
    if not isinstance(data, dict) or not {"site", "template", "points"} <= set(data):
        raise PilotError(
            f"{folder}/inputs/sweep.json is missing or not a sweep (site, template, points); "
            "run the sweep through PilotCalculation or `--job DIR`"
        )
    seen: set[str] = set()
    for point in data["points"]:
        pid = str(point.get("id", ""))
        if not _ID.match(pid) or pid in seen:
            raise PilotError(f"point id {pid!r} is empty, repeated or not a folder name (letters, digits, _.+-)")
        seen.add(pid)
        for name, value in point.get("vars", {}).items():
            if not _VAR.match(name) or not _VALUE.match(str(value)):
                raise PilotError(
                    f"point {pid}: -var {name} {value!r} is not a variable name and one word (letters, digits, _.+-)"
                )
    return data


def inputs_sha(folder: Path, data: dict) -> str:
    """What a point's result depends on besides its values: the template and the files (by content)."""
    digest = hashlib.sha256()
    for name in [data["template"], *data.get("files", [])]:
        digest.update(name.encode() + b"\0" + (folder / "inputs" / name).read_bytes() + b"\0")
    return digest.hexdigest()


def point_state(point_dir: Path, sha: str) -> str:
    """`done` (ran, exit 0), `failed` (ran and failed, or refused), `lost`, `running` or `pending`."""
    result = read_json(point_dir / RESULT)
    if isinstance(result, dict) and result.get("inputs_sha256") == sha:
        return "done" if result.get("returncode") == 0 else "failed"
    if (point_dir / LOST).exists():
        return "lost"
    return "running" if (point_dir / RUNNING).exists() else "pending"


def pilot_progress(sweep_folder: str | Path) -> dict[str, int]:
    """{"done", "running", "failed", "total"} of a sweep folder, read from its files (any host, driver or not)."""
    folder = Path(sweep_folder)
    data = read_json(folder / "inputs" / "sweep.json")
    if not isinstance(data, dict):
        return {"done": 0, "running": 0, "failed": 0, "total": 0}
    sha = inputs_sha(folder, data)
    counts = {"done": 0, "running": 0, "failed": 0, "total": len(data["points"])}
    for point in data["points"]:
        state = point_state(folder / "points" / point["id"], sha)
        key = {"lost": "failed", "pending": None}.get(state, state)
        if key:
            counts[key] += 1
    return counts


def point_command(site: SiteConfig, point_dir: Path, variables: dict[str, Any]) -> list[str]:
    """The site's LAMMPS command line for one point, run in `point_dir` (as LammpsCalculation runs a job)."""
    args = ["-in", INPUT, "-log", LOG, "-nocite"]
    for name, value in variables.items():
        args += ["-var", name, str(value)]
    if site.lammps.container:
        return container_command(site, args, workdir=str(point_dir))
    argv = [site.lammps.binary or "lmp", *args]
    prepend = [f"module load {m}" for m in site.lammps.modules]
    if site.potentials_dir:
        prepend.append(f"export LAMMPS_POTENTIALS={shlex.quote(site.potentials_dir)}")
    return ["bash", "-c", "\n".join([*prepend, f"exec {shlex.join(argv)}"])] if prepend else argv


def refusals(site: SiteConfig, template: str, variables: dict[str, Any]) -> list[str]:
    """The sandbox policy's errors for the template with this point's values (none: it may run)."""
    from mdagent_hpc.lammps.parser import ScriptError, parse_text
    from mdagent_hpc.lammps.policy import check_policy

    try:
        script = parse_text(template, INPUT, variables={k: str(v) for k, v in variables.items()})
    except ScriptError as exc:
        return [str(exc)]
    return [f"line {d.line}: {d.message}" for d in check_policy(script, site.limits) if d.severity == "error"]


def _on_worker(point_dir: str, command: list[str], sha: str) -> dict:
    # Parsl ships this function by value, without this module's globals: import the real one on the worker.
    from mdagent_hpc.execution.parsl.worker import run_point

    return run_point(point_dir, command, sha)


# ---------------------------------------------------------------- the driver


class Driver:
    def __init__(self, folder: Path, job_dir: Path | None = None, say: Callable[[str], None] = print):
        self.folder, self.job_dir, self.say = folder, job_dir, say
        self.blocks: dict[str, str] = {}

    def prepare(self) -> tuple[dict, str, SiteConfig]:
        if self.job_dir is not None:
            self._install_inputs()
        data = load_inputs(self.folder)
        try:
            site = SiteConfig.model_validate(data["site"])
        except ValueError as exc:
            raise PilotError(f"the site in {self.folder}/inputs/sweep.json is not valid: {exc}") from None
        from mdagent_hpc.execution.computers import resolved_binary

        return data, inputs_sha(self.folder, data), resolved_binary(site)

    def _install_inputs(self) -> None:
        spec = read_json(self.job_dir / "sweep.json")
        if not isinstance(spec, dict):
            raise PilotError(f"{self.job_dir}/sweep.json is missing or not JSON")
        inputs = self.folder / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        for name in [spec.get("template", ""), *spec.get("files", [])]:
            if not name or "/" in name or not (self.job_dir / name).is_file():
                raise PilotError(f"input file {name!r} is not in {self.job_dir}")
            shutil.copyfile(self.job_dir / name, inputs / name)
        write_json(inputs / "sweep.json", spec)

    def cancel_leftovers(self, site: SiteConfig) -> None:
        """Blocks a previous driver recorded and could not cancel (it was killed): cancel them now."""
        old = read_json(self.folder / "progress.json") or {}
        ids = [job for job in (old.get("blocks") or {}).values() if job]
        if ids and site.scheduler in _CANCEL:
            self.say(f"cancelling {len(ids)} block(s) a previous driver left: {' '.join(ids)}")
            self.cancel(site, ids)

    @staticmethod
    def cancel(site: SiteConfig, job_ids: list[str]) -> None:
        if job_ids and site.scheduler in _CANCEL:  # a job that has ended already: the scheduler says so, harmless
            subprocess.run([*_CANCEL[site.scheduler], *job_ids], capture_output=True, timeout=60)

    def progress(self, data: dict, sha: str, state: str) -> dict:
        counts = pilot_progress(self.folder)
        record = {
            **counts,
            "state": state,
            "blocks": self.blocks,
            "driver": f"{socket.gethostname()}:{os.getpid()}",
            "updated": time.time(),
        }
        write_json(self.folder / "progress.json", record)
        return record

    def collect(self, data: dict, sha: str) -> dict:
        """results.json and points/<id>/log.lammps in the job folder, for every ended point of this sweep."""
        results = {}
        for point in data["points"]:
            src = self.folder / "points" / point["id"]
            result = read_json(src / RESULT)
            if not (isinstance(result, dict) and result.get("inputs_sha256") == sha):
                continue
            results[point["id"]] = result
            dest = self.job_dir / "points" / point["id"] / LOG if self.job_dir is not None else None
            if dest is not None and not dest.exists() and (src / LOG).exists():  # one job folder: copied once
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / LOG, dest)
        if self.job_dir is not None:
            write_json(self.job_dir / "results.json", results)
        return results

    def run(self) -> int:
        data, sha, site = self.prepare()
        self.cancel_leftovers(site)
        template = (self.folder / "inputs" / data["template"]).read_text()
        todo = []
        for point in data["points"]:
            point_dir = self.folder / "points" / point["id"]
            state = point_state(point_dir, sha)
            if state in ("done", "failed"):
                continue
            point_dir.mkdir(parents=True, exist_ok=True)
            for name in (LOST, RUNNING):
                (point_dir / name).unlink(missing_ok=True)  # a previous driver's: this one runs the point again
            refused = refusals(site, template, point.get("vars", {}))
            if refused:
                write_json(
                    point_dir / RESULT,
                    {
                        "returncode": None,
                        "seconds": 0.0,
                        "log_file": None,
                        "error": "refused by the sandbox policy: " + "; ".join(refused),
                        "inputs_sha256": sha,
                        "ended": time.time(),
                    },
                )
                continue
            shutil.copyfile(self.folder / "inputs" / data["template"], point_dir / INPUT)
            for name in data.get("files", []):
                shutil.copyfile(self.folder / "inputs" / name, point_dir / name)
            todo.append((point, point_dir))
        total = len(data["points"])
        self.say(f"{total - len(todo)} of {total} point(s) ended before; running {len(todo)} on {site.name}")
        state = "stopped"  # unless the points are all through: SIGTERM, an error
        try:
            if todo:
                self._run_parsl(site, todo, data, sha)
            state = "finished"
        finally:
            self.progress(data, sha, state)
        results = self.collect(data, sha)
        missing = total - len(results)
        if missing:
            self.say(f"{missing} point(s) did not end (see points/<id>/lost.json); run the driver again to retry them")
        return 0 if not missing else 1

    def _run_parsl(self, site: SiteConfig, todo: list, data: dict, sha: str) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        import parsl
        from parsl.app.app import python_app

        from mdagent_hpc.execution.parsl.config import parsl_config

        bindir = str(Path(sys.executable).parent)  # Parsl starts interchange.py from PATH
        os.environ["PATH"] = f"{bindir}:{os.environ.get('PATH', '')}"
        dfk = parsl.load(parsl_config(site, self.folder / "runinfo"))
        try:
            app = python_app(_on_worker, executors=["pilot"])
            futures = {app(str(d), point_command(site, d, p.get("vars", {})), sha): (p, d) for p, d in todo}
            pending, done_count, start = set(futures), 0, time.monotonic()
            executor = dfk.executors["pilot"]
            while pending:
                finished, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
                # Every block submitted, ended or not: Parsl may take a queued block for an ended one.
                blocks, self.blocks = self.blocks, {b: str(j) for b, j in executor.blocks_to_job_id.items()}
                for future in finished:
                    point, point_dir = futures[future]
                    done_count += 1
                    try:
                        result = future.result()
                        how = f"exit {result['returncode']} in {result['seconds']:.1f} s"
                    except Exception as exc:  # noqa: BLE001 (Parsl's: lost past the retries, blocks failing)
                        write_json(point_dir / LOST, {"error": f"{type(exc).__name__}: {exc}", "at": time.time()})
                        how = f"lost ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                    self.say(f"[{done_count}/{len(todo)}] {point['id']}: {how} ({time.monotonic() - start:.0f} s)")
                if finished or blocks != self.blocks:
                    self.progress(data, sha, "running")
                    if self.job_dir is not None:
                        self.collect(data, sha)
        finally:
            dfk.cleanup()  # cancels the blocks Parsl believes alive
            self.cancel(site, [str(j) for j in dfk.executors["pilot"].blocks_to_job_id.values()])
            self.blocks = {}


def _stop_on_sigterm() -> None:
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    parent = os.getppid()

    def watch_parent():  # the job script (or shell) that started us went away: stop, cancelling our blocks
        while os.getppid() == parent:
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, daemon=True).start()


def _lock(folder: Path):
    import fcntl

    handle = open(folder / "driver.lock", "a+")  # noqa: SIM115 (held for the driver's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        # Another driver runs the sweep (one left by a sweep process that was killed): what it ends is kept in the
        # folder, so this one waits for it and then runs only the points still missing.
        handle.seek(0)
        print(
            f"another driver ({handle.read().strip() or 'unknown'}) is running the sweep in {folder}; "
            "waiting for it to end",
            flush=True,
        )
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{socket.gethostname()}:{os.getpid()}")
    handle.flush()
    return handle


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mdagent_hpc.execution.parsl.driver", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sweep_folder", help="absolute path; kept across runs of the driver")
    parser.add_argument("--job", metavar="DIR", help="take the inputs from DIR and write results there")
    args = parser.parse_args(argv)
    folder = Path(args.sweep_folder)
    if not folder.is_absolute():
        print(f"pilot: {folder} is not an absolute path; give the sweep folder as /...", file=sys.stderr)
        return 2
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = _lock(folder)
    except (OSError, PilotError) as exc:
        print(f"pilot: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, OSError) else 3
    _stop_on_sigterm()
    try:
        return Driver(
            folder, Path(args.job).resolve() if args.job else None, say=lambda text: print(text, flush=True)
        ).run()
    except PilotError as exc:
        print(f"pilot: {exc}", file=sys.stderr)
        return 2
    finally:
        lock.close()


if __name__ == "__main__":
    raise SystemExit(main())
