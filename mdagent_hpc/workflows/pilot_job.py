"""PilotBaseWorkChain (`mdagent.sweep.pilot_job`): a sweep's pilot job, submitted again while points are missing.

A `BaseRestartWorkChain` around PilotCalculation. A pilot job that ends with points not run (its blocks failed to
start, the driver job died) is submitted again with the same inputs: the sweep folder keeps every point that ended,
so the next job runs only the others. At most `max_iterations` jobs (the sweep sets it from the site's
`on_failure.max_resubmits`); after the last, the points that ended are still the outputs, with exit 410.
"""

from __future__ import annotations

from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from mdagent_hpc.workflows.broker import PatientWithBroker
from mdagent_hpc.workflows.owned import OwnedSteps
from mdagent_hpc.workflows.pilot_calc import PilotCalculation


class PilotBaseWorkChain(PatientWithBroker, OwnedSteps, BaseRestartWorkChain):
    _process_class = PilotCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(PilotCalculation, namespace="pilot")
        spec.expose_outputs(PilotCalculation)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )
        spec.exit_code(
            410,
            "ERROR_POINTS_MISSING",
            message="{missing} of {total} point(s) did not end after {jobs} pilot job(s): {why}",
        )

    def setup(self):
        super().setup()
        self.ctx.inputs = self.exposed_inputs(PilotCalculation, "pilot")

    @process_handler(
        priority=500,
        exit_codes=[PilotCalculation.exit_codes.ERROR_POINTS_MISSING, PilotCalculation.exit_codes.ERROR_NO_RESULTS],
    )
    def resubmit_for_missing_points(self, node):
        """The same job again: the sweep folder keeps what ended, so only the missing points run."""
        self.report(f"the pilot job ended with point(s) not run ({node.exit_message}); submitting it again")
        return ProcessHandlerReport(do_break=True)

    def inspect_process(self):
        exit_code = super().inspect_process()
        if exit_code is None or exit_code.status != self.exit_codes.ERROR_MAXIMUM_ITERATIONS_EXCEEDED.status:
            return exit_code
        node = self.ctx.children[self.ctx.iteration - 1]  # the last job: what ended is still worth recording
        self._attach_outputs(node)
        ended = node.outputs.results.get_dict() if "results" in node.outputs else {}
        wanted = [p["id"] for p in self.inputs.pilot.points.get_dict()["points"]]
        missing = [pid for pid in wanted if pid not in ended]
        return self.exit_codes.ERROR_POINTS_MISSING.format(
            missing=len(missing), total=len(wanted), jobs=self.ctx.iteration, why=node.exit_message
        )
