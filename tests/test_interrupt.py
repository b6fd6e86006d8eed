"""Ctrl-C stops an in-process run wherever it lands (execution/profile.py `run_here`), also while a calcfunction of
the run holds SIGINT: AiiDA's calcfunction swaps in a handler of its own that kills only itself, so a sweep
interrupted during a point's `record_point` went on with its next points."""

import os
import signal
import time

import pytest


@pytest.fixture(scope="module")
def aiida_profile():
    from mdagent_hpc.execution.profile import ensure_profile

    return ensure_profile()


def test_ctrl_c_while_a_calcfunction_runs_kills_the_whole_run(aiida_profile):
    from aiida import orm
    from aiida.engine import WorkChain, calcfunction

    from mdagent_hpc.execution.profile import run_here

    @calcfunction
    def interrupted_here(x: orm.Int) -> orm.Int:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, while this calcfunction's own handler is the one installed
        time.sleep(0.2)
        return orm.Int(x.value + 1)

    class TwoSteps(WorkChain):
        @classmethod
        def define(cls, spec):
            super().define(spec)
            spec.outline(cls.first, cls.second)

        def first(self):
            interrupted_here(orm.Int(1))

        def second(self):
            self.node.base.extras.set("second_step_ran", True)

    _, node = run_here(TwoSteps)
    assert node.is_killed, node.process_state
    assert not node.base.extras.get("second_step_ran", False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back as it was
