"""The one scheduler-fault table and the failure policy (execution/accounting.py): pure functions, no AiiDA.

LammpsJobWorkChain's handlers are thin calls of these; the real faults on a real Slurm are in test_clusters.py.
"""

import subprocess
import sys

import pytest

from mdagent_hpc.execution.accounting import (
    FAULT_OF_EXIT_STATUS,
    LAMMPS_FAILED,
    Fault,
    decide,
    fault_of,
    fault_of_job,
    parse_sacct,
)
from mdagent_hpc.execution.site import OnFailure

SACCT = """JobID|JobName|State|ExitCode|Partition|NodeList|AllocCPUS|Elapsed|Timelimit|MaxRSS|Comment|
42|aiida-7|TIMEOUT|0:0|debug|node1|1|00:01:02|00:01:00||x|
42.batch|batch|CANCELLED|0:15||node1|1|00:01:03||12345K||
"""


def test_the_fault_table_imports_no_aiida():
    code = (
        "import sys, mdagent_hpc.execution.accounting; "
        "sys.exit(any(m == 'aiida' or m.startswith('aiida.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_parse_sacct_keeps_the_job_line_its_steps_and_only_known_fields():
    job = parse_sacct(SACCT)
    assert job["JobID"] == "42" and job["State"] == "TIMEOUT" and job["Elapsed"] == "00:01:02"
    assert "Comment" not in job and "MaxRSS" not in job  # unknown field dropped, empty field dropped
    assert job["steps"] == [
        {
            "JobID": "42.batch",
            "JobName": "batch",
            "State": "CANCELLED",
            "ExitCode": "0:15",
            "NodeList": "node1",
            "AllocCPUS": "1",
            "Elapsed": "00:01:03",
            "MaxRSS": "12345K",
        }
    ]
    assert parse_sacct("") == {} and parse_sacct("JobID|State|\n") == {}


@pytest.mark.parametrize(
    ("state", "fault"),
    [
        ("CANCELLED by 0", Fault.CANCELLED),
        ("CANCELLED", Fault.CANCELLED),
        ("TIMEOUT", Fault.WALLTIME),
        ("DEADLINE", Fault.WALLTIME),
        ("NODE_FAIL", Fault.NODE_FAILURE),
        ("BOOT_FAIL", Fault.NODE_FAILURE),
        ("PREEMPTED", Fault.NODE_FAILURE),
        ("COMPLETED", None),
        ("FAILED", None),
        ("OUT_OF_MEMORY", None),
        ("", None),
        (None, None),
    ],
)
def test_fault_of_a_slurm_state(state, fault):
    assert fault_of(state) == fault


def test_fault_of_a_finished_job():
    assert fault_of_job(120) == Fault.WALLTIME and fault_of_job(140) == Fault.NODE_FAILURE
    assert fault_of_job(350) == Fault.CANCELLED and fault_of_job(360) == Fault.CONNECTION_LOST
    assert fault_of_job(0) is None and fault_of_job(None) is None and fault_of_job(110) is None
    assert fault_of_job(0, killed=True) == Fault.CANCELLED
    assert all(fault_of_job(status) is None for status in LAMMPS_FAILED)  # LAMMPS's failures are not faults
    assert set(FAULT_OF_EXIT_STATUS.values()) == set(Fault)  # every fault has its exit status


def test_policy_defaults():
    policy = OnFailure()
    assert decide(Fault.CANCELLED, policy, 0, []) == "fail"
    assert decide(Fault.WALLTIME, policy, 0, ["run.restart.500"]) == "restart"
    assert decide(Fault.NODE_FAILURE, policy, 0, []) == "resubmit"
    assert decide(Fault.CONNECTION_LOST, policy, 0, []) == "resubmit"


def test_resubmissions_stop_at_max_resubmits():
    policy = OnFailure(node_failure="resubmit", max_resubmits=2)
    assert [decide(Fault.NODE_FAILURE, policy, n, []) for n in range(4)] == ["resubmit", "resubmit", "fail", "fail"]
    assert decide(Fault.CONNECTION_LOST, OnFailure(max_resubmits=0), 0, []) == "fail"


def test_restart_needs_a_restart_file():
    policy = OnFailure(walltime="restart", node_failure="restart")
    assert decide(Fault.WALLTIME, policy, 0, []) == "fail"
    assert decide(Fault.WALLTIME, policy, 0, ["cont.restart"]) == "restart"
    assert decide(Fault.NODE_FAILURE, policy, 5, ["cont.restart"]) == "restart"  # restarts are not resubmissions


@pytest.mark.parametrize("fault", list(Fault))
def test_every_policy_value_for_every_fault(fault):
    for action in ("resubmit", "restart", "fail"):
        policy = OnFailure(**{fault.value: action})
        assert decide(fault, policy, 0, ["x.restart"]) == action
