"""Site configs: where and how LAMMPS runs (scheduler, transport, container or binary), loaded from YAML.

`load_site` reports every problem as `file:line: key.path: message`. The `aiida_*` functions are pure: they
return the arguments for AiiDA's `Computer`, `Computer.configure`, the code classes and CalcJob options,
and never create nodes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mdagent_hpc.configfile import ConfigFileError, load_config
from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.execution.containers import Launch, runtime
from mdagent_hpc.home import mdagent_home
from mdagent_hpc.models import Limits
from mdagent_hpc.sweeps.spec import SweepLimits

Scheduler = Literal["direct", "slurm", "pbspro"]
Policy = Literal["resubmit", "restart", "fail"]
KeyPolicy = Literal["RejectPolicy", "WarningPolicy", "AutoAddPolicy"]

AIIDA_SCHEDULERS: dict[str, str] = {"direct": "core.direct", "slurm": "core.slurm", "pbspro": "core.pbspro"}
IMAGE_SCHEMES = ("oras://", "docker://", "library://")
# Fields AiiDA substitutes in a Computer's mpirun_command (the NodeNumberJobResource keys plus the total).
MPI_PLACEHOLDERS = (
    "tot_num_mpiprocs",
    "num_machines",
    "num_mpiprocs_per_machine",
    "num_cores_per_machine",
    "num_cores_per_mpiproc",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")


class SiteConfigError(MDAgentError):
    """One or more problems in a site config, one `file:line: key: message` per line."""

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteLimits(Limits):
    model_config = ConfigDict(extra="forbid")


class Transport(_Strict):
    """`local`, or `ssh` to `host`. The key is referenced by path; passwords have no place here."""

    type: Literal["local", "ssh"] = "local"
    host: str | None = None
    user: str | None = Field(None, description="login name; default: from ~/.ssh/config or the local user")
    port: int = Field(22, ge=1, le=65535)
    key_filename: str | None = Field(None, description="path of the private key file (never its content)")
    proxy_jump: str | None = Field(None, description="[user@]host[:port], comma-separated for several hops")
    key_policy: KeyPolicy = Field("RejectPolicy", description="what to do with an unknown host key")
    use_login_shell: bool = True
    safe_interval: float | None = Field(None, ge=0, description="seconds between connections; default: AiiDA's")

    @field_validator("key_filename")
    @classmethod
    def _a_path_not_a_key(cls, value: str | None) -> str | None:
        if value is not None and ("PRIVATE KEY" in value or "\n" in value):
            raise ValueError("give the path of the key file, not the key itself")
        return value

    @model_validator(mode="after")
    def _ssh_fields(self) -> Transport:
        ssh_only = {"host", "user", "port", "key_filename", "proxy_jump", "key_policy"} & self.model_fields_set
        if self.type == "local" and ssh_only:
            raise ValueError(f"{', '.join(sorted(ssh_only))} only apply to type: ssh")
        if self.type == "ssh" and not self.host:
            raise ValueError("type: ssh needs a host")
        return self


class Resources(_Strict):
    """What a job asks the scheduler for by default."""

    nodes: int = Field(1, ge=1)
    mpi_ranks_per_node: int = Field(1, ge=1)
    threads_per_rank: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    memory_mb: int | None = Field(None, ge=1, description="per node")
    walltime: int = Field(3600, ge=1, description="seconds; YAML may give '[D-]HH:MM:SS'")

    @field_validator("walltime", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().isdigit():
                return int(value)
            match = _WALLTIME.match(value.strip())
            if not match:
                raise ValueError(f"{value!r} is neither seconds nor [D-]HH:MM:SS")
            days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
            if minutes > 59 or seconds > 59:
                raise ValueError(f"{value!r}: minutes and seconds must be below 60")
            return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
        return value


def _bind(spec: str) -> str:
    _no_space_or_braces(spec)
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0] or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError(f"{spec!r} is not src[:dst[:ro|rw]]")
    return spec


def _image_ref(value: str) -> str:
    if not (value.startswith(IMAGE_SCHEMES) or value.startswith("/")):
        raise ValueError(f"{value!r} is neither an absolute path nor an {', '.join(IMAGE_SCHEMES)} URI")
    _no_space_or_braces(value)
    return value


class Container(_Strict):
    """The LAMMPS image and the runtime that runs it (docs/clusters.md: choosing a runtime)."""

    runtime: Literal["apptainer", "charliecloud"] = "apptainer"
    image: str = Field(
        description="apptainer: a .sif path or an oras://, docker:// or library:// URI; "
        "charliecloud: the absolute path of an image folder"
    )
    binds: list[Annotated[str, AfterValidator(_bind)]] = Field(default_factory=list, description="src[:dst[:ro|rw]]")
    containall: bool = Field(True, description="apptainer: --containall")
    nv: bool = Field(False, description="apptainer: expose NVIDIA GPUs inside the container")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _image_ref(value)

    @model_validator(mode="after")
    def _runtime_fits(self) -> Container:
        if self.runtime != "charliecloud":
            return self
        if not self.image.startswith("/"):
            raise ValueError(f"{self.image!r}: charliecloud runs an image folder: give its absolute path")
        apptainer_only = {"containall", "nv"} & self.model_fields_set
        if apptainer_only:
            raise ValueError(f"{', '.join(sorted(apptainer_only))} only apply to runtime: apptainer")
        read_only = [spec for spec in self.binds if spec.endswith(":ro")]
        if read_only:
            raise ValueError(
                f"{read_only[0]!r}: ch-run binds are read-write (it has no read-only bind); drop ':ro' "
                "and protect the folder by its permissions"
            )
        return self


class Lammps(_Strict):
    """A `container` (or its older Apptainer shorthand `image`, `binds`, `containall`, `nv`), or a `binary`;
    `modules` are loaded before either runs."""

    container: Container | None = None
    image: str | None = Field(None, description="shorthand for container: {runtime: apptainer, image: ...}")
    binds: list[Annotated[str, AfterValidator(_bind)]] = Field(default_factory=list, description="src[:dst[:ro|rw]]")
    containall: bool = True
    nv: bool = Field(False, description="expose NVIDIA GPUs inside the container")
    executable: str = Field("lmp", description="the LAMMPS executable inside the image")
    binary: str | None = Field(None, description="path (or name on PATH after the module loads) of lmp")
    modules: list[str] = Field(default_factory=list)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return value if value is None else _image_ref(value)

    @model_validator(mode="after")
    def _one_of(self) -> Lammps:
        c = self.container
        # a dumped config holds both forms (see below): the same image twice is one container
        flat_form = self.image is not None and not (c is not None and self._flat_matches(c))
        if sum((c is not None, flat_form, self.binary is not None)) != 1:
            raise ValueError("give exactly one of image (Apptainer) or binary, or a container: {runtime, image}")
        image_only = {"binds", "containall", "nv", "executable"} & self.model_fields_set
        if self.binary is not None and image_only:
            raise ValueError(f"{', '.join(sorted(image_only))} only apply to an image")
        if c is not None and not flat_form and image_only - {"executable"} and not self._flat_matches(c):
            raise ValueError(f"give {', '.join(sorted(image_only - {'executable'}))} under container:")
        # One form in, both forms out: `container` for the runtimes, the flat fields for older readers.
        if flat_form:
            self.container = Container(image=self.image, binds=self.binds, containall=self.containall, nv=self.nv)
        elif c is not None:
            self.image, self.binds, self.containall, self.nv = c.image, list(c.binds), c.containall, c.nv
        return self

    def _flat_matches(self, c: Container) -> bool:
        return (self.image, self.binds, self.containall, self.nv) == (c.image, c.binds, c.containall, c.nv)


class Vllm(_Strict):
    """How `mdagent llm serve` runs a vLLM server as a job here: from an Apptainer `image` (with `--nv` when it asks
    for GPUs), or, without an image, the site's own `command` after `modules` and `setup`."""

    image: str | None = Field(None, description="the vLLM image (containers/vllm.def): a .sif path or a URI")
    binds: list[Annotated[str, AfterValidator(_bind)]] = Field(default_factory=list, description="src[:dst[:ro|rw]]")
    nv: bool = Field(True, description="--nv: expose the NVIDIA GPUs to the container")
    command: str = Field("vllm serve", description="the server command, inside the image or on the node")
    args: list[str] = Field(default_factory=list, description="more `vllm serve` arguments (--max-model-len ...)")
    env: dict[str, str] = Field(default_factory=dict, description="environment of the server (HF_HOME, ...)")
    modules: list[str] = Field(default_factory=list)
    setup: list[str] = Field(default_factory=list, description="shell lines run before the server starts")
    gpus: int = Field(1, ge=0, description="GPUs per job (--gpus overrides); 0: CPU")
    cpus: int = Field(8, ge=1, description="cores for the job")
    memory_mb: int | None = Field(None, ge=1)
    hours: float = Field(12, gt=0, description="wall time (--hours overrides)")
    queue: str | None = Field(None, description="default: the site's queue")
    tunnel: bool | None = Field(None, description="an SSH tunnel through the login node; default: on ssh sites")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return value if value is None else _image_ref(value)

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if not shlex.split(value):
            raise ValueError("is empty")
        return value


class OnFailure(_Strict):
    """What to do when a job dies for a reason that is not the script's fault."""

    cancelled: Policy = "fail"
    walltime: Policy = "restart"
    node_failure: Policy = "resubmit"
    connection_lost: Policy = "resubmit"
    max_resubmits: int = Field(2, ge=0)


class Pilot(_Strict):
    """Parsl pilot jobs ("blocks") for the many short points of a sweep; partition, account, memory and poll
    interval come from the site, the cap on blocks from `sweep.max_concurrent_jobs`."""

    init_blocks: int = Field(1, ge=0, description="blocks submitted when the sweep starts")
    min_blocks: int = Field(1, ge=0, description="kept while points remain: a lost block is replaced")
    max_blocks: int = Field(1, ge=1, description="at most this many at once (and at most sweep.max_concurrent_jobs)")
    nodes_per_block: int = Field(1, ge=1)
    cores_per_node: int | None = Field(
        None, ge=1, description="cores a block asks per node; default: whole nodes (slurm), the resources' (pbspro)"
    )
    workers_per_node: int | None = Field(None, ge=1, description="points run at once per node; default: one per core")
    walltime: int | None = Field(None, ge=1, description="of a block, seconds or '[D-]HH:MM:SS'; default: resources")
    launcher: Literal["single", "srun", "mpiexec"] | None = Field(
        None,
        description="how a block starts its workers on its nodes; default: single (one node), srun (slurm), "
        "mpiexec (pbspro)",
    )
    worker_init: str = Field("", description="shell lines run in a block before its workers start")
    address: str | None = Field(None, description="where workers reach the driver; default: every address tried")
    lost_after: int = Field(120, ge=2, description="seconds without a heartbeat before a worker counts as lost")
    retries: int = Field(2, ge=0, description="runs of a point lost with its block, beyond the first")
    python: str | None = Field(
        None,
        description="Python on the login host with mdagent-hpc and parsl; "
        "default: this one (local transport) or python3",
    )

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, value: Any) -> Any:
        return Resources._seconds(value)

    @model_validator(mode="after")
    def _blocks(self) -> Pilot:
        if not self.min_blocks <= self.max_blocks or not self.init_blocks <= self.max_blocks:
            raise ValueError(
                f"init_blocks ({self.init_blocks}) and min_blocks ({self.min_blocks}) must not exceed "
                f"max_blocks ({self.max_blocks})"
            )
        return self


class SiteConfig(_Strict):
    name: str = Field(description="also the AiiDA computer label")
    description: str = ""
    scheduler: Scheduler
    transport: Transport = Field(default_factory=Transport)
    workdir: str | None = Field(
        None, validate_default=True, description="absolute, may use {username}; default (local): $MDAGENT_HOME/work"
    )
    queue: str | None = Field(
        None, validation_alias=AliasChoices("queue", "partition"), description="Slurm partition or PBS queue"
    )
    account: str | None = None
    qos: str | None = None
    resources: Resources = Field(default_factory=Resources)
    mpi_launcher: str = "mpirun -np {tot_num_mpiprocs}"
    lammps: Lammps = Field(default_factory=lambda: Lammps(binary="lmp"))
    potentials_dir: str | None = Field(None, description="site-wide potentials cache (absolute path on the site)")
    limits: SiteLimits = Field(default_factory=SiteLimits)
    poll_interval: float = Field(10.0, ge=0, description="seconds between two scheduler queries (AiiDA's minimum)")
    on_failure: OnFailure = Field(default_factory=OnFailure)
    vllm: Vllm | None = Field(None, description="how `mdagent llm serve` runs vLLM here (docs/llm.md)")
    sweep: SweepLimits = Field(default_factory=SweepLimits, description="what one parameter sweep may use")
    pilot: Pilot = Field(default_factory=Pilot, description="Parsl pilot jobs for sweeps (docs/sweeps.md)")

    @field_validator("pilot")
    @classmethod
    def _pilot_fits_the_site(cls, value: Pilot, info: ValidationInfo) -> Pilot:
        sweep, scheduler = info.data.get("sweep"), info.data.get("scheduler")
        if sweep is not None and value.max_blocks > sweep.max_concurrent_jobs:
            raise ValueError(
                f"max_blocks {value.max_blocks} is above sweep.max_concurrent_jobs "
                f"({sweep.max_concurrent_jobs}); lower it or raise the cap"
            )
        if value.launcher == "srun" and scheduler != "slurm":
            raise ValueError(f"launcher srun needs a slurm site, not {scheduler}")
        if scheduler == "direct" and value.nodes_per_block > 1:
            raise ValueError("a direct site has one node: nodes_per_block must be 1")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: use letters, digits, '.', '_' and '-'")
        return value

    @field_validator("transport", mode="before")
    @classmethod
    def _transport_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("queue", "account", "qos")
    @classmethod
    def _batch_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("scheduler") == "direct":
            raise ValueError("only applies to slurm and pbspro, not direct")
        return value

    @field_validator("qos")
    @classmethod
    def _no_qos_on_pbs(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("scheduler") == "pbspro":
            raise ValueError("PBS Pro has no QOS (AiiDA's core.pbspro would ignore it); use queue and account")
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            transport = info.data.get("transport")
            if transport is not None and transport.type == "ssh":
                raise ValueError("an ssh site needs a workdir")
            return value
        if not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path")
        _known_placeholders(value, ("username",))
        return value

    @field_validator("potentials_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path")
        if value is not None:
            _no_space_or_braces(value)  # it becomes an Apptainer bind
        return value

    @field_validator("mpi_launcher")
    @classmethod
    def _launcher(cls, value: str) -> str:
        words = shlex.split(value)
        if not words:
            raise ValueError("is empty")
        _known_placeholders(value, MPI_PLACEHOLDERS)
        return value


# ---------------------------------------------------------------- loading with line numbers


def load_site(path: str | Path) -> SiteConfig:
    """Read and validate a site config; raise `SiteConfigError` naming file, line and key for every problem."""
    try:
        return load_config(path, SiteConfig, "a site config")
    except ConfigFileError as exc:
        raise SiteConfigError(exc.problems) from None


def _known_placeholders(value: str, known: Sequence[str]) -> None:
    for name in re.findall(r"{([^}]*)}", value):
        if name not in known:
            raise ValueError(f"unknown placeholder {{{name}}}; known: {', '.join('{' + k + '}' for k in known)}")


def _no_space_or_braces(value: str) -> None:
    # AiiDA splits the engine command on whitespace and formats it with {image_name}.
    if re.search(r"[\s{}]", value):
        raise ValueError(f"{value!r} must not contain spaces or braces")


# ---------------------------------------------------------------- AiiDA and Apptainer


def aiida_computer_kwargs(site: SiteConfig) -> dict[str, Any]:
    """Arguments of `orm.Computer(...)`; the scheduler defaults go in `metadata`, as Computer's setters store them."""
    metadata: dict[str, Any] = {
        "shebang": "#!/bin/bash",
        "mpirun_command": shlex.split(site.mpi_launcher),
        "default_mpiprocs_per_machine": site.resources.mpi_ranks_per_node,
    }
    if site.resources.memory_mb:
        metadata["default_memory_per_machine"] = site.resources.memory_mb * 1024
    if site.lammps.image:
        metadata["use_double_quotes"] = True  # so that $PWD in the engine command expands in the job script
    return {
        "label": site.name,
        "description": site.description,
        "hostname": site.transport.host if site.transport.type == "ssh" else "localhost",
        "transport_type": f"core.{site.transport.type}",
        "scheduler_type": AIIDA_SCHEDULERS[site.scheduler],
        "workdir": site.workdir or str(mdagent_home() / "work"),  # as execution/profile.py's `local`
        "metadata": metadata,
    }


def aiida_configure_kwargs(site: SiteConfig) -> dict[str, Any]:
    """Arguments of `computer.configure(...)` (the auth params of core.local or core.ssh)."""
    t = site.transport
    kwargs: dict[str, Any] = {"use_login_shell": t.use_login_shell}
    if t.safe_interval is not None:
        kwargs["safe_interval"] = t.safe_interval
    if t.type == "ssh":
        kwargs |= {"port": t.port, "key_policy": t.key_policy, "look_for_keys": t.key_filename is None}
        if t.user:
            kwargs["username"] = t.user
        if t.key_filename:
            kwargs["key_filename"] = str(Path(t.key_filename).expanduser())
        if t.proxy_jump:
            kwargs["proxy_jump"] = t.proxy_jump
    return kwargs


def aiida_code_type(site: SiteConfig) -> str:
    """The AiiDA data entry point of the LAMMPS code: `core.code.containerized` or `core.code.installed`."""
    return "core.code.containerized" if site.lammps.image else "core.code.installed"


def aiida_code_kwargs(site: SiteConfig, label: str = "lammps") -> dict[str, Any]:
    """Arguments of `orm.ContainerizedCode(...)` (image) or `orm.InstalledCode(...)` (binary)."""
    lmp = site.lammps
    kwargs: dict[str, Any] = {
        "label": label,
        "description": f"LAMMPS on {site.name}",
        "computer": site.name,
        "default_calc_job_plugin": "mdagent.lammps",
        "prepend_text": "\n".join(f"module load {m}" for m in lmp.modules),
    }
    if site.potentials_dir:
        kwargs["prepend_text"] += f"\nexport LAMMPS_POTENTIALS={shlex.quote(site.potentials_dir)}"
        kwargs["prepend_text"] = kwargs["prepend_text"].lstrip("\n")
    if lmp.container:
        engine = container_prefix(site, image="{image_name}", workdir="$PWD")
        kwargs |= {
            "filepath_executable": lmp.executable,
            "image_name": lmp.container.image,
            "engine_command": " ".join(engine),
        }
        if lmp.container.runtime == "charliecloud":
            kwargs["prepend_text"] = (kwargs["prepend_text"] + '\nexport USER="${USER:-$(id -un)}"').lstrip("\n")
    else:
        kwargs["filepath_executable"] = lmp.binary
    return kwargs


def aiida_calcjob_options(site: SiteConfig) -> dict[str, Any]:
    """The site's defaults as `metadata.options` of a CalcJob."""
    r = site.resources
    options: dict[str, Any] = {
        "resources": {
            "num_machines": r.nodes,
            "num_mpiprocs_per_machine": r.mpi_ranks_per_node,
            "num_cores_per_mpiproc": r.threads_per_rank,
        },
        "max_wallclock_seconds": r.walltime,
        "withmpi": r.nodes * r.mpi_ranks_per_node > 1,
    }
    if site.scheduler == "direct":
        options["resources"] = {"num_machines": 1, "num_mpiprocs_per_machine": r.mpi_ranks_per_node}
    if r.memory_mb:
        options["max_memory_kb"] = r.memory_mb * 1024
    for key, value in (("queue_name", site.queue), ("account", site.account), ("qos", site.qos)):
        if value:
            options[key] = value
    if r.gpus_per_node and site.scheduler == "slurm":
        options["custom_scheduler_commands"] = f"#SBATCH --gpus-per-node={r.gpus_per_node}"
    elif r.gpus_per_node and site.scheduler == "pbspro":
        # core.pbspro writes its own `-l select=` line and offers no way to add ngpus to it.
        raise ValueError(f"site {site.name}: AiiDA's core.pbspro cannot request GPUs (gpus_per_node)")
    return options


def container_launch(site: SiteConfig, image: str | None = None, workdir: str | None = None) -> Launch:
    """What the site's LAMMPS container gets: its binds, `workdir` as the working folder, the potentials folder."""
    c = site.lammps.container
    if c is None:
        raise ValueError(f"site {site.name} runs a LAMMPS binary, not a container image")
    return Launch(
        image=image or c.image,
        binds=tuple(c.binds),
        workdir=workdir,
        potentials_dir=site.potentials_dir,
        env={"OMP_NUM_THREADS": str(site.resources.threads_per_rank)},
        clean_env=c.containall,
        gpus=c.nv,
    )


def container_prefix(site: SiteConfig, image: str | None = None, workdir: str | None = None) -> list[str]:
    """The words before the LAMMPS executable, from the site's container runtime (execution/containers)."""
    launch = container_launch(site, image, workdir)
    return runtime(site.lammps.container.runtime).prefix(launch)  # type: ignore[union-attr]


def container_command(site: SiteConfig, args: Sequence[str] = (), workdir: str | None = None) -> list[str]:
    """The command that runs the image's LAMMPS on `args`; `workdir` (a host folder) is bound and made the working
    folder (needed: --containall and ch-run mount no host folders of their own)."""
    return [*container_prefix(site, workdir=workdir), site.lammps.executable, *args]


def apptainer_command(site: SiteConfig, args: Sequence[str] = (), workdir: str | None = None) -> list[str]:
    """`apptainer exec [--containall] [--nv] [--bind src[:dst[:ro]]]... IMAGE lmp ARGS` for this site's image."""
    if not site.lammps.container or site.lammps.container.runtime != "apptainer":
        raise ValueError(f"site {site.name} runs a LAMMPS binary, not an Apptainer image")
    return container_command(site, args, workdir)
