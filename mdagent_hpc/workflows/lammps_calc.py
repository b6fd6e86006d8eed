"""A LAMMPS run as an AiiDA CalcJob, and its parser.

Ours rather than aiida-lammps' LammpsRawCalculation: that parser reads only stdout and stops at the first
ERROR, while the agent needs the whole log (every thermo block, warnings, the error with its input line)
to evaluate the run and to feed failures back. Potential files are inputs, so their content is in provenance.
"""

from __future__ import annotations

import math
import re

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob
from aiida.parsers import Parser

from mdagent_hpc.execution.accounting import Fault, fault_of, parse_sacct
from mdagent_hpc.lammps.log import parse_log
from mdagent_hpc.lammps.parser import ScriptError, parse_text

INPUT = "in.lammps"
LOG = "log.lammps"
STDOUT = "lammps.out"


def node_key(filename: str) -> str:
    """A port name for a file name (ports allow letters, digits and underscores)."""
    key = re.sub(r"\W", "_", filename)
    return key if key[:1].isalpha() else f"f_{key}"


class LammpsCalculation(CalcJob):
    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("script", valid_type=orm.SinglefileData, help="the LAMMPS input script")
        spec.input_namespace("files", valid_type=orm.SinglefileData, dynamic=True, required=False,
                             help="extra files the script reads, staged under their filename")
        spec.input_namespace("potentials", valid_type=orm.SinglefileData, dynamic=True, required=False,
                             help="potential files, staged under their filename")
        spec.input("skiprun", valid_type=orm.Bool, required=False,
                   help="a dry run (`lmp -skiprun`): set up everything, run no steps")
        spec.inputs["metadata"]["options"]["resources"].default = {"num_machines": 1,
                                                                  "num_mpiprocs_per_machine": 1}
        spec.inputs["metadata"]["options"]["parser_name"].default = "mdagent.lammps"
        spec.inputs["metadata"]["options"]["withmpi"].default = False
        spec.output("results", valid_type=orm.Dict, help="summary of the log: completion, errors, last thermo row")
        spec.exit_code(310, "ERROR_NO_LOG", message="LAMMPS wrote no log: it did not start")
        spec.exit_code(320, "ERROR_LAMMPS", message="LAMMPS stopped with an ERROR")
        spec.exit_code(321, "ERROR_INCOMPLETE", message="the log ends before 'Total wall time': the run was cut off")
        spec.exit_code(350, "ERROR_CANCELLED", message="the job was cancelled (scancel or the administrator)")

    def prepare_for_submission(self, folder):
        local_copy_list = [(self.inputs.script.uuid, self.inputs.script.filename, INPUT)]
        for namespace in ("files", "potentials"):
            for node in (self.inputs[namespace].values() if namespace in self.inputs else []):
                local_copy_list.append((node.uuid, node.filename, node.filename))
        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = ["-in", INPUT, "-log", LOG, "-nocite"]
        if "skiprun" in self.inputs and self.inputs.skiprun.value:
            codeinfo.cmdline_params.append("-skiprun")
        codeinfo.stdout_name = STDOUT
        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = local_copy_list
        calcinfo.retrieve_list = [LOG, STDOUT, *restart_files(self.inputs.script.get_content())]
        return calcinfo


def restart_files(script: str) -> list[str]:
    """Glob patterns of the restart files a script writes (kept, so that a run cut off can continue)."""
    try:
        parsed = parse_text(script, INPUT)
    except ScriptError:
        return []
    patterns = set()
    for f in parsed.files:
        if f.kind == "restart" and f.mode == "write":
            patterns.add(f.path.replace("%", "*"))
            if f.command.split()[0] == "restart" and "*" not in f.path:
                patterns.add(f"{f.path}.*")  # `restart N root` writes root.STEP files
    return sorted(p for p in patterns if "/" not in p and not p.startswith("."))


class LammpsParser(Parser):
    def parse(self, **kwargs):
        info = self.node.get_detailed_job_info() or {}
        accounting = parse_sacct(info.get("stdout", "")) if info.get("retval") == 0 else {}
        scheduler_status = self.node.exit_status  # set by AiiDA when its scheduler plugin read a fault
        fault = fault_of(accounting.get("State")) or {120: Fault.WALLTIME, 140: Fault.NODE_FAILURE}.get(
            scheduler_status)
        retrieved = self.retrieved
        names = retrieved.base.repository.list_object_names()
        if LOG not in names:
            self.out("results", orm.Dict({"completed": False, "errors": [], "accounting": accounting,
                                          "fault": fault.value if fault else None, "job_id": self.node.get_job_id()}))
            return self._fault_exit(fault, scheduler_status) or self.exit_codes.ERROR_NO_LOG
        log = parse_log(retrieved.base.repository.get_object_content(LOG, mode="r"))
        last = log.last_block
        self.out("results", orm.Dict({
            "job_id": self.node.get_job_id(),
            "accounting": accounting,
            "fault": fault.value if fault else None,
            "last_step": int(last.rows[-1][last.columns.index("Step")]) if last and last.rows
            and "Step" in last.columns else None,
            "restart_files": sorted(n for n in names if n not in (LOG, STDOUT) and not n.startswith("_")),
            "completed": log.completed,
            "errors": [e.message for e in log.errors],
            "warnings": len(log.warnings),
            "atoms": log.atoms,
            "blocks": len(log.blocks),
            "total_wall_time": log.total_wall_time,
            "final_thermo": {c: v if math.isfinite(v) else str(v) for c, v in zip(last.columns, last.rows[-1],
                                                                                     strict=False)}
            if last and last.rows else {},
        }))
        if exit_code := self._fault_exit(fault, scheduler_status):
            return exit_code
        if log.errors:
            return self.exit_codes.ERROR_LAMMPS
        if not log.completed:
            return self.exit_codes.ERROR_INCOMPLETE
        return None

    def _fault_exit(self, fault: Fault | None, scheduler_status: int | None):
        """The scheduler's verdict wins over what the cut-off log looks like."""
        if fault == Fault.CANCELLED:
            return self.exit_codes.ERROR_CANCELLED
        if scheduler_status:
            return next((c for c in self.exit_codes.values() if c.status == scheduler_status), None)
        if fault == Fault.WALLTIME:
            return self.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME
        if fault == Fault.NODE_FAILURE:
            return self.exit_codes.ERROR_SCHEDULER_NODE_FAILURE
        return None
