"""LammpsJobWorkChain (`mdagent.lammps.job`): one LAMMPS job that survives the cluster, by AiiDA's own mechanism.

A `BaseRestartWorkChain` around LammpsCalculation. Its process handlers read the fault behind a failed job (the
one table in execution/accounting.py) and apply the site's `on_failure` policy:

- resubmit: run the same job again (up to `max_resubmits`);
- restart: stop, exposing the restart files the job left as `restart_files`, for a continuation;
- fail: stop with ERROR_JOB_FAULT (420).

LAMMPS's own failure (an ERROR, a log cut off, no log) is the script's fault: never retried, it stops with
ERROR_LAMMPS_FAILED (410) and exposes `retrieved` and `results` for the caller to evaluate. `job` (the fields of
models.Job) is always an output.
"""

from __future__ import annotations

import io

from aiida import orm
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, calcfunction, process_handler, while_

from mdagent_hpc.execution.accounting import FAULT_MESSAGES, LAMMPS_FAILED, Fault, decide, fault_of_job
from mdagent_hpc.execution.site import OnFailure
from mdagent_hpc.models import Job
from mdagent_hpc.workflows.broker import PatientWithBroker
from mdagent_hpc.workflows.lammps_calc import LOG, STDOUT, LammpsCalculation, lammps_settings, node_key
from mdagent_hpc.workflows.owned import OwnedSteps


@calcfunction
def restart_files_of(retrieved: orm.FolderData) -> dict:
    """The restart files a cut-off run left, as files for the next run (so provenance shows where they came from)."""
    names = retrieved.base.repository.list_object_names()
    return {
        node_key(name): orm.SinglefileData(
            io.BytesIO(retrieved.base.repository.get_object_content(name, "rb")), filename=name
        )
        for name in names
        if name not in (LOG, STDOUT) and not name.startswith("_")
    }


class LammpsJobWorkChain(PatientWithBroker, OwnedSteps, BaseRestartWorkChain):
    _process_class = LammpsCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(LammpsCalculation, namespace="lammps")
        spec.input(
            "on_failure",
            valid_type=orm.Dict,
            default=lambda: orm.Dict(OnFailure().model_dump()),
            help="the site's policy for jobs that die of a fault (execution.site.OnFailure)",
        )
        spec.input("site", valid_type=orm.Str, default=lambda: orm.Str("local"), help="the site's name")
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )
        spec.output("job", valid_type=orm.Dict, help="the job as the scheduler saw it (models.Job)")
        spec.output("retrieved", valid_type=orm.FolderData, required=False, help="log and output of the run")
        spec.output("results", valid_type=orm.Dict, required=False, help="the parser's summary of the log")
        spec.output_namespace(
            "restart_files",
            valid_type=orm.SinglefileData,
            dynamic=True,
            required=False,
            help="restart files of a job cut off, when the policy says restart",
        )
        spec.exit_code(410, "ERROR_LAMMPS_FAILED", message="LAMMPS failed: {message}")
        spec.exit_code(420, "ERROR_JOB_FAULT", message="{message}")

    def setup(self):
        super().setup()
        self.ctx.inputs = self.exposed_inputs(LammpsCalculation, "lammps")
        if "settings" not in self.ctx.inputs:
            self.ctx.inputs["settings"] = lammps_settings(self.ctx.inputs["script"].get_content())
        self.ctx.resubmissions = 0
        self.ctx.job = Job(site=self.inputs.site.value).model_dump(mode="json")

    def inspect_process(self):
        node = self.ctx.children[self.ctx.iteration - 1]
        if node.is_killed:  # `verdi process kill` on the job: as a cancellation
            return self._fault(node, Fault.CANCELLED).exit_code
        if node.is_excepted:
            self._finish(node)
        return super().inspect_process()

    def on_terminated(self):
        if self.inputs.clean_workdir.value:
            super().on_terminated()
        else:  # skip BaseRestartWorkChain's report that it cleans nothing
            super(BaseRestartWorkChain, self).on_terminated()

    def results(self):
        self._finish(self.ctx.children[self.ctx.iteration - 1])
        return None

    # -- handlers, highest priority first ---------------------------------------------------------------------
    @process_handler(
        priority=500,
        exit_codes=[
            LammpsCalculation.exit_codes.ERROR_CONNECTION_LOST,
            LammpsCalculation.exit_codes.ERROR_CANCELLED,
            LammpsCalculation.exit_codes.ERROR_SCHEDULER_NODE_FAILURE,
            LammpsCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME,
        ],
    )
    def handle_fault(self, node):
        """Wall time, node failure, cancellation, lost connection: the site's policy decides."""
        return self._fault(node, fault_of_job(node.exit_status))

    @process_handler(priority=400)
    def handle_lammps_failure(self, node):
        """LAMMPS itself failed: the script's fault, for the caller to evaluate; never retried."""
        if node.exit_status not in LAMMPS_FAILED:
            return None
        self._finish(node)
        return ProcessHandlerReport(True, self.exit_codes.ERROR_LAMMPS_FAILED.format(message=node.exit_message))

    @process_handler(priority=0)
    def handle_other_failure(self, node):
        """Any other failure (out of memory, invalid account, ...): stop, with the job's record."""
        if not node.is_failed:
            return None
        self._finish(node)
        return ProcessHandlerReport(
            True,
            self.exit_codes.ERROR_JOB_FAULT.format(
                message=f"the job failed (exit {node.exit_status}): {node.exit_message}"
            ),
        )

    # -- helpers ----------------------------------------------------------------------------------------------
    def _fault(self, node, fault: Fault) -> ProcessHandlerReport:
        results = node.outputs.results.get_dict() if "results" in node.outputs else {}
        policy = OnFailure(**self.inputs.on_failure.get_dict())
        action = decide(fault, policy, self.ctx.resubmissions, results.get("restart_files", []))
        if action == "resubmit" and self.ctx.iteration >= self.inputs.max_iterations.value:
            action = "fail"
        step = f" at step {results['last_step']}" if results.get("last_step") is not None else ""
        job = f"job {node.get_job_id()}" if node.get_job_id() else "the job"
        what = FAULT_MESSAGES[fault]
        if fault == Fault.CONNECTION_LOST:  # with the cause; and a job AiiDA lost sight of may still be running
            what = node.exit_message + (
                f"; job {node.get_job_id()} may still be running on the site (it could not be cancelled)"
                if node.get_job_id()
                else ""
            )
        self.report(f"{job}: {what}{step} (exit {node.exit_status}); site policy: {action}")
        self.ctx.job.update(fault=fault.value, action=action)
        if action == "resubmit":
            self.ctx.resubmissions += 1
            return ProcessHandlerReport(True)  # the same inputs again
        if action == "restart":
            self.out(
                "restart_files",
                dict(restart_files_of(node.outputs.retrieved, metadata={"call_link_label": "restart_files"})),
            )
            self.ctx.job["restarts"] = 1
        self._finish(node)
        message = f"{what}{step}; site policy: {action}"
        return ProcessHandlerReport(True, self.exit_codes.ERROR_JOB_FAULT.format(message=message))

    def _finish(self, node) -> None:
        """Attach `job`, and `retrieved` and `results` when the job left them; ends the restart loop."""
        self.ctx.is_finished = True
        results = node.outputs.results.get_dict() if "results" in node.outputs else {}
        self.ctx.job.update(
            job_id=node.get_job_id(),
            exit_status=node.exit_status,
            accounting=results.get("accounting", {}),
            resubmissions=self.ctx.resubmissions,
            workdir=node.get_remote_workdir(),
        )
        self.out("job", orm.Dict(Job(**self.ctx.job).model_dump(mode="json")).store())
        for name in ("retrieved", "results"):
            if name in node.outputs:
                self.out(name, node.outputs[name])


class LammpsBaseWorkChain(LammpsJobWorkChain):
    """Deprecated name of LammpsJobWorkChain (aiida-lammps ships a different `LammpsBaseWorkChain`): kept under its
    old entry point `mdagent.lammps.base` only so that provenance stored before the rename still loads."""
