"""PilotCalculation (`mdagent.sweep.pilot`): a sweep's Parsl driver as a job that AiiDA follows.

The driver (`python -m mdagent_hpc.execution.parsl.driver SWEEP_FOLDER --job .`) runs on the site's login host as a
job of the computer `NAME-login` (AiiDA's core.direct scheduler, the site's transport): it is a process of its
own, so it outlives a daemon restart, and AiiDA polls it like any job and retrieves what it wrote. The points
live in `sweep_folder`, which outlasts the job: a PilotCalculation submitted again with the same folder runs
only the points that have not ended.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from aiida import orm
from aiida.common.datastructures import CalcInfo, CodeInfo
from aiida.engine import CalcJob
from aiida.parsers import Parser

from mdagent_hpc.workflows.broker import PatientWithBroker

RESULTS, STDOUT, STDERR = "results.json", "pilot.out", "pilot.err"


def _absolute(value: orm.Str, _) -> str | None:
    if not PurePosixPath(value.value).is_absolute():
        return f"sweep_folder {value.value!r} is not an absolute path on the site"
    return None


def _points(value: orm.Dict, _) -> str | None:
    points = value.get_dict().get("points")
    if not isinstance(points, list) or not all(isinstance(p, dict) and "id" in p for p in points):
        return 'points must be {"points": [{"id": ..., "vars": {...}}, ...]}'
    return None


def site_of(value: orm.Dict | orm.Str):
    """The SiteConfig a pilot runs on: given whole (a sweep resolves it once), or by name (looked up)."""
    from mdagent_hpc.execution.site import SiteConfig

    if isinstance(value, orm.Dict):
        return SiteConfig.model_validate(value.get_dict())
    from mdagent_hpc.execution.registry import find_site

    return find_site(value.value)


class PilotCalculation(PatientWithBroker, CalcJob):
    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("template", valid_type=orm.SinglefileData, help="the LAMMPS script; swept values are variables")
        spec.input_namespace(
            "files",
            valid_type=orm.SinglefileData,
            dynamic=True,
            required=False,
            help="files the template reads (data, potentials), staged under their filename",
        )
        spec.input("points", valid_type=orm.Dict, validator=_points, help='{"points": [{"id", "vars"}]}')
        spec.input(
            "site",
            valid_type=(orm.Dict, orm.Str),
            help="the site (its config, as the sweep resolved it; or its name) whose pilot settings and "
            "LAMMPS command are used",
        )
        spec.input(
            "sweep_folder",
            valid_type=orm.Str,
            validator=_absolute,
            help="absolute folder on the login host that keeps the points across submissions",
        )
        options = spec.inputs["metadata"]["options"]
        options["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        options["withmpi"].default = False
        options["parser_name"].default = "mdagent.sweep.pilot"
        options["output_filename"].default = STDOUT
        spec.output("results", valid_type=orm.Dict, help="{point_id: {returncode, seconds, log_file, ...}}")
        spec.exit_code(300, "ERROR_NO_RESULTS", message="the pilot driver wrote no results: {message}")
        spec.exit_code(
            410,
            "ERROR_POINTS_MISSING",
            message="{missing} of {total} point(s) did not end; submit again "
            "with the same sweep_folder to run only those",
        )

    def __init__(self, *args, inputs=None, **kwargs):
        # The driver runs with the login host's Python, not with the site's LAMMPS code: found from `site`.
        if inputs is not None and "code" not in inputs and "site" in inputs:
            from mdagent_hpc.execution.computers import ensure_pilot_code

            inputs = {**inputs, "code": ensure_pilot_code(site_of(inputs["site"]))}
        super().__init__(*args, inputs=inputs, **kwargs)

    def prepare_for_submission(self, folder):
        site = site_of(self.inputs.site)
        template = self.inputs.template
        files = list(self.inputs.files.values()) if "files" in self.inputs else []
        sweep = {
            "site": site.model_dump(mode="json", exclude_unset=True),
            "template": template.filename,
            "files": [node.filename for node in files],
            "points": self.inputs.points.get_dict()["points"],
        }
        with folder.open("sweep.json", "w") as handle:
            json.dump(sweep, handle, indent=1)
        for node in [template, *files]:
            with folder.open(node.filename, "wb") as target:
                target.write(node.get_content(mode="rb"))
        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [
            "-m",
            "mdagent_hpc.execution.parsl.driver",
            self.inputs.sweep_folder.value,
            "--job",
            ".",
        ]
        codeinfo.stdout_name = STDOUT
        codeinfo.stderr_name = STDERR
        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.provenance_exclude_list = [node.filename for node in [template, *files]]  # the input nodes hold them
        calcinfo.retrieve_list = [RESULTS, STDOUT, STDERR, ("points/*/log.lammps", ".", None)]
        return calcinfo


class PilotParser(Parser):
    def parse(self, **kwargs):
        retrieved = self.retrieved
        names = retrieved.base.repository.list_object_names()
        if RESULTS not in names:
            err = retrieved.base.repository.get_object_content(STDERR, mode="r") if STDERR in names else ""
            last = next((line for line in reversed(err.strip().splitlines()) if line.strip()), "no error output")
            return self.exit_codes.ERROR_NO_RESULTS.format(message=last)
        results = json.loads(retrieved.base.repository.get_object_content(RESULTS, mode="r"))
        self.out("results", orm.Dict(results))
        wanted = [p["id"] for p in self.node.inputs.points.get_dict()["points"]]
        missing = [pid for pid in wanted if pid not in results]
        if missing:
            return self.exit_codes.ERROR_POINTS_MISSING.format(missing=len(missing), total=len(wanted))
        return None
