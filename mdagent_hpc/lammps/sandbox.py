"""Run LAMMPS with bubblewrap: no network, no other process, only the run folder writable.

The script is untrusted. The policy refuses what it can see; this wall holds for what it cannot: the process
sees /usr, the LAMMPS install and the potentials read-only, its run folder read-write, and nothing else of the
host (no /home, /root, /etc, /tmp of the host), with every namespace unshared (so no network at all).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path


class SandboxUnavailableError(RuntimeError):
    pass


@functools.cache
def bwrap_path() -> str | None:
    """bwrap, if it is installed and can create namespaces here."""
    path = shutil.which("bwrap")
    if not path:
        return None
    probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "true"], capture_output=True, timeout=10)
    return path if probe.returncode == 0 else None


def _libdirs(executable: str, env: dict[str, str]) -> list[str]:
    dirs = [str(Path(executable).resolve().parent)]
    dirs += [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
    return dirs


def sandboxed(argv: list[str], run_dir: Path, env: dict[str, str], read_only: list[str] | None = None) -> list[str]:
    """`argv` wrapped in bwrap, working in `run_dir`. `env` becomes the whole environment."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailableError(
            "bubblewrap (bwrap) is not installed or cannot create namespaces here; "
            "install it (apt-get install bubblewrap) or use a site with a container"
        )
    run_dir = Path(run_dir).resolve()
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path(f"/{link}").is_symlink():
            cmd += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        elif Path(f"/{link}").is_dir():
            cmd += ["--ro-bind", f"/{link}", f"/{link}"]
    cmd += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    if Path("/sys/devices/system/cpu").is_dir():  # MPI's hwloc reads the CPU topology
        cmd += ["--ro-bind", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    seen: set[str] = set()
    for path in [*_libdirs(argv[0], env), *(read_only or [])]:
        real = str(Path(path).resolve())
        if Path(real).exists() and real not in seen and not real.startswith("/usr/"):
            seen.add(real)
            cmd += ["--ro-bind", real, real]
    cmd += ["--bind", str(run_dir), str(run_dir), "--chdir", str(run_dir)]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--", *argv]


def main() -> None:
    """`mdagent-lmp ARGS`: run this machine's LAMMPS on ARGS, sandboxed in the current folder."""
    import sys

    from mdagent_hpc.lammps.install import LammpsNotFoundError, find_lammps

    try:
        install = find_lammps()
        cwd = Path.cwd()
        env = install.environ({"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"})
        read_only = [install.potentials_dir] if install.potentials_dir else []
        argv = sandboxed(install.command(*sys.argv[1:]), cwd, env, read_only)
    except (LammpsNotFoundError, SandboxUnavailableError) as exc:
        print(f"mdagent-lmp: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    os.execv(argv[0], argv)
