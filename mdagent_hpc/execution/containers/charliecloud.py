"""Charliecloud: `ch-run` runs a directory image unprivileged, in a user namespace.

    unshare --user --map-root-user --net --pid --fork --mount-proc --kill-child \\
        ch-run --private-tmp --unset-env='*' --set-env --set-env=K=V ... -b SRC:DST ... -b RUN:/mnt/run -c /mnt/run \\
        IMAGE -- CMD

ch-run shares the host's network and process table, and binds the host's /tmp unless --private-tmp; the sandbox
keeps LAMMPS off the network and away from other processes, so `unshare` gives it a network namespace with nothing in
it and a process namespace of its own (--kill-child: nothing outlives a killed job). --unset-env='*' then --set-env
(the image's /ch/environment) is Apptainer's --containall for the environment. ch-run binds only onto folders the
image has, so the run folder goes to /mnt/run and a site's potentials folder to /mnt/potentials
(containers/lammps-debian.sh makes both). ch-run's binds are read-write: there is no read-only bind in ch-run 0.31.
"""

from __future__ import annotations

import getpass
import os

from mdagent_hpc.execution.containers import ContainerRuntime, Launch, split_bind

RUN_DIR = "/mnt/run"
POTENTIALS_DIR = "/mnt/potentials"
ISOLATE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]


class Charliecloud(ContainerRuntime):
    name = "charliecloud"
    binary = "ch-run"

    def prefix(self, launch: Launch, binary: str | None = None) -> list[str]:
        options = ["--private-tmp"]
        if launch.clean_env:
            options += ["--unset-env=*", "--set-env"]
        env = dict(launch.env)
        for spec in launch.binds:
            source, dest, _ = split_bind(spec)
            options += ["-b", f"{source}:{dest}"]
        if launch.workdir:
            options += ["-b", f"{launch.workdir}:{RUN_DIR}", "-c", RUN_DIR]
        if launch.potentials_dir:
            options += ["-b", f"{launch.potentials_dir}:{POTENTIALS_DIR}"]
            env["LAMMPS_POTENTIALS"] = POTENTIALS_DIR
        options += [f"--set-env={key}={value}" for key, value in env.items()]
        return [*ISOLATE, binary or self.binary, *options, launch.image, "--"]

    def environment(self) -> dict[str, str]:
        return {"USER": os.environ.get("USER") or getpass.getuser()}  # ch-run refuses to start without $USER
