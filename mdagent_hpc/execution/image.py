"""`mdagent image check`: what LAMMPS an image holds (version, packages, potentials folder), read from inside it.

Runs on the machine that has the container runtime (a cluster's login node, or here for Charliecloud):

    apptainer --version
    apptainer exec --containall IMAGE lmp -h
    apptainer exec --containall IMAGE sh -c '...'     (where $LAMMPS_POTENTIALS points, how many files)

    ch-run --version
    unshare ... ch-run ... -b SCRATCH:/mnt/run -c /mnt/run IMAGE -- lmp -h     (and the same `sh -c '...'`)

through the runtime's adapter (execution/containers), and parses `lmp -h` with the same parser as the local LAMMPS
(`mdagent_hpc.lammps.install.parse_help`). Charliecloud's check binds a scratch run folder as a job's would, so an
image that cannot take a job's binds fails here. Every failure is an `ImageCheckError`: one sentence on what went
wrong and what to do next.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.execution.containers import ContainerRuntime, Launch, runtime
from mdagent_hpc.execution.site import IMAGE_SCHEMES
from mdagent_hpc.lammps.install import parse_help

NOT_INSTALLED = (
    "Apptainer is not installed here; run `mdagent image check` on a login node where `apptainer --version` works"
)
CH_RUN_NOT_INSTALLED = (
    "Charliecloud's ch-run is not installed here; install it (apt-get install charliecloud-runtime) or run "
    "`mdagent image check` where `ch-run --version` works"
)
REBUILD = {"apptainer": "containers/lammps.def", "charliecloud": "scripts/lammps_image.sh"}
# Prints the folder and its number of entries, or nothing when LAMMPS_POTENTIALS is unset or not a folder.
_POTENTIALS_SCRIPT = (
    'd="${LAMMPS_POTENTIALS:-}"; [ -n "$d" ] && [ -d "$d" ] && printf "%s\\n" "$d" && ls -1 "$d" | wc -l'
)


class ImageCheckError(MDAgentError):
    """The image could not be checked; the message says why and what to do next."""


class ImageReport(BaseModel):
    image: str = Field(description="the path (made absolute) or URI that was checked")
    runtime: str = Field(description="apptainer or charliecloud")
    runtime_version: str
    executable: str = "lmp"
    lammps_version: str
    packages: list[str]
    potentials_dir: str | None = Field(None, description="$LAMMPS_POTENTIALS inside the image, if a folder")
    potential_files: int | None = Field(None, description="entries in that folder")


def check_image(
    image: str,
    apptainer: str = "apptainer",
    executable: str = "lmp",
    timeout: float = 300.0,
    runtime_name: str = "apptainer",
    ch_run: str = "ch-run",
) -> ImageReport:
    """Run the image's LAMMPS with `-h` through its runtime and report its version and packages.

    `image` is, for Apptainer, a path of a .sif file (or sandbox folder) or an oras://, docker:// or library:// URI;
    for Charliecloud, an image folder. `apptainer` and `ch_run` are the runtimes' commands or paths.
    `timeout` bounds each run (the first run of a URI downloads and converts the image).
    """
    adapter = runtime(runtime_name)
    binary = _binary(adapter, apptainer if runtime_name == "apptainer" else ch_run)
    target = _image(image) if runtime_name == "apptainer" else _image_folder(image)
    version = _version(adapter, binary)
    rebuild = REBUILD[runtime_name]
    with tempfile.TemporaryDirectory(prefix="mdagent-image-check-") as scratch:
        # Apptainer's check stays the documented `exec --containall IMAGE lmp -h`; Charliecloud's binds a run folder.
        launch = Launch(image=target, workdir=None if runtime_name == "apptainer" else scratch)
        prefix = adapter.prefix(launch, binary)
        result = _run([*prefix, executable, "-h"], timeout, target, adapter)
        if result.returncode != 0:
            last = _last_line(result.stderr) or _last_line(result.stdout) or f"exit status {result.returncode}"
            if result.returncode == 127 or "executable file not found" in last or _no_such_command(last, executable):
                raise ImageCheckError(
                    f"The image {target} has no `{executable}` on its PATH ({last}); build it from {rebuild} "
                    "or pass --executable with the name of its LAMMPS binary (lammps.executable in the site config)"
                )
            if runtime_name == "apptainer":
                raise ImageCheckError(
                    f"Apptainer could not run {target}: {last}; check that it is a readable SIF image "
                    f"(`apptainer inspect {target}`) or rebuild it from {rebuild}"
                )
            raise ImageCheckError(
                f"ch-run could not run {target} with a job's binds: {last}; rebuild it with {rebuild} "
                "(it makes /mnt/run and /mnt/potentials, where the run and potentials folders are bound)"
            )
        caps = parse_help(result.stdout)
        if caps.version == "unknown":
            raise ImageCheckError(
                f"`{executable} -h` in {target} printed no LAMMPS version; is `{executable}` LAMMPS? "
                "Pass --executable with the name of the LAMMPS binary in the image"
            )
        potentials_dir, count = _potentials(prefix, adapter, timeout)
    return ImageReport(
        image=target,
        runtime=runtime_name,
        runtime_version=version,
        executable=executable,
        lammps_version=caps.version,
        packages=list(caps.packages),
        potentials_dir=potentials_dir,
        potential_files=count,
    )


def _binary(adapter: ContainerRuntime, command: str) -> str:
    found = shutil.which(command)
    if found:
        return found
    if adapter.name == "charliecloud":
        if os.sep in command:
            raise ImageCheckError(f"No ch-run at {command}; give --ch-run the path of Charliecloud's ch-run")
        raise ImageCheckError(CH_RUN_NOT_INSTALLED)
    if os.sep in command:
        raise ImageCheckError(
            f"No Apptainer at {command}; give --apptainer the path of the apptainer binary, or run "
            "`mdagent image check` on a login node where `apptainer --version` works"
        )
    raise ImageCheckError(NOT_INSTALLED)


def _image_folder(image: str) -> str:
    path = Path(image).expanduser()
    if not path.is_dir():
        what = "is a file, not an image folder (unpack a SquashFS image with `unsquashfs -d DIR FILE`)"
        raise ImageCheckError(
            f"{path} {what if path.exists() else 'does not exist'}; build the image folder with "
            "scripts/lammps_image.sh (or containers/lammps-debian.sh DIR)"
        )
    if not (path / "bin").exists() and not (path / "usr").is_dir():
        raise ImageCheckError(f"{path} holds no root filesystem (no /usr); build it with scripts/lammps_image.sh")
    return str(path.resolve())


def _no_such_command(line: str, executable: str) -> bool:
    return "execvp" in line and executable in line or "can't execve" in line


def _image(image: str) -> str:
    if "://" in image:
        if not image.startswith(IMAGE_SCHEMES):
            raise ImageCheckError(
                f"{image} is not an image Apptainer can run here; give a .sif path or an {', '.join(IMAGE_SCHEMES)} URI"
            )
        return image
    path = Path(image).expanduser()
    if not path.exists():
        raise ImageCheckError(
            f"No image at {path}; build one with `apptainer build lammps.sif containers/lammps.def` "
            "(see containers/README.md) or give an oras:// URI"
        )
    if not os.access(path, os.R_OK):
        raise ImageCheckError(f"Cannot read {path} (permission denied); check the file's owner and mode")
    return str(path.resolve())


def _version(adapter: ContainerRuntime, binary: str) -> str:
    result = _run(adapter.version_command(binary), 30, binary, adapter)
    text = (result.stdout + result.stderr).strip()  # ch-run prints its version on stderr
    if result.returncode != 0 or not text:
        last = _last_line(result.stderr) or f"exit status {result.returncode}"
        raise ImageCheckError(f"`{binary} --version` failed ({last}); check the {adapter.name} installation or module")
    return adapter.parse_version(text)


def _potentials(prefix: list[str], adapter: ContainerRuntime, timeout: float) -> tuple[str | None, int | None]:
    """$LAMMPS_POTENTIALS inside the image and its number of entries; (None, None) when not there."""
    try:
        result = subprocess.run(
            [*prefix, "sh", "-c", _POTENTIALS_SCRIPT],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, **adapter.environment()},
        )  # fmt: skip
    except (subprocess.TimeoutExpired, OSError):
        return None, None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or len(lines) != 2 or not lines[1].strip().isdigit():
        return None, None
    return lines[0], int(lines[1])


def _run(command: list[str], timeout: float, what: str, adapter: ContainerRuntime) -> subprocess.CompletedProcess[str]:
    try:
        env = {**os.environ, **adapter.environment()}
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        hint = (
            "the first run of a URI downloads and converts the image: `apptainer pull` it first, or "
            if "://" in what
            else ""
        )
        raise ImageCheckError(
            f"`{' '.join(command[: command.index(what)] if what in command else command[:3])} ...` "
            f"did not finish within {timeout:g} s; {hint}pass a larger --timeout"
        ) from None
    except OSError as exc:
        raise ImageCheckError(
            f"Cannot run {command[0]}: {exc.strerror}; check the {adapter.name} installation"
        ) from None


def _last_line(text: str) -> str:
    """The error the runtime printed: its last FATAL/ERROR/Error line (usage text follows Apptainer's flag errors;
    ch-run writes `ch-run[PID]: error: ... (file.c:N)`), else the last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"(FATAL|ERROR|Error)\b|ch-run\[\d+\]: error:|unshare:", line)]
    last = (errors or lines)[-1] if lines else ""
    last = re.sub(r"^ch-run\[\d+\]: error: (.*?)(?: \([\w.]+:\d+(?: \d+)?\))?$", r"\1", last)
    return re.sub(r"^FATAL:\s+", "", last)
