"""`mdagent image check`: what LAMMPS an Apptainer image holds (version, packages, potentials folder).

Runs on the machine that has Apptainer (a cluster's login node):

    apptainer --version
    apptainer exec --containall IMAGE lmp -h
    apptainer exec --containall IMAGE sh -c '...'     (where $LAMMPS_POTENTIALS points, how many files)

and parses `lmp -h` with the same parser as the local LAMMPS (`mdagent_hpc.lammps.install.parse_help`).
Every failure is an `ImageCheckError`: one sentence on what went wrong and what to do next.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel, Field

from mdagent_hpc.execution.site import IMAGE_SCHEMES
from mdagent_hpc.lammps.install import parse_help

NOT_INSTALLED = (
    "Apptainer is not installed here; run `mdagent image check` on a login node where `apptainer --version` works"
)
# Prints the folder and its number of entries, or nothing when LAMMPS_POTENTIALS is unset or not a folder.
_POTENTIALS_SCRIPT = (
    'd="${LAMMPS_POTENTIALS:-}"; [ -n "$d" ] && [ -d "$d" ] && printf "%s\\n" "$d" && ls -1 "$d" | wc -l'
)


class ImageCheckError(Exception):
    """The image could not be checked; the message says why and what to do next."""


class ImageReport(BaseModel):
    image: str = Field(description="the path (made absolute) or URI that was checked")
    apptainer_version: str
    executable: str = "lmp"
    lammps_version: str
    packages: list[str]
    potentials_dir: str | None = Field(None, description="$LAMMPS_POTENTIALS inside the image, if a folder")
    potential_files: int | None = Field(None, description="entries in that folder")


def check_image(
    image: str, apptainer: str = "apptainer", executable: str = "lmp", timeout: float = 300.0
) -> ImageReport:
    """Run the image's LAMMPS with `-h` through Apptainer and report its version and packages.

    `image` is a path of a .sif file (or sandbox folder) or an oras://, docker:// or library:// URI.
    `timeout` bounds each `apptainer exec` (the first run of a URI downloads and converts the image).
    """
    binary = _apptainer(apptainer)
    target = _image(image)
    version = _apptainer_version(binary)

    result = _run([binary, "exec", "--containall", target, executable, "-h"], timeout, target)
    if result.returncode != 0:
        last = _last_line(result.stderr) or _last_line(result.stdout) or f"exit status {result.returncode}"
        if result.returncode == 127 or "executable file not found" in last:
            raise ImageCheckError(
                f"The image {target} has no `{executable}` on its PATH ({last}); build it from containers/lammps.def "
                "or pass --executable with the name of its LAMMPS binary (lammps.executable in the site config)"
            )
        raise ImageCheckError(
            f"Apptainer could not run {target}: {last}; check that it is a readable SIF image "
            f"(`apptainer inspect {target}`) or rebuild it from containers/lammps.def"
        )
    caps = parse_help(result.stdout)
    if caps.version == "unknown":
        raise ImageCheckError(
            f"`{executable} -h` in {target} printed no LAMMPS version; is `{executable}` LAMMPS? "
            "Pass --executable with the name of the LAMMPS binary in the image"
        )
    potentials_dir, count = _potentials(binary, target, timeout)
    return ImageReport(
        image=target,
        apptainer_version=version,
        executable=executable,
        lammps_version=caps.version,
        packages=list(caps.packages),
        potentials_dir=potentials_dir,
        potential_files=count,
    )


def _apptainer(apptainer: str) -> str:
    found = shutil.which(apptainer)
    if found:
        return found
    if os.sep in apptainer:
        raise ImageCheckError(
            f"No Apptainer at {apptainer}; give --apptainer the path of the apptainer binary, or run "
            "`mdagent image check` on a login node where `apptainer --version` works"
        )
    raise ImageCheckError(NOT_INSTALLED)


def _image(image: str) -> str:
    if "://" in image:
        if not image.startswith(IMAGE_SCHEMES):
            raise ImageCheckError(
                f"{image} is not an image Apptainer can run here; give a .sif path or an "
                f"{', '.join(IMAGE_SCHEMES)} URI"
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


def _apptainer_version(binary: str) -> str:
    result = _run([binary, "--version"], 30, binary)
    text = result.stdout.strip()
    if result.returncode != 0 or not text:
        last = _last_line(result.stderr) or f"exit status {result.returncode}"
        raise ImageCheckError(f"`{binary} --version` failed ({last}); check the Apptainer installation or module")
    match = re.search(r"version\s+(\S+)", text)
    return match.group(1) if match else text.splitlines()[0]


def _potentials(binary: str, target: str, timeout: float) -> tuple[str | None, int | None]:
    """$LAMMPS_POTENTIALS inside the image and its number of entries; (None, None) when not there."""
    try:
        result = subprocess.run(
            [binary, "exec", "--containall", target, "sh", "-c", _POTENTIALS_SCRIPT],
            capture_output=True, text=True, timeout=timeout,
        )
    except (subprocess.TimeoutExpired, OSError):
        return None, None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or len(lines) != 2 or not lines[1].strip().isdigit():
        return None, None
    return lines[0], int(lines[1])


def _run(command: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        hint = (
            "the first run of a URI downloads and converts the image: `apptainer pull` it first, or "
            if "://" in what
            else ""
        )
        raise ImageCheckError(
            f"`{' '.join(command[:3])} ...` did not finish within {timeout:g} s; {hint}pass a larger --timeout"
        ) from None
    except OSError as exc:
        raise ImageCheckError(f"Cannot run {command[0]}: {exc.strerror}; check the Apptainer installation") from None


def _last_line(text: str) -> str:
    """The error Apptainer printed: its last FATAL/ERROR/Error line (usage text follows flag errors), else the last."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"(FATAL|ERROR|Error)\b", line)]
    return re.sub(r"^FATAL:\s+", "", (errors or lines)[-1]) if lines else ""
