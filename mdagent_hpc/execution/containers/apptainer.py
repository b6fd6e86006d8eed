"""Apptainer: `apptainer exec [--containall] [--net --network none] [--nv] --bind ... --pwd DIR ... IMAGE CMD`.

The production path on clusters. --containall gives the container no host folder and no host environment except
what is listed, but not its own network: `--net --network none` does (a loopback only; allowed unprivileged since
Apptainer 1.1), so a script cannot reach the network. --nv exposes the NVIDIA GPUs. `--pwd` rather than `--cwd`:
Apptainer before 1.3 knows only --pwd.
"""

from __future__ import annotations

from mdagent_hpc.execution.containers import ContainerRuntime, Launch


class Apptainer(ContainerRuntime):
    name = "apptainer"
    binary = "apptainer"

    def prefix(self, launch: Launch, binary: str | None = None) -> list[str]:
        options = ["--containall"] if launch.clean_env else []
        if not launch.network:
            options += ["--net", "--network", "none"]
        if launch.gpus:
            options.append("--nv")
        binds = list(launch.binds)
        if launch.workdir:
            binds.append(launch.workdir)
        if launch.potentials_dir:
            binds.append(f"{launch.potentials_dir}:{launch.potentials_dir}:ro")
        for spec in binds:
            options += ["--bind", spec]
        if launch.workdir:
            options += ["--pwd", launch.workdir]
        if launch.clean_env:
            # --containall drops the host's environment: pass on what LAMMPS reads
            env = dict(launch.env)
            if launch.potentials_dir:
                env["LAMMPS_POTENTIALS"] = launch.potentials_dir
            for key, value in env.items():
                options += ["--env", f"{key}={value}"]
        return [binary or self.binary, "exec", *options, launch.image]
