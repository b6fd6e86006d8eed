"""A LAMMPS run as an AiiDA CalcJob on aiida-lammps' `LammpsRawCalculation`, and its parser.

What aiida-lammps carries, we take from it: the `script`, `files` (and `filenames`) and `settings` inputs
(`settings.additional_retrieve_list` brings back the restart files a script writes), the writing of the script
and files into the run folder, `lammps.out` as stdout, and its exit codes; its `LammpsRawParser` reads our runs
(`LammpsRawParser.parse_from_node(calc)`). What it cannot carry stays ours: the `potentials` namespace (potential
files staged as inputs, so their content is in provenance), the `skiprun` flag (`lmp -skiprun`), `-log log.lammps`
and `-nocite` on the command line, `in.lammps` as the input name, and our parser (`mdagent.lammps`): aiida-lammps'
raw parser reads only stdout and stops at the first ERROR, while the agent needs the whole log (every thermo
block, warnings, the error with its input line) and the scheduler's verdict. A job whose site cannot be reached
past AiiDA's transport retries ends with ERROR_CONNECTION_LOST instead of pausing (see `_Waiting`).
"""

from __future__ import annotations

import math
import re

import plumpy
from aiida import orm
from aiida.common.exceptions import TransportTaskException
from aiida.engine.processes.calcjobs.tasks import Waiting
from aiida.engine.processes.process import ProcessState
from aiida.parsers import Parser
from aiida_lammps.calculations.raw import LammpsRawCalculation

from mdagent_hpc.execution.accounting import FAULT_OF_EXIT_STATUS, Fault, fault_of, parse_sacct
from mdagent_hpc.lammps.log import parse_log
from mdagent_hpc.lammps.parser import ScriptError, parse_text
from mdagent_hpc.lammps.run_folder import INPUT, LOG, STDOUT
from mdagent_hpc.workflows.broker import PatientWithBroker


def node_key(filename: str) -> str:
    """A port name for a file name (ports allow letters, digits and underscores)."""
    key = re.sub(r"\W", "_", filename)
    return key if key[:1].isalpha() else f"f_{key}"


class _Waiting(Waiting):
    """AiiDA's CalcJob waiting state, except that a transport task failing past its retries ends the job.

    AiiDA pauses the CalcJob then (tasks.py: `except TransportTaskException: raise PauseInterruption`), and a
    paused child never tells its parent workchain, so no failure policy could act. Here the job terminates with
    ERROR_CONNECTION_LOST, which LammpsJobWorkChain's handler sees. A pause asked for by a user stays a pause.
    """

    async def execute(self):
        try:
            return await super().execute()
        except plumpy.process_states.PauseInterruption as exc:
            if not isinstance(exc.__context__, TransportTaskException):
                raise
            failed = exc.__context__
            cause = failed.__cause__
            message = f"{failed}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
            self.process.node.set_process_status(None)
            exit_code = self.process.exit_codes.ERROR_CONNECTION_LOST.format(message=message)
            return self.create_state(ProcessState.RUNNING, self.process.terminate, exit_code)


class LammpsCalculation(PatientWithBroker, LammpsRawCalculation):
    FILENAME_INPUT = INPUT

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace(
            "potentials",
            valid_type=orm.SinglefileData,
            dynamic=True,
            required=False,
            help="potential files, staged under their filename",
        )
        spec.input(
            "skiprun",
            valid_type=orm.Bool,
            required=False,
            help="a dry run (`lmp -skiprun`): set up everything, run no steps",
        )
        spec.input(
            "variables",
            valid_type=orm.Dict,
            required=False,
            help="LAMMPS variables given on the command line (`-var NAME VALUE`): a sweep's point",
        )
        options = spec.inputs["metadata"]["options"]
        options["input_filename"].default = INPUT
        options["output_filename"].default = STDOUT
        options["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        options["parser_name"].default = "mdagent.lammps"
        options["withmpi"].default = False
        spec.exit_code(310, "ERROR_NO_LOG", message="LAMMPS wrote no log: it did not start")
        spec.exit_code(320, "ERROR_LAMMPS", message="LAMMPS stopped with an ERROR")
        spec.exit_code(321, "ERROR_INCOMPLETE", message="the log ends before 'Total wall time': the run was cut off")
        spec.exit_code(350, "ERROR_CANCELLED", message="the job was cancelled (scancel or the administrator)")
        spec.exit_code(360, "ERROR_CONNECTION_LOST", message="the connection to the site was lost: {message}")

    @classmethod
    def get_state_classes(cls):
        states = super().get_state_classes()
        states[ProcessState.WAITING] = _Waiting
        return states

    def prepare_for_submission(self, folder):
        calcinfo = super().prepare_for_submission(folder)  # the script, `files`, lammps.out, additional retrieves
        for node in self.inputs.potentials.values() if "potentials" in self.inputs else []:
            with folder.open(node.filename, "wb") as target:
                target.write(node.get_content(mode="rb"))
            calcinfo.provenance_exclude_list.append(node.filename)  # the input node holds it
        codeinfo = calcinfo.codes_info[0]
        codeinfo.cmdline_params += ["-log", LOG, "-nocite"]
        for name, value in self.inputs.variables.get_dict().items() if "variables" in self.inputs else ():
            codeinfo.cmdline_params += ["-var", name, str(value)]
        if "skiprun" in self.inputs and self.inputs.skiprun.value:
            codeinfo.cmdline_params.append("-skiprun")
        calcinfo.retrieve_list = [LOG, *calcinfo.retrieve_list]
        return calcinfo


def lammps_settings(script: str) -> orm.Dict:
    """The `settings` input for a script: retrieve the restart files it writes (so a run cut off can continue)."""
    return orm.Dict({"additional_retrieve_list": restart_files(script)})


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
        fault = fault_of(accounting.get("State")) or FAULT_OF_EXIT_STATUS.get(scheduler_status)
        retrieved = self.retrieved
        names = retrieved.base.repository.list_object_names()
        if LOG not in names:
            self.out(
                "results",
                orm.Dict(
                    {
                        "completed": False,
                        "errors": [],
                        "accounting": accounting,
                        "fault": fault.value if fault else None,
                        "job_id": self.node.get_job_id(),
                    }
                ),
            )
            return self._fault_exit(fault, scheduler_status) or self.exit_codes.ERROR_NO_LOG
        log = parse_log(retrieved.base.repository.get_object_content(LOG, mode="r"))
        last = log.last_block
        self.out(
            "results",
            orm.Dict(
                {
                    "job_id": self.node.get_job_id(),
                    "accounting": accounting,
                    "fault": fault.value if fault else None,
                    "last_step": int(last.rows[-1][last.columns.index("Step")])
                    if last and last.rows and "Step" in last.columns
                    else None,
                    "restart_files": sorted(n for n in names if n not in (LOG, STDOUT) and not n.startswith("_")),
                    "completed": log.completed,
                    "errors": [e.message for e in log.errors],
                    "warnings": len(log.warnings),
                    "atoms": log.atoms,
                    "blocks": len(log.blocks),
                    "total_wall_time": log.total_wall_time,
                    "final_thermo": {
                        c: v if math.isfinite(v) else str(v) for c, v in zip(last.columns, last.rows[-1], strict=False)
                    }
                    if last and last.rows
                    else {},
                }
            ),
        )
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
