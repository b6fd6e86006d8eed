"""PBS Pro through AiiDA's core.pbspro, checked against PBS's documented formats (no PBS server can run here).

The references are the PBS Professional man pages as published with OpenPBS (github.com/openpbs/openpbs, doc/man1):
qsub(1B), qstat(1B), qdel(1B), pbs_resources(7B), pbs_job_attributes(7B). Where a man page says only "Format: Size"
or "Format: Duration", the syntax is taken from the OpenPBS functions that decode them (to_size, decode_time), and
the directive scanning from qsub's (pbs_ispbsdir, pbs_isexecutable, getopt string GETOPT_ARGS).

Part 1 builds the JobTemplate the way `CalcJob.presubmit` (aiida-core 2.9.4) does from `aiida_calcjob_options(site)`,
the computer's defaults and the LAMMPS code, renders it with `PbsproScheduler.get_submit_script`, and validates every
`#PBS` line. Part 2 feeds `qstat -f` text, laid out as OpenPBS's qstat prints it, to the status parser, and checks
the qsub/qdel command lines and the parsing of their output. Tests marked "gap" pin AiiDA behaviour that differs from
the PBS documentation; docs/limits.md lists them.
"""

from __future__ import annotations

import datetime
import getopt
import logging
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from mdagent_hpc.execution.site import (
    SiteConfig,
    SiteConfigError,
    aiida_calcjob_options,
    aiida_code_kwargs,
    aiida_computer_kwargs,
    load_site,
)

SITE_CONFIGS = Path(__file__).resolve().parents[1] / "site_configs"

FULL = """\
name: pbs-cpu
scheduler: pbspro
transport:
  type: ssh
  host: login.cpu-cluster.example.org
workdir: /scratch/{username}/mdagent
queue: workq
account: proj-md-1234
resources:
  nodes: 2
  mpi_ranks_per_node: 4
  threads_per_rank: 2
  memory_mb: 4000
  walltime: "12:00:00"
lammps:
  binary: /apps/lammps/2025.07/bin/lmp
  modules: [lammps/2025.07]
"""
MINIMAL = "name: pbs-min\nscheduler: pbspro\n"


@pytest.fixture(scope="module")
def aiida():
    """AiiDA's PBS Pro plugin and datastructures, imported under the test's MDAGENT_HOME (no profile is loaded)."""
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()
    from aiida.common.datastructures import CodeRunMode
    from aiida.schedulers import SchedulerError
    from aiida.schedulers.datastructures import JobState, JobTemplate, JobTemplateCodeInfo
    from aiida.schedulers.plugins.pbspro import PbsproScheduler

    from mdagent_hpc.workflows import lammps_calc

    return SimpleNamespace(
        PbsproScheduler=PbsproScheduler,
        JobTemplate=JobTemplate,
        JobTemplateCodeInfo=JobTemplateCodeInfo,
        JobState=JobState,
        CodeRunMode=CodeRunMode,
        SchedulerError=SchedulerError,
        lammps_calc=lammps_calc,
    )


def site_from(text: str, tmp_path: Path) -> SiteConfig:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return load_site(path)


# ================================================================ part 1: the submission script


def job_template(aiida, site: SiteConfig, options: dict | None = None, pk: int = 1234):
    """The JobTemplate that `CalcJob.presubmit` builds for a LammpsCalculation on this site.

    Mirrors aiida/engine/processes/calcjobs/calcjob.py (2.9.4) step by step: the options are the CalcJob's port
    defaults overlaid with `metadata.options` (here `aiida_calcjob_options(site)`), the computer contributes the
    shebang, default mpiprocs, default memory and mpirun command, the code its prepend text and executable.
    """
    ports = aiida.lammps_calc.LammpsCalculation.spec().inputs["metadata"]["options"]
    opts = {
        name: port.default() if callable(port.default) else port.default
        for name, port in ports.items()
        if getattr(port, "has_default", lambda: False)()
    }
    opts |= aiida_calcjob_options(site) if options is None else options
    metadata = aiida_computer_kwargs(site)["metadata"]
    code = aiida_code_kwargs(site)
    scheduler = aiida.PbsproScheduler()

    tmpl = aiida.JobTemplate()
    tmpl.submit_as_hold = False
    tmpl.rerunnable = opts.get("rerunnable", False)
    tmpl.job_name = f"aiida-{pk}"
    tmpl.sched_output_path = opts["scheduler_stdout"]
    tmpl.shebang = metadata["shebang"]
    if opts["scheduler_stderr"] == opts["scheduler_stdout"]:
        tmpl.sched_join_files = True
    else:
        tmpl.sched_error_path = opts["scheduler_stderr"]
        tmpl.sched_join_files = False
    # computer prepend text (none), code prepend text, calcinfo prepend text (none), the prepend_text option
    tmpl.prepend_text = "\n\n".join(t for t in (code["prepend_text"], opts.get("prepend_text")) if t)
    tmpl.append_text = "\n\n".join(t for t in (opts.get("append_text"),) if t)

    resources = dict(opts["resources"])
    scheduler.preprocess_resources(resources, metadata["default_mpiprocs_per_machine"])
    tmpl.job_resource = scheduler.create_job_resource(**resources)
    subst = {"tot_num_mpiprocs": tmpl.job_resource.get_tot_num_mpiprocs(), **tmpl.job_resource}
    mpi_args = [arg.format(**subst) for arg in metadata["mpirun_command"]]

    # LammpsCalculation sets no codeinfo.withmpi and the code no with_mpi: the option decides.
    prepend_cmdline = (mpi_args + list(opts["mpirun_extra_params"])) if opts["withmpi"] else []
    if "engine_command" in code:  # ContainerizedCode.get_prepend_cmdline_params
        prepend_cmdline += code["engine_command"].format(image_name=code["image_name"]).split()
    lc = aiida.lammps_calc
    tmpl.codes_info = [
        aiida.JobTemplateCodeInfo(
            prepend_cmdline_params=prepend_cmdline,
            cmdline_params=[code["filepath_executable"], "-in", lc.INPUT, "-log", lc.LOG, "-nocite"],
            use_double_quotes=[metadata.get("use_double_quotes", False), False],
            wrap_cmdline_params=False,
            stdout_name=lc.STDOUT,
        )
    ]
    tmpl.codes_run_mode = aiida.CodeRunMode.SERIAL
    if opts.get("custom_scheduler_commands"):
        tmpl.custom_scheduler_commands = opts["custom_scheduler_commands"]
    tmpl.import_sys_environment = opts["import_sys_environment"]
    tmpl.job_environment = opts["environment_variables"]
    tmpl.environment_variables_double_quotes = opts["environment_variables_double_quotes"]
    for key in ("queue_name", "account", "qos", "priority"):
        if opts.get(key) is not None:
            tmpl[key] = opts[key]
    tmpl.max_memory_kb = opts.get("max_memory_kb") or metadata.get("default_memory_per_machine")
    if opts.get("max_wallclock_seconds") is not None:
        tmpl.max_wallclock_seconds = opts["max_wallclock_seconds"]
    return tmpl


def submit_script(aiida, site: SiteConfig, **kwargs) -> str:
    return aiida.PbsproScheduler().get_submit_script(job_template(aiida, site, **kwargs))


# ---------------------------------------------------------------- a validator for PBS Pro job scripts

# qsub(1B) SYNOPSIS; the same letters as OpenPBS's getopt string (src/cmds/qsub_sup.c GETOPT_ARGS, Linux build).
QSUB_GETOPT = "a:A:c:C:e:fhIj:J:k:l:m:M:N:o:p:q:r:R:S:u:v:VW:XzP:"
# pbs_job_attributes(7B) Job_Name: "first character must be alphabetic or numeric"; the other characters and the
# length are OpenPBS's check_job_name (alphanumerics and - _ + .) with PBS_MAXJOBNAME = 230 (the man page says 236).
JOB_NAME = r"[A-Za-z0-9][A-Za-z0-9_+.-]{0,229}"
# Queue names: OpenPBS pbs_verify_object_name (an alphanumeric, then alphanumerics, _ or -; PBS_MAXQUEUENAME = 15).
QUEUE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,14}"
HOST = r"[A-Za-z0-9][A-Za-z0-9.-]*"
# Duration: [[hours:]minutes:]seconds[.milliseconds] (OpenPBS decode_time); hours are unbounded.
DURATION = r"(?:(?:\d+:)?\d+:)?\d+(?:\.\d+)?"
# Size: an integer with an optional k/m/g/t/p multiplier (powers of 1024) and an optional b (bytes) or w (words)
# unit, case-insensitive (OpenPBS to_size).
SIZE = r"\d+(?:[kmgtpKMGTP][bwBW]?|[bwBW])?"
INTEGER = r"\d+"
OPTION_SYNTAX = {
    "-N": JOB_NAME,
    "-q": rf"{QUEUE}(?:@{HOST})?|@{HOST}",  # qsub(1B) -q: queue, @server or queue@server
    "-A": r".+",  # pbs_job_attributes(7B) Account_Name: "String; can contain any character"
    "-o": r"(?:[^\s:/]+:)?[^\s:]+",  # [<hostname>:]<path>
    "-e": r"(?:[^\s:/]+:)?[^\s:]+",
    "-j": r"oe|eo|n",
    "-m": r"n|j?[abe]{1,3}",  # "n | [j](one or more of a, b, e)"
    "-r": r"[yn]",
    "-p": r"[-+]?\d{1,4}",  # range checked below
    "-W": r"[A-Za-z_]+=.+",
}
# pbs_resources(7B): resources "requested only inside of a select statement" (host-level) and only outside.
CHUNK_RESOURCES = {
    "ncpus": INTEGER,
    "mpiprocs": INTEGER,
    "ompthreads": INTEGER,
    "mem": SIZE,
    "vmem": SIZE,
    "naccelerators": INTEGER,
    "accelerator_memory": SIZE,
    "host": r"[^:+,\s]+",
    "vnode": r"[^:+,\s]+",
    "arch": r"[^:+,\s]+",
}
JOB_WIDE_RESOURCES = {
    "walltime": DURATION,
    "cput": DURATION,
    "pcput": DURATION,
    "min_walltime": DURATION,
    "max_walltime": DURATION,
    "pmem": SIZE,
    "pvmem": SIZE,
    "nice": r"-?\d+",
    "software": r".+",
    "site": r".+",
    "select": None,
    "place": None,  # parsed below
}
PLACE_WORDS = {"arrangement": {"free", "pack", "scatter", "vscatter"}, "sharing": {"excl", "shared", "exclhost"}}


class PbsScriptError(AssertionError):
    pass


@dataclass
class Directives:
    """What qsub reads from a job script's `#PBS` lines."""

    options: list[tuple[str, str]] = field(default_factory=list)  # in order, e.g. ("-N", "aiida-1"), ("-V", "")
    resources: dict[str, str] = field(default_factory=dict)  # the job-wide `-l` requests, select and place included
    chunks: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # the select statement: (N, chunk)
    first_executable: str | None = None

    def get(self, option: str) -> str | None:
        values = [v for o, v in self.options if o == option]
        if len(values) > 1 and option != "-l":
            raise PbsScriptError(f"{option} given {len(values)} times")
        return values[0] if values else None

    @property
    def option_names(self) -> set[str]:
        return {o for o, _ in self.options}


def parse_pbs_script(script: str) -> Directives:
    """Read a job script the way qsub does, and check each directive against the documented syntax.

    qsub takes `#PBS` lines (leading white space allowed) until the first executable line: one that is not empty,
    does not start with '#' after white space, and does not start with ':' or '#!' (pbs_isexecutable); directives
    after it are silently ignored, so finding one is an error here. Scripts with CR LF line ends are refused.
    """
    if "\r" in script:
        raise PbsScriptError("qsub: script contains cr, lf")
    found = Directives()
    for number, line in enumerate(script.split("\n"), start=1):
        stripped = line.lstrip()
        if stripped.startswith("#PBS"):
            if found.first_executable is not None:
                raise PbsScriptError(
                    f"line {number}: {line!r} comes after the first executable line "
                    f"{found.first_executable!r}; qsub ignores it"
                )
            _directive(stripped[len("#PBS") :], found, number)
        elif (
            found.first_executable is None
            and stripped
            and not stripped.startswith("#")
            and not line.startswith((":", "#!"))
        ):
            found.first_executable = line
    _check_resources(found)
    return found


def _directive(text: str, found: Directives, number: int) -> None:
    try:
        words = shlex.split(text)  # qsub's make_argv: white space separates, quotes and backslash escape
        options, operands = getopt.getopt(words, QSUB_GETOPT)
    except (ValueError, getopt.GetoptError) as exc:
        raise PbsScriptError(f"line {number}: {text.strip()!r}: {exc}") from None
    if not words or operands:
        raise PbsScriptError(f"line {number}: {text.strip()!r} is not a qsub option")
    for option, value in options:
        syntax = OPTION_SYNTAX.get(option)
        if syntax is not None and not re.fullmatch(syntax, value):
            raise PbsScriptError(f"line {number}: {option} {value!r} does not match {syntax}")
        if option == "-p" and not -1024 <= int(value) <= 1023:
            raise PbsScriptError(f"line {number}: -p {value} is outside [-1024, +1023]")
        if option == "-l":
            _resource_list(value, found, number)
        found.options.append((option, value))


def _resource_list(value: str, found: Directives, number: int) -> None:
    """`-l <resource name>=<value>[,<resource name>=<value> ...]`; a select statement is one such value."""
    for item in value.split(","):
        name, sep, val = item.partition("=")
        if not sep or not val or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise PbsScriptError(f"line {number}: -l {value!r}: {item!r} is not <resource name>=<value>")
        if name in found.resources:
            raise PbsScriptError(f"line {number}: -l {name} requested twice")
        if name in CHUNK_RESOURCES or name in ("nodes",):
            # old-style -lncpus= / -lmem= / -lnodes= next to select is an error (pbs_resources(7B), Old Syntax)
            raise PbsScriptError(f"line {number}: {name} can only be requested inside a select statement")
        if name not in JOB_WIDE_RESOURCES:
            raise PbsScriptError(f"line {number}: {name} is not a built-in job-wide resource")
        syntax = JOB_WIDE_RESOURCES[name]
        if syntax is not None and not re.fullmatch(syntax, val):
            raise PbsScriptError(f"line {number}: {name}={val!r} does not match {syntax}")
        if name == "select":
            found.chunks = _select(val, number)
        if name == "place":
            _place(val, number)
        found.resources[name] = val


def _select(value: str, number: int) -> list[tuple[int, dict[str, str]]]:
    """`select=[<N>:]<chunk>[+[<N>:]<chunk> ...]`, a chunk being `<resource>=<value>[:<resource>=<value> ...]`."""
    chunks = []
    for part in value.split("+"):
        words = part.split(":")
        count = int(words.pop(0)) if words and words[0].isdigit() else 1
        if count < 1 or not words:
            raise PbsScriptError(f"line {number}: select chunk {part!r} is empty or has N < 1")
        chunk: dict[str, str] = {}
        for word in words:
            name, sep, val = word.partition("=")
            if not sep or not val:
                raise PbsScriptError(f"line {number}: select chunk {part!r}: {word!r} is not <resource>=<value>")
            if name not in CHUNK_RESOURCES:
                raise PbsScriptError(f"line {number}: {name} is not a built-in host-level (chunk) resource")
            if not re.fullmatch(CHUNK_RESOURCES[name], val) or name in chunk:
                raise PbsScriptError(f"line {number}: select chunk {part!r}: bad or repeated {word!r}")
            chunk[name] = val
        chunks.append((count, chunk))
    return chunks


def _place(value: str, number: int) -> None:
    """`place=[<arrangement>][:<sharing>][:<grouping>]`, never starting with a colon."""
    seen: set[str] = set()
    for word in value.split(":"):
        kind = next((k for k, words in PLACE_WORDS.items() if word in words), None)
        kind = kind or ("grouping" if re.fullmatch(r"group=[A-Za-z][A-Za-z0-9_]*", word) else None)
        if kind is None or kind in seen:
            raise PbsScriptError(f"line {number}: place={value!r}: {word!r} is not allowed here")
        seen.add(kind)


def _check_resources(found: Directives) -> None:
    if "place" in found.resources and "select" not in found.resources:
        raise PbsScriptError("a place statement needs a select statement")


def duration_seconds(value: str) -> int:
    """OpenPBS decode_time: each field multiplies the previous total by 60; milliseconds >= 500 round up."""
    whole, _, millis = value.partition(".")
    total = 0
    for part in whole.split(":"):
        total = total * 60 + int(part)
    return total + (1 if millis and int(millis[:3].ljust(3, "0")) >= 500 else 0)


def size_bytes(value: str) -> int:
    """OpenPBS to_size: k/m/g/t/p shift by 10/20/30/40/50 bits; a word (w) is 8 bytes (qstat(1B) -M)."""
    match = re.fullmatch(r"(\d+)([kmgtp]?)([bw]?)", value.lower())
    assert match, value
    number, multiplier, unit = match.groups()
    return (int(number) << (10 * " kmgtp".index(multiplier or " "))) * (8 if unit == "w" else 1)


# ---------------------------------------------------------------- the validator itself rejects what PBS rejects


@pytest.mark.parametrize(
    "line",
    [
        "#PBS --gpus=1",  # not a qsub option
        "#PBS -G",  # Windows only, not in the Linux getopt string
        "#PBS -l walltime=1:00:00:00",  # at most two colons
        "#PBS -l walltime=12h",
        "#PBS -l mem=4gb",  # host-level: only inside select
        "#PBS -l nodes=2:ppn=4",  # old syntax
        "#PBS -l select=2:ncpus=8:walltime=1:00:00",  # job-wide resource inside a chunk
        "#PBS -l select=2:ncpus=8:mem=4 GB",
        "#PBS -l select=2:ncpus=8:mem=4GiB",
        "#PBS -l select=0:ncpus=8",
        "#PBS -l select=2:ncpus=8:ncpus=4",
        "#PBS -l select=2:ngpus=4",  # a site-defined resource, not built in
        "#PBS -l place=:scatter",
        "#PBS -l place=scatter:pack",
        "#PBS -l place=scatter",  # place without select
        "#PBS -N -job",
        "#PBS -N aiida job",
        "#PBS -q gpu.long",
        "#PBS -q a_queue_name_of_16",
        "#PBS -r maybe",
        "#PBS -m x",
        "#PBS -j oo",
        "#PBS -p 2000",
    ],
)
def test_validator_rejects(line):
    with pytest.raises(PbsScriptError):
        parse_pbs_script(f"#!/bin/bash\n{line}\necho hi\n")


def test_validator_reads_only_up_to_the_first_executable_line():
    script = "#!/bin/bash\n: a colon line is not executable\n#PBS -N ok\n\n  # comment\ncd /tmp\n#PBS -q late\n"
    with pytest.raises(PbsScriptError, match="after the first executable line 'cd /tmp'"):
        parse_pbs_script(script)
    with pytest.raises(PbsScriptError, match="cr, lf"):
        parse_pbs_script("#!/bin/bash\r\n#PBS -N ok\r\n")


def test_validator_accepts_the_documented_examples():
    # Examples from qsub(1B) and pbs_resources(7B).
    found = parse_pbs_script(
        "#!/bin/sh\n#PBS -N Weather1\n#PBS -l walltime=1:00:00\n#PBS -l select=2:ncpus=1:mem=10GB+3:ncpus=2:mem=8GB\n"
        "#PBS -l place=scatter:excl\n#PBS -m ja\n#PBS -W umask=33\n/usr/local/weathersim\n"
    )
    assert found.chunks == [(2, {"ncpus": "1", "mem": "10GB"}), (3, {"ncpus": "2", "mem": "8GB"})]
    assert duration_seconds(found.resources["walltime"]) == 3600
    assert size_bytes("10GB") == 10 * 2**30 and size_bytes("2kw") == 2048 * 8 and size_bytes("512") == 512
    assert duration_seconds("90") == 90 and duration_seconds("1:30.5") == 91
    assert found.first_executable == "/usr/local/weathersim"


# ---------------------------------------------------------------- AiiDA's scripts for our sites


def test_full_site_script_matches_the_documented_directives(aiida, tmp_path):
    site = site_from(FULL, tmp_path)
    script = submit_script(aiida, site)
    found = parse_pbs_script(script)
    r = site.resources

    # Nothing else than these options; in particular no -W, -j (stdout and stderr differ) and nothing for qos.
    assert found.option_names == {"-r", "-m", "-N", "-V", "-o", "-e", "-q", "-A", "-l"}
    assert found.get("-N") == "aiida-1234"
    assert found.get("-q") == site.queue == "workq"
    assert found.get("-A") == site.account == "proj-md-1234"
    # PBS's default is -r y (rerunnable) and -m a; AiiDA asks for neither reruns nor mail.
    assert (found.get("-r"), found.get("-m")) == ("n", "n")
    # Relative paths: relative to qsub's working directory, which is where AiiDA runs qsub (the job's folder).
    assert (found.get("-o"), found.get("-e")) == ("_scheduler-stdout.txt", "_scheduler-stderr.txt")

    assert set(found.resources) == {"walltime", "select"}
    assert found.resources["walltime"] == "12:00:00" and duration_seconds("12:00:00") == r.walltime == 43200
    [(count, chunk)] = found.chunks
    assert count == r.nodes == 2
    assert set(chunk) == {"ncpus", "mpiprocs", "mem"}
    assert int(chunk["ncpus"]) == r.mpi_ranks_per_node * r.threads_per_rank == 8
    assert int(chunk["mpiprocs"]) == r.mpi_ranks_per_node == 4
    assert chunk["mem"] == "4096000kb" and size_bytes(chunk["mem"]) == r.memory_mb * 2**20  # per chunk = per node

    # The job starts in the home directory: the script must cd to $PBS_O_WORKDIR before it runs anything.
    assert found.first_executable == 'cd "$PBS_O_WORKDIR"'
    body = script.split('cd "$PBS_O_WORKDIR"\n', 1)[1]
    assert "module load lammps/2025.07" in body
    [run] = [line for line in body.splitlines() if "lmp" in line]
    words = shlex.split(run)
    # PBS writes each chunk's host mpiprocs times into $PBS_NODEFILE (pbs_resources(7B) mpiprocs): the -np AiiDA
    # passes equals the number of slots PBS hands to mpirun.
    assert words[:3] == ["mpirun", "-np", str(sum(n * int(c["mpiprocs"]) for n, c in found.chunks))]
    assert words[3:] == [
        "/apps/lammps/2025.07/bin/lmp",
        "-in",
        "in.lammps",
        "-log",
        "log.lammps",
        "-nocite",
        ">",
        "lammps.out",
    ]


def test_minimal_site_script(aiida, tmp_path):
    site = site_from(MINIMAL, tmp_path)
    found = parse_pbs_script(submit_script(aiida, site))
    assert found.option_names == {"-r", "-m", "-N", "-V", "-o", "-e", "-l"}  # no -q, -A: the server's defaults
    assert found.resources == {"walltime": "01:00:00", "select": "1:mpiprocs=1:ncpus=1"}  # no mem: queue default
    assert found.chunks == [(1, {"mpiprocs": "1", "ncpus": "1"})]
    assert "mpirun" not in submit_script(aiida, site)  # one rank: withmpi is False


@pytest.mark.parametrize(("walltime", "shown"), [("90", "00:01:30"), ('"2-00:00:30"', "48:00:30"), ("59", "00:00:59")])
def test_walltime_is_a_pbs_duration(aiida, tmp_path, walltime, shown):
    site = site_from(MINIMAL + f"resources:\n  walltime: {walltime}\n", tmp_path)
    found = parse_pbs_script(submit_script(aiida, site))
    assert found.resources["walltime"] == shown
    assert duration_seconds(shown) == site.resources.walltime


@pytest.mark.parametrize("memory_mb", [1, 256000, 2_000_000])
def test_memory_is_a_pbs_size_per_chunk(aiida, tmp_path, memory_mb):
    site = site_from(MINIMAL + f"resources:\n  nodes: 3\n  memory_mb: {memory_mb}\n", tmp_path)
    [(count, chunk)] = parse_pbs_script(submit_script(aiida, site)).chunks
    assert count == 3 and re.fullmatch(r"\d+kb", chunk["mem"])
    assert size_bytes(chunk["mem"]) == memory_mb * 2**20


def test_pbs_gpu_example_without_gpus(aiida):
    """The example GPU site's queue, account and resources make a valid script once the GPU request is removed."""
    site = load_site(SITE_CONFIGS / "pbs-gpu.yaml")
    cpu_only = site.model_copy(update={"resources": site.resources.model_copy(update={"gpus_per_node": 0})})
    found = parse_pbs_script(submit_script(aiida, cpu_only))
    assert (found.get("-q"), found.get("-A")) == ("gpu", "proj-md-1234")
    assert found.chunks == [(1, {"mpiprocs": "4", "ncpus": "32", "mem": "262144000kb"})]
    assert found.resources["walltime"] == "12:00:00"


def test_gpus_cannot_be_requested(aiida):
    # gap: PBS requests GPUs inside the chunk (select=1:ncpus=32:ngpus=4, ngpus being a site-defined host-level
    # resource); core.pbspro writes the select line itself and has no option to add to it, so site.py refuses.
    with pytest.raises(ValueError, match="core.pbspro cannot request GPUs"):
        aiida_calcjob_options(load_site(SITE_CONFIGS / "pbs-gpu.yaml"))


def test_qos_is_silently_dropped(aiida, tmp_path):
    # gap: PBS has no QOS. AiiDA copies the qos option into the JobTemplate and core.pbspro writes nothing for it,
    # so a site's `qos` would be ignored without a word: site.py refuses qos for pbspro.
    with pytest.raises(SiteConfigError, match="PBS Pro has no QOS"):
        site_from(FULL + "qos: high-priority\n", tmp_path)
    site = site_from(FULL, tmp_path)
    options = {**aiida_calcjob_options(site), "qos": "high-priority"}
    tmpl = job_template(aiida, site, options=options)
    assert tmpl.qos == "high-priority"
    script = aiida.PbsproScheduler().get_submit_script(tmpl)
    assert "high-priority" not in script
    assert parse_pbs_script(script).option_names == {"-r", "-m", "-N", "-V", "-o", "-e", "-q", "-A", "-l"}


def test_job_name_is_cut_to_15_characters(aiida, tmp_path):
    # gap (harmless): AiiDA keeps the 15-character limit of old PBS versions; PBS Pro documents up to 236.
    # Names are only labels here (AiiDA tracks jobs by id), but beyond pk 999999999 they stop being unique.
    site = site_from(MINIMAL, tmp_path)
    found = parse_pbs_script(submit_script(aiida, site, pk=1234567890123))
    assert found.get("-N") == "aiida-123456789"


def test_chunks_are_not_spread_over_hosts(aiida, tmp_path):
    # gap: AiiDA writes no place statement. pbs_resources(7B), Default Placement: without one (and without a
    # queue or server default), the arrangement is `free`, so the 2 chunks of a 2-node job may land on one host.
    # The fix is ours to make: a `#PBS -l place=scatter` line through custom_scheduler_commands for nodes > 1.
    site = site_from(FULL, tmp_path)
    found = parse_pbs_script(submit_script(aiida, site))
    assert "place" not in found.resources
    options = aiida_calcjob_options(site) | {"custom_scheduler_commands": "#PBS -l place=scatter"}
    fixed = parse_pbs_script(submit_script(aiida, site, options=options))
    assert fixed.resources["place"] == "scatter" and fixed.chunks == found.chunks
    assert fixed.first_executable == 'cd "$PBS_O_WORKDIR"'  # the extra directive comes before it


def test_openmp_threads_are_not_requested(aiida, tmp_path):
    # gap: AiiDA writes no ompthreads. pbs_resources(7B): ompthreads defaults to ncpus, and PBS sets
    # OMP_NUM_THREADS (and NCPUS) to it for rank 0, so with 4 ranks x 2 threads rank 0 gets OMP_NUM_THREADS=8.
    # Apptainer sites pass OMP_NUM_THREADS explicitly (--env); binary sites do not.
    site = site_from(FULL, tmp_path)
    [(_, chunk)] = parse_pbs_script(submit_script(aiida, site)).chunks
    assert "ompthreads" not in chunk
    assert int(chunk["ncpus"]) != site.resources.threads_per_rank


# ================================================================ part 2: qsub, qstat, qdel

CHAR_LINE_LIMIT = 78  # OpenPBS src/cmds/qstat.c


def prt_attr(name: str, value: str) -> str:
    """One attribute of `qstat -f` as OpenPBS's qstat prints it (prt_attr, default format, without -w).

    Four spaces, `name = value`; the value is cut at commas into pieces, a piece that does not fit on the line goes
    to a new line starting with a tab, and a piece longer than a line is broken every CHAR_LINE_LIMIT characters.
    """
    out = [f"    {name} = "]
    start = len(name) + 7
    pieces = [p for p in value.split(",") if p]  # strtok
    first = True
    for i, piece in enumerate(pieces):
        if len(piece) + start < CHAR_LINE_LIMIT:
            out.append(piece)
            start += len(piece)
        else:
            if not first:
                out.append("\n\t")
                start = 9
            for char in piece:
                out.append(char)
                start += 1
                if start > CHAR_LINE_LIMIT:
                    start = 8
                    out.append("\n\t")
        if i + 1 < len(pieces):
            first = False
            out.append(",")
    return "".join(out)


def qstat_f(*jobs: tuple[str, list[tuple[str, str]]]) -> str:
    """`qstat -f` output: per job `Job Id: <id>`, its attributes one a line, and an empty line."""
    return "".join(f"Job Id: {job_id}\n" + "\n".join(prt_attr(*a) for a in attrs) + "\n\n" for job_id, attrs in jobs)


VARIABLE_LIST = ",".join(
    [
        "PBS_O_HOME=/home/jdoe",
        "PBS_O_LANG=en_US.UTF-8",
        "PBS_O_LOGNAME=jdoe",
        "PBS_O_PATH=/apps/lammps/2025.07/bin:/opt/pbs/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin",
        "PBS_O_MAIL=/var/spool/mail/jdoe",
        "PBS_O_SHELL=/bin/bash",
        "PBS_O_WORKDIR=/scratch/jdoe/mdagent/3f/9a/0c1e2d4b-5a6f-4e7d-8c9b-0a1b2c3d4e5f",
        "PBS_O_SYSTEM=Linux",
        "PBS_O_QUEUE=workq",
        "PBS_O_HOST=login01.example.org",
    ]
)
WORKDIR = "/scratch/jdoe/mdagent/3f/9a/0c1e2d4b-5a6f-4e7d-8c9b-0a1b2c3d4e5f"

# A queued job exactly as qstat -f prints it (continuation lines start with a tab). test_prt_attr_matches_the_
# literal checks that prt_attr lays out these attributes the same way.
QUEUED = """\
Job Id: 1234.pbs-server
    Job_Name = aiida-1234
    Job_Owner = jdoe@login01.example.org
    job_state = Q
    queue = workq
    server = pbs-server
    Account_Name = proj-md-1234
    Checkpoint = u
    ctime = Tue Jun  3 09:05:07 2025
    Error_Path = login01.example.org:/scratch/jdoe/mdagent/3f/9a/0c1e2d4b-5a6f-
\t4e7d-8c9b-0a1b2c3d4e5f/_scheduler-stderr.txt
    Hold_Types = n
    Join_Path = n
    Keep_Files = n
    Mail_Points = n
    mtime = Tue Jun  3 09:05:07 2025
    Output_Path = login01.example.org:/scratch/jdoe/mdagent/3f/9a/0c1e2d4b-5a6f
\t-4e7d-8c9b-0a1b2c3d4e5f/_scheduler-stdout.txt
    Priority = 0
    qtime = Tue Jun  3 09:05:07 2025
    Rerunable = False
    Resource_List.mem = 8192000kb
    Resource_List.mpiprocs = 8
    Resource_List.ncpus = 16
    Resource_List.nodect = 2
    Resource_List.place = free
    Resource_List.select = 2:mpiprocs=4:ncpus=8:mem=4096000kb
    Resource_List.walltime = 12:00:00
    substate = 10
    Variable_List = PBS_O_HOME=/home/jdoe,PBS_O_LANG=en_US.UTF-8,
\tPBS_O_LOGNAME=jdoe,
\tPBS_O_PATH=/apps/lammps/2025.07/bin:/opt/pbs/bin:/usr/local/bin:/usr/b
\tin:/bin:/usr/local/sbin:/usr/sbin,PBS_O_MAIL=/var/spool/mail/jdoe,
\tPBS_O_SHELL=/bin/bash,
\tPBS_O_WORKDIR=/scratch/jdoe/mdagent/3f/9a/0c1e2d4b-5a6f-4e7d-8c9b-0a1b
\t2c3d4e5f,PBS_O_SYSTEM=Linux,PBS_O_QUEUE=workq,
\tPBS_O_HOST=login01.example.org
    comment = Not Running: Insufficient amount of resource: ncpus (R: 16 A: 4 T
\t: 64)
    etime = Tue Jun  3 09:05:07 2025
    Submit_arguments = _aiidasubmit.sh
    project = _pbs_project_default
    Submit_Host = login01.example.org

"""


def attributes(state: str, **extra: str) -> list[tuple[str, str]]:
    """The attributes of job 1234 (2 chunks of 4 ranks x 2 threads) in a given state, plus `extra` (dots as __)."""
    attrs = [
        ("Job_Name", "aiida-1234"),
        ("Job_Owner", "jdoe@login01.example.org"),
        ("job_state", state),
        ("queue", "workq"),
        ("server", "pbs-server"),
        ("ctime", "Tue Jun  3 09:05:07 2025"),
        ("Output_Path", f"login01.example.org:{WORKDIR}/_scheduler-stdout.txt"),
        ("Resource_List.mem", "8192000kb"),
        ("Resource_List.mpiprocs", "8"),
        ("Resource_List.ncpus", "16"),
        ("Resource_List.nodect", "2"),
        ("Resource_List.place", "free"),
        ("Resource_List.select", "2:mpiprocs=4:ncpus=8:mem=4096000kb"),
        ("Resource_List.walltime", "12:00:00"),
        ("Variable_List", VARIABLE_LIST),
    ]
    return attrs + [(k.replace("__", "."), v) for k, v in extra.items()]


RUNNING = {
    "exec_host": "node017/0*8+node018/0*8",
    "exec_vnode": "(node017:ncpus=8:mem=4096000kb)+(node018:ncpus=8:mem=4096000kb)",
    "resources_used__cput": "08:10:00",
    "resources_used__walltime": "01:02:03",
    "resources_used__ncpus": "16",
    "resources_used__mem": "3145728kb",
    "stime": "Tue Jun  3 10:00:00 2025",
    "session_id": "48213",
}


def parse(aiida, text: str, retval: int = 0, stderr: str = ""):
    return aiida.PbsproScheduler()._parse_joblist_output(retval, text, stderr)


def test_prt_attr_matches_the_literal(aiida):
    literal = dict(
        (line.split(" = ", 1)[0].strip(), line) for line in re.split(r"\n(?=    \S)", QUEUED.split("\n", 1)[1])
    )
    assert prt_attr("Variable_List", VARIABLE_LIST) == literal["Variable_List"]
    assert prt_attr("Error_Path", f"login01.example.org:{WORKDIR}/_scheduler-stderr.txt") == literal["Error_Path"]
    assert prt_attr("Output_Path", f"login01.example.org:{WORKDIR}/_scheduler-stdout.txt") == literal["Output_Path"]


def test_queued_job(aiida):
    [job] = parse(aiida, QUEUED)
    assert job.job_id == "1234.pbs-server"
    assert job.job_state == aiida.JobState.QUEUED and job.job_substate == "10"
    assert (job.title, job.job_owner, job.queue_name) == ("aiida-1234", "jdoe", "workq")
    assert (job.num_machines, job.num_mpiprocs, job.num_cpus) == (2, 8, 16)
    assert job.annotation == "Not Running: Insufficient amount of resource: ncpus (R: 16 A: 4 T: 64)"
    assert job.submission_time == datetime.datetime(2025, 6, 3, 9, 5, 7)  # "Jun  3": ctime pads the day
    assert job.allocated_machines is None and job.wallclock_time_seconds is None and job.dispatch_time is None
    # Continuation lines are joined back without their tab, including breaks in the middle of a value.
    assert job.raw_data["variable_list"] == VARIABLE_LIST
    assert job.raw_data["error_path"] == f"login01.example.org:{WORKDIR}/_scheduler-stderr.txt"
    assert "warning_fields_with_newlines" not in job.raw_data


def test_requested_walltime_lands_in_a_field_aiida_does_not_read(aiida):
    # gap: pbsbaseclasses sets `requested_wallclock_time`, which is not a JobInfo field; the documented field
    # `requested_wallclock_time_seconds` stays None (the Slurm and LSF plugins fill it).
    [job] = parse(aiida, QUEUED)
    assert job.requested_wallclock_time_seconds is None
    assert job["requested_wallclock_time"] == 12 * 3600


def test_running_held_suspended_in_one_output(aiida):
    text = qstat_f(
        ("1234.pbs-server", attributes("R", **RUNNING)),
        ("1235.pbs-server", attributes("H", Hold_Types="u")),
        ("1236.pbs-server", attributes("S", **RUNNING)),
    )
    assert "\n\t" in text  # the Variable_List wraps
    running, held, suspended = parse(aiida, text)
    assert [j.job_id for j in (running, held, suspended)] == ["1234.pbs-server", "1235.pbs-server", "1236.pbs-server"]
    state = aiida.JobState
    assert (running.job_state, held.job_state, suspended.job_state) == (
        state.RUNNING,
        state.QUEUED_HELD,
        state.SUSPENDED,
    )
    assert running.wallclock_time_seconds == 3723 and running.cpu_time == 8 * 3600 + 600
    assert running.dispatch_time == datetime.datetime(2025, 6, 3, 10, 0, 0)
    assert [(m.name, m.job_index, m.num_cpus) for m in running.allocated_machines] == [
        ("node017", 0, 8),
        ("node018", 0, 8),
    ]
    assert (running.num_machines, running.num_mpiprocs, running.num_cpus) == (2, 8, 16)
    assert held.allocated_machines is None and held.wallclock_time_seconds is None
    assert running.raw_data["variable_list"] == held.raw_data["variable_list"] == VARIABLE_LIST


def test_exec_host_with_one_cpu(aiida):
    # pbs_job_attributes(7B) exec_host: <hostname>/N[*C][+...], "*C does not appear if C has a value of 1".
    [job] = parse(aiida, qstat_f(("7.pbs-server", attributes("R", exec_host="node003/5"))))
    [machine] = job.allocated_machines
    assert (machine.name, machine.job_index, machine.num_cpus) == ("node003", 5, 1)


def test_packed_chunks_disagree_with_nodect(aiida, caplog):
    # With place=free (PBS's default, see test_chunks_are_not_spread_over_hosts) both chunks can be on one host:
    # Resource_List.nodect counts chunks, not hosts, and AiiDA logs an error (nothing worse).
    running = RUNNING | {"exec_host": "node017/0*8+node017/1*8"}
    with caplog.at_level(logging.ERROR):
        [job] = parse(aiida, qstat_f(("1234.pbs-server", attributes("R", **running))))
    assert job.num_machines == 2 and {m.name for m in job.allocated_machines} == {"node017"}
    assert "different from the expected number of nodes (2)" in caplog.text


@pytest.mark.parametrize(
    ("letter", "expected"),
    [
        ("B", "RUNNING"),  # job array begun
        ("E", "RUNNING"),  # exiting: PBS still copies the .o/.e files back, so not done yet
        ("F", "DONE"),  # finished, failed or deleted (only shown by qstat -x)
        ("H", "QUEUED_HELD"),
        ("M", "UNDETERMINED"),  # moved to another server
        ("Q", "QUEUED"),
        ("R", "RUNNING"),
        ("S", "SUSPENDED"),
        ("T", "QUEUED"),  # being moved
        ("U", "SUSPENDED"),  # cycle-harvesting suspended
        ("W", "QUEUED"),  # waiting for its Execution_Time
        ("X", "DONE"),  # subjob expired
    ],
)
def test_every_documented_state_is_mapped(aiida, letter, expected):
    # the states of pbs_job_attributes(7B) job_state and qstat(1B)
    [job] = parse(aiida, qstat_f(("1234.pbs-server", attributes(letter))))
    assert job.job_state == aiida.JobState[expected]


def test_finished_job_from_qstat_x(aiida):
    # gap: `qstat -x -f` shows finished jobs with Exit_status (documented in pbs_job_attributes(7B)); AiiDA never
    # runs -x (a finished job simply disappears from qstat -f) and would not read Exit_status if it did.
    text = qstat_f(("1234.pbs-server", attributes("F", **RUNNING, Exit_status="0", substate="92")))
    [job] = parse(aiida, text)
    assert job.job_state == aiida.JobState.DONE and job.wallclock_time_seconds == 3723
    assert job.raw_data["exit_status"] == "0" and job.exit_status is None


def test_unknown_and_finished_jobs_are_dropped(aiida):
    # Without -x, qstat reports a job in history with "Job has finished" (OpenPBS qstat.c, exit status
    # PBSE_HISTJOBID & 255 = 35) and a purged one with "Unknown Job Id" (PBSE_UNKJOBID & 255 = 153).
    # AiiDA filters both messages and treats a job missing from the output as done.
    text = qstat_f(("1234.pbs-server", attributes("R", **RUNNING)))
    finished = "qstat: 1235.pbs-server Job has finished, use -x or -H to obtain historical job information\n"
    unknown = "qstat: Unknown Job Id 1236.pbs-server\n"
    assert [j.job_id for j in parse(aiida, text, 35, finished)] == ["1234.pbs-server"]
    assert parse(aiida, "", 153, unknown) == []
    assert parse(aiida, "", 153, finished + unknown) == []


def test_qstat_errors_raise(aiida):
    with pytest.raises(aiida.SchedulerError, match="retval=2"):
        parse(aiida, "", 2, "qstat: cannot connect to server pbs-server (errno=15034)\n")


def test_joblist_command(aiida):
    scheduler = aiida.PbsproScheduler()
    # qstat(1B) long format: qstat -f [...] [<job ID> ...]; no -w, so values wrap (parsed above); no -x.
    command = scheduler._get_joblist_command(jobs=["1234.pbs-server", "1235.pbs-server"])
    assert shlex.split(command) == ["qstat", "-f", "1234.pbs-server", "1235.pbs-server"]
    # -u would switch qstat to the alternate (one line per job) format; AiiDA never queries by user for PBS.
    assert scheduler.get_feature("can_query_by_user") is False
    # tracejob(8B) reads the PBS logs of the host it runs on: on a login node it usually finds nothing.
    assert shlex.split(scheduler._get_detailed_job_info_command("1234.pbs-server")) == [
        "tracejob",
        "-v",
        "1234.pbs-server",
    ]


def test_qsub(aiida):
    scheduler = aiida.PbsproScheduler()
    assert scheduler._get_submit_command("_aiidasubmit.sh") == "qsub _aiidasubmit.sh"
    # qsub(1B): on success the job identifier, <sequence number>.<server name>, on standard output.
    job_id = scheduler._parse_submit_output(0, "1234.pbs-server\n", "")
    assert job_id == "1234.pbs-server" and re.fullmatch(r"\d+(?:\[\])?\.[A-Za-z0-9.-]+", job_id)
    # It is the same string qstat -f prints after `Job Id:`, which is how AiiDA finds the job again.
    assert [j.job_id for j in parse(aiida, QUEUED)] == [job_id]
    assert scheduler._parse_submit_output(0, "1234.pbs-server\n", "qsub: some warning\n") == job_id
    with pytest.raises(aiida.SchedulerError, match="Unknown queue"):  # exit status "greater than zero" on failure
        scheduler._parse_submit_output(1, "", "qsub: Unknown queue\n")


def test_qdel(aiida):
    scheduler = aiida.PbsproScheduler()
    assert scheduler._get_kill_command("1234.pbs-server") == "qdel 1234.pbs-server"  # qdel(1B): qdel <job ID>
    assert scheduler._parse_kill_output(0, "", "") is True
    assert scheduler._parse_kill_output(153, "", "qdel: Unknown Job Id 1234.pbs-server\n") is False
