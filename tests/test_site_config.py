"""Site configs: the examples load, every error points at its file and line, the AiiDA arguments fit AiiDA."""

import inspect
from pathlib import Path

import pytest

from mdagent_hpc.execution.site import (
    SiteConfig,
    SiteConfigError,
    aiida_calcjob_options,
    aiida_code_kwargs,
    aiida_code_type,
    aiida_computer_kwargs,
    aiida_configure_kwargs,
    apptainer_command,
    load_site,
)
from mdagent_hpc.models import Limits

SITE_CONFIGS = Path(__file__).resolve().parents[1] / "site_configs"
EXAMPLES = sorted(SITE_CONFIGS.glob("*.yaml"))
MINIMAL = "name: x\nscheduler: slurm\n"


@pytest.fixture(scope="module")
def aiida():
    """AiiDA's classes, imported with AIIDA_PATH under the test's MDAGENT_HOME (no profile is loaded)."""
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()
    from aiida import orm, plugins

    return orm, plugins


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(SiteConfigError) as info:
        load_site(path)
    prefix = f"{path}:"
    assert all(p.startswith(prefix) for p in info.value.problems), info.value.problems
    return [p.removeprefix(prefix) for p in info.value.problems]


def site(text: str, tmp_path: Path) -> SiteConfig:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return load_site(path)


# ---------------------------------------------------------------- examples and values


def test_examples_exist():
    assert {p.stem for p in EXAMPLES} >= {"local", "slurm-local", "slurm-ssh", "pbs-gpu"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    loaded = load_site(path)
    assert loaded.name == path.stem


def test_example_details():
    ssh = load_site(SITE_CONFIGS / "slurm-ssh.yaml")
    assert (ssh.transport.type, ssh.transport.host, ssh.transport.port) == ("ssh", "127.0.0.1", 2222)
    gpu = load_site(SITE_CONFIGS / "pbs-gpu.yaml")
    assert gpu.scheduler == "pbspro" and gpu.lammps.nv and gpu.lammps.image.startswith("oras://")
    assert gpu.resources.walltime == 12 * 3600
    assert isinstance(gpu.limits, Limits) and gpu.limits.max_walltime_s == 43200


def test_defaults(tmp_path):
    s = site(MINIMAL, tmp_path)
    assert s.transport.type == "local" and s.lammps.binary == "lmp" and s.lammps.image is None
    assert s.on_failure.model_dump() == {
        "cancelled": "fail",
        "walltime": "restart",
        "node_failure": "resubmit",
        "connection_lost": "resubmit",
        "max_resubmits": 2,
    }
    assert s.limits.model_dump() == Limits().model_dump()


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("5400", 5400), ('"01:30:00"', 5400), ("1:30:00", 5400), ('"2-00:00:30"', 172830), ('"90"', 90)],
)
def test_walltime(tmp_path, given, seconds):
    assert site(MINIMAL + f"resources:\n  walltime: {given}\n", tmp_path).resources.walltime == seconds


# ---------------------------------------------------------------- errors, each at its line


def test_unknown_scheduler(tmp_path):
    assert errors_of(tmp_path, "name: x\nscheduler: slrum\n") == [
        "2: scheduler: 'slrum' is not one of direct, slurm, pbspro"
    ]


def test_unknown_nested_key_names_the_allowed_ones(tmp_path):
    [error] = errors_of(tmp_path, MINIMAL + "resources:\n  nodes: 2\n  walltme: 60\n")
    assert error.startswith("5: resources.walltme: unknown key (did you mean walltime?); allowed: nodes, ")
    assert "memory_mb" in error


def test_unknown_top_key(tmp_path):
    [error] = errors_of(tmp_path, MINIMAL + "queu: debug\n")
    assert error.startswith("3: queu: unknown key (did you mean queue?); allowed: name, description, scheduler, ")


def test_partition_is_queue(tmp_path):
    assert site(MINIMAL + "partition: debug\n", tmp_path).queue == "debug"
    assert errors_of(tmp_path, MINIMAL + "queue: a\npartition: b\n") == [
        "4: partition: given twice, as partition and under another name; keep one"
    ]


def test_missing_required_key(tmp_path):
    assert errors_of(tmp_path, "# a site\nname: x\n") == ["2: scheduler: required key is missing"]


def test_nested_enum(tmp_path):
    text = MINIMAL + "on_failure:\n  walltime: restart\n  node_failure: retry\n"
    assert errors_of(tmp_path, text) == ["5: on_failure.node_failure: 'retry' is not one of resubmit, restart, fail"]


def test_several_problems_one_line_each_in_order(tmp_path):
    text = "name: x\nscheduler: slurm\nresources:\n  nodes: two\n  gpus: 1\nlimits:\n  max_atoms: lots\n"
    errors = errors_of(tmp_path, text)
    assert [e.split(":")[0] for e in errors] == ["4", "5", "7"]
    assert errors[0].startswith("4: resources.nodes: input should be a valid integer") and "'two'" in errors[0]
    assert errors[1].startswith("5: resources.gpus: unknown key (did you mean gpus_per_node?)")


def test_ssh_needs_host_and_workdir(tmp_path):
    assert errors_of(tmp_path, MINIMAL + "transport:\n  type: ssh\n  user: me\n") == [
        "3: transport: type: ssh needs a host"
    ]
    assert errors_of(tmp_path, MINIMAL + "transport:\n  type: ssh\n  host: h\n") == [
        "1: workdir: an ssh site needs a workdir"
    ]


def test_ssh_fields_on_local(tmp_path):
    assert errors_of(tmp_path, MINIMAL + "transport:\n  host: h\n") == ["3: transport: host only apply to type: ssh"]


def test_transport_shorthand(tmp_path):
    assert site(MINIMAL + "transport: local\n", tmp_path).transport.type == "local"
    assert errors_of(tmp_path, MINIMAL + "transport: sssh\n") == ["3: transport.type: 'sssh' is not one of local, ssh"]


def test_key_content_is_refused(tmp_path):
    key = "  key_filename: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n"
    text = MINIMAL + "workdir: /w\ntransport:\n  type: ssh\n  host: h\n" + key
    assert errors_of(tmp_path, text) == ["7: transport.key_filename: give the path of the key file, not the key itself"]


def test_batch_options_on_direct(tmp_path):
    assert errors_of(tmp_path, "name: x\nscheduler: direct\naccount: a1\n") == [
        "3: account: only applies to slurm and pbspro, not direct"
    ]


@pytest.mark.parametrize(
    ("lammps", "line", "message"),
    [
        ("  binary: lmp\n  image: /i.sif\n", 3, "lammps: give exactly one of image (Apptainer) or binary"),
        ("  image: lammps.sif\n", 4, "lammps.image: 'lammps.sif' is neither an absolute path nor an oras://"),
        (
            "  image: /i.sif\n  binds:\n    - /a\n    - /b:/c:rx\n",
            7,
            "lammps.binds[1]: '/b:/c:rx' is not src[:dst[:ro|rw]]",
        ),
        ("  binary: /bin/lmp\n  nv: true\n", 3, "lammps: nv only apply to an image"),
    ],
)
def test_lammps_errors(tmp_path, lammps, line, message):
    [error] = errors_of(tmp_path, MINIMAL + "lammps:\n" + lammps)
    assert error.startswith(f"{line}: {message}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("workdir: scratch/me\n", "3: workdir: 'scratch/me' is not an absolute path"),
        ("workdir: /s/{user}\n", "3: workdir: unknown placeholder {user}; known: {username}"),
        (
            "mpi_launcher: mpirun -n {ranks}\n",
            "3: mpi_launcher: unknown placeholder {ranks}; known: {tot_num_mpiprocs}",
        ),
        ("resources:\n  walltime: 1h\n", "4: resources.walltime: '1h' is neither seconds nor [D-]HH:MM:SS"),
        ("name: y\n", "3: name: duplicate key (first at line 1)"),
        ("limits:\n  max_steps: 10\n  max_cpus: 1\n", "5: limits.max_cpus: unknown key; allowed: max_atoms, max_steps"),
        ("resources: 4\n", "3: resources: expected a mapping of keys, got 4"),
    ],
)
def test_field_errors(tmp_path, text, expected):
    [error] = errors_of(tmp_path, MINIMAL + text)
    assert error.startswith(expected)


def test_yaml_syntax_error(tmp_path):
    [error] = errors_of(tmp_path, "name: x\nscheduler: slurm\nresources:\n  nodes: [1, 2\n")
    assert error.startswith("5: YAML syntax error:")
    [error] = errors_of(tmp_path, "name: x\nscheduler: slurm: direct\n")
    assert error.startswith("2: YAML syntax error: mapping values are not allowed here")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path, text):
    assert errors_of(tmp_path, text) == ["1: the file is empty; a site config needs at least name and scheduler"]


def test_top_level_not_a_mapping(tmp_path):
    assert errors_of(tmp_path, "# sites\n- name: x\n") == ["2: expected a mapping of keys at the top, got a list"]
    assert errors_of(tmp_path, "slurm\n") == ["1: expected a mapping of keys at the top, got str 'slurm'"]


def test_missing_file(tmp_path):
    with pytest.raises(SiteConfigError, match=r"nope\.yaml: no such file$"):
        load_site(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- AiiDA arguments


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_computer_kwargs_fit_aiida(aiida, path):
    orm, plugins = aiida
    s = load_site(path)
    kwargs = aiida_computer_kwargs(s)
    assert set(kwargs) <= set(inspect.signature(orm.Computer.__init__).parameters)
    for key in kwargs["metadata"]:  # Computer's setters store these properties in its metadata
        assert hasattr(orm.Computer, f"set_{key}"), key
    assert kwargs["workdir"].startswith("/")
    plugins.TransportFactory(kwargs["transport_type"])
    scheduler = plugins.SchedulerFactory(kwargs["scheduler_type"])
    fields = {key: 1 for key in scheduler.job_resource_class.get_valid_keys()}
    for arg in kwargs["metadata"]["mpirun_command"]:  # as Computer._mpirun_command_validator does
        arg.format(**fields)

    transport = plugins.TransportFactory(kwargs["transport_type"])
    assert set(aiida_configure_kwargs(s)) <= set(transport.get_valid_auth_params())


def test_configure_kwargs_ssh():
    s = load_site(SITE_CONFIGS / "slurm-ssh.yaml")
    assert aiida_configure_kwargs(s) == {
        "username": "root",
        "port": 2222,
        "key_filename": "/tmp/mdagent-sshd/client_key",
        "key_policy": "AutoAddPolicy",
        "look_for_keys": False,
        "use_login_shell": False,
        "safe_interval": 0.0,
    }
    gpu = aiida_configure_kwargs(load_site(SITE_CONFIGS / "pbs-gpu.yaml"))
    assert gpu["proxy_jump"] == "jdoe@bastion.example.org"
    assert gpu["key_filename"] == str(Path("~/.ssh/id_ed25519").expanduser())


def _init_params(cls) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= set(inspect.signature(klass.__init__).parameters)
    # Node passes the rest to its storage backend, whose nodes take a label and a description.
    return names - {"self", "args", "kwargs"} | {"label", "description"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_code_kwargs_fit_aiida(aiida, path):
    orm, plugins = aiida
    s = load_site(path)
    kwargs = aiida_code_kwargs(s)
    cls = plugins.DataFactory(aiida_code_type(s))
    assert cls is (orm.ContainerizedCode if s.lammps.image else orm.InstalledCode)
    assert set(kwargs) <= _init_params(cls)
    assert kwargs["computer"] == s.name


def test_containerized_code_runs_the_apptainer_command(aiida):
    orm, _ = aiida
    s = load_site(SITE_CONFIGS / "pbs-gpu.yaml")
    kwargs = aiida_code_kwargs(s)
    assert "{image_name}" in kwargs["engine_command"]
    assert kwargs["prepend_text"].splitlines() == [
        "module load apptainer/1.3",
        "module load openmpi/4.1",
        "export LAMMPS_POTENTIALS=/apps/mdagent/potentials",
    ]
    # What ContainerizedCode.get_prepend_cmdline_params puts before the executable, with $PWD as the run folder
    words = kwargs["engine_command"].format(image_name=kwargs["image_name"]).split()
    assert words + [kwargs["filepath_executable"]] == apptainer_command(s, workdir="$PWD")
    assert aiida_computer_kwargs(s)["metadata"]["use_double_quotes"] is True  # so that "$PWD" expands


def test_installed_code_kwargs(tmp_path):
    s = site(MINIMAL + "lammps:\n  binary: /opt/lammps/bin/lmp\n  modules: [gcc/13, lammps/2025]\n", tmp_path)
    kwargs = aiida_code_kwargs(s)
    assert kwargs["filepath_executable"] == "/opt/lammps/bin/lmp"
    assert kwargs["prepend_text"] == "module load gcc/13\nmodule load lammps/2025"
    assert "image_name" not in kwargs and aiida_code_type(s) == "core.code.installed"


def test_calcjob_options():
    options = aiida_calcjob_options(load_site(SITE_CONFIGS / "slurm-local.yaml"))
    assert options == {
        "resources": {"num_machines": 1, "num_mpiprocs_per_machine": 1, "num_cores_per_mpiproc": 1},
        "max_wallclock_seconds": 600,
        "max_memory_kb": 1000 * 1024,
        "queue_name": "debug",
        "withmpi": False,
    }
    two = aiida_calcjob_options(
        load_site(SITE_CONFIGS / "pbs-gpu.yaml").model_copy(
            update={
                "resources": load_site(SITE_CONFIGS / "slurm-local.yaml").resources.model_copy(
                    update={"mpi_ranks_per_node": 2}
                )
            }
        )
    )
    assert two["withmpi"] is True and two["resources"]["num_mpiprocs_per_machine"] == 2
    local = aiida_calcjob_options(load_site(SITE_CONFIGS / "local.yaml"))
    assert local["resources"] == {"num_machines": 1, "num_mpiprocs_per_machine": 1}


def test_pbs_has_no_qos(tmp_path):
    with pytest.raises(SiteConfigError, match="qos: PBS Pro has no QOS"):
        site("name: p\nscheduler: pbspro\nqos: high\n", tmp_path)


def test_calcjob_gpus(tmp_path):
    s = site(MINIMAL + "resources:\n  gpus_per_node: 2\n", tmp_path)
    assert aiida_calcjob_options(s)["custom_scheduler_commands"] == "#SBATCH --gpus-per-node=2"
    # A known gap: AiiDA's core.pbspro writes the `select` line itself, without ngpus.
    with pytest.raises(ValueError, match="cannot request GPUs"):
        aiida_calcjob_options(load_site(SITE_CONFIGS / "pbs-gpu.yaml"))


# ---------------------------------------------------------------- Apptainer


def test_apptainer_command_documented_flags(tmp_path):
    # apptainer exec [--containall] [--nv] [--bind src[:dest[:opts]]] IMAGE COMMAND ARGS (apptainer-exec(1))
    s = site(
        MINIMAL + "lammps:\n  image: docker://lammps/lammps:latest\n  binds: [/data:/data:ro, /scratch]\n", tmp_path
    )
    assert apptainer_command(s, ["-in", "in.lj"]) == [
        "apptainer", "exec", "--containall", "--net", "--network", "none",
        "--bind", "/data:/data:ro", "--bind", "/scratch", "--env", "OMP_NUM_THREADS=1",
        "docker://lammps/lammps:latest", "lmp", "-in", "in.lj",
    ]  # fmt: skip


def test_apptainer_command_gpu_workdir_and_potentials(tmp_path):
    text = "lammps:\n  image: /images/lmp.sif\n  nv: true\n  containall: false\n  executable: lmp_kokkos\n"
    s = site(MINIMAL + "potentials_dir: /pot\n" + text, tmp_path)
    assert apptainer_command(s, workdir="/run/1") == [
        "apptainer", "exec", "--net", "--network", "none", "--nv",
        "--bind", "/run/1", "--bind", "/pot:/pot:ro", "--pwd", "/run/1", "/images/lmp.sif", "lmp_kokkos",
    ]  # fmt: skip


def test_apptainer_command_needs_an_image(tmp_path):
    with pytest.raises(ValueError, match="binary, not an Apptainer image"):
        apptainer_command(site(MINIMAL, tmp_path))
