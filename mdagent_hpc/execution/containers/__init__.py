"""Running a command inside a LAMMPS image: one small interface, one adapter per container runtime.

As Parsl keeps its launchers apart, each runtime lives in its own module and only turns a `Launch` (the image, what
to bind, the working folder, the environment) into the words that start a command in it. The LAMMPS job (AiiDA's
ContainerizedCode), the sweep's pilot workers and `mdagent image check` all go through `runtime(name)`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Launch:
    """What a command in the image gets: `workdir` (a host folder) is bound and made the working folder;
    `potentials_dir` (a host folder) is bound read-only where the runtime can, and becomes LAMMPS_POTENTIALS."""

    image: str
    binds: tuple[str, ...] = ()  # the site config's `src[:dst[:ro|rw]]`
    workdir: str | None = None
    potentials_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    clean_env: bool = True  # start from the image's environment, not the host's
    gpus: bool = False
    network: bool = False  # LAMMPS gets none: a script cannot reach the network from inside the container


class ContainerRuntime(ABC):
    name: ClassVar[str]
    binary: ClassVar[str]  # the command, as found on PATH

    @abstractmethod
    def prefix(self, launch: Launch, binary: str | None = None) -> list[str]:
        """The words before the command: `[*prefix(launch), "lmp", "-h"]` runs `lmp -h` in the image."""

    def version_command(self, binary: str | None = None) -> list[str]:
        return [binary or self.binary, "--version"]

    def parse_version(self, output: str) -> str:
        match = re.search(r"\d+(?:\.\d+)+\S*", output)
        return match.group(0) if match else output.strip().splitlines()[0] if output.strip() else "unknown"

    def environment(self) -> dict[str, str]:
        """What the runtime itself needs in its environment, beyond the caller's."""
        return {}


def split_bind(spec: str) -> tuple[str, str, str]:
    """`src[:dst[:ro|rw]]` as (source, destination, "ro" or "rw")."""
    parts = spec.split(":")
    return parts[0], parts[1] if len(parts) > 1 else parts[0], parts[2] if len(parts) > 2 else "rw"


def runtime(name: str) -> ContainerRuntime:
    from mdagent_hpc.execution.containers.apptainer import Apptainer
    from mdagent_hpc.execution.containers.charliecloud import Charliecloud

    runtimes: dict[str, type[ContainerRuntime]] = {"apptainer": Apptainer, "charliecloud": Charliecloud}
    if name not in runtimes:
        raise ValueError(f"unknown container runtime {name!r}; known: {', '.join(runtimes)}")
    return runtimes[name]()
