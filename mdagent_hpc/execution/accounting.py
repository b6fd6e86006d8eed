"""What the scheduler says happened to a job: its accounting record, the fault it shows, and what to do about it.

The one scheduler-fault table: Slurm states and CalcJob exit statuses map to a `Fault` here, and `decide` applies a
site's `on_failure` policy to it. Pure functions: LammpsCalculation's parser and LammpsJobWorkChain's handlers call
them; tests/test_faults.py checks them without AiiDA.
"""

from __future__ import annotations

from enum import StrEnum

from mdagent_hpc.execution.site import OnFailure

# The fields of `sacct --parsable` worth keeping in provenance.
SACCT_FIELDS = (
    "JobID",
    "JobName",
    "State",
    "ExitCode",
    "Partition",
    "NodeList",
    "AllocCPUS",
    "Submit",
    "Start",
    "End",
    "Elapsed",
    "Timelimit",
    "MaxRSS",
    "ReqMem",
)


class Fault(StrEnum):
    """Why a job died when the script itself is not to blame; the keys of a site's `on_failure` policy."""

    CANCELLED = "cancelled"
    WALLTIME = "walltime"
    NODE_FAILURE = "node_failure"
    CONNECTION_LOST = "connection_lost"


def parse_sacct(stdout: str) -> dict:
    """The job line (and its steps) of `sacct --parsable` output as {field: value}; {} if there is none."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    header = lines[0].rstrip("|").split("|")
    records = [dict(zip(header, line.rstrip("|").split("|"), strict=False)) for line in lines[1:]]
    job = {k: v for k, v in records[0].items() if k in SACCT_FIELDS and v}
    steps = [{k: v for k, v in r.items() if k in SACCT_FIELDS and v} for r in records[1:]]
    if steps:
        job["steps"] = steps
    return job


def fault_of(state: str | None) -> Fault | None:
    """The fault a Slurm job state (`CANCELLED by 0`, `TIMEOUT`, `NODE_FAIL`, ...) stands for."""
    word = (state or "").split()[0] if state else ""
    return {
        "CANCELLED": Fault.CANCELLED,
        "TIMEOUT": Fault.WALLTIME,
        "DEADLINE": Fault.WALLTIME,
        "NODE_FAIL": Fault.NODE_FAILURE,
        "BOOT_FAIL": Fault.NODE_FAILURE,
        "PREEMPTED": Fault.NODE_FAILURE,
    }.get(word)


# The LammpsCalculation exit statuses that stand for a fault (AiiDA's scheduler codes 120 and 140, ours 350, 360).
FAULT_OF_EXIT_STATUS: dict[int, Fault] = {
    120: Fault.WALLTIME,
    140: Fault.NODE_FAILURE,
    350: Fault.CANCELLED,
    360: Fault.CONNECTION_LOST,
}
# The LammpsCalculation exit statuses that are LAMMPS's own failure (no log, an ERROR, a log cut off): the script's
# fault, never retried.
LAMMPS_FAILED = frozenset({310, 320, 321})


def fault_of_job(exit_status: int | None, killed: bool = False) -> Fault | None:
    """The fault behind a finished LAMMPS job: killed (by `verdi process kill`) counts as cancelled."""
    if killed:
        return Fault.CANCELLED
    return FAULT_OF_EXIT_STATUS.get(exit_status) if exit_status is not None else None


FAULT_MESSAGES = {
    Fault.CANCELLED: "the job was cancelled (scancel or the administrator)",
    Fault.WALLTIME: "the job ran out of its wall time",
    Fault.NODE_FAILURE: "the node running the job failed or was taken out of service",
    Fault.CONNECTION_LOST: "the connection to the cluster was lost",
}


def decide(fault: Fault, policy: OnFailure, resubmits: int, restart_files: list[str]) -> str:
    """What to do about a fault: `resubmit` the same job, `restart` from a restart file, or `fail` the attempt.

    A resubmission past `max_resubmits` and a restart without a restart file both become `fail`.
    """
    action = getattr(policy, fault.value)
    if action == "resubmit" and resubmits >= policy.max_resubmits:
        return "fail"
    if action == "restart" and not restart_files:
        return "fail"
    return action
